//! A reference guest agent served on a hybrid-vsock Unix socket, with fault injection (feature
//! `test-agent`).
//!
//! Owns a stand-in for "a VMM's vsock socket with a guest agent behind it" for tests of this crate
//! and of its users (the pool validator, the runtime, the daemon): it accepts on a Unix socket,
//! answers the hybrid handshake (`CONNECT <port>\n` → `OK <hostport>\n`), and then serves the
//! protocol with the same guest-side pieces a real guest uses ([`FrameBuffer`], [`Session`]), plus
//! a few built-in commands. [`Fault`] makes it misbehave on purpose. It is test tooling: threads
//! per connection, no limits beyond the protocol's.
//!
//! Files: every file request works on a real directory of the host, the agent's *root*
//! ([`TestAgentConfig::root`], by default a fresh directory under the system's temporary
//! directory, removed when the agent stops), so clients are tested against real file-system
//! semantics. Guest path `/a/b` is `<root>/a/b`; a relative path is taken from `/` (the
//! default working directory) or, in ExecIn, from `cwd`; `.` and empty components are skipped
//! and `..` removes the previous component (never leaving the root), all before the host sees
//! the path; a trailing `/` is kept, so the host's file system checks it. Symlinks inside the
//! root are followed by the host as they are (test tooling: a symlink can lead out of the root).
//! PutFile at offset 0 creates missing parents (0o755) and a new file with exactly `mode`;
//! MakeDir applies `mode` exactly (no umask) and gives created parents 0o755. ListDir walks
//! depth-first, each directory's entries sorted by name, without following symlinks. Host
//! errors map to codes by kind: not found, already exists, not a directory, is a directory,
//! not empty, permission denied, invalid input; anything else is `IO`. Stat reports owner and
//! group names from the host's user database.
//!
//! Built-in Exec and ExecIn commands: `echo ARGS...` (args joined by spaces, newline), `cat`
//! (stdin to stdout), `cat PATH...` (files, relative to the working directory; a missing one
//! exits 1), `env` (one env entry per line), `exit N`, `false`, `counter` (a shared counter,
//! incremented and printed), `sleep MS`, `yes N` (N bytes of `y`, truncated to fit the reply),
//! `pwd` (the guest working directory), `whoami` (the user, `root` by default). Anything else
//! exits 127. `sh`/`bash` `-c SCRIPT` runs the script's one simple command
//! ([`crate::shell`]). ExecIn: `cwd` must be a directory (`NOT_FOUND`, `NOT_A_DIRECTORY`);
//! `user` must be empty, `root` or `user` (else `INVALID_ARGUMENT`).

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::client::listing_page;
use crate::client::{FileInfo, ListedEntry};
use crate::frame_buffer::FrameBuffer;
use crate::guest::{AgentIdentity, Session, Step};
use crate::kind::ErrorCode;
use crate::limits::{HEADER_LEN, MAX_FRAME_LEN, MAX_MODE, MAX_USER_LEN};
use crate::list::ByteList;
use crate::message::{DirEntries, DirListing, ExecResult, FileData, HealthReport, Reply, Request};
use crate::shell;

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
    /// The host directory guest paths live in (it must exist); `None`: a fresh directory under
    /// the system's temporary directory, removed when the agent stops.
    pub root: Option<PathBuf>,
}

