//! Sandboxes: a tenant's VM made from a template — created (a warm VM handed over when the
//! template has a pool with one ready, a restore of the template's snapshot otherwise), listed,
//! paused and resumed in memory, given more time, killed, and ended when their deadline passes
//! or their VMM dies.
//!
//! Every change is recorded before it is acknowledged, with [`Durability::Process`] (it survives
//! a daemon crash; a power cut takes the VMs with it anyway). A create is recorded once, when it
//! has its VM: the sandbox, its VM's record and (for a warm VM) the end of the VM's pooled record
//! in one transaction — the create's one commit. Until then nothing of it is stored: a daemon
//! that dies mid-create finds a warm VM back in its pool (its record still has the pooled id)
//! and sweeps a restored one (no record claims it), and the caller never heard of the sandbox.
//! A kill records the sandbox `ended` first and then destroys its VM; recovery destroys a VM
//! whose sandbox has ended.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ember_agent_proto::AgentClient;
use ember_core::sandbox::{validate_env, validate_labels, validate_timeout};
use ember_core::{
    EndCause, OnTimeout, Sandbox, SandboxEnd, SandboxId, SandboxStart, SandboxState, SnapshotId,
    SnapshotRequest, TemplateName, VmId, VmOwner, VmProvider, VmRecord, VmSpec, error_chain,
};
use ember_pool::{PoolError, Tenant};
use ember_store::{Cursor, Durability, Page, SandboxFilter, StoreError};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{AGENT_PORT, Engine, Live, ReadyTemplate};
use crate::error::ApiError;

/// Saved snapshots' ids start with this (`saved-<sandbox>-<suffix>`): recovery removes those no
/// sandbox refers to.
pub const SAVED_PREFIX: &str = "saved-";

/// The time limit a sandbox gets when its create does not say, seconds.
pub const DEFAULT_TIMEOUT_SECS: u64 = 300;

/// `POST /v1/sandboxes`: a sandbox to make.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSandbox {
    /// The template to make it from (it must be ready).
    pub template: TemplateName,
    /// Labels to find it by (keys: ASCII letters, digits, `-_./`, ≤ 63 bytes; values ≤ 256
    /// bytes).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Environment variables every command in it gets (an exec's own win).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Seconds until it is killed (default 300, at most 30 days); extend it with
    /// `POST /v1/sandboxes/{id}/timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// What its guest may reach (with a daemon that gives sandboxes networks; default: the
    /// daemon's `--default-egress`). Change it later with `PUT /v1/sandboxes/{id}/network`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<ember_core::EgressPolicy>,
}

/// What a sandbox may carry beyond [`CreateSandbox`] (the E2B API sets these).
#[derive(Debug, Clone, Default)]
pub struct SandboxOptions {
    /// What happens when its time limit passes.
    pub on_timeout: OnTimeout,
    /// The token clients present to reach its own endpoints.
    pub access_token: Option<String>,
}

/// How `POST /v1/sandboxes/{id}/pause` pauses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PauseMode {
    /// The vCPUs stop; memory stays in the host's RAM (resume is instant).
    #[default]
    Memory,
    /// The VM is snapshotted to the state directory and destroyed: it holds no memory or CPU,
    /// survives a daemon restart and a host reboot, and resuming restores it.
    Disk,
}

/// `POST /v1/sandboxes/{id}/timeout`: a new time limit, counted from now.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetTimeout {
    /// Seconds from now until the sandbox is killed (1 to 30 days).
    pub timeout_secs: u64,
}

/// What `GET /v1/sandboxes` asks for.
#[derive(Debug, Clone, Default)]
pub struct ListSandboxes {
    /// Only these states (empty: all).
    pub states: Vec<SandboxState>,
    /// Only sandboxes of this template.
    pub template: Option<TemplateName>,
    /// Only sandboxes with every one of these labels.
    pub labels: Vec<(String, String)>,
    /// Page size (default 100, at most 1000).
    pub limit: Option<usize>,
    /// Where the previous page ended.
    pub cursor: Option<String>,
}

/// One page of sandboxes.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SandboxPage {
    /// The sandboxes, oldest first.
    pub items: Vec<Sandbox>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// How a create got its VM.
struct Obtained {
    warm: bool,
    /// The agent connection the handover opened (its Reseed's answer pending).
    agent: Option<AgentClient>,
}

