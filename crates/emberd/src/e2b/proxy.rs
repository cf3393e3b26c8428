//! Forwarding an HTTP request to a port inside the guest (`E2b-Sandbox-Port` other than envd's;
//! the code interpreter listens on 49999, a user's server wherever it likes): servers in a guest
//! listen on TCP, so the request goes through the sandbox's agent — a fresh agent connection
//! whose TcpConnect makes it a byte pipe to 127.0.0.1:PORT in the guest — and HTTP/1.1 runs over
//! that pipe (hyper), the answer streamed back. A port nothing listens on (the agent's
//! `CONNECTION_REFUSED`, or no answer to its connect) answers as E2B's proxy does: 502 "The
//! sandbox is running but port is not open".
//!
//! An agent without TcpConnect (the probe guest: Unsupported) gets the old rule: the port is
//! dialed as a *vsock* port of the guest through its hybrid vsock socket (the probe's servers
//! are vsock listeners), and a port that takes no connection is "not open" too. Ports above
//! 65535 are no TCP ports: they are only ever dialed over vsock.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::http::header::{CONNECTION, HOST, TRANSFER_ENCODING, UPGRADE};
use axum::response::{IntoResponse, Response};
use ember_agent_proto::{ClientError, ErrorCode};
use ember_core::SandboxId;
use hyper_util::rt::TokioIo;
use serde_json::json;

use super::envd::EnvdState;
use super::process::ProcessAgents;
use crate::error::ApiError;

/// How long connecting to a guest port over vsock may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

fn port_closed(id: &str) -> Response {
    (
        StatusCode::BAD_GATEWAY,
        axum::Json(json!({
            "sandboxId": id,
            "message": "The sandbox is running but port is not open",
            "code": 502,
        })),
    )
        .into_response()
}

/// Forwards `req` to guest port `port` of sandbox `id`.
pub async fn forward(st: &EnvdState, id: &SandboxId, port: u32, req: Request) -> Response {
    forward_via(Arc::clone(st.processes.agents()), id.as_str(), port, req).await
}

/// Forwards `req` to port `port` of `sandbox`, reached through `agents`: over TcpConnect, or
/// (an agent without it, a port above 65535) over the guest's vsock.
pub async fn forward_via(
    agents: Arc<dyn ProcessAgents>,
    sandbox: &str,
    port: u32,
    req: Request,
) -> Response {
    let result = match u16::try_from(port) {
        Ok(tcp_port) => match open_tcp(Arc::clone(&agents), sandbox, tcp_port).await {
            Ok(Opened::Pipe(stream, leftover)) => exchange(stream, &leftover, req).await,
            Ok(Opened::Unsupported) => forward_vsock(&*agents, sandbox, port, req).await,
            Err(failure) => Err(failure),
        },
        Err(_) => forward_vsock(&*agents, sandbox, port, req).await,
    };
    match result {
        Ok(resp) => resp,
        Err(Failure::Closed) => port_closed(sandbox),
        Err(Failure::Agent(e)) => super::envd::http_error(
            StatusCode::BAD_GATEWAY,
            format!("reaching port {port} in the sandbox: {}", e.message),
        ),
        Err(Failure::Http(e)) => super::envd::http_error(
            StatusCode::BAD_GATEWAY,
            format!("forwarding to port {port} in the sandbox: {e}"),
        ),
    }
}

/// What asking the agent for a TCP connection gave.
enum Opened {
    /// The pipe, and bytes the guest's server sent along with the reply.
    Pipe(UnixStream, Vec<u8>),
    /// The agent has no TcpConnect.
    Unsupported,
}

/// A fresh connection to `sandbox`'s agent, turned into a pipe to TCP port `port` in the guest.
async fn open_tcp(
    agents: Arc<dyn ProcessAgents>,
    sandbox: &str,
    port: u16,
) -> Result<Opened, Failure> {
    let sandbox = sandbox.to_string();
    let opened = tokio::task::spawn_blocking(move || {
        let agent = agents.dial(&sandbox).map_err(Failure::Agent)?;
        match agent.into_tcp(port) {
            Ok(pipe) => Ok(Opened::Pipe(pipe.stream, pipe.leftover)),
            Err(ClientError::Unsupported { .. }) => Ok(Opened::Unsupported),
            Err(ClientError::Agent { code, .. })
                if code == ErrorCode::CONNECTION_REFUSED || code == ErrorCode::TIMED_OUT =>
            {
                Err(Failure::Closed)
            }
            Err(e) => Err(Failure::Agent(ApiError::from(e))),
        }
    })
    .await
    .map_err(|e| Failure::Http(e.to_string()))??;
    Ok(opened)
}

