//! Pool configuration: per-bucket [`BucketConfig`] (depths, age, parallelism, adaptive depth) and
//! pool-wide [`PoolSettings`] (tick, backoff, worker threads), each validated with an error that
//! names the field and the allowed range.

use std::time::Duration;

use crate::error::PoolError;

/// Largest `max_depth` accepted for one bucket.
pub const MAX_DEPTH_LIMIT: usize = 4096;
/// Largest `refill_parallelism` accepted for one bucket.
pub const MAX_PARALLELISM: usize = 256;

/// How one stack's bucket is kept warm.
#[derive(Debug, Clone, PartialEq)]
pub struct BucketConfig {
    /// Floor of the target depth (what adaptive depth never goes below).
    pub min_depth: usize,
    /// Ceiling of the target depth; without adaptive depth the bucket is kept at this depth.
    pub max_depth: usize,
    /// Entries older than this are evicted (cause `age`) and replaced.
    pub max_age: Duration,
    /// Spawns for this bucket that may run at once.
    pub refill_parallelism: usize,
    /// Pause entries once they are validated, so idle pooled VMs burn no CPU; acquire resumes
    /// them. Without it entries stay in whatever state the restore left them.
    pub pause_idle: bool,
    /// Let the target depth follow demand instead of staying at `max_depth`.
    pub adaptive: Option<AdaptiveDepth>,
}

impl Default for BucketConfig {
    fn default() -> Self {
        Self {
            min_depth: 1,
            max_depth: 4,
            max_age: Duration::from_secs(600),
            refill_parallelism: 2,
            pause_idle: true,
            adaptive: None,
        }
    }
}

impl BucketConfig {
    /// Checks every field.
    pub fn validate(&self) -> Result<(), PoolError> {
        if self.max_depth == 0 || self.max_depth > MAX_DEPTH_LIMIT {
            return Err(invalid(
                "max_depth",
                format!(
                    "{} is out of range; 1 to {MAX_DEPTH_LIMIT} are allowed",
                    self.max_depth
                ),
            ));
        }
        if self.min_depth > self.max_depth {
            return Err(invalid(
                "min_depth",
                format!(
                    "{} is larger than max_depth {}; min_depth must be at most max_depth",
                    self.min_depth, self.max_depth
                ),
            ));
        }
        if self.max_age.is_zero() {
            return Err(invalid("max_age", "must be longer than zero".to_string()));
        }
        if self.refill_parallelism == 0 || self.refill_parallelism > MAX_PARALLELISM {
            return Err(invalid(
                "refill_parallelism",
                format!(
                    "{} is out of range; 1 to {MAX_PARALLELISM} are allowed",
                    self.refill_parallelism
                ),
            ));
        }
        if let Some(a) = &self.adaptive {
            a.validate()?;
        }
        Ok(())
    }
}

/// Adaptive depth: target = acquire rate (EWMA) × refill latency (EWMA) × `headroom`, clamped to
/// `[min_depth, max_depth]` — by Little's law, the VMs that will be asked for while one refill is
/// under way, with a safety margin.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaptiveDepth {
    /// Time constant of the acquire-rate average: how quickly the target follows demand.
    pub rate_time_constant: Duration,
    /// Weight of each new spawn latency sample in its average, in (0, 1].
    pub latency_alpha: f64,
    /// Safety factor on the computed depth (1.0 = exactly the expected demand).
    pub headroom: f64,
}

impl Default for AdaptiveDepth {
    fn default() -> Self {
        Self {
            rate_time_constant: Duration::from_secs(10),
            latency_alpha: 0.2,
            headroom: 2.0,
        }
    }
}

impl AdaptiveDepth {
    fn validate(&self) -> Result<(), PoolError> {
        if self.rate_time_constant < Duration::from_millis(1) {
            return Err(invalid(
                "adaptive.rate_time_constant",
                "must be at least 1 ms".to_string(),
            ));
        }
        if !(self.latency_alpha > 0.0 && self.latency_alpha <= 1.0) {
            return Err(invalid(
                "adaptive.latency_alpha",
                format!("{} is out of range; (0, 1] is allowed", self.latency_alpha),
            ));
        }
        if !(self.headroom.is_finite() && self.headroom >= 1.0 && self.headroom <= 100.0) {
            return Err(invalid(
                "adaptive.headroom",
                format!("{} is out of range; 1 to 100 is allowed", self.headroom),
            ));
        }
        Ok(())
    }
}

