use std::thread;
use std::time::Duration;

use super::*;

fn id(s: &str) -> VmId {
    VmId::new(s).unwrap()
}

fn sid(s: &str) -> SnapshotId {
    SnapshotId::new(s).unwrap()
}

fn stack() -> StackKey {
    StackKey::new("alpha", "1.0.0", 1, 128).unwrap()
}

/// Boots a template VM, pauses it and snapshots it for `stack()`.
fn template(p: &InMemoryVmProvider, snap: &str) -> SnapshotRef {
    let tpl = id(&format!("tpl-{snap}"));
    p.create(&tpl).unwrap();
    p.start(&tpl).unwrap();
    p.pause(&tpl).unwrap();
    p.snapshot(
        &tpl,
        &SnapshotRequest {
            snapshot_id: sid(snap),
            stack: Some(stack()),
        },
    )
    .unwrap()
}

#[test]
fn full_lifecycle() {
    let p = InMemoryVmProvider::new();
    let vm = id("vm-1");
    assert_eq!(p.create(&vm).unwrap().status, VmStatus::Created);
    assert_eq!(p.start(&vm).unwrap().status, VmStatus::Running);
    assert_eq!(p.pause(&vm).unwrap().status, VmStatus::Paused);
    assert_eq!(p.resume(&vm).unwrap().status, VmStatus::Running);
    assert_eq!(p.stop(&vm).unwrap().status, VmStatus::Stopped);
    p.destroy(&vm).unwrap();
    assert_eq!(p.get(&vm).unwrap().status, VmStatus::Destroyed);
    assert_eq!(p.live_count(), 0);
}

#[test]
fn invalid_transitions_name_from_and_to() {
    let p = InMemoryVmProvider::new();
    let vm = id("vm-1");
    p.create(&vm).unwrap();
    match p.pause(&vm).unwrap_err() {
        VmError::InvalidTransition { from, to, .. } => {
            assert_eq!((from, to), (VmStatus::Created, VmStatus::Paused));
        }
        e => panic!("unexpected {e:?}"),
    }
    p.start(&vm).unwrap();
    assert!(matches!(
        p.start(&vm).unwrap_err(),
        VmError::InvalidTransition {
            from: VmStatus::Running,
            to: VmStatus::Running,
            ..
        }
    ));
    p.stop(&vm).unwrap();
    assert!(matches!(
        p.start(&vm).unwrap_err(),
        VmError::InvalidTransition {
            from: VmStatus::Stopped,
            ..
        }
    ));
    p.destroy(&vm).unwrap();
    assert!(matches!(
        p.resume(&vm).unwrap_err(),
        VmError::NotFound { .. }
    ));
    assert!(matches!(
        p.destroy(&vm).unwrap_err(),
        VmError::NotFound { .. }
    ));
}

#[test]
fn duplicate_create_is_already_exists_and_destroyed_ids_are_reusable() {
    let p = InMemoryVmProvider::new();
    let vm = id("vm-1");
    p.create(&vm).unwrap();
    assert!(matches!(
        p.create(&vm).unwrap_err(),
        VmError::AlreadyExists {
            kind: ResourceKind::Vm,
            ..
        }
    ));
    p.destroy(&vm).unwrap();
    assert_eq!(p.create(&vm).unwrap().status, VmStatus::Created);
}

#[test]
fn restore_honours_resume_flag_and_records_origin() {
    let p = InMemoryVmProvider::new();
    let snap = template(&p, "s1");
    let running = p
        .create_with_spec(&id("r1"), &VmSpec::restore(snap.clone()))
        .unwrap();
    assert_eq!(running.status, VmStatus::Running);
    assert_eq!(running.stack, Some(stack()));
    assert_eq!(running.restored_from, Some(sid("s1")));
    let mut paused_ref = snap;
    paused_ref.resume = false;
    let paused = p
        .create_with_spec(&id("r2"), &VmSpec::restore(paused_ref))
        .unwrap();
    assert_eq!(paused.status, VmStatus::Paused);
}

