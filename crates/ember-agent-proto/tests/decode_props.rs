//! Property tests: decoding never panics on any bytes, accepted frames are canonical, every message
//! round-trips, and the guest session and both frame reassemblers survive anything.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use ember_agent_proto::io::FrameReader;
use ember_agent_proto::{
    AgentIdentity, ByteList, CloseReason, DirEntries, DirEntry, DirListing, ErrorCode, ErrorReply,
    Exec, ExecIn, ExecResult, FileData, FileKind, FileStat, FrameBuffer, GetFile, HealthReport,
    Hello, HelloOk, ListDir, MakeDir, Ping, PutFile, Remove, Rename, Reply, Request, Reseed,
    Session, Stat, Step, split_frame,
};
use proptest::prelude::*;

/// Owned requests, turned into borrowed `Request`s for each check.
#[derive(Clone, Debug)]
enum OwnedRequest {
    Hello(Vec<u8>, u32, String, String),
    Ping(Vec<u8>),
    Health,
    Exec(Vec<Vec<u8>>, Vec<Vec<u8>>, Vec<u8>, u32),
    PutFile(Vec<u8>, u32, u64, Vec<u8>),
    GetFile(Vec<u8>, u64, u32),
    Reseed(u64, u64, Vec<u8>),
    Shutdown,
    Stat(Vec<u8>),
    ListDir(Vec<u8>, u32, u32, u32),
    MakeDir(Vec<u8>, u32, bool),
    Remove(Vec<u8>, bool),
    Rename(Vec<u8>, Vec<u8>),
    ExecIn(Vec<Vec<u8>>, Vec<Vec<u8>>, Vec<u8>, String, Vec<u8>, u32),
    TcpConnect(u16),
}

impl OwnedRequest {
    fn with<R>(&self, f: impl FnOnce(&Request<'_>) -> R) -> R {
        match self {
            OwnedRequest::Hello(versions, max, name, sv) => f(&Request::Hello(Hello {
                versions,
                max_frame_len: *max,
                name,
                software_version: sv,
            })),
            OwnedRequest::Ping(payload) => f(&Request::Ping(Ping { payload })),
            OwnedRequest::Health => f(&Request::Health),
            OwnedRequest::Exec(argv, env, stdin, timeout_ms) => {
                let argv: Vec<&[u8]> = argv.iter().map(Vec::as_slice).collect();
                let env: Vec<&[u8]> = env.iter().map(Vec::as_slice).collect();
                f(&Request::Exec(Exec {
                    argv: ByteList::from_bytes(&argv),
                    env: ByteList::from_bytes(&env),
                    stdin,
                    timeout_ms: *timeout_ms,
                }))
            }
            OwnedRequest::PutFile(path, mode, offset, data) => f(&Request::PutFile(PutFile {
                path,
                mode: *mode,
                offset: *offset,
                data,
            })),
            OwnedRequest::GetFile(path, offset, max_len) => f(&Request::GetFile(GetFile {
                path,
                offset: *offset,
                max_len: *max_len,
            })),
            OwnedRequest::Reseed(generation, wall_clock_ns, entropy) => {
                f(&Request::Reseed(Reseed {
                    generation: *generation,
                    wall_clock_ns: *wall_clock_ns,
                    entropy,
                }))
            }
            OwnedRequest::Shutdown => f(&Request::Shutdown),
            OwnedRequest::Stat(path) => f(&Request::Stat(Stat { path })),
            OwnedRequest::ListDir(path, depth, offset, max_entries) => {
                f(&Request::ListDir(ListDir {
                    path,
                    depth: *depth,
                    offset: *offset,
                    max_entries: *max_entries,
                }))
            }
            OwnedRequest::MakeDir(path, mode, parents) => f(&Request::MakeDir(MakeDir {
                path,
                mode: *mode,
                parents: *parents,
            })),
            OwnedRequest::Remove(path, recursive) => f(&Request::Remove(Remove {
                path,
                recursive: *recursive,
            })),
            OwnedRequest::Rename(from, to) => f(&Request::Rename(Rename { from, to })),
            OwnedRequest::ExecIn(argv, env, cwd, user, stdin, timeout_ms) => {
                let argv: Vec<&[u8]> = argv.iter().map(Vec::as_slice).collect();
                let env: Vec<&[u8]> = env.iter().map(Vec::as_slice).collect();
                f(&Request::ExecIn(ExecIn {
                    argv: ByteList::from_bytes(&argv),
                    env: ByteList::from_bytes(&env),
                    cwd,
                    user,
                    stdin,
                    timeout_ms: *timeout_ms,
                }))
            }
            OwnedRequest::TcpConnect(port) => f(&Request::TcpConnect { port: *port }),
        }
    }

    fn encode(&self, id: u64) -> Vec<u8> {
        self.with(|r| {
            let mut out = vec![0u8; r.encoded_len().unwrap()];
            let n = r.encode(id, &mut out).unwrap();
            assert_eq!(n, out.len());
            out
        })
    }
}

/// Owned replies.
#[derive(Clone, Debug)]
enum OwnedReply {
    Hello(u8, u32, String, String),
    Pong(Vec<u8>),
    Health(u64, [u8; 16], u64),
    Exec(i32, bool, bool, Vec<u8>, Vec<u8>),
    PutFile,
    TcpConnected,
    File(u32, u64, Vec<u8>),
    Reseeded(u64),
    Shutdown,
    Error(u16, String),
    Unsupported(u8),
    Stat(OwnedStat),
    DirListing(bool, Vec<(Vec<u8>, OwnedStat)>),
    MakeDir(bool),
    Remove,
    Rename,
    ExecIn(i32, bool, bool, Vec<u8>, Vec<u8>),
}

/// An owned StatResult body: kind, mode, size, mtime, owner, group, target.
#[derive(Clone, Debug)]
struct OwnedStat(FileKind, u32, u64, u64, String, String, Vec<u8>);

impl OwnedStat {
    fn borrow(&self) -> FileStat<'_> {
        FileStat {
            kind: self.0,
            mode: self.1,
            size: self.2,
            mtime_ns: self.3,
            owner: &self.4,
            group: &self.5,
            target: &self.6,
        }
    }
}

