//! The rig of envd_process's tests: a real `ember-agent` on a hybrid-vsock Unix socket, the
//! process service's router in front of it on a loopback port, and a Connect-RPC JSON client
//! (unary calls; server streams read envelope by envelope as they arrive).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use emberd::e2b::process::{Processes, SocketAgent, router};
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

pub const PORT: u32 = 52;
pub const WAIT: Duration = Duration::from_secs(15);

/// A real agent and the process service's router in front of it.
pub struct Rig {
    agent: Child,
    _dir: tempfile::TempDir,
    pub addr: SocketAddr,
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = self.agent.kill();
        let _ = self.agent.wait();
    }
}

pub async fn rig() -> Rig {
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
    // E2B's default user, `user`, as images have it: commands the client names no user for
    // run as it, in its home.
    let home = dir.path().join("home-user");
    std::fs::create_dir(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(1000), Some(1000)).unwrap();
    let etc = dir.path().join("etc");
    std::fs::create_dir(&etc).unwrap();
    std::fs::write(
        etc.join("passwd"),
        format!(
            "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::{}:/bin/sh\n",
            home.display()
        ),
    )
    .unwrap();
    std::fs::write(etc.join("group"), "root:x:0:\nuser:x:1000:\n").unwrap();
    let agent = Command::new(bin)
        .arg("--listen")
        .arg(format!("unix:{}", socket.display()))
        .args(["--port", &PORT.to_string(), "--init", "no", "--workdir"])
        .arg(&work)
        .arg("--etc")
        .arg(&etc)
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
    let addr = serve(&socket).await;
    Rig {
        agent,
        _dir: dir,
        addr,
    }
}

/// The process service over the agent behind `socket`, served on a loopback port.
pub async fn serve(socket: &Path) -> SocketAddr {
    let processes = Arc::new(Processes::new(Arc::new(SocketAgent::new(socket, PORT))));
    let app = router(processes, "sb".into());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

pub fn envelope(flags: u8, v: &Value) -> Vec<u8> {
    let payload = v.to_string().into_bytes();
    let mut out = vec![flags];
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&payload);
    out
}

pub async fn send(
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
pub async fn unary(addr: SocketAddr, method: &str, body: Value) -> (u16, Value) {
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
pub struct Events {
    body: Incoming,
    buf: Vec<u8>,
}

/// One message of a stream.
#[derive(Debug)]
pub enum Msg {
    Event(Value),
    /// The end envelope's payload (`{}` or `{"error": ...}`).
    End(Value),
}

impl Events {
    pub async fn open(
        addr: SocketAddr,
        method: &str,
        body: Value,
        headers: &[(&str, &str)],
    ) -> Events {
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
    pub async fn next(&mut self, timeout: Duration) -> Option<Msg> {
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

    pub async fn event(&mut self) -> Value {
        match self.next(WAIT).await {
            Some(Msg::Event(e)) => e,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    /// The start event's pid.
    pub async fn pid(&mut self) -> u32 {
        let e = self.event().await;
        e["start"]["pid"].as_u64().expect("a start event") as u32
    }

    /// Output (stdout, stderr, pty) up to the end event, the end event, and the end envelope.
    pub async fn rest(&mut self) -> (String, String, String, Value, Value) {
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
    pub async fn until(&mut self, needle: &str) -> String {
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

pub fn b64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

pub fn enc(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

pub fn start_req(cmd: &str, args: &[&str]) -> Value {
    json!({"process": {"cmd": cmd, "args": args, "envs": {}}})
}

pub async fn start(addr: SocketAddr, req: Value) -> Events {
    Events::open(addr, "Start", req, &[("keepalive-ping-interval", "50")]).await
}

/// The venv's python (ember-test-support's [`e2b_python`](ember_test_support::e2b_python)).
pub fn python() -> PathBuf {
    ember_test_support::e2b_python()
}
