//! The probe's virtio-vsock driver and stream sockets (ring 3).
//!
//! - Discovery: the `virtio_mmio.device=<size>@<addr>:<irq>` entries ember-vmm (and
//!   Firecracker) put on the kernel command line; the first with device ID 19 is used. Its
//!   IOAPIC pin is routed to [`crate::ring3::VIRTIO_VECTOR`] (edge, to the boot CPU).
//! - Set-up: virtio 1.x feature negotiation (`VIRTIO_F_VERSION_1` only), three split queues
//!   (RX and TX with one 2 KiB buffer per descriptor, event with 8-byte buffers), all RX and
//!   event buffers posted before `DRIVER_OK`.
//! - Sockets: a listener on [`AGENT_PORT`] accepting up to `MAX_CONNS` connections, each with
//!   the spec's credit accounting (`buf_alloc` = its receive storage, `fwd_cnt` = bytes the
//!   agent consumed; replies wait for the host's credit). Once at boot, a connection to host
//!   port [`ANNOUNCE_PORT`] carries `ember-probe: ready boot_id=<hex>\n` (the host side sees it
//!   on `<uds_path>_53` if something listens there; otherwise the VMM answers RST).
//! - Transport reset (event 0, sent when a snapshot is taken): every connection is dropped,
//!   the listener stays, and the event buffer is re-posted with a notification (the VMM holds
//!   RX back until then).
//!
//! Interrupt status is neither read nor acknowledged (two MMIO exits saved per wake-up): the
//! agent polls all three used rings whenever it runs.

use core::ptr::{read_volatile, write_volatile};

use crate::agent;
use crate::conn::Conn;
use crate::layout::{
    BUF_LEN, CONN_RX_LEN, EV_COUNT, EV_RING, EVENT_BUFS, MAX_CONNS, RX_BUFS, RX_COUNT, RX_RING,
    TX_BUFS, TX_COUNT, TX_RING,
};
use crate::virtq::{DESC_F_WRITE, Virtq};

/// The agent's vsock port.
pub const AGENT_PORT: u32 = 52;
/// Host port the probe announces itself to once at boot.
pub const ANNOUNCE_PORT: u32 = 53;
const ANNOUNCE_LOCAL_PORT: u32 = 49152;

pub(crate) const HOST_CID: u64 = 2;
pub(crate) const HDR: usize = 44;
pub(crate) const TYPE_STREAM: u16 = 1;
pub(crate) const OP_REQUEST: u16 = 1;
pub(crate) const OP_RESPONSE: u16 = 2;
pub(crate) const OP_RST: u16 = 3;
pub(crate) const OP_SHUTDOWN: u16 = 4;
pub(crate) const OP_RW: u16 = 5;
pub(crate) const OP_CREDIT_UPDATE: u16 = 6;
pub(crate) const OP_CREDIT_REQUEST: u16 = 7;
pub(crate) const SHUTDOWN_BOTH: u32 = 3;

const RXQ: u32 = 0;
const TXQ: u32 = 1;
const EVQ: u32 = 2;

/// A packet header (`struct virtio_vsock_hdr`, the fields the probe uses).
#[derive(Clone, Copy)]
pub(crate) struct Hdr {
    pub(crate) src_cid: u64,
    pub(crate) dst_cid: u64,
    pub(crate) src_port: u32,
    pub(crate) dst_port: u32,
    pub(crate) len: u32,
    pub(crate) type_: u16,
    pub(crate) op: u16,
    pub(crate) flags: u32,
    pub(crate) buf_alloc: u32,
    pub(crate) fwd_cnt: u32,
}

