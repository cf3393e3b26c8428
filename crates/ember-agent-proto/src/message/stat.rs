//! File metadata on the wire: [`FileKind`], [`FileStat`] (the StatResult body, and the tail of
//! every ListDir entry), [`DirEntry`] and [`DirEntries`] (a DirListing's entries).
//!
//! Owns the layout of those fields and the rule that ties them (`target` only for symlinks).
//! Like [`ByteList`](crate::ByteList), [`DirEntries`] borrows either the decoded frame (entries
//! validated at decode time, decoded again while iterating) or the caller's slice, so neither
//! side allocates.

use core::fmt;

use super::rules;
use crate::codec::{Reader, Writer};
use crate::error::{FieldError, FieldProblem};
use crate::kind::Kind;

/// What kind of file a path names (StatResult and ListDir entries).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum FileKind {
    /// A regular file.
    File = 1,
    /// A directory.
    Directory = 2,
    /// A symbolic link (not followed: its own mode and size, and its target).
    Symlink = 3,
    /// Anything else: a device, FIFO or socket.
    Other = 4,
}

impl FileKind {
    /// The kind with wire value `byte`, if there is one.
    pub const fn from_u8(byte: u8) -> Option<FileKind> {
        Some(match byte {
            1 => FileKind::File,
            2 => FileKind::Directory,
            3 => FileKind::Symlink,
            4 => FileKind::Other,
            _ => return None,
        })
    }

    /// The wire value.
    pub const fn as_u8(self) -> u8 {
        self as u8
    }

    /// Lowercase name (`file`, `directory`, `symlink`, `other`).
    pub const fn name(self) -> &'static str {
        match self {
            FileKind::File => "file",
            FileKind::Directory => "directory",
            FileKind::Symlink => "symlink",
            FileKind::Other => "other",
        }
    }
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What is at a path: the StatResult body, and each ListDir entry after its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileStat<'a> {
    /// File, directory, symlink or other.
    pub kind: FileKind,
    /// Permission bits (at most 0o7777; the kind is in `kind`).
    pub mode: u32,
    /// Size in bytes (a symlink: its target's length; a directory: what the agent's file
    /// system says, 0 if it says nothing).
    pub size: u64,
    /// Last modification, nanoseconds since the Unix epoch; 0 when the agent has no clock.
    pub mtime_ns: u64,
    /// The owner's user name, or its decimal uid when it has none (up to 64 bytes, no NUL).
    pub owner: &'a str,
    /// The group's name, or its decimal gid when it has none (up to 64 bytes, no NUL).
    pub group: &'a str,
    /// A symlink's target as stored (not resolved); empty for every other kind.
    pub target: &'a [u8],
}

impl<'a> FileStat<'a> {
    /// Bytes this takes on the wire.
    pub const fn encoded_len(&self) -> usize {
        1 + 4 + 8 + 8 + 4 + self.owner.len() + 4 + self.group.len() + 4 + self.target.len()
    }

    pub(crate) fn write(&self, w: &mut Writer<'_>, kind: Kind) -> Result<(), FieldError> {
        check_target(kind, self.kind, self.target)?;
        w.u8(self.kind.as_u8());
        w.u32_in("mode", self.mode, rules::MODE)?;
        w.u64(self.size);
        w.u64(self.mtime_ns);
        w.bytes(&rules::OWNER, self.owner.as_bytes())?;
        w.bytes(&rules::GROUP, self.group.as_bytes())?;
        w.bytes(&rules::TARGET, self.target)?;
        Ok(())
    }

    pub(crate) fn read(r: &mut Reader<'a>, kind: Kind) -> Result<FileStat<'a>, FieldError> {
        let byte = r.u8("kind")?;
        let file_kind = FileKind::from_u8(byte).ok_or(FieldError {
            kind,
            field: "kind",
            problem: FieldProblem::OutOfRange {
                value: u64::from(byte),
            },
        })?;
        let stat = FileStat {
            kind: file_kind,
            mode: r.u32_in("mode", rules::MODE)?,
            size: r.u64("size")?,
            mtime_ns: r.u64("mtime_ns")?,
            owner: r.text(&rules::OWNER)?,
            group: r.text(&rules::GROUP)?,
            target: r.bytes(&rules::TARGET)?,
        };
        check_target(kind, stat.kind, stat.target)?;
        Ok(stat)
    }
}

/// `target` must be empty unless the entry is a symlink.
fn check_target(kind: Kind, file_kind: FileKind, target: &[u8]) -> Result<(), FieldError> {
    if file_kind != FileKind::Symlink && !target.is_empty() {
        return Err(FieldError {
            kind,
            field: "target",
            problem: FieldProblem::TooLong {
                len: target.len(),
                max: 0,
            },
        });
    }
    Ok(())
}

/// One ListDir entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DirEntry<'a> {
    /// The entry's path relative to the listed directory (`/`-separated, no leading `/`): a
    /// plain name at depth 1, `sub/name` deeper down.
    pub name: &'a [u8],
    /// What it is.
    pub stat: FileStat<'a>,
}

impl<'a> DirEntry<'a> {
    /// Bytes this entry takes in a DirListing body (agents use it to fill a reply frame).
    pub const fn encoded_len(&self) -> usize {
        4 + self.name.len() + self.stat.encoded_len()
    }

    fn write(&self, w: &mut Writer<'_>) -> Result<(), FieldError> {
        w.bytes(&rules::ENTRY_NAME, self.name)?;
        self.stat.write(w, Kind::DirListing)
    }

    fn read(r: &mut Reader<'a>) -> Result<DirEntry<'a>, FieldError> {
        Ok(DirEntry {
            name: r.bytes(&rules::ENTRY_NAME)?,
            stat: FileStat::read(r, Kind::DirListing)?,
        })
    }
}

/// A DirListing's entries, borrowed either from a decoded frame or from the caller.
#[derive(Clone, Copy)]
pub struct DirEntries<'a> {
    repr: Repr<'a>,
}

