//! x86_64 boot protocol and CPU setup, following Firecracker's 64-bit Linux boot convention.
//!
//! Owns the guest-physical layout ([`layout`]), the zero page ([`boot_params`]), the boot GDT
//! ([`gdt`]) and identity page tables ([`paging`]), initial registers ([`regs`]), MSRs
//! ([`msr`]), CPUID normalization ([`cpuid`]), the MP table ([`mptable`]) and the ACPI tables
//! ([`acpi`]), and PVH's start info ([`pvh`]). Everything here
//! computes values or writes guest memory through vm-memory's safe API; KVM ioctls are issued
//! by `vstate`.

pub mod acpi;
pub mod boot_params;
pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod paging;
pub mod pvh;
pub mod regs;

/// Errors while preparing guest memory or CPU state for boot.
#[derive(Debug, thiserror::Error)]
pub enum ArchError {
    /// Writing a boot structure into guest memory failed.
    #[error("writing {what} into guest memory at {addr:#x}: {source}")]
    GuestWrite {
        /// Which structure.
        what: &'static str,
        /// Where.
        addr: u64,
        /// Why.
        source: vm_memory::GuestMemoryError,
    },
    /// The configuration does not fit the boot protocol.
    #[error("{0}")]
    Invalid(String),
    /// A KVM ioctl failed.
    #[error("{what}: {source}")]
    Kvm {
        /// Which ioctl.
        what: &'static str,
        /// The errno.
        source: kvm_ioctls::Error,
    },
}
