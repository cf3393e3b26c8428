//! nftables rulesets as `nft -j` JSON, and running `nft` in the calling thread's namespace.
//!
//! `nft` is spawned from the thread that asks: a child process inherits the network namespace of
//! the thread that spawns it, so a thread that joined a sandbox's namespace runs nft there with
//! neither `ip netns exec` nor unsafe `pre_exec` code.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use ember_core::net_policy::{EgressAction, EgressPolicy, EgressRule, Ipv4Cidr, LINK_LOCAL};
use serde_json::{Value, json};

use crate::config::{NetConfig, SandboxNet};
use crate::error::NetError;

/// The regular chain holding a sandbox's egress policy (replaced as a whole on a change).
pub(crate) const EGRESS_CHAIN: &str = "egress";
/// The regular chain refusing a connection (TCP reset, else ICMP admin-prohibited).
const REFUSE_CHAIN: &str = "refuse";

/// Runs `nft -j -f -` with `commands` in the calling thread's network namespace.
pub(crate) fn apply(
    op: &'static str,
    namespace: &str,
    commands: Vec<Value>,
) -> Result<(), NetError> {
    spawn(op, namespace, commands)?.wait()
}

/// An `nft` run started by [`spawn`].
struct Pending {
    child: std::process::Child,
    op: &'static str,
    namespace: String,
}

