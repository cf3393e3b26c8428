//! [`InMemoryVmProvider`]: the complete VM lifecycle state machine with no VM behind it.
//!
//! It exists to test everything above the provider seam (the pool, the daemon) quickly and
//! deterministically: restore yields `Running` or `Paused` per the snapshot's `resume` flag,
//! snapshots outlive the VM they were taken from, rename is atomic, destroyed ids are reusable,
//! and [`FaultPlan`]s make chosen calls fail or run slow. Destroyed VMs stay visible in
//! [`VmQuery::list`] and [`VmQuery::get`] with status `Destroyed` (until their id is reused) so
//! tests can account for every VM ever created; every mutating call on them is `NotFound`.

mod faults;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::SystemTime;

use faults::Faults;
pub use faults::{FaultPlan, Gate, InjectedFault};

use crate::error::{Operation, ResourceKind, VmError};
use crate::id::{SnapshotId, VmId};
use crate::provider::{Capabilities, SnapshotRequest, VmProvider, VmQuery};
use crate::snapshot::{NetworkOverride, SnapshotRef};
use crate::spec::VmSpec;
use crate::stack::StackKey;
use crate::view::{VmStatus, VmView};

const NAME: &str = "in-memory";

/// One VM's bookkeeping.
#[derive(Debug, Clone)]
struct VmRecord {
    status: VmStatus,
    stack: Option<StackKey>,
    restored_from: Option<SnapshotId>,
    created_at: SystemTime,
    snapshots: Vec<SnapshotId>,
    unhealthy: Option<String>,
    network: Vec<NetworkOverride>,
}

