//! One vsock stream connection: a guest port on one side, a host Unix stream on the other,
//! with the spec's credit-based flow control in both directions.
//!
//! Host -> guest: bytes are read from the Unix stream straight into RX packets, never more
//! than the guest's advertised credit (`buf_alloc - (sent - fwd_cnt)`); with no credit the
//! stream is not polled for input, so the host's data waits in its socket buffer.
//! Guest -> host: bytes go straight to the Unix stream; what the stream does not take is kept
//! in a buffer of at most [`CONN_BUF`] bytes (the `buf_alloc` we advertise); a guest that
//! sends beyond its credit is reset. `fwd_cnt` counts bytes written to the stream; a credit
//! update is sent when the guest's view of our free space drops below [`CREDIT_THRESHOLD`].
//!
//! The connection never blocks: every stream operation is non-blocking. Its stream is watched
//! edge-triggered for input (registered once: no `epoll_ctl` per state change), so the
//! connection remembers what an edge told it in `host_data` (bytes may be waiting; cleared
//! only when a read comes back short or empty-handed). Output is watched only while `tx_buf`
//! holds bytes a write could not place ([`Conn::interest`]): a Unix socket reports
//! writability every time its peer reads, which would wake the device thread per reply.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use super::packet::{PacketHeader, SHUTDOWN_RCV, SHUTDOWN_SEND, op};
use crate::devices::virtio::device::{Interest, Readiness};

/// Receive buffer we advertise per connection (guest -> host bytes we may hold).
pub const CONN_BUF: u32 = 64 << 10;
/// Send a credit update when the guest thinks we have less free space than this.
pub const CREDIT_THRESHOLD: u32 = 16 << 10;
/// How long the guest has to answer a host-initiated connection request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the guest has to answer our shutdown with a reset.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);

/// Where the connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Host-initiated: REQUEST to be sent or sent, waiting for the guest's RESPONSE.
    LocalInit,
    /// Guest-initiated: the host stream is connected, RESPONSE to be sent.
    PeerInit,
    /// Data flows.
    Established,
    /// We sent SHUTDOWN (the host closed); waiting for the guest's RST.
    Closing,
}

/// What the muxer must do after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Keep the connection.
    Keep,
    /// Drop it silently (the guest already knows).
    Remove,
    /// Send the guest an RST and drop it.
    Reset,
}

#[derive(Debug, Default, Clone, Copy)]
struct Pending {
    request: bool,
    response: bool,
    shutdown: bool,
    credit_update: bool,
    credit_request: bool,
    rw: bool,
}

/// A connection.
#[derive(Debug)]
pub struct Conn {
    /// The host-side stream.
    pub stream: UnixStream,
    /// Its epoll token.
    pub token: u32,
    /// Host-side port.
    pub local_port: u32,
    /// Guest-side port.
    pub peer_port: u32,
    /// Where it is.
    pub state: State,
    /// When it gives up waiting (request or shutdown).
    pub deadline: Option<Instant>,
    /// Whether the muxer's RX queue holds it.
    pub queued: bool,
    /// How the stream is registered with the event loop (`None`: not registered).
    pub registered: Option<Interest>,
    pending: Pending,
    host_data: bool,
    host_hup: bool,
    host_eof: bool,
    peer_shut_send: bool,
    peer_shut_rcv: bool,
    credit_requested: bool,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    sent_to_peer: Wrapping<u32>,
    recv_from_peer: Wrapping<u32>,
    fwd_cnt: Wrapping<u32>,
    fwd_cnt_told: Wrapping<u32>,
    tx_buf: VecDeque<u8>,
    prefix: Vec<u8>,
}

impl Conn {
    fn new(stream: UnixStream, token: u32, local_port: u32, peer_port: u32, state: State) -> Conn {
        Conn {
            stream,
            token,
            local_port,
            peer_port,
            state,
            deadline: None,
            queued: false,
            registered: None,
            pending: Pending::default(),
            host_data: false,
            host_hup: false,
            host_eof: false,
            peer_shut_send: false,
            peer_shut_rcv: false,
            credit_requested: false,
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            sent_to_peer: Wrapping(0),
            recv_from_peer: Wrapping(0),
            fwd_cnt: Wrapping(0),
            fwd_cnt_told: Wrapping(0),
            tx_buf: VecDeque::new(),
            prefix: Vec::new(),
        }
    }

    /// A host-initiated connection whose REQUEST is to be sent; `prefix` holds bytes the
    /// host sent after its `CONNECT` line.
    pub fn host_initiated(
        stream: UnixStream,
        token: u32,
        local_port: u32,
        peer_port: u32,
        prefix: Vec<u8>,
        now: Instant,
    ) -> Conn {
        let mut c = Conn::new(stream, token, local_port, peer_port, State::LocalInit);
        c.pending.request = true;
        c.prefix = prefix;
        c.deadline = Some(now + REQUEST_TIMEOUT);
        c
    }

