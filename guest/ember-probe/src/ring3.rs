//! Ring 3 for the agent: on this project's KVM, guest ring-0 code is emulated (~1000x slower
//! than ring 3), so everything per request (virtqueues, vsock, the agent protocol, hashing)
//! runs in user mode and the kernel only takes interrupts and sleeps.
//!
//! - [`setup`] (ring 0, once): a GDT with user segments and a TSS (RSP0 = a dedicated
//!   interrupt stack), the user bit on the low 8 MiB and the APIC/MMIO window, and two IDT
//!   gates: [`VIRTIO_VECTOR`] (any virtio interrupt: set [`PROBE_WORK`], EOI) and #UD.
//! - `probe_enter_user` (ring 0): saves the kernel's callee-saved registers and stack
//!   pointer, `iretq`s to `probe_user_main` on a fresh user stack with IF=1 and IOPL=3.
//! - The agent returns by executing `ud2` at `probe_user_exit`: on this project's KVM,
//!   `int n` from ring 3 raises #UD and `syscall` does not change the privilege level, but
//!   exceptions are delivered properly. The #UD handler recognises the address, restores the
//!   kernel stack and "returns" from `probe_enter_user` with interrupts off (any other #UD is
//!   reported as an exception). Interrupts during user mode run their handlers on the TSS
//!   stack and resume the agent.
//!
//! Measured per wake-up (see shared/notes/kvm-on-these-machines.md): interrupt to kernel loop
//! ~16 us, `iretq` into ring 3 ~28 us, the #UD return ~31 us, the agent's work ~1-2 us plus
//! ~11 us per queue notification (an ioeventfd write from ring 3).

use core::arch::{asm, global_asm};
use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use crate::layout::USER_STACK_TOP;

/// The vector all virtio-mmio interrupts are routed to.
pub const VIRTIO_VECTOR: u64 = 0x25;

const KERNEL_CS: u64 = 0x08;
/// User data selector (RPL 3).
const USER_SS: u64 = 0x1b;
/// User code selector (RPL 3).
const USER_CS: u64 = 0x23;
const TSS_SEL: u16 = 0x28;

#[repr(C, align(16))]
struct Gdt([u64; 7]);
static mut GDT: Gdt = Gdt([
    0,
    0x00af_9b00_0000_ffff, // kernel code, 64-bit
    0x00cf_9300_0000_ffff, // kernel data
    0x00cf_f300_0000_ffff, // user data, DPL 3
    0x00af_fb00_0000_ffff, // user code, 64-bit, DPL 3
    0,                     // TSS (low), filled in by `setup`
    0,                     // TSS (high)
]);

#[repr(C, align(16))]
struct Tss([u8; 104]);
static mut TSS: Tss = Tss([0; 104]);

#[repr(C, align(16))]
struct Stack([u8; 16384]);
/// Where interrupts taken in ring 3 (and the return gate) run.
static mut INTERRUPT_STACK: Stack = Stack([0; 16384]);

/// Set by the virtio interrupt handler: the agent has work.
#[unsafe(no_mangle)]
pub static mut PROBE_WORK: u64 = 1;
/// The kernel's stack pointer while the agent runs.
#[unsafe(no_mangle)]
static mut PROBE_KERNEL_RSP: u64 = 0;
/// The agent's initial stack pointer.
#[unsafe(no_mangle)]
static PROBE_USER_RSP: u64 = USER_STACK_TOP as u64;

global_asm!(
    r#"
.section .text
.global probe_enter_user
probe_enter_user:
    push rbx
    push rbp
    push r12
    push r13
    push r14
    push r15
    mov [rip + PROBE_KERNEL_RSP], rsp
    push 0x1b
    push qword ptr [rip + PROBE_USER_RSP]
    push 0x3202
    push 0x23
    lea rax, [rip + probe_user_start]
    push rax
    iretq

probe_user_start:
    call probe_user_main
.global probe_user_exit
probe_user_exit:
    ud2

// #UD: the agent's way back (at `probe_user_exit`), or a real invalid opcode.
.global probe_ud_isr
probe_ud_isr:
    push rax
    lea rax, [rip + probe_user_exit]
    cmp [rsp + 8], rax
    pop rax
    je probe_user_return
    push 6
    jmp probe_exc_common

.global probe_user_return
probe_user_return:
    mov rsp, [rip + PROBE_KERNEL_RSP]
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbp
    pop rbx
    ret

.global probe_virtio_isr
probe_virtio_isr:
    mov qword ptr [rip + PROBE_WORK], 1
    push rax
    mov eax, 0xfee000b0
    mov dword ptr [rax], 0
    pop rax
    iretq
"#
);

