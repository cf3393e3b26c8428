//! Background processes: started, listed, signalled, fed stdin and streamed while they run.
//!
//! Owns the table of processes started with ProcessStart (handles never reused while the agent
//! runs; the last [`KEEP_EXITED`] exited ones are kept for ProcessList and late attaches), each
//! one's output pump thread, and its subscribers: every attached connection gets the output
//! from the moment it attached, in the order it was read, then the exit. A subscriber that
//! falls behind by [`STREAM_QUEUE`] chunks for [`STALL_LIMIT`] is dropped (its stream ends with
//! Error `BUSY`) so one stalled host never stalls the process. Closing a connection drops its
//! streams, never its processes. Spawning is `process`'s job; framing is the server's.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, SendTimeoutError, Sender, bounded};
use ember_agent_proto::io::encode_into_vec;
use ember_agent_proto::message::{OutputStream, ProcessState};
use ember_agent_proto::{
    EncodeError, ErrorCode, ProcessEntries, ProcessEntry, ProcessExit, ProcessListing,
    ProcessOutput, ProcessStart, Reply, Request,
};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use crate::agent::Agent;
use crate::process::prepare::{CommandRequest, prepare, spawn_refusal};
use crate::process::pump::{Stream, kill_group, pump, set_nonblocking};
use crate::process::reaper::ExitWatch;
use crate::process::spawn::{SpawnError, SpawnSpec, Stdio, pipe};
use crate::process::terminal;
use crate::refusal::Refusal;
use crate::server::{After, Ctx, Writer};

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

/// What ProcessList reports of one process, taken under its locks.
struct Snapshot<'p> {
    exit: Option<(i32, bool)>,
    stdin_open: bool,
    argv: Vec<&'p [u8]>,
}

