//! Jailed VMMs (the provider's `jail` setting): every VMM the provider starts — spares, booted
//! VMs, restores — runs through ember-jailer. A template with a read-only root disk is booted
//! and snapshotted jailed, its clones are restored jailed (the disk bound into each jail) and
//! answer exec; each VMM runs under seccomp with
//! `no_new_privs`, as a non-root uid of its own, inside its own root where no host file can be
//! named, in its own cgroup; destroy and shutdown leave no jail root, mount or cgroup behind.
//! Detached, jailed VMMs outlive their provider and are adopted by the next one.
//!
//! Limits contain a VM without harming its neighbours: a guest that touches more memory
//! (the probe's `memtouch`) than its VMM's cgroup allows gets its VMM OOM-killed in that
//! cgroup, reported as killed by SIGKILL, while a sibling under the same limits answers on; a
//! VMM whose pids limit leaves no room for its vCPU threads fails its start with an error
//! that says so, and the provider goes on. Each leaves no slot cgroup, mount or process.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use ember_agent_proto::{AgentClient, Exec};
use ember_core::{VmOwner, VmProvider, VmQuery, VmSpec, VmStatus, VsockSpec};
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

/// The provider's parent cgroup (`ember-<tag>`) of VMM `pid`.
fn cgroup_parent(pid: u32) -> String {
    let path = cgroup_of(pid, "pids");
    path.trim_start_matches('/')
        .split('/')
        .next()
        .unwrap()
        .to_string()
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
    // A read-only root disk outside the provider's root, as a Linux template has: the
    // snapshot records it and every jailed restore gets it bound in at its path.
    let disk = dir.path().join("rootfs.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    spec.rootfs = Some(disk.clone());
    spec.rootfs_read_only = true;
    p.create_with_spec(&src, &spec).unwrap();
    p.start(&src).unwrap();
    agent(&p, &src);
    let src_pid = vmm_pid(p.pid(&src).unwrap());
    assert_jailed(src_pid, &p.paths(&src).unwrap().slot.dir);
    let parent = cgroup_parent(src_pid);
    let snap = pause_and_snapshot(&p, &src, "jailed");
    p.destroy(&src).unwrap();
    // The files the jailed VMM wrote are root's again, readable by jailed VMMs only.
    let info = p.snapshot_info(&snap.snapshot_id).unwrap();
    assert_eq!(
        info.disks,
        vec![ember_core::DiskFile {
            path: disk.clone(),
            read_only: true
        }]
    );
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
    shutdown_and_check_jails(&p, &parent);
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
        let snap = pause_and_snapshot(&p, &src, "kept");
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
/// filter, installed inside the jail), and the provider reports it as such, with the end of
/// the VMM's log — tied (the jailer ends the way its VMM did) and detached (the VMM is watched
/// itself).
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
        // Its last words come with the report (read before its slot's files go).
        assert!(
            exit.log_tail.contains("seccomp self-test"),
            "detached={detached}: {:?}",
            exit.log_tail
        );
        assert_eq!(p.get(&id).unwrap().status, VmStatus::Stopped);
        p.destroy(&id).unwrap();
        shutdown_and_check(&p);
    }
}

/// A jailed provider whose VMMs run under `limits` (no spares).
fn limited_provider(dir: &Path, limits: ember_jailer::Limits) -> std::sync::Arc<VmmProvider> {
    let mut config = ProviderConfig::new(dir.join("root"), flavor(Kind::EmberVmm).unwrap());
    config.spares = SpareConfig {
        count: 0,
        ..SpareConfig::default()
    };
    let mut jail = jail_settings();
    jail.limits = limits;
    config.jail = Some(jail);
    std::sync::Arc::new(VmmProvider::new(config).unwrap())
}

