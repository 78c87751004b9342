//! Networks and load-balancer resources through the real CLI: steps 1 and 3 of the walkthrough,
//! and bad input that must be refused with the field named and nothing changed.

mod common;

use common::*;

fn setup() -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start("sim", &dir.path().join("data"), Some(SIM_CONFIG));
    s.ok(&["group", "create", "-n", "web-rg", "-l", "local"]);
    (dir, s)
}

#[test]
fn walkthrough_network_and_load_balancer_commands() {
    let (_d, s) = setup();
    s.ok(&["network", "vnet", "create", "-g", "web-rg", "-n", "mynet", "--address-prefix", "10.0.0.0/16"]);
    s.ok(&words("network vnet subnet create -g web-rg --vnet-name mynet -n web --address-prefixes 10.0.0.0/24"));
    let id = s.ok(&words("network vnet subnet show -g web-rg --vnet-name mynet -n web --query id -o tsv"));
    assert_eq!(id.trim(), "/resourceGroups/web-rg/providers/Microsoft.Network/virtualNetworks/mynet/subnets/web");

    // The LB creates its public IP as az does, on its own loopback address.
    s.ok(&["network", "lb", "create", "-g", "web-rg", "-n", "web-lb", "--public-ip-address", "web-lb-ip"]);
    let ip =
        s.ok(&["network", "public-ip", "show", "-g", "web-rg", "-n", "web-lb-ip", "--query", "ipAddress", "-o", "tsv"]);
    let ip: std::net::Ipv4Addr = ip.trim().parse().unwrap();
    assert_eq!(ip.octets()[0], 127);
    assert!((64..128).contains(&ip.octets()[1]), "from 127.64.0.0/10: {ip}");
    let second = s.json(&["network", "public-ip", "create", "-g", "web-rg", "-n", "other-ip"]);
    assert_ne!(second["ipAddress"].as_str().unwrap(), ip.to_string(), "each public IP gets its own address");

    s.ok(&words(
        "network lb probe create -g web-rg --lb-name web-lb --name webprobe --protocol Http --path / --port 80 \
         --interval 5 --threshold 2",
    ));
    s.ok(&words(
        "network lb rule create -g web-rg --lb-name web-lb --name myHTTPRule --protocol tcp --frontend-port 80 \
         --backend-port 80 --frontend-ip-name loadBalancerFrontEnd --backend-pool-name web-lbBEPool --probe-name \
         webprobe",
    ));
    s.ok(&words(
        "network lb inbound-nat-pool create -g web-rg --lb-name web-lb --name ssh --frontend-port-range-start 50000 \
         --frontend-port-range-end 50119 --backend-port 22",
    ));
    let lb = s.json(&["network", "lb", "show", "-g", "web-rg", "-n", "web-lb"]);
    assert_eq!(lb["frontendIPConfigurations"][0]["name"], "loadBalancerFrontEnd");
    assert_eq!(lb["backendAddressPools"][0]["name"], "web-lbBEPool");
    let rule = &lb["loadBalancingRules"][0];
    assert_eq!(rule["protocol"], "Tcp");
    assert_eq!(rule["loadDistribution"], "Default");
    assert_eq!(rule["probe"]["id"], format!("{}/probes/webprobe", lb["id"].as_str().unwrap()));
    assert_eq!(lb["probes"][0]["intervalInSeconds"], 5);
    let table = s.ok(&["network", "lb", "list", "-g", "web-rg", "-o", "table"]);
    assert!(table.contains("web-lb"), "{table}");

    // Cleanup order is enforced: a public IP in use cannot go.
    assert!(s
        .err(&["network", "public-ip", "delete", "-g", "web-rg", "-n", "web-lb-ip"])
        .contains("used by load balancer"));
    s.ok(&["network", "lb", "delete", "-g", "web-rg", "-n", "web-lb"]);
    s.ok(&["network", "public-ip", "delete", "-g", "web-rg", "-n", "web-lb-ip"]);
    s.ok(&["network", "vnet", "delete", "-g", "web-rg", "-n", "mynet"]);
}

