//! The host's calls for background processes: start, input, signal, list, and the output
//! streams of ProcessStart (attached) and ProcessAttach.
//!
//! Owns [`ProcessStream`]: while it lives, it holds the client and reads the stream's events
//! (frames carrying the opening request's id) until ProcessExit, after which the connection is
//! back to plain request/reply. A stream dropped before its end poisons the connection (events
//! may still arrive on it); use one connection per stream and another for input and signals.
//! Waiting for an event past its timeout is not a failure: the process just said nothing.

use std::time::{Duration, Instant};

use super::{AgentClient, ClientError, io_error};
use crate::io::{DeadlineIo, ReadFrameError};
use crate::kind::Kind;
use crate::limits::HEADER_LEN;
use crate::message::{
    OutputStream, ProcessEntry, ProcessInput, ProcessList, ProcessSignal, ProcessStart,
    ProcessState, Reply, Request,
};

/// ProcessInput's bytes besides `data`.
const INPUT_OVERHEAD: usize = HEADER_LEN + 8 + 1 + 4;

/// A started background process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartedProcess {
    /// The agent's handle for it.
    pub handle: u64,
    /// Its pid in the guest.
    pub pid: u32,
}

/// One event of a process stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessEvent {
    /// A chunk of output, as the agent read it.
    Output {
        /// Stdout or stderr.
        stream: OutputStream,
        /// The bytes.
        data: Vec<u8>,
    },
    /// The process ended (the stream's last event).
    Exit {
        /// Exit status, `-N` for death by signal N.
        exit_code: i32,
        /// Its time limit expired and its process group was killed.
        timed_out: bool,
    },
}

/// Everything a stream carried, gathered to the end.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessOutcome {
    /// Stdout chunks, joined.
    pub stdout: Vec<u8>,
    /// Stderr chunks, joined.
    pub stderr: Vec<u8>,
    /// Exit status, `-N` for death by signal N.
    pub exit_code: i32,
    /// Killed by its time limit.
    pub timed_out: bool,
}

/// A background process as ProcessList reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    /// The agent's handle.
    pub handle: u64,
    /// Its pid.
    pub pid: u32,
    /// Still running.
    pub running: bool,
    /// Its exit code once exited.
    pub exit_code: i32,
    /// Killed by its time limit.
    pub timed_out: bool,
    /// Its stdin is open for input.
    pub stdin_open: bool,
    /// It runs on a pseudo-terminal.
    pub pty: bool,
    /// Its argv.
    pub argv: Vec<Vec<u8>>,
    /// Its working directory.
    pub cwd: Vec<u8>,
    /// Its user (empty: the agent's).
    pub user: String,
}

impl From<&ProcessEntry<'_>> for ProcessInfo {
    fn from(e: &ProcessEntry<'_>) -> Self {
        ProcessInfo {
            handle: e.handle,
            pid: e.pid,
            running: e.state == ProcessState::Running,
            exit_code: e.exit_code,
            timed_out: e.timed_out,
            stdin_open: e.stdin_open,
            pty: e.pty,
            argv: e.argv.iter().map(<[u8]>::to_vec).collect(),
            cwd: e.cwd.to_vec(),
            user: e.user.to_owned(),
        }
    }
}

impl AgentClient {
    /// Starts a background process (not attached: output is only reachable by attaching).
    pub fn process_start(
        &mut self,
        start: &ProcessStart<'_>,
    ) -> Result<StartedProcess, ClientError> {
        let mut start = *start;
        start.attach = false;
        self.call(&Request::ProcessStart(start), |reply| match reply {
            Reply::ProcessStarted { handle, pid } => Ok(StartedProcess { handle, pid }),
            _ => Err("unreachable: kind checked".to_owned()),
        })
    }