/// The exits the provider reports, as they come.
fn exits(p: &VmmProvider) -> std::sync::mpsc::Receiver<ember_runtime::VmExit> {
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    p.add_exit_listener(std::sync::Arc::new(move |e: &ember_runtime::VmExit| {
        let _ = tx.lock().unwrap().send(e.clone());
    }));
    rx
}

/// Boots a probe VM with an agent: `mem_mib` of guest memory, `vcpus` vCPUs.
fn boot_probe(p: &VmmProvider, name: &str, mem_mib: u32, vcpus: u8) -> Result<(), String> {
    let id = vm(name);
    let mut spec = probe_spec("ember.hz=0 ember.report=0");
    spec.mem_size_mib = mem_mib;
    spec.vcpu_count = vcpus;
    spec.vsock = Some(VsockSpec {
        guest_cid: 3,
        uds_path: "/unused".into(),
    });
    p.create_with_spec(&id, &spec)
        .map_err(|e| error_chain(&e))?;
    p.start(&id).map_err(|e| error_chain(&e))?;
    Ok(())
}

/// `e` and its sources, joined by `: `.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// `name` of the cgroup (v1 controller `ctrl`) VMM `pid` runs in: `/ember-<tag>/slot<n>`.
fn cgroup_of(pid: u32, ctrl: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    text.lines()
        .find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
            ctrls
                .split(',')
                .any(|c| c == ctrl)
                .then(|| path.to_string())
        })
        .unwrap_or_else(|| panic!("no {ctrl} cgroup for {pid}: {text}"))
}

/// The slot cgroups left under the provider cgroup `parent` (`ember-<tag>`), any controller.
fn slot_cgroups_under(parent: &str) -> Vec<PathBuf> {
    ["pids", "memory", "cpu", "unified", ""]
        .iter()
        .map(|c| Path::new("/sys/fs/cgroup").join(c).join(parent))
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
        .filter(|e| e.file_name().to_string_lossy().starts_with("slot"))
        .map(|e| e.path())
        .collect()
}

/// The leak check after a limits test: the provider shut down, no VMM left, no mount under
/// its root, no slot cgroup under its parent cgroup.
fn shutdown_and_check_jails(p: &VmmProvider, parent_cgroup: &str) {
    let root = p.root().to_path_buf();
    shutdown_and_check(p);
    assert_eq!(
        mounts_under(&root),
        0,
        "mounts left under {}",
        root.display()
    );
    let left = slot_cgroups_under(parent_cgroup);
    assert!(left.is_empty(), "cgroups left: {left:?}");
    for ctrl in ["pids", "memory", "cpu", "unified", ""] {
        let dir = Path::new("/sys/fs/cgroup").join(ctrl).join(parent_cgroup);
        assert!(!dir.exists(), "{} left", dir.display());
    }
}

/// Guest memory of the limits tests' VMs (MiB), above their VMMs' memory limit.
const GUEST_MIB: u32 = 256;
/// The VMMs' memory limit.
const MEMORY_MAX: u64 = 96 << 20;

