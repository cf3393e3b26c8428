//! ember-runtime benchmarks: the VMM provider and the warm pool over real ember-vmm processes
//! on real KVM with the probe guest (128 MiB). Run with `cargo bench -p ember-runtime` (builds
//! ember-vmm in release); prints one JSON object per result:
//! `{"bench", "unit", "n", "p50", "p90", "p99", "min", "max"}` for distributions and
//! `{"bench", "unit", "n", "value"}` for rates and counts, with `"target"` where issue 6 sets
//! one.
//!
//! - `spawn.ready_sequential` / `spawn.ready_parallel4`: VMM process spawn -> API answering
//!   `GET /`, one process starting at a time / four at a time; `spawn.rate_parallel4`:
//!   spares made ready per second;
//! - `restore.client`: `create_with_spec` (restore, paused) into a ready spare, quiet machine;
//!   `restore.vmm`: the same restore inside ember-vmm (`GET /ember/timings`);
//! - `refill.prespawned`: pool refill rate from empty to depth 200 with every process already
//!   spawned (spawner replacing them concurrently); `refill.sustained`: the same with 8 spares,
//!   process starts included (the steady-state rate). Wall-clock rates swing with the other
//!   tenants of a shared host, so `..._cpu_per_vm` adds the CPU time one pooled VM cost (this
//!   process, the VMM processes, reaped children: process start, restore, replacement spare)
//!   and `..._capacity_2cores` the rate two otherwise idle cores would sustain at that cost;
//! - `handover.{get,rename,resume,pause}`: the provider calls of a handover, one at a time;
//! - `acquire.concurrent{1,8,32}`: 1, 8 and 32 threads acquiring 256 VMs from a pool filled
//!   to 256 (AliveValidator, no agent round trip; refill runs concurrently), latency measured
//!   by the pool; `..._wall` as seen by the caller; `acquire.paced32_at_160_per_s`: 32
//!   tenants each taking a VM every 200 ms (staggered) and destroying the previous one — a
//!   steady 160 acquires/s with refill and destroys running;
//! - `memory.*`: 50 idle pooled VMs (paused after restore) from /proc/<pid>/smaps: private
//!   memory beyond the guest's own copied pages (VMM process, the target), the guest's pages,
//!   the total, Pss (KVM's kernel-side memory, ~0.6 MB per VM on these hosts, is not visible
//!   per process and not included);
//! - `host.cpu_busy_before` / `_after`: how busy the (shared) host was around the run;
//! - `leftovers.processes` / `leftovers.files` after every provider shut down.
//!
//! Under `cargo test` (no `--bench` argument) it only checks that it starts.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::panic
)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use ember_core::{SnapshotRef, StackKey, VmId, VmProvider, VmQuery, VmSpec};
use ember_pool::{AliveValidator, BucketConfig, PoolSettings, Tenant, WarmPool};
use ember_runtime::{Flavor, ProviderConfig, SpareConfig, VmmProvider};

