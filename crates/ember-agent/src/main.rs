//! `ember-agent`: ember's guest agent for Linux.
//!
//! Serves ember's agent protocol (`crates/ember-agent-proto/WIRE-FORMAT.md`) over AF_VSOCK in a
//! guest, or over a Unix socket speaking Firecracker's hybrid-vsock handshake for tests on a
//! host: real commands (argv, env, cwd, user, stdin, time limits), background processes with
//! streamed output, the guest's files, TCP connections to the guest's loopback ports (so the
//! host can reach servers inside), and Reseed (entropy and wall clock) for clones. It can
//! be the guest's PID 1 (mounts, reaping, power-off) or run under another init.
//!
//! Module map: `listen` (sockets, handshake) → `server` (connections, dispatch) → handlers:
//! `exec` (run to completion), `procs` (background processes and their streams), `files`,
//! `agent` (Health, Reseed, Shutdown), `tcp` (TcpConnect: a byte pipe to a port on the guest's
//! loopback); beneath them `process` (prepare, spawn, reaper, pump),
//! `paths`, `users`, `refusal`; `init` for PID 1 and signals. `unsafe` lives only in
//! `process::spawn` (fork/exec), `reseed` (the RNDADDENTROPY ioctl) and `netif` (bringing `lo`
//! up as init).
#![deny(unsafe_code)]

mod agent;
mod exec;
mod files;
mod init;
mod listen;
mod netif;
mod paths;
mod process;
mod procs;
mod refusal;
mod reseed;
mod server;
mod tcp;
mod users;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;

use crate::agent::{Agent, AgentConfig, ShutdownMode};
use crate::listen::{Listen, Listener};

/// ember's guest agent.
#[derive(Debug, Parser)]
#[command(name = "ember-agent", version, about)]
struct Args {
    /// Where to listen: `vsock:PORT` (in a guest) or `unix:PATH` (a Unix socket speaking the
    /// hybrid-vsock handshake, for tests).
    #[arg(long, default_value = "vsock:52")]
    listen: Listen,
    /// The guest port a `unix:` listener's handshake must name (`CONNECT <port>`).
    #[arg(long, default_value_t = 52)]
    port: u32,
    /// Working directory of commands without `cwd`, and base of relative paths.
    #[arg(long, default_value = "/")]
    workdir: PathBuf,
    /// Act as init (mount /proc, /sys, /dev, /tmp; bring `lo` up; power off on Shutdown and
    /// SIGTERM):
    /// `auto` when PID 1.
    #[arg(long, value_enum, default_value_t = InitMode::Auto)]
    init: InitMode,
    /// Where `passwd` and `group` are.
    #[arg(long, default_value = "/etc")]
    etc: PathBuf,
    /// The device Reseed mixes entropy into.
    #[arg(long, default_value = "/dev/random")]
    random: PathBuf,
    /// Log filter (tracing's env-filter syntax); `EMBER_AGENT_LOG` overrides it.
    #[arg(long, default_value = "info")]
    log: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum InitMode {
    Auto,
    Yes,
    No,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = std::env::var("EMBER_AGENT_LOG").unwrap_or_else(|_| args.log.clone());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .init();
    let as_init = match args.init {
        InitMode::Auto => init::is_pid1(),
        InitMode::Yes => true,
        InitMode::No => false,
    };
    let result = run(args, as_init);
    if let Err(e) = &result
        && init::is_pid1()
    {
        // Init must not exit (the kernel panics): say why and power off instead.
        tracing::error!(error = format!("{e:#}"), "ember-agent failed as PID 1");
        init::power_off();
    }
    result
}

fn run(args: Args, as_init: bool) -> anyhow::Result<()> {
    init::ensure_std_fds();
    if as_init {
        init::mount_basics();
        match netif::bring_up("lo") {
            Ok(changed) => tracing::info!(changed, "loopback up"),
            Err(e) => tracing::warn!(error = %e, "cannot bring the loopback interface up"),
        }
    }
    // Before any thread starts, so every thread inherits the mask.
    init::block_signals().context("blocking signals")?;

    let agent = Agent::new(AgentConfig {
        workdir: args.workdir.clone(),
        etc: args.etc.clone(),
        random: args.random.clone(),
        name: "ember-agent".to_owned(),
        shutdown: if as_init {
            ShutdownMode::PowerOff
        } else {
            ShutdownMode::Exit
        },
    })
    .context("starting the agent")?;
    let listener = Listener::bind(&args.listen, args.port)
        .with_context(|| format!("listening on {}", args.listen))?;
    let socket_file = match &args.listen {
        Listen::Unix(path) => Some(path.clone()),
        Listen::Vsock(_) => None,
    };
    init::spawn_signal_thread(std::sync::Arc::clone(&agent), move || {
        if let Some(path) = socket_file {
            let _ = std::fs::remove_file(path);
        }
    })
    .context("starting the signal thread")?;
    tracing::info!(listen = %args.listen, pid = std::process::id(), init = as_init, "ember-agent serving");
    server::run(&agent, &listener).context("serving")?;
    Ok(())
}
