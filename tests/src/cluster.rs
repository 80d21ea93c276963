//! A real cluster of cluster-enabled nodes (`lagwise-node` or Debian `redis-server` 7.0),
//! driven with `redis-cli --cluster`, and the `lagwise-proxy` process in front of it.
//!
//! [`Cluster`] starts nodes of one [`ServerKind`] on loopback, each in its own directory under
//! the cluster's temp directory, all with the same Valkey-style arguments (see
//! [`ClusterConfig`]). [`Cluster::start`] forms the cluster with `redis-cli --cluster create`
//! and waits until every node reports `cluster_state:ok`, all agree (`CLUSTER SLOTS`) on
//! which primary serves each slot, each primary has its replicas and every replica's link is
//! up; [`Cluster::start_empty`] only starts the nodes, for tests that drive `redis-cli
//! --cluster` themselves ([`Cluster::cli`]). Nodes can be stopped and restarted on the same
//! port and directory ([`Cluster::restart_node`]), and their cluster bus port can be fed raw
//! bytes ([`send_to_bus`]). Dropping a cluster kills every node; if the test panicked, every
//! node's log is printed and the directory is kept.
//!
//! [`RedisCluster`] is the redis-server cluster the proxy tests were written against:
//! [`RedisCluster::start`] is [`Cluster::start`] with redis-server nodes and a 2 s node
//! timeout, and it dereferences to [`Cluster`].
//!
//! [`ProxyProcess`] starts `lagwise-proxy --listen 127.0.0.1:P --seeds ...`, waits until
//! `EXISTS lagwise:probe` through it answers an integer, and stops it on drop (SIGTERM, then
//! SIGKILL), printing its log if the test panicked.
//!
//! Everything here is blocking and bounded: no wait without a deadline.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::fixture::{
    escape, frame_len, fresh_temp_dir, read_log, send_sigterm, server_binary, workspace_binary,
    RawConn, ServerKind, Supervised,
};

/// How long a node or the proxy may take to answer its first request.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a restarted node may take to answer `PING` with `PONG` (it may load a data file).
const RESTART_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `redis-cli --cluster create` may take.
const CREATE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the formed cluster may take to converge (state ok, same slots everywhere,
/// replicas linked).
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `redis-cli --cluster reshard` may take.
const RESHARD_TIMEOUT: Duration = Duration::from_secs(180);
/// How long `redis-cli --cluster check` may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a process may take to exit after SIGTERM before it gets SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(10);
/// Timeout of one query to a node.
const QUERY_TIMEOUT: Duration = Duration::from_secs(3);
/// Start attempts when the chosen port turned out to be taken.
const START_ATTEMPTS: usize = 5;
/// Client ports are picked in `[PORT_BASE, PORT_BASE + PORT_SPAN)`: below the kernel's
/// ephemeral range, and with the cluster bus port (`+10000`) still a valid port.
const PORT_BASE: u16 = 20000;
const PORT_SPAN: u16 = 10000;
/// The cluster bus port is the client port plus this.
pub const BUS_PORT_OFFSET: u16 = 10000;
/// Number of hash slots.
pub const SLOTS: u16 = 16384;
/// The line `redis-cli --cluster check` prints when every node has the same slot map.
pub const CHECK_AGREE: &str = "[OK] All nodes agree about slots configuration.";
/// The line `redis-cli --cluster check` prints when every slot is served.
pub const CHECK_COVERED: &str = "[OK] All 16384 slots covered.";

/// From env `LAGWISE_CLUSTER_KIND` = `"redis"` | `"lagwise"` (default lagwise): which server
/// the cluster-mode suite (`tests/cluster_node.rs`) runs; `redis` checks the suite itself.
pub fn cluster_kind() -> ServerKind {
    match std::env::var("LAGWISE_CLUSTER_KIND") {
        Err(_) => ServerKind::Lagwise,
        Ok(v) if v.is_empty() || v.eq_ignore_ascii_case("lagwise") => ServerKind::Lagwise,
        Ok(v) if v.eq_ignore_ascii_case("redis") => ServerKind::Redis,
        Ok(other) => panic!("LAGWISE_CLUSTER_KIND must be \"redis\" or \"lagwise\", not {other:?}"),
    }
}

/// How the nodes of a [`Cluster`] are started. Every node gets
/// `--port P --bind 127.0.0.1 --cluster-enabled yes --cluster-config-file nodes-P.conf
/// --cluster-node-timeout <node_timeout_ms> --save "" --appendonly no
/// --enable-debug-command yes --repl-diskless-sync-delay 0 --dir <its directory>`, then
/// [`ClusterConfig::extra_args`] (later arguments win).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Which server every node runs.
    pub kind: ServerKind,
    /// `--cluster-node-timeout`, in milliseconds.
    pub node_timeout_ms: u64,
    /// Arguments after the standard ones, e.g. `["--appendonly", "yes"]`.
    pub extra_args: Vec<String>,
}

impl ClusterConfig {
    /// `kind` nodes with a 5 s node timeout and no extra arguments.
    pub fn new(kind: ServerKind) -> ClusterConfig {
        ClusterConfig {
            kind,
            node_timeout_ms: 5000,
            extra_args: Vec::new(),
        }
    }

    /// [`ClusterConfig::new`] with the kind from [`cluster_kind`].
    pub fn from_env() -> ClusterConfig {
        ClusterConfig::new(cluster_kind())
    }

    /// Sets `--cluster-node-timeout`.
    pub fn node_timeout_ms(mut self, ms: u64) -> ClusterConfig {
        self.node_timeout_ms = ms;
        self
    }

    /// Appends arguments for every node.
    pub fn args(mut self, args: &[&str]) -> ClusterConfig {
        self.extra_args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// The full argument list of the node on `port` whose directory is `dir`.
    fn node_args(&self, port: u16, dir: &Path) -> Vec<OsString> {
        let mut args: Vec<OsString> = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            &format!("nodes-{port}.conf"),
            "--cluster-node-timeout",
            &self.node_timeout_ms.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
            "--enable-debug-command",
            "yes",
            // Replicas sync at once instead of after diskless sync's 5 s wait.
            "--repl-diskless-sync-delay",
            "0",
            "--dir",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        args.push(dir.as_os_str().to_owned());
        args.extend(self.extra_args.iter().map(OsString::from));
        args
    }
}

// ---------------------------------------------------------------------------------------
// Small process and network helpers
// ---------------------------------------------------------------------------------------

/// A port `P` in `[20000, 30000)` such that both `P` and the bus port `P + 10000` could be
/// bound just now, and that no other process of this fixture was given. Between this check
/// and the server's bind another process may take it; the callers retry with another port.
fn free_port_pair() -> u16 {
    static STATE: Mutex<Option<(u64, HashSet<u16>)>> = Mutex::new(None);
    let mut state = STATE.lock().unwrap_or_else(|e| e.into_inner());
    let (rng, handed_out) = state.get_or_insert_with(|| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default();
        (
            nanos ^ (u64::from(std::process::id()) << 32),
            HashSet::new(),
        )
    });
    for _ in 0..100_000 {
        // xorshift64*: cheap, no dependency, good enough to spread processes apart.
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        let port = PORT_BASE + (rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as u16 % PORT_SPAN;
        if handed_out.contains(&port) {
            continue;
        }
        let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + BUS_PORT_OFFSET) {
            handed_out.insert(port);
            return port;
        }
    }
    panic!(
        "no free port pair found in {PORT_BASE}..{}",
        PORT_BASE + PORT_SPAN
    );
}

