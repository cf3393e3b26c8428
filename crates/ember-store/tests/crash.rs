//! Crash test: a child process inserts, updates and removes sandboxes (each with a network
//! allocation, taken and released in the same transaction) and inserts snapshots in a loop, each
//! commit fsynced or only crash-safe for the process (chosen at random: both must survive a
//! SIGKILL),
//! announcing each operation before it starts (`@B ...`) and after its commit returned (`@C ...`),
//! and is killed with SIGKILL at a random moment, at least 200 times on one database. After every
//! kill the parent reopens the database and checks that
//! - it opens (never a corruption error), `PRAGMA integrity_check` and the foreign keys are clean;
//! - every record whose commit was announced is there, and nothing else is, except that the one
//!   operation in flight at the kill may have committed or not;
//! - no record is torn: every field agrees with the generation the record carries;
//! - network allocations are unique, never change under a sandbox, and exist exactly for the
//!   sandboxes stored.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ember_core::{Sandbox, SnapshotInfo};
use ember_store::{Durability, NetworkAllocation, Store, StoreError};
use support::{
    GEN_TEMPLATE, Rng, check_generation, config, generation_sandbox, seed_template, snapshot,
    tagged_lines,
};

const DB_VAR: &str = "EMBER_STORE_CRASH_DB";
const SEED_VAR: &str = "EMBER_STORE_CRASH_SEED";

/// One operation as announced by the child.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Save(String),
    Update(String, u64),
    Remove(String),
    FailedUpdate(String),
    Snapshot(String),
}

impl Op {
    fn parse(words: &[&str]) -> Op {
        match words {
            ["save", n] => Op::Save((*n).into()),
            ["update", n, g] => Op::Update((*n).into(), g.parse().unwrap()),
            ["remove", n] => Op::Remove((*n).into()),
            ["fail", n] => Op::FailedUpdate((*n).into()),
            ["snap", id] => Op::Snapshot((*id).into()),
            other => panic!("unknown operation {other:?}"),
        }
    }

    fn encode(&self) -> String {
        match self {
            Op::Save(n) => format!("save {n}"),
            Op::Update(n, g) => format!("update {n} {g}"),
            Op::Remove(n) => format!("remove {n}"),
            Op::FailedUpdate(n) => format!("fail {n}"),
            Op::Snapshot(id) => format!("snap {id}"),
        }
    }
}

/// What the database should hold: sandbox generations and snapshot ids.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Model {
    sandboxes: BTreeMap<String, u64>,
    snapshots: BTreeSet<String>,
}

