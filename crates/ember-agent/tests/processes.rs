//! Background processes against the real agent binary: streamed output while they run, stdin,
//! signals, listing, attaching, exits and time limits.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    missing_docs
)]

mod common;

use std::time::{Duration, Instant};

use common::{Agent, s};
use ember_agent_proto::{ClientError, ErrorCode, OutputStream, ProcessEvent, ProcessStart};

const T: Duration = Duration::from_secs(10);

#[test]
fn output_arrives_in_order_while_the_process_runs() {
    let agent = Agent::start();
    let mut c = agent.client();
    // Runs at least 2.5 s; its first line is due at once.
    let script =
        "for i in 1 2 3 4 5; do echo line$i; echo err$i >&2; sleep 0.1; done; sleep 2; exit 4";
    let argv = ["sh", "-c", script];
    let start = ProcessStart::new(&argv);
    let started_at = Instant::now();
    let mut stream = c.process_start_attached(&start).unwrap();
    assert!(stream.process().pid > 0);
    // Streamed, not gathered at the exit: the first line comes while seconds remain.
    let first = loop {
        match stream.next_event(T).unwrap().unwrap() {
            ProcessEvent::Output {
                stream: OutputStream::Stdout,
                data,
            } => break data,
            ProcessEvent::Output { .. } => {}
            ProcessEvent::Exit { .. } => panic!("exited before any stdout"),
        }
    };
    assert!(s(&first).starts_with("line1"), "{}", s(&first));
    assert!(
        started_at.elapsed() < Duration::from_secs(2),
        "{:?}",
        started_at.elapsed()
    );
    let outcome = stream.wait(T).unwrap();
    let stdout = format!("{}{}", s(&first), s(&outcome.stdout));
    assert_eq!(stdout, "line1\nline2\nline3\nline4\nline5\n");
    assert_eq!(s(&outcome.stderr).lines().last(), Some("err5"));
    assert_eq!((outcome.exit_code, outcome.timed_out), (4, false));
    // The connection is back to request/reply.
    c.ping().unwrap();
}

#[test]
fn stdin_is_written_and_closed() {
    let agent = Agent::start();
    let mut streamer = agent.client();
    let mut control = agent.client();
    let start = ProcessStart::new(&["sh", "-c", "while read l; do echo got:$l; done; echo eof"])
        .with_stdin();
    let mut stream = streamer.process_start_attached(&start).unwrap();
    let handle = stream.process().handle;
    assert_eq!(control.write_stdin(handle, b"one\n", false).unwrap(), 4);
    let mut out = Vec::new();
    while !s(&out).contains("got:one") {
        match stream.next_event(T).unwrap().unwrap() {
            ProcessEvent::Output { data, .. } => out.extend(data),
            ProcessEvent::Exit { .. } => panic!("exited early"),
        }
    }
    let listed = control.process_list().unwrap();
    let me = listed.iter().find(|p| p.handle == handle).unwrap();
    assert!(me.running && me.stdin_open);
    assert_eq!(control.write_stdin(handle, b"two\n", true).unwrap(), 4);
    let outcome = stream.wait(T).unwrap();
    assert_eq!(s(&outcome.stdout), "got:two\neof\n");
    assert_eq!(outcome.exit_code, 0);
    // Exited: no more input.
    let err = control.write_stdin(handle, b"x", false).unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Agent {
                code: ErrorCode::NOT_FOUND,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn a_signal_is_delivered_and_the_exit_says_so() {
    let agent = Agent::start();
    let mut c = agent.client();
    let started = c
        .process_start(&ProcessStart::new(&["sleep", "30"]))
        .unwrap();
    let listed = c.process_list().unwrap();
    let me = listed.iter().find(|p| p.handle == started.handle).unwrap();
    assert_eq!((me.pid, me.running), (started.pid, true));
    assert_eq!(me.argv, vec![b"sleep".to_vec(), b"30".to_vec()]);
    assert!(!me.stdin_open);

    let mut watcher = agent.client();
    let stream = watcher.process_attach(started.handle).unwrap();
    c.process_signal(started.handle, 15, false).unwrap();
    let outcome = stream.wait(T).unwrap();
    assert_eq!(outcome.exit_code, -15);

    let listed = c.process_list().unwrap();
    let me = listed.iter().find(|p| p.handle == started.handle).unwrap();
    assert_eq!((me.running, me.exit_code), (false, -15));
    // Signalling an exited process, or one that never was, is NOT_FOUND.
    for handle in [started.handle, 9999] {
        let err = c.process_signal(handle, 9, true).unwrap_err();
        assert!(
            matches!(
                err,
                ClientError::Agent {
                    code: ErrorCode::NOT_FOUND,
                    ..
                }
            ),
            "{err}"
        );
    }
    // Attaching to an exited process gives its exit at once.
    let outcome = c.process_attach(started.handle).unwrap().wait(T).unwrap();
    assert_eq!(outcome.exit_code, -15);
}

#[test]
fn attach_sees_output_from_now_on() {
    let agent = Agent::start();
    let mut c = agent.client();
    let started = c
        .process_start(&ProcessStart::new(&[
            "sh",
            "-c",
            "echo early; sleep 0.5; echo late; sleep 0.2",
        ]))
        .unwrap();
    std::thread::sleep(Duration::from_millis(250));
    let mut watcher = agent.client();
    let outcome = watcher
        .process_attach(started.handle)
        .unwrap()
        .wait(T)
        .unwrap();
    assert_eq!(s(&outcome.stdout), "late\n");
    assert_eq!(outcome.exit_code, 0);
}

#[test]
fn a_time_limit_kills_the_group_and_the_exit_says_so() {
    let agent = Agent::start();
    let mut c = agent.client();
    let start = ProcessStart::new(&["sh", "-c", "sleep 30 & sleep 30"]).with_timeout_ms(300);
    let begun = Instant::now();
    let outcome = c.process_start_attached(&start).unwrap().wait(T).unwrap();
    assert!(outcome.timed_out);
    assert_eq!(outcome.exit_code, -9);
    assert!(begun.elapsed() < Duration::from_secs(3));
}

#[test]
fn start_errors_are_clear_and_closing_a_stream_leaves_the_process() {
    let agent = Agent::start();
    let mut c = agent.client();
    let err = c
        .process_start(&ProcessStart::new(&["no-such-command-xyz"]))
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Agent {
                code: ErrorCode::NOT_FOUND,
                ..
            }
        ),
        "{err}"
    );
    let err = c
        .process_start(&ProcessStart::new(&["true"]).with_cwd(b"/no/such/dir"))
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Agent {
                code: ErrorCode::NOT_FOUND,
                ..
            }
        ),
        "{err}"
    );

    // A stream whose connection goes away: the process keeps running.
    let handle = {
        let mut gone = agent.client();
        let stream = gone
            .process_start_attached(&ProcessStart::new(&[
                "sh",
                "-c",
                "while true; do echo tick; sleep 0.05; done",
            ]))
            .unwrap();
        stream.process().handle
        // `gone` and its stream drop here: the connection closes.
    };
    std::thread::sleep(Duration::from_millis(300));
    let listed = c.process_list().unwrap();
    assert!(listed.iter().find(|p| p.handle == handle).unwrap().running);
    c.process_signal(handle, 9, true).unwrap();
}

