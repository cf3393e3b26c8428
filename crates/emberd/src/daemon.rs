//! [`Daemon`]: emberd put together and running — its directories locked, the store opened, the
//! probe guest written out, a detached provider, the engine recovered from the store, the API
//! served on a Unix socket (and TCP with a token, if asked), and the background work (time
//! limits, pruning). [`Daemon::stop`] is the graceful stop: stop accepting, finish the
//! requests in flight, leave every VM running for the next start.
//!
//! The `emberd` binary runs one; `ember demo` and tests may embed one.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ember_runtime::{Flavor, ProviderConfig, VmmProvider};
use ember_store::{Store, StoreConfig};
use nix::fcntl::{Flock, FlockArg};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::{self, AppState, system::About};
use crate::engine::recovery::{self, RecoveryReport};
use crate::engine::{Engine, Limits};
use crate::metrics::{HostCollector, Metrics};

/// How often deadlines are checked.
const REAP_EVERY: Duration = Duration::from_millis(200);
/// How often old ended sandboxes are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// What a daemon needs.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// The Unix socket the API listens on (mode 0660).
    pub socket: PathBuf,
    /// Also listen on TCP here (every request then needs the token).
    pub listen: Option<SocketAddr>,
    /// The bearer token TCP requests must carry (required with `listen`).
    pub token: Option<String>,
    /// The store, templates' guests and snapshots (kept across restarts and reboots).
    pub state_dir: PathBuf,
    /// VM slots and sockets (best on tmpfs; short, since socket paths live under it).
    pub runtime_dir: PathBuf,
    /// The ember-vmm binary.
    pub vmm: PathBuf,
    /// Spare VMM processes kept ready.
    pub spares: usize,
    /// What the engine may hold.
    pub limits: Limits,
    /// E2B's REST API and envd listeners, if asked.
    pub e2b: Option<crate::e2b::E2bConfig>,
    /// Jail every VMM (ember-jailer); `None` runs them unjailed.
    pub jail: Option<ember_runtime::jail::JailSettings>,
    /// Give every sandbox its own network (ember-net); `None`: sandboxes have none.
    pub network: Option<crate::engine::network::NetworkSettings>,
    /// The static ember-agent templates' images get (`None`: `$EMBER_AGENT_BIN`, or
    /// `ember-agent` next to the daemon's executable).
    pub agent_bin: Option<PathBuf>,
}

