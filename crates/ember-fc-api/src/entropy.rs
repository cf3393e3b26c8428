//! `PUT /entropy` ([`EntropyDevice`]): the virtio-rng device. API-level check: its rate
//! limiter's numbers.

use serde::{Deserialize, Serialize};

use crate::field::{FieldError, field_path};
use crate::rate_limiter::{RateLimiter, validate_optional};

/// `PUT /entropy` — `EntropyDevice`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntropyDevice {
    /// Limits on the entropy the guest may draw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
}

impl EntropyDevice {
    /// API-level check; `field` prefixes the field names in errors (`""` for a request body).
    pub fn validate(&self, field: &str) -> Result<(), FieldError> {
        validate_optional(
            self.rate_limiter.as_ref(),
            &field_path(field, "rate_limiter"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TokenBucket;

    #[test]
    fn shape_and_check() {
        let e: EntropyDevice = serde_json::from_str("{}").unwrap();
        assert_eq!(e, EntropyDevice::default());
        assert_eq!(serde_json::to_string(&e).unwrap(), "{}");
        let huge = EntropyDevice {
            rate_limiter: Some(RateLimiter {
                bandwidth: Some(TokenBucket {
                    size: 1,
                    one_time_burst: None,
                    refill_time: u64::MAX,
                }),
                ops: None,
            }),
        };
        assert_eq!(
            huge.validate("entropy").unwrap_err().field,
            "entropy.rate_limiter.bandwidth.refill_time"
        );
        let err = serde_json::from_str::<EntropyDevice>(
            r#"{"rate_limiter": {"bandwidth": {"size": 10}}}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("refill_time"), "{err}");
    }
}
