//! `PUT /drives/{drive_id}` ([`Drive`]) and `PATCH /drives/{drive_id}` ([`PartialDrive`]):
//! block devices.
//!
//! API-level checks: the id (and that it matches the URL's), a `path_on_host` for a
//! virtio-block drive (one without a vhost-user `socket`), the rate limiter's numbers. Whether
//! the file can be opened, and which cache types, I/O engines or vhost-user a VMM supports,
//! is the VMM's to check.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::field::{FieldError, field_path, validate_id};
use crate::rate_limiter::{RateLimiter, validate_optional};

/// `Drive.cache_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CacheType {
    /// Flushes are ignored (the default).
    Unsafe,
    /// Flushes reach the host file.
    Writeback,
}

/// `Drive.io_engine`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IoEngine {
    /// Synchronous I/O (the default).
    Sync,
    /// io_uring.
    Async,
}

/// `PUT /drives/{drive_id}` — `Drive`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drive {
    /// Device id (also in the URL).
    pub drive_id: String,
    /// Backing file on the host (required for virtio-block).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_on_host: Option<PathBuf>,
    /// Whether the guest boots from it.
    pub is_root_device: bool,
    /// Attach read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_read_only: Option<bool>,
    /// Partition UUID of the root partition (used only with `is_root_device`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partuuid: Option<String>,
    /// Cache mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_type: Option<CacheType>,
    /// I/O limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
    /// I/O engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_engine: Option<IoEngine>,
    /// vhost-user-block backend socket (instead of `path_on_host`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
}

impl Drive {
    /// A virtio-block drive backed by `path_on_host`, every optional field unset.
    pub fn new(drive_id: impl Into<String>, path_on_host: PathBuf, is_root_device: bool) -> Self {
        Drive {
            drive_id: drive_id.into(),
            path_on_host: Some(path_on_host),
            is_root_device,
            is_read_only: None,
            partuuid: None,
            cache_type: None,
            rate_limiter: None,
            io_engine: None,
            socket: None,
        }
    }

    /// API-level checks; `field` prefixes the field names in errors (`""` for a request
    /// body), `url_id` is the id in the request path, if any.
    pub fn validate(&self, field: &str, url_id: Option<&str>) -> Result<(), FieldError> {
        let f = |name: &str| field_path(field, name);
        validate_id(&f("drive_id"), &self.drive_id)?;
        if let Some(id) = url_id
            && id != self.drive_id
        {
            return Err(FieldError::new(
                f("drive_id"),
                format!("{:?} does not match the path's id {id:?}", self.drive_id),
            ));
        }
        if self.path_on_host.is_none() && self.socket.is_none() {
            return Err(FieldError::new(
                f("path_on_host"),
                "missing field `path_on_host`",
            ));
        }
        validate_optional(self.rate_limiter.as_ref(), &f("rate_limiter"))
    }
}

/// `PATCH /drives/{drive_id}` — `PartialDrive` (post-boot: a new backing file or limits).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialDrive {
    /// Device id (also in the URL).
    pub drive_id: String,
    /// New backing file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_on_host: Option<PathBuf>,
    /// New limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
}

impl PartialDrive {
    /// API-level checks: the id and the rate limiter's numbers.
    pub fn validate(&self) -> Result<(), FieldError> {
        validate_id("drive_id", &self.drive_id)?;
        validate_optional(self.rate_limiter.as_ref(), "rate_limiter")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn shape_and_checks() {
        let mut d = Drive::new("rootfs", "/r.ext4".into(), true);
        d.is_read_only = Some(true);
        assert_eq!(
            serde_json::to_value(&d).unwrap(),
            json!({"drive_id": "rootfs", "path_on_host": "/r.ext4", "is_root_device": true,
                   "is_read_only": true})
        );
        d.validate("", Some("rootfs")).unwrap();
        let err = d.validate("", Some("other")).unwrap_err();
        assert_eq!(err.field, "drive_id");
        assert!(err.message.contains("does not match"), "{err}");
        let no_path = Drive {
            path_on_host: None,
            ..d.clone()
        };
        assert_eq!(
            no_path.validate("drives[0]", None).unwrap_err().field,
            "drives[0].path_on_host"
        );
        let vhost = Drive {
            socket: Some("/vhost.sock".into()),
            ..no_path
        };
        vhost.validate("", None).unwrap();
        let err = serde_json::from_value::<Drive>(json!({"drive_id": "root"})).unwrap_err();
        assert!(err.to_string().contains("is_root_device"), "{err}");
        let p = PartialDrive {
            drive_id: "bad id".into(),
            path_on_host: None,
            rate_limiter: None,
        };
        assert_eq!(p.validate().unwrap_err().field, "drive_id");
    }
}
