//! A staleness checker for reads through the proxy (issue 8).
//!
//! One writer increments counters (`INCR`) and records when each value was acknowledged;
//! readers `GET` the same counters and record what they read and when they asked. Values of a
//! counter are consecutive, so a read that returned `v` is stale by
//! `invoked − ack(v + 1)` if value `v + 1` had been acknowledged before the read was invoked
//! (the read missed a write that was complete before it began), and by 0 otherwise.
//!
//! - A *violation*: stale by more than `bound + slack` (the proxy's `max_lag_ms` and, as the
//!   issue allows, one poll interval).
//! - A *strict violation*: stale by more than `bound` alone (reported; the proxy's design
//!   should give none either).
//! - A *monotonic-read violation*: on one connection, a counter read lower than a value that
//!   connection had already read.
//!
//! All times are `Instant`s of the test process, taken conservatively: the acknowledgement
//! after the reply arrived, the invocation before the request was sent.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;

/// Acknowledged values of each counter: `acks[key][i]` = (value, ack time), values increasing.
#[derive(Debug, Default, Clone)]
pub struct WriteLog {
    pub acks: Vec<Vec<(i64, Instant)>>,
    /// INCRs that failed (their effect unknown; not counted as acknowledged).
    pub errors: u64,
}

impl WriteLog {
    /// The acknowledgement time of the first value above `v` of counter `key`.
    fn next_ack(&self, key: usize, v: i64) -> Option<Instant> {
        let acks = self.acks.get(key)?;
        let i = acks.partition_point(|&(value, _)| value <= v);
        acks.get(i).map(|&(_, at)| at)
    }

    pub fn writes(&self) -> usize {
        self.acks.iter().map(Vec::len).sum()
    }
}

/// One read: which counter, by which reader connection, the value (0 for a missing key),
/// and when it was invoked and answered.
#[derive(Debug, Clone, Copy)]
pub struct ReadRecord {
    pub key: usize,
    pub reader: usize,
    pub value: i64,
    pub invoked: Instant,
    pub answered: Instant,
}

/// A read that returned an error (e.g. `NOREPLICA`).
#[derive(Debug, Clone)]
pub struct ReadError {
    pub reader: usize,
    pub at: Instant,
    pub message: String,
}

/// The checker's findings.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub reads: usize,
    pub violations: usize,
    pub strict_violations: usize,
    pub monotonic_violations: usize,
    /// Staleness of the reads that were stale at all, sorted (ms).
    pub stale_ms: Vec<f64>,
    /// A few violations, for the failure message.
    pub examples: Vec<String>,
}

impl Report {
    fn percentile(&self, p: f64) -> f64 {
        if self.stale_ms.is_empty() {
            return 0.0;
        }
        let i = ((self.stale_ms.len() - 1) as f64 * p).round() as usize;
        self.stale_ms[i]
    }

    /// One line of figures.
    pub fn summary(&self) -> String {
        format!(
            "reads={} violations={} strict_violations={} monotonic_violations={} \
             stale_reads={} staleness_ms(p50/p99/max)={:.1}/{:.1}/{:.1}",
            self.reads,
            self.violations,
            self.strict_violations,
            self.monotonic_violations,
            self.stale_ms.len(),
            self.percentile(0.5),
            self.percentile(0.99),
            self.stale_ms.last().copied().unwrap_or(0.0),
        )
    }
}

/// Checks reads against the writes: `bound` is the proxy's `max_lag_ms`, `slack` what the
/// issue allows on top (a poll interval).
pub fn check(writes: &WriteLog, reads: &[ReadRecord], bound: Duration, slack: Duration) -> Report {
    let mut report = Report {
        reads: reads.len(),
        ..Report::default()
    };
    let mut last: HashMap<(usize, usize), i64> = HashMap::new();
    let mut ordered: Vec<&ReadRecord> = reads.iter().collect();
    ordered.sort_by_key(|r| r.invoked);
    for r in ordered {
        if let Some(next) = writes.next_ack(r.key, r.value) {
            if next < r.invoked {
                let stale = r.invoked - next;
                report.stale_ms.push(stale.as_secs_f64() * 1000.0);
                if stale > bound {
                    report.strict_violations += 1;
                }
                if stale > bound + slack {
                    report.violations += 1;
                    if report.examples.len() < 5 {
                        report.examples.push(format!(
                            "reader {} read counter {} = {} stale by {stale:?}",
                            r.reader, r.key, r.value
                        ));
                    }
                }
            }
        }
        let seen = last.entry((r.reader, r.key)).or_insert(i64::MIN);
        if r.value < *seen {
            report.monotonic_violations += 1;
            if report.examples.len() < 10 {
                report.examples.push(format!(
                    "reader {} read counter {} = {} after {}",
                    r.reader, r.key, r.value, *seen
                ));
            }
        }
        *seen = (*seen).max(r.value);
    }
    report
        .stale_ms
        .sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    report
}

/// Increments `keys` round robin until `stop`, one at a time, `pause` between writes.
pub async fn writer(
    mut con: MultiplexedConnection,
    keys: Vec<String>,
    pause: Duration,
    stop: Arc<AtomicBool>,
) -> WriteLog {
    let mut log = WriteLog {
        acks: vec![Vec::new(); keys.len()],
        errors: 0,
    };
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let k = i % keys.len();
        match redis::cmd("INCR")
            .arg(&keys[k])
            .query_async::<i64>(&mut con)
            .await
        {
            Ok(v) => log.acks[k].push((v, Instant::now())),
            Err(_) => log.errors += 1,
        }
        i += 1;
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    log
}

