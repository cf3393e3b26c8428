//! `GET /` (instance information) and `GET /version`.

use super::http::{Method, Request};
use super::{RequestError, invalid};
use crate::controller::VmmAction;

/// Routes `/`.
pub fn route(req: &Request) -> Result<VmmAction, RequestError> {
    match req.method {
        Method::Get => Ok(VmmAction::GetInstanceInfo),
        _ => Err(invalid(req)),
    }
}

/// Routes `/version`.
pub fn route_version(req: &Request) -> Result<VmmAction, RequestError> {
    match req.method {
        Method::Get => Ok(VmmAction::GetVersion),
        _ => Err(invalid(req)),
    }
}
