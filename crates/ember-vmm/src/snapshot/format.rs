//! The snapshot container:
//!
//! ```text
//! offset  size  field
//! 0       8     magic "EMBRSNAP"
//! 8       4     format version (u32 LE), currently 4 (3 is still read)
//! 12      4     flags (0)
//! 16      8     payload length (u64 LE)
//! 24      16    snapshot id (random; the memory file's trailer carries the same id)
//! 40      n     payload: sections, each { id u16, reserved u16, length u32, bytes }
//! 40+n    4     CRC32 (IEEE, crc32fast) of bytes 0..40+n
//! ```
//!
//! Checks happen in that order (size, magic, version, length, checksum) so each failure gets
//! the most precise message; [`check_header`] runs the first four on the header alone, so a
//! reader can refuse a file before reading (and allocating for) all of it.
//!
//! Version 4 added the VM generation id section (`snapshot::state`); a version 3 file is the
//! same without it and still restores (its guest was never given a generation id). Version 3
//! added the snapshot id, which pairs a state file with its memory file (see
//! `snapshot::files`); version 2 added the virtio device sections. Older versions are
//! refused.

use super::SnapshotError;
use super::codec::Writer;

/// File magic.
pub const MAGIC: [u8; 8] = *b"EMBRSNAP";
/// The version this build writes (and the newest it reads).
pub const FORMAT_VERSION: u32 = 4;
/// The oldest version this build reads.
pub const OLDEST_READ_VERSION: u32 = 3;
/// Header size.
pub const HEADER_LEN: usize = 40;
/// Header plus the CRC32 trailer: the smallest possible file.
pub const MIN_FILE_LEN: usize = HEADER_LEN + 4;

/// The random id that pairs a state file with its memory file: written in the state file's
/// header and in the memory file's trailer by the same `snapshot/create`, compared on load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SnapshotId(pub [u8; 16]);

impl SnapshotId {
    /// A fresh random id (`getrandom`); falls back to the clock and pid if the kernel's
    /// generator fails, which only weakens the pairing check, never breaks it.
    pub fn random() -> SnapshotId {
        let mut b = [0u8; 16];
        if getrandom::fill(&mut b).is_err() {
            let t = crate::timing::now_ns();
            b[..8].copy_from_slice(&t.to_le_bytes());
            b[8..12].copy_from_slice(&std::process::id().to_le_bytes());
        }
        SnapshotId(b)
    }
}

impl std::fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Builds a container from sections.
#[derive(Debug)]
pub struct ContainerWriter {
    w: Writer,
}