#[test]
fn bad_network_input_is_refused_and_changes_nothing() {
    let (_d, s) = setup();
    s.ok(&words(
        "network vnet create -g web-rg -n mynet --address-prefix 10.0.0.0/16 --subnet-name a --subnet-prefix \
         10.0.0.0/24",
    ));
    s.ok(&["network", "lb", "create", "-g", "web-rg", "-n", "web-lb", "--public-ip-address", "web-lb-ip"]);
    s.ok(&words("network lb probe create -g web-rg --lb-name web-lb --name p --protocol Tcp --port 80"));
    s.ok(&words(
        "network lb rule create -g web-rg --lb-name web-lb --name r --frontend-port 80 --backend-port 80 --probe-name \
         p",
    ));
    let before_lb = s.json(&["network", "lb", "show", "-g", "web-rg", "-n", "web-lb"]);
    let before_vnet = s.json(&["network", "vnet", "show", "-g", "web-rg", "-n", "mynet"]);
    let sub = |n: &'static str, p: &'static str| -> Vec<&'static str> {
        vec![
            "network",
            "vnet",
            "subnet",
            "create",
            "-g",
            "web-rg",
            "--vnet-name",
            "mynet",
            "-n",
            n,
            "--address-prefixes",
            p,
        ]
    };
    let rule = |extra: &[&'static str]| -> Vec<&'static str> {
        let mut v = vec![
            "network",
            "lb",
            "rule",
            "create",
            "-g",
            "web-rg",
            "--lb-name",
            "web-lb",
            "--name",
            "r2",
            "--backend-port",
            "80",
        ];
        v.extend_from_slice(extra);
        v
    };
    let probe = |extra: &[&'static str]| -> Vec<&'static str> {
        let mut v = vec!["network", "lb", "probe", "create", "-g", "web-rg", "--lb-name", "web-lb", "--name", "p2"];
        v.extend_from_slice(extra);
        v
    };
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["network", "vnet", "create", "-g", "web-rg", "-n", "bad", "--address-prefix", "10.0.0.0/33"],
            "IPv4 prefix",
        ),
        (
            vec!["network", "vnet", "create", "-g", "web-rg", "-n", "bad", "--address-prefix", "10.0.5.0/16"],
            "host bits",
        ),
        (
            vec!["network", "vnet", "create", "-g", "web-rg", "-n", "bad", "--address-prefix", "10.0.128.0/17"],
            "overlaps virtual network 'mynet'",
        ),
        (sub("b", "10.1.0.0/24"), "outside the virtual network"),
        (sub("b", "10.0.0.128/25"), "overlaps subnet 'a'"),
        (sub("b", "nonsense"), "addressPrefix"),
        (probe(&["--protocol", "Icmp", "--port", "80"]), "Tcp, Http, Https"),
        (probe(&["--protocol", "Tcp", "--port", "0"]), "probes[1].port"),
        (probe(&["--protocol", "Tcp", "--port", "70000"]), "allowed 1 to 65535"),
        (probe(&["--protocol", "Http", "--port", "80", "--path", "/", "--interval", "0"]), "intervalInSeconds"),
        (probe(&["--protocol", "Http", "--port", "80", "--path", "/", "--threshold", "101"]), "probeThreshold"),
        (probe(&["--protocol", "Http", "--port", "80"]), "needs a path"),
        (probe(&["--protocol", "Https", "--port", "443", "--path", "health"]), "must start with '/'"),
        (rule(&["--frontend-port", "81", "--backend-pool-name", "nopool"]), "'nopool' does not exist"),
        (rule(&["--frontend-port", "81", "--probe-name", "noprobe"]), "'noprobe' does not exist"),
        (rule(&["--frontend-port", "80"]), "already used by 'r'"),
        (rule(&["--frontend-port", "81", "--protocol", "Sctp"]), "Tcp, Udp, All"),
        (
            vec!["network", "lb", "probe", "delete", "-g", "web-rg", "--lb-name", "web-lb", "--name", "p"],
            "still in use",
        ),
        (
            vec!["network", "public-ip", "create", "-g", "web-rg", "-n", "x", "--address", "10.1.2.3"],
            "not a loopback address",
        ),
        (vec!["network", "lb", "create", "-g", "web-rg", "-n", "web-lb"], "already exists"),
        (vec!["network", "lb", "show", "-g", "web-rg", "-n", "nope"], "does not exist"),
    ];
    for (args, expect) in cases {
        let err = s.err(&args);
        assert!(err.contains(expect), "herd {}: expected '{expect}' in:\n{err}", args.join(" "));
    }
    // Vnets of one server never overlap, whatever their group.
    s.ok(&["group", "create", "-n", "other-rg", "-l", "local"]);
    let err = s.err(&["network", "vnet", "create", "-g", "other-rg", "-n", "mynet", "--address-prefix", "10.0.0.0/8"]);
    assert!(err.contains("overlaps virtual network 'mynet' in resource group 'web-rg'"), "{err}");
    s.ok(&["network", "vnet", "create", "-g", "other-rg", "-n", "mynet", "--address-prefix", "10.1.0.0/16"]);
    assert_eq!(
        s.json(&["network", "lb", "show", "-g", "web-rg", "-n", "web-lb"]),
        before_lb,
        "the load balancer is unchanged"
    );
    assert_eq!(
        s.json(&["network", "vnet", "show", "-g", "web-rg", "-n", "mynet"]),
        before_vnet,
        "the vnet is unchanged"
    );
}

