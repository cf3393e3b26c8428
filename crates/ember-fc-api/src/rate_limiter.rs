//! `RateLimiter` and `TokenBucket` (Firecracker's shape: `bandwidth` and `ops` buckets of
//! `{size, one_time_burst, refill_time}`), and their API-level check.
//!
//! The types are ember-core's, re-exported: the same value goes from a `VmSpec` to the wire
//! without a copy. ember-core's own `validate` is the spec's stricter rule (a bucket must
//! limit something); the API's rule is [`validate_rate_limiter`]: as in Firecracker, a bucket
//! with `size` or `refill_time` 0 is valid and disables that limit, and `refill_time` must
//! fit in nanoseconds.

pub use ember_core::{RateLimiter, TokenBucket};

use crate::field::{FieldError, field_path};

/// Checks a limiter's buckets as the API does (`field` names the limiter in errors).
pub fn validate_rate_limiter(limiter: &RateLimiter, field: &str) -> Result<(), FieldError> {
    for (name, bucket) in [("bandwidth", &limiter.bandwidth), ("ops", &limiter.ops)] {
        if let Some(b) = bucket
            && b.refill_time.checked_mul(1_000_000).is_none()
        {
            return Err(FieldError::new(
                format!("{}.refill_time", field_path(field, name)),
                format!(
                    "{} ms is too large (at most {} ms)",
                    b.refill_time,
                    u64::MAX / 1_000_000
                ),
            ));
        }
    }
    Ok(())
}

/// Checks an optional limiter (absent is valid).
pub(crate) fn validate_optional(
    limiter: Option<&RateLimiter>,
    field: &str,
) -> Result<(), FieldError> {
    match limiter {
        Some(l) => validate_rate_limiter(l, field),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_disables_and_huge_refill_times_are_refused() {
        let bucket = |size, refill_time| TokenBucket {
            size,
            one_time_burst: None,
            refill_time,
        };
        let off = RateLimiter {
            bandwidth: Some(bucket(0, 0)),
            ops: None,
        };
        validate_rate_limiter(&off, "rate_limiter").unwrap();
        let huge = RateLimiter {
            bandwidth: None,
            ops: Some(bucket(1, u64::MAX / 1_000_000 + 1)),
        };
        let err = validate_rate_limiter(&huge, "tx_rate_limiter").unwrap_err();
        assert_eq!(err.field, "tx_rate_limiter.ops.refill_time");
        let err = validate_rate_limiter(&huge, "").unwrap_err();
        assert_eq!(err.field, "ops.refill_time");
    }

    #[test]
    fn firecracker_shape() {
        let json = r#"{"bandwidth":{"size":1000,"one_time_burst":5000,"refill_time":100}}"#;
        let rl: RateLimiter = serde_json::from_str(json).unwrap();
        assert_eq!(serde_json::to_string(&rl).unwrap(), json);
        assert!(serde_json::from_str::<RateLimiter>(r#"{"bogus":{}}"#).is_err());
    }
}
