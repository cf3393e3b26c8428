//! The API server: a Unix listener and its connections on one epoll loop in the main thread,
//! next to the VM-exit eventfd, the stop signals (SIGTERM, SIGINT) and stdin (console input
//! for COM1, like Firecracker). Requests are handled one at a time, in arrival order, by the
//! controller.
//!
//! It is hand-written (no async runtime, no HTTP framework) because it is on the hot path of
//! every restore: a request costs one `read`, the controller, one `write`. It serves every
//! client fairly, so that no client can hold the API for the others:
//!
//! - **Connections**: at most [`MAX_CONNECTIONS`]. An idle connection (no partial request, no
//!   unsent output) is kept for as long as its client wants while the server is under the cap
//!   — ember's runtime keeps one per VM for hours between calls, and opens a spare's before
//!   its first request — but when a connection arrives at the cap, the connection idle the
//!   longest is closed to make room (none idle: the one quiet the longest). Idle connections
//!   therefore never lock anyone out, and a client whose kept connection was closed sees it
//!   dead on its next write (the runtime's client reconnects once).
//! - **Requests**: once a request's first byte is here, all of it (head and body) must arrive
//!   within [`REQUEST_TIMEOUT`]; otherwise `408` and the connection is closed.
//! - **Writes never block the loop**: responses are queued per connection and written as the
//!   socket takes them (`EPOLLOUT` while output is pending). While a connection has more than
//!   [`OUTPUT_PAUSE`] unsent, it is not read and its pipelined requests wait; a client that
//!   takes none of its pending output for [`WRITE_TIMEOUT`], or whose pending output exceeds
//!   [`OUTPUT_MAX`], is disconnected.
//! - **Pipelining**: a connection answers at most [`BATCH`] requests in a row before the other
//!   connections get their turn; its input is read up to one request's limit at a time.
//!
//! [`ApiSocket`] binds the socket file so that its existence means "ready": it is bound and
//! listening under a temporary name in the same directory, then linked (or renamed) into
//! place. A socket file left at the path by a process that died is replaced; one that a
//! process still listens on is refused.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::signal::Signal;
use nix::sys::signalfd::SignalFd;

use super::http::{self, CONTINUE, MAX_BODY, MAX_HEAD, Parsed, Response};
use crate::controller::Controller;
use crate::exit::{ExitReason, ExitSignal};
use crate::stale_socket::{StaleError, remove_stale};
use crate::timing::now_ns;

/// Most simultaneous API connections; a new one beyond closes the one idle the longest.
pub const MAX_CONNECTIONS: usize = 32;
/// How long a request may take to arrive, from its first byte to its last.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long pending output may wait without the client taking any of it.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Unsent output above which a connection is not read and its pipelined requests wait.
pub const OUTPUT_PAUSE: usize = 64 << 10;
/// Unsent output beyond which a connection is closed.
pub const OUTPUT_MAX: usize = 1 << 20;
/// Requests a connection answers in a row before the others get their turn.
pub const BATCH: usize = 16;
/// Input buffered per connection: one request at its limits, plus room for the next head.
const INPUT_MAX: usize = MAX_HEAD + MAX_BODY + 4096;
/// Sockets are addressed by paths of at most this many bytes (`sun_path` less its NUL).
const SUN_PATH_MAX: usize = 107;

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// epoll failed.
    #[error("API event loop: {0}")]
    Epoll(nix::Error),
    /// The listener failed.
    #[error("API socket: {0}")]
    Io(io::Error),
}

/// Why the server stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// The VM asked the process to exit.
    Vm(ExitReason),
    /// A stop signal arrived (SIGTERM, SIGINT).
    Signal(Signal),
}

impl Stop {
    /// The process exit code: the VM's ([`ExitReason::exit_code`]), 0 for a stop signal.
    pub fn exit_code(&self) -> i32 {
        match self {
            Stop::Vm(reason) => reason.exit_code(),
            Stop::Signal(_) => 0,
        }
    }
}

/// Why the API socket could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The path is taken by something that is not a socket.
    #[error("API socket {0} exists and is not a socket")]
    NotASocket(PathBuf),
    /// Another process listens on the path.
    #[error("API socket {0} is in use by another process")]
    InUse(PathBuf),
    /// Something else failed.
    #[error("API socket {path}: {what}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// Why it failed.
        source: io::Error,
    },
}

