//! Starting a VMM in its jail. In the jailer (root, the host's namespaces):
//!
//! 1. the cgroup `<parent>/<id>` is created with its limits and the jailer moves into it;
//! 2. the jail root is chowned to the VMM's uid:gid (the VMM creates its sockets there);
//! 3. a new pid namespace for its children;
//! 4. fork: the child is pid 1 of the new pid namespace. It enters new mount, ipc and uts
//!    namespaces and a new network namespace (or joins the one given), builds the file system
//!    ([`crate::mounts`]), names the host `id`, drops the capability bounding set, sets its
//!    gid, groups and uid, sets `no_new_privs`, and execs the VMM binary inside the jail with a
//!    clean environment. A failure before the exec is written to a close-on-exec pipe, so the
//!    parent reports it; an exec that succeeds closes the pipe.
//! 5. the parent prints the VMM's host pid and exits, so the VMM is supervised by whoever
//!    started the jailer (a subreaper, or through a pidfd like any adopted VMM).
//!
//! Tied to an owner (`tie_to`, an owner that must not leave VMMs behind when it dies): before
//! the fork the jailer sets a parent-death SIGKILL on itself and checks its parent is still
//! the owner; the child sets one on the jailer and checks, through a pipe only the jailer
//! holds open, that the jailer did not die before the signal was armed. The jailer then stays
//! as the VMM's parent ([`wait_and_mirror`]) and ends the way the VMM ended (its exit code, or
//! the same signal), so the owner sees the VMM's end as the jailer's. Killing the jailer kills
//! the VMM. A new pid namespace would hide the owner from the VMM's own `getppid`, which is
//! why the VMM cannot arm the signal relative to the owner itself.
//!
//! [`start_sibling`] is the same jail started from a resident jailer ([`crate::serve`]): the
//! VMM is cloned as the jailer's sibling (`CLONE_PARENT`), so it is the owner's child; it joins
//! its cgroup itself, and a tied one arms its parent-death signal relative to the owner and
//! checks the owner's liveness through a socket only the owner holds the peer of.

use std::ffi::CString;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;

use nix::fcntl::OFlag;
use nix::sched::{CloneFlags, setns, unshare};
use nix::unistd::{
    ForkResult, Gid, Pid, Uid, chown, execve, pipe2, setgroups, setresgid, setresuid,
};

use crate::cgroup::{self, CgroupError};
use crate::config::{ConfigError, JailConfig};
use crate::mounts::{self, MountError};
use crate::sys;

/// Why a jail could not be started.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// The configuration is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The cgroup could not be made.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// A system call failed in the jailer.
    #[error("{what}: {source}")]
    Sys {
        /// What was being done.
        what: &'static str,
        /// Why.
        source: io::Error,
    },
    /// The VMM binary's shared libraries could not be listed.
    #[error(transparent)]
    Libraries(#[from] crate::libraries::LibraryError),
    /// The child failed before it could exec the VMM (its message).
    #[error("in the jail: {0}")]
    Child(String),
}

fn sys_err(what: &'static str) -> impl FnOnce(nix::Error) -> JailError {
    move |e| JailError::Sys {
        what,
        source: e.into(),
    }
}

/// A started jail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Started {
    /// The VMM's pid in the host's pid namespace.
    pub pid: u32,
}

/// Starts `config`'s VMM in its jail (see the module doc) and returns its host pid once it
/// has exec'd. Call from a single-threaded process (it forks).
pub fn start(config: &JailConfig, cgroup_root: &Path) -> Result<Started, JailError> {
    if let Some(owner) = config.tie_to {
        tie_to_owner(owner)?;
    }
    let Prepared {
        libraries,
        cgroup: cg,
        netns,
    } = prepare(config, cgroup_root)?;
    // The jailer is single-threaded: on v1 it moves its one thread, the cheap migration.
    cg.add_self()?;
    // Only the pid namespace before the fork (it applies to children); the others in the
    // child, so that its pivot_root never moves the jailer's own root.
    unshare(CloneFlags::CLONE_NEWPID).map_err(sys_err("creating the pid namespace"))?;
    let (report_rx, report_tx) =
        pipe2(OFlag::O_CLOEXEC).map_err(sys_err("creating the report pipe"))?;
    // Only the jailer holds the write end: the child sees POLLHUP on the read end once the
    // jailer is gone.
    let (alive_rx, alive_tx) =
        pipe2(OFlag::O_CLOEXEC).map_err(sys_err("creating the liveness pipe"))?;
    match sys::fork().map_err(|source| JailError::Sys {
        what: "forking",
        source,
    })? {
        ForkResult::Child => {
            drop(report_rx);
            drop(alive_tx);
            let tie = match config.tie_to {
                Some(_) => Tie::Jailer(alive_rx),
                None => Tie::None,
            };
            let e = enter(config, netns, &libraries, tie);
            // Only reached on failure: tell the parent why, then go.
            let mut tx = std::fs::File::from(report_tx);
            let _ = tx.write_all(e.to_string().as_bytes());
            sys::exit_now(1);
        }
        ForkResult::Parent { child } => {
            drop(report_tx);
            drop(alive_rx);
            let started = parent_wait_for_exec(report_rx, child);
            // Held until the jailer exits (tied) or returns (not tied: the VMM has exec'd and
            // no longer looks at it).
            std::mem::forget(alive_tx);
            started
        }
    }
}

