//! Hostile files and hostile states for `snapshot/load` and `snapshot/create`, on the real
//! binary and real KVM with the probe guest:
//!
//! - paths that are not regular files (`/dev/zero`, `/dev/urandom`, a FIFO, a directory) are
//!   refused at once, naming the field, without the VMM growing;
//! - a create never replaces a device node (or FIFO, directory, symbolic link), writes its
//!   files 0600, removes its temporary files when it fails and those a killed VMM left;
//! - a state file and a memory file from two different snapshots (mixed by hand, or as a VMM
//!   killed between its two renames leaves them) are refused;
//! - states with a valid CRC that do not describe a VM this VMM can run (crafted with the
//!   crate's own codec) are refused naming the section;
//! - a restored guest that dies (triple fault) makes the VMM exit non-zero, saying why.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use ember_vmm::snapshot::MicrovmState;
use ember_vmm::snapshot::files::{MEM_TRAILER_LEN, temp_path};
use serde_json::{Value, json};

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

fn assert_not_started(c: &mut ApiClient) {
    let info: Value = serde_json::from_str(&c.get("/").body).unwrap();
    assert_eq!(info["state"], "Not started");
}

fn rss_kib(pid: u32) -> u64 {
    ember_test_support::smaps_rollup_kib(pid, "Rss:").unwrap()
}

/// Names in `dir` that look like temporary snapshot files.
fn temp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains(".tmp-"))
        .collect()
}

/// Decodes `snap` with the crate's codec, lets `f` change it, writes it (valid CRC, same
/// snapshot id, so it still pairs with the original memory file) to `<dir>/<name>.snap`.
fn craft(dir: &Path, snap: &Path, name: &str, f: impl FnOnce(&mut MicrovmState)) -> PathBuf {
    let mut state = MicrovmState::from_bytes(&std::fs::read(snap).unwrap()).unwrap();
    f(&mut state);
    let out = dir.join(format!("{name}.snap"));
    std::fs::write(&out, state.to_bytes()).unwrap();
    out
}

/// Edits the configuration section as JSON.
fn edit_config(state: &mut MicrovmState, f: impl FnOnce(&mut Value)) {
    let mut cfg: Value = serde_json::from_slice(&state.config_json).unwrap();
    f(&mut cfg);
    state.config_json = serde_json::to_vec(&cfg).unwrap();
}

#[test]
fn load_refuses_paths_that_are_not_regular_files_at_once() {
    let dir = tempdir();
    let d = dir.path();
    let (snap, mem, saved) = make_snapshot(d, "good", "ember.report=5", 0);
    let fifo = d.join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();

    let vmm = spawn(d, "victim", &[]);
    let mut c = vmm.client();
    assert_not_started(&mut c);
    let rss_before = rss_kib(vmm.pid());
    let deprecated = |s: &Path, m: &Path| {
        json!({"snapshot_path": s, "mem_file_path": m, "resume_vm": true}).to_string()
    };
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            load_body(Path::new("/dev/zero"), &mem, true),
            vec!["snapshot_path", "/dev/zero", "character device"],
        ),
        (
            load_body(Path::new("/dev/urandom"), &mem, true),
            vec!["snapshot_path", "/dev/urandom", "character device"],
        ),
        (load_body(&fifo, &mem, true), vec!["snapshot_path", "FIFO"]),
        (load_body(d, &mem, true), vec!["snapshot_path", "directory"]),
        (
            load_body(&snap, Path::new("/dev/zero"), true),
            vec!["mem_backend.backend_path", "character device"],
        ),
        (
            load_body(&snap, &fifo, true),
            vec!["mem_backend.backend_path", "FIFO"],
        ),
        (
            load_body(&snap, d, true),
            vec!["mem_backend.backend_path", "directory"],
        ),
        (
            deprecated(&snap, Path::new("/dev/urandom")),
            vec!["mem_file_path", "character device"],
        ),
    ];
    for (body, needles) in &cases {
        let t0 = Instant::now();
        let r = c.put("/snapshot/load", body);
        let took = t0.elapsed();
        assert_400(&r, needles);
        assert!(took < Duration::from_secs(1), "{body}: took {took:?}");
        assert_not_started(&mut c);
    }
    let rss_after = rss_kib(vmm.pid());
    assert!(
        rss_after < rss_before + 2048,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    // Nothing was harmed: the good pair loads and runs.
    let r = c.put("/snapshot/load", &load_body(&snap, &mem, true));
    assert_eq!(r.status, 204, "{r:?}");
    assert!(wait_count_above(&vmm, saved, 0) > saved);
}