unsafe extern "C" {
    /// Runs the agent in ring 3 until it returns through `probe_user_exit`.
    pub fn probe_enter_user();
    fn probe_ud_isr();
    fn probe_virtio_isr();
}

const _: () = assert!(USER_SS == 0x1b && USER_CS == 0x23 && KERNEL_CS == 0x08);

#[repr(C, packed)]
struct DescriptorPointer {
    limit: u16,
    base: u64,
}

/// Loads the GDT and TSS, installs the two gates and makes the low 8 MiB and the
/// 0xc000_0000.. window user-accessible (the window's page directory entries carry the user
/// bit already, see `map_apic_range`).
///
/// # Safety
/// Called once at boot with interrupts disabled, after the IDT and the high page directory
/// are set up; `set_gate(vector, handler, dpl)` writes an IDT entry.
pub unsafe fn setup(set_gate: unsafe fn(usize, u64, u8)) {
    // SAFETY: boot code owns these statics; interrupts are off.
    unsafe {
        let tss = addr_of_mut!(TSS);
        let rsp0 = addr_of!(INTERRUPT_STACK) as u64 + 16384;
        let bytes = &mut (*tss).0;
        bytes[4..12].copy_from_slice(&rsp0.to_le_bytes());
        // I/O map base past the limit: no bitmap (IOPL 3 governs port access).
        bytes[102..104].copy_from_slice(&104u16.to_le_bytes());
        let base = tss as u64;
        let limit = 103u64;
        let gdt = addr_of_mut!(GDT);
        (*gdt).0[5] = (limit & 0xffff)
            | ((base & 0xff_ffff) << 16)
            | (0x89u64 << 40)
            | (((base >> 24) & 0xff) << 56);
        (*gdt).0[6] = base >> 32;
        let ptr = DescriptorPointer {
            limit: (7 * 8 - 1) as u16,
            base: gdt as u64,
        };
        asm!("lgdt [{}]", in(reg) &ptr, options(nostack, readonly));
        asm!("ltr {0:x}", in(reg) TSS_SEL, options(nostack, nomem));

        set_gate(
            VIRTIO_VECTOR as usize,
            probe_virtio_isr as *const () as u64,
            0,
        );
        set_gate(6, probe_ud_isr as *const () as u64, 0);

        // User bit (4) on the path to the first 8 MiB and to the 3-4 GiB window.
        let cr3: u64;
        asm!("mov {}, cr3", out(reg) cr3, options(nomem, nostack));
        let pml4 = (cr3 & !0xfff) as *mut u64;
        write_volatile(pml4, read_volatile(pml4) | 4);
        let pdpt = (read_volatile(pml4) & 0x000f_ffff_ffff_f000) as *mut u64;
        write_volatile(pdpt, read_volatile(pdpt) | 4);
        let high = pdpt.add(3);
        write_volatile(high, read_volatile(high) | 4);
        let pd = (read_volatile(pdpt) & 0x000f_ffff_ffff_f000) as *mut u64;
        for i in 0..4 {
            let e = pd.add(i);
            write_volatile(e, read_volatile(e) | 4);
        }
        asm!("mov {tmp}, cr3", "mov cr3, {tmp}", tmp = out(reg) _, options(nostack));
    }
}

/// True (and cleared) if a virtio interrupt arrived since the last call.
pub fn take_work() -> bool {
    // SAFETY: a plain word shared with the interrupt handler, read and cleared with
    // interrupts disabled.
    unsafe {
        let p = addr_of_mut!(PROBE_WORK);
        if read_volatile(p) != 0 {
            write_volatile(p, 0);
            true
        } else {
            false
        }
    }
}
