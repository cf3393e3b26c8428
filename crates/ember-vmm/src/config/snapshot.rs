//! `PUT /snapshot/create` and `PUT /snapshot/load` bodies.

use serde::Deserialize;

use super::ConfigError;
use super::devices::validate_host_dev_name;

/// Snapshot kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum SnapshotType {
    /// State and all of memory.
    Full,
    /// Only dirty pages (not supported).
    Diff,
}

/// `PUT /snapshot/create`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCreateParams {
    /// Where the VM state goes.
    pub snapshot_path: String,
    /// Where guest memory goes.
    pub mem_file_path: String,
    /// Full (default) or Diff.
    #[serde(default)]
    pub snapshot_type: Option<SnapshotType>,
    /// Deprecated in Firecracker; ignored.
    #[serde(default)]
    pub version: Option<String>,
}

impl SnapshotCreateParams {
    /// Checks the paths and type.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.snapshot_type == Some(SnapshotType::Diff) {
            return Err(ConfigError::new(
                "snapshot_type",
                "Diff snapshots are not supported",
            ));
        }
        if self.snapshot_path.is_empty() {
            return Err(ConfigError::new("snapshot_path", "must not be empty"));
        }
        if self.mem_file_path.is_empty() {
            return Err(ConfigError::new("mem_file_path", "must not be empty"));
        }
        if self.snapshot_path == self.mem_file_path {
            return Err(ConfigError::new(
                "mem_file_path",
                "must differ from snapshot_path",
            ));
        }
        Ok(())
    }
}

/// Memory backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum MemBackendType {
    /// A memory file.
    File,
    /// A userfaultfd handler (not supported).
    Uffd,
}

/// `mem_backend`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemBackend {
    /// Kind.
    pub backend_type: MemBackendType,
    /// The file.
    pub backend_path: String,
}

/// One `network_overrides` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkOverride {
    /// Interface to change.
    pub iface_id: String,
    /// Its new TAP device.
    pub host_dev_name: String,
}

/// `vsock_override`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockOverride {
    /// The new socket path.
    pub uds_path: String,
}

/// `PUT /snapshot/load`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotLoadParams {
    /// The VM state file.
    pub snapshot_path: String,
    /// The memory backend (or the deprecated `mem_file_path`).
    #[serde(default)]
    pub mem_backend: Option<MemBackend>,
    /// Deprecated form of `mem_backend`.
    #[serde(default)]
    pub mem_file_path: Option<String>,
    /// Deprecated; must be false.
    #[serde(default)]
    pub enable_diff_snapshots: Option<bool>,
    /// Must be false.
    #[serde(default)]
    pub track_dirty_pages: Option<bool>,
    /// Resume right after loading.
    #[serde(default)]
    pub resume_vm: Option<bool>,
    /// TAP devices to use instead of the snapshot's.
    #[serde(default)]
    pub network_overrides: Option<Vec<NetworkOverride>>,
    /// vsock socket path to use instead of the snapshot's.
    #[serde(default)]
    pub vsock_override: Option<VsockOverride>,
    /// Must be false (kvmclock continues from the saved value).
    #[serde(default)]
    pub clock_realtime: Option<bool>,
    /// Only "Snapshot" or "None".
    #[serde(default)]
    pub huge_pages: Option<String>,
    /// ember extension: copy the memory file into anonymous memory instead of mapping it
    /// copy-on-write (slower to load, faster first touches, no page sharing).
    #[serde(default)]
    pub ember_eager_load: Option<bool>,
}

impl SnapshotLoadParams {
    /// Checks the combination of fields; returns the memory file path.
    pub fn validate(&self) -> Result<&str, ConfigError> {
        if self.snapshot_path.is_empty() {
            return Err(ConfigError::new("snapshot_path", "must not be empty"));
        }
        let mem = match (&self.mem_backend, &self.mem_file_path) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    "mem_backend",
                    "give either mem_backend or mem_file_path, not both",
                ));
            }
            (None, None) => {
                return Err(ConfigError::new(
                    "mem_backend",
                    "missing field `mem_backend`",
                ));
            }
            (Some(b), None) => {
                if b.backend_type == MemBackendType::Uffd {
                    return Err(ConfigError::new(
                        "mem_backend.backend_type",
                        "Uffd is not supported",
                    ));
                }
                b.backend_path.as_str()
            }
            (None, Some(p)) => p.as_str(),
        };
        if mem.is_empty() {
            return Err(ConfigError::new(
                "mem_backend.backend_path",
                "must not be empty",
            ));
        }
        if self.enable_diff_snapshots == Some(true) || self.track_dirty_pages == Some(true) {
            return Err(ConfigError::new(
                "track_dirty_pages",
                "dirty page tracking is not supported",
            ));
        }
        if self.clock_realtime == Some(true) {
            return Err(ConfigError::new("clock_realtime", "not supported"));
        }
        if let Some(h) = &self.huge_pages
            && h != "Snapshot"
            && h != "None"
        {
            return Err(ConfigError::new(
                "huge_pages",
                "only \"Snapshot\" or \"None\" are supported",
            ));
        }
        for (i, o) in self.network_overrides.iter().flatten().enumerate() {
            validate_host_dev_name(
                &format!("network_overrides[{i}].host_dev_name"),
                &o.host_dev_name,
            )?;
        }
        if let Some(v) = &self.vsock_override
            && v.uds_path.is_empty()
        {
            return Err(ConfigError::new(
                "vsock_override.uds_path",
                "must not be empty",
            ));
        }
        Ok(mem)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::from_json;

    #[test]
    fn load_params() {
        let p: SnapshotLoadParams = from_json(
            br#"{"snapshot_path": "/s", "mem_backend": {"backend_type": "File", "backend_path": "/m"}, "resume_vm": true}"#,
            "snapshot/load",
        )
        .unwrap();
        assert_eq!(p.validate().unwrap(), "/m");
        let p: SnapshotLoadParams = from_json(br#"{"snapshot_path": "/s"}"#, "l").unwrap();
        assert_eq!(p.validate().unwrap_err().field, "mem_backend");
        let err = from_json::<SnapshotLoadParams>(br#"{"snapshot_path": "/s", "mem_backend": {"backend_type": "Foo", "backend_path": "/m"}}"#, "snapshot/load").unwrap_err();
        assert_eq!(err.field, "snapshot/load.mem_backend.backend_type");
        let c: SnapshotCreateParams = from_json(
            br#"{"snapshot_path": "/s", "mem_file_path": "/m", "snapshot_type": "Diff"}"#,
            "c",
        )
        .unwrap();
        assert_eq!(c.validate().unwrap_err().field, "snapshot_type");
    }
}
