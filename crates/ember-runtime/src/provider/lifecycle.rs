//! The [`VmProvider`] and [`VmQuery`] implementation of [`VmmProvider`]: every lifecycle call
//! mapped onto the Firecracker API of the VM's own process.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use ember_core::{
    Capabilities, Operation, ResourceKind, SnapshotId, SnapshotRef, SnapshotRequest, VmError, VmId,
    VmProvider, VmQuery, VmSpec, VmStatus, VmView,
};

use super::vm::{VmEntry, VmRecord};
use super::{Inner, VmmProvider};
use crate::client::models::{
    BootSource, Drive, MachineConfiguration, MemoryBackend, MemoryBackendType, NetworkInterface,
    NetworkOverride, SnapshotCreateParams, SnapshotLoadParams, SnapshotType, Vsock, VsockOverride,
};
use crate::client::{ClientError, FirecrackerClient};
use crate::error::RuntimeError;
use crate::layout::SlotPaths;
use crate::snapshots::{self, META_FORMAT, SnapshotMeta, StoredSnapshot};
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
    fn provider_err(&self, op: Operation, id: impl std::fmt::Display, e: RuntimeError) -> VmError {
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

    fn take_spare(&self, op: Operation, id: impl std::fmt::Display) -> Result<Spare, VmError> {
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

    fn boot(&self, id: &VmId, spec: &VmSpec) -> Result<VmView, VmError> {
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
            client.put_machine_config(&MachineConfiguration {
                vcpu_count: spec.vcpu_count,
                mem_size_mib: spec.mem_size_mib,
                smt: None,
                track_dirty_pages: None,
                huge_pages: None,
                cpu_template: None,
            })?;
            client.put_boot_source(&BootSource {
                kernel_image_path: kernel.clone(),
                boot_args: spec.boot_args.clone(),
                initrd_path: spec.initrd.clone(),
            })?;
            if let Some(rootfs) = &spec.rootfs {
                client.put_drive(&Drive {
                    drive_id: "rootfs".into(),
                    path_on_host: Some(rootfs.clone()),
                    is_root_device: true,
                    is_read_only: Some(spec.rootfs_read_only),
                    rate_limiter: None,
                })?;
            }
            for d in &spec.drives {
                client.put_drive(&Drive {
                    drive_id: d.drive_id.clone(),
                    path_on_host: Some(d.path_on_host.clone()),
                    is_root_device: d.is_root_device,
                    is_read_only: Some(d.is_read_only),
                    rate_limiter: d.rate_limiter,
                })?;
            }
            for n in &spec.network_interfaces {
                client.put_network_interface(&NetworkInterface {
                    iface_id: n.iface_id.clone(),
                    host_dev_name: n.host_dev_name.clone(),
                    guest_mac: n.guest_mac.map(|m| m.to_string()),
                    rx_rate_limiter: n.rx_rate_limiter,
                    tx_rate_limiter: n.tx_rate_limiter,
                })?;
            }
            if let Some(v) = &spec.vsock {
                // The provider owns the VM's files: the socket lives in the VM's slot.
                client.put_vsock(&Vsock {
                    guest_cid: v.guest_cid,
                    uds_path: paths.vsock.clone(),
                })?;
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
            })
        })
    }

    fn restore(&self, id: &VmId, snap: &SnapshotRef) -> Result<VmView, VmError> {
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
            if !stored.meta.network_interfaces.contains(&o.iface_id) {
                return Err(VmError::invalid_spec(
                    format!("restore_from.network_overrides[{i}].iface_id"),
                    format!(
                        "snapshot {} has no network interface {:?}",
                        stored.meta.snapshot_id, o.iface_id
                    ),
                ));
            }
        }
        let resume = snap.resume;
        self.create_in_spare(id, |client, paths| {
            client.load_snapshot(&load_params(&stored, paths, resume, snap))?;
            Ok(Created {
                status: if resume {
                    VmStatus::Running
                } else {
                    VmStatus::Paused
                },
                stack: stored.meta.stack.clone(),
                restored_from: Some(stored.meta.snapshot_id.clone()),
                vcpu_count: stored.meta.vcpu_count,
                mem_size_mib: stored.meta.mem_size_mib,
                vsock_cid: stored.meta.vsock_cid,
                network_interfaces: stored.meta.network_interfaces.clone(),
            })
        })
    }

    /// Looks `id` up and takes its operation lock; checks it still has that id.
    fn locked<R>(
        &self,
        id: &VmId,
        f: impl FnOnce(&Arc<VmEntry>, &mut FirecrackerClient) -> Result<R, VmError>,
    ) -> Result<R, VmError> {
        let entry = self.entry(id)?;
        let mut client = entry.client();
        {
            let rec = entry.record();
            if rec.destroyed || rec.id != *id {
                return Err(VmError::vm_not_found(id));
            }
        }
        f(&entry, &mut client)
    }

    /// A lifecycle edge backed by one API call.
    fn transition(
        &self,
        op: Operation,
        id: &VmId,
        to: VmStatus,
        call: impl FnOnce(&mut FirecrackerClient) -> Result<(), ClientError>,
    ) -> Result<VmView, VmError> {
        self.locked(id, |entry, client| {
            let from = entry.record().status;
            if !from.can_transition_to(to) {
                return Err(VmError::InvalidTransition {
                    id: id.to_string(),
                    from,
                    to,
                });
            }
            call(client)
                .map_err(|e| self.provider_err(op, id, self.call_failed(&entry.process, e)))?;
            let mut rec = entry.record();
            if rec.destroyed {
                return Err(VmError::vm_not_found(id));
            }
            if rec.status == VmStatus::Stopped {
                // It died while the call was in flight.
                return Err(VmError::InvalidTransition {
                    id: id.to_string(),
                    from: VmStatus::Stopped,
                    to,
                });
            }
            rec.status = to;
            Ok(rec.view())
        })
    }

    fn vmm_version(&self, client: &mut FirecrackerClient) -> String {
        if let Some(v) = self.vmm_version.get() {
            return v.clone();
        }
        match client.version() {
            Ok(v) => {
                let _ = self.vmm_version.set(v.firecracker_version.clone());
                v.firecracker_version
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the VMM version");
                "unknown".into()
            }
        }
    }

    fn take_snapshot(&self, id: &VmId, request: &SnapshotRequest) -> Result<SnapshotRef, VmError> {
        self.locked(id, |entry, client| {
            let rec = entry.record().clone();
            if rec.status != VmStatus::Paused {
                return Err(VmError::InvalidState {
                    id: id.to_string(),
                    op: Operation::Snapshot,
                    status: rec.status,
                    required: VmStatus::Paused,
                });
            }
            let sid = &request.snapshot_id;
            let dir = self.snapshots.reserve(sid)?;
            let state_path = dir.join(snapshots::STATE_FILE);
            let mem_path = dir.join(snapshots::MEM_FILE);
            let fail = |e: RuntimeError| {
                self.snapshots.abort(sid);
                self.provider_err(Operation::Snapshot, id, e)
            };
            if let Err(e) = client.create_snapshot(&SnapshotCreateParams {
                mem_file_path: mem_path.clone(),
                snapshot_path: state_path.clone(),
                snapshot_type: Some(SnapshotType::Full),
            }) {
                return Err(fail(self.call_failed(&entry.process, e)));
            }
            let vmm_version = self.vmm_version(client);
            let files = |what, path: &Path| {
                let path = path.to_path_buf();
                move |source| RuntimeError::Files { what, path, source }
            };
            let (state_len, state_crc32) = snapshots::file_crc32(&state_path)
                .map_err(files("cannot read the new state file", &state_path))
                .map_err(fail)?;
            let mem_len = std::fs::metadata(&mem_path)
                .map_err(files("cannot stat the new memory file", &mem_path))
                .map_err(fail)?
                .len();
            let meta = SnapshotMeta {
                format: META_FORMAT,
                snapshot_id: sid.clone(),
                stack: request.stack.clone().or_else(|| rec.stack.clone()),
                provider: self.name.to_string(),
                vmm_version,
                vcpu_count: rec.vcpu_count,
                mem_size_mib: rec.mem_size_mib,
                state_len,
                state_crc32,
                mem_len,
                vsock_cid: rec.vsock_cid,
                network_interfaces: rec.network_interfaces.clone(),
                source_vm: Some(id.clone()),
                created_at_ms: snapshots::now_ms(),
            };
            let stored = self
                .snapshots
                .commit(meta)
                .map_err(|source| RuntimeError::Files {
                    what: "cannot write the snapshot metadata in",
                    path: dir.clone(),
                    source,
                })
                .map_err(fail)?;
            entry.record().snapshots.push(sid.clone());
            tracing::info!(vm = %id, snapshot = %sid, state_len, mem_len, "snapshot taken");
            Ok(stored.to_ref())
        })
    }

    fn rename_vm(&self, from: &VmId, to: &VmId) -> Result<VmView, VmError> {
        if from == to {
            return Ok(self.entry(from)?.record().view());
        }
        self.locked(from, |entry, _client| {
            {
                let mut table = self.table();
                if table.vms.contains_key(to) || table.reserved.contains(to) {
                    return Err(VmError::AlreadyExists {
                        kind: ResourceKind::Vm,
                        id: to.to_string(),
                    });
                }
                match table.vms.get(from) {
                    Some(e) if Arc::ptr_eq(e, entry) => {}
                    _ => return Err(VmError::vm_not_found(from)),
                }
                table.vms.remove(from);
                table.vms.insert(to.clone(), Arc::clone(entry));
            }
            let mut rec = entry.record();
            if rec.destroyed {
                // Destroyed under its new id between the two steps; destroy removed the link.
                return Err(VmError::vm_not_found(to));
            }
            if let Err(source) = self.layout.rename_link(from, to) {
                drop(rec);
                let mut table = self.table();
                table.vms.remove(to);
                table.vms.insert(from.clone(), Arc::clone(entry));
                return Err(self.provider_err(
                    Operation::Rename,
                    from,
                    RuntimeError::Files {
                        what: "cannot rename the VM link",
                        path: self.layout.vm_link(from),
                        source,
                    },
                ));
            }
            rec.id = to.clone();
            Ok(rec.view())
        })
    }

    fn destroy_vm(&self, id: &VmId) -> Result<(), VmError> {
        let entry = {
            let mut table = self.table();
            let entry = table
                .vms
                .remove(id)
                .ok_or_else(|| VmError::vm_not_found(id))?;
            table.by_slot.remove(&entry.slot());
            entry
        };
        {
            let mut rec = entry.record();
            rec.destroyed = true;
            rec.status = VmStatus::Destroyed;
            if let Err(e) = self.layout.unlink_vm(&rec.id) {
                tracing::warn!(vm = %rec.id, error = %e, "cannot remove the VM link");
            }
        }
        // Killing is a signal; the process's teardown and its reaping happen on the
        // supervisor thread, which removes the slot again once it is gone.
        entry.process.kill(true);
        if let Err(e) = self.layout.remove_slot(entry.slot()) {
            tracing::warn!(vm = %id, error = %e, "cannot remove the VM's files (retried when it is reaped)");
        }
        Ok(())
    }

    fn stop_vm(&self, id: &VmId) -> Result<VmView, VmError> {
        self.locked(id, |entry, _client| {
            let mut rec = entry.record();
            if !rec.status.can_transition_to(VmStatus::Stopped) {
                return Err(VmError::InvalidTransition {
                    id: id.to_string(),
                    from: rec.status,
                    to: VmStatus::Stopped,
                });
            }
            // A VMM process does not restart a guest it stopped: stopping is ending it. Its
            // files stay until destroy.
            entry.process.kill(false);
            rec.status = VmStatus::Stopped;
            Ok(rec.view())
        })
    }

    fn verify(&self, snap: &SnapshotRef) -> Result<(), VmError> {
        snap.validate()?;
        let stored = self.snapshots.resolve(snap)?;
        snapshots::check_files(&stored, self.config.flavor.writes_ember_snapshots())?;
        if !self.config.trial_restore {
            return Ok(());
        }
        let sid = &stored.meta.snapshot_id;
        let Spare {
            process,
            mut client,
            ..
        } = self.take_spare(Operation::Create, sid)?;
        let result = client.load_snapshot(&load_params(&stored, process.paths(), false, snap));
        discard(&self.layout, &process);
        result.map_err(|e| {
            let source = Box::new(self.call_failed(&process, e));
            self.provider_err(
                Operation::Create,
                sid,
                RuntimeError::TrialRestore {
                    snapshot: sid.clone(),
                    source,
                },
            )
        })
    }
}

