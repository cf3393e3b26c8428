//! The field rules of every version-1 message body, in one table.
//!
//! Owns which bounds and content checks apply to which field. Encoders and decoders use the same
//! constants, so anything one side can encode the other side accepts, and vice versa. The
//! wire-format documentation lists the same rules.

use crate::codec::{BytesRule, Content, ListRule};
use crate::limits::{
    MAX_ARG_LEN, MAX_ARGS, MAX_ENTROPY_LEN, MAX_ENV, MAX_FRAME_LEN, MAX_MESSAGE_LEN, MAX_MODE,
    MAX_NAME_LEN, MAX_PATH_LEN, MAX_USER_LEN, MAX_VERSIONS, MIN_ENTROPY_LEN, MIN_FRAME_LEN,
    MIN_LIST_DEPTH,
};

const fn bytes(field: &'static str, min: usize, max: usize, content: Content) -> BytesRule {
    BytesRule {
        field,
        min,
        max,
        content,
    }
}

/// Hello `versions`: 1..=16 version numbers, one byte each, none zero.
pub(crate) const VERSIONS: BytesRule = bytes("versions", 1, MAX_VERSIONS, Content::NoNul);
/// Hello / HelloOk `name`.
pub(crate) const NAME: BytesRule = bytes("name", 0, MAX_NAME_LEN, Content::Utf8);
/// Hello / HelloOk `software_version`.
pub(crate) const SOFTWARE_VERSION: BytesRule =
    bytes("software_version", 0, MAX_NAME_LEN, Content::Utf8);
/// Hello / HelloOk `max_frame_len`: at least the minimum every peer supports.
pub(crate) const MAX_FRAME: core::ops::RangeInclusive<u32> = (MIN_FRAME_LEN as u32)..=u32::MAX;
/// Ping / Pong `payload`.
pub(crate) const PAYLOAD: BytesRule = bytes("payload", 0, MAX_FRAME_LEN, Content::Any);
/// Exec `argv`: 1..=256 entries of up to 4096 bytes, no NUL.
pub(crate) const ARGV: ListRule = ListRule {
    min: 1,
    max: MAX_ARGS,
    item: bytes("argv", 0, MAX_ARG_LEN, Content::NoNul),
};
/// Exec `env`: up to 256 `KEY=VALUE` entries of up to 4096 bytes, no NUL.
pub(crate) const ENV: ListRule = ListRule {
    min: 0,
    max: MAX_ENV,
    item: bytes("env", 2, MAX_ARG_LEN, Content::KeyValue),
};
/// Exec `stdin`.
pub(crate) const STDIN: BytesRule = bytes("stdin", 0, MAX_FRAME_LEN, Content::Any);
/// ExecResult `stdout`.
pub(crate) const STDOUT: BytesRule = bytes("stdout", 0, MAX_FRAME_LEN, Content::Any);
/// ExecResult `stderr`.
pub(crate) const STDERR: BytesRule = bytes("stderr", 0, MAX_FRAME_LEN, Content::Any);
/// ExecResult `flags`: bit 0 stdout truncated, bit 1 stderr truncated.
pub(crate) const EXEC_FLAGS_KNOWN: u8 = 0b11;
/// `path` of PutFile, GetFile, Stat, ListDir, MakeDir, Remove: 1..=4096 bytes, no NUL.
pub(crate) const PATH: BytesRule = bytes("path", 1, MAX_PATH_LEN, Content::NoNul);
/// Rename `from`.
pub(crate) const FROM: BytesRule = bytes("from", 1, MAX_PATH_LEN, Content::NoNul);
/// Rename `to`.
pub(crate) const TO: BytesRule = bytes("to", 1, MAX_PATH_LEN, Content::NoNul);
/// ExecIn `cwd`: empty (the agent's default) or a path.
pub(crate) const CWD: BytesRule = bytes("cwd", 0, MAX_PATH_LEN, Content::NoNul);
/// ExecIn `user`: empty (the agent's default) or a user name.
pub(crate) const USER: BytesRule = bytes("user", 0, MAX_USER_LEN, Content::Utf8NoNul);
/// StatResult / ListDir entry `owner`.
pub(crate) const OWNER: BytesRule = bytes("owner", 0, MAX_USER_LEN, Content::Utf8NoNul);
/// StatResult / ListDir entry `group`.
pub(crate) const GROUP: BytesRule = bytes("group", 0, MAX_USER_LEN, Content::Utf8NoNul);
/// StatResult / ListDir entry `target`: a symlink's target, empty for anything else.
pub(crate) const TARGET: BytesRule = bytes("target", 0, MAX_PATH_LEN, Content::NoNul);
/// ListDir entry `name`: the path relative to the listed directory.
pub(crate) const ENTRY_NAME: BytesRule = bytes("name", 1, MAX_PATH_LEN, Content::NoNul);
/// ListDir `depth`: at least 1.
pub(crate) const DEPTH: core::ops::RangeInclusive<u32> = MIN_LIST_DEPTH..=u32::MAX;
/// PutFile / FileData / MakeDir / StatResult `mode`.
pub(crate) const MODE: core::ops::RangeInclusive<u32> = 0..=MAX_MODE;
/// PutFile / FileData `data`.
pub(crate) const DATA: BytesRule = bytes("data", 0, MAX_FRAME_LEN, Content::Any);
/// Reseed `entropy`: 16..=256 bytes.
pub(crate) const ENTROPY: BytesRule =
    bytes("entropy", MIN_ENTROPY_LEN, MAX_ENTROPY_LEN, Content::Any);
/// Error `message`.
pub(crate) const MESSAGE: BytesRule = bytes("message", 0, MAX_MESSAGE_LEN, Content::Utf8);
