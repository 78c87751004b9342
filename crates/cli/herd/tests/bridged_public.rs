//! Public IPs per instance (`publicIPAddressConfiguration`) on real traffic, inside network
//! namespaces this test creates: the server's namespace with a public pool
//! (`[network] public_ip_pool`), and "the internet" behind it (10.99.0.0/24), which routes the
//! pool to the server's namespace as a provider would. Two instances get distinct addresses
//! from the pool, shown by `list-instance-public-ips` and the instance view; the internet
//! reaches an instance by its public IP (the subnet's NSG applies to that traffic, and the
//! instance sees the real client, and an idle connection expires after the model's
//! `idleTimeoutInMinutes`), and so do other instances of the vnet (hairpin); an instance with a
//! public IP leaves with it (even from a subnet without default outbound access), one without
//! leaves with the host's address; the address survives a restart, is released on scale-in and
//! taken again by the next instance; bad input (an idle timeout out of range, a full pool, no
//! pool, host-local networking, a vnet inside the pool) is refused naming the field or the
//! setting, with nothing changed; and deleting everything leaves no nftables table, namespace
//! or link. A bad pool (loopback, too small, malformed, over a vnet) keeps the server from
//! starting.

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

const POOL: &str = "198.51.100.0/28";
const PUBLIC_IP: &str =
    "virtualMachineProfile.networkProfile.networkInterfaceConfigurations[0].ipConfigurations[0].publicIPAddressConfiguration";

/// The app: `/` answers `NAME CLIENT` (its computer name and the address it sees the client
/// at) on the instance's address, port 8080.
fn app() -> String {
    python_http_app(
        r#"        body = (NAME + " " + self.client_address[0]).encode(); status = 200"#,
        "exec python3 app.py",
    )
}

/// The pid of this server's instance process with private IP `ip` (its namespace is entered
/// through it). Only the server's own: tests running alongside use the same addresses.
fn pid_of(data: &std::path::Path, ip: &str) -> u32 {
    tagged_processes(data)
        .iter()
        .find(|p| p.var("HERD_ADDRESS") == Some(ip))
        .unwrap_or_else(|| panic!("no instance process of {} has HERD_ADDRESS={ip}", data.display()))
        .pid
}

/// The network namespaces the process driver of the server of `data` makes for these instance
/// keys (`group/set/id`) that exist now.
fn namespaces_of(data: &std::path::Path, keys: &[&str]) -> Vec<String> {
    let text = std::fs::read_to_string(data.join(herd_driver::tag::CLUSTER_ID_FILE)).unwrap();
    let (_, tag) = herd_driver::tag::parse_cluster_file(&text);
    keys.iter()
        .map(|k| herd_hostnet::short_name("hn", &format!("{tag}|{k}")))
        .filter(|n| std::path::Path::new("/run/netns").join(n).exists())
        .collect()
}

/// The body of `curl url` run by `cmd` (a command prefix that enters a namespace), or None
/// when it does not answer within 2 s.
fn fetch(prefix: &[&str], url: &str) -> Option<String> {
    let out = Command::new(prefix[0])
        .args(&prefix[1..])
        .args(["curl", "-s", "--max-time", "2", url])
        .output()
        .expect("curl and nsenter (util-linux) are needed");
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `curl url` from inside the network namespace of instance process `pid`.
fn from_instance(pid: u32, url: &str) -> Option<String> {
    fetch(&["nsenter", "-t", &pid.to_string(), "-n"], url)
}

fn sh(cmd: &str) {
    let st = Command::new("sh").arg("-c").arg(cmd).status().unwrap();
    assert!(st.success(), "{cmd}");
}

/// The public IPs of set `set`: (instanceId, ipAddress) pairs.
fn public_ips(s: &Server, set: &str) -> Vec<(String, String)> {
    let v = s.json(&["vmss", "list-instance-public-ips", "-g", "rg", "-n", set]);
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| (p["instanceId"].as_str().unwrap().to_string(), p["ipAddress"].as_str().unwrap().to_string()))
        .collect()
}

/// Whether `herd` with these arguments is refused with a message containing every one of
/// `needles`; returns the message.
fn refused(s: &Server, args: &[&str], needles: &[&str]) -> String {
    let e = s.err(args);
    for n in needles {
        assert!(e.contains(n), "expected {n:?} in the refusal of {args:?}: {e}");
    }
    e
}

