//! [`Store`]: the public face of the crate — open a database, then save, load, list, update and
//! remove machines, snapshots and pools, each call one transaction.
//!
//! Every write runs in `BEGIN IMMEDIATE`, so writers from several threads or processes queue on
//! SQLite's write lock (up to the busy timeout) instead of failing or losing updates, and a
//! read-modify-write such as [`Store::update`] sees no interleaved writer. With
//! `synchronous=FULL` a call that returned `Ok` is on disk. `save_*` is insert-only: it fails with
//! [`StoreError::AlreadyExists`] rather than overwrite, and changes go through `update*`, whose
//! closure sees the current record. This module sequences transactions; rows are
//! the private `sql` module's job and allocation the private `alloc` module's.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ember_core::{SnapshotId, StackKey};
use parking_lot::Mutex;
use rusqlite::{Connection, Transaction, TransactionBehavior};
use serde::{Deserialize, Serialize};

use crate::alloc;
use crate::busy;
use crate::columns::now_ms;
use crate::error::{RecordKind, StoreError, UpdateError};
use crate::machine::{Machine, MachineRecord, MachineState};
use crate::names::MachineName;
use crate::network::NetworkConfig;
use crate::open::{self, OpenCheck};
use crate::pool::{PoolConfig, PoolRecord};
use crate::recovery::RecoveryReport;
use crate::schema::SCHEMA_VERSION;
use crate::snapshot::SnapshotRecord;
use crate::sql::{self, Failure, machines, pools, snapshots};

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

/// Whether [`Store::save`] gives the machine a network allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkRequest {
    /// No allocation.
    None,
    /// Allocate a TAP name, an IPv4 address, a MAC and a vsock CID in the same transaction.
    Allocate,
}

/// A failure inside a write transaction: the store's, or the caller's closure's.
enum TxError<E> {
    Failed(Failure),
    Rejected(E),
}

impl<E> From<Failure> for TxError<E> {
    fn from(f: Failure) -> Self {
        TxError::Failed(f)
    }
}

impl<E> From<StoreError> for TxError<E> {
    fn from(e: StoreError) -> Self {
        TxError::Failed(Failure::Store(e))
    }
}

impl<E> From<rusqlite::Error> for TxError<E> {
    fn from(e: rusqlite::Error) -> Self {
        TxError::Failed(Failure::Sql(e))
    }
}

