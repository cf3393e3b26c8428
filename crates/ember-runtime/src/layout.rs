//! The provider's directory tree: where every file of every VMM lives, so nothing is left
//! unaccounted for.
//!
//! ```text
//! <root>/
//!   .lock                   flock held by the one provider using this root
//!   slots/<n>/              one per VMM process (spare or VM), n never reused by a provider
//!     api.sock              the Firecracker API socket
//!     vsock.sock            the VM's hybrid-vsock socket (guest-initiated: vsock.sock_<port>)
//!     console.log           the process's stdout: the guest serial console
//!     vmm.log               the process's stderr: the VMM's own log
//!   vms/<vm id> -> ../slots/<n>    the VM's id, a symlink
//!   jails/<n>/              slot n's jail root when VMMs are jailed (see the jail module)
//!   snapshots/<snapshot id>/       state, mem (see the snapshots module)
//! ```
//!
//! The snapshots may live elsewhere (`ProviderConfig::snapshots_dir`): the root holds only
//! ephemeral runtime files (sockets, logs) and belongs on a tmpfs such as `/run` or
//! `/dev/shm` — on this project's hosts creating a slot (a directory and two files) costs
//! ~1.6 ms on the disk-backed root filesystem and ~0.04 ms on tmpfs, per VM — while the
//! snapshots, which should survive a reboot, go to a disk-backed directory.
//!
//! # Why slots plus symlinks
//! A running VMM holds its API socket and its vsock socket open by path, and for
//! guest-initiated vsock connections it connects to `<uds_path>_<port>` — paths fixed when the
//! process was configured. Renaming the directory those sockets live in would break them. So a
//! VMM lives in a slot directory that never moves, and its id is a symlink: a rename is one
//! `rename(2)` of the symlink (atomic: the old name disappears as the new one appears) and the
//! VMM never notices. Slots also exist before a VM has an id (a pre-spawned spare process is a
//! slot with no symlink yet). Slot numbers are never reused within a provider's lifetime, so a
//! late cleanup of a dead process's slot can never hit a newer process's files.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, symlink};
use std::path::{Path, PathBuf};

use ember_core::spec::MAX_UDS_PATH_LEN;
use ember_core::{SnapshotId, VmId};
use nix::fcntl::{Flock, FlockArg};

/// File name of the API socket in a slot.
pub const API_SOCK: &str = "api.sock";
/// File name of the vsock socket in a slot.
pub const VSOCK_SOCK: &str = "vsock.sock";
/// File name of the console log (the VMM's stdout) in a slot.
pub const CONSOLE_LOG: &str = "console.log";
/// File name of the VMM's own log (its stderr) in a slot.
pub const VMM_LOG: &str = "vmm.log";

/// Longest `_<port>` suffix a guest-initiated vsock socket adds.
const PORT_SUFFIX: usize = "_4294967295".len();
/// Digits reserved for slot numbers when checking socket path lengths.
const SLOT_DIGITS: usize = 10;

/// Why the root directory cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LayoutError {
    /// Creating or cleaning a directory failed.
    #[error("cannot prepare {path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Another provider holds the root's lock.
    #[error("{path} is in use by another provider (its .lock is held)")]
    Busy {
        /// The root.
        path: PathBuf,
    },
    /// Socket paths under the root would not fit a Unix socket address.
    #[error(
        "root {path} is {len} bytes long; socket paths under it need it to be at most {max} bytes"
    )]
    TooLong {
        /// The root.
        path: PathBuf,
        /// Its length.
        len: usize,
        /// The longest root that works.
        max: usize,
    },
}

/// The files of one slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotPaths {
    /// The slot number.
    pub slot: u64,
    /// `<root>/slots/<n>`.
    pub dir: PathBuf,
    /// The API socket.
    pub api_sock: PathBuf,
    /// The vsock socket (host-initiated connections; guest-initiated ones go to
    /// `<vsock>_<port>`).
    pub vsock: PathBuf,
    /// The guest console (the VMM's stdout).
    pub console_log: PathBuf,
    /// The VMM's log (its stderr).
    pub vmm_log: PathBuf,
}

