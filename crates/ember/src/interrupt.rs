//! What a signal must clean up: the directories this process is running VMs in (a benchmark's
//! session, the demo's embedded emberd, the API benchmark's emberd process), each with how to
//! stop what runs there.
//!
//! Whoever makes such a directory [registers](Registration::new) it first, and adds how to stop
//! its VMMs (a provider's shutdown) and which daemon child runs there as they start; dropping
//! the registration (the run finished or failed, its own cleanup done) forgets it. On SIGINT or
//! SIGTERM the command line calls [`clean_up`] from its signal task, whatever thread the run
//! itself is blocked on: it kills the daemon child, stops the providers, kills every process
//! whose command line still names the directory (through a pidfd, after checking it again),
//! waits for them to go and removes the directory; then the process exits.

use std::collections::BTreeSet;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ember_runtime::process::PidFd;

/// How to stop what runs in a directory (a provider's shutdown).
type Stop = Box<dyn Fn() + Send + Sync>;

struct Entry {
    id: u64,
    dir: PathBuf,
    stops: Vec<Stop>,
    /// A child daemon running there: its pid, and a pidfd opened before it could be reaped.
    daemon: Option<(u32, PidFd)>,
}

static ENTRIES: Mutex<Vec<Entry>> = Mutex::new(Vec::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

fn entries() -> MutexGuard<'static, Vec<Entry>> {
    // An entry is pushed or removed whole: a poisoned list is still consistent.
    ENTRIES.lock().unwrap_or_else(|p| p.into_inner())
}

/// A directory [`clean_up`] cleans on a signal, until this is dropped.
#[derive(Debug)]
#[must_use = "the directory is forgotten when the registration is dropped"]
pub struct Registration {
    id: u64,
}

impl Registration {
    /// Registers `dir` (before it is made, so no moment is left uncovered).
    pub fn new(dir: &Path) -> Registration {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        entries().push(Entry {
            id,
            dir: dir.to_path_buf(),
            stops: Vec::new(),
            daemon: None,
        });
        Registration { id }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Entry) -> R) -> Option<R> {
        entries().iter_mut().find(|e| e.id == self.id).map(f)
    }

    /// Adds how to stop what runs in the directory (called before its processes are killed).
    pub fn on_stop(&self, stop: impl Fn() + Send + Sync + 'static) {
        self.with(|e| e.stops.push(Box::new(stop)));
    }

    /// The daemon child running in the directory (`Some` right after it is spawned, before
    /// anything can reap it: it is then named by a pidfd, which a later reap cannot make name
    /// another process), or none any more.
    pub fn set_daemon(&self, pid: Option<u32>) {
        let daemon = pid.and_then(|pid| Some((pid, PidFd::open(pid).ok()?)));
        self.with(|e| e.daemon = daemon);
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        entries().retain(|e| e.id != self.id);
    }
}

/// What [`clean_up`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cleaned {
    /// VMM processes killed (a daemon child aside).
    pub processes: usize,
    /// Directories removed.
    pub dirs: usize,
    /// Directories that could not be removed.
    pub failed: usize,
}

impl std::fmt::Display for Cleaned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.dirs == 0 && self.failed == 0 {
            return write!(f, "nothing had started; nothing to clean up");
        }
        let s = if self.processes == 1 { "" } else { "es" };
        write!(f, "cleaned up {} VMM process{s} and ", self.processes)?;
        match self.dirs {
            0 => write!(f, "no directory")?,
            1 => write!(f, "the session directory")?,
            n => write!(f, "{n} session directories")?,
        }
        if self.failed > 0 {
            write!(f, " ({} could not be removed)", self.failed)?;
        }
        Ok(())
    }
}

/// How long killed processes get to leave /proc.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// Cleans every registered directory (see the module docs) and forgets them. Blocking.
pub fn clean_up() -> Cleaned {
    let taken: Vec<Entry> = std::mem::take(&mut *entries());
    // The daemons first: nothing must start VMMs any more.
    for (_, fd) in taken.iter().filter_map(|e| e.daemon.as_ref()) {
        let _ = fd.send_signal(nix::sys::signal::Signal::SIGKILL as i32);
    }
    let mut cleaned = Cleaned::default();
    for entry in taken {
        let mut seen: BTreeSet<u32> = processes_naming(&entry.dir).into_iter().collect();
        for stop in &entry.stops {
            stop();
        }
        let deadline = Instant::now() + KILL_WAIT;
        loop {
            let alive = processes_naming(&entry.dir);
            if alive.is_empty() || Instant::now() >= deadline {
                break;
            }
            for pid in alive {
                kill_if_naming(pid, &entry.dir);
                seen.insert(pid);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if let Some((pid, _)) = &entry.daemon {
            seen.remove(pid);
        }
        cleaned.processes += seen.len();
        if remove_dir(&entry.dir) {
            cleaned.dirs += 1;
        } else {
            cleaned.failed += 1;
        }
    }
    cleaned
}

/// Removes `dir` (retrying while threads of the interrupted run still write into it).
fn remove_dir(dir: &Path) -> bool {
    // Jailed VMMs' roots: their mounts and cgroups (the provider root is the directory itself
    // for a session, `vms` under it for a daemon).
    for root in [dir.to_path_buf(), dir.join("vms")] {
        let _ = ember_runtime::jail::remove_leftovers(
            &root,
            Path::new(ember_runtime::jail::CGROUP_ROOT),
        );
    }
    for _ in 0..50 {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => return true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return true,
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    !dir.exists()
}

/// Whether an argument of a command line is `dir` or a path under it.
fn names(cmdline: &[u8], dir: &Path) -> bool {
    let dir = dir.as_os_str().as_bytes();
    cmdline.split(|b| *b == 0).any(|arg| {
        arg.strip_prefix(dir)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(b"/"))
    })
}

fn cmdline_names(pid: u32, dir: &Path) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| names(&c, dir))
}

