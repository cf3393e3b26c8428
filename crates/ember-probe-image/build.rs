//! Builds guest/ember-probe for x86_64-unknown-none with its own target dir (under OUT_DIR) and
//! exports the ELF's path as `EMBER_PROBE_ELF`.
#![allow(clippy::print_stdout, clippy::expect_used, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Same flags as guest/ember-probe/.cargo/config.toml, set through the environment so that no
/// cargo config of a parent directory can change how the guest is built.
const GUEST_RUSTFLAGS: &[&str] = &["-C", "relocation-model=static", "-C", "link-arg=--no-pie"];
const TARGET: &str = "x86_64-unknown-none";

fn main() {
    let manifest_dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let guest_dir = manifest_dir.join("../../guest/ember-probe");
    let guest_dir = guest_dir.canonicalize().unwrap_or(guest_dir);
    for f in [
        "src",
        "Cargo.toml",
        "Cargo.lock",
        "link.ld",
        "build.rs",
        ".cargo/config.toml",
    ] {
        println!("cargo:rerun-if-changed={}", guest_dir.join(f).display());
    }
    // The guest's agent is built on ember-agent-proto's no_std core.
    let proto_dir = manifest_dir.join("../ember-agent-proto");
    for f in ["src", "Cargo.toml"] {
        println!("cargo:rerun-if-changed={}", proto_dir.join(f).display());
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let target_dir = out_dir.join("guest-target");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    check_target_installed(&rustc);

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&guest_dir)
        .args([
            "build",
            "--release",
            "--offline",
            "--target",
            TARGET,
            "--target-dir",
        ])
        .arg(&target_dir);
    // Do not let the host build's settings leak into the guest build.
    for var in [
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_TARGET_DIR",
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_PRIMARY_PACKAGE",
        "CLIPPY_ARGS",
        "__CARGO_FIX_PLZ",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("CARGO_ENCODED_RUSTFLAGS", GUEST_RUSTFLAGS.join("\x1f"));
    let status = cmd
        .status()
        .expect("failed to run cargo to build guest/ember-probe");
    if !status.success() {
        panic!(
            "building guest/ember-probe failed ({status}); if the x86_64-unknown-none target is \
             missing, run `rustup target add x86_64-unknown-none` (scripts/setup.sh does it)"
        );
    }
    let elf = target_dir.join(TARGET).join("release").join("ember-probe");
    assert!(
        elf.is_file(),
        "guest build produced no ELF at {}",
        elf.display()
    );
    println!("cargo:rustc-env=EMBER_PROBE_ELF={}", elf.display());
}

fn check_target_installed(rustc: &str) {
    let Ok(out) = Command::new(rustc).args(["--print", "sysroot"]).output() else {
        return; // Let the cargo invocation report the problem.
    };
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let lib = Path::new(&sysroot).join("lib/rustlib").join(TARGET);
    if !sysroot.is_empty() && !lib.exists() {
        panic!(
            "the Rust target {TARGET} is not installed (needed to build the ember-probe guest): \
             run `rustup target add {TARGET}`"
        );
    }
}
