//! E2B's envd (the in-sandbox daemon the SDK reaches through `E2B_SANDBOX_URL`), served by
//! emberd for every sandbox on one listener: a request names its sandbox in `E2b-Sandbox-Id`
//! and the guest port in `E2b-Sandbox-Port` (49983 is envd itself). Translated onto ember's
//! agent protocol over vsock:
//!
//! - `GET /health` → 204 while the sandbox runs;
//! - `GET /files?path=` (raw bytes) and `POST /files` (multipart `file` parts, or a raw
//!   `application/octet-stream` body with `?path=`) → GetFile / PutFile;
//! - Connect RPC `process.Process/*` ([`super::process`]) and
//!   `filesystem.Filesystem/*` ([`super::filesystem`]);
//! - any other port is forwarded to that TCP port on the guest's loopback through the agent's
//!   TcpConnect (over vsock for an agent without it) ([`super::proxy`]).
//!
//! A sandbox that is unknown, ended or paused answers as E2B's proxy does: 502
//! `{"message": "The sandbox was not found", ...}` (the SDK raises SandboxNotRunningException).
//! A sandbox with an access token needs it in `X-Access-Token` (RPC), or that header or a valid
//! signature (`/files`); `/health` needs none.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use ember_core::SandboxId;
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::process::{EngineAgents, Processes};
use crate::api::AppState;
use crate::api::extract::{QueryPairs, blocking};
use crate::engine::Live;

/// envd's own port.
pub const ENVD_PORT: u32 = 49983;

/// Largest request body accepted on the envd listener (uploads included), bytes.
pub const MAX_BODY: usize = 64 << 20;

/// What the envd handlers share.
#[derive(Clone)]
pub struct EnvdState {
    /// The daemon's state.
    pub app: AppState,
    /// The `process.Process` service over the sandboxes' agents.
    pub processes: Arc<Processes>,
}

impl EnvdState {
    /// A state over the daemon's.
    pub fn new(app: AppState) -> Self {
        let agents = Arc::new(EngineAgents(Arc::clone(&app.engine)));
        Self {
            app,
            processes: Arc::new(Processes::new(agents)),
        }
    }
}

/// The sandbox a request reaches, resolved from its headers.
pub struct Target {
    /// Its id.
    pub id: SandboxId,
    /// Its live state.
    pub live: Arc<Live>,
    /// The user named by `Authorization: Basic` or `?username=` (none: the default).
    pub user: Option<String>,
}

/// An envd HTTP error: `{"code": <status>, "message": ...}` (what the SDK parses).
pub fn http_error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(json!({"code": status.as_u16(), "message": message.into()})),
    )
        .into_response()
}

/// E2B's proxy answer for a sandbox that does not run.
pub fn not_found(id: &str) -> Response {
    (
        StatusCode::BAD_GATEWAY,
        axum::Json(json!({
            "sandboxId": id,
            "message": "The sandbox was not found",
            "code": 502,
        })),
    )
        .into_response()
}

