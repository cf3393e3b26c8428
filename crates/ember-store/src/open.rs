//! Opening the database file safely: checks before SQLite touches anything, atomic creation of a
//! new database, connection settings, verification, and migration.
//!
//! The order matters:
//! 1. the directory must exist and be writable (WAL mode creates `-wal`/`-shm` beside the file);
//! 2. a missing file is created complete in a temporary file and hard-linked into place (a link
//!    never replaces an existing file, so two processes racing to create both end up on one
//!    database, and a crash leaves either no file or a complete one);
//! 3. an existing file is inspected read-only (the private `header` module): empty, short, foreign or
//!    truncated files are refused before SQLite opens them;
//! 4. SQLite opens it without `CREATE`, with checkpoint-on-close disabled until the integrity check
//!    and the identity check pass, so a damaged file is left byte-for-byte untouched;
//! 5. WAL, `synchronous=FULL`, foreign keys, then migrations in one `BEGIN IMMEDIATE`.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::unistd::{AccessFlags, access};
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags};
use serde::{Deserialize, Serialize};

use crate::busy;
use crate::error::StoreError;
use crate::header;
use crate::schema::{self, APPLICATION_ID, MIGRATIONS, Migrated, SCHEMA_VERSION};

/// How thoroughly the file is checked when opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpenCheck {
    /// `PRAGMA quick_check`: every page and b-tree, without cross-checking indexes (linear in the
    /// file size; milliseconds for a host's worth of records).
    #[default]
    Quick,
    /// `PRAGMA integrity_check`: also checks that indexes match their tables.
    Full,
    /// Only the header and identity checks.
    HeaderOnly,
}

/// The opened, verified, migrated connection and what was learned on the way.
pub(crate) struct Opened {
    /// The connection, configured.
    pub conn: Connection,
    /// Whether this open created the file.
    pub created: bool,
    /// The schema version before this open's migrations ran.
    pub migrated_from: u32,
}

/// Runs the whole opening sequence for `path`.
pub(crate) fn open(
    path: &Path,
    busy_timeout: Duration,
    check: OpenCheck,
) -> Result<Opened, StoreError> {
    // Every lock wait of the whole sequence shares one deadline.
    let _deadline = busy::Deadline::start(busy_timeout);
    let dir = parent_dir(path);
    check_dir(path, &dir)?;
    let mut created = false;
    match fs::metadata(path) {
        Ok(meta) if !meta.is_file() => {
            return Err(StoreError::NotAFile {
                path: path.to_path_buf(),
            });
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => created = create(path, &dir)?,
        Err(source) => {
            return Err(StoreError::Io {
                path: path.to_path_buf(),
                op: "stat the database",
                source,
            });
        }
    }
    access(path, AccessFlags::R_OK | AccessFlags::W_OK).map_err(|errno| {
        StoreError::FileNotWritable {
            path: path.to_path_buf(),
            source: io::Error::from(errno),
        }
    })?;
    header::inspect(path)?;

    let sql = |op| move |e| StoreError::sqlite(path, op, busy_timeout, e);
    let mut conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sql("open the database"))?;
    // Until the file is known good, closing must not checkpoint the WAL into it.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
        .map_err(sql("disable checkpoint on close"))?;
    busy::install(&mut conn).map_err(sql("install the busy handler"))?;

    verify(&conn, path, busy_timeout, check)?;
    let identity = schema::identity(&conn).map_err(sql("read the schema version"))?;
    if identity.application_id != APPLICATION_ID
        && (identity.application_id != 0 || identity.has_tables)
    {
        return Err(StoreError::ForeignDatabase {
            path: path.to_path_buf(),
            found: identity.application_id,
            expected: APPLICATION_ID,
        });
    }
    if identity.user_version > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            path: path.to_path_buf(),
            found: identity.user_version,
            supported: SCHEMA_VERSION,
        });
    }

    configure(&conn, path, busy_timeout)?;
    let migrated_from =
        match schema::migrate(&mut conn, MIGRATIONS).map_err(sql("migrate the schema"))? {
            Migrated::At { from, .. } => from,
            Migrated::TooNew { found } => {
                return Err(StoreError::SchemaTooNew {
                    path: path.to_path_buf(),
                    found,
                    supported: SCHEMA_VERSION,
                });
            }
        };
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, false)
        .map_err(sql("enable checkpoint on close"))?;
    cleanup_stale_init_files(path, &dir);
    Ok(Opened {
        conn,
        created,
        migrated_from,
    })
}

