//! Model-specific registers: the boot values Linux expects, and which of the MSRs KVM lists
//! (`KVM_GET_MSR_INDEX_LIST`) are architectural state worth saving in a snapshot.

use kvm_bindings::kvm_msr_entry;

/// IA32_TSC.
pub const MSR_IA32_TSC: u32 = 0x10;
/// IA32_MISC_ENABLE.
pub const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
/// IA32_MTRR_DEF_TYPE.
pub const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
/// IA32_TSC_DEADLINE.
pub const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;

/// MSR values for a 64-bit Linux boot (Firecracker's set): SYSENTER/SYSCALL MSRs cleared, TSC
/// 0, fast strings on, MTRRs enabled with write-back default.
pub fn boot_msr_entries() -> Vec<kvm_msr_entry> {
    let zero = |index| kvm_msr_entry {
        index,
        data: 0,
        ..Default::default()
    };
    vec![
        zero(0x174),       // IA32_SYSENTER_CS
        zero(0x175),       // IA32_SYSENTER_ESP
        zero(0x176),       // IA32_SYSENTER_EIP
        zero(0xc000_0081), // STAR
        zero(0xc000_0083), // CSTAR
        zero(0xc000_0102), // KERNEL_GS_BASE
        zero(0xc000_0084), // SYSCALL_MASK
        zero(0xc000_0082), // LSTAR
        zero(MSR_IA32_TSC),
        kvm_msr_entry {
            index: MSR_IA32_MISC_ENABLE,
            data: 1,
            ..Default::default()
        },
        kvm_msr_entry {
            index: MSR_MTRR_DEF_TYPE,
            data: (1 << 11) | 0x6,
            ..Default::default()
        },
    ]
}

/// Inclusive ranges of MSRs that hold guest-visible architectural state. Anything KVM lists
/// outside them (performance counters, VMX capabilities, Hyper-V, power management) is either
/// read-only, derived from CPUID, or not used by ember's guests, and KVM_GET_MSRS may refuse
/// it depending on the CPUID, so it is not saved.
const SERIALIZABLE: &[(u32, u32)] = &[
    (0x10, 0x10),               // TSC
    (0x11, 0x12),               // KVM wall clock / system time (legacy)
    (0x1b, 0x1b),               // APIC_BASE
    (0x3a, 0x3a),               // FEATURE_CONTROL
    (0x3b, 0x3b),               // TSC_ADJUST
    (0x48, 0x48),               // SPEC_CTRL
    (0x174, 0x176),             // SYSENTER_CS/ESP/EIP
    (0x179, 0x17a),             // MCG_CAP, MCG_STATUS
    (0x1a0, 0x1a0),             // MISC_ENABLE
    (0x1d9, 0x1d9),             // DEBUGCTL
    (0x200, 0x2ff),             // MTRRs and PAT
    (0x400, 0x47f),             // MCi banks
    (0x6e0, 0x6e0),             // TSC_DEADLINE
    (0x800, 0x8ff),             // x2APIC registers
    (0xda0, 0xda0),             // XSS
    (0xc000_0080, 0xc000_0084), // EFER, STAR, LSTAR, CSTAR, SYSCALL_MASK
    (0xc000_0100, 0xc000_0103), // FS_BASE, GS_BASE, KERNEL_GS_BASE, TSC_AUX
    (0xc001_0015, 0xc001_0015), // AMD HWCR
    (0x4b56_4d00, 0x4b56_4dff), // KVM paravirtual MSRs (kvmclock, async PF, steal time, ...)
];

/// True if `index` should be saved in a snapshot.
pub fn is_serializable(index: u32) -> bool {
    SERIALIZABLE
        .iter()
        .any(|&(lo, hi)| (lo..=hi).contains(&index))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter() {
        assert!(is_serializable(MSR_IA32_TSC));
        assert!(is_serializable(0xc000_0080));
        assert!(is_serializable(0x4b56_4d01));
        assert!(!is_serializable(0xc1)); // PERFCTR0
        assert!(!is_serializable(0x480)); // VMX_BASIC
        assert!(!is_serializable(0x4000_0000)); // Hyper-V
    }
}
