//! How vCPU threads and devices tell the VMM process to stop (guest reset, triple fault,
//! fatal vCPU error): the first reason wins and an eventfd wakes the API event loop, which
//! exits the process with [`ExitReason::exit_code`].
//!
//! A triple fault (`KVM_EXIT_SHUTDOWN`) means two things: after a boot it is how some guests
//! reboot (Linux's `reboot=t`), a clean stop with exit code 0 as in Firecracker; in a VM
//! restored from a snapshot, whose guest was running fine when it was saved, it is a crash —
//! typically a state that does not run — and stops the process with exit code 1
//! ([`ExitReason::GuestCrash`]). A failure stop is logged at error level with its reason (and,
//! after a restore, how long after it), so a supervisor sees both a non-zero status and why.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::sys::eventfd::{EfdFlags, EventFd};

/// Why the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest reset the machine (i8042 reset line, SendCtrlAltDel handled by the guest).
    GuestReset,
    /// The guest shut down, or triple-faulted after a boot.
    GuestShutdown,
    /// A guest restored from a snapshot died (triple fault).
    GuestCrash(String),
    /// A vCPU hit an error the VMM cannot recover from.
    VcpuError(String),
}

impl ExitReason {
    /// Process exit code: 0 for a guest-initiated stop, 1 for an error or a crash.
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitReason::GuestReset | ExitReason::GuestShutdown => 0,
            ExitReason::GuestCrash(_) | ExitReason::VcpuError(_) => 1,
        }
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitReason::GuestReset => f.write_str("the guest reset the machine"),
            ExitReason::GuestShutdown => f.write_str("the guest shut down"),
            ExitReason::GuestCrash(why) => write!(f, "the guest crashed: {why}"),
            ExitReason::VcpuError(why) => write!(f, "fatal vCPU error: {why}"),
        }
    }
}

/// Shared stop request.
#[derive(Debug)]
pub struct ExitSignal {
    evt: EventFd,
    reason: Mutex<Option<ExitReason>>,
    /// CLOCK_MONOTONIC ns when a snapshot load began, 0 for a booted (or not started) VM.
    restored_at_ns: AtomicU64,
}

impl ExitSignal {
    /// A new, untriggered signal.
    pub fn new() -> std::io::Result<ExitSignal> {
        let evt = EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
            .map_err(std::io::Error::from)?;
        Ok(ExitSignal {
            evt,
            reason: Mutex::new(None),
            restored_at_ns: AtomicU64::new(0),
        })
    }

    /// Marks the VM as restored from a snapshot (call before its vCPUs can run), or not (a
    /// failed load).
    pub fn mark_restored(&self, restored: bool) {
        let at = if restored {
            crate::timing::now_ns().max(1)
        } else {
            0
        };
        self.restored_at_ns.store(at, Ordering::Relaxed);
    }

    /// Milliseconds since the snapshot load began, if the VM was restored.
    pub fn ms_since_restore(&self) -> Option<f64> {
        match self.restored_at_ns.load(Ordering::Relaxed) {
            0 => None,
            at => Some(crate::timing::now_ns().saturating_sub(at) as f64 / 1e6),
        }
    }

    /// The stop reason for a triple fault (`KVM_EXIT_SHUTDOWN`) on vCPU `vcpu`: a clean
    /// shutdown after a boot, a crash after a restore (see the module documentation).
    pub fn triple_fault(&self, vcpu: u8) -> ExitReason {
        match self.ms_since_restore() {
            None => ExitReason::GuestShutdown,
            Some(ms) => ExitReason::GuestCrash(format!(
                "vCPU {vcpu} triple-faulted (KVM_EXIT_SHUTDOWN) {ms:.1} ms after the snapshot \
                 was loaded: the restored state does not run"
            )),
        }
    }

    /// Requests a stop (the first reason is kept).
    pub fn request(&self, reason: ExitReason) {
        let mut guard = match self.reason.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if guard.is_none() {
            if reason.exit_code() == 0 {
                tracing::info!(%reason, "VM stop requested");
            } else {
                // A crash's reason already says when; an error after a restore says it here.
                let restored = match (self.ms_since_restore(), &reason) {
                    (Some(ms), ExitReason::VcpuError(_)) => {
                        format!(" ({ms:.1} ms after the snapshot was loaded)")
                    }
                    _ => String::new(),
                };
                tracing::error!(
                    "VM stopping, exit code {}: {reason}{restored}",
                    reason.exit_code()
                );
            }
            *guard = Some(reason);
        }
        drop(guard);
        if let Err(e) = self.evt.write(1) {
            tracing::error!(error = %e, "cannot signal VM exit");
        }
    }

    /// The reason, once requested.
    pub fn reason(&self) -> Option<ExitReason> {
        match self.reason.lock() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// True once a stop was requested.
    pub fn is_requested(&self) -> bool {
        self.reason().is_some()
    }

    /// The eventfd to poll.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_triple_fault_is_a_crash_only_after_a_restore() {
        let s = ExitSignal::new().unwrap();
        assert_eq!(s.triple_fault(0), ExitReason::GuestShutdown);
        assert_eq!(s.triple_fault(0).exit_code(), 0);
        s.mark_restored(true);
        let r = s.triple_fault(1);
        assert_eq!(r.exit_code(), 1);
        assert!(r.to_string().contains("vCPU 1 triple-faulted"), "{r}");
        assert!(s.ms_since_restore().is_some());
        s.mark_restored(false);
        assert_eq!(s.triple_fault(0), ExitReason::GuestShutdown);
        s.request(ExitReason::VcpuError("boom".into()));
        s.request(ExitReason::GuestReset);
        assert_eq!(s.reason().map(|r| r.exit_code()), Some(1));
    }
}