/// What both ways of starting a jail make before the fork.
struct Prepared {
    /// The VMM's shared libraries to bind (when the config asks for a scan).
    libraries: Vec<crate::config::Bind>,
    /// The VM's cgroup, with its limits (nobody in it yet).
    cgroup: cgroup::Cgroup,
    /// The network namespace to join, if one is given.
    netns: Option<std::fs::File>,
}

/// Checks `config`, lists the libraries, makes the cgroup, hands the jail root to the VMM's
/// uid:gid and opens the network namespace to join.
fn prepare(config: &JailConfig, cgroup_root: &Path) -> Result<Prepared, JailError> {
    config.validate()?;
    let libraries = if config.scan_libraries {
        crate::libraries::binds_for(&config.exec_file)?
    } else {
        Vec::new()
    };
    let version = cgroup::detect(cgroup_root)?;
    let cgroup = cgroup::create(
        cgroup_root,
        version,
        &config.parent_cgroup,
        &config.id,
        &config.limits,
    )?;
    chown(
        &config.root,
        Some(Uid::from_raw(config.uid)),
        Some(Gid::from_raw(config.gid)),
    )
    .map_err(sys_err("chowning the jail root"))?;
    let netns = match &config.netns {
        Some(path) => Some(std::fs::File::open(path).map_err(|source| JailError::Sys {
            what: "opening the network namespace",
            source,
        })?),
        None => None,
    };
    Ok(Prepared {
        libraries,
        cgroup,
        netns,
    })
}

/// Arms a parent-death SIGKILL on the jailer and checks the owner did not die first.
fn tie_to_owner(owner: u32) -> Result<(), JailError> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .map_err(sys_err("setting the parent-death signal"))?;
    let parent = nix::unistd::getppid().as_raw();
    if u32::try_from(parent).ok() != Some(owner) {
        return Err(JailError::Child(format!(
            "the owner {owner} is gone (the jailer's parent is now {parent}); not starting"
        )));
    }
    Ok(())
}

/// In the child, after its last change of credentials (which would clear it): arms a
/// parent-death SIGKILL on the jailer, then checks the jailer is alive.
fn tie_to_jailer(alive_rx: OwnedFd) -> Result<(), JailError> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .map_err(sys_err("setting the parent-death signal"))?;
    let mut fds = [nix::poll::PollFd::new(
        std::os::fd::AsFd::as_fd(&alive_rx),
        nix::poll::PollFlags::POLLIN,
    )];
    let hung_up = matches!(nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO), Ok(n) if n > 0);
    if hung_up {
        return Err(JailError::Child(
            "the jailer died before the VMM started".into(),
        ));
    }
    Ok(())
}

/// How the VMM is tied to an owner's life (armed last before the exec).
enum Tie {
    /// Not tied.
    None,
    /// To the jailer, its parent, which holds the write end of this pipe.
    Jailer(OwnedFd),
    /// To the owner, its parent (a sibling start, [`start_sibling`]): this is a socket whose
    /// peer only the owner holds.
    Owner(OwnedFd),
}

/// In a sibling's child, after its last change of credentials: arms a parent-death SIGKILL
/// (its parent is the owner) and checks, through the owner's socket, that the owner did not
/// die before the signal was armed (a new pid namespace hides the parent from `getppid`).
fn tie_to_owner_link(link: OwnedFd) -> Result<(), JailError> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .map_err(sys_err("setting the parent-death signal"))?;
    let mut fds = [nix::poll::PollFd::new(
        std::os::fd::AsFd::as_fd(&link),
        nix::poll::PollFlags::empty(),
    )];
    let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO);
    let gone = fds[0].revents().is_some_and(|r| {
        r.intersects(nix::poll::PollFlags::POLLHUP | nix::poll::PollFlags::POLLERR)
    });
    if gone {
        return Err(JailError::Child(
            "the owner died before the VMM started".into(),
        ));
    }
    Ok(())
}

