//! Shared harness of emberd's integration tests: a real `emberd` process in its own directories
//! (state on disk, VM slots on tmpfs), started, SIGTERMed, SIGKILLed and restarted like an
//! operator would, with a client on its socket and counters of what the host holds (VMM
//! processes, slot directories, store rows) for the "nothing orphaned" checks.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use emberd::client::{Client, Endpoint};

/// A daemon under test and its directories.
pub struct Daemon {
    /// Its directory (state, socket, log).
    pub dir: tempfile::TempDir,
    /// Its runtime directory (VM slots; on /dev/shm, short for socket paths).
    pub runtime: tempfile::TempDir,
    /// The running process, if any.
    pub child: Option<Child>,
    /// Extra arguments for every start.
    pub extra: Vec<String>,
}

impl Daemon {
    /// A daemon in fresh directories, not started.
    pub fn new() -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("emberd-t")
            .tempdir()
            .unwrap();
        let runtime = tempfile::Builder::new()
            .prefix("ed")
            .tempdir_in("/dev/shm")
            .unwrap();
        Daemon {
            dir,
            runtime,
            child: None,
            extra: Vec::new(),
        }
    }

    /// Starts one and waits until it answers `/healthz`.
    pub fn started() -> Daemon {
        let mut d = Daemon::new();
        d.start();
        d
    }

    /// Its socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("ember.sock")
    }

    /// Its state directory.
    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Its log file.
    pub fn log(&self) -> PathBuf {
        self.dir.path().join("emberd.log")
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    /// A client on its socket.
    pub fn client(&self) -> Client {
        Client::new(Endpoint::Unix(self.socket()))
    }

    /// Starts the process (it must not be running) and waits until it serves; returns how long
    /// from the spawn until `/healthz` answered.
    pub fn start(&mut self) -> Duration {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .unwrap();
        let t0 = Instant::now();
        let child = Command::new(env!("CARGO_BIN_EXE_emberd"))
            .arg("--socket")
            .arg(self.socket())
            .arg("--state-dir")
            .arg(self.state())
            .arg("--runtime-dir")
            .arg(self.runtime.path())
            .arg("--vmm")
            .arg(ember_test_support::vmm_bin())
            .arg("--jailer")
            .arg(ember_test_support::package_bin(
                "ember-jailer",
                "ember-jailer",
            ))
            .arg("--spares")
            .arg("2")
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let sock = self.socket();
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("emberd exited ({status}) at start:\n{}", self.log_text());
            }
            if healthz(&sock) {
                return t0.elapsed();
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "emberd did not serve within 60 s:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// SIGKILLs it (its VMs keep running).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERMs it and waits for it to exit; returns its exit status's success.
    pub fn term(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return true;
        };
        signal(c.id(), nix::sys::signal::Signal::SIGTERM);
        let t0 = Instant::now();
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s.success();
            }
            if t0.elapsed() > Duration::from_secs(30) {
                let _ = c.kill();
                panic!("emberd did not stop within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// VMM processes running VMs under its runtime directory.
    pub fn vmm_pids(&self) -> Vec<u32> {
        processes_naming(&self.runtime.path().to_string_lossy())
    }

    /// Slot directories under its runtime directory.
    pub fn slots(&self) -> Vec<String> {
        let dir = self.runtime.path().join("slots");
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut v: Vec<String> = entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// Opens its store (read-only use; the daemon may be running).
    pub fn store(&self) -> ember_store::Store {
        ember_store::Store::open(
            self.state().join("ember.db"),
            ember_store::StoreConfig::default(),
        )
        .unwrap()
    }
}

impl Drop for Daemon {
    /// Kills the daemon and every VMM it left, so a failed test leaks nothing.
    fn drop(&mut self) {
        self.kill9();
        let pids = self.vmm_pids();
        for pid in &pids {
            signal(*pid, nix::sys::signal::Signal::SIGKILL);
        }
        // Jailed VMMs leave a shared mount and cgroups under the runtime directory's name.
        ember_test_support::wait_gone(&pids, Duration::from_secs(5));
        let _ = ember_runtime::jail::remove_leftovers(
            self.runtime.path(),
            std::path::Path::new("/sys/fs/cgroup"),
        );
    }
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
}

/// Whether a daemon answers `/healthz` on `sock` (a blocking one-shot request).
pub fn healthz(sock: &Path) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(sock) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    buf.starts_with(b"HTTP/1.1 200")
}

/// Live (non-zombie) processes whose command line contains `needle`.
pub fn processes_naming(needle: &str) -> Vec<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| {
                    s.rsplit(')')
                        .next()
                        .is_some_and(|r| r.trim_start().starts_with('Z'))
                })
                .unwrap_or(true);
            !zombie && String::from_utf8_lossy(&cmd).contains(needle)
        })
        .collect()
}

