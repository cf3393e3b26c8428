//! The hybrid vsock backend (Firecracker's semantics): a Unix listener at `uds_path` for
//! host-initiated connections (`CONNECT <port>\n` -> `OK <hostport>\n`), Unix connections to
//! `<uds_path>_<port>` for guest-initiated ones, and the table of live connections.
//!
//! Routing: guest packets arrive through [`Muxer::from_guest`]; packets for the guest leave
//! through [`Muxer::next_packet`], fed by an RX work queue that holds each connection with
//! something to say at most once (plus a bounded number of RSTs for unknown connections), so
//! the queue never grows beyond the connection table.
//!
//! Limits: [`MAX_CONNECTIONS`] connections, [`MAX_HANDSHAKES`] host connections that have not
//! sent their `CONNECT` line yet (each gets [`HANDSHAKE_TIMEOUT`]), and per-connection limits
//! in [`super::conn`]. Nothing blocks: all sockets are non-blocking.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr};
use vmm_sys_util::timerfd::TimerFd;

use super::conn::{Conn, State, Verdict};
use super::packet::{HOST_CID, PacketHeader, TYPE_STREAM, op};
use crate::devices::virtio::device::{EventRegistry, Interest, Readiness};

/// Most connections (Firecracker's limit).
pub const MAX_CONNECTIONS: usize = 1023;
/// Most accepted host connections still waiting to send `CONNECT <port>\n`.
pub const MAX_HANDSHAKES: usize = 64;
/// How long a host connection may take to send its `CONNECT` line.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest `CONNECT` line accepted (Firecracker reads at most 32 bytes).
const MAX_CONNECT_LINE: usize = 32;
/// Most RSTs for unknown connections waiting for an RX buffer; more are dropped.
const MAX_PENDING_RST: usize = 256;
/// Host connections accepted per listener event (the rest wait for the next one).
const ACCEPT_BATCH: usize = 32;
/// Timer period while some connection has a deadline.
const TICK: Duration = Duration::from_millis(100);

/// Token of the host listener.
pub const TOKEN_LISTENER: u32 = 0;
/// Token of the timer.
pub const TOKEN_TIMER: u32 = 1;
/// Token reserved for the device's own self-kick (see `super::Vsock`).
pub const TOKEN_KICK: u32 = 2;
const FIRST_TOKEN: u32 = 3;

/// First host-side port given to host-initiated connections (Firecracker's range).
const LOCAL_PORT_FIRST: u32 = 1 << 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ConnKey {
    local_port: u32,
    peer_port: u32,
}

#[derive(Debug, Clone, Copy)]
enum RxItem {
    Conn(ConnKey),
    Rst(ConnKey),
}

#[derive(Debug)]
struct Handshake {
    stream: UnixStream,
    line: [u8; MAX_CONNECT_LINE],
    len: usize,
    deadline: Instant,
}

#[derive(Debug, Clone, Copy)]
enum Target {
    Handshake,
    Conn(ConnKey),
}

/// Errors creating the backend.
#[derive(Debug, thiserror::Error)]
#[error("vsock uds_path {path}: {source}")]
pub struct MuxerError {
    /// The socket path.
    pub path: String,
    /// Why.
    pub source: io::Error,
}

