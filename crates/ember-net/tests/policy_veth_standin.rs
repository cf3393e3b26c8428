//! Egress policy, NAT and isolation at the packet level, with a **veth stand-in for the VM**: the
//! sandbox namespace's `tap0` is a veth (`GuestLink::VethStandIn`) whose peer sits in a third
//! "guest" namespace holding the guest's address `172.16.0.2`, so TCP from and to that namespace
//! goes exactly where a VM's would. A real VM on the TAP is tested elsewhere, later.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod common;

use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr};

use common::{Lab, echo, fetch, netns_path, open, serve, sh};
use ember_core::net_policy::{EgressAction, EgressPolicy, EgressRule, Ipv4Cidr, Protocol};
use ember_net::GuestLink;

fn at(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

fn rule(cidr: &str) -> EgressRule {
    EgressRule::to(cidr.parse::<Ipv4Cidr>().unwrap())
}

/// A guest namespace attached to a sandbox, configured as the template's guest would be.
fn guest(lab: &mut Lab, name: &str) -> (String, GuestLink) {
    let ns = lab.netns(name);
    (
        ns.clone(),
        GuestLink::VethStandIn {
            guest_netns: netns_path(&ns),
            peer_if: "eth0".into(),
        },
    )
}

fn configure_guest(ns: &str) {
    sh(&format!(
        "ip -n {ns} link set lo up && ip -n {ns} link set eth0 up && \
         ip -n {ns} addr add 172.16.0.2/30 dev eth0 && ip -n {ns} route add default via 172.16.0.1"
    ));
}

#[test]
fn veth_standin_guest_egress_policy_nat_and_isolation() {
    let mut lab = Lab::new(204);
    let a = lab.plan(0);
    let b = lab.plan(1);
    let gw = lab.gateway();

    // "The internet": a namespace behind the host with two addresses, not an ember interface.
    let out = lab.netns("out");
    lab.own_link("eo204");
    sh(&format!(
        "ip link add eo204 type veth peer name eth0 netns {out} && \
         ip addr add 198.18.204.1/24 dev eo204 && ip link set eo204 up && \
         ip -n {out} link set lo up && ip -n {out} link set eth0 up && \
         ip -n {out} addr add 198.18.204.2/24 dev eth0 && ip -n {out} addr add 198.18.204.3/24 dev eth0 && \
         ip -n {out} route add default via 198.18.204.1"
    ));
    let allowed = at(Ipv4Addr::new(198, 18, 204, 2), 8080);
    let other_host = at(Ipv4Addr::new(198, 18, 204, 3), 8080);
    let other_port = at(Ipv4Addr::new(198, 18, 204, 2), 9090);
    serve(Some(&out), at(Ipv4Addr::UNSPECIFIED, 8080), "out");
    serve(Some(&out), at(Ipv4Addr::UNSPECIFIED, 9090), "out9090");

    let p1 = EgressPolicy {
        default: EgressAction::Deny,
        allow: vec![
            rule("198.18.204.2/32")
                .protocol(Protocol::Tcp)
                .ports("8080".parse().unwrap()),
        ],
        ..EgressPolicy::default()
    };
    let (ga, link_a) = guest(&mut lab, "ga");
    let (gb, link_b) = guest(&mut lab, "gb");
    lab.host.create_with(&a, &link_a, &p1).unwrap();
    lab.host
        .create_with(&b, &link_b, &EgressPolicy::allow_all())
        .unwrap();
    configure_guest(&ga);
    configure_guest(&gb);
    serve(Some(&ga), at(Ipv4Addr::UNSPECIFIED, 7000), "guest-a");
    serve(Some(&gb), at(Ipv4Addr::UNSPECIFIED, 7000), "guest-b");
    // A host service on the gateway address (exists once a host veth carries it).
    serve(None, at(gw, 7100), "host");

    // The host reaches each guest at its sandbox's address (DNAT), from the gateway address.
    assert_eq!(
        fetch(None, at(a.sandbox_ip, 7000)).unwrap(),
        format!("guest-a {gw}")
    );
    assert_eq!(
        fetch(None, at(b.sandbox_ip, 7000)).unwrap(),
        format!("guest-b {gw}")
    );
    assert!(fetch(None, at(gw, 7100)).unwrap().starts_with("host "));

    // Policy 1: only 198.18.204.2 tcp/8080. The guest's traffic leaves SNATed to the sandbox
    // address and masqueraded by the host (the server sees the host's 198.18.204.1).
    assert_eq!(fetch(Some(&ga), allowed).unwrap(), "out 198.18.204.1");
    let refused = |r: std::io::Result<String>| {
        assert_eq!(
            r.unwrap_err().kind(),
            ErrorKind::ConnectionRefused,
            "refused by the sandbox policy (TCP reset)"
        )
    };
    refused(fetch(Some(&ga), other_host));
    refused(fetch(Some(&ga), other_port));
    // The gateway (the host) is protected by the policy itself...
    refused(fetch(Some(&ga), at(gw, 7100)));

    // A change takes effect on the next connection; the established one continues.
    let mut kept = open(&ga, allowed);
    let p2 = EgressPolicy {
        default: EgressAction::Allow,
        deny: vec![rule("198.18.204.2/32")],
        ..EgressPolicy::default()
    };
    lab.host.set_policy(&a, &p2).unwrap();
    assert_eq!(echo(&mut kept, "still").unwrap(), "still");
    refused(fetch(Some(&ga), allowed));
    assert_eq!(fetch(Some(&ga), other_host).unwrap(), "out 198.18.204.1");

    // Allow beats deny.
    let p3 = EgressPolicy {
        default: EgressAction::Deny,
        allow: vec![rule("198.18.204.2/32").ports("9090".parse().unwrap())],
        deny: vec![rule("198.18.204.0/24")],
        ..EgressPolicy::default()
    };
    lab.host.set_policy(&a, &p3).unwrap();
    assert_eq!(
        fetch(Some(&ga), other_port).unwrap(),
        "out9090 198.18.204.1"
    );
    refused(fetch(Some(&ga), allowed));

    // Sandboxes cannot reach each other, even with everything allowed: the host drops it.
    lab.host.set_policy(&a, &EgressPolicy::allow_all()).unwrap();
    let dropped = |r: std::io::Result<String>| {
        let kind = r.unwrap_err().kind();
        assert!(
            matches!(kind, ErrorKind::TimedOut | ErrorKind::WouldBlock),
            "dropped by the host, got {kind:?}"
        )
    };
    dropped(fetch(Some(&ga), at(b.sandbox_ip, 7000)));
    dropped(fetch(Some(&gb), at(a.sandbox_ip, 7000)));
    // ...and the host's own services stay closed even when a policy names the gateway.
    let explicit = EgressPolicy {
        allow: vec![rule(&format!("{gw}/32"))],
        ..EgressPolicy::default()
    };
    lab.host.set_policy(&a, &explicit).unwrap();
    dropped(fetch(Some(&ga), at(gw, 7100)));
    // The outside still works for the same guest.
    assert_eq!(fetch(Some(&ga), allowed).unwrap(), "out 198.18.204.1");

    // Control: without the host tables the same two connections go through, so it is those
    // tables that stopped them (and the sandbox address, not the guest's, is the source).
    lab.host.remove().unwrap();
    assert_eq!(
        fetch(Some(&ga), at(b.sandbox_ip, 7000)).unwrap(),
        format!("guest-b {}", a.sandbox_ip)
    );
    assert_eq!(
        fetch(Some(&ga), at(gw, 7100)).unwrap(),
        format!("host {}", a.sandbox_ip)
    );

    drop(kept);
    lab.host.destroy(&a).unwrap();
    lab.host.destroy(&b).unwrap();
    assert!(lab.host.census().unwrap().no_sandboxes());
}