/// The envd router: everything goes through [`dispatch`].
pub fn router(state: EnvdState) -> axum::Router {
    axum::Router::new()
        .fallback(dispatch)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

fn header<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// The user of `Authorization: Basic base64(user:)`.
fn basic_user(req: &Request) -> Option<String> {
    let v = header(req, "authorization")?.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(v.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let user = text.split(':').next().unwrap_or("").to_string();
    (!user.is_empty()).then_some(user)
}

async fn dispatch(State(st): State<EnvdState>, req: Request) -> Response {
    let Some(id) = header(&req, "e2b-sandbox-id").map(str::to_string) else {
        return http_error(
            StatusCode::BAD_REQUEST,
            "the E2b-Sandbox-Id header is required (set E2B_SANDBOX_URL to this listener)",
        );
    };
    let port = match header(&req, "e2b-sandbox-port") {
        None => ENVD_PORT,
        Some(p) => match p.parse::<u32>() {
            Ok(p) if p > 0 => p,
            _ => {
                return http_error(
                    StatusCode::BAD_REQUEST,
                    format!("E2b-Sandbox-Port: {p:?} is not a port"),
                );
            }
        },
    };
    let Ok(sid) = SandboxId::new(&id) else {
        return not_found(&id);
    };
    let Some(live) = st.app.engine.live.get(&sid) else {
        return not_found(&id);
    };
    if live.state() != ember_core::SandboxState::Running {
        return not_found(&id);
    }
    if port != ENVD_PORT {
        return super::proxy::forward(&st, &sid, port, req).await;
    }
    // connectrpc joins `{base}/{service}/{method}`: a base URL ending in '/' doubles it.
    let path = format!("/{}", req.uri().path().trim_start_matches('/'));
    let token_ok = match &live.access_token {
        None => true,
        Some(t) => header(&req, "x-access-token").is_some_and(|h| same(h, t)),
    };
    let user = basic_user(&req);
    let target = Target {
        id: sid,
        live,
        user,
    };
    let method = req.method().clone();
    match (method, path.as_str()) {
        (Method::GET, "/health") => StatusCode::NO_CONTENT.into_response(),
        (Method::GET, "/files") => files_get(&st, target, token_ok, req).await,
        (Method::POST, "/files") => files_post(&st, target, token_ok, req).await,
        (Method::POST, p) if p.starts_with("/process.Process/") => {
            if !token_ok {
                return unauthorized();
            }
            let name = p.trim_start_matches("/process.Process/").to_string();
            let sandbox = target.id.to_string();
            st.processes.call(&sandbox, target.user, &name, req).await
        }
        (Method::POST, p) if p.starts_with("/filesystem.Filesystem/") => {
            if !token_ok {
                return unauthorized();
            }
            let name = p.trim_start_matches("/filesystem.Filesystem/").to_string();
            super::filesystem::call(&st, target, &name, req).await
        }
        (m, p) => http_error(StatusCode::NOT_FOUND, format!("no route {m} {p}")),
    }
}

fn unauthorized() -> Response {
    http_error(
        StatusCode::UNAUTHORIZED,
        "the X-Access-Token header is missing or not this sandbox's",
    )
}

fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The user commands run as when the client names none: E2B's default, `user` (images from
/// `ember image build` have that account).
pub const DEFAULT_USER: &str = "user";

/// The home directory of `user` (none: [`DEFAULT_USER`]'s).
pub fn home(user: Option<&str>) -> String {
    match user.unwrap_or(DEFAULT_USER) {
        "root" => "/root".into(),
        u => format!("/home/{u}"),
    }
}

/// `path` made absolute against the user's home.
pub fn absolute(path: &str, user: Option<&str>) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{}/{}", home(user), path)
    }
}

/// Whether `signature` (E2B's `v1_` signed URL) allows `op` on `path`.
fn signature_ok(q: &QueryPairs, path: &str, op: &str, user: Option<&str>, token: &str) -> bool {
    let Ok(Some(sig)) = q.one("signature") else {
        return false;
    };
    let exp = q.one("signature_expiration").ok().flatten();
    if let Some(e) = exp {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if e.parse::<u64>().map_or(true, |e| e < now) {
            return false;
        }
    }
    let mut text = format!("{path}:{op}:{}:{token}", user.unwrap_or(""));
    if let Some(e) = exp {
        text.push(':');
        text.push_str(e);
    }
    let digest = Sha256::digest(text.as_bytes());
    let want = format!(
        "v1_{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
    );
    same(sig, &want)
}