impl Hdr {
    fn read(b: &[u8]) -> Hdr {
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| u64::from(u32_at(i)) | (u64::from(u32_at(i + 4)) << 32);
        Hdr {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16::from_le_bytes([b[28], b[29]]),
            op: u16::from_le_bytes([b[30], b[31]]),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    fn write(&self, b: &mut [u8]) {
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Announce {
    Idle,
    Requested,
    Done,
}

/// The driver and its sockets.
pub struct Driver {
    state: DriverState,
    pub(crate) mmio: usize,
    pub(crate) cid: u64,
    pub(crate) rx: Virtq,
    pub(crate) tx: Virtq,
    pub(crate) ev: Virtq,
    pub(crate) tx_free: u32,
    pub(crate) conns: [Option<Conn>; MAX_CONNS],
    pub(crate) rst_queue: [(u32, u32); 8],
    pub(crate) rst_len: usize,
    announce: Announce,
    pub(crate) kick_tx: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum DriverState {
    Uninit,
    Ready,
    Absent,
}

/// The one driver instance (only the ring-3 agent touches it).
pub static mut DRIVER: Driver = Driver {
    state: DriverState::Uninit,
    mmio: 0,
    cid: 0,
    rx: Virtq::new(RX_RING, RX_COUNT),
    tx: Virtq::new(TX_RING, TX_COUNT),
    ev: Virtq::new(EV_RING, EV_COUNT),
    tx_free: 0,
    conns: [const { None }; MAX_CONNS],
    rst_queue: [(0, 0); 8],
    rst_len: 0,
    announce: Announce::Idle,
    kick_tx: false,
};

/// Gives the virtio-mmio device at `base` its queues, in order (queue 0, 1, ...): selects each,
/// checks the device offers at least its size, writes the size and the three ring addresses and
/// marks it ready. False if the device offers a queue too small. Shared by the vsock and net
/// drivers.
pub(crate) fn activate_queues(base: usize, queues: &[&Virtq]) -> bool {
    let reg = |off: usize| base + off;
    for (i, q) in queues.iter().enumerate() {
        mmio_write(reg(0x30), i as u32);
        if mmio_read(reg(0x34)) < u32::from(q.size()) {
            return false;
        }
        let (d, a, u) = q.addresses();
        mmio_write(reg(0x38), u32::from(q.size()));
        mmio_write(reg(0x80), d as u32);
        mmio_write(reg(0x84), (d >> 32) as u32);
        mmio_write(reg(0x90), a as u32);
        mmio_write(reg(0x94), (a >> 32) as u32);
        mmio_write(reg(0xa0), u as u32);
        mmio_write(reg(0xa4), (u >> 32) as u32);
        mmio_write(reg(0x44), 1);
    }
    true
}

pub(crate) fn mmio_read(addr: usize) -> u32 {
    // SAFETY: a virtio-mmio or IOAPIC register in the user-accessible MMIO window.
    unsafe { read_volatile(addr as *const u32) }
}

pub(crate) fn mmio_write(addr: usize, v: u32) {
    // SAFETY: as in `mmio_read`.
    unsafe { write_volatile(addr as *mut u32, v) }
}

pub(crate) fn buf(base: usize, i: u16) -> &'static mut [u8] {
    // SAFETY: buffer `i` of a queue's buffer area (layout.rs); the device only touches a
    // buffer while it is on the available ring, and the agent only between `pop_used` and
    // the next `push`.
    unsafe {
        core::slice::from_raw_parts_mut((base + usize::from(i) * BUF_LEN) as *mut u8, BUF_LEN)
    }
}

/// Parses `<size>@<addr>:<irq>` (size with an optional K/M suffix, addr hex or decimal).
fn parse_device(arg: &[u8]) -> Option<(usize, u32)> {
    let at = arg.iter().position(|&b| b == b'@')?;
    let rest = &arg[at + 1..];
    let colon = rest.iter().position(|&b| b == b':')?;
    let addr = parse_num(&rest[..colon])?;
    let irq_part = &rest[colon + 1..];
    let irq_end = irq_part
        .iter()
        .position(|&b| b == b':')
        .unwrap_or(irq_part.len());
    let irq = parse_num(&irq_part[..irq_end])?;
    Some((addr as usize, irq as u32))
}

pub(crate) fn parse_num(s: &[u8]) -> Option<u64> {
    let (digits, radix) = match s {
        [b'0', b'x' | b'X', rest @ ..] => (rest, 16),
        _ => (s, 10),
    };
    if digits.is_empty() {
        return None;
    }
    let mut v: u64 = 0;
    for &c in digits {
        let d = (c as char).to_digit(radix)?;
        v = v.checked_mul(u64::from(radix))?.checked_add(u64::from(d))?;
    }
    Some(v)
}

/// Finds the first virtio-mmio device with device ID `id` among the command line's
/// `virtio_mmio.device=` entries, skipping the one at `skip` (a device already claimed: each
/// MMIO read is a VM exit, so a driver looking for its device does not re-read the others).
pub(crate) fn find_device(cmdline: &[u8], id: u32, skip: usize) -> Option<(usize, u32)> {
    const KEY: &[u8] = b"virtio_mmio.device=";
    for word in cmdline.split(|&b| b == b' ') {
        let Some(arg) = word.strip_prefix(KEY) else {
            continue;
        };
        let Some((base, irq)) = parse_device(arg) else {
            continue;
        };
        if !(0xc000_0000..0xfec0_0000).contains(&base) || base == skip {
            continue;
        }
        if mmio_read(base) == 0x7472_6976 && mmio_read(base + 4) == 2 && mmio_read(base + 8) == id {
            return Some((base, irq));
        }
    }
    None
}

/// Routes IOAPIC pin `irq` to [`crate::ring3::VIRTIO_VECTOR`]: fixed delivery to APIC 0,
/// edge, active high.
pub(crate) fn route_irq(irq: u32) {
    let ioapic = 0xfec0_0000usize;
    mmio_write(ioapic, 0x10 + 2 * irq);
    mmio_write(ioapic + 0x10, crate::ring3::VIRTIO_VECTOR as u32);
    mmio_write(ioapic, 0x10 + 2 * irq + 1);
    mmio_write(ioapic + 0x10, 0);
}

impl Driver {
    /// Runs the agent once: sets the device up on the first call, then handles everything
    /// the device has returned.
    pub fn run(&mut self, cmdline: &[u8]) {
        match self.state {
            DriverState::Uninit => {
                self.state = match self.init(cmdline) {
                    true => DriverState::Ready,
                    false => DriverState::Absent,
                };
                // The IP stack (if the VM has a net device) is set up before any request is
                // served: an Exec of a net built-in can come in this very first poll.
                let skip = if self.state == DriverState::Ready {
                    self.mmio
                } else {
                    0
                };
                crate::netstack::setup(cmdline, skip);
                if self.state == DriverState::Ready {
                    self.start_announce();
                    self.poll();
                }
            }
            DriverState::Ready => self.poll(),
            DriverState::Absent => {}
        }
    }

    fn init(&mut self, cmdline: &[u8]) -> bool {
        let Some((base, irq)) = find_device(cmdline, 19, 0) else {
            return false;
        };
        self.mmio = base;
        let reg = |off: usize| base + off;
        mmio_write(reg(0x70), 0);
        mmio_write(reg(0x70), 1);
        mmio_write(reg(0x70), 1 | 2);
        mmio_write(reg(0x24), 1);
        mmio_write(reg(0x20), 1); // VIRTIO_F_VERSION_1 (bit 32)
        mmio_write(reg(0x24), 0);
        mmio_write(reg(0x20), 0);
        mmio_write(reg(0x70), 1 | 2 | 8);
        if mmio_read(reg(0x70)) & 8 == 0 {
            return false;
        }
        if !activate_queues(base, &[&self.rx, &self.tx, &self.ev]) {
            return false;
        }
        for i in 0..RX_COUNT {
            self.rx.set_desc(
                i,
                (RX_BUFS + usize::from(i) * BUF_LEN) as u64,
                BUF_LEN as u32,
                DESC_F_WRITE,
            );
            self.rx.push(i);
        }
        for i in 0..TX_COUNT {
            self.tx
                .set_desc(i, (TX_BUFS + usize::from(i) * BUF_LEN) as u64, 0, 0);
        }
        // TX completions are collected whenever the agent runs anyway; an interrupt per
        // completion would wake the guest once more per request. Re-enabled only when every
        // TX buffer is in flight.
        self.tx.set_no_interrupt(true);
        self.tx_free = if TX_COUNT >= 32 {
            u32::MAX
        } else {
            (1 << TX_COUNT) - 1
        };
        for i in 0..EV_COUNT {
            self.ev
                .set_desc(i, (EVENT_BUFS + usize::from(i) * 8) as u64, 8, DESC_F_WRITE);
            self.ev.push(i);
        }
        self.cid = u64::from(mmio_read(reg(0x100))) | (u64::from(mmio_read(reg(0x104))) << 32);
        mmio_write(reg(0x70), 1 | 2 | 8 | 4);
        route_irq(irq);
        true
    }

    /// Notifies the device directly from ring 3 (~66 us here). Returning to ring 0 first and
    /// notifying from there (~11 us per exit) measured slower: the ring transition costs more.
    pub(crate) fn notify(&self, queue: u32) {
        mmio_write(self.mmio + 0x50, queue);
    }

    pub(crate) fn header(&self, src_port: u32, dst_port: u32, op: u16, len: u32) -> Hdr {
        Hdr {
            src_cid: self.cid,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            len,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: CONN_RX_LEN as u32,
            fwd_cnt: 0,
        }
    }

    /// Queues one packet on TX; false when no TX buffer is free.
    pub(crate) fn send(&mut self, hdr: &Hdr, data: &[u8]) -> bool {
        if self.tx_free == 0 {
            return false;
        }
        let i = self.tx_free.trailing_zeros() as u16;
        self.tx_free &= !(1 << i);
        let b = buf(TX_BUFS, i);
        hdr.write(&mut b[..HDR]);
        b[HDR..HDR + data.len()].copy_from_slice(data);
        self.tx.set_len(i, (HDR + data.len()) as u32);
        self.tx.push(i);
        self.kick_tx = true;
        true
    }

    pub(crate) fn send_rst(&mut self, local_port: u32, peer_port: u32) {
        let h = self.header(local_port, peer_port, OP_RST, 0);
        if !self.send(&h, &[]) && self.rst_len < self.rst_queue.len() {
            self.rst_queue[self.rst_len] = (local_port, peer_port);
            self.rst_len += 1;
        }
    }

    fn start_announce(&mut self) {
        let h = self.header(ANNOUNCE_LOCAL_PORT, ANNOUNCE_PORT, OP_REQUEST, 0);
        if self.send(&h, &[]) {
            self.announce = Announce::Requested;
        }
    }

    fn poll(&mut self) {
        loop {
            let mut progress = false;
            while let Some((id, _)) = self.ev.pop_used() {
                progress = true;
                // SAFETY: event buffer `id` (8 bytes) in our event area.
                let event = unsafe {
                    read_volatile((EVENT_BUFS + 8 * usize::from(id % EV_COUNT)) as *const u32)
                };
                if event == 0 {
                    // Transport reset: the VMM forgot every connection. It is also the
                    // sign of a snapshot: the network's neighbours may have changed.
                    crate::netstack::snapshot_taken();
                    for c in self.conns.iter_mut() {
                        *c = None;
                    }
                    self.rst_len = 0;
                    if self.announce == Announce::Requested {
                        self.announce = Announce::Done;
                    }
                }
                self.ev.push(id % EV_COUNT);
                self.notify(EVQ);
            }
            while let Some((id, _)) = self.tx.pop_used() {
                self.tx_free |= 1 << (id % TX_COUNT);
            }
            let mut reposted = false;
            while let Some((id, len)) = self.rx.pop_used() {
                progress = true;
                let id = id % RX_COUNT;
                let b = buf(RX_BUFS, id);
                let len = (len as usize).min(BUF_LEN);
                if len >= HDR {
                    self.packet(&b[..len]);
                }
                self.rx.push(id);
                reposted = true;
            }
            if self.flush_all() {
                progress = true;
            }
            if reposted && self.rx.device_wants_notify() {
                self.notify(RXQ);
            }
            if self.kick_tx {
                self.kick_tx = false;
                self.notify(TXQ);
            }
            // Out of TX buffers: ask for completion interrupts (and look once more, in case
            // the device finished before it could see the request).
            let starved = self.tx_free == 0;
            self.tx.set_no_interrupt(!starved);
            if starved && self.tx.has_used() {
                progress = true;
            }
            if !progress {
                break;
            }
        }
    }

    fn find(&self, local_port: u32, peer_port: u32) -> Option<usize> {
        if local_port != AGENT_PORT {
            return None;
        }
        self.conns
            .iter()
            .position(|c| c.as_ref().is_some_and(|c| c.peer_port == peer_port))
    }

    fn packet(&mut self, b: &[u8]) {
        let h = Hdr::read(b);
        if h.dst_cid != self.cid || h.src_cid != HOST_CID {
            return;
        }
        let data_len = (h.len as usize).min(b.len() - HDR);
        let data = &b[HDR..HDR + data_len];
        if h.type_ != TYPE_STREAM {
            if h.op != OP_RST {
                self.send_rst(h.dst_port, h.src_port);
            }
            return;
        }
        if h.dst_port == ANNOUNCE_LOCAL_PORT && h.src_port == ANNOUNCE_PORT {
            return self.announce_packet(&h);
        }
        let Some(i) = self.find(h.dst_port, h.src_port) else {
            match h.op {
                OP_REQUEST if h.dst_port == AGENT_PORT => self.accept(&h),
                OP_RST => {}
                _ => self.send_rst(h.dst_port, h.src_port),
            }
            return;
        };
        let Some(c) = self.conns[i].as_mut() else {
            return;
        };
        c.peer_buf_alloc = h.buf_alloc;
        c.peer_fwd_cnt = h.fwd_cnt;
        match h.op {
            OP_RW => {
                if c.frames.push(data) < data.len() {
                    // Beyond the credit we gave: reset.
                    self.conns[i] = None;
                    self.send_rst(AGENT_PORT, h.src_port);
                    return;
                }
                self.serve(i);
            }
            OP_CREDIT_UPDATE => {}
            OP_CREDIT_REQUEST => c.send_credit = true,
            OP_SHUTDOWN | OP_REQUEST => {
                self.conns[i] = None;
                self.send_rst(AGENT_PORT, h.src_port);
            }
            OP_RST => self.conns[i] = None,
            _ => {}
        }
    }

    fn announce_packet(&mut self, h: &Hdr) {
        if h.op == OP_RESPONSE && self.announce == Announce::Requested {
            let mut line = [0u8; 64];
            let mut n = 0;
            for &b in b"ember-probe: ready boot_id=" {
                line[n] = b;
                n += 1;
            }
            n += agent::hex_u64(agent::boot_id(), &mut line[n..]);
            line[n] = b'\n';
            n += 1;
            let rw = self.header(ANNOUNCE_LOCAL_PORT, ANNOUNCE_PORT, OP_RW, n as u32);
            let mut shut = self.header(ANNOUNCE_LOCAL_PORT, ANNOUNCE_PORT, OP_SHUTDOWN, 0);
            shut.flags = SHUTDOWN_BOTH;
            self.send(&rw, &line[..n]);
            self.send(&shut, &[]);
        }
        self.announce = Announce::Done;
    }
}
