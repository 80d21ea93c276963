//! Replica faults of issue 8 beyond a paused or stopped replica, with readers through
//! `lagwise-proxy` (`--read-policy prefer-replica --max-lag-ms 100
//! --replication-poll-interval-ms 20`) and the staleness checker (`lagwise_tests::staleness`),
//! for redis-server 7.0 and for lagwise-node:
//!
//! 1. `slow_link`: the replication stream of one shard's replica goes through a link throttled
//!    with `tc ... tbf` while a writer fills the shard with 2 KB values: the replica falls
//!    seconds behind, yet answers the proxy at once (fast and stale: the dangerous case).
//! 2. `full_resync_loading`: a replica of a shard holding 300 000 keys (one hash tag) loses
//!    its replication link while the primary's backlog is 16 KB and large writes go on: it
//!    cannot resume, it must take a full resync (a snapshot transfer, then loading it). The
//!    primary must keep answering meanwhile (PING within 1 s), as a forking Valkey does.
//!
//! Each asserts at least 10 000 reads, no read error, no stale read beyond the bound plus one
//! poll interval and no read going backwards, and that PROXY INFO took the replica out of
//! rotation during the fault and back after it; each prints reads, violations, the share of
//! reads replicas served before, during and after the fault, and how long the replica was not
//! eligible.
//!
//! The slow link needs root, `ip` (network namespaces, veth) and `tc` (the `tbf` qdisc); it
//! prints `SKIP` and passes without them, unless env `CI` is set, where it fails. Layout, one
//! namespace for the slow replica R, everything else (the other nodes, the proxy, the test) in
//! the root namespace:
//!
//! ```text
//!   root namespace                                           namespace of R
//!   bridge 10.77.X.254 -- veth (tbf on its egress) ========= 10.77.X.1   replication: R → P
//!     P and the other nodes listen here                                  (P's stream to R is
//!                                                                         the throttled way)
//!   veth 10.78.X.254 ====================================== 10.78.X.1   R's announced address:
//!                                                                         the proxy's and the
//!                                                                         cluster bus's way in
//! ```
//!
//! R connects to its primary at 10.77.X.254 (the only way there), so the primary's stream to
//! R leaves the root namespace through the throttled veth; the proxy reaches R at the address
//! R announces, 10.78.X.1, through the other veth, unthrottled.
//!
//! The tests of this file run one at a time (they measure timing-dependent routing).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fs;
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;

use lagwise_tests::cluster::{
    parse_cluster_slots, query_node, query_node_string, raw_query, redis_cli, run_captured,
    Cluster, ClusterConfig, SLOTS,
};
use lagwise_tests::fixture::Supervised;
use lagwise_tests::netns::{self, Lab};
use lagwise_tests::staleness::{
    check, connect, line_field, proxy_info, reader, replica_line, runtime, wait_all_eligible,
    writer, ReadError, ReadRecord, Report, WriteLog,
};
use lagwise_tests::{err_text, info_field, key_slot, server_binary, ProxyProcess, ServerKind};

/// The proxy's staleness bound and poll interval, and its flags.
const MAX_LAG: Duration = Duration::from_millis(100);
const POLL: Duration = Duration::from_millis(20);
const PROXY_FLAGS: &[&str] = &[
    "--read-policy",
    "prefer-replica",
    "--max-lag-ms",
    "100",
    "--replication-poll-interval-ms",
    "20",
];
/// Readers of the counters through the proxy.
const READERS: usize = 4;
/// How often PROXY INFO is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(20);
/// How long a replica may take to become eligible again after a fault ends.
const RECOVERY: Duration = Duration::from_secs(60);

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A connection whose requests may take up to 30 s: for loading data and for write load,
/// which measure nothing.
async fn connect_patient(addr: &str) -> MultiplexedConnection {
    let config = redis::AsyncConnectionConfig::new()
        .set_response_timeout(Some(Duration::from_secs(30)))
        .set_connection_timeout(Some(Duration::from_secs(5)));
    redis::Client::open(format!("redis://{addr}/"))
        .unwrap()
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
}

/// Counters of one hash tag (one slot, one shard), its primary and its replica.
struct Shard {
    tag: String,
    keys: Vec<String>,
    primary: String,
    replica: String,
}

/// The shard of `tag` in `ranges` (CLUSTER SLOTS), with `counters` counter keys.
fn shard_of_tag(ranges: &[lagwise_tests::SlotRange], tag: &str, counters: usize) -> Shard {
    let slot = key_slot(tag.as_bytes());
    let range = ranges
        .iter()
        .find(|r| r.start <= slot && slot <= r.end)
        .unwrap_or_else(|| panic!("slot {slot} unserved: {ranges:?}"));
    let replica = range
        .replicas
        .first()
        .unwrap_or_else(|| panic!("no replica for slot {slot}: {ranges:?}"))
        .clone();
    Shard {
        tag: tag.to_string(),
        keys: (0..counters).map(|i| format!("{{{tag}}}:c{i}")).collect(),
        primary: range.primary.clone(),
        replica,
    }
}

/// A node's INFO (all of it) over a fresh connection; `Err` if it does not answer.
fn node_info(addr: &str) -> Result<String, String> {
    query_node_string(addr, &["INFO", "all"])
}

/// An integer field of a node's INFO.
fn info_u64(info: &str, field: &str) -> u64 {
    info_field(info, field)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in INFO:\n{info}"))
}

/// Bytes the replica has yet to process: primary's `master_repl_offset` − replica's
/// `slave_repl_offset`, the replica asked first (so never negative); -1: unknown.
fn bytes_behind(primary: &str, replica: &str) -> i64 {
    let r = node_info(replica)
        .ok()
        .and_then(|i| info_field(&i, "slave_repl_offset").and_then(|v| v.parse::<u64>().ok()));
    let p = node_info(primary).map(|i| info_u64(&i, "master_repl_offset"));
    match (p, r) {
        (Ok(p), Some(r)) => p as i64 - r as i64,
        _ => -1,
    }
}

/// Every `every` until `stop`: (time, bytes the replica is behind, how long a direct INFO to
/// the replica took).
fn watch_behind(
    primary: String,
    replica: String,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<(Instant, i64, Duration)>> {
    std::thread::spawn(move || {
        let mut out = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            let behind = bytes_behind(&primary, &replica);
            out.push((t, behind, t.elapsed()));
            std::thread::sleep(every);
        }
        out
    })
}

