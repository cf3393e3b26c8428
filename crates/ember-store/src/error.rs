//! [`StoreError`]: every way the store can fail, typed, each naming the database file or the record
//! it concerns; [`UpdateError`] adds the caller's own error for `update` closures.
//!
//! This module owns the error vocabulary and the one place where raw SQLite errors are classified
//! (busy, corrupt, read-only, full, other). It does not log and does not decide policy.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use rusqlite::ErrorCode;

/// What kind of record a key names, for [`StoreError::NotFound`] and friends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// A snapshot ([`SnapshotInfo`](ember_core::SnapshotInfo)), keyed by its id.
    Snapshot,
    /// A template ([`Template`](ember_core::Template)), keyed by its name.
    Template,
    /// A warm pool ([`PoolSpec`](ember_core::PoolSpec)), keyed by its template's name.
    Pool,
    /// A sandbox ([`Sandbox`](ember_core::Sandbox)), keyed by its id.
    Sandbox,
    /// A live VM ([`VmRecord`](ember_core::VmRecord)), keyed by its id.
    Vm,
}

impl RecordKind {
    /// The table that holds this kind.
    pub(crate) fn table(self) -> &'static str {
        match self {
            RecordKind::Snapshot => "snapshots",
            RecordKind::Template => "templates",
            RecordKind::Pool => "pools",
            RecordKind::Sandbox => "sandboxes",
            RecordKind::Vm => "vms",
        }
    }
}

impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RecordKind::Snapshot => "snapshot",
            RecordKind::Template => "template",
            RecordKind::Pool => "pool",
            RecordKind::Sandbox => "sandbox",
            RecordKind::Vm => "VM",
        })
    }
}

/// A kind of network resource handed out by the allocator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resource {
    /// A guest IPv4 address.
    Ipv4,
    /// A guest MAC address.
    Mac,
    /// A guest vsock context id.
    VsockCid,
    /// A host TAP device name.
    TapName,
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Resource::Ipv4 => "IPv4 address",
            Resource::Mac => "MAC address",
            Resource::VsockCid => "vsock CID",
            Resource::TapName => "TAP device name",
        })
    }
}

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The directory that should hold the database does not exist.
    #[error(
        "cannot open ember store {path}: directory {dir} does not exist (ember-store does not create parent directories)"
    )]
    DirectoryMissing {
        /// The database file asked for.
        path: PathBuf,
        /// Its parent directory.
        dir: PathBuf,
    },
    /// The parent "directory" exists but is not a directory.
    #[error("cannot open ember store {path}: {dir} is not a directory")]
    NotADirectory {
        /// The database file asked for.
        path: PathBuf,
        /// Its parent.
        dir: PathBuf,
    },
    /// The directory cannot be written (permissions or a read-only file system); SQLite's WAL mode
    /// must create `<file>-wal` and `<file>-shm` beside the database.
    #[error(
        "cannot open ember store {path}: directory {dir} is not writable ({source}); the store creates its file and its -wal/-shm files there"
    )]
    DirectoryNotWritable {
        /// The database file asked for.
        path: PathBuf,
        /// Its parent directory.
        dir: PathBuf,
        /// The access check's error (EACCES, EROFS...).
        #[source]
        source: io::Error,
    },
    /// The database file exists but cannot be read and written by this process.
    #[error("cannot open ember store {path}: the file is not readable and writable ({source})")]
    FileNotWritable {
        /// The database file.
        path: PathBuf,
        /// The access check's error.
        #[source]
        source: io::Error,
    },
    /// The path names something that is not a regular file (a directory, a socket...).
    #[error("cannot open ember store {path}: it exists but is not a regular file")]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// The file is not an SQLite database at all (wrong magic, too short to hold a header).
    #[error("ember store {path} is not an SQLite database: {detail}; the file was left untouched")]
    NotADatabase {
        /// The database file.
        path: PathBuf,
        /// What was found instead.
        detail: String,
    },
    /// The file is an SQLite database but is damaged: truncated, failing its integrity check, or
    /// reported corrupt by SQLite during an operation.
    #[error(
        "ember store {path} is corrupt: {detail}; the file was left untouched, restore it from a backup or move it aside"
    )]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What is wrong (size mismatch, integrity-check lines, SQLite's message).
        detail: String,
    },
    /// An SQLite database that is not ember's (its `application_id` is not ember's).
    #[error(
        "{path} is an SQLite database of another application (application_id {found:#010x}, ember's is {expected:#010x}); refusing to touch it"
    )]
    ForeignDatabase {
        /// The database file.
        path: PathBuf,
        /// The application id found.
        found: i32,
        /// ember's application id.
        expected: i32,
    },
    /// The database was written by a newer ember whose schema this build does not know.
    #[error(
        "ember store {path} has schema version {found}, but this build of ember-store only knows versions up to {supported}; upgrade ember (the file was left untouched)"
    )]
    SchemaTooNew {
        /// The database file.
        path: PathBuf,
        /// The version in the file.
        found: u32,
        /// The newest version this build knows.
        supported: u32,
    },
    /// Another process held the write lock for longer than the busy timeout.
    #[error("ember store {path} stayed locked by another writer for {waited:?} during {op}")]
    Busy {
        /// The database file.
        path: PathBuf,
        /// What was attempted.
        op: &'static str,
        /// The busy timeout that elapsed.
        waited: Duration,
    },
    /// The file system refused a write (read-only mount, or the file became read-only).
    #[error("ember store {path} is read-only: {op} failed")]
    ReadOnly {
        /// The database file.
        path: PathBuf,
        /// What was attempted.
        op: &'static str,
    },
    /// The disk is full.
    #[error("ember store {path}: disk full during {op}")]
    DiskFull {
        /// The database file.
        path: PathBuf,
        /// What was attempted.
        op: &'static str,
    },
    /// A field of a record failed validation; `reason` says what is allowed.
    #[error("invalid {field}: {reason}")]
    InvalidField {
        /// The field, dotted (`sandbox.labels`, `network.subnet`).
        field: String,
        /// What is wrong and what would be accepted.
        reason: String,
    },
    /// No record with this key.
    #[error("{kind} {key:?} not found")]
    NotFound {
        /// The kind of record.
        kind: RecordKind,
        /// Its key.
        key: String,
    },
    /// A record with this key exists already (`insert` never overwrites).
    #[error("{kind} {key:?} already exists")]
    AlreadyExists {
        /// The kind of record.
        kind: RecordKind,
        /// Its key.
        key: String,
    },
    /// A conditional update found the record at another revision than expected: someone else
    /// changed it since it was read.
    #[error("{kind} {key:?} is at revision {found}, not {expected}; it changed since it was read")]
    Stale {
        /// The kind of record.
        kind: RecordKind,
        /// Its key.
        key: String,
        /// The revision the caller expected.
        expected: u64,
        /// The revision stored.
        found: u64,
    },
    /// A record refers to another record that does not exist.
    #[error("{field} refers to {kind} {key:?}, which is not in the store")]
    UnknownReference {
        /// The referring field (`template.snapshot`, `pool.template`...).
        field: &'static str,
        /// The kind of record referred to.
        kind: RecordKind,
        /// Its key.
        key: String,
    },
    /// A record cannot be removed while others refer to it.
    #[error("{kind} {key:?} is still referred to by {}", users.join(", "))]
    InUse {
        /// The kind of record.
        kind: RecordKind,
        /// Its key.
        key: String,
        /// Who refers to it (`template probe`, `pool probe`, `sandbox sb-1`).
        users: Vec<String>,
    },
    /// Every value of a configured range is taken.
    #[error(
        "no free {resource} left in {range} ({in_use} in use); release allocations or widen the range"
    )]
    Exhausted {
        /// What ran out.
        resource: Resource,
        /// The configured range, spelled out.
        range: String,
        /// How many values of the range are in use.
        in_use: u64,
    },
    /// A stored row does not decode into a valid record (edited by hand, or a bug).
    #[error("ember store {path}: {kind} {key:?} has an invalid {column}: {reason}")]
    CorruptRecord {
        /// The database file.
        path: PathBuf,
        /// The kind of record.
        kind: RecordKind,
        /// Its key.
        key: String,
        /// The column.
        column: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A file-system operation around the database failed.
    #[error("ember store {path}: {op} failed")]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// What was attempted.
        op: &'static str,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Any other SQLite failure.
    #[error("ember store {path}: {op} failed")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// What was attempted.
        op: &'static str,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
}

