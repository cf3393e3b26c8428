//! `ember`: the command line of ember — a client of emberd, and the demo and benchmarks.
//!
//! ```text
//! ember image build [--packages a,b | --from-dir DIR | --from-tar FILE]   a Linux guest image
//! ember template build NAME [--image DIR] [--network] | ls | rm NAME   templates (boot, agent, snapshot)
//! ember pool set TEMPLATE --min N | ls | rm     warm pools
//! ember run TEMPLATE [--label k=v] [--env K=V] [--timeout 300s]
//!           [--egress allow|deny] [--allow RULE]... [--deny RULE]... [--dns]
//! ember network ID [--egress ...] [--allow RULE]... [--deny RULE]... [--dns]
//! ember expose ID GUEST_PORT                    a guest TCP port on the host's loopback
//! ember exec ID -- CMD ARGS...                  streams output, exits with the command's code
//! ember cp SRC DST                              one side SANDBOX:/path
//! ember ls | inspect ID | pause ID | resume ID | rm ID... | timeout ID 10m | info
//! ember demo                                    an embedded emberd, end to end through its API
//! ember bench <boot|restore|acquire|density|vsock|api>
//! ```
//! Client commands reach emberd at `--host` (`unix:///run/ember/ember.sock` by default, or
//! `$EMBER_HOST`; `http://HOST:PORT` with `--token-file`). Tables by default, `--json` everywhere.
//! Without a usable `/dev/kvm`, `demo` and `bench` say so in one line and exit non-zero. Their
//! options are checked before anything starts; on SIGINT, SIGTERM or SIGHUP they kill their VMM
//! processes, remove their directory, say so and exit with 128 + the signal's number.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use ember::bench::Acquirers;
use ember::bench::{self, BenchKind, BenchOptions, BenchReport};
use ember::demo::{self, DemoOptions, DemoReport};
use ember::interrupt;
use ember::output::latency_table;
use ember::remote::{self, EgressArgs, LsArgs, Out, PoolArgs, TemplateArgs, parse_duration_secs};
use ember_core::SandboxState;
use ember_host::ui::Ui;
use ember_host::warm::Pooled;
use emberd::client::{Client, Endpoint};
use indicatif::{ProgressBar, ProgressStyle};

/// The probe guest's agent port.
const DEFAULT_AGENT_PORT: u32 = ember_probe_image::AGENT_PORT;

#[derive(Debug, Parser)]
#[command(
    name = "ember",
    version,
    about = "ember: microVM sandboxes handed to tenants in milliseconds"
)]
struct Cli {
    /// Where emberd listens: unix:///path/to/ember.sock or http://HOST:PORT.
    #[arg(
        long,
        global = true,
        env = "EMBER_HOST",
        default_value = "unix:///run/ember/ember.sock"
    )]
    host: String,
    /// The bearer token for an http:// host (a file holding it).
    #[arg(long, global = true, env = "EMBER_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Print results as JSON on stdout (progress still goes to stderr).
    #[arg(long, global = true)]
    json: bool,
    /// Where session directories go: tmpfs (VM directories are made and removed per VM) and
    /// short (Unix socket paths live under it).
    #[arg(long, global = true, default_value = "/dev/shm")]
    workdir: PathBuf,
    /// The ember-vmm binary (default: $EMBER_VMM_BIN, next to this binary, $PATH, or built).
    #[arg(long, global = true)]
    vmm: Option<PathBuf>,
    /// The guest agent's vsock port.
    #[arg(long, global = true, default_value_t = DEFAULT_AGENT_PORT)]
    agent_port: u32,
    /// How pooled VMs wait for their tenant: running (no resume at handover; the probe template
    /// is tickless, so an idle running VM costs no CPU) or paused (no CPU whatever the guest).
    #[arg(long, global = true, default_value = "running")]
    pooled: Pooled,
    /// `demo`: run the embedded daemon's VMMs unjailed (by default they run under ember-jailer
    /// when it is found next to this binary, in $EMBER_JAILER_BIN or on $PATH).
    #[arg(long, global = true)]
    no_jail: bool,
    /// Log level for diagnostics on stderr.
    #[arg(long, global = true, default_value = "warn")]
    log_level: tracing::level_filters::LevelFilter,
    #[command(subcommand)]
    command: Command,
}

