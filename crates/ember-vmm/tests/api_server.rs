//! The API server against hostile and careless clients, and its socket's life: fair service
//! (idle connections, a client that pipelines and never reads, slow requests), a socket file
//! that exists only once the server accepts, stale sockets, and clean-up on SIGTERM/SIGINT.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Tests that measure latency or spawn many processes run one at a time (2 shared cores).
static HEAVY: Mutex<()> = Mutex::new(());

fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sends `GET /` on a raw stream and returns the response's status line.
fn raw_get(s: &mut UnixStream) -> std::io::Result<String> {
    s.write_all(b"GET / HTTP/1.1\r\n\r\n")?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&buf);
    Ok(text.lines().next().unwrap_or_default().to_string())
}

/// Reads until EOF (or `timeout`); returns the bytes and whether EOF came.
fn read_to_eof(s: &mut UnixStream, timeout: Duration) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut chunk = [0u8; 64 << 10];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (out, false);
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut chunk) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (out, true),
            Err(_) => return (out, false),
        }
    }
}

#[test]
fn a_new_client_is_served_at_once_despite_idle_connections_and_a_non_reading_pipeliner() {
    let _heavy = heavy();
    let dir = tempdir();
    let vmm = spawn(dir.path(), "fair", &[]);
    let sock = vmm.api_sock().to_path_buf();
    assert_eq!(vmm.client().get("/").status, 200);
    // 64 idle connections: twice the cap.
    let mut idle: Vec<UnixStream> = (0..64)
        .map(|_| UnixStream::connect(&sock).unwrap())
        .collect();
    // A client that pipelines 20,000 GETs and never reads a response.
    let pipeliner = UnixStream::connect(&sock).unwrap();
    let mut writer = pipeliner.try_clone().unwrap();
    writer
        .set_write_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let flood = std::thread::spawn(move || {
        let _ = writer.write_all(&b"GET / HTTP/1.1\r\n\r\n".repeat(20_000));
    });
    std::thread::sleep(Duration::from_millis(300));
    let mut times = Vec::new();
    for _ in 0..20 {
        let t0 = Instant::now();
        let r = ApiClient::connect(&sock, Duration::from_secs(5)).get("/");
        times.push(t0.elapsed());
        assert_eq!(r.status, 200, "{r:?}");
    }
    times.sort();
    let worst = *times.last().unwrap();
    eprintln!(
        "new client, connect + GET /: p50 {:?}, max {:?}",
        times[times.len() / 2],
        worst
    );
    assert!(worst < Duration::from_secs(1), "{times:?}");
    // The oldest idle connections made room; the newest are still served.
    let (_, eof) = read_to_eof(&mut idle[0], Duration::from_secs(5));
    assert!(eof, "the oldest idle connection was closed at the cap");
    assert_eq!(raw_get(&mut idle[63]).unwrap(), "HTTP/1.1 200 OK");
    // The pipeliner is disconnected once it has taken nothing for the write timeout (10 s);
    // what it finds then is no more than its socket and the server's bound held.
    std::thread::sleep(Duration::from_millis(11_500));
    let mut p = pipeliner;
    let (got, eof) = read_to_eof(&mut p, Duration::from_secs(5));
    assert!(eof, "the non-reading client is disconnected");
    let answers = String::from_utf8_lossy(&got)
        .matches("HTTP/1.1 200 OK")
        .count();
    eprintln!("pipeliner: {} bytes, {answers} answers", got.len());
    assert!(
        answers > 0 && answers < 20_000 && got.len() < 2 << 20,
        "{}",
        got.len()
    );
    flood.join().unwrap();
    assert_eq!(vmm.client().get("/").status, 200);
}

/// CPU time (user + system) of process `pid` so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command's closing parenthesis; utime and stime are the 12th and 13th.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|v| v.parse().unwrap())
        .collect();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .unwrap()
        .unwrap() as u64;
    Duration::from_millis((f[0] + f[1]) * 1000 / hz)
}

#[test]
fn a_stalled_half_closed_pipeliner_costs_no_cpu_and_is_dropped() {
    let dir = tempdir();
    let vmm = spawn(dir.path(), "stall", &["--serial-out", "none"]);
    assert_eq!(vmm.client().get("/").status, 200);
    let mut s = UnixStream::connect(vmm.api_sock()).unwrap();
    s.write_all(&b"GET / HTTP/1.1\r\n\r\n".repeat(5_000))
        .unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let before = cpu_time(vmm.pid());
    std::thread::sleep(Duration::from_secs(2));
    let spent = cpu_time(vmm.pid()) - before;
    assert!(
        spent < Duration::from_millis(200),
        "{spent:?} of CPU in 2 s"
    );
    // Still serving others; the stalled client goes at the write timeout.
    assert_eq!(vmm.client().get("/").status, 200);
    std::thread::sleep(Duration::from_secs(9));
    let (_, eof) = read_to_eof(&mut s, Duration::from_secs(5));
    assert!(eof);
}

