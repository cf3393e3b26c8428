//! Spare VMM processes: started ahead of need, so a process start is never on the path of a
//! create, a restore or an acquire.
//!
//! One spawner thread keeps `count` spares *ready* — spawned into their own slot, API socket
//! answering `GET /` — and starts more while callers are waiting. [`Spares::take`] hands out the
//! oldest ready spare (an ember-vmm spare has had the longest time to settle its pre-created VM
//! shell) together with its already-open API connection. Spares are accounted for: each is in
//! the ready queue or starting, watched by the supervisor, and killed at shutdown.
//!
//! This thread is the only one that spawns VMM processes: every VMM carries a parent-death
//! signal tied to the thread that forked it, and this thread lives until the provider shuts
//! down.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::client::{ClientError, ClientTimeouts, FirecrackerClient};
use crate::layout::Layout;
use crate::process::{ExitInfo, ProcessError, VmmProcess};
use crate::supervisor::Supervisor;

/// Most spawn-to-ready samples kept for [`SpareStats::ready_latencies`].
const MAX_SAMPLES: usize = 16 * 1024;
/// How often a starting process's API socket is tried until it accepts a connection (a VMM
/// binds it within a few milliseconds of starting). Once connected, the spawner sleeps in
/// `poll(2)` on the pending `GET /` answers instead: it wakes when one arrives, not on a timer.
const CONNECT_RETRY: Duration = Duration::from_millis(1);

/// How spares are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpareConfig {
    /// Ready spares to keep (0 = spawn only on demand).
    pub count: usize,
    /// Processes that may be starting at once.
    pub max_starting: usize,
    /// How long a process may take from spawn to answering its API.
    pub startup_timeout: Duration,
    /// Delay after a failed spawn before the next attempt; doubles per consecutive failure up
    /// to 32x.
    pub retry_backoff: Duration,
}

impl Default for SpareConfig {
    fn default() -> Self {
        Self {
            count: 2,
            max_starting: 4,
            startup_timeout: Duration::from_secs(10),
            retry_backoff: Duration::from_millis(50),
        }
    }
}

/// What the spawner needs to start a VMM.
#[derive(Debug, Clone)]
pub struct SpawnSettings {
    /// The VMM binary.
    pub binary: PathBuf,
    /// Arguments after `--api-sock <path> --id <id>`.
    pub extra_args: Vec<OsString>,
    /// Timeouts for the spare's API client.
    pub client_timeouts: ClientTimeouts,
    /// How spawned VMMs are made to die with their owner.
    pub parent_death: crate::process::ParentDeath,
    /// Jail every VMM (see [`crate::jail`]).
    pub jail: Option<Arc<crate::jail::Jails>>,
    /// A network namespace per slot (see [`crate::slot_net`]).
    pub networks: Option<crate::slot_net::NetworkHook>,
}

/// Why no spare could be had.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SpareError {
    /// The provider is shutting down.
    #[error("the provider is shutting down")]
    ShutDown,
    /// Starting a VMM process failed.
    #[error("no VMM process could be started")]
    Spawn(#[source] Arc<SpawnFailure>),
    /// No spare became ready in time.
    #[error("no VMM process became ready within {waited:?}")]
    Timeout {
        /// How long the caller waited.
        waited: Duration,
    },
}

/// Why one spare failed to start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnFailure {
    /// The process could not be spawned.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// The slot directory could not be created.
    #[error("cannot create the slot directory {path}")]
    Slot {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The slot's network namespace could not be made.
    #[error("cannot make slot {slot}'s network: {why}")]
    Network {
        /// The slot.
        slot: u64,
        /// What went wrong.
        why: String,
    },
    /// The process exited before its API answered.
    #[error("the VMM (pid {pid}) {exit} before its API answered; its log ends with: {log_tail:?}")]
    Exited {
        /// The process.
        pid: u32,
        /// How it ended.
        exit: ExitInfo,
        /// The end of its stderr.
        log_tail: String,
    },
    /// The API did not answer in time.
    #[error(
        "the VMM (pid {pid}) did not answer its API within {waited:?}; its log ends with: {log_tail:?}"
    )]
    NotReady {
        /// The process.
        pid: u32,
        /// How long it was given.
        waited: Duration,
        /// The end of its stderr.
        log_tail: String,
    },
    /// The API answered with an error.
    #[error("the VMM (pid {pid}) answered GET / with an error")]
    Api {
        /// The process.
        pid: u32,
        /// The client error.
        #[source]
        source: ClientError,
    },
}

