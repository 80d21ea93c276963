#![allow(clippy::unwrap_used)]
//! The rules a replica and its primary follow besides copying data, as Redis 7 / Valkey
//! define them: expiry seen from a replica, read-only replicas, stale data, min-replicas,
//! ROLE and INFO, several replicas syncing at once, PUBLISH through the stream, and writes
//! whose effect (not the command as sent) must reach the replica: blocking pops, SPOP,
//! INCRBYFLOAT, relative TTLs.
//!
//! Like `tests/replication.rs`, every scenario is a function of the [`Kinds`] and `matrix!`
//! makes one test per combination (lagwise→lagwise, lagwise→redis, redis→lagwise), named
//! `<scenario>::<combo>`. `LAGWISE_REPL_MATRIX=redis` runs them all as redis→redis: that is
//! how the expectations below were checked against the reference (redis-server 7.0).
//!
//! No assertion has an upper time bound: waits are generous and fail with both servers'
//! INFO replication; the servers' logs are printed when a test fails.
//!
//! Reference behaviour found on redis-server 7.0 that the scenarios assert:
//! - A replica never deletes a key because it expired: GET, EXISTS, TTL and TYPE treat it as
//!   gone, while DBSIZE still counts it until the primary's DEL arrives.
//! - With `replica-serve-stale-data no` and the link down, PING is refused with MASTERDOWN
//!   too (it has no `stale` flag); INFO and ROLE answer.
//! - A full sync's `+FULLRESYNC <replid> <offset>` is logged by the replica ("Full resync
//!   from master: <replid>:<offset>" by redis-server, "full resync from primary replid=..
//!   offset=.." by lagwise-node): replicas fed from one snapshot log the same offset.
//! - A fresh server told REPLICAOF first asks to continue its own history (PSYNC <its
//!   replid> 1), which the primary counts in `sync_partial_err` before the full sync.

use std::time::{Duration, Instant};

use lagwise_tests::replication::{
    assert_same_dataset, call, connect, dbsize, exec, info, load_mixed_dataset, poll, replicaof,
    replication_report, start_node, wait_in_sync, wait_info, Frozen, Info, Kinds, Pair, WriteLoad,
    EVENT_TIMEOUT,
};
use lagwise_tests::wire::{bulk, bulks, cmd_str};
use lagwise_tests::{
    assert_reply, encode_command, info_field, parse_reply, RawConn, ServerKind, ServerProcess,
};
use redis::Value;

use lagwise_tests::replication_matrix as matrix;

matrix!(
    replica_hides_expired_keys_until_the_primary_deletes_them,
    relative_expiry_reaches_the_replica_as_absolute_time,
    replica_refuses_writes_unless_made_writable,
    stale_replica_refuses_reads_when_primary_is_killed,
    stale_replica_refuses_reads_when_primary_is_frozen,
    min_replicas_gate_writes_on_the_primary,
    role_and_info_describe_both_sides,
    replicas_attaching_together_share_one_snapshot,
    publish_reaches_subscribers_of_the_replica,
    blocking_pops_replicate_as_their_effect,
    random_and_relative_writes_replicate_as_their_effect,
);

/// `READONLY`, as a replica sends it.
const READONLY: &[u8] = b"-READONLY You can't write against a read only replica.\r\n";
/// `MASTERDOWN`, as a replica with `replica-serve-stale-data no` and no link sends it.
const MASTERDOWN: &[u8] =
    b"-MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.\r\n";
/// `NOREPLICAS`, as a primary short of good replicas sends it.
const NOREPLICAS: &[u8] = b"-NOREPLICAS Not enough good replicas to write.\r\n";

/// How long a frozen replica stays frozen while its primary applies relative TTLs: long
/// enough that a TTL the replica computed itself, on receipt, would differ by seconds.
const REPLICA_DELAY: Duration = Duration::from_millis(1200);

// ------------------------------------------------------------------------------------------
// Helpers

/// An empty primary and an empty replica attached to it, in sync. `primary_extra` and
/// `replica_extra` are directives for each.
fn empty_pair(kinds: Kinds, primary_extra: &[&str], replica_extra: &[&str]) -> Pair {
    let primary = start_node(kinds.primary, primary_extra);
    let replica = start_node(kinds.replica, replica_extra);
    replicaof(&replica, &primary);
    wait_in_sync(&primary, &replica);
    Pair { primary, replica }
}

/// A raw connection whose reads wait up to [`EVENT_TIMEOUT`].
fn patient_raw(server: &ServerProcess) -> RawConn {
    let mut raw = server.raw();
    raw.set_read_timeout(EVENT_TIMEOUT);
    raw
}

/// Both servers' INFO replication, for failure messages.
fn report(pair: &Pair) -> String {
    replication_report(&[("primary", &pair.primary), ("replica", &pair.replica)])
}

/// `PEXPIRETIME key` on `server`.
fn pexpiretime(server: &ServerProcess, key: &str) -> i64 {
    exec(server, &["PEXPIRETIME", key])
}

/// Asserts that `key` expires at the same millisecond on both servers (and does expire).
fn assert_same_expiry(pair: &Pair, key: &str) {
    let on_primary = pexpiretime(&pair.primary, key);
    let on_replica = pexpiretime(&pair.replica, key);
    assert!(
        on_primary > 0,
        "{key} should have an expiry on the primary (PEXPIRETIME {on_primary})"
    );
    assert_eq!(
        on_replica,
        on_primary,
        "PEXPIRETIME {key}: replica vs primary (ms; the replica applied the write {} ms late, \
         so a TTL computed on the replica would be off by about that much)\n{}",
        REPLICA_DELAY.as_millis(),
        report(pair)
    );
}

