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
//!
//! A hostile driver (see [`super::health`]): register accesses the spec does not allow (unknown
//! offsets, wrong widths, queue registers outside set-up, invalid queue sizes or ring
//! alignments, notifications for queues that do not exist or are not ready) are ignored,
//! counted and logged at most once per second per device; so are status protocol mistakes
//! (features not offered, status bits cleared without a reset, `DRIVER_OK` too early or on a
//! device that needs a reset). A device whose activation fails, or that finds its rings in an
//! impossible state, is *broken*: [`VirtioCore`] stops delivering it events and calls its
//! `reset` (its descriptors leave the device thread), the status register shows
//! `DEVICE_NEEDS_RESET`, the configuration-change interrupt is raised, and only a driver reset
//! (status 0) brings it back. A snapshot keeps `DEVICE_NEEDS_RESET` and a restore honours it.

use std::sync::{Arc, Mutex, MutexGuard};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::device::{ActivateError, DeviceContext, DeviceEvent, EventRegistry, VirtioDevice};
use super::health::{DeviceHealth, ErrorKind};
use super::interrupt::Interrupt;
use super::ring::check_rings;
use super::{VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use crate::devices::bus::BusDevice;

mod state;
pub use self::state::TransportState;

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
    /// The driver activated the device (`DRIVER_OK` accepted), until its reset.
    pub(crate) active: bool,
    /// Guest error counters and the broken state (shared with the transport and the API).
    pub(crate) health: Arc<DeviceHealth>,
    /// The device broke and was halted (its `reset` already ran).
    halted: bool,
    /// Events that reached the core (`GET /ember/devices`: a device that stays busy shows).
    pub(crate) events_seen: u64,
}

