//! `PUT /drives/{id}`, `PUT /network-interfaces/{id}`, `PUT /vsock`, `PUT /entropy`: device
//! configuration, validated here (shapes and numbers; the controller also opens the backing
//! file or TAP once, so a missing resource fails the request).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{ConfigError, validate_id};

/// A token bucket (Firecracker's shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucketConfig {
    /// Capacity in tokens.
    pub size: u64,
    /// Initial extra burst.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_time_burst: Option<u64>,
    /// Milliseconds to refill `size` tokens.
    pub refill_time: u64,
}

/// Bandwidth and operation limits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimiterConfig {
    /// Bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<TokenBucketConfig>,
    /// Operations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<TokenBucketConfig>,
}

impl RateLimiterConfig {
    /// Checks the buckets' numbers (`field` names the limiter in errors). A bucket with
    /// `size` or `refill_time` 0 is valid and disables that limit, as in Firecracker.
    pub fn validate(&self, field: &str) -> Result<(), ConfigError> {
        for (name, bucket) in [("bandwidth", &self.bandwidth), ("ops", &self.ops)] {
            if let Some(b) = bucket
                && b.refill_time.checked_mul(1_000_000).is_none()
            {
                return Err(ConfigError::new(
                    format!("{field}.{name}.refill_time"),
                    format!(
                        "{} ms is too large (at most {} ms)",
                        b.refill_time,
                        u64::MAX / 1_000_000
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// `PUT /entropy`: the virtio-rng device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntropyConfig {
    /// Rate limits on the entropy handed out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiterConfig>,
}

impl EntropyConfig {
    /// Validates the rate limiter.
    pub fn validate(&self, field: &str) -> Result<(), ConfigError> {
        match &self.rate_limiter {
            Some(r) => r.validate(&join(field, "rate_limiter")),
            None => Ok(()),
        }
    }
}

fn join(field: &str, name: &str) -> String {
    if field.is_empty() {
        name.to_string()
    } else {
        format!("{field}.{name}")
    }
}

/// Block device cache mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CacheType {
    /// Flushes are ignored.
    Unsafe,
    /// Flushes reach the host file.
    Writeback,
}

/// Block I/O engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IoEngine {
    /// Synchronous I/O.
    Sync,
    /// io_uring (not supported).
    Async,
}

/// A block device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveConfig {
    /// Identifier (matches the URL).
    pub drive_id: String,
    /// Host file backing the drive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_on_host: Option<String>,
    /// Whether the guest boots from it.
    pub is_root_device: bool,
    /// Read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_read_only: Option<bool>,
    /// Partition UUID of the root partition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partuuid: Option<String>,
    /// Cache mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_type: Option<CacheType>,
    /// Rate limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiterConfig>,
    /// I/O engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_engine: Option<IoEngine>,
    /// vhost-user socket (not supported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
}

impl DriveConfig {
    /// Validates the drive; `url_id` is the id in the request path, if any.
    pub fn validate(&self, field: &str, url_id: Option<&str>) -> Result<(), ConfigError> {
        let f = |name: &str| join(field, name);
        validate_id(&f("drive_id"), &self.drive_id)?;
        if let Some(id) = url_id
            && id != self.drive_id
        {
            return Err(ConfigError::new(
                f("drive_id"),
                format!("{:?} does not match the path's id {id:?}", self.drive_id),
            ));
        }
        if self.socket.is_some() {
            return Err(ConfigError::new(
                f("socket"),
                "vhost-user block devices are not supported",
            ));
        }
        if self.io_engine == Some(IoEngine::Async) {
            return Err(ConfigError::new(
                f("io_engine"),
                "only \"Sync\" is supported",
            ));
        }
        let Some(path) = &self.path_on_host else {
            return Err(ConfigError::new(
                f("path_on_host"),
                "missing field `path_on_host`",
            ));
        };
        if !Path::new(path).exists() {
            return Err(ConfigError::new(
                f("path_on_host"),
                format!("{path}: no such file"),
            ));
        }
        if let Some(r) = &self.rate_limiter {
            r.validate(&f("rate_limiter"))?;
        }
        Ok(())
    }
}

/// A network interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterfaceConfig {
    /// Identifier (matches the URL).
    pub iface_id: String,
    /// Host TAP device name.
    pub host_dev_name: String,
    /// Guest MAC address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
    /// MTU advertised to the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    /// Receive limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    /// Transmit limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiterConfig>,
}

/// Checks a TAP device name.
pub fn validate_host_dev_name(field: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty()
        || name.len() > 15
        || name.contains('/')
        || name.contains(char::is_whitespace)
    {
        return Err(ConfigError::new(
            field,
            format!("invalid host device name {name:?}"),
        ));
    }
    Ok(())
}

impl NetworkInterfaceConfig {
    /// Validates the interface; `url_id` is the id in the request path, if any.
    pub fn validate(&self, field: &str, url_id: Option<&str>) -> Result<(), ConfigError> {
        let f = |name: &str| join(field, name);
        validate_id(&f("iface_id"), &self.iface_id)?;
        if let Some(id) = url_id
            && id != self.iface_id
        {
            return Err(ConfigError::new(
                f("iface_id"),
                format!("{:?} does not match the path's id {id:?}", self.iface_id),
            ));
        }
        validate_host_dev_name(&f("host_dev_name"), &self.host_dev_name)?;
        if let Some(mac) = &self.guest_mac {
            let parts: Vec<&str> = mac.split(':').collect();
            if parts.len() != 6
                || parts
                    .iter()
                    .any(|p| p.len() != 2 || u8::from_str_radix(p, 16).is_err())
            {
                return Err(ConfigError::new(
                    f("guest_mac"),
                    format!("invalid MAC address {mac:?}"),
                ));
            }
        }
        if let Some(mtu) = self.mtu
            && mtu < 68
        {
            return Err(ConfigError::new(f("mtu"), "must be between 68 and 65535"));
        }
        for (name, r) in [
            ("rx_rate_limiter", &self.rx_rate_limiter),
            ("tx_rate_limiter", &self.tx_rate_limiter),
        ] {
            if let Some(r) = r {
                r.validate(&f(name))?;
            }
        }
        Ok(())
    }
}

/// The vsock device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// Guest context id (>= 3).
    pub guest_cid: u32,
    /// Host Unix socket for the hybrid vsock.
    pub uds_path: String,
    /// Deprecated id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_id: Option<String>,
}

impl VsockConfig {
    /// Checks the CID and path.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.guest_cid < 3 {
            return Err(ConfigError::new(
                "guest_cid",
                format!("must be at least 3 (got {})", self.guest_cid),
            ));
        }
        if self.uds_path.is_empty() {
            return Err(ConfigError::new("uds_path", "must not be empty"));
        }
        if self.uds_path.len() > 107 {
            return Err(ConfigError::new(
                "uds_path",
                "longer than a Unix socket path can be (107 bytes)",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::from_json;

    #[test]
    fn net_and_vsock_validation() {
        let n: NetworkInterfaceConfig = from_json(
            br#"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:10:00:02"}"#,
            "n",
        )
        .unwrap();
        n.validate("", Some("eth0")).unwrap();
        assert_eq!(n.validate("", Some("eth1")).unwrap_err().field, "iface_id");
        let bad: NetworkInterfaceConfig = from_json(
            br#"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "zz"}"#,
            "n",
        )
        .unwrap();
        assert_eq!(bad.validate("", None).unwrap_err().field, "guest_mac");
        let v: VsockConfig =
            from_json(br#"{"guest_cid": 2, "uds_path": "/tmp/v.sock"}"#, "vsock").unwrap();
        assert_eq!(v.validate().unwrap_err().field, "guest_cid");
        let err = from_json::<DriveConfig>(br#"{"drive_id": "root"}"#, "drive").unwrap_err();
        assert!(err.message.contains("is_root_device"), "{err}");
        let d: DriveConfig = from_json(
            br#"{"drive_id": "root", "is_root_device": true, "path_on_host": "/nonexistent"}"#,
            "d",
        )
        .unwrap();
        assert_eq!(
            d.validate("", Some("root")).unwrap_err().field,
            "path_on_host"
        );
    }

    #[test]
    fn rate_limiter_and_entropy_validation() {
        let n: NetworkInterfaceConfig = from_json(
            br#"{"iface_id": "eth0", "host_dev_name": "tap0",
                 "tx_rate_limiter": {"ops": {"size": 1, "refill_time": 18446744073709552}}}"#,
            "n",
        )
        .unwrap();
        let err = n.validate("", None).unwrap_err();
        assert_eq!(err.field, "tx_rate_limiter.ops.refill_time", "{err}");
        let err = from_json::<DriveConfig>(
            br#"{"drive_id": "d", "is_root_device": false, "path_on_host": "/dev/null",
                 "rate_limiter": {"bandwidth": {"size": -1, "refill_time": 100}}}"#,
            "drive",
        )
        .unwrap_err();
        assert!(
            err.field.starts_with("drive.rate_limiter.bandwidth"),
            "{err}"
        );
        let err = from_json::<EntropyConfig>(
            br#"{"rate_limiter": {"bandwidth": {"size": 10}}}"#,
            "entropy",
        )
        .unwrap_err();
        assert!(err.message.contains("refill_time"), "{err}");
        let e: EntropyConfig = from_json(
            br#"{"rate_limiter": {"ops": {"size": 0, "refill_time": 0}}}"#,
            "entropy",
        )
        .unwrap();
        e.validate("").unwrap();
        let e: EntropyConfig = from_json(b"{}", "entropy").unwrap();
        assert_eq!(e, EntropyConfig::default());
    }
}
