//! A VM's cgroup: CPU weight and quota, memory max, pids max, on cgroup v2 (one unified tree,
//! modern hosts) or v1 (one tree per controller, as these machines mount them). The jailer
//! creates `<parent>/<id>` under each tree, writes the limits, and moves itself in before it
//! forks the VMM, which inherits the membership. [`remove`] takes the cgroup away once the VMM
//! is gone.
//!
//! Memory is a hard limit without swap: a VMM whose guest touches more than `memory_max`
//! (guest RAM is the VMM's anonymous or copy-on-write memory, charged to its cgroup as KVM
//! faults it in) is killed by the kernel's OOM killer inside its own cgroup — SIGKILL to the
//! VMM, the largest task there — and no other cgroup is touched. v2 sets `memory.max` and
//! `memory.swap.max = 0`; v1 sets `memory.limit_in_bytes` and, where the kernel accounts swap
//! (`memory.memsw.limit_in_bytes` exists), the same RAM+swap limit, so a host with swap does
//! not page the VMM out instead. v1's `memory.oom_control` is left as the kernel makes it
//! (`oom_kill_disable 0`): with the OOM killer disabled the VMM would hang in its fault
//! instead.

use std::io;
use std::path::{Path, PathBuf};

/// Where cgroup trees are mounted on Linux.
pub const DEFAULT_ROOT: &str = "/sys/fs/cgroup";

/// The v1 controllers the jailer uses.
const V1_CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];

/// Which cgroup interface the host offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// One tree per controller (`<root>/<controller>/...`).
    V1,
    /// The unified tree (`<root>/cgroup.controllers` exists).
    V2,
}

/// Limits for one VM; `None` leaves the host's default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// Relative CPU weight, 1..=10000 (v2's `cpu.weight`, default 100; on v1 `cpu.shares` =
    /// weight × 1024 / 100).
    pub cpu_weight: Option<u64>,
    /// CPU time per period: (quota µs, period µs); e.g. (50000, 100000) is half a CPU.
    pub cpu_quota: Option<(u64, u64)>,
    /// Memory limit in bytes (the VMM's own memory and the guest's).
    pub memory_max: Option<u64>,
    /// Most tasks (threads count) in the cgroup.
    pub pids_max: Option<u64>,
}

/// Errors creating, filling or removing a cgroup.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A file operation failed.
    #[error("cgroup {path}: {what}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// Why.
        source: io::Error,
    },
    /// A limit is out of range.
    #[error("invalid cgroup limit: {0}")]
    Limit(String),
    /// Neither interface is mounted at the root.
    #[error("no cgroup tree at {0} (neither cgroup.controllers nor v1 controller directories)")]
    NotMounted(PathBuf),
}

fn io_at(path: &Path, what: &'static str) -> impl FnOnce(io::Error) -> CgroupError {
    let path = path.to_path_buf();
    move |source| CgroupError::Io { path, what, source }
}

impl Limits {
    /// Checks the ranges the kernel accepts.
    pub fn validate(&self) -> Result<(), CgroupError> {
        if let Some(w) = self.cpu_weight
            && !(1..=10_000).contains(&w)
        {
            return Err(CgroupError::Limit(format!(
                "cpu weight {w} is outside 1..=10000"
            )));
        }
        if let Some((quota, period)) = self.cpu_quota
            && (quota < 1_000 || !(1_000..=1_000_000).contains(&period))
        {
            return Err(CgroupError::Limit(format!(
                "cpu quota {quota}/{period} µs: quota must be ≥ 1000 µs and the period 1000..=1000000 µs"
            )));
        }
        if self.memory_max == Some(0) {
            return Err(CgroupError::Limit("memory max 0".into()));
        }
        if self.pids_max == Some(0) {
            return Err(CgroupError::Limit("pids max 0".into()));
        }
        Ok(())
    }
}

/// Which interface is mounted at `root`.
pub fn detect(root: &Path) -> Result<Version, CgroupError> {
    if root.join("cgroup.controllers").is_file() {
        Ok(Version::V2)
    } else if V1_CONTROLLERS.iter().all(|c| root.join(c).is_dir()) {
        Ok(Version::V1)
    } else {
        Err(CgroupError::NotMounted(root.to_path_buf()))
    }
}

