//! vCPU threads: one OS thread per vCPU running `KVM_RUN`, dispatching port/MMIO exits to the
//! device buses, and obeying requests (pause, resume, save state, exit) from the controller.
//!
//! Kicking: the controller queues a request, then sends the vCPU thread a real-time signal;
//! its handler sets `kvm_run.immediate_exit`, so `KVM_RUN` returns `EINTR` whether the signal
//! lands inside the ioctl or just before it. Such a return also completes any pending port or
//! MMIO exit, so a vCPU paused this way has consistent state. Before saving, one more
//! `KVM_RUN` with `immediate_exit` set makes that explicit.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_bindings::kvm_run;
use kvm_ioctls::{VcpuExit, VcpuFd};

use super::vcpu_state::{VcpuState, VcpuStateError};
use crate::devices::bus::Buses;
use crate::exit::{ExitReason, ExitSignal};
use crate::timing::now_ns;

/// How long the controller waits for a vCPU to acknowledge a request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

thread_local! {
    /// This thread's `kvm_run` mapping, for the kick signal handler.
    static KVM_RUN_PTR: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let ptr = KVM_RUN_PTR.with(|p| p.get());
    if !ptr.is_null() {
        // SAFETY: the pointer is this thread's live kvm_run mapping (set by the vCPU thread
        // before it first runs and cleared before the VcpuFd is dropped); writing the one-byte
        // `immediate_exit` field is what KVM's API documents for exactly this purpose.
        unsafe { std::ptr::addr_of_mut!((*ptr).immediate_exit).write_volatile(1) };
    }
}

fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

/// Installs the kick handler (once per process).
pub fn install_kick_handler() -> Result<(), VcpuError> {
    static INSTALLED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            vmm_sys_util::signal::register_signal_handler(kick_signal(), kick_handler)
                .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(VcpuError::Signal)
}

/// vCPU errors.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// Installing the kick signal handler failed.
    #[error("installing the vCPU kick signal handler: {0}")]
    Signal(String),
    /// Spawning the thread failed (EAGAIN, most likely: the VMM's cgroup pids limit, or
    /// RLIMIT_NPROC).
    #[error("cannot start vCPU thread {index}: {source}{}", spawn_hint(.source))]
    Spawn {
        /// vCPU index.
        index: u8,
        /// Why.
        source: std::io::Error,
    },
    /// The vCPU thread did not answer in time or has gone.
    #[error("vCPU {index} did not answer {request}")]
    NoAnswer {
        /// vCPU index.
        index: u8,
        /// The request.
        request: &'static str,
    },
    /// Saving state failed.
    #[error("vCPU {index}: {source}")]
    State {
        /// vCPU index.
        index: u8,
        /// The failed ioctl.
        source: VcpuStateError,
    },
}

/// What to suspect when a thread cannot be created: EAGAIN is the kernel refusing another
/// task (the cgroup's `pids.max` a jail sets, or RLIMIT_NPROC).
pub(crate) fn spawn_hint(e: &std::io::Error) -> &'static str {
    if e.raw_os_error() == Some(libc::EAGAIN) {
        " (the VMM's pids limit?)"
    } else {
        ""
    }
}

