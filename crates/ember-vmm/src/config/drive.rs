//! What ember-vmm adds to the API's check of `PUT /drives/{id}` (`ember_fc_api::Drive`):
//! virtio-block only (no vhost-user `socket`), synchronous I/O only, and a backing file that
//! exists. The controller also opens the file once, so an unusable one fails the request.

use ember_fc_api::{Drive, FieldError, IoEngine, field_path};

/// The API's check, then ember-vmm's; `field` prefixes the field names in errors (`""` for a
/// request body), `url_id` is the id in the request path, if any.
pub fn validate_drive(d: &Drive, field: &str, url_id: Option<&str>) -> Result<(), FieldError> {
    d.validate(field, url_id)?;
    let f = |name: &str| field_path(field, name);
    if d.socket.is_some() {
        return Err(FieldError::new(
            f("socket"),
            "vhost-user block devices are not supported",
        ));
    }
    if d.io_engine == Some(IoEngine::Async) {
        return Err(FieldError::new(
            f("io_engine"),
            "only \"Sync\" is supported",
        ));
    }
    if let Some(path) = &d.path_on_host
        && !path.exists()
    {
        return Err(FieldError::new(
            f("path_on_host"),
            format!("{}: no such file", path.display()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::from_json;

    #[test]
    fn drive_validation() {
        let err = from_json::<Drive>(br#"{"drive_id": "root"}"#, "drive").unwrap_err();
        assert!(err.message.contains("is_root_device"), "{err}");
        let d: Drive = from_json(
            br#"{"drive_id": "root", "is_root_device": true, "path_on_host": "/nonexistent"}"#,
            "d",
        )
        .unwrap();
        assert_eq!(
            validate_drive(&d, "", Some("root")).unwrap_err().field,
            "path_on_host"
        );
        let ok = Drive::new("root", "/dev/null".into(), true);
        validate_drive(&ok, "", Some("root")).unwrap();
        let vhost = Drive {
            path_on_host: None,
            socket: Some("/vhost.sock".into()),
            ..ok.clone()
        };
        assert_eq!(
            validate_drive(&vhost, "drives[0]", None).unwrap_err().field,
            "drives[0].socket"
        );
        let async_io = Drive {
            io_engine: Some(IoEngine::Async),
            ..ok
        };
        assert_eq!(
            validate_drive(&async_io, "", None).unwrap_err().field,
            "io_engine"
        );
    }

    #[test]
    fn rate_limiter_shapes_and_numbers() {
        let err = from_json::<Drive>(
            br#"{"drive_id": "d", "is_root_device": false, "path_on_host": "/dev/null",
                 "rate_limiter": {"bandwidth": {"size": -1, "refill_time": 100}}}"#,
            "drive",
        )
        .unwrap_err();
        assert!(
            err.field.starts_with("drive.rate_limiter.bandwidth"),
            "{err}"
        );
        let d: Drive = from_json(
            br#"{"drive_id": "d", "is_root_device": false, "path_on_host": "/dev/null",
                 "rate_limiter": {"ops": {"size": 1, "refill_time": 18446744073709552}}}"#,
            "drive",
        )
        .unwrap();
        assert_eq!(
            validate_drive(&d, "", None).unwrap_err().field,
            "rate_limiter.ops.refill_time"
        );
    }
}
