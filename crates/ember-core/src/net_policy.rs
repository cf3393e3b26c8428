//! [`EgressPolicy`]: what a sandbox's guest may reach outside its own network.
//!
//! The policy is evaluated per new connection (established and related traffic always flows), in
//! this order:
//!
//! 1. allow rules that name a protected range explicitly (their CIDR lies inside
//!    [`LINK_LOCAL`] `169.254.0.0/16`, or is exactly the host-side gateway `/32`);
//! 2. everything else to the protected ranges is denied (metadata-style link-local services and
//!    the host itself are never reached by a broad rule such as `0.0.0.0/0`);
//! 3. DNS (UDP and TCP port 53 to any address) if `allow_dns`;
//! 4. the `allow` list: an allow rule wins over any deny rule that also matches (E2B's
//!    `allow_out` beats `deny_out`);
//! 5. the `deny` list;
//! 6. the `default` action.
//!
//! ```json
//! { "default": "deny", "allow_dns": true,
//!   "allow": [ { "cidr": "10.1.0.0/16", "protocol": "tcp", "ports": "8000-8080" },
//!              { "cidr": "1.1.1.1", "ports": 443 } ],
//!   "deny": [] }
//! ```
//!
//! A rule's `cidr` is an address (`1.1.1.1`, a `/32`) or a network with its host bits zero;
//! `ports` is one port (`443`) or an inclusive range (`"8000-8080"`) and applies to TCP and UDP
//! unless `protocol` narrows it. Validation errors name the field (`allow[1].ports`).

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::VmError;

/// Most rules one list (`allow` or `deny`) may hold.
pub const MAX_EGRESS_RULES: usize = 256;

/// The link-local range (`169.254.0.0/16`: cloud metadata services live there); denied unless an
/// allow rule inside it names it.
pub const LINK_LOCAL: Ipv4Cidr = Ipv4Cidr {
    addr: Ipv4Addr::new(169, 254, 0, 0),
    prefix_len: 16,
};

/// What happens to a new connection no rule decided.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EgressAction {
    /// Let it through.
    #[default]
    Allow,
    /// Refuse it (TCP gets a reset, anything else an ICMP "administratively prohibited").
    Deny,
}

impl fmt::Display for EgressAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EgressAction::Allow => "allow",
            EgressAction::Deny => "deny",
        })
    }
}

/// A transport protocol a rule can be narrowed to.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// An IPv4 network in CIDR form; a bare address means `/32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Ipv4Cidr {
    addr: Ipv4Addr,
    prefix_len: u8,
}

impl Ipv4Cidr {
    /// A network; `prefix_len` at most 32 and the host bits of `addr` zero.
    pub fn new(addr: Ipv4Addr, prefix_len: u8) -> Result<Self, String> {
        if prefix_len > 32 {
            return Err(format!("/{prefix_len} is longer than /32"));
        }
        let cidr = Self { addr, prefix_len };
        if u32::from(addr) & !cidr.mask() != 0 {
            return Err(format!(
                "{addr}/{prefix_len} has host bits set; did you mean {}/{prefix_len}?",
                Ipv4Addr::from(u32::from(addr) & cidr.mask())
            ));
        }
        Ok(cidr)
    }

    /// One address (`/32`).
    pub fn host(addr: Ipv4Addr) -> Self {
        Self {
            addr,
            prefix_len: 32,
        }
    }

    /// The network address.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    fn mask(&self) -> u32 {
        if self.prefix_len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix_len))
        }
    }

    /// Whether `ip` is inside.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr)
    }

    /// Whether every address of `self` is inside `outer`.
    pub fn is_within(&self, outer: &Ipv4Cidr) -> bool {
        self.prefix_len >= outer.prefix_len && outer.contains(self.addr)
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not an IPv4 address or network like 10.0.0.0/8");
        match s.split_once('/') {
            None => Ok(Self::host(s.parse().map_err(|_| bad())?)),
            Some((ip, len)) => {
                let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
                let len: u8 = len.parse().map_err(|_| bad())?;
                Self::new(ip, len)
            }
        }
    }
}

