//! Helpers for the persistence tests (`tests/persistence.rs`): INFO persistence, waiting for
//! a background save or rewrite, where a server keeps its files, starting a server on a
//! prepared directory, and starts that are expected to fail.
//!
//! Where the files live differs by design: lagwise-node keeps one append-only file,
//! `<dir>/appendonly.aof` (an RDB preamble, then RESP commands); redis-server 7.0 keeps a
//! directory `<dir>/appendonlydir/` with a manifest, a base file and an incremental file.
//! [`aof_tail_path`] and [`aof_disk_size`] hide that difference.
//!
//! Blocking, like the replication helpers it builds on ([`crate::replication`]).

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::fixture::{server_binary, ServerKind, ServerProcess};
use crate::replication::{connect, poll, Info, Snapshot};

/// How long a background save, a rewrite or any other awaited event may take before a test
/// fails (a debug build on a busy two-core machine is slow; there is no upper bound to
/// check, only a hang to catch).
pub const PERSIST_TIMEOUT: Duration = Duration::from_secs(120);

/// The name lagwise-node and redis-server give the RDB file by default.
pub const RDB_NAME: &str = "dump.rdb";

/// Seconds since the epoch, as LASTSAVE counts them.
pub fn unix_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// Sleeps until the wall clock is past `secs` (a unix second), so that a save made from now
/// on gets a LASTSAVE greater than `secs`.
pub fn sleep_past_second(secs: i64) {
    while unix_secs() <= secs {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `INFO persistence` of `server`, on a new connection.
pub fn persistence_info(server: &ServerProcess) -> Info {
    try_persistence_info(server).unwrap_or_else(|e| {
        panic!(
            "INFO persistence from {} at {}: {e}",
            server.kind(),
            server.addr()
        )
    })
}

fn try_persistence_info(server: &ServerProcess) -> Result<Info, String> {
    let mut con = crate::replication::try_connect(&server.addr()).map_err(|e| e.to_string())?;
    let raw: String = crate::cmd(&["INFO", "persistence"])
        .query(&mut con)
        .map_err(|e| crate::err_text(&e))?;
    Ok(Info::parse(&raw))
}

/// Polls `INFO persistence` until `check` holds; panics after [`PERSIST_TIMEOUT`] with
/// `what` and the last reply.
pub fn wait_persistence(
    server: &ServerProcess,
    what: &str,
    mut check: impl FnMut(&Info) -> bool,
) -> Info {
    let mut last: Option<Info> = None;
    let ok = poll(PERSIST_TIMEOUT, || match try_persistence_info(server) {
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
            "{} at {}: not {what} within {PERSIST_TIMEOUT:?}; last INFO persistence:\n{}",
            server.kind(),
            server.addr(),
            last.map_or_else(|| "<none>".to_string(), |i| i.raw)
        ),
    }
}

/// Waits until no background save runs, and checks that the last one succeeded.
pub fn wait_bgsave_done(server: &ServerProcess) -> Info {
    let info = wait_persistence(server, "done with its background save", |i| {
        i.int("rdb_bgsave_in_progress") == 0
    });
    assert_eq!(
        info.text("rdb_last_bgsave_status"),
        "ok",
        "the background save failed; INFO persistence:\n{}",
        info.raw
    );
    info
}

/// Waits until no AOF rewrite runs or is scheduled, and checks that the last one succeeded.
pub fn wait_rewrite_done(server: &ServerProcess) -> Info {
    let info = wait_persistence(server, "done rewriting its AOF", |i| {
        i.int("aof_rewrite_in_progress") == 0 && i.get("aof_rewrite_scheduled") != Some("1")
    });
    assert_eq!(
        info.text("aof_last_bgrewrite_status"),
        "ok",
        "the AOF rewrite failed; INFO persistence:\n{}",
        info.raw
    );
    info
}

/// `<dir>/dump.rdb` of `server`.
pub fn rdb_path(server: &ServerProcess) -> PathBuf {
    server.dir().join(RDB_NAME)
}

/// Reads a file that must exist.
pub fn read_file(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Starts a server of `kind` whose directory holds `rdb` as `dump.rdb` when it starts:
/// it starts empty, the file is put in place, and it is restarted with `extra`.
pub fn start_with_rdb(kind: ServerKind, rdb: &[u8], extra: &[&str]) -> ServerProcess {
    let mut server = ServerProcess::start(kind, &[]);
    server.sigkill();
    let path = rdb_path(&server);
    fs::write(&path, rdb).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    server.restart(extra);
    server
}

// ------------------------------------------------------------------------------------------
// The append-only file(s)

/// redis-server 7.0's AOF directory and manifest names (default `appendfilename`).
const REDIS_AOF_DIR: &str = "appendonlydir";
const REDIS_MANIFEST: &str = "appendonly.aof.manifest";

/// Files named by redis-server's manifest, with their type (`b` base, `i` incremental,
/// `h` history).
fn redis_manifest(dir: &Path) -> Vec<(String, String)> {
    let path = dir.join(REDIS_AOF_DIR).join(REDIS_MANIFEST);
    let text = String::from_utf8_lossy(&read_file(&path)).into_owned();
    text.lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let field = |name: &str| {
                words
                    .iter()
                    .position(|w| *w == name)
                    .and_then(|i| words.get(i + 1))
                    .map(|s| s.to_string())
            };
            Some((field("file")?, field("type")?))
        })
        .collect()
}

/// Whether the server's append-only file exists: lagwise's `appendonly.aof`, redis-server's
/// manifest.
pub fn aof_exists(server: &ServerProcess) -> bool {
    match server.kind() {
        ServerKind::Lagwise => server.dir().join("appendonly.aof").is_file(),
        ServerKind::Redis => server
            .dir()
            .join(REDIS_AOF_DIR)
            .join(REDIS_MANIFEST)
            .is_file(),
    }
}

/// The file new commands are appended to: lagwise's `appendonly.aof`; redis-server's
/// incremental file (the last `type i` entry of the manifest).
pub fn aof_tail_path(server: &ServerProcess) -> PathBuf {
    match server.kind() {
        ServerKind::Lagwise => server.dir().join("appendonly.aof"),
        ServerKind::Redis => {
            let manifest = redis_manifest(server.dir());
            let incr = manifest
                .iter()
                .rev()
                .find(|(_, ty)| ty == "i")
                .unwrap_or_else(|| panic!("no incremental file in the manifest: {manifest:?}"));
            server.dir().join(REDIS_AOF_DIR).join(&incr.0)
        }
    }
}

/// Bytes the AOF takes on disk: lagwise's one file; the base and incremental files of
/// redis-server's manifest (history files are on their way out).
pub fn aof_disk_size(server: &ServerProcess) -> u64 {
    let size = |path: &Path| {
        fs::metadata(path)
            .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
            .len()
    };
    match server.kind() {
        ServerKind::Lagwise => size(&server.dir().join("appendonly.aof")),
        ServerKind::Redis => redis_manifest(server.dir())
            .iter()
            .filter(|(_, ty)| ty != "h")
            .map(|(name, _)| size(&server.dir().join(REDIS_AOF_DIR).join(name)))
            .sum(),
    }
}

/// Appends `bytes` to the file at `path`.
pub fn append_to(path: &Path, bytes: &[u8]) {
    fs::OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(bytes))
        .unwrap_or_else(|e| panic!("append to {}: {e}", path.display()));
}

