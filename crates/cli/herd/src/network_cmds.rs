//! `herd network ...`: virtual networks, subnets, public IPs and load balancers, spelled as
//! `az network ...`.

use crate::output::{self, Columns, Format, Print};
use anyhow::{anyhow, Result};
use clap::{Args, Subcommand};
use herd_client::{enc, is_not_found, Client};
use serde_json::{json, Value};

#[derive(Debug, Subcommand)]
pub enum NetworkCmd {
    /// Virtual networks and their subnets.
    #[command(subcommand)]
    Vnet(VnetCmd),
    /// Public IP addresses (the host addresses load-balancer frontends listen on).
    #[command(subcommand, name = "public-ip")]
    PublicIp(PublicIpCmd),
    /// Load balancers, with their probes, rules, pools, frontends and NAT pools.
    #[command(subcommand)]
    Lb(LbCmd),
    /// Network security groups and their rules (Azure's semantics, enforced on the host).
    #[command(subcommand)]
    Nsg(NsgCmd),
    /// Instances' network interfaces.
    #[command(subcommand)]
    Nic(NicCmd),
}

#[derive(Debug, Subcommand)]
pub enum NsgCmd {
    /// Create a network security group (with the six default rules and no others).
    Create {
        #[command(flatten)]
        r: Named,
        #[arg(short, long, default_value = "local")]
        location: String,
    },
    #[command(flatten)]
    Plain(Plain),
    /// Security rules of a network security group.
    #[command(subcommand)]
    Rule(NsgRuleCmd),
}

/// `-g`, `--nsg-name`, `-n`.
#[derive(Debug, Args, Clone)]
pub struct NsgRuleRef {
    #[arg(short = 'g', long = "resource-group")]
    pub group: String,
    #[arg(long)]
    pub nsg_name: String,
    #[arg(short, long)]
    pub name: String,
}

#[derive(Debug, Subcommand)]
pub enum NsgRuleCmd {
    /// Create or update a rule. It reaches running instances within a second.
    Create {
        #[command(flatten)]
        r: NsgRuleRef,
        /// 100 to 4096, unique per direction; lower numbers are evaluated first.
        #[arg(long)]
        priority: i64,
        /// Inbound or Outbound.
        #[arg(long, default_value = "Inbound")]
        direction: String,
        /// Allow or Deny.
        #[arg(long, default_value = "Allow")]
        access: String,
        /// Tcp, Udp, Icmp or * (any).
        #[arg(long, default_value = "*")]
        protocol: String,
        /// Prefixes, addresses, * or the service tags VirtualNetwork, AzureLoadBalancer, Internet.
        #[arg(long, num_args = 1.., default_value = "*")]
        source_address_prefixes: Vec<String>,
        /// Ports or ranges (8000-8080), or *.
        #[arg(long, num_args = 1.., default_value = "*")]
        source_port_ranges: Vec<String>,
        #[arg(long, num_args = 1.., default_value = "*")]
        destination_address_prefixes: Vec<String>,
        /// Ports or ranges (8000-8080), or *. Azure's default is 80.
        #[arg(long, num_args = 1.., default_value = "80")]
        destination_port_ranges: Vec<String>,
        #[arg(long)]
        description: Option<String>,
    },
    List {
        #[arg(short = 'g', long = "resource-group")]
        group: String,
        #[arg(long)]
        nsg_name: String,
        /// Also list the six default rules.
        #[arg(long)]
        include_default: bool,
    },
    Show(NsgRuleRef),
    Delete(NsgRuleRef),
}

#[derive(Debug, Subcommand)]
pub enum NicCmd {
    /// The network security groups and rules that apply at an instance's NIC (the subnet's,
    /// then the NIC's), with service tags expanded: what the host enforces.
    ListEffectiveNsg {
        #[arg(short = 'g', long = "resource-group")]
        group: String,
        #[arg(long)]
        vmss_name: String,
        #[arg(long)]
        instance_id: String,
    },
}

/// The id of network security group `name` of `group` (or `name` itself when it is an id).
pub fn nsg_id(group: &str, name: &str) -> String {
    if name.starts_with('/') {
        name.to_string()
    } else {
        herd_model::network::network_id(group, "networkSecurityGroups", name)
    }
}

/// `-g` and `-n`.
#[derive(Debug, Args, Clone)]
pub struct Named {
    #[arg(short = 'g', long = "resource-group")]
    pub group: String,
    #[arg(short, long)]
    pub name: String,
}

