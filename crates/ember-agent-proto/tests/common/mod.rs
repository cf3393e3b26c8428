//! Shared helpers for the integration tests: a test agent in a temporary directory, and a raw
//! hybrid-vsock server for the few scenarios the test agent does not cover.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::Duration;

use ember_agent_proto::test_agent::{Fault, TestAgent, TestAgentConfig};
use ember_agent_proto::{AgentClient, ConnectOptions, Header, encode_raw_frame};
use tempfile::TempDir;

/// Generous timeout for calls that should succeed.
pub const OK_TIMEOUT: Duration = Duration::from_secs(5);

/// A test agent listening in its own temporary directory.
pub struct Fixture {
    pub agent: TestAgent,
    _dir: TempDir,
}

impl Fixture {
    pub fn new(fault: Fault) -> Fixture {
        Fixture::with_config(TestAgentConfig {
            fault,
            ..TestAgentConfig::default()
        })
    }

    pub fn with_config(config: TestAgentConfig) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let agent = TestAgent::start(dir.path().join("vsock.sock"), config).unwrap();
        Fixture { agent, _dir: dir }
    }

    pub fn connect(&self) -> AgentClient {
        AgentClient::connect(self.agent.path(), self.agent.port(), OK_TIMEOUT).unwrap()
    }

    pub fn connect_with(&self, options: &ConnectOptions) -> AgentClient {
        AgentClient::connect_with(self.agent.path(), self.agent.port(), options).unwrap()
    }
}

/// A one-connection hybrid server: answers the handshake with `OK 1\n`, then runs `serve`.
pub fn raw_server(
    serve: impl FnOnce(UnixStream) + Send + 'static,
) -> (TempDir, PathBuf, JoinHandle<()>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raw.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let handle = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while stream.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        stream.write_all(b"OK 1\n").unwrap();
        serve(stream);
    });
    (dir, path, handle)
}

/// A frame with an arbitrary header and an unvalidated body.
pub fn frame(header: Header, body: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; 64 + body.len()];
    let n = encode_raw_frame(header, body, &mut out).unwrap();
    out.truncate(n);
    out
}
