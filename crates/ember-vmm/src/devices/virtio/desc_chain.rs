//! Defensive walking of split-virtqueue descriptor chains, shared by every device.
//!
//! `virtio_queue::DescriptorChain` silently truncates a chain that loops, points outside the
//! table or cannot be read, which leaves a device unable to tell a short chain from a
//! malformed one. [`Chain::walk_into`] reads the descriptor table itself and reports the first
//! problem ([`ChainError`]) together with everything it could read, in order:
//!
//! - structural problems (index outside the queue, more descriptors than the queue holds,
//!   which means a loop, an unreadable table entry, an indirect descriptor, which no device
//!   here offers) end the walk;
//! - a buffer outside guest memory, a device-readable buffer after a device-writable one, or
//!   buffers adding up to more than 4 GiB (virtio 1.x 2.7.5) is recorded and the walk goes
//!   on.
//!
//! Every [`ChainError`] but [`ChainError::Layout`] is *fatal*: no correct driver builds such
//! a chain, and the device breaks (see [`super::health`]) instead of answering it.
//! [`ChainError::Layout`] is a request the device cannot serve (a buffer too short), which
//! fails that request only.
//!
//! A device keeps one [`Chain`] and walks every chain into it, so walking allocates nothing
//! once the vector has grown to the longest chain seen. Nothing here panics on
//! guest-controlled data, and nothing touches a buffer the walk did not validate. The
//! byte-range helpers treat the readable (or writable) descriptors as one contiguous stream,
//! as VIRTIO_F_ANY_LAYOUT (mandatory in virtio 1.x) requires, without allocating.

use virtio_bindings::bindings::virtio_ring::{
    VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError, GuestMemoryMmap};

/// Size of one split-ring descriptor.
const DESC_SIZE: u64 = 16;

/// Why a chain is unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// A `next` (or the head) index is not below the queue size.
    #[error("descriptor index {index} is outside the queue (size {size})")]
    IndexOutOfRange {
        /// The index.
        index: u16,
        /// The queue size.
        size: u16,
    },
    /// The chain is longer than the queue: it visits some descriptor twice (a loop).
    #[error("the chain has more descriptors than the queue (a loop), at descriptor {index}")]
    Loop {
        /// The descriptor that would have been one too many.
        index: u16,
    },
    /// The descriptor table entry itself is not in guest memory.
    #[error("descriptor table entry {index} is outside guest memory")]
    TableOutOfRange {
        /// The index.
        index: u16,
    },
    /// VIRTQ_DESC_F_INDIRECT without the feature.
    #[error("descriptor {index} is indirect (VIRTIO_F_INDIRECT_DESC is not offered)")]
    Indirect {
        /// The index.
        index: u16,
    },
    /// A buffer is not (entirely) in guest memory.
    #[error("buffer {addr:#x}+{len:#x} of descriptor {index} is outside guest memory")]
    BufferOutOfRange {
        /// The index.
        index: u16,
        /// Guest address.
        addr: u64,
        /// Length.
        len: u32,
    },
    /// Device-readable after device-writable (virtio 1.x 2.7.4.2).
    #[error("device-readable descriptor {index} follows a device-writable one")]
    ReadableAfterWritable {
        /// The index.
        index: u16,
    },
    /// The buffers add up to more than 4 GiB (virtio 1.x 2.7.5: drivers must not).
    #[error("the chain's buffers add up to more than 4 GiB")]
    LengthOverflow,
    /// Buffers in the direction the request forbids (a device-writable buffer where the
    /// device must read, or the reverse), or a request without the header or status its
    /// protocol requires.
    #[error("{0}")]
    WrongDirection(&'static str),
    /// A buffer the device needs is too short for this request (fails the request only).
    #[error("{0}")]
    Layout(&'static str),
}

impl ChainError {
    /// True for chains no correct driver builds: the device breaks instead of answering.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, ChainError::Layout(_))
    }
}

/// One validated-as-far-as-possible descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desc {
    /// Descriptor table index.
    pub index: u16,
    /// Guest address of the buffer.
    pub addr: GuestAddress,
    /// Buffer length.
    pub len: u32,
    /// Device-writable (VIRTQ_DESC_F_WRITE).
    pub writable: bool,
    /// The whole buffer is in guest memory.
    pub in_memory: bool,
}

