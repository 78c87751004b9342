//! The foundation as a user meets it: the real `herd` CLI against a real `herd server` on the
//! simulated driver.

mod common;

use common::*;
use serde_json::Value;
use std::time::Duration;

fn setup() -> (tempfile::TempDir, Server) {
    sim_with_image("web-rg", &["1.0.0", "1.0.1"])
}

const SET: [&str; 4] = ["-g", "web-rg", "-n", "webscaleset"];

fn with<'a>(cmd: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
    on_set(&SET, cmd, extra)
}

fn create(s: &Server, count: &str) {
    s.ok(&with(
        &["vmss", "create"],
        &[words("--image Herd:TestGuest:1:1.0.0 --instance-count"), vec![count], words("--vm-sku Standard_B1ms --zones 1 2 3 --upgrade-policy-mode Manual --admin-password correct-horse-battery --quiet")].concat(),
    ));
}

fn instances(s: &Server) -> Vec<Value> {
    s.json(&with(&["vmss", "list-instances"], &[])).as_array().unwrap().clone()
}

fn counted(s: &Server) -> Vec<Value> {
    instances(s).into_iter().filter(|i| i["overprovisioned"] == false && i["goal"] != "Deleted").collect()
}

#[test]
fn foundation_commands_end_to_end() {
    let (_d, s) = setup();
    create(&s, "3");
    let set = s.json(&with(&["vmss", "show"], &[]));
    assert_eq!(set["sku"]["capacity"], 3);
    assert_eq!(set["provisioningState"], "Succeeded");
    assert_eq!(set["virtualMachineProfile"]["osProfile"]["computerNamePrefix"], "webscales");
    assert!(set.to_string().find("correct-horse").is_none(), "the password is never returned");
    for f in ["herd.db", "herd.db-wal"] {
        let bytes = std::fs::read(s.data_dir.join(f)).unwrap_or_default();
        assert!(!String::from_utf8_lossy(&bytes).contains("correct-horse"), "{f} holds the password in clear");
    }
    let id = s.ok(&with(&["vmss", "show"], &["--query", "id", "-o", "tsv"]));
    assert_eq!(id.trim(), "/resourceGroups/web-rg/providers/Microsoft.Compute/virtualMachineScaleSets/webscaleset");

    let list = instances(&s);
    assert_eq!(list.len(), 3, "extras are gone once the set has converged: {list:#?}");
    let mut zones: Vec<&str> = list.iter().map(|i| i["zones"][0].as_str().unwrap()).collect();
    zones.sort();
    assert_eq!(zones, ["1", "2", "3"]);
    for i in &list {
        let id: u64 = i["instanceId"].as_str().unwrap().parse().unwrap();
        assert_eq!(i["computerName"].as_str().unwrap(), format!("webscales{id:06}"), "base 36 below 10 is decimal");
        assert_eq!(i["latestModelApplied"], true);
        assert_eq!(i["powerState"], "running");
    }
    let table = s.ok(&with(&["vmss", "list-instances"], &["-o", "table"]));
    assert!(table.lines().next().unwrap().starts_with("InstanceId"), "{table}");

    // Scale out and in; ids are never reused.
    s.ok(&with(&["vmss", "scale"], &["--new-capacity", "10", "--quiet"]));
    let ten = counted(&s);
    assert_eq!(ten.len(), 10);
    let max_id = ten.iter().map(|i| i["instanceId"].as_str().unwrap().parse::<u64>().unwrap()).max().unwrap();
    s.ok(&with(&["vmss", "scale"], &["--new-capacity", "4", "--quiet"]));
    assert_eq!(counted(&s).len(), 4);
    s.ok(&with(&["vmss", "update"], &["--set", "sku.capacity=5", "--quiet"]));
    let five = counted(&s);
    assert_eq!(five.len(), 5);
    assert!(
        five.iter().any(|i| i["instanceId"].as_str().unwrap().parse::<u64>().unwrap() > max_id),
        "a new id, not a reused one"
    );

    // Power operations on chosen instances.
    let ids: Vec<String> = five.iter().map(|i| i["instanceId"].as_str().unwrap().to_string()).collect();
    s.ok(&with(&["vmss", "stop"], &["--instance-ids", &ids[0], &ids[1], "--quiet"]));
    let power = |id: &str| instances(&s).into_iter().find(|i| i["instanceId"] == id).unwrap()["powerState"].clone();
    assert_eq!(power(&ids[0]), "stopped");
    assert_eq!(power(&ids[2]), "running");
    s.ok(&with(&["vmss", "deallocate"], &["--instance-ids", &ids[0], "--quiet"]));
    assert_eq!(power(&ids[0]), "deallocated");
    s.ok(&with(&["vmss", "start"], &["--instance-ids", "*", "--quiet"]));
    assert!(instances(&s).iter().all(|i| i["powerState"] == "running"));
    s.ok(&with(&["vmss", "restart"], &["--instance-ids", &ids[2], "--quiet"]));
    let view = s.json(&with(&["vmss", "get-instance-view"], &["--instance-id", &ids[2]]));
    assert_eq!(view["statuses"][1]["code"], "PowerState/running");

    // A model change: Manual policy leaves instances on the old model until update-instances.
    s.ok(&with(
        &["vmss", "update"],
        &["--set", "virtualMachineProfile.storageProfile.imageReference.version=1.0.1", "--quiet"],
    ));
    let set = s.json(&with(&["vmss", "show"], &[]));
    assert_eq!(set["modelGeneration"], 2);
    assert!(instances(&s).iter().all(|i| i["latestModelApplied"] == false));
    s.ok(&with(&["vmss", "update-instances"], &["--instance-ids", &ids[3], "--quiet"]));
    let latest: Vec<Value> = instances(&s).into_iter().filter(|i| i["latestModelApplied"] == true).collect();
    assert_eq!(latest.len(), 1);
    assert_eq!(latest[0]["instanceId"], ids[3].as_str());
    s.ok(&with(&["vmss", "update-instances"], &["--instance-ids", "*", "--quiet"]));
    s.ok(&with(&["vmss", "wait"], &["--updated", "--quiet"]));
    assert!(instances(&s).iter().all(|i| i["latestModelApplied"] == true));
    s.ok(&with(&["vmss", "reimage"], &["--instance-ids", &ids[4], "--quiet"]));

    // Capacity and policy edits do not bump the model generation.
    s.ok(&with(&["vmss", "update"], &["--set", "upgradePolicy.mode=Automatic", "--set", "tags.env=test", "--quiet"]));
    assert_eq!(s.json(&with(&["vmss", "show"], &[]))["modelGeneration"], 2);
    s.ok(&with(&["vmss", "update"], &["--set", "tags.team=web", "--remove", "tags.env", "--quiet"]));
    let tags = s.json(&with(&["vmss", "show"], &["--query", "tags"]));
    assert_eq!(tags, serde_json::json!({"team": "web"}));

    // Delete one instance: capacity follows.
    s.ok(&with(&["vmss", "delete-instances"], &["--instance-ids", &ids[1], "--quiet"]));
    assert_eq!(s.json(&with(&["vmss", "show"], &["--query", "sku.capacity"])), 4);
    assert!(counted(&s).iter().all(|i| i["instanceId"] != ids[1].as_str()));

    // Capacity 0 keeps the model.
    s.ok(&with(&["vmss", "scale"], &["--new-capacity", "0", "--quiet"]));
    assert!(instances(&s).is_empty());
    let set = s.json(&with(&["vmss", "show"], &[]));
    assert_eq!(set["virtualMachineProfile"]["storageProfile"]["imageReference"]["version"], "1.0.1");

    // The activity log tells the story.
    let log =
        s.json(&["monitor", "activity-log", "list", "-g", "web-rg", "--resource", "webscaleset", "--since", "1h"]);
    let ops: Vec<&str> = log.as_array().unwrap().iter().map(|e| e["operation"].as_str().unwrap()).collect();
    for op in [
        "CreateScaleSet",
        "CreateInstances",
        "Scale",
        "UpdateScaleSet",
        "Stop",
        "Deallocate",
        "Start",
        "Restart",
        "Reimage",
        "UpdateInstances",
        "DeleteInstances",
    ] {
        assert!(ops.contains(&op), "activity log lacks {op}: {ops:?}");
    }
    assert!(log.to_string().contains("overprovisioned extra"), "overprovisioning is shown honestly");
    assert!(!log.to_string().contains("correct-horse"));

    s.ok(&with(&["vmss", "list"], &[]).iter().take(2).chain(["-g", "web-rg"].iter()).copied().collect::<Vec<_>>());
    s.ok(&with(&["vmss", "delete"], &["--quiet"]));
    s.err(&with(&["vmss", "show"], &[]));
    s.ok(&["vmss", "wait", "-g", "web-rg", "-n", "webscaleset", "--deleted", "--quiet"]);
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let (_d, s) = setup();
    create(&s, "3");
    let before = s.json(&with(&["vmss", "show"], &[]));
    let base = ["vmss", "create", "-g", "web-rg", "-n", "other", "--vm-sku", "Standard_B1ms", "--quiet"];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["vmss", "create", "-g", "nope-rg", "-n", "x", "--image", "Herd:TestGuest:1:1.0.0"],
            "resource group 'nope-rg' does not exist",
        ),
        (with(&["vmss", "create"], &["--image", "Herd:TestGuest:1:1.0.0"]), "already exists"),
        (
            [&base[..], &["--image", "Herd:TestGuest:1:1.0.0", "--instance-count", "101"]].concat(),
            "singlePlacementGroup=false",
        ),
        ([&base[..], &["--image", "Herd:TestGuest:1:1.0.0", "--instance-count", "-1"]].concat(), "sku.capacity"),
        (
            vec![
                "vmss",
                "create",
                "-g",
                "web-rg",
                "-n",
                "other",
                "--image",
                "Herd:TestGuest:1:1.0.0",
                "--vm-sku",
                "Huge_VM",
            ],
            "allowed values",
        ),
        ([&base[..], &["--image", "Herd:Nothing:1:1.0.0"]].concat(), "not in the gallery"),
        ([&base[..], &["--image", "Herd:TestGuest:1"]].concat(), "publisher:offer:sku:version"),
        ([&base[..], &["--image", "Herd:TestGuest:1:1.0.0", "--zones", "1", "7"]].concat(), "zones[1]"),
        (
            [&base[..], &["--image", "Herd:TestGuest:1:1.0.0", "--upgrade-policy-mode", "Sometimes"]].concat(),
            "Manual, Automatic, Rolling",
        ),
        ([&base[..], &["--image", "Herd:TestGuest:1:1.0.0", "--priority", "Spot"]].concat(), "Spot needs a spot price"),
        (with(&["vmss", "scale"], &["--new-capacity", "101"]), "sku.capacity"),
        (with(&["vmss", "delete-instances"], &["--instance-ids", "9999"]), "9999 do not exist"),
        (with(&["vmss", "stop"], &["--instance-ids", "abc"]), "instanceIds[0]"),
        (with(&["vmss", "update"], &["--set", "upgradePolicy.mode=Sometimes"]), "upgradePolicy.mode"),
        (with(&["vmss", "update"], &["--set", "virtualMachineProfile.bogus=1"]), "bogus"),
        (with(&["vmss", "update"], &["--set", "id=x"]), "read-only"),
        (with(&["vmss", "update"], &["--remove", "zones", "7"]), "out of range"),
        (with(&["vmss", "update"], &["--remove", "zones", "0"]), "changing the zones"),
        (
            with(&["vmss", "update"], &["--set", "sku.capacity=5", "--set", "automaticRepairsPolicy.enabled=true"]),
            "automatic repairs need a health source",
        ),
        (with(&["vmss", "update"], &["--set", "sku.capacity=4", "--if-match", "\"1\""]), "If-Match"),
    ];
    for (args, expect) in cases {
        let err = s.err(&args);
        assert!(err.contains(expect), "herd {}: expected '{expect}' in:\n{err}", args.join(" "));
    }
    let after = s.json(&with(&["vmss", "show"], &[]));
    assert_eq!(before["etag"], after["etag"], "no bad request changed the set");
    assert_eq!(after["sku"]["capacity"], 3, "the valid --set next to an invalid one was not applied");
    assert_eq!(instances(&s).len(), 3);
    assert_eq!(s.json(&["vmss", "list", "-g", "web-rg"]).as_array().unwrap().len(), 1);
    // Deleting an image in use is refused.
    assert!(s.err(&["image", "delete", "--urn", "Herd:TestGuest:1:1.0.0"]).contains("in use"));
}

