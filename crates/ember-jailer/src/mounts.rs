//! The jail's file system, built inside the VMM's new mount namespace: the host's mounts stop
//! propagating back, the root directory becomes a mount of its own with the allowed host files
//! bound into it (the VMM binary, kernels, snapshots, ...), a private `/dev` holding only
//! `kvm`, `net/tun`, `random` and `urandom`, and then `pivot_root` makes it `/` and detaches
//! everything else — no host path can be named from inside.
//!
//! [`inject`] and [`eject`] add and remove a bind mount in a *running* VMM's mount namespace
//! (from a single-threaded resident jailer): the files a VMM is given after it started.

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::{Mode, SFlag, major, makedev, minor, mknod};
use nix::unistd::{Gid, Uid, chown, pivot_root};

use crate::config::Bind;

/// The device nodes a VMM needs: (path inside the jail, host node, mode). `random` as well as
/// `urandom`: a static VMM's `getrandom` (no libc symbol to find) falls back to the files, and
/// it polls `/dev/random` once before it reads `/dev/urandom`.
pub const DEVICES: [(&str, &str, u32); 4] = [
    ("dev/kvm", "/dev/kvm", 0o600),
    ("dev/net/tun", "/dev/net/tun", 0o600),
    ("dev/random", "/dev/random", 0o666),
    ("dev/urandom", "/dev/urandom", 0o666),
];

/// A step of building the jail that failed.
#[derive(Debug, thiserror::Error)]
#[error("{what} {path}: {source}")]
pub struct MountError {
    /// What was being done.
    pub what: &'static str,
    /// The path.
    pub path: PathBuf,
    /// Why.
    pub source: io::Error,
}

fn err(what: &'static str, path: &Path) -> impl FnOnce(nix::Error) -> MountError {
    let path = path.to_path_buf();
    move |e| MountError {
        what,
        path,
        source: e.into(),
    }
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> MountError {
    let path = path.to_path_buf();
    move |source| MountError { what, path, source }
}

/// `target` inside `root` (`target` is absolute and normal, checked by [`Bind::parse`]).
fn inside(root: &Path, target: &Path) -> PathBuf {
    root.join(target.strip_prefix("/").unwrap_or(target))
}

/// Refuses a path under `root` that goes through a symbolic link (left in a reused root by an
/// earlier VMM, it could point the jailer, which runs as root, at a host file).
pub fn no_symlinks(root: &Path, path: &Path) -> Result<(), MountError> {
    let rel = path.strip_prefix(root).unwrap_or(path);
    let mut at = root.to_path_buf();
    for part in rel.components() {
        at.push(part);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(MountError {
                    what: "refusing a symbolic link in the jail at",
                    path: at,
                    source: io::Error::from_raw_os_error(libc::ELOOP),
                });
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("checking", &at)(e)),
        }
    }
    Ok(())
}

/// Stops mount events from propagating from this namespace to the host's (call first, in the
/// new mount namespace).
pub fn make_slave() -> Result<(), MountError> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(err("making the mount tree a slave", Path::new("/")))
}

/// Makes `root` a mount point (pivot_root needs one), without setuid files but with device
/// nodes (the root may come from a `nodev` file system such as /dev/shm or /run; the jail's own
/// nodes in [`devices`] are the only ones in it).
pub fn bind_root(root: &Path) -> Result<(), MountError> {
    mount(
        Some(root),
        root,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(err("bind-mounting the jail root", root))?;
    mount(
        None::<&str>,
        root,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID,
        None::<&str>,
    )
    .map_err(err(
        "remounting the jail root (nosuid, devices allowed)",
        root,
    ))
}

/// Binds `bind.source` at its target inside `root` (creating an empty file or directory to
/// mount on), read-only when asked, never with setuid or device files.
pub fn bind(root: &Path, bind: &Bind) -> Result<(), MountError> {
    let target = inside(root, &bind.target);
    no_symlinks(root, &target)?;
    let is_dir = std::fs::metadata(&bind.source)
        .map_err(io_err("reading bind source", &bind.source))?
        .is_dir();
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(io_err("creating", parent))?;
    }
    if is_dir {
        std::fs::create_dir_all(&target).map_err(io_err("creating", &target))?;
    } else if !target.exists() {
        std::fs::File::create(&target).map_err(io_err("creating", &target))?;
    }
    mount(
        Some(&bind.source),
        &target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(err("bind-mounting", &bind.source))?;
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if bind.read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    mount(None::<&str>, &target, None::<&str>, flags, None::<&str>)
        .map_err(err("remounting (ro/nosuid/nodev)", &target))
}

/// Creates `<root>/dev` (a plain directory of the jail root, owned by root, mode 0755: the VMM
/// cannot add to it) and the [`DEVICES`] nodes in it, owned by uid:gid. Not a tmpfs over `/dev`:
/// the files the VMM is given keep their host paths in the jail, and a host path under `/dev`
/// (a runtime directory in `/dev/shm`) must stay reachable — for binds made now and for those
/// a runtime adds later from the host.
pub fn devices(root: &Path, uid: u32, gid: u32) -> Result<(), MountError> {
    let dev = root.join("dev");
    no_symlinks(root, &dev)?;
    std::fs::create_dir_all(&dev).map_err(io_err("creating", &dev))?;
    chown(&dev, Some(Uid::from_raw(0)), Some(Gid::from_raw(0))).map_err(err("chowning", &dev))?;
    std::fs::set_permissions(&dev, std::fs::Permissions::from_mode(0o755))
        .map_err(io_err("setting the mode of", &dev))?;
    for (at, host, mode) in DEVICES {
        let host = Path::new(host);
        let meta = match std::fs::metadata(host) {
            Ok(m) => m,
            // A host without the device (no TUN module): the VMM reports it if it needs it.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err("reading", host)(e)),
        };
        let node = root.join(at);
        no_symlinks(root, &node)?;
        if let Some(parent) = node.parent() {
            std::fs::create_dir_all(parent).map_err(io_err("creating", parent))?;
        }
        match std::fs::remove_file(&node) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(io_err("replacing", &node)(e));
            }
            _ => {}
        }
        let rdev = meta.rdev();
        mknod(
            &node,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(mode),
            makedev(major(rdev), minor(rdev)),
        )
        .map_err(err("creating the device node", &node))?;
        // mknod applies the umask: set the mode exactly.
        std::fs::set_permissions(&node, std::fs::Permissions::from_mode(mode))
            .map_err(io_err("setting the mode of", &node))?;
        chown(&node, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
            .map_err(err("chowning", &node))?;
    }
    Ok(())
}

