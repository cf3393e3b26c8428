//! `virtio_block`, `virtio_net`, `virtio_vsock`, `virtio_rng`, `virtio_mmio`: a hostile driver
//! against one real device behind the real virtio-mmio transport, over guest memory the input
//! writes, with the device thread's turn ([`event_loop::dispatch`]) run in place after each
//! notification (no thread: deterministic, and a panic or a spin is the fuzzer's to see).
//!
//! Guest memory is two regions, `[0, 128 KiB)` and `[192 KiB, 256 KiB)` (a hole between).
//! Queue `i`'s rings sit at `i * 16 KiB` (descriptors, available ring at +4 KiB, used ring at
//! +8 KiB); buffers the harness places go to `[64 KiB, 128 KiB)`; the input may point anywhere.
//!
//! An input is a configuration byte, then operations, each an opcode byte and its operands
//! (missing bytes read as zero): raw descriptors, well-formed chains, available-ring entries
//! and indexes, raw memory writes (rings included), queue notifications, register reads and
//! writes, a driver reset, host-side traffic (a vsock peer's `CONNECT` and bytes; a datagram
//! towards the guest's TAP), and a snapshot of the device that is restored into a new device
//! which carries on. `virtio_mmio` starts from a transport state decoded from the input
//! instead of a driver's initialization (the restore path), with an rng or a block device.
//!
//! Invariants: no panic; a broken device shows `DEVICE_NEEDS_RESET`; once the guest stops,
//! the device thread goes idle within [`QUIESCE_TURNS`] turns; a saved transport state
//! decodes to itself, and a device saved while running restores.

use std::io::Write;
use std::net::UdpSocket;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::{Epoll, EpollEvent};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::devices::IrqLine;
use crate::devices::bus::BusDevice;
use crate::devices::virtio::block::{Block, BlockParams};
use crate::devices::virtio::device::VirtioDevice;
use crate::devices::virtio::event_loop::{self, Dispatched, LoopSlot};
use crate::devices::virtio::mmio::{MmioTransport, TransportState, VirtioCore, lock_core, status};
use crate::devices::virtio::net::{Net, NetParams};
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::vsock::Vsock;
use crate::devices::virtio::{EventRegistry, Interrupt};
use crate::rate_limiter::Clock;
use crate::snapshot::codec::{Reader, Writer};

/// The TAP `virtio_net` attaches to; the fuzz harness creates it (see the module docs of
/// `crate::fuzzing`) in a network namespace of its own, with [`NET_HOST_ADDR`] and a static
/// neighbour [`NET_GUEST_ADDR`] at [`NET_GUEST_MAC`], so datagrams sent there reach the TAP.
pub const NET_TAP: &str = "emberfz0";
/// The host side's address on [`NET_TAP`] (`/24`).
pub const NET_HOST_ADDR: &str = "10.77.0.1";
/// The guest's address, a static neighbour on [`NET_TAP`].
pub const NET_GUEST_ADDR: &str = "10.77.0.2";
/// The guest's MAC.
pub const NET_GUEST_MAC: &str = "06:00:0a:4d:00:02";

/// Turns of the device thread allowed after the guest's last action before the device must
/// be idle.
pub const QUIESCE_TURNS: usize = 512;

const REGIONS: [(u64, usize); 2] = [(0, 0x2_0000), (0x3_0000, 0x1_0000)];
const QUEUE_STRIDE: u64 = 0x4000;
const DATA: u64 = 0x1_0000;
const DATA_LEN: u64 = 0x1_0000;
const MAX_QUEUES: usize = 4;
const MAX_OPS: usize = 256;
/// Snapshot/restore cycles per input (each builds a new device; later ones only save).
const MAX_RESTORES: usize = 2;
const VSOCK_PORT: u32 = 1024;

/// Which device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// virtio-blk on a 64 KiB file.
    Block,
    /// virtio-net on [`NET_TAP`].
    Net,
    /// virtio-vsock on a Unix socket.
    Vsock,
    /// virtio-rng.
    Rng,
}

