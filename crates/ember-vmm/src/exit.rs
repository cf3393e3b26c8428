//! How vCPU threads and devices tell the VMM process to stop (guest reset, triple fault,
//! fatal vCPU error): the first reason wins and an eventfd wakes the API event loop, which
//! exits the process with [`ExitReason::exit_code`].

use std::sync::Mutex;

use nix::sys::eventfd::{EfdFlags, EventFd};

/// Why the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest reset the machine (i8042 reset line, SendCtrlAltDel handled by the guest).
    GuestReset,
    /// The guest shut down or triple-faulted.
    GuestShutdown,
    /// A vCPU hit an error the VMM cannot recover from.
    VcpuError(String),
}

impl ExitReason {
    /// Process exit code: 0 for a guest-initiated stop, 1 for an error.
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitReason::GuestReset | ExitReason::GuestShutdown => 0,
            ExitReason::VcpuError(_) => 1,
        }
    }
}

/// Shared stop request.
#[derive(Debug)]
pub struct ExitSignal {
    evt: EventFd,
    reason: Mutex<Option<ExitReason>>,
}

impl ExitSignal {
    /// A new, untriggered signal.
    pub fn new() -> std::io::Result<ExitSignal> {
        let evt = EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
            .map_err(std::io::Error::from)?;
        Ok(ExitSignal {
            evt,
            reason: Mutex::new(None),
        })
    }

    /// Requests a stop (the first reason is kept).
    pub fn request(&self, reason: ExitReason) {
        let mut guard = match self.reason.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if guard.is_none() {
            tracing::info!(?reason, "VM stop requested");
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
