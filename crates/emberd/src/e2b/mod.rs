//! E2B compatibility: the unmodified `e2b` SDK (and other clients of E2B's API) drive ember
//! sandboxes through two listeners of their own, off unless configured:
//!
//! - the REST API ([`rest`], `--e2b-api ADDR`, keys from `--e2b-api-key-file`): create, list,
//!   get, kill, timeout, pause (to disk), resume/connect, metrics — what the SDK reaches
//!   through `E2B_API_URL`;
//! - envd ([`envd`], `--e2b-envd ADDR`): the in-sandbox API for every sandbox on one
//!   endpoint, routed by the `E2b-Sandbox-Id` / `E2b-Sandbox-Port` headers — what the SDK
//!   reaches through `E2B_SANDBOX_URL` — over the Connect protocol ([`connect`]): processes
//!   ([`process`]), files ([`filesystem`], `/files`), other guest ports forwarded to TCP
//!   servers in the guest through the agent ([`proxy`]).
//!
//! [`model`] holds E2B's JSON bodies, [`time`] its timestamps. The wire details (what the SDK
//! sends and requires, observed against e2b 2.63.0) are in each module's docs.

pub mod connect;
pub mod envd;
pub mod filesystem;
pub mod model;
pub mod process;
pub mod proxy;
pub mod rest;
pub mod time;

use std::net::SocketAddr;
use std::path::Path;

/// The E2B listeners a daemon serves.
#[derive(Debug, Clone)]
pub struct E2bConfig {
    /// The REST API's address.
    pub api: SocketAddr,
    /// The API keys it accepts (`X-API-KEY`).
    pub api_keys: Vec<String>,
    /// envd's address (none: no envd listener).
    pub envd: Option<SocketAddr>,
}

/// Reads API keys, one a line (blank lines and `#` comments skipped); each at least 16
/// characters.
pub fn read_keys(path: &Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("reading the E2B API key file {}: {e}", path.display()))?;
    let keys: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    if keys.is_empty() {
        return Err(format!("{} holds no API key", path.display()));
    }
    if let Some(short) = keys.iter().find(|k| k.len() < 16) {
        return Err(format!(
            "{}: a key of {} characters; use at least 16",
            path.display(),
            short.len()
        ));
    }
    Ok(keys)
}
