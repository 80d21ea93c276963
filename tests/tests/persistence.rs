#![allow(clippy::unwrap_used)]
//! Persistence end to end: RDB snapshots (SAVE, BGSAVE, save points, shutdown), loading at
//! start (corrupt files refused, cross-loading between lagwise-node and redis-server) and the
//! append-only file (durability across kill -9, a cut tail, rewrites, turning it on at run
//! time, transactions).
//!
//! Every test runs against the server chosen by `LAGWISE_TEST_TARGET` (lagwise by default,
//! `redis` to check the test against redis-server 7.0), except the cross-loading tests,
//! which use both kinds (redis alone under `LAGWISE_TEST_TARGET=redis`).
//!
//! The AOF layout differs by design: lagwise-node writes one file, `<dir>/appendonly.aof`
//! (an RDB preamble, then RESP commands); redis-server 7.0 writes `<dir>/appendonlydir/`
//! (a manifest, a base file, an incremental file). The tests that edit the file work on the
//! file new commands go to ([`aof_tail_path`]), which exists in both layouts; so every test
//! here runs against both servers.
//!
//! Assertions carry no upper time bounds: waits are generous ([`PERSIST_TIMEOUT`]) and fail
//! with the server's INFO persistence; the server's log is printed when a test fails.
//!
//! Reference behaviour found on redis-server 7.0 that the tests rely on:
//! - A bad dump.rdb stops start-up with exit status 1: a flipped byte in a value is
//!   "Wrong RDB checksum ... RDB CRC error", a cut file "Unexpected EOF reading RDB file".
//!   The file is left as it was.
//! - A partial command at the end of the AOF is cut off ("AOF loaded anyway because
//!   aof-load-truncated is enabled"), or refused with `aof-load-truncated no`; a file that
//!   ends inside MULTI loses the whole transaction ("Revert incomplete MULTI/EXEC
//!   transaction"). A damaged command in the middle ("Bad file format") stops start-up.
//! - A second BGSAVE while one runs: "ERR Background save already in progress".
//!
//! The log lines checked are per kind: each server words them its own way.

use std::collections::BTreeMap;
use std::fs;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use lagwise_tests::differential::Rng;
use lagwise_tests::persistence::{
    aof_disk_size, aof_exists, aof_tail_path, append_to, assert_appended_to, assert_same_snapshot,
    missing_writes, persistence_info, rdb_path, read_file, sleep_past_second,
    start_expecting_failure, start_with_rdb, wait_bgsave_done, wait_persistence, wait_rewrite_done,
    PERSIST_TIMEOUT,
};
use lagwise_tests::replication::{
    call, clock_seed, connect, dbsize, exec, load_bulk, load_mixed_dataset, poll, Snapshot,
};
use lagwise_tests::{target_kind, ServerKind, ServerProcess};

/// An AOF that is fsynced before every reply, so that kill -9 loses nothing acknowledged.
const AOF_ALWAYS: &[&str] = &["--appendonly", "yes", "--appendfsync", "always"];

/// `kind`, or redis-server when the tests are checked against the reference.
fn kind_or_reference(kind: ServerKind) -> ServerKind {
    match target_kind() {
        ServerKind::Redis => ServerKind::Redis,
        ServerKind::Lagwise => kind,
    }
}

/// The mixed dataset plus `bulk` plain keys, in `server`.
fn load_dataset(server: &ServerProcess, bulk: usize) {
    load_mixed_dataset(server);
    if bulk > 0 {
        load_bulk(server, bulk, 100);
    }
}

/// SAVE, checking the reply.
fn save(server: &ServerProcess) {
    let reply: String = exec(server, &["SAVE"]);
    assert_eq!(reply, "OK", "SAVE on {}", server.kind());
}

// ------------------------------------------------------------------------------------------
// RDB: SAVE and BGSAVE

/// SAVE writes every key, type, encoding edge and TTL; a restart loads them all.
#[test]
fn save_then_restart_keeps_every_key() {
    let mut server = ServerProcess::target(&[]);
    load_dataset(&server, 5_000);
    let before = Snapshot::take(&server);
    save(&server);
    assert!(
        rdb_path(&server).is_file(),
        "SAVE wrote no {}",
        rdb_path(&server).display()
    );

    server.restart(&[]);
    let after = Snapshot::take(&server);
    assert_same_snapshot(&before, &after, "after SAVE and a restart");
}

