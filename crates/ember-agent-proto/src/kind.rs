//! Message kinds and error codes: the byte values that name things on the wire.
//!
//! Owns the `kind` byte of the frame header and the `code` of Error replies. Requests use
//! `0x01..=0x7F`; the reply to request kind `k` is `k | 0x80`; `0xFE` (Error) and `0xFF`
//! (Unsupported) answer any request. It does not know message bodies.

use core::fmt;

/// The `kind` byte of a frame: which message the body holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Kind {
    /// Request: version negotiation; must be the first request on a connection.
    Hello = 0x01,
    /// Request: liveness check with an echoed payload.
    Ping = 0x02,
    /// Request: uptime, boot id and generation.
    Health = 0x03,
    /// Request: run a command.
    Exec = 0x04,
    /// Request: write (part of) a file.
    PutFile = 0x05,
    /// Request: read (part of) a file.
    GetFile = 0x06,
    /// Request: fresh entropy, wall-clock time and generation after a clone.
    Reseed = 0x07,
    /// Request: power the guest off.
    Shutdown = 0x08,
    /// Request: what is at a path (kind, mode, size, mtime, owner, symlink target).
    Stat = 0x09,
    /// Request: the entries of a directory, to a depth, a page at a time.
    ListDir = 0x0A,
    /// Request: create a directory (and, optionally, its missing parents).
    MakeDir = 0x0B,
    /// Request: remove a file or directory (optionally with everything in it).
    Remove = 0x0C,
    /// Request: rename (move) a file or directory.
    Rename = 0x0D,
    /// Request: run a command in a working directory, as a user.
    ExecIn = 0x0E,
    /// Request: start a background process (optionally streaming its output here).
    ProcessStart = 0x0F,
    /// Request: write to (and optionally close) a background process's stdin.
    ProcessInput = 0x10,
    /// Request: send a signal to a background process (or its process group).
    ProcessSignal = 0x11,
    /// Request: the background processes, a page at a time.
    ProcessList = 0x12,
    /// Request: stream a running background process's output (from now on) and its exit here.
    ProcessAttach = 0x13,
    /// Request: set the size of a background process's terminal.
    ProcessResize = 0x14,
    /// Request: connect to a TCP port on the guest's loopback; after the reply the connection
    /// is a raw byte pipe to it.
    TcpConnect = 0x15,
    /// Reply to Hello.
    HelloOk = 0x81,
    /// Reply to Ping.
    Pong = 0x82,
    /// Reply to Health.
    HealthReport = 0x83,
    /// Reply to Exec.
    ExecResult = 0x84,
    /// Reply to PutFile.
    PutFileOk = 0x85,
    /// Reply to GetFile.
    FileData = 0x86,
    /// Reply to Reseed.
    ReseedOk = 0x87,
    /// Reply to Shutdown.
    ShutdownOk = 0x88,
    /// Reply to Stat.
    StatResult = 0x89,
    /// Reply to ListDir.
    DirListing = 0x8A,
    /// Reply to MakeDir.
    MakeDirOk = 0x8B,
    /// Reply to Remove.
    RemoveOk = 0x8C,
    /// Reply to Rename.
    RenameOk = 0x8D,
    /// Reply to ExecIn.
    ExecInResult = 0x8E,
    /// Reply to ProcessStart.
    ProcessStarted = 0x8F,
    /// Reply to ProcessInput.
    ProcessInputOk = 0x90,
    /// Reply to ProcessSignal.
    ProcessSignalOk = 0x91,
    /// Reply to ProcessList.
    ProcessListing = 0x92,
    /// Reply to ProcessAttach.
    ProcessAttached = 0x93,
    /// Reply to ProcessResize.
    ProcessResizeOk = 0x94,
    /// Reply to TcpConnect: the connection is a byte pipe from the next byte on.
    TcpConnected = 0x95,
    /// Event of a process stream: a chunk of output.
    ProcessOutput = 0xC0,
    /// Event of a process stream: the process ended (the stream's last frame).
    ProcessExit = 0xC1,
    /// Reply to any request: the request failed.
    Error = 0xFE,
    /// Reply to any request: the agent does not know the request's kind.
    Unsupported = 0xFF,
}