/// Where a sibling VMM's standard streams go (host paths, opened before the jail is built).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Stdio {
    /// The VMM's stdout (opened for appending; must exist).
    pub stdout: std::path::PathBuf,
    /// The VMM's stderr (opened for appending; must exist).
    pub stderr: std::path::PathBuf,
}

/// A sibling start that failed: why, and the child to reap if one was made.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct SiblingError {
    /// The child (the caller's, to reap) if the failure came after the clone.
    pub pid: Option<u32>,
    /// Why.
    pub error: JailError,
}

/// Like [`start`], from a resident jailer ([`crate::serve`]): the VMM is made a child of this
/// process's parent (`CLONE_PARENT`), so the owner supervises and reaps it as it would a VMM
/// it started itself, and no jailer process stays or exits per VMM. The child joins the
/// cgroup itself (the jailer stays where it is), takes `stdio`, starts a new session when
/// `new_session` (the owner's signals to its process group do not reach it), and, tied
/// (`owner_link`: a socket whose peer only the owner holds), arms a parent-death SIGKILL —
/// its parent being the owner's thread that started this jailer.
pub fn start_sibling(
    config: &JailConfig,
    cgroup_root: &Path,
    stdio: &Stdio,
    new_session: bool,
    owner_link: Option<OwnedFd>,
) -> Result<Started, SiblingError> {
    let early = |error: JailError| SiblingError { pid: None, error };
    let Prepared {
        libraries,
        cgroup: cg,
        netns,
    } = prepare(config, cgroup_root).map_err(early)?;
    let open_err = |what: &'static str| move |source| early(JailError::Sys { what, source });
    let append = |p: &Path| std::fs::OpenOptions::new().append(true).open(p);
    let out = append(&stdio.stdout).map_err(open_err("opening the VMM's stdout"))?;
    let err = append(&stdio.stderr).map_err(open_err("opening the VMM's stderr"))?;
    let null = std::fs::File::open("/dev/null").map_err(open_err("opening /dev/null"))?;
    let (report_rx, report_tx) =
        pipe2(OFlag::O_CLOEXEC).map_err(|e| early(sys_err("creating the report pipe")(e)))?;
    match sys::clone_sibling_in_new_pid_namespace().map_err(|source| {
        early(JailError::Sys {
            what: "cloning the VMM's process",
            source,
        })
    })? {
        None => {
            drop(report_rx);
            let e = sibling_child(
                config,
                &cg,
                [null.into(), out.into(), err.into()],
                new_session,
                netns,
                &libraries,
                owner_link,
            );
            let mut tx = std::fs::File::from(report_tx);
            let _ = tx.write_all(e.to_string().as_bytes());
            sys::exit_now(1);
        }
        Some(child) => {
            drop(report_tx);
            parent_wait_for_exec_of_sibling(report_rx, child).map_err(|error| SiblingError {
                pid: Some(child.as_raw() as u32),
                error,
            })
        }
    }
}

/// In a sibling's child: joins the cgroup, takes its standard streams, then builds the jail
/// and execs; returns only on failure.
fn sibling_child(
    config: &JailConfig,
    cg: &cgroup::Cgroup,
    [stdin, stdout, stderr]: [OwnedFd; 3],
    new_session: bool,
    netns: Option<std::fs::File>,
    libraries: &[crate::config::Bind],
    owner_link: Option<OwnedFd>,
) -> JailError {
    if let Err(e) = cg.add_self() {
        return e.into();
    }
    for (fd, to) in [(stdin, 0), (stdout, 1), (stderr, 2)] {
        if let Err(e) = sys::dup_onto(&fd, to) {
            return JailError::Sys {
                what: "setting the VMM's standard streams",
                source: e,
            };
        }
    }
    if new_session && let Err(e) = nix::unistd::setsid() {
        return sys_err("starting a new session")(e);
    }
    let tie = match owner_link {
        Some(link) => Tie::Owner(link),
        None => Tie::None,
    };
    enter(config, netns, libraries, tie)
}

/// Reads a sibling child's report: EOF with nothing means it exec'd the VMM.
fn parent_wait_for_exec_of_sibling(report_rx: OwnedFd, child: Pid) -> Result<Started, JailError> {
    let mut message = String::new();
    std::fs::File::from(report_rx)
        .read_to_string(&mut message)
        .map_err(|source| JailError::Sys {
            what: "reading the child's report",
            source,
        })?;
    if !message.is_empty() {
        return Err(JailError::Child(message));
    }
    Ok(Started {
        pid: child.as_raw() as u32,
    })
}