/// BGSAVE replies at once and saves in the background: `rdb_bgsave_in_progress` is 1,
/// then 0; LASTSAVE moves forward; the file is there and a restart loads it.
#[test]
fn bgsave_runs_in_background_and_is_loaded_at_start() {
    let mut server = ServerProcess::target(&[]);
    // Enough data for the save to take a moment, so that it is seen in progress.
    load_dataset(&server, 200_000);
    let before = Snapshot::take(&server);
    let mut con = connect(&server);
    let lastsave_before: i64 = call(&mut con, &["LASTSAVE"]);
    let saves_before = persistence_info(&server).int("rdb_saves");
    sleep_past_second(lastsave_before);

    let reply: String = call(&mut con, &["BGSAVE"]);
    assert_eq!(reply, "Background saving started");
    let first = persistence_info(&server);
    assert_eq!(
        first.int("rdb_bgsave_in_progress"),
        1,
        "right after BGSAVE replied (200k keys to write), no save in progress:\n{}",
        first.raw
    );
    // The server keeps serving while it saves.
    let pong: String = call(&mut con, &["PING"]);
    assert_eq!(pong, "PONG");

    let done = wait_bgsave_done(&server);
    assert_eq!(
        done.int("rdb_saves"),
        saves_before + 1,
        "rdb_saves:\n{}",
        done.raw
    );
    assert_eq!(done.int("rdb_changes_since_last_save"), 0, "{}", done.raw);
    let lastsave: i64 = call(&mut con, &["LASTSAVE"]);
    assert!(
        lastsave > lastsave_before,
        "LASTSAVE {lastsave} after BGSAVE, {lastsave_before} before"
    );
    assert!(
        rdb_path(&server).is_file(),
        "no {}",
        rdb_path(&server).display()
    );

    server.restart(&[]);
    let after = Snapshot::take(&server);
    assert_same_snapshot(&before, &after, "after BGSAVE and a restart");
}

/// A second BGSAVE while one runs is refused; `BGSAVE SCHEDULE` during an AOF rewrite
/// starts or schedules a save, which then happens and can be loaded.
#[test]
fn bgsave_while_a_save_or_rewrite_runs() {
    let mut server = ServerProcess::target(&["--appendonly", "yes"]);
    wait_rewrite_done(&server);
    load_bulk(&server, 200_000, 100);
    let mut con = connect(&server);

    let reply: String = call(&mut con, &["BGSAVE"]);
    assert_eq!(reply, "Background saving started");
    let second = redis::cmd("BGSAVE")
        .query::<String>(&mut con)
        .map_err(|e| lagwise_tests::err_text(&e));
    match &second {
        Err(e) if e.contains("already in progress") => {}
        other => panic!(
            "a BGSAVE while one runs (200k keys) replied {other:?}; INFO persistence:\n{}",
            persistence_info(&server).raw
        ),
    }
    let saves = wait_bgsave_done(&server).int("rdb_saves");

    let reply: String = call(&mut con, &["BGREWRITEAOF"]);
    assert!(
        reply.starts_with("Background append only file rewriting"),
        "BGREWRITEAOF replied {reply:?}"
    );
    let _: () = call(&mut con, &["SET", "during:rewrite", "1"]);
    let reply: String = call(&mut con, &["BGSAVE", "SCHEDULE"]);
    assert!(
        reply == "Background saving started" || reply == "Background saving scheduled",
        "BGSAVE SCHEDULE during a rewrite replied {reply:?}"
    );
    wait_persistence(&server, "done with the scheduled save", |i| {
        i.int("rdb_saves") > saves
            && i.int("rdb_bgsave_in_progress") == 0
            && i.int("aof_rewrite_in_progress") == 0
    });
    wait_rewrite_done(&server);
    wait_bgsave_done(&server);
    drop(con);

    // The RDB alone (the AOF off) holds everything written before BGSAVE SCHEDULE.
    server.sigkill();
    server.restart(&["--appendonly", "no"]);
    assert_eq!(dbsize(&server), 200_001, "keys loaded from dump.rdb");
    let value: Option<String> = exec(&server, &["GET", "during:rewrite"]);
    assert_eq!(value.as_deref(), Some("1"));
}

/// A thread running transactions `MULTI; INCR a; SET bulk:<r> w:<n>; INCR b; SET last <n>;
/// EXEC` (n = 1, 2, ...; r random below `keys`) until stopped. It records which key each
/// transaction overwrote and counts the transactions whose EXEC was answered.
struct TransactionLoad {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    touched: Arc<Mutex<Vec<u64>>>,
    thread: Option<JoinHandle<()>>,
}

impl TransactionLoad {
    fn start(server: &ServerProcess, keys: u64) -> TransactionLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let touched = Arc::new(Mutex::new(Vec::new()));
        let mut con = connect(server);
        let seed = clock_seed();
        let thread = {
            let (stop, done, touched) = (stop.clone(), done.clone(), touched.clone());
            std::thread::spawn(move || {
                let mut rng = Rng::new(seed);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let r = rng.below(keys);
                    touched.lock().unwrap().push(r);
                    let mut pipe = redis::pipe();
                    pipe.atomic()
                        .cmd("INCR")
                        .arg("a")
                        .cmd("SET")
                        .arg(format!("bulk:{r}"))
                        .arg(format!("w:{n}"))
                        .cmd("INCR")
                        .arg("b")
                        .cmd("SET")
                        .arg("last")
                        .arg(n);
                    let (a, _, b, _): (u64, (), u64, ()) = pipe
                        .query(&mut con)
                        .unwrap_or_else(|e| panic!("transaction {n} failed: {e}"));
                    assert_eq!((a, b), (n, n), "transaction {n} saw a={a} b={b}");
                    done.store(n, Ordering::Release);
                }
            })
        };
        TransactionLoad {
            stop,
            done,
            touched,
            thread: Some(thread),
        }
    }

    fn done(&self) -> u64 {
        self.done.load(Ordering::Acquire)
    }

    /// Waits until at least `n` transactions were answered.
    fn wait_done(&self, n: u64) {
        assert!(
            poll(PERSIST_TIMEOUT, || self.done() >= n),
            "the transaction load did not reach {n} transactions (at {})",
            self.done()
        );
    }

    /// Stops the thread; returns how many transactions were answered and the key each
    /// transaction overwrote (index n - 1).
    fn finish(mut self) -> (u64, Vec<u64>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the transaction load panicked");
        }
        (self.done(), self.touched.lock().unwrap().clone())
    }
}

