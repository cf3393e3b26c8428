//! Jailed VMMs (the provider's `jail` setting): every VMM the provider starts — spares, booted
//! VMs, restores — runs through ember-jailer. A template is booted and snapshotted jailed, its
//! clones are restored jailed and answer exec; each VMM runs under seccomp with
//! `no_new_privs`, as a non-root uid of its own, inside its own root where no host file can be
//! named, in its own cgroup; destroy and shutdown leave no jail root, mount or cgroup behind.
//! Detached, jailed VMMs outlive their provider and are adopted by the next one.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use ember_agent_proto::{AgentClient, Exec};
use ember_core::{
    SnapshotId, SnapshotRequest, VmOwner, VmProvider, VmQuery, VmSpec, VmStatus, VsockSpec,
};
use ember_runtime::jail::JailSettings;
use ember_runtime::{ProviderConfig, SpareConfig, VmmProvider};

const PORT: u32 = ember_probe_image::AGENT_PORT;

fn jail_settings() -> JailSettings {
    let mut s = JailSettings::new(ember_test_support::package_bin(
        "ember-jailer",
        "ember-jailer",
    ));
    s.limits.pids_max = Some(32);
    s
}

fn jailed_provider(dir: &Path, detached: bool, spares: usize) -> std::sync::Arc<VmmProvider> {
    let mut config = ProviderConfig::new(dir.join("root"), flavor(Kind::EmberVmm).unwrap());
    config.spares = SpareConfig {
        count: spares,
        ..SpareConfig::default()
    };
    config.detached = detached;
    config.jail = Some(jail_settings());
    config.timeouts.spare_wait = Duration::from_secs(60);
    std::sync::Arc::new(VmmProvider::new(config).unwrap())
}

fn agent(p: &VmmProvider, id: &ember_core::VmId) -> AgentClient {
    let path = p.vsock_path(id).unwrap();
    wait_for(DEFAULT_TIMEOUT, "the agent", || {
        let mut a = AgentClient::connect(&path, PORT, Duration::from_secs(2)).ok()?;
        a.health().ok()?;
        Some(a)
    })
}

/// The status lines of `/proc/<pid>/status` named `key`.
fn status_field(pid: u32, key: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

/// The ember-vmm process among `pid` and its children (tied mode watches the jailer).
fn vmm_pid(pid: u32) -> u32 {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    if comm.trim() == "ember-vmm" {
        return pid;
    }
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    children
        .split_whitespace()
        .filter_map(|c| c.parse::<u32>().ok())
        .find(|c| {
            std::fs::read_to_string(format!("/proc/{c}/comm"))
                .is_ok_and(|n| n.trim() == "ember-vmm")
        })
        .unwrap_or_else(|| panic!("no ember-vmm under process {pid}"))
}

/// Checks everything the jail promises about VMM `pid` whose slot directory is `slot_dir`.
fn assert_jailed(pid: u32, slot_dir: &Path) {
    // Seccomp 2 is set by ember-vmm's filters once the VM runs; the jailer's part is the rest.
    wait_for(DEFAULT_TIMEOUT, "the seccomp filter", || {
        (status_field(pid, "Seccomp") == "2").then_some(())
    });
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    let uids = status_field(pid, "Uid");
    assert!(uids.split_whitespace().all(|u| u != "0"), "uids {uids}");
    let caps = status_field(pid, "CapEff");
    assert_eq!(caps, "0000000000000000", "effective capabilities");
    assert_eq!(status_field(pid, "CapBnd"), "0000000000000000");
    // Its root is its own skeleton: the slot directory at its own path, the VMM binary, /dev,
    // its libraries — and no host file such as /etc/passwd or the test's own binary.
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    assert!(
        root.join(slot_dir.strip_prefix("/").unwrap())
            .join("api.sock")
            .exists()
    );
    assert!(root.join("ember-vmm").exists());
    assert!(root.join("dev/kvm").exists());
    assert!(
        !root.join("etc/passwd").exists(),
        "the host's /etc is visible"
    );
    let me = std::env::current_exe().unwrap();
    assert!(
        !root.join(me.strip_prefix("/").unwrap()).exists(),
        "the test binary is visible"
    );
    // Its own pid namespace (it is pid 1 there) and its own cgroup.
    let ns_pid = status_field(pid, "NSpid");
    assert_eq!(
        ns_pid.split_whitespace().last(),
        Some("1"),
        "NSpid {ns_pid}"
    );
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(cgroups.contains("/ember-"), "{cgroups}");
}

/// The cgroup directories of a provider (any controller) still present.
fn cgroups_left() -> Vec<PathBuf> {
    let mut left = Vec::new();
    for ctrl in ["pids", "memory", "cpu", "unified", ""] {
        let base = Path::new("/sys/fs/cgroup").join(ctrl);
        let Ok(entries) = std::fs::read_dir(&base) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("ember-") {
                left.extend(
                    std::fs::read_dir(e.path())
                        .into_iter()
                        .flatten()
                        .flatten()
                        .filter(|c| c.file_name().to_string_lossy().starts_with("slot"))
                        .map(|c| c.path()),
                );
            }
        }
    }
    left
}

