//! The probe's file system (ring 3): a flat table of [`NODE_COUNT`] entries — files and
//! directories — with [`FILE_COUNT`] data slots of [`FILE_MAX_LEN`] bytes, in a fixed region
//! (layout.rs); for PutFile, GetFile, Stat, ListDir, MakeDir, Remove, Rename and the `cat`
//! built-in.
//!
//! - Paths are normalised and absolute ([`path`](crate::path)), at most [`FILE_PATH_MAX`]
//!   bytes; each entry holds its whole path.
//! - Directories are explicit entries (MakeDir, or PutFile creating missing parents with mode
//!   0o755, as E2B's envd does); `/` always exists (mode 0o755, mtime 0) and has no entry.
//!   Every entry's parent exists as a directory: operations keep that true.
//! - Semantics follow POSIX (WIRE-FORMAT.md, "Paths"): a missing parent is NOT_FOUND, a file
//!   where a directory is needed NOT_A_DIRECTORY, a directory where a file is needed
//!   IS_A_DIRECTORY, a non-empty directory NOT_EMPTY; Rename moves a directory with everything
//!   below it and replaces a file or an empty directory. There are no symlinks.
//! - A file's mode is the one it was created with; an entry's mtime is the wall clock
//!   (`now_ns`, 0 before the first Reseed) of its last write, or, for a directory, of its
//!   creation or the last change of its entries.
//! - Limits: a longer path, a file over [`FILE_MAX_LEN`], a [`FILE_COUNT`]+1st file or a
//!   [`NODE_COUNT`]+1st entry is TOO_LARGE. A refused request changes nothing.
//! - Nothing is zeroed at boot: guest memory starts zeroed and an all-zero entry (path length
//!   0, which no stored path has) is a free slot. A request reads the entry pages and touches
//!   only the data pages it reads or writes, so an idle VM never touches the region and a
//!   restored one shares it with its siblings until it writes a file.

use ember_agent_proto::{ErrorCode, FileKind, FileStat};

use crate::layout::{
    FILE_COUNT, FILE_DATA, FILE_MAX_LEN, FILE_PATH_MAX, FILE_TABLE_LEN, FILES, NODE_COUNT,
};
use crate::path::{self, Path};

/// [`Entry::kind`] of a file.
const KIND_FILE: u8 = 1;
/// [`Entry::kind`] of a directory.
const KIND_DIR: u8 = 2;

/// Mode of `/` and of directories created as missing parents.
pub const DIR_MODE: u32 = 0o755;

/// What Stat and ListDir report as owner and group (the probe has no users of its own).
const OWNER: &str = "root";

/// One entry. Every bit pattern is valid; all zeros is a free slot.
#[repr(C)]
struct Entry {
    /// Bytes of `path` in use; 0: the slot is free.
    path_len: u16,
    /// [`KIND_FILE`] or [`KIND_DIR`].
    kind: u8,
    /// A file's data slot (< [`FILE_COUNT`]).
    slot: u8,
    /// Permission bits, as given when the entry was created.
    mode: u32,
    /// A file's bytes in use.
    size: u32,
    _reserved: u32,
    /// Wall clock of the last change, ns since the Unix epoch (0: unknown).
    mtime_ns: u64,
    path: [u8; FILE_PATH_MAX],
}

const _: () = assert!(core::mem::size_of::<[Entry; NODE_COUNT]>() <= FILE_TABLE_LEN);
const _: () = assert!(FILES.is_multiple_of(core::mem::align_of::<Entry>()));
const _: () = assert!(FILE_MAX_LEN <= u32::MAX as usize && FILE_PATH_MAX <= u16::MAX as usize);
const _: () = assert!(FILE_COUNT <= u8::MAX as usize && FILE_COUNT <= NODE_COUNT);
// The error messages below name these values.
const _: () = assert!(FILE_COUNT == 8 && FILE_MAX_LEN == 65536 && NODE_COUNT == 32);

