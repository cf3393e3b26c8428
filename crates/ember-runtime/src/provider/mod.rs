//! [`VmmProvider`]: ember's [`VmProvider`](ember_core::VmProvider) + [`VmQuery`](ember_core::VmQuery)
//! over real VMM processes — one process per microVM, ember-vmm or Firecracker
//! ([`Flavor`]), driven through the Firecracker API.
//!
//! - **Processes** come from the spare pool ([`crate::spares`]): a create takes an API-ready
//!   process, so no process start is on the create, restore or acquire path.
//! - **Files**: each process lives in its slot directory, each VM's id is a symlink to it
//!   ([`crate::layout`] explains why); destroy removes both, shutdown removes everything but
//!   snapshots.
//! - **Supervision**: the supervisor thread notices a VMM's death through its pidfd at once,
//!   marks the VM `Stopped` and calls the registered [`ExitListener`]s (the warm pool's
//!   `notify_died`).
//! - **Concurrency**: a table lock guards only the id → VM map; each VM has an operation lock
//!   (held across its API calls) and a record lock (short). No lock is held across a call to
//!   another VM, so different VMs never wait for each other.
//! - **Snapshots** ([`crate::snapshots`]) belong to their stack and outlive the VM they were
//!   taken from; `verify_snapshot` checks the files and then restores the snapshot on a spare.

mod adopt;
mod config;
mod create;
mod lifecycle;
mod snapshot;
mod vm;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{
    Arc, Mutex, MutexGuard, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak,
};
use std::time::{Duration, Instant};

pub use adopt::{AdoptError, SweepReport};
pub use config::{Flavor, ProviderConfig, Timeouts, locate_ember_jailer, locate_ember_vmm};
use ember_core::{VmError, VmId};
use vm::VmEntry;

use crate::client::{ClientError, FirecrackerClient};
use crate::error::RuntimeError;
use crate::layout::{Layout, LayoutError, Leftovers, SlotPaths};
use crate::process::{ExitInfo, VmmProcess};
use crate::snapshots::SnapshotStore;
use crate::spares::{SpareStats, Spares, SpawnSettings};
use crate::supervisor::{ExitHook, Supervisor};

/// How long a released provider waits, in all, for the VMMs it just killed to exit.
const RELEASE_REAP_WAIT: Duration = Duration::from_secs(5);

/// A VM whose VMM process ended without the provider asking it to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmExit {
    /// The VM's id when it died.
    pub id: VmId,
    /// Its slot.
    pub slot: u64,
    /// Its VMM's pid.
    pub pid: u32,
    /// How the process ended.
    pub exit: ExitInfo,
    /// The end of its log (`vmm.log`, up to 600 bytes, read before the slot's files go): why
    /// it ended, when the VMM said so.
    pub log_tail: String,
    /// The end of its guest's serial console (`console.log`, up to 1,000 bytes): what the
    /// guest printed last — a Linux guest's oops or panic, say. For the host's log only: it is
    /// the tenant's output.
    pub console_tail: String,
}

/// Called on the supervisor thread, with no provider lock held, when a VM's process dies.
/// Keep it short (hand work to another thread); it may call back into the provider.
pub type ExitListener = Arc<dyn Fn(&VmExit) + Send + Sync>;

/// Handle to remove a listener again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ListenerId(u64);

/// Where one VM's files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmPaths {
    /// The VM's id symlink, `<root>/vms/<id>` (follows renames).
    pub link: PathBuf,
    /// The slot's files (stable for the VM's whole life; the VMM uses these paths).
    pub slot: SlotPaths,
}

/// Figures about the provider's processes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProviderStats {
    /// VMs (any status but destroyed).
    pub vms: usize,
    /// VMM processes not yet reaped (VMs, spares, and processes still dying).
    pub processes: usize,
    /// The spare pool.
    pub spares: SpareStats,
}

/// The table of VMs: id → entry and slot → entry, plus ids being created.
#[derive(Debug, Default)]
pub(crate) struct Table {
    pub vms: HashMap<VmId, Arc<VmEntry>>,
    pub by_slot: HashMap<u64, Arc<VmEntry>>,
    pub reserved: HashSet<VmId>,
}

