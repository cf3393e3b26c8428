//! The HTTP API: JSON under `/v1` (templates, pools, sandboxes, raw VMs and snapshots),
//! `/healthz`, `/metrics` and `/openapi.json` — axum handlers over the [`Engine`], each
//! described by `#[utoipa::path]` so the OpenAPI document is generated from the code
//! ([`openapi`]; committed as `crates/emberd/openapi.json` and checked by a test).
//!
//! - [`extract`]: the JSON body and query extractors (errors in the API's shape, naming the
//!   field), and running engine calls on blocking threads;
//! - [`observe`]: request metrics by matched route, and the bearer token of TCP listeners;
//! - one module per resource: [`templates`], [`pools`], [`sandboxes`], [`vms`], [`system`].

pub mod extract;
pub mod observe;
pub mod pools;
pub mod sandboxes;
pub mod system;
pub mod templates;
pub mod vms;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{Method, Uri};
use utoipa::OpenApi;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

use crate::engine::Engine;
use crate::error::{ApiError, ErrorBody};

/// Largest JSON body accepted, bytes.
pub const MAX_JSON_BODY: usize = 1 << 20;

/// What every handler gets.
#[derive(Clone)]
pub struct AppState {
    /// The engine.
    pub engine: Arc<Engine>,
    /// When the daemon started serving.
    pub started: Instant,
    /// Facts about this daemon for `/v1/info`.
    pub about: Arc<system::About>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "emberd",
        description = "ember's host daemon: templates, warm pools and sandboxes (KVM microVMs \
            handed to tenants in milliseconds), and the raw VM contract. Errors are \
            `{code, message}` with a 4xx for the caller's mistakes (the message names the \
            field or id) and a 5xx only for host faults. Over TCP every request needs \
            `Authorization: Bearer <token>`.",
        license(name = "Apache-2.0")
    ),
    components(schemas(ErrorBody)),
    tags(
        (name = "templates", description = "Guests booted once and snapshotted"),
        (name = "pools", description = "Warm VMs kept ready per template"),
        (name = "sandboxes", description = "A tenant's VM: create, exec, files, pause, kill"),
        (name = "vms", description = "The raw VmProvider contract"),
        (name = "system", description = "Health, facts, metrics")
    )
)]
struct ApiDoc;

fn router_and_doc() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let files_limit = DefaultBodyLimit::disable();
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(templates::build, templates::list))
        .routes(routes!(templates::get, templates::delete))
        .routes(routes!(pools::list))
        .routes(routes!(pools::set, pools::get, pools::delete))
        .routes(routes!(sandboxes::create, sandboxes::list))
        .routes(routes!(sandboxes::get, sandboxes::kill))
        .routes(routes!(sandboxes::exec))
        .routes(routes!(sandboxes::put_file, sandboxes::get_file).layer(files_limit))
        .routes(routes!(sandboxes::pause))
        .routes(routes!(sandboxes::resume))
        .routes(routes!(sandboxes::set_network))
        .routes(routes!(sandboxes::expose_port))
        .routes(routes!(sandboxes::set_timeout))
        .routes(routes!(vms::create, vms::list))
        .routes(routes!(vms::get, vms::destroy))
        .routes(routes!(vms::start))
        .routes(routes!(vms::stop))
        .routes(routes!(vms::pause))
        .routes(routes!(vms::resume))
        .routes(routes!(vms::snapshot))
        .routes(routes!(vms::rename))
        .routes(routes!(vms::list_snapshots))
        .routes(routes!(vms::delete_snapshot))
        .routes(routes!(system::healthz))
        .routes(routes!(system::info))
        .routes(routes!(system::metrics))
        .split_for_parts()
}

/// The OpenAPI document of the API, generated from the handlers.
pub fn openapi() -> utoipa::openapi::OpenApi {
    router_and_doc().1
}

/// The document as the committed file holds it (pretty JSON and a final newline).
pub fn openapi_json() -> String {
    let mut s = openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    s.push('\n');
    s
}

/// Every route, with its state: the request metrics and JSON errors for unknown routes and
/// methods; `token` (TCP listeners) makes every request carry `Authorization: Bearer <token>`.
pub fn router(state: AppState, token: Option<Arc<str>>) -> Router {
    let (routes, doc) = router_and_doc();
    let doc = Arc::new(doc);
    let mut app = routes
        .route(
            "/openapi.json",
            axum::routing::get(move || {
                let doc = Arc::clone(&doc);
                async move { axum::Json(doc.as_ref().clone()) }
            }),
        )
        .fallback(unknown_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            observe::record,
        ));
    if let Some(token) = token {
        app = app.layer(axum::middleware::from_fn_with_state(
            token,
            observe::require_token,
        ));
    }
    app.with_state(state)
}

async fn unknown_route(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route {method} {}", uri.path()))
}

async fn wrong_method(method: Method, uri: Uri) -> ApiError {
    ApiError::method_not_allowed(format!("{} does not accept {method}", uri.path()))
}
