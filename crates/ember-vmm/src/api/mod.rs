//! The Firecracker-compatible REST API over a Unix socket.
//!
//! [`http`] parses HTTP/1.1, [`server`] runs the socket on the main thread's epoll loop, and
//! one module per resource turns a request into a [`VmmAction`] (method check, body shape
//! with field-naming errors). The controller executes it; every failure becomes
//! `400 {"fault_message": ...}`, success is `204` or `200` with JSON.
//!
//! Routes: `GET /`, `GET /version`, `PUT /boot-source`, `GET|PUT|PATCH /machine-config`,
//! `PUT /drives/{id}`, `PUT /network-interfaces/{id}`, `PUT /vsock`, `PUT /entropy`,
//! `PUT /actions`,
//! `PATCH /vm`, `GET /vm/config`, `PUT /snapshot/create`, `PUT /snapshot/load`, and the ember
//! extensions `GET /ember/timings` and `GET /ember/devices`.

pub mod actions;
pub mod boot_source;
pub mod drives;
pub mod entropy;
pub mod http;
pub mod instance;
pub mod machine_config;
pub mod network;
pub mod server;
pub mod snapshot;
pub mod vm;
pub mod vsock;

use ember_fc_api::FieldError;

use self::http::{Method, Request, Response};
use crate::controller::{ActionOk, Controller, VmmAction};

/// Why a request did not become an action.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// No such route or method.
    #[error("Invalid request method and/or path: {method} {path}.")]
    Route {
        /// The method.
        method: String,
        /// The path.
        path: String,
    },
    /// The body is not acceptable.
    #[error(transparent)]
    Body(#[from] FieldError),
}

fn invalid(req: &Request) -> RequestError {
    RequestError::Route {
        method: req.method.to_string(),
        path: req.path.clone(),
    }
}

/// Maps a request onto an action.
pub fn route(req: &Request) -> Result<VmmAction, RequestError> {
    let path = if req.path.len() > 1 {
        req.path.trim_end_matches('/')
    } else {
        req.path.as_str()
    };
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let first = parts.next().unwrap_or("");
    let rest = parts.next();
    match (first, rest) {
        ("", None) => instance::route(req),
        ("version", None) => instance::route_version(req),
        ("machine-config", None) => machine_config::route(req),
        ("boot-source", None) => boot_source::route(req),
        ("drives", Some(id)) => drives::route(req, id),
        ("network-interfaces", Some(id)) => network::route(req, id),
        ("vsock", None) => vsock::route(req),
        ("entropy", None) => entropy::route(req),
        ("actions", None) => actions::route(req),
        ("vm", None) => vm::route(req),
        ("vm", Some("config")) => vm::route_config(req),
        ("snapshot", Some(which)) => snapshot::route(req, which),
        ("ember", Some("timings")) if req.method == Method::Get => Ok(VmmAction::GetTimings),
        ("ember", Some("devices")) if req.method == Method::Get => Ok(VmmAction::GetDevices),
        _ => Err(invalid(req)),
    }
}

/// Handles one request end to end.
pub fn handle_request(controller: &mut Controller, req: Request, received_ns: u64) -> Response {
    let result = route(&req).map_err(|e| e.to_string()).and_then(|action| {
        controller
            .handle(action, received_ns)
            .map_err(|e| e.to_string())
    });
    match result {
        Ok(ActionOk::NoContent) => Response::no_content(),
        Ok(ActionOk::Json(v)) => Response::json(&v),
        Err(message) => {
            tracing::info!(method = %req.method, path = %req.path, %message, "request failed");
            Response::bad_request(&message)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: Method, path: &str, body: &str) -> Request {
        Request {
            method,
            path: path.into(),
            body: body.as_bytes().to_vec(),
            keep_alive: true,
        }
    }

    #[test]
    fn routes() {
        assert!(matches!(
            route(&req(Method::Get, "/", "")),
            Ok(VmmAction::GetInstanceInfo)
        ));
        assert!(matches!(
            route(&req(Method::Get, "/vm/config", "")),
            Ok(VmmAction::GetVmConfig)
        ));
        assert!(matches!(
            route(&req(Method::Patch, "/vm", r#"{"state": "Paused"}"#)),
            Ok(VmmAction::SetVmState(_))
        ));
        let e = route(&req(Method::Get, "/nope", ""))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "Invalid request method and/or path: GET /nope.");
        assert!(route(&req(Method::Put, "/", "")).is_err());
        let e = route(&req(
            Method::Put,
            "/actions",
            r#"{"action_type": "Explode"}"#,
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("action_type"), "{e}");
        let e = route(&req(
            Method::Put,
            "/drives/a",
            r#"{"drive_id": "b", "is_root_device": false, "path_on_host": "/dev/null"}"#,
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("does not match"), "{e}");
    }
}
