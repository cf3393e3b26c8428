//! Helpers shared by ember-runtime's integration tests: the ember-vmm binary (built on demand),
//! providers on a temporary root, probe-guest specs, and process/file accounting.
#![allow(
    dead_code,
    unused_imports,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use ember_test_support::{DEFAULT_TIMEOUT, wait_for};

/// The ember-vmm binary: `$EMBER_VMM_BIN`, or built on demand (see
/// `ember_test_support::package_bin`).
pub fn vmm_bin() -> PathBuf {
    ember_test_support::vmm_bin()
}

use std::sync::Arc;

use ember_core::{SnapshotId, SnapshotRequest, StackKey, VmId, VmProvider, VmQuery, VmSpec};
use ember_runtime::{Flavor, ProviderConfig, SpareConfig, VmmProvider};

/// Which flavor a test runs; the Firecracker flavor drives `$EMBER_FIRECRACKER_BIN` when set
/// and the ember-vmm binary (as a firecracker-style binary) otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    EmberVmm,
    FirecrackerStyle,
    RealFirecracker,
}

/// The flavor for `kind`, or `None` (with a printed note) when it cannot run here.
pub fn flavor(kind: Kind) -> Option<Flavor> {
    match kind {
        Kind::EmberVmm => Some(Flavor::EmberVmm { binary: vmm_bin() }),
        Kind::FirecrackerStyle => Some(Flavor::Firecracker { binary: vmm_bin() }),
        Kind::RealFirecracker => match std::env::var_os("EMBER_FIRECRACKER_BIN") {
            Some(p) => Some(Flavor::Firecracker {
                binary: PathBuf::from(p),
            }),
            None => {
                eprintln!(
                    "note: EMBER_FIRECRACKER_BIN is not set; skipping the run against a real firecracker"
                );
                None
            }
        },
    }
}

/// A temporary directory for a provider root: on tmpfs when the host has `/dev/shm` (the
/// runtime's files belong on tmpfs; on a disk-backed filesystem every VM's few file creations
/// cost milliseconds), short enough for socket paths.
pub fn short_tempdir() -> tempfile::TempDir {
    let base = Path::new("/dev/shm");
    let base = if base.is_dir() {
        base
    } else {
        Path::new("/tmp")
    };
    tempfile::Builder::new()
        .prefix("er")
        .tempdir_in(base)
        .unwrap()
}

/// A provider of `flavor` on a fresh root, keeping `spares` spare processes.
pub fn provider(dir: &Path, flavor: Flavor, spares: usize) -> Arc<VmmProvider> {
    let mut config = ProviderConfig::new(dir.join("root"), flavor);
    config.spares = SpareConfig {
        count: spares,
        ..SpareConfig::default()
    };
    config.timeouts.spare_wait = Duration::from_secs(60);
    Arc::new(VmmProvider::new(config).unwrap())
}

/// A detached provider of `flavor` on `dir`'s root (kept between providers).
pub fn detached_provider(dir: &Path, flavor: Flavor, spares: usize) -> Arc<VmmProvider> {
    let mut config = ProviderConfig::new(dir.join("root"), flavor);
    config.spares = SpareConfig {
        count: spares,
        ..SpareConfig::default()
    };
    config.detached = true;
    config.timeouts.spare_wait = Duration::from_secs(60);
    Arc::new(VmmProvider::new(config).unwrap())
}

/// A spec that boots the probe guest.
pub fn probe_spec(boot_args: &str) -> VmSpec {
    VmSpec {
        kernel: Some(ember_probe_image::probe_elf_path().to_path_buf()),
        boot_args: Some(boot_args.to_string()),
        mem_size_mib: 128,
        vcpu_count: 1,
        ..VmSpec::default()
    }
}

pub fn vm(id: &str) -> VmId {
    VmId::new(id).unwrap()
}

/// The console log of `id` so far.
pub fn console(p: &VmmProvider, id: &VmId) -> String {
    std::fs::read_to_string(p.console_log(id).unwrap()).unwrap_or_default()
}