/// List, show or delete: the same subcommands for every top-level network resource.
#[derive(Debug, Subcommand)]
pub enum Plain {
    List {
        #[arg(short = 'g', long = "resource-group")]
        group: String,
    },
    Show(Named),
    Delete(Named),
}

#[derive(Debug, Subcommand)]
pub enum VnetCmd {
    /// Create a virtual network (optionally with a first subnet).
    Create {
        #[command(flatten)]
        r: Named,
        /// Address prefixes, e.g. 10.0.0.0/16.
        #[arg(long = "address-prefix", visible_alias = "address-prefixes", num_args = 1.., default_value = "10.0.0.0/16")]
        prefixes: Vec<String>,
        #[arg(long)]
        subnet_name: Option<String>,
        #[arg(long)]
        subnet_prefix: Option<String>,
        #[arg(short, long, default_value = "local")]
        location: String,
    },
    #[command(flatten)]
    Plain(Plain),
    /// Subnets of a virtual network.
    #[command(subcommand)]
    Subnet(SubnetCmd),
}

/// `-g`, `--vnet-name`, `-n`.
#[derive(Debug, Args, Clone)]
pub struct SubnetRef {
    #[arg(short = 'g', long = "resource-group")]
    pub group: String,
    #[arg(long)]
    pub vnet_name: String,
    #[arg(short, long)]
    pub name: String,
}

#[derive(Debug, Subcommand)]
pub enum SubnetCmd {
    /// Create or update a subnet.
    Create {
        #[command(flatten)]
        r: SubnetRef,
        /// The subnet's prefix, inside the vnet's address space, e.g. 10.0.0.0/24.
        #[arg(long = "address-prefixes", visible_alias = "address-prefix")]
        prefix: String,
        /// Whether instances reach beyond the vnet through the host's address (SNAT, bridged
        /// networking). `false` makes the subnet private.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
        default_outbound_access: bool,
        /// Network security group (name or id) that filters every NIC on the subnet.
        #[arg(long)]
        network_security_group: Option<String>,
    },
    /// Change a subnet: its network security group ("" removes it) or its outbound access.
    Update {
        #[command(flatten)]
        r: SubnetRef,
        /// Network security group (name or id); "" dissociates it.
        #[arg(long)]
        network_security_group: Option<String>,
        #[arg(long, action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
        default_outbound_access: Option<bool>,
    },
    List {
        #[arg(short = 'g', long = "resource-group")]
        group: String,
        #[arg(long)]
        vnet_name: String,
    },
    Show(SubnetRef),
    Delete(SubnetRef),
}

#[derive(Debug, Subcommand)]
pub enum PublicIpCmd {
    /// Create a public IP. By default herd picks a loopback address from 127.64.0.0/10.
    Create {
        #[command(flatten)]
        r: Named,
        /// A specific address to use.
        #[arg(long)]
        address: Option<String>,
        /// Allow --address to be a non-loopback address of this host.
        #[arg(long)]
        allow_non_loopback: bool,
    },
    #[command(flatten)]
    Plain(Plain),
}

/// `-g`, `--lb-name`, `-n`.
#[derive(Debug, Args, Clone)]
pub struct ChildRef {
    #[arg(short = 'g', long = "resource-group")]
    pub group: String,
    #[arg(long)]
    pub lb_name: String,
    #[arg(short, long)]
    pub name: String,
}

/// `-g`, `--lb-name`.
#[derive(Debug, Args, Clone)]
pub struct LbRef {
    #[arg(short = 'g', long = "resource-group")]
    pub group: String,
    #[arg(long)]
    pub lb_name: String,
}

#[derive(Debug, Subcommand)]
pub enum ChildCmd<C: Args> {
    /// Create or update it.
    Create(C),
    List(LbRef),
    Show(ChildRef),
    Delete(ChildRef),
}

#[derive(Debug, Args)]
pub struct ProbeArgs {
    #[command(flatten)]
    pub r: ChildRef,
    /// Tcp, Http or Https (Http(s): healthy only on 200; Https does not check the certificate).
    #[arg(long)]
    pub protocol: String,
    #[arg(long)]
    pub port: i64,
    /// Path for Http probes (200 means healthy).
    #[arg(long)]
    pub path: Option<String>,
    /// Seconds between probes.
    #[arg(long, default_value_t = 15)]
    pub interval: i64,
    /// Consecutive results needed to change state.
    #[arg(
        long = "threshold",
        visible_alias = "probe-threshold",
        visible_alias = "number-of-probes",
        default_value_t = 2
    )]
    pub threshold: i64,
}

