//! The agent protocol (`ember-agent-proto`), through its public API only.
//!
//! - `agent_decode`: one frame, decoded every way the crate can (`split_frame`,
//!   `Request::decode`, `Reply::decode`); whatever is accepted must re-encode to the same bytes
//!   (the wire format is canonical) with an `encoded_len` that matches.
//! - `agent_session`: a byte stream from a host, cut into chunks as the input says, reassembled
//!   by `FrameBuffer` (the guest side) and by `io::FrameReader` (the host side), every frame
//!   handed to one guest `Session` (Hello negotiation, Ping, errors, malformed frames): it
//!   never panics, any reply it writes is a valid reply frame that fits the negotiated limit
//!   and answers the request's id, and a Close ends the connection as a real agent would.

// A fuzz target reports a bug by panicking: `expect` states the invariant that broke.
#![allow(clippy::expect_used)]

use ember_agent_proto::io::FrameReader;
use ember_agent_proto::limits::MIN_FRAME_LEN;
use ember_agent_proto::{AgentIdentity, FrameBuffer, Reply, Request, Session, Step, split_frame};

/// `agent_decode`.
pub fn decode(data: &[u8]) {
    let split = split_frame(data);
    if let Ok((h, req)) = Request::decode(data) {
        assert!(
            split.is_ok(),
            "a request decoded from a frame split_frame refuses"
        );
        let len = req.encoded_len().expect("an accepted request has a length");
        assert_eq!(len, data.len(), "encoded_len of an accepted request");
        let mut out = vec![0u8; data.len()];
        let n = req
            .encode(h.request_id, &mut out)
            .expect("re-encoding a request");
        assert_eq!(&out[..n], data, "an accepted request is not canonical");
    }
    if let Ok((h, reply)) = Reply::decode(data) {
        assert!(
            split.is_ok(),
            "a reply decoded from a frame split_frame refuses"
        );
        let len = reply.encoded_len().expect("an accepted reply has a length");
        assert_eq!(len, data.len(), "encoded_len of an accepted reply");
        let mut out = vec![0u8; data.len()];
        let n = reply
            .encode(h.request_id, &mut out)
            .expect("re-encoding a reply");
        assert_eq!(&out[..n], data, "an accepted reply is not canonical");
    }
}

/// `agent_session`: the first byte picks the guest's buffer size, then `[chunk len][chunk]...`.
pub fn session(data: &[u8]) {
    let Some((&cfg, mut rest)) = data.split_first() else {
        return;
    };
    let max_frame = MIN_FRAME_LEN << (cfg & 3);
    let mut storage = vec![0u8; max_frame];
    let mut fb = FrameBuffer::new(&mut storage);
    let mut session = Session::new(AgentIdentity {
        name: "fuzz",
        software_version: "0",
        max_frame_len: max_frame as u32,
    });
    let mut out = vec![0u8; max_frame];
    let mut stream = Vec::new();
    'conn: while let Some((&n, tail)) = rest.split_first() {
        let n = usize::from(n).min(tail.len());
        let (chunk, tail) = tail.split_at(n);
        rest = tail;
        stream.extend_from_slice(chunk);
        let mut chunk = chunk;
        while !chunk.is_empty() {
            let took = fb.push(chunk);
            chunk = &chunk[took..];
            loop {
                let frame = match fb.next_frame() {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(_) => break 'conn,
                };
                let id = split_frame(frame).map(|(h, _)| h.request_id);
                let limit = session.reply_limit();
                let reply_len = match session.handle(frame, &mut out) {
                    Step::Reply { len } => len,
                    Step::Close { reply_len, .. } => {
                        check_reply(&out[..reply_len], id.ok(), limit);
                        break 'conn;
                    }
                    Step::Request {
                        request_id,
                        request,
                    } => {
                        assert_eq!(Ok(request_id), id, "request id");
                        // What an agent does with a request it serves: reply, within limits.
                        let reply = Reply::Error(ember_agent_proto::ErrorReply {
                            code: ember_agent_proto::ErrorCode::MALFORMED,
                            message: "fuzz",
                        });
                        let _ = request.encoded_len();
                        session
                            .reply_or_error(request_id, &reply, &mut out)
                            .unwrap_or(0)
                    }
                };
                check_reply(&out[..reply_len], id.ok(), limit.max(session.reply_limit()));
            }
            if took == 0 {
                break 'conn;
            }
        }
    }
    // The host side's reassembler over the same bytes.
    let mut reader = FrameReader::new(max_frame);
    let mut src = &stream[..];
    while let Ok(frame) = reader.read_frame(&mut src) {
        let _ = Reply::decode(frame);
        let _ = Request::decode(frame);
    }
}

fn check_reply(reply: &[u8], id: Option<u64>, limit: usize) {
    if reply.is_empty() {
        return;
    }
    assert!(
        reply.len() <= limit,
        "a reply of {} bytes past the limit {limit}",
        reply.len()
    );
    let (h, _) = Reply::decode(reply).expect("the session wrote an invalid reply");
    if let Some(id) = id {
        assert_eq!(h.request_id, id, "the reply answers another request");
    }
}

fn encode_request(r: &Request<'_>, id: u64) -> Vec<u8> {
    let mut out = vec![0u8; r.encoded_len().unwrap_or(0)];
    let n = r.encode(id, &mut out).unwrap_or(0);
    out.truncate(n);
    out
}

