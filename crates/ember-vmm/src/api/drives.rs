//! `PUT /drives/{drive_id}`.

use super::http::{Method, Request};
use super::{RequestError, invalid};
use crate::config::{DriveConfig, from_json, validate_id};
use crate::controller::VmmAction;

/// Routes `/drives/{id}`.
pub fn route(req: &Request, id: &str) -> Result<VmmAction, RequestError> {
    match req.method {
        Method::Put => {
            validate_id("drive_id", id)?;
            let d: DriveConfig = from_json(&req.body, "drive")?;
            d.validate("", Some(id))?;
            Ok(VmmAction::PutDrive(d))
        }
        _ => Err(invalid(req)),
    }
}
