//! Reading envd's process requests (protojson, as the SDK's connectrpc client writes them):
//! bodies of unary and streaming calls, `ProcessConfig`'s string list and map, a
//! `ProcessSelector` (`{pid}` or `{tag}`), a `Signal`, base64 bytes, a PTY size, and the
//! headers a stream reads (`connect-timeout-ms`, `Keepalive-Ping-Interval`).

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::Request;
use axum::http::HeaderMap;
use axum::http::header::CONTENT_TYPE;
use base64::Engine as _;
use serde_json::{Value, json};

use crate::e2b::connect::{self, Code, RpcError};

/// A process as a request names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// By pid (the agent's handle).
    Pid(u32),
    /// By the tag its Start gave.
    Tag(String),
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Selector::Pid(p) => write!(f, "process with pid {p}"),
            Selector::Tag(t) => write!(f, "process with tag {t:?}"),
        }
    }
}

/// The one message of a unary call's JSON body (`{}` when empty).
pub async fn unary_body(req: Request) -> Result<Value, RpcError> {
    let body = axum::body::to_bytes(req.into_body(), connect::MAX_ENVELOPE)
        .await
        .map_err(|e| RpcError::new(Code::InvalidArgument, format!("the body: {e}")))?;
    if body.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(&body)
        .map_err(|e| RpcError::new(Code::InvalidArgument, format!("the request: {e}")))
}

/// The one request message of a server stream (Content-Type `application/connect+json`).
pub async fn stream_body(req: Request, method: &str) -> Result<Value, RpcError> {
    let streaming = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with(connect::STREAM_CONTENT_TYPE));
    if !streaming {
        return Err(RpcError::new(
            Code::InvalidArgument,
            format!(
                "{method} is a server stream: Content-Type must be {}",
                connect::STREAM_CONTENT_TYPE
            ),
        ));
    }
    let body = axum::body::to_bytes(req.into_body(), connect::MAX_ENVELOPE + 5)
        .await
        .map_err(|e| RpcError::new(Code::InvalidArgument, format!("the body: {e}")))?;
    connect::envelopes(&body)?
        .into_iter()
        .next()
        .ok_or_else(|| {
            RpcError::new(
                Code::InvalidArgument,
                format!("{method} needs one request message"),
            )
        })
}

/// The stream's time limit (`connect-timeout-ms`), if any.
pub fn timeout_ms(headers: &HeaderMap) -> Option<u32> {
    headers
        .get("connect-timeout-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .map(|ms| u32::try_from(ms).unwrap_or(u32::MAX))
}

/// How often a stream sends a keepalive event (`Keepalive-Ping-Interval`, seconds, 1 to 3600;
/// default 50 as the SDK asks).
pub fn keepalive(headers: &HeaderMap) -> Duration {
    let secs = headers
        .get("keepalive-ping-interval")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(50)
        .clamp(1, 3600);
    Duration::from_secs(secs)
}

/// A string list (`null`: empty).
pub fn strings(v: &Value, field: &str) -> Result<Vec<String>, RpcError> {
    let bad = || RpcError::new(Code::InvalidArgument, format!("{field}: not a string list"));
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().map(str::to_string).ok_or_else(bad))
            .collect(),
        _ => Err(bad()),
    }
}

/// A string map (`null`: empty).
pub fn string_map(v: &Value, field: &str) -> Result<BTreeMap<String, String>, RpcError> {
    match v {
        Value::Null => Ok(BTreeMap::new()),
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| {
                v.as_str()
                    .map(|s| (k.clone(), s.to_string()))
                    .ok_or_else(|| {
                        RpcError::new(Code::InvalidArgument, format!("{field}.{k}: not a string"))
                    })
            })
            .collect(),
        _ => Err(RpcError::new(
            Code::InvalidArgument,
            format!("{field}: not an object"),
        )),
    }
}

