//! The syscalls each thread kind may make (x86_64), with argument conditions where one
//! argument decides whether a call is harmless.
//!
//! Collected by tracing ember-vmm through boots, restores, snapshots, exec and file traffic on
//! every device (`strace -f -Y`), plus what Rust's std and glibc do on those paths (allocation,
//! thread start and exit, panics). What no thread may do, whatever happens: run a program
//! (`execve`), create a process (`fork`/`vfork`; `clone` only with `CLONE_THREAD`), signal
//! another process (`kill` only with signal 0, `tgkill` only to itself), open a non-Unix
//! socket, mount, change credentials or namespaces, trace, load modules or BPF. vCPU and device
//! threads cannot open files, create sockets or spawn threads either.
//!
//! vCPU and device threads still get past the first filter with `openat` ([`REFUSED`]): a
//! second filter ([`refusals`]) answers it with `EACCES`. glibc's allocator opens files behind
//! the program's back in whichever thread happens to need them — `/proc/sys/vm/overcommit_memory`
//! the first time a thread's arena shrinks (a burst of vsock traffic freed in the device
//! thread killed the VMM with SIGSYS when this was a kill), `/sys/devices/system/cpu/online`
//! when it sizes its arena count — and carries on without them when they fail. So those
//! threads still cannot open anything, and the allocator does not kill the VMM.
//!
//! `ioctl` is narrowed by the request's type byte (bits 8-15 of the request number): KVM's
//! (`0xAE`: the VM, vCPU and system requests), and `'T'` (`0x54`: TUN's `TUNSET*`, the
//! terminal and `FIO*` requests std makes — `FIONBIO`, `TCGETS` for `isatty`) except
//! `TIOCSTI` (faking terminal input). Everything else — block devices, file systems (`FICLONE`),
//! sockets (`SIOC*`), userfaultfd, loop devices — is refused like any forbidden syscall.

use std::collections::BTreeMap;

use seccompiler::{BackendError, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};

use super::ThreadKind;

/// Every thread: memory, synchronisation, signals, time, exit, and I/O on descriptors it
/// already holds.
const BASE: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_lseek,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_close,
    libc::SYS_fcntl,
    libc::SYS_fstat,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_shutdown,
    libc::SYS_getsockopt,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_timerfd_settime,
    libc::SYS_timerfd_gettime,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_mremap,
    libc::SYS_brk,
    libc::SYS_mincore,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_restart_syscall,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_getrandom,
    libc::SYS_rseq,
    libc::SYS_set_robust_list,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// The main thread also manages files (snapshots, drives), Unix sockets (the API, vsock),
/// event descriptors and threads.
const VMM_EXTRA: &[i64] = &[
    libc::SYS_openat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_access,
    libc::SYS_getdents64,
    libc::SYS_ftruncate,
    libc::SYS_fallocate,
    libc::SYS_rename,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_link,
    libc::SYS_linkat,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_accept4,
    libc::SYS_connect,
    libc::SYS_setsockopt,
    libc::SYS_getsockname,
    libc::SYS_eventfd2,
    libc::SYS_epoll_create1,
    libc::SYS_timerfd_create,
    libc::SYS_signalfd4,
    libc::SYS_pipe2,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_clone3,
    libc::SYS_set_tid_address,
    libc::SYS_prlimit64,
];

/// vCPU threads also cut the console log to its size limit (the serial device runs on them:
/// `devices::legacy::serial`).
const VCPU_EXTRA: &[i64] = &[libc::SYS_ftruncate];

/// The device thread also accepts and makes Unix connections (vsock's host side).
const DEVICE_EXTRA: &[i64] = &[libc::SYS_accept4, libc::SYS_connect, libc::SYS_setsockopt];

/// Syscalls vCPU and device threads get an error for rather than a kill (see the module docs):
/// allowed by their [`rules`], answered with `EACCES` by [`refusals`].
pub const REFUSED: &[i64] = &[libc::SYS_openat];

/// The type byte of an ioctl request number (`_IOC_TYPE`), in place.
const IOCTL_TYPE_MASK: u64 = 0xff00;
/// KVM's ioctl type (`KVMIO`).
const IOCTL_TYPE_KVM: u64 = 0xae00;
/// `'T'`: TUN (`TUNSETIFF`, ...), terminals (`TCGETS`) and `FIONBIO`/`FIOCLEX`.
const IOCTL_TYPE_T: u64 = 0x5400;

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, BackendError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value)
}

fn one(conditions: Vec<SeccompCondition>) -> Result<Vec<SeccompRule>, BackendError> {
    Ok(vec![SeccompRule::new(conditions)?])
}