/// A timeline from [`watch_behind`], relative to `t0`: `+1.25s:12345B/3ms`.
fn timeline(points: &[(Instant, i64, Duration)], t0: Instant) -> String {
    points
        .iter()
        .map(|(t, b, rtt)| {
            let rel = if *t >= t0 {
                (*t - t0).as_secs_f64()
            } else {
                -(t0 - *t).as_secs_f64()
            };
            format!("{rel:+.2}s:{b}B/{}ms", rtt.as_millis())
        })
        .collect::<Vec<_>>()
        .join(" ")
}

// ---------------------------------------------------------------------------------------
// Writers, readers and the PROXY INFO sampler
// ---------------------------------------------------------------------------------------

/// PROXY INFO at one moment: the routing counters and the watched replica's line.
#[derive(Debug, Clone)]
struct Sample {
    at: Instant,
    to_replicas: u64,
    to_primaries: u64,
    /// `state=` of the watched replica; `absent` when the proxy does not list it.
    state: String,
    eligible: bool,
    /// `lag_ms=` (-1: unknown).
    lag_ms: i64,
}

/// Samples PROXY INFO every `every` until `stop`, watching the replica at `replica`.
async fn sample_proxy(
    mut con: MultiplexedConnection,
    replica: String,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> Vec<Sample> {
    let mut out = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        // A slow answer is a missing sample, not a failure: the readers are the measurement.
        let Ok(info) = redis::cmd("PROXY")
            .arg("INFO")
            .query_async::<String>(&mut con)
            .await
        else {
            tokio::time::sleep(every).await;
            continue;
        };
        let counter = |name: &str| -> u64 {
            info_field(&info, name)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in PROXY INFO:\n{info}"))
        };
        let line = replica_line(&info, &replica);
        out.push(Sample {
            at: Instant::now(),
            to_replicas: counter("reads_replica"),
            to_primaries: counter("reads_primary"),
            state: line
                .and_then(|l| line_field(l, "state"))
                .unwrap_or("absent")
                .to_string(),
            eligible: line.and_then(|l| line_field(l, "eligible")) == Some("1"),
            lag_ms: line
                .and_then(|l| line_field(l, "lag_ms"))
                .and_then(|v| v.parse().ok())
                .unwrap_or(-1),
        });
        tokio::time::sleep(every).await;
    }
    out
}

/// (to replicas, to primaries, share to replicas) between `from` and `to`, from the samples.
fn routed(samples: &[Sample], from: Instant, to: Instant) -> (u64, u64, f64) {
    let first = samples.iter().find(|s| s.at >= from);
    let last = samples.iter().rev().find(|s| s.at <= to);
    let (r, p) = match (first, last) {
        (Some(a), Some(b)) if b.at > a.at => (
            b.to_replicas - a.to_replicas,
            b.to_primaries - a.to_primaries,
        ),
        _ => (0, 0),
    };
    (r, p, r as f64 / (r + p).max(1) as f64)
}

/// How long the replica was not eligible between `from` and `to`, by the samples (each
/// ineligible sample counts until the next sample).
fn ineligible_for(samples: &[Sample], from: Instant, to: Instant) -> Duration {
    samples
        .windows(2)
        .filter(|w| w[0].at >= from && w[0].at < to && !w[0].eligible)
        .map(|w| w[1].at.min(to) - w[0].at)
        .sum()
}

/// The first sample at or after `from` that satisfies `pred`.
fn first_after(
    samples: &[Sample],
    from: Instant,
    pred: impl Fn(&Sample) -> bool,
) -> Option<&Sample> {
    samples.iter().find(|s| s.at >= from && pred(s))
}

/// How often each state was seen between `from` and `to` (`state/eligible`).
fn states_between(samples: &[Sample], from: Instant, to: Instant) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for s in samples.iter().filter(|s| s.at >= from && s.at <= to) {
        *seen
            .entry(format!("{}/eligible={}", s.state, s.eligible as u8))
            .or_insert(0) += 1;
    }
    seen
}

/// What a run of writer + readers + sampler produced.
struct Run {
    writes: WriteLog,
    reads: Vec<ReadRecord>,
    errors: Vec<ReadError>,
    samples: Vec<Sample>,
}

/// A writer (`INCR`, 1 ms apart) and readers of the counters through the proxy, and the
/// PROXY INFO sampler, at work.
struct Running {
    stop: Arc<AtomicBool>,
    writer: tokio::task::JoinHandle<WriteLog>,
    readers: Vec<tokio::task::JoinHandle<(Vec<ReadRecord>, Vec<ReadError>)>>,
    sampler: tokio::task::JoinHandle<Vec<Sample>>,
}

async fn start_run(proxy_addr: &str, keys: &[String], replica: &str) -> Running {
    let stop = Arc::new(AtomicBool::new(false));
    let w = tokio::spawn(writer(
        connect(proxy_addr).await,
        keys.to_vec(),
        ms(1),
        stop.clone(),
    ));
    let mut readers = Vec::new();
    for id in 0..READERS {
        readers.push(tokio::spawn(reader(
            connect(proxy_addr).await,
            id,
            keys.to_vec(),
            stop.clone(),
        )));
    }
    let sampler = tokio::spawn(sample_proxy(
        connect_patient(proxy_addr).await,
        replica.to_string(),
        SAMPLE_EVERY,
        stop.clone(),
    ));
    Running {
        stop,
        writer: w,
        readers,
        sampler,
    }
}

impl Running {
    async fn finish(self) -> Run {
        self.stop.store(true, Ordering::Relaxed);
        let writes = self.writer.await.unwrap();
        let mut reads = Vec::new();
        let mut errors = Vec::new();
        for r in self.readers {
            let (mut rd, mut er) = r.await.unwrap();
            reads.append(&mut rd);
            errors.append(&mut er);
        }
        Run {
            writes,
            reads,
            errors,
            samples: self.sampler.await.unwrap(),
        }
    }
}

/// Writes `SET {tag}:blob:<n mod 64> <value_len bytes>` to `addr` every `pause` until `stop`:
/// a replication stream much larger than the counters'. Returns (writes, errors).
fn start_filler(
    con: MultiplexedConnection,
    tag: &str,
    value_len: usize,
    pause: Duration,
) -> (Arc<AtomicBool>, tokio::task::JoinHandle<(u64, u64)>) {
    let stop = Arc::new(AtomicBool::new(false));
    let tag = tag.to_string();
    let task = {
        let stop = stop.clone();
        let mut con = con;
        tokio::spawn(async move {
            let value = vec![b'x'; value_len];
            let (mut writes, mut errors) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let r = redis::cmd("SET")
                    .arg(format!("{{{tag}}}:blob:{}", writes % 64))
                    .arg(&value)
                    .query_async::<()>(&mut con)
                    .await;
                match r {
                    Ok(()) => writes += 1,
                    Err(_) => errors += 1,
                }
                tokio::time::sleep(pause).await;
            }
            (writes, errors)
        })
    };
    (stop, task)
}

