//! The snapshot catalog: which snapshots this provider can restore, and their files under
//! `<snapshots>/<id>/{state, mem}`.
//!
//! A snapshot belongs to its stack (template), not to the VM it was taken from: destroying that
//! VM never touches it; only [`SnapshotStore::delete`] does. The catalog entry is ember-core's
//! [`SnapshotInfo`]: what a restore needs to know and cannot read back from a VMM-specific state
//! file (machine shape, whether the VM had a vsock device, its interfaces), the state file's size
//! and CRC32 and the memory file's size (cheap integrity checks), the flavor and VMM version that
//! wrote it. The catalog lives in memory: whoever keeps state across restarts (the daemon's
//! store) records each new entry ([`VmmProvider::snapshot_info`](crate::VmmProvider)) and hands
//! the entries back to the next provider ([`SnapshotStore::register`]). A directory no entry
//! names (a snapshot interrupted by a crash) is found by [`SnapshotStore::unknown_dirs`].

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use ember_core::{ResourceKind, SnapshotId, SnapshotInfo, SnapshotRef, VmError};

/// File name of the state file in a snapshot directory.
pub const STATE_FILE: &str = "state";
/// File name of the memory file in a snapshot directory.
pub const MEM_FILE: &str = "mem";
/// The first bytes of an ember-vmm state file.
pub const EMBER_STATE_MAGIC: &[u8; 8] = b"EMBRSNAP";

#[derive(Debug, Default)]
struct Inner {
    known: BTreeMap<SnapshotId, SnapshotInfo>,
    /// Ids being written now.
    reserved: HashSet<SnapshotId>,
}

/// The provider's snapshots.
#[derive(Debug)]
pub struct SnapshotStore {
    dir: PathBuf,
    inner: Mutex<Inner>,
}

fn not_found(id: &SnapshotId) -> VmError {
    VmError::NotFound {
        kind: ResourceKind::Snapshot,
        id: id.to_string(),
    }
}

/// CRC32 of a file's contents, and its length.
pub fn file_crc32(path: &Path) -> io::Result<(u64, u32)> {
    let mut f = fs::File::open(path)?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        len += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((len, hasher.finalize()))
}

impl SnapshotStore {
    /// An empty catalog over `dir` (which must exist).
    pub fn new(dir: &Path) -> SnapshotStore {
        SnapshotStore {
            dir: dir.to_path_buf(),
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Only map inserts/removes under this lock: a poisoned one is still consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The directory snapshots are written to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Adds (or replaces) a catalog entry, after checking it is well-formed and both files exist
    /// (their contents are checked by `verify_snapshot` and at restore).
    pub fn register(&self, info: SnapshotInfo) -> Result<(), VmError> {
        info.validate()?;
        for (field, path) in [
            ("snapshot.state_path", &info.state_path),
            ("snapshot.mem_path", &info.mem_path),
        ] {
            if !path.is_file() {
                return Err(VmError::invalid_spec(
                    field,
                    format!("{} is missing or not a regular file", path.display()),
                ));
            }
        }
        self.lock().known.insert(info.snapshot_id.clone(), info);
        Ok(())
    }

    /// The entry `id`, if known.
    pub fn get(&self, id: &SnapshotId) -> Option<SnapshotInfo> {
        self.lock().known.get(id).cloned()
    }

    /// Every known snapshot, as references.
    pub fn list(&self) -> Vec<SnapshotRef> {
        self.lock()
            .known
            .values()
            .map(SnapshotInfo::to_ref)
            .collect()
    }

    /// Directories under the snapshots directory that no entry (known or being written) owns:
    /// leftovers of a snapshot a crash interrupted, or of one whose record was lost.
    pub fn unknown_dirs(&self) -> io::Result<Vec<PathBuf>> {
        let inner = self.lock();
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            if !entry.file_type()?.is_dir() {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let owned = SnapshotId::new(name.as_str()).is_ok_and(|id| {
                inner.reserved.contains(&id)
                    || inner
                        .known
                        .get(&id)
                        .is_some_and(|i| i.state_path.starts_with(entry.path()))
            });
            if !owned {
                out.push(entry.path());
            }
        }
        out.sort();
        Ok(out)
    }

    /// Reserves `id` and creates its directory; `AlreadyExists` if it is known, being written,
    /// or its directory exists (e.g. an incomplete snapshot left by a crash).
    pub fn reserve(&self, id: &SnapshotId) -> Result<PathBuf, VmError> {
        let exists = || VmError::AlreadyExists {
            kind: ResourceKind::Snapshot,
            id: id.to_string(),
        };
        let mut inner = self.lock();
        if inner.known.contains_key(id) || inner.reserved.contains(id) {
            return Err(exists());
        }
        let dir = self.dir.join(id.as_str());
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(exists()),
            Err(e) => {
                return Err(VmError::provider(
                    "snapshot store",
                    ember_core::Operation::Snapshot,
                    id,
                    e,
                ));
            }
        }
        inner.reserved.insert(id.clone());
        Ok(dir)
    }

    /// Gives up a reservation and removes whatever was written.
    pub fn abort(&self, id: &SnapshotId) {
        let mut inner = self.lock();
        inner.reserved.remove(id);
        let dir = self.dir.join(id.as_str());
        drop(inner);
        if let Err(e) = fs::remove_dir_all(&dir)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a failed snapshot");
        }
    }

