//! A virtio-mmio device's interrupt: the `InterruptStatus` register (read and acknowledged by
//! the driver on a vCPU thread, set by the device thread) and the line that raises the
//! device's GSI on the in-kernel IOAPIC (an edge: the line is pulsed).
//!
//! The device signals every time it has news, whatever the status bits say: a driver that
//! polls its rings without reading or acknowledging the status (the probe guest does this to
//! save MMIO exits) still gets an interrupt per batch.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::devices::IrqLine;

/// `InterruptStatus` bit: a queue has new used buffers.
pub const INT_VRING: u32 = 0x1;
/// `InterruptStatus` bit: the configuration space changed.
pub const INT_CONFIG: u32 = 0x2;

/// Interrupt status and line of one device.
#[derive(Debug)]
pub struct Interrupt {
    status: AtomicU32,
    line: IrqLine,
}

impl Interrupt {
    /// The interrupt of a device on `line`.
    pub fn new(line: IrqLine) -> Interrupt {
        Interrupt {
            status: AtomicU32::new(0),
            line,
        }
    }

    fn raise(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::SeqCst);
        if let Err(e) = self.line.pulse() {
            tracing::warn!(error = %e, "cannot signal a virtio interrupt");
        }
    }

    /// Raises the used-buffer interrupt.
    pub fn signal_used_queue(&self) {
        self.raise(INT_VRING);
    }

    /// Raises the configuration-change interrupt.
    pub fn signal_config_change(&self) {
        self.raise(INT_CONFIG);
    }

    /// The `InterruptStatus` register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// `InterruptACK`: clears the acknowledged bits.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Sets the status (restore).
    pub fn set_status(&self, bits: u32) {
        self.status.store(bits, Ordering::SeqCst);
    }

    /// The line.
    pub fn line(&self) -> &IrqLine {
        &self.line
    }
}

#[cfg(test)]
mod tests {
    use vmm_sys_util::eventfd::EventFd;

    use super::*;

    #[test]
    fn status_and_ack() {
        let i = Interrupt::new(IrqLine::Eventfd(EventFd::new(0).unwrap()));
        i.signal_used_queue();
        i.signal_config_change();
        assert_eq!(i.status(), INT_VRING | INT_CONFIG);
        assert_eq!(i.line().eventfd().unwrap().read().unwrap(), 2);
        i.ack(INT_VRING);
        assert_eq!(i.status(), INT_CONFIG);
    }
}