impl ContainerWriter {
    /// Starts a container for snapshot `id`.
    pub fn new(id: SnapshotId) -> ContainerWriter {
        let mut w = Writer::with_capacity(32 << 10);
        w.raw(&MAGIC);
        w.u32(FORMAT_VERSION);
        w.u32(0);
        w.u64(0); // payload length, patched in `finish`
        w.raw(&id.0);
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

/// A validated container.
#[derive(Debug)]
pub struct Container<'a> {
    /// The format version from the header (`OLDEST_READ_VERSION..=FORMAT_VERSION`).
    pub version: u32,
    /// The snapshot id from the header.
    pub snapshot_id: SnapshotId,
    /// Sections `(id, body)` in file order.
    pub sections: Vec<(u16, &'a [u8])>,
}

fn word(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Checks a file's first bytes (at least [`HEADER_LEN`] of them, or the whole file if shorter)
/// against the file's length `file_len`: size, magic, version, and the header's payload
/// length. Cheap; lets a reader refuse a file before reading it.
pub fn check_header(header: &[u8], file_len: u64) -> Result<(), SnapshotError> {
    if file_len < MIN_FILE_LEN as u64 || header.len() < HEADER_LEN {
        if header.len() >= 8 && header[..8] != MAGIC {
            return Err(SnapshotError::BadMagic);
        }
        return Err(SnapshotError::TooShort {
            len: file_len.min(usize::MAX as u64) as usize,
            header: MIN_FILE_LEN,
        });
    }
    if header[..8] != MAGIC {
        return Err(SnapshotError::BadMagic);
    }
    let version = word(header, 8);
    if !(OLDEST_READ_VERSION..=FORMAT_VERSION).contains(&version) {
        return Err(SnapshotError::Version {
            found: version,
            oldest: OLDEST_READ_VERSION,
            supported: FORMAT_VERSION,
        });
    }
    let mut len8 = [0u8; 8];
    len8.copy_from_slice(&header[16..24]);
    let payload = u64::from_le_bytes(len8);
    let expected = (HEADER_LEN as u64)
        .saturating_add(payload)
        .saturating_add(4);
    if expected != file_len {
        return Err(SnapshotError::Length {
            expected,
            found: file_len,
        });
    }
    Ok(())
}

/// Validates a container and returns its id and sections.
pub fn read_container(bytes: &[u8]) -> Result<Container<'_>, SnapshotError> {
    check_header(bytes, bytes.len() as u64)?;
    let body_end = bytes.len() - 4;
    let stored = word(bytes, body_end);
    let computed = crc32fast::hash(&bytes[..body_end]);
    if stored != computed {
        return Err(SnapshotError::Checksum { stored, computed });
    }
    let mut id = [0u8; 16];
    id.copy_from_slice(&bytes[24..40]);
    let mut sections = Vec::with_capacity(8);
    let mut pos = HEADER_LEN;
    while pos < body_end {
        if body_end - pos < 8 {
            return Err(SnapshotError::Structure(format!(
                "section header cut at offset {pos}"
            )));
        }
        let sid = u16::from_le_bytes([bytes[pos], bytes[pos + 1]]);
        let len = word(bytes, pos + 4) as usize;
        let start = pos + 8;
        if len > body_end - start {
            return Err(SnapshotError::Structure(format!(
                "section {sid} overruns the payload"
            )));
        }
        sections.push((sid, &bytes[start..start + len]));
        pos = start + len;
    }
    Ok(Container {
        version: word(bytes, 8),
        snapshot_id: SnapshotId(id),
        sections,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: SnapshotId = SnapshotId([7; 16]);

    fn sample() -> Vec<u8> {
        let mut c = ContainerWriter::new(ID);
        c.section(1, |w| w.u64(42));
        c.section(7, |w| w.bytes(b"hello"));
        c.finish()
    }

    fn read_sections(b: &[u8]) -> Result<Vec<(u16, &[u8])>, SnapshotError> {
        read_container(b).map(|c| c.sections)
    }

    #[test]
    fn round_trip() {
        let bytes = sample();
        let c = read_container(&bytes).unwrap();
        assert_eq!(c.snapshot_id, ID);
        let s = c.sections;
        assert_eq!(s.len(), 2);
        assert_eq!(s[0], (1, &42u64.to_le_bytes()[..]));
        assert_eq!(s[1].0, 7);
        assert_eq!(ID.to_string(), "07".repeat(16));
        assert_ne!(SnapshotId::random(), SnapshotId::random());
    }

    #[test]
    fn header_check_alone() {
        let good = sample();
        let len = good.len() as u64;
        check_header(&good[..HEADER_LEN], len).unwrap();
        assert!(matches!(
            check_header(&good[..HEADER_LEN], len + 1),
            Err(SnapshotError::Length { .. })
        ));
        assert!(matches!(
            check_header(&good[..HEADER_LEN], 1 << 40),
            Err(SnapshotError::Length { .. })
        ));
        assert!(matches!(
            check_header(&good[..12], 12),
            Err(SnapshotError::TooShort { .. })
        ));
        assert!(matches!(
            check_header(b"NOTASNAPxxxx", 12),
            Err(SnapshotError::BadMagic)
        ));
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