/// The provider's shared core.
pub(crate) struct Inner {
    pub name: &'static str,
    pub config: ProviderConfig,
    pub layout: Arc<Layout>,
    pub snapshots: SnapshotStore,
    /// Read on every call (by id or slot), written on create, rename and destroy: readers
    /// never wait for each other, which matters under a burst of handoffs.
    table: RwLock<Table>,
    listeners: Mutex<Vec<(ListenerId, ExitListener)>>,
    next_listener: AtomicU64,
    pub supervisor: Arc<Supervisor>,
    pub spares: Spares,
    pub shutting_down: AtomicBool,
    shut_down: Mutex<bool>,
    pub vmm_version: OnceLock<String>,
    /// What an earlier provider left under the root when this one opened it (detached mode):
    /// the slots with a directory and the VMM processes found, all numbered below the spares'.
    pub leftovers: Mutex<adopt::Leftover>,
    /// Jailing, when configured.
    pub jail: Option<Arc<crate::jail::Jails>>,
}

/// A [`VmProvider`](ember_core::VmProvider) + [`VmQuery`](ember_core::VmQuery) running each
/// microVM in its own VMM process. Dropping it runs [`shutdown`](Self::shutdown).
pub struct VmmProvider {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for VmmProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmmProvider")
            .field("name", &self.inner.name)
            .field("root", &self.inner.layout.root())
            .finish()
    }
}

