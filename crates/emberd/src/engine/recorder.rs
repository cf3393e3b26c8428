//! [`Recorded`]: the runtime's provider with every VM change written to the store.
//!
//! Every VM the daemon runs — pooled, a tenant's, a raw API caller's — goes through this wrapper,
//! so the store's `vms` table is the list of VMs to adopt after a restart. A VM is recorded
//! right after its VMM answered the create (in the same call, before anyone is told it exists);
//! if the daemon dies between the two, the VMM has no record and the next start's sweep kills it
//! and removes its slot (that is the "pending" state of a create: a slot on disk that no record
//! claims). Status changes, renames and destroys are written as they succeed. Writes are
//! [`Durability::Process`]: they survive a daemon crash, and a power cut takes the VMs anyway.
//!
//! Two steps of a sandbox's create are recorded by the engine instead, in the one transaction
//! that also records the sandbox (one commit per create on the hot path): the pool's rename of
//! a warm VM to the tenant's id is kept as a *pending rename* ([`Recorded::take_pending_rename`]
//! — until then the store still names the VM by its pooled id, and a daemon that dies in
//! between finds it back in its pool), and a restore for a sandbox is made with
//! [`Recorded::create_unrecorded`] (a daemon that dies before the sandbox is recorded sweeps
//! the unrecorded VMM).
//!
//! A store write that fails after the VM changed is a host fault: a create is undone (the VM is
//! destroyed) and the error returned; for the other operations the error is returned and the
//! record is repaired at the next successful write or at recovery (which asks the VMM).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ember_core::{
    Capabilities, NetworkOverride, Operation, SnapshotId, SnapshotRef, SnapshotRequest, VmError,
    VmId, VmOwner, VmProvider, VmQuery, VmRecord, VmSpec, VmView, error_chain,
};
use ember_runtime::VmmProvider;
use ember_store::{Durability, Store};

/// A provider whose VM changes are recorded; `owner` is who new VMs belong to.
#[derive(Clone)]
pub struct Recorded {
    provider: Arc<VmmProvider>,
    store: Arc<Store>,
    owner: VmOwner,
    /// Warm VMs renamed to a tenant's id whose record still has the pooled id: tenant id →
    /// pooled id (shared by every owner's view).
    pending: Arc<Mutex<HashMap<VmId, VmId>>>,
}

fn store_fault(op: Operation, id: &dyn std::fmt::Display, e: ember_store::StoreError) -> VmError {
    VmError::provider("ember-store", op, id, e)
}

