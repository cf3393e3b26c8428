//! The Intel MultiProcessor Specification 1.4 table, so a Linux guest finds every vCPU, the
//! IOAPIC and the legacy interrupt routing without ACPI. Written at [`MPTABLE_ADDR`] (the
//! start of the reserved EBDA area, which Linux scans) as raw little-endian bytes.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::ArchError;
use super::layout::{APIC_ADDR, IOAPIC_ADDR, SYSTEM_MEM_START, VMGENID_ADDR};

/// Where the MP floating pointer goes.
pub const MPTABLE_ADDR: u64 = SYSTEM_MEM_START;
/// Most vCPUs an MP table can describe here (APIC ids are 8 bits, one is the IOAPIC's).
pub const MAX_CPUS: u8 = 254;
/// IOAPIC pins described (identity-mapped ISA/GSI 0..=23, like KVM's default routing).
const IOAPIC_PINS: u8 = 24;
const APIC_VERSION: u8 = 0x14;

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |a, b| a.wrapping_add(*b))
        .wrapping_neg()
}

/// Builds the floating pointer and configuration table for `num_cpus` vCPUs located at `addr`.
pub fn build(num_cpus: u8, addr: u64) -> Result<Vec<u8>, ArchError> {
    if num_cpus == 0 || num_cpus > MAX_CPUS {
        return Err(ArchError::Invalid(format!(
            "MP table: {num_cpus} vCPUs not supported"
        )));
    }
    let ioapic_id = num_cpus + 1;
    let table_addr = addr + 16;
    let mut entries: Vec<u8> = Vec::with_capacity(64 + 20 * usize::from(num_cpus) + 8 * 28);
    let mut count: u16 = 0;
    for cpu in 0..num_cpus {
        let flags = 0x1 | if cpu == 0 { 0x2 } else { 0 }; // enabled, boot processor
        entries.extend_from_slice(&[0, cpu, APIC_VERSION, flags]);
        entries.extend_from_slice(&0x600u32.to_le_bytes()); // family 6 signature
        entries.extend_from_slice(&0x201u32.to_le_bytes()); // FPU | APIC feature flags
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[1, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[2, ioapic_id, APIC_VERSION, 1]);
    entries.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    count += 1;
    for irq in 0..IOAPIC_PINS {
        // I/O interrupt: INT type, conforming polarity/trigger, ISA bus irq -> IOAPIC pin.
        entries.extend_from_slice(&[3, 0, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    // Local interrupts: ExtINT on LINT0 of the BSP, NMI on LINT1 of all.
    entries.extend_from_slice(&[4, 3, 0, 0, 0, 0, 0, 0]);
    entries.extend_from_slice(&[4, 1, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let mut table = Vec::with_capacity(44 + entries.len());
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&((44 + entries.len()) as u16).to_le_bytes());
    table.push(4); // spec revision 1.4
    table.push(0); // checksum, below
    table.extend_from_slice(b"EMBER   ");
    table.extend_from_slice(b"EMBER-VMM   ");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table
    table.extend_from_slice(&0u16.to_le_bytes());
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&APIC_ADDR.to_le_bytes());
    table.extend_from_slice(&[0, 0, 0, 0]); // extended table length, checksum, reserved
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut out = Vec::with_capacity(16 + table.len());
    out.extend_from_slice(b"_MP_");
    out.extend_from_slice(&(table_addr as u32).to_le_bytes());
    out.extend_from_slice(&[1, 4, 0, 0, 0, 0, 0, 0]);
    out[10] = checksum(&out);
    out.extend_from_slice(&table);
    if addr + out.len() as u64 > VMGENID_ADDR {
        return Err(ArchError::Invalid(
            "MP table does not fit below the VM generation id's page".into(),
        ));
    }
    Ok(out)
}

/// Writes the MP table for `num_cpus` vCPUs.
pub fn write(mem: &GuestMemoryMmap, num_cpus: u8) -> Result<(), ArchError> {
    let bytes = build(num_cpus, MPTABLE_ADDR)?;
    mem.write_slice(&bytes, GuestAddress(MPTABLE_ADDR))
        .map_err(|source| ArchError::GuestWrite {
            what: "MP table",
            addr: MPTABLE_ADDR,
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_and_counts() {
        for n in [1u8, 2, 32] {
            let t = build(n, MPTABLE_ADDR).unwrap();
            assert_eq!(&t[..4], b"_MP_");
            assert_eq!(t[..16].iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
            let table = &t[16..];
            assert_eq!(&table[..4], b"PCMP");
            let len = u16::from_le_bytes([table[4], table[5]]) as usize;
            assert_eq!(len, table.len());
            assert_eq!(table.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
            let count = u16::from_le_bytes([table[34], table[35]]);
            assert_eq!(count, u16::from(n) + 2 + 24 + 2);
            let cpus = table[44..]
                .chunks(20)
                .take(n as usize)
                .filter(|e| e[0] == 0)
                .count();
            assert_eq!(cpus, n as usize);
        }
        assert!(build(0, MPTABLE_ADDR).is_err());
        assert!(build(255, MPTABLE_ADDR).is_err());
    }
}