impl std::fmt::Debug for VirtioCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioCore")
            .field("device", &self.device.id())
            .field("active", &self.active)
            .field("broken", &self.health.is_broken())
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
        let health = Arc::new(DeviceHealth::new(device.id()));
        Ok(VirtioCore {
            device,
            queues,
            mem,
            interrupt,
            events,
            acked_features: 0,
            active: false,
            health,
            halted: false,
            events_seen: 0,
        })
    }

    /// Runs `f` with the device and a context over the rest; halts the device if it broke.
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
            health: &self.health,
        };
        let r = f(self.device.as_mut(), &mut ctx);
        if self.health.is_broken() && !self.halted {
            self.halt();
        }
        r
    }

    /// The device broke: it gets no more events, drops its descriptors from the device
    /// thread (its `reset`), and the driver hears about it (`DEVICE_NEEDS_RESET` is read from
    /// the health state; the configuration-change interrupt tells the driver to look).
    fn halt(&mut self) {
        self.halted = true;
        let VirtioCore { device, events, .. } = self;
        device.reset(events);
        self.interrupt.signal_config_change();
    }

    /// Delivers an event (ignored while inactive: notifications before `DRIVER_OK` are
    /// dropped, and counted; ignored while broken).
    pub(crate) fn handle_event(&mut self, event: DeviceEvent) {
        self.events_seen = self.events_seen.wrapping_add(1);
        if self.health.is_broken() {
            return;
        }
        if let DeviceEvent::Queue(index) = event {
            let ready = self
                .queues
                .get(usize::from(index))
                .is_some_and(|q| q.ready());
            if !self.active || !ready {
                self.health.report(
                    ErrorKind::Register,
                    format_args!("notification for queue {index}, which is not in use"),
                );
                return;
            }
        }
        if self.active {
            self.with_device(|d, ctx| d.handle_event(event, ctx));
        }
    }

    /// Checks the queues and activates the device; a failure breaks it.
    fn activate(&mut self) -> Result<(), ActivateError> {
        let result = self.try_activate();
        if let Err(e) = &result {
            self.health
                .break_device(ErrorKind::Driver, format_args!("activation failed: {e}"));
            if !self.halted {
                self.halt();
            }
        }
        result
    }

    fn try_activate(&mut self) -> Result<(), ActivateError> {
        let event_idx = self.acked_features & (1u64 << VIRTIO_RING_F_EVENT_IDX) != 0;
        for (index, q) in self.queues.iter_mut().enumerate() {
            q.set_event_idx(event_idx);
            if q.ready() {
                check_rings(q, &self.mem).map_err(|e| ActivateError::Queue {
                    index,
                    reason: e.to_string(),
                })?;
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
        if !self.halted {
            device.reset(events);
        }
        for q in queues.iter_mut() {
            q.reset();
        }
        self.acked_features = 0;
        self.active = false;
        self.halted = false;
        self.health.clear();
    }

    /// The device's health (counters, broken state).
    pub fn health(&self) -> &Arc<DeviceHealth> {
        &self.health
    }
}

/// The register file of one virtio-mmio device.
pub struct MmioTransport {
    core: Arc<Mutex<VirtioCore>>,
    interrupt: Arc<Interrupt>,
    health: Arc<DeviceHealth>,
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
        let (interrupt, health, device_type, avail_features, queue_max) = {
            let c = lock_core(&core);
            (
                c.interrupt.clone(),
                c.health.clone(),
                c.device.device_type(),
                c.device.avail_features(),
                c.device.queue_max_sizes().to_vec(),
            )
        };
        MmioTransport {
            core,
            interrupt,
            health,
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

    /// The device status register: what the driver set, plus `DEVICE_NEEDS_RESET` while the
    /// device is broken.
    pub fn status(&self) -> u32 {
        if self.health.is_broken() {
            self.status | status::DEVICE_NEEDS_RESET
        } else {
            self.status
        }
    }

    fn register_error(&self, what: std::fmt::Arguments<'_>) {
        self.health.report(ErrorKind::Register, what);
    }

    fn driver_error(&self, what: std::fmt::Arguments<'_>) {
        self.health.report(ErrorKind::Driver, what);
    }

    /// Runs `f` on the selected queue if queue registers may be written now (between
    /// `FEATURES_OK` and `DRIVER_OK`); `f`'s error is a register error.
    fn with_queue(&self, offset: u64, f: impl FnOnce(&mut Queue) -> Result<(), String>) {
        if self.status & (status::FEATURES_OK | status::DRIVER_OK | status::FAILED)
            != status::FEATURES_OK
        {
            self.register_error(format_args!(
                "queue register {offset:#x} written outside set-up (status {:#x})",
                self.status
            ));
            return;
        }
        let mut core = self.core();
        let select = self.queue_select;
        let Some(q) = core.queues.get_mut(select as usize) else {
            drop(core);
            self.register_error(format_args!(
                "queue register {offset:#x} written for queue {select}, which does not exist"
            ));
            return;
        };
        if let Err(e) = f(q) {
            drop(core);
            self.register_error(format_args!("queue {select}: register {offset:#x}: {e}"));
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
        // DEVICE_NEEDS_RESET is the device's to set: a driver writing back what it read
        // neither sets nor clears it.
        let value = value & !status::DEVICE_NEEDS_RESET;
        let added = value & !self.status;
        if value & self.status != self.status {
            self.driver_error(format_args!(
                "status {value:#x} clears bits of {:#x} without a reset",
                self.status
            ));
            return;
        }
        let mut new = value;
        if added & status::FEATURES_OK != 0 {
            let unknown = self.acked_features & !self.avail_features;
            let version_1 = self.acked_features & (1u64 << VIRTIO_F_VERSION_1) != 0;
            if unknown != 0 || !version_1 || self.status & status::DRIVER == 0 {
                self.driver_error(format_args!(
                    "feature negotiation refused: acknowledged {:#x}, offered {:#x}",
                    self.acked_features, self.avail_features
                ));
                new &= !status::FEATURES_OK;
            }
        }
        if added & status::DRIVER_OK != 0 {
            if new & status::FEATURES_OK == 0 {
                self.driver_error(format_args!("DRIVER_OK before FEATURES_OK"));
                return;
            }
            if self.health.is_broken() {
                self.driver_error(format_args!("DRIVER_OK on a device that needs a reset"));
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
                // The core broke the device (DEVICE_NEEDS_RESET, configuration interrupt).
                Err(_) => return,
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
            0x70 => self.status(),
            // No shared memory regions: length and base read as all-ones.
            0xb0 | 0xb4 | 0xb8 | 0xbc => u32::MAX,
            0xfc => self.config_generation,
            _ => {
                self.register_error(format_args!("read of unknown register {offset:#x}"));
                0
            }
        }
    }

    fn write_register(&mut self, offset: u64, v: u32) {
        match offset {
            0x14 => self.features_select = v,
            0x20 => {
                if self.status & (status::DRIVER | status::FEATURES_OK) != status::DRIVER {
                    self.register_error(format_args!(
                        "driver features written outside negotiation (status {:#x})",
                        self.status
                    ));
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
            0x38 => self.with_queue(offset, |q| {
                let size = u16::try_from(v).map_err(|_| format!("invalid size {v}"))?;
                q.try_set_size(size)
                    .map_err(|_| format!("invalid size {v} (maximum {})", q.max_size()))
            }),
            0x44 => self.with_queue(offset, |q| match v {
                0 | 1 => {
                    q.set_ready(v == 1);
                    Ok(())
                }
                _ => Err(format!("QueueReady {v} is neither 0 nor 1")),
            }),
            0x50 => match self.queue_evts.get(v as usize) {
                Some(evt) => {
                    if let Err(e) = evt.write(1) {
                        tracing::warn!(error = %e, "cannot forward a queue notification");
                    }
                }
                None => self.register_error(format_args!(
                    "notification for queue {v}, which does not exist"
                )),
            },
            0x64 => self.interrupt.ack(v),
            0x70 => self.set_status(v),
            0x80 => self.with_queue(offset, |q| set_ring(q, Ring::Desc, Some(v), None)),
            0x84 => self.with_queue(offset, |q| set_ring(q, Ring::Desc, None, Some(v))),
            0x90 => self.with_queue(offset, |q| set_ring(q, Ring::Avail, Some(v), None)),
            0x94 => self.with_queue(offset, |q| set_ring(q, Ring::Avail, None, Some(v))),
            0xa0 => self.with_queue(offset, |q| set_ring(q, Ring::Used, Some(v), None)),
            0xa4 => self.with_queue(offset, |q| set_ring(q, Ring::Used, None, Some(v))),
            _ => self.register_error(format_args!(
                "write to unknown or read-only register {offset:#x}"
            )),
        }
    }

    /// Saves the transport's registers and queues (device thread quiesced by the caller).
    pub(crate) fn save(&self, core: &VirtioCore) -> TransportState {
        TransportState {
            status: self.status(),
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
        self.status = state.status & !status::DEVICE_NEEDS_RESET;
        self.acked_features = state.acked_features;
        self.features_select = state.features_select;
        self.driver_features_select = state.driver_features_select;
        self.queue_select = state.queue_select;
        self.config_generation = state.config_generation;
        self.interrupt.set_status(state.interrupt_status);
        core.acked_features = state.acked_features;
        if state.status & status::DEVICE_NEEDS_RESET != 0 {
            // Broken when saved: stays broken (not activated) until the driver resets it.
            core.health
                .set_broken("the device needed a reset when the snapshot was taken".into());
            core.halted = true;
            core.active = state.active;
            return Ok(());
        }
        if state.active {
            for (index, q) in core.queues.iter().enumerate() {
                if q.ready()
                    && let Err(e) = check_rings(q, &core.mem)
                {
                    return Err(ActivateError::Queue {
                        index,
                        reason: format!("saved rings: {e}"),
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

/// Which ring address register.
#[derive(Debug, Clone, Copy)]
enum Ring {
    Desc,
    Avail,
    Used,
}

/// Sets the low or high half of a ring address; a misaligned address is refused (the old
/// one stays) without `virtio_queue` logging it.
fn set_ring(q: &mut Queue, ring: Ring, low: Option<u32>, high: Option<u32>) -> Result<(), String> {
    let current = match ring {
        Ring::Desc => q.desc_table(),
        Ring::Avail => q.avail_ring(),
        Ring::Used => q.used_ring(),
    };
    let low = low.map_or(current & 0xffff_ffff, u64::from);
    let high = high.map_or(current >> 32, u64::from);
    let addr = vm_memory::GuestAddress((high << 32) | low);
    let result = match ring {
        Ring::Desc => q.try_set_desc_table_address(addr),
        Ring::Avail => q.try_set_avail_ring_address(addr),
        Ring::Used => q.try_set_used_ring_address(addr),
    };
    result.map_err(|e| format!("{:#x}: {e}", addr.0))
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_OFFSET {
            data.fill(0);
            self.core().device.read_config(offset - CONFIG_OFFSET, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            self.register_error(format_args!(
                "register read of {} bytes at {offset:#x} (32-bit aligned only)",
                data.len()
            ));
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_register(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_OFFSET {
            let accepted = self
                .core()
                .device
                .write_config(offset - CONFIG_OFFSET, data);
            if accepted {
                self.config_generation = self.config_generation.wrapping_add(1);
            } else {
                self.register_error(format_args!(
                    "write of {} bytes to read-only configuration space at {:#x}",
                    data.len(),
                    offset - CONFIG_OFFSET
                ));
            }
            return;
        }
        let (Ok(bytes), true) = (<[u8; 4]>::try_from(data), offset.is_multiple_of(4)) else {
            self.register_error(format_args!(
                "register write of {} bytes at {offset:#x} (32-bit aligned only)",
                data.len()
            ));
            return;
        };
        self.write_register(offset, u32::from_le_bytes(bytes));
    }
}

#[cfg(test)]
mod tests;
