//! The host's blocking client for the guest agent.
//!
//! Owns one agent connection: the hybrid vsock handshake (through [`crate::vsock`]), Hello
//! negotiation, typed calls with a deadline each, request-id matching, and poisoning the
//! connection after any failure that could leave the stream out of step (timeouts, I/O errors,
//! malformed or mismatched replies). Agent-side Error and Unsupported replies are errors that keep
//! the connection. One call is in flight at a time; use one client per thread. The one
//! exception is a Reseed sent ahead ([`AgentClient::send_reseed`]): its reply is read and
//! checked before the next call's, so a warm VM's handover and its tenant's first request share
//! one guest wake-up while the tenant still never sees an answer from an un-reseeded guest.
//! The other: a process stream (`process`), which reads its events after its reply until the
//! process exits. TcpConnect (`tcp`) ends the framing altogether: the connection becomes a byte
//! pipe to a TCP port in the guest.

mod error;
mod process;
mod tcp;
mod types;

pub use error::ClientError;
pub use process::{ProcessEvent, ProcessInfo, ProcessOutcome, ProcessStream, StartedProcess};
pub use tcp::{TcpPipe, tcp_connect};
pub use types::{
    AgentInfo, ConnectOptions, ExecOutput, FileContents, FileInfo, ListedEntry, listing_page,
};

use std::io::Write as _;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::frame::Header;
use crate::io::{DeadlineIo, FrameReader, ReadFrameError, encode_into_vec};
use crate::kind::Kind;
use crate::limits::{HEADER_LEN, MAX_FRAME_LEN, MIN_FRAME_LEN, SUPPORTED_VERSIONS};
use crate::message::{
    Exec, ExecIn, GetFile, Hello, ListDir, MakeDir, Ping, PutFile, Remove, Rename, Reply, Request,
    Reseed, Stat,
};
use crate::vsock;
use crate::{HealthReport, limits};

/// Size of the fixed part of a PutFile frame besides path and data.
const PUT_FILE_OVERHEAD: usize = HEADER_LEN + 4 + 4 + 8 + 4;

/// A connection to a guest agent.
pub struct AgentClient {
    stream: UnixStream,
    reader: FrameReader,
    out: Vec<u8>,
    next_id: u64,
    agent: AgentInfo,
    call_timeout: Duration,
    poisoned: Option<String>,
    /// A Reseed sent ahead whose reply has not been read yet.
    pending: Option<PendingReseed>,
}

/// A Reseed sent ahead ([`AgentClient::send_reseed`]).
#[derive(Debug, Clone, Copy)]
struct PendingReseed {
    id: u64,
    generation: u64,
}

impl std::fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentClient")
            .field("agent", &self.agent)
            .field("next_id", &self.next_id)
            .field("call_timeout", &self.call_timeout)
            .field("poisoned", &self.poisoned)
            .field("pending", &self.pending)
            .field("reader", &self.reader)
            .finish_non_exhaustive()
    }
}

impl AgentClient {
    /// Connects to guest `port` through the hybrid vsock socket at `uds_path` and negotiates.
    ///
    /// `timeout` bounds the connect, handshake and Hello together, and then each call.
    pub fn connect(
        uds_path: impl AsRef<Path>,
        port: u32,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        Self::connect_with(uds_path, port, &ConnectOptions::with_timeout(timeout))
    }

    /// Like [`connect`](Self::connect), with explicit options.
    pub fn connect_with(
        uds_path: impl AsRef<Path>,
        port: u32,
        options: &ConnectOptions,
    ) -> Result<Self, ClientError> {
        let uds_path = uds_path.as_ref();
        let started = Instant::now();
        let deadline = started + options.connect_timeout;
        let hybrid = vsock::connect(uds_path, port, deadline)?;
        let client = Self::negotiate(
            hybrid.stream,
            &hybrid.leftover,
            Some(hybrid.host_port),
            options,
            deadline,
        )?;
        tracing::debug!(
            path = %uds_path.display(),
            port,
            agent = %client.agent.name,
            agent_version = %client.agent.software_version,
            elapsed_us = started.elapsed().as_micros() as u64,
            "agent connected"
        );
        Ok(client)
    }

