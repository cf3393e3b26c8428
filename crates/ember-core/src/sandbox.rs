//! Sandboxes: a tenant's microVM, made from a template, with the tenant's labels, environment
//! and time limit. [`Sandbox`] is the host's record of one; [`SandboxState`] its lifecycle;
//! [`SandboxEnd`] why it ended. Labels and environment variables are validated here, once.
//!
//! ```text
//!   create ──> creating ──(VM handed over or restored)──> running <──resume── paused
//!                 │                                         │  └────pause────^ │
//!                 └──(failed)──> ended <──(kill, timeout, VM died)─────────────┘
//! ```
//! A sandbox is paused in memory (its VM's vCPUs stopped) or on disk (`saved`: its VM was
//! snapshotted and destroyed; resuming restores it), and when its time limit passes it is killed
//! or paused to disk ([`OnTimeout`]).

use std::collections::BTreeMap;
use std::fmt;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::error::VmError;
use crate::id::{SandboxId, SnapshotId};
use crate::stack::StackKey;
use crate::template::TemplateName;

/// Most labels per sandbox.
pub const MAX_LABELS: usize = 64;
/// Longest label key, bytes.
pub const MAX_LABEL_KEY_LEN: usize = 63;
/// Longest label value, bytes.
pub const MAX_LABEL_VALUE_LEN: usize = 256;
/// Most environment variables per sandbox.
pub const MAX_ENV: usize = 128;
/// Longest `KEY=VALUE` environment entry, bytes (the agent protocol's limit).
pub const MAX_ENV_ENTRY_LEN: usize = 4096;
/// Longest sandbox time limit, seconds (30 days).
pub const MAX_TIMEOUT_SECS: u64 = 30 * 24 * 3600;

/// Where a sandbox is in its life.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxState {
    /// Recorded before its VM exists: a warm VM is being handed over or a snapshot restored.
    Creating,
    /// Its VM runs.
    Running,
    /// Its VM's vCPUs are paused, memory intact.
    Paused,
    /// Over: killed, timed out, its VM died, or it never came up. See [`Sandbox::end`].
    Ended,
}

impl SandboxState {
    /// Every state.
    pub const ALL: [SandboxState; 4] = [
        SandboxState::Creating,
        SandboxState::Running,
        SandboxState::Paused,
        SandboxState::Ended,
    ];

    /// The word used in the API and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxState::Creating => "creating",
            SandboxState::Running => "running",
            SandboxState::Paused => "paused",
            SandboxState::Ended => "ended",
        }
    }

    /// Whether the sandbox still has (or is getting) a VM.
    pub fn is_live(self) -> bool {
        self != SandboxState::Ended
    }
}

impl fmt::Display for SandboxState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for SandboxState {
    type Err = VmError;
    fn from_str(s: &str) -> Result<Self, VmError> {
        SandboxState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                VmError::invalid_spec(
                    "state",
                    format!("{s:?} is not a sandbox state (creating, running, paused, ended)"),
                )
            })
    }
}

/// Why a sandbox ended.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndCause {
    /// Its owner killed it.
    Killed,
    /// Its time limit passed.
    TimedOut,
    /// Its VMM process died (crash, OOM kill, kill -9), or was gone when the daemon started.
    VmExited,
    /// It never came up: the handover or restore failed, or the daemon stopped mid-create.
    CreateFailed,
}

impl EndCause {
    /// The word used in the API and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            EndCause::Killed => "killed",
            EndCause::TimedOut => "timed_out",
            EndCause::VmExited => "vm_exited",
            EndCause::CreateFailed => "create_failed",
        }
    }
}

impl fmt::Display for EndCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happens to a sandbox when its time limit passes.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnTimeout {
    /// It is killed (ended, cause `timed_out`).
    #[default]
    Kill,
    /// It is paused to disk (its memory and state kept; resuming brings it back).
    Pause,
}

impl OnTimeout {
    fn is_kill(&self) -> bool {
        *self == OnTimeout::Kill
    }
}

/// Longest access token accepted, bytes.
pub const MAX_ACCESS_TOKEN_LEN: usize = 128;

/// How a sandbox ended.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxEnd {
    /// The kind of ending.
    pub cause: EndCause,
    /// What happened, for people.
    pub message: String,
    /// When.
    #[serde(with = "crate::view::unix_millis")]
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub at: SystemTime,
}

/// How a sandbox got its VM.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxStart {
    /// From a warm pool (true) or by restoring the template's snapshot (false).
    pub warm: bool,
    /// How long getting the VM took, µs.
    pub latency_us: u64,
}

