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
//! Command-line knobs (append to `boot_args`): `ember.hz=<0..10000>` (timer rate, default 100;
//! 0 = no timer: tickless, an idle VM costs no host CPU, counter and uptime stay 0),
//! `ember.report=<ticks>` (count line period, 0 = never, default 50), and for a VM with a
//! network interface `ember.ip=A.B.C.D/PREFIX` and `ember.gw=A.B.C.D` (default 172.16.0.2/30
//! via 172.16.0.1, the address every sandbox's template uses).
//!
//! # The network
//! With a network interface configured (`PUT /network-interfaces/..`, a TAP on the host), the
//! probe runs an IP stack (smoltcp) on the virtio-net device, in the same ring-3 agent: ARP,
//! ping, TCP echo on port 7 (4 connections at once), UDP echo on 7, TCP discard on 9 (host ->
//! guest throughput), a TCP source on 19 (guest -> host throughput). A snapshot keeps it all
//! (same IP and MAC in every clone; the ARP cache is forgotten at the snapshot, so a clone
//! behind another TAP finds its gateway's MAC anew). Without a net device it costs nothing.
//!
//! # The agent
//! With a vsock device configured (`PUT /vsock`), the probe runs the ember agent protocol
//! (`ember-agent-proto`) on vsock port [`AGENT_PORT`]; reach it from the host with
//! `ember_agent_proto::AgentClient::connect(uds_path, AGENT_PORT, timeout)`. It finds the
//! device through the `virtio_mmio.device=` entries ember-vmm appends to the command line.
//! - Hello, Ping; Health: uptime (`counter * 1e9 / hz`: continues across snapshot/restore),
//!   boot id ([`health_boot_id`] of the banner's id), generation (0 until a Reseed);
//! - Reseed: stores generation, wall clock and the entropy's digest (state page);
//! - Exec built-ins: `echo <args..>` ([`echo_output`]), `counter` (tick counter, decimal,
//!   then `\n`), `sha256 <n>` ([`sha256_output`]; n <= 64 MiB), `exit <n>` (exit code n,
//!   0..=255, no output), `stderr <args..>` (like `echo`, on stderr), `cat <path>` (a file's
//!   bytes, cut to 8 KiB), `pwd`, `whoami`; each also through `sh`/`bash -c "<one built-in>"`
//!   (word-split, no shell syntax); an unknown command or file: Error NOT_FOUND, bad
//!   arguments: INVALID_ARGUMENT; ExecIn runs them in a directory (`cwd`) as `root` or
//!   `user`; `net-connect IP PORT [TIMEOUT_MS]` (exit 0, stdout `connected IP:PORT\n`;
//!   else exit 1, stderr `refused\n`, `timed out\n` or `unreachable\n`; default 2000 ms),
//!   `net-udp IP PORT [TIMEOUT_MS]` (the reply datagram on stdout, or exit 1 `timed out\n`),
//!   `net-info` (`ip=A.B.C.D/P gw=A.B.C.D mac=..\n`) — the first two answer once the network
//!   has, while the agent serves other connections; `memtouch <MiB>` (writes a byte in every
//!   page of that much guest RAM from 4 MiB up, so the VMM really holds it: stdout
//!   `touched <MiB> MiB\n`; more than the guest has, up to 1 GiB: exit 1, stderr
//!   `memtouch: only <n> MiB above 4 MiB\n`);
//! - files: a RAM tree of up to 32 entries (directories, and 8 files of up to 64 KiB), paths
//!   up to 255 bytes, behind PutFile (creating missing parents), GetFile, Stat, ListDir,
//!   MakeDir, Remove and Rename, with POSIX-like errors (NOT_FOUND, ALREADY_EXISTS,
//!   NOT_A_DIRECTORY, IS_A_DIRECTORY, NOT_EMPTY, TOO_LARGE); kept in guest memory, so in
//!   snapshots too. Shutdown: Unsupported;
//! - up to 48 connections at once, request frames up to 8 KiB;
//! - once at boot, a guest-initiated connection to host port [`ANNOUNCE_PORT`] (the VMM
//!   connects it to `<uds_path>_53`) carrying `ember-probe: ready boot_id=<16 hex>\n`
//!   ([`parse_ready_line`]); with nothing listening there, the VMM resets it and the probe
//!   carries on.
//! - All of it runs in guest ring 3 (guest ring 0 is emulated, ~1000x slower, on this
//!   project's KVM); the vCPU idles in `hlt` between interrupts.

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
/// The vsock port the probe's agent listens on.
pub const AGENT_PORT: u32 = 52;
/// The host vsock port the probe connects to once at boot (`<uds_path>_53` on the host).
pub const ANNOUNCE_PORT: u32 = 53;
/// Largest request frame the probe's agent accepts (its announced `max_frame_len`).
pub const AGENT_MAX_FRAME: usize = 8192;