#[derive(Debug, Args)]
pub struct RuleArgs {
    #[command(flatten)]
    pub r: ChildRef,
    /// Tcp (Udp and All come later).
    #[arg(long, default_value = "Tcp")]
    pub protocol: String,
    #[arg(long)]
    pub frontend_port: i64,
    #[arg(long)]
    pub backend_port: i64,
    #[arg(long, default_value = "loadBalancerFrontEnd")]
    pub frontend_ip_name: String,
    /// Default: <lb-name>BEPool.
    #[arg(long)]
    pub backend_pool_name: Option<String>,
    #[arg(long)]
    pub probe_name: Option<String>,
    /// Default (5-tuple), SourceIP or SourceIPProtocol.
    #[arg(long, default_value = "Default")]
    pub load_distribution: String,
    /// Minutes, 4 to 30.
    #[arg(long, default_value_t = 4)]
    pub idle_timeout: i64,
}

#[derive(Debug, Args)]
pub struct PoolArgs {
    #[command(flatten)]
    pub r: ChildRef,
}

#[derive(Debug, Args)]
pub struct FrontendArgs {
    #[command(flatten)]
    pub r: ChildRef,
    #[arg(long)]
    pub public_ip_address: Option<String>,
}

#[derive(Debug, Args)]
pub struct NatPoolArgs {
    #[command(flatten)]
    pub r: ChildRef,
    #[arg(long, default_value = "Tcp")]
    pub protocol: String,
    #[arg(long)]
    pub frontend_port_range_start: i64,
    #[arg(long)]
    pub frontend_port_range_end: i64,
    #[arg(long)]
    pub backend_port: i64,
    #[arg(long, default_value = "loadBalancerFrontEnd")]
    pub frontend_ip_name: String,
}

#[derive(Debug, Subcommand)]
pub enum LbCmd {
    /// Create a load balancer with one frontend and one backend pool (and the public IP if it
    /// does not exist yet).
    Create {
        #[command(flatten)]
        r: Named,
        /// Public IP name for the frontend (created if absent).
        #[arg(long)]
        public_ip_address: Option<String>,
        #[arg(long, default_value = "loadBalancerFrontEnd")]
        frontend_ip_name: String,
        /// Default: <name>BEPool.
        #[arg(long)]
        backend_pool_name: Option<String>,
        /// Standard (accepted for az compatibility).
        #[arg(long, default_value = "Standard")]
        sku: String,
    },
    #[command(flatten)]
    Plain(Plain),
    /// Health probes.
    #[command(subcommand)]
    Probe(ChildCmd<ProbeArgs>),
    /// Load-balancing rules.
    #[command(subcommand)]
    Rule(ChildCmd<RuleArgs>),
    /// Backend address pools.
    #[command(subcommand, name = "address-pool")]
    AddressPool(ChildCmd<PoolArgs>),
    /// Frontend IP configurations.
    #[command(subcommand, name = "frontend-ip")]
    FrontendIp(ChildCmd<FrontendArgs>),
    /// Inbound NAT pools: one frontend port per instance.
    #[command(subcommand, name = "inbound-nat-pool")]
    InboundNatPool(ChildCmd<NatPoolArgs>),
}

