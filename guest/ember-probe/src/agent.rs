//! The probe's agent: what it answers to the requests the protocol session hands out (ring 3).
//!
//! - Health: uptime from the timer tick counter (`counter * 1e9 / hz`, so a restored
//!   snapshot continues its count; 0 without a timer, `hz=0`), the boot id (16 bytes: the banner's id, then
//!   `splitmix64` of it, both little-endian), and the generation set by the last Reseed.
//! - Reseed: stores the generation, the wall-clock time and a digest of the entropy mixed
//!   with the previous seed in the state page; Health then reports the new generation, and
//!   the file system's mtimes the wall clock from then on (`now_ns`: the Reseed's time plus
//!   the uptime since; before any Reseed, 0 = unknown).
//! - Exec and ExecIn built-ins (argv[0]); exit code 0 and no stderr unless said otherwise:
//!   - `echo <args..>`: stdout the arguments joined by single spaces, then `\n` (like /bin/echo);
//!   - `counter`: stdout the tick counter in decimal, then `\n`;
//!   - `sha256 <n>`: stdout the hex SHA-256 of `n` bytes with byte i = i % 251, then `\n`
//!     (n at most 64 MiB);
//!   - `exit <n>`: no output, exit code `n` (decimal, 0..=255);
//!   - `stderr <args..>`: stderr the arguments joined by single spaces, then `\n`;
//!   - `cat <path>`: stdout the file's bytes (see [`files`](crate::files)); a relative path is
//!     taken from the working directory; NOT_FOUND if there is no such file, IS_A_DIRECTORY
//!     for a directory;
//!   - `pwd`: stdout the working directory, then `\n`;
//!   - `whoami`: stdout the user (`root` unless ExecIn said `user`), then `\n`;
//!   - `memtouch <MiB>`: writes one byte in every 4 KiB page of that much guest RAM from
//!     4 MiB up (the host then backs it, see [`memtouch`](crate::memtouch)); stdout
//!     `touched <MiB> MiB`, then `\n`; more than the guest has: exit 1, nothing touched,
//!     and stderr `memtouch: only <n> MiB above 4 MiB`, then `\n`;
//!   - `net-connect IP PORT [TIMEOUT_MS]`, `net-udp IP PORT [TIMEOUT_MS]`, `net-info`: the
//!     guest's own network traffic over virtio-net ([`netcmd`](crate::netcmd)); the first two
//!     are answered once the network had its say (the request waits, the agent does not).
//!
//!   `sh`/`bash` (also `/bin/..`, `/usr/bin/..`) `[-l] [-i] [-e] -c SCRIPT` runs SCRIPT's one
//!   simple command, split on whitespace ([`ember_agent_proto::shell`]: quotes, pipes, `;`,
//!   `&&`, redirections, variables, globs are INVALID_ARGUMENT), so clients that wrap every
//!   command in `bash -l -c '...'` (E2B's SDK) reach the built-ins; an empty script exits 0.
//!   Output is cut (whole words for `echo`/`stderr`, and the truncated flag set) to fit the
//!   scratch buffer ([`SCRATCH_LEN`]) and the host's frame limit. An unknown command: Error
//!   NOT_FOUND; bad arguments: INVALID_ARGUMENT. ExecIn: `cwd` (empty: `/`) must be a
//!   directory (NOT_FOUND, NOT_A_DIRECTORY); `user` must be empty, `root` or `user`
//!   (INVALID_ARGUMENT otherwise; the probe has no users, so it only changes `whoami`). Exec
//!   runs in `/` as `root`.
//! - PutFile, GetFile, Stat, ListDir, MakeDir, Remove, Rename: the RAM file system
//!   ([`files`](crate::files); paths: [`path`](crate::path)). GetFile answers the bytes from
//!   `offset` (none at or past the end), at most `max_len` (0: no limit) and at most what fits
//!   one reply frame (the reply buffer, [`CONN_OUT_LEN`](crate::layout::CONN_OUT_LEN), and the
//!   host's frame limit). ListDir answers its page depth-first in name order, as many entries
//!   as `max_entries` allows and the reply frame holds. Stat and ListDir report owner and
//!   group `root` and no symlinks (the probe has none).
//! - Shutdown: Unsupported. So are the background-process kinds and TcpConnect (the probe's
//!   servers listen on vsock ports, which emberd's port forwarding then dials directly).

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use ember_agent_proto::limits::HEADER_LEN;
use ember_agent_proto::{
    ByteList, DirEntries, DirEntry, DirListing, ErrorCode, ErrorReply, ExecResult, FileData,
    HealthReport, Reply, Request, Session, shell,
};

