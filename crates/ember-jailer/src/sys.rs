//! The few raw calls the jailer makes that have no safe wrapper: `fork` and a fork-like
//! `clone` (the jailer is single-threaded when it forks), `dup2`, dropping the capability
//! bounding set, restoring a signal's default action, and `_exit` in the child. Everything
//! else goes through nix.
#![allow(unsafe_code)]

use std::io;

use nix::unistd::ForkResult;

/// Forks. The jailer has one thread (no runtime, no logging thread), so the child may do
/// anything the parent could.
pub fn fork() -> io::Result<ForkResult> {
    // SAFETY: the process is single-threaded at this point (the jailer never spawns threads),
    // so the child inherits no lock held by another thread.
    unsafe { nix::unistd::fork() }.map_err(io::Error::from)
}

/// Forks a child that is this process's sibling (`CLONE_PARENT`: its parent is our parent,
/// which is sent its SIGCHLD and reaps it) and pid 1 of a new pid namespace. Returns the
/// child's pid in the parent, `None` in the child.
pub fn clone_sibling_in_new_pid_namespace() -> io::Result<Option<nix::unistd::Pid>> {
    let flags = (libc::CLONE_PARENT | libc::CLONE_NEWPID | libc::SIGCHLD) as libc::c_ulong;
    // SAFETY: the raw clone syscall with no new stack (0) and none of CLONE_VM, CLONE_SETTLS
    // or the tid pointers behaves as fork: the child continues on a copy of this stack in a
    // copy of the address space. The process is single-threaded (a resident jailer serves one
    // request at a time on its only thread), so no lock is held by another thread in the copy.
    let rc = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
    match rc {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(None),
        pid => Ok(Some(nix::unistd::Pid::from_raw(pid as i32))),
    }
}

/// Makes descriptor `to` a copy of `fd` (not close-on-exec).
pub fn dup_onto(fd: &impl std::os::fd::AsRawFd, to: i32) -> io::Result<()> {
    // SAFETY: dup2 on a descriptor we own onto a standard stream number; it closes whatever
    // `to` was and touches no memory.
    let rc = unsafe { libc::dup2(fd.as_raw_fd(), to) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Drops every capability from the bounding set (so no exec can regain one) and clears the
/// ambient set. Needs CAP_SETPCAP, so call it before the uid changes.
pub fn drop_capability_bounding_set() -> io::Result<()> {
    // CAP_LAST_CAP of the running kernel, or a generous upper bound if /proc is not mounted.
    let last: libc::c_ulong = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63);
    for cap in 0..=last {
        // SAFETY: prctl with integer arguments only.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            // EINVAL: past the kernel's last capability.
            if e.raw_os_error() == Some(libc::EINVAL) {
                break;
            }
            return Err(e);
        }
    }
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets `no_new_privs`: no exec can gain privileges (setuid bits, file capabilities).
pub fn set_no_new_privs() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Restores `signal`'s default action and unblocks it (before raising it on the jailer).
pub fn default_signal_action(signal: i32) {
    // SAFETY: installing SIG_DFL runs no code of ours in signal context.
    unsafe { libc::signal(signal, libc::SIG_DFL) };
    let mut set = nix::sys::signal::SigSet::empty();
    if let Ok(sig) = nix::sys::signal::Signal::try_from(signal) {
        set.add(sig);
        let _ = set.thread_unblock();
    }
}

/// Exits the forked child at once, without running the parent's exit handlers.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and is always safe to call.
    unsafe { libc::_exit(code) }
}
