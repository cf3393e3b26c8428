//! The probe's agent over virtio-vsock on real KVM: Firecracker's hybrid Unix-socket
//! semantics, the agent protocol end to end, many connections, malformed frames and
//! misbehaving host clients. Snapshot behaviour is in `vsock_snapshot.rs`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]

mod common;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use ember_agent_proto::frame::{Header, encode_raw_frame};
use ember_agent_proto::vsock::HybridStream;
use ember_agent_proto::{ClientError, ErrorCode, Exec, Hello, Reply, Request, Reseed};
use ember_probe_image::{AGENT_PORT, echo_output};
use sha2::Digest;

/// A booted probe with a vsock device.
fn booted(dir: &Path, name: &str) -> (VmmProcess, std::path::PathBuf, ember_probe_image::Banner) {
    let uds = dir.join(format!("{name}.vsock"));
    let vmm = spawn(dir, name, &[]);
    let mut c = vmm.client();
    boot_with_vsock(&mut c, 32, "ember.report=0", &uds);
    let banner = wait_banner(&vmm);
    (vmm, uds, banner)
}

#[test]
fn agent_answers_every_kind_of_request() {
    let dir = tempdir();
    let (vmm, uds, banner) = booted(dir.path(), "kinds");
    let mut a = agent(&uds);
    assert_eq!(a.agent().name, "ember-probe");
    assert!(a.agent().host_port.is_some_and(|p| p >= 1 << 30));
    a.ping().unwrap();
    a.ping_payload(&[7u8; 5000]).unwrap();
    let h = a.health().unwrap();
    assert_eq!(h.boot_id, ember_probe_image::health_boot_id(banner.boot_id));
    assert_eq!(h.generation, 0);

    let out = a.exec(&Exec::new(&["echo", "hi", "there"])).unwrap();
    assert_eq!(out.stdout, echo_output(&["hi", "there"]));
    assert_eq!(out.exit_code, 0);
    assert!(out.stderr.is_empty());
    let out = a.exec(&Exec::new(&["echo"])).unwrap();
    assert_eq!(out.stdout, b"\n");

    let out = a.exec(&Exec::new(&["counter"])).unwrap();
    let n: u64 = std::str::from_utf8(&out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let later: u64 = wait_for(DEFAULT_TIMEOUT, "the counter to move", || {
        let out = a.exec(&Exec::new(&["counter"])).unwrap();
        let m: u64 = std::str::from_utf8(&out.stdout)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        (m > n).then_some(m)
    });
    assert!(later > n);

    for size in [0usize, 1, 55, 64, 1000, 100_000] {
        let out = a.exec(&Exec::new(&["sha256", &size.to_string()])).unwrap();
        let digest = sha2::Sha256::digest(ember_probe_image::sha256_input(size));
        assert_eq!(
            out.stdout,
            ember_probe_image::sha256_output(&digest),
            "sha256 {size}"
        );
    }

    let err = a.exec(&Exec::new(&["rm", "-rf", "/"])).unwrap_err();
    assert!(
        matches!(err, ClientError::Agent { code, .. } if code == ErrorCode::NOT_FOUND),
        "{err}"
    );
    for bad in [
        &["sha256"][..],
        &["sha256", "x"],
        &["sha256", "99999999999"],
    ] {
        let err = a.exec(&Exec::new(bad)).unwrap_err();
        assert!(
            matches!(err, ClientError::Agent { code, .. } if code == ErrorCode::INVALID_ARGUMENT),
            "{bad:?}: {err}"
        );
    }
    a.put_file("/tmp/x", 0o644, b"data").unwrap();
    assert_eq!(a.get_file("/tmp/x", 1024).unwrap().data, b"data");
    let err = a.get_file("/tmp/missing", 1024).unwrap_err();
    assert!(
        matches!(err, ClientError::Agent { code, .. } if code == ErrorCode::NOT_FOUND),
        "{err}"
    );
    // Errors keep the connection usable.
    a.ping().unwrap();

    a.reseed(&Reseed {
        generation: 42,
        wall_clock_ns: 1_700_000_000_000_000_000,
        entropy: &[9u8; 32],
    })
    .unwrap();
    assert_eq!(a.health().unwrap().generation, 42);
    assert!(vmm.stderr_text().is_empty() || !vmm.stderr_text().contains("panic"));
}

#[test]
fn a_tickless_probe_answers_without_a_timer() {
    // `ember.hz=0`: no timer interrupt ever (the tick counter stays 0 while the guest idles),
    // yet every agent request still wakes it.
    let dir = tempdir();
    let uds = dir.path().join("tickless.vsock");
    let vmm = spawn(dir.path(), "tickless", &[]);
    let mut c = vmm.client();
    boot_with_vsock(&mut c, 32, "ember.hz=0 ember.report=0", &uds);
    wait_banner(&vmm);
    vmm.wait_for_line(DEFAULT_TIMEOUT, "the ticking line", 0, |l| {
        l.contains("ticking hz=0 report=0")
    });
    let mut a = agent(&uds);
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..3 {
        assert_eq!(a.health().unwrap().uptime_ns, 0);
        let out = a.exec(&Exec::new(&["counter"])).unwrap();
        assert_eq!(out.stdout, b"0\n");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn thousand_sequential_and_thirty_two_concurrent_requests() {
    let dir = tempdir();
    let (_vmm, uds, _) = booted(dir.path(), "load");
    let mut a = agent(&uds);
    for i in 0..1000u32 {
        match i % 3 {
            0 => a.ping_payload(&i.to_le_bytes()).unwrap(),
            1 => {
                let arg = format!("seq-{i}");
                let out = a.exec(&Exec::new(&["echo", &arg])).unwrap();
                assert_eq!(out.stdout, echo_output(&[&arg]));
            }
            _ => {
                a.health().unwrap();
            }
        }
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..32)
            .map(|t| {
                let uds = &uds;
                s.spawn(move || {
                    let mut a = agent(uds);
                    for i in 0..40 {
                        let arg = format!("t{t}-r{i}");
                        let out = a.exec(&Exec::new(&["echo", "thread", &arg])).unwrap();
                        assert_eq!(out.stdout, echo_output(&["thread", &arg]));
                        a.ping_payload(arg.as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    });
    // The first connection still works.
    a.ping().unwrap();
}

#[test]
fn guest_connects_out_to_the_host_at_boot() {
    let dir = tempdir();
    let uds = dir.path().join("out.vsock");
    let mut side = uds.clone().into_os_string();
    side.push(format!("_{}", ember_probe_image::ANNOUNCE_PORT));
    let listener = UnixListener::bind(&side).unwrap();
    listener.set_nonblocking(true).unwrap();
    let vmm = spawn(dir.path(), "out", &[]);
    let mut c = vmm.client();
    boot_with_vsock(&mut c, 32, "ember.report=0", &uds);
    let banner = wait_banner(&vmm);
    let mut stream = wait_for(DEFAULT_TIMEOUT, "the guest's connection", || {
        listener.accept().ok().map(|(s, _)| s)
    });
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    assert_eq!(
        ember_probe_image::parse_ready_line(&text),
        Some(banner.boot_id),
        "{text:?}"
    );
    // The guest also answers as usual.
    agent(&uds).ping().unwrap();
}

/// A raw agent connection past the hybrid handshake.
fn raw(uds: &Path) -> UnixStream {
    let h: HybridStream = wait_for(DEFAULT_TIMEOUT, "vsock handshake", || {
        ember_agent_proto::vsock::connect(uds, AGENT_PORT, Instant::now() + Duration::from_secs(5))
            .ok()
    });
    assert!(h.leftover.is_empty());
    h.stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    h.stream
}

fn send(s: &mut UnixStream, req: &Request<'_>, id: u64) {
    let mut buf = vec![0u8; 16384];
    let n = req.encode(id, &mut buf).unwrap();
    s.write_all(&buf[..n]).unwrap();
}

/// Reads one reply frame; `None` on EOF/reset.
fn recv(s: &mut UnixStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    if s.read_exact(&mut len).is_err() {
        return None;
    }
    let n = u32::from_le_bytes(len) as usize;
    let mut rest = vec![0u8; n];
    s.read_exact(&mut rest).ok()?;
    let mut frame = len.to_vec();
    frame.extend(rest);
    Some(frame)
}

fn hello(s: &mut UnixStream) {
    send(
        s,
        &Request::Hello(Hello {
            versions: &[1],
            max_frame_len: 65536,
            name: "test",
            software_version: "1",
        }),
        1,
    );
    let f = recv(s).unwrap();
    assert!(matches!(Reply::decode(&f).unwrap().1, Reply::Hello(_)));
}

/// True once the peer closed (EOF or reset) within the timeout.
fn closed(s: &mut UnixStream) -> bool {
    let mut b = [0u8; 64];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn malformed_frames_close_only_their_connection() {
    let dir = tempdir();
    let (vmm, uds, _) = booted(dir.path(), "bad");
    let mut good = agent(&uds);

    // Requests before Hello: HELLO_REQUIRED, connection kept.
    let mut d = raw(&uds);
    send(&mut d, &Request::Health, 5);
    let f = recv(&mut d).unwrap();
    let (h, r) = Reply::decode(&f).unwrap();
    assert_eq!(h.request_id, 5);
    assert!(matches!(r, Reply::Error(e) if e.code == ErrorCode::HELLO_REQUIRED));
    hello(&mut d);

    // An unknown kind: Unsupported, connection kept.
    let mut buf = [0u8; 64];
    let hdr = Header {
        version: 1,
        kind: 0x42,
        request_id: 9,
    };
    let n = encode_raw_frame(hdr, b"xyz", &mut buf).unwrap();
    d.write_all(&buf[..n]).unwrap();
    let f = recv(&mut d).unwrap();
    assert_eq!(
        Reply::decode(&f).unwrap().1,
        Reply::Unsupported { kind: 0x42 }
    );

    // A known kind with a broken body: Error MALFORMED, then the agent closes.
    let hdr = Header {
        version: 1,
        kind: 0x04,
        request_id: 10,
    };
    let n = encode_raw_frame(hdr, &[0xff; 8], &mut buf).unwrap();
    d.write_all(&buf[..n]).unwrap();
    let f = recv(&mut d).unwrap();
    let (h, r) = Reply::decode(&f).unwrap();
    assert_eq!(h.request_id, 10);
    assert!(matches!(r, Reply::Error(e) if e.code == ErrorCode::MALFORMED));
    assert!(
        closed(&mut d),
        "the agent kept a connection after a malformed frame"
    );

    // Reserved flags set: closed without a reply.
    let mut e = raw(&uds);
    hello(&mut e);
    let mut frame = [0u8; 16];
    frame[..4].copy_from_slice(&12u32.to_le_bytes());
    frame[4] = 1;
    frame[5] = 2;
    frame[6] = 1;
    e.write_all(&frame).unwrap();
    assert!(closed(&mut e));

    // A length prefix below the header size: closed.
    let mut f = raw(&uds);
    hello(&mut f);
    f.write_all(&3u32.to_le_bytes()).unwrap();
    assert!(closed(&mut f));

    // A frame larger than the agent accepts: closed.
    let mut g = raw(&uds);
    g.write_all(&(1u32 << 20).to_le_bytes()).unwrap();
    assert!(closed(&mut g));

    // The well-behaved connection never noticed.
    for _ in 0..20 {
        good.ping().unwrap();
    }
    agent(&uds).health().unwrap();
    assert!(
        !vmm.stdout_text().contains("exception"),
        "{}",
        vmm.stdout_text()
    );
}

#[test]
fn misbehaving_host_clients_stall_nobody() {
    let dir = tempdir();
    let (vmm, uds, _) = booted(dir.path(), "rude");
    let mut good = agent(&uds);

    // Connects and never says CONNECT.
    let silent = UnixStream::connect(&uds).unwrap();
    // A bad handshake line.
    let mut bad_line = UnixStream::connect(&uds).unwrap();
    bad_line.write_all(b"HELLO THERE\n").unwrap();
    bad_line
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    // A port nobody listens on: the VMM closes the stream (the guest answers RST).
    let mut nobody = UnixStream::connect(&uds).unwrap();
    nobody.write_all(b"CONNECT 4000\n").unwrap();
    nobody
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    // Floods requests and never reads a reply.
    let mut flood = raw(&uds);
    hello(&mut flood);
    flood.set_nonblocking(true).unwrap();
    let mut req = vec![0u8; 8192];
    let n = Request::Ping(ember_agent_proto::Ping {
        payload: &[1u8; 4000],
    })
    .encode(7, &mut req)
    .unwrap();
    let mut flooded = 0usize;
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        match flood.write(&req[..n]) {
            Ok(k) => flooded += k,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("flood: {e}"),
        }
    }
    assert!(flooded > 64 << 10, "flooded only {flooded} bytes");
    // Sends half a frame and goes away.
    let mut half = raw(&uds);
    hello(&mut half);
    half.write_all(&[40, 0, 0, 0, 1, 2]).unwrap();
    drop(half);
    // Sends half a frame and stays.
    let mut stuck = raw(&uds);
    hello(&mut stuck);
    stuck.write_all(&[40, 0, 0, 0, 1]).unwrap();

    // Meanwhile everyone else is served, old connections and new ones.
    for i in 0..200u32 {
        good.ping_payload(&i.to_le_bytes()).unwrap();
    }
    let mut fresh = agent(&uds);
    let out = fresh.exec(&Exec::new(&["echo", "still", "here"])).unwrap();
    assert_eq!(out.stdout, echo_output(&["still", "here"]));
    assert!(closed(&mut bad_line));
    assert!(closed(&mut nobody));

    // More connections than the guest has slots: the extra ones are refused, none hang.
    let mut extra = Vec::new();
    let mut refused = 0;
    for _ in 0..60 {
        match ember_agent_proto::AgentClient::connect(&uds, AGENT_PORT, Duration::from_secs(10)) {
            Ok(a) => extra.push(a),
            Err(_) => refused += 1,
        }
    }
    assert!(refused > 0, "60 extra connections all accepted");
    drop(extra);
    drop(flood);
    drop(stuck);
    drop(silent);
    // Once the rude clients are gone, the agent is fully available again.
    let clients: Vec<_> = (0..40).map(|_| agent(&uds)).collect();
    assert_eq!(clients.len(), 40);
    good.ping().unwrap();
    assert!(
        !vmm.stdout_text().contains("exception"),
        "{}",
        vmm.stdout_text()
    );
}

#[test]
fn vsock_socket_path_errors() {
    let dir = tempdir();
    let taken = dir.path().join("taken.vsock");
    std::fs::write(&taken, b"").unwrap();
    let vmm = spawn(dir.path(), "paths", &[]);
    let mut c = vmm.client();
    let r = c.put("/vsock", &vsock_json(3, &taken));
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.fault_message().unwrap().contains("taken.vsock"), "{r:?}");
    // The socket is bound at PUT time and again for a replacement.
    let uds = dir.path().join("a.vsock");
    assert_eq!(c.put("/vsock", &vsock_json(3, &uds)).status, 204);
    assert!(uds.exists());
    let uds2 = dir.path().join("b.vsock");
    assert_eq!(c.put("/vsock", &vsock_json(4, &uds2)).status, 204);
    assert!(!uds.exists() && uds2.exists());
    boot_via_api(&mut c, 1, 32, "ember.report=0");
    agent(&uds2).ping().unwrap();
    drop(vmm);
    // The socket file goes with the process... when it exits cleanly; a killed one leaves it.
    std::fs::remove_file(&uds2).ok();
}
