//! What the API reports about itself: `GET /` ([`InstanceInfo`]), `GET /version`
//! ([`FirecrackerVersion`]) and the body of every error response ([`ApiErrorBody`]).
//! Response bodies: they accept fields they do not know.

use serde::{Deserialize, Serialize};

/// `GET /` — `InstanceInfo`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// Application name (`"Firecracker"`, `"ember-vmm"`).
    pub app_name: String,
    /// The instance id given with `--id`.
    pub id: String,
    /// `Not started`, `Running` or `Paused`.
    pub state: InstanceState,
    /// The VMM's version.
    pub vmm_version: String,
}

/// `InstanceInfo.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InstanceState {
    /// Configured or fresh, never started.
    #[serde(rename = "Not started")]
    NotStarted,
    /// vCPUs running.
    Running,
    /// vCPUs paused.
    Paused,
}

/// `GET /version` — `FirecrackerVersion`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirecrackerVersion {
    /// The VMM's version.
    pub firecracker_version: String,
}

/// `Error` — the body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiErrorBody {
    /// What went wrong.
    pub fault_message: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn responses_round_trip_and_tolerate_new_fields() {
        let info: InstanceInfo = serde_json::from_value(json!({
            "app_name": "Firecracker", "id": "x", "state": "Not started", "vmm_version": "1.17.0",
            "newer_field": 1
        }))
        .unwrap();
        assert_eq!(info.state, InstanceState::NotStarted);
        assert_eq!(
            serde_json::to_value(&info).unwrap(),
            json!({"app_name": "Firecracker", "id": "x", "state": "Not started", "vmm_version": "1.17.0"})
        );
        let e = ApiErrorBody {
            fault_message: "boom \"x\"".into(),
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"fault_message":"boom \"x\""}"#
        );
    }
}