enum Request {
    Pause,
    Resume,
    /// Resume without answering (the caller does not wait for the thread to wake).
    ResumeDetached,
    SaveState(&'static [u32]),
    Exit,
}

enum Response {
    /// Entered the run loop; CLOCK_MONOTONIC ns just before the first KVM_RUN.
    Running(u64),
    Paused,
    State(Box<Result<VcpuState, VcpuStateError>>),
}

/// A vCPU thread created ahead of time (while the VMM is idle), parked until it is given its
/// vCPU: thread creation is then off the boot/restore path.
pub struct VcpuThread {
    index: u8,
    start_tx: Sender<(Vcpu, bool)>,
    req_tx: Sender<Request>,
    resp_rx: Receiver<Response>,
    thread: JoinHandle<()>,
}

impl VcpuThread {
    /// Spawns a parked thread for vCPU `index`.
    pub fn prespawn(index: u8) -> Result<VcpuThread, VcpuError> {
        install_kick_handler()?;
        let (start_tx, start_rx) = channel::<(Vcpu, bool)>();
        let (req_tx, req_rx) = channel();
        let (resp_tx, resp_rx) = channel();
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{index}"))
            .stack_size(256 << 10)
            .spawn(move || {
                if let Ok((vcpu, paused)) = start_rx.recv() {
                    // Before the first KVM_RUN: the guest never runs on an unfiltered vCPU.
                    if let Err(e) = crate::seccomp::install(crate::seccomp::ThreadKind::Vcpu) {
                        tracing::error!(vcpu = index, "{e}");
                        vcpu.exit.request(ExitReason::VcpuError(e.to_string()));
                        return;
                    }
                    vcpu.thread_main(paused, req_rx, resp_tx);
                }
            })
            .map_err(|source| VcpuError::Spawn { index, source })?;
        Ok(VcpuThread {
            index,
            start_tx,
            req_tx,
            resp_rx,
            thread,
        })
    }

    /// Hands `vcpu` to the thread, which starts running it (or parks it when `paused`).
    pub fn start(self, vcpu: Vcpu, paused: bool) -> Result<VcpuHandle, VcpuError> {
        let index = self.index;
        self.start_tx
            .send((vcpu, paused))
            .map_err(|_| VcpuError::NoAnswer {
                index,
                request: "start",
            })?;
        Ok(VcpuHandle {
            index,
            tx: self.req_tx,
            rx: self.resp_rx,
            thread: Some(self.thread),
            first_run_ns: 0,
        })
    }
}

/// A vCPU before its thread starts.
pub struct Vcpu {
    index: u8,
    fd: VcpuFd,
    buses: Arc<Buses>,
    exit: Arc<ExitSignal>,
}

impl Vcpu {
    /// Wraps a configured vCPU.
    pub fn new(index: u8, fd: VcpuFd, buses: Arc<Buses>, exit: Arc<ExitSignal>) -> Vcpu {
        Vcpu {
            index,
            fd,
            buses,
            exit,
        }
    }

    /// Starts the thread, running (`paused == false`) or waiting for a resume.
    pub fn spawn(self, paused: bool) -> Result<VcpuHandle, VcpuError> {
        VcpuThread::prespawn(self.index)?.start(self, paused)
    }

    fn thread_main(mut self, paused: bool, rx: Receiver<Request>, tx: Sender<Response>) {
        KVM_RUN_PTR.with(|p| p.set(self.fd.get_kvm_run() as *mut kvm_run));
        let mut running = !paused;
        if running {
            let _ = tx.send(Response::Running(now_ns()));
        }
        loop {
            if running {
                match self.run_once() {
                    RunOutcome::Continue => {}
                    RunOutcome::Kicked => {
                        self.fd.set_kvm_immediate_exit(0);
                        while let Ok(req) = rx.try_recv() {
                            match self.handle(req, &tx, &mut running) {
                                Flow::Continue => {}
                                Flow::Exit => return self.cleanup(),
                            }
                        }
                    }
                    RunOutcome::Stop(reason) => {
                        self.exit.request(reason);
                        running = false;
                    }
                }
                if self.exit.is_requested() {
                    running = false;
                }
            } else {
                match rx.recv() {
                    Ok(req) => match self.handle(req, &tx, &mut running) {
                        Flow::Continue => {}
                        Flow::Exit => return self.cleanup(),
                    },
                    Err(_) => return self.cleanup(),
                }
            }
        }
    }

    fn cleanup(&mut self) {
        KVM_RUN_PTR.with(|p| p.set(std::ptr::null_mut()));
    }