    /// Starts a background process and streams its output and exit on this connection.
    pub fn process_start_attached(
        &mut self,
        start: &ProcessStart<'_>,
    ) -> Result<ProcessStream<'_>, ClientError> {
        let mut start = *start;
        start.attach = true;
        let id = self.next_id;
        let started = self.call(&Request::ProcessStart(start), |reply| match reply {
            Reply::ProcessStarted { handle, pid } => Ok(StartedProcess { handle, pid }),
            _ => Err("unreachable: kind checked".to_owned()),
        })?;
        Ok(ProcessStream {
            client: self,
            id,
            process: started,
            done: false,
        })
    }

    /// Streams a background process's output from now on, and its exit, on this connection (an
    /// exited process's stream holds just its exit).
    pub fn process_attach(&mut self, handle: u64) -> Result<ProcessStream<'_>, ClientError> {
        let id = self.next_id;
        let pid = self.call(&Request::ProcessAttach { handle }, |reply| match reply {
            Reply::ProcessAttached { pid, .. } => Ok(pid),
            _ => Err("unreachable: kind checked".to_owned()),
        })?;
        Ok(ProcessStream {
            client: self,
            id,
            process: StartedProcess { handle, pid },
            done: false,
        })
    }

    /// One ProcessInput: writes what the process's stdin pipe takes of `data` within the agent's
    /// wait (cut to the agent's frame size first), closing stdin afterwards if `close` and all
    /// of it was written. Returns the bytes written.
    pub fn process_input(
        &mut self,
        handle: u64,
        data: &[u8],
        close: bool,
    ) -> Result<usize, ClientError> {
        let room = self
            .agent
            .max_frame_len
            .saturating_sub(INPUT_OVERHEAD)
            .max(1);
        let chunk = data.get(..room.min(data.len())).unwrap_or_default();
        let close = close && chunk.len() == data.len();
        let request = Request::ProcessInput(ProcessInput {
            handle,
            close,
            data: chunk,
        });
        let len = chunk.len();
        self.call(&request, |reply| match reply {
            Reply::ProcessInput { written } if written as usize <= len => Ok(written as usize),
            Reply::ProcessInput { written } => Err(format!("agent wrote {written} bytes of {len}")),
            _ => Err("unreachable: kind checked".to_owned()),
        })
    }

    /// Writes all of `data` to the process's stdin (then closes it if `close`), in as many
    /// ProcessInput calls as it takes within this client's call timeout. Returns the bytes
    /// written: fewer than `data.len()` when the process stopped reading.
    pub fn write_stdin(
        &mut self,
        handle: u64,
        data: &[u8],
        close: bool,
    ) -> Result<usize, ClientError> {
        let deadline = Instant::now() + self.call_timeout;
        let mut written = 0;
        loop {
            let rest = data.get(written..).unwrap_or_default();
            written += self.process_input(handle, rest, close)?;
            if written >= data.len() || Instant::now() >= deadline {
                return Ok(written);
            }
        }
    }

    /// Sends `signal` to the process (`group`: to its whole process group).
    pub fn process_signal(
        &mut self,
        handle: u64,
        signal: u8,
        group: bool,
    ) -> Result<(), ClientError> {
        let request = Request::ProcessSignal(ProcessSignal {
            handle,
            signal,
            group,
        });
        self.call(&request, |reply| match reply {
            Reply::ProcessSignal => Ok(()),
            _ => Err("unreachable: kind checked".to_owned()),
        })
    }

    /// Sets the size of the process's pseudo-terminal.
    pub fn process_resize(&mut self, handle: u64, rows: u16, cols: u16) -> Result<(), ClientError> {
        let request = Request::ProcessResize {
            handle,
            size: crate::message::TermSize { rows, cols },
        };
        self.call(&request, |reply| match reply {
            Reply::ProcessResize => Ok(()),
            _ => Err("unreachable: kind checked".to_owned()),
        })
    }

    /// Every background process the agent knows (running, and recently exited), page by page.
    pub fn process_list(&mut self) -> Result<Vec<ProcessInfo>, ClientError> {
        let mut all = Vec::new();
        loop {
            let offset = u32::try_from(all.len()).unwrap_or(u32::MAX);
            let request = Request::ProcessList(ProcessList {
                offset,
                max_entries: 0,
            });
            let entries = &mut all;
            let more = self.call(&request, |reply| match reply {
                Reply::ProcessListing(page) => {
                    if page.more && page.entries.is_empty() {
                        return Err("an empty page that says more entries follow".to_owned());
                    }
                    entries.extend(page.entries.iter().map(|e| ProcessInfo::from(&e)));
                    Ok(page.more)
                }
                _ => Err("unreachable: kind checked".to_owned()),
            })?;
            if !more {
                return Ok(all);
            }
        }
    }
}

/// The events of one process on a client's connection, until its exit.
#[derive(Debug)]
pub struct ProcessStream<'c> {
    client: &'c mut AgentClient,
    id: u64,
    process: StartedProcess,
    done: bool,
}

