//! What a sandbox listing asks for ([`SandboxFilter`]) and gets ([`Page`]), and the opaque
//! [`Cursor`] that continues a listing where the last page ended.

use std::fmt;
use std::str::FromStr;

use ember_core::{SandboxState, TemplateName};

use crate::error::StoreError;

/// Most sandboxes one page holds.
pub const MAX_PAGE: usize = 1000;

/// Where a listing continues: after the sandbox created at `created_ms` with id `id`
/// (listings are ordered by creation time, then id). Written `<created_ms>.<id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// Creation time of the last sandbox of the previous page, ms since the epoch.
    pub created_ms: i64,
    /// Its id.
    pub id: String,
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.created_ms, self.id)
    }
}

impl FromStr for Cursor {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, StoreError> {
        let bad = || {
            StoreError::invalid(
                "cursor",
                format!("{s:?} is not a cursor this server handed out"),
            )
        };
        let (ms, id) = s.split_once('.').ok_or_else(bad)?;
        let created_ms: i64 = ms.parse().map_err(|_| bad())?;
        ember_core::id::validate_id("cursor", id).map_err(|_| bad())?;
        Ok(Cursor {
            created_ms,
            id: id.to_string(),
        })
    }
}

/// Which sandboxes a listing wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxFilter {
    /// Only these states (empty: all).
    pub states: Vec<SandboxState>,
    /// Only sandboxes of this template.
    pub template: Option<TemplateName>,
    /// Only sandboxes carrying every one of these labels with these values.
    pub labels: Vec<(String, String)>,
    /// At most this many (1 to [`MAX_PAGE`]).
    pub limit: usize,
    /// Continue after this cursor.
    pub after: Option<Cursor>,
}

impl Default for SandboxFilter {
    fn default() -> Self {
        Self {
            states: Vec::new(),
            template: None,
            labels: Vec::new(),
            limit: 100,
            after: None,
        }
    }
}

impl SandboxFilter {
    /// Checks the limit and the label keys.
    pub fn validate(&self) -> Result<(), StoreError> {
        if self.limit == 0 || self.limit > MAX_PAGE {
            return Err(StoreError::invalid(
                "limit",
                format!(
                    "{} is out of range; 1 to {MAX_PAGE} are allowed",
                    self.limit
                ),
            ));
        }
        for (k, _) in &self.labels {
            ember_core::sandbox::validate_label_key(k).map_err(crate::record::from_vm_error)?;
        }
        Ok(())
    }
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    /// The items, oldest first.
    pub items: Vec<T>,
    /// Where the next page starts, if there is one.
    pub next: Option<Cursor>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let c = Cursor {
            created_ms: 1_700_000_000_000,
            id: "sb-1.x".into(),
        };
        assert_eq!(c.to_string().parse::<Cursor>().unwrap(), c);
        for bad in ["", "x", "12", "a.b", "12./etc"] {
            let err = bad.parse::<Cursor>().unwrap_err().to_string();
            assert!(err.contains("cursor"), "{bad}: {err}");
        }
    }
}
