//! Deterministic fault injection for [`InMemoryVmProvider`](super::InMemoryVmProvider): which calls
//! of an operation fail, and how long each call takes.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::error::Operation;

/// The faults planned for one operation. Call numbers count from when the plan is installed,
/// starting at 1, so "fail the 3rd create" is `FaultPlan::fail_calls([3])`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultPlan {
    /// Call numbers (1-based) that fail.
    pub fail_calls: BTreeSet<u64>,
    /// Every call fails.
    pub fail_all: bool,
    /// Every call takes at least this long (slept outside any lock).
    pub delay: Duration,
    /// Every call blocks (outside any lock) until this gate is opened.
    pub hold: Option<Gate>,
}

impl FaultPlan {
    /// A plan that fails exactly the listed calls.
    pub fn fail_calls(calls: impl IntoIterator<Item = u64>) -> Self {
        Self {
            fail_calls: calls.into_iter().collect(),
            ..Self::default()
        }
    }

    /// A plan that fails every call.
    pub fn fail_all() -> Self {
        Self {
            fail_all: true,
            ..Self::default()
        }
    }

    /// A plan that holds every call until `gate` opens.
    pub fn hold(gate: Gate) -> Self {
        Self {
            hold: Some(gate),
            ..Self::default()
        }
    }

    /// A plan that makes every call slow.
    pub fn slow(delay: Duration) -> Self {
        Self {
            delay,
            ..Self::default()
        }
    }
}

/// A latch that held calls wait on until a test opens it: a deterministic "slow provider".
#[derive(Debug, Clone, Default)]
pub struct Gate {
    inner: Arc<(Mutex<GateState>, Condvar)>,
}

#[derive(Debug, Default)]
struct GateState {
    open: bool,
    waiting: usize,
}

impl PartialEq for Gate {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl Eq for Gate {}

impl Gate {
    /// A closed gate.
    pub fn new() -> Self {
        Self::default()
    }

    /// Lets every held call (and every later one) through.
    pub fn open(&self) {
        let (lock, cv) = &*self.inner;
        lock.lock().unwrap_or_else(|p| p.into_inner()).open = true;
        cv.notify_all();
    }

    /// How many calls are waiting at the gate right now.
    pub fn waiting(&self) -> usize {
        self.inner
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .waiting
    }

    /// Blocks until the gate is open.
    pub(super) fn pass(&self) {
        let (lock, cv) = &*self.inner;
        let mut st = lock.lock().unwrap_or_else(|p| p.into_inner());
        st.waiting += 1;
        while !st.open {
            st = cv.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        st.waiting -= 1;
    }
}

/// The error an injected failure surfaces as, inside `VmError::Provider`.
#[derive(Debug, thiserror::Error)]
#[error("injected fault: call {call} of {op}")]
pub struct InjectedFault {
    /// The operation that failed.
    pub op: Operation,
    /// Which call of it (1-based, since the plan was installed).
    pub call: u64,
}

/// Per-operation plans and call counters.
#[derive(Debug, Default)]
pub(super) struct Faults {
    plans: HashMap<Operation, (FaultPlan, u64)>,
    calls: HashMap<Operation, u64>,
}

/// What one call must suffer.
pub(super) struct Verdict {
    pub delay: Duration,
    pub hold: Option<Gate>,
    pub fail: Option<InjectedFault>,
}

impl Faults {
    pub(super) fn install(&mut self, op: Operation, plan: FaultPlan) {
        self.plans.insert(op, (plan, 0));
    }

    pub(super) fn clear(&mut self) {
        self.plans.clear();
    }

    pub(super) fn calls(&self, op: Operation) -> u64 {
        self.calls.get(&op).copied().unwrap_or(0)
    }

    /// Counts a call of `op` and decides its fate.
    pub(super) fn on_call(&mut self, op: Operation) -> Verdict {
        *self.calls.entry(op).or_insert(0) += 1;
        match self.plans.get_mut(&op) {
            None => Verdict {
                delay: Duration::ZERO,
                hold: None,
                fail: None,
            },
            Some((plan, count)) => {
                *count += 1;
                let fail = (plan.fail_all || plan.fail_calls.contains(count))
                    .then_some(InjectedFault { op, call: *count });
                Verdict {
                    delay: plan.delay,
                    hold: plan.hold.clone(),
                    fail,
                }
            }
        }
    }
}
