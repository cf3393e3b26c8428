//! fork(2) and execve(2) of one prepared command: the agent's only fork.
//!
//! Owns what happens between fork and exec in the child — unblocked signals with default
//! dispositions, a new session (so the command leads its own process group and a timeout or
//! a signal can reach all of it), standard streams, supplementary groups, gid, uid, working
//! directory — and reporting a failed step back to the parent through a close-on-exec pipe, so
//! "permission denied" or "no such directory" are errors of the spawn and not exit codes.
//! Everything the child touches is prepared before fork (no allocation, no lock, only
//! async-signal-safe calls after it). It does not wait for the child (the reaper does) and does
//! not resolve programs or users (the caller does).
#![allow(unsafe_code)] // fork, the child's libc calls and execve: FFI with no safe wrapper that avoids allocating after fork.

use std::ffi::{CStr, CString};
use std::fmt;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::unistd::Pid;

/// The user and groups a command runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

/// A command ready to spawn: every string already NUL-terminated.
#[derive(Debug, Clone)]
pub struct SpawnSpec {
    /// The program's path (absolute, or relative to `cwd`).
    pub program: CString,
    /// Arguments, `argv[0]` first.
    pub argv: Vec<CString>,
    /// The whole environment, `KEY=VALUE`.
    pub env: Vec<CString>,
    /// Working directory.
    pub cwd: CString,
    /// Who to run as; `None`: as the agent.
    pub credentials: Option<Credentials>,
    /// Make stdin (a terminal) the new session's controlling terminal.
    pub controlling_tty: bool,
}

/// The descriptors that become the child's fds 0, 1 and 2.
#[derive(Debug, Clone, Copy)]
pub struct Stdio<'a> {
    /// Standard input.
    pub stdin: BorrowedFd<'a>,
    /// Standard output.
    pub stdout: BorrowedFd<'a>,
    /// Standard error.
    pub stderr: BorrowedFd<'a>,
}

/// The step of the child's setup that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Redirecting the standard streams.
    Stdio,
    /// setgroups, setgid or setuid.
    Credentials,
    /// chdir to the working directory.
    Chdir,
    /// execve of the program.
    Exec,
}

impl Step {
    fn from_u32(v: u32) -> Step {
        match v {
            1 => Step::Stdio,
            2 => Step::Credentials,
            3 => Step::Chdir,
            _ => Step::Exec,
        }
    }

    const fn as_u32(self) -> u32 {
        match self {
            Step::Stdio => 1,
            Step::Credentials => 2,
            Step::Chdir => 3,
            Step::Exec => 4,
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Stdio => "redirecting standard streams",
            Step::Credentials => "switching user",
            Step::Chdir => "changing directory",
            Step::Exec => "executing",
        })
    }
}

/// Spawning failed.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The agent could not set up the spawn (pipe, fork).
    #[error("spawn: {what}: {errno}")]
    Setup {
        /// What failed.
        what: &'static str,
        /// Why.
        errno: Errno,
    },
    /// The child failed a step before exec (it has exited with 127; the reaper collects it).
    #[error("{step}: {errno}")]
    Child {
        /// The step.
        step: Step,
        /// Why.
        errno: Errno,
    },
}

