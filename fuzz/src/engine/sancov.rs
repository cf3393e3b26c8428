//! The SanitizerCoverage runtime: the callbacks LLVM's `sancov-module` pass calls when the
//! fuzz build is compiled with `-sanitizer-coverage-inline-8bit-counters` (one byte counter per
//! edge, incremented inline; LLVM tells us where they are once, at start-up) and
//! `-sanitizer-coverage-trace-compares` (a call per integer comparison, with both operands).
//!
//! In a build without those flags (clippy, `cargo test`) nothing calls these functions: the
//! engine then sees no counters and [`edges_available`] is false.
//!
//! Comparisons feed an input-to-state table ([`CmpTable`]): operand pairs seen during the last
//! execution, which the mutator uses to replace one operand's bytes in the input with the
//! other's (how the fuzzer gets past magic numbers, kind bytes and lengths without a
//! dictionary). Only comparisons made while a target runs are recorded.
#![allow(unsafe_code)] // FFI: LLVM calls these callbacks and owns the counter memory.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// At most this many distinct counter sections (one per linked binary; dynamic objects add
/// theirs).
const MAX_REGIONS: usize = 16;

static REGION_START: [AtomicUsize; MAX_REGIONS] = [const { AtomicUsize::new(0) }; MAX_REGIONS];
static REGION_LEN: [AtomicUsize; MAX_REGIONS] = [const { AtomicUsize::new(0) }; MAX_REGIONS];
static REGIONS: AtomicUsize = AtomicUsize::new(0);

/// Called by each instrumented object's constructor with the bounds of the counter section
/// (the linker merges them, so every call usually names the same range).
///
/// # Safety
/// Called by LLVM-generated code with a valid `[start, stop)` range that lives for the whole
/// program.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __sanitizer_cov_8bit_counters_init(start: *mut u8, stop: *mut u8) {
    let (start, stop) = (start as usize, stop as usize);
    if stop <= start {
        return;
    }
    let n = REGIONS.load(Ordering::Acquire);
    if REGION_START[..n]
        .iter()
        .any(|s| s.load(Ordering::Relaxed) == start)
    {
        return;
    }
    if n < MAX_REGIONS {
        REGION_START[n].store(start, Ordering::Relaxed);
        REGION_LEN[n].store(stop - start, Ordering::Relaxed);
        REGIONS.store(n + 1, Ordering::Release);
    }
}

/// Whether the binary is instrumented (some counters registered).
pub fn edges_available() -> bool {
    total_counters() > 0
}

/// Number of edge counters.
pub fn total_counters() -> usize {
    (0..REGIONS.load(Ordering::Acquire))
        .map(|i| REGION_LEN[i].load(Ordering::Relaxed))
        .sum()
}

/// AFL's hit-count classes: 1, 2, 3, 4-7, 8-15, 16-31, 32-127, 128+ as one bit each.
fn bucket(count: u8) -> u8 {
    match count {
        0 => 0,
        1 => 1,
        2 => 2,
        3 => 4,
        4..=7 => 8,
        8..=15 => 16,
        16..=31 => 32,
        32..=127 => 64,
        128..=255 => 128,
    }
}

/// Which hit-count classes each edge has shown so far.
#[derive(Debug, Default)]
pub struct Virgin {
    seen: Vec<u8>,
    edges: usize,
}

impl Virgin {
    /// Edges hit at least once so far.
    pub fn edges(&self) -> usize {
        self.edges
    }

    /// Folds the counters of the execution that just ended into the map and clears them.
    /// Returns how many new (edge, hit-count class) pairs the execution showed; with
    /// `commit` false the map is left as it was (a re-run that only asks whether an input
    /// still does something new).
    pub fn collect(&mut self, commit: bool) -> usize {
        let total = total_counters();
        if self.seen.len() < total {
            self.seen.resize(total, 0);
        }
        let mut new = 0;
        let mut base = 0;
        for r in 0..REGIONS.load(Ordering::Acquire) {
            let start = REGION_START[r].load(Ordering::Relaxed) as *mut u8;
            let len = REGION_LEN[r].load(Ordering::Relaxed);
            let mut i = 0;
            while i < len {
                let word = if i + 8 <= len {
                    // SAFETY: `start..start+len` is a counter section registered by LLVM's
                    // constructor; it lives for the whole program. Instrumented code on other
                    // threads may increment a counter meanwhile (a benign race, as in
                    // libFuzzer): a raw unaligned read, never a reference.
                    unsafe { std::ptr::read_unaligned(start.add(i).cast::<u64>()) }
                } else {
                    // SAFETY: as above, one byte inside the section.
                    u64::from(unsafe { std::ptr::read_volatile(start.add(i)) })
                };
                let step = if i + 8 <= len { 8 } else { 1 };
                if word != 0 {
                    for j in i..i + step {
                        // SAFETY: `j < len`, inside the section (see above).
                        let c = unsafe { std::ptr::read_volatile(start.add(j)) };
                        let b = bucket(c);
                        let seen = &mut self.seen[base + j];
                        if b != 0 && *seen & b == 0 {
                            new += 1;
                            if commit {
                                if *seen == 0 {
                                    self.edges += 1;
                                }
                                *seen |= b;
                            }
                        }
                    }
                    // SAFETY: clearing the bytes just read, inside the section.
                    unsafe { std::ptr::write_bytes(start.add(i), 0, step) };
                }
                i += step;
            }
            base += len;
        }
        new
    }
}

