//! A snapshot's two files on the host.
//!
//! **Reading** (`PUT /snapshot/load`, [`open_regular`]): a path that is not a regular file
//! (a FIFO, `/dev/zero`, a directory, a device) is refused naming what it is, without being
//! opened; a regular file is opened `O_NONBLOCK | O_NOCTTY` (so one swapped for a FIFO after
//! the check cannot block the API thread), `fstat`ed (same inode, still regular), and
//! `O_NONBLOCK` cleared. The state file's size is checked against [`MAX_STATE_BYTES`] and its
//! header against that size before it is read ([`read_state_file`]); nothing is allocated
//! from a length the file claims.
//!
//! **Pairing**: `snapshot/create` draws a random [`SnapshotId`], writes it in the state file's
//! header and in a [`MEM_TRAILER_LEN`]-byte trailer after the guest memory in the memory file
//! (layout in [`encode_mem_trailer`]). A load checks the memory file's size (guest memory plus
//! the trailer) and compares the ids ([`open_memory_file`]): one `fstat` and one 44-byte
//! `pread`, never a checksum of the memory. A state and a memory file from two different
//! snapshots — mixed by hand, or left by a VMM killed between its two renames — are refused.
//!
//! **Writing** ([`write_pair`]): both files go to temporary names `<name>.tmp-<pid>` next to
//! their targets, created `O_EXCL` with mode 0600 (guest memory is private), are synced, and
//! renamed into place memory first, state second; every failure removes both temporary files.
//! A target that exists and is not a regular file (a device node, a FIFO, a directory, a
//! symbolic link) is refused before anything is written ([`check_create_target`]), so a
//! create never replaces one. Renaming (not writing in place) keeps VMs that map an older
//! memory file at the same path on their pages.
//!
//! **Leftovers**: a VMM killed while writing leaves `<name>.tmp-<pid>` files. The next create
//! aimed at the same target removes those whose process is gone (or is this process: one
//! create runs at a time) before writing ([`remove_stale_temp_files`]); a temporary file of a
//! live process is left alone. Nothing is scanned at VMM start or at load (loads are the hot
//! path and name no directory of their own); ember's runtime removes whole snapshot
//! directories a crash interrupted.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::SnapshotError;
use super::format::{self, HEADER_LEN, SnapshotId};
use crate::vstate::memory::{DumpStats, MemoryError};

/// The largest state file accepted (they are ~20 KiB per vCPU plus the devices' sections).
pub const MAX_STATE_BYTES: u64 = 16 << 20;
/// Bytes after the guest memory in a memory file: the trailer, padded to a page so the file
/// stays a whole number of pages.
pub const MEM_TRAILER_LEN: u64 = 4096;
/// The trailer's magic.
pub const MEM_TRAILER_MAGIC: [u8; 8] = *b"EMBRMEMT";
/// The trailer's layout version.
pub const MEM_TRAILER_VERSION: u32 = 1;
/// Bytes of the trailer that carry data (the rest of the page is zero).
const TRAILER_USED: usize = 44;

/// Why a snapshot file could not be opened for reading.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The OS refused.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// Why.
        source: io::Error,
    },
    /// The path names something other than a regular file.
    #[error("{path} is {kind}, not a regular file")]
    NotRegular {
        /// The path.
        path: String,
        /// What it is ("a FIFO", "a character device", ...).
        kind: &'static str,
    },
}

/// What a file type is, in words.
fn kind_of(t: fs::FileType) -> &'static str {
    if t.is_dir() {
        "a directory"
    } else if t.is_symlink() {
        "a symbolic link"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Opens `path` for reading if, and only if, it is a regular file (symbolic links followed);
/// never blocks. Returns the file and its size.
///
/// `stat` first, so a path naming anything else is refused without being opened (opening
/// some devices has effects: a watchdog arms, a tape rewinds). The open itself uses
/// `O_NONBLOCK | O_NOCTTY` (a FIFO or tty swapped in after the `stat` does not block it), and
/// its `fstat` must show the same regular file; `O_NONBLOCK` is then cleared.
pub fn open_regular(path: &Path) -> Result<(File, u64), OpenError> {
    let io_err = |source| OpenError::Io {
        path: path.display().to_string(),
        source,
    };
    let not_regular = |t| OpenError::NotRegular {
        path: path.display().to_string(),
        kind: kind_of(t),
    };
    let meta = fs::metadata(path).map_err(io_err)?;
    if !meta.is_file() {
        return Err(not_regular(meta.file_type()));
    }
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(io_err)?;
    let m = file.metadata().map_err(io_err)?;
    if !m.is_file() {
        return Err(not_regular(m.file_type()));
    }
    if (m.dev(), m.ino()) != (meta.dev(), meta.ino()) {
        return Err(io_err(io::Error::other(
            "the file was replaced while being opened",
        )));
    }
    // Only O_NONBLOCK of the status flags is set (O_APPEND, O_DIRECT, O_NOATIME are not).
    nix::fcntl::fcntl(
        &file,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
    )
    .map_err(|e| io_err(e.into()))?;
    Ok((file, m.len()))
}

/// Why a state file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadStateError {
    /// It cannot be opened, or is not a regular file.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// It is not a state file this build reads (size, header), or reading it failed.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
}

