//! Queue-level tests of the vsock device: the test plays the guest driver (descriptors in test
//! memory) and the host (Unix sockets), and drives the device's events by hand.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress};

use super::conn::CONN_BUF;
use super::packet::{HDR_LEN, PacketHeader, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM, op};
use super::*;
use crate::devices::virtio::health::ErrorKind;
use crate::devices::virtio::testing::{GuestQueue, Harness};

const CID: u64 = 3;
const RX_BUF: u64 = 0x10_0000;
const TX_BUF: u64 = 0x20_0000;
const EV_BUF: u64 = 0x30_0000;
const BUF: u32 = 4096;

struct Rig {
    h: Harness,
    dev: Vsock,
    rxq: GuestQueue,
    txq: GuestQueue,
    evq: GuestQueue,
    next_rx: u64,
    next_tx: u64,
    _dir: tempfile::TempDir,
    uds: std::path::PathBuf,
}

impl Rig {
    fn new() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let cfg = VsockConfig {
            guest_cid: CID as u32,
            uds_path: uds.to_str().unwrap().into(),
            vsock_id: None,
        };
        let dev = Vsock::new(&cfg).unwrap();
        let mut h = Harness::new(&QUEUE_SIZES);
        let rxq = h.guest_queue(RXQ, 0x1000, 64);
        let txq = h.guest_queue(TXQ, 0x3000, 64);
        let evq = h.guest_queue(EVQ, 0x5000, 4);
        let mut rig = Rig {
            h,
            dev,
            rxq,
            txq,
            evq,
            next_rx: 0,
            next_tx: 0,
            _dir: dir,
            uds,
        };
        rig.dev.activate(&mut rig.h.ctx()).unwrap();
        rig.event(DeviceEvent::Activated);
        rig
    }

    fn event(&mut self, e: DeviceEvent) {
        let Rig { h, dev, .. } = self;
        dev.handle_event(e, &mut h.ctx());
    }

    /// Delivers every ready host-side event to the device (waits up to `ms` for the first).
    fn pump(&mut self, ms: i32) {
        let mut wait = ms;
        loop {
            let ready = self.h.poll(wait);
            if ready.is_empty() {
                return;
            }
            for (token, readiness) in ready {
                self.event(DeviceEvent::Fd { token, readiness });
            }
            wait = 0;
        }
    }

    /// Posts `n` RX buffers of `len` bytes.
    fn post_rx(&mut self, n: usize, len: u32) {
        for _ in 0..n {
            let addr = RX_BUF + (self.next_rx % 64) * u64::from(BUF);
            self.next_rx += 1;
            self.rxq.add_chain(&self.h.mem, &[(addr, len, true)]);
        }
        self.event(DeviceEvent::Queue(RXQ as u16));
    }

    /// Packets the device delivered on RX (empty buffers returned are skipped).
    fn rx_packets(&mut self) -> Vec<(PacketHeader, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some((id, len)) = self.rxq.next_used(&self.h.mem) {
            if len == 0 {
                continue;
            }
            let addr = self.rxq_addr(id);
            let mut b = vec![0u8; len as usize];
            self.h.mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
            let hdr = PacketHeader::from_bytes(b[..HDR_LEN].try_into().unwrap());
            out.push((hdr, b[HDR_LEN..].to_vec()));
        }
        out
    }

    fn rxq_addr(&self, id: u16) -> u64 {
        let mut d = [0u8; 8];
        self.h
            .mem
            .read_slice(&mut d, GuestAddress(self.rxq.desc + 16 * u64::from(id)))
            .unwrap();
        u64::from_le_bytes(d)
    }

    /// The guest sends a packet (header and payload split over two descriptors).
    fn send(&mut self, hdr: PacketHeader, data: &[u8]) {
        let addr = TX_BUF + (self.next_tx % 64) * u64::from(BUF);
        self.next_tx += 1;
        self.h
            .mem
            .write_slice(&hdr.to_bytes(), GuestAddress(addr))
            .unwrap();
        self.h
            .mem
            .write_slice(data, GuestAddress(addr + 64))
            .unwrap();
        let mut chain = vec![(addr, HDR_LEN as u32, false)];
        if !data.is_empty() {
            chain.push((addr + 64, data.len() as u32, false));
        }
        self.txq.add_chain(&self.h.mem, &chain);
        self.event(DeviceEvent::Queue(TXQ as u16));
        while self.txq.next_used(&self.h.mem).is_some() {}
    }

    fn guest_hdr(&self, src_port: u32, dst_port: u32, op: u16) -> PacketHeader {
        PacketHeader {
            src_cid: CID,
            dst_cid: 2,
            src_port,
            dst_port,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 1 << 20,
            fwd_cnt: 0,
        }
    }

    /// A host-initiated connection to guest `port`, accepted by the guest.
    fn host_connect(&mut self, port: u32) -> (UnixStream, u32) {
        let mut s = UnixStream::connect(&self.uds).unwrap();
        s.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
        self.post_rx(4, BUF);
        self.pump(1000);
        let pkts = self.rx_packets();
        let (req, _) = pkts
            .iter()
            .find(|(h, _)| h.op == op::REQUEST)
            .expect("a REQUEST");
        assert_eq!((req.dst_cid, req.dst_port, req.src_cid), (CID, port, 2));
        let host_port = req.src_port;
        let mut resp = self.guest_hdr(port, host_port, op::RESPONSE);
        resp.buf_alloc = 8192;
        self.send(resp, &[]);
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut line = [0u8; 32];
        let n = s.read(&mut line).unwrap();
        assert_eq!(&line[..n], format!("OK {host_port}\n").as_bytes());
        (s, host_port)
    }
}

