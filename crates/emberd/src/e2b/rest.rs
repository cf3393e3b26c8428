//! E2B's REST API (what the SDK reaches through `E2B_API_URL`) over the engine: create (v1 and
//! v2, with `Idempotency-Key`), list (v1 and v2: metadata and state filters, `limit`,
//! `nextToken` / `X-Next-Token`), get, kill, timeout, pause (to disk), resume and connect
//! (v1 and v2), metrics. Every request needs an `X-API-KEY` from `--e2b-api-key-file`; every
//! error is `{"code": <status>, "message": "..."}` as the SDK parses it.
//!
//! ember's terms: `templateID` is an ember template, `metadata` its labels, `envVars` its env,
//! `autoPause` its `on_timeout: pause`, E2B's pause is ember's pause to disk.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ember_core::{OnTimeout, Sandbox, SandboxState, TemplateName};

use super::model::{
    self, Connect, E2bErrorBody, E2bSandbox, Metric, NewSandbox, SandboxDetail, SetTimeout,
};
use super::time::rfc3339;
use crate::api::AppState;
use crate::api::extract::{QueryPairs, blocking, parse_json};
use crate::engine::sandboxes::{CreateSandbox, ListSandboxes, SandboxOptions};
use crate::error::ApiError;

/// How long an `Idempotency-Key` remembers its sandbox.
const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(600);

/// What the REST handlers share.
#[derive(Clone)]
pub struct RestState {
    /// The daemon's state.
    pub app: AppState,
    /// Accepted API keys.
    pub keys: Arc<Vec<String>>,
    /// Recent `Idempotency-Key`s and the sandbox each created.
    idempotency: Arc<Mutex<HashMap<String, (String, Instant)>>>,
}

impl RestState {
    /// A state accepting `keys`.
    pub fn new(app: AppState, keys: Vec<String>) -> Self {
        Self {
            app,
            keys: Arc::new(keys),
            idempotency: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

/// A failed REST call, in E2B's shape.
#[derive(Debug)]
pub struct E2bError {
    status: StatusCode,
    message: String,
}

impl E2bError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    fn not_found(id: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, format!("sandbox {id} not found"))
    }
}

impl From<ApiError> for E2bError {
    fn from(e: ApiError) -> Self {
        Self::new(e.status, e.message)
    }
}

impl IntoResponse for E2bError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = %self.status, message = %self.message, "E2B request failed");
        }
        (
            self.status,
            Json(E2bErrorBody {
                code: self.status.as_u16(),
                message: self.message,
            }),
        )
            .into_response()
    }
}