/// What a finished (or timed-out) helper program printed.
#[derive(Debug, Clone)]
pub struct CmdOutput {
    /// The command line, for messages.
    pub command: String,
    /// The exit status; `None` if it was killed after its timeout.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl CmdOutput {
    /// Exited by itself with status 0.
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// stdout then stderr.
    pub fn text(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

impl fmt::Display for CmdOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = match self.status {
            Some(s) => s.to_string(),
            None => "killed after its timeout".to_string(),
        };
        write!(
            f,
            "{} ({status})\n--- stdout ---\n{}--- stderr ---\n{}--- end ---",
            self.command, self.stdout, self.stderr
        )
    }
}

/// Runs `command` (stdin from `/dev/null`, stdout and stderr into `<dir>/<name>-<n>.out` and
/// `.err`), killing it after `timeout`. Never panics for the program's sake: a failure to
/// start is reported as a [`CmdOutput`] without status whose stderr says why.
pub fn run_captured(mut command: Command, dir: &Path, name: &str, timeout: Duration) -> CmdOutput {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let out_path = dir.join(format!("{name}-{n}.out"));
    let err_path = dir.join(format!("{name}-{n}.err"));
    let described = format!("{command:?}");
    let files = File::create(&out_path).and_then(|out| Ok((out, File::create(&err_path)?)));
    let (out, err) = match files {
        Ok(files) => files,
        Err(e) => {
            return CmdOutput {
                command: described,
                status: None,
                stdout: String::new(),
                stderr: format!("cannot create output files in {}: {e}", dir.display()),
            }
        }
    };
    let spawned = command.stdin(Stdio::null()).stdout(out).stderr(err).spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            return CmdOutput {
                command: described,
                status: None,
                stdout: String::new(),
                stderr: format!("cannot run it: {e}"),
            }
        }
    };
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    CmdOutput {
        command: described,
        status,
        stdout: read_log(&out_path),
        stderr: read_log(&err_path),
    }
}

/// One request to `addr` over a fresh connection, with short timeouts; returns the raw reply.
/// Never panics: a dead node is an `Err`.
pub fn raw_query(addr: &str, args: &[&str], timeout: Duration) -> Result<Vec<u8>, String> {
    let sock: SocketAddr = addr
        .parse()
        .map_err(|e| format!("bad address {addr}: {e}"))?;
    let mut stream =
        TcpStream::connect_timeout(&sock, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
    stream
        .write_all(&crate::fixture::encode_command(&args))
        .map_err(|e| format!("write to {addr}: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match frame_len(&buf) {
            Ok(Some(n)) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Ok(None) => {}
            Err(e) => {
                return Err(format!(
                    "malformed reply from {addr} ({e}): {}",
                    escape(&buf)
                ))
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Err(format!("{addr} closed; pending {}", escape(&buf))),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("read from {addr}: {e}; pending {}", escape(&buf))),
        }
    }
}

/// [`raw_query`] parsed into a redis-rs value; an error reply is an `Err` with its text.
pub fn query_node(addr: &str, args: &[&str]) -> Result<redis::Value, String> {
    let raw = raw_query(addr, args, QUERY_TIMEOUT)?;
    if raw.first() == Some(&b'-') {
        return Err(format!(
            "{addr} {args:?}: {}",
            String::from_utf8_lossy(&raw[1..raw.len().saturating_sub(2)])
        ));
    }
    redis::parse_redis_value(&raw)
        .map_err(|e| format!("{addr} {args:?}: unparsable reply {}: {e}", escape(&raw)))
}

/// [`query_node`] for a reply that is a (bulk or simple) string.
pub fn query_node_string(addr: &str, args: &[&str]) -> Result<String, String> {
    match query_node(addr, args)? {
        redis::Value::BulkString(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
        redis::Value::SimpleString(s) => Ok(s),
        redis::Value::Okay => Ok("OK".to_string()),
        redis::Value::VerbatimString { text, .. } => Ok(text),
        other => Err(format!("{addr} {args:?}: expected a string, got {other:?}")),
    }
}

/// [`query_node`] for an integer reply.
pub fn query_node_int(addr: &str, args: &[&str]) -> Result<i64, String> {
    match query_node(addr, args)? {
        redis::Value::Int(n) => Ok(n),
        other => Err(format!(
            "{addr} {args:?}: expected an integer, got {other:?}"
        )),
    }
}

/// The hash slot of `key` (CRC16-XMODEM of the key or of its first non-empty `{tag}`, mod
/// 16384), computed locally. [`Cluster::keyslot`] asks a node instead.
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    let mut crc: u16 = 0;
    for &byte in hashed {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % SLOTS
}

/// What happened to a connection to a cluster bus port after [`send_to_bus`] wrote to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusProbe {
    /// Whether all the bytes were written (`false`: the node closed or reset the link first).
    pub written: bool,
    /// Whether the node closed (or reset) the link while we waited.
    pub closed_by_node: bool,
    /// How many bytes the node sent back meanwhile.
    pub bytes_received: usize,
    /// The write error, if any.
    pub write_error: Option<String>,
}

/// Connects to the cluster bus address `bus_addr` (`"127.0.0.1:P+10000"`), writes `bytes`, then
/// waits up to `linger` for the node to close the link (reading and discarding whatever it
/// sends); the link is closed from this side on return. A zero `linger` writes and closes
/// at once (e.g. a truncated frame). Panics only if the connection cannot be made.
pub fn send_to_bus(bus_addr: &str, bytes: &[u8], linger: Duration) -> BusProbe {
    let sock: SocketAddr = bus_addr
        .parse()
        .unwrap_or_else(|e| panic!("bad bus address {bus_addr}: {e}"));
    let mut stream = TcpStream::connect_timeout(&sock, QUERY_TIMEOUT)
        .unwrap_or_else(|e| panic!("connect to the cluster bus at {bus_addr}: {e}"));
    let _ = stream.set_write_timeout(Some(QUERY_TIMEOUT));
    let mut probe = BusProbe {
        written: true,
        closed_by_node: false,
        bytes_received: 0,
        write_error: None,
    };
    if let Err(e) = stream.write_all(bytes) {
        probe.written = false;
        probe.write_error = Some(e.to_string());
    }
    let deadline = Instant::now() + linger;
    let mut chunk = [0u8; 16 * 1024];
    while !linger.is_zero() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let _ = stream.set_read_timeout(Some(left));
        match stream.read(&mut chunk) {
            Ok(0) => {
                probe.closed_by_node = true;
                break;
            }
            Ok(n) => probe.bytes_received += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                break
            }
            Err(_) => {
                // Reset (or aborted): the node dropped the link.
                probe.closed_by_node = true;
                break;
            }
        }
    }
    if !probe.written && !probe.closed_by_node {
        // A failed write means the peer is gone (EPIPE / ECONNRESET).
        probe.closed_by_node = true;
    }
    probe
}

