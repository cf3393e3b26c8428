//! One stack's bucket: its template, ready entries, spawns in flight, backoff state, demand
//! estimate and a handle on the stack's counters. Pure bookkeeping under the pool's lock —
//! nothing here calls the provider.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ember_core::{SnapshotRef, StackKey, VmId, VmStatus, VmView};

use crate::config::{BucketConfig, PoolSettings};
use crate::metrics::{StackCounters, StackMetrics};

/// A ready, validated VM waiting to be handed over.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// The provider's view of it when it entered the bucket.
    pub view: VmView,
    /// When it entered the bucket.
    pub ready_at: Instant,
    /// Its stack's counters (its eviction or handover is counted there, bucket or not).
    pub counters: Arc<StackCounters>,
}

/// Spawn failure streak and the backoff it implies.
#[derive(Debug, Default)]
pub(crate) struct Backoff {
    pub consecutive_failures: u32,
    pub until: Option<Instant>,
    pub last_error: Option<String>,
}

/// Demand estimate for adaptive depth.
#[derive(Debug, Default)]
pub(crate) struct Demand {
    /// Acquire rate (per second) as of `rate_at`, a continuous-time EWMA.
    rate: f64,
    rate_at: Option<Instant>,
    /// EWMA of spawn latency, seconds.
    latency: Option<f64>,
}

/// One registered stack.
#[derive(Debug)]
pub(crate) struct Bucket {
    pub key: StackKey,
    pub template: Arc<SnapshotRef>,
    pub config: BucketConfig,
    pub entries: VecDeque<Entry>,
    pub in_flight: usize,
    /// `acquire_timeout` callers waiting for an entry of this bucket (refills never yield to
    /// handovers while someone waits).
    pub waiters: usize,
    pub backoff: Backoff,
    pub demand: Demand,
    /// The stack's counters, shared with its entries and spawns (and kept by the pool's
    /// `Counters` after the bucket is gone).
    pub counters: Arc<StackCounters>,
    next_seed: u64,
}

impl Bucket {
    pub fn new(
        key: StackKey,
        template: SnapshotRef,
        config: BucketConfig,
        counters: Arc<StackCounters>,
    ) -> Self {
        Self {
            key,
            template: Arc::new(template),
            config,
            entries: VecDeque::new(),
            in_flight: 0,
            waiters: 0,
            backoff: Backoff::default(),
            demand: Demand::default(),
            counters,
            next_seed: 0,
        }
    }

    /// A fresh id for the next pooled VM of this bucket: `warm-<stack slug>-<generation>-<seq>`.
    /// `generation` distinguishes pool instances (a restarted daemon never collides with VMs a
    /// previous one left behind).
    pub fn next_vm_id(&mut self, generation: &str) -> Option<VmId> {
        let seq = self.next_seed;
        self.next_seed += 1;
        VmId::new(format!("warm-{}-{generation}-{seq}", self.key.slug())).ok()
    }

    /// The depth the refiller aims for now.
    pub fn target_depth(&self, now: Instant) -> usize {
        let (min, max) = (self.config.min_depth, self.config.max_depth);
        let Some(adaptive) = &self.config.adaptive else {
            return max;
        };
        let Some(latency) = self.demand.latency else {
            // No spawn has finished yet: nothing to estimate from, keep the floor (at least 1 so
            // a new bucket becomes useful).
            return min.max(1).min(max);
        };
        let rate = self.current_rate(now, adaptive.rate_time_constant);
        let want = (rate * latency * adaptive.headroom).ceil();
        (want as usize).clamp(min, max)
    }

    fn current_rate(&self, now: Instant, tau: Duration) -> f64 {
        match self.demand.rate_at {
            None => 0.0,
            Some(at) => {
                let dt = now.saturating_duration_since(at).as_secs_f64();
                self.demand.rate * (-dt / tau.as_secs_f64()).exp()
            }
        }
    }

