//! A hostile driver against the whole device stack, without KVM: the real transport
//! (registers written as a driver would), the real device thread (its epoll loop) and real
//! devices (vsock with its Unix socket, rng) over guest memory the test writes. The guest's
//! queue notifications are the transport's `QueueNotify` register, forwarded to the same
//! eventfds KVM's ioeventfds would write.
//!
//! The case: a vsock TX available index the queue cannot hold once made the device
//! thread spin forever (logging each turn) while holding the device's lock, so snapshots
//! and the API hung behind it. Here the device breaks instead, the thread goes idle, the
//! rng device on the same thread keeps serving, a snapshot can quiesce the device, and a
//! driver reset brings vsock back.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::device::{EventRegistry, VirtioDevice};
use super::event_loop::{self, EventLoop, LoopSlot};
use super::interrupt::{INT_CONFIG, Interrupt};
use super::mmio::{MmioTransport, VirtioCore, status};
use super::rng::Rng;
use super::testing::GuestQueue;
use super::vsock::packet::{HDR_LEN, PacketHeader, TYPE_STREAM, op};
use super::vsock::{RXQ, TXQ, Vsock};
use super::{ErrorKind, VIRTIO_F_VERSION_1};
use crate::devices::IrqLine;
use crate::devices::bus::BusDevice;
use crate::rate_limiter::Clock;

/// One device as the guest sees it (its registers) and as the test inspects it (its core).
struct Slot {
    t: MmioTransport,
    core: Arc<Mutex<VirtioCore>>,
    irq: EventFd,
}