const VNET_TABLE: Columns<'static> = &[
    ("Name", "name"),
    ("ResourceGroup", "resourceGroup"),
    ("Location", "location"),
    ("AddressPrefixes", "join(' ', addressSpace.addressPrefixes)"),
    ("Subnets", "length(subnets)"),
];
const SUBNET_TABLE: Columns<'static> = &[
    ("Name", "name"),
    ("AddressPrefix", "addressPrefix"),
    ("NetworkSecurityGroup", "networkSecurityGroup.id"),
    ("ProvisioningState", "provisioningState"),
];
const NSG_TABLE: Columns<'static> = &[
    ("Name", "name"),
    ("ResourceGroup", "resourceGroup"),
    ("Location", "location"),
    ("Rules", "length(securityRules)"),
];
const RULE_TABLE: Columns<'static> = &[
    ("Name", "name"),
    ("Priority", "priority"),
    ("Direction", "direction"),
    ("Access", "access"),
    ("Protocol", "protocol"),
    ("SourceAddressPrefixes", "join(' ', sourceAddressPrefixes)"),
    ("SourcePortRanges", "join(' ', sourcePortRanges)"),
    ("DestinationAddressPrefixes", "join(' ', destinationAddressPrefixes)"),
    ("DestinationPortRanges", "join(' ', destinationPortRanges)"),
];
const EFFECTIVE_TABLE: Columns<'static> = &[
    ("Name", "name"),
    ("Priority", "priority"),
    ("Direction", "direction"),
    ("Access", "access"),
    ("Protocol", "protocol"),
    ("Source", "join(' ', expandedSourceAddressPrefix)"),
    ("SourcePorts", "join(' ', sourcePortRanges)"),
    ("Destination", "join(' ', expandedDestinationAddressPrefix)"),
    ("DestinationPorts", "join(' ', destinationPortRanges)"),
];
const PIP_TABLE: Columns<'static> = &[
    ("Name", "name"),
    ("ResourceGroup", "resourceGroup"),
    ("IpAddress", "ipAddress"),
    ("UsedBy", "ipConfiguration.id"),
];
const LB_TABLE: Columns<'static> = &[
    ("Name", "name"),
    ("ResourceGroup", "resourceGroup"),
    ("Frontends", "length(frontendIPConfigurations)"),
    ("Pools", "length(backendAddressPools)"),
    ("Probes", "length(probes)"),
    ("Rules", "length(loadBalancingRules)"),
];

/// Lists the group's resources of `kind` (`virtualNetworks`, ...), shows one, or deletes one.
async fn plain(client: &Client, print: Print<'_>, kind: &str, table: Columns<'_>, op: Plain) -> Result<()> {
    match op {
        Plain::List { group } => print(&client.get(&format!("{}/{kind}", base(&group))).await?, Some(table)),
        Plain::Show(r) => print(&client.get(&path(&r.group, kind, &r.name)).await?, Some(table)),
        Plain::Delete(r) => client.delete(&path(&r.group, kind, &r.name)).await.map(drop),
    }
}

