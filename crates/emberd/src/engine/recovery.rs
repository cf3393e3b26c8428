//! Recovery: at start, make the host and the store agree again, whatever stopped the last
//! daemon (SIGTERM, `kill -9`, a crash).
//!
//! 1. Snapshots: every recorded snapshot is handed to the provider's catalog (a template whose
//!    snapshot files are gone is marked `failed`); snapshot directories no record claims (a
//!    snapshot cut short) are removed; templates still `building` are removed (their build was
//!    never acknowledged).
//! 2. VMs: every recorded VM is re-adopted if its VMM is the same process (pid, start time, boot)
//!    and answers its API; the records of the others go.
//! 3. Sandboxes: a `running` or `paused` one with an adopted VM is live again (its state is what
//!    the VMM says, its deadline and env as recorded); one whose VM is gone ends `vm_exited`
//!    with the reason; one still `creating` ends `create_failed` and its VM (if any) is
//!    destroyed. Adopted VMs of ended or unknown sandboxes are destroyed.
//! 4. Pools: each pool record's bucket is registered with the pooled VMs that were left
//!    (they serve at once); the ones it cannot take are destroyed; the refill tops it up.
//! 5. Sweep: every VMM process, slot directory and socket under the runtime root that no record
//!    claims is killed and removed.
//!
//! Nothing acknowledged is lost silently: each sandbox is either live again or ended with its
//! cause, and the report counts what happened.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use ember_core::{
    EndCause, PoolSpec, Sandbox, SandboxEnd, SandboxId, SandboxState, SnapshotInfo, StackKey,
    Template, TemplateState, VmId, VmOwner, VmRecord, VmStatus, VmView, error_chain,
};
use ember_store::{Durability, SandboxFilter, StoreError};
use serde::Serialize;

use super::pools::bucket_config;
use super::{Engine, Live};
use crate::error::ApiError;

/// What recovery found and did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RecoveryReport {
    /// Sandboxes live again.
    pub sandboxes_adopted: usize,
    /// Pooled VMs back in their buckets.
    pub pooled_adopted: usize,
    /// Raw API VMs adopted.
    pub api_vms_adopted: usize,
    /// Sandboxes ended because their VM was gone (id, why).
    pub sandboxes_lost: Vec<(String, String)>,
    /// Sandboxes ended because the daemon stopped while creating them.
    pub creates_failed: usize,
    /// VMs whose records went because their VMM was gone.
    pub vms_gone: usize,
    /// Adopted VMs destroyed because nothing owns them any more.
    pub vms_destroyed: usize,
    /// VMM processes killed and slot directories removed that no record claimed.
    pub swept_processes: usize,
    /// Slot directories removed that no record claimed.
    pub swept_slots: usize,
    /// Snapshot directories removed that no record claimed.
    pub snapshot_dirs_removed: usize,
    /// Templates marked failed because their snapshot could not be loaded.
    pub templates_failed: usize,
    /// Templates removed because their build never finished.
    pub builds_abandoned: usize,
    /// How long recovery took, ms.
    pub duration_ms: f64,
}

