//! [`Tx`]: what a caller does inside one store transaction — get, list, insert, replace, update
//! and remove records, and take or release network allocations. Every call checks what it
//! writes ([`Record::check`]), that what it refers to exists, and that nothing refers to what it
//! removes; any error returned from the caller's closure rolls the whole transaction back.

use std::path::Path;
use std::time::Duration;

use ember_core::Sandbox;
use rusqlite::Connection;

use crate::alloc;
use crate::error::{RecordKind, StoreError};
use crate::network::{NetworkAllocation, NetworkConfig};
use crate::query::{Page, SandboxFilter};
use crate::record::{Record, Stored};
use crate::sql::{Failure, queries, rows};

/// One transaction: reads see one consistent state; in a write transaction no other writer
/// interleaves.
pub struct Tx<'a> {
    conn: &'a Connection,
    writable: bool,
    path: &'a Path,
    op: &'static str,
    busy_timeout: Duration,
    network: &'a NetworkConfig,
}

impl<'a> Tx<'a> {
    pub(crate) fn new(
        conn: &'a Connection,
        writable: bool,
        path: &'a Path,
        op: &'static str,
        busy_timeout: Duration,
        network: &'a NetworkConfig,
    ) -> Self {
        Self {
            conn,
            writable,
            path,
            op,
            busy_timeout,
            network,
        }
    }

    fn err(&self, f: Failure) -> StoreError {
        f.into_store(self.path, self.op, self.busy_timeout)
    }

    fn writing(&self) -> Result<(), StoreError> {
        if self.writable {
            Ok(())
        } else {
            Err(StoreError::invalid(
                "transaction",
                format!("{} is a read transaction; it cannot write", self.op),
            ))
        }
    }

    /// The record `key` of `R`'s kind, if stored.
    pub fn get<R: Record>(&self, key: &str) -> Result<Option<Stored<R>>, StoreError> {
        rows::get(self.conn, key).map_err(|f| self.err(f))
    }

    /// The record `key`, or [`StoreError::NotFound`].
    pub fn load<R: Record>(&self, key: &str) -> Result<Stored<R>, StoreError> {
        self.get(key)?.ok_or_else(|| StoreError::NotFound {
            kind: R::KIND,
            key: key.to_string(),
        })
    }

    /// Every record of `R`'s kind, by key.
    pub fn list<R: Record>(&self) -> Result<Vec<Stored<R>>, StoreError> {
        rows::list(self.conn).map_err(|f| self.err(f))
    }

    /// One page of sandboxes matching `filter`.
    pub fn sandboxes(&self, filter: &SandboxFilter) -> Result<Page<Sandbox>, StoreError> {
        filter.validate()?;
        queries::sandboxes(self.conn, filter).map_err(|f| self.err(f))
    }

    fn check_references<R: Record>(&self, record: &R) -> Result<(), StoreError> {
        for r in record.references() {
            if !rows::exists(self.conn, r.kind, &r.key).map_err(|f| self.err(f))? {
                return Err(StoreError::UnknownReference {
                    field: r.field,
                    kind: r.kind,
                    key: r.key,
                });
            }
        }
        Ok(())
    }

    /// Inserts `record`; a record with its key is [`StoreError::AlreadyExists`].
    pub fn insert<R: Record>(&self, record: &R) -> Result<Stored<R>, StoreError> {
        self.writing()?;
        record.check()?;
        self.check_references(record)?;
        rows::insert(self.conn, record).map_err(|f| self.err(f))
    }

    /// Inserts `record`, or replaces the record with its key.
    pub fn put<R: Record>(&self, record: &R) -> Result<Stored<R>, StoreError> {
        match self.get::<R>(&record.key())? {
            None => self.insert(record),
            Some(old) => self.write_over(record, old.revision),
        }
    }

    /// Replaces the record with `record`'s key if it is still at `revision` (the one the caller
    /// read); otherwise [`StoreError::Stale`].
    pub fn replace<R: Record>(&self, record: &R, revision: u64) -> Result<Stored<R>, StoreError> {
        let old = self.load::<R>(&record.key())?;
        if old.revision != revision {
            return Err(StoreError::Stale {
                kind: R::KIND,
                key: record.key(),
                expected: revision,
                found: old.revision,
            });
        }
        self.write_over(record, revision)
    }

