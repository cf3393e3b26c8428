//! The schema and its migrations, tracked by `PRAGMA user_version`, and the file's identity
//! (`PRAGMA application_id`).
//!
//! Migrations run in order inside one `BEGIN IMMEDIATE` transaction, so two processes opening an
//! old database at once apply them exactly once. A file whose version is newer than
//! [`SCHEMA_VERSION`] is refused, never guessed at. This module owns the DDL; it does not read or
//! write records.

use rusqlite::{Connection, TransactionBehavior};

/// ember's `application_id` ("EMBR"), so another program's SQLite file is never mistaken for a store.
pub const APPLICATION_ID: i32 = 0x454d_4252;

/// One step of the schema's history.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Migration {
    /// The version the database has after this step.
    pub version: u32,
    /// What the step does, for the log.
    pub description: &'static str,
    /// The DDL, run as one batch.
    pub sql: &'static str,
}

/// Every migration, oldest first; versions are 1, 2, 3... without gaps.
pub(crate) const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: "snapshots, templates, pools, sandboxes, VMs, network allocations",
    sql: V1,
}];

/// The newest schema version this build knows.
pub const SCHEMA_VERSION: u32 = 1;

// Every record table holds one ember-core value per row as JSON (`body`), under its key (`id`),
// with a revision and the time of its last write. The columns that queries and reference checks
// need are generated from the body, so they can never disagree with it.
const V1: &str = r#"
CREATE TABLE snapshots (
    id             TEXT    NOT NULL PRIMARY KEY,
    body           TEXT    NOT NULL CHECK (json_valid(body)),
    revision       INTEGER NOT NULL CHECK (revision >= 1),
    updated_at_ms  INTEGER NOT NULL
) STRICT;

CREATE TABLE templates (
    id             TEXT    NOT NULL PRIMARY KEY,
    body           TEXT    NOT NULL CHECK (json_valid(body)),
    revision       INTEGER NOT NULL CHECK (revision >= 1),
    updated_at_ms  INTEGER NOT NULL,
    snapshot       TEXT    GENERATED ALWAYS AS (body ->> '$.snapshot') VIRTUAL,
    state          TEXT    GENERATED ALWAYS AS (body ->> '$.state') VIRTUAL
) STRICT;
CREATE INDEX templates_by_snapshot ON templates(snapshot);

CREATE TABLE pools (
    id             TEXT    NOT NULL PRIMARY KEY,
    body           TEXT    NOT NULL CHECK (json_valid(body)),
    revision       INTEGER NOT NULL CHECK (revision >= 1),
    updated_at_ms  INTEGER NOT NULL
) STRICT;

CREATE TABLE sandboxes (
    id             TEXT    NOT NULL PRIMARY KEY,
    body           TEXT    NOT NULL CHECK (json_valid(body)),
    revision       INTEGER NOT NULL CHECK (revision >= 1),
    updated_at_ms  INTEGER NOT NULL,
    template       TEXT    GENERATED ALWAYS AS (body ->> '$.template') VIRTUAL,
    state          TEXT    GENERATED ALWAYS AS (body ->> '$.state') VIRTUAL,
    created_at_ms  INTEGER GENERATED ALWAYS AS (body ->> '$.created_at') VIRTUAL
) STRICT;
CREATE INDEX sandboxes_by_created ON sandboxes(created_at_ms, id);
CREATE INDEX sandboxes_by_state ON sandboxes(state, created_at_ms, id);
CREATE INDEX sandboxes_by_template ON sandboxes(template, state);

CREATE TABLE vms (
    id             TEXT    NOT NULL PRIMARY KEY,
    body           TEXT    NOT NULL CHECK (json_valid(body)),
    revision       INTEGER NOT NULL CHECK (revision >= 1),
    updated_at_ms  INTEGER NOT NULL,
    owner          TEXT    GENERATED ALWAYS AS (body ->> '$.owner') VIRTUAL
) STRICT;
CREATE INDEX vms_by_owner ON vms(owner);

