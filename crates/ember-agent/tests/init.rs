//! The agent as PID 1, in fresh PID, mount and network namespaces (`unshare`): it mounts /tmp,
//! brings `lo` up, reaps orphans, and Shutdown powers "the guest" off — which, in a PID
//! namespace, ends the namespace.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    missing_docs
)]

mod common;

use std::time::Duration;

use common::{Agent, s};
use ember_agent_proto::Exec;

fn can_unshare() -> bool {
    nix::unistd::geteuid().is_root()
        && std::process::Command::new("unshare")
            .args(["--fork", "--pid", "--net", "--mount-proc", "true"])
            .status()
            .is_ok_and(|s| s.success())
}

#[test]
fn as_pid1_it_mounts_brings_lo_up_reaps_orphans_and_powers_off() {
    if !can_unshare() {
        eprintln!("skipped: needs root and unshare");
        return;
    }
    let mut agent = Agent::start_with(
        &[
            "unshare",
            "--fork",
            "--pid",
            "--net",
            "--mount-proc",
            "--propagation",
            "private",
        ],
        &["--init", "auto"],
    );
    let mut c = agent.client();
    let out = c.exec(&Exec::new(&["sh", "-c", "echo $$"])).unwrap();
    assert_ne!(s(&out.stdout), "1\n");
    // An orphan: its parent exits at once, so it is re-parented to the agent (PID 1 here).
    let out = c
        .exec(&Exec::new(&["sh", "-c", "sleep 0.3 & echo $!"]))
        .unwrap();
    let orphan: u32 = s(&out.stdout).trim().parse().unwrap();
    let status = format!("/proc/{orphan}/stat");
    let ppid = c.exec(&Exec::new(&["cat", &status])).unwrap();
    let fields = s(&ppid.stdout);
    assert_eq!(fields.split(' ').nth(3), Some("1"), "{fields}");
    std::thread::sleep(Duration::from_millis(800));
    // Reaped: no zombie left behind.
    let gone = c
        .exec(&Exec::new(&[
            "sh",
            "-c",
            &format!("test -e {status} && cat {status}"),
        ]))
        .unwrap();
    assert_ne!(gone.exit_code, 0, "orphan still there: {}", s(&gone.stdout));
    // /tmp is a fresh tmpfs the agent mounted.
    let out = c
        .exec(&Exec::new(&["sh", "-c", "stat -f -c %T /tmp"]))
        .unwrap();
    assert_eq!(s(&out.stdout).trim(), "tmpfs");
    // A fresh network namespace starts with lo down: the agent brought it up.
    let probe = "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); \
                 socket.create_connection(s.getsockname(), timeout=2); print('lo ok')";
    if let Ok(out) = c.exec(&Exec::new(&["python3", "-c", probe])) {
        assert_eq!(s(&out.stdout), "lo ok\n", "{}", s(&out.stderr));
    }
    // Shutdown: the reply, then power-off, which ends the namespace.
    c.shutdown().unwrap();
    let status = agent.wait_exit(Duration::from_secs(10));
    assert!(status.is_some(), "the namespace's init did not end");
}
