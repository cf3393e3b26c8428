//! `ember bench acquire`: warm handoff under concurrency — rounds in which `concurrency`
//! tenants acquire at once from a full pool, each timed from its acquire call to its first agent
//! reply (exec echo); the pool refills between rounds.

use std::sync::{Barrier, Mutex};
use std::time::Duration;

use super::{AGENT_TIMEOUT, BenchError, BenchKind, BenchOptions, BenchReport, Target, probe_stack};
use crate::demo::summaries;
use crate::session::Session;
use crate::ui::{Quiet, Ui};
use crate::warm::{Handoff, WarmOptions, WarmStack};

pub(super) fn run(
    session: &Session,
    opts: &BenchOptions,
    ui: &dyn Ui,
) -> Result<BenchReport, BenchError> {
    let warm = WarmStack::start(
        session.provider(),
        &WarmOptions {
            stack: probe_stack(),
            kernel: opts.kernel.clone(),
            agent_port: opts.agent_port,
            agent_timeout: AGENT_TIMEOUT,
            depth: opts.concurrency,
            refill_parallelism: 4,
        },
        ui,
    )?;
    let result = rounds(&warm, opts, ui);
    let metrics = warm.pool.metrics();
    warm.shutdown();
    let samples = result?;
    let mut report = BenchReport::new(BenchKind::Acquire);
    report.latencies = summaries("", &samples);
    if let Some(total) = report
        .latencies
        .iter()
        .find(|s| s.name.starts_with("acquire ->"))
    {
        report.targets.push(Target::at_most(
            &format!(
                "acquire -> first agent reply, {} concurrent, p50",
                opts.concurrency
            ),
            2.0,
            total.p50_us / 1e3,
            "ms",
        ));
        report.targets.push(Target::at_most(
            &format!(
                "acquire -> first agent reply, {} concurrent, p99",
                opts.concurrency
            ),
            10.0,
            total.p99_us / 1e3,
            "ms",
        ));
    }
    report.figure("handoffs", samples.len());
    report.figure("concurrency", opts.concurrency);
    report.figure("pool_created", metrics.created_total);
    report.figure(
        "pool_validation_failures",
        metrics.validation_failures_total,
    );
    Ok(report)
}

fn rounds(warm: &WarmStack, opts: &BenchOptions, ui: &dyn Ui) -> Result<Vec<Handoff>, BenchError> {
    let rounds = opts.iterations.div_ceil(opts.concurrency).max(1);
    ui.stage(
        &format!(
            "{rounds} rounds of {} concurrent handoffs",
            opts.concurrency
        ),
        Some((rounds * opts.concurrency) as u64),
    );
    let all = Mutex::new(Vec::new());
    for round in 0..rounds {
        warm.wait_full(&Quiet, Duration::from_secs(60))?;
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
        for r in results {
            let h = r?;
            if let Err(e) = warm.release(&h.vm_id) {
                tracing::warn!(vm = %h.vm_id, error = %ember_core::error_chain(&e), "destroying a tenant VM");
            }
            got.push(h);
        }
        ui.progress(got.len() as u64);
    }
    ui.finish("done");
    Ok(all.into_inner().unwrap_or_else(|p| p.into_inner()))
}