use crate::files::{self, Files, Node, ROOT_STAT};
use crate::layout::{NODE_COUNT, SCRATCH, SCRATCH_LEN};
use crate::netcmd::Started;
use crate::path::Path;
use crate::sha256;

/// ExecResult frame bytes besides stdout and stderr: header, exit code, flags, two lengths.
const EXEC_REPLY_OVERHEAD: usize = HEADER_LEN + 4 + 1 + 4 + 4;
/// FileData frame bytes besides the data: header, mode, size, data length.
const FILE_REPLY_OVERHEAD: usize = HEADER_LEN + 4 + 8 + 4;

/// Largest `sha256 <n>`.
const MAX_SHA_BYTES: u64 = 64 << 20;

/// Most words in an `sh -c` script.
const MAX_WORDS: usize = 64;

/// The boot id printed in the banner.
pub fn boot_id() -> u64 {
    let st = crate::state();
    // SAFETY: the state page is always mapped; the kernel wrote the id at boot.
    unsafe { read_volatile(addr_of!((*st).boot_id)) }
}

fn counter() -> u64 {
    let st = crate::state();
    // SAFETY: as in `boot_id`; the timer handler increments the counter atomically.
    unsafe { read_volatile(addr_of!((*st).counter)) }
}

fn uptime_ns() -> u64 {
    let st = crate::state();
    // SAFETY: as in `boot_id`.
    let hz = unsafe { read_volatile(addr_of!((*st).hz)) };
    1_000_000_000u64
        .checked_div(hz)
        .map_or(0, |period| counter().saturating_mul(period))
}

/// The wall clock, ns since the Unix epoch: the last Reseed's time plus the uptime since
/// (which stays put without a timer); 0 before any Reseed.
fn now_ns() -> u64 {
    let st = crate::state();
    // SAFETY: as in `boot_id`; only the agent writes these fields (in `reseed`).
    let (wall, at) = unsafe {
        (
            read_volatile(addr_of!((*st).wall_clock_ns)),
            read_volatile(addr_of!((*st).reseed_uptime_ns)),
        )
    };
    match wall {
        0 => 0,
        wall => wall.saturating_add(uptime_ns().saturating_sub(at)),
    }
}

/// Writes `v` as 16 lowercase hex digits; returns 16.
pub fn hex_u64(v: u64, out: &mut [u8]) -> usize {
    for (i, o) in out.iter_mut().take(16).enumerate() {
        let d = ((v >> (60 - 4 * i)) & 0xf) as u8;
        *o = if d < 10 { b'0' + d } else { b'a' + d - 10 };
    }
    16
}

fn dec(mut v: u64, out: &mut [u8]) -> usize {
    let mut tmp = [0u8; 20];
    let mut n = 0;
    loop {
        tmp[n] = b'0' + (v % 10) as u8;
        v /= 10;
        n += 1;
        if v == 0 {
            break;
        }
    }
    for i in 0..n {
        out[i] = tmp[n - 1 - i];
    }
    n
}

fn parse_dec(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    let mut v: u64 = 0;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
    }
    Some(v)
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn health() -> HealthReport {
    let id = boot_id();
    let mut boot = [0u8; 16];
    boot[..8].copy_from_slice(&id.to_le_bytes());
    boot[8..].copy_from_slice(&splitmix64(id).to_le_bytes());
    let st = crate::state();
    HealthReport {
        uptime_ns: uptime_ns(),
        boot_id: boot,
        // SAFETY: as in `boot_id`.
        generation: unsafe { read_volatile(addr_of!((*st).generation)) },
    }
}

fn reseed(generation: u64, wall_clock_ns: u64, entropy: &[u8]) {
    let st = crate::state();
    // SAFETY: the state page belongs to the probe; only the agent writes these fields.
    unsafe {
        let mut h = sha256::Sha256::new();
        for w in read_volatile(addr_of!((*st).seed)) {
            h.update(&w.to_le_bytes());
        }
        h.update(entropy);
        let d = h.finish();
        let mut seed = [0u64; 4];
        for (i, s) in seed.iter_mut().enumerate() {
            let mut b = [0u8; 8];
            b.copy_from_slice(&d[8 * i..8 * i + 8]);
            *s = u64::from_le_bytes(b);
        }
        write_volatile(addr_of_mut!((*st).seed), seed);
        write_volatile(addr_of_mut!((*st).wall_clock_ns), wall_clock_ns);
        write_volatile(addr_of_mut!((*st).reseed_uptime_ns), uptime_ns());
        write_volatile(addr_of_mut!((*st).generation), generation);
    }
}

