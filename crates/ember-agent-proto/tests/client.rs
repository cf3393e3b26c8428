//! The host client against a real Unix-socket hybrid-vsock server running the reference agent
//! (built from the crate's guest-side `Session` and `FrameBuffer`).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::io::{Read, Write};
use std::thread;
use std::time::{Duration, Instant};

use common::{Fixture, OK_TIMEOUT, raw_server};
use ember_agent_proto::io::{FrameReader, encode_into_vec};
use ember_agent_proto::test_agent::{Fault, TestAgentConfig};
use ember_agent_proto::vsock::{self, HandshakeError};
use ember_agent_proto::{
    AgentClient, ClientError, ConnectOptions, DecodeError, ErrorCode, Exec, FrameError, Header,
    Hello, Kind, Ping, Reply, Request, Reseed, encode_raw_frame,
};

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
fn every_call_round_trips() {
    let fx = Fixture::new(Fault::None);
    let mut client = fx.connect();

    client.ping().unwrap();
    let big = vec![0xa5u8; 100_000];
    client.ping_payload(&big).unwrap();

    let h1 = client.health().unwrap();
    let h2 = client.health().unwrap();
    assert_eq!(h1.generation, 0);
    assert_eq!(h1.boot_id, h2.boot_id);
    assert!(h2.uptime_ns >= h1.uptime_ns);

    let out = client
        .exec(&Exec::new(&["echo", "hello", "world"]))
        .unwrap();
    assert!(out.success());
    assert_eq!(out.stdout, b"hello world\n");
    let out = client
        .exec(&Exec::new(&["cat"]).with_stdin(b"piped input"))
        .unwrap();
    assert_eq!(out.stdout, b"piped input");
    let out = client
        .exec(&Exec::new(&["env"]).with_env(&["A=1", "B=two"]))
        .unwrap();
    assert_eq!(out.stdout, b"A=1\nB=two\n");
    assert_eq!(
        client.exec(&Exec::new(&["exit", "3"])).unwrap().exit_code,
        3
    );
    let out = client.exec(&Exec::new(&["nope"])).unwrap();
    assert_eq!(out.exit_code, 127);
    assert_eq!(out.stderr, b"nope: command not found\n");
    let out = client.exec(&Exec::new(&["yes", "1000000"])).unwrap();
    assert!(out.stdout_truncated);
    assert!(out.stdout.len() < 256 * 1024);

    client.put_file("/etc/motd", 0o644, b"welcome\n").unwrap();
    assert_eq!(
        fx.agent.file("/etc/motd"),
        Some((0o644, b"welcome\n".to_vec()))
    );
    let file = client.get_file("/etc/motd", 1024).unwrap();
    assert_eq!(
        (file.mode, file.data.as_slice()),
        (0o644, &b"welcome\n"[..])
    );

    // Larger than one frame: chunked both ways.
    let blob: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
    client.put_file("/data/blob", 0o600, &blob).unwrap();
    assert_eq!(fx.agent.file("/data/blob").unwrap().1, blob);
    let back = client.get_file("/data/blob", 1 << 20).unwrap();
    assert_eq!(back.data, blob);
    client.put_file("/empty", 0o600, b"").unwrap();
    assert!(client.get_file("/empty", 0).unwrap().data.is_empty());

    // Agent-side errors are errors that keep the connection.
    let err = client.get_file("/missing", 1024).unwrap_err();
    assert!(
        matches!(&err, ClientError::Agent { code, request: Kind::GetFile, .. } if *code == ErrorCode::NOT_FOUND),
        "{err}"
    );
    let err = client.get_file("/data/blob", 1000).unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::FileTooLarge {
                size: 700_000,
                max: 1000
            }
        ),
        "{err}"
    );
    assert!(client.poisoned().is_none());

    // Limits are enforced before sending, without poisoning.
    let err = client.exec(&Exec::new(&[])).unwrap_err();
    assert!(matches!(err, ClientError::Encode { .. }), "{err}");

    client
        .reseed(&Reseed {
            generation: 7,
            wall_clock_ns: 1_700_000_000_000_000_000,
            entropy: &[9; 32],
        })
        .unwrap();
    let record = fx.agent.last_reseed().unwrap();
    assert_eq!(
        (record.generation, record.entropy.as_slice()),
        (7, &[9u8; 32][..])
    );
    assert_eq!(client.health().unwrap().generation, 7);
    client.reseed_fresh(8).unwrap();
    let record = fx.agent.last_reseed().unwrap();
    assert_eq!(record.generation, 8);
    assert_ne!(record.entropy, vec![0u8; 32]);
    assert!(record.wall_clock_ns > 1_600_000_000_000_000_000);

    client.ping().unwrap();
    client.shutdown().unwrap();
    assert!(fx.agent.shutdown_requested());
}

