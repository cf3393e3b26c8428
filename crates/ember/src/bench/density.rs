//! `ember bench density`: host memory of idle pooled VMs, from each VMM's /proc/<pid>/smaps —
//! the VMM's own private pages (everything but guest memory), the guest pages it holds
//! privately (what the guest touched since restore), and PSS.

use std::time::Duration;

use ember_core::{VmQuery, VmStatus};
use serde::Serialize;

use super::{
    AGENT_TIMEOUT, BenchError, BenchKind, BenchOptions, BenchReport, Target, probe_stack,
    provider_err,
};
use crate::memory::{VmmMemory, vmm_memory};
use crate::session::Session;
use crate::ui::Ui;
use crate::warm::{PROBE_TEMPLATE_ARGS, WarmOptions, WarmStack};

#[derive(Serialize)]
struct Spread {
    mean_kib: f64,
    max_kib: u64,
}

fn spread(v: &[VmmMemory], f: fn(&VmmMemory) -> u64) -> Spread {
    let vals: Vec<u64> = v.iter().map(f).collect();
    Spread {
        mean_kib: vals.iter().sum::<u64>() as f64 / vals.len().max(1) as f64,
        max_kib: vals.iter().copied().max().unwrap_or(0),
    }
}

pub(super) fn run(
    session: &Session,
    opts: &BenchOptions,
    ui: &dyn Ui,
) -> Result<BenchReport, BenchError> {
    let stack = probe_stack();
    let warm = WarmStack::start(
        session.provider(),
        &WarmOptions {
            stack: stack.clone(),
            kernel: opts.kernel.clone(),
            boot_args: Some(PROBE_TEMPLATE_ARGS.to_string()),
            pooled: opts.pooled,
            agent_port: opts.agent_port,
            agent_timeout: AGENT_TIMEOUT,
            depth: opts.vms,
            refill_parallelism: 4,
        },
        ui,
    )?;
    // Let the pooled VMs sit idle for a moment before reading their memory.
    std::thread::sleep(Duration::from_secs(1));
    let provider = session.provider();
    let measured: Result<Vec<VmmMemory>, BenchError> = (|| {
        let mut out = Vec::new();
        for vm in provider.list().map_err(provider_err("list"))? {
            if vm.status != VmStatus::Paused || !vm.id.as_str().starts_with("warm-") {
                continue;
            }
            let pid = provider.pid(&vm.id).map_err(provider_err("pid"))?;
            let guest_kib = u64::from(stack.mem_size_mib()) * 1024;
            if let Ok(m) = vmm_memory(pid, guest_kib) {
                out.push(m);
            }
        }
        Ok(out)
    })();
    warm.shutdown();
    let mems = measured?;
    let mut report = BenchReport::new(BenchKind::Density);
    report.figure("idle_pooled_vms", mems.len());
    let vmm = spread(&mems, |m| m.vmm_private_kib);
    let max_vmm = vmm.max_kib;
    report.figure("vmm_private", vmm);
    report.figure("guest_private", spread(&mems, |m| m.guest_private_kib));
    report.figure("process_private", spread(&mems, |m| m.private_kib));
    report.figure("process_pss", spread(&mems, |m| m.pss_kib));
    report.targets.push(Target::at_most(
        "host memory per idle pooled VM beyond guest-touched pages (worst VMM, private)",
        2.0,
        max_vmm as f64 / 1024.0,
        "MiB",
    ));
    Ok(report)
}