fn report(bench: &str, unit: &str, target: Option<&str>, mut v: Vec<f64>) {
    if v.is_empty() {
        return;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| v[(((v.len() - 1) as f64) * p).round() as usize];
    let mut obj = serde_json::json!({
        "bench": bench, "unit": unit, "n": v.len(),
        "p50": round(pct(0.5)), "p90": round(pct(0.9)), "p99": round(pct(0.99)),
        "min": round(v[0]), "max": round(v[v.len() - 1]),
    });
    if let Some(t) = target {
        obj["target"] = t.into();
    }
    println!("{obj}");
}

fn report_value(bench: &str, unit: &str, n: usize, value: f64, target: Option<&str>) {
    let mut obj =
        serde_json::json!({ "bench": bench, "unit": unit, "n": n, "value": round(value) });
    if let Some(t) = target {
        obj["target"] = t.into();
    }
    println!("{obj}");
}

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn new_provider(root: &Path, spares: SpareConfig) -> Arc<VmmProvider> {
    let mut config = ProviderConfig::new(root, Flavor::EmberVmm { binary: vmm_bin() });
    config.spares = spares;
    config.timeouts.spare_wait = Duration::from_secs(120);
    Arc::new(VmmProvider::new(config).unwrap())
}

fn spares(count: usize, max_starting: usize) -> SpareConfig {
    SpareConfig {
        count,
        max_starting,
        ..SpareConfig::default()
    }
}

/// Waits until `n` spares are ready and every killed process has been reaped.
fn settle(p: &VmmProvider, n: usize) {
    wait_for(Duration::from_secs(300), "spares to settle", || {
        let s = p.stats();
        (s.spares.ready >= n && s.spares.starting == 0 && s.processes == s.vms + s.spares.ready)
            .then_some(())
    });
}

/// A quiet probe template (no timer, no console output), restoring paused.
fn template(p: &VmmProvider, stack: &StackKey, sid: &str) -> SnapshotRef {
    let id = vm(&format!("tpl-{sid}"));
    p.create_with_spec(&id, &probe_spec("ember.hz=0 ember.report=0"))
        .unwrap();
    p.start(&id).unwrap();
    wait_console(p, &id, "the probe ticking", 0, |l| {
        l.contains("ember-probe: ticking")
    });
    p.pause(&id).unwrap();
    let mut snap = p
        .snapshot(
            &id,
            &ember_core::SnapshotRequest {
                snapshot_id: ember_core::SnapshotId::new(sid).unwrap(),
                stack: Some(stack.clone()),
            },
        )
        .unwrap();
    p.destroy(&id).unwrap();
    snap.resume = false;
    snap
}

fn close(p: Arc<VmmProvider>, snaps: &[&SnapshotRef]) {
    for s in snaps {
        p.delete_snapshot(&s.snapshot_id).unwrap();
    }
    p.shutdown();
}

fn spawn_bench(dir: &Path) {
    let p = new_provider(&dir.join("spawn-seq"), spares(40, 1));
    settle(&p, 40);
    let lat: Vec<f64> = p
        .stats()
        .spares
        .ready_latencies
        .into_iter()
        .map(ms)
        .collect();
    report("spawn.ready_sequential", "ms", None, lat);
    p.shutdown();

    let cpu0 = cpu_ms_of(&[]);
    let t0 = Instant::now();
    let p = new_provider(&dir.join("spawn-par"), spares(100, 4));
    settle(&p, 100);
    let secs = t0.elapsed().as_secs_f64();
    report_value(
        "spawn.cpu_per_spare",
        "ms",
        100,
        (cpu_ms(&p) - cpu0) / 100.0,
        None,
    );
    let lat: Vec<f64> = p
        .stats()
        .spares
        .ready_latencies
        .into_iter()
        .map(ms)
        .collect();
    report("spawn.ready_parallel4", "ms", None, lat);
    report_value("spawn.rate_parallel4", "spares/s", 100, 100.0 / secs, None);
    p.shutdown();
}

fn restore_bench(dir: &Path, n: usize) {
    let p = new_provider(&dir.join("restore"), spares(8, 4));
    let stack = probe_stack("restore");
    let snap = template(&p, &stack, "restore");
    let mut client = Vec::new();
    let mut vmm = Vec::new();
    let mut vmm_cpu = Vec::new();
    for i in 0..n {
        settle(&p, 8);
        let id = vm(&format!("r{i}"));
        let before: std::collections::HashMap<u32, f64> = p
            .process_ids()
            .into_iter()
            .map(|pid| (pid, cpu_ms_of(&[pid]) - cpu_ms_of(&[])))
            .collect();
        let t0 = Instant::now();
        p.create_with_spec(&id, &VmSpec::restore(snap.clone()))
            .unwrap();
        client.push(ms(t0.elapsed()));
        let pid = p.pid(&id).unwrap();
        if let Some(b) = before.get(&pid) {
            vmm_cpu.push(cpu_ms_of(&[pid]) - cpu_ms_of(&[]) - b);
        }
        let timings = p.with_client(&id, |c| c.ember_timings()).unwrap();
        if let Some(us) = timings["restore"]["total_us"].as_f64() {
            vmm.push(us / 1e3);
        }
        p.destroy(&id).unwrap();
    }
    report("restore.client", "ms", None, client);
    report("restore.vmm_process_cpu", "ms", None, vmm_cpu);
    report("restore.vmm", "ms", None, vmm);
    close(p, &[&snap]);
}

/// CPU time (ms) used so far by this process, its reaped children, and the live VMM processes
/// of `p` (from /proc/<pid>/task/*/schedstat).
fn cpu_ms(p: &VmmProvider) -> f64 {
    cpu_ms_of(&p.process_ids())
}

/// CPU time (ms) used so far by this process, its reaped children, and the processes `pids`.
fn cpu_ms_of(pids: &[u32]) -> f64 {
    let usage = |who| {
        use nix::sys::time::TimeValLike;
        nix::sys::resource::getrusage(who)
            .map(|ru| {
                (ru.user_time().num_microseconds() + ru.system_time().num_microseconds()) as f64
                    / 1e3
            })
            .unwrap_or(0.0)
    };
    let vmms: f64 = pids
        .iter()
        .map(|pid| {
            let mut ns = 0u64;
            if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) {
                for t in rd.flatten() {
                    let text =
                        std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
                    ns += text
                        .split_whitespace()
                        .next()
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(0);
                }
            }
            ns as f64 / 1e6
        })
        .sum();
    use nix::sys::resource::UsageWho;
    usage(UsageWho::RUSAGE_SELF) + usage(UsageWho::RUSAGE_CHILDREN) + vmms
}

