//! The provider's resident jailer (`ember-jailer --serve`, see `ember_jailer::serve`): started
//! once, on the spawner thread, and asked for each jailed VMM over a socket pair. The VMM it
//! starts is this process's child (the jailer clones it as its own sibling), so the provider
//! watches and reaps it like any VMM it started; a tied VMM's parent-death signal follows the
//! thread that started the resident jailer — the spawner, which lives as long as the provider.
//! A second one, started from whichever thread first needs it (and again if it is gone: its
//! own parent-death signal follows that thread), binds the files a running VMM is given into
//! the VMM's own mount namespace; it never starts a VMM, so its thread does not matter.

use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ember_jailer::serve::{Op, Reply};

/// Longest wait for one answer (a start takes milliseconds; a wedged jailer is replaced).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `ember-jailer --serve` and our end of its socket.
#[derive(Debug)]
pub(super) struct Resident {
    child: Child,
    writer: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Resident {
    /// Starts `jailer --serve`, tied to this process. Call it from the thread whose end the
    /// VMMs' parent-death signals must follow.
    pub(super) fn start(jailer: &Path) -> io::Result<Resident> {
        let (ours, theirs) = UnixStream::pair()?;
        let theirs_out = theirs.try_clone()?;
        let child = Command::new(jailer)
            .arg("--serve")
            .arg("--parent-pid")
            .arg(std::process::id().to_string())
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::from(OwnedFd::from(theirs_out)))
            .stderr(Stdio::inherit())
            .spawn()?;
        ours.set_read_timeout(Some(ANSWER_TIMEOUT))?;
        let reader = BufReader::new(ours.try_clone()?);
        Ok(Resident {
            child,
            writer: ours,
            reader,
        })
    }

    /// Sends one request and reads its answer. An I/O error means the jailer is unusable.
    pub(super) fn ask(&mut self, req: &Op) -> io::Result<Reply> {
        let mut line = serde_json::to_string(req).map_err(io::Error::other)?;
        line.push('\n');
        self.writer.write_all(line.as_bytes())?;
        let mut answer = String::new();
        if self.reader.read_line(&mut answer)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the resident jailer exited",
            ));
        }
        serde_json::from_str(&answer)
            .map_err(|e| io::Error::other(format!("the resident jailer's answer {answer:?}: {e}")))
    }
}

impl Drop for Resident {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
