//! `PUT /network-interfaces/{iface_id}` ([`NetworkInterface`]) and
//! `PATCH /network-interfaces/{iface_id}` ([`PartialNetworkInterface`]).
//!
//! API-level checks: the id (and that it matches the URL's), the TAP device's name, the MAC
//! address's format, the MTU's range (68..=65535), the rate limiters' numbers. Whether the
//! TAP device exists is the VMM's to check.

use serde::{Deserialize, Serialize};

use crate::field::{FieldError, field_path, validate_host_dev_name, validate_id};
use crate::rate_limiter::{RateLimiter, validate_optional};

/// Smallest MTU the API accepts (IPv4's minimum).
pub const MIN_MTU: u16 = 68;

/// `PUT /network-interfaces/{iface_id}` — `NetworkInterface`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterface {
    /// Interface id (also in the URL).
    pub iface_id: String,
    /// Host TAP device.
    pub host_dev_name: String,
    /// Guest MAC, `aa:bb:cc:dd:ee:ff`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
    /// MTU advertised to the guest (`VIRTIO_NET_F_MTU`); the guest's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    /// Receive limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiter>,
    /// Transmit limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiter>,
}

impl NetworkInterface {
    /// API-level checks; `field` prefixes the field names in errors (`""` for a request
    /// body), `url_id` is the id in the request path, if any.
    pub fn validate(&self, field: &str, url_id: Option<&str>) -> Result<(), FieldError> {
        let f = |name: &str| field_path(field, name);
        validate_id(&f("iface_id"), &self.iface_id)?;
        if let Some(id) = url_id
            && id != self.iface_id
        {
            return Err(FieldError::new(
                f("iface_id"),
                format!("{:?} does not match the path's id {id:?}", self.iface_id),
            ));
        }
        validate_host_dev_name(&f("host_dev_name"), &self.host_dev_name)?;
        if let Some(mac) = &self.guest_mac
            && !is_mac(mac)
        {
            return Err(FieldError::new(
                f("guest_mac"),
                format!("invalid MAC address {mac:?}"),
            ));
        }
        if let Some(mtu) = self.mtu
            && mtu < MIN_MTU
        {
            return Err(FieldError::new(f("mtu"), "must be between 68 and 65535"));
        }
        validate_optional(self.rx_rate_limiter.as_ref(), &f("rx_rate_limiter"))?;
        validate_optional(self.tx_rate_limiter.as_ref(), &f("tx_rate_limiter"))
    }
}

/// Six two-digit hex groups separated by `:`.
fn is_mac(mac: &str) -> bool {
    let parts: Vec<&str> = mac.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && u8::from_str_radix(p, 16).is_ok())
}

/// `PATCH /network-interfaces/{iface_id}` — `PartialNetworkInterface` (post-boot: limits).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialNetworkInterface {
    /// Interface id (also in the URL).
    pub iface_id: String,
    /// New receive limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiter>,
    /// New transmit limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiter>,
}

impl PartialNetworkInterface {
    /// API-level checks: the id and the rate limiters' numbers.
    pub fn validate(&self) -> Result<(), FieldError> {
        validate_id("iface_id", &self.iface_id)?;
        validate_optional(self.rx_rate_limiter.as_ref(), "rx_rate_limiter")?;
        validate_optional(self.tx_rate_limiter.as_ref(), "tx_rate_limiter")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn iface(v: serde_json::Value) -> NetworkInterface {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn checks_name_the_field() {
        let n = iface(
            json!({"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:10:00:02"}),
        );
        n.validate("", Some("eth0")).unwrap();
        assert_eq!(n.validate("", Some("eth1")).unwrap_err().field, "iface_id");
        let bad = iface(json!({"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "zz"}));
        assert_eq!(bad.validate("", None).unwrap_err().field, "guest_mac");
        let mtu = iface(json!({"iface_id": "eth0", "host_dev_name": "tap0", "mtu": 67}));
        assert_eq!(
            mtu.validate("network-interfaces[1]", None)
                .unwrap_err()
                .field,
            "network-interfaces[1].mtu"
        );
        let rl = iface(json!({"iface_id": "eth0", "host_dev_name": "tap0",
            "tx_rate_limiter": {"ops": {"size": 1, "refill_time": 18446744073709552_u64}}}));
        assert_eq!(
            rl.validate("", None).unwrap_err().field,
            "tx_rate_limiter.ops.refill_time"
        );
        assert_eq!(
            serde_json::to_value(&n).unwrap(),
            json!({"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:10:00:02"})
        );
    }
}
