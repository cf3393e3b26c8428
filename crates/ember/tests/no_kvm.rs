//! Without a usable /dev/kvm, every command says so in one line and exits non-zero. The test
//! hides /dev/kvm in a private mount namespace (needs root and `unshare`, as CI has).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn ember_without_kvm(how: &str, args: &str) -> std::process::Output {
    let ember = env!("CARGO_BIN_EXE_ember");
    Command::new("unshare")
        .args(["-m", "sh", "-c"])
        .arg(format!("{how} && exec {ember} {args}"))
        .output()
        .expect("running unshare (util-linux)")
}

fn assert_one_clear_line(out: &std::process::Output) {
    assert!(!out.status.success(), "must fail: {out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one line, got: {stderr}");
    assert!(lines[0].starts_with("error: /dev/kvm"), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing on stdout");
}

#[test]
fn missing_dev_kvm_is_one_clear_error_line() {
    let out = ember_without_kvm("mount -t tmpfs none /dev", "demo");
    assert_one_clear_line(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not usable"));
}

#[test]
fn a_dev_kvm_that_is_not_kvm_is_one_clear_error_line() {
    let out = ember_without_kvm("mount --bind /dev/null /dev/kvm", "bench restore --json");
    assert_one_clear_line(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a KVM device"));
}