/// A refused file operation: the protocol's error code and a message.
pub type FileError = (ErrorCode, &'static str);

const NO_SUCH_FILE: FileError = (ErrorCode::NOT_FOUND, "no such file or directory");
const NOT_A_DIRECTORY: FileError = (ErrorCode::NOT_A_DIRECTORY, "not a directory");
const IS_A_DIRECTORY: FileError = (ErrorCode::IS_A_DIRECTORY, "is a directory");
const NOT_EMPTY: FileError = (ErrorCode::NOT_EMPTY, "directory not empty");
const TOO_BIG: FileError = (
    ErrorCode::TOO_LARGE,
    "file larger than the probe's limit (65536 bytes)",
);
const NO_ENTRY: FileError = (
    ErrorCode::TOO_LARGE,
    "probe file table full (32 files and directories)",
);
const NO_SLOT: FileError = (ErrorCode::TOO_LARGE, "probe file table full (8 files)");
const PATH_TOO_LONG: FileError = (
    ErrorCode::TOO_LARGE,
    "path longer than the probe's limit (255 bytes)",
);

/// A file as [`Files::get`] finds it.
pub struct File<'a> {
    /// Permission bits.
    pub mode: u32,
    /// The whole contents.
    pub data: &'a [u8],
}

/// What a path names.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Node {
    /// `/`.
    Root,
    /// The directory in entry `i`.
    Dir(usize),
    /// The file in entry `i`.
    File(usize),
}

/// The file table, borrowed for one request.
pub struct Files {
    entries: &'static mut [Entry; NODE_COUNT],
    data: &'static mut [[u8; FILE_MAX_LEN]; FILE_COUNT],
}

/// The file table. Call once per request (each call hands out the same memory).
pub fn table() -> Files {
    // SAFETY: the file region (layout.rs) is reserved for this table, mapped and user-accessible,
    // and used only by the agent, one request at a time; any bytes are valid `Entry`s and data.
    // Making the references touches no page.
    unsafe {
        Files {
            entries: &mut *(FILES as *mut [Entry; NODE_COUNT]),
            data: &mut *(FILE_DATA as *mut [[u8; FILE_MAX_LEN]; FILE_COUNT]),
        }
    }
}

impl Entry {
    fn path(&self) -> Option<&[u8]> {
        match self.path_len as usize {
            0 => None,
            n => self.path.get(..n),
        }
    }

    fn is_dir(&self) -> bool {
        self.kind == KIND_DIR
    }

    fn stat(&self) -> FileStat<'static> {
        let (kind, size) = if self.is_dir() {
            (FileKind::Directory, 0)
        } else {
            (
                FileKind::File,
                u64::from(self.size).min(FILE_MAX_LEN as u64),
            )
        };
        FileStat {
            kind,
            mode: self.mode,
            size,
            mtime_ns: self.mtime_ns,
            owner: OWNER,
            group: OWNER,
            target: b"",
        }
    }
}

/// Stat of `/`.
pub const ROOT_STAT: FileStat<'static> = FileStat {
    kind: FileKind::Directory,
    mode: DIR_MODE,
    size: 0,
    mtime_ns: 0,
    owner: OWNER,
    group: OWNER,
    target: b"",
};

impl Files {
    fn find(&self, p: &[u8]) -> Option<usize> {
        self.entries.iter().position(|e| e.path() == Some(p))
    }

    /// Why `p` (not found) is missing: NOT_A_DIRECTORY if an ancestor is a file, else
    /// NOT_FOUND.
    fn missing(&self, p: &[u8]) -> FileError {
        let mut ancestor = path::parent(p);
        while !ancestor.is_empty() {
            if let Some(i) = self.find(ancestor) {
                return if self.entries[i].is_dir() {
                    NO_SUCH_FILE
                } else {
                    NOT_A_DIRECTORY
                };
            }
            ancestor = path::parent(ancestor);
        }
        NO_SUCH_FILE
    }

