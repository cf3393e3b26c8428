//! Request and response bodies of the Firecracker API, field for field as in Firecracker's
//! swagger (`src/firecracker/swagger/firecracker.yaml`). Optional fields are left out of the
//! JSON when unset, so a request carries only what the caller chose and older VMMs that lack a
//! newer optional field still accept it.

use std::path::PathBuf;

use ember_core::RateLimiter;
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

/// `PUT /boot-source` — `BootSource`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootSource {
    /// The guest kernel on the host.
    pub kernel_image_path: PathBuf,
    /// Kernel command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
    /// Initial ramdisk on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<PathBuf>,
}

/// `PUT /machine-config` — `MachineConfiguration`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineConfiguration {
    /// vCPUs (1 or an even number up to 32 on Firecracker).
    pub vcpu_count: u8,
    /// Guest memory in MiB.
    pub mem_size_mib: u32,
    /// Simultaneous multithreading (x86 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smt: Option<bool>,
    /// Dirty page tracking (for diff snapshots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
    /// `None`, `Transparent` or `2M`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huge_pages: Option<String>,
    /// Deprecated static CPU template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<String>,
}

/// `PUT /drives/{drive_id}` — `Drive` (virtio-block fields).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drive {
    /// Device id (also in the URL).
    pub drive_id: String,
    /// Backing file on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_on_host: Option<PathBuf>,
    /// Whether the guest boots from it.
    pub is_root_device: bool,
    /// Attach read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_read_only: Option<bool>,
    /// I/O limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
}

/// `PUT /network-interfaces/{iface_id}` — `NetworkInterface`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInterface {
    /// Interface id (also in the URL).
    pub iface_id: String,
    /// Host TAP device.
    pub host_dev_name: String,
    /// Guest MAC, `aa:bb:cc:dd:ee:ff`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
    /// Receive limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiter>,
    /// Transmit limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiter>,
}

/// `PUT /vsock` — `Vsock` (hybrid vsock over a Unix socket).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vsock {
    /// Guest context id (3 or more).
    pub guest_cid: u32,
    /// Host socket for host-initiated connections; guest-initiated ones go to
    /// `<uds_path>_<port>`.
    pub uds_path: PathBuf,
}

/// `PUT /actions` — `InstanceActionInfo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceActionInfo {
    /// The action.
    pub action_type: ActionType,
}

/// `InstanceActionInfo.action_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionType {
    /// Flush the metrics file.
    FlushMetrics,
    /// Boot the configured microVM.
    InstanceStart,
    /// Press Ctrl+Alt+Del (x86: the guest usually reboots, which ends the VMM).
    SendCtrlAltDel,
}

/// `PATCH /vm` — `Vm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vm {
    /// The state to move to.
    pub state: VmState,
}

/// `Vm.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    /// Pause the vCPUs.
    Paused,
    /// Resume the vCPUs.
    Resumed,
}

/// `PUT /snapshot/create` — `SnapshotCreateParams`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotCreateParams {
    /// Where the guest memory goes.
    pub mem_file_path: PathBuf,
    /// Where the microVM state goes.
    pub snapshot_path: PathBuf,
    /// `Full` (default) or `Diff`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_type: Option<SnapshotType>,
}

/// `SnapshotCreateParams.snapshot_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotType {
    /// All of guest memory.
    Full,
    /// Only pages dirtied since the last snapshot.
    Diff,
}

/// `PUT /snapshot/load` — `SnapshotLoadParams`. Only accepted by a fresh process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotLoadParams {
    /// The microVM state file.
    pub snapshot_path: PathBuf,
    /// Where guest memory comes from (Firecracker maps a `File` backend `MAP_PRIVATE`).
    pub mem_backend: MemoryBackend,
    /// Dirty page tracking for later diff snapshots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
    /// Resume the vCPUs once loaded (default: stay paused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_vm: Option<bool>,
    /// Re-attach interfaces to other TAP devices (`iface_id`, `host_dev_name`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network_overrides: Vec<NetworkOverride>,
    /// Use another Unix socket for the vsock device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_override: Option<VsockOverride>,
}

