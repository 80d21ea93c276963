//! End-to-end tests of the proxy's operational features (issue 9): the admin listener
//! (`/live`, `/ready`, `/metrics`) scraped by a real Prometheus and linted by `promtool`,
//! readiness that follows the topology, the drain on SIGTERM, and the reload of the
//! `--config` file on SIGHUP and when the file changes.
//!
//! Every test starts its own cluster (Debian redis-server 7.0, see `lagwise_tests::cluster`)
//! and proxy, with an admin listener on a free loopback port. The admin endpoints are read
//! with a plain HTTP/1.1 GET over a std `TcpStream`, and `/metrics` with the small
//! text-format parser below ([`metric_sum`]).
//!
//! Prometheus and promtool come from the Debian package `prometheus` (`/usr/bin/prometheus`,
//! `/usr/bin/promtool`; env `PROMETHEUS_BIN` / `PROMTOOL_BIN` override). Without them the
//! tests that need them print a note and pass, unless env `CI` is set: then they fail.
//!
//! The tests of this file run one at a time (two of them measure routing). Every wait is
//! bounded: a poll with a deadline, never a sleep that asserts a timing.
#![allow(clippy::unwrap_used)]

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use lagwise_tests::cluster::{query_node_int, query_node_string, Cluster};
use lagwise_tests::fixture::{send_signal, Supervised};
use lagwise_tests::wire::bulk;
use lagwise_tests::{
    cmd, encode_command, err_text, escape, info_field, key_slot, ProxyProcess, RawConn,
    RedisCluster, SlotRange,
};

/// Timeout of one admin (or Prometheus API) HTTP request.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the admin listener may take to answer `/live` after the proxy answers RESP.
const ADMIN_UP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long replicas may take to be listed, caught up or eligible.
const REPLICAS_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a reload may take to show in the counters (SIGHUP: at once; the file watcher
/// polls about every second, the contract says within ~2 s; slack for a loaded machine).
const RELOAD_TIMEOUT: Duration = Duration::from_secs(15);

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------
// Temp directories, ports, config files
// ---------------------------------------------------------------------------------------

/// A fresh, empty directory `lagwise-test-ops-<what>-...` under the system temp dir.
fn fresh_dir(what: &str) -> PathBuf {
    lagwise_tests::fresh_temp_dir(format!("ops-{what}"))
}

/// A loopback port the kernel reported free just now (in the ephemeral range, so apart from
/// the cluster fixture's ports). Another process may take it before it is bound; rare enough
/// for the admin and Prometheus ports of a test.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// A proxy's `--config` file in its own temp directory, removed on drop unless the test
/// panicked (then its last contents are printed and it is kept).
struct ConfigFile {
    dir: PathBuf,
    path: PathBuf,
}

impl ConfigFile {
    fn new(contents: &str) -> ConfigFile {
        let dir = fresh_dir("config");
        let config = ConfigFile {
            path: dir.join("lagwise-proxy.toml"),
            dir,
        };
        config.write(contents);
        config
    }

    /// Replaces the contents atomically (a temp file renamed over it, as editors and
    /// configuration tools do): the proxy's watcher never reads a half-written file.
    fn write(&self, contents: &str) {
        let tmp = self.dir.join("lagwise-proxy.toml.tmp");
        fs::write(&tmp, contents).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
        fs::rename(&tmp, &self.path)
            .unwrap_or_else(|e| panic!("rename to {}: {e}", self.path.display()));
    }

    fn path(&self) -> &str {
        self.path.to_str().expect("a UTF-8 temp path")
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- config file {} ----\n{}---- end ----",
                self.path.display(),
                fs::read_to_string(&self.path).unwrap_or_default()
            );
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Polls `check` every `interval` until it returns `Ok` or `timeout` passes; then the last
/// error.
fn poll<T>(
    timeout: Duration,
    interval: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(interval),
        }
    }
}

// ---------------------------------------------------------------------------------------
// HTTP/1.1 GET
// ---------------------------------------------------------------------------------------

#[derive(Debug)]
struct HttpResponse {
    status: u16,
    body: String,
}

/// `GET path` on a fresh connection to `addr` (`Connection: close`), bounded by
/// [`HTTP_TIMEOUT`] as a whole. Never panics: any failure is an `Err` saying what happened.
fn http_get(addr: &str, path: &str) -> Result<HttpResponse, String> {
    let sock: SocketAddr = addr
        .parse()
        .map_err(|e| format!("bad address {addr}: {e}"))?;
    let deadline = Instant::now() + HTTP_TIMEOUT;
    let mut stream = TcpStream::connect_timeout(&sock, HTTP_TIMEOUT)
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = stream.set_read_timeout(Some(HTTP_TIMEOUT));
    let _ = stream.set_write_timeout(Some(HTTP_TIMEOUT));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("GET {path} on {addr}: write: {e}"))?;
    let mut raw = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(format!(
                    "GET {path} on {addr}: read: {e} after {} bytes",
                    raw.len()
                ))
            }
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "GET {path} on {addr}: no end within {HTTP_TIMEOUT:?}"
            ));
        }
    }
    parse_http_response(&raw).map_err(|e| format!("GET {path} on {addr}: {e}"))
}

