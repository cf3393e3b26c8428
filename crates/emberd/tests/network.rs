//! Sandbox networks end to end (`emberd --sandbox-network`): a real daemon, jailed VMMs, probe
//! guests that speak IP over virtio-net, each sandbox in its own network namespace. Checked from
//! the guests (the probe's `net-connect`) and from the host:
//! - the host reaches a sandbox at its unique address (every guest has the same 172.16.0.2);
//! - a sandbox reaches an allowed test host (in a namespace the test makes, routed through the
//!   host) and not a denied one; a policy changed at runtime rules the next connection; a
//!   sandbox created with a deny-all policy reaches nothing;
//! - two sandboxes cannot reach each other, nor the host's own services;
//! - an exposed guest port answers on the host and stops answering after kill;
//! - sandboxes keep their networks and policies across a `kill -9` of the daemon, and their
//!   policy across a pause to disk and resume (a new VM, so a new network);
//! - 100 sandboxes created and killed leave no namespace, veth, TAP or nft table behind.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use ember_test_support::NetCleanup;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Daemon, create, run, runtime};
use ember_core::{EgressAction, EgressPolicy, EgressRule, Ipv4Cidr, PortRange, TemplateSpec};

/// A namespace with a veth to the host: the "test host" sandboxes try to reach.
struct TestHost {
    ns: String,
    host_if: String,
    addr: Ipv4Addr,
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestHost {
    fn new(tag: &str, octet: u8) -> TestHost {
        let ns = format!("th-{tag}");
        let host_if = format!("th{tag}");
        let peer = format!("tp{tag}");
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        let _ = Command::new("ip").args(["link", "del", &host_if]).output();
        sh(&["ip", "netns", "add", &ns]);
        sh(&[
            "ip", "link", "add", &host_if, "type", "veth", "peer", "name", &peer,
        ]);
        sh(&["ip", "link", "set", &peer, "netns", &ns]);
        let host_addr = format!("10.251.{octet}.1/30");
        let addr = Ipv4Addr::new(10, 251, octet, 2);
        sh(&["ip", "addr", "add", &host_addr, "dev", &host_if]);
        sh(&["ip", "link", "set", &host_if, "up"]);
        sh(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/30"),
            "dev",
            &peer,
        ]);
        sh(&["ip", "-n", &ns, "link", "set", &peer, "up"]);
        sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        sh(&[
            "ip",
            "-n",
            &ns,
            "route",
            "add",
            "default",
            "via",
            &format!("10.251.{octet}.1"),
        ]);
        TestHost { ns, host_if, addr }
    }

    /// A TCP server in the namespace on `port` that answers every connection with a line.
    fn serve(&self, port: u16) {
        let ns = self.ns.clone();
        let addr = self.addr;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let f = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let l = TcpListener::bind((addr, port)).unwrap();
            tx.send(()).unwrap();
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let _ = s.write_all(b"test host\n");
            }
        });
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

fn rule(addr: Ipv4Addr, port: u16) -> EgressRule {
    EgressRule {
        ports: Some(PortRange::single(port).unwrap()),
        ..EgressRule::to(Ipv4Cidr::host(addr))
    }
}

/// What exists with the daemon's prefix: namespaces (each holds a sandbox's TAP and nft table,
/// which go with it), host links.
fn census(prefix: &str) -> (usize, usize) {
    let ns = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with(&format!("ember-{prefix}"))
                })
                .count()
        })
        .unwrap_or(0);
    let links = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .count();
    (ns, links)
}

fn nft_tables(prefix: &str) -> usize {
    let out = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.ends_with(&format!("_{prefix}")))
        .count()
}

/// `net-connect` from inside sandbox `id`: Ok(stdout) or Err(stderr-ish).
async fn connect(
    client: &emberd::client::Client,
    id: &str,
    addr: Ipv4Addr,
    port: u16,
) -> Result<String, String> {
    use emberd::api::sandboxes::ExecEvent;
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let end = client
        .exec(
            id,
            &common::exec(&["net-connect", &addr.to_string(), &port.to_string(), "1500"]),
            |ev| match ev {
                ExecEvent::Stdout { data, encoding } => {
                    out.extend(ExecEvent::bytes(data, *encoding).unwrap())
                }
                ExecEvent::Stderr { data, encoding } => {
                    err.extend(ExecEvent::bytes(data, *encoding).unwrap())
                }
                _ => {}
            },
        )
        .await
        .map_err(|e| e.to_string())?;
    let (out, err) = (
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    );
    match end {
        ExecEvent::Exit { exit_code: 0, .. } => Ok(out),
        other => Err(format!("{other:?}: {out}{err}")),
    }
}

fn echo(addr: SocketAddr) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"ping over the host\n")?;
    let mut buf = vec![0; 19];
    s.read_exact(&mut buf)?;
    Ok(buf)
}