/// Waits until `server` reports `n` blocked clients (INFO clients).
fn wait_blocked_clients(server: &ServerProcess, n: i64) {
    let mut last = String::new();
    let ok = poll(EVENT_TIMEOUT, || {
        let text: String = exec(server, &["INFO", "clients"]);
        let blocked = info_field(&text, "blocked_clients").and_then(|v| v.parse::<i64>().ok());
        last = text;
        blocked == Some(n)
    });
    assert!(
        ok,
        "{} at {}: blocked_clients did not reach {n} within {EVENT_TIMEOUT:?}; INFO clients:\n{last}",
        server.kind(),
        server.addr()
    );
}

/// The `# Replication` section of INFO, as `(field, value)` in the order sent.
fn replication_fields(server: &ServerProcess) -> Vec<(String, String)> {
    let text: String = exec(server, &["INFO", "replication"]);
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim_end().to_string()))
        .collect()
}

/// The `(replid, offset)` of every full resync `replica` logged, in order (see the module
/// doc for both servers' wording).
fn logged_full_resyncs(replica: &ServerProcess) -> Vec<(String, i64)> {
    replica
        .log()
        .lines()
        .filter_map(|line| {
            if let Some((_, rest)) = line.split_once("Full resync from master: ") {
                let (replid, offset) = rest.trim().rsplit_once(':')?;
                return Some((replid.to_string(), offset.parse().ok()?));
            }
            if line.contains("full resync from primary") {
                let field = |name: &str| {
                    line.split_whitespace()
                        .find_map(|word| word.strip_prefix(name))
                        .map(|v| v.trim_matches('"').to_string())
                };
                return Some((field("replid=")?, field("offset=")?.parse().ok()?));
            }
            None
        })
        .collect()
}

// ------------------------------------------------------------------------------------------
// Expiry as a replica sees it

/// A key past its expiry is gone for readers of the replica, but only the primary deletes
/// it: the replica keeps counting it (DBSIZE) until the primary's DEL arrives, which the
/// primary sends when it expires the key (here lazily, on a GET: its active cycle is off).
fn replica_hides_expired_keys_until_the_primary_deletes_them(kinds: Kinds) {
    let pair = empty_pair(kinds, &[], &[]);
    let mut p = connect(&pair.primary);
    let mut r = connect(&pair.replica);
    let _: () = call(&mut p, &["DEBUG", "SET-ACTIVE-EXPIRE", "0"]);
    let _: () = call(&mut p, &["SET", "lasting", "v"]);
    let _: () = call(&mut p, &["SET", "short", "v", "PX", "300"]);
    let set_done = Instant::now();
    wait_in_sync(&pair.primary, &pair.replica);
    // The key expired once 300 ms passed after the SET was applied, which was before its
    // reply arrived; the margin covers the two servers reading the clock separately.
    std::thread::sleep(Duration::from_millis(500).saturating_sub(set_done.elapsed()));

    let got: Option<String> = call(&mut r, &["GET", "short"]);
    assert_eq!(
        got,
        None,
        "GET of an expired key on the replica\n{}",
        report(&pair)
    );
    let exists: i64 = call(&mut r, &["EXISTS", "short"]);
    assert_eq!(exists, 0, "EXISTS of an expired key on the replica");
    let pttl: i64 = call(&mut r, &["PTTL", "short"]);
    assert_eq!(pttl, -2, "PTTL of an expired key on the replica");
    let ty: String = call(&mut r, &["TYPE", "short"]);
    assert_eq!(ty, "none", "TYPE of an expired key on the replica");
    let keys: Vec<String> = call(&mut r, &["KEYS", "*"]);
    assert_eq!(keys, vec!["lasting"], "KEYS * on the replica");
    assert_eq!(
        dbsize(&pair.replica),
        2,
        "DBSIZE on the replica still counts the expired key: only the primary deletes it\n{}",
        report(&pair)
    );
    assert_eq!(
        dbsize(&pair.primary),
        2,
        "DBSIZE on the primary before anything touched the expired key (active expiry off)"
    );

    // Lazy expiry on the primary: its DEL reaches the replica.
    let got: Option<String> = call(&mut p, &["GET", "short"]);
    assert_eq!(got, None, "GET of an expired key on the primary");
    assert_eq!(dbsize(&pair.primary), 1, "DBSIZE on the primary after GET");
    let mut last = 0;
    let dropped = poll(EVENT_TIMEOUT, || {
        last = dbsize(&pair.replica);
        last == 1
    });
    assert!(
        dropped,
        "the replica's DBSIZE stayed {last} (not 1) for {EVENT_TIMEOUT:?} after the primary \
         expired the key: no DEL came through the stream?\n{}",
        report(&pair)
    );
    wait_in_sync(&pair.primary, &pair.replica);
    assert_same_dataset(&pair.primary, &pair.replica);
}

/// EXPIRE, PEXPIRE and EXPIRE with a condition are relative on the primary; the replica must
/// get the absolute time the primary computed, not recompute it when it applies the write.
fn relative_expiry_reaches_the_replica_as_absolute_time(kinds: Kinds) {
    let mut pair = empty_pair(kinds, &[], &[]);
    let mut p = connect(&pair.primary);
    for key in ["rel:expire", "rel:pexpire", "rel:expire-gt"] {
        let _: () = call(&mut p, &["SET", key, "v"]);
    }
    let _: i64 = call(&mut p, &["HSET", "rel:hash", "f", "v"]);
    wait_in_sync(&pair.primary, &pair.replica);
    {
        let _frozen = Frozen::new(&mut pair.replica);
        let set: i64 = call(&mut p, &["EXPIRE", "rel:expire", "100"]);
        assert_eq!(set, 1, "EXPIRE rel:expire 100");
        let set: i64 = call(&mut p, &["PEXPIRE", "rel:pexpire", "250000"]);
        assert_eq!(set, 1, "PEXPIRE rel:pexpire 250000");
        let set: i64 = call(&mut p, &["EXPIRE", "rel:expire-gt", "100"]);
        assert_eq!(set, 1, "EXPIRE rel:expire-gt 100");
        let set: i64 = call(&mut p, &["EXPIRE", "rel:expire-gt", "200", "GT"]);
        assert_eq!(set, 1, "EXPIRE rel:expire-gt 200 GT");
        let set: i64 = call(&mut p, &["EXPIRE", "rel:hash", "300"]);
        assert_eq!(set, 1, "EXPIRE rel:hash 300");
        std::thread::sleep(REPLICA_DELAY);
    }
    wait_in_sync(&pair.primary, &pair.replica);
    for key in ["rel:expire", "rel:pexpire", "rel:expire-gt", "rel:hash"] {
        assert_same_expiry(&pair, key);
    }
    assert_same_dataset(&pair.primary, &pair.replica);
}