/// A tokio runtime for a test's client calls.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
}

/// The JSON of a probe template build.
pub fn probe_template(name: &str) -> emberd::engine::templates::BuildTemplate {
    emberd::engine::templates::BuildTemplate {
        name: ember_core::TemplateName::new(name).unwrap(),
        spec: ember_core::TemplateSpec::probe(),
    }
}

/// A create request for `template`.
pub fn create(template: &str) -> emberd::engine::sandboxes::CreateSandbox {
    emberd::engine::sandboxes::CreateSandbox {
        template: ember_core::TemplateName::new(template).unwrap(),
        labels: Default::default(),
        env: Default::default(),
        timeout_secs: None,
        egress: None,
    }
}

/// An exec request.
pub fn exec(argv: &[&str]) -> emberd::engine::guest::ExecRequest {
    emberd::engine::guest::ExecRequest {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: Default::default(),
        cwd: None,
        user: None,
        stdin: None,
        stdin_base64: None,
        timeout_ms: None,
    }
}

/// Runs `argv` in sandbox `id`; returns (exit code, stdout).
pub async fn run(client: &Client, id: &str, argv: &[&str]) -> Result<(i32, String), String> {
    use emberd::api::sandboxes::ExecEvent;
    let mut out = Vec::new();
    let end = client
        .exec(id, &exec(argv), |ev| {
            if let ExecEvent::Stdout { data, encoding } = ev {
                out.extend(ExecEvent::bytes(data, *encoding).unwrap());
            }
        })
        .await
        .map_err(|e| e.to_string())?;
    match end {
        ExecEvent::Exit { exit_code, .. } => {
            Ok((exit_code, String::from_utf8_lossy(&out).into_owned()))
        }
        other => Err(format!("{other:?}")),
    }
}

/// Sets a pool and waits until it is full.
pub async fn fill_pool(client: &Client, template: &str, depth: u32) {
    client
        .set_pool(
            template,
            &emberd::engine::pools::SetPool {
                min_depth: depth,
                max_depth: None,
                pooled: ember_core::Pooled::Running,
                max_age_secs: None,
                refill_parallelism: None,
            },
        )
        .await
        .unwrap();
    let t0 = Instant::now();
    loop {
        let p = client.pool(template).await.unwrap();
        if p.depth >= depth as usize {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the pool did not fill: {p:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends raw request bytes on a fresh connection, tolerating the server closing it before
/// the whole request is written (as it may for an oversized body), and reads the response.
pub fn send_raw_tolerant(sock: &Path, request: &[u8]) -> ember_test_support::HttpResponse {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = s.write_all(request);
    // Read until the response is complete: headers, then Content-Length bytes (the server may
    // keep the connection open).
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if len.is_some_and(|n| buf.len() >= end + 4 + n) {
                break;
            }
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    // A chunked body: keep the JSON object only.
    let body = match (body.find('{'), body.rfind('}')) {
        (Some(a), Some(b)) if b >= a => body[a..=b].to_string(),
        _ => body.to_string(),
    };
    ember_test_support::HttpResponse { status, body }
}
