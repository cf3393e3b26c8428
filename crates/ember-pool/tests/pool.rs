//! The warm pool's behaviour over the in-memory provider: refill, handover, validation, backoff,
//! registration, shutdown and metrics. (Real VMs come with the runtime's own tests.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, HashSet};
use std::thread;
use std::time::Duration;

use common::*;
use ember_core::{
    Capabilities, FaultPlan, Gate, InMemoryVmProvider, NetworkOverride, Operation, VmError,
    VmProvider, VmQuery, VmStatus,
};
use ember_pool::{
    AdaptiveDepth, BucketConfig, EvictionCause, Phase, PoolError, PoolSettings, Tenant,
};

#[test]
fn refill_is_event_driven_not_tick_driven() {
    let p = InMemoryVmProvider::new();
    let s = stack("alpha");
    let snap = template(&p, &s, "s1");
    let creates_before = p.calls(Operation::Create);
    // A tick of an hour: anything that happens below happens because of an event.
    let pool = start(
        &p,
        PoolSettings {
            tick: Duration::from_secs(3600),
            ..fast_settings()
        },
    );
    pool.register(s.clone(), snap, config(2, 4)).unwrap();
    wait_until("fill to max depth", || depth(&pool, &s) == 4);
    pool.acquire(&s, &Tenant::new("t1").unwrap()).unwrap();
    pool.acquire(&s, &Tenant::new("t2").unwrap()).unwrap();
    wait_until("refill after acquire", || depth(&pool, &s) == 4);
    let m = pool.metrics();
    assert_eq!(m.created_total, 6);
    assert_eq!(m.acquired_total, 2);
    assert_eq!(m.stacks[&s.to_string()].in_flight, 0);
    assert_eq!(
        p.calls(Operation::Create) - creates_before,
        6,
        "no restore beyond the pool's own"
    );
}

#[test]
fn acquire_hands_over_the_pooled_vm_itself() {
    let p = InMemoryVmProvider::new();
    let s = stack("alpha");
    let snap = template(&p, &s, "s1");
    let pool = start(&p, fast_settings());
    pool.register(s.clone(), snap, config(1, 2)).unwrap();
    wait_until("fill", || depth(&pool, &s) == 2);
    let pooled: Vec<_> = live_with_prefix(&p, "warm-");
    assert!(
        pooled.iter().all(|v| v.status == VmStatus::Paused),
        "idle entries are paused"
    );
    let creates_before = p.calls(Operation::Create);

    let vm = pool.acquire(&s, &Tenant::new("tenant-a").unwrap()).unwrap();
    assert_eq!(vm.vm_id.as_str(), "tenant-a");
    assert_eq!(vm.status, VmStatus::Running);
    assert!(
        pooled.iter().any(|v| v.id == vm.pooled_id),
        "one of the pooled VMs"
    );
    let view = p.get(&vm.vm_id).unwrap();
    assert_eq!(view.status, VmStatus::Running);
    assert_eq!(view.restored_from.as_ref().map(|s| s.as_str()), Some("s1"));
    assert!(
        matches!(p.get(&vm.pooled_id), Err(VmError::NotFound { .. })),
        "renamed, not copied"
    );
    // The acquire itself restored nothing: the only creates after it are refills.
    wait_until("refill", || depth(&pool, &s) == 2);
    assert_eq!(p.calls(Operation::Create) - creates_before, 1);
    // The pool no longer tracks it: shutdown leaves the tenant's VM alone.
    pool.shutdown();
    assert_eq!(p.get(&vm.vm_id).unwrap().status, VmStatus::Running);
}

#[test]
fn validator_runs_after_spawn_and_on_acquire_and_unhealthy_entries_are_skipped() {
    let p = InMemoryVmProvider::new();
    let s = stack("alpha");
    let snap = template(&p, &s, "s1");
    let validator = ProviderHealth::new(&p);
    let pool = ember_pool::WarmPool::start(p.clone(), validator.clone(), fast_settings()).unwrap();
    // One spawn at a time, so the bucket's order is the ids' order.
    let cfg = BucketConfig {
        refill_parallelism: 1,
        ..config(3, 3)
    };
    pool.register(s.clone(), snap, cfg).unwrap();
    wait_until("fill", || depth(&pool, &s) == 3);
    let pooled = live_with_prefix(&p, "warm-");
    p.mark_unhealthy(&pooled[0].id, "agent timeout").unwrap();
    p.mark_unhealthy(&pooled[1].id, "agent timeout").unwrap();

    let vm = pool.acquire(&s, &Tenant::new("t").unwrap()).unwrap();
    assert_eq!(vm.pooled_id, pooled[2].id, "the healthy one");
    let m = pool.metrics();
    assert_eq!(m.validation_failures_total, 2);
    assert_eq!(m.validation_failures_by_reason["agent timeout"], 2);
    assert_eq!(m.evicted_by(EvictionCause::Unhealthy), 2);
    wait_until("unhealthy entries destroyed", || {
        p.get(&pooled[0].id).unwrap().status == VmStatus::Destroyed
            && p.get(&pooled[1].id).unwrap().status == VmStatus::Destroyed
    });
    let phases = validator.phases.lock().unwrap().clone();
    assert!(phases.contains(&Phase::AfterSpawn));
    assert_eq!(phases.iter().filter(|p| **p == Phase::OnAcquire).count(), 3);
    assert_eq!(phases.iter().filter(|p| **p == Phase::Handover).count(), 1);
}

