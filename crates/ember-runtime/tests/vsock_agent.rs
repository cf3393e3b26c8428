//! The vsock path design end to end: each VM's hybrid-vsock socket (in its slot, given to the
//! VMM by `PUT /vsock` at boot and `vsock_override` at restore) reaches that VM's guest agent,
//! for a booted VM, for every copy restored from its snapshot, and across a rename.
//!
//! Needs a probe guest that speaks the agent protocol; when the probe built here does not
//! answer (the agent is still being written), the test prints a note and stops.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]

mod common;

use std::time::Duration;

use common::*;
use ember_agent_proto::AgentClient;
use ember_core::{SnapshotId, SnapshotRequest, VmProvider, VmQuery, VmSpec, VsockSpec};

const PORT: u32 = ember_probe_image::AGENT_PORT;

#[test]
fn every_vm_answers_on_its_own_vsock_socket() {
    let dir = short_tempdir();
    let p = provider(dir.path(), flavor(Kind::EmberVmm).unwrap(), 3);
    let src = vm("agent-src");
    let mut spec = probe_spec("ember.report=0");
    spec.vsock = Some(VsockSpec {
        guest_cid: 3,
        uds_path: "/unused".into(),
    });
    p.create_with_spec(&src, &spec).unwrap();
    p.start(&src).unwrap();
    let path = p.vsock_path(&src).unwrap();
    let first = ember_test_support::try_wait_for(Duration::from_secs(10), || {
        AgentClient::connect(&path, PORT, Duration::from_secs(2)).ok()
    });
    let Some(mut agent) = first else {
        eprintln!(
            "note: the probe guest built here does not answer the agent protocol yet; skipping"
        );
        p.destroy(&src).unwrap();
        shutdown_and_check(&p);
        return;
    };
    let boot_id = agent.health().unwrap().boot_id;
    drop(agent);

    p.pause(&src).unwrap();
    let snap = p
        .snapshot(
            &src,
            &SnapshotRequest {
                snapshot_id: SnapshotId::new("agent").unwrap(),
                stack: None,
            },
        )
        .unwrap();
    p.destroy(&src).unwrap();
    let copies: Vec<_> = (0..3).map(|i| vm(&format!("copy-{i}"))).collect();
    for id in &copies {
        p.create_with_spec(id, &VmSpec::restore(snap.clone()))
            .unwrap();
    }
    let tenant = vm("tenant-agent");
    p.rename(&copies[0], &tenant).unwrap();
    let ids = [&tenant, &copies[1], &copies[2]];
    for (i, id) in ids.iter().enumerate() {
        let path = p.vsock_path(id).unwrap();
        let mut agent = wait_for(DEFAULT_TIMEOUT, &format!("the agent of {id}"), || {
            AgentClient::connect(&path, PORT, Duration::from_secs(2)).ok()
        });
        let h = agent.health().unwrap();
        assert_eq!(h.boot_id, boot_id, "{id} is a copy of the same guest");
        // Give each copy its own generation, through its own socket.
        agent.reseed_fresh(10 + i as u64).unwrap();
    }
    // Each socket reaches its own VM: every copy kept the generation sent to it.
    for (i, id) in ids.iter().enumerate() {
        let mut again =
            AgentClient::connect(p.vsock_path(id).unwrap(), PORT, DEFAULT_TIMEOUT).unwrap();
        assert_eq!(again.health().unwrap().generation, 10 + i as u64, "{id}");
    }
    for v in p.list().unwrap() {
        p.destroy(&v.id).unwrap();
    }
    p.delete_snapshot(&snap.snapshot_id).unwrap();
    shutdown_and_check(&p);
}
