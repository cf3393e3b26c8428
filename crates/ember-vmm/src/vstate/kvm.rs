//! The `/dev/kvm` handle, the capabilities ember-vmm requires, and per-process caches of the
//! expensive system queries (`KVM_GET_SUPPORTED_CPUID` ~400 µs here, the MSR index list).

use std::sync::OnceLock;

use kvm_bindings::{KVM_MAX_CPUID_ENTRIES, kvm_cpuid_entry2};
use kvm_ioctls::{Cap, Kvm};

use crate::arch::x86_64::msr;

/// Errors opening or querying KVM.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// `/dev/kvm` could not be opened.
    #[error("cannot open /dev/kvm: {0}")]
    Open(kvm_ioctls::Error),
    /// Wrong KVM API version.
    #[error("KVM API version {0} is not supported (need 12)")]
    ApiVersion(i32),
    /// A required capability is missing.
    #[error("KVM lacks a required capability: {0}")]
    MissingCap(&'static str),
    /// A system ioctl failed.
    #[error("{what}: {source}")]
    Ioctl {
        /// Which ioctl.
        what: &'static str,
        /// The errno.
        source: kvm_ioctls::Error,
    },
}

static SUPPORTED_CPUID: OnceLock<Vec<kvm_cpuid_entry2>> = OnceLock::new();
static MSRS_TO_SAVE: OnceLock<Vec<u32>> = OnceLock::new();

/// An open `/dev/kvm` with verified capabilities.
#[derive(Debug)]
pub struct KvmContext {
    kvm: Kvm,
    tsc_deadline: bool,
}

impl KvmContext {
    /// Opens `/dev/kvm` and checks the capabilities ember-vmm relies on.
    pub fn open() -> Result<KvmContext, KvmError> {
        let kvm = Kvm::new().map_err(KvmError::Open)?;
        let version = kvm.get_api_version();
        if version != 12 {
            return Err(KvmError::ApiVersion(version));
        }
        for (cap, name) in [
            (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
            (Cap::Pit2, "KVM_CAP_PIT2"),
            (Cap::PitState2, "KVM_CAP_PIT_STATE2"),
            (Cap::Irqfd, "KVM_CAP_IRQFD"),
            (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
            (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
            (Cap::Xsave, "KVM_CAP_XSAVE"),
            (Cap::Xcrs, "KVM_CAP_XCRS"),
            (Cap::VcpuEvents, "KVM_CAP_VCPU_EVENTS"),
            (Cap::MpState, "KVM_CAP_MP_STATE"),
            (Cap::Debugregs, "KVM_CAP_DEBUGREGS"),
            (Cap::AdjustClock, "KVM_CAP_ADJUST_CLOCK"),
            (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
        ] {
            if !kvm.check_extension(cap) {
                return Err(KvmError::MissingCap(name));
            }
        }
        let tsc_deadline = kvm.check_extension(Cap::TscDeadlineTimer);
        Ok(KvmContext { kvm, tsc_deadline })
    }

    /// The raw handle.
    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    /// Whether KVM emulates the TSC-deadline LAPIC timer mode.
    pub fn tsc_deadline(&self) -> bool {
        self.tsc_deadline
    }

    /// `KVM_GET_SUPPORTED_CPUID`, fetched once per process.
    pub fn supported_cpuid(&self) -> Result<&'static [kvm_cpuid_entry2], KvmError> {
        if let Some(v) = SUPPORTED_CPUID.get() {
            return Ok(v);
        }
        let cpuid = self
            .kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|source| KvmError::Ioctl {
                what: "KVM_GET_SUPPORTED_CPUID",
                source,
            })?;
        Ok(SUPPORTED_CPUID.get_or_init(|| cpuid.as_slice().to_vec()))
    }

    /// The MSRs to save in a snapshot: KVM's index list filtered by
    /// [`msr::is_serializable`], fetched once per process.
    pub fn msrs_to_save(&self) -> Result<&'static [u32], KvmError> {
        if let Some(v) = MSRS_TO_SAVE.get() {
            return Ok(v);
        }
        let list = self
            .kvm
            .get_msr_index_list()
            .map_err(|source| KvmError::Ioctl {
                what: "KVM_GET_MSR_INDEX_LIST",
                source,
            })?;
        let filtered: Vec<u32> = list
            .as_slice()
            .iter()
            .copied()
            .filter(|i| msr::is_serializable(*i))
            .collect();
        Ok(MSRS_TO_SAVE.get_or_init(|| filtered))
    }
}
