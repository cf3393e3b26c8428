//! ACPI tables for a Linux guest: RSDP, XSDT, a hardware-reduced FADT, the MADT (one local
//! APIC per vCPU and the IOAPIC) and a DSDT describing each virtio-mmio device, so a stock
//! kernel without `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES` finds its devices, and the legacy port
//! devices with their interrupts: a hardware-reduced platform has no legacy PIC, so Linux maps
//! no ISA interrupt unless a device's `_CRS` names it (without this COM1's interrupt never
//! arrives and userspace console output stalls).
//!
//! The DSDT also describes the VM generation id (`VGEN`, Microsoft's "Virtual Machine
//! Generation ID": `_HID "VMGENCTR"`, `_CID "VM_Gen_Counter"`, ACPICA upper-cases it to the
//! `VM_GEN_COUNTER` Linux's `vmgenid` driver matches; an `ADDR` method returning the id's
//! guest-physical address as a package of two 32-bit integers, low then high) and a Generic
//! Event Device (`GED_`, `ACPI0013`) whose one interrupt makes its `_EVT` method
//! `Notify (VGEN, 0x80)`: how the VMM tells the guest the id changed ([`VmGenIdDevice`]).
//!
//! Tables are built with rust-vmm's `acpi_tables` crate into byte vectors ([`build`]), then
//! written into the reserved BIOS area below 1 MiB ([`write()`]): the RSDP at [`RSDP_ADDR`]
//! (where Linux scans for it; the zero page also points at it) and the others after it. This
//! module only describes hardware; it does not create any.

use acpi_tables::Aml;
use acpi_tables::aml::{
    self, Arg, Device, EISAName, Equal, IO, If, Interrupt, Memory32Fixed, Method, Name, Notify,
    Package, Path, ResourceTemplate, Return,
};
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, MADT, ProcessorLocalApic,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::ArchError;
use super::layout::{ACPI_TABLES_END, ACPI_TABLES_START, APIC_ADDR, IOAPIC_ADDR, RSDP_ADDR};

const OEM_ID: [u8; 6] = *b"EMBER ";
const OEM_REVISION: u32 = 1;
/// The FADT's hypervisor vendor identity.
const HYPERVISOR_ID: u64 = u64::from_le_bytes(*b"EMBERVMM");
/// IA-PC boot architecture flags: no VGA (bit 2), no MSI (bit 3), no PCIe ASPM (bit 4). Not
/// set: legacy devices (bit 0), an 8042 (bit 1: Linux then skips probing the keyboard
/// controller; `reboot=k` still resets through it) and "no CMOS RTC" (bit 5: there is one).
const IAPC_BOOT_ARCH: u16 = (1 << 2) | (1 << 3) | (1 << 4);
/// The `_HID` Linux's virtio-mmio driver matches.
pub const VIRTIO_MMIO_HID: &str = "LNRO0005";
/// The VM generation id's `_HID` (what Linux's `vmgenid` driver and Firecracker use).
pub const VMGENID_HID: &str = "VMGENCTR";
/// Its `_CID` and `_DDN`, as Microsoft's specification spells them.
pub const VMGENID_CID: &str = "VM_Gen_Counter";
/// The Generic Event Device's `_HID`.
pub const GED_HID: &str = "ACPI0013";
/// ASL name of the VM generation id device.
pub const VMGENID_NAME: &str = "VGEN";
/// ASL name of the Generic Event Device.
pub const GED_NAME: &str = "GED_";
/// The notification value that tells a `vmgenid` driver to read the id again.
pub const VMGENID_NOTIFY: u8 = 0x80;

/// A virtio-mmio device to describe: its register window and interrupt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioDevice {
    /// Base of its register window.
    pub base: u64,
    /// Length of the window.
    pub len: u64,
    /// Its GSI (an IOAPIC pin), edge-triggered, active high.
    pub gsi: u32,
}

/// A legacy device on I/O ports, described by its PNP id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortDevice {
    /// Its ASL name (4 characters: `A-Z`, `0-9`, `_`).
    pub name: &'static str,
    /// Its PNP id (`PNP0501`: 16550 UART, `PNP0B00`: CMOS RTC), as an EISA id.
    pub pnp_id: &'static str,
    /// First port.
    pub port: u16,
    /// Number of ports.
    pub len: u8,
    /// Its GSI (edge-triggered, active high), if it interrupts. A device that never does
    /// should not name one: Linux would reserve that line unshared (the RTC's IRQ 8 then
    /// clashed with the fourth virtio device's GSI).
    pub gsi: Option<u32>,
}