#[test]
fn host_connection_data_both_ways_and_shutdown() {
    let mut r = Rig::new();
    let (mut s, hp) = r.host_connect(52);
    // Host -> guest, bounded by the guest's credit (8 KiB).
    s.write_all(&[5u8; 20_000]).unwrap();
    r.post_rx(16, BUF);
    r.pump(1000);
    let got: usize = r
        .rx_packets()
        .iter()
        .filter(|(h, _)| h.op == op::RW)
        .map(|(h, d)| {
            assert_eq!(h.len as usize, d.len());
            assert_eq!((h.buf_alloc, h.src_port, h.dst_port), (CONN_BUF, hp, 52));
            d.len()
        })
        .sum();
    assert_eq!(got, 8192, "the device sent beyond the guest's credit");
    // The guest consumed it all: more flows.
    let mut upd = r.guest_hdr(52, hp, op::CREDIT_UPDATE);
    upd.buf_alloc = 8192;
    upd.fwd_cnt = 8192;
    r.send(upd, &[]);
    r.post_rx(16, BUF);
    r.pump(500);
    let more: usize = r.rx_packets().iter().map(|(_, d)| d.len()).sum();
    assert_eq!(more, 8192);
    // Guest -> host.
    let mut rw = r.guest_hdr(52, hp, op::RW);
    rw.len = 5;
    r.send(rw, b"hello");
    let mut b = [0u8; 5];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"hello");
    // The guest closes both ways: the device answers RST and the host sees EOF.
    let mut shut = r.guest_hdr(52, hp, op::SHUTDOWN);
    shut.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    r.send(shut, &[]);
    r.post_rx(2, BUF);
    assert!(r.rx_packets().iter().any(|(h, _)| h.op == op::RST));
    // EOF, or a reset since the host's unread bytes were dropped with the stream.
    let mut rest = Vec::new();
    match s.read_to_end(&mut rest) {
        Ok(_) => {}
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
    }
    assert_eq!(r.dev.muxer.connection_count(), 0);
}

#[test]
fn host_close_sends_shutdown_and_guest_rst_ends_it() {
    let mut r = Rig::new();
    let (s, hp) = r.host_connect(52);
    drop(s);
    r.post_rx(4, BUF);
    r.pump(500);
    let pkts = r.rx_packets();
    let shut = pkts.iter().find(|(h, _)| h.op == op::SHUTDOWN).unwrap();
    assert_eq!(shut.0.flags, SHUTDOWN_RCV | SHUTDOWN_SEND);
    r.send(r.guest_hdr(52, hp, op::RST), &[]);
    assert_eq!(r.dev.muxer.connection_count(), 0);
}

