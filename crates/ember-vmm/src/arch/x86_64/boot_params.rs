//! The Linux zero page (`struct boot_params`) for the 64-bit boot protocol: setup header
//! fields a loader must fill, the command line pointer and the e820 memory map.
//!
//! Built as raw bytes at the offsets of Linux's `struct boot_params` (checked against
//! linux-loader's bindings in the tests), so no unsafe `ByteValued` impl is needed. For a
//! bzImage the image's setup header is copied in first ([`ZeroPage::set_setup_header`]), then
//! the loader's fields are set over it.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::ArchError;
use super::layout::{self, HIMEM_START, SYSTEM_MEM_END, SYSTEM_MEM_START};

/// Offset of `acpi_rsdp_addr` (u64, boot protocol 2.14+).
const ACPI_RSDP_ADDR_OFFSET: usize = 0x070;
/// Offset of `e820_entries` (u8).
const E820_ENTRIES_OFFSET: usize = 0x1e8;
/// Offset of the setup header (`hdr`).
pub const SETUP_HEADER_OFFSET: usize = 0x1f1;
/// End of the room for the setup header (`edd_mbr_sig_buffer` follows).
const SETUP_HEADER_LIMIT: usize = 0x290;
const BOOT_FLAG_OFFSET: usize = 0x1fe;
const HEADER_MAGIC_OFFSET: usize = 0x202;
const TYPE_OF_LOADER_OFFSET: usize = 0x210;
const RAMDISK_IMAGE_OFFSET: usize = 0x218;
const RAMDISK_SIZE_OFFSET: usize = 0x21c;
const CMD_LINE_PTR_OFFSET: usize = 0x228;
const KERNEL_ALIGNMENT_OFFSET: usize = 0x230;
const CMDLINE_SIZE_OFFSET: usize = 0x238;
/// Offset of `e820_table`.
const E820_TABLE_OFFSET: usize = 0x2d0;
const E820_ENTRY_SIZE: usize = 20;
const E820_MAX_ENTRIES: usize = 128;

/// e820 type for usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type for reserved memory.
pub const E820_RESERVED: u32 = 2;

/// Firecracker's memory map for the given RAM regions, as `(address, size, e820 type)`: low
/// RAM up to the EBDA, reserved up to 1 MiB (MP table, ACPI tables), then RAM from 1 MiB (and
/// above 4 GiB). The zero page and PVH's start info both carry it.
pub fn standard_e820(ram: &[(u64, u64)]) -> Vec<(u64, u64, u32)> {
    let mut map = vec![
        (0, SYSTEM_MEM_START, E820_RAM),
        (
            SYSTEM_MEM_START,
            SYSTEM_MEM_END - SYSTEM_MEM_START,
            E820_RESERVED,
        ),
    ];
    for &(start, size) in ram {
        let begin = start.max(HIMEM_START);
        let end = start + size;
        if end > begin {
            map.push((begin, end - begin, E820_RAM));
        }
    }
    map
}

/// A zero page being built.
#[derive(Clone)]
pub struct ZeroPage {
    bytes: Box<[u8; 4096]>,
    e820_count: usize,
}

impl Default for ZeroPage {
    fn default() -> Self {
        Self::new()
    }
}

impl ZeroPage {
    /// A zero page with the loader fields every 64-bit boot needs.
    pub fn new() -> Self {
        let mut zp = ZeroPage {
            bytes: Box::new([0u8; 4096]),
            e820_count: 0,
        };
        zp.put(BOOT_FLAG_OFFSET, &0xaa55u16.to_le_bytes());
        zp.put(HEADER_MAGIC_OFFSET, &0x5372_6448u32.to_le_bytes()); // "HdrS"
        zp.put(TYPE_OF_LOADER_OFFSET, &[0xff]); // "other" loader
        zp.put(KERNEL_ALIGNMENT_OFFSET, &0x0100_0000u32.to_le_bytes());
        zp
    }

