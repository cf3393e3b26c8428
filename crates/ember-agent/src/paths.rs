//! Guest paths from requests: absolute ones as they are, relative ones from the agent's working
//! directory.
//!
//! Owns the one rule the wire format leaves to the agent (the default working directory) and the
//! lexical check for "this is `/`" that Remove and Rename refuse. The kernel resolves everything
//! else — `..`, symlinks, a trailing `/` requiring a directory — exactly as the wire format says,
//! so paths are passed on unchanged (a trailing `/` included). It does no I/O.
#![forbid(unsafe_code)]

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Resolves request paths against the agent's default working directory.
#[derive(Debug, Clone)]
pub struct Resolver {
    workdir: PathBuf,
}

impl Resolver {
    /// Relative paths are taken from `workdir` (absolute).
    pub fn new(workdir: impl Into<PathBuf>) -> Self {
        Resolver {
            workdir: workdir.into(),
        }
    }

    /// The path a request names; empty names the working directory.
    pub fn resolve(&self, path: &[u8]) -> PathBuf {
        if path.is_empty() {
            return self.workdir.clone();
        }
        let path = Path::new(OsStr::from_bytes(path));
        if path.is_absolute() {
            // Keep the bytes (a trailing `/` means "must be a directory").
            path.to_path_buf()
        } else {
            let mut joined = self.workdir.as_os_str().to_owned();
            if !joined.as_bytes().ends_with(b"/") {
                joined.push("/");
            }
            joined.push(path.as_os_str());
            PathBuf::from(joined)
        }
    }

    /// Whether `path` names `/` (lexically: only `/`, `.` and `..` components after resolving).
    pub fn is_root(&self, path: &[u8]) -> bool {
        let resolved = self.resolve(path);
        let mut depth: usize = 0;
        for part in resolved.as_os_str().as_bytes().split(|b| *b == b'/') {
            match part {
                b"" | b"." => {}
                b".." => depth = depth.saturating_sub(1),
                _ => depth += 1,
            }
        }
        depth == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_start_at_the_workdir() {
        let r = Resolver::new("/home/user");
        assert_eq!(r.resolve(b"/etc/x"), PathBuf::from("/etc/x"));
        assert_eq!(r.resolve(b"a/b"), PathBuf::from("/home/user/a/b"));
        assert_eq!(r.resolve(b""), PathBuf::from("/home/user"));
        assert_eq!(
            r.resolve(b"dir/").as_os_str().as_bytes(),
            b"/home/user/dir/"
        );
        assert_eq!(Resolver::new("/").resolve(b"x"), PathBuf::from("/x"));
    }

    #[test]
    fn root_is_recognised_lexically() {
        let r = Resolver::new("/home/user");
        for root in [
            &b"/"[..],
            b"//",
            b"/.",
            b"/..",
            b"/tmp/..",
            b"../..",
            b"../../..",
        ] {
            assert!(r.is_root(root), "{}", String::from_utf8_lossy(root));
        }
        for not_root in [&b"/tmp"[..], b"x", b"..", b"/tmp/../etc"] {
            assert!(
                !r.is_root(not_root),
                "{}",
                String::from_utf8_lossy(not_root)
            );
        }
    }
}