#[test]
fn guest_initiated_connections() {
    let mut r = Rig::new();
    let mut side = r.uds.clone().into_os_string();
    side.push("_77");
    let listener = UnixListener::bind(&side).unwrap();
    r.post_rx(4, BUF);
    r.send(r.guest_hdr(1234, 77, op::REQUEST), &[]);
    let pkts = r.rx_packets();
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].0.op, op::RESPONSE);
    assert_eq!((pkts[0].0.src_port, pkts[0].0.dst_port), (77, 1234));
    let (mut host, _) = listener.accept().unwrap();
    let mut rw = r.guest_hdr(1234, 77, op::RW);
    rw.len = 3;
    r.send(rw, b"abc");
    let mut b = [0u8; 3];
    host.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"abc");
    host.write_all(b"xyz").unwrap();
    r.post_rx(2, BUF);
    r.pump(500);
    let pkts = r.rx_packets();
    assert_eq!(pkts.last().unwrap().1, b"xyz");
    // Nobody listens on port 78: RST.
    r.send(r.guest_hdr(1235, 78, op::REQUEST), &[]);
    assert_eq!(r.rx_packets()[0].0.op, op::RST);
    // A packet for no connection: RST; an RST for no connection: nothing.
    r.send(r.guest_hdr(9, 9, op::RW), &[]);
    r.send(r.guest_hdr(9, 9, op::RST), &[]);
    let pkts = r.rx_packets();
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].0.op, op::RST);
}

#[test]
fn guest_beyond_its_credit_is_reset() {
    let mut r = Rig::new();
    let (s, hp) = r.host_connect(52);
    // The host never reads: the guest may send at most CONN_BUF beyond what the socket
    // buffer takes; keep sending until the device resets the connection.
    s.set_nonblocking(true).unwrap();
    let chunk = vec![1u8; 60_000];
    let mut reset = false;
    for _ in 0..200 {
        let mut rw = r.guest_hdr(52, hp, op::RW);
        rw.len = chunk.len() as u32;
        r.post_rx(2, BUF);
        r.send(rw, &chunk);
        if r.rx_packets().iter().any(|(h, _)| h.op == op::RST) {
            reset = true;
            break;
        }
    }
    assert!(reset, "a guest overrunning its credit was never reset");
    assert_eq!(r.dev.muxer.connection_count(), 0);
}

#[test]
fn bad_packets_are_dropped_and_counted() {
    let mut r = Rig::new();
    let (_s, hp) = r.host_connect(52);
    let mem = r.h.mem.clone();
    // A header claiming more payload than the chain holds.
    let mut h = r.guest_hdr(52, hp, op::RW);
    h.len = 10_000;
    mem.write_slice(&h.to_bytes(), GuestAddress(TX_BUF))
        .unwrap();
    r.txq.add_chain(&mem, &[(TX_BUF, HDR_LEN as u32, false)]);
    // A header cut short.
    r.txq.add_chain(&mem, &[(TX_BUF, 10, false)]);
    r.event(DeviceEvent::Queue(TXQ as u16));
    let mut used = 0;
    while r.txq.next_used(&mem).is_some() {
        used += 1;
    }
    assert_eq!(used, 2, "every bad packet is returned");
    assert_eq!(r.h.health.count(ErrorKind::Request), 2);
    assert!(!r.h.health.is_broken());
    assert_eq!(r.dev.muxer.connection_count(), 1);

    // RX buffers too small for a header come back empty; a good one gets the packet.
    let mut r = Rig::new();
    let mem = r.h.mem.clone();
    r.send(r.guest_hdr(7, 7, op::RW), &[]); // makes an RST pending
    r.rxq.add_chain(&mem, &[(RX_BUF, 8, true)]);
    r.rxq.add_chain(&mem, &[(RX_BUF, BUF, true)]);
    r.event(DeviceEvent::Queue(RXQ as u16));
    let mut lens = Vec::new();
    while let Some((_, len)) = r.rxq.next_used(&mem) {
        lens.push(len);
    }
    assert_eq!(lens, vec![0, HDR_LEN as u32]);
    assert_eq!(r.h.health.count(ErrorKind::Request), 1);
    assert!(!r.h.health.is_broken());
}

/// Runs `f` on another thread and fails if it does not return within 10 s (a device that
/// spins would otherwise hang the test run).
fn within_10s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the device did not return within 10 s (spinning?)")
}

