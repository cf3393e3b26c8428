//! Exec and ExecIn against the real agent binary: real commands, users, limits and errors.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    missing_docs
)]

mod common;

use std::time::{Duration, Instant};

use common::{Agent, s};
use ember_agent_proto::{ClientError, ErrorCode, Exec, ExecIn};

fn agent_error(e: ClientError) -> (ErrorCode, String) {
    match e {
        ClientError::Agent { code, message, .. } => (code, message),
        other => panic!("expected an agent error, got {other}"),
    }
}

#[test]
fn shell_commands_see_home_and_exit_codes() {
    let agent = Agent::start();
    let mut c = agent.client();
    assert_eq!(c.agent().name, "ember-agent");
    let out = c.exec(&Exec::new(&["sh", "-c", "echo $HOME"])).unwrap();
    assert_eq!(out.exit_code, 0);
    let home = std::fs::read_to_string("/etc/passwd")
        .unwrap()
        .lines()
        .find(|l| l.starts_with(&format!("{}:", whoami())))
        .map(|l| l.split(':').nth(5).unwrap().to_owned())
        .unwrap();
    assert_eq!(s(&out.stdout), format!("{home}\n"));

    let out = c
        .exec(&Exec::new(&["sh", "-c", "echo out; echo err >&2; exit 3"]))
        .unwrap();
    assert_eq!(
        (out.exit_code, s(&out.stdout), s(&out.stderr)),
        (3, "out\n".into(), "err\n".into())
    );

    let out = c.exec(&Exec::new(&["false"])).unwrap();
    assert_eq!(out.exit_code, 1);

    // Env over the defaults, stdin fed and closed.
    let out = c
        .exec(
            &Exec::new(&["sh", "-c", "echo \"$A $PATH\"; cat"])
                .with_env(&["A=x y", "PATH=/bin:/usr/bin"])
                .with_stdin(b"piped"),
        )
        .unwrap();
    assert_eq!(s(&out.stdout), "x y /bin:/usr/bin\npiped");
}

fn whoami() -> String {
    let uid = nix::unistd::geteuid().as_raw();
    std::fs::read_to_string("/etc/passwd")
        .unwrap()
        .lines()
        .find(|l| l.split(':').nth(2) == Some(&uid.to_string()))
        .map(|l| l.split(':').next().unwrap().to_owned())
        .unwrap()
}

#[test]
fn python_runs_if_present() {
    let agent = Agent::start();
    let mut c = agent.client();
    let Ok(out) = c.exec(&Exec::new(&["python3", "-c", "print(2+2)"])) else {
        return; // no python3 on this machine
    };
    assert_eq!((out.exit_code, s(&out.stdout)), (0, "4\n".into()));
}

#[test]
fn a_signal_killed_command_reports_minus_the_signal() {
    let agent = Agent::start();
    let mut c = agent.client();
    let out = c.exec(&Exec::new(&["sh", "-c", "kill -9 $$"])).unwrap();
    assert_eq!(out.exit_code, -9);
    let out = c.exec(&Exec::new(&["sh", "-c", "kill -TERM $$"])).unwrap();
    assert_eq!(out.exit_code, -15);
}

#[test]
fn a_timeout_kills_the_process_group() {
    let agent = Agent::start();
    let mut c = agent.client();
    let marker = agent.path("survived");
    let script = format!("(sleep 2; touch {}) & sleep 30", marker.display());
    let started = Instant::now();
    let err = c
        .exec(&Exec::new(&["sh", "-c", &script]).with_timeout_ms(300))
        .unwrap_err();
    let elapsed = started.elapsed();
    let (code, message) = agent_error(err);
    assert_eq!(code, ErrorCode::TIMED_OUT, "{message}");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    // The background child was in the group: it never gets to touch the file.
    std::thread::sleep(Duration::from_millis(2500));
    assert!(!marker.exists());
    // The connection is still good.
    assert_eq!(c.exec(&Exec::new(&["true"])).unwrap().exit_code, 0);
}

