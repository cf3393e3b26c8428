//! Twenty VMs restored from one snapshot run at once, each reachable through its own vsock
//! socket (`vsock_override`) and each costing under 1 MiB of private memory after answering
//! its agent (guest pages are shared copy-on-write through the memory file; the probe idles
//! in `hlt`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]

mod common;

use common::*;

const VMS: usize = 20;

#[test]
fn twenty_restores_share_memory() {
    let dir = tempdir();
    // Quiet guest: 20 Hz timer, a count line every 20 ticks.
    let (snap, mem, saved) = make_vsock_snapshot(dir.path(), "d", "ember.hz=20 ember.report=20");
    let mut vms = Vec::with_capacity(VMS);
    for i in 0..VMS {
        let vmm = spawn(dir.path(), &format!("vm{i}"), &["--serial-out", "-"]);
        let uds = dir.path().join(format!("vm{i}.vsock"));
        let mut c = vmm.client();
        let r = c.put("/snapshot/load", &load_body_vsock(&snap, &mem, &uds));
        assert_eq!(r.status, 204, "VM {i}: {r:?}\n{}", vmm.stderr_text());
        vms.push((vmm, c, uds));
    }
    // Every VM runs (prints a count past the snapshot's) and answers at its own socket,
    // each one the same guest (boot id) with its own generation after a Reseed.
    let mut boot_id = None;
    for (i, (vmm, _, uds)) in vms.iter().enumerate() {
        assert!(wait_count_above(vmm, saved, 0) > saved);
        let mut a = agent(uds);
        let h = a.health().unwrap();
        assert_eq!(*boot_id.get_or_insert(h.boot_id), h.boot_id);
        a.reseed(&ember_agent_proto::Reseed {
            generation: i as u64 + 1,
            wall_clock_ns: 1,
            entropy: &[i as u8; 16],
        })
        .unwrap();
    }
    for (i, (_, _, uds)) in vms.iter().enumerate() {
        assert_eq!(agent(uds).health().unwrap().generation, i as u64 + 1);
    }
    let mut worst = 0;
    for (i, (vmm, c, _)) in vms.iter_mut().enumerate() {
        let info: serde_json::Value = serde_json::from_str(&c.get("/").body).unwrap();
        assert_eq!(info["state"], "Running", "VM {i}");
        let kib = ember_test_support::private_memory_kib(vmm.pid()).unwrap();
        eprintln!("VM {i}: private memory {kib} KiB");
        worst = worst.max(kib);
    }
    assert!(
        worst < 1024,
        "a restored VM uses {worst} KiB of private memory"
    );
}
