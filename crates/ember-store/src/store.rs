//! [`Store`]: the public face of the crate — open a database, then run read and write
//! transactions ([`Tx`]) over ember-core's records, each write as durable as the caller asks
//! ([`Durability`]).
//!
//! Writes run in `BEGIN IMMEDIATE` on the writer connection, so writers from several threads or
//! processes queue on SQLite's write lock (up to the busy timeout) instead of failing or losing
//! updates, and a read-modify-write sees no interleaved writer. Reads run on a second
//! connection: in WAL mode they see the last committed state and never wait for a commit.
//!
//! # Durability per transaction
//! - [`Durability::Full`] (`synchronous=FULL`): the commit is fsynced before the call returns —
//!   it survives a power cut. For what outlives the host's processes: templates, snapshots,
//!   pools, ended sandboxes' records.
//! - [`Durability::Process`] (`synchronous=NORMAL` in WAL mode): the commit is in the WAL file
//!   (the OS page cache) before the call returns — it survives a crash or `kill -9` of the
//!   process, not a power cut. For what dies with the host anyway: live VMs and their
//!   sandboxes' running state. A power cut takes the VMs with it; what their records lose is
//!   found dead at the next start either way. Any later `Full` commit makes earlier `Process`
//!   commits durable too (the WAL is synced as a whole). This keeps an fsync (~0.5 ms here) off
//!   the path of every sandbox handoff.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use ember_core::Sandbox;
use parking_lot::Mutex;
use rusqlite::{Connection, TransactionBehavior};
use serde::{Deserialize, Serialize};

use crate::busy;
use crate::error::StoreError;
use crate::network::NetworkConfig;
use crate::open::{self, OpenCheck};
use crate::query::{Page, SandboxFilter};
use crate::record::{Record, Stored};
use crate::schema::SCHEMA_VERSION;
use crate::tx::Tx;

/// How to open a store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreConfig {
    /// The ranges network allocations come from.
    pub network: NetworkConfig,
    /// How long a writer waits for another process's write transaction before
    /// [`StoreError::Busy`].
    pub busy_timeout: Duration,
    /// How thoroughly the file is checked when opened.
    pub open_check: OpenCheck,
}

impl Default for StoreConfig {
    /// The default network ranges, a 10 s busy timeout and a quick integrity check.
    fn default() -> Self {
        Self {
            network: NetworkConfig::default(),
            busy_timeout: Duration::from_secs(10),
            open_check: OpenCheck::Quick,
        }
    }
}

/// How durable a write transaction's commit is (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// Fsynced before the call returns: survives a power cut.
    Full,
    /// Written to the WAL before the call returns: survives a crash of this process.
    Process,
}

impl Durability {
    fn pragma(self) -> &'static str {
        match self {
            Durability::Full => "FULL",
            Durability::Process => "NORMAL",
        }
    }
}

