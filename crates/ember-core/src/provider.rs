//! The runtime contract: [`VmProvider`] (lifecycle) and [`VmQuery`] (read-only views).
//!
//! Every way ember runs a microVM — its own VMM, a real Firecracker, or the in-memory model used to
//! test the pool — implements these two traits. Callers (the warm pool, the daemon) know nothing
//! else about the machinery underneath.
//!
//! Concurrency rule for implementers: calls on *different* VMs must proceed in parallel. Hold a lock
//! only to read or update bookkeeping, never across a slow call (a process spawn, an HTTP request,
//! a KVM ioctl, a sleep). Calls on the *same* VM may be serialized.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Operation, VmError};
use crate::id::{SnapshotId, VmId};
use crate::snapshot::{NetworkOverride, SnapshotRef};
use crate::spec::VmSpec;
use crate::stack::StackKey;
use crate::view::VmView;

/// What a provider can do beyond the required lifecycle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// [`VmProvider::update_network`] can re-attach a *live* VM's interfaces to other TAP devices.
    /// Without it, network overrides only apply at restore.
    pub live_network_update: bool,
}

/// What to call a new snapshot and who owns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRequest {
    /// The new snapshot's id (must be unused).
    pub snapshot_id: SnapshotId,
    /// The stack that will own it, so it outlives the VM it is taken from.
    pub stack: Option<StackKey>,
}

/// Lifecycle operations on microVMs.
///
/// Every call is synchronous and may block for as long as the underlying machinery needs (a
/// restore is about a millisecond, a boot a few). ember chose a blocking contract on purpose:
/// providers are thin layers over blocking syscalls and sub-millisecond Unix-socket requests, the
/// warm pool runs on its own threads, and a blocking trait stays object-safe and free of any async
/// runtime. Async callers (the daemon) use `spawn_blocking`.
pub trait VmProvider: Send + Sync {
    /// A short name for logs and errors (`"in-memory"`, `"ember-vmm"`, `"firecracker"`).
    fn name(&self) -> &'static str;

    /// Optional features this provider supports.
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    /// Creates a VM with the provider's default spec; it starts in [`Created`](crate::VmStatus).
    fn create(&self, id: &VmId) -> Result<VmView, VmError>;

    /// Creates a VM from `spec`: a fresh VM in `Created`, or, with `spec.restore_from`, a restored
    /// VM in `Running` or `Paused` according to the snapshot's `resume` flag.
    fn create_with_spec(&self, id: &VmId, spec: &VmSpec) -> Result<VmView, VmError>;

    /// Boots a `Created` VM.
    fn start(&self, id: &VmId) -> Result<VmView, VmError>;

    /// Pauses a `Running` VM's vCPUs.
    fn pause(&self, id: &VmId) -> Result<VmView, VmError>;

    /// Resumes a `Paused` VM.
    fn resume(&self, id: &VmId) -> Result<VmView, VmError>;

    /// Resumes a `Paused` VM for a caller whose next step proves it runs (a guest agent round
    /// trip): a provider may return once the resume is on its way, before the VMM has
    /// acknowledged it, and report a failed acknowledgement on the VM's next call. Same
    /// checks and result as [`resume`](Self::resume), which is what it does by default.
    fn resume_unacknowledged(&self, id: &VmId) -> Result<VmView, VmError> {
        self.resume(id)
    }

    /// Stops the guest; only destroy follows.
    fn stop(&self, id: &VmId) -> Result<VmView, VmError>;

    /// Takes a full snapshot of a `Paused` VM. The snapshot belongs to `request.stack` and is not
    /// deleted when the VM is destroyed.
    fn snapshot(&self, id: &VmId, request: &SnapshotRequest) -> Result<SnapshotRef, VmError>;

    /// Gives a live VM a new id, atomically: afterwards `from` is free and `to` names the same,
    /// still-running VM. Fails with `AlreadyExists` if `to` names a live VM.
    fn rename(&self, from: &VmId, to: &VmId) -> Result<VmView, VmError>;

    /// Releases the VM and everything it holds (process, sockets, files). Its id may be reused.
    fn destroy(&self, id: &VmId) -> Result<(), VmError>;

