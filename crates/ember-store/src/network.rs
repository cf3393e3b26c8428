//! Network configuration and what one owner (a sandbox) is given: [`NetworkConfig`] (the ranges the allocator
//! draws from) and [`NetworkAllocation`] (TAP name, IPv4, MAC, vsock CID).
//!
//! Pure values and their validation only; choosing free values inside a transaction is
//! the private `alloc` module's job.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use ember_core::MacAddr;
use ember_core::spec::{MAX_IFNAME_LEN, MIN_GUEST_CID};
use serde::{Deserialize, Serialize};

use crate::error::StoreError;

/// An IPv4 network in CIDR form (`10.0.0.0/24`), host bits zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Ipv4Subnet {
    network: Ipv4Addr,
    prefix_len: u8,
}

/// Shortest prefix accepted (a /8 is already 16 million addresses).
pub const MIN_PREFIX_LEN: u8 = 8;
/// Longest prefix accepted: a /30 holds two hosts, the gateway and one guest.
pub const MAX_PREFIX_LEN: u8 = 30;

impl Ipv4Subnet {
    /// Builds a subnet; the prefix must be [`MIN_PREFIX_LEN`]..=[`MAX_PREFIX_LEN`] and the host bits
    /// of `network` zero.
    pub fn new(network: Ipv4Addr, prefix_len: u8) -> Result<Self, StoreError> {
        if !(MIN_PREFIX_LEN..=MAX_PREFIX_LEN).contains(&prefix_len) {
            return Err(StoreError::invalid(
                "network.subnet",
                format!(
                    "/{prefix_len} is out of range; /{MIN_PREFIX_LEN} to /{MAX_PREFIX_LEN} are allowed"
                ),
            ));
        }
        let subnet = Self {
            network,
            prefix_len,
        };
        if u32::from(network) & !subnet.mask() != 0 {
            return Err(StoreError::invalid(
                "network.subnet",
                format!(
                    "{network}/{prefix_len} has host bits set; did you mean {}/{prefix_len}?",
                    Ipv4Addr::from(u32::from(network) & subnet.mask())
                ),
            ));
        }
        Ok(subnet)
    }

    /// The network address.
    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// The netmask as a number.
    fn mask(&self) -> u32 {
        u32::MAX << (32 - u32::from(self.prefix_len))
    }

    /// The broadcast address.
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !self.mask())
    }

    /// Whether `ip` is inside the subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network)
    }

    /// The first and last host addresses (the network and broadcast addresses excluded).
    pub fn host_range(&self) -> (Ipv4Addr, Ipv4Addr) {
        (
            Ipv4Addr::from(u32::from(self.network) + 1),
            Ipv4Addr::from(u32::from(self.broadcast()) - 1),
        )
    }
}

impl fmt::Display for Ipv4Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

impl FromStr for Ipv4Subnet {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, StoreError> {
        let bad = || {
            StoreError::invalid(
                "network.subnet",
                format!("{s:?} is not an IPv4 network like 10.0.0.0/24"),
            )
        };
        let (ip, len) = s.split_once('/').ok_or_else(bad)?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        let len: u8 = len.parse().map_err(|_| bad())?;
        Self::new(ip, len)
    }
}

impl TryFrom<String> for Ipv4Subnet {
    type Error = StoreError;
    fn try_from(s: String) -> Result<Self, StoreError> {
        s.parse()
    }
}

impl From<Ipv4Subnet> for String {
    fn from(s: Ipv4Subnet) -> String {
        s.to_string()
    }
}

/// The ranges the allocator hands values out of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkConfig {
    /// Guest addresses come from this subnet, skipping its network, broadcast and gateway addresses.
    pub subnet: Ipv4Subnet,
    /// The host side's address; never handed to a guest. Must be a host address of `subnet`.
    pub gateway: Ipv4Addr,
    /// First vsock CID handed out (at least 3; 0-2 are reserved).
    pub first_cid: u32,
    /// Last vsock CID handed out (below `u32::MAX`, which means "any").
    pub last_cid: u32,
    /// TAP names are this prefix followed by a decimal index.
    pub tap_prefix: String,
    /// Highest TAP index; `tap_prefix` plus its digits must fit in 15 bytes (IFNAMSIZ - 1).
    pub last_tap_index: u32,
}

impl Default for NetworkConfig {
    /// `172.30.0.0/16` with gateway `172.30.0.1`, CIDs 3..=65537, TAPs `embtap0`..`embtap65535`.
    fn default() -> Self {
        Self {
            subnet: Ipv4Subnet {
                network: Ipv4Addr::new(172, 30, 0, 0),
                prefix_len: 16,
            },
            gateway: Ipv4Addr::new(172, 30, 0, 1),
            first_cid: MIN_GUEST_CID,
            last_cid: MIN_GUEST_CID + 65534,
            tap_prefix: "embtap".to_string(),
            last_tap_index: 65535,
        }
    }
}

