//! A reference guest agent served on a hybrid-vsock Unix socket, with fault injection (feature
//! `test-agent`).
//!
//! Owns a stand-in for "a VMM's vsock socket with a guest agent behind it" for tests of this crate
//! and of its users (the pool validator, the runtime): it accepts on a Unix socket, answers the
//! hybrid handshake (`CONNECT <port>\n` → `OK <hostport>\n`), and then serves the protocol with the
//! same guest-side pieces a real guest uses ([`FrameBuffer`], [`Session`]), plus a few built-in
//! commands and an in-memory file store. [`Fault`] makes it misbehave on purpose. It is test
//! tooling: threads per connection, no limits beyond the protocol's.
//!
//! Built-in Exec commands: `echo ARGS...` (args joined by spaces, newline), `cat` (stdin to
//! stdout), `env` (one env entry per line), `exit N`, `false`, `counter` (a shared counter,
//! incremented and printed), `sleep MS`, `yes N` (N bytes of `y`, truncated to fit the reply).
//! Anything else exits 127.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::frame_buffer::FrameBuffer;
use crate::guest::{AgentIdentity, Session, Step};
use crate::kind::ErrorCode;
use crate::limits::{HEADER_LEN, MAX_FRAME_LEN};
use crate::message::{ErrorReply, Exec, ExecResult, FileData, HealthReport, Reply, Request};

/// Default receive and reply buffer size of the test agent.
pub const DEFAULT_MAX_FRAME_LEN: usize = 256 * 1024;

/// A deliberate misbehaviour, applied to connections accepted after it is set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Fault {
    /// Behave.
    #[default]
    None,
    /// Read the `CONNECT` line, then close without answering (as when no guest listens).
    HandshakeClose,
    /// Answer the `CONNECT` line with these bytes instead of `OK <hostport>\n`, then close.
    HandshakeReply(Vec<u8>),
    /// Complete the handshake, then never answer anything (not even Hello).
    Silent,
    /// Answer Hello, then never answer again.
    SilentAfterHello,
    /// Answer Hello, then answer each request with these raw bytes instead of its reply.
    RawReplyAfterHello(Vec<u8>),
    /// Answer Hello, then answer each request with the wrong request id.
    WrongIdAfterHello,
}

/// How the test agent behaves.
#[derive(Clone, Debug)]
pub struct TestAgentConfig {
    /// The guest port it listens on; `CONNECT` to other ports is closed.
    pub port: u32,
    /// Name announced in HelloOk.
    pub name: String,
    /// Receive and reply buffer size (its announced `max_frame_len`).
    pub max_frame_len: usize,
    /// Misbehaviour for new connections.
    pub fault: Fault,
}

impl Default for TestAgentConfig {
    fn default() -> Self {
        TestAgentConfig {
            port: 52,
            name: "ember-test-agent".to_owned(),
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            fault: Fault::None,
        }
    }
}

/// The last Reseed the agent applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReseedRecord {
    /// The generation.
    pub generation: u64,
    /// Wall-clock time sent, ns since the Unix epoch.
    pub wall_clock_ns: u64,
    /// The entropy bytes.
    pub entropy: Vec<u8>,
}

#[derive(Debug, Default)]
struct State {
    generation: u64,
    counter: u64,
    files: HashMap<Vec<u8>, (u32, Vec<u8>)>,
    last_reseed: Option<ReseedRecord>,
}