/// Answers the process requests; `None` for any other request.
pub fn answer(
    ctx: &Ctx<'_>,
    request: &Request<'_>,
    out: &mut [u8],
    after: &mut Option<After>,
) -> Result<Option<Result<usize, EncodeError>>, Refusal> {
    let agent = ctx.agent;
    let reply = match request {
        Request::ProcessStart(start) => {
            let (proc, rx) = start_process(agent, start, ctx.writer.id)?;
            if let Some(rx) = rx {
                *after = Some(stream_after(ctx, &proc, rx));
            }
            Reply::ProcessStarted {
                handle: proc.handle,
                pid: u32::try_from(proc.pid.as_raw()).unwrap_or(0),
            }
        }
        Request::ProcessAttach { handle } => {
            let proc = agent.procs.get(*handle)?;
            let running = match proc.subscribe(ctx.writer.id) {
                Ok(rx) => {
                    *after = Some(stream_after(ctx, &proc, rx));
                    true
                }
                Err((exit_code, timed_out)) => {
                    let (tx, rx) = bounded(1);
                    let _ = tx.send(Event::Exit {
                        exit_code,
                        timed_out,
                    });
                    *after = Some(stream_after(ctx, &proc, rx));
                    false
                }
            };
            Reply::ProcessAttached {
                pid: u32::try_from(proc.pid.as_raw()).unwrap_or(0),
                running,
            }
        }
        Request::ProcessInput(input) => {
            let proc = agent.procs.running(input.handle)?;
            Reply::ProcessInput {
                written: write_stdin(&proc, input.data, input.close)?,
            }
        }
        Request::ProcessSignal(signal) => {
            let proc = agent.procs.running(signal.handle)?;
            let sig = Signal::try_from(i32::from(signal.signal)).map_err(|_| {
                Refusal::new(
                    ErrorCode::INVALID_ARGUMENT,
                    format!("signal {} cannot be sent", signal.signal),
                )
            })?;
            let sent = if signal.group {
                killpg(proc.pid, sig)
            } else {
                kill(proc.pid, sig)
            };
            sent.map_err(|e| Refusal::errno(format!("signal {sig} to pid {}", proc.pid), e))?;
            Reply::ProcessSignal
        }
        Request::ProcessResize { handle, size } => {
            let proc = agent.procs.running(*handle)?;
            let Some(master) = &proc.terminal else {
                return Err(Refusal::new(
                    ErrorCode::INVALID_ARGUMENT,
                    format!("process {handle} has no terminal"),
                ));
            };
            terminal::resize(master, *size).map_err(|e| {
                Refusal::io(format!("resizing the terminal of process {handle}"), &e)
            })?;
            Reply::ProcessResize
        }
        Request::ProcessList(list) => {
            let procs: Vec<Arc<Proc>> = lock(&agent.procs.inner).procs.values().cloned().collect();
            let rest = procs.get(list.offset as usize..).unwrap_or_default();
            let max = match list.max_entries {
                0 => usize::MAX,
                n => n as usize,
            };
            let room = ctx.reply_room(out.len());
            let snapshots: Vec<Snapshot<'_>> = rest
                .iter()
                .take(max)
                .map(|p| Snapshot {
                    exit: lock(&p.state).exit,
                    stdin_open: lock(&p.stdin).is_some(),
                    argv: p.argv.iter().map(Vec::as_slice).collect(),
                })
                .collect();
            let mut used = ProcessListing::OVERHEAD;
            let mut page = Vec::new();
            for (
                proc,
                Snapshot {
                    exit,
                    stdin_open,
                    argv,
                },
            ) in rest.iter().zip(&snapshots)
            {
                let entry = ProcessEntry {
                    handle: proc.handle,
                    pid: u32::try_from(proc.pid.as_raw()).unwrap_or(0),
                    state: if exit.is_some() {
                        ProcessState::Exited
                    } else {
                        ProcessState::Running
                    },
                    exit_code: exit.map_or(0, |e| e.0),
                    timed_out: exit.is_some_and(|e| e.1),
                    stdin_open: *stdin_open,
                    pty: proc.terminal.is_some(),
                    argv: ember_agent_proto::ByteList::from_bytes(argv),
                    cwd: &proc.cwd,
                    user: &proc.user,
                };
                used += entry.encoded_len();
                if used > room {
                    break;
                }
                page.push(entry);
            }
            if page.is_empty() && !rest.is_empty() {
                return Err(Refusal::new(
                    ErrorCode::TOO_LARGE,
                    "process list: an entry does not fit a reply",
                ));
            }
            let reply = Reply::ProcessListing(ProcessListing {
                more: page.len() < rest.len(),
                entries: ProcessEntries::from_slice(&page),
            });
            return Ok(Some(ctx.session.reply_or_error(
                ctx.request_id,
                &reply,
                out,
            )));
        }
        _ => return Ok(None),
    };
    Ok(Some(ctx.session.reply_or_error(
        ctx.request_id,
        &reply,
        out,
    )))
}

/// The agent's ends of a background process's standard streams.
#[derive(Debug)]
struct Parent {
    stdout: OwnedFd,
    stderr: Option<OwnedFd>,
    stdin: Option<OwnedFd>,
    terminal: Option<OwnedFd>,
}

/// Both ends of a background process's standard streams: pipes, or a terminal.
#[derive(Debug)]
struct ChildIo {
    parent: Parent,
    /// stdin, stdout, stderr of the command.
    child: [OwnedFd; 3],
}

impl ChildIo {
    fn new(start: &ProcessStart<'_>, spec: &mut SpawnSpec) -> Result<ChildIo, SpawnError> {
        let os = |what: &'static str| {
            move |e: std::io::Error| SpawnError::Setup {
                what,
                errno: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
            }
        };
        if let Some(size) = start.pty {
            let pty = terminal::open(size).map_err(os("opening a terminal"))?;
            let dup = |fd: &OwnedFd| fd.try_clone().map_err(os("dup"));
            set_nonblocking(&pty.master).map_err(|errno| SpawnError::Setup {
                what: "terminal",
                errno,
            })?;
            spec.controlling_tty = true;
            if !spec.env.iter().any(|e| e.as_bytes().starts_with(b"TERM=")) {
                spec.env.push(c"TERM=xterm-256color".to_owned());
            }
            let parent = Parent {
                stdout: dup(&pty.master)?,
                stderr: None,
                stdin: Some(dup(&pty.master)?),
                terminal: Some(pty.master),
            };
            let child = [dup(&pty.slave)?, dup(&pty.slave)?, pty.slave];
            return Ok(ChildIo { parent, child });
        }
        let (stdin_r, stdin_w) = if start.stdin {
            let (r, w) = pipe()?;
            set_nonblocking(&w).map_err(|errno| SpawnError::Setup {
                what: "stdin pipe",
                errno,
            })?;
            (r, Some(w))
        } else {
            let null = File::open("/dev/null").map_err(os("opening /dev/null"))?;
            (OwnedFd::from(null), None)
        };
        let (stdout_r, stdout_w) = pipe()?;
        let (stderr_r, stderr_w) = pipe()?;
        Ok(ChildIo {
            parent: Parent {
                stdout: stdout_r,
                stderr: Some(stderr_r),
                stdin: stdin_w,
                terminal: None,
            },
            child: [stdin_r, stdout_w, stderr_w],
        })
    }

    fn stdio(&self) -> Stdio<'_> {
        let [stdin, stdout, stderr] = &self.child;
        Stdio {
            stdin: stdin.as_fd(),
            stdout: stdout.as_fd(),
            stderr: stderr.as_fd(),
        }
    }
}

