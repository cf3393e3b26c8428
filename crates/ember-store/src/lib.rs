//! ember-store: ember's durable host state — machines, snapshots, pools and network allocations —
//! in one embedded SQLite database that survives a daemon crash or a power cut.
//!
//! - [`Store::open`] checks the directory and the file before SQLite touches it, creates a missing
//!   database atomically, refuses damaged, foreign or newer-schema files with an error naming the
//!   file (never a silent reset), then runs in WAL mode with `synchronous=FULL` and foreign keys on.
//! - Machines ([`Machine`], [`MachineRecord`]): [`Store::save`] (insert-only, optionally with a
//!   [`NetworkAllocation`] taken in the same transaction), [`Store::load`], [`Store::list`],
//!   [`Store::update`] (load-modify-write in one `BEGIN IMMEDIATE` transaction; the closure may
//!   fail and roll back) and [`Store::remove`] (releases the allocation). Names are
//!   [`MachineName`]s. Snapshots ([`SnapshotRecord`]) and pools ([`PoolRecord`]) likewise.
//! - Allocation hands out the lowest free IPv4 address, MAC, vsock CID and TAP name from the
//!   [`NetworkConfig`] ranges; `UNIQUE` constraints back it up; exhaustion is
//!   [`StoreError::Exhausted`] naming the range.
//! - Recovery: [`Store::recovery_report`] lists the machines last stored as starting, running,
//!   paused or stopping, with their VMM [`ProcessIdentity`] (pid, start time, boot id), sockets,
//!   TAP, CID and files; [`ProcessIdentity::check`] tells whether that very process is alive, and
//!   [`recovery::plan`] maps the two to a suggested [`RecoveryAction`].
//!
//! # Layout
//! `names` (machine names) · `machine`, `snapshot`, `pool` (records and validation) · `network`
//! (ranges, allocation values) · `alloc` (choosing free values) · `process` (`/proc` identity) ·
//! `recovery` (report and plan) · `busy` (waiting for another writer) · `header` (pre-open file inspection) · `schema` (DDL,
//! migrations) · `open` (opening sequence) · `columns`, `sql` (rows) · `store` (the API) ·
//! `error`.

mod alloc;
mod busy;
mod columns;
pub mod error;
mod header;
pub mod machine;
pub mod names;
pub mod network;
pub mod open;
pub mod pool;
pub mod process;
pub mod recovery;
pub mod schema;
pub mod snapshot;
mod sql;
pub mod store;

pub use error::{RecordKind, Resource, StoreError, UpdateError};
pub use machine::{BlockDevice, Machine, MachineRecord, MachineState};
pub use names::{MachineName, NameError};
pub use network::{Ipv4Subnet, NetworkAllocation, NetworkConfig};
pub use open::OpenCheck;
pub use pool::{PoolConfig, PoolRecord};
pub use process::{Liveness, ProcError, ProcessIdentity};
pub use recovery::{RecoveryAction, RecoveryEntry, RecoveryPlan, RecoveryReport};
pub use schema::SCHEMA_VERSION;
pub use snapshot::SnapshotRecord;
pub use store::{NetworkRequest, Store, StoreConfig};