fn vm_id(id: &SandboxId) -> VmId {
    // Invariant: sandbox and VM ids follow the same rules (ember-core's validated id).
    VmId::new(id.as_str()).unwrap_or_else(|_| unreachable!("a sandbox id is a valid VM id"))
}

fn sandbox_id(id: &str) -> Result<SandboxId, ApiError> {
    SandboxId::new(id).map_err(ApiError::from)
}

impl Engine {
    /// Makes a sandbox from a ready template (see [`create_sandbox_with`](Self::create_sandbox_with)).
    pub fn create_sandbox(&self, req: CreateSandbox) -> Result<Sandbox, ApiError> {
        self.create_sandbox_with(req, SandboxOptions::default())
    }

    /// Makes a sandbox from a ready template and records it `running`, with its VM, in one
    /// transaction: nothing is recorded of a create that fails, and a daemon that dies before
    /// the commit finds the warm VM back in its pool (or sweeps the restored one).
    pub fn create_sandbox_with(
        &self,
        req: CreateSandbox,
        opts: SandboxOptions,
    ) -> Result<Sandbox, ApiError> {
        if let Some(t) = &opts.access_token {
            ember_core::sandbox::validate_access_token(t)?;
        }
        validate_labels(&req.labels)?;
        validate_env(&req.env)?;
        let timeout = req.timeout_secs.unwrap_or(DEFAULT_TIMEOUT_SECS);
        validate_timeout("timeout_secs", timeout)?;
        if let Some(policy) = &req.egress {
            policy.validate().map_err(ApiError::from)?;
            if self.nets.is_none() {
                return Err(ApiError::invalid(
                    "egress: this emberd gives sandboxes no network (start it with \
                     --sandbox-network)",
                ));
            }
        }
        let ready = self.ready_template(&req.template)?;
        if self.live.with_vm() >= self.limits.max_sandboxes {
            return Err(ApiError::unavailable(format!(
                "this host runs its limit of {} sandboxes; kill one or retry later",
                self.limits.max_sandboxes
            )));
        }
        let id = crate::ids::sandbox_id();
        let vm = vm_id(&id);
        let created_at = SystemTime::now();
        let t0 = Instant::now();
        let obtained = self.obtain_vm(&ready, &id)?;
        let network = match self.attach_network(&vm, req.egress.as_ref()) {
            Ok(n) => n,
            Err(e) => {
                drop(obtained.agent);
                self.validator.forget(&vm);
                if let Err(d) = self.provider.destroy(&vm) {
                    tracing::error!(%vm, error = %error_chain(&d), "destroying a VM whose network failed");
                }
                return Err(e);
            }
        };
        let latency = t0.elapsed();
        let sandbox = Sandbox {
            id: id.clone(),
            template: ready.template.name.clone(),
            stack: ready.template.stack.clone(),
            state: SandboxState::Running,
            labels: req.labels,
            env: req.env,
            timeout_secs: Some(timeout),
            deadline: Some(SystemTime::now() + Duration::from_secs(timeout)),
            created_at,
            start: Some(SandboxStart {
                warm: obtained.warm,
                latency_us: latency.as_micros() as u64,
            }),
            end: None,
            on_timeout: opts.on_timeout,
            saved: None,
            access_token: opts.access_token,
            network,
        };
        let pooled = self.vms.take_pending_rename(&vm);
        let recorded = self
            .provider
            .vm_record(&vm, VmOwner::Sandbox)
            .map_err(ApiError::from)
            .and_then(|record| {
                self.store
                    .write("sandbox created", Durability::Process, |tx| {
                        if let Some(p) = &pooled {
                            tx.delete::<VmRecord>(p.as_str())?;
                        }
                        // The VM is new under the sandbox's id (a pending rename or an
                        // unrecorded restore): nothing to look up first.
                        tx.insert(&record)?;
                        tx.insert(&sandbox).map(drop)
                    })
                    .map_err(ApiError::from)
            });
        if let Err(e) = recorded {
            drop(obtained.agent);
            self.validator.forget(&vm);
            if let Err(d) = self.provider.destroy(&vm) {
                tracing::error!(%vm, error = %error_chain(&d), "destroying an unrecorded sandbox VM");
            }
            if let Some(p) = pooled
                && let Err(f) = self.vms.forget_dead(&p)
            {
                tracing::error!(vm = %p, error = %error_chain(&f), "forgetting a handed-over VM");
            }
            return Err(e.context("recording the new sandbox"));
        }
        self.live
            .insert(id.clone(), Arc::new(Live::new(&sandbox, obtained.agent)));
        self.metrics.sandbox_created(obtained.warm, latency);
        tracing::debug!(sandbox = %id, template = %sandbox.template, warm = obtained.warm,
            latency_us = latency.as_micros() as u64, "sandbox created");
        Ok(sandbox)
    }