/// Reads a state file: regular files only, at most [`MAX_STATE_BYTES`], and only once its
/// header agrees with its size (the contents are checked by `MicrovmState::from_bytes`).
pub fn read_state_file(path: &Path) -> Result<Vec<u8>, ReadStateError> {
    let (file, len) = open_regular(path)?;
    if len > MAX_STATE_BYTES {
        return Err(SnapshotError::Structure(format!(
            "state file is {len} bytes, larger than any ember-vmm snapshot ({MAX_STATE_BYTES} bytes max)"
        ))
        .into());
    }
    let read_err = |source| SnapshotError::Io {
        what: "reading",
        path: path.display().to_string(),
        source,
    };
    let mut header = [0u8; HEADER_LEN];
    let n = read_at_most(&file, &mut header, 0).map_err(read_err)?;
    format::check_header(&header[..n], len)?;
    let mut bytes = vec![0u8; len as usize];
    file.read_exact_at(&mut bytes, 0).map_err(read_err)?;
    Ok(bytes)
}

/// Reads up to `buf.len()` bytes at `offset`, stopping early only at the end of the file.
fn read_at_most(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The memory file's trailer for snapshot `id` of `mem_size` bytes of guest memory, padded to
/// [`MEM_TRAILER_LEN`]:
///
/// ```text
/// offset  size  field (from the end of guest memory in the file)
/// 0       8     magic "EMBRMEMT"
/// 8       4     trailer version (u32 LE), 1
/// 12      4     reserved (0)
/// 16      16    snapshot id (the state file's header has the same)
/// 32      8     guest memory bytes (u64 LE) = the trailer's offset
/// 40      4     CRC32 of bytes 0..40
/// 44      ...   zero up to 4096
/// ```
pub fn encode_mem_trailer(id: SnapshotId, mem_size: u64) -> Vec<u8> {
    let mut t = vec![0u8; MEM_TRAILER_LEN as usize];
    t[..8].copy_from_slice(&MEM_TRAILER_MAGIC);
    t[8..12].copy_from_slice(&MEM_TRAILER_VERSION.to_le_bytes());
    t[16..32].copy_from_slice(&id.0);
    t[32..40].copy_from_slice(&mem_size.to_le_bytes());
    let crc = crc32fast::hash(&t[..40]);
    t[40..44].copy_from_slice(&crc.to_le_bytes());
    t
}

/// Decodes a trailer's used bytes: the snapshot id and guest memory size, or what is wrong.
pub fn decode_mem_trailer(t: &[u8]) -> Result<(SnapshotId, u64), String> {
    if t.len() < TRAILER_USED || t[..8] != MEM_TRAILER_MAGIC {
        return Err(
            "has no ember-vmm snapshot trailer after the guest memory (not written by \
                    this ember-vmm's snapshot/create, or written by an older one)"
                .into(),
        );
    }
    let crc = u32::from_le_bytes([t[40], t[41], t[42], t[43]]);
    if crc != crc32fast::hash(&t[..40]) {
        return Err("its snapshot trailer is corrupt (checksum mismatch)".into());
    }
    let version = u32::from_le_bytes([t[8], t[9], t[10], t[11]]);
    if version != MEM_TRAILER_VERSION {
        return Err(format!(
            "its snapshot trailer has version {version} (this ember-vmm reads {MEM_TRAILER_VERSION})"
        ));
    }
    let mut id = [0u8; 16];
    id.copy_from_slice(&t[16..32]);
    let mut size = [0u8; 8];
    size.copy_from_slice(&t[32..40]);
    Ok((SnapshotId(id), u64::from_le_bytes(size)))
}

/// Why a memory file does not fit its state file.
#[derive(Debug, thiserror::Error)]
pub enum MemFileError {
    /// It cannot be opened, or is not a regular file.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// It is not this snapshot's memory file.
    #[error("{0}")]
    Mismatch(String),
}

/// Opens the memory file of snapshot `id` (`mem_size` bytes of guest memory): a regular file
/// of exactly `mem_size + MEM_TRAILER_LEN` bytes whose trailer names `id` and `mem_size`.
pub fn open_memory_file(path: &Path, id: SnapshotId, mem_size: u64) -> Result<File, MemFileError> {
    let (file, len) = open_regular(path)?;
    let expected = mem_size.saturating_add(MEM_TRAILER_LEN);
    if len != expected {
        let why = if len == mem_size {
            "; it has no snapshot trailer (written by an older ember-vmm?)"
        } else if len < expected {
            " (truncated)"
        } else {
            ""
        };
        return Err(MemFileError::Mismatch(format!(
            "size {len} does not match the snapshot's guest memory ({mem_size} bytes) plus its \
             {MEM_TRAILER_LEN}-byte trailer{why}"
        )));
    }
    let mut t = [0u8; TRAILER_USED];
    let n = read_at_most(&file, &mut t, mem_size)
        .map_err(|e| MemFileError::Mismatch(format!("cannot read its trailer: {e}")))?;
    let (found, size) = decode_mem_trailer(&t[..n]).map_err(MemFileError::Mismatch)?;
    if found != id {
        return Err(MemFileError::Mismatch(format!(
            "belongs to another snapshot (its id is {found}, the state file's is {id}): the \
             state and memory files do not come from the same snapshot/create (two snapshots \
             mixed, or one interrupted while its files were being replaced)"
        )));
    }
    if size != mem_size {
        return Err(MemFileError::Mismatch(format!(
            "its trailer says {size} bytes of guest memory, the state file {mem_size}"
        )));
    }
    Ok(file)
}

/// Checks a `snapshot/create` target: it must name a file, and if something exists there it
/// must be a regular file (never replace a device node, FIFO, directory or symbolic link).
pub fn check_create_target(path: &Path) -> Result<(), String> {
    if path.file_name().is_none() {
        return Err(format!("{} does not name a file", path.display()));
    }
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(m) => Err(format!(
            "{} exists and is {}: a snapshot only replaces a regular file",
            path.display(),
            kind_of(m.file_type())
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// The temporary name `<name>.tmp-<pid>` a target is written under.
pub fn temp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".tmp-{}", std::process::id()));
    path.with_file_name(name)
}

fn process_alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return true;
    };
    if raw <= 0 {
        return true;
    }
    !matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