/// The subnet `r` names, as the server shows it.
async fn subnet(client: &Client, r: &SubnetRef) -> Result<Value> {
    let v = client.get(&path(&r.group, "virtualNetworks", &r.vnet_name)).await?;
    v["subnets"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"].as_str().is_some_and(|n| n.eq_ignore_ascii_case(&r.name))))
        .cloned()
        .ok_or_else(|| anyhow!("subnet '{}' does not exist in virtual network '{}'", r.name, r.vnet_name))
}

/// The path of the network resource `name` of `kind` (`virtualNetworks`, ...) in `group`.
fn path(group: &str, kind: &str, name: &str) -> String {
    format!("{}/{kind}/{}", base(group), enc(name))
}

fn base(group: &str) -> String {
    format!("/v1/resourceGroups/{}", enc(group))
}

fn lb_id(group: &str, lb: &str) -> String {
    herd_model::network::network_id(group, "loadBalancers", lb)
}

/// Runs a `herd network` command.
pub async fn run(client: &Client, fmt: Format, query: Option<&str>, cmd: NetworkCmd) -> Result<()> {
    let show = |v: &Value, cols: Option<Columns<'_>>| -> Result<()> {
        print!("{}", output::render(v, fmt, query, cols)?);
        Ok(())
    };
    let print: Print<'_> = &show;
    match cmd {
        NetworkCmd::Vnet(c) => match c {
            VnetCmd::Create { r, prefixes, subnet_name, subnet_prefix, location } => {
                let mut body =
                    json!({"location": location, "addressSpace": {"addressPrefixes": prefixes}, "subnets": []});
                match (subnet_name, subnet_prefix) {
                    (Some(n), Some(p)) => body["subnets"] = json!([{"name": n, "addressPrefix": p}]),
                    (None, None) => {}
                    _ => return Err(anyhow!("--subnet-name and --subnet-prefix go together")),
                }
                let v = client
                    .call(
                        reqwest::Method::PUT,
                        &path(&r.group, "virtualNetworks", &r.name),
                        Some(&body),
                        &[("If-None-Match", "*")],
                    )
                    .await?;
                print(&v, Some(VNET_TABLE))
            }
            VnetCmd::Plain(op) => plain(client, print, "virtualNetworks", VNET_TABLE, op).await,
            VnetCmd::Subnet(s) => match s {
                SubnetCmd::Create { r, prefix, default_outbound_access, network_security_group } => {
                    let path =
                        format!("{}/virtualNetworks/{}/subnets/{}", base(&r.group), enc(&r.vnet_name), enc(&r.name));
                    let mut body = json!({"addressPrefix": prefix, "defaultOutboundAccess": default_outbound_access});
                    if let Some(n) = network_security_group.filter(|n| !n.is_empty()) {
                        body["networkSecurityGroup"] = json!({"id": nsg_id(&r.group, &n)});
                    }
                    print(&client.put(&path, &body).await?, Some(SUBNET_TABLE))
                }
                SubnetCmd::Update { r, network_security_group, default_outbound_access } => {
                    let mut sub = subnet(client, &r).await?;
                    let obj =
                        sub.as_object_mut().ok_or_else(|| anyhow!("the server sent a subnet that is not an object"))?;
                    for k in ["id", "provisioningState"] {
                        obj.remove(k);
                    }
                    match network_security_group.as_deref() {
                        Some("") => {
                            obj.remove("networkSecurityGroup");
                        }
                        Some(n) => {
                            obj.insert("networkSecurityGroup".into(), json!({"id": nsg_id(&r.group, n)}));
                        }
                        None => {}
                    }
                    if let Some(b) = default_outbound_access {
                        obj.insert("defaultOutboundAccess".into(), json!(b));
                    }
                    let path =
                        format!("{}/virtualNetworks/{}/subnets/{}", base(&r.group), enc(&r.vnet_name), enc(&r.name));
                    print(&client.put(&path, &sub).await?, Some(SUBNET_TABLE))
                }
                SubnetCmd::List { group, vnet_name } => {
                    let v = client.get(&path(&group, "virtualNetworks", &vnet_name)).await?;
                    print(&v["subnets"], Some(SUBNET_TABLE))
                }
                SubnetCmd::Show(r) => print(&subnet(client, &r).await?, Some(SUBNET_TABLE)),
                SubnetCmd::Delete(r) => {
                    client
                        .delete(&format!(
                            "{}/virtualNetworks/{}/subnets/{}",
                            base(&r.group),
                            enc(&r.vnet_name),
                            enc(&r.name)
                        ))
                        .await?;
                    Ok(())
                }
            },
        },
        NetworkCmd::PublicIp(c) => match c {
            PublicIpCmd::Create { r, address, allow_non_loopback } => {
                let mut body = json!({});
                if let Some(a) = address {
                    body["ipAddress"] = json!(a);
                }
                let allow = if allow_non_loopback { "true" } else { "false" };
                let path = path(&r.group, "publicIPAddresses", &r.name);
                let v = client
                    .call(reqwest::Method::PUT, &path, Some(&body), &[("x-herd-allow-non-loopback", allow)])
                    .await?;
                print(&v, Some(PIP_TABLE))
            }
            PublicIpCmd::Plain(op) => plain(client, print, "publicIPAddresses", PIP_TABLE, op).await,
        },
        NetworkCmd::Lb(c) => lb(client, c, print).await,
        NetworkCmd::Nsg(c) => nsg(client, c, print).await,
        NetworkCmd::Nic(NicCmd::ListEffectiveNsg { group, vmss_name, instance_id }) => {
            let v = client
                .get(&format!(
                    "{}/virtualMachineScaleSets/{}/virtualMachines/{}/effectiveNetworkSecurityGroups",
                    base(&group),
                    enc(&vmss_name),
                    enc(&instance_id)
                ))
                .await?;
            if fmt == Format::Table && query.is_none() {
                // One table per group, in evaluation order.
                let groups = v["value"].as_array().cloned().unwrap_or_default();
                if groups.is_empty() {
                    println!("No network security group applies: the NIC is unfiltered.");
                }
                for g in groups {
                    let on = g["association"]["subnet"]["id"]
                        .as_str()
                        .map(|s| format!("subnet {s}"))
                        .or_else(|| g["association"]["networkInterface"]["id"].as_str().map(|n| format!("NIC {n}")))
                        .unwrap_or_default();
                    println!("{} (on {on})", g["networkSecurityGroup"]["id"].as_str().unwrap_or_default());
                    print(&g["effectiveSecurityRules"], Some(EFFECTIVE_TABLE))?;
                }
                Ok(())
            } else {
                print(&v, None)
            }
        }
    }
}