    fn write_over<R: Record>(&self, record: &R, revision: u64) -> Result<Stored<R>, StoreError> {
        self.writing()?;
        record.check()?;
        self.check_references(record)?;
        rows::replace(self.conn, record, revision).map_err(|f| self.err(f))
    }

    /// Loads `key`, lets `change` modify it and writes it back. The change must keep the key;
    /// if `change` fails, the error is returned and nothing is written by this call.
    pub fn update<R: Record, E: From<StoreError>>(
        &self,
        key: &str,
        change: impl FnOnce(&mut R) -> Result<(), E>,
    ) -> Result<Stored<R>, E> {
        let Stored {
            mut record,
            revision,
            ..
        } = self.load::<R>(key)?;
        change(&mut record)?;
        if record.key() != key {
            return Err(StoreError::invalid(
                R::KIND.to_string(),
                format!(
                    "an update may not change the key {key:?} to {:?}",
                    record.key()
                ),
            )
            .into());
        }
        Ok(self.write_over(&record, revision)?)
    }

    /// Removes the record `key` and returns it (`None` if there was none). Refused with
    /// [`StoreError::InUse`] while other records refer to it.
    pub fn remove<R: Record>(&self, key: &str) -> Result<Option<R>, StoreError> {
        self.writing()?;
        let Some(old) = self.get::<R>(key)? else {
            return Ok(None);
        };
        self.refuse_if_used(R::KIND, key)?;
        rows::delete(self.conn, R::KIND, key).map_err(|f| self.err(f))?;
        Ok(Some(old.record))
    }

    /// Removes the record `key` without reading it back (what [`remove`](Self::remove) does
    /// for a caller that only needs it gone: no decoding of its body); whether there was one.
    /// Refused with [`StoreError::InUse`] while other records refer to it.
    pub fn delete<R: Record>(&self, key: &str) -> Result<bool, StoreError> {
        self.writing()?;
        self.refuse_if_used(R::KIND, key)?;
        rows::delete(self.conn, R::KIND, key).map_err(|f| self.err(f))
    }

    /// [`StoreError::InUse`] if other records refer to `key` of `kind`.
    fn refuse_if_used(&self, kind: RecordKind, key: &str) -> Result<(), StoreError> {
        let users = queries::users_of(self.conn, kind, key).map_err(|f| self.err(f))?;
        if users.is_empty() {
            return Ok(());
        }
        Err(StoreError::InUse {
            kind,
            key: key.to_string(),
            users,
        })
    }

    /// Gives `owner` a TAP name, an IPv4 address, a MAC and a vsock CID, each free in the
    /// configured ranges. An owner has at most one allocation.
    pub fn allocate_network(&self, owner: &str) -> Result<NetworkAllocation, StoreError> {
        self.writing()?;
        if let Some(a) = self.network_of(owner)? {
            return Err(StoreError::AlreadyExists {
                kind: crate::error::RecordKind::Sandbox,
                key: format!("{owner} (network allocation {})", a.tap),
            });
        }
        alloc::allocate(self.conn, self.network, owner).map_err(|f| self.err(f))
    }

    /// `owner`'s network allocation, if it has one.
    pub fn network_of(&self, owner: &str) -> Result<Option<NetworkAllocation>, StoreError> {
        alloc::load(self.conn, owner).map_err(|f| self.err(f))
    }

    /// The owners of every network allocation whose key starts with `prefix`, sorted.
    pub fn network_owners(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        alloc::owners_with_prefix(self.conn, prefix).map_err(|f| self.err(Failure::Sql(f)))
    }

    /// Releases `owner`'s network allocation; returns whether it had one.
    pub fn release_network(&self, owner: &str) -> Result<bool, StoreError> {
        self.writing()?;
        alloc::release(self.conn, owner).map_err(|f| self.err(Failure::Sql(f)))
    }
}
