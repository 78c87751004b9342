//! `herd … -h` as a new user reads it: a command's own options first, the options every client
//! command takes under their own heading after them, and none of those on `herd server`, which
//! talks to no server.

mod common;

fn help(args: &[&str]) -> String {
    let out = std::process::Command::new(common::HERD)
        .args(args)
        .env_remove("HERD_SERVER")
        .env_remove("HERD_DATA_DIR")
        .env_remove("HERD_TOKEN")
        .output()
        .unwrap();
    assert!(out.status.success(), "herd {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn pos(text: &str, needle: &str) -> usize {
    text.find(needle).unwrap_or_else(|| panic!("'{needle}' is not in the help:\n{text}"))
}

#[test]
fn vmss_create_lists_its_own_options_before_the_global_ones() {
    for flag in ["-h", "--help"] {
        let text = help(&["vmss", "create", flag]);
        let global = pos(&text, "Global options:");
        for own in ["--resource-group", "--image", "--instance-count", "--vm-sku", "--upgrade-policy-mode"] {
            assert!(pos(&text, own) < global, "{own} should come before the global options:\n{text}");
        }
        for g in ["--server", "--token ", "--token-dir", "--output", "--query", "--timeout", "--no-wait", "--quiet"] {
            assert!(pos(&text, g) > global, "{g} should be under 'Global options':\n{text}");
        }
        // Exactly one list of global options, after the command's.
        assert_eq!(text.matches("Global options:").count(), 1, "{text}");
        assert!(pos(&text, "Options:") < global, "{text}");
    }
}

#[test]
fn server_help_shows_only_server_options() {
    let text = help(&["server", "-h"]);
    for own in ["--data-dir", "--listen", "--driver", "--config", "--accel"] {
        pos(&text, own);
    }
    for client in ["--query", "--no-wait", "--token ", "--token-dir", "--server ", "--output", "--timeout", "--quiet"] {
        assert!(!text.contains(client), "herd server -h shows the client option {client}:\n{text}");
    }
    assert!(!text.contains("Global options"), "{text}");
    // The same in the generated reference.
    let out = std::process::Command::new(common::HERD).args(["gen", "cli-docs"]).output().unwrap();
    let docs = String::from_utf8(out.stdout).unwrap();
    let server = &docs[pos(&docs, "## `herd server`")..];
    let server = &server[..server[3..].find("\n## ").map_or(server.len(), |i| i + 3)];
    assert!(!server.contains("--query") && !server.contains("--no-wait"), "{server}");
}

#[test]
fn server_refuses_client_options_naming_them() {
    let out = std::process::Command::new(common::HERD)
        // A data dir that cannot be created: without the check the server exits at once on it.
        .args(["server", "--no-wait", "--data-dir", "/proc/version/herd-cli-help"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--no-wait") && err.contains("herd server"), "{err}");
}

#[test]
fn client_options_still_work_anywhere_on_client_commands() {
    // Before and after the subcommand, as before the headings changed.
    for args in
        [&["--server", "http://127.0.0.1:1", "group", "list"][..], &["group", "list", "--server", "http://127.0.0.1:1"]]
    {
        let out = std::process::Command::new(common::HERD).args(args).env_remove("HERD_SERVER").output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("cannot reach the herd server at http://127.0.0.1:1"), "{err}");
    }
}