impl Recorded {
    /// Wraps `provider`; VMs it creates are recorded as `owner`'s.
    pub fn new(provider: Arc<VmmProvider>, store: Arc<Store>, owner: VmOwner) -> Self {
        Self {
            provider,
            store,
            owner,
            pending: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<VmId, VmId>> {
        // A map of ids only: a panicked holder leaves it consistent.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The pooled id of a warm VM handed to `tenant` whose rename is not recorded yet; the
    /// caller records it (removing the pooled id's record) in its own transaction.
    pub fn take_pending_rename(&self, tenant: &VmId) -> Option<VmId> {
        self.pending().remove(tenant)
    }

    /// Creates a VM without recording it: the caller records it
    /// ([`VmmProvider::vm_record`](ember_runtime::VmmProvider::vm_record)) in its own
    /// transaction, or destroys it.
    pub fn create_unrecorded(&self, id: &VmId, spec: &VmSpec) -> Result<VmView, VmError> {
        self.provider.create_with_spec(id, spec)
    }

    /// The same provider and store, creating VMs for another owner.
    pub fn for_owner(&self, owner: VmOwner) -> Self {
        Self {
            owner,
            ..self.clone()
        }
    }

    /// The runtime's provider underneath.
    pub fn inner(&self) -> &Arc<VmmProvider> {
        &self.provider
    }

    /// Writes (or rewrites) VM `id`'s record as `owner`'s, from what the provider says now.
    pub fn record(&self, id: &VmId, owner: VmOwner) -> Result<(), VmError> {
        let record = self.provider.vm_record(id, owner)?;
        self.store
            .write("record vm", Durability::Process, |tx| {
                tx.put(&record).map(drop)
            })
            .map_err(|e| store_fault(Operation::Create, id, e))
    }

    /// The owner recorded for `id`, if it has a record.
    pub fn owner_of(&self, id: &VmId) -> Option<VmOwner> {
        match self.store.get::<VmRecord>(id.as_str()) {
            Ok(r) => r.map(|s| s.record.owner),
            Err(e) => {
                tracing::error!(vm = %id, error = %error_chain(&e), "reading a VM record");
                None
            }
        }
    }

    /// Removes the record of a VM whose process died (the provider already dropped it).
    pub fn forget_dead(&self, id: &VmId) -> Result<(), VmError> {
        self.forget(id)
    }

    fn forget(&self, id: &VmId) -> Result<(), VmError> {
        self.store
            .write("forget vm", Durability::Process, |tx| {
                tx.delete::<VmRecord>(id.as_str()).map(drop)
            })
            .map_err(|e| store_fault(Operation::Destroy, id, e))
    }

    fn rerecord(&self, id: &VmId, view: VmView) -> Result<VmView, VmError> {
        if self.pending().contains_key(id) {
            // Recorded with its new id and status when its sandbox is.
            return Ok(view);
        }
        let owner = self.owner_of(id).unwrap_or(self.owner);
        self.record(id, owner)?;
        Ok(view)
    }
}

impl VmProvider for Recorded {
    fn name(&self) -> &'static str {
        self.provider.name()
    }

    fn capabilities(&self) -> Capabilities {
        self.provider.capabilities()
    }

    fn create(&self, id: &VmId) -> Result<VmView, VmError> {
        self.create_with_spec(id, &VmSpec::default())
    }

    fn create_with_spec(&self, id: &VmId, spec: &VmSpec) -> Result<VmView, VmError> {
        let view = self.provider.create_with_spec(id, spec)?;
        if let Err(e) = self.record(id, self.owner) {
            if let Err(d) = self.provider.destroy(id) {
                tracing::error!(vm = %id, error = %error_chain(&d), "undoing an unrecorded create");
            }
            return Err(e);
        }
        Ok(view)
    }

    fn start(&self, id: &VmId) -> Result<VmView, VmError> {
        let view = self.provider.start(id)?;
        self.rerecord(id, view)
    }

    fn pause(&self, id: &VmId) -> Result<VmView, VmError> {
        let view = self.provider.pause(id)?;
        self.rerecord(id, view)
    }

    fn resume(&self, id: &VmId) -> Result<VmView, VmError> {
        let view = self.provider.resume(id)?;
        self.rerecord(id, view)
    }

    fn resume_unacknowledged(&self, id: &VmId) -> Result<VmView, VmError> {
        let view = self.provider.resume_unacknowledged(id)?;
        self.rerecord(id, view)
    }

    fn stop(&self, id: &VmId) -> Result<VmView, VmError> {
        let view = self.provider.stop(id)?;
        self.rerecord(id, view)
    }

    fn snapshot(&self, id: &VmId, request: &SnapshotRequest) -> Result<SnapshotRef, VmError> {
        let snap = self.provider.snapshot(id, request)?;
        let info = self.provider.snapshot_info(&snap.snapshot_id)?;
        let recorded = self.store.write("record snapshot", Durability::Full, |tx| {
            tx.put(&info).map(drop)
        });
        if let Err(e) = recorded {
            if let Err(d) = self.provider.delete_snapshot(&snap.snapshot_id) {
                tracing::error!(snapshot = %snap.snapshot_id, error = %error_chain(&d),
                    "undoing an unrecorded snapshot");
            }
            return Err(store_fault(Operation::Snapshot, &snap.snapshot_id, e));
        }
        let owner = self.owner_of(id).unwrap_or(self.owner);
        if let Err(e) = self.record(id, owner) {
            tracing::error!(vm = %id, error = %error_chain(&e), "re-recording a VM after a snapshot");
        }
        Ok(snap)
    }

    /// A pooled VM renamed to a tenant's id becomes the tenant's (its sandbox's): the pool's
    /// renames are kept pending for the sandbox's transaction (and a rename back, after a failed
    /// handover, just drops the pending one). Any other VM keeps its owner and the rename is
    /// recorded now.
    fn rename(&self, from: &VmId, to: &VmId) -> Result<VmView, VmError> {
        if self.owner == VmOwner::Pool {
            let view = self.provider.rename(from, to)?;
            let mut pending = self.pending();
            match pending.remove(from) {
                // Back to its pooled id: the store never heard of the tenant's.
                Some(pooled) if pooled == *to => {}
                Some(pooled) => {
                    pending.insert(to.clone(), pooled);
                }
                None => {
                    pending.insert(to.clone(), from.clone());
                }
            }
            return Ok(view);
        }
        let owner = match self.owner_of(from).unwrap_or(self.owner) {
            VmOwner::Pool => VmOwner::Sandbox,
            other => other,
        };
        let view = self.provider.rename(from, to)?;
        let record = self.provider.vm_record(to, owner)?;
        self.store
            .write("rename vm", Durability::Process, |tx| {
                tx.delete::<VmRecord>(from.as_str())?;
                tx.put(&record).map(drop)
            })
            .map_err(|e| store_fault(Operation::Rename, from, e))?;
        Ok(view)
    }

    fn destroy(&self, id: &VmId) -> Result<(), VmError> {
        // A warm VM destroyed under its tenant's id before its sandbox was recorded: the store
        // still names it by its pooled id.
        if let Some(pooled) = self.take_pending_rename(id) {
            self.provider.destroy(id)?;
            return self.forget(&pooled);
        }
        match self.provider.destroy(id) {
            Ok(()) => self.forget(id),
            Err(e @ VmError::NotFound { .. }) => {
                // Gone already (it died): its record goes too.
                self.forget(id)?;
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    fn delete_snapshot(&self, id: &SnapshotId) -> Result<(), VmError> {
        self.provider.delete_snapshot(id)?;
        self.store
            .write("forget snapshot", Durability::Full, |tx| {
                tx.remove::<ember_core::SnapshotInfo>(id.as_str()).map(drop)
            })
            .map_err(|e| store_fault(Operation::DeleteSnapshot, id, e))
    }

    fn verify_snapshot(&self, snapshot: &SnapshotRef) -> Result<(), VmError> {
        self.provider.verify_snapshot(snapshot)
    }

    fn update_network(&self, id: &VmId, overrides: &[NetworkOverride]) -> Result<(), VmError> {
        self.provider.update_network(id, overrides)
    }
}

impl VmQuery for Recorded {
    fn list(&self) -> Result<Vec<VmView>, VmError> {
        self.provider.list()
    }

    fn get(&self, id: &VmId) -> Result<VmView, VmError> {
        self.provider.get(id)
    }

    fn list_snapshots(&self) -> Result<Vec<SnapshotRef>, VmError> {
        self.provider.list_snapshots()
    }
}