    /// What `p` names; a file asked for as a directory is NOT_A_DIRECTORY.
    pub fn lookup(&self, p: &Path) -> Result<Node, FileError> {
        if p.is_root() {
            return Ok(Node::Root);
        }
        match self.find(p.as_bytes()) {
            Some(i) if self.entries[i].is_dir() => Ok(Node::Dir(i)),
            Some(_) if p.dir_only => Err(NOT_A_DIRECTORY),
            Some(i) => Ok(Node::File(i)),
            None => Err(self.missing(p.as_bytes())),
        }
    }

    /// `p`'s missing ancestors (to create as directories), or NOT_A_DIRECTORY if one of them
    /// is a file.
    fn missing_parents(&self, p: &[u8]) -> Result<usize, FileError> {
        let mut missing = 0;
        let mut ancestor = path::parent(p);
        while !ancestor.is_empty() {
            match self.find(ancestor) {
                Some(i) if self.entries[i].is_dir() => break,
                Some(_) => return Err(NOT_A_DIRECTORY),
                None => missing += 1,
            }
            ancestor = path::parent(ancestor);
        }
        Ok(missing)
    }

    fn free_entries(&self) -> usize {
        self.entries.iter().filter(|e| e.path_len == 0).count()
    }

    fn free_slot(&self) -> Option<u8> {
        (0..FILE_COUNT as u8).find(|&s| {
            !self
                .entries
                .iter()
                .any(|e| e.path_len != 0 && !e.is_dir() && e.slot == s)
        })
    }

    /// Stores a new entry (a free one must exist).
    fn alloc(
        &mut self,
        p: &[u8],
        kind: u8,
        mode: u32,
        slot: u8,
        now: u64,
    ) -> Result<usize, FileError> {
        let i = self
            .entries
            .iter()
            .position(|e| e.path_len == 0)
            .ok_or(NO_ENTRY)?;
        let e = &mut self.entries[i];
        e.path[..p.len()].copy_from_slice(p);
        e.kind = kind;
        e.slot = slot;
        e.mode = mode;
        e.size = 0;
        e.mtime_ns = now;
        e.path_len = p.len() as u16;
        self.touch_parent(p, now);
        Ok(i)
    }

    /// Creates `p`'s missing ancestors as directories (checked by `missing_parents`).
    fn create_parents(&mut self, p: &[u8], now: u64) -> Result<(), FileError> {
        // Shortest first, so each one's parent exists when it is made.
        for end in 1..p.len() {
            if p[end] == b'/' && self.find(&p[..end]).is_none() {
                self.alloc(&p[..end], KIND_DIR, DIR_MODE, 0, now)?;
            }
        }
        Ok(())
    }

    /// Sets the mtime of `p`'s parent directory (`/` keeps 0).
    fn touch_parent(&mut self, p: &[u8], now: u64) {
        if let Some(i) = self.find(path::parent(p)) {
            self.entries[i].mtime_ns = now;
        }
    }

    /// Whether directory `p` has entries.
    fn has_children(&self, p: &[u8]) -> bool {
        self.entries.iter().any(|e| {
            e.path()
                .is_some_and(|q| q.len() > p.len() && path::within(q, p))
        })
    }

    /// Frees `p` and everything below it.
    fn free_tree(&mut self, p: &[u8]) {
        for e in self.entries.iter_mut() {
            if e.path().is_some_and(|q| path::within(q, p)) {
                e.path_len = 0;
            }
        }
    }