impl TryFrom<String> for Ipv4Cidr {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Ipv4Cidr> for String {
    fn from(c: Ipv4Cidr) -> String {
        c.to_string()
    }
}

/// One port or an inclusive range of ports; JSON `443` or `"8000-8080"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "PortsRepr", into = "PortsRepr")]
pub struct PortRange {
    first: u16,
    last: u16,
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum PortsRepr {
    One(u32),
    Range(String),
}

impl PortRange {
    /// `first..=last`; ports 1-65535, `first <= last`.
    pub fn new(first: u16, last: u16) -> Result<Self, String> {
        if first == 0 {
            return Err("port 0 cannot be matched; ports are 1 to 65535".into());
        }
        if first > last {
            return Err(format!(
                "{first}-{last} is empty; write the lower port first"
            ));
        }
        Ok(Self { first, last })
    }

    /// One port.
    pub fn single(port: u16) -> Result<Self, String> {
        Self::new(port, port)
    }

    /// The first port.
    pub fn first(&self) -> u16 {
        self.first
    }

    /// The last port (equal to `first` for one port).
    pub fn last(&self) -> u16 {
        self.last
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

impl FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let port = |p: &str| {
            p.trim().parse::<u16>().map_err(|_| {
                format!("{s:?} is not a port (1 to 65535) or a range like \"8000-8080\"")
            })
        };
        match s.split_once('-') {
            None => Self::single(port(s)?),
            Some((a, b)) => Self::new(port(a)?, port(b)?),
        }
    }
}

impl TryFrom<PortsRepr> for PortRange {
    type Error = String;
    fn try_from(r: PortsRepr) -> Result<Self, String> {
        match r {
            PortsRepr::One(p) => {
                let p = u16::try_from(p).map_err(|_| format!("{p} is not a port (1 to 65535)"))?;
                Self::single(p)
            }
            PortsRepr::Range(s) => s.parse(),
        }
    }
}

impl From<PortRange> for PortsRepr {
    fn from(p: PortRange) -> PortsRepr {
        if p.first == p.last {
            PortsRepr::One(u32::from(p.first))
        } else {
            PortsRepr::Range(p.to_string())
        }
    }
}

/// One allow or deny rule: a destination network, optionally narrowed to a protocol and ports.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressRule {
    /// Destination address or network.
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "10.0.0.0/8"))]
    pub cidr: Ipv4Cidr,
    /// Only this protocol (none: any protocol, or TCP and UDP when `ports` is given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// Only these destination ports: one (`443`) or a range (`"8000-8080"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, example = "8000-8080"))]
    pub ports: Option<PortRange>,
}

impl EgressRule {
    /// A rule matching every protocol to `cidr`.
    pub fn to(cidr: Ipv4Cidr) -> Self {
        Self {
            cidr,
            protocol: None,
            ports: None,
        }
    }

    /// Narrowed to `protocol`.
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = Some(protocol);
        self
    }

    /// Narrowed to `ports`.
    pub fn ports(mut self, ports: PortRange) -> Self {
        self.ports = Some(ports);
        self
    }
}

/// A sandbox's egress policy; see the module documentation for the evaluation order.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressPolicy {
    /// What happens to connections no rule decides.
    #[serde(default)]
    pub default: EgressAction,
    /// Destinations always allowed (they win over `deny`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<EgressRule>,
    /// Destinations refused unless `allow` lets them through.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<EgressRule>,
    /// DNS (UDP and TCP port 53) to any address outside the protected ranges.
    #[serde(default)]
    pub allow_dns: bool,
}

impl EgressPolicy {
    /// Everything allowed (the protected ranges still denied).
    pub fn allow_all() -> Self {
        Self::default()
    }

    /// Nothing allowed but what `allow` lists (and DNS if `allow_dns`).
    pub fn deny_all() -> Self {
        Self {
            default: EgressAction::Deny,
            ..Self::default()
        }
    }

