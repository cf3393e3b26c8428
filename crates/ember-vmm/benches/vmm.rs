//! ember-vmm benchmarks on real KVM with the probe guest. Run with `cargo bench -p ember-vmm`
//! (release build of the binary); prints one JSON object per result:
//! `{"bench": ..., "unit": ..., "n": ..., "p50": ..., "p90": ..., "p99": ..., "min": ..., "max": ...}`.
//!
//! - `cold_boot.process_start_to_banner`: spawn -> banner line read from the console pipe;
//! - `cold_boot.process_start_to_banner_written`: spawn -> the VMM wrote the banner's newline
//!   (without the reader's per-byte pipe wake-ups); `cold_boot.process_start_to_main`: exec;
//! - `cold_boot.main_to_vcpu_run`: inside the VMM, `main` -> BSP about to enter KVM_RUN;
//! - `snapshot_create.client` / `.vmm`: `PUT /snapshot/create` of a paused 128 MiB probe VM;
//! - `restore.vmm`: inside the VMM, `/snapshot/load` request received -> BSP about to run, into
//!   spare processes started ahead of time (as the pool keeps them);
//! - `restore.client`: request sent -> 204 received (VM running);
//! - `restore.process_start_to_first_output` (read by the client) and `..._written` (written
//!   by the VMM): spawn -> first console line after the restore (probe ticking at 2 kHz);
//! - `restore_eager.vmm`: as `restore.vmm` with the memory file copied (`ember_eager_load`);
//! - `restore.throughput`: restores per second into 20 pre-spawned processes, 2 client threads;
//! - `restore.spawn_and_restore_throughput`: the same with the process start on the path;
//! - `memory.private_per_idle_vm` (KiB, /proc smaps_rollup Private_*) and
//!   `memory.pss_per_idle_vm`, over 20 restored idle VMs (KVM's kernel-side memory, ~0.6 MB per
//!   VM on these hosts, is not visible per process and not included).
//!
//! Under `cargo test` (no `--bench` argument) it only checks that it starts.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::panic
)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ember_test_support::{
    ApiClient, DEFAULT_TIMEOUT, VmmProcess, private_memory_kib, smaps_rollup_kib,
};
use ember_vmm::timing::now_ns;

fn vmm_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ember-vmm"))
}

fn report(bench: &str, unit: &str, mut v: Vec<f64>) {
    if v.is_empty() {
        return;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| v[(((v.len() - 1) as f64) * p).round() as usize];
    let obj = serde_json::json!({
        "bench": bench, "unit": unit, "n": v.len(),
        "p50": round(pct(0.5)), "p90": round(pct(0.9)), "p99": round(pct(0.99)),
        "min": round(v[0]), "max": round(v[v.len() - 1]),
    });
    println!("{obj}");
}

fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn probe_config(dir: &Path, boot_args: &str, mem_mib: u32) -> PathBuf {
    let p = dir.join(format!(
        "cfg-{}.json",
        boot_args.replace([' ', '=', '.'], "_")
    ));
    let json = serde_json::json!({
        "boot-source": { "kernel_image_path": ember_probe_image::probe_elf_path(), "boot_args": boot_args },
        "machine-config": { "vcpu_count": 1, "mem_size_mib": mem_mib }
    });
    std::fs::write(&p, json.to_string()).unwrap();
    p
}

fn spawn(dir: &Path, name: &str, extra: &[&str]) -> VmmProcess {
    let sock = dir.join(format!("{name}.sock"));
    let _ = std::fs::remove_file(&sock);
    VmmProcess::spawn(vmm_bin(), &sock, extra)
}

fn timings(c: &mut ApiClient) -> serde_json::Value {
    serde_json::from_str(&c.get("/ember/timings").body).unwrap()
}

fn load_body(snap: &Path, mem: &Path, eager: bool) -> String {
    serde_json::json!({
        "snapshot_path": snap,
        "mem_backend": { "backend_type": "File", "backend_path": mem },
        "resume_vm": true,
        "ember_eager_load": eager,
    })
    .to_string()
}

fn cold_boot(dir: &Path, n: usize) {
    let cfg = probe_config(dir, "ember.report=0", 128);
    let (mut wall, mut written, mut to_main, mut inside) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        let t0 = Instant::now();
        let spawn_ns = now_ns() as f64;
        let vmm = spawn(
            dir,
            &format!("boot{i}"),
            &["--config-file", cfg.to_str().unwrap()],
        );
        vmm.wait_for_line(DEFAULT_TIMEOUT, "banner", 0, |l| {
            l.starts_with("ember-probe: boot_id=")
        });
        wall.push(t0.elapsed().as_secs_f64() * 1e6);
        let t = timings(&mut vmm.client());
        let main = t["main_start_ns"].as_f64().unwrap();
        let boot = &t["boot"];
        let end = boot["start_ns"].as_f64().unwrap() + boot["total_us"].as_f64().unwrap() * 1000.0;
        inside.push((end - main) / 1000.0);
        to_main.push((main - spawn_ns) / 1000.0);
        written.push((t["console_first_line_ns"].as_f64().unwrap() - spawn_ns) / 1000.0);
    }
    report("cold_boot.process_start_to_banner", "us", wall);
    report("cold_boot.process_start_to_banner_written", "us", written);
    report("cold_boot.process_start_to_main", "us", to_main);
    report("cold_boot.main_to_vcpu_run", "us", inside);
}