/// Called after every committed write transaction with its operation name, durability and how
/// long the transaction took (lock wait, statements and commit).
pub type CommitObserver = Arc<dyn Fn(&'static str, Durability, Duration) + Send + Sync>;

struct Writer {
    conn: Connection,
    /// The `synchronous` setting the connection has now.
    sync: Durability,
}

/// ember's durable host state in one SQLite file. `Send + Sync`: share it behind an `Arc`.
///
/// Closures passed to [`read`](Self::read) and [`write`](Self::write) run while a connection is
/// held and must not call back into the same `Store` (that would deadlock).
pub struct Store {
    writer: Mutex<Writer>,
    reader: Mutex<Connection>,
    path: PathBuf,
    config: StoreConfig,
    observer: RwLock<Option<CommitObserver>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating if missing) the store at `path`: checks the directory and the file,
    /// verifies its integrity and migrates its schema.
    ///
    /// Never resets a damaged file: corruption, truncation, a foreign database or a newer schema
    /// are errors that name the file, and the file is left untouched.
    pub fn open(path: impl AsRef<Path>, config: StoreConfig) -> Result<Store, StoreError> {
        config.network.validate()?;
        let path = path.as_ref().to_path_buf();
        let opened = open::open(&path, config.busy_timeout, config.open_check)?;
        let reader = open::open_reader(&path, config.busy_timeout)?;
        tracing::info!(
            path = %path.display(),
            created = opened.created,
            schema_version = SCHEMA_VERSION,
            migrated_from = opened.migrated_from,
            "opened ember store"
        );
        Ok(Store {
            writer: Mutex::new(Writer {
                conn: opened.conn,
                sync: Durability::Full,
            }),
            reader: Mutex::new(reader),
            path,
            config,
            observer: RwLock::new(None),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// The schema version of the file (always this build's [`SCHEMA_VERSION`] once open).
    pub fn schema_version(&self) -> u32 {
        SCHEMA_VERSION
    }

    /// Calls `observer` after every committed write (for commit latency metrics).
    pub fn set_commit_observer(&self, observer: CommitObserver) {
        *self.observer.write().unwrap_or_else(|p| p.into_inner()) = Some(observer);
    }

    fn sql_err(&self, op: &'static str) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        move |e| StoreError::sqlite(&self.path, op, self.config.busy_timeout, e)
    }

    /// Runs `f` in a read transaction: everything it reads is one committed state.
    pub fn read<T, E: From<StoreError>>(
        &self,
        op: &'static str,
        f: impl FnOnce(&Tx<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut conn = self.reader.lock();
        let _deadline = busy::Deadline::start(self.config.busy_timeout);
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Deferred)
            .map_err(self.sql_err(op))?;
        let value = f(&Tx::new(
            &tx,
            false,
            &self.path,
            op,
            self.config.busy_timeout,
            &self.config.network,
        ))?;
        tx.commit().map_err(self.sql_err(op))?;
        Ok(value)
    }

    /// Runs `f` in a write transaction and commits it with `durability`. If `f` returns an
    /// error (or panics), nothing it did is written.
    pub fn write<T, E: From<StoreError>>(
        &self,
        op: &'static str,
        durability: Durability,
        f: impl FnOnce(&Tx<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let t0 = Instant::now();
        let mut w = self.writer.lock();
        let _deadline = busy::Deadline::start(self.config.busy_timeout);
        if w.sync != durability {
            w.conn
                .pragma_update(None, "synchronous", durability.pragma())
                .map_err(self.sql_err(op))?;
            w.sync = durability;
        }
        let tx = w
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.sql_err(op))?;
        // On any error `tx` is dropped, which rolls the transaction back.
        let value = f(&Tx::new(
            &tx,
            true,
            &self.path,
            op,
            self.config.busy_timeout,
            &self.config.network,
        ))?;
        tx.commit().map_err(self.sql_err(op))?;
        drop(w);
        let observer = self
            .observer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(o) = observer {
            o(op, durability, t0.elapsed());
        }
        Ok(value)
    }

    /// The record `key` of `R`'s kind, if stored.
    pub fn get<R: Record>(&self, key: &str) -> Result<Option<Stored<R>>, StoreError> {
        self.read("get", |tx| tx.get(key))
    }

    /// The record `key`, or [`StoreError::NotFound`].
    pub fn load<R: Record>(&self, key: &str) -> Result<Stored<R>, StoreError> {
        self.read("load", |tx| tx.load(key))
    }

    /// Every record of `R`'s kind, by key.
    pub fn list<R: Record>(&self) -> Result<Vec<Stored<R>>, StoreError> {
        self.read("list", |tx| tx.list())
    }

    /// One page of sandboxes matching `filter`.
    pub fn sandboxes(&self, filter: &SandboxFilter) -> Result<Page<Sandbox>, StoreError> {
        self.read("list sandboxes", |tx| tx.sandboxes(filter))
    }

    /// Runs `PRAGMA integrity_check` and `PRAGMA foreign_key_check`; returns their findings
    /// (empty when the database is sound).
    pub fn integrity_check(&self) -> Result<Vec<String>, StoreError> {
        let conn = self.reader.lock();
        let _deadline = busy::Deadline::start(self.config.busy_timeout);
        let run = || -> rusqlite::Result<Vec<String>> {
            let mut findings = open::run_check(&conn, "integrity_check")?;
            let mut stmt = conn.prepare("PRAGMA foreign_key_check")?;
            let fk = stmt
                .query_map([], |r| {
                    Ok(format!(
                        "foreign key violation in {} row {}",
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            findings.extend(fk);
            Ok(findings)
        };
        run().map_err(self.sql_err("check integrity"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_runs_wal_and_switches_durability() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("ember.db"), StoreConfig::default()).unwrap();
        let sync = |store: &Store| -> i64 {
            store
                .writer
                .lock()
                .conn
                .pragma_query_value(None, "synchronous", |r| r.get(0))
                .unwrap()
        };
        {
            let w = store.writer.lock();
            let mode: String = w
                .conn
                .pragma_query_value(None, "journal_mode", |r| r.get(0))
                .unwrap();
            assert_eq!(mode, "wal");
        }
        assert_eq!(sync(&store), 2, "FULL by default");
        store
            .write::<_, StoreError>("noop", Durability::Process, |_| Ok(()))
            .unwrap();
        assert_eq!(sync(&store), 1, "NORMAL for process durability");
        store
            .write::<_, StoreError>("noop", Durability::Full, |_| Ok(()))
            .unwrap();
        assert_eq!(sync(&store), 2);
    }

    #[test]
    fn store_is_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Store>();
    }
}
