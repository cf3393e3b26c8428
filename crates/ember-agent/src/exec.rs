//! Exec and ExecIn: run a command to its end and answer with its exit status and output.
//!
//! Owns the synchronous command: spawn with pipes, feed stdin, collect stdout and stderr up to
//! what the reply frame holds (the rest is read and dropped, so the command never blocks on a
//! full pipe), and on a time limit kill the process group and answer `TIMED_OUT`. Background
//! processes are `procs`' job; spawning is `process`'s.
#![forbid(unsafe_code)]

use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use ember_agent_proto::ErrorCode;

use crate::agent::Agent;
use crate::process::prepare::{CommandRequest, prepare, spawn_refusal};
use crate::process::pump::{Feed, Stream, pump};
use crate::process::spawn::{Stdio, pipe};
use crate::refusal::Refusal;

/// What a finished command printed and how it ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The protocol's exit code (`-N` for signal N).
    pub exit_code: i32,
    /// Standard output (cut to the reply's room).
    pub stdout: Vec<u8>,
    /// Standard error (cut to what room stdout left).
    pub stderr: Vec<u8>,
    /// Stdout was cut.
    pub stdout_truncated: bool,
    /// Stderr was cut.
    pub stderr_truncated: bool,
}

/// Runs `command` with `stdin` to its end; stdout and stderr together keep at most `room` bytes.
/// If `peer` (the host's connection) hangs up first, the command is killed.
pub fn run(
    agent: &Agent,
    command: &CommandRequest<'_>,
    stdin: &[u8],
    timeout_ms: u32,
    room: usize,
    peer: Option<BorrowedFd<'_>>,
) -> Result<Outcome, Refusal> {
    let spec = prepare(command, &agent.resolver, &agent.users)?;
    let argv0 = command.argv.get(0).unwrap_or_default();
    let setup = |e| spawn_refusal(argv0, &e);
    let (stdin_r, stdin_w) = pipe().map_err(setup)?;
    let (stdout_r, stdout_w) = pipe().map_err(setup)?;
    let (stderr_r, stderr_w) = pipe().map_err(setup)?;
    let stdio = Stdio {
        stdin: stdin_r.as_fd(),
        stdout: stdout_w.as_fd(),
        stderr: stderr_w.as_fd(),
    };
    let started = Instant::now();
    let (pid, exit) = agent.reaper.spawn(&spec, stdio).map_err(setup)?;
    let _tracked = agent.procs.track_exec(pid);
    // The child has its copies; ours would keep the pipes open.
    drop((stdin_r, stdout_w, stderr_w));
    tracing::debug!(pid = pid.as_raw(), program = %String::from_utf8_lossy(argv0), "exec");

    let deadline = (timeout_ms > 0).then(|| started + Duration::from_millis(u64::from(timeout_ms)));
    let mut outcome = Outcome::default();
    let ended = pump(
        pid,
        &exit,
        stdout_r,
        Some(stderr_r),
        Some(Feed {
            fd: stdin_w,
            data: stdin,
        }),
        deadline,
        peer,
        |stream, chunk| {
            let (buf, cut) = match stream {
                Stream::Stdout => (&mut outcome.stdout, &mut outcome.stdout_truncated),
                Stream::Stderr => (&mut outcome.stderr, &mut outcome.stderr_truncated),
            };
            let keep = room.saturating_sub(buf.len()).min(chunk.len());
            buf.extend_from_slice(chunk.get(..keep).unwrap_or_default());
            *cut |= keep < chunk.len();
        },
    );
    if ended.cancelled {
        return Err(Refusal::new(
            ErrorCode::IO,
            "the host hung up: the command was killed",
        ));
    }
    if ended.timed_out {
        return Err(Refusal::new(
            ErrorCode::TIMED_OUT,
            format!(
                "{} ran longer than its {timeout_ms} ms limit: its process group was killed",
                String::from_utf8_lossy(argv0)
            ),
        ));
    }
    outcome.exit_code = ended.exit.wire_code();
    // Stdout first, stderr in what it leaves.
    if outcome.stdout.len() > room {
        outcome.stdout.truncate(room);
        outcome.stdout_truncated = true;
    }
    let stderr_room = room - outcome.stdout.len();
    if outcome.stderr.len() > stderr_room {
        outcome.stderr.truncate(stderr_room);
        outcome.stderr_truncated = true;
    }
    Ok(outcome)
}
