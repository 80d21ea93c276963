//! Configuration: command-line flags, `LAGWISE_*` environment variables and an optional TOML
//! file, checked once at start. A flag or variable wins over the file; a bad value is an
//! error that names the setting.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

use lagwise_shared::telemetry::LogFormat;
use lagwise_shared::topology::NodeAddr;

use crate::auth::{UserConfig, Users};
use crate::freshness::{Bounds, ReadPolicy, ReadPrefs};
use std::sync::Arc;

/// More client threads than this is a typo, not a machine.
const MAX_THREADS: usize = 256;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "lagwise-proxy",
    version,
    about = "One endpoint in front of a Valkey/Redis cluster"
)]
pub struct Args {
    /// Address to accept clients on.
    #[arg(long, env = "LAGWISE_LISTEN")]
    pub listen: Option<String>,
    /// Cluster nodes to learn the topology from, comma-separated host:port.
    #[arg(long, env = "LAGWISE_SEEDS", value_delimiter = ',')]
    pub seeds: Vec<String>,
    /// A TOML file with the same settings (flags and environment win).
    #[arg(long, env = "LAGWISE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Password clients must give (AUTH) to use the proxy, as the admin user `default`;
    /// more users in the config file's `[[users]]`. None: no authentication.
    #[arg(long, env = "LAGWISE_PASSWORD")]
    pub password: Option<String>,
    /// Password for the cluster nodes (AUTH).
    #[arg(long, env = "LAGWISE_BACKEND_PASSWORD")]
    pub backend_password: Option<String>,
    /// Username for the cluster nodes (AUTH with ACL users).
    #[arg(long, env = "LAGWISE_BACKEND_USERNAME")]
    pub backend_username: Option<String>,
    /// Log level (error, warn, info, debug); RUST_LOG wins.
    #[arg(long, env = "LAGWISE_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Log line format: `text` (default) or `json`.
    #[arg(long, env = "LAGWISE_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Address of the admin HTTP listener (`/live`, `/ready`, `/metrics`); none by default.
    #[arg(long, env = "LAGWISE_ADMIN")]
    pub admin: Option<String>,
    /// Start a local cluster of lagwise-node processes (3 primaries, 1 replica each) and
    /// serve it; `--seeds` is not needed. Everything stops on Ctrl-C.
    #[arg(long, env = "LAGWISE_DEMO")]
    pub demo: bool,
    /// Where the demo cluster keeps its data and logs (default: a new temporary directory).
    #[arg(long, env = "LAGWISE_DEMO_DIR")]
    pub demo_dir: Option<PathBuf>,
    /// Where read-only commands go: `primary` (default), `prefer-replica` (a replica within
    /// the staleness bounds, else the primary) or `replica` (only such replicas; -NOREPLICA
    /// when there is none). Replica reads are monotonic per connection and, unless
    /// `--read-your-writes false`, show the connection its own writes. A connection can
    /// change it with `PROXY READPOLICY <policy> [MAXLAG <ms>] [READYOURWRITES on|off]`.
    #[arg(long, env = "LAGWISE_READ_POLICY")]
    pub read_policy: Option<String>,
    /// Staleness bound of a replica read, in milliseconds (default 100): a read never returns
    /// data older than this.
    #[arg(long, env = "LAGWISE_MAX_LAG_MS")]
    pub max_lag_ms: Option<u64>,
    /// After a connection's write to a shard, its reads there go only to replicas that have
    /// the write (default true).
    #[arg(long, env = "LAGWISE_READ_YOUR_WRITES")]
    pub read_your_writes: Option<bool>,
    /// Read latency SLO: a replica whose p99 over the last seconds exceeds this many
    /// milliseconds gets (almost) no reads until it is back within it (default 0: no SLO).
    #[arg(long, env = "LAGWISE_READ_SLO_MS")]
    pub read_slo_ms: Option<f64>,
    /// Hedged reads: `off` (default), a delay such as `2ms`, or `p95` (the chosen replica's
    /// windowed p95): a replica read not answered by then is also sent to the primary.
    #[arg(long, env = "LAGWISE_HEDGE_AFTER")]
    pub hedge_after: Option<String>,
    /// The proxy's zone: replicas of the same zone (`node_zones` in the config file) are
    /// preferred while they meet the SLO.
    #[arg(long, env = "LAGWISE_ZONE")]
    pub zone: Option<String>,
    /// How many bytes of replication stream a replica may be behind (default 0: no bound).
    #[arg(long, env = "LAGWISE_MAX_LAG_BYTES")]
    pub max_lag_bytes: Option<u64>,
    /// How often every node's replication offset is polled, in milliseconds (default 100,
    /// at least 10). Measured lag is up to one interval: keep it well under --max-lag-ms.
    #[arg(long, env = "LAGWISE_REPLICATION_POLL_INTERVAL_MS")]
    pub replication_poll_interval_ms: Option<u64>,
    /// Threads serving clients (default 1). Each has its own connections to every node; one
    /// thread serves about as many unpipelined requests as a Redis node does.
    #[arg(long, env = "LAGWISE_THREADS")]
    pub threads: Option<usize>,
}

