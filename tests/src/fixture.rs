//! One real server process per test.
//!
//! [`ServerProcess`] spawns `lagwise-node` (or, to check a test's own expectations,
//! `redis-server`) on a free loopback port, with a fresh temporary directory that holds its
//! data files and its log. It waits until the server answers `PING`, and on drop stops it
//! politely: SIGTERM, then SIGKILL by pid. If the test panicked, the server's log is printed
//! and the directory is kept for a post-mortem.
//!
//! [`RawConn`] is a blocking socket for tests that care about exact reply bytes.

use std::collections::HashSet;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a server may take to answer its first `PING`.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a server may take to exit after SIGTERM before it gets SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(10);
/// Read and write timeout of a [`RawConn`].
const RAW_TIMEOUT: Duration = Duration::from_secs(5);
/// Start attempts when the chosen port turned out to be taken.
const START_ATTEMPTS: usize = 5;

/// Which server a test talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    /// `lagwise-node`, built from this workspace.
    Lagwise,
    /// `redis-server` from `PATH` (or `REDIS_SERVER_BIN`): the reference the tests are checked against.
    Redis,
}

impl fmt::Display for ServerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ServerKind::Lagwise => "lagwise-node",
            ServerKind::Redis => "redis-server",
        })
    }
}

/// From env `LAGWISE_TEST_TARGET` = `"redis"` | `"lagwise"` (default lagwise): lets every test
/// run against redis-server to check the test itself.
pub fn target_kind() -> ServerKind {
    match std::env::var("LAGWISE_TEST_TARGET") {
        Err(_) => ServerKind::Lagwise,
        Ok(v) if v.is_empty() || v.eq_ignore_ascii_case("lagwise") => ServerKind::Lagwise,
        Ok(v) if v.eq_ignore_ascii_case("redis") => ServerKind::Redis,
        Ok(other) => panic!("LAGWISE_TEST_TARGET must be \"redis\" or \"lagwise\", not {other:?}"),
    }
}

/// The workspace root: the parent of this package's directory.
fn workspace_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Path of the `lagwise-node` binary.
///
/// `LAGWISE_BIN_DIR` if set (used as is, nothing is built); otherwise the workspace target
/// directory (`CARGO_TARGET_DIR` or `<workspace>/target`) joined with `debug` or `release`,
/// matching this test binary's profile. In that case the binary is built once per test
/// process, before its first use, with `cargo build -p lagwise-node --bin lagwise-node`.
pub fn node_binary() -> PathBuf {
    // The outcome, failure included, is kept: one failed build fails every test quickly with
    // the same message instead of rebuilding once per test.
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BINARY.get_or_init(|| workspace_binary("lagwise-node")) {
        Ok(path) => path.clone(),
        Err(e) => panic!("{e}"),
    }
}