impl Drop for TransactionLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A BGSAVE taken while transactions run is a snapshot of one moment: loaded into a
/// fresh server, `a == b == last`, each overwritten key holds the value of the last
/// transaction up to that moment (or its original value), and nothing else is there.
#[test]
fn bgsave_snapshot_is_one_moment_under_load() {
    const KEYS: u64 = 200_000;
    let server = ServerProcess::target(&[]);
    load_bulk(&server, KEYS as usize, 100);
    let original: String = exec(&server, &["GET", "bulk:0"]);

    let load = TransactionLoad::start(&server, KEYS);
    load.wait_done(200);
    let lower = load.done();
    let reply: String = exec(&server, &["BGSAVE"]);
    assert_eq!(reply, "Background saving started");
    wait_bgsave_done(&server);
    let upper = load.done();
    // Let the load run on past the save, so that the file must leave those writes out.
    load.wait_done(upper + 200);
    let (total, touched) = load.finish();

    let rdb = read_file(&rdb_path(&server));
    let copy = start_with_rdb(server.kind(), &rdb, &[]);
    let mut con = connect(&copy);
    let a: u64 = call(&mut con, &["GET", "a"]);
    let b: u64 = call(&mut con, &["GET", "b"]);
    let last: u64 = call(&mut con, &["GET", "last"]);
    assert_eq!(
        (a, b),
        (last, last),
        "the snapshot is not one moment: a={a} b={b} last={last}"
    );
    // The save began after `lower` transactions were answered and ended before `upper + 1`
    // (the one in flight when the end was seen) were.
    assert!(
        (lower..=upper + 1).contains(&last),
        "the snapshot holds {last} transactions; BGSAVE was sent after {lower} and seen done \
         after {upper} (of {total})"
    );
    assert_eq!(dbsize(&copy), KEYS as i64 + 3, "keys in the snapshot");

    let mut expected: BTreeMap<u64, String> = BTreeMap::new();
    for (i, r) in touched.iter().enumerate().take(total as usize) {
        let n = i as u64 + 1;
        let value = if n <= last {
            format!("w:{n}")
        } else {
            original.clone()
        };
        // A later transaction up to `last` wins; one after `last` never replaces it.
        if n <= last || !expected.contains_key(r) {
            expected.insert(*r, value);
        }
    }
    let expected: Vec<(String, String)> = expected
        .into_iter()
        .map(|(r, v)| (format!("bulk:{r}"), v))
        .collect();
    let (wrong, shown) = missing_writes(&copy, &expected);
    assert_eq!(
        wrong,
        0,
        "{wrong} of {} overwritten keys do not hold their value as of transaction {last}:\n  {}",
        expected.len(),
        shown.join("\n  ")
    );
}

/// A save point (`save 1 1`: one change within a second) starts a background save on
/// its own: `rdb_saves` and LASTSAVE move, the file appears and is loaded at restart.
#[test]
fn save_point_triggers_a_background_save() {
    let mut server = ServerProcess::target(&["--save", "1 1"]);
    assert!(
        !rdb_path(&server).exists(),
        "a fresh server already has a dump.rdb"
    );
    let saves_before = persistence_info(&server).int("rdb_saves");
    let lastsave_before: i64 = exec(&server, &["LASTSAVE"]);
    let _: () = exec(&server, &["SET", "saved:by", "a save point"]);

    let info = wait_persistence(&server, "saved by its save point", |i| {
        i.int("rdb_saves") > saves_before && i.int("rdb_bgsave_in_progress") == 0
    });
    assert_eq!(info.text("rdb_last_bgsave_status"), "ok", "{}", info.raw);
    assert_eq!(info.int("rdb_changes_since_last_save"), 0, "{}", info.raw);
    let lastsave: i64 = exec(&server, &["LASTSAVE"]);
    assert!(
        lastsave > lastsave_before,
        "LASTSAVE {lastsave}, {lastsave_before} before the save point's save"
    );
    assert!(
        rdb_path(&server).is_file(),
        "no {}",
        rdb_path(&server).display()
    );

    server.restart(&[]);
    let value: Option<String> = exec(&server, &["GET", "saved:by"]);
    assert_eq!(value.as_deref(), Some("a save point"));
}

