//! Benchmark of ember-store (WAL): latency percentiles and throughput of a sandbox `update` (one
//! load-modify-write transaction) at both durabilities — fsynced (`Full`) and crash-safe for the
//! process (`Process`, no fsync) — an insert with a network allocation, `remove`, `load`, and
//! updates from two connections at once. Prints one JSON object with the CPU model and kernel.
//!
//! `cargo bench -p ember-store --bench update_latency` runs the full measurement; without
//! `--bench` (as under `cargo test --all-targets`) it runs a short smoke pass. The database lives
//! in `EMBER_STORE_BENCH_DIR`, or else in Cargo's target tmpdir, which is on a real disk; the
//! file system is reported because fsync on tmpfs costs nothing.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::collections::BTreeMap;
use std::time::SystemTime;

use ember_core::{
    Sandbox, SandboxId, SandboxState, SnapshotId, SnapshotInfo, StackKey, Template, TemplateName,
    TemplateSpec, TemplateState,
};
use ember_store::{Durability, Store, StoreConfig, StoreError};
use serde_json::{Value, json};

/// Latency samples of one operation.
struct Samples {
    durations: Vec<Duration>,
    wall: Duration,
}

impl Samples {
    fn json(mut self) -> Value {
        self.durations.sort();
        let n = self.durations.len();
        let pct = |p: f64| {
            let i = ((n as f64 * p).ceil() as usize).clamp(1, n) - 1;
            self.durations[i].as_secs_f64() * 1e6
        };
        let mean = self.durations.iter().sum::<Duration>().as_secs_f64() * 1e6 / n as f64;
        json!({
            "count": n,
            "p50_us": round(pct(0.50)),
            "p90_us": round(pct(0.90)),
            "p99_us": round(pct(0.99)),
            "max_us": round(pct(1.0)),
            "mean_us": round(mean),
            "throughput_per_s": round(n as f64 / self.wall.as_secs_f64()),
        })
    }
}

fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn stack() -> StackKey {
    StackKey::new("bench", "v1", 1, 128).unwrap_or_else(|e| panic!("{e}"))
}

fn seed(store: &Store) {
    let snap = SnapshotInfo {
        snapshot_id: SnapshotId::new("tpl-bench").unwrap_or_else(|e| panic!("{e}")),
        stack: Some(stack()),
        state_path: "/var/lib/ember/snapshots/tpl-bench/state".into(),
        mem_path: "/var/lib/ember/snapshots/tpl-bench/mem".into(),
        provider: "ember-vmm".into(),
        vmm_version: "0.1.0".into(),
        vcpu_count: 1,
        mem_size_mib: 128,
        state_len: 20_480,
        state_crc32: 1,
        mem_len: 128 << 20,
        vsock_cid: Some(3),
        network_interfaces: vec![],
        disks: vec![],
        source_vm: None,
        created_at: SystemTime::now(),
    };
    let template = Template {
        name: TemplateName::new("bench").unwrap_or_else(|e| panic!("{e}")),
        spec: TemplateSpec::probe(),
        stack: stack(),
        state: TemplateState::Ready,
        snapshot: Some(snap.snapshot_id.clone()),
        error: None,
        build: None,
        created_at: SystemTime::now(),
    };
    store
        .write::<_, StoreError>("seed", Durability::Full, |tx| {
            tx.insert(&snap)?;
            tx.insert(&template)
        })
        .unwrap_or_else(|e| panic!("{e}"));
}

fn id(i: usize) -> String {
    format!("bench-{i}")
}

fn sandbox(i: usize) -> Sandbox {
    Sandbox {
        id: SandboxId::new(id(i)).unwrap_or_else(|e| panic!("{e}")),
        template: TemplateName::new("bench").unwrap_or_else(|e| panic!("{e}")),
        stack: stack(),
        state: SandboxState::Running,
        labels: BTreeMap::from([("team".into(), format!("t{}", i % 7))]),
        env: BTreeMap::from([("LANG".into(), "C.UTF-8".into())]),
        timeout_secs: Some(300),
        deadline: Some(SystemTime::now()),
        created_at: SystemTime::now(),
        start: None,
        end: None,
        on_timeout: ember_core::OnTimeout::Kill,
        saved: None,
        access_token: None,
        network: None,
    }
}

fn insert(store: &Store, i: usize) -> Result<(), StoreError> {
    store.write("insert", Durability::Full, |tx| {
        tx.insert(&sandbox(i))?;
        tx.allocate_network(&id(i))?;
        Ok(())
    })
}

fn time<T>(samples: &mut Vec<Duration>, f: impl FnOnce() -> Result<T, StoreError>) -> T {
    let start = Instant::now();
    let out = f().unwrap_or_else(|e| panic!("{e}"));
    samples.push(start.elapsed());
    out
}

