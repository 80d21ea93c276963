//! Helpers for the replication tests (`tests/replication.rs`): primaries and replicas of any
//! kind, INFO parsing, "in sync" waits, a mixed dataset, a key-by-key dataset comparison, a
//! background write load, and two stand-ins for a misbehaving network or primary.
//!
//! Every scenario runs over an interop matrix of (primary kind, replica kind). The env var
//! `LAGWISE_REPL_MATRIX=redis` maps every kind to `redis-server`, so that the scenarios
//! themselves can be checked against the reference alone.
//!
//! Layout:
//! - [`Kinds`]: the matrix and its env override.
//! - starting and wiring servers: [`start_node`], [`restart_node`], [`replicaof`],
//!   [`promote`], [`Pair`]; [`Frozen`] (SIGSTOP until dropped).
//! - observing: [`Info`] (INFO replication + stats), [`wait_in_sync`], [`poll`].
//! - data: [`load_mixed_dataset`], [`load_bulk`], [`Snapshot`] and [`assert_same_dataset`].
//! - traffic: [`WriteLoad`] (mixed writes on a thread), [`run_random_workload`] (the
//!   differential test's command generator, sent to a primary).
//! - the link: [`LinkRelay`] (a TCP relay that can stall a full sync) and [`FakePrimary`]
//!   (speaks the handshake, then sends a [`BadPayload`] instead of a good RDB).
//!
//! Everything here is blocking (threads, std sockets, the redis crate's sync connection):
//! the scenarios freeze and kill processes and run fake peers on threads, which reads more
//! plainly without an async runtime.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::Value;

use crate::differential::{self, Gen, Rng, Step};
use crate::fixture::{escape, ServerKind, ServerProcess};

/// How long a replica may take to get in sync (full sync included) before a test fails.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(30);
/// How long any other awaited event (a reconnection, a counter rising) may take.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Two expiry times (unix ms) closer than this are the same TTL: they were read at different
/// moments from two servers.
pub const TTL_TOLERANCE_MS: i64 = 2000;

/// Directives every server of these tests gets: diskless sync without Redis's default 5 s
/// delay before it starts.
pub const REPLICATION_ARGS: &[&str] = &[
    "--repl-diskless-sync",
    "yes",
    "--repl-diskless-sync-delay",
    "0",
];

// ------------------------------------------------------------------------------------------
// The matrix

/// The kinds of the primary and the replica(s) of one scenario run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kinds {
    pub primary: ServerKind,
    pub replica: ServerKind,
}

impl Kinds {
    /// The pair a test entry point asks for, after [`matrix_kind`].
    pub fn of(primary: ServerKind, replica: ServerKind) -> Kinds {
        Kinds {
            primary: matrix_kind(primary),
            replica: matrix_kind(replica),
        }
    }
}

impl fmt::Display for Kinds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}", self.primary, self.replica)
    }
}

/// `kind`, unless env `LAGWISE_REPL_MATRIX=redis` maps every kind to redis-server (to check
/// the scenarios against the reference alone). Unset, empty or `interop`: the real matrix.
pub fn matrix_kind(kind: ServerKind) -> ServerKind {
    match std::env::var("LAGWISE_REPL_MATRIX") {
        Err(_) => kind,
        Ok(v) if v.is_empty() || v.eq_ignore_ascii_case("interop") => kind,
        Ok(v) if v.eq_ignore_ascii_case("redis") => ServerKind::Redis,
        Ok(other) => panic!("LAGWISE_REPL_MATRIX must be \"redis\" or \"interop\", not {other:?}"),
    }
}

// ------------------------------------------------------------------------------------------
// Connections and commands

/// A blocking connection with a 5 s connect timeout and 10 s read and write timeouts.
pub fn connect(server: &ServerProcess) -> redis::Connection {
    try_connect(&server.addr())
        .unwrap_or_else(|e| panic!("connect to {} at {}: {e}", server.kind(), server.addr()))
}

/// Like [`connect`], for an address, reporting failure.
pub fn try_connect(addr: &str) -> redis::RedisResult<redis::Connection> {
    let client = redis::Client::open(format!("redis://{addr}/"))?;
    let con = client.get_connection_with_timeout(Duration::from_secs(5))?;
    con.set_read_timeout(Some(Duration::from_secs(10)))?;
    con.set_write_timeout(Some(Duration::from_secs(10)))?;
    Ok(con)
}

/// Runs a command that must succeed and converts its reply; panics with the error otherwise.
pub fn call<T: redis::FromRedisValue>(con: &mut redis::Connection, args: &[&str]) -> T {
    call_cmd(con, &crate::cmd(args))
}

/// Like [`call`], for a prepared (e.g. binary) command.
pub fn call_cmd<T: redis::FromRedisValue>(con: &mut redis::Connection, c: &redis::Cmd) -> T {
    c.query(con)
        .unwrap_or_else(|e| panic!("{} failed: {}", describe(c), crate::err_text(&e)))
}

/// One command on a new connection to `server`.
pub fn exec<T: redis::FromRedisValue>(server: &ServerProcess, args: &[&str]) -> T {
    call(&mut connect(server), args)
}

fn describe(c: &redis::Cmd) -> String {
    let words: Vec<String> = c
        .args_iter()
        .map(|arg| match arg {
            redis::Arg::Simple(bytes) => short(bytes),
            _ => "<cursor>".to_string(),
        })
        .collect();
    words.join(" ")
}