/// With save points configured, SHUTDOWN and SIGTERM save first; SHUTDOWN NOSAVE does
/// not.
#[test]
fn shutdown_saves_when_save_points_are_configured() {
    // Save points that never trigger on their own during the test.
    const SAVE_POINTS: &[&str] = &["--save", "3600 1"];
    let mut server = ServerProcess::target(SAVE_POINTS);

    let shutdown = |server: &mut ServerProcess, args: &[&str]| {
        let mut raw = server.raw();
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        raw.send(&lagwise_tests::encode_command(&args));
        assert!(raw.expect_closed(), "{args:?}: the connection stayed open");
        let status = server.wait_exit(PERSIST_TIMEOUT);
        assert!(
            status.is_some_and(|s| s.success()),
            "{} after SHUTDOWN: {status:?}",
            server.kind()
        );
    };

    let _: () = exec(&server, &["SET", "by:shutdown", "1"]);
    shutdown(&mut server, &["SHUTDOWN"]);
    assert!(
        rdb_path(&server).is_file(),
        "SHUTDOWN with save points wrote no dump.rdb"
    );
    server.restart(SAVE_POINTS);
    let value: Option<String> = exec(&server, &["GET", "by:shutdown"]);
    assert_eq!(value.as_deref(), Some("1"), "key written before SHUTDOWN");

    let _: () = exec(&server, &["SET", "by:sigterm", "2"]);
    let status = server.terminate();
    assert!(status.success(), "exit after SIGTERM: {status}");
    server.restart(SAVE_POINTS);
    let value: Option<String> = exec(&server, &["GET", "by:sigterm"]);
    assert_eq!(value.as_deref(), Some("2"), "key written before SIGTERM");

    let _: () = exec(&server, &["SET", "by:nosave", "3"]);
    shutdown(&mut server, &["SHUTDOWN", "NOSAVE"]);
    server.restart(SAVE_POINTS);
    let value: Option<String> = exec(&server, &["GET", "by:nosave"]);
    assert_eq!(value, None, "SHUTDOWN NOSAVE saved anyway");
    let value: Option<String> = exec(&server, &["GET", "by:sigterm"]);
    assert_eq!(value.as_deref(), Some("2"));
}

// ------------------------------------------------------------------------------------------
// RDB: bad files and cross-loading

/// A server of the target kind with the mixed dataset, some bulk keys and a short marker
/// value, saved; it is killed and its directory returned with the file's bytes.
fn saved_server_with_marker(marker: &str) -> (ServerProcess, Vec<u8>) {
    let mut server = ServerProcess::target(&[]);
    load_dataset(&server, 2_000);
    // Short values are stored as is (never compressed): the marker can be found in the file.
    let _: () = exec(&server, &["SET", "marker", marker]);
    load_bulk(&server, 2_000, 100);
    save(&server);
    server.sigkill();
    let rdb = read_file(&rdb_path(&server));
    (server, rdb)
}

/// Starts the server's kind on its directory (holding a bad dump.rdb), expects it to exit
/// with an error that mentions the RDB, and checks the file was left as it was.
fn assert_refuses_rdb(server: &ServerProcess, bad: &[u8], problem: &[&str]) {
    fs::write(rdb_path(server), bad).unwrap();
    let failed = start_expecting_failure(server.kind(), server.dir(), &[]);
    assert!(
        !failed.status.success(),
        "{} exited with {} on a bad RDB:\n{}",
        server.kind(),
        failed.status,
        failed.log
    );
    let mentions = |word: &str| failed.log.to_lowercase().contains(&word.to_lowercase());
    assert!(
        mentions("rdb"),
        "the log does not mention the RDB:\n{}",
        failed.log
    );
    if server.kind() == ServerKind::Lagwise {
        assert!(
            mentions("dump.rdb"),
            "the log does not name the file:\n{}",
            failed.log
        );
    }
    assert!(
        problem.iter().any(|p| mentions(p)),
        "the log names none of {problem:?}:\n{}",
        failed.log
    );
    assert!(
        read_file(&rdb_path(server)) == bad,
        "the bad file was changed by the failed start"
    );
}

/// One flipped byte inside a value: the checksum catches it; the server refuses to
/// start (rather than starting empty or with part of the data) and leaves the file alone.
/// redis-server 7.0 does the same ("Wrong RDB checksum ... RDB CRC error", exit 1).
#[test]
fn rdb_with_a_flipped_byte_stops_startup() {
    const MARKER: &str = "marker-0123456789";
    let (server, rdb) = saved_server_with_marker(MARKER);
    let at = rdb
        .windows(MARKER.len())
        .position(|w| w == MARKER.as_bytes())
        .unwrap_or_else(|| panic!("{MARKER:?} is not stored as is in the RDB"));
    let mut bad = rdb.clone();
    bad[at + 10] ^= 0x01;
    assert_refuses_rdb(&server, &bad, &["checksum", "crc"]);
}

/// A file cut short (in the middle; just before its checksum) is refused the same way.
/// redis-server 7.0: "Short read ... Unexpected EOF reading RDB file", exit 1.
#[test]
fn truncated_rdb_stops_startup() {
    let (server, rdb) = saved_server_with_marker("marker");
    for cut in [rdb.len() / 2, rdb.len() - 9, rdb.len() - 1] {
        assert_refuses_rdb(
            &server,
            &rdb[..cut],
            &["truncated", "ends", "eof", "short read"],
        );
    }
}

