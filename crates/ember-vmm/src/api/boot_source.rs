//! `PUT /boot-source`.

use super::http::{Method, Request};
use super::{RequestError, invalid};
use crate::config::from_json;
use crate::controller::VmmAction;

/// Routes `/boot-source`.
pub fn route(req: &Request) -> Result<VmmAction, RequestError> {
    match req.method {
        Method::Put => Ok(VmmAction::PutBootSource(from_json(
            &req.body,
            "boot-source",
        )?)),
        _ => Err(invalid(req)),
    }
}
