//! The server streams of `Start` and `Connect`: a thread per stream holds its own agent
//! connection, opens the agent's process stream on it (ProcessStart attached, or ProcessAttach),
//! says how that went on a oneshot ([`Opened`]), then turns each agent event into envd's
//! `ProcessEvent` envelopes as it arrives (`data` with `stdout`/`stderr`, or `pty` for a
//! terminal; `end`; `keepalive` when nothing was sent for the asked interval) on a channel the
//! HTTP response body reads. A client that goes away drops the thread's stream and connection;
//! the process runs on (as envd's do).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use base64::Engine as _;
use ember_agent_proto::{ClientError, OutputStream, ProcessEvent, ProcessStart, ProcessStream};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use super::agents::ProcessAgents;
use crate::e2b::connect::{self, RpcError};
use crate::error::ApiError;

/// How often a stream's thread looks whether its client is still there.
const POLL: Duration = Duration::from_millis(500);

/// Envelopes a stream buffers before its thread waits for the client.
pub const CHANNEL: usize = 64;

/// How opening a stream went.
#[derive(Debug)]
pub enum Opened {
    /// The agent streams the process (`start{pid}` is queued): its handle, and whether it has
    /// a terminal.
    Streaming {
        /// The agent's handle (envd's pid).
        handle: u64,
        /// Runs on a pseudo-terminal.
        pty: bool,
    },
    /// The agent has no background processes (the probe guest).
    Unsupported,
    /// It failed.
    Failed(ApiError),
}

/// A command to start, owning what ProcessStart borrows.
#[derive(Debug, Clone)]
pub struct StartSpec {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// `KEY=VALUE` entries.
    pub env: Vec<String>,
    /// Working directory (empty: the agent starts a named user's commands in their home, as
    /// envd does).
    pub cwd: String,
    /// User (empty: E2B's default user, [`DEFAULT_USER`](crate::e2b::envd::DEFAULT_USER); the
    /// one-shot Exec leaves it to the agent).
    pub user: String,
    /// Keep stdin open for input.
    pub stdin: bool,
    /// Guest-side time limit, ms (0: none).
    pub timeout_ms: u32,
    /// A terminal of (rows, cols).
    pub pty: Option<(u16, u16)>,
}

/// What a stream's thread needs besides its process.
pub struct Sink {
    /// Where the envelopes go.
    pub tx: mpsc::Sender<Bytes>,
    /// How it went, once.
    pub opened: oneshot::Sender<Opened>,
    /// Keepalive interval.
    pub keepalive: Duration,
    /// Called with the handle once the stream is open, before anything is sent.
    pub on_open: Hook,
    /// Called with the handle when the process's exit arrives.
    pub on_exit: Hook,
}

/// A callback of a stream's thread, given the process's handle.
pub type Hook = Option<Box<dyn FnOnce(u64) + Send>>;

fn unsupported(e: &ClientError) -> bool {
    matches!(e, ClientError::Unsupported { .. })
}

/// Starts `spec` in `sandbox`, attached, on a thread of its own.
pub fn start(agents: Arc<dyn ProcessAgents>, sandbox: String, spec: StartSpec, sink: Sink) {
    spawn(move || {
        let mut agent = match agents.dial(&sandbox) {
            Ok(a) => a,
            Err(e) => return drop(sink.opened.send(Opened::Failed(e))),
        };
        let argv: Vec<&str> = spec.argv.iter().map(String::as_str).collect();
        let env: Vec<&str> = spec.env.iter().map(String::as_str).collect();
        let user = match spec.user.as_str() {
            "" => crate::e2b::envd::DEFAULT_USER,
            u => u,
        };
        let mut ps = ProcessStart::new(&argv)
            .with_env(&env)
            .with_cwd(spec.cwd.as_bytes())
            .with_user(user)
            .with_timeout_ms(spec.timeout_ms);
        if spec.stdin {
            ps = ps.with_stdin();
        }
        if let Some((rows, cols)) = spec.pty {
            ps = ps.with_pty(rows, cols);
        }
        match agent.process_start_attached(&ps) {
            Ok(stream) => {
                let pty = spec.pty.is_some();
                let handle = stream.process().handle;
                opened(stream, handle, pty, sink);
            }
            Err(e) if unsupported(&e) => drop(sink.opened.send(Opened::Unsupported)),
            Err(e) => drop(sink.opened.send(Opened::Failed(ApiError::from(e)))),
        }
    });
}

