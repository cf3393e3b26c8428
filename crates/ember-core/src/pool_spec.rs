//! [`PoolSpec`]: how many warm VMs of a template a host keeps ready, and how they wait
//! ([`Pooled`]). One pool per template.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::VmError;
use crate::template::TemplateName;

/// Most VMs one pool may hold.
pub const MAX_POOL_DEPTH: u32 = 4096;
/// Most restores one pool may run at once.
pub const MAX_REFILL_PARALLELISM: u32 = 256;
/// Longest `max_age_secs` accepted (30 days).
pub const MAX_POOL_AGE_SECS: u64 = 30 * 24 * 3600;

/// How pooled VMs wait for their tenant.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooled {
    /// Paused: no CPU while waiting, whatever the guest does when idle; handover resumes them
    /// (one more VMM call on the handoff path).
    Paused,
    /// Running, idle in the guest: handover skips the resume. Costs host CPU only if the guest
    /// wakes itself while idle (the probe template is tickless, so none).
    #[default]
    Running,
}

impl std::str::FromStr for Pooled {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "paused" => Ok(Pooled::Paused),
            "running" => Ok(Pooled::Running),
            other => Err(format!(
                "{other:?} is not a pooled state; use running or paused"
            )),
        }
    }
}

impl fmt::Display for Pooled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Pooled::Paused => "paused",
            Pooled::Running => "running",
        })
    }
}

/// A template's warm pool.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    /// The template whose VMs it keeps.
    pub template: TemplateName,
    /// Refilled up to this many idle VMs.
    pub min_depth: u32,
    /// Never more than this many idle VMs.
    pub max_depth: u32,
    /// How idle VMs wait.
    #[serde(default)]
    pub pooled: Pooled,
    /// Idle VMs older than this are replaced (none: kept until taken), seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_secs: Option<u64>,
    /// Restores that may run at once.
    #[serde(default = "default_parallelism")]
    pub refill_parallelism: u32,
}

fn default_parallelism() -> u32 {
    4
}

impl PoolSpec {
    /// Checks the settings, naming the field at fault (`pool.<field>`).
    pub fn validate(&self) -> Result<(), VmError> {
        if self.max_depth == 0 || self.max_depth > MAX_POOL_DEPTH {
            return Err(VmError::invalid_spec(
                "pool.max_depth",
                format!(
                    "{} is out of range; 1 to {MAX_POOL_DEPTH} are allowed",
                    self.max_depth
                ),
            ));
        }
        if self.min_depth > self.max_depth {
            return Err(VmError::invalid_spec(
                "pool.min_depth",
                format!(
                    "{} is above max_depth {}; min_depth must be at most max_depth",
                    self.min_depth, self.max_depth
                ),
            ));
        }
        if self.refill_parallelism == 0 || self.refill_parallelism > MAX_REFILL_PARALLELISM {
            return Err(VmError::invalid_spec(
                "pool.refill_parallelism",
                format!(
                    "{} is out of range; 1 to {MAX_REFILL_PARALLELISM} are allowed",
                    self.refill_parallelism
                ),
            ));
        }
        if let Some(age) = self.max_age_secs
            && (age == 0 || age > MAX_POOL_AGE_SECS)
        {
            return Err(VmError::invalid_spec(
                "pool.max_age_secs",
                format!("{age} is out of range; 1 to {MAX_POOL_AGE_SECS} s, or none to keep VMs"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depths_age_and_parallelism_are_checked() {
        let spec: PoolSpec =
            serde_json::from_str(r#"{"template":"probe","min_depth":2,"max_depth":8}"#).unwrap();
        assert_eq!(spec.pooled, Pooled::Running);
        assert_eq!(spec.refill_parallelism, 4);
        spec.validate().unwrap();
        type Breaker = fn(&mut PoolSpec);
        let cases: [(Breaker, &str); 5] = [
            (|c| c.max_depth = 0, "pool.max_depth"),
            (|c| c.min_depth = 9, "pool.min_depth"),
            (|c| c.refill_parallelism = 0, "pool.refill_parallelism"),
            (|c| c.max_age_secs = Some(0), "pool.max_age_secs"),
            (|c| c.max_depth = MAX_POOL_DEPTH + 1, "pool.max_depth"),
        ];
        for (break_it, field) in cases {
            let mut c = spec.clone();
            break_it(&mut c);
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(field), "{err} should name {field}");
        }
        assert_eq!("paused".parse::<Pooled>().unwrap(), Pooled::Paused);
        assert!("asleep".parse::<Pooled>().is_err());
    }
}
