//! The rig's plan, without I/O: from what the user asked for (a name, a host count, zones,
//! racks, a subnet) to every name and address the executor creates. Pure, so the naming rules
//! (several clusters on one kernel never collide; interface names fit the kernel's 15 bytes)
//! are tested without root.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// The port the server listens on, inside its namespace.
pub const SERVER_PORT: u16 = 7900;

/// The bridge inside the fabric namespace that every member's cable plugs into.
pub const FABRIC_BRIDGE: &str = "fabric0";

/// Each member's end of its cable, inside its own namespace.
pub const MEMBER_NIC: &str = "eth0";

/// What the user asked for.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// 1–12 of lower-case letters, digits and '-', starting with a letter: part of every
    /// namespace name, so two clusters with different names never share one.
    pub name: String,
    /// How many agent hosts (1–60).
    pub hosts: u32,
    /// Zone of each host in turn (`h1` gets the first, and so on, repeating).
    pub zones: Vec<String>,
    /// Rack (fault-domain label) of each host in turn, repeating; empty: every host is its
    /// own fault domain.
    pub racks: Vec<String>,
    /// The fabric's /24, as its first three octets (`10.250.0`).
    pub subnet: [u8; 3],
    /// Where the server's and each host's data go.
    pub data_dir: PathBuf,
}

impl ClusterSpec {
    /// The default data dir of cluster `name`.
    pub fn default_data_dir(name: &str) -> PathBuf {
        PathBuf::from("/var/lib/herd-dev").join(name)
    }
}

/// Parses `10.250.0.0/24` (only /24 networks) into its first three octets.
pub fn parse_subnet(s: &str) -> Result<[u8; 3]> {
    let Some((addr, len)) = s.split_once('/') else {
        bail!("--subnet '{s}': give a /24 network, for example 10.250.0.0/24");
    };
    let addr: Ipv4Addr =
        addr.parse().map_err(|_| anyhow::anyhow!("--subnet '{s}': '{addr}' is not an IPv4 address"))?;
    if len != "24" {
        bail!("--subnet '{s}': only /24 networks are supported (got /{len})");
    }
    let o = addr.octets();
    if o[3] != 0 {
        bail!("--subnet '{s}': the network address of a /24 ends in .0");
    }
    if !addr.is_private() {
        bail!("--subnet '{s}': use a private network (10/8, 172.16/12 or 192.168/16); the fabric never leaves this machine, but its addresses must not shadow real ones");
    }
    Ok([o[0], o[1], o[2]])
}

/// One machine of the cluster: the server or a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    /// `server`, or the host's name in the cluster (`h1`, `h2`, …), also its hostname.
    pub name: String,
    pub role: Role,
    /// Its network namespace (under /run/netns).
    pub netns: String,
    /// The fabric end of its cable (in the fabric namespace).
    pub port: String,
    pub address: Ipv4Addr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault_domain: Option<String>,
    /// Its herd data dir (the server's, or the agent's).
    pub data_dir: PathBuf,
}

/// What a member runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Role {
    /// `herd server`.
    Server,
    /// `herd agent`.
    Agent,
}

/// Every name and address of one cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Layout {
    pub name: String,
    /// The namespace holding the fabric bridge.
    pub fabric_netns: String,
    pub subnet: String,
    pub data_dir: PathBuf,
    /// The server first, then the hosts in order.
    pub members: Vec<Member>,
}

impl Layout {
    /// The plan for `spec`, or why it cannot be built.
    pub fn plan(spec: &ClusterSpec) -> Result<Layout> {
        check_name(&spec.name)?;
        if !(1..=60).contains(&spec.hosts) {
            bail!("--hosts {}: allowed 1 to 60", spec.hosts);
        }
        if spec.zones.is_empty() {
            bail!("--zones: give at least one zone");
        }
        for (field, labels) in [("--zones", &spec.zones), ("--racks", &spec.racks)] {
            for l in labels.iter() {
                check_label(field, l)?;
            }
        }
        let [a, b, c] = spec.subnet;
        let prefix = format!("herd-{}-", spec.name);
        let mut members = vec![Member {
            name: "server".into(),
            role: Role::Server,
            netns: format!("{prefix}server"),
            port: "m-server".into(),
            address: Ipv4Addr::new(a, b, c, 2),
            zone: None,
            fault_domain: None,
            data_dir: spec.data_dir.join("server"),
        }];
        for i in 0..spec.hosts {
            let name = format!("h{}", i + 1);
            let n = i as usize;
            members.push(Member {
                netns: format!("{prefix}{name}"),
                port: format!("m-{name}"),
                address: Ipv4Addr::new(a, b, c, 10 + i as u8),
                zone: Some(spec.zones[n % spec.zones.len()].clone()),
                fault_domain: (!spec.racks.is_empty()).then(|| spec.racks[n % spec.racks.len()].clone()),
                data_dir: spec.data_dir.join(&name),
                role: Role::Agent,
                name,
            });
        }
        Ok(Layout {
            name: spec.name.clone(),
            fabric_netns: format!("{prefix}fabric"),
            subnet: format!("{a}.{b}.{c}.0/24"),
            data_dir: spec.data_dir.clone(),
            members,
        })
    }