    fn put(&mut self, offset: usize, data: &[u8]) {
        self.bytes[offset..offset + data.len()].copy_from_slice(data);
    }

    /// Copies a bzImage's setup header (`struct setup_header` bytes, as read from the image
    /// at [`SETUP_HEADER_OFFSET`]), then sets this loader's own fields again over it.
    pub fn set_setup_header(&mut self, header: &[u8]) -> Result<(), ArchError> {
        let end = SETUP_HEADER_OFFSET + header.len();
        if end > SETUP_HEADER_LIMIT {
            return Err(ArchError::Invalid(format!(
                "setup header of {} bytes is too long",
                header.len()
            )));
        }
        self.put(SETUP_HEADER_OFFSET, header);
        self.put(BOOT_FLAG_OFFSET, &0xaa55u16.to_le_bytes());
        self.put(TYPE_OF_LOADER_OFFSET, &[0xff]);
        Ok(())
    }

    /// Tells the kernel where the ACPI RSDP is (it also scans the BIOS area for it).
    pub fn set_acpi_rsdp(&mut self, addr: u64) {
        self.put(ACPI_RSDP_ADDR_OFFSET, &addr.to_le_bytes());
    }

    /// Points the kernel at its command line (`len` bytes without the NUL).
    pub fn set_cmdline(&mut self, addr: u32, len: u32) {
        self.put(CMD_LINE_PTR_OFFSET, &addr.to_le_bytes());
        self.put(CMDLINE_SIZE_OFFSET, &len.to_le_bytes());
    }

    /// Describes an initrd.
    pub fn set_ramdisk(&mut self, addr: u32, size: u32) {
        self.put(RAMDISK_IMAGE_OFFSET, &addr.to_le_bytes());
        self.put(RAMDISK_SIZE_OFFSET, &size.to_le_bytes());
    }

    /// Appends an e820 entry.
    pub fn add_e820(&mut self, addr: u64, size: u64, kind: u32) -> Result<(), ArchError> {
        if self.e820_count >= E820_MAX_ENTRIES {
            return Err(ArchError::Invalid("too many e820 entries".into()));
        }
        let off = E820_TABLE_OFFSET + self.e820_count * E820_ENTRY_SIZE;
        self.put(off, &addr.to_le_bytes());
        self.put(off + 8, &size.to_le_bytes());
        self.put(off + 16, &kind.to_le_bytes());
        self.e820_count += 1;
        self.bytes[E820_ENTRIES_OFFSET] = self.e820_count as u8;
        Ok(())
    }

    /// Adds the memory map [`standard_e820`] gives for the RAM regions.
    pub fn add_standard_e820(&mut self, ram: &[(u64, u64)]) -> Result<(), ArchError> {
        for (addr, size, kind) in standard_e820(ram) {
            self.add_e820(addr, size, kind)?;
        }
        Ok(())
    }

