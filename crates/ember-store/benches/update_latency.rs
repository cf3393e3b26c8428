//! Benchmark of ember-store with fsync on (`synchronous=FULL`, WAL): latency percentiles and
//! throughput of `update` (one load-modify-write transaction), `save` with a network allocation,
//! `remove`, `load`, and `update` with two connections writing at once. Prints one JSON object.
//!
//! `cargo bench -p ember-store --bench update_latency` runs the full measurement; without
//! `--bench` (as under `cargo test --all-targets`) it runs a short smoke pass. The database lives
//! in `EMBER_STORE_BENCH_DIR`, or else in Cargo's target tmpdir, which is on a real disk; the
//! file system is reported because fsync on tmpfs costs nothing.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ember_core::VmId;
use ember_store::{
    Machine, MachineName, MachineState, NetworkRequest, ProcessIdentity, Store, StoreConfig,
    StoreError,
};
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

fn name(i: usize) -> MachineName {
    MachineName::new(format!("bench-{i}")).unwrap_or_else(|e| panic!("{e}"))
}

fn machine(i: usize) -> Machine {
    let vm = VmId::new(format!("vm-bench-{i}")).unwrap_or_else(|e| panic!("{e}"));
    let mut m = Machine::new(vm, 2, 256);
    m.kernel = Some("/var/lib/ember/vmlinux".into());
    m.cmdline = Some("console=ttyS0 reboot=k panic=1 pci=off".into());
    m.api_socket = Some(format!("/run/ember/bench-{i}/api.sock").into());
    m.console_log = Some(format!("/run/ember/bench-{i}/console.log").into());
    m
}

fn time<T>(samples: &mut Vec<Duration>, f: impl FnOnce() -> Result<T, StoreError>) -> T {
    let start = Instant::now();
    let out = f().unwrap_or_else(|e| panic!("{e}"));
    samples.push(start.elapsed());
    out
}

/// `n` updates round-robin over `machines` machines, flipping state and process.
fn updates(store: &Store, machines: usize, n: usize, offset: usize) -> Samples {
    let me = ProcessIdentity::current().unwrap_or_else(|e| panic!("{e}"));
    let mut durations = Vec::with_capacity(n);
    let start = Instant::now();
    for k in 0..n {
        let target = name(offset + k % machines);
        let me = me.clone();
        time(&mut durations, || {
            store
                .update(&target, move |m| {
                    if m.state == MachineState::Running {
                        m.state = MachineState::Paused;
                    } else {
                        m.state = MachineState::Running;
                    }
                    m.vmm = Some(me);
                    m.disk_gib += 1;
                    Ok::<_, std::convert::Infallible>(())
                })
                .map_err(|e| match e {
                    ember_store::UpdateError::Store(s) => s,
                    ember_store::UpdateError::Rejected(never) => match never {},
                })
        });
    }
    Samples {
        durations,
        wall: start.elapsed(),
    }
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

    for i in 0..machines {
        store
            .save(&name(i), &machine(i), NetworkRequest::Allocate)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let update = updates(&store, machines, n_updates, 0);

    let mut loads = Vec::with_capacity(n_updates);
    let start = Instant::now();
    for k in 0..n_updates {
        time(&mut loads, || store.load(&name(k % machines)));
    }
    let load = Samples {
        durations: loads,
        wall: start.elapsed(),
    };

    let mut saves = Vec::with_capacity(n_saves);
    let start = Instant::now();
    for i in machines..machines + n_saves {
        time(&mut saves, || {
            store.save(&name(i), &machine(i), NetworkRequest::Allocate)
        });
    }
    let save = Samples {
        durations: saves,
        wall: start.elapsed(),
    };
    let mut removes = Vec::with_capacity(n_saves);
    let start = Instant::now();
    for i in machines..machines + n_saves {
        time(&mut removes, || store.remove(&name(i)));
    }
    let remove = Samples {
        durations: removes,
        wall: start.elapsed(),
    };

    // Two connections (as two processes would have) updating disjoint machines at once.
    let second =
        Arc::new(Store::open(&path, StoreConfig::default()).unwrap_or_else(|e| panic!("{e}")));
    let first = Arc::new(store);
    let half = machines / 2;
    let start = Instant::now();
    let handles: Vec<_> = [(first, 0), (second, half)]
        .into_iter()
        .map(|(s, offset)| {
            std::thread::spawn(move || updates(&s, half, n_updates / 2, offset).durations)
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
        "journal_mode": "wal",
        "synchronous": "FULL",
        "filesystem": filesystem(dir.path()),
        "machines_in_store": machines,
        "update": update.json(),
        "update_two_writers": contended.json(),
        "save_with_allocation": save.json(),
        "remove": remove.json(),
        "load": load.json(),
    });
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{report:#}");
}