async fn nsg(client: &Client, c: NsgCmd, print: Print<'_>) -> Result<()> {
    let rule_path = |r: &NsgRuleRef| {
        format!("{}/networkSecurityGroups/{}/securityRules/{}", base(&r.group), enc(&r.nsg_name), enc(&r.name))
    };
    match c {
        NsgCmd::Create { r, location } => {
            let v = client
                .call(
                    reqwest::Method::PUT,
                    &path(&r.group, "networkSecurityGroups", &r.name),
                    Some(&json!({"location": location})),
                    &[("If-None-Match", "*")],
                )
                .await?;
            print(&v, Some(NSG_TABLE))
        }
        NsgCmd::Plain(op) => plain(client, print, "networkSecurityGroups", NSG_TABLE, op).await,
        NsgCmd::Rule(rc) => match rc {
            NsgRuleCmd::Create {
                r,
                priority,
                direction,
                access,
                protocol,
                source_address_prefixes,
                source_port_ranges,
                destination_address_prefixes,
                destination_port_ranges,
                description,
            } => {
                let mut body = json!({
                    "priority": priority, "direction": direction, "access": access, "protocol": protocol,
                    "sourceAddressPrefixes": source_address_prefixes, "sourcePortRanges": source_port_ranges,
                    "destinationAddressPrefixes": destination_address_prefixes,
                    "destinationPortRanges": destination_port_ranges,
                });
                if let Some(d) = description {
                    body["description"] = json!(d);
                }
                print(&client.put(&rule_path(&r), &body).await?, Some(RULE_TABLE))
            }
            NsgRuleCmd::List { group, nsg_name, include_default } => {
                let g = client.get(&path(&group, "networkSecurityGroups", &nsg_name)).await?;
                let mut rules = g["securityRules"].as_array().cloned().unwrap_or_default();
                if include_default {
                    rules.extend(g["defaultSecurityRules"].as_array().cloned().unwrap_or_default());
                }
                print(&Value::Array(rules), Some(RULE_TABLE))
            }
            NsgRuleCmd::Show(r) => print(&client.get(&rule_path(&r)).await?, Some(RULE_TABLE)),
            NsgRuleCmd::Delete(r) => client.delete(&rule_path(&r)).await.map(drop),
        },
    }
}

/// Ensures a public IP named `name` exists (creating it as az does) and returns its id.
pub async fn ensure_public_ip(client: &Client, group: &str, name: &str) -> Result<String> {
    let path = format!("{}/publicIPAddresses/{}", base(group), enc(name));
    match client.get(&path).await {
        Ok(v) => Ok(v["id"].as_str().unwrap_or_default().to_string()),
        Err(e) if is_not_found(&e) => {
            Ok(client.put(&path, &json!({})).await?["id"].as_str().unwrap_or_default().to_string())
        }
        Err(e) => Err(e),
    }
}

async fn child<C: Args>(
    client: &Client,
    print: Print<'_>,
    coll: &str,
    cmd: ChildCmd<C>,
    body: impl FnOnce(&C) -> Result<(ChildRef, Value)>,
) -> Result<()> {
    match cmd {
        ChildCmd::Create(a) => {
            let (r, b) = body(&a)?;
            let path = format!("{}/loadBalancers/{}/{coll}/{}", base(&r.group), enc(&r.lb_name), enc(&r.name));
            let v = client.put(&path, &b).await?;
            let created =
                v[coll].as_array().and_then(|a| a.iter().find(|x| x["name"] == r.name.as_str())).cloned().unwrap_or(v);
            print(&created, None)
        }
        ChildCmd::List(r) => {
            let v = client.get(&path(&r.group, "loadBalancers", &r.lb_name)).await?;
            print(&v[coll], None)
        }
        ChildCmd::Show(r) if coll == "backendAddressPools" => {
            let path =
                format!("{}/loadBalancers/{}/backendAddressPools/{}", base(&r.group), enc(&r.lb_name), enc(&r.name));
            print(&client.get(&path).await?, None)
        }
        ChildCmd::Show(r) => {
            let v = client.get(&path(&r.group, "loadBalancers", &r.lb_name)).await?;
            let found = v[coll]
                .as_array()
                .and_then(|a| a.iter().find(|x| x["name"].as_str().is_some_and(|n| n.eq_ignore_ascii_case(&r.name))))
                .cloned()
                .ok_or_else(|| anyhow!("'{}' does not exist in {coll} of load balancer '{}'", r.name, r.lb_name))?;
            print(&found, None)
        }
        ChildCmd::Delete(r) => {
            client
                .delete(&format!("{}/loadBalancers/{}/{coll}/{}", base(&r.group), enc(&r.lb_name), enc(&r.name)))
                .await?;
            Ok(())
        }
    }
}

