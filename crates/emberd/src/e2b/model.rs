//! The E2B REST API's JSON bodies, field for field as the `e2b` SDK sends and reads them
//! (e2b-dev/infra's `spec/openapi.yml` and the SDK's generated client): what a create asks
//! ([`NewSandbox`]), what a sandbox looks like ([`E2bSandbox`] after a create or connect,
//! [`SandboxDetail`] from a get or a listing), a metrics sample, and the error body
//! (`{code: <int>, message}`), plus the translation from ember's [`Sandbox`].

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use ember_core::{OnTimeout, Sandbox, SandboxState};
use serde::{Deserialize, Serialize};

use super::time::rfc3339;

/// The envd version emberd's envd listener implements, as the SDK gates features on it
/// (e2b's `envd/versions.py`): 0.5.2 is the lowest that turns on everything implemented and
/// nothing that is not — ≥ 0.3.0 lets `commands.run(stdin=False)` through (stdin is closed
/// unless asked), ≥ 0.4.0 means a default user (no `username` sent unless asked), ≥ 0.5.2
/// allows `close_stdin` (CloseStdin, over the agent's ProcessInput). The next gates are not
/// implemented, so the SDK must not try them: gzip uploads (0.5.7, which also sends octet-stream bodies — those emberd takes), file
/// metadata (0.6.2), watch options (0.6.3+).
pub const ENVD_VERSION: &str = "0.5.2";

/// The `clientID` every answer carries (deprecated in the API, required by the SDK).
pub const CLIENT_ID: &str = "ember";

/// `POST /sandboxes`, `POST /v2/sandboxes`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewSandbox {
    /// The template (an ember template name).
    #[serde(rename = "templateID")]
    pub template_id: String,
    /// Seconds until it is killed (or paused, with `autoPause`); default 15 in v1, 300 here.
    #[serde(default)]
    pub timeout: Option<u64>,
    /// The caller's metadata (ember labels).
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
    /// Environment variables for every command (ember env).
    #[serde(default)]
    pub env_vars: Option<BTreeMap<String, String>>,
    /// Pause instead of kill when the time limit passes.
    #[serde(default)]
    pub auto_pause: Option<bool>,
    /// Keep memory when auto-pausing (emberd always does).
    #[serde(default)]
    pub auto_pause_memory: Option<bool>,
    /// Resume a paused sandbox when a request reaches it (not supported).
    #[serde(default)]
    pub auto_resume: Option<serde_json::Value>,
    /// Outbound internet access (the SDK spells it in snake case).
    #[serde(default, rename = "allow_internet_access")]
    pub allow_internet_access: Option<bool>,
    /// Egress rules (not supported yet).
    #[serde(default)]
    pub network: Option<serde_json::Value>,
    /// An MCP gateway to start (not supported).
    #[serde(default)]
    pub mcp: Option<serde_json::Value>,
    /// Volumes to mount (not supported).
    #[serde(default)]
    pub volume_mounts: Option<serde_json::Value>,
    /// Access tokens for cloud identities (not supported).
    #[serde(default)]
    pub iam: Option<serde_json::Value>,
    /// v1: require an access token for envd (emberd always issues one).
    #[serde(default)]
    pub secure: Option<bool>,
}

/// The sandbox after a create or a connect (E2B's `Sandbox`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct E2bSandbox {
    /// Its template.
    #[serde(rename = "templateID")]
    pub template_id: String,
    /// Its id.
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    /// [`CLIENT_ID`].
    #[serde(rename = "clientID")]
    pub client_id: String,
    /// [`ENVD_VERSION`].
    pub envd_version: String,
    /// The template's alias (its name).
    pub alias: String,
    /// The token envd requests must carry in `X-Access-Token`.
    pub envd_access_token: Option<String>,
    /// Where its envd is reached (none: set `E2B_SANDBOX_URL` to emberd's envd listener).
    pub domain: Option<String>,
}

/// What happens at the end of a sandbox's time (E2B's `lifecycle`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Lifecycle {
    /// Resumed by traffic (never, in emberd).
    pub auto_resume: bool,
    /// `kill` or `pause`.
    pub on_timeout: String,
}