/// Spawns the process, registers it and starts its pump; with `attach`, subscribes
/// `connection` before any output can be read.
fn start_process(
    agent: &Arc<Agent>,
    start: &ProcessStart<'_>,
    connection: u64,
) -> Result<(Arc<Proc>, Option<Receiver<Event>>), Refusal> {
    let command = CommandRequest {
        argv: start.argv,
        env: start.env,
        cwd: start.cwd,
        user: start.user,
    };
    let mut spec = prepare(&command, &agent.resolver, &agent.users)?;
    let argv0 = start.argv.get(0).unwrap_or_default();
    let io = ChildIo::new(start, &mut spec).map_err(|e| spawn_refusal(argv0, &e))?;
    let setup = |e| spawn_refusal(argv0, &e);
    let stdio = io.stdio();
    let started = Instant::now();
    let (pid, watch) = agent.reaper.spawn(&spec, stdio).map_err(setup)?;
    let ChildIo {
        parent:
            Parent {
                stdout: stdout_r,
                stderr: stderr_r,
                stdin: stdin_w,
                terminal,
            },
        child,
    } = io;
    drop(child); // the command has its copies; ours would keep the pipes open
    let proc = agent.procs.insert(|handle| Proc {
        handle,
        pid,
        argv: start.argv.iter().map(<[u8]>::to_vec).collect(),
        cwd: spec.cwd.as_bytes().to_vec(),
        user: start.user.to_owned(),
        watch,
        state: Mutex::new(State::default()),
        stdin: Mutex::new(stdin_w),
        terminal,
    });
    let rx = if start.attach {
        proc.subscribe(connection).ok()
    } else {
        None
    };
    tracing::info!(handle = proc.handle, pid = pid.as_raw(), program = %String::from_utf8_lossy(argv0), "process started");
    let deadline = (start.timeout_ms > 0)
        .then(|| started + Duration::from_millis(u64::from(start.timeout_ms)));
    let pumped = Arc::clone(&proc);
    let spawned = std::thread::Builder::new()
        .name(format!("proc-{}", proc.handle))
        .stack_size(256 * 1024)
        .spawn(move || run_pump(&pumped, stdout_r, stderr_r, deadline));
    if let Err(e) = spawned {
        kill_group(pid, Signal::SIGKILL);
        return Err(Refusal::io("starting the output thread", &e));
    }
    Ok((proc, rx))
}

fn run_pump(proc: &Arc<Proc>, stdout: OwnedFd, stderr: Option<OwnedFd>, deadline: Option<Instant>) {
    let ended = pump(
        proc.pid,
        &proc.watch,
        stdout,
        stderr,
        None,
        deadline,
        None,
        |stream, chunk| {
            let stream = match stream {
                Stream::Stdout => OutputStream::Stdout,
                Stream::Stderr => OutputStream::Stderr,
            };
            proc.broadcast(&Event::Output(stream, chunk.to_vec()));
        },
    );
    let exit_code = ended.exit.wire_code();
    tracing::info!(
        handle = proc.handle,
        exit_code,
        timed_out = ended.timed_out,
        "process ended"
    );
    *lock(&proc.stdin) = None;
    let subscribers = {
        let mut state = lock(&proc.state);
        state.exit = Some((exit_code, ended.timed_out));
        std::mem::take(&mut state.subscribers)
    };
    let event = Event::Exit {
        exit_code,
        timed_out: ended.timed_out,
    };
    for s in subscribers {
        let _ = s.tx.send_timeout(event.clone(), STALL_LIMIT);
    }
}

