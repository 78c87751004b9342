//! What each subcommand does: build the request, send it, wait for convergence, print.

use crate::cli::*;
use crate::output::{self, Columns, Format};
use crate::wait::{self, Until};
use anyhow::{anyhow, bail, Context, Result};
use herd_client::{enc, set_path, Client};
use serde_json::{json, Map, Value};
use std::time::Duration;

const SET_TABLE: Columns<'static> = &[
    ("Name", "name"),
    ("ResourceGroup", "resourceGroup"),
    ("Location", "location"),
    ("Zones", "join(' ', zones)"),
    ("Sku", "sku.name"),
    ("Capacity", "sku.capacity"),
    ("UpgradePolicy", "upgradePolicy.mode"),
    ("ModelGeneration", "modelGeneration"),
    ("ProvisioningState", "provisioningState"),
    ("Running", "instanceSummary.running"),
];
const HOST_TABLE: Columns<'static> = &[
    ("Host", "name"),
    ("Zone", "zone"),
    ("FaultDomain", "faultDomain"),
    ("vCPU", "vcpus"),
    ("MemoryMiB", "memoryMib"),
    ("RegularVcpu", "regularVcpus"),
    ("SpotVcpu", "spotVcpus"),
    ("FreeVcpu", "freeVcpus"),
    ("FreeMemMiB", "freeMemoryMib"),
    ("Regular", "regularInstances"),
    ("Spot", "spotInstances"),
];

const JOINED_HOST_TABLE: Columns<'static> = &[
    ("Name", "name"),
    ("Zone", "zone"),
    ("FaultDomain", "faultDomain"),
    ("State", "state"),
    ("VCpus", "vcpus"),
    ("UsedVCpus", "usedVcpus"),
    ("MemoryMiB", "memoryMib"),
    ("UsedMemoryMiB", "usedMemoryMib"),
    ("Instances", "instances"),
    ("Version", "agentVersion"),
    ("LastHeartbeat", "lastHeartbeat"),
    ("MaxHeartbeatGapMs", "maxHeartbeatGapMs"),
    ("ImagePulls", "imagePulls"),
];

const JOIN_TOKEN_TABLE: Columns<'static> = &[
    ("Id", "id"),
    ("Expires", "expiresAt"),
    ("SingleUse", "singleUse"),
    ("UsedBy", "usedBy"),
    ("Description", "description"),
];

const INSTANCE_TABLE: Columns<'static> = &[
    ("InstanceId", "instanceId"),
    ("Name", "name"),
    ("ComputerName", "computerName"),
    ("Zone", "join(' ', zones)"),
    ("FaultDomain", "platformFaultDomain"),
    ("Host", "host"),
    ("LatestModelApplied", "latestModelApplied"),
    ("ProvisioningState", "provisioningState"),
    ("PowerState", "powerState"),
    ("Address", "reachAddress"),
    ("PublicIp", "publicIpAddress"),
    ("Note", "(overprovisioned && 'overprovisioned extra') || (eviction && join('', ['evicted: ', eviction.detail])) || (scheduledEvents[0] && join(' ', [scheduledEvents[0].eventType, 'event, not before', scheduledEvents[0].notBefore])) || deleteReason || lastError"),
];
const PUBLIC_IP_TABLE: Columns<'static> = &[
    ("InstanceId", "instanceId"),
    ("Name", "name"),
    ("IpAddress", "ipAddress"),
    ("PrivateIpAddress", "privateIpAddress"),
    ("IdleTimeoutInMinutes", "idleTimeoutInMinutes"),
    ("IpConfiguration", "ipConfiguration.id"),
];
const ACTIVITY_TABLE: Columns<'static> = &[
    ("Time", "time"),
    ("Resource", "resource"),
    ("Operation", "operation"),
    ("Status", "status"),
    ("Caller", "actor"),
    ("Message", "message"),
];
const IMAGE_TABLE: Columns<'static> = &[
    ("Urn", "urn"),
    ("Publisher", "publisher"),
    ("Offer", "offer"),
    ("Sku", "sku"),
    ("Version", "version"),
    ("Kind", "source.kind"),
    ("GuestAgent", "guestAgent"),
];
const GROUP_TABLE: Columns<'static> = &[("Name", "name"), ("Location", "location"), ("State", "provisioningState")];

struct Ctx {
    client: Client,
    format: Format,
    query: Option<String>,
    no_wait: bool,
    timeout: Duration,
    quiet: bool,
}

impl Ctx {
    fn print(&self, v: &Value, table: Option<Columns<'_>>) -> Result<()> {
        print!("{}", output::render(v, self.format, self.query.as_deref(), table)?);
        Ok(())
    }

    async fn wait(&self, set: &SetRef, until: Until) -> Result<Option<Value>> {
        wait::wait(&self.client, &set.group, &set.name, until, self.timeout, self.quiet).await
    }
}

