//! `ember demo`: the whole warm-handoff story on this machine, end to end — template snapshot,
//! warm pool, VMs handed to tenants one after another and then concurrently, an agent command
//! in each, a latency table — and then everything destroyed, with proof that nothing is left.

use std::path::PathBuf;
use std::sync::{Barrier, Mutex};
use std::time::Duration;

use ember_core::StackKey;
use serde::Serialize;

use crate::stats::Summary;
use ember_host::session::{Leftovers, Session, SessionError};
use ember_host::template::TemplateReport;
use ember_host::ui::Ui;
use ember_host::warm::{
    Handoff, HandoffError, HandoffTiming, PROBE_TEMPLATE_ARGS, WarmError, WarmOptions, WarmStack,
};

/// What the demo runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// The `ember-vmm` binary.
    pub vmm: PathBuf,
    /// The guest kernel (the probe guest).
    pub kernel: PathBuf,
    /// Where the session directory goes.
    pub workdir: PathBuf,
    /// The guest agent's vsock port.
    pub agent_port: u32,
    /// Handoffs one after another.
    pub sequential: usize,
    /// Handoffs at once.
    pub concurrent: usize,
    /// Warm pool depth.
    pub depth: usize,
    /// How pooled VMs wait.
    pub pooled: ember_host::warm::Pooled,
}

/// Pool counters at the end of the demo.
#[derive(Debug, Clone, Serialize)]
pub struct PoolFigures {
    /// VMs restored by refills.
    pub created: u64,
    /// VMs handed to tenants.
    pub acquired: u64,
    /// VMs evicted (any cause).
    pub evicted: u64,
    /// Failed validations.
    pub validation_failures: u64,
}

/// What the demo measured.
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    /// Template build.
    pub template: TemplateReport,
    /// One handoff at a time: acquire, agent connect, first call, total.
    pub sequential: Vec<Summary>,
    /// `concurrent` handoffs at once.
    pub concurrent: Vec<Summary>,
    /// What the first tenant's `echo` printed.
    pub sample_output: String,
    /// Pool counters.
    pub pool: PoolFigures,
    /// What was left after everything was destroyed (nothing, or the demo fails).
    pub leftovers: Leftovers,
}

