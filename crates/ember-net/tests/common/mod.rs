//! Helpers for ember-net's tests: real namespaces, as root. Each test has its own [`Lab`]: its
//! own interface prefix, subnet, host tables and namespace names, so tests run in parallel and
//! touch nothing they did not make; the lab removes everything when dropped, panic or not.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout
)]

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ember_net::{GuestAddressing, HostNet, NetConfig, SandboxNet};
use ember_store::network::mac_for_ip;
use ember_store::{Ipv4Subnet, NetworkAllocation};

/// One test's world. `id` (1..=250) picks the prefix `et<id>x`, the subnet `10.<id>.0.0/24`
/// (gateway `.1`) and the names of extra namespaces `embt<id>-*`.
pub struct Lab {
    pub id: u8,
    pub host: HostNet,
    extra_netns: Vec<String>,
    extra_links: Vec<String>,
}

impl Lab {
    pub fn new(id: u8) -> Lab {
        let subnet = Ipv4Subnet::new(Ipv4Addr::new(10, id, 0, 0), 16).unwrap();
        let config = NetConfig {
            subnet,
            tap_prefix: format!("et{id}x"),
            netns_prefix: "ember-".to_string(),
            host_table: format!("embt{id}"),
            nat_table: format!("embt{id}_nat"),
            sandbox_table: "ember".to_string(),
        };
        // Leftovers of an earlier, killed run of this test.
        HostNet::open(config.clone())
            .unwrap()
            .sweep(&HashSet::new())
            .unwrap();
        Lab {
            id,
            host: HostNet::ensure(config).unwrap(),
            extra_netns: Vec::new(),
            extra_links: Vec::new(),
        }
    }

    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.id, 0, 1)
    }

    /// The allocation the store would hand out for index `i` (address `10.<id>.<i/250>.<i%250+2>`).
    pub fn allocation(&self, i: u32) -> NetworkAllocation {
        let ip = Ipv4Addr::new(10, self.id, (i / 250) as u8, (i % 250 + 2) as u8);
        NetworkAllocation {
            tap: format!("et{}x{i}", self.id),
            ip,
            prefix_len: 16,
            gateway: self.gateway(),
            mac: mac_for_ip(ip),
            vsock_cid: 3 + i,
        }
    }

    pub fn plan(&self, i: u32) -> SandboxNet {
        SandboxNet::plan_with(
            self.host.config(),
            &self.allocation(i),
            &GuestAddressing::default(),
        )
    }

    /// A plain namespace `embt<id>-<name>` made with `ip netns add`, removed with the lab.
    pub fn netns(&mut self, name: &str) -> String {
        let full = format!("embt{}-{name}", self.id);
        let _ = Command::new("ip").args(["netns", "del", &full]).output();
        sh(&format!("ip netns add {full}"));
        self.extra_netns.push(full.clone());
        full
    }

    /// A host link the lab removes when dropped.
    pub fn own_link(&mut self, name: &str) {
        self.extra_links.push(name.to_string());
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.host.sweep(&HashSet::new());
        let _ = self.host.remove();
        for l in &self.extra_links {
            let _ = Command::new("ip").args(["link", "del", l]).output();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &format!("ember-et{}y0", self.id)])
            .output();
        for n in &self.extra_netns {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

/// Runs a shell command, panicking with its output if it fails; returns stdout.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh").args(["-c", cmd]).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `f` on a thread inside the namespace file `path`.
pub fn in_netns<T: Send + 'static>(
    path: impl AsRef<Path>,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let path = PathBuf::from(path.as_ref());
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).unwrap();
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

pub fn netns_path(name: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(name)
}

/// A TCP server in namespace `netns` (None: the host) on `addr` answering each connection with
/// `"<reply> <peer address>"` then echoing; runs until the process ends.
pub fn serve(netns: Option<&str>, addr: SocketAddr, reply: &'static str) {
    let listener = match netns {
        Some(n) => in_netns(netns_path(n), move || TcpListener::bind(addr).unwrap()),
        None => TcpListener::bind(addr).unwrap(),
    };
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let peer = conn
                    .peer_addr()
                    .map(|a| a.ip().to_string())
                    .unwrap_or_default();
                let _ = conn.write_all(format!("{reply} {peer}").as_bytes());
                let mut buf = [0u8; 64];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
}

/// Connects from namespace `netns` (None: the host) to `addr` and reads the greeting:
/// `Ok(greeting)` or the error (refused, timed out).
pub fn fetch(netns: Option<&str>, addr: SocketAddr) -> Result<String, std::io::Error> {
    let go = move || -> Result<String, std::io::Error> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(700))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    match netns {
        Some(n) => in_netns(netns_path(n), go),
        None => go(),
    }
}

/// Opens a connection from `netns` to `addr` and keeps it (for "established flows continue").
pub fn open(netns: &str, addr: SocketAddr) -> TcpStream {
    in_netns(netns_path(netns), move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(700)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 64];
        let _ = s.read(&mut buf).unwrap();
        s
    })
}

/// Writes `msg` on `s` and reads the echo.
pub fn echo(s: &mut TcpStream, msg: &str) -> std::io::Result<String> {
    s.write_all(msg.as_bytes())?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}
