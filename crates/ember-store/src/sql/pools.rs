//! Rows of `pools`: upsert-free insert, select, update, delete, and pools using a snapshot.

use std::time::Duration;

use ember_core::{SnapshotId, StackKey};
use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::columns::{Decode, StackColumns, columns_stack, ms_to_time, sql_to_uint};
use crate::error::RecordKind;
use crate::pool::{PoolConfig, PoolRecord};
use crate::sql::Failure;

const KEY: &str =
    "stack_name = ?1 AND stack_version = ?2 AND stack_vcpus = ?3 AND stack_mem_mib = ?4";

fn max_age_ms(c: &PoolConfig) -> Option<i64> {
    // validate() guarantees it fits.
    c.max_age
        .map(|a| i64::try_from(a.as_millis()).unwrap_or(i64::MAX))
}

/// Whether a pool is stored under `stack`.
pub(crate) fn exists(conn: &Connection, stack: &StackKey) -> rusqlite::Result<bool> {
    conn.prepare_cached(&format!("SELECT EXISTS (SELECT 1 FROM pools WHERE {KEY})"))?
        .query_row(
            params![
                stack.name(),
                stack.version(),
                stack.vcpu_count(),
                stack.mem_size_mib()
            ],
            |r| r.get(0),
        )
}

/// Inserts a validated pool.
pub(crate) fn insert(
    conn: &Connection,
    stack: &StackKey,
    c: &PoolConfig,
    now_ms: i64,
) -> Result<(), Failure> {
    conn.prepare_cached(
        "INSERT INTO pools (stack_name, stack_version, stack_vcpus, stack_mem_mib, template_snapshot,
             min_depth, max_depth, max_age_ms, refill_parallelism, updated_at_ms, revision)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 1)",
    )?
    .execute(params![
        stack.name(),
        stack.version(),
        stack.vcpu_count(),
        stack.mem_size_mib(),
        c.template_snapshot.as_str(),
        c.min_depth,
        c.max_depth,
        max_age_ms(c),
        c.refill_parallelism,
        now_ms,
    ])?;
    Ok(())
}

/// Rewrites the settings of the pool under `stack`, bumping its revision.
pub(crate) fn update(
    conn: &Connection,
    stack: &StackKey,
    c: &PoolConfig,
    now_ms: i64,
) -> Result<(), Failure> {
    conn.prepare_cached(&format!(
        "UPDATE pools SET template_snapshot = ?5, min_depth = ?6, max_depth = ?7, max_age_ms = ?8,
             refill_parallelism = ?9, updated_at_ms = ?10, revision = revision + 1 WHERE {KEY}"
    ))?
    .execute(params![
        stack.name(),
        stack.version(),
        stack.vcpu_count(),
        stack.mem_size_mib(),
        c.template_snapshot.as_str(),
        c.min_depth,
        c.max_depth,
        max_age_ms(c),
        c.refill_parallelism,
        now_ms,
    ])?;
    Ok(())
}

/// Deletes the pool under `stack`.
pub(crate) fn delete(conn: &Connection, stack: &StackKey) -> Result<(), Failure> {
    conn.prepare_cached(&format!("DELETE FROM pools WHERE {KEY}"))?
        .execute(params![
            stack.name(),
            stack.version(),
            stack.vcpu_count(),
            stack.mem_size_mib()
        ])?;
    Ok(())
}

/// The pool under `stack`, if stored.
pub(crate) fn load(conn: &Connection, stack: &StackKey) -> Result<Option<PoolRecord>, Failure> {
    let raw = conn
        .prepare_cached(&format!("SELECT * FROM pools WHERE {KEY}"))?
        .query_row(
            params![
                stack.name(),
                stack.version(),
                stack.vcpu_count(),
                stack.mem_size_mib()
            ],
            Raw::read,
        )
        .optional()?;
    raw.map(Raw::decode).transpose()
}

/// Every pool, by stack.
pub(crate) fn list(conn: &Connection) -> Result<Vec<PoolRecord>, Failure> {
    let raws = conn
        .prepare_cached(
            "SELECT * FROM pools ORDER BY stack_name, stack_version, stack_vcpus, stack_mem_mib",
        )?
        .query_map([], Raw::read)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    raws.into_iter().map(Raw::decode).collect()
}

/// The stacks of the pools whose template is snapshot `id`, for messages.
pub(crate) fn users_of_snapshot(conn: &Connection, id: &str) -> Result<Vec<String>, Failure> {
    let raws = conn
        .prepare_cached("SELECT * FROM pools WHERE template_snapshot = ?1")?
        .query_map([id], Raw::read)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    raws.into_iter()
        .map(|r| r.decode().map(|p| p.stack.to_string()))
        .collect()
}

/// A row as SQLite gives it, before validation.
struct Raw {
    stack: StackColumns,
    template_snapshot: String,
    min_depth: i64,
    max_depth: i64,
    max_age_ms: Option<i64>,
    refill_parallelism: i64,
    updated_at_ms: i64,
    revision: i64,
}

impl Raw {
    fn read(r: &Row<'_>) -> rusqlite::Result<Raw> {
        Ok(Raw {
            stack: (
                r.get("stack_name")?,
                r.get("stack_version")?,
                r.get("stack_vcpus")?,
                r.get("stack_mem_mib")?,
            ),
            template_snapshot: r.get("template_snapshot")?,
            min_depth: r.get("min_depth")?,
            max_depth: r.get("max_depth")?,
            max_age_ms: r.get("max_age_ms")?,
            refill_parallelism: r.get("refill_parallelism")?,
            updated_at_ms: r.get("updated_at_ms")?,
            revision: r.get("revision")?,
        })
    }

    fn decode(self) -> Result<PoolRecord, Failure> {
        let key = format!("{:?}/{:?}", self.stack.0, self.stack.1);
        self.decode_inner()
            .map_err(|problem| Failure::decode(RecordKind::Pool, key, problem))
    }

    fn decode_inner(self) -> Result<PoolRecord, Decode> {
        let stack = columns_stack(self.stack)?.ok_or_else(|| Decode::new("stack", "missing"))?;
        let max_age = self
            .max_age_ms
            .map(|ms| sql_to_uint::<u64>("max_age_ms", ms).map(Duration::from_millis))
            .transpose()?;
        Ok(PoolRecord {
            stack,
            config: PoolConfig {
                template_snapshot: SnapshotId::new(self.template_snapshot)
                    .map_err(|e| Decode::new("template_snapshot", e))?,
                min_depth: sql_to_uint("min_depth", self.min_depth)?,
                max_depth: sql_to_uint("max_depth", self.max_depth)?,
                max_age,
                refill_parallelism: sql_to_uint("refill_parallelism", self.refill_parallelism)?,
            },
            updated_at: ms_to_time("updated_at_ms", self.updated_at_ms)?,
            revision: sql_to_uint("revision", self.revision)?,
        })
    }
}