/// Bytes for a message: escaped, and cut after 60 characters.
pub fn short(bytes: &[u8]) -> String {
    let text = escape(bytes);
    if text.chars().count() > 60 {
        let head: String = text.chars().take(60).collect();
        format!("\"{head}...\" ({} bytes)", bytes.len())
    } else {
        format!("\"{text}\"")
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// A seed from the clock (for load generators; printed where a run can be replayed).
pub fn clock_seed() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    (nanos ^ ((std::process::id() as u64) << 32)) % 1_000_000_000_000
}

// ------------------------------------------------------------------------------------------
// Starting and wiring servers

/// Starts a server of `kind` with [`REPLICATION_ARGS`] then `extra`.
pub fn start_node(kind: ServerKind, extra: &[&str]) -> ServerProcess {
    ServerProcess::start(kind, &[REPLICATION_ARGS, extra].concat())
}

/// Restarts `server` on its port and in its directory, with [`REPLICATION_ARGS`] then `extra`.
pub fn restart_node(server: &mut ServerProcess, extra: &[&str]) {
    server.restart(&[REPLICATION_ARGS, extra].concat())
}

/// `REPLICAOF 127.0.0.1 <primary's port>` on `replica`.
pub fn replicaof(replica: &ServerProcess, primary: &ServerProcess) {
    replicaof_port(replica, primary.port());
}

/// `REPLICAOF 127.0.0.1 <port>` on `replica` (a relay's or a fake primary's port).
pub fn replicaof_port(replica: &ServerProcess, port: u16) {
    let reply: String = exec(replica, &["REPLICAOF", "127.0.0.1", &port.to_string()]);
    assert!(
        reply.starts_with("OK"),
        "REPLICAOF on {}: {reply}",
        replica.kind()
    );
}

/// `REPLICAOF NO ONE`: the replica becomes a primary.
pub fn promote(replica: &ServerProcess) {
    let reply: String = exec(replica, &["REPLICAOF", "NO", "ONE"]);
    assert_eq!(reply, "OK", "REPLICAOF NO ONE on {}", replica.kind());
}

/// `CLIENT KILL TYPE replica` on `primary`; returns how many connections it closed.
pub fn kill_replica_links(primary: &ServerProcess) -> i64 {
    exec(primary, &["CLIENT", "KILL", "TYPE", "replica"])
}

/// A primary and one replica. Fields drop in order: the primary stops first.
pub struct Pair {
    pub primary: ServerProcess,
    pub replica: ServerProcess,
}

impl Pair {
    /// Starts a primary, loads the mixed dataset into it, starts a replica (with a stale key
    /// the full sync must remove), attaches it and waits until it is in sync. `extra`
    /// directives go to both servers.
    pub fn start(kinds: Kinds, extra: &[&str]) -> Pair {
        let primary = start_node(kinds.primary, extra);
        load_mixed_dataset(&primary);
        let replica = start_node(kinds.replica, extra);
        let _: () = exec(&replica, &["SET", "stale:replica-only", "must go"]);
        replicaof(&replica, &primary);
        wait_in_sync(&primary, &replica);
        Pair { primary, replica }
    }
}

/// A SIGSTOPped server, resumed (SIGCONT) when this is dropped, so that a failing test never
/// leaves a frozen process behind.
pub struct Frozen<'a>(&'a mut ServerProcess);

impl<'a> Frozen<'a> {
    pub fn new(server: &'a mut ServerProcess) -> Frozen<'a> {
        server.sigstop();
        Frozen(server)
    }
}

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        self.0.sigcont();
    }
}

// ------------------------------------------------------------------------------------------
// INFO

/// `INFO replication` and `INFO stats` of one server, as `field:value` pairs.
#[derive(Debug, Clone)]
pub struct Info {
    /// Both replies as sent (for failure messages).
    pub raw: String,
    fields: BTreeMap<String, String>,
}

impl Info {
    pub fn parse(raw: &str) -> Info {
        let fields = raw
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| line.split_once(':'))
            .map(|(k, v)| (k.to_string(), v.trim_end().to_string()))
            .collect();
        Info {
            raw: raw.to_string(),
            fields,
        }
    }

    pub fn get(&self, field: &str) -> Option<&str> {
        self.fields.get(field).map(String::as_str)
    }

    /// A field that must be there.
    pub fn text(&self, field: &str) -> &str {
        self.get(field)
            .unwrap_or_else(|| panic!("no {field} in INFO:\n{}", self.raw))
    }

    /// A numeric field that must be there (`sync_full`, `master_repl_offset`, ...).
    pub fn int(&self, field: &str) -> i64 {
        let text = self.text(field);
        text.parse()
            .unwrap_or_else(|_| panic!("{field}:{text} is not a number; INFO:\n{}", self.raw))
    }

    /// The replication offset a replica has processed: `slave_repl_offset` (a replica's
    /// `master_repl_offset` says the same).
    pub fn replica_offset(&self) -> Option<i64> {
        self.get("slave_repl_offset")
            .or_else(|| self.get("master_repl_offset"))
            .and_then(|v| v.parse().ok())
    }

    pub fn link_up(&self) -> bool {
        self.get("master_link_status") == Some("up")
    }
}

/// [`Info`] of `server`; panics if it does not answer.
pub fn info(server: &ServerProcess) -> Info {
    try_info(&server.addr())
        .unwrap_or_else(|e| panic!("INFO from {} at {}: {e}", server.kind(), server.addr()))
}

/// [`Info`] of the server at `addr`, on a new connection.
pub fn try_info(addr: &str) -> Result<Info, String> {
    let mut con = try_connect(addr).map_err(|e| e.to_string())?;
    let mut raw = String::new();
    for section in ["replication", "stats"] {
        let text: String = crate::cmd(&["INFO", section])
            .query(&mut con)
            .map_err(|e| format!("INFO {section}: {e}"))?;
        raw.push_str(&text);
    }
    Ok(Info::parse(&raw))
}

/// `INFO replication` of each server, or why it could not be read: for failure messages.
pub fn replication_report(servers: &[(&str, &ServerProcess)]) -> String {
    let mut out = String::new();
    for (role, server) in servers {
        let text = match try_info(&server.addr()) {
            Ok(info) => info.raw,
            Err(e) => format!("<no INFO: {e}>"),
        };
        out.push_str(&format!(
            "--- {role}: {} at {} ---\n{}\n",
            server.kind(),
            server.addr(),
            text.trim_end()
        ));
    }
    out
}

// ------------------------------------------------------------------------------------------
// Waiting

