//! Guest side: the per-connection state machine a guest agent loop drives (no_std, no alloc).
//!
//! Owns what every agent must do the same way: decode a request frame, answer Hello (version and
//! frame-size negotiation), Ping, unknown kinds (Unsupported) and unknown versions by itself,
//! refuse other requests before Hello, and turn a malformed frame into an Error reply followed by
//! closing the connection. What the agent does for Health, Exec, files, Reseed and Shutdown is the
//! agent's business: the session hands those requests out as [`Step::Request`] and encodes the
//! replies. It does no I/O.
//!
//! A guest loop, per connection:
//!
//! ```
//! use ember_agent_proto::{AgentIdentity, FrameBuffer, HealthReport, Reply, Request, Session, Step};
//!
//! fn serve(rx: &[u8], tx: &mut dyn FnMut(&[u8])) -> Result<(), ()> {
//!     let mut storage = [0u8; 8192];
//!     let mut out = [0u8; 8192];
//!     let mut frames = FrameBuffer::new(&mut storage);
//!     let mut session = Session::new(AgentIdentity {
//!         name: "probe",
//!         software_version: "0.1.0",
//!         max_frame_len: 8192,
//!     });
//!     frames.push(rx); // in a real agent: whatever the vsock driver received
//!     while let Some(frame) = frames.next_frame().map_err(|_| ())? {
//!         match session.handle(frame, &mut out) {
//!             Step::Reply { len } => tx(&out[..len]),
//!             Step::Close { reply_len, .. } => {
//!                 tx(&out[..reply_len]);
//!                 return Err(()); // close the connection
//!             }
//!             Step::Request { request_id, request } => {
//!                 let reply = match request {
//!                     Request::Health => Reply::Health(HealthReport::default()),
//!                     other => Reply::Unsupported { kind: other.kind().as_u8() },
//!                 };
//!                 let len = session.reply_or_error(request_id, &reply, &mut out).map_err(|_| ())?;
//!                 tx(&out[..len]);
//!             }
//!         }
//!     }
//!     Ok(())
//! }
//! # let mut sent = 0;
//! # serve(&[], &mut |b| sent += b.len()).unwrap();
//! ```

use core::fmt::{self, Write as _};

use crate::error::{DecodeError, EncodeError};
use crate::frame::split_frame;
use crate::kind::ErrorCode;
use crate::limits::{MAX_FRAME_LEN, MAX_MESSAGE_LEN, MIN_FRAME_LEN, SUPPORTED_VERSIONS};
use crate::message::{ErrorReply, HelloOk, Reply, Request};

/// Who the agent is, as announced in HelloOk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AgentIdentity<'s> {
    /// Agent name (UTF-8, up to 64 bytes).
    pub name: &'s str,
    /// Agent software version (UTF-8, up to 64 bytes).
    pub software_version: &'s str,
    /// Largest frame the agent accepts: its receive buffer size. Clamped to
    /// `MIN_FRAME_LEN..=MAX_FRAME_LEN`; an agent must be able to receive `MIN_FRAME_LEN` bytes.
    pub max_frame_len: u32,
}

/// What Hello settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// The protocol version in force.
    pub version: u8,
    /// Largest frame the host accepts: replies must not exceed it.
    pub peer_max_frame_len: usize,
}

/// What the agent loop does with a frame after [`Session::handle`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step<'f> {
    /// A request for the agent: answer it with [`Session::reply`] (or `reply_or_error`). Never
    /// Hello or Ping; those are answered by the session.
    Request {
        /// The id the reply must carry.
        request_id: u64,
        /// The request, borrowing from the frame.
        request: Request<'f>,
    },
    /// The session answered the frame itself: send `out[..len]`.
    Reply {
        /// Length of the reply frame in `out`.
        len: usize,
    },
    /// Send `out[..reply_len]` (nothing when 0), then close the connection.
    Close {
        /// Length of the Error reply in `out` (0 when the header was unreadable).
        reply_len: usize,
        /// Why.
        reason: CloseReason,
    },
}

/// Why [`Session::handle`] gave up on a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The frame was malformed (bad header, or a body breaking the rules).
    Malformed(DecodeError),
    /// The session's own reply did not fit `out` (which must hold at least `MIN_FRAME_LEN` bytes).
    OutputTooSmall(EncodeError),
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Malformed(e) => write!(f, "malformed frame: {e}"),
            CloseReason::OutputTooSmall(e) => write!(f, "reply buffer too small: {e}"),
        }
    }
}