#[derive(Clone, Copy)]
enum Repr<'a> {
    /// `count` entries, already validated.
    Wire {
        raw: &'a [u8],
        count: usize,
    },
    Slice(&'a [DirEntry<'a>]),
}

impl<'a> DirEntries<'a> {
    /// No entries.
    pub const EMPTY: DirEntries<'static> = DirEntries {
        repr: Repr::Slice(&[]),
    };

    /// Entries to encode.
    pub const fn from_slice(entries: &'a [DirEntry<'a>]) -> Self {
        DirEntries {
            repr: Repr::Slice(entries),
        }
    }

    /// Number of entries.
    pub const fn len(&self) -> usize {
        match self.repr {
            Repr::Wire { count, .. } => count,
            Repr::Slice(entries) => entries.len(),
        }
    }

    /// Whether there are none.
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The entries, in order.
    pub fn iter(&self) -> EntriesIter<'a> {
        EntriesIter {
            repr: self.repr,
            index: 0,
            offset: 0,
        }
    }

    /// The entry at `index`, if any (linear time for decoded lists).
    pub fn get(&self, index: usize) -> Option<DirEntry<'a>> {
        self.iter().nth(index)
    }

    pub(crate) fn write(&self, w: &mut Writer<'_>) -> Result<(), FieldError> {
        let count = u32::try_from(self.len()).map_err(|_| FieldError {
            kind: Kind::DirListing,
            field: "entries",
            problem: FieldProblem::TooMany {
                count: self.len(),
                max: u32::MAX as usize,
            },
        })?;
        w.u32(count);
        for entry in self.iter() {
            entry.write(w)?;
        }
        Ok(())
    }

    /// Reads and validates `count` entries; a count the body cannot hold fails as truncated.
    pub(crate) fn read(r: &mut Reader<'a>) -> Result<DirEntries<'a>, FieldError> {
        let count = r.u32("entries")? as usize;
        let start = r.pos();
        for _ in 0..count {
            DirEntry::read(r)?;
        }
        Ok(DirEntries {
            repr: Repr::Wire {
                raw: r.since(start),
                count,
            },
        })
    }
}

impl PartialEq for DirEntries<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for DirEntries<'_> {}

impl fmt::Debug for DirEntries<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl Default for DirEntries<'_> {
    fn default() -> Self {
        DirEntries::EMPTY
    }
}

impl<'a> IntoIterator for DirEntries<'a> {
    type Item = DirEntry<'a>;
    type IntoIter = EntriesIter<'a>;

    fn into_iter(self) -> EntriesIter<'a> {
        self.iter()
    }
}

/// Iterator over [`DirEntries`].
#[derive(Clone)]
pub struct EntriesIter<'a> {
    repr: Repr<'a>,
    index: usize,
    offset: usize,
}

impl<'a> Iterator for EntriesIter<'a> {
    type Item = DirEntry<'a>;

    fn next(&mut self) -> Option<DirEntry<'a>> {
        let entry = match self.repr {
            Repr::Slice(entries) => *entries.get(self.index)?,
            Repr::Wire { raw, count } => {
                if self.index >= count {
                    return None;
                }
                // Validated at decode time; a failure here only ends the iteration.
                let mut r = Reader::new(raw.get(self.offset..)?, Kind::DirListing);
                let entry = DirEntry::read(&mut r).ok()?;
                self.offset += r.pos();
                entry
            }
        };
        self.index += 1;
        Some(entry)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let total = match self.repr {
            Repr::Wire { count, .. } => count,
            Repr::Slice(entries) => entries.len(),
        };
        (0, Some(total.saturating_sub(self.index)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: FileStat<'static> = FileStat {
        kind: FileKind::File,
        mode: 0o644,
        size: 3,
        mtime_ns: 7,
        owner: "root",
        group: "root",
        target: b"",
    };

    #[test]
    fn kinds_round_trip() {
        for byte in 0..=255u8 {
            if let Some(kind) = FileKind::from_u8(byte) {
                assert_eq!(kind.as_u8(), byte);
            }
        }
        assert_eq!(FileKind::from_u8(0), None);
        assert_eq!(FileKind::from_u8(5), None);
    }

    #[test]
    fn decoded_entries_iterate_like_the_slice() {
        let link = FileStat {
            kind: FileKind::Symlink,
            target: b"/a",
            ..FILE
        };
        let entries = [
            DirEntry {
                name: b"a",
                stat: FILE,
            },
            DirEntry {
                name: b"d/l",
                stat: link,
            },
        ];
        let list = DirEntries::from_slice(&entries);
        let mut buf = [0u8; 256];
        let mut w = Writer::new(&mut buf, 0, Kind::DirListing);
        list.write(&mut w).unwrap();
        let n = w.pos();
        assert_eq!(
            n,
            4 + entries.iter().map(DirEntry::encoded_len).sum::<usize>()
        );
        let mut r = Reader::new(&buf[..n], Kind::DirListing);
        let decoded = DirEntries::read(&mut r).unwrap();
        assert_eq!(r.remaining(), 0);
        assert_eq!(decoded, list);
        assert_eq!(decoded.get(1), Some(entries[1]));
        assert_eq!(decoded.get(2), None);
    }

    #[test]
    fn target_only_for_symlinks() {
        let bad = FileStat {
            target: b"/x",
            ..FILE
        };
        let mut buf = [0u8; 64];
        let mut w = Writer::new(&mut buf, 0, Kind::StatResult);
        let e = bad.write(&mut w, Kind::StatResult).unwrap_err();
        assert_eq!(e.field, "target");
    }
}
