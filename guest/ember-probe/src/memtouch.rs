//! The agent's `memtouch MIB` built-in (ring 3): makes the host really allocate guest memory.
//!
//! It writes one byte in every 4 KiB page of `MIB` mebibytes of guest RAM from [`BASE`]
//! (4 MiB, past everything the probe itself uses, see [`layout`](crate::layout)) upward and
//! answers `touched N MiB\n`. Each first write to a page makes the host back it: a fresh
//! anonymous page after a boot, a copy-on-write copy of a restored snapshot's page. So a
//! guest can drive its VMM's memory use (and its cgroup's) up on request, e.g. past a memory
//! limit.
//!
//! How much there is: the end of the e820 usable-RAM entry that holds [`BASE`], capped at
//! 1 GiB — the loader's identity map covers the first GiB only (and the probe reuses the
//! second GiB's page-directory slot for its alias of the APIC window). The map is the Linux
//! zero page's (`rsi` at entry: `e820_entries` at 0x1e8, 20-byte entries from 0x2d0); ring 0
//! only records where the zero page is ([`init`], one store at boot), ring 3 reads the map
//! when asked (ring-0 instructions are slow on some hosts, see [`crate::ring3`]). A request
//! for more than there is is refused (exit 1, stderr saying how much there is) and touches
//! nothing.
//!
//! How ring 3 may write there: the loader maps the first GiB with 2 MiB pages, present and
//! writable but supervisor-only; `ring3::setup` swaps in a page directory with the same
//! mapping and the user bit on every entry (and sets it on the PML4 and PDPT entries above),
//! so the agent reaches all of the guest's RAM below 1 GiB, not just the probe's buffers.
//! (Nothing is protected from ring 3 in the probe anyway: the page tables and the kernel's
//! data lie in its low memory.) A snapshot carries the page tables and the zero page along,
//! and a restored VM has the snapshot's memory size.

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

/// The first byte `memtouch` writes: 4 MiB, past the probe's own memory.
pub const BASE: u64 = 4 << 20;
/// The highest address the identity map reaches (1 GiB).
pub const IDENTITY_END: u64 = 1 << 30;
/// One page.
const PAGE: u64 = 4096;

/// The Linux zero page the loader passed (null: none), recorded at boot for [`ram_end`].
static mut ZERO_PAGE: u64 = 0;

/// Records where the zero page is (ring 0, at boot).
///
/// # Safety
/// Called once, before the agent runs; `zero_page` is null or the loader's zero page, which
/// stays in place, identity-mapped (ember-vmm and Firecracker put it at 0x7000, below 1 MiB,
/// where the probe writes only two page-table entries).
pub unsafe fn init(zero_page: *const u8) {
    // SAFETY: boot code, one CPU, before the agent reads it.
    unsafe { write_volatile(addr_of_mut!(ZERO_PAGE), zero_page as u64) };
}

/// The end of the guest RAM `memtouch` may write: the end of the usable-RAM e820 entry that
/// holds [`BASE`], at most [`IDENTITY_END`]; 0 without a zero page or such an entry.
pub fn ram_end() -> u64 {
    // SAFETY: written once at boot before the agent runs.
    let zero_page = unsafe { read_volatile(addr_of!(ZERO_PAGE)) } as *const u8;
    if zero_page.is_null() {
        return 0;
    }
    // SAFETY: the zero page is 4 KiB, identity-mapped and user-accessible (below 1 GiB); the
    // e820 table (at most 128 entries of 20 bytes from 0x2d0) lies inside it, and the
    // fields are read unaligned.
    unsafe {
        let count = usize::from(read_volatile(zero_page.add(0x1e8))).min(128);
        let mut end = 0;
        for i in 0..count {
            let e = zero_page.add(0x2d0 + 20 * i);
            let addr = read_volatile(e as *const [u8; 8]);
            let size = read_volatile(e.add(8) as *const [u8; 8]);
            let kind = read_volatile(e.add(16) as *const [u8; 4]);
            let (addr, size) = (u64::from_le_bytes(addr), u64::from_le_bytes(size));
            let top = addr.saturating_add(size);
            if u32::from_le_bytes(kind) == 1 && addr <= BASE && BASE < top {
                end = top.min(IDENTITY_END);
            }
        }
        end
    }
}

/// Mebibytes of RAM from [`BASE`] to the end of usable RAM.
pub fn available_mib() -> u64 {
    ram_end().saturating_sub(BASE) >> 20
}

/// Writes one byte in every page of `mib` MiB from [`BASE`]; false (nothing written) if the
/// guest has less than that above [`BASE`].
pub fn touch(mib: u64) -> bool {
    if mib > available_mib() {
        return false;
    }
    let end = BASE + (mib << 20);
    let mut at = BASE;
    while at < end {
        // SAFETY: `at` is in usable guest RAM below `ram_end` (checked above), identity-mapped
        // and user-writable (`ring3::setup`), and used by nothing else: the probe's own
        // memory ends below BASE (layout.rs).
        unsafe { write_volatile(at as *mut u8, 1) };
        at += PAGE;
    }
    true
}
