//! The boot GDTs (null, code, data, TSS: 64-bit code for the 64-bit entry, 32-bit code for
//! PVH) and the KVM segment descriptors built from them.

use kvm_bindings::kvm_segment;

/// Packs a GDT entry from flags (access byte in bits 0..8, flags nibble in 12..16), base and
/// limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The boot GDT: selector 0x08 is 64-bit code, 0x10 data, 0x18 the TSS (Firecracker's).
pub const BOOT_GDT: [u64; 4] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];

/// The GDT for a PVH entry: selector 0x08 is flat 32-bit code, 0x10 flat data, 0x18 a TSS.
pub const PVH_GDT: [u64; 4] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0xc09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x008b, 0, 0x67),
];

/// The `kvm_segment` equivalent of GDT entry `entry` at `index`.
pub fn segment_from_entry(entry: u64, index: u16) -> kvm_segment {
    let bit = |n: u32| ((entry >> n) & 1) as u8;
    let granularity = bit(55);
    let raw_limit = (((entry >> 48) & 0xf) << 16 | (entry & 0xffff)) as u32;
    let present = bit(47);
    kvm_segment {
        base: ((entry >> 32) & 0xff00_0000) | ((entry >> 16) & 0x00ff_ffff),
        limit: if granularity == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g: granularity,
        avl: bit(52),
        padding: 0,
        unusable: u8::from(present == 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_segment_is_64_bit() {
        let cs = segment_from_entry(BOOT_GDT[1], 1);
        assert_eq!(
            (cs.selector, cs.l, cs.db, cs.present, cs.s),
            (8, 1, 0, 1, 1)
        );
        assert_eq!(cs.type_, 0xb);
        assert_eq!(cs.limit, 0xffff_ffff);
        let ds = segment_from_entry(BOOT_GDT[2], 2);
        assert_eq!((ds.selector, ds.db, ds.type_), (0x10, 1, 3));
        let cs32 = segment_from_entry(PVH_GDT[1], 1);
        assert_eq!((cs32.l, cs32.db, cs32.limit), (0, 1, 0xffff_ffff));
        let null = segment_from_entry(BOOT_GDT[0], 0);
        assert_eq!(null.unusable, 1);
    }
}
