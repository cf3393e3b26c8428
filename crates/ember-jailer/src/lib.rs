//! ember's jailer: starts a VMM (ember-vmm) the way a platform that runs strangers' code must
//! assume it can be broken into by its guest — in new mount, pid, ipc, uts and network
//! namespaces, after `pivot_root` into a directory holding only its own files (the binary,
//! the host files it is given, `/dev/kvm`, `/dev/net/tun`, `/dev/random`, `/dev/urandom`), as its own
//! unprivileged uid/gid with no capabilities and `no_new_privs`, inside a cgroup with CPU,
//! memory and pids limits (v1 or v2). ember-vmm then installs its own seccomp filters.
//!
//! - [`config`]: what a jail is made of, validated before anything is created;
//! - [`cgroup`]: the VM's cgroup on v1 or v2, and its removal;
//! - [`mounts`]: the jail's file system and `pivot_root`;
//! - [`libraries`]: the shared libraries a dynamically linked VMM needs in the jail;
//! - [`elf`]: whether an executable is static (its program interpreter, if any);
//! - [`jail`]: the sequence (namespaces, fork, credentials, exec) and its errors;
//! - [`serve`]: a resident jailer starting VMMs on request, as its owner's children;
//! - `sys`: the raw calls without safe wrappers (fork, capability bounding set).
//!
//! Paths the VMM is given through its API are paths inside the jail (`/kernel`,
//! `/api.sock`); the host reaches them under the root directory.
//!
//! # What a start costs
//! Measured on the project's build host (2 CPUs shared with other work, load average 4-5.5
//! during the runs; kernel 6.18, HZ 250, cgroup v1), starting `ember-vmm --version` with the
//! runtime's arguments (`--no-library-scan`, the slot directory bound rw, the VMM's three
//! libraries bound ro, `--pids-max 64`), sequentially, jailer runs of two builds interleaved,
//! 40 of each, timed from spawning the jailer to its exit:
//!
//! | | median | min |
//! |---|---|---|
//! | `ember-vmm --version` unjailed | 1.5-3.8 ms | 1.2-1.5 ms |
//! | jailed, moving in through `cgroup.procs` (before) | 16-22 ms | 3.6-9.4 ms |
//! | jailed, moving in through `tasks` (now, [`cgroup::Cgroup::add_self`]) | 5.5-10.9 ms | 3.2-5.6 ms |
//! | the same jailer linked statically (`+crt-static`) | 4.9 ms (vs 5.5), 6.5 ms (vs 7.0) | 3.3 ms |
//!
//! Where it goes now (medians of 12 runs under `strace --seccomp-bpf` tracing only the
//! syscalls that mark the steps, so a little inflated): the jailer's own start and argument
//! parsing 1.5 ms; the cgroup (three `mkdir`s, `pids.max`, the move) 0.5 ms, which was 10 ms
//! (and 8-15 ms when timed alone) while the move went through `cgroup.procs` and so waited for
//! an RCU grace period; chown, pid namespace and fork 0.8 ms; in the child, the new mount, ipc,
//! uts and network namespaces (~0.7 ms of it for `unshare`), the five binds (each a bind and a
//! remount) and the three device nodes 3.6 ms; `pivot_root` to `execve` 0.3 ms; the exec until
//! the jailer exits 0.7 ms. The grace period mostly hurt sequential starts: starts that overlap
//! (a pool refilling) share one, so `ember bench jail`'s refill rate moved within its noise.
//! Left as they are: a static jailer (0.5 ms, but a per-binary `crt-static` needs its own
//! `--target` build), and a statically linked VMM, which would drop the library binds and the
//! dynamic loading inside the jail.
//!
//! Since then the runtime keeps one resident jailer ([`serve`]): no jailer exec, link or exit
//! per VMM, and the VMM is cloned straight as the runtime's child. Its network namespace and
//! (v1) cgroup are recycled from VMMs that exited. Measured the same way (100 in a row, a kept
//! namespace): 1.3-1.8 ms from request to the VMM's exec, 2.6-3.2 ms of host CPU per start
//! including the VMM's own run (`--version`), against 1.3-1.8 ms for the VMM unjailed. What is
//! left is mostly the mount namespace (its copy of the host's mounts, binds, `pivot_root`,
//! detaching the old root: proportional to the host's mount count), the IPC namespace, the
//! `clone` and path lookups.
#![deny(unsafe_code)]

pub mod cgroup;
pub mod config;
pub mod elf;
pub mod jail;
pub mod libraries;
pub mod mounts;
pub mod serve;
mod sys;

pub use cgroup::{Limits, Version};
pub use config::{Bind, JailConfig};
pub use jail::{JailError, Started, start};