/// A walked descriptor chain: its head (for the used ring), the descriptors in order, and the
/// first problem found, if any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chain {
    /// Head index, to return the chain through the used ring.
    pub head: u16,
    /// The descriptors read, in chain order.
    pub descs: Vec<Desc>,
    /// The first problem; `None` for a well-formed chain.
    pub error: Option<ChainError>,
}

impl Chain {
    /// Walks the chain starting at `head` in `queue`'s descriptor table into a new value
    /// (tests; devices reuse one with [`Chain::walk_into`]).
    pub fn walk(mem: &GuestMemoryMmap, queue: &Queue, head: u16) -> Chain {
        let mut chain = Chain::default();
        chain.walk_into(mem, queue, head);
        chain
    }

    /// Walks the chain starting at `head` in `queue`'s descriptor table, replacing what
    /// `self` held (its vector is reused: no allocation once it is long enough).
    pub fn walk_into(&mut self, mem: &GuestMemoryMmap, queue: &Queue, head: u16) {
        let size = queue.size();
        let table = GuestAddress(queue.desc_table());
        self.head = head;
        self.descs.clear();
        self.error = None;
        let mut index = head;
        let mut seen_writable = false;
        let mut total: u64 = 0;
        loop {
            if index >= size {
                self.fail(ChainError::IndexOutOfRange { index, size });
                return;
            }
            // Back at the head, or more descriptors than the queue holds: a loop.
            if !self.descs.is_empty() && index == head || self.descs.len() >= usize::from(size) {
                self.fail(ChainError::Loop { index });
                return;
            }
            let entry = table
                .0
                .checked_add(u64::from(index) * DESC_SIZE)
                .map(GuestAddress);
            let Some(desc) = entry.and_then(|a| mem.read_obj::<Descriptor>(a).ok()) else {
                self.fail(ChainError::TableOutOfRange { index });
                return;
            };
            let flags = desc.flags();
            if flags & VRING_DESC_F_INDIRECT as u16 != 0 {
                self.fail(ChainError::Indirect { index });
                return;
            }
            let writable = flags & VRING_DESC_F_WRITE as u16 != 0;
            let in_memory = desc.len() == 0
                || mem.check_range(desc.addr(), desc.len() as usize)
                    && desc.addr().0.checked_add(u64::from(desc.len())).is_some();
            if !in_memory {
                self.fail(ChainError::BufferOutOfRange {
                    index,
                    addr: desc.addr().0,
                    len: desc.len(),
                });
            }
            if seen_writable && !writable {
                self.fail(ChainError::ReadableAfterWritable { index });
            }
            total += u64::from(desc.len());
            if total > u64::from(u32::MAX) {
                self.fail(ChainError::LengthOverflow);
            }
            seen_writable |= writable;
            self.descs.push(Desc {
                index,
                addr: desc.addr(),
                len: desc.len(),
                writable,
                in_memory,
            });
            if flags & VRING_DESC_F_NEXT as u16 == 0 {
                return;
            }
            index = desc.next();
        }
    }

    /// Records `e` unless an earlier problem was recorded.
    pub fn fail(&mut self, e: ChainError) {
        if self.error.is_none() {
            self.error = Some(e);
        }
    }

    /// The first fatal problem ([`ChainError::is_fatal`]), if any.
    pub fn fatal(&self) -> Option<ChainError> {
        self.error.filter(ChainError::is_fatal)
    }

    /// The device-readable descriptors, in order.
    pub fn readable(&self) -> impl Iterator<Item = &Desc> + Clone {
        self.descs.iter().filter(|d| !d.writable)
    }

    /// The device-writable descriptors, in order.
    pub fn writable(&self) -> impl Iterator<Item = &Desc> + Clone {
        self.descs.iter().filter(|d| d.writable)
    }

    /// Total bytes of the device-readable descriptors.
    pub fn readable_len(&self) -> u64 {
        self.readable().map(|d| u64::from(d.len)).sum()
    }

    /// Total bytes of the device-writable descriptors.
    pub fn writable_len(&self) -> u64 {
        self.writable().map(|d| u64::from(d.len)).sum()
    }
}