fn scratch() -> &'static mut [u8] {
    // SAFETY: the Exec scratch area (layout.rs), used by one request at a time.
    unsafe { core::slice::from_raw_parts_mut(SCRATCH as *mut u8, SCRATCH_LEN) }
}

/// Where an Exec built-in's output goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stream {
    Stdout,
    Stderr,
}

/// How an Exec built-in ended.
enum ExecOutcome {
    /// It ran: its exit code, and its output (the first `len` bytes of the output buffer, cut
    /// if `truncated`) on one stream; the other stream is empty.
    Exited {
        exit_code: i32,
        stream: Stream,
        len: usize,
        truncated: bool,
    },
    /// It did not run: an Error reply.
    Err(ErrorCode, &'static str),
    /// It runs on ([`netcmd`](crate::netcmd)): the reply comes later, from
    /// [`netcmd::reply`](crate::netcmd::reply).
    Pending,
}

/// What [`handle`] did with a request.
pub enum Handled {
    /// The reply is in the output buffer, this long (0: none fit, see [`handle`]).
    Reply(usize),
    /// An Exec (or ExecIn, `exec_in`) runs on; [`netcmd::reply`](crate::netcmd::reply) makes
    /// its reply.
    Pending { exec_in: bool },
}

impl ExecOutcome {
    const fn stdout(len: usize, truncated: bool) -> Self {
        ExecOutcome::Exited {
            exit_code: 0,
            stream: Stream::Stdout,
            len,
            truncated,
        }
    }
}

/// Writes `words` joined by single spaces, then `\n`, into `out` (not empty), leaving out
/// the words that do not fit; returns the length and whether words were left out.
fn join_line<'a>(words: impl Iterator<Item = &'a [u8]>, out: &mut [u8]) -> (usize, bool) {
    let mut n = 0;
    let mut truncated = false;
    for (i, a) in words.enumerate() {
        let need = a.len() + usize::from(i > 0);
        if n + need + 1 > out.len() {
            truncated = true;
            break;
        }
        if i > 0 {
            out[n] = b' ';
            n += 1;
        }
        out[n..n + a.len()].copy_from_slice(a);
        n += a.len();
    }
    out[n] = b'\n';
    (n + 1, truncated)
}

/// Where and as whom a command runs.
struct Context<'a> {
    /// The working directory.
    cwd: &'a Path,
    /// `root` or `user`.
    user: &'a [u8],
}

/// Runs `argv`, a built-in or `sh -c` around one ([`shell`]), with its output going to `out`
/// (at least 65 bytes).
fn run(argv: ByteList<'_>, ctx: &Context<'_>, out: &mut [u8], files: &Files) -> ExecOutcome {
    let script = match shell::shell_script(argv) {
        None => return exec(argv, ctx, out, files),
        Some(Ok(script)) => script,
        Some(Err(message)) => return ExecOutcome::Err(ErrorCode::INVALID_ARGUMENT, message),
    };
    let words = match shell::script_words(script) {
        Ok(words) => words,
        Err(message) => return ExecOutcome::Err(ErrorCode::INVALID_ARGUMENT, message),
    };
    let mut argv: [&[u8]; MAX_WORDS] = [&[]; MAX_WORDS];
    let mut n = 0;
    for word in words {
        let Some(slot) = argv.get_mut(n) else {
            return ExecOutcome::Err(
                ErrorCode::INVALID_ARGUMENT,
                "the script has more than 64 words",
            );
        };
        *slot = word;
        n += 1;
    }
    if n == 0 {
        // A shell runs an empty script as success.
        return ExecOutcome::stdout(0, false);
    }
    exec(ByteList::from_bytes(&argv[..n]), ctx, out, files)
}