CREATE TABLE net_allocations (
    owner       TEXT    NOT NULL PRIMARY KEY,
    tap         TEXT    NOT NULL UNIQUE CHECK (length(tap) BETWEEN 1 AND 15),
    ip          INTEGER NOT NULL UNIQUE CHECK (ip BETWEEN 0 AND 4294967295),
    prefix_len  INTEGER NOT NULL CHECK (prefix_len BETWEEN 0 AND 32),
    gateway     INTEGER NOT NULL CHECK (gateway BETWEEN 0 AND 4294967295),
    mac         TEXT    NOT NULL UNIQUE,
    vsock_cid   INTEGER NOT NULL UNIQUE CHECK (vsock_cid BETWEEN 3 AND 4294967294)
) STRICT;
"#;

/// What the database's identity pragmas say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Identity {
    /// `PRAGMA application_id`.
    pub application_id: i32,
    /// `PRAGMA user_version`.
    pub user_version: u32,
    /// Whether the database holds any table at all.
    pub has_tables: bool,
}

/// Reads the identity pragmas.
pub(crate) fn identity(conn: &Connection) -> rusqlite::Result<Identity> {
    let application_id: i32 = conn.pragma_query_value(None, "application_id", |r| r.get(0))?;
    let user_version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let has_tables: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'table')",
        [],
        |r| r.get(0),
    )?;
    Ok(Identity {
        application_id,
        // user_version is a signed 32-bit field; ember only writes small positive values.
        user_version: u32::try_from(user_version).unwrap_or(u32::MAX),
        has_tables,
    })
}

/// Outcome of [`migrate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Migrated {
    /// The schema is at `version` (possibly after applying some steps).
    At {
        /// The version before.
        from: u32,
        /// The version now.
        to: u32,
    },
    /// The file's version is newer than the newest step known.
    TooNew {
        /// The file's version.
        found: u32,
    },
}

/// Brings the schema up to the last of `migrations` in one write transaction, stamping the
/// application id on a fresh database.
pub(crate) fn migrate(
    conn: &mut Connection,
    migrations: &[Migration],
) -> rusqlite::Result<Migrated> {
    let latest = migrations.last().map_or(0, |m| m.version);
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let current: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let current = u32::try_from(current).unwrap_or(u32::MAX);
    if current > latest {
        return Ok(Migrated::TooNew { found: current });
    }
    if current == 0 {
        tx.pragma_update(None, "application_id", APPLICATION_ID)?;
    }
    for m in migrations.iter().filter(|m| m.version > current) {
        tracing::info!(
            version = m.version,
            description = m.description,
            "applying store migration"
        );
        tx.execute_batch(m.sql)?;
        tx.pragma_update(None, "user_version", m.version)?;
    }
    tx.commit()?;
    Ok(Migrated::At {
        from: current,
        to: latest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migration_versions_are_contiguous_and_end_at_schema_version() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1, "{}", m.description);
        }
        assert_eq!(MIGRATIONS.last().unwrap().version, SCHEMA_VERSION);
    }

    #[test]
    fn migrates_once_and_refuses_newer_files() {
        let mut conn = Connection::open_in_memory().unwrap();
        assert_eq!(
            migrate(&mut conn, MIGRATIONS).unwrap(),
            Migrated::At { from: 0, to: 1 }
        );
        assert_eq!(
            migrate(&mut conn, MIGRATIONS).unwrap(),
            Migrated::At { from: 1, to: 1 }
        );
        let id = identity(&conn).unwrap();
        assert_eq!(id.application_id, APPLICATION_ID);
        assert!(id.has_tables);

        // A later step applies only itself.
        let v2 = Migration {
            version: 2,
            description: "test column",
            sql: "ALTER TABLE pools ADD COLUMN note TEXT;",
        };
        let with_v2 = [MIGRATIONS[0], v2];
        assert_eq!(
            migrate(&mut conn, &with_v2).unwrap(),
            Migrated::At { from: 1, to: 2 }
        );
        // This build (version 1) now refuses the file.
        assert_eq!(
            migrate(&mut conn, MIGRATIONS).unwrap(),
            Migrated::TooNew { found: 2 }
        );
    }

    #[test]
    fn a_failing_step_leaves_the_old_version() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn, MIGRATIONS).unwrap();
        let broken = Migration {
            version: 2,
            description: "broken",
            sql: "CREATE TABLE t (x INTEGER); THIS IS NOT SQL;",
        };
        assert!(migrate(&mut conn, &[MIGRATIONS[0], broken]).is_err());
        assert_eq!(identity(&conn).unwrap().user_version, 1);
        let t: bool = conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE name = 't')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(!t, "the half-applied step was rolled back");
    }
}
