//! Requests (host → agent): their borrowed types and body codec.
//!
//! Owns the body layout of the request kinds (the background-process bodies are `process`'s). Decoded requests borrow from the frame buffer
//! (no allocation); requests to encode borrow from the caller. Framing is the frame module's job.

use super::process::{self, INPUT_CLOSE, ProcessInput, ProcessList, ProcessSignal, ProcessStart};
use super::rules;
use super::{encoded_len_of, kind_of};
use crate::codec::{Reader, Writer};
use crate::error::{DecodeError, EncodeError, FieldError};
use crate::frame::{self, Header};
use crate::kind::Kind;
use crate::limits::{MAX_FRAME_LEN, VERSION};
use crate::list::ByteList;

/// Hello: the versions the host speaks and the largest frame it accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello<'a> {
    /// Protocol versions the sender speaks, one byte each (1..=16 of them, none zero).
    pub versions: &'a [u8],
    /// Largest frame (length prefix included) the sender accepts; at least `MIN_FRAME_LEN`.
    pub max_frame_len: u32,
    /// The sender's name (UTF-8, up to 64 bytes).
    pub name: &'a str,
    /// The sender's software version (UTF-8, up to 64 bytes).
    pub software_version: &'a str,
}

/// Ping: an opaque payload the agent echoes back in Pong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Ping<'a> {
    /// Bytes to echo.
    pub payload: &'a [u8],
}

/// Exec: run a command in the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exec<'a> {
    /// Program and arguments (1..=256 entries, each up to 4096 bytes without NUL).
    pub argv: ByteList<'a>,
    /// Environment entries `KEY=VALUE` (up to 256, each up to 4096 bytes without NUL).
    pub env: ByteList<'a>,
    /// Bytes fed to the command's standard input.
    pub stdin: &'a [u8],
    /// Guest-side time limit in milliseconds; 0 means none.
    pub timeout_ms: u32,
}

impl<'a> Exec<'a> {
    /// A command with no environment, no stdin and no guest-side time limit.
    pub const fn new(argv: &'a [&'a str]) -> Self {
        Exec {
            argv: ByteList::from_strs(argv),
            env: ByteList::EMPTY,
            stdin: &[],
            timeout_ms: 0,
        }
    }

    /// With environment entries `KEY=VALUE`.
    pub const fn with_env(mut self, env: &'a [&'a str]) -> Self {
        self.env = ByteList::from_strs(env);
        self
    }

    /// With bytes for standard input.
    pub const fn with_stdin(mut self, stdin: &'a [u8]) -> Self {
        self.stdin = stdin;
        self
    }

    /// With a guest-side time limit.
    pub const fn with_timeout_ms(mut self, timeout_ms: u32) -> Self {
        self.timeout_ms = timeout_ms;
        self
    }

    /// The same command in working directory `cwd`: an [`ExecIn`].
    pub const fn with_cwd(self, cwd: &'a [u8]) -> ExecIn<'a> {
        ExecIn::from_exec(self).with_cwd(cwd)
    }

    /// The same command as `user`: an [`ExecIn`].
    pub const fn with_user(self, user: &'a str) -> ExecIn<'a> {
        ExecIn::from_exec(self).with_user(user)
    }
}

/// ExecIn: Exec with a working directory and a user (each empty for the agent's default).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecIn<'a> {
    /// Program and arguments (1..=256 entries, each up to 4096 bytes without NUL).
    pub argv: ByteList<'a>,
    /// Environment entries `KEY=VALUE` (up to 256, each up to 4096 bytes without NUL).
    pub env: ByteList<'a>,
    /// Working directory (up to 4096 bytes without NUL); empty: the agent's default.
    pub cwd: &'a [u8],
    /// User to run as (UTF-8, up to 64 bytes, no NUL); empty: the agent's default.
    pub user: &'a str,
    /// Bytes fed to the command's standard input.
    pub stdin: &'a [u8],
    /// Guest-side time limit in milliseconds; 0 means none.
    pub timeout_ms: u32,
}

