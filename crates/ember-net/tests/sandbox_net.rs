//! One sandbox network made, inspected and removed, with a real TAP (no VM attached).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod common;

use common::{Lab, sh};
use ember_core::net_policy::{EgressAction, EgressPolicy, EgressRule, Protocol};

#[test]
fn create_one_sandbox_network_with_a_tap_then_destroy_it() {
    let lab = Lab::new(201);
    let net = lab.plan(3);
    let policy = EgressPolicy {
        default: EgressAction::Deny,
        allow: vec![
            EgressRule::to("198.51.100.0/24".parse().unwrap())
                .protocol(Protocol::Tcp)
                .ports("8000-8080".parse().unwrap()),
        ],
        deny: vec![EgressRule::to("203.0.113.7".parse().unwrap())],
        allow_dns: true,
    };
    let times = lab.host.create(&net, Some((4321, 4322)), &policy).unwrap();
    println!("setup: {times:?}");

    assert!(net.netns_path().exists());
    assert_eq!(net.netns, "ember-et201x3");
    let ns = &net.netns;
    let eth0 = sh(&format!("ip -n {ns} -4 -o addr show dev eth0"));
    assert!(eth0.contains(&format!("{}/32", net.sandbox_ip)), "{eth0}");
    let routes = sh(&format!("ip -n {ns} -4 route show"));
    assert!(
        routes.contains("default via 10.201.0.1 dev eth0 "),
        "{routes}"
    );
    assert!(
        routes.contains("\n10.201.0.1 dev eth0 ") && routes.contains("scope link"),
        "{routes}"
    );
    let tap = sh(&format!("ip -n {ns} -d -o link show dev tap0"));
    assert!(tap.contains("tun type tap"), "{tap}");
    assert!(
        tap.contains("user 4321") && tap.contains("group 4322"),
        "{tap}"
    );
    let tap_addr = sh(&format!("ip -n {ns} -4 -o addr show dev tap0"));
    assert!(tap_addr.contains("172.16.0.1/30"), "{tap_addr}");
    let neigh = sh(&format!("ip -n {ns} neigh show dev tap0"));
    assert!(
        neigh.contains("172.16.0.2 lladdr 06:00:ac:10:00:02 PERMANENT"),
        "{neigh}"
    );
    let fwd = sh(&format!(
        "ip netns exec {ns} cat /proc/sys/net/ipv4/ip_forward"
    ));
    assert_eq!(fwd.trim(), "1");
    assert_eq!(sh("cat /proc/sys/net/ipv4/ip_forward").trim(), "1");

    let host_if = sh(&format!("ip -4 -o addr show dev {}", net.host_if));
    assert!(host_if.contains("10.201.0.1/32"), "{host_if}");
    let host_route = sh(&format!("ip -4 route show {}", net.sandbox_ip));
    assert!(
        host_route.contains(&format!("dev {}", net.host_if)),
        "{host_route}"
    );

    let rules = sh(&format!("ip netns exec {ns} nft list ruleset"));
    for want in [
        "iifname \"eth0\" ip daddr 10.201.0.5 dnat to 172.16.0.2",
        "oifname \"eth0\" ip saddr 172.16.0.2 snat to 10.201.0.5",
        "ct state established,related accept",
        "iifname \"eth0\" oifname \"tap0\" accept",
        "iifname \"tap0\" oifname \"eth0\" jump egress",
        "ip daddr 169.254.0.0/16 goto refuse",
        "ip daddr 10.201.0.1 goto refuse",
        "th dport 53 accept",
        "ip daddr 198.51.100.0/24 tcp dport 8000-8080 accept",
        "ip daddr 203.0.113.7 goto refuse",
    ] {
        assert!(rules.contains(want), "missing {want:?} in\n{rules}");
    }
    let host_rules = sh("nft list table inet embt201");
    assert!(
        host_rules.contains("iifname \"et201x*\" oifname \"et201x*\" drop"),
        "{host_rules}"
    );

    // From the host, the sandbox's address answers: its link is up and ARP resolves through the
    // veth (the namespace forwards everything to the guest, absent here, so no echo reply).
    let _ = std::process::Command::new("ping")
        .args(["-c1", "-W1", &net.sandbox_ip.to_string()])
        .output();
    let neigh = sh(&format!(
        "ip neigh show {} dev {}",
        net.sandbox_ip, net.host_if
    ));
    assert!(
        !neigh.contains("FAILED") && neigh.contains("lladdr"),
        "{neigh}"
    );

    let census = lab.host.census().unwrap();
    assert_eq!(
        (
            census.netns,
            census.veths,
            census.taps_in_ember_netns,
            census.nft_tables,
            census.host_tables
        ),
        (1, 1, 1, 1, 2)
    );

    // A second create of the same network fails and leaves the first intact.
    let err = lab
        .host
        .create(&net, None, &policy)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("/run/netns/ember-et201x3") && err.contains("exists"),
        "{err}"
    );
    assert_eq!(lab.host.census().unwrap().netns, 1);

    lab.host.destroy(&net).unwrap();
    lab.host.destroy(&net).unwrap(); // idempotent
    let census = lab.host.census().unwrap();
    assert!(census.no_sandboxes(), "{census:?}");
    assert!(!net.netns_path().exists());
}

#[test]
fn invalid_policy_and_plan_are_refused_naming_the_field_before_touching_anything() {
    let lab = Lab::new(205);
    let err = EgressPolicy::from_json(
        r#"{"default":"deny","allow":[{"cidr":"10.0.0.0/8","ports":"443-80"}]}"#,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("allow[0].ports") && err.contains("lower port first"),
        "{err}"
    );

    let too_many = EgressPolicy {
        allow: vec![EgressRule::to("10.0.0.0/8".parse().unwrap()); 257],
        ..EgressPolicy::default()
    };
    let err = lab
        .host
        .create(&lab.plan(0), None, &too_many)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("invalid egress policy") && err.contains("invalid allow"),
        "{err}"
    );

    let mut net = lab.plan(0);
    net.sandbox_ip = "192.0.2.9".parse().unwrap();
    let err = lab
        .host
        .create(&net, None, &EgressPolicy::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("sandbox.sandbox_ip"), "{err}");
    assert!(lab.host.census().unwrap().no_sandboxes());
}

#[test]
fn a_create_failing_halfway_removes_what_it_made_and_nothing_else() {
    let mut lab = Lab::new(206);
    let net = lab.plan(1);
    // Someone else's link already has the sandbox's host interface name.
    lab.own_link(&net.host_if);
    sh(&format!(
        "ip link add {} type veth peer name et206q",
        net.host_if
    ));
    let err = lab
        .host
        .create(&net, None, &EgressPolicy::default())
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(17), "{err}");
    assert_eq!(
        err.to_string(),
        "creating veth et206x1: File exists (os error 17)"
    );
    assert!(!net.netns_path().exists(), "the namespace it made is gone");
    sh(&format!("ip link show {}", net.host_if)); // the other link is untouched
    let census = lab.host.census().unwrap();
    assert_eq!((census.netns, census.taps_in_ember_netns), (0, 0));
}