/// Waits (up to [`RECOVERY`]) until PROXY INFO shows the replica at `addr` eligible.
async fn wait_eligible(con: &mut MultiplexedConnection, addr: &str) -> Result<Instant, String> {
    let deadline = Instant::now() + RECOVERY;
    loop {
        let info = proxy_info(con).await;
        if replica_line(&info, addr).is_some_and(|l| line_field(l, "eligible") == Some("1")) {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            return Err(info);
        }
        tokio::time::sleep(ms(10)).await;
    }
}

/// Like `wait_eligible`, for a fault the proxy has yet to notice: the replica must first be
/// seen not eligible (the proxy's last poll may predate the fault), then eligible again.
async fn wait_eligible_again(
    con: &mut MultiplexedConnection,
    addr: &str,
) -> Result<Instant, String> {
    let deadline = Instant::now() + RECOVERY;
    loop {
        let info = proxy_info(con).await;
        if replica_line(&info, addr).is_some_and(|l| line_field(l, "eligible") != Some("1")) {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("never seen not eligible:\n{info}"));
        }
        tokio::time::sleep(ms(5)).await;
    }
    wait_eligible(con, addr).await
}

/// The common assertions on a run: enough reads, no read or write errors, no violation.
fn assert_clean(run: &Run, report: &Report, what: &str) {
    assert!(
        run.errors.is_empty(),
        "{what}: {} read errors, e.g. {:?}",
        run.errors.len(),
        &run.errors[..run.errors.len().min(5)]
    );
    assert_eq!(run.writes.errors, 0, "{what}: counter writes failed");
    assert!(
        report.reads >= 10_000,
        "{what}: only {} reads",
        report.reads
    );
    assert_eq!(
        (report.violations, report.monotonic_violations),
        (0, 0),
        "{what}: {}\n{:#?}",
        report.summary(),
        report.examples
    );
}

/// Reads the proxy has routed so far (to replicas and to primaries).
async fn reads_so_far(con: &mut MultiplexedConnection) -> u64 {
    let info = proxy_info(con).await;
    ["reads_replica", "reads_primary"]
        .iter()
        .map(|f| {
            info_field(&info, f)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("no {f} in PROXY INFO:\n{info}"))
        })
        .sum()
}

/// The time after a fault: at least 3 s, and on (up to 60 s) until the run has made 12 000
/// reads, so that a slow machine still gives the checker enough. Returns when it ended.
async fn after_phase(con: &mut MultiplexedConnection, reads_at_start: u64) -> Instant {
    let started = Instant::now();
    tokio::time::sleep(ms(3000)).await;
    while reads_so_far(con).await - reads_at_start < 12_000
        && started.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(ms(100)).await;
    }
    Instant::now()
}

fn millis(d: Option<Duration>) -> i64 {
    d.map_or(-1, |d| d.as_millis() as i64)
}

// ---------------------------------------------------------------------------------------
// 1. A slow replication link
// ---------------------------------------------------------------------------------------

/// Runs `program args`; `Err` with its output unless it succeeds.
fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {program} {args:?}: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "{program} {} failed ({}): {}{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// `None` if the slow-link test can run; otherwise why not.
fn slow_link_unavailable() -> Option<String> {
    if let Some(why) = netns::unavailable() {
        return Some(why);
    }
    run("tc", &["qdisc", "show", "dev", "lo"])
        .err()
        .map(|e| format!("`tc` does not work: {e}"))
}

fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

/// The namespace of the slow replica: a [`Lab`] of one host (reached through the bridge, the
/// replication way) plus a direct veth pair (the client way). Dropping it deletes the direct
/// veth, then the lab; stop the processes in the namespace first.
struct SlowLab {
    /// Root side of the direct veth, `10.78.X.254/24`.
    direct: String,
    /// The replica's address on the direct veth, `10.78.X.1`: what it announces.
    client_ip: String,
    lab: Lab,
}

impl SlowLab {
    fn create() -> Result<SlowLab, String> {
        let lab = Lab::create(1)?;
        let x = lab
            .root_ip()
            .split('.')
            .nth(2)
            .ok_or("malformed lab address")?
            .to_string();
        let subnet = format!("10.78.{x}");
        let used = format!(
            "{}\n{}",
            run("ip", &["-4", "addr"])?,
            run("ip", &["-4", "route", "show", "table", "all"])?
        );
        if used.contains(&format!("{subnet}.")) {
            return Err(format!("{subnet}.0/24 is already in use:\n{used}"));
        }
        // Named like the lab's links (`lwp<pid>...`): the next Lab::create removes leftovers.
        let pid = std::process::id();
        let slow = SlowLab {
            direct: format!("lwp{pid}d"),
            client_ip: format!("{subnet}.1"),
            lab,
        };
        let inside = format!("lwp{pid}e");
        let ns = slow.lab.host(0).ns.clone();
        run(
            "ip",
            &[
                "link",
                "add",
                &slow.direct,
                "type",
                "veth",
                "peer",
                "name",
                &inside,
            ],
        )?;
        run("ip", &["link", "set", &inside, "netns", &ns])?;
        run(
            "ip",
            &[
                "addr",
                "add",
                &format!("{subnet}.254/24"),
                "dev",
                &slow.direct,
            ],
        )?;
        run("ip", &["link", "set", &slow.direct, "up"])?;
        run(
            "ip",
            &[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", slow.client_ip),
                "dev",
                &inside,
            ],
        )?;
        run("ip", &["-n", &ns, "link", "set", &inside, "up"])?;
        // The qdisc the test needs: try it once here, where failing means skipping.
        let probe = Throttle::try_apply(&slow.direct, "1mbit", "16kb", "100ms")?;
        drop(probe);
        // Reachable once a connection to an unused port is refused.
        let probe: std::net::SocketAddr = format!("{}:9", slow.client_ip).parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match TcpStream::connect_timeout(&probe, Duration::from_secs(1)) {
                Ok(_) => break,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
                Err(e) if Instant::now() > deadline => {
                    return Err(format!(
                        "{} unreachable over the direct veth: {e}\n{}",
                        slow.client_ip,
                        slow.lab.describe()
                    ))
                }
                Err(_) => std::thread::sleep(ms(100)),
            }
        }
        Ok(slow)
    }

    /// The replica's address on the bridge (its replication side).
    fn replication_ip(&self) -> String {
        self.lab.host(0).ip.clone()
    }

    /// The root namespace's bridge address: where the other nodes listen.
    fn root_ip(&self) -> String {
        self.lab.root_ip()
    }

    /// The veth whose egress carries everything the root namespace sends to the replica's
    /// bridge address: the primary's replication stream.
    fn throttled_dev(&self) -> String {
        self.lab.host(0).bridge_side.clone()
    }
}