/// Saves the mixed dataset (with TTLs) on a server of `from`, loads the file into a server
/// of `to`, and compares both key by key.
fn cross_load(from: ServerKind, to: ServerKind) {
    let source = ServerProcess::start(from, &[]);
    load_dataset(&source, 5_000);
    save(&source);
    let rdb = read_file(&rdb_path(&source));
    let target = start_with_rdb(to, &rdb, &[]);
    assert_same_snapshot(
        &Snapshot::take(&source),
        &Snapshot::take(&target),
        &format!("an RDB saved by {from}, loaded by {to}"),
    );
}

/// An RDB saved by lagwise-node loads in redis-server with the same data.
#[test]
fn rdb_saved_by_lagwise_loads_in_redis() {
    cross_load(kind_or_reference(ServerKind::Lagwise), ServerKind::Redis);
}

/// An RDB saved by redis-server loads in lagwise-node with the same data.
#[test]
fn rdb_saved_by_redis_loads_in_lagwise() {
    cross_load(ServerKind::Redis, kind_or_reference(ServerKind::Lagwise));
}

// ------------------------------------------------------------------------------------------
// AOF: durability

/// Client threads writing `SET k:<round>:<thread>:<i> v:<round>:<thread>:<i>` until an
/// error (the server was killed); each returns the writes that were answered OK.
fn start_acknowledged_writers(
    server: &ServerProcess,
    round: usize,
    threads: usize,
) -> Vec<JoinHandle<Vec<(String, String)>>> {
    (0..threads)
        .map(|t| {
            let mut con = connect(server);
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                for i in 0.. {
                    let key = format!("k:{round}:{t}:{i}");
                    let value = format!("v:{round}:{t}:{i}");
                    match redis::cmd("SET")
                        .arg(&key)
                        .arg(&value)
                        .query::<()>(&mut con)
                    {
                        Ok(()) => acked.push((key, value)),
                        Err(_) => break,
                    }
                }
                acked
            })
        })
        .collect()
}

/// `appendfsync always`: every write that was answered OK survives kill -9 in the middle
/// of a write load, over several kill/restart rounds (each restart replays the file the
/// previous rounds appended to).
#[test]
fn aof_always_keeps_every_acknowledged_write_across_kill9() {
    const ROUNDS: usize = 3;
    const THREADS: usize = 4;
    let mut server = ServerProcess::target(AOF_ALWAYS);
    let mut acked: Vec<(String, String)> = Vec::new();
    for round in 0..ROUNDS {
        let writers = start_acknowledged_writers(&server, round, THREADS);
        std::thread::sleep(Duration::from_secs(2));
        server.sigkill();
        let mut this_round = 0;
        for writer in writers {
            let writes = writer.join().expect("a writer thread panicked");
            this_round += writes.len();
            acked.extend(writes);
        }
        assert!(this_round > 0, "round {round}: no write was acknowledged");

        server.restart(AOF_ALWAYS);
        let (missing, shown) = missing_writes(&server, &acked);
        assert_eq!(
            missing,
            0,
            "round {round}: {missing} of {} acknowledged writes lost after kill -9:\n  {}",
            acked.len(),
            shown.join("\n  ")
        );
    }
}

/// A command cut short at the end of the AOF (a crash in the middle of a write): with
/// `aof-load-truncated no` the server refuses to start and leaves the file alone; with
/// `yes` (the default) it cuts the partial command off, says so in its log, loads the rest,
/// and appends cleanly after the cut.
#[test]
fn aof_truncated_tail_is_cut_or_refused() {
    let mut server = ServerProcess::target(AOF_ALWAYS);
    let expected: Vec<(String, String)> = (0..100)
        .map(|i| (format!("key:{i}"), format!("value:{i}")))
        .collect();
    let mut con = connect(&server);
    for (k, v) in &expected {
        let _: () = call(&mut con, &["SET", k, v]);
    }
    drop(con);
    server.sigkill();

    let tail = aof_tail_path(&server);
    let whole = read_file(&tail);
    append_to(&tail, b"*3\r\n$3\r\nSET\r\n$1\r\nk");
    let cut = read_file(&tail);

    let failed = start_expecting_failure(
        server.kind(),
        server.dir(),
        &["--appendonly", "yes", "--aof-load-truncated", "no"],
    );
    assert!(
        !failed.status.success(),
        "exit status {} with aof-load-truncated no:\n{}",
        failed.status,
        failed.log
    );
    assert!(
        read_file(&tail) == cut,
        "the failed start changed {}",
        tail.display()
    );

    server.restart(AOF_ALWAYS);
    let log = server.log();
    let said = match server.kind() {
        ServerKind::Lagwise => "incomplete command",
        ServerKind::Redis => "aof-load-truncated is enabled",
    };
    assert!(
        log.contains(said),
        "the log does not mention the cut tail ({said:?}):\n{log}"
    );
    let (missing, shown) = missing_writes(&server, &expected);
    assert_eq!(missing, 0, "keys lost:\n  {}", shown.join("\n  "));
    let partial: Option<String> = exec(&server, &["GET", "k"]);
    assert_eq!(partial, None, "the partial SET was applied");

    assert!(
        read_file(&tail) == whole,
        "{} is not back to its {} bytes before the partial command",
        tail.display(),
        whole.len()
    );

    // Appending goes on after the cut: the file replays cleanly once more.
    let _: () = exec(&server, &["SET", "after:cut", "1"]);
    assert_appended_to(&tail, &whole);
    server.sigkill();
    server.restart(AOF_ALWAYS);
    let value: Option<String> = exec(&server, &["GET", "after:cut"]);
    assert_eq!(value.as_deref(), Some("1"), "write made after the cut");
    let (missing, shown) = missing_writes(&server, &expected);
    assert_eq!(missing, 0, "keys lost:\n  {}", shown.join("\n  "));
}