/// Waits until `id`'s console has a line satisfying `pred` after `skip` lines; returns it.
pub fn wait_console(
    p: &VmmProvider,
    id: &VmId,
    what: &str,
    skip: usize,
    pred: impl Fn(&str) -> bool,
) -> String {
    let path = p.console_log(id).unwrap();
    wait_for(DEFAULT_TIMEOUT, what, || {
        let text = std::fs::read_to_string(&path).ok()?;
        text.lines()
            .skip(skip)
            .find(|l| pred(l))
            .map(str::to_string)
    })
}

/// Waits for a `count=` line above `above` on `id`'s console.
pub fn wait_count_above(p: &VmmProvider, id: &VmId, above: u64) -> u64 {
    let line = wait_console(p, id, &format!("a count above {above} on {id}"), 0, |l| {
        ember_probe_image::parse_count_line(l).is_some_and(|c| c > above)
    });
    ember_probe_image::parse_count_line(&line).unwrap()
}

/// Boots the probe as `id`, waits for its banner and a first count line, pauses it and takes
/// snapshot `sid` for `stack`. The VM stays (paused).
pub fn make_template(
    p: &VmmProvider,
    id: &str,
    sid: &str,
    stack: &StackKey,
    boot_args: &str,
) -> ember_core::SnapshotRef {
    let id = vm(id);
    p.create_with_spec(&id, &probe_spec(boot_args)).unwrap();
    p.start(&id).unwrap();
    wait_console(p, &id, "the probe banner", 0, |l| {
        ember_probe_image::parse_banner(l).is_some()
    });
    wait_count_above(p, &id, 0);
    p.pause(&id).unwrap();
    p.snapshot(
        &id,
        &SnapshotRequest {
            snapshot_id: SnapshotId::new(sid).unwrap(),
            stack: Some(stack.clone()),
        },
    )
    .unwrap()
}

/// Pauses `id` and takes snapshot `sid` of it (no stack); the VM stays, paused.
pub fn pause_and_snapshot(p: &VmmProvider, id: &VmId, sid: &str) -> ember_core::SnapshotRef {
    p.pause(id).unwrap();
    p.snapshot(
        id,
        &SnapshotRequest {
            snapshot_id: SnapshotId::new(sid).unwrap(),
            stack: None,
        },
    )
    .unwrap()
}

/// Whether a process exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(") ")
            .map(|(_, rest)| !rest.starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// Our child processes whose command is `comm` (as /proc shows it, 15 chars at most).
pub fn children_named(comm: &str) -> Vec<u32> {
    let me = std::process::id();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((head, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let name = head.split_once(" (").map(|(_, n)| n).unwrap_or("");
        let ppid: u32 = rest
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if ppid == me && name == comm {
            out.push(pid);
        }
    }
    out
}

/// Every path under `dir` (recursively), relative to it, sorted.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            out.push(p.strip_prefix(base).unwrap().to_path_buf());
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                walk(base, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Waits until every pid in `pids` is gone.
pub fn wait_gone(pids: &[u32]) {
    for &pid in pids {
        wait_for(
            DEFAULT_TIMEOUT,
            &format!("process {pid} to be gone"),
            || (!alive(pid)).then_some(()),
        );
    }
}

/// Shuts `p` down and checks that no VMM process and no file but snapshots remain.
pub fn shutdown_and_check(p: &VmmProvider) {
    let pids = p.process_ids();
    let root = p.root().to_path_buf();
    p.shutdown();
    for pid in &pids {
        assert!(!alive(*pid), "VMM {pid} survived shutdown");
    }
    let left: Vec<PathBuf> = files_under(&root)
        .into_iter()
        .filter(|f| !f.starts_with("snapshots"))
        .collect();
    assert!(left.is_empty(), "files left after shutdown: {left:?}");
}

/// The stack of the probe template.
pub fn probe_stack(name: &str) -> StackKey {
    StackKey::new(name, "1", 1, 128).unwrap()
}
