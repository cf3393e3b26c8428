//! `PUT /snapshot/create` ([`SnapshotCreateParams`]) and `PUT /snapshot/load`
//! ([`SnapshotLoadParams`] with its [`MemoryBackend`] and overrides).
//!
//! API-level checks: non-empty paths; distinct state and memory files on create; on load,
//! exactly one of `mem_backend` and the deprecated `mem_file_path`, well-formed TAP names in
//! `network_overrides` and a non-empty `vsock_override`. Which snapshot types, memory backends
//! and load options a VMM supports, and whether the files are there and fit, is the VMM's to
//! check.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::field::{FieldError, validate_host_dev_name};

/// `SnapshotCreateParams.snapshot_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotType {
    /// The microVM state and all of guest memory (the default).
    Full,
    /// Only pages dirtied since the last snapshot.
    Diff,
}

/// `PUT /snapshot/create` — `SnapshotCreateParams` (the microVM must be paused).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCreateParams {
    /// Where the guest memory goes.
    pub mem_file_path: PathBuf,
    /// Where the microVM state goes.
    pub snapshot_path: PathBuf,
    /// `Full` (default) or `Diff`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_type: Option<SnapshotType>,
    /// Deprecated snapshot format version (ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

impl SnapshotCreateParams {
    /// API-level checks: both paths given, and different.
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.snapshot_path.as_os_str().is_empty() {
            return Err(FieldError::new("snapshot_path", "must not be empty"));
        }
        if self.mem_file_path.as_os_str().is_empty() {
            return Err(FieldError::new("mem_file_path", "must not be empty"));
        }
        if self.snapshot_path.as_os_str() == self.mem_file_path.as_os_str() {
            return Err(FieldError::new(
                "mem_file_path",
                "must differ from snapshot_path",
            ));
        }
        Ok(())
    }
}

/// `MemoryBackend.backend_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemoryBackendType {
    /// A memory file (Firecracker maps it `MAP_PRIVATE`: copy-on-write).
    File,
    /// A userfaultfd page-fault handler listening on a Unix socket.
    Uffd,
}

/// `MemoryBackend`: where a loaded snapshot's guest memory comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryBackend {
    /// `File` or `Uffd`.
    pub backend_type: MemoryBackendType,
    /// The memory file (`File`) or the page-fault handler's socket (`Uffd`).
    pub backend_path: PathBuf,
}

/// `NetworkOverride`: attach an interface of the snapshot to another TAP device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkOverride {
    /// The interface in the snapshot.
    pub iface_id: String,
    /// The TAP device to attach it to.
    pub host_dev_name: String,
}

/// `VsockOverride`: give the snapshot's vsock device another host socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockOverride {
    /// The new host socket path.
    pub uds_path: PathBuf,
}

/// `PUT /snapshot/load` — `SnapshotLoadParams`. Only accepted by a fresh process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotLoadParams {
    /// The microVM state file.
    pub snapshot_path: PathBuf,
    /// Where guest memory comes from (exactly one of this and `mem_file_path`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_backend: Option<MemoryBackend>,
    /// Deprecated form of a `File` `mem_backend`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_file_path: Option<PathBuf>,
    /// Deprecated name of `track_dirty_pages`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_diff_snapshots: Option<bool>,
    /// Dirty page tracking for later diff snapshots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
    /// Resume the vCPUs once loaded (default: stay paused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_vm: Option<bool>,
    /// Re-attach interfaces to other TAP devices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_overrides: Option<Vec<NetworkOverride>>,
    /// Use another Unix socket for the vsock device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_override: Option<VsockOverride>,
    /// x86_64: advance kvmclock by the wall-clock time since the snapshot was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_realtime: Option<bool>,
    /// Not in Firecracker's swagger; ember-vmm accepts it for compatibility (`Snapshot` or
    /// `None` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huge_pages: Option<String>,
    /// ember extension: copy the memory file into anonymous memory instead of mapping it
    /// copy-on-write (slower to load, faster first touches, no page sharing). Leave unset for
    /// a real Firecracker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ember_eager_load: Option<bool>,
}

impl SnapshotLoadParams {
    /// A load of `snapshot_path` with guest memory from `mem_backend`, every option unset.
    pub fn new(snapshot_path: PathBuf, mem_backend: MemoryBackend) -> Self {
        SnapshotLoadParams {
            snapshot_path,
            mem_backend: Some(mem_backend),
            mem_file_path: None,
            enable_diff_snapshots: None,
            track_dirty_pages: None,
            resume_vm: None,
            network_overrides: None,
            vsock_override: None,
            clock_realtime: None,
            huge_pages: None,
            ember_eager_load: None,
        }
    }

