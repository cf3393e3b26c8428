//! Pause/resume and snapshot/restore on real KVM with the probe guest: the counter stops while
//! paused, and a snapshot restored in a new process continues from the saved value, with a
//! new VM generation id.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;

#[test]
fn pause_stops_the_counter_and_resume_restarts_it() {
    let dir = tempdir();
    let vmm = spawn(dir.path(), "pause", &[]);
    let mut c = vmm.client();
    boot_via_api(&mut c, 1, 32, "ember.report=5");
    let first = wait_count_above(&vmm, 0, 0);
    pause(&mut c);
    let info: serde_json::Value = serde_json::from_str(&c.get("/").body).unwrap();
    assert_eq!(info["state"], "Paused");
    // The counter in guest memory, read through two snapshots taken some time apart.
    let (s1, m1) = snapshot_paths(dir.path(), "a");
    assert_eq!(create_snapshot(&mut c, &s1, &m1).status, 204);
    let lines_at_pause = vmm.stdout_lines();
    let_time_pass();
    let (s2, m2) = snapshot_paths(dir.path(), "b");
    assert_eq!(create_snapshot(&mut c, &s2, &m2).status, 204);
    let c1 = ember_probe_image::counter_from_mem_file(&m1).unwrap();
    let c2 = ember_probe_image::counter_from_mem_file(&m2).unwrap();
    assert!(
        c1 >= first,
        "saved counter {c1} below the last printed {first}"
    );
    assert_eq!(c1, c2, "the counter moved while paused");
    assert_eq!(
        vmm.stdout_lines(),
        lines_at_pause,
        "the guest printed while paused"
    );
    // Pausing twice is fine; resuming continues from where it stopped.
    pause(&mut c);
    resume(&mut c);
    let after = wait_count_above(&vmm, c2, lines_at_pause);
    assert!(after > c2);
    let info: serde_json::Value = serde_json::from_str(&c.get("/").body).unwrap();
    assert_eq!(info["state"], "Running");
}

#[test]
fn restore_in_a_new_process_continues_the_counter() {
    let dir = tempdir();
    let (snap, mem, saved) = make_snapshot(dir.path(), "t", "ember.report=5", 10);
    assert!(saved >= 10, "saved counter {saved}");
    let mem_before = std::fs::read(&mem).unwrap();

    let vmm = spawn(dir.path(), "restored", &[]);
    let mut c = vmm.client();
    let r = c.put("/snapshot/load", &load_body(&snap, &mem, true));
    assert_eq!(r.status, 204, "{r:?}\n{}", vmm.stderr_text());
    // The first count printed after the restore continues from the saved value...
    let n1 = wait_count_above(&vmm, 0, 0);
    assert!(
        n1 > saved,
        "count {n1} after restore does not continue from {saved}"
    );
    assert!(
        n1 <= saved + 5 + 1,
        "count {n1} jumped far beyond the saved {saved}"
    );
    // ...and keeps increasing.
    let n2 = wait_count_above(&vmm, n1, 0);
    assert!(n2 > n1);
    // The memory file is never written by a restore (MAP_PRIVATE).
    assert!(
        std::fs::read(&mem).unwrap() == mem_before,
        "the memory file changed"
    );
    let cfg: serde_json::Value = serde_json::from_str(&c.get("/vm/config").body).unwrap();
    assert_eq!(cfg["machine-config"]["mem_size_mib"], 64);
    let timings: serde_json::Value = serde_json::from_str(&c.get("/ember/timings").body).unwrap();
    assert!(timings["restore"]["total_us"].as_f64().unwrap() > 0.0);

    // A snapshot of the restored VM can be restored again.
    pause(&mut c);
    let (snap2, mem2) = snapshot_paths(dir.path(), "again");
    assert_eq!(create_snapshot(&mut c, &snap2, &mem2).status, 204);
    let saved2 = ember_probe_image::counter_from_mem_file(&mem2).unwrap();
    assert!(saved2 >= n2);
    drop(vmm);
    let vmm = spawn(dir.path(), "again", &[]);
    let mut c = vmm.client();
    let mut body: serde_json::Value =
        serde_json::from_str(&load_body(&snap2, &mem2, true)).unwrap();
    body["ember_eager_load"] = serde_json::Value::Bool(true);
    let r = c.put("/snapshot/load", &body.to_string());
    assert_eq!(r.status, 204, "{r:?}");
    let n3 = wait_count_above(&vmm, saved2, 0);
    assert!(n3 > saved2);
}