/// The API socket: bound, listening, and at its path. Its file is removed on drop if it is
/// still the one bound here.
#[derive(Debug)]
pub struct ApiSocket {
    listener: UnixListener,
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl ApiSocket {
    /// Binds and listens at `path`, which appears only once the socket accepts connections.
    /// A socket file at `path` that nobody listens on (left by a killed process) is replaced;
    /// one a process listens on is [`BindError::InUse`].
    pub fn bind(path: &Path) -> Result<ApiSocket, BindError> {
        let io_err = |what: &'static str| {
            move |source: io::Error| BindError::Io {
                path: path.to_path_buf(),
                what,
                source,
            }
        };
        remove_stale(path, "API").map_err(|e| match e {
            StaleError::NotASocket(p) => BindError::NotASocket(p),
            StaleError::InUse(p) => BindError::InUse(p),
            StaleError::Io { path, what, source } => BindError::Io { path, what, source },
        })?;
        let Some(tmp) = temporary_name(path) else {
            // No shorter name fits: bind in place (the file then appears before listen()).
            let listener = UnixListener::bind(path).map_err(io_err("binding"))?;
            return ApiSocket::new(listener, path);
        };
        let _ = std::fs::remove_file(&tmp);
        let listener = UnixListener::bind(&tmp).map_err(io_err("binding"))?;
        // std's bind() listens too: from here the file is ready. A hard link puts it in place
        // only if nothing took the path meanwhile; a rename is the fallback on file systems
        // without hard links.
        let placed = match std::fs::hard_link(&tmp, path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                Err(BindError::InUse(path.to_path_buf()))
            }
            Err(_) => std::fs::rename(&tmp, path).map_err(io_err("moving into place")),
        };
        let _ = std::fs::remove_file(&tmp);
        placed?;
        ApiSocket::new(listener, path)
    }

    fn new(listener: UnixListener, path: &Path) -> Result<ApiSocket, BindError> {
        let meta = std::fs::symlink_metadata(path).map_err(|source| BindError::Io {
            path: path.to_path_buf(),
            what: "reading back",
            source,
        })?;
        Ok(ApiSocket {
            listener,
            path: path.to_path_buf(),
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    /// The listener.
    pub fn listener(&self) -> &UnixListener {
        &self.listener
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the socket file now if it is still ours (also done on drop).
    pub fn remove_file(&self) {
        if let Ok(meta) = std::fs::symlink_metadata(&self.path)
            && meta.dev() == self.dev
            && meta.ino() == self.ino
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Drop for ApiSocket {
    fn drop(&mut self) {
        self.remove_file();
    }
}

/// A name in `path`'s directory to bind before moving into place, unique to this process;
/// `None` if no such name fits in a socket address.
fn temporary_name(path: &Path) -> Option<PathBuf> {
    let dir = path.parent()?;
    let name = path.file_name()?.to_string_lossy();
    let pid = std::process::id();
    [format!(".{name}.{pid}.tmp"), format!(".{pid:x}~")]
        .into_iter()
        .map(|n| dir.join(n))
        .find(|p| p.as_os_str().len() <= SUN_PATH_MAX)
}

struct Conn {
    stream: UnixStream,
    /// Received bytes not yet handled.
    input: Vec<u8>,
    /// Output not yet written: `output[written..]`.
    output: Vec<u8>,
    written: usize,
    sent_continue: bool,
    /// The client shut its side (or sent `Connection: close`, or garbage): no more requests.
    read_closed: bool,
    /// Close once the output is written.
    closing: bool,
    /// In the ready queue (requests buffered, its batch was used up).
    queued: bool,
    /// The epoll interest currently registered.
    interest: EpollFlags,
    /// Last byte received or sent.
    last_active: Instant,
    /// Since when the buffered input is an incomplete request.
    partial_since: Option<Instant>,
    /// Since when pending output has not moved.
    stalled_since: Instant,
}

impl Conn {
    fn new(stream: UnixStream, interest: EpollFlags, now: Instant) -> Conn {
        Conn {
            stream,
            input: Vec::with_capacity(1024),
            output: Vec::new(),
            written: 0,
            sent_continue: false,
            read_closed: false,
            closing: false,
            queued: false,
            interest,
            last_active: now,
            partial_since: None,
            stalled_since: now,
        }
    }

    fn pending(&self) -> usize {
        self.output.len() - self.written
    }

    fn idle(&self) -> bool {
        self.input.is_empty() && self.pending() == 0 && !self.closing
    }

    /// Whether the socket should be read now.
    fn wants_input(&self) -> bool {
        !self.read_closed
            && !self.closing
            && self.input.len() < INPUT_MAX
            && self.pending() <= OUTPUT_PAUSE
    }

    fn wanted_interest(&self) -> EpollFlags {
        // EPOLLRDHUP only with EPOLLIN: a half-closed peer would wake a paused connection in a
        // loop (EPOLLHUP and EPOLLERR are reported regardless, and end in a failed write).
        let mut f = EpollFlags::empty();
        if self.wants_input() {
            f |= EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP;
        }
        if self.pending() > 0 {
            f |= EpollFlags::EPOLLOUT;
        }
        f
    }

    /// When this connection times out, if it can.
    fn deadline(&self) -> Option<Instant> {
        if self.pending() > 0 {
            Some(self.stalled_since + WRITE_TIMEOUT)
        } else {
            self.partial_since.map(|t| t + REQUEST_TIMEOUT)
        }
    }

    /// Queues `bytes`, writing what the socket takes now.
    fn send(&mut self, bytes: &[u8], now: Instant) -> io::Result<()> {
        if self.pending() == 0 {
            self.output.clear();
            self.written = 0;
            self.stalled_since = now;
            let n = write_some(&mut self.stream, bytes)?;
            if n > 0 {
                self.last_active = now;
            }
            if n < bytes.len() {
                self.output.extend_from_slice(&bytes[n..]);
            }
        } else {
            self.output.extend_from_slice(bytes);
            self.flush(now)?;
        }
        if self.pending() > OUTPUT_MAX {
            return Err(io::Error::other("API client not reading its responses"));
        }
        Ok(())
    }

    /// Writes pending output as far as the socket takes it.
    fn flush(&mut self, now: Instant) -> io::Result<()> {
        if self.pending() == 0 {
            return Ok(());
        }
        let n = write_some(&mut self.stream, &self.output[self.written..])?;
        if n > 0 {
            self.written += n;
            self.last_active = now;
            self.stalled_since = now;
        }
        if self.pending() == 0 {
            self.output.clear();
            self.written = 0;
        } else if self.written >= OUTPUT_PAUSE {
            self.output.drain(..self.written);
            self.written = 0;
        }
        Ok(())
    }

    /// Reads what is available, up to the input limit. Returns false on a broken socket.
    fn fill(&mut self, now: Instant) -> bool {
        let mut chunk = [0u8; 4096];
        while self.input.len() < INPUT_MAX {
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    self.read_closed = true;
                    break;
                }
                Ok(n) => {
                    self.input.extend_from_slice(&chunk[..n]);
                    self.last_active = now;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
        true
    }
}

/// Writes what the socket takes without blocking.
fn write_some(stream: &mut UnixStream, bytes: &[u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < bytes.len() {
        match stream.write(&bytes[done..]) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "peer closed")),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Whether a connection stays, and whether it has requests left for another turn.
enum Verdict {
    Keep { more: bool },
    Close,
}

/// Reads (if `readable`), writes pending output and answers up to [`BATCH`] requests.
fn service(conn: &mut Conn, controller: &mut Controller, readable: bool) -> Verdict {
    let now = Instant::now();
    if conn.flush(now).is_err() {
        return Verdict::Close;
    }
    if readable && conn.wants_input() && !conn.fill(now) {
        return Verdict::Close;
    }
    let received_ns = now_ns();
    let mut answered = 0;
    let mut more = false;
    while !conn.closing && !conn.input.is_empty() {
        if conn.pending() > OUTPUT_PAUSE {
            // Resumed by EPOLLOUT once the client takes its output.
            break;
        }
        if answered == BATCH {
            more = true;
            break;
        }
        match http::parse(&conn.input) {
            Ok(Parsed::Complete(req, used)) => {
                conn.input.drain(..used);
                conn.sent_continue = false;
                conn.partial_since = None;
                let keep_alive = req.keep_alive;
                let resp = super::handle_request(controller, req, received_ns);
                answered += 1;
                if !keep_alive {
                    conn.closing = true;
                    conn.input.clear();
                }
                let bytes = resp.to_bytes(keep_alive);
                if conn.send(&bytes, Instant::now()).is_err() {
                    return Verdict::Close;
                }
            }
            Ok(Parsed::Incomplete { send_continue }) => {
                if conn.partial_since.is_none() {
                    conn.partial_since = Some(now);
                }
                if send_continue && !conn.sent_continue {
                    conn.sent_continue = true;
                    if conn.send(CONTINUE, now).is_err() {
                        return Verdict::Close;
                    }
                }
                break;
            }
            Err(e) => {
                conn.closing = true;
                conn.input.clear();
                let _ = conn.send(&Response::bad_request(&e.0).to_bytes(false), now);
            }
        }
    }
    if conn.input.is_empty() {
        conn.partial_since = None;
    }
    if conn.read_closed && !more && conn.pending() <= OUTPUT_PAUSE {
        // Nothing more will arrive: the requests that could be answered were.
        conn.closing = true;
    }
    if conn.closing && conn.pending() == 0 {
        return Verdict::Close;
    }
    Verdict::Keep { more }
}

/// The API connections and the order they are served in.
struct Connections {
    conns: HashMap<RawFd, Conn>,
    /// Connections with requests left after their batch.
    ready: VecDeque<RawFd>,
}

impl Connections {
    fn close(&mut self, epoll: &Epoll, fd: RawFd) {
        if let Some(conn) = self.conns.remove(&fd) {
            let _ = epoll.delete(conn.stream.as_fd());
        }
    }

    /// Serves one connection and applies the verdict.
    fn serve(&mut self, epoll: &Epoll, controller: &mut Controller, fd: RawFd, readable: bool) {
        let Some(conn) = self.conns.get_mut(&fd) else {
            return;
        };
        match service(conn, controller, readable) {
            Verdict::Close => self.close(epoll, fd),
            Verdict::Keep { more } => {
                let want = conn.wanted_interest();
                if want != conn.interest {
                    if epoll
                        .modify(conn.stream.as_fd(), &mut EpollEvent::new(want, fd as u64))
                        .is_err()
                    {
                        self.close(epoll, fd);
                        return;
                    }
                    conn.interest = want;
                }
                if more && !conn.queued {
                    conn.queued = true;
                    self.ready.push_back(fd);
                }
            }
        }
    }

    /// Serves each connection that had requests left, once.
    fn serve_ready(&mut self, epoll: &Epoll, controller: &mut Controller) {
        for _ in 0..self.ready.len() {
            let Some(fd) = self.ready.pop_front() else {
                break;
            };
            match self.conns.get_mut(&fd) {
                Some(conn) if conn.queued => conn.queued = false,
                _ => continue,
            }
            self.serve(epoll, controller, fd, false);
        }
    }

    /// The earliest connection deadline.
    fn next_deadline(&self) -> Option<Instant> {
        self.conns.values().filter_map(Conn::deadline).min()
    }

    /// Closes connections past their deadline; an incomplete request is answered 408.
    fn expire(&mut self, epoll: &Epoll, now: Instant) {
        let expired: Vec<RawFd> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline().is_some_and(|d| d <= now))
            .map(|(&fd, _)| fd)
            .collect();
        for fd in expired {
            if let Some(conn) = self.conns.get_mut(&fd) {
                if conn.pending() > 0 {
                    tracing::info!("closing an API connection whose client takes no output");
                } else {
                    tracing::info!(
                        "closing an API connection whose request did not arrive in time"
                    );
                    let _ = write_some(
                        &mut conn.stream,
                        &Response::request_timeout().to_bytes(false),
                    );
                }
            }
            self.close(epoll, fd);
        }
    }

    /// Accepts every pending connection, making room at the cap.
    fn accept_all(&mut self, listener: &UnixListener, epoll: &Epoll) {
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    if self.conns.len() >= MAX_CONNECTIONS {
                        self.evict(epoll);
                    }
                    let fd = stream.as_raw_fd();
                    let interest = EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP;
                    if epoll
                        .add(stream.as_fd(), EpollEvent::new(interest, fd as u64))
                        .is_ok()
                    {
                        self.conns
                            .insert(fd, Conn::new(stream, interest, Instant::now()));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "accept on the API socket failed");
                    return;
                }
            }
        }
    }

    /// Closes the connection idle the longest (none idle: the one quiet the longest).
    fn evict(&mut self, epoll: &Epoll) {
        let victim = self
            .conns
            .iter()
            .min_by_key(|(_, c)| (!c.idle(), c.last_active))
            .map(|(&fd, c)| (fd, c.idle()));
        if let Some((fd, idle)) = victim {
            tracing::info!(
                idle,
                "API connection limit ({MAX_CONNECTIONS}) reached: closing the longest-quiet connection"
            );
            self.close(epoll, fd);
        }
    }
}

/// Serves the API until the VM asks the process to exit or a stop signal arrives on
/// `signals`.
pub fn run(
    listener: &UnixListener,
    controller: &mut Controller,
    exit: &ExitSignal,
    signals: Option<&SignalFd>,
) -> Result<Stop, ServerError> {
    listener.set_nonblocking(true).map_err(ServerError::Io)?;
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(ServerError::Epoll)?;
    let listen_fd = listener.as_raw_fd();
    let exit_fd = exit.eventfd().as_fd().as_raw_fd();
    epoll
        .add(
            listener.as_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN, listen_fd as u64),
        )
        .map_err(ServerError::Epoll)?;
    epoll
        .add(
            exit.eventfd().as_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN, exit_fd as u64),
        )
        .map_err(ServerError::Epoll)?;
    let signal_fd = match signals {
        Some(s) => {
            let fd = s.as_fd().as_raw_fd();
            epoll
                .add(s.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, fd as u64))
                .map_err(ServerError::Epoll)?;
            Some(fd)
        }
        None => None,
    };
    // Console input: stdin, when it can be polled (a pipe or terminal; not /dev/null or a file).
    let stdin = io::stdin();
    let stdin_fd = stdin.as_fd().as_raw_fd();
    let mut stdin_open = epoll
        .add(
            stdin.as_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN, stdin_fd as u64),
        )
        .is_ok();
    let mut conns = Connections {
        conns: HashMap::new(),
        ready: VecDeque::new(),
    };
    let mut events = [EpollEvent::empty(); 16];
    loop {
        if let Some(reason) = exit.reason() {
            return Ok(Stop::Vm(reason));
        }
        let deadline = conns.next_deadline();
        let timeout = if !conns.ready.is_empty() {
            EpollTimeout::ZERO
        } else {
            match deadline {
                None => EpollTimeout::NONE,
                Some(d) => {
                    // Rounded up to whole milliseconds, so a wake-up finds the deadline passed.
                    let left = d.saturating_duration_since(Instant::now());
                    let ms = left.as_micros().div_ceil(1000).min(60_000);
                    EpollTimeout::try_from(ms).unwrap_or(EpollTimeout::NONE)
                }
            }
        };
        let n = match epoll.wait(&mut events, timeout) {
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(ServerError::Epoll(e)),
        };
        for ev in &events[..n] {
            let fd = ev.data() as RawFd;
            if fd == exit_fd {
                let _ = exit.eventfd().read();
                continue;
            }
            if Some(fd) == signal_fd {
                if let Some(signal) = signals
                    .and_then(|s| s.read_signal().ok().flatten())
                    .and_then(|info| Signal::try_from(info.ssi_signo as i32).ok())
                {
                    tracing::info!(%signal, "stopping");
                    return Ok(Stop::Signal(signal));
                }
                continue;
            }
            if stdin_open && fd == stdin_fd {
                let mut buf = [0u8; 64];
                match nix::unistd::read(stdin.as_fd(), &mut buf) {
                    Ok(0) | Err(Errno::EBADF | Errno::EIO) => {
                        let _ = epoll.delete(stdin.as_fd());
                        stdin_open = false;
                    }
                    Ok(n) => controller.console_input(&buf[..n]),
                    Err(_) => {}
                }
                continue;
            }
            if fd == listen_fd {
                conns.accept_all(listener, &epoll);
                continue;
            }
            let readable = ev.events().intersects(
                EpollFlags::EPOLLIN
                    | EpollFlags::EPOLLRDHUP
                    | EpollFlags::EPOLLHUP
                    | EpollFlags::EPOLLERR,
            );
            conns.serve(&epoll, controller, fd, readable);
        }
        conns.serve_ready(&epoll, controller);
        if deadline.is_some() {
            conns.expire(&epoll, Instant::now());
        }
    }
}
