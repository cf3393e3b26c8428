//! [`MachineName`]: the validated key of a machine record.
//!
//! A machine's name is what an operator types and what may become a host name, a directory name or
//! part of a log line, so it is held to a conservative rule, checked once here: 1 to
//! [`MAX_MACHINE_NAME_LEN`] ASCII letters, digits, `-`, `_` or `.`, starting with a letter or digit.
//! This module owns that rule and nothing else.

use std::borrow::Borrow;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest machine name accepted, in bytes (a DNS label's limit, so a name can be a host name).
pub const MAX_MACHINE_NAME_LEN: usize = 63;

/// What the rule allows, quoted in every [`NameError`].
pub const MACHINE_NAME_RULE: &str = "a machine name is 1 to 63 ASCII letters, digits, '-', '_' or '.', starting with a letter or digit";

/// A name that broke the rule, with the reason and the rule itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid machine name {value:?}: {reason}; {MACHINE_NAME_RULE}")]
pub struct NameError {
    /// The rejected name.
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
}

/// The validated name of a machine record.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MachineName(String);

impl MachineName {
    /// Checks `value` against the rule and wraps it.
    pub fn new(value: impl Into<String>) -> Result<Self, NameError> {
        let value = value.into();
        match problem(&value) {
            Some(reason) => Err(NameError { value, reason }),
            None => Ok(Self(value)),
        }
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why `value` breaks the rule, or `None` if it follows it.
fn problem(value: &str) -> Option<String> {
    let Some(first) = value.chars().next() else {
        return Some("it must not be empty".to_string());
    };
    if value.len() > MAX_MACHINE_NAME_LEN {
        return Some(format!(
            "it is {} bytes long, at most {MAX_MACHINE_NAME_LEN} are allowed",
            value.len()
        ));
    }
    if !first.is_ascii_alphanumeric() {
        return Some(format!("it starts with {first:?}"));
    }
    value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        .map(|c| format!("it contains {c:?}"))
}

impl TryFrom<String> for MachineName {
    type Error = NameError;
    fn try_from(value: String) -> Result<Self, NameError> {
        Self::new(value)
    }
}

impl TryFrom<&str> for MachineName {
    type Error = NameError;
    fn try_from(value: &str) -> Result<Self, NameError> {
        Self::new(value)
    }
}

impl std::str::FromStr for MachineName {
    type Err = NameError;
    fn from_str(value: &str) -> Result<Self, NameError> {
        Self::new(value)
    }
}

impl From<MachineName> for String {
    fn from(name: MachineName) -> String {
        name.0
    }
}

impl AsRef<str> for MachineName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for MachineName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MachineName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_conservative_names() {
        for ok in [
            "a",
            "web-1",
            "db_2.prod",
            "0x",
            &"n".repeat(MAX_MACHINE_NAME_LEN),
        ] {
            assert_eq!(MachineName::new(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn rejects_with_reason_and_rule() {
        let cases = [
            ("", "must not be empty"),
            ("-x", "starts with '-'"),
            (".hidden", "starts with '.'"),
            ("a/b", "contains '/'"),
            ("a b", "contains ' '"),
            ("caf\u{e9}", "contains '\u{e9}'"),
            ("a\0", "contains '\\0'"),
        ];
        for (bad, why) in cases {
            let text = MachineName::new(bad).unwrap_err().to_string();
            assert!(text.contains(why), "{text:?} should say {why:?}");
            assert!(text.contains(MACHINE_NAME_RULE), "{text}");
        }
        let long = MachineName::new("x".repeat(MAX_MACHINE_NAME_LEN + 1)).unwrap_err();
        assert!(long.to_string().contains("64 bytes long"), "{long}");
    }

    #[test]
    fn serde_validates() {
        let n: MachineName = serde_json::from_str("\"vm-1\"").unwrap();
        assert_eq!(n.as_str(), "vm-1");
        assert!(serde_json::from_str::<MachineName>("\"../x\"").is_err());
    }
}
