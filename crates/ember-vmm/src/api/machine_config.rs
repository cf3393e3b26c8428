//! `GET|PUT|PATCH /machine-config`.

use super::http::{Method, Request};
use super::{RequestError, invalid};
use crate::config::from_json;
use crate::controller::VmmAction;

/// Routes `/machine-config`.
pub fn route(req: &Request) -> Result<VmmAction, RequestError> {
    match req.method {
        Method::Get => Ok(VmmAction::GetMachineConfig),
        Method::Put => Ok(VmmAction::PutMachineConfig(from_json(
            &req.body,
            "machine-config",
        )?)),
        Method::Patch => Ok(VmmAction::PatchMachineConfig(from_json(
            &req.body,
            "machine-config",
        )?)),
        _ => Err(invalid(req)),
    }
}
