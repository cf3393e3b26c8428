//! Creating VMs: an id is reserved, a ready spare process is taken, the VM's id is linked to
//! the spare's slot, and the process is configured — for a boot (machine config, boot source,
//! drives, interfaces, vsock in the slot) or a restore (one `PUT /snapshot/load`). On any failure
//! the process is killed and the link and slot removed: a failed create leaves nothing.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use ember_core::{
    Operation, ResourceKind, SnapshotId, SnapshotRef, VmError, VmId, VmSpec, VmStatus, VmView,
};
use ember_fc_api::{
    BootSource, Drive, MachineConfiguration, MemoryBackend, MemoryBackendType, NetworkInterface,
    NetworkOverride, SnapshotLoadParams, Vsock, VsockOverride,
};

use super::Inner;
use super::vm::{VmEntry, VmRecord};
use crate::client::FirecrackerClient;
use crate::error::RuntimeError;
use crate::layout::SlotPaths;
use crate::spares::{Spare, discard};

/// Holds an id reserved in the table while a VM is being created; releases it on drop.
struct Reservation<'a> {
    inner: &'a Inner,
    id: VmId,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.inner.table().reserved.remove(&self.id);
    }
}

/// What a successful configuration of a spare produced.
struct Created {
    status: VmStatus,
    stack: Option<ember_core::StackKey>,
    restored_from: Option<SnapshotId>,
    vcpu_count: u8,
    mem_size_mib: u32,
    vsock_cid: Option<u32>,
    network_interfaces: Vec<String>,
    disks: Vec<ember_core::DiskFile>,
}

fn require_file(field: &str, path: &Path) -> Result<(), VmError> {
    if path.is_file() {
        Ok(())
    } else {
        Err(VmError::invalid_spec(
            field,
            format!("{} does not exist or is not a file", path.display()),
        ))
    }
}
impl Inner {
    /// Makes host `path` visible to slot `slot`'s jailed VMM at the same path (nothing to do
    /// when VMMs are not jailed).
    pub(super) fn expose(
        &self,
        slot: u64,
        path: &Path,
        writable: bool,
    ) -> Result<(), RuntimeError> {
        match &self.jail {
            Some(jail) => jail
                .expose(slot, path, writable)
                .map_err(|source| RuntimeError::Files {
                    what: "cannot make a file visible in the VMM's jail",
                    path: path.to_path_buf(),
                    source,
                }),
            None => Ok(()),
        }
    }

    /// Sizes slot `slot`'s memory limit to a guest of `mib` MiB (jailed, with an overhead set).
    fn size_memory(&self, slot: u64, mib: u32) -> Result<(), RuntimeError> {
        match &self.jail {
            Some(jail) => jail
                .size_memory(slot, mib)
                .map_err(|e| RuntimeError::Files {
                    what: "cannot size the VMM's memory limit",
                    path: std::path::PathBuf::from(format!("cgroup of slot {slot}")),
                    source: std::io::Error::other(e.to_string()),
                }),
            None => Ok(()),
        }
    }

    pub(super) fn provider_err(
        &self,
        op: Operation,
        id: impl std::fmt::Display,
        e: RuntimeError,
    ) -> VmError {
        VmError::provider(self.name, op, id, e)
    }