fn pool_settings(workers: usize) -> PoolSettings {
    PoolSettings {
        tick: Duration::from_millis(100),
        workers,
        ..PoolSettings::default()
    }
}

fn refill_bench(dir: &Path, name: &str, spare_count: usize, n: usize, parallelism: usize) {
    let p = new_provider(&dir.join(name), spares(spare_count, 4));
    let stack = probe_stack(name);
    let snap = template(&p, &stack, name);
    settle(&p, spare_count);
    let pool = WarmPool::start(
        Arc::clone(&p),
        Arc::new(AliveValidator),
        pool_settings(parallelism),
    )
    .unwrap();
    let cpu0 = cpu_ms(&p);
    let t0 = Instant::now();
    pool.register(
        stack.clone(),
        snap.clone(),
        BucketConfig {
            min_depth: n,
            max_depth: n,
            refill_parallelism: parallelism,
            ..BucketConfig::default()
        },
    )
    .unwrap();
    wait_for(Duration::from_secs(300), "the pool to fill", || {
        (pool.depth(&stack) == Some(n)).then_some(())
    });
    let secs = t0.elapsed().as_secs_f64();
    // Every process started during the fill is counted, including the spares that replace the
    // ones used: wait for them to be ready so their start-up is in.
    settle(&p, spare_count);
    let per_vm = (cpu_ms(&p) - cpu0) / n as f64;
    report_value(&format!("refill.{name}_cpu_per_vm"), "ms", n, per_vm, None);
    report_value(
        &format!("refill.{name}_capacity_2cores"),
        "restores/s",
        n,
        2000.0 / per_vm,
        Some(">= 200 restores/s on 2 cores"),
    );
    report_value(
        &format!("refill.{name}"),
        "restores/s",
        n,
        n as f64 / secs,
        Some(">= 200 restores/s on 2 cores"),
    );
    let m = pool.metrics();
    let st = p.stats().spares;
    eprintln!(
        "{name}: pool spawn latency p50 <= {:?} p99 <= {:?}; spares waited {}; spawner thread cpu {:?} for {} spawns, {:?} in spawn calls",
        m.spawn_latency.quantile_upper_bound(0.5),
        m.spawn_latency.quantile_upper_bound(0.99),
        st.waited,
        st.spawner_cpu,
        st.spawned,
        st.spawn_call_total,
    );
    pool.shutdown();
    drop(pool);
    close(p, &[&snap]);
}

/// Pool-measured latencies, caller-measured latencies, and the VMs handed out.
type Samples = (Vec<f64>, Vec<f64>, Vec<VmId>);