/// Boots a probe and snapshots it; returns (snapshot, memory file).
fn make_snapshot(dir: &Path, name: &str, boot_args: &str) -> (PathBuf, PathBuf) {
    let cfg = probe_config(dir, boot_args, 128);
    let vmm = spawn(
        dir,
        &format!("{name}-src"),
        &["--config-file", cfg.to_str().unwrap()],
    );
    vmm.wait_for_line(DEFAULT_TIMEOUT, "ticking", 0, |l| l.contains("ticking"));
    let mut c = vmm.client();
    assert_eq!(c.patch("/vm", r#"{"state": "Paused"}"#).status, 204);
    let (snap, mem) = (
        dir.join(format!("{name}.snap")),
        dir.join(format!("{name}.mem")),
    );
    let body = serde_json::json!({ "snapshot_path": snap, "mem_file_path": mem }).to_string();
    assert_eq!(c.put("/snapshot/create", &body).status, 204);
    (snap, mem)
}

fn snapshot_create(dir: &Path, n: usize) {
    let cfg = probe_config(dir, "ember.report=0", 128);
    let vmm = spawn(dir, "snapsrc", &["--config-file", cfg.to_str().unwrap()]);
    vmm.wait_for_line(DEFAULT_TIMEOUT, "ticking", 0, |l| l.contains("ticking"));
    let mut c = vmm.client();
    let (mut client, mut inside) = (Vec::new(), Vec::new());
    for i in 0..n {
        assert_eq!(c.patch("/vm", r#"{"state": "Paused"}"#).status, 204);
        let body = serde_json::json!({
            "snapshot_path": dir.join(format!("bench{}.snap", i % 2)),
            "mem_file_path": dir.join(format!("bench{}.mem", i % 2)),
        })
        .to_string();
        let t0 = Instant::now();
        assert_eq!(c.put("/snapshot/create", &body).status, 204);
        client.push(t0.elapsed().as_secs_f64() * 1e6);
        inside.push(
            timings(&mut c)["snapshot_create"]["total_us"]
                .as_f64()
                .unwrap(),
        );
        assert_eq!(c.patch("/vm", r#"{"state": "Resumed"}"#).status, 204);
    }
    report("snapshot_create.client", "us", client);
    report("snapshot_create.vmm", "us", inside);
}

/// Restores into `n` spare processes spawned ahead of time (as the pool keeps them), one at a
/// time; each restored VM is paused afterwards so it does not compete for the CPU.
fn restore(dir: &Path, n: usize, snap: &Path, mem: &Path, eager: bool) {
    let name = if eager { "restore_eager" } else { "restore" };
    let (mut inside, mut client) = (Vec::new(), Vec::new());
    let body = load_body(snap, mem, eager);
    let mut spares: Vec<(VmmProcess, ApiClient)> = (0..n)
        .map(|i| {
            let vmm = spawn(dir, &format!("{name}{i}"), &["--serial-out", "none"]);
            let mut c = vmm.client();
            assert_eq!(c.get("/").status, 200);
            (vmm, c)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(50));
    for (_, c) in spares.iter_mut() {
        let t0 = Instant::now();
        let r = c.put("/snapshot/load", &body);
        client.push(t0.elapsed().as_secs_f64() * 1e6);
        assert_eq!(r.status, 204, "{r:?}");
        inside.push(timings(c)["restore"]["total_us"].as_f64().unwrap());
        assert_eq!(c.patch("/vm", r#"{"state": "Paused"}"#).status, 204);
    }
    report(&format!("{name}.vmm"), "us", inside);
    report(&format!("{name}.client"), "us", client);
    for (mut v, _) in spares {
        v.kill();
    }
}

fn restore_first_output(dir: &Path, n: usize, snap: &Path, mem: &Path) {
    let body = load_body(snap, mem, false);
    let (mut wall, mut written) = (Vec::new(), Vec::new());
    for i in 0..n {
        let t0 = Instant::now();
        let spawn_ns = now_ns() as f64;
        let mut vmm = spawn(dir, &format!("first{i}"), &[]);
        let mut c = vmm.client();
        assert_eq!(c.put("/snapshot/load", &body).status, 204);
        vmm.wait_for_line(DEFAULT_TIMEOUT, "a count line", 0, |l| l.contains("count="));
        wall.push(t0.elapsed().as_secs_f64() * 1e6);
        let t = timings(&mut c);
        written.push((t["console_first_line_ns"].as_f64().unwrap() - spawn_ns) / 1000.0);
        vmm.kill();
    }
    report("restore.process_start_to_first_output", "us", wall);
    report(
        "restore.process_start_to_first_output_written",
        "us",
        written,
    );
}

fn restore_throughput(dir: &Path, snap: &Path, mem: &Path) {
    const N: usize = 20;
    let body = load_body(snap, mem, false);
    let mut procs: Vec<(VmmProcess, ApiClient)> = (0..N)
        .map(|i| {
            let vmm = spawn(dir, &format!("tp{i}"), &["--serial-out", "none"]);
            let mut c = vmm.client();
            assert_eq!(c.get("/").status, 200);
            (vmm, c)
        })
        .collect();
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for chunk in procs.chunks_mut(N / 2) {
            let body = &body;
            s.spawn(move || {
                for (_, c) in chunk.iter_mut() {
                    assert_eq!(c.put("/snapshot/load", body).status, 204);
                }
            });
        }
    });
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({ "bench": "restore.throughput", "unit": "restores/s", "n": N, "value": round(N as f64 / secs) })
    );
    for (mut v, _) in procs {
        v.kill();
    }
}

/// Spawn a process and restore into it, back to back from 2 client threads: the refill rate
/// when no spare process is ready (process start on the path).
fn spawn_and_restore_throughput(dir: &Path, snap: &Path, mem: &Path) {
    const N: usize = 20;
    let body = load_body(snap, mem, false);
    let t0 = Instant::now();
    let procs: Vec<VmmProcess> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|t| {
                let body = &body;
                s.spawn(move || {
                    (0..N / 2)
                        .map(|i| {
                            let vmm = spawn(dir, &format!("sr{t}-{i}"), &["--serial-out", "none"]);
                            let mut c = vmm.client();
                            assert_eq!(c.put("/snapshot/load", body).status, 204);
                            assert_eq!(c.patch("/vm", r#"{"state": "Paused"}"#).status, 204);
                            vmm
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({ "bench": "restore.spawn_and_restore_throughput", "unit": "restores/s", "n": N, "value": round(N as f64 / secs) })
    );
    for mut v in procs {
        v.kill();
    }
}

fn memory(dir: &Path, snap: &Path, mem: &Path) {
    const N: usize = 20;
    let body = load_body(snap, mem, false);
    let mut vms = Vec::new();
    for i in 0..N {
        let vmm = spawn(dir, &format!("mem{i}"), &["--serial-out", "none"]);
        let mut c = vmm.client();
        assert_eq!(c.put("/snapshot/load", &body).status, 204);
        vms.push((vmm, c));
    }
    // Let every guest run a few hundred ticks so touched pages are counted.
    std::thread::sleep(Duration::from_secs(2));
    let private: Vec<f64> = vms
        .iter()
        .map(|(v, _)| private_memory_kib(v.pid()).unwrap() as f64)
        .collect();
    let pss: Vec<f64> = vms
        .iter()
        .map(|(v, _)| smaps_rollup_kib(v.pid(), "Pss:").unwrap() as f64)
        .collect();
    report("memory.private_per_idle_vm", "KiB", private);
    report("memory.pss_per_idle_vm", "KiB", pss);
    for (mut v, _) in vms {
        v.kill();
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        assert!(vmm_bin().is_file());
        eprintln!("ember-vmm benches: run `cargo bench -p ember-vmm` to measure");
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("ember-vmm-bench")
        .tempdir()
        .unwrap();
    let d = dir.path();
    cold_boot(d, 30);
    snapshot_create(d, 20);
    let (quiet_snap, quiet_mem) = make_snapshot(d, "quiet", "ember.report=0");
    let (chatty_snap, chatty_mem) = make_snapshot(d, "chatty", "ember.hz=2000 ember.report=1");
    restore(d, 50, &quiet_snap, &quiet_mem, false);
    restore(d, 10, &quiet_snap, &quiet_mem, true);
    restore_first_output(d, 30, &chatty_snap, &chatty_mem);
    restore_throughput(d, &quiet_snap, &quiet_mem);
    spawn_and_restore_throughput(d, &quiet_snap, &quiet_mem);
    let (idle_snap, idle_mem) = make_snapshot(d, "idle", "ember.hz=100 ember.report=0");
    memory(d, &idle_snap, &idle_mem);
}