/// A ready spare: a fresh VMM process and an open connection to its API.
#[derive(Debug)]
pub struct Spare {
    /// The process.
    pub process: Arc<VmmProcess>,
    /// Its API client, connected.
    pub client: FirecrackerClient,
    /// When its API first answered.
    pub ready_at: Instant,
}

/// Counters of the spare machinery.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpareStats {
    /// Spares ready now.
    pub ready: usize,
    /// Processes starting now.
    pub starting: usize,
    /// Processes spawned so far.
    pub spawned: u64,
    /// Spares handed out.
    pub taken: u64,
    /// Spawns that failed.
    pub failed: u64,
    /// Times a caller found no ready spare and had to wait for one.
    pub waited: u64,
    /// CPU time the spawner thread has used (forking, polling starting processes).
    pub spawner_cpu: Duration,
    /// Wall time spent inside the spawn call (fork + exec hand-off) in total.
    pub spawn_call_total: Duration,
    /// Spawn-to-API-ready durations of the most recent spares.
    pub ready_latencies: Vec<Duration>,
}

#[derive(Default)]
struct State {
    ready: VecDeque<Spare>,
    starting: usize,
    /// Callers blocked in `take`.
    waiters: usize,
    next_slot: u64,
    shutdown: bool,
    spawned: u64,
    taken: u64,
    failed: u64,
    waited: u64,
    last_failure: Option<Arc<SpawnFailure>>,
    consecutive_failures: u32,
    samples: VecDeque<Duration>,
    spawner_cpu: Duration,
    spawn_call_total: Duration,
}