/// Hog `a` and neighbour `b` run under [`MEMORY_MAX`]: `b` uses memory within it and goes on
/// answering while `a`, touching more, is OOM-killed inside its own cgroup. Returns the
/// provider's parent cgroup.
#[allow(clippy::print_stdout)]
fn hog_is_killed_alone(
    p: &VmmProvider,
    exits: &std::sync::mpsc::Receiver<ember_runtime::VmExit>,
    a: &ember_core::VmId,
    b: &ember_core::VmId,
    round: &str,
) -> String {
    let mut agent_b = agent(p, b);
    assert_eq!(
        agent_b
            .exec(&Exec::new(&["echo", "before"]))
            .unwrap()
            .stdout,
        b"before\n"
    );
    let vmm_a = vmm_pid(p.pid(a).unwrap());
    let vmm_b = vmm_pid(p.pid(b).unwrap());
    let cgroup_a = cgroup_of(vmm_a, "memory");
    let parent = cgroup_a
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap()
        .to_string();
    assert_ne!(
        cgroup_a,
        cgroup_of(vmm_b, "memory"),
        "two VMMs in one cgroup"
    );
    let memcg = Path::new("/sys/fs/cgroup/memory").join(cgroup_a.trim_start_matches('/'));
    if memcg.is_dir() {
        let read = |f: &str| std::fs::read_to_string(memcg.join(f)).ok();
        assert_eq!(
            read("memory.limit_in_bytes").unwrap().trim(),
            MEMORY_MAX.to_string()
        );
        if let Some(memsw) = read("memory.memsw.limit_in_bytes") {
            assert_eq!(memsw.trim(), MEMORY_MAX.to_string(), "RAM+swap limit");
        }
    }

    // Within bounds: the guest's RAM above 4 MiB is 252 MiB; more is refused.
    let slow_agent = |id: &ember_core::VmId| {
        AgentClient::connect(p.vsock_path(id).unwrap(), PORT, DEFAULT_TIMEOUT).unwrap()
    };
    let out = slow_agent(b)
        .exec(&Exec::new(&["memtouch", "300"]))
        .unwrap();
    assert_eq!(out.exit_code, 1);
    assert_eq!(out.stderr, b"memtouch: only 252 MiB above 4 MiB\n");
    let out = slow_agent(b).exec(&Exec::new(&["memtouch", "16"])).unwrap();
    assert_eq!(out.stdout, b"touched 16 MiB\n");

    // Over: A's VMM is killed in its own cgroup.
    let started = std::time::Instant::now();
    let touched = slow_agent(a).exec(&Exec::new(&["memtouch", "200"]));
    assert!(
        !touched.as_ref().is_ok_and(|o| o.exit_code == 0),
        "{round}: 200 MiB touched under a 96 MiB limit: {touched:?}"
    );
    let exit = exits
        .recv_timeout(DEFAULT_TIMEOUT)
        .expect("the hog's death");
    println!(
        "{round}: memtouch 200 under a 96 MiB limit: {} after {:?} ({touched:?})",
        exit.exit,
        started.elapsed()
    );
    assert_eq!(&exit.id, a);
    assert_eq!(exit.exit, ember_runtime::ExitInfo::Signal(libc::SIGKILL));
    assert_eq!(exit.exit.to_string(), "killed by SIGKILL");
    assert_eq!(p.get(a).unwrap().status, VmStatus::Stopped);
    assert!(!alive(vmm_a));

    // B never noticed.
    assert!(alive(vmm_b));
    assert_eq!(p.get(b).unwrap().status, VmStatus::Running);
    let mut agent_b = agent(p, b);
    assert_eq!(
        agent_b.exec(&Exec::new(&["echo", "after"])).unwrap().stdout,
        b"after\n"
    );
    assert!(exits.try_recv().is_err(), "{round}: another VM died");
    p.destroy(a).unwrap();
    p.destroy(b).unwrap();
    parent
}

/// A VM whose guest touches more memory than its VMM's cgroup allows is killed by the
/// kernel's OOM killer inside that cgroup (SIGKILL, reported through the exit listener as
/// such); a sibling VM under the same limits answers before and after, and can use memory
/// within its own limit. Booted VMs (fresh anonymous memory), then clones restored from a
/// snapshot (copy-on-write of the snapshot's pages).
#[test]
fn a_jailed_vm_over_its_memory_limit_is_oom_killed_alone() {
    let dir = short_tempdir();
    let p = limited_provider(
        dir.path(),
        ember_jailer::Limits {
            memory_max: Some(MEMORY_MAX),
            pids_max: Some(32),
            ..ember_jailer::Limits::default()
        },
    );
    let exits = exits(&p);
    boot_probe(&p, "hog", GUEST_MIB, 1).unwrap();
    boot_probe(&p, "neighbour", GUEST_MIB, 1).unwrap();
    let parent = hog_is_killed_alone(&p, &exits, &vm("hog"), &vm("neighbour"), "booted");

    // The template is booted and snapshotted under the same limit.
    let tpl = vm("tpl");
    boot_probe(&p, "tpl", GUEST_MIB, 1).unwrap();
    agent(&p, &tpl);
    let snap = pause_and_snapshot(&p, &tpl, "limited");
    p.destroy(&tpl).unwrap();
    for name in ["hog-clone", "neighbour-clone"] {
        p.create_with_spec(&vm(name), &VmSpec::restore(snap.clone()))
            .unwrap();
    }
    hog_is_killed_alone(
        &p,
        &exits,
        &vm("hog-clone"),
        &vm("neighbour-clone"),
        "restored",
    );
    shutdown_and_check_jails(&p, &parent);
}

