//! The client's error type.
//!
//! Owns [`ClientError`] and the one rule that matters to callers: which failures poison the
//! connection ([`ClientError::poisons`]). A poisoned client refuses further calls, because after a
//! timeout or a bad frame the stream may hold a late or partial reply.

use std::io;
use std::time::Duration;

use crate::error::{DecodeError, EncodeError};
use crate::kind::{ErrorCode, Kind};
use crate::vsock::HandshakeError;

/// A call to the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Reaching the guest port through the hybrid vsock socket failed.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// The call did not finish within its timeout.
    #[error("{request} request timed out after {timeout:?} while {stage}")]
    Timeout {
        /// The request.
        request: Kind,
        /// `sending the request` or `waiting for the reply`.
        stage: &'static str,
        /// The time allowed.
        timeout: Duration,
    },
    /// Socket I/O failed.
    #[error("{request} request failed while {stage}: {source}")]
    Io {
        /// The request.
        request: Kind,
        /// `sending the request` or `waiting for the reply`.
        stage: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// The agent closed the connection before replying.
    #[error(
        "agent closed the connection while {request} waited for its reply ({buffered} bytes of a partial frame)"
    )]
    Closed {
        /// The request.
        request: Kind,
        /// Bytes of a partial reply frame received.
        buffered: usize,
    },
    /// The agent sent a frame that does not decode (or is too large).
    #[error("malformed reply to {request}: {error}")]
    Malformed {
        /// The request.
        request: Kind,
        /// What was wrong.
        error: DecodeError,
    },
    /// The reply carried another request's id.
    #[error("reply to {request} request {expected} carried request id {got}")]
    WrongRequestId {
        /// The request.
        request: Kind,
        /// The id sent.
        expected: u64,
        /// The id received.
        got: u64,
    },
    /// The reply is of the wrong kind for the request.
    #[error("{request} request answered with {got}")]
    UnexpectedReply {
        /// The request.
        request: Kind,
        /// The reply's kind.
        got: Kind,
    },
    /// The reply is well-formed but breaks the protocol (wrong echo, unoffered version, ...).
    #[error("protocol violation in reply to {request}: {detail}")]
    Protocol {
        /// The request.
        request: Kind,
        /// What was wrong.
        detail: String,
    },
    /// The agent answered with an Error reply. The connection stays usable.
    #[error("agent failed {request} request: {code}: {message}")]
    Agent {
        /// The request.
        request: Kind,
        /// The agent's error code.
        code: ErrorCode,
        /// The agent's message.
        message: String,
    },
    /// The agent does not know the request's kind. The connection stays usable.
    #[error("agent does not support {request} requests")]
    Unsupported {
        /// The request.
        request: Kind,
    },
    /// The request could not be encoded (a limit was exceeded); nothing was sent.
    #[error("cannot send {request} request: {error}")]
    Encode {
        /// The request.
        request: Kind,
        /// What was wrong.
        error: EncodeError,
    },
    /// A file is larger than the caller allowed; the connection stays usable.
    #[error("guest file is {size} bytes, more than the {max} bytes allowed")]
    FileTooLarge {
        /// The file's size as reported by the agent.
        size: u64,
        /// The caller's limit.
        max: usize,
    },
    /// A directory listing has more entries than the caller allowed; the connection stays
    /// usable.
    #[error("guest directory listing has more than the {max} entries allowed")]
    TooManyEntries {
        /// The caller's limit.
        max: usize,
    },
    /// Fresh entropy for Reseed could not be read from the host.
    #[error("reading host entropy for Reseed: {0}")]
    Entropy(String),
    /// An earlier failure left the connection unusable; connect again.
    #[error("agent connection unusable after an earlier failure: {cause}")]
    Poisoned {
        /// The earlier failure.
        cause: String,
    },
}

impl ClientError {
    /// Whether this failure leaves the connection unusable (the client poisons it).
    pub fn poisons(&self) -> bool {
        !matches!(
            self,
            ClientError::Agent { .. }
                | ClientError::Unsupported { .. }
                | ClientError::Encode { .. }
                | ClientError::FileTooLarge { .. }
                | ClientError::TooManyEntries { .. }
                | ClientError::Entropy(_)
                | ClientError::Poisoned { .. }
        )
    }

    /// Whether this is a timeout (of a call or of the handshake).
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            ClientError::Timeout { .. } | ClientError::Handshake(HandshakeError::TimedOut { .. })
        )
    }
}
