//! The [`VirtioDevice`] face of [`Rng`]: one request queue; woken by its notifications, its
//! rate limiter's timer and its own kick (work left over after the per-event budget).

use super::Rng;
use crate::devices::virtio::TYPE_RNG;
use crate::devices::virtio::device::{
    ActivateError, DeviceContext, DeviceEvent, EventRegistry, VirtioDevice,
};
use crate::devices::virtio::wakeup::Wake;
use crate::snapshot::codec::Writer;

const QUEUE_SIZES: [u16; 1] = [super::QUEUE_SIZE];

/// The id of the entropy device (there is at most one).
pub const RNG_ID: &str = "rng";

impl Rng {
    fn run(&mut self, ctx: &mut DeviceContext<'_>) {
        let Some(q) = ctx.queues.get_mut(0) else {
            return;
        };
        let out = self.process_queue(ctx.mem, q, ctx.health);
        if out.completed > 0 {
            ctx.signal_used(0);
        }
        if out.more {
            self.wakeups.rearm();
        }
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        TYPE_RNG
    }

    fn id(&self) -> &str {
        RNG_ID
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        Rng::avail_features(self)
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        // virtio-rng has no configuration space.
        data.fill(0);
    }

    fn activate(&mut self, ctx: &mut DeviceContext<'_>) -> Result<(), ActivateError> {
        self.wakeups.activate(ctx, &self.limiter)
    }

    fn handle_event(&mut self, event: DeviceEvent, ctx: &mut DeviceContext<'_>) {
        match self.wakeups.classify(&event) {
            Wake::Serve => self.run(ctx),
            Wake::LimiterTimer => {
                if self.on_rate_limiter_timer() {
                    self.run(ctx);
                }
            }
            Wake::Nothing => {}
        }
    }

    fn reset(&mut self, events: &EventRegistry) {
        self.wakeups.reset(events, &self.limiter);
    }

    fn save_state(&self, w: &mut Writer) {
        self.encode_state(w);
    }

    fn describe(&self) -> serde_json::Value {
        serde_json::json!({ "rate_limiter": self.limiter.describe() })
    }
}
