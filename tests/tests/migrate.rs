//! MIGRATE between real servers, and RESTORE-ASKING. Each test starts its own source and
//! target (of the kind `LAGWISE_TEST_TARGET` chooses: with `redis`, every server is
//! redis-server, which checks the expectations themselves), except the interop tests, which
//! pair lagwise-node with redis-server in both directions.
//!
//! Replies are compared as raw bytes: the texts are Redis 7.0's (`migrateCommand` in
//! cluster.c). Fake targets (a listener that never answers, one that hangs up) exercise the
//! timeout and the one retry on a fresh connection.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use lagwise_tests::replication::{
    call, call_cmd, connect, poll, replicaof, start_node, wait_in_sync,
};
use lagwise_tests::wire::cmd_str;
use lagwise_tests::{assert_reply, info_field, target_kind, ServerProcess};
use redis::Connection;

/// Two TTLs read from two servers at different moments differ by at most this (debug builds
/// on a busy machine included).
const TTL_TOLERANCE_MS: i64 = 5000;
const SAMPLE_TTL_MS: i64 = 100_000;

/// Keys of [`load_sample`].
const SAMPLE_KEYS: &[&str] = &["str", "int", "list", "hash", "set", "zset", "ttl"];

/// `MIGRATE 127.0.0.1 <port> <args...>` on `source`, on a new connection; the raw reply.
fn migrate(source: &ServerProcess, port: u16, args: &[&str]) -> Vec<u8> {
    let port = port.to_string();
    let mut full = vec!["MIGRATE", "127.0.0.1", port.as_str()];
    full.extend_from_slice(args);
    cmd_str(&mut source.raw(), &full)
}

/// One key of each type, an integer-encoded string, and a string with a TTL.
fn load_sample(con: &mut Connection) {
    call::<()>(con, &["SET", "str", "hello"]);
    call::<()>(con, &["SET", "int", "12345"]);
    call::<()>(con, &["RPUSH", "list", "a", "b", "c"]);
    call::<()>(con, &["HSET", "hash", "f1", "v1", "f2", "v2"]);
    call::<()>(con, &["SADD", "set", "x", "y", "z"]);
    call::<()>(con, &["ZADD", "zset", "1", "one", "2.5", "two"]);
    call::<()>(con, &["SET", "ttl", "v", "PX", &SAMPLE_TTL_MS.to_string()]);
}

/// Checks that `con`'s server holds the keys of [`load_sample`], values and TTLs.
fn assert_sample(con: &mut Connection) {
    assert_eq!(call::<String>(con, &["GET", "str"]), "hello");
    assert_eq!(call::<String>(con, &["GET", "int"]), "12345");
    assert_eq!(
        call::<Vec<String>>(con, &["LRANGE", "list", "0", "-1"]),
        ["a", "b", "c"]
    );
    let hash: BTreeMap<String, String> = call(con, &["HGETALL", "hash"]);
    assert_eq!(
        hash,
        BTreeMap::from([("f1".into(), "v1".into()), ("f2".into(), "v2".into())])
    );
    let set: BTreeSet<String> = call(con, &["SMEMBERS", "set"]);
    assert_eq!(set, BTreeSet::from(["x".into(), "y".into(), "z".into()]));
    assert_eq!(
        call::<Vec<String>>(con, &["ZRANGE", "zset", "0", "-1", "WITHSCORES"]),
        ["one", "1", "two", "2.5"]
    );
    assert_eq!(call::<String>(con, &["GET", "ttl"]), "v");
    assert_ttl_carried(con, "ttl");
    assert_eq!(
        call::<i64>(con, &["PTTL", "str"]),
        -1,
        "a key without TTL gets none"
    );
}

/// The key's PTTL is [`SAMPLE_TTL_MS`] less the time spent since it was set, within tolerance.
fn assert_ttl_carried(con: &mut Connection, key: &str) {
    let pttl: i64 = call(con, &["PTTL", key]);
    assert!(
        pttl <= SAMPLE_TTL_MS && pttl > SAMPLE_TTL_MS - TTL_TOLERANCE_MS,
        "PTTL {key} on the target: {pttl}"
    );
}

