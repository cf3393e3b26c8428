//! envd's `process.Process` service over the agent's background processes ([`Processes`]):
//!
//! - `Start` starts the command attached (ProcessStart) and streams `start{pid}`, each chunk of
//!   output as it comes (`data.stdout`/`data.stderr`, or `data.pty` on a terminal), `keepalive`s
//!   at the `Keepalive-Ping-Interval` asked, and `end{exitCode, exited, status, error}`; the
//!   process runs on if the client goes. `stdin: true` keeps its stdin open for input (else it
//!   is `/dev/null`, envd's default); `pty{size}` runs it on a terminal; `connect-timeout-ms`
//!   is its time limit (the agent kills its process group then, as envd does); `tag` names it.
//! - `Connect` streams a running process's later output and its end; `List` shows the running
//!   ones (`config`, `pid`, `tag`); `SendInput`, `StreamInput` (a client stream), `CloseStdin`,
//!   `SendSignal` (SIGTERM or SIGKILL, to its process group) and `Update` (a terminal's size)
//!   reach a process by pid or tag.
//!
//! envd's pid is the agent's process handle (the agent never reuses one; pids in the guest are
//! reused). Tags and each Start's `ProcessConfig` are kept here per sandbox (`Registry`), as
//! the agent knows neither: an entry goes when its exit streams, when `List` finds the process
//! gone, or with its sandbox. They live in memory: after an emberd restart `List` shows the
//! agent's argv and directory, and tags no longer select.
//!
//! An agent without background processes (the probe guest: Unsupported) gets `Start` through
//! the one-shot Exec ([`exec`]), and is remembered so its later Starts go there directly; its
//! other calls answer as for a process that is not there.
//! Where the agent is reached is a [`ProcessAgents`]: the daemon's engine, or one agent on a
//! socket ([`router`] serves that for tests).

pub mod agents;
pub mod exec;
pub mod request;
pub mod stream;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

pub use agents::{EngineAgents, ProcessAgents, SocketAgent};
use request::Selector;
use stream::{Opened, Sink, StartSpec};

use super::connect::{self, Code, RpcError};
use crate::api::extract::blocking;
use crate::error::ApiError;

/// What a Start said of its process, kept for `List` and tag selectors.
#[derive(Debug, Clone)]
struct Started {
    tag: Option<String>,
    config: Value,
}

/// Per sandbox: each started process's handle → what its Start said.
type Registry = HashMap<String, BTreeMap<u64, Started>>;

/// envd's process service for every sandbox of one agent source.
pub struct Processes {
    agents: Arc<dyn ProcessAgents>,
    registry: Mutex<Registry>,
    /// Pids for commands run through Exec (no agent handle), above any handle in practice.
    exec_pids: AtomicU32,
    /// Sandboxes whose agent answered ProcessStart with Unsupported (their agent never
    /// changes: a restore brings back the same one), so their Starts go straight to Exec.
    exec_only: Mutex<HashSet<String>>,
}

impl Processes {
    /// The service over `agents`.
    pub fn new(agents: Arc<dyn ProcessAgents>) -> Self {
        Self {
            agents,
            registry: Mutex::new(HashMap::new()),
            exec_pids: AtomicU32::new(1 << 30),
            exec_only: Mutex::new(HashSet::new()),
        }
    }

