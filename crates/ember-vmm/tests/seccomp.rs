//! Seccomp filters on a real VMM: every thread serving a guest (main, vCPU, virtio) runs
//! filtered with no_new_privs once a VM runs, booted or restored; `--no-seccomp` leaves them
//! off; a forbidden syscall kills the process with SIGSYS.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;

use common::*;

/// `Seccomp:` and `NoNewPrivs:` of every thread of `pid`, by thread name.
fn thread_status(pid: u32) -> BTreeMap<String, (String, String)> {
    let mut out = BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        // A thread that ended since the listing (a short-lived helper) has no status to read.
        let Ok(status) = std::fs::read_to_string(task.unwrap().path().join("status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        out.insert(field("Name:"), (field("Seccomp:"), field("NoNewPrivs:")));
    }
    out
}

fn assert_all_filtered(pid: u32) {
    let threads = thread_status(pid);
    for name in ["ember-vmm", "vcpu0", "virtio"] {
        assert!(threads.contains_key(name), "no {name} thread: {threads:?}");
    }
    for (name, (seccomp, nnp)) in &threads {
        assert_eq!(
            (seccomp.as_str(), nnp.as_str()),
            ("2", "1"),
            "thread {name}: {threads:?}"
        );
    }
}

#[test]
fn every_thread_of_a_booted_and_of_a_restored_vmm_is_filtered() {
    let dir = tempdir();
    let uds = dir.path().join("boot.vsock");
    let vmm = spawn(dir.path(), "boot", &[]);
    let mut c = vmm.client();
    assert_eq!(c.get("/").status, 200);
    // Before a VM runs, nothing is filtered yet (the API served only the host).
    let before = thread_status(vmm.pid());
    let (seccomp, _) = before
        .get("ember-vmm")
        .cloned()
        .unwrap_or_else(|| panic!("{before:?}"));
    assert_eq!(seccomp, "0");
    boot_with_vsock(&mut c, 64, "ember.report=0", &uds);
    wait_banner(&vmm);
    agent(&uds).health().unwrap();
    assert_all_filtered(vmm.pid());
    // Filtered, the VMM still does its whole job: pause, snapshot, restore, exec.
    pause(&mut c);
    let (snap, mem) = snapshot_paths(dir.path(), "s");
    assert_eq!(create_snapshot(&mut c, &snap, &mem).status, 204);
    let restored_uds = dir.path().join("restored.vsock");
    let restored = spawn(dir.path(), "restored", &[]);
    let r = restored.client().put(
        "/snapshot/load",
        &load_body_vsock(&snap, &mem, &restored_uds),
    );
    assert_eq!(r.status, 204, "{r:?}");
    let mut a = agent(&restored_uds);
    a.health().unwrap();
    assert_all_filtered(restored.pid());
    let out = a
        .exec(&ember_agent_proto::Exec::new(&["echo", "filtered"]))
        .unwrap();
    assert_eq!(out.stdout, b"filtered\n");
    assert_eq!(restored.client().get("/").status, 200);
}

#[test]
fn no_seccomp_leaves_the_threads_unfiltered() {
    let dir = tempdir();
    let uds = dir.path().join("off.vsock");
    let vmm = spawn(dir.path(), "off", &["--no-seccomp"]);
    let mut c = vmm.client();
    boot_with_vsock(&mut c, 64, "ember.report=0", &uds);
    wait_banner(&vmm);
    for (name, (seccomp, _)) in thread_status(vmm.pid()) {
        assert_eq!(seccomp, "0", "thread {name}");
    }
}

#[test]
fn a_forbidden_syscall_kills_the_vmm_with_sigsys() {
    let dir = tempdir();
    let mut vmm = spawn(dir.path(), "selftest", &["--seccomp-selftest"]);
    let mut c = vmm.client();
    c.put("/boot-source", &boot_source_json("ember.report=0"));
    c.put(
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 64}"#,
    );
    // The main thread installs its filter as the VM starts, then makes the forbidden call:
    // the response may never come.
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        c.put("/actions", r#"{"action_type": "InstanceStart"}"#)
    }));
    let status = vmm.wait_exit(DEFAULT_TIMEOUT);
    assert_eq!(
        status.signal(),
        Some(libc::SIGSYS),
        "{status:?}; stderr: {}",
        vmm.stderr_text()
    );
}

/// The child half of the test below: enables the filters, then in a thread of `kind` allocates
/// and frees what makes glibc shrink that thread's arena — the first shrink in a process opens
/// `/proc/sys/vm/overcommit_memory` (a 10 MiB vsock transfer did this in the device thread of
/// a Linux guest's VMM, which seccomp then killed).
fn shrink_an_arena_under(kind: ember_vmm::seccomp::ThreadKind) {
    ember_vmm::seccomp::enable().unwrap();
    std::thread::spawn(move || {
        ember_vmm::seccomp::install(kind).unwrap();
        let chunks: Vec<Vec<u8>> = (0..200).map(|i| vec![i as u8; 60_000]).collect();
        let total: usize = chunks.iter().map(|c| c.len()).sum();
        drop(chunks);
        total
    })
    .join()
    .unwrap();
}

#[test]
fn the_allocator_shrinking_a_thread_arena_does_not_kill_a_filtered_thread() {
    use ember_vmm::seccomp::ThreadKind;
    if let Ok(kind) = std::env::var("EMBER_TEST_ARENA_CHILD") {
        let kind = if kind == "vcpu" {
            ThreadKind::Vcpu
        } else {
            ThreadKind::Device
        };
        shrink_an_arena_under(kind);
        println!("survived");
        return;
    }
    // Each kind in a fresh process: glibc opens the file once per process.
    for kind in ["device", "vcpu"] {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "the_allocator_shrinking_a_thread_arena_does_not_kill_a_filtered_thread",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("EMBER_TEST_ARENA_CHILD", kind)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("survived"),
            "{kind} thread: {:?}; stdout: {stdout}; stderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