#[test]
fn create_never_replaces_what_is_not_a_regular_file_and_writes_private_files() {
    let dir = tempdir();
    let d = dir.path();
    let vmm = spawn(d, "src", &[]);
    let mut c = vmm.client();
    boot_via_api(&mut c, 1, 64, "ember.report=5");
    wait_banner(&vmm);
    pause(&mut c);

    let node = d.join("node");
    let null = nix::sys::stat::makedev(1, 3);
    nix::sys::stat::mknod(
        &node,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        null,
    )
    .unwrap();
    let fifo = d.join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let subdir = d.join("subdir");
    std::fs::create_dir(&subdir).unwrap();
    let link = d.join("link");
    std::os::unix::fs::symlink(d.join("elsewhere"), &link).unwrap();
    let (snap, mem) = snapshot_paths(d, "s");
    for (s, m, needles) in [
        (&node, &mem, vec!["snapshot_path", "character device"]),
        (&snap, &node, vec!["mem_file_path", "character device"]),
        (&fifo, &mem, vec!["snapshot_path", "FIFO"]),
        (&snap, &subdir, vec!["mem_file_path", "directory"]),
        (&link, &mem, vec!["snapshot_path", "symbolic link"]),
        (&snap, &snap, vec!["mem_file_path", "must differ"]),
    ] {
        assert_400(&create_snapshot(&mut c, s, m), &needles);
    }
    let meta = std::fs::symlink_metadata(&node).unwrap();
    assert!(meta.file_type().is_char_device(), "the node was replaced");
    assert_eq!(meta.rdev(), null);
    assert!(
        std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo()
    );
    assert!(subdir.is_dir());
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(
        !snap.exists() && !mem.exists(),
        "a refused create wrote files"
    );

    // A create that fails half-way (the state file's directory is missing, after the memory
    // file was written) leaves no temporary file.
    let r = create_snapshot(&mut c, &d.join("nodir/s.snap"), &mem);
    assert_400(&r, &["nodir/s.snap"]);
    assert_eq!(temp_files(d), Vec::<String>::new());
    assert!(!mem.exists());

    // Leftovers of a VMM killed while writing (its pid is gone) are removed by the next
    // create aimed at the same files.
    let orphan = d.join("s.mem.tmp-4194304");
    std::fs::write(&orphan, b"half a memory file").unwrap();
    assert_eq!(create_snapshot(&mut c, &snap, &mem).status, 204);
    assert_eq!(temp_files(d), Vec::<String>::new());
    assert!(!temp_path(&mem).exists());
    for p in [&snap, &mem] {
        let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} is {mode:o}", p.display());
    }
    assert_eq!(
        std::fs::metadata(&mem).unwrap().len(),
        (64 << 20) + MEM_TRAILER_LEN
    );
    // Replacing an existing regular file is fine (and the result is still private).
    std::fs::set_permissions(&snap, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(create_snapshot(&mut c, &snap, &mem).status, 204);
    assert_eq!(
        std::fs::metadata(&snap).unwrap().permissions().mode() & 0o777,
        0o600
    );
    resume(&mut c);
}

#[test]
fn state_and_memory_from_different_snapshots_are_refused() {
    let dir = tempdir();
    let d = dir.path();
    let vmm = spawn(d, "src", &[]);
    let mut c = vmm.client();
    boot_via_api(&mut c, 1, 64, "ember.report=5");
    wait_count_above(&vmm, 2, 0);
    pause(&mut c);
    let (snap_a, mem_a) = snapshot_paths(d, "a");
    assert_eq!(create_snapshot(&mut c, &snap_a, &mem_a).status, 204);
    resume(&mut c);
    wait_count_above(&vmm, last_count(&vmm) + 1, 0);
    pause(&mut c);
    let (snap_b, mem_b) = snapshot_paths(d, "b");
    assert_eq!(create_snapshot(&mut c, &snap_b, &mem_b).status, 204);
    drop(vmm);

    // Same-size files from different snapshots, in both directions: a mix by hand, and what a
    // VMM killed between renaming the new memory file and the new state file over an older
    // snapshot would leave (new memory, old state; or the reverse with another order).
    let no_trailer = d.join("no-trailer.mem");
    std::fs::copy(&mem_a, &no_trailer).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&no_trailer)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let vmm = spawn(d, "victim", &[]);
    let mut c = vmm.client();
    for (s, m, needles) in [
        (&snap_a, &mem_b, vec!["b.mem", "another snapshot"]),
        (&snap_b, &mem_a, vec!["a.mem", "another snapshot"]),
        (
            &snap_a,
            &no_trailer,
            vec!["no-trailer.mem", "no snapshot trailer"],
        ),
    ] {
        assert_400(&c.put("/snapshot/load", &load_body(s, m, true)), &needles);
        assert_not_started(&mut c);
    }
    let saved = ember_probe_image::counter_from_mem_file(&mem_b).unwrap();
    let r = c.put("/snapshot/load", &load_body(&snap_b, &mem_b, true));
    assert_eq!(r.status, 204, "{r:?}");
    assert!(wait_count_above(&vmm, saved, 0) > saved);
}

