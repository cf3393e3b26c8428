//! The probe's virtio-net driver (ring 3), as a [`smoltcp`] [`Device`].
//!
//! - Discovery: like the vsock device ([`vsock::find_device`]), the first
//!   `virtio_mmio.device=` entry with device ID 1, skipping the vsock device's (so a VM
//!   without a net device pays no MMIO read for it). Its IOAPIC pin goes to the same
//!   [`crate::ring3::VIRTIO_VECTOR`]: a frame wakes the agent exactly as a vsock packet does.
//! - Set-up: virtio 1.x with `VIRTIO_F_VERSION_1` and `VIRTIO_NET_F_MAC` only (no offloads, no
//!   mergeable buffers: the 12-byte `virtio_net_hdr` is all zero on TX and ignored on RX);
//!   the MAC comes from configuration space (a fixed locally administered one if the device
//!   offers none). Two split queues ([`virtq`]) with one 2 KiB buffer per descriptor
//!   (layout.rs); every RX buffer is posted before `DRIVER_OK`.
//! - TX completions are reaped whenever the driver runs; TX interrupts are asked for only while
//!   every TX buffer is in flight (as the vsock driver does). Queue notifications are rationed
//!   (see [`NetDev::flush`]): TX once per agent run, RX once per half ring of buffers.
//! - [`NetDev::heard`]: the IPv4 addresses recent frames came from (ARP senders and IPv4
//!   sources), so a connect that timed out can tell "nobody answered ARP" (unreachable) from
//!   "the host was there but never answered" (timed out).

use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::time::Instant;

use crate::layout::{
    BUF_LEN, NET_RX_BUFS, NET_RX_COUNT, NET_RX_RING, NET_TX_BUFS, NET_TX_COUNT, NET_TX_RING,
};
use crate::virtq::{DESC_F_WRITE, Virtq};
use crate::vsock::{self, mmio_read, mmio_write};

/// virtio-net device ID.
const DEVICE_ID: u32 = 1;
/// `VIRTIO_NET_F_MAC`.
const F_MAC: u32 = 1 << 5;
/// `virtio_net_hdr` with `VIRTIO_F_VERSION_1` (`num_buffers` included).
const NET_HDR: usize = 12;
/// Ethernet MTU plus header: what smoltcp may hand one TX buffer.
const MAX_FRAME: usize = 1514;
const RXQ: u32 = 0;
const TXQ: u32 = 1;
/// How many source addresses [`NetDev::heard`] remembers.
const HEARD: usize = 8;

const _: () = assert!(NET_HDR + MAX_FRAME <= BUF_LEN);

/// The RX half: the queue and how many buffers went back on it since the last kick.
pub struct RxHalf {
    q: Virtq,
    unkicked: u16,
}

/// The TX half: the queue, the free buffers (one bit each) and whether it needs a kick.
pub struct TxHalf {
    q: Virtq,
    free: u32,
    kick: bool,
}

/// The driver.
pub struct NetDev {
    mmio: usize,
    mac: [u8; 6],
    rx: RxHalf,
    tx: TxHalf,
    heard: [[u8; 4]; HEARD],
    heard_next: usize,
}

fn buf(base: usize, i: u16) -> &'static mut [u8] {
    vsock::buf(base, i)
}

impl TxHalf {
    fn reap(&mut self) {
        while let Some((id, _)) = self.q.pop_used() {
            self.free |= 1 << (id % NET_TX_COUNT);
        }
    }
}

impl NetDev {
    /// Finds and sets up the net device; `None` without one (or if it is unusable).
    pub fn probe(cmdline: &[u8], skip: usize) -> Option<NetDev> {
        let (base, irq) = vsock::find_device(cmdline, DEVICE_ID, skip)?;
        let reg = |off: usize| base + off;
        mmio_write(reg(0x70), 0);
        mmio_write(reg(0x70), 1);
        mmio_write(reg(0x70), 1 | 2);
        mmio_write(reg(0x14), 0);
        let offered = mmio_read(reg(0x10));
        mmio_write(reg(0x24), 1);
        mmio_write(reg(0x20), 1); // VIRTIO_F_VERSION_1 (bit 32)
        mmio_write(reg(0x24), 0);
        mmio_write(reg(0x20), offered & F_MAC);
        mmio_write(reg(0x70), 1 | 2 | 8);
        if mmio_read(reg(0x70)) & 8 == 0 {
            return None;
        }
        let mut dev = NetDev {
            mmio: base,
            // Locally administered, unicast: used when the device has no MAC to give.
            mac: [0x06, 0, 0xac, 0x10, 0, 0x02],
            rx: RxHalf {
                q: Virtq::new(NET_RX_RING, NET_RX_COUNT),
                unkicked: 0,
            },
            tx: TxHalf {
                q: Virtq::new(NET_TX_RING, NET_TX_COUNT),
                free: if NET_TX_COUNT >= 32 {
                    u32::MAX
                } else {
                    (1 << NET_TX_COUNT) - 1
                },
                kick: false,
            },
            heard: [[0; 4]; HEARD],
            heard_next: 0,
        };
        if offered & F_MAC != 0 {
            for (i, b) in dev.mac.iter_mut().enumerate() {
                // SAFETY: configuration space in the user-accessible MMIO window, read a byte at
                // a time as Linux's driver does.
                *b = unsafe { core::ptr::read_volatile(reg(0x100 + i) as *const u8) };
            }
        }
        if !vsock::activate_queues(base, &[&dev.rx.q, &dev.tx.q]) {
            return None;
        }
        for i in 0..NET_RX_COUNT {
            let addr = (NET_RX_BUFS + usize::from(i) * BUF_LEN) as u64;
            dev.rx.q.set_desc(i, addr, BUF_LEN as u32, DESC_F_WRITE);
            dev.rx.q.push(i);
        }
        for i in 0..NET_TX_COUNT {
            let addr = (NET_TX_BUFS + usize::from(i) * BUF_LEN) as u64;
            dev.tx.q.set_desc(i, addr, 0, 0);
        }
        dev.tx.q.set_no_interrupt(true);
        mmio_write(reg(0x70), 1 | 2 | 8 | 4);
        vsock::route_irq(irq);
        Some(dev)
    }