// Parsed once per run: the size of the largest variant costs nothing worth boxing for.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum TemplateCmd {
    /// Builds a template: boots the guest, waits for its agent, snapshots it.
    Build {
        /// Its name.
        name: String,
        /// Boot an image made by `ember image build` (its directory: kernel, initramfs,
        /// read-only root filesystem and command line from its image.json).
        #[arg(long, conflicts_with_all = ["kernel", "initrd", "rootfs"])]
        image: Option<PathBuf>,
        /// Have emberd build a Linux image for it first (as `ember image build` does, on
        /// emberd's host, cached in its state dir): a debootstrap of Debian with the default
        /// packages, or what --packages, --from-dir or --from-tar say.
        #[arg(long, conflicts_with_all = ["image", "kernel", "initrd", "rootfs"])]
        build_image: bool,
        /// Debian packages for the image emberd builds, comma-separated (implies
        /// --build-image; replaces the default bash,coreutils,python3).
        #[arg(long, value_delimiter = ',', conflicts_with_all = ["image", "kernel", "from_dir", "from_tar"])]
        packages: Option<Vec<String>>,
        /// The Debian suite of the image emberd builds (implies --build-image).
        #[arg(long, conflicts_with_all = ["image", "kernel", "from_dir", "from_tar"])]
        suite: Option<String>,
        /// The Debian mirror of the image emberd builds (implies --build-image).
        #[arg(long, conflicts_with_all = ["image", "kernel", "from_dir", "from_tar"])]
        mirror: Option<String>,
        /// Build the image from this directory on emberd's host (implies --build-image).
        #[arg(long, conflicts_with_all = ["image", "kernel", "from_tar"])]
        from_dir: Option<PathBuf>,
        /// Build the image from this tarball on emberd's host, e.g. `docker export` output
        /// (implies --build-image).
        #[arg(long, conflicts_with_all = ["image", "kernel"])]
        from_tar: Option<PathBuf>,
        /// Boot this kernel instead of the probe guest.
        #[arg(long)]
        kernel: Option<PathBuf>,
        /// The kernel's initrd.
        #[arg(long)]
        initrd: Option<PathBuf>,
        /// The root filesystem image.
        #[arg(long)]
        rootfs: Option<PathBuf>,
        /// Attach the root filesystem read-only (shared by every clone; images from
        /// `ember image build` are meant to be: their guests write to an overlay in memory).
        #[arg(long)]
        rootfs_read_only: bool,
        /// The vsock port the guest's agent listens on (default: the probe's, 52).
        #[arg(long = "guest-agent-port")]
        guest_agent_port: Option<u32>,
        /// How long the guest may take from boot to its agent's first answer (e.g. 120s).
        #[arg(long, value_parser = parse_duration_secs)]
        boot_timeout: Option<u64>,
        /// Kernel command line (added after the probe's own).
        #[arg(long)]
        boot_args: Option<String>,
        /// vCPUs of every sandbox.
        #[arg(long)]
        vcpus: Option<u8>,
        /// Memory of every sandbox, MiB.
        #[arg(long)]
        mem: Option<u32>,
        /// Give the guest a network interface (its sandboxes get networks from an emberd
        /// started with --sandbox-network).
        #[arg(long)]
        network: bool,
    },
    /// Lists templates.
    Ls,
    /// Deletes a template (refused while a pool or sandbox uses it).
    Rm {
        /// Its name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum ImageCmd {
    /// Builds (or finds in its cache) a kernel, initramfs and read-only root filesystem for
    /// Linux guests: a debootstrap of Debian with ember-agent, or a directory or tarball.
    /// Needs root.
    Build(ember::image::BuildArgs),
}

