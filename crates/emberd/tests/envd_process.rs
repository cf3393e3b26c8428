//! envd's `process.Process` service against the real `ember-agent`, run on the host behind a
//! hybrid-vsock Unix socket (what a sandbox's vsock socket is): the Connect-RPC JSON endpoints
//! driven as the `e2b` SDK drives them (unary `application/json`; streams in
//! `application/connect+json` envelopes), over HTTP/1.1 to the service's router.
//!
//! Covered: output streamed as it comes, exit codes and statuses, keepalives, a background
//! process listed (config, pid, tag), connected to by pid and by tag, and killed; stdin kept open
//! (SendInput, StreamInput, CloseStdin) or closed by default; a reconnect after the starting
//! client went; a PTY typed into and resized; unknown processes answering not_found. Then the
//! unmodified `e2b` SDK (the venv of scripts/setup.sh, or `$EMBER_E2B_PYTHON`) runs its
//! commands and PTY calls against the same rig (`tests/e2b/sdk_process.py`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use emberd::e2b::process::{Processes, SocketAgent, router};
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

const PORT: u32 = 52;
const WAIT: Duration = Duration::from_secs(15);

/// A real agent and the process service's router in front of it.
struct Rig {
    agent: Child,
    _dir: tempfile::TempDir,
    addr: SocketAddr,
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = self.agent.kill();
        let _ = self.agent.wait();
    }
}

async fn rig() -> Rig {
    let bin = tokio::task::spawn_blocking(|| {
        ember_test_support::package_bin("ember-agent", "ember-agent")
    })
    .await
    .unwrap();
    let dir = tempfile::Builder::new()
        .prefix("envd-proc")
        .tempdir_in("/var/tmp")
        .unwrap();
    let socket: PathBuf = dir.path().join("agent.sock");
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let agent = Command::new(bin)
        .arg("--listen")
        .arg(format!("unix:{}", socket.display()))
        .args(["--port", &PORT.to_string(), "--init", "no", "--workdir"])
        .arg(&work)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "the agent never listened");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let processes = Arc::new(Processes::new(Arc::new(SocketAgent::new(&socket, PORT))));
    let app = router(processes, "sb".into());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Rig {
        agent,
        _dir: dir,
        addr,
    }
}

fn envelope(flags: u8, v: &Value) -> Vec<u8> {
    let payload = v.to_string().into_bytes();
    let mut out = vec![flags];
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&payload);
    out
}

async fn send(
    addr: SocketAddr,
    method: &str,
    content_type: &str,
    body: Vec<u8>,
    headers: &[(&str, &str)],
) -> hyper::Response<Incoming> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = hyper::Request::post(format!("/process.Process/{method}"))
        .header("host", "localhost")
        .header("content-type", content_type)
        .header("connect-protocol-version", "1");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    sender
        .send_request(req.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .unwrap()
}