/// The file's settings; every field optional, defaults below.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Address to accept clients on.
    pub listen: Option<String>,
    /// Cluster nodes to learn the topology from.
    pub seeds: Option<Vec<String>>,
    /// Password of the proxy's `default` user (an admin).
    pub password: Option<String>,
    /// The proxy's users: `[[users]]` with name, password, admin.
    pub users: Option<Vec<UserConfig>>,
    /// Password for the cluster nodes.
    pub backend_password: Option<String>,
    /// Username for the cluster nodes.
    pub backend_username: Option<String>,
    /// Pipelined connections per backend node, per thread.
    pub connections_per_node: Option<usize>,
    /// Threads serving clients.
    pub threads: Option<usize>,
    /// Requests queued per backend connection before new ones fail fast.
    pub max_queued_per_connection: Option<usize>,
    /// Milliseconds between periodic topology refreshes.
    pub topology_refresh_ms: Option<u64>,
    /// Milliseconds a request may keep retrying through redirects and failovers.
    pub retry_deadline_ms: Option<u64>,
    /// Milliseconds to connect to a backend.
    pub connect_timeout_ms: Option<u64>,
    /// Most clients at once.
    pub max_clients: Option<usize>,
    /// Largest bulk string a client may send, in bytes (default 512 MB, as Valkey's
    /// proto-max-bulk-len).
    pub max_request_bytes: Option<u64>,
    /// Seconds after which an idle client is disconnected (default 0: never).
    pub client_idle_timeout_secs: Option<u64>,
    /// Seconds to finish in-flight requests after SIGTERM.
    pub shutdown_grace_secs: Option<u64>,
    /// Log level.
    pub log_level: Option<String>,
    /// Log line format: "text" or "json".
    pub log_format: Option<String>,
    /// Address of the admin HTTP listener.
    pub admin: Option<String>,
    /// Where read-only commands go: "primary", "prefer-replica" or "replica".
    pub read_policy: Option<String>,
    /// Staleness bound of a replica read, in milliseconds.
    pub max_lag_ms: Option<u64>,
    /// Replication stream bytes a replica may be behind (0: no bound).
    pub max_lag_bytes: Option<u64>,
    /// A connection reads its own writes (default true).
    pub read_your_writes: Option<bool>,
    /// Read latency SLO (p99, milliseconds; 0: none).
    pub read_slo_ms: Option<f64>,
    /// Hedged reads: "off", "<n>ms" or "p95".
    pub hedge_after: Option<String>,
    /// Most reads that may be hedged, as a fraction (default 0.05).
    pub hedge_max_fraction: Option<f64>,
    /// The proxy's zone.
    pub zone: Option<String>,
    /// Each node's zone: `"host:port" = "zone"`.
    pub node_zones: Option<std::collections::HashMap<String, String>>,
    /// Milliseconds between replication offset polls (at least 10).
    pub replication_poll_interval_ms: Option<u64>,
}

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// What a reload may change.
    pub live: Live,
    pub listen: SocketAddr,
    pub seeds: Vec<NodeAddr>,
    pub backend_password: Option<String>,
    pub backend_username: Option<String>,
    pub connections_per_node: usize,
    pub threads: usize,
    pub max_queued_per_connection: usize,
    pub topology_refresh: Duration,
    pub connect_timeout: Duration,
    pub shutdown_grace: Duration,
    pub log_level: String,
    pub log_format: LogFormat,
    pub admin: Option<SocketAddr>,
    /// `--demo`: serve a local cluster started here (in this directory, if given).
    pub demo: Option<Option<PathBuf>>,
    pub replication_poll_interval: Duration,
    pub zone: Option<String>,
    pub node_zones: std::collections::HashMap<NodeAddr, String>,
}

