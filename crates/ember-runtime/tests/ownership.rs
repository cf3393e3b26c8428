//! What outlives what: snapshots outlive the provider that took them (reloaded from disk by the
//! next one on the same root); VMM processes do not outlive the process that owns the provider,
//! even when it is killed without a chance to clean up.
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
    let snap = {
        let p = provider(dir.path(), flavor.clone(), 1);
        let snap = make_template(&p, "src", "keep", &stack, "ember.report=10");
        // The VM is left running: shutdown kills it; the snapshot stays.
        shutdown_and_check(&p);
        snap
    };
    let p = provider(dir.path(), flavor, 1);
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
