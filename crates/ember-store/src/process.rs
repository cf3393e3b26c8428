//! [`ProcessIdentity`]: which VMM process a machine record means, robust to pid reuse, and
//! [`Liveness`]: whether that very process is still there.
//!
//! A pid alone is not an identity: after the daemon restarts, the VMM's pid may belong to an
//! unrelated process. The identity therefore also keeps the process's start time (field 22 of
//! `/proc/<pid>/stat`, clock ticks since boot) and the kernel's boot id
//! (`/proc/sys/kernel/random/boot_id`), since start times restart at every boot. This module reads
//! `/proc` and nothing else; it never signals or reaps a process.

use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where the kernel publishes the current boot's id.
const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

/// A process, identified so that a reused pid is not mistaken for it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ProcessIdentity {
    /// The process id.
    pub pid: u32,
    /// Its start time in clock ticks since boot (`/proc/<pid>/stat` field 22).
    pub start_time: u64,
    /// The boot id of the kernel it ran under.
    pub boot_id: String,
}

/// What became of a recorded process.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum Liveness {
    /// The same process (pid, start time and boot all match) is running or stopped, not dead.
    Alive,
    /// No process has this pid any more.
    Exited,
    /// The process has exited but has not been reaped yet; it will never run again.
    Zombie,
    /// The pid now belongs to another process (it started at another time).
    PidReused {
        /// The start time of the process that has the pid now.
        start_time: u64,
    },
    /// The host rebooted since the identity was taken: every process of that boot is gone.
    Rebooted,
}

impl Liveness {
    /// Whether the recorded process itself is still alive.
    pub fn is_alive(&self) -> bool {
        matches!(self, Liveness::Alive)
    }
}

/// Reading `/proc` failed in a way that says nothing about the process.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProcError {
    /// A `/proc` file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A `/proc` file did not have the expected shape.
    #[error("cannot parse {path}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What did not match.
        reason: String,
    },
    /// There is no process with this pid (when taking an identity).
    #[error("no process has pid {pid}")]
    NoSuchProcess {
        /// The pid.
        pid: u32,
    },
    /// The pid is 0 or beyond what Linux hands out.
    #[error("{pid} is not a valid process id")]
    InvalidPid {
        /// The pid.
        pid: u32,
    },
}

/// The fields of `/proc/<pid>/stat` this module uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// The state letter (field 3): `R`, `S`, `D`, `T`, `Z`, `X`...
    pub state: char,
    /// Start time in clock ticks since boot (field 22).
    pub start_time: u64,
}

impl ProcStat {
    /// Whether the process has exited (zombie or dead) and merely awaits reaping.
    pub fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Parses the text of `/proc/<pid>/stat`.
///
/// Field 2 (the command name) is in parentheses and may itself contain spaces and parentheses, so
/// the fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Result<ProcStat, String> {
    let close = text
        .rfind(')')
        .ok_or_else(|| "no ')' closing the command name".to_string())?;
    let mut rest = text[close + 1..].split_ascii_whitespace();
    // After the command name: field 3 (state) is the first, field 22 (starttime) the twentieth.
    let state = rest
        .next()
        .and_then(|s| s.chars().next())
        .ok_or_else(|| "missing field 3 (state)".to_string())?;
    let start = rest
        .nth(18)
        .ok_or_else(|| "missing field 22 (starttime)".to_string())?;
    let start_time = start
        .parse()
        .map_err(|_| format!("field 22 (starttime) {start:?} is not a number"))?;
    Ok(ProcStat { state, start_time })
}

/// Reads `/proc/<pid>/stat`; `Ok(None)` if there is no such process.
pub fn read_stat(pid: u32) -> Result<Option<ProcStat>, ProcError> {
    if pid == 0 || i32::try_from(pid).is_err() {
        return Err(ProcError::InvalidPid { pid });
    }
    let path = PathBuf::from(format!("/proc/{pid}/stat"));
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        // ENOENT: no such pid. ESRCH: it was reaped between open and read.
        Err(e)
            if e.kind() == io::ErrorKind::NotFound
                || e.raw_os_error() == Some(nix::libc::ESRCH) =>
        {
            return Ok(None);
        }
        Err(source) => return Err(ProcError::Read { path, source }),
    };
    parse_stat(&text)
        .map(Some)
        .map_err(|reason| ProcError::Parse { path, reason })
}