/// Status and body of a whole HTTP/1.1 response (`Content-Length`, chunked, or up to EOF).
fn parse_http_response(raw: &[u8]) -> Result<HttpResponse, String> {
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no end of headers in {}", escape(raw)))?;
    let head = String::from_utf8_lossy(&raw[..head_end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<usize>().ok();
        }
    }
    let rest = &raw[head_end + 4..];
    let body = if chunked {
        decode_chunked(rest)?
    } else if let Some(n) = length {
        rest.get(..n)
            .ok_or_else(|| format!("body shorter than its Content-Length {n}: {}", rest.len()))?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok(HttpResponse {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn decode_chunked(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let eol = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk size line")?;
        let line = String::from_utf8_lossy(&rest[..eol]);
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(body);
        }
        let data = rest.get(..size).ok_or("truncated chunk")?;
        body.extend_from_slice(data);
        rest = rest.get(size + 2..).ok_or("truncated chunk end")?;
    }
}

/// Percent-encodes a query-string value (everything but unreserved characters).
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Prometheus text format
// ---------------------------------------------------------------------------------------

/// One sample line of the text exposition format.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

impl Sample {
    fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Every sample of a `/metrics` body (comments and blank lines skipped).
fn parse_metrics(text: &str) -> Result<Vec<Sample>, String> {
    let mut samples = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        samples.push(parse_sample(line).map_err(|e| format!("line {}: {e}: {line:?}", n + 1))?);
    }
    Ok(samples)
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_ascii_whitespace())
        .ok_or("no value")?;
    let name = line[..name_end].to_string();
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices();
        loop {
            // Label name up to '=' (or the closing brace).
            let mut label = String::new();
            let close = loop {
                match chars.next() {
                    Some((i, '}')) if label.trim().is_empty() => break Some(i),
                    Some((_, '=')) => break None,
                    Some((_, ',')) if label.trim().is_empty() => {}
                    Some((_, c)) => label.push(c),
                    None => return Err("unterminated label set".into()),
                }
            };
            if let Some(i) = close {
                rest = &after[i + 1..];
                break;
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err(format!("label {label:?}: value not quoted"));
            }
            let mut value = String::new();
            loop {
                match chars.next() {
                    Some((_, '"')) => break,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c)) => value.push(c),
                        None => return Err("unterminated escape".into()),
                    },
                    Some((_, c)) => value.push(c),
                    None => return Err("unterminated label value".into()),
                }
            }
            labels.push((label.trim().to_string(), value));
        }
    }
    let value_text = rest.split_ascii_whitespace().next().ok_or("no value")?;
    let value = match value_text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().map_err(|_| format!("bad value {v:?}"))?,
    };
    Ok(Sample {
        name,
        labels,
        value,
    })
}

/// The samples of metric `name` whose labels include every `(label, value)` of `filter`.
fn matching<'a>(
    samples: &'a [Sample],
    name: &'a str,
    filter: &'a [(&str, &str)],
) -> impl Iterator<Item = &'a Sample> + 'a {
    samples.iter().filter(move |s| {
        s.name == name
            && filter
                .iter()
                .all(|(label, value)| s.label(label) == Some(*value))
    })
}

/// The sum of the samples of `name` matching `filter` (0 when there is none: a labelled
/// counter may appear only once it is first incremented). Panics if `text` does not parse.
fn metric_sum(text: &str, name: &str, filter: &[(&str, &str)]) -> f64 {
    let samples = parse_metrics(text).unwrap_or_else(|e| panic!("/metrics: {e}\n{text}"));
    matching(&samples, name, filter).fold(0.0, |sum, s| sum + s.value)
}

/// Whether `text` has any sample of `name`.
fn metric_present(text: &str, name: &str) -> bool {
    let samples = parse_metrics(text).unwrap_or_else(|e| panic!("/metrics: {e}\n{text}"));
    let present = matching(&samples, name, &[]).next().is_some();
    present
}

