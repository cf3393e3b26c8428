//! The in-memory index of live sandboxes ([`LiveSandboxes`]): for each running or paused
//! sandbox, what the hot paths need without a store read — its state, its environment, its
//! deadline — plus its idle agent connections and the lock that orders its lifecycle changes.
//!
//! The store stays the truth: every change here follows a committed store write, and recovery
//! rebuilds the index from the store at start.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use ember_agent_proto::AgentClient;
use ember_core::{Sandbox, SandboxId, SandboxState, SnapshotId};

/// Most idle agent connections kept per sandbox (more concurrent calls open more, and the
/// extra ones are closed when they finish).
pub const MAX_IDLE_AGENTS: usize = 4;

/// One live sandbox's host-side state.
pub struct Live {
    /// Running or paused (a copy of the store's state).
    state: Mutex<SandboxState>,
    /// When it is killed (a copy of the store's `deadline`).
    deadline: Mutex<Option<SystemTime>>,
    /// While paused to disk: the snapshot it resumes from (it has no VM meanwhile).
    saved: Mutex<Option<SnapshotId>>,
    /// Environment every command gets.
    pub env: BTreeMap<String, String>,
    /// The token clients present to reach its own endpoints (envd), if it has one.
    pub access_token: Option<String>,
    /// Idle agent connections: a call takes one (or opens one) and puts it back.
    agents: Mutex<Vec<AgentClient>>,
    /// Held across a lifecycle change (pause, resume, kill, timeout) so they do not interleave.
    lifecycle: Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain values and vectors: a panicked holder leaves them consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Live {
    /// The live state of `sandbox` as recorded, with `agent` (a connection already open) kept
    /// without its buffers, as [`put_agent`](Self::put_agent) keeps one.
    pub fn new(sandbox: &Sandbox, agent: Option<AgentClient>) -> Self {
        let agent = agent.filter(|a| a.poisoned().is_none()).map(|mut a| {
            a.release_buffers();
            a
        });
        Self {
            state: Mutex::new(sandbox.state),
            deadline: Mutex::new(sandbox.deadline),
            saved: Mutex::new(sandbox.saved.clone()),
            env: sandbox.env.clone(),
            access_token: sandbox.access_token.clone(),
            agents: Mutex::new(agent.into_iter().collect()),
            lifecycle: Mutex::new(()),
        }
    }

    /// Running or paused.
    pub fn state(&self) -> SandboxState {
        *lock(&self.state)
    }

    /// Records a new state (after the store has it).
    pub fn set_state(&self, state: SandboxState) {
        *lock(&self.state) = state;
    }

    /// When it will be killed.
    pub fn deadline(&self) -> Option<SystemTime> {
        *lock(&self.deadline)
    }

    /// Records a new deadline (after the store has it).
    pub fn set_deadline(&self, deadline: Option<SystemTime>) {
        *lock(&self.deadline) = deadline;
    }

    /// The snapshot it resumes from, while paused to disk.
    pub fn saved(&self) -> Option<SnapshotId> {
        lock(&self.saved).clone()
    }

    /// Records that it was saved to disk or restored (after the store has it).
    pub fn set_saved(&self, saved: Option<SnapshotId>) {
        *lock(&self.saved) = saved;
    }

    /// An idle agent connection, if one is kept.
    pub fn take_agent(&self) -> Option<AgentClient> {
        lock(&self.agents).pop()
    }

    /// Keeps a connection that is still good for the next call (without its buffers: an idle
    /// sandbox should cost the daemon next to nothing).
    pub fn put_agent(&self, mut agent: AgentClient) {
        if agent.poisoned().is_some() {
            return;
        }
        agent.release_buffers();
        let mut agents = lock(&self.agents);
        if agents.len() < MAX_IDLE_AGENTS {
            agents.push(agent);
        }
    }

    /// Closes every kept connection.
    pub fn drop_agents(&self) {
        lock(&self.agents).clear();
    }

    /// Orders lifecycle changes of this sandbox.
    pub fn lifecycle(&self) -> MutexGuard<'_, ()> {
        lock(&self.lifecycle)
    }
}

/// Every live sandbox by id.
#[derive(Default)]
pub struct LiveSandboxes {
    map: Mutex<HashMap<SandboxId, Arc<Live>>>,
}

impl LiveSandboxes {
    /// Sandbox `id`'s live state, if it runs or is paused.
    pub fn get(&self, id: &SandboxId) -> Option<Arc<Live>> {
        lock(&self.map).get(id).cloned()
    }

    /// Adds (or replaces) a live sandbox.
    pub fn insert(&self, id: SandboxId, live: Arc<Live>) {
        lock(&self.map).insert(id, live);
    }

    /// Removes a sandbox; returns its state if it was live.
    pub fn remove(&self, id: &SandboxId) -> Option<Arc<Live>> {
        lock(&self.map).remove(id)
    }

    /// How many sandboxes run or are paused.
    pub fn count(&self) -> usize {
        lock(&self.map).len()
    }

    /// How many have a VM (running or paused in memory); sandboxes paused to disk hold none.
    pub fn with_vm(&self) -> usize {
        lock(&self.map)
            .values()
            .filter(|l| l.saved().is_none())
            .count()
    }

    /// How many are in each state (running, paused).
    pub fn by_state(&self) -> (usize, usize) {
        let map = lock(&self.map);
        let paused = map
            .values()
            .filter(|l| l.state() == SandboxState::Paused)
            .count();
        (map.len() - paused, paused)
    }

    /// Sandboxes whose deadline is at or before `now`.
    pub fn expired(&self, now: SystemTime) -> Vec<SandboxId> {
        lock(&self.map)
            .iter()
            .filter(|(_, l)| l.deadline().is_some_and(|d| d <= now))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Forgets every sandbox (the daemon is leaving; their VMs keep running).
    pub fn clear(&self) {
        lock(&self.map).clear();
    }
}
