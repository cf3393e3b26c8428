//! The committed OpenAPI document (`crates/emberd/openapi.json`) is the one the code generates,
//! and the one the daemon serves at `/openapi.json`. When the API changes, regenerate it:
//! `cargo run -p emberd -- --print-openapi > crates/emberd/openapi.json`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

#[test]
fn the_committed_document_is_the_generated_one() {
    let committed = include_str!("../openapi.json");
    let generated = emberd::api::openapi_json();
    assert!(
        committed == generated,
        "crates/emberd/openapi.json is stale: regenerate it with \
         `cargo run -p emberd -- --print-openapi > crates/emberd/openapi.json`"
    );
    let doc: serde_json::Value = serde_json::from_str(committed).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/v1/templates",
        "/v1/pools/{template}",
        "/v1/sandboxes",
        "/v1/sandboxes/{id}/exec",
        "/v1/sandboxes/{id}/files",
        "/v1/vms/{id}/snapshot",
        "/v1/info",
        "/metrics",
        "/healthz",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} is documented");
    }
    // Every operation documents its error shape.
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            assert!(
                !op["responses"].as_object().unwrap().is_empty(),
                "{method} {path} has responses"
            );
        }
    }
}

#[test]
fn the_daemon_serves_it() {
    let d = common::Daemon::started();
    let mut api =
        ember_test_support::ApiClient::connect(&d.socket(), std::time::Duration::from_secs(10));
    let r = api.request("GET", "/openapi.json", None);
    assert_eq!(r.status, 200);
    let served: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let committed: serde_json::Value =
        serde_json::from_str(include_str!("../openapi.json")).unwrap();
    assert_eq!(served, committed);
}

/// The systemd unit in `deploy/` starts emberd with flags it accepts, keeps the VMMs alive
/// across a restart (KillMode=process) and keeps the runtime directory.
#[test]
fn the_systemd_unit_runs_emberd_with_flags_it_accepts() {
    let unit = include_str!("../../../deploy/emberd.service");
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("an ExecStart line");
    let mut words = exec.split_whitespace();
    assert_eq!(words.next(), Some("/usr/local/bin/emberd"));
    let args: Vec<&str> = words.collect();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_emberd"))
        .args(&args)
        .arg("--print-openapi")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "emberd refuses the unit's flags: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "KillMode=process",
        "RuntimeDirectoryPreserve=yes",
        "KillSignal=SIGTERM",
    ] {
        assert!(unit.lines().any(|l| l == line), "the unit sets {line}");
    }
}