/// Runs one parsed command line.
pub async fn dispatch(cli: Cli) -> Result<()> {
    let g = cli.global;
    match cli.command {
        Command::Server(a) if a.action.is_none() => {
            return crate::server::run(crate::server::ServerOptions {
                data_dir: a.data_dir.unwrap_or_else(crate::server::default_data_dir),
                listen: a.listen,
                driver: a.driver,
                config: a.config,
                accel: a.accel,
                orphans: match (a.keep_orphans, a.destroy_orphans) {
                    (true, _) => crate::cluster::OrphanStart::Keep,
                    (_, true) => crate::cluster::OrphanStart::Destroy,
                    _ => crate::cluster::OrphanStart::Refuse,
                },
                seal_key_file: a.seal_key_file,
                transport: match (a.insecure_http, a.tls_cert, a.tls_key) {
                    (true, _, _) => crate::server::Transport::InsecureHttp,
                    (_, Some(cert), Some(key)) => crate::server::Transport::OperatorCertificate { cert, key },
                    _ => crate::server::Transport::ClusterCa { sans: a.tls_san, ca_key_file: a.ca_key_file },
                },
            })
            .await
        }
        Command::Server(ServerArgs { action: Some(ServerCmd::Ca(CaCmd::Show { data_dir })), .. }) => {
            let dir = data_dir.unwrap_or_else(crate::server::default_data_dir);
            return crate::tls_cmds::ca_show(&dir, g.output, g.query.as_deref());
        }
        Command::Store(crate::store_cmds::StoreCmd::Check { data_dir: Some(dir) }) => {
            return crate::store_cmds::check_offline(&dir, g.output)
        }
        Command::Demo(a) => return herd_demo::run(a).await,
        Command::Agent(a) => return crate::agent_cmd::run(a, g.server).await,
        Command::Bench(b) => return crate::bench_cmds::run(b, g.output).await,
        Command::Dev(d) => return crate::dev_cmds::run(d, g.output, g.query.as_deref()),
        Command::Gen(GenCmd::CliDocs) => {
            print!("{}", cli_docs());
            return Ok(());
        }
        Command::InstanceInit(_) | Command::MetadataRelay { .. } => {
            unreachable!("handled in main before the runtime starts")
        }
        Command::Gen(GenCmd::Openapi) => {
            println!("{}", herd_api::openapi::document());
            return Ok(());
        }
        _ => {}
    }
    let ctx = Ctx {
        client: Client::new(
            &g.server,
            g.token,
            g.token_dir.unwrap_or_else(crate::server::default_data_dir),
            g.ca_file,
        )?,
        format: g.output,
        query: g.query,
        no_wait: g.no_wait,
        timeout: Duration::from_secs(g.timeout),
        quiet: g.quiet,
    };
    match cli.command {
        Command::Group(c) => group(&ctx, c).await,
        Command::Vmss(c) => vmss(&ctx, c).await,
        Command::Image(c) => image(&ctx, c).await,
        Command::Cost(a) => crate::cost_cmds::cost(&ctx.client, ctx.format, ctx.query.as_deref(), a).await,
        Command::Host(HostCmd::List) => {
            let v = ctx.client.get("/v1/hosts").await?;
            ctx.print(&v["joined"], Some(JOINED_HOST_TABLE))
        }
        Command::Host(HostCmd::Show { name: Some(name) }) => {
            let v = ctx.client.get(&format!("/v1/hosts/{}", enc(&name))).await?;
            ctx.print(&v, Some(JOINED_HOST_TABLE))
        }
        Command::Host(HostCmd::Cordon { name }) => {
            let v = ctx.client.post(&format!("/v1/hosts/{}/cordon", enc(&name)), &json!({})).await?;
            ctx.print(&v, Some(JOINED_HOST_TABLE))
        }
        Command::Host(HostCmd::Uncordon { name }) => {
            let v = ctx.client.post(&format!("/v1/hosts/{}/uncordon", enc(&name)), &json!({})).await?;
            ctx.print(&v, Some(JOINED_HOST_TABLE))
        }
        Command::Host(HostCmd::Drain { name }) => {
            let v = ctx.client.post(&format!("/v1/hosts/{}/drain", enc(&name)), &json!({})).await?;
            let v = if ctx.no_wait { v } else { wait_drained(&ctx, &name, v).await? };
            ctx.print(&v, Some(JOINED_HOST_TABLE))
        }
        Command::Host(HostCmd::Delete { name, force }) => {
            let q = if force { "?force=true" } else { "" };
            ctx.client.delete(&format!("/v1/hosts/{}{q}", enc(&name))).await?;
            if !ctx.quiet {
                eprintln!("Host {name} deleted: its agent is refused from now on.");
            }
            Ok(())
        }
        Command::Host(HostCmd::Show { name: None }) => {
            let v = ctx.client.get("/v1/hosts").await?;
            if v["unlimited"] == json!(true) && !matches!(ctx.format, Format::Json | Format::Jsonc) {
                println!("No hosts declared: capacity is not limited (declare [[hosts]] in the server config).");
                return Ok(());
            }
            ctx.print(&v["hosts"], Some(HOST_TABLE))
        }
        Command::Host(HostCmd::JoinToken(c)) => join_token(&ctx, c).await,
        Command::Network(c) => crate::network_cmds::run(&ctx.client, ctx.format, ctx.query.as_deref(), c).await,
        Command::Monitor(MonitorCmd::Autoscale(c)) => {
            crate::autoscale_cmds::autoscale(&ctx.client, &|v, t| ctx.print(v, t), c).await
        }
        Command::Monitor(MonitorCmd::MetricSource(c)) => {
            crate::autoscale_cmds::source(&ctx.client, &|v, t| ctx.print(v, t), c).await
        }
        Command::Monitor(MonitorCmd::Metrics(c)) => {
            crate::autoscale_cmds::metrics(&ctx.client, &|v, t| ctx.print(v, t), c).await
        }
        Command::Monitor(MonitorCmd::ActivityLog(ActivityLogCmd::List { group, resource, since, limit })) => {
            let mut q = vec![format!("limit={limit}")];
            if let Some(r) = resource {
                q.push(format!("resource={}", enc(&r)));
            }
            if let Some(s) = since {
                let d = humantime::parse_duration(&s)
                    .map_err(|e| anyhow!("--since '{s}': {e}; use forms like 30m, 1h, 2d"))?;
                let t = chrono::Utc::now() - chrono::Duration::from_std(d)?;
                q.push(format!("since={}", enc(&t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))));
            }
            let v = ctx.client.get(&format!("/v1/resourceGroups/{}/activityLog?{}", enc(&group), q.join("&"))).await?;
            ctx.print(&v, Some(ACTIVITY_TABLE))
        }
        Command::Server(ServerArgs { action: Some(ServerCmd::Tls), .. }) => {
            let v = ctx.client.get("/v1/server/tls").await?;
            ctx.print(&v, Some(crate::tls_cmds::table()))
        }
        Command::Server(ServerArgs { action: Some(ServerCmd::RotateCert), .. }) => {
            let v = crate::tls_cmds::rotate_cert(&ctx.client).await?;
            ctx.print(&v, Some(crate::tls_cmds::table()))
        }
        Command::Server(ServerArgs { action: Some(ServerCmd::RotateCa { overlap }), .. }) => {
            let v = crate::tls_cmds::rotate_ca(&ctx.client, &overlap).await?;
            ctx.print(&v, Some(crate::tls_cmds::table()))
        }
        Command::Server(_) => {
            let v = ctx.client.get("/v1/server/status").await?;
            crate::store_cmds::print_status(&v, ctx.format, &|v, t| ctx.print(v, t))
        }
        Command::Store(crate::store_cmds::StoreCmd::Check { data_dir: None }) => {
            let v = ctx.client.get("/v1/store/check").await?;
            crate::store_cmds::print_check(&v, ctx.format, &|v, t| ctx.print(v, t))
        }
        _ => unreachable!("handled above"),
    }
}

