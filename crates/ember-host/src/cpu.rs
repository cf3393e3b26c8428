//! Host CPU a VMM process uses, from `/proc/<pid>/task/*/schedstat`: nanoseconds on a CPU and
//! times scheduled in, summed over its threads (vCPUs, device thread, API thread).

/// One process's CPU use so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuUse {
    /// Nanoseconds its threads ran.
    pub run_ns: u64,
    /// Times its threads were scheduled onto a CPU (each a host wake-up or preemption).
    pub timeslices: u64,
}

impl CpuUse {
    /// What was used between `earlier` and `self`.
    pub fn since(self, earlier: CpuUse) -> CpuUse {
        CpuUse {
            run_ns: self.run_ns.saturating_sub(earlier.run_ns),
            timeslices: self.timeslices.saturating_sub(earlier.timeslices),
        }
    }
}

/// Sums the schedstat of every thread of `pid`.
pub fn cpu_use(pid: u32) -> std::io::Result<CpuUse> {
    let mut total = CpuUse::default();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = task?.path().join("schedstat");
        // A thread that exited since the listing has no schedstat any more.
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let t = parse_schedstat(&text).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: unexpected contents {text:?}", path.display()),
            )
        })?;
        total.run_ns += t.run_ns;
        total.timeslices += t.timeslices;
    }
    Ok(total)
}

/// `schedstat` is "<ns on cpu> <ns waiting> <timeslices>".
fn parse_schedstat(text: &str) -> Option<CpuUse> {
    let mut f = text.split_whitespace().map(|w| w.parse::<u64>().ok());
    let run_ns = f.next()??;
    let _waiting = f.next()??;
    let timeslices = f.next()??;
    Some(CpuUse { run_ns, timeslices })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_schedstat_and_rejects_garbage() {
        assert_eq!(
            parse_schedstat("123 456 7\n"),
            Some(CpuUse {
                run_ns: 123,
                timeslices: 7
            })
        );
        assert_eq!(parse_schedstat("123 456"), None);
        assert_eq!(parse_schedstat("x 1 2"), None);
    }

    #[test]
    fn this_process_has_used_some_cpu() {
        let before = cpu_use(std::process::id()).unwrap();
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let after = cpu_use(std::process::id()).unwrap();
        assert!(after.since(before).run_ns > 0);
        assert!(after.timeslices >= 1);
    }
}
