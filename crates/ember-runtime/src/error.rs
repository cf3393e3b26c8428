//! [`RuntimeError`]: what goes wrong below the provider seam. It travels as the `source` of
//! [`VmError::Provider`](ember_core::VmError::Provider), so the pool and the daemon see the
//! typed contract error and logs see the whole chain (`error_chain`).

use std::path::PathBuf;

use ember_core::SnapshotId;

use crate::client::ClientError;
use crate::process::ExitInfo;
use crate::spares::SpareError;

/// A failure in the runtime's machinery.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The VMM refused or failed an API call.
    #[error(transparent)]
    Api(#[from] ClientError),
    /// The VMM process is gone.
    #[error("the VMM process (pid {pid}) {exit}; its log ends with: {log_tail:?}")]
    VmmExited {
        /// The process.
        pid: u32,
        /// How it ended.
        exit: ExitInfo,
        /// The end of its stderr.
        log_tail: String,
    },
    /// No VMM process could be had.
    #[error(transparent)]
    Spare(#[from] SpareError),
    /// A file operation failed.
    #[error("{what} {path}")]
    Files {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A trial restore of a snapshot (the honest check that it loads) failed.
    #[error("snapshot {snapshot} does not load")]
    TrialRestore {
        /// The snapshot.
        snapshot: SnapshotId,
        /// What the VMM said.
        #[source]
        source: Box<RuntimeError>,
    },
    /// The provider is shutting down or shut down.
    #[error("the provider is shut down")]
    ShutDown,
}
