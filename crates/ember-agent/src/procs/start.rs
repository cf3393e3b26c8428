//! Starting a background process: its standard streams (pipes, or a pseudo-terminal), the
//! spawn, its entry in the table, and the pump thread that broadcasts its output and exit.
#![forbid(unsafe_code)]

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use ember_agent_proto::ProcessStart;
use ember_agent_proto::message::OutputStream;
use nix::errno::Errno;
use nix::sys::signal::Signal;

use super::{Event, Proc, STALL_LIMIT, State, lock};
use crate::agent::Agent;
use crate::process::prepare::{CommandRequest, prepare, spawn_refusal};
use crate::process::pump::{Stream, kill_group, pump, set_nonblocking};
use crate::process::spawn::{SpawnError, SpawnSpec, Stdio, pipe};
use crate::process::terminal;
use crate::refusal::Refusal;

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
pub(super) fn start_process(
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
