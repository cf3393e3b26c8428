//! TcpConnect: a connection to a TCP port on the guest's loopback, then a byte pipe between it
//! and the host's connection.
//!
//! Owns connecting (127.0.0.1:PORT within [`CONNECT_TIMEOUT`]; a refusal names the port as
//! `CONNECTION_REFUSED`) and the pipe ([`pipe`]): one copy per direction, the guest's peer →
//! host on a thread of its own, host → the peer on the connection's thread. End-of-file in
//! one direction is passed on as a half-close (`shutdown(SHUT_WR)`), so a server that answers
//! and closes (HTTP/1.0) ends the host's input while the host may still be writing, and the
//! host finishing its output lets a server see end-of-file. A failure in either direction shuts
//! both connections down, which ends the other copy too. Once the host has closed its
//! connection altogether, nothing could read what the peer still sends, so the peer's
//! connection is shut down rather than kept waiting on a server that never closes.
#![forbid(unsafe_code)]

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use ember_agent_proto::ErrorCode;
use nix::poll::{PollFd, PollFlags, PollTimeout};

use crate::refusal::Refusal;
use crate::server::Writer;

/// How long connecting to the guest's port may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Bytes copied per read.
const CHUNK: usize = 64 * 1024;

/// How often the host's connection is checked for a full close while the peer still sends.
const HANGUP_POLL: u16 = 200;

/// Connects to TCP port `port` on the guest's 127.0.0.1.
pub fn connect(port: u16) -> Result<TcpStream, Refusal> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let tcp = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).map_err(|e| {
        let code = match e.kind() {
            io::ErrorKind::ConnectionRefused => ErrorCode::CONNECTION_REFUSED,
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => ErrorCode::TIMED_OUT,
            _ => ErrorCode::of_io(&e),
        };
        Refusal::new(code, format!("tcp port {port} in the guest ({addr}): {e}"))
    })?;
    // Small writes (a request line, a websocket frame) go out at once.
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// Copies between the host's connection (read from `host`, written through `to_host`) and
/// `tcp` until both directions have ended; `early` are bytes the host sent right after the
/// TcpConnect frame. Returns the first failure, if any.
pub fn pipe(
    host: &mut File,
    to_host: &Arc<Writer>,
    tcp: TcpStream,
    early: &[u8],
) -> io::Result<()> {
    let peer = tcp.try_clone()?;
    let writer = Arc::clone(to_host);
    let down = std::thread::Builder::new()
        .name(format!("tcp-{}", to_host.id))
        .stack_size(128 * 1024)
        .spawn(move || to_host_copy(peer, &writer))?;
    let up = to_guest_copy(host, early, &tcp);
    if up.is_err() {
        to_host.close();
        let _ = tcp.shutdown(Shutdown::Both);
    } else {
        // The host's input ended; the peer may still answer. Watch for the host closing
        // altogether (then nobody reads the answer) while the other copy runs.
        while !down.is_finished() {
            if hung_up(host) {
                let _ = tcp.shutdown(Shutdown::Both);
                break;
            }
        }
    }
    let down = down
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the tcp copy thread panicked")));
    up.and(down)
}

/// Host → peer: `early`, then everything read from `host`; at end-of-file the peer's
/// connection is half-closed.
fn to_guest_copy(host: &mut File, early: &[u8], tcp: &TcpStream) -> io::Result<()> {
    let mut out = tcp;
    out.write_all(early)?;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match host.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        out.write_all(buf.get(..n).unwrap_or_default())?;
    }
    // The peer may have closed already (a server that answered and went): nothing to tell it.
    let _ = tcp.shutdown(Shutdown::Write);
    Ok(())
}

/// Peer → host; at end-of-file the host's connection is half-closed, on a failure both are
/// shut down.
fn to_host_copy(mut tcp: TcpStream, host: &Writer) -> io::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    let result = loop {
        let n = match tcp.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => break Err(e),
        };
        if let Err(e) = host.send(buf.get(..n).unwrap_or_default()) {
            break Err(e);
        }
    };
    match &result {
        Ok(()) => host.shutdown_write(),
        Err(_) => {
            host.close();
            let _ = tcp.shutdown(Shutdown::Both);
        }
    }
    result
}