/// The block device's backing file (64 KiB, created once).
pub fn disk_path() -> &'static PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let p = super::scratch_dir().join("disk.img");
        let _ = std::fs::write(&p, vec![0x5au8; 64 << 10]);
        p
    })
}

fn vsock_path() -> PathBuf {
    super::scratch_dir().join("v.sock")
}

/// Host side of guest-initiated vsock connections (`<uds>_1024`), bound once.
fn vsock_peer() -> Option<&'static UnixListener> {
    static L: OnceLock<Option<UnixListener>> = OnceLock::new();
    L.get_or_init(|| {
        let p = super::scratch_dir().join(format!("v.sock_{VSOCK_PORT}"));
        let l = UnixListener::bind(p).ok()?;
        l.set_nonblocking(true).ok()?;
        Some(l)
    })
    .as_ref()
}

fn udp() -> Option<&'static UdpSocket> {
    static S: OnceLock<Option<UdpSocket>> = OnceLock::new();
    S.get_or_init(|| {
        let s = UdpSocket::bind("0.0.0.0:0").ok()?;
        s.set_nonblocking(true).ok()?;
        Some(s)
    })
    .as_ref()
}

/// Reads operands; missing bytes are zero.
struct Input<'a> {
    data: &'a [u8],
}

impl Input<'_> {
    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.data.len());
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        head
    }

    fn u8(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }

    fn u16(&mut self) -> u16 {
        u16::from(self.u8()) | u16::from(self.u8()) << 8
    }

    fn u32(&mut self) -> u32 {
        u32::from(self.u16()) | u32::from(self.u16()) << 16
    }

    fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | u64::from(self.u32()) << 32
    }
}

fn limiter(cfg: u8, input: &mut Input<'_>) -> Option<ember_fc_api::RateLimiter> {
    (cfg & 0x80 != 0).then(|| {
        let size = u64::from(input.u16()).max(1);
        let bucket = ember_fc_api::TokenBucket {
            size,
            one_time_burst: None,
            refill_time: 1 + u64::from(input.u8() & 0x0f),
        };
        if cfg & 0x40 != 0 {
            ember_fc_api::RateLimiter {
                bandwidth: Some(bucket),
                ops: None,
            }
        } else {
            ember_fc_api::RateLimiter {
                bandwidth: None,
                ops: Some(bucket),
            }
        }
    })
}

/// How to build (and rebuild from a snapshot) the device under test.
#[derive(Clone)]
enum Recipe {
    Block(BlockParams),
    Net(NetParams),
    Vsock(ember_fc_api::Vsock),
    Rng(Option<ember_fc_api::RateLimiter>),
}

impl Recipe {
    fn new(kind: Kind, cfg: u8, input: &mut Input<'_>) -> Recipe {
        match kind {
            Kind::Block => Recipe::Block(BlockParams {
                id: "rootfs".into(),
                path: disk_path().clone(),
                read_only: cfg & 0x10 != 0,
                cache_type: if cfg & 0x20 != 0 {
                    ember_fc_api::CacheType::Writeback
                } else {
                    ember_fc_api::CacheType::Unsafe
                },
                rate_limiter: limiter(cfg, input),
                clock: Clock::Monotonic,
            }),
            Kind::Net => Recipe::Net(NetParams {
                id: "eth0".into(),
                host_dev_name: NET_TAP.into(),
                guest_mac: (cfg & 0x10 == 0)
                    .then(|| crate::devices::virtio::net::parse_mac(NET_GUEST_MAC))
                    .flatten(),
                mtu: (cfg & 0x20 != 0).then_some(1280),
                rx_rate_limiter: limiter(cfg, input),
                tx_rate_limiter: limiter(cfg << 1, input),
                clock: Clock::Monotonic,
            }),
            Kind::Vsock => Recipe::Vsock(ember_fc_api::Vsock {
                guest_cid: 3,
                uds_path: vsock_path(),
                vsock_id: None,
            }),
            Kind::Rng => Recipe::Rng(limiter(cfg, input)),
        }
    }

