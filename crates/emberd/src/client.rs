//! [`Client`]: emberd's API from Rust — HTTP/1.1 over the daemon's Unix socket or over TCP with
//! its bearer token, with typed calls returning the API's own types (the CLI, `ember bench api`
//! and tests use it). Connections are kept alive and reused; concurrent calls open more.

use std::path::PathBuf;
use std::sync::Mutex;

use axum::body::Bytes;
use ember_core::{PoolSpec, Sandbox, SnapshotRef, Template, VmView};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::sandboxes::ExecEvent;
use crate::api::system::Info;
use crate::engine::guest::ExecRequest;
use crate::engine::pools::{PoolStatus, SetPool};
use crate::engine::sandboxes::{CreateSandbox, SandboxPage, SetTimeout};
use crate::engine::templates::BuildTemplate;
use crate::error::ErrorBody;

/// Most idle connections kept.
const MAX_IDLE: usize = 64;

/// Where a daemon listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// Its Unix socket.
    Unix(PathBuf),
    /// Its TCP listener (`host:port`) and the bearer token.
    Tcp {
        /// `host:port`.
        addr: String,
        /// The bearer token.
        token: Option<String>,
    },
}

impl Endpoint {
    /// Parses `unix:///path`, a bare `/path`, or `http://host:port`.
    pub fn parse(s: &str, token: Option<String>) -> Result<Endpoint, ClientError> {
        if let Some(path) = s.strip_prefix("unix://") {
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        if s.starts_with('/') {
            return Ok(Endpoint::Unix(PathBuf::from(s)));
        }
        if let Some(addr) = s.strip_prefix("http://") {
            let addr = addr.trim_end_matches('/');
            if addr.is_empty() || addr.contains('/') {
                return Err(ClientError::Endpoint(s.to_string()));
            }
            return Ok(Endpoint::Tcp {
                addr: addr.to_string(),
                token,
            });
        }
        Err(ClientError::Endpoint(s.to_string()))
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix://{}", p.display()),
            Endpoint::Tcp { addr, .. } => write!(f, "http://{addr}"),
        }
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The endpoint is not understood.
    #[error("{0:?} is not an emberd address (unix:///path/to/ember.sock or http://host:port)")]
    Endpoint(String),
    /// The daemon could not be reached.
    #[error("cannot reach emberd at {endpoint}: {source}")]
    Connect {
        /// Where.
        endpoint: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("talking to emberd at {endpoint}: {source}")]
    Http {
        /// Where.
        endpoint: String,
        /// The error.
        #[source]
        source: hyper::Error,
    },
    /// The daemon answered with an error.
    #[error("{message} ({status}, {code})")]
    Api {
        /// The HTTP status.
        status: StatusCode,
        /// The error code.
        code: String,
        /// The error message.
        message: String,
    },
    /// The answer was not what the API promises.
    #[error("emberd sent an unexpected answer: {0}")]
    Unexpected(String),
}

impl ClientError {
    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A client of one daemon.
pub struct Client {
    endpoint: Endpoint,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// A response whose body is read as it comes.
pub struct Streaming {
    body: hyper::body::Incoming,
    buf: Vec<u8>,
    conn: Option<SendRequest<Full<Bytes>>>,
}

impl Client {
    /// A client of the daemon at `endpoint` (nothing is connected until the first call).
    pub fn new(endpoint: Endpoint) -> Client {
        Client {
            endpoint,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Where it calls.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    async fn connection(&self) -> Result<SendRequest<Full<Bytes>>, ClientError> {
        loop {
            let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            match idle {
                Some(mut s) if !s.is_closed() => {
                    if s.ready().await.is_ok() {
                        return Ok(s);
                    }
                }
                Some(_) => {}
                None => break,
            }
        }
        let endpoint = self.endpoint.to_string();
        let connect_err = |source| ClientError::Connect {
            endpoint: endpoint.clone(),
            source,
        };
        let http_err = |source| ClientError::Http {
            endpoint: endpoint.clone(),
            source,
        };
        match &self.endpoint {
            Endpoint::Unix(path) => {
                let stream = tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(connect_err)?;
                let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(http_err)?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Ok(send)
            }
            Endpoint::Tcp { addr, .. } => {
                let stream = tokio::net::TcpStream::connect(addr.as_str())
                    .await
                    .map_err(connect_err)?;
                let _ = stream.set_nodelay(true);
                let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(http_err)?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Ok(send)
            }
        }
    }

    fn keep(&self, conn: SendRequest<Full<Bytes>>) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE && !conn.is_closed() {
            idle.push(conn);
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<Streaming, ClientError> {
        let mut conn = self.connection().await?;
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, "emberd");
        if let Some(ct) = content_type {
            req = req.header(CONTENT_TYPE, ct);
        }
        if let Endpoint::Tcp {
            token: Some(token), ..
        } = &self.endpoint
        {
            req = req.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| ClientError::Unexpected(format!("building the request: {e}")))?;
        let resp = conn
            .send_request(req)
            .await
            .map_err(|source| ClientError::Http {
                endpoint: self.endpoint.to_string(),
                source,
            })?;
        let status = resp.status();
        let mut streaming = Streaming {
            body: resp.into_body(),
            buf: Vec::new(),
            conn: Some(conn),
        };
        if !status.is_success() {
            let bytes = streaming.all(self).await?;
            let err: ErrorBody = serde_json::from_slice(&bytes).unwrap_or_else(|_| ErrorBody {
                code: "unknown".into(),
                message: String::from_utf8_lossy(&bytes).into_owned(),
            });
            return Err(ClientError::Api {
                status,
                code: err.code,
                message: err.message,
            });
        }
        Ok(streaming)
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        let (ct, bytes) = match body {
            Some(b) => (
                Some("application/json"),
                Bytes::from(
                    serde_json::to_vec(b)
                        .map_err(|e| ClientError::Unexpected(format!("encoding: {e}")))?,
                ),
            ),
            None => (None, Bytes::new()),
        };
        let bytes = self.send(method, path, ct, bytes).await?.all(self).await?;
        let bytes = if bytes.is_empty() {
            &b"null"[..]
        } else {
            &bytes[..]
        };
        serde_json::from_slice(bytes).map_err(|e| {
            ClientError::Unexpected(format!("{path}: {e}: {}", String::from_utf8_lossy(bytes)))
        })
    }

    /// `GET /healthz`.
    pub async fn healthz(&self) -> Result<(), ClientError> {
        self.call::<serde_json::Value>(Method::GET, "/healthz", None::<&()>)
            .await
            .map(drop)
    }

    /// `GET /v1/info`.
    pub async fn info(&self) -> Result<Info, ClientError> {
        self.call(Method::GET, "/v1/info", None::<&()>).await
    }

    /// `GET /metrics`, as text.
    pub async fn metrics(&self) -> Result<String, ClientError> {
        let bytes = self
            .send(Method::GET, "/metrics", None, Bytes::new())
            .await?
            .all(self)
            .await?;
        String::from_utf8(bytes).map_err(|e| ClientError::Unexpected(e.to_string()))
    }

    /// `POST /v1/templates`.
    pub async fn build_template(&self, req: &BuildTemplate) -> Result<Template, ClientError> {
        self.call(Method::POST, "/v1/templates", Some(req)).await
    }

    /// `GET /v1/templates`.
    pub async fn templates(&self) -> Result<Vec<Template>, ClientError> {
        self.call(Method::GET, "/v1/templates", None::<&()>).await
    }

    /// `DELETE /v1/templates/{name}`.
    pub async fn delete_template(&self, name: &str) -> Result<Template, ClientError> {
        self.call(
            Method::DELETE,
            &format!("/v1/templates/{}", enc(name)),
            None::<&()>,
        )
        .await
    }

    /// `PUT /v1/pools/{template}`.
    pub async fn set_pool(&self, template: &str, req: &SetPool) -> Result<PoolStatus, ClientError> {
        self.call(
            Method::PUT,
            &format!("/v1/pools/{}", enc(template)),
            Some(req),
        )
        .await
    }

    /// `GET /v1/pools`.
    pub async fn pools(&self) -> Result<Vec<PoolStatus>, ClientError> {
        self.call(Method::GET, "/v1/pools", None::<&()>).await
    }

    /// `GET /v1/pools/{template}`.
    pub async fn pool(&self, template: &str) -> Result<PoolStatus, ClientError> {
        self.call(
            Method::GET,
            &format!("/v1/pools/{}", enc(template)),
            None::<&()>,
        )
        .await
    }

    /// `DELETE /v1/pools/{template}`.
    pub async fn delete_pool(&self, template: &str) -> Result<PoolSpec, ClientError> {
        self.call(
            Method::DELETE,
            &format!("/v1/pools/{}", enc(template)),
            None::<&()>,
        )
        .await
    }

    /// `POST /v1/sandboxes`.
    pub async fn create_sandbox(&self, req: &CreateSandbox) -> Result<Sandbox, ClientError> {
        self.call(Method::POST, "/v1/sandboxes", Some(req)).await
    }

    /// `GET /v1/sandboxes?<query>` (the query already encoded, without `?`).
    pub async fn sandboxes(&self, query: &str) -> Result<SandboxPage, ClientError> {
        let path = if query.is_empty() {
            "/v1/sandboxes".to_string()
        } else {
            format!("/v1/sandboxes?{query}")
        };
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// `GET /v1/sandboxes/{id}`.
    pub async fn sandbox(&self, id: &str) -> Result<Sandbox, ClientError> {
        self.call(
            Method::GET,
            &format!("/v1/sandboxes/{}", enc(id)),
            None::<&()>,
        )
        .await
    }

    /// `DELETE /v1/sandboxes/{id}`.
    pub async fn kill(&self, id: &str) -> Result<Sandbox, ClientError> {
        self.call(
            Method::DELETE,
            &format!("/v1/sandboxes/{}", enc(id)),
            None::<&()>,
        )
        .await
    }

    /// `POST /v1/sandboxes/{id}/pause` or `/resume`.
    pub async fn pause(&self, id: &str, pause: bool) -> Result<Sandbox, ClientError> {
        let what = if pause { "pause" } else { "resume" };
        self.call(
            Method::POST,
            &format!("/v1/sandboxes/{}/{what}", enc(id)),
            None::<&()>,
        )
        .await
    }

    /// `POST /v1/sandboxes/{id}/timeout`.
    pub async fn set_timeout(&self, id: &str, secs: u64) -> Result<Sandbox, ClientError> {
        self.call(
            Method::POST,
            &format!("/v1/sandboxes/{}/timeout", enc(id)),
            Some(&SetTimeout { timeout_secs: secs }),
        )
        .await
    }

    /// `POST /v1/sandboxes/{id}/pause?mode=disk`: snapshot it to disk and free its VM.
    pub async fn pause_to_disk(&self, id: &str) -> Result<Sandbox, ClientError> {
        self.call(
            Method::POST,
            &format!("/v1/sandboxes/{}/pause?mode=disk", enc(id)),
            None::<&()>,
        )
        .await
    }

    /// `PUT /v1/sandboxes/{id}/network`: a new egress policy.
    pub async fn set_network(
        &self,
        id: &str,
        egress: &ember_core::EgressPolicy,
    ) -> Result<Sandbox, ClientError> {
        self.call(
            Method::PUT,
            &format!("/v1/sandboxes/{}/network", enc(id)),
            Some(egress),
        )
        .await
    }

    /// `POST /v1/sandboxes/{id}/ports`: exposes a guest port on the host.
    pub async fn expose_port(&self, id: &str, guest_port: u16) -> Result<Sandbox, ClientError> {
        self.call(
            Method::POST,
            &format!("/v1/sandboxes/{}/ports", enc(id)),
            Some(&crate::engine::network::ExposePort { guest_port }),
        )
        .await
    }

    /// `POST /v1/sandboxes/{id}/exec`: calls `on_event` for each event as it arrives and
    /// returns the last one (`exit`, or `error`).
    pub async fn exec(
        &self,
        id: &str,
        req: &ExecRequest,
        mut on_event: impl FnMut(&ExecEvent),
    ) -> Result<ExecEvent, ClientError> {
        let body = serde_json::to_vec(req)
            .map_err(|e| ClientError::Unexpected(format!("encoding: {e}")))?;
        let mut s = self
            .send(
                Method::POST,
                &format!("/v1/sandboxes/{}/exec", enc(id)),
                Some("application/json"),
                Bytes::from(body),
            )
            .await?;
        let mut last = None;
        while let Some(line) = s.next_line(self).await? {
            if line.is_empty() {
                continue;
            }
            let ev: ExecEvent = serde_json::from_slice(&line).map_err(|e| {
                ClientError::Unexpected(format!(
                    "an exec event: {e}: {}",
                    String::from_utf8_lossy(&line)
                ))
            })?;
            on_event(&ev);
            last = Some(ev);
        }
        match last {
            Some(ev @ (ExecEvent::Exit { .. } | ExecEvent::Error { .. })) => Ok(ev),
            _ => Err(ClientError::Unexpected(
                "the exec answer ended without an exit event".into(),
            )),
        }
    }

    /// `PUT /v1/sandboxes/{id}/files?path=`.
    pub async fn put_file(
        &self,
        id: &str,
        path: &str,
        mode: Option<u32>,
        data: Vec<u8>,
    ) -> Result<(), ClientError> {
        let mut q = vec![("path", path.to_string())];
        if let Some(m) = mode {
            q.push(("mode", format!("{m:o}")));
        }
        let q =
            serde_urlencoded::to_string(&q).map_err(|e| ClientError::Unexpected(e.to_string()))?;
        self.send(
            Method::PUT,
            &format!("/v1/sandboxes/{}/files?{q}", enc(id)),
            Some("application/octet-stream"),
            Bytes::from(data),
        )
        .await?
        .all(self)
        .await
        .map(drop)
    }

    /// `GET /v1/sandboxes/{id}/files?path=`.
    pub async fn get_file(&self, id: &str, path: &str) -> Result<Vec<u8>, ClientError> {
        let q = serde_urlencoded::to_string([("path", path)])
            .map_err(|e| ClientError::Unexpected(e.to_string()))?;
        self.send(
            Method::GET,
            &format!("/v1/sandboxes/{}/files?{q}", enc(id)),
            None,
            Bytes::new(),
        )
        .await?
        .all(self)
        .await
    }

    /// `GET /v1/vms`.
    pub async fn vms(&self) -> Result<Vec<VmView>, ClientError> {
        self.call(Method::GET, "/v1/vms", None::<&()>).await
    }

    /// `GET /v1/snapshots`.
    pub async fn snapshots(&self) -> Result<Vec<SnapshotRef>, ClientError> {
        self.call(Method::GET, "/v1/snapshots", None::<&()>).await
    }
}

/// Escapes one path segment.
fn enc(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Streaming {
    /// The next chunk of the body, or `None` at its end (the connection then goes back to the
    /// client).
    async fn chunk(&mut self, client: &Client) -> Result<Option<Bytes>, ClientError> {
        loop {
            match self.body.frame().await {
                None => {
                    if let Some(c) = self.conn.take() {
                        client.keep(c);
                    }
                    return Ok(None);
                }
                Some(Err(source)) => {
                    return Err(ClientError::Http {
                        endpoint: client.endpoint.to_string(),
                        source,
                    });
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        return Ok(Some(data));
                    }
                }
            }
        }
    }

    /// The whole body.
    async fn all(&mut self, client: &Client) -> Result<Vec<u8>, ClientError> {
        let mut out = std::mem::take(&mut self.buf);
        while let Some(c) = self.chunk(client).await? {
            out.extend_from_slice(&c);
        }
        Ok(out)
    }

    /// The next `\n`-terminated line (without it), or the rest at the end.
    async fn next_line(&mut self, client: &Client) -> Result<Option<Vec<u8>>, ClientError> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=i).collect();
                line.pop();
                return Ok(Some(line));
            }
            match self.chunk(client).await? {
                Some(c) => self.buf.extend_from_slice(&c),
                None if self.buf.is_empty() => return Ok(None),
                None => return Ok(Some(std::mem::take(&mut self.buf))),
            }
        }
    }
}
