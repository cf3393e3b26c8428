//! ember-probe: a tiny interrupt-driven x86_64 guest for ember-vmm (and Firecracker).
//!
//! Boot: loaded as an ELF at 1 MiB and entered in 64-bit mode with Firecracker's convention
//! (identity-mapped first GiB, GDT code selector 0x08, `rsi` = Linux zero page).
//!
//! What it does, in order:
//! 1. masks the legacy PIC, derives a boot id from the TSC, fills its state page at
//!    [`STATE_GPA`] and prints the banner on COM1:
//!    `ember-probe: boot_id=<16 hex> counter_gpa=0x1f0008`
//! 2. reads `ember.hz=<n>` (timer rate, default 100; 0 = no timer: the guest is tickless, an
//!    idle VM costs its host no CPU, and the counter, uptime and reports stay at 0) and
//!    `ember.report=<n>` (print a count line every n ticks, 0 = never, default 50) from the
//!    kernel command line;
//! 3. installs a minimal IDT, maps the IOAPIC/LAPIC page range, starts the LAPIC timer in
//!    periodic mode (unless `hz=0`), routes IOAPIC pin 1 (i8042 keyboard) to a vector, and prints
//!    `ember-probe: ticking hz=<n> report=<n>`;
//! 4. idles with `sti; hlt` (in the agent's idle loop, see [`ring3`]). The timer interrupt
//!    handler increments the counter (a u64 at `counter_gpa`) and nothing else; the kernel
//!    loop prints `ember-probe: count=<n>` every `report` ticks. A keyboard interrupt (SendCtrlAltDel) makes it print
//!    `ember-probe: ctrl-alt-del, resetting` and reset through the i8042 (port 0x64 <- 0xfe).
//!    Bytes received on COM1 (IRQ 4) are echoed as `ember-probe: rx=<bytes>`.
//! 5. runs the agent in ring 3 ([`ring3`]) at boot and after every virtio interrupt: a
//!    virtio-vsock driver ([`vsock`], [`virtq`]) that listens on port 52 and answers the
//!    ember agent protocol ([`agent`], with a small RAM file system, [`files`]), and once
//!    announces itself to host port 53; then, if the VM has a virtio-net device, an IP stack
//!    ([`netstack`] on [`net`]: ping, TCP/UDP echo, discard, chargen, and the agent's
//!    outbound `net-*` built-ins, [`netcmd`]) configured by `ember.ip=A.B.C.D/PREFIX` and
//!    `ember.gw=A.B.C.D` (default 172.16.0.2/30 via 172.16.0.1). Its deadlines wake the agent
//!    through the LAPIC timer (tickless) or the tick ([`netclock`]).
//!
//! Guest ring-0 code is emulated (slow) on some hosts: per-tick work is a handful of
//! instructions, the vCPU sleeps in `hlt` between interrupts, and all per-request work runs
//! in ring 3 (see [`ring3`]). Memory map: [`layout`].
#![no_std]
#![no_main]

mod agent;
mod conn;
mod files;
mod layout;
mod memtouch;
mod net;
mod netclock;
mod netcmd;
mod netstack;
mod path;
mod ring3;
mod sha256;
mod virtq;
mod vsock;

use core::arch::{asm, global_asm};
use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

const COM1: u16 = 0x3f8;
const LAPIC: u64 = 0xfee0_0000;
/// The LAPIC's EOI register through the low alias of the 3-4 GiB window (see
/// [`map_apic_range`]): below 2 GiB, so handlers write it with an absolute address and need
/// no register.
pub const LAPIC_EOI_ALIAS: u64 = LAPIC_ALIAS_BASE + (LAPIC + 0xb0 - 0xc000_0000);
/// Where the 3-4 GiB window (IOAPIC, LAPIC, virtio-mmio) is aliased for ring 0.
const LAPIC_ALIAS_BASE: u64 = 0x4000_0000;
const IOAPIC: u64 = 0xfec0_0000;
const TIMER_VECTOR: u64 = 0x20;
const KBD_VECTOR: u64 = 0x21;
const SERIAL_VECTOR: u64 = 0x24;
const SPURIOUS_VECTOR: u64 = 0xff;
/// Guest-physical address of [`ProbeState`] (see link.ld).
const STATE_GPA: u64 = 0x1f_0000;
/// "EMBRPRB1" little-endian.
const STATE_MAGIC: u64 = u64::from_le_bytes(*b"EMBRPRB1");

