//! Sandboxes outlive their daemon: 50 running sandboxes keep running and answering exec across
//! a graceful restart (SIGTERM) and across `kill -9`; paused ones stay paused; deadlines and
//! pool membership survive; a VMM that dies while the daemon is down is reported with its
//! cause at the next start; one that dies while it is up is noticed at once. At the end nothing
//! is orphaned: no VMM process, no slot directory, no store row without an owner.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Daemon, create, fill_pool, probe_template, run, runtime};
use ember_core::{EndCause, SandboxState, VmRecord};
use emberd::client::Client;

const N: usize = 50;

/// Every sandbox in `ids` answers `cat /id` with its own id; returns how long that took.
async fn all_answer(c: &Arc<Client>, ids: &[String]) -> Duration {
    let t0 = Instant::now();
    let tasks: Vec<_> = ids
        .iter()
        .map(|id| {
            let (c, id) = (Arc::clone(c), id.clone());
            tokio::spawn(async move {
                let (code, out) = run(&c, &id, &["cat", "/id"]).await.unwrap();
                assert_eq!((code, out.as_str()), (0, id.as_str()));
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    t0.elapsed()
}

#[test]
fn sandboxes_survive_sigterm_and_kill_9() {
    let mut d = Daemon::started();
    let rt = runtime();
    let c = Arc::new(d.client());
    let (ids, paused, doomed) = rt.block_on(async {
        c.build_template(&probe_template("probe")).await.unwrap();
        fill_pool(&c, "probe", 4).await;
        let mut ids = Vec::new();
        for _ in 0..N {
            let sb = c.create_sandbox(&create("probe")).await.unwrap();
            let id = sb.id.to_string();
            c.put_file(&id, "/id", None, id.clone().into_bytes())
                .await
                .unwrap();
            ids.push(id);
        }
        let paused: Vec<String> = ids[..5].to_vec();
        for id in &paused {
            c.pause(id, true).await.unwrap();
        }
        // One that times out while the daemon is down.
        let mut short = create("probe");
        short.timeout_secs = Some(2);
        let doomed = c.create_sandbox(&short).await.unwrap().id.to_string();
        // The pool refilled (a restore under way at SIGTERM is not left running).
        fill_pool(&c, "probe", 4).await;
        (ids, paused, doomed)
    });
    let running: Vec<String> = ids[5..].to_vec();
    let vmms_before = d.vmm_pids().len();

    // Graceful restart: the VMs keep running through it.
    assert!(d.term(), "SIGTERM exits cleanly:\n{}", d.log_text());
    let left = d.vmm_pids().len();
    assert!(
        left >= N + 1 + 4,
        "sandboxes and pooled VMs outlive the daemon ({left} left, {vmms_before} before)"
    );
    std::thread::sleep(Duration::from_secs(2));
    let up = d.start();
    let answered = rt.block_on(all_answer(&c, &running));
    eprintln!(
        "after SIGTERM: serving in {up:?}, {} sandboxes answered exec {answered:?} later",
        running.len()
    );
    rt.block_on(async {
        for id in &paused {
            assert_eq!(c.sandbox(id).await.unwrap().state, SandboxState::Paused);
        }
        // Its deadline passed while the daemon was down: it ends as timed out.
        let t0 = Instant::now();
        loop {
            let s = c.sandbox(&doomed).await.unwrap();
            if s.state == SandboxState::Ended {
                assert_eq!(s.end.unwrap().cause, EndCause::TimedOut);
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(10));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The pool's VMs were taken back, not restored again.
        let p = c.pool("probe").await.unwrap();
        assert_eq!(p.depth, 4, "{p:?}");
        let m = c.metrics().await.unwrap();
        assert!(
            m.contains("ember_pool_created_total 0"),
            "no refill was needed:\n{m}"
        );
    });

    // A sandbox's VMM dies while the daemon is down.
    let victim = running[0].clone();
    let victim_pid = d
        .store()
        .get::<VmRecord>(&victim)
        .unwrap()
        .unwrap()
        .record
        .process
        .identity
        .pid;
    d.kill9();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim_pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let up = d.start();
    let alive: Vec<String> = running[1..].to_vec();
    let answered = rt.block_on(all_answer(&c, &alive));
    eprintln!(
        "after kill -9: serving in {up:?}, {} sandboxes answered exec {answered:?} later",
        alive.len()
    );
    rt.block_on(async {
        let s = c.sandbox(&victim).await.unwrap();
        assert_eq!(s.state, SandboxState::Ended);
        let end = s.end.unwrap();
        assert_eq!(end.cause, EndCause::VmExited);
        assert!(end.message.contains("gone"), "{}", end.message);
        for id in &paused {
            c.pause(id, false).await.unwrap();
            assert_eq!(run(&c, id, &["cat", "/id"]).await.unwrap().1, *id);
        }

        // A VMM that dies while the daemon runs is noticed at once.
        let victim = alive[0].clone();
        let pid = d
            .store()
            .get::<VmRecord>(&victim)
            .unwrap()
            .unwrap()
            .record
            .process
            .identity
            .pid;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let t0 = Instant::now();
        loop {
            let s = c.sandbox(&victim).await.unwrap();
            if s.state == SandboxState::Ended {
                assert_eq!(s.end.unwrap().cause, EndCause::VmExited);
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(10));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // Everything goes through the API: nothing is left.
        for id in ids.iter() {
            c.kill(id).await.unwrap();
        }
        c.delete_pool("probe").await.unwrap();
    });
    assert!(d.term());
    assert!(d.vmm_pids().is_empty(), "{:?}", d.vmm_pids());
    assert!(d.slots().is_empty(), "{:?}", d.slots());
    let store = d.store();
    assert!(store.list::<VmRecord>().unwrap().is_empty());
    assert!(store.integrity_check().unwrap().is_empty());
}