/// A started emberd with sandbox networks from `subnet` under interface prefix `prefix`, and
/// `extra` arguments.
fn networked_daemon(extra: &[&str], subnet: &str, prefix: &str) -> Daemon {
    let mut d = Daemon::new();
    d.extra = extra.iter().map(|s| s.to_string()).collect();
    d.extra.extend(
        [
            "--sandbox-network",
            "--net-subnet",
            subnet,
            "--net-prefix",
            prefix,
        ]
        .map(String::from),
    );
    d.start();
    d
}

/// Builds template `netprobe`: the probe guest with a network interface.
async fn build_networked_template(c: &emberd::client::Client) {
    let mut spec = TemplateSpec::probe();
    spec.network = true;
    c.build_template(&emberd::engine::templates::BuildTemplate {
        name: ember_core::TemplateName::new("netprobe").unwrap(),
        spec,
    })
    .await
    .unwrap();
}

#[test]
fn sandboxes_get_networks_with_policy_isolation_and_ports() {
    let tag = format!("{}", std::process::id() % 100_000);
    let prefix = format!("en{tag}");
    let _cleanup = NetCleanup(prefix.clone());
    let octet = (std::process::id() % 200) as u8 + 20;
    let subnet = format!("10.{octet}.0.0/17");
    let gateway = Ipv4Addr::new(10, octet, 0, 1);
    let th = TestHost::new(&tag, octet);
    th.serve(8080);
    th.serve(9090);
    let mut d = networked_daemon(&[], &subnet, &prefix);
    let rt = runtime();
    rt.block_on(async {
        let c = d.client();
        build_networked_template(&c).await;
        let a = c.create_sandbox(&create("netprobe")).await.unwrap();
        let b = c.create_sandbox(&create("netprobe")).await.unwrap();
        let (na, nb) = (a.network.clone().unwrap(), b.network.clone().unwrap());
        assert_ne!(na.address, nb.address);
        assert_eq!(na.egress, EgressPolicy::allow_all());
        // Every clone has the template's address inside; the host reaches each at its own.
        let (code, info) = run(&c, a.id.as_str(), &["net-info"]).await.unwrap();
        assert_eq!(code, 0);
        assert!(info.contains("ip=172.16.0.2"), "{info}");
        assert_eq!(
            echo(SocketAddr::from((na.address, 7))).unwrap(),
            b"ping over the host\n"
        );
        assert_eq!(
            echo(SocketAddr::from((nb.address, 7))).unwrap(),
            b"ping over the host\n"
        );
        // Out to the test host: allowed by default.
        let out = connect(&c, a.id.as_str(), th.addr, 8080).await.unwrap();
        assert!(out.contains("connected"), "{out}");
        // Never to another sandbox, nor to the host's own services.
        let host_service = TcpListener::bind((gateway, 0)).unwrap();
        let host_port = host_service.local_addr().unwrap().port();
        assert!(connect(&c, a.id.as_str(), nb.address, 7).await.is_err());
        assert!(connect(&c, b.id.as_str(), na.address, 7).await.is_err());
        assert!(
            connect(&c, a.id.as_str(), gateway, host_port)
                .await
                .is_err()
        );

        // A policy: deny by default, the test host's 8080 allowed.
        let policy = EgressPolicy {
            default: EgressAction::Deny,
            allow: vec![rule(th.addr, 8080)],
            ..EgressPolicy::default()
        };
        let changed = c.set_network(a.id.as_str(), &policy).await.unwrap();
        assert_eq!(changed.network.unwrap().egress, policy);
        assert!(connect(&c, a.id.as_str(), th.addr, 8080).await.is_ok());
        let denied = connect(&c, a.id.as_str(), th.addr, 9090).await.unwrap_err();
        assert!(denied.contains("refused"), "{denied}");
        // Changed at runtime: the next connection sees it. B is unaffected throughout.
        let mut wider = policy.clone();
        wider.allow.push(rule(th.addr, 9090));
        c.set_network(a.id.as_str(), &wider).await.unwrap();
        assert!(connect(&c, a.id.as_str(), th.addr, 9090).await.is_ok());
        assert!(connect(&c, b.id.as_str(), th.addr, 9090).await.is_ok());
        // A bad policy is refused naming the field, and changes nothing.
        let err = c
            .set_network(
                a.id.as_str(),
                &EgressPolicy {
                    allow: vec![EgressRule::to(Ipv4Cidr::host(th.addr)); 300],
                    ..EgressPolicy::default()
                },
            )
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("allow"), "{err}");
        assert_eq!(
            c.sandbox(a.id.as_str())
                .await
                .unwrap()
                .network
                .unwrap()
                .egress,
            wider
        );

        // The daemon is SIGKILLed and restarted: the sandboxes keep their networks, addresses
        // and policies (recovery re-adopts their VMs and keeps their slots' networks).
        let pa = c
            .expose_port(a.id.as_str(), 7)
            .await
            .unwrap()
            .network
            .unwrap()
            .ports[0];
        d.kill9();
        d.start();
        // Its exposed port listens again at the same host address.
        assert_eq!(echo(pa.host).unwrap(), b"ping over the host\n");
        assert_eq!(
            echo(SocketAddr::from((na.address, 7))).unwrap(),
            b"ping over the host\n"
        );
        assert!(connect(&c, a.id.as_str(), th.addr, 9090).await.is_ok());
        assert!(connect(&c, a.id.as_str(), nb.address, 7).await.is_err());
        assert_eq!(
            c.sandbox(a.id.as_str())
                .await
                .unwrap()
                .network
                .unwrap()
                .egress,
            wider
        );
        let mut narrow = wider.clone();
        narrow.allow.pop();
        c.set_network(a.id.as_str(), &narrow).await.unwrap();
        assert!(connect(&c, a.id.as_str(), th.addr, 9090).await.is_err());

        // Paused to disk and resumed: a new VM, so a new slot and network, with the same policy.
        c.pause_to_disk(a.id.as_str()).await.unwrap();
        let resumed = c.pause(a.id.as_str(), false).await.unwrap();
        let na2 = resumed.network.unwrap();
        assert_eq!(na2.egress, narrow);
        assert_eq!(
            echo(SocketAddr::from((na2.address, 7))).unwrap(),
            b"ping over the host\n"
        );
        assert!(connect(&c, a.id.as_str(), th.addr, 8080).await.is_ok());
        assert!(connect(&c, a.id.as_str(), th.addr, 9090).await.is_err());

        // Created with deny-all: reaches nothing.
        let mut req = create("netprobe");
        req.egress = Some(EgressPolicy::deny_all());
        let sealed = c.create_sandbox(&req).await.unwrap();
        assert!(
            connect(&c, sealed.id.as_str(), th.addr, 8080)
                .await
                .is_err()
        );

        // An exposed port answers on the host, and stops with the sandbox.
        let exposed = c.expose_port(b.id.as_str(), 7).await.unwrap();
        let port = exposed.network.unwrap().ports[0];
        assert_eq!(port.guest_port, 7);
        assert_eq!(echo(port.host).unwrap(), b"ping over the host\n");
        c.kill(b.id.as_str()).await.unwrap();
        let t0 = Instant::now();
        while echo(port.host).is_ok() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "the port still answers"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A daemon without networks refuses policies naming why (checked via a plain create
        // of an unknown field is elsewhere); here: a port of a dead sandbox is refused.
        assert!(c.expose_port(b.id.as_str(), 7).await.is_err());

        // Many sandboxes created and killed: nothing of their networks is left.
        let mut ids = Vec::new();
        for _ in 0..100 {
            ids.push(
                c.create_sandbox(&create("netprobe"))
                    .await
                    .unwrap()
                    .id
                    .to_string(),
            );
        }
        for id in ids
            .iter()
            .chain([a.id.to_string(), sealed.id.to_string()].iter())
        {
            c.kill(id).await.unwrap();
        }
        c.delete_template("netprobe").await.unwrap();
    });
    // What is left is the two spare VMMs' networks (every slot has one from its start); every
    // sandbox's went with it. The daemon's reclaimer removes them off the request path.
    let t0 = Instant::now();
    loop {
        let (ns, links) = census(&prefix);
        if ns <= 2 && links <= 2 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "left behind: {ns} namespaces, {links} host links (2 spares expected)"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(nft_tables(&prefix), 2, "the host's two tables");
    drop(d);
}

/// The same networks with VMMs unjailed (`--no-jail`: the runtime starts each VMM in its slot's
/// namespace through nsenter): the host reaches each sandbox at its address, and killing it
/// removes its network.
#[test]
fn unjailed_vmms_get_networks_too() {
    let tag = format!("{}", std::process::id() % 100_000);
    let prefix = format!("eu{tag}");
    let _cleanup = NetCleanup(prefix.clone());
    let octet = (std::process::id() % 200) as u8 + 20;
    let d = networked_daemon(&["--no-jail"], &format!("10.{octet}.128.0/17"), &prefix);
    let rt = runtime();
    rt.block_on(async {
        let c = d.client();
        build_networked_template(&c).await;
        let a = c.create_sandbox(&create("netprobe")).await.unwrap();
        let addr = a.network.clone().unwrap().address;
        assert_eq!(
            echo(SocketAddr::from((addr, 7))).unwrap(),
            b"ping over the host\n"
        );
        c.kill(a.id.as_str()).await.unwrap();
        c.delete_template("netprobe").await.unwrap();
    });
    let t0 = Instant::now();
    while census(&prefix).0 > 2 {
        assert!(t0.elapsed() < Duration::from_secs(30), "networks left");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(d);
}
