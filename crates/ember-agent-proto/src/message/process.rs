//! Background processes: the bodies of ProcessStart, ProcessInput, ProcessSignal, ProcessList,
//! ProcessAttach, their replies, and the two stream events (ProcessOutput, ProcessExit).
//!
//! Owns these layouts and their rules (flag bits, signal numbers, stream tags) and the
//! ProcessListing entries (borrowed from a frame or from the caller, like DirListing's). The
//! request and reply enums call in here; framing is the frame module's job.

use core::fmt;

use super::rules;
use crate::codec::{Reader, Writer};
use crate::error::{FieldError, FieldProblem};
use crate::kind::Kind;
use crate::limits::HEADER_LEN;
use crate::list::ByteList;

/// ProcessStart `flags` bit 0: the process's stdin is a pipe the host writes with ProcessInput
/// (otherwise `/dev/null`).
pub const START_STDIN: u8 = 0b01;
/// ProcessStart `flags` bit 1: stream the process's output and exit on this connection.
pub const START_ATTACH: u8 = 0b10;
/// ProcessStart `flags` bit 2: run on a new pseudo-terminal of `rows` × `cols`.
pub const START_PTY: u8 = 0b100;
/// ProcessInput `flags` bit 0: close stdin once `data` is written.
pub const INPUT_CLOSE: u8 = 0b1;
/// ProcessExit and listing `flags` bit 0: the time limit expired and the group was killed.
pub const EXIT_TIMED_OUT: u8 = 0b1;
/// Listing `flags` bit 1: the process's stdin is still open for ProcessInput.
pub const ENTRY_STDIN_OPEN: u8 = 0b10;
/// Listing `flags` bit 2: the process runs on a pseudo-terminal.
pub const ENTRY_PTY: u8 = 0b100;

/// A terminal's size in character cells.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TermSize {
    /// Rows (at least 1).
    pub rows: u16,
    /// Columns (at least 1).
    pub cols: u16,
}

impl TermSize {
    /// The classic 24 × 80.
    pub const DEFAULT: TermSize = TermSize { rows: 24, cols: 80 };
}

/// ProcessStart: start a command in the background.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessStart<'a> {
    /// Program and arguments (as Exec).
    pub argv: ByteList<'a>,
    /// Environment entries (as Exec).
    pub env: ByteList<'a>,
    /// Working directory (as ExecIn); empty: the agent's default.
    pub cwd: &'a [u8],
    /// User (as ExecIn); empty: the agent's default.
    pub user: &'a str,
    /// Keep stdin open for ProcessInput ([`START_STDIN`]).
    pub stdin: bool,
    /// Stream output and exit on this connection ([`START_ATTACH`]).
    pub attach: bool,
    /// Guest-side time limit in milliseconds (0: none); on expiry the process group is killed
    /// and the exit says so.
    pub timeout_ms: u32,
    /// Run on a pseudo-terminal of this size ([`START_PTY`]); `None`: pipes.
    pub pty: Option<TermSize>,
}

