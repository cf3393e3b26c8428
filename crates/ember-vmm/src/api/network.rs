//! `PUT /network-interfaces/{iface_id}`.

use super::http::{Method, Request};
use super::{RequestError, invalid};
use crate::config::{NetworkInterfaceConfig, from_json, validate_id};
use crate::controller::VmmAction;

/// Routes `/network-interfaces/{id}`.
pub fn route(req: &Request, id: &str) -> Result<VmmAction, RequestError> {
    match req.method {
        Method::Put => {
            validate_id("iface_id", id)?;
            let n: NetworkInterfaceConfig = from_json(&req.body, "network-interface")?;
            n.validate("", Some(id))?;
            Ok(VmmAction::PutNetworkInterface(n))
        }
        _ => Err(invalid(req)),
    }
}