impl OwnedReply {
    fn with<R>(&self, f: impl FnOnce(&Reply<'_>) -> R) -> R {
        if let OwnedReply::DirListing(more, entries) = self {
            let entries: Vec<DirEntry<'_>> = entries
                .iter()
                .map(|(name, stat)| DirEntry {
                    name,
                    stat: stat.borrow(),
                })
                .collect();
            return f(&Reply::DirListing(DirListing {
                more: *more,
                entries: DirEntries::from_slice(&entries),
            }));
        }
        f(&match self {
            OwnedReply::Hello(version, max, name, sv) => Reply::Hello(HelloOk {
                version: *version,
                max_frame_len: *max,
                name,
                software_version: sv,
            }),
            OwnedReply::Pong(payload) => Reply::Pong { payload },
            OwnedReply::Health(uptime_ns, boot_id, generation) => Reply::Health(HealthReport {
                uptime_ns: *uptime_ns,
                boot_id: *boot_id,
                generation: *generation,
            }),
            OwnedReply::Exec(exit_code, o, e, stdout, stderr) => Reply::Exec(ExecResult {
                exit_code: *exit_code,
                stdout_truncated: *o,
                stderr_truncated: *e,
                stdout,
                stderr,
            }),
            OwnedReply::PutFile => Reply::PutFile,
            OwnedReply::TcpConnected => Reply::TcpConnected,
            OwnedReply::File(mode, size, data) => Reply::File(FileData {
                mode: *mode,
                size: *size,
                data,
            }),
            OwnedReply::Reseeded(generation) => Reply::Reseeded {
                generation: *generation,
            },
            OwnedReply::Shutdown => Reply::Shutdown,
            OwnedReply::Error(code, message) => Reply::Error(ErrorReply {
                code: ErrorCode(*code),
                message,
            }),
            OwnedReply::Unsupported(kind) => Reply::Unsupported { kind: *kind },
            OwnedReply::Stat(stat) => Reply::Stat(stat.borrow()),
            OwnedReply::DirListing(..) => unreachable!("handled above"),
            OwnedReply::MakeDir(created) => Reply::MakeDir { created: *created },
            OwnedReply::Remove => Reply::Remove,
            OwnedReply::Rename => Reply::Rename,
            OwnedReply::ExecIn(exit_code, o, e, stdout, stderr) => Reply::ExecIn(ExecResult {
                exit_code: *exit_code,
                stdout_truncated: *o,
                stderr_truncated: *e,
                stdout,
                stderr,
            }),
        })
    }

    fn encode(&self, id: u64) -> Vec<u8> {
        self.with(|r| {
            let mut out = vec![0u8; r.encoded_len().unwrap()];
            r.encode(id, &mut out).unwrap();
            out
        })
    }
}

fn no_nul(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(1u8..=255, 0..=max)
}

fn path() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(1u8..=255, 1..=48)
}

