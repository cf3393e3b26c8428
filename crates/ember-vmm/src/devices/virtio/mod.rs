//! Virtio devices over the virtio-mmio transport (virtio 1.x, MMIO version 2).
//!
//! The pieces, in data-path order:
//!
//! - [`device`]: the [`VirtioDevice`] trait every device model implements (features, config
//!   space, activation, events, snapshot state), and the [`DeviceContext`] it works through;
//! - [`mmio`]: the transport — the register file a vCPU thread reads and writes on the MMIO
//!   bus, feature negotiation, queue set-up, activation on `DRIVER_OK`, reset;
//! - [`interrupt`]: the interrupt status register and the interrupt line behind it;
//! - [`event_loop`]: the device thread — one epoll loop per VM that receives queue
//!   notifications (ioeventfds) and the devices' own file descriptors, and runs device work
//!   off the vCPU threads;
//! - [`manager`]: attaches devices (MMIO window slot, GSI and its line, ioeventfds, kernel command
//!   line entries), quiesces them for a snapshot, saves and restores their state;
//! - [`registry`]: **the one place a device kind is added**: which devices a configuration
//!   asks for, and how each kind is rebuilt from a snapshot section;
//! - [`health`]: a device facing a hostile guest: guest error counters, log lines
//!   rate-limited per device and kind, and the *broken* state (`DEVICE_NEEDS_RESET`) an
//!   impossible ring state puts a device in until the driver resets it;
//! - [`ring`] and [`desc_chain`]: how every device pops chains (checking the available index
//!   and heads) and walks them (checking loops, bounds, directions, lengths), without
//!   allocating;
//! - [`vsock`]: the vsock device with Firecracker's hybrid Unix-socket backend;
//! - [`block`], [`net`], [`rng`]: virtio-blk on a raw file, virtio-net on a TAP, virtio-rng
//!   on getrandom. Their queue-level models know nothing of the transport, report what they
//!   completed in a [`QueueOutcome`] and what went wrong to a
//!   [`DeviceHealth`](health::DeviceHealth): a bad request fails that request, an impossible
//!   ring or chain breaks the device, never a panic or a loop; each has a `device.rs` with
//!   its [`VirtioDevice`] face, and [`wakeup`] holds what they watch besides queues (rate
//!   limiter timers, a self-kick for work left at the per-event budget).
//!
//! # Adding a device
//! 1. Implement [`VirtioDevice`] in `devices/virtio/<name>/` (queue processing in
//!    `handle_event`, device state in `save_state`, a `restore` constructor).
//! 2. Add it to [`registry::devices_for_config`] and [`registry::restore_device`].
//!
//! Nothing else changes: the manager gives it a slot, an interrupt line, queue notification
//! eventfds, a command-line entry and a snapshot section.

pub mod block;
pub mod desc_chain;
pub mod device;
pub mod event_loop;
pub mod health;
#[cfg(test)]
mod hostile_tests;
pub mod interrupt;
pub mod manager;
pub mod mmio;
pub mod net;
pub mod registry;
pub mod ring;
pub mod rng;
#[cfg(test)]
pub(crate) mod test_utils;
#[cfg(test)]
pub mod testing;
pub mod vsock;
pub mod wakeup;

pub use self::device::{
    ActivateError, DeviceContext, DeviceEvent, EventRegistry, Interest, Readiness, VirtioDevice,
};
pub use self::health::{DeviceHealth, ErrorKind};
pub use self::interrupt::Interrupt;
pub use self::manager::{VirtioError, VirtioManager};

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

/// Device type (virtio device ID) of a network card.
pub const TYPE_NET: u32 = 1;
/// Device type of a block device.
pub const TYPE_BLOCK: u32 = 2;
/// Device type of an entropy source.
pub const TYPE_RNG: u32 = 4;
/// Device type of a vsock device.
pub const TYPE_VSOCK: u32 = 19;

/// Feature bit: the device follows virtio 1.x (required by the transport; offer it).
pub const VIRTIO_F_VERSION_1: u32 = 32;
/// Feature bit: indirect descriptors.
pub const VIRTIO_RING_F_INDIRECT_DESC: u32 = 28;
/// Feature bit: `used_event`/`avail_event` notification suppression.
pub const VIRTIO_RING_F_EVENT_IDX: u32 = 29;

/// The feature mask of one bit.
pub const fn feature(bit: u32) -> u64 {
    1u64 << bit
}

/// Why a block or net device could not be rebuilt from its snapshot state.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The saved bytes are malformed or do not fit the configuration.
    #[error("saved state: {0}")]
    State(#[from] crate::snapshot::codec::DecodeError),
    /// The backend (drive file, TAP) named by the configuration cannot be opened.
    #[error("{0}")]
    Backend(String),
}

/// What one pass over a queue did. A model that broke its device (see [`health`]) returns
/// with `more` false: nothing is left to do until the driver resets it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct QueueOutcome {
    /// Chains returned to the driver through the used ring (interrupt-worthy if non-zero).
    pub completed: u32,
    /// Processing stopped because the rate limiter refused a request; the request stays in
    /// the queue and processing resumes after the limiter's timer event.
    pub throttled: bool,
    /// Processing stopped at the per-call budget ([`wakeup::BUDGET`]); work may be left.
    pub more: bool,
}

/// Copies device configuration space bytes at `offset` into `data` (out-of-range bytes
/// read as zero, like an absent register).
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = config.get(start..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}

/// Publishes `head` with `len` bytes written; `false` if the used ring is unusable, which
/// breaks the device (the caller stops).
pub(crate) fn add_used(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    head: u16,
    len: u32,
    out: &mut QueueOutcome,
    health: &DeviceHealth,
) -> bool {
    match ring::add_used(queue, mem, head, len) {
        Ok(()) => {
            out.completed += 1;
            true
        }
        Err(e) => {
            health.break_device(ErrorKind::Ring, format_args!("returning chain {head}: {e}"));
            false
        }
    }
}

/// Pops the next head for a queue-level model: `None` when the queue is empty or the ring is
/// in an impossible state (which breaks the device).
pub(crate) fn pop_head(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    health: &DeviceHealth,
) -> Option<u16> {
    match ring::pop_head(queue, mem) {
        Ok(head) => head,
        Err(e) => {
            health.break_device(ErrorKind::Ring, format_args!("{e}"));
            None
        }
    }
}
