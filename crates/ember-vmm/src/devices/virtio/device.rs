//! The [`VirtioDevice`] trait: the contract between a device model and the virtio-mmio
//! transport, and the [`DeviceContext`] a device works through.
//!
//! # Life of a device
//! 1. Created by [`super::registry`] from the VM configuration (boot) or from its snapshot
//!    section (restore). The manager gives it an MMIO slot, a GSI and one ioeventfd per queue.
//! 2. The guest driver negotiates features and sets the queues up through the transport
//!    (a vCPU thread; the device only answers [`VirtioDevice::read_config`] and friends).
//! 3. On `DRIVER_OK` the transport checks the queues and calls [`VirtioDevice::activate`]
//!    on the vCPU thread: store what is needed, register the device's own file descriptors
//!    with [`DeviceContext::events`], return. Do no I/O there.
//! 4. From then on, on the VM's device thread (never a vCPU thread):
//!    [`VirtioDevice::handle_event`] with [`DeviceEvent::Activated`] once, then
//!    [`DeviceEvent::Queue`] for every guest notification and [`DeviceEvent::Fd`] for the
//!    device's own descriptors. Process queues through `ctx.queues` and `ctx.mem`, signal
//!    the guest with [`DeviceContext::signal_used`].
//! 5. A driver reset (status 0) calls [`VirtioDevice::reset`]; the transport forgets the
//!    queues and unregisters every descriptor the device registered. `reset` must cope
//!    with a device whose `activate` failed half-way (remove what is there, ignore the rest).
//! 6. A device that finds its rings in an impossible state calls [`DeviceContext::fault`]
//!    and stops touching the queues. When its call returns, the transport calls
//!    [`VirtioDevice::reset`] (so it drops its descriptors from the device thread), delivers
//!    it nothing more, and reports `DEVICE_NEEDS_RESET`; the driver's reset (5.) makes it
//!    usable again (see [`super::health`]). A broken device is not snapshotted as active:
//!    its `DEVICE_NEEDS_RESET` is saved and restored, `prepare_save` is not called.
//! 7. Snapshot (VM paused, device thread quiesced): [`VirtioDevice::prepare_save`] (active
//!    devices only), then [`VirtioDevice::save_state`]. The transport saves features, status,
//!    and queue state itself. A restored device is rebuilt by its own `restore` constructor
//!    (registered in [`super::registry`]); if it was active, the transport restores its
//!    queues and calls `activate` again, then delivers [`DeviceEvent::Activated`].
//!
//! # Rules
//! - Never block: every descriptor a device registers must be non-blocking, and work per
//!   event must be bounded (a guest or host peer must not be able to stall the thread): at
//!   most [`super::wakeup::BUDGET`] chains per queue per event, then a self-kick
//!   ([`super::wakeup::Kick`]) brings the device back behind whatever else is ready.
//! - Never panic on guest input, never trust it: pop chains with [`super::ring`] and walk them
//!   with [`super::desc_chain`]. A request the device refuses fails that request (used
//!   length 0 or an error status) and is counted with [`DeviceContext::guest_error`]; a ring
//!   or chain no correct driver produces breaks the device ([`DeviceContext::fault`]).
//! - Never log guest-triggered events directly: [`DeviceContext::guest_error`] and
//!   [`DeviceContext::fault`] count them and rate-limit the lines.
//! - Bound memory: buffering per request or connection must have a limit.
//! - Events may be spurious (a descriptor that is not ready, a queue with nothing new).

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::health::{DeviceHealth, ErrorKind};
use super::interrupt::Interrupt;
use crate::snapshot::codec::Writer;

/// A virtio device model, driven by the virtio-mmio transport. See the module docs for the
/// calling sequence. Implementations live in `devices/virtio/<name>/` and are registered in
/// [`super::registry`].
pub trait VirtioDevice: Send {
    /// The virtio device ID ([`super::TYPE_VSOCK`], [`super::TYPE_BLOCK`], ...).
    fn device_type(&self) -> u32;

    /// A stable name for logs and snapshots: the drive id, the interface id, `"vsock"`,
    /// `"rng"`. On restore, the registry uses it to find the device's configuration.
    fn id(&self) -> &str;

    /// The maximum size of each queue (powers of two, at most 32768); the slice's length is
    /// the number of queues.
    fn queue_max_sizes(&self) -> &[u16];

    /// The feature bits the device offers. Include [`super::VIRTIO_F_VERSION_1`]: the
    /// transport refuses `FEATURES_OK` without it.
    fn avail_features(&self) -> u64;

