//! Real VMs end to end: `herd server --driver qemu` (TCG here), the test guest image imported
//! as kernel + initrd, two VMs, the demo TODO app installed by a Custom Script extension whose
//! database password is a protected setting, v2 on one VM in place (same boot id), a reimage
//! onto image 1.0.1 (extensions run again), `kill -9` of the server (VMs adopted), the boot
//! log, and a delete that leaves nothing behind. Throughout, the password must never appear in
//! any host process's command line, the API's output or the server's log.
//!
//! Needs the test guest (`images/testguest/build.sh`, `HERD_TESTGUEST_OUT`, default
//! `target/testguest`; `./scripts/test.sh` builds it), PostgreSQL, and the static app
//! (`images/app/build.sh`; `HERD_APP_OUT`, built into `target/guest-app-out` when unset).

mod common;
#[path = "../../../demo/herd-todo/tests/support/postgres.rs"]
#[allow(dead_code)]
mod postgres;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

const SET: [&str; 4] = ["-g", "vm-rg", "-n", "web"];
const BOOT: Duration = Duration::from_secs(240);

fn with<'a>(cmd: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
    on_set(&SET, cmd, extra)
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../..").canonicalize().unwrap()
}

fn testguest() -> PathBuf {
    herd_test_support::require_testguest("1.0.0");
    herd_test_support::require_testguest("1.0.1");
    herd_test_support::testguest_dir()
}

