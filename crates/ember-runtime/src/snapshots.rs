//! The snapshot store: `<root>/snapshots/<id>/{state, mem, meta.json}`.
//!
//! A snapshot belongs to its stack (template), not to the VM it was taken from: destroying that
//! VM never touches it; only [`SnapshotStore::delete`] does. `meta.json` records what a restore
//! needs to know and cannot read back from a VMM-specific state file: the machine shape, whether
//! the VM had a vsock device (each restored VM then gets its own socket through
//! `vsock_override`), the state file's size and CRC32 and the memory file's size (cheap
//! integrity checks), the provider flavor and VMM version that wrote it. The store is reloaded
//! from disk when a provider starts; a directory without a readable `meta.json` (a snapshot
//! interrupted by a crash, or foreign files) is reported and skipped, never deleted.
//!
//! `meta.json` is written last, to a temporary name, fsynced and renamed: a snapshot either
//! has complete metadata or is not listed.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ember_core::{ResourceKind, SnapshotId, SnapshotRef, StackKey, VmError, VmId};
use serde::{Deserialize, Serialize};

/// Version of the `meta.json` layout.
pub const META_FORMAT: u32 = 1;
/// File name of the state file in a snapshot directory.
pub const STATE_FILE: &str = "state";
/// File name of the memory file in a snapshot directory.
pub const MEM_FILE: &str = "mem";
/// File name of the metadata in a snapshot directory.
pub const META_FILE: &str = "meta.json";
/// The first bytes of an ember-vmm state file.
pub const EMBER_STATE_MAGIC: &[u8; 8] = b"EMBRSNAP";

/// What `meta.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// [`META_FORMAT`].
    pub format: u32,
    /// The snapshot's id (also its directory's name).
    pub snapshot_id: SnapshotId,
    /// The stack that owns it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<StackKey>,
    /// The provider flavor that wrote it (`ember-vmm` or `firecracker`).
    pub provider: String,
    /// The VMM's version (`GET /version`) when it was taken.
    pub vmm_version: String,
    /// vCPUs of the VM.
    pub vcpu_count: u8,
    /// Guest memory of the VM, MiB.
    pub mem_size_mib: u32,
    /// Size of the state file.
    pub state_len: u64,
    /// CRC32 of the state file.
    pub state_crc32: u32,
    /// Size of the memory file.
    pub mem_len: u64,
    /// The guest CID if the VM had a vsock device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_cid: Option<u32>,
    /// Ids of the VM's network interfaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network_interfaces: Vec<String>,
    /// The VM it was taken from (for the record; the snapshot does not depend on it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_vm: Option<VmId>,
    /// When it was taken, milliseconds since the Unix epoch.
    pub created_at_ms: u64,
}

/// A snapshot the store knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSnapshot {
    /// Its metadata.
    pub meta: SnapshotMeta,
    /// Its directory.
    pub dir: PathBuf,
}

impl StoredSnapshot {
    /// The state file.
    pub fn state_path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// The memory file.
    pub fn mem_path(&self) -> PathBuf {
        self.dir.join(MEM_FILE)
    }

    /// A reference to it (resumes on restore, no overrides).
    pub fn to_ref(&self) -> SnapshotRef {
        SnapshotRef::new(
            self.meta.snapshot_id.clone(),
            self.meta.stack.clone(),
            self.state_path(),
            self.mem_path(),
        )
    }
}

#[derive(Debug, Default)]
struct Inner {
    known: BTreeMap<SnapshotId, StoredSnapshot>,
    /// Ids being written now.
    reserved: HashSet<SnapshotId>,
}

/// The provider's snapshots, on disk and in memory.
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

