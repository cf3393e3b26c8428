//! `PUT /vsock` ([`Vsock`]): the hybrid vsock device, reached through a host Unix socket.
//!
//! API-level checks: the guest CID (3 or more: 0-2 are reserved) and a socket path that a Unix
//! socket can have (1 to 107 bytes).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::field::FieldError;

/// Longest Unix socket path (`sun_path` holds 108 bytes with the terminating NUL).
pub const MAX_UDS_PATH_LEN: usize = 107;

/// `PUT /vsock` — `Vsock`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vsock {
    /// Guest context id (3 or more).
    pub guest_cid: u32,
    /// Host socket for host-initiated connections; guest-initiated ones go to
    /// `<uds_path>_<port>`.
    pub uds_path: PathBuf,
    /// Deprecated device id (ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_id: Option<String>,
}

impl Vsock {
    /// A vsock device for `guest_cid` on `uds_path`.
    pub fn new(guest_cid: u32, uds_path: PathBuf) -> Self {
        Vsock {
            guest_cid,
            uds_path,
            vsock_id: None,
        }
    }

    /// API-level checks: the CID and the socket path.
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.guest_cid < 3 {
            return Err(FieldError::new(
                "guest_cid",
                format!("must be at least 3 (got {})", self.guest_cid),
            ));
        }
        let len = self.uds_path.as_os_str().len();
        if len == 0 {
            return Err(FieldError::new("uds_path", "must not be empty"));
        }
        if len > MAX_UDS_PATH_LEN {
            return Err(FieldError::new(
                "uds_path",
                "longer than a Unix socket path can be (107 bytes)",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cid_and_path() {
        let v = Vsock::new(3, "/tmp/v.sock".into());
        v.validate().unwrap();
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            r#"{"guest_cid":3,"uds_path":"/tmp/v.sock"}"#
        );
        assert_eq!(
            Vsock::new(2, "/v".into()).validate().unwrap_err().field,
            "guest_cid"
        );
        assert_eq!(
            Vsock::new(3, "".into()).validate().unwrap_err().field,
            "uds_path"
        );
        let long = format!("/{}", "x".repeat(107));
        assert!(Vsock::new(3, long.into()).validate().is_err());
    }
}
