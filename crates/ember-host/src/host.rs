//! Host checks: a usable `/dev/kvm`, and the `ember-vmm` binary (built on demand from this
//! source tree when it is missing).

use std::path::{Path, PathBuf};
use std::process::Command;

use thiserror::Error;

/// Why this host cannot run ember's microVMs.
#[derive(Debug, Error)]
pub enum HostError {
    /// `/dev/kvm` is missing or cannot be opened.
    #[error(
        "/dev/kvm is not usable ({0}): ember needs hardware virtualization (KVM) and read-write access to /dev/kvm"
    )]
    NoKvm(String),
    /// KVM answered with an API version ember does not speak.
    #[error("/dev/kvm reports KVM API version {0}; ember needs version 12")]
    KvmApi(i32),
    /// KVM refused to create a VM.
    #[error("/dev/kvm refuses to create a VM ({0})")]
    KvmCreateVm(String),
    /// The VMM binary was not found and could not be built.
    #[error(
        "the ember-vmm binary was not found ({0}); build it with `cargo build --release -p ember-vmm` or set EMBER_VMM_BIN"
    )]
    NoVmm(String),
}

/// Checks that KVM can run a VM here: open `/dev/kvm`, API version 12, and create (and drop) one
/// VM.
pub fn check_kvm() -> Result<(), HostError> {
    let kvm = kvm_ioctls::Kvm::new().map_err(|e| HostError::NoKvm(e.to_string()))?;
    let version = kvm.get_api_version();
    if version < 0 {
        return Err(HostError::NoKvm(
            "it is not a KVM device: KVM_GET_API_VERSION failed".into(),
        ));
    }
    if version != 12 {
        return Err(HostError::KvmApi(version));
    }
    kvm.create_vm()
        .map(drop)
        .map_err(|e| HostError::KvmCreateVm(e.to_string()))
}

/// Finds `ember-vmm` (`$EMBER_VMM_BIN`, next to this executable, `$PATH`); if it is missing and
/// this binary was built from a source tree that is still present, builds it there first
/// (`cargo build --release -p ember-vmm`), calling `on_build` before it starts.
pub fn vmm_binary(on_build: impl FnOnce()) -> Result<PathBuf, HostError> {
    if let Some(p) = ember_runtime::locate_ember_vmm() {
        return Ok(p);
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    if !workspace.join("Cargo.toml").is_file() {
        return Err(HostError::NoVmm("no source tree to build it from".into()));
    }
    on_build();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "-q", "-p", "ember-vmm"])
        .current_dir(&workspace)
        .status()
        .map_err(|e| HostError::NoVmm(format!("running cargo: {e}")))?;
    if !status.success() {
        return Err(HostError::NoVmm(format!("cargo build failed ({status})")));
    }
    let built = workspace.join("target/release/ember-vmm");
    if built.is_file() {
        Ok(built)
    } else {
        Err(HostError::NoVmm(format!(
            "{} missing after the build",
            built.display()
        )))
    }
}
