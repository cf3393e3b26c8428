//! Attaches virtio-mmio devices to a VM and owns them while it runs: each device gets the next
//! 4 KiB slot of the MMIO window at [`MMIO_BASE`] and the next GSI from [`FIRST_GSI`] (its
//! interrupt line, pulsed with `KVM_IRQ_LINE`), one ioeventfd per queue on its `QueueNotify` register, and a
//! `virtio_mmio.device=4K@<addr>:<gsi>` kernel command line entry (how Linux, and the probe
//! guest, find them). Slot order is the order the registry lists devices in; a restore
//! reuses the saved addresses and GSIs.
//!
//! Snapshots: [`VirtioManager::quiesce`] locks every device (the device thread stops touching
//! guest memory) until the memory file is written; [`Quiesced::save`] runs each device's
//! `prepare_save` and collects one [`DeviceSnapshot`] per device, which `snapshot::state`
//! stores as one section each.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use kvm_ioctls::IoEventAddress;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::device::{ActivateError, EventRegistry, VirtioDevice};
use super::event_loop::{self, EventLoop, LoopSlot};
use super::interrupt::Interrupt;
use super::mmio::{MMIO_LEN, MmioTransport, NOTIFY_OFFSET, TransportState, VirtioCore, lock_core};
use crate::devices::IrqLine;
use crate::devices::bus::{Bus, BusOverlap, SharedDevice};
use crate::snapshot::codec::{DecodeError, Reader, Writer};
use crate::vstate::vm::{Vm, VmError};

/// First virtio-mmio window (Firecracker's address): 0xd000_0000, 4 KiB per device.
pub const MMIO_BASE: u64 = 0xd000_0000;
/// First GSI given to a virtio device (after the legacy ISA lines the VM uses).
pub const FIRST_GSI: u32 = 5;
/// Last GSI available (the IOAPIC has 24 pins).
pub const LAST_GSI: u32 = 23;
/// Most virtio devices per VM.
pub const MAX_DEVICES: usize = (LAST_GSI - FIRST_GSI + 1) as usize;

/// Errors attaching, restoring or saving virtio devices.
#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    /// More devices than GSIs.
    #[error("{count} virtio devices configured; at most {MAX_DEVICES} are supported")]
    TooMany {
        /// Devices asked for.
        count: usize,
    },
    /// A host resource (eventfd, thread, socket) failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: io::Error,
    },
    /// A KVM registration failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// The MMIO window is taken.
    #[error(transparent)]
    Bus(#[from] BusOverlap),
    /// A device could not be created, restored or activated.
    #[error("virtio device {id}: {source}")]
    Device {
        /// The device's id.
        id: String,
        /// Why.
        source: ActivateError,
    },
    /// A snapshot section does not fit this VM.
    #[error("virtio device {id}: {message}")]
    Snapshot {
        /// The device's id.
        id: String,
        /// What is wrong.
        message: String,
    },
}

impl VirtioError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> VirtioError {
        let what = what.into();
        move |source| VirtioError::Io { what, source }
    }
}

/// One device's snapshot: where it sat, the transport's state and the device's own bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSnapshot {
    /// Virtio device type.
    pub device_type: u32,
    /// The device's id ([`VirtioDevice::id`]).
    pub id: String,
    /// Base of its MMIO window.
    pub mmio_base: u64,
    /// Its interrupt line.
    pub gsi: u32,
    /// Transport registers and queues.
    pub transport: TransportState,
    /// The device's own state ([`VirtioDevice::save_state`]).
    pub device: Vec<u8>,
}

impl DeviceSnapshot {
    /// Appends the encoding (one snapshot section).
    pub fn encode(&self, w: &mut Writer) {
        w.u32(self.device_type);
        w.bytes(self.id.as_bytes());
        w.u64(self.mmio_base);
        w.u32(self.gsi);
        self.transport.encode(w);
        w.bytes(&self.device);
    }