/// The VM generation id to describe: where its 16 bytes are and the GSI of the Generic Event
/// Device that notifies the guest of a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmGenIdDevice {
    /// Guest-physical address of the 16-byte id.
    pub addr: u64,
    /// The GED's interrupt (edge-triggered, active high); `_EVT` is called with it.
    pub gsi: u32,
}

fn valid_name(name: &str) -> bool {
    name.len() == 4
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit()
}

fn valid_eisa_id(id: &str) -> bool {
    id.len() == 7
        && id.bytes().take(3).all(|b| b.is_ascii_uppercase())
        && id.bytes().skip(3).all(|b| b.is_ascii_hexdigit())
}

/// The tables as bytes, with the guest addresses they were built for.
#[derive(Debug, Clone)]
pub struct AcpiTables {
    /// The RSDP (to [`RSDP_ADDR`]).
    pub rsdp: Vec<u8>,
    /// `(address, bytes)` of each table the RSDP leads to: DSDT, FADT, MADT, XSDT.
    pub tables: Vec<(u64, Vec<u8>)>,
}

fn bytes_of(table: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    table.to_aml_bytes(&mut v);
    v
}

/// The ASL name of device `index`: `VR00`, `VR01`, ... (hex, so 256 fit).
fn device_name(index: usize) -> String {
    format!("VR{:02X}", index & 0xff)
}

/// `Device (VGEN)` with its ids and `ADDR`, and `Device (GED_)` whose `_EVT` notifies it.
fn vmgenid_aml(g: &VmGenIdDevice, body: &mut Vec<u8>) {
    // Linux's driver reads `ADDR` as a package of two integers: low and high 32 bits.
    let low = g.addr as u32;
    let high = (g.addr >> 32) as u32;
    let addr = Package::new(vec![&low, &high]);
    let ret = Return::new(&addr);
    let hid = Name::new(Path::new("_HID"), &VMGENID_HID);
    let cid = Name::new(Path::new("_CID"), &VMGENID_CID);
    let ddn = Name::new(Path::new("_DDN"), &VMGENID_CID);
    let addr = Method::new(Path::new("ADDR"), 0, false, vec![&ret]);
    Device::new(Path::new(VMGENID_NAME), vec![&hid, &cid, &ddn, &addr]).to_aml_bytes(body);

    let irq = Interrupt::new(true, true, false, false, g.gsi);
    let crs = ResourceTemplate::new(vec![&irq]);
    let target = Path::new(&format!("\\_SB_.{VMGENID_NAME}"));
    let notify = Notify::new(&target, &VMGENID_NOTIFY);
    // Linux's GED driver calls `_EVT` with the GSI that fired.
    let is_ours = Equal::new(&Arg(0), &g.gsi);
    let when = If::new(&is_ours, vec![&notify]);
    let hid = Name::new(Path::new("_HID"), &GED_HID);
    let crs = Name::new(Path::new("_CRS"), &crs);
    let evt = Method::new(Path::new("_EVT"), 1, true, vec![&when]);
    Device::new(Path::new(GED_NAME), vec![&hid, &crs, &evt]).to_aml_bytes(body);
}

