//! [`WarmPool`]: the public face of the pool — register and unregister stacks, acquire warm VMs
//! for tenants, read metrics, shut down.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ember_core::{
    NetworkOverride, Operation, SnapshotId, SnapshotRef, StackKey, VmError, VmId, VmProvider,
    VmQuery, VmStatus, VmView, error_chain,
};

use crate::bucket::{Bucket, Entry, needs_resume};
use crate::config::{BucketConfig, PoolSettings};
use crate::error::PoolError;
use crate::metrics::{Counters, EvictionCause, PoolCollector, PoolMetrics, StackCounters};
use crate::refill;
use crate::shared::{Shared, Slot, State};
use crate::validator::{EntryValidator, Phase, ValidationResult};

/// Who a warm VM is being handed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    /// The id the VM takes on handover.
    pub id: VmId,
    /// TAP devices to re-attach the VM's interfaces to (needs a provider with live network
    /// update).
    pub network_overrides: Vec<NetworkOverride>,
}

impl Tenant {
    /// A tenant with no network overrides; `id` must be a valid VM id.
    pub fn new(id: &str) -> Result<Self, PoolError> {
        Ok(Self {
            id: VmId::new(id).map_err(PoolError::InvalidTenant)?,
            network_overrides: Vec::new(),
        })
    }

    /// Adds network overrides, validating their names.
    pub fn with_network(mut self, overrides: Vec<NetworkOverride>) -> Result<Self, PoolError> {
        for (i, o) in overrides.iter().enumerate() {
            ember_core::id::validate_id(&format!("network_overrides[{i}].iface_id"), &o.iface_id)
                .and_then(|_| {
                    ember_core::spec::validate_ifname(
                        &format!("network_overrides[{i}].host_dev_name"),
                        &o.host_dev_name,
                    )
                })
                .map_err(PoolError::InvalidTenant)?;
        }
        self.network_overrides = overrides;
        Ok(self)
    }
}

/// A warm VM handed to a tenant. The pool no longer tracks it: the caller owns it and destroys it
/// through the provider when done.
#[derive(Debug, Clone, PartialEq)]
pub struct AcquiredVm {
    /// The VM's id now (the tenant's).
    pub vm_id: VmId,
    /// The id it had in the pool.
    pub pooled_id: VmId,
    /// The stack it came from.
    pub stack: StackKey,
    /// The snapshot it was restored from.
    pub template: Option<SnapshotId>,
    /// Its status after handover (running).
    pub status: VmStatus,
    /// How long it waited in the pool.
    pub pooled_for: Duration,
    /// How long the acquire call took.
    pub latency: Duration,
}

/// A warm pool of pre-restored microVMs per [`StackKey`].
///
/// Each registered stack gets a bucket kept at its target depth by an event-driven refiller:
/// every acquire, registration, eviction and finished spawn wakes it at once; a periodic tick
/// only ages entries out. [`acquire`](Self::acquire) hands over the pooled VM itself — validated,
/// renamed to the tenant's id, re-networked, resumed — and nobody restores the snapshot again.
///
/// `shutdown` and `Drop` share one code path: stop the refiller, destroy every entry (counted as
/// evicted with cause `shutdown`), wait for spawns under way to finish and destroy their VMs too.
pub struct WarmPool<P: VmProvider + VmQuery + 'static> {
    shared: Arc<Shared<P>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

static POOL_INSTANCES: AtomicU64 = AtomicU64::new(0);

/// A short id unique to this pool instance, part of every pooled VM id.
fn generation() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64 ^ d.as_secs())
        .unwrap_or(0);
    let n = POOL_INSTANCES.fetch_add(1, Ordering::Relaxed);
    let mix = nanos ^ (u64::from(std::process::id()) << 20) ^ (n << 40);
    format!("{:06x}", mix & 0xff_ffff)
}