/// Forks and execs `spec` with `stdio`; `on_forked` runs in the parent right after fork, before
/// the exec's outcome is known (the reaper registers the pid there, so an early exit is not
/// missed). Returns once the child has exec'd or failed.
pub fn spawn(
    spec: &SpawnSpec,
    stdio: Stdio<'_>,
    on_forked: impl FnOnce(Pid),
) -> Result<Pid, SpawnError> {
    // Everything the child needs, built before fork.
    let argv = pointers(&spec.argv);
    let env = pointers(&spec.env);
    let groups: Vec<libc::gid_t> = spec
        .credentials
        .as_ref()
        .map(|c| c.groups.clone())
        .unwrap_or_default();
    let (report_r, report_w) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|errno| SpawnError::Setup {
            what: "pipe",
            errno,
        })?;
    let child = ChildPlan {
        program: &spec.program,
        argv: &argv,
        env: &env,
        cwd: &spec.cwd,
        credentials: spec.credentials.as_ref(),
        groups: &groups,
        stdio: [
            stdio.stdin.as_raw_fd(),
            stdio.stdout.as_raw_fd(),
            stdio.stderr.as_raw_fd(),
        ],
        controlling_tty: spec.controlling_tty,
        report: report_w.as_raw_fd(),
    };
    // SAFETY: the child runs only `run_child`, which makes async-signal-safe libc calls on
    // data prepared above (no allocation, no locks) and ends in execve or _exit.
    let pid = match unsafe { libc::fork() } {
        -1 => {
            return Err(SpawnError::Setup {
                what: "fork",
                errno: Errno::last(),
            });
        }
        // SAFETY: in the child of fork, see above.
        0 => unsafe { run_child(&child) },
        pid => Pid::from_raw(pid),
    };
    on_forked(pid);
    drop(report_w);
    let mut buf = [0u8; 8];
    let mut got = 0;
    while got < buf.len() {
        match nix::unistd::read(&report_r, buf.get_mut(got..).unwrap_or_default()) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(Errno::EINTR) => {}
            Err(errno) => {
                return Err(SpawnError::Setup {
                    what: "reading the child's report",
                    errno,
                });
            }
        }
    }
    if got == 0 {
        return Ok(pid); // the close-on-exec pipe closed: execve succeeded
    }
    let (step, errno) = buf.split_at(4);
    let step = Step::from_u32(u32::from_le_bytes(step.try_into().unwrap_or_default()));
    let errno = Errno::from_raw(i32::from_le_bytes(errno.try_into().unwrap_or_default()));
    Err(SpawnError::Child { step, errno })
}

/// A NULL-terminated array of pointers into `strings` (which must outlive it).
fn pointers(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// What the child does, all prepared in the parent.
struct ChildPlan<'a> {
    program: &'a CStr,
    argv: &'a [*const libc::c_char],
    env: &'a [*const libc::c_char],
    cwd: &'a CStr,
    credentials: Option<&'a Credentials>,
    groups: &'a [libc::gid_t],
    stdio: [RawFd; 3],
    controlling_tty: bool,
    report: RawFd,
}

/// The child's side of [`spawn`]: never returns.
///
/// # Safety
/// Call only in the child of `fork`; every pointer in `plan` must be valid.
unsafe fn run_child(plan: &ChildPlan<'_>) -> ! {
    // SAFETY: only async-signal-safe libc calls, on data prepared before fork whose pointers
    // stay valid (the parent's memory, copied into the child).
    unsafe {
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        // Rust ignores SIGPIPE; ignored dispositions survive exec, so restore the default.
        for signal in 1..32 {
            if signal != libc::SIGKILL && signal != libc::SIGSTOP {
                libc::signal(signal, libc::SIG_DFL);
            }
        }
        libc::setsid();
        for (target, source) in plan.stdio.iter().enumerate() {
            let target = target as RawFd;
            let ok = if *source == target {
                // dup2 onto itself keeps close-on-exec: clear it instead.
                libc::fcntl(target, libc::F_SETFD, 0) != -1
            } else {
                libc::dup2(*source, target) != -1
            };
            if !ok {
                fail(plan.report, Step::Stdio);
            }
        }
        if plan.controlling_tty && libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
            fail(plan.report, Step::Stdio);
        }
        if let Some(c) = plan.credentials
            && (libc::setgroups(plan.groups.len(), plan.groups.as_ptr()) != 0
                || libc::setgid(c.gid) != 0
                || libc::setuid(c.uid) != 0)
        {
            fail(plan.report, Step::Credentials);
        }
        if libc::chdir(plan.cwd.as_ptr()) != 0 {
            fail(plan.report, Step::Chdir);
        }
        libc::execve(plan.program.as_ptr(), plan.argv.as_ptr(), plan.env.as_ptr());
        fail(plan.report, Step::Exec)
    }
}

/// Reports `step` and errno to the parent and exits 127.
///
/// # Safety
/// Call only in the child of `fork`.
unsafe fn fail(report: RawFd, step: Step) -> ! {
    // SAFETY: async-signal-safe calls on a stack buffer.
    unsafe {
        let errno = *libc::__errno_location();
        let mut buf = [0u8; 8];
        buf[..4].copy_from_slice(&step.as_u32().to_le_bytes());
        buf[4..].copy_from_slice(&errno.to_le_bytes());
        libc::write(report, buf.as_ptr().cast(), buf.len());
        libc::_exit(127)
    }
}

/// A pipe whose ends are close-on-exec.
pub fn pipe() -> Result<(OwnedFd, OwnedFd), SpawnError> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|errno| SpawnError::Setup {
        what: "pipe",
        errno,
    })
}
