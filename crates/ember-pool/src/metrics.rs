//! The pool's metrics: counters, per-stack gauges, per-stack counters and latency histograms,
//! kept in atomics and read out as a [`PoolMetrics`] struct or encoded for Prometheus by
//! [`PoolCollector`].
//!
//! One source of truth: the struct and the Prometheus text are two views of the same counters.
//!
//! Per stack (keyed by the [`StackKey`](ember_core::StackKey)'s display form, the `stack` label)
//! the pool counts restores, handovers and evictions by cause ([`StackCounts`]). Every place that
//! counts one of them pool-wide counts it for its stack in the same call, so the per-stack
//! counters sum to the pool-wide ones. They are monotonic and outlive the stack's bucket: a
//! registered stack's counts are in [`StackMetrics::counts`], an unregistered one's in
//! [`PoolMetrics::unregistered_stacks`], and a stack registered again continues from where it
//! was. The set of stacks is bounded by the templates a host registers, so they are never
//! dropped.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use ember_core::StackKey;

/// Most distinct validation-failure reasons counted separately; later ones count as `"other"`.
pub const MAX_REASONS: usize = 32;

/// Why an entry left the pool other than by being handed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EvictionCause {
    /// Older than the bucket's `max_age`.
    Age,
    /// The validator rejected it.
    Unhealthy,
    /// Its bucket was unregistered.
    Unregister,
    /// The pool shut down.
    Shutdown,
    /// Its VM process died (reported by the provider's supervisor).
    Died,
    /// The provider failed while handing it over (rename, network update or resume).
    HandoffFailed,
    /// It was restored but could not be readied (pausing it failed).
    SpawnFailed,
}

impl EvictionCause {
    /// Every cause, in label order.
    pub const ALL: [EvictionCause; 7] = [
        EvictionCause::Age,
        EvictionCause::Unhealthy,
        EvictionCause::Unregister,
        EvictionCause::Shutdown,
        EvictionCause::Died,
        EvictionCause::HandoffFailed,
        EvictionCause::SpawnFailed,
    ];

    /// The label value used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            EvictionCause::Age => "age",
            EvictionCause::Unhealthy => "unhealthy",
            EvictionCause::Unregister => "unregister",
            EvictionCause::Shutdown => "shutdown",
            EvictionCause::Died => "died",
            EvictionCause::HandoffFailed => "handoff_failed",
            EvictionCause::SpawnFailed => "spawn_failed",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for EvictionCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Upper bounds (seconds) of the latency histogram buckets: 25 µs to ~26 s, doubling.
fn bucket_bounds() -> impl Iterator<Item = f64> {
    (0..21).map(|i| 25e-6 * f64::from(1u32 << i))
}

/// A fixed-bucket latency histogram in atomics.
#[derive(Debug)]
pub(crate) struct Histogram {
    bounds: Vec<f64>,
    counts: Vec<AtomicU64>,
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn new() -> Self {
        let bounds: Vec<f64> = bucket_bounds().collect();
        let counts = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Self {
            bounds,
            counts,
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub(crate) fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let idx = self
            .bounds
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[idx].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(self.counts.len());
        for (i, c) in self.counts.iter().enumerate() {
            cumulative += c.load(Ordering::Relaxed);
            let bound = self.bounds.get(i).copied().unwrap_or(f64::INFINITY);
            buckets.push((bound, cumulative));
        }
        HistogramSnapshot {
            count: self.count.load(Ordering::Relaxed),
            sum: Duration::from_nanos(self.sum_nanos.load(Ordering::Relaxed)),
            buckets,
        }
    }
}

/// A histogram read out: total count, sum, and cumulative counts per upper bound (seconds).
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// Observations.
    pub count: u64,
    /// Sum of observations.
    pub sum: Duration,
    /// `(upper bound in seconds, observations <= bound)`, the last bound being +Inf.
    pub buckets: Vec<(f64, u64)>,
}

impl HistogramSnapshot {
    /// The upper bound of the bucket holding quantile `q` (0..=1): an upper estimate, within a
    /// factor of two. `None` if there are no observations.
    pub fn quantile_upper_bound(&self, q: f64) -> Option<Duration> {
        if self.count == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * self.count as f64).ceil().max(1.0) as u64;
        self.buckets
            .iter()
            .find(|(_, c)| *c >= rank)
            .map(|(b, _)| Duration::from_secs_f64(b.min(1e6)))
    }
}

