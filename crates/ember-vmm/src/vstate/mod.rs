//! KVM-facing state: the `/dev/kvm` handle and its cached capabilities ([`kvm`]), the VM
//! (memory slots, in-kernel irqchip, PIT, clock: [`vm`]), guest memory ([`memory`]), vCPUs
//! (threads, run loop, kick signal: [`vcpu`]) and their saved state ([`vcpu_state`]).
//!
//! This is one of the few places allowed to use `unsafe` (KVM memory slots, signal handling,
//! raw guest memory access); every block carries a `// SAFETY:` comment.

pub mod kvm;
pub mod memory;
pub mod vcpu;
pub mod vcpu_state;
pub mod vm;
