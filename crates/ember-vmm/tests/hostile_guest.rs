//! A hostile guest against the real binary on real KVM: the probe guest's vsock rings are
//! corrupted the way a guest could corrupt them itself (an available index the queue cannot
//! hold: the case, which once made the device thread spin and log forever while
//! pause answered and `snapshot/create` and `GET /` hung behind it), and the VMM must end
//! with the device marked broken, the process idle, its log bounded and the API answering.
//!
//! The probe cannot be told to corrupt its own rings, so the test does it for the guest:
//! - in a snapshot's memory file (the guest's RAM at rest): the TX available index, found
//!   through `GET /ember/devices`, then the snapshot is loaded in a fresh process;
//! - in a running VM's memory through `/proc/<pid>/mem` (root only): the RX available index,
//!   then a host connection gives the device something to deliver.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]

mod common;

use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const BOOT_ARGS: &str = "ember.hz=0 ember.report=0";

fn devices(c: &mut ApiClient) -> Vec<Value> {
    let r = c.get("/ember/devices");
    assert_eq!(r.status, 200, "{r:?}");
    serde_json::from_str::<Value>(&r.body)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn vsock_of(c: &mut ApiClient) -> Value {
    devices(c)
        .into_iter()
        .find(|d| d["id"] == "vsock")
        .expect("a vsock device")
}

/// Waits until the vsock device reports itself broken; returns its description.
fn wait_broken(c: &mut ApiClient) -> Value {
    wait_for(DEFAULT_TIMEOUT, "the vsock device to break", || {
        let v = vsock_of(c);
        (v["broken"] == true).then_some(v)
    })
}

/// Waits until the line saying the device broke reached the captured log.
fn wait_logged(vmm: &VmmProcess) {
    wait_for(
        DEFAULT_TIMEOUT,
        "the log line about the broken device",
        || vmm.stderr_text().contains("device broken").then_some(()),
    );
}

/// CPU time (user + system, in clock ticks) of the VMM's device thread and of the whole
/// process.
fn cpu_ticks(pid: u32) -> (u64, u64) {
    let ticks = |stat: &str| -> u64 {
        // Fields after the parenthesised name: state is field 3, utime 14, stime 15.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    };
    let mut device_thread = None;
    for e in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = e.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() == "virtio" {
            device_thread = Some(ticks(&std::fs::read_to_string(dir.join("stat")).unwrap()));
        }
    }
    let process = ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap());
    (device_thread.expect("the virtio device thread"), process)
}

/// Asserts the VMM stays idle for a second: its device thread burns (almost) no CPU, the
/// whole process little, and nothing more is logged.
fn assert_idle(vmm: &VmmProcess) {
    let log_before = vmm.stderr_text().len();
    let (dev0, proc0) = cpu_ticks(vmm.pid());
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let (dev1, proc1) = cpu_ticks(vmm.pid());
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "over {secs:.2} s: device thread {} ticks, process {} ticks",
        dev1 - dev0,
        proc1 - proc0
    );
    assert!(
        dev1 - dev0 <= 3,
        "the device thread is busy: {} ticks in {secs:.2} s",
        dev1 - dev0
    );
    assert!(
        proc1 - proc0 <= 30,
        "the VMM is busy: {} ticks in {secs:.2} s",
        proc1 - proc0
    );
    assert_eq!(vmm.stderr_text().len(), log_before, "the log keeps growing");
}

/// The log is bounded: one line says the device broke, and the whole log is small.
fn assert_log_bounded(vmm: &VmmProcess) {
    let log = vmm.stderr_text();
    eprintln!("VMM log ({} bytes):\n{log}", log.len());
    assert!(log.len() < 4096, "{} bytes of log", log.len());
    assert_eq!(
        log.lines().filter(|l| l.contains("device broken")).count(),
        1,
        "{log}"
    );
    assert!(!log.contains("Iterator error"), "{log}");
}

/// The API answers, and so does a snapshot of the broken VM (what once hung).
fn assert_api_answers(
    c: &mut ApiClient,
    dir: &Path,
    name: &str,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let r = c.get("/");
    assert_eq!(r.status, 200, "{r:?}");
    pause(c);
    let (snap, mem) = snapshot_paths(dir, name);
    let r = create_snapshot(c, &snap, &mem);
    assert_eq!(r.status, 204, "{r:?}");
    let r = c.get("/");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("Paused"), "{}", r.body);
    resume(c);
    (snap, mem)
}

fn load_body(snap: &Path, mem: &Path, uds: &Path, resume: bool) -> String {
    serde_json::json!({
        "snapshot_path": snap,
        "mem_backend": { "backend_type": "File", "backend_path": mem },
        "resume_vm": resume,
        "vsock_override": { "uds_path": uds },
    })
    .to_string()
}

/// Boots the probe with vsock, waits for its agent, and returns the VMM and the vsock
/// device's description (queues set up by the guest).
fn booted(dir: &Path, name: &str) -> (VmmProcess, Value) {
    let uds = dir.join(format!("{name}.vsock"));
    let vmm = spawn(dir, name, &[]);
    let mut c = vmm.client();
    boot_with_vsock(&mut c, 32, BOOT_ARGS, &uds);
    wait_banner(&vmm);
    agent(&uds).health().unwrap();
    let v = vsock_of(&mut c);
    assert_eq!(v["active"], true, "{v}");
    assert_eq!(v["broken"], false, "{v}");
    for kind in ["ring", "chain", "request", "register", "driver"] {
        assert_eq!(v["guest_errors"][kind], 0, "{kind}: {v}");
    }
    (vmm, v)
}

