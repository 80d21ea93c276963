//! Failover under faults, end to end: 3 primaries × 1 replica with `cluster-node-timeout
//! 2000`, clients writing all along, and then: a primary killed with SIGKILL, a primary
//! frozen with SIGSTOP, a primary cut off by a network partition (network namespaces), and
//! ten coordinated `CLUSTER FAILOVER`s in a row.
//!
//! The nodes are `lagwise-node` by default; `LAGWISE_CLUSTER_KIND=redis` runs the same tests
//! against redis-server 7.0, which is how the expectations were checked. Only what both must
//! do is asserted; how long things take is printed (`cargo test -- --nocapture`), never
//! asserted, and every wait has a generous deadline.
//!
//! The clients are this file's own blocking, slot-aware [`SlotClient`]: it follows `-MOVED`
//! (which means "not executed here", so following it is safe) and never retries anything
//! else, so each operation has a definite outcome for the history checker
//! (`lagwise_tests::history`): acknowledged, failed (an error reply, or no connection), or
//! unknown (sent, no answer).
//!
//! The partition test needs root and `ip` (it prints `SKIP` and passes otherwise): every
//! node runs in a network namespace of its own, joined by a bridge (`lagwise_tests::netns`),
//! and the writer inside the isolated primary's namespace is this test binary again
//! (`ip netns exec <ns> <test binary> netns_writer_helper --exact --ignored`), since a test
//! thread cannot enter a namespace without `unsafe`.
//!
//! The tests take turns (one lock): each runs six nodes, and on a small machine concurrent
//! clusters would starve each other's failure detectors.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lagwise_tests::cluster::{
    check_ok, cluster_kind, key_slot, parse_cluster_nodes, parse_cluster_slots, query_node,
    query_node_string, redis_cli, run_captured, Cluster, ClusterConfig, CmdOutput, NodeInfo,
    SlotRange, SLOTS,
};
use lagwise_tests::fixture::{send_signal, Supervised};
use lagwise_tests::history::{Append, Clock, History, Outcome, Read};
use lagwise_tests::netns::{self, Lab};
use lagwise_tests::{encode_command, escape, frame_len, info_field, server_binary};

/// `--cluster-node-timeout` of every node.
const NODE_TIMEOUT_MS: u64 = 2000;
/// How long the cluster may take to settle after a change (gossip, replica sync).
const SETTLE: Duration = Duration::from_secs(90);
/// How long a failover (promotion, demotion, role swap) may take.
const FAILOVER_WAIT: Duration = Duration::from_secs(60);
/// Connect, read and write timeout of the clients' connections. Longer than `WAIT 1 1000`.
const IO_TIMEOUT: Duration = Duration::from_secs(3);
/// No client loop runs longer than this, whatever the test does.
const LOAD_LIMIT: Duration = Duration::from_secs(300);

// ---------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------

