//! A running (or paused) microVM: its vCPU threads, devices, KVM VM and guest memory, and
//! the operations on it — pause, resume, Ctrl+Alt+Del, snapshot.
//!
//! Field order matters: vCPU threads are stopped and joined first, then devices (the virtio
//! device thread stops before its devices close their sockets), the VM (KVM frees its state),
//! and guest memory last.

use std::path::Path;
use std::sync::Arc;

use kvm_ioctls::VcpuFd;

use crate::builder::{BuildContext, BuildError, spawn_vcpus};
use crate::config::VmConfig;
use crate::devices::bus::Buses;
use crate::devices::legacy::LegacyDevices;
use crate::devices::virtio::VirtioManager;
use crate::devices::vmgenid::VmGenIdState;
use crate::snapshot::{MicrovmState, SnapshotId, files};
use crate::timing::PhaseTimings;
use crate::vstate::kvm::KvmContext;
use crate::vstate::memory::{DumpStats, GuestMemory, MemoryError};
use crate::vstate::vcpu::{VcpuError, VcpuHandle, VcpuThread};
use crate::vstate::vm::{Vm, VmError};

/// Errors of operations on a running VM.
#[derive(Debug, thiserror::Error)]
pub enum MicrovmError {
    /// A vCPU did not cooperate.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// Reading VM state failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// Dumping memory failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Writing a snapshot file failed.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Listing MSRs failed.
    #[error(transparent)]
    Kvm(#[from] crate::vstate::kvm::KvmError),
    /// The operation needs another run state.
    #[error("{0}")]
    State(&'static str),
}

/// Sizes written by a snapshot.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotStats {
    /// Bytes of the state file.
    pub state_bytes: usize,
    /// Memory dump statistics.
    pub memory: DumpStats,
}

/// A microVM whose vCPU threads exist.
pub struct Microvm {
    vcpus: Vec<VcpuHandle>,
    virtio: VirtioManager,
    devices: LegacyDevices,
    _buses: Arc<Buses>,
    vm: Vm,
    memory: GuestMemory,
    kvm: Arc<KvmContext>,
    vmgenid: Option<VmGenIdState>,
    config: VmConfig,
    paused: bool,
}

impl Microvm {
    /// Spawns the vCPU threads (running, or parked when `paused`) and waits until running ones
    /// are about to enter `KVM_RUN`; the BSP's timestamp ends `timings`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn start(
        ctx: &BuildContext<'_>,
        vm: Vm,
        memory: GuestMemory,
        (fds, first_thread): (Vec<VcpuFd>, Option<VcpuThread>),
        (buses, devices, virtio): (Buses, LegacyDevices, VirtioManager),
        vmgenid: Option<VmGenIdState>,
        config: VmConfig,
        paused: bool,
        timings: &mut PhaseTimings,
    ) -> Result<Microvm, BuildError> {
        let buses = Arc::new(buses);
        let mut vcpus = spawn_vcpus(fds, first_thread, &buses, ctx.exit, paused)?;
        if !paused {
            let mut bsp_start = 0;
            for v in vcpus.iter_mut() {
                let t = v.wait_running()?;
                if v.index() == 0 {
                    bsp_start = t;
                }
            }
            timings.end_at("start_vcpus", bsp_start);
        } else {
            timings.phase("start_vcpus");
        }
        Ok(Microvm {
            vcpus,
            virtio,
            devices,
            _buses: buses,
            vm,
            memory,
            kvm: ctx.kvm.clone(),
            vmgenid,
            config,
            paused,
        })
    }

    /// True while the vCPUs are parked.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// The configuration the VM runs with.
    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    /// Stops every vCPU at an instruction boundary.
    pub fn pause(&mut self) -> Result<(), MicrovmError> {
        for v in &self.vcpus {
            v.pause()?;
        }
        self.paused = true;
        Ok(())
    }

    /// Lets the vCPUs run again. Does not wait for their threads to wake (`PATCH /vm` answers
    /// as soon as the request is queued; requests to a vCPU are handled in order).
    pub fn resume(&mut self) -> Result<(), MicrovmError> {
        for v in &self.vcpus {
            v.resume_detached()?;
        }
        self.paused = false;
        Ok(())
    }

    /// Feeds console input to the guest's COM1 (bytes beyond the 64-byte FIFO are dropped).
    pub fn console_input(&self, bytes: &[u8]) -> usize {
        self.devices.console_input(bytes)
    }

    /// The virtio devices.
    pub fn virtio(&self) -> &VirtioManager {
        &self.virtio
    }

    /// Injects Ctrl+Alt+Del.
    pub fn send_ctrl_alt_del(&self) -> Result<(), MicrovmError> {
        if self.devices.send_ctrl_alt_del() {
            Ok(())
        } else {
            Err(MicrovmError::State("the i8042 keyboard buffer is full"))
        }
    }

    /// Writes a full snapshot (VM must be paused): state file and sparse memory file, paired
    /// by a fresh snapshot id, each written to a private temporary file and renamed into place
    /// once both are complete (`snapshot::files::write_pair`), so VMs already mapping an older
    /// memory file at the same path keep their pages.
    pub fn snapshot(
        &self,
        snapshot_path: &Path,
        mem_path: &Path,
        timings: &mut PhaseTimings,
    ) -> Result<SnapshotStats, MicrovmError> {
        if !self.paused {
            return Err(MicrovmError::State("the VM must be paused"));
        }
        // Devices first, and held still until the memory file is written: their
        // `prepare_save` may touch guest memory (vsock's transport-reset event), and the
        // device thread must not change memory while it is dumped.
        let mut quiesced = self.virtio.quiesce();
        let virtio = quiesced.save();
        timings.phase("device_state");
        let msrs = self.kvm.msrs_to_save()?;
        let mut vcpus = Vec::with_capacity(self.vcpus.len());
        for v in &self.vcpus {
            vcpus.push(v.save_state(msrs)?);
        }
        let host_tsc_khz = vcpus.first().and_then(|v| v.tsc_khz).unwrap_or(0);
        timings.phase("vcpu_state");
        let snapshot_id = SnapshotId::random();
        let state = MicrovmState {
            snapshot_id,
            memory_regions: self.memory.layout(),
            config_json: serde_json::to_vec(&self.config).unwrap_or_default(),
            vm: self.vm.save_state()?,
            vcpus,
            legacy: self.devices.state(),
            host_tsc_khz,
            virtio,
            vmgenid: self.vmgenid,
        };
        timings.phase("vm_state");
        let bytes = state.to_bytes();
        let stats = files::write_pair(
            snapshot_path,
            mem_path,
            &bytes,
            snapshot_id,
            self.memory.total_size(),
            |f| self.memory.dump_sparse(f),
        )
        .map_err(|e| match e {
            files::WriteError::Io { path, source } => MicrovmError::Write { path, source },
            files::WriteError::Memory(m) => MicrovmError::Memory(m),
        })?;
        timings.phase("write_files");
        drop(quiesced);
        Ok(SnapshotStats {
            state_bytes: bytes.len(),
            memory: stats,
        })
    }
}