#[test]
fn a_vm_rejected_at_handover_is_evicted_and_the_next_one_handed_over() {
    let p = InMemoryVmProvider::new();
    let s = stack("alpha");
    let snap = template(&p, &s, "s1");
    // The first handover fails (say, the guest agent does not answer after resume).
    let rejected = std::sync::atomic::AtomicBool::new(false);
    let pool = ember_pool::WarmPool::start(
        p.clone(),
        std::sync::Arc::new(move |vm: &ember_core::VmView, phase: Phase| {
            if phase == Phase::Handover {
                assert_eq!(vm.status, VmStatus::Running, "handover sees the resumed VM");
                if !rejected.swap(true, std::sync::atomic::Ordering::SeqCst) {
                    return ember_pool::ValidationResult::Unhealthy("agent silent".into());
                }
            }
            ember_pool::ValidationResult::Healthy
        }),
        fast_settings(),
    )
    .unwrap();
    pool.register(s.clone(), snap, config(2, 2)).unwrap();
    wait_until("fill", || depth(&pool, &s) == 2);
    let vm = pool.acquire(&s, &Tenant::new("t").unwrap()).unwrap();
    assert_eq!(vm.vm_id.as_str(), "t");
    assert_eq!(p.get(&vm.vm_id).unwrap().status, VmStatus::Running);
    let m = pool.metrics();
    assert_eq!(m.validation_failures_by_reason["agent silent"], 1);
    assert_eq!(m.evicted_by(EvictionCause::Unhealthy), 1);
    assert_eq!(m.acquired_total, 1);
    pool.shutdown();
    assert!(
        live_with_prefix(&p, "warm-").is_empty(),
        "the rejected VM was destroyed"
    );
}

#[test]
fn unhealthy_after_spawn_backs_off_and_shows_failing() {
    let p = InMemoryVmProvider::new();
    let s = stack("alpha");
    let snap = template(&p, &s, "s1");
    let pool = ember_pool::WarmPool::start(
        p.clone(),
        std::sync::Arc::new(|_: &ember_core::VmView, _: Phase| {
            ember_pool::ValidationResult::Unhealthy("never ready".into())
        }),
        fast_settings(),
    )
    .unwrap();
    pool.register(s.clone(), snap, config(1, 2)).unwrap();
    wait_until("failing", || pool.metrics().stacks[&s.to_string()].failing);
    let m = pool.metrics();
    assert_eq!(depth(&pool, &s), 0);
    assert!(m.evicted_by(EvictionCause::Unhealthy) >= 3);
    assert!(
        m.stacks[&s.to_string()]
            .last_error
            .as_deref()
            .unwrap()
            .contains("never ready")
    );
    match pool.acquire(&s, &Tenant::new("t").unwrap()).unwrap_err() {
        PoolError::Empty {
            last_error: Some(e),
            ..
        } => assert!(e.contains("never ready")),
        e => panic!("unexpected {e:?}"),
    }
    pool.shutdown();
    assert!(live_with_prefix(&p, "warm-").is_empty());
}

#[test]
fn failing_provider_backs_off_instead_of_spinning_then_recovers() {
    let p = InMemoryVmProvider::new();
    let s = stack("alpha");
    let snap = template(&p, &s, "s1");
    let before = p.calls(Operation::Create);
    p.inject(Operation::Create, FaultPlan::fail_all());
    let pool = start(&p, fast_settings());
    pool.register(s.clone(), snap, config(1, 4)).unwrap();
    let failures = || pool.metrics().stacks[&s.to_string()].consecutive_failures;
    wait_until("six failures in a row", || failures() >= 6);
    // Every attempt is one counted failure, made one at a time after its backoff (the delays
    // themselves are unit-tested in bucket.rs): at most one attempt is under way beyond those
    // counted. A hot loop would show thousands of calls here.
    let attempts = p.calls(Operation::Create) - before;
    let counted = u64::from(failures());
    assert!(
        attempts <= counted + 1,
        "{attempts} create attempts for {counted} counted failures"
    );
    let m = pool.metrics();
    assert!(m.stacks[&s.to_string()].failing);
    assert!(m.provider_errors_total >= 6);
    assert!(
        m.stacks[&s.to_string()]
            .last_error
            .as_deref()
            .unwrap()
            .contains("injected fault")
    );
    p.clear_faults();
    wait_until("recovered", || depth(&pool, &s) == 4);
    assert!(!pool.metrics().stacks[&s.to_string()].failing);
}

#[test]
fn spawns_run_in_parallel_up_to_the_limit_and_acquire_is_not_blocked_by_them() {
    let p = InMemoryVmProvider::new();
    let s = stack("alpha");
    let snap = template(&p, &s, "s1");
    let pool = start(&p, fast_settings());
    pool.register(
        s.clone(),
        snap.clone(),
        BucketConfig {
            refill_parallelism: 3,
            ..config(1, 2)
        },
    )
    .unwrap();
    wait_until("fill", || depth(&pool, &s) == 2);
    // Now every restore hangs in the provider.
    let gate = Gate::new();
    p.inject(Operation::Create, FaultPlan::hold(gate.clone()));
    pool.acquire(&s, &Tenant::new("t1").unwrap()).unwrap();
    wait_until("one spawn held", || gate.waiting() == 1);
    // The remaining entry is still handed over while the refill is stuck.
    pool.acquire(&s, &Tenant::new("t2").unwrap()).unwrap();
    wait_until("two spawns held", || gate.waiting() == 2);
    // Raise the depth: the refiller wants 6 more but may run only 3 at once.
    pool.register(
        s.clone(),
        snap,
        BucketConfig {
            refill_parallelism: 3,
            ..config(1, 8)
        },
    )
    .unwrap();
    wait_until("three spawns held", || gate.waiting() == 3);
    // The coordinator plans in_flight before dispatching: exactly the limit, never more.
    assert_eq!(pool.metrics().stacks[&s.to_string()].in_flight, 3);
    gate.open();
    wait_until("fill to 8", || depth(&pool, &s) == 8);
}

#[test]
fn acquire_timeout_waits_for_a_refill_or_times_out_with_the_reason() {
    let p = InMemoryVmProvider::new();
    let s = stack("alpha");
    let snap = template(&p, &s, "s1");
    let gate = Gate::new();
    // The first restore waits for the gate and succeeds; every later one fails.
    p.inject(
        Operation::Create,
        FaultPlan {
            hold: Some(gate.clone()),
            fail_calls: (2..10_000).collect(),
            ..FaultPlan::default()
        },
    );
    let pool = start(&p, fast_settings());
    pool.register(s.clone(), snap, config(1, 1)).unwrap();
    assert!(matches!(
        pool.acquire(&s, &Tenant::new("now").unwrap()),
        Err(PoolError::Empty { .. })
    ));
    thread::scope(|sc| {
        let waiter = sc.spawn(|| pool.acquire_timeout(&s, &Tenant::new("later").unwrap(), WAIT));
        wait_until("spawn held", || gate.waiting() == 1);
        gate.open();
        let vm = waiter.join().unwrap().unwrap();
        assert_eq!(vm.vm_id.as_str(), "later");
    });
    wait_until("failing", || pool.metrics().stacks[&s.to_string()].failing);
    match pool
        .acquire_timeout(
            &s,
            &Tenant::new("never").unwrap(),
            Duration::from_millis(100),
        )
        .unwrap_err()
    {
        PoolError::Timeout {
            last_error: Some(e),
            waited,
            ..
        } => {
            assert!(e.contains("injected fault"), "{e}");
            assert!(waited >= Duration::from_millis(100));
        }
        e => panic!("unexpected {e:?}"),
    }
}

