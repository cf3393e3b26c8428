//! Two processes writing one store at once — both racing to create it, then inserting sandboxes
//! with allocations and incrementing one shared counter through `update` — are serialized, not
//! corrupted: every write of both is present, no increment is lost, allocations are unique, and
//! the two writers' commits really interleaved.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use ember_core::Sandbox;
use ember_store::{Durability, Store, StoreError};
use support::{config, sandbox, seed_template, tagged_lines};

fn count_of(s: &Sandbox) -> u64 {
    s.labels.get("count").map_or(0, |c| c.parse().unwrap())
}

const DB_VAR: &str = "EMBER_STORE_WRITER_DB";
const ID_VAR: &str = "EMBER_STORE_WRITER_ID";
const GO_VAR: &str = "EMBER_STORE_WRITER_GO";
const WRITES: u64 = 120;

/// Child side: waits for the go file, then writes.
#[test]
fn writer_child() {
    let (Ok(db), Ok(id), Ok(go)) = (
        std::env::var(DB_VAR),
        std::env::var(ID_VAR),
        std::env::var(GO_VAR),
    ) else {
        return;
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !Path::new(&go).exists() {
        assert!(Instant::now() < deadline, "never told to go");
        std::thread::sleep(Duration::from_millis(1));
    }
    // Both children open a database that does not exist yet.
    let store = Store::open(&db, config()).unwrap();
    seed_template(&store, "t");
    match store.write::<_, StoreError>("shared", Durability::Full, |tx| {
        tx.insert(&sandbox("shared", "t"))
    }) {
        Ok(_) | Err(StoreError::AlreadyExists { .. }) => {}
        Err(e) => panic!("{e}"),
    }
    let mut revisions = Vec::new();
    for i in 0..WRITES {
        let name = format!("w{id}-{i}");
        store
            .write::<_, StoreError>("insert", Durability::Full, |tx| {
                tx.insert(&sandbox(&name, "t"))?;
                tx.allocate_network(&name)
            })
            .unwrap();
        let durability = if i % 2 == 0 {
            Durability::Process
        } else {
            Durability::Full
        };
        let shared = store
            .write::<_, StoreError>("increment", durability, |tx| {
                tx.update::<Sandbox, StoreError>("shared", |s| {
                    let n = count_of(s) + 1;
                    s.labels.insert("count".into(), n.to_string());
                    Ok(())
                })
            })
            .unwrap();
        revisions.push(shared.revision);
        // A daemon does not write back to back; leave the lock free for a moment between writes
        // (SQLite's busy handler is not fair, so a writer that never pauses can starve the other).
        std::thread::sleep(Duration::from_micros(300));
    }
    let (first, last) = (revisions[0], revisions[revisions.len() - 1]);
    println!("@done {id} {first} {last}");
}

#[test]
fn two_processes_are_serialized_not_corrupted() {
    if std::env::var_os(DB_VAR).is_some() {
        return;
    }
    for round in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("shared.db");
        let go = dir.path().join("go");
        let children: Vec<_> = (0..2)
            .map(|id| {
                let mut cmd = support::child("writer_child");
                cmd.env(DB_VAR, &db)
                    .env(ID_VAR, id.to_string())
                    .env(GO_VAR, &go);
                cmd.spawn().unwrap()
            })
            .collect();
        std::fs::write(&go, b"").unwrap();
        let mut ranges = Vec::new();
        for (id, child) in children.into_iter().enumerate() {
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "round {round}, writer {id}: {}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            let lines = tagged_lines(&out.stdout);
            assert_eq!(lines.len(), 1, "{lines:?}");
            let words: Vec<&str> = lines[0].split_whitespace().collect();
            assert_eq!(words[..2], ["done", &id.to_string()]);
            let first: u64 = words[2].parse().unwrap();
            let last: u64 = words[3].parse().unwrap();
            ranges.push((first, last));
        }

        let store = Store::open(&db, config()).unwrap();
        assert!(store.integrity_check().unwrap().is_empty());
        let shared = store.load::<Sandbox>("shared").unwrap();
        assert_eq!(
            count_of(&shared.record),
            2 * WRITES,
            "round {round}: lost increments"
        );
        assert_eq!(shared.revision, 2 * WRITES + 1);
        let all = store.list::<Sandbox>().unwrap();
        assert_eq!(all.len() as u64, 2 * WRITES + 1, "round {round}");
        let nets = store
            .read::<_, StoreError>("allocations", |tx| {
                let mut nets = Vec::new();
                for id in 0..2 {
                    for i in 0..WRITES {
                        let name = format!("w{id}-{i}");
                        tx.load::<Sandbox>(&name)?;
                        nets.push(tx.network_of(&name)?.unwrap());
                    }
                }
                Ok(nets)
            })
            .unwrap();
        let ips: HashSet<_> = nets.iter().map(|n| n.ip).collect();
        let cids: HashSet<_> = nets.iter().map(|n| n.vsock_cid).collect();
        assert_eq!(
            (ips.len() as u64, cids.len() as u64),
            (2 * WRITES, 2 * WRITES)
        );

        // The writers' increments interleaved (each saw revisions inside the other's range), so
        // the lock, not luck, kept them apart.
        let (a, b) = (ranges[0], ranges[1]);
        assert!(
            a.0 < b.1 && b.0 < a.1,
            "round {round}: the writers ran one after the other ({a:?}, {b:?})"
        );
    }
}