/// A tenant's sandbox as its host records it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sandbox {
    /// Its id (its VM has the same one).
    pub id: SandboxId,
    /// The template it was made from.
    pub template: TemplateName,
    /// The template's stack (build and shape) at creation.
    pub stack: StackKey,
    /// Where it is in its life.
    pub state: SandboxState,
    /// The caller's labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Environment variables every command in it gets (an exec's own win).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The time limit last set, seconds from when it was set (none: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// When it will be killed (none: never).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::view::opt_unix_millis"
    )]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<u64>))]
    pub deadline: Option<SystemTime>,
    /// When it was asked for.
    #[serde(with = "crate::view::unix_millis")]
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub created_at: SystemTime,
    /// How it got its VM, once it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<SandboxStart>,
    /// How it ended, once it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<SandboxEnd>,
    /// What happens when its time limit passes.
    #[serde(default, skip_serializing_if = "OnTimeout::is_kill")]
    pub on_timeout: OnTimeout,
    /// While it is paused to disk: the snapshot it resumes from (its VM is gone meanwhile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub saved: Option<SnapshotId>,
    /// The token clients present to reach the sandbox's own endpoints (emberd's envd
    /// listener), if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
    /// Its own network, when the daemon gives sandboxes networks (`emberd --sandbox-network`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<SandboxNetwork>,
}

/// A sandbox's network: the address the host reaches its guest at (every port of it), what
/// the guest may reach, and the guest ports exposed on the host.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxNetwork {
    /// The sandbox's unique address on the host (translated to the guest's fixed one).
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "172.30.0.7"))]
    pub address: std::net::Ipv4Addr,
    /// What the guest may reach.
    pub egress: crate::net_policy::EgressPolicy,
    /// Guest ports reachable from the host through emberd.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ExposedPort>,
}

/// A guest port exposed on the host.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExposedPort {
    /// The guest's TCP port.
    pub guest_port: u16,
    /// Where the host accepts connections for it.
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "127.0.0.1:40123"))]
    pub host: std::net::SocketAddr,
}

impl Sandbox {
    /// Checks the record, naming the first field at fault.
    pub fn validate(&self) -> Result<(), VmError> {
        validate_labels(&self.labels)?;
        validate_env(&self.env)?;
        if let Some(t) = self.timeout_secs {
            validate_timeout("timeout_secs", t)?;
        }
        if self.stack.name() != self.template.as_str() {
            return Err(VmError::invalid_spec(
                "sandbox.stack",
                format!("stack {} is not template {}'s", self.stack, self.template),
            ));
        }
        if (self.state == SandboxState::Ended) != self.end.is_some() {
            return Err(VmError::invalid_spec(
                "sandbox.end",
                "an ended sandbox, and only an ended one, says how it ended",
            ));
        }
        if self.saved.is_some() && self.state != SandboxState::Paused {
            return Err(VmError::invalid_spec(
                "sandbox.saved",
                "only a paused sandbox is saved to disk",
            ));
        }
        if let Some(t) = &self.access_token {
            validate_access_token(t)?;
        }
        Ok(())
    }
}

/// Checks an access token: 1 to [`MAX_ACCESS_TOKEN_LEN`] ASCII letters, digits, `-` and `_`.
pub fn validate_access_token(token: &str) -> Result<(), VmError> {
    let ok = !token.is_empty()
        && token.len() <= MAX_ACCESS_TOKEN_LEN
        && token
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(VmError::invalid_spec(
            "access_token",
            format!("must be 1 to {MAX_ACCESS_TOKEN_LEN} ASCII letters, digits, '-' or '_'"),
        ))
    }
}

/// Checks a time limit in seconds: 1 to [`MAX_TIMEOUT_SECS`].
pub fn validate_timeout(field: &str, secs: u64) -> Result<(), VmError> {
    if secs == 0 || secs > MAX_TIMEOUT_SECS {
        return Err(VmError::invalid_spec(
            field,
            format!("{secs} s is out of range; 1 to {MAX_TIMEOUT_SECS} s are allowed"),
        ));
    }
    Ok(())
}

/// Checks labels: at most [`MAX_LABELS`]; keys 1 to [`MAX_LABEL_KEY_LEN`] bytes of ASCII
/// letters, digits, `-`, `_`, `.` and `/`, starting with a letter or digit; values at most
/// [`MAX_LABEL_VALUE_LEN`] bytes without control characters.
pub fn validate_labels(labels: &BTreeMap<String, String>) -> Result<(), VmError> {
    if labels.len() > MAX_LABELS {
        return Err(VmError::invalid_spec(
            "labels",
            format!("{} labels; at most {MAX_LABELS} are allowed", labels.len()),
        ));
    }
    for (k, v) in labels {
        validate_label_key(k)?;
        if v.len() > MAX_LABEL_VALUE_LEN || v.chars().any(char::is_control) {
            return Err(VmError::invalid_spec(
                format!("labels.{k}"),
                format!(
                    "the value must be at most {MAX_LABEL_VALUE_LEN} bytes without control characters"
                ),
            ));
        }
    }
    Ok(())
}