    fn build(&self) -> Option<Box<dyn VirtioDevice>> {
        Some(match self {
            Recipe::Block(p) => Box::new(Block::new(p.clone()).ok()?),
            Recipe::Net(p) => Box::new(Net::new(p.clone()).ok()?),
            Recipe::Vsock(c) => Box::new(Vsock::new(c).ok()?),
            Recipe::Rng(l) => Box::new(Rng::new(l.as_ref(), Clock::Monotonic).ok()?),
        })
    }

    /// Rebuilds from saved device bytes; a device saved while running must restore.
    fn restore(&self, bytes: &[u8]) -> Box<dyn VirtioDevice> {
        let mut r = Reader::new(bytes);
        let d: Box<dyn VirtioDevice> = match self {
            Recipe::Block(p) => Box::new(Block::restore(p.clone(), &mut r).expect("block restore")),
            Recipe::Net(p) => Box::new(Net::restore(p.clone(), &mut r).expect("net restore")),
            Recipe::Vsock(c) => {
                r = Reader::new(&[]);
                Box::new(Vsock::restore(c, bytes).expect("vsock restore"))
            }
            Recipe::Rng(_) => {
                Box::new(Rng::restore(&mut r, Clock::Monotonic).expect("rng restore"))
            }
        };
        r.finish("device state")
            .expect("the device state is consumed whole");
        d
    }
}

/// One device, its transport and its device thread's epoll set.
struct Rig {
    mem: GuestMemoryMmap,
    epoll: Arc<Epoll>,
    slots: Vec<LoopSlot>,
    t: MmioTransport,
    core: Arc<Mutex<VirtioCore>>,
    _irq: EventFd,
    nq: usize,
    /// The driver's queue sizes, available indexes and next free descriptors.
    size: [u16; MAX_QUEUES],
    avail: [u16; MAX_QUEUES],
    next_desc: [u16; MAX_QUEUES],
    host: Vec<UnixStream>,
}

fn rig(device: Box<dyn VirtioDevice>, mem: &GuestMemoryMmap) -> Option<Rig> {
    let epoll = event_loop::new_epoll().ok()?;
    let irq = EventFd::new(EFD_NONBLOCK).ok()?;
    let interrupt = Arc::new(Interrupt::new(IrqLine::Eventfd(irq.try_clone().ok()?)));
    let nq = device.queue_max_sizes().len();
    let evts = (0..nq)
        .map(|_| EventFd::new(EFD_NONBLOCK))
        .collect::<Result<Vec<_>, _>>()
        .ok()?;
    let kick = EventFd::new(EFD_NONBLOCK).ok()?;
    let events = EventRegistry::new(epoll.clone(), 0);
    let core = Arc::new(Mutex::new(
        VirtioCore::new(device, mem.clone(), interrupt, events).ok()?,
    ));
    let t = MmioTransport::new(
        core.clone(),
        kick.try_clone().ok()?,
        evts.iter()
            .map(EventFd::try_clone)
            .collect::<Result<Vec<_>, _>>()
            .ok()?,
    );
    let slots = vec![LoopSlot {
        core: core.clone(),
        queue_evts: evts,
        kick,
    }];
    event_loop::register(&epoll, &slots).ok()?;
    Some(Rig {
        mem: mem.clone(),
        epoll,
        slots,
        t,
        core,
        _irq: irq,
        nq,
        size: [0; MAX_QUEUES],
        avail: [0; MAX_QUEUES],
        next_desc: [0; MAX_QUEUES],
        host: Vec::new(),
    })
}

