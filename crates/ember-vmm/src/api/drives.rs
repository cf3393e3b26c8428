//! `PUT /drives/{drive_id}`.

use super::http::{Method, Request};
use ember_fc_api::{Drive, validate_id};

use super::{RequestError, invalid};
use crate::config::{from_json, validate_drive};
use crate::controller::VmmAction;

/// Routes `/drives/{id}`.
pub fn route(req: &Request, id: &str) -> Result<VmmAction, RequestError> {
    match req.method {
        Method::Put => {
            validate_id("drive_id", id)?;
            let d: Drive = from_json(&req.body, "drive")?;
            validate_drive(&d, "", Some(id))?;
            Ok(VmmAction::PutDrive(d))
        }
        _ => Err(invalid(req)),
    }
}
