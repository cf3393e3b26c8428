//! HTTP/1.1 over one Unix-socket connection, just enough for the Firecracker API: write a
//! request, read exactly one response — headers parsed with `httparse`, the body read by its
//! `Content-Length` (none for 1xx/204/304) — and keep the connection for the next request.
//!
//! It never waits for the server to close a keep-alive connection (the seed adapter's bug): a
//! response is complete when its headers and `Content-Length` bytes are in. Only a response that
//! has no length *and* says `Connection: close` is read to the end of the stream. Chunked bodies
//! are refused (Firecracker never sends them). Every read and write is bounded by the call's
//! deadline.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use super::error::ClientError;

/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Largest response body accepted.
const MAX_BODY: usize = 16 * 1024 * 1024;
/// Most headers in one response.
const MAX_HEADERS: usize = 32;

/// A complete response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawResponse {
    /// HTTP status code.
    pub status: u16,
    /// The body (empty for 204).
    pub body: Vec<u8>,
    /// The server said `Connection: close`: the connection must not be reused.
    pub close: bool,
}

/// A failed round trip, and whether it failed before any response byte arrived on a connection
/// that had served earlier requests (a dead keep-alive connection: safe to retry once).
#[derive(Debug)]
pub(crate) struct RoundTripError {
    pub error: ClientError,
    pub stale: bool,
}

/// One open connection to an API socket.
#[derive(Debug)]
pub(crate) struct Connection {
    stream: UnixStream,
    /// Bytes read past the end of the previous response (none with a well-behaved server).
    buf: Vec<u8>,
    /// Requests completed on this connection.
    served: u64,
    /// The connection was kept open between calls (opened ahead of use, or kept after a
    /// response): the server may have closed it while idle.
    kept: bool,
}

/// Which request a round trip is for (for error messages).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target<'a> {
    pub method: &'static str,
    pub path: &'a str,
    pub timeout: Duration,
}

impl Target<'_> {
    fn timed_out(&self) -> ClientError {
        ClientError::Timeout {
            method: self.method,
            path: self.path.to_string(),
            timeout: self.timeout,
        }
    }
}

fn remaining(deadline: Instant) -> Option<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    // A zero timeout means "block forever" to the socket API; never pass one.
    (left > Duration::from_micros(1)).then_some(left)
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn is_broken(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::NotConnected
    )
}

