//! Agent-over-vsock benchmarks on real KVM with the probe guest, on VMs restored from a
//! snapshot (as the pool hands them out). Run with `cargo bench -p ember-vmm --bench vsock`;
//! prints one JSON object per result (same shape as `benches/vmm.rs`):
//!
//! - `vsock.ping_rtt`: Ping round trip host -> guest agent -> host on one open connection;
//! - `vsock.health_rtt`: the same for Health;
//! - `vsock.exec_echo_rtt`: Exec `echo` round trip; `vsock.exec_echo_throughput`
//!   (requests/s, one connection, sequential) and `vsock.exec_echo_throughput_8conns`
//!   (8 connections from 8 threads);
//! - `vsock.connect_hello_health`: Unix connect + `CONNECT 52` handshake + Hello + Health on a
//!   fresh connection (what the pool's validator pays);
//! - `vsock.restore_to_first_health`: `/snapshot/load` sent into a spare process -> first
//!   Health answered (new connection; includes the guest handling the transport reset);
//! - `vsock.ping_rtt_20vms`: Ping round trip with 20 restored VMs idling beside it;
//! - `vsock.connect_hello_health_32_concurrent`: 32 threads, each on its own restored VM,
//!   each repeatedly connecting and calling Health (the pool validator under load);
//! - `vsock.connect_reseed_exec_32_concurrent`: the same with Hello, Reseed and an Exec
//!   `echo` on the fresh connection (a tenant's hand-over and first call).
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

use ember_agent_proto::{AgentClient, Exec};
use ember_probe_image::AGENT_PORT;
use ember_test_support::{DEFAULT_TIMEOUT, VmmProcess, wait_for};

fn vmm_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ember-vmm"))
}

