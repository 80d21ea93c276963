//! End-to-end tests of replica reads through `lagwise-proxy` (issue 8): 3 primaries × 1
//! replica, of redis-server 7.0 and of lagwise-node, with the proxy's read policies.
//!
//! Lag is induced on one shard's replica with `CLIENT PAUSE <ms> WRITE` (the replica keeps
//! answering reads at full speed but stops applying the replication stream: fast and stale)
//! and with SIGSTOP/SIGCONT (stalled). The staleness checker (`lagwise_tests::staleness`)
//! counts reads older than the bound and reads that go backwards on a connection.
//!
//! The tests of this file run one at a time (they measure timing-dependent routing).
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use lagwise_tests::cluster::{Cluster, ClusterConfig};
use lagwise_tests::fixture::send_signal;
use lagwise_tests::staleness::{
    check, connect, line_field, proxy_info, reader, replica_line, replica_lines, routed_between,
    routing, runtime, sample_routing, wait_all_eligible, writer, ReadError, ReadRecord, WriteLog,
};
use lagwise_tests::{err_text, key_slot, ProxyProcess, RedisCluster, ServerKind};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A 3 × 1 cluster of `kind` whose replicas are listed in CLUSTER SLOTS.
fn start_cluster(kind: ServerKind) -> Cluster {
    let mut cluster = match kind {
        ServerKind::Redis => RedisCluster::start(3, 1).into_inner(),
        ServerKind::Lagwise => Cluster::start(
            ClusterConfig::new(ServerKind::Lagwise).node_timeout_ms(2000),
            3,
            1,
        ),
    };
    if let Err(e) = cluster.wait_replicas_listed(Duration::from_secs(30)) {
        panic!("replicas not listed: {e}\n{}", cluster.logs());
    }
    cluster
}

/// Sends SIGCONT when dropped, so that a failing test leaves no stopped process.
struct Stopped(u32);

impl Stopped {
    fn new(pid: u32) -> Stopped {
        send_signal(pid, "STOP").unwrap();
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = send_signal(self.0, "CONT");
    }
}

/// Stops a process for `stopped` of every `period` until dropped (then it runs on): a
/// CPU-starved node that stays fresh but answers slowly.
struct Starved {
    on: Arc<AtomicBool>,
    cycling: Option<std::thread::JoinHandle<()>>,
}

impl Starved {
    fn new(pid: u32, stopped: Duration, period: Duration) -> Starved {
        let on = Arc::new(AtomicBool::new(true));
        let cycling = {
            let on = on.clone();
            std::thread::spawn(move || {
                while on.load(Ordering::Relaxed) {
                    let _ = send_signal(pid, "STOP");
                    std::thread::sleep(stopped);
                    let _ = send_signal(pid, "CONT");
                    std::thread::sleep(period.saturating_sub(stopped));
                }
                let _ = send_signal(pid, "CONT");
            })
        };
        Starved {
            on,
            cycling: Some(cycling),
        }
    }
}

impl Drop for Starved {
    fn drop(&mut self) {
        self.on.store(false, Ordering::Relaxed);
        if let Some(t) = self.cycling.take() {
            let _ = t.join();
        }
    }
}

/// Counters of one hash tag (one slot, one shard), and that shard's replica.
struct Shard {
    keys: Vec<String>,
    replica: String,
    replica_pid: u32,
}

fn shard_of_tag(cluster: &mut Cluster, tag: &str, counters: usize) -> Shard {
    let slot = key_slot(tag.as_bytes());
    let ranges = cluster.slots();
    let range = ranges
        .iter()
        .find(|r| r.start <= slot && slot <= r.end)
        .unwrap_or_else(|| panic!("slot {slot} unserved: {ranges:?}"));
    let replica = range
        .replicas
        .first()
        .unwrap_or_else(|| panic!("no replica for slot {slot}: {ranges:?}"))
        .clone();
    let replica_pid = cluster.node(&replica).pid();
    Shard {
        keys: (0..counters).map(|i| format!("{{{tag}}}:c{i}")).collect(),
        replica,
        replica_pid,
    }
}

// ---------------------------------------------------------------------------------------
// Healthy replicas take the reads
// ---------------------------------------------------------------------------------------