#[derive(Debug, Subcommand)]
enum PoolCmd {
    /// Creates or changes a template's warm pool.
    Set {
        /// The template.
        template: String,
        /// Keep at least this many warm VMs.
        #[arg(long)]
        min: u32,
        /// Never more than this many (default: --min).
        #[arg(long)]
        max: Option<u32>,
        /// Pooled VMs wait paused (default: running, idle).
        #[arg(long)]
        paused: bool,
        /// Replace warm VMs older than this (e.g. 1h).
        #[arg(long, value_parser = parse_duration_secs)]
        max_age: Option<u64>,
        /// Restores at once.
        #[arg(long)]
        parallelism: Option<u32>,
        /// Return at once instead of waiting (with a progress bar) until the pool is full.
        #[arg(long)]
        no_wait: bool,
    },
    /// Lists pools with their counts.
    Ls,
    /// Deletes a pool (its idle VMs are destroyed).
    Rm {
        /// The template.
        template: String,
    },
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Linux guest images: build.
    Image {
        #[command(subcommand)]
        cmd: ImageCmd,
    },
    /// Templates: build, ls, rm.
    Template {
        #[command(subcommand)]
        cmd: TemplateCmd,
    },
    /// Warm pools: set, ls, rm.
    Pool {
        #[command(subcommand)]
        cmd: PoolCmd,
    },
    /// Creates a sandbox from a template and prints its id.
    Run {
        /// The template.
        template: String,
        /// A label, KEY=VALUE (repeat for more).
        #[arg(long = "label")]
        labels: Vec<String>,
        /// An environment variable for every command, KEY=VALUE (repeat for more).
        #[arg(long = "env")]
        env: Vec<String>,
        /// Kill it after this long (e.g. 300s, 10m; default 300s).
        #[arg(long, value_parser = parse_duration_secs)]
        timeout: Option<u64>,
        /// Its egress policy (any of these flags makes one; none: the daemon's default).
        #[command(flatten)]
        egress: EgressArgs,
    },
    /// Runs a command in a sandbox; streams its output and exits with its exit code.
    Exec {
        /// The sandbox.
        id: String,
        /// An environment variable, KEY=VALUE (repeat for more).
        #[arg(long = "env")]
        env: Vec<String>,
        /// Feed this file to the command's standard input (- for this one's).
        #[arg(long)]
        stdin: Option<PathBuf>,
        /// The command's time limit (e.g. 30s).
        #[arg(long, value_parser = parse_duration_secs)]
        timeout: Option<u64>,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Copies a file into or out of a sandbox: `ember cp ./f ID:/f` or `ember cp ID:/f ./f`.
    Cp {
        /// From (a local path, - for stdin, or ID:/path).
        src: String,
        /// To (a local path, - for stdout, or ID:/path).
        dst: String,
        /// The new file's permission bits, octal (default 644).
        #[arg(long, value_parser = parse_mode)]
        mode: Option<u32>,
    },
    /// Lists sandboxes (live ones unless --all or --state).
    Ls {
        /// Only this state (creating, running, paused, ended); repeat for more.
        #[arg(long = "state")]
        states: Vec<SandboxState>,
        /// Ended ones too.
        #[arg(long)]
        all: bool,
        /// Only this template's.
        #[arg(long)]
        template: Option<String>,
        /// Only those with this label, KEY=VALUE (repeat: all must match).
        #[arg(long = "label")]
        labels: Vec<String>,
        /// At most this many.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Prints a sandbox's whole record (JSON; its network, when it has one, under `network`).
    Inspect {
        /// The sandbox.
        id: String,
    },
    /// Pauses a sandbox (in memory).
    Pause {
        /// The sandbox.
        id: String,
    },
    /// Resumes a paused sandbox.
    Resume {
        /// The sandbox.
        id: String,
    },
    /// Kills sandboxes.
    Rm {
        /// The sandboxes.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Sets a sandbox's time limit, from now (e.g. 10m).
    Timeout {
        /// The sandbox.
        id: String,
        /// How long from now.
        #[arg(value_parser = parse_duration_secs)]
        duration: u64,
    },
    /// Replaces a sandbox's egress policy (given any policy flag), then prints its network:
    /// address, policy, exposed ports.
    Network {
        /// The sandbox.
        id: String,
        /// The new policy (none of these flags: only print).
        #[command(flatten)]
        egress: EgressArgs,
    },
    /// Exposes a sandbox's guest TCP port on the host's loopback and prints the address.
    Expose {
        /// The sandbox.
        id: String,
        /// The guest's TCP port.
        #[arg(value_parser = clap::value_parser!(u16).range(1..))]
        guest_port: u16,
    },
    /// What the daemon runs and holds.
    Info,
    /// An embedded emberd end to end through its API: template, warm pool, sandboxes one by
    /// one and at once, exec, files, a latency table, cleanup.
    Demo {
        /// Sandboxes one after another.
        #[arg(long, default_value_t = 10)]
        sequential: usize,
        /// Sandboxes at once.
        #[arg(long, default_value_t = 32)]
        concurrent: usize,
        /// Warm pool depth.
        #[arg(long, default_value_t = 32)]
        depth: usize,
    },
    /// Measures one part of the system.
    Bench {
        /// What to measure.
        kind: BenchKind,
        /// Samples (or handoffs, for acquire).
        #[arg(long, default_value_t = 200)]
        iterations: usize,
        /// Concurrent workers (acquirers, restorers).
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// VMs for the density benchmark, live sandboxes for the API benchmark (default: 50 for
        /// density, 200 for api).
        #[arg(long)]
        vms: Option<usize>,
        /// Handoffs (acquire) or creates (api) per second in the benchmarks' paced phase.
        #[arg(long, default_value_t = 100)]
        rate: u32,
        /// Which threads acquire in the acquire benchmark's bursts: fresh ones each round, or
        /// long-lived ones that sleep between rounds (as a server's request threads do).
        #[arg(long, value_enum, default_value = "per-round")]
        acquirers: Acquirers,
    },
}

/// Progress bars on stderr, one per stage.
#[derive(Default)]
struct Bars {
    current: Mutex<Option<ProgressBar>>,
}

impl Ui for Bars {
    fn stage(&self, name: &str, total: Option<u64>) {
        let bar = match total {
            Some(n) => ProgressBar::new(n).with_style(
                ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            ),
            None => ProgressBar::new_spinner(),
        };
        bar.set_message(name.to_string());
        bar.enable_steady_tick(Duration::from_millis(100));
        if let Some(old) = self.lock().replace(bar) {
            old.finish_and_clear();
        }
    }

    fn progress(&self, done: u64) {
        if let Some(bar) = self.lock().as_ref() {
            bar.set_position(done);
        }
    }

    fn finish(&self, summary: &str) {
        if let Some(bar) = self.lock().take() {
            let name = bar.message();
            bar.finish_and_clear();
            eprintln!("✓ {name}: {summary}");
        }
    }
}

impl Bars {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<ProgressBar>> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Removes the current bar (the run was interrupted).
    fn clear(&self) {
        if let Some(bar) = self.lock().take() {
            bar.finish_and_clear();
        }
    }
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("{s:?} is not a permission mode in octal (e.g. 644)"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(cli.log_level)
        .with_target(false)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    };
    // An interrupted benchmark's blocking thread may still be running: it is not waited for.
    runtime.shutdown_background();
    code
}

fn client(cli: &Cli) -> Result<Client> {
    let token = match &cli.token_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("reading the token file {}", p.display()))?
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string(),
        ),
        None => None,
    };
    Ok(Client::new(Endpoint::parse(&cli.host, token)?))
}

