//! `ember bench <boot|restore|acquire|density|vsock|api|jail|e2b>`: measurements of the real system on
//! this machine, each in its own session (so each proves it leaves nothing behind), reported as
//! percentiles, throughput and memory with the host they ran on, and the project's targets
//! marked met or missed. `api` measures a real emberd process through its HTTP API; `e2b` the
//! unmodified `e2b` SDK against an embedded emberd's E2B listeners.

pub mod api;
mod boot;
mod cputime;
mod density;
pub mod e2b;
mod handoff;
mod jail;

pub use handoff::Acquirers;
mod restore;
mod vsock;

use std::path::PathBuf;
use std::time::Duration;

use ember_core::{StackKey, VmError};
use serde::Serialize;

use crate::stats::Summary;
use ember_host::session::{Leftovers, Session, SessionError};
use ember_host::template::TemplateError;
use ember_host::ui::Ui;
use ember_host::warm::{HandoffError, WarmError};

/// Which benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BenchKind {
    /// Fresh boot of the probe guest until its agent answers.
    Boot,
    /// Restores from a template: latency, and throughput with parallel restores.
    Restore,
    /// Warm handoff under 32 concurrent acquirers: acquire → tenant's first agent reply.
    Acquire,
    /// Host memory per idle pooled VM.
    Density,
    /// Agent round trips over vsock.
    Vsock,
    /// emberd's HTTP API: create -> first exec through the daemon, restarts, memory.
    Api,
    /// Warm handoff and pool refill with VMMs unjailed and jailed (ember-jailer), side by side.
    Jail,
    /// The `e2b` SDK (PyPI) against emberd's E2B API: `Sandbox.create()` and create -> first
    /// command, `--concurrency` clients at once.
    E2b,
}

impl BenchKind {
    /// `--vms` when not given: the density benchmark's idle pooled VMs, or the API
    /// benchmark's live sandboxes — 200 there, because its per-sandbox memory is the
    /// difference between a daemon holding n and one holding n/2, which fewer sandboxes leave
    /// in the noise of the allocator (5-45 KiB per sandbox with 50).
    pub fn default_vms(self) -> usize {
        match self {
            BenchKind::Api => 200,
            _ => 50,
        }
    }
}

/// Knobs shared by the benchmarks.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The `ember-vmm` binary.
    pub vmm: PathBuf,
    /// The guest kernel (the probe guest).
    pub kernel: PathBuf,
    /// Where session directories go.
    pub workdir: PathBuf,
    /// The guest agent's vsock port.
    pub agent_port: u32,
    /// Samples (or rounds) to take.
    pub iterations: usize,
    /// Concurrent workers (acquirers, restorers).
    pub concurrency: usize,
    /// VMs for the density benchmark, live sandboxes for the API benchmark.
    pub vms: usize,
    /// How pooled VMs wait (acquire, density).
    pub pooled: ember_host::warm::Pooled,
    /// Aggregate rate of the paced phase (acquire: handoffs, api: creates), per second.
    pub rate: u32,
    /// Which threads acquire in the acquire benchmark's bursts.
    pub acquirers: Acquirers,
}

/// One target of the project, checked against a measured value.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// What is targeted.
    pub name: String,
    /// The target, in words (`"<= 2 ms p50"`).
    pub target: String,
    /// The measured value, in words.
    pub measured: String,
    /// Whether it is met.
    pub met: bool,
}

impl Target {
    pub(crate) fn at_most(name: &str, limit: f64, value: f64, unit: &str) -> Target {
        Target {
            name: name.into(),
            target: format!("<= {limit} {unit}"),
            measured: format!("{value:.2} {unit}"),
            met: value <= limit,
        }
    }

    pub(crate) fn at_least(name: &str, limit: f64, value: f64, unit: &str) -> Target {
        Target {
            name: name.into(),
            target: format!(">= {limit} {unit}"),
            measured: format!("{value:.2} {unit}"),
            met: value >= limit,
        }
    }
}

