//! Issue 20, "fileUris are downloaded by the agent, under the data-safety rules": on the
//! namespace rig (`herd dev cluster`), a Custom Script extension's file is served on the
//! loopback of host h1's own network namespace, which the server's namespace cannot reach:
//! the extension succeeds only because h1's agent downloaded it. An address the rules refuse
//! fails the extension with a message naming the URI without its query string, and nothing
//! runs.

mod common;

use common::rig::Rig;
use common::{wait_for, wait_observing};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

/// The port of the file server on h1's loopback.
const PORT: &str = "18731";

/// Whether `url` answers 200 from inside `member`'s namespaces.
fn fetches(r: &Rig, member: &str, url: &str) -> bool {
    let code = format!(
        "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('{url}', timeout=5).status == 200 else 1)"
    );
    r.exec(member, &["python3", "-c", &code]).status.success()
}

/// The one instance of rg/web, once its extension run has ended in `state` (`pendingAction`
/// cleared, the status of `CustomScript` in that state).
fn extension_done(r: &Rig, state: &str) -> Value {
    wait_observing(&format!("the extension run to end {state}"), Duration::from_secs(120), || {
        let list = r.json(&["vmss", "list-instances", "-g", "rg", "-n", "web"]);
        let i = list.as_array().and_then(|a| a.first()).cloned().unwrap_or_default();
        let done = i["pendingAction"].is_null() && i["extensions"][0]["state"] == state;
        if done {
            Ok(i)
        } else {
            Err(i.to_string())
        }
    })
}

fn set_script(r: &Rig, settings: &Value) {
    r.json(&[
        "vmss",
        "extension",
        "set",
        "-g",
        "rg",
        "--vmss-name",
        "web",
        "--name",
        "CustomScript",
        "--publisher",
        "Microsoft.Azure.Extensions",
        "--version",
        "2.0",
        "--settings",
        &settings.to_string(),
    ]);
    r.json(&["vmss", "update-instances", "-g", "rg", "-n", "web", "--instance-ids", "*"]);
}

fn logs(r: &Rig) -> String {
    std::fs::read_dir(&r.data_dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_agent_downloads_file_uris_on_its_own_host_under_the_servers_rules() {
    // The server allows 127.0.0.1 only (loopback is refused by default): the rules travel to
    // the agent with each run.
    let r = Rig::up(
        &Rig::unique("fu"),
        &["--hosts", "1", "--zones", "1"],
        "[extensions]\nallow_fetch_from = [\"127.0.0.1/32\"]\n",
    );
    // A file server on h1's loopback; its log names every request's client address.
    let served = tempfile::tempdir().unwrap();
    std::fs::write(served.path().join("hello.sh"), "echo fetched > proof\necho hello from the download\n").unwrap();
    let log = served.path().join("requests.log");
    let start = format!(
        "python3 -m http.server {PORT} --bind 127.0.0.1 --directory {} > {} 2>&1 &",
        served.path().display(),
        log.display()
    );
    assert!(r.exec("h1", &["sh", "-c", &start]).status.success());
    let url = format!("http://127.0.0.1:{PORT}/hello.sh");
    wait_for("the file server on h1's loopback", Duration::from_secs(30), || fetches(&r, "h1", &url).then_some(()));
    assert!(!fetches(&r, "server", &url), "the server's namespace cannot reach h1's loopback");
    let before = std::fs::read_to_string(&log).unwrap().lines().filter(|l| l.contains("GET /hello.sh")).count();

    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../images/sample-process");
    r.json(&["group", "create", "-n", "rg", "-l", "local"]);
    r.json(&["image", "import", "--urn", "Herd:Sample:1:1.0.0", "--dir", sample.to_str().unwrap()]);
    r.json(&[
        "vmss",
        "create",
        "-g",
        "rg",
        "-n",
        "web",
        "--image",
        "Herd:Sample:1:1.0.0",
        "--instance-count",
        "1",
        "--vm-sku",
        "Standard_B1s",
        "--zones",
        "1",
        "--disable-overprovision",
    ]);
    let first = r.json(&["vmss", "list-instances", "-g", "rg", "-n", "web"])[0].clone();
    assert_eq!(first["host"], "h1", "{first}");
    let id = first["instanceId"].as_str().map_or_else(|| first["instanceId"].to_string(), str::to_string);

    // A query string (a SAS-like token) on the URI: used for the download, shown nowhere.
    set_script(
        &r,
        &serde_json::json!({"fileUris": [format!("{url}?sig=SEKRIT-ok")], "commandToExecute": "sh hello.sh"}),
    );
    let i = extension_done(&r, "Succeeded");
    let status = &i["extensions"][0];
    let message = status["message"].as_str().unwrap();
    assert_eq!(status["state"], "Succeeded", "{i}");
    assert!(message.contains("hello from the download"), "{message}");
    let ext_dir = r.member_dir("h1").join("instances/rg/web").join(&id).join("work/.herd/extensions/CustomScript");
    assert_eq!(std::fs::read_to_string(ext_dir.join("proof")).unwrap(), "fetched\n");
    let requests = std::fs::read_to_string(&log).unwrap();
    let gets: Vec<&str> = requests.lines().filter(|l| l.contains("GET /hello.sh")).collect();
    assert_eq!(gets.len(), before + 1, "one download, from h1's own loopback: {requests}");
    assert!(gets.last().unwrap().starts_with("127.0.0.1 "), "{requests}");

    // An address the rules refuse (loopback other than the allowed 127.0.0.1): the extension
    // fails, naming the URI without its query string, and nothing runs.
    let refused = format!("http://127.0.0.2:{PORT}/evil.sh");
    set_script(
        &r,
        &serde_json::json!({"fileUris": [format!("{refused}?sig=SEKRIT-bad")], "commandToExecute": "touch ran-evil"}),
    );
    let i = extension_done(&r, "Failed");
    let status = &i["extensions"][0];
    let message = status["message"].as_str().unwrap();
    assert_eq!(status["state"], "Failed", "{i}");
    assert!(
        message.contains(&format!("downloading {refused} failed: 127.0.0.2 is a loopback"))
            && message.contains("[extensions] allow_fetch_from"),
        "{message}"
    );
    assert!(i["lastError"].as_str().is_some_and(|e| e.contains("extension CustomScript failed")), "{i}");
    assert!(!ext_dir.join("ran-evil").exists() && !ext_dir.join("evil.sh").exists(), "nothing ran");
    let requests = std::fs::read_to_string(&log).unwrap();
    assert!(!requests.contains("evil.sh"), "{requests}");

    // The token is nowhere: not in the API's view of the instance, not in any member's log.
    let shown = r.json(&["vmss", "list-instances", "-g", "rg", "-n", "web"]).to_string();
    assert!(!shown.contains("SEKRIT"), "{shown}");
    let activity = r.json(&["monitor", "activity-log", "list", "-g", "rg"]).to_string();
    assert!(!activity.contains("SEKRIT"), "{activity}");
    assert!(!logs(&r).contains("SEKRIT"), "a log holds the URI's token");
    r.down();
}
