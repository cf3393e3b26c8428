//! `PUT /actions` {InstanceStart, SendCtrlAltDel, FlushMetrics}.

use super::http::{Method, Request};
use ember_fc_api::InstanceActionInfo;

use super::{RequestError, invalid};
use crate::config::from_json;
use crate::controller::VmmAction;

/// Routes `/actions`.
pub fn route(req: &Request) -> Result<VmmAction, RequestError> {
    match req.method {
        Method::Put => {
            let a: InstanceActionInfo = from_json(&req.body, "actions")?;
            Ok(VmmAction::Action(a.action_type))
        }
        _ => Err(invalid(req)),
    }
}
