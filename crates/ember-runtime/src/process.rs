//! One VMM process: spawned into its slot directory with its stdout (the guest console) and
//! stderr (the VMM's log) going to files there, watched through a pidfd, killed through the
//! same pidfd, and reaped exactly once (by the supervisor).
//!
//! A VMM is tied to its owner's life or not ([`ParentDeath`]). Tied (the CLI's runs): spawned
//! with `PR_SET_PDEATHSIG = SIGKILL` (ember-vmm sets it itself given `--parent-pid`; others start
//! through `setpriv --pdeathsig`), so if the owner dies without shutting the provider down, its
//! VMMs die with it. The parent-death signal fires when the *thread* that spawned the child
//! exits, so only the provider's long-lived spawner thread spawns VMMs (see the `spares`
//! module). Detached (the daemon's): no parent-death signal and a process group of its own (no
//! terminal signal reaches it), so tenants' VMs outlive a daemon restart; the next owner finds
//! them again ([`VmmProcess::adopt`]).
//!
//! Signals go through the pidfd (`pidfd_send_signal`), never through `kill(pid)`: a pidfd names
//! one process for good, so a signal can never reach an unrelated process that was given the
//! same pid after ours was reaped.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};

use crate::layout::SlotPaths;

/// A pidfd: a file descriptor naming one process for as long as it is open.
#[derive(Debug)]
pub struct PidFd(OwnedFd);

impl PidFd {
    /// `pidfd_open(pid, 0)`.
    pub fn open(pid: u32) -> io::Result<PidFd> {
        let pid = i32::try_from(pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ESRCH))?;
        let fd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())?;
        Ok(PidFd(fd))
    }

    /// `pidfd_send_signal(fd, sig, NULL, 0)`. `ESRCH` (already exited) is reported as an error.
    pub fn send_signal(&self, signal: i32) -> io::Result<()> {
        let signal = rustix::process::Signal::from_named_raw(signal)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        rustix::process::pidfd_send_signal(&self.0, signal)?;
        Ok(())
    }
}

impl AsFd for PidFd {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl AsRawFd for PidFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

/// How a VMM process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitInfo {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
    /// It is gone but its status was collected by someone else (another `waitpid` caller).
    Unknown,
}

impl std::fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitInfo::Code(c) => write!(f, "exited with code {c}"),
            ExitInfo::Signal(s) => match nix::sys::signal::Signal::try_from(*s) {
                Ok(nix::sys::signal::Signal::SIGSYS) => {
                    f.write_str("killed by SIGSYS (its seccomp filter stopped a forbidden syscall)")
                }
                Ok(sig) => write!(f, "killed by {sig}"),
                Err(_) => write!(f, "killed by signal {s}"),
            },
            ExitInfo::Unknown => f.write_str("exited (status collected elsewhere)"),
        }
    }
}

/// Why a VMM could not be spawned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProcessError {
    /// A log file in the slot could not be created.
    #[error("cannot create {path}")]
    Files {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The binary could not be started.
    #[error("cannot start the VMM binary {binary}")]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The jailer refused or failed to start the VMM.
    #[error("the jailer could not start the VMM ({exit}): {message}")]
    Jail {
        /// How the jailer ended.
        exit: String,
        /// What it said (the end of the slot's `vmm.log`).
        message: String,
    },
    /// The process started but cannot be watched (the kernel lacks `pidfd_open`, Linux < 5.3).
    #[error("cannot open a pidfd for VMM process {pid}")]
    PidFd {
        /// The process.
        pid: u32,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Why a recorded VMM process cannot be taken over.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdoptProcessError {
    /// The process is not there any more (exited, a zombie, its pid reused, the host rebooted).
    #[error("VMM process {pid} is gone: {why}")]
    Gone {
        /// The recorded pid.
        pid: u32,
        /// What became of it.
        why: String,
    },
}

/// A spawned VMM process and what is known about its end.
#[derive(Debug)]
pub struct VmmProcess {
    pid: u32,
    identity: ember_core::ProcessIdentity,
    pidfd: PidFd,
    paths: SlotPaths,
    spawned_at: Instant,
    exit: Mutex<Option<ExitInfo>>,
    exited: Condvar,
    /// The provider asked for this process to end (destroy, stop, a discarded spare): its exit
    /// is expected and not reported as a death.
    kill_requested: AtomicBool,
    /// Remove the slot directory once the process is reaped (destroyed VMs, discarded spares).
    remove_files_on_exit: AtomicBool,
}

pub(crate) fn log_file(path: &Path) -> Result<File, ProcessError> {
    OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| ProcessError::Files {
            path: path.to_path_buf(),
            source,
        })
}

/// Opens an existing log file for appending (the process's stdout or stderr).
fn log_file_reopen(path: &Path) -> Result<File, ProcessError> {
    OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|source| ProcessError::Files {
            path: path.to_path_buf(),
            source,
        })
}