fn encode_reply(r: &Reply<'_>, id: u64) -> Vec<u8> {
    let mut out = vec![0u8; r.encoded_len().unwrap_or(0)];
    let n = r.encode(id, &mut out).unwrap_or(0);
    out.truncate(n);
    out
}

/// One frame of every request kind (index 0 is Hello).
fn request_frames() -> Vec<Vec<u8>> {
    use ember_agent_proto::{
        ByteList, Exec, ExecIn, GetFile, Hello, ListDir, MakeDir, Ping, PutFile, Remove, Rename,
        Reseed, Stat,
    };
    let argv: [&[u8]; 3] = [b"sh", b"-c", b"echo hi"];
    let env: [&[u8]; 1] = [b"PATH=/bin"];
    let reqs = [
        Request::Hello(Hello {
            versions: &[1],
            max_frame_len: 65536,
            name: "host",
            software_version: "1.0",
        }),
        Request::Ping(Ping { payload: b"ping" }),
        Request::Health,
        Request::Exec(Exec {
            argv: ByteList::from_bytes(&argv),
            env: ByteList::from_bytes(&env),
            stdin: b"in",
            timeout_ms: 1000,
        }),
        Request::PutFile(PutFile {
            path: b"/tmp/f",
            mode: 0o644,
            offset: 0,
            data: b"data",
        }),
        Request::GetFile(GetFile {
            path: b"/tmp/f",
            offset: 0,
            max_len: 4096,
        }),
        Request::Reseed(Reseed {
            generation: 2,
            wall_clock_ns: 1_700_000_000_000_000_000,
            entropy: &[7; 32],
        }),
        Request::Shutdown,
        Request::Stat(Stat { path: b"/etc" }),
        Request::ListDir(ListDir {
            path: b"/",
            depth: 2,
            offset: 0,
            max_entries: 100,
        }),
        Request::MakeDir(MakeDir {
            path: b"/tmp/d/e",
            mode: 0o755,
            parents: true,
        }),
        Request::Remove(Remove {
            path: b"/tmp/d",
            recursive: true,
        }),
        Request::Rename(Rename {
            from: b"/tmp/a",
            to: b"/tmp/b",
        }),
        Request::ExecIn(ExecIn {
            argv: ByteList::from_bytes(&argv),
            env: ByteList::from_bytes(&env),
            cwd: b"/tmp",
            user: "root",
            stdin: b"",
            timeout_ms: 500,
        }),
        Request::TcpConnect { port: 8000 },
    ];
    reqs.iter()
        .enumerate()
        .map(|(i, r)| encode_request(r, i as u64 + 1))
        .collect()
}

/// One frame of every reply kind.
fn reply_frames() -> Vec<Vec<u8>> {
    use ember_agent_proto::{
        DirEntries, DirEntry, DirListing, ErrorCode, ErrorReply, ExecResult, FileData, FileKind,
        FileStat, HealthReport, HelloOk,
    };
    let stat = FileStat {
        kind: FileKind::File,
        mode: 0o644,
        size: 4,
        mtime_ns: 1,
        owner: "root",
        group: "root",
        target: b"",
    };
    let entries = [DirEntry { name: b"f", stat }];
    let exec = ExecResult {
        exit_code: 0,
        stdout_truncated: false,
        stderr_truncated: true,
        stdout: b"hi\n",
        stderr: b"",
    };
    let replies = [
        Reply::Hello(HelloOk {
            version: 1,
            max_frame_len: 65536,
            name: "agent",
            software_version: "0.1",
        }),
        Reply::Pong { payload: b"ping" },
        Reply::Health(HealthReport {
            uptime_ns: 5,
            boot_id: [1; 16],
            generation: 0,
        }),
        Reply::Exec(exec),
        Reply::PutFile,
        Reply::File(FileData {
            mode: 0o644,
            size: 4,
            data: b"data",
        }),
        Reply::Reseeded { generation: 2 },
        Reply::Shutdown,
        Reply::Error(ErrorReply {
            code: ErrorCode::MALFORMED,
            message: "bad",
        }),
        Reply::Unsupported { kind: 0x42 },
        Reply::Stat(stat),
        Reply::DirListing(DirListing {
            more: false,
            entries: DirEntries::from_slice(&entries),
        }),
        Reply::MakeDir { created: true },
        Reply::Remove,
        Reply::Rename,
        Reply::ExecIn(exec),
        Reply::TcpConnected,
    ];
    replies
        .iter()
        .enumerate()
        .map(|(i, r)| encode_reply(r, i as u64 + 1))
        .collect()
}

/// `agent_decode` seeds: a frame of every request and reply kind.
pub fn seeds_decode() -> Vec<Vec<u8>> {
    let mut v = request_frames();
    v.extend(reply_frames());
    v
}

/// `agent_session` seeds: Hello then every request, in one chunk and in small chunks, and
/// a request before Hello.
pub fn seeds_session() -> Vec<Vec<u8>> {
    let frames = request_frames();
    let stream: Vec<u8> = frames.concat();
    let chunked = |cfg: u8, size: usize| {
        let mut v = vec![cfg];
        for c in stream.chunks(size) {
            v.push(c.len() as u8);
            v.extend_from_slice(c);
        }
        v
    };
    let mut before_hello = vec![0u8];
    for f in frames.iter().skip(1).take(2) {
        before_hello.push(f.len() as u8);
        before_hello.extend_from_slice(f);
    }
    vec![chunked(0, 255), chunked(1, 7), before_hello]
}