/// Every sample line of `name`, for messages.
fn metric_lines(text: &str, name: &str) -> String {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn metrics_text_parser_sums_matching_samples() {
    let text = "# HELP lagwise_proxy_reads_total Reads.\n\
                # TYPE lagwise_proxy_reads_total counter\n\
                lagwise_proxy_reads_total{policy=\"primary\",target=\"primary\",reason=\"policy\"} 7\n\
                lagwise_proxy_reads_total{policy=\"prefer-replica\",target=\"replica\",reason=\"fresh\"} 5\n\
                lagwise_proxy_reads_total{policy=\"replica\",target=\"replica\",reason=\"fresh\"} 1e1\n\
                lagwise_proxy_reads_totally 100\n\
                weird{a=\"x,y}\\\"z\",b=\"\\\\\",} +Inf 1700000000\n\
                lagwise_proxy_ready 1\n";
    let replica = [("target", "replica")];
    assert_eq!(
        metric_sum(text, "lagwise_proxy_reads_total", &replica),
        15.0
    );
    assert_eq!(metric_sum(text, "lagwise_proxy_reads_total", &[]), 22.0);
    assert_eq!(
        metric_sum(text, "lagwise_proxy_reads_total", &[("target", "none")]),
        0.0
    );
    assert_eq!(metric_sum(text, "lagwise_proxy_ready", &[]), 1.0);
    assert!(metric_present(text, "lagwise_proxy_ready"));
    assert!(!metric_present(text, "lagwise_proxy_reads"));
    let samples = parse_metrics(text).unwrap();
    let weird = samples.iter().find(|s| s.name == "weird").unwrap();
    assert_eq!(weird.label("a"), Some("x,y}\"z"));
    assert_eq!(weird.label("b"), Some("\\"));
    assert_eq!(weird.value, f64::INFINITY);
    assert!(parse_metrics("m{a=\"1\" 2\n").is_err());
    let response = parse_http_response(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
    )
    .unwrap();
    assert_eq!((response.status, response.body.as_str()), (200, "abcde"));
}

// ---------------------------------------------------------------------------------------
// The proxy with an admin listener
// ---------------------------------------------------------------------------------------

/// A proxy in front of `cluster` with `--admin 127.0.0.1:<free port>`, `--config <file>` if
/// given, then `extra`; waits until its `/live` answers 200. Returns it and the admin address.
fn start_proxy(
    cluster: &Cluster,
    config: Option<&ConfigFile>,
    extra: &[&str],
) -> (ProxyProcess, String) {
    let admin = format!("127.0.0.1:{}", free_port());
    let mut args = vec!["--admin", admin.as_str()];
    if let Some(config) = config {
        args.extend(["--config", config.path()]);
    }
    args.extend_from_slice(extra);
    let proxy = ProxyProcess::for_cluster(cluster, &args);
    let live = poll(
        ADMIN_UP_TIMEOUT,
        Duration::from_millis(50),
        || match http_get(&admin, "/live")? {
            r if r.status == 200 => Ok(()),
            r => Err(format!("/live answered {r:?}")),
        },
    );
    if let Err(e) = live {
        panic!(
            "admin listener {admin} not up within {ADMIN_UP_TIMEOUT:?}: {e}\n--- proxy log ---\n{}",
            proxy.log()
        );
    }
    (proxy, admin)
}

/// The `/metrics` body; panics (with the proxy's log) unless it answers 200.
fn scrape(proxy: &ProxyProcess, admin: &str) -> String {
    match http_get(admin, "/metrics") {
        Ok(r) if r.status == 200 => r.body,
        other => panic!(
            "/metrics on {admin}: {other:?}\n--- proxy log ---\n{}",
            proxy.log()
        ),
    }
}

/// Runs a command through `con` that must succeed.
fn q<T: redis::FromRedisValue>(con: &mut redis::Connection, args: &[&str]) -> T {
    match cmd(args).query::<T>(con) {
        Ok(v) => v,
        Err(e) => panic!("{args:?} failed: {}", err_text(&e)),
    }
}

/// PROXY INFO on a fresh connection (for checks and failure messages; never panics).
fn proxy_info(proxy: &ProxyProcess) -> String {
    let mut con = proxy.connection();
    match cmd(&["PROXY", "INFO"]).query::<redis::Value>(&mut con) {
        Ok(redis::Value::BulkString(b)) => String::from_utf8_lossy(&b).into_owned(),
        Ok(redis::Value::VerbatimString { text, .. }) => text,
        Ok(other) => format!("PROXY INFO answered {other:?}"),
        Err(e) => format!("PROXY INFO failed: {}", err_text(&e)),
    }
}

/// `/usr/bin/<name>` (or env `env_override`). When it is missing: with env `CI` set, panics;
/// otherwise prints a note and returns `None` (the test passes without running).
fn prometheus_tool(name: &str, env_override: &str) -> Option<PathBuf> {
    let path = std::env::var_os(env_override)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new("/usr/bin").join(name));
    if path.is_file() {
        return Some(path);
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "{} is missing and CI is set: install the Debian package prometheus",
            path.display()
        );
    }
    eprintln!(
        "note: {} is missing (apt-get install prometheus, or set {env_override}); \
         skipping this test",
        path.display()
    );
    None
}

/// Sends SIGCONT to every pid when dropped, so that a failing test leaves nothing stopped.
struct Stopped(Vec<u32>);

impl Stopped {
    fn new(pids: Vec<u32>) -> Stopped {
        for &pid in &pids {
            send_signal(pid, "STOP").unwrap();
        }
        Stopped(pids)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        for &pid in &self.0 {
            let _ = send_signal(pid, "CONT");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Prometheus and promtool
// ---------------------------------------------------------------------------------------

const PROMETHEUS_JOB: &str = "lagwise-proxy";

/// The value of the first element of an instant-vector query's result (`None` for an empty
/// result), from Prometheus' `/api/v1/query` JSON: `..."result":[{"metric":{..},
/// "value":[<time>,"<value>"]}]...`.
fn prometheus_value(web: &str, query: &str) -> Result<Option<f64>, String> {
    let path = format!("/api/v1/query?query={}", percent_encode(query));
    let r = http_get(web, &path)?;
    if r.status != 200 || !r.body.contains("\"status\":\"success\"") {
        return Err(format!("{query}: HTTP {}: {}", r.status, r.body));
    }
    let result = r
        .body
        .split_once("\"result\":[")
        .map(|(_, rest)| rest)
        .ok_or_else(|| format!("{query}: no result in {}", r.body))?;
    if result.starts_with(']') {
        return Ok(None);
    }
    let value = result
        .split_once("\"value\":[")
        .and_then(|(_, rest)| rest.split_once(",\""))
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(value, _)| value)
        .ok_or_else(|| format!("{query}: no value in {}", r.body))?;
    value
        .parse()
        .map(Some)
        .map_err(|_| format!("{query}: bad value {value:?} in {}", r.body))
}

#[test]
fn prometheus_scrapes_the_proxy_and_sees_traffic() {
    let Some(prometheus) = prometheus_tool("prometheus", "PROMETHEUS_BIN") else {
        return;
    };
    let _serial = serial();
    let cluster = RedisCluster::start(3, 0);
    let (proxy, admin) = start_proxy(&cluster, None, &[]);

    let dir = fresh_dir("prometheus");
    let web = format!("127.0.0.1:{}", free_port());
    let config = dir.join("prometheus.yml");
    fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: {PROMETHEUS_JOB}\n    static_configs:\n      \
             - targets: ['{admin}']\n"
        ),
    )
    .unwrap();
    let mut command = Command::new(&prometheus);
    command
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .current_dir(&dir);
    let log_path = dir.join("prometheus.log");
    let mut server = Supervised::spawn("prometheus", &mut command, dir, log_path);
    let started = Instant::now();
    let ready = poll(Duration::from_secs(60), Duration::from_millis(100), || {
        if let Some(status) = server.try_wait() {
            panic!("prometheus exited early ({status})");
        }
        match http_get(&web, "/-/ready")? {
            r if r.status == 200 => Ok(()),
            r => Err(format!("/-/ready answered {r:?}")),
        }
    });
    if let Err(e) = ready {
        panic!("prometheus on {web} not ready within 60 s: {e}");
    }
    eprintln!("prometheus ready after {:?}", started.elapsed());

