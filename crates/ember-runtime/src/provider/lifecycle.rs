//! The [`VmProvider`] and [`VmQuery`] implementation of [`VmmProvider`]: every lifecycle call
//! mapped onto the Firecracker API of the VM's own process. Creating VMs is in `create`,
//! snapshots in `snapshot`; this module has the per-VM calls (start, pause, resume, stop,
//! rename, destroy) and the trait glue.

use std::sync::Arc;

use ember_core::{
    Capabilities, Operation, ResourceKind, SnapshotId, SnapshotRef, SnapshotRequest, VmError, VmId,
    VmProvider, VmQuery, VmSpec, VmStatus, VmView,
};

use super::vm::VmEntry;
use super::{Inner, VmmProvider};
use crate::client::{ClientError, FirecrackerClient};
use crate::error::RuntimeError;

impl Inner {
    /// Looks `id` up and takes its operation lock; checks it still has that id.
    pub(super) fn locked<R>(
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
        // supervisor thread, which removes the slot once it is gone.
        entry.process.kill(true);
        // A jailed VMM's files stay until then: while its mount namespace lives, every file
        // of its jail that is a mount point there (the binary, the kernel, the snapshot's
        // files) costs a detach of that mount in the dying namespace to unlink (~1.3 ms more
        // per destroy, measured with `ember bench jail`); once it is gone they are plain files.
        if (self.jail.is_none() || entry.process.has_exited())
            && let Err(e) = self.layout.remove_slot(entry.slot())
        {
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

    /// Writes `PATCH /vm` and returns without reading the answer; the VM's next API call reads
    /// it first (a failed resume then fails that call, naming `PATCH /vm`). Saves the caller a
    /// sleep and a wake-up, and lets the guest find host data sent meanwhile already pending
    /// when its vCPU first runs.
    fn resume_unacknowledged(&self, id: &VmId) -> Result<VmView, VmError> {
        self.inner
            .transition(Operation::Resume, id, VmStatus::Running, |c| {
                c.resume_unacknowledged()
            })
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
        let entries: Vec<Arc<VmEntry>> = self.inner.table_read().vms.values().cloned().collect();
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