/// The provider's root directory, locked for its exclusive use.
#[derive(Debug)]
pub struct Layout {
    root: PathBuf,
    slots: PathBuf,
    vms: PathBuf,
    snapshots: PathBuf,
    /// The snapshots directory is outside the root (it is kept at shutdown, and locked too).
    external_snapshots: Option<(PathBuf, Flock<fs::File>)>,
    lock_path: PathBuf,
    /// The provider created the root, so it removes it again once empty.
    created_root: bool,
    _lock: Flock<fs::File>,
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> LayoutError + '_ {
    move |source| LayoutError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn mkdir(path: &Path) -> Result<(), LayoutError> {
    match fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        Err(e) => Err(io_at(path)(e)),
    }
}

/// Removes everything inside `dir` (leftovers of an earlier provider); returns how many
/// entries there were.
fn clear_dir(dir: &Path) -> Result<usize, LayoutError> {
    let mut n = 0;
    for entry in fs::read_dir(dir).map_err(io_at(dir))? {
        let entry = entry.map_err(io_at(dir))?;
        let path = entry.path();
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        let r = if is_dir {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        r.map_err(io_at(&path))?;
        n += 1;
    }
    Ok(n)
}

/// Takes the exclusive lock of a directory (`<dir>/.lock`).
fn lock_dir(dir: &Path) -> Result<Flock<fs::File>, LayoutError> {
    let lock_path = dir.join(".lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_at(&lock_path))?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|_| LayoutError::Busy {
        path: dir.to_path_buf(),
    })
}

/// What to do with the slots and VM links an earlier provider left under the root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leftovers {
    /// Remove them: the earlier provider's VMMs died with it (parent-death signal).
    Clear,
    /// Keep them: the earlier provider's VMMs may still run (detached), for the new provider to
    /// re-adopt or clean up.
    Keep,
}

