//! Column codecs shared by the row modules: times as milliseconds since the epoch, and the
//! [`Decode`] problem a stored value that does not read back becomes.
//!
//! This module knows nothing about tables.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A stored value that does not decode: which column, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Decode {
    /// The column.
    pub column: &'static str,
    /// What is wrong.
    pub reason: String,
}

impl Decode {
    /// A decode problem in `column`.
    pub fn new(column: &'static str, reason: impl ToString) -> Self {
        Self {
            column,
            reason: reason.to_string(),
        }
    }
}

/// Milliseconds since the Unix epoch (0 for earlier times, saturating far in the future).
pub(crate) fn time_to_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The inverse of [`time_to_ms`].
pub(crate) fn ms_to_time(column: &'static str, ms: i64) -> Result<SystemTime, Decode> {
    let ms = u64::try_from(ms).map_err(|_| Decode::new(column, format!("{ms} is negative")))?;
    UNIX_EPOCH
        .checked_add(Duration::from_millis(ms))
        .ok_or_else(|| Decode::new(column, format!("{ms} ms is out of range")))
}

/// The current time truncated to what the store keeps (milliseconds).
pub(crate) fn now_ms() -> i64 {
    time_to_ms(SystemTime::now())
}

/// An SQLite integer into an unsigned Rust integer of any width.
pub(crate) fn sql_to_uint<T: TryFrom<i64>>(column: &'static str, value: i64) -> Result<T, Decode> {
    T::try_from(value).map_err(|_| {
        Decode::new(
            column,
            format!("{value} is out of range for {}", std::any::type_name::<T>()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_round_trips_at_millisecond_precision() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(ms_to_time("t", time_to_ms(t)).unwrap(), t);
        assert_eq!(time_to_ms(UNIX_EPOCH - Duration::from_secs(1)), 0);
        assert!(ms_to_time("t", -1).is_err());
        assert!(sql_to_uint::<u32>("c", -1).is_err());
        assert_eq!(sql_to_uint::<u64>("c", 7).unwrap(), 7);
    }
}
