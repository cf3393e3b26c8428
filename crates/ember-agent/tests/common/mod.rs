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
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let work = dir.path().join("work");
        std::fs::create_dir(&work).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_ember-agent"))
            .arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .arg("--port")
            .arg(PORT.to_string())
            .arg("--workdir")
            .arg(&work)
            .arg("--init")
            .arg("no")
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
        AgentClient::connect(&self.socket, PORT, Duration::from_secs(10)).unwrap()
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