    /// Negotiates over a stream that already reaches the agent (a socket pair, or a stream past
    /// the vsock handshake).
    pub fn from_stream(stream: UnixStream, options: &ConnectOptions) -> Result<Self, ClientError> {
        let deadline = Instant::now() + options.connect_timeout;
        Self::negotiate(stream, &[], None, options, deadline)
    }

    fn negotiate(
        stream: UnixStream,
        leftover: &[u8],
        host_port: Option<u32>,
        options: &ConnectOptions,
        deadline: Instant,
    ) -> Result<Self, ClientError> {
        let max_frame_len = options.max_frame_len.clamp(MIN_FRAME_LEN, MAX_FRAME_LEN);
        let mut reader = FrameReader::new(max_frame_len);
        reader.prime(leftover);
        let mut client = AgentClient {
            stream,
            reader,
            out: Vec::new(),
            next_id: 1,
            agent: AgentInfo {
                version: limits::VERSION,
                // Until Hello says otherwise, send nothing larger than every agent accepts.
                max_frame_len: MIN_FRAME_LEN,
                name: String::new(),
                software_version: String::new(),
                host_port,
            },
            call_timeout: options.call_timeout,
            poisoned: None,
            pending: None,
        };
        let hello = Request::Hello(Hello {
            versions: SUPPORTED_VERSIONS,
            max_frame_len: max_frame_len as u32,
            name: &options.client_name,
            software_version: env!("CARGO_PKG_VERSION"),
        });
        let timeout = deadline.saturating_duration_since(Instant::now());
        let info = client.call_until(&hello, deadline, timeout, |reply| match reply {
            Reply::Hello(ok) if SUPPORTED_VERSIONS.contains(&ok.version) => {
                Ok(AgentInfo::from_hello(&ok, host_port))
            }
            Reply::Hello(ok) => Err(format!("agent chose version {}, not offered", ok.version)),
            _ => Err("unreachable: kind checked".to_owned()),
        })?;
        client.agent = info;
        Ok(client)
    }

    /// What Hello told about the agent.
    pub fn agent(&self) -> &AgentInfo {
        &self.agent
    }

    /// The time each call may take.
    pub fn call_timeout(&self) -> Duration {
        self.call_timeout
    }

    /// Sets the time each later call may take.
    pub fn set_call_timeout(&mut self, timeout: Duration) {
        self.call_timeout = timeout;
    }

    /// Frees the connection's buffers while no call is under way and no reply is pending, so
    /// a connection kept idle for later calls holds no buffer memory.
    pub fn release_buffers(&mut self) {
        if self.pending.is_none() {
            self.reader.release_idle();
            self.out = Vec::new();
        }
    }

    /// Why the connection is unusable, if it is.
    pub fn poisoned(&self) -> Option<&str> {
        self.poisoned.as_deref()
    }

    /// Checks the agent answers.
    pub fn ping(&mut self) -> Result<(), ClientError> {
        self.ping_payload(&[])
    }

    /// Checks the agent answers, echoing `payload` (which must come back unchanged).
    pub fn ping_payload(&mut self, payload: &[u8]) -> Result<(), ClientError> {
        self.call(&Request::Ping(Ping { payload }), |reply| match reply {
            Reply::Pong { payload: echoed } if echoed == payload => Ok(()),
            _ => Err("Pong payload differs from the Ping payload".to_owned()),
        })
    }

    /// The agent's uptime, boot id and generation.
    pub fn health(&mut self) -> Result<HealthReport, ClientError> {
        self.call(&Request::Health, |reply| match reply {
            Reply::Health(report) => Ok(report),
            _ => Err("unreachable: kind checked".to_owned()),
        })
    }

