//! The virtio-mmio transport, version 2 (virtio 1.x, section 4.2): the register file a vCPU
//! thread reads and writes, feature negotiation, queue set-up, activation on `DRIVER_OK`,
//! reset, and the transport's snapshot state.
//!
//! Split in two so a vCPU never waits for device work: [`MmioTransport`] (on the MMIO bus,
//! locked by vCPU threads for register accesses) holds the registers; [`VirtioCore`] (shared
//! with the device thread) holds the device, its queues and guest memory. Register accesses
//! during operation (`InterruptStatus`, `InterruptACK`) touch only an atomic; queue
//! notifications never reach user space (ioeventfds), except a write whose value matches no
//! registered queue, which is forwarded to that queue's eventfd here.
//!
//! Lock order: transport, then core. The device thread takes only the core.

use std::sync::{Arc, Mutex, MutexGuard};

use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::device::{ActivateError, DeviceContext, DeviceEvent, EventRegistry, VirtioDevice};
use super::interrupt::Interrupt;
use super::{VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use crate::devices::bus::BusDevice;
use crate::snapshot::codec::{DecodeError, Reader, Writer};

/// Size of one device's MMIO window.
pub const MMIO_LEN: u64 = 0x1000;
/// "virt".
const MAGIC: u32 = 0x7472_6976;
/// Offset of `QueueNotify` (ioeventfds are registered here).
pub const NOTIFY_OFFSET: u64 = 0x50;
/// Start of the device configuration space.
const CONFIG_OFFSET: u64 = 0x100;

/// Device status bits.
pub mod status {
    /// The guest noticed the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest has a driver for it.
    pub const DRIVER: u32 = 2;
    /// The driver is ready.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    /// The driver gave up on the device.
    pub const FAILED: u32 = 128;
}

/// The device side shared between the transport and the device thread.
pub struct VirtioCore {
    pub(crate) device: Box<dyn VirtioDevice>,
    pub(crate) queues: Vec<Queue>,
    pub(crate) mem: GuestMemoryMmap,
    pub(crate) interrupt: Arc<Interrupt>,
    pub(crate) events: EventRegistry,
    pub(crate) acked_features: u64,
    pub(crate) active: bool,
}

impl std::fmt::Debug for VirtioCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioCore")
            .field("device", &self.device.id())
            .field("active", &self.active)
            .finish_non_exhaustive()
    }
}