/// Hedged reads: when a replica has not answered a read after `after`, the same read goes to
/// the primary too and the first reply wins; at most `max_fraction` of reads are hedged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hedge {
    pub after: HedgeAfter,
    pub max_fraction: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HedgeAfter {
    Off,
    Fixed(Duration),
    /// The chosen replica's windowed p95.
    P95,
}

impl HedgeAfter {
    fn parse(s: &str) -> Option<HedgeAfter> {
        let s = s.trim().to_ascii_lowercase();
        match s.as_str() {
            "" | "off" | "0" | "0ms" => Some(HedgeAfter::Off),
            "p95" => Some(HedgeAfter::P95),
            _ => {
                let ms: f64 = s.strip_suffix("ms").unwrap_or(&s).trim().parse().ok()?;
                (ms.is_finite() && ms > 0.0 && ms <= 60_000.0)
                    .then(|| HedgeAfter::Fixed(Duration::from_secs_f64(ms / 1000.0)))
            }
        }
    }
}

/// The settings a reload (SIGHUP, a changed file) may change while the proxy runs; swapped
/// whole, so a request sees either the old set or the new one.
#[derive(Debug, Clone, PartialEq)]
pub struct Live {
    /// Every connection's read policy and bounds until it sets its own.
    pub read: ReadPrefs,
    /// Read latency SLO (p99); zero: none.
    pub read_slo: Duration,
    pub hedge: Hedge,
    /// Largest bulk string a client may send (a request is at most a few of them).
    pub max_request_bytes: u64,
    /// Close a client connection idle this long (zero: never).
    pub client_idle_timeout: Duration,
    pub retry_deadline: Duration,
    pub max_clients: usize,
    pub users: Arc<Users>,
}

impl Config {
    /// The settings of `new` that differ from ours but only take effect at a restart.
    pub fn needs_restart(&self, new: &Config) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.listen != new.listen {
            out.push("listen");
        }
        if self.seeds != new.seeds {
            out.push("seeds");
        }
        if self.admin != new.admin {
            out.push("admin");
        }
        if self.connections_per_node != new.connections_per_node {
            out.push("connections_per_node");
        }
        if self.threads != new.threads {
            out.push("threads");
        }
        if self.max_queued_per_connection != new.max_queued_per_connection {
            out.push("max_queued_per_connection");
        }
        if self.zone != new.zone || self.node_zones != new.node_zones {
            out.push("zone / node_zones");
        }
        if self.replication_poll_interval != new.replication_poll_interval {
            out.push("replication_poll_interval_ms");
        }
        if self.topology_refresh != new.topology_refresh {
            out.push("topology_refresh_ms");
        }
        if self.backend_password != new.backend_password
            || self.backend_username != new.backend_username
        {
            out.push("backend credentials");
        }
        out
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("setting '{0}': {1}")]
    Invalid(&'static str, String),
    #[error("config file {0}: {1}")]
    File(String, String),
}

fn invalid(name: &'static str, msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(name, msg.into())
}

