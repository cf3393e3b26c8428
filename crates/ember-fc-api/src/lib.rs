//! ember-fc-api: the Firecracker REST API's request and response bodies — the one model of
//! that API in ember. ember-vmm's HTTP API parses them (server side); ember-runtime's client
//! sends them to ember-vmm or to a real Firecracker (client side).
//!
//! Every type is field for field as in Firecracker's swagger
//! (`src/firecracker/swagger/firecracker.yaml`); fields ember adds are named `ember_*` and
//! documented as ember extensions. The wire rules are the same for both sides:
//! - request bodies reject unknown fields, as Firecracker does;
//! - optional fields are left out of the JSON when unset, so a request carries only what its
//!   sender chose (and a VMM that lacks a newer optional field still accepts it);
//! - response bodies ([`InstanceInfo`], [`FirecrackerVersion`], [`ApiErrorBody`]) accept
//!   fields they do not know, so a newer server does not break the client.
//!
//! Validation here is API-level: what the API itself rules out whatever the VMM and host
//! (malformed ids, MAC addresses and device names, a body id that differs from the URL's,
//! missing or conflicting fields, numbers out of the documented range). A client can check a
//! body before sending it; a server checks it first. Errors are [`FieldError`]s naming the
//! JSON field. What one VMM supports, and what the host offers (files that exist, TAP
//! devices, KVM limits), is checked by that VMM, never here.
//!
//! - [`field`]: [`FieldError`] and the shared checks of ids and host device names;
//! - [`rate_limiter`]: `RateLimiter`/`TokenBucket` (ember-core's types) and their API checks;
//! - [`instance`]: `GET /`, `GET /version` and the error body of every failed request;
//! - [`actions`]: `PUT /actions` and `PATCH /vm`;
//! - [`boot_source`]: `PUT /boot-source`;
//! - [`machine`]: `PUT|PATCH|GET /machine-config`;
//! - [`drive`]: `PUT|PATCH /drives/{drive_id}`;
//! - [`network`]: `PUT|PATCH /network-interfaces/{iface_id}`;
//! - [`vsock`]: `PUT /vsock`;
//! - [`entropy`]: `PUT /entropy`;
//! - [`snapshot`]: `PUT /snapshot/create` and `PUT /snapshot/load`;
//! - [`observability`]: `PUT /logger` and `PUT /metrics`.
//!
//! What is not here: the full configuration (`GET /vm/config`, the `--config-file` format) is
//! ember-vmm's own state built from these types (ember's client reads it as untyped JSON), and
//! the `/ember/*` extension responses are ember-vmm reports the client does not model.
#![forbid(unsafe_code)]

pub mod actions;
pub mod boot_source;
pub mod drive;
pub mod entropy;
pub mod field;
pub mod instance;
pub mod machine;
pub mod network;
pub mod observability;
pub mod rate_limiter;
pub mod snapshot;
pub mod vsock;

pub use actions::{ActionType, InstanceActionInfo, Vm, VmState};
pub use boot_source::{BootSource, DEFAULT_BOOT_ARGS};
pub use drive::{CacheType, Drive, IoEngine, PartialDrive};
pub use entropy::EntropyDevice;
pub use field::{FieldError, field_path, validate_host_dev_name, validate_id};
pub use instance::{ApiErrorBody, FirecrackerVersion, InstanceInfo, InstanceState};
pub use machine::{HugePages, MAX_VCPUS, MachineConfiguration, MachineConfigurationUpdate};
pub use network::{NetworkInterface, PartialNetworkInterface};
pub use observability::{Logger, Metrics};
pub use rate_limiter::{RateLimiter, TokenBucket, validate_rate_limiter};
pub use snapshot::{
    MemoryBackend, MemoryBackendType, NetworkOverride, SnapshotCreateParams, SnapshotLoadParams,
    SnapshotType, VsockOverride,
};
pub use vsock::Vsock;
