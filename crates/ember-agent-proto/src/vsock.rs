//! Firecracker's hybrid vsock, host side: reach a guest port through the VM's vsock Unix socket.
//!
//! Owns the handshake: connect to the Unix socket at the VM's vsock `uds_path`, write
//! `CONNECT <port>\n`, read `OK <hostport>\n`. Anything else is a typed error that quotes what was
//! received. The whole handshake, the Unix `connect` included, ends by one deadline. It knows
//! nothing of the agent protocol that follows.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr, sockopt};
use nix::sys::time::{TimeVal, TimeValLike};

use crate::io::DeadlineIo;

/// Longest reply line accepted (`OK 4294967295\n` is 14 bytes).
pub const MAX_REPLY_LINE: usize = 64;

/// The hybrid vsock handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The Unix socket could not be connected (missing, not listening, refused).
    #[error("connecting to vsock socket {path}: {source}")]
    Connect {
        /// The vsock Unix socket.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The deadline passed before the handshake finished.
    #[error(
        "vsock handshake on {path} (guest port {port}) timed out after {timeout:?}; received {received:?}"
    )]
    TimedOut {
        /// The vsock Unix socket.
        path: PathBuf,
        /// The guest port asked for.
        port: u32,
        /// The time allowed.
        timeout: Duration,
        /// What the VMM had sent so far.
        received: String,
    },
    /// Writing or reading the handshake failed.
    #[error("vsock handshake on {path} (guest port {port}): {source}")]
    Io {
        /// The vsock Unix socket.
        path: PathBuf,
        /// The guest port asked for.
        port: u32,
        /// The OS error.
        source: io::Error,
    },
    /// The VMM closed the connection instead of answering (typically: nothing listens on the port).
    #[error(
        "vsock socket {path} closed the connection after CONNECT {port} (received {received:?}); is the guest listening on port {port}?"
    )]
    Closed {
        /// The vsock Unix socket.
        path: PathBuf,
        /// The guest port asked for.
        port: u32,
        /// What was received before the close.
        received: String,
    },
    /// The VMM answered something other than `OK <hostport>\n`.
    #[error(
        "vsock socket {path} answered CONNECT {port} with {received:?}, expected \"OK <hostport>\\n\""
    )]
    Rejected {
        /// The vsock Unix socket.
        path: PathBuf,
        /// The guest port asked for.
        port: u32,
        /// The reply, escaped.
        received: String,
    },
}

/// A stream connected to a guest port.
#[derive(Debug)]
pub struct HybridStream {
    /// The connected stream, past the handshake.
    pub stream: UnixStream,
    /// The host-side port the VMM assigned (from `OK <hostport>`).
    pub host_port: u32,
    /// Bytes that arrived after the reply line (the start of the guest's first frame, if any).
    pub leftover: Vec<u8>,
}

/// Connects to `port` in the guest behind the hybrid vsock socket at `uds_path`, by `deadline`.
pub fn connect(
    uds_path: &Path,
    port: u32,
    deadline: Instant,
) -> Result<HybridStream, HandshakeError> {
    let started = Instant::now();
    let path = || uds_path.to_path_buf();
    let timed_out = |received: &[u8]| HandshakeError::TimedOut {
        path: path(),
        port,
        timeout: deadline.saturating_duration_since(started),
        received: escape(received),
    };
    let stream = connect_unix(uds_path, deadline).map_err(|source| {
        if source.kind() == io::ErrorKind::TimedOut {
            timed_out(b"")
        } else {
            HandshakeError::Connect {
                path: path(),
                source,
            }
        }
    })?;
    let io_err = |source: io::Error, received: &[u8]| {
        if source.kind() == io::ErrorKind::TimedOut {
            timed_out(received)
        } else {
            HandshakeError::Io {
                path: path(),
                port,
                source,
            }
        }
    };

    let mut io = DeadlineIo::new(&stream, deadline);
    io.write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(|e| io_err(e, b""))?;

    let mut line = [0u8; MAX_REPLY_LINE];
    let mut len = 0;
    let newline = loop {
        if let Some(pos) = line
            .get(..len)
            .and_then(|l| l.iter().position(|b| *b == b'\n'))
        {
            break pos;
        }
        let Some(spare) = line.get_mut(len..).filter(|s| !s.is_empty()) else {
            return Err(HandshakeError::Rejected {
                path: path(),
                port,
                received: escape(&line),
            });
        };
        match io.read(spare) {
            Ok(0) => {
                return Err(HandshakeError::Closed {
                    path: path(),
                    port,
                    received: escape(line.get(..len).unwrap_or_default()),
                });
            }
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err(e, line.get(..len).unwrap_or_default())),
        }
    };
    let reply = line.get(..=newline).unwrap_or_default();
    let host_port = parse_ok(reply).ok_or_else(|| HandshakeError::Rejected {
        path: path(),
        port,
        received: escape(reply),
    })?;
    let leftover = line.get(newline + 1..len).unwrap_or_default().to_vec();
    tracing::trace!(path = %uds_path.display(), port, host_port, "vsock handshake done");
    Ok(HybridStream {
        stream,
        host_port,
        leftover,
    })
}

