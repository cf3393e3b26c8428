//! Raw VMs: the seeds' `VmProvider` contract over HTTP, for callers who manage VMs themselves
//! (create with a spec — a boot or a restore —, start, stop, pause, resume, snapshot, rename,
//! destroy, list, get, list snapshots). VMs made here are recorded with owner `api` and
//! re-adopted after a restart like every other. VMs that belong to a pool or a sandbox can be
//! read here but not changed: their owners manage them.

use ember_core::{
    SnapshotId, SnapshotRef, SnapshotRequest, StackKey, VmId, VmOwner, VmProvider, VmQuery,
    VmRecord, VmSpec, VmView,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Engine;
use crate::error::ApiError;

/// `POST /v1/vms`: a VM to create.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVm {
    /// Its id (letters, digits, `-`, `_`, `.`; at most 64 bytes).
    #[schema(value_type = String)]
    pub id: VmId,
    /// What to boot or restore (ember-core's `VmSpec`: kernel, boot_args, drives, vsock... or
    /// `restore_from`).
    #[schema(value_type = Object)]
    pub spec: VmSpec,
}

/// `POST /v1/vms/{id}/snapshot`: the snapshot to take of a paused VM.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotVm {
    /// The new snapshot's id.
    #[schema(value_type = String)]
    pub snapshot_id: SnapshotId,
    /// The stack that owns it (it then outlives the VM as that stack's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<StackKey>,
}

/// `POST /v1/vms/{id}/rename`: the VM's new id.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenameVm {
    /// The new id (unused).
    #[schema(value_type = String)]
    pub to: VmId,
}

/// A lifecycle step on a raw VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmAction {
    /// Boot a created VM.
    Start,
    /// Stop the guest.
    Stop,
    /// Pause the vCPUs.
    Pause,
    /// Resume the vCPUs.
    Resume,
}

fn vm_id(id: &str) -> Result<VmId, ApiError> {
    VmId::new(id).map_err(ApiError::from)
}

impl Engine {
    /// Refuses changes to a VM some other owner manages.
    fn check_api_owned(&self, id: &VmId) -> Result<(), ApiError> {
        match self.store.get::<VmRecord>(id.as_str())? {
            None => Err(ApiError::not_found(format!("VM {id} not found"))),
            Some(r) if r.record.owner == VmOwner::Api => Ok(()),
            Some(r) => Err(ApiError::conflict(format!(
                "VM {id} belongs to a {}; manage it through /v1/{}",
                r.record.owner,
                match r.record.owner {
                    VmOwner::Pool => "pools",
                    _ => "sandboxes",
                }
            ))),
        }
    }

    /// Creates a VM (a boot in `created`, or a restore running or paused).
    pub fn create_vm(&self, req: CreateVm) -> Result<VmView, ApiError> {
        req.spec.validate()?;
        if self.store.get::<VmRecord>(req.id.as_str())?.is_some() {
            return Err(ApiError::conflict(format!("VM {} already exists", req.id)));
        }
        Ok(self.vms.create_with_spec(&req.id, &req.spec)?)
    }

    /// Runs a lifecycle step on a raw VM.
    pub fn vm_action(&self, id: &str, action: VmAction) -> Result<VmView, ApiError> {
        let id = vm_id(id)?;
        self.check_api_owned(&id)?;
        Ok(match action {
            VmAction::Start => self.vms.start(&id)?,
            VmAction::Stop => self.vms.stop(&id)?,
            VmAction::Pause => self.vms.pause(&id)?,
            VmAction::Resume => self.vms.resume(&id)?,
        })
    }

    /// Snapshots a paused raw VM.
    pub fn snapshot_vm(&self, id: &str, req: SnapshotVm) -> Result<SnapshotRef, ApiError> {
        let id = vm_id(id)?;
        self.check_api_owned(&id)?;
        Ok(self.vms.snapshot(
            &id,
            &SnapshotRequest {
                snapshot_id: req.snapshot_id,
                stack: req.stack,
            },
        )?)
    }

    /// Renames a raw VM.
    pub fn rename_vm(&self, id: &str, req: RenameVm) -> Result<VmView, ApiError> {
        let id = vm_id(id)?;
        self.check_api_owned(&id)?;
        if self.store.get::<VmRecord>(req.to.as_str())?.is_some() {
            return Err(ApiError::conflict(format!("VM {} already exists", req.to)));
        }
        Ok(self.vms.rename(&id, &req.to)?)
    }

    /// Destroys a raw VM.
    pub fn destroy_vm_api(&self, id: &str) -> Result<(), ApiError> {
        let id = vm_id(id)?;
        self.check_api_owned(&id)?;
        Ok(self.vms.destroy(&id)?)
    }

    /// Every VM the host runs (pooled, sandboxes' and raw).
    pub fn list_vms(&self) -> Result<Vec<VmView>, ApiError> {
        Ok(self.vms.list()?)
    }

    /// One VM.
    pub fn get_vm(&self, id: &str) -> Result<VmView, ApiError> {
        Ok(self.vms.get(&vm_id(id)?)?)
    }

    /// Every snapshot the host can restore.
    pub fn list_snapshots(&self) -> Result<Vec<SnapshotRef>, ApiError> {
        Ok(self.vms.list_snapshots()?)
    }

    /// Deletes a snapshot nothing uses (a template's snapshot goes with its template).
    pub fn delete_snapshot(&self, id: &str) -> Result<(), ApiError> {
        let id = SnapshotId::new(id)?;
        if self
            .store
            .get::<ember_core::SnapshotInfo>(id.as_str())?
            .is_none()
        {
            return Err(ApiError::not_found(format!("snapshot {id} not found")));
        }
        // The store refuses while a template refers to it; check before the files go.
        let users = self.store.read("snapshot users", |tx| {
            let templates = tx.list::<ember_core::Template>()?;
            Ok::<_, ember_store::StoreError>(
                templates
                    .into_iter()
                    .filter(|t| t.record.snapshot.as_ref() == Some(&id))
                    .map(|t| format!("template {}", t.record.name))
                    .collect::<Vec<_>>(),
            )
        })?;
        if !users.is_empty() {
            return Err(ApiError::conflict(format!(
                "snapshot {id} is in use by {}",
                users.join(", ")
            )));
        }
        Ok(self.vms.delete_snapshot(&id)?)
    }
}
