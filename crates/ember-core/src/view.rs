//! What a provider reports about a VM: [`VmStatus`] and [`VmView`], and the lifecycle's
//! transition table.

use std::fmt;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::id::{SnapshotId, VmId};
use crate::stack::StackKey;

/// The lifecycle status of a microVM.
///
/// ```text
///   create ──> Created ──start──> Running <──resume── Paused
///                                   │  └────pause────────^│
///   restore(resume) ──> Running     stop                   stop
///   restore(paused) ──> Paused      v                      v
///                                 Stopped <────────────────┘
///   destroy: any status but Destroyed ──> Destroyed
/// ```
/// A stopped VM cannot start again (a VMM process does not reboot a guest it stopped); destroy it
/// and create a new one.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmStatus {
    /// Configured but never started.
    Created,
    /// vCPUs running.
    Running,
    /// vCPUs paused; memory and devices intact. Snapshots are taken in this status.
    Paused,
    /// The guest was stopped; only destroy remains.
    Stopped,
    /// Released: no process, no files. A destroyed id may be reused.
    Destroyed,
}

impl VmStatus {
    /// Whether a lifecycle call may take a VM from `self` to `to`.
    pub fn can_transition_to(self, to: VmStatus) -> bool {
        use VmStatus::*;
        matches!(
            (self, to),
            (Created, Running)
                | (Running, Paused)
                | (Paused, Running)
                | (Running | Paused | Created, Stopped)
                | (Created | Running | Paused | Stopped, Destroyed)
        )
    }

    /// Whether the VM still exists (anything but [`VmStatus::Destroyed`]).
    pub fn is_live(self) -> bool {
        self != VmStatus::Destroyed
    }
}

impl fmt::Display for VmStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VmStatus::Created => "created",
            VmStatus::Running => "running",
            VmStatus::Paused => "paused",
            VmStatus::Stopped => "stopped",
            VmStatus::Destroyed => "destroyed",
        })
    }
}

/// A provider's view of one VM.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmView {
    /// The VM's current id (a rename changes it).
    pub id: VmId,
    /// Its lifecycle status.
    pub status: VmStatus,
    /// The stack it was restored from or belongs to, if any.
    pub stack: Option<StackKey>,
    /// The snapshot it was restored from, if any.
    pub restored_from: Option<SnapshotId>,
    /// When the provider created it.
    #[serde(with = "unix_millis")]
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub created_at: SystemTime,
    /// Snapshots taken of this VM (they outlive it).
    pub snapshots: Vec<SnapshotId>,
}

/// Serializes a [`SystemTime`] as integer milliseconds since the Unix epoch.
pub mod unix_millis {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes `t` as milliseconds since the epoch (0 for times before it).
    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        let ms = t
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        s.serialize_u64(ms)
    }

    /// Deserializes milliseconds since the epoch.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let ms = u64::deserialize(d)?;
        Ok(UNIX_EPOCH + Duration::from_millis(ms))
    }
}

/// Serializes an `Option<SystemTime>` as integer milliseconds since the Unix epoch (or null).
pub mod opt_unix_millis {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes `t` as milliseconds since the epoch, `None` as null.
    pub fn serialize<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => super::unix_millis::serialize(t, s),
            None => s.serialize_none(),
        }
    }

    /// Deserializes milliseconds since the epoch, or null.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(|ms| UNIX_EPOCH + Duration::from_millis(ms)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use VmStatus::*;

    #[test]
    fn transition_table() {
        let all = [Created, Running, Paused, Stopped, Destroyed];
        let allowed = [
            (Created, Running),
            (Running, Paused),
            (Paused, Running),
            (Created, Stopped),
            (Running, Stopped),
            (Paused, Stopped),
            (Created, Destroyed),
            (Running, Destroyed),
            (Paused, Destroyed),
            (Stopped, Destroyed),
        ];
        for from in all {
            for to in all {
                assert_eq!(
                    from.can_transition_to(to),
                    allowed.contains(&(from, to)),
                    "{from} -> {to}"
                );
            }
        }
    }

    #[test]
    fn view_serializes_time_as_millis() {
        let view = VmView {
            id: VmId::new("vm-1").unwrap(),
            status: Paused,
            stack: None,
            restored_from: None,
            created_at: std::time::UNIX_EPOCH + std::time::Duration::from_millis(1234),
            snapshots: vec![],
        };
        let json = serde_json::to_string(&view).unwrap();
        assert!(json.contains("\"created_at\":1234"), "{json}");
        assert!(json.contains("\"status\":\"paused\""), "{json}");
        assert_eq!(serde_json::from_str::<VmView>(&json).unwrap(), view);
    }
}
