//! Supervision and concurrency over real VMM processes: a VMM killed with SIGKILL is noticed at
//! once (listener called, VM stopped) rather than at the next call; a call in flight on one VM
//! never holds up calls on another.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]

mod common;

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use ember_core::{VmError, VmProvider, VmQuery, VmSpec, VmStatus};
use ember_runtime::{ExitInfo, VmExit};

#[test]
fn sigkill_is_noticed_at_once() {
    let dir = short_tempdir();
    let p = provider(dir.path(), flavor(Kind::EmberVmm).unwrap(), 2);
    let stack = probe_stack("kill");
    let snap = make_template(&p, "src", "k", &stack, "ember.report=10");
    p.destroy(&vm("src")).unwrap();

    let (tx, rx) = mpsc::channel::<VmExit>();
    let tx = Mutex::new(tx);
    let listener = p.add_exit_listener(Arc::new(move |e: &VmExit| {
        let _ = tx.lock().unwrap().send(e.clone());
    }));
    let victim = vm("victim");
    let bystander = vm("bystander");
    p.create_with_spec(&victim, &VmSpec::restore(snap.clone()))
        .unwrap();
    p.create_with_spec(&bystander, &VmSpec::restore(snap.clone()))
        .unwrap();
    // Renamed after restore: the report names the VM's current id.
    let victim = {
        let new = vm("victim-renamed");
        p.rename(&victim, &new).unwrap();
        new
    };
    let pid = p.pid(&victim).unwrap();
    // The restored guest reports its counter on its console every 10 ticks.
    let console = p.console_log(&victim).unwrap();
    let t0 = std::time::Instant::now();
    while !std::fs::read_to_string(&console)
        .unwrap_or_default()
        .contains("count=")
    {
        assert!(
            t0.elapsed() < DEFAULT_TIMEOUT,
            "no count line on the console"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();

    // No call is made on the VM: the report comes from the supervisor alone.
    let exit = rx.recv_timeout(DEFAULT_TIMEOUT).expect("the death report");
    assert_eq!(exit.id, victim);
    assert_eq!(exit.pid, pid);
    assert_eq!(exit.exit, ExitInfo::Signal(libc::SIGKILL));
    // What the guest printed last comes with the report (its slot's files are gone by now).
    assert!(
        exit.console_tail.contains("count="),
        "{:?}",
        exit.console_tail
    );
    assert_eq!(p.get(&victim).unwrap().status, VmStatus::Stopped);
    assert!(!alive(pid));
    // The other VM is untouched; calls on the dead one fail clearly.
    assert_eq!(p.get(&bystander).unwrap().status, VmStatus::Running);
    assert!(matches!(
        p.pause(&victim).unwrap_err(),
        VmError::InvalidTransition {
            from: VmStatus::Stopped,
            ..
        }
    ));
    // Destroy of a dead VM cleans up; intentional ends are not reported as deaths.
    p.destroy(&victim).unwrap();
    let bpid = p.pid(&bystander).unwrap();
    p.destroy(&bystander).unwrap();
    wait_gone(&[bpid]);
    assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
    assert!(p.remove_exit_listener(listener));
    p.delete_snapshot(&snap.snapshot_id).unwrap();
    shutdown_and_check(&p);
}

#[test]
fn a_spare_that_dies_is_replaced() {
    let dir = short_tempdir();
    let p = provider(dir.path(), flavor(Kind::EmberVmm).unwrap(), 2);
    let pids = wait_for(DEFAULT_TIMEOUT, "two ready spares", || {
        let s = p.stats();
        (s.spares.ready == 2).then(|| p.process_ids())
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pids[0] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_for(DEFAULT_TIMEOUT, "the dead spare to be replaced", || {
        let s = p.stats();
        (s.spares.ready == 2 && !p.process_ids().contains(&pids[0]) && s.spares.spawned >= 3)
            .then_some(())
    });
    // And creates still work.
    let id = vm("after");
    p.create_with_spec(&id, &probe_spec("ember.report=10"))
        .unwrap();
    p.destroy(&id).unwrap();
    shutdown_and_check(&p);
}

#[test]
fn a_call_in_flight_on_one_vm_does_not_hold_up_another() {
    let dir = short_tempdir();
    let p = provider(dir.path(), flavor(Kind::EmberVmm).unwrap(), 2);
    let stack = probe_stack("conc");
    let snap = make_template(&p, "src", "c", &stack, "ember.report=10");
    let a = vm("a");
    let b = vm("b");
    p.create_with_spec(&a, &VmSpec::restore(snap.clone()))
        .unwrap();
    p.create_with_spec(&b, &VmSpec::restore(snap.clone()))
        .unwrap();

    // Hold A's operation lock (as a slow call on A would) until told to let go.
    let (entered_tx, entered_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let holder = {
        let p = Arc::clone(&p);
        let a = a.clone();
        std::thread::spawn(move || {
            p.with_client(&a, |_client| {
                entered_tx.send(()).unwrap();
                release_rx.recv().unwrap();
                Ok(())
            })
            .unwrap();
        })
    };
    entered_rx.recv().unwrap();

    // Everything on B, queries, creates and destroys of other VMs complete meanwhile.
    let (done_tx, done_rx) = mpsc::channel();
    let worker = {
        let p = Arc::clone(&p);
        let (b, snap) = (b.clone(), snap.clone());
        std::thread::spawn(move || {
            p.pause(&b).unwrap();
            p.resume(&b).unwrap();
            let c = vm("c");
            p.rename(&b, &c).unwrap();
            assert_eq!(p.get(&vm("a")).unwrap().status, VmStatus::Running);
            assert_eq!(p.list().unwrap().len(), 3);
            let d = vm("d");
            p.create_with_spec(&d, &VmSpec::restore(snap)).unwrap();
            p.destroy(&d).unwrap();
            p.destroy(&c).unwrap();
            done_tx.send(()).unwrap();
        })
    };
    done_rx
        .recv_timeout(DEFAULT_TIMEOUT)
        .expect("calls on other VMs finished while A was busy");
    worker.join().unwrap();
    // A destroy does not wait for A's busy call either.
    p.destroy(&a).unwrap();
    assert!(matches!(p.get(&a).unwrap_err(), VmError::NotFound { .. }));
    release_tx.send(()).unwrap();
    holder.join().unwrap();
    p.destroy(&vm("src")).unwrap();
    p.delete_snapshot(&snap.snapshot_id).unwrap();
    shutdown_and_check(&p);
}
