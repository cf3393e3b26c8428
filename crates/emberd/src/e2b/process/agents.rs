//! Where envd's process service (and its port forwarding, `proxy`) reaches a sandbox's agent:
//! the [`ProcessAgents`] trait, served
//! by the daemon's engine ([`EngineAgents`]: the sandbox's vsock, its pooled connections, its
//! environment) or by one agent on a hybrid-vsock Unix socket ([`SocketAgent`]: what a
//! sandbox's vsock socket is, and what tests point at an `ember-agent --listen unix:PATH`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ember_agent_proto::{AgentClient, ClientError, Exec};

use crate::engine::Engine;
use crate::engine::guest::{ExecDone, ExecRequest};
use crate::error::ApiError;

/// A sandbox's agent, as the process service needs it.
pub trait ProcessAgents: Send + Sync {
    /// A new connection to `sandbox`'s agent, for one process stream (a stream holds its
    /// connection until the process exits or the stream is dropped).
    fn dial(&self, sandbox: &str) -> Result<AgentClient, ApiError>;

    /// Runs `f` on one of `sandbox`'s agent connections (pooled where the source pools).
    fn with_agent(
        &self,
        sandbox: &str,
        f: &mut dyn FnMut(&mut AgentClient) -> Result<(), ClientError>,
    ) -> Result<(), ApiError>;

    /// The environment every command in `sandbox` starts with (under the command's own).
    fn sandbox_env(&self, sandbox: &str) -> Result<BTreeMap<String, String>, ApiError>;

    /// Runs a command to its end with the one-shot Exec, for agents without background
    /// processes (the probe guest).
    fn exec(&self, sandbox: &str, req: ExecRequest) -> Result<ExecDone, ApiError>;

    /// Whether `sandbox` still exists (what is kept for one that does not is forgotten).
    fn is_live(&self, _sandbox: &str) -> bool {
        true
    }

    /// The hybrid vsock socket of `sandbox`'s VM (to dial guest ports other than the agent's,
    /// for agents that cannot connect to TCP ports).
    fn vsock_path(&self, sandbox: &str) -> Result<PathBuf, ApiError>;
}

/// The daemon's sandboxes, through its engine.
pub struct EngineAgents(pub Arc<Engine>);

impl ProcessAgents for EngineAgents {
    fn dial(&self, sandbox: &str) -> Result<AgentClient, ApiError> {
        self.0.dial_agent(sandbox)
    }

    fn with_agent(
        &self,
        sandbox: &str,
        f: &mut dyn FnMut(&mut AgentClient) -> Result<(), ClientError>,
    ) -> Result<(), ApiError> {
        self.0.with_agent(sandbox, f)
    }

    fn sandbox_env(&self, sandbox: &str) -> Result<BTreeMap<String, String>, ApiError> {
        let (_, live) = self.0.live_sandbox(sandbox)?;
        Ok(live.env.clone())
    }

    fn exec(&self, sandbox: &str, req: ExecRequest) -> Result<ExecDone, ApiError> {
        self.0.exec(sandbox, req)
    }

    fn is_live(&self, sandbox: &str) -> bool {
        ember_core::SandboxId::new(sandbox).is_ok_and(|id| self.0.live.get(&id).is_some())
    }

    fn vsock_path(&self, sandbox: &str) -> Result<PathBuf, ApiError> {
        let vm = ember_core::VmId::new(sandbox)
            .map_err(|_| ApiError::not_found(format!("sandbox {sandbox} not found")))?;
        self.0
            .provider
            .vsock_path(&vm)
            .map_err(|_| ApiError::not_found(format!("sandbox {sandbox} has no vsock")))
    }
}

/// One agent on a hybrid-vsock Unix socket (Firecracker's `CONNECT <port>` handshake), whatever
/// sandbox a request names.
pub struct SocketAgent {
    socket: PathBuf,
    port: u32,
    timeout: Duration,
    env: BTreeMap<String, String>,
    idle: Mutex<Option<AgentClient>>,
}

impl SocketAgent {
    /// The agent behind `socket`, guest port `port`, with a 10-second call timeout.
    pub fn new(socket: impl Into<PathBuf>, port: u32) -> Self {
        Self {
            socket: socket.into(),
            port,
            timeout: crate::engine::AGENT_TIMEOUT,
            env: BTreeMap::new(),
            idle: Mutex::new(None),
        }
    }

    /// Gives every command `env` (as a sandbox's own environment).
    pub fn with_env(mut self, env: BTreeMap<String, String>) -> Self {
        self.env = env;
        self
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Option<AgentClient>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ProcessAgents for SocketAgent {
    fn dial(&self, _sandbox: &str) -> Result<AgentClient, ApiError> {
        AgentClient::connect(&self.socket, self.port, self.timeout).map_err(ApiError::from)
    }

    fn with_agent(
        &self,
        sandbox: &str,
        f: &mut dyn FnMut(&mut AgentClient) -> Result<(), ClientError>,
    ) -> Result<(), ApiError> {
        let kept = self.idle().take();
        let mut agent = match kept {
            Some(a) => a,
            None => self.dial(sandbox)?,
        };
        let result = f(&mut agent);
        if agent.poisoned().is_none() {
            *self.idle() = Some(agent);
        }
        result.map_err(ApiError::from)
    }

    fn sandbox_env(&self, _sandbox: &str) -> Result<BTreeMap<String, String>, ApiError> {
        Ok(self.env.clone())
    }

    fn vsock_path(&self, _sandbox: &str) -> Result<PathBuf, ApiError> {
        Ok(self.socket.clone())
    }

    fn exec(&self, sandbox: &str, req: ExecRequest) -> Result<ExecDone, ApiError> {
        // Enough for a test: argv and environment (no directory, user or stdin).
        let argv: Vec<&str> = req.argv.iter().map(String::as_str).collect();
        let env: Vec<String> = self
            .env
            .iter()
            .chain(req.env.iter())
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let env: Vec<&str> = env.iter().map(String::as_str).collect();
        let t0 = std::time::Instant::now();
        let mut output = None;
        self.with_agent(sandbox, &mut |agent| {
            output = Some(agent.exec(&Exec::new(&argv).with_env(&env))?);
            Ok(())
        })?;
        let output = output.ok_or_else(|| ApiError::internal("the exec gave no answer"))?;
        Ok(ExecDone {
            output,
            duration: t0.elapsed(),
        })
    }
}
