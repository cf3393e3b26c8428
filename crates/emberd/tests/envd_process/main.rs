//! envd's `process.Process` service against the real `ember-agent`, run on the host behind a
//! hybrid-vsock Unix socket (what a sandbox's vsock socket is): the Connect-RPC JSON endpoints
//! driven as the `e2b` SDK drives them (unary `application/json`; streams in
//! `application/connect+json` envelopes), over HTTP/1.1 to the service's router.
//!
//! Covered: output streamed as it comes, exit codes and statuses, keepalives, a background
//! process listed (config, pid, tag), connected to by pid and by tag, and killed; stdin kept open
//! (SendInput, StreamInput, CloseStdin) or closed by default; a reconnect after the starting
//! client went; a PTY typed into and resized; unknown processes answering not_found; an agent
//! without background processes (the reference test agent, as the probe guest) getting Start
//! through Exec and nothing else. `E2b-Sandbox-Port` forwarding: HTTP to a TCP server on the
//! loopback through the agent's TcpConnect, a closed port answering E2B's "port is not open",
//! and the vsock fallback for an agent without TcpConnect. Then the unmodified `e2b` SDK (the venv of scripts/setup.sh,
//! or `$EMBER_E2B_PYTHON`) runs its commands and PTY calls against the same rig
//! (`tests/e2b/sdk_process.py`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod client;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use client::{Events, Msg, WAIT, b64, enc, envelope, python, rig, send, start, start_req, unary};
use http_body_util::BodyExt as _;
use serde_json::json;