    /// Decodes one section.
    pub fn decode(r: &mut Reader<'_>) -> Result<DeviceSnapshot, DecodeError> {
        let device_type = r.u32("virtio device type")?;
        let id = std::str::from_utf8(r.bytes("virtio device id")?)
            .map_err(|_| DecodeError::Invalid {
                what: "virtio device id",
                detail: "not UTF-8".into(),
            })?
            .to_string();
        let mmio_base = r.u64("virtio mmio base")?;
        let gsi = r.u32("virtio gsi")?;
        let in_window = mmio_base >= MMIO_BASE
            && (mmio_base - MMIO_BASE).is_multiple_of(MMIO_LEN)
            && (mmio_base - MMIO_BASE) / MMIO_LEN < MAX_DEVICES as u64;
        if !in_window || !(FIRST_GSI..=LAST_GSI).contains(&gsi) {
            return Err(DecodeError::Invalid {
                what: "virtio device placement",
                detail: format!("window {mmio_base:#x}, GSI {gsi}"),
            });
        }
        let transport = TransportState::decode(r)?;
        let device = r.bytes("virtio device state")?.to_vec();
        Ok(DeviceSnapshot {
            device_type,
            id,
            mmio_base,
            gsi,
            transport,
            device,
        })
    }
}

struct Slot {
    transport: Arc<Mutex<MmioTransport>>,
    core: Arc<Mutex<VirtioCore>>,
    mmio_base: u64,
    gsi: u32,
    id: String,
    device_type: u32,
}

/// The virtio devices of a running VM and their device thread.
pub struct VirtioManager {
    slots: Vec<Slot>,
    event_loop: Option<EventLoop>,
}

impl std::fmt::Debug for VirtioManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.slots.iter().map(|s| s.id.as_str()).collect();
        f.debug_struct("VirtioManager")
            .field("devices", &ids)
            .finish_non_exhaustive()
    }
}

fn eventfd(what: &str) -> Result<EventFd, VirtioError> {
    EventFd::new(EFD_NONBLOCK).map_err(VirtioError::io(format!("eventfd for {what}")))
}

fn dup(evt: &EventFd, what: &str) -> Result<EventFd, VirtioError> {
    evt.try_clone()
        .map_err(VirtioError::io(format!("dup eventfd for {what}")))
}

impl VirtioManager {
    /// No devices, no thread.
    pub fn empty() -> VirtioManager {
        VirtioManager {
            slots: Vec::new(),
            event_loop: None,
        }
    }

    /// Attaches `devices` (fresh, for a boot) in order.
    pub fn attach(
        vm: &Vm,
        mmio: &mut Bus,
        mem: &GuestMemoryMmap,
        devices: Vec<Box<dyn VirtioDevice>>,
    ) -> Result<VirtioManager, VirtioError> {
        let placed = devices
            .into_iter()
            .enumerate()
            .map(|(i, d)| {
                let base = MMIO_BASE + i as u64 * MMIO_LEN;
                (d, base, FIRST_GSI + i as u32, None)
            })
            .collect();
        Self::build(vm, mmio, mem, placed)
    }

    /// Re-attaches restored devices at their saved places, restoring transport state (and
    /// re-activating the devices that were active).
    pub fn restore(
        vm: &Vm,
        mmio: &mut Bus,
        mem: &GuestMemoryMmap,
        devices: Vec<(Box<dyn VirtioDevice>, &DeviceSnapshot)>,
    ) -> Result<VirtioManager, VirtioError> {
        let placed = devices
            .into_iter()
            .map(|(d, s)| (d, s.mmio_base, s.gsi, Some(&s.transport)))
            .collect();
        Self::build(vm, mmio, mem, placed)
    }