/// The page the host reads. Layout is part of the probe's contract (ember-probe-image).
#[repr(C)]
pub struct ProbeState {
    magic: u64,
    counter: u64,
    boot_id: u64,
    hz: u64,
    report: u64,
    kbd: u64,
    rx: u64,
    generation: u64,
    wall_clock_ns: u64,
    reseed_uptime_ns: u64,
    seed: [u64; 4],
}

#[unsafe(no_mangle)]
#[unsafe(link_section = ".probe_state")]
static mut PROBE_STATE: ProbeState = ProbeState {
    magic: 0,
    counter: 0,
    boot_id: 0,
    hz: 0,
    report: 0,
    kbd: 0,
    rx: 0,
    generation: 0,
    wall_clock_ns: 0,
    reseed_uptime_ns: 0,
    seed: [0; 4],
};

/// The kernel command line (address, length), for the ring-3 agent.
static mut CMDLINE: (u64, u64) = (0, 0);

/// The agent's entry point (ring 3, fresh stack, interrupts on).
#[unsafe(no_mangle)]
pub extern "C" fn probe_user_main() {
    // SAFETY: only the agent touches the driver, and it runs on one CPU, one entry at a
    // time; the command line was recorded at boot and stays mapped.
    unsafe {
        let (ptr, len) = *addr_of!(CMDLINE);
        let cmd = core::slice::from_raw_parts(ptr as *const u8, len as usize);
        let driver = &mut *addr_of_mut!(vsock::DRIVER);
        driver.run(cmd);
        if let Some(outcome) = netstack::run(cmd, driver.mmio) {
            driver.finish_pending(&outcome);
            driver.run(cmd);
        }
    }
}

#[repr(C, align(4096))]
struct Idt([u64; 512]);
static mut IDT: Idt = Idt([0; 512]);

#[repr(C, align(4096))]
struct PageDir([u64; 512]);
static mut HIGH_PD: PageDir = PageDir([0; 512]);

global_asm!(
    r#"
.section .text.entry, "ax"
.global _start
_start:
    cli
    lea rsp, [rip + PROBE_STACK_TOP]
    mov rdi, rsi
    xor ebp, ebp
    call probe_main
1:  cli
    hlt
    jmp 1b

.section .text
.global probe_timer_isr
probe_timer_isr:
    inc qword ptr [rip + PROBE_STATE + 8]
    dec qword ptr [rip + PROBE_TICKS_TO_REPORT]
    jnz 1f
    mov byte ptr [rip + PROBE_ATTENTION + {attn_report}], 1
1:  mov dword ptr [{eoi}], 0
    iretq

.global probe_kbd_isr
probe_kbd_isr:
    push rax
    in al, 0x60
    pop rax
    mov qword ptr [rip + PROBE_STATE + 40], 1
    mov byte ptr [rip + PROBE_ATTENTION + {attn_kbd}], 1
    mov dword ptr [{eoi}], 0
    iretq

.global probe_serial_isr
probe_serial_isr:
    mov qword ptr [rip + PROBE_STATE + 48], 1
    mov byte ptr [rip + PROBE_ATTENTION + {attn_rx}], 1
    mov dword ptr [{eoi}], 0
    iretq

.global probe_spurious_isr
probe_spurious_isr:
    iretq

.macro EXC n
probe_exc_\n:
    push \n
    jmp probe_exc_common
.endm
.irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
EXC \n
.endr
probe_exc_common:
    mov rdi, [rsp]
    mov rsi, [rsp + 8]
    mov rdx, [rsp + 16]
    mov rcx, [rsp + 24]
    mov r8, [rsp + 32]
    and rsp, -16
    call probe_exception

.section .rodata
.balign 8
.global PROBE_EXC_TABLE
PROBE_EXC_TABLE:
.irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad probe_exc_\n
.endr
"#,
    eoi = const LAPIC_EOI_ALIAS,
    attn_report = const ring3::ATTN_REPORT,
    attn_kbd = const ring3::ATTN_KBD,
    attn_rx = const ring3::ATTN_RX,
);

unsafe extern "C" {
    static PROBE_EXC_TABLE: [u64; 32];
    fn probe_timer_isr();
    fn probe_kbd_isr();
    fn probe_serial_isr();
    fn probe_spurious_isr();
}

#[inline(always)]
fn outb(port: u16, v: u8) {
    // SAFETY: port I/O has no memory effects visible to Rust.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack, preserves_flags))
    }
}

