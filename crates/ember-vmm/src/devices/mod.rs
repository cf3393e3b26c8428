//! Emulated devices and the buses vCPU exits are dispatched on.
//!
//! A device implements [`bus::BusDevice`] and is inserted into the port-I/O or MMIO
//! [`bus::Bus`] before the vCPUs start. Interrupts go through eventfds registered as irqfds
//! with the in-kernel irqchip. Device state for snapshots lives next to each device
//! (`save_state`/`restore_state` with the snapshot codec), collected by
//! [`legacy::LegacyDevices`] and [`virtio::VirtioManager`].

pub mod bus;
pub mod legacy;
pub mod virtio;

use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

/// An eventfd used as an interrupt line (registered as an irqfd).
#[derive(Debug)]
pub struct IrqLine(pub EventFd);

impl Trigger for IrqLine {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}