#[test]
fn a_pipeliner_that_reads_gets_every_answer_in_order() {
    let dir = tempdir();
    let vmm = spawn(dir.path(), "pipe", &[]);
    assert_eq!(vmm.client().get("/").status, 200);
    let mut s = UnixStream::connect(vmm.api_sock()).unwrap();
    let mut w = s.try_clone().unwrap();
    const N: usize = 5_000;
    let writer = std::thread::spawn(move || {
        let mut reqs = Vec::new();
        for i in 0..N {
            let path = if i % 2 == 0 { "/" } else { "/version" };
            reqs.extend_from_slice(format!("GET {path} HTTP/1.1\r\n\r\n").as_bytes());
        }
        w.write_all(&reqs).unwrap();
        w.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let (out, eof) = read_to_eof(&mut s, Duration::from_secs(60));
    writer.join().unwrap();
    assert!(
        eof,
        "the server closes after the last answer to a half-closed client"
    );
    let text = String::from_utf8(out).unwrap();
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), N);
    // In order: the answers alternate as the requests did.
    for (i, answer) in text.split("HTTP/1.1 200 OK").skip(1).enumerate() {
        let want = if i % 2 == 0 {
            "app_name"
        } else {
            "firecracker_version"
        };
        assert!(answer.contains(want), "answer {i}: {answer}");
    }
}

#[test]
fn a_request_that_does_not_arrive_in_time_gets_408_and_idle_connections_stay() {
    let dir = tempdir();
    let vmm = spawn(dir.path(), "slow", &[]);
    assert_eq!(vmm.client().get("/").status, 200);
    let sock = vmm.api_sock();
    let mut idle = UnixStream::connect(sock).unwrap();
    let mut used = UnixStream::connect(sock).unwrap();
    assert_eq!(raw_get(&mut used).unwrap(), "HTTP/1.1 200 OK");
    let mut head = UnixStream::connect(sock).unwrap();
    head.write_all(b"GET / HTTP/1.1\r\nHost: x").unwrap();
    let mut body = UnixStream::connect(sock).unwrap();
    body.write_all(b"PUT /machine-config HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")
        .unwrap();
    let t0 = Instant::now();
    for s in [&mut head, &mut body] {
        let (out, eof) = read_to_eof(s, Duration::from_secs(30));
        let text = String::from_utf8_lossy(&out);
        assert!(eof && text.starts_with("HTTP/1.1 408"), "{text}");
    }
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(20),
        "{waited:?}"
    );
    // Connections idle for longer than every server timeout are still served.
    assert_eq!(raw_get(&mut idle).unwrap(), "HTTP/1.1 200 OK");
    assert_eq!(raw_get(&mut used).unwrap(), "HTTP/1.1 200 OK");
}

#[test]
fn the_socket_file_exists_only_once_the_server_accepts() {
    let _heavy = heavy();
    let dir = tempdir();
    let mut refused = Vec::new();
    const SPAWNS: usize = 100;
    for i in 0..SPAWNS {
        let mut vmm = spawn(dir.path(), &format!("r{i}"), &["--serial-out", "none"]);
        let sock = vmm.api_sock().to_path_buf();
        let deadline = Instant::now() + DEFAULT_TIMEOUT;
        while std::fs::symlink_metadata(&sock).is_err() {
            assert!(
                Instant::now() < deadline,
                "{} never appeared",
                sock.display()
            );
            std::hint::spin_loop();
        }
        match UnixStream::connect(&sock) {
            Ok(mut s) => assert_eq!(raw_get(&mut s).unwrap(), "HTTP/1.1 200 OK"),
            Err(e) => refused.push(format!("spawn {i}: {e}")),
        }
        vmm.kill();
        let _ = std::fs::remove_file(&sock);
    }
    assert!(
        refused.is_empty(),
        "{} of {SPAWNS} refused: {refused:?}",
        refused.len()
    );
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "temporary names left behind: {left:?}");
}

/// Waits for `needle` in the process's stderr (read by a thread of its own).
fn wait_stderr(vmm: &VmmProcess, needle: &str) {
    let found = ember_test_support::try_wait_for(DEFAULT_TIMEOUT, || {
        vmm.stderr_text().contains(needle).then_some(())
    });
    assert!(found.is_some(), "{needle:?} not in: {}", vmm.stderr_text());
}

fn signal_and_check(vmm: &mut VmmProcess, signal: Signal, vsock: &Path) {
    assert!(vmm.api_sock().exists() && vsock.exists());
    kill(Pid::from_raw(vmm.pid() as i32), signal).unwrap();
    let status = vmm.wait_exit(DEFAULT_TIMEOUT);
    assert_eq!(status.code(), Some(0), "stderr: {}", vmm.stderr_text());
    assert!(!vmm.api_sock().exists(), "the API socket is removed");
    assert!(!vsock.exists(), "the vsock socket is removed");
}

