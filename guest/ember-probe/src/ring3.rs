//! Ring 3 for the agent: on this project's KVM, guest ring-0 code is emulated (~1000x slower
//! than ring 3), so everything per request (virtqueues, vsock, the agent protocol, hashing)
//! runs in user mode and the kernel only takes interrupts and sleeps.
//!
//! - [`setup`] (ring 0, once): a GDT with user segments and a TSS (RSP0 = a dedicated
//!   interrupt stack), the user bit on the low 8 MiB and the APIC/MMIO window, and two IDT
//!   gates: [`VIRTIO_VECTOR`] (any virtio interrupt) and #UD.
//! - `probe_enter_user` (ring 0, from the kernel loop): saves the kernel's callee-saved
//!   registers and stack pointer, `iretq`s to `probe_user_main` on a fresh user stack with
//!   IF=1 and IOPL=3.
//! - The agent goes idle by executing `ud2` at `probe_user_exit`: on this project's KVM,
//!   `int n` from ring 3 raises #UD and `syscall` does not change the privilege level, but
//!   exceptions are delivered properly. The #UD handler recognises the address and runs the
//!   idle loop right there, under the agent's frame: `sti; hlt` until something happens. A
//!   virtio interrupt taken in that `hlt` drops its own frame and `iretq`s from the #UD frame
//!   straight back into the agent (past the `ud2`, which loops to the agent's entry). When
//!   the kernel loop has duties (a count report, a key press, serial input) the idle loop
//!   restores the kernel stack and "returns" from `probe_enter_user` with interrupts off.
//!   Any other #UD is reported as an exception. Interrupts during user mode run their
//!   handlers on the TSS stack and resume the agent; a virtio one sets [`PROBE_WORK`] so the
//!   idle loop resumes the agent at once.
//!
//! Per request wake-up, ring 0 executes ~20 (emulated) instructions: the interrupt, EOI, one
//! `iretq` into ring 3, and the `ud2` back into `hlt`. The earlier design (interrupt handler
//! `iretq` to a kernel loop, which entered ring 3 and was returned to by the #UD handler)
//! measured ~16 us + ~28 us + ~31 us of ring-0 time per wake-up (see
//! shared/notes/kvm-on-these-machines.md); the agent's own work is ~1-2 us plus ~11 us per
//! queue notification (an ioeventfd write from ring 3).

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

/// Set by the virtio interrupt handler when it interrupts the agent itself: the idle loop
/// then resumes the agent at once.
#[unsafe(no_mangle)]
pub static mut PROBE_WORK: u64 = 0;
/// The count at which the kernel loop wants to print its next report (`u64::MAX`: never);
/// the agent's idle loop leaves for the kernel loop once the counter reaches it.
#[unsafe(no_mangle)]
pub static mut PROBE_NEXT_REPORT: u64 = u64::MAX;
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
    jmp probe_user_start

// #UD: the agent going idle (at `probe_user_exit`), or a real invalid opcode.
.global probe_ud_isr
probe_ud_isr:
    push rax
    lea rax, [rip + probe_user_exit]
    cmp [rsp + 8], rax
    pop rax
    je probe_agent_idle
    push 6
    jmp probe_exc_common

// The idle loop, on the interrupt stack under the agent's #UD frame (no other pushes: the
// virtio ISR relies on it). General registers are free: nothing of the agent's is live at
// `probe_user_exit`. Leaves to the kernel loop when it has duties (a count report due, a
// key press, serial input), resumes the agent when a virtio interrupt came, else sleeps.
probe_agent_idle:
    mov rax, [rip + PROBE_STATE + 8]
    cmp rax, [rip + PROBE_NEXT_REPORT]
    jae probe_user_return
    mov rax, [rip + PROBE_STATE + 40]
    or rax, [rip + PROBE_STATE + 48]
    jnz probe_user_return
    cmp qword ptr [rip + PROBE_WORK], 0
    jne 2f
    sti
    hlt
.global probe_idle_woken
probe_idle_woken:
    cli
    jmp probe_agent_idle
2:  mov qword ptr [rip + PROBE_WORK], 0
    add qword ptr [rsp], 2
    iretq

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

// A virtio interrupt. Taken in the idle loop's `hlt` (the common case), it drops its own
// frame and resumes the agent straight from the #UD frame underneath: one `iretq`, straight
// to ring 3. Anywhere else it flags the work for the agent's next look.
.global probe_virtio_isr
probe_virtio_isr:
    push rax
    mov eax, 0xfee000b0
    mov dword ptr [rax], 0
    lea rax, [rip + probe_idle_woken]
    cmp [rsp + 8], rax
    jne 1f
    // Back to the idle loop's stack pointer (the CPU may have aligned it before pushing).
    mov rsp, [rsp + 32]
    add qword ptr [rsp], 2
    iretq
1:  mov qword ptr [rip + PROBE_WORK], 1
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