/// One stack's monotonic counters read out. They survive the stack's unregistration (see
/// [`PoolMetrics::unregistered_stacks`]) and never go down.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StackCounts {
    /// Entries of this stack restored by refills.
    pub restored_total: u64,
    /// Entries of this stack handed to tenants.
    pub acquired_total: u64,
    /// Entries of this stack evicted, by cause (every cause, zeros included).
    pub evicted: BTreeMap<EvictionCause, u64>,
}

impl StackCounts {
    /// Sum of this stack's evictions over all causes.
    pub fn evicted_total(&self) -> u64 {
        self.evicted.values().sum()
    }

    /// This stack's evictions of one cause.
    pub fn evicted_by(&self, cause: EvictionCause) -> u64 {
        self.evicted.get(&cause).copied().unwrap_or(0)
    }
}

/// Per-stack state read out: gauges of the stack's bucket and the stack's counters.
#[derive(Debug, Clone, PartialEq)]
pub struct StackMetrics {
    /// Ready entries.
    pub depth: usize,
    /// Spawns under way.
    pub in_flight: usize,
    /// The depth the refiller aims for.
    pub target_depth: usize,
    /// Spawn failures since the last success.
    pub consecutive_failures: u32,
    /// Whether the bucket's refills are failing (at least `failing_after` in a row).
    pub failing: bool,
    /// The last refill error, while failing.
    pub last_error: Option<String>,
    /// Restores, handovers and evictions of this stack, since the pool started (including
    /// before an earlier unregistration of the same stack).
    pub counts: StackCounts,
}

/// Everything the pool counts, read out at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolMetrics {
    /// Entries ever restored by refills.
    pub created_total: u64,
    /// Entries handed to tenants.
    pub acquired_total: u64,
    /// Entries evicted, by cause.
    pub evicted: BTreeMap<EvictionCause, u64>,
    /// Refiller passes.
    pub refill_runs_total: u64,
    /// Validations that said Unhealthy.
    pub validation_failures_total: u64,
    /// Validation failures per reason.
    pub validation_failures_by_reason: BTreeMap<String, u64>,
    /// Provider calls that failed.
    pub provider_errors_total: u64,
    /// Evicted VMs the provider could not destroy after every attempt.
    pub destroy_failures_total: u64,
    /// Per registered stack (keyed by its display form).
    pub stacks: BTreeMap<String, StackMetrics>,
    /// The counts of stacks registered once but not now (keyed like `stacks`); a stack is in
    /// `stacks` or here, never both.
    pub unregistered_stacks: BTreeMap<String, StackCounts>,
    /// Acquire call latency (successful acquires).
    pub acquire_latency: HistogramSnapshot,
    /// Spawn latency (restore through validation).
    pub spawn_latency: HistogramSnapshot,
}

impl PoolMetrics {
    /// Sum of evictions over all causes.
    pub fn evicted_total(&self) -> u64 {
        self.evicted.values().sum()
    }

    /// Evictions of one cause.
    pub fn evicted_by(&self, cause: EvictionCause) -> u64 {
        self.evicted.get(&cause).copied().unwrap_or(0)
    }

    /// The counts of `stack` (its display form), registered or not.
    pub fn stack_counts(&self, stack: &str) -> Option<&StackCounts> {
        self.stacks
            .get(stack)
            .map(|s| &s.counts)
            .or_else(|| self.unregistered_stacks.get(stack))
    }

    /// The counts of every stack ever registered, by display form.
    pub fn all_stack_counts(&self) -> BTreeMap<&str, &StackCounts> {
        let registered = self.stacks.iter().map(|(k, s)| (k.as_str(), &s.counts));
        let unregistered = self
            .unregistered_stacks
            .iter()
            .map(|(k, c)| (k.as_str(), c));
        registered.chain(unregistered).collect()
    }
}

fn read_causes(evicted: &[AtomicU64; 7]) -> BTreeMap<EvictionCause, u64> {
    EvictionCause::ALL
        .iter()
        .map(|c| (*c, evicted[c.index()].load(Ordering::Relaxed)))
        .collect()
}