/// A sandbox as `GET /sandboxes/{id}` and the listings show it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxDetail {
    /// Its template.
    #[serde(rename = "templateID")]
    pub template_id: String,
    /// Its id.
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    /// [`CLIENT_ID`].
    #[serde(rename = "clientID")]
    pub client_id: String,
    /// The template's alias.
    pub alias: String,
    /// When it was created, RFC 3339.
    pub started_at: String,
    /// When it will be killed (or paused), RFC 3339.
    pub end_at: String,
    /// [`ENVD_VERSION`].
    pub envd_version: String,
    /// vCPUs.
    pub cpu_count: u32,
    /// Memory, MiB.
    #[serde(rename = "memoryMB")]
    pub memory_mb: u32,
    /// Disk, MiB.
    #[serde(rename = "diskSizeMB")]
    pub disk_size_mb: u64,
    /// `running` or `paused`.
    pub state: String,
    /// The caller's metadata.
    pub metadata: BTreeMap<String, String>,
    /// The envd access token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envd_access_token: Option<String>,
    /// What happens when its time passes.
    pub lifecycle: Lifecycle,
}

/// One sample of `GET /sandboxes/{id}/metrics`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metric {
    /// When, RFC 3339.
    pub timestamp: String,
    /// When, seconds since the epoch.
    pub timestamp_unix: u64,
    /// vCPUs.
    pub cpu_count: u32,
    /// CPU used by the sandbox's VMM, percent of its vCPUs, averaged since it started.
    pub cpu_used_pct: f64,
    /// Host memory its VMM holds, bytes.
    pub mem_used: u64,
    /// The guest's memory, bytes.
    pub mem_total: u64,
    /// Page cache (not measured: 0).
    pub mem_cache: u64,
    /// Disk used (not measured: 0).
    pub disk_used: u64,
    /// Disk size (0: no root disk).
    pub disk_total: u64,
}

/// `POST /sandboxes/{id}/timeout`.
#[derive(Debug, Clone, Deserialize)]
pub struct SetTimeout {
    /// Seconds from now.
    pub timeout: u64,
}

/// `POST /v2/sandboxes/{id}/connect`, `POST /sandboxes/{id}/resume`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Connect {
    /// Seconds from now (extends a running sandbox's time).
    #[serde(default)]
    pub timeout: Option<u64>,
    /// v1 resume: pause again when the time passes.
    #[serde(default)]
    pub auto_pause: Option<bool>,
    /// `false` asks for a reboot instead of a memory resume (not supported).
    #[serde(default)]
    pub memory: Option<bool>,
}

/// The error body of every failed REST call.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct E2bErrorBody {
    /// The HTTP status.
    pub code: u16,
    /// What was wrong.
    pub message: String,
}

/// A sandbox created or connected, as E2B answers it.
pub fn sandbox_of(s: &Sandbox) -> E2bSandbox {
    E2bSandbox {
        template_id: s.template.to_string(),
        sandbox_id: s.id.to_string(),
        client_id: CLIENT_ID.into(),
        envd_version: ENVD_VERSION.into(),
        alias: s.template.to_string(),
        envd_access_token: s.access_token.clone(),
        domain: None,
    }
}

/// A sandbox as E2B details it (live ones: running or paused).
pub fn detail_of(s: &Sandbox) -> SandboxDetail {
    let end = s.deadline.unwrap_or_else(|| {
        // Paused to disk: no deadline until it resumes; E2B keeps paused sandboxes, so the
        // end is as far as its last time limit from now.
        SystemTime::now() + Duration::from_secs(s.timeout_secs.unwrap_or(300))
    });
    SandboxDetail {
        template_id: s.template.to_string(),
        sandbox_id: s.id.to_string(),
        client_id: CLIENT_ID.into(),
        alias: s.template.to_string(),
        started_at: rfc3339(s.created_at),
        end_at: rfc3339(end),
        envd_version: ENVD_VERSION.into(),
        cpu_count: u32::from(s.stack.vcpu_count()),
        memory_mb: s.stack.mem_size_mib(),
        disk_size_mb: 0,
        state: match s.state {
            SandboxState::Paused => "paused".into(),
            _ => "running".into(),
        },
        metadata: s.labels.clone(),
        envd_access_token: s.access_token.clone(),
        lifecycle: Lifecycle {
            auto_resume: false,
            on_timeout: match s.on_timeout {
                OnTimeout::Kill => "kill".into(),
                OnTimeout::Pause => "pause".into(),
            },
        },
    }
}
