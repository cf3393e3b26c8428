//! Named network namespaces (as `ip netns add` makes them), threads that work inside one, and
//! netlink connections opened there.
//!
//! A namespace is created without forking: a dedicated thread calls `unshare(CLONE_NEWNET)`
//! (which moves only that thread) and bind-mounts `/proc/thread-self/ns/net` on
//! `/run/netns/NAME`; the mount keeps the namespace alive after the thread ends, and the jailer
//! (or `ip netns exec`) joins it by that path. A netlink socket belongs to the namespace of the
//! thread that opened it, whatever thread uses it later, so a thread can hold one socket in the
//! host and one in a sandbox at once.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::OnceLock;

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};

use crate::config::NETNS_DIR;
use crate::error::{NetError, errno_io};

/// Runs `f` on a new thread and returns its result (a panic in `f` is resumed here). Every
/// namespace change happens on such a thread, never on the caller's.
pub(crate) fn on_thread<T: Send>(
    f: impl FnOnce() -> Result<T, NetError> + Send,
) -> Result<T, NetError> {
    std::thread::scope(|s| match s.spawn(f).join() {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

/// Opens the calling thread's network namespace (to return to it, or to move a device into it).
pub(crate) fn open_current() -> Result<File, NetError> {
    File::open("/proc/thread-self/ns/net")
        .map_err(|e| NetError::io("opening", "/proc/thread-self/ns/net", e))
}

/// Moves the calling thread into the namespace `ns` (an open namespace file).
pub(crate) fn enter(ns: impl AsFd, what: &str) -> Result<(), NetError> {
    setns(ns, CloneFlags::CLONE_NEWNET)
        .map_err(|e| NetError::io("joining network namespace", what, errno_io(e)))
}

/// Opens `/run/netns/<name>` and moves the calling thread into it.
pub(crate) fn enter_named(path: &Path) -> Result<(), NetError> {
    let f = File::open(path).map_err(|e| NetError::io("opening", path.display().to_string(), e))?;
    enter(&f, &path.display().to_string())
}

/// Makes `/run/netns` exist and be a shared mount point (what `ip netns add` does), so namespace
/// mounts made later propagate into mount namespaces copied from this one (the jailer's). Once
/// per process.
pub(crate) fn prepare_netns_dir() -> Result<(), NetError> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    let r = DONE.get_or_init(|| {
        let run = || -> Result<(), NetError> {
            std::fs::create_dir_all(NETNS_DIR)
                .map_err(|e| NetError::io("creating directory", NETNS_DIR, e))?;
            let shared = || {
                mount(
                    None::<&str>,
                    NETNS_DIR,
                    None::<&str>,
                    MsFlags::MS_SHARED | MsFlags::MS_REC,
                    None::<&str>,
                )
            };
            if shared().is_err() {
                // Not a mount point yet: bind it onto itself first, as iproute2 does.
                mount(
                    Some(NETNS_DIR),
                    NETNS_DIR,
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                )
                .map_err(|e| NetError::io("bind-mounting", NETNS_DIR, errno_io(e)))?;
                shared().map_err(|e| NetError::io("making shared", NETNS_DIR, errno_io(e)))?;
            }
            Ok(())
        };
        run().map_err(|e| e.to_string())
    });
    r.clone()
        .map_err(|reason| NetError::io("preparing", NETNS_DIR, io::Error::other(reason)))
}

/// Moves the calling thread into a new network namespace and registers it at `path`. The calling
/// thread must be a dedicated one ([`on_thread`]): it stays in the new namespace.
///
/// Fails with `EEXIST` (and changes nothing on disk) if `path` exists.
pub(crate) fn create_here(path: &Path) -> Result<(), NetError> {
    let shown = || path.display().to_string();
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .open(path)
        .map_err(|e| NetError::io("creating namespace file", shown(), e))?;
    let registered = unshare(CloneFlags::CLONE_NEWNET)
        .map_err(|e| NetError::io("unsharing the network namespace for", shown(), errno_io(e)))
        .and_then(|()| {
            mount(
                Some("/proc/thread-self/ns/net"),
                path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| NetError::io("bind-mounting the namespace on", shown(), errno_io(e)))
        });
    if registered.is_err() {
        let _ = std::fs::remove_file(path);
    }
    registered
}

/// Unmounts and removes `path`; a missing or unmounted file is not an error. The namespace itself
/// ends when nothing else holds it (a process inside, an open file).
pub(crate) fn remove(path: &Path) -> Result<(), NetError> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => {
            return Err(NetError::io(
                "unmounting namespace",
                path.display().to_string(),
                errno_io(e),
            ));
        }
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(NetError::io(
            "removing namespace file",
            path.display().to_string(),
            e,
        )),
    }
}

/// The names of the namespace files under `/run/netns` (none if the directory is missing).
pub(crate) fn list_names() -> Result<Vec<String>, NetError> {
    let dir = match std::fs::read_dir(NETNS_DIR) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(NetError::io("listing", NETNS_DIR, e)),
    };
    let mut names = Vec::new();
    for entry in dir {
        let entry = entry.map_err(|e| NetError::io("listing", NETNS_DIR, e))?;
        if let Some(name) = entry.file_name().to_str() {
            names.push(name.to_string());
        }
    }
    names.sort();
    Ok(names)
}

/// Writes `1` to `/proc/sys/net/ipv4/ip_forward` of the calling thread's namespace (net sysctls
/// belong to the namespace of the thread that opens them).
pub(crate) fn enable_forwarding(namespace: &str) -> Result<(), NetError> {
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
        .map_err(|e| NetError::io("enabling IPv4 forwarding in", namespace.to_string(), e))
}

/// A single-threaded tokio runtime for rtnetlink on the calling thread.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, NetError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| NetError::io("starting", "the netlink runtime", e))
}

/// Opens a netlink socket in the calling thread's namespace; call inside the runtime. The
/// connection task ends when the returned handle (and its clones) are dropped.
pub(crate) fn netlink(namespace: &str) -> Result<rtnetlink::Handle, NetError> {
    let (conn, handle, _) = rtnetlink::new_connection()
        .map_err(|e| NetError::io("opening a netlink socket in", namespace.to_string(), e))?;
    tokio::spawn(conn);
    Ok(handle)
}
