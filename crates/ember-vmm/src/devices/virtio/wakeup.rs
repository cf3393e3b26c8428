//! Descriptors the block, net and rng devices watch on the device thread besides their
//! queues: their rate limiters' timers, and a self-kick that brings a device back after it
//! stopped at its per-event work budget (so one busy queue cannot starve the other devices
//! on the thread, and leftover work is not lost: the queue notification was already
//! consumed).

use std::io;

use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use virtio_queue::QueueT;

use super::device::{ActivateError, DeviceContext, DeviceEvent, EventRegistry, Interest};
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

/// The wake-up plumbing of a device with one request queue and a rate limiter (block, rng):
/// activation checks the queue and watches the limiter's timer and a self-kick, events are
/// sorted into what the device must do, and reset stops watching both.
///
/// The kick is created with the device ([`SingleQueueWakeups::new`], on the VMM thread):
/// activation runs on the vCPU thread that wrote DRIVER_OK, which may not create descriptors
/// under seccomp (a Linux guest's drivers activating a drive died of SIGSYS on `eventfd2`).
#[derive(Debug)]
pub struct SingleQueueWakeups {
    kick: Kick,
    watched: bool,
}

/// What a device event asks of a single-queue device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// Serve the queue (activation, a queue notification, or the device's own kick).
    Serve,
    /// The rate limiter's timer fired: replenish, then serve if tokens are back.
    LimiterTimer,
    /// Not for this device.
    Nothing,
}

const TOKEN_LIMITER: u32 = 0;
const TOKEN_KICK: u32 = 1;

impl SingleQueueWakeups {
    /// Creates the kick (not watched until activation).
    pub fn new() -> io::Result<SingleQueueWakeups> {
        Ok(SingleQueueWakeups {
            kick: Kick::new()?,
            watched: false,
        })
    }

    /// Checks that queue 0 is ready and starts watching the kick and `limiter`'s timer.
    pub fn activate(
        &mut self,
        ctx: &mut DeviceContext<'_>,
        limiter: &RateLimiter,
    ) -> Result<(), ActivateError> {
        if !ctx.queues.first().is_some_and(|q| q.ready()) {
            return Err(ActivateError::Queue {
                index: 0,
                reason: "not ready".into(),
            });
        }
        let io = |what: &'static str| move |source| ActivateError::Io { what, source };
        self.kick.clear();
        if !self.watched {
            self.kick
                .register(ctx.events, TOKEN_KICK)
                .map_err(io("watching the device kick"))?;
            self.watched = true;
        }
        watch_limiter(ctx.events, limiter, TOKEN_LIMITER)
            .map_err(io("watching the rate limiter timer"))?;
        Ok(())
    }

    /// What `event` asks of the device (consuming a kick).
    pub fn classify(&self, event: &DeviceEvent) -> Wake {
        match event {
            DeviceEvent::Activated | DeviceEvent::Queue(0) => Wake::Serve,
            DeviceEvent::Fd {
                token: TOKEN_LIMITER,
                ..
            } => Wake::LimiterTimer,
            DeviceEvent::Fd {
                token: TOKEN_KICK, ..
            } => {
                self.kick.clear();
                Wake::Serve
            }
            DeviceEvent::Queue(_) | DeviceEvent::Fd { .. } => Wake::Nothing,
        }
    }

    /// Asks for another turn (work was left at the per-event budget).
    pub fn rearm(&self) {
        if self.watched {
            self.kick.arm();
        }
    }

    /// Stops watching the kick and `limiter`'s timer.
    pub fn reset(&mut self, events: &EventRegistry, limiter: &RateLimiter) {
        unwatch_limiter(events, limiter);
        if self.watched {
            self.kick.unregister(events);
            self.watched = false;
        }
    }
}