impl Model {
    /// Applies a committed operation, checking it follows from the current state.
    fn apply(&mut self, op: &Op) {
        match op {
            Op::Save(n) => assert!(
                self.sandboxes.insert(n.clone(), 0).is_none(),
                "{op:?} twice"
            ),
            Op::Update(n, g) => {
                let old = self.sandboxes.insert(n.clone(), *g);
                assert_eq!(old, Some(g - 1), "{op:?} does not follow the model");
            }
            Op::Remove(n) => assert!(
                self.sandboxes.remove(n).is_some(),
                "{op:?} of a missing sandbox"
            ),
            Op::FailedUpdate(n) => assert!(self.sandboxes.contains_key(n), "{op:?}"),
            Op::Snapshot(id) => assert!(self.snapshots.insert(id.clone()), "{op:?} twice"),
        }
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    // One write per line, so a kill never leaves half a line that parses.
    out.write_all(format!("@{line}\n").as_bytes()).unwrap();
    out.flush().unwrap();
}

/// Child side: runs operations until killed.
#[test]
fn crash_child() {
    let (Ok(db), Ok(seed)) = (std::env::var(DB_VAR), std::env::var(SEED_VAR)) else {
        return;
    };
    let seed: u64 = seed.parse().unwrap();
    let mut rng = Rng::new(seed);
    let store = match Store::open(&db, config()) {
        Ok(s) => s,
        Err(e) => {
            say(&format!("openerr {e}"));
            return;
        }
    };
    seed_template(&store, GEN_TEMPLATE);
    let mut live: Vec<(String, u64)> = store
        .list::<Sandbox>()
        .unwrap()
        .iter()
        .map(|r| (r.record.id.to_string(), check_generation(r).unwrap()))
        .collect();
    say("ready");
    for n in 0u64.. {
        let roll = rng.below(100);
        let op = if live.len() < 10 || (roll < 25 && live.len() < 60) {
            Op::Save(format!("s{seed}n{n}"))
        } else if roll < 35 {
            Op::Remove(live[rng.below(live.len() as u64) as usize].0.clone())
        } else if roll < 40 {
            Op::FailedUpdate(live[rng.below(live.len() as u64) as usize].0.clone())
        } else if roll < 45 {
            Op::Snapshot(format!("snap-s{seed}n{n}"))
        } else {
            let (name, g) = &live[rng.below(live.len() as u64) as usize];
            Op::Update(name.clone(), g + 1)
        };
        let durability = if rng.below(2) == 0 {
            Durability::Full
        } else {
            Durability::Process
        };
        say(&format!("B {}", op.encode()));
        match &op {
            Op::Save(n) => {
                store
                    .write::<_, StoreError>("insert", durability, |tx| {
                        tx.insert(&generation_sandbox(n, 0))?;
                        tx.allocate_network(n)?;
                        Ok(())
                    })
                    .unwrap();
                live.push((n.clone(), 0));
            }
            Op::Update(n, g) => {
                store
                    .write::<_, StoreError>("update", durability, |tx| {
                        tx.update::<Sandbox, StoreError>(n, |s| {
                            *s = generation_sandbox(n, *g);
                            Ok(())
                        })
                    })
                    .unwrap();
                live.iter_mut().find(|(l, _)| l == n).unwrap().1 = *g;
            }
            Op::Remove(n) => {
                store
                    .write::<_, StoreError>("remove", durability, |tx| {
                        tx.remove::<Sandbox>(n)?.unwrap();
                        assert!(tx.release_network(n)?);
                        Ok(())
                    })
                    .unwrap();
                live.retain(|(l, _)| l != n);
            }
            Op::FailedUpdate(n) => {
                #[derive(Debug)]
                struct ChangedMyMind;
                impl From<StoreError> for ChangedMyMind {
                    fn from(_: StoreError) -> Self {
                        ChangedMyMind
                    }
                }
                let r = store.write::<(), ChangedMyMind>("fail", durability, |tx| {
                    tx.update::<Sandbox, ChangedMyMind>(n, |s| {
                        s.labels.insert("half".into(), "written".into());
                        Ok(())
                    })?;
                    tx.release_network(n)?;
                    Err(ChangedMyMind)
                });
                assert!(r.is_err());
            }
            Op::Snapshot(id) => store
                .write::<_, StoreError>("snapshot", durability, |tx| tx.insert(&snapshot(id, None)))
                .map(drop)
                .unwrap(),
        }
        say(&format!("C {}", op.encode()));
    }
}

/// The outcome of one child run: committed operations applied to `model`, and the one in flight.
fn apply_output(lines: &[String], model: &mut Model) -> Option<Op> {
    let mut pending = None;
    for line in lines {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["ready"] => {}
            ["openerr", ..] => panic!("the child could not open the store: {line}"),
            ["B", rest @ ..] => {
                assert!(pending.is_none(), "two operations in flight");
                pending = Some(Op::parse(rest));
            }
            ["C", rest @ ..] => {
                let op = Op::parse(rest);
                assert_eq!(pending.take().as_ref(), Some(&op), "commit without begin");
                model.apply(&op);
            }
            _ => panic!("unexpected child line {line:?}"),
        }
    }
    pending
}