/// Runs built-in `argv` with its output going to `out` (at least 65 bytes).
fn exec(argv: ByteList<'_>, ctx: &Context<'_>, out: &mut [u8], files: &Files) -> ExecOutcome {
    let mut args = argv.iter();
    let Some(cmd) = args.next() else {
        return ExecOutcome::Err(ErrorCode::INVALID_ARGUMENT, "empty argv");
    };
    match cmd {
        b"echo" => {
            let (len, truncated) = join_line(args, out);
            ExecOutcome::stdout(len, truncated)
        }
        b"stderr" => {
            let (len, truncated) = join_line(args, out);
            ExecOutcome::Exited {
                exit_code: 0,
                stream: Stream::Stderr,
                len,
                truncated,
            }
        }
        b"counter" => {
            let n = dec(counter(), out);
            out[n] = b'\n';
            ExecOutcome::stdout(n + 1, false)
        }
        b"sha256" => {
            let (Some(arg), None) = (args.next(), args.next()) else {
                return ExecOutcome::Err(ErrorCode::INVALID_ARGUMENT, "usage: sha256 <n>");
            };
            let Some(n) = parse_dec(arg).filter(|&n| n <= MAX_SHA_BYTES) else {
                return ExecOutcome::Err(
                    ErrorCode::INVALID_ARGUMENT,
                    "sha256: <n> must be a decimal number of bytes, at most 67108864",
                );
            };
            let d = sha256::deterministic(n);
            for (i, b) in d.iter().enumerate() {
                let hex = |x: u8| if x < 10 { b'0' + x } else { b'a' + x - 10 };
                out[2 * i] = hex(b >> 4);
                out[2 * i + 1] = hex(b & 0xf);
            }
            out[64] = b'\n';
            ExecOutcome::stdout(65, false)
        }
        b"exit" => {
            let (Some(arg), None) = (args.next(), args.next()) else {
                return ExecOutcome::Err(ErrorCode::INVALID_ARGUMENT, "usage: exit <n>");
            };
            let Some(code) = parse_dec(arg).filter(|&n| n <= 255) else {
                return ExecOutcome::Err(
                    ErrorCode::INVALID_ARGUMENT,
                    "exit: <n> must be a decimal number from 0 to 255",
                );
            };
            ExecOutcome::Exited {
                exit_code: code as i32,
                stream: Stream::Stdout,
                len: 0,
                truncated: false,
            }
        }
        b"cat" => {
            let (Some(path), None) = (args.next(), args.next()) else {
                return ExecOutcome::Err(ErrorCode::INVALID_ARGUMENT, "usage: cat <path>");
            };
            let found = Path::resolve(ctx.cwd, path).and_then(|p| files.get(&p));
            match found {
                Ok(f) => {
                    let len = f.data.len().min(out.len());
                    out[..len].copy_from_slice(&f.data[..len]);
                    ExecOutcome::stdout(len, len < f.data.len())
                }
                Err((code, message)) => ExecOutcome::Err(code, message),
            }
        }
        b"pwd" | b"whoami" => {
            if args.next().is_some() {
                return ExecOutcome::Err(ErrorCode::INVALID_ARGUMENT, "takes no arguments");
            }
            let text = if cmd == b"pwd" {
                ctx.cwd.display()
            } else {
                ctx.user
            };
            let len = text.len().min(out.len() - 1);
            out[..len].copy_from_slice(&text[..len]);
            out[len] = b'\n';
            ExecOutcome::stdout(len + 1, len < text.len())
        }
        b"memtouch" => {
            let (Some(arg), None) = (args.next(), args.next()) else {
                return ExecOutcome::Err(ErrorCode::INVALID_ARGUMENT, "usage: memtouch <MiB>");
            };
            let Some(mib) = parse_dec(arg) else {
                return ExecOutcome::Err(
                    ErrorCode::INVALID_ARGUMENT,
                    "memtouch: <MiB> must be a decimal number of mebibytes",
                );
            };
            // At most 10 + 20 + 17 + 1 bytes either way: `out` holds 65.
            let touched = crate::memtouch::touch(mib);
            let (head, value, tail): (&[u8], u64, &[u8]) = if touched {
                (b"touched ", mib, b" MiB\n")
            } else {
                (
                    b"memtouch: only ",
                    crate::memtouch::available_mib(),
                    b" MiB above 4 MiB\n",
                )
            };
            out[..head.len()].copy_from_slice(head);
            let mut n = head.len();
            n += dec(value, &mut out[n..]);
            out[n..n + tail.len()].copy_from_slice(tail);
            ExecOutcome::Exited {
                exit_code: i32::from(!touched),
                stream: if touched {
                    Stream::Stdout
                } else {
                    Stream::Stderr
                },
                len: n + tail.len(),
                truncated: false,
            }
        }
        b"net-connect" | b"net-udp" | b"net-info" => match crate::netcmd::exec(cmd, args) {
            Started::Done(o) => {
                let len = o.output.len().min(out.len());
                out[..len].copy_from_slice(&o.output[..len]);
                let stream = [Stream::Stderr, Stream::Stdout][usize::from(o.stdout)];
                let (exit_code, truncated) = (o.exit_code, len < o.output.len());
                ExecOutcome::Exited {
                    exit_code,
                    stream,
                    len,
                    truncated,
                }
            }
            Started::Usage(message) => ExecOutcome::Err(ErrorCode::INVALID_ARGUMENT, message),
            Started::Pending => ExecOutcome::Pending,
            Started::NotNet => ExecOutcome::Err(ErrorCode::NOT_FOUND, "no such command"),
        },
        _ => ExecOutcome::Err(
            ErrorCode::NOT_FOUND,
            "no such command (built-ins: echo, counter, sha256, exit, stderr, cat, pwd, whoami, \
             memtouch, net-connect, net-udp, net-info)",
        ),
    }
}