impl Drop for SlowLab {
    fn drop(&mut self) {
        // One end deleted deletes both.
        let _ = run("ip", &["link", "del", &self.direct]);
    }
}

/// A `tbf` root qdisc on a device; removed on drop if still there.
struct Throttle {
    dev: String,
    on: bool,
}

impl Throttle {
    /// `tc qdisc add dev <dev> root tbf rate <rate> burst <burst> latency <latency>`.
    fn try_apply(dev: &str, rate: &str, burst: &str, latency: &str) -> Result<Throttle, String> {
        let args = [
            "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate, "burst", burst, "latency",
            latency,
        ];
        run("tc", &args)?;
        Ok(Throttle {
            dev: dev.to_string(),
            on: true,
        })
    }

    fn apply(dev: &str, rate: &str, burst: &str, latency: &str) -> Throttle {
        Throttle::try_apply(dev, rate, burst, latency)
            .unwrap_or_else(|e| panic!("throttling {dev}: {e}"))
    }

    /// `tc -s qdisc show dev <dev>`: bytes sent, drops, backlog.
    fn stats(&self) -> String {
        run("tc", &["-s", "qdisc", "show", "dev", &self.dev]).unwrap_or_else(|e| e)
    }

    fn remove(&mut self) {
        if self.on {
            run("tc", &["qdisc", "del", "dev", &self.dev, "root"])
                .unwrap_or_else(|e| panic!("removing the throttle: {e}"));
            self.on = false;
        }
    }
}

impl Drop for Throttle {
    fn drop(&mut self) {
        if self.on {
            let _ = run("tc", &["qdisc", "del", "dev", &self.dev, "root"]);
        }
    }
}

/// One node of the slow-link cluster.
struct LabNode {
    addr: String,
    /// Stopped on drop.
    _process: Supervised,
}

/// A port `P` such that `P` and `P + 10000` can be bound on `ip` now, not in `taken`.
fn free_port(ip: &str, taken: &[u16]) -> u16 {
    let start = 20000 + (std::process::id() % 5000) as u16 * 2;
    (0..10000u16)
        .map(|i| 20000 + (start - 20000 + i) % 10000)
        .find(|&p| {
            !taken.contains(&p)
                && TcpListener::bind((ip, p)).is_ok()
                && TcpListener::bind((ip, p + 10000)).is_ok()
        })
        .unwrap_or_else(|| panic!("no free port pair on {ip}"))
}

/// Starts a cluster node of `kind` listening on `bind` (the first address is also where it
/// connects from, for servers that bind outgoing connections to it), announcing `announce`;
/// in the lab's namespace if `in_ns`. Waits until it answers PING at `announce:port`.
fn start_lab_node(
    kind: ServerKind,
    slow: &SlowLab,
    name: &str,
    in_ns: bool,
    bind: &[&str],
    announce: &str,
    port: u16,
) -> LabNode {
    let dir = slow.lab.dir().join(name);
    fs::create_dir_all(&dir).unwrap();
    let mut command = if in_ns {
        slow.lab.command(0, server_binary(kind))
    } else {
        Command::new(server_binary(kind))
    };
    command
        .args(["--port", &port.to_string(), "--bind"])
        .args(bind)
        .args([
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "5000",
            "--cluster-announce-ip",
            announce,
            "--save",
            "",
            "--appendonly",
            "no",
            "--enable-debug-command",
            "yes",
            "--repl-diskless-sync-delay",
            "0",
            "--protected-mode",
            "no",
        ])
        .arg("--dir")
        .arg(&dir)
        .current_dir(&dir);
    let addr = format!("{announce}:{port}");
    let log = dir.join("server.log");
    let process = Supervised::spawn(format!("{kind} {addr} ({name})"), &mut command, dir, log);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match raw_query(&addr, &["PING"], Duration::from_secs(1)) {
            Ok(r) if r == b"+PONG\r\n" => break,
            other if Instant::now() > deadline => {
                panic!("{addr} did not answer PING: {other:?}\n{}", process.log())
            }
            _ => std::thread::sleep(ms(50)),
        }
    }
    LabNode {
        addr,
        _process: process,
    }
}

/// Ok once every node is `cluster_state:ok` and lists the same 3 ranges, each with exactly
/// one replica, and every replica's link is up.
fn lab_converged(nodes: &[LabNode]) -> Result<Vec<lagwise_tests::SlotRange>, String> {
    let mut agreed: Option<Vec<lagwise_tests::SlotRange>> = None;
    for n in nodes {
        let info = query_node_string(&n.addr, &["CLUSTER", "INFO"])?;
        if !info.lines().any(|l| l.trim_end() == "cluster_state:ok") {
            return Err(format!("{}: not cluster_state:ok", n.addr));
        }
        let ranges = parse_cluster_slots(&query_node(&n.addr, &["CLUSTER", "SLOTS"])?)?;
        let covered: u32 = ranges
            .iter()
            .map(|r| u32::from(r.end) - u32::from(r.start) + 1)
            .sum();
        if covered != u32::from(SLOTS) {
            return Err(format!("{}: CLUSTER SLOTS covers {covered} slots", n.addr));
        }
        if let Some(r) = ranges.iter().find(|r| r.replicas.len() != 1) {
            return Err(format!("{}: {r:?} has not exactly one replica", n.addr));
        }
        match &agreed {
            Some(seen) if *seen != ranges => {
                return Err(format!("CLUSTER SLOTS differ: {seen:?} vs {ranges:?}"))
            }
            Some(_) => {}
            None => agreed = Some(ranges),
        }
        let repl = query_node_string(&n.addr, &["INFO", "replication"])?;
        if info_field(&repl, "role").as_deref() == Some("slave")
            && info_field(&repl, "master_link_status").as_deref() != Some("up")
        {
            return Err(format!("{}: replica link not up", n.addr));
        }
    }
    agreed.ok_or_else(|| "no node".to_string())
}

fn wait_until<T>(timeout: Duration, mut f: impl FnMut() -> Result<T, String>) -> Result<T, String> {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(ms(100)),
        }
    }
}

