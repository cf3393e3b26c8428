//! Reseed: the host's entropy into the kernel's pool and the host's time onto the wall clock.
//!
//! Owns the two privileged calls a clone needs before a tenant gets it: `ioctl(RNDADDENTROPY)`
//! on `/dev/random` (the bytes are mixed in and credited, so clones of one snapshot diverge at
//! once) and `clock_settime(CLOCK_REALTIME)` (a restored guest's clock stands where the
//! snapshot was taken). A clock already within [`CLOCK_TOLERANCE`] of the host's is left alone:
//! the request's own transit would otherwise step it back. It does not track generations (the
//! agent does).
#![allow(unsafe_code)] // the RNDADDENTROPY ioctl: no safe wrapper exists.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

use nix::sys::time::TimeSpec;
use nix::time::{ClockId, clock_gettime, clock_settime};

/// A wall clock closer than this to the host's is not stepped.
pub const CLOCK_TOLERANCE: Duration = Duration::from_millis(1);

/// `RNDADDENTROPY`: `_IOW('R', 0x03, int[2])`.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;

/// What a Reseed did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Bytes mixed into the kernel's pool.
    pub entropy_bytes: usize,
    /// How far the clock was stepped (host minus guest, nanoseconds; 0: left alone).
    pub clock_step_ns: i128,
}

/// Mixes `entropy` into the pool behind `random` (`/dev/random`), crediting 8 bits a byte.
pub fn add_entropy(random: &Path, entropy: &[u8]) -> io::Result<()> {
    let file = OpenOptions::new().write(true).open(random)?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let words = entropy.len().div_ceil(4);
    let mut info = vec![0u32; 2 + words];
    let bits = i32::try_from(entropy.len() * 8).unwrap_or(i32::MAX);
    let size = i32::try_from(entropy.len()).unwrap_or(i32::MAX);
    if let Some(head) = info.get_mut(..2) {
        head.copy_from_slice(&[bits as u32, size as u32]);
    }
    for (i, chunk) in entropy.chunks(4).enumerate() {
        let mut word = [0u8; 4];
        word.get_mut(..chunk.len())
            .unwrap_or_default()
            .copy_from_slice(chunk);
        if let Some(slot) = info.get_mut(2 + i) {
            *slot = u32::from_ne_bytes(word);
        }
    }
    // SAFETY: `info` is a valid rand_pool_info: a header saying `size` bytes follow, and at
    // least that many bytes after it; the kernel only reads it during the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), RNDADDENTROPY, info.as_ptr()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Steps the wall clock to `wall_clock_ns` (since the epoch) unless it is already within the
/// tolerance; returns the step (0 when left alone).
pub fn set_clock(wall_clock_ns: u64) -> io::Result<i128> {
    let now = clock_gettime(ClockId::CLOCK_REALTIME)?;
    let now_ns = i128::from(now.tv_sec()) * 1_000_000_000 + i128::from(now.tv_nsec());
    let step = i128::from(wall_clock_ns) - now_ns;
    if step.unsigned_abs() < CLOCK_TOLERANCE.as_nanos() {
        return Ok(0);
    }
    step_clock(wall_clock_ns)?;
    Ok(step)
}

/// Sets the wall clock to `wall_clock_ns` since the epoch.
pub fn step_clock(wall_clock_ns: u64) -> io::Result<()> {
    let spec = TimeSpec::from_duration(Duration::from_nanos(wall_clock_ns));
    clock_settime(ClockId::CLOCK_REALTIME, spec)?;
    Ok(())
}

/// Both, entropy first; a failure of either fails the Reseed (a clone must not go on
/// half-reseeded).
pub fn reseed(random: &Path, entropy: &[u8], wall_clock_ns: u64) -> io::Result<Applied> {
    add_entropy(random, entropy)
        .map_err(|e| io::Error::new(e.kind(), format!("adding entropy: {e}")))?;
    let clock_step_ns = set_clock(wall_clock_ns)
        .map_err(|e| io::Error::new(e.kind(), format!("setting the clock: {e}")))?;
    Ok(Applied {
        entropy_bytes: entropy.len(),
        clock_step_ns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[test]
    fn entropy_goes_into_the_kernel_pool() {
        if !root() {
            return; // RNDADDENTROPY needs CAP_SYS_ADMIN
        }
        add_entropy(Path::new("/dev/random"), &[0x5a; 33]).unwrap();
        // Not a random device: the ioctl is refused, and that is an error.
        let not_random = tempfile::NamedTempFile::new().unwrap();
        assert!(add_entropy(not_random.path(), &[1; 16]).is_err());
    }

    #[test]
    fn the_clock_is_stepped_to_the_given_time() {
        if !root() {
            return; // clock_settime needs CAP_SYS_TIME
        }
        // To the current time ± 0: the call is made and nothing moves.
        let now = clock_gettime(ClockId::CLOCK_REALTIME).unwrap();
        let ns = u64::try_from(now.tv_sec()).unwrap() * 1_000_000_000
            + u64::try_from(now.tv_nsec()).unwrap();
        step_clock(ns).unwrap();
        let after = clock_gettime(ClockId::CLOCK_REALTIME).unwrap();
        assert!((after.tv_sec() - now.tv_sec()).abs() <= 1);
        // Within the tolerance: left alone.
        let now = clock_gettime(ClockId::CLOCK_REALTIME).unwrap();
        let ns = u64::try_from(now.tv_sec()).unwrap() * 1_000_000_000
            + u64::try_from(now.tv_nsec()).unwrap();
        assert_eq!(set_clock(ns).unwrap(), 0);
    }
}
