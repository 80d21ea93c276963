//! The proxy's Prometheus metrics (names and labels: docs/metrics.md).
//!
//! One process-wide registry. Counters on the request path are resolved to their handles once
//! (a family × route table, enums for error and redirect kinds), so counting a request is an
//! atomic add, never a label lookup. Gauges that describe state owned elsewhere (replica lag,
//! topology, connections in flight) are filled in at scrape time from the snapshots.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// Where a request was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Primary = 0,
    Replica = 1,
    Fanout = 2,
    Local = 3,
}

const ROUTES: [&str; 4] = ["primary", "replica", "fanout", "local"];

/// Command families: (the command table's group, the metric label). The last two are the
/// proxy's own: `PROXY ...`, and commands unknown to the table.
const FAMILIES: [(&str, &str); 18] = [
    ("string", "string"),
    ("hash", "hash"),
    ("list", "list"),
    ("set", "set"),
    ("sorted-set", "sorted_set"),
    ("generic", "generic"),
    ("server", "server"),
    ("connection", "connection"),
    ("transactions", "transactions"),
    ("pubsub", "pubsub"),
    ("scripting", "scripting"),
    ("stream", "stream"),
    ("bitmap", "bitmap"),
    ("hyperloglog", "hyperloglog"),
    ("geo", "geo"),
    ("cluster", "cluster"),
    ("", "proxy"),
    ("", "other"),
];

/// The family of `PROXY ...` and of commands unknown to the table.
pub const FAMILY_PROXY: usize = FAMILIES.len() - 2;
pub const FAMILY_OTHER: usize = FAMILIES.len() - 1;

/// The family index of a command table group.
pub fn family(group: &str) -> usize {
    FAMILIES[..FAMILY_PROXY]
        .iter()
        .position(|(g, _)| *g == group)
        .unwrap_or(FAMILY_OTHER)
}

/// Error replies the proxy itself makes.
#[derive(Debug, Clone, Copy)]
pub enum ErrorKind {
    BackendConnect,
    BackendLost,
    BackendBusy,
    BackendTimeout,
    BackendProtocol,
    CrossSlot,
    NoReplica,
    RedirectLimit,
    ClusterDown,
    ClientProtocol,
    UnknownCommand,
    Auth,
    Refused,
}

const ERROR_KINDS: [&str; 13] = [
    "backend_connect",
    "backend_lost",
    "backend_busy",
    "backend_timeout",
    "backend_protocol",
    "crossslot",
    "noreplica",
    "redirect_limit",
    "clusterdown",
    "client_protocol",
    "unknown_command",
    "auth",
    "refused",
];

/// Redirects and transient errors hidden from clients.
#[derive(Debug, Clone, Copy)]
pub enum RedirectKind {
    Moved,
    Ask,
    TryAgain,
    ClusterDown,
    Loading,
}

const REDIRECT_KINDS: [&str; 5] = ["moved", "ask", "tryagain", "clusterdown", "loading"];

/// Where a read-only command was answered.
#[derive(Debug, Clone, Copy)]
pub enum ReadTarget {
    Primary = 0,
    Replica = 1,
    /// Nobody: -NOREPLICA under the `replica` policy.
    None = 2,
}

/// Why a read went where it went.
#[derive(Debug, Clone, Copy)]
pub enum ReadReason {
    /// The `primary` policy.
    Policy = 0,
    /// A replica within the bounds.
    Fresh = 1,
    /// No replica was within the bounds.
    NoFreshReplica = 2,
    /// The replica did not answer within its deadline.
    Deadline = 3,
    /// The replica failed (error reply, MOVED, connection).
    Error = 4,
    /// The replica's offset check failed.
    Precheck = 5,
    /// A monotonic-read re-read.
    Monotonic = 6,
    /// Right after the connection's own write: no replica could prove it had it.
    ReadYourWrites = 7,
    /// The fresh replicas broke the latency SLO.
    Slo = 8,
    /// The replica was slow: a hedged copy on the primary answered first.
    Hedge = 9,
}

const POLICIES: [&str; 4] = ["primary", "prefer-replica", "replica", "nearest"];
const TARGETS: [&str; 3] = ["primary", "replica", "none"];
const REASONS: [&str; 10] = [
    "policy",
    "fresh",
    "no_fresh_replica",
    "deadline",
    "error",
    "precheck",
    "monotonic",
    "read_your_writes",
    "slo",
    "hedge",
];

/// How a read right after the connection's own write on the shard was served.
#[derive(Debug, Clone, Copy)]
pub enum RywResult {
    /// By a replica that had the write.
    Replica = 0,
    /// By the primary (no replica could prove it had the write).
    Primary = 1,
}