fn bar(msg: &str, total: Option<u64>) -> ProgressBar {
    let b = match total {
        Some(n) => ProgressBar::new(n).with_style(
            ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        ),
        None => ProgressBar::new_spinner(),
    };
    b.set_message(msg.to_string());
    b.enable_steady_tick(Duration::from_millis(100));
    b
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    let mut out = Out {
        stdout: &mut stdout,
        stderr: &mut stderr,
        json: cli.json,
    };
    let ok = Ok(ExitCode::SUCCESS);
    match &cli.command {
        Command::Image {
            cmd: ImageCmd::Build(args),
        } => {
            let (args, json) = (args.clone(), cli.json);
            let ui = Arc::new(Bars::default());
            let bars = Arc::clone(&ui);
            let r = tokio::task::spawn_blocking(move || {
                let mut stdout = std::io::stdout();
                ember::image::build(&args, json, &*bars, &mut stdout)
            })
            .await?;
            ui.clear();
            r?;
            ok
        }
        Command::Template { cmd } => {
            let c = client(&cli)?;
            match cmd {
                TemplateCmd::Build {
                    name,
                    image,
                    build_image,
                    packages,
                    suite,
                    mirror,
                    from_dir,
                    from_tar,
                    kernel,
                    initrd,
                    rootfs,
                    rootfs_read_only,
                    guest_agent_port,
                    boot_timeout,
                    boot_args,
                    vcpus,
                    mem,
                    network,
                } => {
                    let b = (!cli.json).then(|| bar(&format!("building template {name}"), None));
                    let r = remote::template_build(
                        &c,
                        &mut out,
                        name,
                        TemplateArgs {
                            image: image.clone(),
                            build_image: image_source(
                                *build_image,
                                packages,
                                suite,
                                mirror,
                                from_dir,
                                from_tar,
                            ),
                            kernel: kernel.clone(),
                            initrd: initrd.clone(),
                            rootfs: rootfs.clone(),
                            rootfs_read_only: *rootfs_read_only,
                            agent_port: *guest_agent_port,
                            boot_timeout_ms: boot_timeout.map(|s| s.saturating_mul(1000)),
                            boot_args: boot_args.clone(),
                            vcpus: *vcpus,
                            mem_mib: *mem,
                            network: *network,
                        },
                    )
                    .await;
                    if let Some(b) = b {
                        b.finish_and_clear();
                    }
                    r?;
                }
                TemplateCmd::Ls => remote::template_ls(&c, &mut out).await?,
                TemplateCmd::Rm { name } => remote::template_rm(&c, &mut out, name).await?,
            }
            ok
        }
        Command::Pool { cmd } => {
            let c = client(&cli)?;
            match cmd {
                PoolCmd::Set {
                    template,
                    min,
                    max,
                    paused,
                    max_age,
                    parallelism,
                    no_wait,
                } => {
                    let b = (!cli.json && !*no_wait).then(|| {
                        bar(
                            &format!("filling the pool of {template}"),
                            Some(u64::from(*min)),
                        )
                    });
                    let r = remote::pool_set(
                        &c,
                        &mut out,
                        template,
                        PoolArgs {
                            min: *min,
                            max: *max,
                            paused: *paused,
                            max_age_secs: *max_age,
                            parallelism: *parallelism,
                            wait: !*no_wait,
                        },
                        |depth, _| {
                            if let Some(b) = &b {
                                b.set_position(depth as u64);
                            }
                        },
                    )
                    .await;
                    if let Some(b) = b {
                        b.finish_and_clear();
                    }
                    r?;
                }
                PoolCmd::Ls => remote::pool_ls(&c, &mut out).await?,
                PoolCmd::Rm { template } => remote::pool_rm(&c, &mut out, template).await?,
            }
            ok
        }
        Command::Run {
            template,
            labels,
            env,
            timeout,
            egress,
        } => {
            remote::run(
                &client(&cli)?,
                &mut out,
                template,
                labels,
                env,
                *timeout,
                egress.policy(),
            )
            .await?;
            ok
        }
        Command::Exec {
            id,
            env,
            stdin,
            timeout,
            command,
        } => {
            let stdin = match stdin {
                None => None,
                Some(p) if p.as_os_str() == "-" => {
                    let mut b = Vec::new();
                    std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)?;
                    Some(b)
                }
                Some(p) => {
                    Some(std::fs::read(p).with_context(|| format!("reading {}", p.display()))?)
                }
            };
            let timeout_ms =
                timeout.map(|s| u32::try_from(s.saturating_mul(1000)).unwrap_or(u32::MAX));
            let code = remote::exec(
                &client(&cli)?,
                &mut out,
                id,
                command.clone(),
                env,
                stdin,
                timeout_ms,
            )
            .await?;
            Ok(ExitCode::from(code.clamp(0, 255) as u8))
        }
        Command::Cp { src, dst, mode } => {
            remote::cp(&client(&cli)?, &mut out, src, dst, *mode).await?;
            ok
        }
        Command::Ls {
            states,
            all,
            template,
            labels,
            limit,
        } => {
            remote::ls(
                &client(&cli)?,
                &mut out,
                LsArgs {
                    states: states.clone(),
                    all: *all,
                    template: template.clone(),
                    labels: labels.clone(),
                    limit: *limit,
                },
            )
            .await?;
            ok
        }
        Command::Inspect { id } => {
            remote::inspect(&client(&cli)?, &mut out, id).await?;
            ok
        }
        Command::Pause { id } => {
            remote::pause(&client(&cli)?, &mut out, id, true).await?;
            ok
        }
        Command::Resume { id } => {
            remote::pause(&client(&cli)?, &mut out, id, false).await?;
            ok
        }
        Command::Rm { ids } => {
            remote::rm(&client(&cli)?, &mut out, ids).await?;
            ok
        }
        Command::Timeout { id, duration } => {
            remote::timeout(&client(&cli)?, &mut out, id, *duration).await?;
            ok
        }
        Command::Network { id, egress } => {
            remote::network(&client(&cli)?, &mut out, id, egress.policy()).await?;
            ok
        }
        Command::Expose { id, guest_port } => {
            remote::expose(&client(&cli)?, &mut out, id, *guest_port).await?;
            ok
        }
        Command::Info => {
            remote::info(&client(&cli)?, &mut out).await?;
            ok
        }
        Command::Demo { .. } | Command::Bench { .. } => local(cli).await,
    }
}