#[test]
fn instances_get_public_ips_with_one_to_one_nat() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "bridged networking needs root (namespaces, bridges, nftables): run ./scripts/test.sh as root, as CI does"
    );
    let id = std::process::id();
    let ns = TestNetns::create(&format!("herdp{id}"));
    let inet = TestNetns::create(&format!("herdq{id}"));
    // The internet, behind the server's namespace, routes the pool to it.
    sh(&format!("ip -n {} link add hup0 type veth peer name eth0 netns {}", ns.0, inet.0));
    sh(&format!("ip -n {} addr add 10.99.0.1/24 dev hup0 && ip -n {} link set hup0 up", ns.0, ns.0));
    sh(&format!("ip -n {} addr add 10.99.0.2/24 dev eth0 && ip -n {} link set eth0 up", inet.0, inet.0));
    sh(&format!("ip -n {} route add {POOL} via 10.99.0.1", inet.0));
    // Its web server answers with the address it sees the client at.
    let mut whoami = Command::new("ip")
        .args(["netns", "exec", &inet.0, "python3", "-c"])
        .arg(
            "import http.server\n\
             class H(http.server.BaseHTTPRequestHandler):\n\
             \x20   def do_GET(self):\n\
             \x20       b = self.client_address[0].encode(); self.send_response(200)\n\
             \x20       self.send_header('Content-Length', str(len(b))); self.end_headers(); self.wfile.write(b)\n\
             \x20   def log_message(self, *a): pass\n\
             http.server.ThreadingHTTPServer(('10.99.0.2', 8080), H).serve_forever()\n",
        )
        .spawn()
        .unwrap();
    let internet = ["ip", "netns", "exec", inet.0.as_str()];

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = format!("[network]\nmode = \"bridged\"\npublic_ip_pool = \"{POOL}\"\n");
    let s = Server::start_in(&ns.0, "process", &data, Some(&config));
    let _state = RemoveOnDrop(hostnet_root(&data));
    let img = image_dir(&dir.path().join("img"), &app());
    s.group_with_image("rg", "Herd:App:1:1.0.0", &img);
    s.ok(&words("network vnet create -g rg -n mynet --address-prefix 10.0.0.0/16"));
    s.ok(&words("network vnet subnet create -g rg --vnet-name mynet -n web --address-prefixes 10.0.0.0/24"));
    // A vnet inside the pool is refused, naming the setting.
    refused(
        &s,
        &words("network vnet create -g rg -n inpool --address-prefix 198.51.100.0/24"),
        &["addressSpace.addressPrefixes", "[network] public_ip_pool", POOL],
    );
    let net = "--vm-sku Standard_B1s --vnet-name mynet --subnet web --disable-overprovision";
    s.create_set("rg", "web", "Herd:App:1:1.0.0", "2", &words(&format!("{net} --public-ip-per-vm")));
    s.create_set("rg", "plain", "Herd:App:1:1.0.0", "1", &words(net));
    // A private subnet (no default outbound access): a public IP is its instance's way out.
    s.ok(&words(
        "network vnet subnet create -g rg --vnet-name mynet -n priv --address-prefixes 10.0.1.0/24 \
         --default-outbound-access false",
    ));
    let private_net = "--vm-sku Standard_B1s --vnet-name mynet --subnet priv --disable-overprovision";
    s.create_set("rg", "inner", "Herd:App:1:1.0.0", "1", &words(&format!("{private_net} --public-ip-per-vm")));
    assert_eq!(namespaces_of(&data, &["rg/web/0", "rg/web/1", "rg/plain/0", "rg/inner/0"]).len(), 4);

    // (a) Two distinct addresses from the pool, lowest first, in the list and the views.
    let ips = public_ips(&s, "web");
    assert_eq!(
        ips,
        [("0".to_string(), "198.51.100.1".to_string()), ("1".to_string(), "198.51.100.2".to_string())],
        "one address from {POOL} per instance"
    );
    let list = s.json(&words("vmss list-instance-public-ips -g rg -n web"));
    let ipc = list[0]["ipConfiguration"]["id"].as_str().unwrap();
    assert!(
        ipc.ends_with(
            "/virtualMachineScaleSets/web/virtualMachines/0/networkInterfaces/webNic/ipConfigurations/webIPConfig"
        ),
        "{list}"
    );
    assert_eq!(list[0]["id"].as_str().unwrap(), format!("{ipc}/publicIPAddresses/webPublicIP"), "{list}");
    assert_eq!(list[0]["privateIpAddress"], "10.0.0.4", "{list}");
    assert_eq!(list[0]["idleTimeoutInMinutes"], 4, "Azure's default: {list}");
    let table = s.ok(&words("vmss list-instance-public-ips -g rg -n web -o table"));
    assert!(table.contains("IpAddress") && table.contains("198.51.100.2"), "{table}");
    let view = s.json(&words("vmss get-instance-view -g rg -n web --instance-id 1"));
    assert_eq!((&view["privateIpAddress"], &view["publicIpAddress"]), (&"10.0.0.5".into(), &"198.51.100.2".into()));
    let table = s.ok(&words("vmss list-instances -g rg -n web -o table"));
    assert!(table.contains("PublicIp") && table.contains("198.51.100.1"), "{table}");
    assert!(public_ips(&s, "plain").is_empty(), "a set without publicIPAddressConfiguration has none");
    let view = s.json(&words("vmss get-instance-view -g rg -n plain --instance-id 0"));
    assert_eq!((&view["privateIpAddress"], &view["publicIpAddress"]), (&"10.0.0.6".into(), &serde_json::Value::Null));

    // (b) The internet reaches instance 0 by its public IP; the instance sees the real client.
    let by_public = |ip: &str| fetch(&internet, &format!("http://{ip}:8080/"));
    let answer =
        wait_for("the internet to reach 198.51.100.1:8080", Duration::from_secs(30), || by_public("198.51.100.1"));
    assert_eq!(answer, "web000000 10.99.0.2", "instance 0 answers, seeing the internet's own address");
    assert_eq!(by_public("198.51.100.2").as_deref(), Some("web000001 10.99.0.2"), "and instance 1 by its own");
    // With an NSG on the subnet, DenyAllInBound refuses it until a rule allows Internet on 8080.
    s.ok(&words("network nsg create -g rg -n web-nsg"));
    let denied_before = counted(&s, "defaultSecurityRules/DenyAllInBound");
    s.ok(&words("network vnet subnet update -g rg --vnet-name mynet -n web --network-security-group web-nsg"));
    wait_for("the subnet's NSG to refuse the internet at 198.51.100.1", Duration::from_secs(30), || {
        by_public("198.51.100.1").is_none().then_some(())
    });
    assert!(
        counted(&s, "defaultSecurityRules/DenyAllInBound") > denied_before,
        "refused by the NSG's DenyAllInBound (the rule counted it), not lost on the way"
    );
    s.ok(&words(
        "network nsg rule create -g rg --nsg-name web-nsg -n web-in --priority 100 --access Allow --protocol Tcp \
         --source-address-prefixes Internet --destination-port-ranges 8080",
    ));
    let answer =
        wait_for("the Allow rule to let the internet in", Duration::from_secs(30), || by_public("198.51.100.1"));
    assert_eq!(answer, "web000000 10.99.0.2");
    assert!(counted(&s, "securityRules/web-in") >= 1, "let in by the user's rule");
    // idleTimeoutInMinutes is enforced: a connection held open through the public IP has the
    // model's 4 minutes in conntrack, not Linux's 5 days.
    let mut held = Command::new("ip")
        .args(["netns", "exec", &inet.0, "python3", "-c"])
        .arg("import socket,sys\ns = socket.create_connection(('198.51.100.1', 8080))\nprint('up', flush=True)\nsys.stdin.read()")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(held.stdout.take().unwrap()), &mut line).unwrap();
    assert_eq!(line.trim(), "up", "the internet could not hold a connection to 198.51.100.1:8080");
    let idle = wait_for("the held connection in the server's conntrack", Duration::from_secs(10), || {
        let out = s.command("cat").arg("/proc/net/nf_conntrack").output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.contains(" ESTABLISHED ") && l.contains("dst=198.51.100.1 ") && l.contains("dport=8080 "))
            .and_then(|l| l.split_whitespace().nth(4)?.parse::<u64>().ok())
    });
    assert!(
        (180..=240).contains(&idle),
        "an established flow through the public IP expires after 4 idle minutes: {idle} s left"
    );
    drop(held.stdin.take());
    let _ = held.kill();
    let _ = held.wait();

    // (c) Instance 0 leaves with its public IP; the instance without one with the host's address.
    let (web0, plain0) = (pid_of(&data, "10.0.0.4"), pid_of(&data, "10.0.0.6"));
    let seen = |pid: u32| from_instance(pid, "http://10.99.0.2:8080/");
    let from_web0 = wait_for("instance 0 to reach the internet", Duration::from_secs(30), || seen(web0));
    assert_eq!(from_web0, "198.51.100.1", "an instance with a public IP leaves with it");
    assert_eq!(seen(pid_of(&data, "10.0.0.5")).as_deref(), Some("198.51.100.2"), "instance 1 with its own");
    assert_eq!(seen(plain0).as_deref(), Some("10.99.0.1"), "an instance without one leaves as the host");
    let inner = pid_of(&data, "10.0.1.4");
    assert_eq!(public_ips(&s, "inner"), [("0".to_string(), "198.51.100.3".to_string())]);
    assert_eq!(
        seen(inner).as_deref(),
        Some("198.51.100.3"),
        "on a subnet without default outbound access, an instance with a public IP gets out with it"
    );
    assert_eq!(by_public("198.51.100.3").as_deref(), Some("inner000000 10.99.0.2"), "and is reached by it");
    // Hairpin: from inside the vnet, by the public IP; the answer comes back through the host.
    let web1 = pid_of(&data, "10.0.0.5");
    assert_eq!(
        from_instance(web1, "http://198.51.100.1:8080/").as_deref(),
        Some("web000000 198.51.100.2"),
        "instance 1 reaches instance 0 by its public IP, seen as its own public IP"
    );
    assert_eq!(
        from_instance(plain0, "http://198.51.100.1:8080/").as_deref(),
        Some("web000000 10.0.0.1"),
        "an instance without a public IP reaches it too, seen as the host's address on the bridge"
    );

    // (e) Bad input, each refused naming the field or the setting, nothing changed.
    let generation = s.json(&words("vmss show -g rg -n web --query modelGeneration"));
    refused(
        &s,
        &[
            "vmss",
            "update",
            "-g",
            "rg",
            "-n",
            "web",
            "--set",
            &format!("{PUBLIC_IP}.idleTimeoutInMinutes=31"),
            "--quiet",
        ],
        &["publicIPAddressConfiguration.idleTimeoutInMinutes", "31 is out of range; allowed 4 to 30"],
    );
    refused(
        &s,
        &words("vmss scale -g rg -n web --new-capacity 15 --quiet"),
        &[
            "sku.capacity",
            "public IP pool 198.51.100.0/28",
            "[network] public_ip_pool",
            "14 usable addresses, 3 in use; 16 are needed (15 for this set, 1 for the other sets with public IPs)",
        ],
    );
    let set = s.json(&words("vmss show -g rg -n web"));
    assert_eq!((&set["modelGeneration"], &set["sku"]["capacity"]), (&generation, &2.into()), "nothing changed");
    assert_eq!(public_ips(&s, "web").len(), 2);

    // (d) A restart keeps the address (and its NAT); scale-in releases it and the next instance
    // takes it again.
    s.ok(&words("vmss restart -g rg -n web --instance-ids 0 --quiet"));
    assert_eq!(public_ips(&s, "web")[0], ("0".to_string(), "198.51.100.1".to_string()), "kept across a restart");
    let answer = wait_for("instance 0 back at its public IP after the restart", Duration::from_secs(60), || {
        by_public("198.51.100.1")
    });
    assert_eq!(answer, "web000000 10.99.0.2");
    s.ok(&words("vmss scale -g rg -n web --new-capacity 1 --quiet"));
    wait_for("instance 1's address released", Duration::from_secs(60), || {
        (public_ips(&s, "web").len() == 1).then_some(())
    });
    wait_for("instance 1's address no longer NATed", Duration::from_secs(30), || {
        by_public("198.51.100.2").is_none().then_some(())
    });
    s.ok(&words("vmss scale -g rg -n web --new-capacity 2 --quiet"));
    assert_eq!(
        public_ips(&s, "web"),
        [("0".to_string(), "198.51.100.1".to_string()), ("2".to_string(), "198.51.100.2".to_string())],
        "the released address goes to the next instance"
    );
    let answer = wait_for("instance 2 at 198.51.100.2", Duration::from_secs(30), || {
        by_public("198.51.100.2").filter(|a| a.starts_with("web000002"))
    });
    assert_eq!(answer, "web000002 10.99.0.2");

    // (e, continued) A server with no pool, and a host-local one, refuse public IPs up front,
    // naming the setting to add or change.
    for (name, driver, cfg, needles) in [
        ("nopool", "process", "[network]\nmode = \"bridged\"\n", ["[network] public_ip_pool", "no public IP pool"]),
        (
            "local",
            "sim",
            &*format!("[network]\npublic_ip_pool = \"{POOL}\"\n"),
            ["[network] mode", "host-local networking"],
        ),
    ] {
        let data = dir.path().join(name);
        let other = if driver == "process" {
            Server::start_in(&ns.0, driver, &data, Some(cfg))
        } else {
            Server::start(driver, &data, Some(cfg))
        };
        let _state = RemoveOnDrop(hostnet_root(&data));
        other.group_with_image("rg", "Herd:App:1:1.0.0", &img);
        other.ok(&words("network vnet create -g rg -n othernet --address-prefix 10.50.0.0/16"));
        other
            .ok(&words("network vnet subnet create -g rg --vnet-name othernet -n web --address-prefixes 10.50.0.0/24"));
        let args = words("vmss create -g rg -n web --image Herd:App:1:1.0.0 --instance-count 1 --vnet-name othernet --subnet web --public-ip-per-vm --quiet");
        let e = refused(&other, &args, &needles);
        assert!(e.contains(PUBLIC_IP), "{name}: the field is named: {e}");
        assert_eq!(other.json(&words("vmss list -g rg")), serde_json::json!([]), "{name}: nothing created");
    }

    // (f) With every set, NSG and vnet gone: no table, no instance namespace, no link but the
    // test's own uplink.
    let nat_table = {
        let out = s.command("nft").args(["list", "tables"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).lines().find(|l| l.ends_with("_pub")).map(str::to_string)
    };
    assert!(nat_table.is_some(), "the NAT table exists while instances have public IPs");
    for set in ["web", "plain", "inner"] {
        s.ok(&["vmss", "delete", "-g", "rg", "-n", set, "--quiet", "--timeout", "300"]);
    }
    dissociate_subnet_nsg(&s, "rg", "mynet", "web");
    s.ok(&words("network nsg delete -g rg -n web-nsg"));
    s.ok(&words("network vnet delete -g rg -n mynet"));
    wait_for_no_nft_table(&s);
    wait_for("no herd link left in the server's namespace", Duration::from_secs(30), || {
        (ns.links() == ["hup0", "lo"]).then_some(())
    });
    let keys = ["rg/web/0", "rg/web/1", "rg/web/2", "rg/plain/0", "rg/inner/0"];
    assert_eq!(namespaces_of(&data, &keys), Vec::<String>::new(), "no instance namespace left");
    let _ = whoami.kill();
    let _ = whoami.wait();
}

