//! `ember bench acquire`: warm handoff under concurrency, each handoff timed from its acquire
//! call to its tenant's first agent reply (exec echo), in two shapes:
//! - bursts: rounds in which `concurrency` tenants acquire at the same instant from a full pool
//!   (the pool refills between rounds) — the worst case for a 2-core host. The acquirers are
//!   fresh threads each round, or ([`Acquirers::LongLived`]) threads started once that sleep
//!   between rounds, as a server's request threads do: the scheduler treats the two
//!   differently, and the p50 shows it;
//! - paced: `concurrency` acquirer threads sharing a steady aggregate rate (`rate` handoffs/s),
//!   the pool refilling as it goes — a sustained load.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Barrier, Mutex, MutexGuard};
use std::time::Duration;

use crate::stats::Summary;

use super::{AGENT_TIMEOUT, BenchError, BenchKind, BenchOptions, BenchReport, Target, probe_stack};
use ember_host::session::Session;
use ember_host::ui::{Quiet, Ui};
use ember_host::warm::{
    Handoff, HandoffError, HandoffTiming, PROBE_TEMPLATE_ARGS, WarmOptions, WarmStack,
};

/// The handoff benchmarks' warm pool: the probe template, `concurrency` deep, refilled 4 at a
/// time (also `ember bench jail`'s).
pub(super) fn warm_stack(
    session: &Session,
    opts: &BenchOptions,
    ui: &dyn Ui,
) -> Result<WarmStack, BenchError> {
    Ok(WarmStack::start(
        session.provider(),
        &WarmOptions {
            stack: probe_stack(),
            kernel: opts.kernel.clone(),
            boot_args: Some(PROBE_TEMPLATE_ARGS.to_string()),
            pooled: opts.pooled,
            agent_port: opts.agent_port,
            agent_timeout: AGENT_TIMEOUT,
            depth: opts.concurrency,
            refill_parallelism: 4,
        },
        ui,
    )?)
}

pub(super) fn run(
    session: &Session,
    opts: &BenchOptions,
    ui: &dyn Ui,
) -> Result<BenchReport, BenchError> {
    let warm = warm_stack(session, opts, ui)?;
    let result = rounds(session, &warm, opts, ui).and_then(|burst| {
        warm.wait_full(&Quiet, Duration::from_secs(60))?;
        session.settle(Duration::from_secs(10));
        Ok((burst, paced(&warm, opts, ui)?))
    });
    let metrics = warm.pool.metrics();
    warm.shutdown();
    let (samples, paced_samples) = result?;
    let mut report = BenchReport::new(BenchKind::Acquire);
    report.latencies = summaries("burst: ", &samples);
    report.latencies.extend(summaries(
        &format!("paced {}/s: ", opts.rate),
        &paced_samples,
    ));
    for (shape, prefix) in [("bursts", "burst: "), ("paced", "paced ")] {
        let Some(total) = report
            .latencies
            .iter()
            .find(|s| s.name.starts_with(prefix) && s.name.contains("acquire ->"))
            .cloned()
        else {
            continue;
        };
        let what = format!(
            "acquire -> first agent reply, {} concurrent acquirers, {shape}",
            opts.concurrency
        );
        report.targets.push(Target::at_most(
            &format!("{what}, p50"),
            2.0,
            total.p50_us / 1e3,
            "ms",
        ));
        report.targets.push(Target::at_most(
            &format!("{what}, p99"),
            10.0,
            total.p99_us / 1e3,
            "ms",
        ));
    }
    report.figure("burst_handoffs", samples.len());
    report.figure("paced_handoffs", paced_samples.len());
    report.figure("paced_rate_per_s", opts.rate);
    report.figure("concurrency", opts.concurrency);
    report.figure("acquirers", opts.acquirers);
    report.figure("pool_created", metrics.created_total);
    report.figure(
        "pool_validation_failures",
        metrics.validation_failures_total,
    );
    Ok(report)
}

fn rounds(
    session: &Session,
    warm: &WarmStack,
    opts: &BenchOptions,
    ui: &dyn Ui,
) -> Result<Vec<HandoffTiming>, BenchError> {
    let rounds = opts.iterations.div_ceil(opts.concurrency).max(1);
    ui.stage(
        &format!(
            "{rounds} rounds of {} concurrent handoffs",
            opts.concurrency
        ),
        Some((rounds * opts.concurrency) as u64),
    );
    let all = match opts.acquirers {
        Acquirers::PerRound => per_round(session, warm, opts, rounds, ui)?,
        Acquirers::LongLived => long_lived(session, warm, opts, rounds, ui)?,
    };
    ui.finish("done");
    Ok(all)
}