impl<'a> ProcessStart<'a> {
    /// A command with no environment, the agent's defaults, stdin `/dev/null`, not attached.
    pub const fn new(argv: &'a [&'a str]) -> Self {
        ProcessStart {
            argv: ByteList::from_strs(argv),
            env: ByteList::EMPTY,
            cwd: &[],
            user: "",
            stdin: false,
            attach: false,
            timeout_ms: 0,
            pty: None,
        }
    }

    /// On a pseudo-terminal of `rows` × `cols` (stdin, stdout and stderr are the terminal; its
    /// output comes as stdout; ProcessInput types into it).
    pub const fn with_pty(mut self, rows: u16, cols: u16) -> Self {
        self.pty = Some(TermSize { rows, cols });
        self
    }

    /// With environment entries `KEY=VALUE`.
    pub const fn with_env(mut self, env: &'a [&'a str]) -> Self {
        self.env = ByteList::from_strs(env);
        self
    }

    /// In working directory `cwd`.
    pub const fn with_cwd(mut self, cwd: &'a [u8]) -> Self {
        self.cwd = cwd;
        self
    }

    /// As `user`.
    pub const fn with_user(mut self, user: &'a str) -> Self {
        self.user = user;
        self
    }

    /// With stdin kept open for ProcessInput.
    pub const fn with_stdin(mut self) -> Self {
        self.stdin = true;
        self
    }

    /// With a guest-side time limit.
    pub const fn with_timeout_ms(mut self, timeout_ms: u32) -> Self {
        self.timeout_ms = timeout_ms;
        self
    }

    pub(crate) fn write(&self, w: &mut Writer<'_>) -> Result<(), FieldError> {
        w.list(&rules::ARGV, &self.argv)?;
        w.list(&rules::ENV, &self.env)?;
        w.bytes(&rules::CWD, self.cwd)?;
        w.bytes(&rules::USER, self.user.as_bytes())?;
        w.u8(flag(self.stdin, START_STDIN)
            | flag(self.attach, START_ATTACH)
            | flag(self.pty.is_some(), START_PTY));
        w.u32(self.timeout_ms);
        let size = self.pty.unwrap_or(TermSize { rows: 0, cols: 0 });
        if self.pty.is_some() {
            check_size(Kind::ProcessStart, size)?;
        }
        w.u16(size.rows);
        w.u16(size.cols);
        Ok(())
    }

    pub(crate) fn read(r: &mut Reader<'a>, kind: Kind) -> Result<Self, FieldError> {
        let argv = r.list(&rules::ARGV)?;
        let env = r.list(&rules::ENV)?;
        let cwd = r.bytes(&rules::CWD)?;
        let user = r.text(&rules::USER)?;
        let flags = flags(r, kind, "flags", START_STDIN | START_ATTACH | START_PTY)?;
        let timeout_ms = r.u32("timeout_ms")?;
        let size = TermSize {
            rows: r.u16("rows")?,
            cols: r.u16("cols")?,
        };
        let pty = if flags & START_PTY != 0 {
            check_size(kind, size)?;
            Some(size)
        } else {
            // Without a terminal the size is zero (the one encoding: the wire is canonical).
            for (field, v) in [("rows", size.rows), ("cols", size.cols)] {
                if v != 0 {
                    return Err(FieldError {
                        kind,
                        field,
                        problem: FieldProblem::OutOfRange {
                            value: u64::from(v),
                        },
                    });
                }
            }
            None
        };
        Ok(ProcessStart {
            argv,
            env,
            cwd,
            user,
            stdin: flags & START_STDIN != 0,
            attach: flags & START_ATTACH != 0,
            timeout_ms,
            pty,
        })
    }
}

/// ProcessInput: bytes for a background process's stdin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessInput<'a> {
    /// The process.
    pub handle: u64,
    /// Close stdin once `data` is written ([`INPUT_CLOSE`]).
    pub close: bool,
    /// The bytes.
    pub data: &'a [u8],
}

/// ProcessSignal: a signal for a background process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessSignal {
    /// The process.
    pub handle: u64,
    /// The signal number (1..=64, Linux numbering).
    pub signal: u8,
    /// Signal the whole process group (the process leads its own), not just the process.
    pub group: bool,
}

/// ProcessList: a page of the agent's background processes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ProcessList {
    /// Entries to skip (those of the earlier pages).
    pub offset: u32,
    /// Most entries to return; 0: as many as fit in one reply frame.
    pub max_entries: u32,
}

/// Which output stream a chunk is from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OutputStream {
    /// Standard output (1).
    Stdout,
    /// Standard error (2).
    Stderr,
}

impl OutputStream {
    /// The wire value.
    pub const fn as_u8(self) -> u8 {
        match self {
            OutputStream::Stdout => 1,
            OutputStream::Stderr => 2,
        }
    }

    /// The stream with wire value `v`.
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(OutputStream::Stdout),
            2 => Some(OutputStream::Stderr),
            _ => None,
        }
    }
}

/// ProcessOutput (event): a chunk of a process's output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessOutput<'a> {
    /// The process.
    pub handle: u64,
    /// Stdout or stderr.
    pub stream: OutputStream,
    /// The bytes, as read.
    pub data: &'a [u8],
}

impl ProcessOutput<'_> {
    /// Bytes of a ProcessOutput frame besides `data`.
    pub const OVERHEAD: usize = HEADER_LEN + 8 + 1 + 4;
}

/// ProcessExit (event): how a process ended; the last frame of its stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProcessExit {
    /// The process.
    pub handle: u64,
    /// Exit status; death by signal N is `-N` (as ExecResult).
    pub exit_code: i32,
    /// The time limit expired and the process group was killed.
    pub timed_out: bool,
}