#[test]
fn impossible_avail_index_breaks_the_device_instead_of_spinning() {
    // The case: TX avail.idx 40 on a 32-entry queue.
    let r = within_10s(|| {
        let mut r = Rig::new();
        r.txq = r.h.guest_queue(TXQ, 0x8000, 32);
        let mem = r.h.mem.clone();
        r.txq.set_avail_idx(&mem, 40);
        r.event(DeviceEvent::Queue(TXQ as u16));
        // Delivered again (the transport would not), it still returns at once.
        r.event(DeviceEvent::Queue(TXQ as u16));
        r
    });
    assert_eq!(
        r.h.health.reason().as_deref(),
        Some(
            "ring: TX queue: available index 40 is 40 entries ahead of the device's 0 in a queue \
             of 32"
        )
    );
    assert_eq!(
        r.h.health.count(ErrorKind::Ring),
        2,
        "counted each time it was seen"
    );
    assert_eq!(r.h.health.breaks(), 1);
    assert_eq!(r.txq.used_idx(&r.h.mem), 0);

    // The same on RX, with a packet for the guest waiting.
    let r = within_10s(|| {
        let mut r = Rig::new();
        let mut s = UnixStream::connect(&r.uds).unwrap();
        s.write_all(b"CONNECT 52\n").unwrap();
        let mem = r.h.mem.clone();
        r.rxq.set_avail_idx(&mem, 65 + 7);
        r.pump(1000);
        r
    });
    assert!(
        r.h.health
            .reason()
            .is_some_and(|m| m.starts_with("ring: RX queue: available index 72")),
        "{:?}",
        r.h.health.reason()
    );
}

#[test]
fn malformed_chains_break_the_device() {
    type Setup = fn(&mut Rig);
    let cases: [(&str, Setup); 5] = [
        ("outside guest memory", |r| {
            let mem = r.h.mem.clone();
            r.txq.add_chain(&mem, &[(1 << 40, 64, false)]);
            r.event(DeviceEvent::Queue(TXQ as u16));
        }),
        ("loop", |r| {
            let mem = r.h.mem.clone();
            let head = 60;
            r.txq.write_desc(&mem, head, TX_BUF, 44, 1, head + 1);
            r.txq.write_desc(&mem, head + 1, TX_BUF, 44, 1, head);
            r.txq.publish(&mem, head);
            r.event(DeviceEvent::Queue(TXQ as u16));
        }),
        ("device-writable buffer in a TX packet", |r| {
            let mem = r.h.mem.clone();
            r.txq
                .add_chain(&mem, &[(TX_BUF, 44, false), (TX_BUF + 64, 64, true)]);
            r.event(DeviceEvent::Queue(TXQ as u16));
        }),
        ("RX chain 0: buffer", |r| {
            r.send(r.guest_hdr(7, 7, op::RW), &[]); // makes an RST pending
            let mem = r.h.mem.clone();
            r.rxq.add_chain(&mem, &[(1 << 40, 4096, true)]);
            r.event(DeviceEvent::Queue(RXQ as u16));
        }),
        ("device-readable buffer in an RX buffer", |r| {
            r.send(r.guest_hdr(7, 7, op::RW), &[]);
            let mem = r.h.mem.clone();
            r.rxq
                .add_chain(&mem, &[(RX_BUF, 64, false), (RX_BUF + 64, 4096, true)]);
            r.event(DeviceEvent::Queue(RXQ as u16));
        }),
    ];
    for (what, case) in cases {
        let mut r = Rig::new();
        case(&mut r);
        let reason = r.h.health.reason();
        assert!(
            reason
                .as_ref()
                .is_some_and(|m| m.starts_with("chain: ") && m.contains(what)),
            "{what}: {reason:?}"
        );
        let mem = r.h.mem.clone();
        assert!(r.rxq.next_used(&mem).is_none(), "{what}");
    }
}