impl Rig {
    fn r(&mut self, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        self.t.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    fn w(&mut self, offset: u64, v: u32) {
        self.t.write(offset, &v.to_le_bytes());
    }

    fn queue_base(q: usize) -> u64 {
        q as u64 * QUEUE_STRIDE
    }

    /// A driver's initialization: features (those offered, filtered by `mask`), queues of
    /// `size` (clamped to each maximum), `DRIVER_OK`.
    fn driver_init(&mut self, mask: u64, size: u16) {
        use status::*;
        self.w(0x70, 0);
        self.w(0x70, ACKNOWLEDGE);
        self.w(0x70, ACKNOWLEDGE | DRIVER);
        let mut offered = 0u64;
        for sel in 0..2u32 {
            self.w(0x14, sel);
            offered |= u64::from(self.r(0x10)) << (32 * sel);
        }
        let acked = offered & (mask | 1 << crate::devices::virtio::VIRTIO_F_VERSION_1);
        for sel in 0..2u32 {
            self.w(0x24, sel);
            self.w(0x20, (acked >> (32 * sel)) as u32);
        }
        self.w(0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        for q in 0..self.nq.min(MAX_QUEUES) {
            self.w(0x30, q as u32);
            let max = self.r(0x34) as u16;
            let size = size.min(max).max(1);
            self.w(0x38, u32::from(size));
            let base = Self::queue_base(q);
            for (reg, addr) in [(0x80, base), (0x90, base + 0x1000), (0xa0, base + 0x2000)] {
                self.w(reg, addr as u32);
                self.w(reg + 4, (addr >> 32) as u32);
            }
            self.w(0x44, 1);
            self.size[q] = size;
            self.avail[q] = 0;
            self.next_desc[q] = 0;
        }
        self.w(0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    }

    fn queue(&self, sel: u8) -> usize {
        usize::from(sel) % self.nq.clamp(1, MAX_QUEUES)
    }

    fn write_desc(&self, q: usize, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = Self::queue_base(q) + 16 * u64::from(index);
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        let _ = self.mem.write_slice(&d, GuestAddress(at));
    }

    fn publish(&mut self, q: usize, head: u16) {
        let size = self.size[q].max(1);
        let avail = Self::queue_base(q) + 0x1000;
        let slot = u64::from(self.avail[q] % size);
        let _ = self.mem.write_obj(head, GuestAddress(avail + 4 + 2 * slot));
        self.avail[q] = self.avail[q].wrapping_add(1);
        let _ = self.mem.write_obj(self.avail[q], GuestAddress(avail + 2));
    }

    /// One turn of the device thread without waiting; the number of events handled.
    fn turn(&mut self) -> usize {
        let mut events = [EpollEvent::default(); 32];
        match event_loop::dispatch(&self.epoll, &self.slots, 0, &mut events) {
            Ok(Dispatched::Events(n)) => n,
            Ok(Dispatched::Stop) | Err(_) => 0,
        }
    }

    fn pump(&mut self) {
        for _ in 0..8 {
            if self.turn() == 0 {
                break;
            }
        }
        let broken = lock_core(&self.core).health().is_broken();
        if broken {
            let s = self.r(0x70);
            assert!(
                s & status::DEVICE_NEEDS_RESET != 0,
                "a broken device's status {s:#x} lacks DEVICE_NEEDS_RESET"
            );
        }
    }

    /// The guest stopped: the device must go idle.
    fn quiesce(&mut self) {
        for _ in 0..QUIESCE_TURNS {
            if self.turn() == 0 {
                return;
            }
        }
        let core = lock_core(&self.core);
        panic!(
            "the device keeps its thread busy {QUIESCE_TURNS} turns after the guest stopped \
             ({:?}, {} events seen)",
            core, core.events_seen
        );
    }

    /// Saves the transport and the device as a snapshot does; checks the transport state's
    /// encoding.
    fn save(&mut self) -> (TransportState, Vec<u8>) {
        let mut core = lock_core(&self.core);
        if core.active && !core.health().is_broken() {
            core.with_device(|d, ctx| d.prepare_save(ctx));
        }
        let mut w = Writer::default();
        core.device.save_state(&mut w);
        let state = self.t.save(&core);
        drop(core);
        let mut w2 = Writer::default();
        state.encode(&mut w2);
        let bytes = w2.into_vec();
        let mut r = Reader::new(&bytes);
        let back = TransportState::decode(&mut r).expect("a saved transport state decodes");
        r.finish("transport state").expect("decoded whole");
        assert_eq!(back, state, "the transport state changed in a round trip");
        (state, w.into_vec())
    }

    fn host_action(&mut self, kind: Kind, input: &mut Input<'_>) {
        let op = input.u8();
        let n = usize::from(input.u8());
        let payload = input.bytes(n).to_vec();
        match kind {
            Kind::Vsock => {
                if op & 1 == 0 || self.host.is_empty() {
                    if self.host.len() < 4
                        && let Ok(mut s) = UnixStream::connect(vsock_path())
                    {
                        let _ = s.set_nonblocking(true);
                        let _ = writeln!(s, "CONNECT {}", u32::from(op >> 1) % 4 + 52);
                        let _ = s.write_all(&payload);
                        self.host.push(s);
                    }
                } else {
                    let i = usize::from(op >> 1) % self.host.len();
                    if op & 0x80 != 0 {
                        self.host.swap_remove(i);
                    } else {
                        let _ = self.host[i].write_all(&payload);
                    }
                }
            }
            Kind::Net => {
                if let Some(s) = udp() {
                    let _ = s.send_to(&payload, (NET_GUEST_ADDR, 9 + u16::from(op)));
                }
            }
            Kind::Block | Kind::Rng => {}
        }
    }
}

fn memory() -> Option<GuestMemoryMmap> {
    let ranges: Vec<(GuestAddress, usize)> =
        REGIONS.iter().map(|&(a, l)| (GuestAddress(a), l)).collect();
    GuestMemoryMmap::from_ranges(&ranges).ok()
}

/// Runs the program in `input` against `rig`; returns the rig (replaced after a snapshot
/// restore).
fn run_ops(mut rig: Rig, recipe: &Recipe, kind: Kind, input: &mut Input<'_>) -> Rig {
    let mut restores = 0;
    for _ in 0..MAX_OPS {
        if input.is_empty() {
            break;
        }
        match input.u8() % 13 {
            0 => {
                // A raw descriptor.
                let q = rig.queue(input.u8());
                let index = u16::from(input.u8()) % rig.size[q].max(1);
                let sel = input.u8();
                let addr = if sel < 0xf0 {
                    DATA + u64::from(input.u16()) % DATA_LEN
                } else {
                    input.u64()
                };
                let len = if sel & 1 == 0 {
                    u32::from(input.u16())
                } else {
                    input.u32()
                };
                let flags = u16::from(input.u8() & 7);
                let next = u16::from(input.u8());
                rig.write_desc(q, index, addr, len, flags, next);
            }
            1 => {
                let q = rig.queue(input.u8());
                let head = u16::from(input.u8());
                rig.publish(q, head);
            }
            2 => {
                // A well-formed chain of up to 4 buffers, published.
                let q = rig.queue(input.u8());
                let n = 1 + input.u8() % 4;
                let size = rig.size[q].max(1);
                let head = rig.next_desc[q] % size;
                for i in 0..n {
                    let index = rig.next_desc[q] % size;
                    let next = (index + 1) % size;
                    let addr = DATA + u64::from(input.u16()) % DATA_LEN;
                    let len = u32::from(input.u16() % 0x2000);
                    let mut flags = u16::from(input.u8() & 1) << 1;
                    if i + 1 < n {
                        flags |= 1;
                    }
                    rig.write_desc(q, index, addr, len, flags, next);
                    rig.next_desc[q] = next;
                }
                rig.publish(q, head);
            }
            3 => {
                let q = rig.queue(input.u8());
                rig.avail[q] = input.u16();
                let at = Rig::queue_base(q) + 0x1000 + 2;
                let _ = rig.mem.write_obj(rig.avail[q], GuestAddress(at));
            }
            4 => {
                // Raw guest memory (rings included).
                let addr = u64::from(input.u32()) % 0x2_0000;
                let n = usize::from(input.u8());
                let bytes = input.bytes(n).to_vec();
                let _ = rig.mem.write_slice(&bytes, GuestAddress(addr));
            }
            5 => {
                let q = u32::from(input.u8() % 8);
                rig.w(0x50, q);
                rig.pump();
            }
            6 => rig.pump(),
            7 => {
                let offset = u64::from(input.u8()) * 4 % 0x180;
                let v = input.u32();
                rig.w(offset, v);
                rig.pump();
            }
            8 => {
                let offset = u64::from(input.u8()) % 0x180;
                let width = [1usize, 2, 4, 8][usize::from(input.u8() % 4)];
                let mut b = [0u8; 8];
                rig.t.read(offset, &mut b[..width]);
            }
            9 => {
                let mask = u64::from(input.u32()) << 24;
                let size = 1u16 << (input.u8() % 9);
                rig.driver_init(mask, size);
                rig.pump();
            }
            10 => {
                rig.host_action(kind, input);
                rig.pump();
            }
            11 if restores >= MAX_RESTORES => {
                rig.quiesce();
                let _ = rig.save();
            }
            11 => {
                // Snapshot and restore into a new device, which carries on.
                restores += 1;
                rig.quiesce();
                let (state, device) = rig.save();
                let mem = rig.mem.clone();
                let (size, avail, next_desc) = (rig.size, rig.avail, rig.next_desc);
                drop(rig);
                let mut new = rig_or_panic(recipe.restore(&device), &mem);
                if let Err(e) = new.t.restore(&state) {
                    panic!("a device saved while running does not restore: {e}");
                }
                (new.size, new.avail, new.next_desc) = (size, avail, next_desc);
                rig = new;
                rig.pump();
            }
            _ => {
                // The guest acknowledges interrupts.
                let v = rig.r(0x60);
                rig.w(0x64, v);
            }
        }
    }
    rig
}

fn rig_or_panic(device: Box<dyn VirtioDevice>, mem: &GuestMemoryMmap) -> Rig {
    match rig(device, mem) {
        Some(r) => r,
        None => panic!("cannot build the rig (descriptors exhausted?)"),
    }
}

fn drain_vsock_peer() {
    if let Some(l) = vsock_peer() {
        while l.accept().is_ok() {}
    }
}

/// `virtio_block`, `virtio_net`, `virtio_vsock`, `virtio_rng`: a driver's initialization
/// (features and queue size from the configuration byte), then the program.
pub fn device(kind: Kind, data: &[u8]) {
    drop(device_rig(kind, data));
    if kind == Kind::Vsock {
        drain_vsock_peer();
    }
}

/// [`device`], returning the rig as the program left it (quiesced).
fn device_rig(kind: Kind, data: &[u8]) -> Option<Rig> {
    let mut input = Input { data };
    let cfg = input.u8();
    let recipe = Recipe::new(kind, cfg, &mut input);
    if kind == Kind::Vsock {
        let _ = vsock_peer();
    }
    let mem = memory()?;
    // Without its host resource (no TAP without root) the device cannot exist: nothing to do.
    let device = recipe.build()?;
    let mut rig = rig_or_panic(device, &mem);
    let mask = u64::from(input.u8()) << 24 | u64::from(input.u8()) << 32;
    let size = 1u16 << (cfg % 9);
    rig.driver_init(mask, size);
    rig.pump();
    let mut rig = run_ops(rig, &recipe, kind, &mut input);
    rig.quiesce();
    Some(rig)
}

/// `virtio_mmio`: a fresh transport (rng or block device) restored from a transport state in
/// the input, or driven from reset by raw register writes, then the program.
pub fn mmio(data: &[u8]) {
    let mut input = Input { data };
    let cfg = input.u8();
    let kind = if cfg & 1 == 0 { Kind::Rng } else { Kind::Block };
    let recipe = Recipe::new(kind, cfg & 0x7e, &mut input);
    let Some(mem) = memory() else { return };
    let Some(device) = recipe.build() else { return };
    let mut rig = rig_or_panic(device, &mem);
    if cfg & 2 != 0 {
        let n = usize::from(input.u16() % 1024);
        let bytes = input.bytes(n).to_vec();
        let mut r = Reader::new(&bytes);
        let Ok(state) = TransportState::decode(&mut r) else {
            return;
        };
        if rig.t.restore(&state).is_err() {
            return;
        }
        for (q, s) in state.queues.iter().enumerate().take(MAX_QUEUES) {
            rig.size[q] = s.size;
        }
        rig.pump();
    }
    let mut rig = run_ops(rig, &recipe, kind, &mut input);
    rig.quiesce();
}

/// Seeds: for each device kind, inputs that initialize it and pass a few chains through each
/// queue (notify, acknowledge), one that snapshots and restores it midway, and for
/// `virtio_mmio` a transport state saved from a running device.
pub fn seeds(kind: Option<Kind>) -> Vec<Vec<u8>> {
    // op 2 (chain): q, n-1, then per buffer addr u16, len u16, writable u8.
    let chain = |q: u8, bufs: &[(u16, u16, bool)]| {
        let mut v = vec![2, q, bufs.len() as u8 - 1];
        for &(a, l, w) in bufs {
            v.extend_from_slice(&a.to_le_bytes());
            v.extend_from_slice(&l.to_le_bytes());
            v.push(u8::from(w));
        }
        v
    };
    let notify = |q: u8| vec![5, q];
    let mut progs: Vec<Vec<u8>> = Vec::new();
    match kind {
        Some(Kind::Block) => {
            // Header (type, reserved, sector), data, status: read, write, flush, get id.
            let mut p = vec![4];
            p.extend_from_slice(&(0x1_0000u32).to_le_bytes());
            p.push(16);
            p.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
            p.extend(chain(
                0,
                &[(0, 16, false), (0x100, 512, true), (0x400, 1, true)],
            ));
            p.extend(notify(0));
            p.extend([
                4, 0x00, 0x10, 0x01, 0x00, 16, 1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0,
            ]);
            p.extend(chain(
                0,
                &[(0x1000, 16, false), (0x1100, 512, false), (0x1400, 1, true)],
            ));
            p.extend(notify(0));
            p.extend([
                4, 0x00, 0x20, 0x01, 0x00, 16, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ]);
            p.extend(chain(0, &[(0x2000, 16, false), (0x2400, 1, true)]));
            p.extend([
                4, 0x00, 0x30, 0x01, 0x00, 16, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ]);
            p.extend(chain(
                0,
                &[(0x3000, 16, false), (0x3100, 20, true), (0x3400, 1, true)],
            ));
            p.extend(notify(0));
            p.push(12);
            progs.push(p);
        }
        Some(Kind::Net) => {
            let mut p = Vec::new();
            p.extend(chain(0, &[(0, 2048, true)]));
            p.extend(chain(0, &[(0x1000, 2048, true)]));
            p.extend(notify(0));
            // A frame: virtio-net header (12 bytes) then Ethernet.
            p.extend([4, 0x00, 0x40, 0x01, 0x00, 26]);
            p.extend([0u8; 12]);
            p.extend([
                0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 6, 0, 0x0a, 0x4d, 0, 2, 0x08, 0x06,
            ]);
            p.extend(chain(1, &[(0x4000, 12, false), (0x400c, 14, false)]));
            p.extend(notify(1));
            p.extend([10, 0, 4, b'p', b'i', b'n', b'g']);
            p.push(12);
            progs.push(p);
        }
        Some(Kind::Vsock) => {
            let mut p = Vec::new();
            for i in 0..4u16 {
                p.extend(chain(0, &[(i * 0x1000, 0x1000, true)]));
            }
            p.extend(chain(2, &[(0x8000, 8, true)]));
            p.extend(notify(0));
            // A REQUEST from the guest to host port 1024: header (44 bytes).
            let mut hdr = Vec::new();
            hdr.extend(3u64.to_le_bytes());
            hdr.extend(2u64.to_le_bytes());
            hdr.extend(5000u32.to_le_bytes());
            hdr.extend(VSOCK_PORT.to_le_bytes());
            hdr.extend(0u32.to_le_bytes());
            hdr.extend(1u16.to_le_bytes());
            hdr.extend(1u16.to_le_bytes());
            hdr.extend(0u32.to_le_bytes());
            hdr.extend(65536u32.to_le_bytes());
            hdr.extend(0u32.to_le_bytes());
            p.extend([4, 0x00, 0x90, 0x01, 0x00, hdr.len() as u8]);
            p.extend(&hdr);
            p.extend(chain(1, &[(0x9000, 44, false)]));
            p.extend(notify(1));
            p.extend([10, 0, 5, b'h', b'e', b'l', b'l', b'o']);
            p.push(12);
            progs.push(p);
        }
        Some(Kind::Rng) | None => {
            let mut p = Vec::new();
            p.extend(chain(0, &[(0, 64, true)]));
            p.extend(chain(0, &[(0x100, 16, true), (0x200, 16, true)]));
            p.extend(notify(0));
            p.push(12);
            progs.push(p);
        }
    }
    let mut out = Vec::new();
    if kind.is_none() {
        // virtio_mmio: from reset through registers, and from a saved state.
        let mut p = vec![0u8];
        p.extend([9, 0, 0, 0, 0, 4]);
        p.extend(&progs[0]);
        out.push(p);
        if let Some(state) = saved_rng_state(&progs[0]) {
            let mut p = vec![2u8];
            p.extend((state.len() as u16).to_le_bytes());
            p.extend(&state);
            p.extend(&progs[0]);
            out.push(p);
        }
        return out;
    };
    for prog in progs {
        for (cfg, mask) in [(4u8, [0u8, 0]), (0x45, [0xff, 0xff])] {
            let mut v = vec![cfg, mask[0], mask[1]];
            v.extend(&prog);
            out.push(v.clone());
            // Snapshot and restore, and the program again on the restored device.
            v.push(11);
            v.extend(&prog);
            out.push(v);
        }
    }
    out
}

/// A transport state saved from an rng device that ran `prog`.
fn saved_rng_state(prog: &[u8]) -> Option<Vec<u8>> {
    let mem = memory()?;
    let recipe = Recipe::Rng(None);
    let mut rig = rig(recipe.build()?, &mem)?;
    rig.driver_init(0, 16);
    let mut input = Input { data: prog };
    let mut rig = run_ops(rig, &recipe, Kind::Rng, &mut input);
    rig.quiesce();
    let (state, _) = rig.save();
    let mut w = Writer::default();
    state.encode(&mut w);
    Some(w.into_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn used_idx(rig: &Rig, q: usize) -> u16 {
        rig.mem
            .read_obj(GuestAddress(Rig::queue_base(q) + 0x2000 + 2))
            .unwrap_or(0)
    }

    /// The seeds do real work: each device completes chains and stays healthy (a seed that
    /// broke its device at once would leave the fuzzer exploring error paths only).
    #[test]
    fn seeds_drive_healthy_devices() {
        for (kind, queue) in [(Kind::Rng, 0), (Kind::Block, 0), (Kind::Vsock, 1)] {
            for (i, seed) in seeds(Some(kind)).iter().enumerate() {
                let rig = device_rig(kind, seed).expect("the device builds");
                assert!(
                    used_idx(&rig, queue) > 0,
                    "{kind:?} seed {i}: nothing completed"
                );
                let core = lock_core(&rig.core);
                assert!(
                    !core.health().is_broken(),
                    "{kind:?} seed {i}: {:?}",
                    core.health().reason()
                );
            }
        }
    }
}
