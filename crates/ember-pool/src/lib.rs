//! ember-pool: a warm pool of pre-restored microVMs, handed to tenants in milliseconds.
//!
//! A [`WarmPool`] keeps, per [`StackKey`](ember_core::StackKey), a bucket of VMs restored from
//! the stack's template snapshot through any [`VmProvider`](ember_core::VmProvider). `acquire`
//! hands the pooled VM itself to a tenant: validated, renamed to the tenant's id, re-attached to
//! the tenant's network and resumed; the snapshot is never restored a second time.
//!
//! - Refill is event-driven ([`refill`] module): acquires, registrations, evictions and finished
//!   spawns wake the refiller at once; spawns for a bucket run in parallel up to its
//!   `refill_parallelism`; failures back off exponentially per bucket (capped) and a bucket that
//!   keeps failing shows as failing in [`PoolMetrics`].
//! - A validator ([`EntryValidator`]) runs after each spawn and on each acquire; unhealthy
//!   reasons are logged and counted per reason.
//! - Metrics ([`PoolMetrics`], [`PoolCollector`] for prometheus-client): created, acquired,
//!   evicted by cause, refill runs, validation failures, provider errors, depth per stack,
//!   restores, handovers and evictions by cause per stack ([`StackCounts`], kept after a stack
//!   is unregistered), acquire and spawn latency histograms.
//! - Optional adaptive depth ([`AdaptiveDepth`]): the target follows an EWMA of the acquire rate
//!   times the refill latency, clamped to `[min_depth, max_depth]`.
//! - `shutdown` and `Drop` share one path and count what they evict.
//!
//! Threads, not async: the provider contract is blocking (see ember-core), so the pool runs one
//! coordinator thread and a fixed set of worker threads; `acquire` runs on the caller's thread.

mod bucket;
pub mod config;
pub mod error;
pub mod metrics;
mod pool;
mod refill;
mod shared;
pub mod validator;

pub use config::{AdaptiveDepth, BucketConfig, PoolSettings};
pub use error::PoolError;
pub use metrics::{
    EvictionCause, HistogramSnapshot, PoolCollector, PoolMetrics, StackCounts, StackMetrics,
};
pub use pool::{AcquiredVm, Tenant, WarmPool};
pub use validator::{AliveValidator, EntryValidator, Phase, ValidationResult};