fn exists(con: &mut Connection, keys: &[&str]) -> i64 {
    let mut args = vec!["EXISTS"];
    args.extend_from_slice(keys);
    call(con, &args)
}

/// A connection that authenticates with `password` first.
fn connect_with_password(server: &ServerProcess, password: &str) -> Connection {
    let client = redis::Client::open(format!("redis://:{password}@{}/", server.addr())).unwrap();
    let con = client
        .get_connection_with_timeout(Duration::from_secs(5))
        .unwrap();
    con.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    con
}

fn connections_received(con: &mut Connection) -> i64 {
    let info: String = call(con, &["INFO", "stats"]);
    info_field(&info, "total_connections_received")
        .and_then(|v| v.parse().ok())
        .expect("total_connections_received in INFO stats")
}

/// What a [`FakeTarget`] does with the connections it accepts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fake {
    /// Keeps them open and never answers.
    Silent,
    /// Closes them at once.
    HangUp,
}

/// A listener on a free loopback port standing in for a broken target.
struct FakeTarget {
    port: u16,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeTarget {
    fn start(mode: Fake) -> FakeTarget {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (accepted, stop) = (accepted.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut held: Vec<TcpStream> = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            accepted.fetch_add(1, Ordering::SeqCst);
                            if mode == Fake::Silent {
                                held.push(stream);
                            }
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        FakeTarget {
            port,
            accepted,
            stop,
            thread: Some(thread),
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for FakeTarget {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn one_key_moves_to_the_target() {
    let (source, target) = (ServerProcess::target(&[]), ServerProcess::target(&[]));
    let (mut src, mut dst) = (connect(&source), connect(&target));
    call::<()>(&mut src, &["SET", "k", "v"]);

    assert_reply!(
        migrate(&source, target.port(), &["k", "0", "5000"]),
        b"+OK\r\n"
    );
    assert_eq!(exists(&mut src, &["k"]), 0, "the source deleted the key");
    assert_eq!(call::<String>(&mut dst, &["GET", "k"]), "v");
}

#[test]
fn keys_form_moves_every_type_with_its_ttl() {
    let (source, target) = (ServerProcess::target(&[]), ServerProcess::target(&[]));
    let (mut src, mut dst) = (connect(&source), connect(&target));
    load_sample(&mut src);

    let mut args = vec!["", "0", "5000", "KEYS"];
    args.extend_from_slice(SAMPLE_KEYS);
    args.push("missing"); // keys that do not exist are skipped
    assert_reply!(migrate(&source, target.port(), &args), b"+OK\r\n");
    assert_eq!(exists(&mut src, SAMPLE_KEYS), 0);
    assert_sample(&mut dst);
}

#[test]
fn nothing_to_move_is_nokey() {
    let (source, target) = (ServerProcess::target(&[]), ServerProcess::target(&[]));
    let port = target.port();
    assert_reply!(
        migrate(&source, port, &["missing", "0", "5000"]),
        b"+NOKEY\r\n"
    );
    assert_reply!(
        migrate(&source, port, &["", "0", "5000", "KEYS", "a", "b"]),
        b"+NOKEY\r\n"
    );
    // No key, no connection: the port is not even tried.
    assert_reply!(
        migrate(&source, 1, &["missing", "0", "5000"]),
        b"+NOKEY\r\n"
    );
}

#[test]
fn copy_keeps_the_keys_on_the_source() {
    let (source, target) = (ServerProcess::target(&[]), ServerProcess::target(&[]));
    let (mut src, mut dst) = (connect(&source), connect(&target));
    load_sample(&mut src);

    let mut args = vec!["", "0", "5000", "COPY", "KEYS"];
    args.extend_from_slice(SAMPLE_KEYS);
    assert_reply!(migrate(&source, target.port(), &args), b"+OK\r\n");
    assert_sample(&mut src);
    assert_sample(&mut dst);
}

#[test]
fn an_existing_key_on_the_target_needs_replace() {
    let (source, target) = (ServerProcess::target(&[]), ServerProcess::target(&[]));
    let (mut src, mut dst) = (connect(&source), connect(&target));
    let port = target.port();
    call::<()>(&mut src, &["MSET", "k", "new", "free", "f"]);
    call::<()>(&mut dst, &["SET", "k", "old"]);

    assert_reply!(
        migrate(&source, port, &["k", "0", "5000"]),
        b"-ERR Target instance replied with error: BUSYKEY Target key name already exists.\r\n"
    );
    assert_eq!(call::<String>(&mut src, &["GET", "k"]), "new");
    assert_eq!(call::<String>(&mut dst, &["GET", "k"]), "old");

    // Several keys, one refused: the error is the reply, and the others moved all the same.
    assert_reply!(
        migrate(&source, port, &["", "0", "5000", "KEYS", "k", "free"]),
        b"-ERR Target instance replied with error: BUSYKEY Target key name already exists.\r\n"
    );
    assert_eq!(
        exists(&mut src, &["k", "free"]),
        1,
        "only the refused key stays"
    );
    assert_eq!(call::<String>(&mut dst, &["GET", "free"]), "f");

    assert_reply!(
        migrate(&source, port, &["k", "0", "5000", "REPLACE"]),
        b"+OK\r\n"
    );
    assert_eq!(exists(&mut src, &["k"]), 0);
    assert_eq!(call::<String>(&mut dst, &["GET", "k"]), "new");
}

#[test]
fn auth_and_auth2_reach_a_target_with_a_password() {
    let source = ServerProcess::target(&[]);
    let target = ServerProcess::target(&["--requirepass", "s3cret"]);
    let mut src = connect(&source);
    let mut dst = connect_with_password(&target, "s3cret");
    let port = target.port();
    call::<()>(&mut src, &["MSET", "a", "1", "b", "2"]);

    assert_reply!(
        migrate(&source, port, &["a", "0", "5000"]),
        b"-ERR Target instance replied with error: NOAUTH Authentication required.\r\n"
    );
    assert_reply!(
        migrate(&source, port, &["a", "0", "5000", "AUTH", "wrong"]),
        b"-ERR Target instance replied with error: WRONGPASS invalid username-password pair or user is disabled.\r\n"
    );
    assert_eq!(exists(&mut src, &["a", "b"]), 2, "refused keys stay");

    assert_reply!(
        migrate(&source, port, &["a", "0", "5000", "AUTH", "s3cret"]),
        b"+OK\r\n"
    );
    assert_reply!(
        migrate(
            &source,
            port,
            &["b", "0", "5000", "AUTH2", "default", "s3cret"]
        ),
        b"+OK\r\n"
    );
    assert_eq!(exists(&mut src, &["a", "b"]), 0);
    assert_eq!(
        call::<Vec<String>>(&mut dst, &["MGET", "a", "b"]),
        ["1", "2"]
    );
}

#[test]
fn unreachable_targets_are_ioerrs_and_the_key_stays() {
    let source = ServerProcess::target(&[]);
    let mut src = connect(&source);
    call::<()>(&mut src, &["SET", "k", "v"]);
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    // Redis 7.0 does not wait for its non-blocking connect to complete: a refused connection
    // shows on the first write (tried twice, as any failed write).
    assert_reply!(
        migrate(&source, closed, &["k", "0", "1000"]),
        b"-IOERR error or timeout writing to target instance\r\n"
    );
    // "connecting" is for an address that cannot be dialed at all.
    assert_reply!(
        cmd_str(&mut source.raw(), &["MIGRATE", "", "1", "k", "0", "1000"]),
        b"-IOERR error or timeout connecting to the client\r\n"
    );
    assert_reply!(
        cmd_str(
            &mut source.raw(),
            &["MIGRATE", "127.0.0.1", "-5", "k", "0", "1000"]
        ),
        b"-IOERR error or timeout connecting to the client\r\n"
    );
    assert_eq!(exists(&mut src, &["k"]), 1);
}

#[test]
fn a_silent_target_times_out_without_a_retry() {
    let source = ServerProcess::target(&[]);
    let mut src = connect(&source);
    call::<()>(&mut src, &["SET", "k", "v"]);
    let fake = FakeTarget::start(Fake::Silent);

    let started = Instant::now();
    assert_reply!(
        migrate(&source, fake.port, &["k", "0", "300"]),
        b"-IOERR error or timeout reading to target instance\r\n"
    );
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(250), "gave up after {took:?}");
    assert_eq!(fake.accepted(), 1, "a timeout is not retried");
    assert_eq!(exists(&mut src, &["k"]), 1);
    // The source is responsive again.
    assert_eq!(call::<String>(&mut src, &["PING"]), "PONG");
}

#[test]
fn a_target_that_hangs_up_is_tried_twice() {
    let source = ServerProcess::target(&[]);
    let mut src = connect(&source);
    call::<()>(&mut src, &["SET", "k", "v"]);
    let fake = FakeTarget::start(Fake::HangUp);

    let reply = migrate(&source, fake.port, &["k", "0", "5000"]);
    // Reading or writing, depending on when the hang-up arrives.
    assert!(
        reply == b"-IOERR error or timeout reading to target instance\r\n"
            || reply == b"-IOERR error or timeout writing to target instance\r\n",
        "{}",
        String::from_utf8_lossy(&reply)
    );
    assert!(poll(Duration::from_secs(5), || fake.accepted() >= 2));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(fake.accepted(), 2, "one retry, on a fresh connection");
    assert_eq!(exists(&mut src, &["k"]), 1);
}

#[test]
fn the_connection_is_cached_and_replaced_when_the_target_restarts() {
    let source = ServerProcess::target(&[]);
    let mut target = ServerProcess::target(&[]);
    let mut src = connect(&source);
    call::<()>(&mut src, &["MSET", "a", "1", "b", "2", "c", "3"]);
    let port = target.port();

    let mut dst = connect(&target);
    let before = connections_received(&mut dst);
    assert_reply!(migrate(&source, port, &["a", "0", "5000"]), b"+OK\r\n");
    assert_reply!(migrate(&source, port, &["b", "0", "5000"]), b"+OK\r\n");
    assert_eq!(
        connections_received(&mut dst) - before,
        1,
        "both MIGRATEs used one connection"
    );
    drop(dst);

    // The cached connection dies with the target; the next MIGRATE notices and reconnects.
    target.restart(&[]);
    assert_reply!(migrate(&source, port, &["c", "0", "5000"]), b"+OK\r\n");
    assert_eq!(call::<String>(&mut connect(&target), &["GET", "c"]), "3");
    assert_eq!(exists(&mut src, &["a", "b", "c"]), 0);
}

/// Moves the sample both ways between `a` and `b`.
fn interop(a: &ServerProcess, b: &ServerProcess) {
    let (mut ca, mut cb) = (connect(a), connect(b));
    load_sample(&mut ca);
    let mut args = vec!["", "0", "5000", "KEYS"];
    args.extend_from_slice(SAMPLE_KEYS);
    assert_reply!(
        migrate(a, b.port(), &args),
        b"+OK\r\n",
        "{} -> {}",
        a.kind(),
        b.kind()
    );
    assert_eq!(exists(&mut ca, SAMPLE_KEYS), 0);
    assert_sample(&mut cb);

    // And back.
    assert_reply!(
        migrate(b, a.port(), &args),
        b"+OK\r\n",
        "{} -> {}",
        b.kind(),
        a.kind()
    );
    assert_eq!(exists(&mut cb, SAMPLE_KEYS), 0);
    assert_sample(&mut ca);
}

#[test]
fn lagwise_to_redis_and_back() {
    let lagwise = ServerProcess::target(&[]);
    let redis = ServerProcess::redis(&[]);
    interop(&lagwise, &redis);

    // Another database of the target: SELECT precedes the RESTORE, on the cached connection
    // too, and going back to 0 selects 0 again.
    let (mut src, mut dst) = (connect(&lagwise), connect(&redis));
    call::<()>(&mut src, &["MSET", "in1", "x", "in0", "y"]);
    assert_reply!(
        migrate(&lagwise, redis.port(), &["in1", "1", "5000"]),
        b"+OK\r\n"
    );
    assert_reply!(
        migrate(&lagwise, redis.port(), &["in0", "0", "5000"]),
        b"+OK\r\n"
    );
    assert_eq!(exists(&mut dst, &["in1", "in0"]), 1);
    assert_eq!(call::<String>(&mut dst, &["GET", "in0"]), "y");
    call::<()>(&mut dst, &["SELECT", "1"]);
    assert_eq!(call::<String>(&mut dst, &["GET", "in1"]), "x");
}

#[test]
fn redis_to_lagwise_and_back() {
    let redis = ServerProcess::redis(&[]);
    let lagwise = ServerProcess::target(&[]);
    interop(&redis, &lagwise);
}

#[test]
fn replicas_see_moved_keys_deleted() {
    let kind = target_kind();
    let (primary, replica) = (start_node(kind, &[]), start_node(kind, &[]));
    let target = ServerProcess::target(&[]);
    replicaof(&replica, &primary);
    let mut src = connect(&primary);
    call::<()>(
        &mut src,
        &["MSET", "moved", "1", "copied", "2", "kept", "3"],
    );
    wait_in_sync(&primary, &replica);

    assert_reply!(
        migrate(&primary, target.port(), &["moved", "0", "5000"]),
        b"+OK\r\n"
    );
    assert_reply!(
        migrate(&primary, target.port(), &["copied", "0", "5000", "COPY"]),
        b"+OK\r\n"
    );
    wait_in_sync(&primary, &replica);
    // Had MIGRATE reached the replica as sent, the replica would have tried to move its own
    // copy (refused by the target, which has it already) and kept it.
    let mut rep = connect(&replica);
    assert_eq!(exists(&mut rep, &["moved"]), 0);
    assert_eq!(exists(&mut rep, &["copied", "kept"]), 2);
}

#[test]
fn argument_errors_come_before_any_io() {
    let source = ServerProcess::target(&[]);
    let mut src = connect(&source);
    call::<()>(&mut src, &["SET", "k", "v"]);
    let port = 1; // never dialled
    let syntax = b"-ERR syntax error\r\n";
    assert_reply!(migrate(&source, port, &["k", "0", "1000", "BOGUS"]), syntax);
    assert_reply!(migrate(&source, port, &["k", "0", "1000", "AUTH"]), syntax);
    assert_reply!(
        migrate(&source, port, &["k", "0", "1000", "AUTH2", "u"]),
        syntax
    );
    assert_reply!(
        migrate(&source, port, &["k", "0", "1000", "KEYS", "k"]),
        b"-ERR When using MIGRATE KEYS option, the key argument must be set to the empty string\r\n"
    );
    let not_integer = b"-ERR value is not an integer or out of range\r\n";
    assert_reply!(migrate(&source, port, &["k", "0", "soon"]), not_integer);
    assert_reply!(migrate(&source, port, &["k", "db", "1000"]), not_integer);
    // Options are checked first.
    assert_reply!(
        migrate(&source, port, &["k", "db", "soon", "BOGUS"]),
        syntax
    );
    assert_reply!(
        migrate(&source, port, &["k", "0"]),
        b"-ERR wrong number of arguments for 'migrate' command\r\n"
    );
    assert_eq!(exists(&mut src, &["k"]), 1);
}

#[test]
fn restore_asking_is_restore() {
    let server = ServerProcess::target(&[]);
    let mut con = connect(&server);
    call::<()>(&mut con, &["SET", "k", "v"]);
    let payload: Vec<u8> = call(&mut con, &["DUMP", "k"]);
    let restore = |key: &str, ttl: &str, extra: &[&str]| {
        let mut c = redis::cmd("RESTORE-ASKING");
        c.arg(key).arg(ttl).arg(&payload[..]);
        for e in extra {
            c.arg(*e);
        }
        c
    };

    call_cmd::<()>(&mut con, &restore("k2", "0", &[]));
    assert_eq!(call::<String>(&mut con, &["GET", "k2"]), "v");
    let err = restore("k2", "0", &[]).query::<()>(&mut con).unwrap_err();
    assert_eq!(
        lagwise_tests::err_text(&err),
        "BUSYKEY Target key name already exists."
    );
    call_cmd::<()>(
        &mut con,
        &restore("k2", &SAMPLE_TTL_MS.to_string(), &["REPLACE"]),
    );
    assert_ttl_carried(&mut con, "k2");
}