struct Shared {
    state: Mutex<State>,
    /// The spawner waits here for work.
    work: Condvar,
    /// Takers wait here for a spare (or a failure).
    ready: Condvar,
    config: SpareConfig,
    settings: SpawnSettings,
    layout: Arc<Layout>,
    supervisor: Arc<Supervisor>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Critical sections only move spares between collections; a poisoned lock still
        // guards consistent state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The spare process pool and its spawner thread.
pub struct Spares {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Spares {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.shared.lock();
        f.debug_struct("Spares")
            .field("ready", &st.ready.len())
            .field("starting", &st.starting)
            .finish()
    }
}

impl Spares {
    /// Starts the spawner thread, which begins filling the pool at once; its slots are numbered
    /// from `first_slot` up (slots below belong to processes an earlier owner left).
    pub fn start(
        config: SpareConfig,
        settings: SpawnSettings,
        layout: Arc<Layout>,
        supervisor: Arc<Supervisor>,
        first_slot: u64,
    ) -> std::io::Result<Spares> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                next_slot: first_slot.max(1),
                ..State::default()
            }),
            work: Condvar::new(),
            ready: Condvar::new(),
            config,
            settings,
            layout,
            supervisor,
        });
        let run = Arc::clone(&shared);
        let thread = thread::Builder::new()
            .name("ember-spawner".into())
            .spawn(move || spawner(&run))?;
        Ok(Spares {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Takes the oldest ready spare, waiting up to `timeout` for one to become ready. Fails early
    /// if a spawn fails while waiting (a missing binary should not cost every caller the whole
    /// timeout).
    pub fn take(&self, timeout: Duration) -> Result<Spare, SpareError> {
        let t0 = Instant::now();
        let deadline = t0 + timeout;
        let mut st = self.shared.lock();
        let failed_before = st.failed;
        let mut counted_wait = false;
        loop {
            if st.shutdown {
                return Err(SpareError::ShutDown);
            }
            while let Some(spare) = st.ready.pop_front() {
                if spare.process.has_exited() {
                    discard(&self.shared.layout, &spare.process);
                    continue;
                }
                st.taken += 1;
                // Replace it.
                self.shared.work.notify_one();
                return Ok(spare);
            }
            if st.failed > failed_before
                && let Some(f) = &st.last_failure
            {
                return Err(SpareError::Spawn(Arc::clone(f)));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(SpareError::Timeout {
                    waited: t0.elapsed(),
                });
            }
            if !counted_wait {
                st.waited += 1;
                counted_wait = true;
            }
            st.waiters += 1;
            self.shared.work.notify_one();
            st = self
                .shared
                .ready
                .wait_timeout(st, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
            st.waiters -= 1;
        }
    }

    /// Forgets a ready spare whose process died (called from the supervisor's exit hook);
    /// returns whether `slot` was a ready spare.
    pub fn forget_dead(&self, slot: u64) -> bool {
        let mut st = self.shared.lock();
        let before = st.ready.len();
        st.ready.retain(|s| s.process.slot() != slot);
        let found = st.ready.len() != before;
        if found {
            self.shared.work.notify_one();
        }
        found
    }

    /// Counters and the recent spawn-to-ready latencies.
    pub fn stats(&self) -> SpareStats {
        let st = self.shared.lock();
        SpareStats {
            ready: st.ready.len(),
            starting: st.starting,
            spawned: st.spawned,
            taken: st.taken,
            failed: st.failed,
            waited: st.waited,
            spawner_cpu: st.spawner_cpu,
            spawn_call_total: st.spawn_call_total,
            ready_latencies: st.samples.iter().copied().collect(),
        }
    }

    /// Slots of the ready spares.
    pub fn ready_slots(&self) -> Vec<u64> {
        self.shared
            .lock()
            .ready
            .iter()
            .map(|s| s.process.slot())
            .collect()
    }

    /// Stops the spawner: kills every spare, ready or starting, and removes their slots. The
    /// spawner thread exits last, after everything it spawned has been killed. Idempotent.
    pub fn shutdown(&self) {
        let ready: Vec<Spare> = {
            let mut st = self.shared.lock();
            st.shutdown = true;
            self.shared.work.notify_all();
            self.shared.ready.notify_all();
            st.ready.drain(..).collect()
        };
        for spare in ready {
            discard(&self.shared.layout, &spare.process);
        }
        let handle = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle
            && h.join().is_err()
        {
            tracing::error!("the spawner thread panicked");
        }
        // A spare the spawner made ready while the first drain ran (its round was under way).
        let late: Vec<Spare> = self.shared.lock().ready.drain(..).collect();
        for spare in late {
            discard(&self.shared.layout, &spare.process);
        }
    }
}

impl Drop for Spares {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Kills a process that will not be used and removes its slot.
pub(crate) fn discard(layout: &Layout, process: &VmmProcess) {
    process.kill(true);
    if let Err(e) = layout.remove_slot(process.slot()) {
        tracing::warn!(slot = process.slot(), error = %e, "cannot remove a spare's slot");
    }
}

/// The end of a log file, for error messages.
pub(crate) fn log_tail(path: &std::path::Path, max: u64) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if f.seek(SeekFrom::Start(len.saturating_sub(max))).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    let _ = f.take(max).read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).trim().to_string()
}

/// A process spawned and not yet answering.
struct Starting {
    process: Arc<VmmProcess>,
    client: FirecrackerClient,
    probe: Probe,
}

/// Where the readiness check of a starting process is. It never blocks the spawner: the
/// `GET /` is written on a non-blocking connection and its answer picked up by a later poll,
/// so other processes are spawned and polled while this one prepares its VM shell.
enum Probe {
    /// The API socket does not accept connections yet; try again at this time.
    Connecting(Instant),
    /// `GET /` was sent; the answer is being collected.
    Sent { stream: UnixStream, buf: Vec<u8> },
}

enum Poll {
    Ready(Spare),
    Pending(Starting),
    Failed(SpawnFailure),
}

/// How many processes to start now: enough to reach `count` ready spares plus one per waiting
/// caller, within `max_starting`, and none while backing off after a failure.
fn to_start(shared: &Shared, st: &State, starting: usize, backing_off: bool) -> usize {
    if backing_off {
        return 0;
    }
    let wanted = shared.config.count + st.waiters;
    let have = st.ready.len() + starting;
    let room = shared.config.max_starting.saturating_sub(starting);
    wanted.saturating_sub(have).min(room)
}

fn spawner(shared: &Shared) {
    let mut starting: Vec<Starting> = Vec::new();
    let mut backoff_until: Option<Instant> = None;
    loop {
        // Plan under the lock; sleep while there is nothing to do.
        let slots = {
            let mut st = shared.lock();
            let n = loop {
                if st.shutdown {
                    drop(st);
                    for s in starting.drain(..) {
                        discard(&shared.layout, &s.process);
                    }
                    return;
                }
                if backoff_until.is_some_and(|t| Instant::now() >= t) {
                    backoff_until = None;
                }
                let n = to_start(shared, &st, starting.len(), backoff_until.is_some());
                if n > 0 || !starting.is_empty() {
                    break n;
                }
                let wait = backoff_until
                    .map(|t| t.saturating_duration_since(Instant::now()))
                    .unwrap_or(Duration::from_secs(3600));
                st = shared
                    .work
                    .wait_timeout(st, wait)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
            };
            let first = st.next_slot;
            st.next_slot += n as u64;
            st.starting = starting.len() + n;
            first..first + n as u64
        };

        // Spawn outside the lock.
        for slot in slots {
            let t0 = Instant::now();
            match spawn_one(shared, slot) {
                Ok(s) => {
                    let mut st = shared.lock();
                    st.spawned += 1;
                    st.spawn_call_total += t0.elapsed();
                    drop(st);
                    starting.push(s);
                }
                Err(f) => backoff_until = Some(record_failure(shared, f)),
            }
        }

        // Poll what is starting.
        let mut still = Vec::with_capacity(starting.len());
        for s in starting.drain(..) {
            match poll_ready(shared, s) {
                Poll::Ready(spare) => {
                    let mut st = shared.lock();
                    if st.shutdown {
                        // shutdown() already drained the ready queue: never add to it now.
                        drop(st);
                        discard(&shared.layout, &spare.process);
                        continue;
                    }
                    st.consecutive_failures = 0;
                    if st.samples.len() == MAX_SAMPLES {
                        st.samples.pop_front();
                    }
                    st.samples
                        .push_back(spare.ready_at - spare.process.spawned_at());
                    st.ready.push_back(spare);
                    shared.ready.notify_all();
                }
                Poll::Pending(s) => still.push(s),
                Poll::Failed(f) => backoff_until = Some(record_failure(shared, f)),
            }
        }
        starting = still;
        {
            let mut st = shared.lock();
            st.starting = starting.len();
            st.spawner_cpu = thread_cpu();
        }
        wait_for_progress(&starting);
    }
}

/// Sleeps until a starting process may have made progress: a `GET /` answer arrives, or the
/// next connection attempt is due (at most one retry interval).
fn wait_for_progress(starting: &[Starting]) {
    if starting.is_empty() {
        return;
    }
    let now = Instant::now();
    let mut timeout = CONNECT_RETRY;
    let mut fds = Vec::with_capacity(starting.len());
    for s in starting {
        match &s.probe {
            Probe::Connecting(at) => timeout = timeout.min(at.saturating_duration_since(now)),
            Probe::Sent { stream, .. } => fds.push(nix::poll::PollFd::new(
                stream.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )),
        }
    }
    if timeout.is_zero() {
        return;
    }
    let ms = u16::try_from(timeout.as_millis().max(1)).unwrap_or(u16::MAX);
    // Errors (EINTR) only cut the wait short; the caller polls everything again anyway.
    let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms));
}

