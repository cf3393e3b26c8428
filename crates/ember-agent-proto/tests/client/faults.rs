//! Misbehaving agents: timeouts, malformed replies, oversize lengths, wrong ids, early close.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::common::{Fixture, OK_TIMEOUT, frame, raw_server};
use ember_agent_proto::io::{FrameReader, encode_into_vec};
use ember_agent_proto::test_agent::Fault;
use ember_agent_proto::{
    AgentClient, ClientError, ConnectOptions, DecodeError, Exec, FrameError, Header, Kind, Reply,
    Request,
};

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

fn raw_reply_error(bytes: Vec<u8>) -> (ClientError, AgentClient, Duration) {
    let fx = Fixture::new(Fault::RawReplyAfterHello(bytes));
    let mut client = fx.connect_with(&ConnectOptions::with_timeout(Duration::from_secs(3)));
    let started = Instant::now();
    let err = client.ping().unwrap_err();
    (err, client, started.elapsed())
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

/// An agent that answers Hello, then answers each request with `reply_for(request kind)`.
fn scripted_agent(
    reply_for: impl Fn(&Request<'_>) -> Reply<'static> + Send + 'static,
) -> (
    tempfile::TempDir,
    std::path::PathBuf,
    std::thread::JoinHandle<()>,
) {
    raw_server(move |mut stream| {
        let mut reader = FrameReader::new(1 << 20);
        let mut out = Vec::new();
        let hello = reader.read_frame(&mut stream).unwrap();
        let (h, _) = Request::decode(hello).unwrap();
        let ok = Reply::Hello(ember_agent_proto::HelloOk {
            version: 1,
            max_frame_len: 4096,
            name: "scripted",
            software_version: "0",
        });
        encode_into_vec(&mut out, |b| ok.encode(h.request_id, b)).unwrap();
        stream.write_all(&out).unwrap();
        while let Ok(bytes) = reader.read_frame(&mut stream) {
            let (h, request) = Request::decode(bytes).unwrap();
            let reply = reply_for(&request);
            encode_into_vec(&mut out, |b| reply.encode(h.request_id, b)).unwrap();
            if stream.write_all(&out).is_err() {
                return;
            }
        }
    })
}

#[test]
fn a_failed_reseed_sent_ahead_fails_the_next_call_and_poisons() {
    // The agent refuses Reseed but would answer Exec: the Exec's answer must not be handed on.
    let (_dir, path, server) = scripted_agent(|request| match request {
        Request::Reseed(_) => Reply::Error(ember_agent_proto::ErrorReply {
            code: ember_agent_proto::ErrorCode::IO,
            message: "no entropy sink",
        }),
        _ => Reply::Exec(ember_agent_proto::ExecResult {
            exit_code: 0,
            stdout_truncated: false,
            stderr_truncated: false,
            stdout: b"leaked\n",
            stderr: b"",
        }),
    });
    let mut client = AgentClient::connect(&path, 52, OK_TIMEOUT).unwrap();
    client.send_reseed_fresh(5).unwrap();
    let err = client.exec(&Exec::new(&["echo", "x"])).unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Agent {
                request: Kind::Reseed,
                ..
            }
        ),
        "{err}"
    );
    assert!(client.poisoned().is_some());
    assert!(matches!(
        client.ping().unwrap_err(),
        ClientError::Poisoned { .. }
    ));
    drop(client);
    server.join().unwrap();

    // A Reseeded for another generation is a protocol violation, found by finish_pending too.
    let (_dir, path, server) = scripted_agent(|_| Reply::Reseeded { generation: 99 });
    let mut client = AgentClient::connect(&path, 52, OK_TIMEOUT).unwrap();
    client.send_reseed_fresh(5).unwrap();
    let err = client.finish_pending().unwrap_err();
    assert!(
        matches!(
            &err,
            ClientError::Protocol { request: Kind::Reseed, detail } if detail.contains("99")
        ),
        "{err}"
    );
    assert!(client.poisoned().is_some());
    drop(client);
    server.join().unwrap();
}