/// A damaged command in the middle of the AOF is not a torn write at its end: the
/// server refuses to start (it does not skip the command, nor cut the file there and lose
/// what follows) and leaves the file alone. redis-server 7.0: "Bad file format reading the
/// append only file", exit 1.
#[test]
fn aof_damaged_in_the_middle_stops_startup() {
    let mut server = ServerProcess::target(AOF_ALWAYS);
    let mut con = connect(&server);
    for i in 0..100 {
        let _: () = call(
            &mut con,
            &["SET", &format!("key:{i}"), &format!("value:{i}")],
        );
    }
    drop(con);
    server.sigkill();

    let tail = aof_tail_path(&server);
    let good = read_file(&tail);
    const TARGET: &[u8] = b"*3\r\n$3\r\nSET\r\n$6\r\nkey:50\r\n";
    let at = good
        .windows(TARGET.len())
        .position(|w| w == TARGET)
        .unwrap_or_else(|| panic!("SET key:50 is not in {}", tail.display()));
    // Not an array any more; a bulk length that runs past its CRLF.
    for (offset, byte) in [(0, b'!'), (14, b'9')] {
        let mut bad = good.clone();
        bad[at + offset] = byte;
        fs::write(&tail, &bad).unwrap();
        let failed = start_expecting_failure(server.kind(), server.dir(), &["--appendonly", "yes"]);
        assert!(
            !failed.status.success(),
            "exit status {} on an AOF damaged at byte {}:\n{}",
            failed.status,
            at + offset,
            failed.log
        );
        assert!(
            read_file(&tail) == bad,
            "the failed start changed {}",
            tail.display()
        );
    }
    fs::write(&tail, &good).unwrap();
    server.restart(AOF_ALWAYS);
    let value: Option<String> = exec(&server, &["GET", "key:99"]);
    assert_eq!(value.as_deref(), Some("value:99"), "once repaired");
}

/// AOF bytes of one transaction: MULTI, two SETs, an INCR of `tx:counter` (no EXEC).
const OPEN_TRANSACTION: &[u8] = b"*1\r\n$5\r\nMULTI\r\n\
*3\r\n$3\r\nSET\r\n$4\r\ntx:a\r\n$1\r\n1\r\n\
*3\r\n$3\r\nSET\r\n$4\r\ntx:b\r\n$1\r\n2\r\n\
*2\r\n$4\r\nINCR\r\n$10\r\ntx:counter\r\n";

/// Checks, after a restart on a file cut inside a transaction, that none of its effects
/// are there and everything before it is; then that the file replays cleanly again.
fn assert_transaction_left_out(server: &mut ServerProcess) {
    let mut con = connect(server);
    let before: Option<String> = call(&mut con, &["GET", "before"]);
    assert_eq!(
        before.as_deref(),
        Some("1"),
        "write made before the transaction"
    );
    let counter: Option<String> = call(&mut con, &["GET", "tx:counter"]);
    assert_eq!(counter.as_deref(), Some("10"), "tx:counter was changed");
    for key in ["tx:a", "tx:b"] {
        let value: Option<String> = call(&mut con, &["GET", key]);
        assert_eq!(
            value, None,
            "{key}: the unfinished transaction was applied in part"
        );
    }
    let tail = aof_tail_path(server);
    let kept = read_file(&tail);
    assert!(
        !kept.windows(4).any(|w| w == b"tx:a"),
        "{} still holds the unfinished transaction after the restart: new commands would be \
         appended inside it",
        tail.display()
    );
    let _: () = call(&mut con, &["SET", "after", "1"]);
    drop(con);
    assert_appended_to(&tail, &kept);
    server.sigkill();
    server.restart(AOF_ALWAYS);
    let after: Option<String> = exec(server, &["GET", "after"]);
    assert_eq!(after.as_deref(), Some("1"), "write made after the restart");
    let tx: Option<String> = exec(server, &["GET", "tx:a"]);
    assert_eq!(tx, None, "tx:a came back");
}

