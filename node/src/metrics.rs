//! What the admin endpoints say about the node: whether it is ready for traffic (`/ready`)
//! and its Prometheus metrics (`/metrics`, the lagwise-node table of docs/metrics.md).
//!
//! Nothing here is on the command path and nothing is counted twice: a scrape reads the
//! numbers INFO reads (the command counters, the keyspace, the replication and cluster
//! state) into a [`Snapshot`], taking one lock at a time and never two at once, then builds
//! fresh metric families from it. The keyspace lock is waited for only briefly: the dataset
//! load at start holds it throughout, and a scrape then goes without the keyspace's numbers
//! rather than hang.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use prometheus::core::Collector;
use prometheus::{Counter, CounterVec, Gauge, GaugeVec, Opts, Registry};
use tracing::{debug, warn};

use lagwise_shared::admin::{encode_registry, AdminState};

use crate::cmd::CommandCount;
use crate::replication::LinkState;
use crate::server::Server;

/// How long a scrape waits for the keyspace lock before it leaves the keyspace out.
const KEYSPACE_LOCK_WAIT: Duration = Duration::from_millis(100);

/// The node as the admin listener sees it.
pub struct Admin {
    server: Arc<Server>,
}

impl Admin {
    pub fn new(server: Arc<Server>) -> Admin {
        Admin { server }
    }
}

impl AdminState for Admin {
    fn ready(&self) -> Result<(), String> {
        Readiness::of(&self.server).check()
    }

    fn metrics(&self) -> Vec<u8> {
        encode_registry(&Snapshot::take(&self.server).registry())
    }
}

/// What `/ready` looks at: whether a dataset is still loading. Cluster health is not
/// required on purpose: a Kubernetes StatefulSet starts its pods one after another once the
/// previous one is ready, and the cluster can only be formed when all of them run.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Readiness {
    Ready,
    /// Reading the RDB or AOF file at start.
    LoadingFiles,
    /// A replica receiving and loading its primary's snapshot (a full sync).
    LoadingSnapshot {
        primary: String,
    },
}

impl Readiness {
    fn of(server: &Server) -> Readiness {
        if server.loading.load(Ordering::Acquire) {
            return Readiness::LoadingFiles;
        }
        match &server.repl.state.lock().primary {
            Some(p) if p.state == LinkState::Transfer => Readiness::LoadingSnapshot {
                primary: format!("{}:{}", p.host, p.port),
            },
            _ => Readiness::Ready,
        }
    }

    fn is_loading(&self) -> bool {
        *self != Readiness::Ready
    }

    fn check(&self) -> Result<(), String> {
        match self {
            Readiness::Ready => Ok(()),
            Readiness::LoadingFiles => Err("loading the dataset from disk (RDB or AOF)".into()),
            Readiness::LoadingSnapshot { primary } => Err(format!(
                "loading the primary's snapshot (full sync from {primary})"
            )),
        }
    }
}

/// The keyspace's numbers (INFO keyspace and stats).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Keyspace {
    keys: u64,
    expiring: u64,
    expired_total: u64,
}

/// The cluster's numbers (CLUSTER INFO), with `cluster-enabled yes`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct ClusterView {
    state_ok: bool,
    current_epoch: u64,
    config_epoch: u64,
    known_nodes: u64,
    slots_assigned: u64,
    failovers: u64,
}

/// One scrape's reading of the node.
#[derive(Debug, Clone, Default)]
struct Snapshot {
    /// Commands called at least once.
    commands: Vec<CommandCount>,
    connected_clients: u64,
    /// None when the keyspace lock was busy (a dataset load).
    keyspace: Option<Keyspace>,
    memory_used: u64,
    primary: bool,
    /// `master_repl_offset`.
    repl_offset: u64,
    /// On a primary: each replica's address and how far its acknowledged offset trails ours.
    replica_lag: Vec<(String, u64)>,
    /// On a replica: whether the link to its primary is up.
    master_link_up: Option<bool>,
    sync_full: u64,
    sync_partial_ok: u64,
    sync_partial_err: u64,
    loading: bool,
    cluster: Option<ClusterView>,
    uptime_seconds: f64,
}

