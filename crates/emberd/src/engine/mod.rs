//! The engine: everything the daemon does, as blocking calls over the store, the runtime's
//! provider and one warm pool. The HTTP layer ([`crate::api`]) runs these calls on tokio's
//! blocking threads and turns their results into responses; nothing here knows HTTP.
//!
//! ```text
//! Engine
//!   ├── store      ember-store: templates, snapshots, pools, sandboxes, VMs (the truth)
//!   ├── vms        Recorded<VmmProvider>: every VM change written to the store
//!   ├── pool       one WarmPool over Recorded (owner Pool), a bucket per pooled template
//!   ├── validator  the guest agent: Health after restore, Reseed at handover
//!   └── live       per running or paused sandbox: its agent connections, env and deadline
//! ```
//!
//! Submodules: [`templates`] (build, list, delete), [`pools`] (depths per template),
//! [`sandboxes`] (create, list, pause/resume, timeouts, kill), [`guest`] (exec and files over
//! the agent), [`vms`] (the raw `VmProvider` contract), [`recovery`] (reconcile the store with
//! the host at start), [`recorder`] (the recording provider), [`live`] (the in-memory index of
//! live sandboxes), [`network`] (sandbox networks: a namespace per VMM slot, egress policy,
//! exposed ports).

pub mod guest;
pub mod live;
pub mod network;
pub mod pools;
pub mod recorder;
pub mod recovery;
pub mod sandboxes;
pub mod templates;
pub mod vms;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use ember_core::{SandboxId, SnapshotRef, Template, TemplateName, VmOwner};
use ember_host::agent::AgentValidator;
use ember_pool::{PoolSettings, WarmPool};
use ember_runtime::{ListenerId, VmmProvider};
use ember_store::Store;

use crate::metrics::Metrics;
pub use live::{Live, LiveSandboxes};
pub use recorder::Recorded;

/// The daemon's warm pool.
pub type Pool = WarmPool<Recorded>;

/// The vsock port every template's agent listens on (the probe's and ember-agent's).
pub const AGENT_PORT: u32 = ember_core::template::PROBE_AGENT_PORT;

/// How long connecting to an agent, or one agent call other than an exec, may take before the
/// sandbox counts as unreachable, by default (`Limits::agent_timeout`, `--agent-timeout-secs`).
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a guest restored from disk may refuse its agent's first connection (a Linux
/// guest resetting its vsock transport after the restore).
pub const RESTORED_AGENT_WAIT: Duration = Duration::from_secs(30);

/// What the engine is allowed to hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Most sandboxes running or paused at once; creates beyond it are refused (503).
    pub max_sandboxes: usize,
    /// Largest file a `files` call moves, bytes.
    pub max_file_bytes: usize,
    /// How long an ended sandbox's record is kept before it is pruned.
    pub ended_retention: Duration,
    /// How long connecting to a guest's agent, or one agent call other than an exec, may take
    /// (pool validation included) before the guest counts as unreachable. Raise it for slow
    /// guests: a host under heavy load, nested emulation.
    pub agent_timeout: Duration,
}

impl Limits {
    /// How long a guest restored from disk may refuse its agent's first connection.
    pub fn restored_agent_wait(&self) -> Duration {
        RESTORED_AGENT_WAIT.max(self.agent_timeout)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_sandboxes: 1024,
            max_file_bytes: 64 << 20,
            ended_retention: Duration::from_secs(24 * 3600),
            agent_timeout: AGENT_TIMEOUT,
        }
    }
}

/// How the engine builds Linux images for templates with an `image` guest.
#[derive(Debug, Clone)]
pub struct ImageSettings {
    /// The image cache (one directory per content hash; templates' guests point into it, so
    /// it lives in the state dir).
    pub cache_dir: PathBuf,
    /// The static ember-agent put into every image (`None`: `$EMBER_AGENT_BIN`, or
    /// `ember-agent` next to the daemon's executable).
    pub agent: Option<PathBuf>,
}

/// A ready template and the snapshot reference its sandboxes are restored from.
#[derive(Debug, Clone)]
pub struct ReadyTemplate {
    /// The template as recorded.
    pub template: Template,
    /// Its snapshot, resuming on restore.
    pub snapshot: SnapshotRef,
}

