//! `ember bench e2b`: the unmodified `e2b` SDK (Python, from PyPI) measured from its own side
//! against an embedded emberd's E2B listeners, with a warm pool of the probe template:
//! `Sandbox.create()` latency and create → first `commands.run("echo hi")` returned, p50/p99,
//! with `--concurrency` SDK clients at once (one `Sandbox` each, on threads) and `--iterations`
//! sandboxes in all.
//!
//! The SDK runs in a Python child: `$EMBER_E2B_PYTHON`, or the repository's `target/e2b-venv`
//! (made by `scripts/setup.sh`); the script is `crates/emberd/tests/e2b/sdk_bench.py`
//! (`$EMBER_E2B_BENCH_SCRIPT` to point elsewhere). The daemon's VMMs are jailed when the jailer
//! is found, as emberd's are by default. E2B's own figures, for comparison, are in the README.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ember_core::{TemplateName, TemplateSpec};
use ember_host::ui::Ui;
use emberd::e2b::E2bConfig;
use emberd::engine::pools::SetPool;
use emberd::engine::templates::BuildTemplate;

use super::{BenchError, BenchKind, BenchOptions, BenchReport, Target};
use crate::embedded::Embedded;
use crate::stats::Summary;

/// The API key the embedded daemon accepts for the run.
const KEY: &str = "ember-bench-e2b-key";

/// Where a file of this repository is, from the CLI crate's own directory.
fn repo_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

fn python() -> Result<PathBuf, BenchError> {
    let p = std::env::var_os("EMBER_E2B_PYTHON")
        .map_or_else(|| repo_path("target/e2b-venv/bin/python"), PathBuf::from);
    if p.is_file() {
        Ok(p)
    } else {
        Err(BenchError::Failed(format!(
            "no python with the e2b SDK at {}: run scripts/setup.sh (it makes target/e2b-venv) \
             or set EMBER_E2B_PYTHON",
            p.display()
        )))
    }
}

fn free_port() -> Result<SocketAddr, BenchError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| BenchError::Failed(format!("finding a free loopback port: {e}")))
}

fn failed(what: &str) -> impl FnOnce(emberd::client::ClientError) -> BenchError + '_ {
    move |e| BenchError::Failed(format!("{what}: {e}"))
}