impl core::error::Error for CloseReason {}

/// Protocol state of one agent connection.
#[derive(Clone, Copy, Debug)]
pub struct Session<'s> {
    identity: AgentIdentity<'s>,
    negotiated: Option<Negotiated>,
}

impl<'s> Session<'s> {
    /// A session for a new connection.
    pub const fn new(identity: AgentIdentity<'s>) -> Self {
        Session {
            identity,
            negotiated: None,
        }
    }

    /// What Hello settled, once it has.
    pub const fn negotiated(&self) -> Option<Negotiated> {
        self.negotiated
    }

    /// Forgets the negotiation (for a new connection on the same session value).
    pub fn reset(&mut self) {
        self.negotiated = None;
    }

    /// The largest reply frame allowed now (`MIN_FRAME_LEN` before Hello).
    pub fn reply_limit(&self) -> usize {
        match self.negotiated {
            Some(n) => n.peer_max_frame_len,
            None => MIN_FRAME_LEN,
        }
    }

    fn own_max_frame_len(&self) -> u32 {
        let max = self.identity.max_frame_len as usize;
        max.clamp(MIN_FRAME_LEN, MAX_FRAME_LEN) as u32
    }

    /// Handles one whole frame (as [`FrameBuffer::next_frame`](crate::FrameBuffer::next_frame)
    /// returns it), writing any reply the session makes itself into `out`. Never panics.
    pub fn handle<'f>(&mut self, frame: &'f [u8], out: &mut [u8]) -> Step<'f> {
        let (header, body) = match split_frame(frame) {
            Ok(parts) => parts,
            Err(error) => {
                return Step::Close {
                    reply_len: 0,
                    reason: CloseReason::Malformed(error),
                };
            }
        };
        let id = header.request_id;
        let request = match Request::decode_body(&header, body) {
            Ok(request) => request,
            Err(DecodeError::UnknownKind { kind }) => {
                return self.own_reply(id, &Reply::Unsupported { kind }, out);
            }
            Err(error @ DecodeError::UnsupportedVersion { .. }) => {
                let mut msg = MessageBuf::new();
                let _ = write!(msg, "{error}; agent speaks versions {SUPPORTED_VERSIONS:?}");
                return self.own_error(id, ErrorCode::UNSUPPORTED_VERSION, msg.as_str(), out);
            }
            Err(error) => {
                let mut msg = MessageBuf::new();
                let _ = write!(msg, "{error}");
                let reply_len = self
                    .error(id, ErrorCode::MALFORMED, msg.as_str(), out)
                    .unwrap_or(0);
                return Step::Close {
                    reply_len,
                    reason: CloseReason::Malformed(error),
                };
            }
        };
        match request {
            Request::Hello(hello) => {
                let Some(version) = SUPPORTED_VERSIONS
                    .iter()
                    .copied()
                    .find(|v| hello.versions.contains(v))
                else {
                    let mut msg = MessageBuf::new();
                    let _ = write!(
                        msg,
                        "no common version: host offers {:?}, agent speaks {SUPPORTED_VERSIONS:?}",
                        hello.versions
                    );
                    return self.own_error(id, ErrorCode::UNSUPPORTED_VERSION, msg.as_str(), out);
                };
                self.negotiated = Some(Negotiated {
                    version,
                    peer_max_frame_len: (hello.max_frame_len as usize).min(MAX_FRAME_LEN),
                });
                let reply = Reply::Hello(HelloOk {
                    version,
                    max_frame_len: self.own_max_frame_len(),
                    name: self.identity.name,
                    software_version: self.identity.software_version,
                });
                self.own_reply(id, &reply, out)
            }
            _ if self.negotiated.is_none() => self.own_error(
                id,
                ErrorCode::HELLO_REQUIRED,
                "the first request must be Hello",
                out,
            ),
            Request::Ping(ping) => self.own_reply(
                id,
                &Reply::Pong {
                    payload: ping.payload,
                },
                out,
            ),
            request => Step::Request {
                request_id: id,
                request,
            },
        }
    }

    fn own_reply(&self, id: u64, reply: &Reply<'_>, out: &mut [u8]) -> Step<'static> {
        match self.reply_or_error(id, reply, out) {
            Ok(len) => Step::Reply { len },
            Err(e) => Step::Close {
                reply_len: 0,
                reason: CloseReason::OutputTooSmall(e),
            },
        }
    }

    fn own_error(&self, id: u64, code: ErrorCode, message: &str, out: &mut [u8]) -> Step<'static> {
        self.own_reply(id, &Reply::Error(ErrorReply { code, message }), out)
    }

    /// Encodes `reply` to request `request_id` into `out`, within the host's frame limit.
    pub fn reply(
        &self,
        request_id: u64,
        reply: &Reply<'_>,
        out: &mut [u8],
    ) -> Result<usize, EncodeError> {
        reply.encode_limited(request_id, self.reply_limit(), out)
    }

    /// Encodes an Error reply; a message longer than the limit is cut at a character boundary.
    pub fn error(
        &self,
        request_id: u64,
        code: ErrorCode,
        message: &str,
        out: &mut [u8],
    ) -> Result<usize, EncodeError> {
        let message = truncate_utf8(message, MAX_MESSAGE_LEN);
        self.reply(request_id, &Reply::Error(ErrorReply { code, message }), out)
    }

    /// Encodes `reply`, or an Error reply saying why it could not be encoded (too large for the
    /// host's limit or `out`: `TOO_LARGE`; a field breaking a rule: `INTERNAL`). Fails only when
    /// `out` cannot even hold the Error reply.
    pub fn reply_or_error(
        &self,
        request_id: u64,
        reply: &Reply<'_>,
        out: &mut [u8],
    ) -> Result<usize, EncodeError> {
        match self.reply(request_id, reply, out) {
            Ok(len) => Ok(len),
            Err(e) => {
                let code = match e {
                    EncodeError::Field(_) => ErrorCode::INTERNAL,
                    _ => ErrorCode::TOO_LARGE,
                };
                let mut msg = MessageBuf::new();
                let _ = write!(msg, "{} reply not sent: {e}", reply.kind().name());
                self.error(request_id, code, msg.as_str(), out)
            }
        }
    }
}