/// Polls `check` every 20 ms until it returns true or `timeout` passes; returns whether it
/// became true.
pub fn poll(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (up to [`SYNC_TIMEOUT`]) until `replica` is in sync with `primary`.
pub fn wait_in_sync(primary: &ServerProcess, replica: &ServerProcess) {
    wait_in_sync_within(primary, replica, SYNC_TIMEOUT)
}

/// Waits until the replica reports `master_link_status:up` and has processed exactly the
/// primary's `master_repl_offset` (read before and after the replica's, so that it held at
/// one instant). Panics after `timeout` with the last reason and both INFO replies.
pub fn wait_in_sync_within(primary: &ServerProcess, replica: &ServerProcess, timeout: Duration) {
    let mut why = String::from("not checked yet");
    let in_sync = poll(timeout, || match sync_state(primary, replica) {
        Ok(()) => true,
        Err(reason) => {
            why = reason;
            false
        }
    });
    if !in_sync {
        panic!(
            "replica {} did not get in sync with primary {} within {timeout:?}: {why}\n{}",
            replica.addr(),
            primary.addr(),
            replication_report(&[("primary", primary), ("replica", replica)])
        );
    }
}

fn sync_state(primary: &ServerProcess, replica: &ServerProcess) -> Result<(), String> {
    let before = try_info(&primary.addr())?;
    let r = try_info(&replica.addr())?;
    let after = try_info(&primary.addr())?;
    if r.get("role") != Some("slave") {
        return Err(format!("replica's role is {:?}", r.get("role")));
    }
    if !r.link_up() {
        return Err(format!(
            "replica's master_link_status is {:?}",
            r.get("master_link_status")
        ));
    }
    let p1 = before.int("master_repl_offset");
    let p2 = after.int("master_repl_offset");
    match r.replica_offset() {
        Some(offset) if offset == p1 && offset == p2 => Ok(()),
        offset => Err(format!(
            "replica offset {offset:?}, primary offset {p1} then {p2}"
        )),
    }
}

/// Waits until `what` holds for the server's INFO; panics after [`EVENT_TIMEOUT`] with the
/// last INFO reply.
pub fn wait_info(server: &ServerProcess, what: &str, mut check: impl FnMut(&Info) -> bool) -> Info {
    let mut last: Option<Info> = None;
    let ok = poll(EVENT_TIMEOUT, || match try_info(&server.addr()) {
        Ok(info) => {
            let ok = check(&info);
            last = Some(info);
            ok
        }
        Err(_) => false,
    });
    match last {
        Some(info) if ok => info,
        _ => panic!(
            "{} at {}: not {what} within {EVENT_TIMEOUT:?}; last INFO:\n{}",
            server.kind(),
            server.addr(),
            last.map_or_else(|| "<none>".to_string(), |i| i.raw)
        ),
    }
}

// ------------------------------------------------------------------------------------------
// The mixed dataset

/// Absolute expiry times used by the dataset (unix ms, in 2096): far from any relative TTL.
const FAR_FUTURE_MS: i64 = 4_000_000_000_000;

/// Writes a dataset of every type and encoding edge into `server` and returns its key count:
/// strings (integer-encoded, short, long, binary, empty), lists, sets (intset-sized, strings,
/// more than 128 members), hashes and sorted sets (small and large, with ±inf and negative
/// scores), keys with TTLs (EXPIRE, PEXPIREAT), binary key names and hash-tagged keys.
pub fn load_mixed_dataset(server: &ServerProcess) -> usize {
    let mut con = connect(server);
    let mut pipe = redis::pipe();
    let mut keys = 0;
    let mut add = |c: redis::Cmd, new_key: bool| {
        pipe.add_command(c).ignore();
        if new_key {
            keys += 1;
        }
    };

    // Strings.
    let ints = [
        "0",
        "-1",
        "42",
        "-200",
        "9223372036854775807",
        "-9223372036854775808",
        "123456789",
        "10000",
    ];
    for (i, v) in ints.iter().enumerate() {
        add(
            redis::cmd("SET")
                .arg(format!("str:int:{i}"))
                .arg(*v)
                .clone(),
            true,
        );
    }
    for i in 0..10 {
        add(
            redis::cmd("SET")
                .arg(format!("str:short:{i}"))
                .arg(format!("value-{i}"))
                .clone(),
            true,
        );
        add(
            redis::cmd("SET")
                .arg(format!("str:long:{i}"))
                .arg(text(65 + i * 50, i))
                .clone(),
            true,
        );
        add(
            redis::cmd("SET")
                .arg(format!("str:bin:{i}"))
                .arg(binary(i + 1))
                .clone(),
            true,
        );
    }
    add(redis::cmd("SET").arg("str:empty").arg("").clone(), true);
    add(
        redis::cmd("SET").arg("str:float").arg("3.14159").clone(),
        true,
    );
    add(
        redis::cmd("SET")
            .arg(b"bin:\x00key\r\n\xff".as_slice())
            .arg("binary key name")
            .clone(),
        true,
    );

    // Lists.
    for i in 0..5 {
        add(
            redis::cmd("RPUSH")
                .arg(format!("list:small:{i}"))
                .arg(&["a", "1", "-7", "hello world", ""])
                .arg(binary(3))
                .clone(),
            true,
        );
    }
    let mut large = redis::cmd("RPUSH");
    large.arg("list:large");
    for i in 0..500 {
        match i % 5 {
            0 => large.arg(i.to_string()),
            1 => large.arg(text(100, i)),
            2 => large.arg(binary(i % 7 + 1)),
            _ => large.arg(format!("item-{i}")),
        };
    }
    add(large, true);

    // Sets.
    let mut intset = redis::cmd("SADD");
    intset.arg("set:intset");
    for i in 0..100i64 {
        intset.arg((i * 1013 - 50_000).to_string());
    }
    intset.arg(&["9223372036854775807", "-9223372036854775808"]);
    add(intset, true);
    let mut strings = redis::cmd("SADD");
    strings.arg("set:strings");
    for i in 0..20 {
        strings.arg(format!("member-{i}"));
    }
    strings.arg(binary(5));
    add(strings, true);
    let mut big = redis::cmd("SADD");
    big.arg("set:large");
    for i in 0..300 {
        big.arg(if i % 3 == 0 {
            i.to_string()
        } else {
            format!("m-{i}")
        });
    }
    add(big, true);

    // Hashes.
    for i in 0..5 {
        add(
            redis::cmd("HSET")
                .arg(format!("hash:small:{i}"))
                .arg(&["name", "lagwise", "count", "12", "neg", "-3", "empty", ""])
                .clone(),
            true,
        );
    }
    let mut hash = redis::cmd("HSET");
    hash.arg("hash:large");
    for i in 0..300 {
        hash.arg(format!("field-{i}")).arg(text(i % 90 + 1, i));
    }
    add(hash, true);
    add(
        redis::cmd("HSET")
            .arg("hash:binary")
            .arg(binary(4))
            .arg(binary(9))
            .arg("plain")
            .arg(binary(2))
            .clone(),
        true,
    );

    // Sorted sets.
    add(
        redis::cmd("ZADD")
            .arg("zset:small")
            .arg(&[
                "-inf",
                "minus-inf",
                "-1.5",
                "neg",
                "0",
                "zero",
                "3.25",
                "frac",
                "1e100",
                "huge",
                "+inf",
                "plus-inf",
                "-0.0001",
                "tiny",
            ])
            .clone(),
        true,
    );
    let mut zset = redis::cmd("ZADD");
    zset.arg("zset:large");
    for i in 0..300 {
        zset.arg(format!("{}", i as f64 * 0.1 - 15.0))
            .arg(format!("member-{i}"));
    }
    add(zset, true);

    // Keys with TTLs.
    for i in 0..10 {
        add(
            redis::cmd("SET")
                .arg(format!("ttl:ex:{i}"))
                .arg(format!("v{i}"))
                .clone(),
            true,
        );
        add(
            redis::cmd("EXPIRE")
                .arg(format!("ttl:ex:{i}"))
                .arg(100_000 + i * 1000)
                .clone(),
            false,
        );
        add(
            redis::cmd("SET")
                .arg(format!("ttl:pxat:{i}"))
                .arg(format!("v{i}"))
                .clone(),
            true,
        );
        add(
            redis::cmd("PEXPIREAT")
                .arg(format!("ttl:pxat:{i}"))
                .arg(FAR_FUTURE_MS + i as i64 * 1000 + 123)
                .clone(),
            false,
        );
    }
    add(
        redis::cmd("RPUSH").arg("ttl:list").arg(&["x", "y"]).clone(),
        true,
    );
    add(
        redis::cmd("EXPIRE").arg("ttl:list").arg(500_000).clone(),
        false,
    );
    add(
        redis::cmd("HSET").arg("ttl:hash").arg(&["f", "v"]).clone(),
        true,
    );
    add(
        redis::cmd("PEXPIREAT")
            .arg("ttl:hash")
            .arg(FAR_FUTURE_MS + 7)
            .clone(),
        false,
    );
    add(
        redis::cmd("SET")
            .arg("ttl:set-ex")
            .arg("v")
            .arg("EX")
            .arg(300_000)
            .clone(),
        true,
    );

    // Hash tags.
    add(
        redis::cmd("SET").arg("{user:1000}:name").arg("Ada").clone(),
        true,
    );
    add(
        redis::cmd("SADD")
            .arg("{user:1000}:followers")
            .arg(&["1", "2", "3"])
            .clone(),
        true,
    );
    add(
        redis::cmd("RPUSH")
            .arg("{user:1000}:timeline")
            .arg(&["post-1", "post-2"])
            .clone(),
        true,
    );
    add(redis::cmd("SET").arg("{}:empty-tag").arg("e").clone(), true);
    add(
        redis::cmd("SET")
            .arg("a{b}c{d}")
            .arg("first tag wins")
            .clone(),
        true,
    );

    let _: () = pipe
        .query(&mut con)
        .unwrap_or_else(|e| panic!("loading the mixed dataset into {}: {e}", server.kind()));
    keys
}

/// `n` keys `bulk:<i>` with `value_len`-byte values, written with pipelined MSETs.
pub fn load_bulk(server: &ServerProcess, n: usize, value_len: usize) {
    let mut con = connect(server);
    let value = text(value_len, 0);
    for chunk_start in (0..n).step_by(1000) {
        let mut mset = redis::cmd("MSET");
        for i in chunk_start..(chunk_start + 1000).min(n) {
            mset.arg(format!("bulk:{i}")).arg(&value);
        }
        let _: () = call_cmd(&mut con, &mset);
    }
}

/// `n` printable bytes, varied by `seed`.
fn text(n: usize, seed: usize) -> Vec<u8> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789-_:";
    (0..n)
        .map(|i| ALPHABET[(i * 7 + seed * 13) % ALPHABET.len()])
        .collect()
}

