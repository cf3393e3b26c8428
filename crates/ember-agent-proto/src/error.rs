//! Errors of the core (no_std) codec: framing, decoding and encoding.
//!
//! Owns the typed errors every decoder and encoder returns. They are `Copy`, allocate nothing, and
//! implement `Display` and `core::error::Error` by hand (no `std` needed). Std-side errors (I/O,
//! handshake, client) live with their modules and wrap these.

use core::fmt;

use crate::kind::Kind;

/// What is wrong with one field of a message body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldProblem {
    /// The body ends inside this field.
    Truncated,
    /// The field is longer than its limit.
    TooLong {
        /// Length found.
        len: usize,
        /// Largest allowed.
        max: usize,
    },
    /// The field is shorter than its minimum.
    TooShort {
        /// Length found.
        len: usize,
        /// Smallest allowed.
        min: usize,
    },
    /// The list has more entries than its limit.
    TooMany {
        /// Count found.
        count: usize,
        /// Largest allowed.
        max: usize,
    },
    /// The list has fewer entries than its minimum.
    TooFew {
        /// Count found.
        count: usize,
        /// Smallest allowed.
        min: usize,
    },
    /// A text field is not UTF-8.
    InvalidUtf8,
    /// A path, argument or environment entry contains a NUL byte.
    ContainsNul,
    /// An environment entry is not `KEY=VALUE` with a non-empty key.
    NotKeyValue,
    /// A numeric field holds a value outside its range.
    OutOfRange {
        /// The value found.
        value: u64,
    },
}

impl fmt::Display for FieldProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            FieldProblem::Truncated => f.write_str("truncated"),
            FieldProblem::TooLong { len, max } => write!(f, "too long ({len} > {max} bytes)"),
            FieldProblem::TooShort { len, min } => write!(f, "too short ({len} < {min} bytes)"),
            FieldProblem::TooMany { count, max } => write!(f, "too many entries ({count} > {max})"),
            FieldProblem::TooFew { count, min } => write!(f, "too few entries ({count} < {min})"),
            FieldProblem::InvalidUtf8 => f.write_str("not valid UTF-8"),
            FieldProblem::ContainsNul => f.write_str("contains a NUL byte"),
            FieldProblem::NotKeyValue => f.write_str("not KEY=VALUE with a non-empty key"),
            FieldProblem::OutOfRange { value } => write!(f, "value {value} out of range"),
        }
    }
}

/// A field of a message body broke a rule of the wire format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// The message the field belongs to.
    pub kind: Kind,
    /// The field's name as in the wire-format documentation.
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: FieldProblem,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} field `{}`: {}",
            self.kind.name(),
            self.field,
            self.problem
        )
    }
}

impl core::error::Error for FieldError {}

/// The frame header (length prefix and fixed fields) is invalid; the stream cannot be trusted after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The length prefix is smaller than the fixed header.
    LengthTooSmall {
        /// The length prefix's value.
        len: u32,
    },
    /// The frame would be larger than the receiver accepts; rejected before reading or allocating it.
    LengthTooLarge {
        /// The whole frame's size (length prefix included) the prefix announced.
        frame_len: u64,
        /// The receiver's limit.
        max: usize,
    },
    /// Reserved header flags are set.
    ReservedFlags {
        /// The flags found.
        flags: u16,
    },
    /// The buffer handed to a decoder is not exactly one frame.
    LengthMismatch {
        /// The frame size the length prefix announced.
        frame_len: usize,
        /// The buffer's size.
        buffer_len: usize,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            FrameError::LengthTooSmall { len } => {
                write!(f, "frame length prefix {len} is smaller than the header")
            }
            FrameError::LengthTooLarge { frame_len, max } => {
                write!(
                    f,
                    "frame of {frame_len} bytes exceeds the limit of {max} bytes"
                )
            }
            FrameError::ReservedFlags { flags } => {
                write!(f, "reserved header flags set (0x{flags:04x})")
            }
            FrameError::LengthMismatch {
                frame_len,
                buffer_len,
            } => write!(
                f,
                "buffer of {buffer_len} bytes is not one frame of {frame_len} bytes"
            ),
        }
    }
}

impl core::error::Error for FrameError {}

/// A frame could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The frame header is invalid.
    Frame(FrameError),
    /// The buffer holds only part of a frame.
    Incomplete {
        /// Bytes needed for the whole frame (or at least the header).
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// The header's version is not one this decoder speaks (the header itself was readable).
    UnsupportedVersion {
        /// The version found.
        version: u8,
    },
    /// The header's kind is not a request (or reply) kind this decoder knows.
    UnknownKind {
        /// The kind byte found.
        kind: u8,
    },
    /// A body field broke a rule.
    Field(FieldError),
    /// The body has bytes after its last field.
    TrailingBytes {
        /// The message.
        kind: Kind,
        /// How many bytes are left over.
        extra: usize,
    },
}

impl DecodeError {
    /// Whether the stream is still in sync after this error (the header was sound, so the next
    /// frame starts right after this one). Peers answer such frames and keep the connection; for
    /// the other errors they close it.
    pub const fn is_recoverable(&self) -> bool {
        matches!(
            self,
            DecodeError::UnsupportedVersion { .. } | DecodeError::UnknownKind { .. }
        )
    }
}

impl From<FrameError> for DecodeError {
    fn from(e: FrameError) -> Self {
        DecodeError::Frame(e)
    }
}

impl From<FieldError> for DecodeError {
    fn from(e: FieldError) -> Self {
        DecodeError::Field(e)
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Frame(e) => write!(f, "bad frame: {e}"),
            DecodeError::Incomplete { needed, available } => {
                write!(f, "incomplete frame ({available} of {needed} bytes)")
            }
            DecodeError::UnsupportedVersion { version } => {
                write!(f, "unsupported protocol version {version}")
            }
            DecodeError::UnknownKind { kind } => write!(f, "unknown message kind 0x{kind:02x}"),
            DecodeError::Field(e) => write!(f, "bad field: {e}"),
            DecodeError::TrailingBytes { kind, extra } => {
                write!(f, "{} body has {extra} trailing bytes", kind.name())
            }
        }
    }
}

impl core::error::Error for DecodeError {}

/// A message could not be encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncodeError {
    /// The output buffer is too small; `needed` is the frame's full size.
    BufferTooSmall {
        /// Bytes the frame needs.
        needed: usize,
        /// Bytes the buffer has.
        available: usize,
    },
    /// The frame would exceed the frame-size limit in force.
    FrameTooLarge {
        /// Bytes the frame needs.
        needed: usize,
        /// The limit.
        max: usize,
    },
    /// A field breaks a rule (the same rules decoders enforce).
    Field(FieldError),
}

impl From<FieldError> for EncodeError {
    fn from(e: FieldError) -> Self {
        EncodeError::Field(e)
    }
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::BufferTooSmall { needed, available } => write!(
                f,
                "output buffer too small ({available} bytes, frame needs {needed})"
            ),
            EncodeError::FrameTooLarge { needed, max } => {
                write!(
                    f,
                    "frame of {needed} bytes exceeds the limit of {max} bytes"
                )
            }
            EncodeError::Field(e) => write!(f, "cannot encode: {e}"),
        }
    }
}

impl core::error::Error for EncodeError {}
