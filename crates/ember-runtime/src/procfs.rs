//! What `/proc` says about processes: the [`ProcessIdentity`] of a live one (pid, start time,
//! boot id — robust against pid reuse), [`Liveness`] (whether that very process is still there),
//! and the VMM processes whose API socket lies under a directory ([`vmm_processes_under`]), so
//! a provider finds every VMM an earlier owner of its root left, with or without a record.
//!
//! A pid alone is not an identity: after a daemon restart, a VMM's pid may belong to an
//! unrelated process. The identity therefore also keeps the process's start time (field 22 of
//! `/proc/<pid>/stat`, clock ticks since boot) and the kernel's boot id
//! (`/proc/sys/kernel/random/boot_id`), since start times restart at every boot. This module
//! reads `/proc` and nothing else; it never signals or reaps a process.

use std::io;
use std::path::PathBuf;

use std::path::Path;

use ember_core::ProcessIdentity;

/// Where the kernel publishes the current boot's id.
const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

/// What became of a recorded process.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
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
    /// What became of the process, in words.
    pub fn describe(&self) -> String {
        match self {
            Liveness::Alive => "alive".into(),
            Liveness::Exited => "it exited".into(),
            Liveness::Zombie => "it exited and awaits reaping".into(),
            Liveness::PidReused { start_time } => {
                format!("its pid now belongs to a process started at tick {start_time}")
            }
            Liveness::Rebooted => "the host rebooted since".into(),
        }
    }

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
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH) => {
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

/// Takes the identity of the live process `pid` (right after spawning a VMM, say).
pub fn identity_of(pid: u32) -> Result<ProcessIdentity, ProcError> {
    let stat = read_stat(pid)?.ok_or(ProcError::NoSuchProcess { pid })?;
    Ok(ProcessIdentity {
        pid,
        start_time: stat.start_time,
        boot_id: boot_id()?,
    })
}

/// Whether the process `id` names is still alive, has exited, or lost its pid to another
/// process.
pub fn liveness(id: &ProcessIdentity) -> Result<Liveness, ProcError> {
    if boot_id()? != id.boot_id {
        return Ok(Liveness::Rebooted);
    }
    let Some(stat) = read_stat(id.pid)? else {
        return Ok(Liveness::Exited);
    };
    if stat.start_time != id.start_time {
        return Ok(Liveness::PidReused {
            start_time: stat.start_time,
        });
    }
    if stat.is_dead() {
        return Ok(Liveness::Zombie);
    }
    Ok(Liveness::Alive)
}

/// A VMM process found in `/proc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundVmm {
    /// Its identity.
    pub identity: ProcessIdentity,
    /// The slot number its API socket path names (`<slots>/<n>/...`).
    pub slot: u64,
}

/// Every live (not zombie) process whose command line has `--api-sock <slots>/<n>/...`: the
/// VMMs of a provider root, whether or not anything recorded them.
pub fn vmm_processes_under(slots: &Path) -> Vec<FoundVmm> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id();
    let mut found = Vec::new();
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let Some(slot) = slot_in_cmdline(&cmdline, slots) else {
            continue;
        };
        match identity_of(pid) {
            Ok(identity) if read_stat(pid).ok().flatten().is_some_and(|s| !s.is_dead()) => {
                found.push(FoundVmm { identity, slot });
            }
            _ => {}
        }
    }
    found.sort_by_key(|f| f.slot);
    found
}

/// The slot named by a NUL-separated command line's `--api-sock <slots>/<n>/...` argument.
fn slot_in_cmdline(cmdline: &[u8], slots: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let mut args = cmdline.split(|b| *b == 0);
    while let Some(arg) = args.next() {
        if arg == b"--api-sock" {
            let path = Path::new(std::ffi::OsStr::from_bytes(args.next()?));
            let rest = path.strip_prefix(slots).ok()?;
            let first = rest.components().next()?;
            return first.as_os_str().to_str()?.parse().ok();
        }
    }
    None
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
        let me = identity_of(std::process::id()).unwrap();
        assert_eq!(me.pid, std::process::id());
        assert_eq!(liveness(&me).unwrap(), Liveness::Alive);
    }

    #[test]
    fn a_different_start_time_or_boot_is_not_the_same_process() {
        let me = identity_of(std::process::id()).unwrap();
        let impostor = ProcessIdentity {
            start_time: me.start_time + 1,
            ..me.clone()
        };
        assert_eq!(
            liveness(&impostor).unwrap(),
            Liveness::PidReused {
                start_time: me.start_time
            }
        );
        let old_boot = ProcessIdentity {
            boot_id: "00000000-0000-0000-0000-000000000000".into(),
            ..me
        };
        assert_eq!(liveness(&old_boot).unwrap(), Liveness::Rebooted);
    }

    #[test]
    fn zombie_then_exited() {
        let mut child = Command::new("true").stdout(Stdio::null()).spawn().unwrap();
        let id = identity_of(child.id()).unwrap();
        // Until it is reaped, the exited child is a zombie.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while liveness(&id).unwrap() != Liveness::Zombie {
            assert!(
                std::time::Instant::now() < deadline,
                "child never became a zombie"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        child.wait().unwrap();
        assert!(matches!(
            liveness(&id).unwrap(),
            Liveness::Exited | Liveness::PidReused { .. }
        ));
    }

    #[test]
    fn slots_are_found_in_command_lines() {
        let slots = Path::new("/run/ember/slots");
        let line = b"/usr/bin/ember-vmm\0--api-sock\0/run/ember/slots/17/api.sock\0--id\0x\0";
        assert_eq!(slot_in_cmdline(line, slots), Some(17));
        let other = b"ember-vmm\0--api-sock\0/run/other/slots/17/api.sock\0";
        assert_eq!(slot_in_cmdline(other, slots), None);
        assert_eq!(slot_in_cmdline(b"sleep\0sixty\0", slots), None);
        assert_eq!(slot_in_cmdline(b"x\0--api-sock\0", slots), None);
    }

    #[test]
    fn invalid_pids_are_rejected() {
        assert!(matches!(read_stat(0), Err(ProcError::InvalidPid { .. })));
        assert!(matches!(
            identity_of(u32::MAX),
            Err(ProcError::InvalidPid { .. })
        ));
    }
}
