//! [`NetError`]: every failure names the resource and the operation.

use std::io;

/// What went wrong, and on what.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A system or netlink call failed: `"creating veth embtap3: File exists (os error 17)"`.
    #[error("{op} {resource}: {source}")]
    Io {
        /// What was attempted (`"creating veth"`).
        op: &'static str,
        /// On what (`"embtap3"`, `"/run/netns/ember-embtap3"`).
        resource: String,
        /// The error underneath.
        #[source]
        source: io::Error,
    },
    /// `nft` refused a ruleset or could not run.
    #[error("{op} in {namespace}: nft failed: {detail}")]
    Nft {
        /// What was attempted (`"installing the sandbox's rules"`).
        op: &'static str,
        /// The namespace it ran in (`"host"`, `"ember-embtap3"`).
        namespace: String,
        /// nft's own message (its stderr) or why it could not run.
        detail: String,
    },
    /// A configuration or plan value is invalid; `field` names it.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The offending field (`"net.tap_prefix"`).
        field: String,
        /// What is wrong and what would be accepted.
        reason: String,
    },
    /// The egress policy is invalid (its error names the field).
    #[error("invalid egress policy: {0}")]
    Policy(#[from] ember_core::VmError),
}

impl NetError {
    /// An [`NetError::Io`].
    pub fn io(op: &'static str, resource: impl Into<String>, source: io::Error) -> Self {
        NetError::Io {
            op,
            resource: resource.into(),
            source,
        }
    }

    /// An [`NetError::Invalid`].
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        NetError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The OS error number underneath, if any (`EEXIST` for a resource that already exists).
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            NetError::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// Turns an rtnetlink error into an `io::Error` (the kernel's errno when it sent one).
pub(crate) fn netlink_io(e: rtnetlink::Error) -> io::Error {
    match e {
        rtnetlink::Error::NetlinkError(msg) => msg.to_io(),
        other => io::Error::other(other.to_string()),
    }
}

/// Turns a nix errno into an `io::Error`.
pub(crate) fn errno_io(e: nix::errno::Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}
