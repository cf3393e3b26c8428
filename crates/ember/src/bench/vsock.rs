//! `ember bench vsock`: the guest agent over vsock on a restored VM — connect + Hello + Health
//! (what the pool's validator pays), Ping round trips on one connection, and Exec echo
//! throughput.

use std::time::{Duration, Instant};

use ember_agent_proto::Exec;
use ember_core::{VmId, VmProvider, VmSpec};

use super::{AGENT_TIMEOUT, BenchError, BenchKind, BenchOptions, BenchReport, provider_err};
use crate::stats::Summary;
use ember_host::agent::{self, AgentError};
use ember_host::session::Session;
use ember_host::ui::Ui;

pub(super) fn run(
    session: &Session,
    opts: &BenchOptions,
    ui: &dyn Ui,
) -> Result<BenchReport, BenchError> {
    let provider = session.provider();
    let snap = super::probe_template(session, opts, ui, "bench-vsock")?;
    ui.stage("restoring a VM", None);
    let id = VmId::new("vsock-bench").map_err(provider_err("naming"))?;
    provider
        .create_with_spec(&id, &VmSpec::restore(snap.clone()))
        .map_err(provider_err("restore"))?;
    ui.finish("restored VM ready");
    let result = measure(session, &id, opts, ui);
    provider.destroy(&id).map_err(provider_err("destroy"))?;
    provider
        .delete_snapshot(&snap.snapshot_id)
        .map_err(provider_err("delete snapshot"))?;
    result
}

fn measure(
    session: &Session,
    id: &VmId,
    opts: &BenchOptions,
    ui: &dyn Ui,
) -> Result<BenchReport, BenchError> {
    let provider = session.provider();
    let n = opts.iterations;
    ui.stage("connect + hello + health", Some(n as u64));
    let mut connect = Vec::with_capacity(n);
    for i in 0..n {
        let t0 = Instant::now();
        let mut a = agent::connect(provider, id, opts.agent_port, AGENT_TIMEOUT)?;
        a.health().map_err(AgentError::Client)?;
        connect.push(t0.elapsed());
        ui.progress(i as u64 + 1);
    }
    ui.finish("done");

    let mut a = agent::connect(provider, id, opts.agent_port, AGENT_TIMEOUT)?;
    let pings = n * 10;
    ui.stage("ping round trips", Some(pings as u64));
    let mut rtt = Vec::with_capacity(pings);
    for i in 0..pings {
        let t0 = Instant::now();
        a.ping().map_err(AgentError::Client)?;
        rtt.push(t0.elapsed());
        if i % 64 == 0 {
            ui.progress(i as u64 + 1);
        }
    }
    ui.finish("done");

    ui.stage("exec echo for 2 s", None);
    let t0 = Instant::now();
    let mut execs = 0u64;
    let mut exec_lat = Vec::new();
    while t0.elapsed() < Duration::from_secs(2) {
        let t = Instant::now();
        a.exec(&Exec::new(&["echo", "throughput"]))
            .map_err(AgentError::Client)?;
        exec_lat.push(t.elapsed());
        execs += 1;
    }
    let rate = execs as f64 / t0.elapsed().as_secs_f64();
    ui.finish(&format!("{rate:.0} execs/s"));

    let mut report = BenchReport::new(BenchKind::Vsock);
    report.latencies.extend(Summary::of(
        "connect + hello + health (validator cost)",
        &connect,
    ));
    report
        .latencies
        .extend(Summary::of("ping round trip (one connection)", &rtt));
    report
        .latencies
        .extend(Summary::of("exec echo round trip", &exec_lat));
    report.figure("exec_echo_per_s", rate.round());
    Ok(report)
}
