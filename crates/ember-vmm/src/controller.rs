//! API actions mapped onto the VMM (Firecracker's `rpc_interface`): the state machine
//! Not started -> Running <-> Paused, which action is allowed when, and the one place where
//! errors become the `fault_message` of a 400.
//!
//! While nothing runs, the controller keeps a [`VmShell`] ready (VM, irqchip, PIT, vCPU 0
//! and its parked thread), so a restore starts from an existing VM. A restore that fails
//! before touching the shell (bad request; snapshot files that are not regular files, too
//! large, corrupt, or not a pair; a state that fails `snapshot::validate`; a device's host
//! resource missing or busy: everything checked up front) leaves it intact; one that fails
//! later drops it, and the next attempt creates a fresh one. A boot without a prepared shell
//! (`--config-file`) creates the VM with its memory registered first, which is faster right
//! after process start.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ember_fc_api::{
    ActionType, BootSource, Drive, EntropyDevice, FieldError, FirecrackerVersion, InstanceInfo,
    InstanceState, MachineConfiguration, MachineConfigurationUpdate, NetworkInterface,
    SnapshotCreateParams, SnapshotLoadParams, VmState, Vsock,
};

use crate::builder::{self, BuildContext, BuildError, RestoreInput, VmShell};
use crate::config::{
    VmConfig, validate_boot_source, validate_machine, validate_snapshot_create,
    validate_snapshot_load,
};
use crate::devices::legacy::serial::SerialConfig;
use crate::devices::virtio::VirtioError;
use crate::devices::virtio::registry::PreparedDevices;
use crate::exit::ExitSignal;
use crate::microvm::{Microvm, MicrovmError};
use crate::snapshot::files::{self, MemFileError, ReadStateError};
use crate::snapshot::{MicrovmState, SnapshotError, validate};
use crate::timing::{PhaseTimings, Timings, now_ns};
use crate::vstate::kvm::KvmContext;

/// One API request, parsed and validated for shape.
#[derive(Debug, Clone)]
pub enum VmmAction {
    /// `GET /`.
    GetInstanceInfo,
    /// `GET /version`.
    GetVersion,
    /// `GET /machine-config`.
    GetMachineConfig,
    /// `PUT /machine-config`.
    PutMachineConfig(MachineConfiguration),
    /// `PATCH /machine-config`.
    PatchMachineConfig(MachineConfigurationUpdate),
    /// `PUT /boot-source`.
    PutBootSource(BootSource),
    /// `PUT /drives/{id}`.
    PutDrive(Drive),
    /// `PUT /network-interfaces/{id}`.
    PutNetworkInterface(NetworkInterface),
    /// `PUT /vsock`.
    PutVsock(Vsock),
    /// `PUT /entropy`.
    PutEntropy(EntropyDevice),
    /// `PUT /actions`.
    Action(ActionType),
    /// `PATCH /vm`.
    SetVmState(VmState),
    /// `PUT /snapshot/create`.
    CreateSnapshot(SnapshotCreateParams),
    /// `PUT /snapshot/load`.
    LoadSnapshot(SnapshotLoadParams),
    /// `GET /vm/config`.
    GetVmConfig,
    /// `GET /ember/timings` (ember extension).
    GetTimings,
    /// `GET /ember/devices` (ember extension): the virtio devices of the running VM.
    GetDevices,
}

/// A successful action.
#[derive(Debug, Clone, PartialEq)]
pub enum ActionOk {
    /// 204.
    NoContent,
    /// 200 with a JSON body.
    Json(serde_json::Value),
}

