//! Validated identifiers: [`VmId`] and [`SnapshotId`].
//!
//! Identifiers end up in file names, Unix socket paths, TAP device names, URLs and log lines, so they
//! are restricted to a conservative character set at the edge, once, and are then carried around as
//! types that cannot hold anything else. This module owns that character set and nothing more.

use std::borrow::Borrow;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::VmError;

/// Longest identifier accepted, in bytes.
pub const MAX_ID_LEN: usize = 128;

/// Checks `value` against ember's identifier rules and names `field` in the error.
///
/// Allowed: 1 to [`MAX_ID_LEN`] ASCII letters, digits, `_`, `-` and `.`, starting with a letter or
/// digit (so no hidden files, no `..`, no option-looking `-x`).
pub fn validate_id(field: &str, value: &str) -> Result<(), VmError> {
    let reason = if value.is_empty() {
        Some("must not be empty".to_string())
    } else if value.len() > MAX_ID_LEN {
        Some(format!(
            "is {} bytes long; at most {MAX_ID_LEN} are allowed",
            value.len()
        ))
    } else if !value.as_bytes()[0].is_ascii_alphanumeric() {
        Some("must start with an ASCII letter or digit".to_string())
    } else {
        value
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
            .map(|c| {
                format!("contains {c:?}; only ASCII letters, digits, '_', '-' and '.' are allowed")
            })
    };
    match reason {
        Some(reason) => Err(VmError::InvalidSpec {
            field: field.to_string(),
            reason: format!("{value:?} {reason}"),
        }),
        None => Ok(()),
    }
}

macro_rules! validated_id {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates `value` (see [`validate_id`]) and wraps it.
            pub fn new(value: impl Into<String>) -> Result<Self, VmError> {
                let value = value.into();
                validate_id($field, &value)?;
                Ok(Self(value))
            }

            /// The identifier as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = VmError;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::new(value)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = VmError;
            fn try_from(value: &str) -> Result<Self, Self::Error> {
                Self::new(value)
            }
        }

        impl std::str::FromStr for $name {
            type Err = VmError;
            fn from_str(value: &str) -> Result<Self, Self::Err> {
                Self::new(value)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

validated_id!(
    /// The identity of one microVM as a provider knows it (a pool entry's id, then the tenant's).
    VmId,
    "vm_id"
);

validated_id!(
    /// The identity of one snapshot (state file + memory file) as a provider knows it.
    SnapshotId,
    "snapshot_id"
);

validated_id!(
    /// The identity of a tenant's sandbox. Its VM carries the same id ([`SandboxId::vm_id`]).
    SandboxId,
    "sandbox_id"
);

impl SandboxId {
    /// The id of the sandbox's VM: the same text (a warm VM is renamed to it at handover).
    pub fn vm_id(&self) -> VmId {
        VmId(self.0.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_conservative_ids() {
        for ok in [
            "a",
            "tenant-42",
            "warm.alpha_1-0",
            "0abc",
            &"x".repeat(MAX_ID_LEN),
        ] {
            assert!(VmId::new(ok).is_ok(), "{ok} should be accepted");
        }
    }

    #[test]
    fn rejects_bad_ids_naming_the_field_and_the_character() {
        let cases = [
            ("", "must not be empty"),
            ("-rf", "must start"),
            (".hidden", "must start"),
            ("a/b", "'/'"),
            ("a b", "' '"),
            ("ten\u{e9}", "'\u{e9}'"),
        ];
        for (bad, why) in cases {
            let err = VmId::new(bad).expect_err(bad);
            let text = err.to_string();
            assert!(text.contains("vm_id"), "{text}");
            assert!(text.contains(why), "{text} should mention {why}");
        }
        assert!(VmId::new("x".repeat(MAX_ID_LEN + 1)).is_err());
    }

    #[test]
    fn serde_validates_on_the_way_in() {
        let id: VmId = serde_json::from_str("\"vm-1\"").unwrap();
        assert_eq!(id.as_str(), "vm-1");
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"vm-1\"");
        assert!(serde_json::from_str::<VmId>("\"../etc\"").is_err());
        assert!(serde_json::from_str::<SnapshotId>("\"\"").is_err());
    }
}