// ------------------------------------------------------------------------------------------
// Read-only replicas

fn replica_refuses_writes_unless_made_writable(kinds: Kinds) {
    let pair = empty_pair(kinds, &[], &[]);
    let _: () = exec(&pair.primary, &["SET", "from:primary", "1"]);
    wait_in_sync(&pair.primary, &pair.replica);

    let mut raw = pair.replica.raw();
    for args in [
        &["SET", "k", "v"][..],
        &["DEL", "from:primary"],
        &["INCR", "counter"],
        &["LPUSH", "list", "a"],
        &["HSET", "hash", "f", "v"],
        &["EXPIRE", "from:primary", "10"],
        &["FLUSHALL"],
    ] {
        assert_reply!(
            cmd_str(&mut raw, args),
            READONLY,
            "{args:?} on a read-only replica"
        );
    }
    // Reads are served, and nothing was written.
    assert_reply!(cmd_str(&mut raw, &["GET", "from:primary"]), bulk("1"));
    assert_reply!(cmd_str(&mut raw, &["DBSIZE"]), b":1\r\n");

    assert_reply!(
        cmd_str(&mut raw, &["CONFIG", "SET", "replica-read-only", "no"]),
        b"+OK\r\n"
    );
    assert_reply!(
        cmd_str(&mut raw, &["SET", "local", "v"]),
        b"+OK\r\n",
        "SET on a replica with replica-read-only no"
    );
    assert_reply!(cmd_str(&mut raw, &["GET", "local"]), bulk("v"));
    let r = info(&pair.replica);
    assert_eq!(
        r.get("slave_read_only"),
        Some("0"),
        "replica INFO:\n{}",
        r.raw
    );
    // A replica's own writes stay local; the link goes on.
    let on_primary: i64 = exec(&pair.primary, &["EXISTS", "local"]);
    assert_eq!(on_primary, 0, "a replica's local write reached the primary");
    let _: () = exec(&pair.primary, &["SET", "after", "2"]);
    wait_in_sync(&pair.primary, &pair.replica);
    assert_reply!(cmd_str(&mut raw, &["GET", "after"]), bulk("2"));

    assert_reply!(
        cmd_str(&mut raw, &["CONFIG", "SET", "replica-read-only", "yes"]),
        b"+OK\r\n"
    );
    assert_reply!(cmd_str(&mut raw, &["SET", "local", "w"]), READONLY);
}

// ------------------------------------------------------------------------------------------
// replica-serve-stale-data no

/// What a replica with `replica-serve-stale-data no` answers while its link is down: data
/// commands (PING included, as in Redis 7.0) get MASTERDOWN; INFO and ROLE answer.
fn assert_refuses_stale_reads(replica: &ServerProcess) {
    let mut raw = replica.raw();
    for args in [&["GET", "k"][..], &["EXISTS", "k"], &["DBSIZE"], &["PING"]] {
        assert_reply!(
            cmd_str(&mut raw, args),
            MASTERDOWN,
            "{args:?} on a replica with no link and replica-serve-stale-data no"
        );
    }
    let text = match parse_reply(&cmd_str(&mut raw, &["INFO", "replication"])) {
        Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
        other => panic!("INFO replication on a stale replica: {other:?}"),
    };
    let r = Info::parse(&text);
    assert_eq!(r.get("role"), Some("slave"), "INFO:\n{text}");
    assert_eq!(r.get("master_link_status"), Some("down"), "INFO:\n{text}");
    match parse_reply(&cmd_str(&mut raw, &["ROLE"])) {
        Value::Array(items) if items.first() == Some(&Value::BulkString(b"slave".to_vec())) => {}
        other => panic!("ROLE on a stale replica: {other:?}"),
    }
}

fn stale_replica_refuses_reads_when_primary_is_killed(kinds: Kinds) {
    let mut pair = empty_pair(kinds, &[], &["--replica-serve-stale-data", "no"]);
    let _: () = exec(&pair.primary, &["SET", "k", "v"]);
    wait_in_sync(&pair.primary, &pair.replica);
    assert_reply!(
        cmd_str(&mut pair.replica.raw(), &["GET", "k"]),
        bulk("v"),
        "GET on a replica whose link is up"
    );

    pair.primary.sigkill();
    wait_info(
        &pair.replica,
        "master_link_status:down (the primary was killed)",
        |r| r.get("master_link_status") == Some("down"),
    );
    assert_refuses_stale_reads(&pair.replica);
}

