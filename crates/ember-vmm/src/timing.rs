//! Monotonic timestamps and per-phase timings for the hot paths (boot, restore, snapshot).
//!
//! Timings are plain numbers collected on the fly (no allocation per sample beyond a small
//! fixed vector), logged through `tracing` and served by `GET /ember/timings` for benchmarks.
//! Nothing here makes decisions; it only measures.

use serde::Serialize;

/// CLOCK_MONOTONIC in nanoseconds (comparable across processes on one host).
pub fn now_ns() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(ts) => (ts.tv_sec() as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(ts.tv_nsec() as u64),
        Err(_) => 0,
    }
}

/// Named phases of one operation, in microseconds, plus its start timestamp.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PhaseTimings {
    /// CLOCK_MONOTONIC (ns) when the operation started.
    pub start_ns: u64,
    /// `(phase, microseconds)` in order.
    pub phases_us: Vec<(&'static str, f64)>,
    /// Start -> end of the operation, microseconds.
    pub total_us: f64,
    #[serde(skip)]
    last_ns: u64,
}

impl PhaseTimings {
    /// Starts timing at `start_ns`.
    pub fn starting_at(start_ns: u64) -> Self {
        PhaseTimings {
            start_ns,
            phases_us: Vec::with_capacity(12),
            total_us: 0.0,
            last_ns: start_ns,
        }
    }

    /// Ends the current phase, naming it.
    pub fn phase(&mut self, name: &'static str) {
        let now = now_ns();
        self.phases_us
            .push((name, now.saturating_sub(self.last_ns) as f64 / 1000.0));
        self.last_ns = now;
        self.total_us = now.saturating_sub(self.start_ns) as f64 / 1000.0;
    }

    /// Marks the end at an externally observed timestamp (e.g. a vCPU's first KVM_RUN).
    pub fn end_at(&mut self, name: &'static str, end_ns: u64) {
        self.phases_us
            .push((name, end_ns.saturating_sub(self.last_ns) as f64 / 1000.0));
        self.last_ns = end_ns;
        self.total_us = end_ns.saturating_sub(self.start_ns) as f64 / 1000.0;
    }
}

/// The latest timings of each kind of operation (served by `GET /ember/timings`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    /// CLOCK_MONOTONIC (ns) at `main` entry.
    pub main_start_ns: u64,
    /// CLOCK_MONOTONIC (ns) when the API socket was listening.
    pub api_ready_ns: u64,
    /// Last boot: config -> BSP about to enter KVM_RUN.
    pub boot: Option<PhaseTimings>,
    /// Last snapshot load: request received -> BSP about to enter KVM_RUN.
    pub restore: Option<PhaseTimings>,
    /// Last snapshot create: request received -> files written.
    pub snapshot_create: Option<PhaseTimings>,
    /// CLOCK_MONOTONIC (ns) when the guest completed its first console line since the last
    /// boot or restore (0 if none yet): boot -> banner, restore -> first output.
    pub console_first_line_ns: u64,
}
