//! `ember bench api`: emberd's HTTP API over its Unix socket, measured from a client as a
//! platform's code sees it, against a real `emberd` process with a warm pool of the probe
//! template:
//!
//! - create → first exec reply, one at a time, `--concurrency` clients at once (bursts: every
//!   client starts at the same instant from a full pool, the worst case for a 2-core host), and
//!   `--concurrency` clients sharing a steady `--rate` of creates per second (paced: each
//!   create → exec → kill, the pool refilling as it goes — a sustained load); and the API's own
//!   cost: the client's latency minus what the daemon measured inside (the handoff,
//!   `start.latency_us`, and the agent call, the exit event's `duration_us`);
//! - where a burst's CPU goes: the host's busy CPU during it against its wall time, and what
//!   emberd, the VMMs and the client ran (their threads' scheduler statistics);
//! - a restart with `--vms` live sandboxes, graceful (SIGTERM) and `kill -9`: from the new
//!   process's start to serving again, and to every sandbox answering exec;
//! - emberd's resident memory: idle (a fresh daemon with a full pool) and per live sandbox (a
//!   fresh daemon holding `--vms` sandboxes, each called once, against the idle figure — both
//!   after a restart, so memory the allocator kept from the bursts does not count; that
//!   high-water figure is reported too).
//!
//! Everything it made is removed through the API at the end, and the run proves that no VMM
//! process and no VM file is left.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ember_core::{TemplateName, TemplateSpec};
use ember_host::session::leftovers_in;
use ember_host::ui::Ui;
use emberd::api::sandboxes::ExecEvent;
use emberd::client::{Client, ClientError, Endpoint};
use emberd::engine::guest::ExecRequest;
use emberd::engine::pools::SetPool;
use emberd::engine::sandboxes::CreateSandbox;
use emberd::engine::templates::BuildTemplate;

use super::cputime::{cpu_ms, host_busy_ms, run_ms, vmms_run_ms};
use super::{BenchError, BenchKind, BenchOptions, BenchReport, Target};
use crate::interrupt::Registration;
use crate::stats::Summary;

/// A daemon process under measurement.
struct Daemon {
    bin: PathBuf,
    vmm: PathBuf,
    dir: PathBuf,
    child: Option<Child>,
    /// Cleans the directory (the daemon and its VMMs) on a signal.
    interrupt: Registration,
}

impl Daemon {
    fn socket(&self) -> PathBuf {
        self.dir.join("ember.sock")
    }

