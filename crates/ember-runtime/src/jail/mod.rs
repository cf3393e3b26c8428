//! Jailed VMMs: every VMM process starts through `ember-jailer` (new mount, pid, ipc, uts and
//! network namespaces; `pivot_root` into its own directory; its own uid; no capabilities;
//! `no_new_privs`; a cgroup with limits), and the files it needs are made visible inside the
//! jail as they are needed.
//!
//! # Paths stay the same inside and outside
//! The jail root of slot `n` is `<root>/jails/<n>/`, an empty skeleton. The slot directory
//! (`<root>/slots/<n>`: sockets, logs) is bound into it *at its own host path*, and so is every
//! file the VMM is later given (a kernel, a snapshot's files, a drive). So a path in an API
//! call means the same file on both sides: nothing in the provider translates paths, and the
//! VMM's command line still names its slot (which is how a new provider finds the VMMs an
//! earlier one left). The VMM sees those paths and nothing else of the host.
//!
//! # Files given after the VMM started
//! A spare VMM is started before anyone knows which snapshot it will restore.
//! [`Jails::expose`] makes the mount point on the host side (its parent directories and an
//! empty file or directory under `<root>/jails/<n>/`, the directory the VMM sees as `/`), then
//! asks the provider's *mounting* resident jailer to bind the host file there inside the VMM's
//! own mount namespace (`ember_jailer::mounts::inject`: `open_tree` here, `setns` and
//! `move_mount` there), read-only unless the VMM must write. The host's mount namespace gets no
//! mount per VM: every new jail copies the host's mounts and detaches them after
//! `pivot_root`, so mounts that grew with the number of live VMs made every start slower.
//! The binds die with the VMM's namespace; removing a slot only removes files
//! ([`remove_jail_dir`], in [`cleanup`], still unmounts anything it finds first).
//! `<root>/jails` stays a shared mount for the one-shot jailer's way (a bind made on the host
//! under a jail's directory appears inside it). [`spawn`] starts a VMM through the jailer.
//!
//! # Identity and limits
//! uid = `uid_base + slot % uid_count` (slot numbers are not reused by a provider, so live VMs
//! of one provider differ; the range must not overlap real users). Every jailed VMM shares
//! the gid `gid`: files that many VMMs read (a template's snapshot) are `root:<gid>` mode 0640,
//! readable by VMMs and by no other unprivileged user on the host. The cgroup is
//! `ember-<tag>/slot<n>` (`tag` from the root's path, so two providers side by side never share
//! one) with the configured limits; it is removed when the process has been reaped.
//!
//! # One resident jailer
//! VMMs are started by the provider's resident jailer (`ember-jailer --serve`, `resident`),
//! started on the spawner thread: it builds each jail and clones the VMM as *its own sibling*,
//! so every VMM is this process's child, watched through a pidfd and reaped here. Tied (the
//! CLI's runs) the VMM carries a parent-death SIGKILL that follows the spawner thread;
//! detached (the daemon's) it runs in a session of its own and outlives us. The empty network
//! namespace and the cgroup a VMM gets are recycled from VMMs that have exited (`recycle`).

use std::ffi::OsString;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use ember_jailer::cgroup::{self, Version};
use ember_jailer::{Bind, Limits};
use nix::mount::{MsFlags, mount};

mod cleanup;
mod recycle;
mod resident;
pub(crate) mod spawn;

use cleanup::mount_points;
pub use cleanup::{remove_jail_dir, remove_leftovers};

/// Where cgroup trees are mounted on a standard host.
pub const CGROUP_ROOT: &str = cgroup::DEFAULT_ROOT;

/// How the provider jails its VMMs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailSettings {
    /// The `ember-jailer` binary.
    pub jailer: PathBuf,
    /// First uid handed to VMMs.
    pub uid_base: u32,
    /// How many uids, from `uid_base`, VMMs may use.
    pub uid_count: u32,
    /// The gid every jailed VMM runs as.
    pub gid: u32,
    /// The cgroup limits of each VMM (CPU weight and quota, memory, pids).
    pub limits: Limits,
    /// Where the cgroup trees are mounted (`/sys/fs/cgroup`).
    pub cgroup_root: PathBuf,
    /// Size each VM's memory limit to it: guest memory plus this many bytes (the VMM's own
    /// memory), set when the VM is made (boot or restore); it replaces `limits.memory_max` for
    /// that VM. `None`: the provider-wide `limits.memory_max` only. Files the VMM writes (a
    /// snapshot's memory file) are charged to its memory cgroup as they are written, and on a
    /// tmpfs they stay charged: leave room for them.
    pub memory_overhead: Option<u64>,
}

