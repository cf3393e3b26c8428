//! A virtio device facing a hostile guest: counters of guest errors, rate-limited log lines,
//! and the *broken* state. One [`DeviceHealth`] per device, shared by its transport (vCPU
//! threads), the device thread and the API (`GET /ember/devices`); everything in it is
//! atomic except the broken reason, so no caller waits for another.
//!
//! - **Counters**, one per [`ErrorKind`], count every guest error (and every host failure a
//!   guest request ran into, [`ErrorKind::Backend`]).
//! - **Logs**: a guest can repeat a mistake millions of times a second, so each kind of each
//!   device prints at most one line per [`LOG_INTERVAL`]; the next line that gets through
//!   says how many were suppressed (`... (N more suppressed)`). The counters hold the totals.
//! - **Broken**: a ring state no correct driver produces (an available index more than the
//!   queue size ahead, a head or `next` outside the queue, a descriptor loop, a buffer outside
//!   guest memory, buffers in the wrong direction, a chain longer than 4 GiB, a request with
//!   no header or status) is not a request error but a driver that cannot be trusted with the
//!   queue any more. As QEMU does (`virtio_error`), the device stops: [`DeviceHealth::break_device`]
//!   records why, the transport (`mmio`) stops delivering its events, calls its `reset` to
//!   drop its descriptors from the device thread, reports `DEVICE_NEEDS_RESET` in the status
//!   register and raises the configuration-change interrupt (virtio 1.x, 2.1.2). Only a
//!   driver reset (status 0) clears it. Nothing loops, nothing else stops: the other devices,
//!   the vCPUs and the API go on.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// At most one log line per device and [`ErrorKind`] per interval.
pub const LOG_INTERVAL: Duration = Duration::from_secs(1);

/// What went wrong, for counters and log rate limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// An impossible ring state: the available index, a head outside the queue, rings outside
    /// guest memory. Breaks the device.
    Ring,
    /// A descriptor chain no driver may build (loop, index outside the queue, buffer outside
    /// guest memory, wrong direction, more than 4 GiB, indirect without the feature), or a
    /// request without the header or status the protocol requires. Breaks the device.
    Chain,
    /// A well-formed chain carrying a request the device refuses (a sector beyond the disk, an
    /// unknown type, a vsock packet whose length exceeds its buffers, an RX buffer too short
    /// for a frame): that request fails, the device goes on.
    Request,
    /// A register access the transport ignores: unknown offset, wrong width, queue registers
    /// outside set-up, an invalid queue size or ring alignment, a notification for a queue
    /// that does not exist, a write to read-only configuration space.
    Register,
    /// The status protocol and what a driver must provide: features the device did not
    /// offer, status bits cleared without a reset, `DRIVER_OK` before `FEATURES_OK` or on a
    /// device that needs a reset, an activation the device refused (which breaks it), no
    /// vsock event buffer when a snapshot is taken.
    Driver,
    /// A host-side failure a guest request ran into (drive I/O, TAP write, getrandom). Not
    /// the guest's fault; counted and rate-limited all the same.
    Backend,
}

const KINDS: usize = 6;

impl ErrorKind {
    /// Every kind, in report order.
    pub const ALL: [ErrorKind; KINDS] = [
        ErrorKind::Ring,
        ErrorKind::Chain,
        ErrorKind::Request,
        ErrorKind::Register,
        ErrorKind::Driver,
        ErrorKind::Backend,
    ];

    /// The kind's name in logs and `GET /ember/devices`.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Ring => "ring",
            ErrorKind::Chain => "chain",
            ErrorKind::Request => "request",
            ErrorKind::Register => "register",
            ErrorKind::Driver => "driver",
            ErrorKind::Backend => "backend",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// Requests and register accesses are the guest's own business (debug); the rest is worth
    /// an operator's attention (warn).
    fn loud(self) -> bool {
        !matches!(self, ErrorKind::Request | ErrorKind::Register)
    }
}