#[test]
fn sigterm_kills_background_processes() {
    let agent = Agent::start();
    let mut c = agent.client();
    let started = c
        .process_start(&ProcessStart::new(&["sleep", "30"]))
        .unwrap();
    drop(c);
    let status = agent.terminate();
    assert!(status.success());
    let pid = nix::unistd::Pid::from_raw(started.pid as i32);
    let deadline = Instant::now() + Duration::from_secs(5);
    // Killed (and, its parent gone, reaped by init): the pid disappears.
    while nix::sys::signal::kill(pid, None).is_ok() {
        assert!(
            Instant::now() < deadline,
            "the background process survived the agent"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_process_on_a_terminal_is_typed_into_and_resized() {
    let agent = Agent::start();
    let mut streamer = agent.client();
    let mut control = agent.client();
    let start = ProcessStart::new(&["sh"]).with_pty(24, 80);
    let mut stream = streamer.process_start_attached(&start).unwrap();
    let handle = stream.process().handle;
    let mut seen = String::new();
    fn wait_for(
        stream: &mut ember_agent_proto::ProcessStream<'_>,
        seen: &mut String,
        needle: &str,
    ) {
        let deadline = Instant::now() + T;
        while !seen.contains(needle) {
            assert!(
                Instant::now() < deadline,
                "never saw {needle:?} in {seen:?}"
            );
            match stream.next_event(Duration::from_millis(200)).unwrap() {
                Some(ProcessEvent::Output {
                    stream: OutputStream::Stdout,
                    data,
                }) => seen.push_str(&s(&data)),
                Some(ProcessEvent::Output { .. }) => panic!("a terminal has no separate stderr"),
                Some(ProcessEvent::Exit { .. }) => panic!("exited early: {seen:?}"),
                None => {}
            }
        }
    }
    control
        .write_stdin(handle, b"tty; stty size; echo T=$TERM\n", false)
        .unwrap();
    wait_for(&mut stream, &mut seen, "T=xterm-256color");
    assert!(seen.contains("/dev/pts/"), "{seen}");
    assert!(seen.contains("24 80"), "{seen}");
    let listed = control.process_list().unwrap();
    assert!(listed.iter().find(|p| p.handle == handle).unwrap().pty);

    control.process_resize(handle, 50, 132).unwrap();
    control.write_stdin(handle, b"stty size\n", false).unwrap();
    wait_for(&mut stream, &mut seen, "50 132");
    // ^D at an empty prompt ends the shell.
    control.write_stdin(handle, b"", true).unwrap();
    let outcome = stream.wait(T).unwrap();
    assert_eq!(outcome.exit_code, 0);

    // Resizing a process without a terminal is refused.
    let plain = control
        .process_start(&ProcessStart::new(&["sleep", "5"]))
        .unwrap();
    let err = control.process_resize(plain.handle, 10, 10).unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Agent {
                code: ErrorCode::INVALID_ARGUMENT,
                ..
            }
        ),
        "{err}"
    );
    control.process_signal(plain.handle, 9, true).unwrap();
}

#[test]
fn a_large_output_streams_whole_and_in_order() {
    let agent = Agent::start();
    let mut c = agent.client();
    // 20 MB of numbered lines: every byte arrives, in order, through frames of the host's size.
    let script = "seq 1 2500000";
    let outcome = c
        .process_start_attached(&ProcessStart::new(&["sh", "-c", script]))
        .unwrap()
        .wait(Duration::from_secs(60))
        .unwrap();
    assert_eq!(outcome.exit_code, 0);
    let text = s(&outcome.stdout);
    let mut expected = 1u64;
    for line in text.lines() {
        assert_eq!(line.parse::<u64>().unwrap(), expected);
        expected += 1;
    }
    assert_eq!(expected, 2_500_001);
}