/// `n` bytes with NUL, CR, LF and high bytes in them.
fn binary(n: usize) -> Vec<u8> {
    const BYTES: &[u8] = b"\x00\r\n\xff\x7fz\"\\";
    (0..n).map(|i| BYTES[i % BYTES.len()]).collect()
}

// ------------------------------------------------------------------------------------------
// Dataset comparison

/// A key's value, read in a type-aware way.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyValue {
    String(Vec<u8>),
    List(Vec<Vec<u8>>),
    /// Members, sorted.
    Set(Vec<Vec<u8>>),
    Hash(BTreeMap<Vec<u8>, Vec<u8>>),
    /// Members in rank order, with their scores.
    Zset(Vec<(Vec<u8>, f64)>),
    /// A type these tests do not read (only the type name is compared).
    Other(String),
    /// The key went away between SCAN and the read.
    Gone,
}

impl KeyValue {
    fn type_name(&self) -> &str {
        match self {
            KeyValue::String(_) => "string",
            KeyValue::List(_) => "list",
            KeyValue::Set(_) => "set",
            KeyValue::Hash(_) => "hash",
            KeyValue::Zset(_) => "zset",
            KeyValue::Other(name) => name,
            KeyValue::Gone => "none",
        }
    }
}

/// One key as read from one server.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyState {
    pub value: KeyValue,
    /// When the key expires (unix ms, from PTTL and this machine's clock), if it does.
    pub expires_at: Option<i64>,
}

/// Every key of one server (database 0), read with SCAN.
pub struct Snapshot {
    /// Which server, for messages (`redis-server at 127.0.0.1:1234`).
    pub source: String,
    pub keys: BTreeMap<Vec<u8>, KeyState>,
}

/// Keys read per pipelined round trip.
const SNAPSHOT_BATCH: usize = 200;

impl Snapshot {
    /// Reads every key of `server`: SCAN, then per key TYPE, the value and PTTL.
    pub fn take(server: &ServerProcess) -> Snapshot {
        let source = format!("{} at {}", server.kind(), server.addr());
        let mut con = connect(server);
        let mut names: BTreeSet<Vec<u8>> = BTreeSet::new();
        let mut cursor = "0".to_string();
        loop {
            let (next, batch): (String, Vec<Vec<u8>>) =
                call(&mut con, &["SCAN", &cursor, "COUNT", "1000"]);
            names.extend(batch);
            if next == "0" {
                break;
            }
            cursor = next;
        }
        let names: Vec<Vec<u8>> = names.into_iter().collect();
        let mut keys = BTreeMap::new();
        for chunk in names.chunks(SNAPSHOT_BATCH) {
            let mut types = redis::pipe();
            for key in chunk {
                types.cmd("TYPE").arg(key);
            }
            let types: Vec<String> = types
                .query(&mut con)
                .unwrap_or_else(|e| panic!("TYPE on {source}: {e}"));
            let mut reads = redis::pipe();
            for (key, ty) in chunk.iter().zip(&types) {
                match ty.as_str() {
                    "string" => reads.cmd("GET").arg(key),
                    "list" => reads.cmd("LRANGE").arg(key).arg(0).arg(-1),
                    "set" => reads.cmd("SMEMBERS").arg(key),
                    "hash" => reads.cmd("HGETALL").arg(key),
                    "zset" => reads
                        .cmd("ZRANGE")
                        .arg(key)
                        .arg(0)
                        .arg(-1)
                        .arg("WITHSCORES"),
                    _ => reads.cmd("EXISTS").arg(key),
                };
                reads.cmd("PTTL").arg(key);
            }
            let replies: Vec<Value> = reads
                .query(&mut con)
                .unwrap_or_else(|e| panic!("reading values on {source}: {e}"));
            let read_at = now_ms();
            for ((key, ty), pair) in chunk.iter().zip(&types).zip(replies.chunks(2)) {
                let value = parse_value(ty, &pair[0]);
                let expires_at = match &pair[1] {
                    Value::Int(ms) if *ms >= 0 => Some(read_at + ms),
                    _ => None,
                };
                keys.insert(key.clone(), KeyState { value, expires_at });
            }
        }
        Snapshot { source, keys }
    }

