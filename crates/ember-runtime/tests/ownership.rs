//! What outlives what: snapshots outlive the provider that took them (handed to the next one on
//! the same root, as a store would); VMM processes do not outlive the process that owns the
//! provider, even when it is killed without a chance to clean up — unless the provider is
//! detached: then they outlive a SIGKILL of their owner, the next provider re-adopts the recorded
//! ones (they keep answering their agent) and sweeps away the rest.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

use common::*;
use ember_core::{VmProvider, VmQuery, VmSpec, VmStatus};

#[test]
fn snapshots_survive_a_provider_restart() {
    let dir = short_tempdir();
    let flavor = flavor(Kind::EmberVmm).unwrap();
    let stack = probe_stack("restart");
    let (snap, info) = {
        let p = provider(dir.path(), flavor.clone(), 1);
        let snap = make_template(&p, "src", "keep", &stack, "ember.report=10");
        let info = p.snapshot_info(&snap.snapshot_id).unwrap();
        // The VM is left running: shutdown kills it; the snapshot stays.
        shutdown_and_check(&p);
        (snap, info)
    };
    let p = provider(dir.path(), flavor, 1);
    assert!(p.list_snapshots().unwrap().is_empty(), "nothing until told");
    assert_eq!(p.unknown_snapshot_dirs().unwrap().len(), 1);
    p.register_snapshot(info).unwrap();
    assert!(p.unknown_snapshot_dirs().unwrap().is_empty());
    assert_eq!(p.list_snapshots().unwrap(), vec![snap.clone()]);
    assert!(p.list().unwrap().is_empty());
    p.verify_snapshot(&snap).unwrap();
    let id = vm("again");
    assert_eq!(
        p.create_with_spec(&id, &VmSpec::restore(snap.clone()))
            .unwrap()
            .status,
        VmStatus::Running
    );
    p.destroy(&id).unwrap();
    p.delete_snapshot(&snap.snapshot_id).unwrap();
    let root = p.root().to_path_buf();
    shutdown_and_check(&p);
    // The root existed when this provider started (it held a snapshot), so it stays, empty.
    assert!(files_under(&root).is_empty(), "{:?}", files_under(&root));
}

const CHILD_ROOT: &str = "EMBER_RUNTIME_TEST_CHILD_ROOT";
const CHILD_KIND: &str = "EMBER_RUNTIME_TEST_CHILD_KIND";

/// ember-vmm arranges its own parent-death signal (`--parent-pid`).
#[test]
fn vmms_die_with_their_owner() {
    die_with_owner("vmms_die_with_their_owner", Kind::EmberVmm);
}

/// A Firecracker-style VMM gets it from the `setpriv` launcher.
#[test]
fn firecracker_style_vmms_die_with_their_owner() {
    die_with_owner(
        "firecracker_style_vmms_die_with_their_owner",
        Kind::FirecrackerStyle,
    );
}

fn die_with_owner(test: &str, kind: Kind) {
    if let Some(root) = std::env::var_os(CHILD_ROOT) {
        if std::env::var(CHILD_KIND).ok().as_deref() != Some(&format!("{kind:?}")) {
            return;
        }
        // The child: start VMs, say which processes exist, and die without cleaning up.
        let p = provider(std::path::Path::new(&root), flavor(kind).unwrap(), 2);
        for i in 0..2 {
            let id = vm(&format!("orphan-{i}"));
            p.create_with_spec(&id, &probe_spec("ember.report=10"))
                .unwrap();
            p.start(&id).unwrap();
        }
        wait_for(DEFAULT_TIMEOUT, "two spares", || {
            (p.stats().spares.ready == 2).then_some(())
        });
        let pids: Vec<String> = p.process_ids().iter().map(u32::to_string).collect();
        println!("PIDS {}", pids.join(" "));
        // The child test process kills itself, on purpose, without unwinding.
        let _ = nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGKILL);
        unreachable!();
    }
    let dir = short_tempdir();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture"])
        .env(CHILD_ROOT, dir.path())
        .env(CHILD_KIND, format!("{kind:?}"))
        .env("EMBER_VMM_BIN", vmm_bin())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pids: Vec<u32> = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("PIDS ") {
            pids = rest.split(' ').map(|p| p.parse().unwrap()).collect();
        }
    }
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    assert_eq!(pids.len(), 4, "two VMs and two spares: {pids:?}");
    // Every VMM got its parent-death signal.
    wait_gone(&pids);
    // The next provider on the root clears what the dead one left.
    let root = dir.path().join("root");
    assert!(root.join("vms/orphan-0").exists());
    let p = provider(dir.path(), flavor(kind).unwrap(), 1);
    assert_eq!(std::fs::read_dir(root.join("vms")).unwrap().count(), 0);
    assert!(p.list().unwrap().is_empty());
    shutdown_and_check(&p);
}

const DETACHED_ROOT: &str = "EMBER_RUNTIME_TEST_DETACHED_ROOT";