    /// Runs a command in the guest.
    pub fn exec(&mut self, exec: &Exec<'_>) -> Result<ExecOutput, ClientError> {
        self.call(&Request::Exec(*exec), |reply| match reply {
            Reply::Exec(result) => Ok(ExecOutput::from(&result)),
            _ => Err("unreachable: kind checked".to_owned()),
        })
    }

    /// Writes a whole file (created or truncated, then written in chunks that fit the agent's
    /// frame limit); each chunk is one call with its own timeout.
    pub fn put_file(
        &mut self,
        path: impl AsRef<[u8]>,
        mode: u32,
        data: &[u8],
    ) -> Result<(), ClientError> {
        let path = path.as_ref();
        let room = self
            .agent
            .max_frame_len
            .saturating_sub(PUT_FILE_OVERHEAD + path.len())
            .max(1);
        let mut offset = 0usize;
        loop {
            let chunk = data.get(offset..).unwrap_or_default();
            let chunk = chunk.get(..room.min(chunk.len())).unwrap_or_default();
            let request = Request::PutFile(PutFile {
                path,
                mode,
                offset: offset as u64,
                data: chunk,
            });
            self.call(&request, |reply| match reply {
                Reply::PutFile => Ok(()),
                _ => Err("unreachable: kind checked".to_owned()),
            })?;
            offset += chunk.len();
            if offset >= data.len() {
                return Ok(());
            }
        }
    }

    /// Reads a whole file in chunks, refusing files larger than `max_len` bytes.
    pub fn get_file(
        &mut self,
        path: impl AsRef<[u8]>,
        max_len: usize,
    ) -> Result<FileContents, ClientError> {
        let path = path.as_ref();
        let mut contents = FileContents {
            mode: 0,
            data: Vec::new(),
        };
        loop {
            let request = Request::GetFile(GetFile {
                path,
                offset: contents.data.len() as u64,
                max_len: 0,
            });
            let data = &mut contents.data;
            let (mode, size, got) = self.call(&request, |reply| match reply {
                Reply::File(file) => {
                    if data.len().saturating_add(file.data.len()) <= max_len {
                        data.extend_from_slice(file.data);
                    }
                    Ok((file.mode, file.size, file.data.len()))
                }
                _ => Err("unreachable: kind checked".to_owned()),
            })?;
            contents.mode = mode;
            if size > max_len as u64 || contents.data.len() > max_len {
                return Err(ClientError::FileTooLarge { size, max: max_len });
            }
            if got == 0 || contents.data.len() as u64 >= size {
                return Ok(contents);
            }
        }
    }

    /// Runs a command in working directory `exec.cwd`, as `exec.user` (each empty for the
    /// agent's default).
    pub fn exec_in(&mut self, exec: &ExecIn<'_>) -> Result<ExecOutput, ClientError> {
        self.call(&Request::ExecIn(*exec), |reply| match reply {
            Reply::ExecIn(result) => Ok(ExecOutput::from(&result)),
            _ => Err("unreachable: kind checked".to_owned()),
        })
    }

    /// What is at `path` (a final symlink is not followed).
    pub fn stat(&mut self, path: impl AsRef<[u8]>) -> Result<FileInfo, ClientError> {
        let request = Request::Stat(Stat {
            path: path.as_ref(),
        });
        self.call(&request, |reply| match reply {
            Reply::Stat(stat) => Ok(FileInfo::from(&stat)),
            _ => Err("unreachable: kind checked".to_owned()),
        })
    }

    /// Every entry under the directory at `path`, down to `depth` levels (1: its own entries),
    /// gathered page by page (one call each); more than `max_entries` entries fail with
    /// [`ClientError::TooManyEntries`]. Pages are separate calls, so entries added or removed
    /// meanwhile may be missed or seen twice.
    pub fn list_dir(
        &mut self,
        path: impl AsRef<[u8]>,
        depth: u32,
        max_entries: usize,
    ) -> Result<Vec<ListedEntry>, ClientError> {
        let path = path.as_ref();
        let mut entries = Vec::new();
        loop {
            let too_many = ClientError::TooManyEntries { max: max_entries };
            let offset = u32::try_from(entries.len()).map_err(|_| too_many)?;
            // One more than still allowed: enough to tell "too many" without fetching them all.
            let allowed = max_entries.saturating_sub(entries.len()).saturating_add(1);
            let request = ListDir {
                path,
                depth,
                offset,
                max_entries: u32::try_from(allowed).unwrap_or(u32::MAX),
            };
            let more = self.list_dir_page_into(&request, &mut entries)?;
            if entries.len() > max_entries {
                return Err(ClientError::TooManyEntries { max: max_entries });
            }
            if !more {
                return Ok(entries);
            }
        }
    }