    /// Where the sandboxes' agents are reached.
    pub fn agents(&self) -> &Arc<dyn ProcessAgents> {
        &self.agents
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Handles `process.Process/<name>` for `sandbox`, as `user` (none: the agent's default).
    pub async fn call(
        self: &Arc<Self>,
        sandbox: &str,
        user: Option<String>,
        name: &str,
        req: Request,
    ) -> Response {
        let result = match name {
            "Start" => return self.start(sandbox, user, req).await,
            "Connect" => return self.connect(sandbox, req).await,
            "StreamInput" => return self.stream_input(sandbox, req).await,
            "List" => self.list(sandbox).await,
            "SendInput" | "CloseStdin" | "SendSignal" | "Update" => {
                match request::unary_body(req).await {
                    Ok(msg) => self.unary(sandbox, name, &msg).await,
                    Err(e) => Err(e),
                }
            }
            other => Err(RpcError::new(
                Code::Unimplemented,
                format!("process.Process/{other} is not a method of this envd"),
            )),
        };
        match result {
            Ok(v) => connect::unary(&v),
            Err(e) => e.into_response(),
        }
    }

    /// A hook that forgets a process of `sandbox` once it exited.
    fn forgetter(self: &Arc<Self>, sandbox: &str) -> Box<dyn FnOnce(u64) + Send> {
        let (me, id) = (Arc::downgrade(self), sandbox.to_string());
        Box::new(move |handle| {
            if let Some(p) = me.upgrade() {
                let mut registry = p.registry();
                if let Some(m) = registry.get_mut(&id) {
                    m.remove(&handle);
                }
            }
        })
    }

    /// Forgets the processes of sandboxes that are gone.
    fn sweep(&self) {
        self.registry()
            .retain(|sb, m| !m.is_empty() && self.agents.is_live(sb));
        self.exec_only().retain(|sb| self.agents.is_live(sb));
    }

    fn exec_only(&self) -> MutexGuard<'_, HashSet<String>> {
        self.exec_only.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs a Start through Exec (its agent has no background processes).
    async fn exec_start(
        &self,
        sandbox: &str,
        spec: StartSpec,
        envs: BTreeMap<String, String>,
    ) -> Response {
        let pid = self.exec_pids.fetch_add(1, Ordering::Relaxed);
        exec::run(Arc::clone(&self.agents), sandbox, spec, envs, pid).await
    }

    /// The agent handle `sel` names in `sandbox`.
    fn resolve(&self, sandbox: &str, sel: &Selector) -> Result<u64, RpcError> {
        match sel {
            Selector::Pid(p) => Ok(u64::from(*p)),
            Selector::Tag(t) => self
                .registry()
                .get(sandbox)
                .and_then(|m| m.iter().find(|(_, s)| s.tag.as_deref() == Some(t)))
                .map(|(h, _)| *h)
                .ok_or_else(|| RpcError::new(Code::NotFound, format!("{sel} not found"))),
        }
    }

    async fn start(
        self: &Arc<Self>,
        sandbox: &str,
        user: Option<String>,
        req: Request,
    ) -> Response {
        let headers = req.headers().clone();
        let msg = match request::stream_body(req, "Start").await {
            Ok(m) => m,
            Err(e) => return connect::stream(&[], Some(&e)),
        };
        let parsed = (|| {
            let p = &msg["process"];
            let cmd = p["cmd"]
                .as_str()
                .filter(|c| !c.is_empty())
                .ok_or_else(|| RpcError::new(Code::InvalidArgument, "process.cmd is required"))?;
            let args = request::strings(&p["args"], "process.args")?;
            let envs = request::string_map(&p["envs"], "process.envs")?;
            let pty = request::pty_size(&msg["pty"])?;
            Ok::<_, RpcError>((cmd.to_string(), args, envs, pty))
        })();
        let (cmd, args, envs, pty) = match parsed {
            Ok(p) => p,
            Err(e) => return connect::stream(&[], Some(&e)),
        };
        let cwd = msg["process"]["cwd"].as_str().unwrap_or("").to_string();
        let tag = msg["tag"].as_str().map(str::to_string);
        let mut config = json!({"cmd": cmd, "args": args, "envs": envs});
        if !cwd.is_empty() {
            config["cwd"] = json!(cwd);
        }
        let agents = Arc::clone(&self.agents);
        let id = sandbox.to_string();
        let sandbox_env = match blocking(move || agents.sandbox_env(&id)).await {
            Ok(e) => e,
            Err(e) if e.status.as_u16() == 409 => return super::envd::not_found(sandbox),
            Err(e) => return connect::stream(&[], Some(&RpcError::from(e))),
        };
        let mut env = sandbox_env;
        env.extend(envs.clone());
        let mut argv = vec![cmd];
        argv.extend(args);
        let spec = StartSpec {
            argv,
            env: env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            cwd,
            user: user.unwrap_or_default(),
            stdin: msg["stdin"].as_bool() == Some(true),
            timeout_ms: request::timeout_ms(&headers).unwrap_or(0),
            pty,
        };
        self.sweep();
        if self.exec_only().contains(sandbox) {
            return self.exec_start(sandbox, spec, envs).await;
        }
        let (tx, rx) = mpsc::channel(stream::CHANNEL);
        let (opened_tx, opened_rx) = oneshot::channel();
        let (me, id) = (Arc::downgrade(self), sandbox.to_string());
        let on_open = move |handle: u64| {
            if let Some(p) = me.upgrade() {
                let started = Started { tag, config };
                p.registry().entry(id).or_default().insert(handle, started);
            }
        };
        let sink = Sink {
            tx,
            opened: opened_tx,
            keepalive: request::keepalive(&headers),
            on_open: Some(Box::new(on_open)),
            on_exit: Some(self.forgetter(sandbox)),
        };
        stream::start(
            Arc::clone(&self.agents),
            sandbox.to_string(),
            spec.clone(),
            sink,
        );
        match opened_rx.await {
            Ok(Opened::Streaming { .. }) => connect::live_stream(rx),
            Ok(Opened::Unsupported) => {
                self.exec_only().insert(sandbox.to_string());
                self.exec_start(sandbox, spec, envs).await
            }
            Ok(Opened::Failed(e)) => stream_failed(sandbox, start_error(e)),
            Err(_) => stream_failed(
                sandbox,
                ApiError::internal("the process stream never opened"),
            ),
        }
    }

    async fn connect(self: &Arc<Self>, sandbox: &str, req: Request) -> Response {
        let headers = req.headers().clone();
        let sel = match request::stream_body(req, "Connect")
            .await
            .and_then(|m| request::selector(&m["process"]))
        {
            Ok(s) => s,
            Err(e) => return connect::stream(&[], Some(&e)),
        };
        let handle = match self.resolve(sandbox, &sel) {
            Ok(h) => h,
            Err(e) => return connect::stream(&[], Some(&e)),
        };
        let (tx, rx) = mpsc::channel(stream::CHANNEL);
        let (opened_tx, opened_rx) = oneshot::channel();
        let sink = Sink {
            tx,
            opened: opened_tx,
            keepalive: request::keepalive(&headers),
            on_open: None,
            on_exit: Some(self.forgetter(sandbox)),
        };
        stream::attach(Arc::clone(&self.agents), sandbox.to_string(), handle, sink);
        let not_found = || RpcError::new(Code::NotFound, format!("{sel} not found"));
        match opened_rx.await {
            Ok(Opened::Streaming { .. }) => connect::live_stream(rx),
            Ok(Opened::Unsupported) => connect::stream(&[], Some(&not_found())),
            Ok(Opened::Failed(e)) if e.status.as_u16() == 404 => {
                connect::stream(&[], Some(&not_found()))
            }
            Ok(Opened::Failed(e)) => stream_failed(sandbox, e),
            Err(_) => stream_failed(
                sandbox,
                ApiError::internal("the process stream never opened"),
            ),
        }
    }

    async fn list(&self, sandbox: &str) -> Result<Value, RpcError> {
        let agents = Arc::clone(&self.agents);
        let id = sandbox.to_string();
        let listed = blocking(move || {
            let mut out = Vec::new();
            agents.with_agent(&id, &mut |a| {
                out = a.process_list()?;
                Ok(())
            })?;
            Ok(out)
        })
        .await;
        let listed = match listed {
            Ok(l) => l,
            Err(e) if e.code == "unsupported" => Vec::new(),
            Err(e) => return Err(RpcError::from(e)),
        };
        let mut registry = self.registry();
        let known = registry.entry(sandbox.to_string()).or_default();
        known.retain(|h, _| listed.iter().any(|p| p.handle == *h && p.running));
        let processes: Vec<Value> = listed
            .iter()
            .filter(|p| p.running)
            .filter_map(|p| {
                let pid = u32::try_from(p.handle).ok()?;
                let mut info = match known.get(&p.handle) {
                    Some(s) => {
                        let mut i = json!({"config": s.config, "pid": pid});
                        if let Some(t) = &s.tag {
                            i["tag"] = json!(t);
                        }
                        i
                    }
                    None => {
                        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                        let cmd = p.argv.first().map(|a| text(a)).unwrap_or_default();
                        let args: Vec<String> = p.argv.iter().skip(1).map(|a| text(a)).collect();
                        json!({"config": {"cmd": cmd, "args": args, "envs": {}}, "pid": pid})
                    }
                };
                if info["config"]["cwd"].is_null() && !p.cwd.is_empty() {
                    info["config"]["cwd"] = json!(String::from_utf8_lossy(&p.cwd));
                }
                Some(info)
            })
            .collect();
        Ok(json!({"processes": processes}))
    }

    async fn unary(&self, sandbox: &str, name: &str, msg: &Value) -> Result<Value, RpcError> {
        let sel = request::selector(&msg["process"])?;
        let handle = self.resolve(sandbox, &sel)?;
        let op = match name {
            "SendInput" => Op::Input(request::input(&msg["input"])?, false),
            "CloseStdin" => Op::Input(Vec::new(), true),
            "SendSignal" => Op::Signal(request::signal(&msg["signal"])?),
            _ => match request::pty_size(&msg["pty"])? {
                Some((rows, cols)) => Op::Resize(rows, cols),
                None => return Ok(json!({})),
            },
        };
        self.apply(sandbox, &sel, handle, op).await?;
        Ok(json!({}))
    }

    /// Runs `op` on process `handle`, mapping the agent's answers to envd's.
    async fn apply(
        &self,
        sandbox: &str,
        sel: &Selector,
        handle: u64,
        op: Op,
    ) -> Result<(), RpcError> {
        let agents = Arc::clone(&self.agents);
        let id = sandbox.to_string();
        let result = blocking(move || {
            agents.with_agent(&id, &mut |a| match &op {
                Op::Input(data, close) => {
                    let written = a.write_stdin(handle, data, *close)?;
                    if written < data.len() {
                        return Err(ember_agent_proto::ClientError::Timeout {
                            request: ember_agent_proto::Kind::ProcessInput,
                            stage: "waiting for the process to read its input",
                            timeout: crate::engine::AGENT_TIMEOUT,
                        });
                    }
                    Ok(())
                }
                // To the process group: envd stops waiting for a killed command's output;
                // signalling the children too keeps them from holding it open.
                Op::Signal(sig) => a.process_signal(handle, *sig, true),
                Op::Resize(rows, cols) => a.process_resize(handle, *rows, *cols),
            })
        })
        .await;
        result.map_err(|e| match (e.status.as_u16(), e.code) {
            (404, _) | (_, "unsupported") => {
                RpcError::new(Code::NotFound, format!("{sel} not found"))
            }
            _ => RpcError::from(e),
        })
    }

    /// `StreamInput`: a client stream of `{start{process}}`, then `{data{input}}` and
    /// `{keepalive}` messages, each written as it arrives; answered `{}` at its end.
    async fn stream_input(self: &Arc<Self>, sandbox: &str, req: Request) -> Response {
        match input_stream::run(self, sandbox, req).await {
            Ok(()) => connect::stream(&[json!({})], None),
            Err(e) => connect::stream(&[], Some(&e)),
        }
    }
}

mod input_stream;

/// One unary operation on a process.
enum Op {
    /// Bytes for its stdin (or terminal), then close it.
    Input(Vec<u8>, bool),
    /// A signal to its process group.
    Signal(u8),
    /// A terminal's new (rows, cols).
    Resize(u16, u16),
}

/// A failed start as envd says it: the guest refusing the command (no such program or
/// directory, not allowed, a bad argument) is `invalid_argument`, a guest out of room
/// `resource_exhausted`.
fn start_error(e: ApiError) -> ApiError {
    if !e.message.starts_with("the guest agent") {
        return e;
    }
    match e.status.as_u16() {
        400 | 403 | 404 | 422 => ApiError::invalid(e.message),
        413 | 503 => ApiError::new(
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            "resource_exhausted",
            e.message,
        ),
        _ => e,
    }
}

/// A stream that did not open: a sandbox gone meanwhile answers as the proxy does; anything
/// else ends the stream with the error.
fn stream_failed(sandbox: &str, e: ApiError) -> Response {
    if e.status.as_u16() == 409 {
        return super::envd::not_found(sandbox);
    }
    connect::stream(&[], Some(&RpcError::from(e)))
}

/// `process.Process/*` (and `GET /health`, which the SDK asks after a failure) for one sandbox
/// behind `processes`, with no access token or sandbox id: for tests and tools that point the
/// service at one agent. A request with an `E2b-Sandbox-Port` other than envd's goes to that
/// port in the guest, as the daemon's envd forwards it ([`super::proxy`]).
pub fn router(processes: Arc<Processes>, sandbox: String) -> axum::Router {
    axum::Router::new().fallback(move |req: Request| {
        let p = Arc::clone(&processes);
        let sandbox = sandbox.clone();
        async move {
            let port = req
                .headers()
                .get("e2b-sandbox-port")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u32>().ok())
                .filter(|p| *p != 0 && *p != super::envd::ENVD_PORT);
            if let Some(port) = port {
                let agents = Arc::clone(p.agents());
                return super::proxy::forward_via(agents, &sandbox, port, req).await;
            }
            let path = req.uri().path().to_string();
            if path == "/health" && req.method() == axum::http::Method::GET {
                return axum::http::StatusCode::NO_CONTENT.into_response();
            }
            match path.strip_prefix("/process.Process/") {
                Some(name) => p.call(&sandbox, None, name, req).await,
                None => RpcError::new(Code::NotFound, format!("no route {path}")).into_response(),
            }
        }
    })
}