/// The current boot's id.
pub fn boot_id() -> Result<String, ProcError> {
    let text = std::fs::read_to_string(BOOT_ID_PATH).map_err(|source| ProcError::Read {
        path: PathBuf::from(BOOT_ID_PATH),
        source,
    })?;
    let id = text.trim();
    if id.is_empty() {
        return Err(ProcError::Parse {
            path: PathBuf::from(BOOT_ID_PATH),
            reason: "empty".to_string(),
        });
    }
    Ok(id.to_string())
}

impl ProcessIdentity {
    /// Takes the identity of the live process `pid` (right after spawning the VMM, say).
    pub fn of(pid: u32) -> Result<Self, ProcError> {
        let stat = read_stat(pid)?.ok_or(ProcError::NoSuchProcess { pid })?;
        Ok(Self {
            pid,
            start_time: stat.start_time,
            boot_id: boot_id()?,
        })
    }

    /// The identity of the calling process.
    pub fn current() -> Result<Self, ProcError> {
        Self::of(std::process::id())
    }

    /// Whether the process this identity names is still alive, has exited, or lost its pid to
    /// another process.
    pub fn check(&self) -> Result<Liveness, ProcError> {
        if boot_id()? != self.boot_id {
            return Ok(Liveness::Rebooted);
        }
        let Some(stat) = read_stat(self.pid)? else {
            return Ok(Liveness::Exited);
        };
        if stat.start_time != self.start_time {
            return Ok(Liveness::PidReused {
                start_time: stat.start_time,
            });
        }
        if stat.is_dead() {
            return Ok(Liveness::Zombie);
        }
        Ok(Liveness::Alive)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[test]
    fn parses_stat_with_hostile_command_names() {
        let fields_after: String = (4..=21)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(" ");
        for comm in ["vmm", "a) b (c", "x))", " "] {
            let text = format!("42 ({comm}) S {fields_after} 987654 23 24\n");
            let stat = parse_stat(&text).unwrap();
            assert_eq!(stat.state, 'S', "{comm}");
            assert_eq!(stat.start_time, 987654, "{comm}");
        }
        assert!(parse_stat("42 (vmm S 1 2").is_err());
        assert!(
            parse_stat("42 (vmm) S 1 2")
                .unwrap_err()
                .contains("field 22")
        );
    }

    #[test]
    fn own_identity_is_alive() {
        let me = ProcessIdentity::current().unwrap();
        assert_eq!(me.pid, std::process::id());
        assert_eq!(me.check().unwrap(), Liveness::Alive);
    }

    #[test]
    fn a_different_start_time_or_boot_is_not_the_same_process() {
        let me = ProcessIdentity::current().unwrap();
        let impostor = ProcessIdentity {
            start_time: me.start_time + 1,
            ..me.clone()
        };
        assert_eq!(
            impostor.check().unwrap(),
            Liveness::PidReused {
                start_time: me.start_time
            }
        );
        let old_boot = ProcessIdentity {
            boot_id: "00000000-0000-0000-0000-000000000000".into(),
            ..me
        };
        assert_eq!(old_boot.check().unwrap(), Liveness::Rebooted);
    }

    #[test]
    fn zombie_then_exited() {
        let mut child = Command::new("true").stdout(Stdio::null()).spawn().unwrap();
        let id = ProcessIdentity::of(child.id()).unwrap();
        // Until it is reaped, the exited child is a zombie.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while id.check().unwrap() != Liveness::Zombie {
            assert!(
                std::time::Instant::now() < deadline,
                "child never became a zombie"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        child.wait().unwrap();
        assert!(matches!(
            id.check().unwrap(),
            Liveness::Exited | Liveness::PidReused { .. }
        ));
    }

    #[test]
    fn invalid_pids_are_rejected() {
        assert!(matches!(read_stat(0), Err(ProcError::InvalidPid { .. })));
        assert!(matches!(
            ProcessIdentity::of(u32::MAX),
            Err(ProcError::InvalidPid { .. })
        ));
    }
}
