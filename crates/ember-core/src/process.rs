//! [`ProcessIdentity`]: which host process a record means, robust against pid reuse.
//!
//! A pid alone is not an identity: after a daemon restart the pid of a VMM that died may belong
//! to an unrelated process. An identity therefore also keeps the process's start time (clock
//! ticks since boot, field 22 of `/proc/<pid>/stat`) and the kernel's boot id, since start times
//! restart with every boot. This module holds the value only; reading `/proc` is the runtime's
//! job (`ember_runtime::procfs`).

use serde::{Deserialize, Serialize};

/// A process, identified so that a reused pid is never mistaken for it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessIdentity {
    /// The process id.
    pub pid: u32,
    /// Its start time in clock ticks since boot.
    pub start_time: u64,
    /// The boot id of the kernel it runs under (`/proc/sys/kernel/random/boot_id`).
    pub boot_id: String,
}