/// Whether the host closed its connection altogether (waits up to [`HANGUP_POLL`] ms).
fn hung_up(host: &File) -> bool {
    let mut fds = [PollFd::new(host.as_fd(), PollFlags::empty())];
    match nix::poll::poll(&mut fds, PollTimeout::from(HANGUP_POLL)) {
        Ok(0) => false,
        Ok(_) => fds[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR)),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use std::io::BufRead as _;
    use std::net::TcpListener;
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixStream;

    use super::*;

    /// The agent's end of a host connection as `serve` holds it, and the host's end.
    fn host_pair() -> (File, Arc<Writer>, UnixStream) {
        let (agent, host) = UnixStream::pair().unwrap();
        let read = File::from(OwnedFd::from(agent));
        let writer = Arc::new(Writer::new(read.try_clone().unwrap(), 1));
        (read, writer, host)
    }

    #[test]
    fn a_closed_port_is_refused_by_number() {
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let refusal = connect(port).unwrap_err();
        assert_eq!(refusal.code, ErrorCode::CONNECTION_REFUSED);
        assert!(refusal.message.contains(&port.to_string()), "{refusal}");
    }

    /// An HTTP/1.0-style server: reads the request to its blank line, answers, closes. The
    /// host keeps its side open until the answer's end-of-file.
    #[test]
    fn a_server_that_answers_and_closes_ends_the_pipe() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = server.local_addr().unwrap().port();
        let served = std::thread::spawn(move || {
            let (s, _) = server.accept().unwrap();
            let mut r = io::BufReader::new(s.try_clone().unwrap());
            let mut head = String::new();
            loop {
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                head.push_str(&line);
                if line == "\r\n" {
                    break;
                }
            }
            (&s).write_all(b"HTTP/1.0 200 OK\r\n\r\nhello").unwrap();
            head
        });
        let (mut read, writer, mut host) = host_pair();
        let tcp = connect(port).unwrap();
        let agent =
            std::thread::spawn(move || pipe(&mut read, &writer, tcp, b"GET / HTTP/1.0\r\n"));
        host.write_all(b"Host: x\r\n\r\n").unwrap();
        let mut answer = String::new();
        host.read_to_string(&mut answer).unwrap();
        assert_eq!(answer, "HTTP/1.0 200 OK\r\n\r\nhello");
        assert_eq!(served.join().unwrap(), "GET / HTTP/1.0\r\nHost: x\r\n\r\n");
        // The host's input ended but its output is still open: the pipe waits for it.
        drop(host);
        agent.join().unwrap().unwrap();
    }

    /// The host half-closes after its request: the server reads to end-of-file, answers, and
    /// the answer still reaches the host.
    #[test]
    fn the_hosts_half_close_reaches_the_server() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = server.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (mut s, _) = server.accept().unwrap();
            let mut all = Vec::new();
            s.read_to_end(&mut all).unwrap();
            s.write_all(&all.iter().rev().copied().collect::<Vec<u8>>())
                .unwrap();
        });
        let (mut read, writer, mut host) = host_pair();
        let tcp = connect(port).unwrap();
        let agent = std::thread::spawn(move || pipe(&mut read, &writer, tcp, b""));
        host.write_all(b"abc").unwrap();
        host.shutdown(Shutdown::Write).unwrap();
        let mut answer = Vec::new();
        host.read_to_end(&mut answer).unwrap();
        assert_eq!(answer, b"cba");
        agent.join().unwrap().unwrap();
    }

    /// A server that never closes: the host closing its connection ends the pipe anyway.
    #[test]
    fn the_host_closing_ends_a_pipe_to_a_silent_server() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = server.local_addr().unwrap().port();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            let (s, _) = server.accept().unwrap();
            let _ = rx.recv();
            drop(s);
        });
        let (mut read, writer, host) = host_pair();
        let tcp = connect(port).unwrap();
        let agent = std::thread::spawn(move || pipe(&mut read, &writer, tcp, b""));
        drop(host);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !agent.is_finished() {
            assert!(
                std::time::Instant::now() < deadline,
                "the pipe outlived its host"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        agent.join().unwrap().unwrap();
        drop(tx);
    }
}