fn tags(list: &[String]) -> Result<Map<String, Value>> {
    let mut m = Map::new();
    for t in list {
        let (k, v) = t.split_once('=').unwrap_or((t.as_str(), ""));
        if k.is_empty() {
            bail!("--tags: '{t}' is not key=value");
        }
        m.insert(k.to_string(), Value::String(v.to_string()));
    }
    Ok(m)
}

async fn group(ctx: &Ctx, c: GroupCmd) -> Result<()> {
    match c {
        GroupCmd::Create { name, location, tags: t } => {
            let v = ctx
                .client
                .put(&format!("/v1/resourceGroups/{}", enc(&name)), &json!({"location": location, "tags": tags(&t)?}))
                .await?;
            ctx.print(&v, None)
        }
        GroupCmd::List => ctx.print(&ctx.client.get("/v1/resourceGroups").await?, Some(GROUP_TABLE)),
        GroupCmd::Show { name } => {
            ctx.print(&ctx.client.get(&format!("/v1/resourceGroups/{}", enc(&name))).await?, None)
        }
        GroupCmd::Delete { name, yes: _ } => {
            let path = format!("/v1/resourceGroups/{}", enc(&name));
            ctx.client.delete(&path).await?;
            if ctx.no_wait {
                return Ok(());
            }
            let start = std::time::Instant::now();
            loop {
                match ctx.client.get(&path).await {
                    Err(e) if herd_client::is_not_found(&e) => return Ok(()),
                    Err(e) => return Err(e),
                    Ok(_) if start.elapsed() > ctx.timeout => {
                        bail!("timed out waiting for resource group '{name}' to be deleted")
                    }
                    Ok(_) => tokio::time::sleep(Duration::from_millis(250)).await,
                }
            }
        }
    }
}

fn read_text_or_file(s: &str) -> Result<String> {
    let p = std::path::Path::new(s);
    if p.is_file() {
        return std::fs::read_to_string(p).with_context(|| format!("reading {s}"));
    }
    Ok(s.to_string())
}

fn create_body(c: &VmssCreate) -> Result<Value> {
    let urn = herd_model::ImageUrn::parse(&c.image).map_err(|e| anyhow!("--image: {}", e.message))?;
    let mut os = json!({"adminUsername": c.admin_username});
    if let Some(p) = &c.computer_name_prefix {
        os["computerNamePrefix"] = json!(p);
    }
    let auth = c.authentication_type.clone().unwrap_or_else(|| {
        if c.admin_password.is_some() {
            "password".into()
        } else {
            "ssh".into()
        }
    });
    if auth != "ssh" {
        let pw = c
            .admin_password
            .as_ref()
            .ok_or_else(|| anyhow!("--admin-password is required with --authentication-type {auth}"))?;
        os["adminPassword"] = json!(pw);
    }
    let mut keys = Vec::new();
    for k in &c.ssh_key_values {
        let text = read_text_or_file(k)?;
        keys.push(json!({"path": format!("/home/{}/.ssh/authorized_keys", c.admin_username), "keyData": text.trim()}));
    }
    if auth != "password" || !keys.is_empty() {
        os["linuxConfiguration"] = json!({"disablePasswordAuthentication": auth == "ssh", "ssh": {"publicKeys": keys}});
    }
    if let Some(d) = &c.custom_data {
        os["customData"] = json!(read_text_or_file(d)?);
    }
    let mut body = json!({
        "location": c.location,
        "sku": {"name": c.vm_sku, "capacity": c.instance_count},
        "zones": c.zones,
        "zoneBalance": c.zone_balance,
        "overprovision": !c.disable_overprovision,
        "upgradePolicy": {"mode": c.upgrade_policy_mode},
        "tags": tags(&c.tags)?,
        "virtualMachineProfile": {
            "osProfile": os,
            "storageProfile": {"imageReference": {"publisher": urn.publisher, "offer": urn.offer, "sku": urn.sku, "version": urn.version}},
        }
    });
    if let Some(s) = c.single_placement_group {
        body["singlePlacementGroup"] = json!(s);
    }
    if let Some(n) = c.platform_fault_domain_count {
        body["platformFaultDomainCount"] = json!(n);
    }
    if let Some(p) = &c.scale_in_policy {
        body["scaleInPolicy"] = json!({"rules": [p]});
    }
    if let Some(p) = &c.priority {
        body["virtualMachineProfile"]["priority"] = json!(p);
    }
    if let Some(p) = &c.eviction_policy {
        body["virtualMachineProfile"]["evictionPolicy"] = json!(p);
    }
    if let Some(p) = c.max_price {
        body["virtualMachineProfile"]["billingProfile"] = json!({"maxPrice": p});
    }
    if c.enable_spot_restore || c.spot_restore_timeout.is_some() {
        let mut r = json!({"enabled": c.enable_spot_restore});
        if let Some(t) = &c.spot_restore_timeout {
            r["restoreTimeout"] = json!(t);
        }
        body["spotRestorePolicy"] = r;
    }
    if let Some(m) = c.terminate_notification_time {
        body["virtualMachineProfile"]["scheduledEventsProfile"] =
            json!({"terminateNotificationProfile": {"enable": true, "notBeforeTimeout": format!("PT{m}M")}});
    }
    if let Some(m) = &c.orchestration_mode {
        body["orchestrationMode"] = json!(m);
    }
    if !c.data_disk_sizes_gb.is_empty() {
        let disks: Vec<Value> = c
            .data_disk_sizes_gb
            .iter()
            .enumerate()
            .map(|(lun, gb)| json!({"lun": lun, "diskSizeGB": gb, "createOption": "Empty"}))
            .collect();
        body["virtualMachineProfile"]["storageProfile"]["dataDisks"] = json!(disks);
    }
    Ok(body)
}