impl<P: VmProvider + VmQuery + 'static> WarmPool<P> {
    /// Starts a pool: the refiller and `settings.workers` worker threads.
    pub fn start(
        provider: P,
        validator: Arc<dyn EntryValidator>,
        settings: PoolSettings,
    ) -> Result<Self, PoolError> {
        settings.validate()?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let workers = settings.workers;
        let shared = Arc::new(Shared {
            provider,
            validator,
            settings,
            state: Mutex::new(State::default()),
            acquiring: std::sync::atomic::AtomicUsize::new(0),
            wake: Condvar::new(),
            ready: Condvar::new(),
            spawns_done: Condvar::new(),
            counters: Counters::new(),
            generation: generation(),
            jobs: Mutex::new(Some(tx.clone())),
        });
        let pool = Self {
            shared: Arc::clone(&shared),
            threads: Mutex::new(Vec::new()),
        };
        let spawn = |name: String, f: Box<dyn FnOnce() + Send>| {
            thread::Builder::new()
                .name(name)
                .spawn(f)
                .map_err(|source| PoolError::Thread {
                    what: "refill",
                    source,
                })
        };
        let mut threads = Vec::with_capacity(workers + 1);
        for i in 0..workers {
            let (shared, rx) = (Arc::clone(&shared), rx.clone());
            threads.push(spawn(
                format!("ember-pool-w{i}"),
                Box::new(move || refill::worker(&shared, rx)),
            )?);
        }
        let coord_shared = Arc::clone(&shared);
        threads.push(spawn(
            "ember-pool-refill".into(),
            Box::new(move || refill::coordinator(&coord_shared, tx)),
        )?);
        *pool.threads.lock().unwrap_or_else(|p| p.into_inner()) = threads;
        Ok(pool)
    }

    /// The provider the pool drives.
    pub fn provider(&self) -> &P {
        &self.shared.provider
    }

    /// Adds a bucket for `stack`, or replaces its template and config. Entries already in the
    /// bucket keep serving; new entries are restored from the new template. The template is
    /// checked with the provider first, so a missing or corrupt one is an error here.
    pub fn register(
        &self,
        stack: StackKey,
        template: SnapshotRef,
        config: BucketConfig,
    ) -> Result<(), PoolError> {
        let template = self.checked_template(&stack, template, &config)?;
        let mut st = self.shared.lock();
        if st.shutdown {
            return Err(PoolError::ShutDown);
        }
        self.bucket_for(&mut st, &stack, template, config);
        self.shared.wake_refiller(&mut st);
        tracing::info!(%stack, "registered warm pool bucket");
        Ok(())
    }

    /// Checks a bucket's config and template (with the provider), giving the template its
    /// stack.
    fn checked_template(
        &self,
        stack: &StackKey,
        template: SnapshotRef,
        config: &BucketConfig,
    ) -> Result<SnapshotRef, PoolError> {
        config.validate()?;
        let invalid = |reason: String| PoolError::InvalidTemplate {
            stack: stack.clone(),
            reason,
        };
        template.validate().map_err(|e| invalid(e.to_string()))?;
        let mut template = template;
        match &template.stack {
            Some(owner) if owner != stack => {
                return Err(invalid(format!("the snapshot belongs to stack {owner}")));
            }
            Some(_) => {}
            None => template.stack = Some(stack.clone()),
        }
        self.shared
            .provider
            .verify_snapshot(&template)
            .map_err(|e| invalid(error_chain(&e)))?;
        Ok(template)
    }

    /// `stack`'s bucket with `template` and `config`: a new one, or the existing one updated
    /// (its entries keep serving).
    fn bucket_for<'s>(
        &self,
        st: &'s mut State,
        stack: &StackKey,
        template: SnapshotRef,
        config: BucketConfig,
    ) -> &'s mut Bucket {
        let State {
            buckets,
            next_epoch,
            ..
        } = st;
        match buckets.entry(stack.clone()) {
            std::collections::hash_map::Entry::Occupied(slot) => {
                let bucket = &mut slot.into_mut().bucket;
                bucket.template = Arc::new(template);
                bucket.config = config;
                bucket.spawn_succeeded();
                bucket
            }
            std::collections::hash_map::Entry::Vacant(v) => {
                let epoch = *next_epoch;
                *next_epoch += 1;
                let counters = self.shared.counters.for_stack(stack);
                let bucket = Bucket::new(stack.clone(), template, config, counters);
                &mut v.insert(Slot { epoch, bucket }).bucket
            }
        }
    }

    /// Removes `stack`'s bucket and destroys its entries (cause `unregister`); spawns under way
    /// for it are destroyed when they finish (`wait_spawns` waits for that). Returns how many
    /// entries were evicted.
    pub fn unregister(&self, stack: &StackKey) -> Result<usize, PoolError> {
        let (entries, counters) = {
            let mut st = self.shared.lock();
            let slot = st
                .buckets
                .remove(stack)
                .ok_or_else(|| PoolError::UnknownStack {
                    stack: stack.clone(),
                })?;
            self.shared.ready.notify_all();
            (slot.bucket.entries, slot.bucket.counters)
        };
        let n = entries.len();
        self.shared
            .counters
            .evicted(&counters, EvictionCause::Unregister, n as u64);
        for e in entries {
            self.shared
                .dispatch_destroy(e.view.id, EvictionCause::Unregister);
        }
        tracing::info!(%stack, evicted = n, "unregistered warm pool bucket");
        Ok(n)
    }

    /// Waits until no spawn job of `stack` is under way (a restore planned before `unregister`
    /// finishes, and its VM is destroyed, after the bucket is gone), or `timeout` passes.
    /// Returns whether none is left. Call it before deleting what those restores read (the
    /// stack's snapshot files).
    pub fn wait_spawns(&self, stack: &StackKey, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.lock();
        while st.spawning.contains_key(stack) {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            st = self
                .shared
                .spawns_done
                .wait_timeout(st, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        true
    }

    /// The stacks with a bucket.
    pub fn stacks(&self) -> Vec<StackKey> {
        let mut v: Vec<StackKey> = self.shared.lock().buckets.keys().cloned().collect();
        v.sort();
        v
    }

    /// Ready entries in `stack`'s bucket, or `None` if it has none.
    pub fn depth(&self, stack: &StackKey) -> Option<usize> {
        self.shared
            .lock()
            .buckets
            .get(stack)
            .map(|s| s.bucket.entries.len())
    }

    /// Hands a warm VM of `stack` to `tenant`, or fails at once with `Empty` if none is ready.
    pub fn acquire(&self, stack: &StackKey, tenant: &Tenant) -> Result<AcquiredVm, PoolError> {
        self.acquire_until(stack, tenant, None)
    }

    /// Like [`acquire`](Self::acquire), but waits up to `timeout` for a refill when the bucket is
    /// empty.
    pub fn acquire_timeout(
        &self,
        stack: &StackKey,
        tenant: &Tenant,
        timeout: Duration,
    ) -> Result<AcquiredVm, PoolError> {
        self.acquire_until(stack, tenant, Some(Instant::now() + timeout))
    }

    fn acquire_until(
        &self,
        stack: &StackKey,
        tenant: &Tenant,
        deadline: Option<Instant>,
    ) -> Result<AcquiredVm, PoolError> {
        let t0 = Instant::now();
        let shared = &self.shared;
        let _acquiring = Acquiring::enter(shared);
        if !tenant.network_overrides.is_empty()
            && !shared.provider.capabilities().live_network_update
        {
            return Err(PoolError::InvalidTenant(VmError::Unsupported {
                provider: shared.provider.name(),
                op: Operation::UpdateNetwork,
            }));
        }
        // Refuse a tenant id that is already taken before touching the bucket (rename would
        // refuse it too, but only after an entry was taken out and a refill triggered).
        match shared.provider.get(&tenant.id) {
            Ok(view) if view.status.is_live() => {
                return Err(PoolError::InvalidTenant(VmError::AlreadyExists {
                    kind: ember_core::ResourceKind::Vm,
                    id: tenant.id.to_string(),
                }));
            }
            _ => {}
        }
        let mut last_error: Option<VmError> = None;
        loop {
            let entry = self.pop_entry(stack, t0, deadline, &mut last_error)?;
            match self.hand_over(stack, tenant, &entry) {
                Ok(status) => {
                    let latency = t0.elapsed();
                    shared.counters.acquired(&entry.counters);
                    shared.counters.acquire_latency.observe(latency);
                    tracing::debug!(%stack, vm = %tenant.id, pooled = %entry.view.id, ?latency,
                        "warm VM handed over");
                    return Ok(AcquiredVm {
                        vm_id: tenant.id.clone(),
                        pooled_id: entry.view.id.clone(),
                        stack: stack.clone(),
                        template: entry.view.restored_from.clone(),
                        status,
                        pooled_for: entry.ready_at.elapsed(),
                        latency,
                    });
                }
                Err(HandOver::TenantRejected(e)) => {
                    self.put_back(stack, entry);
                    return Err(PoolError::InvalidTenant(e));
                }
                Err(HandOver::Evicted(e)) => {
                    if let Some(e) = e {
                        last_error = Some(e);
                    }
                }
            }
        }
    }

    /// Takes the oldest ready entry, waiting until `deadline` if given.
    fn pop_entry(
        &self,
        stack: &StackKey,
        t0: Instant,
        deadline: Option<Instant>,
        last_error: &mut Option<VmError>,
    ) -> Result<Entry, PoolError> {
        let shared = &self.shared;
        let mut st = shared.lock();
        loop {
            if st.shutdown {
                return Err(PoolError::ShutDown);
            }
            let now = Instant::now();
            let slot = st
                .buckets
                .get_mut(stack)
                .ok_or_else(|| PoolError::UnknownStack {
                    stack: stack.clone(),
                })?;
            if let Some(entry) = slot.bucket.entries.pop_front() {
                slot.bucket.record_acquire(now);
                // A refiller already yielding to acquires (within its limit) would only
                // yield again: waking it would add a thread and a lock round to the burst.
                // It runs when the yield ends or the last acquire finishes.
                let limit = shared.settings.refill_yield;
                let yielding = st.yielding_since.is_some_and(|t| now < t + limit);
                if !yielding {
                    shared.wake_refiller(&mut st);
                }
                return Ok(entry);
            }
            let failing = slot
                .bucket
                .failing(&shared.settings)
                .then(|| slot.bucket.backoff.last_error.clone())
                .flatten();
            let out_of_time = deadline.is_none_or(|d| now >= d);
            if out_of_time {
                if let Some(source) = last_error.take() {
                    return Err(PoolError::Handoff {
                        stack: stack.clone(),
                        source,
                    });
                }
                return Err(match deadline {
                    None => PoolError::Empty {
                        stack: stack.clone(),
                        last_error: failing,
                    },
                    Some(_) => PoolError::Timeout {
                        stack: stack.clone(),
                        waited: t0.elapsed(),
                        last_error: failing,
                    },
                });
            }
            let wait = deadline.map_or(Duration::ZERO, |d| d - now);
            // A waiter: the refiller must not yield this bucket's refills to handovers.
            slot.bucket.waiters += 1;
            shared.wake_refiller(&mut st);
            st = shared
                .ready
                .wait_timeout(st, wait)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
            if let Some(slot) = st.buckets.get_mut(stack) {
                slot.bucket.waiters = slot.bucket.waiters.saturating_sub(1);
            }
        }
    }

    /// Validate, rename, re-network, resume. On a provider failure the VM is evicted.
    fn hand_over(
        &self,
        stack: &StackKey,
        tenant: &Tenant,
        entry: &Entry,
    ) -> Result<VmStatus, HandOver> {
        let shared = &self.shared;
        let pooled = &entry.view.id;
        if let ValidationResult::Unhealthy(reason) =
            shared.validator.validate(&entry.view, Phase::OnAcquire)
        {
            shared.counters.validation_failed(&reason);
            tracing::warn!(%stack, vm = %pooled, %reason, "warm VM failed validation on acquire");
            self.evict(&entry.counters, pooled.clone(), EvictionCause::Unhealthy);
            return Err(HandOver::Evicted(None));
        }
        match shared.provider.rename(pooled, &tenant.id) {
            Ok(_) => {}
            Err(e @ VmError::AlreadyExists { .. }) => return Err(HandOver::TenantRejected(e)),
            Err(VmError::NotFound { .. }) => {
                tracing::warn!(%stack, vm = %pooled, "warm VM vanished before handover");
                self.evict(&entry.counters, pooled.clone(), EvictionCause::Died);
                return Err(HandOver::Evicted(None));
            }
            Err(e) => return Err(self.handoff_failed(stack, entry, e)),
        }
        if !tenant.network_overrides.is_empty()
            && let Err(e) = shared
                .provider
                .update_network(&tenant.id, &tenant.network_overrides)
        {
            self.release_tenant_id(stack, &tenant.id, pooled);
            return Err(self.handoff_failed(stack, entry, e));
        }
        let mut view = entry.view.clone();
        view.id = tenant.id.clone();
        if needs_resume(&entry.view) {
            // The handover validation's agent call (or the tenant's first) proves the resume.
            match shared.provider.resume_unacknowledged(&tenant.id) {
                Ok(resumed) => view = resumed,
                Err(e) => {
                    self.release_tenant_id(stack, &tenant.id, pooled);
                    return Err(self.handoff_failed(stack, entry, e));
                }
            }
        }
        if let ValidationResult::Unhealthy(reason) =
            shared.validator.validate(&view, Phase::Handover)
        {
            shared.counters.validation_failed(&reason);
            tracing::warn!(%stack, vm = %tenant.id, pooled = %pooled, %reason,
                "warm VM failed validation at handover");
            self.release_tenant_id(stack, &tenant.id, pooled);
            self.evict(&entry.counters, pooled.clone(), EvictionCause::Unhealthy);
            return Err(HandOver::Evicted(None));
        }
        Ok(view.status)
    }

    /// After a failure past the rename, frees the tenant's id before the next entry is tried:
    /// renames the VM back to its pooled id (it is then destroyed off the acquire path), or, if
    /// even that fails, destroys it under the tenant's id right here.
    fn release_tenant_id(&self, stack: &StackKey, tenant: &VmId, pooled: &VmId) {
        if let Err(e) = self.shared.provider.rename(tenant, pooled) {
            tracing::warn!(%stack, vm = %tenant, error = %error_chain(&e),
                "could not rename a failed handover back; destroying it in place");
            self.shared
                .destroy_now(tenant, EvictionCause::HandoffFailed);
        }
    }

    fn handoff_failed(&self, stack: &StackKey, entry: &Entry, e: VmError) -> HandOver {
        let vm = &entry.view.id;
        Counters::inc(&self.shared.counters.provider_errors);
        tracing::warn!(%stack, %vm, error = %error_chain(&e), "handing over a warm VM failed");
        self.evict(&entry.counters, vm.clone(), EvictionCause::HandoffFailed);
        HandOver::Evicted(Some(e))
    }

    /// Counts `vm` (an entry of the stack `counters` count for) as evicted, has it destroyed and
    /// wakes the refiller.
    fn evict(&self, counters: &StackCounters, vm: VmId, cause: EvictionCause) {
        self.shared.counters.evicted(counters, cause, 1);
        self.shared.dispatch_destroy(vm, cause);
        let mut st = self.shared.lock();
        self.shared.wake_refiller(&mut st);
    }

    /// Returns an untouched entry to the front of its bucket (or destroys it if the bucket is
    /// gone).
    fn put_back(&self, stack: &StackKey, entry: Entry) {
        let mut st = self.shared.lock();
        let shutting_down = st.shutdown;
        match st.buckets.get_mut(stack) {
            Some(slot) if !shutting_down => {
                slot.bucket.entries.push_front(entry);
                self.shared.ready.notify_all();
            }
            _ => {
                drop(st);
                let cause = if shutting_down {
                    EvictionCause::Shutdown
                } else {
                    EvictionCause::Unregister
                };
                self.evict(&entry.counters, entry.view.id, cause);
            }
        }
    }

    /// Tells the pool that a VM's process died (the provider's supervisor calls this). If the VM
    /// is a pooled entry it is evicted with cause `died` and replaced; returns whether it was.
    pub fn notify_died(&self, vm: &VmId) -> bool {
        let found = {
            let mut st = self.shared.lock();
            let found = st.buckets.values_mut().find_map(|slot| {
                let entries = &mut slot.bucket.entries;
                let at = entries.iter().position(|e| e.view.id == *vm)?;
                entries.remove(at)
            });
            if found.is_some() {
                self.shared.wake_refiller(&mut st);
            }
            found
        };
        let Some(entry) = found else {
            return false;
        };
        tracing::warn!(vm = %vm, cause = "died", "evicting warm VM");
        self.shared
            .counters
            .evicted(&entry.counters, EvictionCause::Died, 1);
        self.shared
            .dispatch_destroy(entry.view.id, EvictionCause::Died);
        true
    }

    /// Registers `stack` like [`register`](Self::register) and, in the same step (before the
    /// refiller sees the bucket), puts VMs an earlier owner of the pool left running (found
    /// again after a restart) into it as ready entries — those restored from the bucket's
    /// template, live, up to its max depth. They serve at once; the pool's workers then check
    /// each with the validator ([`Phase::Adopted`]) and evict the unfit. Returns the VMs it did
    /// not take, each with the reason, for the caller to destroy.
    pub fn register_adopting(
        &self,
        stack: StackKey,
        template: SnapshotRef,
        config: BucketConfig,
        left: Vec<VmView>,
    ) -> Result<Vec<(VmView, String)>, PoolError> {
        let template = self.checked_template(&stack, template, &config)?;
        let mut st = self.shared.lock();
        if st.shutdown {
            return Err(PoolError::ShutDown);
        }
        let bucket = self.bucket_for(&mut st, &stack, template, config);
        let mut refused = Vec::new();
        let mut taken = Vec::new();
        for view in left {
            let same_template = view
                .restored_from
                .as_ref()
                .is_some_and(|t| *t == bucket.template.snapshot_id);
            let reason = if !same_template {
                Some("it was not restored from the bucket's template".to_string())
            } else if bucket.entries.len() + bucket.in_flight >= bucket.config.max_depth {
                Some(format!(
                    "the bucket is full ({} entries)",
                    bucket.entries.len()
                ))
            } else if !view.status.is_live() {
                Some(format!("it is {}", view.status))
            } else {
                None
            };
            match reason {
                Some(reason) => refused.push((view, reason)),
                None => {
                    tracing::debug!(%stack, vm = %view.id, "adopted warm VM");
                    taken.push(view.clone());
                    bucket.entries.push_back(Entry {
                        view,
                        ready_at: Instant::now(),
                        counters: Arc::clone(&bucket.counters),
                    });
                }
            }
        }
        self.shared.ready.notify_all();
        self.shared.wake_refiller(&mut st);
        drop(st);
        tracing::info!(%stack, adopted = taken.len(), refused = refused.len(),
            "registered warm pool bucket with adopted VMs");
        // They serve at once; the workers check them in the background.
        for view in taken {
            self.shared.dispatch_check(stack.clone(), view);
        }
        Ok(refused)
    }

    /// Stops the refiller and workers like [`shutdown`](Self::shutdown) but leaves every ready
    /// entry running (for the pool's next owner to [`adopt`](Self::adopt)); spawns under way
    /// finish and their VMs are destroyed. Returns the entries left, by stack.
    pub fn leave(&self) -> Vec<(StackKey, VmId)> {
        let shared = &self.shared;
        let left: Vec<(StackKey, VmId)> = {
            let mut st = shared.lock();
            st.shutdown = true;
            shared.wake.notify_all();
            shared.ready.notify_all();
            st.buckets
                .iter_mut()
                .flat_map(|(k, s)| {
                    s.bucket
                        .entries
                        .drain(..)
                        .map(move |e| (k.clone(), e.view.id))
                })
                .collect()
        };
        shared.jobs.lock().unwrap_or_else(|p| p.into_inner()).take();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            if t.join().is_err() {
                tracing::error!("a warm pool thread panicked");
            }
        }
        tracing::info!(left = left.len(), "warm pool stopped, its VMs left running");
        left
    }

    /// Every counter, gauge and histogram, read now.
    pub fn metrics(&self) -> PoolMetrics {
        read_metrics(&self.shared)
    }

    /// A prometheus-client collector over this pool's metrics.
    pub fn collector(&self) -> PoolCollector {
        let shared = Arc::clone(&self.shared);
        PoolCollector {
            read: Box::new(move || read_metrics(&shared)),
        }
    }

    /// Stops the refiller, destroys every entry (cause `shutdown`) and waits for spawns under way
    /// to finish (their VMs are destroyed too). Idempotent; returns how many entries this call
    /// evicted. [`Drop`] runs the same path.
    pub fn shutdown(&self) -> usize {
        let shared = &self.shared;
        let entries: Vec<(StackKey, Entry)> = {
            let mut st = shared.lock();
            st.shutdown = true;
            shared.wake.notify_all();
            shared.ready.notify_all();
            st.buckets
                .iter_mut()
                .flat_map(|(k, s)| s.bucket.entries.drain(..).map(move |e| (k.clone(), e)))
                .collect()
        };
        let n = entries.len();
        for (stack, e) in entries {
            shared
                .counters
                .evicted(&e.counters, EvictionCause::Shutdown, 1);
            tracing::debug!(%stack, vm = %e.view.id, cause = "shutdown", "evicting warm VM");
            shared.dispatch_destroy(e.view.id, EvictionCause::Shutdown);
        }
        // Close the job channel (the coordinator's sender goes when it returns), then wait for
        // the workers to drain it: every destroy above and every spawn under way completes.
        shared.jobs.lock().unwrap_or_else(|p| p.into_inner()).take();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            if t.join().is_err() {
                tracing::error!("a warm pool thread panicked");
            }
        }
        if n > 0 {
            tracing::info!(evicted = n, "warm pool shut down");
        }
        n
    }
}

