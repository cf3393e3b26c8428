//! [`PoolError`]: what the pool's public calls can fail with.

use std::time::Duration;

use ember_core::{StackKey, VmError};

/// Errors from [`WarmPool`](crate::WarmPool) calls.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// No bucket is registered for this stack.
    #[error("no warm pool is registered for stack {stack}")]
    UnknownStack {
        /// The stack asked for.
        stack: StackKey,
    },
    /// The bucket is registered but has no ready VM right now.
    #[error("the warm pool for stack {stack} is empty{}", failing_note(.last_error))]
    Empty {
        /// The stack asked for.
        stack: StackKey,
        /// The bucket's last refill error, if its refills are failing.
        last_error: Option<String>,
    },
    /// `acquire_timeout` waited and no VM became ready.
    #[error("no warm VM for stack {stack} became ready within {waited:?}{}", failing_note(.last_error))]
    Timeout {
        /// The stack asked for.
        stack: StackKey,
        /// How long the call waited.
        waited: Duration,
        /// The bucket's last refill error, if its refills are failing.
        last_error: Option<String>,
    },
    /// A configuration value is out of range; `reason` says what is allowed.
    #[error("invalid pool config {field}: {reason}")]
    InvalidConfig {
        /// The offending field.
        field: &'static str,
        /// What is wrong and what would be accepted.
        reason: String,
    },
    /// The template snapshot cannot serve this stack.
    #[error("invalid template for stack {stack}: {reason}")]
    InvalidTemplate {
        /// The stack being registered.
        stack: StackKey,
        /// What is wrong.
        reason: String,
    },
    /// The tenant's request is invalid (bad id, an id already in use, overrides the provider
    /// cannot apply).
    #[error("invalid tenant request: {0}")]
    InvalidTenant(#[source] VmError),
    /// The provider failed on the acquire path and no other entry could be handed over.
    #[error("handing over a warm VM for stack {stack} failed")]
    Handoff {
        /// The stack asked for.
        stack: StackKey,
        /// The last provider error.
        #[source]
        source: VmError,
    },
    /// The pool has been shut down.
    #[error("the warm pool is shut down")]
    ShutDown,
    /// A pool thread could not be started.
    #[error("could not start the pool's {what} thread")]
    Thread {
        /// Which thread.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

fn failing_note(last_error: &Option<String>) -> String {
    match last_error {
        Some(e) => format!(" (its refills are failing: {e})"),
        None => String::new(),
    }
}