fn mounts_under(dir: &Path) -> usize {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| Path::new(m).starts_with(dir))
        .count()
}

#[test]
fn jailed_vmms_boot_snapshot_restore_and_answer() {
    let dir = short_tempdir();
    let root = dir.path().join("root");
    let p = jailed_provider(dir.path(), false, 2);
    let src = vm("tpl");
    let mut spec = probe_spec("ember.hz=0 ember.report=0");
    spec.vsock = Some(VsockSpec {
        guest_cid: 3,
        uds_path: "/unused".into(),
    });
    p.create_with_spec(&src, &spec).unwrap();
    p.start(&src).unwrap();
    agent(&p, &src);
    let src_pid = vmm_pid(p.pid(&src).unwrap());
    assert_jailed(src_pid, &p.paths(&src).unwrap().slot.dir);
    p.pause(&src).unwrap();
    let snap = p
        .snapshot(
            &src,
            &SnapshotRequest {
                snapshot_id: SnapshotId::new("jailed").unwrap(),
                stack: None,
            },
        )
        .unwrap();
    p.destroy(&src).unwrap();
    // The files the jailed VMM wrote are root's again, readable by jailed VMMs only.
    let info = p.snapshot_info(&snap.snapshot_id).unwrap();
    let meta = std::fs::metadata(&info.mem_path).unwrap();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!(meta.uid(), 0);
    assert_eq!(meta.permissions().mode() & 0o777, 0o640);

    let mut pids = Vec::new();
    for i in 0..2 {
        let id = vm(&format!("clone-{i}"));
        p.create_with_spec(&id, &VmSpec::restore(snap.clone()))
            .unwrap();
        let mut a = agent(&p, &id);
        let out = a.exec(&Exec::new(&["echo", "jailed"])).unwrap();
        assert_eq!(out.stdout, b"jailed\n");
        let pid = vmm_pid(p.pid(&id).unwrap());
        assert_jailed(pid, &p.paths(&id).unwrap().slot.dir);
        pids.push(status_field(pid, "Uid"));
    }
    assert_ne!(pids[0], pids[1], "two VMMs with one uid");
    // A rename (the handoff) keeps it answering.
    p.rename(&vm("clone-0"), &vm("tenant")).unwrap();
    agent(&p, &vm("tenant"));
    p.destroy(&vm("tenant")).unwrap();
    wait_for(DEFAULT_TIMEOUT, "the destroyed VM's jail to go", || {
        (std::fs::read_dir(root.join("jails")).unwrap().count() == 3).then_some(())
    });
    shutdown_and_check(&p);
    assert_eq!(
        mounts_under(&root),
        0,
        "mounts left under {}",
        root.display()
    );
    let left = cgroups_left();
    assert!(
        left.iter()
            .all(|c| !c.to_string_lossy().contains(&format!("{}", root.display()))),
        "{left:?}"
    );
}

#[test]
fn jailed_detached_vmms_outlive_their_provider_and_are_adopted() {
    let dir = short_tempdir();
    let root = dir.path().join("root");
    let (record, info, vmm) = {
        let p = jailed_provider(dir.path(), true, 1);
        let src = vm("dsrc");
        let mut spec = probe_spec("ember.hz=0 ember.report=0");
        spec.vsock = Some(VsockSpec {
            guest_cid: 3,
            uds_path: "/unused".into(),
        });
        p.create_with_spec(&src, &spec).unwrap();
        p.start(&src).unwrap();
        agent(&p, &src);
        p.pause(&src).unwrap();
        let snap = p
            .snapshot(
                &src,
                &SnapshotRequest {
                    snapshot_id: SnapshotId::new("kept").unwrap(),
                    stack: None,
                },
            )
            .unwrap();
        p.destroy(&src).unwrap();
        let id = vm("sandbox");
        p.create_with_spec(&id, &VmSpec::restore(snap.clone()))
            .unwrap();
        agent(&p, &id);
        // Detached: the watched process is the VMM itself.
        let pid = p.pid(&id).unwrap();
        assert_eq!(vmm_pid(pid), pid);
        assert_jailed(pid, &p.paths(&id).unwrap().slot.dir);
        let record = p.vm_record(&id, VmOwner::Sandbox).unwrap();
        let info = p.snapshot_info(&snap.snapshot_id).unwrap();
        p.release();
        (record, info, pid)
    };
    std::thread::sleep(Duration::from_millis(100));
    assert!(alive(vmm), "the jailed VMM died with its detached provider");

    let p = jailed_provider(dir.path(), true, 1);
    p.register_snapshot(info).unwrap();
    let view = p.adopt(&record).unwrap();
    assert_eq!(view.status, VmStatus::Running);
    let mut a = agent(&p, &record.id);
    assert_eq!(
        a.exec(&Exec::new(&["echo", "adopted"])).unwrap().stdout,
        b"adopted\n"
    );
    // release() killed the old provider's spares; nothing unrecorded is left to sweep.
    let report = p.sweep();
    assert!(report.killed.is_empty(), "{report:?}");
    p.destroy(&record.id).unwrap();
    wait_for(DEFAULT_TIMEOUT, "the adopted VMM's end", || {
        (!alive(vmm)).then_some(())
    });
    shutdown_and_check(&p);
    assert_eq!(mounts_under(&root), 0);
}

