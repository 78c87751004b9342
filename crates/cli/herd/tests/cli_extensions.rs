//! Custom Script extensions as a user meets them, on the process driver: `vmss extension
//! set|list|show|delete`, Manual upgrades with `update-instances` (in place, no restart),
//! statuses in the instance view, a failing script, `--force-update`, reimage re-runs, and the
//! protected settings never shown, logged or put in any command line.

mod common;

use common::*;
use serde_json::Value;
use std::time::Duration;

const SECRET: &str = "pw-7f3a9c1e-never-shown";
const SET: [&str; 4] = ["-g", "ext-rg", "-n", "web"];

fn with<'a>(cmd: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
    on_set(&SET, cmd, extra)
}

/// `az vmss extension ...` names the set with --vmss-name.
fn ext<'a>(cmd: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["vmss", "extension", cmd, "-g", "ext-rg", "--vmss-name", "web"];
    v.extend_from_slice(extra);
    v
}

fn counted(s: &Server) -> Vec<Value> {
    counted_instances(s, &SET)
}

/// The extension status of every counted instance, once each has one for `name` in a final state.
fn wait_statuses(s: &Server, name: &str, want_generation: u64) -> Vec<Value> {
    wait_for("extension statuses", Duration::from_secs(60), || {
        let inst = counted(s);
        let done = inst.iter().all(|i| {
            i["modelGeneration"].as_u64() == Some(want_generation)
                && i["pendingAction"].is_null()
                && i["extensions"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|e| e["name"] == name && e["state"] != "Transitioning"))
        });
        (done && !inst.is_empty()).then_some(inst)
    })
}

fn init_pid(s: &Server, id: &str) -> Option<u32> {
    tagged_processes(&s.data_dir)
        .into_iter()
        .find(|p| p.var("HERD_INSTANCE_ID") == Some(id) && p.cmdline.contains("sleep"))
        .map(|p| p.pid)
}

const ALLOW_LOOPBACK: &str = "[extensions]\nallow_fetch_from = [\"127.0.0.1/32\"]\n";

