//! ember's command line as a library: the pieces of `ember demo` and `ember bench` that are
//! about reporting, so tests can drive them. The orchestration itself (templates, warm stacks,
//! the agent validator, host checks) is `ember-host`.
//!
//! - [`stats`]: latency summaries (p50/p90/p99) as tables and JSON; [`output`] prints them.
//! - [`demo`] and [`bench`]: the two commands.

pub mod bench;
pub mod demo;
pub mod output;
pub mod stats;
