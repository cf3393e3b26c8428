//! Restart recovery: which machines a supervisor must look at after a restart
//! ([`RecoveryReport`], taken when the store is opened), everything it needs to find their VMM
//! processes and host resources ([`RecoveryEntry`]), and the suggested mapping from
//! (last stored state, process liveness) to an action and the state to store afterwards
//! ([`plan`]).
//!
//! The seed's rule is kept: a machine last stored as running or starting needs recovery. ember adds
//! `Paused` (a paused VMM process is alive) and `Stopping` (the stop may not have finished). Unlike
//! the seed, VMM processes survive the daemon, so "needs recovery" does not mean "stopped": the
//! process may be re-adopted. This module decides nothing by itself and never touches a process or
//! a file; the daemon acts on the plan.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use ember_core::{StackKey, VmId};
use serde::{Deserialize, Serialize};

use crate::machine::{MachineRecord, MachineState};
use crate::names::MachineName;
use crate::network::NetworkAllocation;
use crate::process::{Liveness, ProcError, ProcessIdentity};

/// The machines that need recovery, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryReport {
    /// One entry per machine last stored in a state that [needs recovery](MachineState::needs_recovery).
    pub machines: Vec<RecoveryEntry>,
}

impl RecoveryReport {
    /// The report for `records` (those that need no recovery are skipped).
    pub fn from_records<'a>(records: impl IntoIterator<Item = &'a MachineRecord>) -> Self {
        Self {
            machines: records
                .into_iter()
                .filter_map(RecoveryEntry::from_record)
                .collect(),
        }
    }

    /// Whether no machine needs recovery.
    pub fn is_empty(&self) -> bool {
        self.machines.is_empty()
    }

    /// How many machines need recovery.
    pub fn len(&self) -> usize {
        self.machines.len()
    }
}

/// Everything a supervisor needs to re-adopt or clean up one machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryEntry {
    /// The machine.
    pub name: MachineName,
    /// Its VM id at the provider.
    pub vm_id: VmId,
    /// The state it was last stored in.
    pub last_state: MachineState,
    /// Its VMM process (pid, start time, boot id), if one was recorded.
    pub vmm: Option<ProcessIdentity>,
    /// The VMM's API socket, to reconnect to it.
    pub api_socket: Option<PathBuf>,
    /// The vsock device's host socket.
    pub vsock_uds: Option<PathBuf>,
    /// The VMM's console log.
    pub console_log: Option<PathBuf>,
    /// The machine's runtime directory.
    pub run_dir: Option<PathBuf>,
    /// Its network allocation: TAP device, IP, MAC, vsock CID.
    pub network: Option<NetworkAllocation>,
    /// The tenant it was handed to, if any.
    pub tenant: Option<String>,
    /// Its stack, if any.
    pub stack: Option<StackKey>,
    /// The record's revision when the report was taken, to detect concurrent changes.
    pub revision: u64,
    /// When the record was last written.
    #[serde(with = "ember_core::view::unix_millis")]
    pub updated_at: SystemTime,
}

impl RecoveryEntry {
    /// The entry for `record`, or `None` if its state needs no recovery.
    pub fn from_record(record: &MachineRecord) -> Option<Self> {
        let m = &record.machine;
        m.state.needs_recovery().then(|| Self {
            name: record.name.clone(),
            vm_id: m.vm_id.clone(),
            last_state: m.state,
            vmm: m.vmm.clone(),
            api_socket: m.api_socket.clone(),
            vsock_uds: m.vsock_uds.clone(),
            console_log: m.console_log.clone(),
            run_dir: m.run_dir.clone(),
            network: record.network.clone(),
            tenant: m.tenant.clone(),
            stack: m.stack.clone(),
            revision: record.revision,
            updated_at: record.updated_at,
        })
    }

    /// The TAP device to delete on cleanup (or to keep on re-adoption).
    pub fn tap(&self) -> Option<&str> {
        self.network.as_ref().map(|n| n.tap.as_str())
    }

    /// The guest's vsock CID.
    pub fn vsock_cid(&self) -> Option<u32> {
        self.network.as_ref().map(|n| n.vsock_cid)
    }

    /// The host files the VMM process created for itself (sockets, console log, run directory),
    /// which a cleanup removes.
    pub fn runtime_files(&self) -> Vec<&Path> {
        [
            &self.api_socket,
            &self.vsock_uds,
            &self.console_log,
            &self.run_dir,
        ]
        .into_iter()
        .filter_map(|p| p.as_deref())
        .collect()
    }

