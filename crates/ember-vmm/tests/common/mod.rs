//! Helpers shared by ember-vmm's integration tests: spawn the real binary on real KVM, boot
//! the probe guest, read its counter, take and load snapshots.
#![allow(
    dead_code,
    unused_imports,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use ember_test_support::{ApiClient, DEFAULT_TIMEOUT, HttpResponse, VmmProcess, wait_for};

/// The ember-vmm binary under test.
pub fn vmm_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ember-vmm"))
}

/// The probe guest ELF.
pub fn probe() -> &'static Path {
    ember_probe_image::probe_elf_path()
}

/// A temporary directory for one test.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("ember-vmm-test")
        .tempdir()
        .unwrap()
}

/// Spawns ember-vmm with its socket in `dir`.
pub fn spawn(dir: &Path, name: &str, extra: &[&str]) -> VmmProcess {
    VmmProcess::spawn(vmm_bin(), &dir.join(format!("{name}.sock")), extra)
}

/// Spawns ember-vmm with its socket in `dir` and a stdin pipe (console input).
pub fn spawn_with_stdin(dir: &Path, name: &str, extra: &[&str]) -> VmmProcess {
    VmmProcess::spawn_with_stdin(vmm_bin(), &dir.join(format!("{name}.sock")), extra)
}

/// The boot-source body for the probe.
pub fn boot_source_json(boot_args: &str) -> String {
    serde_json::json!({ "kernel_image_path": probe(), "boot_args": boot_args }).to_string()
}