    let traffic = Instant::now();
    let mut con = proxy.connection();
    for i in 0..500 {
        let _: () = q(&mut con, &["SET", &format!("prom:{i}"), "v"]);
    }
    let sets_took = traffic.elapsed();
    let total_query = "sum(lagwise_proxy_requests_total)";
    let up_query = format!("up{{job=\"{PROMETHEUS_JOB}\"}}");
    let seen = poll(Duration::from_secs(60), Duration::from_millis(250), || {
        let total = prometheus_value(&web, total_query)?;
        let up = prometheus_value(&web, &up_query)?;
        match (total, up) {
            (Some(total), Some(up)) if total >= 500.0 && up == 1.0 => Ok((total, up)),
            other => Err(format!("(sum, up) = {other:?}")),
        }
    });
    match seen {
        Ok((total, up)) => eprintln!(
            "500 SETs took {sets_took:?}; prometheus saw {total_query} = {total} and \
             {up_query} = {up} {:?} after the first SET",
            traffic.elapsed()
        ),
        Err(e) => panic!(
            "prometheus did not see the traffic within 60 s: last {e}\n\
             --- proxy /metrics requests ---\n{}\n--- proxy log ---\n{}",
            metric_lines(&scrape(&proxy, &admin), "lagwise_proxy_requests_total"),
            proxy.log()
        ),
    }
}