/// Path of the binary `name` of the workspace package `name`: `LAGWISE_BIN_DIR/<name>` if
/// that is set (nothing is built); otherwise `<target dir>/<debug|release>/<name>` (matching
/// this test binary's profile) after `cargo build -p <name> --bin <name>` (`--release` in
/// release test builds). Callers keep the outcome so that this runs once per test process.
pub(crate) fn workspace_binary(name: &str) -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("LAGWISE_BIN_DIR") {
        return Ok(PathBuf::from(dir).join(name));
    }
    let workspace = workspace_dir();
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace.join(dir), // an absolute path replaces the base
        None => workspace.join("target"),
    };
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .current_dir(&workspace)
        .args(["build", "-p", name, "--bin", name]);
    if !cfg!(debug_assertions) {
        build.arg("--release");
    }
    let output = build
        .output()
        .map_err(|e| format!("cannot run {build:?}: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "{build:?} failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(target.join(profile).join(name))
}

fn redis_binary() -> PathBuf {
    std::env::var_os("REDIS_SERVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("redis-server"))
}

/// The executable of `kind`: [`node_binary`] or `redis-server` (env `REDIS_SERVER_BIN`
/// overrides the latter).
pub fn server_binary(kind: ServerKind) -> PathBuf {
    match kind {
        ServerKind::Lagwise => node_binary(),
        ServerKind::Redis => redis_binary(),
    }
}

/// Runs a server expected to exit by itself (e.g. on a bad directive): `--port <free port>
/// --bind 127.0.0.1 --dir <fresh temp dir>` then `args`. Returns its exit status and combined
/// output, or `None` with the output if it was still running after `timeout` (it is killed).
pub fn run_until_exit(
    kind: ServerKind,
    args: &[&str],
    timeout: Duration,
) -> (Option<ExitStatus>, String) {
    let binary = server_binary(kind);
    let dir = fresh_temp_dir(kind);
    let log_path = dir.join("server.log");
    let log = File::create(&log_path).expect("create log file");
    let log_err = log.try_clone().expect("clone log file handle");
    let mut child = Command::new(&binary)
        .arg("--port")
        .arg(free_port().to_string())
        .args(["--bind", "127.0.0.1", "--dir"])
        .arg(&dir)
        .args(args)
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
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
        std::thread::sleep(Duration::from_millis(10));
    };
    let output = fs::read(&log_path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default();
    let _ = fs::remove_dir_all(&dir);
    (status, output)
}

/// A fresh, empty directory `lagwise-test-<what>-...` under the system temp dir, unique across
/// processes and threads.
pub fn fresh_temp_dir(what: impl fmt::Display) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let dir = std::env::temp_dir().join(format!(
        "lagwise-test-{what}-{}-{n}-{nanos}",
        std::process::id()
    ));
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

/// A loopback port that the kernel reported free and that no other server of this test
/// process was given. Between this check and the server's bind another process may take the
/// port; [`ServerProcess::start`] retries with another port when that happens.
fn free_port() -> u16 {
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let handed_out = handed_out.get_or_insert_with(HashSet::new);
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        if handed_out.insert(port) {
            return port;
        }
    }
}

/// Everything the process wrote to its log file so far (or why it cannot be read).
pub(crate) fn read_log(path: &Path) -> String {
    fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_else(|e| format!("<cannot read {}: {e}>", path.display()))
}

/// Sends SIGTERM to `pid` with kill(1): std can only SIGKILL and the workspace forbids
/// `unsafe` (libc::kill). The caller must not have reaped the child yet, so the pid cannot
/// have been reused.
pub(crate) fn send_sigterm(pid: u32) -> Result<(), String> {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match status {
        Ok(s) if s.success() => Ok(()),
        _ => Err(format!("kill -TERM {pid} failed ({status:?})")),
    }
}

/// Sends `signal` (a kill(1) name: `STOP`, `CONT`, ...) to `pid`. Same caveat as
/// [`send_sigterm`]: the child must not have been reaped.
pub fn send_signal(pid: u32, signal: &str) -> Result<(), String> {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match status {
        Ok(s) if s.success() => Ok(()),
        _ => Err(format!("kill -{signal} {pid} failed ({status:?})")),
    }
}

/// A child process with its own temp directory and log file: the process handling shared by
/// [`ServerProcess`] and [`crate::cluster::ProxyProcess`].
///
/// Dropping it stops the process (SIGTERM, then SIGKILL after 10 s). If the thread is
/// panicking, the log is printed (unless [`Supervised::shut_down_quietly`] already handed it
/// to the caller) and the directory is kept for a post-mortem; otherwise the directory is
/// removed.
pub struct Supervised {
    /// What the process is, for messages (e.g. `lagwise-node`).
    label: String,
    child: Child,
    dir: PathBuf,
    log_path: PathBuf,
    exit: Option<ExitStatus>,
    /// False once the log was already reported (startup failure): drop stays quiet.
    print_log_on_panic: bool,
    /// True when a successor process took over the directory: drop leaves it in place.
    keep_dir: bool,
}

impl Supervised {
    /// Spawns `command` with stdin from `/dev/null` and stdout and stderr appended to a new
    /// file `log_path`. `dir` is the process's directory, removed on a clean drop. Panics if
    /// the log cannot be created or the program cannot be started.
    pub fn spawn(
        label: impl Into<String>,
        command: &mut Command,
        dir: PathBuf,
        log_path: PathBuf,
    ) -> Supervised {
        let log = File::create(&log_path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log_path.display()));
        let log_err = log.try_clone().expect("clone log file handle");
        let child = command
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| {
                let program = Path::new(command.get_program());
                panic!("cannot start {}: {e}", program.display())
            });
        Supervised {
            label: label.into(),
            child,
            dir,
            log_path,
            exit: None,
            print_log_on_panic: true,
            keep_dir: false,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Everything the process wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        read_log(&self.log_path)
    }

    /// The exit status if the process has exited (reaping it), without blocking.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    /// Waits up to `timeout` for the process to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends SIGTERM (no-op once it has exited).
    pub fn sigterm(&mut self) {
        if self.try_wait().is_some() {
            return;
        }
        if let Err(e) = send_sigterm(self.pid()) {
            if self.try_wait().is_none() {
                eprintln!("{e}");
            }
        }
    }

    /// SIGKILL and reap (no-op once it has exited).
    pub fn kill(&mut self) {
        if self.try_wait().is_none() {
            let _ = self.child.kill();
            self.exit = self.child.wait().ok();
        }
    }

    /// SIGTERM, wait up to 10 s, then SIGKILL. Returns the exit status (`None` only if
    /// reaping the killed process failed).
    pub fn terminate(&mut self) -> Option<ExitStatus> {
        self.sigterm();
        if let Some(status) = self.wait_exit(TERM_GRACE) {
            return Some(status);
        }
        eprintln!(
            "{} (pid {}) ignored SIGTERM for {TERM_GRACE:?}; sending SIGKILL",
            self.label,
            self.pid()
        );
        self.kill();
        self.exit
    }

    /// Sends `signal` (e.g. `STOP`, `CONT`) unless the process has exited; a failure is
    /// printed, not raised (this also runs from guards' `drop`).
    pub fn signal(&mut self, signal: &str) {
        if self.try_wait().is_some() {
            return;
        }
        if let Err(e) = send_signal(self.pid(), signal) {
            if self.try_wait().is_none() {
                eprintln!("{} (pid {}): {e}", self.label, self.pid());
            }
        }
    }

    /// Leaves the directory in place when dropped (a restarted process uses it).
    pub fn keep_dir_on_drop(&mut self) {
        self.keep_dir = true;
    }

    /// Stops printing the log when dropped during a panic (the caller reports it itself).
    pub fn silence_panic_log(&mut self) {
        self.print_log_on_panic = false;
    }

    /// Kills the process, silences the panic log and returns the log, for a caller about to
    /// panic with it.
    pub fn shut_down_quietly(&mut self) -> String {
        self.kill();
        self.silence_panic_log();
        self.log()
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        let status = self.terminate();
        if panicking && self.print_log_on_panic {
            let status = status.map_or_else(|| "unknown".to_string(), |s| s.to_string());
            eprintln!(
                "---- {label} log ({}, exit {status}) ----\n{}\n---- end of {label} log; \
                 directory kept: {} ----",
                self.log_path.display(),
                self.log(),
                self.dir.display(),
                label = self.label,
            );
        } else if !panicking && !self.keep_dir {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

enum Startup {
    Ready,
    PortTaken,
    Failed(String),
}

/// A server process started for one test. Dropping it stops the server.
pub struct ServerProcess {
    kind: ServerKind,
    port: u16,
    process: Supervised,
}

impl ServerProcess {
    /// Starts a server and blocks until it answers `PING`.
    ///
    /// Arguments: `--port P --bind 127.0.0.1 --save "" --appendonly no
    /// --enable-debug-command yes --dir <fresh temp dir>` then `extra_args` (later ones win).
    /// stdout and stderr go to `server.log` in the temp dir. Panics with the log when the
    /// server exits or does not answer within 10 s; retries with another port if the chosen
    /// one was taken.
    pub fn start(kind: ServerKind, extra_args: &[&str]) -> ServerProcess {
        let binary = server_binary(kind);
        for attempt in 1..=START_ATTEMPTS {
            let port = free_port();
            let dir = fresh_temp_dir(kind);
            let log_path = dir.join("server.log");
            let mut command = Command::new(&binary);
            command
                .arg("--port")
                .arg(port.to_string())
                .args(["--bind", "127.0.0.1"])
                .args(["--save", ""])
                .args(["--appendonly", "no"])
                .args(["--enable-debug-command", "yes"])
                .arg("--dir")
                .arg(&dir)
                .args(extra_args)
                .current_dir(&dir);
            let mut server = ServerProcess {
                kind,
                port,
                process: Supervised::spawn(kind.to_string(), &mut command, dir, log_path),
            };
            match server.wait_ready() {
                Startup::Ready => return server,
                Startup::PortTaken if attempt < START_ATTEMPTS => continue, // drop cleans up
                Startup::PortTaken => {
                    let log = server.process.shut_down_quietly();
                    panic!("{kind}: every port tried was taken; last log:\n{log}");
                }
                Startup::Failed(reason) => {
                    let log = server.process.shut_down_quietly();
                    panic!("{kind} did not start ({reason}): {command:?}\n--- log ---\n{log}");
                }
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// Starts the server again on the same port and in the same directory (its data files
    /// survive), with the arguments of [`ServerProcess::start`] followed by `extra_args`, and
    /// blocks until it answers `PING`. A process still running is killed first (SIGKILL). The
    /// previous log is kept in the directory as `server.log.<n>`.
    pub fn restart(&mut self, extra_args: &[&str]) {
        self.process.kill();
        let kind = self.kind;
        let dir = self.dir().to_path_buf();
        let log_path = dir.join("server.log");
        let kept = (1..)
            .map(|n| dir.join(format!("server.log.{n}")))
            .find(|path| !path.exists())
            .expect("an unused log name");
        let _ = fs::rename(&log_path, &kept);
        for attempt in 1..=START_ATTEMPTS {
            let mut command = Command::new(server_binary(kind));
            command
                .arg("--port")
                .arg(self.port.to_string())
                .args(["--bind", "127.0.0.1"])
                .args(["--save", ""])
                .args(["--appendonly", "no"])
                .args(["--enable-debug-command", "yes"])
                .arg("--dir")
                .arg(&dir)
                .args(extra_args)
                .current_dir(&dir);
            let label = format!("{kind} (restarted; earlier log in {})", kept.display());
            let process = Supervised::spawn(label, &mut command, dir.clone(), log_path.clone());
            let mut previous = std::mem::replace(&mut self.process, process);
            previous.keep_dir_on_drop();
            drop(previous);
            match self.wait_ready() {
                Startup::Ready => return,
                // The old process's socket may linger for a moment: same port, try again.
                Startup::PortTaken if attempt < START_ATTEMPTS => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                Startup::PortTaken => {
                    let log = self.process.shut_down_quietly();
                    panic!("{kind}: port {} stayed taken; last log:\n{log}", self.port);
                }
                Startup::Failed(reason) => {
                    let log = self.process.shut_down_quietly();
                    panic!("{kind} did not restart ({reason}): {command:?}\n--- log ---\n{log}");
                }
            }
        }
    }

    /// SIGKILL and reap (no-op once it has exited): a crash, for fault tests.
    pub fn sigkill(&mut self) {
        self.process.kill()
    }

    /// SIGSTOP: the process freezes (its sockets stay open) until [`ServerProcess::sigcont`].
    pub fn sigstop(&mut self) {
        self.process.signal("STOP")
    }

    /// SIGCONT: resumes a process stopped with [`ServerProcess::sigstop`].
    pub fn sigcont(&mut self) {
        self.process.signal("CONT")
    }

    /// Starts `lagwise-node`.
    pub fn lagwise(extra: &[&str]) -> ServerProcess {
        ServerProcess::start(ServerKind::Lagwise, extra)
    }

    /// Starts `redis-server`.
    pub fn redis(extra: &[&str]) -> ServerProcess {
        ServerProcess::start(ServerKind::Redis, extra)
    }

    /// Starts the server chosen by [`target_kind`].
    pub fn target(extra: &[&str]) -> ServerProcess {
        ServerProcess::start(target_kind(), extra)
    }

    fn wait_ready(&mut self) -> Startup {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.try_wait() {
                let log = self.log().to_ascii_lowercase();
                if log.contains("in use") || log.contains("addrinuse") {
                    return Startup::PortTaken;
                }
                return Startup::Failed(format!("exited early: {status}"));
            }
            if self.answers_ping() {
                return Startup::Ready;
            }
            if Instant::now() >= deadline {
                return Startup::Failed(format!("no PONG within {READY_TIMEOUT:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// One `PING` attempt. `-NOAUTH` also means "up": a server started with
    /// `--requirepass` answers PING only after AUTH.
    fn answers_ping(&self) -> bool {
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        if stream.write_all(b"*1\r\n$4\r\nPING\r\n").is_err() {
            return false;
        }
        let mut reply = Vec::new();
        let mut chunk = [0u8; 64];
        while !reply.ends_with(b"\r\n") {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return false,
                Ok(n) => reply.extend_from_slice(&chunk[..n]),
            }
        }
        reply == b"+PONG\r\n" || reply.starts_with(b"-NOAUTH")
    }

    /// Which server this is.
    pub fn kind(&self) -> ServerKind {
        self.kind
    }

    /// The loopback port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `"127.0.0.1:P"`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The server's temp directory (its `--dir`).
    pub fn dir(&self) -> &Path {
        self.process.dir()
    }

    /// A redis-rs client for this server (RESP2, no password).
    pub fn client(&self) -> redis::Client {
        redis::Client::open(format!("redis://{}/", self.addr())).expect("valid redis URL")
    }

    /// A new multiplexed async connection. Its response timeout is 10 s (the crate's default,
    /// 0.5 s, is too short for a debug build on a busy machine).
    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(10)));
        self.client()
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .unwrap_or_else(|e| panic!("connect to {} at {}: {e}", self.kind, self.addr()))
    }

    /// A new blocking raw connection with 5 s read and write timeouts.
    pub fn raw(&self) -> RawConn {
        RawConn::connect(&self.addr())
    }

    /// Everything the server wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// The exit status if the process has exited (reaping it), without blocking.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.process.try_wait()
    }

    /// Waits up to `timeout` for the process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.process.wait_exit(timeout)
    }

    /// Sends SIGTERM (no-op once it has exited).
    pub fn sigterm(&mut self) {
        self.process.sigterm()
    }

    /// SIGTERM, wait up to 10 s, then SIGKILL. Returns the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        self.process.terminate().expect("wait for a killed server")
    }

    /// Resident set size in KiB, from `/proc/PID/status` (`VmRSS`).
    pub fn rss_kib(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap_or_else(|e| panic!("read /proc/{}/status: {e}", self.pid()));
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS in /proc/{}/status", self.pid()))
    }
}

/// Encodes a command as a RESP multibulk.
pub fn encode_command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Printable form of raw bytes (`\r\n` and non-ASCII escaped) for assertion messages.
pub fn escape(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

/// Length of the first complete RESP2/RESP3 frame in `buf`; `Ok(None)` if it is incomplete,
/// `Err` if the bytes are not RESP. (redis-protocol's RESP3 decoder rejects RESP2's `$-1`,
/// so the framing is checked here; it is only framing, values are not interpreted.)
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, String> {
    let mut pos = 0;
    let mut remaining: u64 = 1; // frames still to read, including nested elements
    while remaining > 0 {
        remaining -= 1;
        let Some(kind) = buf.get(pos).copied() else {
            return Ok(None);
        };
        let Some(eol) = buf[pos..].windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let line = &buf[pos + 1..pos + eol];
        let after_line = pos + eol + 2;
        let number = || -> Result<i64, String> {
            std::str::from_utf8(line)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("bad length {:?} at byte {pos}", escape(line)))
        };
        pos = match kind {
            b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => after_line,
            b'$' | b'!' | b'=' => match number()? {
                -1 if kind == b'$' => after_line,
                len if len >= 0 => {
                    let end = after_line + len as usize;
                    if buf.len() < end + 2 {
                        return Ok(None);
                    }
                    if &buf[end..end + 2] != b"\r\n" {
                        return Err(format!("bulk of length {len} not followed by CRLF"));
                    }
                    end + 2
                }
                len => return Err(format!("bad bulk length {len}")),
            },
            b'*' | b'~' | b'>' | b'%' | b'|' => {
                let n = number()?;
                if n == -1 && kind == b'*' {
                    after_line
                } else if n < 0 {
                    return Err(format!("bad aggregate length {n}"));
                } else {
                    remaining += match kind {
                        b'%' => 2 * n as u64,
                        b'|' => 2 * n as u64 + 1, // an attribute precedes the actual reply
                        _ => n as u64,
                    };
                    after_line
                }
            }
            other => {
                return Err(format!(
                    "unknown type byte {:?} at byte {pos}",
                    other as char
                ))
            }
        };
    }
    Ok(Some(pos))
}

/// A blocking TCP connection that reads whole replies as raw bytes.
pub struct RawConn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawConn {
    /// Connects with 5 s read and write timeouts.
    pub fn connect(addr: &str) -> RawConn {
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        stream
            .set_read_timeout(Some(RAW_TIMEOUT))
            .expect("set_read_timeout");
        stream
            .set_write_timeout(Some(RAW_TIMEOUT))
            .expect("set_write_timeout");
        let _ = stream.set_nodelay(true);
        RawConn {
            stream,
            buf: Vec::new(),
        }
    }

    /// Writes all of `bytes`.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("write {} bytes: {e}", bytes.len()));
    }

    /// Like [`RawConn::send`], but reports a failed write (e.g. the server closed).
    pub fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Reads exactly one complete RESP2/RESP3 reply and returns its raw bytes.
    /// Panics on EOF, timeout or malformed data.
    pub fn read_reply(&mut self) -> Vec<u8> {
        match self.try_read_reply() {
            Ok(reply) => reply,
            Err(e) => panic!("{e}"),
        }
    }

    /// Reads one complete reply; `Err` describes EOF, timeout or malformed data (with the
    /// bytes received so far). Bytes of an incomplete reply stay buffered.
    pub fn try_read_reply(&mut self) -> Result<Vec<u8>, String> {
        loop {
            match frame_len(&self.buf) {
                Ok(Some(n)) => return Ok(self.buf.drain(..n).collect()),
                Ok(None) => {}
                Err(e) => return Err(format!("malformed reply ({e}): {}", escape(&self.buf))),
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    return Err(format!(
                        "connection closed before a complete reply; pending: {:?}",
                        escape(&self.buf)
                    ))
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(format!(
                        "reading a reply: {e}; pending: {:?}",
                        escape(&self.buf)
                    ))
                }
            }
        }
    }

    /// Bytes received but not yet returned as a reply.
    pub fn pending(&self) -> &[u8] {
        &self.buf
    }

    /// Sends `args` as a multibulk and reads one reply.
    pub fn cmd(&mut self, args: &[&[u8]]) -> Vec<u8> {
        self.send(&encode_command(args));
        self.read_reply()
    }

    /// True if the peer closes the connection within the read timeout. Data that arrives
    /// meanwhile is kept in the buffer (see [`RawConn::pending`]).
    pub fn expect_closed(&mut self) -> bool {
        let deadline = Instant::now() + RAW_TIMEOUT;
        let mut chunk = [0u8; 16 * 1024];
        while Instant::now() < deadline {
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
                    ) =>
                {
                    return true
                }
                Err(_) => return false, // timed out
            }
        }
        false
    }

    /// Half-closes the write side (the server sees EOF after what was sent).
    pub fn shutdown_write(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    /// Changes the read timeout (e.g. to check that a reply does *not* arrive quickly).
    pub fn set_read_timeout(&mut self, timeout: Duration) {
        self.stream
            .set_read_timeout(Some(timeout))
            .expect("set_read_timeout");
    }

    /// The underlying stream.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }
}
