//! Booting the probe guest on real KVM: through a config file and through the API, with one
//! or several vCPUs; Ctrl+Alt+Del and guest reset end the VMM with exit code 0.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;

#[test]
fn boots_from_config_file_and_counts() {
    let dir = tempdir();
    let cfg = dir.path().join("vm.json");
    let json = serde_json::json!({
        "boot-source": { "kernel_image_path": probe(), "boot_args": "console=ttyS0 ember.report=10" },
        "machine-config": { "vcpu_count": 1, "mem_size_mib": 32 }
    });
    std::fs::write(&cfg, json.to_string()).unwrap();
    let vmm = spawn(
        dir.path(),
        "cfg",
        &["--config-file", cfg.to_str().unwrap(), "--id", "probe-1"],
    );
    let banner = wait_banner(&vmm);
    assert_eq!(banner.counter_gpa, ember_probe_image::COUNTER_GPA);
    let c1 = wait_count_above(&vmm, 0, 0);
    wait_count_above(&vmm, c1, 0);
    let mut client = vmm.client();
    let info: serde_json::Value = serde_json::from_str(&client.get("/").body).unwrap();
    assert_eq!(info["id"], "probe-1");
    assert_eq!(info["state"], "Running");
    let cfg_back: serde_json::Value = serde_json::from_str(&client.get("/vm/config").body).unwrap();
    assert_eq!(cfg_back["machine-config"]["mem_size_mib"], 32);
}

#[test]
fn boots_via_api_with_two_vcpus_and_serial_file() {
    let dir = tempdir();
    let serial = dir.path().join("console.log");
    let vmm = spawn(
        dir.path(),
        "api",
        &["--serial-out", serial.to_str().unwrap()],
    );
    let mut client = vmm.client();
    let info: serde_json::Value = serde_json::from_str(&client.get("/").body).unwrap();
    assert_eq!(info["state"], "Not started");
    boot_via_api(&mut client, 2, 64, "ember.report=10");
    let text = wait_for(
        DEFAULT_TIMEOUT,
        "banner and a count line in the serial file",
        || {
            let t = std::fs::read_to_string(&serial).ok()?;
            (t.lines()
                .any(|l| ember_probe_image::parse_banner(l).is_some())
                && t.lines()
                    .any(|l| ember_probe_image::parse_count_line(l).is_some()))
            .then_some(t)
        },
    );
    assert!(text.contains("ticking hz=100 report=10"), "{text}");
    let mc: serde_json::Value = serde_json::from_str(&client.get("/machine-config").body).unwrap();
    assert_eq!(mc["vcpu_count"], 2);
}

#[test]
fn ctrl_alt_del_resets_the_guest_and_the_vmm_exits_cleanly() {
    let dir = tempdir();
    let mut vmm = spawn(dir.path(), "cad", &[]);
    let mut client = vmm.client();
    boot_via_api(&mut client, 1, 32, "ember.report=0");
    wait_banner(&vmm);
    vmm.wait_for_line(DEFAULT_TIMEOUT, "the ticking line", 0, |l| {
        l.contains("ticking")
    });
    let r = client.put("/actions", r#"{"action_type": "SendCtrlAltDel"}"#);
    assert_eq!(r.status, 204, "{r:?}");
    let status = vmm.wait_exit(DEFAULT_TIMEOUT);
    assert_eq!(status.code(), Some(0), "stderr: {}", vmm.stderr_text());
    assert!(vmm.stdout_text().contains("ctrl-alt-del, resetting"));
    assert!(
        !vmm.api_sock().exists(),
        "the API socket is removed on exit"
    );
}

#[test]
fn console_input_reaches_the_guest_through_the_serial_interrupt() {
    let dir = tempdir();
    let mut vmm = spawn_with_stdin(dir.path(), "stdin", &[]);
    let mut client = vmm.client();
    boot_via_api(&mut client, 1, 32, "ember.report=0");
    vmm.wait_for_line(DEFAULT_TIMEOUT, "the ticking line", 0, |l| {
        l.contains("ticking")
    });
    vmm.write_stdin(b"hello\n");
    let line = vmm.wait_for_line(DEFAULT_TIMEOUT, "the echo of the input", 0, |l| {
        l.starts_with("ember-probe: rx=")
    });
    assert!(line.starts_with("ember-probe: rx=hello"), "{line}");
}