#[test]
fn promtool_accepts_the_proxy_metrics() {
    let Some(promtool) = prometheus_tool("promtool", "PROMTOOL_BIN") else {
        return;
    };
    let _serial = serial();
    let mut cluster = RedisCluster::start(3, 1);
    if let Err(e) = cluster.wait_replicas_listed(REPLICAS_TIMEOUT) {
        panic!("replicas not listed: {e}\n{}", cluster.logs());
    }
    let (proxy, admin) = start_proxy(&cluster, None, &["--read-policy", "prefer-replica"]);
    // Traffic of several kinds, so that labelled series and histograms have samples.
    let mut con = proxy.connection();
    for i in 0..50 {
        let key = format!("lint:{i}");
        let _: () = q(&mut con, &["SET", &key, "v"]);
        let _: Option<String> = q(&mut con, &["GET", &key]);
        let _: i64 = q(&mut con, &["HSET", &format!("lint:h{i}"), "f", "v"]);
    }
    let _ = cmd(&["MGET", "lint:1", "lint:2", "lint:3"]).query::<redis::Value>(&mut con);
    let _ = cmd(&["NOSUCHCOMMAND"]).query::<redis::Value>(&mut con);
    let replicas = poll(REPLICAS_TIMEOUT, Duration::from_millis(100), || {
        let text = scrape(&proxy, &admin);
        let eligible = metric_sum(&text, "lagwise_proxy_replica_eligible", &[]);
        if eligible >= 3.0 {
            Ok(text)
        } else {
            Err(metric_lines(&text, "lagwise_proxy_replica_eligible"))
        }
    });
    let text = replicas.unwrap_or_else(|e| {
        panic!(
            "lagwise_proxy_replica_eligible did not sum to 3 within {REPLICAS_TIMEOUT:?}: \
             {e:?}\n--- proxy log ---\n{}",
            proxy.log()
        )
    });

    let dir = fresh_dir("promtool");
    let input = dir.join("metrics.txt");
    fs::write(&input, &text).unwrap();
    let (out_path, err_path) = (dir.join("promtool.out"), dir.join("promtool.err"));
    let mut child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(File::open(&input).unwrap())
        .stdout(File::create(&out_path).unwrap())
        .stderr(File::create(&err_path).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", promtool.display()));
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("promtool check metrics did not finish within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = format!(
        "{}{}",
        fs::read_to_string(&out_path).unwrap_or_default(),
        fs::read_to_string(&err_path).unwrap_or_default()
    );
    eprintln!(
        "promtool check metrics: {status}, {} sample lines, output {:?}",
        text.lines().filter(|l| !l.starts_with('#')).count(),
        output.trim()
    );
    assert!(
        status.success() && output.trim().is_empty(),
        "promtool check metrics ({status}) printed:\n{output}\n--- /metrics ---\n{text}"
    );
    let _ = fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------
// /ready follows the topology
// ---------------------------------------------------------------------------------------

/// Polls until `/ready` answers `want`, checking on every round that `/live` answers 200.
/// Returns how long it took and the `/ready` body; `Err` if `/live` failed once or `/ready`
/// never answered `want` within `timeout`.
fn await_ready_status(
    admin: &str,
    want: u16,
    timeout: Duration,
) -> Result<(Duration, String), String> {
    let start = Instant::now();
    loop {
        match http_get(admin, "/live") {
            Ok(r) if r.status == 200 => {}
            other => {
                return Err(format!(
                    "/live did not answer 200 (after {:?}): {other:?}",
                    start.elapsed()
                ))
            }
        }
        let last = match http_get(admin, "/ready") {
            Ok(r) if r.status == want => return Ok((start.elapsed(), r.body)),
            Ok(r) => format!("{} {:?}", r.status, r.body),
            Err(e) => e,
        };
        if start.elapsed() >= timeout {
            return Err(format!(
                "/ready did not answer {want} within {timeout:?}; last: {last}"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls until the `lagwise_proxy_ready` gauge is `want`.
fn await_ready_gauge(proxy: &ProxyProcess, admin: &str, want: f64) -> Result<(), String> {
    poll(Duration::from_secs(5), Duration::from_millis(50), || {
        let text = scrape(proxy, admin);
        if !metric_present(&text, "lagwise_proxy_ready") {
            return Err("no lagwise_proxy_ready in /metrics".into());
        }
        match metric_sum(&text, "lagwise_proxy_ready", &[]) {
            v if v == want => Ok(()),
            v => Err(format!("lagwise_proxy_ready is {v}, not {want}")),
        }
    })
}

#[test]
fn ready_flips_when_the_topology_is_lost_and_back() {
    let _serial = serial();
    let cluster = RedisCluster::start(3, 0);
    let config = ConfigFile::new("topology_refresh_ms = 500\n");
    let (proxy, admin) = start_proxy(&cluster, Some(&config), &[]);
    let fail =
        |what: &str, e: String| -> ! { panic!("{what}: {e}\n--- proxy log ---\n{}", proxy.log()) };

    let (took, _) = await_ready_status(&admin, 200, Duration::from_secs(30))
        .unwrap_or_else(|e| fail("at start", e));
    eprintln!("/ready 200 {took:?} after the proxy answered RESP");
    await_ready_gauge(&proxy, &admin, 1.0).unwrap_or_else(|e| fail("while ready", e));

    let stopped = Stopped::new(cluster.nodes().iter().map(|n| n.pid()).collect());
    let (took, why) = await_ready_status(&admin, 503, Duration::from_secs(30))
        .unwrap_or_else(|e| fail("with every node stopped", e));
    eprintln!(
        "every node SIGSTOPped: /ready 503 after {took:?}: {:?}",
        why.trim()
    );
    assert!(!why.trim().is_empty(), "the 503 body should say why");
    await_ready_gauge(&proxy, &admin, 0.0).unwrap_or_else(|e| fail("while not ready", e));

    drop(stopped); // SIGCONT
    let (took, _) = await_ready_status(&admin, 200, Duration::from_secs(30))
        .unwrap_or_else(|e| fail("after SIGCONT", e));
    eprintln!("every node SIGCONTed: /ready 200 after {took:?}");
    await_ready_gauge(&proxy, &admin, 1.0).unwrap_or_else(|e| fail("ready again", e));
}

// ---------------------------------------------------------------------------------------
// SIGTERM drains
// ---------------------------------------------------------------------------------------

/// `pairs` × (`SET <prefix>{i} v{i}`, `GET <prefix>{i}`), encoded.
fn set_get_pipeline(prefix: &str, pairs: usize) -> Vec<u8> {
    let mut pipeline = Vec::new();
    for i in 0..pairs {
        let (key, value) = (format!("{prefix}{i}"), format!("v{i}"));
        pipeline.extend(encode_command(&[b"SET", key.as_bytes(), value.as_bytes()]));
        pipeline.extend(encode_command(&[b"GET", key.as_bytes()]));
    }
    pipeline
}

/// Reads the replies of [`set_get_pipeline`]`(_, pairs)`; `Err` at the first one missing or
/// wrong.
fn read_set_get_replies(conn: &mut RawConn, pairs: usize) -> Result<(), String> {
    for i in 0..pairs {
        let set = conn.try_read_reply();
        let get = conn.try_read_reply();
        match (set, get) {
            (Ok(set), Ok(get)) if set == b"+OK\r\n" && get == bulk(&format!("v{i}")) => {}
            (set, get) => {
                return Err(format!(
                    "pair {i} (after {} good replies): SET {:?}, GET {:?}",
                    2 * i,
                    set.map(|r| escape(&r)),
                    get.map(|r| escape(&r))
                ))
            }
        }
    }
    Ok(())
}

#[test]
fn sigterm_drains_in_flight_requests_and_exits_0() {
    const GRACE: Duration = Duration::from_secs(10);
    // The BLPOP's timeout: long enough that on a loaded machine SIGTERM, the /ready check
    // and the refused connect all happen while it still waits (they took < 0.6 s with every
    // core busy).
    const BLPOP_SECS: u64 = 3;
    // SET + GET pairs pipelined behind the BLPOP on its connection: their replies wait for
    // its reply (replies keep the order of requests), so they are in flight at SIGTERM.
    // Kept well under any sane cap on requests in flight per connection, so that the proxy
    // has read them all.
    const BEHIND: usize = 100;
    // SET + GET pairs of the pipeline on a second connection: 2000 requests.
    const PAIRS: usize = 1000;
    let _serial = serial();
    let mut cluster = RedisCluster::start(3, 0);
    let config = ConfigFile::new(&format!("shutdown_grace_secs = {}\n", GRACE.as_secs()));
    let (mut proxy, admin) = start_proxy(&cluster, Some(&config), &[]);
    let blpop_owner = SlotRange::primary_of(&cluster.slots(), key_slot(b"drain:list"))
        .expect("slot of drain:list served")
        .to_string();
    let base = metric_sum(&scrape(&proxy, &admin), "lagwise_proxy_requests_total", &[]);

    // A BLPOP with requests pipelined behind it on one connection, 2000 requests pipelined
    // on another; no reply read yet.
    let mut blocked = proxy.raw();
    let blpop_sent = Instant::now();
    let mut requests =
        encode_command(&[b"BLPOP", b"drain:list", BLPOP_SECS.to_string().as_bytes()]);
    requests.extend(set_get_pipeline("drain:behind:", BEHIND));
    blocked.send(&requests);
    let mut pipelined = proxy.raw();
    pipelined.send(&set_get_pipeline("drain:", PAIRS));

    // Received: the BLPOP waits on its primary, and the proxy counted every request (it
    // counts them as it reads them).
    let blocked_on_node = poll(Duration::from_secs(10), Duration::from_millis(20), || {
        let clients = query_node_string(&blpop_owner, &["CLIENT", "LIST"])?;
        match clients.lines().any(|l| l.contains("cmd=blpop")) {
            true => Ok(()),
            false => Err(format!("no blocked BLPOP on {blpop_owner}:\n{clients}")),
        }
    });
    if let Err(e) = blocked_on_node {
        panic!("{e}\n--- proxy log ---\n{}", proxy.log());
    }
    let sent = (1 + 2 * BEHIND + 2 * PAIRS) as f64;
    let received = poll(Duration::from_secs(10), Duration::from_millis(20), || {
        let n = metric_sum(&scrape(&proxy, &admin), "lagwise_proxy_requests_total", &[]) - base;
        match n >= sent {
            true => Ok(n),
            false => Err(format!("{n} of {sent} requests counted")),
        }
    });
    if let Err(e) = received {
        panic!(
            "the proxy did not count the requests: {e}\n--- proxy log ---\n{}",
            proxy.log()
        );
    }

    let term = Instant::now();
    proxy.sigterm();
    eprintln!(
        "SIGTERM {:?} after the BLPOP was sent",
        term.duration_since(blpop_sent)
    );
    let mut problems = Vec::new();
    if term.duration_since(blpop_sent) >= Duration::from_millis(BLPOP_SECS * 1000 - 500) {
        problems.push(format!(
            "the machine is too slow for this test: SIGTERM went out only {:?} after the \
             BLPOP, which waits {BLPOP_SECS} s",
            term.duration_since(blpop_sent)
        ));
    }

    // /ready turns 503 while the drain runs.
    let not_ready = poll(
        Duration::from_secs(5),
        Duration::from_millis(10),
        || match http_get(&admin, "/ready")? {
            r if r.status == 503 => Ok(r.body),
            r => Err(format!("/ready answered {} {:?}", r.status, r.body)),
        },
    );
    match not_ready {
        Ok(body) => eprintln!(
            "/ready 503 {:?} after SIGTERM: {:?}",
            term.elapsed(),
            body.trim()
        ),
        Err(e) => problems.push(format!("/ready did not answer 503 after SIGTERM: {e}")),
    }

    // The listener closes: a new connection is refused while the drain still runs.
    let proxy_addr: SocketAddr = proxy.addr().parse().unwrap();
    let refused =
        poll(
            Duration::from_secs(5),
            Duration::from_millis(10),
            || match TcpStream::connect_timeout(&proxy_addr, Duration::from_millis(500)) {
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(term.elapsed()),
                Err(e) => Err(format!("connect: {e}")),
                Ok(_) => Err("a new connection was accepted".into()),
            },
        );
    let running = proxy.try_wait().is_none();
    match refused {
        Ok(after) if running => eprintln!("new connections refused {after:?} after SIGTERM"),
        Ok(after) => problems.push(format!(
            "new connections were refused only {after:?} after SIGTERM, once the proxy had \
             exited"
        )),
        Err(e) => problems.push(format!(
            "new connections still not refused 5 s after SIGTERM: {e}"
        )),
    }

    // Every request received before SIGTERM is answered.
    match blocked.try_read_reply() {
        Ok(reply) => {
            let waited = blpop_sent.elapsed();
            eprintln!(
                "BLPOP answered {} after {waited:?} ({:?} after SIGTERM)",
                escape(&reply),
                term.elapsed()
            );
            if reply != b"*-1\r\n" {
                problems.push(format!("BLPOP answered {}, not *-1", escape(&reply)));
            }
            if waited < Duration::from_millis(BLPOP_SECS * 1000 - 500) {
                problems.push(format!(
                    "BLPOP answered after {waited:?}, before its timeout"
                ));
            }
            match read_set_get_replies(&mut blocked, BEHIND) {
                Ok(()) => eprintln!(
                    "the {} requests behind the BLPOP answered {:?} after SIGTERM",
                    2 * BEHIND,
                    term.elapsed()
                ),
                Err(e) => problems.push(format!("behind the BLPOP: {e}")),
            }
        }
        Err(e) => problems.push(format!("BLPOP got no reply: {e}")),
    }
    match read_set_get_replies(&mut pipelined, PAIRS) {
        Ok(()) => eprintln!(
            "the {} pipelined requests answered (read {:?} after SIGTERM)",
            2 * PAIRS,
            term.elapsed()
        ),
        Err(e) => problems.push(format!("the pipeline of {}: {e}", 2 * PAIRS)),
    }

    // Exit 0 within the grace period (slack for a loaded machine).
    let status = proxy.wait_exit(GRACE + Duration::from_secs(5));
    let exited_after = term.elapsed();
    match status {
        Some(status) if status.code() == Some(0) => {
            eprintln!("the proxy exited with code 0 {exited_after:?} after SIGTERM")
        }
        Some(status) => problems.push(format!(
            "the proxy exited with {status} {exited_after:?} after SIGTERM"
        )),
        None => problems.push(format!(
            "the proxy was still running {exited_after:?} after SIGTERM (grace {GRACE:?})"
        )),
    }
    assert!(
        problems.is_empty(),
        "{problems:#?}\n--- proxy log ---\n{}",
        proxy.log()
    );
}

// ---------------------------------------------------------------------------------------
// Reload on SIGHUP and when the file changes
// ---------------------------------------------------------------------------------------

/// The routing settings of the reload test, as a `--config` file.
fn routing_config(read_policy: &str, max_lag_ms: u64) -> String {
    format!(
        "read_policy = \"{read_policy}\"\nreplication_poll_interval_ms = 10\n\
         max_lag_ms = {max_lag_ms}\n"
    )
}

/// The counters the reload test follows.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Counters {
    reloads_ok: f64,
    reloads_error: f64,
    reads_replica: f64,
    reads_primary: f64,
}

fn counters(proxy: &ProxyProcess, admin: &str) -> Counters {
    let text = scrape(proxy, admin);
    let reloads = |result| {
        metric_sum(
            &text,
            "lagwise_proxy_config_reloads_total",
            &[("result", result)],
        )
    };
    let reads = |target| metric_sum(&text, "lagwise_proxy_reads_total", &[("target", target)]);
    Counters {
        reloads_ok: reloads("ok"),
        reloads_error: reloads("error"),
        reads_replica: reads("replica"),
        reads_primary: reads("primary"),
    }
}

/// Polls the counters until `done` holds; panics with them, PROXY INFO and the log if not.
fn await_counters(
    proxy: &ProxyProcess,
    admin: &str,
    what: &str,
    done: impl Fn(&Counters) -> bool,
) -> Counters {
    let start = Instant::now();
    let outcome = poll(RELOAD_TIMEOUT, Duration::from_millis(50), || {
        let c = counters(proxy, admin);
        if done(&c) {
            Ok(c)
        } else {
            Err(format!("{c:?}"))
        }
    });
    match outcome {
        Ok(c) => {
            eprintln!("{what}: after {:?}: {c:?}", start.elapsed());
            c
        }
        Err(last) => panic!(
            "{what}: not within {RELOAD_TIMEOUT:?}; last {last}\n--- PROXY INFO ---\n{}\n\
             --- proxy log ---\n{}",
            proxy_info(proxy),
            proxy.log()
        ),
    }
}

const KEYS: usize = 300;

/// `n` GETs of the test's keys on `con`, each checked.
fn read_keys(con: &mut redis::Connection, n: usize) {
    for j in 0..n {
        let i = (j * 7) % KEYS;
        let v: Option<String> = q(con, &["GET", &format!("ops:k{i}")]);
        assert_eq!(v, Some(format!("v{i}")), "GET ops:k{i}");
    }
}

/// Waits until every replica has as many keys as its primary (the test's writes have
/// replicated), so that any replica read returns the value.
fn await_replicas_caught_up(cluster: &mut Cluster) {
    let ranges = cluster.slots();
    let caught_up = poll(REPLICAS_TIMEOUT, Duration::from_millis(50), || {
        for range in &ranges {
            let primary = query_node_int(&range.primary, &["DBSIZE"])?;
            for replica in &range.replicas {
                let on_replica = query_node_int(replica, &["DBSIZE"])?;
                if on_replica != primary {
                    return Err(format!(
                        "{replica} has {on_replica} keys, its primary {} {primary}",
                        range.primary
                    ));
                }
            }
        }
        Ok(())
    });
    if let Err(e) = caught_up {
        panic!("replicas did not catch up within {REPLICAS_TIMEOUT:?}: {e}");
    }
}

#[test]
fn sighup_reload_changes_read_routing_live_and_refuses_a_bad_config() {
    let _serial = serial();
    let mut cluster = RedisCluster::start(3, 1).into_inner();
    if let Err(e) = cluster.wait_replicas_listed(REPLICAS_TIMEOUT) {
        panic!("replicas not listed: {e}\n{}", cluster.logs());
    }
    let config = ConfigFile::new(&routing_config("primary", 200));
    let (proxy, admin) = start_proxy(&cluster, Some(&config), &[]);
    let hup = || send_signal(proxy.pid(), "HUP").unwrap();
    let share = |before: &Counters, after: &Counters| {
        let replica = after.reads_replica - before.reads_replica;
        let primary = after.reads_primary - before.reads_primary;
        (replica, primary)
    };

    // The one client connection of the test, and one that chose its own policy.
    let mut con = proxy.connection();
    for i in 0..KEYS {
        let _: () = q(&mut con, &["SET", &format!("ops:k{i}"), &format!("v{i}")]);
    }
    let mut own_policy = proxy.connection();
    let ok: String = q(&mut own_policy, &["PROXY", "READPOLICY", "primary"]);
    assert_eq!(ok, "OK");
    await_replicas_caught_up(&mut cluster);

    // 1. read_policy = "primary": no replica reads.
    let before = counters(&proxy, &admin);
    read_keys(&mut con, 300);
    let after = counters(&proxy, &admin);
    let (replica, primary) = share(&before, &after);
    eprintln!("1. primary: 300 GETs: to replicas {replica}, to primaries {primary}");
    assert_eq!(
        after.reads_replica, 0.0,
        "replica reads with policy primary"
    );
    assert!(primary >= 300.0, "the GETs were not counted: {after:?}");
    assert_eq!((after.reloads_ok, after.reloads_error), (0.0, 0.0));

    // 2. prefer-replica, SIGHUP: the same connection now reads replicas; the one with its
    //    own policy does not.
    config.write(&routing_config("prefer-replica", 200));
    hup();
    let reloaded = await_counters(&proxy, &admin, "2. SIGHUP (prefer-replica)", |c| {
        c.reloads_ok >= 1.0
    });
    assert_eq!(reloaded.reloads_error, 0.0, "the valid file was refused");
    let eligible = poll(REPLICAS_TIMEOUT, Duration::from_millis(50), || {
        let text = scrape(&proxy, &admin);
        match metric_sum(&text, "lagwise_proxy_replica_eligible", &[]) >= 3.0 {
            true => Ok(()),
            false => Err(metric_lines(&text, "lagwise_proxy_replica_eligible")),
        }
    });
    if let Err(e) = eligible {
        panic!(
            "replicas not all eligible within {REPLICAS_TIMEOUT:?}:\n{e}\n{}\n--- proxy log \
             ---\n{}",
            proxy_info(&proxy),
            proxy.log()
        );
    }
    let before = counters(&proxy, &admin);
    read_keys(&mut own_policy, 100);
    let mid = counters(&proxy, &admin);
    read_keys(&mut con, 300);
    let after = counters(&proxy, &admin);
    let (own_replica, own_primary) = share(&before, &mid);
    let (replica, primary) = share(&mid, &after);
    eprintln!(
        "2. prefer-replica: 100 GETs on the connection with its own policy primary: to replicas \
         {own_replica}, to primaries {own_primary}; 300 GETs on the first connection: to \
         replicas {replica}, to primaries {primary}"
    );
    assert_eq!(
        own_replica,
        0.0,
        "the connection that chose PROXY READPOLICY primary read replicas after the reload\n{}",
        proxy_info(&proxy)
    );
    assert!(
        replica >= 150.0,
        "after the reload to prefer-replica only {replica} of 300 GETs on the same connection \
         went to replicas ({primary} to primaries)\n{}\n--- proxy log ---\n{}",
        proxy_info(&proxy),
        proxy.log()
    );

    // 3. An invalid file is refused: the error counter and a log line, the old settings
    //    stay.
    let ok_before = after.reloads_ok;
    config.write(&routing_config("bogus", 200));
    hup();
    let refused = await_counters(&proxy, &admin, "3. SIGHUP (bogus)", |c| {
        c.reloads_error >= 1.0
    });
    assert_eq!(
        refused.reloads_ok, ok_before,
        "the invalid file counted as an ok reload"
    );
    let logged = poll(
        Duration::from_secs(5),
        Duration::from_millis(50),
        || match proxy.log().contains("config reload refused") {
            true => Ok(()),
            false => Err("no \"config reload refused\" in the log".to_string()),
        },
    );
    if let Err(e) = logged {
        panic!("{e}\n--- proxy log ---\n{}", proxy.log());
    }
    let before = counters(&proxy, &admin);
    read_keys(&mut con, 300);
    let after = counters(&proxy, &admin);
    let (replica, primary) = share(&before, &after);
    eprintln!(
        "3. after the refused reload: 300 GETs: to replicas {replica}, to primaries {primary}"
    );
    assert!(
        replica >= 150.0,
        "after the refused reload only {replica} of 300 GETs went to replicas ({primary} to \
         primaries): the old settings should stay\n{}",
        proxy_info(&proxy)
    );

    // 4. A valid change of the file without a signal: the watcher reloads it.
    let before = counters(&proxy, &admin);
    config.write(&routing_config("prefer-replica", 250));
    let watched = await_counters(&proxy, &admin, "4. file changed, no SIGHUP", |c| {
        c.reloads_ok >= before.reloads_ok + 1.0
    });
    assert_eq!(
        (watched.reloads_ok, watched.reloads_error),
        (before.reloads_ok + 1.0, before.reloads_error),
        "one ok reload expected"
    );
    let applied = poll(Duration::from_secs(5), Duration::from_millis(50), || {
        let info = proxy_info(&proxy);
        match info_field(&info, "max_lag_ms").as_deref() {
            Some("250") => Ok(()),
            _ => Err(info),
        }
    });
    if let Err(info) = applied {
        panic!("max_lag_ms = 250 not applied after the watcher's reload:\n{info}");
    }

    // 5. SIGHUP with the file unchanged reads it again (the watcher has nothing to see).
    let before = watched;
    hup();
    let again = await_counters(&proxy, &admin, "5. SIGHUP, file unchanged", |c| {
        c.reloads_ok >= before.reloads_ok + 1.0
    });
    assert_eq!(
        (again.reloads_ok, again.reloads_error),
        (before.reloads_ok + 1.0, before.reloads_error),
        "one ok reload expected"
    );
}
