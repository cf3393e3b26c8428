//! ember-runtime: runs microVMs in VMM processes behind ember's provider contract.
//!
//! ```text
//! provider/   VmmProvider: VmProvider + VmQuery over VMM processes (ember-vmm | firecracker)
//!   ├── spares      pre-spawned, API-ready VMM processes (no process start on the create path)
//!   ├── supervisor  one epoll thread over pidfds: deaths noticed at once, processes reaped
//!   ├── process     spawn a VMM into its slot (console/log files, pidfd, parent-death signal)
//!   ├── adopt       detached VMMs found again after a restart: adopt, sweep, records
//!   ├── procfs      process identities (pid, start time, boot id) and VMMs found in /proc
//!   ├── layout      <root>/{slots/<n>, vms/<id> -> ../slots/<n>, snapshots/<id>, jails/<n>}
//!   ├── jail/       VMMs started through ember-jailer (spawn), files bound into a jail at their
//!   │               own path (mod), its mounts and cgroups removed (cleanup)
//!   ├── slot_net    the hook that gives each slot's VMM a network namespace before it starts
//!   ├── snapshots   snapshot catalog (ember-core SnapshotInfo) and files, cheap integrity checks
//!   └── client/     Firecracker API client: HTTP/1.1 over UDS, keep-alive, typed errors;
//!                   the bodies it sends and reads are ember-fc-api's
//! ```
//!
//! The data path of a restore: `create_with_spec` takes a ready spare (its API connection is
//! already open), links `vms/<id>` to its slot, sends one `PUT /snapshot/load` (memory file
//! mapped copy-on-write, the VM's own vsock socket, the caller's network overrides) and records
//! the VM. Destroy kills the process through its pidfd and removes its files (a jailed VM's
//! once it is reaped: its jail's mount points are cheap to unlink only after its mount
//! namespace is gone); the dying process's teardown and reaping happen on the supervisor
//! thread.
//!
//! # Using it
//! ```no_run
//! use std::sync::Arc;
//! use ember_core::{VmProvider, VmSpec, VmId};
//! use ember_runtime::{Flavor, ProviderConfig, VmmProvider, locate_ember_vmm};
//!
//! let binary = locate_ember_vmm().expect("ember-vmm");
//! let mut config = ProviderConfig::new("/run/ember", Flavor::EmberVmm { binary });
//! config.snapshots_dir = Some("/var/lib/ember/snapshots".into());
//! config.spares.count = 8; // keep at least the pool's refill parallelism ready
//! let provider = Arc::new(VmmProvider::new(config)?);
//! // Wire deaths into a warm pool: provider.add_exit_listener(... pool.notify_died(&e.id) ...).
//! let id = VmId::new("vm-1")?;
//! let view = provider.create_with_spec(&id, &VmSpec::default());
//! # let _ = view;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Choices worth knowing
//! - **Root on tmpfs.** Every VM creates a slot (a directory, two log files, a socket) and
//!   destroy removes it. On this project's hosts that is ~1.6 ms per VM on the disk-backed root
//!   filesystem and ~0.04 ms on tmpfs, and it was the largest cost of a refill. Put the root on
//!   tmpfs and the snapshots (`snapshots_dir`) on disk.
//! - **Rename** is one `rename(2)` of the id symlink; the VMM's sockets never move (see
//!   [`layout`]).
//! - **VMMs die with their owner, or are detached**: by default they are spawned with a
//!   parent-death signal from one long-lived spawner thread, so a crashed owner (the CLI) leaves
//!   no VMM behind and the next provider on the same root clears the files. A daemon sets
//!   `ProviderConfig::detached`: VMMs get their own process group and no parent-death signal,
//!   a dropped provider leaves them running, and the next provider re-adopts the recorded ones
//!   ([`VmmProvider::adopt`], from [`VmmProvider::vm_record`]) and kills and removes the rest
//!   ([`VmmProvider::sweep`]). Snapshots are kept by whoever records state: the catalog starts
//!   empty ([`VmmProvider::register_snapshot`]).
//! - **Stop is a kill**: a VMM process does not restart a guest it stopped; the VM's files stay
//!   until destroy.
//! - **Capabilities**: no live network update yet (`update_network` is unsupported).
#![forbid(unsafe_code)]

pub mod client;
pub mod error;
pub mod jail;
pub mod layout;
pub mod process;
pub mod procfs;
pub mod provider;
pub mod slot_net;
pub mod snapshots;
pub mod spares;
pub mod supervisor;

pub use client::{ClientError, ClientTimeouts, FirecrackerClient};
pub use error::RuntimeError;
pub use process::ExitInfo;
pub use provider::{
    AdoptError, ExitListener, Flavor, ListenerId, ProviderConfig, ProviderStats, StartError,
    SweepReport, Timeouts, VmExit, VmPaths, VmmProvider, locate_ember_jailer, locate_ember_vmm,
};
pub use spares::{SpareConfig, SpareStats};