/// Everything the daemon does.
pub struct Engine {
    /// The store: the one source of truth.
    pub store: Arc<Store>,
    /// The runtime's provider (detached: VMMs outlive the daemon).
    pub provider: Arc<VmmProvider>,
    /// The provider with recording, for VMs the raw API makes (owner `api`).
    pub vms: Recorded,
    /// The warm pool (its VMs are recorded with owner `pool`).
    pub pool: Arc<Pool>,
    /// The agent validator the pool uses (and whose handed-over connections tenants get).
    pub validator: Arc<AgentValidator>,
    /// Running and paused sandboxes.
    pub live: LiveSandboxes,
    /// The probe guest's kernel, written into the state dir at start.
    pub probe_kernel: PathBuf,
    /// The metrics registry's handles.
    pub metrics: Arc<Metrics>,
    /// What the engine may hold.
    pub limits: Limits,
    /// Sandbox networks, when the daemon gives sandboxes networks.
    pub nets: Option<Arc<network::SlotNets>>,
    /// Exposed guest ports' host listeners.
    pub ports: network::PortProxies,
    /// Where templates' Linux images are built.
    pub images: ImageSettings,
    /// Ready templates with the snapshot their sandboxes restore (a cache of the store's, so
    /// a create reads nothing from the store).
    ready: RwLock<HashMap<TemplateName, Arc<ReadyTemplate>>>,
    /// The next Reseed generation for VMs restored outside the pool.
    generation: AtomicU64,
    listener: Mutex<Option<ListenerId>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Maps and options only: a panicked holder leaves them consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Engine {
    /// Puts the parts together (no recovery yet: see [`recovery::recover`]).
    pub fn new(
        store: Arc<Store>,
        provider: Arc<VmmProvider>,
        probe_kernel: PathBuf,
        metrics: Arc<Metrics>,
        limits: Limits,
        nets: Option<Arc<network::SlotNets>>,
        images: ImageSettings,
    ) -> Result<Arc<Engine>, ember_pool::PoolError> {
        let vms = Recorded::new(Arc::clone(&provider), Arc::clone(&store), VmOwner::Api);
        let validator = Arc::new(AgentValidator::new(
            Arc::clone(&provider),
            AGENT_PORT,
            limits.agent_timeout,
        ));
        let pool = Arc::new(WarmPool::start(
            vms.for_owner(VmOwner::Pool),
            Arc::clone(&validator) as Arc<dyn ember_pool::EntryValidator>,
            PoolSettings::default(),
        )?);
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        let engine = Arc::new(Engine {
            store,
            provider,
            vms,
            pool,
            validator,
            live: LiveSandboxes::default(),
            probe_kernel,
            metrics,
            limits,
            nets,
            ports: network::PortProxies::default(),
            images,
            ready: RwLock::new(HashMap::new()),
            generation: AtomicU64::new(seed),
            listener: Mutex::new(None),
        });
        // Deaths: the pool replaces its own; a tenant's sandbox ends with the cause.
        let weak = Arc::downgrade(&engine);
        let id =
            engine
                .provider
                .add_exit_listener(Arc::new(move |exit: &ember_runtime::VmExit| {
                    if let Some(engine) = weak.upgrade() {
                        engine.vm_died(exit);
                    }
                }));
        *lock(&engine.listener) = Some(id);
        Ok(engine)
    }

    /// The cached ready template `name`, if it is one.
    pub fn cached_ready(&self, name: &TemplateName) -> Option<Arc<ReadyTemplate>> {
        self.ready
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// Caches a template that became ready (or forgets it with `None`).
    pub fn cache_ready(&self, name: &TemplateName, ready: Option<ReadyTemplate>) {
        let mut map = self.ready.write().unwrap_or_else(|p| p.into_inner());
        match ready {
            Some(r) => {
                map.insert(name.clone(), Arc::new(r));
            }
            None => {
                map.remove(name);
            }
        }
    }

    /// A fresh Reseed generation.
    pub fn next_generation(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::Relaxed)
    }

    /// The supervisor's report of a VMM that died (on its thread: the work goes elsewhere).
    fn vm_died(self: &Arc<Self>, exit: &ember_runtime::VmExit) {
        if self.pool.notify_died(&exit.id) {
            return;
        }
        let engine = Arc::clone(self);
        let exit = exit.clone();
        let spawned = std::thread::Builder::new()
            .name("emberd-vm-died".into())
            .spawn(move || engine.vm_died_now(&exit));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start a thread to record a VM's death");
        }
    }

    fn vm_died_now(&self, exit: &ember_runtime::VmExit) {
        let mut message = format!("its VMM (pid {}) died: {}", exit.pid, exit.exit);
        // Its last words, when it said any: what an operator needs to know why.
        if let Some(last) = exit.log_tail.lines().rev().find(|l| !l.trim().is_empty()) {
            message.push_str(&format!(" (its log ends: {})", last.trim()));
        }
        if let Ok(id) = SandboxId::new(exit.id.as_str())
            && self.live.get(&id).is_some()
        {
            if let Err(e) = self.end_sandbox(&id, ember_core::EndCause::VmExited, message) {
                tracing::error!(sandbox = %id, error = %e, "recording a sandbox's death");
            }
            return;
        }
        // A raw API VM (or one whose owner is gone): its record goes with it.
        if let Err(e) = self.vms.forget_dead(&exit.id) {
            tracing::error!(vm = %exit.id, error = %ember_core::error_chain(&e), "forgetting a dead VM");
        }
    }

    /// Stops the daemon's threads and leaves every VM running for the next start: the pool's
    /// ready VMs (adopted back into the pool) and tenants' sandboxes (adopted with their
    /// records).
    pub fn leave(&self) {
        let left = self.pool.leave();
        tracing::info!(
            pooled = left.len(),
            sandboxes = self.live.count(),
            "leaving VMs running"
        );
        if let Some(id) = lock(&self.listener).take() {
            self.provider.remove_exit_listener(id);
        }
        self.live.clear();
        self.provider.release();
    }
}
