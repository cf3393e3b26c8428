//! Work inside a sandbox, over its guest agent: run a command ([`ExecRequest`] →
//! [`ExecOutput`](ember_agent_proto::ExecOutput); in a directory or as a user through the
//! agent's ExecIn), move files in and out, and look at and change its file tree (stat, list,
//! make directories, remove, rename).
//!
//! Calls take one of the sandbox's idle agent connections (or open one) and put it back, so
//! calls on one sandbox run side by side and a handed-over VM's first call reuses the
//! connection its Reseed went out on (checking the Reseed's answer first). A paused sandbox is
//! refused (409) rather than left to time out.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use base64::Engine as _;
use ember_agent_proto::{
    AgentClient, ClientError, Exec, ExecIn, ExecOutput, FileInfo, ListedEntry,
};
use ember_core::sandbox::validate_env_entry;
use ember_core::{SandboxState, VmId};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Engine;
use crate::error::ApiError;

/// Default guest-side time limit of a command, ms.
pub const DEFAULT_EXEC_TIMEOUT_MS: u32 = 60_000;
/// Longest guest-side time limit of a command, ms (one day).
pub const MAX_EXEC_TIMEOUT_MS: u32 = 24 * 3600 * 1000;
/// Deepest directory listing.
pub const MAX_LIST_DEPTH: u32 = 16;
/// Most entries one listing returns.
pub const MAX_LIST_ENTRIES: usize = 10_000;
/// How much longer than its guest-side limit the host waits for a command's answer.
const EXEC_GRACE: Duration = Duration::from_secs(5);

/// `POST /v1/sandboxes/{id}/exec`: a command to run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// The program and its arguments (1 to 256 entries, each at most 4096 bytes, no NUL).
    pub argv: Vec<String>,
    /// Environment for this command, on top of the sandbox's own.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory (default: the agent's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// The user to run as (default: the agent's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Standard input, as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    /// Standard input, base64 (instead of `stdin`, for bytes that are not text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin_base64: Option<String>,
    /// Guest-side time limit, ms (default 60000, at most one day); the command is killed when
    /// it passes and the call fails with 504.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u32>,
}

/// A checked exec request, owning what the agent call borrows.
struct Checked {
    argv: Vec<String>,
    env: Vec<String>,
    cwd: String,
    user: String,
    stdin: Vec<u8>,
    timeout_ms: u32,
}

impl ExecRequest {
    /// `argv` with everything else at its default.
    pub fn new(argv: Vec<String>) -> Self {
        Self {
            argv,
            ..Self::default()
        }
    }

    fn check(self, sandbox_env: &BTreeMap<String, String>) -> Result<Checked, ApiError> {
        use ember_agent_proto::limits::{MAX_ARG_LEN, MAX_ARGS};
        if self.argv.is_empty() || self.argv.len() > MAX_ARGS {
            return Err(ApiError::invalid(format!(
                "argv: {} entries; 1 to {MAX_ARGS} are allowed",
                self.argv.len()
            )));
        }
        for (i, a) in self.argv.iter().enumerate() {
            if a.len() > MAX_ARG_LEN || a.contains('\0') {
                return Err(ApiError::invalid(format!(
                    "argv[{i}]: must be at most {MAX_ARG_LEN} bytes without NUL"
                )));
            }
        }
        if self.argv[0].is_empty() {
            return Err(ApiError::invalid("argv[0]: the program must not be empty"));
        }
        let cwd = self.cwd.unwrap_or_default();
        if cwd.len() > ember_agent_proto::limits::MAX_PATH_LEN || cwd.contains('\0') {
            return Err(ApiError::invalid(format!(
                "cwd: must be at most {} bytes without NUL",
                ember_agent_proto::limits::MAX_PATH_LEN
            )));
        }
        let user = self.user.unwrap_or_default();
        if user.len() > 64 || user.contains('\0') || user.contains(':') {
            return Err(ApiError::invalid(
                "user: must be at most 64 bytes without NUL or ':'",
            ));
        }
        let mut env = sandbox_env.clone();
        for (k, v) in self.env {
            validate_env_entry(&k, &v)?;
            env.insert(k, v);
        }
        if env.len() > ember_agent_proto::limits::MAX_ENV {
            return Err(ApiError::invalid(format!(
                "env: {} variables with the sandbox's own; at most {} are allowed",
                env.len(),
                ember_agent_proto::limits::MAX_ENV
            )));
        }
        let stdin = match (self.stdin, self.stdin_base64) {
            (Some(_), Some(_)) => {
                return Err(ApiError::invalid(
                    "stdin, stdin_base64: give one or the other, not both",
                ));
            }
            (Some(text), None) => text.into_bytes(),
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                .decode(b64.as_bytes())
                .map_err(|e| ApiError::invalid(format!("stdin_base64: not base64 ({e})")))?,
            (None, None) => Vec::new(),
        };
        let timeout_ms = self.timeout_ms.unwrap_or(DEFAULT_EXEC_TIMEOUT_MS);
        if timeout_ms == 0 || timeout_ms > MAX_EXEC_TIMEOUT_MS {
            return Err(ApiError::invalid(format!(
                "timeout_ms: {timeout_ms} is out of range; 1 to {MAX_EXEC_TIMEOUT_MS} are allowed"
            )));
        }
        Ok(Checked {
            argv: self.argv,
            env: env.into_iter().map(|(k, v)| format!("{k}={v}")).collect(),
            cwd,
            user,
            stdin,
            timeout_ms,
        })
    }
}

