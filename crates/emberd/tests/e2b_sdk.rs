//! The unmodified `e2b` SDK from PyPI (installed by scripts/setup.sh into target/e2b-venv)
//! against a real emberd's E2B listeners and real probe-guest sandboxes on KVM: create with
//! metadata and envs, info, files in and out byte for byte, listing with a metadata filter, a new
//! time limit, metrics, pause to disk and resume three times with the files intact, kill (and a
//! call on the killed sandbox raising SandboxNotRunningException), an auto-pause at the time
//! limit, a wrong API key, and 16 clients at once. The checks are the script's asserts
//! (`tests/e2b/sdk_probe.py`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{Daemon, probe_template, runtime};

/// The venv's python (ember-test-support's [`e2b_python`](ember_test_support::e2b_python)).
fn python() -> PathBuf {
    ember_test_support::e2b_python()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn the_e2b_sdk_drives_probe_sandboxes() {
    let python = python();
    let (api, envd) = (free_port(), free_port());
    let mut d = Daemon::new();
    let keys = d.dir.path().join("e2b-keys");
    std::fs::write(&keys, "# test key\ntest-key-0123456789abcdef\n").unwrap();
    d.extra = vec![
        "--e2b-api".into(),
        format!("127.0.0.1:{api}"),
        "--e2b-api-key-file".into(),
        keys.display().to_string(),
        "--e2b-envd".into(),
        format!("127.0.0.1:{envd}"),
    ];
    d.start();
    runtime().block_on(async {
        d.client()
            .build_template(&probe_template("probe"))
            .await
            .unwrap();
    });
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/e2b/sdk_probe.py");
    let out = Command::new(&python)
        .arg(&script)
        .env("E2B_API_URL", format!("http://127.0.0.1:{api}"))
        .env("E2B_SANDBOX_URL", format!("http://127.0.0.1:{envd}"))
        .env("E2B_API_KEY", "test-key-0123456789abcdef")
        .env("EMBER_TEMPLATE", "probe")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the SDK script failed:\n{stdout}\n{stderr}\n--- emberd log ---\n{}",
        d.log_text()
    );
    for line in [
        "lifecycle ok",
        "auto pause ok",
        "bad key ok",
        "16 concurrent clients ok",
    ] {
        assert!(stdout.contains(line), "{line:?} missing from:\n{stdout}");
    }
    // Everything the script made is gone: no sandbox VM, no saved snapshot.
    let store = d.store();
    assert!(
        store
            .list::<ember_core::VmRecord>()
            .unwrap()
            .iter()
            .all(|v| v.record.owner != ember_core::VmOwner::Sandbox),
        "a sandbox VM is left"
    );
    assert!(
        store
            .list::<ember_core::SnapshotInfo>()
            .unwrap()
            .iter()
            .all(|s| !s.record.snapshot_id.as_str().starts_with("saved-")),
        "a saved snapshot is left"
    );
}