    /// Syncs a reserved snapshot's files and directory to disk and publishes its entry.
    pub fn commit(&self, info: SnapshotInfo) -> io::Result<SnapshotInfo> {
        for path in [&info.state_path, &info.mem_path] {
            fs::File::open(path)?.sync_all()?;
        }
        let dir = self.dir.join(info.snapshot_id.as_str());
        fs::File::open(&dir)?.sync_all()?;
        fs::File::open(&self.dir)?.sync_all()?;
        let mut inner = self.lock();
        inner.reserved.remove(&info.snapshot_id);
        inner.known.insert(info.snapshot_id.clone(), info.clone());
        Ok(info)
    }

    /// Forgets `id` and removes its files.
    pub fn delete(&self, id: &SnapshotId) -> Result<SnapshotInfo, VmError> {
        let info = self.lock().known.remove(id).ok_or_else(|| not_found(id))?;
        let dir = info.state_path.parent().map(Path::to_path_buf);
        let result = match dir {
            // Only a directory of our own is removed whole; files elsewhere one by one.
            Some(d) if d == self.dir.join(id.as_str()) => fs::remove_dir_all(&d),
            _ => fs::remove_file(&info.state_path).and_then(|()| fs::remove_file(&info.mem_path)),
        };
        match result {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(VmError::provider(
                "snapshot store",
                ember_core::Operation::DeleteSnapshot,
                id,
                e,
            )),
            _ => Ok(info),
        }
    }