/// The primary is frozen, its sockets open: the replica notices only by `repl-timeout`.
fn stale_replica_refuses_reads_when_primary_is_frozen(kinds: Kinds) {
    let mut pair = empty_pair(
        kinds,
        &[],
        &["--replica-serve-stale-data", "no", "--repl-timeout", "2"],
    );
    let _: () = exec(&pair.primary, &["SET", "k", "v"]);
    wait_in_sync(&pair.primary, &pair.replica);
    {
        let _frozen = Frozen::new(&mut pair.primary);
        // Nothing arrives from a frozen primary: after repl-timeout (2 s) the replica must
        // give the link up.
        wait_info(
            &pair.replica,
            "master_link_status:down (the primary is frozen and repl-timeout is 2 s)",
            |r| r.get("master_link_status") == Some("down"),
        );
        assert_refuses_stale_reads(&pair.replica);
    }
    // Thawed, the primary takes the replica back and reads are served again.
    wait_in_sync(&pair.primary, &pair.replica);
    assert_reply!(
        cmd_str(&mut pair.replica.raw(), &["GET", "k"]),
        bulk("v"),
        "GET on the replica once its link is back up"
    );
}

// ------------------------------------------------------------------------------------------
// min-replicas-to-write

/// Sends `SET key v` on `raw` (a connection to `primary`) until the reply is `want`; returns
/// the other replies seen before, without repeats.
fn set_until(
    raw: &mut RawConn,
    key: &str,
    want: &[u8],
    what: &str,
    primary: &ServerProcess,
) -> Vec<Vec<u8>> {
    let mut seen = Vec::new();
    let ok = poll(EVENT_TIMEOUT, || {
        let reply = cmd_str(raw, &["SET", key, "v"]);
        if reply == want {
            return true;
        }
        if seen.last() != Some(&reply) {
            seen.push(reply);
        }
        std::thread::sleep(Duration::from_millis(100));
        false
    });
    if !ok {
        let seen: Vec<String> = seen.iter().map(|r| lagwise_tests::escape(r)).collect();
        panic!(
            "{what}: SET {key} did not get {} within {EVENT_TIMEOUT:?}; replies: {seen:?}\n{}",
            lagwise_tests::escape(want),
            replication_report(&[("primary", primary)])
        );
    }
    seen
}

fn min_replicas_gate_writes_on_the_primary(kinds: Kinds) {
    let mut pair = empty_pair(
        kinds,
        &[
            "--min-replicas-to-write",
            "1",
            "--min-replicas-max-lag",
            "2",
        ],
        &[],
    );
    let mut raw = patient_raw(&pair.primary);
    // The count of good replicas is refreshed once a second: the first SETs may be refused.
    set_until(
        &mut raw,
        "healthy",
        b"+OK\r\n",
        "with a healthy replica",
        &pair.primary,
    );

    {
        let _frozen = Frozen::new(&mut pair.replica);
        let frozen_at = Instant::now();
        // Its last ack is under a second old: well within the allowed lag of 2 s. (Only
        // checked when this SET came back quickly: a slow machine proves nothing here.)
        let reply = cmd_str(&mut raw, &["SET", "just-frozen", "v"]);
        if frozen_at.elapsed() < Duration::from_millis(500) {
            assert_reply!(
                reply,
                b"+OK\r\n",
                "SET right after the replica froze (its lag is still under 2 s)"
            );
        }
        let before = set_until(
            &mut raw,
            "frozen",
            NOREPLICAS,
            "with the replica frozen",
            &pair.primary,
        );
        assert!(
            before.iter().all(|r| r == b"+OK\r\n"),
            "before NOREPLICAS, SETs got: {:?}",
            before
                .iter()
                .map(|r| lagwise_tests::escape(r))
                .collect::<Vec<_>>()
        );
        // Only writes are refused.
        assert_reply!(cmd_str(&mut raw, &["GET", "healthy"]), bulk("v"));
        assert_reply!(cmd_str(&mut raw, &["INCR", "refused"]), NOREPLICAS);
        assert_reply!(cmd_str(&mut raw, &["EXISTS", "refused"]), b":0\r\n");
    }

    set_until(
        &mut raw,
        "thawed",
        b"+OK\r\n",
        "after the replica resumed",
        &pair.primary,
    );
    wait_in_sync(&pair.primary, &pair.replica);
    assert_same_dataset(&pair.primary, &pair.replica);
}

// ------------------------------------------------------------------------------------------
// ROLE and INFO

/// The bulk strings of a reply, as text, or a panic naming `what`.
fn bulk_text(v: &Value, what: &str) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        other => panic!("{what}: expected a bulk string, got {other:?}"),
    }
}

fn int_value(v: &Value, what: &str) -> i64 {
    match v {
        Value::Int(n) => *n,
        other => panic!("{what}: expected an integer, got {other:?}"),
    }
}

/// ROLE on a primary: `["master", offset, [[ip, port, offset], ...]]` with the inner
/// values as bulk strings. Returns the primary's offset and each replica's entry.
fn primary_role(server: &ServerProcess) -> (i64, Vec<(String, String, i64)>) {
    let reply = parse_reply(&cmd_str(&mut server.raw(), &["ROLE"]));
    let Value::Array(items) = &reply else {
        panic!("ROLE on the primary: {reply:?}");
    };
    assert_eq!(items.len(), 3, "ROLE on the primary: {reply:?}");
    assert_eq!(bulk_text(&items[0], "ROLE[0]"), "master", "{reply:?}");
    let offset = int_value(&items[1], "ROLE[1], the primary's offset");
    let Value::Array(replicas) = &items[2] else {
        panic!("ROLE[2] on the primary should be an array: {reply:?}");
    };
    let replicas = replicas
        .iter()
        .map(|entry| match entry {
            Value::Array(f) if f.len() == 3 => {
                let acked = bulk_text(&f[2], "a replica's offset in ROLE");
                (
                    bulk_text(&f[0], "a replica's ip in ROLE"),
                    bulk_text(&f[1], "a replica's port in ROLE"),
                    acked
                        .parse()
                        .unwrap_or_else(|_| panic!("offset {acked:?} in ROLE: {reply:?}")),
                )
            }
            other => panic!("a replica's entry in ROLE should be [ip, port, offset]: {other:?}"),
        })
        .collect();
    (offset, replicas)
}

