//! Register-level tests of the transport: a dummy device driven through `MmioTransport`'s
//! bus reads and writes, as a guest driver would.

use super::*;
use crate::devices::virtio::feature;
use crate::devices::virtio::interrupt::INT_CONFIG;
use crate::devices::virtio::testing::Harness;
use crate::devices::virtio::{DeviceHealth, ErrorKind};
use crate::snapshot::codec::{Reader, Writer};
use vm_memory::GuestMemoryMmap;

#[derive(Default)]
struct Log {
    activations: usize,
    resets: usize,
    events: Vec<DeviceEvent>,
}

struct Dummy(Arc<Mutex<Log>>);

impl VirtioDevice for Dummy {
    fn device_type(&self) -> u32 {
        4
    }
    fn id(&self) -> &str {
        "dummy"
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16, 16]
    }
    fn avail_features(&self) -> u64 {
        feature(VIRTIO_F_VERSION_1) | 1
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = (offset as u8).wrapping_add(i as u8).wrapping_add(1);
        }
    }
    fn activate(&mut self, ctx: &mut DeviceContext<'_>) -> Result<(), ActivateError> {
        assert_eq!(ctx.queues.len(), 2);
        self.0.lock().unwrap().activations += 1;
        Ok(())
    }
    fn handle_event(&mut self, event: DeviceEvent, ctx: &mut DeviceContext<'_>) {
        self.0.lock().unwrap().events.push(event);
        // Queue 1 plays a driver that corrupted its ring.
        if event == DeviceEvent::Queue(1) {
            ctx.fault(ErrorKind::Ring, format_args!("queue 1 is hopeless"));
        }
    }
    fn reset(&mut self, _: &EventRegistry) {
        self.0.lock().unwrap().resets += 1;
    }
}

struct Rig {
    t: MmioTransport,
    log: Arc<Mutex<Log>>,
    kick: EventFd,
    evts: Vec<EventFd>,
    core: Arc<Mutex<VirtioCore>>,
}

fn rig() -> Rig {
    let h = Harness::new(&[16, 16]);
    let log = Arc::new(Mutex::new(Log::default()));
    let core = VirtioCore::new(
        Box::new(Dummy(log.clone())),
        h.mem.clone(),
        Arc::new(Interrupt::new(crate::devices::IrqLine::Eventfd(
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        ))),
        h.events,
    )
    .unwrap();
    let core = Arc::new(Mutex::new(core));
    let kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let evts: Vec<EventFd> = (0..2)
        .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
        .collect();
    let t = MmioTransport::new(
        core.clone(),
        kick.try_clone().unwrap(),
        evts.iter().map(|e| e.try_clone().unwrap()).collect(),
    );
    Rig {
        t,
        log,
        kick,
        evts,
        core,
    }
}

fn r(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(offset, &mut b);
    u32::from_le_bytes(b)
}

fn w(t: &mut MmioTransport, offset: u64, v: u32) {
    t.write(offset, &v.to_le_bytes());
}

