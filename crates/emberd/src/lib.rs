//! emberd: ember's host daemon — the service a platform team deploys on each host.
//!
//! ```text
//! daemon     Daemon: directories locked, store opened, provider (detached VMMs), recovery,
//!            the API on a Unix socket (+ TCP with a bearer token), time limits, graceful stop
//! api/       axum handlers per resource, JSON errors, request metrics, OpenAPI (utoipa)
//! e2b/       E2B's REST API and envd (Connect RPC, files, port forwarding) on their own
//!            listeners, for the unmodified e2b SDK
//! engine/    what the daemon does, as blocking calls: templates, pools, sandboxes, guest
//!            (exec, files), raw VMs, recovery, and the recording provider under all of them
//! metrics    Prometheus registry: requests, handoffs, sandboxes, VMs, store commits, pool
//! error      ApiError: one `{code, message}` shape, 4xx for callers' mistakes, 5xx for faults
//! ids        sandbox ids and snapshot suffixes
//! ```
//!
//! The store (ember-store) is the one source of truth: every change is recorded in the same
//! transaction as the decision, and what must be recorded before it happens (a sandbox being
//! created) is recorded as pending and resolved by recovery. VMMs are detached: they outlive the
//! daemon, and the next start re-adopts them (sandboxes keep running and answering across
//! `systemctl restart emberd` and `kill -9`).
#![forbid(unsafe_code)]

pub mod api;
pub mod client;
pub mod daemon;
pub mod e2b;
pub mod engine;
pub mod error;
pub mod ids;
pub mod metrics;

pub use daemon::{Daemon, DaemonConfig, StartError};
pub use engine::{Engine, Limits};
pub use error::{ApiError, ErrorBody};