impl<'a> ExecIn<'a> {
    /// A command in the agent's default directory, as its default user, with no environment,
    /// no stdin and no guest-side time limit.
    pub const fn new(argv: &'a [&'a str]) -> Self {
        ExecIn::from_exec(Exec::new(argv))
    }

    /// An Exec's command, in the agent's default directory, as its default user.
    pub const fn from_exec(exec: Exec<'a>) -> Self {
        ExecIn {
            argv: exec.argv,
            env: exec.env,
            cwd: &[],
            user: "",
            stdin: exec.stdin,
            timeout_ms: exec.timeout_ms,
        }
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

    /// With environment entries `KEY=VALUE`.
    pub const fn with_env(mut self, env: &'a [&'a str]) -> Self {
        self.env = ByteList::from_strs(env);
        self
    }

    /// With bytes for standard input.
    pub const fn with_stdin(mut self, stdin: &'a [u8]) -> Self {
        self.stdin = stdin;
        self
    }

    /// With a guest-side time limit.
    pub const fn with_timeout_ms(mut self, timeout_ms: u32) -> Self {
        self.timeout_ms = timeout_ms;
        self
    }
}

impl<'a> From<Exec<'a>> for ExecIn<'a> {
    fn from(exec: Exec<'a>) -> Self {
        ExecIn::from_exec(exec)
    }
}

/// PutFile: write `data` at `offset` of the file at `path`.
///
/// At offset 0 the file is created (with `mode`) or truncated; at other offsets it must exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PutFile<'a> {
    /// Guest path (1..=4096 bytes, no NUL).
    pub path: &'a [u8],
    /// Permission bits (at most 0o7777).
    pub mode: u32,
    /// Byte offset to write at.
    pub offset: u64,
    /// Bytes to write.
    pub data: &'a [u8],
}

/// GetFile: read up to `max_len` bytes at `offset` of the file at `path`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GetFile<'a> {
    /// Guest path (1..=4096 bytes, no NUL).
    pub path: &'a [u8],
    /// Byte offset to read from.
    pub offset: u64,
    /// Most bytes to return; 0 means as many as fit in one reply frame.
    pub max_len: u32,
}

/// Stat: what is at `path` (a final symlink is not followed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat<'a> {
    /// Guest path (1..=4096 bytes, no NUL).
    pub path: &'a [u8],
}

/// ListDir: one page of the entries under the directory at `path`, down to `depth` levels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListDir<'a> {
    /// Guest path of a directory (1..=4096 bytes, no NUL).
    pub path: &'a [u8],
    /// Levels to list: 1 = the directory's own entries, 2 = theirs too, ... (at least 1).
    pub depth: u32,
    /// Entries to skip (those of the earlier pages).
    pub offset: u32,
    /// Most entries to return; 0 means as many as fit in one reply frame.
    pub max_entries: u32,
}

impl<'a> ListDir<'a> {
    /// The first page, as large as a reply frame allows.
    pub const fn new(path: &'a [u8], depth: u32) -> Self {
        ListDir {
            path,
            depth,
            offset: 0,
            max_entries: 0,
        }
    }
}

/// MakeDir: create the directory at `path`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MakeDir<'a> {
    /// Guest path (1..=4096 bytes, no NUL).
    pub path: &'a [u8],
    /// Permission bits of the new directory (at most 0o7777).
    pub mode: u32,
    /// Create missing parent directories too (`mkdir -p`).
    pub parents: bool,
}

/// Remove: delete the file, symlink or directory at `path`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Remove<'a> {
    /// Guest path (1..=4096 bytes, no NUL).
    pub path: &'a [u8],
    /// Remove a directory with everything in it (`rm -r`); without it, only an empty one.
    pub recursive: bool,
}

/// Rename: move the entry at `from` to `to` (`rename(2)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rename<'a> {
    /// Guest path of the entry (1..=4096 bytes, no NUL).
    pub from: &'a [u8],
    /// Its new guest path (1..=4096 bytes, no NUL).
    pub to: &'a [u8],
}

/// Reseed: fresh entropy, the wall-clock time and a new generation, sent after a clone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reseed<'a> {
    /// The VM's new generation number.
    pub generation: u64,
    /// Wall-clock time, nanoseconds since the Unix epoch.
    pub wall_clock_ns: u64,
    /// Fresh random bytes to mix into the guest's entropy pool (16..=256 bytes).
    pub entropy: &'a [u8],
}