    /// One ListDir page: its entries, and whether more follow (ask again at `offset` + the
    /// entries received).
    pub fn list_dir_page(
        &mut self,
        request: &ListDir<'_>,
    ) -> Result<(Vec<ListedEntry>, bool), ClientError> {
        let mut entries = Vec::new();
        let more = self.list_dir_page_into(request, &mut entries)?;
        Ok((entries, more))
    }

    fn list_dir_page_into(
        &mut self,
        request: &ListDir<'_>,
        entries: &mut Vec<ListedEntry>,
    ) -> Result<bool, ClientError> {
        let max = request.max_entries as usize;
        self.call(&Request::ListDir(*request), |reply| match reply {
            Reply::DirListing(page) => {
                if max != 0 && page.entries.len() > max {
                    return Err(format!(
                        "{} entries in a page of at most {max}",
                        page.entries.len()
                    ));
                }
                if page.more && page.entries.is_empty() {
                    return Err("an empty page that says more entries follow".to_owned());
                }
                entries.extend(page.entries.iter().map(|e| ListedEntry::from(&e)));
                Ok(page.more)
            }
            _ => Err("unreachable: kind checked".to_owned()),
        })
    }

    /// Creates the directory at `path` with permission bits `mode` (and, with `parents`, its
    /// missing parents, mode 0o755). Returns false if a directory was there already.
    pub fn make_dir(
        &mut self,
        path: impl AsRef<[u8]>,
        mode: u32,
        parents: bool,
    ) -> Result<bool, ClientError> {
        let request = Request::MakeDir(MakeDir {
            path: path.as_ref(),
            mode,
            parents,
        });
        self.call(&request, |reply| match reply {
            Reply::MakeDir { created } => Ok(created),
            _ => Err("unreachable: kind checked".to_owned()),
        })
    }

    /// Removes the file, symlink or directory at `path`; a directory with entries only with
    /// `recursive` (otherwise Error `NOT_EMPTY`).
    pub fn remove(&mut self, path: impl AsRef<[u8]>, recursive: bool) -> Result<(), ClientError> {
        let request = Request::Remove(Remove {
            path: path.as_ref(),
            recursive,
        });
        self.call(&request, |reply| match reply {
            Reply::Remove => Ok(()),
            _ => Err("unreachable: kind checked".to_owned()),
        })
    }

    /// Renames (moves) the entry at `from` to `to`, replacing a file or empty directory there.
    pub fn rename(
        &mut self,
        from: impl AsRef<[u8]>,
        to: impl AsRef<[u8]>,
    ) -> Result<(), ClientError> {
        let request = Request::Rename(Rename {
            from: from.as_ref(),
            to: to.as_ref(),
        });
        self.call(&request, |reply| match reply {
            Reply::Rename => Ok(()),
            _ => Err("unreachable: kind checked".to_owned()),
        })
    }

    /// Sends Reseed: fresh entropy, the wall-clock time and the VM's new generation.
    pub fn reseed(&mut self, reseed: &Reseed<'_>) -> Result<(), ClientError> {
        let generation = reseed.generation;
        self.call(&Request::Reseed(*reseed), |reply| match reply {
            Reply::Reseeded {
                generation: applied,
            } if applied == generation => Ok(()),
            Reply::Reseeded {
                generation: applied,
            } => Err(format!(
                "agent applied generation {applied}, asked for {generation}"
            )),
            _ => Err("unreachable: kind checked".to_owned()),
        })
    }