/// Why an action failed; its `Display` is the `fault_message`.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// Invalid input.
    #[error(transparent)]
    Config(#[from] FieldError),
    /// Not allowed in the current state.
    #[error("{0}")]
    State(String),
    /// Building the VM failed.
    #[error("{0}")]
    Build(#[from] BuildError),
    /// The running VM refused.
    #[error("{0}")]
    Microvm(#[from] MicrovmError),
    /// Loading a snapshot failed.
    #[error("loading snapshot {path}: {source}")]
    Snapshot {
        /// The state file.
        path: String,
        /// Why.
        source: SnapshotError,
    },
    /// A device could not be created.
    #[error(transparent)]
    Virtio(#[from] VirtioError),
    /// The main thread's seccomp filter could not be installed (the VM is stopped).
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
    /// A snapshot's memory file does not fit it.
    #[error("memory file {path}: {message}")]
    MemFile {
        /// The memory file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// A 200 with `body` as JSON.
fn json_of<T: serde::Serialize>(body: &T) -> ActionOk {
    ActionOk::Json(serde_json::to_value(body).unwrap_or_default())
}

const NOT_AFTER_START: &str =
    "The requested operation is not supported after starting the microVM.";
const NOT_BEFORE_START: &str =
    "The requested operation is not supported before starting the microVM.";

/// The VMM's state machine.
pub struct Controller {
    id: String,
    kvm: Arc<KvmContext>,
    exit: Arc<ExitSignal>,
    serial: SerialConfig,
    pending: VmConfig,
    configured: bool,
    shell: Option<VmShell>,
    prepared: PreparedDevices,
    vm: Option<Microvm>,
    timings: Timings,
    console_first_line_ns: Arc<AtomicU64>,
}

impl Controller {
    /// A controller for a VM named `id`.
    pub fn new(
        id: String,
        kvm: Arc<KvmContext>,
        exit: Arc<ExitSignal>,
        serial: SerialConfig,
    ) -> Controller {
        Controller {
            id,
            kvm,
            exit,
            serial,
            pending: VmConfig::default(),
            configured: false,
            shell: None,
            prepared: PreparedDevices::default(),
            vm: None,
            timings: Timings::default(),
            console_first_line_ns: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Timestamps recorded by `main`.
    pub fn timings_mut(&mut self) -> &mut Timings {
        &mut self.timings
    }

    /// Creates the VM shell now (call while idle) so the first boot or restore skips it.
    pub fn prepare(&mut self) {
        // Fault in some heap now: page faults are expensive under nested virtualization, and
        // the restore path's allocations (state file, decoded state) then reuse these pages.
        // Below glibc's trim threshold, so the memory stays in the heap after the free.
        let warm = std::hint::black_box(vec![1u8; 96 << 10]);
        drop(warm);
        if self.vm.is_none() && self.shell.is_none() {
            match VmShell::create(&self.kvm) {
                Ok(s) => self.shell = Some(s),
                Err(e) => tracing::warn!(error = %e, "cannot pre-create the VM"),
            }
        }
    }

    /// The prepared shell if memory can be registered on it without the post-irqchip stall;
    /// a younger one is closed off the request path and the builder makes a memory-first VM.
    fn take_settled_shell(&mut self) -> Option<VmShell> {
        match self.shell.take() {
            Some(shell) if shell.is_settled() => Some(shell),
            Some(young) => {
                let closer = std::thread::Builder::new().spawn(move || {
                    // It only closes descriptors and unmaps: the narrowest filter fits, and
                    // no thread of a running VM is left unfiltered.
                    if let Err(e) = crate::seccomp::install(crate::seccomp::ThreadKind::Vcpu) {
                        tracing::warn!("{e}");
                    }
                    drop(young)
                });
                // No thread to spare (the jail's pids limit): the failed spawn dropped the
                // closure, and the shell with it, right here.
                if let Err(e) = closer {
                    tracing::warn!("closing the young VM shell inline: {e}");
                }
                None
            }
            None => None,
        }
    }

    fn state(&self) -> InstanceState {
        match &self.vm {
            None => InstanceState::NotStarted,
            Some(vm) if vm.is_paused() => InstanceState::Paused,
            Some(_) => InstanceState::Running,
        }
    }

    fn before_start(&self) -> Result<(), ControllerError> {
        if self.vm.is_some() {
            return Err(ControllerError::State(NOT_AFTER_START.into()));
        }
        Ok(())
    }

    fn started(&mut self) -> Result<&mut Microvm, ControllerError> {
        self.vm
            .as_mut()
            .ok_or_else(|| ControllerError::State(NOT_BEFORE_START.into()))
    }

    /// Boots the pending configuration (also used for `--config-file`).
    pub fn boot_config(&mut self, config: VmConfig) -> Result<(), ControllerError> {
        self.before_start()?;
        config.validate()?;
        self.pending = config.with_defaults();
        self.configured = true;
        self.start_instance()
    }

    fn start_instance(&mut self) -> Result<(), ControllerError> {
        self.before_start()?;
        if self.pending.boot_source.is_none() {
            return Err(ControllerError::State(
                "Cannot start the microVM: no boot source configured (PUT /boot-source first)."
                    .into(),
            ));
        }
        let mut timings = PhaseTimings::starting_at(now_ns());
        // A prepared shell is used as is; otherwise the builder creates the VM with memory
        // registered first (faster right after process start).
        let shell = self.take_settled_shell();
        let ctx = BuildContext {
            kvm: &self.kvm,
            exit: &self.exit,
            serial: &self.serial,
            console_first_line_ns: &self.console_first_line_ns,
        };
        let vm = builder::boot(&ctx, shell, &self.pending, &mut self.prepared, &mut timings)?;
        tracing::info!(total_us = timings.total_us, phases = ?timings.phases_us, "microVM booted");
        self.timings.boot = Some(timings);
        self.vm = Some(vm);
        self.lock_down()
    }

    /// Installs the main thread's seccomp filter once a VM runs (a no-op without filters or
    /// when installed already). A failure stops the VM: it must not run unfiltered.
    fn lock_down(&mut self) -> Result<(), ControllerError> {
        if let Err(e) = crate::seccomp::install(crate::seccomp::ThreadKind::Vmm) {
            tracing::error!("{e}");
            self.exit
                .request(crate::exit::ExitReason::VcpuError(e.to_string()));
            return Err(e.into());
        }
        Ok(())
    }

    /// Console input from the VMM's stdin; dropped while no VM runs.
    pub fn console_input(&self, bytes: &[u8]) {
        if let Some(vm) = &self.vm {
            let n = vm.console_input(bytes);
            if n < bytes.len() {
                tracing::debug!(
                    dropped = bytes.len() - n,
                    "console input overflowed the UART FIFO"
                );
            }
        }
    }

    /// Runs one action. `received_ns` is when the request's bytes arrived.
    pub fn handle(
        &mut self,
        action: VmmAction,
        received_ns: u64,
    ) -> Result<ActionOk, ControllerError> {
        match action {
            VmmAction::GetInstanceInfo => Ok(json_of(&InstanceInfo {
                app_name: "ember-vmm".into(),
                id: self.id.clone(),
                state: self.state(),
                vmm_version: crate::VMM_VERSION.into(),
            })),
            VmmAction::GetVersion => Ok(json_of(&FirecrackerVersion {
                firecracker_version: crate::VMM_VERSION.into(),
            })),
            VmmAction::GetMachineConfig => {
                let m = match &self.vm {
                    Some(vm) => &vm.config().machine_config,
                    None => &self.pending.machine_config,
                };
                Ok(json_of(m))
            }
            VmmAction::GetVmConfig => {
                let c = match &self.vm {
                    Some(vm) => vm.config(),
                    None => &self.pending,
                };
                Ok(json_of(c))
            }
            VmmAction::GetDevices => {
                let devices = match &self.vm {
                    Some(vm) => vm.virtio().describe(),
                    None => Vec::new(),
                };
                Ok(ActionOk::Json(serde_json::Value::Array(devices)))
            }
            VmmAction::GetTimings => {
                self.timings.console_first_line_ns =
                    self.console_first_line_ns.load(Ordering::Relaxed);
                Ok(ActionOk::Json(
                    serde_json::to_value(&self.timings).unwrap_or_default(),
                ))
            }
            VmmAction::PutMachineConfig(m) => {
                self.before_start()?;
                validate_machine(&m)?;
                self.pending.machine_config = m.with_defaults();
                self.configured = true;
                Ok(ActionOk::NoContent)
            }
            VmmAction::PatchMachineConfig(p) => {
                self.before_start()?;
                let m = p.apply(&self.pending.machine_config);
                validate_machine(&m)?;
                self.pending.machine_config = m.with_defaults();
                self.configured = true;
                Ok(ActionOk::NoContent)
            }
            VmmAction::PutBootSource(b) => {
                self.before_start()?;
                validate_boot_source(&b)?;
                self.pending.boot_source = Some(b);
                self.configured = true;
                Ok(ActionOk::NoContent)
            }
            VmmAction::PutDrive(d) => {
                self.before_start()?;
                crate::devices::virtio::block::check_config(&d)
                    .map_err(|e| FieldError::new("path_on_host", e.to_string()))?;
                self.pending.upsert_drive(d)?;
                self.configured = true;
                Ok(ActionOk::NoContent)
            }
            VmmAction::PutNetworkInterface(n) => {
                self.before_start()?;
                crate::devices::virtio::net::check_config(&n)
                    .map_err(|e| FieldError::new("host_dev_name", e.to_string()))?;
                self.pending.upsert_network(n);
                self.configured = true;
                Ok(ActionOk::NoContent)
            }
            VmmAction::PutVsock(v) => {
                self.before_start()?;
                v.validate()?;
                // Like Firecracker: the device (and its Unix socket) exists from now on.
                self.prepared.prepare_vsock(&v)?;
                self.pending.vsock = Some(v);
                self.configured = true;
                Ok(ActionOk::NoContent)
            }
            VmmAction::PutEntropy(e) => {
                self.before_start()?;
                e.validate("entropy")?;
                self.pending.entropy = Some(e);
                self.configured = true;
                Ok(ActionOk::NoContent)
            }
            VmmAction::Action(ActionType::InstanceStart) => {
                self.start_instance()?;
                Ok(ActionOk::NoContent)
            }
            VmmAction::Action(ActionType::SendCtrlAltDel) => {
                let vm = self.started()?;
                if vm.is_paused() {
                    return Err(ControllerError::State(
                        "Cannot send Ctrl+Alt+Del: the microVM is paused.".into(),
                    ));
                }
                vm.send_ctrl_alt_del()?;
                Ok(ActionOk::NoContent)
            }
            VmmAction::Action(ActionType::FlushMetrics) => Err(ControllerError::State(
                "The metrics system is not initialized.".into(),
            )),
            VmmAction::SetVmState(VmState::Paused) => {
                let vm = self.started()?;
                if !vm.is_paused() {
                    vm.pause()?;
                }
                Ok(ActionOk::NoContent)
            }
            VmmAction::SetVmState(VmState::Resumed) => {
                let vm = self.started()?;
                if vm.is_paused() {
                    vm.resume()?;
                }
                Ok(ActionOk::NoContent)
            }
            VmmAction::CreateSnapshot(p) => self.create_snapshot(p, received_ns),
            VmmAction::LoadSnapshot(p) => self.load_snapshot(p, received_ns),
        }
    }

    fn create_snapshot(
        &mut self,
        p: SnapshotCreateParams,
        received_ns: u64,
    ) -> Result<ActionOk, ControllerError> {
        validate_snapshot_create(&p)?;
        let vm = self.started()?;
        if !vm.is_paused() {
            return Err(ControllerError::State(
                "Cannot create a snapshot while the microVM is running: pause it first (PATCH /vm {\"state\": \"Paused\"}).".into(),
            ));
        }
        check_snapshot_targets(&p)?;
        let mut timings = PhaseTimings::starting_at(received_ns);
        let stats = vm.snapshot(&p.snapshot_path, &p.mem_file_path, &mut timings)?;
        tracing::info!(
            total_us = timings.total_us,
            state_bytes = stats.state_bytes,
            memory_written = stats.memory.written_bytes,
            phases = ?timings.phases_us,
            "snapshot created"
        );
        self.timings.snapshot_create = Some(timings);
        Ok(ActionOk::NoContent)
    }

    fn load_snapshot(
        &mut self,
        p: SnapshotLoadParams,
        received_ns: u64,
    ) -> Result<ActionOk, ControllerError> {
        let mut timings = PhaseTimings::starting_at(received_ns);
        let mem_path = validate_snapshot_load(&p)?.to_path_buf();
        let mem_field = if p.mem_backend.is_some() {
            "mem_backend.backend_path"
        } else {
            "mem_file_path"
        };
        self.before_start()?;
        if self.configured {
            return Err(ControllerError::State(
                "Loading a microVM snapshot is not allowed after configuring boot-specific resources.".into(),
            ));
        }
        let snap_err = |source| ControllerError::Snapshot {
            path: p.snapshot_path.display().to_string(),
            source,
        };
        let bytes = files::read_state_file(&p.snapshot_path).map_err(|e| match e {
            ReadStateError::Open(e) => FieldError::new("snapshot_path", e.to_string()).into(),
            ReadStateError::Snapshot(e) => snap_err(e),
        })?;
        timings.phase("read_state");
        let state = MicrovmState::from_bytes(&bytes).map_err(snap_err)?;
        let mut config = serde_json::from_slice::<VmConfig>(&state.config_json)
            .map_err(|e| {
                snap_err(SnapshotError::Invalid {
                    section: "config",
                    detail: format!("not a valid configuration: {e}"),
                })
            })?
            .with_defaults();
        for (i, o) in p.network_overrides.iter().flatten().enumerate() {
            match config
                .network_interfaces
                .iter_mut()
                .find(|n| n.iface_id == o.iface_id)
            {
                Some(n) => n.host_dev_name = o.host_dev_name.clone(),
                None => {
                    return Err(FieldError::new(
                        format!("network_overrides[{i}].iface_id"),
                        format!("the snapshot has no network interface {:?}", o.iface_id),
                    )
                    .into());
                }
            }
        }
        if let Some(v) = &p.vsock_override {
            match config.vsock.as_mut() {
                Some(vs) => vs.uds_path = v.uds_path.clone(),
                None => {
                    return Err(FieldError::new(
                        "vsock_override",
                        "the snapshot has no vsock device",
                    )
                    .into());
                }
            }
        }
        validate::check_restore(&state, &config).map_err(snap_err)?;
        timings.phase("decode_state");
        let opened = files::open_memory_file(&mem_path, state.snapshot_id, state.memory_size());
        let mem_file = opened.map_err(|e| match e {
            MemFileError::Open(e) => FieldError::new(mem_field, e.to_string()).into(),
            MemFileError::Mismatch(message) => ControllerError::MemFile {
                path: mem_path.display().to_string(),
                message,
            },
        })?;
        timings.phase("open_memory");
        let mut shell = self.take_settled_shell();
        let ctx = BuildContext {
            kvm: &self.kvm,
            exit: &self.exit,
            serial: &self.serial,
            console_first_line_ns: &self.console_first_line_ns,
        };
        let input = RestoreInput {
            state,
            config,
            mem_file,
            eager: p.ember_eager_load.unwrap_or(false),
            resume: p.resume_vm.unwrap_or(false),
        };
        // A guest that dies from here on died after a restore (see `ExitSignal`).
        self.exit.mark_restored(true);
        let result = builder::restore(&ctx, &mut shell, input, &mut timings);
        let vm = match result {
            Ok(vm) => vm,
            Err(e) => {
                self.exit.mark_restored(false);
                // Failed before the VM was touched (a device's host resource): keep the shell.
                self.shell = shell;
                return Err(e.into());
            }
        };
        tracing::info!(total_us = timings.total_us, phases = ?timings.phases_us, "snapshot loaded");
        self.timings.restore = Some(timings);
        self.vm = Some(vm);
        self.lock_down()?;
        Ok(ActionOk::NoContent)
    }
}

/// `snapshot/create`'s targets: two different paths, each absent or a regular file (a create
/// never replaces a device node, FIFO, directory or symbolic link).
fn check_snapshot_targets(p: &SnapshotCreateParams) -> Result<(), FieldError> {
    if p.snapshot_path == p.mem_file_path {
        return Err(FieldError::new(
            "mem_file_path",
            "must differ from snapshot_path",
        ));
    }
    files::check_create_target(&p.snapshot_path)
        .map_err(|m| FieldError::new("snapshot_path", m))?;
    files::check_create_target(&p.mem_file_path).map_err(|m| FieldError::new("mem_file_path", m))
}
