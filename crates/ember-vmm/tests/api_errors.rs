//! Every bad request gets `400 {"fault_message": ...}` and the VMM keeps serving, on one
//! keep-alive connection; broken snapshots are refused without harming the process, which can
//! still load a good one afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use std::io::Write;

fn assert_400(r: &HttpResponse, needle: &str) {
    assert_eq!(r.status, 400, "{r:?}");
    let msg = r
        .fault_message()
        .unwrap_or_else(|| panic!("no fault_message in {r:?}"));
    assert!(
        msg.contains(needle),
        "fault_message {msg:?} does not mention {needle:?}"
    );
}

fn assert_alive(c: &mut ApiClient) {
    let r = c.get("/");
    assert_eq!(r.status, 200, "{r:?}");
}

#[test]
fn bad_requests_before_boot_on_one_connection() {
    let dir = tempdir();
    let vmm = spawn(dir.path(), "errors", &[]);
    let mut c = vmm.client();
    let cases: Vec<(&str, &str, Option<&str>, &str)> = vec![
        (
            "PUT",
            "/machine-config",
            Some("{not json"),
            "machine-config",
        ),
        (
            "PUT",
            "/machine-config",
            Some(r#"{"vcpu_count": 1}"#),
            "missing field `mem_size_mib`",
        ),
        (
            "PUT",
            "/machine-config",
            Some(r#"{"vcpu_count": 1, "mem_size_mib": 64, "color": 1}"#),
            "unknown field `color`",
        ),
        (
            "PUT",
            "/machine-config",
            Some(r#"{"vcpu_count": "one", "mem_size_mib": 64}"#),
            "vcpu_count",
        ),
        (
            "PUT",
            "/machine-config",
            Some(r#"{"vcpu_count": 0, "mem_size_mib": 64}"#),
            "vcpu_count",
        ),
        (
            "PUT",
            "/machine-config",
            Some(r#"{"vcpu_count": 99, "mem_size_mib": 64}"#),
            "vcpu_count",
        ),
        ("PUT", "/machine-config", None, "missing request body"),
        (
            "PUT",
            "/boot-source",
            Some(r#"{"kernel_image_path": "/nonexistent/vmlinux"}"#),
            "kernel_image_path",
        ),
        (
            "PUT",
            "/boot-source",
            Some(r#"{"boot_args": "x"}"#),
            "missing field `kernel_image_path`",
        ),
        (
            "GET",
            "/no/such/route",
            None,
            "Invalid request method and/or path",
        ),
        ("DELETE", "/vm", None, "Invalid request method and/or path"),
        ("PUT", "/", Some("{}"), "Invalid request method and/or path"),
        (
            "PUT",
            "/actions",
            Some(r#"{"action_type": "Explode"}"#),
            "action_type",
        ),
        (
            "PUT",
            "/actions",
            Some(r#"{"action_type": "InstanceStart"}"#),
            "no boot source",
        ),
        (
            "PUT",
            "/actions",
            Some(r#"{"action_type": "SendCtrlAltDel"}"#),
            "before starting",
        ),
        (
            "PATCH",
            "/vm",
            Some(r#"{"state": "Paused"}"#),
            "before starting",
        ),
        ("PATCH", "/vm", Some(r#"{"state": "Sleeping"}"#), "state"),
        (
            "PUT",
            "/snapshot/create",
            Some(r#"{"snapshot_path": "/tmp/x", "mem_file_path": "/tmp/y"}"#),
            "before starting",
        ),
        (
            "PUT",
            "/snapshot/create",
            Some(r#"{"snapshot_path": "/tmp/x"}"#),
            "missing field `mem_file_path`",
        ),
        (
            "PUT",
            "/snapshot/load",
            Some(r#"{"snapshot_path": "/tmp/x"}"#),
            "mem_backend",
        ),
        (
            "PUT",
            "/drives/rootfs",
            Some(r#"{"drive_id": "other", "is_root_device": true, "path_on_host": "/dev/null"}"#),
            "does not match",
        ),
        (
            "PUT",
            "/drives/rootfs",
            Some(
                r#"{"drive_id": "rootfs", "is_root_device": true, "path_on_host": "/nonexistent"}"#,
            ),
            "path_on_host",
        ),
        (
            "PUT",
            "/network-interfaces/eth0",
            Some(r#"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "nope"}"#),
            "guest_mac",
        ),
        (
            "PUT",
            "/vsock",
            Some(r#"{"guest_cid": 1, "uds_path": "/tmp/v.sock"}"#),
            "guest_cid",
        ),
        (
            "PUT",
            "/vsock",
            Some(r#"{"uds_path": "/tmp/v.sock"}"#),
            "missing field `guest_cid`",
        ),
    ];
    for (method, path, body, needle) in cases {
        let r = c.request(method, path, body);
        assert_400(&r, needle);
        assert_alive(&mut c);
    }
    // Backing resources are checked when the device is configured.
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 4096]).unwrap();
    let not_a_disk = format!(
        r#"{{"drive_id": "rootfs", "is_root_device": true, "path_on_host": "{}"}}"#,
        dir.path().display()
    );
    assert_400(&c.put("/drives/rootfs", &not_a_disk), "Is a directory");
    assert_400(
        &c.put(
            "/network-interfaces/eth0",
            r#"{"iface_id": "eth0", "host_dev_name": "embnotap0", "guest_mac": "06:00:ac:10:00:02"}"#,
        ),
        "host_dev_name: no network interface named \"embnotap0\"",
    );
    assert_400(
        &c.put("/entropy", r#"{"rate_limiter": {"ops": {"size": 1}}}"#),
        "entropy.rate_limiter.ops: missing field `refill_time`",
    );
    assert_alive(&mut c);
    // Good devices are accepted (and shown in /vm/config).
    let drive = format!(
        r#"{{"drive_id": "rootfs", "is_root_device": true, "path_on_host": "{}", "is_read_only": true}}"#,
        disk.display()
    );
    assert_eq!(c.put("/drives/rootfs", &drive).status, 204);
    assert_eq!(c.put("/entropy", "{}").status, 204);
    // PUT /vsock creates the device (binds its socket), as Firecracker does.
    let uds = dir.path().join("v.sock");
    assert_eq!(c.put("/vsock", &vsock_json(3, &uds)).status, 204);
    assert!(uds.exists());
    let cfg: serde_json::Value = serde_json::from_str(&c.get("/vm/config").body).unwrap();
    assert_eq!(cfg["drives"][0]["drive_id"], "rootfs");
    assert_eq!(cfg["vsock"]["guest_cid"], 3);
    assert_eq!(cfg["entropy"], serde_json::json!({}));
    // A snapshot cannot be loaded once boot resources are configured.
    let r = c.put(
        "/snapshot/load",
        &load_body(&dir.path().join("s"), &dir.path().join("m"), true),
    );
    assert_400(&r, "not allowed after configuring");
}

/// Kernel images and initrds that cannot boot are refused at InstanceStart with what is wrong;
/// the VMM then boots a good configuration (the probe with an initrd beside it).
#[test]
fn unbootable_kernels_and_initrds_are_named() {
    let dir = tempdir();
    let d = dir.path();
    let vmm = spawn(d, "linux-inputs", &[]);
    let mut c = vmm.client();
    let machine = r#"{"vcpu_count": 1, "mem_size_mib": 32}"#;
    assert_eq!(c.put("/machine-config", machine).status, 204);
    let boot = |kernel: &std::path::Path, initrd: Option<&std::path::Path>| {
        let mut b =
            serde_json::json!({ "kernel_image_path": kernel, "boot_args": "ember.report=0" });
        if let Some(i) = initrd {
            b["initrd_path"] = serde_json::json!(i);
        }
        b.to_string()
    };
    let start = r#"{"action_type": "InstanceStart"}"#;

    let text = d.join("not-a-kernel");
    std::fs::write(&text, b"#!/bin/sh\necho hello\n").unwrap();
    assert_eq!(c.put("/boot-source", &boot(&text, None)).status, 204);
    assert_400(
        &c.put("/actions", start),
        "neither an ELF kernel nor a bzImage",
    );
    assert_alive(&mut c);

    let empty = d.join("empty.initrd");
    std::fs::write(&empty, b"").unwrap();
    assert_400(
        &c.put("/boot-source", &boot(probe(), Some(&empty))),
        "is empty",
    );
    assert_400(
        &c.put(
            "/boot-source",
            &boot(probe(), Some(&d.join("missing.initrd"))),
        ),
        "initrd_path",
    );

    let huge = d.join("huge.initrd");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    assert_eq!(
        c.put("/boot-source", &boot(probe(), Some(&huge))).status,
        204
    );
    assert_400(&c.put("/actions", start), "huge.initrd");

    let small = d.join("small.initrd");
    std::fs::write(&small, vec![0x5a; 10_000]).unwrap();
    assert_eq!(
        c.put("/boot-source", &boot(probe(), Some(&small))).status,
        204
    );
    let r = c.put("/actions", start);
    assert_eq!(r.status, 204, "{r:?}");
    wait_banner(&vmm);
    assert_alive(&mut c);
}

#[test]
fn bad_requests_after_boot() {
    let dir = tempdir();
    let vmm = spawn(dir.path(), "running", &[]);
    let mut c = vmm.client();
    boot_via_api(&mut c, 1, 32, "ember.report=0");
    wait_banner(&vmm);
    let (snap, mem) = snapshot_paths(dir.path(), "x");
    assert_400(&create_snapshot(&mut c, &snap, &mem), "pause it first");
    assert_400(
        &c.put("/actions", r#"{"action_type": "InstanceStart"}"#),
        "after starting",
    );
    assert_400(
        &c.put(
            "/machine-config",
            r#"{"vcpu_count": 1, "mem_size_mib": 64}"#,
        ),
        "after starting",
    );
    assert_400(
        &c.put("/boot-source", &boot_source_json("")),
        "after starting",
    );
    assert_400(
        &c.put("/snapshot/load", &load_body(&snap, &mem, true)),
        "after starting",
    );
    pause(&mut c);
    assert_400(
        &c.put("/actions", r#"{"action_type": "SendCtrlAltDel"}"#),
        "paused",
    );
    let r = c.put(
        "/snapshot/create",
        &serde_json::json!({"snapshot_path": snap, "mem_file_path": mem, "snapshot_type": "Diff"})
            .to_string(),
    );
    assert_400(&r, "Diff");
    let r = c.put(
        "/snapshot/create",
        &serde_json::json!({"snapshot_path": "/nonexistent-dir/s", "mem_file_path": mem})
            .to_string(),
    );
    assert_400(&r, "/nonexistent-dir/s");
    assert_eq!(create_snapshot(&mut c, &snap, &mem).status, 204);
    resume(&mut c);
    assert_alive(&mut c);
}

#[test]
fn broken_snapshots_are_refused_and_the_vmm_stays_usable() {
    let dir = tempdir();
    let d = dir.path();
    let (snap, mem, saved) = make_snapshot(d, "good", "ember.report=5", 0);
    let good = std::fs::read(&snap).unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = d.join(name);
        std::fs::File::create(&p).unwrap().write_all(bytes).unwrap();
        p
    };
    let mut corrupt = good.clone();
    let mid = corrupt.len() / 2;
    corrupt[mid] ^= 0x55;
    let mut wrong_version = good.clone();
    wrong_version[8] = 99;
    let mut wrong_magic = good.clone();
    wrong_magic[..8].copy_from_slice(b"NOTASNAP");
    let corrupt = write("corrupt.snap", &corrupt);
    let truncated = write("truncated.snap", &good[..good.len() - 100]);
    let wrong_version = write("version.snap", &wrong_version);
    let wrong_magic = write("magic.snap", &wrong_magic);
    let empty = write("empty.snap", b"");
    let huge = d.join("huge.snap");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let short_mem = d.join("short.mem");
    std::fs::copy(&mem, &short_mem).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&short_mem)
        .unwrap()
        .set_len(4096)
        .unwrap();

    let vmm = spawn(d, "victim", &[]);
    let mut c = vmm.client();
    let cases = [
        (load_body(&corrupt, &mem, true), "checksum"),
        (load_body(&truncated, &mem, true), "truncated"),
        (
            load_body(&wrong_version, &mem, true),
            "unsupported snapshot format version 99",
        ),
        (load_body(&wrong_magic, &mem, true), "bad magic"),
        (load_body(&empty, &mem, true), "truncated"),
        (
            load_body(&d.join("missing.snap"), &mem, true),
            "missing.snap",
        ),
        (
            load_body(&snap, &d.join("missing.mem"), true),
            "missing.mem",
        ),
        (load_body(&snap, &short_mem, true), "does not match"),
        (
            load_body(&mem, &mem, true),
            "larger than any ember-vmm snapshot",
        ),
        (
            load_body(&huge, &mem, true),
            "larger than any ember-vmm snapshot",
        ),
        (
            {
                let mut b: serde_json::Value =
                    serde_json::from_str(&load_body(&snap, &mem, true)).unwrap();
                b["network_overrides"] =
                    serde_json::json!([{"iface_id": "eth9", "host_dev_name": "tap9"}]);
                b.to_string()
            },
            "no network interface",
        ),
        (
            {
                let mut b: serde_json::Value =
                    serde_json::from_str(&load_body(&snap, &mem, true)).unwrap();
                b["mem_backend"]["backend_type"] = serde_json::json!("Uffd");
                b.to_string()
            },
            "Uffd",
        ),
    ];
    for (body, needle) in &cases {
        assert_400(&c.put("/snapshot/load", body), needle);
        let info: serde_json::Value = serde_json::from_str(&c.get("/").body).unwrap();
        assert_eq!(info["state"], "Not started");
    }
    // Still usable: the good snapshot loads and runs.
    let r = c.put("/snapshot/load", &load_body(&snap, &mem, true));
    assert_eq!(r.status, 204, "{r:?}");
    assert!(wait_count_above(&vmm, saved, 0) > saved);
}

#[test]
fn malformed_http_gets_400_and_keep_alive_works() {
    let dir = tempdir();
    let vmm = spawn(dir.path(), "http", &[]);
    let mut c = vmm.client();
    // Several requests, pipelined in one write, on one connection.
    c.send_raw(b"GET / HTTP/1.1\r\n\r\n");
    let r = c.send_raw(b"GET /machine-config HTTP/1.1\r\n\r\nGET /version HTTP/1.1\r\n\r\n");
    assert_eq!(r.status, 200);
    let r2 = c.read_response();
    assert!(r2.body.contains("firecracker_version"), "{r2:?}");
    // Expect: 100-continue is honoured.
    let body = r#"{"vcpu_count": 1, "mem_size_mib": 32}"#;
    let r = c.send_raw(
        format!("PUT /machine-config HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n{body}", body.len()).as_bytes(),
    );
    assert_eq!(r.status, 204, "{r:?}");
    // Garbage gets a 400 (and that connection is closed); a new connection works.
    let mut bad = vmm.client();
    let r = bad.send_raw(b"\x01\x02 nonsense\r\n\r\n");
    assert_400(&r, "malformed");
    let r = vmm
        .client()
        .send_raw(b"PUT /vm HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert_400(&r, "Transfer-Encoding");
    assert_alive(&mut c);
    assert_alive(&mut vmm.client());
}