/// A created cgroup: one directory (v2) or one per controller (v1).
///
/// A VM is put under the cpu controller only when it has a CPU limit (weight or quota): a CPU
/// group per VMM makes the scheduler pick between groups before threads, and every wake-up of
/// a VMM thread then crosses its group's entity. Measured with `ember bench jail` (32-way
/// handoff bursts, 2 CPUs, kernel 6.18, cgroup v1): p50 acquire → first agent reply 3.4-4.0 ms
/// with a CPU group per VMM against 1.0-1.2 ms without (1.4 ms unjailed). Without a CPU limit
/// the VMM's threads share the CPU as an unjailed VMM's would.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    /// The interface.
    pub version: Version,
    /// Its directories (on v1: cpu, memory, pids).
    pub dirs: Vec<PathBuf>,
    /// Whether the VM has a CPU limit, and so joins the cpu controller.
    pub cpu: bool,
}

impl Limits {
    /// Whether a CPU weight or quota is set.
    pub fn limits_cpu(&self) -> bool {
        self.cpu_weight.is_some() || self.cpu_quota.is_some()
    }
}

/// The directories of `<parent>/<id>` under `root` for `version`.
pub fn dirs(root: &Path, version: Version, parent: &str, id: &str) -> Vec<PathBuf> {
    match version {
        Version::V2 => vec![root.join(parent).join(id)],
        Version::V1 => V1_CONTROLLERS
            .iter()
            .map(|c| root.join(c).join(parent).join(id))
            .collect(),
    }
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(io_at(path, "writing"))
}

/// Creates `<parent>/<id>` with `limits`. An existing one (left by a VMM that died, or one the
/// runtime recycles from an exited VMM, see ember-runtime's `jail::recycle`) is reused: every
/// limit is rewritten, and those `limits` leave unset go back to the kernel's defaults, so
/// nothing of its previous VMM's limits carries over.
pub fn create(
    root: &Path,
    version: Version,
    parent: &str,
    id: &str,
    limits: &Limits,
) -> Result<Cgroup, CgroupError> {
    limits.validate()?;
    let dirs = dirs(root, version, parent, id);
    let reused = dirs.iter().all(|d| d.is_dir());
    for dir in &dirs {
        std::fs::create_dir_all(dir).map_err(io_at(dir, "creating"))?;
    }
    if reused {
        reset_unset(version, &dirs, limits)?;
    }
    match version {
        Version::V2 => {
            // Each ancestor hands the controllers down to its children (cpu only for a CPU
            // limit: see `Cgroup`).
            let controllers = if limits.limits_cpu() {
                "+cpu +memory +pids"
            } else {
                "+memory +pids"
            };
            let mut at = root.to_path_buf();
            for part in parent.split('/') {
                write(&at.join("cgroup.subtree_control"), controllers)?;
                at.push(part);
            }
            write(&at.join("cgroup.subtree_control"), controllers)?;
            let dir = &dirs[0];
            if let Some(w) = limits.cpu_weight {
                write(&dir.join("cpu.weight"), &w.to_string())?;
            }
            if let Some((quota, period)) = limits.cpu_quota {
                write(&dir.join("cpu.max"), &format!("{quota} {period}"))?;
            }
            if let Some(m) = limits.memory_max {
                set_memory_max(version, &dirs, m)?;
            }
            if let Some(p) = limits.pids_max {
                write(&dir.join("pids.max"), &p.to_string())?;
            }
        }
        Version::V1 => {
            let [cpu, pids] = [&dirs[0], &dirs[2]];
            if let Some(w) = limits.cpu_weight {
                write(
                    &cpu.join("cpu.shares"),
                    &(w * 1024 / 100).max(2).to_string(),
                )?;
            }
            if let Some((quota, period)) = limits.cpu_quota {
                write(&cpu.join("cpu.cfs_period_us"), &period.to_string())?;
                write(&cpu.join("cpu.cfs_quota_us"), &quota.to_string())?;
            }
            if let Some(m) = limits.memory_max {
                set_memory_max(version, &dirs, m)?;
            }
            if let Some(p) = limits.pids_max {
                write(&pids.join("pids.max"), &p.to_string())?;
            }
        }
    }
    Ok(Cgroup {
        version,
        dirs,
        cpu: limits.limits_cpu(),
    })
}