// ---------------------------------------------------------------------------------------
// Cluster nodes
// ---------------------------------------------------------------------------------------

enum Startup {
    Ready,
    PortTaken(String),
    Failed(String),
}

/// One cluster-enabled server process.
pub struct ClusterNode {
    kind: ServerKind,
    port: u16,
    /// The full argument list, reused by [`ClusterNode::restart`].
    args: Vec<OsString>,
    child: Child,
    dir: PathBuf,
    log_path: PathBuf,
    exit: Option<ExitStatus>,
    id: String,
}

impl ClusterNode {
    /// Starts one node in a fresh directory under `parent` and waits for its PONG. Retries with
    /// another port if the chosen port or its bus port was taken.
    fn start(parent: &Path, config: &ClusterConfig) -> ClusterNode {
        let mut last_failure = String::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port_pair();
            let dir = parent.join(format!("node-{port}"));
            fs::create_dir_all(&dir)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
            let log_path = dir.join("server.log");
            let args = config.node_args(port, &dir);
            let child = spawn_node(config.kind, &args, &dir, &log_path);
            let mut node = ClusterNode {
                kind: config.kind,
                port,
                args,
                child,
                dir,
                log_path,
                exit: None,
                id: String::new(),
            };
            match node.wait_ready(READY_TIMEOUT) {
                Startup::Ready => return node,
                Startup::PortTaken(why) => last_failure = why, // try another port
                Startup::Failed(why) => panic!("{why}"),
            }
        }
        panic!(
            "{}: every port tried was taken; last attempt: {last_failure}",
            config.kind
        );
    }

    /// Waits until the process answers `PING` with `PONG`, then reads its id
    /// (`CLUSTER MYID`). Kills the process when it does not become ready.
    fn wait_ready(&mut self, timeout: Duration) -> Startup {
        let deadline = Instant::now() + timeout;
        let mut last;
        loop {
            if let Some(status) = self.try_wait() {
                let log = self.log();
                let why = format!(
                    "{} {:?} exited early ({status}):\n{log}",
                    self.kind, self.args
                );
                let lower = log.to_ascii_lowercase();
                if lower.contains("in use") || lower.contains("addrinuse") {
                    return Startup::PortTaken(why);
                }
                return Startup::Failed(why);
            }
            match raw_query(&self.addr(), &["PING"], Duration::from_millis(500)) {
                Ok(r) if r == b"+PONG\r\n" => {
                    return match query_node_string(&self.addr(), &["CLUSTER", "MYID"]) {
                        Ok(id) => {
                            self.id = id;
                            Startup::Ready
                        }
                        Err(e) => {
                            self.kill();
                            Startup::Failed(format!(
                                "CLUSTER MYID on {}: {e}\n--- log ---\n{}",
                                self.addr(),
                                self.log()
                            ))
                        }
                    };
                }
                Ok(r) => last = format!("reply {}", escape(&r)),
                Err(e) => last = e,
            }
            if Instant::now() >= deadline {
                self.kill();
                return Startup::Failed(format!(
                    "{} {:?}: no PONG within {timeout:?} (last: {last})\n--- log ---\n{}",
                    self.kind,
                    self.args,
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the process if it still runs (SIGTERM, then SIGKILL after 10 s) and starts it
    /// again with the same arguments, port and directory (its `nodes-P.conf` and data files
    /// survive); waits until it answers `PONG` and re-reads its id. The previous log is kept
    /// in the directory as `server.log.<n>`. Panics with the log if it does not come back.
    pub fn restart(&mut self) {
        self.terminate();
        let kept = (1..)
            .map(|n| self.dir.join(format!("server.log.{n}")))
            .find(|path| !path.exists())
            .expect("an unused log name");
        let _ = fs::rename(&self.log_path, &kept);
        let mut last_failure = String::new();
        for _ in 0..START_ATTEMPTS {
            self.child = spawn_node(self.kind, &self.args, &self.dir, &self.log_path);
            self.exit = None;
            match self.wait_ready(RESTART_READY_TIMEOUT) {
                Startup::Ready => return,
                // The old process's sockets may linger for a moment: same port, try again.
                Startup::PortTaken(why) => {
                    last_failure = why;
                    std::thread::sleep(Duration::from_millis(500));
                }
                Startup::Failed(why) => {
                    panic!("{} did not restart: {why}", self.addr())
                }
            }
        }
        panic!(
            "{}: port {} stayed taken: {last_failure}",
            self.kind, self.port
        );
    }

    /// Which server this node runs.
    pub fn kind(&self) -> ServerKind {
        self.kind
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `"127.0.0.1:P"`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `"127.0.0.1:P+10000"`: the cluster bus.
    pub fn bus_addr(&self) -> String {
        format!("127.0.0.1:{}", self.port + BUS_PORT_OFFSET)
    }

    /// The node's cluster id (`CLUSTER MYID`, read at start and at each restart).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The node's directory (its `--dir`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its command-line arguments.
    pub fn args(&self) -> &[OsString] {
        &self.args
    }

    /// Everything the node logged since it was last (re)started.
    pub fn log(&self) -> String {
        read_log(&self.log_path)
    }

    /// A new blocking raw connection with 5 s read and write timeouts.
    pub fn raw(&self) -> RawConn {
        RawConn::connect(&self.addr())
    }

    /// The exit status if the process has exited (reaping it), without blocking.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.try_wait().is_none()
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if self.try_wait().is_none() {
            let _ = self.child.kill();
            self.exit = self.child.wait().ok();
        }
    }

    /// SIGTERM, wait up to 10 s, then SIGKILL. Returns the exit status (`None` if it was
    /// already reaped before, or reaping failed).
    pub fn terminate(&mut self) -> Option<ExitStatus> {
        if self.try_wait().is_some() {
            return self.exit;
        }
        if let Err(e) = send_sigterm(self.child.id()) {
            eprintln!("{e}");
        }
        let deadline = Instant::now() + TERM_GRACE;
        while Instant::now() < deadline {
            if self.try_wait().is_some() {
                return self.exit;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        eprintln!(
            "{} {} (pid {}) ignored SIGTERM for {TERM_GRACE:?}; sending SIGKILL",
            self.kind,
            self.addr(),
            self.pid()
        );
        self.kill();
        self.exit
    }
}

/// Spawns `kind` with `args` in `dir`, stdout and stderr into a new `log_path`.
fn spawn_node(kind: ServerKind, args: &[OsString], dir: &Path, log_path: &Path) -> Child {
    let binary = server_binary(kind);
    let log = File::create(log_path)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", log_path.display()));
    let log_err = log.try_clone().expect("clone log file handle");
    Command::new(&binary)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()))
}

/// One contiguous range of slots and who serves it, as `CLUSTER SLOTS` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotRange {
    pub start: u16,
    pub end: u16,
    /// `"127.0.0.1:P"` of the primary.
    pub primary: String,
    /// Addresses of its replicas, sorted.
    pub replicas: Vec<String>,
}

impl SlotRange {
    /// The primary serving `slot` in `ranges`.
    pub fn primary_of(ranges: &[SlotRange], slot: u16) -> Option<&str> {
        ranges
            .iter()
            .find(|r| r.start <= slot && slot <= r.end)
            .map(|r| r.primary.as_str())
    }
}

/// Whether two slot maps agree on ranges and primaries (replica lists may differ while the
/// nodes gossip).
fn same_primaries(a: &[SlotRange], b: &[SlotRange]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| (x.start, x.end, &x.primary) == (y.start, y.end, &y.primary))
}

fn value_str(v: &redis::Value) -> Option<String> {
    match v {
        redis::Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        redis::Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn value_int(v: &redis::Value) -> Option<i64> {
    match v {
        redis::Value::Int(n) => Some(*n),
        _ => None,
    }
}

/// Parses a `CLUSTER SLOTS` reply, sorted by start slot.
pub fn parse_cluster_slots(value: &redis::Value) -> Result<Vec<SlotRange>, String> {
    let redis::Value::Array(ranges) = value else {
        return Err(format!("CLUSTER SLOTS: not an array: {value:?}"));
    };
    let node_addr = |v: &redis::Value| -> Option<String> {
        let redis::Value::Array(fields) = v else {
            return None;
        };
        let ip = value_str(fields.first()?)?;
        let port = value_int(fields.get(1)?)?;
        Some(format!("{ip}:{port}"))
    };
    let mut out = Vec::new();
    for range in ranges {
        let parsed = (|| {
            let redis::Value::Array(items) = range else {
                return None;
            };
            let start = u16::try_from(value_int(items.first()?)?).ok()?;
            let end = u16::try_from(value_int(items.get(1)?)?).ok()?;
            let primary = node_addr(items.get(2)?)?;
            let mut replicas: Vec<String> =
                items[3..].iter().map(node_addr).collect::<Option<_>>()?;
            replicas.sort();
            Some(SlotRange {
                start,
                end,
                primary,
                replicas,
            })
        })();
        out.push(parsed.ok_or_else(|| format!("CLUSTER SLOTS: bad range {range:?}"))?);
    }
    out.sort_by_key(|r| r.start);
    Ok(out)
}

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: String,
    /// `"127.0.0.1:P"`.
    pub addr: String,
    pub flags: Vec<String>,
    /// The primary's id for a replica, `None` for a primary.
    pub primary_id: Option<String>,
    /// The slot ranges it serves (inclusive; a single slot is `(s, s)`), in the order listed.
    /// Migrating/importing markers (`[slot->-id]`, `[slot-<-id]`) are left out.
    pub slots: Vec<(u16, u16)>,
}

impl NodeInfo {
    pub fn is_primary(&self) -> bool {
        self.flags.iter().any(|f| f == "master")
    }

    pub fn is_failed(&self) -> bool {
        self.flags.iter().any(|f| f == "fail" || f == "fail?")
    }

    /// Whether this line describes the node that answered (`myself` flag).
    pub fn is_myself(&self) -> bool {
        self.flags.iter().any(|f| f == "myself")
    }

    /// How many slots it serves.
    pub fn slot_count(&self) -> usize {
        self.slots
            .iter()
            .map(|&(a, b)| usize::from(b) - usize::from(a) + 1)
            .sum()
    }
}

/// Parses `CLUSTER NODES` text (one node per line).
pub fn parse_cluster_nodes(text: &str) -> Vec<NodeInfo> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let id = fields.next()?.to_string();
            let addr = fields.next()?;
            let addr = addr.split(['@', ',']).next()?.to_string();
            let flags = fields.next()?.split(',').map(str::to_string).collect();
            let primary = fields.next()?;
            // ping-sent, pong-recv, config-epoch, link-state, then slots.
            let slots = fields
                .skip(4)
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => s.parse().ok().map(|n| (n, n)),
                })
                .collect();
            Some(NodeInfo {
                id,
                addr,
                flags,
                primary_id: (primary != "-").then(|| primary.to_string()),
                slots,
            })
        })
        .collect()
}