#[test]
fn custom_script_runs_in_place_and_keeps_its_secret() {
    let dir = tempfile::tempdir().unwrap();
    let sampler = CmdlineSampler::start(SECRET);
    // The file server is on loopback, which fileUris may reach only when allowed.
    let s = Server::start_logged("process", &dir.path().join("data"), Some(ALLOW_LOOPBACK), "debug");
    let img = image_dir(&dir.path().join("img"), "exec sleep 3600");
    // On the process driver the script's own children run on the host, so the command hands
    // the password over in the environment, not as an argument.
    let install = "#!/bin/sh\n# installs 'the app': records its version and shows it got the password\nversion=$1\necho \"installing v$version with password $PW\"\necho \"stderr line for v$version\" >&2\nprintf '%s' \"$version\" > \"$HOME/app-version\"\n";
    let files = FileServer::start(vec![
        ("install.sh", install.as_bytes().to_vec()),
        ("fail.sh", b"echo about to fail with $1\nexit 3\n".to_vec()),
    ]);
    s.group_with_image("ext-rg", "Herd:App:1:1.0.0", &img);
    s.ok(&with(
        &["vmss", "create"],
        &["--image", "Herd:App:1:1.0.0", "--instance-count", "2", "--upgrade-policy-mode", "Manual", "--quiet"],
    ));
    let before = counted(&s);
    assert_eq!(before.len(), 2);
    let gen0 = before[0]["modelGeneration"].as_u64().unwrap();

    // Bad input: clear errors naming the field, nothing changed.
    let etag = s.json(&with(&["vmss", "show"], &[]))["etag"].clone();
    let e = s.err(&ext(
        "set",
        &[
            words("--name CustomScript --publisher Acme.Tools --version 2.0 --settings"),
            vec!["{\"commandToExecute\":\"true\"}"],
        ]
        .concat(),
    ));
    assert!(e.contains("publisher") && e.contains("Microsoft.Azure.Extensions"), "{e}");
    let e = s.err(&ext("set", &["--name", "CustomScript", "--publisher", "Herd.Extensions", "--version", "2.0"]));
    assert!(e.contains("exactly one of commandToExecute or script"), "{e}");
    let e = s.err(&ext(
        "set",
        &[
            words("--name CustomScript --publisher Herd.Extensions --version 2.0 --settings"),
            vec!["{\"fileUris\": \"x\"}"],
        ]
        .concat(),
    ));
    assert!(e.contains("fileUris"), "{e}");
    assert_eq!(s.json(&with(&["vmss", "show"], &[]))["etag"], etag, "a refused change changes nothing");

    // v1 through protected settings given as a file, so not even our own CLI call shows it.
    let prot = dir.path().join("prot-v1.json");
    std::fs::write(&prot, format!("{{\"commandToExecute\": \"PW='{SECRET}' sh install.sh 1\"}}")).unwrap();
    let settings = format!("{{\"fileUris\": [\"{}\"]}}", files.url("install.sh"));
    let out = s.json(&ext(
        "set",
        &[
            words("--name CustomScript --publisher Microsoft.Azure.Extensions --version 2.0 --settings"),
            vec![&settings, "--protected-settings", &format!("@{}", prot.display())],
        ]
        .concat(),
    ));
    assert_eq!(out["name"], "CustomScript");
    assert!(out["properties"].get("protectedSettings").is_none());

    // Manual: the model moved on, the instances did not.
    let inst = counted(&s);
    assert!(inst.iter().all(|i| i["latestModelApplied"] == false), "{inst:?}");
    let pids: Vec<u32> = inst.iter().map(|i| init_pid(&s, i["instanceId"].as_str().unwrap()).unwrap()).collect();
    let gen1 = s.json(&with(&["vmss", "show"], &[]))["modelGeneration"].as_u64().unwrap();
    assert_eq!(gen1, gen0 + 1);

    s.ok(&with(&["vmss", "update-instances"], &["--instance-ids", "*"]));
    let inst = wait_statuses(&s, "CustomScript", gen1);
    for (i, pid) in inst.iter().zip(&pids) {
        let id = i["instanceId"].as_str().unwrap();
        let st = &i["extensions"][0];
        assert_eq!(st["state"], "Succeeded", "{st}");
        assert_eq!(st["exitCode"], 0);
        assert!(st["message"].as_str().unwrap().contains("installing v1 with password ***"), "{st}");
        assert!(st["message"].as_str().unwrap().contains("stderr line for v1"), "{st}");
        assert_eq!(i["latestModelApplied"], true);
        assert_eq!(i["provisioningState"], "Succeeded");
        assert_eq!(init_pid(&s, id), Some(*pid), "applied in place: the instance was not restarted");
        let work = s.data_dir.join("instances/ext-rg/web").join(id).join("work");
        assert_eq!(std::fs::read_to_string(work.join("app-version")).unwrap(), "1");
    }
    let view =
        s.json(&with(&["vmss", "get-instance-view"], &["--instance-id", inst[0]["instanceId"].as_str().unwrap()]));
    assert_eq!(view["extensions"][0]["type"], "Microsoft.Azure.Extensions.CustomScript");
    assert!(view["statuses"].as_array().unwrap().iter().any(|s| s["code"] == "ProvisioningState/succeeded"), "{view}");

    // list/show never return protected settings.
    let listed = s.json(&ext("list", &[]));
    assert_eq!(listed.as_array().unwrap().len(), 1);
    let shown = s.json(&ext("show", &["--name", "CustomScript"]));
    assert_eq!(shown["properties"]["settings"]["fileUris"][0], files.url("install.sh"));

    // An unchanged extension does not run again; --force-update makes it.
    let one = inst[0]["instanceId"].as_str().unwrap().to_string();
    let t0 = inst[0]["extensions"][0]["time"].clone();
    let e = s.err(&ext(
        "set",
        &[
            words("--name CustomScript --publisher Microsoft.Azure.Extensions --version 2.0 --settings"),
            vec![&settings, "--force-update"],
        ]
        .concat(),
    ));
    assert!(e.contains("(0 given)"), "a set replaces the extension whole, protected settings too: {e}");
    s.ok(&ext(
        "set",
        &[
            words("--name CustomScript --publisher Microsoft.Azure.Extensions --version 2.0 --settings"),
            vec![&settings, "--protected-settings", &format!("@{}", prot.display()), "--force-update"],
        ]
        .concat(),
    ));
    let gen2 = gen1 + 1;
    s.ok(&with(&["vmss", "update-instances"], &["--instance-ids", &one]));
    let inst = wait_for("the forced re-run", Duration::from_secs(60), || {
        let v = counted(&s);
        let i = v.iter().find(|i| i["instanceId"] == one.as_str())?.clone();
        (i["modelGeneration"].as_u64() == Some(gen2)
            && i["extensions"][0]["time"] != t0
            && i["pendingAction"].is_null())
        .then_some(v)
    });
    let other = inst.iter().find(|i| i["instanceId"] != one.as_str()).unwrap();
    assert_eq!(other["latestModelApplied"], false, "only the named instance was updated");

    // A failing script: the instance's provisioningState is Failed, with the reason.
    let fail = format!("{{\"fileUris\": [\"{}\"], \"commandToExecute\": \"sh fail.sh now\"}}", files.url("fail.sh"));
    s.ok(&ext(
        "set",
        &["--name", "CustomScript", "--publisher", "Herd.Extensions", "--version", "2.1", "--settings", &fail],
    ));
    s.ok(&with(&["vmss", "update-instances"], &["--instance-ids", &one]));
    let failed = wait_for("the failed extension", Duration::from_secs(60), || {
        counted(&s).into_iter().find(|i| i["instanceId"] == one.as_str() && i["provisioningState"] == "Failed")
    });
    assert_eq!(failed["extensions"][0]["exitCode"], 3);
    assert!(failed["lastError"].as_str().unwrap().contains("exit code 3"), "{failed}");
    assert_eq!(failed["powerState"], "running", "a failed extension does not stop the VM");

    // file:// reads no host file unless the operator allows a directory: not /etc/shadow, not
    // the server's own sealing key.
    let key = s.data_dir.canonicalize().unwrap().join("secret.key");
    let steal = format!(
        "{{\"fileUris\": [\"file:///etc/shadow\", \"file://{}\"], \"commandToExecute\": \"cat shadow secret.key\"}}",
        key.display()
    );
    s.ok(&ext(
        "set",
        &["--name", "CustomScript", "--publisher", "Herd.Extensions", "--version", "2.1", "--settings", &steal],
    ));
    s.ok(&with(&["vmss", "update-instances"], &["--instance-ids", &one]));
    let refused = wait_for("the refused file:// download", Duration::from_secs(60), || {
        counted(&s).into_iter().find(|i| {
            i["instanceId"] == one.as_str() && i["lastError"].as_str().is_some_and(|e| e.contains("file_roots"))
        })
    });
    let msg = refused["extensions"][0]["message"].as_str().unwrap();
    assert!(msg.contains("file:///etc/shadow") && msg.contains("[extensions] file_roots"), "{msg}");
    assert!(!msg.contains("root:"), "{msg}");

    // Reimage: a fresh disk runs the (now passing) extension again on first boot.
    std::fs::write(&prot, format!("{{\"commandToExecute\": \"PW='{SECRET}' sh install.sh 2\"}}")).unwrap();
    s.ok(&ext(
        "set",
        &[
            words("--name CustomScript --publisher Herd.Extensions --version 2.1 --settings"),
            vec![&settings, "--protected-settings", &format!("@{}", prot.display())],
        ]
        .concat(),
    ));
    s.ok(&with(&["vmss", "reimage"], &["--instance-ids", &one]));
    let re = wait_for("the reimaged instance's extension", Duration::from_secs(60), || {
        counted(&s).into_iter().find(|i| {
            i["instanceId"] == one.as_str()
                && i["state"] == "Running"
                && i["pendingAction"].is_null()
                && i["extensions"][0]["state"] == "Succeeded"
        })
    });
    assert_eq!(re["provisioningState"], "Succeeded");
    let work = s.data_dir.join("instances/ext-rg/web").join(&one).join("work");
    assert_eq!(std::fs::read_to_string(work.join("app-version")).unwrap(), "2");

    // delete removes it from the model.
    s.ok(&ext("delete", &["--name", "CustomScript"]));
    assert!(s.json(&ext("list", &[])).as_array().unwrap().is_empty());
    let e = s.err(&ext("show", &["--name", "CustomScript"]));
    assert!(e.contains("no extension 'CustomScript'"), "{e}");

    // The secret: never in API output, the activity log, the server's log or any command line.
    let everything = [
        s.ok(&with(&["vmss", "show"], &[])),
        s.ok(&with(&["vmss", "list-instances"], &[])),
        s.ok(&["monitor", "activity-log", "list", "-g", "ext-rg"]),
    ]
    .join("\n");
    assert!(!everything.contains(SECRET), "the API showed the secret");
    assert!(s.log_text().contains("DEBUG") || s.log_text().contains("debug"), "the server logged at debug level");
    assert!(!s.log_text().contains(SECRET), "the server logged the secret");
    let (hits, scans) = sampler.finish();
    assert!(scans > 10, "the sampler ran ({scans} scans)");
    assert!(hits.is_empty(), "the secret appeared in a command line: {hits:?}");
}

