//! Identity page tables for the first GiB (2 MiB pages), as Firecracker builds them.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::ArchError;
use super::layout::{PDE_ADDR, PDPTE_ADDR, PML4_ADDR};

/// Writes PML4 -> PDPT -> PD mapping guest-virtual 0..1 GiB to the same physical addresses.
pub fn write_identity_page_tables(mem: &GuestMemoryMmap) -> Result<(), ArchError> {
    let write = |val: u64, addr: u64| {
        mem.write_obj(val, GuestAddress(addr))
            .map_err(|source| ArchError::GuestWrite {
                what: "page tables",
                addr,
                source,
            })
    };
    write(PDPTE_ADDR | 0x03, PML4_ADDR)?;
    write(PDE_ADDR | 0x03, PDPTE_ADDR)?;
    let mut pd = [0u8; 4096];
    for (i, chunk) in pd.chunks_exact_mut(8).enumerate() {
        // present | writable | 2 MiB page
        chunk.copy_from_slice(&(((i as u64) << 21) | 0x83).to_le_bytes());
    }
    mem.write_slice(&pd, GuestAddress(PDE_ADDR))
        .map_err(|source| ArchError::GuestWrite {
            what: "page directory",
            addr: PDE_ADDR,
            source,
        })
}