/// `demo` and `bench`: they run VMs on this machine, in a task of their own, until they end or
/// a signal comes; then whatever they registered (their directory, its VMMs, a daemon) is
/// cleaned up before the process exits.
async fn local(cli: Cli) -> Result<ExitCode> {
    let mut signals = interrupt::Signals::install().context("installing signal handlers")?;
    let ui = Arc::new(Bars::default());
    // A task of its own: the signal is seen even while the run blocks a worker thread.
    let mut work = tokio::spawn(local_run(cli, Arc::clone(&ui)));
    tokio::select! {
        done = &mut work => {
            done.context("the run's task failed")??;
            Ok(ExitCode::SUCCESS)
        }
        signal = signals.recv() => {
            ui.clear();
            let cleaned = tokio::task::spawn_blocking(interrupt::clean_up)
                .await
                .unwrap_or_default();
            eprintln!("interrupted: {cleaned}");
            Ok(ExitCode::from(signal.exit_code()))
        }
    }
}

/// Checks `--workdir`: an existing directory (nothing is created above the run's own).
fn check_workdir(dir: &Path) -> Result<()> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => bail!("--workdir {}: not a directory", dir.display()),
        Err(e) => bail!(
            "--workdir {}: {e} (it must be an existing directory)",
            dir.display()
        ),
    }
}