/// State of a listed process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProcessState {
    /// Still running (1).
    Running,
    /// Ended (2): `exit_code` says how.
    Exited,
}

/// One ProcessListing entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessEntry<'a> {
    /// The agent's handle for the process (never reused while the agent runs).
    pub handle: u64,
    /// Its pid in the guest.
    pub pid: u32,
    /// Running or exited.
    pub state: ProcessState,
    /// The exit code once exited (0 while running).
    pub exit_code: i32,
    /// It was killed by its time limit.
    pub timed_out: bool,
    /// Its stdin is open for ProcessInput.
    pub stdin_open: bool,
    /// It runs on a pseudo-terminal.
    pub pty: bool,
    /// Its argv as started.
    pub argv: ByteList<'a>,
    /// Its working directory as the agent resolved it.
    pub cwd: &'a [u8],
    /// The user it runs as (empty: the agent's).
    pub user: &'a str,
}

impl<'a> ProcessEntry<'a> {
    /// Bytes this entry takes in a ProcessListing body (agents use it to fill a frame).
    pub fn encoded_len(&self) -> usize {
        let argv: usize = self.argv.iter().map(|a| 4 + a.len()).sum();
        8 + 4 + 1 + 4 + 1 + 4 + argv + 4 + self.cwd.len() + 4 + self.user.len()
    }

    fn write(&self, w: &mut Writer<'_>) -> Result<(), FieldError> {
        w.u64(self.handle);
        w.u32(self.pid);
        w.u8(match self.state {
            ProcessState::Running => 1,
            ProcessState::Exited => 2,
        });
        w.i32(self.exit_code);
        w.u8(flag(self.timed_out, EXIT_TIMED_OUT)
            | flag(self.stdin_open, ENTRY_STDIN_OPEN)
            | flag(self.pty, ENTRY_PTY));
        w.list(&rules::ARGV, &self.argv)?;
        w.bytes(&rules::CWD, self.cwd)?;
        w.bytes(&rules::USER, self.user.as_bytes())?;
        Ok(())
    }

    fn read(r: &mut Reader<'a>) -> Result<Self, FieldError> {
        let kind = Kind::ProcessListing;
        let handle = r.u64("handle")?;
        let pid = r.u32("pid")?;
        let state = match r.u8("state")? {
            1 => ProcessState::Running,
            2 => ProcessState::Exited,
            v => return Err(out_of_range(kind, "state", v)),
        };
        let exit_code = r.i32("exit_code")?;
        let flags = flags(
            r,
            kind,
            "flags",
            EXIT_TIMED_OUT | ENTRY_STDIN_OPEN | ENTRY_PTY,
        )?;
        Ok(ProcessEntry {
            handle,
            pid,
            state,
            exit_code,
            timed_out: flags & EXIT_TIMED_OUT != 0,
            stdin_open: flags & ENTRY_STDIN_OPEN != 0,
            pty: flags & ENTRY_PTY != 0,
            argv: r.list(&rules::ARGV)?,
            cwd: r.bytes(&rules::CWD)?,
            user: r.text(&rules::USER)?,
        })
    }
}

/// ProcessListing: one page of the agent's background processes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessListing<'a> {
    /// Entries remain after this page: ask again at `offset` + the entries received so far.
    pub more: bool,
    /// This page's entries.
    pub entries: ProcessEntries<'a>,
}

impl ProcessListing<'_> {
    /// Bytes of a ProcessListing frame besides its entries.
    pub const OVERHEAD: usize = HEADER_LEN + 1 + 4;
}

/// A ProcessListing's entries, borrowed from a decoded frame or from the caller.
#[derive(Clone, Copy)]
pub struct ProcessEntries<'a> {
    repr: Repr<'a>,
}

#[derive(Clone, Copy)]
enum Repr<'a> {
    Wire { raw: &'a [u8], count: usize },
    Slice(&'a [ProcessEntry<'a>]),
}