/// Why the demo failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The session could not start.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The warm stack could not be set up.
    #[error(transparent)]
    Warm(#[from] WarmError),
    /// A handoff failed.
    #[error("handing VM {index} to its tenant failed")]
    Handoff {
        /// Which handoff.
        index: usize,
        /// Why.
        #[source]
        source: Box<HandoffError>,
    },
    /// Something was left behind.
    #[error("the demo left {} VMM process(es) and {} file(s) behind", .0.processes.len(), .0.files.len())]
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

/// The pool's own depth limit.
const MAX_DEPTH: usize = 4096;

/// Runs the demo.
pub fn run(opts: &DemoOptions, ui: &dyn Ui) -> Result<DemoReport, DemoError> {
    if !(1..=MAX_DEPTH).contains(&opts.depth) {
        return Err(DemoError::InvalidOption {
            option: "depth",
            reason: format!(
                "{} is out of range; 1 to {MAX_DEPTH} are allowed",
                opts.depth
            ),
        });
    }
    ui.stage("starting VMM processes", None);
    let session = Session::start(&opts.vmm, &opts.workdir, opts.depth.min(16))?;
    ui.finish(&format!("session in {}", session.root().display()));
    let result = run_in(&session, opts, ui);
    ui.stage("destroying everything", None);
    let leftovers = session.finish();
    ui.finish(if leftovers.is_clean() {
        "0 VMM processes and 0 files left"
    } else {
        "something was left behind"
    });
    let mut report = result?;
    if !leftovers.is_clean() {
        return Err(DemoError::Leaked(leftovers));
    }
    report.leftovers = leftovers;
    Ok(report)
}

fn run_in(session: &Session, opts: &DemoOptions, ui: &dyn Ui) -> Result<DemoReport, DemoError> {
    let stack = StackKey::new("probe", "1", 1, 128).map_err(|e| {
        DemoError::Warm(WarmError::Template(
            ember_host::template::TemplateError::Provider {
                step: "naming",
                source: e,
            },
        ))
    })?;
    let warm = WarmStack::start(
        session.provider(),
        &WarmOptions {
            stack,
            kernel: opts.kernel.clone(),
            boot_args: Some(PROBE_TEMPLATE_ARGS.to_string()),
            pooled: opts.pooled,
            agent_port: opts.agent_port,
            agent_timeout: Duration::from_secs(2),
            depth: opts.depth,
            refill_parallelism: 4,
        },
        ui,
    )?;
    let result = phases(session, &warm, opts, ui);
    let m = warm.pool.metrics();
    let template = warm.template_report.clone();
    warm.shutdown();
    let (sequential, concurrent, sample_output) = result?;
    Ok(DemoReport {
        template,
        sequential,
        concurrent,
        sample_output,
        pool: PoolFigures {
            created: m.created_total,
            acquired: m.acquired_total,
            evicted: m.evicted_total(),
            validation_failures: m.validation_failures_total,
        },
        leftovers: Leftovers::default(),
    })
}

type Phases = (Vec<Summary>, Vec<Summary>, String);

fn phases(
    session: &Session,
    warm: &WarmStack,
    opts: &DemoOptions,
    ui: &dyn Ui,
) -> Result<Phases, DemoError> {
    // One after another, letting the pool refill between handoffs as a real caller would.
    ui.stage(
        "handing VMs to tenants one by one",
        Some(opts.sequential as u64),
    );
    let mut seq = Vec::with_capacity(opts.sequential);
    for i in 0..opts.sequential {
        let tenant = format!("tenant-{i}");
        let h = warm
            .handoff(&tenant, &["hello", "from", &tenant])
            .map_err(|source| DemoError::Handoff {
                index: i,
                source: Box::new(source),
            })?;
        seq.push(h);
        ui.progress(i as u64 + 1);
        let _ = warm.wait_full(&ember_host::ui::Quiet, Duration::from_secs(30));
    }
    let sample = seq.first().map(|h| h.output.clone()).unwrap_or_default();
    ui.finish(&format!("{} handoffs", seq.len()));
    let seq = release_all(warm, seq);

    ui.stage(
        &format!("handing {} VMs to tenants at once", opts.concurrent),
        Some(opts.concurrent as u64),
    );
    let _ = warm.wait_full(&ember_host::ui::Quiet, Duration::from_secs(30));
    session.settle(Duration::from_secs(10));
    let barrier = Barrier::new(opts.concurrent);
    let done = Mutex::new(0u64);
    let results: Vec<Result<Handoff, DemoError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..opts.concurrent)
            .map(|i| {
                let (barrier, done) = (&barrier, &done);
                s.spawn(move || {
                    barrier.wait();
                    let tenant = format!("burst-{i}");
                    let r = warm.handoff(&tenant, &["hi", &tenant]).map_err(|source| {
                        DemoError::Handoff {
                            index: i,
                            source: Box::new(source),
                        }
                    });
                    let mut d = done.lock().unwrap_or_else(|p| p.into_inner());
                    *d += 1;
                    ui.progress(*d);
                    r
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(DemoError::Handoff {
                        index: usize::MAX,
                        source: Box::new(HandoffError::Pool(ember_pool::PoolError::ShutDown)),
                    })
                })
            })
            .collect()
    });
    let mut burst = Vec::new();
    let mut first_error = None;
    for r in results {
        match r {
            Ok(h) => burst.push(h),
            Err(e) => first_error = first_error.or(Some(e)),
        }
    }
    let burst = release_all(warm, burst);
    if let Some(e) = first_error {
        return Err(e);
    }
    ui.finish(&format!("{} concurrent handoffs", burst.len()));
    Ok((summaries("", &seq), summaries("", &burst), sample))
}

fn release_all(warm: &WarmStack, handoffs: Vec<Handoff>) -> Vec<HandoffTiming> {
    handoffs.into_iter().map(|h| warm.release(h)).collect()
}

/// The four latency rows of a set of handoffs.
pub fn summaries(prefix: &str, hs: &[HandoffTiming]) -> Vec<Summary> {
    let col = |f: fn(&HandoffTiming) -> Duration| hs.iter().map(f).collect::<Vec<_>>();
    [
        (
            "acquire (validate, rename, resume if paused, Reseed sent)",
            col(|h| h.acquire),
        ),
        ("agent connection for the tenant", col(|h| h.connect)),
        (
            "first agent call (Reseed answer, exec echo)",
            col(|h| h.first_call),
        ),
        ("acquire -> first agent reply", col(|h| h.total)),
    ]
    .into_iter()
    .filter_map(|(name, v)| Summary::of(format!("{prefix}{name}"), &v))
    .collect()
}
