//! Twenty VMs restored from one snapshot run at once, each costing under 1 MiB of private
//! memory (guest pages are shared copy-on-write through the memory file; the probe idles in
//! `hlt`).
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
    let (snap, mem, saved) = make_snapshot(dir.path(), "d", "ember.hz=20 ember.report=20", 0);
    let body = load_body(&snap, &mem, true);
    let mut vms = Vec::with_capacity(VMS);
    for i in 0..VMS {
        let vmm = spawn(dir.path(), &format!("vm{i}"), &["--serial-out", "-"]);
        let mut c = vmm.client();
        let r = c.put("/snapshot/load", &body);
        assert_eq!(r.status, 204, "VM {i}: {r:?}\n{}", vmm.stderr_text());
        vms.push((vmm, c));
    }
    // Every VM runs (prints a count past the snapshot's).
    for (vmm, _) in &vms {
        assert!(wait_count_above(vmm, saved, 0) > saved);
    }
    let mut worst = 0;
    for (i, (vmm, c)) in vms.iter_mut().enumerate() {
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
