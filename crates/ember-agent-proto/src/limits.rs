//! Hard limits of protocol version 1.
//!
//! Owns every numeric bound of the wire format. Encoders and decoders both enforce them (through the
//! field rules in `message/rules.rs`), so a frame that one side can build the other side accepts.
//! Changing any value here is a wire-format change and needs a new protocol version.

/// The protocol version this crate implements (the only one so far).
pub const VERSION: u8 = 1;

/// Versions this crate can speak, highest first.
pub const SUPPORTED_VERSIONS: &[u8] = &[VERSION];

/// Size of the `length` prefix that starts every frame.
pub const LENGTH_PREFIX_LEN: usize = 4;

/// Size of the fixed frame header, length prefix included; the body follows it.
pub const HEADER_LEN: usize = 16;

/// Largest frame (length prefix included) any peer may send or accept.
pub const MAX_FRAME_LEN: usize = 1 << 20;

/// Every peer accepts frames of at least this size (length prefix included); Hello always fits.
pub const MIN_FRAME_LEN: usize = 4096;

/// Most versions a Hello may offer.
pub const MAX_VERSIONS: usize = 16;

/// Longest agent or client name and software version string, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// Most argv entries in an Exec request.
pub const MAX_ARGS: usize = 256;

/// Most environment entries in an Exec request.
pub const MAX_ENV: usize = 256;

/// Longest single argv or environment entry, in bytes.
pub const MAX_ARG_LEN: usize = 4096;

/// Longest guest path, in bytes (Linux `PATH_MAX`): request paths, ExecIn `cwd`, a symlink's
/// `target`, a ListDir entry's `name`.
pub const MAX_PATH_LEN: usize = 4096;

/// Longest user or group name, in bytes: ExecIn `user`, StatResult `owner` and `group`.
pub const MAX_USER_LEN: usize = 64;

/// Smallest ListDir `depth` (1: the directory's own entries).
pub const MIN_LIST_DEPTH: u32 = 1;

/// Longest message in an Error reply, in bytes.
pub const MAX_MESSAGE_LEN: usize = 1024;

/// Fewest entropy bytes a Reseed carries.
pub const MIN_ENTROPY_LEN: usize = 16;

/// Most entropy bytes a Reseed carries.
pub const MAX_ENTROPY_LEN: usize = 256;

/// Largest file mode (permission and setuid/setgid/sticky bits only).
pub const MAX_MODE: u32 = 0o7777;

/// Size of the boot id in a Health report.
pub const BOOT_ID_LEN: usize = 16;
