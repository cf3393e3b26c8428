//! How a [`VmmProvider`](super::VmmProvider) is set up: which VMM ([`Flavor`]), where its files
//! go, how many spare processes it keeps, and its timeouts.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ember_core::VmSpec;

use crate::client::ClientTimeouts;
use crate::spares::SpareConfig;

/// Which VMM runs the microVMs. Both speak the Firecracker API and are driven by the same
/// client and provider code; the flavor decides the provider's name and the snapshot format
/// checks that can be made without the VMM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flavor {
    /// ember's own VMM (`ember-vmm`), the default.
    EmberVmm {
        /// The `ember-vmm` binary.
        binary: PathBuf,
    },
    /// A `firecracker` binary (or anything that speaks its API and CLI: `--api-sock`, `--id`).
    Firecracker {
        /// The binary.
        binary: PathBuf,
    },
}

impl Flavor {
    /// The provider name this flavor reports (`"ember-vmm"` or `"firecracker"`).
    pub fn name(&self) -> &'static str {
        match self {
            Flavor::EmberVmm { .. } => "ember-vmm",
            Flavor::Firecracker { .. } => "firecracker",
        }
    }

    /// The VMM binary.
    pub fn binary(&self) -> &Path {
        match self {
            Flavor::EmberVmm { binary } | Flavor::Firecracker { binary } => binary,
        }
    }

    /// Whether snapshots are in ember-vmm's format (magic `EMBRSNAP`).
    pub fn writes_ember_snapshots(&self) -> bool {
        matches!(self, Flavor::EmberVmm { .. })
    }
}

/// Timeouts of the provider's slow steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Per API call.
    pub client: ClientTimeouts,
    /// How long a create waits for a spare process when none is ready.
    pub spare_wait: Duration,
    /// How long `shutdown` waits for killed processes to be reaped.
    pub shutdown: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            client: ClientTimeouts::default(),
            spare_wait: Duration::from_secs(10),
            shutdown: Duration::from_secs(10),
        }
    }
}

/// Everything a [`VmmProvider`](super::VmmProvider) needs.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderConfig {
    /// The root directory (slots, VM links, and snapshots unless `snapshots_dir` says
    /// otherwise); created if missing, locked for this provider, and short enough for Unix
    /// socket paths under it (about 60 bytes). Put it on a tmpfs (`/run/...`, `/dev/shm/...`):
    /// every VM creates and removes a few files there.
    pub root: PathBuf,
    /// Where snapshots live, if not in `<root>/snapshots` (e.g. a disk-backed directory when
    /// the root is on tmpfs). Created if missing, locked, never removed by the provider.
    pub snapshots_dir: Option<PathBuf>,
    /// Which VMM to run.
    pub flavor: Flavor,
    /// Extra arguments for every VMM process, after `--api-sock <path> --id <id>`.
    pub extra_args: Vec<OsString>,
    /// Spare processes.
    pub spares: SpareConfig,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// What [`VmProvider::create`](ember_core::VmProvider::create) boots (it needs a kernel);
    /// without it `create` is an invalid-spec error.
    pub default_spec: Option<VmSpec>,
    /// Detached VMMs (the daemon's): not tied to this process's life (no parent-death signal,
    /// their own process group), left running when the provider is dropped or
    /// [released](super::VmmProvider::release), and kept under the root for the next provider
    /// to [adopt](super::VmmProvider::adopt) or [sweep](super::VmmProvider::sweep). Off (the
    /// default), every VMM dies with this process and a new provider clears the root.
    pub detached: bool,
    /// Jail every VMM (`ember-jailer`: namespaces, its own root, uid, cgroup); see
    /// [`crate::jail`]. `None` runs VMMs in the host's namespaces as this process's user.
    pub jail: Option<crate::jail::JailSettings>,
    /// A network namespace for every VMM, made before it starts (see [`crate::slot_net`]).
    pub networks: Option<crate::slot_net::NetworkHook>,
    /// Make [`verify_snapshot`](ember_core::VmProvider::verify_snapshot) restore the snapshot
    /// (paused) on a spare process after the file checks — the only check that catches every
    /// snapshot the VMM would refuse.
    pub trial_restore: bool,
}

impl ProviderConfig {
    /// Defaults for everything but the root and the flavor.
    pub fn new(root: impl Into<PathBuf>, flavor: Flavor) -> Self {
        Self {
            root: root.into(),
            snapshots_dir: None,
            flavor,
            extra_args: Vec::new(),
            spares: SpareConfig::default(),
            timeouts: Timeouts::default(),
            default_spec: None,
            detached: false,
            jail: None,
            networks: None,
            trial_restore: true,
        }
    }
}

/// Finds the `ember-vmm` binary: `$EMBER_VMM_BIN`, then next to the running executable (or one
/// directory up, for test and bench executables under `target/<profile>/deps`), then `$PATH`.
pub fn locate_ember_vmm() -> Option<PathBuf> {
    locate_binary("ember-vmm", "EMBER_VMM_BIN")
}

/// Finds the `ember-jailer` binary the same way (`$EMBER_JAILER_BIN` first).
pub fn locate_ember_jailer() -> Option<PathBuf> {
    locate_binary("ember-jailer", "EMBER_JAILER_BIN")
}

fn locate_binary(name: &str, env: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let mut dir = exe.parent().map(Path::to_path_buf);
    for _ in 0..2 {
        let Some(d) = dir else { break };
        let candidate = d.join(name);
        if candidate.is_file() {
            return Some(candidate);
        }
        dir = d.parent().map(Path::to_path_buf);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}