    /// Resolves a reference to a known snapshot: its id must be known and its paths (if they
    /// differ from the catalog's) must name the same files.
    pub fn resolve(&self, r: &SnapshotRef) -> Result<SnapshotInfo, VmError> {
        let stored = self
            .get(&r.snapshot_id)
            .ok_or_else(|| not_found(&r.snapshot_id))?;
        for (field, given, ours) in [
            ("restore_from.state_path", &r.state_path, &stored.state_path),
            ("restore_from.mem_path", &r.mem_path, &stored.mem_path),
        ] {
            if given != ours && !same_file(given, ours) {
                return Err(VmError::invalid_spec(
                    field,
                    format!(
                        "{} is not snapshot {}'s file ({})",
                        given.display(),
                        r.snapshot_id,
                        ours.display()
                    ),
                ));
            }
        }
        if let (Some(given), Some(owner)) = (&r.stack, &stored.stack)
            && given != owner
        {
            return Err(VmError::invalid_spec(
                "restore_from.stack",
                format!(
                    "snapshot {} belongs to stack {owner}, not {given}",
                    r.snapshot_id
                ),
            ));
        }
        Ok(stored)
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// The cheap checks of a snapshot's files: both exist and are regular files, the state file
/// has the recorded size and CRC32 (and, for ember-vmm, its magic), the memory file has the
/// recorded size. Errors name the file and say what is wrong.
pub fn check_files(meta: &SnapshotInfo, expect_ember_magic: bool) -> Result<(), VmError> {
    let state = &meta.state_path;
    let mem = &meta.mem_path;
    let stat = |field: &str, path: &Path| -> Result<u64, VmError> {
        match fs::metadata(path) {
            Ok(m) if m.is_file() => Ok(m.len()),
            Ok(_) => Err(VmError::invalid_spec(
                field,
                format!("{} is not a regular file", path.display()),
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(VmError::invalid_spec(
                field,
                format!("{} is missing", path.display()),
            )),
            Err(e) => Err(VmError::invalid_spec(
                field,
                format!("{} cannot be read: {e}", path.display()),
            )),
        }
    };
    let state_len = stat("restore_from.state_path", state)?;
    let mem_len = stat("restore_from.mem_path", mem)?;
    if mem_len != meta.mem_len {
        return Err(VmError::invalid_spec(
            "restore_from.mem_path",
            format!(
                "{} is {mem_len} bytes but the snapshot's guest memory is {} bytes ({})",
                mem.display(),
                meta.mem_len,
                if mem_len < meta.mem_len {
                    "truncated"
                } else {
                    "wrong size"
                }
            ),
        ));
    }
    if state_len != meta.state_len {
        return Err(VmError::invalid_spec(
            "restore_from.state_path",
            format!(
                "{} is {state_len} bytes but {} were written ({})",
                state.display(),
                meta.state_len,
                if state_len < meta.state_len {
                    "truncated"
                } else {
                    "wrong size"
                }
            ),
        ));
    }
    if expect_ember_magic {
        let mut magic = [0u8; 8];
        let ok = fs::File::open(state)
            .and_then(|mut f| f.read_exact(&mut magic))
            .is_ok();
        if !ok || &magic != EMBER_STATE_MAGIC {
            return Err(VmError::invalid_spec(
                "restore_from.state_path",
                format!(
                    "{} is not an ember-vmm snapshot (bad magic)",
                    state.display()
                ),
            ));
        }
    }
    let (_, crc) = file_crc32(state).map_err(|e| {
        VmError::invalid_spec(
            "restore_from.state_path",
            format!("{} cannot be read: {e}", state.display()),
        )
    })?;
    if crc != meta.state_crc32 {
        return Err(VmError::invalid_spec(
            "restore_from.state_path",
            format!(
                "{} is corrupt: its CRC32 is {crc:08x} but {:08x} was written",
                state.display(),
                meta.state_crc32
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use ember_core::StackKey;

    use super::*;

    fn info(dir: &Path, id: &str, state_len: u64, crc: u32, mem_len: u64) -> SnapshotInfo {
        SnapshotInfo {
            snapshot_id: SnapshotId::new(id).unwrap(),
            stack: Some(StackKey::new("probe", "1", 1, 16).unwrap()),
            state_path: dir.join(id).join(STATE_FILE),
            mem_path: dir.join(id).join(MEM_FILE),
            provider: "ember-vmm".into(),
            vmm_version: "0.1.0".into(),
            vcpu_count: 1,
            mem_size_mib: 16,
            state_len,
            state_crc32: crc,
            mem_len,
            vsock_cid: Some(3),
            network_interfaces: vec![],
            disks: vec![],
            source_vm: None,
            created_at: SystemTime::now(),
        }
    }

    #[test]
    fn reserve_commit_register_delete() {
        let root = tempfile::tempdir().unwrap();
        let store = SnapshotStore::new(root.path());
        let id = SnapshotId::new("s1").unwrap();
        let dir = store.reserve(&id).unwrap();
        assert!(matches!(
            store.reserve(&id).unwrap_err(),
            VmError::AlreadyExists { .. }
        ));
        let mut state = EMBER_STATE_MAGIC.to_vec();
        state.extend_from_slice(b"payload");
        fs::write(dir.join(STATE_FILE), &state).unwrap();
        fs::write(dir.join(MEM_FILE), vec![0u8; 4096]).unwrap();
        let (len, crc) = file_crc32(&dir.join(STATE_FILE)).unwrap();
        let stored = store
            .commit(info(root.path(), "s1", len, crc, 4096))
            .unwrap();
        check_files(&stored, true).unwrap();
        assert_eq!(store.list().len(), 1);

        // A second catalog knows nothing until told; an incomplete directory is unknown.
        fs::create_dir(root.path().join("half")).unwrap();
        let other = SnapshotStore::new(root.path());
        assert!(other.list().is_empty());
        other.register(stored.clone()).unwrap();
        assert_eq!(other.list(), store.list());
        assert_eq!(
            other.unknown_dirs().unwrap(),
            vec![root.path().join("half")]
        );
        let r = other.resolve(&stored.to_ref()).unwrap();
        assert_eq!(r, stored);

        // Truncated memory, corrupt state: clear errors.
        fs::write(dir.join(MEM_FILE), vec![0u8; 100]).unwrap();
        let e = check_files(&stored, true).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        fs::write(dir.join(MEM_FILE), vec![0u8; 4096]).unwrap();
        let mut bad = state.clone();
        bad[10] ^= 0xff;
        fs::write(dir.join(STATE_FILE), &bad).unwrap();
        let e = check_files(&stored, true).unwrap_err().to_string();
        assert!(e.contains("corrupt"), "{e}");
        fs::remove_file(dir.join(STATE_FILE)).unwrap();
        let e = check_files(&stored, true).unwrap_err().to_string();
        assert!(e.contains("missing"), "{e}");
        let e = other.register(stored.clone()).unwrap_err().to_string();
        assert!(e.contains("snapshot.state_path"), "{e}");

        other.delete(&id).unwrap();
        assert!(!dir.exists());
        assert!(matches!(
            other.delete(&id).unwrap_err(),
            VmError::NotFound { .. }
        ));
    }

    #[test]
    fn resolve_refuses_other_files_and_stacks() {
        let root = tempfile::tempdir().unwrap();
        let store = SnapshotStore::new(root.path());
        let id = SnapshotId::new("s2").unwrap();
        let dir = store.reserve(&id).unwrap();
        fs::write(dir.join(STATE_FILE), b"x").unwrap();
        fs::write(dir.join(MEM_FILE), b"y").unwrap();
        let stored = store.commit(info(root.path(), "s2", 1, 0, 1)).unwrap();
        let mut r = stored.to_ref();
        r.mem_path = PathBuf::from("/elsewhere/mem");
        let e = store.resolve(&r).unwrap_err().to_string();
        assert!(e.contains("restore_from.mem_path"), "{e}");
        let mut r = stored.to_ref();
        r.stack = Some(StackKey::new("other", "1", 1, 16).unwrap());
        let e = store.resolve(&r).unwrap_err().to_string();
        assert!(e.contains("belongs to stack"), "{e}");
        let mut r = stored.to_ref();
        r.snapshot_id = SnapshotId::new("nope").unwrap();
        assert!(matches!(
            store.resolve(&r).unwrap_err(),
            VmError::NotFound { .. }
        ));
    }
}
