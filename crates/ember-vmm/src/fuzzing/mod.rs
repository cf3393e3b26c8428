//! Fuzz target bodies for `fuzz/` (the `ember-fuzz` harness), compiled only with the
//! `fuzzing` feature and hidden from the documentation: not an API.
//!
//! They live here, not in `fuzz/`, because they drive crate-private pieces exactly as the VMM
//! does (the virtio transport and device thread turn, the snapshot decoder and restore checks,
//! the API's request parser and router) without widening the crate's public surface. Each
//! function takes the fuzzer's bytes, never panics on any input unless it found a bug, and
//! asserts what is cheap to check: decoded values re-encode to an equivalent value, a broken
//! device says so, a device does not keep its thread busy once the guest stops.
//!
//! Host resources: the targets create what they need under a per-process directory in the
//! system temporary directory ([`scratch_dir`], removed at the end of a run, or by the next
//! run if this one died); `virtio_net` needs root (it moves the process
//! into a new network namespace with a TAP of its own) and does nothing without it.

// A fuzz target reports a bug by panicking: `expect` states the invariant that broke.
#![allow(clippy::expect_used)]

pub mod http;
pub mod snapshot;
pub mod virtio;

use std::path::PathBuf;
use std::sync::OnceLock;

/// A directory private to this process for the targets' files and sockets (created once):
/// `<temp>/ember-fuzz/<pid>`. Directories of processes that are gone (a run that ended on a
/// fatal signal, a test process) are removed on the way.
pub fn scratch_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = std::env::temp_dir().join("ember-fuzz");
        if let Ok(entries) = std::fs::read_dir(&base) {
            for e in entries.flatten() {
                let name = e.file_name();
                let gone = name
                    .to_str()
                    .and_then(|n| n.parse::<u32>().ok())
                    .is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists());
                if gone {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let dir = base.join(std::process::id().to_string());
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::create_dir_all(&dir);
        dir
    })
}

/// Removes [`scratch_dir`] (at the end of a run).
pub fn remove_scratch_dir() {
    let _ = std::fs::remove_dir_all(scratch_dir());
}
