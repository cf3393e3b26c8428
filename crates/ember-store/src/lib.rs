//! ember-store: ember's durable host state — snapshots, templates, pools, sandboxes, live VMs
//! and network allocations — in one embedded SQLite database that survives a daemon crash or a
//! power cut.
//!
//! - [`Store::open`] checks the directory and the file before SQLite touches it, creates a missing
//!   database atomically, refuses damaged, foreign or newer-schema files with an error naming the
//!   file (never a silent reset), then runs in WAL mode with foreign keys on.
//! - It keeps ember-core's own types, one per row, as JSON ([`Record`]): [`SnapshotInfo`],
//!   [`Template`], [`PoolSpec`], [`Sandbox`], [`VmRecord`](ember_core::VmRecord). No second
//!   vocabulary.
//! - Every change happens in a transaction: [`Store::write`] runs the caller's closure over a
//!   [`Tx`] (get, list, insert, put, replace, update, remove, allocate) and commits it with the
//!   [`Durability`] asked for — fsynced, or crash-safe for this process only (see `store`).
//!   Writes check records, references (a pool's template must exist) and users (a template a
//!   pool or a live sandbox uses cannot be removed).
//! - Sandboxes are listed by state, template and labels, a [`Page`] at a time ([`SandboxFilter`],
//!   [`Cursor`]).
//! - Allocation hands out the lowest free IPv4 address, MAC, vsock CID and TAP name from the
//!   [`NetworkConfig`] ranges; `UNIQUE` constraints back it up; exhaustion is
//!   [`StoreError::Exhausted`] naming the range.
//!
//! What a restart must do with what is stored (re-adopt live VMs, mark dead ones) is the
//! daemon's recovery, not the store's.
//!
//! [`SnapshotInfo`]: ember_core::SnapshotInfo
//! [`Template`]: ember_core::Template
//! [`PoolSpec`]: ember_core::PoolSpec
//! [`Sandbox`]: ember_core::Sandbox
//!
//! # Layout
//! `record` (what is storable) · `query` (listing filters, pages, cursors) · `tx` (one
//! transaction's operations) · `store` (open, read, write, durability) · `network` (ranges,
//! allocation values) · `alloc` (choosing free values) · `busy` (waiting for another writer) ·
//! `header` (pre-open file inspection) · `schema` (DDL, migrations) · `open` (opening sequence) ·
//! `columns`, `sql` (rows) · `error`.

mod alloc;
mod busy;
mod columns;
pub mod error;
mod header;
pub mod network;
pub mod open;
pub mod query;
pub mod record;
pub mod schema;
mod sql;
pub mod store;
pub mod tx;

pub use error::{RecordKind, Resource, StoreError};
pub use network::{Ipv4Subnet, NetworkAllocation, NetworkConfig};
pub use open::OpenCheck;
pub use query::{Cursor, MAX_PAGE, Page, SandboxFilter};
pub use record::{Record, Reference, Stored};
pub use schema::SCHEMA_VERSION;
pub use store::{CommitObserver, Durability, Store, StoreConfig};
pub use tx::Tx;