#[inline(always)]
fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: port I/O has no memory effects visible to Rust.
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack, preserves_flags))
    };
    v
}

/// Echoes what arrived on COM1 as `ember-probe: rx=<bytes>`.
fn echo_serial_input() {
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < buf.len() && inb(COM1 + 5) & 1 != 0 {
        let b = inb(COM1);
        buf[n] = if b.is_ascii_graphic() || b == b' ' {
            b
        } else {
            b'.'
        };
        n += 1;
    }
    if n > 0 {
        puts(b"ember-probe: rx=");
        puts(&buf[..n]);
        puts(b"\n");
    }
}

fn puts(s: &[u8]) {
    for &b in s {
        outb(COM1, b);
    }
}

fn put_hex(v: u64) {
    let mut buf = [0u8; 16];
    for (i, b) in buf.iter_mut().enumerate() {
        let d = ((v >> (60 - 4 * i)) & 0xf) as u8;
        *b = if d < 10 { b'0' + d } else { b'a' + d - 10 };
    }
    puts(&buf);
}

fn put_dec(mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    puts(&buf[i..]);
}

fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: rdtsc only reads the time-stamp counter.
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Returns the value of `key` (e.g. `b"ember.hz="`) in the NUL-terminated command line.
fn cmdline_u64(cmdline: &[u8], key: &[u8]) -> Option<u64> {
    let mut i = 0;
    while i + key.len() <= cmdline.len() {
        let at_word_start = i == 0 || cmdline[i - 1] == b' ';
        if at_word_start && &cmdline[i..i + key.len()] == key {
            let mut v: u64 = 0;
            let mut j = i + key.len();
            let mut any = false;
            while j < cmdline.len() && cmdline[j].is_ascii_digit() {
                v = v
                    .saturating_mul(10)
                    .saturating_add(u64::from(cmdline[j] - b'0'));
                j += 1;
                any = true;
            }
            return if any { Some(v) } else { None };
        }
        i += 1;
    }
    None
}

/// The command line from the zero page (`cmd_line_ptr` at 0x228, `cmdline_size` at 0x238).
///
/// # Safety
/// `zero_page` is null or points to a Linux zero page whose command line is identity-mapped.
unsafe fn cmdline<'a>(zero_page: *const u8) -> &'a [u8] {
    if zero_page.is_null() {
        return &[];
    }
    // SAFETY: the zero page is mapped; fields read unaligned-safe.
    let (ptr, size) = unsafe {
        (
            read_volatile(zero_page.add(0x228) as *const u32) as usize,
            read_volatile(zero_page.add(0x238) as *const u32) as usize,
        )
    };
    if ptr == 0 {
        return &[];
    }
    let base = ptr as *const u8;
    let mut len = 0;
    // SAFETY: the command line lies in identity-mapped low memory and is NUL-terminated.
    while len < size.min(4096) && unsafe { read_volatile(base.add(len)) } != 0 {
        len += 1;
    }
    // SAFETY: `len` bytes were just read from there.
    unsafe { core::slice::from_raw_parts(base, len) }
}

/// # Safety
/// Called at boot, with interrupts disabled. `dpl` 3 lets ring 3 use the gate (`int n`).
unsafe fn set_gate_dpl(vector: usize, handler: u64, dpl: u8) {
    let access = 0x8eu64 | (u64::from(dpl & 3) << 5);
    let lo =
        (handler & 0xffff) | (0x08u64 << 16) | (access << 40) | (((handler >> 16) & 0xffff) << 48);
    // SAFETY: single-threaded boot code owns the IDT.
    unsafe {
        let idt = addr_of_mut!(IDT);
        (*idt).0[vector * 2] = lo;
        (*idt).0[vector * 2 + 1] = handler >> 32;
    }
}

/// # Safety
/// As [`set_gate_dpl`].
unsafe fn set_gate(vector: usize, handler: u64) {
    // SAFETY: forwarded contract.
    unsafe { set_gate_dpl(vector, handler, 0) }
}

#[repr(C, packed)]
struct DescriptorPointer {
    limit: u16,
    base: u64,
}