impl VmRecord {
    fn view(&self, id: &VmId) -> VmView {
        VmView {
            id: id.clone(),
            status: self.status,
            stack: self.stack.clone(),
            restored_from: self.restored_from.clone(),
            created_at: self.created_at,
            snapshots: self.snapshots.clone(),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    vms: BTreeMap<VmId, VmRecord>,
    snapshots: BTreeMap<SnapshotId, SnapshotRef>,
    faults: Faults,
    capabilities: Capabilities,
}

/// An in-process [`VmProvider`] + [`VmQuery`]; cheap to clone (clones share state).
#[derive(Debug, Clone)]
pub struct InMemoryVmProvider {
    state: Arc<Mutex<State>>,
}

impl Default for InMemoryVmProvider {
    fn default() -> Self {
        Self::new()
    }
}

impl InMemoryVmProvider {
    /// An empty provider that supports live network updates.
    pub fn new() -> Self {
        let state = State {
            capabilities: Capabilities {
                live_network_update: true,
            },
            ..State::default()
        };
        Self {
            state: Arc::new(Mutex::new(state)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock can only come from a bug in this module's short,
        // non-panicking critical sections; the state is still consistent, so keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Installs `plan` for `op`, replacing any earlier plan and restarting its call count.
    pub fn inject(&self, op: Operation, plan: FaultPlan) {
        self.lock().faults.install(op, plan);
    }

    /// Makes the `n`th call of `op` from now (1-based) fail.
    pub fn fail_nth(&self, op: Operation, n: u64) {
        self.inject(op, FaultPlan::fail_calls([n]));
    }

    /// Removes every fault plan.
    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// How many times `op` has been called since the provider was made.
    pub fn calls(&self, op: Operation) -> u64 {
        self.lock().faults.calls(op)
    }

    /// Overrides what the provider claims to support.
    pub fn set_capabilities(&self, caps: Capabilities) {
        self.lock().capabilities = caps;
    }

    /// Marks a VM unhealthy; [`unhealthy_reason`](Self::unhealthy_reason) reports `reason`.
    pub fn mark_unhealthy(&self, id: &VmId, reason: impl Into<String>) -> Result<(), VmError> {
        let mut st = self.lock();
        let rec = live_mut(&mut st, id)?;
        rec.unhealthy = Some(reason.into());
        Ok(())
    }

    /// Why the VM is unhealthy, or `None` if it is healthy (what a validator would probe).
    pub fn unhealthy_reason(&self, id: &VmId) -> Result<Option<String>, VmError> {
        let st = self.lock();
        let rec = live(&st, id)?;
        Ok(match (&rec.unhealthy, rec.status) {
            (Some(reason), _) => Some(reason.clone()),
            (None, VmStatus::Stopped) => Some("the VM is stopped".to_string()),
            (None, _) => None,
        })
    }

    /// Simulates the VM's process dying: it becomes `Stopped` and unhealthy.
    pub fn crash(&self, id: &VmId) -> Result<(), VmError> {
        let mut st = self.lock();
        let rec = live_mut(&mut st, id)?;
        rec.status = VmStatus::Stopped;
        rec.unhealthy = Some("the VM process died".to_string());
        Ok(())
    }

    /// The TAP overrides applied to a VM at restore or by `update_network`.
    pub fn network_of(&self, id: &VmId) -> Result<Vec<NetworkOverride>, VmError> {
        Ok(live(&self.lock(), id)?.network.clone())
    }

    /// Registers a snapshot as if it had been taken by this provider (for tests that start from a
    /// template without creating one).
    pub fn add_snapshot(&self, snapshot: SnapshotRef) -> Result<(), VmError> {
        snapshot.validate()?;
        let mut st = self.lock();
        if st.snapshots.contains_key(&snapshot.snapshot_id) {
            return Err(VmError::AlreadyExists {
                kind: ResourceKind::Snapshot,
                id: snapshot.snapshot_id.to_string(),
            });
        }
        st.snapshots.insert(snapshot.snapshot_id.clone(), snapshot);
        Ok(())
    }

    /// Number of VMs that are not destroyed.
    pub fn live_count(&self) -> usize {
        self.lock()
            .vms
            .values()
            .filter(|r| r.status.is_live())
            .count()
    }

    /// Counts the call, sleeps its planned delay outside the lock, and fails it if planned.
    fn enter(&self, op: Operation, id: &dyn std::fmt::Display) -> Result<(), VmError> {
        let verdict = self.lock().faults.on_call(op);
        if let Some(gate) = &verdict.hold {
            gate.pass();
        }
        if !verdict.delay.is_zero() {
            thread::sleep(verdict.delay);
        }
        match verdict.fail {
            Some(fault) => Err(VmError::provider(NAME, op, id, fault)),
            None => Ok(()),
        }
    }

    /// Moves a live VM along a lifecycle edge.
    fn transition(&self, op: Operation, id: &VmId, to: VmStatus) -> Result<VmView, VmError> {
        self.enter(op, id)?;
        let mut st = self.lock();
        let rec = live_mut(&mut st, id)?;
        if !rec.status.can_transition_to(to) {
            return Err(VmError::InvalidTransition {
                id: id.to_string(),
                from: rec.status,
                to,
            });
        }
        rec.status = to;
        Ok(rec.view(id))
    }
}

fn live<'a>(st: &'a State, id: &VmId) -> Result<&'a VmRecord, VmError> {
    st.vms
        .get(id)
        .filter(|r| r.status.is_live())
        .ok_or_else(|| VmError::vm_not_found(id))
}

fn live_mut<'a>(st: &'a mut State, id: &VmId) -> Result<&'a mut VmRecord, VmError> {
    st.vms
        .get_mut(id)
        .filter(|r| r.status.is_live())
        .ok_or_else(|| VmError::vm_not_found(id))
}

impl VmProvider for InMemoryVmProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        self.lock().capabilities
    }

    fn create(&self, id: &VmId) -> Result<VmView, VmError> {
        self.create_with_spec(id, &VmSpec::default())
    }

    fn create_with_spec(&self, id: &VmId, spec: &VmSpec) -> Result<VmView, VmError> {
        spec.validate()?;
        self.enter(Operation::Create, id)?;
        let mut st = self.lock();
        if st.vms.get(id).is_some_and(|r| r.status.is_live()) {
            return Err(VmError::AlreadyExists {
                kind: ResourceKind::Vm,
                id: id.to_string(),
            });
        }
        let record = match &spec.restore_from {
            None => VmRecord {
                status: VmStatus::Created,
                stack: None,
                restored_from: None,
                created_at: SystemTime::now(),
                snapshots: Vec::new(),
                unhealthy: None,
                network: Vec::new(),
            },
            Some(snap) => {
                let known =
                    st.snapshots
                        .get(&snap.snapshot_id)
                        .ok_or_else(|| VmError::NotFound {
                            kind: ResourceKind::Snapshot,
                            id: snap.snapshot_id.to_string(),
                        })?;
                VmRecord {
                    status: if snap.resume {
                        VmStatus::Running
                    } else {
                        VmStatus::Paused
                    },
                    stack: known.stack.clone(),
                    restored_from: Some(snap.snapshot_id.clone()),
                    created_at: SystemTime::now(),
                    snapshots: Vec::new(),
                    unhealthy: None,
                    network: snap.network_overrides.clone(),
                }
            }
        };
        let view = record.view(id);
        st.vms.insert(id.clone(), record);
        Ok(view)
    }

    fn start(&self, id: &VmId) -> Result<VmView, VmError> {
        self.transition(Operation::Start, id, VmStatus::Running)
    }

    fn pause(&self, id: &VmId) -> Result<VmView, VmError> {
        self.transition(Operation::Pause, id, VmStatus::Paused)
    }

    fn resume(&self, id: &VmId) -> Result<VmView, VmError> {
        self.transition(Operation::Resume, id, VmStatus::Running)
    }

    fn stop(&self, id: &VmId) -> Result<VmView, VmError> {
        self.transition(Operation::Stop, id, VmStatus::Stopped)
    }

    fn snapshot(&self, id: &VmId, request: &SnapshotRequest) -> Result<SnapshotRef, VmError> {
        self.enter(Operation::Snapshot, id)?;
        let mut st = self.lock();
        if st.snapshots.contains_key(&request.snapshot_id) {
            return Err(VmError::AlreadyExists {
                kind: ResourceKind::Snapshot,
                id: request.snapshot_id.to_string(),
            });
        }
        let rec = live_mut(&mut st, id)?;
        if rec.status != VmStatus::Paused {
            return Err(VmError::InvalidState {
                id: id.to_string(),
                op: Operation::Snapshot,
                status: rec.status,
                required: VmStatus::Paused,
            });
        }
        rec.snapshots.push(request.snapshot_id.clone());
        let stack = request.stack.clone().or_else(|| rec.stack.clone());
        let base = PathBuf::from("/in-memory/snapshots").join(request.snapshot_id.as_str());
        let snap = SnapshotRef::new(
            request.snapshot_id.clone(),
            stack,
            base.join("state"),
            base.join("mem"),
        );
        st.snapshots
            .insert(request.snapshot_id.clone(), snap.clone());
        Ok(snap)
    }

    fn rename(&self, from: &VmId, to: &VmId) -> Result<VmView, VmError> {
        self.enter(Operation::Rename, from)?;
        let mut st = self.lock();
        live(&st, from)?;
        if from == to {
            return Ok(live(&st, from)?.view(to));
        }
        if st.vms.get(to).is_some_and(|r| r.status.is_live()) {
            return Err(VmError::AlreadyExists {
                kind: ResourceKind::Vm,
                id: to.to_string(),
            });
        }
        let rec = st
            .vms
            .remove(from)
            .ok_or_else(|| VmError::vm_not_found(from))?;
        let view = rec.view(to);
        st.vms.insert(to.clone(), rec);
        Ok(view)
    }

    fn destroy(&self, id: &VmId) -> Result<(), VmError> {
        self.enter(Operation::Destroy, id)?;
        let mut st = self.lock();
        let rec = live_mut(&mut st, id)?;
        rec.status = VmStatus::Destroyed;
        rec.network.clear();
        Ok(())
    }

    fn delete_snapshot(&self, id: &SnapshotId) -> Result<(), VmError> {
        self.enter(Operation::DeleteSnapshot, id)?;
        let mut st = self.lock();
        st.snapshots
            .remove(id)
            .map(|_| ())
            .ok_or_else(|| VmError::NotFound {
                kind: ResourceKind::Snapshot,
                id: id.to_string(),
            })
    }

    fn verify_snapshot(&self, snapshot: &SnapshotRef) -> Result<(), VmError> {
        snapshot.validate()?;
        if self.lock().snapshots.contains_key(&snapshot.snapshot_id) {
            Ok(())
        } else {
            Err(VmError::NotFound {
                kind: ResourceKind::Snapshot,
                id: snapshot.snapshot_id.to_string(),
            })
        }
    }

    fn update_network(&self, id: &VmId, overrides: &[NetworkOverride]) -> Result<(), VmError> {
        if !self.capabilities().live_network_update {
            return Err(VmError::Unsupported {
                provider: NAME,
                op: Operation::UpdateNetwork,
            });
        }
        self.enter(Operation::UpdateNetwork, id)?;
        let mut st = self.lock();
        let rec = live_mut(&mut st, id)?;
        for o in overrides {
            rec.network.retain(|n| n.iface_id != o.iface_id);
            rec.network.push(o.clone());
        }
        Ok(())
    }
}

impl VmQuery for InMemoryVmProvider {
    fn list(&self) -> Result<Vec<VmView>, VmError> {
        self.enter(Operation::Query, &"*")?;
        let st = self.lock();
        Ok(st.vms.iter().map(|(id, r)| r.view(id)).collect())
    }

    fn get(&self, id: &VmId) -> Result<VmView, VmError> {
        self.enter(Operation::Query, id)?;
        let st = self.lock();
        st.vms
            .get(id)
            .map(|r| r.view(id))
            .ok_or_else(|| VmError::vm_not_found(id))
    }

    fn list_snapshots(&self) -> Result<Vec<SnapshotRef>, VmError> {
        self.enter(Operation::Query, &"*")?;
        Ok(self.lock().snapshots.values().cloned().collect())
    }
}

#[cfg(test)]
mod tests;