/// A unary call: (HTTP status, JSON body).
async fn unary(addr: SocketAddr, method: &str, body: Value) -> (u16, Value) {
    let resp = send(
        addr,
        method,
        "application/json",
        body.to_string().into_bytes(),
        &[],
    )
    .await;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

/// A server stream's messages, read as they arrive.
struct Events {
    body: Incoming,
    buf: Vec<u8>,
}

/// One message of a stream.
#[derive(Debug)]
enum Msg {
    Event(Value),
    /// The end envelope's payload (`{}` or `{"error": ...}`).
    End(Value),
}

impl Events {
    async fn open(addr: SocketAddr, method: &str, body: Value, headers: &[(&str, &str)]) -> Events {
        let resp = send(
            addr,
            method,
            "application/connect+json",
            envelope(0, &body),
            headers,
        )
        .await;
        assert_eq!(resp.status().as_u16(), 200);
        assert_eq!(
            resp.headers()["content-type"].to_str().unwrap(),
            "application/connect+json"
        );
        Events {
            body: resp.into_body(),
            buf: Vec::new(),
        }
    }

    /// The next message, or `None` when none came within `timeout`.
    async fn next(&mut self, timeout: Duration) -> Option<Msg> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                if self.buf.len() >= 5 + len {
                    let whole: Vec<u8> = self.buf.drain(..5 + len).collect();
                    let v: Value = serde_json::from_slice(&whole[5..]).unwrap();
                    return Some(if whole[0] & 2 != 0 {
                        Msg::End(v)
                    } else {
                        Msg::Event(v["event"].clone())
                    });
                }
            }
            match tokio::time::timeout_at(deadline, self.body.frame()).await {
                Err(_) => return None,
                Ok(None) => panic!("the stream ended without its end envelope"),
                Ok(Some(frame)) => {
                    if let Ok(d) = frame.unwrap().into_data() {
                        self.buf.extend_from_slice(&d);
                    }
                }
            }
        }
    }

    async fn event(&mut self) -> Value {
        match self.next(WAIT).await {
            Some(Msg::Event(e)) => e,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    /// The start event's pid.
    async fn pid(&mut self) -> u32 {
        let e = self.event().await;
        e["start"]["pid"].as_u64().expect("a start event") as u32
    }

    /// Output (stdout, stderr, pty) up to the end event, the end event, and the end envelope.
    async fn rest(&mut self) -> (String, String, String, Value, Value) {
        let (mut out, mut err, mut pty) = (Vec::new(), Vec::new(), Vec::new());
        let mut end = Value::Null;
        loop {
            match self.next(WAIT).await {
                Some(Msg::Event(e)) if !e["end"].is_null() => end = e["end"].clone(),
                Some(Msg::Event(e)) if !e["data"].is_null() => {
                    for (field, buf) in [
                        ("stdout", &mut out),
                        ("stderr", &mut err),
                        ("pty", &mut pty),
                    ] {
                        if let Some(s) = e["data"][field].as_str() {
                            buf.extend(b64(s));
                        }
                    }
                }
                Some(Msg::Event(_)) => {}
                Some(Msg::End(v)) => {
                    let s = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
                    return (s(out), s(err), s(pty), end, v);
                }
                None => panic!("the stream did not end"),
            }
        }
    }

    /// Reads until some output contains `needle`; returns all of it.
    async fn until(&mut self, needle: &str) -> String {
        let mut seen = Vec::new();
        loop {
            match self.next(WAIT).await {
                Some(Msg::Event(e)) if !e["data"].is_null() => {
                    for field in ["stdout", "stderr", "pty"] {
                        if let Some(s) = e["data"][field].as_str() {
                            seen.extend(b64(s));
                        }
                    }
                    if String::from_utf8_lossy(&seen).contains(needle) {
                        return String::from_utf8_lossy(&seen).into_owned();
                    }
                }
                Some(Msg::Event(e)) if !e["end"].is_null() => {
                    panic!(
                        "ended before {needle:?}: {}",
                        String::from_utf8_lossy(&seen)
                    )
                }
                Some(Msg::Event(_)) => {}
                other => panic!(
                    "no {needle:?} ({other:?}); saw {}",
                    String::from_utf8_lossy(&seen)
                ),
            }
        }
    }
}

fn b64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

fn enc(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn start_req(cmd: &str, args: &[&str]) -> Value {
    json!({"process": {"cmd": cmd, "args": args, "envs": {}}})
}

async fn start(addr: SocketAddr, req: Value) -> Events {
    Events::open(addr, "Start", req, &[("keepalive-ping-interval", "50")]).await
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
    // A program that is not there fails the stream.
    let mut ev = start(r.addr, start_req("/no/such/program", &[])).await;
    match ev.next(WAIT).await {
        Some(Msg::End(v)) => assert_eq!(v["error"]["code"], "not_found", "{v}"),
        other => panic!("{other:?}"),
    }
}

/// The venv's python: `$EMBER_E2B_PYTHON`, or `target/e2b-venv/bin/python`.
fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("EMBER_E2B_PYTHON") {
        return PathBuf::from(p);
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/e2b-venv/bin/python");
    assert!(
        p.is_file(),
        "{} is missing: run scripts/setup.sh (it installs the e2b SDK from PyPI into \
         target/e2b-venv), or point EMBER_E2B_PYTHON at a python with `e2b` installed",
        p.display()
    );
    p
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
    ] {
        assert!(stdout.contains(line), "no {line:?} in:\n{stdout}");
    }
}
