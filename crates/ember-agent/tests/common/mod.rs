//! Starts the real `ember-agent` binary on a hybrid-vsock Unix socket in a temp dir.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ember_agent_proto::AgentClient;

/// The guest port the agent's handshake answers.
pub const PORT: u32 = 52;

/// A running agent; killed on drop.
pub struct Agent {
    child: Child,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
}

impl Agent {
    pub fn start() -> Agent {
        Agent::start_with(&[], &["--init", "no"])
    }

    /// The agent binary: `EMBER_AGENT_BIN` (e.g. the static release build) or this build's.
    pub fn binary() -> PathBuf {
        std::env::var_os("EMBER_AGENT_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_ember-agent")))
    }

    /// Runs `wrapper... ember-agent --listen ... extra...`.
    pub fn start_with(wrapper: &[&str], extra: &[&str]) -> Agent {
        // Not under /tmp: an agent that is init mounts a fresh /tmp in its namespace, which
        // hides a socket there (the target dir itself is under /tmp when the checkout is).
        let base = option_env!("CARGO_TARGET_TMPDIR")
            .map(PathBuf::from)
            .filter(|p| !p.starts_with("/tmp"))
            .unwrap_or_else(|| PathBuf::from("/var/tmp"));
        let dir = tempfile::tempdir_in(base).unwrap();
        let socket = dir.path().join("agent.sock");
        let work = dir.path().join("work");
        std::fs::create_dir(&work).unwrap();
        let (program, before) = match wrapper.split_first() {
            Some((program, rest)) => (PathBuf::from(program), rest.to_vec()),
            None => (Agent::binary(), Vec::new()),
        };
        let mut command = Command::new(program);
        command.args(before);
        if !wrapper.is_empty() {
            command.arg(Agent::binary());
        }
        let child = command
            .arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .arg("--port")
            .arg(PORT.to_string())
            .arg("--workdir")
            .arg(&work)
            .args(extra)
            .arg("--log")
            .arg("debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("AGENT_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "the agent never listened");
            std::thread::sleep(Duration::from_millis(5));
        }
        Agent { child, dir, socket }
    }

    pub fn client(&self) -> AgentClient {
        // The socket file appears at bind(), a moment before listen(): a connection in between
        // is refused, so retry until the agent listens (CI saw that race once).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match AgentClient::connect(&self.socket, PORT, Duration::from_secs(10)) {
                Ok(c) => return c,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => panic!("connecting to the agent at {}: {e}", self.socket.display()),
            }
        }
    }

    pub fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        self.child.wait().unwrap()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn s(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn exists(p: &Path) -> bool {
    p.exists()
}
