//! Where the agent listens: an AF_VSOCK port (in a guest) or a Unix socket speaking
//! Firecracker's hybrid-vsock handshake (tests on a host without vsock).
//!
//! Owns parsing `--listen`, binding, accepting (every socket close-on-exec), and the handshake
//! a Unix connection starts with: `CONNECT <port>\n` answered `OK <n>\n` when the port is the
//! agent's, closed otherwise — exactly what ember-vmm's vsock device does in front of a guest.
//! Connections come out as plain byte streams; the protocol is the server's.
#![forbid(unsafe_code)]

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};

use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, VsockAddr, bind, listen, socket,
};

/// `VMADDR_CID_ANY`.
const CID_ANY: u32 = u32::MAX;

/// Longest handshake line accepted.
const MAX_LINE: usize = 64;

/// A `--listen` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// `vsock:PORT`: AF_VSOCK, any CID.
    Vsock(u32),
    /// `unix:PATH`: a Unix socket with the hybrid-vsock handshake.
    Unix(PathBuf),
}

impl FromStr for Listen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(port) = s.strip_prefix("vsock:") {
            let port = port
                .parse::<u32>()
                .map_err(|e| format!("vsock port {port:?}: {e}"))?;
            return Ok(Listen::Vsock(port));
        }
        if let Some(path) = s.strip_prefix("unix:")
            && !path.is_empty()
        {
            return Ok(Listen::Unix(PathBuf::from(path)));
        }
        Err(format!("{s:?}: expected vsock:PORT or unix:PATH"))
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listen::Vsock(port) => write!(f, "vsock:{port}"),
            Listen::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// A bound, listening socket.
#[derive(Debug)]
pub enum Listener {
    /// AF_VSOCK.
    Vsock(OwnedFd),
    /// Unix, with the handshake for `port`.
    Unix {
        /// The socket.
        listener: UnixListener,
        /// The guest port the handshake must name.
        port: u32,
    },
}

/// An accepted connection, before any handshake.
#[derive(Debug)]
pub struct Accepted {
    /// The stream.
    pub stream: File,
    /// The guest port a hybrid-vsock handshake must name; `None`: no handshake (vsock).
    pub handshake: Option<u32>,
}

impl Listener {
    /// Binds `listen`; a Unix socket uses the hybrid handshake for guest port `port`, and a
    /// stale socket file at its path is replaced.
    pub fn bind(spec: &Listen, port: u32) -> io::Result<Listener> {
        match spec {
            Listen::Vsock(port) => {
                let fd = socket(
                    AddressFamily::Vsock,
                    SockType::Stream,
                    SockFlag::SOCK_CLOEXEC,
                    None,
                )?;
                bind(fd.as_raw_fd(), &VsockAddr::new(CID_ANY, *port))?;
                listen(&fd, Backlog::new(128).unwrap_or(Backlog::MAXCONN))?;
                Ok(Listener::Vsock(fd))
            }
            Listen::Unix(path) => {
                if UnixStream::connect(path).is_err() {
                    let _ = std::fs::remove_file(path);
                }
                Ok(Listener::Unix {
                    listener: UnixListener::bind(path)?,
                    port,
                })
            }
        }
    }

    /// Waits for the next connection.
    pub fn accept(&self) -> io::Result<Accepted> {
        match self {
            Listener::Vsock(fd) => {
                let conn = rustix::net::accept_with(fd, rustix::net::SocketFlags::CLOEXEC)?;
                Ok(Accepted {
                    stream: File::from(conn),
                    handshake: None,
                })
            }
            Listener::Unix { listener, port } => {
                let (conn, _) = listener.accept()?;
                Ok(Accepted {
                    stream: File::from(OwnedFd::from(conn)),
                    handshake: Some(*port),
                })
            }
        }
    }
}

/// Host ports handed out in `OK` lines (as a VMM would, counting up).
static NEXT_HOST_PORT: AtomicU32 = AtomicU32::new(1_073_741_824);

/// Runs the hybrid-vsock handshake for guest `port`: true when the stream now carries frames.
pub fn handshake(stream: &mut File, port: u32) -> io::Result<bool> {
    let mut line = Vec::with_capacity(MAX_LINE);
    let mut byte = [0u8; 1];
    // One byte at a time, so no frame byte after the line is consumed.
    while line.len() < MAX_LINE {
        if stream.read(&mut byte)? == 0 {
            return Ok(false);
        }
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
    }
    let asked = std::str::from_utf8(&line)
        .ok()
        .and_then(|l| l.strip_prefix("CONNECT "))
        .and_then(|p| p.trim().parse::<u32>().ok());
    if asked != Some(port) {
        return Ok(false); // nothing listens there: the VMM closes
    }
    let host_port = NEXT_HOST_PORT.fetch_add(1, Ordering::Relaxed);
    stream.write_all(format!("OK {host_port}\n").as_bytes())?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_values_parse() {
        assert_eq!("vsock:52".parse::<Listen>(), Ok(Listen::Vsock(52)));
        assert_eq!(
            "unix:/tmp/a.sock".parse::<Listen>(),
            Ok(Listen::Unix(PathBuf::from("/tmp/a.sock")))
        );
        for bad in ["vsock:x", "unix:", "tcp:1", "52"] {
            assert!(bad.parse::<Listen>().is_err(), "{bad}");
        }
        assert_eq!(Listen::Vsock(7).to_string(), "vsock:7");
    }

    #[test]
    fn vsock_binds_where_the_kernel_has_it() {
        match Listener::bind(&Listen::Vsock(40_000 + std::process::id() % 20_000), 52) {
            Ok(Listener::Vsock(_)) => {}
            Ok(other) => panic!("{other:?}"),
            // No AF_VSOCK in this kernel (or no transport): nothing to test here.
            Err(e) => assert!(
                matches!(
                    e.raw_os_error(),
                    Some(libc::EAFNOSUPPORT | libc::ENODEV | libc::EADDRNOTAVAIL)
                ),
                "{e}"
            ),
        }
    }

    #[test]
    fn handshake_answers_only_its_port() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.sock");
        let listener = Listener::bind(&Listen::Unix(path.clone()), 52).unwrap();
        for (line, ok) in [
            ("CONNECT 52\n", true),
            ("CONNECT 53\n", false),
            ("HELLO\n", false),
        ] {
            let mut client = UnixStream::connect(&path).unwrap();
            client.write_all(line.as_bytes()).unwrap();
            let mut accepted = listener.accept().unwrap();
            let port = accepted.handshake.unwrap();
            assert_eq!(handshake(&mut accepted.stream, port).unwrap(), ok, "{line}");
            if ok {
                let mut reply = [0u8; 3];
                client.read_exact(&mut reply).unwrap();
                assert_eq!(&reply, b"OK ");
            }
        }
    }
}
