//! The machine record: [`Machine`] (what the caller owns and changes), [`MachineRecord`] (that plus
//! what the store owns: name, network allocation, timestamps, revision), [`MachineState`] and
//! [`BlockDevice`], with their validation.
//!
//! Pure values; reading and writing rows is the private `sql::machines` module's job.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::SystemTime;

use ember_core::spec::{MAX_BOOT_ARGS_LEN, MAX_DEVICES, validate_uds_path};
use ember_core::stack::{validate_mem, validate_vcpus};
use ember_core::{SnapshotId, StackKey, VmError, VmId, VmStatus};
use serde::{Deserialize, Serialize};

use crate::columns::path_text;
use crate::error::StoreError;
use crate::names::MachineName;
use crate::network::NetworkAllocation;
use crate::process::ProcessIdentity;

/// Longest distro name or version accepted, in bytes.
pub const MAX_LABEL_LEN: usize = 128;

/// The last lifecycle state a machine was stored in.
///
/// `Starting`, `Running`, `Paused` and `Stopping` mean a VMM process may be alive: after a daemon
/// restart, a machine stored in one of them is reported as needing recovery (see
/// [`needs_recovery`](Self::needs_recovery) and [`recovery`](crate::recovery)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MachineState {
    /// Configured; no VMM process has been started.
    Created,
    /// A VMM process is being started (it may or may not exist yet).
    Starting,
    /// The VMM process runs the guest.
    Running,
    /// The VMM process is alive with its vCPUs paused.
    Paused,
    /// The VMM process is being stopped (it may still be alive).
    Stopping,
    /// No VMM process; the machine can be removed or started again by a new process.
    Stopped,
}

impl MachineState {
    /// Every state, in lifecycle order.
    pub const ALL: [MachineState; 6] = [
        MachineState::Created,
        MachineState::Starting,
        MachineState::Running,
        MachineState::Paused,
        MachineState::Stopping,
        MachineState::Stopped,
    ];

    /// Whether a machine last stored in this state may have left a live VMM process behind, so a
    /// supervisor must look at it after a restart (re-adopt it or clean it up).
    pub fn needs_recovery(self) -> bool {
        matches!(
            self,
            MachineState::Starting
                | MachineState::Running
                | MachineState::Paused
                | MachineState::Stopping
        )
    }

    /// Whether a machine in this state must name its VMM process (it is known to exist).
    pub fn requires_process(self) -> bool {
        matches!(
            self,
            MachineState::Running | MachineState::Paused | MachineState::Stopping
        )
    }

    /// The state to store for a provider status; `Destroyed` has none (the record is removed).
    pub fn from_status(status: VmStatus) -> Option<Self> {
        match status {
            VmStatus::Created => Some(MachineState::Created),
            VmStatus::Running => Some(MachineState::Running),
            VmStatus::Paused => Some(MachineState::Paused),
            VmStatus::Stopped => Some(MachineState::Stopped),
            VmStatus::Destroyed => None,
        }
    }

    /// The word stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            MachineState::Created => "created",
            MachineState::Starting => "starting",
            MachineState::Running => "running",
            MachineState::Paused => "paused",
            MachineState::Stopping => "stopping",
            MachineState::Stopped => "stopped",
        }
    }
}

impl fmt::Display for MachineState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MachineState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        MachineState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("{s:?} is not a machine state"))
    }
}

/// A block device attached to a machine (root file system, data disk...).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BlockDevice {
    /// The drive's id inside the VMM (`rootfs`, `data`).
    pub drive_id: String,
    /// The host file backing it.
    pub path: PathBuf,
    /// Attached read-only.
    pub read_only: bool,
}

/// The part of a machine record that its owner sets and changes (through
/// [`Store::save`](crate::Store::save) and [`Store::update`](crate::Store::update)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    /// The provider's id of the VM behind this machine.
    pub vm_id: VmId,
    /// The last lifecycle state stored.
    pub state: MachineState,
    /// vCPUs.
    pub vcpus: u8,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Disk size in GiB (0 when there is no disk of its own).
    pub disk_gib: u64,
    /// Guest kernel.
    pub kernel: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: Option<String>,
    /// Block devices.
    pub block_devices: Vec<BlockDevice>,
    /// Distribution name.
    pub distro: Option<String>,
    /// Distribution version.
    pub distro_version: Option<String>,
    /// The machine's disk image.
    pub disk_path: Option<PathBuf>,
    /// The SSH private key for the guest.
    pub ssh_key_path: Option<PathBuf>,
    /// The stack it belongs to (restored from its template, or pooled for it).
    pub stack: Option<StackKey>,
    /// The snapshot it was restored from; must be a snapshot in the store.
    pub source_snapshot: Option<SnapshotId>,
    /// The tenant it is handed to (ember identifier rules).
    pub tenant: Option<String>,
    /// The VMM process, identified robustly against pid reuse.
    pub vmm: Option<ProcessIdentity>,
    /// The VMM's API Unix socket.
    pub api_socket: Option<PathBuf>,
    /// The VMM's console log file.
    pub console_log: Option<PathBuf>,
    /// The vsock device's host Unix socket.
    pub vsock_uds: Option<PathBuf>,
    /// The machine's own runtime directory (sockets, logs), removed on cleanup.
    pub run_dir: Option<PathBuf>,
}