/// Puts the limits `limits` leaves unset back to the kernel's defaults in a reused cgroup.
fn reset_unset(version: Version, dirs: &[PathBuf], limits: &Limits) -> Result<(), CgroupError> {
    match version {
        Version::V2 => {
            let dir = &dirs[0];
            // (Without a CPU limit the cpu controller may be off for this cgroup.)
            if limits.cpu_weight.is_none() {
                let _ = std::fs::write(dir.join("cpu.weight"), "100");
            }
            if limits.cpu_quota.is_none() {
                let _ = std::fs::write(dir.join("cpu.max"), "max");
            }
            if limits.memory_max.is_none() {
                write(&dir.join("memory.max"), "max")?;
                let _ = std::fs::write(dir.join("memory.swap.max"), "max");
            }
            if limits.pids_max.is_none() {
                write(&dir.join("pids.max"), "max")?;
            }
        }
        Version::V1 => {
            let [cpu, memory, pids] = [&dirs[0], &dirs[1], &dirs[2]];
            if limits.cpu_weight.is_none() {
                write(&cpu.join("cpu.shares"), "1024")?;
            }
            if limits.cpu_quota.is_none() {
                write(&cpu.join("cpu.cfs_quota_us"), "-1")?;
            }
            if limits.memory_max.is_none() {
                // RAM + swap first: it must stay ≥ the RAM limit.
                let memsw = memory.join("memory.memsw.limit_in_bytes");
                if memsw.exists() {
                    write(&memsw, "-1")?;
                }
                write(&memory.join("memory.limit_in_bytes"), "-1")?;
            }
            if limits.pids_max.is_none() {
                write(&pids.join("pids.max"), "max")?;
            }
        }
    }
    Ok(())
}

/// Sets the memory limit of the cgroup made of `dirs` (as [`dirs`] returns them) to `bytes`,
/// swap included.
///
/// v2: `memory.max` and `memory.swap.max = 0` (a VM over its memory is contained, not paged
/// out). v1: `memory.limit_in_bytes` bounds RAM only, so on a host with swap a VM over it would
/// be paged out (and crawl) rather than contained; `memory.memsw.*` (RAM + swap; present when
/// the kernel accounts swap) gets the same limit, so it is OOM-killed inside its cgroup
/// instead. memsw must stay ≥ the RAM limit at every step: unlimited first (a reused cgroup may
/// hold a lower one), then the RAM limit, then memsw.
pub fn set_memory_max(version: Version, dirs: &[PathBuf], bytes: u64) -> Result<(), CgroupError> {
    match version {
        Version::V2 => {
            for dir in dirs {
                write(&dir.join("memory.max"), &bytes.to_string())?;
                let _ = std::fs::write(dir.join("memory.swap.max"), "0");
            }
        }
        Version::V1 => {
            // `dirs()` lists the v1 trees in V1_CONTROLLERS' order: cpu, memory, pids.
            let Some(memory) = dirs.get(1) else {
                return Ok(());
            };
            let memsw = memory.join("memory.memsw.limit_in_bytes");
            let has_memsw = memsw.exists();
            if has_memsw {
                write(&memsw, "-1")?;
            }
            write(&memory.join("memory.limit_in_bytes"), &bytes.to_string())?;
            if has_memsw {
                write(&memsw, &bytes.to_string())?;
            }
        }
    }
    Ok(())
}

impl Cgroup {
    /// The directories a process joins: on v1 the cpu tree only when the VM has a CPU limit.
    fn joined(&self) -> impl Iterator<Item = &PathBuf> {
        let skip_cpu = self.version == Version::V1 && !self.cpu;
        self.dirs.iter().skip(usize::from(skip_cpu))
    }