#[test]
fn thousand_sequential_requests_and_clients() {
    let fx = Fixture::new(Fault::None);
    let mut client = fx.connect();
    for i in 0..1000u32 {
        let arg = i.to_string();
        let out = client.exec(&Exec::new(&["echo", &arg])).unwrap();
        assert_eq!(out.stdout, format!("{i}\n").as_bytes());
    }
    drop(client);

    let started = Instant::now();
    for i in 0..1000u32 {
        let mut client = fx.connect();
        let payload = i.to_le_bytes();
        client.ping_payload(&payload).unwrap();
    }
    assert_eq!(fx.agent.connections(), 1001);
    eprintln!(
        "1000 sequential connect+hello+ping: {:?}",
        started.elapsed()
    );
}

#[test]
fn thirty_two_concurrent_clients() {
    let fx = Fixture::new(Fault::None);
    thread::scope(|s| {
        for t in 0..32u32 {
            let fx = &fx;
            s.spawn(move || {
                let mut client = fx.connect();
                for i in 0..50u32 {
                    let arg = format!("{t}-{i}");
                    let out = client.exec(&Exec::new(&["echo", &arg])).unwrap();
                    assert_eq!(out.stdout, format!("{arg}\n").as_bytes());
                    client.health().unwrap();
                }
            });
        }
    });
    // Every `counter` increment is seen exactly once across clients.
    thread::scope(|s| {
        let handles: Vec<_> = (0..32)
            .map(|_| {
                s.spawn(|| {
                    let mut client = fx.connect();
                    let out = client.exec(&Exec::new(&["counter"])).unwrap();
                    String::from_utf8(out.stdout)
                        .unwrap()
                        .parse::<u64>()
                        .unwrap()
                })
            })
            .collect();
        let mut seen: Vec<u64> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        seen.sort_unstable();
        assert_eq!(seen, (1..=32).collect::<Vec<_>>());
    });
}

#[test]
fn silent_agent_times_out_and_poisons() {
    let fx = Fixture::new(Fault::SilentAfterHello);
    let mut client = fx.connect();
    client.set_call_timeout(Duration::from_millis(200));
    let started = Instant::now();
    let err = client.health().unwrap_err();
    let elapsed = started.elapsed();
    assert!(err.is_timeout(), "{err}");
    assert!(matches!(
        err,
        ClientError::Timeout {
            request: Kind::Health,
            ..
        }
    ));
    assert!(elapsed >= Duration::from_millis(190), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
    assert!(client.poisoned().is_some());
    let err = client.ping().unwrap_err();
    assert!(matches!(err, ClientError::Poisoned { .. }), "{err}");
}

#[test]
fn silent_hello_times_out_at_connect() {
    let fx = Fixture::new(Fault::Silent);
    let started = Instant::now();
    let err = AgentClient::connect(fx.agent.path(), fx.agent.port(), Duration::from_millis(200))
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Timeout {
                request: Kind::Hello,
                ..
            }
        ),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn slow_command_times_out_within_the_call_timeout() {
    let fx = Fixture::new(Fault::None);
    let mut client = fx.connect_with(&ConnectOptions {
        call_timeout: Duration::from_millis(150),
        ..ConnectOptions::default()
    });
    let started = Instant::now();
    let err = client.exec(&Exec::new(&["sleep", "600"])).unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
    // A new connection is fine.
    fx.connect().ping().unwrap();
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

fn raw_reply_error(bytes: Vec<u8>) -> (ClientError, AgentClient, Duration) {
    let fx = Fixture::new(Fault::RawReplyAfterHello(bytes));
    let mut client = fx.connect_with(&ConnectOptions::with_timeout(Duration::from_secs(3)));
    let started = Instant::now();
    let err = client.ping().unwrap_err();
    (err, client, started.elapsed())
}

fn frame(header: Header, body: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; 64 + body.len()];
    let n = encode_raw_frame(header, body, &mut out).unwrap();
    out.truncate(n);
    out
}

#[test]
fn malformed_replies_are_errors_and_close_the_connection() {
    // The Ping is request 2 (Hello was 1).
    let pong = |kind: u8, body: &[u8]| {
        frame(
            Header {
                version: 1,
                kind,
                request_id: 2,
            },
            body,
        )
    };
    let mut reserved_flags = pong(Kind::Pong.as_u8(), &[0, 0, 0, 0]);
    reserved_flags[6] = 1;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("unknown reply kind", pong(0xC3, b"")),
        (
            "request kind as reply",
            pong(Kind::Ping.as_u8(), &[0, 0, 0, 0]),
        ),
        ("truncated body", pong(Kind::Pong.as_u8(), &[9, 0, 0, 0, 1])),
        ("trailing bytes", pong(Kind::Pong.as_u8(), &[0, 0, 0, 0, 1])),
        ("reserved flags", reserved_flags),
        (
            "unknown version",
            frame(
                Header {
                    version: 9,
                    kind: Kind::Pong.as_u8(),
                    request_id: 2,
                },
                &[0, 0, 0, 0],
            ),
        ),
        (
            "length below header",
            vec![3, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12],
        ),
    ];
    for (name, bytes) in cases {
        let (err, mut client, _) = raw_reply_error(bytes);
        assert!(
            matches!(
                err,
                ClientError::Malformed {
                    request: Kind::Ping,
                    ..
                }
            ),
            "{name}: {err}"
        );
        assert!(client.poisoned().is_some(), "{name}");
        assert!(
            matches!(client.ping().unwrap_err(), ClientError::Poisoned { .. }),
            "{name}"
        );
    }

    let (err, _, _) = raw_reply_error(pong(Kind::HealthReport.as_u8(), &[0; 32]));
    assert!(
        matches!(
            err,
            ClientError::UnexpectedReply {
                request: Kind::Ping,
                got: Kind::HealthReport
            }
        ),
        "{err}"
    );
}

