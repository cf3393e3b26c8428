//! The warm pool over real microVMs: ember-pool driving the VMM provider on real KVM with the
//! probe guest. Fill, acquire, destroy; a pooled VMM killed with SIGKILL is noticed, evicted
//! with cause `died` and replaced; 32 threads acquire 500 VMs, each handed out exactly once;
//! bad input is refused clearly while other stacks keep serving; after shutdown no VMM process
//! and no file remain.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use ember_core::{SnapshotRef, StackKey, VmId, VmProvider, VmQuery, VmStatus, VmView, error_chain};
use ember_pool::{
    BucketConfig, EntryValidator, EvictionCause, Phase, PoolError, PoolSettings, Tenant,
    ValidationResult, WarmPool,
};
use ember_runtime::{VmExit, VmmProvider};

type Pool = WarmPool<Arc<VmmProvider>>;

/// Healthy when the provider reports the VM running or paused *now* (not the entry's view from
/// when it was pooled).
fn status_validator(p: &Arc<VmmProvider>) -> Arc<dyn EntryValidator> {
    let p = Arc::clone(p);
    Arc::new(move |vm: &VmView, _phase: Phase| match p.get(&vm.id) {
        Ok(v) if matches!(v.status, VmStatus::Running | VmStatus::Paused) => {
            ValidationResult::Healthy
        }
        Ok(v) => ValidationResult::Unhealthy(format!("vm is {}", v.status)),
        Err(_) => ValidationResult::Unhealthy("vm is gone".into()),
    })
}

fn settings() -> PoolSettings {
    PoolSettings {
        tick: Duration::from_millis(50),
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(500),
        workers: 4,
        ..PoolSettings::default()
    }
}

/// A pool over `p` whose buckets learn about dead VMMs from the provider's supervisor.
fn pool(p: &Arc<VmmProvider>, workers: usize) -> Arc<Pool> {
    let pool = Arc::new(
        WarmPool::start(
            Arc::clone(p),
            status_validator(p),
            PoolSettings {
                workers,
                ..settings()
            },
        )
        .unwrap(),
    );
    let weak = Arc::downgrade(&pool);
    p.add_exit_listener(Arc::new(move |e: &VmExit| {
        if let Some(pool) = weak.upgrade() {
            pool.notify_died(&e.id);
        }
    }));
    pool
}

/// Boots the template for `stack`, snapshots it (restores will come up paused), destroys the
/// template VM.
fn template(p: &VmmProvider, stack: &StackKey, sid: &str) -> SnapshotRef {
    let src = format!("tpl-{sid}");
    let mut snap = make_template(p, &src, sid, stack, "ember.hz=20 ember.report=10");
    p.destroy(&vm(&src)).unwrap();
    snap.resume = false;
    snap
}

fn config(min: usize, max: usize, parallelism: usize) -> BucketConfig {
    BucketConfig {
        min_depth: min,
        max_depth: max,
        refill_parallelism: parallelism,
        ..BucketConfig::default()
    }
}

fn wait_depth(pool: &Pool, stack: &StackKey, depth: usize) {
    wait_for(
        DEFAULT_TIMEOUT,
        &format!("{stack} to reach depth {depth}"),
        || (pool.depth(stack) == Some(depth)).then_some(()),
    );
}

/// Shuts the pool and then the provider down; no VMM and no file (but snapshots) remain.
fn finish(pool: Arc<Pool>, p: Arc<VmmProvider>, snapshots: &[&SnapshotRef]) {
    pool.shutdown();
    drop(pool);
    assert!(p.list().unwrap().is_empty(), "{:?}", p.list().unwrap());
    for s in snapshots {
        p.delete_snapshot(&s.snapshot_id).unwrap();
    }
    let root = p.root().to_path_buf();
    shutdown_and_check(&p);
    assert!(!root.exists(), "left: {:?}", files_under(&root));
}