    /// Whether the recorded VMM process is still that process; `None` if none was recorded.
    pub fn liveness(&self) -> Result<Option<Liveness>, ProcError> {
        self.vmm.as_ref().map(ProcessIdentity::check).transpose()
    }

    /// The suggested plan for this entry given its process's liveness (see [`plan`]).
    pub fn plan(&self, liveness: Option<&Liveness>) -> RecoveryPlan {
        plan(self.last_state, liveness)
    }
}

/// What a supervisor should do with a machine after a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecoveryAction {
    /// Nothing: the machine was not running (`Created` or `Stopped`).
    Nothing,
    /// The very VMM process is alive and was serving the guest: reconnect to its API socket and
    /// keep it (its network allocation and files stay).
    Readopt,
    /// The process is alive but was being started or stopped, so its state is unknown: kill it,
    /// then clean up as for [`RecoveryAction::CleanUp`].
    Terminate,
    /// The process is gone (exited, zombie, pid reused, host rebooted, or never recorded): remove
    /// its sockets, console log and run directory, delete its TAP device, and store it stopped.
    CleanUp,
}

/// A [`RecoveryAction`] and the state to store once it is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RecoveryPlan {
    /// What to do.
    pub action: RecoveryAction,
    /// The state to store afterwards.
    pub state_after: MachineState,
}

/// The suggested mapping from the last stored state and the process's liveness (`None`: no
/// process was recorded) to a plan. The daemon owns the decision; this is the tested default.
///
/// | last state           | process alive          | gone / unknown        |
/// |----------------------|------------------------|-----------------------|
/// | created, stopped     | nothing, unchanged     | nothing, unchanged    |
/// | running              | readopt, running       | clean up, stopped     |
/// | paused               | readopt, paused        | clean up, stopped     |
/// | starting, stopping   | terminate, stopped     | clean up, stopped     |
pub fn plan(last_state: MachineState, liveness: Option<&Liveness>) -> RecoveryPlan {
    use MachineState::*;
    let alive = liveness.is_some_and(Liveness::is_alive);
    let (action, state_after) = match (last_state, alive) {
        (Created | Stopped, _) => (RecoveryAction::Nothing, last_state),
        (Running | Paused, true) => (RecoveryAction::Readopt, last_state),
        (Starting | Stopping, true) => (RecoveryAction::Terminate, Stopped),
        (Starting | Running | Paused | Stopping, false) => (RecoveryAction::CleanUp, Stopped),
    };
    RecoveryPlan {
        action,
        state_after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RecoveryAction::*;

    #[test]
    fn the_mapping_table() {
        let alive = Liveness::Alive;
        let gone = [
            Liveness::Exited,
            Liveness::Zombie,
            Liveness::PidReused { start_time: 1 },
            Liveness::Rebooted,
        ];
        let cases = [
            (
                MachineState::Created,
                (Nothing, MachineState::Created),
                (Nothing, MachineState::Created),
            ),
            (
                MachineState::Stopped,
                (Nothing, MachineState::Stopped),
                (Nothing, MachineState::Stopped),
            ),
            (
                MachineState::Running,
                (Readopt, MachineState::Running),
                (CleanUp, MachineState::Stopped),
            ),
            (
                MachineState::Paused,
                (Readopt, MachineState::Paused),
                (CleanUp, MachineState::Stopped),
            ),
            (
                MachineState::Starting,
                (Terminate, MachineState::Stopped),
                (CleanUp, MachineState::Stopped),
            ),
            (
                MachineState::Stopping,
                (Terminate, MachineState::Stopped),
                (CleanUp, MachineState::Stopped),
            ),
        ];
        assert_eq!(cases.len(), MachineState::ALL.len());
        for (state, when_alive, when_gone) in cases {
            let p = plan(state, Some(&alive));
            assert_eq!((p.action, p.state_after), when_alive, "{state} alive");
            for g in &gone {
                let p = plan(state, Some(g));
                assert_eq!((p.action, p.state_after), when_gone, "{state} {g:?}");
            }
            let p = plan(state, None);
            assert_eq!(
                (p.action, p.state_after),
                when_gone,
                "{state} without a process"
            );
            // Exactly the states that need recovery get an action.
            assert_eq!(p.action != Nothing, state.needs_recovery(), "{state}");
        }
    }
}