#[test]
fn a_background_child_does_not_hold_the_reply() {
    let agent = Agent::start();
    let mut c = agent.client();
    let started = Instant::now();
    let out = c
        .exec(&Exec::new(&["sh", "-c", "sleep 5 & echo started"]))
        .unwrap();
    assert_eq!(s(&out.stdout), "started\n");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn missing_commands_and_directories_are_clear_errors() {
    let agent = Agent::start();
    let mut c = agent.client();
    let (code, message) = agent_error(c.exec(&Exec::new(&["no-such-command-xyz"])).unwrap_err());
    assert_eq!(code, ErrorCode::NOT_FOUND);
    assert!(message.contains("command not found"), "{message}");
    let (code, _) = agent_error(c.exec(&Exec::new(&["/nonexistent/bin/x"])).unwrap_err());
    assert_eq!(code, ErrorCode::NOT_FOUND);

    let (code, message) = agent_error(
        c.exec_in(&ExecIn::new(&["pwd"]).with_cwd(b"/no/such/dir"))
            .unwrap_err(),
    );
    assert_eq!(code, ErrorCode::NOT_FOUND, "{message}");
    assert!(message.contains("/no/such/dir"), "{message}");
    let (code, _) = agent_error(
        c.exec_in(&ExecIn::new(&["pwd"]).with_cwd(b"/etc/passwd"))
            .unwrap_err(),
    );
    assert_eq!(code, ErrorCode::NOT_A_DIRECTORY);
    let (code, _) = agent_error(
        c.exec_in(&ExecIn::new(&["pwd"]).with_user("no-such-user-xyz"))
            .unwrap_err(),
    );
    assert_eq!(code, ErrorCode::INVALID_ARGUMENT);

    // A file without execute permission.
    std::fs::write(agent.work().join("script"), "#!/bin/sh\necho hi\n").unwrap();
    let (code, message) = agent_error(c.exec(&Exec::new(&["./script"])).unwrap_err());
    assert_eq!(code, ErrorCode::PERMISSION_DENIED, "{message}");

    // Relative cwd from the agent's workdir; the command's relative paths from cwd.
    std::fs::create_dir(agent.work().join("sub")).unwrap();
    let out = c.exec_in(&ExecIn::new(&["pwd"]).with_cwd(b"sub")).unwrap();
    assert_eq!(s(&out.stdout), format!("{}/sub\n", agent.work().display()));
}

#[test]
fn commands_run_as_another_user() {
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let agent = Agent::start();
    let mut c = agent.client();
    let out = c
        .exec_in(
            &ExecIn::new(&["sh", "-c", "id -u; id -g; id -un; echo $HOME $USER"])
                .with_user("nobody")
                .with_cwd(b"/"),
        )
        .unwrap();
    let text = s(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "65534", "{text}");
    assert_eq!(lines[2], "nobody");
    assert!(lines[3].ends_with(" nobody"), "{text}");
    // nobody may not write where root's files are.
    let probe = agent.dir.path().join("root-only");
    std::fs::create_dir(&probe).unwrap();
    std::fs::set_permissions(&probe, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let (code, message) = agent_error(
        c.exec_in(
            &ExecIn::new(&["pwd"])
                .with_user("nobody")
                .with_cwd(probe.as_os_str().as_encoded_bytes()),
        )
        .unwrap_err(),
    );
    assert_eq!(code, ErrorCode::PERMISSION_DENIED, "{message}");
}

/// A named user's command without a working directory starts in that user's home (as a
/// login does, and as E2B's envd runs its default user's commands); without a user, or when
/// the home is missing, in the agent's default directory.
#[test]
fn a_named_users_commands_start_in_their_home() {
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let accounts = tempfile::tempdir_in("/var/tmp").unwrap();
    let home = accounts.path().join("home-tenant");
    std::fs::create_dir(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(1000), Some(1000)).unwrap();
    let etc = accounts.path().join("etc");
    std::fs::create_dir(&etc).unwrap();
    std::fs::write(
        etc.join("passwd"),
        format!(
            "root:x:0:0:root:/root:/bin/sh\ntenant:x:1000:1000::{}:/bin/sh\n\
             homeless:x:1001:1001::/no/such/home:/bin/sh\n",
            home.display()
        ),
    )
    .unwrap();
    std::fs::write(
        etc.join("group"),
        "root:x:0:\ntenant:x:1000:\nhomeless:x:1001:\n",
    )
    .unwrap();
    let agent = Agent::start_with(&[], &["--init", "no", "--etc", etc.to_str().unwrap()]);
    let mut c = agent.client();
    let pwd = |c: &mut ember_agent_proto::AgentClient, user: Option<&str>| {
        let mut e = ExecIn::new(&["pwd"]);
        if let Some(u) = user {
            e = e.with_user(u);
        }
        s(&c.exec_in(&e).unwrap().stdout).trim().to_string()
    };
    assert_eq!(pwd(&mut c, Some("tenant")), home.display().to_string());
    let work = agent.dir.path().join("work").display().to_string();
    assert_eq!(pwd(&mut c, Some("homeless")), work);
    assert_eq!(pwd(&mut c, None), work);
    // An explicit directory wins.
    let out = c
        .exec_in(&ExecIn::new(&["pwd"]).with_user("tenant").with_cwd(b"/"))
        .unwrap();
    assert_eq!(s(&out.stdout), "/\n");
}

#[test]
fn large_output_is_cut_to_the_frame_and_flagged() {
    let agent = Agent::start();
    let mut c = agent.client();
    let out = c
        .exec(&Exec::new(&["sh", "-c", "head -c 3000000 /dev/zero"]))
        .unwrap();
    assert_eq!(out.exit_code, 0);
    assert!(out.stdout_truncated);
    assert!(out.stdout.len() < 1 << 20 && out.stdout.len() > 1 << 19);
}

#[test]
fn many_connections_run_commands_at_once() {
    let agent = Agent::start();
    let threads: Vec<_> = (0..16)
        .map(|i| {
            let mut c = agent.client();
            std::thread::spawn(move || {
                let out = c
                    .exec(&Exec::new(&["sh", "-c", &format!("sleep 0.5; echo {i}")]))
                    .unwrap();
                assert_eq!(s(&out.stdout), format!("{i}\n"));
            })
        })
        .collect();
    let started = Instant::now();
    for t in threads {
        t.join().unwrap();
    }
    // One after another they would take 8 s.
    assert!(started.elapsed() < Duration::from_secs(6));
}

#[test]
fn health_and_reseed() {
    let agent = Agent::start();
    let mut c = agent.client();
    let before = c.health().unwrap();
    assert_eq!(before.generation, 0);
    assert!(before.uptime_ns > 0);
    if nix::unistd::geteuid().is_root() {
        // The real ioctl and clock call (the host's time ± transit: not stepped).
        c.reseed_fresh(7).unwrap();
        let after = c.health().unwrap();
        assert_eq!(after.generation, 7);
        assert_eq!(after.boot_id, before.boot_id);
    }
}

#[test]
fn sigterm_stops_the_agent_cleanly() {
    let agent = Agent::start();
    let socket = agent.socket.clone();
    let status = agent.terminate();
    assert!(status.success(), "{status:?}");
    assert!(!socket.exists());
}

#[test]
fn sigterm_kills_running_exec_commands() {
    let agent = Agent::start();
    let mut c = agent.client();
    let pidfile = agent.path("exec.pid");
    let script = format!("echo $$ > {}; exec sleep 30", pidfile.display());
    let runner = std::thread::spawn(move || c.exec(&Exec::new(&["sh", "-c", &script])));
    let deadline = Instant::now() + Duration::from_secs(5);
    let pid = loop {
        if let Some(pid) = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            break nix::unistd::Pid::from_raw(pid);
        }
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(agent.terminate().success());
    let deadline = Instant::now() + Duration::from_secs(5);
    while nix::sys::signal::kill(pid, None).is_ok() {
        assert!(
            Instant::now() < deadline,
            "the exec command survived the agent"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The host side sees its connection end.
    assert!(runner.join().unwrap().is_err());
}

#[test]
fn a_host_that_gives_up_gets_its_command_killed() {
    let agent = Agent::start();
    let mut c = agent.client();
    c.set_call_timeout(Duration::from_millis(500));
    let pidfile = agent.path("gave-up.pid");
    let script = format!("echo $$ > {}; exec sleep 30", pidfile.display());
    let err = c.exec(&Exec::new(&["sh", "-c", &script])).unwrap_err();
    assert!(err.is_timeout(), "{err}");
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(pid);
    let deadline = Instant::now() + Duration::from_secs(5);
    while nix::sys::signal::kill(pid, None).is_ok() {
        assert!(
            Instant::now() < deadline,
            "the command outlived the host's interest"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The agent serves on.
    agent.client().ping().unwrap();
}