    /// The server member.
    pub fn server(&self) -> &Member {
        &self.members[0]
    }

    /// The host members (agents), in order.
    pub fn hosts(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(|m| m.role == Role::Agent)
    }

    /// The member called `name`, or an error listing the members.
    pub fn member(&self, name: &str) -> Result<&Member> {
        self.members.iter().find(|m| m.name == name).ok_or_else(|| {
            let names: Vec<&str> = self.members.iter().map(|m| m.name.as_str()).collect();
            anyhow::anyhow!("cluster '{}' has no member '{name}'; its members: {}", self.name, names.join(", "))
        })
    }

    /// The server's API URL, reachable from every member's namespace.
    pub fn server_url(&self) -> String {
        format!("https://{}:{SERVER_PORT}", self.server().address)
    }

    /// The zones the hosts serve, each once, in order of first use.
    pub fn zones(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for z in self.hosts().filter_map(|m| m.zone.clone()) {
            if !out.contains(&z) {
                out.push(z);
            }
        }
        out
    }

    /// The server's config: the zones the hosts serve; the server's own machine declared as a
    /// host that takes no instances (every instance goes to an agent's host), or, with
    /// `local_zone`, one that serves that zone; bridged networking (vnets stretch over the
    /// fabric to every host) unless `extra` has a `[network]` section of its own.
    pub fn server_config(&self, extra: &str, local_zone: Option<&str>) -> String {
        let mut zones = self.zones();
        if let Some(z) = local_zone {
            if !zones.iter().any(|x| x == z) {
                zones.push(z.to_string());
            }
        }
        let zones: Vec<String> = zones.iter().map(|z| format!("\"{z}\"")).collect();
        let local = match local_zone {
            Some(z) => format!("zone = \"{z}\"\nvcpus = 2\nmemory_mib = 4096\novercommit = 16.0\n"),
            None => "vcpus = 1\nmemory_mib = 1024\nschedulable = false\n".to_string(),
        };
        let network = if extra.contains("[network]") { "" } else { "[network]\nmode = \"bridged\"\n\n" };
        format!(
            "# Written by `herd dev cluster up`.\nzones = [{}]\n\n[[hosts]]\nname = \"local\"\n{local}\n{network}{extra}\n",
            zones.join(", ")
        )
    }

    /// Where `herd dev cluster` keeps the state of cluster `name`.
    pub fn state_file(run_dir: &Path, name: &str) -> PathBuf {
        run_dir.join(format!("{name}.json"))
    }
}

/// A cluster name: 1–12 of `a-z0-9-`, starting with a letter (it is part of namespace names).
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 12
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !ok {
        bail!("--name '{name}': use 1 to 12 lower-case letters, digits and '-', starting with a letter");
    }
    Ok(())
}

