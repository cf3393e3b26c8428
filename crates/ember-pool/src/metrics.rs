//! The pool's metrics: counters, per-stack gauges and latency histograms, kept in atomics and
//! read out as a [`PoolMetrics`] struct or encoded for Prometheus by [`PoolCollector`].
//!
//! One source of truth: the struct and the Prometheus text are two views of the same counters.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

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

/// Per-stack state read out.
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
}

/// The pool's counters (everything but the per-stack state, which lives with the buckets).
#[derive(Debug)]
pub(crate) struct Counters {
    pub created: AtomicU64,
    pub acquired: AtomicU64,
    evicted: [AtomicU64; 7],
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

    pub(crate) fn evicted(&self, cause: EvictionCause, n: u64) {
        self.evicted[cause.index()].fetch_add(n, Ordering::Relaxed);
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

    pub(crate) fn read(&self, stacks: BTreeMap<String, StackMetrics>) -> PoolMetrics {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        PoolMetrics {
            created_total: load(&self.created),
            acquired_total: load(&self.acquired),
            evicted: EvictionCause::ALL
                .iter()
                .map(|c| (*c, load(&self.evicted[c.index()])))
                .collect(),
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
    fn reasons_are_capped() {
        let c = Counters::new();
        for i in 0..(MAX_REASONS + 5) {
            c.validation_failed(&format!("r{i}"));
        }
        c.validation_failed("r0");
        let m = c.read(BTreeMap::new());
        assert_eq!(m.validation_failures_total, MAX_REASONS as u64 + 6);
        assert_eq!(m.validation_failures_by_reason.len(), MAX_REASONS + 1);
        assert_eq!(m.validation_failures_by_reason["other"], 5);
        assert_eq!(m.validation_failures_by_reason["r0"], 2);
    }
}