/// `MemoryBackend`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryBackend {
    /// `File` or `Uffd`.
    pub backend_type: MemoryBackendType,
    /// The memory file (`File`) or the page-fault handler's socket (`Uffd`).
    pub backend_path: PathBuf,
}

/// `MemoryBackend.backend_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemoryBackendType {
    /// A memory file, mapped copy-on-write.
    File,
    /// A userfaultfd page-fault handler.
    Uffd,
}

/// `NetworkOverride`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkOverride {
    /// The interface in the snapshot.
    pub iface_id: String,
    /// The TAP device to attach it to.
    pub host_dev_name: String,
}

/// `VsockOverride`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockOverride {
    /// The new host socket path.
    pub uds_path: PathBuf,
}

/// `PATCH /machine-config` — the fields of `MachineConfiguration` to change (pre-boot).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineConfigurationUpdate {
    /// vCPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpu_count: Option<u8>,
    /// Guest memory in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_size_mib: Option<u32>,
    /// Simultaneous multithreading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smt: Option<bool>,
    /// Dirty page tracking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
}

/// `PATCH /drives/{drive_id}` — `PartialDrive` (post-boot: new backing file or limits).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartialDrive {
    /// Device id (also in the URL).
    pub drive_id: String,
    /// New backing file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_on_host: Option<PathBuf>,
    /// New limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
}

/// `PATCH /network-interfaces/{iface_id}` — `PartialNetworkInterface` (post-boot: limits).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartialNetworkInterface {
    /// Interface id (also in the URL).
    pub iface_id: String,
    /// New receive limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiter>,
    /// New transmit limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiter>,
}

/// `PUT /logger` — `Logger`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Logger {
    /// `Error`, `Warning`, `Info`, `Debug`, `Trace` or `Off`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    /// Named pipe or file for the log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_path: Option<PathBuf>,
    /// Print the level in each line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_level: Option<bool>,
    /// Print the source location in each line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_log_origin: Option<bool>,
    /// Only log this module.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
}

/// `PUT /metrics` — `Metrics`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metrics {
    /// Named pipe or file the metrics are flushed to.
    pub metrics_path: PathBuf,
}

/// `PUT /entropy` — `EntropyDevice` (virtio-rng).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntropyDevice {
    /// Limits on the entropy the guest may draw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
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
    fn load_params_match_the_swagger_shape() {
        let p = SnapshotLoadParams {
            snapshot_path: "/s/state".into(),
            mem_backend: MemoryBackend {
                backend_type: MemoryBackendType::File,
                backend_path: "/s/mem".into(),
            },
            track_dirty_pages: None,
            resume_vm: Some(false),
            network_overrides: vec![NetworkOverride {
                iface_id: "eth0".into(),
                host_dev_name: "tap7".into(),
            }],
            vsock_override: Some(VsockOverride {
                uds_path: "/r/v.sock".into(),
            }),
        };
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
        let bare = SnapshotLoadParams {
            network_overrides: vec![],
            vsock_override: None,
            resume_vm: None,
            ..p
        };
        let v = serde_json::to_value(&bare).unwrap();
        assert!(v.get("network_overrides").is_none());
        assert!(v.get("network_interfaces").is_none());
        assert!(v.get("vsock_override").is_none());
    }

    #[test]
    fn instance_info_and_actions() {
        let info: InstanceInfo = serde_json::from_value(json!({
            "app_name": "Firecracker", "id": "x", "state": "Not started", "vmm_version": "1.17.0"
        }))
        .unwrap();
        assert_eq!(info.state, InstanceState::NotStarted);
        assert_eq!(
            serde_json::to_string(&InstanceActionInfo {
                action_type: ActionType::InstanceStart
            })
            .unwrap(),
            r#"{"action_type":"InstanceStart"}"#
        );
        assert_eq!(
            serde_json::to_string(&Vm {
                state: VmState::Resumed
            })
            .unwrap(),
            r#"{"state":"Resumed"}"#
        );
        let m = MachineConfiguration {
            vcpu_count: 1,
            mem_size_mib: 128,
            smt: None,
            track_dirty_pages: None,
            huge_pages: None,
            cpu_template: None,
        };
        assert_eq!(
            serde_json::to_value(&m).unwrap(),
            json!({"vcpu_count": 1, "mem_size_mib": 128})
        );
    }
}