/// Fields of a replica's INFO replication, in Redis 7.0's order.
const REPLICA_FIELDS: &[&str] = &[
    "role",
    "master_host",
    "master_port",
    "master_link_status",
    "master_last_io_seconds_ago",
    "master_sync_in_progress",
    "slave_read_repl_offset",
    "slave_repl_offset",
    "slave_priority",
    "slave_read_only",
    "replica_announced",
    "connected_slaves",
    "master_failover_state",
    "master_replid",
    "master_replid2",
    "master_repl_offset",
    "second_repl_offset",
    "repl_backlog_active",
    "repl_backlog_size",
    "repl_backlog_first_byte_offset",
    "repl_backlog_histlen",
];

/// Fields of a primary's INFO replication (with one replica), in Redis 7.0's order.
const PRIMARY_FIELDS: &[&str] = &[
    "role",
    "connected_slaves",
    "slave0",
    "master_failover_state",
    "master_replid",
    "master_replid2",
    "master_repl_offset",
    "second_repl_offset",
    "repl_backlog_active",
    "repl_backlog_size",
    "repl_backlog_first_byte_offset",
    "repl_backlog_histlen",
];

fn assert_field_order(server: &ServerProcess, expected: &[&str], fields: &[(String, String)]) {
    let names: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        expected,
        "INFO replication fields of {} at {}",
        server.kind(),
        server.addr()
    );
}

/// A backlog's first byte and length agree with the offset: `first + histlen - 1 == offset`
/// (the backlog has not wrapped: these tests write little).
fn assert_backlog_consistent(i: &Info, who: &str) {
    assert_eq!(i.int("repl_backlog_active"), 1, "{who} INFO:\n{}", i.raw);
    assert_eq!(
        i.int("repl_backlog_first_byte_offset") + i.int("repl_backlog_histlen") - 1,
        i.int("master_repl_offset"),
        "{who}: repl_backlog_first_byte_offset + repl_backlog_histlen - 1 should be \
         master_repl_offset; INFO:\n{}",
        i.raw
    );
}

fn role_and_info_describe_both_sides(kinds: Kinds) {
    // No PINGs from the primary (every 10 s by default): the offsets stay put while ROLE and
    // INFO are read from the two servers one after the other.
    let pair = empty_pair(kinds, &["--repl-ping-replica-period", "3600"], &[]);
    let mut p = connect(&pair.primary);
    for i in 0..10 {
        let _: () = call(&mut p, &["SET", &format!("k{i}"), "v"]);
    }
    wait_in_sync(&pair.primary, &pair.replica);

    // ROLE on the primary, once the replica's ack (sent every second) caught up.
    let mut last = (0, Vec::new());
    let acked = poll(EVENT_TIMEOUT, || {
        last = primary_role(&pair.primary);
        last.1.len() == 1 && last.1[0].2 == last.0
    });
    assert!(
        acked,
        "ROLE on the primary: the replica's offset did not reach the primary's: {last:?}\n{}",
        report(&pair)
    );
    let (offset, replicas) = last;
    assert!(offset > 0, "the primary's offset after 10 writes: {offset}");
    assert_eq!(
        replicas,
        vec![(
            "127.0.0.1".to_string(),
            pair.replica.port().to_string(),
            offset
        )],
        "ROLE on the primary: [ip, listening port, acked offset] of its replica"
    );

    // ROLE on the replica: ["slave", host, port, "connected", offset].
    let reply = parse_reply(&cmd_str(&mut pair.replica.raw(), &["ROLE"]));
    let expected = Value::Array(vec![
        Value::BulkString(b"slave".to_vec()),
        Value::BulkString(b"127.0.0.1".to_vec()),
        Value::Int(i64::from(pair.primary.port())),
        Value::BulkString(b"connected".to_vec()),
        Value::Int(offset),
    ]);
    assert_eq!(reply, expected, "ROLE on the replica\n{}", report(&pair));

    // INFO replication on the replica.
    let fields = replication_fields(&pair.replica);
    assert_field_order(&pair.replica, REPLICA_FIELDS, &fields);
    let r = info(&pair.replica);
    let pi = info(&pair.primary);
    let replid = pi.text("master_replid").to_string();
    assert!(
        replid.len() == 40 && replid.bytes().all(|b| b.is_ascii_hexdigit()),
        "master_replid of the primary: {replid:?}"
    );
    let zeros = "0".repeat(40);
    let port = pair.primary.port().to_string();
    let offset_text = offset.to_string();
    for (field, want) in [
        ("role", "slave"),
        ("master_host", "127.0.0.1"),
        ("master_port", port.as_str()),
        ("master_link_status", "up"),
        ("master_sync_in_progress", "0"),
        ("slave_read_repl_offset", offset_text.as_str()),
        ("slave_repl_offset", offset_text.as_str()),
        ("slave_priority", "100"),
        ("slave_read_only", "1"),
        ("replica_announced", "1"),
        ("connected_slaves", "0"),
        ("master_failover_state", "no-failover"),
        ("master_replid", replid.as_str()),
        ("master_replid2", zeros.as_str()),
        ("master_repl_offset", offset_text.as_str()),
        ("second_repl_offset", "-1"),
        ("repl_backlog_size", "1048576"),
    ] {
        assert_eq!(
            r.get(field),
            Some(want),
            "replica {field}; INFO:\n{}",
            r.raw
        );
    }
    assert!(
        r.int("master_last_io_seconds_ago") >= 0,
        "master_last_io_seconds_ago; INFO:\n{}",
        r.raw
    );
    assert_backlog_consistent(&r, "replica");

    // INFO replication on the primary.
    let fields = replication_fields(&pair.primary);
    assert_field_order(&pair.primary, PRIMARY_FIELDS, &fields);
    for (field, want) in [
        ("role", "master"),
        ("connected_slaves", "1"),
        ("master_failover_state", "no-failover"),
        ("master_replid2", zeros.as_str()),
        ("master_repl_offset", offset_text.as_str()),
        ("second_repl_offset", "-1"),
        ("repl_backlog_size", "1048576"),
    ] {
        assert_eq!(
            pi.get(field),
            Some(want),
            "primary {field}; INFO:\n{}",
            pi.raw
        );
    }
    assert_backlog_consistent(&pi, "primary");
    let slave0 = pi.text("slave0");
    let parts: Vec<(&str, &str)> = slave0
        .split(',')
        .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
        .collect();
    let names: Vec<&str> = parts.iter().map(|(k, _)| *k).collect();
    assert_eq!(
        names,
        ["ip", "port", "state", "offset", "lag"],
        "slave0:{slave0}"
    );
    let replica_port = pair.replica.port().to_string();
    assert_eq!(parts[0].1, "127.0.0.1", "slave0:{slave0}");
    assert_eq!(parts[1].1, replica_port, "slave0:{slave0}");
    assert_eq!(parts[2].1, "online", "slave0:{slave0}");
    assert_eq!(parts[3].1, offset_text, "slave0:{slave0}");
    assert!(
        parts[4].1.parse::<u64>().is_ok(),
        "slave0 lag should be a number of seconds: {slave0}"
    );

    // INFO stats: one full sync so far. A fresh replica was a primary: it first asks to
    // continue its own history (PSYNC <its replid> <offset+1>), which the primary counts as a
    // failed partial resync before it falls back to a full one.
    assert_eq!(pi.int("sync_full"), 1, "primary INFO:\n{}", pi.raw);
    assert_eq!(pi.int("sync_partial_ok"), 0, "primary INFO:\n{}", pi.raw);
    assert_eq!(
        pi.int("sync_partial_err"),
        1,
        "sync_partial_err on the primary: the replica's first PSYNC should have named its own \
         history (not `PSYNC ? -1`); primary INFO:\n{}",
        pi.raw
    );
    for field in ["sync_full", "sync_partial_ok", "sync_partial_err"] {
        assert_eq!(r.int(field), 0, "replica {field}; INFO:\n{}", r.raw);
    }
}