    /// Differences from `other`, one line each, at most `limit` lines (plus a count of the
    /// rest). Empty when the datasets are the same.
    pub fn diff(&self, other: &Snapshot, limit: usize) -> Vec<String> {
        let mut out = Vec::new();
        let only = |a: &Snapshot, b: &Snapshot| -> Vec<String> {
            a.keys
                .keys()
                .filter(|k| !b.keys.contains_key(*k))
                .map(|k| short(k))
                .collect()
        };
        for (a, b) in [(self, other), (other, self)] {
            let missing = only(a, b);
            if !missing.is_empty() {
                let shown: Vec<String> = missing.iter().take(10).cloned().collect();
                out.push(format!(
                    "only on {} ({} keys): {}{}",
                    a.source,
                    missing.len(),
                    shown.join(", "),
                    if missing.len() > 10 { ", ..." } else { "" }
                ));
            }
        }
        for (key, a) in &self.keys {
            let Some(b) = other.keys.get(key) else {
                continue;
            };
            if let Some(why) = value_difference(&a.value, &b.value) {
                out.push(format!("key {}: {why}", short(key)));
            }
            let ttl_ok = match (a.expires_at, b.expires_at) {
                (None, None) => true,
                (Some(x), Some(y)) => (x - y).abs() <= TTL_TOLERANCE_MS,
                _ => false,
            };
            if !ttl_ok {
                out.push(format!(
                    "key {}: expiry {} vs {}",
                    short(key),
                    describe_expiry(a.expires_at),
                    describe_expiry(b.expires_at)
                ));
            }
        }
        if out.len() > limit {
            let rest = out.len() - limit;
            out.truncate(limit);
            out.push(format!("... and {rest} more differences"));
        }
        out
    }
}

fn describe_expiry(at: Option<i64>) -> String {
    match at {
        None => "none (PTTL -1)".to_string(),
        Some(ms) => format!("at {ms} (in {} ms)", ms - now_ms()),
    }
}

/// What differs between two values, or `None`.
fn value_difference(a: &KeyValue, b: &KeyValue) -> Option<String> {
    if a == b {
        return None;
    }
    if a.type_name() != b.type_name() {
        return Some(format!("type {} vs {}", a.type_name(), b.type_name()));
    }
    Some(match (a, b) {
        (KeyValue::String(x), KeyValue::String(y)) => {
            format!("string {} vs {}", short(x), short(y))
        }
        (KeyValue::List(x), KeyValue::List(y)) => {
            let i = x.iter().zip(y).position(|(p, q)| p != q);
            match i {
                Some(i) => format!(
                    "list element {i}: {} vs {} (lengths {} and {})",
                    short(&x[i]),
                    short(&y[i]),
                    x.len(),
                    y.len()
                ),
                None => format!("list lengths {} vs {}", x.len(), y.len()),
            }
        }
        (KeyValue::Set(x), KeyValue::Set(y)) => {
            let only_x: Vec<String> = x
                .iter()
                .filter(|m| !y.contains(m))
                .take(5)
                .map(|m| short(m))
                .collect();
            let only_y: Vec<String> = y
                .iter()
                .filter(|m| !x.contains(m))
                .take(5)
                .map(|m| short(m))
                .collect();
            format!(
                "set of {} vs {} members; only in the first: [{}]; only in the second: [{}]",
                x.len(),
                y.len(),
                only_x.join(", "),
                only_y.join(", ")
            )
        }
        (KeyValue::Hash(x), KeyValue::Hash(y)) => {
            let fields: BTreeSet<&Vec<u8>> = x.keys().chain(y.keys()).collect();
            let diffs: Vec<String> = fields
                .into_iter()
                .filter(|f| x.get(*f) != y.get(*f))
                .take(5)
                .map(|f| {
                    let show =
                        |v: Option<&Vec<u8>>| v.map_or_else(|| "absent".to_string(), |v| short(v));
                    format!(
                        "field {}: {} vs {}",
                        short(f),
                        show(x.get(f)),
                        show(y.get(f))
                    )
                })
                .collect();
            format!(
                "hash of {} vs {} fields; {}",
                x.len(),
                y.len(),
                diffs.join("; ")
            )
        }
        (KeyValue::Zset(x), KeyValue::Zset(y)) => match x.iter().zip(y).position(|(p, q)| p != q) {
            Some(i) => format!(
                "zset rank {i}: {} {} vs {} {} (sizes {} and {})",
                short(&x[i].0),
                x[i].1,
                short(&y[i].0),
                y[i].1,
                x.len(),
                y.len()
            ),
            None => format!("zset sizes {} vs {}", x.len(), y.len()),
        },
        _ => format!("{a:?} vs {b:?}"),
    })
}

fn parse_value(type_name: &str, reply: &Value) -> KeyValue {
    let items = || -> Vec<Vec<u8>> {
        match reply {
            Value::Array(items) | Value::Set(items) => items.iter().filter_map(bytes).collect(),
            _ => Vec::new(),
        }
    };
    match type_name {
        "none" => KeyValue::Gone,
        "string" => match bytes(reply) {
            Some(b) => KeyValue::String(b),
            None => KeyValue::Gone,
        },
        "list" => KeyValue::List(items()),
        "set" => {
            let mut members = items();
            members.sort();
            KeyValue::Set(members)
        }
        "hash" => {
            let flat = items();
            KeyValue::Hash(
                flat.chunks(2)
                    .map(|p| (p[0].clone(), p.get(1).cloned().unwrap_or_default()))
                    .collect(),
            )
        }
        "zset" => {
            let flat = items();
            KeyValue::Zset(
                flat.chunks(2)
                    .map(|p| {
                        let score = p.get(1).map(|s| String::from_utf8_lossy(s).to_string());
                        let score = score.as_deref().unwrap_or("nan");
                        let parsed = score.parse::<f64>().unwrap_or_else(|_| {
                            panic!("unparsable score {score:?} of member {}", short(&p[0]))
                        });
                        (p[0].clone(), parsed)
                    })
                    .collect(),
            )
        }
        other => KeyValue::Other(other.to_string()),
    }
}