/// CPU time used by the calling thread.
fn thread_cpu() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(Duration::from)
        .unwrap_or_default()
}

/// Counts a failure, wakes takers so they can report it, and returns the end of the backoff.
fn record_failure(shared: &Shared, failure: SpawnFailure) -> Instant {
    tracing::warn!(error = %ember_core::error_chain(&failure), "starting a spare VMM failed");
    let mut st = shared.lock();
    st.failed += 1;
    st.consecutive_failures = st.consecutive_failures.saturating_add(1);
    st.last_failure = Some(Arc::new(failure));
    shared.ready.notify_all();
    let factor = 1u32 << st.consecutive_failures.saturating_sub(1).min(5);
    Instant::now() + shared.config.retry_backoff * factor
}

fn spawn_one(shared: &Shared, slot: u64) -> Result<Starting, SpawnFailure> {
    let paths = shared
        .layout
        .create_slot(slot)
        .map_err(|source| SpawnFailure::Slot {
            path: shared.layout.slot(slot).dir,
            source,
        })?;
    let netns = match &shared.settings.networks {
        Some(hook) => {
            let owner = shared
                .settings
                .jail
                .as_ref()
                .map(|j| (j.uid_of(slot), j.gid()));
            match hook.0.prepare(slot, owner) {
                Ok(path) => Some(path),
                Err(why) => {
                    hook.0.release(slot);
                    let _ = shared.layout.remove_slot(slot);
                    return Err(SpawnFailure::Network { slot, why });
                }
            }
        }
        None => None,
    };
    let instance_id = format!("slot-{slot}");
    let launch = crate::process::VmmLaunch {
        binary: &shared.settings.binary,
        extra_args: &shared.settings.extra_args,
        paths: &paths,
        instance_id: &instance_id,
        parent_death: shared.settings.parent_death,
        netns: netns.as_deref(),
    };
    let process = match VmmProcess::spawn(&launch, shared.settings.jail.as_deref()) {
        Ok(p) => Arc::new(p),
        Err(e) => {
            let _ = shared.layout.remove_slot(slot);
            if let Some(hook) = &shared.settings.networks {
                hook.0.release(slot);
            }
            return Err(e.into());
        }
    };
    if let Err(e) = shared.supervisor.watch(Arc::clone(&process)) {
        tracing::error!(error = %e, "cannot watch a VMM process; killing it");
        discard(&shared.layout, &process);
        if !process.reap_by(Instant::now() + Duration::from_secs(5)) {
            tracing::warn!(
                pid = process.pid(),
                "a killed spare VMM has not exited within 5 s"
            );
        }
        return Err(SpawnFailure::NotReady {
            pid: process.pid(),
            waited: Duration::ZERO,
            log_tail: format!("supervisor: {e}"),
        });
    }
    let client = FirecrackerClient::new(&paths.api_sock, shared.settings.client_timeouts);
    Ok(Starting {
        process,
        client,
        probe: Probe::Connecting(Instant::now() + CONNECT_RETRY),
    })
}