/// Detached VMMs outlive a SIGKILL of their owner; the next detached provider re-adopts the
/// recorded VMs (their agents still answer, renamed or not), refuses a record whose process is
/// not the recorded one, and sweeps away everything nobody recorded (an unrecorded VM and the
/// dead owner's spares, with their slots and links).
#[test]
fn detached_vms_outlive_their_owner_and_are_adopted() {
    use ember_agent_proto::AgentClient;
    use ember_core::{SnapshotId, SnapshotInfo, VmOwner, VmRecord, VsockSpec};
    const PORT: u32 = ember_probe_image::AGENT_PORT;
    let agent_health = |path: &std::path::Path| {
        wait_for(DEFAULT_TIMEOUT, "the agent", || {
            AgentClient::connect(path, PORT, std::time::Duration::from_secs(2))
                .ok()?
                .health()
                .ok()
        })
    };

    if let Some(root) = std::env::var_os(DETACHED_ROOT) {
        // The child: a template, three copies (two recorded, one renamed), then a SIGKILL.
        let p = detached_provider(
            std::path::Path::new(&root),
            flavor(Kind::EmberVmm).unwrap(),
            2,
        );
        let src = vm("tpl-src");
        let mut spec = probe_spec("ember.hz=0 ember.report=0");
        spec.vsock = Some(VsockSpec {
            guest_cid: 3,
            uds_path: "/unused".into(),
        });
        p.create_with_spec(&src, &spec).unwrap();
        p.start(&src).unwrap();
        agent_health(&p.vsock_path(&src).unwrap());
        let snap = pause_and_snapshot(&p, &src, "kept");
        p.destroy(&src).unwrap();
        for i in 0..3 {
            p.create_with_spec(&vm(&format!("copy-{i}")), &VmSpec::restore(snap.clone()))
                .unwrap();
        }
        p.rename(&vm("copy-0"), &vm("tenant-0")).unwrap();
        let info = p.snapshot_info(&snap.snapshot_id).unwrap();
        println!("SNAP {}", serde_json::to_string(&info).unwrap());
        for id in ["tenant-0", "copy-1"] {
            let r = p.vm_record(&vm(id), VmOwner::Sandbox).unwrap();
            println!("RECORD {}", serde_json::to_string(&r).unwrap());
        }
        // Two spares, and the destroyed template's VMM reaped.
        wait_for(DEFAULT_TIMEOUT, "two spares", || {
            let s = p.stats();
            (s.spares.ready == 2 && s.processes == 5).then_some(())
        });
        let pids: Vec<String> = p.process_ids().iter().map(u32::to_string).collect();
        println!("PIDS {}", pids.join(" "));
        let _ = nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGKILL);
        unreachable!();
    }

    let dir = short_tempdir();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "detached_vms_outlive_their_owner_and_are_adopted",
            "--nocapture",
        ])
        .env(DETACHED_ROOT, dir.path())
        .env("EMBER_VMM_BIN", vmm_bin())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (mut info, mut records, mut pids): (Option<SnapshotInfo>, Vec<VmRecord>, Vec<u32>) =
        (None, Vec::new(), Vec::new());
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("SNAP ") {
            info = Some(serde_json::from_str(rest).unwrap());
        } else if let Some(rest) = line.strip_prefix("RECORD ") {
            records.push(serde_json::from_str(rest).unwrap());
        } else if let Some(rest) = line.strip_prefix("PIDS ") {
            pids = rest.split(' ').map(|p| p.parse().unwrap()).collect();
        }
    }
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    assert_eq!(pids.len(), 5, "three VMs and two spares: {pids:?}");
    std::thread::sleep(std::time::Duration::from_millis(200));
    for pid in &pids {
        assert!(alive(*pid), "VMM {pid} died with its detached owner");
    }

    let p = detached_provider(dir.path(), flavor(Kind::EmberVmm).unwrap(), 1);
    p.register_snapshot(info.unwrap()).unwrap();
    // A record whose process is another one (start time changed) is refused.
    let mut impostor = records[1].clone();
    impostor.process.identity.start_time += 1;
    let err = p.adopt(&impostor).unwrap_err();
    assert!(
        matches!(err, ember_runtime::AdoptError::Gone { .. }),
        "{err}"
    );
    for r in &records {
        let view = p.adopt(r).unwrap();
        assert_eq!(view.status, VmStatus::Running);
        agent_health(&p.vsock_path(&r.id).unwrap());
    }
    let err = p.adopt(&records[0]).unwrap_err();
    assert!(
        matches!(err, ember_runtime::AdoptError::Invalid { .. }),
        "adopted twice: {err}"
    );
    let report = p.sweep();
    assert_eq!(report.killed.len(), 3, "copy-2 and two spares: {report:?}");
    wait_gone(&report.killed);
    assert_eq!(report.slots_removed.len(), 3, "{report:?}");
    assert_eq!(report.links_removed, 1, "copy-2's link: {report:?}");
    let mut ids: Vec<String> = p.list().unwrap().iter().map(|v| v.id.to_string()).collect();
    ids.sort();
    assert_eq!(ids, ["copy-1", "tenant-0"]);
    // An adopted VM is watched: its death is noticed at once.
    let victim = p.pid(&vm("copy-1")).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_for(DEFAULT_TIMEOUT, "the adopted VM's death", || {
        (p.get(&vm("copy-1")).ok()?.status == VmStatus::Stopped).then_some(())
    });
    // The adopted VMs take part in the normal lifecycle, and nothing is left at the end.
    p.pause(&vm("tenant-0")).unwrap();
    p.resume(&vm("tenant-0")).unwrap();
    p.create_with_spec(
        &vm("fresh"),
        &VmSpec::restore(
            records[0]
                .restored_from
                .clone()
                .map(|s| p.snapshot_info(&s).unwrap().to_ref())
                .unwrap(),
        ),
    )
    .unwrap();
    for id in ["tenant-0", "copy-1", "fresh"] {
        p.destroy(&vm(id)).unwrap();
    }
    p.delete_snapshot(&SnapshotId::new("kept").unwrap())
        .unwrap();
    shutdown_and_check(&p);
}
