//! Network security groups on real traffic between bridged process instances, inside a network
//! namespace this test creates: a Deny rule for `VirtualNetwork` on 8080 blocks one instance's
//! HTTP request to another while the load balancer's probes (from the subnet's reserved `.2`,
//! `AzureLoadBalancer`) still pass; deleting the rule restores access; a NIC NSG after a
//! permissive subnet NSG still denies (both must allow); an outbound Deny to `Internet` cuts
//! an instance off from a namespace playing the internet and spares the vnet;
//! the load balancer from an "internet" namespace admits clients only once an Allow rule for
//! `Internet` exists (NAT pool ports likewise), its own connections coming from `.3`;
//! `list-effective-nsg` shows what is enforced; each instance reads its own name at
//! 169.254.169.254 while a spoofer and a direct request get nothing; bad input is refused naming the field; and with every NSG gone, no nftables table
//! is left.

mod common;

use common::*;
use std::time::{Duration, Instant};

/// The app: `/` answers 200 on the instance's address, port 8080.
fn app() -> String {
    python_http_app(r#"        body = NAME.encode(); status = 200"#, "exec python3 app.py")
}

/// The computer name instance `pid`'s namespace is told at 169.254.169.254 (3 s limit), asking
/// from `source` (its own address when None). None when nothing answers.
fn metadata_name(pid: u32, source: Option<&str>) -> Option<String> {
    let url = "http://169.254.169.254/metadata/instance/compute/name?api-version=2021-02-01&format=text";
    metadata_get(pid, url, source)
}

fn metadata_get(pid: u32, url: &str, source: Option<&str>) -> Option<String> {
    let mut cmd = std::process::Command::new("nsenter");
    cmd.args(["-t", &pid.to_string(), "-n", "curl", "-sf", "--max-time", "3", "-H", "Metadata: true"]);
    if let Some(ip) = source {
        cmd.args(["--interface", ip]);
    }
    let out = cmd.arg(url).output().expect("nsenter (util-linux) and curl are needed");
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The port of the metadata listener that 169.254.169.254 leads instance `ip` to, from the
/// server's metadata table.
fn listener_port(s: &Server, ip: std::net::Ipv4Addr) -> u16 {
    let out = s.command("nft").args(["list", "ruleset"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let key = format!("{:#010x} : ", u32::from(ip));
    let at = text.find(&key).unwrap_or_else(|| panic!("no metadata route for {ip} in:\n{text}"));
    text[at + key.len()..].split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
}

fn in_rotation(s: &Server) -> usize {
    pool_in_rotation(s, "rg", "web-lb", "web-lbBEPool")
}

#[test]
fn nsg_rules_filter_instance_traffic_and_spare_probes() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "bridged networking needs root (namespaces, bridges, nftables): run ./scripts/test.sh as root, as CI does"
    );
    let ns = TestNetns::create(&format!("herdg{}", std::process::id()));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = Server::start_in(&ns.0, "process", &data, Some("[network]\nmode = \"bridged\"\n"));
    let _state = RemoveOnDrop(hostnet_root(&data));
    let img = image_dir(&dir.path().join("img"), &app());
    s.group_with_image("rg", "Herd:App:1:1.0.0", &img);
    s.ok(&words("network vnet create -g rg -n mynet --address-prefix 10.0.0.0/16"));
    s.ok(&words("network vnet subnet create -g rg --vnet-name mynet -n web --address-prefixes 10.0.0.0/24"));
    s.ok(&words("network lb create -g rg -n web-lb --public-ip-address web-lb-ip"));
    ProbedRule::default().create(&s);
    s.create_set(
        "rg",
        "web",
        "Herd:App:1:1.0.0",
        "2",
        &words("--vm-sku Standard_B1s --vnet-name mynet --subnet web --lb web-lb"),
    );
    wait_for("both instances in rotation", Duration::from_secs(120), || (in_rotation(&s) == 2).then_some(()));
    let (a, b) = (pid_of("10.0.0.4"), pid_of("10.0.0.5"));
    assert!(reaches(a, "10.0.0.5"), "without an NSG, instances reach each other");

    // Metadata at Azure's address: each instance is told its own VM name, told apart by the
    // bridge port it asks through; one that takes the other's address gets nothing, and so
    // does a request straight to a listener's port.
    let env = std::fs::read(format!("/proc/{a}/environ")).unwrap();
    assert!(
        String::from_utf8_lossy(&env).contains("HERD_METADATA_URL=http://169.254.169.254:80/metadata\0"),
        "the process is told where its metadata is"
    );
    let name_a =
        wait_for("instance 0 to read its name at 169.254.169.254", Duration::from_secs(30), || metadata_name(a, None));
    assert_eq!(name_a, "web_0");
    assert_eq!(metadata_name(b, None).as_deref(), Some("web_1"));
    let in_b = |cmd: &str| {
        let st =
            std::process::Command::new("nsenter").args(["-t", &b.to_string(), "-n", "sh", "-c", cmd]).status().unwrap();
        assert!(st.success(), "{cmd}");
    };
    in_b("ip addr add 10.0.0.4/32 dev eth0");
    assert_eq!(metadata_name(b, Some("10.0.0.4")), None, "a spoofer reads nothing as 10.0.0.4");
    in_b("ip addr del 10.0.0.4/32 dev eth0");
    let port = listener_port(&s, "10.0.0.4".parse().unwrap());
    let direct = format!("http://10.0.0.1:{port}/metadata/instance/compute/name?api-version=2021-02-01&format=text");
    assert_eq!(metadata_get(b, &direct, None), None, "instance 1 cannot reach instance 0's listener directly");
    assert_eq!(metadata_get(a, &direct, None), None, "nor can instance 0 itself, except through 169.254.169.254");
    assert_eq!(metadata_name(b, None).as_deref(), Some("web_1"), "the real instance still reads its own");

    // Bad input, each refused naming the field, nothing written.
    s.ok(&words("network nsg create -g rg -n web-nsg"));
    let rule = |name: &str, extra: &str| format!("network nsg rule create -g rg --nsg-name web-nsg -n {name} {extra}");
    let e = s.err(&words(&rule("low", "--priority 99 --access Deny")));
    assert!(e.contains("priority") && e.contains("100 to 4096"), "{e}");
    let e = s.err(&words(&rule("ports", "--priority 300 --destination-port-ranges 90-80")));
    assert!(e.contains("destinationPortRanges[0]"), "{e}");
    let e = s.err(&words(&rule("proto", "--priority 300 --protocol Sctp")));
    assert!(e.contains("Tcp, Udp, Icmp, *"), "{e}");
    let e = s.err(&words("network vnet subnet update -g rg --vnet-name mynet -n web --network-security-group nope"));
    assert!(e.contains("networkSecurityGroup") && e.contains("does not exist"), "{e}");
    assert_eq!(
        s.json(&words("network nsg rule list -g rg --nsg-name web-nsg")),
        serde_json::json!([]),
        "nothing half-applied"
    );

    // Deny 8080 from the vnet, on the subnet.
    s.ok(&words(&rule("no-vnet-8080", "--priority 200 --access Deny --protocol Tcp --source-address-prefixes VirtualNetwork --destination-port-ranges 8080")));
    let e = s.err(&words(&rule("again", "--priority 200 --access Allow")));
    assert!(e.contains("already used by rule 'no-vnet-8080'"), "{e}");
    let probes_before = counted(&s, "defaultSecurityRules/AllowAzureLoadBalancerInBound");
    let t0 = Instant::now();
    s.ok(&words("network vnet subnet update -g rg --vnet-name mynet -n web --network-security-group web-nsg"));
    wait_for("the NSG to block 10.0.0.4 -> 10.0.0.5:8080", Duration::from_secs(30), || {
        (!reaches(a, "10.0.0.5")).then_some(())
    });
    eprintln!("association to enforcement: {:?} (curl's 2 s limit included)", t0.elapsed());
    assert!(!reaches(b, "10.0.0.4"), "both ways");
    // Probes pass by AllowAzureLoadBalancerInBound: count several after the rule, then both
    // instances must still be in rotation.
    wait_for("6 probe connections let in as AzureLoadBalancer", Duration::from_secs(60), || {
        (counted(&s, "defaultSecurityRules/AllowAzureLoadBalancerInBound") >= probes_before + 6).then_some(())
    });
    assert_eq!(in_rotation(&s), 2, "probes still pass, so both instances stay in rotation");
    assert_eq!(metadata_name(a, None).as_deref(), Some("web_0"), "NSGs never filter the metadata address");
    assert!(counted(&s, "securityRules/no-vnet-8080") >= 1, "the Deny rule counted the blocked requests");

    // What the host enforces is what list-effective-nsg shows.
    let eff = s.json(&words("network nic list-effective-nsg -g rg --vmss-name web --instance-id 0"));
    let groups = eff["value"].as_array().unwrap();
    assert_eq!(groups.len(), 1, "{eff}");
    assert!(groups[0]["association"]["subnet"]["id"].as_str().unwrap().ends_with("/subnets/web"), "{eff}");
    let rules = groups[0]["effectiveSecurityRules"].as_array().unwrap();
    assert_eq!(rules[0]["name"], "securityRules/no-vnet-8080", "{eff}");
    assert_eq!(rules[0]["expandedSourceAddressPrefix"], serde_json::json!(["10.0.0.0/16", "except 10.0.0.2/32"]));
    let table = s.ok(&words("network nic list-effective-nsg -g rg --vmss-name web --instance-id 0 -o table"));
    assert!(table.contains("DenyAllInBound") && table.contains("no-vnet-8080"), "{table}");

    // Deleting the rule restores access.
    let e = s.err(&words("network nsg delete -g rg -n web-nsg"));
    assert!(e.contains("associated with subnet(s) mynet/web"), "{e}");
    let e = s.err(&words("network nsg rule delete -g rg --nsg-name web-nsg -n DenyAllInBound"));
    assert!(e.contains("default rules cannot be changed or deleted"), "{e}");
    let t0 = Instant::now();
    s.ok(&words("network nsg rule delete -g rg --nsg-name web-nsg -n no-vnet-8080"));
    wait_for("access restored after the rule's deletion", Duration::from_secs(30), || {
        reaches(a, "10.0.0.5").then_some(())
    });
    eprintln!("rule deletion to access: {:?}", t0.elapsed());

    // Outbound: "the internet" (a namespace behind the server's namespace, 10.99.0.2) is
    // reached by AllowInternetOutBound until an outbound Deny to Internet.
    let inet = TestNetns::create(&format!("herdi{}", std::process::id()));
    let sh = |cmd: &str| {
        let st = std::process::Command::new("sh").arg("-c").arg(cmd).status().unwrap();
        assert!(st.success(), "{cmd}");
    };
    sh(&format!("ip -n {} link add hup0 type veth peer name eth0 netns {}", ns.0, inet.0));
    sh(&format!("ip -n {} addr add 10.99.0.1/24 dev hup0 && ip -n {} link set hup0 up", ns.0, ns.0));
    sh(&format!("ip -n {} addr add 10.99.0.2/24 dev eth0 && ip -n {} link set eth0 up", inet.0, inet.0));
    let mut web = std::process::Command::new("ip")
        .args(["netns", "exec", &inet.0, "python3", "-m", "http.server", "--bind", "10.99.0.2", "8080"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for("instance 0 to reach the internet namespace", Duration::from_secs(30), || {
        reaches(a, "10.99.0.2").then_some(())
    });
    s.ok(&words(
        "network nsg rule create -g rg --nsg-name web-nsg -n no-internet --priority 150 --direction Outbound \
         --access Deny --protocol * --destination-address-prefixes Internet --destination-port-ranges *",
    ));
    wait_for("the outbound Deny to block the internet", Duration::from_secs(30), || {
        (!reaches(a, "10.99.0.2")).then_some(())
    });
    assert!(reaches(a, "10.0.0.5"), "the vnet is still reachable: AllowVnetOutBound");
    s.ok(&words("network nsg rule delete -g rg --nsg-name web-nsg -n no-internet"));
    wait_for("the internet reachable again", Duration::from_secs(30), || reaches(a, "10.99.0.2").then_some(()));

    // The load balancer from the internet: a frontend on the server namespace's address
    // toward it. The subnet's NSG admits no Internet client until a rule allows it on the
    // backend port (the load balancer checks the client's address by the backend NIC's
    // inbound rules, as a Standard load balancer's backends do in Azure); the connection to
    // the backend comes from the subnet's `.3`, which a Deny for VirtualNetwork does not stop.
    s.ok(&words("network public-ip create -g rg -n inet-ip --address 10.99.0.1 --allow-non-loopback"));
    s.ok(&words("network lb frontend-ip create -g rg --lb-name web-lb -n inet --public-ip-address inet-ip"));
    s.ok(&words(
        "network lb rule create -g rg --lb-name web-lb -n inet-http --frontend-ip-name inet --frontend-port 80 \
         --backend-port 8080 --probe-name webprobe",
    ));
    let get_from_internet = |port: u16| {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &inet.0, "curl", "-s", "--max-time", "2", &format!("http://10.99.0.1:{port}/")])
            .output()
            .expect("curl is needed");
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).to_string())
    };
    let from_internet = || get_from_internet(80);
    wait_for("the frontend on 10.99.0.1:80 to listen", Duration::from_secs(30), || {
        std::process::Command::new("ip")
            .args(["netns", "exec", &ns.0, "ss", "-Hltn", "sport = :80"])
            .output()
            .ok()
            .filter(|o| String::from_utf8_lossy(&o.stdout).contains("10.99.0.1:80"))
            .map(|_| ())
    });
    assert_eq!(from_internet(), None, "no rule allows Internet: the load balancer admits no client");
    s.ok(&words(
        "network nsg rule create -g rg --nsg-name web-nsg -n web-from-internet --priority 300 --access Allow \
         --protocol Tcp --source-address-prefixes Internet --destination-port-ranges 8080",
    ));
    let body = wait_for("the Allow rule to admit the internet through the LB", Duration::from_secs(30), from_internet);
    assert!(body == "web000000" || body == "web000001", "{body}");
    // An inbound NAT pool on the same frontend: one port per instance, to its private IP.
    s.ok(&words(
        "network lb inbound-nat-pool create -g rg --lb-name web-lb -n direct --frontend-ip-name inet \
         --frontend-port-range-start 50000 --frontend-port-range-end 50009 --backend-port 8080",
    ));
    let lb_id = s.json(&words("network lb show -g rg -n web-lb --query id"));
    let nat_ref = format!("{{\"id\": \"{}/inboundNatPools/direct\"}}", lb_id.as_str().unwrap());
    s.ok(&[
        "vmss", "update", "-g", "rg", "-n", "web", "--add",
        "virtualMachineProfile.networkProfile.networkInterfaceConfigurations[0].ipConfigurations[0].loadBalancerInboundNatPools",
        &nat_ref, "--quiet",
    ]);
    for (port, name) in [(50000, "web000000"), (50001, "web000001")] {
        let got = wait_for(&format!("NAT port {port} from the internet"), Duration::from_secs(60), || {
            get_from_internet(port)
        });
        assert_eq!(got, name, "NAT port {port} leads to its instance's private IP");
    }
    s.ok(&words(
        "network nsg rule create -g rg --nsg-name web-nsg -n no-vnet-8080 --priority 200 --access Deny \
         --protocol Tcp --source-address-prefixes VirtualNetwork --destination-port-ranges 8080",
    ));
    wait_for("the vnet Deny in force", Duration::from_secs(30), || (!reaches(a, "10.0.0.5")).then_some(()));
    assert!(from_internet().is_some(), "the LB's own connection (from .3) is not a VirtualNetwork client");
    s.ok(&words("network nsg rule delete -g rg --nsg-name web-nsg -n no-vnet-8080"));
    s.ok(&words("network nsg rule delete -g rg --nsg-name web-nsg -n web-from-internet"));
    wait_for("the internet refused again", Duration::from_secs(30), || from_internet().is_none().then_some(()));
    assert_eq!(get_from_internet(50000), None, "the NAT pool is guarded by the same rules");
    let _ = web.kill();
    let _ = web.wait();

    // The NIC's NSG is checked after the subnet's: the subnet's defaults allow the vnet, the
    // NIC's Deny still blocks.
    s.ok(&words("network nsg create -g rg -n nic-nsg"));
    s.ok(&words(
        "network nsg rule create -g rg --nsg-name nic-nsg -n no-8080 --priority 100 --access Deny --protocol Tcp \
         --destination-port-ranges 8080",
    ));
    let nsg_id = s.json(&words("network nsg show -g rg -n nic-nsg --query id"));
    s.ok(&[
        "vmss", "update", "-g", "rg", "-n", "web", "--set",
        &format!("virtualMachineProfile.networkProfile.networkInterfaceConfigurations[0].networkSecurityGroup={{\"id\": {nsg_id}}}"),
        "--quiet",
    ]);
    wait_for("the NIC NSG to block 8080", Duration::from_secs(30), || (!reaches(a, "10.0.0.5")).then_some(()));
    let eff = s.json(&words("network nic list-effective-nsg -g rg --vmss-name web --instance-id 1"));
    let order: Vec<bool> =
        eff["value"].as_array().unwrap().iter().map(|g| g["association"]["subnet"].is_object()).collect();
    assert_eq!(order, [true, false], "the subnet's NSG first, then the NIC's: {eff}");

    // With every set and NSG gone, no table is left.
    s.ok(&["vmss", "delete", "-g", "rg", "-n", "web", "--quiet", "--timeout", "300"]);
    s.ok(&words("network nsg delete -g rg -n nic-nsg"));
    dissociate_subnet_nsg(&s, "rg", "mynet", "web");
    s.ok(&words("network nsg delete -g rg -n web-nsg"));
    wait_for_no_nft_table(&s);
}

/// A forward chain with policy drop (as Docker leaves) would silently cut bridged instances
/// off once br_netfilter hands their traffic to it: the server says so, naming the chain.
#[test]
fn a_forward_drop_policy_elsewhere_is_reported() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "network namespaces need root: run ./scripts/test.sh as root, as CI does"
    );
    let ns = TestNetns::create(&format!("herdf{}", std::process::id()));
    let mut nft = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.0, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    nft.stdin
        .take()
        .unwrap()
        .write_all(
            b"table ip filter {\n chain FORWARD {\n  type filter hook forward priority filter; policy drop;\n }\n}\n",
        )
        .unwrap();
    assert!(nft.wait().unwrap().success(), "the test's drop policy could not be installed");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = Server::start_in(&ns.0, "process", &data, Some("[network]\nmode = \"bridged\"\n"));
    let _state = RemoveOnDrop(hostnet_root(&data));
    wait_for("the server's warning about table ip filter chain FORWARD", Duration::from_secs(60), || {
        s.log_text().contains("bridged traffic may be blocked: table ip filter chain FORWARD").then_some(())
    });
}
