#![doc = include_str!("../WIRE-FORMAT.md")]
//!
//! # Crate map
//!
//! Core (always available, `no_std`, no allocator):
//! - [`limits`]: every numeric bound; [`kind`]: kind bytes and error codes;
//! - [`frame`]: length prefix and header; [`message`]: request and reply bodies;
//! - [`FrameBuffer`]: frame reassembly in a caller's buffer; [`Session`]: the guest agent's
//!   per-connection protocol state (Hello, Ping, Unsupported, malformed frames);
//! - [`shell`]: `sh -c SCRIPT` unwrapped into one command's words, for agents whose programs
//!   are built-ins.
//!
//! With the `std` feature (default):
//! - `io`: `io::FrameReader` (buffered, partial reads, oversize rejected before allocating);
//! - `vsock`: Firecracker's hybrid vsock handshake (`CONNECT <port>\n` / `OK <hostport>\n`);
//! - `client`: `AgentClient`, the host's blocking client with per-call deadlines, and
//!   `tcp_connect`: a connection turned into a byte pipe to a TCP port in the guest.
//!
//! With the `test-agent` feature: `test_agent`, a reference agent on a hybrid-vsock Unix socket
//! with fault injection, built from the guest-side [`Session`].
//!
//! To build for a guest: `default-features = false` (checked by `tests/no_std_build.rs` against
//! `x86_64-unknown-none`).
#![cfg_attr(not(feature = "std"), no_std)]
#![forbid(unsafe_code)]

mod codec;
pub mod error;
pub mod frame;
mod frame_buffer;
mod guest;
pub mod kind;
pub mod limits;
mod list;
pub mod message;
pub mod shell;

#[cfg(feature = "std")]
pub mod client;
#[cfg(feature = "std")]
pub mod io;
#[cfg(feature = "std")]
pub mod vsock;

#[cfg(feature = "test-agent")]
pub mod test_agent;

pub use error::{DecodeError, EncodeError, FieldError, FieldProblem, FrameError};
pub use frame::{Header, encode_raw_frame, frame_len, split_frame};
pub use frame_buffer::FrameBuffer;
pub use guest::{AgentIdentity, CloseReason, Negotiated, Session, Step};
pub use kind::{ErrorCode, Kind};
pub use list::{ByteList, Iter as ByteListIter};
pub use message::{
    DirEntries, DirEntry, DirListing, ErrorReply, Exec, ExecIn, ExecResult, FileData, FileKind,
    FileStat, GetFile, HealthReport, Hello, HelloOk, ListDir, MakeDir, OutputStream, Ping,
    ProcessEntries, ProcessEntry, ProcessExit, ProcessInput, ProcessList, ProcessListing,
    ProcessOutput, ProcessSignal, ProcessStart, ProcessState, PutFile, Remove, Rename, Reply,
    Request, Reseed, Stat, TermSize,
};

#[cfg(feature = "std")]
pub use client::{
    AgentClient, AgentInfo, ClientError, ConnectOptions, ExecOutput, FileContents, FileInfo,
    ListedEntry, ProcessEvent, ProcessInfo, ProcessOutcome, ProcessStream, StartedProcess, TcpPipe,
    listing_page, tcp_connect,
};
