//! Background processes: started, listed, signalled, fed stdin and streamed while they run.
//!
//! Owns the table of processes started with ProcessStart (handles never reused while the agent
//! runs; the last [`KEEP_EXITED`] exited ones are kept for ProcessList and late attaches), each
//! one's output pump thread, and its subscribers: every attached connection gets the output
//! from the moment it attached, in the order it was read, then the exit. A subscriber that
//! falls behind by [`STREAM_QUEUE`] chunks for [`STALL_LIMIT`] is dropped (its stream ends with
//! Error `BUSY`) so one stalled host never stalls the process. Closing a connection drops its
//! streams, never its processes. Spawning is `process`'s job; framing is the server's.
//!
//! Submodules: `requests` (the Process* requests), `start` (spawning with pipes or a terminal,
//! and the pump thread), `stream` (writing a subscriber's events as frames).
#![forbid(unsafe_code)]

mod requests;
mod start;
mod stream;

pub use requests::answer;

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crossbeam_channel::{Receiver, SendTimeoutError, Sender, bounded};
use ember_agent_proto::ErrorCode;
use ember_agent_proto::message::OutputStream;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::process::pump::kill_group;
use crate::process::reaper::ExitWatch;
use crate::refusal::Refusal;

/// Exited processes kept for listing and attaching.
pub const KEEP_EXITED: usize = 64;

/// Chunks queued per subscriber.
pub const STREAM_QUEUE: usize = 256;

/// How long a full subscriber queue may hold the process's output before it is dropped.
pub const STALL_LIMIT: Duration = Duration::from_secs(10);

/// How long one ProcessInput waits for a full stdin pipe.
pub const INPUT_WAIT: Duration = Duration::from_secs(1);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a subscriber receives.
#[derive(Debug, Clone)]
enum Event {
    Output(OutputStream, Vec<u8>),
    Exit { exit_code: i32, timed_out: bool },
}

#[derive(Debug)]
struct Subscriber {
    id: u64,
    connection: u64,
    tx: Sender<Event>,
}

#[derive(Debug, Default)]
struct State {
    /// Exit code and timed-out flag, once the pump is done.
    exit: Option<(i32, bool)>,
    subscribers: Vec<Subscriber>,
    next_subscriber: u64,
}

/// One background process.
#[derive(Debug)]
pub struct Proc {
    handle: u64,
    pid: Pid,
    argv: Vec<Vec<u8>>,
    cwd: Vec<u8>,
    user: String,
    watch: ExitWatch,
    state: Mutex<State>,
    /// The write end of its stdin (non-blocking), while open (a terminal's master).
    stdin: Mutex<Option<OwnedFd>>,
    /// Its terminal's master, if it runs on one.
    terminal: Option<OwnedFd>,
}

impl Proc {
    fn exited(&self) -> bool {
        self.watch.get().is_some()
    }

    fn subscribe(&self, connection: u64) -> Result<Receiver<Event>, (i32, bool)> {
        let mut state = lock(&self.state);
        if let Some(exit) = state.exit {
            return Err(exit);
        }
        let (tx, rx) = bounded(STREAM_QUEUE);
        let id = state.next_subscriber;
        state.next_subscriber += 1;
        state.subscribers.push(Subscriber { id, connection, tx });
        Ok(rx)
    }

    /// Sends `event` to every subscriber, dropping those stalled past the limit.
    fn broadcast(&self, event: &Event) {
        let targets: Vec<(u64, Sender<Event>)> = lock(&self.state)
            .subscribers
            .iter()
            .map(|s| (s.id, s.tx.clone()))
            .collect();
        for (id, tx) in targets {
            match tx.send_timeout(event.clone(), STALL_LIMIT) {
                Ok(()) => {}
                Err(SendTimeoutError::Timeout(_) | SendTimeoutError::Disconnected(_)) => {
                    tracing::warn!(
                        handle = self.handle,
                        "dropping a process stream that fell behind or went away"
                    );
                    lock(&self.state).subscribers.retain(|s| s.id != id);
                }
            }
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    procs: BTreeMap<u64, Arc<Proc>>,
    next_handle: u64,
    /// Pids of Exec commands running now (killed at shutdown too).
    execs: std::collections::HashSet<i32>,
}

/// Keeps an Exec command's pid in the table while it runs.
#[derive(Debug)]
pub struct ExecGuard<'t> {
    table: &'t Table,
    pid: Pid,
}

impl Drop for ExecGuard<'_> {
    fn drop(&mut self) {
        lock(&self.table.inner).execs.remove(&self.pid.as_raw());
    }
}

/// Every background process the agent started.
#[derive(Debug, Default)]
pub struct Table {
    inner: Mutex<Inner>,
}

impl Table {
    fn get(&self, handle: u64) -> Result<Arc<Proc>, Refusal> {
        lock(&self.inner)
            .procs
            .get(&handle)
            .cloned()
            .ok_or_else(|| {
                Refusal::new(
                    ErrorCode::NOT_FOUND,
                    format!("no process with handle {handle}"),
                )
            })
    }

    fn running(&self, handle: u64) -> Result<Arc<Proc>, Refusal> {
        let proc = self.get(handle)?;
        if proc.exited() {
            return Err(Refusal::new(
                ErrorCode::NOT_FOUND,
                format!("process {handle} (pid {}) has exited", proc.pid),
            ));
        }
        Ok(proc)
    }

    /// Kills every process group still running, background and Exec (at shutdown).
    pub fn kill_all(&self) {
        let inner = lock(&self.inner);
        for proc in inner.procs.values() {
            if !proc.exited() {
                kill_group(proc.pid, Signal::SIGKILL);
            }
        }
        for pid in &inner.execs {
            kill_group(Pid::from_raw(*pid), Signal::SIGKILL);
        }
    }

    /// Records a running Exec command until the guard drops.
    pub fn track_exec(&self, pid: Pid) -> ExecGuard<'_> {
        lock(&self.inner).execs.insert(pid.as_raw());
        ExecGuard { table: self, pid }
    }

    /// Drops every stream of connection `connection` (it closed); the processes run on.
    pub fn detach_connection(&self, connection: u64) {
        let procs: Vec<_> = lock(&self.inner).procs.values().cloned().collect();
        for proc in procs {
            lock(&proc.state)
                .subscribers
                .retain(|s| s.connection != connection);
        }
    }

    fn insert(&self, make: impl FnOnce(u64) -> Proc) -> Arc<Proc> {
        let mut inner = lock(&self.inner);
        inner.next_handle += 1;
        let proc = Arc::new(make(inner.next_handle));
        inner.procs.insert(proc.handle, Arc::clone(&proc));
        // Forget the oldest exited beyond the limit.
        let exited: Vec<u64> = inner
            .procs
            .values()
            .filter(|p| lock(&p.state).exit.is_some())
            .map(|p| p.handle)
            .collect();
        for handle in exited.iter().take(exited.len().saturating_sub(KEEP_EXITED)) {
            inner.procs.remove(handle);
        }
        proc
    }
}