    /// What is at `p`.
    pub fn stat(&self, p: &Path) -> Result<FileStat<'static>, FileError> {
        Ok(match self.lookup(p)? {
            Node::Root => ROOT_STAT,
            Node::Dir(i) | Node::File(i) => self.entries[i].stat(),
        })
    }

    /// The file at `p`.
    pub fn get(&self, p: &Path) -> Result<File<'_>, FileError> {
        match self.lookup(p)? {
            Node::File(i) => {
                let e = &self.entries[i];
                let size = (e.size as usize).min(FILE_MAX_LEN);
                Ok(File {
                    mode: e.mode,
                    data: &self.data[usize::from(e.slot) % FILE_COUNT][..size],
                })
            }
            Node::Root | Node::Dir(_) => Err(IS_A_DIRECTORY),
        }
    }

    /// PutFile: at `offset` 0 creates the file (with `mode`, and missing parents) or
    /// truncates it (keeping its mode), then writes `data`; at other offsets the file must
    /// exist and `offset` must not pass its end, and `data` overwrites or extends it there.
    pub fn put(
        &mut self,
        p: &Path,
        mode: u32,
        offset: u64,
        data: &[u8],
        now: u64,
    ) -> Result<(), FileError> {
        let offset = usize::try_from(offset).unwrap_or(usize::MAX);
        let end = offset
            .checked_add(data.len())
            .filter(|&e| e <= FILE_MAX_LEN);
        let i = match self.lookup(p) {
            Ok(Node::File(i)) => {
                let size = self.entries[i].size as usize;
                if offset > size {
                    return Err((
                        ErrorCode::INVALID_ARGUMENT,
                        "offset past the end of the file",
                    ));
                }
                end.ok_or(TOO_BIG)?;
                if offset == 0 {
                    self.entries[i].size = 0;
                }
                i
            }
            Ok(Node::Root | Node::Dir(_)) => return Err(IS_A_DIRECTORY),
            Err(e) if e.0 != ErrorCode::NOT_FOUND || offset != 0 => return Err(e),
            Err(_) if p.dir_only => return Err(IS_A_DIRECTORY),
            Err(_) => {
                end.ok_or(TOO_BIG)?;
                let bytes = p.as_bytes();
                let parents = self.missing_parents(bytes)?;
                if self.free_entries() < parents + 1 {
                    return Err(NO_ENTRY);
                }
                let slot = self.free_slot().ok_or(NO_SLOT)?;
                self.create_parents(bytes, now)?;
                self.alloc(bytes, KIND_FILE, mode, slot, now)?
            }
        };
        let end = end.ok_or(TOO_BIG)?;
        let e = &mut self.entries[i];
        let slot = usize::from(e.slot) % FILE_COUNT;
        self.data[slot][offset..end].copy_from_slice(data);
        e.size = e.size.max(end as u32);
        e.mtime_ns = now;
        Ok(())
    }

    /// MakeDir: whether the directory was created (false: a directory was there).
    pub fn make_dir(
        &mut self,
        p: &Path,
        mode: u32,
        parents: bool,
        now: u64,
    ) -> Result<bool, FileError> {
        if p.is_root() {
            return Ok(false);
        }
        let bytes = p.as_bytes();
        match self.find(bytes) {
            Some(i) if self.entries[i].is_dir() => return Ok(false),
            Some(_) => {
                return Err((
                    ErrorCode::ALREADY_EXISTS,
                    "a file is there, not a directory",
                ));
            }
            None => {}
        }
        let missing = self.missing_parents(bytes)?;
        if missing > 0 && !parents {
            return Err(NO_SUCH_FILE);
        }
        if self.free_entries() < missing + 1 {
            return Err(NO_ENTRY);
        }
        self.create_parents(bytes, now)?;
        self.alloc(bytes, KIND_DIR, mode, 0, now)?;
        Ok(true)
    }

    /// Remove: a file, an empty directory, or (`recursive`) a directory with everything in it.
    pub fn remove(&mut self, p: &Path, recursive: bool, now: u64) -> Result<(), FileError> {
        let bytes = p.as_bytes();
        match self.lookup(p)? {
            Node::Root => {
                return Err((
                    ErrorCode::INVALID_ARGUMENT,
                    "the root directory cannot be removed",
                ));
            }
            Node::Dir(_) if !recursive && self.has_children(bytes) => return Err(NOT_EMPTY),
            Node::Dir(_) | Node::File(_) => {}
        }
        self.free_tree(bytes);
        self.touch_parent(bytes, now);
        Ok(())
    }

    /// Rename, as `rename(2)`: moves `from` (with everything below it) to `to`, replacing a
    /// file there (by a file) or an empty directory (by a directory).
    pub fn rename(&mut self, from: &Path, to: &Path, now: u64) -> Result<(), FileError> {
        if from.is_root() || to.is_root() {
            return Err((
                ErrorCode::INVALID_ARGUMENT,
                "the root directory cannot be renamed or replaced",
            ));
        }
        let (src, dst) = (from.as_bytes(), to.as_bytes());
        let moving = self.lookup(from)?;
        let is_dir = matches!(moving, Node::Dir(_));
        if is_dir && dst.len() > src.len() && path::within(dst, src) {
            return Err((
                ErrorCode::INVALID_ARGUMENT,
                "a directory cannot move below itself",
            ));
        }
        let replaced = match self.lookup(to) {
            Ok(node) => Some(node),
            Err(e) if e.0 == ErrorCode::NOT_FOUND => None,
            Err(e) => return Err(e),
        };
        if src == dst {
            return Ok(());
        }
        match (is_dir, replaced) {
            (_, None) => {
                if !is_dir && to.dir_only {
                    return Err(NOT_A_DIRECTORY);
                }
                // The new parent must be a directory.
                if self.missing_parents(dst)? > 0 {
                    return Err(NO_SUCH_FILE);
                }
            }
            (false, Some(Node::File(_))) => {}
            (false, Some(_)) => return Err(IS_A_DIRECTORY),
            (true, Some(Node::File(_))) => return Err(NOT_A_DIRECTORY),
            (true, Some(_)) if self.has_children(dst) => return Err(NOT_EMPTY),
            (true, Some(_)) => {}
        }
        // Every moved path must fit its new name.
        for e in self.entries.iter() {
            if let Some(q) = e.path().filter(|q| path::within(q, src))
                && q.len() - src.len() + dst.len() > FILE_PATH_MAX
            {
                return Err(PATH_TOO_LONG);
            }
        }
        if replaced.is_some() {
            self.free_tree(dst);
        }
        for e in self.entries.iter_mut() {
            let Some(q) = e.path() else { continue };
            if !path::within(q, src) {
                continue;
            }
            let mut new = [0u8; FILE_PATH_MAX];
            let tail = q.len() - src.len();
            new[dst.len()..dst.len() + tail].copy_from_slice(&q[src.len()..]);
            new[..dst.len()].copy_from_slice(dst);
            let len = dst.len() + tail;
            e.path[..len].copy_from_slice(&new[..len]);
            e.path_len = len as u16;
        }
        self.touch_parent(src, now);
        self.touch_parent(dst, now);
        Ok(())
    }

    /// The entries below directory `dir` down to `depth` levels, depth-first in name order
    /// ([`path::cmp_depth_first`]): each entry's path relative to `dir`, and its stat.
    pub fn list<'a, 'd>(&'a self, dir: &'d Path, depth: u32) -> List<'a, 'd> {
        List {
            files: self,
            dir: dir.as_bytes(),
            depth,
            last: None,
        }
    }
}

