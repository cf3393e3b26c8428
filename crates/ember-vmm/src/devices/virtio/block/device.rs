//! The [`VirtioDevice`] face of [`Block`]: one request queue; woken by its notifications,
//! its rate limiter's timer and its own kick (work left over after the per-event budget).

use super::Block;
use crate::devices::virtio::TYPE_BLOCK;
use crate::devices::virtio::device::{
    ActivateError, DeviceContext, DeviceEvent, EventRegistry, VirtioDevice,
};
use crate::devices::virtio::wakeup::Wake;
use crate::snapshot::codec::Writer;

const QUEUE_SIZES: [u16; 1] = [super::QUEUE_SIZE];

impl Block {
    /// Serves the queue and tells the driver.
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

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn id(&self) -> &str {
        Block::id(self)
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        Block::avail_features(self)
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        Block::read_config(self, offset, data);
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
        serde_json::json!({
            "path_on_host": self.params.path,
            "is_read_only": self.params.read_only,
            "capacity_sectors": self.nsectors,
            "rate_limiter": self.limiter.describe(),
        })
    }
}