#[tokio::test]
async fn tokens_etags_and_conflicts_over_http() {
    let (_d, s) = setup();
    create(&s, "1");
    let http = s.http().build().unwrap();
    let url = format!("{}/v1/resourceGroups/web-rg/virtualMachineScaleSets/webscaleset", s.url);
    let r = http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401, "no token, no access");
    let r = http.get(&url).bearer_auth("wrong").send().await.unwrap();
    assert_eq!(r.status(), 401);
    let token = s.token();
    let r = http.get(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    let body = serde_json::json!({"operations": [{"op": "set", "path": "tags.a", "value": "1"}]});
    // The same update twice, both with the etag read first.
    let update = || http.post(format!("{url}/update")).bearer_auth(&token).header("If-Match", &etag).json(&body).send();
    let r = update().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = update().await.unwrap();
    assert_eq!(r.status(), 412, "a stale etag is refused");
    let err: Value = r.json().await.unwrap();
    assert_eq!(err["error"]["code"], "PreconditionFailed");
    let r = http.get(format!("{}/openapi.json", s.url)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let doc: Value = r.json().await.unwrap();
    assert!(doc["paths"]["/v1/resourceGroups/{group}/virtualMachineScaleSets/{name}/update"].is_object());
    let r = http
        .put(&url)
        .bearer_auth(&token)
        .header("If-None-Match", "*")
        .json(&serde_json::json!({"sku": {"name": "Standard_B1ms", "capacity": 1}}))
        .send()
        .await
        .unwrap();
    assert!(r.status() == 409 || r.status() == 400, "create-only on an existing set is refused: {}", r.status());
}

#[test]
fn wait_fails_when_provisioning_is_suspended() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        "sim",
        &dir.path().join("data"),
        Some("[sim]\nboot_min_ms = 1\nboot_max_ms = 2\nfailure_rate = 1.0\n[provisioning]\nfailure_threshold = 3\n"),
    );
    let img = image_dir(&dir.path().join("img"), "exec sleep 3600");
    s.group_with_image("web-rg", "Herd:TestGuest:1:1.0.0", &img);
    let out = s.herd(&with(
        &["vmss", "create"],
        &words("--image Herd:TestGuest:1:1.0.0 --instance-count 2 --vm-sku Standard_B1ms --quiet --timeout 120"),
    ));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("suspended"), "{err}");
    let set = s.json(&with(&["vmss", "show"], &[]));
    assert_eq!(set["provisioningState"], "Failed");
    let log = s.json(&["monitor", "activity-log", "list", "-g", "web-rg"]);
    assert!(log.to_string().contains("ProvisioningSuspended"));
    let n = instances(&s).len();
    assert!(n <= 3, "no runaway creation: {n} instances");
}

