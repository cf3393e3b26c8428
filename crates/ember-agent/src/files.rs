//! The file requests on the guest's real file system: PutFile, GetFile, Stat, ListDir, MakeDir,
//! Remove, Rename.
//!
//! Owns their semantics as the wire format states them, mapped onto POSIX calls: PutFile and
//! GetFile touch only the chunk of one request (a file of any size streams through in pieces,
//! never buffered whole); PutFile at offset 0 creates missing parents (0o755) and applies `mode`
//! exactly to a new file; MakeDir applies `mode` exactly (no umask); ListDir walks depth-first,
//! each directory sorted by name, never entering symlinks; Stat, Remove and Rename act on a
//! final symlink itself. OS errors become the protocol's codes (`refusal`). Framing and paging
//! into replies are the server's job.
#![forbid(unsafe_code)]

use std::fs::{self, DirBuilder, OpenOptions};
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ember_agent_proto::limits::MAX_MODE;
use ember_agent_proto::message::FileKind;
use ember_agent_proto::{
    ErrorCode, FileInfo, GetFile, ListDir, ListedEntry, MakeDir, PutFile, Remove, Rename,
};

use crate::agent::Agent;
use crate::refusal::Refusal;
use crate::users::Names;

fn shown(path: &Path) -> std::path::Display<'_> {
    path.display()
}

/// PutFile: writes one chunk.
pub fn put_file(agent: &Agent, put: &PutFile<'_>) -> Result<(), Refusal> {
    let path = agent.resolver.resolve(put.path);
    let fail = |e: io::Error| Refusal::io(format!("write {}", shown(&path)), &e);
    if put.offset == 0 {
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
        {
            DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .map_err(|e| fail(parent_error(e)))?;
        }
        let existed = fs::symlink_metadata(&path).is_ok();
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(put.mode)
            // A FIFO without a reader fails (ENXIO) instead of holding the request.
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .map_err(fail)?;
        refuse_streams(&path, &file.metadata().map_err(fail)?)?;
        if !existed {
            // Exactly `mode`, whatever the umask.
            file.set_permissions(fs::Permissions::from_mode(put.mode))
                .map_err(fail)?;
        }
        file.write_all_at(put.data, 0).map_err(fail)?;
    } else {
        let file = OpenOptions::new().write(true).open(&path).map_err(fail)?;
        let size = file.metadata().map_err(fail)?.len();
        if put.offset > size {
            return Err(Refusal::new(
                ErrorCode::INVALID_ARGUMENT,
                format!(
                    "write {}: offset {} is past the end ({size} bytes)",
                    shown(&path),
                    put.offset
                ),
            ));
        }
        file.write_all_at(put.data, put.offset).map_err(fail)?;
    }
    Ok(())
}

/// GetFile: reads one chunk of at most `room` bytes into `data`; returns mode and size.
pub fn get_file(
    agent: &Agent,
    get: &GetFile<'_>,
    room: usize,
    data: &mut Vec<u8>,
) -> Result<(u32, u64), Refusal> {
    let path = agent.resolver.resolve(get.path);
    let fail = |e: io::Error| Refusal::io(format!("read {}", shown(&path)), &e);
    // Non-blocking open: a FIFO without a writer must not hold the request.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&path)
        .map_err(fail)?;
    let meta = file.metadata().map_err(fail)?;
    if meta.is_dir() {
        return Err(Refusal::new(
            ErrorCode::IS_A_DIRECTORY,
            format!("read {}: is a directory", shown(&path)),
        ));
    }
    refuse_streams(&path, &meta)?;
    let max = match get.max_len {
        0 => room,
        n => room.min(n as usize),
    };
    data.clear();
    data.resize(max, 0);
    // Read until `max` bytes or end of file (a file may shrink or grow meanwhile; /proc files
    // say size 0 and still have content).
    let mut got = 0;
    while got < max {
        let buf = data.get_mut(got..).unwrap_or_default();
        match file.read_at(buf, get.offset.saturating_add(got as u64)) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(fail(e)),
        }
    }
    data.truncate(got);
    let size = meta.len().max(get.offset.saturating_add(got as u64));
    Ok((meta.mode() & MAX_MODE, size))
}

