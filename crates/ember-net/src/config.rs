//! [`NetConfig`] (host-wide names and ranges), [`GuestAddressing`] (what every guest sees) and
//! [`SandboxNet`] (the pure plan of one sandbox's network).

use std::net::Ipv4Addr;
use std::path::PathBuf;

use ember_core::MacAddr;
use ember_core::spec::{MAX_IFNAME_LEN, validate_ifname};
use ember_store::{Ipv4Subnet, NetworkAllocation, NetworkConfig};

use crate::error::NetError;

/// Where `ip netns` keeps its namespace files; the jailer joins a sandbox's by path.
pub const NETNS_DIR: &str = "/run/netns";

/// Host-wide settings: which interface names and namespaces are ember's, and its nftables tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// The subnet sandbox addresses come from (masqueraded when leaving the host).
    pub subnet: Ipv4Subnet,
    /// Host veth names are this prefix and a decimal index (the store's `tap_prefix`); the
    /// nftables wildcard `"<prefix>*"` matches all of them.
    pub tap_prefix: String,
    /// Sandbox namespaces are named this followed by the host interface (`ember-embtap3`).
    pub netns_prefix: String,
    /// The host's filter table (family `inet`).
    pub host_table: String,
    /// The host's NAT table (family `ip`).
    pub nat_table: String,
    /// The table inside each sandbox namespace (family `ip`).
    pub sandbox_table: String,
}

impl Default for NetConfig {
    /// The store's defaults (`172.30.0.0/16`, `embtap<N>`), namespaces `ember-<host_if>`, tables
    /// `inet ember`, `ip ember_nat` and, in each sandbox, `ip ember`.
    fn default() -> Self {
        Self::from_store(&NetworkConfig::default())
    }
}

impl NetConfig {
    /// The settings matching the store's allocator configuration.
    pub fn from_store(store: &NetworkConfig) -> Self {
        Self {
            subnet: store.subnet,
            tap_prefix: store.tap_prefix.clone(),
            netns_prefix: "ember-".to_string(),
            host_table: "ember".to_string(),
            nat_table: "ember_nat".to_string(),
            sandbox_table: "ember".to_string(),
        }
    }

    /// Checks every name, naming the field at fault.
    pub fn validate(&self) -> Result<(), NetError> {
        let ifname = |field: &str, v: &str| {
            validate_ifname(field, v).map_err(|e| NetError::invalid(field, e.to_string()))
        };
        ifname("net.tap_prefix", &self.tap_prefix)?;
        ifname("net.netns_prefix", &self.netns_prefix)?;
        for (field, v) in [
            ("net.host_table", &self.host_table),
            ("net.nat_table", &self.nat_table),
            ("net.sandbox_table", &self.sandbox_table),
        ] {
            if v.is_empty()
                || v.len() > 32
                || !v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                || v.starts_with(|c: char| c.is_ascii_digit())
            {
                return Err(NetError::invalid(
                    field,
                    format!(
                        "{v:?} is not a table name: 1 to 32 ASCII letters, digits or '_', not starting with a digit"
                    ),
                ));
            }
        }
        if self.host_table == self.nat_table {
            return Err(NetError::invalid(
                "net.nat_table",
                "must differ from net.host_table",
            ));
        }
        Ok(())
    }

    /// The nftables pattern matching every host veth (`"embtap*"`).
    pub fn ifname_wildcard(&self) -> String {
        format!("{}*", self.tap_prefix)
    }

    /// Whether `name` is one of ember's host interface names: the prefix followed by digits only.
    pub fn is_host_if(&self, name: &str) -> bool {
        name.strip_prefix(&self.tap_prefix)
            .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()))
    }

    /// The namespace name for a host interface (`ember-embtap3`).
    pub fn netns_name(&self, host_if: &str) -> String {
        format!("{}{host_if}", self.netns_prefix)
    }

    /// The host interface a namespace belongs to, if `netns` is one of ember's names.
    pub fn host_if_of_netns<'a>(&self, netns: &'a str) -> Option<&'a str> {
        netns
            .strip_prefix(&self.netns_prefix)
            .filter(|h| self.is_host_if(h))
    }
}