#[test]
fn fill_acquire_destroy() {
    let dir = short_tempdir();
    let p = provider(dir.path(), flavor(Kind::EmberVmm).unwrap(), 2);
    let stack = probe_stack("fill");
    let tpl = template(&p, &stack, "fill");
    let pool = pool(&p, 2);
    pool.register(stack.clone(), tpl.clone(), config(2, 3, 2))
        .unwrap();
    wait_depth(&pool, &stack, 3);
    // Pooled entries are paused.
    for v in p.list().unwrap() {
        assert_eq!(v.status, VmStatus::Paused, "{}", v.id);
    }

    let tenant = Tenant::new("tenant-a").unwrap();
    let got = pool.acquire(&stack, &tenant).unwrap();
    assert_eq!(got.vm_id, tenant.id);
    assert_eq!(got.status, VmStatus::Running);
    assert_eq!(got.template.as_ref(), Some(&tpl.snapshot_id));
    // The tenant's VM is the pooled one, running under the tenant's id, and its guest ticks.
    assert!(p.get(&got.pooled_id).is_err());
    assert_eq!(p.get(&tenant.id).unwrap().status, VmStatus::Running);
    let saved = ember_probe_image::counter_from_mem_file(&tpl.mem_path).unwrap();
    wait_count_above(&p, &tenant.id, saved);
    assert!(p.root().join("vms/tenant-a/console.log").is_file());
    // Refilled behind the acquire.
    wait_depth(&pool, &stack, 3);
    // An id in use is refused, and the pool keeps its entry.
    let err = pool.acquire(&stack, &tenant).unwrap_err();
    assert!(matches!(err, PoolError::InvalidTenant(_)), "{err}");
    assert_eq!(pool.depth(&stack), Some(3));

    let pid = p.pid(&tenant.id).unwrap();
    p.destroy(&tenant.id).unwrap();
    wait_gone(&[pid]);
    let m = pool.metrics();
    assert_eq!(m.acquired_total, 1);
    assert!(m.created_total >= 4);
    finish(pool, p, &[&tpl]);
}

#[test]
fn a_killed_pooled_vmm_is_evicted_as_died_and_replaced() {
    let dir = short_tempdir();
    let p = provider(dir.path(), flavor(Kind::EmberVmm).unwrap(), 2);
    let stack = probe_stack("died");
    let tpl = template(&p, &stack, "died");
    let pool = pool(&p, 2);
    pool.register(stack.clone(), tpl.clone(), config(3, 3, 2))
        .unwrap();
    wait_depth(&pool, &stack, 3);
    let victim = p.list().unwrap()[0].id.clone();
    let pid = p.pid(&victim).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();

    wait_for(DEFAULT_TIMEOUT, "an eviction with cause died", || {
        (pool.metrics().evicted_by(EvictionCause::Died) == 1).then_some(())
    });
    // Evicted (destroyed by the pool) and replaced.
    wait_for(DEFAULT_TIMEOUT, "the dead VM to be destroyed", || {
        p.get(&victim).is_err().then_some(())
    });
    wait_depth(&pool, &stack, 3);
    assert!(!alive(pid));
    let created = pool.metrics().created_total;
    assert_eq!(created, 4, "three fills and one replacement");
    // Every VM in the bucket is alive and each acquire gets a working one.
    for i in 0..3 {
        let t = Tenant::new(&format!("t{i}")).unwrap();
        let got = pool.acquire_timeout(&stack, &t, DEFAULT_TIMEOUT).unwrap();
        assert_ne!(got.pooled_id, victim);
        p.destroy(&got.vm_id).unwrap();
    }
    finish(pool, p, &[&tpl]);
}

