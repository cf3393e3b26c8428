//! [`VmRecord`]: everything a host must remember about one live microVM to find it again after
//! its daemon restarts — the provider's view of it, its machine shape and devices, the VMM
//! process that runs it ([`VmProcess`]) and who owns it ([`VmOwner`]).
//!
//! A provider produces the record once a VM exists; the host store keeps it; a provider started
//! later re-adopts the VM from it (same process, same sockets) or reports it gone.

use std::path::PathBuf;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::error::VmError;
use crate::id::{SnapshotId, VmId};
use crate::process::ProcessIdentity;
use crate::spec::validate_uds_path;
use crate::stack::{StackKey, validate_mem, validate_vcpus};
use crate::view::{VmStatus, VmView};

/// Who a VM belongs to on its host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmOwner {
    /// A warm pool keeps it for its stack until a tenant takes it.
    Pool,
    /// A tenant's sandbox (the sandbox has the VM's id).
    Sandbox,
    /// A caller of the raw VM API manages it.
    Api,
}

impl std::fmt::Display for VmOwner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            VmOwner::Pool => "pool",
            VmOwner::Sandbox => "sandbox",
            VmOwner::Api => "api",
        })
    }
}

/// The VMM process running a VM and the files it is reached through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmProcess {
    /// The process, robust against pid reuse.
    pub identity: ProcessIdentity,
    /// The provider's slot number (its directory's name; never reused by one provider root).
    pub slot: u64,
    /// The VM's directory (sockets, logs).
    pub dir: PathBuf,
    /// The VMM's API socket.
    pub api_socket: PathBuf,
    /// The vsock device's host socket (host-initiated connections).
    pub vsock_socket: PathBuf,
}

/// A live VM as its host remembers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmRecord {
    /// Its id now (a rename changes it).
    pub id: VmId,
    /// Who it belongs to.
    pub owner: VmOwner,
    /// Its lifecycle status when last recorded.
    pub status: VmStatus,
    /// The stack it belongs to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<StackKey>,
    /// The snapshot it was restored from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_from: Option<SnapshotId>,
    /// When the provider created it.
    #[serde(with = "crate::view::unix_millis")]
    pub created_at: SystemTime,
    /// Snapshots taken of it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snapshots: Vec<SnapshotId>,
    /// vCPUs.
    pub vcpu_count: u8,
    /// Guest memory, MiB.
    pub mem_size_mib: u32,
    /// The guest CID, if it has a vsock device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_cid: Option<u32>,
    /// Ids of its network interfaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network_interfaces: Vec<String>,
    /// Its disk files (a snapshot of it records them for its restores).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<crate::snapshot_info::DiskFile>,
    /// Its VMM process.
    pub process: VmProcess,
}

impl VmRecord {
    /// The provider's view of the VM as recorded.
    pub fn view(&self) -> VmView {
        VmView {
            id: self.id.clone(),
            status: self.status,
            stack: self.stack.clone(),
            restored_from: self.restored_from.clone(),
            created_at: self.created_at,
            snapshots: self.snapshots.clone(),
        }
    }

    /// Checks every field, naming the first one at fault (`vm.<field>`).
    pub fn validate(&self) -> Result<(), VmError> {
        if !self.status.is_live() {
            return Err(VmError::invalid_spec(
                "vm.status",
                "a destroyed VM has no record",
            ));
        }
        validate_vcpus("vm.vcpu_count", self.vcpu_count)?;
        validate_mem("vm.mem_size_mib", self.mem_size_mib)?;
        if let Some(stack) = &self.stack
            && (stack.vcpu_count() != self.vcpu_count || stack.mem_size_mib() != self.mem_size_mib)
        {
            return Err(VmError::invalid_spec(
                "vm.stack",
                format!(
                    "the VM has {} vCPU and {} MiB but its stack {stack} has another shape",
                    self.vcpu_count, self.mem_size_mib
                ),
            ));
        }
        for (i, iface) in self.network_interfaces.iter().enumerate() {
            crate::id::validate_id(&format!("vm.network_interfaces[{i}]"), iface)?;
        }
        let p = &self.process;
        if p.identity.pid == 0 || i32::try_from(p.identity.pid).is_err() {
            return Err(VmError::invalid_spec(
                "vm.process.identity.pid",
                format!("{} is not a process id", p.identity.pid),
            ));
        }
        if p.identity.boot_id.is_empty() || p.identity.boot_id.len() > 64 {
            return Err(VmError::invalid_spec(
                "vm.process.identity.boot_id",
                "must be 1 to 64 bytes",
            ));
        }
        crate::spec::validate_path("vm.process.dir", &p.dir)?;
        validate_uds_path("vm.process.api_socket", &p.api_socket)?;
        validate_uds_path("vm.process.vsock_socket", &p.vsock_socket)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A valid record for tests.
    pub(crate) fn record(id: &str) -> VmRecord {
        VmRecord {
            id: VmId::new(id).unwrap(),
            owner: VmOwner::Sandbox,
            status: VmStatus::Running,
            stack: Some(StackKey::new("probe", "v1", 1, 128).unwrap()),
            restored_from: Some(SnapshotId::new("tpl").unwrap()),
            created_at: SystemTime::UNIX_EPOCH,
            snapshots: vec![],
            vcpu_count: 1,
            mem_size_mib: 128,
            vsock_cid: Some(3),
            network_interfaces: vec![],
            disks: vec![],
            process: VmProcess {
                identity: ProcessIdentity {
                    pid: 42,
                    start_time: 1000,
                    boot_id: "b0".into(),
                },
                slot: 7,
                dir: "/run/ember/slots/7".into(),
                api_socket: "/run/ember/slots/7/api.sock".into(),
                vsock_socket: "/run/ember/slots/7/vsock.sock".into(),
            },
        }
    }

    #[test]
    fn validation_and_view() {
        let r = record("sb-1");
        r.validate().unwrap();
        assert_eq!(r.view().id.as_str(), "sb-1");
        let mut bad = r.clone();
        bad.process.identity.pid = 0;
        assert!(bad.validate().unwrap_err().to_string().contains("pid"));
        let mut bad = r.clone();
        bad.status = VmStatus::Destroyed;
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("vm.status")
        );
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains("\"owner\":\"sandbox\""), "{json}");
        assert_eq!(serde_json::from_str::<VmRecord>(&json).unwrap(), r);
    }
}
