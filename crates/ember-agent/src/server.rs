//! The server: the accept loop and one thread per connection speaking the protocol.
//!
//! Owns a connection's life: the optional hybrid handshake, frame reassembly and the protocol
//! session (Hello, Ping, Unsupported and malformed frames are the proto crate's [`Session`]),
//! dispatching each request to its handler, encoding the reply within the host's frame limit,
//! and writing frames through one lock so replies and streamed process events never
//! interleave mid-frame. Requests on one connection are answered in order; connections run in
//! parallel; after TcpConnected a connection stops carrying frames and becomes `tcp`'s pipe.
//! What a request does is its handler's (`exec`, `files`, `procs`, `agent`, `tcp`).
#![forbid(unsafe_code)]

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use ember_agent_proto::limits::{HEADER_LEN, MAX_FRAME_LEN};
use ember_agent_proto::{
    AgentIdentity, DirEntries, DirListing, EncodeError, ErrorCode, ExecResult, FileData,
    FrameBuffer, Reply, Request, Session, Step, listing_page,
};
use nix::sys::socket::{Shutdown, setsockopt, shutdown, sockopt};
use nix::sys::time::TimeVal;

use crate::agent::Agent;
use crate::exec;
use crate::files;
use crate::listen::{Listener, handshake};
use crate::process::prepare::CommandRequest;
use crate::refusal::Refusal;

/// Most connections served at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 256;

/// A write to the host that makes no progress for this long ends the connection.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// The agent's largest frame (its receive buffer).
pub const AGENT_MAX_FRAME_LEN: usize = MAX_FRAME_LEN;

/// ExecResult's bytes besides stdout and stderr.
const EXEC_OVERHEAD: usize = HEADER_LEN + 4 + 1 + 4 + 4;

/// FileData's bytes besides data.
const FILE_DATA_OVERHEAD: usize = HEADER_LEN + 4 + 8 + 4;

static CONNECTION_IDS: AtomicU64 = AtomicU64::new(1);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The write side of a connection, shared by its reader thread and its process streams.
#[derive(Debug)]
pub struct Writer {
    stream: Mutex<File>,
    /// This connection's id (process streams are dropped with it).
    pub id: u64,
}

impl Writer {
    /// The writer of connection `id`, writing to `stream`.
    pub fn new(stream: File, id: u64) -> Self {
        Writer {
            stream: Mutex::new(stream),
            id,
        }
    }

    /// Writes one whole frame (or, on a pipe, a chunk of raw bytes).
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        lock(&self.stream).write_all(frame)
    }

    /// Ends the host's input (a pipe's half-close); the connection stays readable.
    pub fn shutdown_write(&self) {
        let stream = lock(&self.stream);
        let _ = shutdown(stream.as_raw_fd(), Shutdown::Write);
    }

    /// Ends the connection (both directions), so its reader sees the end too.
    pub fn close(&self) {
        let stream = lock(&self.stream);
        let _ = shutdown(stream.as_raw_fd(), Shutdown::Both);
    }
}

/// Accepts connections forever, one thread each.
pub fn run(agent: &Arc<Agent>, listener: &Listener) -> io::Result<()> {
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        let accepted = match listener.accept() {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                // Out of descriptors or similar: back off instead of spinning.
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
        };
        if active.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
            tracing::warn!(
                max = MAX_CONNECTIONS,
                "too many connections: closing a new one"
            );
            continue;
        }
        active.fetch_add(1, Ordering::SeqCst);
        let agent = Arc::clone(agent);
        let counter = Arc::clone(&active);
        let id = CONNECTION_IDS.fetch_add(1, Ordering::Relaxed);
        let spawned = std::thread::Builder::new()
            .name(format!("conn-{id}"))
            .stack_size(512 * 1024)
            .spawn(move || {
                let mut stream = accepted.stream;
                let result = match accepted.handshake {
                    Some(port) => handshake(&mut stream, port).and_then(|ok| {
                        if ok {
                            serve(&agent, stream, id)
                        } else {
                            Ok(())
                        }
                    }),
                    None => serve(&agent, stream, id),
                };
                if let Err(e) = result {
                    tracing::debug!(connection = id, error = %e, "connection ended");
                }
                counter.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            active.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!(error = %e, "cannot start a connection thread");
        }
    }
}

