//! `PUT /vsock`.

use super::http::{Method, Request};
use super::{RequestError, invalid};
use crate::config::from_json;
use crate::controller::VmmAction;

/// Routes `/vsock`.
pub fn route(req: &Request) -> Result<VmmAction, RequestError> {
    match req.method {
        Method::Put => Ok(VmmAction::PutVsock(from_json(&req.body, "vsock")?)),
        _ => Err(invalid(req)),
    }
}
