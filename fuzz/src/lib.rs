//! The `ember-fuzz` harness as a library: the engine ([`engine`]) and the targets
//! ([`targets`]), used by the binary (`src/main.rs`, which explains the choice of engine) and
//! by `tests/corpus.rs` (every seed corpus replayed by `cargo test`).
#![deny(unsafe_code)]
// Status lines and findings go to stderr: the harness's interface.
#![allow(clippy::print_stderr)]

pub mod engine;
pub mod targets;