#[test]
fn restore_of_unknown_snapshot_is_not_found() {
    let p = InMemoryVmProvider::new();
    let snap = SnapshotRef::new(sid("ghost"), None, "/s".into(), "/m".into());
    let err = p
        .create_with_spec(&id("r1"), &VmSpec::restore(snap))
        .unwrap_err();
    assert!(matches!(
        err,
        VmError::NotFound {
            kind: ResourceKind::Snapshot,
            ..
        }
    ));
    assert_eq!(p.live_count(), 0, "a failed create leaves nothing behind");
}

#[test]
fn snapshot_needs_paused_and_outlives_its_vm() {
    let p = InMemoryVmProvider::new();
    let vm = id("tpl");
    p.create(&vm).unwrap();
    p.start(&vm).unwrap();
    let req = SnapshotRequest {
        snapshot_id: sid("s1"),
        stack: Some(stack()),
    };
    assert!(matches!(
        p.snapshot(&vm, &req).unwrap_err(),
        VmError::InvalidState {
            status: VmStatus::Running,
            required: VmStatus::Paused,
            ..
        }
    ));
    p.pause(&vm).unwrap();
    let snap = p.snapshot(&vm, &req).unwrap();
    assert!(matches!(
        p.snapshot(&vm, &req).unwrap_err(),
        VmError::AlreadyExists { .. }
    ));
    assert_eq!(p.get(&vm).unwrap().snapshots, vec![sid("s1")]);
    p.destroy(&vm).unwrap();
    assert_eq!(p.list_snapshots().unwrap(), vec![snap.clone()]);
    let restored = p
        .create_with_spec(&id("r"), &VmSpec::restore(snap))
        .unwrap();
    assert_eq!(restored.status, VmStatus::Running);
    p.delete_snapshot(&sid("s1")).unwrap();
    assert!(p.list_snapshots().unwrap().is_empty());
    assert_eq!(p.get(&id("r")).unwrap().status, VmStatus::Running);
}

#[test]
fn rename_moves_the_live_vm_atomically() {
    let p = InMemoryVmProvider::new();
    let snap = template(&p, "s1");
    let warm = id("warm-1");
    p.create_with_spec(&warm, &VmSpec::restore(snap)).unwrap();
    p.mark_unhealthy(&warm, "flaky").unwrap();
    let view = p.rename(&warm, &id("tenant-a")).unwrap();
    assert_eq!(view.id, id("tenant-a"));
    assert_eq!(view.status, VmStatus::Running);
    assert!(matches!(
        p.get(&warm).unwrap_err(),
        VmError::NotFound { .. }
    ));
    assert_eq!(
        p.unhealthy_reason(&id("tenant-a")).unwrap().as_deref(),
        Some("flaky"),
        "the same VM moved, state and all"
    );
    // Renaming onto a live VM fails and changes nothing.
    p.create(&id("other")).unwrap();
    assert!(matches!(
        p.rename(&id("other"), &id("tenant-a")).unwrap_err(),
        VmError::AlreadyExists { .. }
    ));
    assert_eq!(p.get(&id("other")).unwrap().status, VmStatus::Created);
    // Renaming onto a destroyed id works.
    p.destroy(&id("tenant-a")).unwrap();
    p.rename(&id("other"), &id("tenant-a")).unwrap();
    assert_eq!(p.get(&id("tenant-a")).unwrap().status, VmStatus::Created);
}

#[test]
fn invalid_spec_is_rejected_before_anything_happens() {
    let p = InMemoryVmProvider::new();
    let spec = VmSpec {
        vcpu_count: 0,
        ..VmSpec::default()
    };
    let err = p.create_with_spec(&id("vm"), &spec).unwrap_err();
    assert!(matches!(err, VmError::InvalidSpec { ref field, .. } if field == "vcpu_count"));
    assert_eq!(p.calls(Operation::Create), 0);
}