/// Each round starts `concurrency` fresh threads that meet at a barrier and hand over at once.
fn per_round(
    session: &Session,
    warm: &WarmStack,
    opts: &BenchOptions,
    rounds: usize,
    ui: &dyn Ui,
) -> Result<Vec<HandoffTiming>, BenchError> {
    let all = Mutex::new(Vec::new());
    for round in 0..rounds {
        warm.wait_full(&Quiet, Duration::from_secs(60))?;
        session.settle(Duration::from_secs(10));
        let barrier = Barrier::new(opts.concurrency);
        let results: Vec<Result<Handoff, BenchError>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..opts.concurrency)
                .map(|i| {
                    let barrier = &barrier;
                    s.spawn(move || {
                        barrier.wait();
                        let tenant = format!("b{round}-{i}");
                        warm.handoff(&tenant, &["bench"])
                            .map_err(|e| BenchError::from(Box::new(e)))
                    })
                })
                .collect();
            hs.into_iter().filter_map(|h| h.join().ok()).collect()
        });
        let mut got = all.lock().unwrap_or_else(|p| p.into_inner());
        let mut failure = None;
        for r in results {
            match r {
                Ok(h) => got.push(warm.release(h)),
                Err(e) => failure = failure.or(Some(e)),
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        ui.progress(got.len() as u64);
    }
    Ok(all.into_inner().unwrap_or_else(|p| p.into_inner()))
}

/// `concurrency` threads started once, sleeping between rounds (as a server's request threads
/// do) and released together by a barrier each round.
fn long_lived(
    session: &Session,
    warm: &WarmStack,
    opts: &BenchOptions,
    rounds: usize,
    ui: &dyn Ui,
) -> Result<Vec<HandoffTiming>, BenchError> {
    let n = opts.concurrency.max(1);
    let (start, done) = (Barrier::new(n + 1), Barrier::new(n + 1));
    let stop = AtomicBool::new(false);
    let results: Mutex<Vec<Result<Handoff, HandoffError>>> = Mutex::new(Vec::new());
    let mut all = Vec::new();
    let mut failure: Option<BenchError> = None;
    std::thread::scope(|s| {
        for i in 0..n {
            let (start, done, stop, results) = (&start, &done, &stop, &results);
            s.spawn(move || {
                for round in 0..rounds {
                    start.wait();
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let r = warm.handoff(&format!("b{round}-{i}"), &["bench"]);
                    lock(results).push(r);
                    done.wait();
                }
            });
        }
        for round in 0..rounds {
            let ready = warm.wait_full(&Quiet, Duration::from_secs(60));
            if let Err(e) = ready {
                failure = Some(BenchError::from(e));
                stop.store(true, Ordering::Relaxed);
                start.wait();
                return;
            }
            session.settle(Duration::from_secs(10));
            start.wait();
            done.wait();
            for r in lock(&results).drain(..) {
                match r {
                    Ok(h) => all.push(warm.release(h)),
                    Err(e) => {
                        failure.get_or_insert(BenchError::from(Box::new(e)));
                    }
                }
            }
            ui.progress(all.len() as u64);
            if failure.is_some() {
                stop.store(true, Ordering::Relaxed);
                if round + 1 < rounds {
                    start.wait();
                }
                return;
            }
        }
    });
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(all)
}

/// `concurrency` threads share one schedule of start times, `1/rate` apart; each takes the next
/// slot, waits for it, and hands a VM over.
fn paced(
    warm: &WarmStack,
    opts: &BenchOptions,
    ui: &dyn Ui,
) -> Result<Vec<HandoffTiming>, BenchError> {
    let total = opts.iterations.max(1);
    let interval = Duration::from_secs_f64(1.0 / f64::from(opts.rate.max(1)));
    ui.stage(
        &format!(
            "{total} handoffs at {}/s by {} acquirers",
            opts.rate, opts.concurrency
        ),
        Some(total as u64),
    );
    let next = std::sync::atomic::AtomicUsize::new(0);
    let start = std::time::Instant::now();
    let out = Mutex::new(Vec::with_capacity(total));
    let failure = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..opts.concurrency.max(1) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= total || failure.lock().is_ok_and(|f| f.is_some()) {
                        return;
                    }
                    let at = start + interval.mul_f64(i as f64);
                    if let Some(wait) = at.checked_duration_since(std::time::Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    match warm.handoff(&format!("p{i}"), &["bench"]) {
                        Ok(h) => {
                            let timing = warm.release(h);
                            let mut v = out.lock().unwrap_or_else(|p| p.into_inner());
                            v.push(timing);
                            ui.progress(v.len() as u64);
                        }
                        Err(e) => {
                            *failure.lock().unwrap_or_else(|p| p.into_inner()) =
                                Some(BenchError::from(Box::new(e)));
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    ui.finish("done");
    Ok(out.into_inner().unwrap_or_else(|p| p.into_inner()))
}

/// Which threads acquire in the burst rounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Acquirers {
    /// Fresh threads each round.
    PerRound,
    /// Threads started once, sleeping between rounds.
    LongLived,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Only pushes and drains happen under it; a poisoned one is still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
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