/// Pool-wide behaviour.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolSettings {
    /// How often the refiller wakes with nothing else to do, to age entries out. Refills
    /// themselves are event-driven and never wait for this.
    pub tick: Duration,
    /// Delay after a bucket's first consecutive spawn failure; doubles per failure.
    pub backoff_initial: Duration,
    /// Cap on the per-bucket backoff delay.
    pub backoff_max: Duration,
    /// Consecutive spawn failures after which a bucket reports itself failing.
    pub failing_after: u32,
    /// Worker threads that run spawns and destroys for all buckets.
    pub workers: usize,
    /// Attempts to destroy an evicted VM before giving up and logging it as leaked.
    pub destroy_attempts: u32,
    /// While acquires are under way (and for [`refill_grace`](Self::refill_grace) after the
    /// last one ends), refills wait — at most this long — so a burst of handovers and its
    /// tenants' first requests do not compete with the restores they triggered for the CPU. A
    /// bucket with an `acquire_timeout` caller waiting for an entry never waits. Zero disables
    /// yielding.
    pub refill_yield: Duration,
    /// How long after the last acquire ends refills still yield: the time the new tenants
    /// need for their first requests (within `refill_yield` in total).
    pub refill_grace: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            tick: Duration::from_secs(1),
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(30),
            failing_after: 3,
            workers: 4,
            destroy_attempts: 3,
            refill_yield: Duration::from_millis(20),
            refill_grace: Duration::from_millis(5),
        }
    }
}

impl PoolSettings {
    /// Checks every field.
    pub fn validate(&self) -> Result<(), PoolError> {
        if self.tick < Duration::from_millis(1) {
            return Err(invalid("tick", "must be at least 1 ms".to_string()));
        }
        if self.backoff_initial.is_zero() {
            return Err(invalid(
                "backoff_initial",
                "must be longer than zero, or a failing provider would be retried in a hot loop"
                    .to_string(),
            ));
        }
        if self.backoff_max < self.backoff_initial {
            return Err(invalid(
                "backoff_max",
                "must be at least backoff_initial".to_string(),
            ));
        }
        if self.failing_after == 0 {
            return Err(invalid("failing_after", "must be at least 1".to_string()));
        }
        if self.workers == 0 || self.workers > 1024 {
            return Err(invalid(
                "workers",
                format!("{} is out of range; 1 to 1024 are allowed", self.workers),
            ));
        }
        if self.destroy_attempts == 0 {
            return Err(invalid(
                "destroy_attempts",
                "must be at least 1".to_string(),
            ));
        }
        if self.refill_yield > Duration::from_secs(10) {
            return Err(invalid(
                "refill_yield",
                format!(
                    "{:?} is too long; at most 10 s is allowed",
                    self.refill_yield
                ),
            ));
        }
        if self.refill_grace > self.refill_yield {
            return Err(invalid(
                "refill_grace",
                format!(
                    "{:?} is longer than refill_yield ({:?}), which bounds it",
                    self.refill_grace, self.refill_yield
                ),
            ));
        }
        Ok(())
    }
}

fn invalid(field: &'static str, reason: String) -> PoolError {
    PoolError::InvalidConfig { field, reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(e: PoolError) -> &'static str {
        match e {
            PoolError::InvalidConfig { field, .. } => field,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn bucket_config_ranges() {
        BucketConfig::default().validate().unwrap();
        let bad = [
            (
                BucketConfig {
                    max_depth: 0,
                    ..Default::default()
                },
                "max_depth",
            ),
            (
                BucketConfig {
                    min_depth: 5,
                    max_depth: 4,
                    ..Default::default()
                },
                "min_depth",
            ),
            (
                BucketConfig {
                    max_age: Duration::ZERO,
                    ..Default::default()
                },
                "max_age",
            ),
            (
                BucketConfig {
                    refill_parallelism: 0,
                    ..Default::default()
                },
                "refill_parallelism",
            ),
            (
                BucketConfig {
                    adaptive: Some(AdaptiveDepth {
                        headroom: 0.5,
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                "adaptive.headroom",
            ),
        ];
        for (cfg, field) in bad {
            assert_eq!(field_of(cfg.validate().unwrap_err()), field);
        }
        let msg = BucketConfig {
            min_depth: 5,
            max_depth: 4,
            ..Default::default()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(msg.contains("at most max_depth"), "{msg}");
    }

    #[test]
    fn refill_grace_is_bounded_by_the_yield() {
        PoolSettings::default().validate().unwrap();
        let e = PoolSettings {
            refill_yield: Duration::from_millis(10),
            refill_grace: Duration::from_millis(11),
            ..PoolSettings::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(field_of(e), "refill_grace");
    }

    #[test]
    fn settings_ranges() {
        PoolSettings::default().validate().unwrap();
        let s = PoolSettings {
            backoff_initial: Duration::ZERO,
            ..Default::default()
        };
        assert_eq!(field_of(s.validate().unwrap_err()), "backoff_initial");
        let s = PoolSettings {
            workers: 0,
            ..Default::default()
        };
        assert_eq!(field_of(s.validate().unwrap_err()), "workers");
    }
}