impl Machine {
    /// A machine in state `Created` with the given shape and nothing else set.
    pub fn new(vm_id: VmId, vcpus: u8, memory_mib: u32) -> Self {
        Self {
            vm_id,
            state: MachineState::Created,
            vcpus,
            memory_mib,
            disk_gib: 0,
            kernel: None,
            cmdline: None,
            block_devices: Vec::new(),
            distro: None,
            distro_version: None,
            disk_path: None,
            ssh_key_path: None,
            stack: None,
            source_snapshot: None,
            tenant: None,
            vmm: None,
            api_socket: None,
            console_log: None,
            vsock_uds: None,
            run_dir: None,
        }
    }

    /// Checks every field, naming the first one at fault (`machine.<field>`).
    pub fn validate(&self) -> Result<(), StoreError> {
        validate_vcpus("machine.vcpus", self.vcpus).map_err(from_vm_error)?;
        validate_mem("machine.memory_mib", self.memory_mib).map_err(from_vm_error)?;
        if let Some(stack) = &self.stack
            && (stack.vcpu_count() != self.vcpus || stack.mem_size_mib() != self.memory_mib)
        {
            return Err(StoreError::invalid(
                "machine.stack",
                format!(
                    "the machine has {} vCPU and {} MiB but its stack {stack} has another shape",
                    self.vcpus, self.memory_mib
                ),
            ));
        }
        crate::columns::u64_to_sql("machine.disk_gib", self.disk_gib)?;
        for (field, path) in [
            ("machine.kernel", &self.kernel),
            ("machine.disk_path", &self.disk_path),
            ("machine.ssh_key_path", &self.ssh_key_path),
            ("machine.console_log", &self.console_log),
            ("machine.run_dir", &self.run_dir),
        ] {
            if let Some(p) = path {
                path_text(field, p)?;
            }
        }
        for (field, path) in [
            ("machine.api_socket", &self.api_socket),
            ("machine.vsock_uds", &self.vsock_uds),
        ] {
            if let Some(p) = path {
                path_text(field, p)?;
                validate_uds_path(field, p).map_err(from_vm_error)?;
            }
        }
        if let Some(cmdline) = &self.cmdline
            && (cmdline.len() > MAX_BOOT_ARGS_LEN || cmdline.contains('\0'))
        {
            return Err(StoreError::invalid(
                "machine.cmdline",
                format!("must be at most {MAX_BOOT_ARGS_LEN} bytes without NUL"),
            ));
        }
        for (field, label) in [
            ("machine.distro", &self.distro),
            ("machine.distro_version", &self.distro_version),
        ] {
            if let Some(l) = label {
                validate_label(field, l)?;
            }
        }
        if let Some(tenant) = &self.tenant {
            ember_core::id::validate_id("machine.tenant", tenant).map_err(from_vm_error)?;
        }
        self.validate_block_devices()?;
        self.validate_process()
    }

    fn validate_block_devices(&self) -> Result<(), StoreError> {
        if self.block_devices.len() > MAX_DEVICES {
            return Err(StoreError::invalid(
                "machine.block_devices",
                format!(
                    "{} devices; at most {MAX_DEVICES} are allowed",
                    self.block_devices.len()
                ),
            ));
        }
        let mut ids = HashSet::new();
        for (i, d) in self.block_devices.iter().enumerate() {
            let field = format!("machine.block_devices[{i}]");
            ember_core::id::validate_id(&format!("{field}.drive_id"), &d.drive_id)
                .map_err(from_vm_error)?;
            path_text(&format!("{field}.path"), &d.path)?;
            if !ids.insert(d.drive_id.as_str()) {
                return Err(StoreError::invalid(
                    format!("{field}.drive_id"),
                    format!("{:?} is used twice", d.drive_id),
                ));
            }
        }
        Ok(())
    }

    fn validate_process(&self) -> Result<(), StoreError> {
        match &self.vmm {
            None if self.state.requires_process() => Err(StoreError::invalid(
                "machine.vmm",
                format!(
                    "a {} machine must record its VMM process (pid, start time, boot id) so it can be recovered",
                    self.state
                ),
            )),
            None => Ok(()),
            Some(p) => {
                if p.pid == 0 || i32::try_from(p.pid).is_err() {
                    return Err(StoreError::invalid(
                        "machine.vmm.pid",
                        format!("{} is not a valid process id", p.pid),
                    ));
                }
                crate::columns::u64_to_sql("machine.vmm.start_time", p.start_time)?;
                validate_label("machine.vmm.boot_id", &p.boot_id)
            }
        }
    }