/// The ExecResult (or ExecInResult) body for `outcome`, whose output is in `buf`.
fn exec_result<'b>(
    outcome: ExecOutcome,
    buf: &'b [u8],
) -> Result<ExecResult<'b>, files::FileError> {
    match outcome {
        ExecOutcome::Exited {
            exit_code,
            stream,
            len,
            truncated,
        } => {
            let (output, none) = (&buf[..len], &[][..]);
            let on_stdout = stream == Stream::Stdout;
            Ok(ExecResult {
                exit_code,
                stdout_truncated: truncated && on_stdout,
                stderr_truncated: truncated && !on_stdout,
                stdout: if on_stdout { output } else { none },
                stderr: if on_stdout { none } else { output },
            })
        }
        ExecOutcome::Err(code, message) => Err((code, message)),
        // `handle` answers Pending before it asks for a result.
        ExecOutcome::Pending => Err((ErrorCode::INTERNAL, "pending")),
    }
}

/// An unused ListDir page slot.
const PLACEHOLDER: DirEntry<'static> = DirEntry {
    name: b"",
    stat: ROOT_STAT,
};

/// `path` from `/`, normalised.
fn absolute(path: &[u8]) -> Result<Path, files::FileError> {
    Path::resolve(&Path::root(), path)
}

/// ExecIn's working directory: `/` when empty, else an existing directory.
fn working_dir(cwd: &[u8], files: &Files) -> Result<Path, files::FileError> {
    if cwd.is_empty() {
        return Ok(Path::root());
    }
    let path = absolute(cwd)?;
    match files.lookup(&path)? {
        Node::Root | Node::Dir(_) => Ok(path),
        Node::File(_) => Err((
            ErrorCode::NOT_A_DIRECTORY,
            "the working directory is a file",
        )),
    }
}

/// ExecIn's user: `root` when empty, else `root` or `user`.
fn user_of(user: &str) -> Result<&[u8], files::FileError> {
    match user {
        "" | "root" => Ok(b"root"),
        "user" => Ok(b"user"),
        _ => Err((
            ErrorCode::INVALID_ARGUMENT,
            "no such user (the probe knows root and user)",
        )),
    }
}

