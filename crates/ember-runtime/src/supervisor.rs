//! The supervisor: one thread that waits, with epoll, on the pidfd of every VMM process the
//! provider owns. A pidfd becomes readable the moment its process exits, so a VMM that dies —
//! killed by the OOM killer, a `kill -9`, a crash — is noticed at once, not at the next API
//! call. The thread reaps the process (it is the only one that does) and hands the exit to the
//! provider's hook, which marks the VM stopped, tells registered listeners, or finishes cleaning
//! up a destroyed VM's files. Reaping on this thread keeps `waitid` and the dying process's
//! teardown (unmapping guest memory takes milliseconds) off every caller's path.
//!
//! It must not block on provider locks for long: the hook takes only short bookkeeping locks.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::process::{ExitInfo, VmmProcess};

/// Called on the supervisor thread when a watched process has exited and been reaped.
pub type ExitHook = Arc<dyn Fn(&Arc<VmmProcess>, ExitInfo) + Send + Sync>;

/// The epoll token of the stop eventfd (slot numbers never reach it).
const STOP: u64 = u64::MAX;

struct Shared {
    epoll: Epoll,
    stop: EventFd,
    watched: Mutex<HashMap<u64, Arc<VmmProcess>>>,
}

impl Shared {
    fn watched(&self) -> MutexGuard<'_, HashMap<u64, Arc<VmmProcess>>> {
        // Only inserts and removes happen under this lock; a poisoned map is still consistent.
        self.watched.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Watches VMM processes and reports their exits.
pub struct Supervisor {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("watched", &self.shared.watched().len())
            .finish()
    }
}

impl Supervisor {
    /// Starts the supervisor thread; `hook` is called for every exit.
    pub fn start(hook: ExitHook) -> io::Result<Supervisor> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(io::Error::from)?;
        let stop = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .map_err(io::Error::from)?;
        epoll
            .add(&stop, EpollEvent::new(EpollFlags::EPOLLIN, STOP))
            .map_err(io::Error::from)?;
        let shared = Arc::new(Shared {
            epoll,
            stop,
            watched: Mutex::new(HashMap::new()),
        });
        let run = Arc::clone(&shared);
        let thread = thread::Builder::new()
            .name("ember-supervisor".into())
            .spawn(move || run_loop(&run, &hook))?;
        Ok(Supervisor {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Starts watching `process` (keyed by its slot number). A process that already exited is
    /// reported at once (its pidfd is readable).
    pub fn watch(&self, process: Arc<VmmProcess>) -> io::Result<()> {
        let slot = process.slot();
        let mut watched = self.shared.watched();
        self.shared
            .epoll
            .add(process.pidfd(), EpollEvent::new(EpollFlags::EPOLLIN, slot))
            .map_err(io::Error::from)?;
        watched.insert(slot, process);
        Ok(())
    }

    /// Processes watched and not yet reaped.
    pub fn watched(&self) -> usize {
        self.shared.watched().len()
    }

    /// The pids of the processes watched and not yet reaped.
    pub fn pids(&self) -> Vec<u32> {
        self.shared.watched().values().map(|p| p.pid()).collect()
    }

    /// The processes watched and not yet reaped (after [`stop`](Self::stop): the ones whose
    /// exits will not be reported).
    pub fn unreaped(&self) -> Vec<Arc<VmmProcess>> {
        self.shared.watched().values().cloned().collect()
    }

    /// Stops the thread (exits still pending are not reported). Idempotent.
    pub fn stop(&self) {
        let _ = self.shared.stop.write(1);
        let handle = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle
            && h.join().is_err()
        {
            tracing::error!("the supervisor thread panicked");
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run_loop(shared: &Shared, hook: &ExitHook) {
    let mut events = vec![EpollEvent::empty(); 64];
    loop {
        let n = match shared.epoll.wait(&mut events, EpollTimeout::NONE) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                tracing::error!(error = %e, "supervisor epoll_wait failed; VMM deaths are no longer noticed");
                return;
            }
        };
        for ev in &events[..n] {
            let token = ev.data();
            if token == STOP {
                return;
            }
            let Some(process) = shared.watched().get(&token).cloned() else {
                continue;
            };
            match process.try_reap() {
                Ok(Some(info)) => {
                    {
                        let mut watched = shared.watched();
                        let _ = shared.epoll.delete(process.pidfd());
                        watched.remove(&token);
                    }
                    tracing::debug!(pid = process.pid(), slot = token, %info, "VMM process reaped");
                    hook(&process, info);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(pid = process.pid(), error = %e, "cannot reap a VMM process");
                    let mut watched = shared.watched();
                    let _ = shared.epoll.delete(process.pidfd());
                    watched.remove(&token);
                }
            }
        }
    }
}