/// A command's result and how long the call took.
#[derive(Debug, Clone)]
pub struct ExecDone {
    /// What the agent answered.
    pub output: ExecOutput,
    /// From the request to the answer.
    pub duration: Duration,
}

fn vm_of(id: &ember_core::SandboxId) -> VmId {
    // Invariant: sandbox ids are valid VM ids (the same validated id rules).
    VmId::new(id.as_str()).unwrap_or_else(|_| unreachable!("a sandbox id is a valid VM id"))
}

impl Engine {
    /// A new connection to sandbox `id`'s agent, not pooled (for a process stream, which holds
    /// its connection until the process exits). A paused sandbox is refused (409).
    pub(crate) fn dial_agent(&self, id: &str) -> Result<AgentClient, ApiError> {
        let (sid, live) = self.live_sandbox(id)?;
        if live.state() == SandboxState::Paused {
            return Err(ApiError::conflict(format!(
                "sandbox {sid} is paused; resume it first"
            )));
        }
        self.connect_agent(&vm_of(&sid))
    }

    /// Runs `f` on one of sandbox `id`'s agent connections.
    pub(crate) fn with_agent<T>(
        &self,
        id: &str,
        f: impl FnOnce(&mut AgentClient) -> Result<T, ClientError>,
    ) -> Result<T, ApiError> {
        let (sid, live) = self.live_sandbox(id)?;
        if live.state() == SandboxState::Paused {
            return Err(ApiError::conflict(format!(
                "sandbox {sid} is paused; resume it first"
            )));
        }
        let mut agent = match live.take_agent() {
            Some(agent) => agent,
            None => self.connect_agent(&vm_of(&sid))?,
        };
        let result = f(&mut agent);
        live.put_agent(agent);
        result.map_err(|e| {
            if self.live.get(&sid).is_none() {
                ApiError::conflict(format!("sandbox {sid} ended during the call"))
            } else {
                ApiError::from(e)
            }
        })
    }

