//! Little-endian binary encoding primitives for snapshot sections.
//!
//! [`Writer`] appends fixed-width integers, length-prefixed byte strings and raw KVM structs
//! (through `zerocopy`, so only plain-old-data types with no padding qualify); [`Reader`] reads
//! them back and fails with a [`DecodeError`] naming what it was reading, never panics.

use zerocopy::{FromBytes, Immutable, IntoBytes};

/// Why a section could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The data ended early.
    #[error("truncated while reading {what}: needed {needed} bytes, {left} left")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Bytes needed.
        needed: usize,
        /// Bytes left.
        left: usize,
    },
    /// A length or count is impossible.
    #[error("invalid {what}: {detail}")]
    Invalid {
        /// What was being read.
        what: &'static str,
        /// Why it is invalid.
        detail: String,
    },
}

/// Appends encoded values to a byte vector.
#[derive(Debug, Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// An empty writer with some capacity.
    pub fn with_capacity(n: usize) -> Self {
        Writer {
            buf: Vec::with_capacity(n),
        }
    }
    /// Appends a u8.
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    /// Appends a little-endian u16.
    pub fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// Appends a little-endian u32.
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// Appends a little-endian u64.
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// Appends a u32 length and the bytes.
    pub fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.buf.extend_from_slice(b);
    }
    /// Appends raw bytes without a length.
    pub fn raw(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }
    /// Appends a plain-old-data struct with a u32 size prefix (checked on decode).
    pub fn pod<T: IntoBytes + Immutable>(&mut self, v: &T) {
        self.bytes(v.as_bytes());
    }
    /// Current length.
    pub fn len(&self) -> usize {
        self.buf.len()
    }
    /// True if nothing was written.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
    /// Overwrites a u32 at `at` (for back-patched lengths).
    pub fn patch_u32(&mut self, at: usize, v: u32) {
        if let Some(dst) = self.buf.get_mut(at..at + 4) {
            dst.copy_from_slice(&v.to_le_bytes());
        }
    }
    /// The encoded bytes.
    pub fn into_vec(self) -> Vec<u8> {
        self.buf
    }
}

/// Reads encoded values from a byte slice.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Reads from `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }
    /// Bytes left.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }
    /// Takes `n` raw bytes.
    pub fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated {
                what,
                needed: n,
                left: self.buf.len(),
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }
    /// Reads a u8.
    pub fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }
    /// Reads a little-endian u16.
    pub fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    /// Reads a little-endian u32.
    pub fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    /// Reads a little-endian u64.
    pub fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    /// Reads a u32 length and that many bytes.
    pub fn bytes(&mut self, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let n = self.u32(what)? as usize;
        self.take(n, what)
    }
    /// Reads a size-prefixed plain-old-data struct; the size must match exactly.
    pub fn pod<T: FromBytes + Sized>(&mut self, what: &'static str) -> Result<T, DecodeError> {
        let b = self.bytes(what)?;
        T::read_from_bytes(b).map_err(|_| DecodeError::Invalid {
            what,
            detail: format!(
                "size {} does not match {}",
                b.len(),
                std::mem::size_of::<T>()
            ),
        })
    }
    /// Reads a u32 element count, bounded by what the remaining bytes could hold.
    pub fn count(
        &mut self,
        what: &'static str,
        min_elem_size: usize,
    ) -> Result<usize, DecodeError> {
        let n = self.u32(what)? as usize;
        if n.saturating_mul(min_elem_size.max(1)) > self.buf.len() {
            return Err(DecodeError::Invalid {
                what,
                detail: format!("count {n} exceeds the remaining {} bytes", self.buf.len()),
            });
        }
        Ok(n)
    }
    /// Fails unless everything was consumed.
    pub fn finish(&self, what: &'static str) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Invalid {
                what,
                detail: format!("{} trailing bytes", self.buf.len()),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
        let mut w = Writer::default();
        w.u8(1);
        w.u16(2);
        w.u32(3);
        w.u64(4);
        w.bytes(b"abc");
        let regs = kvm_bindings::kvm_regs {
            rip: 0x1234,
            ..Default::default()
        };
        w.pod(&regs);
        let v = w.into_vec();
        let mut r = Reader::new(&v);
        assert_eq!(r.u8("a").unwrap(), 1);
        assert_eq!(r.u16("b").unwrap(), 2);
        assert_eq!(r.u32("c").unwrap(), 3);
        assert_eq!(r.u64("d").unwrap(), 4);
        assert_eq!(r.bytes("e").unwrap(), b"abc");
        assert_eq!(r.pod::<kvm_bindings::kvm_regs>("regs").unwrap().rip, 0x1234);
        r.finish("all").unwrap();

        for cut in 0..v.len() {
            let mut r = Reader::new(&v[..cut]);
            let res = (|| -> Result<(), DecodeError> {
                r.u8("a")?;
                r.u16("b")?;
                r.u32("c")?;
                r.u64("d")?;
                r.bytes("e")?;
                r.pod::<kvm_bindings::kvm_regs>("regs")?;
                Ok(())
            })();
            assert!(res.is_err(), "cut at {cut} decoded");
        }
    }

    #[test]
    fn pod_size_mismatch_is_an_error() {
        let mut w = Writer::default();
        w.bytes(&[0u8; 7]);
        let v = w.into_vec();
        let err = Reader::new(&v)
            .pod::<kvm_bindings::kvm_regs>("regs")
            .unwrap_err();
        assert!(err.to_string().contains("regs"));
    }

    #[test]
    fn huge_count_is_rejected() {
        let mut w = Writer::default();
        w.u32(u32::MAX);
        let v = w.into_vec();
        assert!(Reader::new(&v).count("entries", 8).is_err());
    }
}