/// The listener's file identity, to remove only our own socket file on drop.
#[derive(Debug)]
struct Bound {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

/// The hybrid vsock backend.
#[derive(Debug)]
pub struct Muxer {
    guest_cid: u64,
    listener: UnixListener,
    bound: Bound,
    timer: TimerFd,
    timer_armed: bool,
    conns: HashMap<ConnKey, Conn>,
    handshakes: HashMap<u32, Handshake>,
    targets: HashMap<u32, Target>,
    rxq: VecDeque<RxItem>,
    pending_rst: usize,
    next_token: u32,
    local_port_last: u32,
}

impl Muxer {
    /// Binds the listener at `uds_path`. A socket file there that nobody listens on (left by
    /// a killed VMM) is replaced; a live one or anything else is refused.
    pub fn new(guest_cid: u64, uds_path: &Path) -> Result<Muxer, MuxerError> {
        let err = |source| MuxerError {
            path: uds_path.display().to_string(),
            source,
        };
        crate::stale_socket::remove_stale(uds_path, "vsock")
            .map_err(|e| err(io::Error::from(e)))?;
        let listener = UnixListener::bind(uds_path).map_err(err)?;
        listener.set_nonblocking(true).map_err(err)?;
        let meta = std::fs::metadata(uds_path).map_err(err)?;
        let timer = TimerFd::new().map_err(|e| err(io::Error::from(e)))?;
        Ok(Muxer {
            guest_cid,
            listener,
            bound: Bound {
                path: uds_path.to_path_buf(),
                dev: meta.dev(),
                ino: meta.ino(),
            },
            timer,
            timer_armed: false,
            conns: HashMap::new(),
            handshakes: HashMap::new(),
            targets: HashMap::new(),
            rxq: VecDeque::new(),
            pending_rst: 0,
            next_token: FIRST_TOKEN,
            local_port_last: LOCAL_PORT_FIRST - 1,
        })
    }

    /// The socket path.
    pub fn uds_path(&self) -> &Path {
        &self.bound.path
    }

    /// The last host-side port handed out.
    pub fn local_port_last(&self) -> u32 {
        self.local_port_last
    }

    /// Continues port numbering from a snapshot.
    pub fn set_local_port_last(&mut self, port: u32) {
        if port >= LOCAL_PORT_FIRST - 1 {
            self.local_port_last = port;
        }
    }

