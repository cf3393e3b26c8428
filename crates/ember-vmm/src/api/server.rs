//! The API server: a Unix listener and its connections on one epoll loop in the main thread,
//! next to the VM-exit eventfd and stdin (console input for COM1, like Firecracker). Requests are handled one at a time, in arrival order, by the
//! controller; responses are written before the next request is read.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};

use super::http::{self, CONTINUE, MAX_BODY, MAX_HEAD, Parsed, Response};
use crate::controller::Controller;
use crate::exit::ExitSignal;
use crate::timing::now_ns;

/// Most simultaneous API connections; more are closed on accept.
const MAX_CONNECTIONS: usize = 32;

struct Conn {
    stream: UnixStream,
    buf: Vec<u8>,
    sent_continue: bool,
}

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// epoll failed.
    #[error("API event loop: {0}")]
    Epoll(nix::Error),
    /// The listener failed.
    #[error("API socket: {0}")]
    Io(io::Error),
}

/// Serves the API until the VM asks the process to exit; returns the exit code.
pub fn run(
    listener: UnixListener,
    controller: &mut Controller,
    exit: &ExitSignal,
) -> Result<i32, ServerError> {
    listener.set_nonblocking(true).map_err(ServerError::Io)?;
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(ServerError::Epoll)?;
    let listen_fd = listener.as_raw_fd();
    let exit_fd = exit.eventfd().as_fd().as_raw_fd();
    epoll
        .add(
            listener.as_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN, listen_fd as u64),
        )
        .map_err(ServerError::Epoll)?;
    epoll
        .add(
            exit.eventfd().as_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN, exit_fd as u64),
        )
        .map_err(ServerError::Epoll)?;
    // Console input: stdin, when it can be polled (a pipe or terminal; not /dev/null or a file).
    let stdin = io::stdin();
    let stdin_fd = stdin.as_fd().as_raw_fd();
    let mut stdin_open = epoll
        .add(
            stdin.as_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN, stdin_fd as u64),
        )
        .is_ok();
    let mut conns: HashMap<RawFd, Conn> = HashMap::new();
    let mut events = [EpollEvent::empty(); 16];
    loop {
        if let Some(reason) = exit.reason() {
            return Ok(reason.exit_code());
        }
        let n = match epoll.wait(&mut events, EpollTimeout::NONE) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(ServerError::Epoll(e)),
        };
        for ev in &events[..n] {
            let fd = ev.data() as RawFd;
            if fd == exit_fd {
                let _ = exit.eventfd().read();
                continue;
            }
            if stdin_open && fd == stdin_fd {
                let mut buf = [0u8; 64];
                match nix::unistd::read(stdin.as_fd(), &mut buf) {
                    Ok(0) | Err(nix::errno::Errno::EBADF | nix::errno::Errno::EIO) => {
                        let _ = epoll.delete(stdin.as_fd());
                        stdin_open = false;
                    }
                    Ok(n) => controller.console_input(&buf[..n]),
                    Err(_) => {}
                }
                continue;
            }
            if fd == listen_fd {
                accept_all(&listener, &epoll, &mut conns);
                continue;
            }
            let keep = match conns.get_mut(&fd) {
                Some(conn) => serve(conn, controller),
                None => continue,
            };
            if !keep && let Some(conn) = conns.remove(&fd) {
                let _ = epoll.delete(conn.stream.as_fd());
            }
        }
    }
}

fn accept_all(listener: &UnixListener, epoll: &Epoll, conns: &mut HashMap<RawFd, Conn>) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                if conns.len() >= MAX_CONNECTIONS || stream.set_nonblocking(true).is_err() {
                    tracing::warn!("too many API connections, closing a new one");
                    continue;
                }
                let fd = stream.as_raw_fd();
                let flags = EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP;
                if epoll
                    .add(stream.as_fd(), EpollEvent::new(flags, fd as u64))
                    .is_ok()
                {
                    conns.insert(
                        fd,
                        Conn {
                            stream,
                            buf: Vec::with_capacity(1024),
                            sent_continue: false,
                        },
                    );
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(error = %e, "accept on the API socket failed");
                return;
            }
        }
    }
}

/// Reads what is available and answers complete requests. Returns false to close.
fn serve(conn: &mut Conn, controller: &mut Controller) -> bool {
    let mut eof = false;
    let mut chunk = [0u8; 4096];
    loop {
        match conn.stream.read(&mut chunk) {
            Ok(0) => {
                eof = true;
                break;
            }
            Ok(n) => {
                conn.buf.extend_from_slice(&chunk[..n]);
                if conn.buf.len() > MAX_HEAD + MAX_BODY + 4096 {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
    let received_ns = now_ns();
    loop {
        match http::parse(&conn.buf) {
            Ok(Parsed::Complete(req, used)) => {
                conn.buf.drain(..used);
                conn.sent_continue = false;
                let keep_alive = req.keep_alive;
                let resp = super::handle_request(controller, req, received_ns);
                if write_fully(&mut conn.stream, &resp.to_bytes(keep_alive)).is_err() || !keep_alive
                {
                    return false;
                }
            }
            Ok(Parsed::Incomplete { send_continue }) => {
                if send_continue && !conn.sent_continue {
                    conn.sent_continue = true;
                    if write_fully(&mut conn.stream, CONTINUE).is_err() {
                        return false;
                    }
                }
                return !eof;
            }
            Err(e) => {
                let _ = write_fully(
                    &mut conn.stream,
                    &Response::bad_request(&e.0).to_bytes(false),
                );
                return false;
            }
        }
    }
}

fn write_fully(stream: &mut UnixStream, mut bytes: &[u8]) -> io::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !bytes.is_empty() {
        match stream.write(bytes) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "peer closed")),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if std::time::Instant::now() > deadline {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "API client not reading",
                    ));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
