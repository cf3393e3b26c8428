//! The agent's network built-ins (ring 3): `net-connect`, `net-udp` and `net-info`.
//!
//! - `net-connect IP PORT [TIMEOUT_MS]`: a TCP connection from the guest that sends
//!   `ember-probe\n` and waits for one byte back (or for the peer to close after accepting).
//!   Exit 0 with stdout `connected IP:PORT\n` (also when the peer resets after the handshake);
//!   else exit 1 with stderr `refused\n` (a RST to the SYN), `timed out\n` (no answer by the
//!   deadline though the next hop answered ARP) or `unreachable\n` (the next hop never
//!   answered ARP; or no route).
//! - `net-udp IP PORT [TIMEOUT_MS]`: sends the datagram `ember-probe\n` and waits for one
//!   back: exit 0 with the reply on stdout, else exit 1 with stderr `timed out\n`.
//! - `net-info`: stdout `ip=A.B.C.D/PREFIX gw=A.B.C.D mac=xx:xx:xx:xx:xx:xx\n`.
//!
//! The default timeout is 2000 ms (at most 60000). Only one outbound command runs at a time
//! (another gets exit 1, `busy\n`); without a net device they exit 1 with `no network
//! device\n`.
//!
//! Waiting does not block the agent: the Exec is answered later. [`exec`] starts the command
//! and the connection's reply waits ([`crate::conn`]: the request stays pending, the
//! connection serves nothing else meanwhile, other connections are served as usual); the
//! stack's run ([`step`], on every agent run: a frame, a vsock packet, the deadline's timer)
//! finishes it and the agent sends the ExecResult then. See [`crate::netclock`] for how the
//! vCPU sleeps until then.

use core::ptr::addr_of_mut;

use smoltcp::socket::{tcp, udp};
use smoltcp::wire::{IpAddress, IpEndpoint};

use ember_agent_proto::{ExecResult, Reply, Session};

use crate::netstack::{Stack, parse_ipv4};

/// The payload an outbound command sends.
const HELLO: &[u8] = b"ember-probe\n";
const DEFAULT_TIMEOUT_MS: u64 = 2000;
const MAX_TIMEOUT_MS: u64 = 60_000;
/// Bytes of an outcome's output.
const OUTPUT_LEN: usize = 1600;
/// First local port of outbound commands (the IANA dynamic range).
const EPHEMERAL_BASE: u16 = 49152;

static mut OUTPUT: [u8; OUTPUT_LEN] = [0; OUTPUT_LEN];

/// The outbound command in flight.
pub enum Op {
    Idle,
    Connect {
        ip: [u8; 4],
        port: u16,
        deadline_us: u64,
        sent: bool,
    },
    Udp {
        deadline_us: u64,
    },
}

impl Op {
    /// When the command gives up.
    pub fn deadline_us(&self) -> Option<u64> {
        match *self {
            Op::Idle => None,
            Op::Connect { deadline_us, .. } | Op::Udp { deadline_us } => Some(deadline_us),
        }
    }
}

/// How a command ended: its exit code and output (on stdout if `stdout`, else stderr).
pub struct Outcome {
    pub exit_code: i32,
    pub stdout: bool,
    pub output: &'static [u8],
}