/// Automatic OS image upgrades: with the image at `latest`, importing a newer version rolls it
/// out by itself, in batches, and the activity log says so. Repairs and rolling upgrades refuse
/// to run without a health source.
#[test]
fn a_newer_image_is_rolled_out_by_itself() {
    let (dir, s) = setup();
    s.ok(&with(
        &["vmss", "create"],
        &["--image", "Herd:TestGuest:1:latest", "--instance-count", "4", "--disable-overprovision", "--quiet"],
    ));
    let e = s.err(&with(
        &["vmss", "update"],
        &words(
            "--set virtualMachineProfile.storageProfile.imageReference.version=1.0.0 --set \
             upgradePolicy.automaticOSUpgradePolicy.enableAutomaticOSUpgrade=true",
        ),
    ));
    assert!(e.contains("'latest'"), "{e}");
    s.ok(&with(
        &["vmss", "update"],
        &[
            "--set",
            "upgradePolicy.automaticOSUpgradePolicy={\"enableAutomaticOSUpgrade\": true}",
            "--set",
            "upgradePolicy.rollingUpgradePolicy={\"maxBatchInstancePercent\": 50}",
            "--quiet",
        ],
    ));
    let gen0 = s.json(&with(&["vmss", "show"], &[]))["modelGeneration"].as_u64().unwrap();
    let img = image_dir(&dir.path().join("img2"), "exec sleep 3600");
    s.ok(&["image", "import", "--urn", "Herd:TestGuest:1:1.0.2", "--dir", img.to_str().unwrap()]);
    let done = wait_for("the OS upgrade to finish", Duration::from_secs(60), || {
        let out = s.herd(&with(&["vmss", "rolling-upgrade", "get-latest"], &["-o", "json"]));
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["state"] == "Completed").then_some(v)
    });
    assert_eq!(done["trigger"], "automatic OS upgrade", "{done}");
    assert_eq!(done["batches"].as_array().unwrap().len(), 2, "50% batches of 4: {done}");
    assert_eq!(done["targetGeneration"].as_u64().unwrap(), gen0 + 1);
    assert!(counted(&s)
        .iter()
        .all(|i| i["modelGeneration"].as_u64() == Some(gen0 + 1) && i["latestModelApplied"] == true));
    let log = s.ok(&["monitor", "activity-log", "list", "-g", "web-rg", "-o", "json"]);
    assert!(log.contains("image version 1.0.2 was published (was 1.0.1)"), "{log}");
    let e = s.err(&with(
        &["vmss", "set-orchestration-service-state"],
        &["--service-name", "AutomaticRepairs", "--action", "Suspend"],
    ));
    assert!(e.contains("automatic repairs off"), "{e}");
    let e = s.err(&with(
        &["vmss", "set-orchestration-service-state"],
        &["--service-name", "Backups", "--action", "Suspend"],
    ));
    assert!(e.contains("allowed: AutomaticRepairs"), "{e}");
}

