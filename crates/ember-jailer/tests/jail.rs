//! The jailer around a real ember-vmm on real KVM: the jailed VMM boots the probe, answers
//! exec over vsock, and runs as its own uid with no capabilities, no_new_privs and seccomp,
//! in its own namespaces and root, inside its cgroup; it cannot open a host file by any path;
//! bad configurations are refused naming the problem.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ember_jailer::cgroup;
use ember_test_support::{ApiClient, DEFAULT_TIMEOUT, wait_for};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn jailer() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ember-jailer"))
}

struct Jailed {
    id: String,
    root: PathBuf,
    pid: u32,
}

impl Drop for Jailed {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
        wait_for(DEFAULT_TIMEOUT, "the jailed VMM to exit", || {
            (!Path::new(&format!("/proc/{}", self.pid)).exists()).then_some(())
        });
        let _ = Command::new(jailer())
            .args([
                "--cleanup",
                "--id",
                &self.id,
                "--parent-cgroup",
                "ember-test",
            ])
            .status();
        // The shared parent goes with the last test's VM (it is busy while another's exists).
        for ctrl in ["pids", "memory", "cpu", "unified", ""] {
            let _ = std::fs::remove_dir(Path::new("/sys/fs/cgroup").join(ctrl).join("ember-test"));
        }
    }
}

fn start(dir: &Path, id: &str, extra: &[&str]) -> Jailed {
    let root = dir.join(id);
    std::fs::create_dir(&root).unwrap();
    let pid_file = dir.join(format!("{id}.pid"));
    let kernel = format!("{}:/kernel", ember_probe_image::probe_elf_path().display());
    // The VMM inherits the jailer's stdout and stderr: files, never pipes a wait would hang on.
    let log = dir.join(format!("{id}.log"));
    let status = Command::new(jailer())
        .args(["--id", id, "--uid", "40001", "--gid", "40001"])
        .arg("--root")
        .arg(&root)
        .arg("--exec-file")
        .arg(ember_test_support::vmm_bin())
        .arg("--pid-file")
        .arg(&pid_file)
        .args(["--bind", &kernel, "--parent-cgroup", "ember-test"])
        .args(extra)
        .args(["--", "--api-sock", "/api.sock", "--serial-out", "none"])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .status()
        .unwrap();
    assert!(
        status.success(),
        "jailer failed: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let pid = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    Jailed {
        id: id.to_string(),
        root,
        pid,
    }
}