/// What every guest (every clone of a template) sees, identical in each sandbox: the clones of one
/// snapshot all keep the address and MAC the template booted with, and the sandbox's namespace
/// translates it to the sandbox's unique address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestAddressing {
    /// The TAP device inside the namespace that the VMM attaches to.
    pub tap_name: String,
    /// The namespace's end of the veth.
    pub netns_if: String,
    /// The namespace-side address on the TAP (the guest's gateway).
    pub gateway: Ipv4Addr,
    /// The guest's address.
    pub guest_ip: Ipv4Addr,
    /// Prefix of the guest link (`/30`: gateway and guest).
    pub prefix_len: u8,
    /// The guest's MAC (installed as a permanent neighbour, so the first packet needs no ARP).
    pub guest_mac: MacAddr,
}

impl Default for GuestAddressing {
    /// `tap0`, `eth0`, gateway `172.16.0.1/30`, guest `172.16.0.2` with MAC `06:00:ac:10:00:02`.
    fn default() -> Self {
        Self {
            tap_name: "tap0".to_string(),
            netns_if: "eth0".to_string(),
            gateway: Ipv4Addr::new(172, 16, 0, 1),
            guest_ip: Ipv4Addr::new(172, 16, 0, 2),
            prefix_len: 30,
            guest_mac: ember_store::network::mac_for_ip(Ipv4Addr::new(172, 16, 0, 2)),
        }
    }
}

impl GuestAddressing {
    /// Checks the names and that the guest and gateway share the link's prefix.
    pub fn validate(&self) -> Result<(), NetError> {
        for (field, v) in [
            ("guest.tap_name", &self.tap_name),
            ("guest.netns_if", &self.netns_if),
        ] {
            validate_ifname(field, v).map_err(|e| NetError::invalid(field, e.to_string()))?;
        }
        if self.tap_name == self.netns_if {
            return Err(NetError::invalid(
                "guest.tap_name",
                "must differ from guest.netns_if",
            ));
        }
        let subnet = Ipv4Subnet::new(
            Ipv4Addr::from(u32::from(self.gateway) & mask(self.prefix_len)),
            self.prefix_len,
        )
        .map_err(|e| NetError::invalid("guest.prefix_len", e.to_string()))?;
        let (first, last) = subnet.host_range();
        for (field, ip) in [
            ("guest.gateway", self.gateway),
            ("guest.guest_ip", self.guest_ip),
        ] {
            if !(first..=last).contains(&ip) {
                return Err(NetError::invalid(
                    field,
                    format!("{ip} is not a host address of {subnet}"),
                ));
            }
        }
        if self.gateway == self.guest_ip {
            return Err(NetError::invalid(
                "guest.guest_ip",
                "must differ from guest.gateway",
            ));
        }
        Ok(())
    }
}

fn mask(prefix_len: u8) -> u32 {
    if prefix_len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix_len.min(32)))
    }
}

/// One sandbox's network, planned: names and addresses only, computed from its allocation without
/// touching the system. [`crate::HostNet::create`] makes it, [`crate::HostNet::destroy`] removes
/// it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxNet {
    /// The host end of the veth (the allocation's `tap`, e.g. `embtap3`); the sandbox's key in
    /// [`crate::HostNet::sweep`].
    pub host_if: String,
    /// The namespace's name (`ember-embtap3`).
    pub netns: String,
    /// The sandbox's unique address: on the namespace's `eth0`, reached from the host and
    /// translated to and from the guest's.
    pub sandbox_ip: Ipv4Addr,
    /// The host-side address (the same on every host veth, point-to-point, Calico-style).
    pub host_gateway: Ipv4Addr,
    /// What the guest sees.
    pub guest: GuestAddressing,
}

impl SandboxNet {
    /// The plan for `allocation` under the default [`NetConfig`] naming (`ember-<tap>`).
    pub fn plan(allocation: &NetworkAllocation, guest: &GuestAddressing) -> SandboxNet {
        Self::plan_with(&NetConfig::default(), allocation, guest)
    }

    /// The plan for `allocation` with `config`'s namespace prefix.
    pub fn plan_with(
        config: &NetConfig,
        allocation: &NetworkAllocation,
        guest: &GuestAddressing,
    ) -> SandboxNet {
        SandboxNet {
            host_if: allocation.tap.clone(),
            netns: config.netns_name(&allocation.tap),
            sandbox_ip: allocation.ip,
            host_gateway: allocation.gateway,
            guest: guest.clone(),
        }
    }

