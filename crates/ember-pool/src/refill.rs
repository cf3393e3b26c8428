//! The refiller: one coordinator thread that plans spawns and age evictions whenever something
//! happens (an acquire, a registration, an eviction, a finished spawn) or a deadline passes (an
//! entry's expiry, a backoff's end, the periodic tick), and worker threads that run the slow
//! provider calls the plans produce.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use ember_core::{
    SnapshotRef, StackKey, VmError, VmId, VmProvider, VmQuery, VmSpec, VmStatus, VmView,
    error_chain,
};

use crate::bucket::Entry;
use crate::metrics::{Counters, EvictionCause, StackCounters};
use crate::shared::{Job, Shared};
use crate::validator::{Phase, ValidationResult};

/// The coordinator: plans under the lock, dispatches outside it, sleeps until woken or due.
pub(crate) fn coordinator<P: VmProvider + VmQuery>(shared: &Shared<P>, jobs: Sender<Job>) {
    let mut st = shared.lock();
    loop {
        if st.shutdown {
            return;
        }
        st.woken = false;
        Counters::inc(&shared.counters.refill_runs);
        let now = Instant::now();
        let mut next = now + shared.settings.tick;
        let mut expired: Vec<(StackKey, Entry)> = Vec::new();
        let mut spawns: Vec<Job> = Vec::new();
        let yielding = yield_to_acquires(shared, &mut st, now, &mut next);
        let mut planned: Vec<StackKey> = Vec::new();
        for (key, slot) in st.buckets.iter_mut() {
            let bucket = &mut slot.bucket;
            expired.extend(
                bucket
                    .take_expired(now)
                    .into_iter()
                    .map(|e| (key.clone(), e)),
            );
            let wanted = if yielding && bucket.waiters == 0 {
                0
            } else {
                bucket.spawns_wanted(now)
            };
            for _ in 0..wanted {
                let Some(vm_id) = bucket.next_vm_id(&shared.generation) else {
                    tracing::error!(stack = %key, "stack slug makes an invalid VM id");
                    break;
                };
                bucket.in_flight += 1;
                planned.push(key.clone());
                spawns.push(Job::Spawn {
                    stack: key.clone(),
                    epoch: slot.epoch,
                    vm_id,
                    template: Arc::clone(&bucket.template),
                    pause_idle: bucket.config.pause_idle,
                    counters: Arc::clone(&bucket.counters),
                });
            }
            if let Some(until) = bucket.backoff.until.filter(|u| *u > now) {
                next = next.min(until);
            }
            if let Some(expiry) = bucket.next_expiry() {
                // take_expired evicts strictly older than max_age: look just after.
                next = next.min(expiry + Duration::from_millis(1));
            }
        }
        for key in &planned {
            st.spawn_planned(key);
        }
        drop(st);

        for (stack, entry) in expired {
            shared
                .counters
                .evicted(&entry.counters, EvictionCause::Age, 1);
            tracing::info!(%stack, vm = %entry.view.id, cause = "age", "evicting warm VM");
            shared.dispatch_destroy(entry.view.id, EvictionCause::Age);
        }
        for job in spawns {
            if let Err(crossbeam_channel::SendError(job)) = jobs.send(job) {
                // Workers are gone, which only happens at shutdown: undo the plan.
                abandon_spawn(shared, job);
            }
        }

        st = shared.lock();
        while !st.woken && !st.shutdown {
            let now = Instant::now();
            if now >= next {
                break;
            }
            st = shared
                .wake
                .wait_timeout(st, next - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }
}

/// Whether refills should wait for the acquires under way or just ended (within
/// `PoolSettings::refill_grace`), bounded by `PoolSettings::refill_yield` from when the
/// yielding began; brings `next` forward to when the yield ends.
fn yield_to_acquires<P: VmProvider + VmQuery>(
    shared: &Shared<P>,
    st: &mut crate::shared::State,
    now: Instant,
    next: &mut Instant,
) -> bool {
    let limit = shared.settings.refill_yield;
    let grace_until = st
        .acquires_ended_at
        .map(|t| t + shared.settings.refill_grace)
        .filter(|g| now < *g);
    let acquiring = shared.acquiring.load(Ordering::SeqCst);
    let busy = acquiring > 0 || grace_until.is_some();
    if !busy || limit.is_zero() {
        st.yielding_since = None;
        return false;
    }
    let mut until = *st.yielding_since.get_or_insert(now) + limit;
    if acquiring == 0
        && let Some(g) = grace_until
    {
        until = until.min(g);
    }
    if now < until {
        *next = (*next).min(until);
        true
    } else {
        false
    }
}

/// A worker: runs jobs until the channel closes (shutdown), then exits.
pub(crate) fn worker<P: VmProvider + VmQuery>(shared: &Shared<P>, jobs: Receiver<Job>) {
    for job in jobs {
        match job {
            Job::Destroy { vm_id, cause } => shared.destroy_now(&vm_id, cause),
            Job::CheckAdopted { stack, view } => check_adopted(shared, &stack, view),
            job @ Job::Spawn { .. } => run_spawn(shared, job),
        }
    }
}

/// Checks an adopted entry ([`Phase::Adopted`]); an unfit one still in its bucket is evicted
/// (`unhealthy`) and replaced. One handed over meanwhile is its tenant's: its Handover check
/// proved it.
fn check_adopted<P: VmProvider + VmQuery>(shared: &Shared<P>, stack: &StackKey, view: VmView) {
    let pooled = |st: &crate::shared::State| {
        st.buckets
            .get(stack)
            .is_some_and(|slot| slot.bucket.entries.iter().any(|e| e.view.id == view.id))
    };
    {
        let st = shared.lock();
        if st.shutdown || !pooled(&st) {
            return;
        }
    }
    let ValidationResult::Unhealthy(reason) = shared.validator.validate(&view, Phase::Adopted)
    else {
        tracing::debug!(%stack, vm = %view.id, "adopted warm VM checked");
        return;
    };
    let entry = {
        let mut st = shared.lock();
        let entry = st.buckets.get_mut(stack).and_then(|slot| {
            let at = slot
                .bucket
                .entries
                .iter()
                .position(|e| e.view.id == view.id)?;
            slot.bucket.entries.remove(at)
        });
        if entry.is_some() {
            shared.wake_refiller(&mut st);
        }
        entry
    };
    let Some(entry) = entry else {
        // Handed over (or evicted) while it was checked: the check may have failed for that
        // reason alone, and the tenant's handover check is what counts.
        tracing::debug!(%stack, vm = %view.id, %reason, "an adopted VM left its bucket during its check");
        return;
    };
    shared.counters.validation_failed(&reason);
    tracing::warn!(%stack, vm = %view.id, %reason, "evicting an adopted warm VM that failed its check");
    shared
        .counters
        .evicted(&entry.counters, EvictionCause::Unhealthy, 1);
    shared.destroy_now(&entry.view.id, EvictionCause::Unhealthy);
}

fn abandon_spawn<P: VmProvider + VmQuery>(shared: &Shared<P>, job: Job) {
    if let Job::Spawn { stack, epoch, .. } = job {
        let mut st = shared.lock();
        if let Some(slot) = st.buckets.get_mut(&stack).filter(|s| s.epoch == epoch) {
            slot.bucket.in_flight = slot.bucket.in_flight.saturating_sub(1);
        }
        finish_spawn(shared, &mut st, &stack);
    }
}

/// Counts a spawn job of `stack` as over and wakes `WarmPool::wait_spawns`.
fn finish_spawn<P: VmProvider + VmQuery>(
    shared: &Shared<P>,
    st: &mut crate::shared::State,
    stack: &StackKey,
) {
    st.spawn_done(stack);
    shared.spawns_done.notify_all();
}

/// Why a spawn did not produce an entry.
enum SpawnFailure {
    /// The provider failed before a VM existed.
    Create(VmError),
    /// The VM exists but failed validation.
    Unhealthy(String),
    /// The VM exists but could not be paused.
    Pause(VmError),
}

/// Runs a spawn job; it counts as over (for `WarmPool::wait_spawns`) only once its VM is in
/// its bucket or destroyed.
fn run_spawn<P: VmProvider + VmQuery>(shared: &Shared<P>, job: Job) {
    let stack = match &job {
        Job::Spawn { stack, .. } => stack.clone(),
        Job::Destroy { .. } | Job::CheckAdopted { .. } => return,
    };
    if spawn_job(shared, job) {
        finish_spawn(shared, &mut shared.lock(), &stack);
    }
}

/// The spawn itself; false when it was abandoned (already counted as over).
fn spawn_job<P: VmProvider + VmQuery>(shared: &Shared<P>, job: Job) -> bool {
    let Job::Spawn {
        stack,
        epoch,
        vm_id,
        template,
        pause_idle,
        counters,
    } = job
    else {
        return false;
    };
    if shared.lock().shutdown {
        abandon_spawn(
            shared,
            Job::Spawn {
                stack,
                epoch,
                vm_id,
                template,
                pause_idle,
                counters,
            },
        );
        return false;
    }
    let t0 = Instant::now();
    let outcome = spawn_one(shared, &counters, &vm_id, &template, pause_idle);
    let elapsed = t0.elapsed();
    let now = Instant::now();

    let mut st = shared.lock();
    let shutting_down = st.shutdown;
    let slot = st.buckets.get_mut(&stack).filter(|s| s.epoch == epoch);
    match (outcome, slot) {
        (Ok(view), Some(slot)) if !shutting_down => {
            let bucket = &mut slot.bucket;
            bucket.in_flight = bucket.in_flight.saturating_sub(1);
            bucket.spawn_succeeded();
            bucket.record_spawn_latency(elapsed);
            bucket.entries.push_back(Entry {
                view,
                ready_at: now,
                counters,
            });
            shared.counters.spawn_latency.observe(elapsed);
            shared.ready.notify_all();
            shared.wake_refiller(&mut st);
            tracing::debug!(%stack, vm = %vm_id, ?elapsed, "warm VM ready");
        }
        (Ok(_), slot) => {
            // Restored fine, but its bucket is gone or the pool is shutting down.
            if let Some(slot) = slot {
                slot.bucket.in_flight = slot.bucket.in_flight.saturating_sub(1);
            }
            drop(st);
            let cause = if shutting_down {
                EvictionCause::Shutdown
            } else {
                EvictionCause::Unregister
            };
            shared.counters.evicted(&counters, cause, 1);
            shared.destroy_now(&vm_id, cause);
        }
        (Err(failure), slot) => {
            let message = match &failure {
                SpawnFailure::Create(e) => format!("restore failed: {}", error_chain(e)),
                SpawnFailure::Unhealthy(r) => format!("validation failed: {r}"),
                SpawnFailure::Pause(e) => format!("pause failed: {}", error_chain(e)),
            };
            if let Some(slot) = slot {
                let bucket = &mut slot.bucket;
                bucket.in_flight = bucket.in_flight.saturating_sub(1);
                bucket.spawn_failed(now, &shared.settings, message.clone());
                shared.wake_refiller(&mut st);
            }
            drop(st);
            tracing::warn!(%stack, vm = %vm_id, error = %message, "warm VM spawn failed");
            match failure {
                SpawnFailure::Create(_) => {}
                SpawnFailure::Unhealthy(_) => {
                    shared
                        .counters
                        .evicted(&counters, EvictionCause::Unhealthy, 1);
                    shared.destroy_now(&vm_id, EvictionCause::Unhealthy);
                }
                SpawnFailure::Pause(_) => {
                    shared
                        .counters
                        .evicted(&counters, EvictionCause::SpawnFailed, 1);
                    shared.destroy_now(&vm_id, EvictionCause::SpawnFailed);
                }
            }
        }
    }
    true
}

/// Restore, validate and (optionally) pause one entry of the stack `counters` count for.
fn spawn_one<P: VmProvider + VmQuery>(
    shared: &Shared<P>,
    counters: &StackCounters,
    vm_id: &VmId,
    template: &SnapshotRef,
    pause_idle: bool,
) -> Result<VmView, SpawnFailure> {
    let view = shared
        .provider
        .create_with_spec(vm_id, &VmSpec::restore(template.clone()))
        .map_err(|e| {
            Counters::inc(&shared.counters.provider_errors);
            SpawnFailure::Create(e)
        })?;
    shared.counters.restored(counters);
    if let ValidationResult::Unhealthy(reason) = shared.validator.validate(&view, Phase::AfterSpawn)
    {
        shared.counters.validation_failed(&reason);
        return Err(SpawnFailure::Unhealthy(reason));
    }
    if pause_idle && view.status == VmStatus::Running {
        return shared.provider.pause(vm_id).map_err(|e| {
            Counters::inc(&shared.counters.provider_errors);
            SpawnFailure::Pause(e)
        });
    }
    Ok(view)
}
