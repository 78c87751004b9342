//! Generated references must match what is committed: the OpenAPI document and the CLI
//! reference. Regenerate with `herd gen openapi > docs/openapi.json` and
//! `herd gen cli-docs > docs/cli.md`.

mod common;

fn generated(what: &str) -> String {
    let out = std::process::Command::new(common::HERD)
        .args(["gen", what])
        .env_remove("HERD_SERVER")
        .env_remove("HERD_DATA_DIR")
        .env_remove("HERD_TOKEN")
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

fn committed(file: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../docs").join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn openapi_document_is_current() {
    assert!(
        generated("openapi") == committed("openapi.json"),
        "docs/openapi.json is stale: run `herd gen openapi > docs/openapi.json`"
    );
}

#[test]
fn cli_reference_is_current() {
    assert!(
        generated("cli-docs") == committed("cli.md"),
        "docs/cli.md is stale: run `herd gen cli-docs > docs/cli.md`"
    );
}