    fn handle(&mut self, req: Request, tx: &Sender<Response>, running: &mut bool) -> Flow {
        match req {
            Request::Pause => {
                *running = false;
                // Tell a kvmclock guest it was stopped (no soft-lockup warnings on resume);
                // EINVAL when the guest does not use kvmclock, which is fine.
                let _ = self.fd.kvmclock_ctrl();
                let _ = tx.send(Response::Paused);
            }
            Request::Resume => {
                if self.exit.is_requested() {
                    let _ = tx.send(Response::Paused);
                } else {
                    *running = true;
                    let _ = tx.send(Response::Running(now_ns()));
                }
            }
            Request::ResumeDetached => {
                *running = !self.exit.is_requested();
            }
            Request::SaveState(msrs) => {
                self.complete_pending_io();
                let _ = tx.send(Response::State(Box::new(VcpuState::save(&self.fd, msrs))));
            }
            Request::Exit => return Flow::Exit,
        }
        Flow::Continue
    }

    /// One `KVM_RUN` with `immediate_exit` set: completes a pending I/O or MMIO exit without
    /// running guest code (returns EINTR).
    fn complete_pending_io(&mut self) {
        self.fd.set_kvm_immediate_exit(1);
        match self.fd.run() {
            Err(e) if e.errno() == libc::EINTR => {}
            Ok(exit) => tracing::warn!(
                vcpu = self.index,
                ?exit,
                "unexpected exit while completing I/O"
            ),
            Err(e) => {
                tracing::warn!(vcpu = self.index, error = %e, "KVM_RUN(immediate_exit) failed")
            }
        }
        self.fd.set_kvm_immediate_exit(0);
    }

    fn run_once(&mut self) -> RunOutcome {
        let index = self.index;
        match self.fd.run() {
            Ok(exit) => match exit {
                VcpuExit::IoIn(port, data) => {
                    self.buses.pio.read(u64::from(port), data);
                    RunOutcome::Continue
                }
                VcpuExit::IoOut(port, data) => {
                    self.buses.pio.write(u64::from(port), data);
                    RunOutcome::Continue
                }
                VcpuExit::MmioRead(addr, data) => {
                    if !self.buses.mmio.read(addr, data) {
                        tracing::trace!(vcpu = index, addr, "unclaimed MMIO read");
                    }
                    RunOutcome::Continue
                }
                VcpuExit::MmioWrite(addr, data) => {
                    if !self.buses.mmio.write(addr, data) {
                        tracing::trace!(vcpu = index, addr, "unclaimed MMIO write");
                    }
                    RunOutcome::Continue
                }
                VcpuExit::Shutdown => {
                    tracing::info!(vcpu = index, "guest shutdown (triple fault or reset)");
                    RunOutcome::Stop(self.exit.triple_fault(index))
                }
                VcpuExit::SystemEvent(kind, _) => {
                    tracing::info!(vcpu = index, kind, "guest system event");
                    RunOutcome::Stop(ExitReason::GuestShutdown)
                }
                VcpuExit::Hlt => {
                    tracing::info!(vcpu = index, "vCPU halted with no interrupt source");
                    RunOutcome::Stop(ExitReason::GuestShutdown)
                }
                VcpuExit::Intr => RunOutcome::Kicked,
                VcpuExit::FailEntry(reason, cpu) => RunOutcome::Stop(ExitReason::VcpuError(
                    format!("vCPU {index}: KVM_EXIT_FAIL_ENTRY reason {reason:#x} on cpu {cpu}"),
                )),
                VcpuExit::InternalError => {
                    let run = self.fd.get_kvm_run();
                    // SAFETY: KVM_EXIT_INTERNAL_ERROR says `internal` is the active union field.
                    let ie = unsafe { run.__bindgen_anon_1.internal };
                    let n = (ie.ndata as usize).min(ie.data.len());
                    RunOutcome::Stop(ExitReason::VcpuError(format!(
                        "vCPU {index}: KVM internal error, suberror {} data {:x?}",
                        ie.suberror,
                        &ie.data[..n]
                    )))
                }
                other => RunOutcome::Stop(ExitReason::VcpuError(format!(
                    "vCPU {index}: unexpected exit {other:?}"
                ))),
            },
            Err(e) if e.errno() == libc::EINTR => RunOutcome::Kicked,
            Err(e) if e.errno() == libc::EAGAIN => RunOutcome::Continue,
            Err(e) => {
                RunOutcome::Stop(ExitReason::VcpuError(format!("vCPU {index}: KVM_RUN: {e}")))
            }
        }
    }
}

enum RunOutcome {
    Continue,
    Kicked,
    Stop(ExitReason),
}

enum Flow {
    Continue,
    Exit,
}

/// The controller's side of a vCPU thread.
pub struct VcpuHandle {
    index: u8,
    tx: Sender<Request>,
    rx: Receiver<Response>,
    thread: Option<JoinHandle<()>>,
    first_run_ns: u64,
}

impl VcpuHandle {
    /// vCPU index.
    pub fn index(&self) -> u8 {
        self.index
    }

