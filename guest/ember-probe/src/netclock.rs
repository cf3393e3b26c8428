//! The network stack's clock and wake-up timer (ring 3).
//!
//! Time: the TSC (`rdtsc` works in ring 3), calibrated once when the net device is found
//! against the LAPIC timer's current-count register (KVM's LAPIC timer counts at 1 GHz with
//! divide-by-1, the rate `main.rs` already relies on; with a periodic tick the tick counter
//! counts the reloads): the median of three 1 ms calibrations, each end a LAPIC read tightly
//! bracketed by TSC reads, so a vCPU preempted mid-calibration (a busy host) does not skew
//! the rate — an earlier unbracketed single calibration most likely explains VMs whose clock
//! ran 3-7x slow now and then under load. ~3 ms, only on VMs with a net device. The clock is
//! kept as a running count of microseconds advanced by TSC deltas, each clamped to
//! [`MAX_STEP_US`] (and a TSC that went backwards counts as no time): a restored clone may see
//! its TSC jump by the time it spent on disk, and smoltcp must see a small step, not hours of
//! retransmission timeouts firing at once.
//!
//! Wake-ups: the agent only runs when an interrupt wakes it (the vCPU sleeps in `hlt`
//! otherwise), so a pending deadline (a TCP retransmission, a connect's timeout) needs an
//! interrupt at that time. No busy-waiting: the vCPU sleeps until the deadline or a frame,
//! whichever comes first, and vsock keeps being served meanwhile because the agent always
//! returns to the idle loop between runs.
//! - Tickless (`ember.hz=0`, the LAPIC timer unused): the LAPIC timer in one-shot mode on
//!   [`crate::ring3::VIRTIO_VECTOR`], so expiry is just another virtio-style wake-up of the
//!   agent. Armed only while smoltcp or an outbound command has a deadline: an idle VM (or
//!   one without a net device) never takes a timer interrupt.
//! - With a periodic tick (`hz>0`) the LAPIC timer is the tick and cannot be reprogrammed,
//!   so the agent lowers the kernel loop's count-report countdown
//!   ([`crate::ring3::PROBE_TICKS_TO_REPORT`]) to the deadline's tick: the kernel loop wakes,
//!   finds no report due, and re-enters the agent. Resolution is one tick.

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use crate::vsock::{mmio_read, mmio_write};

/// The LAPIC's registers (user-accessible, see `map_apic_range`).
const LAPIC: usize = 0xfee0_0000;
const LVT_TIMER: usize = LAPIC + 0x320;
const INITIAL_COUNT: usize = LAPIC + 0x380;
const CURRENT_COUNT: usize = LAPIC + 0x390;
const DIVIDE: usize = LAPIC + 0x3e0;
/// LVT mask bit.
const MASKED: u32 = 1 << 16;
/// The largest step the clock takes at once.
pub const MAX_STEP_US: u64 = 1_000_000;
/// Longest one-shot the timer is armed for (the 32-bit count at 1 GHz holds ~4.29 s).
const MAX_ARM_US: u64 = 4_000_000;
/// LAPIC counts (ns) one calibration spans.
const CALIBRATION_NS: u64 = 1_000_000;
/// Calibrations made (the median is kept).
const CALIBRATIONS: usize = 3;
/// Tries at a tightly bracketed LAPIC reading.
const SAMPLE_TRIES: usize = 8;

/// The tick counter (the timer handler increments it; 0 when tickless).
fn ticks() -> u64 {
    let st = crate::state();
    // SAFETY: the state page is always mapped; the timer handler increments the counter.
    unsafe { read_volatile(addr_of!((*st).counter)) }
}

/// A LAPIC timer reading as ns since the tick counter's start (`period` ns per tick; the
/// count runs down from `period`), with the TSC at that moment: the reading bracketed by two
/// TSC reads, the tightest of [`SAMPLE_TRIES`] (a vCPU preempted between the two reads would
/// otherwise skew the rate by the whole preemption), and the tick counter read on both sides
/// so a reload between them is seen (and retried) rather than miscounted.
fn sample(period: u64) -> (u64, u64) {
    let mut best = (0, 0, u64::MAX);
    for _ in 0..SAMPLE_TRIES {
        let a = rdtsc();
        let t0 = ticks();
        let cc = u64::from(mmio_read(CURRENT_COUNT));
        let t1 = ticks();
        let b = rdtsc();
        let width = b.wrapping_sub(a);
        if t0 == t1 && cc <= period && width < best.2 {
            let pos = t0.saturating_mul(period) + (period - cc);
            best = (pos, a + width / 2, width);
        }
    }
    (best.0, best.1)
}