/// [`wait_until`] in a task: `f` runs through [`blocking`], and the pauses are async.
async fn wait_until_async<T>(
    timeout: Duration,
    mut f: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    let deadline = Instant::now() + timeout;
    loop {
        match blocking(&mut f) {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(ms(20)).await,
        }
    }
}

/// Runs blocking `f` (a query to a node over a fresh connection, joining a watcher thread)
/// from a task, letting the runtime move the other tasks off this thread meanwhile.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Every node's CLUSTER NODES and the lab's links, for failure messages.
fn lab_report(slow: &SlowLab, nodes: &[LabNode]) -> String {
    let mut out = slow.lab.describe();
    for n in nodes {
        let text =
            query_node_string(&n.addr, &["CLUSTER", "NODES"]).unwrap_or_else(|e| format!("<{e}>"));
        out.push_str(&format!("\n--- CLUSTER NODES from {} ---\n{text}", n.addr));
    }
    out
}

/// 3 primaries and 2 replicas in the root namespace (on the bridge address) and the slow
/// replica in the namespace, replica of the primary serving `tag`. Returns the nodes (primaries
/// first) and the slot map.
fn start_slow_cluster(
    kind: ServerKind,
    slow: &SlowLab,
    tag: &str,
) -> (Vec<LabNode>, Vec<lagwise_tests::SlotRange>) {
    let root = slow.root_ip();
    let mut ports = Vec::new();
    let mut nodes = Vec::new();
    for i in 0..5 {
        let port = free_port(&root, &ports);
        ports.push(port);
        let name = if i < 3 {
            format!("primary-{i}")
        } else {
            format!("replica-{i}")
        };
        nodes.push(start_lab_node(
            kind,
            slow,
            &name,
            false,
            &[&root],
            &root,
            port,
        ));
    }
    let primaries: Vec<String> = nodes[..3].iter().map(|n| n.addr.clone()).collect();
    let mut create = Command::new(redis_cli());
    create
        .args(["--cluster", "create"])
        .args(&primaries)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .env("TERM", "dumb");
    let created = run_captured(create, slow.lab.dir(), "create", Duration::from_secs(60));
    assert!(created.success(), "forming the cluster failed: {created}");
    let ranges = wait_until(Duration::from_secs(60), || {
        let mut agreed = None;
        for p in &primaries {
            let info = query_node_string(p, &["CLUSTER", "INFO"])?;
            if !info.contains("cluster_state:ok") {
                return Err(format!("{p}: not ok"));
            }
            let ranges = parse_cluster_slots(&query_node(p, &["CLUSTER", "SLOTS"])?)?;
            if agreed.as_ref().is_some_and(|a| *a != ranges) {
                return Err("CLUSTER SLOTS differ".into());
            }
            agreed = Some(ranges);
        }
        agreed.ok_or_else(|| "no primary".to_string())
    })
    .unwrap_or_else(|e| panic!("3 primaries did not converge: {e}"));
    let slot = key_slot(tag.as_bytes());
    let slow_primary = ranges
        .iter()
        .find(|r| r.start <= slot && slot <= r.end)
        .unwrap()
        .primary
        .clone();
    let replication_ip = slow.replication_ip();
    nodes.push(start_lab_node(
        kind,
        slow,
        "replica-slow",
        true,
        &[&replication_ip, &slow.client_ip],
        &slow.client_ip,
        7000,
    ));
    // Each primary gets a replica: the slow one for the shard of `tag`.
    let mut spare = vec![nodes[3].addr.clone(), nodes[4].addr.clone()];
    for p in &primaries {
        let replica = if *p == slow_primary {
            nodes[5].addr.clone()
        } else {
            spare.pop().unwrap()
        };
        let id = query_node_string(p, &["CLUSTER", "MYID"]).unwrap();
        let mut add = Command::new(redis_cli());
        add.args(["--cluster", "add-node", &replica, &primaries[0]])
            .args(["--cluster-slave", "--cluster-master-id", &id])
            .env("TERM", "dumb");
        let added = run_captured(add, slow.lab.dir(), "add-node", Duration::from_secs(60));
        assert!(
            added.success() && added.text().contains("[OK] New node added correctly."),
            "adding replica {replica} of {p} failed: {added}\n{}",
            lab_report(slow, &nodes)
        );
    }
    let ranges =
        wait_until(Duration::from_secs(90), || lab_converged(&nodes)).unwrap_or_else(|e| {
            panic!(
                "the cluster did not converge: {e}\n{}",
                lab_report(slow, &nodes)
            )
        });
    (nodes, ranges)
}