/// The guest ranges covering bytes `[offset, offset + len)` of the stream formed by `descs`
/// (an iterator, nothing allocated), or `None` if the stream is shorter.
pub fn ranges<'a, I>(descs: I, offset: u64, len: u64) -> Option<Ranges<I>>
where
    I: Iterator<Item = &'a Desc> + Clone,
{
    let total: u64 = descs.clone().map(|d| u64::from(d.len)).sum();
    (offset.checked_add(len)? <= total).then_some(Ranges {
        descs,
        skip: offset,
        left: len,
    })
}

/// Iterator over `(guest address, length)` pieces of a byte range (see [`ranges`]).
#[derive(Debug, Clone)]
pub struct Ranges<I> {
    descs: I,
    skip: u64,
    left: u64,
}

impl<'a, I: Iterator<Item = &'a Desc>> Iterator for Ranges<I> {
    type Item = (GuestAddress, usize);

    fn next(&mut self) -> Option<(GuestAddress, usize)> {
        while self.left > 0 {
            let d = self.descs.next()?;
            let dlen = u64::from(d.len);
            if self.skip >= dlen {
                self.skip -= dlen;
                continue;
            }
            let take = (dlen - self.skip).min(self.left);
            let addr = GuestAddress(d.addr.0.saturating_add(self.skip));
            self.skip = 0;
            self.left -= take;
            // `take` is at most one descriptor's u32 length.
            return Some((addr, usize::try_from(take).ok()?));
        }
        None
    }
}

/// Copies `data` into the stream formed by `descs` at `offset`.
pub fn write_stream<'a>(
    mem: &GuestMemoryMmap,
    descs: impl Iterator<Item = &'a Desc> + Clone,
    offset: u64,
    data: &[u8],
) -> Result<(), GuestMemoryError> {
    let rs = ranges(descs, offset, data.len() as u64).ok_or(GuestMemoryError::PartialBuffer {
        expected: data.len(),
        completed: 0,
    })?;
    let mut done = 0;
    for (addr, n) in rs {
        let piece = data.get(done..done + n).unwrap_or_default();
        mem.write_slice(piece, addr)?;
        done += n;
    }
    Ok(())
}

