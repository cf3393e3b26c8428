//! The driver side of a split virtqueue (virtio 1.x, 2.7) at a fixed address: descriptor
//! table, then the available ring, then the used ring (4-byte aligned), back to back (for 32
//! entries: 846 bytes; the probe puts all three queues in one page).
//!
//! Descriptor `i` permanently describes buffer `i` of its queue, so a used element's id is
//! the buffer index. Runs in ring 3; the device reads and writes these rings from another
//! host thread, hence the volatile accesses and fences.

use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{Ordering, fence};

/// Descriptor flag: device-writable buffer.
pub const DESC_F_WRITE: u16 = 2;
/// Used-ring flag: the device does not want notifications.
const USED_F_NO_NOTIFY: u16 = 1;

/// Bytes a queue of `size` entries occupies.
pub const fn footprint(size: u16) -> usize {
    let size = size as usize;
    let used = (16 * size + 6 + 2 * size + 3) & !3;
    used + 6 + 8 * size
}

/// One split queue.
pub struct Virtq {
    base: usize,
    avail: usize,
    used: usize,
    size: u16,
    avail_idx: u16,
    last_used: u16,
}

impl Virtq {
    /// A queue of `size` entries at `base` (16-byte aligned, [`footprint`] bytes).
    pub const fn new(base: usize, size: u16) -> Virtq {
        let avail = base + 16 * size as usize;
        Virtq {
            base,
            avail,
            used: (avail + 6 + 2 * size as usize + 3) & !3,
            size,
            avail_idx: 0,
            last_used: 0,
        }
    }

    /// Queue size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Guest-physical addresses of the descriptor table, available and used rings.
    pub fn addresses(&self) -> (u64, u64, u64) {
        (self.base as u64, self.avail as u64, self.used as u64)
    }

    /// Points descriptor `i` at `addr` / `len`.
    pub fn set_desc(&self, i: u16, addr: u64, len: u32, flags: u16) {
        let d = (self.base + 16 * usize::from(i)) as *mut u8;
        // SAFETY: the rings are ours (see layout.rs) and `i < size`.
        unsafe {
            write_volatile(d as *mut u64, addr);
            write_volatile(d.add(8) as *mut u32, len);
            write_volatile(d.add(12) as *mut u16, flags);
            write_volatile(d.add(14) as *mut u16, 0);
        }
    }

    /// Sets descriptor `i`'s length.
    pub fn set_len(&self, i: u16, len: u32) {
        // SAFETY: as in `set_desc`.
        unsafe { write_volatile((self.base + 16 * usize::from(i) + 8) as *mut u32, len) }
    }

    /// Offers descriptor chain `head` to the device (publishes the new index).
    pub fn push(&mut self, head: u16) {
        let slot = usize::from(self.avail_idx % self.size);
        // SAFETY: the available ring lies in our ring area.
        unsafe {
            write_volatile((self.avail + 4 + 2 * slot) as *mut u16, head);
            fence(Ordering::SeqCst);
            self.avail_idx = self.avail_idx.wrapping_add(1);
            write_volatile((self.avail + 2) as *mut u16, self.avail_idx);
        }
        fence(Ordering::SeqCst);
    }

    /// The next used element `(id, len)`.
    pub fn pop_used(&mut self) -> Option<(u16, u32)> {
        // SAFETY: the used ring lies in our ring area; the device writes it.
        unsafe {
            let idx = read_volatile((self.used + 2) as *const u16);
            if idx == self.last_used {
                return None;
            }
            fence(Ordering::SeqCst);
            let slot = usize::from(self.last_used % self.size);
            let e = self.used + 4 + 8 * slot;
            let id = read_volatile(e as *const u32);
            let len = read_volatile((e + 4) as *const u32);
            self.last_used = self.last_used.wrapping_add(1);
            Some((id as u16, len))
        }
    }

    /// Whether used elements are waiting.
    pub fn has_used(&self) -> bool {
        // SAFETY: as in `pop_used`.
        let idx = unsafe { read_volatile((self.used + 2) as *const u16) };
        idx != self.last_used
    }

    /// Asks the device not to interrupt for this queue (`VIRTQ_AVAIL_F_NO_INTERRUPT`, a hint
    /// ember-vmm honours) or to interrupt again.
    pub fn set_no_interrupt(&self, on: bool) {
        // SAFETY: the available ring's flags word lies in our ring area.
        unsafe { write_volatile(self.avail as *mut u16, u16::from(on)) };
        fence(Ordering::SeqCst);
    }

    /// Whether the device asked to be notified about new buffers.
    pub fn device_wants_notify(&self) -> bool {
        fence(Ordering::SeqCst);
        // SAFETY: as in `pop_used`.
        let flags = unsafe { read_volatile(self.used as *const u16) };
        flags & USED_F_NO_NOTIFY == 0
    }
}