/// Why a provider could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The root directory cannot be used.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// The VMM binary does not exist.
    #[error("the VMM binary {0} does not exist")]
    MissingBinary(PathBuf),
    /// The root's slot directories cannot be listed.
    #[error("cannot list the slots under {path}")]
    Slots {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Jailing could not be set up.
    #[error(transparent)]
    Jail(#[from] crate::jail::JailSetupError),
    /// A provider thread could not be started.
    #[error("cannot start the provider's {what} thread")]
    Thread {
        /// Which thread.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl VmmProvider {
    /// Opens the root directory (taking its lock; clearing leftovers, or keeping them for
    /// [`adopt`](Self::adopt) and [`sweep`](Self::sweep) when detached), starts the supervisor
    /// and the spawner, and begins filling the spare pool. The snapshot catalog starts empty:
    /// [`register_snapshot`](Self::register_snapshot) what a store kept.
    pub fn new(config: ProviderConfig) -> Result<VmmProvider, StartError> {
        let given = config.flavor.binary().to_path_buf();
        if !given.is_file() {
            return Err(StartError::MissingBinary(given));
        }
        // VMM processes start in their own directories, where a relative path would name
        // something else.
        let binary = std::path::absolute(&given).map_err(|_| StartError::MissingBinary(given))?;
        let leftovers = if config.detached {
            Leftovers::Keep
        } else {
            Leftovers::Clear
        };
        let layout = Arc::new(Layout::open(
            &config.root,
            config.snapshots_dir.as_deref(),
            leftovers,
        )?);
        let left = adopt::Leftover::scan(&layout).map_err(|source| StartError::Slots {
            path: layout.slots_dir().to_path_buf(),
            source,
        })?;
        let first_slot = left.max_slot() + 1;
        let jail = match &config.jail {
            Some(settings) => {
                if config.detached {
                    // Jailed VMMs are re-parented to us when their jailer exits: reap them here.
                    nix::sys::prctl::set_child_subreaper(true).map_err(|e| StartError::Thread {
                        what: "subreaper",
                        source: e.into(),
                    })?;
                }
                let jails = crate::jail::Jails::prepare(settings.clone(), layout.root(), &binary)?;
                if !config.detached {
                    // The earlier provider's VMMs died with it: so go their cgroups.
                    for slot in jails.cgroup_slots() {
                        jails.remove_cgroup(slot);
                    }
                }
                Some(Arc::new(jails))
            }
            None => None,
        };
        let snapshots = SnapshotStore::new(layout.snapshots_dir());
        let me: Arc<OnceLock<Weak<Inner>>> = Arc::new(OnceLock::new());
        let hook_target = Arc::clone(&me);
        let hook: ExitHook = Arc::new(move |process, info| {
            if let Some(inner) = hook_target.get().and_then(Weak::upgrade) {
                inner.on_exit(process, info);
            }
        });
        let supervisor =
            Arc::new(
                Supervisor::start(hook).map_err(|source| StartError::Thread {
                    what: "supervisor",
                    source,
                })?,
            );
        let spares = Spares::start(
            config.spares.clone(),
            SpawnSettings {
                binary,
                extra_args: config.extra_args.clone(),
                client_timeouts: config.timeouts.client,
                parent_death: match &config.flavor {
                    _ if config.detached => crate::process::ParentDeath::Detached,
                    Flavor::EmberVmm { .. } => crate::process::ParentDeath::Flag,
                    Flavor::Firecracker { .. } => crate::process::ParentDeath::Launcher,
                },
                jail: jail.clone(),
                networks: config.networks.clone(),
            },
            Arc::clone(&layout),
            Arc::clone(&supervisor),
            first_slot,
        )
        .map_err(|source| StartError::Thread {
            what: "spawner",
            source,
        })?;
        let inner = Arc::new(Inner {
            name: config.flavor.name(),
            config,
            layout,
            snapshots,
            table: RwLock::new(Table::default()),
            listeners: Mutex::new(Vec::new()),
            next_listener: AtomicU64::new(1),
            supervisor,
            spares,
            shutting_down: AtomicBool::new(false),
            shut_down: Mutex::new(false),
            vmm_version: OnceLock::new(),
            leftovers: Mutex::new(left),
            jail,
        });
        let _ = me.set(Arc::downgrade(&inner));
        tracing::info!(provider = inner.name, root = %inner.layout.root().display(),
            detached = inner.config.detached, first_slot, "VMM provider started");
        Ok(VmmProvider { inner })
    }

    /// The flavor.
    pub fn flavor(&self) -> &Flavor {
        &self.inner.config.flavor
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        self.inner.layout.root()
    }

    /// The configuration.
    pub fn config(&self) -> &ProviderConfig {
        &self.inner.config
    }

    /// Registers `listener`, called whenever a VM's process dies unexpectedly.
    pub fn add_exit_listener(&self, listener: ExitListener) -> ListenerId {
        let id = ListenerId(self.inner.next_listener.fetch_add(1, Ordering::Relaxed));
        self.inner.listeners().push((id, listener));
        id
    }

    /// Removes a listener; returns whether it was registered.
    pub fn remove_exit_listener(&self, id: ListenerId) -> bool {
        let mut l = self.inner.listeners();
        let before = l.len();
        l.retain(|(i, _)| *i != id);
        l.len() != before
    }

    /// Where a VM's files are.
    pub fn paths(&self, id: &VmId) -> Result<VmPaths, VmError> {
        let entry = self.inner.entry(id)?;
        Ok(VmPaths {
            link: self.inner.layout.vm_link(id),
            slot: entry.process.paths().clone(),
        })
    }

    /// The VM's vsock socket: host-initiated connections go here (`CONNECT <port>\n`), and
    /// guest-initiated ones are expected at `<path>_<port>`. Stable across renames.
    pub fn vsock_path(&self, id: &VmId) -> Result<PathBuf, VmError> {
        Ok(self.inner.entry(id)?.process.paths().vsock.clone())
    }

    /// The VM's API socket (stable across renames).
    pub fn api_socket(&self, id: &VmId) -> Result<PathBuf, VmError> {
        Ok(self.inner.entry(id)?.process.paths().api_sock.clone())
    }

    /// The VM's console log (the guest's serial output).
    pub fn console_log(&self, id: &VmId) -> Result<PathBuf, VmError> {
        Ok(self.inner.entry(id)?.process.paths().console_log.clone())
    }

    /// The pid of the VM's VMM process.
    pub fn pid(&self, id: &VmId) -> Result<u32, VmError> {
        Ok(self.inner.entry(id)?.process.pid())
    }

    /// The VM's slot number (unique for the provider's lifetime: two VMs with different slots
    /// are different processes).
    pub fn slot(&self, id: &VmId) -> Result<u64, VmError> {
        Ok(self.inner.entry(id)?.slot())
    }

    /// Runs `f` with the VM's API client, holding its operation lock (for raw API access:
    /// `GET /vm/config`, `GET /ember/timings`, ...).
    pub fn with_client<R>(
        &self,
        id: &VmId,
        f: impl FnOnce(&mut FirecrackerClient) -> Result<R, ClientError>,
    ) -> Result<R, VmError> {
        let entry = self.inner.entry(id)?;
        let mut client = entry.client();
        if entry.record().destroyed {
            return Err(VmError::vm_not_found(id));
        }
        f(&mut client).map_err(|e| {
            VmError::provider(
                self.inner.name,
                ember_core::Operation::Query,
                id,
                RuntimeError::Api(e),
            )
        })
    }

    /// Process and spare figures.
    pub fn stats(&self) -> ProviderStats {
        ProviderStats {
            vms: self.inner.table_read().vms.len(),
            processes: self.inner.supervisor.watched(),
            spares: self.inner.spares.stats(),
        }
    }

    /// The pids of every VMM process the provider owns and has not reaped (VMs, spares, and
    /// processes killed but still exiting).
    pub fn process_ids(&self) -> Vec<u32> {
        self.inner.supervisor.pids()
    }

    /// Kills every VMM and spare, waits (bounded by `timeouts.shutdown`) until each is reaped,
    /// and removes every file but the snapshots. Idempotent; `Drop` runs it too. Calls after it
    /// fail (creates with a provider error, lookups with `NotFound`).
    pub fn shutdown(&self) {
        self.inner.shutdown();
    }
}

impl Drop for VmmProvider {
    /// A detached provider is [released](Self::release) (its VMs keep running); any other is
    /// [shut down](Self::shutdown).
    fn drop(&mut self) {
        if self.inner.config.detached {
            self.inner.release();
        } else {
            self.inner.shutdown();
        }
    }
}

impl Inner {
    /// The table, for changes.
    pub(crate) fn table(&self) -> RwLockWriteGuard<'_, Table> {
        // Only map inserts/removes under this lock; a poisoned table is still consistent.
        self.table.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The table, for lookups.
    pub(crate) fn table_read(&self) -> RwLockReadGuard<'_, Table> {
        // As for `table`.
        self.table.read().unwrap_or_else(|p| p.into_inner())
    }

    fn listeners(&self) -> MutexGuard<'_, Vec<(ListenerId, ExitListener)>> {
        self.listeners.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The live entry named `id`.
    pub(crate) fn entry(&self, id: &VmId) -> Result<Arc<VmEntry>, VmError> {
        self.table_read()
            .vms
            .get(id)
            .cloned()
            .ok_or_else(|| VmError::vm_not_found(id))
    }

    /// The supervisor's report of a reaped process.
    fn on_exit(&self, process: &Arc<VmmProcess>, info: ExitInfo) {
        let slot = process.slot();
        let entry = self.table_read().by_slot.get(&slot).cloned();
        let mut died = None;
        match entry {
            Some(entry) => {
                let mut rec = entry.record();
                rec.exit = Some(info);
                if !process.kill_requested() && !rec.destroyed {
                    rec.status = ember_core::VmStatus::Stopped;
                    died = Some(VmExit {
                        id: rec.id.clone(),
                        slot,
                        pid: process.pid(),
                        exit: info,
                        log_tail: crate::spares::log_tail(&process.paths().vmm_log, 600),
                        console_tail: crate::spares::log_tail(&process.paths().console_log, 1000),
                    });
                }
            }
            // A ready spare that died: drop it (the spawner replaces it) and its files.
            None if !process.kill_requested() && self.spares.forget_dead(slot) => {
                tracing::warn!(slot, pid = process.pid(), %info, "a spare VMM died");
                process.kill(true);
            }
            // A destroyed VM, a discarded spare, or a process still being made into a VM
            // (its create reports the failure).
            None => {}
        }
        if process.remove_files_on_exit()
            && let Err(e) = self.layout.remove_slot(slot)
        {
            tracing::warn!(slot, error = %e, "cannot remove a dead VMM's slot");
        }
        if let Some(jail) = &self.jail {
            jail.release_slot(slot);
        }
        if let Some(hook) = &self.config.networks {
            hook.0.release(slot);
        }
        if let Some(exit) = died {
            tracing::warn!(
                vm = %exit.id,
                pid = exit.pid,
                exit = %exit.exit,
                log = %exit.log_tail,
                console = ?exit.console_tail,
                "VMM process died"
            );
            let listeners: Vec<ExitListener> = self
                .listeners()
                .iter()
                .map(|(_, l)| Arc::clone(l))
                .collect();
            for l in listeners {
                l(&exit);
            }
        }
    }

    /// An error for a failed API call on a VM: if the VMM is gone, say so (and how it ended).
    pub(crate) fn call_failed(&self, process: &VmmProcess, e: ClientError) -> RuntimeError {
        if e.is_unreachable()
            && let Some(exit) = process.wait_exit(Duration::from_millis(100))
        {
            return RuntimeError::VmmExited {
                pid: process.pid(),
                exit,
                log_tail: crate::spares::log_tail(&process.paths().vmm_log, 600),
            };
        }
        RuntimeError::Api(e)
    }

    /// Stops the spawner (killing the spares) and the supervisor, forgets every VM without
    /// touching its process or files. Idempotent, and a no-op after `shutdown`.
    fn release(&self) {
        let mut done = self.shut_down.lock().unwrap_or_else(|p| p.into_inner());
        if *done {
            return;
        }
        self.shutting_down.store(true, Ordering::SeqCst);
        let (n, live_slots) = {
            let mut table = self.table();
            let live: HashSet<u64> = table.by_slot.keys().copied().collect();
            table.by_slot.clear();
            let n = table.vms.len();
            table.vms.clear();
            (n, live)
        };
        self.spares.shutdown();
        self.supervisor.stop();
        // VMs destroyed a moment ago, killed and not reaped yet: the supervisor will not
        // report them now. SIGKILLed, they are gone in moments: reap them (so their cgroups
        // can go, below) and remove what is left of their files (destroy's removal failed if
        // any is).
        // One bound for all of them: a process the kernel holds (uninterruptible sleep) must
        // not hang the release; its files stay for the next start's sweep.
        let deadline = Instant::now() + RELEASE_REAP_WAIT;
        for process in self.supervisor.unreaped() {
            if process.kill_requested() && process.remove_files_on_exit() {
                if !process.reap_by(deadline) {
                    tracing::warn!(
                        slot = process.slot(),
                        pid = process.pid(),
                        "a destroyed VM's process has not exited after SIGKILL; its files are left for the next start's sweep"
                    );
                    continue;
                }
                if let Err(e) = self.layout.remove_slot(process.slot()) {
                    tracing::warn!(slot = process.slot(), error = %e, "cannot remove a destroyed VM's files");
                }
            }
        }
        if let Some(jail) = &self.jail {
            // What was kept for reuse goes (free cgroups, namespaces); the spares just killed
            // are reaped by nobody now: their cgroups go here.
            jail.drop_recycled();
            for slot in jail.cgroup_slots() {
                if !live_slots.contains(&slot) {
                    jail.remove_cgroup(slot);
                }
            }
            // Nothing left running: nothing of ours is left in the cgroup trees.
            jail.remove_parent_cgroups_if_empty();
        }
        if let Some(hook) = &self.config.networks {
            for slot in hook.0.slots() {
                if !live_slots.contains(&slot) {
                    hook.0.release(slot);
                }
            }
        }
        *done = true;
        tracing::info!(
            provider = self.name,
            vms = n,
            "VMM provider released its VMs (they keep running)"
        );
    }

    fn shutdown(&self) {
        let mut done = self.shut_down.lock().unwrap_or_else(|p| p.into_inner());
        if *done {
            return;
        }
        self.shutting_down.store(true, Ordering::SeqCst);
        let t0 = Instant::now();
        let entries: Vec<Arc<VmEntry>> = {
            let mut table = self.table();
            table.by_slot.clear();
            table.vms.drain().map(|(_, e)| e).collect()
        };
        let n = entries.len();
        for entry in &entries {
            {
                let mut rec = entry.record();
                rec.destroyed = true;
                rec.status = ember_core::VmStatus::Destroyed;
            }
            entry.process.kill(true);
        }
        // Spares last: the spawner thread's exit would also kill (by parent-death signal)
        // everything it spawned, but as an unexpected death.
        self.spares.shutdown();
        let deadline = t0 + self.config.timeouts.shutdown;
        for entry in &entries {
            let left = deadline.saturating_duration_since(Instant::now());
            if entry.process.wait_exit(left).is_none() {
                tracing::error!(
                    pid = entry.process.pid(),
                    "a killed VMM was not reaped in time"
                );
            }
        }
        while self.supervisor.watched() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let left = self.supervisor.watched();
        self.supervisor.stop();
        if let Err(e) = self.layout.remove_runtime_files() {
            tracing::error!(root = %self.layout.root().display(), error = %e,
                "cannot remove the provider's files");
        }
        if let Some(jail) = &self.jail {
            jail.tear_down();
        }
        if let Some(hook) = &self.config.networks {
            for slot in hook.0.slots() {
                hook.0.release(slot);
            }
        }
        *done = true;
        if left > 0 {
            tracing::error!(left, "VMM processes were still running at shutdown");
        }
        tracing::info!(provider = self.name, vms = n, elapsed = ?t0.elapsed(), "VMM provider shut down");
    }
}