/// Forwards `req` to vsock port `port` of `sandbox` (an agent without TcpConnect).
async fn forward_vsock(
    agents: &dyn ProcessAgents,
    sandbox: &str,
    port: u32,
    req: Request,
) -> Result<Response, Failure> {
    let vsock = agents.vsock_path(sandbox).map_err(Failure::Agent)?;
    forward_to(&vsock, port, req).await
}

/// Why forwarding failed.
#[derive(Debug)]
pub enum Failure {
    /// Nothing listens on the guest port (or the sandbox's vsock is gone).
    Closed,
    /// The sandbox's agent could not be reached, or refused otherwise.
    Agent(ApiError),
    /// The exchange with the guest's server failed.
    Http(String),
}

/// Forwards `req` through the hybrid vsock socket at `vsock` to guest port `port`.
pub async fn forward_to(vsock: &Path, port: u32, req: Request) -> Result<Response, Failure> {
    let path = vsock.to_path_buf();
    let hybrid = tokio::task::spawn_blocking(move || {
        ember_agent_proto::vsock::connect(&path, port, Instant::now() + CONNECT_TIMEOUT)
    })
    .await
    .map_err(|e| Failure::Http(e.to_string()))?
    .map_err(|_| Failure::Closed)?;
    exchange(hybrid.stream, &hybrid.leftover, req).await
}

/// Sends `req` over `stream` (which reaches the guest's server; `leftover` are bytes it sent
/// already) as HTTP/1.1 and hands back the answer, its body streamed.
async fn exchange(stream: UnixStream, leftover: &[u8], req: Request) -> Result<Response, Failure> {
    if !leftover.is_empty() {
        return Err(Failure::Http(
            "the guest's server spoke before the request".into(),
        ));
    }
    stream
        .set_nonblocking(true)
        .map_err(|e| Failure::Http(e.to_string()))?;
    let stream =
        tokio::net::UnixStream::from_std(stream).map_err(|e| Failure::Http(e.to_string()))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| Failure::Http(e.to_string()))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let (mut parts, body) = req.into_parts();
    for h in [CONNECTION, UPGRADE, TRANSFER_ENCODING] {
        parts.headers.remove(h);
    }
    parts.headers.remove("e2b-sandbox-id");
    parts.headers.remove("e2b-sandbox-port");
    parts.headers.remove("x-access-token");
    parts
        .headers
        .insert(HOST, axum::http::HeaderValue::from_static("localhost"));
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    parts.uri = path_and_query
        .parse()
        .map_err(|e: axum::http::uri::InvalidUri| Failure::Http(e.to_string()))?;
    let resp = send
        .send_request(Request::from_parts(parts, body))
        .await
        .map_err(|e| Failure::Http(e.to_string()))?;
    let (parts, body) = resp.into_parts();
    Ok(Response::from_parts(parts, Body::new(body)))
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::os::unix::net::UnixListener;

    use super::*;

    /// A stand-in for a VMM's hybrid vsock socket: answers `CONNECT <port>` with `OK` for
    /// `open`, closes otherwise, then serves one HTTP request.
    fn fake_vsock(path: &Path, open: u32) -> std::thread::JoinHandle<()> {
        let listener = UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            for _ in 0..2 {
                let Ok((mut s, _)) = listener.accept() else {
                    return;
                };
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                if line.trim() != format!("CONNECT {open}") {
                    continue;
                }
                s.write_all(b"OK 1073741824\n").unwrap();
                let mut head = String::new();
                loop {
                    let mut l = String::new();
                    r.read_line(&mut l).unwrap();
                    if l == "\r\n" {
                        break;
                    }
                    head.push_str(&l);
                }
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                let mut body = vec![0u8; len];
                r.read_exact(&mut body).unwrap();
                let reply = format!(
                    "{} {}",
                    head.lines().next().unwrap(),
                    String::from_utf8_lossy(&body)
                );
                write!(
                    s,
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-guest: yes\r\n\r\n{reply}",
                    reply.len()
                )
                .unwrap();
            }
        })
    }

    #[tokio::test]
    async fn forwards_to_an_open_port_and_reports_a_closed_one() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("v.sock");
        let server = fake_vsock(&sock, 49999);
        let req = Request::builder()
            .method("POST")
            .uri("http://emberd/execute?x=1")
            .header("e2b-sandbox-id", "sb-1")
            .header("content-length", "5")
            .body(Body::from("hello"))
            .unwrap();
        let resp = forward_to(&sock, 49999, req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["x-guest"], "yes");
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        assert_eq!(&body[..], b"POST /execute?x=1 HTTP/1.1 hello");
        let req = Request::builder().uri("/").body(Body::empty()).unwrap();
        assert!(matches!(
            forward_to(&sock, 8080, req).await,
            Err(Failure::Closed)
        ));
        drop(server);
    }
}
