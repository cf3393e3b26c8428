//! `/v1/pools`: a warm pool per template — set its depths, read its counts, delete it (its idle
//! VMs are destroyed).

use axum::Json;
use axum::extract::{Path, State};
use ember_core::PoolSpec;

use super::AppState;
use super::extract::{ApiJson, blocking};
use crate::engine::pools::{PoolStatus, SetPool};
use crate::error::{ApiError, ErrorBody};

/// Every pool with its counts.
#[utoipa::path(get, path = "/v1/pools", tag = "pools",
    responses((status = 200, body = Vec<PoolStatus>)))]
pub async fn list(State(s): State<AppState>) -> Result<Json<Vec<PoolStatus>>, ApiError> {
    let e = s.engine;
    Ok(Json(blocking(move || e.pools()).await?))
}

/// Creates or changes a template's pool; it fills in the background.
#[utoipa::path(put, path = "/v1/pools/{template}", tag = "pools", request_body = SetPool,
    params(("template" = String, Path, description = "The template whose VMs the pool keeps")),
    responses((status = 200, body = PoolStatus),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "The template is not ready", body = ErrorBody)))]
pub async fn set(
    State(s): State<AppState>,
    Path(template): Path<String>,
    ApiJson(req): ApiJson<SetPool>,
) -> Result<Json<PoolStatus>, ApiError> {
    let e = s.engine;
    Ok(Json(blocking(move || e.set_pool(&template, req)).await?))
}

/// One pool with its counts.
#[utoipa::path(get, path = "/v1/pools/{template}", tag = "pools",
    params(("template" = String, Path, description = "The pool's template")),
    responses((status = 200, body = PoolStatus), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(s): State<AppState>,
    Path(template): Path<String>,
) -> Result<Json<PoolStatus>, ApiError> {
    let e = s.engine;
    Ok(Json(blocking(move || e.pool_status(&template)).await?))
}

/// Deletes a pool and destroys its idle VMs (sandboxes already handed out keep running).
#[utoipa::path(delete, path = "/v1/pools/{template}", tag = "pools",
    params(("template" = String, Path, description = "The pool's template")),
    responses((status = 200, description = "Deleted; the pool as it was", body = PoolSpec),
        (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(s): State<AppState>,
    Path(template): Path<String>,
) -> Result<Json<PoolSpec>, ApiError> {
    let e = s.engine;
    Ok(Json(blocking(move || e.delete_pool(&template)).await?))
}