fn slow_link(kind: ServerKind) {
    let name = format!("slow_link_{kind:?}").to_lowercase();
    if let Some(why) = slow_link_unavailable() {
        assert!(!in_ci(), "{name} cannot run in CI: {why}");
        println!("SKIP {name}: {why}");
        return;
    }
    let _serial = serial();
    // Declaration order matters for cleanup: the processes stop before the namespace goes.
    let slow = match SlowLab::create() {
        Ok(slow) => slow,
        Err(e) if !in_ci() => {
            println!("SKIP {name}: cannot build the namespace: {e}");
            return;
        }
        Err(e) => panic!("{name}: cannot build the namespace: {e}"),
    };
    let (nodes, ranges) = start_slow_cluster(kind, &slow, "slow");
    let shard = shard_of_tag(&ranges, "slow", 8);
    assert_eq!(
        shard.replica, nodes[5].addr,
        "the shard of {{slow}} is not followed by the namespaced replica: {ranges:?}"
    );
    let primaries: Vec<String> = nodes[..3].iter().map(|n| n.addr.clone()).collect();
    let proxy = ProxyProcess::start(&primaries, PROXY_FLAGS);
    let dev = slow.throttled_dev();
    println!(
        "[{kind:?}] slow link: primary {} → replica {} (replicating from {}, throttled on {dev})",
        shard.primary,
        shard.replica,
        slow.replication_ip()
    );
    runtime().block_on(async {
        let mut admin = connect_patient(&proxy.addr()).await;
        wait_all_eligible(&mut admin, 3, &proxy).await;
        let reads_at_start = reads_so_far(&mut admin).await;
        let running = start_run(&proxy.addr(), &shard.keys, &shard.replica).await;
        // A healthy baseline, then a write load of 2 KB values (~500 KB/s of stream) that a
        // healthy link carries easily.
        tokio::time::sleep(ms(1500)).await;
        let filler_started = Instant::now();
        let (filler_stop, filler) = start_filler(
            connect_patient(&shard.primary).await,
            &shard.tag,
            2048,
            ms(4),
        );
        tokio::time::sleep(ms(1500)).await;

        // 256 kbit/s: the stream is ~15 times what the link carries.
        let behind_stop = Arc::new(AtomicBool::new(false));
        let behind_watch = watch_behind(
            shard.primary.clone(),
            shard.replica.clone(),
            ms(500),
            behind_stop.clone(),
        );
        let throttled_at = Instant::now();
        let mut throttle = Throttle::apply(&dev, "256kbit", "16kb", "100ms");
        tokio::time::sleep(ms(6000)).await;
        let behind = blocking(|| bytes_behind(&shard.primary, &shard.replica));
        let probe_started = Instant::now();
        let direct = blocking(|| node_info(&shard.replica));
        let probe_rtt = probe_started.elapsed();
        let tc_stats = blocking(|| throttle.stats());
        let info_throttled = proxy_info(&mut admin).await;
        throttle.remove();
        let released_at = Instant::now();
        let back_at = wait_eligible(&mut admin, &shard.replica)
            .await
            .unwrap_or_else(|info| {
                panic!(
                    "the replica is not eligible again {RECOVERY:?} after the throttle was \
                     removed:\n{info}\n--- proxy log ---\n{}",
                    proxy.log()
                )
            });
        let end = after_phase(&mut admin, reads_at_start).await;
        filler_stop.store(true, Ordering::Relaxed);
        let (fills, fill_errors) = filler.await.unwrap();
        let run = running.finish().await;
        behind_stop.store(true, Ordering::Relaxed);
        let behind_points = blocking(|| behind_watch.join()).unwrap();

        let report = check(&run.writes, &run.reads, MAX_LAG, POLL);
        let s = &run.samples;
        let baseline = routed(s, s[0].at, throttled_at);
        let during = routed(s, throttled_at, released_at);
        let after = routed(s, back_at, end);
        let dropped = first_after(s, throttled_at, |x| !x.eligible);
        let max_lag = s
            .iter()
            .filter(|x| x.at >= throttled_at && x.at <= released_at)
            .map(|x| x.lag_ms)
            .max()
            .unwrap_or(-1);
        let ineligible = ineligible_for(s, throttled_at, end);
        println!(
            "[{kind:?}] slow link (tbf 256 kbit/s for 6 s, filler {fills} × 2 KB since {:.1} s \
             before): writes={} write_errors={} read_errors={} {}",
            (throttled_at - filler_started).as_secs_f64(),
            run.writes.writes(),
            run.writes.errors,
            run.errors.len(),
            report.summary()
        );
        println!(
            "[{kind:?}]   replicas served {:.1}% of reads before ({}/{}), {:.1}% while \
             throttled ({}/{}), {:.1}% after it was eligible again ({}/{})",
            baseline.2 * 100.0,
            baseline.0,
            baseline.0 + baseline.1,
            during.2 * 100.0,
            during.0,
            during.0 + during.1,
            after.2 * 100.0,
            after.0,
            after.0 + after.1
        );
        println!(
            "[{kind:?}]   not eligible for {} ms in all: dropped {} ms after the throttle began \
             (state {}, lag_ms {}), eligible again {} ms after it was removed; max lag_ms while \
             throttled {max_lag}; bytes behind at the end of the throttle {behind}; a direct \
             INFO to the replica took {probe_rtt:?} ({})",
            ineligible.as_millis(),
            millis(dropped.map(|x| x.at - throttled_at)),
            dropped.map_or("-", |x| x.state.as_str()),
            dropped.map_or(-1, |x| x.lag_ms),
            (back_at - released_at).as_millis(),
            if direct.is_ok() { "answered" } else { "failed" },
        );
        println!(
            "[{kind:?}]   states while throttled: {:?}; after: {:?}",
            states_between(s, throttled_at, released_at),
            states_between(s, released_at, end)
        );
        println!(
            "[{kind:?}]   bytes behind / time of its two INFOs, relative to the tc del: {}",
            timeline(&behind_points, released_at)
        );
        println!(
            "[{kind:?}]   {}\n[{kind:?}]   {tc_stats}",
            replica_line(&info_throttled, &shard.replica).unwrap_or("replica not listed")
        );

        assert_clean(&run, &report, "slow link");
        assert_eq!(fill_errors, 0, "filler writes failed");
        // The scenario really happened: the replica fell seconds behind while the proxy
        // could still poll it (excluded for its lag, not for being unreachable).
        assert!(
            behind > 100_000,
            "the replica was only {behind} bytes behind at the end of the throttle\n{tc_stats}"
        );
        assert!(
            s.iter().any(|x| x.at >= throttled_at
                && x.at <= released_at
                && x.state == "ok"
                && !x.eligible
                && x.lag_ms > 10 * MAX_LAG.as_millis() as i64),
            "PROXY INFO never showed the throttled replica reachable (state=ok), lagging by \
             more than 1 s and not eligible: {:?}\n{info_throttled}",
            states_between(s, throttled_at, released_at)
        );
        assert!(
            after.0 + after.1 > 0 && after.2 > 0.5,
            "reads did not come back to the replica after the throttle: {after:?}"
        );
    });
}

#[test]
fn slow_link_redis() {
    slow_link(ServerKind::Redis);
}

#[test]
fn slow_link_lagwise() {
    slow_link(ServerKind::Lagwise);
}

// ---------------------------------------------------------------------------------------
// 2. A full resync: snapshot transfer and loading
// ---------------------------------------------------------------------------------------

/// A 3 × 1 cluster of `kind` whose replicas are listed in CLUSTER SLOTS. The node timeout
/// is long (60 s): this test is about reads during a resync; a failover meanwhile (of a
/// primary slow to answer while it serves the snapshot) would be another test.
fn start_cluster(kind: ServerKind) -> Cluster {
    let mut cluster = Cluster::start(ClusterConfig::new(kind).node_timeout_ms(60_000), 3, 1);
    if let Err(e) = cluster.wait_replicas_listed(Duration::from_secs(30)) {
        panic!("replicas not listed: {e}\n{}", cluster.logs());
    }
    cluster
}

/// The longest a primary may take to answer PING during a full resync.
const STALL_LIMIT: Duration = Duration::from_secs(1);

/// Keys preloaded into the resynced shard, and their value size.
const PRELOAD_KEYS: usize = 300_000;
const PRELOAD_VALUE: usize = 128;