/// util-linux's `nsenter`, which starts an unjailed VMM in its slot's network namespace.
const NSENTER: &str = "nsenter";

/// How a spawned VMM is made to die with the process that owns it (no VMM outlives a crashed
/// owner).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParentDeath {
    /// The VMM arranges it itself: `--parent-pid <owner>` (ember-vmm sets its parent-death
    /// signal and checks its parent at start). The spawn needs no code in the child between
    /// fork and exec, so the standard library uses `posix_spawn` (`vfork` semantics): no
    /// copy of the owner's page tables, no copy-on-write faults in the owner's other threads.
    Flag,
    /// For VMMs without such a flag (Firecracker): started through util-linux's
    /// `setpriv --pdeathsig KILL`, which sets the signal and execs a shell that checks its
    /// parent is still the owner (the owner may have died before the signal was set) and
    /// execs the VMM — all in the one process the owner spawned, with no code of ours
    /// between fork and exec.
    Launcher,
    /// Not tied to the owner: no parent-death signal, its own process group. It lives until it
    /// is killed or its guest stops.
    Detached,
}

/// The launcher for [`ParentDeath::Launcher`].
const SETPRIV: &str = "setpriv";

/// Run by `sh -c` under `setpriv`: `$0` is the owner's pid, `"$@"` the VMM command.
const OWNER_CHECK: &str = r#"[ "$PPID" = "$0" ] || { echo "ember: owner $0 is gone; not starting $1" >&2; exit 70; }; exec "$@""#;

/// What to start: a VMM binary with its arguments, in a slot, and how.
#[derive(Debug, Clone, Copy)]
pub struct VmmLaunch<'a> {
    /// The VMM binary.
    pub binary: &'a Path,
    /// Arguments after `--api-sock <path> --id <id>`.
    pub extra_args: &'a [OsString],
    /// The slot's files.
    pub paths: &'a SlotPaths,
    /// The VMM's `--id`.
    pub instance_id: &'a str,
    /// How it is tied to this process.
    pub parent_death: ParentDeath,
    /// The network namespace it runs in (the host's when `None`, or a new empty one jailed).
    pub netns: Option<&'a Path>,
}