#[test]
fn states_that_do_not_describe_a_runnable_vm_are_refused_naming_the_section() {
    let dir = tempdir();
    let d = dir.path();
    let (snap, mem, _) = make_vsock_snapshot(d, "v", "ember.report=0");
    let mib = |n: u64| n << 20;
    let cases: Vec<(PathBuf, Vec<&str>)> = vec![
        (
            craft(d, &snap, "smt", |s| {
                edit_config(s, |c| c["machine-config"]["smt"] = json!(true))
            }),
            vec!["config section", "machine-config.smt"],
        ),
        (
            craft(d, &snap, "balloon", |s| {
                edit_config(s, |c| {
                    c["balloon"] = json!({"amount_mib": 8, "deflate_on_oom": false})
                })
            }),
            vec!["config section", "balloon", "not supported"],
        ),
        (
            craft(d, &snap, "drive", |s| {
                edit_config(s, |c| {
                    c["drives"] = json!([{"drive_id": "data", "is_root_device": false,
                                          "path_on_host": "/nonexistent/data.img"}])
                })
            }),
            vec!["config section", "drives[0].path_on_host", "no such file"],
        ),
        (
            craft(d, &snap, "unsaved-drive", |s| {
                edit_config(s, |c| {
                    c["drives"] = json!([{"drive_id": "data", "is_root_device": false,
                                          "path_on_host": "/dev/null"}])
                })
            }),
            vec![
                "virtio device section",
                "drives[0] (\"data\")",
                "no virtio device",
            ],
        ),
        (
            craft(d, &snap, "no-vsock-section", |s| s.virtio.clear()),
            vec!["virtio device section", "lists vsock", "no virtio device"],
        ),
        (
            craft(d, &snap, "vcpus", |s| {
                edit_config(s, |c| c["machine-config"]["vcpu_count"] = json!(2))
            }),
            vec!["vcpu section", "2 vCPUs", "1 vCPU sections"],
        ),
        (
            craft(d, &snap, "low", |s| {
                s.memory_regions = vec![(0x1000, mib(64))]
            }),
            vec!["memory section", "region 0 starts at 0x1000"],
        ),
        (
            craft(d, &snap, "gap", |s| {
                s.memory_regions = vec![(0, mib(32)), (0xd000_0000, mib(32))]
            }),
            vec!["memory section", "MMIO gap"],
        ),
        (
            craft(d, &snap, "overlap", |s| {
                s.memory_regions = vec![(0, mib(48)), (mib(32), mib(16))]
            }),
            vec!["memory section", "must not overlap"],
        ),
        (
            craft(d, &snap, "size", |s| {
                edit_config(s, |c| c["machine-config"]["mem_size_mib"] = json!(128))
            }),
            vec!["memory section", "mem_size_mib"],
        ),
    ];
    let vmm = spawn(d, "victim", &[]);
    let mut c = vmm.client();
    let uds = d.join("victim.vsock");
    for (state, needles) in &cases {
        let r = c.put("/snapshot/load", &load_body_vsock(state, &mem, &uds));
        assert_400(&r, needles);
        assert_not_started(&mut c);
    }
    // A vsock section the configuration does not list (loaded without vsock_override, which
    // would find no vsock device to override).
    let no_vsock = craft(d, &snap, "no-vsock-config", |s| {
        edit_config(s, |c| c["vsock"] = Value::Null)
    });
    assert_400(
        &c.put("/snapshot/load", &load_body_vsock(&no_vsock, &mem, &uds)),
        &["vsock_override", "no vsock device"],
    );
    assert_400(
        &c.put("/snapshot/load", &load_body(&no_vsock, &mem, true)),
        &[
            "virtio device section",
            "\"vsock\"",
            "not in the configuration",
        ],
    );
    assert_not_started(&mut c);
    // The untouched snapshot still loads into the same process, and its agent answers.
    let r = c.put("/snapshot/load", &load_body_vsock(&snap, &mem, &uds));
    assert_eq!(r.status, 204, "{r:?}");
    agent(&uds).health().unwrap();
}