fn negotiate(t: &mut MmioTransport, low: u32, high: u32) -> u32 {
    w(t, 0x70, status::ACKNOWLEDGE);
    w(t, 0x70, status::ACKNOWLEDGE | status::DRIVER);
    w(t, 0x24, 0);
    w(t, 0x20, low);
    w(t, 0x24, 1);
    w(t, 0x20, high);
    w(
        t,
        0x70,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    r(t, 0x70)
}

fn setup_queues(t: &mut MmioTransport, base: u64) {
    for q in 0..2u32 {
        let b = base + u64::from(q) * 0x1000;
        w(t, 0x30, q);
        assert_eq!(r(t, 0x34), 16);
        w(t, 0x38, 8);
        w(t, 0x80, b as u32);
        w(t, 0x84, 0);
        w(t, 0x90, (b + 0x100) as u32);
        w(t, 0x94, 0);
        w(t, 0xa0, (b + 0x200) as u32);
        w(t, 0xa4, 0);
        w(t, 0x44, 1);
        assert_eq!(r(t, 0x44), 1);
    }
}

const OK: u32 = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;

#[test]
fn identity_features_and_activation() {
    let mut rig = rig();
    let t = &mut rig.t;
    assert_eq!(r(t, 0x00), 0x7472_6976);
    assert_eq!(r(t, 0x04), 2);
    assert_eq!(r(t, 0x08), 4);
    w(t, 0x14, 1);
    assert_eq!(r(t, 0x10), 1, "VERSION_1 is bit 32");
    w(t, 0x14, 0);
    assert_eq!(r(t, 0x10), 1);
    assert_eq!(negotiate(t, 1, 1), OK);
    setup_queues(t, 0x10_0000);
    w(t, 0x70, OK | status::DRIVER_OK);
    assert_eq!(r(t, 0x70), OK | status::DRIVER_OK);
    assert_eq!(rig.log.lock().unwrap().activations, 1);
    assert_eq!(rig.kick.read().unwrap(), 1);
    assert!(rig.core.lock().unwrap().active);
    assert_eq!(rig.core.lock().unwrap().acked_features, (1 << 32) | 1);
    // Queue registers are frozen after DRIVER_OK.
    w(&mut rig.t, 0x30, 0);
    w(&mut rig.t, 0x44, 0);
    assert_eq!(r(&mut rig.t, 0x44), 1);
    // Config space, any width.
    let mut b = [0u8; 2];
    rig.t.read(0x102, &mut b);
    assert_eq!(b, [3, 4]);
    // A notification the ioeventfd did not catch is forwarded.
    w(&mut rig.t, 0x50, 1);
    assert_eq!(rig.evts[1].read().unwrap(), 1);
    w(&mut rig.t, 0x50, 7); // no such queue: ignored
    // Interrupt status and acknowledgement.
    rig.core.lock().unwrap().interrupt.signal_used_queue();
    assert_eq!(r(&mut rig.t, 0x60), 1);
    w(&mut rig.t, 0x64, 1);
    assert_eq!(r(&mut rig.t, 0x60), 0);
    // Reset.
    w(&mut rig.t, 0x70, 0);
    assert_eq!(r(&mut rig.t, 0x70), 0);
    assert_eq!(rig.log.lock().unwrap().resets, 1);
    assert!(!rig.core.lock().unwrap().active);
    w(&mut rig.t, 0x30, 0);
    assert_eq!(r(&mut rig.t, 0x44), 0);
}

#[test]
fn bad_negotiation_is_refused() {
    let mut rig = rig();
    // Without VERSION_1.
    assert_eq!(negotiate(&mut rig.t, 1, 0), OK & !status::FEATURES_OK);
    w(&mut rig.t, 0x70, 0);
    // With a feature the device does not offer.
    assert_eq!(negotiate(&mut rig.t, 1 | 4, 1), OK & !status::FEATURES_OK);
    // DRIVER_OK without FEATURES_OK does nothing.
    w(
        &mut rig.t,
        0x70,
        status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK,
    );
    assert_eq!(rig.log.lock().unwrap().activations, 0);
    // Misaligned and narrow register accesses are ignored.
    let mut b = [0u8; 2];
    rig.t.read(0x70, &mut b);
    assert_eq!(b, [0, 0]);
    rig.t.write(0x70, &[0]);
}

#[test]
fn queue_outside_memory_needs_reset() {
    let mut rig = rig();
    negotiate(&mut rig.t, 0, 1);
    setup_queues(&mut rig.t, (16 << 20) - 0x1000);
    w(&mut rig.t, 0x70, OK | status::DRIVER_OK);
    assert_eq!(
        r(&mut rig.t, 0x70) & (status::DRIVER_OK | status::DEVICE_NEEDS_RESET),
        status::DEVICE_NEEDS_RESET
    );
    assert_eq!(r(&mut rig.t, 0x60) & INT_CONFIG, INT_CONFIG);
    assert_eq!(rig.log.lock().unwrap().activations, 0);
    let h = health(&rig);
    assert!(
        h.reason()
            .is_some_and(|m| m.starts_with("driver: activation failed: queue 1")),
        "{:?}",
        h.reason()
    );
    // Retrying DRIVER_OK without a reset is refused.
    w(&mut rig.t, 0x70, OK | status::DRIVER_OK);
    assert_eq!(rig.log.lock().unwrap().activations, 0);
    // After a reset, good queues activate.
    w(&mut rig.t, 0x70, 0);
    negotiate(&mut rig.t, 0, 1);
    setup_queues(&mut rig.t, 0x10_0000);
    w(&mut rig.t, 0x70, OK | status::DRIVER_OK);
    assert_eq!(r(&mut rig.t, 0x70), OK | status::DRIVER_OK);
}

#[test]
fn save_and_restore_reactivate() {
    let mut rig = rig();
    negotiate(&mut rig.t, 0, 1);
    setup_queues(&mut rig.t, 0x10_0000);
    w(&mut rig.t, 0x70, OK | status::DRIVER_OK);
    let state = {
        let core = rig.core.lock().unwrap();
        rig.t.save(&core)
    };
    assert!(state.active);
    let mut w_ = Writer::default();
    state.encode(&mut w_);
    let bytes = w_.into_vec();
    let back = TransportState::decode(&mut Reader::new(&bytes)).unwrap();
    assert_eq!(back, state);

    let mut fresh = self::rig();
    fresh.t.restore(&back).unwrap();
    assert_eq!(fresh.log.lock().unwrap().activations, 1);
    assert_eq!(fresh.kick.read().unwrap(), 1);
    assert_eq!(r(&mut fresh.t, 0x70), OK | status::DRIVER_OK);
    let restored = fresh.t.save(&fresh.core.lock().unwrap());
    assert_eq!(restored, state);

    // A state with the wrong queue count is refused.
    let mut bad = state.clone();
    bad.queues.pop();
    assert!(self::rig().t.restore(&bad).is_err());
    let _unused: Option<GuestMemoryMmap> = None;
}

fn health(rig: &Rig) -> Arc<DeviceHealth> {
    rig.core.lock().unwrap().health.clone()
}

fn activated() -> Rig {
    let mut rig = rig();
    negotiate(&mut rig.t, 0, 1);
    setup_queues(&mut rig.t, 0x10_0000);
    w(&mut rig.t, 0x70, OK | status::DRIVER_OK);
    assert_eq!(rig.log.lock().unwrap().activations, 1);
    rig
}

#[test]
fn hostile_register_accesses_are_ignored_and_counted() {
    let mut rig = rig();
    let h = health(&rig);
    let t = &mut rig.t;
    negotiate(t, 0, 1);
    w(t, 0x30, 0);
    w(t, 0x38, 8);
    // Invalid queue sizes: zero, not a power of two, beyond the maximum, beyond 16 bits.
    for bad in [0, 3, 32, 0x1_0008] {
        w(t, 0x38, bad);
    }
    // Misaligned ring addresses (16, 2 and 4 bytes).
    w(t, 0x80, 0x10_0008);
    w(t, 0x90, 0x10_0101);
    w(t, 0xa0, 0x10_0202);
    w(t, 0x44, 2); // QueueReady is 0 or 1
    w(t, 0x30, 9); // no queue 9 ...
    w(t, 0x38, 8); // ... so this goes nowhere
    w(t, 0x50, 7); // notify a queue that does not exist
    w(t, 0x08, 1); // a read-only register
    w(t, 0x104, 1); // read-only configuration space
    w(t, 0x200 - 0x100 + 0x3, 1); // config space, any offset: still refused, counted
    t.write(0x70, &[1]); // not 32 bits
    t.write(0x72, &[1, 0, 0, 0]); // misaligned
    let mut b = [0u8; 2];
    t.read(0x70, &mut b);
    assert_eq!(r(t, 0xf0), 0); // unknown register
    assert_eq!(h.count(ErrorKind::Register), 17);
    assert_eq!(h.count(ErrorKind::Driver), 0);
    assert!(!h.is_broken());
    // Nothing changed: the queue kept the size and addresses it had.
    {
        let core = rig.core.lock().unwrap();
        let q = &core.queues[0];
        assert_eq!(
            (q.size(), q.desc_table(), q.avail_ring(), q.used_ring()),
            (8, 0, 0, 0)
        );
        assert!(!q.ready());
    }
    assert_eq!(
        r(&mut rig.t, 0xfc),
        0,
        "refused config writes change no generation"
    );
}

#[test]
fn hostile_status_writes_are_refused_and_counted() {
    let mut rig = rig();
    let h = health(&rig);
    assert_eq!(negotiate(&mut rig.t, 1 | 4, 1), OK & !status::FEATURES_OK);
    assert_eq!(h.count(ErrorKind::Driver), 1);
    // Clearing ACKNOWLEDGE without a reset.
    w(&mut rig.t, 0x70, status::DRIVER);
    w(
        &mut rig.t,
        0x70,
        status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK,
    );
    assert_eq!(h.count(ErrorKind::Driver), 3);
    // Notifications before DRIVER_OK reach no device.
    rig.core.lock().unwrap().handle_event(DeviceEvent::Queue(0));
    assert!(rig.log.lock().unwrap().events.is_empty());
    assert_eq!(h.count(ErrorKind::Register), 1);
    assert_eq!(rig.log.lock().unwrap().activations, 0);
    assert!(!h.is_broken());
}

#[test]
fn a_fault_breaks_the_device_until_the_driver_resets_it() {
    let mut rig = activated();
    let h = health(&rig);
    rig.core.lock().unwrap().handle_event(DeviceEvent::Queue(0));
    rig.core.lock().unwrap().handle_event(DeviceEvent::Queue(1));
    assert!(h.is_broken());
    assert_eq!(h.reason().as_deref(), Some("ring: queue 1 is hopeless"));
    // Halted: the device was reset once (its descriptors dropped), hears nothing more.
    assert_eq!(rig.log.lock().unwrap().resets, 1);
    for _ in 0..1000 {
        rig.core.lock().unwrap().handle_event(DeviceEvent::Queue(0));
    }
    assert_eq!(rig.log.lock().unwrap().events.len(), 2);
    // The driver sees DEVICE_NEEDS_RESET and a configuration interrupt.
    assert_eq!(
        r(&mut rig.t, 0x70),
        OK | status::DRIVER_OK | status::DEVICE_NEEDS_RESET
    );
    assert_eq!(r(&mut rig.t, 0x60) & INT_CONFIG, INT_CONFIG);
    // Writing back what it read changes nothing; DRIVER_OK again is refused.
    let st = r(&mut rig.t, 0x70);
    w(&mut rig.t, 0x70, st);
    assert_eq!(r(&mut rig.t, 0x70), st);
    assert_eq!(rig.log.lock().unwrap().activations, 1);
    // A snapshot keeps the broken state and a restore honours it (no activation).
    let state = rig.t.save(&rig.core.lock().unwrap());
    assert_eq!(
        state.status & status::DEVICE_NEEDS_RESET,
        status::DEVICE_NEEDS_RESET
    );
    let mut fresh = self::rig();
    fresh.t.restore(&state).unwrap();
    assert_eq!(fresh.log.lock().unwrap().activations, 0);
    assert!(health(&fresh).is_broken());
    assert_eq!(r(&mut fresh.t, 0x70), st);
    fresh
        .core
        .lock()
        .unwrap()
        .handle_event(DeviceEvent::Queue(0));
    assert!(fresh.log.lock().unwrap().events.is_empty());
    assert_eq!(fresh.t.save(&fresh.core.lock().unwrap()), state);
    // The driver's reset clears it (without resetting the device twice) and the device
    // works again.
    w(&mut rig.t, 0x70, 0);
    assert_eq!(r(&mut rig.t, 0x70), 0);
    assert_eq!(rig.log.lock().unwrap().resets, 1);
    assert!(!h.is_broken());
    negotiate(&mut rig.t, 0, 1);
    setup_queues(&mut rig.t, 0x10_0000);
    w(&mut rig.t, 0x70, OK | status::DRIVER_OK);
    assert_eq!(r(&mut rig.t, 0x70), OK | status::DRIVER_OK);
    rig.core.lock().unwrap().handle_event(DeviceEvent::Queue(0));
    assert_eq!(rig.log.lock().unwrap().events.len(), 3);
    assert_eq!(h.count(ErrorKind::Ring), 1);
    assert_eq!(h.breaks(), 1);
    w(&mut fresh.t, 0x70, 0);
    assert!(!health(&fresh).is_broken());
}