impl VmmProcess {
    /// Spawns `binary --api-sock <slot>/api.sock --id <instance_id> <extra args>` with stdin
    /// from /dev/null, stdout to `console.log` and stderr to `vmm.log` in the slot (whose
    /// directory must exist), made to die with this process as `parent_death` says, and opens a
    /// pidfd for it.
    ///
    /// With `jail`, the VMM starts through the provider's resident jailer instead (see
    /// [`crate::jail`]), which makes it this process's child: the process watched is the VMM
    /// itself, tied to this process by a parent-death signal (`ParentDeath::Flag`/`Launcher`)
    /// or, detached, in a session of its own.
    pub fn spawn(
        launch: &VmmLaunch<'_>,
        jail: Option<&crate::jail::Jails>,
    ) -> Result<VmmProcess, ProcessError> {
        let VmmLaunch {
            binary,
            extra_args,
            paths,
            instance_id,
            parent_death,
            netns,
        } = *launch;
        let stdout = log_file(&paths.console_log)?;
        let stderr = log_file(&paths.vmm_log)?;
        if let Some(jail) = jail {
            return Self::spawn_jailed(jail, launch, (stdout, stderr));
        }
        let owner = std::process::id().to_string();
        let (mut cmd, started) = match parent_death {
            ParentDeath::Flag | ParentDeath::Detached => {
                (Command::new(binary), binary.to_path_buf())
            }
            ParentDeath::Launcher => {
                let mut c = Command::new(SETPRIV);
                c.args(["--pdeathsig", "KILL", "--", "/bin/sh", "-c", OWNER_CHECK])
                    .arg(&owner)
                    .arg(binary);
                (c, PathBuf::from(SETPRIV))
            }
        };
        cmd.arg("--api-sock")
            .arg(&paths.api_sock)
            .arg("--id")
            .arg(instance_id)
            .args(extra_args)
            .current_dir(&paths.dir)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        match parent_death {
            ParentDeath::Flag => {
                cmd.arg("--parent-pid").arg(&owner);
            }
            // posix_spawn's own setpgid: still no code of ours between fork and exec.
            ParentDeath::Detached => {
                use std::os::unix::process::CommandExt;
                cmd.process_group(0);
            }
            ParentDeath::Launcher => {}
        }
        if let Some(ns) = netns {
            // Unjailed: util-linux's nsenter joins the namespace and execs the VMM (same
            // process, same parent: the parent-death arrangements above still hold).
            let mut wrapped = Command::new(NSENTER);
            let mut net = std::ffi::OsString::from("--net=");
            net.push(ns.as_os_str());
            wrapped
                .arg(net)
                .arg("--")
                .arg(cmd.get_program())
                .args(cmd.get_args())
                .current_dir(&paths.dir)
                .stdin(Stdio::null())
                .stdout(log_file_reopen(&paths.console_log)?)
                .stderr(log_file_reopen(&paths.vmm_log)?);
            if parent_death == ParentDeath::Detached {
                use std::os::unix::process::CommandExt;
                wrapped.process_group(0);
            }
            cmd = wrapped;
        }
        let spawned_at = Instant::now();
        let child = cmd.spawn().map_err(|source| ProcessError::Spawn {
            binary: started,
            source,
        })?;
        let pid = child.id();
        // The `Child` is dropped without waiting: the supervisor reaps through the pidfd.
        drop(child);
        Self::watch(pid, paths, spawned_at)
    }

