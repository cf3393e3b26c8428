//! Messages: the request, reply and event bodies of protocol version 1.
//!
//! Owns the typed messages ([`Request`], [`Reply`] and their structs) and the shared rules table.
//! Each direction lives in its own module, file metadata (shared by StatResult and DirListing) in
//! a third; all use the codec's primitives and the frame module's header, so this module only
//! holds what they share.

pub(crate) mod rules;

mod process;
mod reply;
mod request;
mod stat;

pub use process::{
    ENTRY_PTY, ENTRY_STDIN_OPEN, EXIT_TIMED_OUT, INPUT_CLOSE, OutputStream, ProcessEntries,
    ProcessEntriesIter, ProcessEntry, ProcessExit, ProcessInput, ProcessList, ProcessListing,
    ProcessOutput, ProcessSignal, ProcessStart, ProcessState, START_ATTACH, START_PTY, START_STDIN,
    TermSize,
};
pub use reply::{DirListing, ErrorReply, ExecResult, FileData, HealthReport, HelloOk, Reply};
pub use request::{
    Exec, ExecIn, GetFile, Hello, ListDir, MakeDir, Ping, PutFile, Remove, Rename, Request, Reseed,
    Stat,
};
pub use stat::{DirEntries, DirEntry, EntriesIter, FileKind, FileStat};

use crate::codec::Reader;
use crate::error::{DecodeError, EncodeError};
use crate::frame::Header;
use crate::kind::Kind;
use crate::limits::VERSION;

/// Checks the header's version and kind for the given direction.
fn kind_of(header: &Header, request: bool) -> Result<Kind, DecodeError> {
    if header.version != VERSION {
        return Err(DecodeError::UnsupportedVersion {
            version: header.version,
        });
    }
    match Kind::from_u8(header.kind) {
        Some(kind) if kind.is_request() == request => Ok(kind),
        _ => Err(DecodeError::UnknownKind { kind: header.kind }),
    }
}

/// Rejects bytes after the last field (encoding is canonical: one message, one byte string).
fn finish(r: &Reader<'_>, kind: Kind) -> Result<(), DecodeError> {
    match r.remaining() {
        0 => Ok(()),
        extra => Err(DecodeError::TrailingBytes { kind, extra }),
    }
}

/// Runs an encoder against an empty buffer to learn the frame size it needs.
fn encoded_len_of(
    encode: impl FnOnce(&mut [u8]) -> Result<usize, EncodeError>,
) -> Result<usize, EncodeError> {
    match encode(&mut []) {
        Ok(n) => Ok(n),
        Err(EncodeError::BufferTooSmall { needed, .. }) => Ok(needed),
        Err(e) => Err(e),
    }
}
