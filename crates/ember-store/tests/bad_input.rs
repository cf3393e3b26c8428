//! Bad input on real files: garbage, empty, truncated and corrupted databases, foreign and
//! newer-schema databases, missing, misplaced and read-only directories. Every case must give an
//! error naming the file, and a damaged file must be left byte-for-byte untouched (never reset).
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;

use ember_store::{Durability, Store, StoreError};
use support::{
    GEN_TEMPLATE, config, fingerprint, generation_sandbox, seed_template, tagged_lines, temp_db,
};

/// A closed store holding `n` sandboxes (a few hundred KiB), fully checkpointed.
fn populated(path: &Path, n: usize) {
    let store = Store::open(path, config()).unwrap();
    seed_template(&store, GEN_TEMPLATE);
    for i in 0..n {
        let id = format!("m{i}");
        store
            .write::<_, StoreError>("insert", Durability::Full, |tx| {
                tx.insert(&generation_sandbox(&id, 0))?;
                tx.allocate_network(&id)
            })
            .unwrap();
    }
    drop(store);
    assert!(
        !Path::new(&format!("{}-wal", path.display())).exists(),
        "closed cleanly"
    );
}

/// Opening `path` fails with an error that names it, twice in a row, and leaves it untouched.
fn refused(path: &Path) -> StoreError {
    let before = fingerprint(path);
    let err = Store::open(path, config()).unwrap_err();
    if std::env::var_os("EMBER_STORE_SHOW_ERRORS").is_some() {
        eprintln!("{}: {err}", path.display());
    }
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "error does not name the file: {err}"
    );
    assert_eq!(
        fingerprint(path),
        before,
        "the file was modified by a failed open"
    );
    let again = Store::open(path, config()).unwrap_err();
    assert_eq!(
        again.to_string(),
        err.to_string(),
        "not reset by the first attempt"
    );
    err
}

#[test]
fn garbage_is_not_a_database() {
    let (_dir, path) = temp_db();
    fs::write(&path, "this is a to-do list, not a database\n".repeat(200)).unwrap();
    let err = refused(&path);
    assert!(matches!(err, StoreError::NotADatabase { .. }), "{err:?}");
    assert!(err.to_string().contains("this is a to-do"), "{err}");
    assert!(
        !Path::new(&format!("{}-wal", path.display())).exists(),
        "SQLite never opened it"
    );
}

#[test]
fn an_empty_file_is_damage_not_a_fresh_start() {
    let (_dir, path) = temp_db();
    fs::write(&path, b"").unwrap();
    let err = refused(&path);
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("empty"), "{err}");
}

#[test]
fn truncated_files_are_refused() {
    let (dir, path) = temp_db();
    populated(&path, 200);
    let full = fs::read(&path).unwrap();
    assert!(
        full.len() > 64 * 4096,
        "{} bytes is too small for this test",
        full.len()
    );

    for (label, keep) in [
        ("half, page-aligned", full.len() / 2 / 4096 * 4096),
        ("mid-page", full.len() / 2 + 123),
        ("inside the header", 50),
        ("one page short", full.len() - 4096),
    ] {
        let p = dir.path().join(format!("cut-{keep}.db"));
        fs::write(&p, &full[..keep]).unwrap();
        let err = refused(&p);
        assert!(
            matches!(err, StoreError::Corrupt { .. }),
            "{label}: {err:?}"
        );
        assert!(err.to_string().contains("truncated"), "{label}: {err}");
    }
}

#[test]
fn truncated_while_the_wal_holds_frames() {
    // The state a crash leaves: recent commits only in the -wal file. The header check must stand
    // aside (the main file may legitimately lag), and SQLite's own check must catch the damage.
    let (dir, path) = temp_db();
    populated(&path, 150);
    let store = Store::open(&path, config()).unwrap();
    for i in 150..200 {
        let id = format!("m{i}");
        store
            .write::<_, StoreError>("insert", Durability::Full, |tx| {
                tx.insert(&generation_sandbox(&id, 0))?;
                tx.allocate_network(&id)
            })
            .unwrap();
    }
    let crashed = dir.path().join("crashed.db");
    let full = fs::read(&path).unwrap();
    fs::copy(
        format!("{}-wal", path.display()),
        format!("{}-wal", crashed.display()),
    )
    .unwrap();
    drop(store);
    fs::write(&crashed, &full[..full.len() / 2 / 4096 * 4096]).unwrap();
    let err = refused(&crashed);
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
}