/// The REST router.
pub fn router(state: RestState) -> axum::Router {
    axum::Router::new()
        .route("/sandboxes", post(create_v1).get(list_v1))
        .route("/v2/sandboxes", post(create_v2).get(list_v2))
        .route("/sandboxes/{id}", get(get_one).delete(kill))
        .route("/sandboxes/{id}/timeout", post(set_timeout))
        .route("/sandboxes/{id}/pause", post(pause))
        .route("/sandboxes/{id}/resume", post(resume_v1))
        .route("/sandboxes/{id}/connect", post(connect))
        .route("/v2/sandboxes/{id}/connect", post(connect))
        .route("/sandboxes/{id}/metrics", get(metrics))
        .fallback(|req: Request| async move {
            E2bError::new(
                StatusCode::NOT_FOUND,
                format!("no route {} {}", req.method(), req.uri().path()),
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(
            crate::api::MAX_JSON_BODY,
        ))
        .layer(axum::middleware::from_fn_with_state(state.clone(), api_key))
        .layer(axum::middleware::from_fn_with_state(
            state.app.clone(),
            crate::api::observe::record,
        ))
        .with_state(state)
}

/// Refuses (401) a request without a valid `X-API-KEY`.
async fn api_key(State(st): State<RestState>, req: Request, next: Next) -> Response {
    let given = req.headers().get("x-api-key").and_then(|v| v.to_str().ok());
    match given {
        Some(k) if st.keys.iter().any(|key| same(key.as_bytes(), k.as_bytes())) => {
            next.run(req).await
        }
        Some(_) => {
            E2bError::new(StatusCode::UNAUTHORIZED, "the API key is not valid").into_response()
        }
        None => E2bError::new(
            StatusCode::UNAUTHORIZED,
            "an X-API-KEY header is required (a key from emberd's --e2b-api-key-file)",
        )
        .into_response(),
    }
}

fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn body<T: serde::de::DeserializeOwned + Default>(bytes: &Bytes) -> Result<T, E2bError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    parse_json(bytes).map_err(E2bError::from)
}

/// A fresh envd access token.
fn token() -> String {
    let mut b = [0u8; 16];
    if getrandom::fill(&mut b).is_err() {
        let t = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        b.copy_from_slice(&t.to_le_bytes());
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

async fn create_v1(
    st: State<RestState>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<(StatusCode, Json<E2bSandbox>), E2bError> {
    create(st, headers, bytes).await
}

async fn create_v2(
    st: State<RestState>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<(StatusCode, Json<E2bSandbox>), E2bError> {
    create(st, headers, bytes).await
}

async fn create(
    State(st): State<RestState>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<(StatusCode, Json<E2bSandbox>), E2bError> {
    let req: NewSandbox = parse_json(&bytes)?;
    let bad = |m: &str| E2bError::new(StatusCode::BAD_REQUEST, m);
    for (field, set) in [
        ("mcp", req.mcp.as_ref().is_some_and(|v| !v.is_null())),
        (
            "volumeMounts",
            req.volume_mounts
                .as_ref()
                .is_some_and(|v| !v.is_null() && v.as_array().is_none_or(|a| !a.is_empty())),
        ),
        (
            "network",
            req.network.as_ref().is_some_and(|v| !v.is_null()),
        ),
        ("iam", req.iam.as_ref().is_some_and(|v| !v.is_null())),
        (
            "autoResume",
            req.auto_resume
                .as_ref()
                .is_some_and(|v| v.get("enabled").and_then(|e| e.as_bool()) == Some(true)),
        ),
    ] {
        if set {
            return Err(bad(&format!("{field}: not supported by this emberd")));
        }
    }
    let networked = st.app.engine.nets.is_some();
    if req.allow_internet_access == Some(true) && !networked {
        return Err(bad(
            "allow_internet_access: sandboxes have no network on this emberd (it runs without \
             --sandbox-network); pass false",
        ));
    }
    // E2B's `allow_internet_access: false` is a deny-everything egress policy.
    let egress = match req.allow_internet_access {
        Some(false) if networked => Some(ember_core::EgressPolicy::deny_all()),
        Some(true) => Some(ember_core::EgressPolicy::allow_all()),
        _ => None,
    };
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => {
            let k = v.to_str().unwrap_or("");
            let ok = (1..=255).contains(&k.len())
                && k.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !ok {
                return Err(bad(
                    "Idempotency-Key: 1 to 255 characters of a-z, 0-9 and '-'",
                ));
            }
            Some(k.to_string())
        }
    };
    let template =
        TemplateName::new(&req.template_id).map_err(|e| bad(&format!("templateID: {e}")))?;
    let engine = Arc::clone(&st.app.engine);
    if let Some(k) = &key {
        let known = {
            let mut map = st.idempotency.lock().unwrap_or_else(|p| p.into_inner());
            map.retain(|_, (_, at)| at.elapsed() < IDEMPOTENCY_WINDOW);
            map.get(k).map(|(id, _)| id.clone())
        };
        if let Some(id) = known {
            let e = Arc::clone(&engine);
            let sb = blocking(move || e.sandbox(&id)).await?;
            if sb.state.is_live() {
                return Ok((StatusCode::CREATED, Json(model::sandbox_of(&sb))));
            }
        }
    }
    let create = CreateSandbox {
        template,
        labels: req.metadata.unwrap_or_default(),
        env: req.env_vars.unwrap_or_default(),
        timeout_secs: Some(req.timeout.unwrap_or(300)),
        egress,
    };
    let opts = SandboxOptions {
        on_timeout: if req.auto_pause == Some(true) {
            OnTimeout::Pause
        } else {
            OnTimeout::Kill
        },
        access_token: Some(token()),
    };
    let sb = blocking(move || engine.create_sandbox_with(create, opts)).await?;
    if let Some(k) = key {
        st.idempotency
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(k, (sb.id.to_string(), Instant::now()));
    }
    Ok((StatusCode::CREATED, Json(model::sandbox_of(&sb))))
}

/// Decodes the SDK's `metadata` filter: `urlencode({quote(k): quote(v)})`, escaped once more
/// by the HTTP client (after the query string's own decoding: unescape the whole, split on `&`
/// and `=`, unescape each side).
pub fn metadata_filter(raw: &str) -> Result<Vec<(String, String)>, String> {
    let whole = unescape(raw)?;
    let mut out = Vec::new();
    for pair in whole.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("metadata: {pair:?} is not key=value"))?;
        out.push((unescape(k)?, unescape(v)?));
    }
    Ok(out)
}

/// Percent-decoding as Go's `url.QueryUnescape` (`+` is a space).
fn unescape(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("metadata: bad escape in {s:?}"))?;
                out.push(hex);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| format!("metadata: {s:?} is not UTF-8"))
}

async fn list_v1(st: State<RestState>, q: QueryPairs) -> Result<Response, E2bError> {
    list(st, q).await
}

async fn list_v2(st: State<RestState>, q: QueryPairs) -> Result<Response, E2bError> {
    list(st, q).await
}

async fn list(State(st): State<RestState>, q: QueryPairs) -> Result<Response, E2bError> {
    let bad = |m: String| E2bError::new(StatusCode::BAD_REQUEST, m);
    q.only(&[
        "metadata",
        "state",
        "limit",
        "nextToken",
        "order",
        "template",
        "startedAfter",
    ])?;
    let mut states = Vec::new();
    for v in q.all("state") {
        for w in v.split(',').filter(|w| !w.is_empty()) {
            states.push(match w {
                "running" => SandboxState::Running,
                "paused" => SandboxState::Paused,
                other => return Err(bad(format!("state: {other:?} is not running or paused"))),
            });
        }
    }
    if states.is_empty() {
        states = vec![SandboxState::Running, SandboxState::Paused];
    }
    let mut labels = Vec::new();
    for raw in q.all("metadata") {
        labels.extend(metadata_filter(raw).map_err(bad)?);
    }
    if let Some(o) = q.one("order")?
        && o != "asc"
    {
        return Err(bad(format!("order: {o:?} is not supported (asc)")));
    }
    if q.one("startedAfter")?.is_some() {
        return Err(bad("startedAfter: not supported by this emberd".into()));
    }
    let template = q
        .one("template")?
        .map(TemplateName::new)
        .transpose()
        .map_err(|e| bad(format!("template: {e}")))?;
    let limit = q
        .one("limit")?
        .map(|l| {
            l.parse::<usize>()
                .map_err(|_| bad(format!("limit: {l:?} is not a number")))
        })
        .transpose()?;
    let cursor = q.one("nextToken")?.map(str::to_string);
    let e = Arc::clone(&st.app.engine);
    let page = blocking(move || {
        e.sandboxes(ListSandboxes {
            states,
            template,
            labels,
            limit,
            cursor,
        })
    })
    .await?;
    let items: Vec<SandboxDetail> = page.items.iter().map(model::detail_of).collect();
    let mut resp = Json(items).into_response();
    if let Some(next) = page.next_cursor
        && let Ok(v) = HeaderValue::from_str(&next)
    {
        resp.headers_mut().insert("x-next-token", v);
    }
    Ok(resp)
}

/// The live sandbox `id`, or 404 (unknown, or ended: E2B forgets killed sandboxes).
async fn live(st: &RestState, id: &str) -> Result<Sandbox, E2bError> {
    let e = Arc::clone(&st.app.engine);
    let key = id.to_string();
    let sb = blocking(move || e.sandbox(&key))
        .await
        .map_err(|_| E2bError::not_found(id))?;
    if sb.state.is_live() {
        Ok(sb)
    } else {
        Err(E2bError::not_found(id))
    }
}

async fn get_one(
    State(st): State<RestState>,
    Path(id): Path<String>,
) -> Result<Json<SandboxDetail>, E2bError> {
    Ok(Json(model::detail_of(&live(&st, &id).await?)))
}

async fn kill(State(st): State<RestState>, Path(id): Path<String>) -> Result<StatusCode, E2bError> {
    live(&st, &id).await?;
    let e = Arc::clone(&st.app.engine);
    blocking(move || e.kill_sandbox(&id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn set_timeout(
    State(st): State<RestState>,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<StatusCode, E2bError> {
    let req: SetTimeout = parse_json(&bytes)?;
    live(&st, &id).await?;
    let e = Arc::clone(&st.app.engine);
    blocking(move || {
        e.set_timeout(
            &id,
            crate::engine::sandboxes::SetTimeout {
                timeout_secs: req.timeout,
            },
        )
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn pause(
    State(st): State<RestState>,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<StatusCode, E2bError> {
    let req: serde_json::Value = body::<Option<serde_json::Value>>(&bytes)?.unwrap_or_default();
    if req.get("memory").and_then(serde_json::Value::as_bool) == Some(false) {
        return Err(E2bError::new(
            StatusCode::BAD_REQUEST,
            "memory: false (a file-system-only pause) is not supported; emberd keeps memory",
        ));
    }
    let sb = live(&st, &id).await?;
    if sb.saved.is_some() {
        return Err(E2bError::new(
            StatusCode::CONFLICT,
            format!("sandbox {id} is already paused"),
        ));
    }
    let e = Arc::clone(&st.app.engine);
    blocking(move || e.pause_to_disk(&id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn resume_v1(
    State(st): State<RestState>,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<(StatusCode, Json<E2bSandbox>), E2bError> {
    let req: Connect = body(&bytes)?;
    let sb = live(&st, &id).await?;
    if sb.state == SandboxState::Running {
        return Err(E2bError::new(
            StatusCode::CONFLICT,
            format!("sandbox {id} is already running"),
        ));
    }
    resume(&st, id, req).await
}

async fn connect(
    State(st): State<RestState>,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<(StatusCode, Json<E2bSandbox>), E2bError> {
    let req: Connect = body(&bytes)?;
    let sb = live(&st, &id).await?;
    if sb.state == SandboxState::Running {
        let e = Arc::clone(&st.app.engine);
        let sb = match req.timeout {
            Some(t) => {
                blocking(move || {
                    e.set_timeout(
                        &id,
                        crate::engine::sandboxes::SetTimeout { timeout_secs: t },
                    )
                })
                .await?
            }
            None => sb,
        };
        return Ok((StatusCode::OK, Json(model::sandbox_of(&sb))));
    }
    resume(&st, id, req).await
}

async fn resume(
    st: &RestState,
    id: String,
    req: Connect,
) -> Result<(StatusCode, Json<E2bSandbox>), E2bError> {
    if req.memory == Some(false) {
        return Err(E2bError::new(
            StatusCode::BAD_REQUEST,
            "memory: false (reboot instead of resume) is not supported",
        ));
    }
    let e = Arc::clone(&st.app.engine);
    let sb = blocking(move || e.resume_sandbox_with(&id, req.timeout)).await?;
    Ok((StatusCode::CREATED, Json(model::sandbox_of(&sb))))
}

/// `/proc/<pid>/stat`'s CPU time (s) and the process's age (s).
fn cpu_and_age(pid: u32) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let ticks: f64 = rest.get(11)?.parse::<f64>().ok()? + rest.get(12)?.parse::<f64>().ok()?;
    let start: f64 = rest.get(19)?.parse().ok()?;
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some((ticks / hz, (uptime - start / hz).max(0.001)))
}

async fn metrics(
    State(st): State<RestState>,
    Path(id): Path<String>,
) -> Result<Json<Vec<Metric>>, E2bError> {
    let sb = live(&st, &id).await?;
    if sb.saved.is_some() {
        return Ok(Json(Vec::new()));
    }
    let e = Arc::clone(&st.app.engine);
    let metric = blocking(move || {
        let vm = ember_core::VmId::new(sb.id.as_str())?;
        let pid = e.provider.pid(&vm)?;
        let vcpus = u32::from(sb.stack.vcpu_count());
        let mem_total = u64::from(sb.stack.mem_size_mib()) << 20;
        let (cpu, age) = cpu_and_age(pid).unwrap_or((0.0, 1.0));
        let mem = ember_host::memory::vmm_memory(pid, mem_total >> 10).unwrap_or_default();
        let now = SystemTime::now();
        Ok(Metric {
            timestamp: rfc3339(now),
            timestamp_unix: now
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            cpu_count: vcpus,
            cpu_used_pct: (cpu / (age * f64::from(vcpus)) * 100.0).clamp(0.0, 100.0),
            mem_used: mem.pss_kib << 10,
            mem_total,
            mem_cache: 0,
            disk_used: 0,
            disk_total: 0,
        })
    })
    .await?;
    Ok(Json(vec![metric]))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_sdks_metadata_filter_decodes() {
        // {"owner":"alice","k y":"v&1"} after the query string's own decoding.
        let pairs = super::metadata_filter("owner=alice&k%2520y=v%25261").unwrap();
        assert_eq!(
            pairs,
            vec![
                ("owner".to_string(), "alice".to_string()),
                ("k y".to_string(), "v&1".to_string())
            ]
        );
        assert!(super::metadata_filter("novalue").is_err());
        assert!(super::metadata_filter("a=%zz").is_err());
    }
}