/// Clears the counters (before the first execution: constructors and start-up ran code).
pub fn reset_counters() {
    for r in 0..REGIONS.load(Ordering::Acquire) {
        let start = REGION_START[r].load(Ordering::Relaxed) as *mut u8;
        let len = REGION_LEN[r].load(Ordering::Relaxed);
        // SAFETY: a registered counter section (see `Virgin::collect`).
        unsafe { std::ptr::write_bytes(start, 0, len) };
    }
}

// ---- comparisons ----

/// Entries in the comparison table (operand pairs of the current execution).
pub const CMP_ENTRIES: usize = 512;

static CMP_A: [AtomicU64; CMP_ENTRIES] = [const { AtomicU64::new(0) }; CMP_ENTRIES];
static CMP_B: [AtomicU64; CMP_ENTRIES] = [const { AtomicU64::new(0) }; CMP_ENTRIES];
static CMP_W: [AtomicU64; CMP_ENTRIES] = [const { AtomicU64::new(0) }; CMP_ENTRIES];
static CMP_NEXT: AtomicUsize = AtomicUsize::new(0);
/// Recording is on only while a target runs (the harness crate itself is built without the
/// instrumentation, see `fuzz/rustc-wrapper.sh`; this keeps start-up and other threads' idle
/// work out of the table too).
static CMP_ON: AtomicBool = AtomicBool::new(false);

/// Starts recording comparisons, into an emptied table (before an execution).
pub fn start_comparisons() {
    CMP_NEXT.store(0, Ordering::Relaxed);
    CMP_ON.store(true, Ordering::Relaxed);
}

/// Stops recording (after an execution).
pub fn stop_comparisons() {
    CMP_ON.store(false, Ordering::Relaxed);
}

#[inline(always)]
fn record(a: u64, b: u64, width: u64) {
    if a == b || !CMP_ON.load(Ordering::Relaxed) {
        return;
    }
    let i = CMP_NEXT.load(Ordering::Relaxed);
    if i < CMP_ENTRIES {
        CMP_A[i].store(a, Ordering::Relaxed);
        CMP_B[i].store(b, Ordering::Relaxed);
        CMP_W[i].store(width, Ordering::Relaxed);
        CMP_NEXT.store(i + 1, Ordering::Relaxed);
    }
}

/// The operand pairs `(a, b, width in bytes)` recorded in the last execution.
pub fn comparisons() -> Vec<(u64, u64, u8)> {
    let n = CMP_NEXT.load(Ordering::Relaxed).min(CMP_ENTRIES);
    (0..n)
        .map(|i| {
            (
                CMP_A[i].load(Ordering::Relaxed),
                CMP_B[i].load(Ordering::Relaxed),
                CMP_W[i].load(Ordering::Relaxed) as u8,
            )
        })
        .collect()
}

macro_rules! cmp_callbacks {
    ($($name:ident: $t:ty, $w:expr;)*) => {$(
        /// A comparison callback of `-sanitizer-coverage-trace-compares`.
        #[unsafe(no_mangle)]
        pub extern "C" fn $name(a: $t, b: $t) {
            record(u64::from(a), u64::from(b), $w);
        }
    )*};
}

cmp_callbacks! {
    __sanitizer_cov_trace_cmp1: u8, 1;
    __sanitizer_cov_trace_cmp2: u16, 2;
    __sanitizer_cov_trace_cmp4: u32, 4;
    __sanitizer_cov_trace_cmp8: u64, 8;
    __sanitizer_cov_trace_const_cmp1: u8, 1;
    __sanitizer_cov_trace_const_cmp2: u16, 2;
    __sanitizer_cov_trace_const_cmp4: u32, 4;
    __sanitizer_cov_trace_const_cmp8: u64, 8;
}

/// The `switch` callback: `cases[0]` is the number of cases, `cases[1]` the operand width in
/// bits, then the case values.
///
/// # Safety
/// Called by LLVM-generated code with a valid case table.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __sanitizer_cov_trace_switch(val: u64, cases: *const u64) {
    // SAFETY: LLVM passes a table of `2 + cases[0]` u64 values.
    let (n, bits) = unsafe { (*cases, *cases.add(1)) };
    let width = (bits / 8).clamp(1, 8);
    for i in 0..n.min(64) as usize {
        // SAFETY: `i < cases[0]`, inside the table.
        let c = unsafe { *cases.add(2 + i) };
        record(val, c, width);
    }
}

/// Division callbacks (`-sanitizer-coverage-trace-divs` is off; defined in case a build
/// turns it on).
#[unsafe(no_mangle)]
pub extern "C" fn __sanitizer_cov_trace_div4(_val: u32) {}

/// See [`__sanitizer_cov_trace_div4`].
#[unsafe(no_mangle)]
pub extern "C" fn __sanitizer_cov_trace_div8(_val: u64) {}