#[test]
fn a_missing_drive_file_or_tap_is_refused_naming_it() {
    std::thread::spawn(|| {
        let _ns = NetNs::enter();
        run(&["ip", "tuntap", "add", "dev", "embhtap0", "mode", "tap"]);
        missing_host_devices();
    })
    .join()
    .unwrap();
}

fn missing_host_devices() {
    let dir = tempdir();
    let d = dir.path();
    let disk = d.join("disk.img");
    std::fs::write(&disk, vec![0u8; 64 << 10]).unwrap();
    let vmm = spawn(d, "src", &[]);
    let mut c = vmm.client();
    let drive = json!({"drive_id": "data", "path_on_host": disk, "is_root_device": false});
    assert_eq!(c.put("/drives/data", &drive.to_string()).status, 204);
    let eth0 = json!({"iface_id": "eth0", "host_dev_name": "embhtap0"});
    assert_eq!(
        c.put("/network-interfaces/eth0", &eth0.to_string()).status,
        204
    );
    boot_via_api(&mut c, 1, 64, "ember.report=5");
    wait_banner(&vmm);
    pause(&mut c);
    let (snap, mem) = snapshot_paths(d, "dev");
    assert_eq!(create_snapshot(&mut c, &snap, &mem).status, 204);
    drop(vmm);

    let vmm = spawn(d, "victim", &[]);
    let mut c = vmm.client();
    // The interface moved onto a TAP that does not exist.
    let mut body: Value = serde_json::from_str(&load_body(&snap, &mem, true)).unwrap();
    body["network_overrides"] = json!([{"iface_id": "eth0", "host_dev_name": "embhnosuch"}]);
    assert_400(
        &c.put("/snapshot/load", &body.to_string()),
        &["eth0", "embhnosuch"],
    );
    assert_not_started(&mut c);
    // The snapshot's own TAP deleted.
    run(&["ip", "link", "del", "embhtap0"]);
    assert_400(
        &c.put("/snapshot/load", &load_body(&snap, &mem, true)),
        &["eth0", "embhtap0"],
    );
    assert_not_started(&mut c);
    // The drive's file removed.
    run(&["ip", "tuntap", "add", "dev", "embhtap0", "mode", "tap"]);
    std::fs::rename(&disk, d.join("moved.img")).unwrap();
    assert_400(
        &c.put("/snapshot/load", &load_body(&snap, &mem, true)),
        &["config section", "drives[0].path_on_host", "disk.img"],
    );
    assert_not_started(&mut c);
    // Everything back: it loads, into the same process.
    std::fs::rename(d.join("moved.img"), &disk).unwrap();
    let r = c.put("/snapshot/load", &load_body(&snap, &mem, true));
    assert_eq!(r.status, 204, "{r:?}\n{}", vmm.stderr_text());
    let saved = ember_probe_image::counter_from_mem_file(&mem).unwrap();
    assert!(wait_count_above(&vmm, saved, 0) > saved);
}

#[test]
fn a_guest_that_dies_after_restore_is_a_failure_exit() {
    let dir = tempdir();
    let d = dir.path();
    let (snap, mem, _) = make_snapshot(d, "t", "ember.report=5", 2);
    // No usable IDT: the guest's next interrupt (its 100 Hz timer) faults, the fault cannot be
    // delivered either, and the vCPU triple-faults.
    let broken = craft(d, &snap, "no-idt", |s| {
        for v in &mut s.vcpus {
            v.sregs.idt.limit = 0;
        }
    });
    let mut vmm = spawn(d, "victim", &[]);
    let mut c = vmm.client();
    let r = c.put("/snapshot/load", &load_body(&broken, &mem, true));
    assert_eq!(r.status, 204, "{r:?}");
    let status = vmm.wait_exit(DEFAULT_TIMEOUT);
    let stderr = vmm.stderr_text();
    assert_eq!(status.code(), Some(1), "{status:?}\n{stderr}");
    assert!(
        stderr.contains("after the snapshot was loaded") && stderr.contains("exit code 1"),
        "{stderr}"
    );
}

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
        let name = format!("embhs-{}", std::process::id());
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