fn healthy_replicas_serve_most_reads(kind: ServerKind) {
    let _serial = serial();
    let cluster = start_cluster(kind);
    let proxy = ProxyProcess::for_cluster(&cluster, &["--read-policy", "prefer-replica"]);
    runtime().block_on(async {
        let mut admin = connect(&proxy.addr()).await;
        for i in 0..300 {
            let _: () = redis::cmd("SET")
                .arg(format!("k{i}"))
                .arg(format!("v{i}"))
                .query_async(&mut admin)
                .await
                .unwrap();
        }
        wait_all_eligible(&mut admin, 3, &proxy).await;
        // Past the bound: every replica has the keys.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = routing(&mut admin).await;
        let readers = (0..4).map(|r| {
            let addr = proxy.addr();
            tokio::spawn(async move {
                let mut con = connect(&addr).await;
                for n in 0..1500 {
                    let i = (n * 7 + r * 13) % 300;
                    let v: Option<String> = redis::cmd("GET")
                        .arg(format!("k{i}"))
                        .query_async(&mut con)
                        .await
                        .unwrap_or_else(|e| panic!("GET k{i}: {}", err_text(&e)));
                    assert_eq!(v.as_deref(), Some(format!("v{i}").as_str()), "GET k{i}");
                }
            })
        });
        for r in futures_join(readers.collect()).await {
            r.unwrap();
        }
        let after = routing(&mut admin).await;
        let to_replicas = after.to_replicas - before.to_replicas;
        let to_primaries = after.to_primaries - before.to_primaries;
        let share = to_replicas as f64 / (to_replicas + to_primaries).max(1) as f64;
        let info = proxy_info(&mut admin).await;
        eprintln!(
            "[{kind:?}] healthy prefer-replica: reads={} to_replicas={to_replicas} \
             to_primaries={to_primaries} share_to_replicas={:.1}%\n{info}",
            to_replicas + to_primaries,
            share * 100.0
        );
        assert_eq!(to_replicas + to_primaries, 6000, "every GET counted once");
        assert!(
            share >= 0.9,
            "only {:.1}% of reads went to replicas\n{info}",
            share * 100.0
        );
    });
}

/// Awaits every handle (a tiny `join_all`, without another dependency).
async fn futures_join<T>(
    handles: Vec<tokio::task::JoinHandle<T>>,
) -> Vec<Result<T, tokio::task::JoinError>> {
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await);
    }
    out
}

#[test]
fn healthy_replicas_serve_most_reads_redis() {
    healthy_replicas_serve_most_reads(ServerKind::Redis);
}

#[test]
fn healthy_replicas_serve_most_reads_lagwise() {
    healthy_replicas_serve_most_reads(ServerKind::Lagwise);
}

// ---------------------------------------------------------------------------------------
// Staleness under lag: paused and stopped replica
// ---------------------------------------------------------------------------------------

/// What a run of writer + readers produced.
struct Run {
    writes: WriteLog,
    reads: Vec<ReadRecord>,
    errors: Vec<ReadError>,
    routing: Vec<lagwise_tests::staleness::RoutingSample>,
}

/// A writer, readers and a routing sampler at work.
struct Running {
    stop: Arc<AtomicBool>,
    writer: tokio::task::JoinHandle<WriteLog>,
    readers: Vec<tokio::task::JoinHandle<(Vec<ReadRecord>, Vec<ReadError>)>>,
    sampler: tokio::task::JoinHandle<Vec<lagwise_tests::staleness::RoutingSample>>,
}

/// Starts one writer (`INCR`, 1 ms apart) and `readers` readers on `keys` through the proxy,
/// and a sampler of the routing counters.
async fn start_run(proxy_addr: &str, keys: &[String], readers: usize) -> Running {
    let stop = Arc::new(AtomicBool::new(false));
    let w = tokio::spawn(writer(
        connect(proxy_addr).await,
        keys.to_vec(),
        Duration::from_millis(1),
        stop.clone(),
    ));
    let mut rs = Vec::new();
    for id in 0..readers {
        rs.push(tokio::spawn(reader(
            connect(proxy_addr).await,
            id,
            keys.to_vec(),
            stop.clone(),
        )));
    }
    let sampler = tokio::spawn(sample_routing(
        connect(proxy_addr).await,
        Duration::from_millis(50),
        stop.clone(),
    ));
    Running {
        stop,
        writer: w,
        readers: rs,
        sampler,
    }
}

impl Running {
    /// Stops everything and collects the records.
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
            routing: self.sampler.await.unwrap(),
        }
    }
}

/// (to replicas, to primaries, share to replicas) in a window.
fn window(run: &Run, from: Instant, to: Instant) -> (u64, u64, f64) {
    let (r, p) = routed_between(&run.routing, from, to);
    (r, p, r as f64 / (r + p).max(1) as f64)
}

/// From the routing samples (50 ms apart): how long after `start` reads stopped going to
/// replicas (the first interval with none), and how long after `end` most went there again.
fn switch_times(run: &Run, start: Instant, end: Instant) -> (Option<Duration>, Option<Duration>) {
    let pairs: Vec<_> = run.routing.windows(2).collect();
    let stopped = pairs
        .iter()
        .find(|w| w[0].at >= start && w[1].to_replicas == w[0].to_replicas)
        .map(|w| w[1].at.saturating_duration_since(start));
    let back = pairs
        .iter()
        .find(|w| {
            let r = w[1].to_replicas - w[0].to_replicas;
            let p = w[1].to_primaries - w[0].to_primaries;
            w[0].at >= end && r > p
        })
        .map(|w| w[1].at.saturating_duration_since(end));
    (stopped, back)
}

