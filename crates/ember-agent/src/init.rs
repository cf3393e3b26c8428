//! PID 1 duties and process-wide setup: standard descriptors, mounts, signals, power-off.
//!
//! Owns what the agent does for the whole guest when it is init — mount `/proc`, `/sys`,
//! `/dev` (and `/dev/pts`, `/dev/shm`), `/tmp` when they are not mounted; power the guest off —
//! and what it does in any case: make sure descriptors 0–2 are open (so no pipe lands there),
//! block SIGTERM/SIGINT/SIGHUP in every thread and take them in one signal thread, which stops
//! the background processes and exits (or, as PID 1, powers off). Reaping is the reaper's.
#![forbid(unsafe_code)]

use std::fs::{self, File};
use std::os::fd::{AsRawFd, IntoRawFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use nix::mount::{MsFlags, mount};
use nix::sys::signal::{SigSet, Signal};

use crate::agent::Agent;

/// Whether this process is the guest's init.
pub fn is_pid1() -> bool {
    std::process::id() == 1
}

/// Opens `/dev/null` on descriptors 0, 1 and 2 if they are closed.
pub fn ensure_std_fds() {
    loop {
        let Ok(null) = File::options().read(true).write(true).open("/dev/null") else {
            return;
        };
        if null.as_raw_fd() > 2 {
            return; // 0–2 are open; this one closes on drop
        }
        // It landed on 0, 1 or 2: keep it open there for good.
        let _ = null.into_raw_fd();
    }
}

/// Mounts what a guest needs, where nothing is mounted yet.
pub fn mount_basics() {
    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    try_mount(Path::new("/proc"), "proc", "proc", nodev, None, |p| {
        p.join("self").exists()
    });
    try_mount(Path::new("/sys"), "sysfs", "sysfs", nodev, None, |p| {
        p.join("kernel").exists()
    });
    try_mount(
        Path::new("/dev"),
        "devtmpfs",
        "devtmpfs",
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
        |p| p.join("null").exists(),
    );
    try_mount(
        Path::new("/dev/pts"),
        "devpts",
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("gid=5,mode=620,ptmxmode=666"),
        |p| p.join("ptmx").exists(),
    );
    try_mount(
        Path::new("/dev/shm"),
        "tmpfs",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
        is_mount_point,
    );
    try_mount(
        Path::new("/tmp"),
        "tmpfs",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
        is_mount_point,
    );
}

/// Whether `path` is on another device than its parent.
fn is_mount_point(path: &Path) -> bool {
    let parent = path.parent().unwrap_or(Path::new("/"));
    match (fs::metadata(path), fs::metadata(parent)) {
        (Ok(a), Ok(b)) => a.dev() != b.dev(),
        _ => false,
    }
}

fn try_mount(
    target: &Path,
    source: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
    mounted: impl Fn(&Path) -> bool,
) {
    if mounted(target) {
        return;
    }
    let _ = fs::create_dir_all(target);
    match mount(Some(source), target, Some(fstype), flags, data) {
        Ok(()) => tracing::info!(target = %target.display(), fstype, "mounted"),
        Err(e) => tracing::warn!(target = %target.display(), fstype, error = %e, "mount failed"),
    }
}

/// The signals the signal thread takes.
fn handled() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.add(Signal::SIGHUP);
    set
}

/// Blocks the handled signals in this thread (and every thread started after it).
pub fn block_signals() -> nix::Result<()> {
    handled().thread_block()
}

/// Starts the thread that takes SIGTERM/SIGINT/SIGHUP: background processes are killed, then
/// `cleanup` runs, then the agent exits 0 (as PID 1: everything is killed and the guest powers
/// off).
pub fn spawn_signal_thread(
    agent: Arc<Agent>,
    cleanup: impl FnOnce() + Send + 'static,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("signals".to_owned())
        .stack_size(64 * 1024)
        .spawn(move || {
            let set = handled();
            let signal = loop {
                match set.wait() {
                    Ok(Signal::SIGHUP) => tracing::info!("SIGHUP ignored"),
                    Ok(signal) => break signal,
                    Err(e) => {
                        tracing::warn!(error = %e, "sigwait failed");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            };
            tracing::info!(%signal, "stopping");
            agent.procs.kill_all();
            cleanup();
            if is_pid1() {
                power_off();
            }
            std::process::exit(0);
        })
        .map(drop)
}

/// As PID 1: ends every process, syncs and powers the guest off. Elsewhere: exits.
pub fn power_off() -> ! {
    if !is_pid1() {
        std::process::exit(0);
    }
    let everyone = nix::unistd::Pid::from_raw(-1);
    let _ = nix::sys::signal::kill(everyone, Signal::SIGTERM);
    std::thread::sleep(Duration::from_millis(500));
    let _ = nix::sys::signal::kill(everyone, Signal::SIGKILL);
    nix::unistd::sync();
    let err = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    tracing::error!(error = ?err, "power off failed");
    std::process::exit(1)
}