impl Kind {
    /// Every kind, requests first.
    pub const ALL: [Kind; 46] = [
        Kind::Hello,
        Kind::Ping,
        Kind::Health,
        Kind::Exec,
        Kind::PutFile,
        Kind::GetFile,
        Kind::Reseed,
        Kind::Shutdown,
        Kind::Stat,
        Kind::ListDir,
        Kind::MakeDir,
        Kind::Remove,
        Kind::Rename,
        Kind::ExecIn,
        Kind::ProcessStart,
        Kind::ProcessInput,
        Kind::ProcessSignal,
        Kind::ProcessList,
        Kind::ProcessAttach,
        Kind::ProcessResize,
        Kind::TcpConnect,
        Kind::HelloOk,
        Kind::Pong,
        Kind::HealthReport,
        Kind::ExecResult,
        Kind::PutFileOk,
        Kind::FileData,
        Kind::ReseedOk,
        Kind::ShutdownOk,
        Kind::StatResult,
        Kind::DirListing,
        Kind::MakeDirOk,
        Kind::RemoveOk,
        Kind::RenameOk,
        Kind::ExecInResult,
        Kind::ProcessStarted,
        Kind::ProcessInputOk,
        Kind::ProcessSignalOk,
        Kind::ProcessListing,
        Kind::ProcessAttached,
        Kind::ProcessResizeOk,
        Kind::TcpConnected,
        Kind::ProcessOutput,
        Kind::ProcessExit,
        Kind::Error,
        Kind::Unsupported,
    ];

    /// The kind with wire value `byte`, if protocol version 1 defines one.
    pub const fn from_u8(byte: u8) -> Option<Kind> {
        Some(match byte {
            0x01 => Kind::Hello,
            0x02 => Kind::Ping,
            0x03 => Kind::Health,
            0x04 => Kind::Exec,
            0x05 => Kind::PutFile,
            0x06 => Kind::GetFile,
            0x07 => Kind::Reseed,
            0x08 => Kind::Shutdown,
            0x09 => Kind::Stat,
            0x0A => Kind::ListDir,
            0x0B => Kind::MakeDir,
            0x0C => Kind::Remove,
            0x0D => Kind::Rename,
            0x0E => Kind::ExecIn,
            0x0F => Kind::ProcessStart,
            0x10 => Kind::ProcessInput,
            0x11 => Kind::ProcessSignal,
            0x12 => Kind::ProcessList,
            0x13 => Kind::ProcessAttach,
            0x14 => Kind::ProcessResize,
            0x15 => Kind::TcpConnect,
            0x81 => Kind::HelloOk,
            0x82 => Kind::Pong,
            0x83 => Kind::HealthReport,
            0x84 => Kind::ExecResult,
            0x85 => Kind::PutFileOk,
            0x86 => Kind::FileData,
            0x87 => Kind::ReseedOk,
            0x88 => Kind::ShutdownOk,
            0x89 => Kind::StatResult,
            0x8A => Kind::DirListing,
            0x8B => Kind::MakeDirOk,
            0x8C => Kind::RemoveOk,
            0x8D => Kind::RenameOk,
            0x8E => Kind::ExecInResult,
            0x8F => Kind::ProcessStarted,
            0x90 => Kind::ProcessInputOk,
            0x91 => Kind::ProcessSignalOk,
            0x92 => Kind::ProcessListing,
            0x93 => Kind::ProcessAttached,
            0x94 => Kind::ProcessResizeOk,
            0x95 => Kind::TcpConnected,
            0xC0 => Kind::ProcessOutput,
            0xC1 => Kind::ProcessExit,
            0xFE => Kind::Error,
            0xFF => Kind::Unsupported,
            _ => return None,
        })
    }

    /// The wire value.
    pub const fn as_u8(self) -> u8 {
        self as u8
    }

    /// Whether this kind is a request (sent by the host).
    pub const fn is_request(self) -> bool {
        (self as u8) < 0x80
    }

    /// Whether this kind is an event: an agent → host frame of a stream (`0xC0..=0xDF`), sent
    /// after the reply to the request that opened the stream and carrying that request's id.
    pub const fn is_event(self) -> bool {
        matches!(self as u8, 0xC0..=0xDF)
    }

