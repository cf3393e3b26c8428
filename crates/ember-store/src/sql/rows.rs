//! The generic row codec: one [`Record`] per row of its kind's table, as JSON (`body`) under its
//! key (`id`), with a revision and the time of its last write.
//!
//! Reading checks the decoded value again ([`Record::check`]): a row edited by hand, or written
//! by a buggy build, is reported as [`StoreError::CorruptRecord`](crate::StoreError) naming the
//! record, never handed on.

use rusqlite::{Connection, OptionalExtension, params};

use super::Failure;
use crate::columns::{Decode, ms_to_time, now_ms, sql_to_uint};
use crate::error::StoreError;
use crate::record::{Record, Stored};

/// Decodes one row's `(id, body, revision, updated_at_ms)`.
fn decode<R: Record>(
    id: String,
    body: String,
    revision: i64,
    updated_at_ms: i64,
) -> Result<Stored<R>, Failure> {
    let bad = |problem: Decode| Failure::decode(R::KIND, &id, problem);
    let record: R = serde_json::from_str(&body).map_err(|e| bad(Decode::new("body", e)))?;
    if record.key() != id {
        return Err(bad(Decode::new(
            "body",
            format!("the body's key {:?} is not the row's", record.key()),
        )));
    }
    record
        .check()
        .map_err(|e| bad(Decode::new("body", e.to_string())))?;
    Ok(Stored {
        record,
        revision: sql_to_uint("revision", revision).map_err(bad)?,
        updated_at: ms_to_time("updated_at_ms", updated_at_ms).map_err(bad)?,
    })
}

/// The record under `key`, if any.
pub(crate) fn get<R: Record>(conn: &Connection, key: &str) -> Result<Option<Stored<R>>, Failure> {
    let sql = format!(
        "SELECT id, body, revision, updated_at_ms FROM {} WHERE id = ?1",
        R::KIND.table()
    );
    let row = conn
        .prepare_cached(&sql)?
        .query_row([key], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })
        .optional()?;
    row.map(|(id, body, rev, at)| decode(id, body, rev, at))
        .transpose()
}

/// Whether a record of `kind` is stored under `key`.
pub(crate) fn exists(
    conn: &Connection,
    kind: crate::error::RecordKind,
    key: &str,
) -> Result<bool, Failure> {
    let sql = format!(
        "SELECT EXISTS (SELECT 1 FROM {} WHERE id = ?1)",
        kind.table()
    );
    Ok(conn.prepare_cached(&sql)?.query_row([key], |r| r.get(0))?)
}

/// Runs `sql` (selecting `id, body, revision, updated_at_ms`) with `params` and decodes every row.
pub(crate) fn select<R: Record>(
    conn: &Connection,
    sql: &str,
    params: &[&dyn rusqlite::ToSql],
) -> Result<Vec<Stored<R>>, Failure> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(params, |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, i64>(3)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, body, rev, at) = row?;
        out.push(decode(id, body, rev, at)?);
    }
    Ok(out)
}

/// Every record of `R`'s kind, by key.
pub(crate) fn list<R: Record>(conn: &Connection) -> Result<Vec<Stored<R>>, Failure> {
    let sql = format!(
        "SELECT id, body, revision, updated_at_ms FROM {} ORDER BY id",
        R::KIND.table()
    );
    select(conn, &sql, &[])
}

fn body_of<R: Record>(record: &R) -> Result<String, Failure> {
    serde_json::to_string(record)
        .map_err(|e| Failure::Store(StoreError::invalid(R::KIND.to_string(), e.to_string())))
}

/// Inserts `record` at revision 1; a record under its key is
/// [`StoreError::AlreadyExists`] (the key's uniqueness constraint says so: no lookup first).
pub(crate) fn insert<R: Record>(conn: &Connection, record: &R) -> Result<Stored<R>, Failure> {
    let sql = format!(
        "INSERT INTO {} (id, body, revision, updated_at_ms) VALUES (?1, ?2, 1, ?3)",
        R::KIND.table()
    );
    let at = now_ms();
    conn.prepare_cached(&sql)?
        .execute(params![record.key(), body_of(record)?, at])
        .map_err(|e| match e.sqlite_error().map(|f| f.extended_code) {
            Some(rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY) => {
                Failure::Store(StoreError::AlreadyExists {
                    kind: R::KIND,
                    key: record.key(),
                })
            }
            _ => Failure::Sql(e),
        })?;
    Ok(Stored {
        record: record.clone(),
        revision: 1,
        updated_at: ms_to_time("updated_at_ms", at)
            .map_err(|d| Failure::decode(R::KIND, record.key(), d))?,
    })
}

/// Replaces the record stored at `revision` under `record`'s key; the new revision is one more.
pub(crate) fn replace<R: Record>(
    conn: &Connection,
    record: &R,
    revision: u64,
) -> Result<Stored<R>, Failure> {
    let sql = format!(
        "UPDATE {} SET body = ?2, revision = revision + 1, updated_at_ms = ?3 WHERE id = ?1",
        R::KIND.table()
    );
    let at = now_ms();
    let n = conn
        .prepare_cached(&sql)?
        .execute(params![record.key(), body_of(record)?, at])?;
    if n != 1 {
        return Err(Failure::Store(StoreError::NotFound {
            kind: R::KIND,
            key: record.key(),
        }));
    }
    Ok(Stored {
        record: record.clone(),
        revision: revision + 1,
        updated_at: ms_to_time("updated_at_ms", at)
            .map_err(|d| Failure::decode(R::KIND, record.key(), d))?,
    })
}

/// Deletes the row under `key`; returns whether there was one.
pub(crate) fn delete(
    conn: &Connection,
    kind: crate::error::RecordKind,
    key: &str,
) -> Result<bool, Failure> {
    let sql = format!("DELETE FROM {} WHERE id = ?1", kind.table());
    Ok(conn.prepare_cached(&sql)?.execute([key])? > 0)
}