    /// Runs a command in sandbox `id` and waits for its result.
    pub fn exec(&self, id: &str, req: ExecRequest) -> Result<ExecDone, ApiError> {
        let env = {
            let (_, live) = self.live_sandbox(id)?;
            live.env.clone()
        };
        let c = req.check(&env)?;
        let argv: Vec<&str> = c.argv.iter().map(String::as_str).collect();
        let env: Vec<&str> = c.env.iter().map(String::as_str).collect();
        let exec = Exec::new(&argv)
            .with_env(&env)
            .with_stdin(&c.stdin)
            .with_timeout_ms(c.timeout_ms);
        // Exec where it is enough (every agent has it); ExecIn for a directory or a user.
        let plain = c.cwd.is_empty() && c.user.is_empty();
        let exec_in = ExecIn {
            cwd: c.cwd.as_bytes(),
            user: &c.user,
            ..ExecIn::from_exec(exec)
        };
        let t0 = Instant::now();
        let output = self
            .with_agent(id, |agent| {
                agent.set_call_timeout(Duration::from_millis(u64::from(c.timeout_ms)) + EXEC_GRACE);
                let out = if plain {
                    agent.exec(&exec)
                } else {
                    agent.exec_in(&exec_in)
                };
                agent.set_call_timeout(self.limits.agent_timeout);
                out
            })
            .map_err(|e| {
                if c.cwd.is_empty() {
                    e.context(format!("running {:?}", c.argv[0]))
                } else {
                    e.context(format!("running {:?} in {:?}", c.argv[0], c.cwd))
                }
            })?;
        Ok(ExecDone {
            output,
            duration: t0.elapsed(),
        })
    }

    /// Writes `data` to `path` in sandbox `id` (created with `mode`, or truncated).
    pub fn put_file(&self, id: &str, path: &str, mode: u32, data: &[u8]) -> Result<(), ApiError> {
        check_path(path)?;
        if mode > 0o7777 {
            return Err(ApiError::invalid(format!(
                "mode: {mode:o} is not a permission mode (at most 7777 octal)"
            )));
        }
        if data.len() > self.limits.max_file_bytes {
            return Err(ApiError::too_large(format!(
                "the file is {} bytes; at most {} are accepted",
                data.len(),
                self.limits.max_file_bytes
            )));
        }
        self.with_agent(id, |agent| agent.put_file(path, mode, data))
    }

    /// What is at `path` in sandbox `id`.
    pub fn stat(&self, id: &str, path: &str) -> Result<FileInfo, ApiError> {
        check_path(path)?;
        self.with_agent(id, |agent| agent.stat(path))
    }

    /// The entries under directory `path` in sandbox `id`, `depth` levels down (names relative
    /// to it), at most [`MAX_LIST_ENTRIES`].
    pub fn list_dir(&self, id: &str, path: &str, depth: u32) -> Result<Vec<ListedEntry>, ApiError> {
        check_path(path)?;
        if depth == 0 || depth > MAX_LIST_DEPTH {
            return Err(ApiError::invalid(format!(
                "depth: {depth} is out of range; 1 to {MAX_LIST_DEPTH} are allowed"
            )));
        }
        self.with_agent(id, |agent| agent.list_dir(path, depth, MAX_LIST_ENTRIES))
    }

    /// Makes directory `path` (and its parents) in sandbox `id`; returns whether it was made
    /// (false: it existed).
    pub fn make_dir(&self, id: &str, path: &str) -> Result<bool, ApiError> {
        check_path(path)?;
        self.with_agent(id, |agent| agent.make_dir(path, 0o755, true))
    }

    /// Removes `path` (a directory with everything in it) in sandbox `id`.
    pub fn remove(&self, id: &str, path: &str) -> Result<(), ApiError> {
        check_path(path)?;
        self.with_agent(id, |agent| agent.remove(path, true))
    }

    /// Renames `from` to `to` in sandbox `id`.
    pub fn rename(&self, id: &str, from: &str, to: &str) -> Result<(), ApiError> {
        check_path(from)?;
        check_path(to)?;
        self.with_agent(id, |agent| agent.rename(from, to))
    }

    /// Reads the file at `path` in sandbox `id`.
    pub fn get_file(&self, id: &str, path: &str) -> Result<Vec<u8>, ApiError> {
        check_path(path)?;
        let max = self.limits.max_file_bytes;
        self.with_agent(id, |agent| agent.get_file(path, max))
            .map(|c| c.data)
    }
}

fn check_path(path: &str) -> Result<(), ApiError> {
    use ember_agent_proto::limits::MAX_PATH_LEN;
    if path.is_empty() || path.len() > MAX_PATH_LEN || path.contains('\0') {
        return Err(ApiError::invalid(format!(
            "path: must be 1 to {MAX_PATH_LEN} bytes without NUL"
        )));
    }
    Ok(())
}
