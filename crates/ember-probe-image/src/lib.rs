//! The ember-probe guest, built and located for the host side.
//!
//! `build.rs` compiles `guest/ember-probe` for `x86_64-unknown-none` (own target dir under
//! `OUT_DIR`, so it never fights the host build for a lock) and bakes the ELF's path in:
//! [`probe_elf_path`]. Tests, benches and the CLI depend on this crate and get a fresh guest
//! automatically; editing the guest's sources or linker script rebuilds it.
//!
//! This crate also owns the probe's *output contract*, so nobody re-parses serial text by hand:
//! - banner: `ember-probe: boot_id=<16 hex> counter_gpa=0x<hex>` ([`parse_banner`]);
//! - `ember-probe: ticking hz=<n> report=<n>` once the timer runs;
//! - `ember-probe: count=<n>` every `report` ticks ([`parse_count_line`]);
//! - `ember-probe: rx=<bytes>` echoing console input (COM1 receive interrupt);
//! - `ember-probe: ctrl-alt-del, resetting` before it resets on Ctrl+Alt+Del;
//! - the state page at [`STATE_GPA`]: magic `EMBRPRB1`, then the counter (u64 at
//!   [`COUNTER_GPA`]), boot id, hz, report ([`ProbeState::from_page`]).
//!
//! Reading the counter: *live*, from the latest `count=` line on the serial console; *in a
//! snapshot*, from the memory file at offset [`COUNTER_GPA`] (guest RAM below 3 GiB is stored
//! at file offset == guest-physical address) — see [`counter_from_mem_file`].
//!
//! Command-line knobs (append to `boot_args`): `ember.hz=<1..10000>` (timer rate, default 100),
//! `ember.report=<ticks>` (count line period, 0 = never, default 50).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Guest-physical address of the probe's state page.
pub const STATE_GPA: u64 = 0x1f_0000;
/// Guest-physical address of the probe's tick counter (a little-endian u64).
pub const COUNTER_GPA: u64 = STATE_GPA + 8;
/// Magic at the start of the state page once the probe has booted.
pub const STATE_MAGIC: [u8; 8] = *b"EMBRPRB1";
/// Smallest guest memory the probe runs in.
pub const MIN_MEM_MIB: u32 = 4;

/// Path of the built probe ELF.
pub fn probe_elf_path() -> &'static Path {
    Path::new(env!("EMBER_PROBE_ELF"))
}

/// The banner line's contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Banner {
    /// Random per boot (survives snapshot/restore: a restored copy shows its source's id).
    pub boot_id: u64,
    /// Where the counter lives in guest-physical memory.
    pub counter_gpa: u64,
}

/// Parses `ember-probe: boot_id=<hex> counter_gpa=0x<hex>`.
pub fn parse_banner(line: &str) -> Option<Banner> {
    let rest = line.trim().strip_prefix("ember-probe: boot_id=")?;
    let (id, rest) = rest.split_once(' ')?;
    let gpa = rest.strip_prefix("counter_gpa=0x")?;
    Some(Banner {
        boot_id: u64::from_str_radix(id, 16).ok()?,
        counter_gpa: u64::from_str_radix(gpa.trim(), 16).ok()?,
    })
}

/// Parses `ember-probe: count=<n>`.
pub fn parse_count_line(line: &str) -> Option<u64> {
    line.trim()
        .strip_prefix("ember-probe: count=")?
        .parse()
        .ok()
}

/// The decoded state page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeState {
    /// Timer ticks handled so far.
    pub counter: u64,
    /// The boot id printed in the banner.
    pub boot_id: u64,
    /// Timer rate.
    pub hz: u64,
    /// Count line period in ticks.
    pub report: u64,
}

impl ProbeState {
    /// Decodes the first 40 bytes of the state page; `None` if the probe has not booted.
    pub fn from_page(page: &[u8]) -> Option<ProbeState> {
        if page.len() < 40 || page[..8] != STATE_MAGIC {
            return None;
        }
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&page[i * 8..i * 8 + 8]);
            u64::from_le_bytes(b)
        };
        Some(ProbeState {
            counter: word(1),
            boot_id: word(2),
            hz: word(3),
            report: word(4),
        })
    }
}

/// Reads the probe's state from a snapshot memory file (file offset == guest-physical address
/// for guest RAM below 3 GiB).
pub fn state_from_mem_file(path: &Path) -> io::Result<Option<ProbeState>> {
    let file = File::open(path)?;
    let mut page = [0u8; 40];
    file.read_exact_at(&mut page, STATE_GPA)?;
    Ok(ProbeState::from_page(&page))
}

/// Reads the probe's counter from a snapshot memory file.
pub fn counter_from_mem_file(path: &Path) -> io::Result<u64> {
    state_from_mem_file(path)?
        .map(|s| s.counter)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "probe state page not found"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elf_is_built_and_static() {
        let bytes = std::fs::read(probe_elf_path()).unwrap();
        assert_eq!(&bytes[..4], b"\x7fELF");
        // ET_EXEC (not a PIE) with the entry at 1 MiB.
        assert_eq!(u16::from_le_bytes([bytes[16], bytes[17]]), 2);
        let entry = u64::from_le_bytes(bytes[24..32].try_into().unwrap());
        assert_eq!(entry, 0x10_0000);
    }

    #[test]
    fn parses_output_lines() {
        let b =
            parse_banner("ember-probe: boot_id=00000000deadbeef counter_gpa=0x1f0008\n").unwrap();
        assert_eq!(
            b,
            Banner {
                boot_id: 0xdead_beef,
                counter_gpa: COUNTER_GPA
            }
        );
        assert_eq!(parse_count_line("ember-probe: count=42"), Some(42));
        assert_eq!(parse_count_line("ember-probe: count=x"), None);
        assert_eq!(parse_banner("hello"), None);
    }

    #[test]
    fn decodes_state_page() {
        let mut page = vec![0u8; 64];
        assert_eq!(ProbeState::from_page(&page), None);
        page[..8].copy_from_slice(&STATE_MAGIC);
        page[8..16].copy_from_slice(&7u64.to_le_bytes());
        page[24..32].copy_from_slice(&100u64.to_le_bytes());
        let s = ProbeState::from_page(&page).unwrap();
        assert_eq!((s.counter, s.hz), (7, 100));
    }
}
