//! Helpers shared by the pool's integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use ember_core::{
    InMemoryVmProvider, SnapshotId, SnapshotRef, SnapshotRequest, StackKey, VmId, VmProvider,
    VmStatus, VmView,
};
use ember_pool::{BucketConfig, EntryValidator, Phase, PoolSettings, ValidationResult, WarmPool};

/// Generous: these machines are noisy.
pub const WAIT: Duration = Duration::from_secs(20);

pub fn stack(name: &str) -> StackKey {
    StackKey::new(name, "1.0.0", 1, 128).unwrap()
}

pub fn id(s: &str) -> VmId {
    VmId::new(s).unwrap()
}

/// Boots, pauses and snapshots a template VM for `stack` as snapshot `snap`.
pub fn template(p: &InMemoryVmProvider, stack: &StackKey, snap: &str) -> SnapshotRef {
    let tpl = id(&format!("tpl-{snap}"));
    p.create(&tpl).unwrap();
    p.start(&tpl).unwrap();
    p.pause(&tpl).unwrap();
    let snap = p
        .snapshot(
            &tpl,
            &SnapshotRequest {
                snapshot_id: SnapshotId::new(snap).unwrap(),
                stack: Some(stack.clone()),
            },
        )
        .unwrap();
    p.destroy(&tpl).unwrap();
    snap
}

/// Asks the in-memory provider whether the VM was marked unhealthy, and records the phases seen.
pub struct ProviderHealth {
    pub provider: InMemoryVmProvider,
    pub phases: std::sync::Mutex<Vec<Phase>>,
}

impl ProviderHealth {
    pub fn new(provider: &InMemoryVmProvider) -> Arc<Self> {
        Arc::new(Self {
            provider: provider.clone(),
            phases: Default::default(),
        })
    }
}

impl EntryValidator for ProviderHealth {
    fn validate(&self, vm: &VmView, phase: Phase) -> ValidationResult {
        self.phases.lock().unwrap().push(phase);
        match self.provider.unhealthy_reason(&vm.id) {
            Ok(None) => ValidationResult::Healthy,
            Ok(Some(reason)) => ValidationResult::Unhealthy(reason),
            Err(e) => ValidationResult::Unhealthy(format!("lookup failed: {e}")),
        }
    }
}

pub fn fast_settings() -> PoolSettings {
    PoolSettings {
        tick: Duration::from_millis(50),
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(200),
        failing_after: 3,
        workers: 4,
        destroy_attempts: 3,
        refill_yield: Duration::from_millis(20),
        refill_grace: Duration::from_millis(5),
    }
}

pub fn config(min: usize, max: usize) -> BucketConfig {
    BucketConfig {
        min_depth: min,
        max_depth: max,
        ..BucketConfig::default()
    }
}

pub fn start(p: &InMemoryVmProvider, settings: PoolSettings) -> WarmPool<InMemoryVmProvider> {
    WarmPool::start(p.clone(), ProviderHealth::new(p), settings).unwrap()
}

/// A pool started with `settings` and one stack `name` registered at `depth` (min = max),
/// filled.
pub fn filled(
    p: &InMemoryVmProvider,
    settings: PoolSettings,
    name: &str,
    depth: usize,
) -> (WarmPool<InMemoryVmProvider>, StackKey) {
    let s = stack(name);
    let snap = template(p, &s, &format!("{name}-snap"));
    let pool = start(p, settings);
    pool.register(s.clone(), snap, config(depth, depth))
        .unwrap();
    wait_until("fill", || self::depth(&pool, &s) == depth);
    (pool, s)
}

pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        thread::sleep(Duration::from_millis(2));
    }
}

pub fn depth(pool: &WarmPool<InMemoryVmProvider>, s: &StackKey) -> usize {
    pool.depth(s).unwrap_or(0)
}

/// Live VMs whose id starts with `prefix`.
pub fn live_with_prefix(p: &InMemoryVmProvider, prefix: &str) -> Vec<VmView> {
    use ember_core::VmQuery;
    p.list()
        .unwrap()
        .into_iter()
        .filter(|v| v.status != VmStatus::Destroyed && v.id.as_str().starts_with(prefix))
        .collect()
}
