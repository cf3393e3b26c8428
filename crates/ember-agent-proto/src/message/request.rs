//! Requests (host → agent): their borrowed types and body codec.
//!
//! Owns the body layout of the eight request kinds. Decoded requests borrow from the frame buffer
//! (no allocation); requests to encode borrow from the caller. Framing is the frame module's job.

use super::rules;
use super::{encoded_len_of, kind_of};
use crate::codec::{Reader, Writer};
use crate::error::{DecodeError, EncodeError, FieldError};
use crate::frame::{self, Header};
use crate::kind::Kind;
use crate::limits::{MAX_FRAME_LEN, VERSION};
use crate::list::ByteList;

/// Hello: the versions the host speaks and the largest frame it accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello<'a> {
    /// Protocol versions the sender speaks, one byte each (1..=16 of them, none zero).
    pub versions: &'a [u8],
    /// Largest frame (length prefix included) the sender accepts; at least `MIN_FRAME_LEN`.
    pub max_frame_len: u32,
    /// The sender's name (UTF-8, up to 64 bytes).
    pub name: &'a str,
    /// The sender's software version (UTF-8, up to 64 bytes).
    pub software_version: &'a str,
}

/// Ping: an opaque payload the agent echoes back in Pong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Ping<'a> {
    /// Bytes to echo.
    pub payload: &'a [u8],
}

/// Exec: run a command in the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exec<'a> {
    /// Program and arguments (1..=256 entries, each up to 4096 bytes without NUL).
    pub argv: ByteList<'a>,
    /// Environment entries `KEY=VALUE` (up to 256, each up to 4096 bytes without NUL).
    pub env: ByteList<'a>,
    /// Bytes fed to the command's standard input.
    pub stdin: &'a [u8],
    /// Guest-side time limit in milliseconds; 0 means none.
    pub timeout_ms: u32,
}

impl<'a> Exec<'a> {
    /// A command with no environment, no stdin and no guest-side time limit.
    pub const fn new(argv: &'a [&'a str]) -> Self {
        Exec {
            argv: ByteList::from_strs(argv),
            env: ByteList::EMPTY,
            stdin: &[],
            timeout_ms: 0,
        }
    }

    /// With environment entries `KEY=VALUE`.
    pub const fn with_env(mut self, env: &'a [&'a str]) -> Self {
        self.env = ByteList::from_strs(env);
        self
    }

    /// With bytes for standard input.
    pub const fn with_stdin(mut self, stdin: &'a [u8]) -> Self {
        self.stdin = stdin;
        self
    }

    /// With a guest-side time limit.
    pub const fn with_timeout_ms(mut self, timeout_ms: u32) -> Self {
        self.timeout_ms = timeout_ms;
        self
    }
}

/// PutFile: write `data` at `offset` of the file at `path`.
///
/// At offset 0 the file is created (with `mode`) or truncated; at other offsets it must exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PutFile<'a> {
    /// Guest path (1..=4096 bytes, no NUL).
    pub path: &'a [u8],
    /// Permission bits (at most 0o7777).
    pub mode: u32,
    /// Byte offset to write at.
    pub offset: u64,
    /// Bytes to write.
    pub data: &'a [u8],
}

/// GetFile: read up to `max_len` bytes at `offset` of the file at `path`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GetFile<'a> {
    /// Guest path (1..=4096 bytes, no NUL).
    pub path: &'a [u8],
    /// Byte offset to read from.
    pub offset: u64,
    /// Most bytes to return; 0 means as many as fit in one reply frame.
    pub max_len: u32,
}

/// Reseed: fresh entropy, the wall-clock time and a new generation, sent after a clone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reseed<'a> {
    /// The VM's new generation number.
    pub generation: u64,
    /// Wall-clock time, nanoseconds since the Unix epoch.
    pub wall_clock_ns: u64,
    /// Fresh random bytes to mix into the guest's entropy pool (16..=256 bytes).
    pub entropy: &'a [u8],
}