/// A JSON object argument given inline or as `@FILE`; the error names the flag.
pub(crate) fn json_arg(flag: &str, s: &str) -> Result<Value> {
    let text = match s.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("{flag}: reading {path}"))?,
        None => s.to_string(),
    };
    let v: Value = serde_json::from_str(&text).map_err(|e| anyhow!("{flag}: not valid JSON ({e})"))?;
    if !v.is_object() {
        bail!("{flag}: must be a JSON object such as '{{\"key\": \"value\"}}'");
    }
    Ok(v)
}

const ROLLING_TABLE: Columns<'static> = &[
    ("State", "state"),
    ("Target", "targetGeneration"),
    ("From", "fromGeneration"),
    ("Trigger", "trigger"),
    ("Batches", "length(batches)"),
    ("Succeeded", "length(succeeded)"),
    ("Failed", "length(failed)"),
    ("Error", "error"),
];

async fn rolling(ctx: &Ctx, c: RollingCmd) -> Result<()> {
    let base = |s: &SetRef| format!("{}/rollingUpgrades", set_path(&s.group, &s.name));
    let (set, action, body) = match c {
        RollingCmd::GetLatest(s) => {
            return ctx.print(&ctx.client.get(&format!("{}/latest", base(&s))).await?, Some(ROLLING_TABLE));
        }
        RollingCmd::Start { set, canary, pause } => {
            let mut b = json!({"pause": pause});
            if let Some(c) = canary {
                b["canary"] = json!(c);
            }
            (set, "start", b)
        }
        RollingCmd::Cancel(s) => (s, "cancel", json!({})),
        RollingCmd::Pause(s) => (s, "pause", json!({})),
        RollingCmd::Resume(s) => (s, "resume", json!({})),
        RollingCmd::Rollback(s) => (s, "rollback", json!({})),
    };
    ctx.client.post(&format!("{}/{action}", base(&set)), &body).await?;
    // Show where the upgrade stands once the reconciler has taken the request.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let st = ctx.client.get(&format!("{}/latest", base(&set))).await;
        let taken = ctx
            .client
            .get(&set_path(&set.group, &set.name))
            .await
            .ok()
            .is_some_and(|v| v["upgradeRequestPending"] != true);
        if taken || std::time::Instant::now() > deadline {
            return match st {
                Ok(v) => ctx.print(&v, Some(ROLLING_TABLE)),
                Err(_) => Ok(()),
            };
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const EXTENSION_TABLE: Columns<'static> = &[
    ("Name", "name"),
    ("Publisher", "properties.publisher"),
    ("Type", "properties.type"),
    ("Version", "properties.typeHandlerVersion"),
    ("ForceUpdateTag", "properties.forceUpdateTag"),
];

async fn extension(ctx: &Ctx, c: ExtensionCmd) -> Result<()> {
    let ext_path =
        |set: &VmssRef, name: &str| format!("{}/extensions/{}", set_path(&set.group, &set.vmss_name), enc(name));
    match c {
        ExtensionCmd::Set {
            set,
            name,
            publisher,
            version,
            extension_instance_name,
            settings,
            protected_settings,
            force_update,
            no_auto_upgrade_minor_version,
            provision_after_extensions,
        } => {
            let instance_name = extension_instance_name.unwrap_or_else(|| name.clone());
            let mut props = json!({
                "publisher": publisher,
                "type": name,
                "typeHandlerVersion": version,
                "autoUpgradeMinorVersion": !no_auto_upgrade_minor_version,
            });
            if let Some(s) = &settings {
                props["settings"] = json_arg("--settings", s)?;
            }
            if let Some(s) = &protected_settings {
                props["protectedSettings"] = json_arg("--protected-settings", s)?;
            }
            if force_update {
                props["forceUpdateTag"] = json!(chrono::Utc::now().timestamp_millis().to_string());
            } else if let Ok(cur) = ctx.client.get(&ext_path(&set, &instance_name)).await {
                if let Some(tag) = cur["properties"].get("forceUpdateTag") {
                    props["forceUpdateTag"] = tag.clone();
                }
            }
            if !provision_after_extensions.is_empty() {
                props["provisionAfterExtensions"] = json!(provision_after_extensions);
            }
            let v = ctx.client.put(&ext_path(&set, &instance_name), &json!({"properties": props})).await?;
            ctx.print(&v, Some(EXTENSION_TABLE))
        }
        ExtensionCmd::List(set) => ctx.print(
            &ctx.client.get(&format!("{}/extensions", set_path(&set.group, &set.vmss_name))).await?,
            Some(EXTENSION_TABLE),
        ),
        ExtensionCmd::Show { set, name } => {
            ctx.print(&ctx.client.get(&ext_path(&set, &name)).await?, Some(EXTENSION_TABLE))
        }
        ExtensionCmd::Delete { set, name } => {
            ctx.client.delete(&ext_path(&set, &name)).await?;
            Ok(())
        }
    }
}

/// The network profile for `vmss create --vnet-name/--subnet/--lb/--public-ip-address`, creating
/// the load balancer (and its public IP) when it does not exist yet, as az does.
async fn network_profile(ctx: &Ctx, c: &VmssCreate) -> Result<Option<Value>> {
    let g = &c.set.group;
    let subnet = match (&c.subnet, &c.vnet_name) {
        (Some(s), _) if s.starts_with('/') => Some(s.clone()),
        (Some(s), Some(v)) => Some(format!("{}/subnets/{s}", herd_model::network::network_id(g, "virtualNetworks", v))),
        (Some(s), None) => bail!("--subnet {s}: give the subnet's id, or its name with --vnet-name"),
        (None, Some(v)) => bail!("--vnet-name {v}: also give --subnet"),
        (None, None) => None,
    };
    let lb = c.lb.clone().filter(|l| !l.is_empty());
    if lb.is_none() && c.public_ip_address.is_some() {
        bail!("--public-ip-address is the load balancer's address: also give --lb");
    }
    let mut pools = Vec::new();
    if let Some(lb) = &lb {
        let path = format!("/v1/resourceGroups/{}/loadBalancers/{}", enc(g), enc(lb));
        let pool = c.backend_pool_name.clone().unwrap_or_else(|| format!("{lb}BEPool"));
        match ctx.client.get(&path).await {
            Ok(existing) => {
                let has = existing["backendAddressPools"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|p| p["name"] == pool.as_str()));
                if !has {
                    ctx.client.put(&format!("{path}/backendAddressPools/{}", enc(&pool)), &json!({})).await?;
                }
            }
            Err(e) if herd_client::is_not_found(&e) => {
                let pip = c.public_ip_address.clone().unwrap_or_else(|| format!("{lb}PublicIP"));
                let pip_id = crate::network_cmds::ensure_public_ip(&ctx.client, g, &pip).await?;
                let body = json!({
                    "frontendIPConfigurations": [{"name": "loadBalancerFrontEnd", "publicIPAddress": {"id": pip_id}}],
                    "backendAddressPools": [{"name": pool}],
                });
                ctx.client.call(reqwest::Method::PUT, &path, Some(&body), &[("If-None-Match", "*")]).await?;
                if !ctx.quiet {
                    eprintln!("created load balancer '{lb}' with frontend 'loadBalancerFrontEnd' on public IP '{pip}' and backend pool '{pool}'");
                }
            }
            Err(e) => return Err(e),
        }
        pools.push(json!({"id": format!("{}/backendAddressPools/{pool}", herd_model::network::network_id(g, "loadBalancers", lb))}));
    }
    if subnet.is_none() && pools.is_empty() {
        if c.public_ip_per_vm {
            bail!("--public-ip-per-vm: a public IP is NATed to the instance's private IP; also give --subnet");
        }
        if let Some(n) = &c.nsg {
            bail!("--nsg {n}: a network security group filters a NIC on a subnet; also give --subnet");
        }
        return Ok(None);
    }
    let prefix: String = c.set.name.chars().take(9).collect();
    let mut ipc = json!({"name": format!("{prefix}IPConfig"), "loadBalancerBackendAddressPools": pools});
    if let Some(s) = subnet {
        ipc["subnet"] = json!({"id": s});
    }
    if c.public_ip_per_vm {
        ipc["publicIPAddressConfiguration"] = json!({"name": format!("{prefix}PublicIP")});
    }
    let mut nic = json!({"name": format!("{prefix}Nic"), "primary": true, "ipConfigurations": [ipc]});
    if let Some(n) = c.nsg.as_deref().filter(|n| !n.is_empty()) {
        nic["networkSecurityGroup"] = json!({"id": crate::network_cmds::nsg_id(g, n)});
    }
    Ok(Some(json!({"networkInterfaceConfigurations": [nic]})))
}

