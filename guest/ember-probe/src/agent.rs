//! The probe's agent: what it answers to the requests the protocol session hands out (ring 3).
//!
//! - Health: uptime from the timer tick counter (`counter * 1e9 / hz`, so a restored
//!   snapshot continues its count; 0 without a timer, `hz=0`), the boot id (16 bytes: the banner's id, then
//!   `splitmix64` of it, both little-endian), and the generation set by the last Reseed.
//! - Reseed: stores the generation, the wall-clock time and a digest of the entropy mixed
//!   with the previous seed in the state page; Health then reports the new generation.
//! - Exec built-ins (argv[0]): `echo <args..>` (stdout: the arguments joined by single spaces,
//!   then `\n`, like /bin/echo), `counter` (the tick counter in decimal, then `\n`),
//!   `sha256 <n>` (the hex SHA-256 of `n` bytes with byte i = i % 251, then `\n`; n at most
//!   64 MiB). Exit code 0. Anything else: Error NOT_FOUND; bad arguments: INVALID_ARGUMENT.
//! - PutFile, GetFile, Shutdown: Unsupported.

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use ember_agent_proto::{ErrorCode, ErrorReply, ExecResult, HealthReport, Reply, Request, Session};

use crate::layout::{SCRATCH, SCRATCH_LEN};
use crate::sha256;

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

enum ExecOutcome {
    Ok { len: usize, truncated: bool },
    Err(ErrorCode, &'static str),
}

fn exec(argv: ember_agent_proto::ByteList<'_>, out: &mut [u8]) -> ExecOutcome {
    let mut args = argv.iter();
    let Some(cmd) = args.next() else {
        return ExecOutcome::Err(ErrorCode::INVALID_ARGUMENT, "empty argv");
    };
    match cmd {
        b"echo" => {
            let mut n = 0;
            let mut truncated = false;
            for (i, a) in args.enumerate() {
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
            ExecOutcome::Ok {
                len: n + 1,
                truncated,
            }
        }
        b"counter" => {
            let n = dec(counter(), out);
            out[n] = b'\n';
            ExecOutcome::Ok {
                len: n + 1,
                truncated: false,
            }
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
            ExecOutcome::Ok {
                len: 65,
                truncated: false,
            }
        }
        _ => ExecOutcome::Err(
            ErrorCode::NOT_FOUND,
            "no such command (built-ins: echo, counter, sha256)",
        ),
    }
}

/// Answers `request` (not Hello or Ping: the session does those); returns the reply's
/// length in `out` (0 if even an error reply did not fit, which `out`'s size rules out).
pub fn handle(session: &Session<'_>, id: u64, request: Request<'_>, out: &mut [u8]) -> usize {
    let buf = scratch();
    let reply = match request {
        Request::Health => Reply::Health(health()),
        Request::Reseed(r) => {
            reseed(r.generation, r.wall_clock_ns, r.entropy);
            Reply::Reseeded {
                generation: r.generation,
            }
        }
        Request::Exec(e) => match exec(e.argv, buf) {
            ExecOutcome::Ok { len, truncated } => Reply::Exec(ExecResult {
                exit_code: 0,
                stdout_truncated: truncated,
                stderr_truncated: false,
                stdout: &buf[..len],
                stderr: &[],
            }),
            ExecOutcome::Err(code, message) => Reply::Error(ErrorReply { code, message }),
        },
        other => Reply::Unsupported {
            kind: other.kind().as_u8(),
        },
    };
    session.reply_or_error(id, &reply, out).unwrap_or(0)
}
