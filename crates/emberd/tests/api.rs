//! emberd end to end over HTTP, as a platform's code drives it: a real daemon process, real
//! probe guests on KVM, its Unix socket (and TCP with a token). Template build, a pool filled,
//! 32 concurrent creates that each exec, files in and out, exit codes and stderr, listing with
//! filters and pages, pause/resume, a timeout that fires and one that is extended, kill — and
//! `/metrics`, parsed with a Prometheus text parser, counting exactly what the test did.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Daemon, create, fill_pool, probe_template, run, runtime};
use ember_core::{EndCause, SandboxState, TemplateState};
use emberd::client::{Client, Endpoint};
use hyper::StatusCode;

fn scrape(text: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap()
}

/// The value of counter/gauge `name` with all of `labels`.
fn value(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == name)
        .filter(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            _ => 0.0,
        })
        .sum()
}

/// The sample count of histogram `name` with `labels`.
fn histogram_count(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == name)
        .filter(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            prometheus_parse::Value::Histogram(b) => b.iter().map(|h| h.count).fold(0.0, f64::max),
            _ => 0.0,
        })
        .sum()
}

#[test]
fn sandboxes_end_to_end_with_metrics_that_match() {
    let d = Daemon::started();
    let rt = runtime();
    rt.block_on(async {
        let c = Arc::new(d.client());
        let t = c.build_template(&probe_template("probe")).await.unwrap();
        assert_eq!(t.state, TemplateState::Ready);
        assert!(t.snapshot.is_some());
        fill_pool(&c, "probe", 8).await;

        // 32 concurrent creates, each running a command in its sandbox.
        let tasks: Vec<_> = (0..32)
            .map(|i| {
                let c = Arc::clone(&c);
                tokio::spawn(async move {
                    let mut req = create("probe");
                    req.labels.insert("n".into(), i.to_string());
                    req.labels
                        .insert("team".into(), if i % 2 == 0 { "a" } else { "b" }.into());
                    let sb = c.create_sandbox(&req).await.unwrap();
                    let word = format!("w{i}");
                    let out = run(&c, sb.id.as_str(), &["echo", "hi", &word])
                        .await
                        .unwrap();
                    (sb, out, word)
                })
            })
            .collect();
        let mut made = Vec::new();
        for t in tasks {
            let (sb, (code, out), word) = t.await.unwrap();
            assert_eq!(code, 0);
            assert_eq!(out, format!("hi {word}\n"));
            assert_eq!(sb.state, SandboxState::Running);
            made.push(sb);
        }
        let warm = made
            .iter()
            .filter(|s| s.start.is_some_and(|st| st.warm))
            .count();
        assert!(warm >= 1, "some creates were served by the pool");

        // Files in and out, byte for byte, and through the guest's own `cat`.
        let id = made[0].id.to_string();
        let data: Vec<u8> = (0..50_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        c.put_file(&id, "/data.bin", Some(0o600), data.clone())
            .await
            .unwrap();
        assert_eq!(c.get_file(&id, "/data.bin").await.unwrap(), data);
        c.put_file(&id, "/t.txt", None, b"text in a file\n".to_vec())
            .await
            .unwrap();
        assert_eq!(
            run(&c, &id, &["cat", "/t.txt"]).await.unwrap().1,
            "text in a file\n"
        );
        let err = c.get_file(&id, "/missing").await.unwrap_err();
        assert_eq!(err.status(), Some(StatusCode::NOT_FOUND), "{err}");

        // Exit codes, stderr and a missing program.
        assert_eq!(run(&c, &id, &["exit", "7"]).await.unwrap().0, 7);
        let mut stderr = Vec::new();
        c.exec(&id, &common::exec(&["stderr", "oops", "x"]), |ev| {
            if let emberd::api::sandboxes::ExecEvent::Stderr { data, encoding } = ev {
                stderr.extend(emberd::api::sandboxes::ExecEvent::bytes(data, *encoding).unwrap());
            }
        })
        .await
        .unwrap();
        assert_eq!(stderr, b"oops x\n");
        let err = run(&c, &id, &["no-such-program"]).await.unwrap_err();
        assert!(err.contains("no such command"), "{err}");

        // Listing: filters combine, pages follow the cursor.
        let page = c.sandboxes("label=team%3Da&limit=5").await.unwrap();
        assert_eq!(page.items.len(), 5);
        let mut all_a = page.items;
        let mut cursor = page.next_cursor;
        while let Some(cur) = cursor {
            let p = c
                .sandboxes(&format!("label=team%3Da&limit=5&cursor={cur}"))
                .await
                .unwrap();
            all_a.extend(p.items);
            cursor = p.next_cursor;
        }
        assert_eq!(all_a.len(), 16);
        assert!(all_a.iter().all(|s| s.labels["team"] == "a"));
        let one = c
            .sandboxes("label=n%3D3&state=running&template=probe")
            .await
            .unwrap();
        assert_eq!(one.items.len(), 1);
        assert_eq!(one.items[0].labels["n"], "3");

        // Pause and resume in memory.
        let sb = c.pause(&id, true).await.unwrap();
        assert_eq!(sb.state, SandboxState::Paused);
        let err = run(&c, &id, &["echo", "x"]).await.unwrap_err();
        assert!(err.contains("paused"), "{err}");
        let sb = c.pause(&id, false).await.unwrap();
        assert_eq!(sb.state, SandboxState::Running);
        assert_eq!(
            run(&c, &id, &["cat", "/t.txt"]).await.unwrap().1,
            "text in a file\n"
        );

        // A time limit that fires, and one extended before it would.
        let mut short = create("probe");
        short.timeout_secs = Some(1);
        let doomed = c.create_sandbox(&short).await.unwrap();
        let saved = c.create_sandbox(&short).await.unwrap();
        let extended = c.set_timeout(saved.id.as_str(), 600).await.unwrap();
        assert_eq!(extended.timeout_secs, Some(600));
        let t0 = Instant::now();
        let ended = loop {
            let s = c.sandbox(doomed.id.as_str()).await.unwrap();
            if s.state == SandboxState::Ended {
                break s;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "the timeout never fired"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(ended.end.as_ref().unwrap().cause, EndCause::TimedOut);
        let err = run(&c, doomed.id.as_str(), &["echo"]).await.unwrap_err();
        assert!(err.contains("ended"), "{err}");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(
            c.sandbox(saved.id.as_str()).await.unwrap().state,
            SandboxState::Running
        );

        // Kill: the record says so, the VM is gone, killing again changes nothing.
        let killed = c.kill(made[1].id.as_str()).await.unwrap();
        assert_eq!(killed.end.as_ref().unwrap().cause, EndCause::Killed);
        let again = c.kill(made[1].id.as_str()).await.unwrap();
        assert_eq!(again.end, killed.end);
        let err = run(&c, made[1].id.as_str(), &["echo"]).await.unwrap_err();
        assert!(err.contains("ended"), "{err}");

        // The metrics count exactly this.
        let m = scrape(&c.metrics().await.unwrap());
        let creates = 32.0 + 2.0;
        assert_eq!(
            value(&m, "ember_sandboxes_created_total", &[("path", "warm")])
                + value(&m, "ember_sandboxes_created_total", &[("path", "cold")]),
            creates
        );
        assert_eq!(
            histogram_count(&m, "ember_sandbox_create_duration_seconds", &[]),
            creates
        );
        assert_eq!(
            value(&m, "ember_sandboxes_ended_total", &[("cause", "killed")]),
            1.0
        );
        assert_eq!(
            value(&m, "ember_sandboxes_ended_total", &[("cause", "timed_out")]),
            1.0
        );
        assert_eq!(
            value(
                &m,
                "ember_http_requests_total",
                &[
                    ("method", "POST"),
                    ("route", "/v1/sandboxes"),
                    ("status", "201")
                ]
            ),
            creates
        );
        assert_eq!(
            histogram_count(
                &m,
                "ember_http_request_duration_seconds",
                &[("method", "POST"), ("route", "/v1/sandboxes")]
            ),
            creates
        );
        assert_eq!(value(&m, "ember_sandboxes", &[("state", "running")]), 32.0);
        assert_eq!(value(&m, "ember_pool_depth", &[]), 8.0);
        assert!(value(&m, "ember_vms", &[("state", "running")]) >= 40.0);
        assert!(histogram_count(&m, "ember_store_commit_duration_seconds", &[]) > 0.0);
        let acquired = value(&m, "ember_pool_acquired_total", &[]);
        assert_eq!(
            acquired,
            warm as f64
                + f64::from(u8::from(doomed.start.unwrap().warm))
                + f64::from(u8::from(saved.start.unwrap().warm))
        );

        // The raw VM view sees every VM; a sandbox's VM cannot be destroyed through it.
        let vms = c.vms().await.unwrap();
        assert!(vms.iter().any(|v| v.id.as_str() == id));
        let info = c.info().await.unwrap();
        assert!(info.kvm);
        assert_eq!(info.capacity.sandboxes_running, 32);

        // Clean up through the API: nothing of the sandboxes stays.
        for sb in &made {
            c.kill(sb.id.as_str()).await.unwrap();
        }
        c.kill(saved.id.as_str()).await.unwrap();
        c.delete_pool("probe").await.unwrap();
        let err = c.delete_pool("probe").await.unwrap_err();
        assert_eq!(err.status(), Some(StatusCode::NOT_FOUND));
        c.delete_template("probe").await.unwrap();
        assert!(c.templates().await.unwrap().is_empty());
    });
    // Only spares are left (2), and SIGTERM stops the daemon cleanly.
    let t0 = Instant::now();
    while d.slots().len() > 2 && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(d.slots().len() <= 2, "{:?}", d.slots());
    let mut d = d;
    assert!(d.term());
    assert!(d.vmm_pids().is_empty(), "{:?}", d.vmm_pids());
}

#[test]
fn tcp_needs_the_bearer_token() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut d = Daemon::new();
    let token_file = d.dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token-0123456789\n").unwrap();
    d.extra = vec![
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        "--token-file".into(),
        token_file.display().to_string(),
    ];
    d.start();
    let rt = runtime();
    rt.block_on(async {
        let addr = format!("127.0.0.1:{port}");
        let none = Client::new(Endpoint::Tcp {
            addr: addr.clone(),
            token: None,
        });
        let err = none.templates().await.unwrap_err();
        assert_eq!(err.status(), Some(StatusCode::UNAUTHORIZED), "{err}");
        assert!(err.to_string().contains("Bearer"), "{err}");
        let wrong = Client::new(Endpoint::Tcp {
            addr: addr.clone(),
            token: Some("s3cret-token-0123456788".into()),
        });
        let err = wrong.healthz().await.unwrap_err();
        assert_eq!(err.status(), Some(StatusCode::UNAUTHORIZED));
        let right = Client::new(Endpoint::Tcp {
            addr,
            token: Some("s3cret-token-0123456789".into()),
        });
        right.healthz().await.unwrap();
        assert!(right.templates().await.unwrap().is_empty());
        // The Unix socket needs no token (its file mode guards it).
        d.client().templates().await.unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(d.socket()).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o660);
    });
}

#[test]
fn two_daemons_side_by_side_and_one_state_dir_is_one_daemon() {
    let a = Daemon::started();
    let b = Daemon::started();
    let rt = runtime();
    rt.block_on(async {
        a.client()
            .build_template(&probe_template("one"))
            .await
            .unwrap();
        b.client()
            .build_template(&probe_template("two"))
            .await
            .unwrap();
        let names = |ts: Vec<ember_core::Template>| {
            ts.into_iter()
                .map(|t| t.name.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(a.client().templates().await.unwrap()), ["one"]);
        assert_eq!(names(b.client().templates().await.unwrap()), ["two"]);
    });
    // A second daemon on a's state directory is refused, naming it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_emberd"))
        .arg("--socket")
        .arg(a.dir.path().join("other.sock"))
        .arg("--state-dir")
        .arg(a.state())
        .arg("--runtime-dir")
        .arg(a.runtime.path().join("x"))
        .arg("--vmm")
        .arg(ember_test_support::vmm_bin())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("another emberd uses the state directory"),
        "{err}"
    );
}
