//! [`SnapshotRef`]: a reference to a snapshot on the host (state file + memory file) and how to
//! restore it — resumed or paused, with network and vsock overrides for the new owner.

use std::collections::HashSet;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::VmError;
use crate::id::{SnapshotId, validate_id};
use crate::spec::{validate_ifname, validate_path, validate_uds_path};
use crate::stack::StackKey;

/// A snapshot and the options for restoring it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRef {
    /// The snapshot's id.
    pub snapshot_id: SnapshotId,
    /// The stack (template) that owns it; snapshots outlive the VM they were taken from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<StackKey>,
    /// The VM state file (vCPU, device and VM state).
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub state_path: PathBuf,
    /// The guest memory file.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub mem_path: PathBuf,
    /// Resume the vCPUs right after restore (true) or leave the VM paused (false).
    #[serde(default = "default_resume")]
    pub resume: bool,
    /// Swap network interfaces' host TAP devices at restore (Firecracker's
    /// `network_overrides`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network_overrides: Vec<NetworkOverride>,
    /// Use another host Unix socket for the vsock device at restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_override: Option<VsockOverride>,
}

fn default_resume() -> bool {
    true
}

impl SnapshotRef {
    /// A reference with no overrides that resumes on restore.
    pub fn new(
        snapshot_id: SnapshotId,
        stack: Option<StackKey>,
        state_path: PathBuf,
        mem_path: PathBuf,
    ) -> Self {
        Self {
            snapshot_id,
            stack,
            state_path,
            mem_path,
            resume: true,
            network_overrides: Vec::new(),
            vsock_override: None,
        }
    }

    /// Checks paths and overrides; errors name the field under `restore_from`.
    pub fn validate(&self) -> Result<(), VmError> {
        validate_path("restore_from.state_path", &self.state_path)?;
        validate_path("restore_from.mem_path", &self.mem_path)?;
        let mut ids = HashSet::new();
        for (i, o) in self.network_overrides.iter().enumerate() {
            let field = format!("restore_from.network_overrides[{i}]");
            validate_id(&format!("{field}.iface_id"), &o.iface_id)?;
            validate_ifname(&format!("{field}.host_dev_name"), &o.host_dev_name)?;
            if !ids.insert(o.iface_id.as_str()) {
                return Err(VmError::invalid_spec(
                    format!("{field}.iface_id"),
                    format!("{:?} is overridden twice", o.iface_id),
                ));
            }
        }
        if let Some(v) = &self.vsock_override {
            validate_uds_path("restore_from.vsock_override.uds_path", &v.uds_path)?;
        }
        Ok(())
    }
}

/// Replaces the host TAP device of one network interface at restore.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkOverride {
    /// The interface in the snapshot.
    pub iface_id: String,
    /// The TAP device to attach it to.
    pub host_dev_name: String,
}

/// Replaces the vsock device's host Unix socket at restore.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockOverride {
    /// The new host socket path.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub uds_path: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_defaults_to_true_and_overrides_validate() {
        let json = r#"{"snapshot_id":"s1","state_path":"/s","mem_path":"/m"}"#;
        let snap: SnapshotRef = serde_json::from_str(json).unwrap();
        assert!(snap.resume);
        snap.validate().unwrap();
        let mut twice = snap.clone();
        let o = NetworkOverride {
            iface_id: "eth0".into(),
            host_dev_name: "tap0".into(),
        };
        twice.network_overrides = vec![o.clone(), o];
        let err = twice.validate().unwrap_err().to_string();
        assert!(err.contains("network_overrides[1].iface_id"), "{err}");
        let mut empty = snap;
        empty.mem_path = PathBuf::new();
        assert!(
            empty
                .validate()
                .unwrap_err()
                .to_string()
                .contains("mem_path")
        );
    }
}