impl StoreError {
    /// Shorthand for [`StoreError::InvalidField`].
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        StoreError::InvalidField {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Classifies a raw SQLite error: busy, corrupt, read-only and full get their own variants,
    /// everything else keeps its source under [`StoreError::Sqlite`].
    pub(crate) fn sqlite(
        path: &std::path::Path,
        op: &'static str,
        busy_timeout: Duration,
        err: rusqlite::Error,
    ) -> Self {
        let path = path.to_path_buf();
        match err.sqlite_error_code() {
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StoreError::Busy {
                path,
                op,
                waited: busy_timeout,
            },
            Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => StoreError::Corrupt {
                path,
                detail: format!("{op}: {err}"),
            },
            Some(ErrorCode::ReadOnly) => StoreError::ReadOnly { path, op },
            Some(ErrorCode::DiskFull) => StoreError::DiskFull { path, op },
            _ => StoreError::Sqlite {
                path,
                op,
                source: err,
            },
        }
    }

    /// Whether this error says the database file itself is damaged or not a database.
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            StoreError::Corrupt { .. }
                | StoreError::NotADatabase { .. }
                | StoreError::CorruptRecord { .. }
        )
    }
}

/// The error of [`Store::update`](crate::Store::update): the store failed, or the caller's closure
/// rejected the change. Either way the transaction was rolled back and nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError<E> {
    /// The store failed (not found, invalid result, I/O, busy...).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The closure returned this error.
    #[error("update rejected by the caller")]
    Rejected(#[source] E),
}

impl<E> UpdateError<E> {
    /// The store's error, if the store (not the closure) failed.
    pub fn store_error(&self) -> Option<&StoreError> {
        match self {
            UpdateError::Store(e) => Some(e),
            UpdateError::Rejected(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_and_corrupt_are_classified() {
        let busy = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            None,
        );
        let e = StoreError::sqlite(
            std::path::Path::new("/x/ember.db"),
            "insert sandbox",
            Duration::from_secs(5),
            busy,
        );
        assert!(matches!(e, StoreError::Busy { .. }), "{e:?}");
        assert!(e.to_string().contains("/x/ember.db"));

        let corrupt = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
            None,
        );
        let e = StoreError::sqlite(
            std::path::Path::new("/x/ember.db"),
            "load sandbox",
            Duration::ZERO,
            corrupt,
        );
        assert!(e.is_corruption());
        assert!(e.to_string().contains("corrupt"), "{e}");
    }

    #[test]
    fn exhaustion_names_the_range() {
        let e = StoreError::Exhausted {
            resource: Resource::Ipv4,
            range: "10.0.0.0/30".into(),
            in_use: 1,
        };
        assert_eq!(
            e.to_string(),
            "no free IPv4 address left in 10.0.0.0/30 (1 in use); release allocations or widen the range"
        );
    }
}