/// Runs the benchmark: an embedded emberd with E2B listeners, the probe template with a pool
/// deep enough for every client's sandbox, then the SDK script.
pub async fn run(
    opts: &BenchOptions,
    jail: Option<ember_runtime::jail::JailSettings>,
    ui: &dyn Ui,
) -> Result<BenchReport, BenchError> {
    opts.validate(BenchKind::E2b)?;
    let python = python()?;
    let script = std::env::var_os("EMBER_E2B_BENCH_SCRIPT").map_or_else(
        || repo_path("crates/emberd/tests/e2b/sdk_bench.py"),
        PathBuf::from,
    );
    let clients = opts.concurrency;
    let rounds = opts.iterations.div_ceil(clients).max(1);
    let depth = (2 * clients).min(super::MAX_CONCURRENCY);
    let (api, envd) = (free_port()?, free_port()?);
    ui.stage("starting an embedded emberd with E2B listeners", None);
    let jailed = jail.is_some();
    let e2b = E2bConfig {
        api,
        api_keys: vec![KEY.into()],
        envd: Some(envd),
    };
    let daemon = Embedded::start_with_e2b(&opts.vmm, &opts.workdir, 16, jail, Some(e2b))
        .await
        .map_err(|e| BenchError::Failed(format!("{e:#}")))?;
    ui.finish(&format!("E2B API on {api}, envd on {envd}"));
    let result = measure(
        &daemon,
        &python,
        &script,
        (api, envd),
        clients,
        rounds,
        depth,
        ui,
    )
    .await;
    ui.stage("deleting the pool and the template; stopping emberd", None);
    // The SDK killed its sandboxes; the pool's VMs go with the pool (a graceful stop would
    // leave them running for the next daemon).
    let client = daemon.client();
    if let Err(e) = client.delete_pool("probe").await {
        tracing::warn!(error = %e, "deleting the benchmark's pool");
    }
    if let Err(e) = client.delete_template("probe").await {
        tracing::warn!(error = %e, "deleting the benchmark's template");
    }
    let leftovers = daemon.finish().await;
    ui.finish("done");
    let mut report = result?;
    report.figure("jailed", jailed);
    report.close(leftovers)
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    daemon: &Embedded,
    python: &std::path::Path,
    script: &std::path::Path,
    (api, envd): (SocketAddr, SocketAddr),
    clients: usize,
    rounds: usize,
    depth: usize,
    ui: &dyn Ui,
) -> Result<BenchReport, BenchError> {
    let client = daemon.client();
    ui.stage("building the probe template", None);
    // Invariant: a constant, valid template name.
    #[allow(clippy::expect_used)]
    let name = TemplateName::new("probe").expect("valid constant name");
    client
        .build_template(&BuildTemplate {
            name,
            spec: TemplateSpec::probe(),
        })
        .await
        .map_err(failed("building the template"))?;
    ui.finish("built");
    ui.stage(
        &format!("filling a warm pool of {depth}"),
        Some(depth as u64),
    );
    client
        .set_pool(
            "probe",
            &SetPool {
                min_depth: depth as u32,
                max_depth: None,
                pooled: Default::default(),
                max_age_secs: None,
                refill_parallelism: None,
            },
        )
        .await
        .map_err(failed("setting the pool"))?;
    let t0 = std::time::Instant::now();
    loop {
        let p = client
            .pool("probe")
            .await
            .map_err(failed("reading the pool"))?;
        ui.progress(p.depth as u64);
        if p.depth >= depth {
            break;
        }
        if t0.elapsed() > Duration::from_secs(120) {
            return Err(BenchError::Failed(format!(
                "the pool did not fill to {depth} within 120 s (at {})",
                p.depth
            )));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    ui.finish("full");
    ui.stage(
        &format!(
            "{clients} SDK clients, {rounds} sandboxes each (python {})",
            script.display()
        ),
        None,
    );
    let out = tokio::process::Command::new(python)
        .arg(script)
        .env("E2B_API_URL", format!("http://{api}"))
        .env("E2B_SANDBOX_URL", format!("http://{envd}"))
        .env("E2B_API_KEY", KEY)
        .env("E2B_TEMPLATE", "probe")
        .env("E2B_CONCURRENCY", clients.to_string())
        .env("E2B_ROUNDS", rounds.to_string())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| BenchError::Failed(format!("running {}: {e}", python.display())))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(15).collect();
        return Err(BenchError::Failed(format!(
            "the SDK script failed ({}):\n{}",
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )));
    }
    let parsed: serde_json::Value = String::from_utf8_lossy(&out.stdout)
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| BenchError::Failed("the SDK script printed no JSON".into()))?;
    let samples = |field: &str| -> Vec<Duration> {
        parsed[field]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(serde_json::Value::as_f64)
                    .map(|ms| Duration::from_secs_f64(ms / 1e3))
                    .collect()
            })
            .unwrap_or_default()
    };
    let creates = samples("create_ms");
    let firsts = samples("create_to_first_command_ms");
    ui.finish(&format!("{} sandboxes", creates.len()));
    let mut report = BenchReport::new(BenchKind::E2b);
    let create = Summary::of(
        format!("Sandbox.create(), {clients} clients at once"),
        &creates,
    );
    let first = Summary::of(
        format!("create -> first commands.run(\"echo hi\"), {clients} clients at once"),
        &firsts,
    );
    for s in [&create, &first].into_iter().flatten() {
        report.latencies.push(s.clone());
    }
    report.figure("clients", clients);
    report.figure("sandboxes", creates.len());
    report.figure("wall_s", parsed["wall_s"].clone());
    report.figure("pool_depth", depth);
    // E2B's own: ~150 ms per create self-hosted (its figure), ~0.44 s median to first command
    // (measured by a third party); ember's aim is to be far below both.
    if let Some(c) = &create {
        report.targets.push(Target::at_most(
            "SDK create p50 (E2B self-hosted: ~150 ms)",
            150.0,
            c.p50_us / 1e3,
            "ms",
        ));
    }
    if let Some(f) = &first {
        report.targets.push(Target::at_most(
            "SDK create -> first command p50 (E2B: ~440 ms median)",
            440.0,
            f.p50_us / 1e3,
            "ms",
        ));
    }
    Ok(report)
}