/// Starts `nft -j -f -` with `commands` in the calling thread's network namespace (the ruleset is
/// written before returning).
fn spawn(op: &'static str, namespace: &str, commands: Vec<Value>) -> Result<Pending, NetError> {
    let input = json!({ "nftables": commands }).to_string();
    let err = |detail: String| NetError::Nft {
        op,
        namespace: namespace.to_string(),
        detail,
    };
    let mut child = Command::new("nft")
        .args(["-j", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| err(format!("cannot run nft: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        // Dropping `stdin` at the end of this block closes it: nft reads to end of file.
        if let Err(e) = stdin.write_all(input.as_bytes()) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(err(format!("writing the ruleset to nft: {e}")));
        }
    }
    Ok(Pending {
        child,
        op,
        namespace: namespace.to_string(),
    })
}

impl Pending {
    /// Waits for nft; its stderr is the error if it failed.
    fn wait(self) -> Result<(), NetError> {
        let err = |detail: String| NetError::Nft {
            op: self.op,
            namespace: self.namespace.clone(),
            detail,
        };
        let out = self
            .child
            .wait_with_output()
            .map_err(|e| err(format!("waiting for nft: {e}")))?;
        if !out.status.success() {
            return Err(err(format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }
}

/// Runs `nft -j list tables` in the calling thread's namespace: `(family, name)` of each table.
pub(crate) fn list_tables(namespace: &str) -> Result<Vec<(String, String)>, NetError> {
    let err = |detail: String| NetError::Nft {
        op: "listing tables",
        namespace: namespace.to_string(),
        detail,
    };
    let out = Command::new("nft")
        .args(["-j", "list", "tables"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| err(format!("cannot run nft: {e}")))?;
    if !out.status.success() {
        return Err(err(String::from_utf8_lossy(&out.stderr).trim().to_string()));
    }
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| err(e.to_string()))?;
    Ok(v["nftables"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|i| {
                    let t = i.get("table")?;
                    Some((
                        t["family"].as_str()?.to_string(),
                        t["name"].as_str()?.to_string(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default())
}

fn meta(key: &str, op: &str, right: Value) -> Value {
    json!({ "match": { "op": op, "left": { "meta": { "key": key } }, "right": right } })
}

fn payload(protocol: &str, field: &str, right: Value) -> Value {
    json!({ "match": { "op": "==", "left": { "payload": { "protocol": protocol, "field": field } }, "right": right } })
}

fn ct_state(states: &[&str]) -> Value {
    json!({ "match": { "op": "in", "left": { "ct": { "key": "state" } }, "right": states } })
}

fn cidr(c: &Ipv4Cidr) -> Value {
    if c.prefix_len() == 32 {
        json!(c.addr().to_string())
    } else {
        json!({ "prefix": { "addr": c.addr().to_string(), "len": c.prefix_len() } })
    }
}

fn table(family: &str, name: &str) -> Value {
    json!({ "table": { "family": family, "name": name } })
}

fn base_chain(
    family: &str,
    t: &str,
    name: &str,
    kind: &str,
    hook: &str,
    prio: i32,
    policy: &str,
) -> Value {
    json!({ "chain": { "family": family, "table": t, "name": name, "type": kind, "hook": hook, "prio": prio, "policy": policy } })
}

fn chain(family: &str, t: &str, name: &str) -> Value {
    json!({ "chain": { "family": family, "table": t, "name": name } })
}

fn rule(family: &str, t: &str, chain: &str, expr: Vec<Value>) -> Value {
    json!({ "add": { "rule": { "family": family, "table": t, "chain": chain, "expr": expr } } })
}

fn add(object: Value) -> Value {
    json!({ "add": object })
}

/// The matches of one egress rule (destination, protocol, ports).
fn rule_matches(r: &EgressRule) -> Vec<Value> {
    let mut m = Vec::new();
    if r.cidr.prefix_len() > 0 {
        m.push(payload("ip", "daddr", cidr(&r.cidr)));
    }
    match (r.protocol, r.ports) {
        (Some(p), _) => m.push(meta("l4proto", "==", json!(p.to_string()))),
        (None, Some(_)) => m.push(meta("l4proto", "==", json!({ "set": ["tcp", "udp"] }))),
        (None, None) => {}
    }
    if let Some(ports) = r.ports {
        let right = if ports.first() == ports.last() {
            json!(ports.first())
        } else {
            json!({ "range": [ports.first(), ports.last()] })
        };
        m.push(payload("th", "dport", right));
    }
    m
}

/// Whether an allow rule names a protected range explicitly (inside link-local, or exactly the
/// host-side gateway).
fn names_protected(r: &EgressRule, host_gateway: Ipv4Addr) -> bool {
    r.cidr.is_within(&LINK_LOCAL) || r.cidr == Ipv4Cidr::host(host_gateway)
}

/// The rules of the egress chain for `policy` (see `ember_core::net_policy` for the order).
fn egress_rules(t: &str, net: &SandboxNet, policy: &EgressPolicy) -> Vec<Value> {
    let f = "ip";
    let accept = || json!({ "accept": null });
    let refuse = || json!({ "goto": { "target": REFUSE_CHAIN } });
    let mut rules = Vec::new();
    let with = |mut m: Vec<Value>, verdict: Value| {
        m.push(verdict);
        rule(f, t, EGRESS_CHAIN, m)
    };
    for r in policy
        .allow
        .iter()
        .filter(|r| names_protected(r, net.host_gateway))
    {
        rules.push(with(rule_matches(r), accept()));
    }
    for protected in [LINK_LOCAL, Ipv4Cidr::host(net.host_gateway)] {
        rules.push(with(
            vec![payload("ip", "daddr", cidr(&protected))],
            refuse(),
        ));
    }
    if policy.allow_dns {
        rules.push(with(
            vec![
                meta("l4proto", "==", json!({ "set": ["tcp", "udp"] })),
                payload("th", "dport", json!(53)),
            ],
            accept(),
        ));
    }
    for r in policy
        .allow
        .iter()
        .filter(|r| !names_protected(r, net.host_gateway))
    {
        rules.push(with(rule_matches(r), accept()));
    }
    for r in &policy.deny {
        rules.push(with(rule_matches(r), refuse()));
    }
    rules.push(with(
        Vec::new(),
        match policy.default {
            EgressAction::Allow => accept(),
            EgressAction::Deny => refuse(),
        },
    ));
    rules
}

/// The whole table of a sandbox's namespace, in one transaction:
///
/// ```text
/// table ip ember {
///   chain prerouting  { type nat hook prerouting priority dstnat; policy accept;
///     iifname "eth0" ip daddr <sandbox_ip> dnat to 172.16.0.2 }
///   chain postrouting { type nat hook postrouting priority srcnat; policy accept;
///     oifname "eth0" ip saddr 172.16.0.2 snat to <sandbox_ip> }
///   chain refuse { meta l4proto tcp reject with tcp reset; reject with icmp type admin-prohibited }
///   chain egress { <the policy> }
///   chain forward { type filter hook forward priority filter; policy drop;
///     ct state established,related accept
///     iifname "eth0" oifname "tap0" accept
///     iifname "tap0" oifname "eth0" jump egress }
/// }
/// ```
pub(crate) fn sandbox_ruleset(
    config: &NetConfig,
    net: &SandboxNet,
    policy: &EgressPolicy,
) -> Vec<Value> {
    let f = "ip";
    let t = config.sandbox_table.as_str();
    let g = &net.guest;
    let mut c = vec![
        add(table(f, t)),
        add(base_chain(
            f,
            t,
            "prerouting",
            "nat",
            "prerouting",
            -100,
            "accept",
        )),
        add(base_chain(
            f,
            t,
            "postrouting",
            "nat",
            "postrouting",
            100,
            "accept",
        )),
        add(chain(f, t, REFUSE_CHAIN)),
        add(chain(f, t, EGRESS_CHAIN)),
        add(base_chain(f, t, "forward", "filter", "forward", 0, "drop")),
        rule(
            f,
            t,
            "prerouting",
            vec![
                meta("iifname", "==", json!(g.netns_if)),
                payload("ip", "daddr", json!(net.sandbox_ip.to_string())),
                json!({ "dnat": { "addr": g.guest_ip.to_string() } }),
            ],
        ),
        rule(
            f,
            t,
            "postrouting",
            vec![
                meta("oifname", "==", json!(g.netns_if)),
                payload("ip", "saddr", json!(g.guest_ip.to_string())),
                json!({ "snat": { "addr": net.sandbox_ip.to_string() } }),
            ],
        ),
        rule(
            f,
            t,
            REFUSE_CHAIN,
            vec![
                meta("l4proto", "==", json!("tcp")),
                json!({ "reject": { "type": "tcp reset" } }),
            ],
        ),
        rule(
            f,
            t,
            REFUSE_CHAIN,
            vec![json!({ "reject": { "type": "icmp", "expr": "admin-prohibited" } })],
        ),
        rule(
            f,
            t,
            "forward",
            vec![
                ct_state(&["established", "related"]),
                json!({ "accept": null }),
            ],
        ),
        rule(
            f,
            t,
            "forward",
            vec![
                meta("iifname", "==", json!(g.netns_if)),
                meta("oifname", "==", json!(g.tap_name)),
                json!({ "accept": null }),
            ],
        ),
        rule(
            f,
            t,
            "forward",
            vec![
                meta("iifname", "==", json!(g.tap_name)),
                meta("oifname", "==", json!(g.netns_if)),
                json!({ "jump": { "target": EGRESS_CHAIN } }),
            ],
        ),
    ];
    c.extend(egress_rules(t, net, policy));
    c
}

/// Replaces the egress chain's rules in one transaction (flush and add): new connections see the
/// new policy, established ones continue.
pub(crate) fn policy_update(
    config: &NetConfig,
    net: &SandboxNet,
    policy: &EgressPolicy,
) -> Vec<Value> {
    let t = config.sandbox_table.as_str();
    let mut c = vec![json!({ "flush": chain("ip", t, EGRESS_CHAIN) })];
    c.extend(egress_rules(t, net, policy));
    c
}

/// The host-wide tables, replaced whole (add, delete, add: idempotent in one transaction):
///
/// ```text
/// table inet ember {
///   chain forward { type filter hook forward priority filter; policy accept;
///     iifname "embtap*" oifname "embtap*" drop            # sandbox to sandbox
///     oifname "embtap*" ct state established,related accept
///     oifname "embtap*" drop }                             # nothing but the host opens a flow in
///   chain input { type filter hook input priority filter; policy accept;
///     iifname "embtap*" ct state established,related accept
///     iifname "embtap*" drop }                             # the host's own services
/// }
/// table ip ember_nat {
///   chain postrouting { type nat hook postrouting priority srcnat; policy accept;
///     ip saddr <subnet> oifname != "embtap*" masquerade }
/// }
/// ```
pub(crate) fn host_ruleset(config: &NetConfig) -> Vec<Value> {
    let wild = config.ifname_wildcard();
    let (fi, ti) = ("inet", config.host_table.as_str());
    let (fn_, tn) = ("ip", config.nat_table.as_str());
    let est = || ct_state(&["established", "related"]);
    let accept = || json!({ "accept": null });
    let drop = || json!({ "drop": null });
    vec![
        add(table(fi, ti)),
        json!({ "delete": table(fi, ti) }),
        add(table(fi, ti)),
        add(base_chain(
            fi, ti, "forward", "filter", "forward", 0, "accept",
        )),
        add(base_chain(fi, ti, "input", "filter", "input", 0, "accept")),
        rule(
            fi,
            ti,
            "forward",
            vec![
                meta("iifname", "==", json!(wild)),
                meta("oifname", "==", json!(wild)),
                drop(),
            ],
        ),
        rule(
            fi,
            ti,
            "forward",
            vec![meta("oifname", "==", json!(wild)), est(), accept()],
        ),
        rule(
            fi,
            ti,
            "forward",
            vec![meta("oifname", "==", json!(wild)), drop()],
        ),
        rule(
            fi,
            ti,
            "input",
            vec![meta("iifname", "==", json!(wild)), est(), accept()],
        ),
        rule(
            fi,
            ti,
            "input",
            vec![meta("iifname", "==", json!(wild)), drop()],
        ),
        add(table(fn_, tn)),
        json!({ "delete": table(fn_, tn) }),
        add(table(fn_, tn)),
        add(base_chain(
            fn_,
            tn,
            "postrouting",
            "nat",
            "postrouting",
            100,
            "accept",
        )),
        rule(
            fn_,
            tn,
            "postrouting",
            vec![
                payload(
                    "ip",
                    "saddr",
                    json!({ "prefix": { "addr": config.subnet.network().to_string(), "len": config.subnet.prefix_len() } }),
                ),
                meta("oifname", "!=", json!(wild)),
                json!({ "masquerade": null }),
            ],
        ),
    ]
}

/// Deletes the host-wide tables (add first, so a missing table is not an error).
pub(crate) fn host_remove(config: &NetConfig) -> Vec<Value> {
    let (fi, ti) = ("inet", config.host_table.as_str());
    let (fn_, tn) = ("ip", config.nat_table.as_str());
    vec![
        add(table(fi, ti)),
        json!({ "delete": table(fi, ti) }),
        add(table(fn_, tn)),
        json!({ "delete": table(fn_, tn) }),
    ]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::GuestAddressing;
    use ember_core::net_policy::Protocol;
    use ember_store::NetworkAllocation;

    fn net() -> SandboxNet {
        let ip = Ipv4Addr::new(172, 30, 0, 7);
        SandboxNet::plan(
            &NetworkAllocation {
                tap: "embtap3".into(),
                ip,
                prefix_len: 16,
                gateway: Ipv4Addr::new(172, 30, 0, 1),
                mac: ember_store::network::mac_for_ip(ip),
                vsock_cid: 3,
            },
            &GuestAddressing::default(),
        )
    }

    /// Each egress rule as a compact summary: its matches' right-hand sides and its verdict.
    fn summary(rules: &[Value]) -> Vec<String> {
        rules
            .iter()
            .map(|r| {
                let expr = r["add"]["rule"]["expr"].as_array().unwrap();
                expr.iter()
                    .map(|e| match e.get("match") {
                        Some(m) => m["right"].to_string(),
                        None => e.as_object().unwrap().keys().next().unwrap().clone(),
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect()
    }

    #[test]
    fn egress_order_protected_dns_allow_deny_default() {
        let rule = |c: &str| EgressRule::to(c.parse().unwrap());
        let policy = EgressPolicy {
            default: EgressAction::Deny,
            allow: vec![
                rule("10.0.0.0/8")
                    .protocol(Protocol::Udp)
                    .ports("8000-8080".parse().unwrap()),
                rule("169.254.169.254"),
                rule("0.0.0.0/0").ports("443".parse().unwrap()),
            ],
            deny: vec![rule("10.1.0.0/16")],
            allow_dns: true,
        };
        let s = summary(&egress_rules("ember", &net(), &policy));
        assert_eq!(
            s,
            vec![
                r#""169.254.169.254" accept"#,
                r#"{"prefix":{"addr":"169.254.0.0","len":16}} goto"#,
                r#""172.30.0.1" goto"#,
                r#"{"set":["tcp","udp"]} 53 accept"#,
                r#"{"prefix":{"addr":"10.0.0.0","len":8}} "udp" {"range":[8000,8080]} accept"#,
                r#"{"set":["tcp","udp"]} 443 accept"#,
                r#"{"prefix":{"addr":"10.1.0.0","len":16}} goto"#,
                "goto",
            ]
        );
        let s = summary(&egress_rules("ember", &net(), &EgressPolicy::allow_all()));
        assert_eq!(s.last().unwrap(), "accept");
        assert_eq!(s.len(), 3);
    }

    #[test]
    fn policy_update_is_one_flush_then_the_rules() {
        let c = policy_update(&NetConfig::default(), &net(), &EgressPolicy::deny_all());
        assert_eq!(
            c[0],
            json!({ "flush": { "chain": { "family": "ip", "table": "ember", "name": "egress" } } })
        );
        assert!(c[1..].iter().all(|r| r["add"]["rule"]["chain"] == "egress"));
    }

    #[test]
    fn host_rules_use_the_prefix_wildcard() {
        let text = serde_json::to_string(&host_ruleset(&NetConfig::default())).unwrap();
        assert!(text.contains(r#""right":"embtap*""#), "{text}");
        assert!(text.contains(r#""addr":"172.30.0.0","len":16"#), "{text}");
    }
}