async fn lb(client: &Client, c: LbCmd, print: Print<'_>) -> Result<()> {
    match c {
        LbCmd::Create { r, public_ip_address, frontend_ip_name, backend_pool_name, sku: _ } => {
            let mut fe = json!({"name": frontend_ip_name});
            if let Some(p) = public_ip_address {
                fe["publicIPAddress"] = json!({"id": ensure_public_ip(client, &r.group, &p).await?});
            }
            let pool = backend_pool_name.unwrap_or_else(|| format!("{}BEPool", r.name));
            let body = json!({"frontendIPConfigurations": [fe], "backendAddressPools": [{"name": pool}]});
            let path = path(&r.group, "loadBalancers", &r.name);
            let v = client.call(reqwest::Method::PUT, &path, Some(&body), &[("If-None-Match", "*")]).await?;
            print(&v, Some(LB_TABLE))
        }
        LbCmd::Plain(op) => plain(client, print, "loadBalancers", LB_TABLE, op).await,
        LbCmd::Probe(cmd) => {
            child(client, print, "probes", cmd, |a: &ProbeArgs| {
                let mut b = json!({"protocol": a.protocol, "port": a.port, "intervalInSeconds": a.interval, "probeThreshold": a.threshold});
                if let Some(p) = &a.path {
                    b["requestPath"] = json!(p);
                }
                Ok((a.r.clone(), b))
            })
            .await
        }
        LbCmd::Rule(cmd) => {
            child(client, print, "loadBalancingRules", cmd, |a: &RuleArgs| {
                let id = lb_id(&a.r.group, &a.r.lb_name);
                let pool = a.backend_pool_name.clone().unwrap_or_else(|| format!("{}BEPool", a.r.lb_name));
                let mut b = json!({
                    "protocol": a.protocol, "frontendPort": a.frontend_port, "backendPort": a.backend_port,
                    "frontendIPConfiguration": {"id": format!("{id}/frontendIPConfigurations/{}", a.frontend_ip_name)},
                    "backendAddressPool": {"id": format!("{id}/backendAddressPools/{pool}")},
                    "loadDistribution": a.load_distribution, "idleTimeoutInMinutes": a.idle_timeout,
                });
                if let Some(p) = &a.probe_name {
                    b["probe"] = json!({"id": format!("{id}/probes/{p}")});
                }
                Ok((a.r.clone(), b))
            })
            .await
        }
        LbCmd::AddressPool(cmd) => child(client, print, "backendAddressPools", cmd, |a: &PoolArgs| Ok((a.r.clone(), json!({})))).await,
        LbCmd::FrontendIp(cmd) => {
            let (group, pip) = match &cmd {
                ChildCmd::Create(a) => (a.r.group.clone(), a.public_ip_address.clone()),
                _ => (String::new(), None),
            };
            let pip_id = match pip {
                Some(p) => Some(ensure_public_ip(client, &group, &p).await?),
                None => None,
            };
            child(client, print, "frontendIPConfigurations", cmd, move |a: &FrontendArgs| {
                let mut b = json!({});
                if let Some(id) = pip_id {
                    b["publicIPAddress"] = json!({"id": id});
                }
                Ok((a.r.clone(), b))
            })
            .await
        }
        LbCmd::InboundNatPool(cmd) => {
            child(client, print, "inboundNatPools", cmd, |a: &NatPoolArgs| {
                let id = lb_id(&a.r.group, &a.r.lb_name);
                Ok((
                    a.r.clone(),
                    json!({
                        "protocol": a.protocol,
                        "frontendIPConfiguration": {"id": format!("{id}/frontendIPConfigurations/{}", a.frontend_ip_name)},
                        "frontendPortRangeStart": a.frontend_port_range_start,
                        "frontendPortRangeEnd": a.frontend_port_range_end,
                        "backendPort": a.backend_port,
                    }),
                ))
            })
            .await
        }
    }
}