/// Tasks a jailed provider's slot may hold: a running 1-vCPU VM takes 5 (the jailer, the
/// VMM's main thread, vcpu0, the virtio thread, KVM's `kvm-nx-lpage-recovery` worker, which
/// runs in the VM creator's cgroup) and a few more for a moment at start, while the
/// VM shell prepared early is closed on a thread of its own.
const PIDS_MAX: u64 = 8;

/// A VMM whose cgroup's pids limit leaves no room for all its vCPU threads fails its start
/// cleanly, naming the failure; the provider stays usable and a 1-vCPU VM under the same
/// limit runs.
#[test]
fn a_jailed_vm_over_its_pids_limit_fails_to_start_cleanly() {
    let dir = short_tempdir();
    let p = limited_provider(
        dir.path(),
        ember_jailer::Limits {
            pids_max: Some(PIDS_MAX),
            ..ember_jailer::Limits::default()
        },
    );
    let exits = exits(&p);
    let wide = vm("wide");
    let err = boot_probe(&p, "wide", 128, 8).unwrap_err();
    println!("8 vCPUs under pids.max {PIDS_MAX}: {err}");
    assert!(err.contains("cannot start vCPU thread"), "{err}");
    assert!(err.contains("Resource temporarily unavailable"), "{err}");
    assert!(err.contains("pids limit"), "{err}");
    // Its VMM is still there, with none of the threads that failed start left behind.
    assert_eq!(p.get(&wide).unwrap().status, VmStatus::Created);
    let pid = vmm_pid(p.pid(&wide).unwrap());
    let parent = cgroup_of(pid, "pids")
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap()
        .to_string();
    wait_for(DEFAULT_TIMEOUT, "the failed start's threads to end", || {
        let threads: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
            .map(|c| c.trim().to_string())
            .collect();
        (!threads.iter().any(|c| c.starts_with("vcpu"))).then_some(())
    });
    p.destroy(&wide).unwrap();

    // The provider goes on: a VM that fits runs and answers.
    let narrow = vm("narrow");
    boot_probe(&p, "narrow", 128, 1).unwrap();
    let mut a = agent(&p, &narrow);
    assert_eq!(
        a.exec(&Exec::new(&["echo", "fits"])).unwrap().stdout,
        b"fits\n"
    );
    let cg = cgroup_of(vmm_pid(p.pid(&narrow).unwrap()), "pids");
    let pids = Path::new("/sys/fs/cgroup/pids").join(cg.trim_start_matches('/'));
    if pids.is_dir() {
        let read = |f: &str| std::fs::read_to_string(pids.join(f)).unwrap();
        assert_eq!(read("pids.max").trim(), PIDS_MAX.to_string());
        println!(
            "a running 1-vCPU VM: pids.current {}",
            read("pids.current").trim()
        );
    }
    assert!(exits.try_recv().is_err(), "a VM died");
    p.destroy(&narrow).unwrap();
    shutdown_and_check_jails(&p, &parent);
}

