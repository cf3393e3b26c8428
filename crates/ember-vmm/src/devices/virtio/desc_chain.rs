//! Defensive walking of split-virtqueue descriptor chains, shared by the block, net and rng
//! models.
//!
//! `virtio_queue::DescriptorChain` silently truncates a chain that loops, points outside the
//! table or cannot be read, which leaves a device unable to tell a short chain from a
//! malformed one. [`Chain::walk`] reads the descriptor table itself and reports the first
//! problem ([`ChainError`]) together with everything it could read, in order, so a device can
//! still locate a status byte (block) or simply return the chain with nothing written:
//!
//! - structural problems (index outside the queue, a loop, an unreadable table entry, an
//!   indirect descriptor, which no device here offers) end the walk;
//! - a buffer outside guest memory, or a device-readable buffer after a device-writable one,
//!   is recorded and the walk goes on (the descriptor is kept, marked unusable or out of
//!   order), so the chain's last descriptor is still known.
//!
//! Nothing here panics on guest-controlled data, and nothing touches a buffer the walk did
//! not validate. The byte-range helpers treat the readable (or writable) descriptors as one
//! contiguous stream, as VIRTIO_F_ANY_LAYOUT (mandatory in virtio 1.x) requires.

use virtio_bindings::bindings::virtio_ring::{
    VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError, GuestMemoryMmap};

/// Size of one split-ring descriptor.
const DESC_SIZE: u64 = 16;

/// Why a chain is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// A `next` (or the head) index is not below the queue size.
    #[error("descriptor index {index} is outside the queue (size {size})")]
    IndexOutOfRange {
        /// The index.
        index: u16,
        /// The queue size.
        size: u16,
    },
    /// The chain visits a descriptor twice.
    #[error("descriptor {index} is visited twice (a loop)")]
    Loop {
        /// The descriptor reached again.
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
    /// A buffer the device needs is missing, of the wrong kind or too short.
    #[error("{0}")]
    Layout(&'static str),
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// Head index, to return the chain through the used ring.
    pub head: u16,
    /// The descriptors read, in chain order.
    pub descs: Vec<Desc>,
    /// The first problem; `None` for a well-formed chain.
    pub error: Option<ChainError>,
}

impl Chain {
    /// Walks the chain starting at `head` in `queue`'s descriptor table.
    pub fn walk(mem: &GuestMemoryMmap, queue: &Queue, head: u16) -> Chain {
        let size = queue.size();
        let table = GuestAddress(queue.desc_table());
        let mut chain = Chain {
            head,
            descs: Vec::new(),
            error: None,
        };
        let mut visited = vec![0u64; usize::from(size).div_ceil(64)];
        let mut index = head;
        let mut seen_writable = false;
        loop {
            if index >= size {
                chain.fail(ChainError::IndexOutOfRange { index, size });
                return chain;
            }
            let (word, bit) = (usize::from(index) / 64, index % 64);
            if let Some(w) = visited.get_mut(word) {
                if *w & (1 << bit) != 0 {
                    chain.fail(ChainError::Loop { index });
                    return chain;
                }
                *w |= 1 << bit;
            }
            let entry = table
                .0
                .checked_add(u64::from(index) * DESC_SIZE)
                .map(GuestAddress);
            let Some(desc) = entry.and_then(|a| mem.read_obj::<Descriptor>(a).ok()) else {
                chain.fail(ChainError::TableOutOfRange { index });
                return chain;
            };
            let flags = desc.flags();
            if flags & VRING_DESC_F_INDIRECT as u16 != 0 {
                chain.fail(ChainError::Indirect { index });
                return chain;
            }
            let writable = flags & VRING_DESC_F_WRITE as u16 != 0;
            let in_memory = desc.len() == 0
                || mem.check_range(desc.addr(), desc.len() as usize)
                    && desc.addr().0.checked_add(u64::from(desc.len())).is_some();
            if !in_memory {
                chain.fail(ChainError::BufferOutOfRange {
                    index,
                    addr: desc.addr().0,
                    len: desc.len(),
                });
            }
            if seen_writable && !writable {
                chain.fail(ChainError::ReadableAfterWritable { index });
            }
            seen_writable |= writable;
            chain.descs.push(Desc {
                index,
                addr: desc.addr(),
                len: desc.len(),
                writable,
                in_memory,
            });
            if flags & VRING_DESC_F_NEXT as u16 == 0 {
                return chain;
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

    /// The device-readable descriptors, in order.
    pub fn readable(&self) -> impl Iterator<Item = &Desc> {
        self.descs.iter().filter(|d| !d.writable)
    }

    /// The device-writable descriptors, in order.
    pub fn writable(&self) -> impl Iterator<Item = &Desc> {
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

/// The guest ranges covering bytes `[offset, offset + len)` of the stream formed by `descs`,
/// or `None` if the stream is shorter.
pub fn ranges<'a>(
    descs: impl Iterator<Item = &'a Desc>,
    offset: u64,
    len: u64,
) -> Option<Vec<(GuestAddress, usize)>> {
    let mut out = Vec::new();
    let mut skip = offset;
    let mut left = len;
    for d in descs {
        if left == 0 {
            break;
        }
        let dlen = u64::from(d.len);
        if skip >= dlen {
            skip -= dlen;
            continue;
        }
        let take = (dlen - skip).min(left);
        out.push((GuestAddress(d.addr.0 + skip), usize::try_from(take).ok()?));
        left -= take;
        skip = 0;
    }
    (left == 0).then_some(out)
}

/// Copies `data` into the stream formed by `descs` at `offset`.
pub fn write_stream<'a>(
    mem: &GuestMemoryMmap,
    descs: impl Iterator<Item = &'a Desc>,
    offset: u64,
    data: &[u8],
) -> Result<(), GuestMemoryError> {
    let rs = ranges(descs, offset, data.len() as u64).ok_or(GuestMemoryError::PartialBuffer {
        expected: data.len(),
        completed: 0,
    })?;
    let mut done = 0;
    for (addr, n) in rs {
        mem.write_slice(&data[done..done + n], addr)?;
        done += n;
    }
    Ok(())
}

/// Fills `buf` from the stream formed by `descs` at `offset`.
pub fn read_stream<'a>(
    mem: &GuestMemoryMmap,
    descs: impl Iterator<Item = &'a Desc>,
    offset: u64,
    buf: &mut [u8],
) -> Result<(), GuestMemoryError> {
    let rs = ranges(descs, offset, buf.len() as u64).ok_or(GuestMemoryError::PartialBuffer {
        expected: buf.len(),
        completed: 0,
    })?;
    let mut done = 0;
    for (addr, n) in rs {
        mem.read_slice(&mut buf[done..done + n], addr)?;
        done += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::{TestQueue, test_memory};

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
        let r = ranges(c.writable(), 510, 3).unwrap();
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
        }
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
