//! The queries that are not "by key": who refers to a record (so it is not removed from under
//! them), and sandboxes by state, template and labels, a page at a time.

use ember_core::Sandbox;
use rusqlite::Connection;

use super::Failure;
use super::rows;
use crate::error::RecordKind;
use crate::query::{Cursor, Page, SandboxFilter};

/// How many referring records an [`InUse`](crate::StoreError::InUse) error lists by name.
const USERS_NAMED: usize = 8;

fn keys(conn: &Connection, sql: &str, key: &str) -> Result<Vec<String>, Failure> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map([key], |r| r.get::<_, String>(0))?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// The records that refer to the `kind` record `key`, as `"<kind> <key>"` (at most a few, then
/// `"... and N more"`).
pub(crate) fn users_of(
    conn: &Connection,
    kind: RecordKind,
    key: &str,
) -> Result<Vec<String>, Failure> {
    let mut users = Vec::new();
    let mut add = |what: &str, found: Vec<String>| {
        let n = found.len();
        users.extend(
            found
                .into_iter()
                .take(USERS_NAMED)
                .map(|k| format!("{what} {k}")),
        );
        if n > USERS_NAMED {
            users.push(format!("... and {} more {what}s", n - USERS_NAMED));
        }
    };
    match kind {
        RecordKind::Snapshot => {
            add(
                "template",
                keys(
                    conn,
                    "SELECT id FROM templates WHERE snapshot = ?1 ORDER BY id",
                    key,
                )?,
            );
            add(
                "sandbox",
                keys(
                    conn,
                    "SELECT id FROM sandboxes WHERE body ->> '$.saved' = ?1 ORDER BY id",
                    key,
                )?,
            );
        }
        RecordKind::Template => {
            add(
                "pool",
                keys(conn, "SELECT id FROM pools WHERE id = ?1", key)?,
            );
            add(
                "sandbox",
                keys(
                    conn,
                    "SELECT id FROM sandboxes WHERE template = ?1 AND state <> 'ended' ORDER BY id",
                    key,
                )?,
            );
        }
        RecordKind::Pool | RecordKind::Sandbox | RecordKind::Vm => {}
    }
    Ok(users)
}

/// One page of sandboxes matching `filter`, oldest first.
pub(crate) fn sandboxes(
    conn: &Connection,
    filter: &SandboxFilter,
) -> Result<Page<Sandbox>, Failure> {
    let mut sql =
        String::from("SELECT id, body, revision, updated_at_ms FROM sandboxes WHERE 1 = 1");
    let mut params: Vec<Box<dyn rusqlite::ToSql>> = Vec::new();
    let mut push = |sql: &mut String, clause: &str, p: Box<dyn rusqlite::ToSql>| {
        params.push(p);
        sql.push_str(&clause.replace('?', &format!("?{}", params.len())));
    };
    if !filter.states.is_empty() {
        sql.push_str(" AND state IN (");
        for (i, s) in filter.states.iter().enumerate() {
            if i > 0 {
                sql.push_str(", ");
            }
            push(&mut sql, "?", Box::new(s.as_str()));
        }
        sql.push(')');
    }
    if let Some(t) = &filter.template {
        push(&mut sql, " AND template = ?", Box::new(t.to_string()));
    }
    for (k, v) in &filter.labels {
        params.push(Box::new(format!("$.labels.\"{}\"", k.replace('"', ""))));
        let path = params.len();
        params.push(Box::new(v.clone()));
        let value = params.len();
        sql.push_str(&format!(" AND json_extract(body, ?{path}) = ?{value}"));
    }
    if let Some(Cursor { created_ms, id }) = &filter.after {
        params.push(Box::new(*created_ms));
        let ms = params.len();
        params.push(Box::new(id.clone()));
        let id = params.len();
        sql.push_str(&format!(
            " AND (created_at_ms > ?{ms} OR (created_at_ms = ?{ms} AND id > ?{id}))"
        ));
    }
    // One more than the page, to know whether another page follows.
    let limit = filter.limit.max(1);
    sql.push_str(&format!(" ORDER BY created_at_ms, id LIMIT {}", limit + 1));
    let refs: Vec<&dyn rusqlite::ToSql> = params.iter().map(|p| p.as_ref()).collect();
    let mut items: Vec<Sandbox> = rows::select::<Sandbox>(conn, &sql, &refs)?
        .into_iter()
        .map(|s| s.record)
        .collect();
    let next = if items.len() > limit {
        items.truncate(limit);
        items.last().map(|s| Cursor {
            created_ms: crate::columns::time_to_ms(s.created_at),
            id: s.id.to_string(),
        })
    } else {
        None
    };
    Ok(Page { items, next })
}