fn status_field(pid: u32, name: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

/// Boots the probe from `kernel` (a path inside the jail), with a vsock device at `/v.sock`
/// when `vsock`.
fn boot(c: &mut ApiClient, kernel: &str, vsock: bool) {
    if vsock {
        let r = c.put("/vsock", r#"{"guest_cid": 3, "uds_path": "/v.sock"}"#);
        assert_eq!(r.status, 204, "{r:?}");
    }
    let body = serde_json::json!({ "kernel_image_path": kernel, "boot_args": "ember.report=0" });
    let r = c.put("/boot-source", &body.to_string());
    assert_eq!(r.status, 204, "{r:?}");
    let r = c.put(
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 64}"#,
    );
    assert_eq!(r.status, 204, "{r:?}");
    let r = c.put("/actions", r#"{"action_type": "InstanceStart"}"#);
    assert_eq!(r.status, 204, "{r:?}");
}

#[test]
fn a_jailed_vmm_boots_runs_exec_and_is_confined() {
    let dir = tempfile::tempdir().unwrap();
    let j = start(
        dir.path(),
        "jail-a",
        &[
            "--memory-max",
            "536870912",
            "--pids-max",
            "64",
            "--cpu-weight",
            "50",
        ],
    );
    let mut c = ApiClient::connect(&j.root.join("api.sock"), DEFAULT_TIMEOUT);
    // Host paths do not exist for it: a drive at /etc/passwd is refused.
    let r = c.put(
        "/drives/rootfs",
        r#"{"drive_id": "rootfs", "path_on_host": "/etc/passwd", "is_root_device": false, "is_read_only": true}"#,
    );
    assert_eq!(r.status, 400, "{r:?}");
    boot(&mut c, "/kernel", true);
    let mut agent = wait_for(DEFAULT_TIMEOUT, "the probe agent", || {
        ember_agent_proto::AgentClient::connect(
            j.root.join("v.sock"),
            ember_probe_image::AGENT_PORT,
            Duration::from_secs(5),
        )
        .ok()
    });
    agent.health().unwrap();
    let out = agent
        .exec(&ember_agent_proto::Exec::new(&["echo", "jailed"]))
        .unwrap();
    assert_eq!(out.stdout, b"jailed\n");

    // Credentials: its own uid/gid, nothing privileged left, seccomp on once the VM runs.
    assert_eq!(status_field(j.pid, "Uid:"), "40001\t40001\t40001\t40001");
    assert_eq!(status_field(j.pid, "Gid:"), "40001\t40001\t40001\t40001");
    for cap in ["CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
        assert_eq!(status_field(j.pid, cap), "0000000000000000", "{cap}");
    }
    assert_eq!(status_field(j.pid, "NoNewPrivs:"), "1");
    assert_eq!(status_field(j.pid, "Seccomp:"), "2");
    // pid 1 of its own pid namespace.
    let nspid = status_field(j.pid, "NSpid:");
    assert!(nspid.ends_with("\t1"), "{nspid}");
    // Every namespace differs from the host's.
    for ns in ["mnt", "pid", "net", "ipc", "uts"] {
        let theirs = std::fs::read_link(format!("/proc/{}/ns/{ns}", j.pid)).unwrap();
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        assert_ne!(theirs, ours, "{ns}");
    }
    // Its root holds only its own files.
    let mut seen: Vec<String> = std::fs::read_dir(format!("/proc/{}/root", j.pid))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    seen.sort();
    let allowed = [
        "api.sock",
        "dev",
        "ember-vmm",
        "kernel",
        "lib",
        "lib64",
        "v.sock",
    ];
    for name in &seen {
        assert!(
            allowed.contains(&name.as_str()),
            "unexpected {name} in {seen:?}"
        );
    }
    assert!(!seen.contains(&"etc".to_string()));
    let mut devs: Vec<String> = std::fs::read_dir(format!("/proc/{}/root/dev", j.pid))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    devs.sort();
    assert_eq!(devs, ["kvm", "net", "random", "urandom"]);
    // Its cgroup, with the limits.
    let version = cgroup::detect(Path::new(cgroup::DEFAULT_ROOT)).unwrap();
    let dirs = cgroup::dirs(
        Path::new(cgroup::DEFAULT_ROOT),
        version,
        "ember-test",
        "jail-a",
    );
    for d in &dirs {
        let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap();
        assert!(
            procs.lines().any(|l| l == j.pid.to_string()),
            "{} holds {procs:?}",
            d.display()
        );
    }
    let memory = match version {
        cgroup::Version::V1 => dirs[1].join("memory.limit_in_bytes"),
        cgroup::Version::V2 => dirs[0].join("memory.max"),
    };
    assert_eq!(std::fs::read_to_string(memory).unwrap().trim(), "536870912");
    // The VMM keeps serving.
    assert_eq!(c.get("/").status, 200);
    // Gone: the cleanup removes the cgroup.
    drop(c);
    drop(j);
    for d in &dirs {
        assert!(!d.exists(), "{} left", d.display());
    }
}

#[test]
fn bad_configurations_are_refused_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("r");
    std::fs::create_dir(&root).unwrap();
    let vmm = ember_test_support::vmm_bin();
    let run = |args: &[&str]| {
        let out = Command::new(jailer())
            .args(args)
            .args([
                "--parent-cgroup",
                "ember-test",
                "--",
                "--api-sock",
                "/a.sock",
            ])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let root_s = root.to_str().unwrap();
    let vmm_s = vmm.to_str().unwrap();
    let base = |id: &'static str, uid: &'static str| {
        vec![
            "--id",
            id,
            "--uid",
            uid,
            "--gid",
            "40001",
            "--root",
            root_s,
            "--exec-file",
            vmm_s,
        ]
    };
    assert!(run(&base("ok", "0")).contains("uid 0"));
    assert!(run(&base("a/b", "40001")).contains("invalid id"));
    let mut args = base("ok", "40001");
    args.extend(["--bind", "/nonexistent-kernel:/kernel"]);
    assert!(run(&args).contains("/nonexistent-kernel"));
    let mut args = base("ok", "40001");
    args.extend(["--bind", "/etc/hostname:/../x"]);
    assert!(run(&args).contains("'..'"));
    let mut args = base("ok", "40001");
    args[7] = "/nonexistent-root";
    assert!(run(&args).contains("/nonexistent-root"));
    let mut args = base("ok", "40001");
    args.extend(["--cpu-weight", "0"]);
    assert!(run(&args).contains("cpu weight"));
    // Nothing was started or left.
    assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0);
}

/// A directory bind-mounted onto itself and made shared, unmounted (lazily) on drop.
struct SharedMount(PathBuf);

impl SharedMount {
    fn new(dir: &Path) -> SharedMount {
        use nix::mount::{MsFlags, mount};
        mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>).unwrap();
        let m = SharedMount(dir.to_path_buf());
        mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_SHARED,
            None::<&str>,
        )
        .unwrap();
        m
    }
}

