//! Snapshots of VMs and their verification: `snapshot` writes the VMM's state and memory files
//! into the store's directory for the new snapshot and records its metadata; `verify` checks
//! the files cheaply and then restores the snapshot, paused, on a spare process that is thrown
//! away (the one check that catches every snapshot the VMM would refuse).

use std::path::Path;

use ember_core::{Operation, SnapshotRef, SnapshotRequest, VmError, VmId, VmStatus};
use ember_fc_api::{SnapshotCreateParams, SnapshotType};

use super::Inner;
use super::create::load_params;
use crate::client::FirecrackerClient;
use crate::error::RuntimeError;
use crate::snapshots;
use crate::spares::{Spare, discard};

impl Inner {
    fn vmm_version(&self, client: &mut FirecrackerClient) -> String {
        if let Some(v) = self.vmm_version.get() {
            return v.clone();
        }
        match client.version() {
            Ok(v) => {
                let _ = self.vmm_version.set(v.firecracker_version.clone());
                v.firecracker_version
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the VMM version");
                "unknown".into()
            }
        }
    }

    pub(super) fn take_snapshot(
        &self,
        id: &VmId,
        request: &SnapshotRequest,
    ) -> Result<SnapshotRef, VmError> {
        self.locked(id, |entry, client| {
            let rec = entry.record().clone();
            if rec.status != VmStatus::Paused {
                return Err(VmError::InvalidState {
                    id: id.to_string(),
                    op: Operation::Snapshot,
                    status: rec.status,
                    required: VmStatus::Paused,
                });
            }
            let sid = &request.snapshot_id;
            let dir = self.snapshots.reserve(sid)?;
            let state_path = dir.join(snapshots::STATE_FILE);
            let mem_path = dir.join(snapshots::MEM_FILE);
            let fail = |e: RuntimeError| {
                self.snapshots.abort(sid);
                self.provider_err(Operation::Snapshot, id, e)
            };
            let slot = entry.process.slot();
            if let Some(jail) = &self.jail {
                // The VMM writes the files itself, into the new snapshot's directory lent to
                // it for the call; then they become root's, readable by every jailed VMM.
                let lent = jail
                    .lend_dir(slot, &dir)
                    .and_then(|()| jail.expose(slot, &dir, true))
                    .map_err(|source| RuntimeError::Files {
                        what: "cannot lend the snapshot directory to the VMM's jail",
                        path: dir.clone(),
                        source,
                    });
                if let Err(e) = lent {
                    return Err(fail(e));
                }
            }
            let created = client.create_snapshot(&SnapshotCreateParams {
                mem_file_path: mem_path.clone(),
                snapshot_path: state_path.clone(),
                snapshot_type: Some(SnapshotType::Full),
                version: None,
            });
            if let Some(jail) = &self.jail {
                let _ = jail.hide(slot, &dir);
                let shared = [&dir, &state_path, &mem_path]
                    .into_iter()
                    .filter(|p| p.exists())
                    .try_for_each(|p| jail.share_read_only(p));
                if let Err(source) = shared {
                    return Err(fail(RuntimeError::Files {
                        what: "cannot hand the snapshot's files back to root",
                        path: dir.clone(),
                        source,
                    }));
                }
            }
            if let Err(e) = created {
                return Err(fail(self.call_failed(&entry.process, e)));
            }
            let vmm_version = self.vmm_version(client);
            let files = |what, path: &Path| {
                let path = path.to_path_buf();
                move |source| RuntimeError::Files { what, path, source }
            };
            let (state_len, state_crc32) = snapshots::file_crc32(&state_path)
                .map_err(files("cannot read the new state file", &state_path))
                .map_err(fail)?;
            let mem_len = std::fs::metadata(&mem_path)
                .map_err(files("cannot stat the new memory file", &mem_path))
                .map_err(fail)?
                .len();
            let meta = ember_core::SnapshotInfo {
                snapshot_id: sid.clone(),
                stack: request.stack.clone().or_else(|| rec.stack.clone()),
                state_path: state_path.clone(),
                mem_path: mem_path.clone(),
                provider: self.name.to_string(),
                vmm_version,
                vcpu_count: rec.vcpu_count,
                mem_size_mib: rec.mem_size_mib,
                state_len,
                state_crc32,
                mem_len,
                vsock_cid: rec.vsock_cid,
                network_interfaces: rec.network_interfaces.clone(),
                disks: rec.disks.clone(),
                source_vm: Some(id.clone()),
                created_at: std::time::SystemTime::now(),
            };
            let stored = self
                .snapshots
                .commit(meta)
                .map_err(|source| RuntimeError::Files {
                    what: "cannot sync the snapshot's files in",
                    path: dir.clone(),
                    source,
                })
                .map_err(fail)?;
            entry.record().snapshots.push(sid.clone());
            tracing::info!(vm = %id, snapshot = %sid, state_len, mem_len, "snapshot taken");
            Ok(stored.to_ref())
        })
    }

    pub(super) fn verify(&self, snap: &SnapshotRef) -> Result<(), VmError> {
        snap.validate()?;
        let stored = self.snapshots.resolve(snap)?;
        snapshots::check_files(&stored, self.config.flavor.writes_ember_snapshots())?;
        if !self.config.trial_restore {
            return Ok(());
        }
        let sid = &stored.snapshot_id;
        let Spare {
            process,
            mut client,
            ..
        } = self.take_spare(Operation::Create, sid)?;
        let slot = process.slot();
        let result = self
            .expose(slot, &stored.state_path, false)
            .and_then(|()| self.expose(slot, &stored.mem_path, false))
            .and_then(|()| {
                stored
                    .disks
                    .iter()
                    .try_for_each(|d| self.expose(slot, &d.path, !d.read_only))
            })
            .and_then(|()| {
                client
                    .load_snapshot(&load_params(&stored, process.paths(), false, snap))
                    .map_err(RuntimeError::Api)
            });
        discard(&self.layout, &process);
        result.map_err(|e| {
            let e = match e {
                RuntimeError::Api(c) => self.call_failed(&process, c),
                other => other,
            };
            let source = Box::new(e);
            self.provider_err(
                Operation::Create,
                sid,
                RuntimeError::TrialRestore {
                    snapshot: sid.clone(),
                    source,
                },
            )
        })
    }
}
