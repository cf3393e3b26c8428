//! Restart recovery with real processes standing in for VMMs: machines stored as starting, running,
//! paused or stopping are reported when the store is reopened, with what a supervisor needs; the
//! liveness check tells a live VMM from an exited one or a reused pid; the suggested plans, once
//! stored, clear the report.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};

use ember_store::{Liveness, MachineState, NetworkRequest, ProcessIdentity, RecoveryAction, Store};
use support::{config, machine, name, temp_db};

/// A long-lived process playing a VMM; killed and reaped on drop.
struct FakeVmm(Child);

impl FakeVmm {
    fn spawn() -> Self {
        FakeVmm(
            Command::new("sleep")
                .arg("300")
                .stdin(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }

    fn identity(&self) -> ProcessIdentity {
        ProcessIdentity::of(self.0.id()).unwrap()
    }

    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for FakeVmm {
    fn drop(&mut self) {
        self.kill();
    }
}

#[test]
fn reopened_store_reports_what_a_supervisor_needs() {
    let (dir, path) = temp_db();
    let run = dir.path().join("run");
    let store = Store::open(&path, config()).unwrap();

    let running = FakeVmm::spawn();
    let paused = FakeVmm::spawn();
    let mut crashed = FakeVmm::spawn();
    let stopping = FakeVmm::spawn();
    let me = ProcessIdentity::current().unwrap();
    let reused = ProcessIdentity {
        start_time: me.start_time + 1, // our pid, but "started" at another time
        ..me
    };

    let cases: Vec<(&str, MachineState, Option<ProcessIdentity>)> = vec![
        ("running", MachineState::Running, Some(running.identity())),
        ("paused", MachineState::Paused, Some(paused.identity())),
        ("crashed", MachineState::Running, Some(crashed.identity())),
        (
            "stopping",
            MachineState::Stopping,
            Some(stopping.identity()),
        ),
        ("starting-no-pid", MachineState::Starting, None),
        ("pid-reused", MachineState::Running, Some(reused)),
        ("created", MachineState::Created, None),
        ("stopped", MachineState::Stopped, None),
    ];
    for (n, state, vmm) in &cases {
        store
            .save(
                &name(n),
                &machine(&format!("vm-{n}")),
                NetworkRequest::Allocate,
            )
            .unwrap();
        let dir = run.join(n);
        store
            .update(&name(n), |m| {
                m.state = *state;
                m.vmm = vmm.clone();
                m.api_socket = Some(dir.join("api.sock"));
                m.vsock_uds = Some(dir.join("vsock.sock"));
                m.console_log = Some(dir.join("console.log"));
                m.run_dir = Some(dir.clone());
                Ok::<_, std::convert::Infallible>(())
            })
            .unwrap();
    }
    drop(store);

    // The daemon is gone; one VMM dies with it.
    crashed.kill();

    let store = Store::open(&path, config()).unwrap();
    let report = store.recovery_report();
    let by_name: BTreeMap<&str, _> = report
        .machines
        .iter()
        .map(|e| (e.name.as_str(), e))
        .collect();
    assert_eq!(
        by_name.keys().copied().collect::<Vec<_>>(),
        [
            "crashed",
            "paused",
            "pid-reused",
            "running",
            "starting-no-pid",
            "stopping"
        ],
        "created and stopped machines need no recovery"
    );

    // Everything needed to find and clean up each one is in the report.
    for (n, state, vmm) in &cases {
        let Some(entry) = by_name.get(n) else {
            continue;
        };
        let record = store.load(&name(n)).unwrap();
        assert_eq!(entry.last_state, *state);
        assert_eq!(&entry.vmm, vmm);
        assert_eq!(entry.vm_id, record.machine.vm_id);
        assert_eq!(entry.network, record.network);
        assert_eq!(
            entry.tap(),
            Some(record.network.as_ref().unwrap().tap.as_str())
        );
        assert_eq!(
            entry.vsock_cid(),
            Some(record.network.as_ref().unwrap().vsock_cid)
        );
        assert_eq!(
            entry.api_socket.as_deref(),
            Some(run.join(n).join("api.sock").as_path())
        );
        assert_eq!(entry.runtime_files().len(), 4);
        assert_eq!(entry.revision, record.revision);
    }

    let expected = [
        (
            "running",
            Some(Liveness::Alive),
            RecoveryAction::Readopt,
            MachineState::Running,
        ),
        (
            "paused",
            Some(Liveness::Alive),
            RecoveryAction::Readopt,
            MachineState::Paused,
        ),
        (
            "crashed",
            Some(Liveness::Exited),
            RecoveryAction::CleanUp,
            MachineState::Stopped,
        ),
        (
            "stopping",
            Some(Liveness::Alive),
            RecoveryAction::Terminate,
            MachineState::Stopped,
        ),
        (
            "starting-no-pid",
            None,
            RecoveryAction::CleanUp,
            MachineState::Stopped,
        ),
    ];
    for (n, liveness, action, after) in expected {
        let entry = by_name[n];
        let seen = entry.liveness().unwrap();
        assert_eq!(seen, liveness, "{n}");
        let plan = entry.plan(seen.as_ref());
        assert_eq!((plan.action, plan.state_after), (action, after), "{n}");
    }
    let reused_entry = by_name["pid-reused"];
    let seen = reused_entry.liveness().unwrap();
    assert!(matches!(seen, Some(Liveness::PidReused { .. })), "{seen:?}");
    assert_eq!(
        reused_entry.plan(seen.as_ref()).action,
        RecoveryAction::CleanUp
    );

    // The supervisor carries out the plans and stores the outcome, provided nobody changed the
    // record since the report was taken.
    let first = &report.machines[0];
    store
        .update(&first.name, |m| {
            m.console_log = None;
            Ok::<_, std::convert::Infallible>(())
        })
        .unwrap();
    let stale = store
        .update_at(&first.name, first.revision, |_| {
            Ok::<_, std::convert::Infallible>(())
        })
        .unwrap_err();
    assert!(
        matches!(stale.store_error(), Some(ember_store::StoreError::Stale { expected, found, .. }) if *found == expected + 1),
        "{stale:?}"
    );
    for entry in &report.machines {
        let plan = entry.plan(entry.liveness().unwrap().as_ref());
        let current = store.load(&entry.name).unwrap().revision;
        store
            .update_at(&entry.name, current, |m| {
                m.state = plan.state_after;
                Ok::<_, std::convert::Infallible>(())
            })
            .unwrap();
    }
    drop(store);
    let store = Store::open(&path, config()).unwrap();
    let left: Vec<_> = store
        .recovery_report()
        .machines
        .iter()
        .map(|e| e.name.to_string())
        .collect();
    assert_eq!(
        left,
        ["paused", "running"],
        "only the re-adopted machines are still live"
    );
    assert_eq!(
        store.scan_recovery().unwrap(),
        store.recovery_report().clone()
    );
}
