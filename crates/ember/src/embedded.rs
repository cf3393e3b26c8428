//! An emberd run inside this process for one command (`ember demo`): its own directory
//! (state, VM slots, socket) under the work directory, a [`Client`] on its socket, and the
//! proof at the end that it left no VMM process and no VM file behind.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ember_host::session::{Leftovers, leftovers_in};
use emberd::client::{Client, Endpoint};
use emberd::{Daemon, DaemonConfig, Engine, Limits};

use crate::interrupt::Registration;

/// A daemon embedded for one run.
pub struct Embedded {
    root: PathBuf,
    daemon: Option<Daemon>,
    client: Arc<Client>,
    /// Cleans the directory on a signal until the run's own cleanup is done (last field:
    /// dropped after [`Drop`]).
    _interrupt: Registration,
}

/// Why the embedded daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// Its directory could not be made.
    #[error("cannot create {}", path.display())]
    Root {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The daemon did not start.
    #[error("starting the embedded emberd")]
    Start(#[from] emberd::StartError),
}

impl Embedded {
    /// Starts a daemon in a fresh directory under `workdir` (short: socket paths live under it)
    /// with `spares` spare VMM processes, its VMMs jailed when `jail` is given.
    pub async fn start(
        vmm: &Path,
        workdir: &Path,
        spares: usize,
        jail: Option<ember_runtime::jail::JailSettings>,
    ) -> Result<Embedded, EmbeddedError> {
        Self::start_with_e2b(vmm, workdir, spares, jail, None).await
    }

    /// [`start`](Self::start), also serving E2B's API (and envd) as `e2b` says.
    pub async fn start_with_e2b(
        vmm: &Path,
        workdir: &Path,
        spares: usize,
        jail: Option<ember_runtime::jail::JailSettings>,
        e2b: Option<emberd::e2b::E2bConfig>,
    ) -> Result<Embedded, EmbeddedError> {
        let root = workdir.join(format!("emberd-{}", std::process::id()));
        let interrupt = Registration::new(&root);
        std::fs::create_dir_all(&root).map_err(|source| EmbeddedError::Root {
            path: root.clone(),
            source,
        })?;
        let socket = root.join("ember.sock");
        let daemon = Daemon::start(DaemonConfig {
            socket: socket.clone(),
            listen: None,
            token: None,
            state_dir: root.join("state"),
            runtime_dir: root.join("vms"),
            vmm: vmm.to_path_buf(),
            spares,
            limits: Limits::default(),
            e2b,
            jail: jail.clone(),
            network: None,
            agent_bin: None,
        })
        .await;
        let daemon = match daemon {
            Ok(d) => {
                let engine = Arc::clone(&d.engine);
                interrupt.on_stop(move || {
                    engine.pool.shutdown();
                    engine.provider.shutdown();
                });
                d
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&root);
                return Err(e.into());
            }
        };
        Ok(Embedded {
            root,
            daemon: Some(daemon),
            client: Arc::new(Client::new(Endpoint::Unix(socket))),
            _interrupt: interrupt,
        })
    }

    /// A client on the daemon's socket.
    pub fn client(&self) -> &Arc<Client> {
        &self.client
    }

    /// The daemon's engine (for figures the API does not serve).
    pub fn engine(&self) -> Option<&Arc<Engine>> {
        self.daemon.as_ref().map(|d| &d.engine)
    }

    /// Stops the daemon, reports what is left (VMM processes naming the directory, files under
    /// its VM directory) and removes the directory.
    pub async fn finish(mut self) -> Leftovers {
        if let Some(d) = self.daemon.take() {
            d.stop().await;
        }
        let root = self.root.clone();
        let left = tokio::task::spawn_blocking(move || leftovers_in(&root, &root.join("vms")))
            .await
            .unwrap_or_default();
        // Whatever the run failed to clean up must not outlive it.
        for pid in &left.processes {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        // The daemon is gone for good: the jails' shared mount and cgroups go too.
        if let Err(e) = ember_runtime::jail::remove_leftovers(
            &self.root.join("vms"),
            Path::new(ember_runtime::jail::CGROUP_ROOT),
        ) {
            tracing::warn!(root = %self.root.display(), error = %e, "removing the VMMs' jails");
        }
        if let Err(e) = std::fs::remove_dir_all(&self.root) {
            tracing::warn!(root = %self.root.display(), error = %e, "removing the daemon's directory");
        }
        left
    }
}

impl Drop for Embedded {
    /// Dropped without [`finish`](Embedded::finish) (an error or a panic unwinding): its VMs are
    /// killed and its directory removed, so nothing outlives the run.
    fn drop(&mut self) {
        if let Some(d) = self.daemon.take() {
            d.engine.pool.shutdown();
            d.engine.provider.shutdown();
            let _ = ember_runtime::jail::remove_leftovers(
                &self.root.join("vms"),
                Path::new(ember_runtime::jail::CGROUP_ROOT),
            );
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}