/// Why a daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A directory or file could not be made or used.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What it is.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Another daemon holds the state directory.
    #[error("another emberd uses the state directory {0} (its lock file is held)")]
    Locked(PathBuf),
    /// Another daemon answers on the socket.
    #[error("another emberd answers on {0}")]
    SocketInUse(PathBuf),
    /// A TCP listener without a token.
    #[error("--listen needs a token (--token-file): TCP requests must carry a bearer token")]
    NoToken,
    /// The store could not be opened.
    #[error("opening the store")]
    Store(#[from] ember_store::StoreError),
    /// The provider could not start.
    #[error("starting the VMM provider")]
    Provider(#[from] ember_runtime::StartError),
    /// The warm pool could not start.
    #[error("starting the warm pool")]
    Pool(#[from] ember_pool::PoolError),
    /// Sandbox networks could not be set up.
    #[error("setting up sandbox networks: {0}")]
    Network(String),
    /// Recovery failed.
    #[error("recovering the host's state: {0}")]
    Recovery(crate::error::ApiError),
}

fn io<'p>(what: &'static str, path: &'p Path) -> impl FnOnce(std::io::Error) -> StartError + 'p {
    move |source| StartError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// A running daemon.
pub struct Daemon {
    /// The engine.
    pub engine: Arc<Engine>,
    /// What recovery found at start.
    pub recovery: RecoveryReport,
    socket: PathBuf,
    tcp: Option<SocketAddr>,
    e2b_api: Option<SocketAddr>,
    e2b_envd: Option<SocketAddr>,
    stop_tx: watch::Sender<bool>,
    servers: Vec<JoinHandle<()>>,
    background: Vec<JoinHandle<()>>,
    _lock: Flock<std::fs::File>,
}

impl Daemon {
    /// Starts a daemon (see the module docs). Must run inside a tokio runtime.
    pub async fn start(config: DaemonConfig) -> Result<Daemon, StartError> {
        let t0 = Instant::now();
        if config.listen.is_some() && config.token.is_none() {
            return Err(StartError::NoToken);
        }
        for dir in [&config.state_dir, &config.runtime_dir] {
            std::fs::create_dir_all(dir).map_err(io("cannot create", dir))?;
        }
        let lock_path = config.state_dir.join("emberd.lock");
        let lock_file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io("cannot open", &lock_path))?;
        let lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock)
            .map_err(|_| StartError::Locked(config.state_dir.clone()))?;

        let metrics = Arc::new(Metrics::new());
        let store_path = config.state_dir.join("ember.db");
        let store = {
            let path = store_path.clone();
            // The allocator hands out sandbox addresses and host interface names from the
            // daemon's network settings.
            let store_config = match &config.network {
                Some(n) => StoreConfig {
                    network: n.allocator.clone(),
                    ..StoreConfig::default()
                },
                None => StoreConfig::default(),
            };
            tokio::task::spawn_blocking(move || Store::open(&path, store_config))
                .await
                .map_err(|e| StartError::Io {
                    what: "opening the store",
                    path: store_path.clone(),
                    source: std::io::Error::other(e.to_string()),
                })??
        };
        let store = Arc::new(store);
        let observer_metrics = Arc::clone(&metrics);
        store.set_commit_observer(Arc::new(move |_op, durability, took| {
            observer_metrics.store_commit(durability, took);
        }));
        let probe_kernel = write_probe(&config.state_dir)?;
        let mut provider_config = ProviderConfig::new(
            &config.runtime_dir,
            Flavor::EmberVmm {
                binary: config.vmm.clone(),
            },
        );
        provider_config.snapshots_dir = Some(config.state_dir.join("snapshots"));
        provider_config.detached = true;
        provider_config.spares.count = config.spares;
        provider_config.jail = config.jail.clone();
        let nets = match &config.network {
            Some(settings) => {
                let nets =
                    crate::engine::network::SlotNets::start(Arc::clone(&store), settings.clone())
                        .map_err(StartError::Network)?;
                // Before any VMM starts (a spare's network is recorded, then made: a sweep
                // running alongside could take one for a leftover).
                nets.sweep_unrecorded();
                provider_config.networks = Some(ember_runtime::slot_net::NetworkHook(Arc::clone(
                    &nets,
                )
                    as Arc<dyn ember_runtime::slot_net::SlotNetworks>));
                Some(nets)
            }
            None => None,
        };
        let provider = Arc::new(VmmProvider::new(provider_config)?);
        let engine = Engine::new(
            store,
            Arc::clone(&provider),
            probe_kernel,
            Arc::clone(&metrics),
            config.limits.clone(),
            nets,
            crate::engine::ImageSettings {
                cache_dir: config.state_dir.join("images"),
                agent: config.agent_bin.clone(),
            },
        )?;
        metrics.register_collector(Box::new(engine.pool.collector()));
        let weak = Arc::downgrade(&engine);
        metrics.register_collector(Box::new(HostCollector {
            sandboxes: Box::new(move || weak.upgrade().map_or((0, 0), |e| e.live.by_state())),
            vms: provider,
        }));
        let recovery = {
            let engine = Arc::clone(&engine);
            tokio::task::spawn_blocking(move || recovery::recover(&engine))
                .await
                .map_err(|e| StartError::Recovery(e.into()))?
                .map_err(StartError::Recovery)?
        };

        let state = AppState {
            engine: Arc::clone(&engine),
            started: Instant::now(),
            about: Arc::new(About {
                vmm: config.vmm.clone(),
                state_dir: config.state_dir.clone(),
                runtime_dir: config.runtime_dir.clone(),
                kvm: ember_host::host::check_kvm().is_ok(),
            }),
        };
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut servers = Vec::new();
        let mut tcp = None;
        if let Some(addr) = config.listen {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Io {
                    what: "cannot listen on",
                    path: PathBuf::from(addr.to_string()),
                    source,
                })?;
            tcp = listener.local_addr().ok();
            let token: Arc<str> = Arc::from(config.token.clone().unwrap_or_default());
            servers.push(serve(
                listener,
                api::router(state.clone(), Some(token)),
                stop_rx.clone(),
            ));
        }
        let mut e2b_addrs = (None, None);
        if let Some(e2b) = &config.e2b {
            let bind = |addr: SocketAddr| async move {
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::Io {
                        what: "cannot listen on",
                        path: PathBuf::from(addr.to_string()),
                        source,
                    })
            };
            let api = bind(e2b.api).await?;
            e2b_addrs.0 = api.local_addr().ok();
            let rest = crate::e2b::rest::router(crate::e2b::rest::RestState::new(
                state.clone(),
                e2b.api_keys.clone(),
            ));
            servers.push(serve(api, rest, stop_rx.clone()));
            if let Some(addr) = e2b.envd {
                let envd = bind(addr).await?;
                e2b_addrs.1 = envd.local_addr().ok();
                let router =
                    crate::e2b::envd::router(crate::e2b::envd::EnvdState::new(state.clone()));
                servers.push(serve(envd, router, stop_rx.clone()));
            }
        }
        // The Unix socket last: once its file exists, every listener is bound (clients and
        // tests wait for that file).
        let unix = bind_unix(&config.socket)?;
        servers.push(serve(
            unix,
            api::router(state.clone(), None),
            stop_rx.clone(),
        ));
        let background = vec![
            periodic(Arc::clone(&engine), REAP_EVERY, stop_rx.clone(), |e| {
                e.reap_expired();
            }),
            periodic(Arc::clone(&engine), PRUNE_EVERY, stop_rx, |e| {
                if let Err(err) = e.prune_ended() {
                    tracing::warn!(error = %err, "pruning ended sandboxes");
                }
            }),
        ];
        tracing::info!(socket = %config.socket.display(), tcp = ?tcp,
            e2b_api = ?e2b_addrs.0, e2b_envd = ?e2b_addrs.1,
            state_dir = %config.state_dir.display(), runtime_dir = %config.runtime_dir.display(),
            sandboxes = recovery.sandboxes_adopted, pooled = recovery.pooled_adopted,
            startup_ms = t0.elapsed().as_secs_f64() * 1e3, "emberd serving");
        Ok(Daemon {
            engine,
            recovery,
            socket: config.socket,
            tcp,
            e2b_api: e2b_addrs.0,
            e2b_envd: e2b_addrs.1,
            stop_tx,
            servers,
            background,
            _lock: lock,
        })
    }

    /// The Unix socket it serves on.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The TCP address it serves on, if any (the real port when 0 was asked).
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp
    }

    /// The E2B REST API's address, if served.
    pub fn e2b_api_addr(&self) -> Option<SocketAddr> {
        self.e2b_api
    }

    /// The E2B envd listener's address, if served.
    pub fn e2b_envd_addr(&self) -> Option<SocketAddr> {
        self.e2b_envd
    }

    /// The graceful stop: stops accepting, lets requests in flight finish, stops the background
    /// work and leaves every VM running (recorded, for the next start to adopt).
    pub async fn stop(self) {
        let _ = self.stop_tx.send(true);
        for s in self.servers {
            let _ = s.await;
        }
        for b in self.background {
            let _ = b.await;
        }
        let engine = self.engine;
        let _ = tokio::task::spawn_blocking(move || engine.leave()).await;
        let _ = std::fs::remove_file(&self.socket);
        tracing::info!("emberd stopped; VMs left running");
    }
}