/// Nanoseconds on a process-wide monotonic clock (a vDSO read, no system call).
fn now_ns() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    u64::try_from(BASE.get_or_init(Instant::now).elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// One line per interval: the first caller after the interval wins, the others count.
#[derive(Debug, Default)]
struct LogGate {
    next_ns: AtomicU64,
    suppressed: AtomicU64,
}

impl LogGate {
    /// `Some(n)`: print now, `n` lines were suppressed since the last one; `None`: suppressed.
    fn pass(&self, now_ns: u64) -> Option<u64> {
        let next = self.next_ns.load(Ordering::Relaxed);
        let interval = u64::try_from(LOG_INTERVAL.as_nanos()).unwrap_or(u64::MAX);
        if now_ns >= next
            && self
                .next_ns
                .compare_exchange(
                    next,
                    now_ns.saturating_add(interval),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// " (N more suppressed)" when N > 0.
struct Suppressed(u64);

impl fmt::Display for Suppressed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0 => Ok(()),
            n => write!(f, " ({n} more suppressed)"),
        }
    }
}

/// Guest error counters, log rate limits and the broken state of one device (see the module
/// docs).
#[derive(Debug)]
pub struct DeviceHealth {
    device: String,
    broken: AtomicBool,
    reason: Mutex<Option<String>>,
    breaks: AtomicU64,
    counts: [AtomicU64; KINDS],
    gates: [LogGate; KINDS],
}

impl DeviceHealth {
    /// A healthy device named `device` in logs.
    pub fn new(device: &str) -> DeviceHealth {
        DeviceHealth {
            device: device.to_string(),
            broken: AtomicBool::new(false),
            reason: Mutex::new(None),
            breaks: AtomicU64::new(0),
            counts: Default::default(),
            gates: Default::default(),
        }
    }

    /// Counts an error of `kind` and logs `what` unless a line of this kind was printed less
    /// than [`LOG_INTERVAL`] ago. Returns whether a line was printed.
    pub fn report(&self, kind: ErrorKind, what: fmt::Arguments<'_>) -> bool {
        self.report_at(kind, what, now_ns())
    }

    pub(crate) fn report_at(&self, kind: ErrorKind, what: fmt::Arguments<'_>, now: u64) -> bool {
        self.counts[kind.index()].fetch_add(1, Ordering::Relaxed);
        let Some(suppressed) = self.gates[kind.index()].pass(now) else {
            return false;
        };
        let (device, kind_name, more) = (&self.device, kind.name(), Suppressed(suppressed));
        if kind.loud() {
            tracing::warn!(device = %device, kind = kind_name, "virtio: {what}{more}");
        } else {
            tracing::debug!(device = %device, kind = kind_name, "virtio: {what}{more}");
        }
        true
    }

    /// Counts an error of `kind` that leaves the device unusable and marks it broken with
    /// `why` as the reason (logged, rate-limited, at warn). Returns `true` if the device was
    /// healthy until now. The caller must stop touching the queues; the transport does the
    /// rest (see the module docs).
    pub fn break_device(&self, kind: ErrorKind, why: fmt::Arguments<'_>) -> bool {
        self.counts[kind.index()].fetch_add(1, Ordering::Relaxed);
        if self.broken.load(Ordering::Acquire) {
            return false;
        }
        let reason = format!("{}: {why}", kind.name());
        self.set_broken(reason.clone());
        if let Some(suppressed) = self.gates[kind.index()].pass(now_ns()) {
            tracing::warn!(
                device = %self.device,
                kind = kind.name(),
                "virtio: device broken, stopped until the driver resets it: {reason}{}",
                Suppressed(suppressed)
            );
        }
        true
    }

    /// Marks the device broken without counting or logging (a snapshot taken while it was
    /// broken is being restored).
    pub fn set_broken(&self, reason: String) {
        *self.reason_lock() = Some(reason);
        self.breaks.fetch_add(1, Ordering::Relaxed);
        self.broken.store(true, Ordering::Release);
    }

    /// The driver reset the device: it is usable again (the counters stay).
    pub fn clear(&self) {
        self.broken.store(false, Ordering::Release);
        *self.reason_lock() = None;
    }

    /// True while the device needs a driver reset.
    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Acquire)
    }

    /// Why the device is broken.
    pub fn reason(&self) -> Option<String> {
        self.reason_lock().clone()
    }

    /// Errors of `kind` so far.
    pub fn count(&self, kind: ErrorKind) -> u64 {
        self.counts[kind.index()].load(Ordering::Relaxed)
    }

    /// Times the device broke.
    pub fn breaks(&self) -> u64 {
        self.breaks.load(Ordering::Relaxed)
    }

    /// The `GET /ember/devices` fields: `broken`, `broken_reason`, `breaks`,
    /// `guest_errors` (one counter per guest kind) and `backend_errors`.
    pub fn describe(&self) -> serde_json::Value {
        let guest: serde_json::Map<String, serde_json::Value> = ErrorKind::ALL
            .iter()
            .filter(|k| **k != ErrorKind::Backend)
            .map(|k| (k.name().to_string(), self.count(*k).into()))
            .collect();
        serde_json::json!({
            "broken": self.is_broken(),
            "broken_reason": self.reason(),
            "breaks": self.breaks(),
            "guest_errors": guest,
            "backend_errors": self.count(ErrorKind::Backend),
        })
    }

    fn reason_lock(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        match self.reason.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn one_line_per_interval_per_kind_and_every_error_counted() {
        let h = DeviceHealth::new("dev");
        let t0 = 5 * SEC;
        assert!(h.report_at(ErrorKind::Register, format_args!("first"), t0));
        let printed = (1..=100_000u64)
            .filter(|i| h.report_at(ErrorKind::Register, format_args!("again"), t0 + i))
            .count();
        assert_eq!(printed, 0, "within the interval");
        // Another kind has its own gate.
        assert!(h.report_at(ErrorKind::Request, format_args!("other"), t0 + 10));
        // The interval over: one line, which carries the suppressed count.
        assert!(h.report_at(ErrorKind::Register, format_args!("later"), t0 + SEC));
        assert_eq!(
            h.gates[ErrorKind::Register.index()]
                .suppressed
                .load(Ordering::Relaxed),
            0
        );
        assert!(!h.report_at(ErrorKind::Register, format_args!("x"), t0 + SEC + 1));
        assert_eq!(h.count(ErrorKind::Register), 100_003);
        assert_eq!(h.count(ErrorKind::Request), 1);
        assert_eq!(Suppressed(0).to_string(), "");
        assert_eq!(Suppressed(7).to_string(), " (7 more suppressed)");
    }

    #[test]
    fn gate_reports_how_many_lines_it_swallowed() {
        let g = LogGate::default();
        assert_eq!(g.pass(10), Some(0));
        for i in 0..42 {
            assert_eq!(g.pass(11 + i), None);
        }
        assert_eq!(g.pass(10 + 2 * SEC), Some(42));
    }

    #[test]
    fn broken_until_cleared_and_described() {
        let h = DeviceHealth::new("vsock");
        assert!(!h.is_broken());
        assert!(h.break_device(ErrorKind::Ring, format_args!("available index 40")));
        assert!(!h.break_device(ErrorKind::Chain, format_args!("a loop")));
        assert!(h.is_broken());
        assert_eq!(h.reason().as_deref(), Some("ring: available index 40"));
        let d = h.describe();
        assert_eq!(d["broken"], true);
        assert_eq!(d["broken_reason"], "ring: available index 40");
        assert_eq!(d["breaks"], 1);
        assert_eq!(d["guest_errors"]["ring"], 1);
        assert_eq!(d["guest_errors"]["chain"], 1);
        assert_eq!(d["guest_errors"]["register"], 0);
        assert_eq!(d["backend_errors"], 0);
        h.clear();
        assert!(!h.is_broken());
        assert_eq!(h.describe()["broken_reason"], serde_json::Value::Null);
        assert_eq!(h.count(ErrorKind::Ring), 1, "counters survive a reset");
        h.set_broken("restored".into());
        assert_eq!((h.is_broken(), h.breaks()), (true, 2));
    }
}