fn acquire_bench(dir: &Path, depth: usize, threads: usize) {
    let p = new_provider(&dir.join("acquire"), spares(16, 4));
    let stack = probe_stack("acquire");
    let snap = template(&p, &stack, "acquire");
    let pool = Arc::new(
        WarmPool::start(Arc::clone(&p), Arc::new(AliveValidator), pool_settings(4)).unwrap(),
    );
    pool.register(
        stack.clone(),
        snap.clone(),
        BucketConfig {
            min_depth: depth,
            max_depth: depth,
            refill_parallelism: 4,
            ..BucketConfig::default()
        },
    )
    .unwrap();
    wait_for(Duration::from_secs(300), "the pool to fill", || {
        (pool.depth(&stack) == Some(depth)).then_some(())
    });
    settle(&p, 16);
    let per_thread = depth / threads;
    let results: Arc<Mutex<Samples>> = Arc::default();
    let start = Arc::new(std::sync::Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (pool, stack, results, start) = (
                Arc::clone(&pool),
                stack.clone(),
                Arc::clone(&results),
                Arc::clone(&start),
            );
            std::thread::spawn(move || {
                start.wait();
                for i in 0..per_thread {
                    let tenant = Tenant::new(&format!("t{t}-{i}")).unwrap();
                    let t0 = Instant::now();
                    let got = pool.acquire(&stack, &tenant).unwrap();
                    let wall = t0.elapsed();
                    let mut r = results.lock().unwrap();
                    r.0.push(ms(got.latency));
                    r.1.push(ms(wall));
                    r.2.push(got.vm_id);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let (pool_lat, wall, ids) = std::mem::take(&mut *results.lock().unwrap());
    let target =
        (threads == 32).then_some("<= 2 ms p50, <= 10 ms p99 (without the agent round trip)");
    report(
        &format!("acquire.concurrent{threads}"),
        "ms",
        target,
        pool_lat,
    );
    report(
        &format!("acquire.concurrent{threads}_wall"),
        "ms",
        None,
        wall,
    );
    pool.shutdown();
    for id in ids {
        p.destroy(&id).unwrap();
    }
    close(p, &[&snap]);
}

/// `threads` tenants, each acquiring a VM every `interval` (staggered), keeping it until its
/// next acquire and then destroying it: a steady load at a rate the refill sustains, as
/// opposed to the closed-loop bursts above.
fn acquire_paced(dir: &Path, threads: usize, rounds: usize, interval: Duration) {
    let p = new_provider(&dir.join("paced"), spares(16, 4));
    let stack = probe_stack("paced");
    let snap = template(&p, &stack, "paced");
    let depth = 64;
    let pool = Arc::new(
        WarmPool::start(Arc::clone(&p), Arc::new(AliveValidator), pool_settings(4)).unwrap(),
    );
    pool.register(
        stack.clone(),
        snap.clone(),
        BucketConfig {
            min_depth: depth,
            max_depth: depth,
            refill_parallelism: 4,
            ..BucketConfig::default()
        },
    )
    .unwrap();
    wait_for(Duration::from_secs(300), "the pool to fill", || {
        (pool.depth(&stack) == Some(depth)).then_some(())
    });
    settle(&p, 16);
    let lat: Arc<Mutex<Vec<f64>>> = Arc::default();
    let t_start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (pool, p, stack, lat) = (
                Arc::clone(&pool),
                Arc::clone(&p),
                stack.clone(),
                Arc::clone(&lat),
            );
            std::thread::spawn(move || {
                let offset = interval * t as u32 / threads as u32;
                let mut held: Option<VmId> = None;
                for r in 0..rounds {
                    let due = t_start + offset + interval * r as u32;
                    std::thread::sleep(due.saturating_duration_since(Instant::now()));
                    let tenant = Tenant::new(&format!("p{t}-{r}")).unwrap();
                    let got = pool
                        .acquire_timeout(&stack, &tenant, Duration::from_secs(10))
                        .unwrap();
                    lat.lock().unwrap().push(ms(got.latency));
                    if let Some(old) = held.replace(got.vm_id) {
                        p.destroy(&old).unwrap();
                    }
                }
                if let Some(old) = held {
                    p.destroy(&old).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let rate = (threads * rounds) as f64 / t_start.elapsed().as_secs_f64();
    let lat = std::mem::take(&mut *lat.lock().unwrap());
    report(
        &format!(
            "acquire.paced{threads}_at_{}_per_s",
            (threads as f64 / interval.as_secs_f64()).round()
        ),
        "ms",
        None,
        lat,
    );
    report_value(
        &format!("acquire.paced{threads}_rate"),
        "acquires/s",
        threads * rounds,
        rate,
        None,
    );
    pool.shutdown();
    drop(pool);
    close(p, &[&snap]);
}

/// Private_Clean + Private_Dirty (KiB) of each mapping of `pid`, split into the mapping of
/// `guest_file` (the guest's copied pages) and everything else.
fn private_split(pid: u32, guest_file: &Path) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let guest = guest_file.to_string_lossy().into_owned();
    let (mut guest_kib, mut other_kib) = (0, 0);
    let mut in_guest = false;
    for line in text.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            in_guest = line.ends_with(&guest);
            continue;
        }
        if let Some(rest) = line
            .strip_prefix("Private_Clean:")
            .or_else(|| line.strip_prefix("Private_Dirty:"))
        {
            let kib: u64 = rest.split_whitespace().next().unwrap().parse().unwrap();
            if in_guest {
                guest_kib += kib;
            } else {
                other_kib += kib;
            }
        }
    }
    (guest_kib, other_kib)
}

fn memory_bench(dir: &Path, n: usize) {
    let p = new_provider(&dir.join("memory"), spares(4, 4));
    let stack = probe_stack("memory");
    let snap = template(&p, &stack, "memory");
    settle(&p, 4);
    // Spare processes themselves (a pre-created VM shell, no guest memory yet).
    let spare_private: Vec<f64> = p
        .process_ids()
        .iter()
        .filter_map(|pid| ember_test_support::private_memory_kib(*pid))
        .map(|k| k as f64)
        .collect();
    report(
        "memory.private_per_spare_process",
        "KiB",
        None,
        spare_private,
    );
    let pool = WarmPool::start(Arc::clone(&p), Arc::new(AliveValidator), pool_settings(2)).unwrap();
    pool.register(
        stack.clone(),
        snap.clone(),
        BucketConfig {
            min_depth: n,
            max_depth: n,
            refill_parallelism: 2,
            ..BucketConfig::default()
        },
    )
    .unwrap();
    wait_for(Duration::from_secs(300), "the pool to fill", || {
        (pool.depth(&stack) == Some(n)).then_some(())
    });
    // The spares used up have been replaced (same count as before): what changed is n idle
    // pooled VMs. Let them sit idle a moment.
    settle(&p, 4);
    std::thread::sleep(Duration::from_secs(2));
    let views = p.list().unwrap();
    let (mut beyond, mut guest, mut total, mut pss) = (vec![], vec![], vec![], vec![]);
    for v in &views {
        let pid = p.pid(&v.id).unwrap();
        let (g, o) = private_split(pid, &snap.mem_path);
        guest.push(g as f64);
        beyond.push(o as f64);
        total.push((g + o) as f64);
        pss.push(ember_test_support::smaps_rollup_kib(pid, "Pss:").unwrap() as f64);
    }
    report(
        "memory.private_beyond_guest_per_idle_vm",
        "KiB",
        Some("<= 2048 KiB per idle pooled VM beyond guest-touched pages"),
        beyond,
    );
    report("memory.private_guest_pages_per_idle_vm", "KiB", None, guest);
    report("memory.private_total_per_idle_vm", "KiB", None, total);
    report("memory.pss_per_idle_vm", "KiB", None, pss);
    pool.shutdown();
    drop(pool);
    close(p, &[&snap]);
}

/// Percent of the host's CPU time that was busy over `window` (other tenants of a shared
/// machine make every figure here noisy; this says how noisy).
fn host_busy_percent(window: Duration) -> f64 {
    let sample = || {
        let text = std::fs::read_to_string("/proc/stat").unwrap();
        let cpu: Vec<u64> = text
            .lines()
            .next()
            .unwrap()
            .split_whitespace()
            .skip(1)
            .map(|v| v.parse().unwrap())
            .collect();
        let idle = cpu[3] + cpu[4];
        (cpu.iter().sum::<u64>(), idle)
    };
    let (t0, i0) = sample();
    std::thread::sleep(window);
    let (t1, i1) = sample();
    let total = (t1 - t0).max(1) as f64;
    100.0 * (1.0 - (i1 - i0) as f64 / total)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("ember-runtime benches: run `cargo bench -p ember-runtime` to measure");
        return;
    }
    let dir = short_tempdir();
    let d = dir.path();
    report_value(
        "host.cpu_busy_before",
        "%",
        0,
        host_busy_percent(Duration::from_secs(2)),
        None,
    );
    // `EMBER_BENCH_ONLY=<section>` runs one section (spawn, restore, refill, handover,
    // acquire, memory) for quick comparisons.
    let only = std::env::var("EMBER_BENCH_ONLY").ok();
    let run = |name: &str| only.as_deref().is_none_or(|o| o == name);
    if !run("all") && only.is_some() {
        if run("spawn") {
            spawn_bench(d);
        }
        if run("restore") {
            restore_bench(d, 50);
        }
        if run("refill") {
            refill_bench(d, "prespawned", 200, 200, 2);
            refill_bench(d, "sustained", 8, 200, 2);
        }
        if run("handover") {
            handover_parts(d);
        }
        if run("acquire") {
            for threads in [1, 8, 32] {
                acquire_bench(d, 256, threads);
            }
            acquire_paced(d, 32, 20, Duration::from_millis(200));
        }
        if run("memory") {
            memory_bench(d, 50);
        }
        return;
    }
    spawn_bench(d);
    restore_bench(d, 50);
    refill_bench(d, "prespawned", 200, 200, 2);
    refill_bench(d, "sustained", 8, 200, 2);
    handover_parts(d);
    for threads in [1, 8, 32] {
        acquire_bench(d, 256, threads);
    }
    acquire_paced(d, 32, 20, Duration::from_millis(200));
    memory_bench(d, 50);
    report_value(
        "host.cpu_busy_after",
        "%",
        0,
        host_busy_percent(Duration::from_secs(2)),
        None,
    );
    let procs = children_named("ember-vmm").len();
    let files = files_under(d).len();
    report_value("leftovers.processes", "count", 0, procs as f64, Some("0"));
    report_value("leftovers.files", "count", 0, files as f64, Some("0"));
}

/// The provider calls a handover makes, one VM at a time: lookup, rename, resume (and pause,
/// for comparison).
fn handover_parts(dir: &Path) {
    let p = new_provider(&dir.join("parts"), spares(16, 4));
    let stack = probe_stack("parts");
    let snap = template(&p, &stack, "parts");
    let n = 100;
    let mut ids = Vec::new();
    for i in 0..n {
        let id = vm(&format!("d{i}"));
        p.create_with_spec(&id, &VmSpec::restore(snap.clone()))
            .unwrap();
        ids.push(id);
    }
    settle(&p, 16);
    let (mut get, mut ren, mut res, mut pau) = (vec![], vec![], vec![], vec![]);
    for (i, id) in ids.iter().enumerate() {
        let t0 = Instant::now();
        p.get(id).unwrap();
        get.push(ms(t0.elapsed()));
        let to = vm(&format!("t{i}"));
        let t0 = Instant::now();
        p.rename(id, &to).unwrap();
        ren.push(ms(t0.elapsed()));
        let t0 = Instant::now();
        p.resume(&to).unwrap();
        res.push(ms(t0.elapsed()));
        let t0 = Instant::now();
        p.pause(&to).unwrap();
        pau.push(ms(t0.elapsed()));
    }
    report("handover.get", "ms", None, get);
    report("handover.rename", "ms", None, ren);
    report("handover.resume", "ms", None, res);
    report("handover.pause", "ms", None, pau);
    for id in p.list().unwrap() {
        p.destroy(&id.id).unwrap();
    }
    close(p, &[&snap]);
}
