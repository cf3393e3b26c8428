//! Checked access to a split virtqueue's rings, used by every device instead of
//! `virtio_queue`'s `pop_descriptor_chain`/`iter`.
//!
//! `virtio_queue` reports an available index the queue cannot hold (more than the queue size
//! ahead of the device) only through a log line, returns "nothing available" and leaves
//! `enable_notification` saying "more available": a device that trusts both spins forever,
//! logging on every turn. Here every impossible state is an error ([`RingError`]) the device
//! turns into its broken state (see [`super::health`]):
//!
//! - the available index more than the queue size ahead of the device's next index;
//! - an available ring entry naming a head outside the queue;
//! - rings that cannot be read or written (set up outside guest memory: [`check_rings`]
//!   refuses them at activation, so this is a last line of defence).
//!
//! No allocation and no system call: two atomic loads per chain.

use std::num::Wrapping;
use std::sync::atomic::Ordering;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// An impossible ring state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// The driver published more chains than the queue holds.
    #[error(
        "available index {avail} is {ahead} entries ahead of the device's {next} in a queue of {size}"
    )]
    AvailIndex {
        /// The available index the driver wrote.
        avail: u16,
        /// The device's next available index.
        next: u16,
        /// `avail - next` (wrapping).
        ahead: u16,
        /// Queue size.
        size: u16,
    },
    /// An available ring entry names a descriptor outside the queue.
    #[error("available ring entry {next} names head {head}, outside the queue (size {size})")]
    HeadOutOfRange {
        /// The device's next available index when it read the entry.
        next: u16,
        /// The head named.
        head: u16,
        /// Queue size.
        size: u16,
    },
    /// A ring (named) cannot be accessed.
    #[error("the {0} is not in guest memory")]
    Memory(&'static str),
}

/// The head of the next available chain, or `None` when the driver published nothing new (or
/// the queue is not ready). Advances the device's next available index.
pub fn pop_head(q: &mut Queue, mem: &GuestMemoryMmap) -> Result<Option<u16>, RingError> {
    if !q.ready() {
        return Ok(None);
    }
    let next = q.next_avail();
    let Wrapping(avail) = q
        .avail_idx(mem, Ordering::Acquire)
        .map_err(|_| RingError::Memory("available ring"))?;
    let ahead = avail.wrapping_sub(next);
    if ahead == 0 {
        return Ok(None);
    }
    let size = q.size();
    if ahead > size || size == 0 {
        return Err(RingError::AvailIndex {
            avail,
            next,
            ahead,
            size,
        });
    }
    let entry = q
        .avail_ring()
        .checked_add(4 + 2 * u64::from(next % size))
        .map(GuestAddress)
        .ok_or(RingError::Memory("available ring"))?;
    let head = u16::from_le(
        mem.load::<u16>(entry, Ordering::Acquire)
            .map_err(|_| RingError::Memory("available ring"))?,
    );
    if head >= size {
        return Err(RingError::HeadOutOfRange { next, head, size });
    }
    q.set_next_avail(next.wrapping_add(1));
    Ok(Some(head))
}

/// Puts the last popped chain back (it will be popped again).
pub fn unpop(q: &mut Queue) {
    q.set_next_avail(q.next_avail().wrapping_sub(1));
}

/// Returns `head` to the driver with `len` bytes written.
pub fn add_used(
    q: &mut Queue,
    mem: &GuestMemoryMmap,
    head: u16,
    len: u32,
) -> Result<(), RingError> {
    if head >= q.size() {
        return Err(RingError::HeadOutOfRange {
            next: q.next_avail(),
            head,
            size: q.size(),
        });
    }
    q.add_used(mem, head, len)
        .map_err(|_| RingError::Memory("used ring"))
}

/// Asks the driver to notify again; `true` if chains arrived meanwhile (pop again). An
/// impossible index also answers `true`: the next [`pop_head`] reports it.
pub fn enable_notification(q: &mut Queue, mem: &GuestMemoryMmap) -> Result<bool, RingError> {
    q.enable_notification(mem)
        .map_err(|_| RingError::Memory("used ring"))
}