fn data() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..=96)
}

fn name() -> impl Strategy<Value = String> {
    "\\PC{0,16}"
}

fn env_entry() -> impl Strategy<Value = Vec<u8>> {
    ("[A-Z_][A-Z0-9_]{0,7}", no_nul(12)).prop_map(|(k, v)| {
        let mut e = k.into_bytes();
        e.push(b'=');
        e.extend(v);
        e
    })
}

fn user() -> impl Strategy<Value = String> {
    "[a-z_][a-z0-9_-]{0,15}|"
}

fn stat() -> impl Strategy<Value = OwnedStat> {
    (
        prop_oneof![
            Just(FileKind::File),
            Just(FileKind::Directory),
            Just(FileKind::Symlink),
            Just(FileKind::Other),
        ],
        0u32..=0o7777,
        any::<u64>(),
        any::<u64>(),
        user(),
        user(),
        path(),
    )
        .prop_map(|(kind, mode, size, mtime, owner, group, target)| {
            let target = if kind == FileKind::Symlink {
                target
            } else {
                Vec::new()
            };
            OwnedStat(kind, mode, size, mtime, owner, group, target)
        })
}

fn request() -> impl Strategy<Value = OwnedRequest> {
    prop_oneof![
        (
            prop::collection::vec(1u8..=255, 1..=16),
            4096u32..,
            name(),
            name()
        )
            .prop_map(|(v, m, n, s)| OwnedRequest::Hello(v, m, n, s)),
        data().prop_map(OwnedRequest::Ping),
        Just(OwnedRequest::Health),
        (
            prop::collection::vec(no_nul(16), 1..=6),
            prop::collection::vec(env_entry(), 0..=4),
            data(),
            any::<u32>()
        )
            .prop_map(|(a, e, s, t)| OwnedRequest::Exec(a, e, s, t)),
        (path(), 0u32..=0o7777, any::<u64>(), data())
            .prop_map(|(p, m, o, d)| OwnedRequest::PutFile(p, m, o, d)),
        (path(), any::<u64>(), any::<u32>()).prop_map(|(p, o, m)| OwnedRequest::GetFile(p, o, m)),
        (
            any::<u64>(),
            any::<u64>(),
            prop::collection::vec(any::<u8>(), 16..=256)
        )
            .prop_map(|(g, w, e)| OwnedRequest::Reseed(g, w, e)),
        Just(OwnedRequest::Shutdown),
        path().prop_map(OwnedRequest::Stat),
        (path(), 1u32.., any::<u32>(), any::<u32>())
            .prop_map(|(p, d, o, m)| OwnedRequest::ListDir(p, d, o, m)),
        (path(), 0u32..=0o7777, any::<bool>()).prop_map(|(p, m, r)| OwnedRequest::MakeDir(p, m, r)),
        (path(), any::<bool>()).prop_map(|(p, r)| OwnedRequest::Remove(p, r)),
        (path(), path()).prop_map(|(f, t)| OwnedRequest::Rename(f, t)),
        (
            prop::collection::vec(no_nul(16), 1..=6),
            prop::collection::vec(env_entry(), 0..=4),
            prop_oneof![Just(Vec::new()), path()],
            user(),
            data(),
            any::<u32>()
        )
            .prop_map(|(a, e, c, u, s, t)| OwnedRequest::ExecIn(a, e, c, u, s, t)),
        (1u16..).prop_map(OwnedRequest::TcpConnect),
    ]
}