    /// Records one acquire for the demand estimate.
    pub fn record_acquire(&mut self, now: Instant) {
        let Some(adaptive) = &self.config.adaptive else {
            return;
        };
        let tau = adaptive.rate_time_constant;
        self.demand.rate = self.current_rate(now, tau) + 1.0 / tau.as_secs_f64();
        self.demand.rate_at = Some(now);
    }

    /// Records a finished spawn's latency for the demand estimate.
    pub fn record_spawn_latency(&mut self, d: Duration) {
        let Some(adaptive) = &self.config.adaptive else {
            return;
        };
        let sample = d.as_secs_f64();
        self.demand.latency = Some(match self.demand.latency {
            None => sample,
            Some(prev) => adaptive.latency_alpha * sample + (1.0 - adaptive.latency_alpha) * prev,
        });
    }

    /// How many spawns to start now, counting what is ready and what is under way, within the
    /// parallelism limit, and one at a time while failing (a half-open circuit).
    pub fn spawns_wanted(&self, now: Instant) -> usize {
        if self.backoff.until.is_some_and(|u| u > now) {
            return 0;
        }
        let have = self.entries.len() + self.in_flight;
        let want = self.target_depth(now).saturating_sub(have);
        let limit = if self.backoff.consecutive_failures > 0 {
            1
        } else {
            self.config.refill_parallelism
        };
        want.min(limit.saturating_sub(self.in_flight))
    }

    /// A spawn failed: extend the backoff (doubling, capped).
    pub fn spawn_failed(&mut self, now: Instant, settings: &PoolSettings, error: String) {
        self.backoff.consecutive_failures = self.backoff.consecutive_failures.saturating_add(1);
        let exp = self.backoff.consecutive_failures.saturating_sub(1).min(30);
        let delay = settings
            .backoff_initial
            .saturating_mul(1u32 << exp)
            .min(settings.backoff_max);
        self.backoff.until = Some(now + delay);
        self.backoff.last_error = Some(error);
    }

    /// A spawn succeeded: the streak is over.
    pub fn spawn_succeeded(&mut self) {
        self.backoff = Backoff::default();
    }

    /// Whether refills count as failing.
    pub fn failing(&self, settings: &PoolSettings) -> bool {
        self.backoff.consecutive_failures >= settings.failing_after
    }

    /// Removes and returns entries older than `max_age`.
    pub fn take_expired(&mut self, now: Instant) -> Vec<Entry> {
        let max_age = self.config.max_age;
        let (old, keep): (Vec<Entry>, Vec<Entry>) = self
            .entries
            .drain(..)
            .partition(|e| now.saturating_duration_since(e.ready_at) > max_age);
        self.entries = keep.into();
        old
    }

    /// When the oldest entry expires.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.entries
            .iter()
            .map(|e| e.ready_at + self.config.max_age)
            .min()
    }

    pub fn metrics(&self, now: Instant, settings: &PoolSettings) -> StackMetrics {
        let failing = self.failing(settings);
        StackMetrics {
            depth: self.entries.len(),
            in_flight: self.in_flight,
            target_depth: self.target_depth(now),
            consecutive_failures: self.backoff.consecutive_failures,
            failing,
            last_error: self.backoff.last_error.clone(),
            counts: self.counters.read(),
        }
    }
}

