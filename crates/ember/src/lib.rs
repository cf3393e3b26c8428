//! ember's command line as a library, so tests can drive its pieces:
//!
//! - [`remote`]: the commands that talk to an emberd (`template`, `pool`, `run`, `exec`, `cp`,
//!   `ls`, `inspect`, `pause`, `resume`, `rm`, `timeout`, `network`, `expose`, `info`);
//! - [`image`]: `ember image build` (a Linux guest's kernel, initramfs and root filesystem);
//! - [`demo`]: an emberd embedded in the process ([`embedded`]) driven through its API, end to
//!   end;
//! - [`bench`]: the measurements (in-process handoff, and the API's own cost);
//! - [`stats`]: latency summaries (p50/p90/p99) as tables and JSON; [`output`] prints them;
//! - [`interrupt`]: what SIGINT/SIGTERM clean up (the directories runs work in, their VMMs).
//!
//! The orchestration itself (templates, warm stacks, the agent validator, host checks) is
//! `ember-host`; the daemon is `emberd`.

pub mod bench;
pub mod demo;
pub mod embedded;
pub mod image;
pub mod interrupt;
pub mod output;
pub mod remote;
pub mod stats;
