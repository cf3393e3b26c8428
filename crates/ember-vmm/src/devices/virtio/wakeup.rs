//! Descriptors the block, net and rng devices watch on the device thread besides their
//! queues: their rate limiters' timers, and a self-kick that brings a device back after it
//! stopped at its per-event work budget (so one busy queue cannot starve the other devices
//! on the thread, and leftover work is not lost: the queue notification was already
//! consumed).

use std::io;

use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::device::{EventRegistry, Interest};
use crate::rate_limiter::RateLimiter;

/// Most chains (or frames) one device handles per event before yielding the thread.
pub const BUDGET: u32 = 256;

/// An eventfd a device writes to wake itself up on the device thread.
#[derive(Debug)]
pub struct Kick(EventFd);

impl Kick {
    /// A new, unsignalled kick.
    pub fn new() -> io::Result<Kick> {
        EventFd::new(EFD_NONBLOCK).map(Kick)
    }

    /// Watches the kick under `token`.
    pub fn register(&self, events: &EventRegistry, token: u32) -> io::Result<()> {
        events.add(&self.0, token, Interest::READ)
    }

    /// Stops watching it.
    pub fn unregister(&self, events: &EventRegistry) {
        let _ = events.remove(&self.0);
    }

    /// Asks for another turn.
    pub fn arm(&self) {
        if let Err(e) = self.0.write(1) {
            tracing::warn!(error = %e, "virtio: cannot re-arm the device kick");
        }
    }

    /// Consumes the wake-up (call when its event arrives).
    pub fn clear(&self) {
        let _ = self.0.read();
    }
}

/// Watches `limiter`'s timer under `token` (nothing for an unlimited limiter).
pub fn watch_limiter(events: &EventRegistry, limiter: &RateLimiter, token: u32) -> io::Result<()> {
    match limiter.timer_fd() {
        Some(fd) => events.add(&fd, token, Interest::READ),
        None => Ok(()),
    }
}

/// Stops watching `limiter`'s timer.
pub fn unwatch_limiter(events: &EventRegistry, limiter: &RateLimiter) {
    if let Some(fd) = limiter.timer_fd() {
        let _ = events.remove(&fd);
    }
}
