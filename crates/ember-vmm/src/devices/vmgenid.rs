//! The VM generation id (Microsoft's "Virtual Machine Generation ID", as Firecracker offers
//! it): 16 random bytes in a guest page the e820 map reserves ([`VMGENID_ADDR`]), described
//! in the DSDT (`arch::x86_64::acpi`: `VGEN` with `ADDR`, and a Generic Event Device on
//! [`GED_GSI`]). Linux's `vmgenid` driver (5.18 and later) mixes the id into its RNG at
//! probe, and on an ACPI notification reads it again and, if it changed, reseeds: what makes
//! two clones restored from one snapshot draw different random numbers.
//!
//! A boot writes a fresh id; a restore writes another one into the restored memory (after
//! the copy-on-write mapping, so the snapshot's memory file keeps the old one) and pulses
//! the GED's line, which Linux turns into `Notify (VGEN, 0x80)`. The snapshot keeps the
//! address and GSI ([`VmGenIdState`]): the guest's DSDT names them, so a restore must use the
//! saved ones, whatever this build would choose for a boot.
//!
//! The device is there for every boot (the ACPI tables are written for every kernel); a
//! guest that does not read ACPI (the probe) never looks at the page and never routes
//! [`GED_GSI`] (its IOAPIC pin stays masked, as KVM resets it), so the restore's pulse
//! reaches nothing.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::arch::x86_64::acpi::VmGenIdDevice;
use crate::arch::x86_64::layout::VMGENID_ADDR;
use crate::devices::IrqLine;
use crate::snapshot::codec::{DecodeError, Reader, Writer};

/// The Generic Event Device's line: ISA IRQ 3 (COM2's, which ember-vmm does not emulate),
/// the one legacy line no other device uses (virtio devices take 5..=23, COM1 4, the
/// i8042 1, the PIT 0 and 2).
pub const GED_GSI: u32 = 3;
/// Length of the generation id.
pub const VMGENID_LEN: usize = 16;

/// Errors of the VM generation id.
#[derive(Debug, thiserror::Error)]
pub enum VmGenIdError {
    /// The host's random generator failed.
    #[error("VM generation id: getrandom: {0}")]
    Random(getrandom::Error),
    /// Writing the id into guest memory failed.
    #[error("VM generation id: writing guest memory at {addr:#x}: {source}")]
    GuestWrite {
        /// Where.
        addr: u64,
        /// Why.
        source: vm_memory::GuestMemoryError,
    },
    /// Raising the GED's interrupt failed.
    #[error("VM generation id: notifying the guest: {0}")]
    Notify(std::io::Error),
}

/// What a snapshot keeps: where the id lives and the GED's GSI (both named by the guest's
/// DSDT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmGenIdState {
    /// Guest-physical address of the 16-byte id.
    pub addr: u64,
    /// The Generic Event Device's GSI.
    pub gsi: u32,
}

impl VmGenIdState {
    /// What a boot of this build uses.
    pub const BOOT: VmGenIdState = VmGenIdState {
        addr: VMGENID_ADDR,
        gsi: GED_GSI,
    };

    /// Appends the encoding: address (u64), GSI (u32).
    pub fn encode(&self, w: &mut Writer) {
        w.u64(self.addr);
        w.u32(self.gsi);
    }

    /// Decodes what [`VmGenIdState::encode`] wrote (not checked against the VM: see
    /// `snapshot::validate`).
    pub fn decode(r: &mut Reader<'_>) -> Result<VmGenIdState, DecodeError> {
        Ok(VmGenIdState {
            addr: r.u64("vmgenid address")?,
            gsi: r.u32("vmgenid gsi")?,
        })
    }

    /// How the ACPI tables describe it.
    pub fn acpi(&self) -> VmGenIdDevice {
        VmGenIdDevice {
            addr: self.addr,
            gsi: self.gsi,
        }
    }
}

/// The generation id of a running VM.
#[derive(Debug, Clone)]
pub struct VmGenId {
    state: VmGenIdState,
    id: [u8; VMGENID_LEN],
}

impl VmGenId {
    /// A fresh id at `state.addr`, written into `mem`. Used by a boot (with
    /// [`VmGenIdState::BOOT`]) and by a restore (with the snapshot's state, after the memory
    /// is mapped: the write lands in a private copy of the page).
    pub fn generate(state: VmGenIdState, mem: &GuestMemoryMmap) -> Result<VmGenId, VmGenIdError> {
        let mut id = [0u8; VMGENID_LEN];
        getrandom::fill(&mut id).map_err(VmGenIdError::Random)?;
        mem.write_slice(&id, GuestAddress(state.addr))
            .map_err(|source| VmGenIdError::GuestWrite {
                addr: state.addr,
                source,
            })?;
        tracing::debug!(
            addr = state.addr,
            gsi = state.gsi,
            "VM generation id written"
        );
        Ok(VmGenId { state, id })
    }

