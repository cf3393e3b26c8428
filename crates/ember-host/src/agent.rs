//! The guest agent seen from the host: the warm pool's validator ([`AgentValidator`]) and the
//! connection a tenant (or a benchmark) opens to its VM's agent.
//!
//! Validation by phase: after a restore the guest runs, so its agent must answer Health within a
//! timeout; on acquire the entry is paused, so only the host side is checked (the provider has
//! not seen its VMM die); at handover the VM runs under the tenant's id and is sent Reseed —
//! fresh entropy, the wall clock and a new generation — so clones of one snapshot never share
//! randomness or a stale clock. The Reseed goes out ahead on the connection the tenant gets
//! ([`AgentValidator::take_connection`]): the guest handles it before anything the tenant
//! sends, and its answer is checked before the tenant's first reply is handed on (a guest that
//! did not reseed fails that call and poisons the connection). Handover and first request then
//! share one guest wake-up, which under a burst of handoffs is most of the cost.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ember_agent_proto::{AgentClient, ClientError};
use ember_core::{VmId, VmQuery, VmStatus, VmView};
use ember_pool::{EntryValidator, EvictionCause, Phase, ValidationResult};
use ember_runtime::VmmProvider;

/// Connects to the agent of VM `id` on `port` through its hybrid vsock socket.
pub fn connect(
    provider: &VmmProvider,
    id: &VmId,
    port: u32,
    timeout: Duration,
) -> Result<AgentClient, AgentError> {
    let path = provider
        .vsock_path(id)
        .map_err(|e| AgentError::NoSocket(e.to_string()))?;
    connect_path(&path, port, timeout)
}

/// Connects to the agent of VM `id`, just restored, trying again until `timeout` has passed: a
/// Linux guest resets its vsock transport when it is restored, and a connection that arrives
/// while it does is refused (the VMM closes it after `CONNECT`) — more likely the busier the
/// host. Each attempt may take up to a second; the connection returned waits `call_timeout`
/// for each later reply.
pub fn connect_restored(
    provider: &VmmProvider,
    id: &VmId,
    port: u32,
    timeout: Duration,
    call_timeout: Duration,
) -> Result<AgentClient, AgentError> {
    let deadline = std::time::Instant::now() + timeout;
    let mut pause = Duration::from_millis(2);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match connect(provider, id, port, left.min(Duration::from_secs(1))) {
            Ok(mut agent) => {
                agent.set_call_timeout(call_timeout);
                return Ok(agent);
            }
            Err(e @ AgentError::NoSocket(_)) => return Err(e),
            Err(e) if std::time::Instant::now() >= deadline => return Err(e),
            Err(e) => {
                tracing::debug!(vm = %id, error = %e, "the restored guest's agent refused; trying again");
                std::thread::sleep(pause.min(left));
                pause = (pause * 2).min(Duration::from_millis(100));
            }
        }
    }
}

/// Connects to an agent through the hybrid vsock socket at `path`.
pub fn connect_path(path: &Path, port: u32, timeout: Duration) -> Result<AgentClient, AgentError> {
    AgentClient::connect(path, port, timeout).map_err(AgentError::Client)
}

/// Why the agent could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The provider has no vsock socket for the VM.
    #[error("the VM has no vsock socket: {0}")]
    NoSocket(String),
    /// Connecting or calling failed.
    #[error("agent call failed")]
    Client(#[source] ClientError),
}

impl AgentError {
    /// A short, stable category for metrics (`validation_failures{reason=...}`).
    pub fn category(&self) -> &'static str {
        match self {
            AgentError::NoSocket(_) => "no vsock socket",
            AgentError::Client(e) if e.is_timeout() => "agent timeout",
            AgentError::Client(_) => "agent error",
        }
    }
}

/// The warm pool's validator over the guest agent.
///
/// The connection that reseeded a VM at handover is kept for its tenant
/// ([`take_connection`](Self::take_connection)), so the tenant's first call does not pay for a
/// second vsock handshake and Hello, and carries the check of the Reseed's answer.
pub struct AgentValidator {
    provider: Arc<VmmProvider>,
    port: u32,
    timeout: Duration,
    generation: AtomicU64,
    /// Pooled VMs' agent connections from their Health check, by provider slot (stable across
    /// the rename at handover). A paused VM keeps its vsock connections.
    pooled: Mutex<Kept>,
    /// Handed-over VMs' connections, waiting for their tenant.
    handed_over: Mutex<HashMap<VmId, AgentClient>>,
}

/// Pooled VMs' kept connections, and the slots whose Health check is under way: a check of an
/// adopted entry runs while the entry can be handed over, and a connection whose VM was handed
/// over meanwhile is not kept (it would never be taken, nor dropped).
struct Kept<C = AgentClient> {
    conns: HashMap<u64, C>,
    checking: HashSet<u64>,
}

impl<C> Default for Kept<C> {
    fn default() -> Self {
        Self {
            conns: HashMap::new(),
            checking: HashSet::new(),
        }
    }
}

impl<C> Kept<C> {
    /// A check of `slot` starts.
    fn start_check(&mut self, slot: u64) {
        self.checking.insert(slot);
    }

    /// The check of `slot` ended: keeps its connection if it passed and nobody took the slot
    /// meanwhile.
    fn end_check(&mut self, slot: u64, passed: Option<C>) {
        let still_pooled = self.checking.remove(&slot);
        if let Some(conn) = passed.filter(|_| still_pooled) {
            self.conns.insert(slot, conn);
        }
    }

