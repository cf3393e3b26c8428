//! The daemon's Prometheus metrics (prometheus-client), served as text at `/metrics`:
//!
//! - `ember_http_requests_total{method,route,status}` and
//!   `ember_http_request_duration_seconds{method,route}`: every API request, by matched route;
//! - `ember_sandbox_create_duration_seconds{path}`: create → VM handed over (`warm`) or restored
//!   (`cold`), the handoff latency; `ember_sandboxes_created_total{path}`,
//!   `ember_sandboxes_ended_total{cause}`;
//! - `ember_sandboxes{state}` and `ember_vms{state}` read at scrape time;
//! - `ember_store_commit_duration_seconds{durability}`: every store write transaction;
//! - the warm pool's own (`ember_pool_*`: depth per stack, restores, evictions by cause, ...).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ember_core::{EndCause, VmQuery, VmStatus};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of an HTTP request's count.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The HTTP method.
    pub method: String,
    /// The matched route (`/v1/sandboxes/{id}`), or `unmatched`.
    pub route: String,
    /// The response status code.
    pub status: u16,
}

/// Labels of an HTTP request's latency.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The HTTP method.
    pub method: String,
    /// The matched route.
    pub route: String,
}

/// One label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PathLabel {
    /// `warm` (from a pool) or `cold` (a restore).
    pub path: &'static str,
}

/// One label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CauseLabel {
    /// Why a sandbox ended.
    pub cause: &'static str,
}

/// One label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DurabilityLabel {
    /// `full` or `process`.
    pub durability: &'static str,
}

fn latency_buckets() -> Histogram {
    // 25 µs .. ~13 s.
    Histogram::new(exponential_buckets(25e-6, 2.0, 20))
}

/// The daemon's metric handles and their registry.
pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<RequestLabels, Counter>,
    request_latency: Family<RouteLabels, Histogram>,
    create_latency: Family<PathLabel, Histogram>,
    created: Family<PathLabel, Counter>,
    ended: Family<CauseLabel, Counter>,
    commits: Family<DurabilityLabel, Histogram>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with the daemon's own metrics (collectors of the pool and the host's counts
    /// are added by [`register_collector`](Self::register_collector)).
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let request_latency =
            Family::<RouteLabels, Histogram>::new_with_constructor(latency_buckets as fn() -> _);
        let create_latency =
            Family::<PathLabel, Histogram>::new_with_constructor(latency_buckets as fn() -> _);
        let created = Family::<PathLabel, Counter>::default();
        let ended = Family::<CauseLabel, Counter>::default();
        let commits = Family::<DurabilityLabel, Histogram>::new_with_constructor(
            latency_buckets as fn() -> _,
        );
        registry.register(
            "ember_http_requests",
            "API requests by method, route and status",
            requests.clone(),
        );
        registry.register(
            "ember_http_request_duration_seconds",
            "API request latency by method and route",
            request_latency.clone(),
        );
        registry.register(
            "ember_sandbox_create_duration_seconds",
            "Sandbox create: from the request to its VM handed over (warm) or restored (cold)",
            create_latency.clone(),
        );
        registry.register(
            "ember_sandboxes_created",
            "Sandboxes created, by path (warm or cold)",
            created.clone(),
        );
        registry.register(
            "ember_sandboxes_ended",
            "Sandboxes ended, by cause",
            ended.clone(),
        );
        registry.register(
            "ember_store_commit_duration_seconds",
            "Store write transactions (lock wait, statements, commit) by durability",
            commits.clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            requests,
            request_latency,
            create_latency,
            created,
            ended,
            commits,
        }
    }

    /// Adds a collector read at every scrape.
    pub fn register_collector(&self, collector: Box<dyn Collector>) {
        self.registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .register_collector(collector);
    }

    /// Counts one API request.
    pub fn request(&self, method: &str, route: &str, status: u16, latency: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                method: method.to_string(),
                route: route.to_string(),
                status,
            })
            .inc();
        self.request_latency
            .get_or_create(&RouteLabels {
                method: method.to_string(),
                route: route.to_string(),
            })
            .observe(latency.as_secs_f64());
    }

    /// Counts a created sandbox and its handoff latency.
    pub fn sandbox_created(&self, warm: bool, latency: Duration) {
        let path = PathLabel {
            path: if warm { "warm" } else { "cold" },
        };
        self.created.get_or_create(&path).inc();
        self.create_latency
            .get_or_create(&path)
            .observe(latency.as_secs_f64());
    }

    /// Counts an ended sandbox.
    pub fn sandbox_ended(&self, cause: EndCause) {
        self.ended
            .get_or_create(&CauseLabel {
                cause: cause.as_str(),
            })
            .inc();
    }

    /// Observes one store commit.
    pub fn store_commit(&self, durability: ember_store::Durability, took: Duration) {
        let durability = match durability {
            ember_store::Durability::Full => "full",
            ember_store::Durability::Process => "process",
        };
        self.commits
            .get_or_create(&DurabilityLabel { durability })
            .observe(took.as_secs_f64());
    }

    /// The Prometheus text exposition of everything.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        prometheus_client::encoding::text::encode(&mut out, &registry)?;
        Ok(out)
    }
}

/// `ember_sandboxes{state}` and `ember_vms{state}`, read from the engine at scrape time.
pub struct HostCollector {
    /// Reads (running, paused) live sandboxes.
    pub sandboxes: Box<dyn Fn() -> (usize, usize) + Send + Sync>,
    /// The provider's VMs.
    pub vms: Arc<dyn VmQuery>,
}

impl std::fmt::Debug for HostCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HostCollector")
    }
}

impl Collector for HostCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let (running, paused) = (self.sandboxes)();
        {
            let mut fam = enc.encode_descriptor(
                "ember_sandboxes",
                "Live sandboxes by state",
                None,
                MetricType::Gauge,
            )?;
            for (state, n) in [("running", running), ("paused", paused)] {
                ConstGauge::new(n as i64).encode(fam.encode_family(&[("state", state)])?)?;
            }
        }
        let views = self.vms.list().unwrap_or_default();
        let mut fam =
            enc.encode_descriptor("ember_vms", "VMs by state", None, MetricType::Gauge)?;
        for status in [
            VmStatus::Created,
            VmStatus::Running,
            VmStatus::Paused,
            VmStatus::Stopped,
        ] {
            let n = views.iter().filter(|v| v.status == status).count();
            let label = status.to_string();
            ConstGauge::new(n as i64).encode(fam.encode_family(&[("state", label.as_str())])?)?;
        }
        Ok(())
    }
}