/// What a benchmark measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Which benchmark.
    pub bench: BenchKind,
    /// The machine it ran on (figures differ between machines).
    pub host: ember_core::HostInfo,
    /// Latency summaries.
    pub latencies: Vec<Summary>,
    /// Other figures (throughput, memory), by name.
    pub figures: serde_json::Map<String, serde_json::Value>,
    /// The targets this benchmark checks.
    pub targets: Vec<Target>,
    /// What the session left behind (must be nothing).
    pub leftovers: Leftovers,
}

impl BenchReport {
    pub(crate) fn new(bench: BenchKind) -> Self {
        Self {
            bench,
            host: ember_core::HostInfo::read(),
            latencies: Vec::new(),
            figures: serde_json::Map::new(),
            targets: Vec::new(),
            leftovers: Leftovers::default(),
        }
    }

    /// Ends the report with what the run left behind: a target that must be met, and a
    /// [`BenchError::Leaked`] when anything is left.
    fn close(mut self, leftovers: Leftovers) -> Result<BenchReport, BenchError> {
        self.targets.push(Target {
            name: "left behind after the run".into(),
            target: "0 VMM processes, 0 files".into(),
            measured: format!(
                "{} processes, {} files",
                leftovers.processes.len(),
                leftovers.files.len()
            ),
            met: leftovers.is_clean(),
        });
        if !leftovers.is_clean() {
            return Err(BenchError::Leaked(leftovers));
        }
        self.leftovers = leftovers;
        Ok(self)
    }

    fn figure(&mut self, name: &str, value: impl Serialize) {
        if let Ok(v) = serde_json::to_value(value) {
            self.figures.insert(name.to_string(), v);
        }
    }
}