/// Removes the temporary files `<name>.tmp-<pid>` next to `target` whose process is gone (or
/// is this one, which writes one snapshot at a time); returns how many were removed.
pub fn remove_stale_temp_files(target: &Path) -> usize {
    let Some(name) = target.file_name().and_then(|n| n.to_str()) else {
        return 0;
    };
    let dir = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let prefix = format!("{name}.tmp-");
    let me = std::process::id();
    let mut removed = 0;
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(pid) = file_name
            .to_str()
            .and_then(|f| f.strip_prefix(&prefix))
            .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != me && process_alive(pid) {
            continue;
        }
        let path = entry.path();
        match fs::remove_file(&path) {
            Ok(()) => {
                removed += 1;
                tracing::info!(path = %path.display(), "removed a temporary snapshot file left by an interrupted snapshot/create");
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove a stale temporary snapshot file")
            }
        }
    }
    removed
}

/// Why writing a snapshot's files failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// A file could not be created, written, synced or renamed.
    #[error("writing {path}: {source}")]
    Io {
        /// The target file.
        path: String,
        /// Why.
        source: io::Error,
    },
    /// Dumping guest memory failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
}

/// Temporary files removed on drop unless the write completed.
struct Temps(Vec<PathBuf>);

impl Drop for Temps {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = fs::remove_file(p);
        }
    }
}

