//! The pool record: [`PoolConfig`] (template snapshot, depth, age and refill settings of one warm
//! pool bucket) and [`PoolRecord`] (that, keyed by its [`StackKey`]), with validation.
//!
//! Pure values; reading and writing rows is the private `sql` module's job.

use std::time::{Duration, SystemTime};

use ember_core::{SnapshotId, StackKey};
use serde::{Deserialize, Serialize};

use crate::error::StoreError;

/// Most VMs one pool bucket may hold.
pub const MAX_POOL_DEPTH: u32 = 4096;
/// Most restores one bucket may run at once.
pub const MAX_REFILL_PARALLELISM: u32 = 256;

/// The settings of one pool bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolConfig {
    /// The snapshot pooled VMs are restored from; must be in the store.
    pub template_snapshot: SnapshotId,
    /// The bucket is refilled up to this many idle VMs.
    pub min_depth: u32,
    /// The bucket never holds more than this many idle VMs.
    pub max_depth: u32,
    /// Idle VMs older than this are evicted and replaced; `None` keeps them forever.
    pub max_age: Option<Duration>,
    /// How many restores the refill may run at once.
    pub refill_parallelism: u32,
}

impl PoolConfig {
    /// Checks the settings, naming the field at fault (`pool.<field>`).
    pub fn validate(&self) -> Result<(), StoreError> {
        if self.max_depth == 0 || self.max_depth > MAX_POOL_DEPTH {
            return Err(StoreError::invalid(
                "pool.max_depth",
                format!(
                    "{} is out of range; 1 to {MAX_POOL_DEPTH} are allowed",
                    self.max_depth
                ),
            ));
        }
        if self.min_depth > self.max_depth {
            return Err(StoreError::invalid(
                "pool.min_depth",
                format!(
                    "{} is above max_depth {}; min_depth must be at most max_depth",
                    self.min_depth, self.max_depth
                ),
            ));
        }
        if self.refill_parallelism == 0 || self.refill_parallelism > MAX_REFILL_PARALLELISM {
            return Err(StoreError::invalid(
                "pool.refill_parallelism",
                format!(
                    "{} is out of range; 1 to {MAX_REFILL_PARALLELISM} are allowed",
                    self.refill_parallelism
                ),
            ));
        }
        if let Some(age) = self.max_age
            && (age.as_millis() == 0 || i64::try_from(age.as_millis()).is_err())
        {
            return Err(StoreError::invalid(
                "pool.max_age",
                format!("{age:?} is out of range; at least 1 ms, or none to keep VMs forever"),
            ));
        }
        Ok(())
    }
}

/// A stored pool bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolRecord {
    /// The bucket's key.
    pub stack: StackKey,
    /// Its settings.
    pub config: PoolConfig,
    /// When it was last written (millisecond precision).
    #[serde(with = "ember_core::view::unix_millis")]
    pub updated_at: SystemTime,
    /// 1 when saved, plus one per update.
    pub revision: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> PoolConfig {
        PoolConfig {
            template_snapshot: SnapshotId::new("tpl").unwrap(),
            min_depth: 2,
            max_depth: 8,
            max_age: Some(Duration::from_secs(600)),
            refill_parallelism: 2,
        }
    }

    #[test]
    fn depth_age_and_parallelism_are_checked() {
        config().validate().unwrap();
        type Breaker = fn(&mut PoolConfig);
        let cases: [(Breaker, &str); 5] = [
            (|c| c.max_depth = 0, "pool.max_depth"),
            (|c| c.min_depth = 9, "pool.min_depth"),
            (|c| c.refill_parallelism = 0, "pool.refill_parallelism"),
            (|c| c.max_age = Some(Duration::ZERO), "pool.max_age"),
            (|c| c.max_depth = MAX_POOL_DEPTH + 1, "pool.max_depth"),
        ];
        for (break_it, field) in cases {
            let mut c = config();
            break_it(&mut c);
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(field), "{err} should name {field}");
        }
    }
}