/// The DSDT's AML body: `Scope (\_SB) { Device (name) { _HID, _UID, _CRS } ... }` for each
/// legacy port device, then `VRnn` for each virtio device, then the VM generation id and its
/// Generic Event Device if there is one. Every GSI named must be distinct (Linux reserves
/// each line unshared).
pub fn dsdt_aml(
    legacy: &[PortDevice],
    devices: &[MmioDevice],
    vmgenid: Option<&VmGenIdDevice>,
) -> Result<Vec<u8>, ArchError> {
    if devices.len() > 256 {
        return Err(ArchError::Invalid(format!(
            "ACPI: {} virtio devices do not fit the DSDT's names",
            devices.len()
        )));
    }
    let mut body = Vec::new();
    for (i, d) in legacy.iter().enumerate() {
        // EISAName::new and Path::new panic on malformed ids and names: checked here.
        if !valid_name(d.name)
            || !valid_eisa_id(d.pnp_id)
            || d.name.starts_with("VR")
            || d.name == VMGENID_NAME
            || d.name == GED_NAME
        {
            return Err(ArchError::Invalid(format!(
                "ACPI: bad legacy device name {:?} or PNP id {:?}",
                d.name, d.pnp_id
            )));
        }
        let io = IO::new(d.port, d.port, 1, d.len);
        let irq = d
            .gsi
            .map(|gsi| Interrupt::new(true, true, false, false, gsi));
        let mut resources: Vec<&dyn Aml> = vec![&io];
        if let Some(irq) = &irq {
            resources.push(irq);
        }
        let crs = ResourceTemplate::new(resources);
        let hid = Name::new(Path::new("_HID"), &EISAName::new(d.pnp_id));
        let uid = Name::new(Path::new("_UID"), &(i as u64));
        let crs = Name::new(Path::new("_CRS"), &crs);
        Device::new(Path::new(d.name), vec![&hid, &uid, &crs]).to_aml_bytes(&mut body);
    }
    for (i, d) in devices.iter().enumerate() {
        let base = u32::try_from(d.base).map_err(|_| {
            ArchError::Invalid(format!("ACPI: virtio window {:#x} above 4 GiB", d.base))
        })?;
        let len = u32::try_from(d.len)
            .map_err(|_| ArchError::Invalid(format!("ACPI: virtio window length {:#x}", d.len)))?;
        let uid = i as u64;
        let mem = Memory32Fixed::new(true, base, len);
        let irq = Interrupt::new(true, true, false, false, d.gsi);
        let crs = ResourceTemplate::new(vec![&mem, &irq]);
        let hid = Name::new(Path::new("_HID"), &VIRTIO_MMIO_HID);
        let uid = Name::new(Path::new("_UID"), &uid);
        let crs = Name::new(Path::new("_CRS"), &crs);
        let name = device_name(i);
        let dev = Device::new(Path::new(&name), vec![&hid, &uid, &crs]);
        dev.to_aml_bytes(&mut body);
    }
    if let Some(g) = vmgenid {
        let taken = legacy
            .iter()
            .filter_map(|d| d.gsi)
            .chain(devices.iter().map(|d| d.gsi));
        if g.addr.checked_add(16).is_none() || taken.clone().any(|gsi| gsi == g.gsi) {
            return Err(ArchError::Invalid(format!(
                "ACPI: VM generation id at {:#x} with GSI {} (GSIs in use: {:?})",
                g.addr,
                g.gsi,
                taken.collect::<Vec<_>>()
            )));
        }
        vmgenid_aml(g, &mut body);
    }
    Ok(aml::Scope::raw(Path::new("\\_SB_"), body))
}

