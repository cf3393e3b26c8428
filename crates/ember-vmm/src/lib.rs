//! ember-vmm: a KVM virtual machine monitor for one microVM per process.
//!
//! Built on the rust-vmm crates, it speaks Firecracker's REST API over a Unix socket, boots
//! Linux (bzImage, or vmlinux through PVH, with an initrd and ACPI tables) and ELF kernels with
//! Firecracker's 64-bit convention, pauses, resumes, snapshots and restores.
//! The folder tree follows the data path (see `shared/notes/architecture.md`):
//!
//! - [`api`]: HTTP/1.1 over the Unix socket, one module per resource, Firecracker shapes;
//! - [`controller`]: API actions mapped onto the VMM's state machine (Firecracker's
//!   `rpc_interface`), the one place errors become `fault_message`s;
//! - [`config`]: the whole machine configuration ([`config::VmConfig`]) and what ember-vmm
//!   checks beyond the API; the request bodies (one type per API resource, with their
//!   API-level checks) are `ember_fc_api`'s;
//! - [`builder`]: configuration or snapshot -> running [`microvm::Microvm`];
//! - [`vstate`]: KVM handle, VM (memory regions, irqchip, clock), vCPUs (threads, run loop,
//!   state), guest memory;
//! - [`arch`]: x86_64 boot protocol, page tables, GDT, MSRs, CPUID normalization, MP table,
//!   ACPI tables, PVH start info;
//! - [`loader`]: the kernel-image seam (ELF, bzImage, initrd);
//! - [`devices`]: port/MMIO buses, the legacy devices (16550 serial, i8042, CMOS RTC), the
//!   virtio-mmio devices (transport, device thread, vsock, block, net, rng) and the VM
//!   generation id;
//! - [`snapshot`]: the versioned binary state format and the memory file;
//! - [`rate_limiter`]: token buckets (bandwidth, ops) with a timerfd, Firecracker's shape;
//! - [`microvm`]: a running VM (pause, resume, Ctrl+Alt+Del, snapshot);
//! - [`exit`]: how vCPUs and devices ask the process to exit;
//! - [`timing`]: monotonic timestamps and per-phase timings.
//!
//! `unsafe` lives only in `vstate` (KVM ioctls, signal kick, guest memory mappings) and in
//! the TAP ioctls of `devices::virtio::net::tap`.

pub mod api;
pub mod arch;
pub mod builder;
pub mod config;
pub mod controller;
pub mod devices;
pub mod exit;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod loader;
pub mod microvm;
pub mod rate_limiter;
pub mod seccomp;
pub mod snapshot;
pub mod stale_socket;
pub mod timing;
pub mod vstate;

/// The version reported by `GET /` and `GET /version`.
pub const VMM_VERSION: &str = env!("CARGO_PKG_VERSION");
