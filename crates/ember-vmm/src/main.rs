//! `ember-vmm`: one microVM per process, driven through a Firecracker-compatible API socket.
//!
//! ```text
//! ember-vmm --api-sock <path> [--config-file <json>] [--id <vm id>] [--serial-out <file>]
//!           [--log-level error|warn|info|debug|trace] [--no-seccomp]
//! ```
//! Every thread runs under a seccomp filter for its kind once it serves a guest (see
//! `ember_vmm::seccomp`); a forbidden syscall kills the process with SIGSYS. `--no-seccomp`
//! turns the filters off for debugging.
//! With `--config-file` the VM boots right away (like `firecracker --config-file`); the API
//! keeps serving either way. The process exits 0 when the guest resets or shuts down or on
//! SIGTERM/SIGINT, 1 on a fatal vCPU error, 2 on a startup error; on each of these it removes
//! its API socket and its vsock device's socket (a SIGKILL leaves them: a later start on the
//! same path replaces a socket nobody listens on).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Parser;
use ember_vmm::api::server::ApiSocket;
use ember_vmm::config::VmConfig;
use ember_vmm::controller::Controller;
use ember_vmm::devices::legacy::serial::{SerialConfig, SerialOutput};
use ember_vmm::exit::ExitSignal;
use ember_vmm::timing::now_ns;
use ember_vmm::vstate::kvm::KvmContext;
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use tracing::level_filters::LevelFilter;

/// ember's microVM monitor.
#[derive(Debug, Parser)]
#[command(name = "ember-vmm", version, about)]
struct Args {
    /// Path of the Unix socket the API listens on. It appears once the API accepts
    /// connections; a socket left there by a dead process is replaced, a live one refused.
    #[arg(long)]
    api_sock: PathBuf,
    /// Boot right away from this configuration (the `GET /vm/config` shape).
    #[arg(long)]
    config_file: Option<PathBuf>,
    /// The microVM's id, reported by `GET /`.
    #[arg(long, default_value = "anonymous-instance")]
    id: String,
    /// Write the guest's serial console here instead of stdout ("-" for stdout, "none" to
    /// discard).
    #[arg(long)]
    serial_out: Option<PathBuf>,
    /// Most bytes the console log may hold when it is a regular file (`--serial-out FILE`, or
    /// stdout redirected to one): past it the file is cut to a notice and its last 4 KiB, and
    /// output goes on after them. 0: no limit; otherwise at least 8192. Pipes and terminals
    /// are never limited.
    #[arg(long, default_value_t = 1 << 20, value_name = "BYTES", value_parser = console_limit)]
    console_limit_bytes: u64,
    /// Die with this process: the VMM sets its parent-death signal to SIGKILL and exits at once
    /// if its parent is already not `<pid>` (the owner died before the signal was armed).
    #[arg(long)]
    parent_pid: Option<u32>,
    /// Log level (logs go to stderr).
    #[arg(long, default_value = "warn")]
    log_level: LevelFilter,
    /// Run without seccomp filters (debugging only: a guest that breaks into the VMM could
    /// then make any syscall).
    #[arg(long)]
    no_seccomp: bool,
    /// Test hook: once the main thread's filter is installed (a VM runs), make a forbidden
    /// syscall, which must kill the process with SIGSYS.
    #[arg(long, hide = true)]
    seccomp_selftest: bool,
}

fn init_logging(level: LevelFilter) {
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false);
    if std::env::var_os("RUST_LOG").is_some() {
        builder
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .init();
    } else {
        builder.with_max_level(level).init();
    }
}

/// Arms SIGKILL on the parent's death, then makes sure the parent is still the one we were
/// given (it may have died before the signal was armed; then nobody would ever kill us).
fn die_with_parent(parent: u32) -> Result<()> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .context("setting the parent-death signal")?;
    let now = nix::unistd::getppid().as_raw();
    if u32::try_from(now).ok() != Some(parent) {
        bail!("parent process {parent} is gone (parent is now {now})");
    }
    Ok(())
}

/// The stop signals, blocked in every thread (threads inherit the mask, so block before any
/// is spawned) and read from a signalfd by the API loop.
fn stop_signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set
}

/// Parses `--console-limit-bytes`: 0, or a limit a cut's notice and kept tail fit well within.
fn console_limit(s: &str) -> Result<u64, String> {
    let n: u64 = s
        .parse()
        .map_err(|e| format!("not a number of bytes: {e}"))?;
    if n != 0 && n < 8192 {
        return Err(format!(
            "{n} is below the smallest limit, 8192 (0: no limit)"
        ));
    }
    Ok(n)
}

fn run(args: Args, main_start_ns: u64) -> Result<i32> {
    let signals = SignalFd::with_flags(
        &stop_signals(),
        SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC,
    )
    .context("creating the signalfd")?;
    if let Some(parent) = args.parent_pid {
        die_with_parent(parent)?;
    }
    let output = match args.serial_out.as_deref().and_then(|p| p.to_str()) {
        None | Some("-") => SerialOutput::Stdout,
        Some("none") => SerialOutput::Sink,
        Some(_) => SerialOutput::File(args.serial_out.clone().unwrap_or_default()),
    };
    let serial = SerialConfig {
        output,
        limit_bytes: (args.console_limit_bytes > 0).then_some(args.console_limit_bytes),
    };
    let config = match &args.config_file {
        Some(path) => {
            let bytes =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            Some(
                VmConfig::from_file_contents(&bytes)
                    .with_context(|| format!("invalid {}", path.display()))?,
            )
        }
        None => None,
    };
    if args.no_seccomp {
        tracing::warn!("seccomp filters are off (--no-seccomp)");
    } else {
        ember_vmm::seccomp::enable().context("preparing the seccomp filters")?;
        if args.seccomp_selftest {
            ember_vmm::seccomp::arm_selftest();
        }
    }
    let kvm = Arc::new(KvmContext::open().context("KVM is not usable")?);
    let exit = Arc::new(ExitSignal::new().context("creating the exit eventfd")?);
    let socket = ApiSocket::bind(&args.api_sock)?;
    let mut controller = Controller::new(args.id.clone(), kvm, exit.clone(), serial);
    controller.timings_mut().main_start_ns = main_start_ns;
    controller.timings_mut().api_ready_ns = now_ns();
    match config {
        Some(cfg) => controller
            .boot_config(cfg)
            .context("booting from the configuration file")?,
        None => controller.prepare(),
    }
    let stop =
        ember_vmm::api::server::run(socket.listener(), &mut controller, &exit, Some(&signals));
    // The API socket goes first (clients see the VMM gone), then the VM and its devices:
    // dropping the vsock device removes its socket.
    socket.remove_file();
    drop(controller);
    Ok(stop?.exit_code())
}

fn main() {
    let main_start_ns = now_ns();
    // Before any thread exists, so that every thread inherits the mask.
    let blocked = nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&stop_signals()), None);
    let args = Args::parse();
    init_logging(args.log_level);
    if let Err(e) = blocked {
        tracing::warn!(error = %e, "cannot block SIGTERM/SIGINT: they will not clean up");
    }
    let code = match run(args, main_start_ns) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
            #[allow(clippy::print_stderr)]
            {
                eprintln!("ember-vmm: {e:#}");
            }
            2
        }
    };
    std::process::exit(code);
}