/// Whether `redis-cli --cluster check` (or `fix`) output reports a healthy cluster: exit 0,
/// both `[OK]` lines, and no `[ERR]` or `[WARNING]` line.
pub fn check_ok(output: &CmdOutput) -> bool {
    let text = output.text();
    output.success()
        && text.contains(CHECK_AGREE)
        && text.contains(CHECK_COVERED)
        && !text.contains("[ERR]")
        && !text.contains("[WARNING]")
}

// ---------------------------------------------------------------------------------------
// The cluster
// ---------------------------------------------------------------------------------------

/// A set of cluster-enabled nodes of one kind. Dropping it kills every node.
///
/// The waits ([`Cluster::wait_stable`], [`Cluster::wait_converged`]) treat every running node
/// of the fixture as a member: start extra nodes ([`Cluster::spawn_node`]) just before adding
/// them, and [`Cluster::remove_node`] the ones deleted from the cluster.
pub struct Cluster {
    config: ClusterConfig,
    dir: PathBuf,
    nodes: Vec<ClusterNode>,
    primaries: usize,
    replicas_per_primary: usize,
}

impl Cluster {
    /// Starts `primaries × (1 + replicas_per_primary)` nodes, forms the cluster with
    /// `redis-cli --cluster create ... --cluster-replicas R --cluster-yes`, and waits until it
    /// has converged (see [`Cluster::wait_converged`]). Panics with the output and the
    /// nodes' logs when any step fails or times out. `redis-cli` needs at least 3 primaries.
    pub fn start(config: ClusterConfig, primaries: usize, replicas_per_primary: usize) -> Cluster {
        assert!(
            primaries >= 3,
            "redis-cli --cluster create needs at least 3 primaries"
        );
        let mut cluster = Cluster::start_empty(config, primaries * (1 + replicas_per_primary));
        let create = cluster.create(replicas_per_primary);
        if !create.success() {
            panic!("forming the cluster failed: {create}");
        }
        if let Err(e) = cluster.wait_converged(CONVERGE_TIMEOUT) {
            panic!(
                "the cluster did not converge within {CONVERGE_TIMEOUT:?}: {e}\n{create}\n{}",
                cluster.check_report()
            );
        }
        cluster
    }

