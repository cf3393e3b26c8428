//! Initial vCPU registers: for the 64-bit boot, general registers (entry point, stack, zero
//! page in `rsi`) and long-mode segments/paging; for PVH, `ebx` = start info and flat 32-bit
//! protected mode without paging; for both, FPU defaults and the LAPIC's LINT pins.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::ArchError;
use super::gdt::{BOOT_GDT, PVH_GDT, segment_from_entry};
use super::layout::{BOOT_STACK_POINTER, GDT_ADDR, IDT_ADDR, PML4_ADDR, ZERO_PAGE_ADDR};

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR0_ET: u64 = 0x10;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> ArchError {
    move |source| ArchError::Kvm { what, source }
}

/// Writes the boot GDT and an empty IDT into guest memory.
pub fn write_gdt_and_idt(mem: &GuestMemoryMmap) -> Result<(), ArchError> {
    write_gdt_and_idt_from(mem, &BOOT_GDT)
}

/// Writes `gdt` and an empty IDT into guest memory.
pub fn write_gdt_and_idt_from(mem: &GuestMemoryMmap, gdt: &[u64; 4]) -> Result<(), ArchError> {
    for (i, entry) in gdt.iter().enumerate() {
        let addr = GDT_ADDR + 8 * i as u64;
        mem.write_obj(*entry, GuestAddress(addr))
            .map_err(|source| ArchError::GuestWrite {
                what: "GDT",
                addr,
                source,
            })?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_ADDR))
        .map_err(|source| ArchError::GuestWrite {
            what: "IDT",
            addr: IDT_ADDR,
            source,
        })
}

/// Sets the general registers: `rip` = entry, boot stack, `rsi` = zero page.
pub fn setup_regs(vcpu: &VcpuFd, entry: u64) -> Result<(), ArchError> {
    let regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_ADDR,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(kvm("KVM_SET_REGS"))
}

/// Points the descriptor tables at the boot GDT (`gdt`, written at [`GDT_ADDR`]) and the empty
/// IDT, and loads code (entry 1), data (entry 2, every data segment) and the TSS (entry 3).
fn flat_segments(sregs: &mut kvm_sregs, gdt: &[u64]) {
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (gdt.len() * 8 - 1) as u16;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 7;
    let data = segment_from_entry(gdt[2], 2);
    sregs.cs = segment_from_entry(gdt[1], 1);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment_from_entry(gdt[3], 3);
}

/// Sets segments, descriptor tables and control registers for 64-bit mode with paging.
pub fn setup_sregs(vcpu: &VcpuFd) -> Result<(), ArchError> {
    let mut sregs = vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
    flat_segments(&mut sregs, &BOOT_GDT);
    sregs.cr0 |= X86_CR0_PE | X86_CR0_PG;
    sregs.cr3 = PML4_ADDR;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.efer |= EFER_LME | EFER_LMA;
    vcpu.set_sregs(&sregs).map_err(kvm("KVM_SET_SREGS"))
}

/// PVH entry registers: `rip` = the note's entry, `rbx` = the start info.
pub fn setup_pvh_regs(vcpu: &VcpuFd, entry: u64, start_info: u64) -> Result<(), ArchError> {
    let regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        rbx: start_info,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(kvm("KVM_SET_REGS"))
}

/// PVH entry state: 32-bit protected mode, flat segments from [`PVH_GDT`], no paging.
pub fn setup_pvh_sregs(vcpu: &VcpuFd) -> Result<(), ArchError> {
    let mut sregs = vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
    flat_segments(&mut sregs, &PVH_GDT);
    sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.efer = 0;
    vcpu.set_sregs(&sregs).map_err(kvm("KVM_SET_SREGS"))
}

/// Default x87/SSE control words.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), ArchError> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm("KVM_SET_FPU"))
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn lapic_reg(regs: &[std::os::raw::c_char; 1024], offset: usize) -> u32 {
    let b = |i: usize| regs[offset + i] as u8;
    u32::from_le_bytes([b(0), b(1), b(2), b(3)])
}

fn set_lapic_reg(regs: &mut [std::os::raw::c_char; 1024], offset: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().iter().enumerate() {
        regs[offset + i] = *byte as std::os::raw::c_char;
    }
}

/// LINT0 = ExtINT (legacy PIC), LINT1 = NMI, as a PC's BIOS leaves them.
pub fn setup_lint(vcpu: &VcpuFd) -> Result<(), ArchError> {
    let mut lapic = vcpu.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?;
    let lvt0 = lapic_reg(&lapic.regs, APIC_LVT0);
    set_lapic_reg(
        &mut lapic.regs,
        APIC_LVT0,
        (lvt0 & !0x700) | (APIC_MODE_EXTINT << 8),
    );
    let lvt1 = lapic_reg(&lapic.regs, APIC_LVT1);
    set_lapic_reg(
        &mut lapic.regs,
        APIC_LVT1,
        (lvt1 & !0x700) | (APIC_MODE_NMI << 8),
    );
    vcpu.set_lapic(&lapic).map_err(kvm("KVM_SET_LAPIC"))
}