fn create_private(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

/// Writes a snapshot's pair: the memory file (`dump` writes `mem_size` bytes of guest memory
/// into it, then the trailer for `id` follows) and the state file (`state`, whose header
/// carries `id`), each to a 0600 temporary file, synced, then renamed into place (memory
/// first). Stale temporary files of the targets are removed first; on any failure both
/// temporary files are removed.
pub fn write_pair(
    state_path: &Path,
    mem_path: &Path,
    state: &[u8],
    id: SnapshotId,
    mem_size: u64,
    dump: impl FnOnce(&File) -> Result<DumpStats, MemoryError>,
) -> Result<DumpStats, WriteError> {
    remove_stale_temp_files(mem_path);
    remove_stale_temp_files(state_path);
    let (tmp_mem, tmp_state) = (temp_path(mem_path), temp_path(state_path));
    let mut temps = Temps(Vec::with_capacity(2));
    let io_at = |path: &Path| {
        let path = path.display().to_string();
        move |source| WriteError::Io { path, source }
    };

    let f = create_private(&tmp_mem).map_err(io_at(mem_path))?;
    temps.0.push(tmp_mem.clone());
    let stats = dump(&f)?;
    f.write_all_at(&encode_mem_trailer(id, mem_size), mem_size)
        .and_then(|()| f.sync_data())
        .map_err(io_at(mem_path))?;
    drop(f);

    let mut f = create_private(&tmp_state).map_err(io_at(state_path))?;
    temps.0.push(tmp_state.clone());
    f.write_all(state)
        .and_then(|()| f.sync_data())
        .map_err(io_at(state_path))?;
    drop(f);

    fs::rename(&tmp_mem, mem_path).map_err(io_at(mem_path))?;
    temps.0.retain(|p| p != &tmp_mem);
    fs::rename(&tmp_state, state_path).map_err(io_at(state_path))?;
    temps.0.clear();
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn dump_ok(size: u64) -> impl FnOnce(&File) -> Result<DumpStats, MemoryError> {
        move |f: &File| {
            f.set_len(size).unwrap();
            f.write_all_at(b"guest", 0).unwrap();
            Ok(DumpStats {
                total_bytes: size,
                written_bytes: 4096,
            })
        }
    }

    #[test]
    fn trailer_round_trip_and_damage() {
        let id = SnapshotId([3; 16]);
        let t = encode_mem_trailer(id, 1 << 20);
        assert_eq!(t.len() as u64, MEM_TRAILER_LEN);
        assert_eq!(decode_mem_trailer(&t).unwrap(), (id, 1 << 20));
        for i in 0..TRAILER_USED {
            let mut b = t.clone();
            b[i] ^= 1;
            assert!(decode_mem_trailer(&b).is_err(), "flip at {i} accepted");
        }
        assert!(decode_mem_trailer(&t[..10]).is_err());
    }

    #[test]
    fn pair_is_private_paired_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let (s, m) = (dir.path().join("s"), dir.path().join("m"));
        // A leftover of this process and one of a dead process are removed; others stay.
        fs::write(temp_path(&m), b"old").unwrap();
        fs::write(dir.path().join("s.tmp-4194304"), b"old").unwrap();
        fs::write(dir.path().join("s.tmp-1"), b"init is alive").unwrap();
        fs::write(dir.path().join("s.tmp-12x"), b"not ours").unwrap();
        let id = SnapshotId([9; 16]);
        write_pair(&s, &m, b"state", id, 8192, dump_ok(8192)).unwrap();
        for p in [&s, &m] {
            let mode = fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", p.display());
        }
        assert_eq!(fs::read(&s).unwrap(), b"state");
        let f = open_memory_file(&m, id, 8192).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 8192 + MEM_TRAILER_LEN);
        let e = open_memory_file(&m, SnapshotId([1; 16]), 8192).unwrap_err();
        assert!(e.to_string().contains("another snapshot"), "{e}");
        let e = open_memory_file(&m, id, 4096).unwrap_err();
        assert!(e.to_string().contains("does not match"), "{e}");
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["m", "s", "s.tmp-1", "s.tmp-12x"]);

        // A failing dump leaves the old pair and no temporary file.
        let err = write_pair(&s, &m, b"new", SnapshotId([2; 16]), 8192, |_| {
            Err(MemoryError::Layout("boom".into()))
        })
        .unwrap_err();
        assert!(err.to_string().contains("boom"), "{err}");
        assert_eq!(fs::read(&s).unwrap(), b"state");
        open_memory_file(&m, id, 8192).unwrap();
        assert!(!temp_path(&m).exists() && !temp_path(&s).exists());
        // A state target in a missing directory: the memory temp file goes too.
        let err = write_pair(
            &dir.path().join("nodir/s"),
            &m,
            b"x",
            SnapshotId([4; 16]),
            8192,
            dump_ok(8192),
        )
        .unwrap_err();
        assert!(err.to_string().contains("nodir/s"), "{err}");
        assert!(!temp_path(&m).exists());
        open_memory_file(&m, id, 8192).unwrap();
    }

    #[test]
    fn only_regular_files_are_opened_or_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        for (p, kind) in [
            (Path::new("/dev/zero"), "character device"),
            (dir.path(), "directory"),
            (fifo.as_path(), "FIFO"),
        ] {
            let e = open_regular(p).unwrap_err().to_string();
            assert!(e.contains(kind), "{e}");
            let e = check_create_target(p).unwrap_err();
            assert!(e.contains(kind), "{e}");
        }
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("/etc/hostname", &link).unwrap();
        assert!(
            check_create_target(&link)
                .unwrap_err()
                .contains("symbolic link")
        );
        check_create_target(&dir.path().join("new")).unwrap();
        assert!(check_create_target(Path::new("/")).is_err());
        let file = dir.path().join("f");
        fs::write(&file, b"abc").unwrap();
        check_create_target(&file).unwrap();
        let (f, len) = open_regular(&file).unwrap();
        assert_eq!(len, 3);
        let mut b = [0u8; 3];
        f.read_exact_at(&mut b, 0).unwrap();
        assert_eq!(&b, b"abc");
        assert!(matches!(
            read_state_file(&file),
            Err(ReadStateError::Snapshot(SnapshotError::TooShort { .. }))
        ));
    }
}