    /// `/run/netns/<netns>`: what the jailer's `--netns` joins.
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from(NETNS_DIR).join(&self.netns)
    }

    /// The TAP the VMM attaches to, inside the namespace.
    pub fn tap_name(&self) -> &str {
        &self.guest.tap_name
    }

    /// Checks the plan against `config` (names fit, the host interface is one of ember's).
    pub fn validate(&self, config: &NetConfig) -> Result<(), NetError> {
        self.guest.validate()?;
        if !config.is_host_if(&self.host_if) || self.host_if.len() > MAX_IFNAME_LEN {
            return Err(NetError::invalid(
                "sandbox.host_if",
                format!(
                    "{:?} is not {:?} followed by digits (at most {MAX_IFNAME_LEN} bytes)",
                    self.host_if, config.tap_prefix
                ),
            ));
        }
        if self.netns != config.netns_name(&self.host_if) {
            return Err(NetError::invalid(
                "sandbox.netns",
                format!(
                    "{:?} is not {:?}",
                    self.netns,
                    config.netns_name(&self.host_if)
                ),
            ));
        }
        if !config.subnet.contains(self.sandbox_ip) || self.sandbox_ip == self.host_gateway {
            return Err(NetError::invalid(
                "sandbox.sandbox_ip",
                format!(
                    "{} is not a sandbox address of {} (gateway {})",
                    self.sandbox_ip, config.subnet, self.host_gateway
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn allocation(tap: &str, ip: [u8; 4]) -> NetworkAllocation {
        let ip = Ipv4Addr::from(ip);
        NetworkAllocation {
            tap: tap.into(),
            ip,
            prefix_len: 16,
            gateway: Ipv4Addr::new(172, 30, 0, 1),
            mac: ember_store::network::mac_for_ip(ip),
            vsock_cid: 3,
        }
    }

    #[test]
    fn plan_names_and_addresses() {
        let net = SandboxNet::plan(
            &allocation("embtap3", [172, 30, 0, 7]),
            &GuestAddressing::default(),
        );
        assert_eq!(net.host_if, "embtap3");
        assert_eq!(net.netns, "ember-embtap3");
        assert_eq!(net.netns_path(), PathBuf::from("/run/netns/ember-embtap3"));
        assert_eq!(net.tap_name(), "tap0");
        assert_eq!(net.sandbox_ip, Ipv4Addr::new(172, 30, 0, 7));
        assert_eq!(net.host_gateway, Ipv4Addr::new(172, 30, 0, 1));
        assert_eq!(net.guest.guest_ip, Ipv4Addr::new(172, 16, 0, 2));
        assert_eq!(net.guest.guest_mac.to_string(), "06:00:ac:10:00:02");
        net.validate(&NetConfig::default()).unwrap();
    }

    #[test]
    fn host_interface_names_are_prefix_and_digits() {
        let c = NetConfig::default();
        assert_eq!(c.ifname_wildcard(), "embtap*");
        assert!(c.is_host_if("embtap0") && c.is_host_if("embtap65535"));
        assert!(!c.is_host_if("embtap") && !c.is_host_if("embtapx1") && !c.is_host_if("eth0"));
        assert_eq!(c.host_if_of_netns("ember-embtap12"), Some("embtap12"));
        assert_eq!(c.host_if_of_netns("ember-other"), None);
        assert_eq!(c.host_if_of_netns("embtap12"), None);
    }

    #[test]
    fn errors_name_the_field() {
        let field = |e: NetError| match e {
            NetError::Invalid { field, .. } => field,
            other => panic!("{other}"),
        };
        let bad = NetConfig {
            tap_prefix: "emb*".into(),
            ..NetConfig::default()
        };
        assert_eq!(field(bad.validate().unwrap_err()), "net.tap_prefix");
        let bad = NetConfig {
            host_table: "1x".into(),
            ..NetConfig::default()
        };
        assert_eq!(field(bad.validate().unwrap_err()), "net.host_table");
        let bad = GuestAddressing {
            guest_ip: Ipv4Addr::new(172, 16, 0, 9),
            ..GuestAddressing::default()
        };
        assert_eq!(field(bad.validate().unwrap_err()), "guest.guest_ip");
        let bad = GuestAddressing {
            tap_name: "eth0".into(),
            ..GuestAddressing::default()
        };
        assert_eq!(field(bad.validate().unwrap_err()), "guest.tap_name");
        let c = NetConfig::default();
        let net = SandboxNet::plan(
            &allocation("veth7", [172, 30, 0, 7]),
            &GuestAddressing::default(),
        );
        assert_eq!(field(net.validate(&c).unwrap_err()), "sandbox.host_if");
        let net = SandboxNet::plan(
            &allocation("embtap7", [10, 0, 0, 7]),
            &GuestAddressing::default(),
        );
        assert_eq!(field(net.validate(&c).unwrap_err()), "sandbox.sandbox_ip");
    }
}