/// Stat: what is at the path, a final symlink not followed.
pub fn stat(agent: &Agent, path: &[u8]) -> Result<FileInfo, Refusal> {
    let path = agent.resolver.resolve(path);
    let meta = fs::symlink_metadata(&path)
        .map_err(|e| Refusal::io(format!("stat {}", shown(&path)), &e))?;
    Ok(file_info(&path, &meta, &agent.users.names()))
}

/// ListDir: every entry from `list.offset` on (the server cuts the page).
pub fn list_dir(agent: &Agent, list: &ListDir<'_>) -> Result<Vec<ListedEntry>, Refusal> {
    let path = agent.resolver.resolve(list.path);
    let fail = |e: io::Error| Refusal::io(format!("list {}", shown(&path)), &e);
    if !fs::metadata(&path).map_err(fail)?.is_dir() {
        return Err(Refusal::new(
            ErrorCode::NOT_A_DIRECTORY,
            format!("list {}: not a directory", shown(&path)),
        ));
    }
    let names = agent.users.names();
    let mut all = Vec::new();
    walk(&path, b"", 1, list.depth, &names, &mut all).map_err(fail)?;
    let skip = (list.offset as usize).min(all.len());
    all.drain(..skip);
    Ok(all)
}

/// MakeDir: true if created, false if a directory was there.
pub fn make_dir(agent: &Agent, make: &MakeDir<'_>) -> Result<bool, Refusal> {
    let path = agent.resolver.resolve(make.path);
    let fail = |e: io::Error| Refusal::io(format!("make directory {}", shown(&path)), &e);
    match fs::symlink_metadata(&path) {
        Ok(meta) if meta.is_dir() => return Ok(false),
        // A symlink to a directory counts as the directory (mkdir -p agrees).
        Ok(meta) if meta.is_symlink() && fs::metadata(&path).is_ok_and(|m| m.is_dir()) => {
            return Ok(false);
        }
        Ok(_) => {
            return Err(Refusal::new(
                ErrorCode::ALREADY_EXISTS,
                format!("make directory {}: something else is there", shown(&path)),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(e)),
    }
    if make.parents
        && let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
    {
        DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(|e| fail(parent_error(e)))?;
    }
    DirBuilder::new()
        .mode(make.mode)
        .create(&path)
        .map_err(fail)?;
    fs::set_permissions(&path, fs::Permissions::from_mode(make.mode)).map_err(fail)?;
    Ok(true)
}

/// Remove: a file or symlink, an empty directory, or (recursive) a whole tree.
pub fn remove(agent: &Agent, remove: &Remove<'_>) -> Result<(), Refusal> {
    if agent.resolver.is_root(remove.path) {
        return Err(Refusal::new(
            ErrorCode::INVALID_ARGUMENT,
            "remove /: the root directory stays",
        ));
    }
    let path = agent.resolver.resolve(remove.path);
    let fail = |e: io::Error| Refusal::io(format!("remove {}", shown(&path)), &e);
    let meta = fs::symlink_metadata(&path).map_err(fail)?;
    let removed = match (meta.is_dir(), remove.recursive) {
        (true, true) => fs::remove_dir_all(&path),
        (true, false) => fs::remove_dir(&path),
        (false, _) => {
            if path.as_os_str().as_bytes().ends_with(b"/") {
                Err(io::Error::from_raw_os_error(libc::ENOTDIR))
            } else {
                fs::remove_file(&path)
            }
        }
    };
    removed.map_err(fail)
}

/// Rename: `rename(2)`.
pub fn rename(agent: &Agent, rename: &Rename<'_>) -> Result<(), Refusal> {
    if agent.resolver.is_root(rename.from) || agent.resolver.is_root(rename.to) {
        return Err(Refusal::new(
            ErrorCode::INVALID_ARGUMENT,
            "rename: the root directory stays",
        ));
    }
    let from = agent.resolver.resolve(rename.from);
    let to = agent.resolver.resolve(rename.to);
    fs::rename(&from, &to).map_err(|e| {
        let mut refusal = Refusal::io(format!("rename {} to {}", shown(&from), shown(&to)), &e);
        match e.raw_os_error() {
            // Linux says EEXIST for a non-empty directory in the way.
            Some(libc::EEXIST) => refusal.code = ErrorCode::NOT_EMPTY,
            // A directory into itself.
            Some(libc::EINVAL) => refusal.code = ErrorCode::INVALID_ARGUMENT,
            _ => {}
        }
        refusal
    })
}

/// FIFOs and sockets are not files to read or write in chunks.
fn refuse_streams(path: &Path, meta: &fs::Metadata) -> Result<(), Refusal> {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_fifo() || t.is_socket() {
        return Err(Refusal::new(
            ErrorCode::INVALID_ARGUMENT,
            format!("{}: a FIFO or socket, not a file", shown(path)),
        ));
    }
    Ok(())
}

/// Creating missing parents met something that is not a directory (`mkdir` says EEXIST).
fn parent_error(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::AlreadyExists {
        io::Error::from_raw_os_error(libc::ENOTDIR)
    } else {
        e
    }
}

/// What `meta` (of `path`, not followed) says, as the protocol reports it.
pub fn file_info(path: &Path, meta: &fs::Metadata, names: &Names) -> FileInfo {
    let file_type = meta.file_type();
    let kind = if file_type.is_file() {
        FileKind::File
    } else if file_type.is_dir() {
        FileKind::Directory
    } else if file_type.is_symlink() {
        FileKind::Symlink
    } else {
        FileKind::Other
    };
    let target = match kind {
        FileKind::Symlink => fs::read_link(path)
            .map(|t| t.into_os_string().into_vec())
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    let seconds = u64::try_from(meta.mtime()).unwrap_or(0);
    let nanos = u64::try_from(meta.mtime_nsec()).unwrap_or(0);
    FileInfo {
        kind,
        mode: meta.mode() & MAX_MODE,
        size: meta.len(),
        mtime_ns: seconds.saturating_mul(1_000_000_000).saturating_add(nanos),
        owner: names.user(meta.uid()),
        group: names.group(meta.gid()),
        target,
    }
}

/// Appends the entries of `dir` (and, while `level < depth`, of its subdirectories): depth
/// first, sorted by name, symlinks not followed; names relative to the listed directory.
fn walk(
    dir: &Path,
    prefix: &[u8],
    level: u32,
    depth: u32,
    names: &Names,
    out: &mut Vec<ListedEntry>,
) -> io::Result<()> {
    let mut entries = fs::read_dir(dir)?
        .map(|entry| entry.map(|e| e.file_name()))
        .collect::<io::Result<Vec<_>>>()?;
    entries.sort();
    for name in entries {
        let host: PathBuf = dir.join(&name);
        let meta = match fs::symlink_metadata(&host) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue, // removed meanwhile
            Err(e) => return Err(e),
        };
        let mut rel = prefix.to_vec();
        if !rel.is_empty() {
            rel.push(b'/');
        }
        rel.extend_from_slice(name.as_bytes());
        let descend = meta.is_dir() && level < depth;
        out.push(ListedEntry {
            name: rel.clone(),
            info: file_info(&host, &meta, names),
        });
        if descend {
            match walk(&host, &rel, level + 1, depth, names, out) {
                // An unreadable subdirectory is listed, not entered.
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {}
                other => other?,
            }
        }
    }
    Ok(())
}
