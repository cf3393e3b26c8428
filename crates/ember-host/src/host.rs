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
    /// The daemon binary was not found and could not be built.
    #[error(
        "the emberd binary was not found ({0}); build it with `cargo build --release -p emberd` or set EMBERD_BIN"
    )]
    NoEmberd(String),
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
    build_in_tree("ember-vmm", "ember-vmm", on_build).map_err(HostError::NoVmm)
}

/// Finds `emberd` (`$EMBERD_BIN`, next to this executable, `$PATH`), or builds it like
/// [`vmm_binary`].
pub fn emberd_binary(on_build: impl FnOnce()) -> Result<PathBuf, HostError> {
    if let Some(p) = std::env::var_os("EMBERD_BIN") {
        return Ok(PathBuf::from(p));
    }
    let near = std::env::current_exe().ok().and_then(|exe| {
        exe.ancestors()
            .skip(1)
            .take(2)
            .map(|d| d.join("emberd"))
            .find(|p| p.is_file())
    });
    let on_path = || {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join("emberd"))
                .find(|p| p.is_file())
        })
    };
    if let Some(p) = near.or_else(on_path) {
        return Ok(p);
    }
    build_in_tree("emberd", "emberd", on_build).map_err(HostError::NoEmberd)
}

/// Builds `bin` of `package` in the source tree this binary came from (release profile).
fn build_in_tree(package: &str, bin: &str, on_build: impl FnOnce()) -> Result<PathBuf, String> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    if !workspace.join("Cargo.toml").is_file() {
        return Err("no source tree to build it from".into());
    }
    on_build();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "-q", "-p", package, "--bin", bin])
        .current_dir(&workspace)
        .status()
        .map_err(|e| format!("running cargo: {e}"))?;
    if !status.success() {
        return Err(format!("cargo build failed ({status})"));
    }
    let built = workspace.join("target/release").join(bin);
    if built.is_file() {
        Ok(built)
    } else {
        Err(format!("{} missing after the build", built.display()))
    }
}