/// A transaction run by a client, with the file then cut just before its EXEC: on
/// restart none of the transaction's effects are there.
#[test]
fn aof_cut_before_exec_leaves_the_transaction_out() {
    let mut server = ServerProcess::target(AOF_ALWAYS);
    let mut con = connect(&server);
    let _: () = call(&mut con, &["SET", "before", "1"]);
    let _: () = call(&mut con, &["SET", "tx:counter", "10"]);
    let mut tx = redis::pipe();
    tx.atomic()
        .cmd("SET")
        .arg("tx:a")
        .arg("1")
        .cmd("SET")
        .arg("tx:b")
        .arg("2")
        .cmd("INCR")
        .arg("tx:counter");
    let _: ((), (), i64) = tx.query(&mut con).unwrap();
    drop(con);
    server.sigkill();

    let tail = aof_tail_path(&server);
    let bytes = read_file(&tail);
    const EXEC: &[u8] = b"*1\r\n$4\r\nEXEC\r\n";
    let at = bytes
        .windows(EXEC.len())
        .rposition(|w| w == EXEC)
        .unwrap_or_else(|| {
            panic!(
                "no EXEC in {}: the transaction was not written as MULTI ... EXEC; last \
                 bytes: {}",
                tail.display(),
                lagwise_tests::escape(&bytes[bytes.len().saturating_sub(300)..])
            )
        });
    assert!(
        bytes[..at].windows(5).any(|w| w == b"MULTI"),
        "no MULTI before the EXEC in {}",
        tail.display()
    );
    fs::write(&tail, &bytes[..at]).unwrap();

    server.restart(AOF_ALWAYS);
    assert_transaction_left_out(&mut server);
}

/// The same with the open transaction appended to the file by hand.
#[test]
fn aof_ending_inside_multi_leaves_the_transaction_out() {
    let mut server = ServerProcess::target(AOF_ALWAYS);
    let _: () = exec(&server, &["SET", "before", "1"]);
    let _: () = exec(&server, &["SET", "tx:counter", "10"]);
    server.sigkill();
    append_to(&aof_tail_path(&server), OPEN_TRANSACTION);

    server.restart(AOF_ALWAYS);
    assert_transaction_left_out(&mut server);
}

/// At start the AOF, when on, wins over the RDB; with the AOF off the RDB is loaded.
#[test]
fn aof_takes_precedence_over_rdb() {
    let mut server = ServerProcess::target(AOF_ALWAYS);
    let _: () = exec(&server, &["SET", "k", "in both"]);
    save(&server);
    let _: () = exec(&server, &["SET", "k", "aof only"]);
    let _: () = exec(&server, &["SET", "only:aof", "1"]);
    server.sigkill();

    server.restart(AOF_ALWAYS);
    let k: Option<String> = exec(&server, &["GET", "k"]);
    assert_eq!(k.as_deref(), Some("aof only"), "with appendonly yes");
    let only: Option<String> = exec(&server, &["GET", "only:aof"]);
    assert_eq!(only.as_deref(), Some("1"), "with appendonly yes");

    server.restart(&["--appendonly", "no"]);
    let k: Option<String> = exec(&server, &["GET", "k"]);
    assert_eq!(
        k.as_deref(),
        Some("in both"),
        "with appendonly no (from dump.rdb)"
    );
    let only: Option<String> = exec(&server, &["GET", "only:aof"]);
    assert_eq!(only, None, "with appendonly no (from dump.rdb)");
}

// ------------------------------------------------------------------------------------------
// AOF: rewrites

/// A thread writing `SET w:<n> <n>` (n = 0, 1, ...) until stopped; counts the answered
/// writes (all of `w:0` .. `w:<count - 1>` were acknowledged).
struct CountingWriter {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl CountingWriter {
    fn start(server: &ServerProcess) -> CountingWriter {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let mut con = connect(server);
        let thread = {
            let (stop, acked) = (stop.clone(), acked.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let _: () = call(&mut con, &["SET", &format!("w:{n}"), &n.to_string()]);
                    n += 1;
                    acked.store(n, Ordering::Release);
                }
            })
        };
        CountingWriter {
            stop,
            acked,
            thread: Some(thread),
        }
    }

    fn acked(&self) -> u64 {
        self.acked.load(Ordering::Acquire)
    }

    /// Stops the thread and returns the acknowledged writes.
    fn finish(mut self) -> Vec<(String, String)> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the writer thread panicked");
        }
        (0..self.acked())
            .map(|n| (format!("w:{n}"), n.to_string()))
            .collect()
    }
}

impl Drop for CountingWriter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `rounds` pipelines of 1000 `SET hot:<i % keys> <value>` with 100-byte values that
/// change each round.
fn overwrite_hot_keys(server: &ServerProcess, keys: usize, rounds: usize, first_round: usize) {
    let mut con = connect(server);
    for round in first_round..first_round + rounds {
        let mut pipe = redis::pipe();
        for i in 0..1000 {
            let key = format!("hot:{}", (round * 1000 + i) % keys);
            pipe.cmd("SET")
                .arg(key)
                .arg(format!("{round:>8}-{i:>8}-{}", "x".repeat(82)))
                .ignore();
        }
        let _: () = call_cmd_pipe(&mut con, &pipe);
    }
}

fn call_cmd_pipe(con: &mut redis::Connection, pipe: &redis::Pipeline) {
    pipe.query::<()>(con)
        .unwrap_or_else(|e| panic!("pipeline failed: {}", lagwise_tests::err_text(&e)));
}

