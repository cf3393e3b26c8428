//! CPU time from `/proc`, for benchmarks that say where a phase's CPU went: a process's
//! (clock ticks, exited threads included, or its live threads' scheduler statistics, exact),
//! every `ember-vmm` process's, and the host's busy time.

/// `ticks` clock ticks (`CLK_TCK`, 100 when unknown), ms.
fn ticks_ms(ticks: u64) -> f64 {
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    ticks as f64 * 1e3 / hz
}

/// CPU time a process has used (user + system, its exited threads included), ms.
pub fn cpu_ms(pid: u32) -> f64 {
    let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit(')').next()?.split_whitespace().collect::<Vec<_>>();
            // Fields after the command: state is index 0, utime 11, stime 12.
            Some(rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0);
    ticks_ms(ticks)
}

/// The host's busy CPU time (every CPU's time that was not idle or waiting for I/O), ms.
pub fn host_busy_ms() -> f64 {
    let ticks = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let fields = s
                .lines()
                .next()?
                .split_whitespace()
                .skip(1)
                .filter_map(|v| v.parse::<u64>().ok())
                .collect::<Vec<_>>();
            // user nice system idle iowait irq softirq steal ...: busy is all but idle and iowait.
            let total: u64 = fields.iter().take(8).sum();
            Some(total.saturating_sub(fields.get(3)? + fields.get(4)?))
        })
        .unwrap_or(0);
    ticks_ms(ticks)
}

/// CPU time the live threads of a process have run so far (their scheduler statistics, in
/// nanoseconds: unlike `/proc/PID/stat`'s clock ticks this sees threads that run for
/// microseconds at a time, as a VMM's do), ms.
pub fn run_ms(pid: u32) -> f64 {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .filter_map(|t| {
                    let stat = std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok()?;
                    stat.split_whitespace().next()?.parse::<u64>().ok()
                })
                .sum::<u64>() as f64
                / 1e6
        })
        .unwrap_or(0.0)
}

/// CPU time every `ember-vmm` process on the host has run so far ([`run_ms`]), ms.
pub fn vmms_run_ms() -> f64 {
    std::fs::read_dir("/proc")
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                .filter(|pid| {
                    std::fs::read_to_string(format!("/proc/{pid}/comm"))
                        .is_ok_and(|c| c.trim_end() == "ember-vmm")
                })
                .map(run_ms)
                .sum()
        })
        .unwrap_or(0.0)
}
