//! `ember demo`: the product end to end on this machine — an emberd embedded in this process,
//! and everything through its HTTP API, as a platform's code would do it: build the probe
//! template, give it a warm pool, create sandboxes one after another and then concurrently,
//! run a command in each, move a file in and out, kill them, delete the pool and the template,
//! stop the daemon — and prove that no VMM process and no VM file is left.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ember_core::{Pooled, TemplateName, TemplateSpec};
use ember_host::session::Leftovers;
use ember_host::ui::Ui;
use emberd::api::sandboxes::ExecEvent;
use emberd::client::{Client, ClientError};
use emberd::engine::guest::ExecRequest;
use emberd::engine::pools::SetPool;
use emberd::engine::sandboxes::CreateSandbox;
use emberd::engine::templates::BuildTemplate;
use serde::Serialize;

use crate::embedded::{Embedded, EmbeddedError};
use crate::stats::Summary;

/// What the demo runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// The `ember-vmm` binary.
    pub vmm: PathBuf,
    /// Where the daemon's directory goes (tmpfs: VM directories are made and removed per VM).
    pub workdir: PathBuf,
    /// Sandboxes created one after another.
    pub sequential: usize,
    /// Sandboxes created at once.
    pub concurrent: usize,
    /// Warm pool depth.
    pub depth: usize,
    /// How pooled VMs wait.
    pub pooled: Pooled,
    /// Jail the daemon's VMMs (ember-jailer); `None` runs them unjailed.
    pub jail: Option<ember_runtime::jail::JailSettings>,
}

/// Pool counters at the end of the demo.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PoolFigures {
    /// VMs restored by refills.
    pub created: u64,
    /// VMs handed to tenants.
    pub acquired: u64,
    /// VMs evicted (any cause).
    pub evicted: u64,
    /// Failed validations.
    pub validation_failures: u64,
}

/// What the demo measured.
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    /// Building the template through the API (boot → agent → pause → snapshot), ms.
    pub template_build_ms: f64,
    /// One sandbox at a time: create, first exec, create → first exec reply.
    pub sequential: Vec<Summary>,
    /// `concurrent` sandboxes at once.
    pub concurrent: Vec<Summary>,
    /// What the first sandbox's `echo` printed.
    pub sample_output: String,
    /// Bytes that went into a sandbox and came back out unchanged.
    pub file_round_trip_bytes: usize,
    /// How many creates were served by a warm VM (the rest restored the template).
    pub warm_creates: usize,
    /// Pool counters.
    pub pool: PoolFigures,
    /// What was left after everything was destroyed (nothing, or the demo fails).
    pub leftovers: Leftovers,
    /// Whether the VMMs ran jailed (ember-jailer).
    pub jailed: bool,
}

