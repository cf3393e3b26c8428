//! `ember bench density`: what idle pooled VMs cost their host. Memory from each VMM's
//! /proc/<pid>/smaps — the VMM's own private pages (everything but guest memory), the guest
//! pages it holds privately (what the guest touched since restore), and PSS; CPU from its
//! threads' /proc schedstat over an idle window — time on a CPU and wake-ups per second (a
//! paused VM, or a running one whose guest idles without a timer, should cost none).

use std::time::Duration;

use ember_core::{VmQuery, VmStatus};
use serde::Serialize;

use super::{
    AGENT_TIMEOUT, BenchError, BenchKind, BenchOptions, BenchReport, Target, probe_stack,
    provider_err,
};
use ember_host::cpu::{CpuUse, cpu_use};
use ember_host::memory::{VmmMemory, vmm_memory};
use ember_host::session::Session;
use ember_host::ui::Ui;
use ember_host::warm::{PROBE_TEMPLATE_ARGS, WarmOptions, WarmStack};

/// How long idle VMs are watched for their CPU use.
const IDLE_WINDOW: Duration = Duration::from_secs(2);

/// A per-VM rate: mean and worst.
#[derive(Serialize)]
struct PerVm {
    mean: f64,
    max: f64,
}

impl PerVm {
    fn of(v: &[f64]) -> PerVm {
        PerVm {
            mean: v.iter().sum::<f64>() / v.len().max(1) as f64,
            max: v.iter().copied().fold(0.0, f64::max),
        }
    }
}

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
    let measured: Result<(Vec<VmmMemory>, Vec<CpuUse>), BenchError> = (|| {
        let mut pids = Vec::new();
        for vm in provider.list().map_err(provider_err("list"))? {
            let idle = matches!(vm.status, VmStatus::Paused | VmStatus::Running);
            if idle && vm.id.as_str().starts_with("warm-") {
                pids.push(provider.pid(&vm.id).map_err(provider_err("pid"))?);
            }
        }
        let before: Vec<Option<CpuUse>> = pids.iter().map(|&p| cpu_use(p).ok()).collect();
        std::thread::sleep(IDLE_WINDOW);
        let mut cpu = Vec::new();
        for (&pid, before) in pids.iter().zip(before) {
            if let (Some(before), Ok(after)) = (before, cpu_use(pid)) {
                cpu.push(after.since(before));
            }
        }
        let guest_kib = u64::from(stack.mem_size_mib()) * 1024;
        let mems = pids
            .iter()
            .filter_map(|&pid| vmm_memory(pid, guest_kib).ok())
            .collect();
        Ok((mems, cpu))
    })();
    warm.shutdown();
    let (mems, cpu) = measured?;
    let mut report = BenchReport::new(BenchKind::Density);
    report.figure("idle_pooled_vms", mems.len());
    let vmm = spread(&mems, |m| m.vmm_private_kib);
    let max_vmm = vmm.max_kib;
    report.figure("vmm_private", vmm);
    report.figure("guest_private", spread(&mems, |m| m.guest_private_kib));
    report.figure("process_private", spread(&mems, |m| m.private_kib));
    report.figure("process_pss", spread(&mems, |m| m.pss_kib));
    let per_s = |v: u64| v as f64 / IDLE_WINDOW.as_secs_f64();
    let cpu_us: Vec<f64> = cpu.iter().map(|c| per_s(c.run_ns) / 1e3).collect();
    let wakeups: Vec<f64> = cpu.iter().map(|c| per_s(c.timeslices)).collect();
    report.figure("pooled", opts.pooled);
    report.figure("idle_window_s", IDLE_WINDOW.as_secs_f64());
    report.figure("idle_cpu_us_per_s", PerVm::of(&cpu_us));
    report.figure("idle_wakeups_per_s", PerVm::of(&wakeups));
    report.targets.push(Target::at_most(
        "host memory per idle pooled VM beyond guest-touched pages (worst VMM, private)",
        2.0,
        max_vmm as f64 / 1024.0,
        "MiB",
    ));
    Ok(report)
}
