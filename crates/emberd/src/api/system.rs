//! `/healthz`, `/v1/info` (version, KVM, capacity) and `/metrics` (Prometheus text).

use std::path::PathBuf;

use axum::Json;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use ember_core::VmQuery;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::extract::blocking;
use crate::error::{ApiError, ErrorBody};

/// Facts fixed when the daemon starts.
#[derive(Debug, Clone)]
pub struct About {
    /// The VMM binary.
    pub vmm: PathBuf,
    /// The state directory.
    pub state_dir: PathBuf,
    /// The runtime directory.
    pub runtime_dir: PathBuf,
    /// Whether `/dev/kvm` could run a VM at start.
    pub kvm: bool,
}

/// `GET /healthz`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: String,
}

/// `GET /v1/info`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Info {
    /// emberd's version.
    pub version: String,
    /// Whether `/dev/kvm` could run a VM when the daemon started.
    pub kvm: bool,
    /// The VMM binary the daemon runs.
    pub vmm: String,
    /// Where the store, templates and snapshots are.
    pub state_dir: String,
    /// Where the VMs' directories and sockets are.
    pub runtime_dir: String,
    /// Seconds since the daemon started serving.
    pub uptime_secs: u64,
    /// What the host has and holds.
    pub capacity: Capacity,
}

/// What the host has and holds now.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Capacity {
    /// CPUs online.
    pub cpus: usize,
    /// Memory, MiB.
    pub memory_total_mib: u64,
    /// Memory available to new work, MiB.
    pub memory_available_mib: u64,
    /// Sandboxes running.
    pub sandboxes_running: usize,
    /// Sandboxes paused.
    pub sandboxes_paused: usize,
    /// Most sandboxes the daemon runs at once.
    pub sandboxes_max: usize,
    /// Warm VMs ready in pools.
    pub pooled_vms: usize,
    /// VMs of every kind.
    pub vms: usize,
}

/// Whether the daemon serves.
#[utoipa::path(get, path = "/healthz", tag = "system",
    responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

fn meminfo_mib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib / 1024)
}

/// Version, KVM and capacity.
#[utoipa::path(get, path = "/v1/info", tag = "system",
    responses((status = 200, body = Info), (status = 500, body = ErrorBody)))]
pub async fn info(State(s): State<AppState>) -> Result<Json<Info>, ApiError> {
    let about = s.about.clone();
    let uptime_secs = s.started.elapsed().as_secs();
    let e = s.engine;
    let capacity = blocking(move || {
        let (running, paused) = e.live.by_state();
        let pooled = e.pool.metrics().stacks.values().map(|st| st.depth).sum();
        Ok(Capacity {
            cpus: std::thread::available_parallelism().map_or(1, usize::from),
            memory_total_mib: meminfo_mib("MemTotal:"),
            memory_available_mib: meminfo_mib("MemAvailable:"),
            sandboxes_running: running,
            sandboxes_paused: paused,
            sandboxes_max: e.limits.max_sandboxes,
            pooled_vms: pooled,
            vms: e.vms.list()?.len(),
        })
    })
    .await?;
    Ok(Json(Info {
        version: env!("CARGO_PKG_VERSION").to_string(),
        kvm: about.kvm,
        vmm: about.vmm.display().to_string(),
        state_dir: about.state_dir.display().to_string(),
        runtime_dir: about.runtime_dir.display().to_string(),
        uptime_secs,
        capacity,
    }))
}

/// Prometheus text exposition of the daemon's metrics.
#[utoipa::path(get, path = "/metrics", tag = "system",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain; version=0.0.4")))]
pub async fn metrics(State(s): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let e = s.engine;
    let text = blocking(move || {
        e.metrics
            .encode()
            .map_err(|_| ApiError::internal("encoding the metrics failed"))
    })
    .await?;
    Ok((
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        text,
    ))
}
