//! The KVM VM: creation with the in-kernel irqchip (PIC, IOAPIC, LAPICs) and PIT, guest
//! memory slots, interrupt lines ([`GsiLine`]), and the VM-wide state of a snapshot (clock,
//! PICs, IOAPIC, PIT) with its binary encoding.
//!
//! Interrupts are pulsed with `KVM_IRQ_LINE` from the thread that has news, not through
//! irqfds: KVM injects an irqfd on an irqchip (IOAPIC/PIC) route from a kernel worker
//! (`kvm_arch_set_irq_inatomic` only handles MSI routes), so every irqfd interrupt costs a
//! worker wake-up and a context switch, and puts an ordinary-priority kworker on the path of
//! every virtio reply. `KVM_IRQ_LINE` raises and lowers the line synchronously in the caller:
//! the same edge, delivered by the same IOAPIC code, one hop shorter.

use kvm_bindings::{
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_PIT_SPEAKER_DUMMY,
    kvm_clock_data, kvm_irqchip, kvm_pit_config, kvm_pit_state2, kvm_userspace_memory_region,
};
use std::sync::{Arc, Mutex};

use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use super::memory::GuestMemory;
use crate::arch::x86_64::layout::KVM_TSS_ADDR;
use crate::snapshot::codec::{DecodeError, Reader, Writer};

/// One interrupt line of the in-kernel irqchip, shareable across the threads that raise it.
#[derive(Debug)]
pub struct GsiLine {
    fd: Arc<VmFd>,
    gsi: u32,
    /// Serializes pulses: two threads pulsing at once would share one rising edge, and the
    /// second one's news could land after the guest's handler had looked. In turn, each
    /// pulse is its own edge (irqfd injection behaves the same way).
    pulsing: Mutex<()>,
}

impl GsiLine {
    /// An edge on the line: raised, then lowered.
    pub fn pulse(&self) -> Result<(), VmError> {
        // Only `()` is guarded; a poisoned lock is still usable.
        let _one_at_a_time = self.pulsing.lock().unwrap_or_else(|p| p.into_inner());
        self.fd
            .set_irq_line(self.gsi, true)
            .map_err(err("KVM_IRQ_LINE (raise)"))?;
        self.fd
            .set_irq_line(self.gsi, false)
            .map_err(err("KVM_IRQ_LINE (lower)"))
    }

    /// The line's GSI.
    pub fn gsi(&self) -> u32 {
        self.gsi
    }
}

/// Errors of VM-level KVM operations.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct VmError {
    /// Which ioctl or step.
    pub what: &'static str,
    /// The errno.
    pub source: kvm_ioctls::Error,
}

fn err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError { what, source }
}

/// A KVM VM with its irqchip and PIT.
#[derive(Debug)]
pub struct Vm {
    fd: Arc<VmFd>,
}

impl Vm {
    /// `KVM_CREATE_VM`, TSS address, in-kernel irqchip and PIT.
    pub fn create(kvm: &Kvm) -> Result<Vm, VmError> {
        let vm = Self::create_bare(kvm)?;
        vm.create_irqchip_and_pit()?;
        Ok(vm)
    }

    /// `KVM_CREATE_VM` and the TSS address only. A memory slot registered now is cheap; once
    /// the irqchip and vCPUs exist, the first slot registration within a few milliseconds of
    /// their creation stalls for several milliseconds (measured on this project's hosts), so a
    /// boot that knows its memory size registers it in between.
    pub fn create_bare(kvm: &Kvm) -> Result<Vm, VmError> {
        let fd = kvm.create_vm().map_err(err("KVM_CREATE_VM"))?;
        fd.set_tss_address(KVM_TSS_ADDR as usize)
            .map_err(err("KVM_SET_TSS_ADDR"))?;
        Ok(Vm { fd: Arc::new(fd) })
    }