/// TSC ticks per microsecond, times 1024, over [`CALIBRATION_NS`] of the LAPIC timer; `None`
/// if the count ran out or went backwards meanwhile (a vCPU away for seconds).
fn calibrate(period: u64, one_shot: bool) -> Option<u64> {
    let (pos0, tsc0) = sample(period);
    loop {
        let (pos1, tsc1) = sample(period);
        if pos1 < pos0 || (one_shot && pos1 >= period) {
            return None;
        }
        if pos1 - pos0 >= CALIBRATION_NS {
            return Some(tsc1.wrapping_sub(tsc0).saturating_mul(1024 * 1000) / (pos1 - pos0));
        }
    }
}

fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: rdtsc only reads the time-stamp counter (allowed in ring 3: CR4.TSD is clear).
    unsafe { core::arch::asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

fn hz() -> u64 {
    let st = crate::state();
    // SAFETY: the state page is always mapped; the kernel wrote `hz` at boot.
    unsafe { read_volatile(addr_of!((*st).hz)) }
}

/// The clock and the timer.
pub struct Clock {
    /// TSC ticks per microsecond, times 1024.
    tsc_per_us_x1024: u64,
    last_tsc: u64,
    now_us: u64,
    /// The deadline the one-shot timer is armed for (tickless only).
    armed_us: Option<u64>,
    /// The periodic tick's rate (0: tickless).
    hz: u64,
}

impl Clock {
    /// Calibrates the TSC and, when tickless, readies the LAPIC timer as a one-shot.
    pub fn new() -> Clock {
        let hz = hz();
        let period = match 1_000_000_000u64.checked_div(hz) {
            Some(p) => p.clamp(1, u64::from(u32::MAX)),
            None => {
                // Tickless: the timer is ours. Masked while calibrating.
                mmio_write(DIVIDE, 0xb);
                mmio_write(LVT_TIMER, MASKED | crate::ring3::VIRTIO_VECTOR as u32);
                u64::from(u32::MAX)
            }
        };
        let mut rates = [0u64; CALIBRATIONS];
        for r in rates.iter_mut() {
            for _ in 0..8 {
                if hz == 0 {
                    // A fresh one-shot count for each calibration.
                    mmio_write(INITIAL_COUNT, u32::MAX);
                }
                if let Some(rate) = calibrate(period, hz == 0) {
                    *r = rate;
                    break;
                }
            }
        }
        rates.sort_unstable();
        if hz == 0 {
            mmio_write(INITIAL_COUNT, 0);
            mmio_write(LVT_TIMER, crate::ring3::VIRTIO_VECTOR as u32);
        }
        Clock {
            tsc_per_us_x1024: rates[CALIBRATIONS / 2].max(1),
            last_tsc: rdtsc(),
            now_us: 0,
            armed_us: None,
            hz,
        }
    }

    /// Microseconds since the stack started (monotonic; steps clamped, see the module doc).
    pub fn now_us(&mut self) -> u64 {
        let tsc = rdtsc();
        let delta = tsc.wrapping_sub(self.last_tsc);
        if delta > u64::MAX / 2 {
            // The TSC went backwards (a restore onto another host): no time passed.
            self.last_tsc = tsc;
            return self.now_us;
        }
        let us = delta.saturating_mul(1024) / self.tsc_per_us_x1024;
        if us > MAX_STEP_US {
            self.now_us += MAX_STEP_US;
            self.last_tsc = tsc;
        } else {
            self.now_us += us;
            // Keep the remainder so small steps add up exactly.
            self.last_tsc = self
                .last_tsc
                .wrapping_add(us * self.tsc_per_us_x1024 / 1024);
        }
        self.now_us
    }

    /// Makes sure an interrupt wakes the agent by `deadline_us` (`None`: no deadline; the
    /// timer is stopped).
    pub fn wake_at(&mut self, deadline_us: Option<u64>) {
        let now = self.now_us;
        if self.hz != 0 {
            let Some(d) = deadline_us else {
                return;
            };
            let delay = d.saturating_sub(now).min(MAX_ARM_US);
            let ticks = (delay.saturating_mul(self.hz)).div_ceil(1_000_000).max(1);
            // SAFETY: the countdown is a u64 the timer handler decrements and the kernel loop
            // resets before it enters the agent; lowering it only makes the kernel loop run
            // (and find no report due) sooner. A tick between the read and the write delays
            // the wake-up by at most that tick.
            unsafe {
                let p = addr_of_mut!(crate::ring3::PROBE_TICKS_TO_REPORT);
                let cur = read_volatile(p);
                if ticks < cur {
                    write_volatile(p, ticks);
                }
            }
            return;
        }
        match deadline_us {
            None => {
                if self.armed_us.take().is_some() {
                    mmio_write(INITIAL_COUNT, 0);
                }
            }
            Some(d) => {
                // Re-arm when the deadline moved, or when the one-shot already ran out (it may
                // fire a little early or late against the TSC's idea of time).
                if self.armed_us == Some(d) && mmio_read(CURRENT_COUNT) != 0 {
                    return;
                }
                let delay_us = d.saturating_sub(now).clamp(50, MAX_ARM_US);
                mmio_write(INITIAL_COUNT, (delay_us * 1000) as u32);
                self.armed_us = Some(d);
            }
        }
    }
}