#[test]
fn thirty_two_threads_acquire_five_hundred_vms_each_once() {
    const THREADS: usize = 32;
    const TOTAL: usize = 500;
    let dir = short_tempdir();
    let p = provider(dir.path(), flavor(Kind::EmberVmm).unwrap(), 8);
    let stack = probe_stack("many");
    let tpl = template(&p, &stack, "many");
    let pool = pool(&p, 6);
    pool.register(stack.clone(), tpl.clone(), config(8, 32, 6))
        .unwrap();
    wait_depth(&pool, &stack, 32);

    let next = Arc::new(Mutex::new(0usize));
    let handed: Arc<Mutex<Vec<(VmId, VmId, u64)>>> = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let (pool, p, stack, next, handed) = (
                Arc::clone(&pool),
                Arc::clone(&p),
                stack.clone(),
                Arc::clone(&next),
                Arc::clone(&handed),
            );
            std::thread::spawn(move || {
                loop {
                    let n = {
                        let mut n = next.lock().unwrap();
                        if *n == TOTAL {
                            return;
                        }
                        *n += 1;
                        *n
                    };
                    let tenant = Tenant::new(&format!("tenant-{n}")).unwrap();
                    let got = pool
                        .acquire_timeout(&stack, &tenant, Duration::from_secs(60))
                        .unwrap_or_else(|e| panic!("acquire {n}: {}", error_chain(&e)));
                    assert_eq!(got.status, VmStatus::Running);
                    let view = p.get(&tenant.id).unwrap();
                    assert_eq!(view.status, VmStatus::Running);
                    let slot = p.slot(&tenant.id).unwrap();
                    handed
                        .lock()
                        .unwrap()
                        .push((got.vm_id.clone(), got.pooled_id.clone(), slot));
                    p.destroy(&tenant.id).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let handed = handed.lock().unwrap();
    assert_eq!(handed.len(), TOTAL);
    let tenants: HashSet<_> = handed.iter().map(|h| h.0.clone()).collect();
    let pooled: HashSet<_> = handed.iter().map(|h| h.1.clone()).collect();
    let slots: HashSet<_> = handed.iter().map(|h| h.2).collect();
    assert_eq!(tenants.len(), TOTAL);
    assert_eq!(pooled.len(), TOTAL, "a pooled VM was handed out twice");
    assert_eq!(slots.len(), TOTAL, "a VMM process was handed out twice");
    let m = pool.metrics();
    assert_eq!(m.acquired_total, TOTAL as u64);
    eprintln!(
        "500 acquires: p50 <= {:?}, p99 <= {:?}; spawns: {} created, spares waited {} times",
        m.acquire_latency.quantile_upper_bound(0.5),
        m.acquire_latency.quantile_upper_bound(0.99),
        m.created_total,
        p.stats().spares.waited
    );
    // Accounting: every VM created was handed out, is still pooled, or was destroyed by an
    // eviction. A refill still in flight has counted its VM as created but not yet pooled it,
    // so wait for the refills to settle before reading the counters.
    let settle = std::time::Instant::now() + Duration::from_secs(30);
    let m = loop {
        let m = pool.metrics();
        if m.stacks.values().all(|s| s.in_flight == 0) || std::time::Instant::now() > settle {
            break m;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let pooled_now = pool.depth(&stack).unwrap() as u64;
    assert_eq!(
        m.created_total,
        m.acquired_total + pooled_now + m.evicted_total(),
        "{m:?}"
    );
    drop(handed);
    finish(pool, p, &[&tpl]);
}

#[test]
fn bad_input_is_refused_and_other_stacks_keep_serving() {
    let dir = short_tempdir();
    let p = provider(dir.path(), flavor(Kind::EmberVmm).unwrap(), 2);
    let good = probe_stack("good");
    let tpl = template(&p, &good, "good");
    let pool = pool(&p, 2);
    pool.register(good.clone(), tpl.clone(), config(1, 2, 1))
        .unwrap();
    wait_depth(&pool, &good, 2);

    // Unknown stack.
    let other = probe_stack("other");
    let t = Tenant::new("t1").unwrap();
    let err = pool.acquire(&other, &t).unwrap_err();
    assert!(matches!(err, PoolError::UnknownStack { .. }), "{err}");
    eprintln!("unknown stack: {err}");

    // A template that is missing (deleted) or corrupt (truncated memory file).
    let gone = template(&p, &other, "gone");
    p.delete_snapshot(&gone.snapshot_id).unwrap();
    let err = pool
        .register(other.clone(), gone.clone(), config(1, 2, 1))
        .unwrap_err();
    eprintln!("missing template: {err}");
    assert!(
        matches!(&err, PoolError::InvalidTemplate { reason, .. } if reason.contains("not found")),
        "{err}"
    );
    let broken = template(&p, &other, "broken");
    let len = std::fs::metadata(&broken.mem_path).unwrap().len();
    std::fs::File::options()
        .write(true)
        .open(&broken.mem_path)
        .unwrap()
        .set_len(len / 3)
        .unwrap();
    let err = pool
        .register(other.clone(), broken.clone(), config(1, 2, 1))
        .unwrap_err();
    eprintln!("corrupt template: {err}");
    assert!(
        matches!(&err, PoolError::InvalidTemplate { reason, .. } if reason.contains("truncated")),
        "{err}"
    );
    // A template that belongs to another stack.
    let err = pool
        .register(
            other.clone(),
            {
                let mut t = tpl.clone();
                t.stack = Some(good.clone());
                t
            },
            config(1, 2, 1),
        )
        .unwrap_err();
    assert!(matches!(err, PoolError::InvalidTemplate { .. }), "{err}");

    // Depth 0, max < min.
    for (cfg, field) in [
        (config(0, 0, 1), "max_depth"),
        (config(3, 2, 1), "min_depth"),
    ] {
        let err = pool.register(other.clone(), tpl.clone(), cfg).unwrap_err();
        eprintln!("bad config: {err}");
        assert!(
            matches!(&err, PoolError::InvalidConfig { field: f, .. } if *f == field),
            "{err}"
        );
    }
    // A tenant id with bad characters.
    for bad in ["../etc", "a b", "", "-rf", "tenant/1"] {
        let err = Tenant::new(bad).unwrap_err();
        eprintln!("bad tenant {bad:?}: {err}");
        assert!(matches!(err, PoolError::InvalidTenant(_)), "{err}");
    }
    assert_eq!(pool.stacks(), vec![good.clone()]);

    // The good stack still serves, and refills.
    let got = pool.acquire_timeout(&good, &t, DEFAULT_TIMEOUT).unwrap();
    assert_eq!(p.get(&got.vm_id).unwrap().status, VmStatus::Running);
    p.destroy(&got.vm_id).unwrap();
    wait_depth(&pool, &good, 2);
    let broken_id = broken.snapshot_id.clone();
    p.delete_snapshot(&broken_id).unwrap();
    finish(pool, p, &[&tpl]);
}
