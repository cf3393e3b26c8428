//! `ember bench jail`: what jailing costs. The same warm pool is run twice in one process — its
//! VMMs unjailed, then jailed by ember-jailer (own namespaces, root, uid and cgroup; ember-vmm's
//! seccomp filters in both) — and each run measures:
//! - handoffs: rounds of `concurrency` tenants acquiring at once from a full pool, each timed
//!   from the acquire call to its tenant's first agent reply;
//! - refill: after each burst, how fast the pool refills (VMs restored per second until full,
//!   while the burst's tenants keep their VMs; a jailed refill also starts each VMM through
//!   the jailer and binds the snapshot's files into its jail);
//! - release: then, the time per tenant VM to destroy the burst's VMs (informational: a jailed
//!   VM's destroy also unbinds its files, removes its jail and recycles its cgroup).
//!
//! Targets: jailed within 10% of unjailed for the handoff p50 and p99 and the refill rate.

use std::sync::Barrier;
use std::time::{Duration, Instant};

use ember_host::session::Session;
use ember_host::ui::{Quiet, Ui};
use ember_host::warm::{HandoffTiming, WarmStack};

use super::handoff::summaries;
use super::{BenchError, BenchKind, BenchOptions, BenchReport, Target};

/// One run's figures.
struct Run {
    handoffs: Vec<HandoffTiming>,
    refill_rates: Vec<f64>,
    /// Per round: ms per tenant VM released (destroyed) after the refill.
    release_ms: Vec<f64>,
}