/// Whether an entry needs a resume on handover.
pub(crate) fn needs_resume(view: &VmView) -> bool {
    view.status == VmStatus::Paused
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AdaptiveDepth;
    use ember_core::SnapshotId;

    fn bucket(config: BucketConfig) -> Bucket {
        let key = StackKey::new("alpha", "1", 1, 128).unwrap();
        let snap = SnapshotRef::new(
            SnapshotId::new("s").unwrap(),
            Some(key.clone()),
            "/s".into(),
            "/m".into(),
        );
        Bucket::new(key, snap, config, Arc::default())
    }

    #[test]
    fn backoff_doubles_and_caps_and_resets() {
        let settings = PoolSettings {
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_millis(35),
            ..Default::default()
        };
        let mut b = bucket(BucketConfig::default());
        let t0 = Instant::now();
        let mut delays = vec![];
        for _ in 0..4 {
            b.spawn_failed(t0, &settings, "boom".into());
            delays.push(b.backoff.until.unwrap() - t0);
        }
        assert_eq!(delays, [10, 20, 35, 35].map(Duration::from_millis).to_vec());
        assert!(b.failing(&settings));
        assert_eq!(b.spawns_wanted(t0), 0, "no spawns during backoff");
        let later = t0 + Duration::from_secs(1);
        assert_eq!(
            b.spawns_wanted(later),
            1,
            "one probe at a time while failing"
        );
        b.spawn_succeeded();
        assert!(!b.failing(&settings));
        assert_eq!(b.spawns_wanted(later), 2, "back to full parallelism");
    }

    #[test]
    fn spawns_wanted_counts_in_flight() {
        let mut b = bucket(BucketConfig {
            max_depth: 5,
            refill_parallelism: 3,
            ..Default::default()
        });
        let now = Instant::now();
        assert_eq!(b.spawns_wanted(now), 3);
        b.in_flight = 3;
        assert_eq!(b.spawns_wanted(now), 0);
        b.in_flight = 1;
        assert_eq!(b.spawns_wanted(now), 2);
    }

    #[test]
    fn adaptive_target_follows_rate_times_latency() {
        let mut b = bucket(BucketConfig {
            min_depth: 1,
            max_depth: 50,
            adaptive: Some(AdaptiveDepth {
                rate_time_constant: Duration::from_secs(1),
                latency_alpha: 1.0,
                headroom: 1.0,
            }),
            ..Default::default()
        });
        let t0 = Instant::now();
        assert_eq!(b.target_depth(t0), 1, "floor before any data");
        b.record_spawn_latency(Duration::from_millis(500));
        // 100 acquires spread over 10 s: ~10/s once the average has converged.
        for i in 0..100 {
            b.record_acquire(t0 + Duration::from_millis(100 * i));
        }
        let now = t0 + Duration::from_millis(9_900);
        let rate = b.current_rate(now, Duration::from_secs(1));
        assert!((8.0..=12.0).contains(&rate), "rate {rate}");
        let target = b.target_depth(now);
        assert!((4..=6).contains(&target), "10/s x 0.5 s ~ 5, got {target}");
        // Demand stops: the target decays to the floor.
        assert_eq!(b.target_depth(now + Duration::from_secs(60)), 1);
        // Clamped to max.
        b.record_spawn_latency(Duration::from_secs(100));
        assert_eq!(b.target_depth(now), 50);
    }

    #[test]
    fn expiry() {
        let mut b = bucket(BucketConfig {
            max_age: Duration::from_secs(10),
            ..Default::default()
        });
        let t0 = Instant::now();
        let view = |n: &str| VmView {
            id: VmId::new(n).unwrap(),
            status: VmStatus::Paused,
            stack: None,
            restored_from: None,
            created_at: std::time::SystemTime::now(),
            snapshots: vec![],
        };
        b.entries.push_back(Entry {
            view: view("old"),
            ready_at: t0,
            counters: Arc::clone(&b.counters),
        });
        b.entries.push_back(Entry {
            view: view("new"),
            ready_at: t0 + Duration::from_secs(5),
            counters: Arc::clone(&b.counters),
        });
        assert_eq!(b.next_expiry(), Some(t0 + Duration::from_secs(10)));
        let old = b.take_expired(t0 + Duration::from_secs(11));
        assert_eq!(old.len(), 1);
        assert_eq!(old[0].view.id.as_str(), "old");
        assert_eq!(b.entries.len(), 1);
    }
}