impl Default for TestAgentConfig {
    fn default() -> Self {
        TestAgentConfig {
            port: 52,
            name: "ember-test-agent".to_owned(),
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            fault: Fault::None,
            root: None,
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
    last_reseed: Option<ReseedRecord>,
}

#[derive(Debug)]
struct Shared {
    config: Mutex<TestAgentConfig>,
    /// Where guest paths live.
    root: PathBuf,
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

/// A running test agent; stops (and removes its socket, and its root directory if it made
/// it) when dropped.
#[derive(Debug)]
pub struct TestAgent {
    path: PathBuf,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
    /// The root directory the agent made (removed on drop).
    own_root: Option<PathBuf>,
}

impl TestAgent {
    /// Listens on a new Unix socket at `path` (which must not exist).
    pub fn start(path: impl AsRef<Path>, config: TestAgentConfig) -> io::Result<TestAgent> {
        let path = path.as_ref().to_path_buf();
        let mut boot_id = [0u8; 16];
        getrandom::fill(&mut boot_id).map_err(|e| io::Error::other(e.to_string()))?;
        let (root, own_root) = match &config.root {
            Some(root) => (fs::canonicalize(root)?, None),
            None => {
                let mut tag = [0u8; 8];
                getrandom::fill(&mut tag).map_err(|e| io::Error::other(e.to_string()))?;
                let dir = std::env::temp_dir().join(format!(
                    "ember-test-agent-{}-{:016x}",
                    std::process::id(),
                    u64::from_le_bytes(tag)
                ));
                DirBuilder::new().mode(0o755).create(&dir)?;
                (dir.clone(), Some(dir))
            }
        };
        let listener = match UnixListener::bind(&path) {
            Ok(listener) => listener,
            Err(e) => {
                if let Some(dir) = &own_root {
                    let _ = fs::remove_dir_all(dir);
                }
                return Err(e);
            }
        };
        let shared = Arc::new(Shared {
            config: Mutex::new(config),
            root,
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
            own_root,
        })
    }

    /// The host directory guest paths live in (guest `/a` is `<root>/a`).
    pub fn root(&self) -> &Path {
        &self.shared.root
    }

    /// Where guest path `path` is on the host.
    pub fn host_path(&self, path: impl AsRef<[u8]>) -> PathBuf {
        GuestPath::resolve(&self.shared.root, b"/", path.as_ref()).host
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

    /// A regular file at guest path `path`: its permission bits and contents.
    pub fn file(&self, path: impl AsRef<[u8]>) -> Option<(u32, Vec<u8>)> {
        let host = self.host_path(path);
        let meta = fs::symlink_metadata(&host)
            .ok()
            .filter(fs::Metadata::is_file)?;
        Some((meta.mode() & MAX_MODE, fs::read(&host).ok()?))
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
        let _ = fs::remove_file(&self.path);
        if let Some(root) = &self.own_root {
            let _ = fs::remove_dir_all(root);
        }
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

/// A refused request: its Error reply's code and message.
#[derive(Debug)]
struct Refusal {
    code: ErrorCode,
    message: String,
}

impl Refusal {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
        }
    }

    /// The host's error `e` while doing `what` to `path`.
    fn io(what: &str, path: &GuestPath, e: &io::Error) -> Self {
        Refusal::new(
            ErrorCode::of_io(e),
            format!("{what} {}: {e}", path.display()),
        )
    }
}

/// Creating missing parents met something that is not a directory (`mkdir` says EEXIST).
fn parent_error(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::AlreadyExists {
        io::Error::new(io::ErrorKind::NotADirectory, "a parent is not a directory")
    } else {
        e
    }
}

/// A guest path, normalised, and where it is on the host.
struct GuestPath {
    /// `/` or `/a/b` (no trailing `/`).
    guest: Vec<u8>,
    /// `<root>/a/b`, with a trailing `/` if the guest path asked for a directory.
    host: PathBuf,
    /// The path is the root directory.
    is_root: bool,
}

impl GuestPath {
    /// `path` taken from `cwd` (a normalised absolute guest path) unless it is absolute.
    fn resolve(root: &Path, cwd: &[u8], path: &[u8]) -> GuestPath {
        let base: &[u8] = if path.starts_with(b"/") { b"" } else { cwd };
        let mut parts: Vec<&[u8]> = Vec::new();
        for part in base.split(|b| *b == b'/').chain(path.split(|b| *b == b'/')) {
            match part {
                b"" | b"." => {}
                b".." => {
                    parts.pop();
                }
                part => parts.push(part),
            }
        }
        let last = path.rsplit(|b| *b == b'/').next().unwrap_or_default();
        let dir_only = matches!(last, b"" | b"." | b"..");
        let mut guest = Vec::new();
        let mut host = OsString::from(root.as_os_str());
        for part in &parts {
            guest.push(b'/');
            guest.extend_from_slice(part);
            host.push("/");
            host.push(OsStr::from_bytes(part));
        }
        if guest.is_empty() {
            guest.push(b'/');
        } else if dir_only {
            host.push("/");
        }
        GuestPath {
            guest,
            host: PathBuf::from(host),
            is_root: parts.is_empty(),
        }
    }

    fn display(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.guest)
    }
}

/// A user or group name as Stat reports it: the name if it fits, else the decimal id.
fn id_name(id: u32, name: Option<String>) -> String {
    name.filter(|n| n.len() <= MAX_USER_LEN && !n.contains('\0'))
        .unwrap_or_else(|| id.to_string())
}

/// What `meta` (of `host`, not followed) says, as the protocol reports it.
fn file_info(host: &Path, meta: &fs::Metadata) -> FileInfo {
    use nix::unistd::{Gid, Group, Uid, User};
    let owner = User::from_uid(Uid::from_raw(meta.uid())).ok().flatten();
    let group = Group::from_gid(Gid::from_raw(meta.gid())).ok().flatten();
    FileInfo::from_metadata(
        host,
        meta,
        id_name(meta.uid(), owner.map(|u| u.name)),
        id_name(meta.gid(), group.map(|g| g.name)),
    )
}

fn respond(
    shared: &Shared,
    session: &Session<'_>,
    scratch: &mut Scratch,
    id: u64,
    request: &Request<'_>,
    out: &mut [u8],
) -> Result<usize, crate::EncodeError> {
    match answer(shared, session, scratch, id, request, out) {
        Ok(len) => len,
        Err(refusal) => session.error(id, refusal.code, &refusal.message, out),
    }
}

/// Answers `request` into `out` (the encoding's outcome), or says why it is refused.
fn answer(
    shared: &Shared,
    session: &Session<'_>,
    scratch: &mut Scratch,
    id: u64,
    request: &Request<'_>,
    out: &mut [u8],
) -> Result<Result<usize, crate::EncodeError>, Refusal> {
    let root = shared.root.as_path();
    let reply_room = session.reply_limit().min(out.len());
    let exec_room = reply_room.saturating_sub(HEADER_LEN + 4 + 1 + 4 + 4);
    let reply = match request {
        Request::Health => Reply::Health(HealthReport {
            uptime_ns: u64::try_from(shared.booted.elapsed().as_nanos()).unwrap_or(u64::MAX),
            boot_id: shared.boot_id,
            generation: lock(&shared.state).generation,
        }),
        Request::Exec(exec) => {
            let cwd = GuestPath::resolve(root, b"/", b"/");
            let command = Command {
                argv: exec.argv,
                env: exec.env,
                stdin: exec.stdin,
                cwd: &cwd,
                user: "root",
            };
            let result = run(shared, scratch, &command, exec_room)?;
            return Ok(session.reply_or_error(id, &Reply::Exec(result), out));
        }
        Request::ExecIn(exec) => {
            let cwd = GuestPath::resolve(root, b"/", exec.cwd);
            let meta =
                fs::metadata(&cwd.host).map_err(|e| Refusal::io("working directory", &cwd, &e))?;
            if !meta.is_dir() {
                let message = format!("working directory {}: not a directory", cwd.display());
                return Err(Refusal::new(ErrorCode::NOT_A_DIRECTORY, message));
            }
            let user = match exec.user {
                "" => "root",
                known @ ("root" | "user") => known,
                other => {
                    let message =
                        format!("no such user {other:?} (the test agent knows root and user)");
                    return Err(Refusal::new(ErrorCode::INVALID_ARGUMENT, message));
                }
            };
            let command = Command {
                argv: exec.argv,
                env: exec.env,
                stdin: exec.stdin,
                cwd: &cwd,
                user,
            };
            let result = run(shared, scratch, &command, exec_room)?;
            return Ok(session.reply_or_error(id, &Reply::ExecIn(result), out));
        }
        Request::PutFile(put) => {
            let path = GuestPath::resolve(root, b"/", put.path);
            let fail = |e: io::Error| Refusal::io("write", &path, &e);
            if put.offset == 0 {
                if let Some(parent) = path.host.parent() {
                    DirBuilder::new()
                        .recursive(true)
                        .mode(0o755)
                        .create(parent)
                        .map_err(|e| fail(parent_error(e)))?;
                }
                let existed = fs::symlink_metadata(&path.host).is_ok();
                let mut file = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(put.mode)
                    .open(&path.host)
                    .map_err(fail)?;
                file.write_all(put.data).map_err(fail)?;
                if !existed {
                    // Exactly `mode`, whatever the umask.
                    file.set_permissions(fs::Permissions::from_mode(put.mode))
                        .map_err(fail)?;
                }
            } else {
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path.host)
                    .map_err(fail)?;
                if put.offset > file.metadata().map_err(fail)?.len() {
                    let message = format!("write {}: offset beyond end of file", path.display());
                    return Err(Refusal::new(ErrorCode::INVALID_ARGUMENT, message));
                }
                file.write_all_at(put.data, put.offset).map_err(fail)?;
            }
            Reply::PutFile
        }
        Request::GetFile(get) => {
            let path = GuestPath::resolve(root, b"/", get.path);
            let fail = |e: io::Error| Refusal::io("read", &path, &e);
            let file = File::open(&path.host).map_err(fail)?;
            let meta = file.metadata().map_err(fail)?;
            if meta.is_dir() {
                let message = format!("read {}: is a directory", path.display());
                return Err(Refusal::new(ErrorCode::IS_A_DIRECTORY, message));
            }
            let size = meta.len();
            let start = get.offset.min(size);
            let room = reply_room.saturating_sub(HEADER_LEN + 4 + 8 + 4);
            let max = match get.max_len {
                0 => room,
                n => room.min(n as usize),
            };
            let len = usize::try_from(size - start).unwrap_or(usize::MAX).min(max);
            scratch.data.clear();
            scratch.data.resize(len, 0);
            file.read_exact_at(&mut scratch.data, start).map_err(fail)?;
            let reply = Reply::File(FileData {
                mode: meta.mode() & MAX_MODE,
                size,
                data: &scratch.data,
            });
            return Ok(session.reply_or_error(id, &reply, out));
        }
        Request::Stat(stat) => {
            let path = GuestPath::resolve(root, b"/", stat.path);
            let meta =
                fs::symlink_metadata(&path.host).map_err(|e| Refusal::io("stat", &path, &e))?;
            let info = file_info(&path.host, &meta);
            return Ok(session.reply_or_error(id, &Reply::Stat(info.wire()), out));
        }
        Request::ListDir(list) => {
            let path = GuestPath::resolve(root, b"/", list.path);
            let fail = |e: io::Error| Refusal::io("list", &path, &e);
            if !fs::metadata(&path.host).map_err(fail)?.is_dir() {
                let message = format!("list {}: not a directory", path.display());
                return Err(Refusal::new(ErrorCode::NOT_A_DIRECTORY, message));
            }
            let mut all = Vec::new();
            walk(&path.host, b"", 1, list.depth, &mut all).map_err(fail)?;
            let rest = all.get(list.offset as usize..).unwrap_or_default();
            let Some((page, more)) = listing_page(rest, list.max_entries, reply_room) else {
                let message = format!("list {}: an entry does not fit a reply", path.display());
                return Err(Refusal::new(ErrorCode::TOO_LARGE, message));
            };
            let reply = Reply::DirListing(DirListing {
                more,
                entries: DirEntries::from_slice(&page),
            });
            return Ok(session.reply_or_error(id, &reply, out));
        }
        Request::MakeDir(make) => {
            let path = GuestPath::resolve(root, b"/", make.path);
            let fail = |e: io::Error| Refusal::io("make directory", &path, &e);
            match fs::symlink_metadata(&path.host) {
                Ok(meta) if meta.is_dir() => Reply::MakeDir { created: false },
                Ok(_) => {
                    let message =
                        format!("make directory {}: something else is there", path.display());
                    return Err(Refusal::new(ErrorCode::ALREADY_EXISTS, message));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if make.parents
                        && let Some(parent) = path.host.parent()
                    {
                        DirBuilder::new()
                            .recursive(true)
                            .mode(0o755)
                            .create(parent)
                            .map_err(|e| fail(parent_error(e)))?;
                    }
                    DirBuilder::new()
                        .mode(make.mode)
                        .create(&path.host)
                        .map_err(fail)?;
                    // Exactly `mode`, whatever the umask.
                    fs::set_permissions(&path.host, fs::Permissions::from_mode(make.mode))
                        .map_err(fail)?;
                    Reply::MakeDir { created: true }
                }
                Err(e) => return Err(fail(e)),
            }
        }
        Request::Remove(remove) => {
            let path = GuestPath::resolve(root, b"/", remove.path);
            if path.is_root {
                return Err(Refusal::new(
                    ErrorCode::INVALID_ARGUMENT,
                    "remove /: the root directory stays",
                ));
            }
            let fail = |e: io::Error| Refusal::io("remove", &path, &e);
            let meta = fs::symlink_metadata(&path.host).map_err(fail)?;
            let removed = match (meta.is_dir(), remove.recursive) {
                (true, true) => fs::remove_dir_all(&path.host),
                (true, false) => fs::remove_dir(&path.host),
                (false, _) => fs::remove_file(&path.host),
            };
            removed.map_err(fail)?;
            Reply::Remove
        }
        Request::Rename(rename) => {
            let from = GuestPath::resolve(root, b"/", rename.from);
            let to = GuestPath::resolve(root, b"/", rename.to);
            if from.is_root || to.is_root {
                return Err(Refusal::new(
                    ErrorCode::INVALID_ARGUMENT,
                    "rename: the root directory stays",
                ));
            }
            fs::rename(&from.host, &to.host).map_err(|e| {
                let code = match ErrorCode::of_io(&e) {
                    // Linux may say EEXIST for a non-empty directory in the way.
                    ErrorCode::ALREADY_EXISTS => ErrorCode::NOT_EMPTY,
                    code => code,
                };
                let message = format!("rename {} to {}: {e}", from.display(), to.display());
                Refusal::new(code, message)
            })?;
            Reply::Rename
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
    Ok(session.reply_or_error(id, &reply, out))
}

/// Appends the entries of host directory `dir` (and, while `level < depth`, of its
/// subdirectories) to `out`: depth-first, sorted by name, symlinks not followed; names are
/// relative to the listed directory (`prefix` is `dir`'s).
fn walk(
    dir: &Path,
    prefix: &[u8],
    level: u32,
    depth: u32,
    out: &mut Vec<ListedEntry>,
) -> io::Result<()> {
    let mut names = fs::read_dir(dir)?
        .map(|entry| entry.map(|e| e.file_name()))
        .collect::<io::Result<Vec<_>>>()?;
    names.sort();
    for name in names {
        let host = dir.join(&name);
        let meta = match fs::symlink_metadata(&host) {
            Ok(meta) => meta,
            // Removed since read_dir saw it.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let mut rel = prefix.to_vec();
        if !rel.is_empty() {
            rel.push(b'/');
        }
        rel.extend_from_slice(name.as_bytes());
        let descend = meta.is_dir() && level < depth;
        out.push(ListedEntry {
            name: rel.clone(),
            info: file_info(&host, &meta),
        });
        if descend {
            walk(&host, &rel, level + 1, depth, out)?;
        }
    }
    Ok(())
}

/// A command to run: Exec's fields, and ExecIn's working directory and user.
struct Command<'c, 'r> {
    argv: ByteList<'r>,
    env: ByteList<'r>,
    stdin: &'r [u8],
    cwd: &'c GuestPath,
    user: &'c str,
}

fn run<'s>(
    shared: &Shared,
    scratch: &'s mut Scratch,
    command: &Command<'_, '_>,
    room: usize,
) -> Result<ExecResult<'s>, Refusal> {
    scratch.stdout.clear();
    scratch.stderr.clear();
    let argv: Vec<&[u8]> = match shell::shell_script(command.argv) {
        None => command.argv.iter().collect(),
        Some(Ok(script)) => shell::script_words(script)
            .map_err(|m| Refusal::new(ErrorCode::INVALID_ARGUMENT, m))?
            .collect(),
        Some(Err(m)) => return Err(Refusal::new(ErrorCode::INVALID_ARGUMENT, m)),
    };
    let mut args = argv.iter().copied();
    let number = |arg: Option<&[u8]>| -> u64 {
        arg.and_then(|a| std::str::from_utf8(a).ok())
            .and_then(|a| a.parse().ok())
            .unwrap_or(0)
    };
    let mut exit_code = 0;
    match args.next() {
        // An empty script: a shell runs nothing and succeeds.
        None => {}
        Some(b"echo") => {
            for (i, arg) in args.enumerate() {
                if i > 0 {
                    scratch.stdout.push(b' ');
                }
                scratch.stdout.extend_from_slice(arg);
            }
            scratch.stdout.push(b'\n');
        }
        Some(b"cat") if argv.len() == 1 => scratch.stdout.extend_from_slice(command.stdin),
        Some(b"cat") => {
            for arg in args {
                let path = GuestPath::resolve(&shared.root, &command.cwd.guest, arg);
                match fs::read(&path.host) {
                    Ok(bytes) => scratch.stdout.extend_from_slice(&bytes),
                    Err(e) => {
                        exit_code = 1;
                        let line = format!("cat: {}: {e}\n", String::from_utf8_lossy(arg));
                        scratch.stderr.extend_from_slice(line.as_bytes());
                    }
                }
            }
        }
        Some(b"env") => {
            for entry in command.env.iter() {
                scratch.stdout.extend_from_slice(entry);
                scratch.stdout.push(b'\n');
            }
        }
        Some(b"exit") => exit_code = i32::try_from(number(args.next())).unwrap_or(255),
        Some(b"false") => exit_code = 1,
        Some(b"counter") => {
            let mut state = lock(&shared.state);
            state.counter += 1;
            scratch
                .stdout
                .extend_from_slice(state.counter.to_string().as_bytes());
        }
        Some(b"sleep") => thread::sleep(Duration::from_millis(number(args.next()))),
        Some(b"yes") => {
            let n = usize::try_from(number(args.next())).unwrap_or(usize::MAX);
            scratch.stdout.resize(n.min(MAX_FRAME_LEN * 2), b'y');
        }
        Some(b"pwd") => {
            scratch.stdout.extend_from_slice(&command.cwd.guest);
            scratch.stdout.push(b'\n');
        }
        Some(b"whoami") => {
            scratch.stdout.extend_from_slice(command.user.as_bytes());
            scratch.stdout.push(b'\n');
        }
        Some(other) => {
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
    Ok(ExecResult {
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