/// Iterator of [`Files::list`]: selects the next entry in order each step (the table is
/// small), so it needs no buffer and the order is the same whatever the slots.
pub struct List<'a, 'd> {
    files: &'a Files,
    dir: &'d [u8],
    depth: u32,
    last: Option<&'a [u8]>,
}

impl<'a> Iterator for List<'a, '_> {
    type Item = (&'a [u8], FileStat<'static>);

    fn next(&mut self) -> Option<Self::Item> {
        let mut best: Option<(&'a [u8], &'a Entry)> = None;
        for e in self.files.entries.iter() {
            let Some(q) = e.path() else { continue };
            if q.len() <= self.dir.len() || !path::within(q, self.dir) {
                continue;
            }
            let rel = &q[self.dir.len() + 1..];
            let levels = rel.iter().filter(|b| **b == b'/').count() + 1;
            if levels > self.depth as usize {
                continue;
            }
            if self
                .last
                .is_some_and(|last| path::cmp_depth_first(q, last).is_le())
            {
                continue;
            }
            if best.is_none_or(|(b, _)| path::cmp_depth_first(q, b).is_lt()) {
                best = Some((q, e));
            }
        }
        let (q, e) = best?;
        self.last = Some(q);
        Some((&q[self.dir.len() + 1..], e.stat()))
    }
}
