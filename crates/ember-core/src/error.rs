//! [`VmError`]: the one error type of the runtime contract.
//!
//! Every provider (in-memory, ember-vmm, Firecracker) reports failures through these variants so the
//! pool and the daemon can react to the kind of failure without parsing strings. Provider-specific
//! detail travels as the `source` of [`VmError::Provider`].

use std::error::Error as StdError;
use std::fmt;

use crate::view::VmStatus;

/// A boxed, thread-safe error from below a provider (I/O, HTTP, KVM, an injected fault...).
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// What kind of thing an id names, for [`VmError::NotFound`] and [`VmError::AlreadyExists`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResourceKind {
    /// A microVM.
    Vm,
    /// A snapshot.
    Snapshot,
    /// A stack (pool bucket).
    Stack,
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ResourceKind::Vm => "VM",
            ResourceKind::Snapshot => "snapshot",
            ResourceKind::Stack => "stack",
        })
    }
}

/// The provider operation an error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// `create` / `create_with_spec` (boot or restore).
    Create,
    /// `start`.
    Start,
    /// `pause`.
    Pause,
    /// `resume`.
    Resume,
    /// `stop`.
    Stop,
    /// `snapshot`.
    Snapshot,
    /// `rename`.
    Rename,
    /// `destroy`.
    Destroy,
    /// `delete_snapshot`.
    DeleteSnapshot,
    /// `update_network`.
    UpdateNetwork,
    /// Any read-only query.
    Query,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operation::Create => "create",
            Operation::Start => "start",
            Operation::Pause => "pause",
            Operation::Resume => "resume",
            Operation::Stop => "stop",
            Operation::Snapshot => "snapshot",
            Operation::Rename => "rename",
            Operation::Destroy => "destroy",
            Operation::DeleteSnapshot => "delete snapshot",
            Operation::UpdateNetwork => "update network",
            Operation::Query => "query",
        })
    }
}

/// Everything that can go wrong in a [`VmProvider`](crate::VmProvider) or
/// [`VmQuery`](crate::VmQuery) call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VmError {
    /// The named VM, snapshot or stack does not exist (or was destroyed).
    #[error("{kind} {id:?} not found")]
    NotFound {
        /// What kind of thing was looked up.
        kind: ResourceKind,
        /// The id that was looked up.
        id: String,
    },
    /// An id is already taken by a live VM or an existing snapshot.
    #[error("{kind} {id:?} already exists")]
    AlreadyExists {
        /// What kind of thing collided.
        kind: ResourceKind,
        /// The id that is taken.
        id: String,
    },
    /// A lifecycle call that the VM's current status does not allow.
    #[error("VM {id:?} cannot go from {from} to {to}")]
    InvalidTransition {
        /// The VM.
        id: String,
        /// Its status when the call was made.
        from: VmStatus,
        /// The status the call would have led to.
        to: VmStatus,
    },
    /// An operation that needs the VM in a particular status (a snapshot needs it paused).
    #[error("cannot {op} VM {id:?} while it is {status}; it must be {required}")]
    InvalidState {
        /// The VM.
        id: String,
        /// What was attempted.
        op: Operation,
        /// Its status when the call was made.
        status: VmStatus,
        /// The status the operation needs.
        required: VmStatus,
    },
    /// A field of a spec, key or id is invalid; `reason` says what is allowed.
    #[error("invalid {field}: {reason}")]
    InvalidSpec {
        /// The offending field, dotted (`network_interfaces[0].guest_mac`).
        field: String,
        /// What is wrong and what would be accepted.
        reason: String,
    },
    /// The provider's machinery failed (process died, HTTP error, KVM error, injected fault...).
    #[error("{op} of {id:?} failed in the {provider} provider")]
    Provider {
        /// Which provider.
        provider: &'static str,
        /// What was attempted.
        op: Operation,
        /// The VM or snapshot concerned.
        id: String,
        /// What went wrong underneath.
        #[source]
        source: BoxError,
    },
    /// The provider cannot do this at all (e.g. changing a running VM's network on Firecracker).
    #[error("{op} is not supported by the {provider} provider")]
    Unsupported {
        /// Which provider.
        provider: &'static str,
        /// What was attempted.
        op: Operation,
    },
}

impl VmError {
    /// Shorthand for [`VmError::InvalidSpec`].
    pub fn invalid_spec(field: impl Into<String>, reason: impl Into<String>) -> Self {
        VmError::InvalidSpec {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Shorthand for [`VmError::NotFound`] of a VM.
    pub fn vm_not_found(id: impl fmt::Display) -> Self {
        VmError::NotFound {
            kind: ResourceKind::Vm,
            id: id.to_string(),
        }
    }

    /// Shorthand for [`VmError::Provider`].
    pub fn provider(
        provider: &'static str,
        op: Operation,
        id: impl fmt::Display,
        source: impl Into<BoxError>,
    ) -> Self {
        VmError::Provider {
            provider,
            op,
            id: id.to_string(),
            source: source.into(),
        }
    }

    /// Whether this error is the provider failing (as opposed to the caller asking for something
    /// invalid). The pool backs off on these.
    pub fn is_provider_failure(&self) -> bool {
        matches!(self, VmError::Provider { .. })
    }
}

/// Formats an error with its whole `source()` chain on one line: `outer: middle: inner`.
///
/// Use it when logging or when sending an error across a process boundary, where the chain would
/// otherwise be lost.
pub fn error_chain(err: &(dyn StdError + 'static)) -> String {
    let mut text = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cur = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_includes_sources() {
        let inner = std::io::Error::other("socket closed");
        let err = VmError::provider("ember-vmm", Operation::Start, "vm-1", inner);
        assert_eq!(
            error_chain(&err),
            "start of \"vm-1\" failed in the ember-vmm provider: socket closed"
        );
        assert!(err.is_provider_failure());
    }

    #[test]
    fn transition_message_names_both_ends() {
        let err = VmError::InvalidTransition {
            id: "vm-1".into(),
            from: VmStatus::Stopped,
            to: VmStatus::Running,
        };
        assert_eq!(
            err.to_string(),
            "VM \"vm-1\" cannot go from stopped to running"
        );
    }
}