    fn kick(&self) {
        if let Some(t) = &self.thread {
            use std::os::unix::thread::JoinHandleExt;
            // SAFETY: the pthread is alive (we hold its JoinHandle and never detach it) and
            // the signal has a handler installed by `install_kick_handler`.
            let rc = unsafe { libc::pthread_kill(t.as_pthread_t(), kick_signal()) };
            if rc != 0 {
                tracing::warn!(vcpu = self.index, rc, "cannot kick vCPU thread");
            }
        }
    }

    fn answer(&self, request: &'static str) -> Result<Response, VcpuError> {
        match self.rx.recv_timeout(REQUEST_TIMEOUT) {
            Ok(r) => Ok(r),
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                Err(VcpuError::NoAnswer {
                    index: self.index,
                    request,
                })
            }
        }
    }

    fn send(&self, req: Request, request: &'static str) -> Result<(), VcpuError> {
        self.tx.send(req).map_err(|_| VcpuError::NoAnswer {
            index: self.index,
            request,
        })
    }

    /// Waits until a vCPU spawned running has entered its run loop; returns the timestamp just
    /// before its first `KVM_RUN`.
    pub fn wait_running(&mut self) -> Result<u64, VcpuError> {
        match self.answer("start")? {
            Response::Running(t) => {
                self.first_run_ns = t;
                Ok(t)
            }
            _ => Err(VcpuError::NoAnswer {
                index: self.index,
                request: "start",
            }),
        }
    }

    /// Stops the vCPU at an instruction boundary.
    pub fn pause(&self) -> Result<(), VcpuError> {
        self.send(Request::Pause, "pause")?;
        self.kick();
        match self.answer("pause")? {
            Response::Paused => Ok(()),
            _ => Err(VcpuError::NoAnswer {
                index: self.index,
                request: "pause",
            }),
        }
    }

    /// Lets a paused vCPU run again; returns when it is about to enter `KVM_RUN`.
    pub fn resume(&self) -> Result<u64, VcpuError> {
        self.send(Request::Resume, "resume")?;
        match self.answer("resume")? {
            Response::Running(t) => Ok(t),
            Response::Paused => Ok(0),
            _ => Err(VcpuError::NoAnswer {
                index: self.index,
                request: "resume",
            }),
        }
    }

    /// Lets a paused vCPU run again without waiting for its thread to wake: requests are
    /// handled in order, so a later pause or state read still sees it resumed first.
    pub fn resume_detached(&self) -> Result<(), VcpuError> {
        self.send(Request::ResumeDetached, "resume")
    }

    /// Reads the state of a paused vCPU.
    pub fn save_state(&self, msrs: &'static [u32]) -> Result<VcpuState, VcpuError> {
        self.send(Request::SaveState(msrs), "save state")?;
        match self.answer("save state")? {
            Response::State(r) => (*r).map_err(|source| VcpuError::State {
                index: self.index,
                source,
            }),
            _ => Err(VcpuError::NoAnswer {
                index: self.index,
                request: "save state",
            }),
        }
    }
}

impl Drop for VcpuHandle {
    fn drop(&mut self) {
        if self.tx.send(Request::Exit).is_ok() {
            self.kick();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
