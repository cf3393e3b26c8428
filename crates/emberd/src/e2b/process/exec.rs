//! `Start` for an agent without background processes (the probe guest answers ProcessStart
//! with Unsupported): the command runs to its end through the one-shot Exec and its whole
//! stream (`start{pid}`, `data` for stdout and stderr, `end`) is answered at once. Such a
//! process cannot be listed, connected to, signalled or given input; stdin and PTYs are refused.

use std::sync::Arc;

use axum::response::Response;
use base64::Engine as _;
use serde_json::json;

use super::agents::ProcessAgents;
use super::stream::{StartSpec, end_event};
use crate::api::extract::blocking;
use crate::e2b::connect::{self, Code, RpcError};
use crate::engine::guest::{ExecRequest, MAX_EXEC_TIMEOUT_MS};

/// Runs `spec` in `sandbox` with Exec; `pid` is the one its start event gives.
pub async fn run(
    agents: Arc<dyn ProcessAgents>,
    sandbox: &str,
    spec: StartSpec,
    command_env: std::collections::BTreeMap<String, String>,
    pid: u32,
) -> Response {
    let refuse = |what: &str| {
        let e = RpcError::new(
            Code::Unimplemented,
            format!("{what} need an agent with background processes (this sandbox's has none)"),
        );
        connect::stream(&[], Some(&e))
    };
    if spec.pty.is_some() {
        return refuse("PTYs");
    }
    if spec.stdin {
        return refuse("stdin and input");
    }
    let timeout_ms = (spec.timeout_ms > 0).then(|| spec.timeout_ms.min(MAX_EXEC_TIMEOUT_MS));
    let exec = ExecRequest {
        argv: spec.argv,
        env: command_env,
        cwd: (!spec.cwd.is_empty()).then_some(spec.cwd),
        user: (!spec.user.is_empty()).then_some(spec.user),
        stdin: None,
        stdin_base64: None,
        timeout_ms,
    };
    let id = sandbox.to_string();
    let result = blocking(move || agents.exec(&id, exec)).await;
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
        Err(err) if err.status.as_u16() == 409 => crate::e2b::envd::not_found(sandbox),
        Err(err) => connect::stream(&[started], Some(&RpcError::from(err))),
    }
}
