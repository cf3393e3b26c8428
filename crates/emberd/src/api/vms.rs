//! `/v1/vms` and `/v1/snapshots`: the raw `VmProvider` contract for callers who manage VMs
//! themselves. VMs of pools and sandboxes are listed here but changed only through their
//! owners' routes.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use ember_core::{SnapshotRef, VmView};

use super::AppState;
use super::extract::{ApiJson, blocking};
use crate::engine::vms::{CreateVm, RenameVm, SnapshotVm, VmAction};
use crate::error::{ApiError, ErrorBody};

/// Creates a VM: a fresh boot (`created`; start it) or, with `spec.restore_from`, a restore.
#[utoipa::path(post, path = "/v1/vms", tag = "vms", request_body = CreateVm,
    responses((status = 201, body = VmView), (status = 400, body = ErrorBody),
        (status = 409, description = "The id is taken", body = ErrorBody)))]
pub async fn create(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<CreateVm>,
) -> Result<(StatusCode, Json<VmView>), ApiError> {
    let e = s.engine;
    let v = blocking(move || e.create_vm(req)).await?;
    Ok((StatusCode::CREATED, Json(v)))
}

/// Every VM on the host (pooled, sandboxes' and raw).
#[utoipa::path(get, path = "/v1/vms", tag = "vms", responses((status = 200, body = Vec<VmView>)))]
pub async fn list(State(s): State<AppState>) -> Result<Json<Vec<VmView>>, ApiError> {
    let e = s.engine;
    Ok(Json(blocking(move || e.list_vms()).await?))
}

/// One VM.
#[utoipa::path(get, path = "/v1/vms/{id}", tag = "vms",
    params(("id" = String, Path, description = "The VM's id")),
    responses((status = 200, body = VmView), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<VmView>, ApiError> {
    let e = s.engine;
    Ok(Json(blocking(move || e.get_vm(&id)).await?))
}

/// Destroys a raw VM and its files (its snapshots stay).
#[utoipa::path(delete, path = "/v1/vms/{id}", tag = "vms",
    params(("id" = String, Path, description = "The VM's id")),
    responses((status = 204, description = "Destroyed"), (status = 404, body = ErrorBody),
        (status = 409, description = "It belongs to a pool or a sandbox", body = ErrorBody)))]
pub async fn destroy(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let e = s.engine;
    blocking(move || e.destroy_vm_api(&id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn action(s: AppState, id: String, a: VmAction) -> Result<Json<VmView>, ApiError> {
    let e = s.engine;
    Ok(Json(blocking(move || e.vm_action(&id, a)).await?))
}

/// Boots a created VM.
#[utoipa::path(post, path = "/v1/vms/{id}/start", tag = "vms",
    params(("id" = String, Path, description = "The VM's id")),
    responses((status = 200, body = VmView), (status = 404, body = ErrorBody),
        (status = 409, description = "Not in a state that allows it", body = ErrorBody)))]
pub async fn start(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<VmView>, ApiError> {
    action(s, id, VmAction::Start).await
}

/// Stops the guest (only destroy follows).
#[utoipa::path(post, path = "/v1/vms/{id}/stop", tag = "vms",
    params(("id" = String, Path, description = "The VM's id")),
    responses((status = 200, body = VmView), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn stop(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<VmView>, ApiError> {
    action(s, id, VmAction::Stop).await
}

/// Pauses a running VM's vCPUs.
#[utoipa::path(post, path = "/v1/vms/{id}/pause", tag = "vms",
    params(("id" = String, Path, description = "The VM's id")),
    responses((status = 200, body = VmView), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn pause(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<VmView>, ApiError> {
    action(s, id, VmAction::Pause).await
}

/// Resumes a paused VM.
#[utoipa::path(post, path = "/v1/vms/{id}/resume", tag = "vms",
    params(("id" = String, Path, description = "The VM's id")),
    responses((status = 200, body = VmView), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn resume(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<VmView>, ApiError> {
    action(s, id, VmAction::Resume).await
}

/// Snapshots a paused VM (the snapshot outlives it).
#[utoipa::path(post, path = "/v1/vms/{id}/snapshot", tag = "vms", request_body = SnapshotVm,
    params(("id" = String, Path, description = "The VM's id")),
    responses((status = 201, body = SnapshotRef), (status = 404, body = ErrorBody),
        (status = 409, description = "Not paused, or the snapshot id is taken", body = ErrorBody)))]
pub async fn snapshot(
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<SnapshotVm>,
) -> Result<(StatusCode, Json<SnapshotRef>), ApiError> {
    let e = s.engine;
    let r = blocking(move || e.snapshot_vm(&id, req)).await?;
    Ok((StatusCode::CREATED, Json(r)))
}

/// Gives a VM a new id.
#[utoipa::path(post, path = "/v1/vms/{id}/rename", tag = "vms", request_body = RenameVm,
    params(("id" = String, Path, description = "The VM's id")),
    responses((status = 200, body = VmView), (status = 404, body = ErrorBody),
        (status = 409, description = "The new id is taken", body = ErrorBody)))]
pub async fn rename(
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<RenameVm>,
) -> Result<Json<VmView>, ApiError> {
    let e = s.engine;
    Ok(Json(blocking(move || e.rename_vm(&id, req)).await?))
}

/// Every snapshot the host can restore.
#[utoipa::path(get, path = "/v1/snapshots", tag = "vms",
    responses((status = 200, body = Vec<SnapshotRef>)))]
pub async fn list_snapshots(State(s): State<AppState>) -> Result<Json<Vec<SnapshotRef>>, ApiError> {
    let e = s.engine;
    Ok(Json(blocking(move || e.list_snapshots()).await?))
}

/// Deletes a snapshot no template uses.
#[utoipa::path(delete, path = "/v1/snapshots/{id}", tag = "vms",
    params(("id" = String, Path, description = "The snapshot's id")),
    responses((status = 204, description = "Deleted"), (status = 404, body = ErrorBody),
        (status = 409, description = "A template uses it", body = ErrorBody)))]
pub async fn delete_snapshot(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let e = s.engine;
    blocking(move || e.delete_snapshot(&id)).await?;
    Ok(StatusCode::NO_CONTENT)
}