fn reply() -> impl Strategy<Value = OwnedReply> {
    prop_oneof![
        (1u8.., 4096u32.., name(), name()).prop_map(|(v, m, n, s)| OwnedReply::Hello(v, m, n, s)),
        data().prop_map(OwnedReply::Pong),
        (any::<u64>(), any::<[u8; 16]>(), any::<u64>())
            .prop_map(|(u, b, g)| OwnedReply::Health(u, b, g)),
        (any::<i32>(), any::<bool>(), any::<bool>(), data(), data())
            .prop_map(|(c, o, e, so, se)| OwnedReply::Exec(c, o, e, so, se)),
        Just(OwnedReply::PutFile),
        Just(OwnedReply::TcpConnected),
        (0u32..=0o7777, any::<u64>(), data()).prop_map(|(m, s, d)| OwnedReply::File(m, s, d)),
        any::<u64>().prop_map(OwnedReply::Reseeded),
        Just(OwnedReply::Shutdown),
        (any::<u16>(), "\\PC{0,64}").prop_map(|(c, m)| OwnedReply::Error(c, m)),
        any::<u8>().prop_map(OwnedReply::Unsupported),
        stat().prop_map(OwnedReply::Stat),
        (
            any::<bool>(),
            prop::collection::vec((path(), stat()), 0..=4)
        )
            .prop_map(|(m, e)| OwnedReply::DirListing(m, e)),
        any::<bool>().prop_map(OwnedReply::MakeDir),
        Just(OwnedReply::Remove),
        Just(OwnedReply::Rename),
        (any::<i32>(), any::<bool>(), any::<bool>(), data(), data())
            .prop_map(|(c, o, e, so, se)| OwnedReply::ExecIn(c, o, e, so, se)),
    ]
}

/// A change to a valid frame.
#[derive(Clone, Debug)]
enum Mutation {
    Flip(usize, u8),
    Truncate(usize),
    Insert(usize, u8),
    SetU32(usize, u32),
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    prop::collection::vec(
        prop_oneof![
            (any::<usize>(), 1u8..).prop_map(|(i, b)| Mutation::Flip(i, b)),
            any::<usize>().prop_map(Mutation::Truncate),
            (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
            (any::<usize>(), any::<u32>()).prop_map(|(i, v)| Mutation::SetU32(i, v)),
        ],
        1..=4,
    )
}

fn mutate(mut frame: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let len = frame.len().max(1);
        match *m {
            Mutation::Flip(i, b) => {
                if let Some(byte) = frame.get_mut(i % len) {
                    *byte ^= b;
                }
            }
            Mutation::Truncate(i) => frame.truncate(i % len),
            Mutation::Insert(i, b) => frame.insert(i % (frame.len() + 1), b),
            Mutation::SetU32(i, v) => {
                let at = i % len;
                for (k, byte) in v.to_le_bytes().into_iter().enumerate() {
                    if let Some(slot) = frame.get_mut(at + k) {
                        *slot = byte;
                    }
                }
            }
        }
    }
    frame
}

/// Decodes `bytes` every way the crate can; whatever is accepted must re-encode to the same bytes.
fn decode_everything(bytes: &[u8]) {
    let _ = split_frame(bytes);
    if let Ok((h, req)) = Request::decode(bytes) {
        let mut out = vec![0u8; bytes.len()];
        let n = req.encode(h.request_id, &mut out).unwrap();
        assert_eq!(&out[..n], bytes, "accepted request is not canonical");
    }
    if let Ok((h, reply)) = Reply::decode(bytes) {
        let mut out = vec![0u8; bytes.len()];
        let n = reply.encode(h.request_id, &mut out).unwrap();
        assert_eq!(&out[..n], bytes, "accepted reply is not canonical");
    }
    // The guest session: never panics, and any reply it writes is a valid reply frame.
    let mut session = Session::new(AgentIdentity {
        name: "prop",
        software_version: "0",
        max_frame_len: 4096,
    });
    for _ in 0..2 {
        let mut out = vec![0u8; 4096];
        let len = match session.handle(bytes, &mut out) {
            Step::Reply { len } => len,
            Step::Close { reply_len, reason } => {
                assert!(matches!(reason, CloseReason::Malformed(_)));
                reply_len
            }
            Step::Request { .. } => 0,
        };
        if len > 0 {
            let (h, _) = Reply::decode(&out[..len]).unwrap();
            assert_eq!(h, split_frame(bytes).unwrap().0.with_kind(h.kind));
        }
    }
    // Both reassemblers.
    let mut storage = vec![0u8; 4096];
    let mut fb = FrameBuffer::new(&mut storage);
    fb.push(bytes);
    while let Ok(Some(frame)) = fb.next_frame() {
        let _ = Request::decode(frame);
    }
    let mut reader = FrameReader::new(4096);
    let mut src = bytes;
    while let Ok(frame) = reader.read_frame(&mut src) {
        let _ = Reply::decode(frame);
    }
}

