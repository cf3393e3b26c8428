//! `ember`: warm microVM handoff on this machine.
//!
//! ```text
//! ember demo                      the whole story end to end, with a latency table
//! ember bench <boot|restore|acquire|density|vsock>
//! ```
//! Every command prints figures as a table, or as JSON with `--json`. Without a usable
//! `/dev/kvm` it says so in one line and exits non-zero.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use ember::bench::Acquirers;
use ember::bench::{self, BenchKind, BenchOptions, BenchReport};
use ember::demo::{self, DemoOptions, DemoReport};
use ember::output::latency_table;
use ember_host::ui::Ui;
use ember_host::warm::Pooled;
use indicatif::{ProgressBar, ProgressStyle};

/// The probe guest's agent port.
const DEFAULT_AGENT_PORT: u32 = ember_probe_image::AGENT_PORT;

#[derive(Debug, Parser)]
#[command(
    name = "ember",
    version,
    about = "Warm microVM handoff: demo and benchmarks"
)]
struct Cli {
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
    /// Log level for diagnostics on stderr.
    #[arg(long, global = true, default_value = "warn")]
    log_level: tracing::level_filters::LevelFilter,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Template snapshot, warm pool, handoffs one by one and at once, latency table, cleanup.
    Demo {
        /// Handoffs one after another.
        #[arg(long, default_value_t = 10)]
        sequential: usize,
        /// Handoffs at once.
        #[arg(long, default_value_t = 32)]
        concurrent: usize,
        /// Warm pool depth.
        #[arg(long, default_value_t = 32)]
        depth: usize,
    },
    /// Measure one part of the system.
    Bench {
        /// What to measure.
        kind: BenchKind,
        /// Samples (or handoffs, for acquire).
        #[arg(long, default_value_t = 200)]
        iterations: usize,
        /// Concurrent workers (acquirers, restorers).
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// VMs for the density benchmark.
        #[arg(long, default_value_t = 50)]
        vms: usize,
        /// Handoffs per second in the paced phase of the acquire benchmark.
        #[arg(long, default_value_t = 100)]
        rate: u32,
        /// Which threads acquire in the acquire benchmark's bursts: fresh ones each round, or
        /// long-lived ones that sleep between rounds (as a server's request threads do).
        #[arg(long, value_enum, default_value = "per-round")]
        acquirers: Acquirers,
    },
}

/// Progress bars on stderr, one per stage.
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(cli.log_level)
        .with_target(false)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    ember_host::host::check_kvm()?;
    let ui = Bars {
        current: Mutex::new(None),
    };
    let vmm = match &cli.vmm {
        Some(p) => p.clone(),
        None => ember_host::host::vmm_binary(|| ui.stage("building ember-vmm (first run)", None))?,
    };
    ui.finish(&format!("using {}", vmm.display()));
    let kernel = ember_probe_image::probe_elf_path().to_path_buf();
    match cli.command {
        Command::Demo {
            sequential,
            concurrent,
            depth,
        } => {
            let report = demo::run(
                &DemoOptions {
                    vmm,
                    kernel,
                    workdir: cli.workdir,
                    agent_port: cli.agent_port,
                    sequential,
                    concurrent,
                    depth,
                    pooled: cli.pooled,
                },
                &ui,
            )
            .context("ember demo")?;
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
            let report = bench::run(
                kind,
                &BenchOptions {
                    vmm,
                    kernel,
                    workdir: cli.workdir,
                    agent_port: cli.agent_port,
                    iterations,
                    concurrency,
                    vms,
                    pooled: cli.pooled,
                    rate,
                    acquirers,
                },
                &ui,
            )
            .with_context(|| format!("ember bench {kind:?}").to_lowercase())?;
            print_bench(&report, cli.json)
        }
    }
}

fn print_demo(r: &DemoReport, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(r)?);
        return Ok(());
    }
    println!("\nfirst tenant's agent said: {:?}\n", r.sample_output);
    println!("one handoff at a time:");
    print!("{}", latency_table(&r.sequential));
    println!(
        "\n{} handoffs at once:",
        r.concurrent.first().map_or(0, |s| s.n)
    );
    print!("{}", latency_table(&r.concurrent));
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