    /// Number of live connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Starts watching the listener and timer.
    pub fn register(&mut self, events: &EventRegistry) -> io::Result<()> {
        let add = |fd: RawFd, token| match events.add(&fd, token, Interest::READ) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                events.modify(&fd, token, Interest::READ)
            }
            other => other,
        };
        add(self.listener.as_raw_fd(), TOKEN_LISTENER)?;
        add(self.timer.as_raw_fd(), TOKEN_TIMER)
    }

    /// Stops watching the listener and timer and drops every connection (device reset).
    pub fn unregister(&mut self, events: &EventRegistry) {
        let _ = events.remove(&self.listener);
        let _ = events.remove(&self.timer.as_raw_fd());
        self.drop_connections();
    }

    /// Closes every connection and pending handshake (their host streams see EOF); the
    /// listener stays. Used on reset and when a snapshot is taken.
    pub fn drop_connections(&mut self) {
        self.conns.clear();
        self.handshakes.clear();
        self.targets.clear();
        self.rxq.clear();
        self.pending_rst = 0;
    }

    /// True if a packet for the guest is waiting for an RX buffer.
    pub fn has_pending_rx(&self) -> bool {
        !self.rxq.is_empty()
    }

    fn alloc_token(&mut self) -> u32 {
        loop {
            let t = self.next_token;
            self.next_token = self.next_token.checked_add(1).unwrap_or(FIRST_TOKEN);
            if !self.targets.contains_key(&t) {
                return t;
            }
        }
    }

    fn alloc_local_port(&mut self) -> u32 {
        loop {
            let p = self.local_port_last.wrapping_add(1);
            self.local_port_last = if !(LOCAL_PORT_FIRST..1 << 31).contains(&p) {
                LOCAL_PORT_FIRST
            } else {
                p
            };
            let taken = self
                .conns
                .keys()
                .any(|k| k.local_port == self.local_port_last);
            if !taken {
                return self.local_port_last;
            }
        }
    }

    fn arm_timer(&mut self) {
        if !self.timer_armed {
            if let Err(e) = self.timer.reset(TICK, Some(TICK)) {
                tracing::warn!(error = %e, "vsock: cannot arm the timer");
                return;
            }
            self.timer_armed = true;
        }
    }

    fn enqueue(&mut self, key: ConnKey) {
        if let Some(c) = self.conns.get_mut(&key)
            && !c.queued
            && c.has_pending()
        {
            c.queued = true;
            self.rxq.push_back(RxItem::Conn(key));
        }
    }

    fn enqueue_rst(&mut self, key: ConnKey) {
        if self.pending_rst >= MAX_PENDING_RST {
            tracing::debug!("vsock: RST queue full, dropping one");
            return;
        }
        self.pending_rst += 1;
        self.rxq.push_back(RxItem::Rst(key));
    }

    /// Drops a connection; closing its stream also takes it out of the epoll set.
    fn remove(&mut self, key: ConnKey) {
        if let Some(c) = self.conns.remove(&key) {
            self.targets.remove(&c.token);
        }
    }

    /// Applies a connection's verdict, re-queues it and fixes its epoll registration.
    fn settle(&mut self, key: ConnKey, verdict: Verdict, events: &EventRegistry) {
        match verdict {
            Verdict::Keep => {}
            Verdict::Remove => return self.remove(key),
            Verdict::Reset => {
                self.remove(key);
                return self.enqueue_rst(key);
            }
        }
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        let want = c.interest();
        if c.registered != Some(want) {
            let r = match c.registered {
                None => events.add(&c.stream, c.token, want),
                Some(_) => events.modify(&c.stream, c.token, want),
            };
            match r {
                Ok(()) => c.registered = Some(want),
                Err(e) => {
                    tracing::warn!(error = %e, "vsock: cannot watch a host stream");
                    self.remove(key);
                    return self.enqueue_rst(key);
                }
            }
        }
        if c.deadline.is_some() {
            self.arm_timer();
        }
        self.enqueue(key);
    }

    /// A descriptor the muxer registered is ready.
    pub fn handle_fd(&mut self, token: u32, r: Readiness, events: &EventRegistry) {
        match token {
            TOKEN_LISTENER => self.accept(events),
            TOKEN_TIMER => self.tick(events),
            _ => match self.targets.get(&token).copied() {
                Some(Target::Handshake) => self.read_connect(token, events),
                Some(Target::Conn(key)) => {
                    let verdict = match self.conns.get_mut(&key) {
                        Some(c) => c.host_ready(r),
                        None => return,
                    };
                    self.settle(key, verdict, events);
                }
                None => {}
            },
        }
    }

    fn accept(&mut self, events: &EventRegistry) {
        for _ in 0..ACCEPT_BATCH {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "vsock: accept failed");
                    return;
                }
            };
            if self.handshakes.len() >= MAX_HANDSHAKES
                || self.conns.len() + self.handshakes.len() >= MAX_CONNECTIONS
            {
                tracing::warn!("vsock: too many host connections, refusing one");
                continue;
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let token = self.alloc_token();
            if let Err(e) = events.add(&stream, token, Interest::READ) {
                tracing::warn!(error = %e, "vsock: cannot watch a host connection");
                continue;
            }
            self.targets.insert(token, Target::Handshake);
            self.handshakes.insert(
                token,
                Handshake {
                    stream,
                    line: [0; MAX_CONNECT_LINE],
                    len: 0,
                    deadline: Instant::now() + HANDSHAKE_TIMEOUT,
                },
            );
            self.arm_timer();
        }
    }

    /// Drops a pending host connection (closing it takes it out of the epoll set).
    fn drop_handshake(&mut self, token: u32) {
        self.handshakes.remove(&token);
        self.targets.remove(&token);
    }

    /// Reads (part of) a `CONNECT <port>\n` line; bytes after the newline are kept for the
    /// guest.
    fn read_connect(&mut self, token: u32, events: &EventRegistry) {
        let Some(h) = self.handshakes.get_mut(&token) else {
            return;
        };
        let n = match h.stream.read(&mut h.line[h.len..]) {
            Ok(0) => return self.drop_handshake(token),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return,
            Err(_) => return self.drop_handshake(token),
        };
        h.len += n;
        let Some(nl) = h.line[..h.len].iter().position(|&b| b == b'\n') else {
            if h.len == MAX_CONNECT_LINE {
                tracing::debug!("vsock: CONNECT line too long");
                self.drop_handshake(token);
            }
            return;
        };
        let port = parse_connect(&h.line[..nl]);
        let prefix = h.line[nl + 1..h.len].to_vec();
        let Some(peer_port) = port else {
            tracing::debug!(
                line = %h.line[..nl].escape_ascii(),
                "vsock: bad CONNECT line from the host"
            );
            return self.drop_handshake(token);
        };
        let Some(h) = self.handshakes.remove(&token) else {
            return;
        };
        if self.conns.len() >= MAX_CONNECTIONS {
            self.targets.remove(&token);
            return;
        }
        let local_port = self.alloc_local_port();
        let key = ConnKey {
            local_port,
            peer_port,
        };
        let mut conn = Conn::host_initiated(
            h.stream,
            token,
            local_port,
            peer_port,
            prefix,
            Instant::now(),
        );
        // From the handshake's level-triggered read to the connection's edge-triggered watch.
        let want = conn.interest();
        if let Err(e) = events.modify(&conn.stream, token, want) {
            tracing::warn!(error = %e, "vsock: cannot watch a host stream");
            self.targets.remove(&token);
            return;
        }
        conn.registered = Some(want);
        self.targets.insert(token, Target::Conn(key));
        self.conns.insert(key, conn);
        self.settle(key, Verdict::Keep, events);
    }

    fn tick(&mut self, events: &EventRegistry) {
        let _ = self.timer.wait();
        let now = Instant::now();
        let expired: Vec<u32> = self
            .handshakes
            .iter()
            .filter(|(_, h)| now >= h.deadline)
            .map(|(t, _)| *t)
            .collect();
        for t in expired {
            tracing::debug!("vsock: host connection sent no CONNECT line in time");
            self.drop_handshake(t);
        }
        let expired: Vec<(ConnKey, State)> = self
            .conns
            .iter()
            .filter(|(_, c)| c.expired(now))
            .map(|(k, c)| (*k, c.state))
            .collect();
        for (key, state) in expired {
            tracing::debug!(?state, port = key.peer_port, "vsock: connection timed out");
            self.settle(key, Verdict::Reset, events);
        }
        let waiting =
            !self.handshakes.is_empty() || self.conns.values().any(|c| c.deadline.is_some());
        if !waiting && self.timer_armed {
            if let Err(e) = self.timer.clear() {
                tracing::warn!(error = %e, "vsock: cannot disarm the timer");
            }
            self.timer_armed = false;
        }
    }

    /// A packet from the guest (TX queue).
    pub fn from_guest(&mut self, hdr: &PacketHeader, data: &[u8], events: &EventRegistry) {
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        if hdr.dst_cid != HOST_CID || hdr.src_cid != self.guest_cid {
            tracing::debug!(
                ?hdr,
                "vsock: dropping a guest packet with foreign addresses"
            );
            return;
        }
        if hdr.type_ != TYPE_STREAM {
            if hdr.op != op::RST {
                self.enqueue_rst(key);
            }
            return;
        }
        if !self.conns.contains_key(&key) {
            match hdr.op {
                op::REQUEST => self.guest_connect(hdr, events),
                op::RST => {}
                _ => self.enqueue_rst(key),
            }
            return;
        }
        let verdict = match self.conns.get_mut(&key) {
            Some(c) => c.from_guest(hdr, data),
            None => return,
        };
        self.settle(key, verdict, events);
    }

    /// A guest connects to host port `dst_port`: connect to `<uds_path>_<port>`.
    fn guest_connect(&mut self, hdr: &PacketHeader, events: &EventRegistry) {
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        if self.conns.len() + self.handshakes.len() >= MAX_CONNECTIONS {
            return self.enqueue_rst(key);
        }
        let mut path = self.bound.path.clone().into_os_string();
        path.push(format!("_{}", hdr.dst_port));
        match connect_nonblocking(Path::new(&path)) {
            Ok(stream) => {
                let token = self.alloc_token();
                let conn = Conn::guest_initiated(stream, token, hdr);
                self.targets.insert(token, Target::Conn(key));
                self.conns.insert(key, conn);
                self.settle(key, Verdict::Keep, events);
            }
            Err(e) => {
                tracing::debug!(path = %Path::new(&path).display(), error = %e, "vsock: guest connection refused");
                self.enqueue_rst(key);
            }
        }
    }

    /// Fills `buf` with the next packet's payload and returns its header, or `None` when
    /// nothing is waiting. `buf.len()` bounds the payload.
    pub fn next_packet(&mut self, buf: &mut [u8], events: &EventRegistry) -> Option<PacketHeader> {
        let now = Instant::now();
        while let Some(item) = self.rxq.pop_front() {
            match item {
                RxItem::Rst(key) => {
                    self.pending_rst = self.pending_rst.saturating_sub(1);
                    return Some(PacketHeader {
                        src_cid: HOST_CID,
                        dst_cid: self.guest_cid,
                        src_port: key.local_port,
                        dst_port: key.peer_port,
                        len: 0,
                        type_: TYPE_STREAM,
                        op: op::RST,
                        flags: 0,
                        buf_alloc: 0,
                        fwd_cnt: 0,
                    });
                }
                RxItem::Conn(key) => {
                    let result = match self.conns.get_mut(&key) {
                        Some(c) => {
                            c.queued = false;
                            c.next_packet(self.guest_cid, buf, now)
                        }
                        None => continue,
                    };
                    match result {
                        Ok(pkt) => {
                            self.settle(key, Verdict::Keep, events);
                            if pkt.is_some() {
                                return pkt;
                            }
                        }
                        Err(verdict) => self.settle(key, verdict, events),
                    }
                }
            }
        }
        None
    }
}

