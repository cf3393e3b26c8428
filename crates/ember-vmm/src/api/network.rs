//! `PUT /network-interfaces/{iface_id}`.

use super::http::{Method, Request};
use ember_fc_api::{NetworkInterface, validate_id};

use super::{RequestError, invalid};
use crate::config::from_json;
use crate::controller::VmmAction;

/// Routes `/network-interfaces/{id}`.
pub fn route(req: &Request, id: &str) -> Result<VmmAction, RequestError> {
    match req.method {
        Method::Put => {
            validate_id("iface_id", id)?;
            let n: NetworkInterface = from_json(&req.body, "network-interface")?;
            n.validate("", Some(id))?;
            Ok(VmmAction::PutNetworkInterface(n))
        }
        _ => Err(invalid(req)),
    }
}