impl Layout {
    /// Creates (or reopens) `root`, takes its lock, and clears or keeps what an earlier provider
    /// left in `slots/` and `vms/` ([`Leftovers`]). Snapshots are kept: in `<root>/snapshots`,
    /// or in `snapshots` when given (created if missing and locked as well).
    pub fn open(
        root: &Path,
        snapshots: Option<&Path>,
        leftovers: Leftovers,
    ) -> Result<Layout, LayoutError> {
        let absolute = |p: &Path| -> Result<PathBuf, LayoutError> {
            if p.is_absolute() {
                Ok(p.to_path_buf())
            } else {
                Ok(std::env::current_dir().map_err(io_at(p))?.join(p))
            }
        };
        let root = absolute(root)?;
        let budget = "/slots/".len() + SLOT_DIGITS + 1 + VSOCK_SOCK.len() + PORT_SUFFIX;
        let max = MAX_UDS_PATH_LEN - budget;
        let len = root.as_os_str().len();
        if len > max {
            return Err(LayoutError::TooLong {
                path: root,
                len,
                max,
            });
        }
        let created_root = !root.exists();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&root)
            .map_err(io_at(&root))?;
        let lock = lock_dir(&root)?;
        let external_snapshots = match snapshots {
            Some(dir) => {
                let dir = absolute(dir)?;
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&dir)
                    .map_err(io_at(&dir))?;
                let lock = lock_dir(&dir)?;
                Some((dir, lock))
            }
            None => None,
        };
        let layout = Layout {
            slots: root.join("slots"),
            vms: root.join("vms"),
            snapshots: external_snapshots
                .as_ref()
                .map_or_else(|| root.join("snapshots"), |(d, _)| d.clone()),
            external_snapshots,
            lock_path: root.join(".lock"),
            root,
            created_root,
            _lock: lock,
        };
        for dir in [&layout.slots, &layout.vms, &layout.snapshots] {
            mkdir(dir)?;
        }
        if leftovers == Leftovers::Clear {
            layout.clear_jails().map_err(io_at(&layout.jails_dir()))?;
            let stale = clear_dir(&layout.vms)? + clear_dir(&layout.slots)?;
            if stale > 0 {
                tracing::warn!(root = %layout.root.display(), stale,
                    "removed VM files an earlier provider left behind");
            }
        }
        Ok(layout)
    }

    /// The slot numbers that have a directory now.
    pub fn slot_numbers(&self) -> io::Result<Vec<u64>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.slots)? {
            let entry = entry?;
            if let Some(n) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
                out.push(n);
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// The VM links now under `vms/`, with the slot each points to (`None` for anything that
    /// is not a link to a slot).
    pub fn vm_links(&self) -> io::Result<Vec<(PathBuf, Option<u64>)>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.vms)? {
            let path = entry?.path();
            let slot = fs::read_link(&path).ok().and_then(|t| {
                t.strip_prefix("../slots")
                    .ok()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.parse().ok())
            });
            out.push((path, slot));
        }
        out.sort();
        Ok(out)
    }

    /// Removes one entry of `vms/` (a link or anything else found there).
    pub fn remove_vm_entry(&self, path: &Path) -> io::Result<()> {
        let r = if path.is_dir() && !path.is_symlink() {
            fs::remove_dir_all(path)
        } else {
            fs::remove_file(path)
        };
        match r {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The snapshots directory (`<root>/snapshots` unless configured elsewhere).
    pub fn snapshots_dir(&self) -> &Path {
        &self.snapshots
    }

    /// `<root>/slots`.
    pub fn slots_dir(&self) -> &Path {
        &self.slots
    }

    /// `<root>/vms`.
    pub fn vms_dir(&self) -> &Path {
        &self.vms
    }

    /// The paths of slot `n` (whether or not it exists).
    pub fn slot(&self, n: u64) -> SlotPaths {
        let dir = self.slots.join(n.to_string());
        SlotPaths {
            slot: n,
            api_sock: dir.join(API_SOCK),
            vsock: dir.join(VSOCK_SOCK),
            console_log: dir.join(CONSOLE_LOG),
            vmm_log: dir.join(VMM_LOG),
            dir,
        }
    }

    /// Creates slot `n`'s directory (it must not exist).
    pub fn create_slot(&self, n: u64) -> io::Result<SlotPaths> {
        let paths = self.slot(n);
        fs::DirBuilder::new().mode(0o700).create(&paths.dir)?;
        Ok(paths)
    }

    /// Removes slot `n` and everything in it, and its jail root (mounts first) if it has one;
    /// a slot already gone is fine.
    pub fn remove_slot(&self, n: u64) -> io::Result<()> {
        crate::jail::remove_jail_dir(&self.jails_dir().join(n.to_string()))?;
        match fs::remove_dir_all(self.slots.join(n.to_string())) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// `<root>/jails`: the jail roots of jailed VMMs.
    pub fn jails_dir(&self) -> PathBuf {
        self.root.join("jails")
    }

    /// Removes every jail root (unmounting what is under them) and the jails directory itself.
    fn clear_jails(&self) -> io::Result<()> {
        crate::jail::remove_jail_dir(&self.jails_dir())
    }

    /// `<root>/vms/<id>`.
    pub fn vm_link(&self, id: &VmId) -> PathBuf {
        self.vms.join(id.as_str())
    }

    /// Creates the symlink `vms/<id> -> ../slots/<n>`; fails if the name exists.
    pub fn link_vm(&self, id: &VmId, slot: u64) -> io::Result<()> {
        symlink(
            Path::new("../slots").join(slot.to_string()),
            self.vm_link(id),
        )
    }

    /// Renames the symlink `vms/<from>` to `vms/<to>` with one `rename(2)`.
    pub fn rename_link(&self, from: &VmId, to: &VmId) -> io::Result<()> {
        fs::rename(self.vm_link(from), self.vm_link(to))
    }

    /// Removes the symlink `vms/<id>`; one already gone is fine.
    pub fn unlink_vm(&self, id: &VmId) -> io::Result<()> {
        match fs::remove_file(self.vm_link(id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// `<snapshots>/<id>`.
    pub fn snapshot_dir(&self, id: &SnapshotId) -> PathBuf {
        self.snapshots.join(id.as_str())
    }

    /// Removes `slots/`, `vms/` and the lock file, `snapshots/` if it is empty, and the root
    /// if this provider created it and it is now empty: what a provider leaves after shutdown is
    /// its snapshots and nothing else.
    pub fn remove_runtime_files(&self) -> io::Result<()> {
        self.clear_jails()?;
        for dir in [&self.vms, &self.slots] {
            match fs::remove_dir_all(dir) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        self.remove_lock_files()
    }

    /// Removes the lock files (and an empty snapshots directory or root) but keeps every slot
    /// and link: what a detached provider leaves for the next one.
    pub fn remove_lock_files(&self) -> io::Result<()> {
        match &self.external_snapshots {
            // Only the lock: the directory is the caller's.
            Some((dir, _)) => {
                let _ = fs::remove_file(dir.join(".lock"));
            }
            None => {
                let _ = fs::remove_dir(&self.snapshots); // only succeeds when empty
            }
        }
        match fs::remove_file(&self.lock_path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        if self.created_root {
            let _ = fs::remove_dir(&self.root); // only succeeds when empty
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_links_and_rename() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::open(&dir.path().join("r"), None, Leftovers::Clear).unwrap();
        let p = layout.create_slot(7).unwrap();
        fs::write(&p.console_log, b"hello").unwrap();
        let a = VmId::new("a").unwrap();
        let b = VmId::new("b").unwrap();
        layout.link_vm(&a, 7).unwrap();
        assert!(layout.link_vm(&a, 7).is_err());
        assert_eq!(
            fs::read(layout.vm_link(&a).join(CONSOLE_LOG)).unwrap(),
            b"hello"
        );
        layout.rename_link(&a, &b).unwrap();
        assert!(!layout.vm_link(&a).exists());
        assert_eq!(
            fs::read(layout.vm_link(&b).join(CONSOLE_LOG)).unwrap(),
            b"hello"
        );
        layout.unlink_vm(&b).unwrap();
        layout.unlink_vm(&b).unwrap();
        layout.remove_slot(7).unwrap();
        layout.remove_slot(7).unwrap();
        layout.remove_runtime_files().unwrap();
        assert!(
            !dir.path().join("r").exists(),
            "a root the provider made is removed"
        );
    }

    #[test]
    fn one_provider_per_root_and_stale_files_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("r");
        let first = Layout::open(&root, None, Leftovers::Clear).unwrap();
        first.create_slot(1).unwrap();
        assert!(matches!(
            Layout::open(&root, None, Leftovers::Clear).unwrap_err(),
            LayoutError::Busy { .. }
        ));
        drop(first);
        let second = Layout::open(&root, None, Leftovers::Clear).unwrap();
        assert_eq!(fs::read_dir(second.slots_dir()).unwrap().count(), 0);
    }

    #[test]
    fn kept_leftovers_are_listed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("r");
        let first = Layout::open(&root, None, Leftovers::Keep).unwrap();
        first.create_slot(4).unwrap();
        first.create_slot(9).unwrap();
        first.link_vm(&VmId::new("a").unwrap(), 9).unwrap();
        fs::write(first.vms_dir().join("junk"), b"x").unwrap();
        first.remove_lock_files().unwrap();
        drop(first);
        let second = Layout::open(&root, None, Leftovers::Keep).unwrap();
        assert_eq!(second.slot_numbers().unwrap(), vec![4, 9]);
        let links = second.vm_links().unwrap();
        assert_eq!(links.len(), 2);
        assert!(links.contains(&(second.vms_dir().join("a"), Some(9))));
        assert!(links.contains(&(second.vms_dir().join("junk"), None)));
        second
            .remove_vm_entry(&second.vms_dir().join("junk"))
            .unwrap();
        assert_eq!(second.vm_links().unwrap().len(), 1);
    }

    #[test]
    fn snapshots_can_live_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        let snaps = dir.path().join("snaps");
        let layout = Layout::open(&dir.path().join("r"), Some(&snaps), Leftovers::Clear).unwrap();
        assert_eq!(layout.snapshots_dir(), snaps);
        assert!(!dir.path().join("r/snapshots").exists());
        assert!(matches!(
            Layout::open(&dir.path().join("r2"), Some(&snaps), Leftovers::Clear).unwrap_err(),
            LayoutError::Busy { .. }
        ));
        fs::create_dir(snaps.join("kept")).unwrap();
        layout.remove_runtime_files().unwrap();
        assert!(!dir.path().join("r").exists());
        assert!(snaps.join("kept").is_dir());
        assert!(!snaps.join(".lock").exists());
    }

    #[test]
    fn long_roots_are_refused() {
        let long = PathBuf::from("/tmp").join("x".repeat(90));
        let err = Layout::open(&long, None, Leftovers::Clear).unwrap_err();
        assert!(matches!(err, LayoutError::TooLong { .. }), "{err}");
    }
}
