//! The error every API-level check returns — [`FieldError`], naming the JSON field — and the
//! checks several bodies share: resource ids (`drive_id`, `iface_id`, also URL segments) and
//! host network device names. Nothing here looks at the host.

/// A field of a request body is invalid; `Display` is `"{field}: {message}"`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// The field, as a JSON path (`drives[0].rate_limiter.ops.refill_time`).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    /// A new error about `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// `name` inside `prefix` (`"drive"` + `"rate_limiter"` = `"drive.rate_limiter"`); an empty
/// prefix gives `name` alone.
pub fn field_path(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// Checks a resource id (`drive_id`, `iface_id`): 1 to 64 characters from `[A-Za-z0-9_-]`, so
/// it is also a safe URL path segment.
pub fn validate_id(field: &str, id: &str) -> Result<(), FieldError> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(FieldError::new(
            field,
            format!("invalid id {id:?}: use 1 to 64 characters from [A-Za-z0-9_-]"),
        ));
    }
    Ok(())
}

/// Checks a host network device name (`host_dev_name`): what Linux accepts as an interface
/// name (1 to 15 bytes, no `/`, no whitespace).
pub fn validate_host_dev_name(field: &str, name: &str) -> Result<(), FieldError> {
    if name.is_empty()
        || name.len() > 15
        || name.contains('/')
        || name.contains(char::is_whitespace)
    {
        return Err(FieldError::new(
            field,
            format!("invalid host device name {name:?}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_device_names() {
        validate_id("drive_id", "root_fs-1").unwrap();
        for bad in ["", "a/b", "a b", &"x".repeat(65)] {
            assert_eq!(validate_id("drive_id", bad).unwrap_err().field, "drive_id");
        }
        validate_host_dev_name("host_dev_name", "tap0").unwrap();
        for bad in ["", "a/b", "tap 0", "sixteen-chars-xx"] {
            assert!(validate_host_dev_name("h", bad).is_err(), "{bad:?}");
        }
        assert_eq!(field_path("", "x"), "x");
        assert_eq!(field_path("a", "x"), "a.x");
        assert_eq!(FieldError::new("f", "bad").to_string(), "f: bad");
    }
}
