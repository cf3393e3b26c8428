//! Socket files left behind by a killed process. A VMM killed with SIGKILL cannot remove the
//! Unix sockets it listened on (the API socket, the vsock device's socket); the next VMM on the
//! same paths removes such a file when nobody listens on it, and refuses a path a live process
//! listens on or anything that is not a socket (never deleting another process's files).

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;

/// Why a path cannot be bound.
#[derive(Debug, thiserror::Error)]
pub enum StaleError {
    /// The path is taken by something that is not a socket.
    #[error("{0} exists and is not a socket")]
    NotASocket(PathBuf),
    /// Another process listens on the path.
    #[error("{0} is in use by another process")]
    InUse(PathBuf),
    /// Something else failed.
    #[error("{path}: {what}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// Why it failed.
        source: io::Error,
    },
}

impl From<StaleError> for io::Error {
    fn from(e: StaleError) -> io::Error {
        let kind = match &e {
            StaleError::NotASocket(_) | StaleError::InUse(_) => io::ErrorKind::AddrInUse,
            StaleError::Io { source, .. } => source.kind(),
        };
        io::Error::new(kind, e.to_string())
    }
}

/// Removes a socket file at `path` that nobody listens on (`what` names it in the log);
/// refuses one a process listens on and anything that is not a socket. A missing path is fine.
pub fn remove_stale(path: &Path, what: &str) -> Result<(), StaleError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(StaleError::Io {
                path: path.to_path_buf(),
                what: "checking the path",
                source,
            });
        }
    };
    if !meta.file_type().is_socket() {
        return Err(StaleError::NotASocket(path.to_path_buf()));
    }
    match probe_listener(path) {
        // Accepted, or a full backlog: somebody listens.
        Ok(()) | Err(Errno::EAGAIN | Errno::EINPROGRESS) => {
            Err(StaleError::InUse(path.to_path_buf()))
        }
        Err(Errno::ECONNREFUSED) => {
            tracing::info!(path = %path.display(), socket = what,
                "replacing a stale socket nobody listens on");
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(StaleError::Io {
                    path: path.to_path_buf(),
                    what: "removing the stale socket",
                    source: e,
                }),
                _ => Ok(()),
            }
        }
        Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(StaleError::Io {
            path: path.to_path_buf(),
            what: "probing the existing socket",
            source: e.into(),
        }),
    }
}

/// Connects to `path` without blocking: `Ok` or `EAGAIN`/`EINPROGRESS` if someone listens.
fn probe_listener(path: &Path) -> Result<(), Errno> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket};
    let addr = UnixAddr::new(path)?;
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    connect(fd.as_raw_fd(), &addr)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn a_dead_socket_is_removed_a_live_one_and_a_file_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let dead = dir.path().join("dead.sock");
        drop(UnixListener::bind(&dead).unwrap());
        assert!(dead.exists());
        remove_stale(&dead, "test").unwrap();
        assert!(!dead.exists());

        let live = dir.path().join("live.sock");
        let _l = UnixListener::bind(&live).unwrap();
        assert!(matches!(
            remove_stale(&live, "test"),
            Err(StaleError::InUse(_))
        ));
        assert!(live.exists());

        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(
            remove_stale(&file, "test"),
            Err(StaleError::NotASocket(_))
        ));
        assert!(file.exists());

        remove_stale(&dir.path().join("missing"), "test").unwrap();
    }
}
