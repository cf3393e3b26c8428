//! [`Agent`]: the state every connection shares.
//!
//! Owns the agent-wide facts and services — the path resolver, the user database, the reaper,
//! the table of background processes, the boot id and the generation Reseed last set — and the
//! answers that need nothing else (Health, Reseed, Shutdown). Connections are the server's.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ember_agent_proto::limits::BOOT_ID_LEN;
use ember_agent_proto::{HealthReport, Reseed};
use nix::time::{ClockId, clock_gettime};

use crate::paths::Resolver;
use crate::process::reaper::Reaper;
use crate::procs::Table;
use crate::refusal::Refusal;
use crate::reseed;
use crate::users::UserDb;

/// What Shutdown does after its reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownMode {
    /// Power the guest off (the agent is PID 1).
    PowerOff,
    /// Exit the agent (under another init, or in tests).
    Exit,
}

/// How the agent was configured.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Relative paths and commands without `cwd` start here.
    pub workdir: PathBuf,
    /// Where the user database is (`/etc`).
    pub etc: PathBuf,
    /// The device Reseed's entropy goes to (`/dev/random`).
    pub random: PathBuf,
    /// Name announced in HelloOk.
    pub name: String,
    /// What Shutdown does.
    pub shutdown: ShutdownMode,
}

/// The state every connection shares.
#[derive(Debug)]
pub struct Agent {
    /// Request paths to guest paths.
    pub resolver: Resolver,
    /// `/etc/passwd` and `/etc/group`.
    pub users: UserDb,
    /// The thread that collects exit statuses.
    pub reaper: Arc<Reaper>,
    /// Background processes.
    pub procs: Table,
    /// The configuration.
    pub config: AgentConfig,
    boot_id: [u8; BOOT_ID_LEN],
    generation: AtomicU64,
}

impl Agent {
    /// The agent, its reaper started.
    pub fn new(config: AgentConfig) -> std::io::Result<Arc<Agent>> {
        Ok(Arc::new(Agent {
            resolver: Resolver::new(config.workdir.clone()),
            users: UserDb::at(&config.etc),
            reaper: Reaper::start()?,
            procs: Table::default(),
            boot_id: boot_id(),
            generation: AtomicU64::new(0),
            config,
        }))
    }

    /// Health: uptime since boot (CLOCK_BOOTTIME, which a restored snapshot continues), the
    /// kernel's boot id, the generation.
    pub fn health(&self) -> HealthReport {
        let uptime_ns = clock_gettime(ClockId::CLOCK_BOOTTIME)
            .map(|t| {
                u64::try_from(t.tv_sec())
                    .unwrap_or(0)
                    .saturating_mul(1_000_000_000)
                    .saturating_add(u64::try_from(t.tv_nsec()).unwrap_or(0))
            })
            .unwrap_or(0);
        HealthReport {
            uptime_ns,
            boot_id: self.boot_id,
            generation: self.generation.load(Ordering::SeqCst),
        }
    }

    /// Reseed: entropy and clock, then the generation.
    pub fn reseed(&self, request: &Reseed<'_>) -> Result<u64, Refusal> {
        let applied = reseed::reseed(&self.config.random, request.entropy, request.wall_clock_ns)
            .map_err(|e| Refusal::io("reseed", &e))?;
        self.generation.store(request.generation, Ordering::SeqCst);
        tracing::info!(
            generation = request.generation,
            entropy_bytes = applied.entropy_bytes,
            clock_step_ns = applied.clock_step_ns as i64,
            "reseeded"
        );
        Ok(request.generation)
    }

    /// After Shutdown's reply: power off or exit.
    pub fn shutdown(&self) -> ! {
        tracing::info!(mode = ?self.config.shutdown, "shutdown requested");
        self.procs.kill_all();
        match self.config.shutdown {
            ShutdownMode::PowerOff => crate::init::power_off(),
            ShutdownMode::Exit => std::process::exit(0),
        }
    }
}

/// The kernel's boot id (random per boot), or random bytes if it cannot be read.
fn boot_id() -> [u8; BOOT_ID_LEN] {
    let mut id = [0u8; BOOT_ID_LEN];
    if let Ok(text) = std::fs::read_to_string("/proc/sys/kernel/random/boot_id") {
        let hex: Vec<u8> = text.bytes().filter(u8::is_ascii_hexdigit).collect();
        if hex.len() == BOOT_ID_LEN * 2 {
            for (byte, pair) in id.iter_mut().zip(hex.chunks(2)) {
                let s = std::str::from_utf8(pair).unwrap_or("00");
                *byte = u8::from_str_radix(s, 16).unwrap_or(0);
            }
            return id;
        }
    }
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut id);
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_id_is_the_kernels() {
        let id = boot_id();
        assert_ne!(id, [0; BOOT_ID_LEN]);
        assert_eq!(id, boot_id());
    }
}