fn bytes(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.as_bytes().to_vec()),
        Value::Okay => Some(b"OK".to_vec()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

/// The differences between the datasets of `a` and `b` (empty: the same keys, types,
/// values and TTLs).
pub fn dataset_differences(a: &ServerProcess, b: &ServerProcess) -> Vec<String> {
    Snapshot::take(a).diff(&Snapshot::take(b), 20)
}

/// Panics, with the first differences and both servers' INFO replication, unless `primary`
/// and `replica` hold the same dataset.
pub fn assert_same_dataset(primary: &ServerProcess, replica: &ServerProcess) {
    let diffs = dataset_differences(primary, replica);
    if !diffs.is_empty() {
        panic!(
            "datasets of primary {} and replica {} differ:\n  {}\n{}",
            primary.addr(),
            replica.addr(),
            diffs.join("\n  "),
            replication_report(&[("primary", primary), ("replica", replica)])
        );
    }
}

/// Key count of `server` (DBSIZE).
pub fn dbsize(server: &ServerProcess) -> i64 {
    exec(server, &["DBSIZE"])
}

// ------------------------------------------------------------------------------------------
// Background write load

/// Commands per pipelined batch of the write load, and the pause between batches: a few
/// thousand writes a second, a steady stream that leaves the (two-core) machine breathing.
const LOAD_BATCH: usize = 8;
const LOAD_PAUSE: Duration = Duration::from_millis(2);

/// A thread that sends mixed writes to a primary until stopped: SET (plain, with EX), GETEX
/// EX, INCR, INCRBYFLOAT, LPUSH/RPOP, SADD/SREM/SPOP, HSET/HDEL, ZADD/ZINCRBY, EXPIRE and DEL
/// on `load:*` keys. Connection errors (a primary being killed or restarted) are ignored: it
/// reconnects and goes on.
pub struct WriteLoad {
    stop: Arc<AtomicBool>,
    ops: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl WriteLoad {
    pub fn start(primary: &ServerProcess) -> WriteLoad {
        let addr = primary.addr();
        let stop = Arc::new(AtomicBool::new(false));
        let ops = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, ops) = (stop.clone(), ops.clone());
            std::thread::spawn(move || write_load(&addr, &stop, &ops, clock_seed()))
        };
        WriteLoad {
            stop,
            ops,
            thread: Some(thread),
        }
    }

    /// Writes acknowledged so far.
    pub fn ops(&self) -> u64 {
        self.ops.load(Ordering::Relaxed)
    }

    /// Blocks until `n` more writes went through (so the load is really running).
    pub fn wait_ops(&self, n: u64) {
        let target = self.ops() + n;
        assert!(
            poll(EVENT_TIMEOUT, || self.ops() >= target),
            "the write load did not reach {target} writes within {EVENT_TIMEOUT:?} (at {})",
            self.ops()
        );
    }

    /// Stops the thread and returns the number of writes acknowledged.
    pub fn stop(mut self) -> u64 {
        self.halt();
        self.ops()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for WriteLoad {
    fn drop(&mut self) {
        self.halt();
    }
}

fn write_load(addr: &str, stop: &AtomicBool, ops: &AtomicU64, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut con: Option<redis::Connection> = None;
    while !stop.load(Ordering::Relaxed) {
        let c = match con.as_mut() {
            Some(c) => c,
            None => match try_connect(addr) {
                Ok(c) => con.insert(c),
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            },
        };
        let mut pipe = redis::pipe();
        for _ in 0..LOAD_BATCH {
            pipe.add_command(random_write(&mut rng)).ignore();
        }
        match pipe.query::<()>(c) {
            Ok(()) => {
                ops.fetch_add(LOAD_BATCH as u64, Ordering::Relaxed);
            }
            Err(_) => {
                // Killed, restarted, or a replica now: start over on a new connection.
                con = None;
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        std::thread::sleep(LOAD_PAUSE);
    }
}

fn random_write(rng: &mut Rng) -> redis::Cmd {
    let n = rng.below(64);
    let key = |ty: &str| format!("load:{ty}:{n}");
    let value = load_value(rng);
    let ttl = (rng.range(1_000, 100_000)).to_string();
    let member = format!("m{}", rng.below(40));
    let mut c;
    match rng.below(17) {
        0 | 1 => {
            c = redis::cmd("SET");
            c.arg(key("str")).arg(value);
        }
        2 => {
            c = redis::cmd("SET");
            c.arg(key("str")).arg(value).arg("EX").arg(&ttl);
        }
        3 => {
            c = redis::cmd("GETEX");
            c.arg(key("str")).arg("EX").arg(&ttl);
        }
        4 => {
            c = redis::cmd("INCR");
            c.arg(key("counter"));
        }
        5 => {
            c = redis::cmd("INCRBYFLOAT");
            c.arg(key("float"))
                .arg(*rng.pick(&["1.5", "-0.25", "10", "0.125"]));
        }
        6 => {
            c = redis::cmd("LPUSH");
            c.arg(key("list")).arg(value).arg(load_value(rng));
        }
        7 => {
            c = redis::cmd("RPOP");
            c.arg(key("list"));
        }
        8 => {
            c = redis::cmd("SADD");
            c.arg(key("set"))
                .arg(&member)
                .arg(rng.below(1000).to_string());
        }
        9 => {
            c = redis::cmd("SREM");
            c.arg(key("set")).arg(&member);
        }
        10 => {
            c = redis::cmd("SPOP");
            c.arg(key("set"));
        }
        11 => {
            c = redis::cmd("HSET");
            c.arg(key("hash"))
                .arg(format!("f{}", rng.below(30)))
                .arg(value);
        }
        12 => {
            c = redis::cmd("HDEL");
            c.arg(key("hash")).arg(format!("f{}", rng.below(30)));
        }
        13 => {
            c = redis::cmd("ZADD");
            c.arg(key("zset"))
                .arg(*rng.pick(&["1", "-2.5", "0.1", "1e10", "-inf", "inf", "3"]))
                .arg(&member);
        }
        14 => {
            c = redis::cmd("ZINCRBY");
            c.arg(key("zset")).arg("2.5").arg(&member);
        }
        15 => {
            let ty = *rng.pick(&["str", "counter", "list", "set", "hash", "zset", "float"]);
            c = redis::cmd("EXPIRE");
            c.arg(key(ty)).arg(&ttl);
        }
        _ => {
            let ty = *rng.pick(&["str", "counter", "list", "set", "hash", "zset", "float"]);
            c = redis::cmd("DEL");
            c.arg(key(ty));
        }
    }
    c
}

fn load_value(rng: &mut Rng) -> Vec<u8> {
    match rng.below(10) {
        0 => rng.range(-1000, 1000).to_string().into_bytes(),
        1 => binary(rng.range(1, 12) as usize),
        2 => text(rng.range(65, 300) as usize, rng.below(100) as usize),
        _ => format!("v{}", rng.below(100_000)).into_bytes(),
    }
}

// ------------------------------------------------------------------------------------------
// A random workload from the differential generator

/// Sends `draws` family draws of the differential test's generator (seeded) to `primary` over
/// raw RESP and returns the number of commands sent. Replies are not checked (the
/// differential test does that); the replication tests compare the resulting datasets.
/// `DumpRestore` steps become `DUMP` + `RESTORE repl:restored:<n> 0 <payload> REPLACE`, so
/// that RESTORE goes through the replication stream too.
pub fn run_random_workload(primary: &ServerProcess, gen: &mut Gen, draws: usize) -> usize {
    let families = differential::families();
    let total: u64 = families.iter().map(|f| f.weight).sum();
    let mut raw = primary.raw();
    let mut sent = 0;
    for draw in 0..draws {
        let mut x = gen.rng.below(total);
        let family = families
            .iter()
            .find(|f| {
                if x < f.weight {
                    true
                } else {
                    x -= f.weight;
                    false
                }
            })
            .unwrap_or(&families[families.len() - 1]);
        for step in (family.generate)(gen) {
            match step {
                Step::Cmd(c) => {
                    let args: Vec<&[u8]> = c.args.iter().map(Vec::as_slice).collect();
                    raw.cmd(&args);
                    sent += 1;
                }
                Step::Sleep(d) => std::thread::sleep(d),
                Step::DumpRestore(key) => {
                    let dump = raw.cmd(&[b"DUMP", &key]);
                    sent += 1;
                    if let Value::BulkString(payload) = crate::parse_reply(&dump) {
                        let target = format!("repl:restored:{draw}");
                        raw.cmd(&[b"RESTORE", target.as_bytes(), b"0", &payload, b"REPLACE"]);
                        sent += 1;
                    }
                }
            }
        }
    }
    sent
}

// ------------------------------------------------------------------------------------------
// A relay that can stall a full sync

/// A TCP relay in front of a primary: a replica pointed at it gets the primary's bytes as
/// they come, except that the connection chosen with [`LinkRelay::hold_next_after`] stops
/// forwarding after a given number of bytes from the primary (the primary then blocks on a
/// full socket: a full sync held in the middle) until [`LinkRelay::cut_held`] closes it.
/// Connections made while the primary is down are closed at once.
pub struct LinkRelay {
    port: u16,
    state: Arc<RelayState>,
    accept: Option<JoinHandle<()>>,
}

struct RelayState {
    upstream: SocketAddr,
    stop: AtomicBool,
    /// The budget of the next connection (bytes from the primary), taken by it.
    hold_next: Mutex<Option<usize>>,
    /// A connection has used up its budget and is stalled.
    holding: AtomicBool,
    /// Set by `cut_held`: the stalled connection closes both sides.
    cut: AtomicBool,
    connections: AtomicUsize,
}

/// Read timeout of the relay's sockets: how often its threads look at the flags.
const RELAY_TICK: Duration = Duration::from_millis(50);

impl LinkRelay {
    /// A relay on a free loopback port to `127.0.0.1:<upstream_port>`.
    pub fn start(upstream_port: u16) -> LinkRelay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the relay");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let port = listener.local_addr().expect("relay address").port();
        let state = Arc::new(RelayState {
            upstream: ([127, 0, 0, 1], upstream_port).into(),
            stop: AtomicBool::new(false),
            hold_next: Mutex::new(None),
            holding: AtomicBool::new(false),
            cut: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
        });
        let accept = {
            let state = state.clone();
            std::thread::spawn(move || {
                while !state.stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((downstream, _)) => {
                            let state = state.clone();
                            std::thread::spawn(move || relay_connection(downstream, &state));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        LinkRelay {
            port,
            state,
            accept: Some(accept),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The next connection forwards only the primary's first `bytes` bytes, then stalls.
    pub fn hold_next_after(&self, bytes: usize) {
        *self
            .state
            .hold_next
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(bytes);
    }

    /// Whether a connection is stalled after its budget.
    pub fn is_holding(&self) -> bool {
        self.state.holding.load(Ordering::Relaxed)
    }

    /// Closes the stalled connection (both sides).
    pub fn cut_held(&self) {
        self.state.cut.store(true, Ordering::Relaxed);
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::Relaxed)
    }
}

impl Drop for LinkRelay {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Relaxed);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

fn relay_connection(downstream: TcpStream, state: &RelayState) {
    state.connections.fetch_add(1, Ordering::Relaxed);
    let _ = downstream.set_nonblocking(false);
    let Ok(upstream) = TcpStream::connect_timeout(&state.upstream, Duration::from_secs(1)) else {
        return; // the primary is down: the replica sees the connection close
    };
    let budget = state
        .hold_next
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    for s in [&downstream, &upstream] {
        let _ = s.set_read_timeout(Some(RELAY_TICK));
        let _ = s.set_write_timeout(Some(Duration::from_secs(10)));
        let _ = s.set_nodelay(true);
    }
    let (Ok(down_reader), Ok(up_writer)) = (downstream.try_clone(), upstream.try_clone()) else {
        return;
    };
    // Each direction ends when either side closes: pump shuts both sockets down.
    std::thread::scope(|scope| {
        scope.spawn(|| pump(down_reader, up_writer, None, state));
        pump(upstream, downstream, budget, state);
    });
}

/// Copies `from` to `to` until either closes or the relay stops; with a budget, forwards at
/// most that many bytes, then holds until `cut_held`. Shuts both sockets down at the end, so
/// the other direction ends too.
fn pump(mut from: TcpStream, mut to: TcpStream, budget: Option<usize>, state: &RelayState) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut forwarded = 0usize;
    while !state.stop.load(Ordering::Relaxed) {
        let room = match budget {
            Some(limit) if forwarded >= limit => {
                state.holding.store(true, Ordering::Relaxed);
                while !state.stop.load(Ordering::Relaxed) && !state.cut.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                state.cut.store(false, Ordering::Relaxed);
                state.holding.store(false, Ordering::Relaxed);
                break;
            }
            Some(limit) => (limit - forwarded).min(buf.len()),
            None => buf.len(),
        };
        match from.read(&mut buf[..room]) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
                forwarded += n;
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

// ------------------------------------------------------------------------------------------
// A fake primary

/// What a [`FakePrimary`] sends after `+FULLRESYNC` instead of a good RDB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadPayload {
    /// A text line and binary bytes where the `$<len>` header belongs; the connection stays
    /// open.
    Garbage,
    /// `$<len>` of a real RDB followed by half of it, then the connection closes.
    Truncated,
    /// A whole, well-formed RDB whose CRC64 trailer is wrong; the connection stays open.
    WrongChecksum,
}

impl BadPayload {
    /// The bytes sent after the `+FULLRESYNC` line, and whether to close right after them.
    pub fn bytes(self) -> (Vec<u8>, bool) {
        let rdb = sample_rdb();
        match self {
            BadPayload::Garbage => (
                b"this is not an RDB payload\r\n\x00\xff\xfe garbage \r\n".to_vec(),
                false,
            ),
            BadPayload::Truncated => {
                let mut out = format!("${}\r\n", rdb.len()).into_bytes();
                out.extend_from_slice(&rdb[..rdb.len() / 2]);
                (out, true)
            }
            BadPayload::WrongChecksum => {
                let mut bad = rdb.to_vec();
                let last = bad.len() - 1; // the checksum is the last 8 bytes
                bad[last] ^= 0xff;
                let mut out = format!("${}\r\n", bad.len()).into_bytes();
                out.extend_from_slice(&bad);
                (out, false)
            }
        }
    }
}

/// A valid small RDB (a few keys `rdb:*`): redis-server's `dump.rdb` after SAVE, made once
/// per test process.
pub fn sample_rdb() -> &'static [u8] {
    static RDB: OnceLock<Vec<u8>> = OnceLock::new();
    RDB.get_or_init(|| {
        let server = ServerProcess::redis(&[]);
        let mut con = connect(&server);
        let _: () = call(&mut con, &["SET", "rdb:string", "from the fake primary"]);
        let _: () = call(&mut con, &["RPUSH", "rdb:list", "a", "b", "c"]);
        let _: () = call(&mut con, &["SET", "rdb:number", "42"]);
        let _: () = call(&mut con, &["SAVE"]);
        let path = server.dir().join("dump.rdb");
        let rdb = std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        assert!(rdb.starts_with(b"REDIS"), "not an RDB: {}", short(&rdb));
        rdb
    })
}

/// A listener that plays a primary to a replica: it answers the handshake (`+PONG` to PING,
/// `+OK` to AUTH and REPLCONF), replies `+FULLRESYNC <replid> 0` to PSYNC (or SYNC), then
/// sends its [`BadPayload`]. It counts connections and PSYNCs and keeps a transcript.
pub struct FakePrimary {
    port: u16,
    state: Arc<FakeState>,
    accept: Option<JoinHandle<()>>,
}

struct FakeState {
    payload: Vec<u8>,
    close_after_payload: bool,
    stop: AtomicBool,
    connections: AtomicUsize,
    psyncs: AtomicUsize,
    transcript: Mutex<Vec<String>>,
}

/// The replication id the fake primary announces.
pub const FAKE_REPLID: &str = "0123456789abcdef0123456789abcdef01234567";

impl FakePrimary {
    pub fn start(payload: BadPayload) -> FakePrimary {
        let (payload, close_after_payload) = payload.bytes();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fake primary");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let port = listener.local_addr().expect("fake primary address").port();
        let state = Arc::new(FakeState {
            payload,
            close_after_payload,
            stop: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
            psyncs: AtomicUsize::new(0),
            transcript: Mutex::new(Vec::new()),
        });
        let accept = {
            let state = state.clone();
            std::thread::spawn(move || {
                while !state.stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let state = state.clone();
                            std::thread::spawn(move || fake_session(stream, &state));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        FakePrimary {
            port,
            state,
            accept: Some(accept),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::Relaxed)
    }

    /// Handshakes that got as far as PSYNC (each one got the bad payload).
    pub fn psyncs(&self) -> usize {
        self.state.psyncs.load(Ordering::Relaxed)
    }

    /// The first commands received, one per line, with the connection number.
    pub fn transcript(&self) -> String {
        self.state
            .transcript
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .join("\n")
    }
}

impl Drop for FakePrimary {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Relaxed);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

/// Lines of transcript kept (a replica that retries fast would fill memory otherwise).
const TRANSCRIPT_LINES: usize = 200;

fn fake_session(mut stream: TcpStream, state: &FakeState) {
    let id = state.connections.fetch_add(1, Ordering::Relaxed) + 1;
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
    let note = |line: String| {
        let mut t = state.transcript.lock().unwrap_or_else(|e| e.into_inner());
        if t.len() < TRANSCRIPT_LINES {
            t.push(line);
        }
    };
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut sent_payload = false;
    while !state.stop.load(Ordering::Relaxed) {
        while let Some((args, used)) = parse_command(&buf) {
            buf.drain(..used);
            let words: Vec<String> = args.iter().map(|a| short(a)).collect();
            note(format!("#{id} {}", words.join(" ")));
            let name = args
                .first()
                .map(|a| a.to_ascii_uppercase())
                .unwrap_or_default();
            let reply: Vec<u8> = match name.as_slice() {
                b"PING" => b"+PONG\r\n".to_vec(),
                b"PSYNC" | b"SYNC" if !sent_payload => {
                    state.psyncs.fetch_add(1, Ordering::Relaxed);
                    sent_payload = true;
                    let mut out = format!("+FULLRESYNC {FAKE_REPLID} 0\r\n").into_bytes();
                    out.extend_from_slice(&state.payload);
                    out
                }
                _ if sent_payload => Vec::new(), // REPLCONF ACK and the like: no reply
                _ => b"+OK\r\n".to_vec(),
            };
            if stream.write_all(&reply).is_err() {
                return;
            }
            if sent_payload && state.close_after_payload {
                note(format!("#{id} (closed after the payload)"));
                return;
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) => {
                note(format!("#{id} (closed by the replica)"));
                return;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// One command from the start of `buf` (a RESP multibulk, or an inline line) and the bytes
/// it used; `None` while incomplete.
fn parse_command(buf: &[u8]) -> Option<(Vec<Vec<u8>>, usize)> {
    let line_end = |from: usize| -> Option<usize> {
        buf.get(from..)?
            .windows(2)
            .position(|w| w == b"\r\n")
            .map(|p| from + p)
    };
    if buf.first() != Some(&b'*') {
        let end = buf.iter().position(|&b| b == b'\n')?;
        let line = String::from_utf8_lossy(&buf[..end]);
        let words = line
            .split_whitespace()
            .map(|w| w.as_bytes().to_vec())
            .collect();
        return Some((words, end + 1));
    }
    let end = line_end(0)?;
    let count: usize = std::str::from_utf8(&buf[1..end])
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let mut pos = end + 2;
    let mut args = Vec::with_capacity(count);
    for _ in 0..count {
        if buf.get(pos) != Some(&b'$') {
            return None;
        }
        let end = line_end(pos)?;
        let len: usize = std::str::from_utf8(&buf[pos + 1..end]).ok()?.parse().ok()?;
        let start = end + 2;
        if buf.len() < start + len + 2 {
            return None;
        }
        args.push(buf[start..start + len].to_vec());
        pos = start + len + 2;
    }
    Some((args, pos))
}

/// One test per combination of the interop matrix (lagwise→lagwise, lagwise→redis,
/// redis→lagwise), in a module named after the scenario, which takes [`Kinds`].
#[macro_export]
macro_rules! replication_matrix {
    ($($scenario:ident),+ $(,)?) => {$(
        mod $scenario {
            use lagwise_tests::replication::Kinds;
            use lagwise_tests::ServerKind::{Lagwise, Redis};

            #[test]
            fn lagwise_to_lagwise() {
                super::$scenario(Kinds::of(Lagwise, Lagwise));
            }

            #[test]
            fn lagwise_to_redis() {
                super::$scenario(Kinds::of(Lagwise, Redis));
            }

            #[test]
            fn redis_to_lagwise() {
                super::$scenario(Kinds::of(Redis, Lagwise));
            }
        }
    )+};
}
