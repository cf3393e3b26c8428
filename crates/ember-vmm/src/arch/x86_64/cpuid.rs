//! CPUID normalization: turns KVM's supported list into what one vCPU of an N-vCPU guest
//! should see. Vendor-aware (Intel and AMD), applied per vCPU (APIC ids differ).
//!
//! - leaf 0x1: initial APIC id, logical processor count, CLFLUSH size, hypervisor bit,
//!   HTT when N > 1, TSC-deadline when KVM offers it, no PDCM;
//! - leaves 0xb and 0x1f: a two-level topology (1 thread per core, N cores), x2APIC id in EDX;
//! - Intel: leaf 0x4 core/thread sharing counts, leaf 0x6 turbo/EPB off, leaf 0xa (PMU) off;
//! - AMD: leaf 0x7 ARCH_CAPABILITIES off, 0x8000_0008 core count, 0x8000_001d cache sharing,
//!   0x8000_001e extended APIC id / compute unit;
//! - leaves 0x8000_0002..=0x8000_0004: the host's brand string, or when KVM offers none (seen
//!   with a nested KVM under QEMU's TCG: Linux then names the CPU from a table, "Hammer") a
//!   generic one per vendor.

use kvm_bindings::{
    KVM_CPUID_FLAG_SIGNIFCANT_INDEX as KVM_CPUID_FLAG_SIGNIFICANT_INDEX, kvm_cpuid_entry2,
};

/// CPU vendor, from leaf 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    /// GenuineIntel.
    Intel,
    /// AuthenticAMD (or HygonGenuine).
    Amd,
    /// Anything else: only the vendor-neutral fixes apply.
    Other,
}

/// The vendor named by leaf 0 of `entries`.
pub fn vendor(entries: &[kvm_cpuid_entry2]) -> Vendor {
    let Some(leaf0) = entries.iter().find(|e| e.function == 0) else {
        return Vendor::Other;
    };
    let mut id = [0u8; 12];
    id[..4].copy_from_slice(&leaf0.ebx.to_le_bytes());
    id[4..8].copy_from_slice(&leaf0.edx.to_le_bytes());
    id[8..].copy_from_slice(&leaf0.ecx.to_le_bytes());
    match &id {
        b"GenuineIntel" => Vendor::Intel,
        b"AuthenticAMD" | b"HygonGenuine" => Vendor::Amd,
        _ => Vendor::Other,
    }
}

fn set_bits(reg: &mut u32, lo: u32, hi: u32, value: u32) {
    let width = hi - lo + 1;
    let mask = if width == 32 {
        u32::MAX
    } else {
        ((1u32 << width) - 1) << lo
    };
    *reg = (*reg & !mask) | ((value << lo) & mask);
}

fn set_bit(reg: &mut u32, bit: u32, on: bool) {
    set_bits(reg, bit, bit, u32::from(on));
}