    /// Opens a pidfd and the identity of our child `pid`, or kills and reaps it.
    pub(crate) fn watch(
        pid: u32,
        paths: &SlotPaths,
        spawned_at: Instant,
    ) -> Result<VmmProcess, ProcessError> {
        let opened = PidFd::open(pid).and_then(|fd| {
            // The pid is ours until we reap it, so its /proc entry is this very process.
            let identity = crate::procfs::identity_of(pid).map_err(std::io::Error::other)?;
            Ok((fd, identity))
        });
        let (pidfd, identity) = match opened {
            Ok(o) => o,
            Err(source) => {
                // Cannot watch it: kill and reap it here rather than leak it.
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
                let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid as i32), None);
                return Err(ProcessError::PidFd { pid, source });
            }
        };
        Ok(VmmProcess {
            pid,
            identity,
            pidfd,
            paths: paths.clone(),
            spawned_at,
            exit: Mutex::new(None),
            exited: Condvar::new(),
            kill_requested: AtomicBool::new(false),
            remove_files_on_exit: AtomicBool::new(false),
        })
    }

    /// Takes over a VMM an earlier owner spawned (detached) into `paths`: opens a pidfd for
    /// `identity.pid` and checks, after the pidfd is open (so the pid cannot change hands in
    /// between), that the process is still the one `identity` names. It is not our child: its
    /// exit is seen through the pidfd and its status is collected by its real parent.
    pub fn adopt(
        identity: &ember_core::ProcessIdentity,
        paths: &SlotPaths,
    ) -> Result<VmmProcess, AdoptProcessError> {
        let pidfd = PidFd::open(identity.pid).map_err(|source| AdoptProcessError::Gone {
            pid: identity.pid,
            why: format!("no such process ({source})"),
        })?;
        match crate::procfs::liveness(identity) {
            Ok(crate::procfs::Liveness::Alive) => {}
            Ok(other) => {
                return Err(AdoptProcessError::Gone {
                    pid: identity.pid,
                    why: other.describe(),
                });
            }
            Err(e) => {
                return Err(AdoptProcessError::Gone {
                    pid: identity.pid,
                    why: e.to_string(),
                });
            }
        }
        Ok(VmmProcess {
            pid: identity.pid,
            identity: identity.clone(),
            pidfd,
            paths: paths.clone(),
            spawned_at: Instant::now(),
            exit: Mutex::new(None),
            exited: Condvar::new(),
            kill_requested: AtomicBool::new(false),
            remove_files_on_exit: AtomicBool::new(false),
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The process's identity (pid, start time, boot id), taken when it was spawned or adopted.
    pub fn identity(&self) -> &ember_core::ProcessIdentity {
        &self.identity
    }

    /// The pidfd (readable once the process has exited).
    pub fn pidfd(&self) -> &PidFd {
        &self.pidfd
    }

    /// The slot number.
    pub fn slot(&self) -> u64 {
        self.paths.slot
    }

    /// The slot's files.
    pub fn paths(&self) -> &SlotPaths {
        &self.paths
    }

    /// When it was spawned.
    pub fn spawned_at(&self) -> Instant {
        self.spawned_at
    }

    /// Asks for the process to end now (SIGKILL); its exit will not be reported as a death.
    /// With `remove_files`, the slot directory is removed again once the process is reaped.
    pub fn kill(&self, remove_files: bool) {
        self.kill_requested.store(true, Ordering::SeqCst);
        if remove_files {
            self.remove_files_on_exit.store(true, Ordering::SeqCst);
        }
        match self.pidfd.send_signal(libc::SIGKILL) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {} // already exited
            Err(e) => tracing::error!(pid = self.pid, error = %e, "cannot kill a VMM process"),
        }
    }

    /// Whether the provider asked for this process to end.
    pub fn kill_requested(&self) -> bool {
        self.kill_requested.load(Ordering::SeqCst)
    }

    /// Whether the slot should be removed once the process is reaped.
    pub fn remove_files_on_exit(&self) -> bool {
        self.remove_files_on_exit.load(Ordering::SeqCst)
    }

    /// How it ended, once reaped.
    pub fn exit_info(&self) -> Option<ExitInfo> {
        *self.exit.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether it has been reaped.
    pub fn has_exited(&self) -> bool {
        self.exit_info().is_some()
    }

    /// Waits up to `timeout` for the process to be reaped.
    pub fn wait_exit(&self, timeout: Duration) -> Option<ExitInfo> {
        let deadline = Instant::now() + timeout;
        let mut exit = self.exit.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(e) = *exit {
                return Some(e);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            exit = self
                .exited
                .wait_timeout(exit, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// Whether the pidfd says the process has exited (poll, no wait).
    fn pidfd_readable(&self) -> bool {
        let mut fds = [nix::poll::PollFd::new(
            self.pidfd.0.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        matches!(nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO), Ok(n) if n > 0)
    }

    /// Waits until `deadline` for the process to exit and reaps it here (for a process the
    /// supervisor does not watch); false if it is still there then — a killed process the
    /// kernel holds (in uninterruptible sleep, say) must not hang its owner's shutdown.
    pub(crate) fn reap_by(&self, deadline: Instant) -> bool {
        match reap_pidfd_by(self.pidfd.0.as_fd(), deadline) {
            Some(info) => {
                self.set_exit(info);
                true
            }
            None => false,
        }
    }

    fn set_exit(&self, info: ExitInfo) {
        *self.exit.lock().unwrap_or_else(|p| p.into_inner()) = Some(info);
        self.exited.notify_all();
    }

    /// Reaps the process if it has exited (`waitid(P_PIDFD, WNOHANG)`); returns how it ended.
    /// Only the supervisor calls this, once its pidfd is readable.
    pub(crate) fn try_reap(&self) -> io::Result<Option<ExitInfo>> {
        let status = loop {
            match waitid(
                Id::PIDFd(self.pidfd.0.as_fd()),
                WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG,
            ) {
                Ok(s) => break s,
                Err(nix::errno::Errno::EINTR) => continue,
                // Someone else reaped it (a stray waitpid(-1) in the host process).
                Err(nix::errno::Errno::ECHILD) => break WaitStatus::StillAlive,
                Err(e) => return Err(io::Error::from_raw_os_error(e as i32)),
            }
        };
        let info = match status {
            WaitStatus::Exited(_, code) => ExitInfo::Code(code),
            WaitStatus::Signaled(_, sig, _) => ExitInfo::Signal(sig as i32),
            WaitStatus::StillAlive if self.pidfd_readable() => ExitInfo::Unknown,
            _ => return Ok(None),
        };
        self.set_exit(info);
        Ok(Some(info))
    }
}

/// Reaps the child `pidfd` names once it has exited, waiting (on the pidfd) until `deadline`
/// at most; `None` if it has not exited by then. A child someone else reaped ends as
/// [`ExitInfo::Unknown`].
fn reap_pidfd_by(pidfd: std::os::fd::BorrowedFd<'_>, deadline: Instant) -> Option<ExitInfo> {
    loop {
        match waitid(
            Id::PIDFd(pidfd),
            WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG,
        ) {
            Err(nix::errno::Errno::EINTR) => continue,
            Ok(WaitStatus::StillAlive) => {}
            Ok(WaitStatus::Exited(_, code)) => return Some(ExitInfo::Code(code)),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Some(ExitInfo::Signal(sig as i32)),
            // ECHILD (reaped elsewhere) or a status that is no exit.
            _ => return Some(ExitInfo::Unknown),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        // The pidfd turns readable when the process exits; wake at least every 100 ms.
        let wait = nix::poll::PollTimeout::try_from(left.min(Duration::from_millis(100)))
            .unwrap_or(nix::poll::PollTimeout::ZERO);
        let mut fds = [nix::poll::PollFd::new(pidfd, nix::poll::PollFlags::POLLIN)];
        let _ = nix::poll::poll(&mut fds, wait);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_read_well_and_a_seccomp_kill_says_so() {
        assert_eq!(ExitInfo::Code(2).to_string(), "exited with code 2");
        assert_eq!(ExitInfo::Signal(9).to_string(), "killed by SIGKILL");
        assert!(
            ExitInfo::Signal(libc::SIGSYS)
                .to_string()
                .contains("seccomp")
        );
    }

    fn launch(owner: &str, cmd: &[&str]) -> std::process::Output {
        Command::new(SETPRIV)
            .args([
                "--pdeathsig",
                "KILL",
                "--",
                "/bin/sh",
                "-c",
                OWNER_CHECK,
                owner,
            ])
            .args(cmd)
            .output()
            .unwrap()
    }

    #[test]
    fn a_bounded_reap_gives_up_on_a_live_child_and_reaps_a_dead_one() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let pidfd = PidFd::open(child.id()).unwrap();
        let t0 = Instant::now();
        let gone = reap_pidfd_by(pidfd.0.as_fd(), t0 + Duration::from_millis(150));
        assert!(gone.is_none(), "a sleeping child is not reaped: {gone:?}");
        assert!(
            t0.elapsed() >= Duration::from_millis(150),
            "it waited until the deadline"
        );
        child.kill().unwrap();
        let ended = reap_pidfd_by(pidfd.0.as_fd(), Instant::now() + Duration::from_secs(30));
        assert_eq!(ended, Some(ExitInfo::Signal(libc::SIGKILL)));
        // Reaped here: nothing is left for a waitpid.
        assert!(
            child.try_wait().is_err(),
            "the child was reaped by the pidfd"
        );
    }

    #[test]
    fn the_launcher_execs_the_vmm_only_for_its_owner() {
        // Spawned by this process: the check passes and the command runs with its arguments.
        let me = std::process::id().to_string();
        let out = launch(&me, &["/bin/echo", "a b", "c"]);
        assert!(out.status.success(), "{out:?}");
        assert_eq!(out.stdout, b"a b c\n");
        // An owner that is not the parent (it died and the child was re-parented): refused.
        let out = launch("1", &["/bin/echo", "never"]);
        assert_eq!(out.status.code(), Some(70), "{out:?}");
        assert!(out.stdout.is_empty());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("owner 1 is gone; not starting /bin/echo"),
            "{err}"
        );
    }
}
