//! Assembles a running [`Microvm`] from a configuration (boot) or from a decoded snapshot
//! (restore), on top of a [`VmShell`]: the VM, irqchip, PIT, vCPU 0 and interrupt eventfds,
//! created ahead of time while the process waits for its first request, so neither path pays
//! for them.
//!
//! Boot order: memory, virtio devices (their `virtio_mmio.device=` entries go on the command
//! line, and into the ACPI DSDT for kernels without that option), kernel, initrd, command
//! line, the VM generation id, ACPI tables, zero page, MP table, page tables, GDT and (for a
//! vmlinux with a PVH note) PVH's start info, then per vCPU:
//! normalized CPUID, boot MSRs, registers, FPU, LAPIC LINTs; legacy devices; threads.
//! Restore order: virtio devices rebuilt from their sections (sockets bound before anything
//! irreversible, so a bad `uds_path` leaves the shell usable), memory (copy-on-write mapping
//! of the file, or eager copy), a fresh VM generation id written into it, VM state (PIT,
//! clock, PICs, IOAPIC), per-vCPU state, devices attached (transport state restored), the
//! generation id's notification (its GED line pulsed once the LAPICs are restored), threads.
//!
//! Devices are attached in one place, `attach_devices`; which virtio devices exist is
//! decided by `devices::virtio::registry`.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress};

use crate::arch::x86_64::boot_params::ZeroPage;
use crate::arch::x86_64::boot_params::standard_e820;
use crate::arch::x86_64::gdt::PVH_GDT;
use crate::arch::x86_64::layout::{CMDLINE_ADDR, CMDLINE_MAX_SIZE, ram_regions};
use crate::arch::x86_64::{ArchError, acpi, cpuid, mptable, msr, paging, pvh, regs};
use crate::config::VmConfig;
use crate::devices::IrqLine;
use crate::devices::bus::Buses;
use crate::devices::legacy::i8042::KBD_GSI;
use crate::devices::legacy::serial::{COM1_GSI, SerialConfig, SerialSink};
use crate::devices::legacy::{LegacyDevices, LegacyError};
use crate::devices::virtio::registry::{self, PreparedDevices};
use crate::devices::virtio::{VirtioDevice, VirtioError, VirtioManager};
use crate::devices::vmgenid::{VmGenId, VmGenIdError, VmGenIdState};
use crate::exit::ExitSignal;
use crate::loader::{self, LoaderError};
use crate::microvm::Microvm;
use crate::snapshot::MicrovmState;
use crate::timing::PhaseTimings;
use crate::vstate::kvm::{KvmContext, KvmError};
use crate::vstate::memory::{GuestMemory, MemoryError};
use crate::vstate::vcpu::{Vcpu, VcpuError, VcpuThread};
use crate::vstate::vcpu_state::{VcpuStateError, set_msrs_exact};
use crate::vstate::vm::{Vm, VmError};