#[test]
fn snapshot_with_a_bad_event_queue_breaks_the_device() {
    let mut r = Rig::new();
    r.evq = r.h.guest_queue(EVQ, 0x5000, 4);
    let mem = r.h.mem.clone();
    r.evq.set_avail_idx(&mem, 9);
    let Rig { h, dev, .. } = &mut r;
    dev.prepare_save(&mut h.ctx());
    assert!(
        r.h.health
            .reason()
            .is_some_and(|m| m.starts_with("ring: event queue")),
        "{:?}",
        r.h.health.reason()
    );
    // No event buffer at all is the driver's mistake, not a broken device.
    let mut r = Rig::new();
    let Rig { h, dev, .. } = &mut r;
    dev.prepare_save(&mut h.ctx());
    assert!(!r.h.health.is_broken());
    assert_eq!(r.h.health.count(ErrorKind::Driver), 1);
}

#[test]
fn rx_budget_kicks_the_device_again() {
    let mut r = Rig::new();
    r.dev.rx_budget = 3;
    let mem = r.h.mem.clone();
    // Five RSTs for the guest (unknown connections), five buffers.
    for port in 0..5 {
        r.send(r.guest_hdr(1000 + port, 7, op::RW), &[]);
    }
    for i in 0..5u64 {
        r.rxq
            .add_chain(&mem, &[(RX_BUF + i * u64::from(BUF), 64, true)]);
    }
    r.event(DeviceEvent::Queue(RXQ as u16));
    let mut used = 0;
    while r.rxq.next_used(&mem).is_some() {
        used += 1;
    }
    assert_eq!(used, 3);
    let ready = r.h.poll(0);
    assert!(
        ready.iter().any(|(t, _)| *t == super::muxer::TOKEN_KICK),
        "{ready:?}"
    );
    r.pump(0);
    while r.rxq.next_used(&mem).is_some() {
        used += 1;
    }
    assert_eq!(used, 5);
}

#[test]
fn snapshot_publishes_transport_reset_and_gates_rx() {
    let mut r = Rig::new();
    let (mut s, _hp) = r.host_connect(52);
    let mem = r.h.mem.clone();
    r.evq.add_chain(&mem, &[(EV_BUF, 8, true)]);
    mem.write_obj(0xffff_ffffu32, GuestAddress(EV_BUF)).unwrap();
    let _ = r.h.interrupts();
    {
        let Rig { h, dev, .. } = &mut r;
        dev.prepare_save(&mut h.ctx());
    }
    assert_eq!(r.evq.next_used(&mem), Some((0, 4)));
    assert_eq!(mem.read_obj::<u32>(GuestAddress(EV_BUF)).unwrap(), 0);
    assert!(r.h.interrupts() > 0);
    // The host connection was closed.
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = Vec::new();
    assert!(s.read_to_end(&mut b).is_ok());
    // The state carries the gate.
    let mut w = Writer::default();
    r.dev.save_state(&mut w);
    let state = w.into_vec();
    assert_eq!(state[8], 1);
    // New connections are held back until the guest acknowledges the event...
    let mut s2 = UnixStream::connect(&r.uds).unwrap();
    s2.write_all(b"CONNECT 52\n").unwrap();
    r.post_rx(2, BUF);
    r.pump(500);
    assert!(r.rx_packets().is_empty());
    // ...by notifying the event queue.
    r.evq.add_chain(&mem, &[(EV_BUF, 8, true)]);
    r.event(DeviceEvent::Queue(EVQ as u16));
    assert_eq!(r.rx_packets()[0].0.op, op::REQUEST);
}

#[test]
fn restore_checks_its_state() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = VsockConfig {
        guest_cid: 3,
        uds_path: dir.path().join("r.sock").to_str().unwrap().into(),
        vsock_id: None,
    };
    let mut w = Writer::default();
    w.u64(3);
    w.u8(1);
    w.u32(1 << 30);
    let good = w.into_vec();
    let v = Vsock::restore(&cfg, &good).unwrap();
    assert!(v.pending_event_ack);
    drop(v);
    assert!(Vsock::restore(&cfg, &good[..5]).is_err());
    let mut wrong_cid = good.clone();
    wrong_cid[0] = 9;
    assert!(Vsock::restore(&cfg, &wrong_cid).is_err());
    // The socket file is removed with the device.
    assert!(!dir.path().join("r.sock").exists());
}

