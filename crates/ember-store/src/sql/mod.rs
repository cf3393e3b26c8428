//! Rows: how each record is written to and read from its tables.
//!
//! One submodule per table family; each takes a connection or transaction opened by
//! [`Store`](crate::Store) and returns [`Failure`], which the store turns into a
//! [`StoreError`] naming the file and the operation. Nothing here opens, locks or commits.

pub(crate) mod machines;
pub(crate) mod pools;
pub(crate) mod snapshots;

use std::path::Path;
use std::time::Duration;

use crate::columns::Decode;
use crate::error::{RecordKind, StoreError};

/// Why a row operation failed, before the store adds its context.
#[derive(Debug)]
pub(crate) enum Failure {
    /// SQLite failed.
    Sql(rusqlite::Error),
    /// A typed store error (not found, exhausted, invalid...), already complete.
    Store(StoreError),
    /// A stored row did not decode.
    Decode {
        /// The kind of record.
        kind: RecordKind,
        /// Its key.
        key: String,
        /// The column and the problem.
        problem: Decode,
    },
}

impl From<rusqlite::Error> for Failure {
    fn from(e: rusqlite::Error) -> Self {
        Failure::Sql(e)
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Store(e)
    }
}

impl Failure {
    /// A decode problem of the record `key`.
    pub fn decode(kind: RecordKind, key: impl ToString, problem: Decode) -> Self {
        Failure::Decode {
            kind,
            key: key.to_string(),
            problem,
        }
    }

    /// The complete error, naming the database file and the operation.
    pub fn into_store(self, path: &Path, op: &'static str, busy_timeout: Duration) -> StoreError {
        match self {
            Failure::Sql(e) => StoreError::sqlite(path, op, busy_timeout, e),
            Failure::Store(e) => e,
            Failure::Decode { kind, key, problem } => StoreError::CorruptRecord {
                path: path.to_path_buf(),
                kind,
                key,
                column: problem.column,
                reason: problem.reason,
            },
        }
    }
}

/// Whether a snapshot with this id is stored.
pub(crate) fn snapshot_exists(conn: &rusqlite::Connection, id: &str) -> rusqlite::Result<bool> {
    conn.prepare_cached("SELECT EXISTS (SELECT 1 FROM snapshots WHERE id = ?1)")?
        .query_row([id], |r| r.get(0))
}