impl NetworkConfig {
    /// Checks every range, naming the field at fault.
    pub fn validate(&self) -> Result<(), StoreError> {
        let (first, last) = self.subnet.host_range();
        if !(first..=last).contains(&self.gateway) {
            return Err(StoreError::invalid(
                "network.gateway",
                format!(
                    "{} is not a host address of {} ({first} to {last})",
                    self.gateway, self.subnet
                ),
            ));
        }
        if self.first_cid < MIN_GUEST_CID
            || self.last_cid == u32::MAX
            || self.first_cid > self.last_cid
        {
            return Err(StoreError::invalid(
                "network.vsock_cids",
                format!(
                    "{}..={} is not a valid range; CIDs {MIN_GUEST_CID} to {} are allowed, first <= last",
                    self.first_cid,
                    self.last_cid,
                    u32::MAX - 1
                ),
            ));
        }
        ember_core::spec::validate_ifname("network.tap_prefix", &self.tap_prefix)
            .map_err(|e| StoreError::invalid("network.tap_prefix", e.to_string()))?;
        let longest = self.tap_name(self.last_tap_index);
        if longest.len() > MAX_IFNAME_LEN {
            return Err(StoreError::invalid(
                "network.tap_prefix",
                format!(
                    "{longest:?} (prefix {:?} plus index {}) is longer than {MAX_IFNAME_LEN} bytes; shorten the prefix or lower last_tap_index",
                    self.tap_prefix, self.last_tap_index
                ),
            ));
        }
        Ok(())
    }

    /// The TAP name for `index`.
    pub fn tap_name(&self, index: u32) -> String {
        format!("{}{index}", self.tap_prefix)
    }

    /// The IPv4 range spelled out for errors.
    pub(crate) fn describe_ipv4(&self) -> String {
        let (first, last) = self.subnet.host_range();
        format!(
            "{} (hosts {first} to {last}, gateway {} reserved)",
            self.subnet, self.gateway
        )
    }

    /// The CID range spelled out for errors.
    pub(crate) fn describe_cids(&self) -> String {
        format!("vsock CIDs {} to {}", self.first_cid, self.last_cid)
    }

    /// The TAP range spelled out for errors.
    pub(crate) fn describe_taps(&self) -> String {
        format!(
            "TAP names {} to {}",
            self.tap_name(0),
            self.tap_name(self.last_tap_index)
        )
    }
}

/// The MAC a guest with address `ip` gets: `06:00:` followed by the four octets of the address.
///
/// `0x06` is a locally administered (bit 1 set), unicast (bit 0 clear) first octet, and the mapping
/// is one-to-one, so distinct addresses give distinct MACs.
pub fn mac_for_ip(ip: Ipv4Addr) -> MacAddr {
    let [a, b, c, d] = ip.octets();
    // 0x06 has the multicast bit clear, which is the only thing `from_bytes` rejects.
    MacAddr::from_bytes([0x06, 0x00, a, b, c, d])
        .unwrap_or_else(|_| unreachable!("0x06 is unicast"))
}

/// What one owner (a sandbox) was given: its TAP device, IPv4 address (with prefix and gateway so the guest
/// can be configured from the record alone), MAC and vsock CID.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NetworkAllocation {
    /// Host TAP device name (at most 15 bytes).
    pub tap: String,
    /// The guest's IPv4 address.
    pub ip: Ipv4Addr,
    /// The subnet's prefix length when the address was allocated.
    pub prefix_len: u8,
    /// The gateway when the address was allocated.
    pub gateway: Ipv4Addr,
    /// The guest's MAC address (locally administered unicast).
    pub mac: MacAddr,
    /// The guest's vsock context id.
    pub vsock_cid: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_parses_and_computes_ranges() {
        let s: Ipv4Subnet = "10.1.2.0/24".parse().unwrap();
        assert_eq!(s.broadcast(), Ipv4Addr::new(10, 1, 2, 255));
        assert_eq!(
            s.host_range(),
            (Ipv4Addr::new(10, 1, 2, 1), Ipv4Addr::new(10, 1, 2, 254))
        );
        assert!(s.contains(Ipv4Addr::new(10, 1, 2, 77)));
        assert!(!s.contains(Ipv4Addr::new(10, 1, 3, 0)));
        assert_eq!(s.to_string(), "10.1.2.0/24");
    }

    #[test]
    fn subnet_errors_say_what_is_allowed() {
        for (bad, want) in [
            ("10.1.2.3/24", "host bits"),
            ("10.1.2.0/31", "/8 to /30"),
            ("10.1.2.0", "like 10.0.0.0/24"),
            ("10.1.2.0/x", "like 10.0.0.0/24"),
        ] {
            let err = bad.parse::<Ipv4Subnet>().unwrap_err().to_string();
            assert!(err.contains(want), "{bad}: {err}");
        }
    }

    #[test]
    fn default_config_is_valid_and_checks_fields() {
        NetworkConfig::default().validate().unwrap();
        let c = NetworkConfig {
            gateway: Ipv4Addr::new(172, 30, 255, 255),
            ..NetworkConfig::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("network.gateway")
        );
        let c = NetworkConfig {
            first_cid: 2,
            ..NetworkConfig::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("network.vsock_cids")
        );
        let c = NetworkConfig {
            tap_prefix: "a-very-long-tap".into(),
            ..NetworkConfig::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("longer than 15")
        );
        let c = NetworkConfig {
            tap_prefix: "bad/name".into(),
            ..NetworkConfig::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("network.tap_prefix")
        );
    }

    #[test]
    fn mac_is_local_unicast_and_follows_the_ip() {
        let mac = mac_for_ip(Ipv4Addr::new(172, 16, 0, 2));
        assert_eq!(mac.to_string(), "06:00:ac:10:00:02");
        let first = mac.octets()[0];
        assert_eq!(first & 1, 0, "unicast");
        assert_eq!(first & 2, 2, "locally administered");
    }
}