#[test]
fn tx_budget_kicks_the_device_again() {
    let mut r = Rig::new();
    // A full 256-entry TX ring of RSTs for unknown connections (ignored by the device).
    r.txq = r.h.guest_queue(TXQ, 0x8000, 256);
    let mem = r.h.mem.clone();
    for i in 0..256u64 {
        let addr = TX_BUF + i * 64;
        let h = r.guest_hdr(5, 5, op::RST);
        mem.write_slice(&h.to_bytes(), GuestAddress(addr)).unwrap();
        r.txq.add_chain(&mem, &[(addr, HDR_LEN as u32, false)]);
    }
    r.event(DeviceEvent::Queue(TXQ as u16));
    let mut used = 0;
    while r.txq.next_used(&mem).is_some() {
        used += 1;
    }
    assert_eq!(used, 256);
    // The budget ran out: the device asked to be woken for the rest.
    let ready = r.h.poll(0);
    assert!(
        ready.iter().any(|(t, _)| *t == super::muxer::TOKEN_KICK),
        "{ready:?}"
    );
    r.pump(0);
}

#[test]
fn malformed_reply_from_the_guest_fails_only_that_client() {
    use ember_agent_proto::{AgentClient, ClientError};
    let mut r = Rig::new();
    let uds = r.uds.clone();
    let client = std::thread::spawn(move || {
        AgentClient::connect(&uds, 52, Duration::from_secs(10)).map(|_| ())
    });
    // Play the guest: accept, read the Hello, answer with a frame whose length prefix is 5.
    r.post_rx(8, BUF);
    let mut hp = None;
    let mut hello = Vec::new();
    for _ in 0..200 {
        r.pump(20);
        for (h, d) in r.rx_packets() {
            match h.op {
                op::REQUEST => {
                    hp = Some(h.src_port);
                    let mut resp = r.guest_hdr(52, h.src_port, op::RESPONSE);
                    resp.buf_alloc = 8192;
                    r.send(resp, &[]);
                }
                op::RW => hello.extend(d),
                _ => {}
            }
        }
        if hello.len() >= 16 {
            break;
        }
        r.post_rx(2, BUF);
    }
    let hp = hp.expect("the host connected");
    assert_eq!(hello[5], 0x01, "the host's first frame is Hello");
    let mut rw = r.guest_hdr(52, hp, op::RW);
    rw.len = 16;
    rw.fwd_cnt = hello.len() as u32;
    let mut bad = [0u8; 16];
    bad[0] = 5;
    r.send(rw, &bad);
    let err = client.join().unwrap().unwrap_err();
    assert!(matches!(err, ClientError::Malformed { .. }), "{err}");
    // The client closed its end: the device tells the guest.
    r.post_rx(2, BUF);
    r.pump(1000);
    assert!(r.rx_packets().iter().any(|(h, _)| h.op == op::SHUTDOWN));
}

#[test]
fn slow_host_reader_gets_every_byte_within_the_credit() {
    let mut r = Rig::new();
    let (mut s, hp) = r.host_connect(52);
    s.set_nonblocking(true).unwrap();
    let total = 1usize << 20;
    let data: Vec<u8> = (0..total).map(|i| (i % 253) as u8).collect();
    let (mut sent, mut got, mut fwd) = (0usize, Vec::with_capacity(total), 0u32);
    let (mut rounds, mut outstanding) = (0, 0);
    while got.len() < total {
        rounds += 1;
        assert!(
            rounds < 100_000,
            "stalled at {} of {total} bytes",
            got.len()
        );
        // The guest sends as far as the device's credit allows.
        let credit = CONN_BUF as usize - (sent - fwd as usize);
        let n = credit.min(4000).min(total - sent);
        if n > 0 {
            let mut rw = r.guest_hdr(52, hp, op::RW);
            rw.len = n as u32;
            r.send(rw, &data[sent..sent + n]);
            sent += n;
        }
        // The host reads a little at a time.
        let mut b = [0u8; 1500];
        if let Ok(k) = s.read(&mut b) {
            got.extend_from_slice(&b[..k]);
        }
        // Writability and credit updates reach the guest (a few RX buffers kept posted).
        if outstanding < 8 {
            r.post_rx(2, BUF);
            outstanding += 2;
        }
        r.pump(0);
        for (h, _) in r.rx_packets() {
            outstanding -= 1;
            fwd = h.fwd_cnt;
        }
    }
    assert!(got == data, "the host received different bytes");
}
