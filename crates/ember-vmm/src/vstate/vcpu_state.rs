//! The full architectural state of one vCPU as saved in a snapshot, how it is read from and
//! written to KVM, and its binary encoding.
//!
//! Saved: CPUID, MP state, regs, sregs, XSAVE area (FPU/SSE/AVX), XCRs, debug registers,
//! LAPIC, the serializable MSRs KVM lists (`KVM_GET_MSRS` stops at the first MSR it cannot
//! read, so the read loops over partial counts and skips the culprit), vCPU events (pending
//! exceptions/interrupts/NMIs) and the TSC frequency. Restored in the order KVM needs (CPUID
//! first, events last).

use kvm_bindings::CpuId;
use kvm_bindings::{
    KVM_MAX_CPUID_ENTRIES, KVM_MAX_MSR_ENTRIES, Msrs, kvm_cpuid_entry2, kvm_debugregs,
    kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs,
    kvm_xsave,
};
use kvm_ioctls::VcpuFd;

use crate::snapshot::codec::{DecodeError, Reader, Writer};

/// A failed vCPU state ioctl.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct VcpuStateError {
    /// Which ioctl.
    pub what: &'static str,
    /// The errno.
    pub source: kvm_ioctls::Error,
}

fn err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuStateError {
    move |source| VcpuStateError { what, source }
}

/// One vCPU's saved state.
pub struct VcpuState {
    /// CPUID entries as set on the vCPU.
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// Runnable / halted / waiting for SIPI.
    pub mp_state: kvm_mp_state,
    /// General registers.
    pub regs: kvm_regs,
    /// Segment and control registers.
    pub sregs: kvm_sregs,
    /// XSAVE area (x87, SSE, AVX, ...).
    pub xsave: Box<kvm_xsave>,
    /// Extended control registers.
    pub xcrs: kvm_xcrs,
    /// Debug registers.
    pub debugregs: kvm_debugregs,
    /// Local APIC registers.
    pub lapic: kvm_lapic_state,
    /// MSRs (index, value).
    pub msrs: Vec<kvm_msr_entry>,
    /// Pending exceptions, interrupts, NMIs, SMM state.
    pub events: kvm_vcpu_events,
    /// TSC frequency, if KVM reports it.
    pub tsc_khz: Option<u32>,
}

impl Clone for VcpuState {
    fn clone(&self) -> Self {
        let mut xsave = Box::<kvm_xsave>::default();
        xsave.region = self.xsave.region;
        VcpuState {
            cpuid: self.cpuid.clone(),
            mp_state: self.mp_state,
            regs: self.regs,
            sregs: self.sregs,
            xsave,
            xcrs: self.xcrs,
            debugregs: self.debugregs,
            lapic: self.lapic,
            msrs: self.msrs.clone(),
            events: self.events,
            tsc_khz: self.tsc_khz,
        }
    }
}

impl std::fmt::Debug for VcpuState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcpuState")
            .field("rip", &self.regs.rip)
            .field("mp_state", &self.mp_state.mp_state)
            .field("msrs", &self.msrs.len())
            .finish_non_exhaustive()
    }
}

impl VcpuState {
    /// Reads the state of a stopped vCPU (no pending I/O: see `Vcpu::complete_pending_io`).
    pub fn save(fd: &VcpuFd, msr_indices: &[u32]) -> Result<VcpuState, VcpuStateError> {
        let cpuid = fd
            .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
            .map_err(err("KVM_GET_CPUID2"))?;
        let mp_state = fd.get_mp_state().map_err(err("KVM_GET_MP_STATE"))?;
        let regs = fd.get_regs().map_err(err("KVM_GET_REGS"))?;
        let sregs = fd.get_sregs().map_err(err("KVM_GET_SREGS"))?;
        let xsave = Box::new(fd.get_xsave().map_err(err("KVM_GET_XSAVE"))?);
        let xcrs = fd.get_xcrs().map_err(err("KVM_GET_XCRS"))?;
        let debugregs = fd.get_debug_regs().map_err(err("KVM_GET_DEBUGREGS"))?;
        let lapic = fd.get_lapic().map_err(err("KVM_GET_LAPIC"))?;
        let msrs = read_msrs(fd, msr_indices)?;
        let events = fd.get_vcpu_events().map_err(err("KVM_GET_VCPU_EVENTS"))?;
        let tsc_khz = fd.get_tsc_khz().ok();
        Ok(VcpuState {
            cpuid: cpuid.as_slice().to_vec(),
            mp_state,
            regs,
            sregs,
            xsave,
            xcrs,
            debugregs,
            lapic,
            msrs,
            events,
            tsc_khz,
        })
    }

    /// Writes the state into a fresh vCPU of a VM whose irqchip state was restored.
    pub fn restore(&self, fd: &VcpuFd) -> Result<(), VcpuStateError> {
        let cpuid = CpuId::from_entries(&self.cpuid).map_err(|_| VcpuStateError {
            what: "CPUID list too long",
            source: kvm_ioctls::Error::new(libc::E2BIG),
        })?;
        fd.set_cpuid2(&cpuid).map_err(err("KVM_SET_CPUID2"))?;
        if let Some(khz) = self.tsc_khz
            && fd.get_tsc_khz().ok() != Some(khz)
        {
            // Cannot be changed on every host (not on this project's machines): the guest
            // keeps running at the host's rate. Restore on the host that saved.
            if let Err(e) = fd.set_tsc_khz(khz) {
                tracing::warn!(khz, error = %e, "vCPU TSC frequency differs from the snapshot's");
            }
        }
        fd.set_mp_state(self.mp_state)
            .map_err(err("KVM_SET_MP_STATE"))?;
        fd.set_regs(&self.regs).map_err(err("KVM_SET_REGS"))?;
        fd.set_sregs(&self.sregs).map_err(err("KVM_SET_SREGS"))?;
        // SAFETY: `xsave` is a complete legacy-size XSAVE area read by KVM_GET_XSAVE from a vCPU
        // with the same CPUID (restored just above), which is what KVM_SET_XSAVE expects.
        unsafe { fd.set_xsave(&self.xsave) }.map_err(err("KVM_SET_XSAVE"))?;
        fd.set_xcrs(&self.xcrs).map_err(err("KVM_SET_XCRS"))?;
        fd.set_debug_regs(&self.debugregs)
            .map_err(err("KVM_SET_DEBUGREGS"))?;
        fd.set_lapic(&self.lapic).map_err(err("KVM_SET_LAPIC"))?;
        write_msrs(fd, &self.msrs)?;
        fd.set_vcpu_events(&self.events)
            .map_err(err("KVM_SET_VCPU_EVENTS"))?;
        Ok(())
    }