/// Why a benchmark failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The session could not start.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The warm stack could not be set up.
    #[error(transparent)]
    Warm(#[from] WarmError),
    /// A template could not be built.
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// A provider call failed.
    #[error("{0}")]
    Provider(String, #[source] VmError),
    /// A handoff failed.
    #[error("a handoff failed")]
    Handoff(#[from] Box<HandoffError>),
    /// The agent could not be reached.
    #[error("the agent failed")]
    Agent(#[from] ember_host::agent::AgentError),
    /// A step of the benchmark failed.
    #[error("{0}")]
    Failed(String),
    /// Something was left behind.
    #[error("the benchmark left {} VMM process(es) and {} file(s) behind", .0.processes.len(), .0.files.len())]
    Leaked(Leftovers),
    /// An option is out of range.
    #[error("--{option}: {reason}")]
    InvalidOption {
        /// The option, as typed.
        option: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
}

/// Most VMs a benchmark may pool or run at once (the pool's own depth limit).
const MAX_CONCURRENCY: usize = 4096;
/// Most samples (or handoffs) a benchmark takes.
const MAX_ITERATIONS: usize = 100_000;
/// Fastest paced handoff rate, per second.
const MAX_RATE: u32 = 100_000;

impl BenchOptions {
    /// Checks the counts before anything starts, for benchmark `kind`.
    pub fn validate(&self, kind: BenchKind) -> Result<(), BenchError> {
        let at_least_one = |option: &'static str, v: u64| {
            if v == 0 {
                Err(BenchError::InvalidOption {
                    option,
                    reason: "must be at least 1".into(),
                })
            } else {
                Ok(())
            }
        };
        at_least_one("iterations", self.iterations as u64)?;
        at_least_one("concurrency", self.concurrency as u64)?;
        at_least_one("vms", self.vms as u64)?;
        at_least_one("rate", u64::from(self.rate))?;
        at_least_one("agent-port", u64::from(self.agent_port))?;
        for (option, v, max) in [
            ("iterations", self.iterations as u64, MAX_ITERATIONS as u64),
            (
                "concurrency",
                self.concurrency as u64,
                MAX_CONCURRENCY as u64,
            ),
            ("vms", self.vms as u64, MAX_CONCURRENCY as u64),
            ("rate", u64::from(self.rate), u64::from(MAX_RATE)),
            // u32::MAX is VMADDR_PORT_ANY, no port a guest listens on.
            (
                "agent-port",
                u64::from(self.agent_port),
                u64::from(u32::MAX - 1),
            ),
        ] {
            if v > max {
                return Err(BenchError::InvalidOption {
                    option,
                    reason: format!("{v} is more than the {max} allowed"),
                });
            }
        }
        if matches!(kind, BenchKind::Api | BenchKind::E2b) {
            // The daemon holds at most this many sandboxes: the bursts and the live ones.
            let max = emberd::Limits::default().max_sandboxes;
            for (option, v) in [("concurrency", self.concurrency), ("vms", self.vms)] {
                if v > max {
                    return Err(BenchError::InvalidOption {
                        option,
                        reason: format!("{v} is more than the {max} sandboxes emberd holds"),
                    });
                }
            }
        }
        Ok(())
    }
}

fn provider_err(what: &str) -> impl FnOnce(VmError) -> BenchError + '_ {
    move |e| BenchError::Provider(what.to_string(), e)
}

/// The stack every benchmark uses: the probe guest, 1 vCPU, 128 MiB.
pub fn probe_stack() -> StackKey {
    // Invariant: constant, valid name/version/shape.
    #[allow(clippy::expect_used)]
    StackKey::new("probe", "1", 1, 128).expect("valid constant stack key")
}

/// Runs benchmark `kind`.
pub fn run(kind: BenchKind, opts: &BenchOptions, ui: &dyn Ui) -> Result<BenchReport, BenchError> {
    opts.validate(kind)?;
    if kind == BenchKind::Jail {
        return jail::run(opts, ui);
    }
    let spares = match kind {
        BenchKind::Restore | BenchKind::Acquire => 16,
        _ => 4,
    };
    ui.stage("starting VMM processes", None);
    let interrupt = crate::interrupt::Registration::new(&Session::root_under(&opts.workdir));
    let session = Session::start(&opts.vmm, &opts.workdir, spares)?;
    let provider = std::sync::Arc::clone(session.provider());
    interrupt.on_stop(move || provider.shutdown());
    ui.finish(&format!("session in {}", session.root().display()));
    let result = match kind {
        BenchKind::Boot => boot::run(&session, opts, ui),
        BenchKind::Restore => restore::run(&session, opts, ui),
        BenchKind::Acquire => handoff::run(&session, opts, ui),
        BenchKind::Density => density::run(&session, opts, ui),
        BenchKind::Vsock => vsock::run(&session, opts, ui),
        BenchKind::Api | BenchKind::E2b => Err(BenchError::Failed(format!(
            "the {kind:?} benchmark runs its own daemon: call bench::{}::run",
            format!("{kind:?}").to_lowercase()
        ))),
        BenchKind::Jail => unreachable!("handled above"),
    };
    ui.stage("destroying everything", None);
    let leftovers = session.finish();
    drop(interrupt);
    ui.finish("done");
    result?.close(leftovers)
}

/// What every benchmark boots: the probe guest on [`probe_stack`] with the template arguments.
fn probe_template_spec(opts: &BenchOptions) -> ember_host::template::TemplateBoot {
    ember_host::template::TemplateBoot::kernel(
        probe_stack(),
        opts.kernel.clone(),
        Some(ember_host::template::PROBE_TEMPLATE_ARGS.to_string()),
        opts.agent_port,
        std::time::Duration::from_secs(30),
    )
}

/// Builds the probe template snapshot `name` (reporting it as a stage).
fn probe_template(
    session: &Session,
    opts: &BenchOptions,
    ui: &dyn Ui,
    name: &str,
) -> Result<ember_core::SnapshotRef, BenchError> {
    ui.stage("building the template snapshot", None);
    let (snap, _) = ember_host::template::build(
        session.provider(),
        &probe_template_spec(opts),
        ember_core::SnapshotId::new(name).map_err(provider_err("naming"))?,
    )?;
    ui.finish("template ready");
    Ok(snap)
}

/// Time limit for one agent call in benchmarks.
const AGENT_TIMEOUT: Duration = Duration::from_secs(5);