    /// The interface's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Whether a frame from `ip` arrived lately (an ARP reply or request, or any IPv4 packet).
    pub fn heard(&self, ip: [u8; 4]) -> bool {
        self.heard.contains(&ip)
    }

    fn note_source(&mut self, frame: &[u8]) {
        let src = match frame.get(12..14) {
            Some([0x08, 0x06]) => frame.get(28..32),
            Some([0x08, 0x00]) => frame.get(26..30),
            _ => None,
        };
        let Some(&[a, b, c, d]) = src else {
            return;
        };
        let ip = [a, b, c, d];
        if !self.heard(ip) {
            self.heard[self.heard_next] = ip;
            self.heard_next = (self.heard_next + 1) % HEARD;
        }
    }

    /// Kicks the queues that need it and asks for TX interrupts while TX is starved. Returns
    /// whether TX completions are already waiting (then the caller should poll again).
    ///
    /// A kick is an MMIO exit (~66 us from ring 3 on this project's KVM), so they are
    /// rationed: TX is kicked at the end of the agent's run (`end_of_run`) or when every TX
    /// buffer is in flight; RX only once half its buffers went back since the last kick. The
    /// device reads the available index whenever it takes a buffer, so unkicked buffers are
    /// used anyway; it waits for a kick only after it ran out of buffers — all of them used —
    /// and the run that takes those back re-posts at least half the ring and kicks.
    pub fn flush(&mut self, end_of_run: bool) -> bool {
        if self.rx.unkicked >= NET_RX_COUNT / 2 {
            if self.rx.q.device_wants_notify() {
                mmio_write(self.mmio + 0x50, RXQ);
            }
            self.rx.unkicked = 0;
        }
        let starved = self.tx.free == 0;
        if self.tx.kick && (end_of_run || starved) {
            self.tx.kick = false;
            if self.tx.q.device_wants_notify() {
                mmio_write(self.mmio + 0x50, TXQ);
            }
        }
        self.tx.q.set_no_interrupt(!starved);
        starved && self.tx.q.has_used()
    }
}

/// A received frame: RX buffer `id`, `len` bytes with the header.
pub struct NetRx<'a> {
    rx: &'a mut RxHalf,
    id: u16,
    len: usize,
}

/// Room for one frame to send.
pub struct NetTx<'a> {
    tx: &'a mut TxHalf,
}

impl RxToken for NetRx<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        let b = buf(NET_RX_BUFS, self.id);
        let r = f(&b[NET_HDR.min(self.len)..self.len]);
        self.rx.q.push(self.id);
        self.rx.unkicked += 1;
        r
    }
}

impl TxToken for NetTx<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let tx = self.tx;
        if tx.free == 0 || len > MAX_FRAME {
            // `transmit` checked for a free buffer and the MTU caps `len`: never here, but
            // the frame is built (and dropped) rather than the guest stopped.
            return drop_frame(len, f);
        }
        let i = tx.free.trailing_zeros() as u16;
        tx.free &= !(1 << i);
        let b = buf(NET_TX_BUFS, i);
        b[..NET_HDR].fill(0);
        let r = f(&mut b[NET_HDR..NET_HDR + len]);
        tx.q.set_len(i, (NET_HDR + len) as u32);
        tx.q.push(i);
        tx.kick = true;
        r
    }
}

#[cold]
fn drop_frame<R>(len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
    let mut scratch = [0u8; MAX_FRAME];
    f(&mut scratch[..len.min(MAX_FRAME)])
}

impl Device for NetDev {
    type RxToken<'a> = NetRx<'a>;
    type TxToken<'a> = NetTx<'a>;

    fn receive(&mut self, _: Instant) -> Option<(NetRx<'_>, NetTx<'_>)> {
        // A received frame may need an answer at once (ARP, ping): only take one when a TX
        // buffer is free; otherwise it waits in the used ring for the TX interrupt.
        self.tx.reap();
        if self.tx.free == 0 {
            return None;
        }
        let (id, len) = self.rx.q.pop_used()?;
        let id = id % NET_RX_COUNT;
        let len = (len as usize).min(BUF_LEN);
        self.note_source(&buf(NET_RX_BUFS, id)[NET_HDR.min(len)..len]);
        Some((
            NetRx {
                rx: &mut self.rx,
                id,
                len,
            },
            NetTx { tx: &mut self.tx },
        ))
    }

    fn transmit(&mut self, _: Instant) -> Option<NetTx<'_>> {
        self.tx.reap();
        if self.tx.free == 0 {
            return None;
        }
        Some(NetTx { tx: &mut self.tx })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = MAX_FRAME;
        caps.max_burst_size = Some(usize::from(NET_TX_COUNT));
        caps
    }
}
