//! Finding VMs again after their owner restarted (detached providers): [`Leftover`] is what an
//! earlier provider left under the root when this one opened it; [`VmmProvider::adopt`] takes
//! one recorded VM back (same process, same sockets, same slot); [`VmmProvider::sweep`] then
//! kills and removes whatever was left that nobody adopted; [`VmmProvider::vm_record`] is what
//! to record about a VM so that it can be adopted later.
//!
//! The authority on "what the host holds" is the host itself: slot directories on disk and VMM
//! processes in `/proc` whose API socket lies under the root's `slots/` (found by command line,
//! so a process whose directory is already gone is found too). Spares started by this provider
//! are numbered above everything found, so the sweep never touches them.

use std::collections::HashSet;
use std::sync::Arc;

use ember_core::{
    ResourceKind, SnapshotId, SnapshotInfo, VmError, VmId, VmOwner, VmProcess, VmRecord, VmStatus,
    VmView,
};

use super::vm::{VmEntry, VmRecord as Entry};
use super::{Inner, VmmProvider};
use crate::client::FirecrackerClient;
use crate::layout::Layout;
use crate::process::VmmProcess;
use crate::procfs::{self, FoundVmm};
use ember_fc_api::InstanceState;

/// What an earlier provider left under the root.
#[derive(Debug, Default)]
pub struct Leftover {
    /// Slot numbers with a directory.
    pub slots: Vec<u64>,
    /// VMM processes found in `/proc`.
    pub processes: Vec<FoundVmm>,
    /// Slots adopted since.
    pub adopted: HashSet<u64>,
}

impl Leftover {
    /// Reads the root (a provider that clears its root finds nothing).
    pub(crate) fn scan(layout: &Layout) -> std::io::Result<Leftover> {
        let mut slots = layout.slot_numbers()?;
        // A jail root whose slot directory is already gone still holds its number.
        if let Ok(entries) = std::fs::read_dir(layout.jails_dir()) {
            slots.extend(
                entries
                    .flatten()
                    .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u64>().ok())),
            );
            slots.sort_unstable();
            slots.dedup();
        }
        Ok(Leftover {
            slots,
            processes: procfs::vmm_processes_under(layout.slots_dir()),
            adopted: HashSet::new(),
        })
    }

    /// The highest slot number in use by anything left.
    pub fn max_slot(&self) -> u64 {
        self.slots
            .iter()
            .copied()
            .chain(self.processes.iter().map(|p| p.slot))
            .max()
            .unwrap_or(0)
    }
}

/// Why a recorded VM could not be taken back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdoptError {
    /// The provider is not detached, or the record belongs to another root.
    #[error("VM {id} cannot be adopted here: {reason}")]
    Invalid {
        /// The VM.
        id: VmId,
        /// Why.
        reason: String,
    },
    /// Its VMM process is gone.
    #[error("VM {id}'s VMM is gone: {why}")]
    Gone {
        /// The VM.
        id: VmId,
        /// What became of it.
        why: String,
    },
    /// Its VMM is alive but does not answer its API.
    #[error("VM {id}'s VMM (pid {pid}) does not answer its API")]
    NotAnswering {
        /// The VM.
        id: VmId,
        /// The process.
        pid: u32,
        /// The client error.
        #[source]
        source: crate::client::ClientError,
    },
    /// A live VM already has the id.
    #[error("VM {0} already exists")]
    AlreadyExists(VmId),
}

/// What [`VmmProvider::sweep`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Pids of the VMM processes it killed.
    pub killed: Vec<u32>,
    /// Slot directories it removed.
    pub slots_removed: Vec<u64>,
    /// VM links it removed.
    pub links_removed: usize,
}

impl SweepReport {
    /// Whether nothing was left over.
    pub fn is_empty(&self) -> bool {
        self.killed.is_empty() && self.slots_removed.is_empty() && self.links_removed == 0
    }
}

impl VmmProvider {
    /// What to record about VM `id` so that a later provider can [adopt](Self::adopt) it, with
    /// `owner` (the provider does not know who owns a VM).
    pub fn vm_record(&self, id: &VmId, owner: VmOwner) -> Result<VmRecord, VmError> {
        let entry = self.inner.entry(id)?;
        let rec = entry.record().clone();
        if rec.destroyed || rec.id != *id {
            return Err(VmError::vm_not_found(id));
        }
        let paths = entry.process.paths();
        Ok(VmRecord {
            id: rec.id,
            owner,
            status: rec.status,
            stack: rec.stack,
            restored_from: rec.restored_from,
            created_at: rec.created_at,
            snapshots: rec.snapshots,
            vcpu_count: rec.vcpu_count,
            mem_size_mib: rec.mem_size_mib,
            vsock_cid: rec.vsock_cid,
            network_interfaces: rec.network_interfaces,
            disks: rec.disks,
            process: VmProcess {
                identity: entry.process.identity().clone(),
                slot: paths.slot,
                dir: paths.dir.clone(),
                api_socket: paths.api_sock.clone(),
                vsock_socket: paths.vsock.clone(),
            },
        })
    }