fn staleness_under_pauses_and_sigstop(kind: ServerKind) {
    let _serial = serial();
    let mut cluster = start_cluster(kind);
    let bound = Duration::from_millis(100);
    let poll = Duration::from_millis(100);
    let proxy = ProxyProcess::for_cluster(
        &cluster,
        &[
            "--read-policy",
            "prefer-replica",
            "--max-lag-ms",
            "100",
            "--replication-poll-interval-ms",
            "100",
        ],
    );
    let shard = shard_of_tag(&mut cluster, "stale", 8);
    let ms = Duration::from_millis;
    runtime().block_on(async {
        let mut admin = connect(&proxy.addr()).await;
        wait_all_eligible(&mut admin, 3, &proxy).await;
        let mut replica = connect(&shard.replica).await;
        let mut marks: Vec<(&str, Instant, Instant)> = Vec::new();
        let running = start_run(&proxy.addr(), &shard.keys, 4).await;
        {
            tokio::time::sleep(ms(1500)).await;
            for name in ["pause-1", "pause-2"] {
                let t = Instant::now();
                let _: () = redis::cmd("CLIENT")
                    .arg("PAUSE")
                    .arg(2000)
                    .arg("WRITE")
                    .query_async(&mut replica)
                    .await
                    .unwrap_or_else(|e| panic!("CLIENT PAUSE on the replica: {}", err_text(&e)));
                tokio::time::sleep(ms(4000)).await;
                marks.push((name, t, t + ms(2000)));
            }
            let t = Instant::now();
            {
                let _stopped = Stopped::new(shard.replica_pid);
                tokio::time::sleep(ms(1000)).await;
            }
            marks.push(("sigstop", t, Instant::now()));
            tokio::time::sleep(ms(4000)).await;
        }
        let run = running.finish().await;
        let report = check(&run.writes, &run.reads, bound, poll);
        let (r, p, share) = window(&run, run.routing[0].at, Instant::now());
        eprintln!(
            "[{kind:?}] staleness, prefer-replica, max_lag 100 ms, poll 100 ms, replica {} paused \
             2 s twice and stopped 1 s: writes={} {} to_replicas={r} to_primaries={p} \
             share_to_replicas={:.1}%",
            shard.replica,
            run.writes.writes(),
            report.summary(),
            share * 100.0
        );
        let mut problems = Vec::new();
        for &(name, start, end) in &marks {
            // While it lags (from once lag exceeds the bound plus a poll, to its end).
            let lagging = window(&run, start + ms(400), end);
            // After it has caught up and clients came back (before the next fault).
            let back = window(&run, end + ms(700), end + ms(1900));
            let (stop_after, back_after) = switch_times(&run, start, end);
            eprintln!(
                "[{kind:?}]   {name}: while lagging to_replicas={} to_primaries={} ({:.1}% replicas); \
                 after to_replicas={} to_primaries={} ({:.1}% replicas); replica dropped {} ms \
                 after the fault began, used again {} ms after it ended",
                lagging.0,
                lagging.1,
                lagging.2 * 100.0,
                back.0,
                back.1,
                back.2 * 100.0,
                stop_after.map_or(-1, |d| d.as_millis() as i64),
                back_after.map_or(-1, |d| d.as_millis() as i64),
            );
            if lagging.0 + lagging.1 == 0 || lagging.2 > 0.05 {
                problems.push(format!("{name}: reads did not move to the primary: {lagging:?}"));
            }
            if back.0 + back.1 == 0 || back.2 < 0.5 {
                problems.push(format!("{name}: reads did not come back to the replica: {back:?}"));
            }
        }
        let info = proxy_info(&mut admin).await;
        eprintln!("{info}");
        assert!(
            run.errors.is_empty(),
            "{} read errors, e.g. {:?}",
            run.errors.len(),
            run.errors.first()
        );
        assert_eq!(run.writes.errors, 0, "writes failed");
        assert!(report.reads >= 10_000, "only {} reads", report.reads);
        assert_eq!(
            (report.violations, report.monotonic_violations),
            (0, 0),
            "{}\n{:#?}",
            report.summary(),
            report.examples
        );
        assert!(problems.is_empty(), "{problems:#?}\n{info}");
        // Eligible again (a single late sample can drop it for one interval: wait a little).
        let deadline = Instant::now() + ms(2000);
        loop {
            let info = proxy_info(&mut admin).await;
            if replica_line(&info, &shard.replica).is_some_and(|l| l.contains("eligible=1")) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the replica is not eligible again at the end:\n{info}"
            );
            tokio::time::sleep(ms(50)).await;
        }
    });
}

#[test]
fn staleness_under_pauses_and_sigstop_redis() {
    staleness_under_pauses_and_sigstop(ServerKind::Redis);
}

#[test]
fn staleness_under_pauses_and_sigstop_lagwise() {
    staleness_under_pauses_and_sigstop(ServerKind::Lagwise);
}

// ---------------------------------------------------------------------------------------
// `replica` policy: an error rather than a stale value
// ---------------------------------------------------------------------------------------