/// Reopens the database and checks it against the model; returns the model it actually holds.
fn verify(
    path: &Path,
    model: &Model,
    pending: Option<&Op>,
    allocations: &mut BTreeMap<String, NetworkAllocation>,
) -> Model {
    let store = Store::open(path, config()).unwrap_or_else(|e| panic!("reopen failed: {e}"));
    let findings = store.integrity_check().unwrap();
    assert!(findings.is_empty(), "integrity check: {findings:?}");

    let records = store.list::<Sandbox>().unwrap();
    let mut found = Model::default();
    for r in &records {
        let g = check_generation(r).unwrap_or_else(|e| panic!("{e}"));
        found.sandboxes.insert(r.record.id.to_string(), g);
    }
    for s in store.list::<SnapshotInfo>().unwrap() {
        let id = s.record.snapshot_id.to_string();
        if id.starts_with("tpl-") {
            continue;
        }
        assert_eq!(s.record, snapshot(&id, None), "snapshot {id} is torn");
        found.snapshots.insert(id);
    }
    let mut after = model.clone();
    if let Some(op) = pending {
        after.apply(op);
    }
    assert!(
        found == *model || found == after,
        "the database matches neither the committed state nor the committed state plus the operation in flight ({pending:?})\n found {found:?}\n model {model:?}"
    );

    let mut seen = [
        HashSet::new(),
        HashSet::new(),
        HashSet::new(),
        HashSet::new(),
    ];
    let nets: Vec<(String, Option<NetworkAllocation>)> = store
        .read::<_, StoreError>("allocations", |tx| {
            records
                .iter()
                .map(|r| {
                    let id = r.record.id.to_string();
                    let net = tx.network_of(&id)?;
                    Ok((id, net))
                })
                .collect()
        })
        .unwrap();
    for (id, net) in nets {
        let net = net.unwrap_or_else(|| panic!("{id} lost its allocation"));
        for (set, v) in seen.iter_mut().zip([
            net.ip.to_string(),
            net.mac.to_string(),
            net.vsock_cid.to_string(),
            net.tap.clone(),
        ]) {
            assert!(set.insert(v.clone()), "{v} is allocated twice");
        }
        let first = allocations.entry(id.clone()).or_insert_with(|| net.clone());
        assert_eq!(*first, net, "the allocation of {id} changed");
    }
    allocations.retain(|n, _| found.sandboxes.contains_key(n));
    let count: i64 = rusqlite::Connection::open(path)
        .unwrap()
        .query_row("SELECT count(*) FROM net_allocations", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        count as usize,
        records.len(),
        "allocations without a sandbox are left"
    );
    found
}

#[test]
fn sigkill_at_random_points_loses_no_committed_record() {
    if std::env::var_os(DB_VAR).is_some() {
        return;
    }
    let iterations: u64 = std::env::var("EMBER_STORE_CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.db");
    let mut model = Model::default();
    let mut allocations = BTreeMap::new();
    let mut rng = Rng::new(0x5eed);
    let started = Instant::now();
    let (mut committed, mut in_flight_landed, mut in_flight_lost) = (0usize, 0usize, 0usize);

    for i in 0..iterations {
        let mut cmd = support::child("crash_child");
        cmd.env(DB_VAR, &path).env(SEED_VAR, i.to_string());
        let mut child = cmd.spawn().unwrap();
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = child.stderr.take().unwrap();
        let err_reader = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut text);
            text
        });

        let mut raw = Vec::new();
        let wait_for = |raw: &mut Vec<String>, done: &dyn Fn(&[String]) -> bool| {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !done(raw) {
                let line = rx
                    .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                    .unwrap_or_else(|_| panic!("child {i} stalled; said {raw:?}"));
                raw.push(line);
            }
        };
        match rng.below(10) {
            // Early: during exec, open, WAL recovery or the first commits.
            0 => std::thread::sleep(Duration::from_micros(rng.below(4000))),
            // After a random number of commits, so every run does real work however slow the
            // disk, then a little later so the kill lands anywhere inside an operation.
            1..=4 => {
                let commits = 1 + rng.below(20) as usize;
                wait_for(&mut raw, &|r: &[String]| {
                    r.iter().filter(|l| l.starts_with("@C ")).count() >= commits
                });
                std::thread::sleep(Duration::from_micros(rng.below(3000)));
            }
            // At a random time after the store is open.
            _ => {
                wait_for(&mut raw, &|r: &[String]| r.iter().any(|l| l == "@ready"));
                std::thread::sleep(Duration::from_micros(rng.below(30_000)));
            }
        }
        child.kill().unwrap();
        let status = child.wait().unwrap();
        reader.join().unwrap();
        raw.extend(rx.try_iter());
        let stderr = err_reader.join().unwrap();
        assert_eq!(
            status.signal(),
            Some(9),
            "child {i} ended by itself ({status}); stderr:\n{stderr}"
        );

        let lines = tagged_lines(raw.join("\n").as_bytes());
        let commits = lines.iter().filter(|l| l.starts_with("C ")).count();
        let pending = apply_output(&lines, &mut model);
        committed += commits;
        let found = verify(&path, &model, pending.as_ref(), &mut allocations);
        if pending.is_some() {
            if found == model {
                in_flight_lost += 1;
            } else {
                in_flight_landed += 1;
            }
        }
        model = found;
    }

    let leftovers: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".init-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    eprintln!(
        "crash test: {iterations} SIGKILLs in {:.1?}, {committed} commits verified, in-flight operation committed {in_flight_landed} times and lost {in_flight_lost} times, {} sandboxes and {} snapshots at the end",
        started.elapsed(),
        model.sandboxes.len(),
        model.snapshots.len()
    );
    assert!(
        committed >= 2 * iterations as usize,
        "the children barely ran: {committed} commits"
    );
}