/// One stack's counters, shared by its bucket, its entries and its spawns under way (so an
/// eviction is counted for its stack even after the bucket is gone), and kept in
/// [`Counters`]' registry for good. Counted only through [`Counters`], which counts pool-wide in
/// the same call.
#[derive(Debug, Default)]
pub(crate) struct StackCounters {
    restored: AtomicU64,
    acquired: AtomicU64,
    evicted: [AtomicU64; 7],
}

impl StackCounters {
    pub(crate) fn read(&self) -> StackCounts {
        StackCounts {
            restored_total: self.restored.load(Ordering::Relaxed),
            acquired_total: self.acquired.load(Ordering::Relaxed),
            evicted: read_causes(&self.evicted),
        }
    }
}

/// The pool's counters (everything but the per-stack gauges, which live with the buckets).
#[derive(Debug)]
pub(crate) struct Counters {
    created: AtomicU64,
    acquired: AtomicU64,
    evicted: [AtomicU64; 7],
    /// Every stack ever registered, by display form: never removed (bounded by the templates a
    /// host has), so its counts survive unregistration and continue on re-registration.
    stacks: Mutex<BTreeMap<String, Arc<StackCounters>>>,
    pub refill_runs: AtomicU64,
    pub validation_failures: AtomicU64,
    reasons: Mutex<BTreeMap<String, u64>>,
    pub provider_errors: AtomicU64,
    pub destroy_failures: AtomicU64,
    pub acquire_latency: Histogram,
    pub spawn_latency: Histogram,
}

impl Counters {
    pub(crate) fn new() -> Self {
        Self {
            created: AtomicU64::new(0),
            acquired: AtomicU64::new(0),
            evicted: Default::default(),
            stacks: Mutex::new(BTreeMap::new()),
            refill_runs: AtomicU64::new(0),
            validation_failures: AtomicU64::new(0),
            reasons: Mutex::new(BTreeMap::new()),
            provider_errors: AtomicU64::new(0),
            destroy_failures: AtomicU64::new(0),
            acquire_latency: Histogram::new(),
            spawn_latency: Histogram::new(),
        }
    }

    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// `stack`'s counters, created on its first registration (the caller may hold the pool's
    /// lock; this lock is always taken after it).
    pub(crate) fn for_stack(&self, stack: &StackKey) -> Arc<StackCounters> {
        let key = stack.to_string();
        let mut stacks = self.stacks.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(stacks.entry(key).or_default())
    }

    /// The counts of the stacks not in `registered` (call under the pool's lock, so that the
    /// two sets are read at one moment).
    pub(crate) fn unregistered_stacks<V>(
        &self,
        registered: &BTreeMap<String, V>,
    ) -> BTreeMap<String, StackCounts> {
        let stacks = self.stacks.lock().unwrap_or_else(|p| p.into_inner());
        stacks
            .iter()
            .filter(|(k, _)| !registered.contains_key(*k))
            .map(|(k, c)| (k.clone(), c.read()))
            .collect()
    }

    /// An entry of `stack` restored by a refill.
    pub(crate) fn restored(&self, stack: &StackCounters) {
        Self::inc(&self.created);
        Self::inc(&stack.restored);
    }

    /// An entry of `stack` handed to a tenant.
    pub(crate) fn acquired(&self, stack: &StackCounters) {
        Self::inc(&self.acquired);
        Self::inc(&stack.acquired);
    }

