#![allow(clippy::unwrap_used)]
//! The node's admin listener end to end (`admin-listen`): `/live`, `/ready` and the
//! Prometheus `/metrics` of docs/metrics.md, on a standalone node, a primary and its replica
//! (one held in the middle of its full sync) and a cluster, and `promtool check metrics` on
//! what is scraped.
//!
//! Every node listens with `--admin-listen 127.0.0.1:0` and the test reads the address it got
//! from its log ("admin listener ready ... addr=..."): no port is chosen ahead and raced for.
//! Requests are plain HTTP/1.1 over a `TcpStream` ([`http_get`]).
//!
//! promtool comes with Debian's `prometheus` package. Without it the promtool checks are
//! skipped with a note, unless `CI` is set: there its absence fails the test.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lagwise_tests::cluster::{query_node_string, Cluster, ClusterConfig};
use lagwise_tests::replication::{
    exec, load_bulk, poll, replicaof, replicaof_port, start_node, wait_in_sync, LinkRelay,
    EVENT_TIMEOUT,
};
use lagwise_tests::wire::cmd_str;
use lagwise_tests::{info_field, run_until_exit, ServerKind, ServerProcess};

/// The directive every node of these tests gets: an admin listener on a port of the kernel's
/// choosing.
const ADMIN: &[&str] = &["--admin-listen", "127.0.0.1:0"];
/// Timeout of one HTTP request.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------
// Helpers

/// `GET path` on `addr` (`host:port`), `Connection: close`; returns the status code and body.
fn http_get(addr: &str, path: &str) -> (u16, String) {
    try_http_get(addr, path).unwrap_or_else(|e| panic!("GET {path} on {addr}: {e}"))
}

/// [`http_get`], with connection and protocol failures as `Err`.
fn try_http_get(addr: &str, path: &str) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(HTTP_TIMEOUT)).unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(|e| format!("read: {e}"))?;
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no end of headers in {response:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    Ok((status, body.to_string()))
}

/// The admin address a node logged ("admin listener ready ... addr=127.0.0.1:P"), waiting
/// for the line if needed.
fn admin_addr(what: &str, log: impl Fn() -> String) -> String {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        let text = log();
        let found = text
            .lines()
            .filter(|l| l.contains("admin listener ready"))
            .filter_map(|l| l.split_once("addr=").map(|(_, a)| a))
            .map(|a| a.split_whitespace().next().unwrap_or("").to_string())
            .next_back();
        if let Some(addr) = found {
            return addr;
        }
        assert!(
            Instant::now() < deadline,
            "{what} logged no admin listener address:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn server_admin(server: &ServerProcess) -> String {
    admin_addr(&server.addr(), || server.log())
}

/// `/metrics` on `admin`, which must answer 200.
fn scrape(admin: &str) -> String {
    let (status, body) = http_get(admin, "/metrics");
    assert_eq!(status, 200, "/metrics on {admin}: {body}");
    body
}

/// The value of the sample `series` (a metric name with its labels exactly as exported,
/// e.g. `lagwise_node_keys{db="0"}`), if present.
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| {
            v.trim()
                .parse()
                .unwrap_or_else(|e| panic!("{series}: value {v:?}: {e}"))
        })
}

/// Like [`sample`], for a series that must be there.
fn value(body: &str, series: &str) -> f64 {
    sample(body, series).unwrap_or_else(|| panic!("no {series} in:\n{body}"))
}

/// Polls `admin`'s `/metrics` until `check` holds; panics with the last scrape otherwise.
fn wait_metrics(admin: &str, what: &str, check: impl Fn(&str) -> bool) -> String {
    let mut last = String::new();
    let ok = poll(EVENT_TIMEOUT, || {
        last = scrape(admin);
        check(&last)
    });
    assert!(
        ok,
        "{admin}: not {what} within {EVENT_TIMEOUT:?}; last scrape:\n{last}"
    );
    last
}