#[test]
fn register_replaces_the_template_for_new_entries() {
    let p = InMemoryVmProvider::new();
    let s = stack("alpha");
    let v1 = template(&p, &s, "v1");
    let v2 = template(&p, &s, "v2");
    let pool = start(&p, fast_settings());
    pool.register(s.clone(), v1, config(2, 2)).unwrap();
    wait_until("fill", || depth(&pool, &s) == 2);
    pool.register(s.clone(), v2, config(2, 2)).unwrap();
    let from = |t: &str| {
        pool.acquire_timeout(&s, &Tenant::new(t).unwrap(), WAIT)
            .unwrap()
            .template
            .unwrap()
            .to_string()
    };
    assert_eq!(from("a"), "v1", "existing entries keep serving");
    assert_eq!(from("b"), "v1");
    assert_eq!(from("c"), "v2", "new entries use the new template");
}

#[test]
fn bad_registrations_are_clear_errors_and_other_stacks_keep_serving() {
    let p = InMemoryVmProvider::new();
    let (a, b) = (stack("alpha"), stack("beta"));
    let snap_a = template(&p, &a, "sa");
    let pool = start(&p, fast_settings());
    pool.register(a.clone(), snap_a.clone(), config(1, 2))
        .unwrap();

    let err = pool
        .register(b.clone(), snap_a.clone(), config(1, 2))
        .unwrap_err();
    assert!(matches!(err, PoolError::InvalidTemplate { .. }), "{err}");
    assert!(err.to_string().contains("belongs to stack alpha"), "{err}");

    let mut ghost = snap_a.clone();
    ghost.snapshot_id = ember_core::SnapshotId::new("ghost").unwrap();
    ghost.stack = Some(b.clone());
    let err = pool.register(b.clone(), ghost, config(1, 2)).unwrap_err();
    assert!(
        err.to_string().contains("snapshot \"ghost\" not found"),
        "{err}"
    );

    for (cfg, field) in [(config(1, 0), "max_depth"), (config(3, 2), "min_depth")] {
        match pool.register(b.clone(), snap_a.clone(), cfg).unwrap_err() {
            PoolError::InvalidConfig { field: f, .. } => assert_eq!(f, field),
            e => panic!("unexpected {e:?}"),
        }
    }
    let err = Tenant::new("bad tenant/id").unwrap_err();
    assert!(err.to_string().contains("vm_id"), "{err}");
    assert!(matches!(
        pool.acquire(&b, &Tenant::new("t").unwrap()),
        Err(PoolError::UnknownStack { .. })
    ));
    assert!(matches!(
        pool.unregister(&b),
        Err(PoolError::UnknownStack { .. })
    ));
    // Stack alpha is untouched by all of that.
    pool.acquire_timeout(&a, &Tenant::new("ok").unwrap(), WAIT)
        .unwrap();
    assert_eq!(pool.stacks(), vec![a]);
}

#[test]
fn tenant_id_in_use_leaves_the_entry_in_the_pool() {
    let p = InMemoryVmProvider::new();
    let s = stack("alpha");
    let snap = template(&p, &s, "s1");
    let pool = start(&p, fast_settings());
    pool.register(s.clone(), snap, config(1, 1)).unwrap();
    wait_until("fill", || depth(&pool, &s) == 1);
    p.create(&id("taken")).unwrap();
    let err = pool
        .acquire(&s, &Tenant::new("taken").unwrap())
        .unwrap_err();
    assert!(
        matches!(err, PoolError::InvalidTenant(VmError::AlreadyExists { .. })),
        "{err}"
    );
    assert_eq!(depth(&pool, &s), 1);
    assert_eq!(pool.metrics().evicted_total(), 0);
    pool.acquire(&s, &Tenant::new("free").unwrap()).unwrap();
}

#[test]
fn network_overrides_apply_where_supported_and_are_refused_otherwise() {
    let p = InMemoryVmProvider::new();
    let s = stack("alpha");
    let snap = template(&p, &s, "s1");
    let pool = start(&p, fast_settings());
    pool.register(s.clone(), snap, config(1, 1)).unwrap();
    let net = vec![NetworkOverride {
        iface_id: "eth0".into(),
        host_dev_name: "tap-t1".into(),
    }];
    let tenant = Tenant::new("t1")
        .unwrap()
        .with_network(net.clone())
        .unwrap();
    let vm = pool.acquire_timeout(&s, &tenant, WAIT).unwrap();
    assert_eq!(p.network_of(&vm.vm_id).unwrap(), net);

    assert!(
        Tenant::new("t")
            .unwrap()
            .with_network(vec![NetworkOverride {
                iface_id: "eth0".into(),
                host_dev_name: "no/slashes".into(),
            }])
            .is_err()
    );

    p.set_capabilities(Capabilities::default());
    wait_until("refill", || depth(&pool, &s) == 1);
    let tenant = Tenant::new("t2").unwrap().with_network(net).unwrap();
    let err = pool.acquire(&s, &tenant).unwrap_err();
    assert!(
        matches!(err, PoolError::InvalidTenant(VmError::Unsupported { .. })),
        "{err}"
    );
    assert_eq!(depth(&pool, &s), 1, "nothing was taken from the pool");
}