// ------------------------------------------------------------------------------------------
// Several replicas at once

/// Two replicas ask for a full sync within the primary's `repl-diskless-sync-delay`: both
/// are served from one snapshot. Writes go on meanwhile, so two snapshots would start at
/// two offsets; one snapshot gives both replicas the same `+FULLRESYNC` offset.
fn replicas_attaching_together_share_one_snapshot(kinds: Kinds) {
    let primary = start_node(kinds.primary, &["--repl-diskless-sync-delay", "2"]);
    let keys = load_mixed_dataset(&primary);
    let a = start_node(kinds.replica, &[]);
    let b = start_node(kinds.replica, &[]);
    let load = WriteLoad::start(&primary);
    load.wait_ops(200);
    let asked = Instant::now();
    replicaof(&a, &primary);
    replicaof(&b, &primary);
    let apart = asked.elapsed();
    for replica in [&a, &b] {
        wait_info(replica, "master_link_status:up", |r| r.link_up());
    }
    load.wait_ops(200);
    let ops = load.stop();
    wait_in_sync(&primary, &a);
    wait_in_sync(&primary, &b);
    assert_same_dataset(&primary, &a);
    assert_same_dataset(&primary, &b);
    assert!(
        dbsize(&a) >= keys as i64,
        "keys on replica a after the sync"
    );

    let p = info(&primary);
    assert_eq!(
        p.int("sync_full"),
        2,
        "two replicas, one full sync each; primary INFO:\n{}",
        p.raw
    );
    assert_eq!(p.int("connected_slaves"), 2, "primary INFO:\n{}", p.raw);

    let resyncs_a = logged_full_resyncs(&a);
    let resyncs_b = logged_full_resyncs(&b);
    assert_eq!(
        resyncs_a.len(),
        1,
        "full resyncs logged by replica a:\n{}",
        a.log()
    );
    assert_eq!(
        resyncs_b.len(),
        1,
        "full resyncs logged by replica b:\n{}",
        b.log()
    );
    assert_eq!(
        resyncs_a, resyncs_b,
        "the two replicas (REPLICAOF {apart:?} apart, {ops} writes going on) should have \
         been sent one snapshot, at one offset"
    );
    if kinds.primary == ServerKind::Redis {
        let snapshots = primary
            .log()
            .lines()
            .filter(|l| l.contains("Starting BGSAVE for SYNC"))
            .count();
        assert_eq!(snapshots, 1, "BGSAVEs for SYNC:\n{}", primary.log());
    }
}

// ------------------------------------------------------------------------------------------
// PUBLISH through the replication stream

