//! ember's jailer: starts a VMM (ember-vmm) the way a platform that runs strangers' code must
//! assume it can be broken into by its guest — in new mount, pid, ipc, uts and network
//! namespaces, after `pivot_root` into a directory holding only its own files (the binary,
//! the host files it is given, `/dev/kvm`, `/dev/net/tun`, `/dev/urandom`), as its own
//! unprivileged uid/gid with no capabilities and `no_new_privs`, inside a cgroup with CPU,
//! memory and pids limits (v1 or v2). ember-vmm then installs its own seccomp filters.
//!
//! - [`config`]: what a jail is made of, validated before anything is created;
//! - [`cgroup`]: the VM's cgroup on v1 or v2, and its removal;
//! - [`mounts`]: the jail's file system and `pivot_root`;
//! - [`libraries`]: the shared libraries a dynamically linked VMM needs in the jail;
//! - [`jail`]: the sequence (namespaces, fork, credentials, exec) and its errors;
//! - `sys`: the raw calls without safe wrappers (fork, capability bounding set).
//!
//! Paths the VMM is given through its API are paths inside the jail (`/kernel`,
//! `/api.sock`); the host reaches them under the root directory.
#![deny(unsafe_code)]

pub mod cgroup;
pub mod config;
pub mod jail;
pub mod libraries;
pub mod mounts;
mod sys;

pub use cgroup::{Limits, Version};
pub use config::{Bind, JailConfig};
pub use jail::{JailError, Started, start};