/// Panics unless the file at `path` still begins with `earlier` (what it held before):
/// a server appends to its AOF, it never writes over what is there.
pub fn assert_appended_to(path: &Path, earlier: &[u8]) {
    let now = read_file(path);
    if let Some(at) = (0..earlier.len()).find(|&i| now.get(i) != earlier.get(i)) {
        let around = |b: &[u8]| crate::escape(&b[at.min(b.len())..(at + 40).min(b.len())]);
        panic!(
            "{} ({} bytes, {} before) was written over at byte {at}, not appended to:\n  \
             now: {}\n  was: {}",
            path.display(),
            now.len(),
            earlier.len(),
            around(&now),
            around(earlier)
        );
    }
}

// ------------------------------------------------------------------------------------------
// Comparing data

/// Panics with the first differences unless `before` and `after` hold the same keys,
/// values and TTLs.
pub fn assert_same_snapshot(before: &Snapshot, after: &Snapshot, context: &str) {
    let diffs = before.diff(after, 20);
    if !diffs.is_empty() {
        panic!(
            "{context}: the datasets differ ({} keys before, {} after):\n  {}",
            before.keys.len(),
            after.keys.len(),
            diffs.join("\n  ")
        );
    }
}

/// Checks that every `(key, value)` is in `server` with that value (MGET in batches);
/// returns the first mismatches (at most 10) and their count.
pub fn missing_writes(
    server: &ServerProcess,
    expected: &[(String, String)],
) -> (usize, Vec<String>) {
    let mut con = connect(server);
    let mut count = 0;
    let mut shown = Vec::new();
    for chunk in expected.chunks(1000) {
        let mut mget = redis::cmd("MGET");
        for (key, _) in chunk {
            mget.arg(key);
        }
        let values: Vec<Option<String>> = mget
            .query(&mut con)
            .unwrap_or_else(|e| panic!("MGET on {}: {e}", server.addr()));
        for ((key, want), got) in chunk.iter().zip(values) {
            if got.as_deref() != Some(want.as_str()) {
                count += 1;
                if shown.len() < 10 {
                    shown.push(format!("{key}: expected {want:?}, found {got:?}"));
                }
            }
        }
    }
    (count, shown)
}