/// ember's durable host state in one SQLite file. `Send + Sync`: share it behind an `Arc`.
///
/// Calls from one `Store` are serialized on its connection; closures passed to `update*` run
/// inside the transaction and must not call back into the same `Store` (that would deadlock).
pub struct Store {
    conn: Mutex<Connection>,
    path: PathBuf,
    config: StoreConfig,
    recovery: RecoveryReport,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("recovery", &self.recovery.len())
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating if missing) the store at `path`: checks the directory and the file, verifies
    /// its integrity, migrates its schema, and takes the [recovery report](Self::recovery_report).
    ///
    /// Never resets a damaged file: corruption, truncation, a foreign database or a newer schema
    /// are errors that name the file, and the file is left untouched.
    pub fn open(path: impl AsRef<Path>, config: StoreConfig) -> Result<Store, StoreError> {
        config.network.validate()?;
        let path = path.as_ref().to_path_buf();
        let opened = open::open(&path, config.busy_timeout, config.open_check)?;
        let mut store = Store {
            conn: Mutex::new(opened.conn),
            path,
            config,
            recovery: RecoveryReport::default(),
        };
        store.recovery = store.scan_recovery()?;
        tracing::info!(
            path = %store.path.display(),
            created = opened.created,
            schema_version = SCHEMA_VERSION,
            migrated_from = opened.migrated_from,
            needing_recovery = store.recovery.len(),
            "opened ember store"
        );
        for m in &store.recovery.machines {
            tracing::warn!(
                machine = %m.name,
                last_state = %m.last_state,
                pid = m.vmm.as_ref().map(|p| p.pid),
                "machine needs recovery"
            );
        }
        Ok(store)
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

    /// The machines that were stored as starting, running, paused or stopping when the store was
    /// opened: each may have a live VMM process to re-adopt or clean up.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// The same report, taken now.
    pub fn scan_recovery(&self) -> Result<RecoveryReport, StoreError> {
        let states: Vec<MachineState> = MachineState::ALL
            .into_iter()
            .filter(|s| s.needs_recovery())
            .collect();
        let records = self.read("scan for recovery", |c| machines::list(c, Some(&states)))?;
        Ok(RecoveryReport::from_records(&records))
    }

    fn read<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&Connection) -> Result<T, Failure>,
    ) -> Result<T, StoreError> {
        let conn = self.conn.lock();
        let _deadline = busy::Deadline::start(self.config.busy_timeout);
        f(&conn).map_err(|e| e.into_store(&self.path, op, self.config.busy_timeout))
    }

    fn write<T, E>(
        &self,
        op: &'static str,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, TxError<E>>,
    ) -> Result<T, UpdateError<E>> {
        let mut conn = self.conn.lock();
        let _deadline = busy::Deadline::start(self.config.busy_timeout);
        let store_err = |f: Failure| f.into_store(&self.path, op, self.config.busy_timeout);
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| UpdateError::Store(store_err(Failure::Sql(e))))?;
        // On any error `tx` is dropped here, which rolls the transaction back.
        let value = f(&tx).map_err(|e| match e {
            TxError::Failed(f) => UpdateError::Store(store_err(f)),
            TxError::Rejected(e) => UpdateError::Rejected(e),
        })?;
        tx.commit()
            .map_err(|e| UpdateError::Store(store_err(Failure::Sql(e))))?;
        Ok(value)
    }

    fn write_store<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, Failure>,
    ) -> Result<T, StoreError> {
        self.write::<T, Infallible>(op, |tx| f(tx).map_err(TxError::Failed))
            .map_err(|e| match e {
                UpdateError::Store(e) => e,
                UpdateError::Rejected(never) => match never {},
            })
    }

    // ---- machines -------------------------------------------------------------------------

    /// Inserts a new machine (insert-only: an existing name is [`StoreError::AlreadyExists`]) and,
    /// with [`NetworkRequest::Allocate`], gives it a network allocation in the same transaction.
    pub fn save(
        &self,
        name: &MachineName,
        machine: &Machine,
        network: NetworkRequest,
    ) -> Result<MachineRecord, StoreError> {
        machine.validate()?;
        let record = self.write_store("save machine", |tx| {
            if machines::load(tx, name)?.is_some() {
                return Err(StoreError::AlreadyExists {
                    kind: RecordKind::Machine,
                    key: name.to_string(),
                }
                .into());
            }
            check_source_snapshot(tx, machine)?;
            let id = machines::insert(tx, name, machine, now_ms())?;
            if network == NetworkRequest::Allocate {
                alloc::allocate(tx, &self.config.network, id)?;
            }
            reload(tx, name)
        })?;
        tracing::debug!(machine = %name, network = ?record.network, "saved machine");
        Ok(record)
    }

    /// The machine `name`, or [`StoreError::NotFound`].
    pub fn load(&self, name: &MachineName) -> Result<MachineRecord, StoreError> {
        self.get(name)?.ok_or_else(|| StoreError::NotFound {
            kind: RecordKind::Machine,
            key: name.to_string(),
        })
    }

    /// The machine `name`, if stored.
    pub fn get(&self, name: &MachineName) -> Result<Option<MachineRecord>, StoreError> {
        self.read("load machine", |c| {
            Ok(machines::load(c, name)?.map(|(_, r)| r))
        })
    }

    /// Every machine, by name.
    pub fn list(&self) -> Result<Vec<MachineRecord>, StoreError> {
        self.read("list machines", |c| machines::list(c, None))
    }

    /// Loads `name`, lets `change` modify it, validates the result and writes it back, all in one
    /// write transaction; its revision goes up by one. If `change` returns an error, panics, or the
    /// result is invalid, nothing is written.
    ///
    /// `change` runs while the store is locked: keep it short and do not call the store from it.
    pub fn update<E>(
        &self,
        name: &MachineName,
        change: impl FnOnce(&mut Machine) -> Result<(), E>,
    ) -> Result<MachineRecord, UpdateError<E>> {
        self.update_inner(name, None, change)
    }

    /// Like [`Store::update`], but only if the record is still at `revision` (the one a caller read
    /// earlier, such as a [`RecoveryEntry`](crate::RecoveryEntry)'s); otherwise
    /// [`StoreError::Stale`] and nothing is written.
    pub fn update_at<E>(
        &self,
        name: &MachineName,
        revision: u64,
        change: impl FnOnce(&mut Machine) -> Result<(), E>,
    ) -> Result<MachineRecord, UpdateError<E>> {
        self.update_inner(name, Some(revision), change)
    }

    fn update_inner<E>(
        &self,
        name: &MachineName,
        expected_revision: Option<u64>,
        change: impl FnOnce(&mut Machine) -> Result<(), E>,
    ) -> Result<MachineRecord, UpdateError<E>> {
        let record = self.write("update machine", |tx| {
            let (id, record) = machines::load(tx, name)?.ok_or_else(|| StoreError::NotFound {
                kind: RecordKind::Machine,
                key: name.to_string(),
            })?;
            if let Some(expected) = expected_revision
                && expected != record.revision
            {
                return Err(StoreError::Stale {
                    kind: RecordKind::Machine,
                    key: name.to_string(),
                    expected,
                    found: record.revision,
                }
                .into());
            }
            let mut machine = record.machine;
            change(&mut machine).map_err(TxError::Rejected)?;
            machine.validate()?;
            check_source_snapshot(tx, &machine)?;
            machines::update(tx, id, &machine, now_ms())?;
            Ok(reload(tx, name)?)
        })?;
        tracing::debug!(machine = %name, revision = record.revision, state = %record.machine.state, "updated machine");
        Ok(record)
    }

    /// Removes the machine `name` and releases its network allocation. Returns the removed record
    /// (so the caller knows what was released), or `None` if there was no such machine.
    pub fn remove(&self, name: &MachineName) -> Result<Option<MachineRecord>, StoreError> {
        let removed = self.write_store("remove machine", |tx| {
            let Some((id, record)) = machines::load(tx, name)? else {
                return Ok(None);
            };
            machines::delete(tx, id)?;
            Ok(Some(record))
        })?;
        if removed.is_some() {
            tracing::debug!(machine = %name, "removed machine");
        }
        Ok(removed)
    }

    // ---- snapshots ------------------------------------------------------------------------

    /// Inserts a snapshot (insert-only; snapshots are immutable). Its parent must be stored.
    pub fn save_snapshot(&self, snapshot: &SnapshotRecord) -> Result<(), StoreError> {
        snapshot.validate()?;
        self.write_store("save snapshot", |tx| {
            if snapshots::load(tx, &snapshot.id)?.is_some() {
                return Err(StoreError::AlreadyExists {
                    kind: RecordKind::Snapshot,
                    key: snapshot.id.to_string(),
                }
                .into());
            }
            if let Some(parent) = &snapshot.parent
                && !sql::snapshot_exists(tx, parent.as_str())?
            {
                return Err(StoreError::UnknownReference {
                    field: "snapshot.parent",
                    kind: RecordKind::Snapshot,
                    key: parent.to_string(),
                }
                .into());
            }
            snapshots::insert(tx, snapshot)
        })?;
        tracing::debug!(snapshot = %snapshot.id, "saved snapshot");
        Ok(())
    }

    /// The snapshot `id`, or [`StoreError::NotFound`].
    pub fn load_snapshot(&self, id: &SnapshotId) -> Result<SnapshotRecord, StoreError> {
        self.read("load snapshot", |c| snapshots::load(c, id))?
            .ok_or_else(|| StoreError::NotFound {
                kind: RecordKind::Snapshot,
                key: id.to_string(),
            })
    }

    /// Every snapshot by id, or only those of `stack`.
    pub fn list_snapshots(
        &self,
        stack: Option<&StackKey>,
    ) -> Result<Vec<SnapshotRecord>, StoreError> {
        self.read("list snapshots", |c| snapshots::list(c, stack))
    }

    /// Removes snapshot `id` (the record only; files are the caller's). Refused with
    /// [`StoreError::InUse`] while a machine, a pool or a diff snapshot refers to it. Returns the
    /// removed record, or `None` if there was none.
    pub fn remove_snapshot(&self, id: &SnapshotId) -> Result<Option<SnapshotRecord>, StoreError> {
        self.write_store("remove snapshot", |tx| {
            let Some(record) = snapshots::load(tx, id)? else {
                return Ok(None);
            };
            let mut users: Vec<String> = machines::users_of_snapshot(tx, id.as_str())?
                .into_iter()
                .map(|m| format!("machine {m}"))
                .collect();
            users.extend(
                pools::users_of_snapshot(tx, id.as_str())?
                    .into_iter()
                    .map(|p| format!("pool {p}")),
            );
            users.extend(
                snapshots::children(tx, id.as_str())?
                    .into_iter()
                    .map(|s| format!("snapshot {s}")),
            );
            if !users.is_empty() {
                return Err(StoreError::InUse {
                    kind: RecordKind::Snapshot,
                    key: id.to_string(),
                    users,
                }
                .into());
            }
            snapshots::delete(tx, id)?;
            Ok(Some(record))
        })
    }

    // ---- pools ----------------------------------------------------------------------------

    /// Inserts the pool for `stack` (insert-only); its template snapshot must be stored.
    pub fn save_pool(
        &self,
        stack: &StackKey,
        config: &PoolConfig,
    ) -> Result<PoolRecord, StoreError> {
        config.validate()?;
        self.write_store("save pool", |tx| {
            if pools::exists(tx, stack)? {
                return Err(StoreError::AlreadyExists {
                    kind: RecordKind::Pool,
                    key: stack.to_string(),
                }
                .into());
            }
            check_template(tx, config)?;
            pools::insert(tx, stack, config, now_ms())?;
            reload_pool(tx, stack)
        })
    }

    /// The pool for `stack`, or [`StoreError::NotFound`].
    pub fn load_pool(&self, stack: &StackKey) -> Result<PoolRecord, StoreError> {
        self.read("load pool", |c| pools::load(c, stack))?
            .ok_or_else(|| StoreError::NotFound {
                kind: RecordKind::Pool,
                key: stack.to_string(),
            })
    }

    /// Every pool, by stack.
    pub fn list_pools(&self) -> Result<Vec<PoolRecord>, StoreError> {
        self.read("list pools", pools::list)
    }

    /// Like [`Store::update`], for the pool of `stack`.
    pub fn update_pool<E>(
        &self,
        stack: &StackKey,
        change: impl FnOnce(&mut PoolConfig) -> Result<(), E>,
    ) -> Result<PoolRecord, UpdateError<E>> {
        self.write("update pool", |tx| {
            let record = pools::load(tx, stack)?.ok_or_else(|| StoreError::NotFound {
                kind: RecordKind::Pool,
                key: stack.to_string(),
            })?;
            let mut config = record.config;
            change(&mut config).map_err(TxError::Rejected)?;
            config.validate()?;
            check_template(tx, &config)?;
            pools::update(tx, stack, &config, now_ms())?;
            Ok(reload_pool(tx, stack)?)
        })
    }

    /// Removes the pool of `stack`; returns it, or `None` if there was none.
    pub fn remove_pool(&self, stack: &StackKey) -> Result<Option<PoolRecord>, StoreError> {
        self.write_store("remove pool", |tx| {
            let record = pools::load(tx, stack)?;
            if record.is_some() {
                pools::delete(tx, stack)?;
            }
            Ok(record)
        })
    }

    // ---- maintenance ----------------------------------------------------------------------

    /// Runs `PRAGMA integrity_check` and `PRAGMA foreign_key_check`; returns their findings
    /// (empty when the database is sound).
    pub fn integrity_check(&self) -> Result<Vec<String>, StoreError> {
        self.read("check integrity", |c| {
            let mut findings = open::run_check(c, "integrity_check")?;
            let mut stmt = c.prepare("PRAGMA foreign_key_check")?;
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
        })
    }
}

