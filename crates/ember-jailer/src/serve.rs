//! `ember-jailer --serve`: a resident jailer that starts VMMs on request, so that a runtime
//! starting VMMs at a pool's refill rate does not pay for a jailer process per VMM.
//!
//! Started once by its owner (ember's runtime), with a Unix socket as its stdin and stdout,
//! it reads one [`Op`] per line (JSON) and answers each with one [`Reply`] line. Each VMM is
//! started with [`crate::jail::start_sibling`]: the same jail as a one-shot jailer builds, but
//! the VMM becomes the *owner's* child, so the owner watches and reaps it exactly as it would a
//! VMM it started itself, and nothing per VMM execs, links or exits here. Files a running VMM
//! is given later (a snapshot to restore) are bound into its own mount namespace
//! ([`crate::mounts::inject`]), so the host's namespace holds no mount per VMM — which every
//! new jail would otherwise copy and detach.
//!
//! What that saves, measured on this project's 2-CPU host (AMD EPYC, kernel 6.18): a one-shot
//! jailer costs ~1.2 ms of CPU to exec, link and parse its arguments before it does anything
//! (`ember-jailer --help`), and as many again to exit; the whole jailed start cost 4.3-4.7 ms
//! of CPU against 1.0-1.2 ms for the VMM alone.
//!
//! The server dies with its owner (a parent-death SIGKILL, checked against its parent pid at
//! start) and ends when its stdin closes. A tied VMM's parent-death signal is relative to the
//! owner's thread that started this server; the socket (whose peer only the owner holds)
//! tells a starting VMM whether the owner is gone already.

use std::io::{self, BufRead, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;

use crate::config::JailConfig;
use crate::jail::{self, Stdio};

/// One VMM to start.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Request {
    /// The jail (its `tie_to`, when set, ties the VMM to the owner: see the module doc).
    pub config: JailConfig,
    /// Where the cgroup trees are mounted.
    pub cgroup_root: PathBuf,
    /// The VMM's stdout and stderr.
    pub stdio: Stdio,
    /// Start the VMM in a session of its own (a VMM that outlives its owner).
    pub new_session: bool,
}

/// What the owner asks for, one a line.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Start a VMM in its jail.
    Start(Box<Request>),
    /// Bind host `source` at `target` in running VMM `pid`'s jail (`target` as the VMM sees
    /// it: an existing empty file or directory; see [`crate::mounts::inject`]).
    Expose {
        /// The VMM.
        pid: u32,
        /// The host path.
        source: PathBuf,
        /// Where it appears in the jail.
        target: PathBuf,
        /// Mounted read-only.
        read_only: bool,
    },
    /// Undo an [`Op::Expose`] (nothing mounted there, or the VMM gone, is fine).
    Hide {
        /// The VMM.
        pid: u32,
        /// The path in the jail.
        target: PathBuf,
    },
}

/// The answer to an [`Op`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// The VMM runs (exec'd in its jail): its pid in the owner's pid namespace.
    Started {
        /// The VMM's pid.
        pid: u32,
    },
    /// An expose or hide is done.
    Done,
    /// It could not be done.
    Failed {
        /// A child the owner must reap (it exited before the exec), if one was made.
        pid: Option<u32>,
        /// Why, in words.
        error: String,
    },
}

/// Serves requests from stdin until it closes. `owner` is the pid the server must have as its
/// parent (it arms a parent-death SIGKILL first, then checks).
pub fn serve(owner: u32) -> io::Result<()> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
    if u32::try_from(nix::unistd::getppid().as_raw()).ok() != Some(owner) {
        return Err(io::Error::other(format!(
            "the owner {owner} is gone; not serving"
        )));
    }
    let stdin = io::stdin();
    let mut stdout = io::stdout().lock();
    let mut line = String::new();
    loop {
        line.clear();
        if stdin.lock().read_line(&mut line)? == 0 {
            return Ok(());
        }
        let reply = handle(&line);
        let mut text = serde_json::to_string(&reply).map_err(io::Error::other)?;
        text.push('\n');
        stdout.write_all(text.as_bytes())?;
        stdout.flush()?;
    }
}

fn handle(line: &str) -> Reply {
    let op: Op = match serde_json::from_str(line) {
        Ok(op) => op,
        Err(e) => {
            return Reply::Failed {
                pid: None,
                error: format!("malformed request: {e}"),
            };
        }
    };
    let done = |r: Result<(), crate::mounts::MountError>| match r {
        Ok(()) => Reply::Done,
        Err(e) => Reply::Failed {
            pid: None,
            error: e.to_string(),
        },
    };
    match op {
        Op::Start(req) => start(*req),
        Op::Expose {
            pid,
            source,
            target,
            read_only,
        } => done(crate::mounts::inject(pid, &source, &target, read_only)),
        Op::Hide { pid, target } => done(crate::mounts::eject(pid, &target)),
    }
}

fn start(req: Request) -> Reply {
    let link = if req.config.tie_to.is_some() {
        match owner_link() {
            Ok(fd) => Some(fd),
            Err(e) => {
                return Reply::Failed {
                    pid: None,
                    error: format!("duplicating the owner's socket: {e}"),
                };
            }
        }
    } else {
        None
    };
    match jail::start_sibling(
        &req.config,
        &req.cgroup_root,
        &req.stdio,
        req.new_session,
        link,
    ) {
        Ok(started) => Reply::Started { pid: started.pid },
        Err(e) => Reply::Failed {
            pid: e.pid,
            error: format!("jailing {}: {}", req.config.id, e.error),
        },
    }
}

/// A close-on-exec copy of stdin, the socket whose peer only the owner holds.
fn owner_link() -> io::Result<OwnedFd> {
    io::stdin().as_fd().try_clone_to_owned()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn replies_and_requests_are_one_json_line_each() {
        let r = Reply::Failed {
            pid: Some(7),
            error: "no".into(),
        };
        let text = serde_json::to_string(&r).unwrap();
        assert!(!text.contains('\n'));
        assert_eq!(serde_json::from_str::<Reply>(&text).unwrap(), r);
        assert_eq!(
            serde_json::to_string(&Reply::Started { pid: 3 }).unwrap(),
            r#"{"started":{"pid":3}}"#
        );
        assert_eq!(serde_json::to_string(&Reply::Done).unwrap(), r#""done""#);
        match handle("{not json") {
            Reply::Failed { pid: None, error } => assert!(error.contains("malformed"), "{error}"),
            other => panic!("{other:?}"),
        }
    }
}
