//! The validator hook: how the pool decides an entry is fit to hand over.

use ember_core::{VmId, VmStatus, VmView};

use crate::metrics::EvictionCause;

/// When a validation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Right after a refill restored the entry (the VM is as the restore left it).
    AfterSpawn,
    /// On the acquire path, before the entry is renamed and handed over. Keep this fast: the
    /// tenant is waiting. A paused entry cannot answer a guest agent yet; check what the host
    /// can see (the VMM process, its API).
    OnAcquire,
    /// After the entry was renamed to the tenant's id, re-networked and resumed, just before it
    /// is returned: the guest runs, so this is where a guest agent proves it is alive and where
    /// per-clone state is refreshed (ember reseeds entropy and the clock here). Unhealthy evicts
    /// the VM and the next entry is tried.
    Handover,
    /// An entry an earlier owner of the pool left running, taken back by
    /// [`WarmPool::register_adopting`](crate::WarmPool::register_adopting): checked in the
    /// background while it already waits in its bucket (an acquire may hand it over meanwhile;
    /// its Handover check proves it then). The VM is as that owner left it, running or paused.
    Adopted,
}

/// A validator's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValidationResult {
    /// Fit to hand over.
    Healthy,
    /// Not fit: the entry is destroyed. The reason is logged and counted per reason, so keep it a
    /// short category (`"agent timeout"`, `"process died"`), not a unique message.
    Unhealthy(String),
}

/// Decides whether an entry is fit to hand over; called after each spawn and on each acquire.
pub trait EntryValidator: Send + Sync + 'static {
    /// Probes `vm` (its current view: id, status, stack) in `phase`.
    fn validate(&self, vm: &VmView, phase: Phase) -> ValidationResult;

    /// The pool is about to destroy `vm` (evicted for `cause`): drop anything kept for it. Called
    /// once per evicted VM, before the provider's destroy. The default keeps nothing.
    fn evicted(&self, vm: &VmId, cause: EvictionCause) {
        let _ = (vm, cause);
    }
}

/// A validator that trusts every entry the provider reports alive.
#[derive(Debug, Clone, Copy, Default)]
pub struct AliveValidator;

impl EntryValidator for AliveValidator {
    fn validate(&self, vm: &VmView, _phase: Phase) -> ValidationResult {
        match vm.status {
            VmStatus::Running | VmStatus::Paused => ValidationResult::Healthy,
            other => ValidationResult::Unhealthy(format!("vm is {other}")),
        }
    }
}

impl<F> EntryValidator for F
where
    F: Fn(&VmView, Phase) -> ValidationResult + Send + Sync + 'static,
{
    fn validate(&self, vm: &VmView, phase: Phase) -> ValidationResult {
        self(vm, phase)
    }
}
