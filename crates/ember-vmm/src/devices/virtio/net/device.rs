//! The [`VirtioDevice`] face of [`Net`]: RX (0) and TX (1) queues; woken by their
//! notifications, the TAP's readability, both rate limiters' timers and its own kick.
//!
//! The TAP is watched (level-triggered) only while no frame is deferred: a deferred frame
//! waits for RX buffers (an RX notification) or RX tokens (the RX timer), and a readable TAP
//! would only wake the thread for nothing. If the TAP reports an error or hang-up (its
//! interface was deleted), it is dropped from the watch list for good and RX stops.

use virtio_queue::QueueT;

use super::{Net, RX_QUEUE, TX_QUEUE};
use crate::devices::virtio::TYPE_NET;
use crate::devices::virtio::device::{
    ActivateError, DeviceContext, DeviceEvent, EventRegistry, Interest, VirtioDevice,
};
use crate::devices::virtio::wakeup::{unwatch_limiter, watch_limiter};
use crate::snapshot::codec::Writer;

const TOKEN_TAP: u32 = 0;
const TOKEN_RX_LIMITER: u32 = 1;
const TOKEN_TX_LIMITER: u32 = 2;
const TOKEN_KICK: u32 = 3;
const QUEUE_SIZES: [u16; 2] = [super::QUEUE_SIZE, super::QUEUE_SIZE];

/// How the TAP is watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum TapWatch {
    /// Not registered (inactive).
    #[default]
    Off,
    /// Registered for readability.
    Reading,
    /// Registered, readability ignored (a frame is deferred).
    Paused,
    /// Removed after an error; RX is over until a reset.
    Broken,
}

impl Net {
    fn rx(&mut self, ctx: &mut DeviceContext<'_>) {
        if self.tap_watch == TapWatch::Broken || ctx.is_broken() {
            return;
        }
        if let Some(q) = ctx.queues.get_mut(RX_QUEUE) {
            let out = self.process_rx(ctx.mem, q, ctx.health);
            if out.completed > 0 {
                ctx.signal_used(RX_QUEUE);
            }
            if out.more {
                self.arm_kick();
            }
        }
        self.update_tap_watch(ctx.events);
    }

    fn tx(&mut self, ctx: &mut DeviceContext<'_>) {
        if ctx.is_broken() {
            return;
        }
        if let Some(q) = ctx.queues.get_mut(TX_QUEUE) {
            let out = self.process_tx(ctx.mem, q, ctx.health);
            if out.completed > 0 {
                ctx.signal_used(TX_QUEUE);
            }
            if out.more {
                self.arm_kick();
            }
        }
    }

    fn arm_kick(&self) {
        if self.kick_watched {
            self.kick.arm();
        }
    }

    fn update_tap_watch(&mut self, events: &EventRegistry) {
        let want = if self.wants_tap_reads() {
            TapWatch::Reading
        } else {
            TapWatch::Paused
        };
        if matches!(self.tap_watch, TapWatch::Off | TapWatch::Broken) || want == self.tap_watch {
            return;
        }
        let interest = if want == TapWatch::Reading {
            Interest::READ
        } else {
            Interest::NONE
        };
        match events.modify(&self.tap, TOKEN_TAP, interest) {
            Ok(()) => self.tap_watch = want,
            Err(e) => tracing::warn!(iface = %self.params.id, error = %e, "changing TAP watch"),
        }
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn id(&self) -> &str {
        Net::id(self)
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        Net::avail_features(self)
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        Net::read_config(self, offset, data);
    }

    fn activate(&mut self, ctx: &mut DeviceContext<'_>) -> Result<(), ActivateError> {
        for index in [RX_QUEUE, TX_QUEUE] {
            if !ctx.queues.get(index).is_some_and(|q| q.ready()) {
                return Err(ActivateError::Queue {
                    index,
                    reason: "not ready".into(),
                });
            }
        }
        let io = |what: &'static str| move |source| ActivateError::Io { what, source };
        // The kick exists since `Net::new`: this runs on a vCPU thread, which may not create
        // descriptors.
        self.kick.clear();
        if !self.kick_watched {
            self.kick
                .register(ctx.events, TOKEN_KICK)
                .map_err(io("watching the net kick"))?;
            self.kick_watched = true;
        }
        watch_limiter(ctx.events, &self.rx_limiter, TOKEN_RX_LIMITER)
            .map_err(io("watching the RX rate limiter"))?;
        watch_limiter(ctx.events, &self.tx_limiter, TOKEN_TX_LIMITER)
            .map_err(io("watching the TX rate limiter"))?;
        ctx.events
            .add(&self.tap, TOKEN_TAP, Interest::READ)
            .map_err(io("watching the TAP"))?;
        self.tap_watch = TapWatch::Reading;
        Ok(())
    }

    fn handle_event(&mut self, event: DeviceEvent, ctx: &mut DeviceContext<'_>) {
        match event {
            DeviceEvent::Activated => {
                self.tx(ctx);
                self.rx(ctx);
            }
            DeviceEvent::Queue(q) if usize::from(q) == RX_QUEUE => self.rx(ctx),
            DeviceEvent::Queue(q) if usize::from(q) == TX_QUEUE => self.tx(ctx),
            DeviceEvent::Queue(_) => {}
            DeviceEvent::Fd {
                token: TOKEN_TAP,
                readiness,
            } => {
                if (readiness.error || readiness.hangup) && !readiness.readable {
                    tracing::error!(
                        iface = %self.params.id,
                        tap = %self.params.host_dev_name,
                        "TAP reported an error or hang-up; receive stops"
                    );
                    let _ = ctx.events.remove(&self.tap);
                    self.tap_watch = TapWatch::Broken;
                    return;
                }
                self.rx(ctx);
            }
            DeviceEvent::Fd {
                token: TOKEN_RX_LIMITER,
                ..
            } => {
                if self.on_rx_limiter_timer() {
                    self.rx(ctx);
                }
            }
            DeviceEvent::Fd {
                token: TOKEN_TX_LIMITER,
                ..
            } => {
                if self.on_tx_limiter_timer() {
                    self.tx(ctx);
                }
            }
            DeviceEvent::Fd {
                token: TOKEN_KICK, ..
            } => {
                self.kick.clear();
                self.tx(ctx);
                self.rx(ctx);
            }
            DeviceEvent::Fd { .. } => {}
        }
    }

    fn reset(&mut self, events: &EventRegistry) {
        if matches!(self.tap_watch, TapWatch::Reading | TapWatch::Paused) {
            let _ = events.remove(&self.tap);
        }
        self.tap_watch = TapWatch::Off;
        unwatch_limiter(events, &self.rx_limiter);
        unwatch_limiter(events, &self.tx_limiter);
        if self.kick_watched {
            self.kick.unregister(events);
            self.kick_watched = false;
        }
        self.rx_len = 0;
    }

    fn save_state(&self, w: &mut Writer) {
        self.encode_state(w);
    }

    fn describe(&self) -> serde_json::Value {
        let mac = self.params.guest_mac.map(|m| {
            m.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":")
        });
        serde_json::json!({
            "host_dev_name": self.tap.name(),
            "guest_mac": mac,
            "rx_rate_limiter": self.rx_limiter.describe(),
            "tx_rate_limiter": self.tx_limiter.describe(),
        })
    }
}