#[test]
fn restore_paused_then_resume_and_console_input() {
    let dir = tempdir();
    let (snap, mem, saved) = make_snapshot(dir.path(), "p", "ember.report=5", 5);
    let mut vmm = spawn_with_stdin(dir.path(), "paused", &[]);
    let mut c = vmm.client();
    let r = c.put("/snapshot/load", &load_body(&snap, &mem, false));
    assert_eq!(r.status, 204, "{r:?}");
    let info: serde_json::Value = serde_json::from_str(&c.get("/").body).unwrap();
    assert_eq!(info["state"], "Paused");
    resume(&mut c);
    assert!(wait_count_above(&vmm, saved, 0) > saved);
    // The restored UART, IOAPIC routing and irqfd deliver console input.
    vmm.write_stdin(b"ping");
    let line = vmm.wait_for_line(DEFAULT_TIMEOUT, "the echo", 0, |l| {
        l.starts_with("ember-probe: rx=")
    });
    assert!(line.contains("ping"), "{line}");
}

#[test]
fn two_vcpu_snapshot_restores() {
    let dir = tempdir();
    let src = spawn(dir.path(), "smp-src", &[]);
    let mut c = src.client();
    boot_via_api(&mut c, 2, 64, "ember.report=5");
    wait_count_above(&src, 5, 0);
    pause(&mut c);
    let (snap, mem) = snapshot_paths(dir.path(), "smp");
    assert_eq!(create_snapshot(&mut c, &snap, &mem).status, 204);
    let saved = ember_probe_image::counter_from_mem_file(&mem).unwrap();
    drop(src);
    let vmm = spawn(dir.path(), "smp", &[]);
    let mut c = vmm.client();
    assert_eq!(
        c.put("/snapshot/load", &load_body(&snap, &mem, true))
            .status,
        204
    );
    assert!(wait_count_above(&vmm, saved, 0) > saved);
    let mc: serde_json::Value = serde_json::from_str(&c.get("/machine-config").body).unwrap();
    assert_eq!(mc["vcpu_count"], 2);
}

/// The VM generation id's 16 bytes in a memory file (region 0 starts the file, so the file
/// offset is the guest address).
fn generation_id(mem_file: &[u8]) -> [u8; 16] {
    let at = ember_vmm::arch::x86_64::layout::VMGENID_ADDR as usize;
    mem_file[at..at + 16].try_into().unwrap()
}

#[test]
fn each_restore_writes_a_new_vm_generation_id_and_leaves_the_memory_file_alone() {
    let dir = tempdir();
    let (snap, mem, saved) = make_snapshot(dir.path(), "genid", "ember.report=5", 3);
    let mem_before = std::fs::read(&mem).unwrap();
    let booted = generation_id(&mem_before);
    assert_ne!(booted, [0; 16], "the boot wrote no generation id");
    let state =
        ember_vmm::snapshot::MicrovmState::from_bytes(&std::fs::read(&snap).unwrap()).unwrap();
    assert_eq!(
        state.vmgenid,
        Some(ember_vmm::devices::vmgenid::VmGenIdState::BOOT)
    );
    let mut seen = vec![booted];
    for (name, eager) in [("genid-cow", false), ("genid-eager", true)] {
        let vmm = spawn(dir.path(), name, &[]);
        let mut c = vmm.client();
        let mut body: serde_json::Value =
            serde_json::from_str(&load_body(&snap, &mem, false)).unwrap();
        body["ember_eager_load"] = serde_json::Value::Bool(eager);
        let r = c.put("/snapshot/load", &body.to_string());
        assert_eq!(r.status, 204, "{r:?}\n{}", vmm.stderr_text());
        // Still paused: a snapshot now shows what the restore wrote, and keeps the device.
        let (snap2, mem2) = snapshot_paths(dir.path(), name);
        assert_eq!(create_snapshot(&mut c, &snap2, &mem2).status, 204);
        let id = generation_id(&std::fs::read(&mem2).unwrap());
        assert!(
            !seen.contains(&id),
            "{name}: the restore kept an old generation id"
        );
        seen.push(id);
        let again =
            ember_vmm::snapshot::MicrovmState::from_bytes(&std::fs::read(&snap2).unwrap()).unwrap();
        assert_eq!(again.vmgenid, state.vmgenid);
        // The GED's interrupt (raised by the restore) does not disturb a guest that never
        // routed it: the probe counts on.
        resume(&mut c);
        assert!(wait_count_above(&vmm, saved, 0) > saved);
    }
    assert!(
        std::fs::read(&mem).unwrap() == mem_before,
        "a restore wrote into the snapshot's memory file"
    );
}