    /// Takes the VM `record` describes back under this provider: its process must be the same
    /// one (pid, start time, boot) and answer `GET /`; its status is what the VMM says now.
    /// Only for detached providers, before [`sweep`](Self::sweep).
    pub fn adopt(&self, record: &VmRecord) -> Result<VmView, AdoptError> {
        let inner = &self.inner;
        let id = record.id.clone();
        let invalid = |reason: String| AdoptError::Invalid {
            id: id.clone(),
            reason,
        };
        if !inner.config.detached {
            return Err(invalid("the provider is not detached".into()));
        }
        record.validate().map_err(|e| invalid(e.to_string()))?;
        let slot = record.process.slot;
        let paths = inner.layout.slot(slot);
        if paths.api_sock != record.process.api_socket || paths.vsock != record.process.vsock_socket
        {
            return Err(invalid(format!(
                "its sockets ({}) are not under this provider's root {}",
                record.process.api_socket.display(),
                inner.layout.root().display()
            )));
        }
        if slot > inner.leftovers().max_slot() || inner.leftovers().adopted.contains(&slot) {
            return Err(invalid(format!(
                "slot {slot} was not left by an earlier provider, or is adopted already"
            )));
        }
        let process =
            VmmProcess::adopt(&record.process.identity, &paths).map_err(|e| AdoptError::Gone {
                id: id.clone(),
                why: e.to_string(),
            })?;
        let mut client = FirecrackerClient::new(&paths.api_sock, inner.config.timeouts.client);
        let info = client
            .connect()
            .and_then(|()| client.describe_instance())
            .map_err(|source| AdoptError::NotAnswering {
                id: id.clone(),
                pid: process.pid(),
                source,
            })?;
        let status = match info.state {
            InstanceState::Running => VmStatus::Running,
            InstanceState::Paused => VmStatus::Paused,
            InstanceState::NotStarted => VmStatus::Created,
        };
        // The link may be missing or carry another name (a rename cut short by a crash).
        let _ = inner.layout.unlink_vm(&id);
        if let Err(e) = inner.layout.link_vm(&id, slot) {
            return Err(invalid(format!("cannot link it: {e}")));
        }
        let process = Arc::new(process);
        let entry = Arc::new(VmEntry::new(
            Arc::clone(&process),
            client,
            Entry {
                id: id.clone(),
                status,
                stack: record.stack.clone(),
                restored_from: record.restored_from.clone(),
                created_at: record.created_at,
                snapshots: record.snapshots.clone(),
                destroyed: false,
                vcpu_count: record.vcpu_count,
                mem_size_mib: record.mem_size_mib,
                vsock_cid: record.vsock_cid,
                network_interfaces: record.network_interfaces.clone(),
                disks: record.disks.clone(),
                exit: None,
            },
        ));
        {
            let mut table = inner.table();
            if table.vms.contains_key(&id) || table.reserved.contains(&id) {
                return Err(AdoptError::AlreadyExists(id));
            }
            table.vms.insert(id.clone(), Arc::clone(&entry));
            table.by_slot.insert(slot, Arc::clone(&entry));
        }
        inner.leftovers().adopted.insert(slot);
        if let Some(jail) = &inner.jail {
            jail.note_pid(slot, process.pid());
        }
        if let Err(e) = inner.supervisor.watch(Arc::clone(&process)) {
            tracing::error!(vm = %id, error = %e, "cannot watch an adopted VMM");
        }
        tracing::info!(vm = %id, pid = process.pid(), slot, %status, "adopted VM");
        let view = entry.record().view();
        Ok(view)
    }

