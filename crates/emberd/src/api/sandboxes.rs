//! `/v1/sandboxes`: a tenant's VM — create (warm handoff or restore), list with filters and
//! paging, get, exec (NDJSON events), files in and out, pause/resume, a new time limit, kill.
//!
//! Exec answers `application/x-ndjson`: zero or more `stdout`/`stderr` events, then one `exit`
//! event (or an `error` event if the call failed after output began). A failure before any
//! output is an ordinary error response. With the version-1 agent protocol the guest answers a
//! command once it has finished, so today every event is sent together at the end (in one
//! write, with a length); the event stream is the API's shape for agents that stream.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use ember_core::{Sandbox, SandboxState, TemplateName};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::extract::{ApiJson, QueryPairs, blocking};
use crate::engine::guest::{ExecDone, ExecRequest};
use crate::engine::sandboxes::{CreateSandbox, ListSandboxes, PauseMode, SandboxPage, SetTimeout};
use crate::error::{ApiError, ErrorBody};

/// Largest piece of output one exec event carries, bytes.
pub const EXEC_CHUNK: usize = 64 * 1024;

/// One line of an exec's NDJSON response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ExecEvent {
    /// Bytes the command wrote to standard output.
    Stdout {
        /// The bytes: text, or base64 when `encoding` says so.
        data: String,
        /// `utf8` or `base64`.
        encoding: DataEncoding,
    },
    /// Bytes the command wrote to standard error.
    Stderr {
        /// The bytes: text, or base64 when `encoding` says so.
        data: String,
        /// `utf8` or `base64`.
        encoding: DataEncoding,
    },
    /// The command ended; the last event.
    Exit {
        /// Its exit status (`-N` for death by signal N).
        exit_code: i32,
        /// The agent cut standard output to fit its reply.
        stdout_truncated: bool,
        /// The agent cut standard error to fit its reply.
        stderr_truncated: bool,
        /// From the request to the command's end, µs.
        duration_us: u64,
    },
    /// The call failed after output began; the last event.
    Error {
        /// As in error responses.
        code: String,
        /// What went wrong.
        message: String,
    },
}

/// How an output event's `data` is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DataEncoding {
    /// The bytes are UTF-8 text.
    Utf8,
    /// The bytes are base64 (they are not UTF-8).
    Base64,
}

impl ExecEvent {
    /// The decoded bytes of an output event.
    pub fn bytes(data: &str, encoding: DataEncoding) -> Result<Vec<u8>, base64::DecodeError> {
        match encoding {
            DataEncoding::Utf8 => Ok(data.as_bytes().to_vec()),
            DataEncoding::Base64 => base64::engine::general_purpose::STANDARD.decode(data),
        }
    }
}

fn output_events(bytes: &[u8], stderr: bool, out: &mut Vec<ExecEvent>) {
    for chunk in bytes.chunks(EXEC_CHUNK) {
        let (data, encoding) = match std::str::from_utf8(chunk) {
            Ok(text) => (text.to_string(), DataEncoding::Utf8),
            Err(_) => (
                base64::engine::general_purpose::STANDARD.encode(chunk),
                DataEncoding::Base64,
            ),
        };
        out.push(if stderr {
            ExecEvent::Stderr { data, encoding }
        } else {
            ExecEvent::Stdout { data, encoding }
        });
    }
}

/// The events of a finished command.
pub fn exec_events(done: &ExecDone) -> Vec<ExecEvent> {
    let mut events = Vec::new();
    output_events(&done.output.stdout, false, &mut events);
    output_events(&done.output.stderr, true, &mut events);
    events.push(ExecEvent::Exit {
        exit_code: done.output.exit_code,
        stdout_truncated: done.output.stdout_truncated,
        stderr_truncated: done.output.stderr_truncated,
        duration_us: done.duration.as_micros() as u64,
    });
    events
}

/// Makes a sandbox from a ready template: a warm VM from its pool when one is ready, else a
/// restore of its snapshot (~1 ms). Returns once the sandbox runs.
#[utoipa::path(post, path = "/v1/sandboxes", tag = "sandboxes", request_body = CreateSandbox,
    responses((status = 201, description = "Running", body = Sandbox),
        (status = 400, body = ErrorBody),
        (status = 404, description = "No such template", body = ErrorBody),
        (status = 409, description = "The template is not ready", body = ErrorBody),
        (status = 503, description = "The host runs its sandbox limit", body = ErrorBody)))]
pub async fn create(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<CreateSandbox>,
) -> Result<(StatusCode, Json<Sandbox>), ApiError> {
    let e = s.engine;
    let sb = blocking(move || e.create_sandbox(req)).await?;
    Ok((StatusCode::CREATED, Json(sb)))
}

