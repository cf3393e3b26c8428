//! Emulated devices and the buses vCPU exits are dispatched on.
//!
//! A device implements [`bus::BusDevice`] and is inserted into the port-I/O or MMIO
//! [`bus::Bus`] before the vCPUs start. Interrupts are lines of the in-kernel irqchip
//! ([`IrqLine`]). Device state for snapshots lives next to each device
//! (`save_state`/`restore_state` with the snapshot codec), collected by
//! [`legacy::LegacyDevices`] and [`virtio::VirtioManager`]. The VM generation id
//! ([`vmgenid`]) is no bus device: 16 bytes of guest memory and an interrupt line.

pub mod bus;
pub mod legacy;
pub mod virtio;
pub mod vmgenid;

use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

use crate::vstate::vm::GsiLine;

/// A device's interrupt line: an irqchip line pulsed with `KVM_IRQ_LINE` (see
/// [`crate::vstate::vm`] for why not an irqfd), or an eventfd (unit tests count its writes).
#[derive(Debug)]
pub enum IrqLine {
    /// A line of the VM's irqchip.
    Gsi(GsiLine),
    /// An eventfd; each signal adds 1.
    Eventfd(EventFd),
}

impl IrqLine {
    /// Signals the interrupt.
    pub fn pulse(&self) -> std::io::Result<()> {
        match self {
            IrqLine::Gsi(line) => line
                .pulse()
                .map_err(|e| std::io::Error::other(format!("GSI {}: {e}", line.gsi()))),
            IrqLine::Eventfd(evt) => evt.write(1),
        }
    }

    /// The eventfd behind an [`IrqLine::Eventfd`].
    pub fn eventfd(&self) -> Option<&EventFd> {
        match self {
            IrqLine::Gsi(_) => None,
            IrqLine::Eventfd(evt) => Some(evt),
        }
    }
}

impl Trigger for IrqLine {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.pulse()
    }
}