const CHILD_ROOT: &str = "EMBER_RUNTIME_TEST_JAILED_OWNER_ROOT";

/// Tied jailed VMMs die with their owner: the jailer carries the parent-death signal (set on
/// the VMM after its last change of uid, which would clear it).
#[test]
fn jailed_vmms_die_with_their_owner() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Command, Stdio};
    if let Some(root) = std::env::var_os(CHILD_ROOT) {
        let p = jailed_provider(Path::new(&root), false, 2);
        let id = vm("orphan");
        p.create_with_spec(&id, &probe_spec("ember.hz=0 ember.report=0"))
            .unwrap();
        p.start(&id).unwrap();
        wait_for(DEFAULT_TIMEOUT, "two spares", || {
            (p.stats().spares.ready == 2).then_some(())
        });
        let pids: Vec<String> = p
            .process_ids()
            .iter()
            .map(|pid| vmm_pid(*pid).to_string())
            .collect();
        println!("PIDS {}", pids.join(" "));
        let _ = nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGKILL);
        unreachable!();
    }
    let dir = short_tempdir();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "jailed_vmms_die_with_their_owner", "--nocapture"])
        .env(CHILD_ROOT, dir.path())
        .env("EMBER_VMM_BIN", vmm_bin())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pids: Vec<u32> = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        if let Some(rest) = line.unwrap().strip_prefix("PIDS ") {
            pids = rest.split(' ').map(|p| p.parse().unwrap()).collect();
        }
    }
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    assert_eq!(pids.len(), 3, "a VM and two spares: {pids:?}");
    wait_for(
        DEFAULT_TIMEOUT,
        "every jailed VMM to die with its owner",
        || pids.iter().all(|p| !alive(*p)).then_some(()),
    );
    // The next provider on the root clears the jail roots (and their mounts) the dead one left.
    let p = jailed_provider(dir.path(), false, 1);
    assert!(p.list().unwrap().is_empty());
    shutdown_and_check(&p);
    assert_eq!(mounts_under(&dir.path().join("root")), 0);
}

/// A jailed VMM that makes a forbidden syscall is killed by SIGSYS (ember-vmm's seccomp
/// filter, installed inside the jail), and the provider reports it as such — tied (the jailer
/// ends the way its VMM did) and detached (the VMM is watched itself).
#[test]
fn a_jailed_vmm_killed_by_seccomp_is_reported() {
    for detached in [false, true] {
        let dir = short_tempdir();
        let mut config =
            ProviderConfig::new(dir.path().join("root"), flavor(Kind::EmberVmm).unwrap());
        config.spares = SpareConfig {
            count: 1,
            ..SpareConfig::default()
        };
        config.detached = detached;
        config.jail = Some(jail_settings());
        config.extra_args = vec!["--seccomp-selftest".into()];
        let p = std::sync::Arc::new(VmmProvider::new(config).unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        let tx = std::sync::Mutex::new(tx);
        p.add_exit_listener(std::sync::Arc::new(move |e: &ember_runtime::VmExit| {
            let _ = tx.lock().unwrap().send(e.clone());
        }));
        let id = vm("victim");
        p.create_with_spec(&id, &probe_spec("ember.report=0"))
            .unwrap();
        let _ = p.start(&id);
        let exit = rx.recv_timeout(DEFAULT_TIMEOUT).expect("the VM's death");
        assert_eq!(
            exit.exit,
            ember_runtime::ExitInfo::Signal(libc::SIGSYS),
            "detached={detached}"
        );
        assert!(exit.exit.to_string().contains("seccomp"), "{}", exit.exit);
        assert_eq!(p.get(&id).unwrap().status, VmStatus::Stopped);
        p.destroy(&id).unwrap();
        shutdown_and_check(&p);
    }
}
