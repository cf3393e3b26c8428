//! Shared helpers for ember-store's integration tests: sample records, a deterministic
//! "generation" payload whose every field can be checked against one number (to spot torn
//! records), re-executing the test binary as a child process, and file fingerprints.
//!
//! Each test binary uses only some of these, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use ember_core::{SnapshotId, StackKey, VmId};
use ember_store::{
    BlockDevice, Ipv4Subnet, Machine, MachineName, MachineRecord, MachineState, NetworkConfig,
    OpenCheck, ProcessIdentity, SnapshotRecord, StoreConfig,
};

/// A store configuration with a /22 subnet and the default other ranges.
pub fn config() -> StoreConfig {
    StoreConfig {
        network: NetworkConfig {
            subnet: "10.77.0.0/22".parse::<Ipv4Subnet>().unwrap(),
            gateway: "10.77.0.1".parse().unwrap(),
            first_cid: 3,
            last_cid: 5000,
            tap_prefix: "tst".into(),
            last_tap_index: 5000,
        },
        busy_timeout: Duration::from_secs(30),
        open_check: OpenCheck::Quick,
    }
}

/// A validated machine name.
pub fn name(s: &str) -> MachineName {
    MachineName::new(s).unwrap()
}

/// A plain machine in state `Created`.
pub fn machine(vm: &str) -> Machine {
    let mut m = Machine::new(VmId::new(vm).unwrap(), 2, 256);
    m.kernel = Some("/var/lib/ember/vmlinux".into());
    m.cmdline = Some("console=ttyS0 reboot=k panic=1".into());
    m
}

/// A snapshot record with derived paths and a fixed checksum.
pub fn snapshot(id: &str, stack: Option<StackKey>, parent: Option<&str>) -> SnapshotRecord {
    SnapshotRecord {
        id: SnapshotId::new(id).unwrap(),
        stack,
        state_path: format!("/var/lib/ember/snap/{id}.state").into(),
        mem_path: format!("/var/lib/ember/snap/{id}.mem").into(),
        state_size: 20_480,
        mem_size: 128 << 20,
        checksum: "crc32:0badc0de".into(),
        created_at: std::time::UNIX_EPOCH + Duration::from_millis(1_700_000_000_000),
        parent: parent.map(|p| SnapshotId::new(p).unwrap()),
    }
}

/// The boot id every generated identity carries (a fixed, fake one).
pub const FAKE_BOOT_ID: &str = "5f1c0b3e-0000-4000-8000-00000000e3b0";

/// The machine whose every field is derived from `(name, generation)`.
///
/// Long enough (a ~1.5 KiB command line) that a record spans more than a few sectors, so a torn
/// write would show up as fields from two generations.
pub fn generation_machine(name: &str, generation: u64) -> Machine {
    let states = MachineState::ALL;
    let state = states[(generation % states.len() as u64) as usize];
    let mut m = Machine::new(
        VmId::new(format!("vm-{name}")).unwrap(),
        1 + (generation % 8) as u8,
        128 + (generation % 512) as u32,
    );
    m.state = state;
    m.disk_gib = generation;
    m.kernel = Some(format!("/k/{name}/{generation}").into());
    m.cmdline = Some(format!("gen={generation} name={name} {}", "x".repeat(1500)));
    m.block_devices = vec![BlockDevice {
        drive_id: "rootfs".into(),
        path: format!("/d/{name}/{generation}.img").into(),
        read_only: generation.is_multiple_of(2),
    }];
    m.distro = Some("debian".into());
    m.distro_version = Some(format!("12.{generation}"));
    m.tenant = Some(format!("tenant-{generation}"));
    m.vmm = Some(ProcessIdentity {
        pid: 1000 + (generation % 100_000) as u32,
        start_time: generation * 7,
        boot_id: FAKE_BOOT_ID.into(),
    });
    m.api_socket = Some(format!("/run/ember/{name}/api.{generation}.sock").into());
    m.console_log = Some(format!("/run/ember/{name}/console.{generation}.log").into());
    m.vsock_uds = Some(format!("/run/ember/{name}/vsock.{generation}").into());
    m.run_dir = Some(format!("/run/ember/{name}").into());
    m
}

/// The generation of a record written with [`generation_machine`], after checking that every
/// field agrees with it and with the record's revision (a save is generation 0, revision 1; each
/// update adds one to both).
pub fn check_generation(record: &MachineRecord) -> Result<u64, String> {
    let generation = record.machine.disk_gib;
    let want = generation_machine(record.name.as_str(), generation);
    if record.machine != want {
        return Err(format!(
            "machine {} is torn or wrong: fields disagree with generation {generation}:\n got {:?}\nwant {:?}",
            record.name, record.machine, want
        ));
    }
    if record.revision != generation + 1 {
        return Err(format!(
            "machine {}: revision {} does not follow generation {generation}",
            record.name, record.revision
        ));
    }
    Ok(generation)
}

/// A command re-executing this test binary to run only `test` with `--nocapture`.
pub fn child(test: &str) -> Command {
    child_from(&std::env::current_exe().unwrap(), test)
}

/// Like [`child`], running a copy of this test binary at `exe`.
pub fn child_from(exe: &Path, test: &str) -> Command {
    let mut cmd = Command::new(exe);
    cmd.args(["--exact", test, "--nocapture", "--test-threads=1", "-q"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// The lines of a child's output that start with `@`, without the `@`.
pub fn tagged_lines(stdout: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| l.strip_prefix('@').map(str::to_string))
        .collect()
}

/// The bytes of a file, to compare before and after an operation that must not modify it.
pub fn fingerprint(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

/// A fresh temporary directory and a database path inside it.
pub fn temp_db() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ember.db");
    (dir, path)
}

/// A small deterministic random number generator (SplitMix64) for test schedules.
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}