    /// Forgets `slot`'s connection and any check of it under way; returns the connection.
    fn take(&mut self, slot: u64) -> Option<C> {
        self.checking.remove(&slot);
        self.conns.remove(&slot)
    }
}

impl AgentValidator {
    /// A validator reaching agents on `port`, each call bounded by `timeout`.
    pub fn new(provider: Arc<VmmProvider>, port: u32, timeout: Duration) -> Self {
        Self {
            provider,
            port,
            timeout,
            generation: AtomicU64::new(1),
            pooled: Mutex::new(Kept::default()),
            handed_over: Mutex::new(HashMap::new()),
        }
    }

    /// The agent connection that reseeded `vm` at handover, if the caller has not taken it yet.
    /// Its first call (or [`AgentClient::finish_pending`]) checks the Reseed's answer.
    pub fn take_connection(&self, vm: &VmId) -> Option<AgentClient> {
        lock(&self.handed_over).remove(vm)
    }

    /// Drops a kept connection (the VM is gone).
    pub fn forget(&self, vm: &VmId) {
        drop(self.take_connection(vm));
    }

    /// Health over a new connection, kept for the VM's handover unless the VM was handed over
    /// (or evicted) while the check ran.
    fn health(&self, vm: &VmId) -> Result<(), AgentError> {
        let slot = self.provider.slot(vm).ok();
        if let Some(slot) = slot {
            lock(&self.pooled).start_check(slot);
        }
        let checked = connect(&self.provider, vm, self.port, self.timeout).and_then(|mut agent| {
            agent.health().map_err(AgentError::Client)?;
            Ok(agent)
        });
        match (slot, checked) {
            (Some(slot), Ok(agent)) => lock(&self.pooled).end_check(slot, Some(agent)),
            (Some(slot), Err(e)) => {
                lock(&self.pooled).end_check(slot, None);
                return Err(e);
            }
            (None, checked) => return checked.map(drop),
        }
        Ok(())
    }

    fn reseed(&self, vm: &VmId) -> Result<(), AgentError> {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        let kept = self
            .provider
            .slot(vm)
            .ok()
            .and_then(|slot| lock(&self.pooled).take(slot));
        // The connection kept since the Health check, if it still works; else a new one.
        let had = kept.is_some();
        let reused =
            kept.and_then(|mut agent| agent.send_reseed_fresh(generation).ok().map(|_| agent));
        tracing::debug!(%vm, kept = had, reused = reused.is_some(), "reseed at handover");
        let agent = match reused {
            Some(agent) => agent,
            None => {
                let mut agent = connect(&self.provider, vm, self.port, self.timeout)?;
                agent
                    .send_reseed_fresh(generation)
                    .map_err(AgentError::Client)?;
                agent
            }
        };
        // Kept for the tenant: its first call then needs no new handshake.
        lock(&self.handed_over).insert(vm.clone(), agent);
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Only inserts and removes happen under these locks; a poisoned one is still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn verdict(what: &str, vm: &VmId, r: Result<(), AgentError>) -> ValidationResult {
    match r {
        Ok(()) => ValidationResult::Healthy,
        Err(e) => {
            tracing::debug!(%vm, error = %ember_core::error_chain(&e), "{what} failed");
            ValidationResult::Unhealthy(e.category().to_string())
        }
    }
}

impl EntryValidator for AgentValidator {
    fn validate(&self, vm: &VmView, phase: Phase) -> ValidationResult {
        match phase {
            // An adopted VM is checked like a fresh one, and its connection kept the same way:
            // its handover then costs what any handover costs.
            Phase::AfterSpawn | Phase::Adopted if vm.status == VmStatus::Running => {
                verdict("agent health", &vm.id, self.health(&vm.id))
            }
            // A paused VM cannot answer yet; its handover will prove it.
            Phase::AfterSpawn | Phase::Adopted => ValidationResult::Healthy,
            Phase::OnAcquire => match self.provider.get(&vm.id) {
                Ok(v) if matches!(v.status, VmStatus::Running | VmStatus::Paused) => {
                    ValidationResult::Healthy
                }
                Ok(v) => ValidationResult::Unhealthy(format!("vm {}", v.status)),
                Err(_) => ValidationResult::Unhealthy("vm gone".into()),
            },
            Phase::Handover => verdict("agent reseed", &vm.id, self.reseed(&vm.id)),
        }
    }

    fn evicted(&self, vm: &VmId, _cause: EvictionCause) {
        if let Ok(slot) = self.provider.slot(vm) {
            lock(&self.pooled).take(slot);
        }
        lock(&self.handed_over).remove(vm);
    }
}

#[cfg(test)]
mod tests {
    use super::Kept;

    #[test]
    fn a_checked_connection_is_kept_until_its_handover_takes_it() {
        let mut k = Kept::<&str>::default();
        k.start_check(7);
        k.end_check(7, Some("conn"));
        assert_eq!(k.take(7), Some("conn"));
        assert_eq!(k.take(7), None);
    }

    #[test]
    fn a_check_that_outlives_its_handover_keeps_nothing() {
        let mut k = Kept::<&str>::default();
        k.start_check(7);
        // Handed over (or evicted) while its check ran.
        assert_eq!(k.take(7), None);
        k.end_check(7, Some("conn"));
        assert!(k.conns.is_empty() && k.checking.is_empty());
    }

    #[test]
    fn a_failed_check_keeps_nothing() {
        let mut k = Kept::<&str>::default();
        k.start_check(3);
        k.end_check(3, None);
        assert!(k.conns.is_empty() && k.checking.is_empty());
    }
}
