//! The probe guest's IP stack over ember-vmm's virtio-net device on real KVM and a real TAP:
//! ping, TCP echo (1 MiB round trip), UDP echo, and the agent's outbound built-ins
//! (`net-connect` connected / refused / timed out / unreachable, `net-udp`, `net-info`); then a
//! snapshot restored in another network namespace, behind another `tap0` with the same
//! addresses (network-for-clones), answering ping and TCP echo with nothing reconfigured.
//!
//! Each VM runs in a throwaway network namespace (removed on drop, panics included) holding
//! only `tap0` (172.16.0.1/30) and `lo`: the test thread enters the namespace before it
//! spawns the VMM (which opens `tap0` by name in its own namespace) and before it opens its
//! own sockets, so every packet stays inside the namespace.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use ember_agent_proto::Exec;
use serde_json::json;

const HOST_IP: &str = "172.16.0.1";
const GUEST_IP: &str = "172.16.0.2";
const GUEST_MAC: &str = "06:00:ac:10:00:02";

fn run(cmd: &[&str]) {
    let out = Command::new(cmd[0]).args(&cmd[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace with `tap0` (172.16.0.1/30, up), deleted on drop.
struct NetNs(String);

impl NetNs {
    fn new(tag: &str) -> NetNs {
        let name = format!("embpn-{}-{tag}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(std::process::Stdio::null())
            .status();
        run(&["ip", "netns", "add", &name]);
        let ns = NetNs(name);
        let n = ns.0.as_str();
        run(&["ip", "-n", n, "link", "set", "lo", "up"]);
        run(&["ip", "-n", n, "tuntap", "add", "dev", "tap0", "mode", "tap"]);
        run(&["ip", "-n", n, "addr", "add", "172.16.0.1/30", "dev", "tap0"]);
        run(&["ip", "-n", n, "link", "set", "tap0", "up"]);
        ns
    }

    /// Moves the calling thread into the namespace (processes it spawns and sockets it opens
    /// from now on live there).
    fn enter(&self) {
        let f = std::fs::File::open(format!("/run/netns/{}", self.0)).unwrap();
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn net_json() -> String {
    json!({"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": GUEST_MAC}).to_string()
}

/// Boots the probe with a vsock device and a net device on `tap0` (the calling thread's
/// namespace); returns the VMM and its vsock socket path.
fn boot_net_probe(dir: &Path, name: &str, boot_args: &str) -> (VmmProcess, std::path::PathBuf) {
    let uds = dir.join(format!("{name}.vsock"));
    let vmm = spawn(dir, name, &[]);
    let mut c = vmm.client();
    let r = c.put("/network-interfaces/eth0", &net_json());
    assert_eq!(r.status, 204, "{r:?}");
    boot_with_vsock(&mut c, 64, boot_args, &uds);
    wait_banner(&vmm);
    (vmm, uds)
}

/// `ping -c1` from the current namespace, retried (the first may race ARP).
fn ping_ok(ip: &str) -> bool {
    (0..5).any(|_| {
        Command::new("ping")
            .args(["-c1", "-W2", ip])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// Sends `len` bytes to the guest's TCP echo port and checks they all come back.
fn tcp_echo(len: usize) {
    let mut s = wait_for(DEFAULT_TIMEOUT, "the guest's TCP echo port", || {
        TcpStream::connect_timeout(
            &format!("{GUEST_IP}:7").parse().unwrap(),
            Duration::from_secs(2),
        )
        .ok()
    });
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    let mut w = s.try_clone().unwrap();
    let sent = data.clone();
    let writer = std::thread::spawn(move || {
        w.write_all(&sent).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut back = Vec::with_capacity(len);
    s.read_to_end(&mut back).unwrap();
    writer.join().unwrap();
    assert_eq!(back.len(), len, "echoed length");
    assert!(back == data, "echoed bytes differ");
}

/// Several echo connections at once, each a few round trips.
fn tcp_echo_concurrent(conns: usize) {
    let mut streams: Vec<TcpStream> = (0..conns)
        .map(|_| TcpStream::connect(format!("{GUEST_IP}:7")).unwrap())
        .collect();
    for round in 0..3u8 {
        for (i, s) in streams.iter_mut().enumerate() {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let msg = [b'a' + i as u8, round, b'\n'];
            s.write_all(&msg).unwrap();
            let mut got = [0u8; 3];
            s.read_exact(&mut got).unwrap();
            assert_eq!(got, msg, "connection {i} round {round}");
        }
    }
}

fn udp_echo() {
    let u = UdpSocket::bind(format!("{HOST_IP}:0")).unwrap();
    u.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let got = (0..10).find_map(|i| {
        let msg = format!("hello udp {i}");
        u.send_to(msg.as_bytes(), format!("{GUEST_IP}:7")).unwrap();
        let mut buf = [0u8; 64];
        let (n, from) = u.recv_from(&mut buf).ok()?;
        Some((buf[..n].to_vec(), msg, from))
    });
    let (reply, msg, from) = got.expect("no UDP echo reply");
    assert_eq!(reply, msg.as_bytes());
    assert_eq!(from.to_string(), format!("{GUEST_IP}:7"));
}

/// Runs `argv` in the guest: (exit code, stdout, stderr).
fn guest(uds: &Path, argv: &[&str]) -> (i32, String, String) {
    let mut a = agent(uds);
    let out = a.exec(&Exec::new(argv)).unwrap();
    (
        out.exit_code,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A TCP listener in the namespace that answers one connection: reads a line, writes
/// `ok\n`, closes. The join handle returns the line.
fn one_shot_listener() -> (u16, std::thread::JoinHandle<Vec<u8>>) {
    let l = TcpListener::bind(format!("{HOST_IP}:0")).unwrap();
    let port = l.local_addr().unwrap().port();
    let h = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while s.read(&mut b).unwrap_or(0) == 1 {
            line.push(b[0]);
            if b[0] == b'\n' {
                break;
            }
        }
        s.write_all(b"ok\n").unwrap();
        line
    });
    (port, h)
}

/// While a `net-connect` waits for its peer's byte (the listener holds it back until told),
/// the agent answers other connections, and a second outbound command is refused as busy.
fn agent_serves_while_connect_waits(uds: &Path) {
    let l = TcpListener::bind(format!("{HOST_IP}:0")).unwrap();
    let port = l.local_addr().unwrap().port().to_string();
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let (accepted_tx, accepted) = std::sync::mpsc::channel::<()>();
    let listener = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        accepted_tx.send(()).unwrap();
        wait.recv().unwrap();
        // Closed with the guest's bytes unread: Linux resets the connection after the data,
        // which still counts as an answer.
        s.write_all(b"late\n").unwrap();
    });
    let uds_owned = uds.to_path_buf();
    let p = port.clone();
    let connect =
        std::thread::spawn(move || guest(&uds_owned, &["net-connect", HOST_IP, &p, "20000"]));
    accepted.recv().unwrap();
    let (code, out, _) = guest(uds, &["echo", "still", "here"]);
    assert_eq!((code, out.as_str()), (0, "still here\n"));
    let (code, _, err) = guest(uds, &["net-udp", HOST_IP, "9", "100"]);
    assert_eq!((code, err.as_str()), (1, "busy\n"));
    go.send(()).unwrap();
    listener.join().unwrap();
    let (code, out, err) = connect.join().unwrap();
    assert_eq!(
        (code, out, err),
        (0, format!("connected {HOST_IP}:{port}\n"), String::new())
    );
}

fn outbound_connect_ok(uds: &Path) {
    let (port, h) = one_shot_listener();
    let (code, out, err) = guest(uds, &["net-connect", HOST_IP, &port.to_string()]);
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (0, format!("connected {HOST_IP}:{port}\n").as_str(), "")
    );
    assert_eq!(h.join().unwrap(), b"ember-probe\n");
}

#[test]
fn probe_speaks_ip_over_virtio_net() {
    let ns = NetNs::new("a");
    ns.enter();
    let dir = tempdir();
    // A /29 on the guest's side (the host keeps its /30): 172.16.0.5 is then on-link for the
    // guest but owned by nobody, so ARP goes unanswered (`unreachable`). Tickless (hz=0):
    // deadlines run on the LAPIC one-shot.
    let (vmm, uds) = boot_net_probe(
        dir.path(),
        "net",
        "ember.report=0 ember.hz=0 ember.ip=172.16.0.2/29 ember.gw=172.16.0.1",
    );
    let (code, out, _) = guest(&uds, &["net-info"]);
    assert_eq!(code, 0);
    assert_eq!(
        out,
        format!("ip=172.16.0.2/29 gw=172.16.0.1 mac={GUEST_MAC}\n")
    );

    assert!(ping_ok(GUEST_IP), "the guest does not answer ping");
    tcp_echo(1 << 20);
    tcp_echo_concurrent(4);
    udp_echo();

    outbound_connect_ok(&uds);
    agent_serves_while_connect_waits(&uds);
    // A closed port: the namespace's kernel answers RST.
    let closed = TcpListener::bind(format!("{HOST_IP}:0")).unwrap();
    let closed_port = closed.local_addr().unwrap().port().to_string();
    drop(closed);
    let (code, _, err) = guest(&uds, &["net-connect", HOST_IP, &closed_port, "2000"]);
    assert_eq!((code, err.as_str()), (1, "refused\n"));
    // Off-link, through the gateway, which drops it (no forwarding in the namespace).
    let (code, _, err) = guest(&uds, &["net-connect", "192.0.2.1", "80", "500"]);
    assert_eq!((code, err.as_str()), (1, "timed out\n"));
    // On-link, nobody answers ARP.
    let (code, _, err) = guest(&uds, &["net-connect", "172.16.0.5", "80", "500"]);
    assert_eq!((code, err.as_str()), (1, "unreachable\n"));

    // UDP out: a reply, then a port that never answers.
    let u = UdpSocket::bind(format!("{HOST_IP}:0")).unwrap();
    let uport = u.local_addr().unwrap().port().to_string();
    let responder = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        let (n, from) = u.recv_from(&mut buf).unwrap();
        u.send_to(b"pong\n", from).unwrap();
        buf[..n].to_vec()
    });
    let (code, out, _) = guest(&uds, &["net-udp", HOST_IP, &uport]);
    assert_eq!((code, out.as_str()), (0, "pong\n"));
    assert_eq!(responder.join().unwrap(), b"ember-probe\n");
    let (code, _, err) = guest(&uds, &["net-udp", HOST_IP, &closed_port, "300"]);
    assert_eq!((code, err.as_str()), (1, "timed out\n"));

    // Bad usage is an error reply, not a crash; the stack still answers after all that.
    let mut a = agent(&uds);
    assert!(a.exec(&Exec::new(&["net-connect", "nonsense"])).is_err());
    tcp_echo(4096);
    drop(vmm);
}

#[test]
fn restored_clone_answers_in_another_namespace() {
    let dir = tempdir();
    let ns_a = NetNs::new("src");
    ns_a.enter();
    // Default address (172.16.0.2/30 via .1) and the default 100 Hz tick: deadlines run on
    // the tick here.
    let (vmm, uds) = boot_net_probe(dir.path(), "src", "ember.report=0");
    let (code, out, err) = guest(&uds, &["net-info"]);
    assert_eq!(
        (code, out, err),
        (
            0,
            format!("ip=172.16.0.2/30 gw=172.16.0.1 mac={GUEST_MAC}\n"),
            String::new()
        )
    );
    assert!(ping_ok(GUEST_IP), "the source does not answer ping");
    tcp_echo(64 << 10);
    let (code, _, err) = guest(&uds, &["net-connect", "192.0.2.1", "80", "300"]);
    assert_eq!((code, err.as_str()), (1, "timed out\n"));
    let mut c = vmm.client();
    pause(&mut c);
    let (snap, mem) = snapshot_paths(dir.path(), "net");
    let r = create_snapshot(&mut c, &snap, &mem);
    assert_eq!(r.status, 204, "{r:?}");
    drop(vmm);
    drop(ns_a);

    let ns_b = NetNs::new("clone");
    ns_b.enter();
    let clone = spawn(dir.path(), "clone", &[]);
    let clone_uds = dir.path().join("clone.vsock");
    let r = clone
        .client()
        .put("/snapshot/load", &load_body_vsock(&snap, &mem, &clone_uds));
    assert_eq!(r.status, 204, "{r:?}");
    assert!(ping_ok(GUEST_IP), "the clone does not answer ping");
    tcp_echo(256 << 10);
    let (code, out, err) = guest(&clone_uds, &["net-info"]);
    assert_eq!(
        (code, out, err),
        (
            0,
            format!("ip=172.16.0.2/30 gw=172.16.0.1 mac={GUEST_MAC}\n"),
            String::new()
        )
    );
    // The clone reaches its own host (a TAP with another MAC: the ARP cache was flushed), and
    // its deadlines still fire (on the tick here).
    outbound_connect_ok(&clone_uds);
    let (code, _, err) = guest(&clone_uds, &["net-connect", "192.0.2.1", "80", "300"]);
    assert_eq!((code, err.as_str()), (1, "timed out\n"));
    drop(clone);
}