/// Fills `buf` from the stream formed by `descs` at `offset`.
pub fn read_stream<'a>(
    mem: &GuestMemoryMmap,
    descs: impl Iterator<Item = &'a Desc> + Clone,
    offset: u64,
    buf: &mut [u8],
) -> Result<(), GuestMemoryError> {
    let rs = ranges(descs, offset, buf.len() as u64).ok_or(GuestMemoryError::PartialBuffer {
        expected: buf.len(),
        completed: 0,
    })?;
    let mut done = 0;
    for (addr, n) in rs {
        let piece = buf.get_mut(done..done + n).unwrap_or_default();
        mem.read_slice(piece, addr)?;
        done += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::{MEM_SIZE, TestQueue, test_memory};

    #[test]
    fn well_formed_chain() {
        let mem = test_memory();
        let mut tq = TestQueue::new(&mem, 16);
        tq.add_chain(&[
            (0x1_0000, 16, false),
            (0x2_0000, 512, true),
            (0x3_0000, 1, true),
        ]);
        let q = tq.queue();
        let c = Chain::walk(&mem, &q, 0);
        assert_eq!(c.error, None);
        assert_eq!(c.descs.len(), 3);
        assert_eq!((c.readable_len(), c.writable_len()), (16, 513));
        let r: Vec<_> = ranges(c.writable(), 510, 3).unwrap().collect();
        assert_eq!(
            r,
            vec![
                (GuestAddress(0x2_0000 + 510), 2),
                (GuestAddress(0x3_0000), 1)
            ]
        );
        assert!(ranges(c.writable(), 510, 4).is_none());
        write_stream(&mem, c.writable(), 511, &[7, 9]).unwrap();
        let mut b = [0u8; 2];
        read_stream(&mem, c.writable(), 511, &mut b).unwrap();
        assert_eq!(b, [7, 9]);
    }

    #[test]
    fn every_kind_of_bad_chain_is_reported_not_followed() {
        let mem = test_memory();
        let out = crate::devices::virtio::test_utils::OUTSIDE;
        /// (index, addr, len, flags, next) per descriptor.
        type Descs = Vec<(u16, u64, u32, u16, u16)>;
        let cases: Vec<(Descs, ChainError, usize)> = vec![
            // (index, addr, len, flags, next) ...; expected error; descriptors kept
            // A loop back to the head is caught there; any other when the chain outgrows
            // the queue (16 descriptors).
            (
                vec![(0, 0x1_0000, 16, 1, 1), (1, 0x2_0000, 1, 3, 0)],
                ChainError::Loop { index: 0 },
                2,
            ),
            (
                vec![(0, 0x1_0000, 16, 1, 0)],
                ChainError::Loop { index: 0 },
                1,
            ),
            (
                vec![
                    (0, 0x1_0000, 16, 1, 1),
                    (1, 0x1_0000, 1, 1, 2),
                    (2, 0x1_0000, 1, 1, 1),
                ],
                ChainError::Loop { index: 2 },
                16,
            ),
            // Two buffers of 3 GiB: more than 4 GiB in one chain (and outside memory).
            (
                vec![(0, 0, 3 << 30, 1, 1), (1, 0, 3 << 30, 0, 0)],
                ChainError::BufferOutOfRange {
                    index: 0,
                    addr: 0,
                    len: 3 << 30,
                },
                2,
            ),
            (
                vec![(0, 0x1_0000, 16, 1, 99)],
                ChainError::IndexOutOfRange {
                    index: 99,
                    size: 16,
                },
                1,
            ),
            (
                vec![(0, 0x1_0000, 16, 4, 0)],
                ChainError::Indirect { index: 0 },
                0,
            ),
            (
                vec![(0, out, 16, 1, 1), (1, 0x2_0000, 1, 2, 0)],
                ChainError::BufferOutOfRange {
                    index: 0,
                    addr: out,
                    len: 16,
                },
                2,
            ),
            (
                vec![(0, u64::MAX - 4, 16, 0, 0)],
                ChainError::BufferOutOfRange {
                    index: 0,
                    addr: u64::MAX - 4,
                    len: 16,
                },
                1,
            ),
            (
                vec![(0, 0x2_0000, 1, 3, 1), (1, 0x1_0000, 16, 0, 0)],
                ChainError::ReadableAfterWritable { index: 1 },
                2,
            ),
        ];
        for (descs, expected, kept) in cases {
            let mut tq = TestQueue::new(&mem, 16);
            for &(i, addr, len, flags, next) in &descs {
                tq.set_desc(i, addr, len, flags, next);
            }
            tq.make_available(0);
            let q = tq.queue();
            let c = Chain::walk(&mem, &q, 0);
            assert_eq!(c.error.as_ref(), Some(&expected), "{descs:?}");
            assert_eq!(c.descs.len(), kept, "{descs:?}");
            assert_eq!(
                c.fatal(),
                Some(expected),
                "every structural problem is fatal"
            );
        }
        assert!(!ChainError::Layout("short").is_fatal());
        assert!(ChainError::WrongDirection("w").is_fatal());
        // Buffers in guest memory that add up to more than 4 GiB: 1100 x 4 MiB.
        let mut tq = TestQueue::new(&mem, 2048);
        for i in 0..1100u16 {
            let flags = if i < 1099 { 1 } else { 0 };
            tq.set_desc(i, 0, MEM_SIZE as u32, flags, i + 1);
        }
        tq.make_available(0);
        let c = Chain::walk(&mem, &tq.queue(), 0);
        assert_eq!(
            (c.error, c.descs.len()),
            (Some(ChainError::LengthOverflow), 1100)
        );
        let mut reused = c.clone();
        reused.walk_into(&mem, &tq.queue(), 1099);
        assert_eq!(
            (reused.head, reused.descs.len(), reused.error),
            (1099, 1, None)
        );
        // A head outside the queue, and a descriptor table outside memory.
        let mut tq = TestQueue::new(&mem, 16);
        tq.make_available(0);
        let q = tq.queue();
        assert!(matches!(
            Chain::walk(&mem, &q, 16).error,
            Some(ChainError::IndexOutOfRange { .. })
        ));
        let mut q = tq.queue();
        q.set_desc_table_address(Some(out as u32), Some((out >> 32) as u32));
        assert_eq!(
            Chain::walk(&mem, &q, 0).error,
            Some(ChainError::TableOutOfRange { index: 0 })
        );
    }
}