#[test]
fn corrupted_pages_fail_the_integrity_check() {
    let (_dir, path) = temp_db();
    populated(&path, 200);
    let mut bytes = fs::read(&path).unwrap();
    // Overwrite pages 3 to 6 with deterministic junk; header and length stay plausible.
    let mut x: u32 = 0x1234_5678;
    for b in &mut bytes[2 * 4096..6 * 4096] {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    fs::write(&path, &bytes).unwrap();
    let err = refused(&path);
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert!(err.is_corruption());
}

#[test]
fn a_damaged_header_is_refused() {
    let (_dir, path) = temp_db();
    populated(&path, 5);
    let mut bytes = fs::read(&path).unwrap();
    bytes[16..18].copy_from_slice(&1000u16.to_be_bytes());
    fs::write(&path, &bytes).unwrap();
    let err = refused(&path);
    assert!(err.to_string().contains("page size"), "{err}");
}

#[test]
fn another_programs_database_is_left_alone() {
    let (_dir, path) = temp_db();
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch("CREATE TABLE recipes (name TEXT); INSERT INTO recipes VALUES ('soup');")
        .unwrap();
    drop(conn);
    let err = refused(&path);
    assert!(
        matches!(err, StoreError::ForeignDatabase { found: 0, .. }),
        "{err:?}"
    );
}

#[test]
fn a_newer_schema_is_refused_naming_both_versions() {
    let (_dir, path) = temp_db();
    populated(&path, 3);
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let err = refused(&path);
    assert!(
        matches!(
            err,
            StoreError::SchemaTooNew {
                found: 99,
                supported: 1,
                ..
            }
        ),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("schema version 99") && text.contains("up to 1"),
        "{text}"
    );
}

#[test]
fn missing_and_misplaced_paths_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-dir").join("ember.db");
    let err = Store::open(&missing, config()).unwrap_err();
    assert!(
        matches!(err, StoreError::DirectoryMissing { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("no-such-dir") && err.to_string().contains("does not exist"),
        "{err}"
    );
    assert!(
        !missing.parent().unwrap().exists(),
        "parent directories are not created"
    );

    let err = Store::open(dir.path(), config()).unwrap_err();
    assert!(matches!(err, StoreError::NotAFile { .. }), "{err:?}");

    let file = dir.path().join("plain-file");
    fs::write(&file, b"x").unwrap();
    let err = Store::open(file.join("ember.db"), config()).unwrap_err();
    assert!(matches!(err, StoreError::NotADirectory { .. }), "{err:?}");
}

/// Child side of the permission tests: opens the store named by the environment and prints the
/// outcome as `@ok` or `@err <Debug>`.
#[test]
fn child_open_and_report() {
    let Ok(path) = std::env::var("EMBER_STORE_CHILD_OPEN") else {
        return;
    };
    match Store::open(&path, config()) {
        Ok(_) => println!("@ok"),
        Err(e) => println!("@err {e:?} | {e}"),
    }
}

/// Opens `path` in a child process that cannot override file permissions: as `nobody` when the
/// tests run as root (root ignores directory modes), as ourselves otherwise. `nobody` runs a copy
/// of this test binary placed in `bin_dir`, since the original may sit under a directory it cannot
/// enter (such as `/root`).
fn open_unprivileged(path: &Path, bin_dir: &Path) -> String {
    let mut cmd = if nix::unistd::geteuid().is_root() {
        let exe = bin_dir.join("bad_input-child");
        if !exe.exists() {
            fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
            fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
        }
        let mut cmd = support::child_from(&exe, "child_open_and_report");
        cmd.uid(65534).gid(65534);
        cmd
    } else {
        support::child("child_open_and_report")
    };
    cmd.env("EMBER_STORE_CHILD_OPEN", path);
    let out = cmd.output().unwrap();
    let lines = tagged_lines(&out.stdout);
    assert_eq!(
        lines.len(),
        1,
        "child said {lines:?}; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    lines[0].clone()
}

#[test]
fn read_only_directories_and_files_are_clear_errors() {
    let top = tempfile::tempdir().unwrap();
    fs::set_permissions(top.path(), fs::Permissions::from_mode(0o755)).unwrap();

    // A directory nobody may write: neither a new nor an existing store can be opened.
    let ro = top.path().join("ro");
    fs::create_dir(&ro).unwrap();
    let fresh = ro.join("fresh.db");
    let existing = ro.join("existing.db");
    populated(&existing, 2);
    fs::set_permissions(&existing, fs::Permissions::from_mode(0o666)).unwrap();
    fs::set_permissions(&ro, fs::Permissions::from_mode(0o555)).unwrap();
    for p in [&fresh, &existing] {
        let out = open_unprivileged(p, top.path());
        assert!(out.starts_with("err DirectoryNotWritable"), "{out}");
        assert!(
            out.contains("not writable") && out.contains(&ro.display().to_string()),
            "{out}"
        );
    }
    assert!(!fresh.exists());

    // A writable directory holding a database file the user may not write.
    let rw = top.path().join("rw");
    fs::create_dir(&rw).unwrap();
    let locked = rw.join("locked.db");
    populated(&locked, 2);
    fs::set_permissions(&rw, fs::Permissions::from_mode(0o777)).unwrap();
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o444)).unwrap();
    let before = fingerprint(&locked);
    let out = open_unprivileged(&locked, top.path());
    assert!(out.starts_with("err FileNotWritable"), "{out}");
    assert!(out.contains(&locked.display().to_string()), "{out}");
    assert_eq!(fingerprint(&locked), before);

    fs::set_permissions(&ro, fs::Permissions::from_mode(0o755)).unwrap();
}