#[test]
fn sigterm_and_sigint_remove_the_api_and_vsock_sockets() {
    let dir = tempdir();
    // A running guest with a vsock device: SIGTERM.
    let uds = dir.path().join("term.vsock");
    let mut vmm = spawn(dir.path(), "term", &[]);
    let mut c = vmm.client();
    boot_with_vsock(&mut c, 32, "ember.report=0", &uds);
    wait_banner(&vmm);
    signal_and_check(&mut vmm, Signal::SIGTERM, &uds);
    // A vsock device configured before start, a client connected: SIGINT.
    let uds = dir.path().join("int.vsock");
    let mut vmm = spawn(dir.path(), "int", &[]);
    let mut c = vmm.client();
    assert_eq!(c.put("/vsock", &vsock_json(3, &uds)).status, 204);
    signal_and_check(&mut vmm, Signal::SIGINT, &uds);
    // A restored VM whose vsock socket was moved by the load: SIGTERM removes the new one and
    // leaves the snapshotted VM's.
    let src_uds = dir.path().join("src.vsock");
    let src = spawn(dir.path(), "src", &[]);
    let mut c = src.client();
    boot_with_vsock(&mut c, 32, "ember.report=0", &src_uds);
    wait_banner(&src);
    assert_eq!(c.patch("/vm", r#"{"state": "Paused"}"#).status, 204);
    let (snap, mem) = (dir.path().join("s.snap"), dir.path().join("s.mem"));
    let body = serde_json::json!({ "snapshot_path": snap, "mem_file_path": mem }).to_string();
    assert_eq!(c.put("/snapshot/create", &body).status, 204);
    let uds = dir.path().join("restored.vsock");
    let mut restored = spawn(dir.path(), "restored", &[]);
    let r = restored
        .client()
        .put("/snapshot/load", &load_body_vsock(&snap, &mem, &uds));
    assert_eq!(r.status, 204, "{r:?}");
    signal_and_check(&mut restored, Signal::SIGTERM, &uds);
    assert!(src_uds.exists() && src.api_sock().exists());
}

#[test]
fn a_stale_socket_is_replaced_and_a_live_one_refused() {
    let dir = tempdir();
    let mut first = spawn(dir.path(), "same", &[]);
    let sock = first.api_sock().to_path_buf();
    assert_eq!(first.client().get("/").status, 200);
    first.kill();
    assert!(sock.exists(), "SIGKILL leaves the socket file");
    // A restart on the same path replaces it.
    let second = spawn(dir.path(), "same", &[]);
    assert_eq!(second.client().get("/").status, 200);
    // Another start while it listens is refused and leaves the live socket alone.
    let mut third = spawn(dir.path(), "same", &[]);
    assert_eq!(third.wait_exit(DEFAULT_TIMEOUT).code(), Some(2));
    wait_stderr(&third, "in use by another process");
    let mut c = second.client();
    assert_eq!(c.get("/").status, 200);
    // Something that is not a socket is never removed.
    let file = dir.path().join("file.sock");
    std::fs::write(&file, b"keep me").unwrap();
    let mut fourth = spawn(dir.path(), "file", &[]);
    assert_eq!(fourth.wait_exit(DEFAULT_TIMEOUT).code(), Some(2));
    wait_stderr(&fourth, "is not a socket");
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
}

#[test]
fn a_stale_vsock_socket_is_replaced_and_a_live_one_refused() {
    let dir = tempdir();
    let uds = dir.path().join("v.vsock");
    let mut first = spawn(dir.path(), "v1", &[]);
    assert_eq!(
        first.client().put("/vsock", &vsock_json(3, &uds)).status,
        204
    );
    first.kill();
    assert!(uds.exists(), "SIGKILL leaves the vsock socket file");
    // The next VMM configuring the same path replaces it.
    let second = spawn(dir.path(), "v2", &[]);
    let r = second.client().put("/vsock", &vsock_json(3, &uds));
    assert_eq!(r.status, 204, "{r:?}");
    // Another one while it listens is refused, naming why, and leaves it alone.
    let third = spawn(dir.path(), "v3", &[]);
    let r = third.client().put("/vsock", &vsock_json(3, &uds));
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.body.contains("in use by another process"), "{r:?}");
    assert!(uds.exists());
    // Not a socket: refused, never removed.
    let file = dir.path().join("file.vsock");
    std::fs::write(&file, b"keep me").unwrap();
    let r = third.client().put("/vsock", &vsock_json(3, &file));
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.body.contains("is not a socket"), "{r:?}");
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
}