    #[allow(clippy::type_complexity)]
    fn build(
        vm: &Vm,
        mmio: &mut Bus,
        mem: &GuestMemoryMmap,
        devices: Vec<(Box<dyn VirtioDevice>, u64, u32, Option<&TransportState>)>,
    ) -> Result<VirtioManager, VirtioError> {
        if devices.is_empty() {
            return Ok(VirtioManager::empty());
        }
        if devices.len() > MAX_DEVICES {
            return Err(VirtioError::TooMany {
                count: devices.len(),
            });
        }
        let epoll = event_loop::new_epoll().map_err(VirtioError::io("virtio epoll"))?;
        let mut slots = Vec::with_capacity(devices.len());
        let mut loop_slots = Vec::with_capacity(devices.len());
        for (index, (device, base, gsi, saved)) in devices.into_iter().enumerate() {
            let id = device.id().to_string();
            let device_type = device.device_type();
            if slots.iter().any(|s: &Slot| s.gsi == gsi) {
                return Err(VirtioError::Snapshot {
                    id,
                    message: format!("GSI {gsi} is used twice"),
                });
            }
            let mut queue_evts = Vec::new();
            for q in 0..device.queue_max_sizes().len() {
                let evt = eventfd(&id)?;
                vm.fd()
                    .register_ioevent(&evt, &IoEventAddress::Mmio(base + NOTIFY_OFFSET), q as u32)
                    .map_err(|source| VmError {
                        what: "KVM_IOEVENTFD",
                        source,
                    })?;
                queue_evts.push(evt);
            }
            let kick = eventfd(&id)?;
            let interrupt = Arc::new(Interrupt::new(IrqLine::Gsi(vm.line(gsi))));
            let events = EventRegistry::new(epoll.clone(), index as u16);
            let core =
                VirtioCore::new(device, mem.clone(), interrupt, events).map_err(|source| {
                    VirtioError::Device {
                        id: id.clone(),
                        source,
                    }
                })?;
            let core = Arc::new(Mutex::new(core));
            let loop_evts = queue_evts
                .iter()
                .map(|e| dup(e, &id))
                .collect::<Result<Vec<_>, _>>()?;
            let mut transport = MmioTransport::new(core.clone(), dup(&kick, &id)?, queue_evts);
            if let Some(state) = saved {
                transport
                    .restore(state)
                    .map_err(|source| VirtioError::Device {
                        id: id.clone(),
                        source,
                    })?;
            }
            let transport = Arc::new(Mutex::new(transport));
            let shared: SharedDevice = transport.clone();
            mmio.insert(base, MMIO_LEN, shared)?;
            loop_slots.push(LoopSlot {
                core: core.clone(),
                queue_evts: loop_evts,
                kick,
            });
            tracing::debug!(device = %id, base, gsi, "virtio device attached");
            slots.push(Slot {
                transport,
                core,
                mmio_base: base,
                gsi,
                id,
                device_type,
            });
        }
        let event_loop = EventLoop::start(epoll, loop_slots)
            .map_err(VirtioError::io("starting the virtio device thread"))?;
        Ok(VirtioManager {
            slots,
            event_loop: Some(event_loop),
        })
    }

    /// `virtio_mmio.device=` entries for the kernel command line (each preceded by a space).
    pub fn cmdline_entries(&self) -> String {
        self.slots
            .iter()
            .map(|s| format!(" virtio_mmio.device=4K@{:#x}:{}", s.mmio_base, s.gsi))
            .collect()
    }

    /// `(id, device type, MMIO base, GSI)` of each device, in slot order.
    pub fn devices(&self) -> Vec<(String, u32, u64, u32)> {
        self.slots
            .iter()
            .map(|s| (s.id.clone(), s.device_type, s.mmio_base, s.gsi))
            .collect()
    }

    /// Every device as JSON (`GET /ember/devices`): placement, whether the driver activated
    /// it, how many events reached it, whether it is broken (and why), its guest error counters
    /// ([`super::health::DeviceHealth::describe`]), its queues as the driver set them up,
    /// and what the device says of itself ([`VirtioDevice::describe`]).
    pub fn describe(&self) -> Vec<serde_json::Value> {
        use virtio_queue::QueueT;
        self.slots
            .iter()
            .map(|s| {
                let core = lock_core(&s.core);
                let queues: Vec<serde_json::Value> = core
                    .queues
                    .iter()
                    .map(|q| {
                        serde_json::json!({
                            "size": q.size(),
                            "ready": q.ready(),
                            "desc_table": q.desc_table(),
                            "avail_ring": q.avail_ring(),
                            "used_ring": q.used_ring(),
                            "next_avail": q.next_avail(),
                            "next_used": q.next_used(),
                        })
                    })
                    .collect();
                let mut v = serde_json::json!({
                    "id": s.id,
                    "device_type": s.device_type,
                    "mmio_base": s.mmio_base,
                    "gsi": s.gsi,
                    "active": core.active,
                    "events": core.events_seen,
                    "queues": queues,
                    "backend": core.device.describe(),
                });
                if let (Some(obj), serde_json::Value::Object(health)) =
                    (v.as_object_mut(), core.health.describe())
                {
                    obj.extend(health);
                }
                v
            })
            .collect()
    }

