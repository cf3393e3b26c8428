//! Replies (agent → host): their borrowed types and body codec.
//!
//! Owns the body layout of the reply kinds, Error and Unsupported included, and of the stream
//! events (agent → host frames that are not replies, decoded as [`Reply`] too). Decoded replies
//! borrow from the frame buffer; replies to encode borrow from the caller (the guest agent's
//! buffers). Framing is the frame module's job.

use super::process::{
    self, EXIT_TIMED_OUT, ProcessEntries, ProcessExit, ProcessListing, ProcessOutput,
};
use super::rules;
use super::stat::{DirEntries, FileStat};
use super::{encoded_len_of, kind_of};
use crate::codec::{Reader, Writer};
use crate::error::{DecodeError, EncodeError, FieldError, FieldProblem};
use crate::frame::{self, Header};
use crate::kind::{ErrorCode, Kind};
use crate::limits::{BOOT_ID_LEN, HEADER_LEN, MAX_FRAME_LEN, VERSION};

/// HelloOk: the version the agent chose and what it accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HelloOk<'a> {
    /// The chosen version: one of those the Hello offered.
    pub version: u8,
    /// Largest frame (length prefix included) the agent accepts; at least `MIN_FRAME_LEN`.
    pub max_frame_len: u32,
    /// The agent's name (UTF-8, up to 64 bytes).
    pub name: &'a str,
    /// The agent's software version (UTF-8, up to 64 bytes).
    pub software_version: &'a str,
}

/// HealthReport: how long the guest has been up, which boot this is, and its generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct HealthReport {
    /// Nanoseconds since the guest booted (a restored snapshot continues the original's count).
    pub uptime_ns: u64,
    /// Random id chosen at boot (clones of one snapshot share it; use `generation` to tell them apart).
    pub boot_id: [u8; BOOT_ID_LEN],
    /// The generation last set by Reseed (0 before any).
    pub generation: u64,
}

/// ExecResult: how the command ended and what it printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecResult<'a> {
    /// Exit status; a command killed by signal N reports `-N`.
    pub exit_code: i32,
    /// The agent cut stdout to fit the reply frame.
    pub stdout_truncated: bool,
    /// The agent cut stderr to fit the reply frame.
    pub stderr_truncated: bool,
    /// Standard output.
    pub stdout: &'a [u8],
    /// Standard error.
    pub stderr: &'a [u8],
}

/// FileData: a chunk of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileData<'a> {
    /// The file's permission bits (at most 0o7777).
    pub mode: u32,
    /// The file's total size in bytes; the read is complete when offset + data length reaches it.
    pub size: u64,
    /// The bytes at the requested offset.
    pub data: &'a [u8],
}

/// DirListing: one page of a directory's entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirListing<'a> {
    /// Entries remain after this page: ask again at `offset` + the entries received so far.
    pub more: bool,
    /// This page's entries.
    pub entries: DirEntries<'a>,
}

impl DirListing<'_> {
    /// Bytes of a DirListing frame besides its entries: header, `more`, the entry count.
    /// An agent fills a reply of at most `max` bytes with entries while
    /// `OVERHEAD + Σ entry.encoded_len() <= max`.
    pub const OVERHEAD: usize = HEADER_LEN + 1 + 4;
}

/// Error: the request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorReply<'a> {
    /// What kind of failure.
    pub code: ErrorCode,
    /// Human-readable detail (UTF-8, up to 1024 bytes).
    pub message: &'a str,
}

