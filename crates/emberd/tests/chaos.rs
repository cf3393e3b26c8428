//! Chaos: several clients run a random mix of operations (create, exec, kill, pause/resume,
//! timeouts, listings) while the test SIGKILLs the daemon at random moments (20+ times) and
//! restarts it each time. At the end every create the API acknowledged is a sandbox that
//! answers exec, or one ended by a kill this test asked for — none lost, none ended for another
//! cause — and nothing is orphaned: every VMM process under the runtime directory belongs to a
//! recorded VM or is a spare, every slot directory to a process, every VM record to a live
//! sandbox or a pool's bucket; no sandbox is left `creating`; `PRAGMA integrity_check` is ok.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Daemon, create, fill_pool, probe_template, run, runtime};
use ember_core::{EndCause, Sandbox, SandboxState, VmOwner, VmRecord};
use emberd::client::{Client, ClientError};

const CLIENTS: usize = 4;
const KILLS: usize = 22;
const MIN_OPS: usize = 300;

/// xorshift64*: reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// What the clients were told.
#[derive(Default)]
struct Book {
    /// Acknowledged creates.
    created: HashSet<String>,
    /// Sandboxes this test asked to kill (acknowledged or not).
    kill_asked: HashSet<String>,
}

fn is_down(e: &ClientError) -> bool {
    matches!(e, ClientError::Connect { .. } | ClientError::Http { .. })
}

