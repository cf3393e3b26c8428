//! [`Refusal`]: why a request failed, as the protocol's Error reply says it.
//!
//! Owns the mapping from OS errors (`io::Error`, `Errno`) to the protocol's [`ErrorCode`]s, so
//! every handler reports "not found", "permission denied", "not a directory" ... the same way.
//! It does no I/O.
#![forbid(unsafe_code)]

use std::fmt;
use std::io;

use ember_agent_proto::ErrorCode;
use nix::errno::Errno;

/// A refused request: the Error reply's code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The protocol's error code.
    pub code: ErrorCode,
    /// Human-readable detail (cut to the protocol's limit when sent).
    pub message: String,
}

impl Refusal {
    /// A refusal with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
        }
    }

    /// The OS error `e` while doing `what` (e.g. `read /etc/x`).
    pub fn io(what: impl fmt::Display, e: &io::Error) -> Self {
        Refusal::new(ErrorCode::of_io(e), format!("{what}: {e}"))
    }

    /// The errno `e` while doing `what`.
    pub fn errno(what: impl fmt::Display, e: Errno) -> Self {
        Refusal::io(what, &io::Error::from(e))
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_maps_to_codes() {
        let cases = [
            (Errno::ENOENT, ErrorCode::NOT_FOUND),
            (Errno::EACCES, ErrorCode::PERMISSION_DENIED),
            (Errno::EPERM, ErrorCode::PERMISSION_DENIED),
            (Errno::ENOTDIR, ErrorCode::NOT_A_DIRECTORY),
            (Errno::EISDIR, ErrorCode::IS_A_DIRECTORY),
            (Errno::ENOTEMPTY, ErrorCode::NOT_EMPTY),
            (Errno::EEXIST, ErrorCode::ALREADY_EXISTS),
            (Errno::ENAMETOOLONG, ErrorCode::TOO_LARGE),
            (Errno::EIO, ErrorCode::IO),
        ];
        for (errno, code) in cases {
            assert_eq!(Refusal::errno("x", errno).code, code, "{errno}");
        }
        assert!(
            Refusal::errno("open /x", Errno::ENOENT)
                .message
                .starts_with("open /x: ")
        );
    }
}