/// Sandboxes, oldest first, a page at a time; filters combine.
#[utoipa::path(get, path = "/v1/sandboxes", tag = "sandboxes",
    params(
        ("state" = Option<String>, Query, description = "Only these states, comma-separated (creating, running, paused, ended)"),
        ("template" = Option<String>, Query, description = "Only this template's"),
        ("label" = Option<Vec<String>>, Query, description = "Only those with this label, `key=value` (repeat for several)"),
        ("limit" = Option<usize>, Query, description = "Page size, 1 to 1000 (default 100)"),
        ("cursor" = Option<String>, Query, description = "The `next_cursor` of the previous page")),
    responses((status = 200, body = SandboxPage), (status = 400, body = ErrorBody)))]
pub async fn list(State(s): State<AppState>, q: QueryPairs) -> Result<Json<SandboxPage>, ApiError> {
    q.only(&["state", "template", "label", "limit", "cursor"])?;
    let mut states = Vec::new();
    for v in q.all("state") {
        for word in v.split(',').filter(|w| !w.is_empty()) {
            states.push(word.parse::<SandboxState>()?);
        }
    }
    let template = q.one("template")?.map(TemplateName::new).transpose()?;
    let mut labels = Vec::new();
    for l in q.all("label") {
        let (k, v) = l
            .split_once('=')
            .ok_or_else(|| ApiError::invalid(format!("label: {l:?} is not key=value")))?;
        labels.push((k.to_string(), v.to_string()));
    }
    let limit = q
        .one("limit")?
        .map(|l| {
            l.parse::<usize>()
                .map_err(|_| ApiError::invalid(format!("limit: {l:?} is not a number")))
        })
        .transpose()?;
    let cursor = q.one("cursor")?.map(str::to_string);
    let e = s.engine;
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
    Ok(Json(page))
}

/// One sandbox (live or ended).
#[utoipa::path(get, path = "/v1/sandboxes/{id}", tag = "sandboxes",
    params(("id" = String, Path, description = "The sandbox's id")),
    responses((status = 200, body = Sandbox), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Sandbox>, ApiError> {
    let e = s.engine;
    Ok(Json(blocking(move || e.sandbox(&id)).await?))
}

/// Kills a sandbox: it is recorded ended (`killed`) and its VM destroyed. Killing an ended
/// sandbox changes nothing.
#[utoipa::path(delete, path = "/v1/sandboxes/{id}", tag = "sandboxes",
    params(("id" = String, Path, description = "The sandbox's id")),
    responses((status = 200, description = "Ended", body = Sandbox), (status = 404, body = ErrorBody)))]
pub async fn kill(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Sandbox>, ApiError> {
    let e = s.engine;
    Ok(Json(blocking(move || e.kill_sandbox(&id)).await?))
}

/// Runs a command; the answer is NDJSON `ExecEvent`s ending with `exit`.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/exec", tag = "sandboxes", request_body = ExecRequest,
    params(("id" = String, Path, description = "The sandbox's id")),
    responses((status = 200, description = "One ExecEvent per line", body = ExecEvent, content_type = "application/x-ndjson"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "Paused or ended", body = ErrorBody),
        (status = 502, description = "The guest agent failed or did not answer", body = ErrorBody),
        (status = 504, description = "The command's time limit passed", body = ErrorBody)))]
pub async fn exec(
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<ExecRequest>,
) -> Result<Response, ApiError> {
    let e = s.engine;
    let done = blocking(move || e.exec(&id, req)).await?;
    // The agent answered once the command ended: the events go out in one write (with a
    // length), which costs the client and the daemon fewer wake-ups than a chunked stream.
    let mut body = Vec::new();
    for ev in exec_events(&done) {
        serde_json::to_writer(&mut body, &ev)
            .map_err(|e| ApiError::internal(format!("encoding an exec event: {e}")))?;
        body.push(b'\n');
    }
    Ok(([(CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

fn file_path(q: &QueryPairs) -> Result<String, ApiError> {
    q.one("path")?
        .map(str::to_string)
        .ok_or_else(|| ApiError::invalid("query parameter path: missing (?path=/the/file)"))
}

/// Writes a file in the sandbox (created or truncated) from the raw body.
#[utoipa::path(put, path = "/v1/sandboxes/{id}/files", tag = "sandboxes",
    params(("id" = String, Path, description = "The sandbox's id"),
        ("path" = String, Query, description = "The file's path in the guest"),
        ("mode" = Option<String>, Query, description = "Permission bits in octal (default 644)")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 204, description = "Written"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody)))]
pub async fn put_file(
    State(s): State<AppState>,
    Path(id): Path<String>,
    q: QueryPairs,
    body: Body,
) -> Result<StatusCode, ApiError> {
    q.only(&["path", "mode"])?;
    let path = file_path(&q)?;
    let mode = match q.one("mode")? {
        None => 0o644,
        Some(m) => u32::from_str_radix(m, 8)
            .map_err(|_| ApiError::invalid(format!("mode: {m:?} is not an octal number")))?,
    };
    let limit = s.engine.limits.max_file_bytes;
    let data = axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|src| src.is::<http_body_util::LengthLimitError>());
        if too_large {
            ApiError::too_large(format!(
                "the file is larger than the {limit} bytes accepted"
            ))
        } else {
            ApiError::invalid(format!("reading the body: {e}"))
        }
    })?;
    let e = s.engine;
    blocking(move || e.put_file(&id, &path, mode, &data)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Reads a file from the sandbox.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/files", tag = "sandboxes",
    params(("id" = String, Path, description = "The sandbox's id"),
        ("path" = String, Query, description = "The file's path in the guest")),
    responses((status = 200, description = "The file's bytes", body = Vec<u8>, content_type = "application/octet-stream"),
        (status = 404, description = "No such sandbox or file", body = ErrorBody)))]