    /// The host paths this machine's VMM process created for itself (sockets, console log, run
    /// directory), which a cleanup removes. Disk images and kernels are not included.
    pub fn runtime_files(&self) -> Vec<&Path> {
        [
            &self.api_socket,
            &self.vsock_uds,
            &self.console_log,
            &self.run_dir,
        ]
        .into_iter()
        .filter_map(|p| p.as_deref())
        .collect()
    }
}

/// A short free-text label: 1 to [`MAX_LABEL_LEN`] bytes, no control characters.
fn validate_label(field: &str, value: &str) -> Result<(), StoreError> {
    if value.is_empty() || value.len() > MAX_LABEL_LEN || value.chars().any(char::is_control) {
        return Err(StoreError::invalid(
            field,
            format!("{value:?} must be 1 to {MAX_LABEL_LEN} bytes without control characters"),
        ));
    }
    Ok(())
}

/// ember-core's validation errors name their field; keep it.
fn from_vm_error(e: VmError) -> StoreError {
    match e {
        VmError::InvalidSpec { field, reason } => StoreError::InvalidField { field, reason },
        other => StoreError::invalid("machine", other.to_string()),
    }
}

/// A stored machine: its name, the owner's [`Machine`], and what the store keeps itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineRecord {
    /// The machine's name (the record's key).
    pub name: MachineName,
    /// The owner's part.
    pub machine: Machine,
    /// Its network allocation, if one was requested at save; released on remove.
    pub network: Option<NetworkAllocation>,
    /// When it was first saved (millisecond precision).
    #[serde(with = "ember_core::view::unix_millis")]
    pub created_at: SystemTime,
    /// When it was last written (millisecond precision).
    #[serde(with = "ember_core::view::unix_millis")]
    pub updated_at: SystemTime,
    /// 1 when saved, plus one per update.
    pub revision: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine() -> Machine {
        Machine::new(VmId::new("vm-1").unwrap(), 2, 256)
    }

    #[test]
    fn recovery_mapping_covers_every_state() {
        use MachineState::*;
        let needs: Vec<_> = MachineState::ALL
            .into_iter()
            .filter(|s| s.needs_recovery())
            .collect();
        assert_eq!(needs, [Starting, Running, Paused, Stopping]);
        for s in MachineState::ALL {
            assert_eq!(s.as_str().parse::<MachineState>().unwrap(), s);
            if s.requires_process() {
                assert!(s.needs_recovery(), "{s}");
            }
        }
        assert!("exploded".parse::<MachineState>().is_err());
        assert_eq!(MachineState::from_status(VmStatus::Paused), Some(Paused));
        assert_eq!(MachineState::from_status(VmStatus::Destroyed), None);
    }

    #[test]
    fn validation_names_the_field() {
        let mut m = machine();
        m.validate().unwrap();
        m.vcpus = 0;
        assert!(
            m.validate()
                .unwrap_err()
                .to_string()
                .contains("machine.vcpus")
        );

        let mut m = machine();
        m.state = MachineState::Running;
        let err = m.validate().unwrap_err().to_string();
        assert!(
            err.contains("machine.vmm") && err.contains("running"),
            "{err}"
        );

        let mut m = machine();
        m.tenant = Some("bad tenant".into());
        assert!(
            m.validate()
                .unwrap_err()
                .to_string()
                .contains("machine.tenant")
        );

        let mut m = machine();
        m.api_socket = Some(PathBuf::from(format!("/{}", "s".repeat(200))));
        assert!(
            m.validate()
                .unwrap_err()
                .to_string()
                .contains("machine.api_socket")
        );

        let mut m = machine();
        m.stack = Some(StackKey::new("alpha", "1", 1, 128).unwrap());
        assert!(
            m.validate()
                .unwrap_err()
                .to_string()
                .contains("machine.stack")
        );

        let mut m = machine();
        let dev = BlockDevice {
            drive_id: "rootfs".into(),
            path: "/r.img".into(),
            read_only: true,
        };
        m.block_devices = vec![dev.clone(), dev];
        let err = m.validate().unwrap_err().to_string();
        assert!(err.contains("block_devices[1].drive_id"), "{err}");

        let mut m = machine();
        m.distro = Some("deb\nian".into());
        assert!(
            m.validate()
                .unwrap_err()
                .to_string()
                .contains("machine.distro")
        );
    }

    #[test]
    fn runtime_files_lists_only_process_files() {
        let mut m = machine();
        m.api_socket = Some("/run/ember/vm-1/api.sock".into());
        m.console_log = Some("/run/ember/vm-1/console.log".into());
        m.disk_path = Some("/var/lib/ember/disk.img".into());
        assert_eq!(
            m.runtime_files(),
            [
                Path::new("/run/ember/vm-1/api.sock"),
                Path::new("/run/ember/vm-1/console.log")
            ]
        );
    }
}