    /// A guest-initiated connection, its host stream connected; RESPONSE to be sent.
    pub fn guest_initiated(stream: UnixStream, token: u32, hdr: &PacketHeader) -> Conn {
        let mut c = Conn::new(stream, token, hdr.dst_port, hdr.src_port, State::PeerInit);
        c.pending.response = true;
        c.peer_buf_alloc = hdr.buf_alloc;
        c.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
        c
    }

    /// Bytes the guest can still receive.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.sent_to_peer - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// True if it has a packet for the guest.
    pub fn has_pending(&self) -> bool {
        let p = self.pending;
        p.request || p.response || p.shutdown || p.credit_update || p.credit_request || p.rw
    }

    fn can_read_host(&self) -> bool {
        self.state == State::Established && !self.host_eof && !self.peer_shut_rcv
    }

    /// How the stream should be watched: input always, output while bytes wait for it.
    pub fn interest(&self) -> Interest {
        if self.tx_buf.is_empty() {
            Interest::EDGE_READ
        } else {
            Interest::EDGE_BOTH
        }
    }

    /// Reads again if the host may have data and the guest may take it.
    fn want_read(&mut self) {
        if (self.host_data || self.host_hup || !self.prefix.is_empty())
            && self.can_read_host()
            && self.peer_credit() > 0
        {
            self.pending.rw = true;
        }
    }

    /// Records the credit information every guest packet carries.
    fn absorb_credit(&mut self, hdr: &PacketHeader) {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
        if self.peer_credit() > 0 {
            self.credit_requested = false;
            self.want_read();
        }
    }

    /// Handles a packet from the guest.
    pub fn from_guest(&mut self, hdr: &PacketHeader, data: &[u8]) -> Verdict {
        self.absorb_credit(hdr);
        match (self.state, hdr.op) {
            (_, op::RST) => Verdict::Remove,
            (State::LocalInit, op::RESPONSE) => {
                self.state = State::Established;
                self.deadline = None;
                let line = format!("OK {}\n", self.local_port);
                match self.stream.write(line.as_bytes()) {
                    Ok(n) if n == line.len() => {}
                    _ => return Verdict::Reset,
                }
                self.want_read();
                Verdict::Keep
            }
            (State::LocalInit, _) | (State::PeerInit, _) => Verdict::Reset,
            (State::Established, op::RW) => self.data_from_guest(data),
            (State::Closing, op::RW) => Verdict::Keep,
            (_, op::CREDIT_UPDATE) => Verdict::Keep,
            (_, op::CREDIT_REQUEST) => {
                self.pending.credit_update = true;
                Verdict::Keep
            }
            (_, op::SHUTDOWN) => {
                self.peer_shut_rcv |= hdr.flags & SHUTDOWN_RCV != 0;
                self.peer_shut_send |= hdr.flags & SHUTDOWN_SEND != 0;
                if self.peer_shut_rcv && self.peer_shut_send {
                    // Both directions closed: flush what we can and reset (Firecracker does
                    // the same; the guest expects our RST).
                    let _ = self.flush_to_host();
                    return Verdict::Reset;
                }
                if self.peer_shut_send && self.tx_buf.is_empty() {
                    let _ = self.stream.shutdown(Shutdown::Write);
                }
                Verdict::Keep
            }
            _ => Verdict::Reset,
        }
    }

