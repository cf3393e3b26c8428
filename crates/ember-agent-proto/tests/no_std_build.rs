//! The crate's core must build for the probe guest: `x86_64-unknown-none`, no `std`, no `alloc`.
//!
//! Compiles `src/lib.rs` with `rustc` directly (the core has no dependencies), so the check needs
//! no network, no lockfile and no second cargo build lock. Needs the target installed
//! (`rustup target add x86_64-unknown-none`, done by `scripts/setup.sh`).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::Path;
use std::process::Command;

#[test]
fn core_builds_for_x86_64_unknown_none_without_std() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("no-std-check");
    std::fs::create_dir_all(&out_dir).unwrap();
    let output = Command::new(&rustc)
        .args([
            "--edition",
            "2024",
            "--crate-type",
            "rlib",
            "--crate-name",
            "ember_agent_proto",
            "--target",
            "x86_64-unknown-none",
            "-C",
            "panic=abort",
            "-D",
            "warnings",
            "--out-dir",
        ])
        .arg(&out_dir)
        .arg(manifest_dir.join("src/lib.rs"))
        .output()
        .unwrap_or_else(|e| panic!("running {rustc}: {e}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "no_std build for x86_64-unknown-none failed (is the target installed? run scripts/setup.sh):\n{stderr}"
    );
    // `#![no_std]` without `extern crate alloc`: success means the core needs neither std nor an
    // allocator.
    let lib = std::fs::read_to_string(manifest_dir.join("src/lib.rs")).unwrap();
    assert!(!lib.contains("extern crate alloc"));
}