impl Snapshot {
    fn take(server: &Server) -> Snapshot {
        let keyspace = match server.try_lock_db_for(KEYSPACE_LOCK_WAIT) {
            Some(db) => Some(Keyspace {
                keys: db.len() as u64,
                expiring: db.volatile_len() as u64,
                expired_total: db.stats.expired_keys,
            }),
            None => {
                debug!("metrics: the keyspace is busy (loading?), left out of this scrape");
                None
            }
        };
        let repl_offset = server.repl.offset();
        let (replica_lag, master_link_up, sync) = {
            let r = server.repl.state.lock();
            let lag = r
                .replicas
                .iter()
                .map(|rep| {
                    let addr = SocketAddr::new(rep.ip, rep.listening_port).to_string();
                    (addr, repl_offset.saturating_sub(rep.ack_offset))
                })
                .collect();
            let link_up = r.primary.as_ref().map(|p| p.state == LinkState::Up);
            (
                lag,
                link_up,
                (r.sync_full, r.sync_partial_ok, r.sync_partial_err),
            )
        };
        let cluster = server.cluster.as_ref().map(|c| {
            let failovers = c.failovers.load(Ordering::Relaxed);
            let st = c.state.lock();
            ClusterView {
                state_ok: st.health == crate::cluster::state::Health::Ok,
                current_epoch: st.current_epoch,
                config_epoch: crate::cluster::render::replica_epoch(&st, st.me()),
                known_nodes: st.nodes.len() as u64,
                // As CLUSTER INFO counts them: slots whose owner is a known node.
                slots_assigned: st
                    .slot_owner
                    .iter()
                    .flatten()
                    .filter(|id| st.nodes.contains_key(*id))
                    .count() as u64,
                failovers,
            }
        });
        Snapshot {
            commands: server.command_stats.snapshot(),
            connected_clients: server.clients.count() as u64,
            keyspace,
            memory_used: crate::info::used_memory(),
            primary: !server.repl.is_replica(),
            repl_offset,
            replica_lag,
            master_link_up,
            sync_full: sync.0,
            sync_partial_ok: sync.1,
            sync_partial_err: sync.2,
            loading: Readiness::of(server).is_loading(),
            cluster,
            uptime_seconds: server.started.elapsed().as_secs_f64(),
        }
    }

    /// The metric families of this reading, names, types and labels as docs/metrics.md
    /// lists them.
    fn registry(&self) -> Registry {
        let f = Families::default();
        let commands = || self.commands.iter();
        f.counter_vec(
            "lagwise_node_commands_total",
            "Calls per command, as INFO commandstats counts them.",
            "command",
            commands().map(|c| (c.name, c.calls as f64)),
        );
        f.counter_vec(
            "lagwise_node_command_seconds_total",
            "Time spent running each command, in seconds.",
            "command",
            commands().map(|c| (c.name, c.nanos as f64 / 1e9)),
        );
        f.gauge(
            "lagwise_node_connected_clients",
            "Connected clients (INFO connected_clients).",
            self.connected_clients as f64,
        );
        if let Some(k) = self.keyspace {
            f.gauge_vec(
                "lagwise_node_keys",
                "Keys in the database.",
                "db",
                [("0", k.keys as f64)],
            );
            f.gauge_vec(
                "lagwise_node_expiring_keys",
                "Keys with an expiry in the database.",
                "db",
                [("0", k.expiring as f64)],
            );
            f.counter(
                "lagwise_node_expired_keys_total",
                "Keys removed because they expired.",
                k.expired_total as f64,
            );
        }
        f.gauge(
            "lagwise_node_memory_used_bytes",
            "Bytes allocated by the node (INFO used_memory).",
            self.memory_used as f64,
        );
        // The node does not evict (maxmemory is not enforced yet): always 0, as in INFO.
        f.counter(
            "lagwise_node_evicted_keys_total",
            "Keys evicted to stay under maxmemory.",
            0.0,
        );
        f.gauge(
            "lagwise_node_role_primary",
            "1 on a primary, 0 on a replica.",
            flag(self.primary),
        );
        f.gauge(
            "lagwise_node_repl_offset_bytes",
            "Replication stream offset (INFO master_repl_offset).",
            self.repl_offset as f64,
        );
        f.gauge(
            "lagwise_node_connected_replicas",
            "Replicas connected to this node.",
            self.replica_lag.len() as f64,
        );
        f.gauge_vec(
            "lagwise_node_replica_lag_bytes",
            "On a primary: its replication offset minus each replica's acknowledged offset.",
            "replica",
            self.replica_lag
                .iter()
                .map(|(addr, lag)| (addr.as_str(), *lag as f64)),
        );
        if let Some(up) = self.master_link_up {
            f.gauge(
                "lagwise_node_master_link_up",
                "On a replica: 1 when the link to its primary is up.",
                flag(up),
            );
        }
        f.counter(
            "lagwise_node_sync_full_total",
            "Full resynchronizations served to replicas.",
            self.sync_full as f64,
        );
        f.counter(
            "lagwise_node_sync_partial_ok_total",
            "Partial resynchronizations accepted.",
            self.sync_partial_ok as f64,
        );
        f.counter(
            "lagwise_node_sync_partial_err_total",
            "Partial resynchronizations refused (a full sync followed).",
            self.sync_partial_err as f64,
        );
        f.gauge(
            "lagwise_node_loading",
            "1 while a dataset loads (the files at start, or a primary's snapshot).",
            flag(self.loading),
        );
        if let Some(c) = self.cluster {
            f.gauge(
                "lagwise_node_cluster_state_ok",
                "1 when this node sees the cluster state as ok.",
                flag(c.state_ok),
            );
            f.gauge(
                "lagwise_node_cluster_current_epoch",
                "The cluster's current epoch, as this node knows it.",
                c.current_epoch as f64,
            );
            f.gauge(
                "lagwise_node_cluster_config_epoch",
                "This node's config epoch (a replica's is its primary's).",
                c.config_epoch as f64,
            );
            f.gauge(
                "lagwise_node_cluster_known_nodes",
                "Nodes this node knows, itself included.",
                c.known_nodes as f64,
            );
            f.gauge(
                "lagwise_node_cluster_slots_assigned",
                "Hash slots with an owner (16384 when all are).",
                c.slots_assigned as f64,
            );
            f.counter(
                "lagwise_node_failovers_total",
                "Failovers this node won: it replaced its primary.",
                c.failovers as f64,
            );
        }
        f.gauge(
            "lagwise_node_uptime_seconds",
            "Seconds since the node started.",
            self.uptime_seconds,
        );
        f.0
    }
}

