//! Shared test helpers for ember's crates (std only, so any crate can use it).
//!
//! - [`wait_for`]: poll a condition with a generous timeout instead of sleeping and asserting;
//! - [`ApiClient`]: a blocking HTTP/1.1 client over a Unix socket with keep-alive (one
//!   connection, many requests) and a raw mode for malformed-request tests;
//! - [`VmmProcess`]: spawns a VMM binary (ember-vmm or firecracker) with its stdout/stderr
//!   captured, waits for its API socket, kills it on drop;
//! - [`private_memory_kib`]: a process's private memory from `/proc/<pid>/smaps_rollup`;
//! - [`package_bin`] / [`vmm_bin`]: another workspace package's binary, built on demand.
//!
//! Helpers panic with a descriptive message on failure: they are for tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The default timeout for conditions in tests (generous: CI machines are slow and shared).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Polls `f` every few milliseconds until it returns `Some`, or panics after `timeout` naming
/// `what`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    match try_wait_for(timeout, &mut f) {
        Some(v) => v,
        None => panic!("timed out after {timeout:?} waiting for {what}"),
    }
}

/// Like [`wait_for`] but returns `None` on timeout.
pub fn try_wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_micros(200);
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(20));
    }
}

/// An HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Body as text.
    pub body: String,
}

impl HttpResponse {
    /// The `fault_message` of an error body, if any.
    pub fn fault_message(&self) -> Option<String> {
        let key = "\"fault_message\":";
        let start = self.body.find(key)? + key.len();
        let rest = self.body[start..].trim_start().strip_prefix('"')?;
        let mut out = String::new();
        let mut chars = rest.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => out.push(chars.next()?),
                '"' => return Some(out),
                c => out.push(c),
            }
        }
        None
    }
}

/// A keep-alive HTTP/1.1 client on one Unix-socket connection.
#[derive(Debug)]
pub struct ApiClient {
    reader: BufReader<UnixStream>,
}

impl ApiClient {
    /// Connects, retrying until the socket accepts or `timeout` passes.
    pub fn connect(path: &Path, timeout: Duration) -> ApiClient {
        let stream = wait_for(timeout, &format!("API socket {}", path.display()), || {
            UnixStream::connect(path).ok()
        });
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        ApiClient {
            reader: BufReader::new(stream),
        }
    }

    /// Sends a request and reads the response.
    pub fn request(&mut self, method: &str, path: &str, body: Option<&str>) -> HttpResponse {
        let mut req =
            format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n");
        if let Some(b) = body {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
                b.len()
            ));
        } else {
            req.push_str("\r\n");
        }
        self.send_raw(req.as_bytes())
    }

    /// `GET`.
    pub fn get(&mut self, path: &str) -> HttpResponse {
        self.request("GET", path, None)
    }

    /// `PUT` with a JSON body.
    pub fn put(&mut self, path: &str, body: &str) -> HttpResponse {
        self.request("PUT", path, Some(body))
    }

    /// `PATCH` with a JSON body.
    pub fn patch(&mut self, path: &str, body: &str) -> HttpResponse {
        self.request("PATCH", path, Some(body))
    }

    /// Writes raw bytes and reads one response.
    pub fn send_raw(&mut self, bytes: &[u8]) -> HttpResponse {
        self.reader
            .get_mut()
            .write_all(bytes)
            .expect("writing the request");
        self.read_response()
    }

    /// Reads one response (skipping `100 Continue`).
    pub fn read_response(&mut self) -> HttpResponse {
        loop {
            let mut status_line = String::new();
            self.reader
                .read_line(&mut status_line)
                .expect("reading the status line");
            let status: u16 = status_line
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                self.reader.read_line(&mut line).expect("reading a header");
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                if let Some((k, v)) = line.split_once(':')
                    && k.eq_ignore_ascii_case("content-length")
                {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            if status == 100 {
                continue;
            }
            let mut body = vec![0u8; length];
            self.reader.read_exact(&mut body).expect("reading the body");
            return HttpResponse {
                status,
                body: String::from_utf8_lossy(&body).into_owned(),
            };
        }
    }
}

#[derive(Default)]
struct Captured {
    bytes: Mutex<Vec<u8>>,
    changed: Condvar,
}

fn capture(mut src: impl Read + Send + 'static) -> Arc<Captured> {
    let out = Arc::new(Captured::default());
    let sink = out.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match src.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    sink.bytes.lock().unwrap().extend_from_slice(&buf[..n]);
                    sink.changed.notify_all();
                }
            }
        }
    });
    out
}

/// A spawned VMM process with captured output; killed on drop.
pub struct VmmProcess {
    child: Child,
    api_sock: PathBuf,
    stdout: Arc<Captured>,
    stderr: Arc<Captured>,
    stdin: Option<std::process::ChildStdin>,
    status: Option<ExitStatus>,
}