/// Attaches to the running process `handle` in `sandbox` on a thread of its own.
pub fn attach(agents: Arc<dyn ProcessAgents>, sandbox: String, handle: u64, sink: Sink) {
    spawn(move || {
        let mut agent = match agents.dial(&sandbox) {
            Ok(a) => a,
            Err(e) => return drop(sink.opened.send(Opened::Failed(e))),
        };
        let listed = match agent.process_list() {
            Ok(l) => l,
            Err(e) if unsupported(&e) => return drop(sink.opened.send(Opened::Unsupported)),
            Err(e) => return drop(sink.opened.send(Opened::Failed(ApiError::from(e)))),
        };
        let Some(info) = listed.iter().find(|p| p.handle == handle && p.running) else {
            let gone = ApiError::not_found("no such running process");
            return drop(sink.opened.send(Opened::Failed(gone)));
        };
        let pty = info.pty;
        match agent.process_attach(handle) {
            Ok(stream) => opened(stream, handle, pty, sink),
            Err(e) => drop(sink.opened.send(Opened::Failed(ApiError::from(e)))),
        }
    });
}

/// A stream is open: queues `start{pid}` first, says so, and pumps its events.
/// (Returning early drops the stream with its own connection; the process runs on.)
fn opened(stream: ProcessStream<'_>, handle: u64, pty: bool, mut sink: Sink) {
    let Ok(pid) = u32::try_from(handle) else {
        let e = ApiError::internal(format!("the agent's process handle {handle} is over u32"));
        let _ = sink.opened.send(Opened::Failed(e));
        return;
    };
    if let Some(f) = sink.on_open.take() {
        f(handle);
    }
    let start = connect::message(&json!({"event": {"start": {"pid": pid}}}));
    if sink.tx.blocking_send(start).is_err() {
        return;
    }
    if sink.opened.send(Opened::Streaming { handle, pty }).is_ok() {
        let exited = pump(stream, &sink.tx, sink.keepalive, pty);
        if let Some(f) = sink.on_exit.take().filter(|_| exited) {
            f(handle);
        }
    }
}

fn spawn(f: impl FnOnce() + Send + 'static) {
    if let Err(e) = std::thread::Builder::new()
        .name("envd-process".into())
        .spawn(f)
    {
        // The closure (and its oneshot) is dropped: the caller sees the stream fail to open.
        tracing::error!(error = %e, "starting a process stream's thread");
    }
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// envd's `data` event for a chunk.
fn data_event(stream: OutputStream, data: &[u8], pty: bool) -> Value {
    let field = match (pty, stream) {
        (true, _) => "pty",
        (false, OutputStream::Stdout) => "stdout",
        (false, OutputStream::Stderr) => "stderr",
    };
    json!({"event": {"data": {field: b64(data)}}})
}

/// Sends the stream's events until the exit, the agent's end, or the client's going; returns
/// whether the exit came.
fn pump(
    mut stream: ProcessStream<'_>,
    tx: &mpsc::Sender<Bytes>,
    keepalive: Duration,
    pty: bool,
) -> bool {
    let mut last = Instant::now();
    loop {
        if tx.is_closed() {
            return false;
        }
        let wait = keepalive.saturating_sub(last.elapsed()).min(POLL);
        let out = match stream.next_event(wait) {
            Ok(Some(ProcessEvent::Output { stream, data })) => {
                connect::message(&data_event(stream, &data, pty))
            }
            Ok(Some(ProcessEvent::Exit { exit_code, .. })) => {
                let end = json!({"event": {"end": end_event(exit_code)}});
                if tx.blocking_send(connect::message(&end)).is_ok() {
                    let _ = tx.blocking_send(connect::end(None));
                }
                return true;
            }
            Ok(None) if last.elapsed() >= keepalive => {
                connect::message(&json!({"event": {"keepalive": {}}}))
            }
            Ok(None) => continue,
            Err(e) => {
                let err = RpcError::from(ApiError::from(e));
                let _ = tx.blocking_send(connect::end(Some(&err)));
                return false;
            }
        };
        if tx.blocking_send(out).is_err() {
            return false;
        }
        last = Instant::now();
    }
}

/// envd's `end` event for an exit status (negative: killed by signal `-code`).
pub fn end_event(code: i32) -> Value {
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
        1 => "hangup".into(),
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

    #[test]
    fn terminal_output_is_pty_data() {
        use ember_agent_proto::OutputStream;
        let e = super::data_event(OutputStream::Stdout, b"hi", true);
        assert_eq!(e["event"]["data"]["pty"], "aGk=");
        let e = super::data_event(OutputStream::Stderr, b"hi", false);
        assert_eq!(e["event"]["data"]["stderr"], "aGk=");
    }
}
