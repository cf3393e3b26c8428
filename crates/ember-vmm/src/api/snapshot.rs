//! `PUT /snapshot/create` and `PUT /snapshot/load`.

use super::http::{Method, Request};
use super::{RequestError, invalid};
use crate::config::from_json;
use crate::controller::VmmAction;

/// Routes `/snapshot/{create,load}`.
pub fn route(req: &Request, which: &str) -> Result<VmmAction, RequestError> {
    match (&req.method, which) {
        (Method::Put, "create") => Ok(VmmAction::CreateSnapshot(from_json(
            &req.body,
            "snapshot/create",
        )?)),
        (Method::Put, "load") => Ok(VmmAction::LoadSnapshot(from_json(
            &req.body,
            "snapshot/load",
        )?)),
        _ => Err(invalid(req)),
    }
}
