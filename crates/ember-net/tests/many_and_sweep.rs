//! Many sandbox networks made and removed with nothing left, and crash-recovery sweeps.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{Lab, sh};
use ember_core::net_policy::EgressPolicy;

#[test]
fn hundred_sandbox_networks_created_and_destroyed_leave_nothing() {
    let lab = Lab::new(202);
    let policy = EgressPolicy {
        allow_dns: true,
        ..EgressPolicy::deny_all()
    };
    let nets: Vec<_> = (0..100).map(|i| lab.plan(i)).collect();
    let mut totals = Vec::new();
    let mut links = Vec::new();
    let mut other = Vec::new();
    let mut netns = Vec::new();
    let mut nft_wait = Vec::new();

    let start = Instant::now();
    for net in &nets {
        let t = lab.host.create(net, Some((1000, 1000)), &policy).unwrap();
        totals.push(t.total);
        links.push(t.links);
        other.push(t.total - t.links - t.netns - t.nft_wait);
        netns.push(t.netns);
        nft_wait.push(t.nft_wait);
    }
    let created = start.elapsed();
    let census = lab.host.census().unwrap();
    assert_eq!(
        (
            census.netns,
            census.veths,
            census.taps_in_ember_netns,
            census.nft_tables
        ),
        (100, 100, 100, 100),
        "{census:?}"
    );
    let start = Instant::now();
    for net in &nets {
        lab.host.destroy(net).unwrap();
    }
    let destroyed = start.elapsed();
    let census = lab.host.census().unwrap();
    assert!(census.no_sandboxes(), "{census:?}");
    totals.sort();
    links.sort();
    other.sort();
    netns.sort();
    nft_wait.sort();

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "100 sandbox networks: setup median {:.2} ms (p90 {:.2}, min {:.2}, max {:.2}; medians of its parts: namespace {:.2} ms, netlink {:.2} ms, then waiting for nft {:.2} ms, the rest {:.2} ms); all created in {:.0} ms, destroyed in {:.0} ms",
        ms(totals[50]),
        ms(totals[90]),
        ms(totals[0]),
        ms(totals[99]),
        ms(netns[50]),
        ms(links[50]),
        ms(nft_wait[50]),
        ms(other[50]),
        ms(created),
        ms(destroyed)
    );
}

#[test]
fn sweep_removes_unrecorded_networks_and_keeps_recorded_ones() {
    let mut lab = Lab::new(203);
    // Links not ours, made below; the lab removes them even if the test fails.
    for l in ["et203y0", "et203xq"] {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", l])
            .output();
        lab.own_link(l);
    }
    let _ = std::process::Command::new("ip")
        .args(["netns", "del", "ember-et203y0"])
        .output();
    let policy = EgressPolicy::allow_all();
    let nets: Vec<_> = (0..4).map(|i| lab.plan(i)).collect();
    for net in &nets {
        lab.host.create(net, None, &policy).unwrap();
    }
    // Leftovers a crash could leave: a namespace whose veth is gone, and a veth whose namespace
    // file is gone while something (here an open file, in life a VMM) still holds the namespace.
    sh(&format!("ip link del {}", nets[2].host_if));
    let _holder = std::fs::File::open(nets[3].netns_path()).unwrap();
    sh(&format!(
        "umount -l {0} && rm {0}",
        nets[3].netns_path().display()
    ));
    // Not ours: another prefix, and a name that merely starts like ours.
    sh(
        "ip link add et203y0 type veth peer name et203y0p && ip link add et203xq type veth peer name et203xqp",
    );
    sh("ip netns add ember-et203y0");

    let keep: HashSet<String> = [nets[0].host_if.clone()].into();
    let report = lab.host.sweep(&keep).unwrap();
    let mut removed_links = report.links_removed.clone();
    removed_links.sort();
    let mut removed_netns = report.netns_removed.clone();
    removed_netns.sort();
    assert_eq!(
        removed_links,
        vec![nets[1].host_if.clone(), nets[3].host_if.clone()]
    );
    assert_eq!(
        removed_netns,
        vec![nets[1].netns.clone(), nets[2].netns.clone()]
    );
    assert_eq!(report.kept, vec![nets[0].host_if.clone()]);

    let census = lab.host.census().unwrap();
    assert_eq!(
        (census.netns, census.veths, census.taps_in_ember_netns),
        (1, 1, 1)
    );
    assert!(nets[0].netns_path().exists());
    sh("ip link show et203y0 && ip link show et203xq && test -e /run/netns/ember-et203y0");
    sh("ip link del et203y0; ip link del et203xq; ip netns del ember-et203y0");

    let report = lab.host.sweep(&HashSet::new()).unwrap();
    assert_eq!(report.netns_removed, vec![nets[0].netns.clone()]);
    assert!(lab.host.census().unwrap().no_sandboxes());

    // Removing the host tables is idempotent too.
    lab.host.remove().unwrap();
    lab.host.remove().unwrap();
    assert_eq!(lab.host.census().unwrap().host_tables, 0);
}
