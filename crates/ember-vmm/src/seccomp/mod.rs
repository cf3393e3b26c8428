//! Seccomp filters, one per thread kind, built with `seccompiler` (issue 15: a VMM broken into
//! by its guest must not be able to open files, make network sockets, run programs or signal
//! other processes).
//!
//! - [`enable`] compiles the three filters once at process start (`main`); library users that
//!   never call it (unit tests, embedders) run unfiltered.
//! - Each thread installs its own filter where it starts serving the guest: a vCPU thread when
//!   its vCPU is handed to it ([`ThreadKind::Vcpu`]), the virtio event loop when it starts
//!   ([`ThreadKind::Device`]), and the main thread (API and VM control) once a VM is running
//!   after a boot or a restore ([`ThreadKind::Vmm`]) — before that it only served the host.
//!   Threads the main thread spawns later inherit its filter.
//! - A syscall outside a thread's list kills the whole process with SIGSYS
//!   (`SECCOMP_RET_KILL_PROCESS`); the runtime reports a VMM killed that way. vCPU and device
//!   threads carry a second filter first, which answers `openat` with `EACCES` instead (the C
//!   library opens files on its own in any thread; see [`lists`]).
//! - Installing a filter also sets `no_new_privs`.
//!
//! The lists are in [`lists`]; `ember-vmm --no-seccomp` turns all of this off for debugging.

pub mod lists;

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

/// The kinds of thread, each with its own list of allowed syscalls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// The main thread: the API server and VM control (snapshots, device updates).
    Vmm,
    /// A vCPU thread: `KVM_RUN` and the port/MMIO exits it emulates.
    Vcpu,
    /// The virtio event loop: queue processing and the devices' host backends.
    Device,
}

impl ThreadKind {
    /// The kind's name in logs and errors.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vmm => "vmm",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Device => "device",
        }
    }
}

/// Errors building or installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The filter could not be built from its list.
    #[error("building the {kind} seccomp filter: {source}")]
    Build {
        /// The thread kind.
        kind: &'static str,
        /// Why.
        source: seccompiler::Error,
    },
    /// The kernel refused the filter.
    #[error("installing the {kind} seccomp filter: {source}")]
    Install {
        /// The thread kind.
        kind: &'static str,
        /// Why.
        source: seccompiler::Error,
    },
    /// [`enable`] was called twice.
    #[error("seccomp filters are already enabled")]
    AlreadyEnabled,
}

/// The compiled filters: each kind's programs, in the order they are installed.
#[derive(Debug)]
struct Filters {
    vmm: Vec<BpfProgram>,
    vcpu: Vec<BpfProgram>,
    device: Vec<BpfProgram>,
}

static FILTERS: OnceLock<Filters> = OnceLock::new();

/// Set by [`arm_selftest`]: the main thread makes a forbidden syscall right after installing
/// its filter.
static SELFTEST: AtomicBool = AtomicBool::new(false);

/// Test hook (`ember-vmm --seccomp-selftest`): once the main thread's filter is installed,
/// it opens an IPv4 socket, which the filter answers by killing the process with SIGSYS.
pub fn arm_selftest() {
    SELFTEST.store(true, Ordering::Relaxed);
}

