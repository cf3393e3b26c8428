//! Hybrid vsock handshake: success, refusal, garbage, close, timeout.

use std::io::Read;
use std::thread;
use std::time::{Duration, Instant};

use crate::common::{Fixture, OK_TIMEOUT};
use ember_agent_proto::test_agent::Fault;
use ember_agent_proto::vsock::HandshakeError;
use ember_agent_proto::{AgentClient, ClientError};

fn connect_err(fixture: &Fixture, port: u32) -> ClientError {
    AgentClient::connect(fixture.agent.path(), port, Duration::from_secs(2)).unwrap_err()
}

#[test]
fn handshake_and_hello_succeed() {
    let fx = Fixture::new(Fault::None);
    let client = fx.connect();
    let info = client.agent();
    assert_eq!(info.name, "ember-test-agent");
    assert_eq!(info.version, 1);
    assert_eq!(info.max_frame_len, 256 * 1024);
    assert!(info.host_port.unwrap() >= 1_000_000);
    assert!(client.poisoned().is_none());
}

#[test]
fn handshake_failures_are_typed_and_quote_the_reply() {
    let fx = Fixture::new(Fault::None);
    // No listener on that guest port: the VMM closes the connection.
    let err = connect_err(&fx, fx.agent.port() + 1);
    assert!(
        matches!(&err, ClientError::Handshake(HandshakeError::Closed { received, .. }) if received.is_empty()),
        "{err}"
    );

    fx.agent.set_fault(Fault::HandshakeClose);
    let err = connect_err(&fx, fx.agent.port());
    assert!(
        matches!(err, ClientError::Handshake(HandshakeError::Closed { .. })),
        "{err}"
    );

    fx.agent
        .set_fault(Fault::HandshakeReply(b"FAILURE 22\n".to_vec()));
    let err = connect_err(&fx, fx.agent.port());
    match &err {
        ClientError::Handshake(HandshakeError::Rejected { received, .. }) => {
            assert_eq!(received, "FAILURE 22\\n");
        }
        other => panic!("unexpected {other}"),
    }
    assert!(err.to_string().contains("FAILURE 22"), "{err}");

    // A reply cut off before its newline, then the close.
    fx.agent.set_fault(Fault::HandshakeReply(b"OK 12".to_vec()));
    let err = connect_err(&fx, fx.agent.port());
    assert!(
        matches!(&err, ClientError::Handshake(HandshakeError::Closed { received, .. }) if received == "OK 12"),
        "{err}"
    );

    // An endless line is cut at the limit, not read forever.
    fx.agent.set_fault(Fault::HandshakeReply(vec![b'x'; 200]));
    let err = connect_err(&fx, fx.agent.port());
    assert!(
        matches!(err, ClientError::Handshake(HandshakeError::Rejected { .. })),
        "{err}"
    );

    // Garbage bytes.
    fx.agent
        .set_fault(Fault::HandshakeReply(vec![0, 159, 146, 150, b'\n']));
    let err = connect_err(&fx, fx.agent.port());
    assert!(
        matches!(err, ClientError::Handshake(HandshakeError::Rejected { .. })),
        "{err}"
    );

    // The agent keeps working for well-behaved connections.
    fx.agent.set_fault(Fault::None);
    fx.connect().ping().unwrap();
}

#[test]
fn missing_socket_is_a_connect_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = AgentClient::connect(dir.path().join("none.sock"), 52, OK_TIMEOUT).unwrap_err();
    assert!(
        matches!(err, ClientError::Handshake(HandshakeError::Connect { .. })),
        "{err}"
    );
}

#[test]
fn server_that_never_answers_the_handshake_times_out() {
    let (_dir, path, server) = {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mute.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut sink = [0u8; 64];
            while stream.read(&mut sink).unwrap_or(0) > 0 {}
        });
        (dir, path, server)
    };
    let started = Instant::now();
    let err = AgentClient::connect(&path, 52, Duration::from_millis(200)).unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(matches!(
        err,
        ClientError::Handshake(HandshakeError::TimedOut { .. })
    ));
    assert!(started.elapsed() < Duration::from_secs(2));
    drop(err);
    server.join().unwrap();
}