/// One test at a time (see the module documentation).
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A 3 × 1 cluster of the kind chosen by `LAGWISE_CLUSTER_KIND`, 2 s node timeout.
fn start_cluster() -> Cluster {
    let config = ClusterConfig::from_env().node_timeout_ms(NODE_TIMEOUT_MS);
    println!("cluster nodes: {}", config.kind);
    Cluster::start(config, 3, 1)
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// Polls `attempt` every 50 ms until it returns `Ok` or `timeout` passes (then the last error).
fn wait_until<T>(
    timeout: Duration,
    mut attempt: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    let deadline = Instant::now() + timeout;
    loop {
        match attempt() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// [`wait_until`], panicking with `what`, the last error and the cluster report.
fn wait_for<T>(
    cluster: &mut Cluster,
    what: &str,
    timeout: Duration,
    attempt: impl FnMut() -> Result<T, String>,
) -> T {
    match wait_until(timeout, attempt) {
        Ok(v) => v,
        Err(e) => panic!(
            "{what}: not reached within {timeout:?}; last: {e}\n{}",
            cluster.check_report()
        ),
    }
}

/// `CLUSTER NODES` as the node at `addr` sees it.
fn nodes_of(addr: &str) -> Result<Vec<NodeInfo>, String> {
    query_node_string(addr, &["CLUSTER", "NODES"]).map(|text| parse_cluster_nodes(&text))
}

/// The node's own line of its `CLUSTER NODES` (flag `myself`).
fn own_view(addr: &str) -> Result<NodeInfo, String> {
    nodes_of(addr)?
        .into_iter()
        .find(NodeInfo::is_myself)
        .ok_or_else(|| format!("{addr}: no myself line in CLUSTER NODES"))
}

/// Ok once the node at `addr` says it is a primary serving `slot`.
fn is_primary_of(addr: &str, slot: u16) -> Result<(), String> {
    let me = own_view(addr)?;
    if me.is_primary() && me.slots.iter().any(|&(a, b)| a <= slot && slot <= b) {
        Ok(())
    } else {
        Err(format!("{addr} says: {me:?}"))
    }
}

/// Ok once the node at `addr` says it is a replica of `primary_id` (`myself,slave`) and its
/// replication link is up.
fn is_linked_replica_of(addr: &str, primary_id: &str) -> Result<(), String> {
    let me = own_view(addr)?;
    if !me.flags.iter().any(|f| f == "slave") || me.primary_id.as_deref() != Some(primary_id) {
        return Err(format!("{addr} says: {me:?}"));
    }
    let info = query_node_string(addr, &["INFO", "replication"])?;
    match info_field(&info, "master_link_status").as_deref() {
        Some("up") => Ok(()),
        other => Err(format!("{addr}: master_link_status {other:?}")),
    }
}

/// Whether `slot` is in one of `ranges` (inclusive pairs).
fn in_ranges(ranges: &[(u16, u16)], slot: u16) -> bool {
    ranges.iter().any(|&(a, b)| a <= slot && slot <= b)
}

/// The slot ranges `primary` serves in `ranges`.
fn ranges_of(ranges: &[SlotRange], primary: &str) -> Vec<(u16, u16)> {
    ranges
        .iter()
        .filter(|r| r.primary == primary)
        .map(|r| (r.start, r.end))
        .collect()
}

/// `n` hash tags `prefix0`, `prefix1`, ... whose slot satisfies `wanted`.
fn tags_where(prefix: &str, n: usize, wanted: impl Fn(u16) -> bool) -> Vec<String> {
    (0u64..)
        .map(|i| format!("{prefix}{i}"))
        .filter(|tag| wanted(key_slot(tag.as_bytes())))
        .take(n)
        .collect()
}

/// Microseconds since the Unix epoch: a clock shared with processes in other namespaces.
fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or_default()
}

/// Sends SIGCONT when dropped: a test that fails while a node is stopped does not leave it
/// frozen (the cluster's drop kills it anyway, but its log should be complete).
struct ContinueOnDrop(u32);

impl Drop for ContinueOnDrop {
    fn drop(&mut self) {
        let _ = send_signal(self.0, "CONT");
    }
}

// ---------------------------------------------------------------------------------------
// A blocking RESP connection and a slot-aware client
// ---------------------------------------------------------------------------------------

/// One reply: a value, or an error line (without `-`).
enum Reply {
    Value(redis::Value),
    Error(String),
}

/// A blocking connection with [`IO_TIMEOUT`]s; errors are strings, never panics.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    fn connect(addr: &str, timeout: Duration) -> Result<Conn, String> {
        let sock: SocketAddr = addr
            .parse()
            .map_err(|e| format!("bad address {addr}: {e}"))?;
        let stream = TcpStream::connect_timeout(&sock, timeout)
            .map_err(|e| format!("connect {addr}: {e}"))?;
        stream
            .set_read_timeout(Some(timeout))
            .and_then(|_| stream.set_write_timeout(Some(timeout)))
            .map_err(|e| format!("socket options for {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        Ok(Conn {
            stream,
            buf: Vec::new(),
        })
    }

    fn send(&mut self, args: &[&str]) -> Result<(), String> {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.stream
            .write_all(&encode_command(&args))
            .map_err(|e| format!("write: {e}"))
    }

    fn recv(&mut self) -> Result<Reply, String> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match frame_len(&self.buf) {
                Ok(Some(n)) => {
                    let frame: Vec<u8> = self.buf.drain(..n).collect();
                    if frame.first() == Some(&b'-') {
                        let text = &frame[1..frame.len() - 2];
                        return Ok(Reply::Error(String::from_utf8_lossy(text).into_owned()));
                    }
                    return redis::parse_redis_value(&frame)
                        .map(Reply::Value)
                        .map_err(|e| format!("unparsable reply {}: {e}", escape(&frame)));
                }
                Ok(None) => {}
                Err(e) => return Err(format!("malformed reply ({e}): {}", escape(&self.buf))),
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err("connection closed".to_string()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    }

    fn call(&mut self, args: &[&str]) -> Result<Reply, String> {
        self.send(args)?;
        self.recv()
    }

    /// Sends every command, then reads every reply (one round trip for many reads).
    fn pipeline(&mut self, commands: &[Vec<String>]) -> Result<Vec<Reply>, String> {
        let mut out = Vec::new();
        for cmd in commands {
            let args: Vec<&[u8]> = cmd.iter().map(|a| a.as_bytes()).collect();
            out.extend(encode_command(&args));
        }
        self.stream
            .write_all(&out)
            .map_err(|e| format!("write: {e}"))?;
        commands.iter().map(|_| self.recv()).collect()
    }
}

/// Why an operation did not succeed, and so what the history records.
#[derive(Debug, Clone)]
enum CallError {
    /// No connection could be made: certainly not executed.
    NotSent(String),
    /// An error reply (other than a `-MOVED` that was followed): not executed.
    Server(String),
    /// Sent and no reply (timeout, reset): maybe executed.
    Unknown(String),
}

impl CallError {
    fn outcome(&self) -> Outcome {
        match self {
            CallError::NotSent(e) | CallError::Server(e) => Outcome::Failed(e.clone()),
            CallError::Unknown(e) => Outcome::Unknown(e.clone()),
        }
    }

    /// A short name for counting: the error code, or the kind of I/O failure.
    fn kind(&self) -> String {
        match self {
            CallError::NotSent(_) => "no connection".to_string(),
            CallError::Server(e) => e.split_whitespace().next().unwrap_or("").to_string(),
            CallError::Unknown(e) => format!("unknown ({})", e.split(':').next().unwrap_or("")),
        }
    }
}

/// A blocking cluster client: a slot map from `CLUSTER SLOTS`, one connection per node,
/// `-MOVED` followed (at most 5 times), nothing retried after it was sent. After a
/// connection failure or `-CLUSTERDOWN`, the next call reloads the slot map (at most every
/// 100 ms) from the first seed that answers.
struct SlotClient {
    seeds: Vec<String>,
    /// The primary's address per slot; empty while unknown.
    slots: Vec<String>,
    conns: HashMap<String, Conn>,
    stale: bool,
    last_refresh: Option<Instant>,
    next_seed: usize,
}

impl SlotClient {
    fn new(seeds: Vec<String>) -> SlotClient {
        let mut client = SlotClient {
            seeds,
            slots: vec![String::new(); usize::from(SLOTS)],
            conns: HashMap::new(),
            stale: true,
            last_refresh: None,
            next_seed: 0,
        };
        client.refresh();
        client
    }

    fn refresh(&mut self) {
        if self
            .last_refresh
            .is_some_and(|t| t.elapsed() < Duration::from_millis(100))
        {
            return;
        }
        self.last_refresh = Some(Instant::now());
        for i in 0..self.seeds.len() {
            let n = (self.next_seed + i) % self.seeds.len();
            let ranges = Conn::connect(&self.seeds[n], Duration::from_secs(1))
                .and_then(|mut c| c.call(&["CLUSTER", "SLOTS"]))
                .and_then(|reply| match reply {
                    Reply::Value(v) => parse_cluster_slots(&v),
                    Reply::Error(e) => Err(e),
                });
            if let Ok(ranges) = ranges {
                if ranges.is_empty() {
                    continue;
                }
                for r in ranges {
                    for slot in r.start..=r.end {
                        self.slots[usize::from(slot)] = r.primary.clone();
                    }
                }
                self.stale = false;
                self.next_seed = n + 1;
                return;
            }
        }
    }

    /// `args` to the primary of `key`'s slot.
    fn call(&mut self, key: &str, args: &[&str]) -> Result<redis::Value, CallError> {
        self.call_then(key, args, None).map(|(v, _)| v)
    }

    /// `args` to the primary of `key`'s slot; if that succeeds and `then` is given, `then`
    /// on the same connection (for `WAIT`), whose result comes second.
    #[allow(clippy::type_complexity)]
    fn call_then(
        &mut self,
        key: &str,
        args: &[&str],
        then: Option<&[&str]>,
    ) -> Result<(redis::Value, Option<Result<redis::Value, CallError>>), CallError> {
        let slot = usize::from(key_slot(key.as_bytes()));
        if self.stale {
            self.refresh();
        }
        let mut last_redirect = String::new();
        for _ in 0..5 {
            let addr = self.slots[slot].clone();
            if addr.is_empty() {
                self.stale = true;
                return Err(CallError::NotSent(format!("slot {slot}: no known primary")));
            }
            if !self.conns.contains_key(&addr) {
                match Conn::connect(&addr, IO_TIMEOUT) {
                    Ok(c) => {
                        self.conns.insert(addr.clone(), c);
                    }
                    Err(e) => {
                        self.stale = true;
                        return Err(CallError::NotSent(e));
                    }
                }
            }
            let conn = self.conns.get_mut(&addr).expect("connected above");
            match conn.call(args) {
                Err(e) => {
                    self.conns.remove(&addr);
                    self.stale = true;
                    return Err(CallError::Unknown(format!("{addr}: {e}")));
                }
                Ok(Reply::Error(e)) => {
                    let moved = e.strip_prefix("MOVED ").and_then(|rest| {
                        let (s, to) = rest.split_once(' ')?;
                        Some((s.parse::<usize>().ok()?, to.trim().to_string()))
                    });
                    if let Some((s, to)) = moved.filter(|(s, _)| *s < self.slots.len()) {
                        self.slots[s] = to;
                        last_redirect = e;
                        continue;
                    }
                    if e.starts_with("CLUSTERDOWN") {
                        self.stale = true;
                    }
                    return Err(CallError::Server(e));
                }
                Ok(Reply::Value(v)) => {
                    let then_reply = then.map(|t| conn.call(t));
                    let then = then_reply.map(|reply| match reply {
                        Ok(Reply::Value(v)) => Ok(v),
                        Ok(Reply::Error(e)) => Err(CallError::Server(e)),
                        Err(e) => {
                            self.conns.remove(&addr);
                            self.stale = true;
                            Err(CallError::Unknown(format!("{addr}: {e}")))
                        }
                    });
                    return Ok((v, then));
                }
            }
        }
        Err(CallError::Server(format!(
            "too many redirections; last: {last_redirect}"
        )))
    }
}

// ---------------------------------------------------------------------------------------
// Workloads
// ---------------------------------------------------------------------------------------

/// What a SET writer did.
#[derive(Default)]
struct SetReport {
    /// Acknowledged writes: key and value.
    acked: Vec<(String, String)>,
    /// Writes that got a reply but not the acknowledgement asked for (`WAIT` < 1).
    short_acks: usize,
    /// Failures by kind.
    errors: BTreeMap<String, usize>,
}

impl SetReport {
    fn merge(&mut self, other: SetReport) {
        self.acked.extend(other.acked);
        self.short_acks += other.short_acks;
        for (k, n) in other.errors {
            *self.errors.entry(k).or_default() += n;
        }
    }
}

/// Which writes must be followed by `WAIT 1 1000`: those whose slot satisfies it.
type NeedsWait = Arc<dyn Fn(u16) -> bool + Send + Sync>;

/// `SET key_of(n) v<n>` for n = 0, 1, ... until `stop`; a write to a slot for which
/// `needs_wait` holds counts as acknowledged only if `WAIT 1 1000` on the same connection
/// then reports at least one replica.
fn set_writer(
    seeds: Vec<String>,
    key_of: impl Fn(u64) -> String,
    needs_wait: NeedsWait,
    stop: Arc<AtomicBool>,
) -> SetReport {
    let mut client = SlotClient::new(seeds);
    let mut report = SetReport::default();
    let deadline = Instant::now() + LOAD_LIMIT;
    for n in 0u64.. {
        if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
            break;
        }
        let key = key_of(n);
        let value = format!("v{n}");
        let wait = needs_wait(key_slot(key.as_bytes()));
        let then: Option<&[&str]> = wait.then_some(&["WAIT", "1", "1000"]);
        match client.call_then(&key, &["SET", &key, &value], then) {
            Ok((redis::Value::Okay, None))
            | Ok((redis::Value::Okay, Some(Ok(redis::Value::Int(1..))))) => {
                report.acked.push((key, value));
            }
            Ok((_, Some(Err(e)))) => {
                report.short_acks += 1;
                *report
                    .errors
                    .entry(format!("WAIT: {}", e.kind()))
                    .or_default() += 1;
            }
            Ok(_) => report.short_acks += 1,
            Err(e) => {
                *report.errors.entry(e.kind()).or_default() += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    report
}

/// One client of the list-append workload: until `stop`, picks a key at random and either
/// appends a unique element (`RPUSH`, followed by `WAIT 1 1000` where `needs_wait` says so:
/// then it counts as acknowledged only if a replica has it) or reads the list
/// (`LRANGE 0 -1`). Every operation goes into the returned history.
fn list_worker(
    process: usize,
    seeds: Vec<String>,
    keys: Arc<Vec<String>>,
    needs_wait: NeedsWait,
    clock: Clock,
    stop: Arc<AtomicBool>,
) -> History {
    let mut client = SlotClient::new(seeds);
    let mut history = History::new();
    let mut rng = (process as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let deadline = Instant::now() + LOAD_LIMIT;
    for n in 0u64.. {
        if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
            break;
        }
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let key = &keys[(rng % keys.len() as u64) as usize];
        let invoked = clock.now();
        if rng & 0x100 == 0 {
            let element = format!("p{process}-{n}");
            let wait = needs_wait(key_slot(key.as_bytes()));
            let then: Option<&[&str]> = wait.then_some(&["WAIT", "1", "1000"]);
            let result = client.call_then(key, &["RPUSH", key, &element], then);
            let completed = clock.now();
            let (outcome, length) = match result {
                Ok((redis::Value::Int(len), then)) => {
                    let outcome = match then {
                        None | Some(Ok(redis::Value::Int(1..))) => Outcome::Ok,
                        Some(Ok(v)) => Outcome::Unknown(format!("WAIT replied {v:?}")),
                        Some(Err(e)) => Outcome::Unknown(format!("WAIT: {e:?}")),
                    };
                    (outcome, u64::try_from(len).ok())
                }
                Ok((other, _)) => (Outcome::Unknown(format!("RPUSH replied {other:?}")), None),
                Err(e) => (e.outcome(), None),
            };
            let failed = !matches!(outcome, Outcome::Ok);
            history.append(Append {
                process,
                key: key.clone(),
                element,
                invoked,
                completed,
                outcome,
                length,
            });
            if failed {
                std::thread::sleep(Duration::from_millis(10));
            }
        } else {
            match client.call(key, &["LRANGE", key, "0", "-1"]) {
                Ok(redis::Value::Array(items)) => {
                    let list = items
                        .iter()
                        .map(|v| match v {
                            redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                            other => format!("<{other:?}>"),
                        })
                        .collect();
                    history.read(Read {
                        process,
                        key: key.clone(),
                        invoked,
                        completed: clock.now(),
                        list,
                        is_final: false,
                    });
                }
                _ => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }
    history
}

/// Reads every key of the list workload once more (the final reads), retrying each until a
/// read succeeds or `timeout` passes.
fn final_reads(
    seeds: &[String],
    keys: &[String],
    clock: Clock,
    timeout: Duration,
) -> Result<History, String> {
    let mut client = SlotClient::new(seeds.to_vec());
    let mut history = History::new();
    for key in keys {
        let list = wait_until(timeout, || {
            let invoked = clock.now();
            match client.call(key, &["LRANGE", key, "0", "-1"]) {
                Ok(redis::Value::Array(items)) => Ok((invoked, items)),
                other => Err(format!("LRANGE {key}: {other:?}")),
            }
        })?;
        let (invoked, items) = list;
        history.read(Read {
            process: usize::MAX,
            key: key.clone(),
            invoked,
            completed: clock.now(),
            list: items
                .iter()
                .map(|v| match v {
                    redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                    other => format!("<{other:?}>"),
                })
                .collect(),
            is_final: true,
        });
    }
    Ok(history)
}

/// SET writers and list-append clients running in threads until [`Load::finish`] (or drop).
struct Load {
    seeds: Vec<String>,
    stop: Arc<AtomicBool>,
    clock: Clock,
    list_keys: Arc<Vec<String>>,
    sets: Vec<JoinHandle<SetReport>>,
    lists: Vec<JoinHandle<History>>,
}

impl Load {
    /// Starts one SET writer per key function and `list_clients` list-append clients over
    /// `list_keys`; `needs_wait` applies to both.
    fn start(
        seeds: Vec<String>,
        key_fns: Vec<Box<dyn Fn(u64) -> String + Send>>,
        list_keys: Vec<String>,
        list_clients: usize,
        needs_wait: NeedsWait,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let clock = Clock::new();
        let list_keys = Arc::new(list_keys);
        let sets = key_fns
            .into_iter()
            .map(|key_of| {
                let (seeds, wait, stop) = (seeds.clone(), needs_wait.clone(), stop.clone());
                std::thread::spawn(move || set_writer(seeds, key_of, wait, stop))
            })
            .collect();
        let lists = (0..list_clients)
            .map(|p| {
                let (seeds, keys, wait, stop) = (
                    seeds.clone(),
                    list_keys.clone(),
                    needs_wait.clone(),
                    stop.clone(),
                );
                std::thread::spawn(move || list_worker(p, seeds, keys, wait, clock, stop))
            })
            .collect();
        Load {
            seeds,
            stop,
            clock,
            list_keys,
            sets,
            lists,
        }
    }

    /// Stops the clients, joins them, and adds the final reads (from `seeds`, or the load's
    /// seeds) to the history.
    fn finish(mut self, seeds: Option<&[String]>) -> (SetReport, History) {
        self.stop.store(true, Ordering::Relaxed);
        let mut sets = SetReport::default();
        for h in self.sets.drain(..) {
            sets.merge(h.join().expect("a SET writer panicked"));
        }
        let mut history = History::new();
        for h in self.lists.drain(..) {
            history.merge(h.join().expect("a list client panicked"));
        }
        let seeds = seeds.unwrap_or(&self.seeds);
        match final_reads(seeds, &self.list_keys, self.clock, SETTLE) {
            Ok(finals) => history.merge(finals),
            Err(e) => panic!("final reads of the list workload failed: {e}"),
        }
        (sets, history)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Acknowledged writes that are not there with their value, read through a [`SlotClient`]
/// (each read retried until it succeeds or `SETTLE` passes). Returns descriptions.
fn missing_writes(seeds: &[String], acked: &[(String, String)]) -> Vec<String> {
    let mut client = SlotClient::new(seeds.to_vec());
    let mut missing = Vec::new();
    for (key, value) in acked {
        let got = wait_until(SETTLE, || match client.call(key, &["GET", key]) {
            Ok(v) => Ok(v),
            Err(e) => Err(format!("{e:?}")),
        });
        match got {
            Ok(redis::Value::BulkString(b)) if b == value.as_bytes() => {}
            other => missing.push(format!("{key}: expected {value:?}, got {other:?}")),
        }
    }
    missing
}

/// Every string key of the node at `addr` with its value (`KEYS *`, then `GET`s in one
/// pipeline, after `READONLY` so that a replica answers).
fn node_contents(addr: &str) -> Result<BTreeMap<String, String>, String> {
    let mut conn = Conn::connect(addr, IO_TIMEOUT)?;
    let keys = match conn.call(&["KEYS", "*"])? {
        Reply::Value(redis::Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                redis::Value::BulkString(b) => Ok(String::from_utf8_lossy(b).into_owned()),
                other => Err(format!("KEYS item {other:?}")),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Reply::Value(other) => return Err(format!("{addr} KEYS: {other:?}")),
        Reply::Error(e) => return Err(format!("{addr} KEYS: {e}")),
    };
    let mut commands = vec![vec!["READONLY".to_string()]];
    commands.extend(keys.iter().map(|k| vec!["GET".to_string(), k.clone()]));
    let replies = conn.pipeline(&commands)?;
    let mut out = BTreeMap::new();
    for (key, reply) in keys.into_iter().zip(replies.into_iter().skip(1)) {
        match reply {
            Reply::Value(redis::Value::BulkString(b)) => {
                out.insert(key, String::from_utf8_lossy(&b).into_owned());
            }
            Reply::Value(redis::Value::Nil) => {} // expired or deleted meanwhile
            Reply::Value(other) => return Err(format!("{addr} GET {key}: {other:?}")),
            Reply::Error(e) => return Err(format!("{addr} GET {key}: {e}")),
        }
    }
    Ok(out)
}

/// Values of `keys` read from the node at `addr` itself (no redirection followed).
fn values_on(addr: &str, keys: &[&str]) -> Result<Vec<Option<String>>, String> {
    let mut conn = Conn::connect(addr, IO_TIMEOUT)?;
    let mut out = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(1000) {
        let commands: Vec<Vec<String>> = chunk
            .iter()
            .map(|k| vec!["GET".to_string(), k.to_string()])
            .collect();
        for (key, reply) in chunk.iter().zip(conn.pipeline(&commands)?) {
            match reply {
                Reply::Value(redis::Value::BulkString(b)) => {
                    out.push(Some(String::from_utf8_lossy(&b).into_owned()))
                }
                Reply::Value(redis::Value::Nil) => out.push(None),
                Reply::Value(other) => return Err(format!("{addr} GET {key}: {other:?}")),
                Reply::Error(e) => return Err(format!("{addr} GET {key}: {e}")),
            }
        }
    }
    Ok(out)
}

/// Asserts that the history checks out, printing its summary under `label`.
fn assert_history(label: &str, history: &History) {
    let report = history.check();
    println!("{label}: list-append history: {}", report.summary());
    assert!(
        report.is_valid(),
        "{label}: the list-append history has anomalies:\n{report}"
    );
}

// ---------------------------------------------------------------------------------------
// 1. kill -9 a primary under load
// ---------------------------------------------------------------------------------------

#[test]
fn kill9_primary_under_load() {
    let _serial = serial();
    let mut cluster = start_cluster();
    let ranges = cluster.slots();
    let victim = ranges[ranges.len() / 2].primary.clone();
    let victim_id = cluster.id_of(&victim);
    let victim_ranges = ranges_of(&ranges, &victim);
    let replica = cluster.replicas_of(&victim)[0].clone();
    let replica_id = cluster.id_of(&replica);
    println!("victim {victim} ({victim_id}) serves {victim_ranges:?}; its replica is {replica}");
    let seeds = cluster.seeds();

    // Writes to the victim's slots count only once WAIT says the replica has them.
    let wait_ranges = victim_ranges.clone();
    let needs_wait: NeedsWait = Arc::new(move |slot| in_ranges(&wait_ranges, slot));
    let mut list_keys: Vec<String> = tags_where("kv", 3, |s| in_ranges(&victim_ranges, s));
    list_keys.extend(tags_where("ko", 3, |s| !in_ranges(&victim_ranges, s)));
    let list_keys: Vec<String> = list_keys.iter().map(|t| format!("{{{t}}}:list")).collect();
    let key_fns: Vec<Box<dyn Fn(u64) -> String + Send>> = (0..2)
        .map(|w| Box::new(move |n| format!("k:{w}:{n}")) as Box<dyn Fn(u64) -> String + Send>)
        .collect();
    let load = Load::start(seeds.clone(), key_fns, list_keys, 3, needs_wait);
    std::thread::sleep(Duration::from_secs(2));

    let probe_key = format!(
        "{{{}}}:probe",
        tags_where("kp", 1, |s| in_ranges(&victim_ranges, s))[0]
    );
    let killed_at = Instant::now();
    cluster.kill_node(&victim);
    // Served again = a write to one of its slots succeeds.
    let mut probe = SlotClient::new(seeds.clone());
    let served = wait_until(FAILOVER_WAIT, || {
        probe
            .call(&probe_key, &["SET", &probe_key, "x"])
            .map_err(|e| format!("{e:?}"))
    });
    if let Err(e) = served {
        panic!(
            "the victim's slots were not served again within {FAILOVER_WAIT:?}: {e}\n{}",
            cluster.check_report()
        );
    }
    let promotion = killed_at.elapsed();
    println!(
        "FIGURE kill -9: slots served again {} after the kill",
        secs(promotion)
    );
    let slot = key_slot(probe_key.as_bytes());
    let new_primary = match cluster.wait_for_new_primary(slot, &victim, SETTLE) {
        Ok(p) => p,
        Err(e) => panic!("no stable new primary: {e}\n{}", cluster.check_report()),
    };
    assert_eq!(
        new_primary, replica,
        "the victim's replica should have been promoted"
    );

    std::thread::sleep(Duration::from_millis(1500));
    let (sets, history) = load.finish(None);
    println!(
        "acknowledged SETs: {} (writes with too few replicas: {}); failures: {:?}",
        sets.acked.len(),
        sets.short_acks,
        sets.errors
    );
    let wait_acked = sets
        .acked
        .iter()
        .filter(|(k, _)| in_ranges(&victim_ranges, key_slot(k.as_bytes())))
        .count();
    println!("of which on the victim's slots (acknowledged by WAIT): {wait_acked}");
    assert!(
        wait_acked > 0,
        "no write to the victim's slots was acknowledged"
    );
    let missing = missing_writes(&seeds, &sets.acked);
    assert!(
        missing.is_empty(),
        "{} acknowledged writes are missing after the failover, e.g. {:?}\n{}",
        missing.len(),
        &missing[..missing.len().min(20)],
        cluster.check_report()
    );
    assert_history("kill -9", &history);
    if let Err(e) = cluster.wait_check_ok(SETTLE) {
        panic!("after the failover: {e}\n{}", cluster.check_report());
    }

    // The killed node comes back (same directory and arguments) as the new primary's replica.
    let restarted_at = Instant::now();
    cluster.restart_node(&victim);
    wait_for(
        &mut cluster,
        "the restarted node replicating the new primary",
        SETTLE,
        || is_linked_replica_of(&victim, &replica_id),
    );
    println!(
        "FIGURE kill -9: restarted node linked as a replica {} after its restart",
        secs(restarted_at.elapsed())
    );
    for addr in cluster.live_addrs() {
        let victim_id = victim_id.clone();
        let replica_id = replica_id.clone();
        wait_for(
            &mut cluster,
            "every node listing the restarted node as a replica",
            SETTLE,
            || {
                let nodes = nodes_of(&addr)?;
                match nodes.iter().find(|n| n.id == victim_id) {
                    Some(n)
                        if n.flags.iter().any(|f| f == "slave")
                            && n.primary_id.as_deref() == Some(replica_id.as_str()) =>
                    {
                        Ok(())
                    }
                    other => Err(format!("{addr} lists it as {other:?}")),
                }
            },
        );
    }
    if let Err(e) = cluster.wait_converged(SETTLE) {
        panic!("after the restart: {e}\n{}", cluster.check_report());
    }
    if let Err(e) = cluster.wait_check_ok(SETTLE) {
        panic!("after the restart: {e}\n{}", cluster.check_report());
    }
}

// ---------------------------------------------------------------------------------------
// 2. SIGSTOP a primary until it is replaced
// ---------------------------------------------------------------------------------------

#[test]
fn sigstop_primary_is_demoted() {
    let _serial = serial();
    let mut cluster = start_cluster();
    let ranges = cluster.slots();
    let victim = ranges[0].primary.clone();
    let victim_ranges = ranges_of(&ranges, &victim);
    let replica = cluster.replicas_of(&victim)[0].clone();
    let replica_id = cluster.id_of(&replica);
    let key = format!(
        "{{{}}}:after",
        tags_where("st", 1, |s| in_ranges(&victim_ranges, s))[0]
    );
    let slot = key_slot(key.as_bytes());
    let others: Vec<String> = cluster
        .live_addrs()
        .into_iter()
        .filter(|a| *a != victim)
        .collect();
    // A few writes before, to have something to replicate; WAIT makes sure the replica has
    // them all (the last reply may otherwise leave before the replication stream does).
    let mut client = SlotClient::new(cluster.seeds());
    for n in 0..100 {
        let k = format!("{key}:{n}");
        client.call(&k, &["SET", &k, "before"]).unwrap();
    }
    let last = format!("{key}:99");
    let (_, waited) = client
        .call_then(&last, &["GET", &last], Some(&["WAIT", "1", "5000"]))
        .unwrap();
    assert!(
        matches!(waited, Some(Ok(redis::Value::Int(1..)))),
        "WAIT before the stop: {waited:?}"
    );

    // A client of the victim itself (no redirection followed, long timeout) writes all
    // along: the write it sends while the victim is stopped waits in the socket and is
    // answered after SIGCONT. What the old primary still acknowledges then is measured.
    let stop_direct = Arc::new(AtomicBool::new(false));
    let direct = {
        let (victim, key, stop) = (victim.clone(), key.clone(), stop_direct.clone());
        std::thread::spawn(move || direct_writer(&victim, &key, &stop))
    };
    std::thread::sleep(Duration::from_millis(200));

    let pid = cluster.node(&victim).pid();
    send_signal(pid, "STOP").unwrap();
    let _resume = ContinueOnDrop(pid);
    let stopped_at = Instant::now();
    // The stopped node is not asked anything: it would not answer.
    wait_for(
        &mut cluster,
        "the replica promoted while its primary is stopped",
        FAILOVER_WAIT,
        || {
            is_primary_of(&replica, slot)?;
            for addr in &others {
                let ranges = parse_cluster_slots(&query_node(addr, &["CLUSTER", "SLOTS"])?)?;
                match SlotRange::primary_of(&ranges, slot) {
                    Some(p) if p == replica => {}
                    other => return Err(format!("{addr}: slot {slot} served by {other:?}")),
                }
            }
            Ok(())
        },
    );
    let promotion = stopped_at.elapsed();
    println!(
        "FIGURE SIGSTOP: replica promoted {} after the stop",
        secs(promotion)
    );
    // Stopped for more than 3 node timeouts in all.
    let frozen = Duration::from_millis(3 * NODE_TIMEOUT_MS + 500);
    if let Some(rest) = frozen.checked_sub(stopped_at.elapsed()) {
        std::thread::sleep(rest);
    }
    // Taken before the signal: whatever the node answers after this, it answered resumed.
    let continued_at = Instant::now();
    send_signal(pid, "CONT").unwrap();
    println!("stopped for {}", secs(stopped_at.elapsed()));

    wait_for(
        &mut cluster,
        "the old primary demoted to a replica of the new one",
        SETTLE,
        || {
            let me = own_view(&victim)?;
            if me.flags.iter().any(|f| f == "slave")
                && me.primary_id.as_deref() == Some(replica_id.as_str())
            {
                Ok(())
            } else {
                Err(format!("{victim} says {me:?}"))
            }
        },
    );
    println!(
        "FIGURE SIGSTOP: old primary saw itself as a replica {} after SIGCONT",
        secs(continued_at.elapsed())
    );
    // It takes no more writes: a write sent to it directly is refused, with -CLUSTERDOWN
    // while it still counts itself cut off from the majority, then redirected.
    let expected = format!("-MOVED {slot} {replica}\r\n");
    let mut refusals = BTreeMap::<String, usize>::new();
    let redirected = wait_until(SETTLE, || {
        let reply = lagwise_tests::cluster::raw_query(&victim, &["SET", &key, "late"], IO_TIMEOUT)?;
        if reply == expected.as_bytes() {
            return Ok(());
        }
        if !reply.starts_with(b"-CLUSTERDOWN") {
            panic!(
                "the demoted primary answered a write with {}",
                escape(&reply)
            );
        }
        *refusals.entry(escape(&reply)).or_default() += 1;
        Err(format!("answered {}", escape(&reply)))
    });
    if let Err(e) = redirected {
        panic!(
            "a write sent to the demoted primary was not redirected ({expected:?}): {e}\n{}",
            cluster.check_report()
        );
    }
    println!(
        "writes sent to the demoted primary were redirected {} after SIGCONT (refused before: \
         {refusals:?})",
        secs(continued_at.elapsed())
    );
    stop_direct.store(true, Ordering::Relaxed);
    let writes = direct.join().expect("the direct writer panicked");
    let after_cont: Vec<&(u64, Instant, String)> = writes
        .iter()
        .filter(|(_, done, reply)| *done >= continued_at && reply == "OK")
        .collect();
    let keys: Vec<String> = after_cont
        .iter()
        .map(|(n, _, _)| format!("{key}:direct:{n}"))
        .collect();
    let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let survived = values_on(&replica, &key_refs)
        .unwrap()
        .iter()
        .filter(|v| v.is_some())
        .count();
    println!(
        "FIGURE SIGSTOP: the old primary acknowledged {} writes after SIGCONT; lost: {} \
         (direct writer: {} writes, replies after SIGCONT: {:?})",
        after_cont.len(),
        after_cont.len() - survived,
        writes.len(),
        writes
            .iter()
            .filter(|(_, done, _)| *done >= continued_at)
            .fold(BTreeMap::<&str, usize>::new(), |mut m, (_, _, r)| {
                *m.entry(r.split(' ').next().unwrap_or("")).or_default() += 1;
                m
            })
    );
    if let Err(e) = cluster.wait_converged(SETTLE) {
        panic!("after SIGCONT: {e}\n{}", cluster.check_report());
    }
    if let Err(e) = cluster.wait_check_ok(SETTLE) {
        panic!("after SIGCONT: {e}\n{}", cluster.check_report());
    }
    let mut client = SlotClient::new(cluster.seeds());
    for n in 0..100 {
        let k = format!("{key}:{n}");
        assert_eq!(
            client.call(&k, &["GET", &k]).unwrap(),
            redis::Value::BulkString(b"before".to_vec()),
            "{k} after the failover"
        );
    }
}

/// `SET <key>:direct:<n> <n>` to the node at `addr` itself, one after another (no
/// redirection followed, 60 s timeout) until `stop`. Returns `(n, completed, reply)` with the
/// reply's first line (`OK`, an error line, or `io: ...`).
fn direct_writer(addr: &str, key: &str, stop: &AtomicBool) -> Vec<(u64, Instant, String)> {
    let mut out = Vec::new();
    let mut conn: Option<Conn> = None;
    let deadline = Instant::now() + LOAD_LIMIT;
    for n in 0u64.. {
        if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
            break;
        }
        if conn.is_none() {
            conn = Conn::connect(addr, Duration::from_secs(60)).ok();
        }
        let Some(c) = conn.as_mut() else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        let k = format!("{key}:direct:{n}");
        let reply = match c.call(&["SET", &k, &n.to_string()]) {
            Ok(Reply::Value(redis::Value::Okay)) => "OK".to_string(),
            Ok(Reply::Value(other)) => format!("{other:?}"),
            Ok(Reply::Error(e)) => e,
            Err(e) => {
                conn = None;
                format!("io: {e}")
            }
        };
        out.push((n, Instant::now(), reply));
        std::thread::sleep(Duration::from_millis(10));
    }
    out
}

// ---------------------------------------------------------------------------------------
// 3. A partition leaves a primary in the minority
// ---------------------------------------------------------------------------------------

/// The client port of every node in the lab (each node has a namespace of its own).
const NS_PORT: u16 = 7000;
/// Env of [`netns_writer_helper`]: `addr tag out-file stop-file`.
const NS_WRITER_ENV: &str = "LAGWISE_NETNS_WRITER";

/// One write of the writer inside the isolated namespace, as it recorded it.
#[derive(Debug, Clone)]
struct IsolatedWrite {
    n: u64,
    /// Unix microseconds.
    invoked: u64,
    completed: u64,
    /// `ack`, `err <message>` or `unknown <why>`.
    result: String,
}

impl IsolatedWrite {
    fn acked(&self) -> bool {
        self.result == "ack"
    }
}

fn parse_isolated_writes(text: &str) -> Vec<IsolatedWrite> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.splitn(4, ' ');
            Some(IsolatedWrite {
                n: f.next()?.parse().ok()?,
                invoked: f.next()?.parse().ok()?,
                completed: f.next()?.parse().ok()?,
                result: f.next()?.to_string(),
            })
        })
        .collect()
}

/// Not a test: the writer that runs inside the isolated primary's namespace, started by
/// [`partition_minority_primary_stops_writes`] as `ip netns exec <ns> <this test binary>
/// netns_writer_helper --exact --ignored` with [`NS_WRITER_ENV`] set. It writes
/// `SET {tag}:iso:<n> <n>` to one node directly (no redirection followed) every 5 ms and
/// records each outcome as a line `n invoked completed result` until the stop file exists
/// (or 5 minutes passed).
#[test]
#[ignore = "helper process of partition_minority_primary_stops_writes"]
fn netns_writer_helper() {
    let Ok(spec) = std::env::var(NS_WRITER_ENV) else {
        return;
    };
    let parts: Vec<&str> = spec.split(' ').collect();
    let [addr, tag, out, stop] = parts[..] else {
        panic!("{NS_WRITER_ENV}={spec:?}: expected `addr tag out-file stop-file`");
    };
    let mut file = fs::File::create(out).unwrap();
    let mut conn: Option<Conn> = None;
    let deadline = Instant::now() + LOAD_LIMIT;
    for n in 0u64.. {
        if Instant::now() >= deadline || fs::metadata(stop).is_ok() {
            break;
        }
        let key = format!("{{{tag}}}:iso:{n}");
        let value = n.to_string();
        let invoked = unix_micros();
        let result = match conn.as_mut() {
            Some(c) => c.call(&["SET", &key, &value]),
            None => match Conn::connect(addr, Duration::from_secs(1)) {
                Ok(c) => conn.insert(c).call(&["SET", &key, &value]),
                Err(_) => {
                    // Not sent: not a write at all.
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            },
        };
        let result = match result {
            Ok(Reply::Value(redis::Value::Okay)) => "ack".to_string(),
            Ok(Reply::Value(other)) => format!("unknown reply {other:?}"),
            Ok(Reply::Error(e)) => format!("err {e}"),
            Err(e) => {
                conn = None;
                format!("unknown {e}")
            }
        };
        writeln!(file, "{n} {invoked} {} {result}", unix_micros()).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The nodes of a lab cluster: `addr` per host and the processes (stopped on drop).
struct LabNodes {
    addrs: Vec<String>,
    processes: Vec<Supervised>,
}

/// Starts one node of `kind` per host of `lab`, bound to the host's address.
fn start_lab_nodes(lab: &Lab) -> LabNodes {
    let kind = cluster_kind();
    let mut nodes = LabNodes {
        addrs: Vec::new(),
        processes: Vec::new(),
    };
    for (i, host) in lab.hosts().iter().enumerate() {
        let dir = lab.dir().join(format!("node-{}", i + 1));
        fs::create_dir_all(&dir).unwrap();
        let mut command = lab.command(i, server_binary(kind));
        command
            .args(["--port", &NS_PORT.to_string(), "--bind", &host.ip])
            .args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ])
            .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
            .args(["--cluster-announce-ip", &host.ip])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--enable-debug-command",
                "yes",
            ])
            .args(["--repl-diskless-sync-delay", "0"])
            // Clients come from other namespaces; the namespaces are private to the test.
            .args(["--protected-mode", "no"])
            .arg("--dir")
            .arg(&dir)
            .current_dir(&dir);
        let label = format!("{kind} {}:{NS_PORT} in {}", host.ip, host.ns);
        let log = dir.join("server.log");
        nodes
            .processes
            .push(Supervised::spawn(label, &mut command, dir, log));
        nodes.addrs.push(format!("{}:{NS_PORT}", host.ip));
    }
    for addr in &nodes.addrs {
        if let Err(e) =
            wait_until(
                Duration::from_secs(30),
                || match lagwise_tests::cluster::raw_query(addr, &["PING"], Duration::from_secs(1))
                {
                    Ok(r) if r == b"+PONG\r\n" => Ok(()),
                    Ok(r) => Err(escape(&r)),
                    Err(e) => Err(e),
                },
            )
        {
            panic!("{addr} did not answer PING: {e}");
        }
    }
    nodes
}

/// `redis-cli --cluster check <addr>` from the root namespace.
fn lab_check(lab: &Lab, addr: &str) -> CmdOutput {
    let mut command = std::process::Command::new(redis_cli());
    command
        .args(["--cluster", "check", addr])
        .env("TERM", "dumb");
    run_captured(
        command,
        lab.dir(),
        "redis-cli-check",
        Duration::from_secs(30),
    )
}

/// Every reachable node's `CLUSTER NODES`, for failure messages.
fn lab_report(lab: &Lab, addrs: &[String]) -> String {
    let mut out = lab.describe();
    for addr in addrs {
        let nodes =
            query_node_string(addr, &["CLUSTER", "NODES"]).unwrap_or_else(|e| format!("<{e}>"));
        out.push_str(&format!("\n--- CLUSTER NODES from {addr} ---\n{nodes}"));
    }
    out
}

/// Ok once every node in `addrs` is `cluster_state:ok`, agrees on who serves each of the
/// 16384 slots, knows `addrs.len()` nodes, 3 primaries serve slots with one linked replica
/// each. Returns the slot map.
fn lab_converged(addrs: &[String]) -> Result<Vec<SlotRange>, String> {
    let mut agreed: Option<Vec<SlotRange>> = None;
    for addr in addrs {
        let info = query_node_string(addr, &["CLUSTER", "INFO"])?;
        if !info.lines().any(|l| l.trim_end() == "cluster_state:ok") {
            return Err(format!("{addr}: not cluster_state:ok"));
        }
        let ranges = parse_cluster_slots(&query_node(addr, &["CLUSTER", "SLOTS"])?)?;
        let covered: u32 = ranges
            .iter()
            .map(|r| u32::from(r.end) - u32::from(r.start) + 1)
            .sum();
        if covered != u32::from(SLOTS) {
            return Err(format!("{addr}: CLUSTER SLOTS covers {covered} slots"));
        }
        let primaries = |r: &[SlotRange]| -> Vec<(u16, u16, String)> {
            r.iter()
                .map(|r| (r.start, r.end, r.primary.clone()))
                .collect()
        };
        match &agreed {
            Some(seen) if primaries(seen) != primaries(&ranges) => {
                return Err(format!(
                    "CLUSTER SLOTS differ: {seen:?} vs {addr}: {ranges:?}"
                ))
            }
            Some(_) => {}
            None => agreed = Some(ranges),
        }
        let nodes = nodes_of(addr)?;
        if nodes.len() != addrs.len() {
            return Err(format!("{addr} knows {} nodes", nodes.len()));
        }
        let me = nodes.iter().find(|n| n.is_myself()).ok_or("no myself")?;
        if me.is_primary() {
            let replicas = nodes
                .iter()
                .filter(|n| n.primary_id.as_deref() == Some(me.id.as_str()))
                .count();
            if replicas != 1 {
                return Err(format!("{addr}: primary with {replicas} replicas"));
            }
        } else {
            let info = query_node_string(addr, &["INFO", "replication"])?;
            if info_field(&info, "master_link_status").as_deref() != Some("up") {
                return Err(format!("{addr}: replica link not up"));
            }
        }
    }
    let ranges = agreed.ok_or("no node")?;
    let mut primaries: Vec<&str> = ranges.iter().map(|r| r.primary.as_str()).collect();
    primaries.sort();
    primaries.dedup();
    if primaries.len() != 3 {
        return Err(format!("{} primaries serve slots", primaries.len()));
    }
    Ok(ranges)
}

#[test]
fn partition_minority_primary_stops_writes() {
    if let Some(why) = netns::unavailable() {
        println!("SKIP partition_minority_primary_stops_writes: {why}");
        return;
    }
    let _serial = serial();
    println!("cluster nodes: {}", cluster_kind());
    // Declaration order matters for cleanup: the processes (declared later) stop before the
    // lab's namespaces and links are deleted.
    let lab = Lab::create(6).unwrap_or_else(|e| panic!("cannot build the namespaces: {e}"));
    println!("{}", lab.describe());
    let nodes = start_lab_nodes(&lab);
    let addrs = nodes.addrs.clone();

    let mut create = std::process::Command::new(redis_cli());
    create
        .arg("--cluster")
        .arg("create")
        .args(&addrs)
        .args(["--cluster-replicas", "1", "--cluster-yes"])
        .env("TERM", "dumb");
    let created = run_captured(
        create,
        lab.dir(),
        "redis-cli-create",
        Duration::from_secs(60),
    );
    assert!(created.success(), "forming the cluster failed: {created}");
    let ranges = wait_until(SETTLE, || lab_converged(&addrs)).unwrap_or_else(|e| {
        panic!(
            "the lab cluster did not converge: {e}\n{}",
            lab_report(&lab, &addrs)
        )
    });

    // P: the primary of slot 0's range; R: its replica.
    let p_addr = ranges[0].primary.clone();
    let p_host = addrs.iter().position(|a| *a == p_addr).unwrap();
    let p_ranges = ranges_of(&ranges, &p_addr);
    let p_id = own_view(&p_addr).unwrap().id;
    let r_view = nodes_of(&p_addr)
        .unwrap()
        .into_iter()
        .find(|n| n.primary_id.as_deref() == Some(p_id.as_str()))
        .unwrap();
    let (r_addr, r_id) = (r_view.addr.clone(), r_view.id.clone());
    println!(
        "isolating primary {p_addr} (ns {}), serving {p_ranges:?}; its replica is {r_addr}",
        lab.host(p_host).ns
    );
    let majority: Vec<String> = addrs.iter().filter(|a| **a != p_addr).cloned().collect();
    let tag = tags_where("iso", 1, |s| in_ranges(&p_ranges, s))[0].clone();

    // Some data on every shard.
    let mut client = SlotClient::new(addrs.clone());
    for n in 0..300 {
        let key = format!("base:{n}");
        client.call(&key, &["SET", &key, &n.to_string()]).unwrap();
    }

    // The writer inside P's namespace, writing to P directly.
    let out = lab.dir().join("isolated-writes.txt");
    let stop = lab.dir().join("isolated-writer.stop");
    let exe = std::env::current_exe().unwrap();
    let mut command = lab.command(p_host, &exe);
    command
        .args(["netns_writer_helper", "--exact", "--ignored", "--nocapture"])
        .args(["--test-threads", "1"])
        .env(
            NS_WRITER_ENV,
            format!("{p_addr} {tag} {} {}", out.display(), stop.display()),
        );
    let writer_dir = lab.dir().join("writer");
    fs::create_dir_all(&writer_dir).unwrap();
    let mut writer = Supervised::spawn(
        "isolated writer",
        &mut command,
        writer_dir.clone(),
        writer_dir.join("writer.log"),
    );
    let read_writes = || parse_isolated_writes(&fs::read_to_string(&out).unwrap_or_default());
    wait_until(Duration::from_secs(30), || {
        let acks = read_writes().iter().filter(|w| w.acked()).count();
        if acks >= 20 {
            Ok(())
        } else {
            Err(format!("{acks} acknowledged writes so far"))
        }
    })
    .unwrap_or_else(|e| panic!("the isolated writer does not write: {e}\n{}", writer.log()));

    // Cut P off.
    let cut_at = Instant::now();
    let cut_micros = unix_micros();
    lab.cut(p_host).unwrap();
    println!("cut {} at {cut_micros}", lab.host(p_host).bridge_side);

    let refused = wait_until(FAILOVER_WAIT, || {
        read_writes()
            .into_iter()
            .find(|w| w.invoked > cut_micros && w.result.starts_with("err CLUSTERDOWN"))
            .ok_or_else(|| "no CLUSTERDOWN yet".to_string())
    })
    .unwrap_or_else(|e| {
        panic!(
            "the isolated primary kept taking writes: {e}; last writes: {:?}",
            read_writes().iter().rev().take(5).collect::<Vec<_>>()
        )
    });
    println!(
        "FIGURE partition: the isolated primary answered CLUSTERDOWN {:.2} s after the cut",
        (refused.completed.saturating_sub(cut_micros)) as f64 / 1e6
    );
    let slot = p_ranges[0].0;
    wait_until(FAILOVER_WAIT, || {
        is_primary_of(&r_addr, slot)?;
        for addr in &majority {
            let ranges = parse_cluster_slots(&query_node(addr, &["CLUSTER", "SLOTS"])?)?;
            match SlotRange::primary_of(&ranges, slot) {
                Some(p) if p == r_addr => {}
                other => return Err(format!("{addr}: slot {slot} served by {other:?}")),
            }
        }
        Ok(())
    })
    .unwrap_or_else(|e| {
        panic!(
            "the majority did not promote {r_addr}: {e}\n{}",
            lab_report(&lab, &majority)
        )
    });
    println!(
        "FIGURE partition: the majority promoted the replica {} after the cut",
        secs(cut_at.elapsed())
    );
    // The majority takes writes for P's slots.
    let mut majority_client = SlotClient::new(majority.clone());
    let mut majority_writes = Vec::new();
    for n in 0..50 {
        let key = format!("{{{tag}}}:maj:{n}");
        wait_until(SETTLE, || {
            majority_client
                .call(&key, &["SET", &key, &n.to_string()])
                .map_err(|e| format!("{e:?}"))
        })
        .unwrap_or_else(|e| panic!("the majority refused a write to P's slots: {e}"));
        majority_writes.push((key, n.to_string()));
    }

    // Heal, and wait for P to come back as R's replica.
    let heal_micros = unix_micros();
    let healed_at = Instant::now();
    lab.heal(p_host).unwrap();
    wait_until(SETTLE, || is_linked_replica_of(&p_addr, &r_id)).unwrap_or_else(|e| {
        panic!(
            "{p_addr} did not rejoin as a replica of {r_addr}: {e}\n{}",
            lab_report(&lab, &addrs)
        )
    });
    println!(
        "FIGURE partition: after healing, the old primary replicates the new one within {}",
        secs(healed_at.elapsed())
    );
    std::thread::sleep(Duration::from_millis(500));
    fs::write(&stop, b"").unwrap();
    if writer.wait_exit(Duration::from_secs(30)).is_none() {
        panic!("the isolated writer did not stop:\n{}", writer.log());
    }
    let writes = read_writes();
    let ranges = wait_until(SETTLE, || lab_converged(&addrs)).unwrap_or_else(|e| {
        panic!(
            "no convergence after healing: {e}\n{}",
            lab_report(&lab, &addrs)
        )
    });
    let check = wait_until(SETTLE, || {
        let output = lab_check(&lab, &addrs[0]);
        if check_ok(&output) {
            Ok(output)
        } else {
            Err(output.to_string())
        }
    })
    .unwrap_or_else(|e| {
        panic!(
            "cluster check after healing: {e}\n{}",
            lab_report(&lab, &addrs)
        )
    });
    drop(check);
    assert_eq!(
        SlotRange::primary_of(&ranges, slot),
        Some(r_addr.as_str()),
        "P's slots after healing"
    );

    // The window: what P acknowledged and what of it survived.
    let acked: Vec<&IsolatedWrite> = writes.iter().filter(|w| w.acked()).collect();
    let keys: Vec<String> = acked
        .iter()
        .map(|w| format!("{{{tag}}}:iso:{}", w.n))
        .collect();
    let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let values = values_on(&r_addr, &key_refs).unwrap();
    let lost: Vec<&IsolatedWrite> = acked
        .iter()
        .zip(&values)
        .filter(|(w, v)| v.as_deref() != Some(w.n.to_string().as_str()))
        .map(|(w, _)| *w)
        .collect();
    let isolated_acked = acked.iter().filter(|w| w.invoked >= cut_micros).count();
    let isolated_lost = lost.iter().filter(|w| w.invoked >= cut_micros).count();
    let after_heal: Vec<&&IsolatedWrite> =
        acked.iter().filter(|w| w.invoked >= heal_micros).collect();
    let refused_after_heal = writes
        .iter()
        .filter(|w| w.invoked >= heal_micros && !w.acked())
        .map(|w| w.result.split(' ').take(2).collect::<Vec<_>>().join(" "))
        .fold(BTreeMap::<String, usize>::new(), |mut m, r| {
            *m.entry(r).or_default() += 1;
            m
        });
    println!(
        "FIGURE partition: acknowledged on the isolated side: {isolated_acked}, lost after \
         healing: {isolated_lost}"
    );
    println!(
        "isolated writer: {} writes, {} acknowledged ({} lost in all, {} of them before the \
         cut); after healing {} acknowledged, refusals {refused_after_heal:?}",
        writes.len(),
        acked.len(),
        lost.len(),
        lost.len() - isolated_lost,
        after_heal.len()
    );
    // Once P refused, it acknowledged nothing until the partition healed.
    let late: Vec<&&IsolatedWrite> = acked
        .iter()
        .filter(|w| w.invoked > refused.completed && w.invoked < heal_micros)
        .collect();
    assert!(
        late.is_empty(),
        "the isolated primary acknowledged writes after answering CLUSTERDOWN: {late:?}"
    );
    let lost_after_heal: Vec<&&IsolatedWrite> =
        lost.iter().filter(|w| w.invoked >= heal_micros).collect();
    assert!(
        lost_after_heal.is_empty(),
        "writes acknowledged by the old primary after the partition healed were lost: {:?}",
        lost_after_heal
    );
    // The majority's writes are all there.
    let maj_keys: Vec<&str> = majority_writes.iter().map(|(k, _)| k.as_str()).collect();
    let maj_values = values_on(&r_addr, &maj_keys).unwrap();
    for ((key, value), got) in majority_writes.iter().zip(maj_values) {
        assert_eq!(
            got.as_deref(),
            Some(value.as_str()),
            "{key} written by the majority"
        );
    }

    // Each replica holds exactly its primary's data.
    let shards: Vec<(String, String)> = {
        let view = nodes_of(&addrs[0]).unwrap();
        view.iter()
            .filter(|n| n.is_primary() && !n.slots.is_empty())
            .map(|p| {
                let replica = view
                    .iter()
                    .find(|n| n.primary_id.as_deref() == Some(p.id.as_str()))
                    .unwrap_or_else(|| panic!("{} has no replica", p.addr));
                (p.addr.clone(), replica.addr.clone())
            })
            .collect()
    };
    for (primary, replica) in &shards {
        let compared = wait_until(SETTLE, || {
            let a = node_contents(primary)?;
            let b = node_contents(replica)?;
            if a == b {
                return Ok(a.len());
            }
            let only_primary: Vec<&String> =
                a.keys().filter(|k| !b.contains_key(*k)).take(10).collect();
            let only_replica: Vec<&String> =
                b.keys().filter(|k| !a.contains_key(*k)).take(10).collect();
            let differ: Vec<&String> = a
                .iter()
                .filter(|(k, v)| b.get(*k).is_some_and(|w| w != *v))
                .map(|(k, _)| k)
                .take(10)
                .collect();
            Err(format!(
                "{primary} has {} keys, {replica} {}; only on the primary {only_primary:?}, \
                 only on the replica {only_replica:?}, different {differ:?}",
                a.len(),
                b.len()
            ))
        })
        .unwrap_or_else(|e| panic!("replica data differs from its primary's: {e}"));
        println!("shard {primary} -> {replica}: {compared} keys, identical");
    }
    drop(writer);
    drop(nodes);
    drop(lab);
}

// ---------------------------------------------------------------------------------------
// 4. Coordinated manual failovers under load
// ---------------------------------------------------------------------------------------

#[test]
fn manual_failover_under_load_loses_nothing() {
    const ROUNDS: usize = 10;
    let _serial = serial();
    let mut cluster = start_cluster();
    let ranges = cluster.slots();
    let mut primary = ranges[0].primary.clone();
    let shard = ranges_of(&ranges, &primary);
    let mut replica = cluster.replicas_of(&primary)[0].clone();
    let slot = shard[0].0;
    let seeds = cluster.seeds();
    let tags = tags_where("mf", 4, |s| in_ranges(&shard, s));
    let mut switch_times = Vec::new();
    // A primary votes about a given shard at most once per 2 × node timeout (Redis's and
    // Valkey's rule), so failovers of one shard must be spaced further apart than that.
    let spacing = Duration::from_millis(2 * NODE_TIMEOUT_MS + 500);
    let mut last_failover: Option<Instant> = None;
    for round in 1..=ROUNDS {
        if let Some(rest) = last_failover.and_then(|t| spacing.checked_sub(t.elapsed())) {
            std::thread::sleep(rest);
        }
        let key_fns: Vec<Box<dyn Fn(u64) -> String + Send>> = (0..2)
            .map(|w| {
                let tags = tags.clone();
                Box::new(move |n: u64| {
                    format!("{{{}}}:r{round}:w{w}:{n}", tags[n as usize % tags.len()])
                }) as Box<dyn Fn(u64) -> String + Send>
            })
            .collect();
        let list_keys: Vec<String> = tags
            .iter()
            .map(|t| format!("{{{t}}}:list:r{round}"))
            .collect();
        let no_wait: NeedsWait = Arc::new(|_| false);
        let load_started = Instant::now();
        let load = Load::start(seeds.clone(), key_fns, list_keys, 2, no_wait);
        std::thread::sleep(Duration::from_millis(300));

        let started = Instant::now();
        last_failover = Some(started);
        match query_node_string(&replica, &["CLUSTER", "FAILOVER"]) {
            Ok(r) if r == "OK" => {}
            other => panic!("round {round}: CLUSTER FAILOVER on {replica}: {other:?}"),
        }
        let replica_id = cluster.id_of(&replica);
        wait_for(
            &mut cluster,
            "the replica taking over",
            FAILOVER_WAIT,
            || is_primary_of(&replica, slot),
        );
        let switch = started.elapsed();
        wait_for(
            &mut cluster,
            "the old primary following the new one",
            FAILOVER_WAIT,
            || {
                let me = own_view(&primary)?;
                if me.flags.iter().any(|f| f == "slave")
                    && me.primary_id.as_deref() == Some(replica_id.as_str())
                {
                    Ok(())
                } else {
                    Err(format!("{primary} says {me:?}"))
                }
            },
        );
        std::thread::sleep(Duration::from_millis(300));
        let (sets, history) = load.finish(None);
        let load_time = load_started.elapsed();

        // Every acknowledged write is on the new primary itself.
        let keys: Vec<&str> = sets.acked.iter().map(|(k, _)| k.as_str()).collect();
        let values = values_on(&replica, &keys).unwrap_or_else(|e| panic!("round {round}: {e}"));
        let missing: Vec<String> = sets
            .acked
            .iter()
            .zip(&values)
            .filter(|((_, v), got)| got.as_deref() != Some(v.as_str()))
            .map(|((k, v), got)| format!("{k}: wrote {v:?}, found {got:?}"))
            .collect();
        println!(
            "FIGURE manual failover round {round}: {replica} took over in {}; {} writes \
             acknowledged in {}, {} missing; failures {:?}",
            secs(switch),
            sets.acked.len(),
            secs(load_time),
            missing.len(),
            sets.errors
        );
        assert!(
            missing.is_empty(),
            "round {round}: {} acknowledged writes are not on the new primary {replica}, e.g. \
             {:?}\n{}",
            missing.len(),
            &missing[..missing.len().min(20)],
            cluster.check_report()
        );
        assert!(
            !sets.acked.is_empty(),
            "round {round}: no write was acknowledged"
        );
        assert_history(&format!("manual failover round {round}"), &history);
        switch_times.push(switch);

        if let Err(e) = cluster.wait_converged(SETTLE) {
            panic!(
                "round {round}: no convergence: {e}\n{}",
                cluster.check_report()
            );
        }
        std::mem::swap(&mut primary, &mut replica);
    }
    let listed: Vec<String> = switch_times.iter().map(|d| secs(*d)).collect();
    println!("FIGURE manual failover switch times: {}", listed.join(", "));
    if let Err(e) = cluster.wait_check_ok(SETTLE) {
        panic!("after {ROUNDS} failovers: {e}\n{}", cluster.check_report());
    }
}