/// What [`exec`] made of a command line.
pub enum Started {
    /// Not a network built-in.
    NotNet,
    /// Finished at once.
    Done(Outcome),
    /// Bad arguments (INVALID_ARGUMENT).
    Usage(&'static str),
    /// Running: [`step`] ends it.
    Pending,
}

/// The reply to pending Exec (or ExecIn) request `id` now that its command ended; its length
/// in `out`.
pub fn reply(
    session: &Session<'_>,
    id: u64,
    exec_in: bool,
    outcome: &Outcome,
    out: &mut [u8],
) -> usize {
    let (output, none) = (outcome.output, &[][..]);
    let result = ExecResult {
        exit_code: outcome.exit_code,
        stdout_truncated: false,
        stderr_truncated: false,
        stdout: if outcome.stdout { output } else { none },
        stderr: if outcome.stdout { none } else { output },
    };
    let reply = if exec_in {
        Reply::ExecIn(result)
    } else {
        Reply::Exec(result)
    };
    session.reply_or_error(id, &reply, out).unwrap_or(0)
}

fn output(parts: &[&[u8]], exit_code: i32, stdout: bool) -> Outcome {
    // SAFETY: the output buffer is only written here, by the single-threaded agent, and read
    // through the returned slice before the next outcome is made (the agent turns it into a
    // reply at once).
    let buf = unsafe { &mut *addr_of_mut!(OUTPUT) };
    let mut n = 0;
    for p in parts {
        let take = p.len().min(OUTPUT_LEN - n);
        buf[n..n + take].copy_from_slice(&p[..take]);
        n += take;
    }
    Outcome {
        exit_code,
        stdout,
        output: &buf[..n],
    }
}

fn fail(message: &[u8]) -> Outcome {
    output(&[message, b"\n"], 1, false)
}

fn dec(v: u64, out: &mut [u8; 20]) -> &[u8] {
    let mut i = out.len();
    let mut v = v;
    loop {
        i -= 1;
        out[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    &out[i..]
}

/// Writes `a.b.c.d` into `out`; returns its length.
fn fmt_ip(ip: [u8; 4], out: &mut [u8; 15]) -> usize {
    let mut n = 0;
    for (i, o) in ip.iter().enumerate() {
        if i > 0 {
            out[n] = b'.';
            n += 1;
        }
        let mut d = [0u8; 20];
        let s = dec(u64::from(*o), &mut d);
        out[n..n + s.len()].copy_from_slice(s);
        n += s.len();
    }
    n
}

fn parse_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(s.iter().fold(0, |v, &c| v * 10 + u64::from(c - b'0')))
}

/// Parses `IP PORT [TIMEOUT_MS]`.
fn target<'a>(mut args: impl Iterator<Item = &'a [u8]>) -> Option<([u8; 4], u16, u64)> {
    let ip = parse_ipv4(args.next()?)?;
    let port = u16::try_from(parse_u64(args.next()?)?)
        .ok()
        .filter(|&p| p != 0)?;
    let timeout = match args.next() {
        Some(t) => parse_u64(t)?.min(MAX_TIMEOUT_MS),
        None => DEFAULT_TIMEOUT_MS,
    };
    args.next().is_none().then_some((ip, port, timeout))
}

fn next_port(stack: &mut Stack) -> u16 {
    let r = (stack.clock.now_us() ^ crate::agent::boot_id()) as u16;
    EPHEMERAL_BASE + r % (u16::MAX - EPHEMERAL_BASE)
}

/// Runs or starts network built-in `cmd` with `args`.
pub fn exec<'a>(cmd: &[u8], args: impl Iterator<Item = &'a [u8]>) -> Started {
    let usage = match cmd {
        b"net-connect" => "usage: net-connect IP PORT [TIMEOUT_MS]",
        b"net-udp" => "usage: net-udp IP PORT [TIMEOUT_MS]",
        b"net-info" => "usage: net-info",
        _ => return Started::NotNet,
    };
    let mut args = args.peekable();
    // SAFETY: called by the agent while it handles a request, when no other reference to the
    // stack is live.
    let Some(stack) = (unsafe { crate::netstack::ready() }) else {
        return Started::Done(fail(b"no network device"));
    };
    if cmd == b"net-info" {
        if args.peek().is_some() {
            return Started::Usage(usage);
        }
        return Started::Done(info(stack));
    }
    let Some((ip, port, timeout_ms)) = target(args) else {
        return Started::Usage(usage);
    };
    if !matches!(stack.op, Op::Idle) {
        return Started::Done(fail(b"busy"));
    }
    let deadline_us = stack.clock.now_us() + timeout_ms * 1000;
    let [a, b, c, d] = ip;
    let remote = IpEndpoint::new(IpAddress::v4(a, b, c, d), port);
    let local = next_port(stack);
    if cmd == b"net-connect" {
        let s = stack.sockets.get_mut::<tcp::Socket>(stack.handles.out_tcp);
        s.abort();
        if s.connect(stack.iface.context(), remote, local).is_err() {
            return Started::Done(fail(b"unreachable"));
        }
        stack.op = Op::Connect {
            ip,
            port,
            deadline_us,
            sent: false,
        };
    } else {
        let s = stack.sockets.get_mut::<udp::Socket>(stack.handles.out_udp);
        s.close();
        while s.recv().is_ok() {}
        if s.bind(local).is_err() || s.send_slice(HELLO, remote).is_err() {
            return Started::Done(fail(b"unreachable"));
        }
        stack.op = Op::Udp { deadline_us };
    }
    Started::Pending
}

