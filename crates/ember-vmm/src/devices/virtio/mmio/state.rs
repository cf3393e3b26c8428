//! The transport's snapshot state ([`TransportState`]) and its binary encoding.

use virtio_queue::QueueState;

use crate::snapshot::codec::{DecodeError, Reader, Writer};

/// The transport's part of a device's snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportState {
    /// Device status register.
    pub status: u32,
    /// Features the driver acknowledged.
    pub acked_features: u64,
    /// `DeviceFeaturesSel`.
    pub features_select: u32,
    /// `DriverFeaturesSel`.
    pub driver_features_select: u32,
    /// `QueueSel`.
    pub queue_select: u32,
    /// `ConfigGeneration`.
    pub config_generation: u32,
    /// `InterruptStatus`.
    pub interrupt_status: u32,
    /// Whether the device was activated.
    pub active: bool,
    /// Per-queue state.
    pub queues: Vec<QueueState>,
}

/// Most queues a device may have in a snapshot.
const MAX_QUEUES: usize = 64;

impl TransportState {
    /// Appends the encoding.
    pub fn encode(&self, w: &mut Writer) {
        w.u32(self.status);
        w.u64(self.acked_features);
        w.u32(self.features_select);
        w.u32(self.driver_features_select);
        w.u32(self.queue_select);
        w.u32(self.config_generation);
        w.u32(self.interrupt_status);
        w.u8(u8::from(self.active));
        w.u32(self.queues.len() as u32);
        for q in &self.queues {
            w.u16(q.max_size);
            w.u16(q.next_avail);
            w.u16(q.next_used);
            w.u8(u8::from(q.event_idx_enabled));
            w.u16(q.size);
            w.u8(u8::from(q.ready));
            w.u64(q.desc_table);
            w.u64(q.avail_ring);
            w.u64(q.used_ring);
        }
    }

    /// Decodes what [`TransportState::encode`] wrote.
    pub fn decode(r: &mut Reader<'_>) -> Result<TransportState, DecodeError> {
        let bool_of = |v: u8, what: &'static str| match v {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::Invalid {
                what,
                detail: format!("{v} is not a boolean"),
            }),
        };
        let status = r.u32("virtio status")?;
        let acked_features = r.u64("virtio acked features")?;
        let features_select = r.u32("virtio features select")?;
        let driver_features_select = r.u32("virtio driver features select")?;
        let queue_select = r.u32("virtio queue select")?;
        let config_generation = r.u32("virtio config generation")?;
        let interrupt_status = r.u32("virtio interrupt status")?;
        let active = bool_of(r.u8("virtio active")?, "virtio active")?;
        let n = r.count("virtio queue count", 34)?;
        if n > MAX_QUEUES {
            return Err(DecodeError::Invalid {
                what: "virtio queue count",
                detail: format!("{n} queues"),
            });
        }
        let mut queues = Vec::with_capacity(n);
        for _ in 0..n {
            queues.push(QueueState {
                max_size: r.u16("queue max size")?,
                next_avail: r.u16("queue next avail")?,
                next_used: r.u16("queue next used")?,
                event_idx_enabled: bool_of(r.u8("queue event idx")?, "queue event idx")?,
                size: r.u16("queue size")?,
                ready: bool_of(r.u8("queue ready")?, "queue ready")?,
                desc_table: r.u64("queue descriptor table")?,
                avail_ring: r.u64("queue available ring")?,
                used_ring: r.u64("queue used ring")?,
            });
        }
        Ok(TransportState {
            status,
            acked_features,
            features_select,
            driver_features_select,
            queue_select,
            config_generation,
            interrupt_status,
            active,
            queues,
        })
    }
}