    fn reserve(&self, id: &VmId) -> Result<Reservation<'_>, VmError> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(self.provider_err(Operation::Create, id, RuntimeError::ShutDown));
        }
        let mut table = self.table();
        if table.vms.contains_key(id) || !table.reserved.insert(id.clone()) {
            return Err(VmError::AlreadyExists {
                kind: ResourceKind::Vm,
                id: id.to_string(),
            });
        }
        Ok(Reservation {
            inner: self,
            id: id.clone(),
        })
    }

    pub(super) fn take_spare(
        &self,
        op: Operation,
        id: impl std::fmt::Display,
    ) -> Result<Spare, VmError> {
        self.spares
            .take(self.config.timeouts.spare_wait)
            .map_err(|e| self.provider_err(op, id, RuntimeError::Spare(e)))
    }

    /// Creates a VM named `id` in a spare process configured by `configure`; on any failure
    /// the process is killed and nothing of the VM is left.
    fn create_in_spare(
        &self,
        id: &VmId,
        configure: impl FnOnce(&mut FirecrackerClient, &SlotPaths) -> Result<Created, RuntimeError>,
    ) -> Result<VmView, VmError> {
        let reservation = self.reserve(id)?;
        let Spare {
            process,
            mut client,
            ..
        } = self.take_spare(Operation::Create, id)?;
        let paths = process.paths().clone();
        // A stale link could only be left by a failed cleanup; the id is ours now.
        let _ = self.layout.unlink_vm(id);
        if let Err(source) = self.layout.link_vm(id, paths.slot) {
            discard(&self.layout, &process);
            return Err(self.provider_err(
                Operation::Create,
                id,
                RuntimeError::Files {
                    what: "cannot create the VM link",
                    path: self.layout.vm_link(id),
                    source,
                },
            ));
        }
        let created = match configure(&mut client, &paths) {
            Ok(c) => c,
            Err(e) => {
                let e = match e {
                    RuntimeError::Api(c) => self.call_failed(&process, c),
                    other => other,
                };
                discard(&self.layout, &process);
                let _ = self.layout.unlink_vm(id);
                return Err(self.provider_err(Operation::Create, id, e));
            }
        };
        let record = VmRecord {
            id: id.clone(),
            status: created.status,
            stack: created.stack,
            restored_from: created.restored_from,
            created_at: SystemTime::now(),
            snapshots: Vec::new(),
            destroyed: false,
            vcpu_count: created.vcpu_count,
            mem_size_mib: created.mem_size_mib,
            vsock_cid: created.vsock_cid,
            network_interfaces: created.network_interfaces,
            disks: created.disks,
            exit: None,
        };
        let view = record.view();
        let entry = Arc::new(VmEntry::new(Arc::clone(&process), client, record));
        {
            let mut table = self.table();
            if self.shutting_down.load(Ordering::SeqCst) {
                drop(table);
                discard(&self.layout, &process);
                let _ = self.layout.unlink_vm(id);
                return Err(self.provider_err(Operation::Create, id, RuntimeError::ShutDown));
            }
            table.vms.insert(id.clone(), Arc::clone(&entry));
            table.by_slot.insert(paths.slot, Arc::clone(&entry));
        }
        drop(reservation);
        // Died between its last answer and being recorded: the supervisor found no VM for
        // the slot, so report it here.
        if let Some(exit) = process.exit_info() {
            let mut rec = entry.record();
            rec.exit = Some(exit);
            rec.status = VmStatus::Stopped;
            return Ok(rec.view());
        }
        Ok(view)
    }

    pub(super) fn boot(&self, id: &VmId, spec: &VmSpec) -> Result<VmView, VmError> {
        let Some(kernel) = &spec.kernel else {
            return Err(VmError::invalid_spec(
                "kernel",
                format!(
                    "is required: the {} provider boots a kernel or restores a snapshot",
                    self.name
                ),
            ));
        };
        require_file("kernel", kernel)?;
        if let Some(initrd) = &spec.initrd {
            require_file("initrd", initrd)?;
        }
        if let Some(rootfs) = &spec.rootfs {
            require_file("rootfs", rootfs)?;
        }
        for (i, d) in spec.drives.iter().enumerate() {
            require_file(&format!("drives[{i}].path_on_host"), &d.path_on_host)?;
        }
        self.create_in_spare(id, |client, paths| {
            self.size_memory(paths.slot, spec.mem_size_mib)?;
            self.expose(paths.slot, kernel, false)?;
            if let Some(initrd) = &spec.initrd {
                self.expose(paths.slot, initrd, false)?;
            }
            if let Some(rootfs) = &spec.rootfs {
                self.expose(paths.slot, rootfs, !spec.rootfs_read_only)?;
            }
            for d in &spec.drives {
                self.expose(paths.slot, &d.path_on_host, !d.is_read_only)?;
            }
            client.put_machine_config(&MachineConfiguration::new(
                spec.vcpu_count,
                spec.mem_size_mib,
            ))?;
            client.put_boot_source(&BootSource {
                kernel_image_path: kernel.clone(),
                boot_args: spec.boot_args.clone(),
                initrd_path: spec.initrd.clone(),
            })?;
            if let Some(rootfs) = &spec.rootfs {
                client.put_drive(&Drive {
                    is_read_only: Some(spec.rootfs_read_only),
                    ..Drive::new("rootfs", rootfs.clone(), true)
                })?;
            }
            for d in &spec.drives {
                client.put_drive(&Drive {
                    is_read_only: Some(d.is_read_only),
                    rate_limiter: d.rate_limiter,
                    ..Drive::new(d.drive_id.clone(), d.path_on_host.clone(), d.is_root_device)
                })?;
            }
            for n in &spec.network_interfaces {
                client.put_network_interface(&NetworkInterface {
                    iface_id: n.iface_id.clone(),
                    host_dev_name: n.host_dev_name.clone(),
                    guest_mac: n.guest_mac.map(|m| m.to_string()),
                    mtu: None,
                    rx_rate_limiter: n.rx_rate_limiter,
                    tx_rate_limiter: n.tx_rate_limiter,
                })?;
            }
            if let Some(v) = &spec.vsock {
                // The provider owns the VM's files: the socket lives in the VM's slot.
                client.put_vsock(&Vsock::new(v.guest_cid, paths.vsock.clone()))?;
            }
            Ok(Created {
                status: VmStatus::Created,
                stack: None,
                restored_from: None,
                vcpu_count: spec.vcpu_count,
                mem_size_mib: spec.mem_size_mib,
                vsock_cid: spec.vsock.as_ref().map(|v| v.guest_cid),
                network_interfaces: spec
                    .network_interfaces
                    .iter()
                    .map(|n| n.iface_id.clone())
                    .collect(),
                disks: ember_core::DiskFile::of_spec(spec),
            })
        })
    }

    pub(super) fn restore(&self, id: &VmId, snap: &SnapshotRef) -> Result<VmView, VmError> {
        let stored = self.snapshots.resolve(snap)?;
        if snap.vsock_override.is_some() {
            return Err(VmError::invalid_spec(
                "restore_from.vsock_override",
                format!(
                    "the {} provider gives every VM its own vsock socket in its directory \
                     (VmmProvider::vsock_path); leave it unset",
                    self.name
                ),
            ));
        }
        for (i, o) in snap.network_overrides.iter().enumerate() {
            if !stored.network_interfaces.contains(&o.iface_id) {
                return Err(VmError::invalid_spec(
                    format!("restore_from.network_overrides[{i}].iface_id"),
                    format!(
                        "snapshot {} has no network interface {:?}",
                        stored.snapshot_id, o.iface_id
                    ),
                ));
            }
        }
        let resume = snap.resume;
        self.create_in_spare(id, |client, paths| {
            self.size_memory(paths.slot, stored.mem_size_mib)?;
            self.expose(paths.slot, &stored.state_path, false)?;
            self.expose(paths.slot, &stored.mem_path, false)?;
            for disk in &stored.disks {
                self.expose(paths.slot, &disk.path, !disk.read_only)?;
            }
            client.load_snapshot(&load_params(&stored, paths, resume, snap))?;
            Ok(Created {
                status: if resume {
                    VmStatus::Running
                } else {
                    VmStatus::Paused
                },
                stack: stored.stack.clone(),
                restored_from: Some(stored.snapshot_id.clone()),
                vcpu_count: stored.vcpu_count,
                mem_size_mib: stored.mem_size_mib,
                vsock_cid: stored.vsock_cid,
                network_interfaces: stored.network_interfaces.clone(),
                disks: stored.disks.clone(),
            })
        })
    }
}