fn replica_policy_errors_instead_of_stale_reads(kind: ServerKind) {
    let _serial = serial();
    let mut cluster = start_cluster(kind);
    // Measured lag includes up to one poll interval: with a poll well under the bound, a
    // caught-up replica is never near it (at poll = bound, the last few ms of every interval
    // would answer -NOREPLICA even with a healthy replica).
    let proxy = ProxyProcess::for_cluster(
        &cluster,
        &[
            "--read-policy",
            "replica",
            "--max-lag-ms",
            "100",
            "--replication-poll-interval-ms",
            "25",
        ],
    );
    let shard = shard_of_tag(&mut cluster, "strict", 4);
    let ms = Duration::from_millis;
    runtime().block_on(async {
        let mut admin = connect(&proxy.addr()).await;
        wait_all_eligible(&mut admin, 3, &proxy).await;
        let mut replica = connect(&shard.replica).await;
        let running = start_run(&proxy.addr(), &shard.keys, 2).await;
        tokio::time::sleep(ms(1000)).await;
        let pause = Instant::now();
        let _: () = redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(2000)
            .arg("WRITE")
            .query_async(&mut replica)
            .await
            .unwrap();
        tokio::time::sleep(ms(4000)).await;
        let run = running.finish().await;
        let report = check(&run.writes, &run.reads, ms(100), ms(100));
        let (to_replicas, to_primaries, _) = window(&run, run.routing[0].at, Instant::now());
        let info = proxy_info(&mut admin).await;
        eprintln!(
            "[{kind:?}] replica policy, replica paused 2 s: {} noreplica_errors={} \
             to_replicas={to_replicas} to_primaries={to_primaries}\n{info}",
            report.summary(),
            run.errors.len()
        );
        assert!(
            !run.errors.is_empty(),
            "no -NOREPLICA while the only replica lagged"
        );
        for e in &run.errors {
            assert_eq!(e.message, "NOREPLICA no replica is fresh enough", "{e:?}");
            assert!(
                e.at >= pause && e.at <= pause + ms(2600),
                "-NOREPLICA outside the pause: {:?} after it began",
                e.at.saturating_duration_since(pause)
            );
        }
        assert_eq!(
            (report.violations, report.monotonic_violations),
            (0, 0),
            "{}\n{:#?}",
            report.summary(),
            report.examples
        );
        let late = run
            .reads
            .iter()
            .filter(|r| r.invoked > pause + ms(3000))
            .count();
        assert!(late > 100, "reads did not resume after the pause ({late})");
        assert_eq!(to_primaries, 0, "the replica policy read a primary");
    });
}

#[test]
fn replica_policy_errors_instead_of_stale_reads_redis() {
    replica_policy_errors_instead_of_stale_reads(ServerKind::Redis);
}

#[test]
fn replica_policy_errors_instead_of_stale_reads_lagwise() {
    replica_policy_errors_instead_of_stale_reads(ServerKind::Lagwise);
}

// ---------------------------------------------------------------------------------------
// PROXY READPOLICY / PROXY INFO
// ---------------------------------------------------------------------------------------

#[test]
fn proxy_readpolicy_is_per_connection() {
    let _serial = serial();
    let cluster = start_cluster(ServerKind::Redis);
    let proxy = ProxyProcess::for_cluster(&cluster, &[]);
    runtime().block_on(async {
        let mut a = connect(&proxy.addr()).await;
        let mut b = connect(&proxy.addr()).await;
        let q = |args: &[&str]| {
            let mut c = redis::cmd(args[0]);
            for x in &args[1..] {
                c.arg(*x);
            }
            c
        };
        let policy: String = q(&["PROXY", "READPOLICY"])
            .query_async(&mut a)
            .await
            .unwrap();
        assert_eq!(policy, "primary maxlag 100ms");
        let ok: String = q(&["PROXY", "READPOLICY", "prefer-replica", "MAXLAG", "50ms"])
            .query_async(&mut a)
            .await
            .unwrap();
        assert_eq!(ok, "OK");
        let policy: String = q(&["PROXY", "READPOLICY"])
            .query_async(&mut a)
            .await
            .unwrap();
        assert_eq!(policy, "prefer-replica maxlag 50ms");
        let other: String = q(&["PROXY", "READPOLICY"])
            .query_async(&mut b)
            .await
            .unwrap();
        assert_eq!(
            other, "primary maxlag 100ms",
            "another connection is not affected"
        );
        let e = q(&["PROXY", "READPOLICY", "bogus"])
            .query_async::<redis::Value>(&mut a)
            .await
            .unwrap_err();
        assert!(
            err_text(&e).starts_with("ERR unknown read policy"),
            "{}",
            err_text(&e)
        );
        let e = q(&["PROXY", "READPOLICY", "replica", "MAXLAG", "0"])
            .query_async::<redis::Value>(&mut a)
            .await
            .unwrap_err();
        assert!(err_text(&e).contains("MAXLAG"), "{}", err_text(&e));
        let e = q(&["PROXY", "NOPE"])
            .query_async::<redis::Value>(&mut a)
            .await
            .unwrap_err();
        assert!(
            err_text(&e).contains("PROXY subcommand"),
            "{}",
            err_text(&e)
        );
        wait_all_eligible(&mut a, 3, &proxy).await;
        let info = proxy_info(&mut a).await;
        for field in [
            "read_policy:primary",
            "connection_read_policy:prefer-replica",
            "connection_max_lag_ms:50",
            "max_lag_ms:100",
            "reads_replica:",
            "reads_primary:",
        ] {
            assert!(info.contains(field), "no {field} in\n{info}");
        }
        assert_eq!(replica_lines(&info).len(), 3, "{info}");
        // This connection now reads from replicas; the other still from primaries. (A bound
        // under the poll interval leaves replicas usable only part of each interval: measured
        // lag grows up to one interval between polls.)
        let _: String = q(&["PROXY", "READPOLICY", "prefer-replica", "MAXLAG", "1000"])
            .query_async(&mut a)
            .await
            .unwrap();
        let _: () = q(&["SET", "rp", "1"]).query_async(&mut b).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = routing(&mut a).await;
        for _ in 0..50 {
            let v: String = q(&["GET", "rp"]).query_async(&mut a).await.unwrap();
            assert_eq!(v, "1");
        }
        let mid = routing(&mut a).await;
        for _ in 0..50 {
            let v: String = q(&["GET", "rp"]).query_async(&mut b).await.unwrap();
            assert_eq!(v, "1");
        }
        let after = routing(&mut a).await;
        assert!(
            mid.to_replicas - before.to_replicas >= 40,
            "prefer-replica connection: {before:?} → {mid:?}"
        );
        assert_eq!(
            after.to_replicas, mid.to_replicas,
            "primary connection used a replica"
        );
        assert_eq!(after.to_primaries - mid.to_primaries, 50);
    });
}