#[test]
fn handoff_failure_evicts_and_tries_the_next_entry() {
    let p = InMemoryVmProvider::new();
    let s = stack("alpha");
    let snap = template(&p, &s, "s1");
    let pool = start(&p, fast_settings());
    pool.register(s.clone(), snap, config(2, 2)).unwrap();
    wait_until("fill", || depth(&pool, &s) == 2);
    p.fail_nth(Operation::Resume, 1);
    let vm = pool.acquire(&s, &Tenant::new("t").unwrap()).unwrap();
    assert_eq!(p.get(&vm.vm_id).unwrap().status, VmStatus::Running);
    assert_eq!(pool.metrics().evicted_by(EvictionCause::HandoffFailed), 1);
    // A provider that fails every handover: the caller learns why.
    p.inject(Operation::Rename, FaultPlan::fail_all());
    wait_until("refill", || depth(&pool, &s) == 2);
    let err = pool.acquire(&s, &Tenant::new("t2").unwrap()).unwrap_err();
    assert!(matches!(err, PoolError::Handoff { .. }), "{err}");
    assert!(ember_core::error_chain(&err).contains("injected fault"));
}

#[test]
fn unregister_destroys_entries_and_spawns_under_way() {
    let p = InMemoryVmProvider::new();
    let s = stack("alpha");
    let snap = template(&p, &s, "s1");
    let pool = start(&p, fast_settings());
    pool.register(s.clone(), snap, config(2, 3)).unwrap();
    wait_until("fill", || depth(&pool, &s) == 3);
    let gate = Gate::new();
    p.inject(Operation::Create, FaultPlan::hold(gate.clone()));
    pool.acquire(&s, &Tenant::new("t").unwrap()).unwrap();
    wait_until("spawn held", || gate.waiting() == 1);
    assert_eq!(pool.unregister(&s).unwrap(), 2);
    // The held restore still counts: deleting the template's snapshot now would break it.
    assert!(!pool.wait_spawns(&s, Duration::from_millis(50)));
    gate.open();
    // Once it is over, its VM is already destroyed: nothing reads the stack's files any more.
    assert!(pool.wait_spawns(&s, Duration::from_secs(10)));
    assert!(live_with_prefix(&p, "warm-").is_empty());
    assert_eq!(pool.metrics().evicted_by(EvictionCause::Unregister), 3);
    assert!(matches!(
        pool.acquire(&s, &Tenant::new("t2").unwrap()),
        Err(PoolError::UnknownStack { .. })
    ));
}

#[test]
fn entries_age_out_and_are_replaced() {
    let p = InMemoryVmProvider::new();
    let s = stack("alpha");
    let snap = template(&p, &s, "s1");
    let pool = start(&p, fast_settings());
    pool.register(
        s.clone(),
        snap,
        BucketConfig {
            max_age: Duration::from_millis(100),
            ..config(2, 2)
        },
    )
    .unwrap();
    wait_until("aged out and replaced", || {
        let m = pool.metrics();
        m.evicted_by(EvictionCause::Age) >= 4 && m.created_total >= 6
    });
    wait_until("fill", || depth(&pool, &s) == 2);
}

#[test]
fn died_entries_are_evicted_with_cause_died_and_replaced() {
    let p = InMemoryVmProvider::new();
    let s = stack("alpha");
    let snap = template(&p, &s, "s1");
    let pool = start(&p, fast_settings());
    pool.register(s.clone(), snap, config(2, 2)).unwrap();
    wait_until("fill", || depth(&pool, &s) == 2);
    let victim = live_with_prefix(&p, "warm-")[0].id.clone();
    p.crash(&victim).unwrap();
    assert!(pool.notify_died(&victim));
    assert!(!pool.notify_died(&id("not-pooled")));
    assert_eq!(pool.metrics().evicted_by(EvictionCause::Died), 1);
    wait_until("replaced", || {
        pool.metrics().created_total == 3 && depth(&pool, &s) == 2
    });
    wait_until("destroyed", || {
        p.get(&victim).unwrap().status == VmStatus::Destroyed
    });
}

#[test]
fn shutdown_is_idempotent_and_drop_shares_its_path() {
    let p = InMemoryVmProvider::new();
    let s = stack("alpha");
    let snap = template(&p, &s, "s1");
    let pool = start(&p, fast_settings());
    pool.register(s.clone(), snap.clone(), config(3, 3))
        .unwrap();
    wait_until("fill", || depth(&pool, &s) == 3);
    assert_eq!(pool.shutdown(), 3);
    assert_eq!(pool.shutdown(), 0);
    assert_eq!(pool.metrics().evicted_by(EvictionCause::Shutdown), 3);
    assert!(live_with_prefix(&p, "warm-").is_empty());
    assert!(matches!(
        pool.acquire(&s, &Tenant::new("t").unwrap()),
        Err(PoolError::ShutDown)
    ));
    drop(pool);

    // Drop with a spawn stuck in the provider: it waits for it and destroys its VM.
    let gate = Gate::new();
    let pool = start(&p, fast_settings());
    pool.register(s.clone(), snap, config(2, 2)).unwrap();
    wait_until("fill", || depth(&pool, &s) == 2);
    p.inject(Operation::Create, FaultPlan::hold(gate.clone()));
    pool.acquire(&s, &Tenant::new("t").unwrap()).unwrap();
    wait_until("spawn held", || gate.waiting() == 1);
    let metrics = pool.collector();
    let opener = {
        let gate = gate.clone();
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(50));
            gate.open();
        })
    };
    drop(pool);
    opener.join().unwrap();
    let m = metrics.metrics();
    assert_eq!(
        m.evicted_by(EvictionCause::Shutdown),
        2,
        "one entry + the held spawn"
    );
    assert!(live_with_prefix(&p, "warm-").is_empty());
}

#[test]
fn adaptive_depth_grows_with_demand() {
    let p = InMemoryVmProvider::new();
    let s = stack("alpha");
    let snap = template(&p, &s, "s1");
    p.inject(
        Operation::Create,
        FaultPlan::slow(Duration::from_millis(40)),
    );
    let pool = start(&p, fast_settings());
    pool.register(
        s.clone(),
        snap,
        BucketConfig {
            min_depth: 1,
            max_depth: 16,
            refill_parallelism: 8,
            adaptive: Some(AdaptiveDepth {
                rate_time_constant: Duration::from_secs(2),
                latency_alpha: 0.5,
                headroom: 2.0,
            }),
            ..BucketConfig::default()
        },
    )
    .unwrap();
    let target = || pool.metrics().stacks[&s.to_string()].target_depth;
    wait_until("first entry", || depth(&pool, &s) >= 1);
    assert_eq!(target(), 1);
    for i in 0..60 {
        pool.acquire_timeout(&s, &Tenant::new(&format!("t{i}")).unwrap(), WAIT)
            .unwrap();
    }
    // 60 acquires in about as many spawn latencies: demand x latency x 2 is well above 1.
    assert!(target() >= 2, "target {} did not follow demand", target());
}