fn report(bench: &str, unit: &str, mut v: Vec<f64>) {
    if v.is_empty() {
        return;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| v[(((v.len() - 1) as f64) * p).round() as usize];
    let r = |x: f64| (x * 10.0).round() / 10.0;
    let obj = serde_json::json!({
        "bench": bench, "unit": unit, "n": v.len(),
        "p50": r(pct(0.5)), "p90": r(pct(0.9)), "p99": r(pct(0.99)),
        "min": r(v[0]), "max": r(v[v.len() - 1]),
    });
    println!("{obj}");
}

fn report_rate(bench: &str, per_sec: f64, n: usize) {
    let obj = serde_json::json!({
        "bench": bench, "unit": "per_s", "n": n, "value": (per_sec * 10.0).round() / 10.0,
    });
    println!("{obj}");
}

fn spawn(dir: &Path, name: &str, extra: &[&str]) -> VmmProcess {
    let sock = dir.join(format!("{name}.sock"));
    let _ = std::fs::remove_file(&sock);
    VmmProcess::spawn(vmm_bin(), &sock, extra)
}

fn connect(uds: &Path) -> AgentClient {
    wait_for(DEFAULT_TIMEOUT, "the agent", || {
        AgentClient::connect(uds, AGENT_PORT, Duration::from_secs(5)).ok()
    })
}

/// Boots a probe with vsock, waits for its agent, snapshots it.
fn make_template(dir: &Path) -> (PathBuf, PathBuf) {
    let uds = dir.join("tmpl.vsock");
    let cfg = dir.join("tmpl.json");
    // EMBER_BENCH_BOOT_ARGS overrides the probe's command line (e.g. "ember.hz=10
    // ember.report=0" for a pool template whose idle VMs tick less).
    let args = std::env::var("EMBER_BENCH_BOOT_ARGS").unwrap_or_else(|_| "ember.report=0".into());
    let json = serde_json::json!({
        "boot-source": { "kernel_image_path": ember_probe_image::probe_elf_path(), "boot_args": args },
        "machine-config": { "vcpu_count": 1, "mem_size_mib": 128 },
        "vsock": { "guest_cid": 3, "uds_path": uds },
    });
    std::fs::write(&cfg, json.to_string()).unwrap();
    let vmm = spawn(dir, "tmpl", &["--config-file", cfg.to_str().unwrap()]);
    connect(&uds).health().unwrap();
    let mut c = vmm.client();
    assert_eq!(c.patch("/vm", r#"{"state": "Paused"}"#).status, 204);
    let (snap, mem) = (dir.join("tmpl.snap"), dir.join("tmpl.mem"));
    let body = serde_json::json!({ "snapshot_path": snap, "mem_file_path": mem }).to_string();
    assert_eq!(c.put("/snapshot/create", &body).status, 204);
    (snap, mem)
}

fn load_body(snap: &Path, mem: &Path, uds: &Path) -> String {
    serde_json::json!({
        "snapshot_path": snap,
        "mem_backend": { "backend_type": "File", "backend_path": mem },
        "resume_vm": true,
        "vsock_override": { "uds_path": uds },
    })
    .to_string()
}

struct Restored {
    vmm: VmmProcess,
    uds: PathBuf,
}

fn restore(dir: &Path, name: &str, snap: &Path, mem: &Path) -> Restored {
    let vmm = spawn(dir, name, &["--serial-out", "none"]);
    let uds = dir.join(format!("{name}.vsock"));
    let r = vmm
        .client()
        .put("/snapshot/load", &load_body(snap, mem, &uds));
    assert_eq!(r.status, 204, "{r:?}");
    Restored { vmm, uds }
}

fn rtt(a: &mut AgentClient, n: usize, mut call: impl FnMut(&mut AgentClient)) -> Vec<f64> {
    for _ in 0..20 {
        call(a);
    }
    (0..n)
        .map(|_| {
            let t = Instant::now();
            call(a);
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect()
}

fn round_trips(vm: &Restored) {
    let mut a = connect(&vm.uds);
    report(
        "vsock.ping_rtt",
        "us",
        rtt(&mut a, 2000, |a| a.ping().unwrap()),
    );
    report(
        "vsock.health_rtt",
        "us",
        rtt(&mut a, 1000, |a| {
            a.health().unwrap();
        }),
    );
    let echo = Exec::new(&["echo", "hello", "from", "the", "host"]);
    report(
        "vsock.exec_echo_rtt",
        "us",
        rtt(&mut a, 1000, |a| {
            a.exec(&echo).unwrap();
        }),
    );
    let n = 3000;
    let t = Instant::now();
    for _ in 0..n {
        a.exec(&echo).unwrap();
    }
    report_rate(
        "vsock.exec_echo_throughput",
        n as f64 / t.elapsed().as_secs_f64(),
        n,
    );
    let per = 500;
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                let mut a = connect(&vm.uds);
                for _ in 0..per {
                    a.exec(&echo).unwrap();
                }
            });
        }
    });
    report_rate(
        "vsock.exec_echo_throughput_8conns",
        (8 * per) as f64 / t.elapsed().as_secs_f64(),
        8 * per,
    );
    let v: Vec<f64> = (0..300)
        .map(|_| {
            let t = Instant::now();
            let mut a = AgentClient::connect(&vm.uds, AGENT_PORT, Duration::from_secs(5)).unwrap();
            a.health().unwrap();
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    report("vsock.connect_hello_health", "us", v);
}

fn restore_to_first_health(dir: &Path, snap: &Path, mem: &Path, n: usize) {
    let mut v = Vec::new();
    for i in 0..n {
        let vmm = spawn(dir, &format!("rh{i}"), &["--serial-out", "none"]);
        let uds = dir.join(format!("rh{i}.vsock"));
        let mut c = vmm.client();
        assert_eq!(c.get("/").status, 200);
        std::thread::sleep(Duration::from_millis(20));
        let t = Instant::now();
        let r = c.put("/snapshot/load", &load_body(snap, mem, &uds));
        assert_eq!(r.status, 204, "{r:?}");
        let mut a = connect(&uds);
        a.health().unwrap();
        v.push(t.elapsed().as_secs_f64() * 1e6);
        drop(vmm);
    }
    report("vsock.restore_to_first_health", "us", v);
}

/// CPU time (us) of a live process's threads by thread name (`/proc/<pid>/task/*/schedstat`).
fn thread_cpu_us(pid: u32) -> std::collections::HashMap<String, f64> {
    let mut out = std::collections::HashMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        let name = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let ns: f64 = std::fs::read_to_string(t.path().join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
            .unwrap_or(0.0);
        *out.entry(name.trim().to_string()).or_insert(0.0) += ns / 1000.0;
    }
    out
}

/// CPU time (us) of this process, exited threads included (`/proc/self/stat`, 10 ms ticks).
fn own_cpu_us() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rfind(')').map(|i| &stat[i + 2..]).unwrap_or("");
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    (f.get(11).unwrap_or(&0.0) + f.get(12).unwrap_or(&0.0)) * 10_000.0
}

/// CPU time (us) by role: the client (this process), vCPU threads, device threads, the
/// rest of the VMMs.
fn cpu_of(vms: &[Restored]) -> std::collections::HashMap<String, f64> {
    let mut total = std::collections::HashMap::new();
    total.insert("client".to_string(), own_cpu_us());
    for vm in vms {
        for (k, v) in thread_cpu_us(vm.vmm.pid()) {
            let k = match k.as_str() {
                k if k.starts_with("vcpu") => "vcpu",
                "virtio" => "virtio",
                _ => "vmm_other",
            };
            *total.entry(k.to_string()).or_insert(0.0) += v;
        }
    }
    total
}

fn concurrent(vms: &[Restored]) {
    let rounds = 20;
    let run = |f: &(dyn Fn(&Path) + Sync)| -> Vec<f64> {
        std::thread::scope(|s| {
            let handles: Vec<_> = vms
                .iter()
                .map(|vm| {
                    s.spawn(move || {
                        (0..rounds)
                            .map(|_| {
                                let t = Instant::now();
                                f(&vm.uds);
                                t.elapsed().as_secs_f64() * 1e6
                            })
                            .collect::<Vec<f64>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        })
    };
    let health = |uds: &Path| {
        let mut a = AgentClient::connect(uds, AGENT_PORT, Duration::from_secs(10)).unwrap();
        a.health().unwrap();
    };
    let before = cpu_of(vms);
    let lat = run(&health);
    let after = cpu_of(vms);
    let ops = lat.len() as f64;
    report("vsock.connect_hello_health_32_concurrent", "us", lat);
    let mut per_op: Vec<(String, f64)> = after
        .iter()
        .map(|(k, v)| (k.clone(), (v - before.get(k).copied().unwrap_or(0.0)) / ops))
        .collect();
    per_op.sort_by(|a, b| a.0.cmp(&b.0));
    let obj: serde_json::Map<String, serde_json::Value> = per_op
        .into_iter()
        .map(|(k, v)| (k, serde_json::json!((v * 10.0).round() / 10.0)))
        .collect();
    println!(
        "{}",
        serde_json::json!({"bench": "vsock.connect_hello_health_cpu_per_op", "unit": "us", "by_thread": obj})
    );
    let generation = std::sync::atomic::AtomicU64::new(1);
    let hand_over = |uds: &Path| {
        let mut a = AgentClient::connect(uds, AGENT_PORT, Duration::from_secs(10)).unwrap();
        a.reseed(&ember_agent_proto::Reseed {
            generation: generation.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            wall_clock_ns: 1,
            entropy: &[7u8; 32],
        })
        .unwrap();
        a.exec(&Exec::new(&["echo", "tenant"])).unwrap();
    };
    report(
        "vsock.connect_reseed_exec_32_concurrent",
        "us",
        run(&hand_over),
    );
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        assert!(vmm_bin().is_file());
        eprintln!("ember-vmm vsock benches: run `cargo bench -p ember-vmm --bench vsock`");
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("ember-vsock-bench")
        .tempdir()
        .unwrap();
    let d = dir.path();
    // `cargo bench -p ember-vmm --bench vsock -- concurrent` runs only that part.
    let only_concurrent = std::env::args().any(|a| a == "concurrent");
    let (snap, mem) = make_template(d);
    if only_concurrent {
        return run_concurrent(d, &snap, &mem);
    }
    let vm = restore(d, "main", &snap, &mem);
    round_trips(&vm);
    restore_to_first_health(d, &snap, &mem, 30);
    let others: Vec<Restored> = (0..20)
        .map(|i| restore(d, &format!("idle{i}"), &snap, &mem))
        .collect();
    for o in &others {
        connect(&o.uds).health().unwrap();
    }
    let mut a = connect(&vm.uds);
    report(
        "vsock.ping_rtt_20vms",
        "us",
        rtt(&mut a, 1000, |a| a.ping().unwrap()),
    );
    drop(others);
    drop(vm.vmm);
    run_concurrent(d, &snap, &mem);
}

fn run_concurrent(d: &Path, snap: &Path, mem: &Path) {
    let vms: Vec<Restored> = (0..32)
        .map(|i| restore(d, &format!("c{i}"), snap, mem))
        .collect();
    for v in &vms {
        connect(&v.uds).health().unwrap();
    }
    concurrent(&vms);
}
