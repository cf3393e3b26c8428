//! Token-bucket rate limiter configuration in Firecracker's shape (`size`, `one_time_burst`,
//! `refill_time` in milliseconds), validated. The limiting itself lives in the VMM's devices.

use serde::{Deserialize, Serialize};

use crate::error::VmError;

/// Longest refill period accepted, in milliseconds (one hour).
pub const MAX_REFILL_TIME_MS: u64 = 3_600_000;

/// One token bucket: `size` tokens refilled over `refill_time` ms, plus an initial burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucket {
    /// Bucket capacity: bytes for a bandwidth bucket, operations for an ops bucket.
    pub size: u64,
    /// Extra tokens available once, at the start, that do not refill.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_time_burst: Option<u64>,
    /// Milliseconds to refill the bucket from empty to `size`.
    pub refill_time: u64,
}

impl TokenBucket {
    /// Checks the bucket; `field` is its path for the error.
    pub fn validate(&self, field: &str) -> Result<(), VmError> {
        if self.size == 0 {
            return Err(VmError::invalid_spec(
                format!("{field}.size"),
                "must be at least 1; leave the bucket out to disable limiting",
            ));
        }
        if self.refill_time == 0 || self.refill_time > MAX_REFILL_TIME_MS {
            return Err(VmError::invalid_spec(
                format!("{field}.refill_time"),
                format!(
                    "{} ms is out of range; 1 to {MAX_REFILL_TIME_MS} ms are allowed",
                    self.refill_time
                ),
            ));
        }
        Ok(())
    }
}

/// A device's limits: bytes per second and operations per second, each optional.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimiter {
    /// Bandwidth bucket (tokens are bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<TokenBucket>,
    /// Operations bucket (tokens are requests/packets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<TokenBucket>,
}

impl RateLimiter {
    /// Checks both buckets; `field` is the limiter's path for the error.
    pub fn validate(&self, field: &str) -> Result<(), VmError> {
        if let Some(b) = &self.bandwidth {
            b.validate(&format!("{field}.bandwidth"))?;
        }
        if let Some(o) = &self.ops {
            o.validate(&format!("{field}.ops"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firecracker_shape_round_trips() {
        let json = r#"{"bandwidth":{"size":1000,"one_time_burst":5000,"refill_time":100}}"#;
        let rl: RateLimiter = serde_json::from_str(json).unwrap();
        assert_eq!(rl.bandwidth.unwrap().one_time_burst, Some(5000));
        assert!(rl.ops.is_none());
        assert_eq!(serde_json::to_string(&rl).unwrap(), json);
        rl.validate("drives[0].rate_limiter").unwrap();
    }

    #[test]
    fn invalid_buckets_name_the_field() {
        let rl = RateLimiter {
            bandwidth: None,
            ops: Some(TokenBucket {
                size: 10,
                one_time_burst: None,
                refill_time: 0,
            }),
        };
        let err = rl.validate("rx_rate_limiter").unwrap_err().to_string();
        assert!(err.contains("rx_rate_limiter.ops.refill_time"), "{err}");
        let zero = TokenBucket {
            size: 0,
            one_time_burst: None,
            refill_time: 10,
        };
        assert!(
            zero.validate("b")
                .unwrap_err()
                .to_string()
                .contains("b.size")
        );
        assert!(
            serde_json::from_str::<TokenBucket>(r#"{"size":1,"refill_time":1,"x":1}"#).is_err()
        );
    }
}
