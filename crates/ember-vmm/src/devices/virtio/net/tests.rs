//! virtio-net at the queue level through real TAP devices.
//!
//! Each test runs on its own thread inside a network namespace it creates (and deletes):
//! the TAP gets an IPv4 address there, so the kernel is the guest's L2 peer — a UDP socket
//! receives what the guest transmits, and datagrams sent to the guest's address (a static
//! neighbour entry with the guest MAC) arrive on the TAP for the RX queue.
//!
//! Over 600 lines on purpose: each scenario builds its frames and descriptor chains inline.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, poll};
use virtio_queue::Queue;

use super::*;
use crate::devices::virtio::test_utils::{OUTSIDE, TestQueue, test_memory, wait_for_timer};
use ember_fc_api::TokenBucket as TokenBucketConfig;

const GUEST_MAC: [u8; 6] = [0x06, 0x00, 0xac, 0x10, 0x00, 0x02];
const TX_BUF: u64 = 0x1_0000;
const RX_BUF: u64 = 0x10_0000;
const NEXT: u16 = 1;
const WRITE: u16 = 2;

/// A network namespace that lives as long as the value.
struct NetNs {
    name: String,
}

fn run(cmd: &[&str]) -> String {
    let out = Command::new(cmd[0]).args(&cmd[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl NetNs {
    /// Creates a namespace and moves the calling thread into it.
    fn enter() -> NetNs {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "embt-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        run(&["ip", "netns", "add", &name]);
        let ns = NetNs { name };
        let f = std::fs::File::open(format!("/run/netns/{}", ns.name)).unwrap();
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        // Children (ip, sysctl) inherit this thread's namespace.
        run(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
        run(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
        ns
    }

    /// Creates TAP `name` with `addr/24`, up; returns its MAC.
    fn tap(&self, name: &str, addr: &str) -> [u8; 6] {
        run(&["ip", "tuntap", "add", "dev", name, "mode", "tap"]);
        run(&["ip", "addr", "add", &format!("{addr}/24"), "dev", name]);
        run(&["ip", "link", "set", name, "up"]);
        let out = run(&["ip", "-o", "link", "show", "dev", name]);
        let mac = out
            .split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .unwrap();
        parse_mac(mac).unwrap()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Runs `body` on a new thread inside a new network namespace.
fn in_netns(body: impl FnOnce(&NetNs) + Send + 'static) {
    std::thread::spawn(move || {
        let ns = NetNs::enter();
        body(&ns);
    })
    .join()
    .unwrap();
}

fn params(tap: &str) -> NetParams {
    NetParams {
        id: "eth0".into(),
        host_dev_name: tap.into(),
        guest_mac: Some(GUEST_MAC),
        mtu: None,
        rx_rate_limiter: None,
        tx_rate_limiter: None,
        clock: Clock::Monotonic,
    }
}

fn csum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet/IPv4/UDP frame from the guest (`.2` of `dst`'s /24, port 5000) to `dst`.
fn udp_frame(dst_mac: [u8; 6], dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let o = dst.ip().octets();
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[o[0], o[1], o[2], 2]);
    ip.extend_from_slice(&dst.ip().octets());
    let c = csum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&5000u16.to_be_bytes());
    f.extend_from_slice(&dst.port().to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

/// Places `[vnet header][frame]` at `at` and queues it as a two-descriptor TX chain.
fn queue_tx(tq: &mut TestQueue<'_>, at: u64, frame: &[u8]) {
    tq.write(at, &[0u8; VNET_HDR_LEN]);
    tq.write(at + 0x100, frame);
    tq.add_chain(&[
        (at, VNET_HDR_LEN as u32, false),
        (at + 0x100, frame.len() as u32, false),
    ]);
}

fn wait_readable(net: &Net) {
    let mut fds = [PollFd::new(net.tap().as_fd(), PollFlags::POLLIN)];
    assert_eq!(
        poll(&mut fds, 5_000u16).unwrap(),
        1,
        "no frame on the TAP within 5 s"
    );
}

use std::os::fd::AsFd;

fn udp_socket(addr: &str) -> UdpSocket {
    let s = UdpSocket::bind(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

fn recv(s: &UdpSocket) -> (Vec<u8>, std::net::SocketAddr) {
    let mut b = [0u8; 2048];
    let (n, from) = s.recv_from(&mut b).unwrap();
    (b[..n].to_vec(), from)
}

/// Waits until the kernel has activated the TAP's queueing discipline after the device
/// attached (link-watch work, asynchronous): until then it drops what it sends.
fn wait_carrier(name: &str) {
    for _ in 0..500 {
        let out = run(&["ip", "-o", "link", "show", "dev", name]);
        if out.contains("state UP") && !out.contains("qdisc noop") {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{name} never came up");
}

/// Sends a datagram to the guest (10.77.0.2:7000) and waits until it is on the TAP.
fn send_to_guest(net: &Net, payload: &[u8]) {
    wait_carrier(net.tap().name());
    let s = UdpSocket::bind("10.77.0.1:0").unwrap();
    s.send_to(payload, "10.77.0.2:7000").unwrap();
    wait_readable(net);
}

/// The UDP payload of a received `[vnet header][frame]`, after checking the header and the
/// addressing.
fn rx_payload(buf: &[u8]) -> Vec<u8> {
    assert_eq!(&buf[10..12], &1u16.to_le_bytes(), "num_buffers");
    let f = &buf[VNET_HDR_LEN..];
    assert_eq!(&f[..6], &GUEST_MAC, "destination MAC");
    assert_eq!(&f[12..14], &[0x08, 0x00]);
    assert_eq!(u16::from_be_bytes([f[36], f[37]]), 7000, "UDP port");
    let udp_len = usize::from(u16::from_be_bytes([f[38], f[39]]));
    f[42..34 + udp_len].to_vec()
}

#[test]
fn mac_mtu_and_features_in_config_space() {
    in_netns(|ns| {
        ns.tap("et0", "10.77.0.1");
        let net = Net::new(params("et0")).unwrap();
        let mut mac = [0u8; 6];
        net.read_config(0, &mut mac);
        assert_eq!(mac, GUEST_MAC);
        let f = net.avail_features();
        assert_ne!(f & (1 << VIRTIO_NET_F_MAC), 0);
        assert_eq!(f & (1 << VIRTIO_NET_F_MTU), 0);
        assert_ne!(f & feature(VIRTIO_F_VERSION_1), 0);
        // A second TAP: re-attaching et0 right after closing it can meet EBUSY while a
        // child forked by a parallel test still holds a copy of the descriptor.
        ns.tap("et1", "10.78.0.1");
        let net = Net::new(NetParams {
            guest_mac: None,
            mtu: Some(9000),
            ..params("et1")
        })
        .unwrap();
        assert_eq!(net.avail_features() & (1 << VIRTIO_NET_F_MAC), 0);
        assert_ne!(net.avail_features() & (1 << VIRTIO_NET_F_MTU), 0);
        let mut mtu = [0u8; 2];
        net.read_config(10, &mut mtu);
        assert_eq!(u16::from_le_bytes(mtu), 9000);
        assert_eq!(net.min_rx_buffer(), 12 + 14 + 9000);
    });
}

#[test]
fn tx_reaches_the_host_bad_frames_are_dropped_and_bad_chains_break_the_device() {
    in_netns(|ns| {
        let tap_mac = ns.tap("et0", "10.77.0.1");
        let sock = udp_socket("10.77.0.1:6000");
        let dst = SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 1), 6000);
        let mut net = Net::new(params("et0")).unwrap();
        let mem = test_memory();
        let hl = DeviceHealth::new("test");
        let mut tq = TestQueue::new(&mem, 32);
        let mut q: Queue = tq.queue();

        // A frame shorter than the virtio-net header is dropped (a request error).
        tq.write(TX_BUF, &[0u8; VNET_HDR_LEN]);
        tq.add_chain(&[(TX_BUF, 8, false)]);
        // Then a good frame, split over two descriptors.
        queue_tx(&mut tq, TX_BUF + 0x1000, &udp_frame(tap_mac, dst, b"good"));

        let out = net.process_tx(&mem, &mut q, &hl);
        assert_eq!(
            out,
            QueueOutcome {
                completed: 2,
                throttled: false,
                more: false,
            }
        );
        for i in 0..2 {
            assert_eq!(tq.used(i).1, 0, "TX chains are returned with length 0");
        }
        let (payload, from) = recv(&sock);
        assert_eq!(payload, b"good");
        assert_eq!(from.to_string(), "10.77.0.2:5000");
        let st = net.stats();
        assert_eq!((st.tx_frames, st.tx_dropped), (1, 1));
        assert_eq!(st.tx_bytes, udp_frame(tap_mac, dst, b"good").len() as u64);
        assert!(!hl.is_broken());
        assert_eq!(hl.count(ErrorKind::Request), 1);

        // Chains no driver builds, each carrying a valid frame that must not go out: the
        // device breaks at the chain, before the good frame behind it.
        let bad = udp_frame(tap_mac, dst, b"bad");
        tq.write(TX_BUF + 0x100, &bad);
        let blen = bad.len() as u32;
        type Setup = Box<dyn Fn(&mut TestQueue<'_>)>;
        let cases: Vec<(&str, Setup)> = vec![
            (
                "device-writable buffer in a TX chain",
                Box::new(move |tq| {
                    tq.add_chain(&[
                        (TX_BUF, 12, false),
                        (TX_BUF + 0x100, blen, false),
                        (TX_BUF + 0x800, 64, true),
                    ]);
                }),
            ),
            (
                "outside guest memory",
                Box::new(move |tq| {
                    tq.add_chain(&[(TX_BUF, 12, false), (OUTSIDE, blen, false)]);
                }),
            ),
            (
                "loop",
                Box::new(move |tq| {
                    tq.set_desc(20, TX_BUF, 12, NEXT, 21);
                    tq.set_desc(21, TX_BUF + 0x100, blen, NEXT, 20);
                    tq.make_available(20);
                }),
            ),
        ];
        for (what, setup) in cases {
            let hl = DeviceHealth::new("test");
            let mut tq = TestQueue::new(&mem, 32);
            let mut q: Queue = tq.queue();
            setup(&mut tq);
            queue_tx(&mut tq, TX_BUF + 0x1000, &udp_frame(tap_mac, dst, b"after"));
            let frames = net.stats().tx_frames;
            assert_eq!(net.process_tx(&mem, &mut q, &hl), QueueOutcome::default());
            assert_eq!(net.stats().tx_frames, frames, "{what}: nothing sent");
            assert_eq!(tq.used_idx(), 0, "{what}: nothing returned");
            assert!(hl.is_broken(), "{what}");
            assert!(
                hl.reason().unwrap().contains(what),
                "{what}: {:?}",
                hl.reason()
            );
            assert_eq!(hl.count(ErrorKind::Chain), 1);
        }
        // An impossible available index.
        let hl = DeviceHealth::new("test");
        let mut tq = TestQueue::new(&mem, 32);
        let mut q: Queue = tq.queue();
        for _ in 0..40 {
            tq.make_available(0);
        }
        assert_eq!(net.process_tx(&mem, &mut q, &hl), QueueOutcome::default());
        assert!(hl.reason().unwrap().starts_with("ring: available index 40"));
    });
}

#[test]
fn rx_delivers_frames_skips_short_buffers_breaks_on_bad_chains_and_defers() {
    in_netns(|ns| {
        ns.tap("et0", "10.77.0.1");
        run(&[
            "ip",
            "neigh",
            "add",
            "10.77.0.2",
            "lladdr",
            "06:00:ac:10:00:02",
            "dev",
            "et0",
            "nud",
            "permanent",
        ]);
        let mut net = Net::new(params("et0")).unwrap();
        let mem = test_memory();
        let hl = DeviceHealth::new("test");
        let mut tq = TestQueue::new(&mem, 32);
        let mut q = tq.queue();

        // Nothing on the TAP: nothing happens.
        assert_eq!(net.process_rx(&mem, &mut q, &hl), QueueOutcome::default());

        send_to_guest(&net, b"hello-rx");
        tq.add_chain(&[(RX_BUF, 100, true)]); // shorter than a 1500-byte-MTU frame
        // A good chain: the header and the frame's start in one buffer, the rest in another.
        tq.add_chain(&[(RX_BUF + 0x1000, 40, true), (RX_BUF + 0x2000, 1486, true)]);
        let out = net.process_rx(&mem, &mut q, &hl);
        assert_eq!(out.completed, 2);
        let used: Vec<(u32, u32)> = (0..2).map(|i| tq.used(i)).collect();
        assert_eq!(used[0], (0, 0));
        let (head, len) = used[1];
        assert_eq!(head, 1);
        let frame = [tq.read(RX_BUF + 0x1000, 40), tq.read(RX_BUF + 0x2000, 1486)].concat();
        assert_eq!(rx_payload(&frame[..len as usize]), b"hello-rx");
        assert_eq!(net.stats().rx_bad_chains, 1);
        assert!(!net.rx_deferred());
        assert!(!hl.is_broken());
        assert_eq!(hl.count(ErrorKind::Request), 1);

        // Chains no driver builds break the device; the frame stays deferred.
        send_to_guest(&net, b"waiting");
        type Setup = Box<dyn Fn(&mut TestQueue<'_>)>;
        let cases: Vec<(&str, Setup)> = vec![
            (
                "device-readable buffer in an RX chain",
                Box::new(|tq| {
                    tq.add_chain(&[(RX_BUF, 2000, false)]);
                }),
            ),
            (
                "outside guest memory",
                Box::new(|tq| {
                    tq.add_chain(&[(OUTSIDE, 2000, true)]);
                }),
            ),
            (
                "loop",
                Box::new(|tq| {
                    tq.set_desc(10, RX_BUF, 2000, NEXT | WRITE, 10);
                    tq.make_available(10);
                }),
            ),
        ];
        for (what, setup) in cases {
            let hl = DeviceHealth::new("test");
            let mut tq = TestQueue::at(&mem, 0x8000, 32);
            let mut q = tq.queue();
            setup(&mut tq);
            tq.add_chain(&[(RX_BUF + 0x3000, 1526, true)]);
            assert_eq!(net.process_rx(&mem, &mut q, &hl).completed, 0, "{what}");
            assert_eq!(tq.used_idx(), 0, "{what}");
            assert!(
                hl.reason().is_some_and(|r| r.contains(what)),
                "{what}: {:?}",
                hl.reason()
            );
            assert!(net.rx_deferred(), "{what}");
        }
        // The frame reaches a healthy queue.
        {
            let mut tq = TestQueue::at(&mem, 0xc000, 32);
            let mut q = tq.queue();
            tq.add_chain(&[(RX_BUF + 0x4000, 1526, true)]);
            assert_eq!(net.process_rx(&mem, &mut q, &hl).completed, 1);
            let (_, len) = tq.used(0);
            assert_eq!(
                rx_payload(&tq.read(RX_BUF + 0x4000, len as usize)),
                b"waiting"
            );
        }

        // No RX buffer: the frame waits, the TAP need not be watched.
        send_to_guest(&net, b"second");
        assert_eq!(net.process_rx(&mem, &mut q, &hl).completed, 0);
        assert!(net.rx_deferred());
        assert!(!net.wants_tap_reads());
        tq.add_chain(&[(RX_BUF + 0x3000, 1526, true)]);
        assert_eq!(net.process_rx(&mem, &mut q, &hl).completed, 1);
        let (_, len) = tq.used(2);
        assert_eq!(
            rx_payload(&tq.read(RX_BUF + 0x3000, len as usize)),
            b"second"
        );
        assert!(net.wants_tap_reads());
        assert_eq!(net.stats().rx_frames, 3);
    });
}

fn ops_limit(size: u64) -> RateLimiterConfig {
    RateLimiterConfig {
        bandwidth: None,
        ops: Some(TokenBucketConfig {
            size,
            one_time_burst: None,
            refill_time: 50,
        }),
    }
}

#[test]
fn rx_and_tx_rate_limits_hold_frames_until_the_timer_fires() {
    in_netns(|ns| {
        let tap_mac = ns.tap("et0", "10.77.0.1");
        run(&[
            "ip",
            "neigh",
            "add",
            "10.77.0.2",
            "lladdr",
            "06:00:ac:10:00:02",
            "dev",
            "et0",
            "nud",
            "permanent",
        ]);
        let sock = udp_socket("10.77.0.1:6000");
        let dst = SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 1), 6000);
        let (clock, t) = Clock::manual(0);
        let frame = udp_frame(tap_mac, dst, b"tx-1");
        let mut net = Net::new(NetParams {
            rx_rate_limiter: Some(ops_limit(1)),
            tx_rate_limiter: Some(RateLimiterConfig {
                bandwidth: Some(TokenBucketConfig {
                    size: frame.len() as u64,
                    one_time_burst: None,
                    refill_time: 50,
                }),
                ops: None,
            }),
            clock,
            ..params("et0")
        })
        .unwrap();
        let mem = test_memory();
        let hl = DeviceHealth::new("test");
        let mut rxt = TestQueue::at(&mem, 0, 16);
        let mut txt = TestQueue::at(&mem, 0x8000, 16);
        let (mut rxq, mut txq) = (rxt.queue(), txt.queue());

        // TX: one frame's worth of bandwidth; the second frame waits in the queue.
        queue_tx(&mut txt, TX_BUF, &frame);
        queue_tx(&mut txt, TX_BUF + 0x1000, &udp_frame(tap_mac, dst, b"tx-2"));
        assert_eq!(
            net.process_tx(&mem, &mut txq, &hl),
            QueueOutcome {
                completed: 1,
                throttled: true,
                more: false,
            }
        );
        assert_eq!(recv(&sock).0, b"tx-1");
        assert_eq!(txt.used_idx(), 1);
        assert_eq!(net.tx_rate_limiter().bandwidth().unwrap().budget(), 0);
        assert_eq!(
            net.process_tx(&mem, &mut txq, &hl).completed,
            0,
            "still blocked"
        );
        t.fetch_add(50_000_000, Ordering::AcqRel);
        wait_for_timer(net.tx_rate_limiter());
        assert!(net.on_tx_limiter_timer());
        assert_eq!(net.process_tx(&mem, &mut txq, &hl).completed, 1);
        assert_eq!(recv(&sock).0, b"tx-2");

        // RX: one op per 50 ms; the second frame is deferred until the timer fires.
        rxt.add_chain(&[(RX_BUF, 1526, true)]);
        rxt.add_chain(&[(RX_BUF + 0x1000, 1526, true)]);
        send_to_guest(&net, b"rx-1");
        assert_eq!(net.process_rx(&mem, &mut rxq, &hl).completed, 1);
        assert_eq!(net.rx_rate_limiter().ops().unwrap().budget(), 0);
        send_to_guest(&net, b"rx-2");
        let out = net.process_rx(&mem, &mut rxq, &hl);
        assert_eq!(
            out,
            QueueOutcome {
                completed: 0,
                throttled: true,
                more: false,
            }
        );
        assert!(net.rx_deferred());
        assert_eq!(rxt.used_idx(), 1);
        assert_eq!(
            net.process_rx(&mem, &mut rxq, &hl).completed,
            0,
            "still blocked"
        );
        t.fetch_add(50_000_000, Ordering::AcqRel);
        wait_for_timer(net.rx_rate_limiter());
        assert!(net.on_rx_limiter_timer());
        assert_eq!(net.process_rx(&mem, &mut rxq, &hl).completed, 1);
        let (_, len) = rxt.used(1);
        assert_eq!(
            rx_payload(&rxt.read(RX_BUF + 0x1000, len as usize)),
            b"rx-2"
        );
        assert_eq!(
            net.stats().rx_throttled,
            2,
            "refused, then refused again while blocked"
        );
    });
}

#[test]
fn restore_swaps_the_tap_and_keeps_limiter_state() {
    in_netns(|ns| {
        ns.tap("et0", "10.77.0.1");
        let tap1_mac = ns.tap("et1", "10.78.0.1");
        let sock = udp_socket("10.78.0.1:6000");
        let (clock, _) = Clock::manual(0);
        let p = NetParams {
            tx_rate_limiter: Some(ops_limit(10)),
            clock,
            ..params("et0")
        };
        let mut net = Net::new(p.clone()).unwrap();
        let mem = test_memory();
        let hl = DeviceHealth::new("test");
        let mut tq = TestQueue::new(&mem, 16);
        let mut q = tq.queue();
        // Before the snapshot: a frame out of et0 to a port nobody listens on.
        let nowhere = SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 1), 6999);
        queue_tx(&mut tq, TX_BUF, &udp_frame(tap1_mac, nowhere, b"x"));
        let dst = SocketAddrV4::new(Ipv4Addr::new(10, 78, 0, 1), 6000);
        net.process_tx(&mem, &mut q, &hl);
        let mut w = Writer::default();
        net.encode_state(&mut w);
        let bytes = w.into_vec();

        // The original still holds et0: restoring onto it is refused as busy.
        let err = Net::restore(p.clone(), &mut Reader::new(&bytes)).unwrap_err();
        assert!(err.to_string().contains("busy"), "{err}");
        // A different MAC is refused: the guest knows its MAC.
        let other = NetParams {
            guest_mac: Some([2, 0, 0, 0, 0, 1]),
            host_dev_name: "et1".into(),
            ..p.clone()
        };
        assert!(Net::restore(other, &mut Reader::new(&bytes)).is_err());

        // network_overrides: the same interface on et1.
        let mut back = Net::restore(
            NetParams {
                host_dev_name: "et1".into(),
                ..p.clone()
            },
            &mut Reader::new(&bytes),
        )
        .unwrap();
        assert_eq!(back.tap().name(), "et1");
        assert_eq!(back.tx_rate_limiter().ops().unwrap().budget(), 9);
        let mut tq = TestQueue::new(&mem, 16);
        let mut q = tq.queue();
        queue_tx(&mut tq, TX_BUF, &udp_frame(tap1_mac, dst, b"after-restore"));
        assert_eq!(back.process_tx(&mem, &mut q, &hl).completed, 1);
        assert_eq!(recv(&sock).0, b"after-restore");
        for cut in 0..bytes.len() {
            assert!(Net::restore(p.clone(), &mut Reader::new(&bytes[..cut])).is_err());
        }
    });
}

#[test]
fn tap_open_errors_are_specific() {
    in_netns(|_| {
        let e = Net::new(params("nosuchtap0")).unwrap_err();
        assert!(
            e.to_string()
                .contains("no network interface named \"nosuchtap0\""),
            "{e}"
        );
        let e = Net::new(params("lo")).unwrap_err();
        assert!(e.to_string().contains("not a TAP device"), "{e}");
        let e = Net::new(params("a/b")).unwrap_err();
        assert!(e.to_string().contains("invalid TAP device name"), "{e}");
        let e = Net::new(params("0123456789abcdef")).unwrap_err();
        assert!(e.to_string().contains("invalid TAP device name"), "{e}");
        assert_eq!(parse_mac("06:00:ac:10:00:02"), Some(GUEST_MAC));
        for bad in [
            "06:00:ac:10:00",
            "06:00:ac:10:00:02:03",
            "0g:00:00:00:00:00",
            "6:0:0:0:0:0",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    });
}

#[test]
fn device_face_pauses_the_tap_while_a_frame_waits_for_buffers() {
    use crate::devices::virtio::testing::Harness;
    use crate::devices::virtio::{DeviceEvent, TYPE_NET, VirtioDevice};

    in_netns(|ns| {
        let tap_mac = ns.tap("et0", "10.77.0.1");
        run(&[
            "ip",
            "neigh",
            "add",
            "10.77.0.2",
            "lladdr",
            "06:00:ac:10:00:02",
            "dev",
            "et0",
            "nud",
            "permanent",
        ]);
        let sock = udp_socket("10.77.0.1:6000");
        let mut net = Net::new(params("et0")).unwrap();
        assert_eq!(
            (net.device_type(), VirtioDevice::id(&net)),
            (TYPE_NET, "eth0")
        );
        let mut h = Harness::new(&[QUEUE_SIZE, QUEUE_SIZE]);
        let mut rxq = h.guest_queue(0, 0, 16);
        let mut txq = h.guest_queue(1, 0x1000, 16);
        net.activate(&mut h.ctx()).unwrap();

        // A frame arrives with no RX buffer: delivered nowhere, the TAP stops being watched.
        send_to_guest(&net, b"early");
        let events = h.poll(5_000);
        assert_eq!(events.len(), 1, "{events:?}");
        let (token, readiness) = events[0];
        assert!(readiness.readable);
        net.handle_event(DeviceEvent::Fd { token, readiness }, &mut h.ctx());
        assert!(net.rx_deferred());
        assert!(
            h.poll(50).is_empty(),
            "a deferred frame must not keep waking the thread"
        );

        // The driver posts a buffer and notifies: the frame goes in, the TAP is watched again.
        rxq.add_chain(&h.mem, &[(RX_BUF, 1526, true)]);
        net.handle_event(DeviceEvent::Queue(0), &mut h.ctx());
        let (head, len) = rxq.next_used(&h.mem).unwrap();
        assert_eq!(head, 0);
        let mut frame = vec![0u8; len as usize];
        vm_memory::Bytes::read_slice(&h.mem, &mut frame, vm_memory::GuestAddress(RX_BUF)).unwrap();
        assert_eq!(rx_payload(&frame), b"early");
        assert_eq!(h.interrupts(), 1);
        send_to_guest(&net, b"watched");
        assert_eq!(h.poll(5_000).len(), 1, "TAP watched again");

        // TX through the queue notification.
        let dst = SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 1), 6000);
        let f = udp_frame(tap_mac, dst, b"from-guest");
        vm_memory::Bytes::write_slice(
            &h.mem,
            &[0u8; VNET_HDR_LEN],
            vm_memory::GuestAddress(TX_BUF),
        )
        .unwrap();
        vm_memory::Bytes::write_slice(&h.mem, &f, vm_memory::GuestAddress(TX_BUF + 0x100)).unwrap();
        txq.add_chain(
            &h.mem,
            &[(TX_BUF, 12, false), (TX_BUF + 0x100, f.len() as u32, false)],
        );
        net.handle_event(DeviceEvent::Queue(1), &mut h.ctx());
        assert_eq!(txq.next_used(&h.mem), Some((0, 0)));
        assert_eq!(recv(&sock).0, b"from-guest");

        // After a reset nothing of the device is watched.
        net.reset(&h.events);
        assert!(h.poll(50).is_empty());
    });
}