fn flag(on: bool) -> f64 {
    if on {
        1.0
    } else {
        0.0
    }
}

/// A registry being filled for one scrape.
#[derive(Default)]
struct Families(Registry);

impl Families {
    fn counter(&self, name: &str, help: &str, value: f64) {
        self.add(Counter::new(name, help).inspect(|c| c.inc_by(value)));
    }

    fn gauge(&self, name: &str, help: &str, value: f64) {
        self.add(Gauge::new(name, help).inspect(|g| g.set(value)));
    }

    fn counter_vec<'a>(
        &self,
        name: &str,
        help: &str,
        label: &str,
        values: impl IntoIterator<Item = (&'a str, f64)>,
    ) {
        self.add(
            CounterVec::new(Opts::new(name, help), &[label]).inspect(|v| {
                for (l, value) in values {
                    v.with_label_values(&[l]).inc_by(value);
                }
            }),
        );
    }

    fn gauge_vec<'a>(
        &self,
        name: &str,
        help: &str,
        label: &str,
        values: impl IntoIterator<Item = (&'a str, f64)>,
    ) {
        self.add(GaugeVec::new(Opts::new(name, help), &[label]).inspect(|v| {
            for (l, value) in values {
                v.with_label_values(&[l]).set(value);
            }
        }));
    }