/// A request, borrowed from a decoded frame or from the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// Version negotiation.
    Hello(Hello<'a>),
    /// Liveness with echo.
    Ping(Ping<'a>),
    /// Uptime, boot id, generation.
    Health,
    /// Run a command.
    Exec(Exec<'a>),
    /// Write a file (chunk).
    PutFile(PutFile<'a>),
    /// Read a file (chunk).
    GetFile(GetFile<'a>),
    /// Post-clone reseed.
    Reseed(Reseed<'a>),
    /// Power off.
    Shutdown,
}

impl<'a> Request<'a> {
    /// The message kind.
    pub const fn kind(&self) -> Kind {
        match self {
            Request::Hello(_) => Kind::Hello,
            Request::Ping(_) => Kind::Ping,
            Request::Health => Kind::Health,
            Request::Exec(_) => Kind::Exec,
            Request::PutFile(_) => Kind::PutFile,
            Request::GetFile(_) => Kind::GetFile,
            Request::Reseed(_) => Kind::Reseed,
            Request::Shutdown => Kind::Shutdown,
        }
    }

    /// Encodes the request as one frame into `out`; returns the frame's length.
    pub fn encode(&self, request_id: u64, out: &mut [u8]) -> Result<usize, EncodeError> {
        self.encode_limited(request_id, MAX_FRAME_LEN, out)
    }

    /// Like [`encode`](Self::encode), refusing frames larger than `max_frame_len` (the peer's).
    pub fn encode_limited(
        &self,
        request_id: u64,
        max_frame_len: usize,
        out: &mut [u8],
    ) -> Result<usize, EncodeError> {
        let kind = self.kind();
        let header = Header {
            version: VERSION,
            kind: kind.as_u8(),
            request_id,
        };
        frame::encode_with(header, kind, out, max_frame_len, |w| self.write_body(w))
    }

    /// The size of the frame [`encode`](Self::encode) would produce.
    pub fn encoded_len(&self) -> Result<usize, EncodeError> {
        encoded_len_of(|out| self.encode(0, out))
    }

    /// Decodes one whole frame holding a request.
    pub fn decode(frame: &'a [u8]) -> Result<(Header, Request<'a>), DecodeError> {
        let (header, body) = frame::split_frame(frame)?;
        Ok((header, Request::decode_body(&header, body)?))
    }

    /// Decodes a request body given its (already split) header.
    pub fn decode_body(header: &Header, body: &'a [u8]) -> Result<Request<'a>, DecodeError> {
        let kind = kind_of(header, true)?;
        let mut r = Reader::new(body, kind);
        let request = match kind {
            Kind::Hello => Request::Hello(Hello {
                versions: r.bytes(&rules::VERSIONS)?,
                max_frame_len: r.u32_in("max_frame_len", rules::MAX_FRAME)?,
                name: r.text(&rules::NAME)?,
                software_version: r.text(&rules::SOFTWARE_VERSION)?,
            }),
            Kind::Ping => Request::Ping(Ping {
                payload: r.bytes(&rules::PAYLOAD)?,
            }),
            Kind::Health => Request::Health,
            Kind::Exec => Request::Exec(Exec {
                argv: r.list(&rules::ARGV)?,
                env: r.list(&rules::ENV)?,
                stdin: r.bytes(&rules::STDIN)?,
                timeout_ms: r.u32("timeout_ms")?,
            }),
            Kind::PutFile => Request::PutFile(PutFile {
                path: r.bytes(&rules::PATH)?,
                mode: r.u32_in("mode", rules::MODE)?,
                offset: r.u64("offset")?,
                data: r.bytes(&rules::DATA)?,
            }),
            Kind::GetFile => Request::GetFile(GetFile {
                path: r.bytes(&rules::PATH)?,
                offset: r.u64("offset")?,
                max_len: r.u32("max_len")?,
            }),
            Kind::Reseed => Request::Reseed(Reseed {
                generation: r.u64("generation")?,
                wall_clock_ns: r.u64("wall_clock_ns")?,
                entropy: r.bytes(&rules::ENTROPY)?,
            }),
            Kind::Shutdown => Request::Shutdown,
            _ => return Err(DecodeError::UnknownKind { kind: header.kind }),
        };
        super::finish(&r, kind)?;
        Ok(request)
    }

    fn write_body(&self, w: &mut Writer<'_>) -> Result<(), FieldError> {
        match self {
            Request::Hello(h) => {
                w.bytes(&rules::VERSIONS, h.versions)?;
                w.u32_in("max_frame_len", h.max_frame_len, rules::MAX_FRAME)?;
                w.bytes(&rules::NAME, h.name.as_bytes())?;
                w.bytes(&rules::SOFTWARE_VERSION, h.software_version.as_bytes())?;
            }
            Request::Ping(p) => w.bytes(&rules::PAYLOAD, p.payload)?,
            Request::Health | Request::Shutdown => {}
            Request::Exec(e) => {
                w.list(&rules::ARGV, &e.argv)?;
                w.list(&rules::ENV, &e.env)?;
                w.bytes(&rules::STDIN, e.stdin)?;
                w.u32(e.timeout_ms);
            }
            Request::PutFile(p) => {
                w.bytes(&rules::PATH, p.path)?;
                w.u32_in("mode", p.mode, rules::MODE)?;
                w.u64(p.offset);
                w.bytes(&rules::DATA, p.data)?;
            }
            Request::GetFile(g) => {
                w.bytes(&rules::PATH, g.path)?;
                w.u64(g.offset);
                w.u32(g.max_len);
            }
            Request::Reseed(r) => {
                w.u64(r.generation);
                w.u64(r.wall_clock_ns);
                w.bytes(&rules::ENTROPY, r.entropy)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::FieldProblem;
    use crate::limits::{HEADER_LEN, MAX_ARGS};

    fn round_trip(req: Request<'_>) {
        let mut buf = [0u8; 8192];
        let n = req.encode(42, &mut buf).unwrap();
        assert_eq!(req.encoded_len().unwrap(), n);
        let (header, back) = Request::decode(&buf[..n]).unwrap();
        assert_eq!(header.request_id, 42);
        assert_eq!(header.kind, req.kind().as_u8());
        assert_eq!(back, req);
    }

    #[test]
    fn every_request_round_trips() {
        round_trip(Request::Hello(Hello {
            versions: &[1, 2],
            max_frame_len: 65536,
            name: "ember-host",
            software_version: "0.1.0",
        }));
        round_trip(Request::Ping(Ping { payload: b"abc" }));
        round_trip(Request::Health);
        round_trip(Request::Exec(
            Exec::new(&["echo", "hi"])
                .with_env(&["A=1"])
                .with_stdin(b"in")
                .with_timeout_ms(5),
        ));
        round_trip(Request::PutFile(PutFile {
            path: b"/tmp/x",
            mode: 0o644,
            offset: 3,
            data: b"data",
        }));
        round_trip(Request::GetFile(GetFile {
            path: b"/etc/hostname",
            offset: 0,
            max_len: 0,
        }));
        round_trip(Request::Reseed(Reseed {
            generation: 9,
            wall_clock_ns: 1_700_000_000_000_000_000,
            entropy: &[7; 32],
        }));
        round_trip(Request::Shutdown);
    }

    #[test]
    fn health_is_a_bare_header() {
        let mut buf = [0u8; 32];
        let n = Request::Health.encode(1, &mut buf).unwrap();
        assert_eq!(n, HEADER_LEN);
        assert_eq!(
            &buf[..n],
            &[12, 0, 0, 0, 1, 0x03, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn documented_ping_example_matches() {
        // The example at the end of WIRE-FORMAT.md.
        let mut buf = [0u8; 32];
        let n = Request::Ping(Ping { payload: b"hi" })
            .encode(2, &mut buf)
            .unwrap();
        assert_eq!(
            &buf[..n],
            &[
                0x12, 0, 0, 0, 1, 0x02, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, b'h', b'i'
            ]
        );
    }

    #[test]
    fn limits_are_enforced_on_encode() {
        let mut buf = [0u8; 64];
        let argv = ["x"; MAX_ARGS + 1];
        let err = Request::Exec(Exec::new(&argv))
            .encode(1, &mut buf)
            .unwrap_err();
        assert!(matches!(
            err,
            EncodeError::Field(FieldError {
                problem: FieldProblem::TooMany { .. },
                ..
            })
        ));
        let err = Request::Exec(Exec::new(&[]))
            .encode(1, &mut buf)
            .unwrap_err();
        assert!(matches!(err, EncodeError::Field(_)));
        let err = Request::Exec(Exec::new(&["a\0b"]))
            .encode(1, &mut buf)
            .unwrap_err();
        assert!(matches!(err, EncodeError::Field(_)));
        let err = Request::Reseed(Reseed {
            generation: 1,
            wall_clock_ns: 1,
            entropy: &[1; 8],
        })
        .encode(1, &mut buf)
        .unwrap_err();
        assert!(matches!(err, EncodeError::Field(_)));
    }

    #[test]
    fn frame_limit_is_enforced_on_encode() {
        let data = [0u8; 5000];
        let mut buf = [0u8; 8192];
        let err = Request::Ping(Ping { payload: &data })
            .encode_limited(1, 4096, &mut buf)
            .unwrap_err();
        assert!(matches!(err, EncodeError::FrameTooLarge { max: 4096, .. }));
    }

    #[test]
    fn trailing_bytes_and_reply_kinds_are_rejected() {
        let mut buf = [0u8; 64];
        let header = Header {
            version: VERSION,
            kind: Kind::Health.as_u8(),
            request_id: 3,
        };
        let n = frame::encode_raw_frame(header, b"x", &mut buf).unwrap();
        assert!(matches!(
            Request::decode(&buf[..n]),
            Err(DecodeError::TrailingBytes { extra: 1, .. })
        ));
        let header = Header {
            kind: Kind::Pong.as_u8(),
            ..header
        };
        let n = frame::encode_raw_frame(header, b"", &mut buf).unwrap();
        assert_eq!(
            Request::decode(&buf[..n]),
            Err(DecodeError::UnknownKind { kind: 0x82 })
        );
        let header = Header {
            version: 2,
            kind: Kind::Health.as_u8(),
            request_id: 3,
        };
        let n = frame::encode_raw_frame(header, b"", &mut buf).unwrap();
        assert_eq!(
            Request::decode(&buf[..n]),
            Err(DecodeError::UnsupportedVersion { version: 2 })
        );
    }
}
