//! The proxy's client limits (issue 7): the largest request, idle clients, max clients. In
//! front of a 3 × 1 redis-server 7.0 cluster, over raw RESP.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use lagwise_tests::wire::{bulk, cmd_str};
use lagwise_tests::{assert_reply, ProxyProcess, RedisCluster};

fn config(dir: &std::path::Path, text: &str) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("proxy.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn a_request_over_the_limit_is_refused_and_an_idle_client_is_closed() {
    let cluster = RedisCluster::start(3, 1);
    let dir = lagwise_tests::fresh_temp_dir("proxy-limits");
    let path = config(
        &dir,
        "max_request_bytes = 4096\nclient_idle_timeout_secs = 1\nmax_clients = 3\n",
    );
    let proxy = ProxyProcess::start(&cluster.seeds(), &["--config", &path]);

    // Within the limit: fine. Over it: a protocol error and the connection closes.
    let mut raw = proxy.raw();
    let ok = "x".repeat(4000);
    assert_reply!(cmd_str(&mut raw, &["SET", "lim:k", &ok]), b"+OK\r\n");
    assert_reply!(cmd_str(&mut raw, &["GET", "lim:k"]), bulk(&ok));
    let big = "x".repeat(5000);
    let reply = cmd_str(&mut raw, &["SET", "lim:k", &big]);
    let text = String::from_utf8_lossy(&reply).to_string();
    assert!(
        text.starts_with("-ERR Protocol error: invalid bulk length"),
        "{text}"
    );
    assert!(
        raw.expect_closed(),
        "the connection closes after a protocol error"
    );
    // Nothing was lost or changed by the refused request.
    let mut raw = proxy.raw();
    assert_reply!(cmd_str(&mut raw, &["GET", "lim:k"]), bulk(&ok));

    // Idle for over a second: closed. A busy one is not.
    let started = Instant::now();
    assert!(raw.expect_closed(), "an idle client is closed");
    let idle_for = started.elapsed();
    assert!(
        idle_for >= Duration::from_millis(900),
        "closed after {idle_for:?}"
    );
    let mut busy = proxy.raw();
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(300));
        assert_reply!(cmd_str(&mut busy, &["PING"]), b"+PONG\r\n");
    }

    // max_clients = 3: the fourth connection is told and closed.
    let _a = proxy.raw();
    let _b = proxy.raw();
    let mut c = proxy.raw();
    let reply = cmd_str(&mut c, &["PING"]);
    assert!(
        reply.starts_with(b"-ERR max number of clients reached"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    drop(busy);
    let _ = std::fs::remove_dir_all(&dir);
}