/// Runs `f` inside the mount namespace of process `pid` (whose `/` is its jail), then comes
/// back. The caller must be single-threaded: a process whose threads share their file-system
/// context cannot change mount namespace. Not coming back would leave this process in a VMM's
/// jail: it exits instead.
fn in_mount_namespace_of<T>(
    pid: u32,
    f: impl FnOnce() -> Result<T, MountError>,
) -> Result<T, MountError> {
    use nix::sched::{CloneFlags, setns};
    let own_path = Path::new("/proc/self/ns/mnt");
    let own = std::fs::File::open(own_path).map_err(io_err("opening", own_path))?;
    let theirs_path = PathBuf::from(format!("/proc/{pid}/ns/mnt"));
    let theirs = std::fs::File::open(&theirs_path).map_err(io_err("opening", &theirs_path))?;
    setns(&theirs, CloneFlags::CLONE_NEWNS)
        .map_err(err("entering the mount namespace", &theirs_path))?;
    let result = f();
    if let Err(e) = setns(&own, CloneFlags::CLONE_NEWNS) {
        tracing::error!(error = %e, "cannot return to the jailer's own mount namespace; exiting");
        std::process::exit(3);
    }
    result
}

/// Binds host `source` at `target` in process `pid`'s mount namespace (`target` as that
/// process sees it — a jailed VMM sees its jail as `/` — an existing empty file or directory),
/// read-only when asked, never with setuid or device files. The bind is cloned here, where the
/// host's paths are visible (`open_tree`), and attached there (`move_mount`): nothing is
/// mounted in the host's namespace. Single-threaded callers only (see `in_mount_namespace_of`).
pub fn inject(pid: u32, source: &Path, target: &Path, read_only: bool) -> Result<(), MountError> {
    use rustix::mount::{MoveMountFlags, OpenTreeFlags, move_mount, open_tree};
    let tree = open_tree(
        rustix::fs::CWD,
        source,
        OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
    )
    .map_err(|e| MountError {
        what: "cloning a bind of",
        path: source.to_path_buf(),
        source: e.into(),
    })?;
    in_mount_namespace_of(pid, || {
        no_symlinks(Path::new("/"), target)?;
        move_mount(
            &tree,
            "",
            rustix::fs::CWD,
            target,
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
        )
        .map_err(|e| MountError {
            what: "attaching a bind at",
            path: target.to_path_buf(),
            source: e.into(),
        })?;
        let mut flags =
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        if read_only {
            flags |= MsFlags::MS_RDONLY;
        }
        mount(None::<&str>, target, None::<&str>, flags, None::<&str>).map_err(|e| {
            let _ = umount2(target, MntFlags::MNT_DETACH);
            err("remounting (ro/nosuid/nodev)", target)(e)
        })
    })
}

/// Removes what is mounted at `target` in process `pid`'s mount namespace (nothing there, or
/// the process gone, is fine).
pub fn eject(pid: u32, target: &Path) -> Result<(), MountError> {
    if !Path::new(&format!("/proc/{pid}")).exists() {
        return Ok(());
    }
    in_mount_namespace_of(pid, || {
        for _ in 0..16 {
            match umount2(target, MntFlags::MNT_DETACH) {
                Ok(()) => {}
                Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => return Ok(()),
                Err(e) => return Err(err("unmounting", target)(e)),
            }
        }
        Ok(())
    })
}

/// Makes `root` the process's `/` and detaches the old root: nothing outside `root` stays
/// reachable.
pub fn pivot(root: &Path) -> Result<(), MountError> {
    std::env::set_current_dir(root).map_err(io_err("entering", root))?;
    // pivot_root(".", "."): the old root is stacked under the new one at "/", then detached.
    pivot_root(".", ".").map_err(err("pivot_root into", root))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(err("detaching the old root", root))?;
    std::env::set_current_dir("/").map_err(io_err("entering", Path::new("/")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_symlink_on_the_way_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("d")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("link")).unwrap();
        assert!(no_symlinks(root, &root.join("d/new")).is_ok());
        assert!(no_symlinks(root, &root.join("missing/new")).is_ok());
        let e = no_symlinks(root, &root.join("link/passwd")).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
    }

    #[test]
    fn targets_land_inside_the_root() {
        assert_eq!(
            inside(Path::new("/jail"), Path::new("/a/b")),
            Path::new("/jail/a/b")
        );
    }
}