/// A request, borrowed from a decoded frame or from the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// Version negotiation.
    Hello(Hello<'a>),
    /// Liveness with echo.
    Ping(Ping<'a>),
    /// Uptime, boot id, generation.
    Health,
    /// Run a command.
    Exec(Exec<'a>),
    /// Write a file (chunk).
    PutFile(PutFile<'a>),
    /// Read a file (chunk).
    GetFile(GetFile<'a>),
    /// Post-clone reseed.
    Reseed(Reseed<'a>),
    /// Power off.
    Shutdown,
    /// What is at a path.
    Stat(Stat<'a>),
    /// List a directory (a page).
    ListDir(ListDir<'a>),
    /// Create a directory.
    MakeDir(MakeDir<'a>),
    /// Remove a file or directory.
    Remove(Remove<'a>),
    /// Rename a file or directory.
    Rename(Rename<'a>),
    /// Run a command in a directory, as a user.
    ExecIn(ExecIn<'a>),
    /// Start a background process.
    ProcessStart(ProcessStart<'a>),
    /// Write to a background process's stdin.
    ProcessInput(ProcessInput<'a>),
    /// Signal a background process.
    ProcessSignal(ProcessSignal),
    /// List background processes.
    ProcessList(ProcessList),
    /// Stream a background process's output and exit.
    ProcessAttach {
        /// The process.
        handle: u64,
    },
    /// Set a background process's terminal size.
    ProcessResize {
        /// The process (started with a pseudo-terminal).
        handle: u64,
        /// The new size.
        size: process::TermSize,
    },
    /// Connect to a TCP port on the guest's loopback; after the reply, a raw byte pipe.
    TcpConnect {
        /// The port on 127.0.0.1 in the guest (1..=65535).
        port: u16,
    },
}

impl<'a> Request<'a> {
    /// The message kind.
    pub const fn kind(&self) -> Kind {
        match self {
            Request::Hello(_) => Kind::Hello,
            Request::Ping(_) => Kind::Ping,
            Request::Health => Kind::Health,
            Request::Exec(_) => Kind::Exec,
            Request::PutFile(_) => Kind::PutFile,
            Request::GetFile(_) => Kind::GetFile,
            Request::Reseed(_) => Kind::Reseed,
            Request::Shutdown => Kind::Shutdown,
            Request::Stat(_) => Kind::Stat,
            Request::ListDir(_) => Kind::ListDir,
            Request::MakeDir(_) => Kind::MakeDir,
            Request::Remove(_) => Kind::Remove,
            Request::Rename(_) => Kind::Rename,
            Request::ExecIn(_) => Kind::ExecIn,
            Request::ProcessStart(_) => Kind::ProcessStart,
            Request::ProcessInput(_) => Kind::ProcessInput,
            Request::ProcessSignal(_) => Kind::ProcessSignal,
            Request::ProcessList(_) => Kind::ProcessList,
            Request::ProcessAttach { .. } => Kind::ProcessAttach,
            Request::ProcessResize { .. } => Kind::ProcessResize,
            Request::TcpConnect { .. } => Kind::TcpConnect,
        }
    }

    /// Encodes the request as one frame into `out`; returns the frame's length.
    pub fn encode(&self, request_id: u64, out: &mut [u8]) -> Result<usize, EncodeError> {
        self.encode_limited(request_id, MAX_FRAME_LEN, out)
    }

    /// Like [`encode`](Self::encode), refusing frames larger than `max_frame_len` (the peer's).
    pub fn encode_limited(
        &self,
        request_id: u64,
        max_frame_len: usize,
        out: &mut [u8],
    ) -> Result<usize, EncodeError> {
        let kind = self.kind();
        let header = Header {
            version: VERSION,
            kind: kind.as_u8(),
            request_id,
        };
        frame::encode_with(header, kind, out, max_frame_len, |w| self.write_body(w))
    }

    /// The size of the frame [`encode`](Self::encode) would produce.
    pub fn encoded_len(&self) -> Result<usize, EncodeError> {
        encoded_len_of(|out| self.encode(0, out))
    }

    /// Decodes one whole frame holding a request.
    pub fn decode(frame: &'a [u8]) -> Result<(Header, Request<'a>), DecodeError> {
        let (header, body) = frame::split_frame(frame)?;
        Ok((header, Request::decode_body(&header, body)?))
    }

    /// Decodes a request body given its (already split) header.
    pub fn decode_body(header: &Header, body: &'a [u8]) -> Result<Request<'a>, DecodeError> {
        let kind = kind_of(header, true)?;
        let mut r = Reader::new(body, kind);
        let request = match kind {
            Kind::Hello => Request::Hello(Hello {
                versions: r.bytes(&rules::VERSIONS)?,
                max_frame_len: r.u32_in("max_frame_len", rules::MAX_FRAME)?,
                name: r.text(&rules::NAME)?,
                software_version: r.text(&rules::SOFTWARE_VERSION)?,
            }),
            Kind::Ping => Request::Ping(Ping {
                payload: r.bytes(&rules::PAYLOAD)?,
            }),
            Kind::Health => Request::Health,
            Kind::Exec => Request::Exec(Exec {
                argv: r.list(&rules::ARGV)?,
                env: r.list(&rules::ENV)?,
                stdin: r.bytes(&rules::STDIN)?,
                timeout_ms: r.u32("timeout_ms")?,
            }),
            Kind::PutFile => Request::PutFile(PutFile {
                path: r.bytes(&rules::PATH)?,
                mode: r.u32_in("mode", rules::MODE)?,
                offset: r.u64("offset")?,
                data: r.bytes(&rules::DATA)?,
            }),
            Kind::GetFile => Request::GetFile(GetFile {
                path: r.bytes(&rules::PATH)?,
                offset: r.u64("offset")?,
                max_len: r.u32("max_len")?,
            }),
            Kind::Reseed => Request::Reseed(Reseed {
                generation: r.u64("generation")?,
                wall_clock_ns: r.u64("wall_clock_ns")?,
                entropy: r.bytes(&rules::ENTROPY)?,
            }),
            Kind::Shutdown => Request::Shutdown,
            Kind::Stat => Request::Stat(Stat {
                path: r.bytes(&rules::PATH)?,
            }),
            Kind::ListDir => Request::ListDir(ListDir {
                path: r.bytes(&rules::PATH)?,
                depth: r.u32_in("depth", rules::DEPTH)?,
                offset: r.u32("offset")?,
                max_entries: r.u32("max_entries")?,
            }),
            Kind::MakeDir => Request::MakeDir(MakeDir {
                path: r.bytes(&rules::PATH)?,
                mode: r.u32_in("mode", rules::MODE)?,
                parents: r.bool("parents")?,
            }),
            Kind::Remove => Request::Remove(Remove {
                path: r.bytes(&rules::PATH)?,
                recursive: r.bool("recursive")?,
            }),
            Kind::Rename => Request::Rename(Rename {
                from: r.bytes(&rules::FROM)?,
                to: r.bytes(&rules::TO)?,
            }),
            Kind::ExecIn => Request::ExecIn(ExecIn {
                argv: r.list(&rules::ARGV)?,
                env: r.list(&rules::ENV)?,
                cwd: r.bytes(&rules::CWD)?,
                user: r.text(&rules::USER)?,
                stdin: r.bytes(&rules::STDIN)?,
                timeout_ms: r.u32("timeout_ms")?,
            }),
            Kind::ProcessStart => Request::ProcessStart(ProcessStart::read(&mut r, kind)?),
            Kind::ProcessInput => {
                let handle = r.u64("handle")?;
                let flags = process::flags(&mut r, kind, "flags", INPUT_CLOSE)?;
                Request::ProcessInput(ProcessInput {
                    handle,
                    close: flags & INPUT_CLOSE != 0,
                    data: r.bytes(&rules::DATA)?,
                })
            }
            Kind::ProcessSignal => Request::ProcessSignal(ProcessSignal {
                handle: r.u64("handle")?,
                signal: process::signal(&mut r, kind)?,
                group: r.bool("group")?,
            }),
            Kind::ProcessList => Request::ProcessList(ProcessList {
                offset: r.u32("offset")?,
                max_entries: r.u32("max_entries")?,
            }),
            Kind::ProcessAttach => Request::ProcessAttach {
                handle: r.u64("handle")?,
            },
            Kind::ProcessResize => {
                let handle = r.u64("handle")?;
                let size = process::TermSize {
                    rows: r.u16("rows")?,
                    cols: r.u16("cols")?,
                };
                process::check_size(kind, size)?;
                Request::ProcessResize { handle, size }
            }
            Kind::TcpConnect => {
                let port = r.u16("port")?;
                check_port(port)?;
                Request::TcpConnect { port }
            }
            _ => return Err(DecodeError::UnknownKind { kind: header.kind }),
        };
        super::finish(&r, kind)?;
        Ok(request)
    }

    fn write_body(&self, w: &mut Writer<'_>) -> Result<(), FieldError> {
        match self {
            Request::Hello(h) => {
                w.bytes(&rules::VERSIONS, h.versions)?;
                w.u32_in("max_frame_len", h.max_frame_len, rules::MAX_FRAME)?;
                w.bytes(&rules::NAME, h.name.as_bytes())?;
                w.bytes(&rules::SOFTWARE_VERSION, h.software_version.as_bytes())?;
            }
            Request::Ping(p) => w.bytes(&rules::PAYLOAD, p.payload)?,
            Request::Health | Request::Shutdown => {}
            Request::Exec(e) => {
                w.list(&rules::ARGV, &e.argv)?;
                w.list(&rules::ENV, &e.env)?;
                w.bytes(&rules::STDIN, e.stdin)?;
                w.u32(e.timeout_ms);
            }
            Request::PutFile(p) => {
                w.bytes(&rules::PATH, p.path)?;
                w.u32_in("mode", p.mode, rules::MODE)?;
                w.u64(p.offset);
                w.bytes(&rules::DATA, p.data)?;
            }
            Request::GetFile(g) => {
                w.bytes(&rules::PATH, g.path)?;
                w.u64(g.offset);
                w.u32(g.max_len);
            }
            Request::Reseed(r) => {
                w.u64(r.generation);
                w.u64(r.wall_clock_ns);
                w.bytes(&rules::ENTROPY, r.entropy)?;
            }
            Request::Stat(s) => w.bytes(&rules::PATH, s.path)?,
            Request::ListDir(l) => {
                w.bytes(&rules::PATH, l.path)?;
                w.u32_in("depth", l.depth, rules::DEPTH)?;
                w.u32(l.offset);
                w.u32(l.max_entries);
            }
            Request::MakeDir(m) => {
                w.bytes(&rules::PATH, m.path)?;
                w.u32_in("mode", m.mode, rules::MODE)?;
                w.bool(m.parents);
            }
            Request::Remove(r) => {
                w.bytes(&rules::PATH, r.path)?;
                w.bool(r.recursive);
            }
            Request::Rename(r) => {
                w.bytes(&rules::FROM, r.from)?;
                w.bytes(&rules::TO, r.to)?;
            }
            Request::ExecIn(e) => {
                w.list(&rules::ARGV, &e.argv)?;
                w.list(&rules::ENV, &e.env)?;
                w.bytes(&rules::CWD, e.cwd)?;
                w.bytes(&rules::USER, e.user.as_bytes())?;
                w.bytes(&rules::STDIN, e.stdin)?;
                w.u32(e.timeout_ms);
            }
            Request::ProcessStart(p) => p.write(w)?,
            Request::ProcessInput(p) => {
                w.u64(p.handle);
                w.u8(if p.close { INPUT_CLOSE } else { 0 });
                w.bytes(&rules::DATA, p.data)?;
            }
            Request::ProcessSignal(p) => {
                process::check_signal(Kind::ProcessSignal, p.signal)?;
                w.u64(p.handle);
                w.u8(p.signal);
                w.bool(p.group);
            }
            Request::ProcessList(p) => {
                w.u32(p.offset);
                w.u32(p.max_entries);
            }
            Request::ProcessAttach { handle } => w.u64(*handle),
            Request::ProcessResize { handle, size } => {
                process::check_size(Kind::ProcessResize, *size)?;
                w.u64(*handle);
                w.u16(size.rows);
                w.u16(size.cols);
            }
            Request::TcpConnect { port } => {
                check_port(*port)?;
                w.u16(*port);
            }
        }
        Ok(())
    }
}

/// TcpConnect's `port`: 0 names no port (and would be a second encoding of "no request").
fn check_port(port: u16) -> Result<(), FieldError> {
    if port == 0 {
        return Err(FieldError {
            kind: Kind::TcpConnect,
            field: "port",
            problem: crate::error::FieldProblem::OutOfRange { value: 0 },
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::FieldProblem;
    use crate::limits::{HEADER_LEN, MAX_ARGS};

    fn round_trip(req: Request<'_>) {
        let mut buf = [0u8; 8192];
        let n = req.encode(42, &mut buf).unwrap();
        assert_eq!(req.encoded_len().unwrap(), n);
        let (header, back) = Request::decode(&buf[..n]).unwrap();
        assert_eq!(header.request_id, 42);
        assert_eq!(header.kind, req.kind().as_u8());
        assert_eq!(back, req);
    }

    #[test]
    fn every_request_round_trips() {
        round_trip(Request::Hello(Hello {
            versions: &[1, 2],
            max_frame_len: 65536,
            name: "ember-host",
            software_version: "0.1.0",
        }));
        round_trip(Request::Ping(Ping { payload: b"abc" }));
        round_trip(Request::Health);
        round_trip(Request::Exec(
            Exec::new(&["echo", "hi"])
                .with_env(&["A=1"])
                .with_stdin(b"in")
                .with_timeout_ms(5),
        ));
        round_trip(Request::PutFile(PutFile {
            path: b"/tmp/x",
            mode: 0o644,
            offset: 3,
            data: b"data",
        }));
        round_trip(Request::GetFile(GetFile {
            path: b"/etc/hostname",
            offset: 0,
            max_len: 0,
        }));
        round_trip(Request::Reseed(Reseed {
            generation: 9,
            wall_clock_ns: 1_700_000_000_000_000_000,
            entropy: &[7; 32],
        }));
        round_trip(Request::Shutdown);
        round_trip(Request::Stat(Stat { path: b"/etc" }));
        round_trip(Request::ListDir(ListDir {
            path: b"/home/user",
            depth: 2,
            offset: 10,
            max_entries: 5,
        }));
        round_trip(Request::MakeDir(MakeDir {
            path: b"/a/b",
            mode: 0o750,
            parents: true,
        }));
        round_trip(Request::Remove(Remove {
            path: b"/a",
            recursive: false,
        }));
        round_trip(Request::Rename(Rename {
            from: b"/a",
            to: b"/b",
        }));
        round_trip(Request::ExecIn(
            Exec::new(&["cat", "x"])
                .with_env(&["A=1"])
                .with_stdin(b"in")
                .with_timeout_ms(5)
                .with_cwd(b"/tmp")
                .with_user("user"),
        ));
        round_trip(Request::ExecIn(ExecIn::new(&["pwd"])));
        let mut start = ProcessStart::new(&["sh", "-c", "cat"])
            .with_env(&["A=1"])
            .with_cwd(b"/tmp")
            .with_user("nobody")
            .with_stdin()
            .with_timeout_ms(9);
        round_trip(Request::ProcessStart(start));
        start.attach = true;
        start.stdin = false;
        round_trip(Request::ProcessStart(start));
        round_trip(Request::ProcessInput(ProcessInput {
            handle: 7,
            close: true,
            data: b"abc",
        }));
        round_trip(Request::ProcessSignal(ProcessSignal {
            handle: 7,
            signal: 15,
            group: true,
        }));
        round_trip(Request::ProcessList(ProcessList {
            offset: 2,
            max_entries: 3,
        }));
        round_trip(Request::ProcessAttach { handle: u64::MAX });
        round_trip(Request::TcpConnect { port: 8000 });
        round_trip(Request::TcpConnect { port: u16::MAX });
        round_trip(Request::ProcessStart(
            ProcessStart::new(&["bash"]).with_pty(40, 120),
        ));
        round_trip(Request::ProcessResize {
            handle: 1,
            size: process::TermSize {
                rows: 50,
                cols: 200,
            },
        });
        let zero = Request::ProcessResize {
            handle: 1,
            size: process::TermSize { rows: 0, cols: 80 },
        };
        assert!(matches!(
            zero.encode(1, &mut [0u8; 64]),
            Err(EncodeError::Field(_))
        ));
        let zero = Request::ProcessStart(ProcessStart::new(&["bash"]).with_pty(24, 0));
        assert!(matches!(
            zero.encode(1, &mut [0u8; 64]),
            Err(EncodeError::Field(_))
        ));
        // Without a terminal the size must be zero: a size without the PTY flag has no
        // encoding of its own (found by the agent_decode fuzz target).
        let mut buf = [0u8; 128];
        let n = Request::ProcessStart(ProcessStart::new(&["sh"]))
            .encode(1, &mut buf)
            .unwrap();
        buf[n - 4] = 24;
        let err = Request::decode(&buf[..n]).unwrap_err().to_string();
        assert!(err.contains("rows"), "{err}");
    }

    #[test]
    fn process_request_rules_are_enforced() {
        let mut buf = [0u8; 256];
        let bad = Request::ProcessSignal(ProcessSignal {
            handle: 1,
            signal: 0,
            group: false,
        });
        assert!(matches!(
            bad.encode(1, &mut buf),
            Err(EncodeError::Field(_))
        ));
        // Unknown ProcessStart flag bits and signal 65 are malformed on decode.
        let n = Request::ProcessStart(ProcessStart::new(&["x"]))
            .encode(1, &mut buf)
            .unwrap();
        buf[n - 9] = 0b1000;
        assert!(matches!(
            Request::decode(&buf[..n]),
            Err(DecodeError::Field(FieldError { field: "flags", .. }))
        ));
        let n = Request::ProcessSignal(ProcessSignal {
            handle: 1,
            signal: 9,
            group: false,
        })
        .encode(1, &mut buf)
        .unwrap();
        buf[n - 2] = 65;
        assert!(matches!(
            Request::decode(&buf[..n]),
            Err(DecodeError::Field(FieldError {
                field: "signal",
                ..
            }))
        ));
    }

    #[test]
    fn tcp_connect_is_two_bytes_and_refuses_port_zero() {
        let mut buf = [0u8; 64];
        let n = Request::TcpConnect { port: 0x1f40 }
            .encode(7, &mut buf)
            .unwrap();
        assert_eq!(n, HEADER_LEN + 2);
        assert_eq!(&buf[HEADER_LEN..n], &[0x40, 0x1f]);
        assert!(matches!(
            Request::TcpConnect { port: 0 }.encode(7, &mut buf),
            Err(EncodeError::Field(FieldError { field: "port", .. }))
        ));
        let n = Request::TcpConnect { port: 1 }.encode(7, &mut buf).unwrap();
        buf[HEADER_LEN..n].copy_from_slice(&[0, 0]);
        assert!(matches!(
            Request::decode(&buf[..n]),
            Err(DecodeError::Field(FieldError {
                field: "port",
                problem: FieldProblem::OutOfRange { value: 0 },
                ..
            }))
        ));
        // One byte short, one byte long: malformed, not another encoding.
        let header = Header {
            version: VERSION,
            kind: Kind::TcpConnect.as_u8(),
            request_id: 7,
        };
        let n = frame::encode_raw_frame(header, &[0x40], &mut buf).unwrap();
        assert!(Request::decode(&buf[..n]).is_err());
        let n = frame::encode_raw_frame(header, &[0x40, 0x1f, 0], &mut buf).unwrap();
        assert!(matches!(
            Request::decode(&buf[..n]),
            Err(DecodeError::TrailingBytes { extra: 1, .. })
        ));
    }

    #[test]
    fn exec_in_builders_agree() {
        let a = ExecIn::new(&["ls"])
            .with_env(&["A=1"])
            .with_stdin(b"x")
            .with_timeout_ms(3)
            .with_user("root")
            .with_cwd(b"/");
        let b = Exec::new(&["ls"])
            .with_env(&["A=1"])
            .with_stdin(b"x")
            .with_timeout_ms(3)
            .with_cwd(b"/")
            .with_user("root");
        assert_eq!(a, b);
        assert_eq!(ExecIn::from(Exec::new(&["ls"])), ExecIn::new(&["ls"]));
        assert!(ExecIn::new(&["ls"]).cwd.is_empty() && ExecIn::new(&["ls"]).user.is_empty());
    }

    #[test]
    fn new_request_rules_are_enforced_both_ways() {
        let mut buf = [0u8; 128];
        // depth 0, an empty path, a NUL in `to`, a mode past 0o7777, a NUL in `user`.
        for bad in [
            Request::ListDir(ListDir::new(b"/", 0)),
            Request::Stat(Stat { path: b"" }),
            Request::Rename(Rename {
                from: b"/a",
                to: b"/b\0",
            }),
            Request::MakeDir(MakeDir {
                path: b"/a",
                mode: 0o10000,
                parents: false,
            }),
            Request::ExecIn(ExecIn::new(&["ls"]).with_user("ro\0ot")),
        ] {
            assert!(
                matches!(bad.encode(1, &mut buf), Err(EncodeError::Field(_))),
                "{bad:?}"
            );
        }
        // The same on decode: a valid MakeDir with `parents` = 2, a ListDir with depth 0.
        let n = Request::MakeDir(MakeDir {
            path: b"/a",
            mode: 0o755,
            parents: true,
        })
        .encode(1, &mut buf)
        .unwrap();
        buf[n - 1] = 2;
        assert!(matches!(
            Request::decode(&buf[..n]),
            Err(DecodeError::Field(FieldError {
                field: "parents",
                problem: FieldProblem::OutOfRange { value: 2 },
                ..
            }))
        ));
        let n = Request::ListDir(ListDir::new(b"/", 1))
            .encode(1, &mut buf)
            .unwrap();
        buf[HEADER_LEN + 5..HEADER_LEN + 9].copy_from_slice(&0u32.to_le_bytes());
        assert!(matches!(
            Request::decode(&buf[..n]),
            Err(DecodeError::Field(FieldError { field: "depth", .. }))
        ));
    }

    #[test]
    fn health_is_a_bare_header() {
        let mut buf = [0u8; 32];
        let n = Request::Health.encode(1, &mut buf).unwrap();
        assert_eq!(n, HEADER_LEN);
        assert_eq!(
            &buf[..n],
            &[12, 0, 0, 0, 1, 0x03, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn documented_ping_example_matches() {
        // The example at the end of WIRE-FORMAT.md.
        let mut buf = [0u8; 32];
        let n = Request::Ping(Ping { payload: b"hi" })
            .encode(2, &mut buf)
            .unwrap();
        assert_eq!(
            &buf[..n],
            &[
                0x12, 0, 0, 0, 1, 0x02, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, b'h', b'i'
            ]
        );
    }

    #[test]
    fn limits_are_enforced_on_encode() {
        let mut buf = [0u8; 64];
        let argv = ["x"; MAX_ARGS + 1];
        let err = Request::Exec(Exec::new(&argv))
            .encode(1, &mut buf)
            .unwrap_err();
        assert!(matches!(
            err,
            EncodeError::Field(FieldError {
                problem: FieldProblem::TooMany { .. },
                ..
            })
        ));
        let err = Request::Exec(Exec::new(&[]))
            .encode(1, &mut buf)
            .unwrap_err();
        assert!(matches!(err, EncodeError::Field(_)));
        let err = Request::Exec(Exec::new(&["a\0b"]))
            .encode(1, &mut buf)
            .unwrap_err();
        assert!(matches!(err, EncodeError::Field(_)));
        let err = Request::Reseed(Reseed {
            generation: 1,
            wall_clock_ns: 1,
            entropy: &[1; 8],
        })
        .encode(1, &mut buf)
        .unwrap_err();
        assert!(matches!(err, EncodeError::Field(_)));
    }

    #[test]
    fn frame_limit_is_enforced_on_encode() {
        let data = [0u8; 5000];
        let mut buf = [0u8; 8192];
        let err = Request::Ping(Ping { payload: &data })
            .encode_limited(1, 4096, &mut buf)
            .unwrap_err();
        assert!(matches!(err, EncodeError::FrameTooLarge { max: 4096, .. }));
    }

    #[test]
    fn trailing_bytes_and_reply_kinds_are_rejected() {
        let mut buf = [0u8; 64];
        let header = Header {
            version: VERSION,
            kind: Kind::Health.as_u8(),
            request_id: 3,
        };
        let n = frame::encode_raw_frame(header, b"x", &mut buf).unwrap();
        assert!(matches!(
            Request::decode(&buf[..n]),
            Err(DecodeError::TrailingBytes { extra: 1, .. })
        ));
        let header = Header {
            kind: Kind::Pong.as_u8(),
            ..header
        };
        let n = frame::encode_raw_frame(header, b"", &mut buf).unwrap();
        assert_eq!(
            Request::decode(&buf[..n]),
            Err(DecodeError::UnknownKind { kind: 0x82 })
        );
        let header = Header {
            version: 2,
            kind: Kind::Health.as_u8(),
            request_id: 3,
        };
        let n = frame::encode_raw_frame(header, b"", &mut buf).unwrap();
        assert_eq!(
            Request::decode(&buf[..n]),
            Err(DecodeError::UnsupportedVersion { version: 2 })
        );
    }
}
