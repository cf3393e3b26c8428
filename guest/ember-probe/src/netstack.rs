//! The probe's IP stack (ring 3): [`smoltcp`] on the virtio-net driver ([`net`]), its
//! address, its services, and the state of the one outbound command in flight
//! ([`netcmd`](crate::netcmd)).
//!
//! - Address: `ember.ip=A.B.C.D/PREFIX` and `ember.gw=A.B.C.D` on the kernel command line,
//!   else 172.16.0.2/30 via 172.16.0.1 (the fixed guest address every sandbox's template uses:
//!   a restored clone keeps it, and its MAC, with nothing to reconfigure).
//! - Services: ARP and ICMP echo (smoltcp's own), TCP echo on port 7 ([`ECHO_CONNS`]
//!   connections at once, each echoing until the peer closes), UDP echo on port 7, TCP
//!   discard on port 9 (reads and drops: host -> guest throughput) and a TCP source on port
//!   19 (sends bytes until the peer closes: guest -> host throughput). A closed service
//!   socket listens again on the next run.
//! - Cost: nothing without a net device — [`setup`] (called by the vsock driver right after
//!   its own set-up, before it serves any request) looks for one once, reading no MMIO
//!   register of the vsock device it skips, and every later run is one compare. All socket
//!   buffers are statics in `.bss`, touched only once a device exists. A run polls at most
//!   [`MAX_ROUNDS`] times, then lets vsock have its turn and asks to run again.
//! - Time and wake-ups: [`netclock`](crate::netclock) (TSC, clamped steps; the LAPIC timer or
//!   the tick for deadlines). Everything lives in guest memory, so a snapshot carries the
//!   whole stack (connections, timers, the same IP and MAC) and a restored clone answers as
//!   it was. The ARP cache is flushed after a snapshot (the vsock transport reset tells): a
//!   clone's host-side TAP has another MAC.

use core::ptr::addr_of_mut;

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet, SocketStorage};
use smoltcp::socket::{tcp, udp};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, Ipv4Address};

use crate::net::NetDev;
use crate::netclock::Clock;
use crate::netcmd::{self, Op};

/// The echo port (TCP and UDP).
const ECHO_PORT: u16 = 7;
/// The discard port (TCP).
const DISCARD_PORT: u16 = 9;
/// The character-generator port (TCP).
const CHARGEN_PORT: u16 = 19;
/// TCP echo connections served at once.
pub const ECHO_CONNS: usize = 4;
const ECHO_BUF: usize = 8192;
const BULK_BUF: usize = 65535;
const SMALL_BUF: usize = 1024;
const UDP_BUF: usize = 8192;
const UDP_META: usize = 8;
/// Sockets: the echo connections, discard, chargen, the outbound TCP, UDP echo, outbound UDP.
const SOCKETS: usize = ECHO_CONNS + 5;
/// Runs of the poll loop per agent run at most (vsock gets its turn between batches).
const MAX_ROUNDS: usize = 64;

