//! Test helpers for the block, net and rng queue models: a small guest memory and a
//! driver-side view of a split queue in it built on virtio-queue's own `MockSplitQueue` (raw
//! descriptor placement, including deliberately broken chains, and used-ring reads by
//! index), plus [`wait_for_timer`] for rate-limiter tests. Tests of a device's
//! `VirtioDevice` face use the transport's [`super::testing::Harness`] instead.

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::Queue;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Guest memory size of [`test_memory`] (the queue lives at 0, buffers above 64 KiB).
pub const MEM_SIZE: u64 = 0x40_0000;
/// An address no test memory covers.
pub const OUTSIDE: u64 = 0x4000_0000;

/// Blocks until `limiter`'s timerfd is readable (at most 5 s). Tests never assert on how
/// long that took, only on what the device did before and after the event is handled.
pub fn wait_for_timer(limiter: &crate::rate_limiter::RateLimiter) {
    use nix::poll::{PollFd, PollFlags, poll};
    let fd = limiter
        .timer_fd()
        .expect("a limited rate limiter has a timer");
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    let n = poll(&mut fds, 5_000u16).expect("poll");
    assert_eq!(n, 1, "rate limiter timer did not fire within 5 s");
}

/// 4 MiB of guest memory at address 0.
pub fn test_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).expect("test memory")
}

/// The driver's side of one queue.
pub struct TestQueue<'a> {
    mock: MockSplitQueue<'a, GuestMemoryMmap>,
    mem: &'a GuestMemoryMmap,
    next_free: u16,
}

impl<'a> TestQueue<'a> {
    /// A queue of `size` entries at guest address 0.
    pub fn new(mem: &'a GuestMemoryMmap, size: u16) -> Self {
        Self::at(mem, 0, size)
    }

    /// A queue of `size` entries at `base` (several queues in one memory).
    pub fn at(mem: &'a GuestMemoryMmap, base: u64, size: u16) -> Self {
        TestQueue {
            mock: MockSplitQueue::create(mem, GuestAddress(base), size),
            mem,
            next_free: 0,
        }
    }

    /// The device's `Queue` for this ring (ready, addresses set).
    pub fn queue(&self) -> Queue {
        self.mock.create_queue::<Queue>().expect("valid mock queue")
    }

    /// Writes descriptor `index` verbatim.
    pub fn set_desc(&mut self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next));
        self.mock
            .desc_table()
            .store(index, d)
            .expect("descriptor index");
    }

    /// Appends `head` to the available ring.
    pub fn make_available(&mut self, head: u16) {
        let avail = self.mock.avail();
        let idx = avail.idx().load();
        avail
            .ring()
            .ref_at(usize::from(idx % self.size()))
            .expect("avail slot")
            .store(head);
        avail.idx().store(idx.wrapping_add(1));
    }

    fn size(&self) -> u16 {
        u16::try_from(self.mock.desc_table().total_size() / 16).expect("queue size")
    }

    /// Places a chain of `(addr, len, device-writable)` buffers in free descriptors, links
    /// them and makes the chain available; returns its head.
    pub fn add_chain(&mut self, bufs: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_free;
        for (i, &(addr, len, writable)) in bufs.iter().enumerate() {
            let index = self.next_free;
            self.next_free += 1;
            let mut flags = if writable {
                VRING_DESC_F_WRITE as u16
            } else {
                0
            };
            if i + 1 < bufs.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            self.set_desc(index, addr, len, flags, index + 1);
        }
        self.make_available(head);
        head
    }

    /// Number of used entries the device published.
    pub fn used_idx(&self) -> u16 {
        self.mock.used().idx().load()
    }

    /// Used entry `i`: `(head id, length written)`.
    pub fn used(&self, i: u16) -> (u32, u32) {
        let e = self
            .mock
            .used()
            .ring()
            .ref_at(usize::from(i % self.size()))
            .expect("used slot")
            .load();
        (e.id(), e.len())
    }

    /// Reads `len` bytes of guest memory.
    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem
            .read_slice(&mut v, GuestAddress(addr))
            .expect("read");
        v
    }

    /// Writes guest memory.
    pub fn write(&self, addr: u64, data: &[u8]) {
        self.mem
            .write_slice(data, GuestAddress(addr))
            .expect("write");
    }
}