pub struct Metrics {
    pub registry: Registry,
    requests: Vec<[IntCounter; 4]>,
    durations: [Histogram; 4],
    errors: Vec<IntCounter>,
    redirects: Vec<IntCounter>,
    reads_vec: IntCounterVec,
    /// [policy][target][reason], created on first use (most combinations never happen).
    reads: Vec<OnceLock<IntCounter>>,
    ryw: [IntCounter; 2],
    pub backend_duration: HistogramVec,
    pub backend_in_flight: IntGaugeVec,
    pub client_connections: IntGauge,
    pub clients_accepted: IntCounter,
    pub clients_rejected: IntCounter,
    pub backend_connections: IntGauge,
    pub refresh_ok: IntCounter,
    pub refresh_error: IntCounter,
    pub topology_epoch: IntGauge,
    pub slots_covered: IntGauge,
    pub shards: IntGauge,
    pub replica_lag_bytes: IntGaugeVec,
    pub replica_lag_seconds: prometheus::GaugeVec,
    pub replica_eligible: IntGaugeVec,
    pub slo_breaches: IntCounterVec,
    pub hedges_sent: IntCounter,
    pub hedges_won: IntCounter,
    pub reloads_ok: IntCounter,
    pub reloads_error: IntCounter,
    pub ready: IntGauge,
}

/// Latency buckets from 50 µs to 10 s.
fn latency_buckets() -> Vec<f64> {
    vec![
        0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
        1.0, 2.5, 5.0, 10.0,
    ]
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// The process's metrics.
pub fn get() -> &'static Metrics {
    METRICS.get_or_init(Metrics::new)
}