impl Connection {
    /// Connects to `path`. Connecting to a Unix socket does not block for long: a listening
    /// socket accepts into its backlog at once, a missing one fails at once.
    pub fn connect(path: &Path) -> Result<Connection, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Connection {
            stream,
            buf: Vec::with_capacity(1024),
            served: 0,
            kept: false,
        })
    }

    /// Sends `request` (a complete HTTP request) and reads one response, by `deadline`.
    pub fn round_trip(
        &mut self,
        request: &[u8],
        target: Target<'_>,
        deadline: Instant,
    ) -> Result<RawResponse, RoundTripError> {
        let reused = self.reused();
        self.send(request, target, deadline)?;
        self.receive(target, deadline, reused)
    }

    /// Whether this connection was kept open between calls (a failure on it before any
    /// response byte may be a dead keep-alive connection, closed by the server while idle).
    pub fn reused(&self) -> bool {
        self.kept || self.served > 0
    }

    /// Marks the connection as kept open between calls.
    pub fn mark_kept(&mut self) {
        self.kept = true;
    }

    /// Writes `request` (a complete HTTP request) by `deadline`.
    pub fn send(
        &mut self,
        request: &[u8],
        target: Target<'_>,
        deadline: Instant,
    ) -> Result<(), RoundTripError> {
        let reused = self.reused();
        let fail = |error: ClientError, stale: bool| RoundTripError { error, stale };
        let Some(left) = remaining(deadline) else {
            return Err(fail(target.timed_out(), false));
        };
        self.stream
            .set_write_timeout(Some(left))
            .map_err(|source| fail(io_err("writing the request", source), false))?;
        if let Err(e) = self.stream.write_all(request) {
            if is_timeout(&e) {
                return Err(fail(target.timed_out(), false));
            }
            let stale = reused && is_broken(&e);
            return Err(fail(io_err("writing the request", e), stale));
        }
        Ok(())
    }

    /// Reads the response to the request sent last, by `deadline`. `reused`: the connection
    /// had served a request before that one.
    pub fn receive(
        &mut self,
        target: Target<'_>,
        deadline: Instant,
        reused: bool,
    ) -> Result<RawResponse, RoundTripError> {
        let timeout = || target.timed_out();
        let fail = |error: ClientError, stale: bool| RoundTripError { error, stale };
        let mut received = 0usize;
        loop {
            match parse_head(&self.buf) {
                Ok(Some(head)) => {
                    if (100..200).contains(&head.status) {
                        // 100 Continue and friends: skip, the real response follows.
                        self.buf.drain(..head.len);
                        continue;
                    }
                    let body_len = match head.body {
                        BodyLength::Exact(n) => n,
                        BodyLength::None => 0,
                        BodyLength::UntilClose => {
                            return self
                                .read_to_close(head, deadline, received)
                                .map_err(|e| fail(e.unwrap_or_else(timeout), false));
                        }
                    };
                    let total = head.len + body_len;
                    if self.buf.len() >= total {
                        let body = self.buf[head.len..total].to_vec();
                        self.buf.drain(..total);
                        self.served += 1;
                        return Ok(RawResponse {
                            status: head.status,
                            body,
                            close: head.close,
                        });
                    }
                }
                Ok(None) => {}
                Err(reason) => {
                    return Err(fail(ClientError::Malformed { reason }, false));
                }
            }
            match self.fill(deadline) {
                Ok(0) => {
                    let stale = reused && received == 0 && self.buf.is_empty();
                    return Err(fail(ClientError::Closed { received }, stale));
                }
                Ok(n) => received += n,
                Err(None) => return Err(fail(timeout(), false)),
                Err(Some(e)) => {
                    let stale = reused && received == 0 && is_broken_client(&e);
                    return Err(fail(e, stale));
                }
            }
        }
    }

    /// Reads more bytes into the buffer; `Err(None)` is a timeout.
    fn fill(&mut self, deadline: Instant) -> Result<usize, Option<ClientError>> {
        let left = remaining(deadline).ok_or(None)?;
        self.stream
            .set_read_timeout(Some(left))
            .map_err(|e| Some(io_err("reading the response", e)))?;
        let mut chunk = [0u8; 4096];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_timeout(&e) => return Err(None),
                Err(e) => return Err(Some(io_err("reading the response", e))),
            }
        }
    }

    fn read_to_close(
        &mut self,
        head: Head,
        deadline: Instant,
        mut received: usize,
    ) -> Result<RawResponse, Option<ClientError>> {
        loop {
            if self.buf.len() - head.len > MAX_BODY {
                return Err(Some(ClientError::Malformed {
                    reason: format!("body longer than {MAX_BODY} bytes"),
                }));
            }
            match self.fill(deadline)? {
                0 => break,
                n => received += n,
            }
        }
        tracing::trace!(received, "response read to the end of the stream");
        let body = self.buf[head.len..].to_vec();
        self.buf.clear();
        Ok(RawResponse {
            status: head.status,
            body,
            close: true,
        })
    }
}

fn io_err(what: &'static str, source: io::Error) -> ClientError {
    ClientError::Io { what, source }
}

fn is_broken_client(e: &ClientError) -> bool {
    matches!(e, ClientError::Io { source, .. } if is_broken(source))
}

/// How the body of a response is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyLength {
    /// `Content-Length: n`.
    Exact(usize),
    /// No body (1xx, 204, 304, or no length on a kept-alive connection).
    None,
    /// No length and `Connection: close`: the body runs to the end of the stream.
    UntilClose,
}

/// A parsed response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Head {
    status: u16,
    /// Bytes of the head, up to and including the blank line.
    len: usize,
    body: BodyLength,
    close: bool,
}

/// The status code of a complete response head at the front of `buf`; `Ok(None)` if more
/// bytes are needed (for callers that only need to know how a request went).
pub(crate) fn response_status(buf: &[u8]) -> Result<Option<u16>, String> {
    Ok(parse_head(buf)?.map(|h| h.status))
}

