//! The runtime's kept API connection against ember-vmm's connection policy: a connection idle
//! for longer than every server timeout is still the same connection; one the server closes
//! at its connection cap is replaced transparently on the next call, whether or not it had
//! served a request before.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use common::*;
use ember_runtime::client::Method;
use ember_runtime::{ClientTimeouts, FirecrackerClient};
use ember_test_support::VmmProcess;

fn started(dir: &Path) -> VmmProcess {
    let sock = dir.join("api.sock");
    let vmm = VmmProcess::spawn(&vmm_bin(), &sock, &["--serial-out", "none"]);
    // The socket file exists only once the server accepts.
    wait_for(DEFAULT_TIMEOUT, "the API socket", || {
        sock.exists().then_some(())
    });
    vmm
}

#[test]
fn a_kept_connection_idle_past_the_server_timeouts_is_still_served() {
    let dir = short_tempdir();
    let vmm = started(dir.path());
    let mut used = FirecrackerClient::new(vmm.api_sock(), ClientTimeouts::default());
    used.describe_instance().unwrap();
    // Opened ahead of its first request, as a spare's is.
    let mut early = FirecrackerClient::new(vmm.api_sock(), ClientTimeouts::default());
    early.connect().unwrap();
    // Longer than the server's request and write timeouts (10 s each).
    std::thread::sleep(Duration::from_secs(12));
    used.describe_instance().unwrap();
    early.describe_instance().unwrap();
    assert_eq!((used.connects(), early.connects()), (1, 1));
}

#[test]
fn a_kept_connection_closed_at_the_cap_is_replaced_on_the_next_call() {
    let dir = short_tempdir();
    let vmm = started(dir.path());
    let mut client = FirecrackerClient::new(vmm.api_sock(), ClientTimeouts::default());
    client.describe_instance().unwrap();
    for round in 1..=2u64 {
        // Far more connections than the server's cap (32): the oldest idle ones, the client's
        // among them, are closed to make room. A request on the newest proves they were
        // accepted.
        let mut others: Vec<UnixStream> = (0..80)
            .map(|_| UnixStream::connect(vmm.api_sock()).unwrap())
            .collect();
        let last = others.last_mut().unwrap();
        std::io::Write::write_all(last, b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let mut buf = [0u8; 16];
        std::io::Read::read_exact(last, &mut buf).unwrap();
        assert!(buf.starts_with(b"HTTP/1.1 200"));
        if round == 1 {
            client.describe_instance().unwrap();
        } else {
            // The unacknowledged path (`PATCH /vm` on a handover) reconnects as well.
            client
                .send_unacknowledged::<()>(Method::Get, "/", None, Duration::from_secs(5))
                .unwrap();
            client.acknowledge().unwrap();
        }
        assert_eq!(client.connects(), 1 + round, "reconnected once");
        drop(others);
    }
}

#[test]
fn a_connection_opened_early_and_closed_at_the_cap_before_any_use_is_replaced() {
    let dir = short_tempdir();
    let vmm = started(dir.path());
    // Opened ahead of its first request, as a spare's is, and never used before the server
    // closes it to make room.
    let mut early = FirecrackerClient::new(vmm.api_sock(), ClientTimeouts::default());
    early.connect().unwrap();
    let mut others: Vec<UnixStream> = (0..80)
        .map(|_| UnixStream::connect(vmm.api_sock()).unwrap())
        .collect();
    let last = others.last_mut().unwrap();
    std::io::Write::write_all(last, b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let mut buf = [0u8; 16];
    std::io::Read::read_exact(last, &mut buf).unwrap();
    assert!(buf.starts_with(b"HTTP/1.1 200"));
    early.describe_instance().unwrap();
    assert_eq!(early.connects(), 2, "reconnected once");
    drop(others);
}