    fn data_from_guest(&mut self, data: &[u8]) -> Verdict {
        if data.is_empty() {
            return Verdict::Keep;
        }
        if self.peer_shut_send {
            return Verdict::Reset;
        }
        if self.tx_buf.len() + data.len() > CONN_BUF as usize {
            tracing::debug!(
                port = self.peer_port,
                "vsock guest sent beyond its credit; resetting the connection"
            );
            return Verdict::Reset;
        }
        self.recv_from_peer += Wrapping(data.len() as u32);
        let mut rest = data;
        if self.tx_buf.is_empty() {
            loop {
                match self.stream.write(rest) {
                    Ok(0) => return Verdict::Reset,
                    Ok(n) => {
                        self.fwd_cnt += Wrapping(n as u32);
                        rest = &rest[n..];
                        if rest.is_empty() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return Verdict::Reset,
                }
            }
        }
        self.tx_buf.extend(rest);
        self.maybe_credit_update();
        Verdict::Keep
    }

    fn maybe_credit_update(&mut self) {
        let believed_free = CONN_BUF.saturating_sub((self.recv_from_peer - self.fwd_cnt_told).0);
        if believed_free < CREDIT_THRESHOLD && self.fwd_cnt != self.fwd_cnt_told {
            self.pending.credit_update = true;
        }
    }

    /// Writes buffered guest bytes to the host stream.
    fn flush_to_host(&mut self) -> io::Result<()> {
        while !self.tx_buf.is_empty() {
            let (a, _) = self.tx_buf.as_slices();
            match self.stream.write(a) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.tx_buf.drain(..n);
                    self.fwd_cnt += Wrapping(n as u32);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.tx_buf.is_empty() {
            self.tx_buf.shrink_to(4096);
            if self.peer_shut_send {
                let _ = self.stream.shutdown(Shutdown::Write);
            }
        }
        self.maybe_credit_update();
        Ok(())
    }

    /// Handles an edge on the host stream.
    pub fn host_ready(&mut self, r: Readiness) -> Verdict {
        if r.writable && self.flush_to_host().is_err() {
            return Verdict::Reset;
        }
        if r.readable {
            self.host_data = true;
            self.want_read();
        }
        if r.hangup || r.error {
            self.host_hup = true;
            if self.can_read_host() {
                // Read what is left, then find EOF.
                self.want_read();
            } else if self.state != State::Closing {
                return match self.state {
                    State::LocalInit | State::PeerInit => Verdict::Reset,
                    _ => {
                        self.pending.shutdown = true;
                        Verdict::Keep
                    }
                };
            }
        }
        Verdict::Keep
    }

    /// The deadline passed.
    pub fn expired(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| now >= d)
    }

    fn header(&self, guest_cid: u64, op: u16, len: u32, flags: u32) -> PacketHeader {
        PacketHeader {
            src_cid: super::packet::HOST_CID,
            dst_cid: guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len,
            type_: super::packet::TYPE_STREAM,
            op,
            flags,
            buf_alloc: CONN_BUF,
            fwd_cnt: self.fwd_cnt.0,
        }
    }

    /// The next packet for the guest, its payload (if any) in `buf[..hdr.len]`; `buf.len()`
    /// bounds the payload. `None` if nothing is ready after all (e.g. the host stream had no
    /// data). A returned `Reset` verdict means: send RST instead and drop the connection.
    pub fn next_packet(
        &mut self,
        guest_cid: u64,
        buf: &mut [u8],
        now: Instant,
    ) -> Result<Option<PacketHeader>, Verdict> {
        let hdr = if self.pending.request {
            self.pending.request = false;
            Some(self.header(guest_cid, op::REQUEST, 0, 0))
        } else if self.pending.response {
            self.pending.response = false;
            self.state = State::Established;
            Some(self.header(guest_cid, op::RESPONSE, 0, 0))
        } else if self.pending.shutdown {
            self.pending.shutdown = false;
            self.pending.rw = false;
            self.state = State::Closing;
            self.deadline = Some(now + SHUTDOWN_TIMEOUT);
            Some(self.header(guest_cid, op::SHUTDOWN, 0, SHUTDOWN_RCV | SHUTDOWN_SEND))
        } else if self.pending.rw {
            self.read_host(guest_cid, buf)?
        } else {
            None
        };
        let hdr = match hdr {
            Some(h) => Some(h),
            None if self.pending.credit_update => {
                self.pending.credit_update = false;
                Some(self.header(guest_cid, op::CREDIT_UPDATE, 0, 0))
            }
            None if self.pending.credit_request => {
                self.pending.credit_request = false;
                Some(self.header(guest_cid, op::CREDIT_REQUEST, 0, 0))
            }
            None => None,
        };
        if let Some(h) = &hdr {
            // Every packet carries our fwd_cnt: the guest's view is current again.
            self.fwd_cnt_told = Wrapping(h.fwd_cnt);
            if h.op != op::CREDIT_UPDATE {
                self.pending.credit_update = false;
            }
        }
        Ok(hdr)
    }

    fn read_host(
        &mut self,
        guest_cid: u64,
        buf: &mut [u8],
    ) -> Result<Option<PacketHeader>, Verdict> {
        if !self.can_read_host() {
            self.pending.rw = false;
            return Ok(None);
        }
        let credit = self.peer_credit() as usize;
        let want = buf.len().min(credit);
        if want == 0 {
            // Resumed by the next credit update (`absorb_credit`).
            self.pending.rw = false;
            if !self.credit_requested {
                self.credit_requested = true;
                self.pending.credit_request = true;
            }
            return Ok(None);
        }
        let n = if !self.prefix.is_empty() {
            let n = self.prefix.len().min(want);
            buf[..n].copy_from_slice(&self.prefix[..n]);
            self.prefix.drain(..n);
            n
        } else {
            loop {
                match self.stream.read(&mut buf[..want]) {
                    Ok(0) => {
                        self.host_eof = true;
                        self.pending.rw = false;
                        self.pending.shutdown = true;
                        return Ok(None);
                    }
                    Ok(n) => {
                        if n < want && !self.host_hup {
                            // Drained: the next readable edge says when there is more.
                            self.host_data = false;
                            self.pending.rw = false;
                        }
                        break n;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.host_data = false;
                        self.pending.rw = false;
                        return Ok(None);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return Err(Verdict::Reset),
                }
            }
        };
        self.sent_to_peer += Wrapping(n as u32);
        Ok(Some(self.header(guest_cid, op::RW, n as u32, 0)))
    }
}
