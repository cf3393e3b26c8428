//! The provider over real VMM processes on real KVM with the probe guest: boot, pause,
//! snapshot, destroy the source (the snapshot survives), restore copies running and paused,
//! rename a running VM, destroy, shutdown — leaving no process and no file. The same body runs
//! with the ember-vmm flavor, the Firecracker flavor driving the ember-vmm binary, and a real
//! firecracker when `EMBER_FIRECRACKER_BIN` names one.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]

mod common;

use common::*;
use ember_core::{
    ResourceKind, SnapshotId, SnapshotRequest, VmError, VmProvider, VmQuery, VmSpec, VmStatus,
};
use ember_fc_api::InstanceState;
use ember_runtime::FirecrackerClient;

fn lifecycle(kind: Kind) {
    let Some(flavor) = flavor(kind) else { return };
    let dir = short_tempdir();
    let p = provider(dir.path(), flavor, 3);
    let root = p.root().to_path_buf();
    let stack = probe_stack("life");

    // Boot the probe: Created, then Running, banner and counting on the console.
    let src = vm("src");
    let v = p
        .create_with_spec(&src, &probe_spec("ember.hz=50 ember.report=5"))
        .unwrap();
    assert_eq!(v.status, VmStatus::Created);
    assert_eq!(p.start(&src).unwrap().status, VmStatus::Running);
    let banner = wait_console(&p, &src, "the probe banner", 0, |l| {
        ember_probe_image::parse_banner(l).is_some()
    });
    let boot_id = ember_probe_image::parse_banner(&banner).unwrap().boot_id;
    wait_count_above(&p, &src, 2);

    // A snapshot needs a paused VM.
    let req = |id: &str| SnapshotRequest {
        snapshot_id: SnapshotId::new(id).unwrap(),
        stack: Some(stack.clone()),
    };
    let err = p.snapshot(&src, &req("tpl")).unwrap_err();
    assert!(
        matches!(
            err,
            VmError::InvalidState {
                status: VmStatus::Running,
                required: VmStatus::Paused,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(p.pause(&src).unwrap().status, VmStatus::Paused);
    assert!(matches!(
        p.pause(&src).unwrap_err(),
        VmError::InvalidTransition { .. }
    ));
    let snap = p.snapshot(&src, &req("tpl")).unwrap();
    assert_eq!(snap.stack.as_ref(), Some(&stack));
    assert!(snap.state_path.starts_with(root.join("snapshots/tpl")));
    assert_eq!(
        p.get(&src).unwrap().snapshots,
        vec![snap.snapshot_id.clone()]
    );
    assert!(matches!(
        p.snapshot(&src, &req("tpl")).unwrap_err(),
        VmError::AlreadyExists {
            kind: ResourceKind::Snapshot,
            ..
        }
    ));
    let saved = ember_probe_image::counter_from_mem_file(&snap.mem_path).unwrap();
    p.verify_snapshot(&snap).unwrap();

    // Destroying the source leaves the snapshot.
    let src_pid = p.pid(&src).unwrap();
    p.destroy(&src).unwrap();
    assert!(matches!(p.get(&src).unwrap_err(), VmError::NotFound { .. }));
    assert!(!root.join("vms/src").exists());
    wait_gone(&[src_pid]);
    assert_eq!(p.list_snapshots().unwrap(), vec![snap.clone()]);
    assert!(snap.state_path.is_file() && snap.mem_path.is_file());

    // Restore copies: three running, two paused.
    let mut running = Vec::new();
    for i in 0..3 {
        let id = vm(&format!("run-{i}"));
        let v = p
            .create_with_spec(&id, &VmSpec::restore(snap.clone()))
            .unwrap();
        assert_eq!(v.status, VmStatus::Running);
        assert_eq!(v.restored_from.as_ref(), Some(&snap.snapshot_id));
        assert_eq!(v.stack.as_ref(), Some(&stack));
        running.push(id);
    }
    let mut paused = Vec::new();
    for i in 0..2 {
        let id = vm(&format!("paused-{i}"));
        let mut s = snap.clone();
        s.resume = false;
        assert_eq!(
            p.create_with_spec(&id, &VmSpec::restore(s)).unwrap().status,
            VmStatus::Paused
        );
        paused.push(id);
    }
    for id in &running {
        // Each copy continues the guest from the saved counter.
        assert!(wait_count_above(&p, id, saved) > saved);
    }
    assert_eq!(p.resume(&paused[0]).unwrap().status, VmStatus::Running);
    wait_count_above(&p, &paused[0], saved);
    // A resume whose acknowledgement is read by the VM's next call: the guest runs at once,
    // the same transition rules hold, and the next call (pause) finds the API in step.
    assert_eq!(
        p.resume_unacknowledged(&paused[1]).unwrap().status,
        VmStatus::Running
    );
    assert!(matches!(
        p.resume_unacknowledged(&paused[1]).unwrap_err(),
        VmError::InvalidTransition { .. }
    ));
    let counted = wait_count_above(&p, &paused[1], saved);
    assert_eq!(p.pause(&paused[1]).unwrap().status, VmStatus::Paused);
    assert_eq!(p.resume(&paused[1]).unwrap().status, VmStatus::Running);
    wait_count_above(&p, &paused[1], counted);
    let slots: std::collections::HashSet<u64> = running
        .iter()
        .chain(&paused)
        .map(|id| p.slot(id).unwrap())
        .collect();
    assert_eq!(slots.len(), 5, "each VM has its own process");
    assert!(
        console(&p, &running[0])
            .lines()
            .all(|l| ember_probe_image::parse_banner(l).is_none_or(|b| b.boot_id == boot_id)),
        "a restored copy is the same guest"
    );

    // Rename a running VM: same process, still running, reachable under the new name only.
    let old = running[0].clone();
    let new = vm("tenant-1");
    let pid = p.pid(&old).unwrap();
    let lines_before = console(&p, &old).lines().count();
    let v = p.rename(&old, &new).unwrap();
    assert_eq!((v.id.clone(), v.status), (new.clone(), VmStatus::Running));
    assert!(matches!(p.get(&old).unwrap_err(), VmError::NotFound { .. }));
    assert!(matches!(
        p.pause(&old).unwrap_err(),
        VmError::NotFound { .. }
    ));
    assert_eq!(p.pid(&new).unwrap(), pid);
    assert!(!root.join("vms/run-0").exists());
    let mut fresh = FirecrackerClient::new(
        root.join("vms/tenant-1/api.sock"),
        ember_runtime::ClientTimeouts::default(),
    );
    assert_eq!(
        fresh.describe_instance().unwrap().state,
        InstanceState::Running
    );
    wait_console(
        &p,
        &new,
        "count lines after the rename",
        lines_before,
        |l| ember_probe_image::parse_count_line(l).is_some(),
    );
    assert_eq!(p.pause(&new).unwrap().status, VmStatus::Paused);
    assert_eq!(
        fresh.describe_instance().unwrap().state,
        InstanceState::Paused
    );
    assert_eq!(p.resume(&new).unwrap().status, VmStatus::Running);
    // Renaming onto a live id is refused and changes nothing.
    assert!(matches!(
        p.rename(&new, &running[1]).unwrap_err(),
        VmError::AlreadyExists {
            kind: ResourceKind::Vm,
            ..
        }
    ));
    assert_eq!(p.get(&new).unwrap().status, VmStatus::Running);
    let views = p.list().unwrap();
    assert_eq!(views.len(), 5);

    // Stop ends the process but keeps the VM (and its files) until destroy.
    let stopped_pid = p.pid(&paused[1]).unwrap();
    assert_eq!(p.stop(&paused[1]).unwrap().status, VmStatus::Stopped);
    wait_gone(&[stopped_pid]);
    assert_eq!(p.get(&paused[1]).unwrap().status, VmStatus::Stopped);
    assert!(p.console_log(&paused[1]).unwrap().is_file());
    assert!(matches!(
        p.resume(&paused[1]).unwrap_err(),
        VmError::InvalidTransition { .. }
    ));

    // Destroy everything: no process, no file but the snapshot.
    let pids: Vec<u32> = p
        .list()
        .unwrap()
        .iter()
        .map(|v| p.pid(&v.id).unwrap())
        .collect();
    for v in p.list().unwrap() {
        p.destroy(&v.id).unwrap();
    }
    assert!(p.list().unwrap().is_empty());
    wait_gone(&pids);
    assert_eq!(std::fs::read_dir(root.join("vms")).unwrap().count(), 0);
    let spare_slots = p.stats().spares.ready + p.stats().spares.starting;
    wait_for(DEFAULT_TIMEOUT, "only spare slots to remain", || {
        let n = std::fs::read_dir(root.join("slots")).unwrap().count();
        (n <= spare_slots + p.stats().spares.starting).then_some(())
    });

    // The snapshot goes only when asked.
    p.delete_snapshot(&snap.snapshot_id).unwrap();
    assert!(!root.join("snapshots/tpl").exists());
    assert!(p.list_snapshots().unwrap().is_empty());
    assert!(matches!(
        p.delete_snapshot(&snap.snapshot_id).unwrap_err(),
        VmError::NotFound {
            kind: ResourceKind::Snapshot,
            ..
        }
    ));
    shutdown_and_check(&p);
    assert!(!root.exists(), "left: {:?}", files_under(&root));
}

#[test]
fn lifecycle_ember_vmm() {
    lifecycle(Kind::EmberVmm);
}

#[test]
fn lifecycle_firecracker_flavor_on_ember_vmm() {
    lifecycle(Kind::FirecrackerStyle);
}

#[test]
fn lifecycle_real_firecracker() {
    lifecycle(Kind::RealFirecracker);
}

/// Each VM's vsock socket lives in its own slot: a booted VM's `PUT /vsock` and every restored
/// copy's `vsock_override` name the VM's slot, whatever path the spec carried, and renames do
/// not move it.
#[test]
fn every_vm_gets_its_own_vsock_socket() {
    let dir = short_tempdir();
    let p = provider(dir.path(), flavor(Kind::EmberVmm).unwrap(), 2);
    let src = vm("vsock-src");
    let mut spec = probe_spec("ember.report=10");
    spec.vsock = Some(ember_core::VsockSpec {
        guest_cid: 3,
        uds_path: "/somewhere/else.sock".into(),
    });
    p.create_with_spec(&src, &spec).unwrap();
    let vsock_of = |id: &ember_core::VmId| -> std::path::PathBuf {
        let cfg = p.with_client(id, |c| c.vm_config()).unwrap();
        cfg["vsock"]["uds_path"].as_str().unwrap().into()
    };
    assert_eq!(vsock_of(&src), p.vsock_path(&src).unwrap());
    assert!(
        p.vsock_path(&src)
            .unwrap()
            .starts_with(p.root().join("slots"))
    );
    p.start(&src).unwrap();
    wait_count_above(&p, &src, 0);
    p.pause(&src).unwrap();
    let snap = p
        .snapshot(
            &src,
            &SnapshotRequest {
                snapshot_id: SnapshotId::new("vs").unwrap(),
                stack: None,
            },
        )
        .unwrap();
    let mut paths = std::collections::HashSet::new();
    for i in 0..3 {
        let id = vm(&format!("vs-{i}"));
        p.create_with_spec(&id, &VmSpec::restore(snap.clone()))
            .unwrap();
        let path = p.vsock_path(&id).unwrap();
        assert_eq!(vsock_of(&id), path, "restored with its own socket");
        assert!(paths.insert(path));
    }
    let before = p.vsock_path(&vm("vs-0")).unwrap();
    p.rename(&vm("vs-0"), &vm("tenant-vs")).unwrap();
    assert_eq!(p.vsock_path(&vm("tenant-vs")).unwrap(), before);
    for v in p.list().unwrap() {
        p.destroy(&v.id).unwrap();
    }
    p.delete_snapshot(&snap.snapshot_id).unwrap();
    shutdown_and_check(&p);
}
