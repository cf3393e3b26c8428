//! `emberd`: ember's host daemon.
//!
//! ```text
//! emberd [--socket /run/ember/ember.sock] [--listen 127.0.0.1:PORT --token-file F]
//!        [--state-dir /var/lib/ember] [--runtime-dir /run/ember/vms] [--vmm PATH]
//!        [--agent-bin PATH] [--agent-timeout-secs 10]
//!        [--jailer PATH | --no-jail] [--vm-uid-base N] [--vm-gid N] [--vm-cpu-weight W]
//!        [--vm-cpu-quota Q/P] [--vm-memory-max BYTES] [--vm-memory-overhead BYTES]
//!        [--vm-pids-max N]
//!        [--log-format text|json] [--log-level info]
//! emberd --print-openapi        the API's OpenAPI document (what /openapi.json serves)
//! ```
//! Every VMM runs jailed (ember-jailer, found next to emberd, in `$EMBER_JAILER_BIN` or on
//! `$PATH`): its own namespaces, root directory, uid and cgroup. `--no-jail` turns that off
//! (for debugging; emberd then warns).
//!
//! SIGTERM or SIGINT stops it gracefully: no new connections, requests in flight finish, every
//! VM keeps running for the next start to adopt.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use emberd::{Daemon, DaemonConfig, Limits};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Parser)]
#[command(
    name = "emberd",
    version,
    about = "ember's host daemon: templates, warm pools and sandboxes over an HTTP API"
)]
struct Args {
    /// The Unix socket the API listens on (mode 0660).
    #[arg(long, default_value = "/run/ember/ember.sock")]
    socket: PathBuf,
    /// Also serve the API on this TCP address (every request then needs the bearer token).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// A file holding the bearer token for TCP requests (its first line).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// The store, templates' guests and snapshots.
    #[arg(long, default_value = "/var/lib/ember")]
    state_dir: PathBuf,
    /// VM directories and sockets (tmpfs recommended; keep the path short).
    #[arg(long, default_value = "/run/ember/vms")]
    runtime_dir: PathBuf,
    /// The ember-vmm binary (default: $EMBER_VMM_BIN, next to emberd, or $PATH).
    #[arg(long)]
    vmm: Option<PathBuf>,
    /// The static ember-agent put into templates' Linux images (a template whose guest is an
    /// `image`; default: $EMBER_AGENT_BIN, or ember-agent next to emberd).
    #[arg(long)]
    agent_bin: Option<PathBuf>,
    /// Spare VMM processes kept ready for creates.
    #[arg(long, default_value_t = 4)]
    spares: usize,
    /// Most sandboxes running or paused at once.
    #[arg(long, default_value_t = 1024)]
    max_sandboxes: usize,
    /// Largest file moved by the files API, bytes.
    #[arg(long, default_value_t = 64 << 20)]
    max_file_bytes: usize,
    /// How long connecting to a guest's agent, or one agent call other than an exec, may take
    /// before the guest counts as unreachable, seconds (raise it for slow guests).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    agent_timeout_secs: u64,
    /// How long ended sandboxes' records are kept, seconds.
    #[arg(long, default_value_t = 24 * 3600)]
    ended_retention_secs: u64,
    /// Serve E2B's REST API here (e.g. 127.0.0.1:3000; needs --e2b-api-key-file).
    #[arg(long)]
    e2b_api: Option<SocketAddr>,
    /// API keys the E2B REST API accepts in X-API-KEY, one a line.
    #[arg(long)]
    e2b_api_key_file: Option<PathBuf>,
    /// Serve E2B's envd for every sandbox here (e.g. 127.0.0.1:49983; set the SDK's
    /// E2B_SANDBOX_URL to it).
    #[arg(long)]
    e2b_envd: Option<SocketAddr>,
    /// The ember-jailer binary (default: $EMBER_JAILER_BIN, next to emberd, or $PATH; unused
    /// with --no-jail).
    #[arg(long)]
    jailer: Option<PathBuf>,
    /// Run VMMs unjailed, in the host's namespaces as root (debugging only).
    #[arg(long)]
    no_jail: bool,
    /// First uid of jailed VMMs (each gets its own above it).
    #[arg(long, default_value_t = 3_000_000)]
    vm_uid_base: u32,
    /// The gid of jailed VMMs.
    #[arg(long, default_value_t = 3_000_000)]
    vm_gid: u32,
    /// CPU weight of each VMM's cgroup (1-10000; 100 is an even share).
    #[arg(long)]
    vm_cpu_weight: Option<u64>,
    /// CPU quota of each VMM as QUOTA_US/PERIOD_US (50000/100000 = half a CPU).
    #[arg(long, value_parser = parse_quota)]
    vm_cpu_quota: Option<(u64, u64)>,
    /// Memory limit of each VMM's cgroup, bytes (guest memory plus the VMM's own).
    #[arg(long)]
    vm_memory_max: Option<u64>,
    /// Size each VMM's memory limit to its VM: guest memory plus this many bytes (replaces
    /// --vm-memory-max for that VM). Snapshots a jailed VMM writes (pause to disk) are charged
    /// to its cgroup while written, and stay charged on a tmpfs state dir: leave room.
    #[arg(long)]
    vm_memory_overhead: Option<u64>,
    /// Most tasks (threads) in each VMM's cgroup.
    #[arg(long, default_value_t = 64)]
    vm_pids_max: u64,
    /// Give every sandbox its own network: a namespace with the guest's TAP, a unique address
    /// on the host (a veth), NAT out and an egress policy (needs nftables).
    #[arg(long)]
    sandbox_network: bool,
    /// Sandbox addresses come from this subnet (with --sandbox-network).
    #[arg(long, default_value = "172.30.0.0/16")]
    net_subnet: ember_store::Ipv4Subnet,
    /// Host interfaces are named this prefix and a number; namespaces `ember-<name>`, nft
    /// tables `ember_<prefix>` (with --sandbox-network; distinct per daemon on one host).
    #[arg(long, default_value = "embtap")]
    net_prefix: String,
    /// The egress policy of sandboxes whose create names none: `allow` (all but the host and
    /// link-local) or `deny` (nothing).
    #[arg(long, default_value = "allow", value_parser = ["allow", "deny"])]
    default_egress: String,
    /// Log lines as text or JSON (on stderr).
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Log level (or a tracing filter, e.g. `emberd=debug,info`).
    #[arg(long, default_value = "info")]
    log_level: String,
    /// Print the OpenAPI document and exit.
    #[arg(long)]
    print_openapi: bool,
}