    /// API-level checks; returns the memory path (`mem_backend.backend_path` or the
    /// deprecated `mem_file_path`).
    pub fn validate(&self) -> Result<&Path, FieldError> {
        if self.snapshot_path.as_os_str().is_empty() {
            return Err(FieldError::new("snapshot_path", "must not be empty"));
        }
        let mem = match (&self.mem_backend, &self.mem_file_path) {
            (Some(_), Some(_)) => {
                return Err(FieldError::new(
                    "mem_backend",
                    "give either mem_backend or mem_file_path, not both",
                ));
            }
            (None, None) => {
                return Err(FieldError::new(
                    "mem_backend",
                    "missing field `mem_backend`",
                ));
            }
            (Some(b), None) => b.backend_path.as_path(),
            (None, Some(p)) => p.as_path(),
        };
        if mem.as_os_str().is_empty() {
            return Err(FieldError::new(
                "mem_backend.backend_path",
                "must not be empty",
            ));
        }
        for (i, o) in self.network_overrides.iter().flatten().enumerate() {
            validate_host_dev_name(
                &format!("network_overrides[{i}].host_dev_name"),
                &o.host_dev_name,
            )?;
        }
        if let Some(v) = &self.vsock_override
            && v.uds_path.as_os_str().is_empty()
        {
            return Err(FieldError::new(
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
    use serde_json::json;

    fn file_backend(path: &str) -> MemoryBackend {
        MemoryBackend {
            backend_type: MemoryBackendType::File,
            backend_path: path.into(),
        }
    }

    #[test]
    fn load_params_match_the_swagger_shape() {
        let mut p = SnapshotLoadParams::new("/s/state".into(), file_backend("/s/mem"));
        p.resume_vm = Some(false);
        p.network_overrides = Some(vec![NetworkOverride {
            iface_id: "eth0".into(),
            host_dev_name: "tap7".into(),
        }]);
        p.vsock_override = Some(VsockOverride {
            uds_path: "/r/v.sock".into(),
        });
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            json!({
                "snapshot_path": "/s/state",
                "mem_backend": {"backend_type": "File", "backend_path": "/s/mem"},
                "resume_vm": false,
                "network_overrides": [{"iface_id": "eth0", "host_dev_name": "tap7"}],
                "vsock_override": {"uds_path": "/r/v.sock"}
            })
        );
        assert_eq!(p.validate().unwrap(), Path::new("/s/mem"));
        let bare = SnapshotLoadParams::new("/s/state".into(), file_backend("/s/mem"));
        let v = serde_json::to_value(&bare).unwrap();
        for absent in [
            "network_overrides",
            "network_interfaces",
            "vsock_override",
            "resume_vm",
            "ember_eager_load",
        ] {
            assert!(v.get(absent).is_none(), "{absent}");
        }
    }

    #[test]
    fn load_checks() {
        let p: SnapshotLoadParams = serde_json::from_value(json!({"snapshot_path": "/s"})).unwrap();
        assert_eq!(p.validate().unwrap_err().field, "mem_backend");
        let both = SnapshotLoadParams {
            mem_file_path: Some("/m".into()),
            ..SnapshotLoadParams::new("/s".into(), file_backend("/m"))
        };
        assert!(both.validate().unwrap_err().message.contains("not both"));
        let old: SnapshotLoadParams =
            serde_json::from_value(json!({"snapshot_path": "/s", "mem_file_path": "/m"})).unwrap();
        assert_eq!(old.validate().unwrap(), Path::new("/m"));
        let bad_tap = SnapshotLoadParams {
            network_overrides: Some(vec![NetworkOverride {
                iface_id: "eth0".into(),
                host_dev_name: "a/b".into(),
            }]),
            ..old.clone()
        };
        assert_eq!(
            bad_tap.validate().unwrap_err().field,
            "network_overrides[0].host_dev_name"
        );
        assert!(
            serde_json::from_value::<SnapshotLoadParams>(json!({"snapshot_path": "/s",
                "mem_backend": {"backend_type": "Foo", "backend_path": "/m"}}))
            .is_err()
        );
        assert!(
            serde_json::from_value::<SnapshotLoadParams>(
                json!({"snapshot_path": "/s", "mem_file_path": "/m", "network_interfaces": []})
            )
            .is_err()
        );
    }

    #[test]
    fn create_checks() {
        let c = SnapshotCreateParams {
            mem_file_path: "/m".into(),
            snapshot_path: "/s".into(),
            snapshot_type: Some(SnapshotType::Full),
            version: None,
        };
        c.validate().unwrap();
        assert_eq!(
            serde_json::to_value(&c).unwrap(),
            json!({"mem_file_path": "/m", "snapshot_path": "/s", "snapshot_type": "Full"})
        );
        let same = SnapshotCreateParams {
            mem_file_path: "/s".into(),
            ..c.clone()
        };
        assert_eq!(same.validate().unwrap_err().field, "mem_file_path");
        let empty = SnapshotCreateParams {
            snapshot_path: "".into(),
            ..c
        };
        assert_eq!(empty.validate().unwrap_err().field, "snapshot_path");
    }
}