/// `n` updates round-robin over `count` sandboxes, flipping their state.
fn updates(store: &Store, count: usize, n: usize, offset: usize, d: Durability) -> Samples {
    let mut durations = Vec::with_capacity(n);
    let start = Instant::now();
    for k in 0..n {
        let target = id(offset + k % count);
        time(&mut durations, || {
            store.write("update", d, |tx| {
                tx.update::<Sandbox, StoreError>(&target, |s| {
                    s.state = if s.state == SandboxState::Running {
                        SandboxState::Paused
                    } else {
                        SandboxState::Running
                    };
                    Ok(())
                })
            })
        });
    }
    Samples {
        durations,
        wall: start.elapsed(),
    }
}

fn host() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| k.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    json!({ "cpu_model": cpu, "kernel": kernel })
}

fn filesystem(dir: &Path) -> String {
    use nix::sys::statfs::{self, FsType};
    let Ok(fs) = statfs::statfs(dir) else {
        return "unknown".into();
    };
    let t = fs.filesystem_type();
    let known: [(FsType, &str); 6] = [
        (statfs::EXT4_SUPER_MAGIC, "ext4"),
        (statfs::TMPFS_MAGIC, "tmpfs"),
        (statfs::XFS_SUPER_MAGIC, "xfs"),
        (statfs::BTRFS_SUPER_MAGIC, "btrfs"),
        (statfs::OVERLAYFS_SUPER_MAGIC, "overlayfs"),
        (statfs::NFS_SUPER_MAGIC, "nfs"),
    ];
    known
        .iter()
        .find(|(k, _)| *k == t)
        .map_or_else(|| format!("{t:?}"), |(_, n)| (*n).to_string())
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (machines, n_updates, n_saves) = if full {
        (200, 3000, 1000)
    } else {
        (20, 50, 20)
    };
    let base: PathBuf = std::env::var_os("EMBER_STORE_BENCH_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")), PathBuf::from);
    std::fs::create_dir_all(&base).unwrap_or_else(|e| panic!("{}: {e}", base.display()));
    let dir = tempfile::tempdir_in(&base).unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("bench.db");
    let store = Store::open(&path, StoreConfig::default()).unwrap_or_else(|e| panic!("{e}"));

    seed(&store);
    for i in 0..machines {
        insert(&store, i).unwrap_or_else(|e| panic!("{e}"));
    }
    let update = updates(&store, machines, n_updates, 0, Durability::Full);
    let update_process = updates(&store, machines, n_updates, 0, Durability::Process);

    let mut loads = Vec::with_capacity(n_updates);
    let start = Instant::now();
    for k in 0..n_updates {
        time(&mut loads, || store.load::<Sandbox>(&id(k % machines)));
    }
    let load = Samples {
        durations: loads,
        wall: start.elapsed(),
    };

    let mut saves = Vec::with_capacity(n_saves);
    let start = Instant::now();
    for i in machines..machines + n_saves {
        time(&mut saves, || insert(&store, i));
    }
    let save = Samples {
        durations: saves,
        wall: start.elapsed(),
    };
    let mut removes = Vec::with_capacity(n_saves);
    let start = Instant::now();
    for i in machines..machines + n_saves {
        time(&mut removes, || {
            store.write("remove", Durability::Full, |tx| {
                tx.remove::<Sandbox>(&id(i))?;
                tx.release_network(&id(i))
            })
        });
    }
    let remove = Samples {
        durations: removes,
        wall: start.elapsed(),
    };

    // Two connections (as two processes would have) updating disjoint sandboxes at once.
    let second =
        Arc::new(Store::open(&path, StoreConfig::default()).unwrap_or_else(|e| panic!("{e}")));
    let first = Arc::new(store);
    let half = machines / 2;
    let start = Instant::now();
    let handles: Vec<_> = [(first, 0), (second, half)]
        .into_iter()
        .map(|(s, offset)| {
            std::thread::spawn(move || {
                updates(&s, half, n_updates / 2, offset, Durability::Full).durations
            })
        })
        .collect();
    let mut both = Vec::new();
    for h in handles {
        both.extend(
            h.join()
                .unwrap_or_else(|_| panic!("writer thread panicked")),
        );
    }
    let contended = Samples {
        durations: both,
        wall: start.elapsed(),
    };

    let report = json!({
        "bench": "ember-store",
        "mode": if full { "full" } else { "smoke" },
        "host": host(),
        "journal_mode": "wal",
        "filesystem": filesystem(dir.path()),
        "sandboxes_in_store": machines,
        "update_full": update.json(),
        "update_process": update_process.json(),
        "update_two_writers": contended.json(),
        "save_with_allocation": save.json(),
        "remove": remove.json(),
        "load": load.json(),
    });
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{report:#}");
}
