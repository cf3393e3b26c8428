//! `--parent-pid`: a VMM whose owner is already gone refuses to start, and one whose owner
//! dies is killed with it (its parent-death signal).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn refuses_to_start_when_the_named_parent_is_not_its_parent() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(common::vmm_bin())
        .arg("--api-sock")
        .arg(dir.path().join("api.sock"))
        .args(["--parent-pid", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("parent process 1 is gone"), "{stderr}");
    assert!(
        !dir.path().join("api.sock").exists(),
        "it never started serving"
    );
}

#[test]
fn dies_with_its_parent() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let pidfile = dir.path().join("vmm.pid");
    // A shell parent starts the VMM naming itself, records the VMM's pid, then becomes a
    // `sleep` (same pid) waiting to be killed; nothing inherits the test's output.
    let script = format!(
        "{} --api-sock {} --parent-pid $$ >/dev/null 2>&1 & echo $! > {}; exec sleep 600",
        common::vmm_bin().display(),
        sock.display(),
        pidfile.display()
    );
    let mut parent = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let vmm: i32 = ember_test_support::wait_for(Duration::from_secs(20), "the VMM's pid", || {
        std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse().ok())
    });
    ember_test_support::wait_for(Duration::from_secs(20), "the API socket", || {
        sock.exists().then_some(())
    });
    parent.kill().unwrap();
    parent.wait().unwrap();
    // The VMM is the shell's child, now reparented and killed; reap-free check via /proc.
    ember_test_support::wait_for(Duration::from_secs(20), "the VMM to die", || {
        let stat = std::fs::read_to_string(format!("/proc/{vmm}/stat")).ok();
        match stat {
            None => Some(()),
            Some(s)
                if s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z')) =>
            {
                Some(())
            }
            Some(_) => None,
        }
    });
}