/// What promtool makes of a scrape: `None` when promtool is not installed (outside CI).
fn promtool_check(body: &str) -> Option<String> {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if std::env::var_os("CI").is_some() {
                panic!("promtool is not installed (apt-get install prometheus) and CI is set");
            }
            eprintln!("note: promtool not found (apt-get install prometheus): check skipped");
            return None;
        }
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool check metrics failed ({}):\n{text}\n--- scrape ---\n{body}",
        out.status
    );
    Some(text)
}

/// promtool, when present, has nothing to say about `body`.
fn assert_promtool_clean(body: &str) {
    if let Some(complaints) = promtool_check(body) {
        assert!(
            complaints.trim().is_empty(),
            "promtool check metrics:\n{complaints}\n--- scrape ---\n{body}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// A standalone node

#[test]
fn standalone_node_serves_live_ready_and_metrics() {
    let node = ServerProcess::lagwise(ADMIN);
    let admin = server_admin(&node);

    assert_eq!(http_get(&admin, "/live"), (200, "ok\n".to_string()));
    assert_eq!(http_get(&admin, "/ready"), (200, "ready\n".to_string()));
    assert_eq!(http_get(&admin, "/nope").0, 404);

    let before = scrape(&admin);
    let sets_before =
        sample(&before, r#"lagwise_node_commands_total{command="set"}"#).unwrap_or(0.0);
    let mut raw = node.raw();
    for i in 0..100 {
        assert_eq!(
            cmd_str(&mut raw, &["SET", &format!("key:{i}"), "value"]),
            b"+OK\r\n"
        );
    }
    assert_eq!(
        cmd_str(&mut raw, &["SET", "volatile", "v", "EX", "1000"]),
        b"+OK\r\n"
    );
    assert_eq!(cmd_str(&mut raw, &["DBSIZE"]), b":101\r\n");

    let after = scrape(&admin);
    let sets = value(&after, r#"lagwise_node_commands_total{command="set"}"#);
    assert!(
        sets - sets_before >= 101.0,
        "SET calls went from {sets_before} to {sets}:\n{after}"
    );
    assert!(
        value(
            &after,
            r#"lagwise_node_command_seconds_total{command="set"}"#
        ) > 0.0
    );
    assert!(value(&after, r#"lagwise_node_commands_total{command="dbsize"}"#) >= 1.0);
    assert_eq!(value(&after, r#"lagwise_node_keys{db="0"}"#), 101.0);
    assert_eq!(value(&after, r#"lagwise_node_expiring_keys{db="0"}"#), 1.0);
    assert!(value(&after, "lagwise_node_connected_clients") >= 1.0);
    assert!(value(&after, "lagwise_node_memory_used_bytes") > 0.0);
    assert!(value(&after, "lagwise_node_uptime_seconds") >= 0.0);
    assert_eq!(value(&after, "lagwise_node_role_primary"), 1.0);
    assert_eq!(value(&after, "lagwise_node_loading"), 0.0);
    assert_eq!(value(&after, "lagwise_node_connected_replicas"), 0.0);
    assert_eq!(value(&after, "lagwise_node_expired_keys_total"), 0.0);
    assert_eq!(value(&after, "lagwise_node_evicted_keys_total"), 0.0);
    for absent in [
        "lagwise_node_master_link_up",
        "lagwise_node_cluster_state_ok",
        "lagwise_node_failovers_total",
    ] {
        assert!(
            sample(&after, absent).is_none(),
            "{absent} on a standalone primary"
        );
    }
    assert_promtool_clean(&after);

    // The commands' counters are INFO commandstats': CONFIG RESETSTAT clears them too.
    assert_eq!(cmd_str(&mut raw, &["CONFIG", "RESETSTAT"]), b"+OK\r\n");
    let reset = scrape(&admin);
    assert_eq!(
        sample(&reset, r#"lagwise_node_commands_total{command="set"}"#),
        None
    );

    // A transaction's commands count one by one, as EXEC runs them.
    assert_eq!(cmd_str(&mut raw, &["MULTI"]), b"+OK\r\n");
    assert_eq!(cmd_str(&mut raw, &["SET", "t", "1"]), b"+QUEUED\r\n");
    assert_eq!(cmd_str(&mut raw, &["INCR", "t"]), b"+QUEUED\r\n");
    assert_eq!(cmd_str(&mut raw, &["EXEC"]), b"*2\r\n+OK\r\n:2\r\n");
    let m = scrape(&admin);
    for command in ["multi", "set", "incr", "exec"] {
        let series = format!(r#"lagwise_node_commands_total{{command="{command}"}}"#);
        assert_eq!(value(&m, &series), 1.0, "{series}");
    }

    // Fixed at start: CONFIG GET shows it, CONFIG SET refuses it.
    let get = String::from_utf8(cmd_str(&mut raw, &["CONFIG", "GET", "admin-listen"])).unwrap();
    assert!(get.contains("127.0.0.1:0"), "{get}");
    let set = cmd_str(&mut raw, &["CONFIG", "SET", "admin-listen", "127.0.0.1:1"]);
    assert!(
        String::from_utf8_lossy(&set).contains("immutable"),
        "{}",
        String::from_utf8_lossy(&set)
    );
}

#[test]
fn promtool_accepts_the_scrape() {
    let node = ServerProcess::lagwise(ADMIN);
    let admin = server_admin(&node);
    let mut raw = node.raw();
    for args in [
        &["SET", "a", "1"][..],
        &["INCR", "a"],
        &["CLIENT", "LIST"],
        &["CONFIG", "GET", "port"],
        &["HSET", "h", "f", "v"],
    ] {
        cmd_str(&mut raw, args);
    }
    let body = scrape(&admin);
    match promtool_check(&body) {
        Some(complaints) => assert!(
            complaints.trim().is_empty(),
            "promtool check metrics:\n{complaints}\n--- scrape ---\n{body}"
        ),
        None => eprintln!("note: promtool_accepts_the_scrape checked nothing"),
    }
}

#[test]
fn a_bad_admin_listen_stops_the_start_naming_the_directive() {
    // Taken by this test for as long as the node tries to bind it.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (status, log) = run_until_exit(
        ServerKind::Lagwise,
        &["--admin-listen", &addr],
        Duration::from_secs(10),
    );
    assert!(status.is_some_and(|s| !s.success()), "{status:?}\n{log}");
    assert!(log.contains(&format!("admin-listen {addr}")), "{log}");

    let (status, log) = run_until_exit(
        ServerKind::Lagwise,
        &["--admin-listen", "9121"],
        Duration::from_secs(10),
    );
    assert!(status.is_some_and(|s| !s.success()), "{status:?}\n{log}");
    assert!(log.contains("'admin-listen'"), "{log}");
}

/// Keys of the dataset a restarted node loads: enough for a load that lasts a while.
const LOAD_KEYS: usize = if cfg!(debug_assertions) {
    150_000
} else {
    2_000_000
};

#[test]
fn a_node_loading_its_data_files_is_not_ready() {
    // Two I/O threads: the admin listener answers on them while the start-up thread loads.
    // (With one, the load holds the only thread and the endpoints answer once it is done.)
    let threads = ["--io-threads", "2"];
    let mut node = ServerProcess::lagwise(&[ADMIN, &threads[..]].concat());
    load_bulk(&node, LOAD_KEYS, 16);
    let _: () = exec(&node, &["SAVE"]);

    // The restart gets an admin port known ahead, so that it can be watched from its start.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let admin = format!("127.0.0.1:{port}");
    let watcher = {
        let admin = admin.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + EVENT_TIMEOUT;
            let mut answers = Vec::new();
            while Instant::now() < deadline {
                if let Ok(answer) = try_http_get(&admin, "/ready") {
                    let ready = answer.0 == 200;
                    answers.push(answer);
                    if ready {
                        break;
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            answers
        })
    };
    // Returns once the node answers PING, which is after the load.
    node.restart(&[&threads[..], &["--admin-listen", &admin]].concat());
    let answers = watcher.join().unwrap();
    let not_ready = answers.iter().filter(|a| a.0 == 503).count();
    eprintln!("/ready answered 503 {not_ready} times while {LOAD_KEYS} keys loaded");
    assert!(
        answers
            .iter()
            .any(|(status, body)| *status == 503 && body.contains("loading the dataset")),
        "no 503 seen while {LOAD_KEYS} keys loaded; /ready answered: {answers:?}"
    );
    assert_eq!(answers.last().map(|a| a.0), Some(200), "{answers:?}");
    let m = scrape(&admin);
    assert_eq!(value(&m, "lagwise_node_loading"), 0.0);
    assert_eq!(value(&m, r#"lagwise_node_keys{db="0"}"#), LOAD_KEYS as f64);
}

// ---------------------------------------------------------------------------------------
// A primary and its replica

#[test]
fn primary_and_replica_report_replication() {
    let primary = start_node(ServerKind::Lagwise, ADMIN);
    let replica = start_node(ServerKind::Lagwise, ADMIN);
    let (p_admin, r_admin) = (server_admin(&primary), server_admin(&replica));
    let _: () = exec(&primary, &["SET", "k", "v"]);
    replicaof(&replica, &primary);
    wait_in_sync(&primary, &replica);
    // Writes after the full sync move the stream's offset on both.
    for i in 0..10 {
        let _: () = exec(&primary, &["SET", &format!("after:{i}"), "v"]);
    }
    wait_in_sync(&primary, &replica);

    let lag_series = format!(
        r#"lagwise_node_replica_lag_bytes{{replica="127.0.0.1:{}"}}"#,
        replica.port()
    );
    // Acks come once a second: the lag settles at 0 with no writes.
    let p = wait_metrics(&p_admin, "caught up", |m| {
        sample(m, &lag_series) == Some(0.0)
    });
    assert_eq!(value(&p, "lagwise_node_role_primary"), 1.0);
    assert_eq!(value(&p, "lagwise_node_connected_replicas"), 1.0);
    assert!(value(&p, "lagwise_node_sync_full_total") >= 1.0, "{p}");
    assert!(value(&p, "lagwise_node_repl_offset_bytes") > 0.0, "{p}");
    assert!(sample(&p, "lagwise_node_master_link_up").is_none(), "{p}");
    let info: String = exec(&primary, &["INFO", "replication"]);
    let info_offset: f64 = info_field(&info, "master_repl_offset")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        value(&p, "lagwise_node_repl_offset_bytes") <= info_offset,
        "the offset only grows: {info}\n{p}"
    );
    assert_promtool_clean(&p);

    let r = scrape(&r_admin);
    assert_eq!(value(&r, "lagwise_node_role_primary"), 0.0);
    assert_eq!(value(&r, "lagwise_node_master_link_up"), 1.0);
    assert_eq!(value(&r, "lagwise_node_loading"), 0.0);
    assert!(value(&r, "lagwise_node_repl_offset_bytes") > 0.0, "{r}");
    assert_eq!(value(&r, r#"lagwise_node_keys{db="0"}"#), 11.0);
    // What the replica applied from its primary's stream counts too, as in Valkey.
    assert!(value(&r, r#"lagwise_node_commands_total{command="set"}"#) >= 10.0);
    assert_eq!(http_get(&r_admin, "/ready").0, 200);
    assert_promtool_clean(&r);
}

/// Keys in the primary's dataset: a snapshot well past what the relay lets through.
const HELD_KEYS: usize = 30_000;
/// How much of the primary's side of the link the relay forwards before it stalls: the
/// handshake replies and the start of the snapshot.
const HELD_AFTER: usize = 16 * 1024;

#[test]
fn a_replica_loading_its_primarys_snapshot_is_not_ready() {
    let primary = start_node(ServerKind::Lagwise, &[]);
    load_bulk(&primary, HELD_KEYS, 64);
    let relay = LinkRelay::start(primary.port());
    let replica = start_node(ServerKind::Lagwise, ADMIN);
    let admin = server_admin(&replica);
    assert_eq!(http_get(&admin, "/ready").0, 200);

    relay.hold_next_after(HELD_AFTER);
    replicaof_port(&replica, relay.port());
    assert!(
        poll(EVENT_TIMEOUT, || relay.is_holding()),
        "the full sync never got past {HELD_AFTER} bytes through the relay"
    );
    let (status, body) = http_get(&admin, "/ready");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("loading the primary's snapshot"),
        "503 body: {body}"
    );
    let m = scrape(&admin);
    assert_eq!(value(&m, "lagwise_node_loading"), 1.0, "{m}");
    assert_eq!(value(&m, "lagwise_node_master_link_up"), 0.0, "{m}");
    // Live all along: the process answers.
    assert_eq!(http_get(&admin, "/live").0, 200);

    // The held link is cut; the replica connects again, through the relay, unhindered.
    relay.cut_held();
    let m = wait_metrics(&admin, "in sync after the retry", |m| {
        sample(m, "lagwise_node_master_link_up") == Some(1.0)
    });
    assert_eq!(value(&m, "lagwise_node_loading"), 0.0, "{m}");
    assert_eq!(value(&m, r#"lagwise_node_keys{db="0"}"#), HELD_KEYS as f64);
    assert_eq!(http_get(&admin, "/ready").0, 200);
}

// ---------------------------------------------------------------------------------------
// A cluster

#[test]
fn cluster_nodes_report_the_cluster_and_a_won_failover() {
    let config = ClusterConfig::new(ServerKind::Lagwise).args(ADMIN);
    let cluster = Cluster::start(config, 3, 1);
    let admins: Vec<(String, String)> = cluster
        .nodes()
        .iter()
        .map(|n| (n.addr(), admin_addr(&n.addr(), || n.log())))
        .collect();

    let mut replica = None;
    for (addr, admin) in &admins {
        assert_eq!(http_get(admin, "/ready").0, 200, "{addr}");
        let m = wait_metrics(admin, "seeing the whole cluster", |m| {
            sample(m, "lagwise_node_cluster_state_ok") == Some(1.0)
                && sample(m, "lagwise_node_cluster_known_nodes") == Some(6.0)
        });
        assert_eq!(
            value(&m, "lagwise_node_cluster_slots_assigned"),
            16384.0,
            "{addr}"
        );
        assert!(
            value(&m, "lagwise_node_cluster_current_epoch") >= 1.0,
            "{addr}"
        );
        assert!(
            value(&m, "lagwise_node_cluster_config_epoch") >= 1.0,
            "{addr}"
        );
        assert_eq!(value(&m, "lagwise_node_failovers_total"), 0.0, "{addr}");
        if value(&m, "lagwise_node_role_primary") == 0.0 {
            replica = Some((addr.clone(), admin.clone()));
        }
        assert_promtool_clean(&m);
    }

    // A manual failover: the replica wins its election and counts it.
    let (addr, admin) = replica.expect("a replica among the nodes");
    let reply = query_node_string(&addr, &["CLUSTER", "FAILOVER"]).unwrap();
    assert_eq!(reply, "OK");
    let m = wait_metrics(&admin, "primary after its failover", |m| {
        sample(m, "lagwise_node_role_primary") == Some(1.0)
            && sample(m, "lagwise_node_failovers_total") == Some(1.0)
    });
    assert!(sample(&m, "lagwise_node_master_link_up").is_none(), "{m}");
}
