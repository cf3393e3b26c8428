//! `/v1/templates`: build (boot → agent Health → pause → snapshot), list, get, delete.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use ember_core::Template;

use super::AppState;
use super::extract::{ApiJson, blocking};
use crate::engine::templates::BuildTemplate;
use crate::error::{ApiError, ErrorBody};

/// Builds a template: boots its guest, waits for its agent, pauses and snapshots it. Returns
/// once the snapshot is on disk. A guest of kind `image` has its Linux image built first (a
/// debootstrap takes a minute or two the first time; the same source again is cached).
#[utoipa::path(post, path = "/v1/templates", tag = "templates", request_body = BuildTemplate,
    responses(
        (status = 201, description = "Built and ready", body = Template),
        (status = 400, description = "A field is invalid", body = ErrorBody),
        (status = 409, description = "A template of that name exists", body = ErrorBody),
        (status = 503, description = "The guest's agent never answered, or this host cannot build images", body = ErrorBody)))]
pub async fn build(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<BuildTemplate>,
) -> Result<(StatusCode, Json<Template>), ApiError> {
    let e = s.engine;
    let t = blocking(move || e.build_template(req)).await?;
    Ok((StatusCode::CREATED, Json(t)))
}

/// Every template.
#[utoipa::path(get, path = "/v1/templates", tag = "templates",
    responses((status = 200, body = Vec<Template>)))]
pub async fn list(State(s): State<AppState>) -> Result<Json<Vec<Template>>, ApiError> {
    let e = s.engine;
    Ok(Json(blocking(move || e.templates()).await?))
}

/// One template.
#[utoipa::path(get, path = "/v1/templates/{name}", tag = "templates",
    params(("name" = String, Path, description = "The template's name")),
    responses((status = 200, body = Template), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Template>, ApiError> {
    let e = s.engine;
    Ok(Json(blocking(move || e.template(&name)).await?))
}

/// Deletes a template and its snapshot; refused while a pool or a live sandbox uses it.
#[utoipa::path(delete, path = "/v1/templates/{name}", tag = "templates",
    params(("name" = String, Path, description = "The template's name")),
    responses((status = 200, description = "Deleted; the record as it was", body = Template),
        (status = 404, body = ErrorBody),
        (status = 409, description = "In use by a pool or a sandbox", body = ErrorBody)))]
pub async fn delete(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Template>, ApiError> {
    let e = s.engine;
    Ok(Json(blocking(move || e.delete_template(&name)).await?))
}