/// A second connection to the database `open` prepared, for reads only: in WAL mode readers
/// never wait for the writer, so lookups do not queue behind a commit's fsync.
pub(crate) fn open_reader(path: &Path, busy_timeout: Duration) -> Result<Connection, StoreError> {
    let sql = |op| move |e| StoreError::sqlite(path, op, busy_timeout, e);
    let mut conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sql("open the reader connection"))?;
    busy::install(&mut conn).map_err(sql("install the busy handler"))?;
    conn.pragma_update(None, "query_only", true)
        .map_err(sql("make the reader connection read-only"))?;
    Ok(conn)
}

/// The directory holding `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn check_dir(path: &Path, dir: &Path) -> Result<(), StoreError> {
    let meta = fs::metadata(dir).map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            StoreError::DirectoryMissing {
                path: path.to_path_buf(),
                dir: dir.to_path_buf(),
            }
        } else {
            StoreError::Io {
                path: dir.to_path_buf(),
                op: "stat the store's directory",
                source,
            }
        }
    })?;
    if !meta.is_dir() {
        return Err(StoreError::NotADirectory {
            path: path.to_path_buf(),
            dir: dir.to_path_buf(),
        });
    }
    access(dir, AccessFlags::W_OK | AccessFlags::X_OK).map_err(|errno| {
        StoreError::DirectoryNotWritable {
            path: path.to_path_buf(),
            dir: dir.to_path_buf(),
            source: io::Error::from(errno),
        }
    })
}

/// Runs the configured integrity check; any finding means the file is damaged.
fn verify(
    conn: &Connection,
    path: &Path,
    busy_timeout: Duration,
    check: OpenCheck,
) -> Result<(), StoreError> {
    let pragma = match check {
        OpenCheck::Quick => "quick_check",
        OpenCheck::Full => "integrity_check",
        OpenCheck::HeaderOnly => {
            // Still read page 1, so a file SQLite cannot parse fails here and not later.
            conn.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))
                .map_err(|e| corrupt_or(path, busy_timeout, "read the schema", e))?;
            return Ok(());
        }
    };
    let findings = run_check(conn, pragma)
        .map_err(|e| corrupt_or(path, busy_timeout, "check integrity", e))?;
    if findings.is_empty() {
        Ok(())
    } else {
        Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: format!("PRAGMA {pragma} found: {}", findings.join("; ")),
        })
    }
}

/// Most integrity-check findings kept in an error.
const MAX_FINDINGS: usize = 20;

/// Runs `PRAGMA <pragma>` and returns its findings (empty when it says `ok`), at most
/// [`MAX_FINDINGS`].
pub(crate) fn run_check(conn: &Connection, pragma: &str) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare(&format!("PRAGMA {pragma}(20)"))?;
    let rows = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    if rows == ["ok"] {
        return Ok(Vec::new());
    }
    // A row may itself hold several newline-separated findings.
    Ok(rows
        .iter()
        .flat_map(|r| r.lines())
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("***"))
        .take(MAX_FINDINGS)
        .map(str::to_string)
        .collect())
}

/// While verifying, every SQLite error but "busy" means the file cannot be trusted.
fn corrupt_or(
    path: &Path,
    busy_timeout: Duration,
    op: &'static str,
    e: rusqlite::Error,
) -> StoreError {
    match StoreError::sqlite(path, op, busy_timeout, e) {
        StoreError::Sqlite { source, .. } => StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: format!("{op}: {source}"),
        },
        other => other,
    }
}

/// Bytes the `-wal` file is truncated to after a checkpoint.
const WAL_SIZE_LIMIT: i64 = 8 << 20;

/// WAL, fsync on every commit, foreign keys, a bounded WAL file.
fn configure(conn: &Connection, path: &Path, busy_timeout: Duration) -> Result<(), StoreError> {
    let sql = |op| move |e| StoreError::sqlite(path, op, busy_timeout, e);
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
        .map_err(sql("enable WAL mode"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::invalid(
            "journal_mode",
            format!(
                "SQLite kept journal mode {mode:?} for {}; WAL is required",
                path.display()
            ),
        ));
    }
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(sql("set synchronous=FULL"))?;
    conn.pragma_update(None, "foreign_keys", true)
        .map_err(sql("enable foreign keys"))?;
    // The WAL is reused after each checkpoint; cap what a burst of writes leaves on disk.
    conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)
        .map_err(sql("limit the WAL size"))?;
    let fk: bool = conn
        .pragma_query_value(None, "foreign_keys", |r| r.get(0))
        .map_err(sql("check foreign keys"))?;
    if !fk {
        return Err(StoreError::invalid(
            "foreign_keys",
            "SQLite refused to enable foreign keys",
        ));
    }
    Ok(())
}

