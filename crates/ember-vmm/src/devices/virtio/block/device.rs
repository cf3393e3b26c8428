//! The [`VirtioDevice`] face of [`Block`]: one request queue; woken by its notifications,
//! its rate limiter's timer and its own kick (work left over after the per-event budget).

use virtio_queue::QueueT;

use super::Block;
use crate::devices::virtio::TYPE_BLOCK;
use crate::devices::virtio::device::{
    ActivateError, DeviceContext, DeviceEvent, EventRegistry, VirtioDevice,
};
use crate::devices::virtio::wakeup::{Kick, unwatch_limiter, watch_limiter};
use crate::snapshot::codec::Writer;

const TOKEN_LIMITER: u32 = 0;
const TOKEN_KICK: u32 = 1;
const QUEUE_SIZES: [u16; 1] = [super::QUEUE_SIZE];

impl Block {
    /// Serves the queue and tells the driver.
    fn run(&mut self, ctx: &mut DeviceContext<'_>) {
        let Some(q) = ctx.queues.get_mut(0) else {
            return;
        };
        let out = self.process_queue(ctx.mem, q);
        if out.completed > 0 {
            ctx.signal_used(0);
        }
        if out.more
            && let Some(k) = &self.kick
        {
            k.arm();
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
        if !ctx.queues.first().is_some_and(|q| q.ready()) {
            return Err(ActivateError::Queue {
                index: 0,
                reason: "not ready".into(),
            });
        }
        let io = |what: &'static str| move |source| ActivateError::Io { what, source };
        let kick = Kick::new().map_err(io("block kick eventfd"))?;
        kick.register(ctx.events, TOKEN_KICK)
            .map_err(io("watching the block kick"))?;
        watch_limiter(ctx.events, &self.limiter, TOKEN_LIMITER)
            .map_err(io("watching the block rate limiter"))?;
        self.kick = Some(kick);
        Ok(())
    }

    fn handle_event(&mut self, event: DeviceEvent, ctx: &mut DeviceContext<'_>) {
        match event {
            DeviceEvent::Activated | DeviceEvent::Queue(0) => self.run(ctx),
            DeviceEvent::Queue(_) => {}
            DeviceEvent::Fd {
                token: TOKEN_LIMITER,
                ..
            } => {
                if self.on_rate_limiter_timer() {
                    self.run(ctx);
                }
            }
            DeviceEvent::Fd {
                token: TOKEN_KICK, ..
            } => {
                if let Some(k) = &self.kick {
                    k.clear();
                }
                self.run(ctx);
            }
            DeviceEvent::Fd { .. } => {}
        }
    }

    fn reset(&mut self, events: &EventRegistry) {
        unwatch_limiter(events, &self.limiter);
        if let Some(k) = self.kick.take() {
            k.unregister(events);
        }
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
