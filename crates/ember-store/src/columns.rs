//! Column codecs: how Rust values become SQLite values and back (times, paths, sizes, stack keys).
//!
//! Every conversion that can fail on the way in returns [`StoreError::InvalidField`] naming the
//! field; every conversion that can fail on the way out (a row edited by hand) returns a
//! [`Decode`] problem that the record modules turn into [`StoreError::CorruptRecord`]. This module
//! knows nothing about tables.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ember_core::StackKey;

use crate::error::StoreError;

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

/// A path as stored text: non-empty, UTF-8, no NUL.
pub(crate) fn path_text<'a>(field: &str, path: &'a Path) -> Result<&'a str, StoreError> {
    let text = path.to_str().ok_or_else(|| {
        StoreError::invalid(
            field,
            format!(
                "{} is not valid UTF-8; the store keeps paths as UTF-8 text",
                path.display()
            ),
        )
    })?;
    if text.is_empty() {
        return Err(StoreError::invalid(field, "path must not be empty"));
    }
    if text.contains('\0') {
        return Err(StoreError::invalid(
            field,
            "path must not contain NUL bytes",
        ));
    }
    Ok(text)
}

/// An optional path as stored text.
pub(crate) fn opt_path_text<'a>(
    field: &str,
    path: Option<&'a Path>,
) -> Result<Option<&'a str>, StoreError> {
    path.map(|p| path_text(field, p)).transpose()
}

/// A `u64` as an SQLite integer (which is signed); larger values are rejected.
pub(crate) fn u64_to_sql(field: &str, value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| {
        StoreError::invalid(
            field,
            format!("{value} is larger than {} and cannot be stored", i64::MAX),
        )
    })
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

/// The four columns a [`StackKey`] is stored in: name, version, vCPUs, memory MiB.
pub(crate) type StackColumns = (Option<String>, Option<String>, Option<i64>, Option<i64>);

/// A stack key as its four (all-or-none) columns.
pub(crate) fn stack_columns(stack: Option<&StackKey>) -> StackColumns {
    match stack {
        Some(k) => (
            Some(k.name().to_string()),
            Some(k.version().to_string()),
            Some(i64::from(k.vcpu_count())),
            Some(i64::from(k.mem_size_mib())),
        ),
        None => (None, None, None, None),
    }
}

/// Four stored columns back into an optional stack key, validated again.
pub(crate) fn columns_stack(cols: StackColumns) -> Result<Option<StackKey>, Decode> {
    match cols {
        (None, None, None, None) => Ok(None),
        (Some(name), Some(version), Some(vcpus), Some(mem)) => {
            let vcpus: u8 = sql_to_uint("stack_vcpus", vcpus)?;
            let mem: u32 = sql_to_uint("stack_mem_mib", mem)?;
            StackKey::new(name, version, vcpus, mem)
                .map(Some)
                .map_err(|e| Decode::new("stack", e))
        }
        _ => Err(Decode::new(
            "stack",
            "only some of the four stack columns are set",
        )),
    }
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
    }

    #[test]
    fn paths_must_be_utf8_and_non_empty() {
        use std::os::unix::ffi::OsStrExt;
        assert_eq!(path_text("p", Path::new("/a/b")).unwrap(), "/a/b");
        assert!(path_text("p", Path::new("")).is_err());
        let bad = Path::new(std::ffi::OsStr::from_bytes(b"/a/\xff"));
        let err = path_text("machine.kernel", bad).unwrap_err().to_string();
        assert!(
            err.contains("machine.kernel") && err.contains("UTF-8"),
            "{err}"
        );
    }

    #[test]
    fn stack_columns_round_trip_and_reject_partial() {
        let k = StackKey::new("alpha", "1.0", 2, 256).unwrap();
        assert_eq!(columns_stack(stack_columns(Some(&k))).unwrap(), Some(k));
        assert_eq!(columns_stack(stack_columns(None)).unwrap(), None);
        assert!(columns_stack((Some("a".into()), None, None, None)).is_err());
        assert!(columns_stack((Some("a".into()), Some("1".into()), Some(300), Some(128))).is_err());
    }

    #[test]
    fn big_u64_is_rejected() {
        assert!(u64_to_sql("s", u64::MAX).is_err());
        assert_eq!(u64_to_sql("s", 7).unwrap(), 7);
        assert!(sql_to_uint::<u32>("c", -1).is_err());
    }
}
