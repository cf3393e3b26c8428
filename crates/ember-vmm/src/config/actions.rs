//! `PUT /actions` and `PATCH /vm` bodies.

use serde::Deserialize;

/// `PUT /actions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceAction {
    /// What to do.
    pub action_type: ActionType,
}

/// Actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ActionType {
    /// Boot the configured VM.
    InstanceStart,
    /// Inject Ctrl+Alt+Del through the i8042.
    SendCtrlAltDel,
    /// Accepted and ignored (no metrics sink).
    FlushMetrics,
}

/// `PATCH /vm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmStateChange {
    /// The desired state.
    pub state: VmStateValue,
}

/// Desired run state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum VmStateValue {
    /// Stop the vCPUs.
    Paused,
    /// Run them again.
    Resumed,
}