#[test]
fn metrics_encode_for_prometheus() {
    let p = InMemoryVmProvider::new();
    let s = stack("alpha");
    let snap = template(&p, &s, "s1");
    let pool = start(&p, fast_settings());
    pool.register(s.clone(), snap, config(1, 1)).unwrap();
    pool.acquire_timeout(&s, &Tenant::new("t").unwrap(), WAIT)
        .unwrap();
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(pool.collector()));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for needle in [
        "ember_pool_acquired_total 1",
        "ember_pool_evicted_total{cause=\"age\"} 0",
        "ember_pool_depth{stack=\"alpha@1.0.0 (1 vCPU, 128 MiB)\"}",
        "ember_pool_acquire_seconds_count 1",
        "ember_pool_failing{stack=",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
}

/// One sample line of Prometheus text, `name{key="value",...} number`, as (name, labels,
/// number). A small parser of its own: the `stack` label's values hold commas, which
/// prometheus-parse 0.2 splits label values at.
fn sample(line: &str) -> Option<(&str, BTreeMap<String, String>, f64)> {
    if line.starts_with('#') {
        return None;
    }
    let (series, number) = line.rsplit_once(' ')?;
    let number = number.parse().ok()?;
    let (name, mut rest) = match series.split_once('{') {
        None => (series, ""),
        Some((name, labels)) => (name, labels.strip_suffix('}')?),
    };
    let mut labels = BTreeMap::new();
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => value.push(match chars.next()?.1 {
                    'n' => '\n',
                    c => c,
                }),
                (_, c) => value.push(c),
            }
        };
        labels.insert(key.to_string(), value);
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
    Some((name, labels, number))
}

/// The value of the sample `name` with exactly `labels` in Prometheus text (at most one).
fn scraped(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut found = text
        .lines()
        .filter_map(sample)
        .filter(|(n, l, _)| *n == name && *l == want);
    let (_, _, v) = found.next()?;
    assert!(found.next().is_none(), "{name} {labels:?} twice in\n{text}");
    Some(v as u64)
}

#[test]
fn restores_handovers_and_evictions_are_counted_per_stack_and_outlive_unregistration() {
    let p = InMemoryVmProvider::new();
    let (a, b) = (stack("alpha"), stack("beta"));
    let (sa, sb) = (template(&p, &a, "sa"), template(&p, &b, "sb"));
    let pool = start(&p, fast_settings());
    pool.register(a.clone(), sa, config(2, 2)).unwrap();
    pool.register(
        b.clone(),
        sb,
        BucketConfig {
            max_age: Duration::from_millis(50),
            ..config(1, 1)
        },
    )
    .unwrap();
    let (ka, kb) = (a.to_string(), b.to_string());
    for i in 0..3 {
        pool.acquire_timeout(&a, &Tenant::new(&format!("t{i}")).unwrap(), WAIT)
            .unwrap();
    }
    wait_until("beta's entries age out", || {
        pool.metrics().stacks[&kb]
            .counts
            .evicted_by(EvictionCause::Age)
            >= 2
    });
    let m = pool.metrics();
    let (ca, cb) = (&m.stacks[&ka].counts, &m.stacks[&kb].counts);
    assert_eq!(ca.acquired_total, 3);
    assert_eq!(ca.evicted_total(), 0, "{ca:?}");
    assert!(ca.restored_total >= 3, "{ca:?}");
    assert_eq!(cb.acquired_total, 0);
    assert!(cb.restored_total >= 2, "{cb:?}");
    assert!(m.unregistered_stacks.is_empty());

    pool.unregister(&b).unwrap();
    let m = pool.metrics();
    assert!(!m.stacks.contains_key(&kb), "beta is no longer registered");
    let cb = &m.unregistered_stacks[&kb];
    assert!(cb.evicted_by(EvictionCause::Age) >= 2, "kept: {cb:?}");
    assert_eq!(m.stack_counts(&kb), Some(cb));
    assert!(!m.unregistered_stacks.contains_key(&ka));

    // Shut down (every spawn finishes, every count is final), then read both views.
    wait_until("alpha refilled", || depth(&pool, &a) == 2);
    pool.shutdown();
    let m = pool.metrics();
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(pool.collector()));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();

    let (ca, cb) = (&m.stacks[&ka].counts, &m.unregistered_stacks[&kb]);
    assert_eq!(ca.acquired_total, 3);
    assert_eq!(ca.evicted_by(EvictionCause::Age), 0);
    assert_eq!(
        ca.evicted_by(EvictionCause::Shutdown),
        2,
        "alpha's ready entries"
    );
    assert_eq!(ca.restored_total, ca.acquired_total + ca.evicted_total());
    assert_eq!(cb.acquired_total, 0);
    assert!(cb.evicted_by(EvictionCause::Age) >= 2, "{cb:?}");
    assert_eq!(
        cb.restored_total,
        cb.evicted_total(),
        "every beta VM evicted"
    );
    // The per-stack counters add up to the pool-wide ones.
    let all = m.all_stack_counts();
    assert_eq!(all.len(), 2);
    let sum = |f: &dyn Fn(&ember_pool::StackCounts) -> u64| all.values().map(|c| f(c)).sum::<u64>();
    assert_eq!(sum(&|c| c.restored_total), m.created_total);
    assert_eq!(sum(&|c| c.acquired_total), m.acquired_total);
    for cause in EvictionCause::ALL {
        assert_eq!(
            sum(&|c| c.evicted_by(cause)),
            m.evicted_by(cause),
            "{cause}"
        );
    }

    // The Prometheus view says the same, for the registered and the unregistered stack.
    for name in ["restored", "acquired", "evicted"] {
        let ty = format!("# TYPE ember_pool_stack_{name} counter");
        assert!(text.contains(&ty), "missing {ty} in\n{text}");
    }
    for (stack, c) in [(&ka, ca), (&kb, cb)] {
        let l = [("stack", stack.as_str())];
        let get = |name: &str| scraped(&text, name, &l);
        assert_eq!(
            get("ember_pool_stack_restored_total"),
            Some(c.restored_total)
        );
        assert_eq!(
            get("ember_pool_stack_acquired_total"),
            Some(c.acquired_total)
        );
        for cause in EvictionCause::ALL {
            let l = [("stack", stack.as_str()), ("cause", cause.as_str())];
            assert_eq!(
                scraped(&text, "ember_pool_stack_evicted_total", &l),
                Some(c.evicted_by(cause)),
                "{stack} {cause} in\n{text}"
            );
        }
    }
    assert_eq!(
        scraped(&text, "ember_pool_stack_acquired_total", &[("stack", &ka)]),
        Some(3)
    );
    // The gauges stay per registered stack; the pool-wide counters are unchanged.
    assert!(text.contains(&format!("ember_pool_depth{{stack=\"{ka}\"}}")));
    assert!(!text.contains(&format!("ember_pool_depth{{stack=\"{kb}\"}}")));
    assert_eq!(
        scraped(&text, "ember_pool_acquired_total", &[]),
        Some(m.acquired_total)
    );
    assert_eq!(
        scraped(&text, "ember_pool_created_total", &[]),
        Some(m.created_total)
    );
}

