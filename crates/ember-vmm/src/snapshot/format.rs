//! The snapshot container:
//!
//! ```text
//! offset  size  field
//! 0       8     magic "EMBRSNAP"
//! 8       4     format version (u32 LE), currently 1
//! 12      4     flags (0)
//! 16      8     payload length (u64 LE)
//! 24      n     payload: sections, each { id u16, reserved u16, length u32, bytes }
//! 24+n    4     CRC32 (IEEE, crc32fast) of bytes 0..24+n
//! ```
//!
//! Checks happen in that order (size, magic, version, length, checksum) so each failure gets
//! the most precise message.

use super::SnapshotError;
use super::codec::Writer;

/// File magic.
pub const MAGIC: [u8; 8] = *b"EMBRSNAP";
/// The version this build writes and reads.
pub const FORMAT_VERSION: u32 = 2;
/// Header size.
pub const HEADER_LEN: usize = 24;

/// Builds a container from sections.
#[derive(Debug)]
pub struct ContainerWriter {
    w: Writer,
}

impl Default for ContainerWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl ContainerWriter {
    /// Starts a container.
    pub fn new() -> ContainerWriter {
        let mut w = Writer::with_capacity(32 << 10);
        w.raw(&MAGIC);
        w.u32(FORMAT_VERSION);
        w.u32(0);
        w.u64(0); // payload length, patched in `finish`
        ContainerWriter { w }
    }

    /// Appends a section whose body `fill` writes.
    pub fn section(&mut self, id: u16, fill: impl FnOnce(&mut Writer)) {
        self.w.u16(id);
        self.w.u16(0);
        let len_at = self.w.len();
        self.w.u32(0);
        let start = self.w.len();
        fill(&mut self.w);
        let len = self.w.len() - start;
        self.w.patch_u32(len_at, len as u32);
    }

    /// The finished file contents.
    pub fn finish(self) -> Vec<u8> {
        let mut bytes = self.w.into_vec();
        let payload = (bytes.len() - HEADER_LEN) as u64;
        bytes[16..24].copy_from_slice(&payload.to_le_bytes());
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        bytes
    }
}

/// Validates a container and returns its sections `(id, body)` in order.
pub fn read_sections(bytes: &[u8]) -> Result<Vec<(u16, &[u8])>, SnapshotError> {
    if bytes.len() < HEADER_LEN + 4 {
        if bytes.len() >= 8 && bytes[..8] != MAGIC {
            return Err(SnapshotError::BadMagic);
        }
        return Err(SnapshotError::TooShort {
            len: bytes.len(),
            header: HEADER_LEN + 4,
        });
    }
    if bytes[..8] != MAGIC {
        return Err(SnapshotError::BadMagic);
    }
    let word =
        |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let version = word(8);
    if version != FORMAT_VERSION {
        return Err(SnapshotError::Version {
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let mut len8 = [0u8; 8];
    len8.copy_from_slice(&bytes[16..24]);
    let payload = u64::from_le_bytes(len8);
    let expected = (HEADER_LEN as u64)
        .saturating_add(payload)
        .saturating_add(4);
    if expected != bytes.len() as u64 {
        return Err(SnapshotError::Length {
            expected,
            found: bytes.len() as u64,
        });
    }
    let body_end = bytes.len() - 4;
    let stored = word(body_end);
    let computed = crc32fast::hash(&bytes[..body_end]);
    if stored != computed {
        return Err(SnapshotError::Checksum { stored, computed });
    }
    let mut sections = Vec::with_capacity(8);
    let mut pos = HEADER_LEN;
    while pos < body_end {
        if body_end - pos < 8 {
            return Err(SnapshotError::Structure(format!(
                "section header cut at offset {pos}"
            )));
        }
        let id = u16::from_le_bytes([bytes[pos], bytes[pos + 1]]);
        let len = word(pos + 4) as usize;
        let start = pos + 8;
        if len > body_end - start {
            return Err(SnapshotError::Structure(format!(
                "section {id} overruns the payload"
            )));
        }
        sections.push((id, &bytes[start..start + len]));
        pos = start + len;
    }
    Ok(sections)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut c = ContainerWriter::new();
        c.section(1, |w| w.u64(42));
        c.section(7, |w| w.bytes(b"hello"));
        c.finish()
    }

    #[test]
    fn round_trip() {
        let bytes = sample();
        let s = read_sections(&bytes).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0], (1, &42u64.to_le_bytes()[..]));
        assert_eq!(s[1].0, 7);
    }

    #[test]
    fn detects_every_kind_of_damage() {
        let good = sample();
        // Any single flipped bit is caught.
        for i in 0..good.len() {
            let mut b = good.clone();
            b[i] ^= 0x10;
            assert!(read_sections(&b).is_err(), "flip at {i} accepted");
        }
        // Any truncation is caught.
        for n in 0..good.len() {
            assert!(
                read_sections(&good[..n]).is_err(),
                "truncation to {n} accepted"
            );
        }
        let mut b = good.clone();
        b[0] = b'X';
        assert!(matches!(read_sections(&b), Err(SnapshotError::BadMagic)));
        let mut b = good.clone();
        b[8] = 9;
        assert!(matches!(
            read_sections(&b),
            Err(SnapshotError::Version { found: 9, .. })
        ));
        let mut b = good.clone();
        b.push(0);
        assert!(matches!(
            read_sections(&b),
            Err(SnapshotError::Length { .. })
        ));
        let mut b = good.clone();
        let n = b.len();
        b[n - 6] ^= 1;
        assert!(matches!(
            read_sections(&b),
            Err(SnapshotError::Checksum { .. })
        ));
        assert!(matches!(
            read_sections(&good[..10]),
            Err(SnapshotError::TooShort { .. })
        ));
    }
}
