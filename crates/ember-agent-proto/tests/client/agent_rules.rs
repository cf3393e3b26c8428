//! The agent-side rules seen over a real socket: Hello first, Unsupported for unknown kinds,
//! Error for unknown versions, close after a malformed request.

use std::io::{Read, Write};
use std::time::Instant;

use crate::common::{Fixture, OK_TIMEOUT, frame};
use ember_agent_proto::io::{FrameReader, encode_into_vec};
use ember_agent_proto::test_agent::Fault;
use ember_agent_proto::vsock;
use ember_agent_proto::{Header, Hello, Kind, Ping, Reply, Request};

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