/// A command the client names no user for runs as E2B's default user, `user`, in its home.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_run_as_the_default_user_in_its_home() {
    let r = rig().await;
    let mut ev = start(
        r.addr,
        start_req("/bin/sh", &["-c", "echo $USER; id -u; pwd"]),
    )
    .await;
    ev.pid().await;
    let (out, ..) = ev.rest().await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..2], ["user", "1000"], "{out}");
    assert!(lines[2].ends_with("/home-user"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_streams_output_as_it_comes_and_ends_like_envd() {
    let r = rig().await;
    let mut ev = start(
        r.addr,
        start_req("/bin/sh", &["-c", "echo a; sleep 1.5; echo b >&2"]),
    )
    .await;
    let t0 = Instant::now();
    ev.pid().await;
    let first = ev.event().await;
    assert_eq!(b64(first["data"]["stdout"].as_str().unwrap()), b"a\n");
    let a_at = t0.elapsed();
    let second = ev.event().await;
    assert_eq!(b64(second["data"]["stderr"].as_str().unwrap()), b"b\n");
    let b_at = t0.elapsed();
    assert!(
        b_at - a_at >= Duration::from_millis(1000),
        "'a' came at {a_at:?}, 'b' at {b_at:?}: not streamed"
    );
    let (.., end, fin) = ev.rest().await;
    assert_eq!(end, json!({"exited": true, "status": "exit status 0"}));
    assert_eq!(fin, json!({}));

    let mut ev = start(r.addr, start_req("/bin/sh", &["-c", "exit 3"])).await;
    ev.pid().await;
    let (.., end, _) = ev.rest().await;
    assert_eq!(
        end,
        json!({"exitCode": 3, "exited": true, "status": "exit status 3", "error": "exit status 3"})
    );

    // Keepalives at the asked interval; envs and cwd reach the process.
    let mut req = start_req("/bin/sh", &["-c", "sleep 2.5; echo \"$X\"; pwd"]);
    req["process"]["envs"] = json!({"X": "from-envs"});
    req["process"]["cwd"] = json!("/");
    let mut ev = Events::open(r.addr, "Start", req, &[("keepalive-ping-interval", "1")]).await;
    ev.pid().await;
    let mut keepalives = 0;
    let mut out = Vec::new();
    loop {
        match ev.next(WAIT).await.unwrap() {
            Msg::Event(e) if !e["keepalive"].is_null() => keepalives += 1,
            Msg::Event(e) if !e["data"].is_null() => {
                out.extend(b64(e["data"]["stdout"].as_str().unwrap()))
            }
            Msg::Event(_) => {}
            Msg::End(_) => break,
        }
    }
    assert!(keepalives >= 1, "no keepalive in 2.5 s at a 1 s interval");
    assert_eq!(String::from_utf8_lossy(&out), "from-envs\n/\n");

    // The stream's `connect-timeout-ms` is the command's time limit, as envd makes it.
    let t0 = Instant::now();
    let mut ev = Events::open(
        r.addr,
        "Start",
        start_req("/bin/sleep", &["30"]),
        &[("connect-timeout-ms", "500")],
    )
    .await;
    ev.pid().await;
    let (.., end, _) = ev.rest().await;
    assert_eq!(end["status"], "signal: killed", "{end}");
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_process_is_listed_connected_by_tag_and_killed() {
    let r = rig().await;
    let mut req = start_req("/bin/sh", &["-c", "echo up; sleep 30"]);
    req["tag"] = json!("web");
    req["process"]["cwd"] = json!("/tmp");
    let mut ev = start(r.addr, req).await;
    let pid = ev.pid().await;
    ev.until("up").await;

    let (status, list) = unary(r.addr, "List", json!({})).await;
    assert_eq!(status, 200);
    let procs = list["processes"].as_array().unwrap();
    assert_eq!(procs.len(), 1, "{list}");
    assert_eq!(procs[0]["pid"], pid);
    assert_eq!(procs[0]["tag"], "web");
    assert_eq!(
        procs[0]["config"],
        json!({"cmd": "/bin/sh", "args": ["-c", "echo up; sleep 30"], "envs": {}, "cwd": "/tmp"})
    );

    let mut by_tag = Events::open(r.addr, "Connect", json!({"process": {"tag": "web"}}), &[]).await;
    assert_eq!(by_tag.pid().await, pid);

    let (status, body) = unary(
        r.addr,
        "SendSignal",
        json!({"process": {"pid": pid}, "signal": "SIGNAL_SIGKILL"}),
    )
    .await;
    assert_eq!((status, body), (200, json!({})));
    for ev in [&mut ev, &mut by_tag] {
        let (.., end, fin) = ev.rest().await;
        assert_eq!(end["status"], "signal: killed");
        assert_eq!(end["exited"], false);
        assert_eq!(fin, json!({}));
    }
    // Its tag is forgotten once it exited (before any List).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, _) = unary(
            r.addr,
            "SendSignal",
            json!({"process": {"tag": "web"}, "signal": "SIGNAL_SIGKILL"}),
        )
        .await;
        if status == 404 {
            break;
        }
        assert!(Instant::now() < deadline, "the tag outlived its process");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, list) = unary(r.addr, "List", json!({})).await;
    assert_eq!(list, json!({"processes": []}));
    let (status, body) = unary(
        r.addr,
        "SendSignal",
        json!({"process": {"pid": pid}, "signal": "SIGNAL_SIGTERM"}),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["code"], "not_found");

    // SIGTERM by tag.
    let mut req = start_req("/bin/sleep", &["30"]);
    req["tag"] = json!("t2");
    let mut ev = start(r.addr, req).await;
    ev.pid().await;
    let (status, _) = unary(
        r.addr,
        "SendSignal",
        json!({"process": {"tag": "t2"}, "signal": "SIGNAL_SIGTERM"}),
    )
    .await;
    assert_eq!(status, 200);
    let (.., end, _) = ev.rest().await;
    assert_eq!(end["status"], "signal: terminated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_is_open_only_when_asked_and_takes_input_until_closed() {
    let r = rig().await;
    // e2b's default: no stdin, so `cat` reads end-of-file at once.
    let mut ev = start(r.addr, start_req("/bin/cat", &[])).await;
    ev.pid().await;
    let (out, _, _, end, _) = ev.rest().await;
    assert_eq!(
        (out.as_str(), &end["status"]),
        ("", &json!("exit status 0"))
    );

    let mut req = start_req("/bin/cat", &[]);
    req["stdin"] = json!(true);
    let mut ev = start(r.addr, req).await;
    let pid = ev.pid().await;
    let (status, body) = unary(
        r.addr,
        "SendInput",
        json!({"process": {"pid": pid}, "input": {"stdin": enc(b"hello\n")}}),
    )
    .await;
    assert_eq!((status, body), (200, json!({})));
    ev.until("hello\n").await;

    // StreamInput: a client stream of start, data, keepalive, data, then its end.
    let mut body = envelope(0, &json!({"start": {"process": {"pid": pid}}}));
    body.extend(envelope(
        0,
        &json!({"data": {"input": {"stdin": enc(b"one ")}}}),
    ));
    body.extend(envelope(0, &json!({"keepalive": {}})));
    body.extend(envelope(
        0,
        &json!({"data": {"input": {"stdin": enc(b"two\n")}}}),
    ));
    body.extend(envelope(2, &json!({})));
    let resp = send(r.addr, "StreamInput", "application/connect+json", body, &[]).await;
    assert_eq!(resp.status().as_u16(), 200);
    let got = resp.into_body().collect().await.unwrap().to_bytes();
    let mut want = envelope(0, &json!({}));
    want.extend(envelope(2, &json!({})));
    assert_eq!(got.to_vec(), want);
    ev.until("one two\n").await;

    let (status, _) = unary(r.addr, "CloseStdin", json!({"process": {"pid": pid}})).await;
    assert_eq!(status, 200);
    let (.., end, _) = ev.rest().await;
    assert_eq!(end["status"], "exit status 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_after_the_starting_client_went_gets_later_output_and_the_end() {
    let r = rig().await;
    let mut req = start_req("/bin/sh", &["-c", "read x; echo got $x; exit 4"]);
    req["stdin"] = json!(true);
    let mut ev = start(r.addr, req).await;
    let pid = ev.pid().await;
    drop(ev);
    // The process outlives its starting stream.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, list) = unary(r.addr, "List", json!({})).await;
    assert_eq!(list["processes"][0]["pid"], pid, "{list}");

    let mut ev = Events::open(r.addr, "Connect", json!({"process": {"pid": pid}}), &[]).await;
    assert_eq!(ev.pid().await, pid);
    let (status, _) = unary(
        r.addr,
        "SendInput",
        json!({"process": {"pid": pid}, "input": {"stdin": enc(b"it\n")}}),
    )
    .await;
    assert_eq!(status, 200);
    let (out, _, _, end, _) = ev.rest().await;
    assert_eq!(out, "got it\n");
    assert_eq!(end["exitCode"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pty_takes_input_and_resizes() {
    let r = rig().await;
    let mut req = start_req("/bin/sh", &[]);
    req["pty"] = json!({"size": {"cols": 80, "rows": 24}});
    req["process"]["envs"] = json!({"PS1": "$ "});
    let mut ev = start(r.addr, req).await;
    let pid = ev.pid().await;
    let typed = |s: &str| json!({"process": {"pid": pid}, "input": {"pty": enc(s.as_bytes())}});
    let (status, _) = unary(r.addr, "SendInput", typed("stty size\n")).await;
    assert_eq!(status, 200);
    ev.until("24 80").await;

    let (status, body) = unary(
        r.addr,
        "Update",
        json!({"process": {"pid": pid}, "pty": {"size": {"cols": 100, "rows": 30}}}),
    )
    .await;
    assert_eq!((status, body), (200, json!({})));
    unary(r.addr, "SendInput", typed("stty size\n")).await;
    ev.until("30 100").await;

    // Terminal output is `pty` data, never stdout.
    unary(r.addr, "SendInput", typed("exit 5\n")).await;
    let (out, err, _, end, _) = ev.rest().await;
    assert_eq!((out.as_str(), err.as_str()), ("", ""));
    assert_eq!(end["exitCode"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_processes_are_not_found() {
    let r = rig().await;
    for (method, body) in [
        (
            "SendSignal",
            json!({"process": {"pid": 4242}, "signal": "SIGNAL_SIGKILL"}),
        ),
        (
            "SendInput",
            json!({"process": {"pid": 4242}, "input": {"stdin": "eA=="}}),
        ),
        ("CloseStdin", json!({"process": {"pid": 4242}})),
        (
            "Update",
            json!({"process": {"pid": 4242}, "pty": {"size": {"cols": 1, "rows": 1}}}),
        ),
        (
            "SendSignal",
            json!({"process": {"tag": "nope"}, "signal": "SIGNAL_SIGKILL"}),
        ),
    ] {
        let (status, v) = unary(r.addr, method, body).await;
        assert_eq!(
            (status, v["code"].as_str()),
            (404, Some("not_found")),
            "{method}: {v}"
        );
    }
    for sel in [json!({"pid": 4242}), json!({"tag": "nope"})] {
        let mut ev = Events::open(r.addr, "Connect", json!({"process": sel}), &[]).await;
        match ev.next(WAIT).await {
            Some(Msg::End(v)) => assert_eq!(v["error"]["code"], "not_found", "{v}"),
            other => panic!("{other:?}"),
        }
    }
    // A program or directory that is not there fails the stream as envd's spawn errors do.
    let mut req = start_req("/bin/true", &[]);
    req["process"]["cwd"] = json!("/no/such/dir");
    for req in [start_req("/no/such/program", &[]), req] {
        let mut ev = start(r.addr, req).await;
        match ev.next(WAIT).await {
            Some(Msg::End(v)) => assert_eq!(v["error"]["code"], "invalid_argument", "{v}"),
            other => panic!("{other:?}"),
        }
    }
    // Signals other than SIGTERM and SIGKILL are not envd's.
    let (status, v) = unary(
        r.addr,
        "SendSignal",
        json!({"process": {"pid": 1}, "signal": 2}),
    )
    .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (501, Some("unimplemented")),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_without_background_processes_runs_start_through_exec() {
    // The reference test agent answers Process* with Unsupported, as the probe guest does.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("probe.sock");
    let agent =
        ember_agent_proto::test_agent::TestAgent::start(&socket, Default::default()).unwrap();
    let addr = client::serve(&socket).await;
    for round in 0..2 {
        let mut ev = start(addr, start_req("echo", &["hi"])).await;
        ev.pid().await;
        let (out, _, _, end, fin) = ev.rest().await;
        assert_eq!(
            (out.as_str(), &end, &fin),
            (
                "hi\n",
                &json!({"exited": true, "status": "exit status 0"}),
                &json!({})
            )
        );
        if round == 0 {
            // Later Starts go straight to Exec on the kept connection: no new one.
            let before = agent.connections();
            let mut ev = start(addr, start_req("echo", &["again"])).await;
            ev.pid().await;
            assert_eq!(ev.rest().await.0, "again\n");
            assert_eq!(agent.connections(), before);
        }
    }
    let (_, list) = unary(addr, "List", json!({})).await;
    assert_eq!(list, json!({"processes": []}));
    let (status, v) = unary(
        addr,
        "SendSignal",
        json!({"process": {"pid": 5}, "signal": "SIGNAL_SIGKILL"}),
    )
    .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (404, Some("not_found")),
        "{v}"
    );
    let mut req = start_req("cat", &[]);
    req["stdin"] = json!(true);
    let mut ev = start(addr, req).await;
    match ev.next(WAIT).await {
        Some(Msg::End(v)) => assert_eq!(v["error"]["code"], "unimplemented", "{v}"),
        other => panic!("{other:?}"),
    }
}

/// A tiny HTTP server on the host's loopback (the agent runs on the host here, so its
/// 127.0.0.1 is this one): HTTP/1.0 as `python3 -m http.server` speaks it, answering
/// `<method> <target> <body>` and closing. Returns its port.
fn http_server() -> u16 {
    use std::io::{BufRead as _, BufReader, Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { return };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut request_line = String::new();
            r.read_line(&mut request_line).unwrap();
            let mut len = 0usize;
            let mut host = String::new();
            loop {
                let mut l = String::new();
                r.read_line(&mut l).unwrap();
                if l == "\r\n" || l.is_empty() {
                    break;
                }
                let lower = l.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
                if let Some(v) = lower.strip_prefix("host:") {
                    host = v.trim().to_string();
                }
            }
            let mut body = vec![0u8; len];
            r.read_exact(&mut body).unwrap();
            let mut words = request_line.split_whitespace();
            let (method, target) = (words.next().unwrap(), words.next().unwrap());
            let reply = format!("{method} {target} {}", String::from_utf8_lossy(&body));
            write!(
                s,
                "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nX-Host: {host}\r\n\r\n{reply}"
            )
            .unwrap();
        }
    });
    port
}

/// An HTTP request to envd's endpoint with E2B's routing headers for `port`.
async fn to_port(
    addr: std::net::SocketAddr,
    port: u16,
    method: &str,
    target: &str,
    body: &'static str,
) -> (u16, hyper::HeaderMap, String) {
    use http_body_util::Full;
    use hyper::body::Bytes;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .method(method)
        .uri(target)
        .header("host", format!("{port}-sb.e2b.local"))
        .header("e2b-sandbox-id", "sb")
        .header("e2b-sandbox-port", port.to_string())
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    let resp = tokio::time::timeout(WAIT, sender.send_request(req))
        .await
        .expect("no answer in time")
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = tokio::time::timeout(WAIT, resp.into_body().collect())
        .await
        .expect("the body never ended")
        .unwrap()
        .to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

/// A free port on the loopback (bound, then let go).
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// `E2b-Sandbox-Port` other than envd's reaches a TCP server inside the guest through the
/// agent's TcpConnect; a port nothing listens on answers as E2B's proxy does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_port_reaches_a_tcp_server_through_the_agent() {
    let r = rig().await;
    let port = http_server();
    // A close-delimited HTTP/1.0 answer, as python's http.server gives.
    let (status, headers, body) = to_port(r.addr, port, "GET", "/dir/?q=1", "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["content-type"], "text/plain");
    assert_eq!(headers["x-host"], "localhost");
    assert_eq!(body, "GET /dir/?q=1 ");
    // A body goes through too, and each request gets a pipe of its own.
    for i in 0..3 {
        let (status, _, body) = to_port(r.addr, port, "POST", "/echo", "payload").await;
        assert_eq!(
            (status, body.as_str()),
            (200, "POST /echo payload"),
            "round {i}"
        );
    }

    let closed = closed_port();
    let (status, _, body) = to_port(r.addr, closed, "GET", "/", "").await;
    assert_eq!(status, 502, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v,
        json!({
            "sandboxId": "sb",
            "message": "The sandbox is running but port is not open",
            "code": 502,
        })
    );
    // The agent is still fine after the pipes and the refusal.
    let (status, _) = unary(r.addr, "List", json!({})).await;
    assert_eq!(status, 200);
}

/// An agent without TcpConnect (the reference test agent, as the probe guest) answers
/// Unsupported: the port is dialed over vsock instead, and nothing listens there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_without_tcp_connect_falls_back_to_vsock() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("probe.sock");
    let agent =
        ember_agent_proto::test_agent::TestAgent::start(&socket, Default::default()).unwrap();
    let addr = client::serve(&socket).await;
    let port = http_server();
    let before = agent.connections();
    let (status, _, body) = to_port(addr, port, "GET", "/", "").await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("port is not open"), "{body}");
    // One agent connection for the TcpConnect, one vsock dial of the port itself.
    assert_eq!(agent.connections(), before + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_e2b_sdk_runs_commands_and_ptys_through_the_service() {
    let r = rig().await;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/e2b/sdk_process.py");
    let out = tokio::process::Command::new(python())
        .arg(&script)
        .env("E2B_SANDBOX_URL", format!("http://{}", r.addr))
        .env("EMBER_ENVD_VERSION", emberd::e2b::model::ENVD_VERSION)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the SDK script failed:\n{stdout}\n{stderr}"
    );
    for line in [
        "run ok",
        "background ok",
        "stdin ok",
        "connect ok",
        "pty ok",
        "port ok",
    ] {
        assert!(stdout.contains(line), "no {line:?} in:\n{stdout}");
    }
}