#[test]
fn many_threads_acquire_each_vm_exactly_once_and_everything_is_accounted_for() {
    let p = InMemoryVmProvider::new();
    let (a, b) = (stack("alpha"), stack("beta"));
    let snaps = [template(&p, &a, "sa"), template(&p, &b, "sb")];
    // Some spawns fail and some entries turn out unhealthy, to exercise every path at once.
    p.inject(
        Operation::Create,
        FaultPlan::fail_calls((1..2000).step_by(13)),
    );
    let pool = start(&p, fast_settings());
    for (s, snap) in [(&a, &snaps[0]), (&b, &snaps[1])] {
        pool.register(
            s.clone(),
            snap.clone(),
            BucketConfig {
                refill_parallelism: 4,
                ..config(2, 8)
            },
        )
        .unwrap();
    }
    let per_thread = 25;
    let handed: Vec<_> = thread::scope(|sc| {
        let hs: Vec<_> = (0..16)
            .map(|t| {
                let (pool, p, a, b) = (&pool, &p, &a, &b);
                sc.spawn(move || {
                    let mut got = vec![];
                    for i in 0..per_thread {
                        if i % 7 == 3 {
                            // Poison whatever is at the front of the bucket now and then.
                            if let Some(v) = live_with_prefix(p, "warm-").first() {
                                let _ = p.mark_unhealthy(&v.id, "chaos");
                            }
                        }
                        let s = if (t + i) % 2 == 0 { a } else { b };
                        let tenant = Tenant::new(&format!("t{t}-{i}")).unwrap();
                        got.push(pool.acquire_timeout(s, &tenant, WAIT).unwrap());
                    }
                    got
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(handed.len(), 16 * per_thread);
    let pooled_ids: HashSet<_> = handed.iter().map(|v| v.pooled_id.clone()).collect();
    assert_eq!(
        pooled_ids.len(),
        handed.len(),
        "a pooled VM was handed out twice"
    );
    for vm in &handed {
        assert_eq!(p.get(&vm.vm_id).unwrap().status, VmStatus::Running);
    }
    pool.shutdown();

    // Accounting: every VM the pool ever created was handed out once or destroyed, and the
    // counters agree with the provider.
    let m = pool.metrics();
    let all = p.list().unwrap();
    let warm_left = all
        .iter()
        .filter(|v| v.id.as_str().starts_with("warm-") && v.status != VmStatus::Destroyed)
        .count();
    assert_eq!(warm_left, 0, "pooled VMs leaked");
    let destroyed_pooled = all
        .iter()
        .filter(|v| v.id.as_str().starts_with("warm-") && v.status == VmStatus::Destroyed)
        .count() as u64;
    assert_eq!(m.acquired_total, handed.len() as u64);
    assert_eq!(m.created_total, m.acquired_total + m.evicted_total());
    assert_eq!(
        destroyed_pooled,
        m.evicted_total(),
        "every eviction destroyed its VM"
    );
    assert_eq!(m.destroy_failures_total, 0);
    assert!(
        m.provider_errors_total > 0 && m.validation_failures_total > 0,
        "{m:?}"
    );
    // Per stack too: what each restored was handed out or evicted, and the stacks add up.
    let (ca, cb) = (
        &m.stacks[&a.to_string()].counts,
        &m.stacks[&b.to_string()].counts,
    );
    for c in [ca, cb] {
        assert_eq!(
            c.restored_total,
            c.acquired_total + c.evicted_total(),
            "{c:?}"
        );
    }
    let by_stack =
        |s: &ember_core::StackKey| handed.iter().filter(|v| v.stack == *s).count() as u64;
    assert_eq!(ca.acquired_total, by_stack(&a));
    assert_eq!(cb.acquired_total, by_stack(&b));
    assert_eq!(ca.restored_total + cb.restored_total, m.created_total);
    assert_eq!(ca.evicted_total() + cb.evicted_total(), m.evicted_total());
}

#[test]
fn the_validator_hears_of_every_eviction_once() {
    use std::sync::Mutex;
    struct Recorder(Mutex<Vec<(ember_core::VmId, EvictionCause)>>);
    impl ember_pool::EntryValidator for Recorder {
        fn validate(&self, _: &ember_core::VmView, _: Phase) -> ember_pool::ValidationResult {
            ember_pool::ValidationResult::Healthy
        }
        fn evicted(&self, vm: &ember_core::VmId, cause: EvictionCause) {
            self.0.lock().unwrap().push((vm.clone(), cause));
        }
    }
    let p = InMemoryVmProvider::new();
    let s = stack("alpha");
    let snap = template(&p, &s, "s1");
    let recorder = std::sync::Arc::new(Recorder(Mutex::new(Vec::new())));
    let pool = ember_pool::WarmPool::start(p.clone(), recorder.clone(), fast_settings()).unwrap();
    pool.register(
        s.clone(),
        snap,
        BucketConfig {
            max_age: Duration::from_millis(50),
            ..config(2, 2)
        },
    )
    .unwrap();
    // A second stack whose entries never age: they are in the bucket at shutdown.
    let b = stack("beta");
    pool.register(b.clone(), template(&p, &b, "sb"), config(1, 1))
        .unwrap();
    wait_until("some aged out", || {
        pool.metrics().evicted_by(EvictionCause::Age) >= 2
    });
    wait_until("beta full", || depth(&pool, &b) == 1);
    pool.shutdown();
    let m = pool.metrics();
    let seen = recorder.0.lock().unwrap().clone();
    assert_eq!(seen.len() as u64, m.evicted_total(), "{seen:?}");
    let ids: HashSet<_> = seen.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(ids.len(), seen.len(), "each VM once");
    assert!(seen.iter().any(|(_, c)| *c == EvictionCause::Age));
    assert!(seen.iter().any(|(_, c)| *c == EvictionCause::Shutdown));
}

#[test]
fn refills_yield_to_acquires_under_way_but_only_while_stock_remains_and_only_briefly() {
    let p = InMemoryVmProvider::new();
    let settings = PoolSettings {
        refill_yield: Duration::from_millis(300),
        ..fast_settings()
    };
    let (pool, s) = filled(&p, settings, "alpha", 3);
    let created = pool.metrics().created_total;

    // One acquire hangs in the provider's rename: a handover under way.
    let gate = Gate::new();
    p.inject(Operation::Rename, FaultPlan::hold(gate.clone()));
    thread::scope(|sc| {
        let held = sc.spawn(|| pool.acquire(&s, &Tenant::new("slow").unwrap()));
        wait_until("rename held", || gate.waiting() == 1);
        // Stock remains (2 ready): no refill while the acquire is under way...
        thread::sleep(Duration::from_millis(100));
        assert_eq!(
            pool.metrics().created_total,
            created,
            "refill did not yield"
        );
        // ...but only for refill_yield: then the refill goes ahead even though it still hangs.
        wait_until("refill after the yield", || {
            pool.metrics().created_total == created + 1
        });
        gate.open();
        held.join().unwrap().unwrap();
    });
    wait_until("full again", || depth(&pool, &s) == 3);

    // An empty bucket with nobody waiting still yields (the burst that emptied it is still
    // being handed over); one with an `acquire_timeout` caller waiting never does. A depth-1
    // bucket and a yield far longer than the test.
    p.clear_faults();
    let settings = PoolSettings {
        refill_yield: Duration::from_secs(10),
        refill_grace: Duration::ZERO,
        ..fast_settings()
    };
    let (pool, b) = filled(&p, settings, "beta", 1);
    let before = pool.metrics().created_total;
    let gate = Gate::new();
    p.inject(Operation::Resume, FaultPlan::hold(gate.clone()));
    thread::scope(|sc| {
        let held = sc.spawn(|| pool.acquire(&b, &Tenant::new("last").unwrap()));
        wait_until("resume held", || gate.waiting() == 1);
        thread::sleep(Duration::from_millis(100));
        assert_eq!(
            pool.metrics().created_total,
            before,
            "the empty bucket's refill did not yield to the handover"
        );
        let waiter = sc.spawn(|| {
            pool.acquire_timeout(&b, &Tenant::new("next").unwrap(), Duration::from_secs(10))
        });
        wait_until(
            "refill for the waiting acquirer despite the held acquire",
            || pool.metrics().created_total > before,
        );
        gate.open();
        held.join().unwrap().unwrap();
        waiter.join().unwrap().unwrap();
    });
}

#[test]
fn refills_wait_for_the_grace_after_the_last_acquire() {
    let p = InMemoryVmProvider::new();
    let settings = PoolSettings {
        refill_yield: Duration::from_secs(5),
        refill_grace: Duration::from_millis(400),
        ..fast_settings()
    };
    let (pool, s) = filled(&p, settings, "gamma", 2);
    let created = pool.metrics().created_total;
    pool.acquire(&s, &Tenant::new("first").unwrap()).unwrap();
    // The tenant's first requests get the CPU: no restore right after the acquire...
    thread::sleep(Duration::from_millis(150));
    assert_eq!(pool.metrics().created_total, created, "refill did not wait");
    // ...and the refill follows once the grace has passed, with no other event to wake it.
    wait_until("refill after the grace", || depth(&pool, &s) == 2);
    assert_eq!(pool.metrics().created_total, created + 1);
}

#[test]
fn acquires_do_not_wake_a_refiller_that_is_yielding_to_them() {
    let p = InMemoryVmProvider::new();
    let settings = PoolSettings {
        tick: Duration::from_secs(5),
        refill_yield: Duration::from_secs(10),
        refill_grace: Duration::ZERO,
        ..fast_settings()
    };
    let (pool, s) = filled(&p, settings, "delta", 4);
    let gate = Gate::new();
    p.inject(Operation::Rename, FaultPlan::hold(gate.clone()));
    let before = pool.metrics().refill_runs_total;
    thread::scope(|sc| {
        let first = sc.spawn(|| pool.acquire(&s, &Tenant::new("t1").unwrap()));
        wait_until("first rename held", || gate.waiting() == 1);
        // The first acquire woke the refiller, which now yields.
        wait_until("refiller ran", || pool.metrics().refill_runs_total > before);
        thread::sleep(Duration::from_millis(50));
        let yielding = pool.metrics().refill_runs_total;
        let more: Vec<_> = (2..=3)
            .map(|i| {
                let (pool, s) = (&pool, &s);
                sc.spawn(move || pool.acquire(s, &Tenant::new(format!("t{i}").as_str()).unwrap()))
            })
            .collect();
        wait_until("all renames held", || gate.waiting() == 3);
        thread::sleep(Duration::from_millis(100));
        let after = pool.metrics().refill_runs_total;
        // Released before asserting, so a failure cannot leave the scope waiting on the gate.
        gate.open();
        first.join().unwrap().unwrap();
        for h in more {
            h.join().unwrap().unwrap();
        }
        assert_eq!(after, yielding, "acquires woke a refiller that only yields");
    });
    // Once the acquires are over, the refiller runs and refills.
    p.clear_faults();
    wait_until("full again", || depth(&pool, &s) == 4);
}

/// The VMs a first pool of `depth` on `s` leaves running when it stops (as a daemon's restart
/// leaves them for the next one to adopt).
fn left_behind(
    p: &InMemoryVmProvider,
    s: &ember_core::StackKey,
    snap: &ember_core::SnapshotRef,
    depth_: usize,
) -> Vec<ember_core::VmView> {
    let first = start(p, fast_settings());
    first
        .register(s.clone(), snap.clone(), config(depth_, depth_))
        .unwrap();
    wait_until("fill", || depth(&first, s) == depth_);
    assert_eq!(first.leave().len(), depth_);
    drop(first);
    live_with_prefix(p, "warm-")
}

#[test]
fn adopted_vms_are_checked_in_the_background_and_the_unfit_one_replaced() {
    let p = InMemoryVmProvider::new();
    let s = stack("alpha");
    let snap = template(&p, &s, "s1");
    let kept = left_behind(&p, &s, &snap, 3);
    // Its agent stopped answering while no daemon watched it.
    p.mark_unhealthy(&kept[1].id, "agent timeout").unwrap();

    let validator = ProviderHealth::new(&p);
    let second = ember_pool::WarmPool::start(
        p.clone(),
        std::sync::Arc::clone(&validator) as std::sync::Arc<dyn ember_pool::EntryValidator>,
        fast_settings(),
    )
    .unwrap();
    let refused = second
        .register_adopting(s.clone(), snap, config(3, 3), kept.clone())
        .unwrap();
    assert!(refused.is_empty(), "{refused:?}");
    wait_until("the unfit one destroyed", || {
        p.get(&kept[1].id).unwrap().status == VmStatus::Destroyed
    });
    wait_until("replaced", || depth(&second, &s) == 3);
    let m = second.metrics();
    assert_eq!(m.evicted_by(EvictionCause::Unhealthy), 1);
    assert_eq!(m.validation_failures_by_reason["agent timeout"], 1);
    let checks = validator
        .phases
        .lock()
        .unwrap()
        .iter()
        .filter(|ph| **ph == Phase::Adopted)
        .count();
    assert_eq!(checks, 3, "each adopted VM checked once");
    for v in [&kept[0], &kept[2]] {
        assert_ne!(
            p.get(&v.id).unwrap().status,
            VmStatus::Destroyed,
            "{}",
            v.id
        );
    }
}

#[test]
fn an_adopted_vm_handed_over_during_its_check_stays_its_tenants() {
    let p = InMemoryVmProvider::new();
    let s = stack("alpha");
    let snap = template(&p, &s, "s1");
    let kept = left_behind(&p, &s, &snap, 1);

    // The check starts, then waits until the test lets it fail.
    let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let (started_tx, go_rx) = (
        std::sync::Mutex::new(started_tx),
        std::sync::Mutex::new(go_rx),
    );
    let second = ember_pool::WarmPool::start(
        p.clone(),
        std::sync::Arc::new(move |_: &ember_core::VmView, phase: Phase| {
            if phase == Phase::Adopted {
                started_tx.lock().unwrap().send(()).unwrap();
                go_rx.lock().unwrap().recv().unwrap();
                return ember_pool::ValidationResult::Unhealthy("late".into());
            }
            ember_pool::ValidationResult::Healthy
        }),
        PoolSettings {
            // Nothing refills during the test: the bucket holds only the adopted VM.
            tick: Duration::from_secs(3600),
            ..fast_settings()
        },
    )
    .unwrap();
    second
        .register_adopting(s.clone(), snap, config(0, 1), kept.clone())
        .unwrap();
    started_rx.recv().unwrap();
    let vm = second.acquire(&s, &Tenant::new("t").unwrap()).unwrap();
    assert_eq!(vm.pooled_id, kept[0].id);
    go_tx.send(()).unwrap();
    // The failed check of a VM that already left its bucket changes nothing (shutdown joins
    // the workers, so the check is over; the tenant's VM is not the pool's to destroy).
    second.shutdown();
    assert_eq!(p.get(&vm.vm_id).unwrap().status, VmStatus::Running);
    let m = second.metrics();
    assert_eq!(m.evicted_by(EvictionCause::Unhealthy), 0);
    assert_eq!(m.validation_failures_total, 0);
}

#[test]
fn leave_keeps_ready_vms_and_a_new_pool_adopts_them_without_restoring() {
    let p = InMemoryVmProvider::new();
    let s = stack("alpha");
    let snap = template(&p, &s, "s1");
    let first = start(&p, fast_settings());
    first
        .register(s.clone(), snap.clone(), config(3, 3))
        .unwrap();
    wait_until("fill", || depth(&first, &s) == 3);
    let left = first.leave();
    assert_eq!(left.len(), 3);
    drop(first);
    let kept: Vec<_> = live_with_prefix(&p, "warm-");
    assert_eq!(kept.len(), 3, "leave destroys nothing");

    // A VM of another template and one too many are refused, with the reason.
    let other = template(&p, &s, "s2");
    let stranger = id("stranger");
    p.create_with_spec(&stranger, &ember_core::VmSpec::restore(other))
        .unwrap();
    let mut views = kept.clone();
    views.push(p.get(&stranger).unwrap());
    let creates_before = p.calls(Operation::Create);
    let second = start(&p, fast_settings());
    let refused = second
        .register_adopting(s.clone(), snap, config(2, 2), views)
        .unwrap();
    let reasons: Vec<&str> = refused.iter().map(|(_, r)| r.as_str()).collect();
    assert_eq!(refused.len(), 2, "{reasons:?}");
    assert!(
        reasons.iter().any(|r| r.contains("template")),
        "{reasons:?}"
    );
    assert!(reasons.iter().any(|r| r.contains("full")), "{reasons:?}");
    assert_eq!(depth(&second, &s), 2);
    // The adopted VMs serve at once and nothing was restored for them.
    let vm = second.acquire(&s, &Tenant::new("t1").unwrap()).unwrap();
    assert!(kept.iter().any(|v| v.id == vm.pooled_id));
    wait_until("refill after acquire", || depth(&second, &s) == 2);
    assert_eq!(
        p.calls(Operation::Create) - creates_before,
        1,
        "only the refill restored"
    );
}