/// The prefix of temporary files used to create `path`'s database.
fn init_prefix(path: &Path) -> String {
    let name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    format!(".{name}.init-")
}

/// Creates a complete, empty-schema database at `path`, atomically; a concurrent creator winning
/// the race is fine. Returns whether this call's file is the one in place.
fn create(path: &Path, dir: &Path) -> Result<bool, StoreError> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = dir.join(format!(
        "{}{}-{nanos}",
        init_prefix(path),
        std::process::id()
    ));
    let sql = |op| {
        let tmp = tmp.clone();
        move |source| StoreError::Sqlite {
            path: tmp,
            op,
            source,
        }
    };
    let io = |op, p: &Path| {
        let p = p.to_path_buf();
        move |source| StoreError::Io {
            path: p,
            op,
            source,
        }
    };
    {
        let mut conn = Connection::open_with_flags(
            &tmp,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::CannotOpen | rusqlite::ErrorCode::ReadOnly) => {
                StoreError::DirectoryNotWritable {
                    path: path.to_path_buf(),
                    dir: dir.to_path_buf(),
                    source: io::Error::other(e),
                }
            }
            _ => StoreError::Sqlite {
                path: tmp.clone(),
                op: "create the database",
                source: e,
            },
        })?;
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0))
            .map_err(sql("enable WAL mode"))?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sql("set synchronous=FULL"))?;
        schema::migrate(&mut conn, MIGRATIONS).map_err(sql("create the schema"))?;
        // Closing checkpoints the WAL into the file and removes the -wal and -shm files.
        conn.close()
            .map_err(|(_, e)| sql("close the new database")(e))?;
    }
    // Host state (paths, tenants, pids) is the daemon's alone; SQLite gives the -wal and -shm
    // files the database's mode.
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600))
        .map_err(io("restrict the new database's permissions", &tmp))?;
    File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io("fsync the new database", &tmp))?;
    let linked = match fs::hard_link(&tmp, path) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(io("link the new database into place", path)(e));
        }
    };
    fs::remove_file(&tmp).map_err(io("remove the temporary database", &tmp))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync the store's directory", dir))?;
    if linked {
        tracing::info!(path = %path.display(), version = SCHEMA_VERSION, "created ember store");
    } else {
        tracing::debug!(path = %path.display(), "another process created the store first");
    }
    Ok(linked)
}

/// Removes temporary files left by a creator that died mid-way (best effort: logged, never fatal).
fn cleanup_stale_init_files(path: &Path, dir: &Path) {
    let prefix = init_prefix(path);
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        // EPERM means the process exists; only ESRCH proves the creator is gone.
        let gone = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
            == Err(nix::errno::Errno::ESRCH);
        if gone {
            match fs::remove_file(entry.path()) {
                Ok(()) => {
                    tracing::info!(file = %entry.path().display(), "removed a stale store init file")
                }
                Err(e) => {
                    tracing::warn!(file = %entry.path().display(), error = %e, "cannot remove a stale store init file")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_of_a_bare_name_is_the_current_directory() {
        assert_eq!(parent_dir(Path::new("ember.db")), PathBuf::from("."));
        assert_eq!(
            parent_dir(Path::new("/var/lib/ember/ember.db")),
            PathBuf::from("/var/lib/ember")
        );
    }

    #[test]
    fn creates_then_reopens_without_migrating_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ember.db");
        let first = open(&path, Duration::from_secs(1), OpenCheck::Full).unwrap();
        assert!(first.created);
        assert_eq!(first.migrated_from, 1, "created complete by `create`");
        drop(first);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{mode:o}");
        let again = open(&path, Duration::from_secs(1), OpenCheck::Quick).unwrap();
        assert!(!again.created);
        assert_eq!(again.migrated_from, 1);
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".init-"))
            .collect();
        assert!(names.is_empty(), "temporary files left: {names:?}");
    }

    #[test]
    fn stale_init_files_of_dead_creators_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ember.db");
        // pid 0x3fffffff is above pid_max on any Linux, so it is never alive.
        let stale = dir
            .path()
            .join(format!("{}{}-1", init_prefix(&path), 0x3fff_ffff));
        fs::write(&stale, b"half-made").unwrap();
        drop(open(&path, Duration::from_secs(1), OpenCheck::Quick).unwrap());
        assert!(!stale.exists());
    }
}