/// Checks one label key (see [`validate_labels`]).
pub fn validate_label_key(k: &str) -> Result<(), VmError> {
    let ok = !k.is_empty()
        && k.len() <= MAX_LABEL_KEY_LEN
        && k.as_bytes()[0].is_ascii_alphanumeric()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if ok {
        Ok(())
    } else {
        Err(VmError::invalid_spec(
            "labels",
            format!(
                "key {k:?} must be 1 to {MAX_LABEL_KEY_LEN} ASCII letters, digits, '-', '_', '.' or '/', starting with a letter or digit"
            ),
        ))
    }
}

/// Checks environment variables: at most [`MAX_ENV`]; names of ASCII letters, digits and `_`
/// not starting with a digit; `NAME=VALUE` at most [`MAX_ENV_ENTRY_LEN`] bytes without NUL.
pub fn validate_env(env: &BTreeMap<String, String>) -> Result<(), VmError> {
    if env.len() > MAX_ENV {
        return Err(VmError::invalid_spec(
            "env",
            format!("{} variables; at most {MAX_ENV} are allowed", env.len()),
        ));
    }
    for (k, v) in env {
        validate_env_entry(k, v)?;
    }
    Ok(())
}

/// Checks one environment variable (see [`validate_env`]).
pub fn validate_env_entry(k: &str, v: &str) -> Result<(), VmError> {
    let name_ok = !k.is_empty()
        && !k.as_bytes()[0].is_ascii_digit()
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !name_ok {
        return Err(VmError::invalid_spec(
            "env",
            format!(
                "{k:?} is not a variable name (ASCII letters, digits and '_', not starting with a digit)"
            ),
        ));
    }
    if k.len() + 1 + v.len() > MAX_ENV_ENTRY_LEN || v.contains('\0') {
        return Err(VmError::invalid_spec(
            format!("env.{k}"),
            format!("NAME=VALUE must be at most {MAX_ENV_ENTRY_LEN} bytes without NUL"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox() -> Sandbox {
        Sandbox {
            id: SandboxId::new("sb-1").unwrap(),
            template: TemplateName::new("probe").unwrap(),
            stack: StackKey::new("probe", "v1", 1, 128).unwrap(),
            state: SandboxState::Running,
            labels: BTreeMap::from([("team".into(), "a".into())]),
            env: BTreeMap::from([("LANG".into(), "C".into())]),
            timeout_secs: Some(300),
            deadline: Some(SystemTime::UNIX_EPOCH),
            created_at: SystemTime::UNIX_EPOCH,
            start: Some(SandboxStart {
                warm: true,
                latency_us: 250,
            }),
            end: None,
            on_timeout: OnTimeout::Kill,
            saved: None,
            access_token: None,
            network: None,
        }
    }

    #[test]
    fn labels_env_and_end_are_checked() {
        sandbox().validate().unwrap();
        let mut s = sandbox();
        s.labels.insert("bad key".into(), "x".into());
        assert!(s.validate().unwrap_err().to_string().contains("bad key"));
        let mut s = sandbox();
        s.env.insert("1X".into(), "x".into());
        assert!(s.validate().unwrap_err().to_string().contains("1X"));
        let mut s = sandbox();
        s.state = SandboxState::Ended;
        assert!(
            s.validate()
                .unwrap_err()
                .to_string()
                .contains("sandbox.end")
        );
        let mut s = sandbox();
        s.saved = Some(SnapshotId::new("saved-1").unwrap());
        assert!(
            s.validate()
                .unwrap_err()
                .to_string()
                .contains("sandbox.saved")
        );
        s.state = SandboxState::Paused;
        s.validate().unwrap();
        s.access_token = Some("bad token".into());
        assert!(
            s.validate()
                .unwrap_err()
                .to_string()
                .contains("access_token")
        );
        let mut s = sandbox();
        s.timeout_secs = Some(0);
        assert!(
            s.validate()
                .unwrap_err()
                .to_string()
                .contains("timeout_secs")
        );
        assert_eq!(
            "paused".parse::<SandboxState>().unwrap(),
            SandboxState::Paused
        );
        assert!("gone".parse::<SandboxState>().is_err());
    }

    #[test]
    fn serde_round_trip() {
        let s = sandbox();
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains("\"state\":\"running\""), "{json}");
        assert_eq!(serde_json::from_str::<Sandbox>(&json).unwrap(), s);
    }
}