/// A protojson integer: a number or a decimal string.
fn integer(v: &Value) -> Option<u64> {
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

/// The `ProcessSelector` at `v` (a request's `process`).
pub fn selector(v: &Value) -> Result<Selector, RpcError> {
    if let Some(tag) = v["tag"].as_str() {
        return Ok(Selector::Tag(tag.to_string()));
    }
    match v.get("pid") {
        Some(p) => integer(p)
            .and_then(|p| u32::try_from(p).ok())
            .map(Selector::Pid)
            .ok_or_else(|| RpcError::new(Code::InvalidArgument, "process.pid: not a uint32")),
        None => Err(RpcError::new(
            Code::InvalidArgument,
            "process: a pid or a tag is required",
        )),
    }
}

/// A `Signal` (its name or number) as a Linux signal number: SIGTERM or SIGKILL.
pub fn signal(v: &Value) -> Result<u8, RpcError> {
    match v {
        Value::String(s) if s == "SIGNAL_SIGKILL" => Ok(9),
        Value::String(s) if s == "SIGNAL_SIGTERM" => Ok(15),
        other => match integer(other) {
            Some(9) => Ok(9),
            Some(15) => Ok(15),
            // As envd answers any other signal.
            _ => Err(RpcError::new(
                Code::Unimplemented,
                format!("invalid signal: {other}"),
            )),
        },
    }
}

/// Base64 bytes (protojson `bytes`; standard or URL-safe alphabet, padded or not).
pub fn bytes(v: &Value, field: &str) -> Result<Vec<u8>, RpcError> {
    let text = v.as_str().unwrap_or("");
    let engines = [
        &base64::engine::general_purpose::STANDARD,
        &base64::engine::general_purpose::STANDARD_NO_PAD,
        &base64::engine::general_purpose::URL_SAFE,
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ];
    engines
        .iter()
        .find_map(|e| e.decode(text.as_bytes()).ok())
        .ok_or_else(|| RpcError::new(Code::InvalidArgument, format!("{field}: not base64")))
}

/// A `ProcessInput` (`{stdin}` or `{pty}`): its bytes.
pub fn input(v: &Value) -> Result<Vec<u8>, RpcError> {
    if !v["stdin"].is_null() {
        bytes(&v["stdin"], "input.stdin")
    } else if !v["pty"].is_null() {
        bytes(&v["pty"], "input.pty")
    } else {
        Ok(Vec::new())
    }
}

/// A `PTY`'s size as (rows, cols), each at least 1; `None` for no PTY.
pub fn pty_size(v: &Value) -> Result<Option<(u16, u16)>, RpcError> {
    if v.is_null() {
        return Ok(None);
    }
    let dim = |name: &str| {
        integer(&v["size"][name])
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                RpcError::new(
                    Code::InvalidArgument,
                    format!("pty.size.{name}: 1 to 65535 is required"),
                )
            })
    };
    Ok(Some((dim("rows")?, dim("cols")?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_signals_and_sizes_read_like_protojson() {
        assert_eq!(selector(&json!({"pid": 7})).unwrap(), Selector::Pid(7));
        assert_eq!(selector(&json!({"pid": "7"})).unwrap(), Selector::Pid(7));
        assert_eq!(
            selector(&json!({"tag": "web"})).unwrap(),
            Selector::Tag("web".into())
        );
        assert!(selector(&json!({})).is_err());
        assert!(selector(&json!({"pid": 1u64 << 40})).is_err());
        assert_eq!(signal(&json!("SIGNAL_SIGKILL")).unwrap(), 9);
        assert_eq!(signal(&json!(15)).unwrap(), 15);
        assert!(signal(&json!("SIGNAL_UNSPECIFIED")).is_err());
        assert_eq!(input(&json!({"stdin": "aGk="})).unwrap(), b"hi");
        assert_eq!(input(&json!({"pty": "aGk"})).unwrap(), b"hi");
        assert_eq!(
            pty_size(&json!({"size": {"rows": 24, "cols": 80}})).unwrap(),
            Some((24, 80))
        );
        assert!(pty_size(&json!({"size": {"rows": 0, "cols": 80}})).is_err());
        assert_eq!(pty_size(&Value::Null).unwrap(), None);
    }
}