    fn add<C: Collector + 'static>(&self, made: prometheus::Result<C>) {
        if let Err(e) = made.and_then(|c| self.0.register(Box::new(c))) {
            warn!(error = %e, "a metric cannot be exported");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    /// A reading with every optional part present: every metric of the table shows.
    fn full() -> Snapshot {
        Snapshot {
            commands: vec![
                CommandCount {
                    name: "client|list",
                    calls: 2,
                    nanos: 1_500,
                    rejected: 0,
                    failed: 0,
                },
                CommandCount {
                    name: "set",
                    calls: 100,
                    nanos: 2_000_000_000,
                    rejected: 1,
                    failed: 3,
                },
            ],
            connected_clients: 3,
            keyspace: Some(Keyspace {
                keys: 42,
                expiring: 7,
                expired_total: 5,
            }),
            memory_used: 1 << 20,
            primary: true,
            repl_offset: 1000,
            replica_lag: vec![("127.0.0.1:7001".into(), 12)],
            master_link_up: Some(true),
            sync_full: 1,
            sync_partial_ok: 2,
            sync_partial_err: 3,
            loading: false,
            cluster: Some(ClusterView {
                state_ok: true,
                current_epoch: 6,
                config_epoch: 2,
                known_nodes: 6,
                slots_assigned: 16384,
                failovers: 1,
            }),
            uptime_seconds: 12.5,
        }
    }

    fn text(s: &Snapshot) -> String {
        String::from_utf8(encode_registry(&s.registry())).expect("UTF-8")
    }

    /// name → (type, label names), from the text format.
    fn families(text: &str) -> BTreeMap<String, (String, BTreeSet<String>)> {
        let mut out: BTreeMap<String, (String, BTreeSet<String>)> = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE line");
                out.entry(name.into()).or_default().0 = kind.into();
            } else if !line.starts_with('#') && !line.is_empty() {
                let name_end = line.find(['{', ' ']).expect("sample line");
                let labels = line[name_end..]
                    .strip_prefix('{')
                    .and_then(|l| l.split_once('}'))
                    .map(|(l, _)| l)
                    .unwrap_or("");
                let entry = out.entry(line[..name_end].into()).or_default();
                for pair in labels.split(',').filter(|p| !p.is_empty()) {
                    let (k, _) = pair.split_once('=').expect("label pair");
                    entry.1.insert(k.into());
                }
            }
        }
        out
    }

    #[test]
    fn exports_what_docs_metrics_md_lists_for_the_node() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md");
        let doc = std::fs::read_to_string(path).expect("docs/metrics.md");
        let section = doc
            .split("## lagwise-node")
            .nth(1)
            .expect("a lagwise-node section");
        let mut documented = BTreeMap::new();
        for row in section.lines().filter(|l| l.starts_with("| `")) {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let labels: BTreeSet<String> = cells[3]
                .split(',')
                .map(|l| l.trim().trim_matches('`'))
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect();
            documented.insert(
                cells[1].trim_matches('`').to_string(),
                (cells[2].to_string(), labels),
            );
        }
        assert!(documented.len() > 20, "{documented:?}");
        assert_eq!(families(&text(&full())), documented);
    }

    #[test]
    fn values_as_exported() {
        let t = text(&full());
        for line in [
            "# HELP lagwise_node_commands_total Calls per command, as INFO commandstats counts them.",
            "lagwise_node_commands_total{command=\"set\"} 100",
            "lagwise_node_commands_total{command=\"client|list\"} 2",
            "lagwise_node_command_seconds_total{command=\"set\"} 2",
            "lagwise_node_keys{db=\"0\"} 42",
            "lagwise_node_expiring_keys{db=\"0\"} 7",
            "lagwise_node_replica_lag_bytes{replica=\"127.0.0.1:7001\"} 12",
            "lagwise_node_connected_replicas 1",
            "lagwise_node_cluster_slots_assigned 16384",
            "lagwise_node_uptime_seconds 12.5",
        ] {
            assert!(t.lines().any(|l| l == line), "no line {line:?} in:\n{t}");
        }
        for family in families(&t).keys() {
            assert!(
                t.contains(&format!("# HELP {family} ")),
                "{family} has no HELP"
            );
        }
    }

    #[test]
    fn standalone_primary_leaves_out_what_does_not_apply() {
        let s = Snapshot {
            primary: true,
            ..Snapshot::default()
        };
        let t = text(&s);
        assert!(t.contains("lagwise_node_role_primary 1"), "{t}");
        assert!(t.contains("lagwise_node_connected_replicas 0"), "{t}");
        for absent in [
            "lagwise_node_master_link_up",
            "lagwise_node_cluster_",
            "lagwise_node_failovers_total",
            "lagwise_node_replica_lag_bytes",
            "lagwise_node_commands_total",
            // The keyspace was busy: left out, not reported as empty.
            "lagwise_node_keys",
        ] {
            assert!(!t.contains(absent), "{absent} in:\n{t}");
        }
    }

    #[test]
    fn readiness_reasons() {
        assert_eq!(Readiness::Ready.check(), Ok(()));
        assert!(Readiness::LoadingFiles
            .check()
            .is_err_and(|e| e.contains("loading")));
        let r = Readiness::LoadingSnapshot {
            primary: "10.0.0.1:6379".into(),
        };
        assert!(r.is_loading());
        assert!(r.check().is_err_and(|e| e.contains("10.0.0.1:6379")));
    }
}
