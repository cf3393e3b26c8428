//! The image cache: one directory per image, named by its content hash, under the cache
//! directory (default [`DEFAULT_CACHE_DIR`]). A build works in `.tmp-<hash>-<n>-<pid>` (`n`
//! tells apart builds of one process: two threads may build at once) and is
//! renamed into place when complete, so an image directory is always whole; a failed build
//! leaves only its log (`build-<hash>.log`). Temporary directories of processes that are gone
//! are removed when the next build starts.

use std::path::{Path, PathBuf};

use super::error::ImageError;

/// Where images go by default.
pub const DEFAULT_CACHE_DIR: &str = "/var/lib/ember/images";
/// Where unpacked kernels go, under the cache directory, by default.
pub const KERNELS_DIR: &str = "kernels";

/// A working directory's name, `.tmp-<what>-<n>-<pid>`: unique in this process (a counter)
/// and among processes (the pid, last, which [`clean_stale`] reads).
pub fn tmp_name(what: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!(".tmp-{what}-{n}-{}", std::process::id())
}

/// A new working directory path for a build of `hash`.
pub fn tmp_dir(cache: &Path, hash: &str) -> PathBuf {
    cache.join(tmp_name(hash))
}

/// The log of a build of `hash`.
pub fn log_path(cache: &Path, hash: &str) -> PathBuf {
    cache.join(format!("build-{hash}.log"))
}

/// Removes `.tmp-*-<pid>` directories whose process is gone.
pub fn clean_stale(cache: &Path) -> Result<(), ImageError> {
    let entries = std::fs::read_dir(cache).map_err(ImageError::io("reading", cache))?;
    for e in entries.filter_map(|e| e.ok()) {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(rest) = name.strip_prefix(".tmp-") else {
            continue;
        };
        let pid = rest.rsplit('-').next().and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid
            && pid != std::process::id()
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            tracing::info!(dir = %e.path().display(), "removing a dead build's directory");
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    Ok(())
}