/// Errors building a VM.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// VM-level KVM failure.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// KVM system failure.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// Creating a vCPU failed.
    #[error("KVM_CREATE_VCPU {index}: {source}")]
    CreateVcpu {
        /// vCPU index.
        index: u8,
        /// The errno.
        source: kvm_ioctls::Error,
    },
    /// Guest memory.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Kernel loading.
    #[error(transparent)]
    Loader(#[from] LoaderError),
    /// Boot structures.
    #[error(transparent)]
    Arch(#[from] ArchError),
    /// vCPU state ioctls.
    #[error(transparent)]
    VcpuState(#[from] VcpuStateError),
    /// vCPU threads.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// Devices.
    #[error(transparent)]
    Legacy(#[from] LegacyError),
    /// Virtio devices.
    #[error(transparent)]
    Virtio(#[from] VirtioError),
    /// The VM generation id.
    #[error(transparent)]
    VmGenId(#[from] VmGenIdError),
    /// An eventfd or output file.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The configuration cannot be booted.
    #[error("{0}")]
    Config(String),
}

/// A VM with its irqchip, PIT, vCPU 0 and interrupt lines, not yet given memory or state.
pub struct VmShell {
    vm: Vm,
    vcpu0: VcpuFd,
    vcpu0_thread: Option<VcpuThread>,
    created_ns: u64,
}

/// How long after `KVM_CREATE_IRQCHIP` a memory slot registration may stall (~5 ms measured
/// on this project's hosts: the kernel waits for a grace period the irqchip set-up started).
/// A shell younger than this is not used for a restore; a fresh VM registers memory first.
pub const IRQCHIP_SETTLE_NS: u64 = 8_000_000;

impl std::fmt::Debug for VmShell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmShell").finish_non_exhaustive()
    }
}

impl VmShell {
    /// True once a memory slot can be registered without the post-irqchip stall.
    pub fn is_settled(&self) -> bool {
        crate::timing::now_ns().saturating_sub(self.created_ns) >= IRQCHIP_SETTLE_NS
    }

    /// Creates the VM, irqchip, PIT and vCPU 0 (~0.3 ms).
    pub fn create(kvm: &KvmContext) -> Result<VmShell, BuildError> {
        Self::create_with(kvm, None)
    }

    /// Same, registering `memory` before the irqchip exists (see [`Vm::create_bare`]).
    fn create_with(kvm: &KvmContext, memory: Option<&GuestMemory>) -> Result<VmShell, BuildError> {
        let vm = Vm::create_bare(kvm.kvm())?;
        if let Some(m) = memory {
            vm.register_memory(m)?;
        }
        vm.create_irqchip_and_pit()?;
        let vcpu0 = vm
            .fd()
            .create_vcpu(0)
            .map_err(|source| BuildError::CreateVcpu { index: 0, source })?;
        let vcpu0_thread = Some(VcpuThread::prespawn(0)?);
        Ok(VmShell {
            vm,
            vcpu0,
            vcpu0_thread,
            created_ns: crate::timing::now_ns(),
        })
    }
}

fn create_vcpus(vm: &Vm, first: VcpuFd, count: u8) -> Result<Vec<VcpuFd>, BuildError> {
    let mut fds = Vec::with_capacity(usize::from(count));
    fds.push(first);
    for index in 1..count {
        fds.push(
            vm.fd()
                .create_vcpu(u64::from(index))
                .map_err(|source| BuildError::CreateVcpu { index, source })?,
        );
    }
    Ok(fds)
}

/// Where virtio devices come from: new ones for a boot, rebuilt ones (with their saved
/// sections) for a restore.
enum VirtioSource<'a> {
    Boot(Vec<Box<dyn VirtioDevice>>),
    Restore(
        Vec<(
            Box<dyn VirtioDevice>,
            &'a crate::devices::virtio::manager::DeviceSnapshot,
        )>,
    ),
}

/// Attaches every device: virtio devices on the MMIO bus (interrupt lines, ioeventfds, device thread)
/// and the legacy devices on the port bus. The one place devices are put on a VM.
fn attach_devices(
    vm: &Vm,
    memory: &GuestMemory,
    ctx: &BuildContext<'_>,
    virtio: VirtioSource<'_>,
    legacy_state: Option<&crate::devices::legacy::LegacyState>,
) -> Result<(Buses, LegacyDevices, VirtioManager), BuildError> {
    let mut buses = Buses::default();
    let virtio = match virtio {
        VirtioSource::Boot(devices) => {
            VirtioManager::attach(vm, &mut buses.mmio, memory.mmap(), devices)?
        }
        VirtioSource::Restore(devices) => {
            VirtioManager::restore(vm, &mut buses.mmio, memory.mmap(), devices)?
        }
    };
    let out =
        SerialSink::open(ctx.serial, ctx.console_first_line_ns.clone()).map_err(|source| {
            BuildError::Io {
                what: "opening serial output",
                source,
            }
        })?;
    let devices = LegacyDevices::attach(
        &mut buses.pio,
        IrqLine::Gsi(vm.line(COM1_GSI)),
        IrqLine::Gsi(vm.line(KBD_GSI)),
        out,
        ctx.exit.clone(),
        legacy_state,
    )?;
    Ok((buses, devices, virtio))
}

/// Common inputs of boot and restore.
pub struct BuildContext<'a> {
    /// The KVM handle.
    pub kvm: &'a Arc<KvmContext>,
    /// Where stop requests go.
    pub exit: &'a Arc<ExitSignal>,
    /// Where COM1 output goes, and its size limit.
    pub serial: &'a SerialConfig,
    /// Set to CLOCK_MONOTONIC ns when the guest completes its first console line.
    pub console_first_line_ns: &'a Arc<std::sync::atomic::AtomicU64>,
}

/// Boots `config` on `shell`, or on a VM created now with its memory registered first;
/// returns once every vCPU is about to run. Devices already created by API requests are
/// taken from `prepared`.
pub fn boot(
    ctx: &BuildContext<'_>,
    shell: Option<VmShell>,
    config: &VmConfig,
    prepared: &mut PreparedDevices,
    timings: &mut PhaseTimings,
) -> Result<Microvm, BuildError> {
    let boot_source = config
        .boot_source
        .as_ref()
        .ok_or_else(|| BuildError::Config("no boot source configured (PUT /boot-source)".into()))?;
    let machine = &config.machine_config;
    let memory = GuestMemory::anonymous(&ram_regions(machine.mem_size_bytes()))?;
    let shell = match shell {
        Some(shell) => {
            shell.vm.register_memory(&memory)?;
            shell
        }
        None => VmShell::create_with(ctx.kvm, Some(&memory))?,
    };
    timings.phase("vm_and_memory");

    let virtio_devices = registry::devices_for_config(config, prepared)?;
    let (buses, devices, virtio) = attach_devices(
        &shell.vm,
        &memory,
        ctx,
        VirtioSource::Boot(virtio_devices),
        None,
    )?;
    timings.phase("devices");

    let kernel = loader::load(&memory, Path::new(&boot_source.kernel_image_path))?;
    let initrd = match &boot_source.initrd_path {
        Some(path) => Some(loader::load_initrd(&memory, path, &kernel)?),
        None => None,
    };
    let cmdline = format!(
        "{}{}{}",
        boot_source.cmdline(),
        crate::devices::virtio::block::root_args(&config.drives),
        virtio.cmdline_entries()
    );
    if cmdline.len() > CMDLINE_MAX_SIZE {
        return Err(BuildError::Config(format!(
            "boot_args: longer than {CMDLINE_MAX_SIZE} bytes"
        )));
    }
    let mut cmd_bytes = cmdline.as_bytes().to_vec();
    cmd_bytes.push(0);
    memory
        .mmap()
        .write_slice(&cmd_bytes, GuestAddress(CMDLINE_ADDR))
        .map_err(|source| ArchError::GuestWrite {
            what: "command line",
            addr: CMDLINE_ADDR,
            source,
        })?;
    let mmio_devices: Vec<acpi::MmioDevice> = virtio
        .devices()
        .into_iter()
        .map(|(_, _, base, gsi)| acpi::MmioDevice {
            base,
            len: crate::devices::virtio::mmio::MMIO_LEN,
            gsi,
        })
        .collect();
    let vmgenid = VmGenId::generate(VmGenIdState::BOOT, memory.mmap())?;
    let rsdp = acpi::write(
        memory.mmap(),
        machine.vcpu_count,
        &crate::devices::legacy::acpi_devices(),
        &mmio_devices,
        Some(&vmgenid.state().acpi()),
    )?;
    let mut zero_page = ZeroPage::new();
    if let Some(header) = &kernel.setup_header {
        zero_page.set_setup_header(header)?;
    }
    zero_page.set_cmdline(CMDLINE_ADDR as u32, cmdline.len() as u32);
    if let Some(initrd) = initrd {
        // `place_initrd` keeps it below the 32-bit MMIO gap, so both fit in 32 bits.
        zero_page.set_ramdisk(initrd.addr as u32, initrd.size as u32);
    }
    zero_page.set_acpi_rsdp(rsdp);
    zero_page.add_standard_e820(&memory.layout())?;
    zero_page.write_to(memory.mmap())?;
    mptable::write(memory.mmap(), machine.vcpu_count)?;
    paging::write_identity_page_tables(memory.mmap())?;
    // A vmlinux with a PVH note is entered through it (32-bit, start info in ebx); anything
    // else at its 64-bit entry with the zero page in rsi.
    let pvh = match (kernel.format, kernel.pvh_entry) {
        (loader::KernelFormat::Elf, Some(entry)) => {
            let info = pvh::StartInfo {
                cmdline_addr: CMDLINE_ADDR,
                initrd: initrd.map(|i| (i.addr, i.size)),
                rsdp_addr: rsdp,
                memmap: standard_e820(&memory.layout()),
            };
            regs::write_gdt_and_idt_from(memory.mmap(), &PVH_GDT)?;
            Some((entry, info.write_to(memory.mmap())?))
        }
        _ => {
            regs::write_gdt_and_idt(memory.mmap())?;
            None
        }
    };
    tracing::debug!(
        format = ?kernel.format,
        pvh = pvh.is_some(),
        entry = kernel.entry,
        initrd = ?initrd,
        "kernel loaded"
    );
    timings.phase("load_kernel");

    let fds = create_vcpus(&shell.vm, shell.vcpu0, machine.vcpu_count)?;
    let supported = ctx.kvm.supported_cpuid()?;
    let boot_msrs = msr::boot_msr_entries();
    for (index, fd) in fds.iter().enumerate() {
        let mut entries = supported.to_vec();
        cpuid::normalize(
            &mut entries,
            index as u8,
            machine.vcpu_count,
            ctx.kvm.tsc_deadline(),
        );
        let cpuid = kvm_bindings::CpuId::from_entries(&entries)
            .map_err(|_| BuildError::Config("too many CPUID entries".into()))?;
        fd.set_cpuid2(&cpuid).map_err(|source| ArchError::Kvm {
            what: "KVM_SET_CPUID2",
            source,
        })?;
        set_msrs_exact(fd, &boot_msrs)?;
        match pvh {
            Some((entry, start_info)) => {
                regs::setup_pvh_regs(fd, entry, start_info)?;
                regs::setup_pvh_sregs(fd)?;
            }
            None => {
                regs::setup_regs(fd, kernel.entry)?;
                regs::setup_sregs(fd)?;
            }
        }
        regs::setup_fpu(fd)?;
        regs::setup_lint(fd)?;
    }
    timings.phase("configure_vcpus");

    let microvm = Microvm::start(
        ctx,
        shell.vm,
        memory,
        (fds, shell.vcpu0_thread),
        (buses, devices, virtio),
        Some(vmgenid.state()),
        config.clone(),
        false,
        timings,
    )?;
    Ok(microvm)
}

/// What a restore needs besides the shell: the decoded state and the open memory file.
pub struct RestoreInput {
    /// Decoded snapshot.
    pub state: MicrovmState,
    /// Parsed configuration from the snapshot.
    pub config: VmConfig,
    /// The memory file (already checked to match the snapshot's size).
    pub mem_file: File,
    /// Copy memory instead of mapping it copy-on-write.
    pub eager: bool,
    /// Run right away.
    pub resume: bool,
}

/// Restores a snapshot on `shell` (or on a VM created now, memory first); returns once the
/// vCPUs are about to run (or parked when `resume` is false). The state must have passed
/// `snapshot::validate::check_restore`. The shell is taken only once the virtio devices are
/// rebuilt (their host resources — vsock socket, TAPs, drive files — opened): a failure
/// before that leaves it in `shell` for the next attempt.
pub fn restore(
    ctx: &BuildContext<'_>,
    shell: &mut Option<VmShell>,
    input: RestoreInput,
    timings: &mut PhaseTimings,
) -> Result<Microvm, BuildError> {
    let RestoreInput {
        state,
        config,
        mem_file,
        eager,
        resume,
    } = input;
    // Devices first: binding the vsock socket can fail (path in use), and nothing
    // irreversible has happened yet.
    let rebuilt = state
        .virtio
        .iter()
        .map(|s| Ok((registry::restore_device(s, &config)?, s)))
        .collect::<Result<Vec<_>, VirtioError>>()?;
    timings.phase("create_devices");
    let shell = shell.take();
    let memory = if eager {
        GuestMemory::from_file_eager(&mem_file, &state.memory_regions)?
    } else {
        GuestMemory::from_file_private(mem_file, &state.memory_regions)?
    };
    timings.phase("map_memory");
    // A new id into the private copy of its page (the memory file keeps the saved one).
    let vmgenid = state
        .vmgenid
        .map(|saved| VmGenId::generate(saved, memory.mmap()))
        .transpose()?;
    timings.phase("vmgenid");
    let shell = match shell {
        Some(shell) => {
            shell.vm.register_memory(&memory)?;
            shell
        }
        None => VmShell::create_with(ctx.kvm, Some(&memory))?,
    };
    timings.phase("register_memory");
    shell.vm.restore_state(&state.vm)?;
    timings.phase("vm_state");
    let count = state.vcpus.len() as u8;
    let fds = create_vcpus(&shell.vm, shell.vcpu0, count)?;
    for (fd, s) in fds.iter().zip(&state.vcpus) {
        s.restore(fd)?;
    }
    timings.phase("vcpu_state");
    let (buses, devices, virtio) = attach_devices(
        &shell.vm,
        &memory,
        ctx,
        VirtioSource::Restore(rebuilt),
        Some(&state.legacy),
    )?;
    timings.phase("devices");
    // After the LAPICs are restored (which would drop a pending interrupt): a guest with
    // Linux's vmgenid driver reads the new id and reseeds its RNG once it runs.
    if let Some(g) = &vmgenid {
        g.notify(&IrqLine::Gsi(shell.vm.line(g.state().gsi)))?;
    }
    Microvm::start(
        ctx,
        shell.vm,
        memory,
        (fds, shell.vcpu0_thread),
        (buses, devices, virtio),
        vmgenid.map(|g| g.state()),
        config,
        !resume,
        timings,
    )
}

/// Wraps vCPU fds into threads (used by [`Microvm::start`]).
pub(crate) fn spawn_vcpus(
    fds: Vec<VcpuFd>,
    mut first_thread: Option<VcpuThread>,
    buses: &Arc<Buses>,
    exit: &Arc<ExitSignal>,
    paused: bool,
) -> Result<Vec<crate::vstate::vcpu::VcpuHandle>, VcpuError> {
    // Every thread first, parked: if one cannot be created (the jail's pids limit), the
    // error comes before any vCPU has run, and the parked threads end as they are dropped.
    let mut threads = Vec::with_capacity(fds.len());
    for index in 0..fds.len() {
        threads.push(match first_thread.take() {
            Some(t) if index == 0 => t,
            _ => VcpuThread::prespawn(index as u8)?,
        });
    }
    let mut handles = Vec::with_capacity(fds.len());
    for ((index, fd), thread) in fds.into_iter().enumerate().zip(threads) {
        let vcpu = Vcpu::new(index as u8, fd, buses.clone(), exit.clone());
        handles.push(thread.start(vcpu, paused)?);
    }
    Ok(handles)
}