static mut SOCKET_STORAGE: [SocketStorage<'static>; SOCKETS] = [SocketStorage::EMPTY; SOCKETS];
static mut ECHO_RX: [[u8; ECHO_BUF]; ECHO_CONNS] = [[0; ECHO_BUF]; ECHO_CONNS];
static mut ECHO_TX: [[u8; ECHO_BUF]; ECHO_CONNS] = [[0; ECHO_BUF]; ECHO_CONNS];
static mut DISCARD_RX: [u8; BULK_BUF] = [0; BULK_BUF];
static mut CHARGEN_TX: [u8; BULK_BUF] = [0; BULK_BUF];
static mut SMALL: [[u8; SMALL_BUF]; 4] = [[0; SMALL_BUF]; 4];
static mut UDP_PAYLOAD: [[u8; UDP_BUF]; 4] = [[0; UDP_BUF]; 4];
static mut UDP_METADATA: [[udp::PacketMetadata; UDP_META]; 4] =
    [[udp::PacketMetadata::EMPTY; UDP_META]; 4];

/// The stack's state.
// One static instance and no heap to box the stack into.
#[allow(clippy::large_enum_variant)]
enum NetState {
    /// Not looked for yet (the agent's first run does).
    Uninit,
    /// No net device: nothing to do, ever.
    Absent,
    Ready(Stack),
}

static mut NET: NetState = NetState::Uninit;

/// Set by the vsock driver on a transport reset (a snapshot was taken: this may be a clone
/// restored behind another host TAP, whose MAC differs): the next run forgets the ARP cache.
static mut SNAPSHOT_TAKEN: bool = false;

/// Notes a snapshot (see [`SNAPSHOT_TAKEN`]).
pub fn snapshot_taken() {
    // SAFETY: a flag only the single-threaded agent reads and writes.
    unsafe { *addr_of_mut!(SNAPSHOT_TAKEN) = true };
}

/// Socket handles.
pub struct Handles {
    pub echo: [SocketHandle; ECHO_CONNS],
    pub discard: SocketHandle,
    pub chargen: SocketHandle,
    pub echo_udp: SocketHandle,
    pub out_tcp: SocketHandle,
    pub out_udp: SocketHandle,
}

/// The stack with its device, sockets and clock.
pub struct Stack {
    pub dev: NetDev,
    pub iface: Interface,
    pub sockets: SocketSet<'static>,
    pub clock: Clock,
    pub handles: Handles,
    pub ip: [u8; 4],
    pub prefix: u8,
    pub gw: [u8; 4],
    /// The outbound command in flight.
    pub op: Op,
    /// The next byte of the chargen pattern.
    chargen_at: u8,
}

/// Parses `A.B.C.D`.
pub fn parse_ipv4(s: &[u8]) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    let mut parts = s.split(|&b| b == b'.');
    for o in out.iter_mut() {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 3 || !p.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let v = p.iter().fold(0u32, |v, &c| v * 10 + u32::from(c - b'0'));
        *o = u8::try_from(v).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// The value of `key` (e.g. `b"ember.ip="`) on the command line.
fn cmdline_value<'a>(cmdline: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    cmdline
        .split(|&b| b == b' ')
        .find_map(|w| w.strip_prefix(key))
}

/// The address, prefix and gateway from the command line (defaults in the module doc).
fn addresses(cmdline: &[u8]) -> ([u8; 4], u8, [u8; 4]) {
    let (mut ip, mut prefix, mut gw) = ([172, 16, 0, 2], 30, [172, 16, 0, 1]);
    if let Some(v) = cmdline_value(cmdline, b"ember.ip=") {
        let (addr, len) = match v.iter().position(|&b| b == b'/') {
            Some(i) => (&v[..i], crate::vsock::parse_num(&v[i + 1..])),
            None => (v, Some(32)),
        };
        if let (Some(a), Some(l)) = (parse_ipv4(addr), len.filter(|&l| (1..=32).contains(&l))) {
            ip = a;
            prefix = l as u8;
        }
    }
    if let Some(g) = cmdline_value(cmdline, b"ember.gw=").and_then(parse_ipv4) {
        gw = g;
    }
    (ip, prefix, gw)
}

fn tcp_socket(rx: &'static mut [u8], tx: &'static mut [u8]) -> tcp::Socket<'static> {
    let mut s = tcp::Socket::new(tcp::SocketBuffer::new(rx), tcp::SocketBuffer::new(tx));
    // ACKs are coalesced per batch of frames anyway (one per socket per poll); a delayed ACK
    // would only cost a timer interrupt.
    s.set_ack_delay(None);
    s
}

/// An echo socket: replies leave at once (no Nagle: a small echo must not wait for an ACK).
fn echo_socket(rx: &'static mut [u8], tx: &'static mut [u8]) -> tcp::Socket<'static> {
    let mut s = tcp_socket(rx, tx);
    s.set_nagle_enabled(false);
    s
}

fn udp_socket(i: usize) -> udp::Socket<'static> {
    // SAFETY: called once per index `i` (0..4 in pairs, see `Stack::new`), at set-up: each
    // static buffer is handed out exactly once, for the life of the guest.
    unsafe {
        let meta = &mut *addr_of_mut!(UDP_METADATA);
        let payload = &mut *addr_of_mut!(UDP_PAYLOAD);
        let (m0, m1) = meta.split_at_mut(i + 1);
        let (p0, p1) = payload.split_at_mut(i + 1);
        udp::Socket::new(
            udp::PacketBuffer::new(&mut m0[i][..], &mut p0[i][..]),
            udp::PacketBuffer::new(&mut m1[0][..], &mut p1[0][..]),
        )
    }
}

