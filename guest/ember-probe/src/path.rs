//! Guest paths as the probe keeps them (ring 3): normalised, absolute, at most
//! [`FILE_PATH_MAX`] bytes, in a fixed buffer.
//!
//! - `/`-separated; an absolute path starts at `/`, a relative one at the working directory
//!   given (`/` for file requests, ExecIn's `cwd` for a built-in's arguments).
//! - Empty and `.` components are dropped; `..` drops the component before it, lexically (the
//!   probe has no symlinks, so that is what the file system would do), and stays at `/` at
//!   the top.
//! - The normalised form is `/a/b` (no trailing `/`); `/` itself is the empty string. A path
//!   whose normalised form is longer than [`FILE_PATH_MAX`] is refused (TOO_LARGE).
//! - A trailing `/`, `.` or `..` asks for a directory ([`Path::dir_only`]).

use ember_agent_proto::ErrorCode;

use crate::files::FileError;
use crate::layout::FILE_PATH_MAX;

// The error message below names the limit.
const _: () = assert!(FILE_PATH_MAX == 255);

const TOO_LONG: FileError = (
    ErrorCode::TOO_LARGE,
    "path longer than the probe's limit (255 bytes, normalised)",
);

/// A normalised absolute guest path.
pub struct Path {
    /// The path is `buf[start..]`.
    buf: [u8; FILE_PATH_MAX],
    start: usize,
    /// The request named it with a trailing `/`, `.` or `..`: it must be a directory.
    pub dir_only: bool,
}

impl Path {
    /// `/`.
    pub const fn root() -> Path {
        Path {
            buf: [0; FILE_PATH_MAX],
            start: FILE_PATH_MAX,
            dir_only: true,
        }
    }

    /// `path`, taken from `cwd` unless it starts with `/`, normalised.
    pub fn resolve(cwd: &Path, path: &[u8]) -> Result<Path, FileError> {
        let mut out = Path::root();
        let last = path.rsplit(|b| *b == b'/').next().unwrap_or_default();
        out.dir_only = matches!(last, b"" | b"." | b"..");
        let base: &[u8] = if path.first() == Some(&b'/') {
            b""
        } else {
            cwd.as_bytes()
        };
        // Right to left, so a `..` is counted before the component it drops: the buffer fills
        // from its end with exactly the normalised path, and overflows only if that is too long.
        let mut skip = 0usize;
        let parts = path.rsplit(|b| *b == b'/');
        for part in parts.chain(base.rsplit(|b| *b == b'/')) {
            match part {
                b"" | b"." => {}
                b".." => skip += 1,
                _ if skip > 0 => skip -= 1,
                name => {
                    let start = out.start.checked_sub(name.len() + 1).ok_or(TOO_LONG)?;
                    out.buf[start] = b'/';
                    out.buf[start + 1..out.start].copy_from_slice(name);
                    out.start = start;
                }
            }
        }
        Ok(out)
    }

    /// The normalised path; empty for `/`.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// Whether this is `/`.
    pub fn is_root(&self) -> bool {
        self.start == FILE_PATH_MAX
    }

    /// The path as text shows it (`/` for the root).
    pub fn display(&self) -> &[u8] {
        if self.is_root() {
            b"/"
        } else {
            self.as_bytes()
        }
    }
}

/// The parent of normalised path `p` (empty for `/` and for children of `/`).
pub fn parent(p: &[u8]) -> &[u8] {
    let cut = p.iter().rposition(|b| *b == b'/').unwrap_or(0);
    &p[..cut]
}

/// Whether normalised path `p` is `dir` or below it.
pub fn within(p: &[u8], dir: &[u8]) -> bool {
    p.starts_with(dir) && (p.len() == dir.len() || p[dir.len()] == b'/')
}

/// Orders normalised paths depth-first: a directory, then everything below it, then its next
/// sibling (byte order, with `/` before every other byte).
pub fn cmp_depth_first(a: &[u8], b: &[u8]) -> core::cmp::Ordering {
    let key = |c: u8| if c == b'/' { 0 } else { u16::from(c) + 1 };
    a.iter().map(|&c| key(c)).cmp(b.iter().map(|&c| key(c)))
}