impl Drop for Muxer {
    fn drop(&mut self) {
        // Remove the socket file only if it is still the one we bound.
        if let Ok(meta) = std::fs::symlink_metadata(&self.bound.path)
            && meta.dev() == self.bound.dev
            && meta.ino() == self.bound.ino
        {
            let _ = std::fs::remove_file(&self.bound.path);
        }
    }
}

/// Parses `CONNECT <port>` (keyword case-insensitive, as Firecracker accepts).
fn parse_connect(line: &[u8]) -> Option<u32> {
    let line = std::str::from_utf8(line).ok()?;
    let mut words = line.split_whitespace();
    let cmd = words.next()?;
    let port = words.next()?;
    if !cmd.eq_ignore_ascii_case("connect") || words.next().is_some() {
        return None;
    }
    if port.is_empty() || port.len() > 10 || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse().ok()
}

/// Connects a non-blocking Unix stream: a full listen backlog fails with `EAGAIN` instead of
/// blocking the device thread.
fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let addr = UnixAddr::new(path).map_err(io::Error::from)?;
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io::Error::from)?;
    socket::connect(fd.as_raw_fd(), &addr).map_err(io::Error::from)?;
    Ok(UnixStream::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect(b"CONNECT 52"), Some(52));
        assert_eq!(parse_connect(b"connect 1024"), Some(1024));
        assert_eq!(parse_connect(b"CONNECT 52\r"), Some(52));
        assert_eq!(parse_connect(b"CONNECT"), None);
        assert_eq!(parse_connect(b"CONNECT -1"), None);
        assert_eq!(parse_connect(b"CONNECT 99999999999"), None);
        assert_eq!(parse_connect(b"CONNECT 5 6"), None);
        assert_eq!(parse_connect(b"HELLO 5"), None);
        assert_eq!(parse_connect(&[0xff, 0xfe]), None);
    }
}