/// Reconciles the store with the host (see the module docs).
pub fn recover(engine: &Arc<Engine>) -> Result<RecoveryReport, ApiError> {
    let t0 = Instant::now();
    let mut report = RecoveryReport::default();
    recover_snapshots(engine, &mut report)?;
    for t in engine.store.list::<Template>()? {
        if t.record.state == TemplateState::Ready {
            let snapshot = engine.snapshot_ref(&t.record)?;
            engine.cache_ready(
                &t.record.name.clone(),
                Some(super::ReadyTemplate {
                    template: t.record,
                    snapshot,
                }),
            );
        }
    }

    // VMs.
    let records = engine.store.list::<VmRecord>()?;
    let mut adopted: HashMap<VmId, (VmOwner, VmView)> = HashMap::new();
    let mut gone: HashMap<VmId, String> = HashMap::new();
    for stored in records {
        let rec = stored.record;
        match engine.provider.adopt(&rec) {
            Ok(view) => {
                adopted.insert(rec.id.clone(), (rec.owner, view));
            }
            Err(e) => {
                let why = error_chain(&e);
                tracing::warn!(vm = %rec.id, owner = %rec.owner, %why, "recorded VM is gone");
                engine
                    .store
                    .write("forget gone vm", Durability::Process, |tx| {
                        tx.delete::<VmRecord>(rec.id.as_str()).map(drop)
                    })?;
                report.vms_gone += 1;
                gone.insert(rec.id, why);
            }
        }
    }

    // Sandboxes.
    let live = engine.store.sandboxes(&SandboxFilter {
        states: vec![
            SandboxState::Creating,
            SandboxState::Running,
            SandboxState::Paused,
        ],
        limit: ember_store::MAX_PAGE,
        ..SandboxFilter::default()
    });
    let mut claimed: HashSet<VmId> = HashSet::new();
    let mut page = live?;
    loop {
        for sandbox in &page.items {
            let vm = VmId::new(sandbox.id.as_str())?;
            let vm_state = adopted
                .get(&vm)
                .filter(|(owner, _)| *owner == VmOwner::Sandbox)
                .map(|(_, view)| view.status);
            if let Some(saved) = &sandbox.saved {
                // Paused to disk: no VM is its (one left over from a pause cut short is
                // destroyed below, unclaimed); its snapshot must be loadable.
                if engine.provider.snapshot_info(saved).is_ok() {
                    engine
                        .live
                        .insert(sandbox.id.clone(), Arc::new(Live::new(sandbox, None)));
                    report.sandboxes_adopted += 1;
                } else {
                    let why = format!("its saved snapshot {saved} cannot be loaded");
                    end(engine, &sandbox.id, EndCause::VmExited, why.clone())?;
                    report.sandboxes_lost.push((sandbox.id.to_string(), why));
                }
                continue;
            }
            match (sandbox.state, vm_state) {
                (SandboxState::Creating, _) => {
                    end(
                        engine,
                        &sandbox.id,
                        EndCause::CreateFailed,
                        "emberd stopped while creating it".into(),
                    )?;
                    report.creates_failed += 1;
                }
                (_, Some(status @ (VmStatus::Running | VmStatus::Paused))) => {
                    let state = if status == VmStatus::Paused {
                        SandboxState::Paused
                    } else {
                        SandboxState::Running
                    };
                    let stored = if state == sandbox.state {
                        sandbox.clone()
                    } else {
                        engine
                            .store
                            .write("sandbox state", Durability::Process, |tx| {
                                tx.update::<Sandbox, StoreError>(sandbox.id.as_str(), |s| {
                                    s.state = state;
                                    Ok(())
                                })
                            })?
                            .record
                    };
                    engine
                        .live
                        .insert(sandbox.id.clone(), Arc::new(Live::new(&stored, None)));
                    reopen_ports(engine, &stored);
                    claimed.insert(vm);
                    report.sandboxes_adopted += 1;
                }
                (_, other) => {
                    let why = match (gone.get(&vm), other) {
                        (Some(why), _) => format!("its VM was gone when emberd started: {why}"),
                        (None, Some(status)) => format!("its VM was {status} when emberd started"),
                        (None, None) => "its VM had no record when emberd started".to_string(),
                    };
                    end(engine, &sandbox.id, EndCause::VmExited, why.clone())?;
                    report.sandboxes_lost.push((sandbox.id.to_string(), why));
                }
            }
        }
        let Some(next) = page.next.take() else { break };
        page = engine.store.sandboxes(&SandboxFilter {
            states: vec![
                SandboxState::Creating,
                SandboxState::Running,
                SandboxState::Paused,
            ],
            limit: ember_store::MAX_PAGE,
            after: Some(next),
            ..SandboxFilter::default()
        })?;
    }

    // Saved snapshots no sandbox refers to (a pause or a resume cut short).
    let referenced: HashSet<String> = engine
        .store
        .list::<Sandbox>()?
        .into_iter()
        .filter_map(|s| s.record.saved.map(|id| id.to_string()))
        .collect();
    for info in engine.store.list::<SnapshotInfo>()? {
        let id = &info.record.snapshot_id;
        if id.as_str().starts_with(super::sandboxes::SAVED_PREFIX)
            && !referenced.contains(id.as_str())
        {
            tracing::info!(snapshot = %id, "removing a saved snapshot no sandbox refers to");
            engine.delete_saved(id);
            report.snapshot_dirs_removed += 1;
        }
    }

    // Pools.
    let mut pooled: HashMap<StackKey, Vec<VmView>> = HashMap::new();
    for (id, (owner, view)) in &adopted {
        match owner {
            VmOwner::Pool => {
                if let Some(stack) = &view.stack {
                    pooled.entry(stack.clone()).or_default().push(view.clone());
                    claimed.insert(id.clone());
                }
            }
            VmOwner::Api => {
                claimed.insert(id.clone());
                report.api_vms_adopted += 1;
            }
            VmOwner::Sandbox => {}
        }
    }
    let mut unclaimed: Vec<VmId> = Vec::new();
    for stored in engine.store.list::<PoolSpec>()? {
        let spec = stored.record;
        let template = match engine.store.get::<Template>(spec.template.as_str())? {
            Some(t) if t.record.state == TemplateState::Ready => t.record,
            _ => {
                tracing::warn!(template = %spec.template, "a pool's template is not ready; its bucket stays empty");
                continue;
            }
        };
        let left = pooled.remove(&template.stack).unwrap_or_default();
        let snapshot = engine.snapshot_ref(&template)?;
        let n = left.len();
        match engine.pool.register_adopting(
            template.stack.clone(),
            snapshot,
            bucket_config(&spec),
            left,
        ) {
            Ok(refused) => {
                report.pooled_adopted += n - refused.len();
                for (view, reason) in refused {
                    tracing::info!(vm = %view.id, %reason, "a left pooled VM is not taken back");
                    unclaimed.push(view.id);
                }
            }
            Err(e) => {
                tracing::error!(template = %spec.template, error = %error_chain(&e),
                    "cannot register a pool's bucket");
            }
        }
    }
    for views in pooled.into_values() {
        unclaimed.extend(views.into_iter().map(|v| v.id));
    }
    for id in adopted.keys() {
        if !claimed.contains(id) && !unclaimed.contains(id) {
            unclaimed.push(id.clone());
        }
    }
    for id in unclaimed {
        tracing::info!(vm = %id, "destroying an adopted VM nothing owns");
        engine.destroy_vm(&id);
        report.vms_destroyed += 1;
    }

    // Whatever the host holds that no record claims.
    let swept = engine.provider.sweep();
    report.swept_processes = swept.killed.len();
    report.swept_slots = swept.slots_removed.len();
    match engine.prune_ended() {
        Ok(n) if n > 0 => tracing::info!(pruned = n, "pruned old ended sandboxes"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "pruning ended sandboxes"),
    }
    report.duration_ms = t0.elapsed().as_secs_f64() * 1e3;
    tracing::info!(?report, "recovery done");
    Ok(report)
}

