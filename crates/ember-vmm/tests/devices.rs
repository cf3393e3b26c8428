//! Block, net and rng devices in the real binary on real KVM: configured through the API
//! (two raw drives, one read-only; a network interface on a TAP; the entropy device), booted
//! with the probe guest, shown by `GET /vm/config` and `GET /ember/devices`, snapshotted and
//! restored in a new process with `network_overrides` moving the interface to a second TAP.
//! Bad configurations get a 400 naming the problem and the VMM keeps serving.
//!
//! The probe guest does not drive these devices (their queue-level behaviour is tested beside
//! the code); here the point is attachment, configuration, snapshot state and the TAP swap,
//! checked through the VMM's own report and its open descriptors in `/proc/<pid>/fdinfo`.
//!
//! Runs inside a network namespace the test creates (and deletes), so the TAPs never touch
//! the host's network; the VMM processes inherit it from the test thread.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::{Value, json};

fn run(cmd: &[&str]) {
    let out = Command::new(cmd[0]).args(&cmd[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace the calling thread lives in until the value is dropped.
struct NetNs(String);

impl NetNs {
    fn enter() -> NetNs {
        let name = format!("embit-{}", std::process::id());
        run(&["ip", "netns", "add", &name]);
        let ns = NetNs(name);
        let f = std::fs::File::open(format!("/run/netns/{}", ns.0)).unwrap();
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        ns
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// The TAP interface names the VMM `pid` has attached, from `/proc/<pid>/fdinfo`.
fn attached_taps(pid: u32) -> Vec<String> {
    let mut taps = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fdinfo")).unwrap() {
        let Ok(info) = std::fs::read_to_string(e.unwrap().path()) else {
            continue;
        };
        for line in info.lines() {
            if let Some(name) = line.strip_prefix("iff:") {
                taps.push(name.trim().to_string());
            }
        }
    }
    taps
}

/// The files the VMM `pid` has open.
fn open_files(pid: u32) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .collect()
}

fn devices(c: &mut ApiClient) -> Vec<Value> {
    let r = c.get("/ember/devices");
    assert_eq!(r.status, 200, "{r:?}");
    serde_json::from_str::<Value>(&r.body)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn device<'a>(devs: &'a [Value], id: &str) -> &'a Value {
    devs.iter()
        .find(|d| d["id"] == id)
        .unwrap_or_else(|| panic!("no device {id} in {devs:?}"))
}

fn assert_400(r: &HttpResponse, needles: &[&str]) {
    assert_eq!(r.status, 400, "{r:?}");
    let msg = r.fault_message().unwrap();
    for n in needles {
        assert!(
            msg.contains(n),
            "fault_message {msg:?} does not mention {n:?}"
        );
    }
}

fn configure_devices(c: &mut ApiClient, root: &Path, data: &Path) {
    let rootfs = json!({
        "drive_id": "rootfs", "path_on_host": root, "is_root_device": true,
        "cache_type": "Writeback",
        "rate_limiter": {
            "bandwidth": {"size": 1048576, "refill_time": 100},
            "ops": {"size": 100, "one_time_burst": 50, "refill_time": 1000}
        }
    });
    let datafs = json!({
        "drive_id": "data", "path_on_host": data, "is_root_device": false, "is_read_only": true
    });
    let eth0 = json!({
        "iface_id": "eth0", "host_dev_name": "embtap0", "guest_mac": "06:00:ac:10:00:02",
        "tx_rate_limiter": {"bandwidth": {"size": 65536, "one_time_burst": 4096, "refill_time": 10}}
    });
    let entropy = json!({"rate_limiter": {"bandwidth": {"size": 1024, "refill_time": 100}}});
    for (path, body) in [
        ("/drives/rootfs", rootfs),
        ("/drives/data", datafs),
        ("/network-interfaces/eth0", eth0),
        ("/entropy", entropy),
    ] {
        let r = c.put(path, &body.to_string());
        assert_eq!(r.status, 204, "{path}: {r:?}");
    }
}

fn bad_configs_are_refused(c: &mut ApiClient, dir: &Path) {
    let missing = dir.join("missing.img");
    let cases = [
        (
            "/drives/scratch",
            json!({"drive_id": "scratch", "path_on_host": missing, "is_root_device": false}),
            vec!["path_on_host", "missing.img", "no such file"],
        ),
        (
            "/network-interfaces/eth0",
            json!({"iface_id": "eth0", "host_dev_name": "embnosuch0"}),
            vec!["host_dev_name", "no network interface named \"embnosuch0\""],
        ),
        (
            "/network-interfaces/eth0",
            json!({"iface_id": "eth0", "host_dev_name": "embtap0",
                   "rx_rate_limiter": {"bandwidth": {"size": 1000}}}),
            vec!["rx_rate_limiter.bandwidth", "refill_time"],
        ),
        (
            "/entropy",
            json!({"rate_limiter": {"ops": {"size": 5, "refill_time": 99_999_999_999_999_999u64}}}),
            vec!["entropy.rate_limiter.ops.refill_time", "too large"],
        ),
        (
            "/drives/scratch",
            json!({"drive_id": "scratch", "path_on_host": dir.join("root.img"),
                   "is_root_device": false, "rate_limiter": {"bandwidth": {"size": 1, "refill_time": 1, "burst": 3}}}),
            vec!["rate_limiter.bandwidth", "unknown field `burst`"],
        ),
    ];
    for (path, body, needles) in cases {
        assert_400(&c.put(path, &body.to_string()), &needles);
        assert_eq!(c.get("/").status, 200, "still serving after {path}");
    }
    let cfg: Value = serde_json::from_str(&c.get("/vm/config").body).unwrap();
    assert_eq!(
        cfg["drives"],
        json!([]),
        "nothing stored from refused requests"
    );
    assert_eq!(cfg["network-interfaces"], json!([]));
}

#[test]
fn drives_net_and_rng_boot_snapshot_and_restore_onto_another_tap() {
    std::thread::spawn(|| {
        let _ns = NetNs::enter();
        run(&["ip", "tuntap", "add", "dev", "embtap0", "mode", "tap"]);
        run(&["ip", "tuntap", "add", "dev", "embtap1", "mode", "tap"]);
        scenario();
    })
    .join()
    .unwrap();
}

fn scenario() {
    let dir = tempdir();
    let root = dir.path().join("root.img");
    let data = dir.path().join("data.img");
    std::fs::write(&root, vec![0u8; 1 << 20]).unwrap();
    std::fs::write(&data, vec![7u8; 64 << 10]).unwrap();

    let src = spawn(dir.path(), "src", &[]);
    let mut c = src.client();
    bad_configs_are_refused(&mut c, dir.path());
    configure_devices(&mut c, &root, &data);
    boot_via_api(&mut c, 1, 64, "ember.report=5");
    wait_banner(&src);
    wait_count_above(&src, 0, 0);

    // The configuration as stored.
    let cfg: Value = serde_json::from_str(&c.get("/vm/config").body).unwrap();
    assert_eq!(cfg["drives"].as_array().unwrap().len(), 2);
    assert_eq!(cfg["drives"][1]["is_read_only"], true);
    assert_eq!(cfg["network-interfaces"][0]["host_dev_name"], "embtap0");
    assert_eq!(
        cfg["entropy"]["rate_limiter"]["bandwidth"]["size"],
        json!(1024)
    );

    // The devices as attached.
    let before = devices(&mut c);
    let types: Vec<(String, u64)> = before
        .iter()
        .map(|d| {
            (
                d["id"].as_str().unwrap().to_string(),
                d["device_type"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        types,
        vec![
            ("rootfs".into(), 2),
            ("data".into(), 2),
            ("eth0".into(), 1),
            ("rng".into(), 4)
        ]
    );
    let mut gsis: Vec<u64> = before.iter().map(|d| d["gsi"].as_u64().unwrap()).collect();
    gsis.dedup();
    assert_eq!(gsis.len(), 4, "one interrupt line each");
    assert_eq!(device(&before, "data")["backend"]["is_read_only"], true);
    assert_eq!(device(&before, "data")["backend"]["capacity_sectors"], 128);
    assert_eq!(
        device(&before, "rootfs")["backend"]["capacity_sectors"],
        2048
    );
    let eth0 = &device(&before, "eth0")["backend"];
    assert_eq!(eth0["host_dev_name"], "embtap0");
    assert_eq!(eth0["guest_mac"], "06:00:ac:10:00:02");
    assert_eq!(
        eth0["tx_rate_limiter"]["bandwidth"]["one_time_burst_left"],
        4096
    );
    assert_eq!(attached_taps(src.pid()), vec!["embtap0".to_string()]);
    let files = open_files(src.pid());
    assert!(files.contains(&root) && files.contains(&data), "{files:?}");

    pause(&mut c);
    let (snap, mem) = snapshot_paths(dir.path(), "devices");
    let r = create_snapshot(&mut c, &snap, &mem);
    assert_eq!(r.status, 204, "{r:?}");

    // While the source still holds embtap0, restoring onto it fails cleanly...
    let dst = spawn(dir.path(), "dst", &[]);
    let mut d = dst.client();
    assert_400(
        &d.put("/snapshot/load", &load_body(&snap, &mem, true)),
        &["eth0", "embtap0", "busy"],
    );
    assert_eq!(d.get("/").status, 200);
    // ...and network_overrides moves the interface to embtap1.
    let mut body: Value = serde_json::from_str(&load_body(&snap, &mem, true)).unwrap();
    body["network_overrides"] = json!([{"iface_id": "eth0", "host_dev_name": "embtap1"}]);
    let r = d.put("/snapshot/load", &body.to_string());
    assert_eq!(r.status, 204, "{r:?}\n{}", dst.stderr_text());
    let saved = ember_probe_image::counter_from_mem_file(&mem).unwrap();
    assert!(
        wait_count_above(&dst, saved, 0) > saved,
        "the restored guest runs"
    );

    assert_eq!(attached_taps(dst.pid()), vec!["embtap1".to_string()]);
    let files = open_files(dst.pid());
    assert!(files.contains(&root) && files.contains(&data), "{files:?}");
    let after = devices(&mut d);
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(
            (&b["id"], &b["device_type"], &b["mmio_base"], &b["gsi"]),
            (&a["id"], &a["device_type"], &a["mmio_base"], &a["gsi"]),
            "same placement after restore"
        );
        if b["id"] != "eth0" {
            assert_eq!(b["backend"], a["backend"], "device state round-trips");
        }
    }
    let eth0_after = &device(&after, "eth0")["backend"];
    assert_eq!(eth0_after["host_dev_name"], "embtap1");
    assert_eq!(eth0_after["guest_mac"], eth0["guest_mac"]);
    assert_eq!(eth0_after["tx_rate_limiter"], eth0["tx_rate_limiter"]);
    let cfg: Value = serde_json::from_str(&d.get("/vm/config").body).unwrap();
    assert_eq!(cfg["network-interfaces"][0]["host_dev_name"], "embtap1");
    assert_eq!(cfg["drives"].as_array().unwrap().len(), 2);
    assert!(cfg["entropy"].is_object());
}
