//! One agent connection of the probe (ring 3): its frame reassembly and protocol session
//! (`ember-agent-proto`), its reply buffer, and the vsock credit accounting on both sides
//! (`buf_alloc` = its receive storage, `fwd_cnt` = request bytes the agent consumed; replies
//! wait for the host's credit). Requests are served one at a time per connection: the next
//! frame is handled once the previous reply has left. An Exec of a network built-in that
//! waits on the network ([`crate::netcmd`]) leaves its connection `pending` until
//! [`Driver::finish_pending`] writes its reply.

use ember_agent_proto::{AgentIdentity, FrameBuffer, Session, Step};

use crate::agent;
use crate::layout::{BUF_LEN, CONN_OUT, CONN_OUT_LEN, CONN_RX, CONN_RX_LEN, MAX_CONNS};
use crate::vsock::{
    AGENT_PORT, Driver, HDR, Hdr, OP_CREDIT_UPDATE, OP_RESPONSE, OP_RST, OP_RW, OP_SHUTDOWN,
    SHUTDOWN_BOTH,
};

const IDENTITY: AgentIdentity<'static> = AgentIdentity {
    name: "ember-probe",
    software_version: env!("CARGO_PKG_VERSION"),
    max_frame_len: CONN_RX_LEN as u32,
};

/// One accepted agent connection.
pub struct Conn {
    pub(crate) peer_port: u32,
    pub(crate) frames: FrameBuffer<'static>,
    pub(crate) session: Session<'static>,
    pub(crate) out: &'static mut [u8],
    pub(crate) out_len: usize,
    pub(crate) out_sent: usize,
    pub(crate) fwd_cnt: u32,
    pub(crate) peer_buf_alloc: u32,
    pub(crate) peer_fwd_cnt: u32,
    pub(crate) tx_cnt: u32,
    pub(crate) send_response: bool,
    pub(crate) send_credit: bool,
    pub(crate) close_after_flush: bool,
    /// A request whose reply waits on the network: its id and whether it is an ExecIn.
    pub(crate) pending: Option<(u64, bool)>,
}

impl Conn {
    pub(crate) fn peer_credit(&self) -> u32 {
        self.peer_buf_alloc
            .saturating_sub(self.tx_cnt.wrapping_sub(self.peer_fwd_cnt))
    }
}

impl Driver {
    pub(crate) fn accept(&mut self, h: &Hdr) {
        let Some(i) = self.conns.iter().position(|c| c.is_none()) else {
            return self.send_rst(h.dst_port, h.src_port);
        };
        // SAFETY: slot `i`'s receive and reply areas (layout.rs) are used by this connection
        // only, and the previous user of the slot (if any) was dropped above.
        let (rx, out) = unsafe {
            (
                core::slice::from_raw_parts_mut(
                    (CONN_RX + i * CONN_RX_LEN) as *mut u8,
                    CONN_RX_LEN,
                ),
                core::slice::from_raw_parts_mut(
                    (CONN_OUT + i * CONN_OUT_LEN) as *mut u8,
                    CONN_OUT_LEN,
                ),
            )
        };
        self.conns[i] = Some(Conn {
            peer_port: h.src_port,
            frames: FrameBuffer::new(rx),
            session: Session::new(IDENTITY),
            out,
            out_len: 0,
            out_sent: 0,
            fwd_cnt: 0,
            peer_buf_alloc: h.buf_alloc,
            peer_fwd_cnt: h.fwd_cnt,
            tx_cnt: 0,
            send_response: true,
            send_credit: false,
            close_after_flush: false,
            pending: None,
        });
    }

