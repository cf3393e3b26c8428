//! State shared by the pool's public API, its refiller and its workers, and the small operations
//! on it that several of them need (waking the refiller, dispatching and running a destroy).

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crossbeam_channel::Sender;
use ember_core::{SnapshotRef, StackKey, VmError, VmId, VmProvider, VmQuery, VmView, error_chain};

use crate::bucket::Bucket;
use crate::config::PoolSettings;
use crate::metrics::{Counters, EvictionCause, StackCounters};
use crate::validator::EntryValidator;

/// Work for the pool's worker threads.
#[derive(Debug)]
pub(crate) enum Job {
    /// Restore one entry for a bucket.
    Spawn {
        stack: StackKey,
        /// The bucket instance the spawn was planned for; a re-registered stack is a new one.
        epoch: u64,
        vm_id: VmId,
        template: Arc<SnapshotRef>,
        pause_idle: bool,
        /// The stack's counters (the restore, or the VM's eviction, is counted there).
        counters: Arc<StackCounters>,
    },
    /// Destroy an evicted VM (already counted as evicted).
    Destroy { vm_id: VmId, cause: EvictionCause },
    /// Check an adopted entry ([`Phase::Adopted`](crate::Phase::Adopted)) and evict it if unfit.
    CheckAdopted { stack: StackKey, view: VmView },
}

/// A registered bucket and the instance number it was registered under.
#[derive(Debug)]
pub(crate) struct Slot {
    pub epoch: u64,
    pub bucket: Bucket,
}

/// Everything under the pool's one lock.
#[derive(Debug, Default)]
pub(crate) struct State {
    pub buckets: HashMap<StackKey, Slot>,
    pub shutdown: bool,
    /// Set by anyone who wants the refiller to run a pass now.
    pub woken: bool,
    pub next_epoch: u64,
    /// When the last acquire under way ended (the start of `PoolSettings::refill_grace`).
    pub acquires_ended_at: Option<std::time::Instant>,
    /// Since when the refiller has been yielding to acquires (see `PoolSettings::refill_yield`).
    pub yielding_since: Option<std::time::Instant>,
    /// Spawn jobs planned and not yet finished, per stack — outliving the stack's bucket, so
    /// `WarmPool::wait_spawns` can tell when nothing restores from a deleted stack any more.
    pub spawning: HashMap<StackKey, usize>,
}

impl State {
    /// Counts a spawn job planned for `stack`.
    pub fn spawn_planned(&mut self, stack: &StackKey) {
        *self.spawning.entry(stack.clone()).or_default() += 1;
    }

    /// Counts a spawn job of `stack` finished (or abandoned).
    pub fn spawn_done(&mut self, stack: &StackKey) {
        if let Some(n) = self.spawning.get_mut(stack) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.spawning.remove(stack);
            }
        }
    }
}

/// The pool's shared core.
pub(crate) struct Shared<P> {
    pub provider: P,
    pub validator: Arc<dyn EntryValidator>,
    pub settings: PoolSettings,
    pub state: Mutex<State>,
    /// Acquire calls under way. Outside the lock, so an acquire takes the lock once (to take
    /// its entry) rather than three times: under a burst of acquirers every extra round on a
    /// contended lock is a futex sleep, a wake-up and a wait for a CPU. It reaches zero only
    /// under the lock, together with `State::acquires_ended_at`.
    pub acquiring: std::sync::atomic::AtomicUsize,
    /// The refiller waits here.
    pub wake: Condvar,
    /// `acquire_timeout` callers wait here for entries.
    pub ready: Condvar,
    /// `WarmPool::wait_spawns` callers wait here for a stack's spawn jobs to finish.
    pub spawns_done: Condvar,
    pub counters: Counters,
    /// Distinguishes this pool instance's VM ids from any other's.
    pub generation: String,
    /// Closed (set to `None`) at shutdown once nothing more will be dispatched.
    pub jobs: Mutex<Option<Sender<Job>>>,
}

impl<P: VmProvider + VmQuery> Shared<P> {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        // The pool's critical sections only move entries between collections and never panic
        // midway, so a poisoned lock still guards consistent state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks the refiller for a pass (the caller may hold the lock).
    pub fn wake_refiller(&self, st: &mut State) {
        st.woken = true;
        self.wake.notify_one();
    }

    /// Hands a destroy to the workers, or does it here if they are gone.
    pub fn dispatch_destroy(&self, vm_id: VmId, cause: EvictionCause) {
        let job = Job::Destroy { vm_id, cause };
        let unsent = {
            let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
            match jobs.as_ref() {
                Some(tx) => tx.send(job).err().map(|e| e.0),
                None => Some(job),
            }
        };
        if let Some(Job::Destroy { vm_id, cause }) = unsent {
            self.destroy_now(&vm_id, cause);
        }
    }

    /// Queues the background check of an adopted entry (dropped if the pool is shutting down:
    /// its entries go anyway).
    pub fn dispatch_check(&self, stack: StackKey, view: VmView) {
        let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = jobs.as_ref() {
            let _ = tx.send(Job::CheckAdopted { stack, view });
        }
    }

    /// Destroys an evicted VM (telling the validator first), retrying a few times; a VM already
    /// gone counts as destroyed.
    pub fn destroy_now(&self, vm_id: &VmId, cause: EvictionCause) {
        self.validator.evicted(vm_id, cause);
        let attempts = self.settings.destroy_attempts;
        for attempt in 1..=attempts {
            match self.provider.destroy(vm_id) {
                Ok(()) | Err(VmError::NotFound { .. }) => {
                    tracing::debug!(vm = %vm_id, %cause, "destroyed evicted VM");
                    return;
                }
                Err(e) => {
                    Counters::inc(&self.counters.provider_errors);
                    tracing::warn!(vm = %vm_id, %cause, attempt, error = %error_chain(&e),
                        "destroying an evicted VM failed");
                }
            }
        }
        Counters::inc(&self.counters.destroy_failures);
        tracing::error!(vm = %vm_id, %cause, attempts,
            "giving up destroying an evicted VM; it may be leaked");
    }
}