impl Stack {
    fn new(mut dev: NetDev, cmdline: &[u8]) -> Stack {
        let mut clock = Clock::new();
        let (ip, prefix, gw) = addresses(cmdline);
        let mut mac = dev.mac();
        if mac[0] & 1 != 0 {
            mac = [0x06, 0, 0xac, 0x10, 0, 0x02]; // a multicast MAC is no interface's
        }
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
        config.random_seed = crate::agent::boot_id() ^ clock.now_us();
        let now = Instant::from_micros(clock.now_us() as i64);
        let mut iface = Interface::new(config, &mut dev, now);
        let [a, b, c, d] = ip;
        iface.update_ip_addrs(|addrs| {
            // The list is empty and holds at least one address: cannot fail.
            let _ = addrs.push(IpCidr::new(IpAddress::v4(a, b, c, d), prefix));
        });
        let [a, b, c, d] = gw;
        // An empty route table has room for the default route: cannot fail.
        let _ = iface
            .routes_mut()
            .add_default_ipv4_route(Ipv4Address::new(a, b, c, d));
        // SAFETY: `Stack::new` runs once (NET goes from Uninit to Ready); each static buffer
        // is borrowed here once, for the life of the guest, by the one socket that owns it.
        let mut sockets = unsafe { SocketSet::new(&mut (&mut *addr_of_mut!(SOCKET_STORAGE))[..]) };
        // SAFETY: as above.
        let (echo_rx, echo_tx, discard_rx, chargen_tx, small) = unsafe {
            (
                &mut *addr_of_mut!(ECHO_RX),
                &mut *addr_of_mut!(ECHO_TX),
                &mut *addr_of_mut!(DISCARD_RX),
                &mut *addr_of_mut!(CHARGEN_TX),
                &mut *addr_of_mut!(SMALL),
            )
        };
        let mut echo_iter = echo_rx.iter_mut().zip(echo_tx.iter_mut());
        let echo = core::array::from_fn(|_| {
            let (rx, tx) = echo_iter
                .next()
                .map_or((&mut [][..], &mut [][..]), |(r, t)| {
                    (&mut r[..], &mut t[..])
                });
            sockets.add(echo_socket(rx, tx))
        });
        let [s0, s1, s2, s3] = small;
        let discard = sockets.add(tcp_socket(&mut discard_rx[..], &mut s0[..]));
        let chargen = sockets.add(tcp_socket(&mut s1[..], &mut chargen_tx[..]));
        let out_tcp = sockets.add(tcp_socket(&mut s2[..], &mut s3[..]));
        let echo_udp = sockets.add(udp_socket(0));
        let out_udp = sockets.add(udp_socket(2));
        let mut stack = Stack {
            dev,
            iface,
            sockets,
            clock,
            handles: Handles {
                echo,
                discard,
                chargen,
                echo_udp,
                out_tcp,
                out_udp,
            },
            ip,
            prefix,
            gw,
            op: Op::Idle,
            chargen_at: 0,
        };
        stack.listen_all();
        stack
    }

    /// Puts every closed service socket back to listening.
    fn listen_all(&mut self) {
        let h = &self.handles;
        for (handle, port) in h
            .echo
            .iter()
            .map(|&e| (e, ECHO_PORT))
            .chain([(h.discard, DISCARD_PORT), (h.chargen, CHARGEN_PORT)])
        {
            let s = self.sockets.get_mut::<tcp::Socket>(handle);
            if !s.is_open() {
                // Only fails for port 0 or an open socket: neither here.
                let _ = s.listen(port);
            }
        }
        let u = self.sockets.get_mut::<udp::Socket>(h.echo_udp);
        if !u.is_open() {
            let _ = u.bind(ECHO_PORT);
        }
    }

    /// Moves data for the services; true if anything moved or changed.
    fn serve(&mut self) -> bool {
        let mut progress = false;
        let mut tmp = [0u8; 2048];
        for &h in &self.handles.echo {
            let s = self.sockets.get_mut::<tcp::Socket>(h);
            while s.can_recv() && s.can_send() {
                let room = s.send_capacity() - s.send_queue();
                let take = room.min(tmp.len());
                let n = s.recv_slice(&mut tmp[..take]).unwrap_or(0);
                if n == 0 {
                    break;
                }
                // Fits: at most the free room was taken.
                let _ = s.send_slice(&tmp[..n]);
                progress = true;
            }
            if s.state() == tcp::State::CloseWait && s.recv_queue() == 0 && s.send_queue() == 0 {
                s.close();
                progress = true;
            }
        }
        let s = self.sockets.get_mut::<tcp::Socket>(self.handles.discard);
        while let Ok(n) = s.recv(|b| (b.len(), b.len())) {
            if n == 0 {
                break;
            }
            progress = true;
        }
        if s.state() == tcp::State::CloseWait {
            s.close();
            progress = true;
        }
        let s = self.sockets.get_mut::<tcp::Socket>(self.handles.chargen);
        while let Ok(n) = s.recv(|b| (b.len(), b.len())) {
            if n == 0 {
                break;
            }
        }
        match s.state() {
            // The peer closed (or half-closed): stop the stream at once.
            tcp::State::CloseWait => {
                s.abort();
                progress = true;
            }
            tcp::State::Established if s.can_send() => {
                let mut at = self.chargen_at;
                let sent = s
                    .send(|b| {
                        for x in b.iter_mut() {
                            *x = b' ' + at % 95;
                            at = at.wrapping_add(1) % 95;
                        }
                        (b.len(), b.len())
                    })
                    .unwrap_or(0);
                self.chargen_at = at;
                progress |= sent > 0;
            }
            _ => {}
        }
        let u = self.sockets.get_mut::<udp::Socket>(self.handles.echo_udp);
        while u.can_recv() && u.can_send() {
            let Ok((n, meta)) = u.recv_slice(&mut tmp) else {
                break;
            };
            let _ = u.send_slice(&tmp[..n], meta.endpoint);
            progress = true;
        }
        progress
    }