/// Parses a response head from the front of `buf`; `Ok(None)` if more bytes are needed.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, String> {
    if buf.is_empty() {
        return Ok(None);
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > MAX_HEAD {
                return Err(format!("response head longer than {MAX_HEAD} bytes"));
            }
            return Ok(None);
        }
        Err(e) => return Err(format!("cannot parse the response head: {e}")),
    };
    let status = resp
        .code
        .ok_or_else(|| "response without a status code".to_string())?;
    let mut content_length: Option<usize> = None;
    let mut close = false;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let text = std::str::from_utf8(h.value)
                .map_err(|_| "Content-Length is not ASCII".to_string())?;
            let n: usize = text
                .trim()
                .parse()
                .map_err(|_| format!("Content-Length {text:?} is not a number"))?;
            if content_length.is_some_and(|old| old != n) {
                return Err("conflicting Content-Length headers".into());
            }
            content_length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(format!(
                "Transfer-Encoding {:?} is not supported (the API sends Content-Length)",
                String::from_utf8_lossy(h.value)
            ));
        } else if h.name.eq_ignore_ascii_case("connection") {
            close = h
                .value
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
        }
    }
    let body = match (status, content_length) {
        (100..=199 | 204 | 304, _) => BodyLength::None,
        (_, Some(n)) if n > MAX_BODY => {
            return Err(format!("Content-Length {n} exceeds {MAX_BODY} bytes"));
        }
        (_, Some(n)) => BodyLength::Exact(n),
        (_, None) if close => BodyLength::UntilClose,
        (_, None) => BodyLength::None,
    };
    Ok(Some(Head {
        status,
        len,
        body,
        close,
    }))
}

/// Builds a complete request: `method path`, `Host`, `Accept`, and for a body its
/// `Content-Type` and `Content-Length`.
pub(crate) fn build_request(method: &str, path: &str, body: Option<&[u8]>) -> Vec<u8> {
    let mut req = Vec::with_capacity(160 + body.map_or(0, <[u8]>::len));
    req.extend_from_slice(method.as_bytes());
    req.push(b' ');
    req.extend_from_slice(path.as_bytes());
    req.extend_from_slice(b" HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n");
    if let Some(b) = body {
        req.extend_from_slice(b"Content-Type: application/json\r\nContent-Length: ");
        req.extend_from_slice(b.len().to_string().as_bytes());
        req.extend_from_slice(b"\r\n\r\n");
        req.extend_from_slice(b);
    } else {
        req.extend_from_slice(b"\r\n");
    }
    req
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firecracker_style_heads() {
        // micro_http: "HTTP/1.1 204 \r\n", no Content-Length on 204.
        let h = parse_head(
            b"HTTP/1.1 204 \r\nServer: Firecracker API\r\nConnection: keep-alive\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.status, 204);
        assert_eq!(h.body, BodyLength::None);
        assert!(!h.close);
        let text = b"HTTP/1.1 400 \r\nServer: Firecracker API\r\nConnection: keep-alive\r\nContent-Type: application/json\r\nContent-Length: 25\r\n\r\n{\"fault_message\":\"nope\"}";
        let h = parse_head(text).unwrap().unwrap();
        assert_eq!(h.status, 400);
        assert_eq!(h.body, BodyLength::Exact(25));
    }

    #[test]
    fn partial_and_bad_heads() {
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Le").unwrap(), None);
        assert!(parse_head(b"garbage\r\n\r\n").is_err());
        assert!(
            parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                .unwrap_err()
                .contains("Transfer-Encoding")
        );
        assert!(
            parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
                .is_err()
        );
        let h = parse_head(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.body, BodyLength::UntilClose);
    }

    #[test]
    fn request_bytes() {
        let r = build_request("PUT", "/vm", Some(br#"{"state":"Paused"}"#));
        let text = String::from_utf8(r).unwrap();
        assert!(text.starts_with("PUT /vm HTTP/1.1\r\n"));
        assert!(text.contains("Content-Length: 18\r\n\r\n{\"state\""));
        let r = build_request("GET", "/", None);
        assert!(r.ends_with(b"Accept: application/json\r\n\r\n"));
    }
}