/// `MSET`s `PRELOAD_KEYS` keys `{tag}:fill:<i>` of `PRELOAD_VALUE` bytes, 1000 per command.
async fn preload(con: &mut MultiplexedConnection, tag: &str) {
    let value = vec![b'v'; PRELOAD_VALUE];
    for batch in 0..PRELOAD_KEYS / 1000 {
        let mut c = redis::cmd("MSET");
        for i in batch * 1000..(batch + 1) * 1000 {
            c.arg(format!("{{{tag}}}:fill:{i}")).arg(&value);
        }
        c.query_async::<()>(con)
            .await
            .unwrap_or_else(|e| panic!("MSET batch {batch}: {}", err_text(&e)));
    }
}

/// The replica's sync state as seen by polling its INFO directly.
#[derive(Debug, Clone, Default)]
struct SyncSeen {
    polls: u64,
    /// Polls that saw `master_sync_in_progress:1`, `loading:1`, `master_link_status:down`.
    syncing: u64,
    loading: u64,
    link_down: u64,
    /// First and last poll that saw the replica syncing or loading.
    first: Option<Instant>,
    last: Option<Instant>,
    /// The first such INFO's replication fields, to print.
    example: Option<String>,
}

/// Polls the replica's `INFO replication` and `INFO persistence` every 2 ms until `stop`.
fn watch_sync(replica: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<SyncSeen> {
    std::thread::spawn(move || {
        let mut seen = SyncSeen::default();
        while !stop.load(Ordering::Relaxed) {
            if let Ok(info) = query_node_string(&replica, &["INFO", "replication"])
                .and_then(|r| Ok(r + &query_node_string(&replica, &["INFO", "persistence"])?))
            {
                seen.polls += 1;
                let is = |f: &str, v: &str| info_field(&info, f).as_deref() == Some(v);
                let syncing = is("master_sync_in_progress", "1");
                let loading = is("loading", "1");
                seen.syncing += syncing as u64;
                seen.loading += loading as u64;
                seen.link_down += is("master_link_status", "down") as u64;
                if syncing || loading {
                    let now = Instant::now();
                    seen.first.get_or_insert(now);
                    seen.last = Some(now);
                    if seen.example.is_none() {
                        seen.example = Some(
                            info.lines()
                                .filter(|l| {
                                    l.starts_with("master_")
                                        || l.starts_with("slave_repl")
                                        || l.starts_with("loading")
                                })
                                .collect::<Vec<_>>()
                                .join(" "),
                        );
                    }
                }
            }
            std::thread::sleep(ms(2));
        }
        seen
    })
}

/// (sync_full, sync_partial_ok, sync_partial_err) of a primary; `Err` if it does not answer.
fn sync_stats(primary: &str) -> Result<(u64, u64, u64), String> {
    let info = node_info(primary).map_err(|e| format!("INFO of {primary}: {e}"))?;
    Ok((
        info_u64(&info, "sync_full"),
        info_u64(&info, "sync_partial_ok"),
        info_u64(&info, "sync_partial_err"),
    ))
}

/// The longest a node took to answer PING while it was watched, and when that PING was sent.
#[derive(Debug, Clone, Copy)]
struct Stall {
    longest: Duration,
    at: Option<Instant>,
    pings: u64,
}

/// PINGs `addr` (a fresh connection each time, up to 30 s each) every 10 ms until `stop`.
fn watch_stall(addr: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Stall> {
    std::thread::spawn(move || {
        let mut stall = Stall {
            longest: Duration::ZERO,
            at: None,
            pings: 0,
        };
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            let _ = raw_query(&addr, &["PING"], Duration::from_secs(30));
            stall.pings += 1;
            if t.elapsed() > stall.longest {
                stall.longest = t.elapsed();
                stall.at = Some(t);
            }
            std::thread::sleep(ms(10));
        }
        stall
    })
}

fn full_resync_loading(kind: ServerKind) {
    let _serial = serial();
    let mut cluster = start_cluster(kind);
    let proxy = ProxyProcess::for_cluster(&cluster, PROXY_FLAGS);
    let shard = shard_of_tag(&cluster.slots(), "resync", 8);
    let stop_watchers = |stop: &AtomicBool| stop.store(true, Ordering::Relaxed);
    runtime().block_on(async {
        let mut admin = connect_patient(&proxy.addr()).await;
        let mut primary = connect_patient(&shard.primary).await;
        let t = Instant::now();
        preload(&mut primary, &shard.tag).await;
        let preloaded = t.elapsed();
        // The replica has it all (it is eligible once it has caught up).
        wait_until_async(Duration::from_secs(120), || {
            let b = bytes_behind(&shard.primary, &shard.replica);
            if b == 0 {
                Ok(())
            } else {
                Err(format!("{b} bytes behind"))
            }
        })
        .await
        .unwrap_or_else(|e| panic!("the replica did not catch up with the preload: {e}"));
        wait_all_eligible(&mut admin, 3, &proxy).await;
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("repl-backlog-size")
            .arg(16384)
            .query_async(&mut primary)
            .await
            .unwrap_or_else(|e| panic!("CONFIG SET repl-backlog-size: {}", err_text(&e)));
        let before = blocking(|| sync_stats(&shard.primary)).unwrap();

        let reads_at_start = reads_so_far(&mut admin).await;
        let running = start_run(&proxy.addr(), &shard.keys, &shard.replica).await;
        tokio::time::sleep(ms(1500)).await;
        let watch_stop = Arc::new(AtomicBool::new(false));
        let watcher = watch_sync(shard.replica.clone(), watch_stop.clone());
        let stall_watcher = watch_stall(shard.primary.clone(), watch_stop.clone());
        // 16 KB values every 5 ms: in the time the replica takes to reconnect, the primary
        // writes far more than its 16 KB backlog holds.
        let (filler_stop, filler) = start_filler(
            connect_patient(&shard.primary).await,
            &shard.tag,
            16 * 1024,
            ms(5),
        );
        tokio::time::sleep(ms(300)).await;
        let big = vec![b'b'; 1024 * 1024];
        let mut kills = Vec::new();
        let mut full = false;
        let killed_at = Instant::now();
        for _attempt in 0..5 {
            let before_kill =
                wait_until_async(Duration::from_secs(30), || sync_stats(&shard.primary))
                    .await
                    .unwrap_or_else(|e| panic!("the primary does not answer: {e}"));
            // The kill and 2 MB of writes in one transaction: by the time the replica
            // reconnects (at once, for redis-server 7.0), its offset has left the backlog.
            let (killed, _, _): (i64, (), ()) = redis::pipe()
                .atomic()
                .cmd("CLIENT")
                .arg("KILL")
                .arg("TYPE")
                .arg("replica")
                .cmd("SET")
                .arg(format!("{{{}}}:big:0", shard.tag))
                .arg(&big)
                .cmd("SET")
                .arg(format!("{{{}}}:big:1", shard.tag))
                .arg(&big)
                .query_async(&mut primary)
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "MULTI CLIENT KILL TYPE replica, SET, SET EXEC: {}",
                        err_text(&e)
                    )
                });
            // Bounded: until the primary counts the replica's next sync, full or partial.
            let outcome = wait_until_async(Duration::from_secs(30), || {
                let now = sync_stats(&shard.primary)?;
                if now.0 > before_kill.0 {
                    Ok(true)
                } else if now.1 > before_kill.1 {
                    Ok(false)
                } else {
                    Err(format!("no new sync yet: {now:?}"))
                }
            })
            .await
            .unwrap_or_else(|e| panic!("the replica did not resync after CLIENT KILL: {e}"));
            kills.push((killed, outcome));
            if outcome {
                full = true;
                break;
            }
        }
        assert!(
            full,
            "5 kills of the replication link, no full resync (killed, full?): {kills:?}"
        );
        // The transfer has begun: the write load may stop.
        filler_stop.store(true, Ordering::Relaxed);
        let (fills, fill_errors) = filler.await.unwrap();
        let back_at = match wait_eligible_again(&mut admin, &shard.replica).await {
            Ok(at) => at,
            Err(info) => {
                stop_watchers(&watch_stop);
                let stall = blocking(|| stall_watcher.join()).unwrap();
                panic!(
                    "{}the replica is not eligible again {RECOVERY:?} after the full resync \
                     began (kills {kills:?}; the replica's sync seen: {:?}):\n{info}\n\
                     --- proxy log ---\n{}",
                    if stall.longest >= STALL_LIMIT {
                        format!(
                            "the primary {} did not answer PING for {:?} ({} ms after the \
                             kill); ",
                            shard.primary,
                            stall.longest,
                            millis(stall.at.map(|t| t.saturating_duration_since(killed_at)))
                        )
                    } else {
                        String::new()
                    },
                    blocking(|| watcher.join()).unwrap(),
                    proxy.log()
                )
            }
        };
        let end = after_phase(&mut admin, reads_at_start).await;
        stop_watchers(&watch_stop);
        let seen = blocking(|| watcher.join()).unwrap();
        let stall = blocking(|| stall_watcher.join()).unwrap();
        let run = running.finish().await;
        let after_stats = blocking(|| sync_stats(&shard.primary)).unwrap_or_default();

        let report = check(&run.writes, &run.reads, MAX_LAG, POLL);
        let s = &run.samples;
        let baseline = routed(s, s[0].at, killed_at);
        let during = routed(s, killed_at, back_at);
        let after = routed(s, back_at, end);
        let dropped = first_after(s, killed_at, |x| !x.eligible);
        let ineligible = ineligible_for(s, killed_at, end);
        println!(
            "[{kind:?}] full resync: {PRELOAD_KEYS} keys × {PRELOAD_VALUE} B preloaded in \
             {preloaded:?}; kills (clients killed, full resync?) {kills:?}; primary \
             (sync_full, sync_partial_ok, sync_partial_err) {before:?} → {after_stats:?}; \
             filler {fills} × 16 KB; writes={} write_errors={} read_errors={} {}",
            run.writes.writes(),
            run.writes.errors,
            run.errors.len(),
            report.summary()
        );
        println!(
            "[{kind:?}]   replica INFO polled {} times: master_sync_in_progress:1 in {}, \
             loading:1 in {}, link down in {}; syncing or loading seen from {} ms to {} ms \
             after the kill; e.g. {}",
            seen.polls,
            seen.syncing,
            seen.loading,
            seen.link_down,
            millis(seen.first.map(|t| t - killed_at)),
            millis(seen.last.map(|t| t - killed_at)),
            seen.example.as_deref().unwrap_or("-")
        );
        println!(
            "[{kind:?}]   replicas served {:.1}% of reads before ({}/{}), {:.1}% from the kill \
             until eligible again ({}/{}), {:.1}% after ({}/{})",
            baseline.2 * 100.0,
            baseline.0,
            baseline.0 + baseline.1,
            during.2 * 100.0,
            during.0,
            during.0 + during.1,
            after.2 * 100.0,
            after.0,
            after.0 + after.1
        );
        println!(
            "[{kind:?}]   not eligible for {} ms in all: dropped {} ms after the kill (state \
             {}), eligible again {} ms after the kill; states: {:?}",
            ineligible.as_millis(),
            millis(dropped.map(|x| x.at - killed_at)),
            dropped.map_or("-", |x| x.state.as_str()),
            (back_at - killed_at).as_millis(),
            states_between(s, killed_at, end)
        );

        println!(
            "[{kind:?}]   the primary's slowest PING (of {}) took {} ms, sent {} ms after the \
             kill",
            stall.pings,
            stall.longest.as_millis(),
            millis(stall.at.map(|t| t.saturating_duration_since(killed_at)))
        );

        // A full sync must not stop the primary: beyond half the node timeout (2 s here) the
        // cluster bus starts to take it for failing, and every client waits meanwhile.
        assert!(
            stall.longest < STALL_LIMIT,
            "the primary {} did not answer PING for {:?} ({} ms after the kill of its replica's \
             link, during the full resync)",
            shard.primary,
            stall.longest,
            millis(stall.at.map(|t| t.saturating_duration_since(killed_at)))
        );
        assert_clean(&run, &report, "full resync");
        assert_eq!(fill_errors, 0, "filler writes failed");
        assert!(
            seen.syncing + seen.loading > 0,
            "the replica's INFO never showed master_sync_in_progress:1 or loading:1 \
             ({} polls)",
            seen.polls
        );
        let not_ok = s.iter().find(|x| {
            x.at >= killed_at
                && x.at <= back_at
                && !x.eligible
                && ["syncing", "loading", "link-down"].contains(&x.state.as_str())
        });
        assert!(
            not_ok.is_some(),
            "PROXY INFO never showed the replica not eligible as syncing, loading or link-down: \
             {:?}",
            states_between(s, killed_at, end)
        );
        assert!(
            after.0 + after.1 > 0 && after.2 > 0.5,
            "reads did not come back to the replica after the resync: {after:?}"
        );
    });
}

#[test]
fn full_resync_loading_redis() {
    full_resync_loading(ServerKind::Redis);
}

#[test]
fn full_resync_loading_lagwise() {
    full_resync_loading(ServerKind::Lagwise);
}