// ---------------------------------------------------------------------------------------
// Read-your-writes
// ---------------------------------------------------------------------------------------

/// Per client: INCR its own counter then GET it (pipelined, or one after the other), through
/// the proxy, while `fault` makes the shard's replica lag. A GET below the INCR's result is a
/// read-your-writes violation. Returns (pairs, violations).
async fn own_writes(
    proxy_addr: &str,
    keys: &[String],
    ryw: bool,
    fault: impl std::future::Future<Output = ()>,
) -> (u64, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let mut con = connect(proxy_addr).await;
        let _: () = redis::cmd("PROXY")
            .arg("READPOLICY")
            .arg("prefer-replica")
            .arg("MAXLAG")
            .arg(300)
            .arg("READYOURWRITES")
            .arg(if ryw { "on" } else { "off" })
            .query_async(&mut con)
            .await
            .unwrap();
        let (key, stop) = (key.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let (mut pairs, mut violations) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let (wrote, read): (i64, i64) = if i % 2 == 0 {
                    redis::pipe()
                        .cmd("INCR")
                        .arg(&key)
                        .cmd("GET")
                        .arg(&key)
                        .query_async(&mut con)
                        .await
                        .unwrap()
                } else {
                    let w: i64 = redis::cmd("INCR")
                        .arg(&key)
                        .query_async(&mut con)
                        .await
                        .unwrap();
                    let r: i64 = redis::cmd("GET")
                        .arg(&key)
                        .query_async(&mut con)
                        .await
                        .unwrap();
                    (w, r)
                };
                pairs += 1;
                if read < wrote {
                    violations += 1;
                }
            }
            (pairs, violations)
        }));
    }
    fault.await;
    stop.store(true, Ordering::Relaxed);
    let mut total = (0, 0);
    for c in clients {
        let (p, v) = c.await.unwrap();
        total.0 += p;
        total.1 += v;
    }
    total
}

fn read_your_writes_under_replica_lag(kind: ServerKind) {
    let _serial = serial();
    let mut cluster = start_cluster(kind);
    let proxy = ProxyProcess::for_cluster(
        &cluster,
        &[
            "--max-lag-ms",
            "300",
            "--replication-poll-interval-ms",
            "10",
        ],
    );
    let shard = shard_of_tag(&mut cluster, "ryw", 6);
    let ms = Duration::from_millis;
    runtime().block_on(async {
        let mut admin = connect(&proxy.addr()).await;
        wait_all_eligible(&mut admin, 3, &proxy).await;
        let pauses = |replica: String| async move {
            let mut replica = connect(&replica).await;
            tokio::time::sleep(ms(1000)).await;
            for _ in 0..3 {
                let _: () = redis::cmd("CLIENT")
                    .arg("PAUSE")
                    .arg(250)
                    .arg("WRITE")
                    .query_async(&mut replica)
                    .await
                    .unwrap_or_else(|e| panic!("CLIENT PAUSE on the replica: {}", err_text(&e)));
                tokio::time::sleep(ms(1000)).await;
            }
        };
        let before = routing(&mut admin).await;
        let (pairs, violations) = own_writes(
            &proxy.addr(),
            &shard.keys,
            true,
            pauses(shard.replica.clone()),
        )
        .await;
        let after = routing(&mut admin).await;
        let info = proxy_info(&mut admin).await;
        eprintln!(
            "[{kind:?}] read-your-writes on: {pairs} INCR+GET pairs, {violations} violations, \
             reads to replicas {} to primaries {} (replica {} paused 250 ms WRITE 3 times)",
            after.to_replicas - before.to_replicas,
            after.to_primaries - before.to_primaries,
            shard.replica
        );
        assert!(pairs >= 1000, "only {pairs} pairs\n{info}");
        assert_eq!(violations, 0, "read-your-writes violations\n{info}");
        assert!(
            after.to_replicas > before.to_replicas,
            "no read went to a replica: the test shows nothing\n{info}"
        );

        // The control: the same without read-your-writes reads stale values from the paused
        // replica, which is what the option is for (and shows the check can fail).
        let (pairs_off, violations_off) = own_writes(
            &proxy.addr(),
            &shard.keys,
            false,
            pauses(shard.replica.clone()),
        )
        .await;
        eprintln!(
            "[{kind:?}] read-your-writes off (control): {pairs_off} pairs, {violations_off} \
             violations"
        );
        assert!(
            violations_off > 0,
            "without read-your-writes a paused replica should have shown stale counters"
        );
    });
}