#[derive(Debug)]
struct Shared {
    config: Mutex<TestAgentConfig>,
    state: Mutex<State>,
    stop: AtomicBool,
    booted: Instant,
    boot_id: [u8; 16],
    connections: AtomicU64,
    requests: AtomicU64,
    shutdown_requested: AtomicBool,
    streams: Mutex<HashMap<u64, UnixStream>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running test agent; stops (and removes its socket) when dropped.
#[derive(Debug)]
pub struct TestAgent {
    path: PathBuf,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl TestAgent {
    /// Listens on a new Unix socket at `path` (which must not exist).
    pub fn start(path: impl AsRef<Path>, config: TestAgentConfig) -> io::Result<TestAgent> {
        let path = path.as_ref().to_path_buf();
        let listener = UnixListener::bind(&path)?;
        let mut boot_id = [0u8; 16];
        getrandom::fill(&mut boot_id).map_err(|e| io::Error::other(e.to_string()))?;
        let shared = Arc::new(Shared {
            config: Mutex::new(config),
            state: Mutex::new(State::default()),
            stop: AtomicBool::new(false),
            booted: Instant::now(),
            boot_id,
            connections: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            shutdown_requested: AtomicBool::new(false),
            streams: Mutex::new(HashMap::new()),
            workers: Mutex::new(Vec::new()),
        });
        let accept_shared = Arc::clone(&shared);
        let accept = thread::Builder::new()
            .name("test-agent-accept".to_owned())
            .spawn(move || accept_loop(&listener, &accept_shared))?;
        Ok(TestAgent {
            path,
            shared,
            accept: Some(accept),
        })
    }

    /// The hybrid vsock socket path (what a VM's vsock `uds_path` would be).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The guest port the agent listens on.
    pub fn port(&self) -> u32 {
        lock(&self.shared.config).port
    }

    /// Changes the misbehaviour for connections accepted from now on.
    pub fn set_fault(&self, fault: Fault) {
        lock(&self.shared.config).fault = fault;
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// Frames handled so far (Hello included).
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// The generation last set by Reseed.
    pub fn generation(&self) -> u64 {
        lock(&self.shared.state).generation
    }

    /// The last Reseed applied.
    pub fn last_reseed(&self) -> Option<ReseedRecord> {
        lock(&self.shared.state).last_reseed.clone()
    }

    /// A file in the in-memory store: mode and contents.
    pub fn file(&self, path: impl AsRef<[u8]>) -> Option<(u32, Vec<u8>)> {
        lock(&self.shared.state).files.get(path.as_ref()).cloned()
    }

    /// Whether a Shutdown request was answered.
    pub fn shutdown_requested(&self) -> bool {
        self.shared.shutdown_requested.load(Ordering::Relaxed)
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop; it sees `stop` and returns.
        let _ = UnixStream::connect(&self.path);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        for (_, stream) in lock(&self.shared.streams).drain() {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        let workers: Vec<_> = lock(&self.shared.workers).drain(..).collect();
        for worker in workers {
            let _ = worker.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn accept_loop(listener: &UnixListener, shared: &Arc<Shared>) {
    for conn in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = conn else {
            // Out of descriptors or similar: back off instead of spinning.
            thread::sleep(Duration::from_millis(10));
            continue;
        };
        let n = shared.connections.fetch_add(1, Ordering::Relaxed);
        if let Ok(clone) = stream.try_clone() {
            lock(&shared.streams).insert(n, clone);
        }
        let conn_shared = Arc::clone(shared);
        let spawned = thread::Builder::new()
            .name(format!("test-agent-conn-{n}"))
            .spawn(move || {
                if let Err(e) = serve(stream, &conn_shared, n) {
                    tracing::debug!(error = %e, "test agent connection ended");
                }
                // Close for real: the clone kept for `Drop` would otherwise hold it open.
                if let Some(stream) = lock(&conn_shared.streams).remove(&n) {
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                }
            });
        if let Ok(handle) = spawned {
            let mut workers = lock(&shared.workers);
            workers.retain(|w| !w.is_finished());
            workers.push(handle);
        }
    }
}

fn serve(mut stream: UnixStream, shared: &Shared, n: u64) -> io::Result<()> {
    let config = lock(&shared.config).clone();
    let line = read_line(&mut stream)?;
    match &config.fault {
        Fault::HandshakeClose => return Ok(()),
        Fault::HandshakeReply(bytes) => return stream.write_all(bytes),
        _ => {}
    }
    if line != format!("CONNECT {}\n", config.port).as_bytes() {
        return Ok(()); // no listener on that port: the VMM closes
    }
    stream.write_all(format!("OK {}\n", 1_000_000 + n).as_bytes())?;
    if config.fault == Fault::Silent {
        return drain(&mut stream);
    }

    let mut storage = vec![0u8; config.max_frame_len];
    let mut out = vec![0u8; config.max_frame_len];
    let mut frames = FrameBuffer::new(&mut storage);
    let mut session = Session::new(AgentIdentity {
        name: &config.name,
        software_version: env!("CARGO_PKG_VERSION"),
        max_frame_len: u32::try_from(config.max_frame_len).unwrap_or(u32::MAX),
    });
    let mut scratch = Scratch::default();
    loop {
        let got = stream.read(frames.spare())?;
        if got == 0 {
            return Ok(());
        }
        frames.commit(got);
        loop {
            let frame = match frames.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            };
            shared.requests.fetch_add(1, Ordering::Relaxed);
            let after_hello = session.negotiated().is_some();
            let (len, close) = match session.handle(frame, &mut out) {
                Step::Reply { len } => (len, false),
                Step::Close { reply_len, .. } => (reply_len, true),
                Step::Request {
                    request_id,
                    request,
                } => {
                    let shutdown = matches!(request, Request::Shutdown);
                    let len = respond(
                        shared,
                        &session,
                        &mut scratch,
                        request_id,
                        &request,
                        &mut out,
                    )
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    if shutdown {
                        shared.shutdown_requested.store(true, Ordering::Relaxed);
                    }
                    (len, shutdown)
                }
            };
            let reply = out.get_mut(..len).unwrap_or_default();
            match (&config.fault, after_hello) {
                (Fault::SilentAfterHello, true) => {}
                (Fault::RawReplyAfterHello(bytes), true) => stream.write_all(bytes)?,
                (Fault::WrongIdAfterHello, true) => {
                    if let Some(id) = reply.get_mut(8..16) {
                        let wrong = u64::from_le_bytes(id.try_into().unwrap_or_default()) ^ 1;
                        id.copy_from_slice(&wrong.to_le_bytes());
                    }
                    stream.write_all(reply)?;
                }
                _ => stream.write_all(reply)?,
            }
            if close {
                return Ok(());
            }
        }
    }
}

/// Buffers a handler's reply borrows from.
#[derive(Default)]
struct Scratch {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    data: Vec<u8>,
}

fn respond(
    shared: &Shared,
    session: &Session<'_>,
    scratch: &mut Scratch,
    id: u64,
    request: &Request<'_>,
    out: &mut [u8],
) -> Result<usize, crate::EncodeError> {
    let error = |code, message| Reply::Error(ErrorReply { code, message });
    let reply_room = session.reply_limit().min(out.len());
    let reply = match request {
        Request::Health => Reply::Health(HealthReport {
            uptime_ns: u64::try_from(shared.booted.elapsed().as_nanos()).unwrap_or(u64::MAX),
            boot_id: shared.boot_id,
            generation: lock(&shared.state).generation,
        }),
        Request::Exec(exec) => {
            let room = reply_room.saturating_sub(HEADER_LEN + 4 + 1 + 4 + 4);
            return session.reply_or_error(id, &run(shared, scratch, exec, room), out);
        }
        Request::PutFile(put) => {
            let mut state = lock(&shared.state);
            let offset = usize::try_from(put.offset).unwrap_or(usize::MAX);
            if offset == 0 {
                state
                    .files
                    .insert(put.path.to_vec(), (put.mode, put.data.to_vec()));
                Reply::PutFile
            } else if let Some((_, contents)) = state.files.get_mut(put.path) {
                if offset > contents.len() {
                    error(ErrorCode::INVALID_ARGUMENT, "offset beyond end of file")
                } else {
                    contents.truncate(offset);
                    contents.extend_from_slice(put.data);
                    Reply::PutFile
                }
            } else {
                error(ErrorCode::NOT_FOUND, "no such file")
            }
        }
        Request::GetFile(get) => {
            let state = lock(&shared.state);
            match state.files.get(get.path) {
                None => error(ErrorCode::NOT_FOUND, "no such file"),
                Some((mode, contents)) => {
                    let offset = usize::try_from(get.offset).unwrap_or(usize::MAX);
                    let rest = contents.get(offset..).unwrap_or_default();
                    let room = reply_room.saturating_sub(HEADER_LEN + 4 + 8 + 4);
                    let max = match get.max_len {
                        0 => room,
                        n => room.min(n as usize),
                    };
                    scratch.data.clear();
                    scratch
                        .data
                        .extend_from_slice(rest.get(..max.min(rest.len())).unwrap_or_default());
                    let (mode, size) = (*mode, contents.len() as u64);
                    drop(state);
                    return session.reply_or_error(
                        id,
                        &Reply::File(FileData {
                            mode,
                            size,
                            data: &scratch.data,
                        }),
                        out,
                    );
                }
            }
        }
        Request::Reseed(reseed) => {
            let mut state = lock(&shared.state);
            state.generation = reseed.generation;
            state.last_reseed = Some(ReseedRecord {
                generation: reseed.generation,
                wall_clock_ns: reseed.wall_clock_ns,
                entropy: reseed.entropy.to_vec(),
            });
            Reply::Reseeded {
                generation: reseed.generation,
            }
        }
        Request::Shutdown => Reply::Shutdown,
        other => Reply::Unsupported {
            kind: other.kind().as_u8(),
        },
    };
    session.reply_or_error(id, &reply, out)
}

fn run<'s>(shared: &Shared, scratch: &'s mut Scratch, exec: &Exec<'_>, room: usize) -> Reply<'s> {
    scratch.stdout.clear();
    scratch.stderr.clear();
    let mut args = exec.argv.iter();
    let program = args.next().unwrap_or_default();
    let number = |arg: Option<&[u8]>| -> u64 {
        arg.and_then(|a| std::str::from_utf8(a).ok())
            .and_then(|a| a.parse().ok())
            .unwrap_or(0)
    };
    let mut exit_code = 0;
    match program {
        b"echo" => {
            for (i, arg) in args.enumerate() {
                if i > 0 {
                    scratch.stdout.push(b' ');
                }
                scratch.stdout.extend_from_slice(arg);
            }
            scratch.stdout.push(b'\n');
        }
        b"cat" => scratch.stdout.extend_from_slice(exec.stdin),
        b"env" => {
            for entry in exec.env.iter() {
                scratch.stdout.extend_from_slice(entry);
                scratch.stdout.push(b'\n');
            }
        }
        b"exit" => exit_code = i32::try_from(number(args.next())).unwrap_or(255),
        b"false" => exit_code = 1,
        b"counter" => {
            let mut state = lock(&shared.state);
            state.counter += 1;
            scratch
                .stdout
                .extend_from_slice(state.counter.to_string().as_bytes());
        }
        b"sleep" => thread::sleep(Duration::from_millis(number(args.next()))),
        b"yes" => {
            let n = usize::try_from(number(args.next())).unwrap_or(usize::MAX);
            scratch.stdout.resize(n.min(MAX_FRAME_LEN * 2), b'y');
        }
        other => {
            exit_code = 127;
            scratch.stderr.extend_from_slice(other);
            scratch.stderr.extend_from_slice(b": command not found\n");
        }
    }
    let stdout_truncated = scratch.stdout.len() > room;
    scratch.stdout.truncate(room);
    let stderr_room = room - scratch.stdout.len();
    let stderr_truncated = scratch.stderr.len() > stderr_room;
    scratch.stderr.truncate(stderr_room);
    Reply::Exec(ExecResult {
        exit_code,
        stdout_truncated,
        stderr_truncated,
        stdout: &scratch.stdout,
        stderr: &scratch.stderr,
    })
}

/// Reads the handshake line one byte at a time (so no frame bytes are consumed), at most 64 bytes.
fn read_line(stream: &mut UnixStream) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 64 {
        if stream.read(&mut byte)? == 0 {
            break;
        }
        line.push(byte[0]);
        if byte[0] == b'\n' {
            break;
        }
    }
    Ok(line)
}

/// Reads and discards until the peer closes.
fn drain(stream: &mut UnixStream) -> io::Result<()> {
    let mut sink = [0u8; 4096];
    while stream.read(&mut sink)? > 0 {}
    Ok(())
}