    /// `n` entries of `stack` evicted for `cause`.
    pub(crate) fn evicted(&self, stack: &StackCounters, cause: EvictionCause, n: u64) {
        if n == 0 {
            return;
        }
        self.evicted[cause.index()].fetch_add(n, Ordering::Relaxed);
        stack.evicted[cause.index()].fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn validation_failed(&self, reason: &str) {
        Self::inc(&self.validation_failures);
        let mut reasons = self.reasons.lock().unwrap_or_else(|p| p.into_inner());
        let key = if reasons.contains_key(reason) || reasons.len() < MAX_REASONS {
            reason.to_string()
        } else {
            "other".to_string()
        };
        *reasons.entry(key).or_insert(0) += 1;
    }

    pub(crate) fn read(
        &self,
        stacks: BTreeMap<String, StackMetrics>,
        unregistered_stacks: BTreeMap<String, StackCounts>,
    ) -> PoolMetrics {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        PoolMetrics {
            created_total: load(&self.created),
            acquired_total: load(&self.acquired),
            evicted: read_causes(&self.evicted),
            refill_runs_total: load(&self.refill_runs),
            validation_failures_total: load(&self.validation_failures),
            validation_failures_by_reason: self
                .reasons
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            provider_errors_total: load(&self.provider_errors),
            destroy_failures_total: load(&self.destroy_failures),
            stacks,
            unregistered_stacks,
            acquire_latency: self.acquire_latency.snapshot(),
            spawn_latency: self.spawn_latency.snapshot(),
        }
    }
}

/// Encodes a [`PoolMetrics`] source for a prometheus-client `Registry`
/// (`registry.register_collector(Box::new(pool.collector()))`).
pub struct PoolCollector {
    pub(crate) read: Box<dyn Fn() -> PoolMetrics + Send + Sync>,
}

impl PoolCollector {
    /// Reads the metrics now (works after the pool itself is gone, for a final report).
    pub fn metrics(&self) -> PoolMetrics {
        (self.read)()
    }
}

impl fmt::Debug for PoolCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PoolCollector")
    }
}

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)
}