/// `(avail ring address, size, device's next available index)` of vsock queue `index`.
fn queue(v: &Value, index: usize) -> (u64, u16, u16) {
    let q = &v["queues"][index];
    assert_eq!(q["ready"], true, "{v}");
    (
        q["avail_ring"].as_u64().unwrap(),
        u16::try_from(q["size"].as_u64().unwrap()).unwrap(),
        u16::try_from(q["next_avail"].as_u64().unwrap()).unwrap(),
    )
}

#[test]
fn a_tx_index_the_queue_cannot_hold_breaks_vsock_and_the_vmm_stays_idle_and_answering() {
    let dir = tempdir();
    let d = dir.path();
    let (vmm, _) = booted(d, "src");
    let mut c = vmm.client();
    pause(&mut c);
    let (avail, size, next) = queue(&vsock_of(&mut c), 1);
    let (snap, mem) = snapshot_paths(d, "good");
    let r = create_snapshot(&mut c, &snap, &mem);
    assert_eq!(r.status, 204, "{r:?}");
    drop(vmm);

    // The guest's TX avail.idx, at rest: `size + 8` entries ahead of the device.
    let bad = next.wrapping_add(size + 8);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&mem)
        .unwrap()
        .write_all_at(&bad.to_le_bytes(), avail + 2)
        .unwrap();

    // Loaded paused: the device meets the index when it is activated, before any vCPU runs.
    let vmm = spawn(d, "hostile", &[]);
    let mut c = vmm.client();
    let r = c.put(
        "/snapshot/load",
        &load_body(&snap, &mem, &d.join("h.vsock"), false),
    );
    assert_eq!(r.status, 204, "{r:?}");
    let v = wait_broken(&mut c);
    let reason = v["broken_reason"].as_str().unwrap();
    assert!(
        reason.starts_with(&format!(
            "ring: TX queue: available index {bad} is {} entries ahead",
            size + 8
        )),
        "{v}"
    );
    assert_eq!(v["guest_errors"]["ring"], 1, "{v}");
    assert_eq!(v["breaks"], 1, "{v}");
    assert_eq!(v["active"], true, "{v}");
    resume(&mut c);

    wait_logged(&vmm);
    assert_idle(&vmm);
    assert_log_bounded(&vmm);
    let (snap2, mem2) = assert_api_answers(&mut c, d, "broken");
    assert_idle(&vmm);
    assert_eq!(vsock_of(&mut c)["broken"], true);

    // The broken state travels with the snapshot: still broken after a restore, idle too.
    let vmm2 = spawn(d, "again", &[]);
    let mut c2 = vmm2.client();
    let r = c2.put(
        "/snapshot/load",
        &load_body(&snap2, &mem2, &d.join("a.vsock"), true),
    );
    assert_eq!(r.status, 204, "{r:?}");
    let v = vsock_of(&mut c2);
    assert_eq!(v["broken"], true, "{v}");
    assert_eq!(
        v["broken_reason"], "the device needed a reset when the snapshot was taken",
        "{v}"
    );
    assert_idle(&vmm2);
    assert!(!vmm2.stderr_text().contains("device broken"));
}

/// The start address in the VMM's address space of the mapping of `file` at offset 0.
fn mapping_of(pid: u32, file: &Path) -> u64 {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let file = file.canonicalize().unwrap();
    for line in maps.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() >= 6 && Path::new(f[5]) == file && u64::from_str_radix(f[2], 16) == Ok(0) {
            let start = f[0].split('-').next().unwrap();
            return u64::from_str_radix(start, 16).unwrap();
        }
    }
    panic!("{} is not mapped at offset 0:\n{maps}", file.display());
}

#[test]
fn an_rx_index_written_while_running_breaks_vsock_and_the_vmm_stays_idle_and_answering() {
    let dir = tempdir();
    let d = dir.path();
    let (vmm, _) = booted(d, "src");
    let mut c = vmm.client();
    pause(&mut c);
    let (snap, mem) = snapshot_paths(d, "good");
    let r = create_snapshot(&mut c, &snap, &mem);
    assert_eq!(r.status, 204, "{r:?}");
    drop(vmm);

    // A restored VM: its RAM is the memory file mapped privately, so its address is known.
    let uds = d.join("live.vsock");
    let vmm = spawn(d, "live", &[]);
    let mut c = vmm.client();
    let r = c.put("/snapshot/load", &load_body(&snap, &mem, &uds, true));
    assert_eq!(r.status, 204, "{r:?}");
    agent(&uds).health().unwrap();

    // While the guest is paused (so it cannot rewrite it when it refills its buffers), its RX
    // avail.idx becomes `size + 3` entries ahead.
    pause(&mut c);
    let (avail, size, next) = queue(&vsock_of(&mut c), 0);
    let base = mapping_of(vmm.pid(), &mem);
    let bad = next.wrapping_add(size + 3);
    let mut m = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/{}/mem", vmm.pid()))
        .unwrap();
    m.seek(SeekFrom::Start(base + avail + 2)).unwrap();
    m.write_all(&bad.to_le_bytes()).unwrap();
    drop(m);

    // A host connection gives the device (whose thread runs while the vCPUs are paused) a
    // packet for the guest: it meets the index.
    let mut s = std::os::unix::net::UnixStream::connect(&uds).unwrap();
    s.write_all(b"CONNECT 52\n").unwrap();
    let v = wait_broken(&mut c);
    resume(&mut c);
    wait_logged(&vmm);
    assert!(
        v["broken_reason"]
            .as_str()
            .unwrap()
            .starts_with(&format!("ring: RX queue: available index {bad}")),
        "{v}"
    );
    assert_idle(&vmm);
    assert_log_bounded(&vmm);
    assert_api_answers(&mut c, d, "broken");
    assert_idle(&vmm);
}