/// Builds every table for `vcpus` vCPUs, the `legacy` port devices, the virtio `devices` and
/// the VM generation id, laid out from [`ACPI_TABLES_START`].
pub fn build(
    vcpus: u8,
    legacy: &[PortDevice],
    devices: &[MmioDevice],
    vmgenid: Option<&VmGenIdDevice>,
) -> Result<AcpiTables, ArchError> {
    if vcpus == 0 {
        return Err(ArchError::Invalid("ACPI: no vCPUs".into()));
    }
    let mut next = ACPI_TABLES_START;
    let mut tables = Vec::with_capacity(4);
    let mut place = |bytes: Vec<u8>| -> Result<u64, ArchError> {
        let addr = next;
        // 8-byte aligned, as the tables hold 64-bit fields.
        next = (addr + bytes.len() as u64).next_multiple_of(8);
        if next > ACPI_TABLES_END {
            return Err(ArchError::Invalid(
                "ACPI tables do not fit in the BIOS area".into(),
            ));
        }
        tables.push((addr, bytes));
        Ok(addr)
    };

    let mut dsdt = Sdt::new(*b"DSDT", 36, 2, OEM_ID, *b"EMBRDSDT", OEM_REVISION);
    dsdt.append_slice(&dsdt_aml(legacy, devices, vmgenid)?);
    let dsdt_addr = place(dsdt.as_slice().to_vec())?;

    let mut fadt = FADTBuilder::new(OEM_ID, *b"EMBRFACP", OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    fadt.iapc_boot_arch = IAPC_BOOT_ARCH.into();
    fadt.hypervisor_vendor_identity = HYPERVISOR_ID.into();
    let fadt_addr = place(bytes_of(&fadt.finalize()))?;

    let mut madt = MADT::new(
        OEM_ID,
        *b"EMBRAPIC",
        OEM_REVISION,
        LocalInterruptController::Address(APIC_ADDR),
    );
    for cpu in 0..vcpus {
        madt.add_structure(ProcessorLocalApic::new(cpu, cpu, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(0, IOAPIC_ADDR, 0));
    let madt_addr = place(bytes_of(&madt))?;

    let mut xsdt = XSDT::new(OEM_ID, *b"EMBRXSDT", OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let xsdt_addr = place(bytes_of(&xsdt))?;

    let rsdp = bytes_of(&Rsdp::new(OEM_ID, xsdt_addr));
    Ok(AcpiTables { rsdp, tables })
}

/// Builds the tables and writes them into guest memory; returns the RSDP's address.
pub fn write(
    mem: &GuestMemoryMmap,
    vcpus: u8,
    legacy: &[PortDevice],
    devices: &[MmioDevice],
    vmgenid: Option<&VmGenIdDevice>,
) -> Result<u64, ArchError> {
    let t = build(vcpus, legacy, devices, vmgenid)?;
    let put = |addr: u64, bytes: &[u8]| {
        mem.write_slice(bytes, GuestAddress(addr))
            .map_err(|source| ArchError::GuestWrite {
                what: "ACPI table",
                addr,
                source,
            })
    };
    put(RSDP_ADDR, &t.rsdp)?;
    for (addr, bytes) in &t.tables {
        put(*addr, bytes)?;
    }
    Ok(RSDP_ADDR)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEGACY: [PortDevice; 2] = [
        PortDevice {
            name: "COM1",
            pnp_id: "PNP0501",
            port: 0x3f8,
            len: 8,
            gsi: Some(4),
        },
        PortDevice {
            name: "RTC_",
            pnp_id: "PNP0B00",
            port: 0x70,
            len: 2,
            gsi: None,
        },
    ];

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    fn devices(n: usize) -> Vec<MmioDevice> {
        (0..n)
            .map(|i| MmioDevice {
                base: 0xd000_0000 + 0x1000 * i as u64,
                len: 0x1000,
                gsi: 5 + i as u32,
            })
            .collect()
    }

    fn find<'a>(t: &'a AcpiTables, sig: &[u8; 4]) -> (u64, &'a [u8]) {
        t.tables
            .iter()
            .find(|(_, b)| &b[..4] == sig)
            .map(|(a, b)| (*a, b.as_slice()))
            .unwrap()
    }

    fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], o: usize) -> u64 {
        u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
    }

    #[test]
    fn checksums_lengths_and_links() {
        let t = build(2, &LEGACY, &devices(3), None).unwrap();
        assert_eq!(&t.rsdp[..8], b"RSD PTR ");
        assert_eq!(sum(&t.rsdp[..20]), 0);
        assert_eq!(sum(&t.rsdp), 0);
        for (addr, b) in &t.tables {
            assert_eq!(sum(b), 0, "checksum of {:?}", std::str::from_utf8(&b[..4]));
            assert_eq!(u32_at(b, 4) as usize, b.len());
            assert!(*addr >= ACPI_TABLES_START && addr + (b.len() as u64) <= ACPI_TABLES_END);
            assert_eq!(addr % 8, 0);
        }
        let (xsdt_addr, xsdt) = find(&t, b"XSDT");
        assert_eq!(u64_at(&t.rsdp, 24), xsdt_addr);
        let (fadt_addr, fadt) = find(&t, b"FACP");
        let (madt_addr, _) = find(&t, b"APIC");
        assert_eq!(u64_at(xsdt, 36), fadt_addr);
        assert_eq!(u64_at(xsdt, 44), madt_addr);
        let (dsdt_addr, _) = find(&t, b"DSDT");
        // X_DSDT at 140; flags at 112 with HW_REDUCED_ACPI (bit 20).
        assert_eq!(u64_at(fadt, 140), dsdt_addr);
        assert_ne!(u32_at(fadt, 112) & (1 << 20), 0);
        // IAPC_BOOT_ARCH at 109: no "CMOS RTC not present" bit.
        assert_eq!(fadt[109] & (1 << 5), 0);
    }

    #[test]
    fn madt_lists_each_cpu_and_the_ioapic() {
        let t = build(4, &[], &[], None).unwrap();
        let (_, madt) = find(&t, b"APIC");
        assert_eq!(u32_at(madt, 36), APIC_ADDR);
        let mut cpus = Vec::new();
        let mut ioapics = 0;
        let mut o = 44;
        while o < madt.len() {
            let (kind, len) = (madt[o], madt[o + 1] as usize);
            match kind {
                0 => {
                    assert_eq!(u32_at(madt, o + 4), 1, "enabled");
                    cpus.push(madt[o + 3]);
                }
                1 => {
                    assert_eq!(u32_at(madt, o + 4), IOAPIC_ADDR);
                    ioapics += 1;
                }
                _ => panic!("unexpected MADT entry {kind}"),
            }
            o += len;
        }
        assert_eq!(cpus, vec![0, 1, 2, 3]);
        assert_eq!(ioapics, 1);
    }

    #[test]
    fn dsdt_describes_each_device() {
        let devs = devices(3);
        let t = build(1, &LEGACY, &devs, None).unwrap();
        let (_, dsdt) = find(&t, b"DSDT");
        let count = |needle: &[u8]| dsdt.windows(needle.len()).filter(|w| *w == needle).count();
        assert_eq!(count(b"LNRO0005\0"), 3);
        for (i, d) in devs.iter().enumerate() {
            assert_eq!(count(device_name(i).as_bytes()), 1);
            // Memory32Fixed: tag 0x86, length 9, read-write, base, length.
            let mut mem = vec![0x86, 9, 0, 1];
            mem.extend_from_slice(&(d.base as u32).to_le_bytes());
            mem.extend_from_slice(&(d.len as u32).to_le_bytes());
            assert_eq!(count(&mem), 1, "window of device {i}");
            // Extended interrupt: tag 0x89, length 6, consumer + edge, one GSI.
            let mut irq = vec![0x89, 6, 0, 0x03, 1];
            irq.extend_from_slice(&d.gsi.to_le_bytes());
            assert_eq!(count(&irq), 1, "interrupt of device {i}");
        }
        assert!(count(b"_SB_") >= 1);
        for d in LEGACY {
            assert_eq!(count(d.name.as_bytes()), 1);
            // IO descriptor: tag 0x47, decode16, min, max, alignment, length.
            let mut io = vec![0x47, 1];
            io.extend_from_slice(&d.port.to_le_bytes());
            io.extend_from_slice(&d.port.to_le_bytes());
            io.extend_from_slice(&[1, d.len]);
            assert_eq!(count(&io), 1, "ports of {}", d.name);
            if let Some(gsi) = d.gsi {
                let mut irq = vec![0x89, 6, 0, 0x03, 1];
                irq.extend_from_slice(&gsi.to_le_bytes());
                assert_eq!(count(&irq), 1, "interrupt of {}", d.name);
            }
        }
        // Only COM1 and the three virtio devices name an interrupt.
        assert_eq!(count(&[0x89, 6, 0, 0x03, 1]), 4);
        // PNP0501 as an EISA id: "PNP" compressed, product 0x0501.
        assert_eq!(count(&[0x0c, 0x41, 0xd0, 0x05, 0x01]), 1);
        // No devices: still a valid, empty scope.
        let t = build(1, &[], &[], None).unwrap();
        assert_eq!(sum(find(&t, b"DSDT").1), 0);
    }

    /// An AML integer at `b[*o..]` (ZeroOp, OneOp, byte, word, dword or qword constant).
    fn aml_int(b: &[u8], o: &mut usize) -> u64 {
        let (v, n) = match b[*o] {
            0x00 => (0, 1),
            0x01 => (1, 1),
            0x0a => (u64::from(b[*o + 1]), 2),
            0x0b => (u64::from(u16::from_le_bytes([b[*o + 1], b[*o + 2]])), 3),
            0x0c => (u64::from(u32_at(b, *o + 1)), 5),
            0x0e => (u64_at(b, *o + 1), 9),
            op => panic!("not an integer: {op:#x}"),
        };
        *o += n;
        v
    }

    /// The `(low, high)` that `Method (ADDR, 0) { Return (Package () { low, high }) }` gives.
    fn addr_package(dsdt: &[u8]) -> (u64, u64) {
        let at = dsdt.windows(4).position(|w| w == b"ADDR").unwrap();
        // Flags (no args, not serialized), ReturnOp, PackageOp, its length, 2 elements.
        assert_eq!(&dsdt[at + 4..at + 7], &[0x00, 0xa4, 0x12]);
        assert_eq!(dsdt[at + 8], 2);
        let mut o = at + 9;
        let low = aml_int(dsdt, &mut o);
        let high = aml_int(dsdt, &mut o);
        // The package's length byte covers exactly its contents.
        assert_eq!(usize::from(dsdt[at + 7]), o - (at + 7));
        (low, high)
    }

    #[test]
    fn dsdt_describes_the_vm_generation_id_and_its_event_device() {
        let devs = devices(2);
        for g in [
            VmGenIdDevice {
                addr: crate::arch::x86_64::layout::VMGENID_ADDR,
                gsi: 3,
            },
            VmGenIdDevice {
                addr: 0x1_0000_d008,
                gsi: 23,
            },
        ] {
            let t = build(1, &LEGACY, &devs, Some(&g)).unwrap();
            let (_, dsdt) = find(&t, b"DSDT");
            assert_eq!(sum(dsdt), 0);
            assert_eq!(u32_at(dsdt, 4) as usize, dsdt.len());
            let count = |needle: &[u8]| dsdt.windows(needle.len()).filter(|w| *w == needle).count();
            // Device (VGEN) { Name (_HID, "VMGENCTR"); Name (_CID, "VM_Gen_Counter");
            // Name (_DDN, "VM_Gen_Counter"); Method (ADDR) ... }
            assert_eq!(
                count(b"\x5b\x82"),
                2 + 2 + 2,
                "Device ops: legacy, virtio, VGEN, GED"
            );
            assert_eq!(count(b"VGEN"), 2, "the device and the Notify target");
            assert_eq!(count(b"_HID\x0dVMGENCTR\0"), 1);
            assert_eq!(count(b"_CID\x0dVM_Gen_Counter\0"), 1);
            assert_eq!(count(b"_DDN\x0dVM_Gen_Counter\0"), 1);
            let (low, high) = addr_package(dsdt);
            assert_eq!(low | (high << 32), g.addr);
            assert!(low <= u64::from(u32::MAX) && high <= u64::from(u32::MAX));
            // Device (GED_) { Name (_HID, "ACPI0013"); Name (_CRS, { Interrupt { gsi } });
            // Method (_EVT, 1, Serialized) { If (Arg0 == gsi) { Notify (\_SB_.VGEN, 0x80) } } }
            assert_eq!(count(b"GED_"), 1);
            assert_eq!(count(b"_HID\x0dACPI0013\0"), 1);
            let mut irq = vec![0x89, 6, 0, 0x03, 1];
            irq.extend_from_slice(&g.gsi.to_le_bytes());
            assert_eq!(count(&irq), 1, "the GED's interrupt");
            assert_eq!(count(b"_EVT\x09"), 1, "one argument, serialized");
            let mut evt = vec![0x93, 0x68, 0x0a, g.gsi as u8, 0x86, b'\\', 0x2e];
            evt.extend_from_slice(b"_SB_VGEN\x0a\x80");
            assert_eq!(
                count(&evt),
                1,
                "If (LEqual (Arg0, gsi)) Notify (\\_SB_.VGEN, 0x80)"
            );
        }
        // Without it: neither device.
        let t = build(1, &LEGACY, &devs, None).unwrap();
        let dsdt = find(&t, b"DSDT").1;
        assert!(!dsdt.windows(4).any(|w| w == b"VGEN" || w == b"GED_"));
        // Its GSI must be a line nobody else names.
        for gsi in [4, 5, 6] {
            let g = VmGenIdDevice { addr: 0xdf000, gsi };
            let e = build(1, &LEGACY, &devs, Some(&g)).unwrap_err();
            assert!(e.to_string().contains(&format!("GSI {gsi}")), "{e}");
        }
        // Legacy devices cannot take its names.
        let bad = PortDevice {
            name: "VGEN",
            ..LEGACY[0]
        };
        assert!(build(1, &[bad], &[], None).is_err());
    }

    #[test]
    fn refuses_what_does_not_fit() {
        assert!(build(0, &[], &[], None).is_err());
        let high = MmioDevice {
            base: 1 << 32,
            len: 0x1000,
            gsi: 5,
        };
        assert!(build(1, &[], &[high], None).is_err());
        let bad = PortDevice {
            name: "com1",
            ..LEGACY[0]
        };
        assert!(build(1, &[bad], &[], None).is_err());
        let bad = PortDevice {
            pnp_id: "PNP05",
            ..LEGACY[0]
        };
        assert!(build(1, &[bad], &[], None).is_err());
    }
}