    /// Reads device configuration space at `offset` (relative to 0x100). Bytes beyond the
    /// config space read as zero (the transport pre-fills `data` with zeros).
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Writes device configuration space; `false` if the write was refused (the transport
    /// counts and logs it, rate-limited). The default refuses: no device here has writable
    /// configuration.
    fn write_config(&mut self, offset: u64, data: &[u8]) -> bool {
        let _ = (offset, data);
        false
    }

    /// The driver set `DRIVER_OK` (or a snapshot with an active device was restored): the
    /// queues in `ctx` are ready and valid. Runs on a vCPU thread: register descriptors with
    /// `ctx.events` and return; the first work happens in
    /// `handle_event(DeviceEvent::Activated)`. An error makes the transport set
    /// `DEVICE_NEEDS_RESET`.
    fn activate(&mut self, ctx: &mut DeviceContext<'_>) -> Result<(), ActivateError>;

    /// An event for an active device, on the device thread.
    fn handle_event(&mut self, event: DeviceEvent, ctx: &mut DeviceContext<'_>);

    /// The driver reset the device: drop per-activation state and remove (or close) the
    /// descriptors registered with `events`; the transport resets the queues. The device may
    /// be activated again later.
    fn reset(&mut self, events: &EventRegistry);

    /// The VM is paused and about to be snapshotted (called only while active, with the
    /// device thread quiesced). Vsock publishes its transport-reset event here. Default:
    /// nothing.
    fn prepare_save(&mut self, ctx: &mut DeviceContext<'_>) {
        let _ = ctx;
    }

    /// Appends the device's own snapshot state (its restore constructor decodes it).
    /// Features, status and queues are saved by the transport. Default: nothing.
    fn save_state(&self, w: &mut Writer) {
        let _ = w;
    }

    /// What the device is attached to and its limits, as JSON, for the ember extension
    /// `GET /ember/devices` (tests and operators; not a stable format). Default: null.
    fn describe(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}

/// Why [`VirtioDevice::activate`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// A queue the device needs is not set up (not ready, or outside guest memory).
    #[error("queue {index}: {reason}")]
    Queue {
        /// Queue index.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// A host resource failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// Anything else, in the device's words.
    #[error("{0}")]
    Device(String),
}

/// What woke the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceEvent {
    /// Delivered once after each activation (and after a restore): process whatever is
    /// already pending.
    Activated,
    /// The driver notified queue `index` (the notification eventfd is already drained).
    Queue(u16),
    /// A descriptor the device registered with [`EventRegistry::add`] is ready.
    Fd {
        /// The token given at registration.
        token: u32,
        /// What it is ready for.
        readiness: Readiness,
    },
}

/// Which readiness a registered descriptor is watched for: level-triggered unless `edge`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Interest {
    /// Readable (or a pending connection on a listener).
    pub read: bool,
    /// Writable.
    pub write: bool,
    /// Edge-triggered: an event only when the readiness changes (the device must then drain
    /// the descriptor, or remember that it did not).
    pub edge: bool,
}

impl Interest {
    /// Readable only.
    pub const READ: Interest = Interest {
        read: true,
        write: false,
        edge: false,
    };
    /// Writable only.
    pub const WRITE: Interest = Interest {
        read: false,
        write: true,
        edge: false,
    };
    /// Both.
    pub const BOTH: Interest = Interest {
        read: true,
        write: true,
        edge: false,
    };
    /// Neither (hang-ups and errors are still reported).
    pub const NONE: Interest = Interest {
        read: false,
        write: false,
        edge: false,
    };
    /// Readable, edge-triggered.
    pub const EDGE_READ: Interest = Interest {
        read: true,
        write: false,
        edge: true,
    };
    /// Both, edge-triggered.
    pub const EDGE_BOTH: Interest = Interest {
        read: true,
        write: true,
        edge: true,
    };

    fn flags(self) -> EventSet {
        let mut f = EventSet::READ_HANG_UP;
        if self.read {
            f |= EventSet::IN;
        }
        if self.write {
            f |= EventSet::OUT;
        }
        if self.edge {
            f |= EventSet::EDGE_TRIGGERED;
        }
        f
    }
}

/// What a ready descriptor is ready for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Readiness {
    /// Data (or a connection) can be read.
    pub readable: bool,
    /// Data can be written.
    pub writable: bool,
    /// The peer closed its side (`EPOLLRDHUP`) or both sides are closed (`EPOLLHUP`).
    pub hangup: bool,
    /// An error is pending on the descriptor (`EPOLLERR`).
    pub error: bool,
}

impl Readiness {
    pub(crate) fn from_flags(f: EventSet) -> Readiness {
        Readiness {
            readable: f.contains(EventSet::IN),
            writable: f.contains(EventSet::OUT),
            hangup: f.intersects(EventSet::HANG_UP | EventSet::READ_HANG_UP),
            error: f.contains(EventSet::ERROR),
        }
    }
}

/// Epoll key layout: slot (16 bits) | kind (8 bits) | token (32 bits).
pub(crate) mod key {
    /// A queue notification eventfd; the token is the queue index.
    pub const KIND_QUEUE: u64 = 0;
    /// A descriptor a device registered.
    pub const KIND_DEVICE: u64 = 1;
    /// The slot's activation kick.
    pub const KIND_KICK: u64 = 2;
    /// The loop's own stop eventfd.
    pub const KIND_STOP: u64 = 3;