fn seed(s: &str) -> Result<NodeAddr, ConfigError> {
    let s = s.trim();
    let ok = s
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
    if ok {
        Ok(NodeAddr(s.into()))
    } else {
        Err(invalid("seeds", format!("'{s}' is not host:port")))
    }
}

impl Config {
    pub fn load(args: Args) -> Result<Config, ConfigError> {
        let file: FileConfig = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| ConfigError::File(path.display().to_string(), e.to_string()))?;
                toml::from_str(&text)
                    .map_err(|e| ConfigError::File(path.display().to_string(), e.to_string()))?
            }
            None => FileConfig::default(),
        };
        let listen = args
            .listen
            .or(file.listen)
            .unwrap_or_else(|| "127.0.0.1:6380".to_string());
        let listen: SocketAddr = listen
            .parse()
            .map_err(|_| invalid("listen", format!("'{listen}' is not an ip:port address")))?;
        let seeds: Vec<String> = if args.seeds.is_empty() {
            file.seeds.unwrap_or_default()
        } else {
            args.seeds
        };
        if seeds.is_empty() && !args.demo {
            return Err(invalid(
                "seeds",
                "at least one cluster node is needed (--seeds host:port,...)",
            ));
        }
        let seeds = seeds
            .iter()
            .map(|s| seed(s))
            .collect::<Result<Vec<_>, _>>()?;
        let positive =
            |name: &'static str, v: Option<u64>, default: u64| -> Result<u64, ConfigError> {
                match v {
                    Some(0) => Err(invalid(name, "must be greater than 0")),
                    Some(n) => Ok(n),
                    None => Ok(default),
                }
            };
        let read_policy = match args.read_policy.or(file.read_policy) {
            None => ReadPolicy::Primary,
            Some(p) => ReadPolicy::parse(&p).ok_or_else(|| {
                invalid(
                    "read_policy",
                    format!("'{p}' is not one of primary, prefer-replica, replica, nearest"),
                )
            })?,
        };
        let max_lag_ms = positive("max_lag_ms", args.max_lag_ms.or(file.max_lag_ms), 100)?;
        let poll_ms = positive(
            "replication_poll_interval_ms",
            args.replication_poll_interval_ms
                .or(file.replication_poll_interval_ms),
            100,
        )?;
        if poll_ms < 10 {
            return Err(invalid(
                "replication_poll_interval_ms",
                "must be at least 10",
            ));
        }
        Ok(Config {
            live: Live {
                read: ReadPrefs {
                    policy: read_policy,
                    bounds: Bounds {
                        max_lag: Duration::from_millis(max_lag_ms),
                        max_lag_bytes: args.max_lag_bytes.or(file.max_lag_bytes).unwrap_or(0),
                    },
                    read_your_writes: args
                        .read_your_writes
                        .or(file.read_your_writes)
                        .unwrap_or(true),
                },
                read_slo: match args.read_slo_ms.or(file.read_slo_ms) {
                    None => Duration::ZERO,
                    Some(ms) if ms.is_finite() && (0.0..=60_000.0).contains(&ms) => {
                        Duration::from_secs_f64(ms / 1000.0)
                    }
                    Some(ms) => {
                        return Err(invalid(
                            "read_slo_ms",
                            format!("{ms} is not between 0 and 60000"),
                        ))
                    }
                },
                hedge: Hedge {
                    after: match args.hedge_after.or(file.hedge_after) {
                        None => HedgeAfter::Off,
                        Some(h) => HedgeAfter::parse(&h).ok_or_else(|| {
                            invalid(
                                "hedge_after",
                                format!("'{h}' is not off, p95 or a delay like 2ms"),
                            )
                        })?,
                    },
                    max_fraction: match file.hedge_max_fraction {
                        None => 0.05,
                        Some(f) if (0.0..=1.0).contains(&f) => f,
                        Some(f) => {
                            return Err(invalid(
                                "hedge_max_fraction",
                                format!("{f} is not between 0 and 1"),
                            ))
                        }
                    },
                },
                retry_deadline: Duration::from_millis(positive(
                    "retry_deadline_ms",
                    file.retry_deadline_ms,
                    5000,
                )?),
                max_clients: positive("max_clients", file.max_clients.map(|n| n as u64), 10_000)?
                    as usize,
                max_request_bytes: match file.max_request_bytes {
                    None => lagwise_shared::codec::DEFAULT_MAX_BULK_LEN,
                    Some(n) if n >= 1024 => n,
                    Some(n) => {
                        return Err(invalid(
                            "max_request_bytes",
                            format!("{n} is below the least useful 1024"),
                        ))
                    }
                },
                client_idle_timeout: Duration::from_secs(
                    file.client_idle_timeout_secs.unwrap_or(0),
                ),
                users: Arc::new(
                    Users::new(
                        args.password.or(file.password),
                        file.users.unwrap_or_default(),
                    )
                    .map_err(|e| invalid("users", e))?,
                ),
            },
            replication_poll_interval: Duration::from_millis(poll_ms),
            zone: args.zone.or(file.zone).filter(|z| !z.is_empty()),
            node_zones: file
                .node_zones
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| seed(&k).map(|a| (a, v)))
                .collect::<Result<_, _>>()
                .map_err(|_| invalid("node_zones", "keys must be host:port"))?,
            listen,
            seeds,
            backend_password: args.backend_password.or(file.backend_password),
            backend_username: args.backend_username.or(file.backend_username),
            // One per node per thread by default: every request of a turn in one write (as
            // twemproxy's server_connections: 1). More only spreads large replies.
            connections_per_node: positive(
                "connections_per_node",
                file.connections_per_node.map(|n| n as u64),
                1,
            )? as usize,
            threads: match positive(
                "threads",
                args.threads.or(file.threads).map(|n| n as u64),
                1,
            )? {
                n if n > MAX_THREADS as u64 => {
                    return Err(invalid("threads", format!("at most {MAX_THREADS}")))
                }
                n => n as usize,
            },
            max_queued_per_connection: positive(
                "max_queued_per_connection",
                file.max_queued_per_connection.map(|n| n as u64),
                4096,
            )? as usize,
            topology_refresh: Duration::from_millis(positive(
                "topology_refresh_ms",
                file.topology_refresh_ms,
                5000,
            )?),
            connect_timeout: Duration::from_millis(positive(
                "connect_timeout_ms",
                file.connect_timeout_ms,
                1000,
            )?),
            shutdown_grace: Duration::from_secs(positive(
                "shutdown_grace_secs",
                file.shutdown_grace_secs,
                10,
            )?),
            log_level: args
                .log_level
                .or(file.log_level)
                .unwrap_or_else(|| "info".into()),
            log_format: match args.log_format.or(file.log_format) {
                None => LogFormat::Text,
                Some(f) => LogFormat::parse(&f)
                    .ok_or_else(|| invalid("log_format", format!("'{f}' is not text or json")))?,
            },
            admin: match args.admin.or(file.admin) {
                None => None,
                Some(a) => {
                    Some(a.parse().map_err(|_| {
                        invalid("admin", format!("'{a}' is not an ip:port address"))
                    })?)
                }
            },
            demo: args.demo.then_some(args.demo_dir),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Args {
        Args::parse_from(std::iter::once("lagwise-proxy").chain(v.iter().copied()))
    }

    #[test]
    fn flags_parse_and_errors_name_the_setting() {
        let c = Config::load(args(&["--listen", "127.0.0.1:7777", "--seeds", "a:1,b:2"]))
            .expect("valid");
        assert_eq!(c.listen.port(), 7777);
        assert_eq!(
            c.seeds,
            vec![NodeAddr("a:1".into()), NodeAddr("b:2".into())]
        );
        let e = Config::load(args(&["--seeds", "nope"])).expect_err("bad seed");
        assert!(e.to_string().contains("'seeds'"), "{e}");
        let e = Config::load(args(&["--listen", "x", "--seeds", "a:1"])).expect_err("bad listen");
        assert!(e.to_string().contains("'listen'"), "{e}");
        let e = Config::load(args(&[])).expect_err("no seeds");
        assert!(e.to_string().contains("'seeds'"), "{e}");
    }

    #[test]
    fn read_policy_and_bounds() {
        let c = Config::load(args(&["--seeds", "a:1"])).expect("valid");
        assert_eq!(c.live.read.policy, ReadPolicy::Primary);
        assert_eq!(c.live.read.bounds.max_lag, Duration::from_millis(100));
        assert_eq!(c.live.read.bounds.max_lag_bytes, 0);
        assert_eq!(c.replication_poll_interval, Duration::from_millis(100));
        let c = Config::load(args(&[
            "--seeds",
            "a:1",
            "--read-policy",
            "prefer-replica",
            "--max-lag-ms",
            "50",
            "--max-lag-bytes",
            "4096",
            "--replication-poll-interval-ms",
            "10",
        ]))
        .expect("valid");
        assert_eq!(c.live.read.policy, ReadPolicy::PreferReplica);
        assert_eq!(c.live.read.bounds.max_lag, Duration::from_millis(50));
        assert_eq!(c.live.read.bounds.max_lag_bytes, 4096);
        assert_eq!(c.replication_poll_interval, Duration::from_millis(10));
        let e = Config::load(args(&["--seeds", "a:1", "--read-policy", "bogus"]))
            .expect_err("unknown policy");
        assert!(e.to_string().contains("'read_policy'"), "{e}");
        let e = Config::load(args(&[
            "--seeds",
            "a:1",
            "--replication-poll-interval-ms",
            "5",
        ]))
        .expect_err("too fast");
        assert!(
            e.to_string().contains("'replication_poll_interval_ms'"),
            "{e}"
        );
        let e = Config::load(args(&["--seeds", "a:1", "--max-lag-ms", "0"])).expect_err("zero");
        assert!(e.to_string().contains("'max_lag_ms'"), "{e}");
    }

    #[test]
    fn file_settings_and_unknown_keys() {
        let dir = std::env::temp_dir().join(format!("lagwise-proxy-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let good = dir.join("good.toml");
        std::fs::write(&good, "seeds = [\"h:7000\"]\nconnections_per_node = 3\n").expect("write");
        let c =
            Config::load(args(&["--config", good.to_str().unwrap_or_default()])).expect("valid");
        assert_eq!(c.connections_per_node, 3);
        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "seeds = [\"h:7000\"]\nno_such_setting = 1\n").expect("write");
        let e = Config::load(args(&["--config", bad.to_str().unwrap_or_default()]))
            .expect_err("unknown");
        assert!(e.to_string().contains("no_such_setting"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn hedge_slo_and_zone_settings() {
        let c = Config::load(args(&["--seeds", "a:1"])).expect("valid");
        assert_eq!(c.live.hedge.after, HedgeAfter::Off);
        assert_eq!(c.live.read_slo, Duration::ZERO);
        let c = Config::load(args(&[
            "--seeds",
            "a:1",
            "--hedge-after",
            "2.5ms",
            "--read-slo-ms",
            "3",
            "--zone",
            "eu-1a",
        ]))
        .expect("valid");
        assert_eq!(
            c.live.hedge.after,
            HedgeAfter::Fixed(Duration::from_micros(2500))
        );
        assert_eq!(c.live.read_slo, Duration::from_millis(3));
        assert_eq!(c.zone.as_deref(), Some("eu-1a"));
        let c = Config::load(args(&["--seeds", "a:1", "--hedge-after", "p95"])).expect("valid");
        assert_eq!(c.live.hedge.after, HedgeAfter::P95);
        let e = Config::load(args(&["--seeds", "a:1", "--hedge-after", "soon"]))
            .expect_err("bad hedge");
        assert!(e.to_string().contains("'hedge_after'"), "{e}");
        let e =
            Config::load(args(&["--seeds", "a:1", "--read-slo-ms=100000"])).expect_err("bad slo");
        assert!(e.to_string().contains("'read_slo_ms'"), "{e}");
    }
}
