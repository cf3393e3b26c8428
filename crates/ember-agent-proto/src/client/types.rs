//! Owned results and options of the host client.
//!
//! Owns the std-side, owned counterparts of borrowed replies ([`AgentInfo`], [`ExecOutput`],
//! [`FileContents`], [`FileInfo`], [`ListedEntry`]) and [`ConnectOptions`]. Copying out of the
//! frame buffer happens once, here.

use std::time::Duration;

use crate::limits::MAX_FRAME_LEN;
use crate::message::{DirEntry, DirListing, ExecResult, FileKind, FileStat, HelloOk};

/// What Hello told about the agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentInfo {
    /// The protocol version in force.
    pub version: u8,
    /// Largest frame the agent accepts; requests never exceed it.
    pub max_frame_len: usize,
    /// Agent name.
    pub name: String,
    /// Agent software version.
    pub software_version: String,
    /// Host-side port the VMM assigned in the vsock handshake (`None` without a handshake).
    pub host_port: Option<u32>,
}

impl AgentInfo {
    pub(crate) fn from_hello(ok: &HelloOk<'_>, host_port: Option<u32>) -> Self {
        AgentInfo {
            version: ok.version,
            max_frame_len: (ok.max_frame_len as usize).min(MAX_FRAME_LEN),
            name: ok.name.to_owned(),
            software_version: ok.software_version.to_owned(),
            host_port,
        }
    }
}

/// How a command run by Exec ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecOutput {
    /// Exit status (`-N` for death by signal N).
    pub exit_code: i32,
    /// Standard output.
    pub stdout: Vec<u8>,
    /// Standard error.
    pub stderr: Vec<u8>,
    /// The agent cut stdout to fit its reply.
    pub stdout_truncated: bool,
    /// The agent cut stderr to fit its reply.
    pub stderr_truncated: bool,
}

impl ExecOutput {
    /// Whether the command exited with status 0.
    pub fn success(&self) -> bool {
        self.exit_code == 0
    }
}

impl From<&ExecResult<'_>> for ExecOutput {
    fn from(r: &ExecResult<'_>) -> Self {
        ExecOutput {
            exit_code: r.exit_code,
            stdout: r.stdout.to_vec(),
            stderr: r.stderr.to_vec(),
            stdout_truncated: r.stdout_truncated,
            stderr_truncated: r.stderr_truncated,
        }
    }
}

/// A whole file read from the guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileContents {
    /// Permission bits.
    pub mode: u32,
    /// The bytes.
    pub data: Vec<u8>,
}

/// What is at a guest path (Stat, and each ListDir entry).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FileInfo {
    /// File, directory, symlink or other.
    pub kind: FileKind,
    /// Permission bits (at most 0o7777).
    pub mode: u32,
    /// Size in bytes.
    pub size: u64,
    /// Last modification, nanoseconds since the Unix epoch; 0 when the agent has no clock.
    pub mtime_ns: u64,
    /// The owner's user name (or decimal uid).
    pub owner: String,
    /// The group's name (or decimal gid).
    pub group: String,
    /// A symlink's target; empty for every other kind.
    pub target: Vec<u8>,
}

impl FileInfo {
    /// The wire form (borrowing from `self`).
    pub fn wire(&self) -> FileStat<'_> {
        FileStat {
            kind: self.kind,
            mode: self.mode,
            size: self.size,
            mtime_ns: self.mtime_ns,
            owner: &self.owner,
            group: &self.group,
            target: &self.target,
        }
    }

    /// What `meta` (of `path`, not followed) says, as the protocol reports it, with the owner's
    /// and group's names already resolved (agents resolve them their own way).
    pub fn from_metadata(
        path: &std::path::Path,
        meta: &std::fs::Metadata,
        owner: String,
        group: String,
    ) -> FileInfo {
        use std::os::unix::ffi::OsStringExt;
        use std::os::unix::fs::MetadataExt;
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
            FileKind::Symlink => std::fs::read_link(path)
                .map(|t| t.into_os_string().into_vec())
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        let seconds = u64::try_from(meta.mtime()).unwrap_or(0);
        let nanos = u64::try_from(meta.mtime_nsec()).unwrap_or(0);
        FileInfo {
            kind,
            mode: meta.mode() & crate::limits::MAX_MODE,
            size: meta.len(),
            mtime_ns: seconds.saturating_mul(1_000_000_000).saturating_add(nanos),
            owner,
            group,
            target,
        }
    }
}

impl FileInfo {
    /// Whether this is a directory.
    pub fn is_dir(&self) -> bool {
        self.kind == FileKind::Directory
    }

    /// Whether this is a regular file.
    pub fn is_file(&self) -> bool {
        self.kind == FileKind::File
    }
}

impl From<&FileStat<'_>> for FileInfo {
    fn from(s: &FileStat<'_>) -> Self {
        FileInfo {
            kind: s.kind,
            mode: s.mode,
            size: s.size,
            mtime_ns: s.mtime_ns,
            owner: s.owner.to_owned(),
            group: s.group.to_owned(),
            target: s.target.to_vec(),
        }
    }
}

/// One entry of a directory listing.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ListedEntry {
    /// The path relative to the listed directory (`a`, `a/b` at depth 2, ...).
    pub name: Vec<u8>,
    /// What it is.
    pub info: FileInfo,
}

/// The page of a listing an agent answers ListDir with: from `rest` (the entries past the
/// request's offset), at most `max_entries` (0: no limit) whose encoding fits `room` bytes of
/// reply, and whether entries remain after it. `None` when not even the first entry fits (the
/// agent answers TOO_LARGE). The reply is `DirListing { more, entries:
/// DirEntries::from_slice(&page) }`.
pub fn listing_page(
    rest: &[ListedEntry],
    max_entries: u32,
    room: usize,
) -> Option<(Vec<DirEntry<'_>>, bool)> {
    let max = match max_entries {
        0 => usize::MAX,
        n => n as usize,
    };
    let mut used = DirListing::OVERHEAD;
    let mut page = Vec::new();
    for entry in rest.iter().take(max) {
        let entry = DirEntry {
            name: &entry.name,
            stat: entry.info.wire(),
        };
        used += entry.encoded_len();
        if used > room {
            break;
        }
        page.push(entry);
    }
    if page.is_empty() && !rest.is_empty() {
        return None;
    }
    let more = page.len() < rest.len();
    Some((page, more))
}

impl From<&DirEntry<'_>> for ListedEntry {
    fn from(e: &DirEntry<'_>) -> Self {
        ListedEntry {
            name: e.name.to_vec(),
            info: FileInfo::from(&e.stat),
        }
    }
}

/// How [`AgentClient`](super::AgentClient) connects and how long calls may take.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// Bound on connect + vsock handshake + Hello.
    pub connect_timeout: Duration,
    /// Bound on each later call (settable per client with `set_call_timeout`).
    pub call_timeout: Duration,
    /// Largest reply frame the client accepts (announced in Hello; clamped to 4 KiB..=1 MiB).
    pub max_frame_len: usize,
    /// Name announced in Hello.
    pub client_name: String,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            connect_timeout: Duration::from_secs(1),
            call_timeout: Duration::from_secs(5),
            max_frame_len: MAX_FRAME_LEN,
            client_name: "ember-host".to_owned(),
        }
    }
}

impl ConnectOptions {
    /// Options with one timeout for connecting and for each call.
    pub fn with_timeout(timeout: Duration) -> Self {
        ConnectOptions {
            connect_timeout: timeout,
            call_timeout: timeout,
            ..ConnectOptions::default()
        }
    }
}