#[test]
fn fail_nth_create_is_deterministic() {
    let p = InMemoryVmProvider::new();
    p.fail_nth(Operation::Create, 3);
    let results: Vec<bool> = (0..5)
        .map(|i| p.create(&id(&format!("vm-{i}"))).is_ok())
        .collect();
    assert_eq!(results, [true, true, false, true, true]);
    let err = p.create(&id("vm-x")).map(|_| ()).and_then(|_| {
        p.inject(Operation::Create, FaultPlan::fail_all());
        p.create(&id("vm-y")).map(|_| ())
    });
    let err = err.unwrap_err();
    assert!(err.is_provider_failure());
    assert!(crate::error_chain(&err).contains("injected fault: call 1 of create"));
    p.clear_faults();
    p.create(&id("vm-y")).unwrap();
    assert_eq!(p.calls(Operation::Create), 8);
}

#[test]
fn held_call_on_one_vm_does_not_block_others() {
    let p = InMemoryVmProvider::new();
    p.create(&id("slow")).unwrap();
    p.create(&id("fast")).unwrap();
    let gate = Gate::new();
    p.inject(Operation::Start, FaultPlan::hold(gate.clone()));
    let slow = {
        let p = p.clone();
        thread::spawn(move || p.start(&id("slow")))
    };
    while gate.waiting() == 0 {
        thread::sleep(Duration::from_millis(1));
    }
    // While a start is stuck in the provider, other VMs are fully usable.
    p.create(&id("third")).unwrap();
    p.stop(&id("fast")).unwrap();
    assert_eq!(p.get(&id("fast")).unwrap().status, VmStatus::Stopped);
    assert!(!slow.is_finished());
    gate.open();
    assert_eq!(slow.join().unwrap().unwrap().status, VmStatus::Running);
}

#[test]
fn crash_and_health() {
    let p = InMemoryVmProvider::new();
    let vm = id("vm");
    p.create(&vm).unwrap();
    p.start(&vm).unwrap();
    assert_eq!(p.unhealthy_reason(&vm).unwrap(), None);
    p.crash(&vm).unwrap();
    assert_eq!(p.get(&vm).unwrap().status, VmStatus::Stopped);
    assert!(p.unhealthy_reason(&vm).unwrap().unwrap().contains("died"));
}

#[test]
fn network_overrides_at_restore_and_live() {
    let p = InMemoryVmProvider::new();
    let mut snap = template(&p, "s1");
    let o = |i: &str, t: &str| NetworkOverride {
        iface_id: i.into(),
        host_dev_name: t.into(),
    };
    snap.network_overrides = vec![o("eth0", "tap-pool")];
    let vm = id("vm");
    p.create_with_spec(&vm, &VmSpec::restore(snap)).unwrap();
    assert_eq!(p.network_of(&vm).unwrap(), vec![o("eth0", "tap-pool")]);
    p.update_network(&vm, &[o("eth0", "tap-tenant")]).unwrap();
    assert_eq!(p.network_of(&vm).unwrap(), vec![o("eth0", "tap-tenant")]);
    p.set_capabilities(Capabilities::default());
    assert!(matches!(
        p.update_network(&vm, &[]).unwrap_err(),
        VmError::Unsupported { .. }
    ));
}

#[test]
fn concurrent_creates_and_destroys_stay_consistent() {
    let p = InMemoryVmProvider::new();
    let snap = template(&p, "s1");
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let p = p.clone();
            let snap = snap.clone();
            thread::spawn(move || {
                for i in 0..200 {
                    let vm = id(&format!("t{t}-{i}"));
                    p.create_with_spec(&vm, &VmSpec::restore(snap.clone()))
                        .unwrap();
                    if i % 2 == 0 {
                        p.destroy(&vm).unwrap();
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    // 8 threads x 100 kept + the template.
    assert_eq!(p.live_count(), 8 * 100 + 1);
}
