//! Rows: how records are written to and read from their tables.
//!
//! [`rows`] is the one generic codec (a [`Record`](crate::Record) as JSON under its key);
//! [`queries`] holds the few queries that are not "by key" (who refers to a record, sandboxes by
//! state, label and template, page by page). Each takes a connection or transaction opened by
//! [`Store`](crate::Store) and returns [`Failure`], which the store turns into a [`StoreError`]
//! naming the file and the operation. Nothing here opens, locks or commits.

pub(crate) mod queries;
pub(crate) mod rows;

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
