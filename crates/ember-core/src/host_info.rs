//! [`HostInfo`]: what machine a figure was measured on — CPU model, kernel, CPU count — read
//! from `/proc`. Every benchmark reports it: the same build measures differently on different
//! hosts, so figures are only comparable side by side on one machine.

use serde::{Deserialize, Serialize};

/// The machine a measurement ran on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInfo {
    /// `model name` of the first CPU in `/proc/cpuinfo` (`unknown` if absent).
    pub cpu_model: String,
    /// The kernel release (`/proc/sys/kernel/osrelease`).
    pub kernel: String,
    /// CPUs this process may run on.
    pub cpus: usize,
}

impl HostInfo {
    /// Reads this host's.
    pub fn read() -> HostInfo {
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, m)| m.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|k| k.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        HostInfo {
            cpu_model,
            kernel,
            cpus: std::thread::available_parallelism().map_or(1, usize::from),
        }
    }
}

impl std::fmt::Display for HostInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({} CPUs), Linux {}",
            self.cpu_model, self.cpus, self.kernel
        )
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_this_host() {
        let h = super::HostInfo::read();
        assert!(!h.kernel.is_empty());
        assert!(h.cpus >= 1);
        assert!(h.to_string().contains("Linux"));
    }
}
