//! `PUT /actions` {InstanceStart, SendCtrlAltDel, FlushMetrics}.

use super::http::{Method, Request};
use super::{RequestError, invalid};
use crate::config::actions::InstanceAction;
use crate::config::from_json;
use crate::controller::VmmAction;

/// Routes `/actions`.
pub fn route(req: &Request) -> Result<VmmAction, RequestError> {
    match req.method {
        Method::Put => {
            let a: InstanceAction = from_json(&req.body, "actions")?;
            Ok(VmmAction::Action(a.action_type))
        }
        _ => Err(invalid(req)),
    }
}
