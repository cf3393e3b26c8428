//! The Process* requests: start, attach, input, signal, resize, list.
//!
//! Owns turning each request into its reply (and, for streams, the work to do after the reply is
//! sent). The table is the parent module's; spawning is `start`'s; frames of streams `stream`'s.
#![forbid(unsafe_code)]

use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::bounded;
use ember_agent_proto::message::ProcessState;
use ember_agent_proto::{
    EncodeError, ErrorCode, ProcessEntries, ProcessEntry, ProcessListing, Reply, Request,
};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{Signal, kill, killpg};

use super::start::start_process;
use super::stream::stream_after;
use super::{Event, INPUT_WAIT, Proc, lock};
use crate::process::terminal;
use crate::refusal::Refusal;
use crate::server::{After, Ctx};

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
