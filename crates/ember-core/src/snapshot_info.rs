//! [`SnapshotInfo`]: the catalog entry of a snapshot — its files and what a restore must know
//! that a VMM-specific state file does not tell from outside (machine shape, vsock device,
//! interfaces), plus cheap integrity figures.
//!
//! The provider that takes a snapshot describes it with this type; the host store keeps it; a
//! provider that starts later is handed the stored entries instead of scanning its directory.

use std::path::PathBuf;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::error::VmError;
use crate::id::{SnapshotId, VmId};
use crate::snapshot::SnapshotRef;
use crate::spec::validate_path;
use crate::stack::{StackKey, validate_mem, validate_vcpus};

/// A snapshot on the host and what restoring it needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotInfo {
    /// The snapshot's id.
    pub snapshot_id: SnapshotId,
    /// The stack (template) that owns it; snapshots outlive the VM they were taken from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<StackKey>,
    /// The VM state file.
    pub state_path: PathBuf,
    /// The guest memory file.
    pub mem_path: PathBuf,
    /// The provider flavor that wrote it (`ember-vmm`, `firecracker`).
    pub provider: String,
    /// The VMM's version when it was taken.
    pub vmm_version: String,
    /// vCPUs of the VM.
    pub vcpu_count: u8,
    /// Guest memory of the VM, MiB.
    pub mem_size_mib: u32,
    /// Size of the state file in bytes.
    pub state_len: u64,
    /// CRC32 of the state file.
    pub state_crc32: u32,
    /// Size of the memory file in bytes.
    pub mem_len: u64,
    /// The guest CID if the VM had a vsock device (each restored VM gets its own socket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_cid: Option<u32>,
    /// Ids of the VM's network interfaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network_interfaces: Vec<String>,
    /// The disk files the VM had attached (root filesystem, drives): its state names them by
    /// path, so a restore must be able to open them there (a jailed VMM gets them bound in).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<DiskFile>,
    /// The VM it was taken from (for the record; the snapshot does not depend on it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_vm: Option<VmId>,
    /// When it was taken (millisecond precision).
    #[serde(with = "crate::view::unix_millis")]
    pub created_at: SystemTime,
}

/// A disk file attached to a VM: where it is on the host and whether the guest may write it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskFile {
    /// The file on the host.
    pub path: PathBuf,
    /// Attached read-only.
    #[serde(default)]
    pub read_only: bool,
}

impl DiskFile {
    /// The disk files `spec` attaches: its root filesystem, then its drives.
    pub fn of_spec(spec: &crate::spec::VmSpec) -> Vec<Self> {
        let rootfs = spec.rootfs.iter().map(|path| Self {
            path: path.clone(),
            read_only: spec.rootfs_read_only,
        });
        let drives = spec.drives.iter().map(|d| Self {
            path: d.path_on_host.clone(),
            read_only: d.is_read_only,
        });
        rootfs.chain(drives).collect()
    }
}

impl SnapshotInfo {
    /// A reference that restores it, resumed, with no overrides.
    pub fn to_ref(&self) -> SnapshotRef {
        SnapshotRef::new(
            self.snapshot_id.clone(),
            self.stack.clone(),
            self.state_path.clone(),
            self.mem_path.clone(),
        )
    }

    /// Checks every field, naming the first one at fault (`snapshot.<field>`).
    pub fn validate(&self) -> Result<(), VmError> {
        validate_path("snapshot.state_path", &self.state_path)?;
        validate_path("snapshot.mem_path", &self.mem_path)?;
        validate_vcpus("snapshot.vcpu_count", self.vcpu_count)?;
        validate_mem("snapshot.mem_size_mib", self.mem_size_mib)?;
        if let Some(stack) = &self.stack
            && (stack.vcpu_count() != self.vcpu_count || stack.mem_size_mib() != self.mem_size_mib)
        {
            return Err(VmError::invalid_spec(
                "snapshot.stack",
                format!(
                    "the snapshot is {} vCPU / {} MiB but its stack {stack} has another shape",
                    self.vcpu_count, self.mem_size_mib
                ),
            ));
        }
        for (i, disk) in self.disks.iter().enumerate() {
            validate_path(&format!("snapshot.disks[{i}].path"), &disk.path)?;
        }
        for (i, iface) in self.network_interfaces.iter().enumerate() {
            crate::id::validate_id(&format!("snapshot.network_interfaces[{i}]"), iface)?;
        }
        for (field, text) in [
            ("snapshot.provider", &self.provider),
            ("snapshot.vmm_version", &self.vmm_version),
        ] {
            if text.is_empty() || text.len() > 128 || text.chars().any(char::is_control) {
                return Err(VmError::invalid_spec(
                    field,
                    format!("{text:?} must be 1 to 128 bytes without control characters"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn info() -> SnapshotInfo {
        SnapshotInfo {
            snapshot_id: SnapshotId::new("s1").unwrap(),
            stack: Some(StackKey::new("probe", "v1", 1, 128).unwrap()),
            state_path: "/snap/s1/state".into(),
            mem_path: "/snap/s1/mem".into(),
            provider: "ember-vmm".into(),
            vmm_version: "0.1.0".into(),
            vcpu_count: 1,
            mem_size_mib: 128,
            state_len: 4096,
            state_crc32: 0xdead_beef,
            mem_len: 128 << 20,
            vsock_cid: Some(3),
            network_interfaces: vec![],
            disks: vec![],
            source_vm: None,
            created_at: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn validation_names_the_field_and_to_ref_keeps_the_files() {
        info().validate().unwrap();
        let r = info().to_ref();
        assert_eq!(r.state_path, info().state_path);
        assert!(r.resume);
        let mut bad = info();
        bad.mem_size_mib = 256;
        let err = bad.validate().unwrap_err().to_string();
        assert!(err.contains("snapshot.stack"), "{err}");
        let mut bad = info();
        bad.network_interfaces = vec!["eth 0".into()];
        let err = bad.validate().unwrap_err().to_string();
        assert!(err.contains("snapshot.network_interfaces[0]"), "{err}");
        let json = serde_json::to_string(&info()).unwrap();
        assert_eq!(serde_json::from_str::<SnapshotInfo>(&json).unwrap(), info());
    }
}