    /// Packs a key.
    pub const fn pack(slot: u16, kind: u64, token: u32) -> u64 {
        ((slot as u64) << 40) | (kind << 32) | token as u64
    }

    /// Unpacks a key.
    pub const fn unpack(key: u64) -> (u16, u64, u32) {
        ((key >> 40) as u16, (key >> 32) & 0xff, key as u32)
    }
}

/// A device's handle on the device thread's epoll set: register, change and remove the
/// device's own descriptors. Tokens are the device's own numbering. Closing a descriptor
/// also removes it.
#[derive(Debug)]
pub struct EventRegistry {
    epoll: Arc<Epoll>,
    slot: u16,
}

impl EventRegistry {
    pub(crate) fn new(epoll: Arc<Epoll>, slot: u16) -> EventRegistry {
        EventRegistry { epoll, slot }
    }

    fn event(&self, token: u32, interest: Interest) -> EpollEvent {
        EpollEvent::new(
            interest.flags(),
            key::pack(self.slot, key::KIND_DEVICE, token),
        )
    }

    /// Watches `fd` (which must stay open until removed) for `interest`; its events arrive
    /// as [`DeviceEvent::Fd`] with `token`.
    pub fn add(&self, fd: &impl AsRawFd, token: u32, interest: Interest) -> io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Add,
            fd.as_raw_fd(),
            self.event(token, interest),
        )
    }

    /// Changes what `fd` is watched for.
    pub fn modify(&self, fd: &impl AsRawFd, token: u32, interest: Interest) -> io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Modify,
            fd.as_raw_fd(),
            self.event(token, interest),
        )
    }

    /// Stops watching `fd` (do it before closing it, or let the close do it).
    pub fn remove(&self, fd: &impl AsRawFd) -> io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Delete,
            fd.as_raw_fd(),
            EpollEvent::default(),
        )
    }
}

/// Everything an active device works with, lent to it for the duration of one call.
pub struct DeviceContext<'a> {
    /// Guest memory.
    pub mem: &'a GuestMemoryMmap,
    /// The device's queues, in index order, as the driver set them up.
    pub queues: &'a mut [Queue],
    /// The features the driver acknowledged.
    pub acked_features: u64,
    /// The device's interrupt line.
    pub interrupt: &'a Interrupt,
    /// The device thread's epoll set, for the device's own descriptors.
    pub events: &'a EventRegistry,
    /// Guest error counters, rate-limited logs and the broken state.
    pub health: &'a DeviceHealth,
}

impl std::fmt::Debug for DeviceContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceContext")
            .field("queues", &self.queues.len())
            .field("acked_features", &self.acked_features)
            .finish_non_exhaustive()
    }
}

impl DeviceContext<'_> {
    /// True if the driver acknowledged feature `bit`.
    pub fn has_feature(&self, bit: u32) -> bool {
        self.acked_features & (1u64 << bit) != 0
    }

    /// Tells the driver that queue `index` has new used buffers, unless the driver
    /// suppressed the interrupt: with `EVENT_IDX` through `used_event`, without it through
    /// the available ring's `VIRTQ_AVAIL_F_NO_INTERRUPT` flag (a hint the spec allows a
    /// device to honour). Call once after a batch of `add_used`.
    pub fn signal_used(&mut self, index: usize) {
        let needed = match self.queues.get_mut(index) {
            Some(q) if q.event_idx_enabled() => q.needs_notification(self.mem).unwrap_or(true),
            Some(q) => {
                let flags: u16 = self
                    .mem
                    .read_obj(vm_memory::GuestAddress(q.avail_ring()))
                    .unwrap_or(0);
                u16::from_le(flags) & 1 == 0
            }
            None => return,
        };
        if needed {
            self.interrupt.signal_used_queue();
        }
    }

    /// Tells the driver the configuration space changed.
    pub fn signal_config_change(&self) {
        self.interrupt.signal_config_change();
    }

    /// Counts a guest error that fails one request and logs it, rate-limited.
    pub fn guest_error(&self, kind: ErrorKind, what: std::fmt::Arguments<'_>) {
        self.health.report(kind, what);
    }

    /// The rings are in a state no correct driver produces: marks the device broken (see
    /// [`super::health`]). Stop touching the queues and return; the transport halts the
    /// device when the current call returns.
    pub fn fault(&self, kind: ErrorKind, what: std::fmt::Arguments<'_>) {
        self.health.break_device(kind, what);
    }

    /// True once the device is broken (until the driver resets it).
    pub fn is_broken(&self) -> bool {
        self.health.is_broken()
    }
}