/// CRC32 of a file's contents.
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

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl SnapshotStore {
    /// Loads every complete snapshot under `dir`.
    pub fn load(dir: &Path) -> io::Result<SnapshotStore> {
        let mut known = BTreeMap::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let path = entry.path();
            if !entry.file_type()?.is_dir() {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            match read_meta(&path) {
                Ok(meta) if meta.snapshot_id.as_str() == name && meta.format == META_FORMAT => {
                    known.insert(meta.snapshot_id.clone(), StoredSnapshot { meta, dir: path });
                }
                Ok(meta) => tracing::warn!(dir = %path.display(), id = %meta.snapshot_id,
                    format = meta.format, "skipping a snapshot whose metadata does not match its directory or format"),
                Err(e) => tracing::warn!(dir = %path.display(), error = %e,
                    "skipping a snapshot directory without readable metadata (incomplete?)"),
            }
        }
        Ok(SnapshotStore {
            dir: dir.to_path_buf(),
            inner: Mutex::new(Inner {
                known,
                reserved: HashSet::new(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Only map inserts/removes under this lock: a poisoned one is still consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The snapshot `id`, if known.
    pub fn get(&self, id: &SnapshotId) -> Option<StoredSnapshot> {
        self.lock().known.get(id).cloned()
    }

    /// Every known snapshot, as references.
    pub fn list(&self) -> Vec<SnapshotRef> {
        self.lock()
            .known
            .values()
            .map(StoredSnapshot::to_ref)
            .collect()
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

    /// Writes `meta.json` (atomically, fsynced) for a reserved snapshot and publishes it.
    pub fn commit(&self, meta: SnapshotMeta) -> io::Result<StoredSnapshot> {
        let dir = self.dir.join(meta.snapshot_id.as_str());
        let text = serde_json::to_vec_pretty(&meta).map_err(io::Error::other)?;
        let tmp = dir.join(format!("{META_FILE}.tmp"));
        {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&text)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, dir.join(META_FILE))?;
        fs::File::open(&dir)?.sync_all()?;
        let stored = StoredSnapshot { meta, dir };
        let mut inner = self.lock();
        inner.reserved.remove(&stored.meta.snapshot_id);
        inner
            .known
            .insert(stored.meta.snapshot_id.clone(), stored.clone());
        Ok(stored)
    }

    /// Forgets `id` and removes its files.
    pub fn delete(&self, id: &SnapshotId) -> Result<StoredSnapshot, VmError> {
        let stored = self.lock().known.remove(id).ok_or_else(|| not_found(id))?;
        match fs::remove_dir_all(&stored.dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(VmError::provider(
                "snapshot store",
                ember_core::Operation::DeleteSnapshot,
                id,
                e,
            )),
            _ => Ok(stored),
        }
    }

    /// Resolves a reference to a known snapshot: its id must be known and its paths (if they
    /// differ from the store's) must name the same files.
    pub fn resolve(&self, r: &SnapshotRef) -> Result<StoredSnapshot, VmError> {
        let stored = self
            .get(&r.snapshot_id)
            .ok_or_else(|| not_found(&r.snapshot_id))?;
        for (field, given, ours) in [
            (
                "restore_from.state_path",
                &r.state_path,
                stored.state_path(),
            ),
            ("restore_from.mem_path", &r.mem_path, stored.mem_path()),
        ] {
            if *given != ours && !same_file(given, &ours) {
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
        if let (Some(given), Some(owner)) = (&r.stack, &stored.meta.stack)
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

fn read_meta(dir: &Path) -> io::Result<SnapshotMeta> {
    let bytes = fs::read(dir.join(META_FILE))?;
    serde_json::from_slice(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// The cheap checks of a snapshot's files: both exist and are regular files, the state file
/// has the recorded size and CRC32 (and, for ember-vmm, its magic), the memory file has the
/// recorded size. Errors name the file and say what is wrong.
pub fn check_files(stored: &StoredSnapshot, expect_ember_magic: bool) -> Result<(), VmError> {
    let meta = &stored.meta;
    let state = stored.state_path();
    let mem = stored.mem_path();
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
    let state_len = stat("restore_from.state_path", &state)?;
    let mem_len = stat("restore_from.mem_path", &mem)?;
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
        let ok = fs::File::open(&state)
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
    let (_, crc) = file_crc32(&state).map_err(|e| {
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

/// How old a snapshot is.
pub fn age(meta: &SnapshotMeta) -> Duration {
    Duration::from_millis(now_ms().saturating_sub(meta.created_at_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(id: &str, state_len: u64, crc: u32, mem_len: u64) -> SnapshotMeta {
        SnapshotMeta {
            format: META_FORMAT,
            snapshot_id: SnapshotId::new(id).unwrap(),
            stack: Some(StackKey::new("probe", "1", 1, 16).unwrap()),
            provider: "ember-vmm".into(),
            vmm_version: "0.1.0".into(),
            vcpu_count: 1,
            mem_size_mib: 16,
            state_len,
            state_crc32: crc,
            mem_len,
            vsock_cid: Some(3),
            network_interfaces: vec![],
            source_vm: None,
            created_at_ms: now_ms(),
        }
    }

    #[test]
    fn reserve_commit_reload_delete() {
        let root = tempfile::tempdir().unwrap();
        let store = SnapshotStore::load(root.path()).unwrap();
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
        let stored = store.commit(meta("s1", len, crc, 4096)).unwrap();
        check_files(&stored, true).unwrap();
        assert_eq!(store.list().len(), 1);

        // An incomplete directory next to it is skipped on reload.
        fs::create_dir(root.path().join("half")).unwrap();
        let reloaded = SnapshotStore::load(root.path()).unwrap();
        assert_eq!(reloaded.list(), store.list());
        let r = reloaded.resolve(&stored.to_ref()).unwrap();
        assert_eq!(r.meta, stored.meta);

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

        reloaded.delete(&id).unwrap();
        assert!(!dir.exists());
        assert!(matches!(
            reloaded.delete(&id).unwrap_err(),
            VmError::NotFound { .. }
        ));
    }

    #[test]
    fn resolve_refuses_other_files_and_stacks() {
        let root = tempfile::tempdir().unwrap();
        let store = SnapshotStore::load(root.path()).unwrap();
        let id = SnapshotId::new("s2").unwrap();
        let dir = store.reserve(&id).unwrap();
        fs::write(dir.join(STATE_FILE), b"x").unwrap();
        fs::write(dir.join(MEM_FILE), b"y").unwrap();
        let stored = store.commit(meta("s2", 1, 0, 1)).unwrap();
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
