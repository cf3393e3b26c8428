//! `ember bench restore`: restores of the template snapshot — latency one at a time, and
//! sustained throughput with parallel restorers (spare VMM processes are consumed faster than
//! they are pre-spawned, so process starts are part of the sustained figure: this is the rate a
//! pool can refill at).

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ember_core::{VmId, VmProvider, VmSpec};

use super::{BenchError, BenchKind, BenchOptions, BenchReport, Target, provider_err};
use crate::stats::Summary;
use ember_host::session::Session;
use ember_host::ui::Ui;

pub(super) fn run(
    session: &Session,
    opts: &BenchOptions,
    ui: &dyn Ui,
) -> Result<BenchReport, BenchError> {
    let provider = session.provider();
    let snap = super::probe_template(session, opts, ui, "bench-restore")?;

    // Latency: one restore at a time into a ready spare.
    ui.stage("restoring one at a time", Some(opts.iterations as u64));
    let mut latency = Vec::with_capacity(opts.iterations);
    for i in 0..opts.iterations {
        let id = VmId::new(format!("r-{i}")).map_err(provider_err("naming"))?;
        let t0 = Instant::now();
        provider
            .create_with_spec(&id, &VmSpec::restore(snap.clone()))
            .map_err(provider_err("restore"))?;
        latency.push(t0.elapsed());
        provider.destroy(&id).map_err(provider_err("destroy"))?;
        ui.progress(i as u64 + 1);
        // Let the spares refill and the destroyed VM's teardown finish, so every sample
        // restores into a ready process on a quiet host.
        session.settle(Duration::from_secs(10));
    }
    ui.finish("done");

    // Throughput: `concurrency` restorers, paused VMs (like pooled ones), destroyed afterwards.
    let total = opts.iterations.max(8 * opts.concurrency);
    let mut paused = snap.clone();
    paused.resume = false;
    ui.stage(
        &format!("{total} restores with {} restorers", opts.concurrency),
        Some(total as u64),
    );
    let next = AtomicUsize::new(0);
    let made = Mutex::new(Vec::with_capacity(total));
    let t0 = Instant::now();
    let failures: Vec<BenchError> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..opts.concurrency.max(1))
            .map(|_| {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= total {
                            return None;
                        }
                        let id = match VmId::new(format!("t-{i}")) {
                            Ok(id) => id,
                            Err(e) => return Some(BenchError::Provider("naming".into(), e)),
                        };
                        if let Err(e) =
                            provider.create_with_spec(&id, &VmSpec::restore(paused.clone()))
                        {
                            return Some(BenchError::Provider("restore".into(), e));
                        }
                        let mut m = made.lock().unwrap_or_else(|p| p.into_inner());
                        m.push(id);
                        ui.progress(m.len() as u64);
                    }
                })
            })
            .collect();
        hs.into_iter()
            .filter_map(|h| h.join().ok().flatten())
            .collect()
    });
    let wall = t0.elapsed();
    let made = made.into_inner().unwrap_or_else(|p| p.into_inner());
    for id in &made {
        provider.destroy(id).map_err(provider_err("destroy"))?;
    }
    provider
        .delete_snapshot(&snap.snapshot_id)
        .map_err(provider_err("delete snapshot"))?;
    if let Some(e) = failures.into_iter().next() {
        return Err(e);
    }
    let rate = made.len() as f64 / wall.as_secs_f64();
    ui.finish(&format!("{rate:.0} restores/s"));

    let mut report = BenchReport::new(BenchKind::Restore);
    report.latencies.extend(Summary::of(
        "restore into a ready spare (create_with_spec)",
        &latency,
    ));
    report.figure("sustained_restores", made.len());
    report.figure("sustained_restorers", opts.concurrency);
    report.figure("sustained_restores_per_s", (rate * 10.0).round() / 10.0);
    report.targets.push(Target::at_least(
        "refill rate (sustained restores incl. process starts)",
        200.0,
        rate,
        "restores/s",
    ));
    Ok(report)
}