impl VmmProcess {
    /// Spawns `binary --api-sock <api_sock> <extra args>` with stdin from /dev/null.
    pub fn spawn(binary: &Path, api_sock: &Path, extra: &[&str]) -> VmmProcess {
        Self::spawn_with(binary, api_sock, extra, false)
    }

    /// Like [`VmmProcess::spawn`], with stdin a pipe written by [`VmmProcess::write_stdin`].
    pub fn spawn_with_stdin(binary: &Path, api_sock: &Path, extra: &[&str]) -> VmmProcess {
        Self::spawn_with(binary, api_sock, extra, true)
    }

    fn spawn_with(binary: &Path, api_sock: &Path, extra: &[&str], pipe_stdin: bool) -> VmmProcess {
        let mut child = Command::new(binary)
            .arg("--api-sock")
            .arg(api_sock)
            .args(extra)
            .stdin(if pipe_stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", binary.display()));
        let stdout = capture(child.stdout.take().unwrap());
        let stderr = capture(child.stderr.take().unwrap());
        let stdin = child.stdin.take();
        VmmProcess {
            child,
            api_sock: api_sock.to_path_buf(),
            stdout,
            stderr,
            stdin,
            status: None,
        }
    }

    /// Writes to the process's stdin (spawned with [`VmmProcess::spawn_with_stdin`]).
    pub fn write_stdin(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("spawned without a stdin pipe");
        stdin.write_all(bytes).expect("writing to the VMM's stdin");
        stdin.flush().expect("flushing the VMM's stdin");
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The API socket path.
    pub fn api_sock(&self) -> &Path {
        &self.api_sock
    }

    /// Connects a client (waiting for the socket).
    pub fn client(&self) -> ApiClient {
        ApiClient::connect(&self.api_sock, DEFAULT_TIMEOUT)
    }

    /// Everything written to stdout so far (the guest console by default).
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout.bytes.lock().unwrap()).into_owned()
    }

    /// Everything written to stderr so far (logs).
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.bytes.lock().unwrap()).into_owned()
    }

    /// Waits until a stdout line satisfies `pred` (starting at line `skip`), returning it.
    pub fn wait_for_line(
        &self,
        timeout: Duration,
        what: &str,
        skip: usize,
        mut pred: impl FnMut(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        let mut guard = self.stdout.bytes.lock().unwrap();
        loop {
            let text = String::from_utf8_lossy(&guard).into_owned();
            let complete = text.rsplit_once('\n').map(|(c, _)| c).unwrap_or("");
            if let Some(line) = complete.lines().skip(skip).find(|l| pred(l)) {
                return line.to_string();
            }
            let now = Instant::now();
            if now >= deadline {
                drop(guard);
                panic!(
                    "timed out after {timeout:?} waiting for {what}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                    self.stdout_text(),
                    self.stderr_text()
                );
            }
            guard = self
                .stdout
                .changed
                .wait_timeout(guard, deadline - now)
                .unwrap()
                .0;
        }
    }

    /// Number of complete stdout lines so far.
    pub fn stdout_lines(&self) -> usize {
        self.stdout
            .bytes
            .lock()
            .unwrap()
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
    }

    /// Waits for the process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(s) = self.status {
            return s;
        }
        let child = &mut self.child;
        let s = wait_for(timeout, "the VMM process to exit", || {
            child.try_wait().ok().flatten()
        });
        self.status = Some(s);
        s
    }

    /// The exit status if it has exited.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }
}

impl Drop for VmmProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Private memory (Private_Clean + Private_Dirty, KiB) of process `pid`.
pub fn private_memory_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let field = |name: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Some(field("Private_Clean:") + field("Private_Dirty:"))
}

