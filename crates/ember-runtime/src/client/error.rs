//! [`ClientError`]: everything a Firecracker API call can fail with, typed so callers can tell a
//! VMM that refused a request (status + `fault_message`) from one that is gone or too slow.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Why an API call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The API socket could not be connected.
    #[error("cannot connect to the API socket {path}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Writing the request or reading the response failed.
    #[error("{what} on the API connection failed")]
    Io {
        /// `"writing the request"` or `"reading the response"`.
        what: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// No complete response arrived within the call's timeout.
    #[error("{method} {path} got no complete response within {timeout:?}")]
    Timeout {
        /// The request method.
        method: &'static str,
        /// The request path.
        path: String,
        /// The call's timeout.
        timeout: Duration,
    },
    /// The VMM closed the connection before a complete response.
    #[error(
        "the VMM closed the API connection before a complete response ({received} bytes received)"
    )]
    Closed {
        /// Response bytes received before the close.
        received: usize,
    },
    /// The response is not HTTP this client understands.
    #[error("malformed API response: {reason}")]
    Malformed {
        /// What is wrong with it.
        reason: String,
    },
    /// The VMM answered with an error status; `fault_message` is its explanation.
    #[error("{method} {path} failed with HTTP {status}: {fault_message}")]
    Api {
        /// The request method.
        method: &'static str,
        /// The request path.
        path: String,
        /// The HTTP status.
        status: u16,
        /// Firecracker's `fault_message` (or the raw body if it had none).
        fault_message: String,
    },
    /// A request body could not be encoded or a response body decoded.
    #[error("{what} JSON for {path}")]
    Json {
        /// `"encoding the request"` or `"decoding the response"`.
        what: &'static str,
        /// The request path.
        path: String,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
}

impl ClientError {
    /// The HTTP status if the VMM answered with an error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The VMM's `fault_message` if it answered with an error.
    pub fn fault_message(&self) -> Option<&str> {
        match self {
            ClientError::Api { fault_message, .. } => Some(fault_message),
            _ => None,
        }
    }

    /// Whether the failure says the VMM is unreachable (gone, not listening, connection broken)
    /// rather than that it refused the request.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            ClientError::Connect { .. } | ClientError::Io { .. } | ClientError::Closed { .. }
        )
    }
}
