//! The host client against a real Unix-socket hybrid-vsock server running the reference agent
//! (built from the crate's guest-side `Session` and `FrameBuffer`), one module per concern.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../common/mod.rs"]
mod common;

mod agent_rules;
mod calls;
mod faults;
mod files;
mod handshake;
mod processes;
