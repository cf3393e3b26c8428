//! One VM's bookkeeping: its process, the lock that serializes calls on it (which owns its API
//! client), and its record (id, status, lineage), kept under a separate short lock so the
//! supervisor can mark the VM stopped while a call is in flight.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use ember_core::{SnapshotId, StackKey, VmId, VmStatus, VmView};

use crate::client::FirecrackerClient;
use crate::process::{ExitInfo, VmmProcess};

/// What the provider knows about a VM.
#[derive(Debug, Clone)]
pub(crate) struct VmRecord {
    pub id: VmId,
    pub status: VmStatus,
    pub stack: Option<StackKey>,
    pub restored_from: Option<SnapshotId>,
    pub created_at: SystemTime,
    pub snapshots: Vec<SnapshotId>,
    /// Set by destroy; every later call on the entry is `NotFound`.
    pub destroyed: bool,
    pub vcpu_count: u8,
    pub mem_size_mib: u32,
    pub vsock_cid: Option<u32>,
    pub network_interfaces: Vec<String>,
    /// Its disk files (recorded in its snapshots).
    pub disks: Vec<ember_core::DiskFile>,
    /// How the process ended, once it has.
    pub exit: Option<ExitInfo>,
}

impl VmRecord {
    pub fn view(&self) -> VmView {
        VmView {
            id: self.id.clone(),
            status: self.status,
            stack: self.stack.clone(),
            restored_from: self.restored_from.clone(),
            created_at: self.created_at,
            snapshots: self.snapshots.clone(),
        }
    }
}

/// A VM: process, operation lock (with the client), record.
#[derive(Debug)]
pub(crate) struct VmEntry {
    pub process: Arc<VmmProcess>,
    client: Mutex<FirecrackerClient>,
    record: Mutex<VmRecord>,
}

impl VmEntry {
    pub fn new(process: Arc<VmmProcess>, client: FirecrackerClient, record: VmRecord) -> Self {
        Self {
            process,
            client: Mutex::new(client),
            record: Mutex::new(record),
        }
    }

    /// The operation lock: held across API calls on this VM, never while waiting for the
    /// table lock or another VM.
    pub fn client(&self) -> MutexGuard<'_, FirecrackerClient> {
        // A panic mid-call leaves at worst a half-used connection, which the client drops on
        // its next error; keep going.
        self.client.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The record lock: short critical sections only.
    pub fn record(&self) -> MutexGuard<'_, VmRecord> {
        self.record.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn slot(&self) -> u64 {
        self.process.slot()
    }
}