    /// Handles every whole request frame of connection `i` while its reply buffer is free.
    pub(crate) fn serve(&mut self, i: usize) {
        loop {
            let Some(c) = self.conns[i].as_mut() else {
                return;
            };
            if c.out_len != 0 || c.close_after_flush || c.pending.is_some() {
                return;
            }
            let Conn {
                frames,
                session,
                out,
                ..
            } = c;
            let frame = match frames.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => return,
                Err(_) => {
                    // Unreadable length prefix: close without a reply.
                    let peer = c.peer_port;
                    self.conns[i] = None;
                    return self.send_rst(AGENT_PORT, peer);
                }
            };
            let frame_len = frame.len() as u32;
            let (len, close) = match session.handle(frame, out) {
                Step::Reply { len } => (len, false),
                Step::Close { reply_len, .. } => (reply_len, true),
                Step::Request {
                    request_id,
                    request,
                } => match agent::handle(session, request_id, request, out) {
                    agent::Handled::Reply(len) => (len, false),
                    agent::Handled::Pending { exec_in } => {
                        c.pending = Some((request_id, exec_in));
                        (0, false)
                    }
                },
            };
            c.fwd_cnt = c.fwd_cnt.wrapping_add(frame_len);
            c.out_len = len;
            c.out_sent = 0;
            c.close_after_flush = close;
            if close && len == 0 {
                // Nothing to say (unreadable header): close now.
                let peer = c.peer_port;
                return self.close(i, peer);
            }
        }
    }

    /// Writes the reply of the connection whose request waited on the network (if it is
    /// still there: a transport reset or the host closing drops it, and the outcome with it).
    pub(crate) fn finish_pending(&mut self, outcome: &crate::netcmd::Outcome) {
        for c in self.conns.iter_mut().flatten() {
            if let Some((id, exec_in)) = c.pending.take() {
                c.out_len = crate::netcmd::reply(&c.session, id, exec_in, outcome, c.out);
                c.out_sent = 0;
                return;
            }
        }
    }

    /// Drops connection `i` and tells the host side (SHUTDOWN both ways; the VMM answers
    /// with RST after flushing what it holds).
    pub(crate) fn close(&mut self, i: usize, peer: u32) {
        self.conns[i] = None;
        let mut shut = self.header(AGENT_PORT, peer, OP_SHUTDOWN, 0);
        shut.flags = SHUTDOWN_BOTH;
        if !self.send(&shut, &[]) {
            self.send_rst(AGENT_PORT, peer);
        }
    }

    /// Sends what connections have pending; true if anything was sent.
    pub(crate) fn flush_all(&mut self) -> bool {
        let mut sent = false;
        while self.rst_len > 0 && self.tx_free != 0 {
            self.rst_len -= 1;
            let (l, p) = self.rst_queue[self.rst_len];
            let h = self.header(l, p, OP_RST, 0);
            sent |= self.send(&h, &[]);
        }
        for i in 0..MAX_CONNS {
            if self.conns[i].is_some() {
                sent |= self.flush(i);
            }
        }
        sent
    }

    fn flush(&mut self, i: usize) -> bool {
        let mut sent = false;
        loop {
            let Some(c) = self.conns[i].as_ref() else {
                return sent;
            };
            let mut h = self.header(AGENT_PORT, c.peer_port, OP_RW, 0);
            h.fwd_cnt = c.fwd_cnt;
            let (op, chunk) = if c.send_response {
                (OP_RESPONSE, 0)
            } else if c.out_sent < c.out_len {
                let room = (BUF_LEN - HDR).min(c.peer_credit() as usize);
                if room == 0 {
                    break;
                }
                (OP_RW, (c.out_len - c.out_sent).min(room))
            } else if c.send_credit {
                (OP_CREDIT_UPDATE, 0)
            } else {
                break;
            };
            h.op = op;
            h.len = chunk as u32;
            let (start, end) = (c.out_sent, c.out_sent + chunk);
            let mut data = [0u8; BUF_LEN - HDR];
            data[..chunk].copy_from_slice(&c.out[start..end]);
            if !self.send(&h, &data[..chunk]) {
                return sent;
            }
            sent = true;
            let Some(c) = self.conns[i].as_mut() else {
                return sent;
            };
            c.send_credit = false;
            match op {
                OP_RESPONSE => c.send_response = false,
                OP_RW => {
                    c.out_sent = end;
                    c.tx_cnt = c.tx_cnt.wrapping_add(chunk as u32);
                }
                _ => {}
            }
            if c.out_sent == c.out_len && c.out_len != 0 {
                c.out_len = 0;
                c.out_sent = 0;
                if c.close_after_flush {
                    let peer = c.peer_port;
                    self.close(i, peer);
                    return sent;
                }
                // The reply buffer is free: more requests may be waiting.
                self.serve(i);
            }
        }
        sent
    }
}