impl Collector for PoolCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let m = (self.read)();
        counter(
            &mut enc,
            "ember_pool_created",
            "Warm VMs restored by refills",
            m.created_total,
        )?;
        counter(
            &mut enc,
            "ember_pool_acquired",
            "Warm VMs handed to tenants",
            m.acquired_total,
        )?;
        counter(
            &mut enc,
            "ember_pool_refill_runs",
            "Refiller passes",
            m.refill_runs_total,
        )?;
        counter(
            &mut enc,
            "ember_pool_provider_errors",
            "Provider calls that failed",
            m.provider_errors_total,
        )?;
        counter(
            &mut enc,
            "ember_pool_destroy_failures",
            "Evicted VMs that could not be destroyed",
            m.destroy_failures_total,
        )?;
        {
            let mut fam = enc.encode_descriptor(
                "ember_pool_evicted",
                "Warm VMs evicted, by cause",
                None,
                MetricType::Counter,
            )?;
            for (cause, n) in &m.evicted {
                let labels = [("cause", cause.as_str())];
                ConstCounter::new(*n).encode(fam.encode_family(&labels)?)?;
            }
        }
        {
            let mut fam = enc.encode_descriptor(
                "ember_pool_validation_failures",
                "Validations that found an entry unhealthy, by reason",
                None,
                MetricType::Counter,
            )?;
            for (reason, n) in &m.validation_failures_by_reason {
                let labels = [("reason", reason.as_str())];
                ConstCounter::new(*n).encode(fam.encode_family(&labels)?)?;
            }
        }
        let per_stack = m.all_stack_counts();
        type StackCounter = (&'static str, &'static str, fn(&StackCounts) -> u64);
        let stack_counters: [StackCounter; 2] = [
            (
                "ember_pool_stack_restored",
                "Warm VMs restored by refills, per stack",
                |c| c.restored_total,
            ),
            (
                "ember_pool_stack_acquired",
                "Warm VMs handed to tenants, per stack",
                |c| c.acquired_total,
            ),
        ];
        for (name, help, get) in stack_counters {
            let mut fam = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (stack, c) in &per_stack {
                let labels = [("stack", *stack)];
                ConstCounter::new(get(c)).encode(fam.encode_family(&labels)?)?;
            }
        }
        {
            let mut fam = enc.encode_descriptor(
                "ember_pool_stack_evicted",
                "Warm VMs evicted, per stack and cause",
                None,
                MetricType::Counter,
            )?;
            for (stack, c) in &per_stack {
                for (cause, n) in &c.evicted {
                    let labels = [("stack", *stack), ("cause", cause.as_str())];
                    ConstCounter::new(*n).encode(fam.encode_family(&labels)?)?;
                }
            }
        }
        type StackGauge = (&'static str, &'static str, fn(&StackMetrics) -> i64);
        let gauges: [StackGauge; 4] = [
            ("ember_pool_depth", "Ready warm VMs per stack", |s| {
                s.depth as i64
            }),
            ("ember_pool_in_flight", "Spawns under way per stack", |s| {
                s.in_flight as i64
            }),
            ("ember_pool_target_depth", "Target depth per stack", |s| {
                s.target_depth as i64
            }),
            (
                "ember_pool_failing",
                "1 while a stack's refills are failing",
                |s| i64::from(s.failing),
            ),
        ];
        for (name, help, get) in gauges {
            let mut fam = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (stack, s) in &m.stacks {
                let labels = [("stack", stack.as_str())];
                ConstGauge::new(get(s)).encode(fam.encode_family(&labels)?)?;
            }
        }
        for (name, help, h) in [
            (
                "ember_pool_acquire_seconds",
                "Acquire latency",
                &m.acquire_latency,
            ),
            (
                "ember_pool_spawn_seconds",
                "Spawn latency",
                &m.spawn_latency,
            ),
        ] {
            let mut me = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
            let finite: Vec<(f64, u64)> = h.buckets.clone();
            me.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                h.sum.as_secs_f64(),
                h.count,
                &finite,
                None,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_and_quantiles() {
        let h = Histogram::new();
        for us in [10, 30, 30, 100, 5000] {
            h.observe(Duration::from_micros(us));
        }
        let s = h.snapshot();
        assert_eq!(s.count, 5);
        assert_eq!(s.sum, Duration::from_micros(5170));
        assert_eq!(s.buckets.last().unwrap().1, 5);
        assert_eq!(s.quantile_upper_bound(0.5), Some(Duration::from_micros(50)));
        assert!(s.quantile_upper_bound(1.0).unwrap() >= Duration::from_millis(5));
        assert_eq!(Histogram::new().snapshot().quantile_upper_bound(0.5), None);
    }

    #[test]
    fn stack_counters_add_to_the_pool_wide_ones_and_outlive_their_bucket() {
        let c = Counters::new();
        let alpha = StackKey::new("alpha", "1", 1, 128).unwrap();
        let beta = StackKey::new("beta", "1", 1, 128).unwrap();
        let (a, b) = (c.for_stack(&alpha), c.for_stack(&beta));
        c.restored(&a);
        c.restored(&a);
        c.restored(&b);
        c.acquired(&a);
        c.evicted(&a, EvictionCause::Age, 1);
        c.evicted(&b, EvictionCause::Unregister, 1);
        drop(a);
        // Registered again (say after an unregistration): the same counters continue.
        let a = c.for_stack(&alpha);
        c.evicted(&a, EvictionCause::Shutdown, 0);
        assert_eq!(a.read().restored_total, 2);

        // alpha registered, beta not.
        let stack = |counts: StackCounts| StackMetrics {
            depth: 0,
            in_flight: 0,
            target_depth: 0,
            consecutive_failures: 0,
            failing: false,
            last_error: None,
            counts,
        };
        let registered = BTreeMap::from([(alpha.to_string(), stack(a.read()))]);
        let unregistered = c.unregistered_stacks(&registered);
        let m = c.read(registered, unregistered);
        assert_eq!(
            m.unregistered_stacks.keys().collect::<Vec<_>>(),
            [&beta.to_string()]
        );
        let ca = m.stack_counts(&alpha.to_string()).unwrap();
        let cb = m.stack_counts(&beta.to_string()).unwrap();
        assert_eq!((ca.restored_total, ca.acquired_total), (2, 1));
        assert_eq!(ca.evicted_by(EvictionCause::Age), 1);
        assert_eq!(ca.evicted_by(EvictionCause::Shutdown), 0);
        assert_eq!(cb.evicted_by(EvictionCause::Unregister), 1);
        assert_eq!(
            ca.evicted.len(),
            EvictionCause::ALL.len(),
            "every cause listed"
        );
        assert_eq!((m.created_total, m.acquired_total), (3, 1));
        assert_eq!(m.evicted_total(), 2);
        assert_eq!(m.all_stack_counts().len(), 2);
    }

    #[test]
    fn reasons_are_capped() {
        let c = Counters::new();
        for i in 0..(MAX_REASONS + 5) {
            c.validation_failed(&format!("r{i}"));
        }
        c.validation_failed("r0");
        let m = c.read(BTreeMap::new(), BTreeMap::new());
        assert_eq!(m.validation_failures_total, MAX_REASONS as u64 + 6);
        assert_eq!(m.validation_failures_by_reason.len(), MAX_REASONS + 1);
        assert_eq!(m.validation_failures_by_reason["other"], 5);
        assert_eq!(m.validation_failures_by_reason["r0"], 2);
    }
}