async fn client_loop(
    c: Arc<Client>,
    book: Arc<Mutex<Book>>,
    stop: Arc<AtomicBool>,
    ops: Arc<AtomicUsize>,
    ok: Arc<AtomicUsize>,
    seed: u64,
) {
    let mut rng = Rng(seed | 1);
    while !stop.load(Ordering::SeqCst) {
        let pick = {
            let b = book.lock().unwrap();
            let live: Vec<&String> = b
                .created
                .iter()
                .filter(|id| !b.kill_asked.contains(*id))
                .collect();
            (!live.is_empty()).then(|| live[rng.below(live.len() as u64) as usize].clone())
        };
        let dice = rng.below(100);
        ops.fetch_add(1, Ordering::SeqCst);
        let result: Result<(), ClientError> = match (dice, pick) {
            (0..35, _) | (_, None) => {
                let mut req = create("probe");
                req.timeout_secs = Some(3600);
                req.labels.insert("chaos".into(), "1".into());
                match c.create_sandbox(&req).await {
                    Ok(sb) => {
                        book.lock().unwrap().created.insert(sb.id.to_string());
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
            (35..65, Some(id)) => match run(&c, &id, &["echo", "alive"]).await {
                Ok(_) => Ok(()),
                Err(e) => Err(ClientError::Unexpected(e)),
            },
            (65..75, Some(id)) => {
                book.lock().unwrap().kill_asked.insert(id.clone());
                c.kill(&id).await.map(drop)
            }
            (75..85, Some(id)) => {
                let pause = rng.below(2) == 0;
                c.pause(&id, pause).await.map(drop)
            }
            (85..95, _) => c.sandboxes("label=chaos%3D1&limit=50").await.map(drop),
            (_, Some(id)) => c.set_timeout(&id, 3600).await.map(drop),
        };
        match result {
            Ok(()) => {
                ok.fetch_add(1, Ordering::SeqCst);
            }
            Err(e) if is_down(&e) => tokio::time::sleep(Duration::from_millis(10)).await,
            // Refusals (a paused sandbox's exec, ...) and calls cut by a kill are part of it.
            Err(_) => {}
        }
    }
}

#[test]
fn acknowledged_creates_survive_random_sigkills_and_nothing_is_orphaned() {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("chaos seed {seed}");
    let mut rng = Rng(seed | 1);
    let mut d = Daemon::started();
    let rt = runtime();
    let c = Arc::new(d.client());
    rt.block_on(async {
        c.build_template(&probe_template("probe")).await.unwrap();
        fill_pool(&c, "probe", 4).await;
    });
    let book = Arc::new(Mutex::new(Book::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicUsize::new(0));
    let ok = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            rt.spawn(client_loop(
                Arc::new(d.client()),
                Arc::clone(&book),
                Arc::clone(&stop),
                Arc::clone(&ops),
                Arc::clone(&ok),
                seed.wrapping_add(i as u64 * 7919),
            ))
        })
        .collect();
    let t0 = Instant::now();
    let mut kills = 0;
    while kills < KILLS || ops.load(Ordering::SeqCst) < MIN_OPS {
        std::thread::sleep(Duration::from_millis(50 + rng.below(300)));
        d.kill9();
        kills += 1;
        d.start();
        assert!(
            t0.elapsed() < Duration::from_secs(240),
            "chaos took too long"
        );
    }
    // Let the clients run against a settled daemon for a moment, then stop them.
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    rt.block_on(async {
        for t in clients {
            t.await.unwrap();
        }
    });
    let (ops, ok) = (ops.load(Ordering::SeqCst), ok.load(Ordering::SeqCst));
    let book = std::mem::take(&mut *book.lock().unwrap());
    eprintln!(
        "{kills} SIGKILLs, {ops} operations ({ok} succeeded), {} acknowledged creates, {} kills asked",
        book.created.len(),
        book.kill_asked.len()
    );
    assert!(ops >= MIN_OPS);
    assert!(book.created.len() >= 20, "enough creates were acknowledged");

    // Every acknowledged create: live and answering, or ended by a kill the test asked for.
    rt.block_on(async {
        for id in &book.created {
            let sb = c.sandbox(id).await.unwrap();
            match sb.state {
                SandboxState::Running => {
                    let (code, out) = run(&c, id, &["echo", "alive"]).await.unwrap();
                    assert_eq!((code, out.as_str()), (0, "alive\n"), "{id}");
                }
                SandboxState::Paused => {
                    c.pause(id, false).await.unwrap();
                    assert_eq!(run(&c, id, &["echo", "alive"]).await.unwrap().0, 0);
                }
                SandboxState::Ended => {
                    let end = sb.end.as_ref().unwrap();
                    assert!(
                        end.cause == EndCause::Killed && book.kill_asked.contains(id),
                        "{id} was acknowledged and ended without being killed: {end:?}"
                    );
                }
                SandboxState::Creating => panic!("{id} is still creating after recovery"),
            }
        }
    });

    // Nothing orphaned, counted three ways.
    let store = d.store();
    let records: Vec<VmRecord> = store
        .list::<VmRecord>()
        .unwrap()
        .into_iter()
        .map(|s| s.record)
        .collect();
    let sandboxes: HashMap<String, Sandbox> = store
        .list::<Sandbox>()
        .unwrap()
        .into_iter()
        .map(|s| (s.record.id.to_string(), s.record))
        .collect();
    assert!(
        sandboxes
            .values()
            .all(|s| s.state != SandboxState::Creating),
        "no sandbox is left creating"
    );
    for r in &records {
        match r.owner {
            VmOwner::Sandbox => {
                let sb = &sandboxes[r.id.as_str()];
                assert!(sb.state.is_live(), "VM {} of ended sandbox {}", r.id, sb.id);
            }
            VmOwner::Pool => {}
            VmOwner::Api => panic!("no raw VMs were made: {}", r.id),
        }
    }
    let live_sandboxes = sandboxes.values().filter(|s| s.state.is_live()).count();
    let sandbox_vms = records
        .iter()
        .filter(|r| r.owner == VmOwner::Sandbox)
        .count();
    assert_eq!(
        live_sandboxes, sandbox_vms,
        "every live sandbox has exactly its VM"
    );
    let pooled = records.iter().filter(|r| r.owner == VmOwner::Pool).count();
    rt.block_on(async {
        let p = c.pool("probe").await.unwrap();
        assert!(
            pooled >= p.depth && pooled <= p.depth + p.in_flight + 4,
            "pool records {pooled} vs depth {} + in flight {}",
            p.depth,
            p.in_flight
        );
    });
    // Processes and slots: the recorded VMs plus at most the spares (2) and VMs being made.
    let recorded_slots: HashSet<String> =
        records.iter().map(|r| r.process.slot.to_string()).collect();
    let t0 = Instant::now();
    loop {
        let slots: HashSet<String> = d.slots().into_iter().collect();
        let pids = d.vmm_pids().len();
        let extra_slots = slots.difference(&recorded_slots).count();
        let missing: Vec<&String> = recorded_slots.difference(&slots).collect();
        assert!(
            missing.is_empty(),
            "recorded VMs without a slot: {missing:?}"
        );
        if extra_slots <= 2 + 4 && pids <= records.len() + 2 + 4 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "orphans: {extra_slots} unrecorded slots, {pids} VMM processes for {} records",
            records.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(store.integrity_check().unwrap().is_empty());

    // Clean up through the API; the daemon stops leaving nothing.
    rt.block_on(async {
        for (id, sb) in &sandboxes {
            if sb.state.is_live() {
                c.kill(id).await.unwrap();
            }
        }
        c.delete_pool("probe").await.unwrap();
    });
    assert!(d.term());
    assert!(d.vmm_pids().is_empty(), "{:?}", d.vmm_pids());
    assert!(d.slots().is_empty(), "{:?}", d.slots());
    assert!(store.list::<VmRecord>().unwrap().is_empty());
}