/// Writes what the pipe takes of `data` within [`INPUT_WAIT`]; closes stdin after if `close`
/// and all was written.
fn write_stdin(proc: &Proc, data: &[u8], close: bool) -> Result<u32, Refusal> {
    let mut stdin = lock(&proc.stdin);
    let Some(fd) = stdin.as_ref() else {
        return Err(Refusal::new(
            ErrorCode::INVALID_ARGUMENT,
            format!("process {}: stdin is not open", proc.handle),
        ));
    };
    let deadline = Instant::now() + INPUT_WAIT;
    let mut written = 0;
    while written < data.len() {
        match nix::unistd::write(fd, data.get(written..).unwrap_or_default()) {
            Ok(n) => written += n,
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
                let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLOUT)];
                let _ = nix::poll::poll(&mut fds, timeout);
            }
            Err(Errno::EPIPE) => {
                *stdin = None;
                return Err(Refusal::new(
                    ErrorCode::INVALID_ARGUMENT,
                    format!("process {}: it closed its stdin", proc.handle),
                ));
            }
            Err(e) => return Err(Refusal::errno(format!("process {}: stdin", proc.handle), e)),
        }
    }
    if close && written == data.len() {
        if proc.terminal.is_some() {
            // A terminal has no end of file to close: type its EOF character (^D) instead.
            let _ = nix::unistd::write(fd, &[0x04]);
        } else {
            *stdin = None;
        }
    }
    Ok(u32::try_from(written).unwrap_or(u32::MAX))
}

/// After the reply: a thread that writes `rx`'s events as frames of this request's stream.
fn stream_after(ctx: &Ctx<'_>, proc: &Arc<Proc>, rx: Receiver<Event>) -> After {
    let writer = Arc::clone(ctx.writer);
    let id = ctx.request_id;
    let limit = ctx.session.reply_limit();
    let handle = proc.handle;
    After::Then(Box::new(move || {
        let spawned = std::thread::Builder::new()
            .name(format!("stream-{handle}"))
            .stack_size(128 * 1024)
            .spawn(move || write_stream(&writer, id, handle, limit, &rx));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start a stream thread");
        }
    }))
}

fn write_stream(writer: &Writer, id: u64, handle: u64, limit: usize, rx: &Receiver<Event>) {
    let mut frame = Vec::new();
    let room = limit.saturating_sub(ProcessOutput::OVERHEAD).max(1);
    let mut send = |reply: &Reply<'_>| -> bool {
        let encoded = encode_into_vec(&mut frame, |buf| reply.encode_limited(id, limit, buf));
        match encoded.map_err(|e| std::io::Error::other(e.to_string())) {
            Ok(()) => match writer.send(&frame) {
                Ok(()) => true,
                Err(e) => {
                    tracing::debug!(error = %e, "process stream: the host went away");
                    writer.close();
                    false
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "process stream: cannot encode an event");
                false
            }
        }
    };
    loop {
        match rx.recv() {
            Ok(Event::Output(stream, data)) => {
                for piece in data.chunks(room) {
                    let event = Reply::ProcessOutput(ProcessOutput {
                        handle,
                        stream,
                        data: piece,
                    });
                    if !send(&event) {
                        return;
                    }
                }
            }
            Ok(Event::Exit {
                exit_code,
                timed_out,
            }) => {
                send(&Reply::ProcessExit(ProcessExit {
                    handle,
                    exit_code,
                    timed_out,
                }));
                return;
            }
            Err(_) => {
                // Dropped: the host fell behind (or the connection closed).
                let error = Reply::Error(ember_agent_proto::ErrorReply {
                    code: ErrorCode::BUSY,
                    message: "process stream dropped: the host did not read its output in time",
                });
                send(&error);
                return;
            }
        }
    }
}
