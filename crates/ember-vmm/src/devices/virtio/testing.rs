//! Test helpers for queue-level device tests (compiled for tests only): a [`GuestQueue`] that
//! plays the driver (writes descriptors and the available ring into guest memory, reads the
//! used ring), and a [`Harness`] that lends a device a [`DeviceContext`] over test memory and
//! a private epoll set.
//!
//! ```ignore
//! let mut h = Harness::new(&[256, 256]);            // two queues
//! let mut rxq = h.guest_queue(0, 16);                // the driver's side of queue 0
//! let head = rxq.add_chain(&h.mem, &[(0x10_000, 512, true)]);
//! device.activate(&mut h.ctx()).unwrap();
//! device.handle_event(DeviceEvent::Queue(0), &mut h.ctx());
//! assert_eq!(rxq.next_used(&h.mem), Some((head, 44)));
//! ```

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::{Epoll, EpollEvent};
use vmm_sys_util::eventfd::EventFd;

use super::device::{DeviceContext, EventRegistry, Readiness, key};
use super::health::DeviceHealth;
use super::interrupt::Interrupt;

/// Descriptor flag: another descriptor follows.
pub const DESC_F_NEXT: u16 = 1;
/// Descriptor flag: device-writable.
pub const DESC_F_WRITE: u16 = 2;

/// The driver's view of one split queue in test memory.
#[derive(Debug, Clone)]
pub struct GuestQueue {
    /// Descriptor table address.
    pub desc: u64,
    /// Available ring address.
    pub avail: u64,
    /// Used ring address.
    pub used: u64,
    /// Queue size.
    pub size: u16,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
}

impl GuestQueue {
    /// A queue of `size` entries whose rings start at `base` (4 KiB aligned).
    pub fn new(base: u64, size: u16) -> GuestQueue {
        let desc = base;
        let avail = desc + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size) + 3) & !3;
        GuestQueue {
            desc,
            avail,
            used,
            size,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
        }
    }

    /// The device-side queue for it (ready, addresses set).
    pub fn device_queue(&self, max_size: u16) -> Queue {
        let mut q = Queue::new(max_size).expect("valid max size");
        q.set_size(self.size);
        q.set_desc_table_address(Some(self.desc as u32), Some((self.desc >> 32) as u32));
        q.set_avail_ring_address(Some(self.avail as u32), Some((self.avail >> 32) as u32));
        q.set_used_ring_address(Some(self.used as u32), Some((self.used >> 32) as u32));
        q.set_ready(true);
        q
    }

    /// Writes raw descriptor `index`.
    pub fn write_desc(
        &self,
        mem: &GuestMemoryMmap,
        index: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let at = GuestAddress(self.desc + 16 * u64::from(index));
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        mem.write_slice(&d, at).expect("descriptor in test memory");
    }

    /// Makes descriptor chain `head` available.
    pub fn publish(&mut self, mem: &GuestMemoryMmap, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        mem.write_obj(head, GuestAddress(self.avail + 4 + 2 * slot))
            .expect("avail ring in test memory");
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .expect("avail idx in test memory");
    }

    /// Writes a chain of `(address, length, device-writable)` buffers and publishes it;
    /// returns its head index.
    pub fn add_chain(&mut self, mem: &GuestMemoryMmap, bufs: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, writable)) in bufs.iter().enumerate() {
            let index = self.next_desc;
            let next = (index + 1) % self.size;
            let mut flags = if writable { DESC_F_WRITE } else { 0 };
            if i + 1 < bufs.len() {
                flags |= DESC_F_NEXT;
            }
            self.write_desc(mem, index, addr, len, flags, next);
            self.next_desc = next;
        }
        self.publish(mem, head);
        head
    }

    /// The next used element `(id, len)` not seen yet.
    pub fn next_used(&mut self, mem: &GuestMemoryMmap) -> Option<(u16, u32)> {
        let idx: u16 = mem
            .read_obj(GuestAddress(self.used + 2))
            .expect("used idx in test memory");
        if idx == self.used_seen {
            return None;
        }
        let slot = u64::from(self.used_seen % self.size);
        let at = self.used + 4 + 8 * slot;
        let id: u32 = mem.read_obj(GuestAddress(at)).expect("used elem");
        let len: u32 = mem.read_obj(GuestAddress(at + 4)).expect("used elem");
        self.used_seen = self.used_seen.wrapping_add(1);
        Some((id as u16, len))
    }

    /// Sets the available index to `idx` without publishing anything (a hostile driver).
    pub fn set_avail_idx(&mut self, mem: &GuestMemoryMmap, idx: u16) {
        self.avail_idx = idx;
        mem.write_obj(idx, GuestAddress(self.avail + 2))
            .expect("avail idx in test memory");
    }

    /// The used ring's index.
    pub fn used_idx(&self, mem: &GuestMemoryMmap) -> u16 {
        mem.read_obj(GuestAddress(self.used + 2))
            .expect("used idx in test memory")
    }

    /// The used ring's flags (bit 0: the device does not want notifications).
    pub fn used_flags(&self, mem: &GuestMemoryMmap) -> u16 {
        mem.read_obj(GuestAddress(self.used))
            .expect("used flags in test memory")
    }
}