/// Checks `--vmm` when given: an existing file.
fn check_vmm(vmm: Option<&Path>) -> Result<()> {
    let Some(p) = vmm else {
        return Ok(());
    };
    match std::fs::metadata(p) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => bail!("--vmm {}: not a file", p.display()),
        Err(e) => bail!("--vmm {}: {e}", p.display()),
    }
}

async fn local_run(cli: Cli, ui: Arc<Bars>) -> Result<()> {
    if cli.agent_port == 0 {
        bail!("--agent-port: must be at least 1");
    }
    // Every option first (the counts before the host, as they need none of it), then the host,
    // then the paths: nothing starts before all of them are known to be good.
    let placeholder = PathBuf::new();
    // VMMs run jailed when ember-jailer is at hand (next to ember, $EMBER_JAILER_BIN, $PATH).
    let jail = if cli.no_jail {
        None
    } else {
        ember_runtime::locate_ember_jailer().map(ember_runtime::jail::JailSettings::new)
    };
    let demo_opts = |vmm: PathBuf, sequential, concurrent, depth| DemoOptions {
        vmm,
        workdir: cli.workdir.clone(),
        sequential,
        concurrent,
        depth,
        pooled: cli.pooled,
        jail: jail.clone(),
    };
    let bench_opts = |vmm: PathBuf, iterations, concurrency, vms, rate, acquirers| BenchOptions {
        vmm,
        kernel: ember_probe_image::probe_elf_path().to_path_buf(),
        workdir: cli.workdir.clone(),
        agent_port: cli.agent_port,
        iterations,
        concurrency,
        vms,
        pooled: cli.pooled,
        rate,
        acquirers,
    };
    match cli.command {
        Command::Demo {
            sequential,
            concurrent,
            depth,
        } => demo_opts(placeholder, sequential, concurrent, depth).validate()?,
        Command::Bench {
            kind,
            iterations,
            concurrency,
            vms,
            rate,
            acquirers,
        } => bench_opts(
            placeholder,
            iterations,
            concurrency,
            vms.unwrap_or(kind.default_vms()),
            rate,
            acquirers,
        )
        .validate(kind)?,
        _ => {}
    }
    ember_host::host::check_kvm()?;
    check_workdir(&cli.workdir)?;
    check_vmm(cli.vmm.as_deref())?;
    let vmm = match &cli.vmm {
        Some(p) => p.clone(),
        None => {
            let ui = Arc::clone(&ui);
            tokio::task::spawn_blocking(move || {
                ember_host::host::vmm_binary(|| ui.stage("building ember-vmm (first run)", None))
            })
            .await??
        }
    };
    ui.finish(&format!("using {}", vmm.display()));
    match cli.command {
        Command::Demo {
            sequential,
            concurrent,
            depth,
        } => {
            let opts = demo_opts(vmm, sequential, concurrent, depth);
            let report = demo::run(&opts, &*ui).await.context("ember demo")?;
            print_demo(&report, cli.json)
        }
        Command::Bench {
            kind,
            iterations,
            concurrency,
            vms,
            rate,
            acquirers,
        } => {
            let vms = vms.unwrap_or(kind.default_vms());
            let opts = bench_opts(vmm, iterations, concurrency, vms, rate, acquirers);
            let report = if kind == BenchKind::Api {
                bench::api::run(&opts, &*ui).await
            } else if kind == BenchKind::E2b {
                bench::e2b::run(&opts, jail.clone(), &*ui).await
            } else {
                tokio::task::spawn_blocking(move || bench::run(kind, &opts, &*ui)).await?
            }
            .with_context(|| format!("ember bench {kind:?}").to_lowercase())?;
            print_bench(&report, cli.json)
        }
        _ => Ok(()),
    }
}