fn ids_body(ids: &[String]) -> Value {
    if ids.is_empty() {
        json!({})
    } else {
        json!({"instanceIds": ids})
    }
}

/// Polls a draining host until no instance is placed on it and no copy is left there, with
/// progress on stderr; returns its last view.
async fn wait_drained(ctx: &Ctx, name: &str, mut v: Value) -> Result<Value> {
    let start = std::time::Instant::now();
    let mut last = String::new();
    loop {
        let left = v["instances"].as_u64().unwrap_or(0) + v["movingAway"].as_u64().unwrap_or(0);
        let stale = v["staleCopies"].as_u64().unwrap_or(0);
        let line = format!("{name}: {} instance(s) left to move, {stale} copy(ies) to remove", left);
        if !ctx.quiet && line != last {
            eprintln!("{line} ({}s)", start.elapsed().as_secs());
            last = line;
        }
        if left == 0 && stale == 0 {
            if !ctx.quiet {
                eprintln!("{name}: drained (cordoned; `herd host uncordon {name}` takes new instances again)");
            }
            return Ok(v);
        }
        if start.elapsed() > ctx.timeout {
            bail!(
                "host {name} is not drained after {}s: {left} instance(s) still on it (see `herd vmss list-instances` and the activity log); --timeout waits longer",
                ctx.timeout.as_secs()
            );
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        v = ctx.client.get(&format!("/v1/hosts/{}", enc(name))).await?;
    }
}

async fn set_action(ctx: &Ctx, set: &SetRef, action: &str, ids: &[String], until: Until) -> Result<()> {
    let v = ctx.client.post(&format!("{}/{action}", set_path(&set.group, &set.name)), &ids_body(ids)).await?;
    if !ctx.no_wait {
        ctx.wait(set, until).await?;
    }
    ctx.print(&v, None)
}

/// `vmss update --set/--add/--remove`: the model change as JSON-patch-like operations.
async fn vmss_update(
    ctx: &Ctx,
    set: &SetRef,
    set_ops: &[String],
    add: &[String],
    remove: &[String],
    if_match: Option<&str>,
) -> Result<()> {
    let mut ops = Vec::new();
    for s in set_ops {
        let (path, value) = s.split_once('=').ok_or_else(|| anyhow!("--set '{s}': expected PATH=VALUE"))?;
        ops.push(json!({"op": "set", "path": path, "value": value}));
    }
    for a in add.chunks(2) {
        let [path, value] = a else { bail!("--add takes PATH VALUE") };
        ops.push(json!({"op": "add", "path": path, "value": value}));
    }
    // --remove PATH [INDEX] may repeat; clap hands the values over flat, and a path is
    // never a bare number, so a number is the index of the path before it.
    for token in remove {
        match token.parse::<usize>() {
            Ok(i) => match ops.last_mut() {
                Some(op) if op["op"] == "remove" && op.get("index").is_none() => op["index"] = json!(i),
                _ => bail!("--remove {i}: an INDEX must follow a PATH"),
            },
            Err(_) => ops.push(json!({"op": "remove", "path": token})),
        }
    }
    if ops.is_empty() {
        bail!("nothing to update: give --set, --add or --remove");
    }
    let headers: Vec<(&str, &str)> = if_match.map(|m| vec![("If-Match", m)]).unwrap_or_default();
    let path = format!("{}/update", set_path(&set.group, &set.name));
    let v = ctx.client.call(reqwest::Method::POST, &path, Some(&json!({"operations": ops})), &headers).await?;
    // A model change in Manual mode leaves instances as they are, so wait only for the
    // set's own state (capacity and power), not for the latest model.
    let v = if ctx.no_wait { v } else { ctx.wait(set, Until::Created).await?.unwrap_or(v) };
    ctx.print(&v, Some(SET_TABLE))
}

/// `vmss get-instance-view`: one instance's view, every instance (`*`), or the set's summary.
async fn get_instance_view(ctx: &Ctx, set: &SetRef, instance_id: Option<String>) -> Result<()> {
    match instance_id {
        Some(id) if id != "*" => {
            let v = ctx
                .client
                .get(&format!("{}/virtualMachines/{}/instanceView", set_path(&set.group, &set.name), enc(&id)))
                .await?;
            ctx.print(
                &v,
                Some(&[
                    ("InstanceId", "instanceId"),
                    ("ComputerName", "computerName"),
                    ("Zone", "join(' ', zones)"),
                    ("ProvisioningState", "provisioningState"),
                    ("PowerState", "powerState"),
                    ("LatestModelApplied", "latestModelApplied"),
                    ("ModelGeneration", "modelGeneration"),
                    ("Address", "reachAddress"),
                    ("LastError", "lastError"),
                ]),
            )
        }
        Some(_) => {
            let v = ctx.client.get(&format!("{}/virtualMachines", set_path(&set.group, &set.name))).await?;
            ctx.print(&v, Some(INSTANCE_TABLE))
        }
        None => {
            let v = ctx.client.get(&set_path(&set.group, &set.name)).await?;
            ctx.print(&json!({"provisioningState": v["provisioningState"], "modelGeneration": v["modelGeneration"], "instanceSummary": v["instanceSummary"]}), None)
        }
    }
}

async fn vmss(ctx: &Ctx, c: VmssCmd) -> Result<()> {
    match c {
        VmssCmd::Create(c) => {
            let mut body = create_body(&c)?;
            if let Some(np) = network_profile(ctx, &c).await? {
                body["virtualMachineProfile"]["networkProfile"] = np;
            }
            let path = set_path(&c.set.group, &c.set.name);
            let v = ctx.client.call(reqwest::Method::PUT, &path, Some(&body), &[("If-None-Match", "*")]).await?;
            let v = if ctx.no_wait { v } else { ctx.wait(&c.set, Until::Created).await?.unwrap_or(v) };
            ctx.print(&v, Some(SET_TABLE))
        }
        VmssCmd::List { group } => ctx.print(
            &ctx.client.get(&format!("/v1/resourceGroups/{}/virtualMachineScaleSets", enc(&group))).await?,
            Some(SET_TABLE),
        ),
        VmssCmd::Show(s) => ctx.print(&ctx.client.get(&set_path(&s.group, &s.name)).await?, Some(SET_TABLE)),
        VmssCmd::Delete(s) => {
            ctx.client.delete(&set_path(&s.group, &s.name)).await?;
            if !ctx.no_wait {
                ctx.wait(&s, Until::Deleted).await?;
            }
            Ok(())
        }
        VmssCmd::Scale { set, new_capacity } => {
            let v = ctx
                .client
                .post(&format!("{}/scale", set_path(&set.group, &set.name)), &json!({"capacity": new_capacity}))
                .await?;
            let v = if ctx.no_wait { v } else { ctx.wait(&set, Until::Created).await?.unwrap_or(v) };
            ctx.print(&v, Some(SET_TABLE))
        }
        VmssCmd::Update {
            set, instance_id: Some(id), protect_from_scale_in, protect_from_scale_set_actions, ..
        } => {
            let path = format!("{}/virtualMachines/{}", set_path(&set.group, &set.name), enc(&id));
            let cur = ctx.client.get(&path).await?;
            let keep = |field: &str| cur["protectionPolicy"][field].as_bool().unwrap_or(false);
            let body = json!({
                "protectFromScaleIn": protect_from_scale_in.unwrap_or_else(|| keep("protectFromScaleIn")),
                "protectFromScaleSetActions": protect_from_scale_set_actions.unwrap_or_else(|| keep("protectFromScaleSetActions")),
            });
            ctx.client.put(&format!("{path}/protectionPolicy"), &body).await?;
            ctx.print(&ctx.client.get(&path).await?, Some(INSTANCE_TABLE))
        }
        VmssCmd::RollingUpgrade(c) => rolling(ctx, c).await,
        VmssCmd::Update { set, set_ops, add, remove, if_match, .. } => {
            vmss_update(ctx, &set, &set_ops, &add, &remove, if_match.as_deref()).await
        }
        VmssCmd::UpdateInstances { set, ids } => {
            set_action(ctx, &set, "updateInstances", &ids.ids, Until::Created).await
        }
        VmssCmd::Reimage { set, ids } => set_action(ctx, &set, "reimage", &ids.ids, Until::Created).await,
        VmssCmd::ReimageAll(set) => set_action(ctx, &set, "reimage", &[], Until::Created).await,
        VmssCmd::SetOrchestrationServiceState { set, service_name, action } => {
            let path = format!("{}/setOrchestrationServiceState", set_path(&set.group, &set.name));
            ctx.client.post(&path, &json!({"serviceName": service_name, "action": action})).await?;
            let v = ctx.client.get(&set_path(&set.group, &set.name)).await?;
            ctx.print(&v["orchestrationServices"], None)
        }
        VmssCmd::Start { set, ids } => set_action(ctx, &set, "start", &ids.ids, Until::Created).await,
        VmssCmd::Cost(a) => crate::cost_cmds::vmss_cost(&ctx.client, ctx.format, ctx.query.as_deref(), a).await,
        VmssCmd::SimulateEviction { set, instance_id } => {
            let path = format!("{}/simulateEviction", set_path(&set.group, &set.name));
            let v = ctx.client.post(&path, &json!({"instanceIds": [instance_id]})).await?;
            ctx.print(&v, None)
        }
        VmssCmd::Stop { set, ids } => set_action(ctx, &set, "stop", &ids.ids, Until::Created).await,
        VmssCmd::Deallocate { set, ids } => set_action(ctx, &set, "deallocate", &ids.ids, Until::Created).await,
        VmssCmd::Restart { set, ids } => set_action(ctx, &set, "restart", &ids.ids, Until::Created).await,
        VmssCmd::Redeploy { set, ids } => set_action(ctx, &set, "redeploy", &ids.ids, Until::Created).await,
        VmssCmd::DeleteInstances { set, ids } => {
            set_action(ctx, &set, "deleteInstances", &ids.ids, Until::Created).await
        }
        VmssCmd::ListInstances(s) => ctx.print(
            &ctx.client.get(&format!("{}/virtualMachines", set_path(&s.group, &s.name))).await?,
            Some(INSTANCE_TABLE),
        ),
        VmssCmd::ListInstancePublicIps(s) => ctx.print(
            &ctx.client.get(&format!("{}/publicipaddresses", set_path(&s.group, &s.name))).await?,
            Some(PUBLIC_IP_TABLE),
        ),
        VmssCmd::GetInstanceView { set, instance_id } => get_instance_view(ctx, &set, instance_id).await,
        VmssCmd::Extension(c) => extension(ctx, c).await,
        VmssCmd::GetBootLog { set, instance_id, tail_bytes } => {
            let path = format!(
                "{}/virtualMachines/{}/bootLog?tailBytes={tail_bytes}",
                set_path(&set.group, &set.name),
                enc(&instance_id)
            );
            let v = ctx.client.get(&path).await?;
            match v {
                Value::String(text) => print!("{text}"),
                Value::Null => {}
                other => print!("{other}"),
            }
            Ok(())
        }
        VmssCmd::Wait { set, created, updated, deleted } => {
            let until = if deleted {
                Until::Deleted
            } else if updated {
                Until::Updated
            } else if created {
                Until::Created
            } else {
                bail!("say what to wait for: --created, --updated or --deleted");
            };
            ctx.wait(&set, until).await?;
            Ok(())
        }
    }
}

async fn image(ctx: &Ctx, c: ImageCmd) -> Result<()> {
    match c {
        ImageCmd::Import { urn, server_path, dir, disk, kernel, initrd, cmdline, guest_agent } => {
            let abs =
                |flag: &str, p: &std::path::Path| p.canonicalize().with_context(|| format!("--{flag} {}", p.display()));
            let mut body = json!({});
            // Disk and kernel images are uploaded (the server reads no path of the client's
            // choosing), unless --server-path asks the server to read its own files.
            let mut uploads: Vec<(&str, &str, std::path::PathBuf)> = vec![];
            let mut file =
                |body: &mut Value, field: &'static str, flag: &'static str, p: &std::path::Path| -> Result<()> {
                    if server_path {
                        // As named (not canonicalised): the server resolves it below its roots.
                        let p = std::path::absolute(p).with_context(|| format!("--{flag} {}", p.display()))?;
                        body[field] = json!(p);
                    } else {
                        uploads.push((field, flag, abs(flag, p)?));
                    }
                    Ok(())
                };
            match (&dir, &disk, &kernel) {
                // A directory is packed and uploaded unless the server is to read its own.
                (Some(d), None, None) if server_path => {
                    body["directory"] = json!(std::path::absolute(d).with_context(|| format!("--dir {}", d.display()))?)
                }
                (Some(d), None, None) => {
                    let extra = guest_agent.map_or(json!({}), |g| json!({"guestAgent": g}));
                    let v =
                        herd_client::image_upload::import_directory(&ctx.client, &urn, &abs("dir", d)?, extra).await?;
                    return ctx.print(&v, Some(IMAGE_TABLE));
                }
                (None, Some(d), None) => file(&mut body, "disk", "disk", d)?,
                (None, None, Some(k)) => {
                    file(&mut body, "kernel", "kernel", k)?;
                    if let Some(i) = &initrd {
                        file(&mut body, "initrd", "initrd", i)?;
                    }
                    if let Some(c) = &cmdline {
                        let text = match c.strip_prefix('@') {
                            Some(f) => std::fs::read_to_string(f).with_context(|| format!("--cmdline: reading {f}"))?,
                            None => c.clone(),
                        };
                        body["cmdline"] = json!(text.trim());
                    }
                }
                _ => bail!("give one of --dir (process driver), --disk or --kernel (qemu driver)"),
            }
            for (field, flag, path) in &uploads {
                herd_client::image_upload::upload_file(&ctx.client, &urn, field, flag, path).await?;
            }
            if !uploads.is_empty() {
                body["uploaded"] = json!(true);
            }
            if let Some(g) = guest_agent {
                body["guestAgent"] = json!(g);
            }
            let v = ctx.client.put(&format!("/v1/images/{}", enc(&urn)), &body).await?;
            ctx.print(&v, Some(IMAGE_TABLE))
        }
        ImageCmd::List => ctx.print(&ctx.client.get("/v1/images").await?, Some(IMAGE_TABLE)),
        ImageCmd::Show { urn } => ctx.print(&ctx.client.get(&format!("/v1/images/{}", enc(&urn))).await?, None),
        ImageCmd::Delete { urn } => {
            ctx.client.delete(&format!("/v1/images/{}", enc(&urn))).await?;
            Ok(())
        }
    }
}

/// The CLI reference, generated from the clap definitions (docs/cli.md).
pub fn cli_docs() -> String {
    let mut out = String::from("# herd CLI reference\n\nGenerated by `herd gen cli-docs` from the command definitions; CI fails when this file is stale.\n\n");
    fn walk(cmd: &mut clap::Command, path: &str, out: &mut String) {
        if cmd.is_hide_set() {
            return;
        }
        let name = if path.is_empty() { cmd.get_name().to_string() } else { format!("{path} {}", cmd.get_name()) };
        out.push_str(&format!("## `{name}`\n\n```text\n{}\n```\n\n", cmd.render_long_help().to_string().trim_end()));
        let subs: Vec<String> = cmd.get_subcommands().map(|s| s.get_name().to_string()).collect();
        for s in subs {
            if s == "help" {
                continue;
            }
            if let Some(sub) = cmd.find_subcommand_mut(&s) {
                let mut sub = sub.clone();
                walk(&mut sub, &name, out);
            }
        }
    }
    let mut root = crate::cli::command().term_width(100);
    walk(&mut root, "", &mut out);
    out
}

/// `herd host join-token create|list|delete`.
async fn join_token(ctx: &Ctx, c: JoinTokenCmd) -> Result<()> {
    match c {
        JoinTokenCmd::Create { expires, single_use, description } => {
            let secs = humantime::parse_duration(&expires)
                .map_err(|e| anyhow!("--expires '{expires}': {e} (e.g. 30m, 24h, 7d)"))?
                .as_secs();
            let body = json!({"expiresInSeconds": secs, "singleUse": single_use, "description": description});
            let v = ctx.client.post("/v1/hosts/joinTokens", &body).await?;
            if matches!(ctx.format, Format::Table) && ctx.query.is_none() {
                println!("{}", v["token"].as_str().unwrap_or_default());
                eprintln!(
                    "Join token {} (expires {}{}). Shown this once: the server keeps only its hash.\n\
                     On the host: herd agent --server https://<this server>:7900 --join-token <the token above> --name <host>",
                    v["id"].as_str().unwrap_or_default(),
                    v["expiresAt"].as_str().unwrap_or_default(),
                    if single_use { ", single-use" } else { "" },
                );
                return Ok(());
            }
            ctx.print(&v, None)
        }
        JoinTokenCmd::List => {
            let v = ctx.client.get("/v1/hosts/joinTokens").await?;
            ctx.print(&v, Some(JOIN_TOKEN_TABLE))
        }
        JoinTokenCmd::Delete { id } => {
            ctx.client.delete(&format!("/v1/hosts/joinTokens/{}", enc(&id))).await?;
            if !ctx.quiet {
                eprintln!("Join token {id} deleted.");
            }
            Ok(())
        }
    }
}