#[test]
fn server_status_lists_every_controller_with_its_last_run() {
    let (_dir, s) = setup();
    create(&s, "2");
    let every = ["autoscale", "autoscale-sampler", "billing", "feed-compaction", "load-balancer", "reconciler"];
    let status = wait_for("every controller to have run once", Duration::from_secs(60), || {
        let v = s.json(&["server", "status"]);
        let all_ran = v["controllers"].as_array()?.iter().all(|c| c["runs"].as_u64() >= Some(1));
        all_ran.then_some(v)
    });
    let controllers = status["controllers"].as_array().unwrap();
    let names: Vec<&str> = controllers.iter().filter_map(|c| c["name"].as_str()).collect();
    for want in every {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    for c in controllers {
        assert!(c["lastRunAt"].is_string() && c["lastRunMs"].is_number(), "no last run: {c}");
        assert_eq!(c["failures"], 0, "a controller failed on a healthy sim server: {c}");
    }
    let reconciler = controllers.iter().find(|c| c["name"] == "reconciler").unwrap();
    assert!(reconciler["watches"].as_array().unwrap().iter().any(|k| k == "vmss"), "{reconciler}");
    // The table names each controller and says what it waits for.
    let table = s.ok(&["server", "status", "-o", "table"]);
    assert!(table.contains("Controllers (") && table.contains("WaitingFor"), "{table}");
    for want in every {
        assert!(table.contains(want), "{want} missing from the table:\n{table}");
    }
}

/// Join tokens: created with the cluster CA's SHA-256 in them and shown once, listed and
/// stored without their secret, bad lifetimes refused naming the field, deleted by id.
#[test]
fn join_tokens_carry_the_ca_fingerprint_and_are_shown_once() {
    let (_dir, s) = setup();
    let ca = s.json(&["server", "tls"])["caFingerprint"].as_str().unwrap().to_ascii_lowercase().replace(':', "");
    let text = s.ok(&[
        "host",
        "join-token",
        "create",
        "--expires",
        "2h",
        "--single-use",
        "--description",
        "rack a",
        "-o",
        "table",
    ]);
    let token = text.trim();
    assert!(token.starts_with(&format!("herd1::{ca}::")), "{token}");
    let (id, secret) = token.rsplit("::").next().unwrap().split_once('.').unwrap();
    let list = s.json(&["host", "join-token", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["id"], id);
    assert_eq!(list[0]["singleUse"], true);
    assert_eq!(list[0]["description"], "rack a");
    assert!(!list.to_string().contains(secret) && list[0].get("secretSha256").is_none(), "no secret, no hash: {list}");
    let table = s.ok(&["host", "join-token", "list", "-o", "table"]);
    assert!(table.contains(id) && !table.contains(secret), "{table}");
    let v = s.json(&["host", "join-token", "create"]);
    assert!(v["token"].as_str().unwrap().starts_with("herd1::"), "JSON output has the token: {v}");

    let e = s.err(&["host", "join-token", "create", "--expires", "31d"]);
    assert!(e.contains("expiresInSeconds") && e.contains("30 days"), "{e}");
    let e = s.err(&["host", "join-token", "create", "--expires", "soon"]);
    assert!(e.contains("--expires 'soon'"), "{e}");
    assert_eq!(s.json(&["host", "join-token", "list"]).as_array().unwrap().len(), 2, "nothing half-created");

    s.ok(&["host", "join-token", "delete", id]);
    let e = s.err(&["host", "join-token", "delete", id]);
    assert!(e.contains("does not exist"), "{e}");
    assert!(!s.log_text().contains(secret), "the secret never reaches the log");
}