#[test]
fn read_your_writes_under_replica_lag_redis() {
    read_your_writes_under_replica_lag(ServerKind::Redis);
}

#[test]
fn read_your_writes_under_replica_lag_lagwise() {
    read_your_writes_under_replica_lag(ServerKind::Lagwise);
}

// ---------------------------------------------------------------------------------------
// Latency SLO
// ---------------------------------------------------------------------------------------

/// `reads=` of the replica at `addr` in PROXY INFO.
fn replica_reads(info: &str, addr: &str) -> u64 {
    replica_line(info, addr)
        .and_then(|l| line_field(l, "reads"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no reads= for {addr} in\n{info}"))
}

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get((v.len() * 99 / 100).min(v.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}

fn a_slow_replica_loses_its_reads_under_the_slo(kind: ServerKind) {
    let _serial = serial();
    let mut cluster = start_cluster(kind);
    let proxy = ProxyProcess::for_cluster(
        &cluster,
        &[
            "--read-policy",
            "prefer-replica",
            "--max-lag-ms",
            "1000",
            "--replication-poll-interval-ms",
            "20",
            "--read-slo-ms",
            "30",
        ],
    );
    let shard = shard_of_tag(&mut cluster, "slo", 1);
    let ms = Duration::from_millis;
    runtime().block_on(async {
        let mut admin = connect(&proxy.addr()).await;
        {
            let _: () = redis::cmd("SET")
                .arg(&shard.keys[0])
                .arg("v")
                .query_async(&mut admin)
                .await
                .unwrap();
        }
        wait_all_eligible(&mut admin, 3, &proxy).await;
        // Readers of the slow shard's key, recording each read's latency.
        let stop = Arc::new(AtomicBool::new(false));
        let mut readers = Vec::new();
        for _ in 0..4 {
            let mut con = connect(&proxy.addr()).await;
            let (key, stop) = (shard.keys[0].clone(), stop.clone());
            readers.push(tokio::spawn(async move {
                let mut samples: Vec<(Instant, Duration)> = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let _: Option<String> = redis::cmd("GET")
                        .arg(&key)
                        .query_async(&mut con)
                        .await
                        .unwrap();
                    samples.push((t, t.elapsed()));
                }
                samples
            }));
        }
        tokio::time::sleep(ms(2000)).await;
        let healthy_from = (
            Instant::now(),
            replica_reads(&proxy_info(&mut admin).await, &shard.replica),
        );
        tokio::time::sleep(ms(2000)).await;
        let healthy_to = (
            Instant::now(),
            replica_reads(&proxy_info(&mut admin).await, &shard.replica),
        );

        // CPU-starve the replica: stopped 80 ms of every 100. It stays fresh (its lag is under
        // 100 ms, the bound 1 s) but its p99 breaks the 30 ms SLO, which a healthy node meets
        // even on a loaded 2-core machine.
        let starved = Starved::new(shard.replica_pid, ms(80), ms(100));
        // The verdict needs a window of slow replies (up to 3 s); then measure 3 s.
        tokio::time::sleep(ms(4000)).await;
        let slow_from = (
            Instant::now(),
            replica_reads(&proxy_info(&mut admin).await, &shard.replica),
        );
        tokio::time::sleep(ms(3000)).await;
        let slow_to = (
            Instant::now(),
            replica_reads(&proxy_info(&mut admin).await, &shard.replica),
        );
        let info_slow = proxy_info(&mut admin).await;
        drop(starved);
        // Back within the SLO once a window of fast polls has passed.
        tokio::time::sleep(ms(5000)).await;
        let back_from = (
            Instant::now(),
            replica_reads(&proxy_info(&mut admin).await, &shard.replica),
        );
        tokio::time::sleep(ms(2000)).await;
        let back_to = (
            Instant::now(),
            replica_reads(&proxy_info(&mut admin).await, &shard.replica),
        );
        stop.store(true, Ordering::Relaxed);
        let mut samples = Vec::new();
        for r in readers {
            samples.extend(r.await.unwrap());
        }
        let in_window = |from: Instant, to: Instant| -> (usize, Duration) {
            let v: Vec<Duration> = samples
                .iter()
                .filter(|(t, _)| *t >= from && *t < to)
                .map(|(_, d)| *d)
                .collect();
            (v.len(), p99(v))
        };
        let share = |from: (Instant, u64), to: (Instant, u64)| {
            let (n, _) = in_window(from.0, to.0);
            (to.1 - from.1) as f64 / n.max(1) as f64
        };
        let (healthy_share, slow_share, back_share) = (
            share(healthy_from, healthy_to),
            share(slow_from, slow_to),
            share(back_from, back_to),
        );
        let (n_slow, p99_slow) = in_window(slow_from.0, slow_to.0);
        let (_, p99_healthy) = in_window(healthy_from.0, healthy_to.0);
        eprintln!(
            "[{kind:?}] read SLO 30 ms, replica {} stopped 80 ms of every 100: share to it healthy \
             {:.1}%, slowed {:.1}% ({n_slow} reads, client p99 {:?}; healthy p99 {:?}), after \
             {:.1}%\n{}",
            shard.replica,
            healthy_share * 100.0,
            slow_share * 100.0,
            p99_slow,
            p99_healthy,
            back_share * 100.0,
            replica_line(&info_slow, &shard.replica).unwrap_or("?"),
        );
        assert!(
            healthy_share > 0.7,
            "healthy share {healthy_share}\n{info_slow}"
        );
        assert!(slow_share < 0.1, "slowed share {slow_share}\n{info_slow}");
        // Had the reads stayed on the replica, most of them would wait out a stop.
        assert!(
            p99_slow < ms(80),
            "client p99 {p99_slow:?} while the replica was slow"
        );
        assert!(back_share > 0.5, "share after recovery {back_share}");
    });
}

#[test]
fn a_slow_replica_loses_its_reads_under_the_slo_redis() {
    a_slow_replica_loses_its_reads_under_the_slo(ServerKind::Redis);
}

// No lagwise-node variant: the tests run debug builds of the node, whose own p99 on this
// shared machine (tens of ms, INFO polls included) is too close to the 30 ms SLO.

// ---------------------------------------------------------------------------------------
// Hedged reads
// ---------------------------------------------------------------------------------------

fn info_number(info: &str, field: &str) -> u64 {
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in\n{info}"))
}

#[test]
fn hedged_reads_let_the_primary_answer_when_a_replica_stalls() {
    let _serial = serial();
    let mut cluster = start_cluster(ServerKind::Redis);
    let proxy = ProxyProcess::for_cluster(
        &cluster,
        &[
            "--read-policy",
            "prefer-replica",
            "--max-lag-ms",
            "1000",
            "--replication-poll-interval-ms",
            "20",
            "--hedge-after",
            "2ms",
        ],
    );
    let shard = shard_of_tag(&mut cluster, "hedge", 1);
    let ms = Duration::from_millis;
    runtime().block_on(async {
        let mut admin = connect(&proxy.addr()).await;
        let _: () = redis::cmd("SET")
            .arg(&shard.keys[0])
            .arg("v")
            .query_async(&mut admin)
            .await
            .unwrap();
        wait_all_eligible(&mut admin, 3, &proxy).await;
        let before = proxy_info(&mut admin).await;
        let stop = Arc::new(AtomicBool::new(false));
        let mut readers = Vec::new();
        for _ in 0..4 {
            let mut con = connect(&proxy.addr()).await;
            let (key, stop) = (shard.keys[0].clone(), stop.clone());
            readers.push(tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let v: Option<String> = redis::cmd("GET")
                        .arg(&key)
                        .query_async(&mut con)
                        .await
                        .unwrap();
                    assert_eq!(v.as_deref(), Some("v"));
                    n += 1;
                }
                n
            }));
        }
        // Stalls of 8 ms in every 12: a read caught in one is hedged after 2 ms.
        let starved = Starved::new(shard.replica_pid, ms(8), ms(12));
        tokio::time::sleep(ms(3000)).await;
        drop(starved);
        stop.store(true, Ordering::Relaxed);
        let mut reads = 0;
        for r in readers {
            reads += r.await.unwrap();
        }
        let after = proxy_info(&mut admin).await;
        let sent = info_number(&after, "hedges_sent") - info_number(&before, "hedges_sent");
        let won = info_number(&after, "hedges_won") - info_number(&before, "hedges_won");
        eprintln!("hedged reads: {reads} reads, {sent} hedges sent, {won} won by the primary");
        assert!(won > 0, "no hedge answered first\n{after}");
        assert!(sent >= won);
        // The default cap: 5% of the reads that could be hedged, plus a small burst.
        assert!(
            sent as f64 <= 0.05 * reads as f64 + 20.0,
            "{sent} hedges for {reads} reads"
        );
    });
}