/// Normalizes `entries` for vCPU `index` of `count` (1 thread per core, one package).
/// `tsc_deadline` says whether KVM emulates the TSC-deadline timer.
pub fn normalize(entries: &mut Vec<kvm_cpuid_entry2>, index: u8, count: u8, tsc_deadline: bool) {
    let vendor = vendor(entries);
    let apic_id = u32::from(index);
    let count32 = u32::from(count.max(1));
    let max_per_package = count32.next_power_of_two();
    // Bits of APIC id used by the core level (Firecracker-compatible: room for 32+ vCPUs).
    let core_shift = max_per_package.trailing_zeros().max(1);

    for e in entries.iter_mut() {
        match e.function {
            0x1 => {
                set_bits(&mut e.ebx, 8, 15, 8); // CLFLUSH line size / 8
                set_bits(&mut e.ebx, 16, 23, max_per_package);
                set_bits(&mut e.ebx, 24, 31, apic_id);
                set_bit(&mut e.ecx, 15, false); // PDCM: no perf capabilities MSR
                set_bit(&mut e.ecx, 24, tsc_deadline);
                set_bit(&mut e.ecx, 31, true); // running under a hypervisor
                set_bit(&mut e.edx, 28, count > 1); // HTT: multiple logical CPUs
            }
            0xb | 0x1f => {
                e.flags |= KVM_CPUID_FLAG_SIGNIFICANT_INDEX;
                e.edx = apic_id;
                match e.index {
                    0 => {
                        e.eax = 0; // SMT level: 1 thread per core
                        e.ebx = 1;
                        e.ecx = 1 << 8;
                    }
                    1 => {
                        e.eax = core_shift;
                        e.ebx = count32;
                        e.ecx = (2 << 8) | 1;
                    }
                    n => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = n;
                    }
                }
            }
            0x4 if vendor == Vendor::Intel => {
                let level = (e.eax >> 5) & 0x7;
                set_bits(&mut e.eax, 26, 31, count32 - 1);
                let sharing = if level >= 3 { count32 - 1 } else { 0 };
                set_bits(&mut e.eax, 14, 25, sharing);
            }
            0x6 if vendor == Vendor::Intel => {
                set_bit(&mut e.eax, 1, false); // turbo boost
                set_bit(&mut e.ecx, 3, false); // energy-performance bias
            }
            0xa if vendor == Vendor::Intel => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            0x7 if vendor == Vendor::Amd && e.index == 0 => {
                set_bit(&mut e.edx, 29, false); // IA32_ARCH_CAPABILITIES is Intel-only
            }
            0x8000_0008 if vendor == Vendor::Amd => {
                set_bits(&mut e.ecx, 12, 15, core_shift);
                set_bits(&mut e.ecx, 0, 7, count32 - 1);
            }
            0x8000_001d if vendor == Vendor::Amd => {
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { count32 - 1 } else { 0 };
                set_bits(&mut e.eax, 14, 25, sharing);
            }
            0x8000_001e if vendor == Vendor::Amd => {
                e.eax = apic_id;
                set_bits(&mut e.ebx, 0, 7, apic_id); // compute unit id
                set_bits(&mut e.ebx, 8, 15, 0); // 1 thread per compute unit
                set_bits(&mut e.ecx, 0, 7, 0); // node 0
                set_bits(&mut e.ecx, 8, 10, 0); // 1 node per package
            }
            _ => {}
        }
    }
    ensure_brand_string(entries, vendor);
    // Leaf 0xb must have its core level for Linux to read the topology.
    let has_b0 = entries.iter().any(|e| e.function == 0xb && e.index == 0);
    let has_b1 = entries.iter().any(|e| e.function == 0xb && e.index == 1);
    if has_b0 && !has_b1 {
        entries.push(kvm_cpuid_entry2 {
            function: 0xb,
            index: 1,
            flags: KVM_CPUID_FLAG_SIGNIFICANT_INDEX,
            eax: core_shift,
            ebx: count32,
            ecx: (2 << 8) | 1,
            edx: apic_id,
            ..Default::default()
        });
    }
}

/// The brand string used when KVM offers none.
fn default_brand(vendor: Vendor) -> &'static str {
    match vendor {
        Vendor::Intel => "Intel(R) Xeon(R) Processor",
        Vendor::Amd => "AMD EPYC Processor",
        Vendor::Other => "ember virtual CPU",
    }
}

/// Keeps a non-empty brand string in leaves 0x8000_0002..=0x8000_0004; otherwise writes
/// [`default_brand`] there and raises the extended maximum leaf to cover them.
fn ensure_brand_string(entries: &mut Vec<kvm_cpuid_entry2>, vendor: Vendor) {
    let brand_leaves = 0x8000_0002..=0x8000_0004u32;
    let max_ext = entries
        .iter()
        .find(|e| e.function == 0x8000_0000)
        .map(|e| e.eax);
    let present = max_ext.is_some_and(|m| m >= 0x8000_0004)
        && entries
            .iter()
            .filter(|e| brand_leaves.contains(&e.function))
            .any(|e| e.eax | e.ebx | e.ecx | e.edx != 0);
    if present {
        return;
    }
    let mut bytes = [0u8; 48];
    let brand = default_brand(vendor).as_bytes();
    bytes[..brand.len()].copy_from_slice(brand);
    let word = |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    entries.retain(|e| !brand_leaves.contains(&e.function));
    for (n, function) in brand_leaves.enumerate() {
        let o = n * 16;
        entries.push(kvm_cpuid_entry2 {
            function,
            eax: word(o),
            ebx: word(o + 4),
            ecx: word(o + 8),
            edx: word(o + 12),
            ..Default::default()
        });
    }
    match entries.iter_mut().find(|e| e.function == 0x8000_0000) {
        Some(e) => e.eax = e.eax.max(0x8000_0004),
        None => entries.push(kvm_cpuid_entry2 {
            function: 0x8000_0000,
            eax: 0x8000_0004,
            ..Default::default()
        }),
    }
}

