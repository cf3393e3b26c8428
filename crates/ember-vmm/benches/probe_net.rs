//! The probe guest's IP stack over virtio-net and a real TAP, on real KVM. Run with
//! `cargo bench -p ember-vmm --bench probe_net`; prints one JSON object per result, each with
//! the host's CPU model and kernel:
//!
//! - `probe_net.tcp_host_to_guest`: MiB/s into the guest's TCP discard port (9), until the
//!   guest has read everything (its close after ours);
//! - `probe_net.tcp_guest_to_host`: MiB/s out of the guest's TCP chargen port (19);
//! - `probe_net.tcp_rtt`: 64-byte round trips on the guest's TCP echo port (7), in µs.
//!
//! The VMM and the host's sockets live in a throwaway network namespace holding only `tap0`
//! (172.16.0.1/30); the guest is tickless (`ember.hz=0`) at its default 172.16.0.2.
//! Under `cargo test` (no `--bench` argument) it only checks that it starts.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::panic
)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ember_test_support::{DEFAULT_TIMEOUT, VmmProcess, wait_for};
use serde_json::{Value, json};

const GUEST: &str = "172.16.0.2";
const BULK: usize = 64 << 20;
const RUNS: usize = 3;
const ROUND_TRIPS: usize = 2000;

fn vmm_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ember-vmm"))
}

fn run(cmd: &[&str]) {
    let out = Command::new(cmd[0]).args(&cmd[1..]).output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {out:?}");
}

/// A network namespace with `tap0` (172.16.0.1/30), deleted on drop.
struct NetNs(String);

impl NetNs {
    fn enter_new() -> NetNs {
        let ns = NetNs(format!("embpnb-{}", std::process::id()));
        run(&["ip", "netns", "add", &ns.0]);
        let n = ns.0.as_str();
        run(&["ip", "-n", n, "link", "set", "lo", "up"]);
        run(&["ip", "-n", n, "tuntap", "add", "dev", "tap0", "mode", "tap"]);
        run(&["ip", "-n", n, "addr", "add", "172.16.0.1/30", "dev", "tap0"]);
        run(&["ip", "-n", n, "link", "set", "tap0", "up"]);
        let f = std::fs::File::open(format!("/run/netns/{n}")).unwrap();
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        ns
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn host() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_default();
    let kernel = Command::new("uname")
        .arg("-r")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    json!({"cpu": cpu, "kernel": kernel})
}

fn report(host: &Value, bench: &str, unit: &str, mut v: Vec<f64>) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| v[(((v.len() - 1) as f64) * p).round() as usize];
    let r = |x: f64| (x * 10.0).round() / 10.0;
    let obj = json!({
        "bench": bench, "unit": unit, "n": v.len(),
        "p50": r(pct(0.5)), "p99": r(pct(0.99)), "min": r(v[0]), "max": r(v[v.len() - 1]),
        "host": host,
    });
    println!("{obj}");
}

fn connect(port: u16) -> TcpStream {
    let s = wait_for(DEFAULT_TIMEOUT, "the guest's TCP port", || {
        TcpStream::connect_timeout(
            &format!("{GUEST}:{port}").parse().unwrap(),
            Duration::from_secs(2),
        )
        .ok()
    });
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

fn host_to_guest() -> f64 {
    let mut s = connect(9);
    let chunk = vec![0x5au8; 256 << 10];
    let start = Instant::now();
    let mut sent = 0;
    while sent < BULK {
        s.write_all(&chunk).unwrap();
        sent += chunk.len();
    }
    s.shutdown(Shutdown::Write).unwrap();
    // The guest closes once it has read everything and seen our FIN.
    let mut b = [0u8; 16];
    while s.read(&mut b).unwrap() != 0 {}
    BULK as f64 / (1 << 20) as f64 / start.elapsed().as_secs_f64()
}

fn guest_to_host() -> f64 {
    let mut s = connect(19);
    let mut buf = vec![0u8; 256 << 10];
    let start = Instant::now();
    let mut got = 0;
    while got < BULK {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "chargen closed early");
        got += n;
    }
    let rate = got as f64 / (1 << 20) as f64 / start.elapsed().as_secs_f64();
    drop(s);
    rate
}

fn round_trips() -> Vec<f64> {
    let mut s = connect(7);
    let msg = [0x42u8; 64];
    let mut back = [0u8; 64];
    let mut v = Vec::with_capacity(ROUND_TRIPS);
    for i in 0..ROUND_TRIPS + 100 {
        let t = Instant::now();
        s.write_all(&msg).unwrap();
        s.read_exact(&mut back).unwrap();
        if i >= 100 {
            v.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    v
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        assert!(vmm_bin().is_file());
        eprintln!("ember-vmm probe_net benches: run `cargo bench -p ember-vmm --bench probe_net`");
        return;
    }
    let _ns = NetNs::enter_new();
    let dir = tempfile::Builder::new()
        .prefix("ember-probe-net-bench")
        .tempdir()
        .unwrap();
    let vmm = VmmProcess::spawn(vmm_bin(), &dir.path().join("vmm.sock"), &[]);
    let mut c = vmm.client();
    let net =
        json!({"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:10:00:02"});
    let boot = json!({
        "kernel_image_path": ember_probe_image::probe_elf_path(),
        "boot_args": "ember.report=0 ember.hz=0",
    });
    for (path, body) in [
        ("/network-interfaces/eth0", net.to_string()),
        ("/boot-source", boot.to_string()),
        (
            "/machine-config",
            r#"{"vcpu_count": 1, "mem_size_mib": 64}"#.to_string(),
        ),
        (
            "/actions",
            r#"{"action_type": "InstanceStart"}"#.to_string(),
        ),
    ] {
        let r = c.put(path, &body);
        assert_eq!(r.status, 204, "{path}: {r:?}");
    }
    let host = host();
    let rtt = round_trips();
    report(&host, "probe_net.tcp_rtt", "us", rtt);
    let h2g: Vec<f64> = (0..RUNS).map(|_| host_to_guest()).collect();
    report(&host, "probe_net.tcp_host_to_guest", "MiB/s", h2g);
    let g2h: Vec<f64> = (0..RUNS).map(|_| guest_to_host()).collect();
    report(&host, "probe_net.tcp_guest_to_host", "MiB/s", g2h);
    drop(vmm);
}