impl Slot {
    fn r(&mut self, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        self.t.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    fn w(&mut self, offset: u64, v: u32) {
        self.t.write(offset, &v.to_le_bytes());
    }

    /// Negotiates VERSION_1, sets `queues` up and sets DRIVER_OK; returns the status.
    fn driver_init(&mut self, queues: &[GuestQueue]) -> u32 {
        use status::*;
        self.w(0x70, ACKNOWLEDGE);
        self.w(0x70, ACKNOWLEDGE | DRIVER);
        self.w(0x24, 1);
        self.w(0x20, 1 << (VIRTIO_F_VERSION_1 - 32));
        self.w(0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        for (i, q) in queues.iter().enumerate() {
            self.w(0x30, i as u32);
            self.w(0x38, u32::from(q.size));
            for (reg, addr) in [(0x80, q.desc), (0x90, q.avail), (0xa0, q.used)] {
                self.w(reg, addr as u32);
                self.w(reg + 4, (addr >> 32) as u32);
            }
            self.w(0x44, 1);
        }
        self.w(0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
        self.r(0x70)
    }

    fn notify(&mut self, queue: u32) {
        self.w(0x50, queue);
    }

    fn health(&self) -> Arc<super::DeviceHealth> {
        self.core.lock().unwrap().health.clone()
    }
}

fn attach(
    mem: &GuestMemoryMmap,
    epoll: &Arc<vmm_sys_util::epoll::Epoll>,
    index: u16,
    device: Box<dyn VirtioDevice>,
) -> (Slot, LoopSlot) {
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let interrupt = Arc::new(Interrupt::new(IrqLine::Eventfd(irq.try_clone().unwrap())));
    let evts: Vec<EventFd> = (0..device.queue_max_sizes().len())
        .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
        .collect();
    let kick = EventFd::new(EFD_NONBLOCK).unwrap();
    let events = EventRegistry::new(epoll.clone(), index);
    let core = Arc::new(Mutex::new(
        VirtioCore::new(device, mem.clone(), interrupt, events).unwrap(),
    ));
    let t = MmioTransport::new(
        core.clone(),
        kick.try_clone().unwrap(),
        evts.iter().map(|e| e.try_clone().unwrap()).collect(),
    );
    let slot = LoopSlot {
        core: core.clone(),
        queue_evts: evts,
        kick,
    };
    (Slot { t, core, irq }, slot)
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// An RST from the guest for a connection nobody knows (the device just consumes it).
fn rst_packet(mem: &GuestMemoryMmap, at: u64) {
    let h = PacketHeader {
        src_cid: 3,
        dst_cid: 2,
        src_port: 9,
        dst_port: 9,
        len: 0,
        type_: TYPE_STREAM,
        op: op::RST,
        flags: 0,
        buf_alloc: 0,
        fwd_cnt: 0,
    };
    mem.write_slice(&h.to_bytes(), GuestAddress(at)).unwrap();
}

#[test]
fn a_spinning_vsock_ring_breaks_the_device_and_nothing_else() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let vsock = Vsock::new(&ember_fc_api::Vsock {
        guest_cid: 3,
        uds_path: dir.path().join("v.sock").to_str().unwrap().into(),
        vsock_id: None,
    })
    .unwrap();
    let rng = Rng::new(None, Clock::Monotonic).unwrap();
    let epoll = event_loop::new_epoll().unwrap();
    let (mut vs, vs_loop) = attach(&mem, &epoll, 0, Box::new(vsock));
    let (mut rn, rn_loop) = attach(&mem, &epoll, 1, Box::new(rng));
    let _thread = EventLoop::start(epoll, vec![vs_loop, rn_loop]).unwrap();

    // The guest sets both devices up: vsock's queues of 32 at 1 MiB, rng's at 2 MiB.
    let vq: Vec<GuestQueue> = (0..3u64)
        .map(|i| GuestQueue::new(0x10_0000 + i * 0x1000, 32))
        .collect();
    let ok = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;
    assert_eq!(vs.driver_init(&vq), ok);
    let mut rq = GuestQueue::new(0x20_0000, 16);
    assert_eq!(rn.driver_init(std::slice::from_ref(&rq)), ok);
    let mut txq = vq[TXQ].clone();

    // Both work.
    rst_packet(&mem, 0x40_0000);
    txq.add_chain(&mem, &[(0x40_0000, HDR_LEN as u32, false)]);
    vs.notify(TXQ as u32);
    rq.add_chain(&mem, &[(0x50_0000, 32, true)]);
    rn.notify(0);
    wait_until("both devices to answer", || {
        txq.used_idx(&mem) == 1 && rq.used_idx(&mem) == 1
    });

    // The hostile write: TX avail.idx 40 on a 32-entry queue (the device is at 1).
    txq.set_avail_idx(&mem, 40);
    vs.notify(TXQ as u32);
    let h = vs.health();
    wait_until("vsock to break", || h.is_broken());
    assert_eq!(
        h.reason().as_deref(),
        Some(
            "ring: TX queue: available index 40 is 39 entries ahead of the device's 1 in a queue \
             of 32"
        )
    );
    // The driver is told: DEVICE_NEEDS_RESET, a configuration interrupt.
    assert_eq!(vs.r(0x70), ok | status::DEVICE_NEEDS_RESET);
    assert_eq!(vs.r(0x60) & INT_CONFIG, INT_CONFIG);
    assert!(vs.irq.read().unwrap() >= 1);

    // The thread is idle: a flood of notifications is one cheap wake-up each, no more, and
    // nothing is logged past the first line (counted: one ring error).
    let seen = |s: &Slot| s.core.lock().unwrap().events_seen;
    let before = seen(&vs);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(seen(&vs), before, "no events while the guest does nothing");
    for _ in 0..1000 {
        vs.notify(TXQ as u32);
    }
    std::thread::sleep(Duration::from_millis(200));
    let after = seen(&vs);
    assert!(after - before <= 1000, "{} events", after - before);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(seen(&vs), after, "idle again");
    assert_eq!(h.count(ErrorKind::Ring), 1);
    assert_eq!(txq.used_idx(&mem), 1, "nothing more returned");

    // The other device on the same thread still serves.
    rq.add_chain(&mem, &[(0x50_0000, 32, true)]);
    rn.notify(0);
    wait_until("rng to answer", || rq.used_idx(&mem) == 2);
    assert!(!rn.health().is_broken());

    // A snapshot can quiesce and save it (the lock is free), marked broken.
    let state = {
        let core = vs.core.lock().unwrap();
        vs.t.save(&core)
    };
    assert_eq!(
        state.status & status::DEVICE_NEEDS_RESET,
        status::DEVICE_NEEDS_RESET
    );

    // The driver resets the device and sets it up again (fresh rings): it works again.
    vs.w(0x70, 0);
    assert_eq!(vs.r(0x70), 0);
    assert!(!h.is_broken());
    let vq: Vec<GuestQueue> = (0..3u64)
        .map(|i| GuestQueue::new(0x18_0000 + i * 0x1000, 32))
        .collect();
    assert_eq!(vs.driver_init(&vq), ok);
    let mut txq = vq[TXQ].clone();
    txq.add_chain(&mem, &[(0x40_0000, HDR_LEN as u32, false)]);
    vs.notify(TXQ as u32);
    wait_until("vsock to answer after its reset", || {
        txq.used_idx(&mem) == 1
    });
    assert_eq!(vq[RXQ].used_idx(&mem), 0);
    assert_eq!(h.breaks(), 1);
}