impl JailSettings {
    /// Defaults: uids 3,000,000 and up (a million of them), gid 3,000,000, pids max 64, no other
    /// limits, cgroups under `/sys/fs/cgroup`.
    pub fn new(jailer: impl Into<PathBuf>) -> Self {
        Self {
            jailer: jailer.into(),
            uid_base: 3_000_000,
            uid_count: 1_000_000,
            gid: 3_000_000,
            limits: Limits {
                pids_max: Some(64),
                ..Limits::default()
            },
            cgroup_root: PathBuf::from(CGROUP_ROOT),
            memory_overhead: None,
        }
    }
}

/// Why jailing cannot be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JailSetupError {
    /// The jailer binary is missing.
    #[error("the jailer binary {0} does not exist")]
    MissingJailer(PathBuf),
    /// A setting is out of range.
    #[error("jail setting {field}: {why}")]
    Invalid {
        /// The setting.
        field: &'static str,
        /// What is wrong.
        why: String,
    },
    /// No usable cgroup tree.
    #[error(transparent)]
    Cgroup(#[from] cgroup::CgroupError),
    /// The VMM's libraries could not be listed.
    #[error(transparent)]
    Libraries(#[from] ember_jailer::libraries::LibraryError),
    /// A directory or mount could not be prepared.
    #[error("cannot prepare {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// One jailed VMM to start (see [`Jails::command`]).
#[derive(Debug, Clone, Copy)]
pub struct JailedStart<'a> {
    /// Its slot.
    pub slot: u64,
    /// The slot's directory (bound into the jail at its own path).
    pub slot_dir: &'a Path,
    /// The VMM binary.
    pub vmm: &'a Path,
    /// The VMM's arguments.
    pub vmm_args: &'a [OsString],
    /// Tied to this process (a parent-death signal; detached otherwise, in its own session).
    pub tied: bool,
    /// The network namespace to join (a new, empty one if `None`).
    pub netns: Option<&'a Path>,
}

/// A provider's jailing: settings plus what was worked out once (libraries, cgroup version).
#[derive(Debug)]
pub struct Jails {
    settings: JailSettings,
    jailer: PathBuf,
    dir: PathBuf,
    parent_cgroup: String,
    version: Version,
    libraries: Vec<Bind>,
    recycler: recycle::Recycler,
    /// Starts VMMs (on the spawner thread: see `resident`).
    resident: std::sync::Mutex<Option<resident::Resident>>,
    /// Binds files into running VMMs' mount namespaces.
    mounter: std::sync::Mutex<Option<resident::Resident>>,
    /// The VMM of each slot that has one (for binds into its mount namespace).
    pids: std::sync::Mutex<std::collections::HashMap<u64, u32>>,
}

/// Why the resident jailer did not start a VMM.
#[derive(Debug, thiserror::Error)]
pub enum ResidentError {
    /// Talking to it failed (it is replaced at the next start).
    #[error("the resident jailer: {0}")]
    Io(io::Error),
    /// It refused or failed: why.
    #[error("{0}")]
    Refused(String),
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> JailSetupError + '_ {
    move |source| JailSetupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A short tag naming a provider root (FNV-1a of its path), for its cgroup.
fn root_tag(root: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in root.as_os_str().as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{:08x}", h as u32)
}

impl Jails {
    /// Prepares jailing for the provider rooted at `root` running `vmm`: checks the settings,
    /// lists the VMM's shared libraries once, and makes `<root>/jails` a shared mount.
    pub fn prepare(
        settings: JailSettings,
        root: &Path,
        vmm: &Path,
    ) -> Result<Jails, JailSetupError> {
        if !settings.jailer.is_file() {
            return Err(JailSetupError::MissingJailer(settings.jailer.clone()));
        }
        let jailer = std::path::absolute(&settings.jailer)
            .map_err(|_| JailSetupError::MissingJailer(settings.jailer.clone()))?;
        if settings.uid_base == 0 || settings.uid_count == 0 {
            return Err(JailSetupError::Invalid {
                field: "uid_base/uid_count",
                why: "uids start above 0 and the range is not empty".into(),
            });
        }
        if settings.uid_base.checked_add(settings.uid_count).is_none() {
            return Err(JailSetupError::Invalid {
                field: "uid_count",
                why: format!(
                    "{} + {} overflows a uid",
                    settings.uid_base, settings.uid_count
                ),
            });
        }
        if settings.gid == 0 {
            return Err(JailSetupError::Invalid {
                field: "gid",
                why: "a jailed VMM never runs as gid 0".into(),
            });
        }
        settings.limits.validate()?;
        let version = cgroup::detect(&settings.cgroup_root)?;
        let libraries = ember_jailer::libraries::binds_for(vmm)?;
        let dir = root.join("jails");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&dir)
            .map_err(io_at(&dir))?;
        let is_mount = mount_points()
            .map_err(io_at(&dir))?
            .iter()
            .any(|m| m == &dir);
        if !is_mount {
            mount(
                Some(&dir),
                &dir,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| io_at(&dir)(e.into()))?;
        }
        mount(
            None::<&str>,
            &dir,
            None::<&str>,
            MsFlags::MS_SHARED,
            None::<&str>,
        )
        .map_err(|e| io_at(&dir)(e.into()))?;
        let jails = Jails {
            parent_cgroup: format!("ember-{}", root_tag(root)),
            settings,
            jailer,
            dir,
            version,
            libraries,
            recycler: recycle::Recycler::default(),
            resident: std::sync::Mutex::new(None),
            mounter: std::sync::Mutex::new(None),
            pids: std::sync::Mutex::new(std::collections::HashMap::new()),
        };
        recycle::remove_stale_free_cgroups(&jails.cgroup_place());
        Ok(jails)
    }

    fn cgroup_place(&self) -> recycle::CgroupPlace<'_> {
        recycle::CgroupPlace {
            root: &self.settings.cgroup_root,
            version: self.version,
            parent: &self.parent_cgroup,
        }
    }

    /// Gets slot `slot`'s jail ready for its VMM's start (see `recycle`): names a free cgroup
    /// after the slot, and, unless the VMM joins a sandbox's network (`own_netns` false),
    /// returns the empty network namespace it joins (a free one or a new one).
    pub(crate) fn claim(&self, slot: u64, own_netns: bool) -> io::Result<Option<PathBuf>> {
        self.recycler
            .claim_cgroup(&self.cgroup_place(), &Self::cgroup_id(slot));
        if own_netns {
            self.recycler
                .claim_netns(slot, &self.cgroup_place())
                .map(Some)
        } else {
            Ok(None)
        }
    }

    /// Slot `slot`'s VMM is process `pid` (started or adopted): files it is given later are
    /// bound into its mount namespace.
    pub fn note_pid(&self, slot: u64, pid: u32) {
        self.pids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(slot, pid);
    }

    fn pid_of(&self, slot: u64) -> io::Result<u32> {
        self.pids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&slot)
            .copied()
            .ok_or_else(|| io::Error::other(format!("slot {slot} has no jailed VMM")))
    }

    /// Asks the mounter (started if needed, and once more if it is gone) for a bind or unbind.
    fn mount_op(&self, op: &ember_jailer::serve::Op) -> io::Result<()> {
        let mut guard = self.mounter.lock().unwrap_or_else(|p| p.into_inner());
        for attempt in 0..2 {
            let mounter = match guard.as_mut() {
                Some(m) => m,
                None => guard.insert(resident::Resident::start(&self.jailer)?),
            };
            match mounter.ask(op) {
                Ok(ember_jailer::serve::Reply::Done) => return Ok(()),
                Ok(ember_jailer::serve::Reply::Failed { error, .. }) => {
                    return Err(io::Error::other(error));
                }
                Ok(other) => return Err(io::Error::other(format!("unexpected answer {other:?}"))),
                Err(e) => {
                    *guard = None;
                    if attempt == 1 {
                        return Err(e);
                    }
                }
            }
        }
        Err(io::Error::other("the mounting jailer is unusable"))
    }

    /// Slot `slot`'s VMM (or its tied jailer) has exited: once nothing of it is left in its
    /// cgroup, its namespace and cgroup are kept for the next VMM, or the cgroup is removed
    /// (see `recycle`).
    pub fn release_slot(&self, slot: u64) {
        self.pids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&slot);
        self.recycler
            .release(slot, &self.cgroup_place(), &Self::cgroup_id(slot));
    }

    /// The jailer binary (absolute).
    pub fn jailer(&self) -> &Path {
        &self.jailer
    }

    /// Slot `n`'s jail root.
    pub fn root_of(&self, slot: u64) -> PathBuf {
        self.dir.join(slot.to_string())
    }

    /// The uid of slot `n`'s VMM.
    pub fn uid_of(&self, slot: u64) -> u32 {
        self.settings.uid_base + (slot % u64::from(self.settings.uid_count)) as u32
    }

    /// The gid every jailed VMM runs as.
    pub fn gid(&self) -> u32 {
        self.settings.gid
    }

    fn cgroup_id(slot: u64) -> String {
        format!("slot{slot}")
    }

    /// Creates slot `n`'s jail root and hands the slot directory to the VMM's uid.
    pub fn prepare_slot(&self, slot: u64, slot_dir: &Path) -> io::Result<()> {
        let root = self.root_of(slot);
        std::fs::DirBuilder::new().mode(0o755).create(&root)?;
        let (uid, gid) = (self.uid_of(slot), self.settings.gid);
        nix::unistd::chown(
            slot_dir,
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
        )?;
        Ok(())
    }

    /// The jail that starts `start.vmm` with its arguments in its slot (whose directory is
    /// bound at its own path), tied to this process or not, in `start.netns` (a new, empty one
    /// if `None`). Arguments must be UTF-8 (they travel as JSON).
    pub fn config(&self, start: &JailedStart<'_>) -> io::Result<ember_jailer::JailConfig> {
        let JailedStart {
            slot,
            slot_dir,
            vmm,
            vmm_args,
            tied,
            netns,
        } = *start;
        let mut binds = vec![Bind {
            source: slot_dir.to_path_buf(),
            target: slot_dir.to_path_buf(),
            read_only: false,
        }];
        binds.extend(self.libraries.iter().map(|lib| Bind {
            read_only: true,
            ..lib.clone()
        }));
        let args = vmm_args
            .iter()
            .map(|a| {
                a.clone().into_string().map_err(|a| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("VMM argument {a:?} is not UTF-8"),
                    )
                })
            })
            .collect::<io::Result<Vec<String>>>()?;
        Ok(ember_jailer::JailConfig {
            id: Self::cgroup_id(slot),
            root: self.root_of(slot),
            exec_file: vmm.to_path_buf(),
            uid: self.uid_of(slot),
            gid: self.settings.gid,
            binds,
            netns: netns.map(Path::to_path_buf),
            limits: self.settings.limits,
            parent_cgroup: self.parent_cgroup.clone(),
            args,
            tie_to: tied.then(std::process::id),
            scan_libraries: false,
        })
    }

    /// Starts a VMM in the jail `config` through the provider's resident jailer (started on
    /// the first call: call from the spawner thread), with `stdio`, in a session of its own
    /// when `new_session`. Returns its pid: this process's child.
    pub(crate) fn start_resident(
        &self,
        config: ember_jailer::JailConfig,
        stdio: ember_jailer::jail::Stdio,
        new_session: bool,
    ) -> Result<u32, ResidentError> {
        let request = ember_jailer::serve::Op::Start(Box::new(ember_jailer::serve::Request {
            config,
            cgroup_root: self.settings.cgroup_root.clone(),
            stdio,
            new_session,
        }));
        let mut guard = self.resident.lock().unwrap_or_else(|p| p.into_inner());
        let resident = match guard.as_mut() {
            Some(r) => r,
            None => {
                guard.insert(resident::Resident::start(&self.jailer).map_err(ResidentError::Io)?)
            }
        };
        match resident.ask(&request) {
            Ok(ember_jailer::serve::Reply::Started { pid }) => Ok(pid),
            Ok(ember_jailer::serve::Reply::Failed { pid, error }) => {
                if let Some(pid) = pid {
                    // It exited before its exec; it is our child (a sibling of the jailer).
                    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid as i32), None);
                }
                Err(ResidentError::Refused(error))
            }
            Ok(ember_jailer::serve::Reply::Done) => Err(ResidentError::Refused(
                "the resident jailer answered a start with \"done\"".into(),
            )),
            Err(e) => {
                // Unusable: the next start begins a new one.
                *guard = None;
                Err(ResidentError::Io(e))
            }
        }
    }

    /// Makes host file or directory `path` visible inside slot `n`'s jail at the same path,
    /// read-only unless `writable`. Already visible: nothing to do.
    pub fn expose(&self, slot: u64, path: &Path, writable: bool) -> io::Result<()> {
        if !path.is_absolute()
            || path
                .components()
                .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not an absolute, normal path", path.display()),
            ));
        }
        let meta = std::fs::metadata(path)?;
        if writable && meta.is_file() {
            self.check_writable(slot, path, &meta)?;
        }
        let root = self.root_of(slot);
        let target = root.join(path.strip_prefix("/").unwrap_or(path));
        // The VMM owns its jail root: never follow a link it may have left there while
        // making the mount point as root on the host.
        ember_jailer::mounts::no_symlinks(&root, &target)
            .map_err(|e| io::Error::other(e.to_string()))?;
        if target.exists() {
            return Ok(());
        }
        if let Some(parent) = target.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)?;
        }
        if meta.is_dir() {
            std::fs::DirBuilder::new().mode(0o755).create(&target)?;
        } else {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&target)?;
        }
        // Bound in the VMM's own mount namespace (see `ember_jailer::mounts::inject`): the
        // host's namespace gets no mount per VM, which every new jail would copy and detach.
        let mounted = self.pid_of(slot).and_then(|pid| {
            self.mount_op(&ember_jailer::serve::Op::Expose {
                pid,
                source: path.to_path_buf(),
                target: path.to_path_buf(),
                read_only: !writable,
            })
        });
        if let Err(e) = mounted {
            // Never leave an empty mount point behind: the next expose would take it for done.
            let _ = self.hide(slot, path);
            return Err(e);
        }
        Ok(())
    }

    /// A file the VMM must write (a read-write drive) must be writable by its uid or by the
    /// VMs' group; otherwise the error says how to fix it (the VMM would fail with a bare
    /// "permission denied" otherwise).
    fn check_writable(&self, slot: u64, path: &Path, meta: &std::fs::Metadata) -> io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let (uid, gid, mode) = (self.uid_of(slot), self.settings.gid, meta.mode());
        let ok = (meta.uid() == uid && mode & 0o200 != 0)
            || (meta.gid() == gid && mode & 0o020 != 0)
            || mode & 0o002 != 0;
        if ok {
            return Ok(());
        }
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is attached read-write but the jailed VMM (uid {uid}, gid {gid}) cannot write \
                 it: make it writable by group {gid} (chgrp {gid} and chmod g+w), or attach it \
                 read-only",
                path.display()
            ),
        ))
    }

    /// Undoes [`expose`](Self::expose) of `path` in slot `n` (a missing one is fine).
    pub fn hide(&self, slot: u64, path: &Path) -> io::Result<()> {
        let target = self
            .root_of(slot)
            .join(path.strip_prefix("/").unwrap_or(path));
        if let Ok(pid) = self.pid_of(slot) {
            self.mount_op(&ember_jailer::serve::Op::Hide {
                pid,
                target: path.to_path_buf(),
            })?;
        }
        let _ = std::fs::remove_file(&target).or_else(|_| std::fs::remove_dir(&target));
        Ok(())
    }

    /// Lets every jailed VMM read `path` (a snapshot file written by one of them): `root:<gid>`,
    /// mode 0640 (0750 for a directory).
    pub fn share_read_only(&self, path: &Path) -> io::Result<()> {
        let meta = std::fs::metadata(path)?;
        nix::unistd::chown(
            path,
            Some(nix::unistd::Uid::from_raw(0)),
            Some(nix::unistd::Gid::from_raw(self.settings.gid)),
        )?;
        let mode = if meta.is_dir() { 0o750 } else { 0o640 };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
    }

    /// Lets slot `n`'s VMM write into directory `dir` (a snapshot being taken).
    pub fn lend_dir(&self, slot: u64, dir: &Path) -> io::Result<()> {
        nix::unistd::chown(
            dir,
            Some(nix::unistd::Uid::from_raw(self.uid_of(slot))),
            Some(nix::unistd::Gid::from_raw(self.settings.gid)),
        )?;
        Ok(())
    }

    /// Sizes slot `slot`'s memory limit to a guest of `guest_mib` MiB (see
    /// [`JailSettings::memory_overhead`]); nothing without an overhead setting.
    pub fn size_memory(&self, slot: u64, guest_mib: u32) -> Result<(), cgroup::CgroupError> {
        let Some(overhead) = self.settings.memory_overhead else {
            return Ok(());
        };
        let bytes = (u64::from(guest_mib) << 20).saturating_add(overhead);
        let dirs = cgroup::dirs(
            &self.settings.cgroup_root,
            self.version,
            &self.parent_cgroup,
            &Self::cgroup_id(slot),
        );
        cgroup::set_memory_max(self.version, &dirs, bytes)
    }

    /// Removes slot `n`'s cgroup, waiting up to ~100 ms for a dying process to leave it.
    pub fn remove_cgroup(&self, slot: u64) {
        let id = Self::cgroup_id(slot);
        let mut last = None;
        for _ in 0..50 {
            match cgroup::remove(
                &self.settings.cgroup_root,
                self.version,
                &self.parent_cgroup,
                &id,
            ) {
                Ok(()) => return,
                Err(e) => last = Some(e),
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        if let Some(e) = last {
            tracing::warn!(slot, error = %e, "cannot remove a VMM's cgroup");
        }
    }

    /// The slots that have a cgroup under this provider's parent cgroup.
    pub fn cgroup_slots(&self) -> Vec<u64> {
        let dirs = cgroup::dirs(
            &self.settings.cgroup_root,
            self.version,
            &self.parent_cgroup,
            "x",
        );
        let Some(parent) = dirs.first().and_then(|d| d.parent()) else {
            return Vec::new();
        };
        let Ok(entries) = std::fs::read_dir(parent) else {
            return Vec::new();
        };
        let mut out: Vec<u64> = entries
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_prefix("slot"))
                    .and_then(|n| n.parse().ok())
            })
            .collect();
        out.sort_unstable();
        out
    }

    /// Removes the cgroups kept for reuse and drops the kept network namespaces (the provider
    /// is letting go of its VMMs; those still running keep their own).
    pub fn drop_recycled(&self) {
        self.recycler.clear(&self.cgroup_place());
    }

    /// Removes the provider's parent cgroups if no VMM cgroup is left under them.
    pub fn remove_parent_cgroups_if_empty(&self) {
        for dir in cgroup::dirs(
            &self.settings.cgroup_root,
            self.version,
            &self.parent_cgroup,
            "x",
        ) {
            if let Some(parent) = dir.parent() {
                let _ = std::fs::remove_dir(parent);
            }
        }
    }

    /// Removes every VMM cgroup left (their processes are gone: a removal that raced with a
    /// dying process is retried here), the provider's own parent cgroups, and unmounts
    /// `<root>/jails`. Only when no VMM of the provider is left.
    pub fn tear_down(&self) {
        self.recycler.clear(&self.cgroup_place());
        for slot in self.cgroup_slots() {
            self.remove_cgroup(slot);
        }
        self.remove_parent_cgroups_if_empty();
        if let Err(e) = remove_jail_dir(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot remove the jails directory");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_differ_per_root_and_are_stable() {
        assert_eq!(
            root_tag(Path::new("/run/ember")),
            root_tag(Path::new("/run/ember"))
        );
        assert_ne!(
            root_tag(Path::new("/run/ember")),
            root_tag(Path::new("/run/ember2"))
        );
        assert_eq!(root_tag(Path::new("/x")).len(), 8);
    }
}
