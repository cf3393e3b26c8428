//! ember-core: the runtime contract every other ember crate plugs into.
//!
//! - Model types, all serde and validated at the edge with errors that name the field:
//!   [`VmSpec`] (boot or restore), [`SnapshotRef`], [`NetworkInterface`], [`DriveSpec`],
//!   [`VsockSpec`], [`RateLimiter`]/[`TokenBucket`], [`VmView`], [`VmStatus`], [`StackKey`],
//!   and the identifiers [`VmId`] and [`SnapshotId`].
//! - The traits [`VmProvider`] (lifecycle) and [`VmQuery`] (views).
//! - One error type, [`VmError`]: not found, already exists, invalid transition, invalid state,
//!   invalid spec, provider failure (with its source), unsupported.
//! - The host's records, shared by the runtime, the store and the daemon so there is one
//!   vocabulary: [`SnapshotInfo`] (a snapshot's catalog entry), [`VmRecord`] (a live VM and its
//!   VMM process, enough to re-adopt it after a daemon restart), [`Template`] /
//!   [`TemplateSpec`], [`PoolSpec`], [`Sandbox`] (a tenant's VM, its labels, env and deadline).
//! - [`EgressPolicy`]: what a sandbox's guest may reach (allow/deny rules, DNS, a default), the
//!   model `ember-net` turns into nftables rules.
//! - [`HostInfo`]: the CPU model, kernel and CPU count every benchmark reports.
//! - [`InMemoryVmProvider`]: the full lifecycle state machine without any VM behind it, with
//!   deterministic fault injection, for testing the pool and everything above it.
//!
//! # Sync, on purpose
//! The traits are blocking. Providers are thin layers over blocking work (spawning a VMM process,
//! a sub-millisecond HTTP request over a Unix socket, KVM ioctls), the warm pool drives them from its
//! own threads, and a blocking trait stays object-safe (`Arc<dyn VmProvider>`) with no async
//! runtime forced on the VMM client or on tests. An async caller (the daemon) wraps calls in
//! `spawn_blocking`. What the contract does demand is concurrency: operations on different VMs
//! must not wait for each other, so providers never hold a lock across a slow call.

pub mod error;
pub mod host_info;
pub mod id;
pub mod image_source;
pub mod in_memory;
pub mod net_policy;
pub mod pool_spec;
pub mod process;
pub mod provider;
pub mod rate_limiter;
pub mod sandbox;
pub mod snapshot;
pub mod snapshot_info;
pub mod spec;
pub mod stack;
pub mod template;
pub mod view;
pub mod vm_record;

pub use error::{BoxError, Operation, ResourceKind, VmError, error_chain};
pub use host_info::HostInfo;
pub use id::{SandboxId, SnapshotId, VmId};
pub use image_source::ImageSource;
pub use in_memory::{FaultPlan, Gate, InMemoryVmProvider};
pub use net_policy::{EgressAction, EgressPolicy, EgressRule, Ipv4Cidr, PortRange, Protocol};
pub use pool_spec::{PoolSpec, Pooled};
pub use process::ProcessIdentity;
pub use provider::{Capabilities, SnapshotRequest, VmProvider, VmQuery};
pub use rate_limiter::{RateLimiter, TokenBucket};
pub use sandbox::{
    EndCause, ExposedPort, OnTimeout, Sandbox, SandboxEnd, SandboxNetwork, SandboxStart,
    SandboxState,
};
pub use snapshot::{NetworkOverride, SnapshotRef, VsockOverride};
pub use snapshot_info::{DiskFile, SnapshotInfo};
pub use spec::{DriveSpec, MacAddr, NetworkInterface, VmSpec, VsockSpec};
pub use stack::StackKey;
pub use template::{GuestSpec, Template, TemplateBuild, TemplateName, TemplateSpec, TemplateState};
pub use view::{VmStatus, VmView};
pub use vm_record::{VmOwner, VmProcess, VmRecord};