impl Drop for SharedMount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn a_file_bound_on_the_host_after_start_appears_in_the_jail() {
    // How a runtime hands a pre-started VMM the snapshot it is to load: the runtime's directory
    // is a shared mount, each jail a slave of it, so a bind mount made later under the jail's
    // root on the host shows inside (same inode: the page cache stays shared).
    let dir = tempfile::tempdir().unwrap();
    let shared = SharedMount::new(dir.path());
    let j = start(&shared.0, "jail-late", &[]);
    let mut c = ApiClient::connect(&j.root.join("api.sock"), DEFAULT_TIMEOUT);
    assert_eq!(c.get("/").status, 200);
    let late = j.root.join("late-kernel");
    std::fs::File::create(&late).unwrap();
    nix::mount::mount(
        Some(ember_probe_image::probe_elf_path()),
        &late,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap();
    let inside = std::fs::read(format!("/proc/{}/root/late-kernel", j.pid)).unwrap();
    assert_eq!(
        inside,
        std::fs::read(ember_probe_image::probe_elf_path()).unwrap()
    );
    // The VMM boots from it by its jail path.
    boot(&mut c, "/late-kernel", false);
    drop(c);
    drop(j);
    let _ = nix::mount::umount2(&late, nix::mount::MntFlags::MNT_DETACH);
}

/// `ember-jailer --serve` on a socket pair: one request a line, one answer a line.
struct Resident {
    child: std::process::Child,
    io: std::io::BufReader<std::os::unix::net::UnixStream>,
}

impl Resident {
    fn start() -> Resident {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let out = theirs.try_clone().unwrap();
        let child = Command::new(jailer())
            .args(["--serve", "--parent-pid", &std::process::id().to_string()])
            .stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(
                theirs,
            )))
            .stdout(std::process::Stdio::from(std::os::fd::OwnedFd::from(out)))
            .spawn()
            .unwrap();
        Resident {
            child,
            io: std::io::BufReader::new(ours),
        }
    }

    fn ask(&mut self, line: &str) -> serde_json::Value {
        use std::io::{BufRead, Write};
        self.io.get_mut().write_all(line.as_bytes()).unwrap();
        self.io.get_mut().write_all(b"\n").unwrap();
        let mut answer = String::new();
        self.io.read_line(&mut answer).unwrap();
        serde_json::from_str(&answer).unwrap()
    }
}

impl Drop for Resident {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_resident_jailer_starts_vmms_as_its_owners_children_and_names_failures() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("r1");
    std::fs::create_dir(&root).unwrap();
    let log = dir.path().join("r1.log");
    std::fs::write(&log, b"").unwrap();
    let kernel = ember_probe_image::probe_elf_path();
    let config = |id: &str, root: &Path, netns: Option<&str>, exec: &Path| {
        serde_json::json!({
            "id": id, "root": root, "exec_file": exec, "uid": 40011, "gid": 40011,
            "binds": [{"source": kernel, "target": "/kernel", "read_only": true}],
            "netns": netns,
            "limits": {"cpu_weight": null, "cpu_quota": null, "memory_max": null, "pids_max": 64},
            "parent_cgroup": "ember-test", "args": ["--api-sock", "/api.sock", "--serial-out", "none"],
            "tie_to": std::process::id(), "scan_libraries": true,
        })
    };
    let request = |config: serde_json::Value| {
        serde_json::json!({"start": {
            "config": config, "cgroup_root": "/sys/fs/cgroup",
            "stdio": {"stdout": log, "stderr": log}, "new_session": false,
        }})
        .to_string()
    };
    let vmm = ember_test_support::vmm_bin();
    let mut resident = Resident::start();