    /// Polls the interface and the services until nothing moves (or [`MAX_ROUNDS`]); returns
    /// the outbound command's outcome if it ended.
    fn run(&mut self) -> Option<netcmd::Outcome> {
        let mut outcome = None;
        // SAFETY: as in `snapshot_taken`.
        if unsafe { core::mem::take(&mut *addr_of_mut!(SNAPSHOT_TAKEN)) } {
            // Changing no address still flushes the neighbour cache: the next frame to the
            // gateway asks ARP for its (possibly new) MAC.
            self.iface.update_ip_addrs(|_| {});
        }
        let mut cut_short = true;
        for _ in 0..MAX_ROUNDS {
            let now = Instant::from_micros(self.clock.now_us() as i64);
            let changed = self.iface.poll(now, &mut self.dev, &mut self.sockets)
                == smoltcp::iface::PollResult::SocketStateChanged;
            self.listen_all();
            let mut moved = self.serve();
            if outcome.is_none() {
                outcome = netcmd::step(self, &mut moved);
            }
            let more_tx = self.dev.flush(false);
            if !changed && !moved && !more_tx {
                cut_short = false;
                break;
            }
        }
        self.dev.flush(true);
        if cut_short {
            // Still busy (a long transfer): let vsock have its turn, then come back at once
            // (no interrupt may be on its way for frames already in the used ring).
            crate::ring3::request_rerun();
        }
        let now_us = self.clock.now_us();
        let now = Instant::from_micros(now_us as i64);
        let stack_deadline = self
            .iface
            .poll_delay(now, &self.sockets)
            .map(|d| now_us + d.total_micros());
        let deadline = match (stack_deadline, self.op.deadline_us()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.clock.wake_at(deadline);
        outcome
    }
}

/// The stack, if the VM has a net device (set up on the first call).
///
/// # Safety
/// Ring-3 agent only, one call at a time (the agent is single-threaded and not reentrant),
/// and the returned reference is not held across another call.
unsafe fn stack(cmdline: &[u8], skip: usize) -> Option<&'static mut Stack> {
    // SAFETY: see the function's contract: no other reference to NET is live.
    let net = unsafe { &mut *addr_of_mut!(NET) };
    if let NetState::Uninit = net {
        *net = match NetDev::probe(cmdline, skip) {
            Some(dev) => NetState::Ready(Stack::new(dev, cmdline)),
            None => NetState::Absent,
        };
    }
    match net {
        NetState::Ready(s) => Some(s),
        _ => None,
    }
}

/// The stack if it is set up (never sets it up: the agent's run does, see [`run`]).
///
/// # Safety
/// As [`stack`].
pub unsafe fn ready() -> Option<&'static mut Stack> {
    // SAFETY: see the function's contract.
    match unsafe { &mut *addr_of_mut!(NET) } {
        NetState::Ready(s) => Some(s),
        _ => None,
    }
}

/// Looks for the net device and sets the stack up (once; later calls do nothing). `skip`:
/// the vsock device's MMIO base.
pub fn setup(cmdline: &[u8], skip: usize) {
    // SAFETY: called by the agent with no reference to the stack live.
    unsafe { stack(cmdline, skip) };
}

/// Runs the stack once (sets it up if [`setup`] did not); returns the outcome of the outbound
/// command if it ended during this run. `skip`: the vsock device's MMIO base.
pub fn run(cmdline: &[u8], skip: usize) -> Option<netcmd::Outcome> {
    // SAFETY: called from the agent's entry only, never while another reference is live.
    unsafe { stack(cmdline, skip) }?.run()
}