/// Serves one connection until the host closes it.
pub fn serve(agent: &Arc<Agent>, mut stream: File, id: u64) -> io::Result<()> {
    let timeout = TimeVal::new(SEND_TIMEOUT.as_secs() as _, 0);
    // Not a socket (a test's pipe) or no support: writes simply have no limit.
    let _ = setsockopt(&stream, sockopt::SendTimeout, &timeout);
    let writer = Arc::new(Writer::new(stream.try_clone()?, id));
    let result = serve_frames(agent, &mut stream, &writer);
    agent.procs.detach_connection(id);
    writer.close();
    result
}

fn serve_frames(agent: &Arc<Agent>, stream: &mut File, writer: &Arc<Writer>) -> io::Result<()> {
    let mut storage = vec![0u8; AGENT_MAX_FRAME_LEN];
    let mut out = vec![0u8; MAX_FRAME_LEN];
    let mut frames = FrameBuffer::new(&mut storage);
    let mut session = Session::new(AgentIdentity {
        name: &agent.config.name,
        software_version: env!("CARGO_PKG_VERSION"),
        max_frame_len: AGENT_MAX_FRAME_LEN as u32,
    });
    let mut scratch = Vec::new();
    loop {
        let got = match stream.read(frames.spare()) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        frames.commit(got);
        loop {
            let frame = match frames.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            };
            let mut after: Option<After> = None;
            let (len, close) = match session.handle(frame, &mut out) {
                Step::Reply { len } => (len, false),
                Step::Close { reply_len, reason } => {
                    tracing::debug!(%reason, "closing a connection");
                    (reply_len, true)
                }
                Step::Request {
                    request_id,
                    request,
                } => {
                    let ctx = Ctx {
                        agent,
                        session: &session,
                        writer,
                        peer: stream.as_fd(),
                        request_id,
                    };
                    let len = respond(&ctx, &request, &mut scratch, &mut out, &mut after)
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    (len, false)
                }
            };
            writer.send(out.get(..len).unwrap_or_default())?;
            match after {
                Some(After::Shutdown) => agent.shutdown(),
                Some(After::Then(action)) => action(),
                Some(After::Pipe(tcp)) => {
                    // No more frames: the connection's streams end, and whatever the host
                    // sent after TcpConnect is the pipe's first bytes.
                    agent.procs.detach_connection(writer.id);
                    let early = frames.take_rest().to_vec();
                    return crate::tcp::pipe(stream, writer, tcp, &early);
                }
                None => {}
            }
            if close {
                return Ok(());
            }
        }
    }
}

/// Something to do once a reply is sent.
pub enum After {
    /// Power off or exit (Shutdown).
    Shutdown,
    /// Anything else (e.g. start streaming a process's events).
    Then(Box<dyn FnOnce() + Send>),
    /// Turn the connection into a byte pipe to this TCP connection (TcpConnect).
    Pipe(std::net::TcpStream),
}

/// What a handler knows about the request it answers.
pub struct Ctx<'a> {
    /// The agent.
    pub agent: &'a Arc<Agent>,
    /// The connection's protocol session (reply limits).
    pub session: &'a Session<'a>,
    /// The connection's writer (for streams).
    pub writer: &'a Arc<Writer>,
    /// The connection itself (to notice the host hanging up during a long Exec).
    pub peer: BorrowedFd<'a>,
    /// The request's id.
    pub request_id: u64,
}

impl Ctx<'_> {
    /// The largest reply frame the host accepts.
    pub fn reply_room(&self, out_len: usize) -> usize {
        self.session.reply_limit().min(out_len)
    }
}

fn respond(
    ctx: &Ctx<'_>,
    request: &Request<'_>,
    scratch: &mut Vec<u8>,
    out: &mut [u8],
    after: &mut Option<After>,
) -> Result<usize, EncodeError> {
    let id = ctx.request_id;
    match answer(ctx, request, scratch, out, after) {
        Ok(encoded) => encoded,
        Err(refusal) => {
            tracing::debug!(kind = %request.kind(), %refusal, "request refused");
            ctx.session.error(id, refusal.code, &refusal.message, out)
        }
    }
}