    /// A warm VM from the template's pool if it has one ready, else a restore of its snapshot;
    /// either way named `id`, reseeded, and not recorded yet.
    fn obtain_vm(&self, ready: &ReadyTemplate, id: &SandboxId) -> Result<Obtained, ApiError> {
        let vm = vm_id(id);
        let stack = &ready.template.stack;
        if self.pool.depth(stack).is_some() {
            let tenant = Tenant::new(id.as_str())?;
            match self.pool.acquire(stack, &tenant) {
                Ok(acquired) => {
                    return Ok(Obtained {
                        warm: true,
                        agent: self.validator.take_connection(&acquired.vm_id),
                    });
                }
                // Empty (or refilling after failures): a restore is ~1 ms, no need to wait.
                Err(PoolError::Empty { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let agent = self
            .restore_reseeded(&vm, ready.snapshot.clone())
            .map_err(|e| e.context(format!("reseeding the restored VM {vm}")))?;
        Ok(Obtained {
            warm: false,
            agent: Some(agent),
        })
    }

    /// Restores VM `vm` from `snap`, waits for its agent (a restored Linux guest may refuse
    /// the first connections while it resets its vsock transport) and reseeds it; destroys
    /// the VM if any of that fails.
    fn restore_reseeded(
        &self,
        vm: &VmId,
        snap: ember_core::SnapshotRef,
    ) -> Result<AgentClient, ApiError> {
        self.vms.create_unrecorded(vm, &VmSpec::restore(snap))?;
        let reseeded = ember_host::agent::connect_restored(
            &self.provider,
            vm,
            AGENT_PORT,
            self.limits.restored_agent_wait(),
            self.limits.agent_timeout,
        )
        .map_err(ApiError::from)
        .and_then(|mut agent| {
            agent
                .send_reseed_fresh(self.next_generation())
                .map_err(ApiError::from)?;
            Ok(agent)
        });
        reseeded.inspect_err(|_| {
            if let Err(d) = self.provider.destroy(vm) {
                tracing::error!(%vm, error = %error_chain(&d), "destroying a VM that failed its reseed");
            }
        })
    }

    /// A new connection to VM `vm`'s agent.
    pub fn connect_agent(&self, vm: &VmId) -> Result<AgentClient, ApiError> {
        ember_host::agent::connect(&self.provider, vm, AGENT_PORT, self.limits.agent_timeout)
            .map_err(ApiError::from)
    }

    /// Destroys a VM through the recording provider, logging a failure (a VM already gone is
    /// fine).
    pub(crate) fn destroy_vm(&self, vm: &VmId) {
        self.validator.forget(vm);
        match self.vms.destroy(vm) {
            Ok(()) | Err(ember_core::VmError::NotFound { .. }) => {}
            Err(e) => tracing::error!(%vm, error = %error_chain(&e), "destroying a VM"),
        }
    }

    /// One sandbox as recorded (live or ended).
    pub fn sandbox(&self, id: &str) -> Result<Sandbox, ApiError> {
        let id = sandbox_id(id)?;
        self.store
            .get::<Sandbox>(id.as_str())?
            .map(|s| s.record)
            .ok_or_else(|| ApiError::not_found(format!("sandbox {id} not found")))
    }

    /// One page of sandboxes.
    pub fn sandboxes(&self, q: ListSandboxes) -> Result<SandboxPage, ApiError> {
        let after = q.cursor.as_deref().map(str::parse::<Cursor>).transpose()?;
        let page: Page<Sandbox> = self.store.sandboxes(&SandboxFilter {
            states: q.states,
            template: q.template,
            labels: q.labels,
            limit: q.limit.unwrap_or(100),
            after,
        })?;
        Ok(SandboxPage {
            items: page.items,
            next_cursor: page.next.map(|c| c.to_string()),
        })
    }

    /// The live state of sandbox `id`, or why there is none (404 unknown, 409 ended).
    pub fn live_sandbox(&self, id: &str) -> Result<(SandboxId, Arc<Live>), ApiError> {
        let id = sandbox_id(id)?;
        match self.live.get(&id) {
            Some(live) => Ok((id, live)),
            None => {
                let s = self.sandbox(id.as_str())?;
                Err(ApiError::conflict(format!(
                    "sandbox {id} is {}{}",
                    s.state,
                    s.end
                        .map(|e| format!(" ({}: {})", e.cause, e.message))
                        .unwrap_or_default()
                )))
            }
        }
    }

    /// Kills sandbox `id`: records it ended (`killed`) and destroys its VM. Killing an ended
    /// sandbox changes nothing and returns its record.
    pub fn kill_sandbox(&self, id: &str) -> Result<Sandbox, ApiError> {
        let sid = sandbox_id(id)?;
        if self.live.get(&sid).is_none() {
            return self.sandbox(id);
        }
        self.end_sandbox(&sid, EndCause::Killed, "killed by its owner".into())
    }

    /// Ends a live sandbox with `cause`: the record first, then its VM.
    pub fn end_sandbox(
        &self,
        id: &SandboxId,
        cause: EndCause,
        message: String,
    ) -> Result<Sandbox, ApiError> {
        let Some(live) = self.live.get(id) else {
            return self.sandbox(id.as_str());
        };
        let _turn = live.lifecycle();
        if self.live.get(id).is_none() {
            // Ended while this call waited for its turn.
            return self.sandbox(id.as_str());
        }
        let saved = live.saved();
        let ended = self
            .store
            .write("sandbox ended", Durability::Process, |tx| {
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
        self.live.remove(id);
        live.drop_agents();
        self.ports.close(id);
        match saved {
            Some(snap) => self.delete_saved(&snap),
            None => self.destroy_vm(&vm_id(id)),
        }
        self.metrics.sandbox_ended(cause);
        tracing::info!(sandbox = %id, %cause, "sandbox ended");
        Ok(ended.record)
    }

    /// Pauses a running sandbox's vCPUs (its memory stays; resume continues it).
    pub fn pause_sandbox(&self, id: &str) -> Result<Sandbox, ApiError> {
        self.change_state(id, SandboxState::Running, SandboxState::Paused)
    }

    /// Resumes a paused sandbox.
    pub fn resume_sandbox(&self, id: &str) -> Result<Sandbox, ApiError> {
        self.change_state(id, SandboxState::Paused, SandboxState::Running)
    }

    fn change_state(
        &self,
        id: &str,
        from: SandboxState,
        to: SandboxState,
    ) -> Result<Sandbox, ApiError> {
        let (id, live) = self.live_sandbox(id)?;
        let _turn = live.lifecycle();
        if self.live.get(&id).is_none() {
            return Err(ApiError::conflict(format!("sandbox {id} has ended")));
        }
        let now = live.state();
        if now == to {
            return self.sandbox(id.as_str());
        }
        if now != from {
            return Err(ApiError::conflict(format!(
                "sandbox {id} is {now}, not {from}"
            )));
        }
        if to == SandboxState::Running
            && let Some(saved) = live.saved()
        {
            return self.restore_saved(&id, &live, &saved, None);
        }
        let vm = vm_id(&id);
        let sandboxes = self.vms.for_owner(VmOwner::Sandbox);
        match to {
            SandboxState::Paused => sandboxes.pause(&vm)?,
            _ => sandboxes.resume(&vm)?,
        };
        let stored = self
            .store
            .write("sandbox state", Durability::Process, |tx| {
                tx.update::<Sandbox, StoreError>(id.as_str(), |s| {
                    s.state = to;
                    Ok(())
                })
            })?;
        live.set_state(to);
        tracing::debug!(sandbox = %id, state = %to, "sandbox state changed");
        Ok(stored.record)
    }

    /// Pauses a sandbox to disk: its VM (paused first if it runs) is snapshotted into the state
    /// directory and destroyed; the sandbox holds no memory or CPU and has no time limit until it
    /// is resumed. Pausing one that is already on disk changes nothing.
    pub fn pause_to_disk(&self, id: &str) -> Result<Sandbox, ApiError> {
        let (id, live) = self.live_sandbox(id)?;
        let _turn = live.lifecycle();
        if self.live.get(&id).is_none() {
            return Err(ApiError::conflict(format!("sandbox {id} has ended")));
        }
        if live.saved().is_some() {
            return self.sandbox(id.as_str());
        }
        let vm = vm_id(&id);
        let sandboxes = self.vms.for_owner(VmOwner::Sandbox);
        if live.state() == SandboxState::Running {
            sandboxes.pause(&vm)?;
            live.set_state(SandboxState::Paused);
        }
        let record = self.sandbox(id.as_str())?;
        let snapshot_id = SnapshotId::new(format!("{SAVED_PREFIX}{id}-{}", crate::ids::suffix()))?;
        let t0 = Instant::now();
        sandboxes.snapshot(
            &vm,
            &SnapshotRequest {
                snapshot_id: snapshot_id.clone(),
                stack: Some(record.stack.clone()),
            },
        )?;
        let stored = self.store.write("sandbox saved", Durability::Full, |tx| {
            tx.update::<Sandbox, StoreError>(id.as_str(), |s| {
                s.state = SandboxState::Paused;
                s.saved = Some(snapshot_id.clone());
                s.deadline = None;
                // Its VM (and so its slot's network) goes: exposed ports close with it.
                if let Some(n) = &mut s.network {
                    n.ports.clear();
                }
                Ok(())
            })
        });
        let stored = match stored {
            Ok(s) => s,
            Err(e) => {
                // The sandbox stays paused in memory; the snapshot goes.
                self.delete_saved(&snapshot_id);
                return Err(e.into());
            }
        };
        live.set_saved(Some(snapshot_id.clone()));
        live.set_deadline(None);
        live.drop_agents();
        self.ports.close(&id);
        self.destroy_vm(&vm);
        tracing::info!(sandbox = %id, snapshot = %snapshot_id,
            ms = t0.elapsed().as_secs_f64() * 1e3, "sandbox paused to disk");
        Ok(stored.record)
    }

    /// Resumes a sandbox, whether paused in memory or on disk; `timeout_secs` (or, when absent,
    /// its last time limit) counts from now for one restored from disk.
    pub fn resume_sandbox_with(
        &self,
        id: &str,
        timeout_secs: Option<u64>,
    ) -> Result<Sandbox, ApiError> {
        if let Some(t) = timeout_secs {
            validate_timeout("timeout", t)?;
        }
        let (sid, live) = self.live_sandbox(id)?;
        if let Some(saved) = live.saved() {
            let _turn = live.lifecycle();
            if self.live.get(&sid).is_none() {
                return Err(ApiError::conflict(format!("sandbox {sid} has ended")));
            }
            if live.saved().as_ref() == Some(&saved) {
                return self.restore_saved(&sid, &live, &saved, timeout_secs);
            }
        }
        let sb = self.resume_sandbox(id)?;
        match timeout_secs {
            Some(t) => self.set_timeout(id, SetTimeout { timeout_secs: t }),
            None => Ok(sb),
        }
    }

    /// Restores a sandbox saved to disk (its lifecycle turn held): a new VM from the saved
    /// snapshot, reseeded (entropy, wall clock), recorded running with its VM; then the snapshot
    /// goes.
    fn restore_saved(
        &self,
        id: &SandboxId,
        live: &Live,
        saved: &SnapshotId,
        timeout_secs: Option<u64>,
    ) -> Result<Sandbox, ApiError> {
        let t0 = Instant::now();
        let info = self
            .store
            .get::<ember_core::SnapshotInfo>(saved.as_str())?
            .ok_or_else(|| ApiError::internal(format!("the saved snapshot {saved} has no record")))?
            .record;
        let mut snap = info.to_ref();
        snap.resume = true;
        let vm = vm_id(id);
        let agent = self
            .restore_reseeded(&vm, snap)
            .map_err(|e| e.context(format!("resuming sandbox {id} from disk")))?;
        let record = self.sandbox(id.as_str())?;
        // A new VM means a new slot, so a new network: the sandbox's policy goes with it (its
        // address changes; exposed ports were closed at the pause).
        let network = match &record.network {
            Some(n) => match self.attach_network(&vm, Some(&n.egress)) {
                Ok(net) => net,
                Err(e) => {
                    drop(agent);
                    if let Err(d) = self.provider.destroy(&vm) {
                        tracing::error!(%vm, error = %error_chain(&d), "destroying a restore whose network failed");
                    }
                    return Err(e.context(format!("resuming sandbox {id}'s network")));
                }
            },
            None => None,
        };
        let timeout = timeout_secs
            .or(record.timeout_secs)
            .unwrap_or(DEFAULT_TIMEOUT_SECS);
        let deadline = SystemTime::now() + Duration::from_secs(timeout);
        let recorded = self
            .provider
            .vm_record(&vm, VmOwner::Sandbox)
            .map_err(ApiError::from)
            .and_then(|vm_record| {
                self.store
                    .write("sandbox restored", Durability::Process, |tx| {
                        tx.put(&vm_record)?;
                        tx.update::<Sandbox, StoreError>(id.as_str(), |s| {
                            s.state = SandboxState::Running;
                            s.saved = None;
                            s.timeout_secs = Some(timeout);
                            s.deadline = Some(deadline);
                            s.network = network.clone();
                            Ok(())
                        })
                    })
                    .map_err(ApiError::from)
            });
        let stored = match recorded {
            Ok(s) => s,
            Err(e) => {
                drop(agent);
                if let Err(d) = self.provider.destroy(&vm) {
                    tracing::error!(%vm, error = %error_chain(&d), "destroying an unrecorded restore");
                }
                return Err(e.context(format!("recording sandbox {id}'s resume")));
            }
        };
        live.set_saved(None);
        live.set_state(SandboxState::Running);
        live.set_deadline(Some(deadline));
        live.put_agent(agent);
        self.delete_saved(saved);
        tracing::info!(sandbox = %id, ms = t0.elapsed().as_secs_f64() * 1e3, "sandbox resumed from disk");
        Ok(stored.record)
    }

    /// Deletes a saved snapshot (files and record); a failure is logged (recovery removes
    /// saved snapshots no sandbox refers to).
    pub(crate) fn delete_saved(&self, snapshot: &SnapshotId) {
        match self.vms.delete_snapshot(snapshot) {
            Ok(()) | Err(ember_core::VmError::NotFound { .. }) => {}
            Err(e) => {
                tracing::warn!(%snapshot, error = %error_chain(&e), "deleting a saved snapshot")
            }
        }
    }

    /// Gives a live sandbox a new time limit, counted from now.
    pub fn set_timeout(&self, id: &str, req: SetTimeout) -> Result<Sandbox, ApiError> {
        validate_timeout("timeout_secs", req.timeout_secs)?;
        let (id, live) = self.live_sandbox(id)?;
        let _turn = live.lifecycle();
        if self.live.get(&id).is_none() {
            return Err(ApiError::conflict(format!("sandbox {id} has ended")));
        }
        let deadline = SystemTime::now() + Duration::from_secs(req.timeout_secs);
        let stored = self
            .store
            .write("sandbox timeout", Durability::Process, |tx| {
                tx.update::<Sandbox, StoreError>(id.as_str(), |s| {
                    s.timeout_secs = Some(req.timeout_secs);
                    s.deadline = Some(deadline);
                    Ok(())
                })
            })?;
        live.set_deadline(Some(deadline));
        Ok(stored.record)
    }

    /// Ends (or, as their record asks, pauses to disk) every sandbox whose deadline has passed;
    /// returns how many.
    pub fn reap_expired(&self) -> usize {
        let expired = self.live.expired(SystemTime::now());
        let mut n = 0;
        for id in expired {
            let pause = self
                .sandbox(id.as_str())
                .is_ok_and(|s| s.on_timeout == OnTimeout::Pause);
            let done = if pause {
                self.pause_to_disk(id.as_str()).map(drop)
            } else {
                self.end_sandbox(&id, EndCause::TimedOut, "its time limit passed".into())
                    .map(drop)
            };
            match done {
                Ok(()) => n += 1,
                Err(e) => tracing::error!(sandbox = %id, error = %e, "a timed-out sandbox"),
            }
        }
        n
    }

    /// Removes the records of sandboxes that ended longer than the retention ago; returns how
    /// many.
    pub fn prune_ended(&self) -> Result<usize, ApiError> {
        let Some(cutoff) = SystemTime::now().checked_sub(self.limits.ended_retention) else {
            return Ok(0);
        };
        let mut removed = 0;
        let mut after: Option<Cursor> = None;
        loop {
            let page = self.store.sandboxes(&SandboxFilter {
                states: vec![SandboxState::Ended],
                limit: ember_store::MAX_PAGE,
                after: after.clone(),
                ..SandboxFilter::default()
            })?;
            let old: Vec<SandboxId> = page
                .items
                .iter()
                .filter(|s| s.end.as_ref().is_some_and(|e| e.at < cutoff))
                .map(|s| s.id.clone())
                .collect();
            if !old.is_empty() {
                self.store
                    .write("prune ended sandboxes", Durability::Process, |tx| {
                        for id in &old {
                            tx.remove::<Sandbox>(id.as_str())?;
                        }
                        Ok::<_, StoreError>(())
                    })?;
                removed += old.len();
            }
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(removed),
            }
        }
    }
}