/// Tells the driver not to notify (a hint; failures are caught by the next ring access).
pub fn disable_notification(q: &mut Queue, mem: &GuestMemoryMmap) {
    let _ = q.disable_notification(mem);
}

/// Checks that a queue's descriptor table and rings lie in guest memory (at activation).
/// Unlike `QueueT::is_valid`, it does not log: the caller decides.
pub fn check_rings(q: &Queue, mem: &GuestMemoryMmap) -> Result<(), RingError> {
    let size = u64::from(q.size());
    let parts = [
        ("descriptor table", q.desc_table(), 16 * size),
        ("available ring", q.avail_ring(), 6 + 2 * size),
        ("used ring", q.used_ring(), 6 + 8 * size),
    ];
    for (what, addr, len) in parts {
        let fits = addr.checked_add(len).is_some()
            && usize::try_from(len).is_ok_and(|l| mem.check_range(GuestAddress(addr), l));
        if !fits {
            return Err(RingError::Memory(what));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::{OUTSIDE, TestQueue, test_memory};

    #[test]
    fn pops_in_order_and_reports_impossible_indices() {
        let mem = test_memory();
        let mut tq = TestQueue::new(&mem, 16);
        let mut q = tq.queue();
        assert_eq!(pop_head(&mut q, &mem), Ok(None));
        tq.add_chain(&[(0x1_0000, 8, false)]);
        tq.add_chain(&[(0x2_0000, 8, false)]);
        assert_eq!(pop_head(&mut q, &mem), Ok(Some(0)));
        assert_eq!(pop_head(&mut q, &mem), Ok(Some(1)));
        unpop(&mut q);
        assert_eq!(pop_head(&mut q, &mem), Ok(Some(1)));
        assert_eq!(pop_head(&mut q, &mem), Ok(None));
        add_used(&mut q, &mem, 1, 8).unwrap();
        assert_eq!(tq.used(0), (1, 8));

        // The driver claims 40 new chains in a queue of 16; nothing is popped, every time.
        for _ in 0..38 {
            tq.make_available(0);
        }
        let err = pop_head(&mut q, &mem).unwrap_err();
        assert_eq!(
            err,
            RingError::AvailIndex {
                avail: 40,
                next: 2,
                ahead: 38,
                size: 16
            }
        );
        assert!(err.to_string().contains("38 entries ahead"), "{err}");
        assert_eq!(q.next_avail(), 2);
        assert_eq!(pop_head(&mut q, &mem), Err(err));
        // virtio_queue itself would say "more available" forever.
        assert_eq!(enable_notification(&mut q, &mem), Ok(true));
    }

    #[test]
    fn head_outside_the_queue_and_rings_outside_memory() {
        let mem = test_memory();
        let mut tq = TestQueue::new(&mem, 16);
        let mut q = tq.queue();
        tq.make_available(16);
        assert!(matches!(
            pop_head(&mut q, &mem),
            Err(RingError::HeadOutOfRange { head: 16, .. })
        ));
        assert!(add_used(&mut q, &mem, 99, 0).is_err());
        check_rings(&q, &mem).unwrap();
        for which in 0..3 {
            let mut q = tq.queue();
            let (lo, hi) = (Some(OUTSIDE as u32), Some((OUTSIDE >> 32) as u32));
            match which {
                0 => q.set_desc_table_address(lo, hi),
                1 => q.set_avail_ring_address(lo, hi),
                _ => q.set_used_ring_address(lo, hi),
            }
            assert!(check_rings(&q, &mem).is_err(), "{which}");
            if which == 1 {
                assert_eq!(
                    pop_head(&mut q, &mem),
                    Err(RingError::Memory("available ring"))
                );
            }
            if which == 2 {
                assert_eq!(
                    add_used(&mut q, &mem, 0, 0),
                    Err(RingError::Memory("used ring"))
                );
            }
        }
        // A queue that is not ready has nothing to pop.
        let mut q = tq.queue();
        q.set_ready(false);
        assert_eq!(pop_head(&mut q, &mem), Ok(None));
    }
}