// ---------------------------------------------------------------------------------------
// Pipelined reads (the proxy's batched path)
// ---------------------------------------------------------------------------------------

/// A client that pipelines its reads gets them batched per node by the proxy: they must be
/// as fresh and as monotonic as single reads, go to the replica while it is healthy, and fall
/// back to the primary while it is stopped.
fn pipelined_reads_stay_monotonic_through_a_stall(kind: ServerKind) {
    let _serial = serial();
    let mut cluster = start_cluster(kind);
    let proxy = ProxyProcess::for_cluster(
        &cluster,
        &[
            "--read-policy",
            "prefer-replica",
            "--max-lag-ms",
            "200",
            "--replication-poll-interval-ms",
            "20",
        ],
    );
    let shard = shard_of_tag(&mut cluster, "pipe", 1);
    let key = shard.keys[0].clone();
    let ms = Duration::from_millis;
    runtime().block_on(async {
        let mut admin = connect(&proxy.addr()).await;
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg(0)
            .query_async(&mut admin)
            .await
            .unwrap();
        wait_all_eligible(&mut admin, 3, &proxy).await;
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (mut con, key, stop) = (connect(&proxy.addr()).await, key.clone(), stop.clone());
            tokio::spawn(async move {
                let mut last = 0i64;
                while !stop.load(Ordering::Relaxed) {
                    last = redis::cmd("INCR")
                        .arg(&key)
                        .query_async(&mut con)
                        .await
                        .unwrap_or_else(|e| panic!("INCR: {}", err_text(&e)));
                    tokio::time::sleep(ms(1)).await;
                }
                last
            })
        };
        // Pipelines of 16 GETs of the counter: every value at least the one before.
        let reader = {
            let (mut con, key, stop) = (connect(&proxy.addr()).await, key.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut last, mut reads, mut backwards) = (0i64, 0u64, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    let mut pipe = redis::pipe();
                    for _ in 0..16 {
                        pipe.cmd("GET").arg(&key);
                    }
                    let values: Vec<i64> = pipe
                        .query_async(&mut con)
                        .await
                        .unwrap_or_else(|e| panic!("pipelined GETs: {}", err_text(&e)));
                    for v in values {
                        if v < last && backwards.len() < 10 {
                            backwards.push((last, v));
                        }
                        last = last.max(v);
                        reads += 1;
                    }
                }
                (reads, last, backwards)
            })
        };
        tokio::time::sleep(ms(1500)).await;
        let healthy_from = routing(&mut admin).await;
        tokio::time::sleep(ms(1500)).await;
        let healthy_to = routing(&mut admin).await;
        {
            let _stopped = Stopped::new(shard.replica_pid);
            tokio::time::sleep(ms(1500)).await;
        }
        let stalled_to = routing(&mut admin).await;
        // Back in use once it has caught up.
        tokio::time::sleep(ms(2000)).await;
        let back_from = routing(&mut admin).await;
        tokio::time::sleep(ms(1000)).await;
        let back_to = routing(&mut admin).await;
        stop.store(true, Ordering::Relaxed);
        let written = writer.await.unwrap();
        let (reads, last_read, backwards) = reader.await.unwrap();
        let info = proxy_info(&mut admin).await;
        let share = |a: &lagwise_tests::staleness::RoutingSample,
                     b: &lagwise_tests::staleness::RoutingSample| {
            let (r, p) = (
                b.to_replicas - a.to_replicas,
                b.to_primaries - a.to_primaries,
            );
            (r, p, r as f64 / (r + p).max(1) as f64)
        };
        let healthy = share(&healthy_from, &healthy_to);
        let stalled = share(&healthy_to, &stalled_to);
        let back = share(&back_from, &back_to);
        eprintln!(
            "[{kind:?}] pipelined reads={reads} last_read={last_read} written={written} \
             healthy(replica,primary,share)={healthy:?} stalled={stalled:?} back={back:?}\n{info}"
        );
        assert!(backwards.is_empty(), "reads went backwards: {backwards:?}");
        assert!(reads > 1000, "only {reads} reads");
        assert!(
            last_read > written / 2,
            "the last value read ({last_read}) is far behind the last written ({written})"
        );
        assert!(
            healthy.2 >= 0.9,
            "healthy replica share {healthy:?}\n{info}"
        );
        assert!(
            stalled.1 > 0,
            "no read went to the primary while the replica was stopped\n{info}"
        );
        assert!(
            back.2 >= 0.9,
            "replica share after recovery {back:?}\n{info}"
        );
    });
}

#[test]
fn pipelined_reads_stay_monotonic_through_a_stall_redis() {
    pipelined_reads_stay_monotonic_through_a_stall(ServerKind::Redis);
}

#[test]
fn pipelined_reads_stay_monotonic_through_a_stall_lagwise() {
    pipelined_reads_stay_monotonic_through_a_stall(ServerKind::Lagwise);
}