    /// Appends the binary encoding.
    pub fn encode(&self, w: &mut Writer) {
        w.u32(self.cpuid.len() as u32);
        for e in &self.cpuid {
            w.pod(e);
        }
        w.pod(&self.mp_state);
        w.pod(&self.regs);
        w.pod(&self.sregs);
        w.pod(&*self.xsave);
        w.pod(&self.xcrs);
        w.pod(&self.debugregs);
        w.pod(&self.lapic);
        w.u32(self.msrs.len() as u32);
        for m in &self.msrs {
            w.u32(m.index);
            w.u64(m.data);
        }
        w.pod(&self.events);
        w.u32(self.tsc_khz.unwrap_or(0));
    }

    /// Decodes what [`VcpuState::encode`] wrote.
    pub fn decode(r: &mut Reader<'_>) -> Result<VcpuState, DecodeError> {
        let n = r.count("cpuid entry count", 4)?;
        let mut cpuid = Vec::with_capacity(n);
        for _ in 0..n {
            cpuid.push(r.pod("cpuid entry")?);
        }
        let mp_state = r.pod("mp_state")?;
        let regs = r.pod("regs")?;
        let sregs = r.pod("sregs")?;
        let xsave = Box::new(r.pod::<kvm_xsave>("xsave")?);
        let xcrs = r.pod("xcrs")?;
        let debugregs = r.pod("debugregs")?;
        let lapic = r.pod("lapic")?;
        let n = r.count("msr count", 12)?;
        let mut msrs = Vec::with_capacity(n);
        for _ in 0..n {
            let index = r.u32("msr index")?;
            let data = r.u64("msr value")?;
            msrs.push(kvm_msr_entry {
                index,
                data,
                ..Default::default()
            });
        }
        let events = r.pod("vcpu events")?;
        let tsc_khz = Some(r.u32("tsc_khz")?).filter(|k| *k != 0);
        Ok(VcpuState {
            cpuid,
            mp_state,
            regs,
            sregs,
            xsave,
            xcrs,
            debugregs,
            lapic,
            msrs,
            events,
            tsc_khz,
        })
    }
}

fn read_msrs(fd: &VcpuFd, indices: &[u32]) -> Result<Vec<kvm_msr_entry>, VcpuStateError> {
    let mut out = Vec::with_capacity(indices.len());
    let mut i = 0;
    while i < indices.len() {
        let chunk: Vec<kvm_msr_entry> = indices[i..]
            .iter()
            .take(KVM_MAX_MSR_ENTRIES)
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&chunk).map_err(|_| VcpuStateError {
            what: "MSR list too long",
            source: kvm_ioctls::Error::new(libc::E2BIG),
        })?;
        let n = fd.get_msrs(&mut msrs).map_err(err("KVM_GET_MSRS"))?;
        out.extend_from_slice(&msrs.as_slice()[..n.min(chunk.len())]);
        if n < chunk.len() {
            tracing::debug!(
                msr = format_args!("{:#x}", chunk[n].index),
                "MSR not readable, skipped"
            );
            i += n + 1;
        } else {
            i += n;
        }
    }
    Ok(out)
}

fn write_msrs(fd: &VcpuFd, entries: &[kvm_msr_entry]) -> Result<(), VcpuStateError> {
    let mut i = 0;
    while i < entries.len() {
        let chunk = &entries[i..(i + KVM_MAX_MSR_ENTRIES).min(entries.len())];
        let msrs = Msrs::from_entries(chunk).map_err(|_| VcpuStateError {
            what: "MSR list too long",
            source: kvm_ioctls::Error::new(libc::E2BIG),
        })?;
        let n = fd.set_msrs(&msrs).map_err(err("KVM_SET_MSRS"))?;
        if n < chunk.len() {
            tracing::warn!(
                msr = format_args!("{:#x}", chunk[n].index),
                "MSR not writable, skipped"
            );
            i += n + 1;
        } else {
            i += n;
        }
    }
    Ok(())
}

/// Writes MSR entries, failing if KVM rejects any (used for the boot MSRs).
pub fn set_msrs_exact(fd: &VcpuFd, entries: &[kvm_msr_entry]) -> Result<(), VcpuStateError> {
    let msrs = Msrs::from_entries(entries).map_err(|_| VcpuStateError {
        what: "MSR list too long",
        source: kvm_ioctls::Error::new(libc::E2BIG),
    })?;
    let n = fd.set_msrs(&msrs).map_err(err("KVM_SET_MSRS"))?;
    if n != entries.len() {
        return Err(VcpuStateError {
            what: "KVM_SET_MSRS (boot MSR rejected)",
            source: kvm_ioctls::Error::new(libc::EINVAL),
        });
    }
    Ok(())
}
