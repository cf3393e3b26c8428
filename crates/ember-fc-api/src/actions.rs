//! `PUT /actions` ([`InstanceActionInfo`]) and `PATCH /vm` ([`Vm`]): the requests that change
//! what a microVM does rather than how it is configured. Both are fully checked by parsing.

use serde::{Deserialize, Serialize};

/// `PUT /actions` — `InstanceActionInfo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceActionInfo {
    /// The action.
    pub action_type: ActionType,
}

/// `InstanceActionInfo.action_type` (in the order parse errors list them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionType {
    /// Boot the configured microVM.
    InstanceStart,
    /// Press Ctrl+Alt+Del (x86: the guest usually reboots, which ends the VMM).
    SendCtrlAltDel,
    /// Flush the metrics file.
    FlushMetrics,
}

/// `PATCH /vm` — `Vm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vm {
    /// The state to move to.
    pub state: VmState,
}

/// `Vm.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    /// Pause the vCPUs.
    Paused,
    /// Resume the vCPUs.
    Resumed,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_shapes() {
        assert_eq!(
            serde_json::to_string(&InstanceActionInfo {
                action_type: ActionType::InstanceStart
            })
            .unwrap(),
            r#"{"action_type":"InstanceStart"}"#
        );
        assert_eq!(
            serde_json::to_string(&Vm {
                state: VmState::Resumed
            })
            .unwrap(),
            r#"{"state":"Resumed"}"#
        );
        assert!(serde_json::from_str::<Vm>(r#"{"state":"Paused","x":1}"#).is_err());
        assert!(
            serde_json::from_str::<InstanceActionInfo>(r#"{"action_type":"Explode"}"#).is_err()
        );
    }
}