fn publish_reaches_subscribers_of_the_replica(kinds: Kinds) {
    let pair = empty_pair(kinds, &[], &[]);
    let mut sub = patient_raw(&pair.replica);
    assert_reply!(
        cmd_str(&mut sub, &["SUBSCRIBE", "news"]),
        b"*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n"
    );
    assert_reply!(
        cmd_str(&mut sub, &["PSUBSCRIBE", "ne*"]),
        b"*3\r\n$10\r\npsubscribe\r\n$3\r\nne*\r\n:2\r\n"
    );
    let mut shard = patient_raw(&pair.replica);
    assert_reply!(
        cmd_str(&mut shard, &["SSUBSCRIBE", "shard"]),
        b"*3\r\n$10\r\nssubscribe\r\n$5\r\nshard\r\n:1\r\n"
    );

    let mut p = connect(&pair.primary);
    let receivers: i64 = call(&mut p, &["PUBLISH", "news", "hello from the primary"]);
    assert_eq!(
        receivers, 0,
        "PUBLISH counts the primary's own subscribers only"
    );
    assert_reply!(
        sub.read_reply(),
        bulks(&["message", "news", "hello from the primary"]),
        "the channel subscriber on the replica"
    );
    assert_reply!(
        sub.read_reply(),
        bulks(&["pmessage", "ne*", "news", "hello from the primary"]),
        "the pattern subscriber on the replica"
    );

    let receivers: i64 = call(&mut p, &["SPUBLISH", "shard", "sharded"]);
    assert_eq!(
        receivers, 0,
        "SPUBLISH counts the primary's own subscribers only"
    );
    assert_reply!(
        shard.read_reply(),
        bulks(&["smessage", "shard", "sharded"]),
        "the shard channel subscriber on the replica"
    );

    // Messages and writes keep their order.
    let _: () = call(&mut p, &["SET", "after", "1"]);
    let _: i64 = call(&mut p, &["PUBLISH", "news", "second"]);
    assert_reply!(sub.read_reply(), bulks(&["message", "news", "second"]));
    assert_reply!(
        sub.read_reply(),
        bulks(&["pmessage", "ne*", "news", "second"])
    );
    let after: Option<String> = exec(&pair.replica, &["GET", "after"]);
    assert_eq!(
        after.as_deref(),
        Some("1"),
        "a write published before the message is applied when the message arrives"
    );
    assert!(
        sub.pending().is_empty(),
        "unexpected extra data for the subscriber: {}",
        lagwise_tests::escape(sub.pending())
    );
}

// ------------------------------------------------------------------------------------------
// Blocking pops

/// Sends a blocking command on a new connection to `server` and returns the connection
/// once the server reports `blocked` blocked clients.
fn block(server: &ServerProcess, args: &[&str], blocked: i64) -> RawConn {
    let mut raw = patient_raw(server);
    let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
    raw.send(&encode_command(&args));
    wait_blocked_clients(server, blocked);
    raw
}

fn blocking_pops_replicate_as_their_effect(kinds: Kinds) {
    let pair = empty_pair(kinds, &[], &[]);
    let primary = &pair.primary;
    let mut feed = primary.raw();

    let mut waiter = block(primary, &["BLPOP", "bl:list", "0"], 1);
    assert_reply!(
        cmd_str(&mut feed, &["LPUSH", "bl:list", "a", "b", "c"]),
        b":3\r\n"
    );
    assert_reply!(waiter.read_reply(), bulks(&["bl:list", "c"]), "BLPOP");

    let mut waiter = block(
        primary,
        &["BLMOVE", "bl:src", "bl:dst", "LEFT", "RIGHT", "0"],
        1,
    );
    assert_reply!(
        cmd_str(&mut feed, &["RPUSH", "bl:src", "x", "y"]),
        b":2\r\n"
    );
    assert_reply!(waiter.read_reply(), bulk("x"), "BLMOVE");

    let mut waiter = block(primary, &["BZPOPMIN", "bl:zset", "0"], 1);
    assert_reply!(
        cmd_str(
            &mut feed,
            &["ZADD", "bl:zset", "2", "b", "1", "a", "3", "c"]
        ),
        b":3\r\n"
    );
    assert_reply!(
        waiter.read_reply(),
        bulks(&["bl:zset", "a", "1"]),
        "BZPOPMIN"
    );

    // Two clients blocked on one key: one push serves both, in the order they blocked.
    let mut first = block(primary, &["BLPOP", "bl:many", "0"], 1);
    let mut second = block(primary, &["BRPOP", "bl:many", "0"], 2);
    assert_reply!(
        cmd_str(&mut feed, &["RPUSH", "bl:many", "1", "2", "3"]),
        b":3\r\n"
    );
    assert_reply!(first.read_reply(), bulks(&["bl:many", "1"]), "first BLPOP");
    assert_reply!(second.read_reply(), bulks(&["bl:many", "3"]), "then BRPOP");

    // A push that a blocked client takes whole leaves no key.
    let mut waiter = block(primary, &["BRPOP", "bl:gone", "0"], 1);
    assert_reply!(cmd_str(&mut feed, &["LPUSH", "bl:gone", "only"]), b":1\r\n");
    assert_reply!(waiter.read_reply(), bulks(&["bl:gone", "only"]), "BRPOP");

    wait_in_sync(&pair.primary, &pair.replica);
    let mut r = connect(&pair.replica);
    let list: Vec<String> = call(&mut r, &["LRANGE", "bl:list", "0", "-1"]);
    assert_eq!(
        list,
        ["b", "a"],
        "bl:list on the replica\n{}",
        report(&pair)
    );
    let src: Vec<String> = call(&mut r, &["LRANGE", "bl:src", "0", "-1"]);
    assert_eq!(src, ["y"], "bl:src on the replica");
    let dst: Vec<String> = call(&mut r, &["LRANGE", "bl:dst", "0", "-1"]);
    assert_eq!(dst, ["x"], "bl:dst on the replica");
    let zset: Vec<String> = call(&mut r, &["ZRANGE", "bl:zset", "0", "-1", "WITHSCORES"]);
    assert_eq!(zset, ["b", "2", "c", "3"], "bl:zset on the replica");
    let many: Vec<String> = call(&mut r, &["LRANGE", "bl:many", "0", "-1"]);
    assert_eq!(many, ["2"], "bl:many on the replica");
    let gone: i64 = call(&mut r, &["EXISTS", "bl:gone"]);
    assert_eq!(gone, 0, "bl:gone on the replica");
    assert_same_dataset(&pair.primary, &pair.replica);
}

// ------------------------------------------------------------------------------------------
// Random and relative writes