fn print_demo(r: &DemoReport, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(r)?);
        return Ok(());
    }
    println!(
        "\ntemplate built in {:.1} ms; the first sandbox said {:?}; a {}-byte file went in and out",
        r.template_build_ms, r.sample_output, r.file_round_trip_bytes
    );
    println!(
        "VMMs {}\n",
        if r.jailed {
            "jailed (ember-jailer: own namespaces, root, uid, cgroup; seccomp)"
        } else {
            "NOT jailed (ember-jailer not found, or --no-jail)"
        }
    );
    println!("one sandbox at a time:");
    print!("{}", latency_table(&r.sequential));
    println!(
        "\n{} sandboxes at once:",
        r.concurrent.first().map_or(0, |s| s.n)
    );
    print!("{}", latency_table(&r.concurrent));
    println!(
        "\n{} of {} creates got a warm VM",
        r.warm_creates,
        r.sequential.first().map_or(0, |s| s.n) + r.concurrent.first().map_or(0, |s| s.n)
    );
    println!(
        "\npool: {} VMs restored, {} handed over, {} evicted, {} failed validations",
        r.pool.created, r.pool.acquired, r.pool.evicted, r.pool.validation_failures
    );
    println!(
        "left behind: {} VMM processes, {} files",
        r.leftovers.processes.len(),
        r.leftovers.files.len()
    );
    Ok(())
}

fn print_bench(r: &BenchReport, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(r)?);
        return Ok(());
    }
    println!("host: {}", r.host);
    if !r.latencies.is_empty() {
        print!("{}", latency_table(&r.latencies));
    }
    for (k, v) in &r.figures {
        println!("{k}: {v}");
    }
    for t in &r.targets {
        let mark = if t.met { "met   " } else { "MISSED" };
        println!("[{mark}] {}: {} (target {})", t.name, t.measured, t.target);
    }
    Ok(())
}

/// The image `ember template build` asks emberd to build, if its flags ask for one.
fn image_source(
    build: bool,
    packages: &Option<Vec<String>>,
    suite: &Option<String>,
    mirror: &Option<String>,
    from_dir: &Option<PathBuf>,
    from_tar: &Option<PathBuf>,
) -> Option<ember_core::ImageSource> {
    let abs = |p: &PathBuf| std::path::absolute(p).unwrap_or_else(|_| p.clone());
    if let Some(d) = from_dir {
        return Some(ember_core::ImageSource::Dir { path: abs(d) });
    }
    if let Some(t) = from_tar {
        return Some(ember_core::ImageSource::Tar { path: abs(t) });
    }
    if !(build || packages.is_some() || suite.is_some() || mirror.is_some()) {
        return None;
    }
    let packages = packages
        .as_ref()
        .map(|p| p.iter().map(|s| s.trim().to_string()).collect());
    let mut source = ember_core::ImageSource::debootstrap(packages);
    if let ember_core::ImageSource::Debootstrap {
        suite: s,
        mirror: m,
        ..
    } = &mut source
    {
        if let Some(v) = suite {
            *s = v.clone();
        }
        if let Some(v) = mirror {
            *m = v.clone();
        }
    }
    Some(source)
}
