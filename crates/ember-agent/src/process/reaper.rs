//! The reaper: the one thread that waits for children, commands and orphans alike.
//!
//! Owns `waitpid(-1)`: every exit status of the agent's children goes through it, so the agent
//! can also be PID 1 (orphans re-parented to it are reaped and forgotten). A command spawned
//! through [`Reaper::spawn`] is registered under the reaper's lock before the exec's outcome is
//! known, so even a child that dies at once is reported to its [`ExitWatch`]. The watch is a
//! pipe that closes when the status is in, so output pumps can `poll` for it beside the
//! command's output. It does not read output or kill anything.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;

use super::spawn::{self, SpawnError, SpawnSpec, Stdio};

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this status.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
}

impl Exit {
    /// The protocol's `exit_code`: the status, or `-N` for death by signal N.
    pub fn wire_code(self) -> i32 {
        match self {
            Exit::Code(code) => code,
            Exit::Signal(signal) => -signal,
        }
    }
}

/// Where one child's exit status arrives.
#[derive(Debug)]
pub struct ExitWatch {
    slot: Arc<Mutex<Option<Exit>>>,
    /// Read end of a pipe whose write end the reaper drops when the status is in.
    fd: OwnedFd,
}

impl ExitWatch {
    /// A descriptor that polls readable (hang-up) once the child has exited.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The exit status, once the child has exited.
    pub fn get(&self) -> Option<Exit> {
        *lock(&self.slot)
    }

    /// Blocks until the child has exited.
    pub fn wait(&self) -> Exit {
        loop {
            if let Some(exit) = self.get() {
                return exit;
            }
            let mut fds = [PollFd::new(self.fd(), PollFlags::POLLIN)];
            match nix::poll::poll(&mut fds, PollTimeout::NONE) {
                Ok(_) | Err(Errno::EINTR) => {}
                // Cannot poll: fall back to sleeping between looks.
                Err(_) => thread::sleep(Duration::from_millis(10)),
            }
        }
    }
}

struct Waiter {
    slot: Arc<Mutex<Option<Exit>>>,
    /// Dropped (closing the pipe) when the status is in.
    _notify: OwnedFd,
}

#[derive(Default)]
struct Inner {
    waiters: HashMap<i32, Waiter>,
    /// Bumped at every spawn, so a reaper that found no children knows to look again.
    spawned: u64,
}

/// The agent's reaper thread and the children it waits for.
pub struct Reaper {
    inner: Mutex<Inner>,
    wake: Condvar,
}

impl std::fmt::Debug for Reaper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reaper").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Reaper {
    /// Starts the reaper thread.
    pub fn start() -> std::io::Result<Arc<Reaper>> {
        let reaper = Arc::new(Reaper {
            inner: Mutex::new(Inner::default()),
            wake: Condvar::new(),
        });
        let run = Arc::clone(&reaper);
        thread::Builder::new()
            .name("reaper".to_owned())
            .stack_size(64 * 1024)
            .spawn(move || run.run())?;
        Ok(reaper)
    }

    /// Spawns `spec` with `stdio`, its exit to be reported to the returned watch.
    pub fn spawn(
        &self,
        spec: &SpawnSpec,
        stdio: Stdio<'_>,
    ) -> Result<(Pid, ExitWatch), SpawnError> {
        let (watch_r, watch_w) = spawn::pipe()?;
        let slot = Arc::new(Mutex::new(None));
        let waiter = Waiter {
            slot: Arc::clone(&slot),
            _notify: watch_w,
        };
        // Held across fork until the pid is registered: the reaper cannot see the child's
        // status before its waiter is in place.
        let mut inner = lock(&self.inner);
        let pid = spawn::spawn(spec, stdio, move |pid| {
            inner.waiters.insert(pid.as_raw(), waiter);
            inner.spawned += 1;
            drop(inner);
        });
        self.wake.notify_all();
        Ok((pid?, ExitWatch { slot, fd: watch_r }))
    }

    fn run(&self) {
        let mut seen = 0;
        loop {
            match waitpid(Pid::from_raw(-1), None) {
                Ok(WaitStatus::Exited(pid, code)) => self.deliver(pid, Exit::Code(code)),
                Ok(WaitStatus::Signaled(pid, signal, _)) => {
                    self.deliver(pid, Exit::Signal(signal as i32));
                }
                Ok(_) | Err(Errno::EINTR) => {}
                Err(Errno::ECHILD) => {
                    // No children: sleep until a spawn (or, as PID 1, now and then).
                    let inner = lock(&self.inner);
                    if inner.spawned == seen {
                        let (inner, _) = self
                            .wake
                            .wait_timeout(inner, Duration::from_secs(1))
                            .unwrap_or_else(PoisonError::into_inner);
                        seen = inner.spawned;
                    } else {
                        seen = inner.spawned;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "waitpid failed");
                    thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    fn deliver(&self, pid: Pid, exit: Exit) {
        let waiter = lock(&self.inner).waiters.remove(&pid.as_raw());
        match waiter {
            Some(waiter) => {
                *lock(&waiter.slot) = Some(exit);
                // Dropping the waiter closes the pipe: the watch polls readable.
            }
            None => tracing::debug!(pid = pid.as_raw(), ?exit, "reaped an orphan"),
        }
    }
}
