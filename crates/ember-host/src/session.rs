//! A session: one private root directory and one [`VmmProvider`] for a demo or benchmark run,
//! and, when it ends, the proof that it left nothing behind — no VMM process, no file.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ember_runtime::{Flavor, ProviderConfig, SpareConfig, VmmProvider};
use serde::Serialize;

/// Why a session could not start.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The root directory could not be made.
    #[error("creating the session directory {path}")]
    Root {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The provider could not start.
    #[error("starting the VMM provider")]
    Provider(#[source] ember_runtime::StartError),
}

/// What a session left behind when it ended (both should be zero).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Leftovers {
    /// VMM processes still alive whose command line names the session's directory.
    pub processes: Vec<u32>,
    /// Files (not directories) still under the session's directory.
    pub files: Vec<PathBuf>,
}

impl Leftovers {
    /// Nothing left.
    pub fn is_clean(&self) -> bool {
        self.processes.is_empty() && self.files.is_empty()
    }
}

/// A run's provider and directory.
pub struct Session {
    root: PathBuf,
    provider: Arc<VmmProvider>,
    spares: usize,
    finished: bool,
}

impl Session {
    /// Makes a fresh directory under `parent` (short: Unix socket paths live under it) and
    /// starts a provider there with `spares` pre-spawned VMM processes.
    /// The directory is [`root_under`](Session::root_under)`(parent)`; it is removed again if
    /// the provider does not start.
    pub fn start(vmm: &Path, parent: &Path, spares: usize) -> Result<Session, SessionError> {
        Session::start_with(vmm, parent, spares, None)
    }

    /// [`start`](Session::start), with every VMM jailed when `jail` is given.
    pub fn start_with(
        vmm: &Path,
        parent: &Path,
        spares: usize,
        jail: Option<ember_runtime::jail::JailSettings>,
    ) -> Result<Session, SessionError> {
        let root = Session::root_under(parent);
        std::fs::create_dir_all(&root).map_err(|source| SessionError::Root {
            path: root.clone(),
            source,
        })?;
        let mut config = ProviderConfig::new(
            &root,
            Flavor::EmberVmm {
                binary: vmm.to_path_buf(),
            },
        );
        config.spares = SpareConfig {
            count: spares,
            ..SpareConfig::default()
        };
        config.jail = jail;
        let provider = match VmmProvider::new(config) {
            Ok(p) => p,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&root);
                return Err(SessionError::Provider(e));
            }
        };
        Ok(Session {
            root,
            provider: Arc::new(provider),
            spares,
            finished: false,
        })
    }

    /// The directory a session started under `parent` by this process uses (so a caller can
    /// arrange its cleanup before the session exists).
    pub fn root_under(parent: &Path) -> PathBuf {
        parent.join(format!("ember-{}", std::process::id()))
    }

    /// The provider.
    pub fn provider(&self) -> &Arc<VmmProvider> {
        &self.provider
    }

    /// Waits (up to `timeout`) until the host is quiet: every spare VMM is started and ready,
    /// no destroyed VMM is still being torn down, and the CPUs are idle (the kernel finishes a
    /// VM's teardown in its own workers after the process is gone). Benchmarks call it before a
    /// measured burst so the burst does not share the CPU with the previous phase's cleanup.
    /// Returns whether it got quiet in time.
    pub fn settle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.provider.stats();
            let quiet = s.spares.starting == 0
                && s.spares.ready >= self.spares
                && s.processes <= s.vms + s.spares.ready;
            if quiet {
                break;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        // Idle CPUs: at most a second (a host busy with other work never gets there).
        let cpu_deadline = deadline.min(Instant::now() + Duration::from_secs(1));
        while cpu_busy_fraction(Duration::from_millis(50)).is_some_and(|b| b >= 0.1) {
            if Instant::now() >= cpu_deadline {
                return false;
            }
        }
        true
    }

    /// The session's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Stops every VMM, removes the session's files, and reports what (if anything) is left:
    /// processes are looked up in /proc by command line (not by the provider's own records),
    /// files by walking the directory before it is removed.
    pub fn finish(mut self) -> Leftovers {
        self.finished = true;
        self.provider.shutdown();
        let left = leftovers_in(&self.root, &self.root);
        if let Err(e) = std::fs::remove_dir_all(&self.root) {
            tracing::warn!(root = %self.root.display(), error = %e, "removing the session directory");
        }
        left
    }
}

/// What is left of a run: live VMM processes whose command line names `root`, waiting up to
/// 10 s for killed ones to go (a killed process takes a few milliseconds to leave /proc), and
/// the files under `files_under` (the provider's own `.lock` aside).
pub fn leftovers_in(root: &Path, files_under: &Path) -> Leftovers {
    let root_text = root.to_string_lossy().into_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    let processes = loop {
        let alive = processes_naming(&root_text);
        if alive.is_empty() || Instant::now() >= deadline {
            break alive;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut files = Vec::new();
    walk_files(files_under, &mut files);
    files.retain(|f| f.file_name().is_none_or(|n| n != ".lock"));
    Leftovers { processes, files }
}

impl Drop for Session {
    /// A session dropped without [`finish`](Session::finish) (a panic unwinding through a run)
    /// still stops its VMMs and removes its directory.
    fn drop(&mut self) {
        if !self.finished {
            self.provider.shutdown();
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

fn walk_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => walk_files(&path, out),
            Ok(_) => out.push(path),
            Err(_) => {}
        }
    }
}

/// Live processes whose command line contains `needle`.
fn processes_naming(needle: &str) -> Vec<u32> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let text = String::from_utf8_lossy(&cmdline);
            let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| {
                    s.rsplit(')')
                        .next()
                        .is_some_and(|r| r.trim_start().starts_with('Z'))
                })
                .unwrap_or(false);
            !zombie && text.contains(needle)
        })
        .collect()
}

/// The host's CPU busy fraction over `window` (all CPUs, from /proc/stat), or `None` where
/// /proc/stat cannot be read.
fn cpu_busy_fraction(window: Duration) -> Option<f64> {
    let before = cpu_jiffies()?;
    std::thread::sleep(window);
    let after = cpu_jiffies()?;
    let total = after.0.saturating_sub(before.0);
    let idle = after.1.saturating_sub(before.1);
    (total > 0).then(|| 1.0 - idle as f64 / total as f64)
}

/// (all, idle + iowait) jiffies from the first line of /proc/stat.
fn cpu_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal (guest time is inside user already).
    let all: u64 = v.iter().take(8).sum();
    Some((all, idle))
}
