//! ember-runtime: runs microVMs in VMM processes behind ember's provider contract.
//!
//! ```text
//! provider/   VmmProvider: VmProvider + VmQuery over VMM processes (ember-vmm | firecracker)
//!   ├── spares      pre-spawned, API-ready VMM processes (no process start on the create path)
//!   ├── supervisor  one epoll thread over pidfds: deaths noticed at once, processes reaped
//!   ├── process     spawn a VMM into its slot (console/log files, pidfd, parent-death signal)
//!   ├── layout      <root>/{slots/<n>, vms/<id> -> ../slots/<n>, snapshots/<id>}
//!   ├── snapshots   snapshot store: files + meta.json, reloaded at start, cheap integrity checks
//!   └── client/     Firecracker API client: HTTP/1.1 over UDS, keep-alive, typed errors
//! ```
//!
//! The data path of a restore: `create_with_spec` takes a ready spare (its API connection is
//! already open), links `vms/<id>` to its slot, sends one `PUT /snapshot/load` (memory file
//! mapped copy-on-write, the VM's own vsock socket, the caller's network overrides) and records
//! the VM. Destroy kills the process through its pidfd and removes its files; the dying
//! process's teardown and reaping happen on the supervisor thread.

pub mod client;
pub mod error;
pub mod layout;
pub mod process;
pub mod provider;
pub mod snapshots;
pub mod spares;
pub mod supervisor;

pub use client::{ClientError, ClientTimeouts, FirecrackerClient};
pub use error::RuntimeError;
pub use process::ExitInfo;
pub use provider::{
    ExitListener, Flavor, ListenerId, ProviderConfig, ProviderStats, StartError, Timeouts, VmExit,
    VmPaths, VmmProvider, locate_ember_vmm,
};
pub use spares::{SpareConfig, SpareStats};