/// Configures and starts the probe through the API.
pub fn boot_via_api(client: &mut ApiClient, vcpus: u8, mem_mib: u32, boot_args: &str) {
    let r = client.put("/boot-source", &boot_source_json(boot_args));
    assert_eq!(r.status, 204, "{r:?}");
    let r = client.put(
        "/machine-config",
        &format!(r#"{{"vcpu_count": {vcpus}, "mem_size_mib": {mem_mib}}}"#),
    );
    assert_eq!(r.status, 204, "{r:?}");
    let r = client.put("/actions", r#"{"action_type": "InstanceStart"}"#);
    assert_eq!(r.status, 204, "{r:?}");
}

/// Waits for the probe's banner and returns it.
pub fn wait_banner(vmm: &VmmProcess) -> ember_probe_image::Banner {
    let line = vmm.wait_for_line(DEFAULT_TIMEOUT, "the probe banner", 0, |l| {
        ember_probe_image::parse_banner(l).is_some()
    });
    ember_probe_image::parse_banner(&line).unwrap()
}

/// Waits for a `count=` line with a value > `above` (looking at lines from `skip` on).
pub fn wait_count_above(vmm: &VmmProcess, above: u64, skip: usize) -> u64 {
    let line = vmm.wait_for_line(
        DEFAULT_TIMEOUT,
        &format!("a count line above {above}"),
        skip,
        |l| ember_probe_image::parse_count_line(l).is_some_and(|c| c > above),
    );
    ember_probe_image::parse_count_line(&line).unwrap()
}

/// The last count line printed so far (0 if none).
pub fn last_count(vmm: &VmmProcess) -> u64 {
    vmm.stdout_text()
        .lines()
        .filter_map(ember_probe_image::parse_count_line)
        .next_back()
        .unwrap_or(0)
}

/// Pauses the VM.
pub fn pause(client: &mut ApiClient) {
    let r = client.patch("/vm", r#"{"state": "Paused"}"#);
    assert_eq!(r.status, 204, "{r:?}");
}

/// Resumes the VM.
pub fn resume(client: &mut ApiClient) {
    let r = client.patch("/vm", r#"{"state": "Resumed"}"#);
    assert_eq!(r.status, 204, "{r:?}");
}

/// Snapshot file paths in `dir`.
pub fn snapshot_paths(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{name}.snap")),
        dir.join(format!("{name}.mem")),
    )
}

/// Creates a full snapshot (VM must be paused).
pub fn create_snapshot(client: &mut ApiClient, snap: &Path, mem: &Path) -> HttpResponse {
    client.put(
        "/snapshot/create",
        &serde_json::json!({ "snapshot_type": "Full", "snapshot_path": snap, "mem_file_path": mem }).to_string(),
    )
}

/// The body of a snapshot load request.
pub fn load_body(snap: &Path, mem: &Path, resume: bool) -> String {
    serde_json::json!({
        "snapshot_path": snap,
        "mem_backend": { "backend_type": "File", "backend_path": mem },
        "resume_vm": resume,
    })
    .to_string()
}

/// Boots a probe VM and snapshots it once its counter passed `min_count`; returns the
/// snapshot paths and the saved counter. The source VMM is killed.
pub fn make_snapshot(
    dir: &Path,
    name: &str,
    boot_args: &str,
    min_count: u64,
) -> (PathBuf, PathBuf, u64) {
    let vmm = spawn(dir, &format!("{name}-src"), &[]);
    let mut c = vmm.client();
    boot_via_api(&mut c, 1, 64, boot_args);
    wait_banner(&vmm);
    if min_count > 0 {
        wait_count_above(&vmm, min_count, 0);
    }
    pause(&mut c);
    let (snap, mem) = snapshot_paths(dir, name);
    let r = create_snapshot(&mut c, &snap, &mem);
    assert_eq!(r.status, 204, "{r:?}");
    let saved = ember_probe_image::counter_from_mem_file(&mem).unwrap();
    drop(vmm);
    (snap, mem, saved)
}

/// Like [`make_snapshot`] with a vsock device at `<dir>/<name>-src.vsock`, snapshotted once
/// its agent answered Health (as ember's template flow does).
pub fn make_vsock_snapshot(dir: &Path, name: &str, boot_args: &str) -> (PathBuf, PathBuf, u64) {
    let vmm = spawn(dir, &format!("{name}-src"), &[]);
    let uds = dir.join(format!("{name}-src.vsock"));
    let mut c = vmm.client();
    boot_with_vsock(&mut c, 64, boot_args, &uds);
    wait_banner(&vmm);
    agent(&uds).health().unwrap();
    pause(&mut c);
    let (snap, mem) = snapshot_paths(dir, name);
    let r = create_snapshot(&mut c, &snap, &mem);
    assert_eq!(r.status, 204, "{r:?}");
    let saved = ember_probe_image::counter_from_mem_file(&mem).unwrap();
    drop(vmm);
    (snap, mem, saved)
}

/// A load body that puts the restored VM's vsock socket at `uds`.
pub fn load_body_vsock(snap: &Path, mem: &Path, uds: &Path) -> String {
    serde_json::json!({
        "snapshot_path": snap,
        "mem_backend": { "backend_type": "File", "backend_path": mem },
        "resume_vm": true,
        "vsock_override": { "uds_path": uds },
    })
    .to_string()
}

/// A short pause used only where wall time must pass for the property under test (a paused
/// counter must not move); never used to wait for something to happen.
pub fn let_time_pass() {
    std::thread::sleep(Duration::from_millis(300));
}

/// The vsock body for `uds`.
pub fn vsock_json(cid: u32, uds: &Path) -> String {
    serde_json::json!({ "guest_cid": cid, "uds_path": uds }).to_string()
}

/// Configures a vsock device, then boots the probe through the API.
pub fn boot_with_vsock(client: &mut ApiClient, mem_mib: u32, boot_args: &str, uds: &Path) {
    let r = client.put("/vsock", &vsock_json(3, uds));
    assert_eq!(r.status, 204, "{r:?}");
    boot_via_api(client, 1, mem_mib, boot_args);
}

/// Connects to the probe's agent through the hybrid vsock socket, retrying until it listens.
pub fn agent(uds: &Path) -> ember_agent_proto::AgentClient {
    wait_for(DEFAULT_TIMEOUT, "the probe agent on vsock", || {
        ember_agent_proto::AgentClient::connect(
            uds,
            ember_probe_image::AGENT_PORT,
            Duration::from_secs(5),
        )
        .ok()
    })
}