std::thread_local! {
    /// Whether this thread installed its filter (installing twice would stack two copies).
    static INSTALLED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Builds the BPF programs for `kind`, in the order to install them: for vCPU and device
/// threads first the refusals ([`lists::REFUSED`] get `EACCES`, anything else goes on), then
/// for every kind its allowed syscalls (with their argument conditions), anything else killing
/// the process. The kernel runs every program a thread has and takes the strictest answer, and
/// installing the refusals first means a thread whose second install failed still refuses.
pub fn build(kind: ThreadKind) -> Result<Vec<BpfProgram>, SeccompError> {
    let err = |source| SeccompError::Build {
        kind: kind.name(),
        source,
    };
    let compile = |rules, mismatch, matched| {
        let filter = SeccompFilter::new(rules, mismatch, matched, TargetArch::x86_64)
            .map_err(|e| err(e.into()))?;
        BpfProgram::try_from(filter).map_err(|e| err(e.into()))
    };
    let mut programs = Vec::with_capacity(2);
    if kind != ThreadKind::Vmm {
        programs.push(compile(
            lists::refusals(),
            SeccompAction::Allow,
            SeccompAction::Errno(libc::EACCES as u32),
        )?);
    }
    let rules = lists::rules(kind, std::process::id()).map_err(|e| err(e.into()))?;
    programs.push(compile(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
    )?);
    Ok(programs)
}

/// Compiles every thread kind's filter; from now on [`install`] applies them.
pub fn enable() -> Result<(), SeccompError> {
    let filters = Filters {
        vmm: build(ThreadKind::Vmm)?,
        vcpu: build(ThreadKind::Vcpu)?,
        device: build(ThreadKind::Device)?,
    };
    FILTERS
        .set(filters)
        .map_err(|_| SeccompError::AlreadyEnabled)
}

/// Whether [`enable`] was called.
pub fn enabled() -> bool {
    FILTERS.get().is_some()
}

/// Installs `kind`'s filter on the calling thread if filters are enabled and this thread has
/// none yet. An error means the thread must not go on serving the guest.
pub fn install(kind: ThreadKind) -> Result<(), SeccompError> {
    let Some(filters) = FILTERS.get() else {
        return Ok(());
    };
    if INSTALLED.with(|i| i.get()) {
        return Ok(());
    }
    let programs = match kind {
        ThreadKind::Vmm => &filters.vmm,
        ThreadKind::Vcpu => &filters.vcpu,
        ThreadKind::Device => &filters.device,
    };
    for program in programs {
        seccompiler::apply_filter(program).map_err(|source| SeccompError::Install {
            kind: kind.name(),
            source,
        })?;
    }
    INSTALLED.with(|i| i.set(true));
    tracing::debug!(kind = kind.name(), "seccomp filter installed");
    if kind == ThreadKind::Vmm && SELFTEST.load(Ordering::Relaxed) {
        tracing::warn!("seccomp self-test: making a forbidden syscall (socket(AF_INET))");
        let _ = nix::sys::socket::socket(
            nix::sys::socket::AddressFamily::Inet,
            nix::sys::socket::SockType::Stream,
            nix::sys::socket::SockFlag::empty(),
            None,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_kind_builds() {
        for kind in [ThreadKind::Vmm, ThreadKind::Vcpu, ThreadKind::Device] {
            let programs = build(kind).unwrap();
            let want = if kind == ThreadKind::Vmm { 1 } else { 2 };
            assert_eq!(programs.len(), want, "{kind:?}");
            assert!(programs.iter().all(|p| !p.is_empty()), "{kind:?}");
        }
    }

    /// In a forked child (so the test process keeps running): installs `kind`'s programs, then
    /// runs `then`, which only makes raw syscalls; returns how the child ended (exit code 3:
    /// the filters did not install).
    fn child(kind: ThreadKind, then: impl FnOnce()) -> nix::sys::wait::WaitStatus {
        use nix::unistd::{ForkResult, fork};
        let programs = build(kind).unwrap();
        // SAFETY: the child only makes raw syscalls (prctl/seccomp, those of `then`, _exit),
        // never allocates, and never returns into the test harness.
        match unsafe { fork() }.unwrap() {
            ForkResult::Child => {
                for p in &programs {
                    if seccompiler::apply_filter(p).is_err() {
                        // SAFETY: _exit is always safe to call.
                        unsafe { libc::_exit(3) };
                    }
                }
                then();
                // SAFETY: as above.
                unsafe { libc::_exit(0) };
            }
            ForkResult::Parent { child } => nix::sys::wait::waitpid(child, None).unwrap(),
        }
    }

    /// Opens a file: exits 5 unless the open failed with EACCES.
    fn open_refused() {
        // SAFETY: a NUL-terminated static path; errno is read right after.
        let fd = unsafe { libc::open(c"/etc/hostname".as_ptr(), libc::O_RDONLY) };
        let errno = std::io::Error::last_os_error().raw_os_error();
        if fd != -1 || errno != Some(libc::EACCES) {
            // SAFETY: _exit is always safe to call.
            unsafe { libc::_exit(5) };
        }
    }

    #[test]
    fn a_vcpu_thread_opening_a_file_gets_eacces_and_a_forbidden_syscall_kills() {
        use nix::sys::signal::Signal;
        use nix::sys::wait::WaitStatus;
        // The open is refused without a kill (what glibc's allocator does in any thread)...
        match child(ThreadKind::Vcpu, open_refused) {
            WaitStatus::Exited(_, 0) => {}
            other => panic!("open in a vCPU thread: {other:?} (exit 5: not refused with EACCES)"),
        }
        // ... and anything outside the list still kills: a socket, after that refused open.
        let socket = || {
            open_refused();
            // SAFETY: plain syscall, the result is not used.
            let _ = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
        };
        match child(ThreadKind::Vcpu, socket) {
            WaitStatus::Signaled(_, Signal::SIGSYS, _) => {}
            other => panic!("socket in a vCPU thread: not killed by SIGSYS: {other:?}"),
        }
        match child(ThreadKind::Device, open_refused) {
            WaitStatus::Exited(_, 0) => {}
            other => panic!("open in the device thread: {other:?}"),
        }
    }

    /// Forks a child that installs the device threads' filter, makes the allowed `ioctl`
    /// requests on a bad descriptor (EBADF, not death), then `last`; returns how it ended.
    fn child_ioctls(last: u64) -> nix::sys::wait::WaitStatus {
        child(ThreadKind::Device, move || {
            // KVM_GET_API_VERSION, FIONBIO, TUNSETIFF, TCGETS: allowed (fd -1: EBADF).
            for req in [0xae00u64, 0x5421, 0x400454ca, 0x5401] {
                // SAFETY: fd -1 is never valid; the kernel answers EBADF and touches no memory.
                let r = unsafe { libc::ioctl(-1, req as libc::Ioctl, 0) };
                if r != -1 {
                    // SAFETY: _exit is always safe to call.
                    unsafe { libc::_exit(4) };
                }
            }
            // SAFETY: as above.
            let _ = unsafe { libc::ioctl(-1, last as libc::Ioctl, 0) };
        })
    }

    #[test]
    fn ioctls_outside_kvm_and_tun_kill() {
        use nix::sys::signal::Signal;
        use nix::sys::wait::WaitStatus;
        // FICLONE (a file system's), TIOCSTI (faking terminal input), SIOCGIFCONF (sockets).
        for req in [0x4004_9409u64, libc::TIOCSTI, 0x8912] {
            match child_ioctls(req) {
                WaitStatus::Signaled(_, Signal::SIGSYS, _) => {}
                other => panic!("ioctl {req:#x}: not killed by SIGSYS: {other:?}"),
            }
        }
        // And the allowed ones alone let the child exit normally.
        match child_ioctls(0xae01) {
            WaitStatus::Exited(_, 0) => {}
            other => panic!("allowed ioctls: {other:?}"),
        }
    }
}