/// Live processes (not this one) with an argument in `dir`.
fn processes_naming(dir: &Path) -> Vec<u32> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me && cmdline_names(*pid, dir))
        .collect()
}

/// SIGKILL through a pidfd, once the process it names is checked to still name `dir`.
fn kill_if_naming(pid: u32, dir: &Path) {
    let Ok(fd) = PidFd::open(pid) else {
        return;
    };
    if cmdline_names(pid, dir) {
        let _ = fd.send_signal(nix::sys::signal::Signal::SIGKILL as i32);
    }
}

/// The signals that interrupt a run: SIGINT, SIGTERM and SIGHUP, each unless this process
/// started with it ignored (`nohup`, a background job of a script): that choice is kept.
pub struct Signals {
    int: Option<tokio::signal::unix::Signal>,
    term: Option<tokio::signal::unix::Signal>,
    hup: Option<tokio::signal::unix::Signal>,
}

/// Which signal arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interrupt {
    /// SIGINT (Ctrl-C).
    Int,
    /// SIGTERM.
    Term,
    /// SIGHUP (the terminal went away).
    Hup,
}

impl Interrupt {
    fn signal(self) -> nix::sys::signal::Signal {
        match self {
            Interrupt::Int => nix::sys::signal::Signal::SIGINT,
            Interrupt::Term => nix::sys::signal::Signal::SIGTERM,
            Interrupt::Hup => nix::sys::signal::Signal::SIGHUP,
        }
    }

    /// The conventional exit status: 128 + the signal's number.
    pub fn exit_code(self) -> u8 {
        128 + self.signal() as u8
    }
}

/// The signals this process ignores, from the `SigIgn` mask of /proc/self/status (bit n-1 is
/// signal n); none if it cannot be read.
fn ignored_mask() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let hex = s.lines().find_map(|l| l.strip_prefix("SigIgn:"))?.trim();
            u64::from_str_radix(hex, 16).ok()
        })
        .unwrap_or(0)
}

impl Signals {
    /// Installs the handlers (from then on these signals no longer end the process by
    /// themselves). Needs a Tokio runtime.
    pub fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        let ignored = ignored_mask();
        let install = |which: Interrupt| {
            let n = which.signal() as i32;
            if ignored & (1 << (n - 1)) != 0 {
                return Ok(None);
            }
            signal(SignalKind::from_raw(n)).map(Some)
        };
        Ok(Signals {
            int: install(Interrupt::Int)?,
            term: install(Interrupt::Term)?,
            hup: install(Interrupt::Hup)?,
        })
    }

    /// The next one (never, if all of them are ignored).
    pub async fn recv(&mut self) -> Interrupt {
        async fn next(s: &mut Option<tokio::signal::unix::Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            () = next(&mut self.int) => Interrupt::Int,
            () = next(&mut self.term) => Interrupt::Term,
            () = next(&mut self.hup) => Interrupt::Hup,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_argument_names_the_directory_or_a_path_under_it_only() {
        let dir = Path::new("/dev/shm/ember-12");
        assert!(names(
            b"vmm\0--api-sock\0/dev/shm/ember-12/slots/1/api.sock\0",
            dir
        ));
        assert!(names(b"x\0/dev/shm/ember-12\0", dir));
        assert!(!names(
            b"vmm\0--api-sock\0/dev/shm/ember-123/slots/1\0",
            dir
        ));
        assert!(!names(b"vmm\0--x=/dev/shm/ember-12/a\0", dir));
        assert!(!names(b"", dir));
    }

    #[test]
    fn the_report_reads_well() {
        let c = Cleaned {
            processes: 3,
            dirs: 1,
            failed: 0,
        };
        assert_eq!(
            c.to_string(),
            "cleaned up 3 VMM processes and the session directory"
        );
        assert_eq!(
            Cleaned::default().to_string(),
            "nothing had started; nothing to clean up"
        );
        assert_eq!(Interrupt::Int.exit_code(), 130);
        assert_eq!(Interrupt::Hup.exit_code(), 129);
        assert_eq!(Interrupt::Term.exit_code(), 143);
    }

    #[test]
    fn a_dropped_registration_is_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let kept = dir.path().join("kept");
        let gone = dir.path().join("gone");
        std::fs::create_dir(&kept).unwrap();
        std::fs::create_dir(&gone).unwrap();
        let stopped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let r = Registration::new(&gone);
        let s = std::sync::Arc::clone(&stopped);
        r.on_stop(move || s.store(true, Ordering::SeqCst));
        drop(Registration::new(&kept));
        let c = clean_up();
        assert_eq!((c.dirs, c.processes), (1, 0));
        assert!(stopped.load(Ordering::SeqCst));
        assert!(kept.exists() && !gone.exists());
        drop(r);
    }
}