/// The `PUT /snapshot/load` body: the snapshot's files (memory mapped copy-on-write, shared by
/// every VM restored from it), resume or not, the caller's network overrides, and — if the
/// snapshot has a vsock device — this slot's own socket.
fn load_params(
    stored: &StoredSnapshot,
    paths: &SlotPaths,
    resume: bool,
    snap: &SnapshotRef,
) -> SnapshotLoadParams {
    SnapshotLoadParams {
        snapshot_path: stored.state_path(),
        mem_backend: MemoryBackend {
            backend_type: MemoryBackendType::File,
            backend_path: stored.mem_path(),
        },
        track_dirty_pages: None,
        resume_vm: Some(resume),
        network_overrides: snap
            .network_overrides
            .iter()
            .map(|o| NetworkOverride {
                iface_id: o.iface_id.clone(),
                host_dev_name: o.host_dev_name.clone(),
            })
            .collect(),
        vsock_override: stored.meta.vsock_cid.map(|_| VsockOverride {
            uds_path: paths.vsock.clone(),
        }),
    }
}

impl VmProvider for VmmProvider {
    fn name(&self) -> &'static str {
        self.inner.name
    }

    fn capabilities(&self) -> Capabilities {
        // Live TAP re-attachment needs VMM support that neither flavor has yet.
        Capabilities {
            live_network_update: false,
        }
    }

    fn create(&self, id: &VmId) -> Result<VmView, VmError> {
        match &self.inner.config.default_spec {
            Some(spec) => self.create_with_spec(id, spec),
            None => Err(VmError::invalid_spec(
                "kernel",
                "this provider has no default spec; use create_with_spec with a kernel or a \
                 snapshot",
            )),
        }
    }

    fn create_with_spec(&self, id: &VmId, spec: &VmSpec) -> Result<VmView, VmError> {
        spec.validate()?;
        match &spec.restore_from {
            Some(snap) => self.inner.restore(id, snap),
            None => self.inner.boot(id, spec),
        }
    }

    fn start(&self, id: &VmId) -> Result<VmView, VmError> {
        self.inner
            .transition(Operation::Start, id, VmStatus::Running, |c| {
                c.instance_start()
            })
    }

    fn pause(&self, id: &VmId) -> Result<VmView, VmError> {
        self.inner
            .transition(Operation::Pause, id, VmStatus::Paused, |c| c.pause())
    }

    fn resume(&self, id: &VmId) -> Result<VmView, VmError> {
        self.inner
            .transition(Operation::Resume, id, VmStatus::Running, |c| c.resume())
    }

    fn stop(&self, id: &VmId) -> Result<VmView, VmError> {
        self.inner.stop_vm(id)
    }

    fn snapshot(&self, id: &VmId, request: &SnapshotRequest) -> Result<SnapshotRef, VmError> {
        self.inner.take_snapshot(id, request)
    }

    fn rename(&self, from: &VmId, to: &VmId) -> Result<VmView, VmError> {
        self.inner.rename_vm(from, to)
    }

    fn destroy(&self, id: &VmId) -> Result<(), VmError> {
        self.inner.destroy_vm(id)
    }

    fn delete_snapshot(&self, id: &SnapshotId) -> Result<(), VmError> {
        self.inner.snapshots.delete(id).map(drop)
    }

    fn verify_snapshot(&self, snapshot: &SnapshotRef) -> Result<(), VmError> {
        self.inner.verify(snapshot)
    }
}

impl VmQuery for VmmProvider {
    fn list(&self) -> Result<Vec<VmView>, VmError> {
        let entries: Vec<Arc<VmEntry>> = self.inner.table().vms.values().cloned().collect();
        let mut views: Vec<VmView> = entries
            .iter()
            .map(|e| e.record().view())
            .filter(|v| v.status.is_live())
            .collect();
        views.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(views)
    }

    fn get(&self, id: &VmId) -> Result<VmView, VmError> {
        let view = self.inner.entry(id)?.record().view();
        if view.id != *id || !view.status.is_live() {
            return Err(VmError::vm_not_found(id));
        }
        Ok(view)
    }

    fn list_snapshots(&self) -> Result<Vec<SnapshotRef>, VmError> {
        Ok(self.inner.snapshots.list())
    }
}