/// The static app and its install scripts, built once (cached by cargo).
fn app_out() -> PathBuf {
    if let Ok(p) = std::env::var("HERD_APP_OUT") {
        return PathBuf::from(p);
    }
    let out = repo().join("target/guest-app-out");
    let st = std::process::Command::new(repo().join("images/app/build.sh")).arg(&out).status().unwrap();
    assert!(st.success(), "images/app/build.sh failed");
    out
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// HTTP GET on the host, no keep-alive; None on any failure.
fn get(url: &str) -> Option<String> {
    let out = std::process::Command::new("curl").args(["-s", "-f", "-m", "5", url]).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn counted(s: &Server) -> Vec<Value> {
    counted_instances(s, &SET)
}

/// Waits until every instance in `ids` has run the extension at `generation`, and returns them.
fn wait_extension(s: &Server, ids: &[String], generation: u64) -> Vec<Value> {
    wait_for("the extension to finish", BOOT, || {
        let inst: Vec<Value> =
            counted(s).into_iter().filter(|i| ids.iter().any(|id| i["instanceId"] == id.as_str())).collect();
        let done = inst.len() == ids.len()
            && inst.iter().all(|i| {
                i["modelGeneration"].as_u64() == Some(generation)
                    && i["pendingAction"].is_null()
                    && i["state"] == "Running"
                    && i["extensions"][0]["state"].as_str().is_some_and(|st| st != "Transitioning")
            });
        done.then_some(inst)
    })
}

/// The first line of the extension's stdout that looks like a boot id (a UUID).
fn boot_id(inst: &Value) -> String {
    let msg = inst["extensions"][0]["message"].as_str().unwrap_or_default();
    msg.lines()
        .map(str::trim)
        .find(|l| l.len() == 36 && l.chars().filter(|c| *c == '-').count() == 4)
        .unwrap_or_else(|| panic!("no boot id in {msg}"))
        .to_string()
}

#[test]
fn two_vms_run_the_app_upgrade_in_place_reimage_survive_a_crash_and_leave_nothing() {
    let tg = testguest();
    let app = app_out();
    let pg = postgres::PgCluster::start();
    let secret = pg.password.clone();
    let needle = secret.split(['\'', '"', ' ']).max_by_key(|w| w.len()).unwrap().to_string();
    assert!(needle.len() >= 16, "a distinctive part of the password: {needle}");
    let sampler = CmdlineSampler::start(&needle);
    let files = FileServer::start(vec![
        ("installapp-v1.sh", std::fs::read(app.join("installapp-v1.sh")).unwrap()),
        ("installapp-v2.sh", std::fs::read(app.join("installapp-v2.sh")).unwrap()),
        ("herd-todo", std::fs::read(app.join("herd-todo")).unwrap()),
    ]);
    let port = files.base.rsplit(':').next().unwrap().to_string();

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let _guard = VmGuard(data.clone());
    std::fs::create_dir_all(&data).unwrap();
    let config = "[qemu]\nboot_timeout_secs = 240\nstop_timeout_secs = 20\n[extensions]\nallow_fetch_from = [\"127.0.0.1/32\"]\n";
    let mut s = Server::start_logged("qemu", &data, Some(config), "info,herd_reconciler=debug");
    s.ok(&["group", "create", "-n", "vm-rg"]);
    for v in ["1.0.0", "1.0.1"] {
        let d = tg.join(v);
        let out = s.json(
            &[
                words("image import --urn"),
                vec![
                    &format!("Herd:TestGuest:1:{v}"),
                    "--kernel",
                    d.join("vmlinuz").to_str().unwrap(),
                    "--initrd",
                    d.join("initrd.img").to_str().unwrap(),
                    "--cmdline",
                    &format!("@{}", d.join("cmdline").display()),
                ],
            ]
            .concat(),
        );
        assert_eq!(out["guestAgent"], true, "the agent is detected in the initrd: {out}");
        assert_eq!(out["source"]["kind"], "kernel");
    }
    // A bootable disk (a cloud image's shape): copied into the gallery as a read-only qcow2.
    if tg.join("1.0.0/disk.qcow2").exists() {
        let disk = tg.join("1.0.0/disk.qcow2");
        let out = s.json(
            &[
                words("image import --urn Herd:TestGuestDisk:1:1.0.0 --disk"),
                vec![disk.to_str().unwrap(), "--guest-agent", "true"],
            ]
            .concat(),
        );
        assert_eq!(out["source"]["kind"], "disk", "{out}");
        assert_eq!(out["source"]["format"], "qcow2");
        assert_eq!(out["guestAgent"], true);
        let e = s.err(&["image", "import", "--urn", "Herd:Bad:1:1.0.0", "--disk", "/nonexistent.qcow2"]);
        assert!(e.contains("--disk"), "{e}");
    }
    s.ok(&with(
        &["vmss", "create"],
        &words(
            "--image Herd:TestGuest:1:1.0.0 --instance-count 2 --vm-sku Standard_B1ms --admin-username labuser \
             --ssh-key-value \
             'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHerdTestKeyOnlyForTheSeedXXXXXXXXXXXXXXXXXX test@herd' \
             --disable-overprovision --data-disk-sizes-gb 1 --upgrade-policy-mode Manual --quiet --timeout 300",
        ),
    ));
    let inst = counted(&s);
    assert_eq!(inst.len(), 2);
    assert!(inst.iter().all(|i| i["state"] == "Running"), "{inst:?}");
    let ids: Vec<String> = inst.iter().map(|i| i["instanceId"].as_str().unwrap().to_string()).collect();
    let names: Vec<String> = inst.iter().map(|i| i["computerName"].as_str().unwrap().to_string()).collect();
    let addrs: Vec<String> = inst.iter().map(|i| i["reachAddress"].as_str().unwrap().to_string()).collect();
    assert_eq!(qemu_pids(&data).len(), 2, "one QEMU per VM");

    let view = s.json(&with(&["vmss", "get-instance-view"], &["--instance-id", &ids[0]]));
    assert!(view["statuses"].as_array().unwrap().iter().any(|st| st["code"] == "GuestAgent/ready"), "{view}");
    let boot_log = s.ok(&with(&["vmss", "get-boot-log"], &["--instance-id", &ids[0]]));
    assert!(boot_log.contains(&format!("HERD-GUEST-READY hostname={}", names[0])), "{boot_log}");
    assert!(boot_log.contains("version=1.0.0"), "{boot_log}");

    // v1 through a Custom Script extension; the password is a protected setting in a file.
    let command = |v: u32| {
        format!(
            "cat /proc/sys/kernel/random/boot_id; cat /etc/herd-image-version; TODO_APP_URL=http://10.0.2.2:{port}/herd-todo TODO_DB_PORT={} bash installapp-v{v}.sh todo todo {}",
            pg.port,
            sh_quote(&secret)
        )
    };
    let prot = dir.path().join("protected.json");
    let set_ext = |s: &Server, v: u32| {
        std::fs::write(&prot, serde_json::json!({"commandToExecute": command(v)}).to_string()).unwrap();
        let settings = serde_json::json!({"fileUris": [files.url(&format!("installapp-v{v}.sh"))]}).to_string();
        s.ok(&[words("vmss extension set -g vm-rg --vmss-name web --name CustomScript --publisher Microsoft.Azure.Extensions --version 2.0 --settings"), vec![&settings, "--protected-settings", &format!("@{}", prot.display())]].concat());
        s.json(&with(&["vmss", "show"], &[]))["modelGeneration"].as_u64().unwrap()
    };
    let gen1 = set_ext(&s, 1);
    assert!(counted(&s).iter().all(|i| i["latestModelApplied"] == false), "Manual: not applied yet");
    s.ok(&with(&["vmss", "update-instances"], &["--instance-ids", "*"]));
    let inst = wait_extension(&s, &ids, gen1);
    for i in &inst {
        assert_eq!(i["extensions"][0]["state"], "Succeeded", "{}", i["extensions"][0]);
    }
    for (addr, name) in addrs.iter().zip(&names) {
        let v = wait_for("the app to answer", Duration::from_secs(30), || get(&format!("http://{addr}/api/version")));
        assert_eq!(v, format!("Version 1 from {name}"), "each VM answers with its own computer name");
    }
    let boot0 = boot_id(&inst[0]);
    let item = std::process::Command::new("curl")
        .args(["-s", "-f", "-m", "10", "-H", "Content-Type: application/json", "-d", "{\"title\":\"buy milk\"}"])
        .arg(format!("http://{}/api/todos", addrs[0]))
        .output()
        .unwrap();
    assert!(item.status.success(), "adding a TODO item");

    // v2 on one VM only, in place: same boot, the other VM still on v1.
    let gen2 = set_ext(&s, 2);
    s.ok(&with(&["vmss", "update-instances"], &["--instance-ids", &ids[0]]));
    let inst = wait_extension(&s, &ids[..1], gen2);
    assert_eq!(inst[0]["extensions"][0]["state"], "Succeeded", "{}", inst[0]["extensions"][0]);
    assert_eq!(boot_id(&inst[0]), boot0, "v2 ran without a reboot");
    assert_eq!(get(&format!("http://{}/api/version", addrs[0])).unwrap(), format!("Version 2 from {}", names[0]));
    assert_eq!(get(&format!("http://{}/api/version", addrs[1])).unwrap(), format!("Version 1 from {}", names[1]));

    // A new image version: update-instances reimages (the base changed), extensions run again.
    s.ok(&with(&["vmss", "update"], &["--set", "virtualMachineProfile.storageProfile.imageReference.version=1.0.1"]));
    let gen3 = gen2 + 1;
    s.ok(&with(&["vmss", "update-instances"], &["--instance-ids", "*"]));
    let inst = wait_extension(&s, &ids, gen3);
    for i in &inst {
        let msg = i["extensions"][0]["message"].as_str().unwrap();
        assert_eq!(i["extensions"][0]["state"], "Succeeded", "{msg}");
        assert!(msg.contains("1.0.1"), "the extension ran on the new image: {msg}");
    }
    let reimaged = inst.iter().find(|i| i["instanceId"] == ids[0].as_str()).unwrap();
    assert_ne!(boot_id(reimaged), boot0, "a reimage is a new boot");
    for (addr, name) in addrs.iter().zip(&names) {
        let v = wait_for("the app after the reimage", Duration::from_secs(30), || {
            get(&format!("http://{addr}/api/version"))
        });
        assert_eq!(v, format!("Version 2 from {name}"));
    }
    let todos = get(&format!("http://{}/api/todos", addrs[1])).unwrap();
    assert!(todos.contains("buy milk"), "the TODO item lives in the host's database: {todos}");
    let log = s.ok(&with(&["vmss", "get-boot-log"], &["--instance-id", &ids[0]]));
    assert!(log.contains("version=1.0.1"), "the boot log shows the new image");

    // kill -9 of the server while the VMs run: a new server adopts them.
    let before = qemu_pids(&data);
    assert_eq!(before.len(), 2);
    s.restart();
    // Prove the new server reconciles (and reaches an adopted VM's agent) before comparing:
    // the extension given again runs in place on one VM.
    let gen4 = set_ext(&s, 2);
    s.ok(&with(&["vmss", "update-instances"], &["--instance-ids", &ids[1]]));
    let inst = wait_extension(&s, &ids[1..], gen4);
    assert_eq!(inst[0]["extensions"][0]["state"], "Succeeded", "{}", inst[0]["extensions"][0]);
    assert_eq!(counted(&s).len(), 2);
    assert_eq!(qemu_pids(&data), before, "adopted, not duplicated or restarted");

    // Each VM's own metadata endpoint, asked from inside the guest (QEMU's guestfwd runs `herd
    // metadata-relay` to this instance's listener), after the adoption too.
    let md = "wget -q -O - --header 'Metadata: true' 'http://10.0.2.100/metadata/instance/compute/name?api-version=2021-02-01&format=text'; echo; wget -q -O - --header 'Metadata: true' 'http://10.0.2.100/metadata/scheduledevents?api-version=2020-07-01'";
    let settings = serde_json::json!({ "commandToExecute": md }).to_string();
    s.ok(&[words("vmss extension set -g vm-rg --vmss-name web --name CustomScript --extension-instance-name Metadata --publisher Herd.Extensions --version 2.1 --settings"), vec![&settings]].concat());
    s.ok(&with(&["vmss", "update-instances"], &["--instance-ids", &ids[0]]));
    let msg = wait_for("the metadata extension", BOOT, || {
        let i = counted(&s).into_iter().find(|i| i["instanceId"] == ids[0].as_str())?;
        let e = i["extensions"].as_array()?.iter().find(|e| e["name"] == "Metadata")?.clone();
        (e["state"] != "Transitioning").then(|| e["message"].as_str().unwrap_or_default().to_string())
    });
    assert!(msg.contains(&format!("web_{}", ids[0])), "the guest got its own identity: {msg}");
    assert!(msg.contains("DocumentIncarnation"), "and its scheduled events: {msg}");

    // The secret: nowhere in what the API shows or the server logged.
    let shown = [
        s.ok(&with(&["vmss", "show"], &[])),
        s.ok(&with(&["vmss", "list-instances"], &[])),
        s.ok(&with(&["vmss", "get-instance-view"], &["--instance-id", &ids[0]])),
        s.ok(&["vmss", "extension", "list", "-g", "vm-rg", "--vmss-name", "web"]),
        s.ok(&["monitor", "activity-log", "list", "-g", "vm-rg"]),
    ]
    .join("\n");
    assert!(!shown.contains(&needle), "the API showed the password");
    assert!(!s.log_text().contains(&needle), "the server logged the password");

    // Delete: nothing left.
    s.ok(&with(&["vmss", "delete"], &["--timeout", "300"]));
    wait_for("QEMU gone", Duration::from_secs(60), || qemu_pids(&data).is_empty().then_some(()));
    let leftovers: Vec<String> = walk(&data.join("vms"))
        .into_iter()
        .filter(|p| ["qcow2", "img"].iter().any(|e| p.ends_with(e)) || p.contains("web/"))
        .collect();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
    let (hits, scans) = sampler.finish();
    assert!(scans > 100, "the sampler ran throughout ({scans} scans)");
    assert!(hits.is_empty(), "the password appeared in a command line: {hits:?}");
}

fn walk(p: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let path = e.path();
            out.push(path.display().to_string());
            if path.is_dir() {
                out.extend(walk(&path));
            }
        }
    }
    out
}
