//! End-to-end tests for `lagwise-node`: each test starts a real server process and talks RESP
//! to it over loopback.
//!
//! Set `LAGWISE_TEST_TARGET=redis` to run the same tests against `redis-server`; that is how
//! the tests' own expectations are checked against the reference server.
//!
//! Layout:
//! - `fixture`: [`ServerProcess`] (spawn, wait for PING, stop on drop, log on failure),
//!   [`RawConn`] (exact reply bytes), [`node_binary`] (find and build `lagwise-node`).
//! - this file: small helpers for the redis-rs async client ([`query`], [`query_err`]) and
//!   for polling ([`eventually`]).
//! - `history`: recording list-append operations under faults and checking them (lost,
//!   duplicated, phantom, misordered and stale reads).
//! - `netns`: network namespaces joined by a bridge, for partition tests (needs root and `ip`).
//! - `staleness`: a staleness checker for replica reads through the proxy (one writer of
//!   counters, readers; stale and non-monotonic reads).
//! - `tests/*.rs`: one file per command family (strings, keys, server, protocol, lifecycle).
#![allow(clippy::unwrap_used)]

pub mod cluster;
pub mod differential;
pub mod fixture;
pub mod history;
pub mod netns;
pub mod persistence;
pub mod replication;
pub mod staleness;

use std::future::Future;
use std::time::{Duration, Instant};

pub use fixture::{
    encode_command, escape, frame_len, fresh_temp_dir, node_binary, run_until_exit, server_binary,
    target_kind, RawConn, ServerKind, ServerProcess,
};
use redis::aio::MultiplexedConnection;

pub use cluster::{key_slot, ProxyProcess, RedisCluster, SlotRange};

/// `assert_eq!` for raw replies: compares two byte strings (anything `AsRef<[u8]>`) and
/// shows both escaped (`\r\n` visible) when they differ.
#[macro_export]
macro_rules! assert_reply {
    ($actual:expr, $expected:expr $(,)?) => {
        $crate::assert_reply!($actual, $expected, "replies differ")
    };
    ($actual:expr, $expected:expr, $($message:tt)+) => {
        match (&$actual, &$expected) {
            (actual, expected) => {
                let actual: &[u8] = ::std::convert::AsRef::<[u8]>::as_ref(actual);
                let expected: &[u8] = ::std::convert::AsRef::<[u8]>::as_ref(expected);
                if actual != expected {
                    panic!(
                        "{}\n     got: {}\nexpected: {}",
                        format_args!($($message)+),
                        $crate::escape(actual),
                        $crate::escape(expected)
                    );
                }
            }
        }
    };
}

/// Builds a command from string arguments: `cmd(&["SET", "k", "v"])`.
pub fn cmd(args: &[&str]) -> redis::Cmd {
    let mut c = redis::cmd(args[0]);
    for arg in &args[1..] {
        c.arg(*arg);
    }
    c
}

/// The error line as the server sent it, without the `-`: `"ERR syntax error"`.
pub fn err_text(e: &redis::RedisError) -> String {
    match (e.code(), e.detail()) {
        (Some(code), Some(detail)) => format!("{code} {detail}"),
        (Some(code), None) => code.to_string(),
        _ => e.to_string(),
    }
}

/// Runs a command that must succeed and converts its reply; panics with the error otherwise.
pub async fn query<T: redis::FromRedisValue>(con: &mut MultiplexedConnection, args: &[&str]) -> T {
    query_cmd(con, &cmd(args)).await
}

/// Like [`query`], for a prepared (e.g. binary) command.
pub async fn query_cmd<T: redis::FromRedisValue>(
    con: &mut MultiplexedConnection,
    c: &redis::Cmd,
) -> T {
    match c.query_async::<T>(con).await {
        Ok(v) => v,
        Err(e) => panic!("{} failed: {}", describe(c), err_text(&e)),
    }
}

/// Runs a command that must fail with a server error and returns the error line
/// (e.g. `"ERR syntax error"`); panics with the reply if it succeeds.
pub async fn query_err(con: &mut MultiplexedConnection, args: &[&str]) -> String {
    query_cmd_err(con, &cmd(args)).await
}

/// Like [`query_err`], for a prepared (e.g. binary) command.
pub async fn query_cmd_err(con: &mut MultiplexedConnection, c: &redis::Cmd) -> String {
    match c.query_async::<redis::Value>(con).await {
        Ok(v) => panic!("{} should have failed, got {v:?}", describe(c)),
        Err(e) => err_text(&e),
    }
}

fn describe(c: &redis::Cmd) -> String {
    let args: Vec<String> = c
        .args_iter()
        .map(|arg| match arg {
            redis::Arg::Simple(bytes) => String::from_utf8_lossy(bytes).into_owned(),
            _ => "<cursor>".to_string(),
        })
        .collect();
    format!("{args:?}")
}

/// Polls `check` every 10 ms until it returns true or `timeout` passes; returns whether it
/// became true. For effects the server applies on its own (expiry, unpausing).
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Parses one raw reply (from [`RawConn`]) into a redis-rs value.
pub fn parse_reply(bytes: &[u8]) -> redis::Value {
    redis::parse_redis_value(bytes)
        .unwrap_or_else(|e| panic!("unparsable reply {}: {e}", escape(bytes)))
}

/// The value of `field` in an INFO reply (`field:value` lines).
pub fn info_field(info: &str, field: &str) -> Option<String> {
    info.lines().find_map(|line| {
        line.strip_prefix(field)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(|v| v.trim_end().to_string())
    })
}

/// Building expected replies and raw commands in tests.
pub mod wire {
    use crate::fixture::RawConn;

    /// The WRONGTYPE error reply, as sent.
    pub const WRONGTYPE: &[u8] =
        b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n";

    /// Sends a command given as text words and returns its raw reply.
    pub fn cmd_str(raw: &mut RawConn, args: &[&str]) -> Vec<u8> {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        raw.cmd(&args)
    }

    /// A bulk string reply.
    pub fn bulk(s: &str) -> Vec<u8> {
        format!("${}\r\n{s}\r\n", s.len()).into_bytes()
    }

    /// A flat array of bulk strings.
    pub fn bulks(items: &[&str]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", items.len()).into_bytes();
        for i in items {
            out.extend(bulk(i));
        }
        out
    }
}