/// The rules for `kind` in a process whose id is `pid` (`tgkill` may only target it).
pub fn rules(kind: ThreadKind, pid: u32) -> Result<BTreeMap<i64, Vec<SeccompRule>>, BackendError> {
    let mut map: BTreeMap<i64, Vec<SeccompRule>> = BASE.iter().map(|&s| (s, vec![])).collect();
    let extra = match kind {
        ThreadKind::Vmm => VMM_EXTRA,
        ThreadKind::Vcpu => VCPU_EXTRA,
        ThreadKind::Device => DEVICE_EXTRA,
    };
    map.extend(extra.iter().map(|&s| (s, vec![])));
    if kind != ThreadKind::Vmm {
        // Let through to the refusals filter, which answers EACCES.
        map.extend(REFUSED.iter().map(|&s| (s, vec![])));
    }
    // KVM's requests, and TUN/terminal/FIO ones but TIOCSTI (see the module docs).
    map.insert(
        libc::SYS_ioctl,
        vec![
            SeccompRule::new(vec![cond(
                1,
                SeccompCmpOp::MaskedEq(IOCTL_TYPE_MASK),
                IOCTL_TYPE_KVM,
            )?])?,
            SeccompRule::new(vec![
                cond(1, SeccompCmpOp::MaskedEq(IOCTL_TYPE_MASK), IOCTL_TYPE_T)?,
                cond(1, SeccompCmpOp::Ne, libc::TIOCSTI)?,
            ])?,
        ],
    );
    // Signals only to this process's own threads (vCPU kicks).
    map.insert(
        libc::SYS_tgkill,
        one(vec![cond(0, SeccompCmpOp::Eq, u64::from(pid))?])?,
    );
    if kind != ThreadKind::Vcpu {
        // Unix sockets only.
        map.insert(
            libc::SYS_socket,
            one(vec![cond(0, SeccompCmpOp::Eq, libc::AF_UNIX as u64)?])?,
        );
    }
    if kind == ThreadKind::Vmm {
        // Threads, never processes.
        map.insert(
            libc::SYS_clone,
            one(vec![cond(
                0,
                SeccompCmpOp::MaskedEq(libc::CLONE_THREAD as u64),
                libc::CLONE_THREAD as u64,
            )?])?,
        );
        // Naming a new thread.
        map.insert(
            libc::SYS_prctl,
            one(vec![cond(0, SeccompCmpOp::Eq, libc::PR_SET_NAME as u64)?])?,
        );
        // Signal 0 only: whether a snapshot temp file's creator is alive.
        map.insert(libc::SYS_kill, one(vec![cond(1, SeccompCmpOp::Eq, 0)?])?);
    }
    Ok(map)
}

/// The second filter of vCPU and device threads: [`REFUSED`] syscalls match (and get
/// `EACCES`), everything else goes on to the thread's [`rules`].
pub fn refusals() -> BTreeMap<i64, Vec<SeccompRule>> {
    REFUSED.iter().map(|&s| (s, vec![])).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const NEVER: &[i64] = &[
        libc::SYS_execve,
        libc::SYS_execveat,
        libc::SYS_fork,
        libc::SYS_vfork,
        libc::SYS_ptrace,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_chroot,
        libc::SYS_setns,
        libc::SYS_unshare,
        libc::SYS_setuid,
        libc::SYS_setgid,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_bpf,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_tkill,
        libc::SYS_open,
    ];

    #[test]
    fn dangerous_syscalls_are_in_no_list() {
        for kind in [ThreadKind::Vmm, ThreadKind::Vcpu, ThreadKind::Device] {
            let rules = rules(kind, 1).unwrap();
            for s in NEVER {
                assert!(!rules.contains_key(s), "{kind:?} allows syscall {s}");
            }
        }
    }

    #[test]
    fn vcpu_and_device_threads_cannot_open_files_or_spawn() {
        let refused = refusals();
        for kind in [ThreadKind::Vcpu, ThreadKind::Device] {
            let rules = rules(kind, 1).unwrap();
            // What the first filter lets through to open a file, the second refuses.
            for s in [
                libc::SYS_openat,
                libc::SYS_openat2,
                libc::SYS_open,
                libc::SYS_creat,
                libc::SYS_open_by_handle_at,
            ] {
                assert!(
                    !rules.contains_key(&s) || refused.contains_key(&s),
                    "{kind:?} may open files with syscall {s}"
                );
            }
            for s in [libc::SYS_clone, libc::SYS_clone3, libc::SYS_kill] {
                assert!(!rules.contains_key(&s), "{kind:?} allows syscall {s}");
            }
        }
        assert!(
            !rules(ThreadKind::Vcpu, 1)
                .unwrap()
                .contains_key(&libc::SYS_socket)
        );
    }
}