/// Each change gets the least disruptive action, and the instance view says which before it
/// happens: a size change restarts with the new size and keeps the disk; an image change
/// reimages; a capacity change touches no existing instance.
#[test]
fn each_change_gets_the_least_disruptive_action() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start("process", &dir.path().join("data"), None);
    // The instance leaves a file on its "disk" at first boot; a reimage loses it, a restart not.
    let img = image_dir(
        &dir.path().join("img"),
        "[ -f first-boot ] || cat /proc/sys/kernel/random/uuid > first-boot\nexec sleep 3600",
    );
    s.ok(&["group", "create", "-n", "ext-rg"]);
    for v in ["1.0.0", "1.0.1"] {
        s.ok(&["image", "import", "--urn", &format!("Herd:App:1:{v}"), "--dir", img.to_str().unwrap()]);
    }
    s.ok(&with(
        &["vmss", "create"],
        &words("--image Herd:App:1:1.0.0 --instance-count 1 --vm-sku Standard_B1s --disable-overprovision --quiet"),
    ));
    let inst = counted(&s);
    let id = inst[0]["instanceId"].as_str().unwrap().to_string();
    let work = s.data_dir.join("instances/ext-rg/web").join(&id).join("work");
    let first = std::fs::read_to_string(work.join("first-boot")).unwrap();
    let pid0 = init_pid(&s, &id).unwrap();
    let env_of =
        |pid: u32| String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/environ")).unwrap()).replace('\0', "\n");
    assert!(env_of(pid0).contains("HERD_VCPUS=1\n"));

    // A capacity change touches no existing instance.
    s.ok(&with(&["vmss", "scale"], &["--new-capacity", "2", "--quiet"]));
    assert_eq!(init_pid(&s, &id), Some(pid0));
    s.ok(&with(&["vmss", "scale"], &["--new-capacity", "1", "--quiet"]));

    // A size change: the view says Resize; update-instances restarts it with 2 vCPUs, disk kept.
    s.ok(&with(&["vmss", "update"], &["--set", "sku.name=Standard_B2s", "--quiet"]));
    let i = counted(&s).into_iter().find(|i| i["instanceId"] == id.as_str()).unwrap();
    assert_eq!(i["upgradeAction"], "Resize", "{i}");
    assert_eq!(i["sku"], "Standard_B1s", "the instance still has its old size");
    s.ok(&with(&["vmss", "update-instances"], &["--instance-ids", &id]));
    let i = wait_for("the resize", Duration::from_secs(30), || {
        counted(&s)
            .into_iter()
            .find(|i| i["instanceId"] == id.as_str() && i["latestModelApplied"] == true && i["state"] == "Running")
    });
    assert_eq!(i["sku"], "Standard_B2s");
    let pid1 = wait_for("the restarted instance", Duration::from_secs(10), || init_pid(&s, &id).filter(|p| *p != pid0));
    assert!(env_of(pid1).contains("HERD_VCPUS=2\n"), "restarted with the new size");
    assert_eq!(std::fs::read_to_string(work.join("first-boot")).unwrap(), first, "the disk was kept");

    // An image change: the view says Reimage, and the disk is new.
    s.ok(&with(
        &["vmss", "update"],
        &["--set", "virtualMachineProfile.storageProfile.imageReference.version=1.0.1", "--quiet"],
    ));
    let i = counted(&s).into_iter().find(|i| i["instanceId"] == id.as_str()).unwrap();
    assert_eq!(i["upgradeAction"], "Reimage", "{i}");
    s.ok(&with(&["vmss", "update-instances"], &["--instance-ids", &id]));
    wait_for("the reimage", Duration::from_secs(30), || {
        counted(&s)
            .into_iter()
            .find(|i| i["instanceId"] == id.as_str() && i["latestModelApplied"] == true && i["state"] == "Running")
    });
    let again = wait_for("the new disk's first boot", Duration::from_secs(10), || {
        std::fs::read_to_string(work.join("first-boot")).ok()
    });
    assert_ne!(again, first, "a reimage gives a fresh disk");
}
