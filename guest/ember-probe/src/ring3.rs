//! Ring 3 for the agent: on this project's KVM, guest ring-0 code is emulated (~1000x slower
//! than ring 3), so everything per request (virtqueues, vsock, the agent protocol, hashing)
//! runs in user mode and the kernel only takes interrupts and sleeps.
//!
//! - [`setup`] (ring 0, once): a GDT with user segments and a TSS (RSP0 = a dedicated
//!   interrupt stack), the identity-mapped first GiB (all the RAM the probe and `memtouch`
//!   use, see [`crate::memtouch`]) and the APIC/MMIO window user-accessible, and two IDT
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
//!   handlers on the TSS stack and resume the agent; a virtio one raises [`ATTN_WORK`] so
//!   the idle loop resumes the agent at once.
//!
//! Per request wake-up, ring 0 executes 12 (emulated, ~2 us each) instructions: the #UD
//! check (2), the idle loop (one compare of [`PROBE_ATTENTION`], `sti`, `hlt`), and the
//! virtio handler (EOI through an absolute alias of the LAPIC, a compare, the stack switch,
//! the skip past `ud2`, one `iretq` into ring 3) — it was 24 with a register saved and
//! restored around the EOI, an address loaded into a register for each compare, and four
//! separate flags tested before each `hlt`. The earlier design (interrupt handler
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

/// Why the idle loop must not sleep, one byte per reason so each handler sets its own byte
/// with one store and the idle loop tests all eight with one compare: [`ATTN_WORK`] (a
/// virtio interrupt came while the agent ran: resume it), and the kernel loop's duties
/// [`ATTN_KBD`], [`ATTN_RX`] and [`ATTN_REPORT`]. The kernel loop clears it before it enters
/// the agent.
#[unsafe(no_mangle)]
pub static mut PROBE_ATTENTION: u64 = 0;
/// [`PROBE_ATTENTION`] byte: virtio news for the agent.
pub const ATTN_WORK: usize = 0;
/// [`PROBE_ATTENTION`] byte: a key press (i8042).
pub const ATTN_KBD: usize = 1;
/// [`PROBE_ATTENTION`] byte: serial input.
pub const ATTN_RX: usize = 2;
/// [`PROBE_ATTENTION`] byte: a count report is due.
pub const ATTN_REPORT: usize = 3;
/// Timer ticks until the kernel loop's next count report (the timer handler counts it down
/// and raises [`ATTN_REPORT`] at zero; `u64::MAX`: never).
#[unsafe(no_mangle)]
pub static mut PROBE_TICKS_TO_REPORT: u64 = u64::MAX;
/// Makes the idle loop resume the agent as soon as it finishes this run (as a virtio
/// interrupt during the run would): for work the agent left for its next run.
pub fn request_rerun() {
    // SAFETY: one byte of PROBE_ATTENTION (user-accessible, see `setup`), written with one
    // store as the interrupt handlers do; the idle loop reads it with interrupts off.
    unsafe { write_volatile((addr_of_mut!(PROBE_ATTENTION) as *mut u8).add(ATTN_WORK), 1) };
}

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
    cmp qword ptr [rsp], offset probe_user_exit
    jne 1f

// The idle loop, on the interrupt stack under the agent's #UD frame (no other pushes: the
// virtio ISR relies on it). General registers are free: nothing of the agent's is live at
// `probe_user_exit`. Sleeps unless something needs attention (one compare, see
// PROBE_ATTENTION).
probe_agent_idle:
    cmp qword ptr [rip + PROBE_ATTENTION], 0
    jne 2f
    sti
    hlt
.global probe_idle_woken
probe_idle_woken:
    cli
    jmp probe_agent_idle
1:  push 6
    jmp probe_exc_common
// Virtio news for the agent: resume it (past its `ud2`); else the kernel loop has duties.
2:  cmp byte ptr [rip + PROBE_ATTENTION + {attn_work}], 0
    je probe_user_return
    mov byte ptr [rip + PROBE_ATTENTION + {attn_work}], 0
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
// to ring 3. Anywhere else it flags the work for the agent's next look. No register is
// touched: the EOI goes through the LAPIC's low alias (an absolute address).
.global probe_virtio_isr
probe_virtio_isr:
    mov dword ptr [{eoi}], 0
    cmp qword ptr [rsp], offset probe_idle_woken
    jne 1f
    // Back to the idle loop's stack pointer (the CPU may have aligned it before pushing).
    mov rsp, [rsp + 24]
    add qword ptr [rsp], 2
    iretq
1:  mov byte ptr [rip + PROBE_ATTENTION + {attn_work}], 1
    iretq
"#,
    eoi = const crate::LAPIC_EOI_ALIAS,
    attn_work = const ATTN_WORK,
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

/// The identity map of the first GiB, as the loader builds it (2 MiB pages, present and
/// writable) but with the user bit on every entry: ring 3 reaches the probe's buffers in
/// the low 8 MiB and the rest of the guest's RAM (`memtouch`). Built at compile time, so
/// [`setup`] installs it with one store instead of a loop of (slow, emulated) ring-0
/// instructions. `mut`: the CPU sets accessed and dirty bits in it.
#[repr(C, align(4096))]
struct PageDir([u64; 512]);
static mut USER_PD: PageDir = PageDir(user_identity_entries());

const fn user_identity_entries() -> [u64; 512] {
    let mut entries = [0u64; 512];
    let mut i = 0;
    while i < 512 {
        // present | writable | user | 2 MiB page
        entries[i] = ((i as u64) << 21) | 0x87;
        i += 1;
    }
    entries
}

/// Loads the GDT and TSS, installs the two gates and makes the first GiB (through
/// [`USER_PD`]) and the 0xc000_0000.. window user-accessible (the window's page directory
/// entries carry the user bit already, see `map_apic_range`).
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

        // User bit (4) on the path to the first GiB (its own page directory, all user) and
        // to the 3-4 GiB window.
        let cr3: u64;
        asm!("mov {}, cr3", out(reg) cr3, options(nomem, nostack));
        let pml4 = (cr3 & !0xfff) as *mut u64;
        write_volatile(pml4, read_volatile(pml4) | 4);
        let pdpt = (read_volatile(pml4) & 0x000f_ffff_ffff_f000) as *mut u64;
        write_volatile(pdpt, addr_of!(USER_PD) as u64 | 0x7);
        let high = pdpt.add(3);
        write_volatile(high, read_volatile(high) | 4);
        asm!("mov {tmp}, cr3", "mov cr3, {tmp}", tmp = out(reg) _, options(nostack));
    }
}
