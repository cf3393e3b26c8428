//! Rows of `snapshots`: insert, select, delete, and who refers to a snapshot.

use std::path::PathBuf;

use ember_core::{SnapshotId, StackKey};
use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::columns::{
    Decode, StackColumns, columns_stack, ms_to_time, path_text, sql_to_uint, stack_columns,
    time_to_ms, u64_to_sql,
};
use crate::error::RecordKind;
use crate::snapshot::SnapshotRecord;
use crate::sql::Failure;

/// Inserts a validated snapshot.
pub(crate) fn insert(conn: &Connection, s: &SnapshotRecord) -> Result<(), Failure> {
    let (stack_name, stack_version, stack_vcpus, stack_mem) = stack_columns(s.stack.as_ref());
    conn.prepare_cached(
        "INSERT INTO snapshots (id, stack_name, stack_version, stack_vcpus, stack_mem_mib,
             state_path, mem_path, state_size, mem_size, checksum, created_at_ms, parent)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?
    .execute(params![
        s.id.as_str(),
        stack_name,
        stack_version,
        stack_vcpus,
        stack_mem,
        path_text("snapshot.state_path", &s.state_path)?,
        path_text("snapshot.mem_path", &s.mem_path)?,
        u64_to_sql("snapshot.state_size", s.state_size)?,
        u64_to_sql("snapshot.mem_size", s.mem_size)?,
        s.checksum,
        time_to_ms(s.created_at),
        s.parent.as_ref().map(SnapshotId::as_str),
    ])?;
    Ok(())
}

/// The snapshot `id`, if stored.
pub(crate) fn load(conn: &Connection, id: &SnapshotId) -> Result<Option<SnapshotRecord>, Failure> {
    let raw = conn
        .prepare_cached("SELECT * FROM snapshots WHERE id = ?1")?
        .query_row([id.as_str()], Raw::read)
        .optional()?;
    raw.map(Raw::decode).transpose()
}

/// Every snapshot by id, or only those of `stack`.
pub(crate) fn list(
    conn: &Connection,
    stack: Option<&StackKey>,
) -> Result<Vec<SnapshotRecord>, Failure> {
    let raws = match stack {
        None => conn
            .prepare_cached("SELECT * FROM snapshots ORDER BY id")?
            .query_map([], Raw::read)?
            .collect::<rusqlite::Result<Vec<_>>>()?,
        Some(k) => conn
            .prepare_cached(
                "SELECT * FROM snapshots WHERE stack_name = ?1 AND stack_version = ?2
                     AND stack_vcpus = ?3 AND stack_mem_mib = ?4 ORDER BY id",
            )?
            .query_map(
                params![k.name(), k.version(), k.vcpu_count(), k.mem_size_mib()],
                Raw::read,
            )?
            .collect::<rusqlite::Result<Vec<_>>>()?,
    };
    raws.into_iter().map(Raw::decode).collect()
}

/// Deletes snapshot `id`.
pub(crate) fn delete(conn: &Connection, id: &SnapshotId) -> Result<(), Failure> {
    conn.prepare_cached("DELETE FROM snapshots WHERE id = ?1")?
        .execute([id.as_str()])?;
    Ok(())
}

/// Ids of the snapshots that are diffs of `id`.
pub(crate) fn children(conn: &Connection, id: &str) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare_cached("SELECT id FROM snapshots WHERE parent = ?1 ORDER BY id")?;
    stmt.query_map([id], |r| r.get(0))?.collect()
}

/// A row as SQLite gives it, before validation.
struct Raw {
    id: String,
    stack: StackColumns,
    state_path: String,
    mem_path: String,
    state_size: i64,
    mem_size: i64,
    checksum: String,
    created_at_ms: i64,
    parent: Option<String>,
}

impl Raw {
    fn read(r: &Row<'_>) -> rusqlite::Result<Raw> {
        Ok(Raw {
            id: r.get("id")?,
            stack: (
                r.get("stack_name")?,
                r.get("stack_version")?,
                r.get("stack_vcpus")?,
                r.get("stack_mem_mib")?,
            ),
            state_path: r.get("state_path")?,
            mem_path: r.get("mem_path")?,
            state_size: r.get("state_size")?,
            mem_size: r.get("mem_size")?,
            checksum: r.get("checksum")?,
            created_at_ms: r.get("created_at_ms")?,
            parent: r.get("parent")?,
        })
    }

    fn decode(self) -> Result<SnapshotRecord, Failure> {
        let key = self.id.clone();
        self.decode_inner()
            .map_err(|problem| Failure::decode(RecordKind::Snapshot, key, problem))
    }

    fn decode_inner(self) -> Result<SnapshotRecord, Decode> {
        Ok(SnapshotRecord {
            id: SnapshotId::new(self.id).map_err(|e| Decode::new("id", e))?,
            stack: columns_stack(self.stack)?,
            state_path: PathBuf::from(self.state_path),
            mem_path: PathBuf::from(self.mem_path),
            state_size: sql_to_uint("state_size", self.state_size)?,
            mem_size: sql_to_uint("mem_size", self.mem_size)?,
            checksum: self.checksum,
            created_at: ms_to_time("created_at_ms", self.created_at_ms)?,
            parent: self
                .parent
                .map(SnapshotId::new)
                .transpose()
                .map_err(|e| Decode::new("parent", e))?,
        })
    }
}