impl VirtioCore {
    /// Builds a core with fresh queues.
    pub(crate) fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        events: EventRegistry,
    ) -> Result<VirtioCore, ActivateError> {
        let queues = device
            .queue_max_sizes()
            .iter()
            .enumerate()
            .map(|(index, &max)| {
                Queue::new(max).map_err(|e| ActivateError::Queue {
                    index,
                    reason: format!("invalid maximum size {max}: {e}"),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(VirtioCore {
            device,
            queues,
            mem,
            interrupt,
            events,
            acked_features: 0,
            active: false,
        })
    }

    /// Runs `f` with the device and a context over the rest.
    pub(crate) fn with_device<R>(
        &mut self,
        f: impl FnOnce(&mut dyn VirtioDevice, &mut DeviceContext<'_>) -> R,
    ) -> R {
        let mut ctx = DeviceContext {
            mem: &self.mem,
            queues: &mut self.queues,
            acked_features: self.acked_features,
            interrupt: &self.interrupt,
            events: &self.events,
        };
        f(self.device.as_mut(), &mut ctx)
    }

    /// Delivers an event (ignored while inactive: notifications before `DRIVER_OK` are
    /// dropped).
    pub(crate) fn handle_event(&mut self, event: DeviceEvent) {
        if self.active {
            self.with_device(|d, ctx| d.handle_event(event, ctx));
        }
    }

    /// Checks the queues and activates the device.
    fn activate(&mut self) -> Result<(), ActivateError> {
        let event_idx = self.acked_features & (1u64 << VIRTIO_RING_F_EVENT_IDX) != 0;
        for (index, q) in self.queues.iter_mut().enumerate() {
            q.set_event_idx(event_idx);
            if q.ready() && !q.is_valid(&self.mem) {
                return Err(ActivateError::Queue {
                    index,
                    reason: "rings outside guest memory or misaligned".into(),
                });
            }
        }
        self.with_device(|d, ctx| d.activate(ctx))?;
        self.active = true;
        Ok(())
    }

    fn reset(&mut self) {
        let VirtioCore {
            device,
            queues,
            events,
            ..
        } = self;
        device.reset(events);
        for q in queues.iter_mut() {
            q.reset();
        }
        self.acked_features = 0;
        self.active = false;
    }
}

/// The register file of one virtio-mmio device.
pub struct MmioTransport {
    core: Arc<Mutex<VirtioCore>>,
    interrupt: Arc<Interrupt>,
    kick: EventFd,
    queue_evts: Vec<EventFd>,
    device_type: u32,
    avail_features: u64,
    queue_max: Vec<u16>,
    features_select: u32,
    driver_features_select: u32,
    queue_select: u32,
    status: u32,
    config_generation: u32,
    acked_features: u64,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device_type", &self.device_type)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

pub(crate) fn lock_core(core: &Mutex<VirtioCore>) -> MutexGuard<'_, VirtioCore> {
    match core.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl MmioTransport {
    /// A transport in reset state over `core`. `kick` wakes the device thread after an
    /// activation; `queue_evts` are the queues' notification eventfds (also registered as
    /// ioeventfds).
    pub(crate) fn new(
        core: Arc<Mutex<VirtioCore>>,
        kick: EventFd,
        queue_evts: Vec<EventFd>,
    ) -> MmioTransport {
        let (interrupt, device_type, avail_features, queue_max) = {
            let c = lock_core(&core);
            (
                c.interrupt.clone(),
                c.device.device_type(),
                c.device.avail_features(),
                c.device.queue_max_sizes().to_vec(),
            )
        };
        MmioTransport {
            core,
            interrupt,
            kick,
            queue_evts,
            device_type,
            avail_features,
            queue_max,
            features_select: 0,
            driver_features_select: 0,
            queue_select: 0,
            status: 0,
            config_generation: 0,
            acked_features: 0,
        }
    }

    fn core(&self) -> MutexGuard<'_, VirtioCore> {
        lock_core(&self.core)
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    fn with_queue(&self, f: impl FnOnce(&mut Queue)) {
        // Queue registers are writable between FEATURES_OK and DRIVER_OK only.
        if self.status & (status::FEATURES_OK | status::DRIVER_OK | status::FAILED)
            != status::FEATURES_OK
        {
            tracing::debug!(
                status = self.status,
                "virtio queue register written outside set-up"
            );
            return;
        }
        let mut core = self.core();
        if let Some(q) = core.queues.get_mut(self.queue_select as usize) {
            f(q);
        }
    }

    fn reset(&mut self) {
        self.core().reset();
        self.features_select = 0;
        self.driver_features_select = 0;
        self.queue_select = 0;
        self.status = 0;
        self.acked_features = 0;
        self.interrupt.set_status(0);
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let added = value & !self.status;
        if value & self.status != self.status {
            tracing::warn!(
                old = self.status,
                new = value,
                "virtio driver tried to clear status bits without a reset"
            );
            return;
        }
        let mut new = value;
        if added & status::FEATURES_OK != 0 {
            let unknown = self.acked_features & !self.avail_features;
            let version_1 = self.acked_features & (1u64 << VIRTIO_F_VERSION_1) != 0;
            if unknown != 0 || !version_1 || self.status & status::DRIVER == 0 {
                tracing::warn!(
                    acked = self.acked_features,
                    offered = self.avail_features,
                    "virtio feature negotiation refused"
                );
                new &= !status::FEATURES_OK;
            }
        }
        if added & status::DRIVER_OK != 0 {
            if new & status::FEATURES_OK == 0 {
                tracing::warn!("virtio DRIVER_OK before FEATURES_OK");
                return;
            }
            let result = {
                let mut core = self.core();
                core.acked_features = self.acked_features;
                core.activate()
            };
            match result {
                Ok(()) => {
                    if let Err(e) = self.kick.write(1) {
                        tracing::warn!(error = %e, "cannot wake the device thread");
                    }
                }
                Err(e) => {
                    tracing::warn!(device_type = self.device_type, error = %e, "virtio device activation failed");
                    new = self.status | status::DEVICE_NEEDS_RESET;
                    self.status = new;
                    self.interrupt.signal_config_change();
                    return;
                }
            }
        }
        self.status = new;
    }

    fn read_register(&self, offset: u64) -> u32 {
        match offset {
            0x00 => MAGIC,
            0x04 => 2,
            0x08 => self.device_type,
            0x0c => 0,
            0x10 => match self.features_select {
                0 => self.avail_features as u32,
                1 => (self.avail_features >> 32) as u32,
                _ => 0,
            },
            0x34 => self
                .queue_max
                .get(self.queue_select as usize)
                .copied()
                .map(u32::from)
                .unwrap_or(0),
            0x44 => {
                let core = self.core();
                core.queues
                    .get(self.queue_select as usize)
                    .map(|q| u32::from(q.ready()))
                    .unwrap_or(0)
            }
            0x60 => self.interrupt.status(),
            0x70 => self.status,
            // No shared memory regions: length and base read as all-ones.
            0xb0 | 0xb4 | 0xb8 | 0xbc => u32::MAX,
            0xfc => self.config_generation,
            _ => {
                tracing::debug!(offset, "read of an unknown virtio-mmio register");
                0
            }
        }
    }

    fn write_register(&mut self, offset: u64, v: u32) {
        match offset {
            0x14 => self.features_select = v,
            0x20 => {
                if self.status & (status::DRIVER | status::FEATURES_OK) != status::DRIVER {
                    tracing::debug!("virtio driver features written outside negotiation");
                    return;
                }
                match self.driver_features_select {
                    0 => self.acked_features = (self.acked_features & !0xffff_ffff) | u64::from(v),
                    1 => {
                        self.acked_features =
                            (self.acked_features & 0xffff_ffff) | (u64::from(v) << 32)
                    }
                    _ => {}
                }
            }
            0x24 => self.driver_features_select = v,
            0x30 => self.queue_select = v,
            0x38 => self.with_queue(|q| q.set_size(v as u16)),
            0x44 => self.with_queue(|q| q.set_ready(v == 1)),
            0x50 => match self.queue_evts.get(v as usize) {
                Some(evt) => {
                    if let Err(e) = evt.write(1) {
                        tracing::warn!(error = %e, "cannot forward a queue notification");
                    }
                }
                None => tracing::debug!(queue = v, "notification for a queue that does not exist"),
            },
            0x64 => self.interrupt.ack(v),
            0x70 => self.set_status(v),
            0x80 => self.with_queue(|q| q.set_desc_table_address(Some(v), None)),
            0x84 => self.with_queue(|q| q.set_desc_table_address(None, Some(v))),
            0x90 => self.with_queue(|q| q.set_avail_ring_address(Some(v), None)),
            0x94 => self.with_queue(|q| q.set_avail_ring_address(None, Some(v))),
            0xa0 => self.with_queue(|q| q.set_used_ring_address(Some(v), None)),
            0xa4 => self.with_queue(|q| q.set_used_ring_address(None, Some(v))),
            _ => tracing::debug!(
                offset,
                "write to an unknown or read-only virtio-mmio register"
            ),
        }
    }

    /// Saves the transport's registers and queues (device thread quiesced by the caller).
    pub(crate) fn save(&self, core: &VirtioCore) -> TransportState {
        TransportState {
            status: self.status,
            acked_features: self.acked_features,
            features_select: self.features_select,
            driver_features_select: self.driver_features_select,
            queue_select: self.queue_select,
            config_generation: self.config_generation,
            interrupt_status: self.interrupt.status(),
            active: core.active,
            queues: core.queues.iter().map(|q| q.state()).collect(),
        }
    }

    /// Applies a saved transport state to a freshly built transport and activates the device
    /// if it was active. Fails if the state does not fit the device or guest memory.
    pub(crate) fn restore(&mut self, state: &TransportState) -> Result<(), ActivateError> {
        let mut core = lock_core(&self.core);
        if state.queues.len() != core.queues.len() {
            return Err(ActivateError::Device(format!(
                "snapshot has {} queues, the device has {}",
                state.queues.len(),
                core.queues.len()
            )));
        }
        for (index, (q, s)) in core.queues.iter_mut().zip(&state.queues).enumerate() {
            if s.max_size != q.max_size() {
                return Err(ActivateError::Queue {
                    index,
                    reason: format!(
                        "saved maximum size {} differs from the device's {}",
                        s.max_size,
                        q.max_size()
                    ),
                });
            }
            *q = Queue::try_from(*s).map_err(|e| ActivateError::Queue {
                index,
                reason: format!("invalid saved queue state: {e}"),
            })?;
        }
        self.status = state.status;
        self.acked_features = state.acked_features;
        self.features_select = state.features_select;
        self.driver_features_select = state.driver_features_select;
        self.queue_select = state.queue_select;
        self.config_generation = state.config_generation;
        self.interrupt.set_status(state.interrupt_status);
        core.acked_features = state.acked_features;
        if state.active {
            for (index, q) in core.queues.iter().enumerate() {
                if q.ready() && !q.is_valid(&core.mem) {
                    return Err(ActivateError::Queue {
                        index,
                        reason: "saved rings lie outside guest memory".into(),
                    });
                }
            }
            core.with_device(|d, ctx| d.activate(ctx))?;
            core.active = true;
            drop(core);
            if let Err(e) = self.kick.write(1) {
                tracing::warn!(error = %e, "cannot wake the device thread");
            }
        }
        Ok(())
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_OFFSET {
            data.fill(0);
            self.core().device.read_config(offset - CONFIG_OFFSET, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            tracing::debug!(
                offset,
                len = data.len(),
                "unaligned virtio-mmio register read"
            );
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_register(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_OFFSET {
            self.core()
                .device
                .write_config(offset - CONFIG_OFFSET, data);
            self.config_generation = self.config_generation.wrapping_add(1);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            tracing::debug!(
                offset,
                len = data.len(),
                "non-32-bit virtio-mmio register write"
            );
            return;
        };
        if !offset.is_multiple_of(4) {
            return;
        }
        self.write_register(offset, u32::from_le_bytes(bytes));
    }
}

/// The transport's part of a device's snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportState {
    /// Device status register.
    pub status: u32,
    /// Features the driver acknowledged.
    pub acked_features: u64,
    /// `DeviceFeaturesSel`.
    pub features_select: u32,
    /// `DriverFeaturesSel`.
    pub driver_features_select: u32,
    /// `QueueSel`.
    pub queue_select: u32,
    /// `ConfigGeneration`.
    pub config_generation: u32,
    /// `InterruptStatus`.
    pub interrupt_status: u32,
    /// Whether the device was activated.
    pub active: bool,
    /// Per-queue state.
    pub queues: Vec<QueueState>,
}

/// Most queues a device may have in a snapshot.
const MAX_QUEUES: usize = 64;

impl TransportState {
    /// Appends the encoding.
    pub fn encode(&self, w: &mut Writer) {
        w.u32(self.status);
        w.u64(self.acked_features);
        w.u32(self.features_select);
        w.u32(self.driver_features_select);
        w.u32(self.queue_select);
        w.u32(self.config_generation);
        w.u32(self.interrupt_status);
        w.u8(u8::from(self.active));
        w.u32(self.queues.len() as u32);
        for q in &self.queues {
            w.u16(q.max_size);
            w.u16(q.next_avail);
            w.u16(q.next_used);
            w.u8(u8::from(q.event_idx_enabled));
            w.u16(q.size);
            w.u8(u8::from(q.ready));
            w.u64(q.desc_table);
            w.u64(q.avail_ring);
            w.u64(q.used_ring);
        }
    }

    /// Decodes what [`TransportState::encode`] wrote.
    pub fn decode(r: &mut Reader<'_>) -> Result<TransportState, DecodeError> {
        let bool_of = |v: u8, what: &'static str| match v {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::Invalid {
                what,
                detail: format!("{v} is not a boolean"),
            }),
        };
        let status = r.u32("virtio status")?;
        let acked_features = r.u64("virtio acked features")?;
        let features_select = r.u32("virtio features select")?;
        let driver_features_select = r.u32("virtio driver features select")?;
        let queue_select = r.u32("virtio queue select")?;
        let config_generation = r.u32("virtio config generation")?;
        let interrupt_status = r.u32("virtio interrupt status")?;
        let active = bool_of(r.u8("virtio active")?, "virtio active")?;
        let n = r.count("virtio queue count", 34)?;
        if n > MAX_QUEUES {
            return Err(DecodeError::Invalid {
                what: "virtio queue count",
                detail: format!("{n} queues"),
            });
        }
        let mut queues = Vec::with_capacity(n);
        for _ in 0..n {
            queues.push(QueueState {
                max_size: r.u16("queue max size")?,
                next_avail: r.u16("queue next avail")?,
                next_used: r.u16("queue next used")?,
                event_idx_enabled: bool_of(r.u8("queue event idx")?, "queue event idx")?,
                size: r.u16("queue size")?,
                ready: bool_of(r.u8("queue ready")?, "queue ready")?,
                desc_table: r.u64("queue descriptor table")?,
                avail_ring: r.u64("queue available ring")?,
                used_ring: r.u64("queue used ring")?,
            });
        }
        Ok(TransportState {
            status,
            acked_features,
            features_select,
            driver_features_select,
            queue_select,
            config_generation,
            interrupt_status,
            active,
            queues,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::feature;
    use crate::devices::virtio::interrupt::INT_CONFIG;
    use crate::devices::virtio::testing::Harness;
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
        fn handle_event(&mut self, event: DeviceEvent, _: &mut DeviceContext<'_>) {
            self.0.lock().unwrap().events.push(event);
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
            Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap())),
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
}