/// Why the demo failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The daemon did not start.
    #[error(transparent)]
    Embedded(#[from] EmbeddedError),
    /// An API call failed.
    #[error("{what}")]
    Api {
        /// What the demo was doing.
        what: String,
        /// The error.
        #[source]
        source: ClientError,
    },
    /// A sandbox answered something unexpected.
    #[error("{0}")]
    Unexpected(String),
    /// Something was left behind.
    #[error("the demo left {} VMM process(es) and {} file(s) behind", .0.processes.len(), .0.files.len())]
    Leaked(Leftovers),
    /// An option is out of range.
    #[error("--{option}: {reason}")]
    InvalidOption {
        /// The option, as typed.
        option: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
}

fn api(what: impl Into<String>) -> impl FnOnce(ClientError) -> DemoError {
    let what = what.into();
    move |source| DemoError::Api { what, source }
}

/// The pool's own depth limit.
const MAX_DEPTH: usize = ember_core::pool_spec::MAX_POOL_DEPTH as usize;

impl DemoOptions {
    /// Checks the counts before anything starts.
    pub fn validate(&self) -> Result<(), DemoError> {
        // The sequential sandboxes all live until the end, as the concurrent ones do: the daemon
        // holds at most this many.
        let sandboxes = emberd::Limits::default().max_sandboxes;
        for (option, value, max) in [
            ("depth", self.depth, MAX_DEPTH),
            ("sequential", self.sequential, sandboxes),
            ("concurrent", self.concurrent, sandboxes),
        ] {
            if !(1..=max).contains(&value) {
                return Err(DemoError::InvalidOption {
                    option,
                    reason: format!("{value} is out of range; 1 to {max} are allowed"),
                });
            }
        }
        Ok(())
    }
}

/// Runs the demo.
pub async fn run(opts: &DemoOptions, ui: &dyn Ui) -> Result<DemoReport, DemoError> {
    opts.validate()?;
    ui.stage("starting an embedded emberd", None);
    let daemon = Embedded::start(
        &opts.vmm,
        &opts.workdir,
        opts.depth.min(16),
        opts.jail.clone(),
    )
    .await?;
    ui.finish("serving on its Unix socket");
    let result = run_in(&daemon, opts, ui).await;
    let pool = daemon
        .engine()
        .map(|e| {
            let m = e.pool.metrics();
            PoolFigures {
                created: m.created_total,
                acquired: m.acquired_total,
                evicted: m.evicted_total(),
                validation_failures: m.validation_failures_total,
            }
        })
        .unwrap_or_default();
    ui.stage("stopping emberd", None);
    let leftovers = daemon.finish().await;
    ui.finish(if leftovers.is_clean() {
        "0 VMM processes and 0 files left"
    } else {
        "something was left behind"
    });
    let mut report = result?;
    if !leftovers.is_clean() {
        return Err(DemoError::Leaked(leftovers));
    }
    report.pool = pool;
    report.leftovers = leftovers;
    Ok(report)
}

/// One sandbox's create and first command.
struct Made {
    id: String,
    warm: bool,
    create: Duration,
    first_exec: Duration,
    output: String,
}

async fn make(client: &Client, words: Vec<String>) -> Result<Made, DemoError> {
    let t0 = Instant::now();
    let sb = client
        .create_sandbox(&CreateSandbox {
            template: probe_name(),
            labels: [("demo".to_string(), "yes".to_string())].into(),
            env: Default::default(),
            timeout_secs: Some(600),
            egress: None,
        })
        .await
        .map_err(api("creating a sandbox"))?;
    let created = t0.elapsed();
    let id = sb.id.to_string();
    let mut argv = vec!["echo".to_string()];
    argv.extend(words);
    let mut out = Vec::new();
    let end = client
        .exec(&id, &exec(argv), |ev| {
            if let ExecEvent::Stdout { data, encoding } = ev
                && let Ok(b) = ExecEvent::bytes(data, *encoding)
            {
                out.extend_from_slice(&b);
            }
        })
        .await
        .map_err(api(format!("running echo in {id}")))?;
    let done = t0.elapsed();
    if !matches!(end, ExecEvent::Exit { exit_code: 0, .. }) {
        return Err(DemoError::Unexpected(format!(
            "echo in {id} ended with {end:?}"
        )));
    }
    Ok(Made {
        id,
        warm: sb.start.is_some_and(|s| s.warm),
        create: created,
        first_exec: done - created,
        output: String::from_utf8_lossy(&out).trim_end().to_string(),
    })
}

fn exec(argv: Vec<String>) -> ExecRequest {
    ExecRequest {
        argv,
        env: Default::default(),
        cwd: None,
        user: None,
        stdin: None,
        stdin_base64: None,
        timeout_ms: None,
    }
}

fn probe_name() -> TemplateName {
    // Invariant: "probe" is a valid template name.
    TemplateName::new("probe").unwrap_or_else(|_| unreachable!("a valid name"))
}

async fn wait_full(client: &Client, depth: usize, ui: &dyn Ui) -> Result<(), DemoError> {
    let t0 = Instant::now();
    loop {
        let p = client
            .pool("probe")
            .await
            .map_err(api("reading the pool"))?;
        ui.progress(p.depth as u64);
        if p.depth >= depth {
            return Ok(());
        }
        if t0.elapsed() > Duration::from_secs(60) {
            return Err(DemoError::Unexpected(format!(
                "the pool did not fill to {depth} within 60 s (at {}; last error: {})",
                p.depth,
                p.last_error.unwrap_or_else(|| "none".into())
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn run_in(
    daemon: &Embedded,
    opts: &DemoOptions,
    ui: &dyn Ui,
) -> Result<DemoReport, DemoError> {
    let client = daemon.client();
    ui.stage("building the probe template (POST /v1/templates)", None);
    let t0 = Instant::now();
    client
        .build_template(&BuildTemplate {
            name: probe_name(),
            spec: TemplateSpec::probe(),
        })
        .await
        .map_err(api("building the template"))?;
    let template_build_ms = t0.elapsed().as_secs_f64() * 1e3;
    ui.finish(&format!("built in {template_build_ms:.1} ms"));

    ui.stage(
        &format!(
            "filling a warm pool of {} (PUT /v1/pools/probe)",
            opts.depth
        ),
        Some(opts.depth as u64),
    );
    client
        .set_pool(
            "probe",
            &SetPool {
                min_depth: opts.depth as u32,
                max_depth: None,
                pooled: opts.pooled,
                max_age_secs: None,
                refill_parallelism: None,
            },
        )
        .await
        .map_err(api("setting the pool"))?;
    wait_full(client, opts.depth, ui).await?;
    ui.finish("full");

    ui.stage(
        "creating sandboxes one by one, each running echo",
        Some(opts.sequential as u64),
    );
    let mut seq = Vec::new();
    for i in 0..opts.sequential {
        let words = vec!["hello".into(), "from".into(), format!("tenant-{i}")];
        seq.push(make(client, words).await?);
        ui.progress(i as u64 + 1);
        wait_full(client, opts.depth, &ember_host::ui::Quiet).await?;
    }
    let sample_output = seq.first().map(|m| m.output.clone()).unwrap_or_default();

    // A file in and out of the first sandbox.
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
    let first = &seq[0].id;
    client
        .put_file(first, "/demo.bin", None, data.clone())
        .await
        .map_err(api("writing a file"))?;
    let back = client
        .get_file(first, "/demo.bin")
        .await
        .map_err(api("reading the file back"))?;
    if back != data {
        return Err(DemoError::Unexpected(
            "the file read back differs from the one written".into(),
        ));
    }
    ui.finish(&format!(
        "{} sandboxes; a 4 KiB file went in and came back",
        seq.len()
    ));
    kill_all(client, &seq).await?;

    ui.stage(
        &format!("creating {} sandboxes at once", opts.concurrent),
        Some(opts.concurrent as u64),
    );
    wait_full(client, opts.depth, &ember_host::ui::Quiet).await?;
    let barrier = Arc::new(tokio::sync::Barrier::new(opts.concurrent));
    let tasks: Vec<_> = (0..opts.concurrent)
        .map(|i| {
            let (client, barrier) = (Arc::clone(client), Arc::clone(&barrier));
            tokio::spawn(async move {
                barrier.wait().await;
                make(&client, vec!["hi".into(), format!("burst-{i}")]).await
            })
        })
        .collect();
    let mut burst = Vec::new();
    let mut first_error = None;
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await {
            Ok(Ok(m)) => burst.push(m),
            Ok(Err(e)) => first_error = first_error.or(Some(e)),
            Err(e) => {
                first_error =
                    first_error.or(Some(DemoError::Unexpected(format!("task {i} failed: {e}"))))
            }
        }
        ui.progress(i as u64 + 1);
    }
    kill_all(client, &burst).await?;
    if let Some(e) = first_error {
        return Err(e);
    }
    ui.finish(&format!("{} concurrent sandboxes", burst.len()));

    ui.stage("deleting the pool and the template", None);
    client
        .delete_pool("probe")
        .await
        .map_err(api("deleting the pool"))?;
    client
        .delete_template("probe")
        .await
        .map_err(api("deleting the template"))?;
    ui.finish("done");
    let warm_creates = seq.iter().chain(&burst).filter(|m| m.warm).count();
    Ok(DemoReport {
        template_build_ms,
        sequential: summaries(&seq),
        concurrent: summaries(&burst),
        sample_output,
        file_round_trip_bytes: data.len(),
        warm_creates,
        pool: PoolFigures::default(),
        leftovers: Leftovers::default(),
        jailed: opts.jail.is_some(),
    })
}

async fn kill_all(client: &Client, made: &[Made]) -> Result<(), DemoError> {
    for m in made {
        client
            .kill(&m.id)
            .await
            .map_err(api(format!("killing {}", m.id)))?;
    }
    Ok(())
}

/// The three latency rows of a set of sandboxes.
fn summaries(made: &[Made]) -> Vec<Summary> {
    let col = |f: fn(&Made) -> Duration| made.iter().map(f).collect::<Vec<_>>();
    [
        ("create (POST /v1/sandboxes)", col(|m| m.create)),
        (
            "first exec (POST /v1/sandboxes/{id}/exec)",
            col(|m| m.first_exec),
        ),
        (
            "create -> first exec reply",
            col(|m| m.create + m.first_exec),
        ),
    ]
    .into_iter()
    .filter_map(|(name, v)| Summary::of(name, &v))
    .collect()
}