/// The 16-byte boot id Health reports for a probe whose banner showed `banner_boot_id`:
/// the id, then `splitmix64(id)`, both little-endian.
pub fn health_boot_id(banner_boot_id: u64) -> [u8; 16] {
    let mut z = banner_boot_id.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&banner_boot_id.to_le_bytes());
    out[8..].copy_from_slice(&z.to_le_bytes());
    out
}

/// What `echo <args..>` prints: the arguments joined by single spaces, then `\n`.
pub fn echo_output(args: &[&str]) -> Vec<u8> {
    let mut out = args.join(" ").into_bytes();
    out.push(b'\n');
    out
}

/// The bytes `sha256 <n>` hashes: byte `i` is `i % 251`.
pub fn sha256_input(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// What `sha256 <n>` prints, given the digest of [`sha256_input`]`(n)`: lowercase hex, then
/// `\n`.
pub fn sha256_output(digest: &[u8]) -> Vec<u8> {
    let mut out: Vec<u8> = digest
        .iter()
        .flat_map(|b| format!("{b:02x}").into_bytes())
        .collect();
    out.push(b'\n');
    out
}

/// Parses `ember-probe: ready boot_id=<16 hex>` (what the probe sends to [`ANNOUNCE_PORT`]).
pub fn parse_ready_line(line: &str) -> Option<u64> {
    let hex = line.trim().strip_prefix("ember-probe: ready boot_id=")?;
    u64::from_str_radix(hex, 16).ok()
}

/// Path of the built probe ELF.
pub fn probe_elf_path() -> &'static Path {
    Path::new(env!("EMBER_PROBE_ELF"))
}

/// The probe guest ELF itself, baked into the binary: what a deployed daemon writes into its
/// state directory, where the build tree (and [`probe_elf_path`]) no longer exists.
pub fn probe_elf_bytes() -> &'static [u8] {
    include_bytes!(env!("EMBER_PROBE_ELF"))
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
    /// The generation set by the agent's last Reseed (0 before any).
    pub generation: u64,
}

impl ProbeState {
    /// Decodes the first 64 bytes of the state page; `None` if the probe has not booted.
    /// Layout (u64 each): magic, counter, boot id, hz, report, keyboard flag, rx flag,
    /// generation; then wall clock ns, uptime at the last reseed, and a 32-byte seed.
    pub fn from_page(page: &[u8]) -> Option<ProbeState> {
        if page.len() < 64 || page[..8] != STATE_MAGIC {
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
            generation: word(7),
        })
    }
}

/// Reads the probe's state from a snapshot memory file (file offset == guest-physical address
/// for guest RAM below 3 GiB).
pub fn state_from_mem_file(path: &Path) -> io::Result<Option<ProbeState>> {
    let file = File::open(path)?;
    let mut page = [0u8; 64];
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
        assert_eq!(
            parse_ready_line("ember-probe: ready boot_id=00000000000000ff\n"),
            Some(255)
        );
        assert_eq!(echo_output(&["a", "b"]), b"a b\n");
        assert_eq!(echo_output(&[]), b"\n");
        assert_eq!(sha256_output(&[0xab, 0x01]), b"ab01\n");
        assert_eq!(sha256_input(253)[252], 1);
        assert_eq!(&health_boot_id(7)[..8], &7u64.to_le_bytes());
    }

    #[test]
    fn decodes_state_page() {
        let mut page = vec![0u8; 64];
        assert_eq!(ProbeState::from_page(&page), None);
        page[56..64].copy_from_slice(&9u64.to_le_bytes());
        page[..8].copy_from_slice(&STATE_MAGIC);
        page[8..16].copy_from_slice(&7u64.to_le_bytes());
        page[24..32].copy_from_slice(&100u64.to_le_bytes());
        let s = ProbeState::from_page(&page).unwrap();
        assert_eq!((s.counter, s.hz, s.generation), (7, 100, 9));
    }
}
