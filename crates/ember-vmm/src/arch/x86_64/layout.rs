//! Guest-physical memory layout (Firecracker-compatible addresses).

/// Boot GDT.
pub const GDT_ADDR: u64 = 0x500;
/// Boot IDT (empty: the guest installs its own).
pub const IDT_ADDR: u64 = 0x520;
/// PVH start info, module list and memory map (up to the zero page).
pub const PVH_INFO_ADDR: u64 = 0x6000;
/// End of the PVH start info area (exclusive).
pub const PVH_INFO_END: u64 = ZERO_PAGE_ADDR;
/// Linux zero page (`struct boot_params`); `rsi` points here at entry.
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Initial stack pointer.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity page tables: PML4, PDPT, one page directory (first GiB, 2 MiB pages).
pub const PML4_ADDR: u64 = 0x9000;
/// Page-directory-pointer table.
pub const PDPTE_ADDR: u64 = 0xa000;
/// Page directory.
pub const PDE_ADDR: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_ADDR: u64 = 0x20000;
/// Longest command line (bytes, without the NUL).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the reserved "system memory" (EBDA, MP table) below 1 MiB.
pub const SYSTEM_MEM_START: u64 = 0x9fc00;
/// End of the reserved area below 1 MiB (start of the BIOS ROM area we leave reserved).
pub const SYSTEM_MEM_END: u64 = 0x10_0000;
/// The VM generation id's page: the last page of the reserved system area below the RSDP
/// (the MP table at [`SYSTEM_MEM_START`] stays far below it; the guest never uses the page,
/// e820 marks it reserved). Its first 16 bytes are the id (`devices::vmgenid`).
pub const VMGENID_ADDR: u64 = 0x000d_f000;
/// The ACPI RSDP, in the BIOS area Linux scans (0xe0000..0x100000, e820-reserved).
pub const RSDP_ADDR: u64 = 0x000e_0000;
/// First byte of the other ACPI tables.
pub const ACPI_TABLES_START: u64 = 0x000e_1000;
/// End of the area for ACPI tables (exclusive).
pub const ACPI_TABLES_END: u64 = SYSTEM_MEM_END;
/// Where kernels are loaded (1 MiB).
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO gap (devices, IOAPIC, LAPIC): 3 GiB..4 GiB.
pub const MMIO32_START: u64 = 0xc000_0000;
/// First address above 4 GiB.
pub const FIRST_ADDR_PAST_32BITS: u64 = 1 << 32;
/// KVM's TSS (three pages) below the LAPIC.
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;
/// IOAPIC base.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// Local APIC base.
pub const APIC_ADDR: u32 = 0xfee0_0000;

const _: () = assert!(
    SYSTEM_MEM_START < VMGENID_ADDR
        && VMGENID_ADDR.is_multiple_of(4096)
        && VMGENID_ADDR + 4096 <= RSDP_ADDR
);

/// Guest RAM regions `(guest address, size)` for `mem_size` bytes: one region below the MMIO
/// gap, the rest above 4 GiB.
pub fn ram_regions(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO32_START {
        vec![(0, mem_size)]
    } else {
        vec![
            (0, MMIO32_START),
            (FIRST_ADDR_PAST_32BITS, mem_size - MMIO32_START),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_split_around_the_mmio_gap() {
        assert_eq!(ram_regions(128 << 20), vec![(0, 128 << 20)]);
        assert_eq!(ram_regions(MMIO32_START), vec![(0, MMIO32_START)]);
        assert_eq!(
            ram_regions(4 << 30),
            vec![
                (0, MMIO32_START),
                (FIRST_ADDR_PAST_32BITS, (4 << 30) - MMIO32_START)
            ]
        );
    }
}