fn parse_quota(s: &str) -> Result<(u64, u64), String> {
    let (q, p) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?}: expected QUOTA_US/PERIOD_US, e.g. 50000/100000"))?;
    let n = |x: &str| x.parse::<u64>().map_err(|e| format!("{x:?}: {e}"));
    Ok((n(q)?, n(p)?))
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.print_openapi {
        print!("{}", emberd::api::openapi_json());
        return ExitCode::SUCCESS;
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .with_target(false);
    match args.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("emberd")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("emberd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("emberd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<()> {
    let token = match &args.token_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the token file {}", path.display()))?;
            let token = text.lines().next().unwrap_or("").trim().to_string();
            if token.len() < 16 {
                bail!(
                    "the token in {} is {} characters; use at least 16",
                    path.display(),
                    token.len()
                );
            }
            Some(token)
        }
        None => None,
    };
    let vmm = match args.vmm {
        Some(p) => p,
        None => ember_runtime::locate_ember_vmm().context(
            "the ember-vmm binary was not found (next to emberd, $EMBER_VMM_BIN or $PATH); \
             pass --vmm",
        )?,
    };
    let e2b = match (args.e2b_api, &args.e2b_api_key_file, args.e2b_envd) {
        (None, None, None) => None,
        (Some(api), Some(keys), envd) => Some(emberd::e2b::E2bConfig {
            api,
            api_keys: emberd::e2b::read_keys(keys).map_err(anyhow::Error::msg)?,
            envd,
        }),
        (Some(_), None, _) => bail!("--e2b-api needs --e2b-api-key-file"),
        (None, _, _) => bail!("--e2b-envd and --e2b-api-key-file need --e2b-api"),
    };
    let jail = if args.no_jail {
        tracing::warn!("--no-jail: VMMs run unjailed, as root in the host's namespaces");
        None
    } else {
        let jailer = match args.jailer {
            Some(p) => p,
            None => ember_runtime::locate_ember_jailer().context(
                "the ember-jailer binary was not found (next to emberd, $EMBER_JAILER_BIN or \
                 $PATH); pass --jailer, or --no-jail to run VMMs unjailed",
            )?,
        };
        let mut settings = ember_runtime::jail::JailSettings::new(jailer);
        settings.uid_base = args.vm_uid_base;
        settings.gid = args.vm_gid;
        settings.limits.cpu_weight = args.vm_cpu_weight;
        settings.limits.cpu_quota = args.vm_cpu_quota;
        settings.limits.memory_max = args.vm_memory_max;
        settings.limits.pids_max = Some(args.vm_pids_max);
        settings.memory_overhead = args.vm_memory_overhead;
        Some(settings)
    };
    let network = args.sandbox_network.then(|| {
        emberd::engine::network::NetworkSettings::new(
            args.net_subnet,
            &args.net_prefix,
            if args.default_egress == "deny" {
                ember_core::EgressPolicy::deny_all()
            } else {
                ember_core::EgressPolicy::allow_all()
            },
        )
    });
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let daemon = Daemon::start(DaemonConfig {
        socket: args.socket,
        listen: args.listen,
        token,
        state_dir: args.state_dir,
        runtime_dir: args.runtime_dir,
        vmm,
        spares: args.spares,
        limits: Limits {
            max_sandboxes: args.max_sandboxes,
            max_file_bytes: args.max_file_bytes,
            ended_retention: std::time::Duration::from_secs(args.ended_retention_secs),
            agent_timeout: std::time::Duration::from_secs(args.agent_timeout_secs),
        },
        e2b,
        jail,
        network,
        agent_bin: args.agent_bin,
    })
    .await
    .context("starting emberd")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping gracefully"),
        _ = int.recv() => tracing::info!("SIGINT: stopping gracefully"),
    }
    daemon.stop().await;
    Ok(())
}