/// A device's surroundings in a test: guest memory, queues, interrupt and an epoll set.
pub struct Harness {
    /// Guest memory (16 MiB at 0).
    pub mem: GuestMemoryMmap,
    /// Device-side queues.
    pub queues: Vec<Queue>,
    /// The device's interrupt.
    pub interrupt: Interrupt,
    /// Where the device registers descriptors.
    pub events: EventRegistry,
    epoll: Arc<Epoll>,
    /// Acked features.
    pub acked_features: u64,
    /// The device's health (guest error counters, broken state). A test that marks the
    /// device broken plays the transport's part itself (stop delivering events).
    pub health: DeviceHealth,
}

impl Harness {
    /// Test memory and `max_sizes.len()` unconfigured queues.
    pub fn new(max_sizes: &[u16]) -> Harness {
        let mem =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).expect("test memory");
        let epoll = Arc::new(Epoll::new().expect("epoll"));
        Harness {
            mem,
            queues: max_sizes
                .iter()
                .map(|&m| Queue::new(m).expect("queue"))
                .collect(),
            interrupt: Interrupt::new(crate::devices::IrqLine::Eventfd(
                EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"),
            )),
            events: EventRegistry::new(epoll.clone(), 0),
            epoll,
            acked_features: 1 << 32,
            health: DeviceHealth::new("test"),
        }
    }

    /// Sets queue `index` up as the driver would, rings at `base`; returns the driver side.
    pub fn guest_queue(&mut self, index: usize, base: u64, size: u16) -> GuestQueue {
        let g = GuestQueue::new(base, size);
        let max = self.queues[index].max_size();
        self.queues[index] = g.device_queue(max);
        g
    }

    /// A context for one device call.
    pub fn ctx(&mut self) -> DeviceContext<'_> {
        DeviceContext {
            mem: &self.mem,
            queues: &mut self.queues,
            acked_features: self.acked_features,
            interrupt: &self.interrupt,
            events: &self.events,
            health: &self.health,
        }
    }

    /// Device descriptors ready now (waits up to `timeout_ms`).
    pub fn poll(&self, timeout_ms: i32) -> Vec<(u32, Readiness)> {
        let mut evs = [EpollEvent::default(); 64];
        let n = self.epoll.wait(timeout_ms, &mut evs).unwrap_or(0);
        evs[..n]
            .iter()
            .map(|e| {
                let (_, _, token) = key::unpack(e.data());
                (token, Readiness::from_flags(e.event_set()))
            })
            .collect()
    }

    /// Number of interrupts raised since the last call.
    pub fn interrupts(&self) -> u64 {
        self.interrupt
            .line()
            .eventfd()
            .and_then(|e| e.read().ok())
            .unwrap_or(0)
    }
}