    /// Starts `count` cluster-enabled nodes that know nothing of each other (each in its own
    /// directory, each answering `PONG`), without forming a cluster.
    pub fn start_empty(config: ClusterConfig, count: usize) -> Cluster {
        let dir = fresh_temp_dir(match config.kind {
            ServerKind::Redis => "redis-cluster",
            ServerKind::Lagwise => "lagwise-cluster",
        });
        let mut cluster = Cluster {
            config,
            dir,
            nodes: Vec::with_capacity(count),
            primaries: count,
            replicas_per_primary: 0,
        };
        for _ in 0..count {
            cluster.spawn_node();
        }
        cluster
    }

    /// Runs `redis-cli --cluster create <every node> --cluster-replicas R --cluster-yes` and
    /// returns its output (success or not); the expected shape becomes
    /// `nodes / (1 + R)` primaries with R replicas each.
    pub fn create(&mut self, replicas_per_primary: usize) -> CmdOutput {
        let mut args = vec!["create".to_string()];
        args.extend(self.seeds());
        args.push("--cluster-replicas".into());
        args.push(replicas_per_primary.to_string());
        args.push("--cluster-yes".into());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.set_shape(
            self.nodes.len() / (1 + replicas_per_primary),
            replicas_per_primary,
        );
        self.cli(&args, CREATE_TIMEOUT)
    }

    /// Starts one more empty node with the cluster's configuration and returns its address.
    /// It is not part of the cluster until it is added (e.g. `redis-cli --cluster add-node`).
    pub fn spawn_node(&mut self) -> String {
        let node = ClusterNode::start(&self.dir, &self.config);
        let addr = node.addr();
        self.nodes.push(node);
        addr
    }

    /// Stops the node at `addr` (SIGTERM, then SIGKILL) and drops it from the fixture, e.g.
    /// after `redis-cli --cluster del-node`. Its directory stays until the cluster is dropped.
    pub fn remove_node(&mut self, addr: &str) {
        let index = self
            .nodes
            .iter()
            .position(|n| n.addr() == addr)
            .unwrap_or_else(|| panic!("{addr} is not a node of this cluster"));
        let mut node = self.nodes.remove(index);
        node.terminate();
    }

    /// Sets the shape [`Cluster::wait_converged`] expects: how many primaries serve slots
    /// and how many replicas each has.
    pub fn set_shape(&mut self, primaries: usize, replicas_per_primary: usize) {
        self.primaries = primaries;
        self.replicas_per_primary = replicas_per_primary;
    }

    /// How the nodes are started.
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// Which server the nodes run.
    pub fn kind(&self) -> ServerKind {
        self.config.kind
    }

    /// Runs `redis-cli --cluster <args...>` in the cluster's directory (with `TERM=dumb`,
    /// so no colour codes), killing it after `timeout`. Returns its output whatever the
    /// outcome; the caller asserts.
    pub fn cli(&self, args: &[&str], timeout: Duration) -> CmdOutput {
        let mut command = Command::new(redis_cli());
        command
            .arg("--cluster")
            .args(args)
            .env("TERM", "dumb")
            .current_dir(&self.dir);
        let name = format!(
            "redis-cli-{}",
            args.first().copied().unwrap_or("none").replace('/', "_")
        );
        run_captured(command, &self.dir, &name, timeout)
    }

    /// `redis-cli --cluster check <addr of the first live node>`.
    pub fn check(&mut self) -> CmdOutput {
        let addr = self
            .live_addrs()
            .into_iter()
            .next()
            .expect("a live node to run --cluster check against");
        self.cli(&["check", &addr], CHECK_TIMEOUT)
    }