/// Step 1: the snapshot catalog, abandoned builds, unclaimed snapshot directories.
fn recover_snapshots(engine: &Engine, report: &mut RecoveryReport) -> Result<(), ApiError> {
    for t in engine.store.list::<Template>()? {
        if t.record.state == TemplateState::Building {
            tracing::warn!(template = %t.record.name, "removing a template whose build never finished");
            engine
                .store
                .write("abandon build", Durability::Full, |tx| {
                    tx.remove::<Template>(t.record.name.as_str()).map(drop)
                })?;
            report.builds_abandoned += 1;
        }
    }
    // An image build the previous daemon died in left its working directory in the cache.
    if engine.images.cache_dir.is_dir()
        && let Err(e) = ember_host::image::cache::clean_stale(&engine.images.cache_dir)
    {
        tracing::warn!(error = %error_chain(&e), "cleaning the image cache");
    }
    let mut broken: Vec<(SnapshotInfo, String)> = Vec::new();
    for s in engine.store.list::<SnapshotInfo>()? {
        if let Err(e) = engine.provider.register_snapshot(s.record.clone()) {
            broken.push((s.record, error_chain(&e)));
        }
    }
    for (info, why) in broken {
        tracing::error!(snapshot = %info.snapshot_id, %why, "a recorded snapshot cannot be loaded");
        let marked = engine
            .store
            .write("snapshot broken", Durability::Full, |tx| {
                let mut n = 0;
                for t in tx.list::<Template>()? {
                    if t.record.snapshot.as_ref() == Some(&info.snapshot_id)
                        && t.record.state == TemplateState::Ready
                    {
                        tx.update::<Template, StoreError>(t.record.name.as_str(), |t| {
                            t.state = TemplateState::Failed;
                            t.error = Some(format!("its snapshot cannot be loaded: {why}"));
                            Ok(())
                        })?;
                        n += 1;
                    }
                }
                Ok::<_, StoreError>(n)
            })?;
        report.templates_failed += marked;
    }
    match engine.provider.unknown_snapshot_dirs() {
        Ok(dirs) => {
            for d in dirs {
                match std::fs::remove_dir_all(&d) {
                    Ok(()) => report.snapshot_dirs_removed += 1,
                    Err(e) => tracing::error!(dir = %d.display(), error = %e,
                        "cannot remove an unclaimed snapshot directory"),
                }
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot list the snapshot directories"),
    }
    Ok(())
}

/// Ends a sandbox during recovery (it is not live: no VM to destroy here).
fn end(engine: &Engine, id: &SandboxId, cause: EndCause, message: String) -> Result<(), ApiError> {
    tracing::warn!(sandbox = %id, %cause, %message, "sandbox ended at recovery");
    engine
        .store
        .write("sandbox ended", Durability::Full, |tx| {
            tx.update::<Sandbox, StoreError>(id.as_str(), |s| {
                s.state = SandboxState::Ended;
                s.deadline = None;
                s.saved = None;
                s.end = Some(SandboxEnd {
                    cause,
                    message,
                    at: SystemTime::now(),
                });
                Ok(())
            })
        })?;
    engine.metrics.sandbox_ended(cause);
    Ok(())
}

/// An adopted sandbox's exposed ports listened in the daemon that died: listen again at the
/// recorded host addresses (a port taken meanwhile is logged and stays recorded as it was).
fn reopen_ports(engine: &Engine, sandbox: &Sandbox) {
    let Some(net) = &sandbox.network else {
        return;
    };
    for p in &net.ports {
        let target = std::net::SocketAddr::from((net.address, p.guest_port));
        if let Err(e) = engine.ports.expose(&sandbox.id, p.host, target) {
            tracing::warn!(sandbox = %sandbox.id, port = p.guest_port, host = %p.host,
                error = %e, "cannot listen again for an exposed port");
        }
    }
}