    /// Deletes a snapshot's files and forgets it. VMs already restored from it keep running.
    fn delete_snapshot(&self, id: &SnapshotId) -> Result<(), VmError>;

    /// Checks that `snapshot` can be restored by this provider (its files exist and are intact),
    /// without restoring it. The pool calls it when a template is registered so a missing or
    /// corrupt template is reported at once. The default accepts everything.
    fn verify_snapshot(&self, snapshot: &SnapshotRef) -> Result<(), VmError> {
        let _ = snapshot;
        Ok(())
    }

    /// Re-attaches a live VM's interfaces to other host TAP devices. Only providers whose
    /// [`Capabilities::live_network_update`] is set support it.
    fn update_network(&self, id: &VmId, overrides: &[NetworkOverride]) -> Result<(), VmError> {
        let _ = (id, overrides);
        Err(VmError::Unsupported {
            provider: self.name(),
            op: Operation::UpdateNetwork,
        })
    }
}

/// Read-only views of what a provider holds.
pub trait VmQuery: Send + Sync {
    /// Every VM the provider knows.
    fn list(&self) -> Result<Vec<VmView>, VmError>;

    /// One VM, or `NotFound`.
    fn get(&self, id: &VmId) -> Result<VmView, VmError>;

    /// Every snapshot the provider holds.
    fn list_snapshots(&self) -> Result<Vec<SnapshotRef>, VmError>;
}

macro_rules! forward_provider {
    ($ty:ty) => {
        impl<T: VmProvider + ?Sized> VmProvider for $ty {
            fn name(&self) -> &'static str {
                (**self).name()
            }
            fn capabilities(&self) -> Capabilities {
                (**self).capabilities()
            }
            fn create(&self, id: &VmId) -> Result<VmView, VmError> {
                (**self).create(id)
            }
            fn create_with_spec(&self, id: &VmId, spec: &VmSpec) -> Result<VmView, VmError> {
                (**self).create_with_spec(id, spec)
            }
            fn start(&self, id: &VmId) -> Result<VmView, VmError> {
                (**self).start(id)
            }
            fn pause(&self, id: &VmId) -> Result<VmView, VmError> {
                (**self).pause(id)
            }
            fn resume(&self, id: &VmId) -> Result<VmView, VmError> {
                (**self).resume(id)
            }
            fn resume_unacknowledged(&self, id: &VmId) -> Result<VmView, VmError> {
                (**self).resume_unacknowledged(id)
            }
            fn stop(&self, id: &VmId) -> Result<VmView, VmError> {
                (**self).stop(id)
            }
            fn snapshot(
                &self,
                id: &VmId,
                request: &SnapshotRequest,
            ) -> Result<SnapshotRef, VmError> {
                (**self).snapshot(id, request)
            }
            fn rename(&self, from: &VmId, to: &VmId) -> Result<VmView, VmError> {
                (**self).rename(from, to)
            }
            fn destroy(&self, id: &VmId) -> Result<(), VmError> {
                (**self).destroy(id)
            }
            fn delete_snapshot(&self, id: &SnapshotId) -> Result<(), VmError> {
                (**self).delete_snapshot(id)
            }
            fn verify_snapshot(&self, snapshot: &SnapshotRef) -> Result<(), VmError> {
                (**self).verify_snapshot(snapshot)
            }
            fn update_network(
                &self,
                id: &VmId,
                overrides: &[NetworkOverride],
            ) -> Result<(), VmError> {
                (**self).update_network(id, overrides)
            }
        }

        impl<T: VmQuery + ?Sized> VmQuery for $ty {
            fn list(&self) -> Result<Vec<VmView>, VmError> {
                (**self).list()
            }
            fn get(&self, id: &VmId) -> Result<VmView, VmError> {
                (**self).get(id)
            }
            fn list_snapshots(&self) -> Result<Vec<SnapshotRef>, VmError> {
                (**self).list_snapshots()
            }
        }
    };
}

forward_provider!(Arc<T>);
forward_provider!(Box<T>);
forward_provider!(&T);