#[test]
fn oversize_length_is_rejected_without_waiting_or_allocating() {
    // Announces a 2 GiB frame and sends nothing more: a reader that tried to read (or allocate)
    // it would sit until the timeout.
    let (err, _, elapsed) = raw_reply_error(vec![0xff, 0xff, 0xff, 0x7f]);
    assert!(
        matches!(
            err,
            ClientError::Malformed {
                error: DecodeError::Frame(FrameError::LengthTooLarge { .. }),
                ..
            }
        ),
        "{err}"
    );
    assert!(elapsed < Duration::from_secs(1), "{elapsed:?}");

    // Within the protocol maximum but above what this client announced.
    let fx = Fixture::new(Fault::RawReplyAfterHello(
        (100_000u32 - 4).to_le_bytes().to_vec(),
    ));
    let mut client = fx.connect_with(&ConnectOptions {
        max_frame_len: 4096,
        ..ConnectOptions::default()
    });
    let err = client.ping().unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Malformed {
                error: DecodeError::Frame(FrameError::LengthTooLarge { max: 4096, .. }),
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn reply_with_wrong_id_is_an_error() {
    let fx = Fixture::new(Fault::WrongIdAfterHello);
    let mut client = fx.connect();
    let err = client.health().unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::WrongRequestId {
                expected: 2,
                got: 3,
                ..
            }
        ),
        "{err}"
    );
    assert!(client.poisoned().is_some());
}

#[test]
fn server_closing_mid_reply_is_an_error() {
    let (_dir, path, server) = raw_server(|mut stream| {
        let mut reader = FrameReader::new(1 << 20);
        let mut out = Vec::new();
        // Answer Hello properly, then half a Pong and close.
        let hello = reader.read_frame(&mut stream).unwrap();
        let (h, _) = Request::decode(hello).unwrap();
        let ok = Reply::Hello(ember_agent_proto::HelloOk {
            version: 1,
            max_frame_len: 4096,
            name: "raw",
            software_version: "0",
        });
        encode_into_vec(&mut out, |b| ok.encode(h.request_id, b)).unwrap();
        stream.write_all(&out).unwrap();
        let ping = reader.read_frame(&mut stream).unwrap();
        let (h, _) = Request::decode(ping).unwrap();
        let pong = Reply::Pong { payload: b"" };
        encode_into_vec(&mut out, |b| pong.encode(h.request_id, b)).unwrap();
        stream.write_all(&out[..10]).unwrap();
    });
    let mut client = AgentClient::connect(&path, 52, OK_TIMEOUT).unwrap();
    let err = client.ping().unwrap_err();
    assert!(
        matches!(err, ClientError::Closed { buffered: 10, .. }),
        "{err}"
    );
    server.join().unwrap();
}