// ------------------------------------------------------------------------------------------
// Starts that must fail

/// How a start that was expected to fail ended.
pub struct FailedStart {
    pub status: ExitStatus,
    /// Everything the process wrote to stdout and stderr.
    pub log: String,
}

/// Starts a server of `kind` on `dir` (which already holds its data files) with the
/// arguments of [`ServerProcess::start`] followed by `extra`, expecting it to refuse to
/// start. Returns its exit status and output once it has exited. Panics, with the output,
/// if it answers `PING` instead (it is killed) or is still running after
/// [`PERSIST_TIMEOUT`]. Its output is also kept in `dir` as `failed-start-<n>.log`.
pub fn start_expecting_failure(kind: ServerKind, dir: &Path, extra: &[&str]) -> FailedStart {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener.local_addr().expect("local_addr").port()
    };
    let log_path = (1..)
        .map(|n| dir.join(format!("failed-start-{n}.log")))
        .find(|path| !path.exists())
        .expect("an unused log name");
    let log = fs::File::create(&log_path)
        .unwrap_or_else(|e| panic!("create {}: {e}", log_path.display()));
    let log_err = log.try_clone().expect("clone log file handle");
    let binary = server_binary(kind);
    let mut command = Command::new(&binary);
    command
        .arg("--port")
        .arg(port.to_string())
        .args(["--bind", "127.0.0.1"])
        .args(["--save", ""])
        .args(["--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
    let deadline = Instant::now() + PERSIST_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let log = String::from_utf8_lossy(&read_file(&log_path)).into_owned();
            return FailedStart { status, log };
        }
        let started = answers_pong(port);
        if started || Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let log = String::from_utf8_lossy(&read_file(&log_path)).into_owned();
            panic!(
                "{kind} was expected to refuse to start but {}: {command:?}\n--- log ---\n{log}",
                if started {
                    "it answered PING".to_string()
                } else {
                    format!("it was still running after {PERSIST_TIMEOUT:?}")
                }
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One `PING`: true only for `+PONG` (a server still loading answers `-LOADING`).
fn answers_pong(port: u16) -> bool {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"*1\r\n$4\r\nPING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}