/// A reply, borrowed from a decoded frame or from the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply<'a> {
    /// Reply to Hello.
    Hello(HelloOk<'a>),
    /// Reply to Ping: the request's payload.
    Pong {
        /// The echoed payload.
        payload: &'a [u8],
    },
    /// Reply to Health.
    Health(HealthReport),
    /// Reply to Exec.
    Exec(ExecResult<'a>),
    /// Reply to PutFile: the data was written.
    PutFile,
    /// Reply to GetFile.
    File(FileData<'a>),
    /// Reply to Reseed: the generation now in force.
    Reseeded {
        /// The generation the agent applied.
        generation: u64,
    },
    /// Reply to Shutdown: the guest powers off after sending it.
    Shutdown,
    /// Reply to Stat.
    Stat(FileStat<'a>),
    /// Reply to ListDir.
    DirListing(DirListing<'a>),
    /// Reply to MakeDir.
    MakeDir {
        /// The directory was created; false: it already existed as a directory.
        created: bool,
    },
    /// Reply to Remove: the entry is gone.
    Remove,
    /// Reply to Rename: the entry has its new path.
    Rename,
    /// Reply to ExecIn (the same body as ExecResult).
    ExecIn(ExecResult<'a>),
    /// Reply to ProcessStart: the process runs.
    ProcessStarted {
        /// The agent's handle for it.
        handle: u64,
        /// Its pid in the guest.
        pid: u32,
    },
    /// Reply to ProcessInput.
    ProcessInput {
        /// Bytes of `data` written (fewer when the pipe stayed full; `close` then not applied).
        written: u32,
    },
    /// Reply to ProcessSignal: the signal was sent.
    ProcessSignal,
    /// Reply to ProcessList.
    ProcessListing(ProcessListing<'a>),
    /// Reply to ProcessAttach: the stream follows.
    ProcessAttached {
        /// The process's pid.
        pid: u32,
        /// Whether it still runs (if not, ProcessExit follows at once).
        running: bool,
    },
    /// Reply to ProcessResize: the terminal has its new size.
    ProcessResize,
    /// Reply to TcpConnect: from the byte after this frame on, the connection is a raw byte
    /// pipe to the guest's TCP port (no more frames either way).
    TcpConnected,
    /// Stream event: a chunk of output.
    ProcessOutput(ProcessOutput<'a>),
    /// Stream event: the process ended; the stream's last frame.
    ProcessExit(ProcessExit),
    /// Any request failed.
    Error(ErrorReply<'a>),
    /// The agent does not know the request's kind.
    Unsupported {
        /// The request kind byte it did not know.
        kind: u8,
    },
}

impl<'a> Reply<'a> {
    /// The message kind.
    pub const fn kind(&self) -> Kind {
        match self {
            Reply::Hello(_) => Kind::HelloOk,
            Reply::Pong { .. } => Kind::Pong,
            Reply::Health(_) => Kind::HealthReport,
            Reply::Exec(_) => Kind::ExecResult,
            Reply::PutFile => Kind::PutFileOk,
            Reply::File(_) => Kind::FileData,
            Reply::Reseeded { .. } => Kind::ReseedOk,
            Reply::Shutdown => Kind::ShutdownOk,
            Reply::Stat(_) => Kind::StatResult,
            Reply::DirListing(_) => Kind::DirListing,
            Reply::MakeDir { .. } => Kind::MakeDirOk,
            Reply::Remove => Kind::RemoveOk,
            Reply::Rename => Kind::RenameOk,
            Reply::ExecIn(_) => Kind::ExecInResult,
            Reply::ProcessStarted { .. } => Kind::ProcessStarted,
            Reply::ProcessInput { .. } => Kind::ProcessInputOk,
            Reply::ProcessSignal => Kind::ProcessSignalOk,
            Reply::ProcessListing(_) => Kind::ProcessListing,
            Reply::ProcessAttached { .. } => Kind::ProcessAttached,
            Reply::ProcessResize => Kind::ProcessResizeOk,
            Reply::TcpConnected => Kind::TcpConnected,
            Reply::ProcessOutput(_) => Kind::ProcessOutput,
            Reply::ProcessExit(_) => Kind::ProcessExit,
            Reply::Error(_) => Kind::Error,
            Reply::Unsupported { .. } => Kind::Unsupported,
        }
    }

    /// Encodes the reply as one frame into `out`; returns the frame's length.
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

    /// Decodes one whole frame holding a reply.
    pub fn decode(frame: &'a [u8]) -> Result<(Header, Reply<'a>), DecodeError> {
        let (header, body) = frame::split_frame(frame)?;
        Ok((header, Reply::decode_body(&header, body)?))
    }

    /// Decodes a reply body given its (already split) header.
    pub fn decode_body(header: &Header, body: &'a [u8]) -> Result<Reply<'a>, DecodeError> {
        let kind = kind_of(header, false)?;
        let mut r = Reader::new(body, kind);
        let reply = match kind {
            Kind::HelloOk => {
                let version = r.u8("version")?;
                if version == 0 {
                    return Err(
                        field(kind, "version", FieldProblem::OutOfRange { value: 0 }).into(),
                    );
                }
                Reply::Hello(HelloOk {
                    version,
                    max_frame_len: r.u32_in("max_frame_len", rules::MAX_FRAME)?,
                    name: r.text(&rules::NAME)?,
                    software_version: r.text(&rules::SOFTWARE_VERSION)?,
                })
            }
            Kind::Pong => Reply::Pong {
                payload: r.bytes(&rules::PAYLOAD)?,
            },
            Kind::HealthReport => Reply::Health(HealthReport {
                uptime_ns: r.u64("uptime_ns")?,
                boot_id: r.fixed("boot_id")?,
                generation: r.u64("generation")?,
            }),
            Kind::ExecResult => Reply::Exec(read_exec_result(&mut r, kind)?),
            Kind::ExecInResult => Reply::ExecIn(read_exec_result(&mut r, kind)?),
            Kind::PutFileOk => Reply::PutFile,
            Kind::FileData => Reply::File(FileData {
                mode: r.u32_in("mode", rules::MODE)?,
                size: r.u64("size")?,
                data: r.bytes(&rules::DATA)?,
            }),
            Kind::ReseedOk => Reply::Reseeded {
                generation: r.u64("generation")?,
            },
            Kind::ShutdownOk => Reply::Shutdown,
            Kind::StatResult => Reply::Stat(FileStat::read(&mut r, kind)?),
            Kind::DirListing => Reply::DirListing(DirListing {
                more: r.bool("more")?,
                entries: DirEntries::read(&mut r)?,
            }),
            Kind::MakeDirOk => Reply::MakeDir {
                created: r.bool("created")?,
            },
            Kind::RemoveOk => Reply::Remove,
            Kind::RenameOk => Reply::Rename,
            Kind::ProcessStarted => Reply::ProcessStarted {
                handle: r.u64("handle")?,
                pid: r.u32("pid")?,
            },
            Kind::ProcessInputOk => Reply::ProcessInput {
                written: r.u32("written")?,
            },
            Kind::ProcessSignalOk => Reply::ProcessSignal,
            Kind::ProcessResizeOk => Reply::ProcessResize,
            Kind::TcpConnected => Reply::TcpConnected,
            Kind::ProcessListing => Reply::ProcessListing(ProcessListing {
                more: r.bool("more")?,
                entries: ProcessEntries::read(&mut r)?,
            }),
            Kind::ProcessAttached => Reply::ProcessAttached {
                pid: r.u32("pid")?,
                running: r.bool("running")?,
            },
            Kind::ProcessOutput => Reply::ProcessOutput(ProcessOutput {
                handle: r.u64("handle")?,
                stream: process::stream(&mut r, kind)?,
                data: r.bytes(&rules::DATA)?,
            }),
            Kind::ProcessExit => {
                let handle = r.u64("handle")?;
                let exit_code = r.i32("exit_code")?;
                let flags = process::flags(&mut r, kind, "flags", EXIT_TIMED_OUT)?;
                Reply::ProcessExit(ProcessExit {
                    handle,
                    exit_code,
                    timed_out: flags & EXIT_TIMED_OUT != 0,
                })
            }
            Kind::Error => Reply::Error(ErrorReply {
                code: ErrorCode(r.u16("code")?),
                message: r.text(&rules::MESSAGE)?,
            }),
            Kind::Unsupported => Reply::Unsupported {
                kind: r.u8("kind")?,
            },
            _ => return Err(DecodeError::UnknownKind { kind: header.kind }),
        };
        super::finish(&r, kind)?;
        Ok(reply)
    }

    fn write_body(&self, w: &mut Writer<'_>) -> Result<(), FieldError> {
        match self {
            Reply::Hello(h) => {
                if h.version == 0 {
                    let problem = FieldProblem::OutOfRange { value: 0 };
                    return Err(field(Kind::HelloOk, "version", problem));
                }
                w.u8(h.version);
                w.u32_in("max_frame_len", h.max_frame_len, rules::MAX_FRAME)?;
                w.bytes(&rules::NAME, h.name.as_bytes())?;
                w.bytes(&rules::SOFTWARE_VERSION, h.software_version.as_bytes())?;
            }
            Reply::Pong { payload } => w.bytes(&rules::PAYLOAD, payload)?,
            Reply::Health(h) => {
                w.u64(h.uptime_ns);
                w.raw(&h.boot_id);
                w.u64(h.generation);
            }
            Reply::Exec(e) | Reply::ExecIn(e) => {
                w.i32(e.exit_code);
                w.u8(u8::from(e.stdout_truncated) | (u8::from(e.stderr_truncated) << 1));
                w.bytes(&rules::STDOUT, e.stdout)?;
                w.bytes(&rules::STDERR, e.stderr)?;
            }
            Reply::PutFile
            | Reply::Shutdown
            | Reply::Remove
            | Reply::Rename
            | Reply::ProcessSignal
            | Reply::ProcessResize
            | Reply::TcpConnected => {}
            Reply::ProcessStarted { handle, pid } => {
                w.u64(*handle);
                w.u32(*pid);
            }
            Reply::ProcessInput { written } => w.u32(*written),
            Reply::ProcessListing(l) => {
                w.bool(l.more);
                l.entries.write(w)?;
            }
            Reply::ProcessAttached { pid, running } => {
                w.u32(*pid);
                w.bool(*running);
            }
            Reply::ProcessOutput(o) => {
                w.u64(o.handle);
                w.u8(o.stream.as_u8());
                w.bytes(&rules::DATA, o.data)?;
            }
            Reply::ProcessExit(e) => {
                w.u64(e.handle);
                w.i32(e.exit_code);
                w.u8(if e.timed_out { EXIT_TIMED_OUT } else { 0 });
            }
            Reply::Stat(s) => s.write(w, Kind::StatResult)?,
            Reply::DirListing(l) => {
                w.bool(l.more);
                l.entries.write(w)?;
            }
            Reply::MakeDir { created } => w.bool(*created),
            Reply::File(f) => {
                w.u32_in("mode", f.mode, rules::MODE)?;
                w.u64(f.size);
                w.bytes(&rules::DATA, f.data)?;
            }
            Reply::Reseeded { generation } => w.u64(*generation),
            Reply::Error(e) => {
                w.u16(e.code.0);
                w.bytes(&rules::MESSAGE, e.message.as_bytes())?;
            }
            Reply::Unsupported { kind } => w.u8(*kind),
        }
        Ok(())
    }
}

/// The ExecResult body (also ExecInResult's).
fn read_exec_result<'a>(r: &mut Reader<'a>, kind: Kind) -> Result<ExecResult<'a>, FieldError> {
    let exit_code = r.i32("exit_code")?;
    let flags = r.u8("flags")?;
    if flags & !rules::EXEC_FLAGS_KNOWN != 0 {
        let problem = FieldProblem::OutOfRange {
            value: u64::from(flags),
        };
        return Err(field(kind, "flags", problem));
    }
    Ok(ExecResult {
        exit_code,
        stdout_truncated: flags & 0b01 != 0,
        stderr_truncated: flags & 0b10 != 0,
        stdout: r.bytes(&rules::STDOUT)?,
        stderr: r.bytes(&rules::STDERR)?,
    })
}

fn field(kind: Kind, field: &'static str, problem: FieldProblem) -> FieldError {
    FieldError {
        kind,
        field,
        problem,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{DirEntry, FileKind};

    const STAT: FileStat<'static> = FileStat {
        kind: FileKind::Directory,
        mode: 0o755,
        size: 4096,
        mtime_ns: 1_700_000_000_000_000_000,
        owner: "user",
        group: "user",
        target: b"",
    };

    fn round_trip(reply: Reply<'_>) {
        let mut buf = [0u8; 4096];
        let n = reply.encode(7, &mut buf).unwrap();
        assert_eq!(reply.encoded_len().unwrap(), n);
        let (header, back) = Reply::decode(&buf[..n]).unwrap();
        assert_eq!(header.request_id, 7);
        assert_eq!(back, reply);
    }

    #[test]
    fn process_replies_and_events_round_trip() {
        use crate::list::ByteList;
        use crate::message::{OutputStream, ProcessEntry, ProcessState};
        round_trip(Reply::ProcessStarted { handle: 3, pid: 77 });
        round_trip(Reply::ProcessInput { written: 12 });
        round_trip(Reply::ProcessSignal);
        round_trip(Reply::ProcessResize);
        round_trip(Reply::TcpConnected);
        round_trip(Reply::ProcessAttached {
            pid: 1,
            running: false,
        });
        round_trip(Reply::ProcessOutput(ProcessOutput {
            handle: 3,
            stream: OutputStream::Stderr,
            data: b"oops",
        }));
        round_trip(Reply::ProcessExit(ProcessExit {
            handle: 3,
            exit_code: -9,
            timed_out: true,
        }));
        let entries = [
            ProcessEntry {
                handle: 1,
                pid: 10,
                state: ProcessState::Running,
                exit_code: 0,
                timed_out: false,
                stdin_open: true,
                pty: true,
                argv: ByteList::from_strs(&["sleep", "9"]),
                cwd: b"/",
                user: "",
            },
            ProcessEntry {
                handle: 2,
                pid: 11,
                state: ProcessState::Exited,
                exit_code: 3,
                timed_out: true,
                stdin_open: false,
                pty: false,
                argv: ByteList::from_strs(&["false"]),
                cwd: b"/tmp",
                user: "nobody",
            },
        ];
        let listing = ProcessListing {
            more: true,
            entries: ProcessEntries::from_slice(&entries),
        };
        round_trip(Reply::ProcessListing(listing));
        let mut buf = [0u8; 512];
        let n = Reply::ProcessListing(listing).encode(1, &mut buf).unwrap();
        let body: usize = entries.iter().map(ProcessEntry::encoded_len).sum();
        assert_eq!(n, ProcessListing::OVERHEAD + body);
        let (_, back) = Reply::decode(&buf[..n]).unwrap();
        let Reply::ProcessListing(back) = back else {
            panic!("{back:?}")
        };
        assert_eq!(back.entries.iter().nth(1).unwrap().user, "nobody");
        // An unknown stream tag is malformed.
        let n = Reply::ProcessOutput(ProcessOutput {
            handle: 3,
            stream: OutputStream::Stdout,
            data: b"",
        })
        .encode(1, &mut buf)
        .unwrap();
        buf[HEADER_LEN + 8] = 3;
        assert!(Reply::decode(&buf[..n]).is_err());
        assert_eq!(
            ProcessOutput::OVERHEAD + 2,
            Reply::ProcessOutput(ProcessOutput {
                handle: 0,
                stream: OutputStream::Stdout,
                data: b"ab",
            })
            .encoded_len()
            .unwrap()
        );
    }

    #[test]
    fn every_reply_round_trips() {
        round_trip(Reply::Hello(HelloOk {
            version: 1,
            max_frame_len: 4096,
            name: "probe",
            software_version: "0.1",
        }));
        round_trip(Reply::Pong { payload: b"x" });
        round_trip(Reply::Health(HealthReport {
            uptime_ns: 5,
            boot_id: [3; 16],
            generation: 2,
        }));
        round_trip(Reply::Exec(ExecResult {
            exit_code: -9,
            stdout_truncated: true,
            stderr_truncated: false,
            stdout: b"out",
            stderr: b"",
        }));
        round_trip(Reply::PutFile);
        round_trip(Reply::File(FileData {
            mode: 0o600,
            size: 10,
            data: b"0123",
        }));
        round_trip(Reply::Reseeded { generation: 4 });
        round_trip(Reply::Shutdown);
        round_trip(Reply::Error(ErrorReply {
            code: ErrorCode(4242),
            message: "nope",
        }));
        round_trip(Reply::Unsupported { kind: 0x42 });
        round_trip(Reply::Stat(STAT));
        round_trip(Reply::Stat(FileStat {
            kind: FileKind::Symlink,
            target: b"../x",
            ..STAT
        }));
        let entries = [
            DirEntry {
                name: b"a",
                stat: STAT,
            },
            DirEntry {
                name: b"a/b.txt",
                stat: FileStat {
                    kind: FileKind::File,
                    size: 3,
                    ..STAT
                },
            },
        ];
        round_trip(Reply::DirListing(DirListing {
            more: true,
            entries: DirEntries::from_slice(&entries),
        }));
        round_trip(Reply::DirListing(DirListing {
            more: false,
            entries: DirEntries::EMPTY,
        }));
        round_trip(Reply::MakeDir { created: true });
        round_trip(Reply::MakeDir { created: false });
        round_trip(Reply::Remove);
        round_trip(Reply::Rename);
        round_trip(Reply::ExecIn(ExecResult {
            exit_code: 1,
            stdout_truncated: false,
            stderr_truncated: true,
            stdout: b"",
            stderr: b"err",
        }));
    }

    #[test]
    fn dir_listing_overhead_and_entry_lengths_add_up() {
        let entries = [DirEntry {
            name: b"name",
            stat: STAT,
        }; 3];
        let reply = Reply::DirListing(DirListing {
            more: false,
            entries: DirEntries::from_slice(&entries),
        });
        assert_eq!(
            reply.encoded_len().unwrap(),
            DirListing::OVERHEAD + 3 * entries[0].encoded_len()
        );
    }

    #[test]
    fn bad_stat_fields_are_rejected_on_decode() {
        let mut buf = [0u8; 128];
        let n = Reply::Stat(STAT).encode(1, &mut buf).unwrap();
        // kind 5 is no file kind.
        buf[HEADER_LEN] = 5;
        assert!(matches!(
            Reply::decode(&buf[..n]),
            Err(DecodeError::Field(FieldError { field: "kind", .. }))
        ));
        // A target on a directory: append a byte to the (last) target field.
        buf[HEADER_LEN] = FileKind::Directory.as_u8();
        let mut frame = buf[..n].to_vec();
        let len = frame.len();
        frame[len - 4..].copy_from_slice(&1u32.to_le_bytes());
        frame.push(b'x');
        let length = (frame.len() - 4) as u32;
        frame[..4].copy_from_slice(&length.to_le_bytes());
        assert!(matches!(
            Reply::decode(&frame),
            Err(DecodeError::Field(FieldError {
                field: "target",
                ..
            }))
        ));
        // `more` and `created` are booleans.
        let n = Reply::MakeDir { created: true }
            .encode(1, &mut buf)
            .unwrap();
        buf[HEADER_LEN] = 3;
        assert!(matches!(
            Reply::decode(&buf[..n]),
            Err(DecodeError::Field(FieldError {
                field: "created",
                ..
            }))
        ));
        // An entry count the body cannot hold.
        let n = Reply::DirListing(DirListing {
            more: false,
            entries: DirEntries::EMPTY,
        })
        .encode(1, &mut buf)
        .unwrap();
        buf[HEADER_LEN + 1..HEADER_LEN + 5].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            Reply::decode(&buf[..n]),
            Err(DecodeError::Field(FieldError {
                problem: FieldProblem::Truncated,
                ..
            }))
        ));
    }

    #[test]
    fn unknown_exec_flags_are_rejected() {
        let mut buf = [0u8; 64];
        let n = Reply::Exec(ExecResult {
            exit_code: 0,
            stdout_truncated: false,
            stderr_truncated: false,
            stdout: b"",
            stderr: b"",
        })
        .encode(1, &mut buf)
        .unwrap();
        buf[20] = 0x04;
        assert!(matches!(
            Reply::decode(&buf[..n]),
            Err(DecodeError::Field(FieldError { field: "flags", .. }))
        ));
    }

    #[test]
    fn hello_version_zero_is_rejected_both_ways() {
        let hello = HelloOk {
            version: 0,
            max_frame_len: 4096,
            name: "",
            software_version: "",
        };
        let mut buf = [0u8; 64];
        assert!(Reply::Hello(hello).encode(1, &mut buf).is_err());
    }
}