/// `herd server` with this config refuses to start; returns its error output.
fn refused_at_startup(data: &std::path::Path, config: &str) -> String {
    let cfg = data.with_extension("bad.toml");
    std::fs::write(&cfg, config).unwrap();
    let out = Command::new(HERD)
        .args(["server", "--listen", "127.0.0.1:0", "--driver", "sim", "--data-dir"])
        .arg(data)
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "the server started with {config:?}: {e}");
    e
}

/// A pool on loopback, longer than /30, malformed, or overlapping a stored vnet keeps the
/// server from starting, with an error naming the setting (and the vnet in the way).
#[test]
fn a_bad_public_ip_pool_is_refused_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    for (pool, why) in [
        ("127.64.0.0/28", "loopback"),
        ("198.51.100.0/31", "/30 or shorter"),
        ("198.51.100.1/28", "host bits"),
        ("nonsense", "not an IPv4 prefix"),
    ] {
        let e = refused_at_startup(&data, &format!("[network]\npublic_ip_pool = \"{pool}\"\n"));
        assert!(e.contains("config: [network] public_ip_pool") && e.contains(why), "{pool}: {e}");
    }
    let mut s = Server::start("sim", &data, None);
    s.ok(&words("group create -n rg"));
    s.ok(&words("network vnet create -g rg -n mynet --address-prefix 10.0.0.0/16"));
    s.kill9();
    let e = refused_at_startup(&data, "[network]\npublic_ip_pool = \"10.0.5.0/28\"\n");
    assert!(
        e.contains("[network] public_ip_pool: 10.0.5.0/28 overlaps virtual network 'mynet' in resource group 'rg'"),
        "{e}"
    );
}