/// A read-write drive the jailed VMM cannot write is refused with how to fix it; made writable
/// by the VMs' group, the same drive attaches (read-only drives need no such thing).
#[test]
fn a_jailed_rw_drive_must_be_writable_by_the_vm_group() {
    use std::os::unix::fs::PermissionsExt;
    let dir = short_tempdir();
    let p = jailed_provider(dir.path(), false, 1);
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    std::fs::set_permissions(&disk, std::fs::Permissions::from_mode(0o644)).unwrap();
    let spec = |read_only: bool| {
        let mut s = probe_spec("ember.hz=0 ember.report=0");
        s.drives = vec![ember_core::spec::DriveSpec {
            drive_id: "data".into(),
            path_on_host: disk.clone(),
            is_root_device: false,
            is_read_only: read_only,
            rate_limiter: None,
        }];
        s
    };
    let err = p.create_with_spec(&vm("rw"), &spec(false)).unwrap_err();
    let text = error_chain(&err);
    assert!(text.contains("make it writable by group 3000000"), "{text}");
    assert!(p.list().unwrap().is_empty());
    p.create_with_spec(&vm("ro"), &spec(true)).unwrap();
    nix::unistd::chown(&disk, None, Some(nix::unistd::Gid::from_raw(3_000_000))).unwrap();
    std::fs::set_permissions(&disk, std::fs::Permissions::from_mode(0o664)).unwrap();
    p.create_with_spec(&vm("rw2"), &spec(false)).unwrap();
    p.start(&vm("rw2")).unwrap();
    p.destroy(&vm("rw2")).unwrap();
    p.destroy(&vm("ro")).unwrap();
    shutdown_and_check(&p);
}

/// With a memory overhead set, each VM's memory limit is its own guest memory plus the
/// overhead (set at boot and at restore): a 256 MiB guest may touch 200 MiB where a
/// provider-wide 96 MiB limit killed it, and the limit follows each VM's size.
#[test]
fn a_jailed_vms_memory_limit_follows_its_guest() {
    let dir = short_tempdir();
    let mut config = ProviderConfig::new(dir.path().join("root"), flavor(Kind::EmberVmm).unwrap());
    config.spares = SpareConfig {
        count: 1,
        ..SpareConfig::default()
    };
    let mut jail = jail_settings();
    jail.memory_overhead = Some(32 << 20);
    config.jail = Some(jail);
    let p = std::sync::Arc::new(VmmProvider::new(config).unwrap());
    let limit_of = |id: &str| -> u64 {
        let pid = vmm_pid(p.pid(&vm(id)).unwrap());
        let cg = cgroup_of(pid, "memory");
        std::fs::read_to_string(format!("/sys/fs/cgroup/memory{cg}/memory.limit_in_bytes"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    boot_probe(&p, "big", 256, 1).unwrap();
    assert_eq!(limit_of("big"), (256 + 32) << 20);
    boot_probe(&p, "small", 64, 1).unwrap();
    assert_eq!(limit_of("small"), (64 + 32) << 20);
    let mut agent =
        AgentClient::connect(p.vsock_path(&vm("big")).unwrap(), PORT, DEFAULT_TIMEOUT).unwrap();
    let out = agent.exec(&Exec::new(&["memtouch", "200"])).unwrap();
    drop(agent);
    assert_eq!(out.stdout, b"touched 200 MiB\n");
    // A clone restored from a snapshot gets the same sized limit. (The small VM is the one
    // snapshotted: the files a jailed VMM writes are charged to its memory cgroup, and on this
    // test's tmpfs they stay charged — a 256 MiB guest's snapshot would not fit 288 MiB.)
    let snap = pause_and_snapshot(&p, &vm("small"), "small");
    p.create_with_spec(&vm("clone"), &VmSpec::restore(snap))
        .unwrap();
    assert_eq!(limit_of("clone"), (64 + 32) << 20);
    for id in ["big", "small", "clone"] {
        p.destroy(&vm(id)).unwrap();
    }
    shutdown_and_check(&p);
}