/// The record just written under `name`.
fn reload(tx: &Transaction<'_>, name: &MachineName) -> Result<MachineRecord, Failure> {
    machines::load(tx, name)?.map(|(_, r)| r).ok_or_else(|| {
        Failure::Store(StoreError::NotFound {
            kind: RecordKind::Machine,
            key: name.to_string(),
        })
    })
}

/// The pool just written under `stack`.
fn reload_pool(tx: &Transaction<'_>, stack: &StackKey) -> Result<PoolRecord, Failure> {
    pools::load(tx, stack)?.ok_or_else(|| {
        Failure::Store(StoreError::NotFound {
            kind: RecordKind::Pool,
            key: stack.to_string(),
        })
    })
}

fn check_source_snapshot(tx: &Transaction<'_>, m: &Machine) -> Result<(), Failure> {
    match &m.source_snapshot {
        Some(s) if !sql::snapshot_exists(tx, s.as_str())? => {
            Err(Failure::Store(StoreError::UnknownReference {
                field: "machine.source_snapshot",
                kind: RecordKind::Snapshot,
                key: s.to_string(),
            }))
        }
        _ => Ok(()),
    }
}

fn check_template(tx: &Transaction<'_>, c: &PoolConfig) -> Result<(), Failure> {
    if sql::snapshot_exists(tx, c.template_snapshot.as_str())? {
        Ok(())
    } else {
        Err(Failure::Store(StoreError::UnknownReference {
            field: "pool.template_snapshot",
            kind: RecordKind::Snapshot,
            key: c.template_snapshot.to_string(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_runs_wal_full_sync_and_foreign_keys() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("ember.db"), StoreConfig::default()).unwrap();
        let conn = store.conn.lock();
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        let sync: i64 = conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap();
        let fk: i64 = conn
            .pragma_query_value(None, "foreign_keys", |r| r.get(0))
            .unwrap();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!((mode.as_str(), sync, fk), ("wal", 2, 1), "2 is FULL");
        assert_eq!(version, i64::from(SCHEMA_VERSION));
    }

    #[test]
    fn store_is_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Store>();
    }
}