#[test]
fn scale_set_joins_a_subnet_and_a_pool_as_in_the_walkthrough() {
    let (d, s) = setup();
    let img = image_dir(&d.path().join("img"), "exec sleep 3600");
    s.ok(&["image", "import", "--urn", "Herd:TestGuest:1:1.0.0", "--dir", img.to_str().unwrap()]);
    s.ok(&["network", "vnet", "create", "-g", "web-rg", "-n", "mynet", "--address-prefix", "10.0.0.0/16"]);
    s.ok(&words("network vnet subnet create -g web-rg --vnet-name mynet -n web --address-prefixes 10.0.0.0/24"));
    let subnet = s.ok(&words("network vnet subnet show -g web-rg --vnet-name mynet -n web --query id -o tsv"));
    s.ok(&[words("vmss create -n webscaleset -g web-rg --image Herd:TestGuest:1:1.0.0 --instance-count 2 --vm-sku Standard_B1ms --admin-username labuser --authentication-type password --admin-password a-long-enough-password --public-ip-address web-lb-ip --subnet"), vec![subnet.trim()], words("--lb web-lb --upgrade-policy-mode Manual --quiet")].concat());
    let lb = s.json(&["network", "lb", "show", "-g", "web-rg", "-n", "web-lb"]);
    assert_eq!(lb["frontendIPConfigurations"][0]["name"], "loadBalancerFrontEnd", "created implicitly, as az does");
    assert_eq!(lb["backendAddressPools"][0]["name"], "web-lbBEPool");
    let set = s.json(&["vmss", "show", "-g", "web-rg", "-n", "webscaleset"]);
    let ipc =
        &set["virtualMachineProfile"]["networkProfile"]["networkInterfaceConfigurations"][0]["ipConfigurations"][0];
    assert_eq!(ipc["subnet"]["id"], subnet.trim());
    assert!(ipc["loadBalancerBackendAddressPools"][0]["id"]
        .as_str()
        .unwrap()
        .ends_with("/backendAddressPools/web-lbBEPool"));

    let ips: Vec<String> = s
        .json(&["vmss", "list-instances", "-g", "web-rg", "-n", "webscaleset", "--query", "[].privateIpAddress"])
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(ips.len(), 2);
    for ip in &ips {
        let a: std::net::Ipv4Addr = ip.parse().unwrap();
        assert_eq!(&a.octets()[..3], &[10, 0, 0]);
        assert!(a.octets()[3] >= 4, "Azure reserves the first four addresses: {a}");
    }
    assert_ne!(ips[0], ips[1]);

    assert!(s.err(&["network", "lb", "delete", "-g", "web-rg", "-n", "web-lb"]).contains("used by scale set"));
    assert!(s
        .err(&["network", "vnet", "subnet", "delete", "-g", "web-rg", "--vnet-name", "mynet", "-n", "web"])
        .contains("used by scale set"));
    let err =
        s.err(&words("vmss create -n other -g web-rg --image Herd:TestGuest:1:1.0.0 --vnet-name mynet --subnet nope"));
    assert!(err.contains("does not exist"), "{err}");
    s.ok(&["vmss", "delete", "-g", "web-rg", "-n", "webscaleset", "--quiet"]);
    s.ok(&["network", "lb", "delete", "-g", "web-rg", "-n", "web-lb"]);
}