/// BGREWRITEAOF compacts a file of many overwrites while a client keeps writing; the
/// writes made before, during and after the rewrite all survive kill -9.
#[test]
fn bgrewriteaof_compacts_while_writes_continue() {
    let mut server = ServerProcess::target(AOF_ALWAYS);
    wait_rewrite_done(&server);
    // 50k SETs over 1k keys: the log is some 50 times the data.
    overwrite_hot_keys(&server, 1_000, 50, 0);
    let size_before = aof_disk_size(&server);
    let base_before = persistence_info(&server).int("aof_base_size");

    let writer = CountingWriter::start(&server);
    assert!(
        poll(PERSIST_TIMEOUT, || writer.acked() >= 100),
        "the writer did not get going"
    );
    let reply: String = exec(&server, &["BGREWRITEAOF"]);
    assert!(
        reply.starts_with("Background append only file rewriting"),
        "BGREWRITEAOF replied {reply:?}"
    );
    let info = wait_rewrite_done(&server);
    assert_ne!(
        info.int("aof_base_size"),
        base_before,
        "aof_base_size did not change: no rewrite happened?\n{}",
        info.raw
    );
    let at_end = writer.acked();
    assert!(
        poll(PERSIST_TIMEOUT, || writer.acked() >= at_end + 100),
        "writes stalled after the rewrite"
    );
    let acked = writer.finish();

    // redis-server deletes the old files in the background: wait for the size to drop.
    let mut size_after = aof_disk_size(&server);
    let compacted = poll(PERSIST_TIMEOUT, || {
        size_after = aof_disk_size(&server);
        size_after * 4 < size_before
    });
    assert!(
        compacted,
        "the AOF is {size_after} bytes after the rewrite, {size_before} before"
    );

    let before = Snapshot::take(&server);
    server.sigkill();
    server.restart(AOF_ALWAYS);
    let (missing, shown) = missing_writes(&server, &acked);
    assert_eq!(
        missing,
        0,
        "{missing} of {} writes made around the rewrite were lost:\n  {}",
        acked.len(),
        shown.join("\n  ")
    );
    assert_same_snapshot(
        &before,
        &Snapshot::take(&server),
        "after the rewrite and kill -9",
    );
}

/// With `auto-aof-rewrite-min-size 64kb` and `auto-aof-rewrite-percentage 100`, a file
/// that keeps growing is rewritten on its own (`aof_base_size` changes), and the data
/// survives kill -9.
#[test]
fn aof_rewrites_itself_when_it_grows() {
    let args = [
        AOF_ALWAYS,
        &[
            "--auto-aof-rewrite-min-size",
            "64kb",
            "--auto-aof-rewrite-percentage",
            "100",
        ],
    ]
    .concat();
    let args = args.as_slice();
    let mut server = ServerProcess::target(args);
    let base_before = wait_rewrite_done(&server).int("aof_base_size");

    let deadline = Instant::now() + PERSIST_TIMEOUT;
    let mut round = 0;
    loop {
        // 100 keys of ~100 bytes: the data stays near 12 KB, the log grows by ~130 KB a turn.
        overwrite_hot_keys(&server, 100, 1, round);
        round += 1;
        let info = persistence_info(&server);
        if info.int("aof_base_size") != base_before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no automatic rewrite after {round} rounds of 1000 overwrites ({PERSIST_TIMEOUT:?}); \
             INFO persistence:\n{}",
            info.raw
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_rewrite_done(&server);

    let before = Snapshot::take(&server);
    assert_eq!(before.keys.len(), 100);
    server.sigkill();
    server.restart(args);
    assert_same_snapshot(
        &before,
        &Snapshot::take(&server),
        "after the automatic rewrite",
    );
}

/// `CONFIG SET appendonly yes` on a server holding data creates the file from the
/// dataset; with later writes appended, a restart with `--appendonly yes` restores both.
#[test]
fn config_set_appendonly_creates_the_file_from_the_dataset() {
    let mut server = ServerProcess::target(&[]);
    load_dataset(&server, 10_000);
    assert!(
        !aof_exists(&server),
        "an AOF exists before it was turned on"
    );

    let ok: String = exec(&server, &["CONFIG", "SET", "appendonly", "yes"]);
    assert_eq!(ok, "OK");
    let info = wait_persistence(&server, "writing its new AOF", |i| {
        i.int("aof_enabled") == 1
            && i.int("aof_rewrite_in_progress") == 0
            && i.get("aof_rewrite_scheduled") != Some("1")
    });
    assert_eq!(info.text("aof_last_bgrewrite_status"), "ok", "{}", info.raw);
    assert!(
        aof_exists(&server),
        "no AOF after CONFIG SET appendonly yes"
    );
    let _: () = exec(&server, &["SET", "after:enabling", "1"]);
    let _: i64 = exec(&server, &["DEL", "bulk:0"]);

    let before = Snapshot::take(&server);
    // A clean stop (SIGTERM) flushes the file; no RDB is written (`--save ""`).
    let status = server.terminate();
    assert!(status.success(), "exit after SIGTERM: {status}");
    assert!(!rdb_path(&server).exists(), "a dump.rdb was written");
    server.restart(&["--appendonly", "yes"]);
    assert_same_snapshot(
        &before,
        &Snapshot::take(&server),
        "after CONFIG SET appendonly yes and a restart",
    );
}