pub(super) fn run(opts: &BenchOptions, ui: &dyn Ui) -> Result<BenchReport, BenchError> {
    let jailer = ember_runtime::locate_ember_jailer().ok_or_else(|| {
        BenchError::Failed(
            "ember-jailer was not found (next to ember, $EMBER_JAILER_BIN or $PATH); build it \
             with cargo build --release -p ember-jailer"
                .into(),
        )
    })?;
    let mut report = BenchReport::new(BenchKind::Jail);
    let mut runs = Vec::new();
    for (label, jail) in [
        ("not jailed", None),
        (
            "jailed",
            Some(ember_runtime::jail::JailSettings::new(jailer)),
        ),
    ] {
        ui.stage(&format!("{label}: starting VMM processes"), None);
        let interrupt = crate::interrupt::Registration::new(&Session::root_under(&opts.workdir));
        let session = Session::start_with(&opts.vmm, &opts.workdir, 16, jail)?;
        let provider = std::sync::Arc::clone(session.provider());
        interrupt.on_stop(move || provider.shutdown());
        ui.finish(&format!("session in {}", session.root().display()));
        let result = one_run(&session, opts, ui, label);
        let leftovers = session.finish();
        drop(interrupt);
        let run = result?;
        if !leftovers.is_clean() {
            return Err(BenchError::Leaked(leftovers));
        }
        report
            .latencies
            .extend(summaries(&format!("{label}: "), &run.handoffs));
        let rate = median(&run.refill_rates);
        report.figure(
            &format!("refill_vms_per_s_{}", label.replace(' ', "_")),
            rate,
        );
        report.figure(
            &format!("release_ms_per_vm_{}", label.replace(' ', "_")),
            median(&run.release_ms),
        );
        runs.push((label, run, rate));
    }
    let total = |label: &str| {
        report
            .latencies
            .iter()
            .find(|s| s.name.starts_with(label) && s.name.contains("acquire ->"))
            .cloned()
    };
    if let (Some(free), Some(jailed)) = (total("not jailed: "), total("jailed: ")) {
        for (what, a, b) in [
            ("p50", free.p50_us, jailed.p50_us),
            ("p99", free.p99_us, jailed.p99_us),
        ] {
            let ratio = b / a.max(1.0);
            report.figure(&format!("handoff_{what}_jailed_over_unjailed"), ratio);
            report.targets.push(Target::at_most(
                &format!("handoff {what}, jailed / not jailed"),
                1.10,
                ratio,
                "x",
            ));
        }
    }
    if let [(_, free_run, free), (_, jailed_run, jailed)] = runs.as_slice() {
        report.figure(
            "release_jailed_over_unjailed",
            median(&jailed_run.release_ms) / median(&free_run.release_ms).max(f64::MIN_POSITIVE),
        );
        let ratio = jailed / free.max(f64::MIN_POSITIVE);
        report.figure("refill_jailed_over_unjailed", ratio);
        report.targets.push(Target::at_least(
            "refill rate, jailed / not jailed",
            0.90,
            ratio,
            "x",
        ));
    }
    // Each run's leftovers were checked as it ended (a leak fails the benchmark there).
    report.targets.push(Target {
        name: "left behind after the run".into(),
        target: "0 VMM processes, 0 files".into(),
        measured: "0 processes, 0 files (both runs)".into(),
        met: true,
    });
    report.figure("concurrency", opts.concurrency);
    report.figure(
        "handoffs_per_run",
        runs.first().map_or(0, |r| r.1.handoffs.len()),
    );
    Ok(report)
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn one_run(
    session: &Session,
    opts: &BenchOptions,
    ui: &dyn Ui,
    label: &str,
) -> Result<Run, BenchError> {
    let warm = super::handoff::warm_stack(session, opts, ui)?;
    let result = rounds(session, &warm, opts, ui, label);
    warm.shutdown();
    result
}

fn rounds(
    session: &Session,
    warm: &WarmStack,
    opts: &BenchOptions,
    ui: &dyn Ui,
    label: &str,
) -> Result<Run, BenchError> {
    let rounds = opts.iterations.div_ceil(opts.concurrency).max(1);
    ui.stage(
        &format!(
            "{label}: {rounds} rounds of {} concurrent handoffs",
            opts.concurrency
        ),
        Some((rounds * opts.concurrency) as u64),
    );
    let mut run = Run {
        handoffs: Vec::new(),
        refill_rates: Vec::new(),
        release_ms: Vec::new(),
    };
    warm.wait_full(&Quiet, Duration::from_secs(60))?;
    for round in 0..rounds {
        session.settle(Duration::from_secs(10));
        let barrier = Barrier::new(opts.concurrency);
        let results: Vec<Result<_, BenchError>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..opts.concurrency)
                .map(|i| {
                    let barrier = &barrier;
                    s.spawn(move || {
                        barrier.wait();
                        warm.handoff(&format!("j{round}-{i}"), &["bench"])
                            .map_err(|e| BenchError::from(Box::new(e)))
                    })
                })
                .collect();
            hs.into_iter().filter_map(|h| h.join().ok()).collect()
        });
        // The burst took `concurrency` VMs; the refill starts as each is taken and is timed
        // from the burst's end until the pool is full again, the same way in both runs, while
        // the tenants keep their VMs (as tenants do: a sandbox outlives the pool's refill).
        // Then the tenants' VMs are released, timed on their own: destroying a VM is not a
        // refill's work, though it is jailing's cost too.
        let emptied = Instant::now();
        let mut held = Vec::with_capacity(results.len());
        let mut failure = None;
        for r in results {
            match r {
                Ok(h) => held.push(h),
                Err(e) => failure = failure.or(Some(e)),
            }
        }
        let refilled = match failure {
            Some(e) => Err(e),
            None => warm
                .wait_full(&Quiet, Duration::from_secs(60))
                .map_err(BenchError::from),
        };
        let took = emptied.elapsed().as_secs_f64();
        let n_held = held.len();
        let released = Instant::now();
        for h in held {
            run.handoffs.push(warm.release(h));
        }
        refilled?;
        run.refill_rates
            .push(opts.concurrency as f64 / took.max(1e-6));
        run.release_ms
            .push(released.elapsed().as_secs_f64() * 1e3 / n_held.max(1) as f64);
        ui.progress(run.handoffs.len() as u64);
    }
    ui.finish("done");
    Ok(run)
}