/// Counts an acquire as under way for as long as it lives (the refiller yields to them).
struct Acquiring<'a, P: VmProvider + VmQuery> {
    shared: &'a Shared<P>,
}

impl<'a, P: VmProvider + VmQuery> Acquiring<'a, P> {
    fn enter(shared: &'a Shared<P>) -> Self {
        shared.acquiring.fetch_add(1, Ordering::SeqCst);
        Self { shared }
    }
}

impl<P: VmProvider + VmQuery> Drop for Acquiring<'_, P> {
    fn drop(&mut self) {
        let shared = self.shared;
        // Not the last one: no lock needed.
        if shared
            .acquiring
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n > 1).then(|| n - 1)
            })
            .is_ok()
        {
            return;
        }
        // Perhaps the last one: reach zero under the lock, with the end of the burst.
        let mut st = shared.lock();
        let before = shared
            .acquiring
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                Some(n.saturating_sub(1))
            })
            .unwrap_or(0);
        if before <= 1 {
            st.acquires_ended_at = Some(Instant::now());
            shared.wake_refiller(&mut st);
        }
    }
}

/// Outcome of a failed handover.
enum HandOver {
    /// The tenant's request cannot be met (its id is taken); the entry is intact.
    TenantRejected(VmError),
    /// The entry was evicted; try the next one.
    Evicted(Option<VmError>),
}

fn read_metrics<P: VmProvider + VmQuery>(shared: &Shared<P>) -> PoolMetrics {
    let now = Instant::now();
    let (stacks, unregistered) = {
        let st = shared.lock();
        let stacks: BTreeMap<String, _> = st
            .buckets
            .iter()
            .map(|(k, s)| (k.to_string(), s.bucket.metrics(now, &shared.settings)))
            .collect();
        // Under the same lock: a stack is registered or not, never both or neither.
        let unregistered = shared.counters.unregistered_stacks(&stacks);
        (stacks, unregistered)
    };
    shared.counters.read(stacks, unregistered)
}

impl<P: VmProvider + VmQuery + 'static> Drop for WarmPool<P> {
    fn drop(&mut self) {
        self.shutdown();
    }
}
