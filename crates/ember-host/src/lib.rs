//! ember-host: what runs microVMs for tenants on one host, as a library with no command line
//! in it — used by the daemon (`emberd`) and by the CLI's in-process demo and benchmarks.
//!
//! - [`host`]: is this machine able to run microVMs (a usable `/dev/kvm`), and where is the VMM.
//! - [`template`]: boot a guest, wait for its agent, pause, snapshot: a stack's template.
//! - [`agent`]: the warm pool's validator over the guest agent (Health after restore, Reseed at
//!   handover) and the tenant-side agent connection.
//! - [`warm`]: a stack kept warm over real VMs, and the handoff of one VM to a tenant.
//! - [`session`]: a private root directory and a [`VmmProvider`](ember_runtime::VmmProvider)
//!   for one run, and the proof that nothing (no process, no file) is left when it ends.
//! - [`memory`] and [`cpu`]: what a VMM process costs its host, from /proc.
//! - [`image`]: `ember image build` — a Debian cloud kernel, an initramfs and a read-only ext4
//!   root (debootstrap, a directory or a tarball, with ember-agent), cached by content hash.
//! - [`ui`]: how slow work reports progress without printing ([`ui::Ui`]).
#![forbid(unsafe_code)]

pub mod agent;
pub mod cpu;
pub mod host;
pub mod image;
pub mod memory;
pub mod session;
pub mod template;
pub mod ui;
pub mod warm;