    /// Checks what the types cannot: the size of each list, naming the field at fault.
    /// (Addresses, prefixes and ports are checked when a value is built or parsed.)
    pub fn validate(&self) -> Result<(), VmError> {
        for (name, list) in [("allow", &self.allow), ("deny", &self.deny)] {
            if list.len() > MAX_EGRESS_RULES {
                return Err(VmError::invalid_spec(
                    name,
                    format!(
                        "{} rules; at most {MAX_EGRESS_RULES} are allowed",
                        list.len()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Parses JSON and validates it; errors name the field (`allow[0].cidr`).
    pub fn from_json(json: &str) -> Result<Self, VmError> {
        let de = &mut serde_json::Deserializer::from_str(json);
        let policy: Self = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." {
                "policy".to_string()
            } else {
                path
            };
            VmError::invalid_spec(field, e.into_inner().to_string())
        })?;
        policy.validate()?;
        Ok(policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(json: &str) -> (String, String) {
        match EgressPolicy::from_json(json).unwrap_err() {
            VmError::InvalidSpec { field, reason } => (field, reason),
            other => panic!("{other}"),
        }
    }

    #[test]
    fn parses_the_documented_example() {
        let p = EgressPolicy::from_json(
            r#"{ "default": "deny", "allow_dns": true,
                 "allow": [ { "cidr": "10.1.0.0/16", "protocol": "tcp", "ports": "8000-8080" },
                            { "cidr": "1.1.1.1", "ports": 443 } ] }"#,
        )
        .unwrap();
        assert_eq!(p.default, EgressAction::Deny);
        assert!(p.allow_dns);
        assert_eq!(p.allow[0].ports.unwrap().first(), 8000);
        assert_eq!(p.allow[1].cidr.to_string(), "1.1.1.1/32");
        let round: EgressPolicy =
            EgressPolicy::from_json(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(round, p);
    }

    #[test]
    fn errors_name_the_field() {
        for (json, want_field, want_reason) in [
            (
                r#"{"allow":[{"cidr":"10.0.0.1/8"}]}"#,
                "allow[0].cidr",
                "host bits",
            ),
            (
                r#"{"deny":[{"cidr":"1.1.1.1"},{"cidr":"nope"}]}"#,
                "deny[1].cidr",
                "not an IPv4",
            ),
            (
                r#"{"allow":[{"cidr":"1.1.1.1","ports":"90-80"}]}"#,
                "allow[0].ports",
                "lower port first",
            ),
            (
                r#"{"allow":[{"cidr":"1.1.1.1","ports":70000}]}"#,
                "allow[0].ports",
                "not a port",
            ),
            (
                r#"{"allow":[{"cidr":"1.1.1.1","ports":0}]}"#,
                "allow[0].ports",
                "port 0",
            ),
            (
                r#"{"allow":[{"cidr":"1.1.1.1","protocol":"icmp"}]}"#,
                "allow[0].protocol",
                "icmp",
            ),
            (r#"{"default":"maybe"}"#, "default", "maybe"),
            (
                r#"{"allow":[{"cidr":"1.1.1.1","port":80}]}"#,
                "allow[0].port",
                "unknown field",
            ),
            (r#"{"alow":[]}"#, "alow", "unknown field"),
            ("[1]", "[0]", "expected value"),
        ] {
            let (field, reason) = field_of(json);
            assert_eq!(field, want_field, "{json}: {reason}");
            assert!(reason.contains(want_reason), "{json}: {reason}");
        }
        let too_many = EgressPolicy {
            deny: vec![EgressRule::to(LINK_LOCAL); MAX_EGRESS_RULES + 1],
            ..EgressPolicy::default()
        };
        match too_many.validate().unwrap_err() {
            VmError::InvalidSpec { field, .. } => assert_eq!(field, "deny"),
            other => panic!("{other}"),
        }
    }

    #[test]
    fn cidr_containment() {
        let c: Ipv4Cidr = "169.254.169.254".parse().unwrap();
        assert!(c.is_within(&LINK_LOCAL));
        assert!(
            !"0.0.0.0/0"
                .parse::<Ipv4Cidr>()
                .unwrap()
                .is_within(&LINK_LOCAL)
        );
        assert!(
            "0.0.0.0/0"
                .parse::<Ipv4Cidr>()
                .unwrap()
                .contains(Ipv4Addr::new(8, 8, 8, 8))
        );
    }
}
