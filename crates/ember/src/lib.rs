//! ember's command line as a library: what `ember demo` and `ember bench` are made of, so the
//! daemon and tests can reuse it.
//!
//! - [`host`]: is this machine able to run microVMs (a usable `/dev/kvm`), and where is the VMM.
//! - [`session`]: a private root directory and a [`VmmProvider`](ember_runtime::VmmProvider) for
//!   one run, and the proof that nothing (no process, no file) is left when it ends.
//! - [`template`]: boot the probe guest, wait for its agent, pause, snapshot: a stack's template.
//! - [`agent`]: the pool's validator over the guest agent (Health after restore, Reseed at
//!   handover) and the tenant-side agent connection.
//! - [`memory`] and [`cpu`]: what a VMM process costs its host, from /proc.
//! - [`stats`]: latency summaries (p50/p90/p99) as tables and JSON.
//! - [`warm`]: a stack kept warm over real VMs, and the handoff of one VM to a tenant.
//! - [`demo`] and [`bench`]: the two commands; [`ui`] is how they report progress.

pub mod agent;
pub mod bench;
pub mod cpu;
pub mod demo;
pub mod host;
pub mod memory;
pub mod output;
pub mod session;
pub mod stats;
pub mod template;
pub mod ui;
pub mod warm;