    // A VMM started: our child (not the jailer's), jailed, answering its API.
    let answer = resident.ask(&request(config("r1", &root, None, &vmm)));
    let pid = answer["started"]["pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("{answer}: {}", std::fs::read_to_string(&log).unwrap()))
        as u32;
    let jailed = Jailed {
        id: "r1".into(),
        root: root.clone(),
        pid,
    };
    assert_eq!(status_field(pid, "PPid:"), std::process::id().to_string());
    assert_eq!(status_field(pid, "NoNewPrivs:"), "1");
    assert!(status_field(pid, "Uid:").starts_with("40011"));
    let mut c = ApiClient::connect(&root.join("api.sock"), DEFAULT_TIMEOUT);
    boot(&mut c, "/kernel", false);
    let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
    assert_ne!(
        std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap(),
        ours
    );
    drop(c);
    // A host file given to the running VMM: bound in its own mount namespace, read-only, and
    // nothing mounted on the host.
    let given = dir.path().join("given");
    std::fs::write(&given, b"snapshot").unwrap();
    let inside = Path::new("/given-file");
    std::fs::write(root.join("given-file"), b"").unwrap();
    let expose = serde_json::json!({"expose": {
        "pid": pid, "source": given, "target": inside, "read_only": true}});
    assert_eq!(resident.ask(&expose.to_string()), serde_json::json!("done"));
    let seen = std::fs::read(format!("/proc/{pid}/root/given-file")).unwrap();
    assert_eq!(seen, b"snapshot");
    assert!(
        std::fs::read(root.join("given-file")).unwrap().is_empty(),
        "not on the host"
    );
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let line = mounts
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/given-file"))
        .unwrap();
    assert!(line.split(' ').nth(5).unwrap().starts_with("ro"), "{line}");
    let hide = serde_json::json!({"hide": {"pid": pid, "target": inside}});
    assert_eq!(resident.ask(&hide.to_string()), serde_json::json!("done"));
    assert!(
        std::fs::read(format!("/proc/{pid}/root/given-file"))
            .unwrap()
            .is_empty()
    );
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    // Ours to reap.
    let status = nix::sys::wait::waitpid(Pid::from_raw(pid as i32), None).unwrap();
    assert!(
        matches!(
            status,
            nix::sys::wait::WaitStatus::Signaled(_, Signal::SIGKILL, _)
        ),
        "{status:?}"
    );
    drop(jailed);

    // Refused before anything is made: no child.
    let missing = dir.path().join("no-such-vmm");
    let answer = resident.ask(&request(config("r2", &root, None, &missing)));
    assert!(answer["failed"]["pid"].is_null(), "{answer}");
    assert!(
        answer["failed"]["error"]
            .as_str()
            .unwrap()
            .contains("exec file"),
        "{answer}"
    );

    // Failed in the child (a "network namespace" that is not one): named, and the child is
    // ours to reap.
    let root3 = dir.path().join("r3");
    std::fs::create_dir(&root3).unwrap();
    let answer = resident.ask(&request(config("r3", &root3, Some("/dev/null"), &vmm)));
    let error = answer["failed"]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(error.contains("network namespace"), "{answer}");
    let child = answer["failed"]["pid"].as_u64().expect("the child's pid") as i32;
    let status = nix::sys::wait::waitpid(Pid::from_raw(child), None).unwrap();
    assert!(
        matches!(status, nix::sys::wait::WaitStatus::Exited(_, 1)),
        "{status:?}"
    );
    let _ = Command::new(jailer())
        .args(["--cleanup", "--id", "r3", "--parent-cgroup", "ember-test"])
        .status();

    // A malformed line is answered, and the jailer serves on.
    let answer = resident.ask("{not json");
    assert!(
        answer["failed"]["error"]
            .as_str()
            .unwrap()
            .contains("malformed"),
        "{answer}"
    );
    let answer = resident.ask(&request(config("r4", &root3, None, &missing)));
    assert!(answer["failed"].is_object(), "{answer}");
    // The shared parent goes with the last test's VM (it is busy while another's exists).
    for ctrl in ["pids", "memory", "cpu", "unified", ""] {
        let _ = std::fs::remove_dir(Path::new("/sys/fs/cgroup").join(ctrl).join("ember-test"));
    }
}
