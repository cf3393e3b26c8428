//! The output pump: one command's stdout and stderr read as they come, stdin fed, its exit and
//! its time limit watched — all in one `poll` loop.
//!
//! Owns the life of a running command from spawn to exit: chunks go to a callback in the order
//! they were read (tagged stdout or stderr), a time limit kills the whole process group, and
//! after the exit a short grace period collects what is still in the pipes (a background child
//! that keeps them open does not hold the exit back). It does not know where output goes
//! (Exec buffers it, background processes stream it).
#![forbid(unsafe_code)]

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use super::reaper::{Exit, ExitWatch};

/// How long output is still collected after the command exited while its pipes stay open.
pub const EXIT_GRACE: Duration = Duration::from_millis(100);

/// Largest chunk read (and streamed) at once.
pub const CHUNK: usize = 32 * 1024;

/// Which output stream a chunk came from (the protocol's numbering).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout = 1,
    /// Standard error.
    Stderr = 2,
}

/// How the command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    /// Its exit status.
    pub exit: Exit,
    /// Its time limit expired and its process group was killed.
    pub timed_out: bool,
    /// The watched peer hung up and the process group was killed.
    pub cancelled: bool,
}

/// Bytes to write to the command's stdin, then close it.
#[derive(Debug)]
pub struct Feed<'a> {
    /// The write end of the command's stdin pipe.
    pub fd: OwnedFd,
    /// What is still to be written.
    pub data: &'a [u8],
}

/// Sets `O_NONBLOCK` on `fd`.
pub fn set_nonblocking(fd: &impl AsFd) -> nix::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(fd.as_fd(), FcntlArg::F_GETFL)?);
    fcntl(fd.as_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map(drop)
}

/// Runs the loop until the command has exited and its output is collected. If `peer` (the
/// host's connection) hangs up meanwhile, nobody waits for the result: the process group is
/// killed.
#[allow(clippy::too_many_arguments)] // one call per kind of command; a struct would only rename them
pub fn pump(
    pid: Pid,
    exit: &ExitWatch,
    stdout: OwnedFd,
    stderr: Option<OwnedFd>,
    mut feed: Option<Feed<'_>>,
    deadline: Option<Instant>,
    mut peer: Option<BorrowedFd<'_>>,
    mut on_output: impl FnMut(Stream, &[u8]),
) -> Ended {
    let mut outputs = [Some(stdout), stderr];
    let mut exited_at: Option<Instant> = None;
    let mut timed_out = false;
    let mut cancelled = false;
    let mut buf = vec![0u8; CHUNK];
    if let Some(f) = &feed
        && (f.data.is_empty() || set_nonblocking(&f.fd).is_err())
    {
        feed = None; // nothing to write (or cannot write safely): close stdin now
    }
    loop {
        let now = Instant::now();
        if let Some(at) = exited_at
            && (outputs.iter().all(Option::is_none) || now >= at + EXIT_GRACE)
        {
            break;
        }
        // The nearest of: the time limit (until it fired), the end of the grace period.
        let wake = [
            deadline.filter(|_| !timed_out),
            exited_at.map(|at| at + EXIT_GRACE),
        ]
        .into_iter()
        .flatten()
        .min();
        let timeout = match wake {
            Some(at) => {
                let ms = at.saturating_duration_since(now).as_millis();
                PollTimeout::try_from(ms.max(1)).unwrap_or(PollTimeout::MAX)
            }
            None => PollTimeout::NONE,
        };
        // revents of: stdout, stderr, stdin, exit watch, peer.
        let mut ready = [false; 5];
        {
            let mut fds = Vec::with_capacity(4);
            let mut slots = Vec::with_capacity(4);
            for (i, out) in outputs.iter().enumerate() {
                if let Some(fd) = out {
                    fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
                    slots.push(i);
                }
            }
            if let Some(f) = &feed {
                fds.push(PollFd::new(f.fd.as_fd(), PollFlags::POLLOUT));
                slots.push(2);
            }
            if exited_at.is_none() {
                fds.push(PollFd::new(exit.fd(), PollFlags::POLLIN));
                slots.push(3);
                if let Some(fd) = peer {
                    fds.push(PollFd::new(
                        fd,
                        PollFlags::from_bits_retain(libc::POLLRDHUP),
                    ));
                    slots.push(4);
                }
            }
            match nix::poll::poll(&mut fds, timeout) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "poll failed in the output pump");
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            for (fd, slot) in fds.iter().zip(slots) {
                // `None`: bits nix has no name for (POLLRDHUP), which also mean "ready".
                if fd.revents().is_none_or(|r| !r.is_empty())
                    && let Some(r) = ready.get_mut(slot)
                {
                    *r = true;
                }
            }
        }
        for (i, stream) in [Stream::Stdout, Stream::Stderr].into_iter().enumerate() {
            if !ready.get(i).copied().unwrap_or(false) {
                continue;
            }
            let Some(slot) = outputs.get_mut(i) else {
                continue;
            };
            let Some(fd) = slot.as_ref() else { continue };
            match nix::unistd::read(fd, &mut buf) {
                Ok(0) => *slot = None,
                Ok(n) => on_output(stream, buf.get(..n).unwrap_or_default()),
                Err(Errno::EINTR | Errno::EAGAIN) => {}
                // EIO: a terminal whose every slave end closed.
                Err(_) => *slot = None,
            }
        }
        if ready[2]
            && let Some(f) = &mut feed
        {
            let n = f.data.len().min(64 * 1024);
            match nix::unistd::write(&f.fd, f.data.get(..n).unwrap_or_default()) {
                Ok(written) => f.data = f.data.get(written..).unwrap_or_default(),
                Err(Errno::EINTR | Errno::EAGAIN) => {}
                // EPIPE: the command closed its stdin; the rest is dropped.
                Err(_) => f.data = &[],
            }
            if f.data.is_empty() {
                feed = None; // closes stdin: the command sees end of file
            }
        }
        if ready[4] && exited_at.is_none() {
            tracing::info!(pid = pid.as_raw(), "the host hung up: killing the command");
            cancelled = true;
            peer = None;
            kill_group(pid, Signal::SIGKILL);
        }
        if ready[3] && exit.get().is_some() {
            exited_at = Some(Instant::now());
            feed = None;
        }
        if let Some(at) = deadline
            && !timed_out
            && exited_at.is_none()
            && Instant::now() >= at
        {
            timed_out = true;
            kill_group(pid, Signal::SIGKILL);
        }
    }
    Ended {
        exit: exit.wait(),
        timed_out,
        cancelled,
    }
}

/// Sends `signal` to the process group led by `pid` (every command leads its own).
pub fn kill_group(pid: Pid, signal: Signal) {
    if let Err(e) = killpg(pid, signal) {
        tracing::debug!(pid = pid.as_raw(), error = %e, "killpg failed");
    }
}
