//! Forwarding an HTTP request to a port inside the guest (`E2b-Sandbox-Port` other than envd's;
//! the code interpreter listens on 49999): one hybrid-vsock connection to that guest port per
//! request, HTTP/1.1 over it (hyper), the answer streamed back. A port nothing listens on answers
//! as E2B's proxy does: 502 "The sandbox is running but port is not open".

use std::path::Path;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::http::header::{CONNECTION, HOST, TRANSFER_ENCODING, UPGRADE};
use axum::response::{IntoResponse, Response};
use ember_core::{SandboxId, VmId};
use hyper_util::rt::TokioIo;
use serde_json::json;

use super::envd::EnvdState;

/// How long connecting to a guest port may take.
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
    let vsock = match VmId::new(id.as_str()).and_then(|vm| st.app.engine.provider.vsock_path(&vm)) {
        Ok(p) => p,
        Err(_) => return super::envd::not_found(id.as_str()),
    };
    match forward_to(&vsock, port, req).await {
        Ok(resp) => resp,
        Err(Failure::Closed) => port_closed(id.as_str()),
        Err(Failure::Http(e)) => super::envd::http_error(
            StatusCode::BAD_GATEWAY,
            format!("forwarding to port {port} in the sandbox: {e}"),
        ),
    }
}

/// Why forwarding failed.
#[derive(Debug)]
pub enum Failure {
    /// Nothing listens on the guest port (or the sandbox's vsock is gone).
    Closed,
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
    if !hybrid.leftover.is_empty() {
        return Err(Failure::Http(
            "the guest's server spoke before the request".into(),
        ));
    }
    hybrid
        .stream
        .set_nonblocking(true)
        .map_err(|e| Failure::Http(e.to_string()))?;
    let stream = tokio::net::UnixStream::from_std(hybrid.stream)
        .map_err(|e| Failure::Http(e.to_string()))?;
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