/// Cuts `s` to at most `max` bytes at a character boundary.
fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default()
}

/// A fixed-size text buffer for error messages (no allocation; overflow is cut off).
struct MessageBuf {
    buf: [u8; 256],
    len: usize,
}

impl MessageBuf {
    fn new() -> Self {
        MessageBuf {
            buf: [0; 256],
            len: 0,
        }
    }

    fn as_str(&self) -> &str {
        let bytes = self.buf.get(..self.len).unwrap_or_default();
        match core::str::from_utf8(bytes) {
            Ok(s) => s,
            // Only whole `str`s are appended, so this cannot happen; keep what is valid.
            Err(e) => core::str::from_utf8(bytes.get(..e.valid_up_to()).unwrap_or_default())
                .unwrap_or_default(),
        }
    }
}

impl fmt::Write for MessageBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = self.buf.len() - self.len;
        let piece = truncate_utf8(s, room);
        if let Some(dst) = self.buf.get_mut(self.len..self.len + piece.len()) {
            dst.copy_from_slice(piece.as_bytes());
            self.len += piece.len();
        }
        if piece.len() < s.len() {
            return Err(fmt::Error);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{Header, encode_raw_frame};
    use crate::kind::Kind;
    use crate::message::{Exec, Hello, Ping};

    const IDENTITY: AgentIdentity<'static> = AgentIdentity {
        name: "probe",
        software_version: "0.1.0",
        max_frame_len: 8192,
    };

    fn hello(versions: &[u8]) -> ([u8; 128], usize) {
        let mut buf = [0u8; 128];
        let n = Request::Hello(Hello {
            versions,
            max_frame_len: 65536,
            name: "host",
            software_version: "1",
        })
        .encode(1, &mut buf)
        .unwrap();
        (buf, n)
    }

    fn reply_of<'o>(out: &'o [u8], step: Step<'_>) -> Reply<'o> {
        let Step::Reply { len } = step else {
            panic!("expected a reply, got {step:?}")
        };
        Reply::decode(&out[..len]).unwrap().1
    }

    #[test]
    fn hello_negotiates_then_requests_flow() {
        let mut session = Session::new(IDENTITY);
        let mut out = [0u8; 8192];
        let (frame, n) = hello(&[3, 1]);
        let step = session.handle(&frame[..n], &mut out);
        let Reply::Hello(ok) = reply_of(&out, step) else {
            panic!()
        };
        assert_eq!(ok.version, 1);
        assert_eq!(ok.max_frame_len, 8192);
        assert_eq!(
            session.negotiated(),
            Some(Negotiated {
                version: 1,
                peer_max_frame_len: 65536
            })
        );

        let mut buf = [0u8; 64];
        let n = Request::Ping(Ping { payload: b"p" })
            .encode(2, &mut buf)
            .unwrap();
        let step = session.handle(&buf[..n], &mut out);
        assert_eq!(reply_of(&out, step), Reply::Pong { payload: b"p" });

        let n = Request::Exec(Exec::new(&["echo"]))
            .encode(3, &mut buf)
            .unwrap();
        let step = session.handle(&buf[..n], &mut out);
        assert!(matches!(
            step,
            Step::Request {
                request_id: 3,
                request: Request::Exec(_)
            }
        ));
    }

    #[test]
    fn requests_before_hello_are_refused() {
        let mut session = Session::new(IDENTITY);
        let mut out = [0u8; 4096];
        let mut buf = [0u8; 64];
        let n = Request::Health.encode(5, &mut buf).unwrap();
        let step = session.handle(&buf[..n], &mut out);
        let Reply::Error(e) = reply_of(&out, step) else {
            panic!()
        };
        assert_eq!(e.code, ErrorCode::HELLO_REQUIRED);
    }

    #[test]
    fn no_common_version_is_an_error_reply() {
        let mut session = Session::new(IDENTITY);
        let mut out = [0u8; 4096];
        let (frame, n) = hello(&[9]);
        let step = session.handle(&frame[..n], &mut out);
        let Reply::Error(e) = reply_of(&out, step) else {
            panic!()
        };
        assert_eq!(e.code, ErrorCode::UNSUPPORTED_VERSION);
        assert_eq!(session.negotiated(), None);
    }

    #[test]
    fn unknown_kind_gets_unsupported_and_malformed_body_closes() {
        let mut session = Session::new(IDENTITY);
        let mut out = [0u8; 4096];
        let (frame, n) = hello(&[1]);
        session.handle(&frame[..n], &mut out);

        let mut buf = [0u8; 64];
        let header = Header {
            version: 1,
            kind: 0x42,
            request_id: 8,
        };
        let n = encode_raw_frame(header, b"whatever", &mut buf).unwrap();
        let step = session.handle(&buf[..n], &mut out);
        assert_eq!(reply_of(&out, step), Reply::Unsupported { kind: 0x42 });

        let header = Header {
            kind: Kind::Exec.as_u8(),
            ..header
        };
        let n = encode_raw_frame(header, &[0xff; 8], &mut buf).unwrap();
        let Step::Close { reply_len, reason } = session.handle(&buf[..n], &mut out) else {
            panic!()
        };
        assert!(matches!(
            reason,
            CloseReason::Malformed(DecodeError::Field(_))
        ));
        let (h, reply) = Reply::decode(&out[..reply_len]).unwrap();
        assert_eq!(h.request_id, 8);
        assert!(
            matches!(reply, Reply::Error(ErrorReply { code, .. }) if code == ErrorCode::MALFORMED)
        );
    }

    #[test]
    fn oversize_reply_becomes_too_large_error() {
        let session = Session::new(IDENTITY);
        let mut out = [0u8; 8192];
        let data = [0u8; 5000];
        let n = session
            .reply_or_error(1, &Reply::Pong { payload: &data }, &mut out)
            .unwrap();
        let (_, reply) = Reply::decode(&out[..n]).unwrap();
        assert!(
            matches!(reply, Reply::Error(ErrorReply { code, .. }) if code == ErrorCode::TOO_LARGE)
        );
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate_utf8("héllo", 2), "h");
        assert_eq!(truncate_utf8("abc", 5), "abc");
        let mut m = MessageBuf::new();
        for _ in 0..100 {
            let _ = m.write_str("ééé");
        }
        assert!(m.as_str().len() <= 256);
    }
}
