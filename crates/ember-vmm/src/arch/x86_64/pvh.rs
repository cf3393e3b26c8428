//! The PVH boot protocol (Xen's `hvm_start_info`, which Linux's vmlinux supports through its
//! `XEN_ELFNOTE_PHYS32_ENTRY` note): the start info with the command line, the initrd as
//! module 0, the RSDP and the e820 map, written at [`PVH_INFO_ADDR`]; the vCPU enters the
//! note's address in 32-bit protected mode without paging, `ebx` pointing at the start info
//! (registers are set by `regs::setup_pvh_regs` / `setup_pvh_sregs`).
//!
//! Structures are written as little-endian bytes at the offsets of Xen's
//! `public/arch-x86/hvm/start_info.h` (version 1).

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::ArchError;
use super::layout::{PVH_INFO_ADDR, PVH_INFO_END};

/// `hvm_start_info.magic`: "xEn3" with bit 7 of the last byte set.
pub const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
/// Size of `hvm_start_info` (version 1).
const START_INFO_SIZE: u64 = 56;
/// Size of one `hvm_modlist_entry`.
const MODLIST_ENTRY_SIZE: u64 = 32;
/// Size of one `hvm_memmap_table_entry`.
const MEMMAP_ENTRY_SIZE: u64 = 24;

/// What the start info describes.
#[derive(Debug, Clone, Default)]
pub struct StartInfo {
    /// Guest address of the NUL-terminated command line.
    pub cmdline_addr: u64,
    /// The initrd `(address, size)`, handed over as module 0.
    pub initrd: Option<(u64, u64)>,
    /// Guest address of the ACPI RSDP.
    pub rsdp_addr: u64,
    /// The memory map `(address, size, e820 type)`.
    pub memmap: Vec<(u64, u64, u32)>,
}

impl StartInfo {
    /// The bytes to write at `base`: start info, then the module list, then the memory map.
    pub fn to_bytes(&self, base: u64) -> Vec<u8> {
        let modlist_addr = base + START_INFO_SIZE.next_multiple_of(16);
        let nr_modules = u32::from(self.initrd.is_some());
        let memmap_addr = modlist_addr + u64::from(nr_modules) * MODLIST_ENTRY_SIZE;
        let len = (memmap_addr - base) + self.memmap.len() as u64 * MEMMAP_ENTRY_SIZE;
        let mut b = Vec::with_capacity(len as usize);
        b.extend_from_slice(&XEN_HVM_START_MAGIC.to_le_bytes());
        b.extend_from_slice(&1u32.to_le_bytes()); // version
        b.extend_from_slice(&0u32.to_le_bytes()); // flags
        b.extend_from_slice(&nr_modules.to_le_bytes());
        let modlist = if nr_modules > 0 { modlist_addr } else { 0 };
        b.extend_from_slice(&modlist.to_le_bytes());
        b.extend_from_slice(&self.cmdline_addr.to_le_bytes());
        b.extend_from_slice(&self.rsdp_addr.to_le_bytes());
        b.extend_from_slice(&memmap_addr.to_le_bytes());
        b.extend_from_slice(&(self.memmap.len() as u32).to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes()); // reserved
        b.resize((modlist_addr - base) as usize, 0);
        if let Some((addr, size)) = self.initrd {
            b.extend_from_slice(&addr.to_le_bytes());
            b.extend_from_slice(&size.to_le_bytes());
            b.extend_from_slice(&0u64.to_le_bytes()); // module command line
            b.extend_from_slice(&0u64.to_le_bytes()); // reserved
        }
        for &(addr, size, kind) in &self.memmap {
            b.extend_from_slice(&addr.to_le_bytes());
            b.extend_from_slice(&size.to_le_bytes());
            b.extend_from_slice(&kind.to_le_bytes());
            b.extend_from_slice(&0u32.to_le_bytes());
        }
        b
    }

    /// Writes the start info at [`PVH_INFO_ADDR`]; returns that address (for `ebx`).
    pub fn write_to(&self, mem: &GuestMemoryMmap) -> Result<u64, ArchError> {
        let bytes = self.to_bytes(PVH_INFO_ADDR);
        if PVH_INFO_ADDR + bytes.len() as u64 > PVH_INFO_END {
            return Err(ArchError::Invalid(format!(
                "PVH start info: {} memory map entries do not fit",
                self.memmap.len()
            )));
        }
        mem.write_slice(&bytes, GuestAddress(PVH_INFO_ADDR))
            .map_err(|source| ArchError::GuestWrite {
                what: "PVH start info",
                addr: PVH_INFO_ADDR,
                source,
            })?;
        Ok(PVH_INFO_ADDR)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], o: usize) -> u64 {
        u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
    }

    #[test]
    fn layout_matches_xen_start_info() {
        let info = StartInfo {
            cmdline_addr: 0x20000,
            initrd: Some((0x700_0000, 0x12345)),
            rsdp_addr: 0xe0000,
            memmap: vec![(0, 0x9fc00, 1), (0x10_0000, 0x700_0000, 1)],
        };
        let base = 0x6000;
        let b = info.to_bytes(base);
        assert_eq!(u32_at(&b, 0), XEN_HVM_START_MAGIC);
        assert_eq!(u32_at(&b, 4), 1);
        assert_eq!(u32_at(&b, 12), 1, "one module");
        let modlist = u64_at(&b, 16);
        assert_eq!(u64_at(&b, 24), 0x20000);
        assert_eq!(u64_at(&b, 32), 0xe0000);
        let memmap = u64_at(&b, 40);
        assert_eq!(u32_at(&b, 48), 2);
        let m = (modlist - base) as usize;
        assert_eq!((u64_at(&b, m), u64_at(&b, m + 8)), (0x700_0000, 0x12345));
        let e = (memmap - base) as usize;
        assert_eq!(memmap, modlist + MODLIST_ENTRY_SIZE);
        assert_eq!(u64_at(&b, e + 24), 0x10_0000);
        assert_eq!(u32_at(&b, e + 24 + 16), 1);
        assert_eq!(b.len(), e + 2 * MEMMAP_ENTRY_SIZE as usize);
    }

    #[test]
    fn no_initrd_means_no_modules() {
        let info = StartInfo {
            memmap: vec![(0, 0x1000, 1)],
            ..Default::default()
        };
        let b = info.to_bytes(0x6000);
        assert_eq!(u32_at(&b, 12), 0);
        assert_eq!(u64_at(&b, 16), 0);
    }
}