/// Binds the API's Unix socket with mode 0660, replacing a stale socket file (one nobody
/// answers on).
fn bind_unix(path: &Path) -> Result<tokio::net::UnixListener, StartError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io("cannot create", dir))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(StartError::SocketInUse(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(io("cannot remove the stale socket", path))?;
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(io("cannot listen on", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(io("cannot set the mode of", path))?;
    Ok(listener)
}

fn serve<L>(listener: L, app: axum::Router, mut stop: watch::Receiver<bool>) -> JoinHandle<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    tokio::spawn(async move {
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "the API server failed");
        }
    })
}

fn periodic(
    engine: Arc<Engine>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
    work: fn(&Engine),
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let e = Arc::clone(&engine);
            if let Err(err) = tokio::task::spawn_blocking(move || work(&e)).await {
                tracing::error!(error = %err, "background work failed");
            }
        }
    })
}

/// Writes the probe guest (baked into this binary) into the state directory, once per build of
/// it, and returns its path.
fn write_probe(state_dir: &Path) -> Result<PathBuf, StartError> {
    let bytes = ember_probe_image::probe_elf_bytes();
    let dir = state_dir.join("guests");
    std::fs::create_dir_all(&dir).map_err(io("cannot create", &dir))?;
    let digest = crc32fast::hash(bytes);
    let path = dir.join(format!("probe-{digest:08x}.elf"));
    if std::fs::read(&path).is_ok_and(|old| old == bytes) {
        return Ok(path);
    }
    let tmp = dir.join(format!(".probe-{digest:08x}.tmp"));
    std::fs::write(&tmp, bytes).map_err(io("cannot write", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(io("cannot rename into place", &path))?;
    Ok(path)
}
