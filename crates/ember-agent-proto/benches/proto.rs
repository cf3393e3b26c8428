//! Cost floor of the agent protocol: encode/decode of typical frames, and a client round trip over
//! a Unix socket pair to a responder built from the guest-side `Session` (no VM, no vsock).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ember_agent_proto::limits::MAX_FRAME_LEN;
use ember_agent_proto::{
    AgentClient, AgentIdentity, ConnectOptions, Exec, ExecResult, FileData, FrameBuffer,
    HealthReport, Reply, Request, Session, Step,
};

fn frames() -> Vec<(&'static str, Vec<u8>, bool)> {
    let stdout = vec![b'o'; 4096];
    let file = vec![b'f'; 64 * 1024];
    let encode_req = |r: Request<'_>| {
        let mut out = vec![0u8; r.encoded_len().unwrap()];
        r.encode(1, &mut out).unwrap();
        out
    };
    let encode_reply = |r: Reply<'_>| {
        let mut out = vec![0u8; r.encoded_len().unwrap()];
        r.encode(1, &mut out).unwrap();
        out
    };
    vec![
        ("health_request", encode_req(Request::Health), true),
        (
            "exec_request",
            encode_req(Request::Exec(
                Exec::new(&["/bin/sh", "-c", "echo hello", "--"])
                    .with_env(&["PATH=/bin", "HOME=/"]),
            )),
            true,
        ),
        (
            "health_report",
            encode_reply(Reply::Health(HealthReport::default())),
            false,
        ),
        (
            "exec_result_4k",
            encode_reply(Reply::Exec(ExecResult {
                exit_code: 0,
                stdout_truncated: false,
                stderr_truncated: false,
                stdout: &stdout,
                stderr: b"",
            })),
            false,
        ),
        (
            "file_data_64k",
            encode_reply(Reply::File(FileData {
                mode: 0o644,
                size: file.len() as u64,
                data: &file,
            })),
            false,
        ),
    ]
}

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    for (name, bytes, is_request) in frames() {
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                if is_request {
                    black_box(Request::decode(black_box(&bytes)).unwrap());
                } else {
                    black_box(Reply::decode(black_box(&bytes)).unwrap());
                }
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("encode");
    let mut out = vec![0u8; MAX_FRAME_LEN];
    for (name, bytes, is_request) in frames() {
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        // Re-encode the decoded message: the same work a sender does.
        group.bench_function(name, |b| {
            if is_request {
                let (_, msg) = Request::decode(&bytes).unwrap();
                b.iter(|| black_box(msg.encode(black_box(7), &mut out).unwrap()));
            } else {
                let (_, msg) = Reply::decode(&bytes).unwrap();
                b.iter(|| black_box(msg.encode(black_box(7), &mut out).unwrap()));
            }
        });
    }
    group.finish();
}

/// A responder thread: the guest-side session answering Health, Exec (echo) and Ping.
fn spawn_responder(mut stream: UnixStream) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut storage = vec![0u8; MAX_FRAME_LEN];
        let mut out = vec![0u8; MAX_FRAME_LEN];
        let mut frames = FrameBuffer::new(&mut storage);
        let mut session = Session::new(AgentIdentity {
            name: "bench",
            software_version: "0",
            max_frame_len: MAX_FRAME_LEN as u32,
        });
        let mut stdout = Vec::new();
        loop {
            let n = match stream.read(frames.spare()) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            frames.commit(n);
            while let Ok(Some(frame)) = frames.next_frame() {
                let len = match session.handle(frame, &mut out) {
                    Step::Reply { len } => len,
                    Step::Close { .. } => return,
                    Step::Request {
                        request_id,
                        request,
                    } => {
                        let reply = match request {
                            Request::Health => Reply::Health(HealthReport::default()),
                            Request::Exec(exec) => {
                                stdout.clear();
                                for arg in exec.argv.iter().skip(1) {
                                    stdout.extend_from_slice(arg);
                                }
                                Reply::Exec(ExecResult {
                                    exit_code: 0,
                                    stdout_truncated: false,
                                    stderr_truncated: false,
                                    stdout: &stdout,
                                    stderr: b"",
                                })
                            }
                            other => Reply::Unsupported {
                                kind: other.kind().as_u8(),
                            },
                        };
                        session
                            .reply_or_error(request_id, &reply, &mut out)
                            .unwrap()
                    }
                };
                if stream.write_all(&out[..len]).is_err() {
                    return;
                }
            }
        }
    })
}

fn round_trip(c: &mut Criterion) {
    let (host, guest) = UnixStream::pair().unwrap();
    let responder = spawn_responder(guest);
    let mut client =
        AgentClient::from_stream(host, &ConnectOptions::with_timeout(Duration::from_secs(5)))
            .unwrap();

    let mut group = c.benchmark_group("round_trip_socketpair");
    group.bench_function("ping", |b| b.iter(|| client.ping().unwrap()));
    group.bench_function("health", |b| b.iter(|| black_box(client.health().unwrap())));
    group.bench_function("exec_echo", |b| {
        b.iter(|| black_box(client.exec(&Exec::new(&["echo", "hello"])).unwrap()))
    });
    let payload = vec![0x5a; 64 * 1024];
    group.throughput(Throughput::Bytes(2 * payload.len() as u64));
    group.bench_function("ping_64k", |b| {
        b.iter(|| client.ping_payload(&payload).unwrap())
    });
    group.finish();

    drop(client);
    responder.join().unwrap();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = codec, round_trip
}
criterion_main!(benches);