/// # Safety
/// Called once, with interrupts disabled.
unsafe fn setup_idt() {
    // SAFETY: boot code, interrupts off; the handlers exist (global_asm above).
    unsafe {
        let table = &*addr_of!(PROBE_EXC_TABLE);
        for (v, h) in table.iter().enumerate() {
            set_gate(v, *h);
        }
        set_gate(TIMER_VECTOR as usize, probe_timer_isr as *const () as u64);
        set_gate(KBD_VECTOR as usize, probe_kbd_isr as *const () as u64);
        set_gate(SERIAL_VECTOR as usize, probe_serial_isr as *const () as u64);
        set_gate(
            SPURIOUS_VECTOR as usize,
            probe_spurious_isr as *const () as u64,
        );
        let ptr = DescriptorPointer {
            limit: (256 * 16 - 1) as u16,
            base: addr_of!(IDT) as u64,
        };
        asm!("lidt [{}]", in(reg) &ptr, options(nostack, readonly));
    }
}

/// Maps 0xc000_0000..0x1_0000_0000 (IOAPIC and LAPIC pages) uncached with 2 MiB pages, in
/// whatever identity page tables the loader built (PML4[0] -> PDPT, as Firecracker does),
/// and aliases it at [`LAPIC_ALIAS_BASE`].
///
/// # Safety
/// Called once at boot; the loader's page tables are identity-mapped and writable.
unsafe fn map_apic_range() {
    // SAFETY: see the function's contract.
    unsafe {
        let cr3: u64;
        asm!("mov {}, cr3", out(reg) cr3, options(nomem, nostack));
        let pml4 = (cr3 & !0xfff) as *mut u64;
        let pdpt = (read_volatile(pml4) & 0x000f_ffff_ffff_f000) as *mut u64;
        let pd = addr_of_mut!(HIGH_PD);
        for (i, entry) in (*pd).0.iter_mut().enumerate() {
            // present | writable | user | PWT | PCD | 2 MiB page (user: the ring-3 agent
            // drives the virtio-mmio device and the IOAPIC pin directly)
            *entry = (0xc000_0000 + ((i as u64) << 21)) | 0x9f;
        }
        write_volatile(pdpt.add(3), (pd as u64) | 0x3);
        // The same window again at 1-2 GiB (ring 0 only), where an absolute 32-bit address
        // reaches it: interrupt handlers write the EOI register without a scratch register.
        // The probe uses no RAM above 4 MiB, so this slot of the identity map is free.
        write_volatile(pdpt.add(1), (pd as u64) | 0x3);
        asm!("mov {tmp}, cr3", "mov cr3, {tmp}", tmp = out(reg) _, options(nostack));
    }
}

fn mmio_write(addr: u64, v: u32) {
    // SAFETY: the APIC range is mapped by `map_apic_range`.
    unsafe { write_volatile(addr as *mut u32, v) }
}

fn ioapic_write(reg: u32, v: u32) {
    mmio_write(IOAPIC, reg);
    mmio_write(IOAPIC + 0x10, v);
}

fn state() -> *mut ProbeState {
    addr_of_mut!(PROBE_STATE)
}