/// An error from the agent, as envd's HTTP routes say it.
fn file_error(e: crate::error::ApiError, path: &str) -> Response {
    match e.status.as_u16() {
        404 => http_error(
            StatusCode::NOT_FOUND,
            format!("path '{path}' does not exist"),
        ),
        409 => http_error(StatusCode::BAD_GATEWAY, e.message),
        s => http_error(
            StatusCode::from_u16(s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            e.message,
        ),
    }
}

async fn files_get(st: &EnvdState, t: Target, token_ok: bool, req: Request) -> Response {
    let q = match QueryPairs::parse(req.uri().query()) {
        Ok(q) => q,
        Err(e) => return http_error(e.status, e.message),
    };
    let user = q
        .one("username")
        .ok()
        .flatten()
        .map(str::to_string)
        .or(t.user);
    let Some(path) = q.one("path").ok().flatten().map(str::to_string) else {
        return http_error(
            StatusCode::BAD_REQUEST,
            "the path query parameter is required",
        );
    };
    let token = t.live.access_token.clone().unwrap_or_default();
    if !token_ok && !signature_ok(&q, &path, "read", user.as_deref(), &token) {
        return unauthorized();
    }
    let full = absolute(&path, user.as_deref());
    let e = std::sync::Arc::clone(&st.app.engine);
    let (id, p) = (t.id.to_string(), full.clone());
    match blocking(move || e.get_file(&id, &p)).await {
        Ok(data) => (
            [(CONTENT_TYPE, "application/octet-stream")],
            Bytes::from(data),
        )
            .into_response(),
        Err(err) => file_error(err, &full),
    }
}

/// One written file as envd lists it.
#[derive(Debug, Serialize)]
struct Written {
    path: String,
    name: String,
    #[serde(rename = "type")]
    kind: &'static str,
}

fn written(path: &str) -> Written {
    Written {
        path: path.to_string(),
        name: path.rsplit('/').next().unwrap_or(path).to_string(),
        kind: "file",
    }
}

async fn files_post(st: &EnvdState, t: Target, token_ok: bool, req: Request) -> Response {
    let q = match QueryPairs::parse(req.uri().query()) {
        Ok(q) => q,
        Err(e) => return http_error(e.status, e.message),
    };
    let user = q
        .one("username")
        .ok()
        .flatten()
        .map(str::to_string)
        .or(t.user.clone());
    let path = q.one("path").ok().flatten().map(str::to_string);
    let token = t.live.access_token.clone().unwrap_or_default();
    if !token_ok
        && !path
            .as_deref()
            .is_some_and(|p| signature_ok(&q, p, "write", user.as_deref(), &token))
    {
        return unauthorized();
    }
    if header(&req, "content-encoding").is_some_and(|e| !e.eq_ignore_ascii_case("identity")) {
        return http_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "compressed uploads are not supported (this envd is version {})",
                super::model::ENVD_VERSION
            ),
        );
    }
    let ct = header(&req, "content-type")
        .unwrap_or("")
        .to_ascii_lowercase();
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    if ct.starts_with("multipart/form-data") {
        let mut mp = match axum::extract::Multipart::from_request(req, &()).await {
            Ok(m) => m,
            Err(e) => return http_error(StatusCode::BAD_REQUEST, format!("the form: {e}")),
        };
        loop {
            let field = match mp.next_field().await {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return http_error(StatusCode::BAD_REQUEST, format!("the form: {e}")),
            };
            if field.name() != Some("file") {
                continue;
            }
            let name = field.file_name().map(str::to_string);
            let data = match field.bytes().await {
                Ok(b) => b.to_vec(),
                Err(e) => {
                    return http_error(StatusCode::BAD_REQUEST, format!("a form part: {e}"));
                }
            };
            let dest = match (&path, name) {
                (Some(p), _) => p.clone(),
                (None, Some(n)) => n,
                (None, None) => {
                    return http_error(
                        StatusCode::BAD_REQUEST,
                        "a file part without a filename needs ?path=",
                    );
                }
            };
            files.push((dest, data));
        }
        if path.is_some() && files.len() > 1 {
            return http_error(
                StatusCode::BAD_REQUEST,
                "?path= names one file, but the form has several",
            );
        }
    } else {
        let Some(p) = path.clone() else {
            return http_error(
                StatusCode::BAD_REQUEST,
                "the path query parameter is required",
            );
        };
        let body = match axum::body::to_bytes(req.into_body(), MAX_BODY).await {
            Ok(b) => b,
            Err(e) => return http_error(StatusCode::PAYLOAD_TOO_LARGE, format!("the body: {e}")),
        };
        files.push((p, body.to_vec()));
    }
    if files.is_empty() {
        return http_error(StatusCode::BAD_REQUEST, "no file in the request");
    }
    let mut out = Vec::new();
    for (dest, data) in files {
        let full = absolute(&dest, user.as_deref());
        let e = std::sync::Arc::clone(&st.app.engine);
        let (id, p) = (t.id.to_string(), full.clone());
        if let Err(err) = blocking(move || e.put_file(&id, &p, 0o644, &data)).await {
            return file_error(err, &full);
        }
        out.push(written(&full));
    }
    axum::Json(out).into_response()
}