    /// Tells the guest the id changed: one edge on the GED's line (`line` must be
    /// [`VmGenIdState::gsi`]'s). Only after the vCPUs' LAPIC state is restored, which would
    /// otherwise drop the pending interrupt.
    pub fn notify(&self, line: &IrqLine) -> Result<(), VmGenIdError> {
        line.pulse().map_err(VmGenIdError::Notify)
    }

    /// Where it lives and its GSI.
    pub fn state(&self) -> VmGenIdState {
        self.state
    }

    /// The id written.
    pub fn id(&self) -> [u8; VMGENID_LEN] {
        self.id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vstate::memory::GuestMemory;
    use std::io::Write;
    use vmm_sys_util::eventfd::EventFd;

    fn read_id(mem: &GuestMemoryMmap, addr: u64) -> [u8; VMGENID_LEN] {
        let mut b = [0u8; VMGENID_LEN];
        mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
        b
    }

    #[test]
    fn boot_writes_a_random_id_at_the_reserved_page() {
        let mem = GuestMemory::anonymous(&[(0, 2 << 20)]).unwrap();
        let a = VmGenId::generate(VmGenIdState::BOOT, mem.mmap()).unwrap();
        assert_eq!(a.state().addr, VMGENID_ADDR);
        assert_eq!(a.state().gsi, GED_GSI);
        assert_eq!(read_id(mem.mmap(), VMGENID_ADDR), a.id());
        assert_ne!(a.id(), [0; VMGENID_LEN]);
        let b = VmGenId::generate(VmGenIdState::BOOT, mem.mmap()).unwrap();
        assert_ne!(a.id(), b.id());
        assert_eq!(read_id(mem.mmap(), VMGENID_ADDR), b.id());
        // Outside guest memory: an error, not a panic.
        let far = VmGenIdState {
            addr: 4 << 20,
            gsi: GED_GSI,
        };
        assert!(matches!(
            VmGenId::generate(far, mem.mmap()),
            Err(VmGenIdError::GuestWrite { .. })
        ));
    }

    #[test]
    fn restore_writes_a_new_id_into_the_private_copy_only() {
        // A memory file holding an old id, mapped as a restore maps it.
        let size = 1u64 << 20;
        let old = [0xa5u8; VMGENID_LEN];
        let mut file = tempfile::tempfile().unwrap();
        file.set_len(size).unwrap();
        let mut image = vec![0u8; size as usize];
        image[VMGENID_ADDR as usize..VMGENID_ADDR as usize + VMGENID_LEN].copy_from_slice(&old);
        file.write_all(&image).unwrap();
        let mapped = file.try_clone().unwrap();
        let mem = GuestMemory::from_file_private(mapped, &[(0, size)]).unwrap();
        assert_eq!(read_id(mem.mmap(), VMGENID_ADDR), old);

        let g = VmGenId::generate(VmGenIdState::BOOT, mem.mmap()).unwrap();
        assert_ne!(g.id(), old);
        assert_eq!(read_id(mem.mmap(), VMGENID_ADDR), g.id());
        // The file is untouched.
        let mut after = vec![0u8; size as usize];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut after, 0).unwrap();
        assert!(after == image, "the memory file changed");

        // The notification is one edge on the GED's line.
        let line = IrqLine::Eventfd(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        g.notify(&line).unwrap();
        assert_eq!(line.eventfd().unwrap().read().unwrap(), 1);
    }

    #[test]
    fn state_round_trip() {
        let s = VmGenIdState {
            addr: 0x1_2345_6000,
            gsi: 7,
        };
        let mut w = Writer::default();
        s.encode(&mut w);
        let v = w.into_vec();
        assert_eq!(v.len(), 12);
        let mut r = Reader::new(&v);
        assert_eq!(VmGenIdState::decode(&mut r).unwrap(), s);
        r.finish("vmgenid").unwrap();
        assert!(VmGenIdState::decode(&mut Reader::new(&v[..11])).is_err());
        assert_eq!(
            s.acpi(),
            VmGenIdDevice {
                addr: 0x1_2345_6000,
                gsi: 7
            }
        );
    }
}