/// The `PUT /snapshot/load` body: the snapshot's files (memory mapped copy-on-write, shared by
/// every VM restored from it), resume or not, the caller's network overrides, and — if the
/// snapshot has a vsock device — this slot's own socket.
pub(super) fn load_params(
    stored: &ember_core::SnapshotInfo,
    paths: &SlotPaths,
    resume: bool,
    snap: &SnapshotRef,
) -> SnapshotLoadParams {
    let network_overrides: Vec<NetworkOverride> = snap
        .network_overrides
        .iter()
        .map(|o| NetworkOverride {
            iface_id: o.iface_id.clone(),
            host_dev_name: o.host_dev_name.clone(),
        })
        .collect();
    let mem_backend = MemoryBackend {
        backend_type: MemoryBackendType::File,
        backend_path: stored.mem_path.clone(),
    };
    SnapshotLoadParams {
        resume_vm: Some(resume),
        // Left out when empty, as before: a bare load is what every Firecracker accepts.
        network_overrides: (!network_overrides.is_empty()).then_some(network_overrides),
        vsock_override: stored.vsock_cid.map(|_| VsockOverride {
            uds_path: paths.vsock.clone(),
        }),
        ..SnapshotLoadParams::new(stored.state_path.clone(), mem_backend)
    }
}