pub async fn get_file(
    State(s): State<AppState>,
    Path(id): Path<String>,
    q: QueryPairs,
) -> Result<Response, ApiError> {
    q.only(&["path"])?;
    let path = file_path(&q)?;
    let e = s.engine;
    let data = blocking(move || e.get_file(&id, &path)).await?;
    Ok(([(CONTENT_TYPE, "application/octet-stream")], data).into_response())
}

/// Pauses a sandbox: in memory (`mode=memory`, the default: its vCPUs stop, memory stays) or
/// to disk (`mode=disk`: its VM is snapshotted into the state directory and destroyed; it then
/// costs no memory or CPU, has no time limit, and survives a daemon restart). Exec is refused
/// until it resumes. Pausing a paused sandbox changes nothing.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/pause", tag = "sandboxes",
    params(("id" = String, Path, description = "The sandbox's id"),
        ("mode" = Option<PauseMode>, Query, description = "memory (default) or disk")),
    responses((status = 200, body = Sandbox), (status = 404, body = ErrorBody),
        (status = 409, description = "Ended", body = ErrorBody)))]
pub async fn pause(
    State(s): State<AppState>,
    Path(id): Path<String>,
    q: QueryPairs,
) -> Result<Json<Sandbox>, ApiError> {
    q.only(&["mode"])?;
    let mode = match q.one("mode")? {
        None | Some("memory") => PauseMode::Memory,
        Some("disk") => PauseMode::Disk,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "mode: {other:?} is not a pause mode (memory or disk)"
            )));
        }
    };
    let e = s.engine;
    Ok(Json(
        blocking(move || match mode {
            PauseMode::Memory => e.pause_sandbox(&id),
            PauseMode::Disk => e.pause_to_disk(&id),
        })
        .await?,
    ))
}

/// Resumes a paused sandbox (from memory, or restored from disk). Resuming a running sandbox
/// changes nothing.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/resume", tag = "sandboxes",
    params(("id" = String, Path, description = "The sandbox's id")),
    responses((status = 200, body = Sandbox), (status = 404, body = ErrorBody),
        (status = 409, description = "Ended", body = ErrorBody)))]
pub async fn resume(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Sandbox>, ApiError> {
    let e = s.engine;
    Ok(Json(
        blocking(move || e.resume_sandbox_with(&id, None)).await?,
    ))
}

/// Sets a new time limit, counted from now.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/timeout", tag = "sandboxes", request_body = SetTimeout,
    params(("id" = String, Path, description = "The sandbox's id")),
    responses((status = 200, body = Sandbox), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, description = "Ended", body = ErrorBody)))]
pub async fn set_timeout(
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<SetTimeout>,
) -> Result<Json<Sandbox>, ApiError> {
    let e = s.engine;
    Ok(Json(blocking(move || e.set_timeout(&id, req)).await?))
}

/// Replaces a sandbox's egress policy: what its guest may reach (its next connections see it;
/// established ones continue).
#[utoipa::path(put, path = "/v1/sandboxes/{id}/network", tag = "sandboxes",
    request_body = ember_core::EgressPolicy,
    params(("id" = String, Path, description = "The sandbox's id")),
    responses((status = 200, body = Sandbox), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, description = "Ended", body = ErrorBody)))]
pub async fn set_network(
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<ember_core::EgressPolicy>,
) -> Result<Json<Sandbox>, ApiError> {
    let e = s.engine;
    Ok(Json(blocking(move || e.set_egress(&id, req)).await?))
}

/// Exposes a guest TCP port on the host's loopback (the sandbox's `network.ports` says where);
/// it closes when the sandbox ends.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/ports", tag = "sandboxes",
    request_body = crate::engine::network::ExposePort,
    params(("id" = String, Path, description = "The sandbox's id")),
    responses((status = 200, body = Sandbox), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, description = "Ended", body = ErrorBody)))]
pub async fn expose_port(
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<crate::engine::network::ExposePort>,
) -> Result<Json<Sandbox>, ApiError> {
    let e = s.engine;
    Ok(Json(blocking(move || e.expose_port(&id, req)).await?))
}