impl Metrics {
    fn new() -> Metrics {
        let registry = Registry::new();
        // Registration fails only on a name clash, which the unit test below would show.
        fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
            let _ = r.register(Box::new(c.clone()));
            c
        }
        let requests_vec = reg(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "lagwise_proxy_requests_total",
                    "Client requests by command family and route.",
                ),
                &["family", "route"],
            )
            .expect("valid metric"),
        );
        let requests = FAMILIES
            .iter()
            .map(|(_, f)| std::array::from_fn(|r| requests_vec.with_label_values(&[f, ROUTES[r]])))
            .collect();
        let durations_vec = reg(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "lagwise_proxy_request_duration_seconds",
                    "Time from a request's arrival to its reply, by route.",
                )
                .buckets(latency_buckets()),
                &["route"],
            )
            .expect("valid metric"),
        );
        let durations = std::array::from_fn(|r| durations_vec.with_label_values(&[ROUTES[r]]));
        let errors_vec = reg(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "lagwise_proxy_errors_total",
                    "Error replies made by the proxy, by kind.",
                ),
                &["kind"],
            )
            .expect("valid metric"),
        );
        let errors = ERROR_KINDS
            .iter()
            .map(|k| errors_vec.with_label_values(&[k]))
            .collect();
        let redirects_vec = reg(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "lagwise_proxy_redirects_total",
                    "Redirects and transient errors followed for clients, by kind.",
                ),
                &["kind"],
            )
            .expect("valid metric"),
        );
        let redirects = REDIRECT_KINDS
            .iter()
            .map(|k| redirects_vec.with_label_values(&[k]))
            .collect();
        let reads_vec = reg(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "lagwise_proxy_reads_total",
                    "Routing decisions of read-only commands by policy, target and reason.",
                ),
                &["policy", "target", "reason"],
            )
            .expect("valid metric"),
        );
        let reads = (0..POLICIES.len() * TARGETS.len() * REASONS.len())
            .map(|_| OnceLock::new())
            .collect();
        let ryw_vec = reg(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "lagwise_proxy_read_your_writes_total",
                    "Reads right after the connection's own write on the shard, by who served them.",
                ),
                &["result"],
            )
            .expect("valid metric"),
        );
        let ryw = [
            ryw_vec.with_label_values(&["replica"]),
            ryw_vec.with_label_values(&["primary"]),
        ];
        let counter = |name: &str, help: &str| {
            reg(
                &registry,
                IntCounter::new(name, help).expect("valid metric"),
            )
        };
        let gauge = |name: &str, help: &str| {
            reg(&registry, IntGauge::new(name, help).expect("valid metric"))
        };
        let refreshes = reg(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "lagwise_proxy_topology_refreshes_total",
                    "Topology refreshes by result.",
                ),
                &["result"],
            )
            .expect("valid metric"),
        );
        let hedges = reg(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "lagwise_proxy_hedged_reads_total",
                    "Hedged reads: second copies sent to the primary, and those that answered first.",
                ),
                &["result"],
            )
            .expect("valid metric"),
        );
        let reloads = reg(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "lagwise_proxy_config_reloads_total",
                    "Configuration reloads (SIGHUP or a changed file) by result.",
                ),
                &["result"],
            )
            .expect("valid metric"),
        );
        let build = reg(
            &registry,
            IntGaugeVec::new(
                Opts::new("lagwise_proxy_build_info", "The proxy's version; always 1."),
                &["version"],
            )
            .expect("valid metric"),
        );
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let replica_labels = &["shard", "replica"];
        Metrics {
            requests,
            durations,
            errors,
            redirects,
            reads_vec,
            reads,
            ryw,
            backend_duration: reg(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "lagwise_proxy_backend_request_duration_seconds",
                        "Reply time of each backend node.",
                    )
                    .buckets(latency_buckets()),
                    &["backend"],
                )
                .expect("valid metric"),
            ),
            backend_in_flight: reg(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "lagwise_proxy_backend_in_flight",
                        "Requests sent to a backend node and not yet answered.",
                    ),
                    &["backend"],
                )
                .expect("valid metric"),
            ),
            client_connections: gauge("lagwise_proxy_client_connections", "Connected clients."),
            clients_accepted: counter(
                "lagwise_proxy_client_connections_accepted_total",
                "Client connections accepted.",
            ),
            clients_rejected: counter(
                "lagwise_proxy_client_connections_rejected_total",
                "Client connections refused at max_clients.",
            ),
            backend_connections: gauge(
                "lagwise_proxy_backend_connections",
                "Open connections to cluster nodes.",
            ),
            refresh_ok: refreshes.with_label_values(&["ok"]),
            refresh_error: refreshes.with_label_values(&["error"]),
            topology_epoch: gauge(
                "lagwise_proxy_topology_epoch",
                "Highest config epoch in the slot map (0 when the source reports none).",
            ),
            slots_covered: gauge(
                "lagwise_proxy_topology_slots_covered",
                "Slots with a primary in the slot map.",
            ),
            shards: gauge("lagwise_proxy_topology_shards", "Shards in the slot map."),
            replica_lag_bytes: reg(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "lagwise_proxy_replica_lag_bytes",
                        "Replication stream bytes a replica is behind its primary, last poll.",
                    ),
                    replica_labels,
                )
                .expect("valid metric"),
            ),
            replica_lag_seconds: reg(
                &registry,
                prometheus::GaugeVec::new(
                    Opts::new(
                        "lagwise_proxy_replica_lag_seconds",
                        "Upper bound on how old a replica's data is.",
                    ),
                    replica_labels,
                )
                .expect("valid metric"),
            ),
            replica_eligible: reg(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "lagwise_proxy_replica_eligible",
                        "1 when reads may go to the replica.",
                    ),
                    replica_labels,
                )
                .expect("valid metric"),
            ),
            slo_breaches: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "lagwise_proxy_slo_breaches_total",
                        "Windows in which a backend's p99 broke the read SLO.",
                    ),
                    &["backend"],
                )
                .expect("valid metric"),
            ),
            hedges_sent: hedges.with_label_values(&["sent"]),
            hedges_won: hedges.with_label_values(&["won"]),
            reloads_ok: reloads.with_label_values(&["ok"]),
            reloads_error: reloads.with_label_values(&["error"]),
            ready: gauge(
                "lagwise_proxy_ready",
                "1 when the proxy reports ready (slot map complete and current).",
            ),
            registry,
        }
    }

    pub fn request(&self, family: usize, route: Route) {
        if let Some(f) = self.requests.get(family) {
            f[route as usize].inc();
        }
    }

    pub fn duration(&self, route: Route, d: Duration) {
        self.durations[route as usize].observe(d.as_secs_f64());
    }

    pub fn error(&self, kind: ErrorKind) {
        self.errors[kind as usize].inc();
    }

    pub fn redirect(&self, kind: RedirectKind) {
        self.redirects[kind as usize].inc();
    }

    pub fn read_your_writes(&self, result: RywResult) {
        self.ryw[result as usize].inc();
    }

    pub fn read(&self, policy: usize, target: ReadTarget, reason: ReadReason) {
        self.read_n(policy, target, reason, 1);
    }

    /// Counts `n` reads at once.
    pub fn read_n(&self, policy: usize, target: ReadTarget, reason: ReadReason, n: u64) {
        let (t, r) = (target as usize, reason as usize);
        let i = (policy * TARGETS.len() + t) * REASONS.len() + r;
        if let Some(cell) = self.reads.get(i) {
            cell.get_or_init(|| {
                self.reads_vec
                    .with_label_values(&[POLICIES[policy], TARGETS[t], REASONS[r]])
            })
            .inc_by(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_registers_and_encodes() {
        let m = Metrics::new();
        m.request(family("string"), Route::Primary);
        m.error(ErrorKind::Refused);
        m.read(1, ReadTarget::Primary, ReadReason::Monotonic);
        m.redirect(RedirectKind::Loading);
        m.duration(Route::Local, Duration::from_micros(70));
        let text =
            String::from_utf8(lagwise_shared::admin::encode_registry(&m.registry)).expect("utf8");
        for needle in [
            "lagwise_proxy_requests_total{family=\"string\",route=\"primary\"} 1",
            "lagwise_proxy_errors_total{kind=\"refused\"} 1",
            "lagwise_proxy_reads_total{policy=\"prefer-replica\",reason=\"monotonic\",target=\"primary\"} 1",
            "lagwise_proxy_redirects_total{kind=\"loading\"} 1",
            "lagwise_proxy_request_duration_seconds_bucket{route=\"local\",le=\"0.0001\"} 1",
            "lagwise_proxy_build_info{version=",
            "lagwise_proxy_ready 0",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
        // 4 routes × 18 families, all present from the start.
        assert_eq!(text.matches("lagwise_proxy_requests_total{").count(), 72);
    }
}