    /// Reseed with 32 bytes from the host's getrandom and the current wall-clock time.
    pub fn reseed_fresh(&mut self, generation: u64) -> Result<(), ClientError> {
        let (entropy, wall_clock_ns) = fresh_seed()?;
        self.reseed(&Reseed {
            generation,
            wall_clock_ns,
            entropy: &entropy,
        })
    }

    /// Sends Reseed without waiting for its reply. The reply is read and checked by the next
    /// call on this connection (before that call's own reply) or by
    /// [`finish_pending`](Self::finish_pending); if it is not a `Reseeded` for `generation`,
    /// that call fails with the Reseed's error and the connection is poisoned — the guest was
    /// not reseeded, so nothing it answers afterwards is handed on. A Reseed still pending is
    /// finished first.
    pub fn send_reseed(&mut self, reseed: &Reseed<'_>) -> Result<(), ClientError> {
        self.finish_pending()?;
        let deadline = Instant::now() + self.call_timeout;
        let id = self.send(&Request::Reseed(*reseed), deadline)?;
        self.pending = Some(PendingReseed {
            id,
            generation: reseed.generation,
        });
        Ok(())
    }

    /// [`send_reseed`](Self::send_reseed) with fresh entropy and the current wall-clock time.
    pub fn send_reseed_fresh(&mut self, generation: u64) -> Result<(), ClientError> {
        let (entropy, wall_clock_ns) = fresh_seed()?;
        self.send_reseed(&Reseed {
            generation,
            wall_clock_ns,
            entropy: &entropy,
        })
    }

    /// Whether a Reseed sent ahead still awaits its reply.
    pub fn has_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Waits for the reply of a Reseed sent ahead, if any, and checks it.
    pub fn finish_pending(&mut self) -> Result<(), ClientError> {
        let deadline = Instant::now() + self.call_timeout;
        self.receive_pending(deadline)
    }

    /// Asks the guest to power off; the connection is spent afterwards.
    pub fn shutdown(mut self) -> Result<(), ClientError> {
        self.call(&Request::Shutdown, |reply| match reply {
            Reply::Shutdown => Ok(()),
            _ => Err("unreachable: kind checked".to_owned()),
        })
    }