fn check_label(field: &str, l: &str) -> Result<()> {
    if l.is_empty() || l.len() > 64 || !l.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        bail!("{field} '{l}': use 1 to 64 letters, digits, '-', '_' and '.'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, hosts: u32, zones: &[&str], racks: &[&str]) -> ClusterSpec {
        ClusterSpec {
            name: name.into(),
            hosts,
            zones: zones.iter().map(|s| s.to_string()).collect(),
            racks: racks.iter().map(|s| s.to_string()).collect(),
            subnet: [10, 250, 0],
            data_dir: "/d".into(),
        }
    }

    #[test]
    fn hosts_take_zones_and_racks_in_turn() {
        let l = Layout::plan(&spec("dev", 4, &["1", "2", "3"], &["rack-a", "rack-b"])).unwrap();
        let hosts: Vec<_> =
            l.hosts().map(|m| (m.name.as_str(), m.zone.as_deref(), m.fault_domain.as_deref())).collect();
        assert_eq!(
            hosts,
            vec![
                ("h1", Some("1"), Some("rack-a")),
                ("h2", Some("2"), Some("rack-b")),
                ("h3", Some("3"), Some("rack-a")),
                ("h4", Some("1"), Some("rack-b"))
            ]
        );
        assert_eq!(l.zones(), vec!["1", "2", "3"]);
        assert_eq!(l.server_url(), "https://10.250.0.2:7900");
        assert_eq!(l.member("h4").unwrap().address, Ipv4Addr::new(10, 250, 0, 13));
        assert_eq!(l.member("h2").unwrap().data_dir, PathBuf::from("/d/h2"));
        assert!(l.member("h9").unwrap_err().to_string().contains("server, h1, h2, h3, h4"));
        let no_racks = Layout::plan(&spec("dev", 2, &["1"], &[])).unwrap();
        assert!(no_racks.hosts().all(|m| m.fault_domain.is_none()));
    }

    #[test]
    fn two_clusters_share_no_namespace_and_names_fit_the_kernel() {
        let a = Layout::plan(&spec("a", 60, &["1"], &[])).unwrap();
        let b = Layout::plan(&spec("abcdefghijkl", 60, &["1"], &[])).unwrap();
        let names = |l: &Layout| {
            let mut v: Vec<String> = l.members.iter().map(|m| m.netns.clone()).collect();
            v.push(l.fabric_netns.clone());
            v
        };
        for n in names(&a) {
            assert!(!names(&b).contains(&n), "{n}");
        }
        for m in b.members.iter() {
            assert!(m.port.len() <= 15, "{}", m.port);
        }
        assert!(b.fabric_netns.len() <= 64);
    }

    #[test]
    fn bad_input_names_the_option() {
        for (s, want) in [
            (spec("Dev", 1, &["1"], &[]), "--name 'Dev'"),
            (spec("averyveryverylongname", 1, &["1"], &[]), "--name"),
            (spec("1dev", 1, &["1"], &[]), "--name"),
            (spec("dev", 0, &["1"], &[]), "--hosts 0: allowed 1 to 60"),
            (spec("dev", 61, &["1"], &[]), "--hosts 61"),
            (spec("dev", 1, &[], &[]), "--zones"),
            (spec("dev", 1, &["z 1"], &[]), "--zones 'z 1'"),
            (spec("dev", 1, &["1"], &["rack/a"]), "--racks 'rack/a'"),
        ] {
            let e = Layout::plan(&s).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
        assert_eq!(parse_subnet("10.250.7.0/24").unwrap(), [10, 250, 7]);
        for (s, want) in [
            ("10.250.0.0", "give a /24"),
            ("10.250.0.0/16", "only /24"),
            ("10.250.0.1/24", "ends in .0"),
            ("8.8.8.0/24", "private network"),
            ("x/24", "not an IPv4"),
        ] {
            let e = parse_subnet(s).unwrap_err().to_string();
            assert!(e.contains(want), "{s}: {e}");
        }
    }

    #[test]
    fn the_server_config_offers_the_hosts_zones_and_keeps_its_own_machine_free() {
        let l = Layout::plan(&spec("dev", 3, &["2", "1"], &[])).unwrap();
        let c = l.server_config("[agents]\nhost_grace_secs = 5", None);
        assert!(c.contains("zones = [\"2\", \"1\"]"), "{c}");
        assert!(c.contains("name = \"local\"") && c.contains("schedulable = false"), "{c}");
        assert!(c.contains("host_grace_secs = 5"));
        assert!(c.contains("mode = \"bridged\""), "{c}");
        let parsed: toml::Value = toml::from_str(&c).expect("valid TOML");
        assert_eq!(parsed["hosts"].as_array().unwrap().len(), 1);
        // With a local zone, the server's machine serves it (and the zone is offered).
        let c = l.server_config("[network]\nmode = \"host-local\"", Some("9"));
        assert!(c.contains("zones = [\"2\", \"1\", \"9\"]") && c.contains("zone = \"9\""), "{c}");
        assert!(!c.contains("schedulable = false") && !c.contains("bridged"), "{c}");
    }
}