/// Parses exactly `OK <decimal u32>\n`.
fn parse_ok(line: &[u8]) -> Option<u32> {
    let digits = line.strip_prefix(b"OK ")?.strip_suffix(b"\n")?;
    if digits.is_empty() || digits.len() > 10 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

fn escape(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

/// Connects a Unix stream socket, bounding even a blocked `connect` (full listen backlog) by the
/// deadline through `SO_SNDTIMEO`, which Linux applies to `connect` on Unix sockets.
fn connect_unix(path: &Path, deadline: Instant) -> io::Result<UnixStream> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"));
    }
    let addr = UnixAddr::new(path).map_err(io::Error::from)?;
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io::Error::from)?;
    let micros = i64::try_from(left.as_micros()).unwrap_or(i64::MAX).max(1);
    socket::setsockopt(&fd, sockopt::SendTimeout, &TimeVal::microseconds(micros))
        .map_err(io::Error::from)?;
    match socket::connect(fd.as_raw_fd(), &addr) {
        Ok(()) => Ok(UnixStream::from(fd)),
        Err(Errno::EAGAIN | Errno::EINPROGRESS) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "connect timed out (listen backlog full)",
        )),
        Err(e) => Err(io::Error::from(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_exact_ok_lines() {
        assert_eq!(parse_ok(b"OK 1073741824\n"), Some(1_073_741_824));
        assert_eq!(parse_ok(b"OK 0\n"), Some(0));
        assert_eq!(parse_ok(b"OK \n"), None);
        assert_eq!(parse_ok(b"OK 12\r\n"), None);
        assert_eq!(parse_ok(b"ok 12\n"), None);
        assert_eq!(parse_ok(b"OK 99999999999\n"), None);
        assert_eq!(parse_ok(b"OK +5\n"), None);
        assert_eq!(parse_ok(b"FAILURE\n"), None);
    }

    #[test]
    fn blocked_connect_ends_by_the_deadline() {
        // A listener with a backlog of 0 that never accepts: the first connect is queued, later
        // ones block in the kernel until SO_SNDTIMEO fires.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("full.sock");
        let listener = socket::socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        socket::bind(listener.as_raw_fd(), &UnixAddr::new(&path).unwrap()).unwrap();
        socket::listen(&listener, socket::Backlog::new(0).unwrap()).unwrap();
        let mut queued = Vec::new();
        let started = Instant::now();
        let err = loop {
            match connect_unix(&path, Instant::now() + Duration::from_millis(100)) {
                Ok(stream) => queued.push(stream),
                Err(e) => break e,
            }
            assert!(queued.len() < 16, "backlog never filled");
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn missing_socket_is_a_connect_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = connect(
            &dir.path().join("nope.sock"),
            52,
            Instant::now() + Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(matches!(err, HandshakeError::Connect { .. }), "{err}");
    }
}