    /// The raw page.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..]
    }

    /// Writes the page at [`layout::ZERO_PAGE_ADDR`].
    pub fn write_to(&self, mem: &GuestMemoryMmap) -> Result<(), ArchError> {
        mem.write_slice(self.as_bytes(), GuestAddress(layout::ZERO_PAGE_ADDR))
            .map_err(|source| ArchError::GuestWrite {
                what: "zero page",
                addr: layout::ZERO_PAGE_ADDR,
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use linux_loader::loader::bootparam::{boot_params, setup_header};
    use std::mem::offset_of;

    #[test]
    fn offsets_match_linux_struct() {
        assert_eq!(offset_of!(boot_params, e820_entries), E820_ENTRIES_OFFSET);
        assert_eq!(
            offset_of!(boot_params, acpi_rsdp_addr),
            ACPI_RSDP_ADDR_OFFSET
        );
        assert_eq!(offset_of!(boot_params, hdr), SETUP_HEADER_OFFSET);
        assert_eq!(offset_of!(boot_params, e820_table), E820_TABLE_OFFSET);
        let h = SETUP_HEADER_OFFSET;
        assert_eq!(h + offset_of!(setup_header, boot_flag), BOOT_FLAG_OFFSET);
        assert_eq!(h + offset_of!(setup_header, header), HEADER_MAGIC_OFFSET);
        assert_eq!(
            h + offset_of!(setup_header, type_of_loader),
            TYPE_OF_LOADER_OFFSET
        );
        assert_eq!(
            h + offset_of!(setup_header, ramdisk_image),
            RAMDISK_IMAGE_OFFSET
        );
        assert_eq!(
            h + offset_of!(setup_header, ramdisk_size),
            RAMDISK_SIZE_OFFSET
        );
        assert_eq!(
            h + offset_of!(setup_header, cmd_line_ptr),
            CMD_LINE_PTR_OFFSET
        );
        assert_eq!(
            h + offset_of!(setup_header, kernel_alignment),
            KERNEL_ALIGNMENT_OFFSET
        );
        assert_eq!(
            h + offset_of!(setup_header, cmdline_size),
            CMDLINE_SIZE_OFFSET
        );
        assert_eq!(std::mem::size_of::<boot_params>(), 4096);
    }

    #[test]
    fn setup_header_then_loader_fields() {
        let mut hdr = vec![0x11u8; std::mem::size_of::<setup_header>()];
        hdr[TYPE_OF_LOADER_OFFSET - SETUP_HEADER_OFFSET] = 0;
        let mut zp = ZeroPage::new();
        zp.set_setup_header(&hdr).unwrap();
        zp.set_cmdline(0x20000, 5);
        zp.set_acpi_rsdp(0xe0000);
        let b = zp.as_bytes();
        assert_eq!(b[TYPE_OF_LOADER_OFFSET], 0xff);
        assert_eq!(b[SETUP_HEADER_OFFSET], 0x11);
        assert_eq!(
            &b[CMD_LINE_PTR_OFFSET..CMD_LINE_PTR_OFFSET + 4],
            &0x20000u32.to_le_bytes()
        );
        assert_eq!(
            &b[ACPI_RSDP_ADDR_OFFSET..ACPI_RSDP_ADDR_OFFSET + 8],
            &0xe0000u64.to_le_bytes()
        );
        assert!(zp.set_setup_header(&[0u8; 512]).is_err());
    }

    #[test]
    fn e820_map_around_the_mmio_gap() {
        let ram = layout::ram_regions(4 << 30);
        let map = standard_e820(&ram);
        assert_eq!(
            map,
            vec![
                (0, SYSTEM_MEM_START, E820_RAM),
                (
                    SYSTEM_MEM_START,
                    SYSTEM_MEM_END - SYSTEM_MEM_START,
                    E820_RESERVED
                ),
                (HIMEM_START, layout::MMIO32_START - HIMEM_START, E820_RAM),
                (1 << 32, (4 << 30) - layout::MMIO32_START, E820_RAM),
            ]
        );
        // The ACPI tables and the MP table sit in the reserved range.
        for addr in [layout::RSDP_ADDR, layout::ACPI_TABLES_END - 1] {
            assert!((SYSTEM_MEM_START..SYSTEM_MEM_END).contains(&addr));
        }
    }

    #[test]
    fn e820_map() {
        let mut zp = ZeroPage::new();
        zp.add_standard_e820(&[(0, 128 << 20)]).unwrap();
        let b = zp.as_bytes();
        assert_eq!(b[E820_ENTRIES_OFFSET], 3);
        let entry = |i: usize| {
            let o = E820_TABLE_OFFSET + i * E820_ENTRY_SIZE;
            (
                u64::from_le_bytes(b[o..o + 8].try_into().unwrap()),
                u64::from_le_bytes(b[o + 8..o + 16].try_into().unwrap()),
                u32::from_le_bytes(b[o + 16..o + 20].try_into().unwrap()),
            )
        };
        assert_eq!(entry(0), (0, SYSTEM_MEM_START, E820_RAM));
        assert_eq!(entry(2), (HIMEM_START, (128 << 20) - HIMEM_START, E820_RAM));
    }
}