    /// Moves process `pid` (and so its future children) into the cgroup.
    pub fn add_process(&self, pid: u32) -> Result<(), CgroupError> {
        for dir in self.joined() {
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// Moves the calling process, which must be single-threaded, into the cgroup (and so its
    /// future children).
    ///
    /// On v1 this writes `0` to each controller's `tasks` file: it moves the calling thread
    /// only — the whole process, when it has one thread — and for a thread moving itself the
    /// kernel skips the global `cgroup_threadgroup_rwsem` write lock that a write to
    /// `cgroup.procs` takes (`CGRP_ATTACH_LOCK_NONE` in 6.18; a kernel without that shortcut
    /// takes the lock either way, so this is never slower). Taking that lock waits for an RCU
    /// grace period unless another migration ran moments before: measured on this project's
    /// 2-CPU v1 host (kernel 6.18, HZ 250, load ~3), 8-15 ms median per start through
    /// `cgroup.procs` against 0.5-0.7 ms through `tasks`, for the three controllers.
    /// On v2 a thread cannot move to another domain cgroup alone, so the process's pid goes
    /// to `cgroup.procs` as in [`add_process`](Self::add_process).
    pub fn add_self(&self) -> Result<(), CgroupError> {
        match self.version {
            Version::V1 => {
                for dir in self.joined() {
                    write(&dir.join("tasks"), "0")?;
                }
                Ok(())
            }
            // "0": the writing process (whatever its pid in its own pid namespace).
            Version::V2 => {
                for dir in self.joined() {
                    write(&dir.join("cgroup.procs"), "0")?;
                }
                Ok(())
            }
        }
    }
}

/// Renames `<parent>/<from>` to `<parent>/<to>` in every tree, on cgroup v1 (v2 has no rename:
/// `ErrorKind::Unsupported`). The cgroup must hold no process. If a tree fails part-way, the
/// ones already renamed are renamed back.
pub fn rename(
    root: &Path,
    version: Version,
    parent: &str,
    from: &str,
    to: &str,
) -> Result<(), CgroupError> {
    let olds = dirs(root, version, parent, from);
    if version == Version::V2 {
        return Err(CgroupError::Io {
            path: olds[0].clone(),
            what: "renaming (cgroup v2 cannot)",
            source: io::ErrorKind::Unsupported.into(),
        });
    }
    let news = dirs(root, version, parent, to);
    for (i, (old, new)) in olds.iter().zip(&news).enumerate() {
        if let Err(e) = std::fs::rename(old, new) {
            for (o, n) in olds.iter().zip(&news).take(i) {
                let _ = std::fs::rename(n, o);
            }
            return Err(io_at(old, "renaming")(e));
        }
    }
    Ok(())
}

/// Removes `<parent>/<id>` under `root` (every tree); a missing one is fine. Fails while a
/// process is still in it.
pub fn remove(root: &Path, version: Version, parent: &str, id: &str) -> Result<(), CgroupError> {
    for dir in dirs(root, version, parent, id) {
        match std::fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_at(&dir, "removing")(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn read(p: &Path) -> String {
        std::fs::read_to_string(p).unwrap()
    }

    const LIMITS: Limits = Limits {
        cpu_weight: Some(50),
        cpu_quota: Some((50_000, 100_000)),
        memory_max: Some(256 << 20),
        pids_max: Some(64),
    };

    #[test]
    fn v1_writes_one_tree_per_controller() {
        let root = tempfile::tempdir().unwrap();
        for c in V1_CONTROLLERS {
            std::fs::create_dir(root.path().join(c)).unwrap();
        }
        assert_eq!(detect(root.path()).unwrap(), Version::V1);
        let cg = create(root.path(), Version::V1, "ember/vms", "vm1", &LIMITS).unwrap();
        let r = root.path();
        assert_eq!(read(&r.join("cpu/ember/vms/vm1/cpu.shares")), "512");
        assert_eq!(read(&r.join("cpu/ember/vms/vm1/cpu.cfs_quota_us")), "50000");
        assert_eq!(
            read(&r.join("cpu/ember/vms/vm1/cpu.cfs_period_us")),
            "100000"
        );
        assert_eq!(
            read(&r.join("memory/ember/vms/vm1/memory.limit_in_bytes")),
            (256u64 << 20).to_string()
        );
        assert_eq!(read(&r.join("pids/ember/vms/vm1/pids.max")), "64");
        // No memsw file (swap not accounted): none is made up.
        assert!(
            !r.join("memory/ember/vms/vm1/memory.memsw.limit_in_bytes")
                .exists()
        );
        cg.add_process(42).unwrap();
        assert_eq!(read(&r.join("pids/ember/vms/vm1/cgroup.procs")), "42");
        // The calling thread moves itself through `tasks` ("0": the writer).
        cg.add_self().unwrap();
        for c in V1_CONTROLLERS {
            assert_eq!(read(&r.join(c).join("ember/vms/vm1/tasks")), "0");
        }
        // Without a CPU limit the VM stays out of the cpu controller.
        let no_cpu = Limits {
            cpu_weight: None,
            cpu_quota: None,
            ..LIMITS
        };
        let cg = create(root.path(), Version::V1, "ember/vms", "vm2", &no_cpu).unwrap();
        cg.add_self().unwrap();
        cg.add_process(43).unwrap();
        assert!(!r.join("cpu/ember/vms/vm2/tasks").exists());
        assert!(!r.join("cpu/ember/vms/vm2/cgroup.procs").exists());
        assert_eq!(read(&r.join("memory/ember/vms/vm2/tasks")), "0");
        assert_eq!(read(&r.join("pids/ember/vms/vm2/cgroup.procs")), "43");
    }

    #[test]
    fn a_reused_cgroup_loses_the_limits_its_previous_vmm_had() {
        let root = tempfile::tempdir().unwrap();
        for c in V1_CONTROLLERS {
            std::fs::create_dir(root.path().join(c)).unwrap();
        }
        create(root.path(), Version::V1, "ember", "vm1", &LIMITS).unwrap();
        let only_pids = Limits {
            pids_max: Some(32),
            ..Limits::default()
        };
        create(root.path(), Version::V1, "ember", "vm1", &only_pids).unwrap();
        let r = root.path();
        assert_eq!(read(&r.join("cpu/ember/vm1/cpu.shares")), "1024");
        assert_eq!(read(&r.join("cpu/ember/vm1/cpu.cfs_quota_us")), "-1");
        assert_eq!(
            read(&r.join("memory/ember/vm1/memory.limit_in_bytes")),
            "-1"
        );
        assert_eq!(read(&r.join("pids/ember/vm1/pids.max")), "32");

        let v2 = tempfile::tempdir().unwrap();
        std::fs::write(v2.path().join("cgroup.controllers"), "cpu memory pids").unwrap();
        create(v2.path(), Version::V2, "ember", "vm1", &LIMITS).unwrap();
        create(v2.path(), Version::V2, "ember", "vm1", &Limits::default()).unwrap();
        for (file, want) in [
            ("cpu.weight", "100"),
            ("cpu.max", "max"),
            ("memory.max", "max"),
            ("pids.max", "max"),
        ] {
            assert_eq!(
                read(&v2.path().join("ember/vm1").join(file)),
                want,
                "{file}"
            );
        }
    }

    #[test]
    fn v1_limits_ram_and_swap_alike_where_swap_is_accounted() {
        let root = tempfile::tempdir().unwrap();
        for c in V1_CONTROLLERS {
            std::fs::create_dir(root.path().join(c)).unwrap();
        }
        let dir = root.path().join("memory/ember/vm1");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("memory.memsw.limit_in_bytes"), "1").unwrap();
        create(root.path(), Version::V1, "ember", "vm1", &LIMITS).unwrap();
        let want = (256u64 << 20).to_string();
        assert_eq!(read(&dir.join("memory.limit_in_bytes")), want);
        assert_eq!(read(&dir.join("memory.memsw.limit_in_bytes")), want);
    }

    #[test]
    fn v2_enables_controllers_down_the_tree() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("cgroup.controllers"), "cpu memory pids").unwrap();
        assert_eq!(detect(root.path()).unwrap(), Version::V2);
        create(root.path(), Version::V2, "ember", "vm1", &LIMITS).unwrap();
        let r = root.path();
        assert_eq!(
            read(&r.join("cgroup.subtree_control")),
            "+cpu +memory +pids"
        );
        assert_eq!(
            read(&r.join("ember/cgroup.subtree_control")),
            "+cpu +memory +pids"
        );
        assert_eq!(read(&r.join("ember/vm1/cpu.weight")), "50");
        assert_eq!(read(&r.join("ember/vm1/cpu.max")), "50000 100000");
        assert_eq!(
            read(&r.join("ember/vm1/memory.max")),
            (256u64 << 20).to_string()
        );
        assert_eq!(read(&r.join("ember/vm1/pids.max")), "64");
    }

    #[test]
    fn limits_out_of_range_are_named() {
        let bad = [
            Limits {
                cpu_weight: Some(0),
                ..Limits::default()
            },
            Limits {
                cpu_quota: Some((10, 100_000)),
                ..Limits::default()
            },
            Limits {
                memory_max: Some(0),
                ..Limits::default()
            },
            Limits {
                pids_max: Some(0),
                ..Limits::default()
            },
        ];
        for l in bad {
            assert!(l.validate().is_err(), "{l:?}");
        }
        assert!(detect(Path::new("/nonexistent")).is_err());
    }
}