/// Answers `request` into `out` (the encoding's outcome), or says why it is refused.
fn answer(
    ctx: &Ctx<'_>,
    request: &Request<'_>,
    scratch: &mut Vec<u8>,
    out: &mut [u8],
    after: &mut Option<After>,
) -> Result<Result<usize, EncodeError>, Refusal> {
    let agent = ctx.agent;
    let session = ctx.session;
    let id = ctx.request_id;
    let room = ctx.reply_room(out.len());
    let reply = match request {
        Request::Health => Reply::Health(agent.health()),
        Request::Exec(e) => {
            let command = CommandRequest {
                argv: e.argv,
                env: e.env,
                cwd: &[],
                user: "",
            };
            let outcome = exec::run(
                agent,
                &command,
                e.stdin,
                e.timeout_ms,
                room - EXEC_OVERHEAD,
                Some(ctx.peer),
            )?;
            return Ok(session.reply_or_error(id, &Reply::Exec(exec_result(&outcome)), out));
        }
        Request::ExecIn(e) => {
            let command = CommandRequest {
                argv: e.argv,
                env: e.env,
                cwd: e.cwd,
                user: e.user,
            };
            let outcome = exec::run(
                agent,
                &command,
                e.stdin,
                e.timeout_ms,
                room - EXEC_OVERHEAD,
                Some(ctx.peer),
            )?;
            return Ok(session.reply_or_error(id, &Reply::ExecIn(exec_result(&outcome)), out));
        }
        Request::PutFile(put) => {
            files::put_file(agent, put)?;
            Reply::PutFile
        }
        Request::GetFile(get) => {
            let (mode, size) = files::get_file(agent, get, room - FILE_DATA_OVERHEAD, scratch)?;
            let reply = Reply::File(FileData {
                mode,
                size,
                data: scratch,
            });
            return Ok(session.reply_or_error(id, &reply, out));
        }
        Request::Stat(stat) => {
            let info = files::stat(agent, stat.path)?;
            return Ok(session.reply_or_error(id, &Reply::Stat(info.wire()), out));
        }
        Request::ListDir(list) => {
            let rest = files::list_dir(agent, list)?;
            let Some((page, more)) = listing_page(&rest, list.max_entries, room) else {
                return Err(Refusal::new(
                    ErrorCode::TOO_LARGE,
                    "list: an entry does not fit a reply",
                ));
            };
            let reply = Reply::DirListing(DirListing {
                more,
                entries: DirEntries::from_slice(&page),
            });
            return Ok(session.reply_or_error(id, &reply, out));
        }
        Request::MakeDir(make) => Reply::MakeDir {
            created: files::make_dir(agent, make)?,
        },
        Request::Remove(remove) => {
            files::remove(agent, remove)?;
            Reply::Remove
        }
        Request::Rename(rename) => {
            files::rename(agent, rename)?;
            Reply::Rename
        }
        Request::Reseed(reseed) => Reply::Reseeded {
            generation: agent.reseed(reseed)?,
        },
        Request::Shutdown => {
            *after = Some(After::Shutdown);
            Reply::Shutdown
        }
        Request::TcpConnect { port } => {
            *after = Some(After::Pipe(crate::tcp::connect(*port)?));
            Reply::TcpConnected
        }
        other => {
            if let Some(encoded) = crate::procs::answer(ctx, other, out, after)? {
                return Ok(encoded);
            }
            Reply::Unsupported {
                kind: other.kind().as_u8(),
            }
        }
    };
    Ok(session.reply_or_error(id, &reply, out))
}

fn exec_result(outcome: &exec::Outcome) -> ExecResult<'_> {
    ExecResult {
        exit_code: outcome.exit_code,
        stdout_truncated: outcome.stdout_truncated,
        stderr_truncated: outcome.stderr_truncated,
        stdout: &outcome.stdout,
        stderr: &outcome.stderr,
    }
}