trait WithKind {
    fn with_kind(self, kind: u8) -> Self;
}

impl WithKind for ember_agent_proto::Header {
    fn with_kind(self, kind: u8) -> Self {
        ember_agent_proto::Header {
            version: 1,
            kind,
            ..self
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..=512)) {
        decode_everything(&bytes);
    }

    #[test]
    fn arbitrary_bodies_behind_a_valid_header_never_panic(
        kind in prop_oneof![1u8..=0x0E, 0x81u8..=0x8E, 0xFEu8..=0xFF, any::<u8>()],
        id in any::<u64>(),
        body in prop::collection::vec(any::<u8>(), 0..=256),
    ) {
        let mut frame = ((body.len() + 12) as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(&[1, kind, 0, 0]);
        frame.extend_from_slice(&id.to_le_bytes());
        frame.extend_from_slice(&body);
        decode_everything(&frame);
    }

    #[test]
    fn mutated_requests_never_panic(req in request(), id in any::<u64>(), m in mutations()) {
        decode_everything(&mutate(req.encode(id), &m));
    }

    #[test]
    fn mutated_replies_never_panic(reply in reply(), id in any::<u64>(), m in mutations()) {
        decode_everything(&mutate(reply.encode(id), &m));
    }

    #[test]
    fn requests_round_trip(req in request(), id in any::<u64>()) {
        let bytes = req.encode(id);
        let (h, decoded) = Request::decode(&bytes).unwrap();
        prop_assert_eq!(h.request_id, id);
        req.with(|original| assert_eq!(&decoded, original));
    }

    #[test]
    fn replies_round_trip(reply in reply(), id in any::<u64>()) {
        let bytes = reply.encode(id);
        let (h, decoded) = Reply::decode(&bytes).unwrap();
        prop_assert_eq!(h.request_id, id);
        reply.with(|original| assert_eq!(&decoded, original));
    }

    #[test]
    fn reassembly_is_independent_of_chunking(
        reqs in prop::collection::vec(request(), 1..=8),
        chunks in prop::collection::vec(1usize..=64, 1..=16),
    ) {
        let frames: Vec<Vec<u8>> = reqs.iter().enumerate().map(|(i, r)| r.encode(i as u64)).collect();
        let stream: Vec<u8> = frames.concat();

        // FrameBuffer, fed in the given chunk sizes (cycled).
        let mut storage = vec![0u8; 8192];
        let mut fb = FrameBuffer::new(&mut storage);
        let mut got = Vec::new();
        let mut rest = stream.as_slice();
        let mut sizes = chunks.iter().cycle();
        while !rest.is_empty() {
            let n = (*sizes.next().unwrap()).min(rest.len());
            let taken = fb.push(&rest[..n]);
            rest = &rest[taken..];
            while let Some(frame) = fb.next_frame().unwrap() {
                got.push(frame.to_vec());
            }
        }
        prop_assert_eq!(&got, &frames);

        // FrameReader, reading through a source that returns the same chunk sizes.
        struct Chunked<'a> { data: &'a [u8], sizes: std::iter::Cycle<std::slice::Iter<'a, usize>> }
        impl std::io::Read for Chunked<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = (*self.sizes.next().unwrap()).min(buf.len()).min(self.data.len());
                buf[..n].copy_from_slice(&self.data[..n]);
                self.data = &self.data[n..];
                Ok(n)
            }
        }
        let mut src = Chunked { data: &stream, sizes: chunks.iter().cycle() };
        let mut reader = FrameReader::new(1 << 20);
        for frame in &frames {
            prop_assert_eq!(reader.read_frame(&mut src).unwrap(), frame.as_slice());
        }
    }
}