    /// The successful reply kind for a request kind (`None` for reply kinds).
    pub const fn reply(self) -> Option<Kind> {
        if self.is_request() {
            Kind::from_u8(self as u8 | 0x80)
        } else {
            None
        }
    }

    /// Human-readable name, as used in the wire-format documentation.
    pub const fn name(self) -> &'static str {
        match self {
            Kind::Hello => "Hello",
            Kind::Ping => "Ping",
            Kind::Health => "Health",
            Kind::Exec => "Exec",
            Kind::PutFile => "PutFile",
            Kind::GetFile => "GetFile",
            Kind::Reseed => "Reseed",
            Kind::Shutdown => "Shutdown",
            Kind::Stat => "Stat",
            Kind::ListDir => "ListDir",
            Kind::MakeDir => "MakeDir",
            Kind::Remove => "Remove",
            Kind::Rename => "Rename",
            Kind::ExecIn => "ExecIn",
            Kind::ProcessStart => "ProcessStart",
            Kind::ProcessInput => "ProcessInput",
            Kind::ProcessSignal => "ProcessSignal",
            Kind::ProcessList => "ProcessList",
            Kind::ProcessAttach => "ProcessAttach",
            Kind::ProcessResize => "ProcessResize",
            Kind::TcpConnect => "TcpConnect",
            Kind::HelloOk => "HelloOk",
            Kind::Pong => "Pong",
            Kind::HealthReport => "HealthReport",
            Kind::ExecResult => "ExecResult",
            Kind::PutFileOk => "PutFileOk",
            Kind::FileData => "FileData",
            Kind::ReseedOk => "ReseedOk",
            Kind::ShutdownOk => "ShutdownOk",
            Kind::StatResult => "StatResult",
            Kind::DirListing => "DirListing",
            Kind::MakeDirOk => "MakeDirOk",
            Kind::RemoveOk => "RemoveOk",
            Kind::RenameOk => "RenameOk",
            Kind::ExecInResult => "ExecInResult",
            Kind::ProcessStarted => "ProcessStarted",
            Kind::ProcessInputOk => "ProcessInputOk",
            Kind::ProcessSignalOk => "ProcessSignalOk",
            Kind::ProcessListing => "ProcessListing",
            Kind::ProcessAttached => "ProcessAttached",
            Kind::ProcessResizeOk => "ProcessResizeOk",
            Kind::TcpConnected => "TcpConnected",
            Kind::ProcessOutput => "ProcessOutput",
            Kind::ProcessExit => "ProcessExit",
            Kind::Error => "Error",
            Kind::Unsupported => "Unsupported",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (0x{:02x})", self.name(), self.as_u8())
    }
}

/// The `code` of an Error reply. Unknown codes are carried as they are (forward compatibility).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ErrorCode(pub u16);

impl ErrorCode {
    /// The request frame could not be decoded; the agent closes the connection after this reply.
    pub const MALFORMED: ErrorCode = ErrorCode(1);
    /// The frame's protocol version is not one the agent speaks, or Hello shares no version.
    pub const UNSUPPORTED_VERSION: ErrorCode = ErrorCode(2);
    /// A request other than Hello arrived before a successful Hello.
    pub const HELLO_REQUIRED: ErrorCode = ErrorCode(3);
    /// The reply would exceed the negotiated frame size, or a resource limit was hit.
    pub const TOO_LARGE: ErrorCode = ErrorCode(4);
    /// The file, directory, command or user does not exist.
    pub const NOT_FOUND: ErrorCode = ErrorCode(5);
    /// The agent may not do that.
    pub const PERMISSION_DENIED: ErrorCode = ErrorCode(6);
    /// The request is well-formed but its values make no sense to the agent.
    pub const INVALID_ARGUMENT: ErrorCode = ErrorCode(7);
    /// An I/O error inside the guest.
    pub const IO: ErrorCode = ErrorCode(8);
    /// The agent is busy; the request may be retried.
    pub const BUSY: ErrorCode = ErrorCode(9);
    /// A guest-side time limit (Exec `timeout_ms`) expired.
    pub const TIMED_OUT: ErrorCode = ErrorCode(10);
    /// Anything else that went wrong inside the agent.
    pub const INTERNAL: ErrorCode = ErrorCode(11);
    /// Something that is not a directory is already at the path (MakeDir), like `EEXIST`.
    pub const ALREADY_EXISTS: ErrorCode = ErrorCode(12);
    /// A directory was needed (a path component, ListDir, a working directory, a trailing
    /// `/`, Rename of a directory onto a file), like `ENOTDIR`.
    pub const NOT_A_DIRECTORY: ErrorCode = ErrorCode(13);
    /// A file was needed but the path names a directory (PutFile, GetFile, Rename of a file
    /// onto a directory), like `EISDIR`.
    pub const IS_A_DIRECTORY: ErrorCode = ErrorCode(14);
    /// The directory has entries (Remove without `recursive`, Rename onto it), like
    /// `ENOTEMPTY`.
    pub const NOT_EMPTY: ErrorCode = ErrorCode(15);
    /// Nothing accepts connections on the port (TcpConnect), like `ECONNREFUSED`.
    pub const CONNECTION_REFUSED: ErrorCode = ErrorCode(16);