/// A value (KiB) from `/proc/<pid>/smaps_rollup`, e.g. "Rss:" or "Pss:".
pub fn smaps_rollup_kib(pid: u32, name: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// Waits up to `timeout` for every process in `pids` to be gone from `/proc` (killed VMMs take
/// a few milliseconds to go); returns whether they all went.
pub fn wait_gone(pids: &[u32], timeout: Duration) -> bool {
    try_wait_for(timeout, || {
        pids.iter()
            .all(|p| !Path::new(&format!("/proc/{p}")).exists())
            .then_some(())
    })
    .is_some()
}

/// On drop, removes what an emberd with sandbox networks under interface prefix `.0` leaves
/// when it is gone for good — its namespaces (`ember-<prefix>*`), host links (`<prefix>*`) and
/// nft tables (`ember_<prefix>`, `ember_nat_<prefix>`); a restarted daemon would sweep them.
/// Tests that start such a daemon hold one, so a failed run leaks nothing either.
pub struct NetCleanup(pub String);

impl Drop for NetCleanup {
    fn drop(&mut self) {
        let prefix = &self.0;
        let entries = |dir: &str| -> Vec<String> {
            std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        };
        for name in entries("/run/netns") {
            if name.starts_with(&format!("ember-{prefix}")) {
                let _ = Command::new("ip").args(["netns", "del", &name]).output();
            }
        }
        for name in entries("/sys/class/net") {
            if name.starts_with(prefix.as_str()) {
                let _ = Command::new("ip").args(["link", "del", &name]).output();
            }
        }
        for (family, table) in [
            ("inet", format!("ember_{prefix}")),
            ("ip", format!("ember_nat_{prefix}")),
        ] {
            let _ = Command::new("nft")
                .args(["delete", "table", family, &table])
                .output();
        }
    }
}

/// A binary of another workspace package, built on demand: cargo does not build other
/// packages' binaries for a test, so `cargo test -p <one crate>` would otherwise miss it.
/// `cargo build -p <package> --bin <bin>` runs into this test's own target directory and
/// profile (cheap when it is up to date, as under `cargo test --workspace`); each binary is
/// built at most once per test process. For `ember-vmm`, `$EMBER_VMM_BIN` overrides.
pub fn package_bin(package: &str, bin: &str) -> PathBuf {
    static BUILT: Mutex<Vec<(String, PathBuf)>> = Mutex::new(Vec::new());
    if bin == "ember-vmm"
        && let Some(p) = std::env::var_os("EMBER_VMM_BIN")
    {
        return PathBuf::from(p);
    }
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, p)) = built.iter().find(|(b, _)| b == bin) {
        return p.clone();
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut profile_dir = exe.parent().expect("exe dir").to_path_buf();
    if profile_dir.ends_with("deps") {
        profile_dir.pop();
    }
    let target_dir = profile_dir.parent().expect("target dir").to_path_buf();
    let profile = profile_dir
        .file_name()
        .expect("profile dir name")
        .to_string_lossy()
        .into_owned();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet", "-p", package, "--bin", bin])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    match profile.as_str() {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("running cargo build -p {package}: {e}"));
    assert!(
        status.success(),
        "cargo build -p {package} --bin {bin} failed"
    );
    let path = profile_dir.join(bin);
    assert!(path.is_file(), "{} missing after the build", path.display());
    built.push((bin.to_string(), path.clone()));
    path
}

/// A static ember-agent for Linux guest images: `$EMBER_AGENT_BIN`, or built once (release,
/// crt-static, as the Linux rig builds it) into `target_dir` (the workspace's `target/` when
/// `None`).
pub fn static_ember_agent(target_dir: Option<&Path>) -> PathBuf {
    static AGENT: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut agent = AGENT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(p) = agent.as_ref() {
        return p.clone();
    }
    if let Some(p) = std::env::var_os("EMBER_AGENT_BIN") {
        return agent.insert(PathBuf::from(p)).clone();
    }
    let target_dir = target_dir.map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"),
        Path::to_path_buf,
    );
    let path = target_dir.join("x86_64-unknown-linux-gnu/release/ember-agent");
    if !path.is_file() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "--release",
                "-p",
                "ember-agent",
                "--bin",
                "ember-agent",
            ])
            .args(["--target", "x86_64-unknown-linux-gnu"])
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            .env("CARGO_TARGET_DIR", &target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .unwrap_or_else(|e| panic!("running cargo build -p ember-agent: {e}"));
        assert!(status.success(), "building the static agent failed");
    }
    agent.insert(path).clone()
}

/// The `ember-vmm` binary (`$EMBER_VMM_BIN`, or built on demand).
pub fn vmm_bin() -> PathBuf {
    package_bin("ember-vmm", "ember-vmm")
}

/// The python with the `e2b` SDK that tests drive emberd with: `$EMBER_E2B_PYTHON`, or the
/// repository's `target/e2b-venv/bin/python` (made by scripts/setup.sh). Panics naming the fix
/// when it is missing.
pub fn e2b_python() -> PathBuf {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_message_parsing() {
        let r = HttpResponse {
            status: 400,
            body: r#"{"fault_message":"bad \"x\" here"}"#.into(),
        };
        assert_eq!(r.fault_message().unwrap(), "bad \"x\" here");
        let r = HttpResponse {
            status: 204,
            body: String::new(),
        };
        assert_eq!(r.fault_message(), None);
    }

    #[test]
    fn wait_for_polls() {
        let mut n = 0;
        assert_eq!(
            wait_for(Duration::from_secs(5), "n to reach 3", || {
                n += 1;
                (n >= 3).then_some(n)
            }),
            3
        );
        assert_eq!(try_wait_for(Duration::from_millis(10), || None::<()>), None);
    }

    #[test]
    fn own_memory_is_readable() {
        assert!(private_memory_kib(std::process::id()).unwrap() > 0);
    }
}