/// Entry from `_start` with the zero page pointer.
///
/// # Safety
/// Called once by `_start` on the boot CPU.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn probe_main(zero_page: *const u8) -> ! {
    // Legacy PIC off: all our interrupts come through the LAPIC/IOAPIC.
    outb(0x21, 0xff);
    outb(0xa1, 0xff);

    let st = state();
    let boot_id = splitmix64(rdtsc());
    // SAFETY: boot code owns the state page; the host only reads it.
    unsafe {
        write_volatile(addr_of_mut!((*st).boot_id), boot_id);
        write_volatile(addr_of_mut!((*st).counter), 0);
        write_volatile(addr_of_mut!((*st).magic), STATE_MAGIC);
    }
    puts(b"ember-probe: boot_id=");
    put_hex(boot_id);
    puts(b" counter_gpa=0x");
    let mut gpa = STATE_GPA + 8;
    let mut digits = [0u8; 16];
    let mut n = 0;
    while gpa != 0 || n == 0 {
        let d = (gpa & 0xf) as u8;
        digits[n] = if d < 10 { b'0' + d } else { b'a' + d - 10 };
        gpa >>= 4;
        n += 1;
    }
    while n > 0 {
        n -= 1;
        outb(COM1, digits[n]);
    }
    puts(b"\n");

    // SAFETY: the zero page comes from the loader (rsi at entry).
    let cmd = unsafe { cmdline(zero_page) };
    // SAFETY: boot code, single CPU; the agent reads it later.
    unsafe { *addr_of_mut!(CMDLINE) = (cmd.as_ptr() as u64, cmd.len() as u64) };
    let hz = cmdline_u64(cmd, b"ember.hz=")
        .filter(|&h| h <= 10_000)
        .unwrap_or(100);
    let report = cmdline_u64(cmd, b"ember.report=").unwrap_or(50);
    // SAFETY: as above.
    unsafe {
        write_volatile(addr_of_mut!((*st).hz), hz);
        write_volatile(addr_of_mut!((*st).report), report);
    }
    // SAFETY: interrupts are still off; this is the one-time setup; the zero page comes from
    // the loader.
    unsafe {
        memtouch::init(zero_page);
        setup_idt();
        map_apic_range();
        ring3::setup(set_gate_dpl);
    }
    // LAPIC: software-enable (spurious vector 0xff), accept all priorities.
    mmio_write(LAPIC + 0xf0, 0x100 | SPURIOUS_VECTOR as u32);
    mmio_write(LAPIC + 0x80, 0);
    // Periodic timer; KVM's LAPIC timer counts at 1 GHz with divide-by-1. Without one (hz=0)
    // the LVT timer stays masked, as reset leaves it.
    if let Some(period_ns) = 1_000_000_000u64.checked_div(hz) {
        mmio_write(LAPIC + 0x3e0, 0xb);
        mmio_write(LAPIC + 0x320, (1 << 17) | TIMER_VECTOR as u32);
        mmio_write(LAPIC + 0x380, period_ns as u32);
    }
    // IOAPIC pin 1 (i8042 keyboard): fixed delivery to APIC 0, edge, active high.
    ioapic_write(0x10 + 2, KBD_VECTOR as u32);
    ioapic_write(0x10 + 2 + 1, 0);
    // IOAPIC pin 4 (COM1) likewise, and the UART's receive interrupt on (OUT2 gates it on PCs).
    ioapic_write(0x10 + 8, SERIAL_VECTOR as u32);
    ioapic_write(0x10 + 8 + 1, 0);
    outb(COM1 + 4, 0x08);
    outb(COM1 + 1, 0x01);

    // Announced once interrupts are routed: from here on the timer ticks and the keyboard
    // (Ctrl+Alt+Del) is heard.
    puts(b"ember-probe: ticking hz=");
    put_dec(hz);
    puts(b" report=");
    put_dec(report);
    puts(b"\n");

    let mut next_report = report;
    loop {
        // SAFETY: words the handlers and the idle loop use with interrupts off, as here; the
        // counter is only incremented by the timer handler.
        unsafe {
            let count = read_volatile(addr_of!((*st).counter));
            write_volatile(
                addr_of_mut!(ring3::PROBE_TICKS_TO_REPORT),
                if report == 0 {
                    u64::MAX
                } else {
                    next_report.saturating_sub(count).max(1)
                },
            );
            write_volatile(addr_of_mut!(ring3::PROBE_ATTENTION), 0);
        }
        // The agent runs, idles (in `hlt` under its #UD frame, where virtio interrupts resume
        // it directly) and comes back here only when this loop has duties.
        // SAFETY: the GDT, TSS, gates and user mappings are set up (`ring3::setup`).
        unsafe { ring3::probe_enter_user() };
        // SAFETY: the state page is ours; the ISRs only increment/set fields.
        if unsafe { read_volatile(addr_of!((*st).rx)) } != 0 {
            // SAFETY: as above.
            unsafe { write_volatile(addr_of_mut!((*st).rx), 0) };
            echo_serial_input();
        }
        // SAFETY: as above.
        let (count, kbd) = unsafe {
            (
                read_volatile(addr_of!((*st).counter)),
                read_volatile(addr_of!((*st).kbd)),
            )
        };
        if kbd != 0 {
            puts(b"ember-probe: ctrl-alt-del, resetting\n");
            outb(0x64, 0xfe);
        }
        if report != 0 && count >= next_report {
            puts(b"ember-probe: count=");
            put_dec(count);
            puts(b"\n");
            next_report = count - count % report + report;
        }
    }
}

/// Reports a CPU exception and stops this CPU.
#[unsafe(no_mangle)]
pub extern "C" fn probe_exception(vector: u64, word: u64, word2: u64, w3: u64, w4: u64) -> ! {
    puts(b"ember-probe: exception ");
    put_dec(vector);
    puts(b" next=");
    put_hex(word);
    puts(b" ");
    put_hex(word2);
    puts(b" ");
    put_hex(w3);
    puts(b" ");
    put_hex(w4);
    puts(b"\n");
    loop {
        // SAFETY: stop this CPU for good.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
    }
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    puts(b"ember-probe: panic\n");
    loop {
        // SAFETY: stop this CPU for good.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
    }
}
