//! `ember bench boot`: create + start the probe guest, until its agent answers Health.

use std::time::Instant;

use ember_core::{VmId, VmProvider};

use super::{
    AGENT_TIMEOUT, BenchError, BenchKind, BenchOptions, BenchReport, probe_stack, provider_err,
};
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
    let _stack = probe_stack();
    let spec = super::probe_template_spec(opts).boot;
    let mut create_start = Vec::new();
    let mut to_agent = Vec::new();
    ui.stage("booting probe guests", Some(opts.iterations as u64));
    for i in 0..opts.iterations {
        let id = VmId::new(format!("boot-{i}")).map_err(provider_err("naming"))?;
        let t0 = Instant::now();
        provider
            .create_with_spec(&id, &spec)
            .map_err(provider_err("create"))?;
        provider.start(&id).map_err(provider_err("start"))?;
        create_start.push(t0.elapsed());
        let r = loop {
            match agent::connect(provider, &id, opts.agent_port, AGENT_TIMEOUT)
                .and_then(|mut a| a.health().map_err(AgentError::Client))
            {
                Ok(_) => break Ok(t0.elapsed()),
                Err(_) if t0.elapsed() < AGENT_TIMEOUT => std::thread::yield_now(),
                Err(e) => break Err(e),
            }
        };
        provider.destroy(&id).map_err(provider_err("destroy"))?;
        to_agent.push(r?);
        session.settle(std::time::Duration::from_secs(10));
        ui.progress(i as u64 + 1);
    }
    ui.finish("booted");
    let mut report = BenchReport::new(BenchKind::Boot);
    report
        .latencies
        .extend(Summary::of("create + start (API calls)", &create_start));
    report
        .latencies
        .extend(Summary::of("create → agent answers Health", &to_agent));
    Ok(report)
}