/// Talks to the agent frame by frame, past the vsock handshake, to see the agent-side rules.
struct RawConn {
    stream: std::os::unix::net::UnixStream,
    reader: FrameReader,
    out: Vec<u8>,
}

impl RawConn {
    fn open(fx: &Fixture) -> RawConn {
        let hybrid = vsock::connect(
            fx.agent.path(),
            fx.agent.port(),
            Instant::now() + OK_TIMEOUT,
        )
        .unwrap();
        hybrid.stream.set_read_timeout(Some(OK_TIMEOUT)).unwrap();
        let mut reader = FrameReader::new(1 << 20);
        reader.prime(&hybrid.leftover);
        RawConn {
            stream: hybrid.stream,
            reader,
            out: Vec::new(),
        }
    }

    fn send(&mut self, id: u64, request: &Request<'_>) {
        encode_into_vec(&mut self.out, |b| request.encode(id, b)).unwrap();
        self.stream.write_all(&self.out).unwrap();
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    fn recv(&mut self) -> (u64, String) {
        let bytes = self.reader.read_frame(&mut self.stream).unwrap();
        let (h, reply) = Reply::decode(bytes).unwrap();
        (h.request_id, format!("{reply:?}"))
    }

    fn hello(&mut self) {
        self.send(
            1,
            &Request::Hello(Hello {
                versions: &[1],
                max_frame_len: 1 << 20,
                name: "raw",
                software_version: "0",
            }),
        );
        assert!(self.recv().1.starts_with("Hello("));
    }
}

#[test]
fn agent_answers_unknown_kinds_and_keeps_the_connection() {
    let fx = Fixture::new(Fault::None);
    let mut conn = RawConn::open(&fx);

    conn.send(5, &Request::Health);
    let (id, reply) = conn.recv();
    assert_eq!(id, 5);
    assert!(reply.contains("code: ErrorCode(3)"), "{reply}");

    conn.hello();
    let unknown = frame(
        Header {
            version: 1,
            kind: 0x42,
            request_id: 6,
        },
        b"from the future",
    );
    conn.send_raw(&unknown);
    assert_eq!(conn.recv(), (6, "Unsupported { kind: 66 }".to_owned()));
    let future_version = frame(
        Header {
            version: 2,
            kind: Kind::Ping.as_u8(),
            request_id: 7,
        },
        b"",
    );
    conn.send_raw(&future_version);
    let (id, reply) = conn.recv();
    assert_eq!(id, 7);
    assert!(reply.contains("code: ErrorCode(2)"), "{reply}");

    conn.send(
        8,
        &Request::Ping(Ping {
            payload: b"still here",
        }),
    );
    let (id, reply) = conn.recv();
    assert_eq!(id, 8);
    assert!(reply.contains("Pong"), "{reply}");
}

#[test]
fn agent_closes_after_a_malformed_request() {
    let fx = Fixture::new(Fault::None);
    let mut conn = RawConn::open(&fx);
    conn.hello();
    let bad_exec = frame(
        Header {
            version: 1,
            kind: Kind::Exec.as_u8(),
            request_id: 9,
        },
        &[0xff, 0xff, 0xff, 0xff],
    );
    conn.send_raw(&bad_exec);
    let (id, reply) = conn.recv();
    assert_eq!(id, 9);
    assert!(reply.contains("code: ErrorCode(1)"), "{reply}");
    let mut rest = [0u8; 16];
    assert_eq!(conn.stream.read(&mut rest).unwrap(), 0, "connection closed");

    // An oversize length: closed without a reply.
    let mut conn = RawConn::open(&fx);
    conn.hello();
    conn.send_raw(&[0xff, 0xff, 0xff, 0xff]);
    assert_eq!(conn.stream.read(&mut rest).unwrap(), 0, "connection closed");

    // The agent itself is fine.
    fx.connect().ping().unwrap();
}

#[test]
fn small_agent_frame_limit_is_respected_by_the_client() {
    let fx = Fixture::with_config(TestAgentConfig {
        max_frame_len: 4096,
        ..TestAgentConfig::default()
    });
    let mut client = fx.connect();
    assert_eq!(client.agent().max_frame_len, 4096);
    let err = client.ping_payload(&[0u8; 5000]).unwrap_err();
    assert!(matches!(err, ClientError::Encode { .. }), "{err}");
    let blob = vec![3u8; 20_000];
    client.put_file("/f", 0o644, &blob).unwrap();
    assert_eq!(client.get_file("/f", 1 << 20).unwrap().data, blob);
}