/// The brand string in `entries` (leaves 0x8000_0002..=0x8000_0004), up to its first NUL.
pub fn brand_string(entries: &[kvm_cpuid_entry2]) -> String {
    let mut bytes = Vec::with_capacity(48);
    for function in 0x8000_0002..=0x8000_0004u32 {
        if let Some(e) = entries.iter().find(|e| e.function == function) {
            for r in [e.eax, e.ebx, e.ecx, e.edx] {
                bytes.extend_from_slice(&r.to_le_bytes());
            }
        }
    }
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    fn vendor_leaf(id: &[u8; 12]) -> kvm_cpuid_entry2 {
        let word = |i: usize| u32::from_le_bytes([id[i], id[i + 1], id[i + 2], id[i + 3]]);
        kvm_cpuid_entry2 {
            function: 0,
            eax: 0xd,
            ebx: word(0),
            edx: word(4),
            ecx: word(8),
            ..Default::default()
        }
    }

    fn get(e: &[kvm_cpuid_entry2], f: u32, i: u32) -> kvm_cpuid_entry2 {
        *e.iter().find(|x| x.function == f && x.index == i).unwrap()
    }

    #[test]
    fn intel_topology() {
        let mut e = vec![
            vendor_leaf(b"GenuineIntel"),
            leaf(1, 0),
            leaf(0xb, 0),
            leaf(4, 0),
            leaf(0xa, 0),
        ];
        e[4].eax = 0x0760_0004;
        assert_eq!(vendor(&e), Vendor::Intel);
        normalize(&mut e, 2, 4, true);
        let l1 = get(&e, 1, 0);
        assert_eq!(l1.ebx >> 24, 2);
        assert_eq!((l1.ebx >> 16) & 0xff, 4);
        assert_ne!(l1.ecx & (1 << 31), 0);
        assert_ne!(l1.ecx & (1 << 24), 0);
        assert_ne!(l1.edx & (1 << 28), 0);
        assert_eq!(get(&e, 0xb, 1).ebx, 4);
        assert_eq!(get(&e, 0xb, 0).edx, 2);
        assert_eq!(get(&e, 0xa, 0).eax, 0);
    }

    #[test]
    fn amd_topology() {
        let mut e = vec![
            vendor_leaf(b"AuthenticAMD"),
            leaf(1, 0),
            leaf(0x8000_0008, 0),
            leaf(0x8000_001e, 0),
            leaf(7, 0),
        ];
        e[4].edx = 1 << 29;
        normalize(&mut e, 1, 2, false);
        assert_eq!(vendor(&e), Vendor::Amd);
        assert_eq!(get(&e, 0x8000_0008, 0).ecx & 0xff, 1);
        assert_eq!(get(&e, 0x8000_001e, 0).eax, 1);
        assert_eq!(get(&e, 7, 0).edx & (1 << 29), 0);
        assert_eq!(get(&e, 1, 0).ecx & (1 << 24), 0);
    }

    #[test]
    fn brand_string_kept_or_filled_in() {
        let mut e = vec![vendor_leaf(b"AuthenticAMD"), leaf(0x8000_0000, 0)];
        e[1].eax = 0x8000_0001;
        normalize(&mut e, 0, 1, false);
        assert_eq!(brand_string(&e), "AMD EPYC Processor");
        assert_eq!(get(&e, 0x8000_0000, 0).eax, 0x8000_0004);

        let mut e = vec![vendor_leaf(b"GenuineIntel")];
        normalize(&mut e, 0, 1, false);
        assert_eq!(brand_string(&e), "Intel(R) Xeon(R) Processor");

        // A host brand string is kept.
        let mut e = vec![vendor_leaf(b"AuthenticAMD"), leaf(0x8000_0000, 0)];
        e[1].eax = 0x8000_0008;
        let mut host = [0u8; 48];
        host[..25].copy_from_slice(b"QEMU TCG CPU version 2.5+");
        for (n, f) in (0x8000_0002..=0x8000_0004u32).enumerate() {
            let w =
                |i: usize| u32::from_le_bytes(host[n * 16 + i..n * 16 + i + 4].try_into().unwrap());
            e.push(kvm_cpuid_entry2 {
                function: f,
                eax: w(0),
                ebx: w(4),
                ecx: w(8),
                edx: w(12),
                ..Default::default()
            });
        }
        normalize(&mut e, 0, 1, false);
        assert_eq!(brand_string(&e), "QEMU TCG CPU version 2.5+");
        assert_eq!(get(&e, 0x8000_0000, 0).eax, 0x8000_0008);
    }

    #[test]
    fn single_vcpu_has_no_htt() {
        let mut e = vec![vendor_leaf(b"AuthenticAMD"), leaf(1, 0)];
        e[1].edx = 1 << 28;
        normalize(&mut e, 0, 1, true);
        assert_eq!(get(&e, 1, 0).edx & (1 << 28), 0);
    }
}