/// `GET`s `keys` round robin on one connection (one request at a time) until `stop`.
pub async fn reader(
    mut con: MultiplexedConnection,
    id: usize,
    keys: Vec<String>,
    stop: Arc<AtomicBool>,
) -> (Vec<ReadRecord>, Vec<ReadError>) {
    let mut reads = Vec::new();
    let mut errors = Vec::new();
    let mut i = id;
    while !stop.load(Ordering::Relaxed) {
        let k = i % keys.len();
        i += 1;
        let invoked = Instant::now();
        match redis::cmd("GET")
            .arg(&keys[k])
            .query_async::<Option<i64>>(&mut con)
            .await
        {
            Ok(v) => reads.push(ReadRecord {
                key: k,
                reader: id,
                value: v.unwrap_or(0),
                invoked,
                answered: Instant::now(),
            }),
            Err(e) => {
                errors.push(ReadError {
                    reader: id,
                    at: invoked,
                    message: crate::err_text(&e),
                });
                // An error comes back at once: do not spin.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
    (reads, errors)
}

/// The proxy's routing counters at one moment (from `PROXY INFO`).
#[derive(Debug, Clone, Copy)]
pub struct RoutingSample {
    pub at: Instant,
    pub to_replicas: u64,
    pub to_primaries: u64,
}

/// `PROXY INFO` as text.
pub async fn proxy_info(con: &mut MultiplexedConnection) -> String {
    redis::cmd("PROXY")
        .arg("INFO")
        .query_async::<String>(con)
        .await
        .unwrap_or_else(|e| panic!("PROXY INFO: {}", crate::err_text(&e)))
}

/// The routing counters now.
pub async fn routing(con: &mut MultiplexedConnection) -> RoutingSample {
    let info = proxy_info(con).await;
    let field = |name: &str| -> u64 {
        crate::info_field(&info, name)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in PROXY INFO:\n{info}"))
    };
    RoutingSample {
        at: Instant::now(),
        to_replicas: field("reads_replica"),
        to_primaries: field("reads_primary"),
    }
}

/// Samples the routing counters every `every` until `stop`.
pub async fn sample_routing(
    mut con: MultiplexedConnection,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> Vec<RoutingSample> {
    let mut out = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        out.push(routing(&mut con).await);
        tokio::time::sleep(every).await;
    }
    out
}

/// Reads routed to (replicas, primaries) between `from` and `to`, from the samples.
pub fn routed_between(samples: &[RoutingSample], from: Instant, to: Instant) -> (u64, u64) {
    let first = samples.iter().find(|s| s.at >= from);
    let last = samples.iter().rev().find(|s| s.at <= to);
    match (first, last) {
        (Some(a), Some(b)) if b.at > a.at => (
            b.to_replicas - a.to_replicas,
            b.to_primaries - a.to_primaries,
        ),
        _ => (0, 0),
    }
}

/// A multi-thread runtime for the tests that drive the checker.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A connection with redis-rs's default 500 ms response timeout: what the readers and the
/// writer of the checker use.
pub async fn connect(addr: &str) -> MultiplexedConnection {
    redis::Client::open(format!("redis://{addr}/"))
        .expect("valid redis URL")
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
}

/// The `replicaN:` lines of PROXY INFO.
pub fn replica_lines(info: &str) -> Vec<&str> {
    info.lines()
        .filter(|l| {
            l.strip_prefix("replica")
                .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
        })
        .collect()
}

/// The `replicaN:` line of the replica at `addr`.
pub fn replica_line<'a>(info: &'a str, addr: &str) -> Option<&'a str> {
    replica_lines(info)
        .into_iter()
        .find(|l| l.contains(&format!("addr={addr},")))
}

/// The value of `name=` in a `replicaN:` line.
pub fn line_field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split_once(':')
        .map_or(line, |(_, rest)| rest)
        .split(',')
        .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
}

/// Waits (30 s at most) until PROXY INFO lists `n` replicas, every one eligible.
pub async fn wait_all_eligible(
    con: &mut MultiplexedConnection,
    n: usize,
    proxy: &crate::ProxyProcess,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info = proxy_info(con).await;
        let lines = replica_lines(&info);
        if lines.len() == n && lines.iter().all(|l| l.contains("eligible=1")) {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "replicas not all eligible within 30 s:\n{info}\n--- proxy log ---\n{}",
                proxy.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staleness_and_monotonic_reads_are_measured() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let writes = WriteLog {
            acks: vec![vec![(1, t0), (2, t0 + ms(10)), (3, t0 + ms(500))]],
            errors: 0,
        };
        let read = |reader, value, at: u64| ReadRecord {
            key: 0,
            reader,
            value,
            invoked: t0 + ms(at),
            answered: t0 + ms(at + 1),
        };
        let reads = vec![
            read(0, 2, 20),  // fresh
            read(1, 1, 50),  // stale by 40 ms: within 100
            read(1, 1, 200), // stale by 190 ms: a violation of 100 + 50
            read(0, 1, 600), // stale by 590, and 1 after 2 on reader 0
        ];
        let r = check(&writes, &reads, ms(100), ms(50));
        assert_eq!(r.reads, 4);
        assert_eq!(r.violations, 2, "{r:?}");
        assert_eq!(r.strict_violations, 2);
        assert_eq!(r.monotonic_violations, 1);
        assert_eq!(r.stale_ms.len(), 3);
        assert!(r.summary().contains("violations=2"));
    }
}