    /// Sends any request and hands its successful reply (already checked to be of the request's
    /// reply kind and to carry its id) to `on_reply`; an `Err(detail)` from it is a protocol
    /// violation and poisons the connection.
    pub fn call<T>(
        &mut self,
        request: &Request<'_>,
        on_reply: impl FnOnce(Reply<'_>) -> Result<T, String>,
    ) -> Result<T, ClientError> {
        let timeout = self.call_timeout;
        self.call_until(request, Instant::now() + timeout, timeout, on_reply)
    }

    fn call_until<T>(
        &mut self,
        request: &Request<'_>,
        deadline: Instant,
        timeout: Duration,
        on_reply: impl FnOnce(Reply<'_>) -> Result<T, String>,
    ) -> Result<T, ClientError> {
        let kind = request.kind();
        let id = self.send(request, deadline)?;
        // A Reseed sent ahead answers first; the guest handles both in order.
        self.receive_pending(deadline)?;
        let result = receive(&self.stream, &mut self.reader, kind, id, deadline, timeout).and_then(
            |reply| {
                on_reply(reply).map_err(|detail| ClientError::Protocol {
                    request: kind,
                    detail,
                })
            },
        );
        if let Err(e) = &result
            && e.poisons()
        {
            self.poison(e);
        }
        result
    }

    /// Encodes and writes one request under a fresh id (refused on a poisoned connection).
    fn send(&mut self, request: &Request<'_>, deadline: Instant) -> Result<u64, ClientError> {
        if let Some(cause) = &self.poisoned {
            return Err(ClientError::Poisoned {
                cause: cause.clone(),
            });
        }
        let kind = request.kind();
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let limit = self.agent.max_frame_len;
        encode_into_vec(&mut self.out, |buf| request.encode_limited(id, limit, buf)).map_err(
            |error| ClientError::Encode {
                request: kind,
                error,
            },
        )?;
        let timeout = deadline.saturating_duration_since(Instant::now());
        let mut io = DeadlineIo::new(&self.stream, deadline);
        let sent = io
            .write_all(&self.out)
            .map_err(|e| io_error(kind, timeout, "sending the request", e));
        if let Err(e) = sent {
            self.poison(&e);
            return Err(e);
        }
        Ok(id)
    }

    /// Reads and checks the reply of a Reseed sent ahead, if any; any failure poisons.
    fn receive_pending(&mut self, deadline: Instant) -> Result<(), ClientError> {
        let Some(pending) = self.pending.take() else {
            return Ok(());
        };
        let timeout = deadline.saturating_duration_since(Instant::now());
        let result = receive(
            &self.stream,
            &mut self.reader,
            Kind::Reseed,
            pending.id,
            deadline,
            timeout,
        )
        .and_then(|reply| match reply {
            Reply::Reseeded { generation } if generation == pending.generation => Ok(()),
            Reply::Reseeded { generation } => Err(ClientError::Protocol {
                request: Kind::Reseed,
                detail: format!(
                    "agent applied generation {generation}, asked for {}",
                    pending.generation
                ),
            }),
            _ => Err(ClientError::Protocol {
                request: Kind::Reseed,
                detail: "unreachable: kind checked".to_owned(),
            }),
        });
        if let Err(e) = &result {
            // Even an agent-side refusal: the guest was not reseeded, so nothing later on this
            // connection may be handed on.
            self.poison(e);
        }
        result
    }

    fn poison(&mut self, cause: &ClientError) {
        tracing::warn!(error = %cause, "agent connection poisoned");
        self.poisoned = Some(cause.to_string());
        // Whatever is in flight is abandoned; the peer sees the connection close.
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

/// 32 bytes from the host's getrandom and the wall-clock time in nanoseconds.
fn fresh_seed() -> Result<([u8; 32], u64), ClientError> {
    let mut entropy = [0u8; 32];
    getrandom::fill(&mut entropy).map_err(|e| ClientError::Entropy(e.to_string()))?;
    let wall_clock_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    Ok((entropy, wall_clock_ns))
}

/// A socket error as a timeout (the deadline passed) or an I/O failure.
fn io_error(
    kind: Kind,
    timeout: Duration,
    stage: &'static str,
    source: std::io::Error,
) -> ClientError {
    if matches!(
        source.kind(),
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
    ) {
        ClientError::Timeout {
            request: kind,
            stage,
            timeout,
        }
    } else {
        ClientError::Io {
            request: kind,
            stage,
            source,
        }
    }
}

/// Reads the reply to request `id` (of `kind`).
fn receive<'r>(
    stream: &UnixStream,
    reader: &'r mut FrameReader,
    kind: Kind,
    id: u64,
    deadline: Instant,
    timeout: Duration,
) -> Result<Reply<'r>, ClientError> {
    let mut io = DeadlineIo::new(stream, deadline);
    let bytes = reader.read_frame(&mut io).map_err(|e| match e {
        ReadFrameError::Closed { buffered } => ClientError::Closed {
            request: kind,
            buffered,
        },
        ReadFrameError::Io(source) => io_error(kind, timeout, "waiting for the reply", source),
        ReadFrameError::Frame(error) => ClientError::Malformed {
            request: kind,
            error: error.into(),
        },
    })?;
    let (header, reply): (Header, Reply<'r>) =
        Reply::decode(bytes).map_err(|error| ClientError::Malformed {
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
        Reply::Error(e) => Err(ClientError::Agent {
            request: kind,
            code: e.code,
            message: e.message.to_owned(),
        }),
        Reply::Unsupported { .. } => Err(ClientError::Unsupported { request: kind }),
        reply if Some(reply.kind()) == kind.reply() => Ok(reply),
        reply => Err(ClientError::UnexpectedReply {
            request: kind,
            got: reply.kind(),
        }),
    }
}
