//! Shared helpers for ember-store's integration tests: sample records (ember-core's types), a
//! deterministic "generation" sandbox whose every field can be checked against one number (to
//! spot torn records), re-executing the test binary as a child process, and file fingerprints.
//!
//! Each test binary uses only some of these, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ember_core::{
    Sandbox, SandboxId, SandboxStart, SandboxState, SnapshotId, SnapshotInfo, StackKey, Template,
    TemplateName, TemplateSpec, TemplateState,
};
use ember_store::{Durability, Ipv4Subnet, NetworkConfig, OpenCheck, Store, StoreConfig, Stored};

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

/// A fixed point in time the sample records use.
pub fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(1_700_000_000_000)
}

/// The stack of template `name` (version v1, 1 vCPU, 128 MiB).
pub fn stack(name: &str) -> StackKey {
    StackKey::new(name, "v1", 1, 128).unwrap()
}

/// A snapshot's catalog entry with derived paths.
pub fn snapshot(id: &str, stack: Option<StackKey>) -> SnapshotInfo {
    SnapshotInfo {
        snapshot_id: SnapshotId::new(id).unwrap(),
        stack,
        state_path: format!("/var/lib/ember/snapshots/{id}/state").into(),
        mem_path: format!("/var/lib/ember/snapshots/{id}/mem").into(),
        provider: "ember-vmm".into(),
        vmm_version: "0.1.0".into(),
        vcpu_count: 1,
        mem_size_mib: 128,
        state_len: 20_480,
        state_crc32: 0x0bad_c0de,
        mem_len: 128 << 20,
        vsock_cid: Some(3),
        network_interfaces: vec![],
        disks: vec![],
        source_vm: None,
        created_at: t0(),
    }
}

/// A ready probe template `name` whose snapshot is `snapshot`.
pub fn template(name: &str, snapshot: &str) -> Template {
    Template {
        name: TemplateName::new(name).unwrap(),
        spec: TemplateSpec::probe(),
        stack: stack(name),
        state: TemplateState::Ready,
        snapshot: Some(SnapshotId::new(snapshot).unwrap()),
        error: None,
        build: None,
        created_at: t0(),
    }
}

/// Stores template `name` and its snapshot `tpl-<name>` (if not stored yet).
pub fn seed_template(store: &Store, name: &str) {
    let snap = format!("tpl-{name}");
    store
        .write::<_, ember_store::StoreError>("seed template", Durability::Full, |tx| {
            if tx.get::<Template>(name)?.is_none() {
                tx.insert(&snapshot(&snap, Some(stack(name))))?;
                tx.insert(&template(name, &snap))?;
            }
            Ok(())
        })
        .unwrap();
}

/// A running sandbox of template `template`.
pub fn sandbox(id: &str, template: &str) -> Sandbox {
    Sandbox {
        id: SandboxId::new(id).unwrap(),
        template: TemplateName::new(template).unwrap(),
        stack: stack(template),
        state: SandboxState::Running,
        labels: BTreeMap::new(),
        env: BTreeMap::new(),
        timeout_secs: None,
        deadline: None,
        created_at: t0(),
        start: None,
        end: None,
        on_timeout: ember_core::OnTimeout::Kill,
        saved: None,
        access_token: None,
        network: None,
    }
}

/// The template the generation sandboxes belong to.
pub const GEN_TEMPLATE: &str = "gen";

/// The sandbox whose every field is derived from `(id, generation)`.
///
/// Long enough (a ~1.5 KiB environment value) that a record spans more than a few sectors, so
/// a torn write would show up as fields from two generations.
pub fn generation_sandbox(id: &str, generation: u64) -> Sandbox {
    let mut s = sandbox(id, GEN_TEMPLATE);
    s.state = if generation.is_multiple_of(2) {
        SandboxState::Running
    } else {
        SandboxState::Paused
    };
    s.labels = BTreeMap::from([
        ("gen".to_string(), generation.to_string()),
        ("owner".to_string(), format!("tenant-{id}")),
    ]);
    s.env = BTreeMap::from([(
        "PAYLOAD".to_string(),
        format!("gen={generation} id={id} {}", "x".repeat(1500)),
    )]);
    s.timeout_secs = Some(1 + generation % 1000);
    s.deadline = Some(t0() + Duration::from_secs(generation));
    s.start = Some(SandboxStart {
        warm: generation.is_multiple_of(3),
        latency_us: generation,
    });
    s
}

/// The generation of a record written with [`generation_sandbox`], after checking that every
/// field agrees with it and with the record's revision (an insert is generation 0, revision 1;
/// each update adds one to both).
pub fn check_generation(stored: &Stored<Sandbox>) -> Result<u64, String> {
    let r = &stored.record;
    let generation = r.start.map(|s| s.latency_us).unwrap_or(u64::MAX);
    let want = generation_sandbox(r.id.as_str(), generation);
    if *r != want {
        return Err(format!(
            "sandbox {} is torn or wrong: fields disagree with generation {generation}:\n got {r:?}\nwant {want:?}",
            r.id
        ));
    }
    if stored.revision != generation + 1 {
        return Err(format!(
            "sandbox {}: revision {} does not follow generation {generation}",
            r.id, stored.revision
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