    /// Polls [`Cluster::check`] until [`check_ok`] holds; `Err` carries the last output.
    pub fn wait_check_ok(&mut self, timeout: Duration) -> Result<CmdOutput, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let output = self.check();
            if check_ok(&output) {
                return Ok(output);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "redis-cli --cluster check not OK within {timeout:?}; last run:\n{output}"
                ));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// `redis-cli --cluster check` output and every live node's `CLUSTER NODES`, for
    /// failure messages. Never panics.
    pub fn check_report(&mut self) -> String {
        let mut out = String::new();
        match self.live_addrs().first() {
            Some(addr) => out.push_str(&self.cli(&["check", addr], CHECK_TIMEOUT).to_string()),
            None => out.push_str("(no live node to run --cluster check against)"),
        }
        for addr in self.live_addrs() {
            let nodes = query_node_string(&addr, &["CLUSTER", "NODES"])
                .unwrap_or_else(|e| format!("<{e}>"));
            out.push_str(&format!("\n--- CLUSTER NODES from {addr} ---\n{nodes}"));
        }
        out
    }

    /// Addresses of every node started (`"127.0.0.1:P"`), dead ones included.
    pub fn seeds(&self) -> Vec<String> {
        self.nodes.iter().map(ClusterNode::addr).collect()
    }

    /// Every node started, dead ones included.
    pub fn nodes(&self) -> &[ClusterNode] {
        &self.nodes
    }

    /// The cluster ids of [`Cluster::nodes`], in the same order.
    pub fn node_ids(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.id.clone()).collect()
    }

    /// The node with this address.
    pub fn node(&self, addr: &str) -> &ClusterNode {
        self.nodes
            .iter()
            .find(|n| n.addr() == addr)
            .unwrap_or_else(|| panic!("{addr} is not a node of this cluster"))
    }

    /// The node with this address, mutably (to stop or restart it).
    pub fn node_mut(&mut self, addr: &str) -> &mut ClusterNode {
        self.nodes
            .iter_mut()
            .find(|n| n.addr() == addr)
            .unwrap_or_else(|| panic!("{addr} is not a node of this cluster"))
    }

    /// The cluster id of the node at `addr`.
    pub fn id_of(&self, addr: &str) -> String {
        self.node(addr).id.clone()
    }

    /// The address of the node with cluster id `id`.
    pub fn addr_of(&self, id: &str) -> String {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .map(ClusterNode::addr)
            .unwrap_or_else(|| panic!("no node has id {id}"))
    }

    /// The number of primaries it was started with (or set by [`Cluster::set_shape`]).
    pub fn primary_count(&self) -> usize {
        self.primaries
    }

    /// The cluster's directory (one subdirectory per node).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Addresses of nodes whose process is still running.
    pub fn live_addrs(&mut self) -> Vec<String> {
        self.nodes
            .iter_mut()
            .filter_map(|n| n.is_running().then(|| n.addr()))
            .collect()
    }

    /// A redis-rs cluster client seeded with every node (5 s to connect, 10 s per response).
    pub fn client(&self) -> redis::cluster::ClusterClient {
        let seeds: Vec<String> = self
            .seeds()
            .iter()
            .map(|a| format!("redis://{a}/"))
            .collect();
        redis::cluster::ClusterClient::builder(seeds)
            .connection_timeout(Duration::from_secs(5))
            .response_timeout(Duration::from_secs(10))
            .build()
            .expect("a valid cluster client configuration")
    }

    /// A new async redis-rs cluster connection (see [`Cluster::client`]).
    pub async fn async_connection(&self) -> redis::cluster_async::ClusterConnection {
        self.client()
            .get_async_connection()
            .await
            .unwrap_or_else(|e| panic!("cluster connection to {:?}: {e}", self.seeds()))
    }

    /// SIGTERM to the node at `addr` (SIGKILL after 10 s), waiting until it has exited.
    /// [`Cluster::restart_node`] brings it back.
    pub fn stop_node(&mut self, addr: &str) -> Option<ExitStatus> {
        self.node_mut(addr).terminate()
    }

    /// [`ClusterNode::restart`] for the node at `addr`: same port, directory and arguments.
    pub fn restart_node(&mut self, addr: &str) {
        self.node_mut(addr).restart()
    }

    /// [`send_to_bus`] to the cluster bus of the node at `addr`.
    pub fn send_to_bus(&self, addr: &str, bytes: &[u8], linger: Duration) -> BusProbe {
        send_to_bus(&self.node(addr).bus_addr(), bytes, linger)
    }

    /// `CLUSTER SLOTS` as the first live node that answers sees it.
    pub fn slots(&mut self) -> Vec<SlotRange> {
        let mut errors = Vec::new();
        for addr in self.live_addrs() {
            match query_node(&addr, &["CLUSTER", "SLOTS"]).and_then(|v| parse_cluster_slots(&v)) {
                Ok(ranges) => return ranges,
                Err(e) => errors.push(e),
            }
        }
        panic!("no node answered CLUSTER SLOTS: {errors:?}");
    }

    /// `CLUSTER NODES` as the first live node that answers sees it.
    pub fn cluster_nodes(&mut self) -> Vec<NodeInfo> {
        let mut errors = Vec::new();
        for addr in self.live_addrs() {
            match query_node_string(&addr, &["CLUSTER", "NODES"]) {
                Ok(text) => return parse_cluster_nodes(&text),
                Err(e) => errors.push(e),
            }
        }
        panic!("no node answered CLUSTER NODES: {errors:?}");
    }

    /// Addresses of the replicas of the primary at `primary_addr`, per `CLUSTER NODES`
    /// (which, unlike `CLUSTER SLOTS`, lists them as soon as they are attached).
    pub fn replicas_of(&mut self, primary_addr: &str) -> Vec<String> {
        let nodes = self.cluster_nodes();
        let Some(primary) = nodes.iter().find(|n| n.addr == primary_addr) else {
            return Vec::new();
        };
        let mut replicas: Vec<String> = nodes
            .iter()
            .filter(|n| n.primary_id.as_deref() == Some(primary.id.as_str()))
            .map(|n| n.addr.clone())
            .collect();
        replicas.sort();
        replicas
    }

    /// Addresses of the primaries that currently serve slots, sorted.
    pub fn primary_addrs(&mut self) -> Vec<String> {
        let mut addrs: Vec<String> = self.slots().into_iter().map(|r| r.primary).collect();
        addrs.sort();
        addrs.dedup();
        addrs
    }

    /// The address of the primary that currently serves `slot`.
    pub fn primary_for_slot(&mut self, slot: u16) -> String {
        let ranges = self.slots();
        SlotRange::primary_of(&ranges, slot)
            .unwrap_or_else(|| panic!("slot {slot} is not served: {ranges:?}"))
            .to_string()
    }

    /// The cluster id of the primary that currently serves `slot`.
    pub fn primary_id_for_slot(&mut self, slot: u16) -> String {
        let addr = self.primary_for_slot(slot);
        self.id_of(&addr)
    }

    /// `CLUSTER KEYSLOT key`, asked of a live node.
    pub fn keyslot(&mut self, key: &str) -> u16 {
        let addr = self.live_addrs().into_iter().next().expect("a live node");
        let slot = query_node_int(&addr, &["CLUSTER", "KEYSLOT", key])
            .unwrap_or_else(|e| panic!("CLUSTER KEYSLOT {key}: {e}"));
        u16::try_from(slot).expect("slot fits u16")
    }

    /// SIGKILLs the primary serving `slot` (for failover tests) and returns its address.
    pub fn kill_primary_for_slot(&mut self, slot: u16) -> String {
        let addr = self.primary_for_slot(slot);
        self.node_mut(&addr).kill();
        addr
    }

    /// SIGKILLs the node at `addr`.
    pub fn kill_node(&mut self, addr: &str) {
        self.node_mut(addr).kill();
    }

    /// Waits until every live node reports `cluster_state:ok`, all 16384 slots are served by
    /// live primaries and every live node's `CLUSTER SLOTS` names the same primaries for the
    /// same ranges. Returns the slot map (replica lists as the first live node sees them).
    pub fn wait_stable(&mut self, timeout: Duration) -> Result<Vec<SlotRange>, String> {
        self.wait_until(timeout, false)
    }

    /// [`Cluster::wait_stable`], and moreover every node is known to every node, the expected
    /// number of primaries serve slots, each has its replicas (in `CLUSTER NODES`) and each
    /// replica's link is up. Replicas may still be missing from `CLUSTER SLOTS`: see
    /// [`Cluster::wait_replicas_listed`].
    pub fn wait_converged(&mut self, timeout: Duration) -> Result<Vec<SlotRange>, String> {
        self.wait_until(timeout, true)
    }

    fn wait_until(&mut self, timeout: Duration, full: bool) -> Result<Vec<SlotRange>, String> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.check_state(full) {
                Ok(ranges) => return Ok(ranges),
                Err(why) if Instant::now() >= deadline => return Err(why),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn check_state(&mut self, full: bool) -> Result<Vec<SlotRange>, String> {
        let live = self.live_addrs();
        let mut agreed: Option<(String, Vec<SlotRange>)> = None;
        for addr in &live {
            let info = query_node_string(addr, &["CLUSTER", "INFO"])?;
            if !info.lines().any(|l| l.trim_end() == "cluster_state:ok") {
                return Err(format!("{addr}: not cluster_state:ok:\n{info}"));
            }
            let ranges = parse_cluster_slots(&query_node(addr, &["CLUSTER", "SLOTS"])?)?;
            let covered: u32 = ranges
                .iter()
                .map(|r| u32::from(r.end) - u32::from(r.start) + 1)
                .sum();
            if covered != u32::from(SLOTS) {
                return Err(format!("{addr}: CLUSTER SLOTS covers {covered} slots"));
            }
            if let Some(r) = ranges.iter().find(|r| !live.contains(&r.primary)) {
                return Err(format!(
                    "{addr}: slots {}-{} served by dead {}",
                    r.start, r.end, r.primary
                ));
            }
            match &agreed {
                None => agreed = Some((addr.clone(), ranges)),
                Some((first, seen)) if !same_primaries(seen, &ranges) => {
                    return Err(format!(
                        "CLUSTER SLOTS differ: {first} says {seen:?}, {addr} says {ranges:?}"
                    ))
                }
                Some(_) => {}
            }
            if full {
                let nodes = parse_cluster_nodes(&query_node_string(addr, &["CLUSTER", "NODES"])?);
                if nodes.len() != self.nodes.len() {
                    return Err(format!("{addr} knows {} nodes", nodes.len()));
                }
                let role = query_node_string(addr, &["INFO", "replication"])?;
                if role.contains("role:slave") && !role.contains("master_link_status:up") {
                    return Err(format!("{addr}: replica link not up:\n{role}"));
                }
            }
        }
        let (first, ranges) = agreed.ok_or("no live node")?;
        if full {
            let primaries: HashSet<&str> = ranges.iter().map(|r| r.primary.as_str()).collect();
            if primaries.len() != self.primaries {
                return Err(format!(
                    "{} primaries serve slots: {ranges:?}",
                    primaries.len()
                ));
            }
            // Replicas from CLUSTER NODES: CLUSTER SLOTS lists a replica only once its
            // primary has heard (by gossip, seconds later) a non-zero replication offset.
            let nodes = parse_cluster_nodes(&query_node_string(&first, &["CLUSTER", "NODES"])?);
            for primary in nodes.iter().filter(|n| primaries.contains(n.addr.as_str())) {
                let replicas = nodes
                    .iter()
                    .filter(|n| n.primary_id.as_deref() == Some(primary.id.as_str()))
                    .count();
                if replicas != self.replicas_per_primary {
                    return Err(format!(
                        "{first}: primary {} has {replicas} replicas",
                        primary.addr
                    ));
                }
            }
        }
        Ok(ranges)
    }

    /// Waits until `CLUSTER SLOTS` on every live node lists every replica (which Redis 7.0
    /// does only once the primary has learnt by gossip that the replica has synced; some
    /// seconds after the cluster formed). For tests that need the proxy to see replicas.
    pub fn wait_replicas_listed(&mut self, timeout: Duration) -> Result<Vec<SlotRange>, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let attempt = self.check_state(true).and_then(|_| {
                let mut seen = None;
                for addr in self.live_addrs() {
                    let ranges = parse_cluster_slots(&query_node(&addr, &["CLUSTER", "SLOTS"])?)?;
                    if let Some(r) = ranges
                        .iter()
                        .find(|r| r.replicas.len() != self.replicas_per_primary)
                    {
                        return Err(format!(
                            "{addr}: slots {}-{} list replicas {:?}",
                            r.start, r.end, r.replicas
                        ));
                    }
                    match &seen {
                        Some(s) if *s != ranges => {
                            return Err(format!("CLUSTER SLOTS differ: {s:?} vs {ranges:?}"))
                        }
                        _ => seen = Some(ranges),
                    }
                }
                seen.ok_or_else(|| "no live node".to_string())
            });
            match attempt {
                Ok(ranges) => return Ok(ranges),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Moves `slots` slots from primary `from_id` to primary `to_id` with
    /// `redis-cli --cluster reshard` (keys included), then waits until the cluster is stable.
    /// Returns redis-cli's output. Panics on failure or timeout.
    pub fn reshard(&mut self, from_id: &str, to_id: &str, slots: usize) -> String {
        let entry = self.addr_of(to_id);
        let count = slots.to_string();
        let output = self.cli(
            &[
                "reshard",
                &entry,
                "--cluster-from",
                from_id,
                "--cluster-to",
                to_id,
                "--cluster-slots",
                &count,
                "--cluster-yes",
            ],
            RESHARD_TIMEOUT,
        );
        if !output.success() {
            panic!("reshard failed: {output}\n{}", self.check_report());
        }
        if let Err(e) = self.wait_stable(CONVERGE_TIMEOUT) {
            panic!(
                "the cluster did not settle after the reshard: {e}\n{output}\n{}",
                self.check_report()
            );
        }
        output.text()
    }

    /// Waits until some live primary other than `old` serves `slot` and the cluster is stable
    /// (after [`Cluster::kill_primary_for_slot`]); returns the new primary's address.
    pub fn wait_for_new_primary(
        &mut self,
        slot: u16,
        old: &str,
        timeout: Duration,
    ) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let attempt = self.check_state(false).and_then(|ranges| {
                match SlotRange::primary_of(&ranges, slot) {
                    Some(p) if p != old => Ok(p.to_string()),
                    other => Err(format!("slot {slot} still served by {other:?}")),
                }
            });
            match attempt {
                Ok(addr) => return Ok(addr),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Every node's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            out.push_str(&format!(
                "---- {} {} ({}) log ----\n{}\n",
                node.kind,
                node.addr(),
                node.id,
                node.log()
            ));
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        // SIGKILL: the nodes keep no data worth saving, and it is quick.
        for node in &mut self.nodes {
            node.kill();
        }
        if panicking {
            eprintln!(
                "{}---- end of cluster logs; directory kept: {} ----",
                self.logs(),
                self.dir.display()
            );
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// A Redis Cluster of Debian redis-server 7.0 processes with a 2 s node timeout: the cluster
/// the proxy tests run against. It dereferences to [`Cluster`], which has every method.
pub struct RedisCluster(Cluster);

impl RedisCluster {
    /// [`Cluster::start`] with redis-server nodes and `--cluster-node-timeout 2000` (failover
    /// tests stay short).
    pub fn start(primaries: usize, replicas_per_primary: usize) -> RedisCluster {
        let config = ClusterConfig::new(ServerKind::Redis).node_timeout_ms(2000);
        RedisCluster(Cluster::start(config, primaries, replicas_per_primary))
    }

    /// The [`Cluster`] itself.
    pub fn into_inner(self) -> Cluster {
        self.0
    }
}

impl Deref for RedisCluster {
    type Target = Cluster;

    fn deref(&self) -> &Cluster {
        &self.0
    }
}

impl DerefMut for RedisCluster {
    fn deref_mut(&mut self) -> &mut Cluster {
        &mut self.0
    }
}

/// `redis-cli` from `PATH` (env `REDIS_CLI_BIN` overrides).
pub fn redis_cli() -> PathBuf {
    std::env::var_os("REDIS_CLI_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("redis-cli"))
}

/// `redis-benchmark` from `PATH` (env `REDIS_BENCHMARK_BIN` overrides).
pub fn redis_benchmark() -> PathBuf {
    std::env::var_os("REDIS_BENCHMARK_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("redis-benchmark"))
}

// ---------------------------------------------------------------------------------------
// The proxy
// ---------------------------------------------------------------------------------------

/// Path of the `lagwise-proxy` binary: `LAGWISE_BIN_DIR/lagwise-proxy` if that is set
/// (nothing is built); otherwise the workspace target directory for this test binary's
/// profile, after building it once per test process with
/// `cargo build -p lagwise-proxy --bin lagwise-proxy` (`--release` in release test builds).
pub fn proxy_binary() -> PathBuf {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BINARY.get_or_init(|| workspace_binary("lagwise-proxy")) {
        Ok(path) => path.clone(),
        Err(e) => panic!("{e}"),
    }
}

/// A `lagwise-proxy` process started for one test. Dropping it stops the proxy.
pub struct ProxyProcess {
    port: u16,
    process: Supervised,
}

impl ProxyProcess {
    /// Starts `lagwise-proxy --listen 127.0.0.1:P --seeds a,b,c <extra>` (stdout and stderr to
    /// `proxy.log` in a fresh temp dir, which is also its working directory) and waits up to
    /// 10 s until `EXISTS lagwise:probe` through it answers `:0` or `:1` (or `-NOAUTH`, for a
    /// proxy with users). Panics with the log
    /// otherwise; retries with another port if the chosen one was taken.
    pub fn start(seeds: &[String], extra: &[&str]) -> ProxyProcess {
        let binary = proxy_binary();
        for attempt in 1..=START_ATTEMPTS {
            let port = free_port_pair();
            let dir = fresh_temp_dir("proxy");
            let log_path = dir.join("proxy.log");
            let mut command = Command::new(&binary);
            command
                .arg("--listen")
                .arg(format!("127.0.0.1:{port}"))
                .arg("--seeds")
                .arg(seeds.join(","))
                .args(extra)
                .current_dir(&dir);
            let mut proxy = ProxyProcess {
                port,
                process: Supervised::spawn("lagwise-proxy", &mut command, dir, log_path),
            };
            let deadline = Instant::now() + READY_TIMEOUT;
            loop {
                if let Some(status) = proxy.try_wait() {
                    let log = proxy.process.shut_down_quietly();
                    let lower = log.to_ascii_lowercase();
                    if (lower.contains("in use") || lower.contains("addrinuse"))
                        && attempt < START_ATTEMPTS
                    {
                        break; // port taken: drop cleans up, try another
                    }
                    panic!("{command:?} exited early ({status})\n--- proxy log ---\n{log}");
                }
                let last = match raw_query(
                    &proxy.addr(),
                    &["EXISTS", "lagwise:probe"],
                    Duration::from_millis(500),
                ) {
                    Ok(r) if r == b":0\r\n" || r == b":1\r\n" => return proxy,
                    // A proxy with users answers only after AUTH: it is up; the test
                    // authenticates itself.
                    Ok(r) if r.starts_with(b"-NOAUTH") => return proxy,
                    Ok(r) => format!("reply {}", escape(&r)),
                    Err(e) => e,
                };
                if Instant::now() >= deadline {
                    let log = proxy.process.shut_down_quietly();
                    panic!(
                        "{command:?}: EXISTS lagwise:probe got no integer reply within \
                         {READY_TIMEOUT:?} (last: {last})\n--- proxy log ---\n{log}"
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// Starts a proxy with every node of `cluster` as a seed.
    pub fn for_cluster(cluster: &Cluster, extra: &[&str]) -> ProxyProcess {
        ProxyProcess::start(&cluster.seeds(), extra)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `"127.0.0.1:P"`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Its temp directory (also its working directory).
    pub fn dir(&self) -> &Path {
        self.process.dir()
    }

    /// A new blocking raw connection with 5 s read and write timeouts.
    pub fn raw(&self) -> RawConn {
        RawConn::connect(&self.addr())
    }

    /// A redis-rs client (plain, not cluster-aware; RESP2) for the proxy.
    pub fn client(&self) -> redis::Client {
        redis::Client::open(format!("redis://{}/", self.addr())).expect("valid redis URL")
    }

    /// A new blocking redis-rs connection: 5 s to connect, 10 s read and write timeouts.
    pub fn connection(&self) -> redis::Connection {
        let con = self
            .client()
            .get_connection_with_timeout(Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect to the proxy at {}: {e}", self.addr()));
        con.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("set_read_timeout");
        con.set_write_timeout(Some(Duration::from_secs(10)))
            .expect("set_write_timeout");
        con
    }

    /// Everything the proxy wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// The exit status if the process has exited (reaping it), without blocking.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.process.try_wait()
    }

    /// Waits up to `timeout` for the process to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.process.wait_exit(timeout)
    }

    /// Sends SIGTERM (no-op once it has exited).
    pub fn sigterm(&mut self) {
        self.process.sigterm()
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        self.process.kill()
    }

    /// SIGTERM, wait up to 10 s, then SIGKILL. Returns the exit status.
    pub fn terminate(&mut self) -> Option<ExitStatus> {
        self.process.terminate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_slot_matches_the_spec_vectors() {
        assert_eq!(key_slot(b"123456789"), 0x31C3 % SLOTS);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"somekey"), 11058);
        assert_eq!(key_slot(b"foo{hash_tag}"), 2515);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{}{bar}"), key_slot(b"foo{}{bar}"));
        assert_ne!(key_slot(b"foo{}{bar}"), key_slot(b"bar"));
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
        assert_eq!(key_slot(b"foo{bar}{zap}"), key_slot(b"bar"));
    }

    #[test]
    fn cluster_slots_and_nodes_parse() {
        let slots = redis::Value::Array(vec![redis::Value::Array(vec![
            redis::Value::Int(0),
            redis::Value::Int(5460),
            redis::Value::Array(vec![
                redis::Value::BulkString(b"127.0.0.1".to_vec()),
                redis::Value::Int(30001),
                redis::Value::BulkString(b"abc".to_vec()),
            ]),
            redis::Value::Array(vec![
                redis::Value::BulkString(b"127.0.0.1".to_vec()),
                redis::Value::Int(30004),
                redis::Value::BulkString(b"def".to_vec()),
            ]),
        ])]);
        assert_eq!(
            parse_cluster_slots(&slots).unwrap(),
            vec![SlotRange {
                start: 0,
                end: 5460,
                primary: "127.0.0.1:30001".into(),
                replicas: vec!["127.0.0.1:30004".into()],
            }]
        );
        let nodes = parse_cluster_nodes(
            "abc 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460\n\
             def 127.0.0.1:30004@40004,host slave abc 0 1 1 connected\n",
        );
        assert_eq!(nodes.len(), 2);
        assert!(nodes[0].is_primary());
        assert_eq!(nodes[1].addr, "127.0.0.1:30004");
        assert_eq!(nodes[1].primary_id.as_deref(), Some("abc"));
        assert_eq!(nodes[0].slots, vec![(0, 5460)]);
        assert!(nodes[1].slots.is_empty());
        let migrating = parse_cluster_nodes(
            "abc 127.0.0.1:30001@40001 myself,master - 0 0 7 connected 0-5460 15627 \
             [93->-def] [94-<-ghi]\n",
        );
        assert_eq!(migrating[0].slots, vec![(0, 5460), (15627, 15627)]);
        assert_eq!(migrating[0].slot_count(), 5462);
        assert!(migrating[0].is_myself());
    }
}