fn poll_ready(shared: &Shared, mut s: Starting) -> Poll {
    let pid = s.process.pid();
    let fail = |s: &Starting, f: SpawnFailure| {
        discard(&shared.layout, &s.process);
        Poll::Failed(f)
    };
    if let Some(exit) = s.process.exit_info() {
        let log_tail = log_tail(&s.process.paths().vmm_log, 600);
        return fail(
            &s,
            SpawnFailure::Exited {
                pid,
                exit,
                log_tail,
            },
        );
    }
    let age = s.process.spawned_at().elapsed();
    if age > shared.config.startup_timeout {
        let log_tail = log_tail(&s.process.paths().vmm_log, 600);
        return fail(
            &s,
            SpawnFailure::NotReady {
                pid,
                waited: age,
                log_tail,
            },
        );
    }
    let api_err = |reason: String| SpawnFailure::Api {
        pid,
        source: ClientError::Malformed { reason },
    };
    match &mut s.probe {
        Probe::Connecting(at) => {
            let now = Instant::now();
            if now < *at {
                return Poll::Pending(s);
            }
            let Ok(mut stream) = UnixStream::connect(&s.process.paths().api_sock) else {
                *at = now + CONNECT_RETRY;
                return Poll::Pending(s);
            };
            let request = crate::client::http::build_request("GET", "/", None);
            // A fresh socket's buffer takes the small request whole; then stop blocking.
            if let Err(e) = stream
                .write_all(&request)
                .and_then(|()| stream.set_nonblocking(true))
            {
                return fail(&s, api_err(format!("sending GET /: {e}")));
            }
            s.probe = Probe::Sent {
                stream,
                buf: Vec::with_capacity(512),
            };
            Poll::Pending(s)
        }
        Probe::Sent { stream, buf } => {
            let mut chunk = [0u8; 1024];
            loop {
                match stream.read(&mut chunk) {
                    Ok(0) => return fail(&s, api_err("the API closed the connection".into())),
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return fail(&s, api_err(format!("reading GET /: {e}"))),
                }
            }
            match crate::client::http::response_status(buf) {
                Ok(None) => Poll::Pending(s),
                Ok(Some(200)) => {
                    // Ready. The create path gets a connection of its own, opened now.
                    if let Err(source) = s.client.connect() {
                        return fail(&s, SpawnFailure::Api { pid, source });
                    }
                    Poll::Ready(Spare {
                        process: s.process,
                        client: s.client,
                        ready_at: Instant::now(),
                    })
                }
                Ok(Some(status)) => fail(&s, api_err(format!("GET / answered HTTP {status}"))),
                Err(reason) => fail(&s, api_err(reason)),
            }
        }
    }
}