impl<'a> ProcessEntries<'a> {
    /// No entries.
    pub const EMPTY: ProcessEntries<'static> = ProcessEntries {
        repr: Repr::Slice(&[]),
    };

    /// Entries to encode.
    pub const fn from_slice(entries: &'a [ProcessEntry<'a>]) -> Self {
        ProcessEntries {
            repr: Repr::Slice(entries),
        }
    }

    /// Number of entries.
    pub const fn len(&self) -> usize {
        match self.repr {
            Repr::Wire { count, .. } => count,
            Repr::Slice(entries) => entries.len(),
        }
    }

    /// Whether there are none.
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The entries, in order.
    pub fn iter(&self) -> ProcessEntriesIter<'a> {
        ProcessEntriesIter {
            repr: self.repr,
            index: 0,
            offset: 0,
        }
    }

    pub(crate) fn write(&self, w: &mut Writer<'_>) -> Result<(), FieldError> {
        let count = u32::try_from(self.len()).map_err(|_| FieldError {
            kind: Kind::ProcessListing,
            field: "entries",
            problem: FieldProblem::TooMany {
                count: self.len(),
                max: u32::MAX as usize,
            },
        })?;
        w.u32(count);
        for entry in self.iter() {
            entry.write(w)?;
        }
        Ok(())
    }

    pub(crate) fn read(r: &mut Reader<'a>) -> Result<Self, FieldError> {
        let count = r.u32("entries")? as usize;
        let start = r.pos();
        for _ in 0..count {
            ProcessEntry::read(r)?;
        }
        Ok(ProcessEntries {
            repr: Repr::Wire {
                raw: r.since(start),
                count,
            },
        })
    }
}

impl PartialEq for ProcessEntries<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for ProcessEntries<'_> {}

impl fmt::Debug for ProcessEntries<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Iterator over [`ProcessEntries`].
#[derive(Clone)]
pub struct ProcessEntriesIter<'a> {
    repr: Repr<'a>,
    index: usize,
    offset: usize,
}

impl<'a> Iterator for ProcessEntriesIter<'a> {
    type Item = ProcessEntry<'a>;

    fn next(&mut self) -> Option<ProcessEntry<'a>> {
        let entry = match self.repr {
            Repr::Slice(entries) => *entries.get(self.index)?,
            Repr::Wire { raw, count } => {
                if self.index >= count {
                    return None;
                }
                // Validated at decode time; a failure here only ends the iteration.
                let mut r = Reader::new(raw.get(self.offset..)?, Kind::ProcessListing);
                let entry = ProcessEntry::read(&mut r).ok()?;
                self.offset += r.pos();
                entry
            }
        };
        self.index += 1;
        Some(entry)
    }
}

const fn flag(on: bool, bit: u8) -> u8 {
    if on { bit } else { 0 }
}

fn out_of_range(kind: Kind, field: &'static str, value: u8) -> FieldError {
    FieldError {
        kind,
        field,
        problem: FieldProblem::OutOfRange {
            value: u64::from(value),
        },
    }
}

/// A flags byte whose bits outside `known` must be 0.
pub(crate) fn flags(
    r: &mut Reader<'_>,
    kind: Kind,
    field: &'static str,
    known: u8,
) -> Result<u8, FieldError> {
    let v = r.u8(field)?;
    if v & !known != 0 {
        return Err(out_of_range(kind, field, v));
    }
    Ok(v)
}

/// ProcessSignal `signal`: 1..=64.
pub(crate) fn signal(r: &mut Reader<'_>, kind: Kind) -> Result<u8, FieldError> {
    let v = r.u8("signal")?;
    if !(1..=64).contains(&v) {
        return Err(out_of_range(kind, "signal", v));
    }
    Ok(v)
}

/// Checks a signal number before writing it.
pub(crate) fn check_signal(kind: Kind, v: u8) -> Result<(), FieldError> {
    if (1..=64).contains(&v) {
        Ok(())
    } else {
        Err(out_of_range(kind, "signal", v))
    }
}

/// A terminal size: both at least 1.
pub(crate) fn check_size(kind: Kind, size: TermSize) -> Result<(), FieldError> {
    for (field, v) in [("rows", size.rows), ("cols", size.cols)] {
        if v == 0 {
            return Err(FieldError {
                kind,
                field,
                problem: FieldProblem::OutOfRange { value: 0 },
            });
        }
    }
    Ok(())
}

/// An output stream tag.
pub(crate) fn stream(r: &mut Reader<'_>, kind: Kind) -> Result<OutputStream, FieldError> {
    let v = r.u8("stream")?;
    OutputStream::from_u8(v).ok_or_else(|| out_of_range(kind, "stream", v))
}