/// SPOP's random choice, INCRBYFLOAT's float arithmetic and relative TTLs (SET EX, GETEX
/// EX, SETEX, ...) must reach the replica as the result the primary computed. The replica
/// is frozen while they run, so that it applies them over a second late.
fn random_and_relative_writes_replicate_as_their_effect(kinds: Kinds) {
    let mut pair = empty_pair(kinds, &[], &[]);
    let mut p = connect(&pair.primary);
    let members: Vec<String> = (0..50).map(|i| format!("m{i}")).collect();
    let mut sadd = vec!["SADD", "spop:strings"];
    sadd.extend(members.iter().map(String::as_str));
    let _: i64 = call(&mut p, &sadd);
    let ints: Vec<String> = (0..40).map(|i| (i * 7).to_string()).collect();
    let mut sadd = vec!["SADD", "spop:ints"];
    sadd.extend(ints.iter().map(String::as_str));
    let _: i64 = call(&mut p, &sadd);
    let _: i64 = call(&mut p, &["SADD", "spop:small", "a", "b", "c"]);
    let _: i64 = call(&mut p, &["SADD", "spop:single", "only"]);
    let _: () = call(&mut p, &["SET", "float", "10.5"]);
    let _: () = call(&mut p, &["SET", "float:sci", "1"]);
    let _: () = call(&mut p, &["SET", "float:ttl", "1.5", "EX", "10000"]);
    let _: () = call(&mut p, &["SET", "getex:ex", "v"]);
    let _: () = call(&mut p, &["SET", "getex:px", "v"]);
    let _: () = call(&mut p, &["SET", "getex:persist", "v", "EX", "500"]);
    wait_in_sync(&pair.primary, &pair.replica);

    let popped: Vec<String>;
    {
        let _frozen = Frozen::new(&mut pair.replica);
        let one: String = call(&mut p, &["SPOP", "spop:strings"]);
        let mut some: Vec<String> = call(&mut p, &["SPOP", "spop:strings", "5"]);
        let ints_popped: Vec<String> = call(&mut p, &["SPOP", "spop:ints", "3"]);
        let all: Vec<String> = call(&mut p, &["SPOP", "spop:small", "10"]);
        let last: String = call(&mut p, &["SPOP", "spop:single"]);
        assert_eq!(some.len(), 5, "SPOP spop:strings 5");
        assert_eq!(ints_popped.len(), 3, "SPOP spop:ints 3");
        assert_eq!(all.len(), 3, "SPOP spop:small 10 on a set of 3");
        assert_eq!(last, "only");
        some.push(one);
        popped = some;

        for _ in 0..3 {
            let _: String = call(&mut p, &["INCRBYFLOAT", "float", "0.1"]);
        }
        let _: String = call(&mut p, &["INCRBYFLOAT", "float:sci", "3.0e3"]);
        let _: String = call(&mut p, &["INCRBYFLOAT", "float:ttl", "0.25"]);
        let _: String = call(&mut p, &["INCRBYFLOAT", "float:new", "-5.5e-3"]);

        let _: () = call(&mut p, &["SET", "ttl:set-ex", "v", "EX", "100"]);
        let _: () = call(&mut p, &["SET", "ttl:set-px", "v", "PX", "150000"]);
        let _: () = call(&mut p, &["SETEX", "ttl:setex", "200", "v"]);
        let _: () = call(&mut p, &["PSETEX", "ttl:psetex", "250000", "v"]);
        let _: Option<String> = call(&mut p, &["SET", "ttl:set-ex-get", "v", "EX", "300", "GET"]);
        let _: Option<String> = call(&mut p, &["GETEX", "getex:ex", "EX", "350"]);
        let _: Option<String> = call(&mut p, &["GETEX", "getex:px", "PX", "400000"]);
        let _: Option<String> = call(&mut p, &["GETEX", "getex:persist", "PERSIST"]);
        std::thread::sleep(REPLICA_DELAY);
    }
    wait_in_sync(&pair.primary, &pair.replica);

    let mut r = connect(&pair.replica);
    for key in ["spop:strings", "spop:ints"] {
        let mut on_primary: Vec<String> = call(&mut p, &["SMEMBERS", key]);
        let mut on_replica: Vec<String> = call(&mut r, &["SMEMBERS", key]);
        on_primary.sort();
        on_replica.sort();
        assert_eq!(
            on_replica, on_primary,
            "{key} on the replica vs the primary"
        );
    }
    let mut left: Vec<String> = call(&mut r, &["SMEMBERS", "spop:strings"]);
    left.extend(popped);
    left.sort();
    let mut all = members.clone();
    all.sort();
    assert_eq!(
        left, all,
        "spop:strings on the replica plus what SPOP returned"
    );
    for key in ["spop:small", "spop:single"] {
        let exists: i64 = call(&mut r, &["EXISTS", key]);
        assert_eq!(exists, 0, "{key}, emptied by SPOP, on the replica");
    }

    for (key, want) in [
        ("float", "10.8"),
        ("float:sci", "3001"),
        ("float:ttl", "1.75"),
        ("float:new", "-0.0055"),
    ] {
        let on_primary: String = call(&mut p, &["GET", key]);
        let on_replica: String = call(&mut r, &["GET", key]);
        assert_eq!(on_primary, want, "{key} on the primary");
        assert_eq!(
            on_replica, on_primary,
            "{key} on the replica vs the primary"
        );
    }
    for key in [
        "float:ttl",
        "ttl:set-ex",
        "ttl:set-px",
        "ttl:setex",
        "ttl:psetex",
        "ttl:set-ex-get",
        "getex:ex",
        "getex:px",
    ] {
        assert_same_expiry(&pair, key);
    }
    assert_eq!(
        pexpiretime(&pair.replica, "getex:persist"),
        -1,
        "GETEX PERSIST on the replica"
    );
    assert_eq!(
        pexpiretime(&pair.replica, "float"),
        -1,
        "INCRBYFLOAT on a key without TTL gives it none on the replica"
    );
    assert_same_dataset(&pair.primary, &pair.replica);
}
