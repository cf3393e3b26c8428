//! The probe's agent: what it answers to the requests the protocol session hands out (ring 3).
//!
//! - Health: uptime from the timer tick counter (`counter * 1e9 / hz`, so a restored
//!   snapshot continues its count; 0 without a timer, `hz=0`), the boot id (16 bytes: the banner's id, then
//!   `splitmix64` of it, both little-endian), and the generation set by the last Reseed.
//! - Reseed: stores the generation, the wall-clock time and a digest of the entropy mixed
//!   with the previous seed in the state page; Health then reports the new generation.
//! - Exec built-ins (argv[0]); exit code 0 and no stderr unless said otherwise:
//!   - `echo <args..>`: stdout the arguments joined by single spaces, then `\n` (like /bin/echo);
//!   - `counter`: stdout the tick counter in decimal, then `\n`;
//!   - `sha256 <n>`: stdout the hex SHA-256 of `n` bytes with byte i = i % 251, then `\n`
//!     (n at most 64 MiB);
//!   - `exit <n>`: no output, exit code `n` (decimal, 0..=255);
//!   - `stderr <args..>`: stderr the arguments joined by single spaces, then `\n`;
//!   - `cat <path>`: stdout the file's bytes (see [`files`](crate::files)); NOT_FOUND if there
//!     is no such file.
//!
//!   Output is cut (whole words for `echo`/`stderr`, and the truncated flag set) to fit the
//!   scratch buffer ([`SCRATCH_LEN`]) and the host's frame limit. An unknown command: Error
//!   NOT_FOUND; bad arguments: INVALID_ARGUMENT.
//! - PutFile, GetFile: the RAM file table ([`files`](crate::files)). GetFile answers the bytes
//!   from `offset` (none at or past the end), at most `max_len` (0: no limit) and at most what
//!   fits one reply frame (the reply buffer, [`CONN_OUT_LEN`](crate::layout::CONN_OUT_LEN), and
//!   the host's frame limit). Errors: NOT_FOUND (no such file; PutFile at an offset > 0 of a
//!   missing file), INVALID_ARGUMENT (PutFile offset past the end), TOO_LARGE (path over 255
//!   bytes, file over 64 KiB, table full).
//! - Shutdown: Unsupported.

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use ember_agent_proto::limits::HEADER_LEN;
use ember_agent_proto::{
    ErrorCode, ErrorReply, ExecResult, FileData, HealthReport, Reply, Request, Session,
};

use crate::files::{self, Files};
use crate::layout::{SCRATCH, SCRATCH_LEN};
use crate::sha256;

/// ExecResult frame bytes besides stdout and stderr: header, exit code, flags, two lengths.
const EXEC_REPLY_OVERHEAD: usize = HEADER_LEN + 4 + 1 + 4 + 4;
/// FileData frame bytes besides the data: header, mode, size, data length.
const FILE_REPLY_OVERHEAD: usize = HEADER_LEN + 4 + 8 + 4;

/// Largest `sha256 <n>`.
const MAX_SHA_BYTES: u64 = 64 << 20;

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

/// Runs built-in `argv` with its output going to `out` (at least 65 bytes).
fn exec(argv: ember_agent_proto::ByteList<'_>, out: &mut [u8], files: &Files) -> ExecOutcome {
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
            match files.get(path) {
                Ok(f) => {
                    let len = f.data.len().min(out.len());
                    out[..len].copy_from_slice(&f.data[..len]);
                    ExecOutcome::stdout(len, len < f.data.len())
                }
                Err((code, message)) => ExecOutcome::Err(code, message),
            }
        }
        _ => ExecOutcome::Err(
            ErrorCode::NOT_FOUND,
            "no such command (built-ins: echo, counter, sha256, exit, stderr, cat)",
        ),
    }
}

/// Answers `request` (not Hello or Ping: the session does those); returns the reply's
/// length in `out` (0 if even an error reply did not fit, which `out`'s size rules out).
pub fn handle(session: &Session<'_>, id: u64, request: Request<'_>, out: &mut [u8]) -> usize {
    let buf = scratch();
    let mut files = files::table();
    // The largest reply frame: the reply buffer, within the host's limit.
    let reply_room = session.reply_limit().min(out.len());
    let error = |(code, message): files::FileError| Reply::Error(ErrorReply { code, message });
    let reply = match request {
        Request::Health => Reply::Health(health()),
        Request::Reseed(r) => {
            reseed(r.generation, r.wall_clock_ns, r.entropy);
            Reply::Reseeded {
                generation: r.generation,
            }
        }
        Request::Exec(e) => {
            let room = reply_room.saturating_sub(EXEC_REPLY_OVERHEAD);
            let buf = &mut buf[..room.min(SCRATCH_LEN)];
            match exec(e.argv, buf, &files) {
                ExecOutcome::Exited {
                    exit_code,
                    stream,
                    len,
                    truncated,
                } => {
                    let (output, none) = (&buf[..len], &[][..]);
                    let on_stdout = stream == Stream::Stdout;
                    Reply::Exec(ExecResult {
                        exit_code,
                        stdout_truncated: truncated && on_stdout,
                        stderr_truncated: truncated && !on_stdout,
                        stdout: if on_stdout { output } else { none },
                        stderr: if on_stdout { none } else { output },
                    })
                }
                ExecOutcome::Err(code, message) => error((code, message)),
            }
        }
        Request::PutFile(p) => match files.put(p.path, p.mode, p.offset, p.data) {
            Ok(()) => Reply::PutFile,
            Err(e) => error(e),
        },
        Request::GetFile(g) => match files.get(g.path) {
            Ok(f) => {
                let room = reply_room.saturating_sub(FILE_REPLY_OVERHEAD);
                let max = match g.max_len {
                    0 => room,
                    n => room.min(n as usize),
                };
                let start = usize::try_from(g.offset).map_or(f.data.len(), |o| o.min(f.data.len()));
                let end = start + max.min(f.data.len() - start);
                Reply::File(FileData {
                    mode: f.mode,
                    size: f.data.len() as u64,
                    data: &f.data[start..end],
                })
            }
            Err(e) => error(e),
        },
        other => Reply::Unsupported {
            kind: other.kind().as_u8(),
        },
    };
    session.reply_or_error(id, &reply, out).unwrap_or(0)
}