    /// In-kernel irqchip (PIC, IOAPIC, LAPICs) and PIT (speaker port dummy).
    pub fn create_irqchip_and_pit(&self) -> Result<(), VmError> {
        self.fd
            .create_irq_chip()
            .map_err(err("KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        self.fd.create_pit2(pit).map_err(err("KVM_CREATE_PIT2"))?;
        Ok(())
    }

    /// The VM file descriptor.
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// Registers every region of `memory` as a KVM memory slot (slot i = region i).
    pub fn register_memory(&self, memory: &GuestMemory) -> Result<(), VmError> {
        for (slot, region) in memory.mmap().iter().enumerate() {
            let host = memory
                .mmap()
                .get_host_address(region.start_addr())
                .map_err(|_| VmError {
                    what: "guest memory region has no host address",
                    source: kvm_ioctls::Error::new(libc::EFAULT),
                })?;
            let desc = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the mapping at `host` is `region.len()` bytes long and stays mapped as
            // long as `memory` lives; the owner (`Microvm`) keeps the memory alive at least as
            // long as this VM, and drops the VM first.
            unsafe { self.fd.set_user_memory_region(desc) }
                .map_err(err("KVM_SET_USER_MEMORY_REGION"))?;
        }
        Ok(())
    }

    /// Interrupt line `gsi` of the irqchip, pulsed with `KVM_IRQ_LINE` (see the module doc).
    pub fn line(&self, gsi: u32) -> GsiLine {
        GsiLine {
            fd: Arc::clone(&self.fd),
            gsi,
            pulsing: Mutex::new(()),
        }
    }

    /// Reads the VM-wide device and clock state (VM paused).
    pub fn save_state(&self) -> Result<VmState, VmError> {
        let chip = |chip_id| -> Result<kvm_irqchip, VmError> {
            let mut c = kvm_irqchip {
                chip_id,
                ..Default::default()
            };
            self.fd
                .get_irqchip(&mut c)
                .map_err(err("KVM_GET_IRQCHIP"))?;
            Ok(c)
        };
        Ok(VmState {
            clock: self.fd.get_clock().map_err(err("KVM_GET_CLOCK"))?,
            pic_master: chip(KVM_IRQCHIP_PIC_MASTER)?,
            pic_slave: chip(KVM_IRQCHIP_PIC_SLAVE)?,
            ioapic: chip(KVM_IRQCHIP_IOAPIC)?,
            pit: self.fd.get_pit2().map_err(err("KVM_GET_PIT2"))?,
        })
    }

    /// Restores the VM-wide state. The clock continues from the saved value (no
    /// `KVM_CLOCK_REALTIME` adjustment).
    pub fn restore_state(&self, state: &VmState) -> Result<(), VmError> {
        self.fd.set_pit2(&state.pit).map_err(err("KVM_SET_PIT2"))?;
        let clock = kvm_clock_data {
            flags: 0,
            ..state.clock
        };
        self.fd.set_clock(&clock).map_err(err("KVM_SET_CLOCK"))?;
        self.fd
            .set_irqchip(&state.pic_master)
            .map_err(err("KVM_SET_IRQCHIP(pic master)"))?;
        self.fd
            .set_irqchip(&state.pic_slave)
            .map_err(err("KVM_SET_IRQCHIP(pic slave)"))?;
        self.fd
            .set_irqchip(&state.ioapic)
            .map_err(err("KVM_SET_IRQCHIP(ioapic)"))?;
        Ok(())
    }
}

/// VM-wide state saved in a snapshot.
#[derive(Clone)]
pub struct VmState {
    /// kvmclock.
    pub clock: kvm_clock_data,
    /// Master 8259.
    pub pic_master: kvm_irqchip,
    /// Slave 8259.
    pub pic_slave: kvm_irqchip,
    /// IOAPIC.
    pub ioapic: kvm_irqchip,
    /// i8254 PIT.
    pub pit: kvm_pit_state2,
}

impl std::fmt::Debug for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmState")
            .field("clock", &self.clock.clock)
            .finish_non_exhaustive()
    }
}

impl VmState {
    /// Appends the binary encoding.
    pub fn encode(&self, w: &mut Writer) {
        w.pod(&self.clock);
        w.pod(&self.pic_master);
        w.pod(&self.pic_slave);
        w.pod(&self.ioapic);
        w.pod(&self.pit);
    }

    /// Decodes what [`VmState::encode`] wrote.
    pub fn decode(r: &mut Reader<'_>) -> Result<VmState, DecodeError> {
        Ok(VmState {
            clock: r.pod("kvm_clock_data")?,
            pic_master: r.pod("pic master")?,
            pic_slave: r.pod("pic slave")?,
            ioapic: r.pod("ioapic")?,
            pit: r.pod("pit")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_pulse_from_many_threads_and_need_an_irqchip() {
        let kvm = Kvm::new().expect("/dev/kvm");
        let bare = Vm::create_bare(&kvm).unwrap();
        let err = bare.line(5).pulse().unwrap_err();
        assert!(err.to_string().contains("KVM_IRQ_LINE"), "{err}");

        let vm = Vm::create(&kvm).unwrap();
        let line = std::sync::Arc::new(vm.line(5));
        assert_eq!(line.gsi(), 5);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let line = std::sync::Arc::clone(&line);
                std::thread::spawn(move || {
                    for _ in 0..500 {
                        line.pulse().unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }
}
