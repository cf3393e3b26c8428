//! Background processes: started, listed, signalled, fed and watched while they run.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::process::pump::kill_group;

/// One background process.
#[derive(Debug)]
pub struct Proc {
    /// Its pid.
    pub pid: Pid,
}

/// Every background process the agent started.
#[derive(Debug, Default)]
pub struct Table {
    procs: Mutex<BTreeMap<u64, Arc<Proc>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Table {
    /// Kills every process group still running (at shutdown).
    pub fn kill_all(&self) {
        for proc in lock(&self.procs).values() {
            kill_group(proc.pid, Signal::SIGKILL);
        }
    }
}

impl Table {
    /// Drops every stream of connection `connection` (it closed).
    pub fn detach_connection(&self, _connection: u64) {}
}

/// Answers the process requests; `None` for any other request.
pub fn answer(
    _ctx: &crate::server::Ctx<'_>,
    _request: &ember_agent_proto::Request<'_>,
    _out: &mut [u8],
    _after: &mut Option<crate::server::After>,
) -> Result<Option<Result<usize, ember_agent_proto::EncodeError>>, crate::refusal::Refusal> {
    Ok(None)
}