    /// Starts it; returns once `/healthz` answers, with how long that took from the spawn.
    async fn start(&mut self, client: &Client) -> Result<Duration, BenchError> {
        // $EMBER_BENCH_LOG keeps the daemon's log past the run (the run's directory goes).
        let log_path = std::env::var_os("EMBER_BENCH_LOG")
            .map_or_else(|| self.dir.join("emberd.log"), PathBuf::from);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| failed(format!("opening the daemon's log: {e}")))?;
        let t0 = Instant::now();
        let child = Command::new(&self.bin)
            .arg("--socket")
            .arg(self.socket())
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .arg("--runtime-dir")
            .arg(self.dir.join("vms"))
            .arg("--vmm")
            .arg(&self.vmm)
            .args(["--spares", "16", "--log-level", "warn"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| failed(format!("starting {}: {e}", self.bin.display())))?;
        self.interrupt.set_daemon(Some(child.id()));
        self.child = Some(child);
        loop {
            if client.healthz().await.is_ok() {
                return Ok(t0.elapsed());
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                let log = std::fs::read_to_string(self.dir.join("emberd.log")).unwrap_or_default();
                return Err(failed(format!("emberd exited ({status}):\n{log}")));
            }
            if t0.elapsed() > Duration::from_secs(60) {
                return Err(failed("emberd did not serve within 60 s".into()));
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGTERM (graceful) or SIGKILL, and wait for the exit.
    fn stop(&mut self, graceful: bool) {
        if let Some(mut c) = self.child.take() {
            self.interrupt.set_daemon(None);
            if graceful {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(c.id() as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            } else {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop(false);
    }
}

fn failed(message: String) -> BenchError {
    BenchError::Failed(message)
}

fn api_err(what: &'static str) -> impl FnOnce(ClientError) -> BenchError {
    move |e| failed(format!("{what}: {e}"))
}

/// Resident memory of a process, KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Restarts the daemon gracefully `times` times with the sandboxes `ids` live, calls each
/// once, and reads the fresh daemon's resident memory a moment later; the figures, KiB.
async fn steady_rss(
    daemon: &mut Daemon,
    c: &Arc<Client>,
    ids: &[String],
    times: usize,
) -> Result<Vec<u64>, BenchError> {
    let mut out = Vec::with_capacity(times);
    for _ in 0..times {
        daemon.stop(true);
        daemon.start(c).await?;
        all_answer(c, ids).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        out.push(rss_kib(daemon.pid().unwrap_or(0)));
    }
    Ok(out)
}

/// The median of `v` (the upper one of an even count; 0 when empty).
fn median(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// One create → exec, timed from the client and from inside the daemon.
#[derive(Debug, Clone, Copy)]
struct Sample {
    create: Duration,
    create_inside: Duration,
    exec: Duration,
    exec_inside: Duration,
}

impl Sample {
    fn total(&self) -> Duration {
        self.create + self.exec
    }
    fn api_cost(&self) -> Duration {
        self.create.saturating_sub(self.create_inside) + self.exec.saturating_sub(self.exec_inside)
    }
}

fn echo(words: &[&str]) -> ExecRequest {
    ExecRequest {
        argv: std::iter::once("echo")
            .chain(words.iter().copied())
            .map(String::from)
            .collect(),
        env: Default::default(),
        cwd: None,
        user: None,
        stdin: None,
        stdin_base64: None,
        timeout_ms: None,
    }
}

fn probe() -> TemplateName {
    // Invariant: a valid constant name.
    TemplateName::new("probe").unwrap_or_else(|_| unreachable!("valid name"))
}

async fn create_and_exec(c: &Client) -> Result<(String, Sample), BenchError> {
    let t0 = Instant::now();
    let sb = c
        .create_sandbox(&CreateSandbox {
            template: probe(),
            labels: Default::default(),
            env: Default::default(),
            timeout_secs: Some(3600),
            egress: None,
        })
        .await
        .map_err(api_err("creating a sandbox"))?;
    let create = t0.elapsed();
    let id = sb.id.to_string();
    let t1 = Instant::now();
    let end = c
        .exec(&id, &echo(&["hi"]), |_| {})
        .await
        .map_err(api_err("the first exec"))?;
    let exec = t1.elapsed();
    let ExecEvent::Exit {
        exit_code: 0,
        duration_us,
        ..
    } = end
    else {
        return Err(failed(format!("the first exec ended with {end:?}")));
    };
    Ok((
        id,
        Sample {
            create,
            create_inside: Duration::from_micros(sb.start.map_or(0, |s| s.latency_us)),
            exec,
            exec_inside: Duration::from_micros(duration_us),
        },
    ))
}

async fn wait_full(c: &Client, depth: usize) -> Result<(), BenchError> {
    let t0 = Instant::now();
    loop {
        let p = c.pool("probe").await.map_err(api_err("reading the pool"))?;
        if p.depth >= depth && p.in_flight == 0 {
            return Ok(());
        }
        if t0.elapsed() > Duration::from_secs(120) {
            return Err(failed(format!("the pool did not refill: {p:?}")));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn kill_all(c: &Arc<Client>, ids: Vec<String>) -> Result<(), BenchError> {
    let tasks: Vec<_> = ids
        .chunks(16)
        .map(|chunk| {
            let (c, chunk) = (Arc::clone(c), chunk.to_vec());
            tokio::spawn(async move {
                for id in chunk {
                    c.kill(&id).await?;
                }
                Ok::<_, ClientError>(())
            })
        })
        .collect();
    for t in tasks {
        t.await
            .map_err(|e| failed(format!("a kill task: {e}")))?
            .map_err(api_err("killing a sandbox"))?;
    }
    Ok(())
}

/// Every sandbox answers an exec; returns when the last one did.
async fn all_answer(c: &Arc<Client>, ids: &[String]) -> Result<(), BenchError> {
    let tasks: Vec<_> = ids
        .chunks(ids.len().div_ceil(16).max(1))
        .map(|chunk| {
            let (c, chunk) = (Arc::clone(c), chunk.to_vec());
            tokio::spawn(async move {
                for id in chunk {
                    match c.exec(&id, &echo(&["back"]), |_| {}).await? {
                        ExecEvent::Exit { exit_code: 0, .. } => {}
                        other => {
                            return Err(ClientError::Unexpected(format!("{id}: {other:?}")));
                        }
                    }
                }
                Ok(())
            })
        })
        .collect();
    for t in tasks {
        t.await
            .map_err(|e| failed(format!("an exec task: {e}")))?
            .map_err(api_err("exec after the restart"))?;
    }
    Ok(())
}

fn rows(prefix: &str, samples: &[Sample]) -> Vec<Summary> {
    let col = |f: fn(&Sample) -> Duration| samples.iter().map(f).collect::<Vec<_>>();
    [
        ("create (POST /v1/sandboxes)", col(|s| s.create)),
        (
            "  of which inside emberd (handoff)",
            col(|s| s.create_inside),
        ),
        ("first exec (POST .../exec)", col(|s| s.exec)),
        (
            "  of which inside emberd (agent call)",
            col(|s| s.exec_inside),
        ),
        ("create -> first exec reply", col(Sample::total)),
        (
            "API's own cost (client minus inside)",
            col(Sample::api_cost),
        ),
    ]
    .into_iter()
    .filter_map(|(name, v)| Summary::of(format!("{prefix}{name}"), &v))
    .collect()
}

fn p50_ms(s: &[Summary], name_part: &str) -> f64 {
    s.iter()
        .find(|r| r.name.contains(name_part))
        .map_or(f64::NAN, |r| r.p50_us / 1e3)
}

fn p99_ms(s: &[Summary], name_part: &str) -> f64 {
    s.iter()
        .find(|r| r.name.contains(name_part))
        .map_or(f64::NAN, |r| r.p99_us / 1e3)
}

/// Sum and count of the histogram `name` with exactly `labels` (`{k="v",...}`) in a scrape.
fn histogram_sum_count(metrics: &str, name: &str, labels: &str) -> (f64, f64) {
    let read = |suffix: &str| {
        let prefix = format!("{name}_{suffix}{labels} ");
        metrics
            .lines()
            .find(|l| l.starts_with(&prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (read("sum"), read("count"))
}

/// Between two scrapes: the mean of histogram `name` with `labels`, µs, and how many
/// observations it got.
fn histogram_mean_us(before: &str, after: &str, name: &str, labels: &str) -> (f64, f64) {
    let (s0, c0) = histogram_sum_count(before, name, labels);
    let (s1, c1) = histogram_sum_count(after, name, labels);
    let mean = if c1 > c0 {
        (s1 - s0) / (c1 - c0) * 1e6
    } else {
        f64::NAN
    };
    (mean, c1 - c0)
}

/// emberd's own mean time for `method route` between two scrapes, µs.
fn mean_server_us(before: &str, after: &str, method: &str, route: &str) -> f64 {
    histogram_mean_us(
        before,
        after,
        "ember_http_request_duration_seconds",
        &format!("{{method=\"{method}\",route=\"{route}\"}}"),
    )
    .0
}

/// emberd's store commits between two scrapes with `durability`: (mean µs, per `cycles`).
fn commits(before: &str, after: &str, durability: &str, cycles: f64) -> serde_json::Value {
    let (mean, count) = histogram_mean_us(
        before,
        after,
        "ember_store_commit_duration_seconds",
        &format!("{{durability=\"{durability}\"}}"),
    );
    serde_json::json!({ "mean_us": mean, "per_cycle": count / cycles.max(1.0) })
}

/// What the paced phase measured.
struct Paced {
    samples: Vec<Sample>,
    /// How late the clients started their creates against the schedule, p99.
    lateness_p99: Duration,
}

/// `opts.concurrency` client tasks share one schedule of `n` start times `1/rate` apart; each
/// takes the next slot, waits for it, creates a sandbox, runs the first exec and kills it.
async fn paced(c: &Arc<Client>, opts: &BenchOptions, n: usize) -> Result<Paced, BenchError> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let interval = Duration::from_secs_f64(1.0 / f64::from(opts.rate.max(1)));
    let next = Arc::new(AtomicUsize::new(0));
    let start = tokio::time::Instant::now();
    let tasks: Vec<_> = (0..opts.concurrency.max(1))
        .map(|_| {
            let (c, next) = (Arc::clone(c), Arc::clone(&next));
            tokio::spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return Ok::<_, BenchError>(mine);
                    }
                    let at = start + interval.mul_f64(i as f64);
                    tokio::time::sleep_until(at).await;
                    let late = at.elapsed();
                    let (id, s) = create_and_exec(&c).await?;
                    c.kill(&id).await.map_err(api_err("killing"))?;
                    mine.push((s, late));
                }
            })
        })
        .collect();
    let mut samples = Vec::with_capacity(n);
    let mut lateness = Vec::with_capacity(n);
    for t in tasks {
        for (s, late) in t
            .await
            .map_err(|e| failed(format!("a paced client: {e}")))??
        {
            samples.push(s);
            lateness.push(late);
        }
    }
    lateness.sort();
    let lateness_p99 = lateness
        .get((lateness.len() * 99 / 100).min(lateness.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default();
    Ok(Paced {
        samples,
        lateness_p99,
    })
}

/// Runs the benchmark (see the module docs).
pub async fn run(opts: &BenchOptions, ui: &dyn Ui) -> Result<BenchReport, BenchError> {
    opts.validate(BenchKind::Api)?;
    let bin = ember_host::host::emberd_binary(|| ui.stage("building emberd (first run)", None))
        .map_err(|e| failed(e.to_string()))?;
    let dir = opts
        .workdir
        .join(format!("emberd-bench-{}", std::process::id()));
    let interrupt = Registration::new(&dir);
    std::fs::create_dir_all(&dir)
        .map_err(|e| failed(format!("creating {}: {e}", dir.display())))?;
    let mut daemon = Daemon {
        bin,
        vmm: opts.vmm.clone(),
        dir: dir.clone(),
        child: None,
        interrupt,
    };
    let client = Arc::new(Client::new(Endpoint::Unix(daemon.socket())));
    let result = measure(&mut daemon, &client, opts, ui).await;
    daemon.stop(true);
    let left = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || leftovers_in(&dir, &dir.join("vms")))
            .await
            .unwrap_or_default()
    };
    for pid in &left.processes {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    // The daemon's VMMs were jailed: their mounts and cgroups go with its directory.
    let _ = ember_runtime::jail::remove_leftovers(
        &dir.join("vms"),
        std::path::Path::new(ember_runtime::jail::CGROUP_ROOT),
    );
    let _ = std::fs::remove_dir_all(&dir);
    drop(daemon);
    result?.close(left)
}

async fn measure(
    daemon: &mut Daemon,
    c: &Arc<Client>,
    opts: &BenchOptions,
    ui: &dyn Ui,
) -> Result<BenchReport, BenchError> {
    let mut report = BenchReport::new(BenchKind::Api);
    let depth = opts.concurrency;
    ui.stage("starting emberd", None);
    daemon.start(c).await?;
    ui.finish(&format!("serving on {}", daemon.socket().display()));
    ui.stage(
        "building the probe template and its warm pool",
        Some(depth as u64),
    );
    c.build_template(&BuildTemplate {
        name: probe(),
        spec: TemplateSpec::probe(),
    })
    .await
    .map_err(api_err("building the template"))?;
    c.set_pool(
        "probe",
        &SetPool {
            min_depth: depth as u32,
            max_depth: None,
            pooled: opts.pooled,
            max_age_secs: None,
            refill_parallelism: Some(8),
        },
    )
    .await
    .map_err(api_err("setting the pool"))?;
    wait_full(c, depth).await?;
    ui.finish(&format!("{depth} warm VMs"));
    // Idle: a freshly started daemon with a full pool and no sandbox (restarted, so what the
    // build left in the allocator does not count), a moment after the last request.
    daemon.stop(true);
    daemon.start(c).await?;
    wait_full(c, depth).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_idle = rss_kib(daemon.pid().unwrap_or(0));

    // One at a time.
    let n_seq = opts.iterations.clamp(1, 100);
    ui.stage("create -> exec, one at a time", Some(n_seq as u64));
    let mut seq = Vec::new();
    let seq_scrape_before = c.metrics().await.map_err(api_err("reading /metrics"))?;
    for i in 0..n_seq {
        let (id, s) = create_and_exec(c).await?;
        seq.push(s);
        c.kill(&id).await.map_err(api_err("killing"))?;
        wait_full(c, depth).await?;
        ui.progress(i as u64 + 1);
    }
    let seq_scrape_after = c.metrics().await.map_err(api_err("reading /metrics"))?;
    // The floor under every call: an HTTP exchange that does nothing (a kept-alive
    // connection, the daemon idle but warm, as between the creates above).
    let mut floor = Vec::with_capacity(n_seq);
    for _ in 0..n_seq {
        let t0 = Instant::now();
        c.healthz().await.map_err(api_err("GET /healthz"))?;
        floor.push(t0.elapsed());
    }
    report.figure(
        "one_at_a_time_server_side_mean_us",
        serde_json::json!({
            "create": mean_server_us(&seq_scrape_before, &seq_scrape_after, "POST", "/v1/sandboxes"),
            "exec": mean_server_us(&seq_scrape_before, &seq_scrape_after, "POST", "/v1/sandboxes/{id}/exec"),
            "store_commits": commits(&seq_scrape_before, &seq_scrape_after, "process", n_seq as f64),
            "note": "emberd's own request timing (its HTTP latency histogram), mean; its store \
                     commits (lock wait included) per create + exec + kill + refill cycle",
        }),
    );
    ui.finish("done");

    // Bursts of `concurrency` clients at once.
    let rounds = opts
        .iterations
        .div_ceil(opts.concurrency)
        .clamp(1, 20)
        .max(3);
    ui.stage(
        &format!(
            "{rounds} bursts of {} creates -> exec at once",
            opts.concurrency
        ),
        Some(rounds as u64),
    );
    let mut burst = Vec::new();
    let scrape_before = c.metrics().await.map_err(api_err("reading /metrics"))?;
    let daemon_pid = daemon.pid().unwrap_or(0);
    let cpu_before = (cpu_ms(daemon_pid), cpu_ms(std::process::id()));
    // The bursts themselves (barrier to last reply): wall time and the host's busy CPU in it.
    let (mut window_wall_ms, mut window_busy_ms, mut window_emberd_ms) = (0.0, 0.0, 0.0);
    let (mut window_vmms_ms, mut window_client_ms) = (0.0, 0.0);
    for r in 0..rounds {
        wait_full(c, depth).await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (vmms0, client0) = (vmms_run_ms(), run_ms(std::process::id()));
        let (busy0, emberd0, t0) = (host_busy_ms(), run_ms(daemon_pid), Instant::now());
        let barrier = Arc::new(tokio::sync::Barrier::new(opts.concurrency));
        let tasks: Vec<_> = (0..opts.concurrency)
            .map(|_| {
                let (c, barrier) = (Arc::clone(c), Arc::clone(&barrier));
                tokio::spawn(async move {
                    barrier.wait().await;
                    create_and_exec(&c).await
                })
            })
            .collect();
        let mut ids = Vec::new();
        for t in tasks {
            let (id, s) = t
                .await
                .map_err(|e| failed(format!("a burst task: {e}")))??;
            ids.push(id);
            burst.push(s);
        }
        window_wall_ms += t0.elapsed().as_secs_f64() * 1e3;
        window_busy_ms += host_busy_ms() - busy0;
        window_emberd_ms += run_ms(daemon_pid) - emberd0;
        window_client_ms += run_ms(std::process::id()) - client0;
        window_vmms_ms += vmms_run_ms() - vmms0;
        kill_all(c, ids).await?;
        ui.progress(r as u64 + 1);
    }
    let scrape_after = c.metrics().await.map_err(api_err("reading /metrics"))?;
    let cycles = burst.len().max(1) as f64;
    report.figure(
        "burst_cpu_per_cycle_ms",
        serde_json::json!({
            "emberd": (cpu_ms(daemon_pid) - cpu_before.0) / cycles,
            "client": (cpu_ms(std::process::id()) - cpu_before.1) / cycles,
            "note": "create + exec + kill + the pool's refill, per cycle; VMM processes not included",
        }),
    );
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    report.figure(
        "burst_window",
        serde_json::json!({
            "wall_ms": window_wall_ms / rounds as f64,
            "host_busy_cpu_ms": window_busy_ms / rounds as f64,
            "host_cpu_utilisation": window_busy_ms / (window_wall_ms * cpus).max(f64::MIN_POSITIVE),
            "ember_cpu_utilisation": (window_emberd_ms + window_vmms_ms + window_client_ms)
                / (window_wall_ms * cpus).max(f64::MIN_POSITIVE),
            "emberd_cpu_ms": window_emberd_ms / rounds as f64,
            "vmms_cpu_ms": window_vmms_ms / rounds as f64,
            "client_cpu_ms": window_client_ms / rounds as f64,
            "vmms_alone_wall_floor_ms": window_vmms_ms / rounds as f64 / cpus,
            "note": "per burst, from the barrier to the last exec reply: the host's busy CPU \
                     (/proc/stat: clock ticks, coarse over bursts of a few ms) against the wall \
                     time; what emberd, every VMM and this client ran (their threads' \
                     scheduler statistics, exact) and their share of the host's CPUs over the \
                     wall time; and the wall time the VMMs' CPU alone needs on this host's \
                     CPUs",
        }),
    );
    report.figure(
        "burst_server_side_mean_us",
        serde_json::json!({
            "create": mean_server_us(&scrape_before, &scrape_after, "POST", "/v1/sandboxes"),
            "exec": mean_server_us(&scrape_before, &scrape_after, "POST", "/v1/sandboxes/{id}/exec"),
            "store_commits": commits(&scrape_before, &scrape_after, "process", cycles),
        }),
    );
    ui.finish(&format!("{} creates", burst.len()));
    report.latencies.extend(rows("one at a time: ", &seq));
    report.latencies.extend(Summary::of(
        "one at a time: GET /healthz (an HTTP exchange)",
        &floor,
    ));
    report
        .latencies
        .extend(rows(&format!("{} at once: ", opts.concurrency), &burst));

    // `concurrency` clients sharing one schedule of `rate` creates per second.
    wait_full(c, depth).await?;
    let n_paced = opts.iterations.clamp(1, 2000);
    ui.stage(
        &format!(
            "{n_paced} creates -> exec -> kill at {}/s by {} clients",
            opts.rate, opts.concurrency
        ),
        Some(n_paced as u64),
    );
    let paced = paced(c, opts, n_paced).await?;
    ui.finish("done");
    report.figure("paced_rate_per_s", opts.rate);
    report.figure(
        "paced_start_lateness_p99_us",
        paced.lateness_p99.as_secs_f64() * 1e6,
    );
    report.latencies.extend(rows(
        &format!("paced {}/s, {} clients: ", opts.rate, opts.concurrency),
        &paced.samples,
    ));

    // Many live sandboxes, memory, restarts.
    let n = opts.vms;
    wait_full(c, depth).await?;
    ui.stage(&format!("creating {n} live sandboxes"), Some(n as u64));
    let mut ids = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(8) {
        let tasks: Vec<_> = chunk
            .iter()
            .map(|_| {
                let c = Arc::clone(c);
                tokio::spawn(async move {
                    c.create_sandbox(&CreateSandbox {
                        template: probe(),
                        labels: Default::default(),
                        env: Default::default(),
                        timeout_secs: Some(3600),
                        egress: None,
                    })
                    .await
                })
            })
            .collect();
        for t in tasks {
            let sb = t
                .await
                .map_err(|e| failed(format!("a create task: {e}")))?
                .map_err(api_err("creating a live sandbox"))?;
            ids.push(sb.id.to_string());
        }
        ui.progress(ids.len() as u64);
    }
    all_answer(c, &ids).await?;
    wait_full(c, depth).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_live = rss_kib(daemon.pid().unwrap_or(0));
    ui.finish(&format!("{n} sandboxes running"));

    let mut restarts = serde_json::Map::new();
    let mut rss_steady = 0;
    let mut worst_serving = Duration::ZERO;
    let mut all_adopted = true;
    for (name, graceful) in [("sigterm", true), ("kill9", false)] {
        ui.stage(
            &format!("restarting emberd ({name}) under {n} sandboxes"),
            None,
        );
        daemon.stop(graceful);
        let t0 = Instant::now();
        let serving = daemon.start(c).await?;
        all_answer(c, &ids).await?;
        let answered = t0.elapsed();
        let info = c.info().await.map_err(api_err("reading /v1/info"))?;
        let adopted = info.capacity.sandboxes_running;
        if graceful {
            // Steady state: a fresh daemon holding `n` sandboxes, each called once.
            tokio::time::sleep(Duration::from_millis(200)).await;
            rss_steady = rss_kib(daemon.pid().unwrap_or(0));
        }
        all_adopted &= adopted == n;
        worst_serving = worst_serving.max(serving);
        restarts.insert(
            name.into(),
            serde_json::json!({
                "serving_ms": serving.as_secs_f64() * 1e3,
                "all_answered_exec_ms": answered.as_secs_f64() * 1e3,
                "sandboxes_adopted": adopted,
            }),
        );
        ui.finish(&format!(
            "serving after {:.0} ms, all {n} answered after {:.0} ms, {adopted} adopted",
            serving.as_secs_f64() * 1e3,
            answered.as_secs_f64() * 1e3
        ));
    }

    // One restart's figure swings by ~1 MiB with how many threads the exec burst grew: the
    // steady state is the median of three.
    ui.stage(
        &format!("restarting emberd twice more under {n} sandboxes"),
        None,
    );
    let mut rss_n = vec![rss_steady];
    rss_n.extend(steady_rss(daemon, c, &ids, 2).await?);
    let rss_steady = median(&mut rss_n.clone());
    ui.finish(&format!("{rss_steady} KiB (median of {rss_n:?})"));

    // The same steady state with half as many sandboxes: the difference is what a sandbox
    // costs the daemon (its records, its kept agent connection), without what the exec burst
    // grows in both (threads, allocator arenas) counting as if each sandbox had brought it.
    ui.stage(
        &format!("restarting emberd 3 times under {} sandboxes", n - n / 2),
        None,
    );
    let halved: Vec<String> = ids.drain(..n / 2).collect();
    kill_all(c, halved).await?;
    let rss_halves = steady_rss(daemon, c, &ids, 3).await?;
    let rss_half = median(&mut rss_halves.clone());
    ui.finish(&format!(
        "{rss_half} KiB with {} sandboxes (median of {rss_halves:?})",
        ids.len()
    ));
    report.figure(
        "emberd_rss_samples_kib",
        serde_json::json!({ n.to_string(): rss_n, (n - n / 2).to_string(): rss_halves }),
    );

    ui.stage("removing everything through the API", None);
    kill_all(c, ids).await?;
    c.delete_pool("probe")
        .await
        .map_err(api_err("deleting the pool"))?;
    c.delete_template("probe")
        .await
        .map_err(api_err("deleting the template"))?;
    ui.finish("done");

    let over_idle_per_sandbox_kib = rss_steady.saturating_sub(rss_idle) as f64 / n as f64;
    let per_sandbox_kib = (rss_steady as f64 - rss_half as f64) / (n / 2).max(1) as f64;
    let bound_kib = 30.0 * 1024.0 + 16.0 * n as f64;
    report.figure("concurrency", opts.concurrency);
    report.figure("pooled", opts.pooled);
    report.figure("live_sandboxes", n);
    report.figure("emberd_rss_idle_kib", rss_idle);
    report.figure(&format!("emberd_rss_with_{n}_sandboxes_kib"), rss_steady);
    report.figure(
        &format!("emberd_rss_with_{}_sandboxes_kib", n - n / 2),
        rss_half,
    );
    report.figure("emberd_rss_per_sandbox_kib", per_sandbox_kib);
    report.figure(
        "emberd_rss_growth_over_idle_per_sandbox_kib",
        over_idle_per_sandbox_kib,
    );
    report.figure(
        &format!("emberd_rss_with_{n}_sandboxes_after_the_bursts_kib"),
        rss_live,
    );
    report.figure("restart", restarts);
    let burst_name = format!("{} at once: ", opts.concurrency);
    let paced_name = format!("paced {}/s, {} clients: ", opts.rate, opts.concurrency);
    let l = &report.latencies;
    let targets = vec![
        Target::at_most(
            &format!("{burst_name}create -> first exec reply p50"),
            1.5,
            p50_ms(l, &format!("{burst_name}create -> first")),
            "ms",
        ),
        Target::at_most(
            &format!("{burst_name}create -> first exec reply p99"),
            10.0,
            p99_ms(l, &format!("{burst_name}create -> first")),
            "ms",
        ),
        Target::at_most(
            &format!("{paced_name}create -> first exec reply p50"),
            1.5,
            p50_ms(l, &format!("{paced_name}create -> first")),
            "ms",
        ),
        Target::at_most(
            &format!("{paced_name}create -> first exec reply p99"),
            10.0,
            p99_ms(l, &format!("{paced_name}create -> first")),
            "ms",
        ),
        Target::at_most(
            "one at a time: the API's own cost p50",
            0.3,
            p50_ms(l, "one at a time: API's own cost"),
            "ms",
        ),
        Target::at_most(
            &format!("{burst_name}the API's own cost p50"),
            0.3,
            p50_ms(l, &format!("{burst_name}API's own cost")),
            "ms",
        ),
        Target::at_most(
            &format!("restart with {n} live sandboxes: serving again"),
            1000.0,
            worst_serving.as_secs_f64() * 1e3,
            "ms",
        ),
        Target {
            name: format!("restart with {n} live sandboxes: all re-adopted"),
            target: format!("{n} of {n}"),
            measured: if all_adopted {
                format!("{n} of {n}")
            } else {
                "fewer".into()
            },
            met: all_adopted,
        },
        Target::at_most("emberd idle RSS", 30.0 * 1024.0, rss_idle as f64, "KiB"),
        Target::at_most(
            "emberd RSS per live sandbox (with n vs n/2 live)",
            16.0,
            per_sandbox_kib,
            "KiB",
        ),
        Target::at_most(
            &format!("emberd RSS with {n} live sandboxes (30 MiB + 16 KiB each)"),
            bound_kib,
            rss_steady as f64,
            "KiB",
        ),
    ];
    report.targets.extend(targets);
    Ok(report)
}
