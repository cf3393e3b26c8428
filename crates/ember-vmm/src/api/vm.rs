//! `PATCH /vm` {Paused, Resumed} and `GET /vm/config`.

use super::http::{Method, Request};
use ember_fc_api::Vm;

use super::{RequestError, invalid};
use crate::config::from_json;
use crate::controller::VmmAction;

/// Routes `/vm`.
pub fn route(req: &Request) -> Result<VmmAction, RequestError> {
    match req.method {
        Method::Patch => {
            let s: Vm = from_json(&req.body, "vm")?;
            Ok(VmmAction::SetVmState(s.state))
        }
        _ => Err(invalid(req)),
    }
}

/// Routes `/vm/config`.
pub fn route_config(req: &Request) -> Result<VmmAction, RequestError> {
    match req.method {
        Method::Get => Ok(VmmAction::GetVmConfig),
        _ => Err(invalid(req)),
    }
}