    /// Stops device work until the returned guard is dropped (VM paused; used around a
    /// snapshot so guest memory does not change while it is written).
    pub fn quiesce(&self) -> Quiesced<'_> {
        let guards = self
            .slots
            .iter()
            .map(|s| {
                let t = match s.transport.lock() {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
                let c = lock_core(&s.core);
                (s, t, c)
            })
            .collect();
        Quiesced { guards }
    }
}

impl Drop for VirtioManager {
    fn drop(&mut self) {
        // Stop the thread before the devices go (their descriptors close with them).
        self.event_loop.take();
    }
}

/// Devices held still for a snapshot.
pub struct Quiesced<'a> {
    #[allow(clippy::type_complexity)]
    guards: Vec<(
        &'a Slot,
        MutexGuard<'a, MmioTransport>,
        MutexGuard<'a, VirtioCore>,
    )>,
}

impl std::fmt::Debug for Quiesced<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Quiesced")
            .field("devices", &self.guards.len())
            .finish()
    }
}

impl Quiesced<'_> {
    /// Runs `prepare_save` on active devices (not broken ones) and returns every device's
    /// snapshot; a broken device's status carries `DEVICE_NEEDS_RESET`.
    pub fn save(&mut self) -> Vec<DeviceSnapshot> {
        self.guards
            .iter_mut()
            .map(|(slot, transport, core)| {
                if core.active && !core.health.is_broken() {
                    core.with_device(|d, ctx| d.prepare_save(ctx));
                }
                let mut w = Writer::default();
                core.device.save_state(&mut w);
                DeviceSnapshot {
                    device_type: slot.device_type,
                    id: slot.id.clone(),
                    mmio_base: slot.mmio_base,
                    gsi: slot.gsi,
                    transport: transport.save(core),
                    device: w.into_vec(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_snapshot_round_trip_and_placement_checks() {
        let snap = DeviceSnapshot {
            device_type: 19,
            id: "vsock".into(),
            mmio_base: MMIO_BASE + MMIO_LEN,
            gsi: 6,
            transport: TransportState {
                status: 15,
                acked_features: 1 << 32,
                features_select: 1,
                driver_features_select: 1,
                queue_select: 2,
                config_generation: 0,
                interrupt_status: 1,
                active: true,
                queues: vec![virtio_queue::QueueState {
                    max_size: 256,
                    next_avail: 3,
                    next_used: 3,
                    event_idx_enabled: false,
                    size: 32,
                    ready: true,
                    desc_table: 0x1000,
                    avail_ring: 0x2000,
                    used_ring: 0x3000,
                }],
            },
            device: vec![1, 2, 3],
        };
        let mut w = Writer::default();
        snap.encode(&mut w);
        let bytes = w.into_vec();
        let mut r = Reader::new(&bytes);
        assert_eq!(DeviceSnapshot::decode(&mut r).unwrap(), snap);
        r.finish("all").unwrap();
        for cut in 0..bytes.len() {
            assert!(DeviceSnapshot::decode(&mut Reader::new(&bytes[..cut])).is_err());
        }
        let mut bad = snap.clone();
        bad.gsi = 2;
        let mut w = Writer::default();
        bad.encode(&mut w);
        assert!(DeviceSnapshot::decode(&mut Reader::new(&w.into_vec())).is_err());
    }
}
