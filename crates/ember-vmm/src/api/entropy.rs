//! `PUT /entropy`: the virtio-rng device and its rate limiter.

use super::http::{Method, Request};
use ember_fc_api::EntropyDevice;

use super::{RequestError, invalid};
use crate::config::from_json;
use crate::controller::VmmAction;

/// Routes `/entropy`.
pub fn route(req: &Request) -> Result<VmmAction, RequestError> {
    match req.method {
        Method::Put => {
            let e: EntropyDevice = from_json(&req.body, "entropy")?;
            e.validate("entropy")?;
            Ok(VmmAction::PutEntropy(e))
        }
        _ => Err(invalid(req)),
    }
}