impl ProcessStream<'_> {
    /// The process.
    pub fn process(&self) -> StartedProcess {
        self.process
    }

    /// Whether the exit has been received.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The next event, or `None` when nothing came within `timeout` (and after the exit).
    pub fn next_event(&mut self, timeout: Duration) -> Result<Option<ProcessEvent>, ClientError> {
        if self.done {
            return Ok(None);
        }
        if let Some(cause) = &self.client.poisoned {
            return Err(ClientError::Poisoned {
                cause: cause.clone(),
            });
        }
        let deadline = Instant::now() + timeout;
        let event = receive_event(self.client, self.id, self.process.handle, deadline, timeout);
        match event {
            Ok(Some(event)) => {
                self.done = matches!(event, ProcessEvent::Exit { .. });
                Ok(Some(event))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                // The stream is over either way; only an agent's Error leaves the stream in step.
                self.done = true;
                if e.poisons() {
                    self.client.poison(&e);
                }
                Err(e)
            }
        }
    }

    /// Gathers the stream to its end; fails with a timeout if the process is still running
    /// after `timeout` (which poisons the connection: the stream is cut off).
    pub fn wait(mut self, timeout: Duration) -> Result<ProcessOutcome, ClientError> {
        let deadline = Instant::now() + timeout;
        let mut outcome = ProcessOutcome::default();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event(left)? {
                Some(ProcessEvent::Output { stream, data }) => match stream {
                    OutputStream::Stdout => outcome.stdout.extend_from_slice(&data),
                    OutputStream::Stderr => outcome.stderr.extend_from_slice(&data),
                },
                Some(ProcessEvent::Exit {
                    exit_code,
                    timed_out,
                }) => {
                    outcome.exit_code = exit_code;
                    outcome.timed_out = timed_out;
                    return Ok(outcome);
                }
                None => {
                    return Err(ClientError::Timeout {
                        request: Kind::ProcessAttach,
                        stage: "waiting for the process to exit",
                        timeout,
                    });
                }
            }
        }
    }
}

impl Drop for ProcessStream<'_> {
    fn drop(&mut self) {
        if !self.done {
            let cause = ClientError::Protocol {
                request: Kind::ProcessAttach,
                detail: "a process stream was dropped before its exit".to_owned(),
            };
            self.client.poison(&cause);
        }
    }
}

/// Reads the next frame of stream `id`: an event, `None` on timeout, or the stream's error.
fn receive_event(
    client: &mut AgentClient,
    id: u64,
    handle: u64,
    deadline: Instant,
    timeout: Duration,
) -> Result<Option<ProcessEvent>, ClientError> {
    let kind = Kind::ProcessAttach;
    let mut io = DeadlineIo::new(&client.stream, deadline);
    let bytes = match client.reader.read_frame(&mut io) {
        Ok(bytes) => bytes,
        Err(ReadFrameError::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
            ) =>
        {
            // Partial bytes stay buffered; the next call continues the frame.
            return Ok(None);
        }
        Err(ReadFrameError::Io(source)) => {
            return Err(io_error(
                kind,
                timeout,
                "waiting for a process event",
                source,
            ));
        }
        Err(ReadFrameError::Closed { buffered }) => {
            return Err(ClientError::Closed {
                request: kind,
                buffered,
            });
        }
        Err(ReadFrameError::Frame(error)) => {
            return Err(ClientError::Malformed {
                request: kind,
                error: error.into(),
            });
        }
    };
    let (header, reply) = Reply::decode(bytes).map_err(|error| ClientError::Malformed {
        request: kind,
        error,
    })?;
    if header.request_id != id {
        return Err(ClientError::WrongRequestId {
            request: kind,
            expected: id,
            got: header.request_id,
        });
    }
    match reply {
        Reply::ProcessOutput(o) if o.handle == handle => Ok(Some(ProcessEvent::Output {
            stream: o.stream,
            data: o.data.to_vec(),
        })),
        Reply::ProcessExit(e) if e.handle == handle => Ok(Some(ProcessEvent::Exit {
            exit_code: e.exit_code,
            timed_out: e.timed_out,
        })),
        Reply::Error(e) => Err(ClientError::Agent {
            request: kind,
            code: e.code,
            message: e.message.to_owned(),
        }),
        other => Err(ClientError::UnexpectedReply {
            request: kind,
            got: other.kind(),
        }),
    }
}
