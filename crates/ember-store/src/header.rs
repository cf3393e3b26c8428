//! A look at an existing database file before SQLite touches it: magic, page size, and whether
//! the file is as long as its header says.
//!
//! SQLite treats an empty file as a fresh database and may read a short one as zeros, so a
//! truncated store could otherwise be silently "reset". ember creates its database complete (see
//! [`open`](crate::open)), so an empty, short or truncated file is always damage and is reported
//! without the file being opened for writing. This module only reads.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use crate::error::StoreError;

/// The 16 bytes every SQLite 3 database starts with.
const MAGIC: &[u8; 16] = b"SQLite format 3\0";
/// Size of the database header.
const HEADER_LEN: usize = 100;

/// What the header of a database file says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    /// Page size in bytes.
    pub page_size: u32,
    /// Pages in the database as of the last checkpoint, if the header's count is valid.
    pub page_count: Option<u32>,
    /// The file is in WAL mode (write and read versions are 2).
    pub wal: bool,
}

/// What is wrong with a file's beginning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Problem {
    /// Not an SQLite database (the detail says what was found).
    NotADatabase(String),
    /// An SQLite database, damaged (the detail says how).
    Damaged(String),
}

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Parses the first bytes of a file (at most [`HEADER_LEN`] are looked at).
pub(crate) fn parse(bytes: &[u8]) -> Result<Header, Problem> {
    if bytes.is_empty() {
        return Err(Problem::Damaged(
            "the file is empty (ember creates its database complete, so it was truncated)"
                .to_string(),
        ));
    }
    let magic_len = bytes.len().min(MAGIC.len());
    if bytes[..magic_len] != MAGIC[..magic_len] {
        return Err(Problem::NotADatabase(format!(
            "it starts with {:?} instead of {:?}",
            String::from_utf8_lossy(&bytes[..magic_len]),
            String::from_utf8_lossy(&MAGIC[..15])
        )));
    }
    if bytes.len() < HEADER_LEN {
        return Err(Problem::Damaged(format!(
            "the file is {} bytes long, shorter than the {HEADER_LEN}-byte SQLite header (truncated)",
            bytes.len()
        )));
    }
    let raw_page_size = u16::from_be_bytes([bytes[16], bytes[17]]);
    let page_size = if raw_page_size == 1 {
        65536
    } else {
        u32::from(raw_page_size)
    };
    if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
        return Err(Problem::Damaged(format!(
            "the header's page size {raw_page_size} is not a power of two from 512 to 65536"
        )));
    }
    let change_counter = be_u32(bytes, 24);
    let size_in_pages = be_u32(bytes, 28);
    let version_valid_for = be_u32(bytes, 92);
    let page_count =
        (size_in_pages != 0 && change_counter == version_valid_for).then_some(size_in_pages);
    Ok(Header {
        page_size,
        page_count,
        wal: bytes[18] == 2 && bytes[19] == 2,
    })
}

/// Checks the file length against the header when no write-ahead log may hold newer pages.
///
/// `wal_has_frames`: the `-wal` file exists and is longer than its header; then the main file may
/// legitimately lag behind (an interrupted checkpoint) and only SQLite's own check can tell.
pub(crate) fn check_length(
    header: &Header,
    file_len: u64,
    wal_has_frames: bool,
) -> Result<(), Problem> {
    if wal_has_frames {
        return Ok(());
    }
    if !file_len.is_multiple_of(u64::from(header.page_size)) {
        return Err(Problem::Damaged(format!(
            "the file is {file_len} bytes long, not a whole number of {}-byte pages (truncated)",
            header.page_size
        )));
    }
    if let Some(pages) = header.page_count {
        let expected = u64::from(pages) * u64::from(header.page_size);
        if file_len < expected {
            return Err(Problem::Damaged(format!(
                "the header says {pages} pages of {} bytes ({expected} bytes) but the file has {file_len} bytes (truncated)",
                header.page_size
            )));
        }
    }
    Ok(())
}

/// The size of a WAL header; a `-wal` file no longer than this holds no frames.
const WAL_HEADER_LEN: u64 = 32;

/// Inspects the database at `path` (which exists) and its `-wal` file, read-only.
pub(crate) fn inspect(path: &Path) -> Result<Header, StoreError> {
    let io_err = |op, source| StoreError::Io {
        path: path.to_path_buf(),
        op,
        source,
    };
    let mut file = File::open(path).map_err(|e| io_err("open the database for inspection", e))?;
    let file_len = file
        .metadata()
        .map_err(|e| io_err("stat the database", e))?
        .len();
    let mut bytes = Vec::with_capacity(HEADER_LEN);
    file.by_ref()
        .take(HEADER_LEN as u64)
        .read_to_end(&mut bytes)
        .map_err(|e| io_err("read the database header", e))?;
    let mut wal_path = path.as_os_str().to_owned();
    wal_path.push("-wal");
    let wal_has_frames = std::fs::metadata(&wal_path).is_ok_and(|m| m.len() > WAL_HEADER_LEN);
    parse(&bytes)
        .and_then(|h| check_length(&h, file_len, wal_has_frames).map(|()| h))
        .map_err(|problem| match problem {
            Problem::NotADatabase(detail) => StoreError::NotADatabase {
                path: path.to_path_buf(),
                detail,
            },
            Problem::Damaged(detail) => StoreError::Corrupt {
                path: path.to_path_buf(),
                detail,
            },
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(page_size: u16, pages: u32, valid: bool) -> Vec<u8> {
        let mut h = vec![0u8; HEADER_LEN];
        h[..16].copy_from_slice(MAGIC);
        h[16..18].copy_from_slice(&page_size.to_be_bytes());
        h[18] = 2;
        h[19] = 2;
        h[24..28].copy_from_slice(&7u32.to_be_bytes());
        h[28..32].copy_from_slice(&pages.to_be_bytes());
        let vvf: u32 = if valid { 7 } else { 6 };
        h[92..96].copy_from_slice(&vvf.to_be_bytes());
        h
    }

    #[test]
    fn parses_a_valid_header() {
        let h = parse(&header(4096, 3, true)).unwrap();
        assert_eq!(
            h,
            Header {
                page_size: 4096,
                page_count: Some(3),
                wal: true
            }
        );
        assert_eq!(parse(&header(4096, 3, false)).unwrap().page_count, None);
        assert_eq!(parse(&header(1, 3, true)).unwrap().page_size, 65536);
    }

    #[test]
    fn classifies_damage() {
        assert!(matches!(parse(b""), Err(Problem::Damaged(d)) if d.contains("empty")));
        assert!(matches!(parse(b"SQLite for"), Err(Problem::Damaged(d)) if d.contains("shorter")));
        assert!(
            matches!(parse(b"hello world, I am text"), Err(Problem::NotADatabase(d)) if d.contains("hello"))
        );
        assert!(
            matches!(parse(&header(1000, 3, true)), Err(Problem::Damaged(d)) if d.contains("page size"))
        );
    }

    #[test]
    fn length_must_cover_the_pages_unless_the_wal_has_frames() {
        let h = parse(&header(4096, 3, true)).unwrap();
        check_length(&h, 3 * 4096, false).unwrap();
        check_length(&h, 4 * 4096, false).unwrap();
        let short = check_length(&h, 2 * 4096, false).unwrap_err();
        assert!(matches!(short, Problem::Damaged(d) if d.contains("truncated")));
        assert!(check_length(&h, 3 * 4096 - 10, false).is_err());
        check_length(&h, 2 * 4096, true).unwrap();
    }
}