/// Tied mode, in the jailer after [`start`]: waits for the VMM and ends the same way — its
/// exit code, or the signal that killed it raised again on the jailer. Never returns.
pub fn wait_and_mirror(vmm_pid: u32) -> ! {
    use nix::sys::wait::{WaitStatus, waitpid};
    let pid = Pid::from_raw(vmm_pid as i32);
    loop {
        match waitpid(pid, None) {
            Err(nix::errno::Errno::EINTR) => continue,
            Ok(WaitStatus::Exited(_, code)) => std::process::exit(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => {
                sys::default_signal_action(sig as i32);
                let _ = nix::sys::signal::raise(sig);
                // A signal whose default is not to terminate: end as a shell would report it.
                std::process::exit(128 + sig as i32);
            }
            Ok(_) => continue,
            Err(_) => std::process::exit(125),
        }
    }
}

/// Reads the child's report: EOF with nothing means it exec'd the VMM.
fn parent_wait_for_exec(report_rx: OwnedFd, child: Pid) -> Result<Started, JailError> {
    let mut message = String::new();
    let mut rx = std::fs::File::from(report_rx);
    rx.read_to_string(&mut message)
        .map_err(|source| JailError::Sys {
            what: "reading the child's report",
            source,
        })?;
    if !message.is_empty() {
        let _ = nix::sys::wait::waitpid(child, None);
        return Err(JailError::Child(message));
    }
    Ok(Started {
        pid: child.as_raw() as u32,
    })
}

/// In the child: builds the jail and execs the VMM; returns only on failure.
fn enter(
    config: &JailConfig,
    netns: Option<std::fs::File>,
    libraries: &[crate::config::Bind],
    tie: Tie,
) -> JailError {
    match try_enter(config, netns, libraries, tie) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

fn mount_err(e: MountError) -> JailError {
    JailError::Child(e.to_string())
}

fn try_enter(
    config: &JailConfig,
    netns: Option<std::fs::File>,
    libraries: &[crate::config::Bind],
    tie: Tie,
) -> Result<std::convert::Infallible, JailError> {
    let mut flags = CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS;
    match netns {
        Some(ns) => {
            setns(ns, CloneFlags::CLONE_NEWNET).map_err(sys_err("joining the network namespace"))?
        }
        None => flags |= CloneFlags::CLONE_NEWNET,
    }
    unshare(flags).map_err(sys_err("creating namespaces"))?;
    mounts::make_slave().map_err(mount_err)?;
    mounts::bind_root(&config.root).map_err(mount_err)?;
    let exec = config.exec_in_jail();
    let exec_bind = crate::config::Bind {
        source: config.exec_file.clone(),
        target: exec.clone(),
        read_only: true,
    };
    mounts::bind(&config.root, &exec_bind).map_err(mount_err)?;
    for b in libraries.iter().chain(&config.binds) {
        mounts::bind(&config.root, b).map_err(mount_err)?;
    }
    mounts::devices(&config.root, config.uid, config.gid).map_err(mount_err)?;
    mounts::pivot(&config.root).map_err(mount_err)?;
    nix::unistd::sethostname(&config.id).map_err(sys_err("setting the hostname"))?;
    sys::drop_capability_bounding_set().map_err(|source| JailError::Sys {
        what: "dropping the capability bounding set",
        source,
    })?;
    let (uid, gid) = (Uid::from_raw(config.uid), Gid::from_raw(config.gid));
    setgroups(&[]).map_err(sys_err("clearing supplementary groups"))?;
    setresgid(gid, gid, gid).map_err(sys_err("setting the gid"))?;
    // From a uid of 0 to none of 0: the permitted and effective capability sets are cleared.
    setresuid(uid, uid, uid).map_err(sys_err("setting the uid"))?;
    sys::set_no_new_privs().map_err(|source| JailError::Sys {
        what: "setting no_new_privs",
        source,
    })?;
    // Last before the exec: a change of uid or gid clears the parent-death signal.
    match tie {
        Tie::None => {}
        Tie::Jailer(alive) => tie_to_jailer(alive)?,
        Tie::Owner(link) => tie_to_owner_link(link)?,
    }
    let cstr = |s: &str| {
        CString::new(s).map_err(|_| JailError::Child(format!("argument {s:?} contains NUL")))
    };
    let path = cstr(&exec.to_string_lossy())?;
    let mut argv = vec![path.clone()];
    for a in &config.args {
        argv.push(cstr(a)?);
    }
    // A clean environment: only the VMM's log settings pass.
    let mut env = Vec::new();
    for key in ["RUST_LOG", "RUST_BACKTRACE"] {
        if let Ok(v) = std::env::var(key) {
            env.push(cstr(&format!("{key}={v}"))?);
        }
    }
    execve(&path, &argv, &env).map_err(sys_err("executing the VMM"))
}