/// Answers `request` (not Hello or Ping: the session does those): the reply's length in
/// `out` (0 if even an error reply did not fit, which `out`'s size rules out), or Pending.
pub fn handle(session: &Session<'_>, id: u64, request: Request<'_>, out: &mut [u8]) -> Handled {
    let buf = scratch();
    let mut files = files::table();
    // The largest reply frame: the reply buffer, within the host's limit.
    let reply_room = session.reply_limit().min(out.len());
    let exec_room = reply_room
        .saturating_sub(EXEC_REPLY_OVERHEAD)
        .min(SCRATCH_LEN);
    let error = |(code, message): files::FileError| Reply::Error(ErrorReply { code, message });
    // ListDir's page (borrows the table); filled only for ListDir.
    let mut page: [DirEntry<'_>; NODE_COUNT];
    let reply = match request {
        Request::Health => Reply::Health(health()),
        Request::Reseed(r) => {
            reseed(r.generation, r.wall_clock_ns, r.entropy);
            Reply::Reseeded {
                generation: r.generation,
            }
        }
        Request::Exec(e) => {
            let root = Path::root();
            let ctx = Context {
                cwd: &root,
                user: b"root",
            };
            let buf = &mut buf[..exec_room];
            let outcome = run(e.argv, &ctx, buf, &files);
            if let ExecOutcome::Pending = outcome {
                return Handled::Pending { exec_in: false };
            }
            exec_result(outcome, buf).map_or_else(error, Reply::Exec)
        }
        Request::ExecIn(e) => {
            let buf = &mut buf[..exec_room];
            let ran = working_dir(e.cwd, &files).and_then(|cwd| {
                let ctx = Context {
                    cwd: &cwd,
                    user: user_of(e.user)?,
                };
                Ok(run(e.argv, &ctx, buf, &files))
            });
            match ran {
                Ok(ExecOutcome::Pending) => return Handled::Pending { exec_in: true },
                Ok(outcome) => exec_result(outcome, buf).map_or_else(error, Reply::ExecIn),
                Err(e) => error(e),
            }
        }
        Request::PutFile(p) => absolute(p.path)
            .and_then(|path| files.put(&path, p.mode, p.offset, p.data, now_ns()))
            .map_or_else(error, |()| Reply::PutFile),
        Request::GetFile(g) => match absolute(g.path).and_then(|path| {
            let f = files.get(&path)?;
            Ok((f.mode, f.data))
        }) {
            Ok((mode, data)) => {
                let room = reply_room.saturating_sub(FILE_REPLY_OVERHEAD);
                let max = match g.max_len {
                    0 => room,
                    n => room.min(n as usize),
                };
                let start = usize::try_from(g.offset).map_or(data.len(), |o| o.min(data.len()));
                let end = start + max.min(data.len() - start);
                Reply::File(FileData {
                    mode,
                    size: data.len() as u64,
                    data: &data[start..end],
                })
            }
            Err(e) => error(e),
        },
        Request::Stat(s) => absolute(s.path)
            .and_then(|path| files.stat(&path))
            .map_or_else(error, Reply::Stat),
        Request::ListDir(l) => match absolute(l.path).and_then(|dir| match files.lookup(&dir)? {
            Node::Root | Node::Dir(_) => Ok(dir),
            Node::File(_) => Err((ErrorCode::NOT_A_DIRECTORY, "not a directory")),
        }) {
            Ok(dir) => {
                let max = match l.max_entries {
                    0 => NODE_COUNT,
                    n => (n as usize).min(NODE_COUNT),
                };
                let mut used = DirListing::OVERHEAD;
                let mut n = 0;
                let mut more = false;
                let skip = l.offset as usize;
                page = [PLACEHOLDER; NODE_COUNT];
                for (name, stat) in files.list(&dir, l.depth).skip(skip) {
                    let entry = DirEntry { name, stat };
                    if n == max || used + entry.encoded_len() > reply_room {
                        more = true;
                        break;
                    }
                    used += entry.encoded_len();
                    page[n] = entry;
                    n += 1;
                }
                // Never: an entry (a path of at most 255 bytes) fits the smallest frame.
                if n == 0 && more {
                    error((ErrorCode::TOO_LARGE, "an entry does not fit a reply frame"))
                } else {
                    Reply::DirListing(DirListing {
                        more,
                        entries: DirEntries::from_slice(&page[..n]),
                    })
                }
            }
            Err(e) => error(e),
        },
        Request::MakeDir(m) => absolute(m.path)
            .and_then(|path| files.make_dir(&path, m.mode, m.parents, now_ns()))
            .map_or_else(error, |created| Reply::MakeDir { created }),
        Request::Remove(r) => absolute(r.path)
            .and_then(|path| files.remove(&path, r.recursive, now_ns()))
            .map_or_else(error, |()| Reply::Remove),
        Request::Rename(r) => absolute(r.from)
            .and_then(|from| files.rename(&from, &absolute(r.to)?, now_ns()))
            .map_or_else(error, |()| Reply::Rename),
        other => Reply::Unsupported {
            kind: other.kind().as_u8(),
        },
    };
    Handled::Reply(session.reply_or_error(id, &reply, out).unwrap_or(0))
}