    /// Name of a code this version defines, `None` for others.
    pub const fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            1 => "malformed",
            2 => "unsupported version",
            3 => "hello required",
            4 => "too large",
            5 => "not found",
            6 => "permission denied",
            7 => "invalid argument",
            8 => "i/o error",
            9 => "busy",
            10 => "timed out",
            11 => "internal error",
            12 => "already exists",
            13 => "not a directory",
            14 => "is a directory",
            15 => "directory not empty",
            16 => "connection refused",
            _ => return None,
        })
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name} ({})", self.0),
            None => write!(f, "error code {}", self.0),
        }
    }
}

#[cfg(feature = "std")]
impl ErrorCode {
    /// The code an agent answers an OS error with (ENAMETOOLONG is TOO_LARGE).
    pub fn of_io(e: &std::io::Error) -> ErrorCode {
        use std::io::ErrorKind as K;
        if e.raw_os_error() == Some(nix::errno::Errno::ENAMETOOLONG as i32) {
            return ErrorCode::TOO_LARGE;
        }
        match e.kind() {
            K::NotFound => ErrorCode::NOT_FOUND,
            K::AlreadyExists => ErrorCode::ALREADY_EXISTS,
            K::NotADirectory => ErrorCode::NOT_A_DIRECTORY,
            K::IsADirectory => ErrorCode::IS_A_DIRECTORY,
            K::DirectoryNotEmpty => ErrorCode::NOT_EMPTY,
            K::PermissionDenied => ErrorCode::PERMISSION_DENIED,
            K::InvalidInput | K::InvalidFilename => ErrorCode::INVALID_ARGUMENT,
            K::FileTooLarge | K::StorageFull | K::QuotaExceeded => ErrorCode::TOO_LARGE,
            K::TimedOut => ErrorCode::TIMED_OUT,
            K::ConnectionRefused => ErrorCode::CONNECTION_REFUSED,
            _ => ErrorCode::IO,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_values_round_trip() {
        for kind in Kind::ALL {
            assert_eq!(Kind::from_u8(kind.as_u8()), Some(kind));
        }
        let defined = (0..=255u8).filter(|b| Kind::from_u8(*b).is_some()).count();
        assert_eq!(defined, Kind::ALL.len());
    }

    #[test]
    fn every_request_has_a_reply() {
        for kind in Kind::ALL.iter().filter(|k| k.is_request()) {
            let reply = kind.reply().unwrap();
            assert!(!reply.is_request() && !reply.is_event());
            assert_eq!(reply.as_u8(), kind.as_u8() | 0x80);
        }
        assert_eq!(Kind::Error.reply(), None);
        assert!(Kind::ProcessOutput.is_event() && Kind::ProcessExit.is_event());
        assert_eq!(Kind::ProcessOutput.reply(), None);
    }

    #[test]
    fn unknown_error_codes_are_kept() {
        assert_eq!(ErrorCode(999).name(), None);
        assert_eq!(ErrorCode::NOT_FOUND.name(), Some("not found"));
        assert_eq!(ErrorCode::NOT_EMPTY.name(), Some("directory not empty"));
        assert_eq!(
            ErrorCode::CONNECTION_REFUSED.name(),
            Some("connection refused")
        );
        assert_eq!(ErrorCode(17).name(), None);
    }
}