fn info(stack: &mut Stack) -> Outcome {
    let mut ip = [0u8; 15];
    let mut gw = [0u8; 15];
    let (ip_len, gw_len) = (fmt_ip(stack.ip, &mut ip), fmt_ip(stack.gw, &mut gw));
    let mut prefix = [0u8; 20];
    let prefix = dec(u64::from(stack.prefix), &mut prefix);
    let mut mac = [0u8; 17];
    for (i, b) in stack.dev.mac().iter().enumerate() {
        let hex = |x: u8| if x < 10 { b'0' + x } else { b'a' + x - 10 };
        mac[3 * i] = hex(b >> 4);
        mac[3 * i + 1] = hex(b & 0xf);
        if i < 5 {
            mac[3 * i + 2] = b':';
        }
    }
    output(
        &[
            b"ip=",
            &ip[..ip_len],
            b"/",
            prefix,
            b" gw=",
            &gw[..gw_len],
            b" mac=",
            &mac,
            b"\n",
        ],
        0,
        true,
    )
}

/// Whether `ip` is on the interface's subnet.
fn on_link(stack: &Stack, ip: [u8; 4]) -> bool {
    let mask = u32::MAX
        .checked_shl(32 - u32::from(stack.prefix))
        .unwrap_or(0);
    u32::from_be_bytes(ip) & mask == u32::from_be_bytes(stack.ip) & mask
}

/// Advances the outbound command; its outcome once it ended. Sets `progress` when it gave
/// the stack something to send.
pub fn step(stack: &mut Stack, progress: &mut bool) -> Option<Outcome> {
    let now = stack.clock.now_us();
    match stack.op {
        Op::Idle => None,
        Op::Connect {
            ip,
            port,
            deadline_us,
            sent,
        } => {
            let s = stack.sockets.get_mut::<tcp::Socket>(stack.handles.out_tcp);
            let outcome = match s.state() {
                tcp::State::Established if !sent => {
                    let _ = s.send_slice(HELLO);
                    *progress = true;
                    stack.op = Op::Connect {
                        ip,
                        port,
                        deadline_us,
                        sent: true,
                    };
                    None
                }
                tcp::State::Established if s.recv_queue() == 0 => None,
                // Closed after the handshake: the peer accepted, then reset (as Linux does
                // when it closes a socket with our bytes unread) — it answered.
                tcp::State::Closed if !sent => Some(fail(b"refused")),
                tcp::State::Established
                | tcp::State::Closed
                | tcp::State::CloseWait
                | tcp::State::LastAck
                | tcp::State::Closing
                | tcp::State::TimeWait => {
                    let mut ipb = [0u8; 15];
                    let n = fmt_ip(ip, &mut ipb);
                    let mut p = [0u8; 20];
                    let p = dec(u64::from(port), &mut p);
                    Some(output(&[b"connected ", &ipb[..n], b":", p, b"\n"], 0, true))
                }
                _ if now >= deadline_us => {
                    let hop = if on_link(stack, ip) { ip } else { stack.gw };
                    Some(fail(if stack.dev.heard(hop) {
                        b"timed out"
                    } else {
                        b"unreachable"
                    }))
                }
                _ => None,
            };
            if outcome.is_some() {
                // Done with it: a RST frees both ends at once (no TIME-WAIT to sit out).
                stack
                    .sockets
                    .get_mut::<tcp::Socket>(stack.handles.out_tcp)
                    .abort();
                stack.op = Op::Idle;
                *progress = true;
            }
            outcome
        }
        Op::Udp { deadline_us } => {
            let s = stack.sockets.get_mut::<udp::Socket>(stack.handles.out_udp);
            let mut tmp = [0u8; OUTPUT_LEN];
            let outcome = match s.recv_slice(&mut tmp) {
                Ok((n, _)) => Some(output(&[&tmp[..n]], 0, true)),
                Err(_) if now >= deadline_us => Some(fail(b"timed out")),
                Err(_) => None,
            };
            if outcome.is_some() {
                s.close();
                stack.op = Op::Idle;
            }
            outcome
        }
    }
}
