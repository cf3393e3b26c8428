//! vsock across snapshot/restore (Firecracker's behaviour): taking a snapshot resets open
//! connections, listening survives, a restored VM is reachable at the socket path given by
//! `vsock_override`, and its agent continues the original's uptime and boot id.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]

mod common;

use std::time::Duration;

use common::*;
use ember_agent_proto::{AgentClient, Exec};
use ember_probe_image::AGENT_PORT;

fn load_with_override(
    snap: &std::path::Path,
    mem: &std::path::Path,
    uds: &std::path::Path,
) -> String {
    serde_json::json!({
        "snapshot_path": snap,
        "mem_backend": { "backend_type": "File", "backend_path": mem },
        "resume_vm": true,
        "vsock_override": { "uds_path": uds },
    })
    .to_string()
}

#[test]
fn snapshot_resets_connections_and_restores_reachable() {
    let dir = tempdir();
    let d = dir.path();
    let uds1 = d.join("src.vsock");
    let vmm = spawn(d, "src", &[]);
    let mut c = vmm.client();
    boot_with_vsock(&mut c, 64, "ember.report=0", &uds1);
    let banner = wait_banner(&vmm);
    let mut open = agent(&uds1);
    let before = open.health().unwrap();

    pause(&mut c);
    let (snap, mem) = snapshot_paths(d, "v");
    let r = create_snapshot(&mut c, &snap, &mem);
    assert_eq!(r.status, 204, "{r:?}");
    let saved = ember_probe_image::state_from_mem_file(&mem)
        .unwrap()
        .unwrap();
    let saved_uptime = saved.counter * (1_000_000_000 / saved.hz);
    assert!(saved_uptime >= before.uptime_ns);

    // The open connection was reset by the snapshot.
    let err = open.ping().unwrap_err();
    eprintln!("old connection after the snapshot: {err}");

    // The source VM keeps listening once resumed.
    resume(&mut c);
    let mut again = agent(&uds1);
    again.ping().unwrap();
    assert_eq!(
        again.health().unwrap().boot_id,
        ember_probe_image::health_boot_id(banner.boot_id)
    );

    // A new process restores it at another socket path.
    let uds2 = d.join("restored.vsock");
    let restored = spawn(d, "restored", &[]);
    let mut rc = restored.client();
    let r = rc.put("/snapshot/load", &load_with_override(&snap, &mem, &uds2));
    assert_eq!(r.status, 204, "{r:?}\n{}", restored.stderr_text());
    let mut a = agent(&uds2);
    let h = a.health().unwrap();
    assert_eq!(h.boot_id, before.boot_id, "restored VM has another boot id");
    assert!(
        h.uptime_ns >= saved_uptime,
        "uptime {} restarted below the saved {saved_uptime}",
        h.uptime_ns
    );
    let out = a.exec(&Exec::new(&["echo", "restored"])).unwrap();
    assert_eq!(out.stdout, ember_probe_image::echo_output(&["restored"]));
    // Both VMs are reachable, each at its own path.
    again.ping().unwrap();
    let cfg: serde_json::Value = serde_json::from_str(&rc.get("/vm/config").body).unwrap();
    assert_eq!(cfg["vsock"]["uds_path"], uds2.to_str().unwrap());

    // A snapshot of the restored VM works the same way (snapshot chains).
    pause(&mut rc);
    let (snap2, mem2) = snapshot_paths(d, "v2");
    assert_eq!(create_snapshot(&mut rc, &snap2, &mem2).status, 204);
    assert!(a.ping().is_err());
    resume(&mut rc);
    agent(&uds2).ping().unwrap();
    let uds3 = d.join("third.vsock");
    let third = spawn(d, "third", &[]);
    let r = third
        .client()
        .put("/snapshot/load", &load_with_override(&snap2, &mem2, &uds3));
    assert_eq!(r.status, 204, "{r:?}");
    let h3 = agent(&uds3).health().unwrap();
    assert_eq!(h3.boot_id, before.boot_id);
    assert!(h3.uptime_ns >= h.uptime_ns);
}

#[test]
fn restore_into_a_taken_path_fails_cleanly() {
    let dir = tempdir();
    let d = dir.path();
    let uds = d.join("a.vsock");
    let vmm = spawn(d, "src", &[]);
    let mut c = vmm.client();
    boot_with_vsock(&mut c, 32, "ember.report=0", &uds);
    agent(&uds).health().unwrap();
    pause(&mut c);
    let (snap, mem) = snapshot_paths(d, "s");
    assert_eq!(create_snapshot(&mut c, &snap, &mem).status, 204);

    // Without an override the snapshot's own path is still taken by the source VM.
    let other = spawn(d, "other", &[]);
    let mut oc = other.client();
    let r = oc.put("/snapshot/load", &load_body(&snap, &mem, true));
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.fault_message().unwrap().contains("a.vsock"), "{r:?}");
    // The process can still load it elsewhere.
    let uds2 = d.join("b.vsock");
    let r = oc.put("/snapshot/load", &load_with_override(&snap, &mem, &uds2));
    assert_eq!(r.status, 204, "{r:?}");
    let mut a = AgentClient::connect(&uds2, AGENT_PORT, Duration::from_secs(30));
    if a.is_err() {
        a = Ok(agent(&uds2));
    }
    a.unwrap().ping().unwrap();
}
