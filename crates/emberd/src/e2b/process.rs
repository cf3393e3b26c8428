//! envd's `process.Process` service over ember's agent: `Start` runs the command through the
//! agent's Exec and streams what envd would (`start{pid}`, `data` for stdout and stderr, `end`
//! with the exit code, then the end-of-stream envelope); `List`, `Connect` and `SendSignal`
//! answer for the processes emberd tracks — none outlive their Start, since the version-1 agent
//! protocol runs a command to its end in one call, so `List` is empty and a pid is not found
//! once its Start answered. Stdin, PTYs and input streaming are not implemented (the advertised
//! envd version keeps the SDK from gating them in; they answer `unimplemented`).

use std::collections::BTreeMap;

use axum::extract::Request;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{Value, json};

use super::connect::{self, Code, RpcError};
use super::envd::{EnvdState, Target};
use crate::api::extract::blocking;
use crate::engine::guest::{ExecRequest, MAX_EXEC_TIMEOUT_MS};

/// Handles `process.Process/<name>`.
pub async fn call(st: &EnvdState, t: Target, name: &str, req: Request) -> Response {
    match name {
        "Start" => start(st, t, req).await,
        "List" => connect::unary(&json!({"processes": []})),
        "Connect" | "SendSignal" | "SendInput" | "CloseStdin" | "Update" => {
            let body = match axum::body::to_bytes(req.into_body(), connect::MAX_ENVELOPE).await {
                Ok(b) => b,
                Err(e) => {
                    return RpcError::new(Code::InvalidArgument, format!("the body: {e}"))
                        .into_response();
                }
            };
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let pid = v["process"]["pid"].as_u64().unwrap_or(0);
            let err = RpcError::new(Code::NotFound, format!("process with pid {pid} not found"));
            if name == "Connect" {
                connect::stream(&[], Some(&err))
            } else {
                err.into_response()
            }
        }
        "StreamInput" => RpcError::new(
            Code::Unimplemented,
            "streaming input to a process is not supported by this envd",
        )
        .into_response(),
        other => RpcError::new(
            Code::Unimplemented,
            format!("process.Process/{other} is not a method of this envd"),
        )
        .into_response(),
    }
}

fn strings(v: &Value, field: &str) -> Result<Vec<String>, RpcError> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => items
            .iter()
            .map(|i| {
                i.as_str().map(str::to_string).ok_or_else(|| {
                    RpcError::new(Code::InvalidArgument, format!("{field}: not a string list"))
                })
            })
            .collect(),
        _ => Err(RpcError::new(
            Code::InvalidArgument,
            format!("{field}: not a string list"),
        )),
    }
}

fn string_map(v: &Value, field: &str) -> Result<BTreeMap<String, String>, RpcError> {
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

async fn start(st: &EnvdState, t: Target, req: Request) -> Response {
    let streaming = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with(connect::STREAM_CONTENT_TYPE));
    if !streaming {
        return RpcError::new(
            Code::InvalidArgument,
            format!(
                "Start is a server stream: Content-Type must be {}",
                connect::STREAM_CONTENT_TYPE
            ),
        )
        .into_response();
    }
    let timeout_ms = req
        .headers()
        .get("connect-timeout-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map(|ms| ms.clamp(1, u64::from(MAX_EXEC_TIMEOUT_MS)) as u32);
    let body = match axum::body::to_bytes(req.into_body(), connect::MAX_ENVELOPE + 5).await {
        Ok(b) => b,
        Err(e) => {
            return RpcError::new(Code::InvalidArgument, format!("the body: {e}")).into_response();
        }
    };
    let parsed = connect::envelopes(&body).and_then(|msgs| {
        let m = msgs.into_iter().next().ok_or_else(|| {
            RpcError::new(Code::InvalidArgument, "Start needs one request message")
        })?;
        if !m["pty"].is_null() {
            return Err(RpcError::new(
                Code::Unimplemented,
                "PTYs are not supported by this envd",
            ));
        }
        if m["stdin"].as_bool() == Some(true) {
            return Err(RpcError::new(
                Code::Unimplemented,
                "stdin for a started process is not supported by this envd",
            ));
        }
        let p = &m["process"];
        let cmd = p["cmd"]
            .as_str()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| RpcError::new(Code::InvalidArgument, "process.cmd is required"))?;
        let mut argv = vec![cmd.to_string()];
        argv.extend(strings(&p["args"], "process.args")?);
        let env = string_map(&p["envs"], "process.envs")?;
        let cwd = p["cwd"]
            .as_str()
            .filter(|c| !c.is_empty())
            .map(str::to_string);
        Ok(ExecRequest {
            argv,
            env,
            cwd,
            user: t.user.clone(),
            stdin: None,
            stdin_base64: None,
            timeout_ms,
        })
    });
    let exec = match parsed {
        Ok(e) => e,
        Err(e) => return e.into_response(),
    };
    let pid = st.next_pid();
    let e = std::sync::Arc::clone(&st.app.engine);
    let id = t.id.to_string();
    let result = blocking(move || e.exec(&id, exec)).await;
    let started = json!({"event": {"start": {"pid": pid}}});
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    match result {
        Ok(done) => {
            let mut msgs = vec![started];
            if !done.output.stdout.is_empty() {
                msgs.push(json!({"event": {"data": {"stdout": b64(&done.output.stdout)}}}));
            }
            if !done.output.stderr.is_empty() {
                msgs.push(json!({"event": {"data": {"stderr": b64(&done.output.stderr)}}}));
            }
            msgs.push(json!({"event": {"end": end_event(done.output.exit_code)}}));
            connect::stream(&msgs, None)
        }
        // The program does not exist: what a shell says (exit 127).
        Err(err) if err.status.as_u16() == 404 && err.message.contains("the guest agent") => {
            let msgs = vec![
                started,
                json!({"event": {"data": {"stderr": b64(format!("{}\n", err.message).as_bytes())}}}),
                json!({"event": {"end": end_event(127)}}),
            ];
            connect::stream(&msgs, None)
        }
        // Paused or ended meanwhile: as the proxy answers a sandbox that is gone.
        Err(err) if err.status.as_u16() == 409 => super::envd::not_found(t.id.as_str()),
        Err(err) => connect::stream(&[started], Some(&RpcError::from(err))),
    }
}

/// envd's `end` event for an exit status (negative: killed by signal `-code`).
fn end_event(code: i32) -> Value {
    if code < 0 {
        let sig = code.saturating_neg();
        let status = format!("signal: {}", signal_name(sig));
        return json!({"exitCode": -1, "exited": false, "status": status, "error": status});
    }
    let status = format!("exit status {code}");
    if code == 0 {
        json!({"exited": true, "status": status})
    } else {
        json!({"exitCode": code, "exited": true, "status": status, "error": status})
    }
}

fn signal_name(sig: i32) -> String {
    match sig {
        9 => "killed".into(),
        15 => "terminated".into(),
        2 => "interrupt".into(),
        6 => "aborted".into(),
        11 => "segmentation fault".into(),
        n => format!("signal {n}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn end_events_read_like_envd() {
        assert_eq!(
            super::end_event(0),
            serde_json::json!({"exited": true, "status": "exit status 0"})
        );
        assert_eq!(super::end_event(3)["exitCode"], 3);
        assert_eq!(super::end_event(-9)["status"], "signal: killed");
        assert_eq!(super::end_event(-9)["exited"], false);
    }
}