    /// Kills every VMM process and removes every slot and link an earlier provider left that
    /// [`adopt`](Self::adopt) did not take back. Call it once, after adopting what was recorded.
    pub fn sweep(&self) -> SweepReport {
        let inner = &self.inner;
        let mut report = SweepReport::default();
        let (slots, processes, adopted) = {
            let l = inner.leftovers();
            (l.slots.clone(), l.processes.clone(), l.adopted.clone())
        };
        for p in processes.iter().filter(|p| !adopted.contains(&p.slot)) {
            match kill_found(p) {
                Ok(true) => report.killed.push(p.identity.pid),
                Ok(false) => {}
                Err(e) => tracing::error!(pid = p.identity.pid, error = %e,
                    "cannot kill a VMM left by an earlier provider"),
            }
        }
        for slot in slots.iter().filter(|s| !adopted.contains(s)) {
            match inner.layout.remove_slot(*slot) {
                Ok(()) => report.slots_removed.push(*slot),
                Err(e) => tracing::error!(slot, error = %e, "cannot remove a leftover slot"),
            }
        }
        if let Some(jail) = &inner.jail {
            // Jail roots and cgroups of slots nobody adopted (a slot directory may be gone
            // while its jail root is not, after a crash between the two removals).
            let first_spare = inner.leftovers().max_slot() + 1;
            let stale = |s: &u64| *s < first_spare && !adopted.contains(s);
            if let Ok(entries) = std::fs::read_dir(inner.layout.jails_dir()) {
                for n in entries
                    .flatten()
                    .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u64>().ok()))
                    .filter(stale)
                {
                    if let Err(e) = crate::jail::remove_jail_dir(&jail.root_of(n)) {
                        tracing::error!(slot = n, error = %e, "cannot remove a leftover jail root");
                    }
                }
            }
            for n in jail.cgroup_slots().into_iter().filter(stale) {
                jail.remove_cgroup(n);
            }
        }
        if let Some(hook) = &inner.config.networks {
            let first_spare = inner.leftovers().max_slot() + 1;
            for n in hook.0.slots() {
                if n < first_spare && !adopted.contains(&n) {
                    hook.0.release(n);
                }
            }
        }
        let table = inner.table_read();
        match inner.layout.vm_links() {
            Ok(links) => {
                for (path, slot) in links {
                    let keep = slot
                        .and_then(|s| table.by_slot.get(&s))
                        .is_some_and(|e| path.file_name() == Some(e.record().id.as_str().as_ref()));
                    if keep {
                        continue;
                    }
                    // A link to a slot of this provider's own spares never exists (spares have
                    // no id yet), so anything else is a leftover.
                    if let Err(e) = inner.layout.remove_vm_entry(&path) {
                        tracing::error!(path = %path.display(), error = %e, "cannot remove a leftover link");
                    } else {
                        report.links_removed += 1;
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot list the VM links"),
        }
        drop(table);
        if !report.is_empty() {
            tracing::warn!(killed = ?report.killed, slots = ?report.slots_removed,
                links = report.links_removed, "removed what an earlier provider left and nobody recorded");
        }
        report
    }

    /// Adds (or replaces) a snapshot in the catalog, after checking its entry and that its files
    /// exist.
    ///
    /// Jailed, the files become readable by jailed VMMs (`root:<gid>`, 0640): a snapshot taken
    /// before jailing was turned on is restorable too.
    pub fn register_snapshot(&self, info: SnapshotInfo) -> Result<(), VmError> {
        if let Some(jail) = &self.inner.jail {
            for path in [&info.state_path, &info.mem_path] {
                if let Err(e) = jail.share_read_only(path) {
                    tracing::warn!(path = %path.display(), error = %e,
                        "cannot make a snapshot file readable by jailed VMMs");
                }
            }
        }
        self.inner.snapshots.register(info)
    }

    /// The catalog entry of snapshot `id` (to record it, e.g. right after `snapshot`).
    pub fn snapshot_info(&self, id: &SnapshotId) -> Result<SnapshotInfo, VmError> {
        self.inner
            .snapshots
            .get(id)
            .ok_or_else(|| VmError::NotFound {
                kind: ResourceKind::Snapshot,
                id: id.to_string(),
            })
    }

    /// Directories in the snapshots directory that no catalog entry owns (a snapshot a crash
    /// interrupted): for the caller to remove once the catalog is complete.
    pub fn unknown_snapshot_dirs(&self) -> std::io::Result<Vec<std::path::PathBuf>> {
        self.inner.snapshots.unknown_dirs()
    }

    /// Stops the provider's threads and spares and forgets its VMs without touching them: they
    /// keep running for the next provider to adopt. What `Drop` does for a detached provider.
    pub fn release(&self) {
        self.inner.release();
    }
}

/// Kills a process found in `/proc`, through a pidfd, if it is still that process. Returns
/// whether it was killed.
fn kill_found(p: &FoundVmm) -> std::io::Result<bool> {
    let Ok(pidfd) = crate::process::PidFd::open(p.identity.pid) else {
        return Ok(false);
    };
    if procfs::liveness(&p.identity).map_err(std::io::Error::other)? != procfs::Liveness::Alive {
        return Ok(false);
    }
    pidfd.send_signal(libc::SIGKILL)?;
    Ok(true)
}

impl Inner {
    pub(super) fn leftovers(&self) -> std::sync::MutexGuard<'_, Leftover> {
        // Only sets and lists are changed under this lock; a poisoned one is still consistent.
        self.leftovers.lock().unwrap_or_else(|p| p.into_inner())
    }
}
