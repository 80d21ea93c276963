//! Sorted set commands: ZADD and its options, ranges by rank/score/lex, removal, pops,
//! random members, the set operations, ZSCAN, encodings, RESP3 reply shapes, and zsets
//! through DUMP/RESTORE, COPY, RENAME and expiry. Every test passes against redis-server too
//! (`LAGWISE_TEST_TARGET=redis`), except where a branch on `server.kind()` says otherwise.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};

use lagwise_tests::wire::{cmd_str as c, WRONGTYPE};
use lagwise_tests::{assert_reply, parse_reply, ServerKind, ServerProcess};

/// A RESP2 array of bulk strings.
fn bulks(items: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", items.len()).into_bytes();
    for i in items {
        out.extend(format!("${}\r\n{i}\r\n", i.len()).into_bytes());
    }
    out
}

/// The bulk strings of a flat array reply.
fn strings(reply: &[u8]) -> Vec<String> {
    match parse_reply(reply) {
        redis::Value::Array(items) | redis::Value::Set(items) => items
            .into_iter()
            .map(|v| match v {
                redis::Value::BulkString(b) => String::from_utf8(b).unwrap(),
                redis::Value::Double(d) => d.to_string(),
                other => panic!("not a bulk: {other:?}"),
            })
            .collect(),
        other => panic!("not an array: {other:?}"),
    }
}

#[test]
fn zadd_options() {
    let server = ServerProcess::target(&[]);
    let mut r = server.raw();
    assert_reply!(
        c(&mut r, &["ZADD", "z", "1", "a", "2", "b", "3", "c"]),
        b":3\r\n"
    );
    assert_reply!(c(&mut r, &["ZADD", "z", "1", "a", "4", "d"]), b":1\r\n");
    assert_reply!(
        c(&mut r, &["ZADD", "z", "CH", "10", "a", "4", "d", "5", "e"]),
        b":2\r\n"
    );
    assert_reply!(
        c(&mut r, &["ZADD", "z", "NX", "99", "a", "6", "f"]),
        b":1\r\n"
    );
    assert_reply!(c(&mut r, &["ZSCORE", "z", "a"]), b"$2\r\n10\r\n");
    assert_reply!(
        c(&mut r, &["ZADD", "z", "XX", "CH", "11", "a", "7", "g"]),
        b":1\r\n"
    );
    assert_reply!(c(&mut r, &["ZSCORE", "z", "g"]), b"$-1\r\n");
    // GT/LT only move scores one way; new members are still added.
    assert_reply!(
        c(
            &mut r,
            &["ZADD", "z", "GT", "CH", "1", "a", "20", "b", "1", "h"]
        ),
        b":2\r\n"
    );
    assert_reply!(c(&mut r, &["ZSCORE", "z", "a"]), b"$2\r\n11\r\n");
    assert_reply!(c(&mut r, &["ZSCORE", "z", "b"]), b"$2\r\n20\r\n");
    assert_reply!(
        c(&mut r, &["ZADD", "z", "LT", "CH", "1", "a", "30", "b"]),
        b":1\r\n"
    );
    assert_reply!(c(&mut r, &["ZSCORE", "z", "a"]), b"$1\r\n1\r\n");
    // INCR replies with the new score, or nil when a condition blocked it.
    assert_reply!(
        c(&mut r, &["ZADD", "z", "INCR", "2.5", "a"]),
        b"$3\r\n3.5\r\n"
    );
    assert_reply!(
        c(&mut r, &["ZADD", "z", "NX", "INCR", "1", "a"]),
        b"$-1\r\n"
    );
    assert_reply!(
        c(&mut r, &["ZADD", "z", "XX", "INCR", "1", "nope"]),
        b"$-1\r\n"
    );
    assert_reply!(
        c(&mut r, &["ZADD", "z", "GT", "INCR", "-1", "a"]),
        b"$-1\r\n"
    );
    assert_reply!(c(&mut r, &["ZADD", "missing", "XX", "1", "a"]), b":0\r\n");
    assert_reply!(c(&mut r, &["EXISTS", "missing"]), b":0\r\n");
    assert_reply!(
        c(&mut r, &["ZADD", "z", "-inf", "lo", "+inf", "hi"]),
        b":2\r\n"
    );
    assert_reply!(c(&mut r, &["ZSCORE", "z", "lo"]), b"$4\r\n-inf\r\n");
    assert_reply!(c(&mut r, &["ZSCORE", "z", "hi"]), b"$3\r\ninf\r\n");
}

#[test]
fn zadd_errors() {
    let server = ServerProcess::target(&[]);
    let mut r = server.raw();
    assert_reply!(
        c(&mut r, &["ZADD", "z", "1", "a", "2"]),
        b"-ERR syntax error\r\n"
    );
    assert_reply!(
        c(&mut r, &["ZADD", "z", "NX", "1"]),
        b"-ERR syntax error\r\n"
    );
    assert_reply!(
        c(&mut r, &["ZADD", "z", "NX", "XX", "1", "a"]),
        b"-ERR XX and NX options at the same time are not compatible\r\n"
    );
    for opts in [["GT", "LT"], ["GT", "NX"], ["NX", "LT"]] {
        assert_reply!(
            c(&mut r, &["ZADD", "z", opts[0], opts[1], "1", "a"]),
            b"-ERR GT, LT, and/or NX options at the same time are not compatible\r\n"
        );
    }
    assert_reply!(
        c(&mut r, &["ZADD", "z", "INCR", "1", "a", "2", "b"]),
        b"-ERR INCR option supports a single increment-element pair\r\n"
    );
    for bad in ["abc", "nan", " 1", "1 ", "", "1e400"] {
        assert_reply!(
            c(&mut r, &["ZADD", "z", bad, "a"]),
            b"-ERR value is not a valid float\r\n",
            "score {bad:?}"
        );
    }
    assert_reply!(c(&mut r, &["EXISTS", "z"]), b":0\r\n");
    assert_reply!(c(&mut r, &["ZADD", "z", "inf", "a"]), b":1\r\n");
    assert_reply!(
        c(&mut r, &["ZADD", "z", "INCR", "-inf", "a"]),
        b"-ERR resulting score is not a number (NaN)\r\n"
    );
    assert_reply!(
        c(&mut r, &["ZINCRBY", "z", "-inf", "a"]),
        b"-ERR resulting score is not a number (NaN)\r\n"
    );
    assert_reply!(c(&mut r, &["ZSCORE", "z", "a"]), b"$3\r\ninf\r\n");
    c(&mut r, &["SET", "s", "v"]);
    assert_reply!(c(&mut r, &["ZADD", "s", "1", "a"]), WRONGTYPE);
    assert_reply!(c(&mut r, &["ZINCRBY", "s", "1", "a"]), WRONGTYPE);
    assert_reply!(
        c(&mut r, &["ZINCRBY", "z", "x", "a"]),
        b"-ERR value is not a valid float\r\n"
    );
}

#[test]
fn zincrby_and_score_printing() {
    let server = ServerProcess::target(&[]);
    let mut r = server.raw();
    assert_reply!(c(&mut r, &["ZINCRBY", "z", "2", "a"]), b"$1\r\n2\r\n");
    assert_reply!(c(&mut r, &["ZINCRBY", "z", "-0.5", "a"]), b"$3\r\n1.5\r\n");
    c(&mut r, &["ZADD", "f", "0.1", "x"]);
    let sum = c(&mut r, &["ZINCRBY", "f", "0.2", "x"]);
    let one_one = {
        c(&mut r, &["ZADD", "f", "1.1", "y"]);
        c(&mut r, &["ZSCORE", "f", "y"])
    };
    match server.kind() {
        // Valkey prints the shortest text that reads back as the same double.
        ServerKind::Lagwise => {
            assert_reply!(sum, b"$19\r\n0.30000000000000004\r\n");
            assert_reply!(one_one, b"$3\r\n1.1\r\n");
        }
        // Redis 7.0 prints %.17g.
        ServerKind::Redis => {
            assert_reply!(sum, b"$19\r\n0.30000000000000004\r\n");
            assert_reply!(one_one, b"$18\r\n1.1000000000000001\r\n");
        }
    }
    c(
        &mut r,
        &[
            "ZADD",
            "e",
            "1e17",
            "a",
            "10000000000000000",
            "b",
            "0.0001",
            "c",
        ],
    );
    assert_reply!(
        c(&mut r, &["ZRANGE", "e", "0", "-1", "WITHSCORES"]),
        bulks(&["c", "0.0001", "b", "10000000000000000", "a", "1e+17"])
    );
}

#[test]
fn reads() {
    let server = ServerProcess::target(&[]);
    let mut r = server.raw();
    c(&mut r, &["ZADD", "z", "1", "a", "2", "b", "3", "c"]);
    assert_reply!(c(&mut r, &["ZCARD", "z"]), b":3\r\n");
    assert_reply!(c(&mut r, &["ZCARD", "nope"]), b":0\r\n");
    assert_reply!(c(&mut r, &["ZSCORE", "z", "x"]), b"$-1\r\n");
    assert_reply!(c(&mut r, &["ZSCORE", "nope", "x"]), b"$-1\r\n");
    assert_reply!(
        c(&mut r, &["ZMSCORE", "z", "a", "x", "c"]),
        b"*3\r\n$1\r\n1\r\n$-1\r\n$1\r\n3\r\n"
    );
    assert_reply!(
        c(&mut r, &["ZMSCORE", "nope", "a", "b"]),
        b"*2\r\n$-1\r\n$-1\r\n"
    );
    assert_reply!(c(&mut r, &["ZRANK", "z", "c"]), b":2\r\n");
    assert_reply!(c(&mut r, &["ZREVRANK", "z", "c"]), b":0\r\n");
    assert_reply!(c(&mut r, &["ZRANK", "z", "x"]), b"$-1\r\n");
    assert_reply!(c(&mut r, &["ZCOUNT", "z", "(1", "3"]), b":2\r\n");
    assert_reply!(c(&mut r, &["ZCOUNT", "z", "-inf", "+inf"]), b":3\r\n");
    assert_reply!(c(&mut r, &["ZCOUNT", "z", "3", "1"]), b":0\r\n");
    assert_reply!(
        c(&mut r, &["ZCOUNT", "z", "a", "1"]),
        b"-ERR min or max is not a float\r\n"
    );
    c(
        &mut r,
        &["ZADD", "lex", "0", "a", "0", "b", "0", "c", "0", "d"],
    );
    assert_reply!(c(&mut r, &["ZLEXCOUNT", "lex", "-", "+"]), b":4\r\n");
    assert_reply!(c(&mut r, &["ZLEXCOUNT", "lex", "(a", "[c"]), b":2\r\n");
    assert_reply!(c(&mut r, &["ZLEXCOUNT", "lex", "+", "-"]), b":0\r\n");
    assert_reply!(
        c(&mut r, &["ZLEXCOUNT", "lex", "a", "c"]),
        b"-ERR min or max not valid string range item\r\n"
    );
    c(&mut r, &["SET", "s", "v"]);
    for cmd in [
        &["ZCARD", "s"][..],
        &["ZSCORE", "s", "a"],
        &["ZMSCORE", "s", "a"],
        &["ZRANK", "s", "a"],
        &["ZCOUNT", "s", "0", "1"],
        &["ZLEXCOUNT", "s", "-", "+"],
        &["ZRANGE", "s", "0", "-1"],
        &["ZREM", "s", "a"],
        &["ZSCAN", "s", "0"],
        &["ZRANDMEMBER", "s"],
    ] {
        assert_reply!(c(&mut r, cmd), WRONGTYPE, "{cmd:?}");
    }
}

#[test]
fn ranges() {
    let server = ServerProcess::target(&[]);
    let mut r = server.raw();
    c(
        &mut r,
        &[
            "ZADD", "z", "1", "a", "2", "b", "3", "c", "4", "d", "5", "e",
        ],
    );
    assert_reply!(c(&mut r, &["ZRANGE", "z", "1", "2"]), bulks(&["b", "c"]));
    assert_reply!(c(&mut r, &["ZRANGE", "z", "-2", "-1"]), bulks(&["d", "e"]));
    assert_reply!(c(&mut r, &["ZRANGE", "z", "3", "100"]), bulks(&["d", "e"]));
    assert_reply!(c(&mut r, &["ZRANGE", "z", "3", "1"]), b"*0\r\n");
    assert_reply!(
        c(&mut r, &["ZRANGE", "z", "0", "1", "REV"]),
        bulks(&["e", "d"])
    );
    assert_reply!(c(&mut r, &["ZREVRANGE", "z", "0", "1"]), bulks(&["e", "d"]));
    assert_reply!(
        c(&mut r, &["ZRANGE", "z", "0", "0", "WITHSCORES"]),
        bulks(&["a", "1"])
    );
    assert_reply!(
        c(&mut r, &["ZRANGE", "z", "(1", "3", "BYSCORE"]),
        bulks(&["b", "c"])
    );
    assert_reply!(
        c(
            &mut r,
            &["ZRANGE", "z", "+inf", "(3", "BYSCORE", "REV", "WITHSCORES"]
        ),
        bulks(&["e", "5", "d", "4"])
    );
    assert_reply!(
        c(
            &mut r,
            &["ZRANGE", "z", "-inf", "+inf", "BYSCORE", "LIMIT", "1", "2"]
        ),
        bulks(&["b", "c"])
    );
    assert_reply!(
        c(
            &mut r,
            &["ZRANGE", "z", "+inf", "-inf", "BYSCORE", "REV", "LIMIT", "1", "2"]
        ),
        bulks(&["d", "c"])
    );
    assert_reply!(
        c(
            &mut r,
            &["ZRANGE", "z", "-inf", "+inf", "BYSCORE", "LIMIT", "3", "-1"]
        ),
        bulks(&["d", "e"])
    );
    assert_reply!(
        c(
            &mut r,
            &["ZRANGE", "z", "-inf", "+inf", "BYSCORE", "LIMIT", "-1", "2"]
        ),
        b"*0\r\n"
    );
    assert_reply!(
        c(&mut r, &["ZRANGEBYSCORE", "z", "2", "(4", "WITHSCORES"]),
        bulks(&["b", "2", "c", "3"])
    );
    assert_reply!(
        c(
            &mut r,
            &["ZREVRANGEBYSCORE", "z", "4", "2", "LIMIT", "0", "2"]
        ),
        bulks(&["d", "c"])
    );
    assert_reply!(
        c(&mut r, &["ZRANGE", "z", "[b", "(d", "BYLEX"]),
        bulks(&["b", "c"])
    );
    assert_reply!(
        c(
            &mut r,
            &["ZRANGE", "z", "+", "-", "BYLEX", "REV", "LIMIT", "0", "2"]
        ),
        bulks(&["e", "d"])
    );
    assert_reply!(c(&mut r, &["ZRANGEBYLEX", "z", "-", "(b"]), bulks(&["a"]));
    assert_reply!(
        c(&mut r, &["ZREVRANGEBYLEX", "z", "[b", "-"]),
        bulks(&["b", "a"])
    );
    assert_reply!(c(&mut r, &["ZRANGE", "missing", "0", "-1"]), b"*0\r\n");
    // Errors.
    assert_reply!(
        c(&mut r, &["ZRANGE", "z", "0", "1", "LIMIT", "0", "1"]),
        b"-ERR syntax error, LIMIT is only supported in combination with either BYSCORE or BYLEX\r\n"
    );
    assert_reply!(
        c(&mut r, &["ZRANGE", "z", "-", "+", "BYLEX", "WITHSCORES"]),
        b"-ERR syntax error, WITHSCORES not supported in combination with BYLEX\r\n"
    );
    assert_reply!(
        c(&mut r, &["ZRANGE", "z", "a", "1", "BYSCORE"]),
        b"-ERR min or max is not a float\r\n"
    );
    assert_reply!(
        c(&mut r, &["ZRANGE", "z", "a", "b", "BYLEX"]),
        b"-ERR min or max not valid string range item\r\n"
    );
    assert_reply!(
        c(&mut r, &["ZRANGE", "z", "a", "1"]),
        b"-ERR value is not an integer or out of range\r\n"
    );
    assert_reply!(
        c(&mut r, &["ZRANGE", "z", "0", "1", "BYSCORE", "BYLEX"]),
        b"-ERR syntax error\r\n"
    );
    assert_reply!(
        c(&mut r, &["ZRANGEBYSCORE", "z", "0", "1", "REV"]),
        b"-ERR syntax error\r\n"
    );
    assert_reply!(
        c(
            &mut r,
            &["ZRANGE", "z", "0", "1", "BYSCORE", "LIMIT", "x", "1"]
        ),
        b"-ERR value is not an integer or out of range\r\n"
    );
}

#[test]
fn store_and_remove_ranges() {
    let server = ServerProcess::target(&[]);
    let mut r = server.raw();
    c(
        &mut r,
        &[
            "ZADD", "z", "1", "a", "2", "b", "3", "c", "4", "d", "5", "e",
        ],
    );
    assert_reply!(c(&mut r, &["ZRANGESTORE", "dst", "z", "1", "3"]), b":3\r\n");
    assert_reply!(
        c(&mut r, &["ZRANGE", "dst", "0", "-1", "WITHSCORES"]),
        bulks(&["b", "2", "c", "3", "d", "4"])
    );
    assert_reply!(
        c(
            &mut r,
            &[
                "ZRANGESTORE",
                "dst",
                "z",
                "5",
                "(2",
                "BYSCORE",
                "REV",
                "LIMIT",
                "0",
                "2"
            ]
        ),
        b":2\r\n"
    );
    assert_reply!(c(&mut r, &["ZRANGE", "dst", "0", "-1"]), bulks(&["d", "e"]));
    assert_reply!(
        c(&mut r, &["ZRANGESTORE", "dst", "z", "0", "1", "WITHSCORES"]),
        b"-ERR syntax error\r\n"
    );
    assert_reply!(
        c(&mut r, &["ZRANGESTORE", "dst", "missing", "0", "-1"]),
        b":0\r\n"
    );
    assert_reply!(c(&mut r, &["EXISTS", "dst"]), b":0\r\n");

    assert_reply!(c(&mut r, &["ZREMRANGEBYRANK", "z", "-1", "-1"]), b":1\r\n");
    assert_reply!(c(&mut r, &["ZREMRANGEBYSCORE", "z", "(1", "2"]), b":1\r\n");
    assert_reply!(
        c(&mut r, &["ZRANGE", "z", "0", "-1"]),
        bulks(&["a", "c", "d"])
    );
    assert_reply!(c(&mut r, &["ZREMRANGEBYLEX", "z", "[c", "+"]), b":2\r\n");
    assert_reply!(c(&mut r, &["ZREMRANGEBYRANK", "z", "5", "10"]), b":0\r\n");
    assert_reply!(
        c(&mut r, &["ZREMRANGEBYSCORE", "z", "x", "1"]),
        b"-ERR min or max is not a float\r\n"
    );
    assert_reply!(c(&mut r, &["ZREMRANGEBYRANK", "z", "0", "-1"]), b":1\r\n");
    assert_reply!(c(&mut r, &["EXISTS", "z"]), b":0\r\n");
    assert_reply!(c(&mut r, &["ZREMRANGEBYRANK", "z", "0", "-1"]), b":0\r\n");
    c(&mut r, &["ZADD", "z", "1", "a", "2", "b"]);
    assert_reply!(c(&mut r, &["ZREM", "z", "a", "x"]), b":1\r\n");
    assert_reply!(c(&mut r, &["ZREM", "z", "b"]), b":1\r\n");
    assert_reply!(c(&mut r, &["EXISTS", "z"]), b":0\r\n");
}

#[test]
fn pops() {
    let server = ServerProcess::target(&[]);
    let mut r = server.raw();
    c(
        &mut r,
        &["ZADD", "z", "1", "a", "2", "b", "3", "c", "4", "d"],
    );
    assert_reply!(c(&mut r, &["ZPOPMIN", "z"]), bulks(&["a", "1"]));
    assert_reply!(
        c(&mut r, &["ZPOPMAX", "z", "2"]),
        bulks(&["d", "4", "c", "3"])
    );
    assert_reply!(c(&mut r, &["ZPOPMIN", "z", "0"]), b"*0\r\n");
    assert_reply!(
        c(&mut r, &["ZPOPMIN", "z", "-1"]),
        b"-ERR value is out of range, must be positive\r\n"
    );
    assert_reply!(
        c(&mut r, &["ZPOPMIN", "z", "1", "2"]),
        b"-ERR syntax error\r\n"
    );
    assert_reply!(c(&mut r, &["ZPOPMIN", "z", "10"]), bulks(&["b", "2"]));
    assert_reply!(c(&mut r, &["EXISTS", "z"]), b":0\r\n");
    assert_reply!(c(&mut r, &["ZPOPMIN", "z"]), b"*0\r\n");

    c(&mut r, &["ZADD", "z2", "1", "a", "2", "b", "3", "c"]);
    assert_reply!(
        c(
            &mut r,
            &["ZMPOP", "2", "missing", "z2", "MIN", "COUNT", "2"]
        ),
        b"*2\r\n$2\r\nz2\r\n*2\r\n*2\r\n$1\r\na\r\n$1\r\n1\r\n*2\r\n$1\r\nb\r\n$1\r\n2\r\n"
    );
    assert_reply!(
        c(&mut r, &["ZMPOP", "1", "z2", "MAX"]),
        b"*2\r\n$2\r\nz2\r\n*1\r\n*2\r\n$1\r\nc\r\n$1\r\n3\r\n"
    );
    assert_reply!(c(&mut r, &["ZMPOP", "1", "z2", "MAX"]), b"*-1\r\n");
    assert_reply!(
        c(&mut r, &["ZMPOP", "0", "z2", "MAX"]),
        b"-ERR numkeys should be greater than 0\r\n"
    );
    assert_reply!(
        c(&mut r, &["ZMPOP", "2", "z2", "MAX"]),
        b"-ERR syntax error\r\n"
    );
    assert_reply!(
        c(&mut r, &["ZMPOP", "1", "z2", "UP"]),
        b"-ERR syntax error\r\n"
    );
    assert_reply!(
        c(&mut r, &["ZMPOP", "1", "z2", "MIN", "COUNT", "0"]),
        b"-ERR count should be greater than 0\r\n"
    );
    c(&mut r, &["SET", "s", "v"]);
    assert_reply!(c(&mut r, &["ZMPOP", "2", "missing", "s", "MIN"]), WRONGTYPE);
    assert_reply!(c(&mut r, &["ZPOPMAX", "s"]), WRONGTYPE);
}

#[test]
fn randmember() {
    let server = ServerProcess::target(&[]);
    let mut r = server.raw();
    assert_reply!(c(&mut r, &["ZRANDMEMBER", "z"]), b"$-1\r\n");
    assert_reply!(c(&mut r, &["ZRANDMEMBER", "z", "3"]), b"*0\r\n");
    let members: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    let mut args = vec!["ZADD".to_string(), "z".to_string()];
    for (i, m) in members.iter().enumerate() {
        args.push(i.to_string());
        args.push(m.clone());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    c(&mut r, &args);
    let all: HashSet<String> = members.iter().cloned().collect();
    // Distinct members for a positive count.
    let got = strings(&c(&mut r, &["ZRANDMEMBER", "z", "5"]));
    assert_eq!(got.len(), 5);
    assert_eq!(got.iter().collect::<HashSet<_>>().len(), 5);
    assert!(got.iter().all(|m| all.contains(m)));
    // The whole set when the count exceeds it.
    let got = strings(&c(&mut r, &["ZRANDMEMBER", "z", "50"]));
    assert_eq!(got.into_iter().collect::<HashSet<_>>(), all);
    // Repetitions for a negative count; over many draws, everything shows up.
    let got = strings(&c(&mut r, &["ZRANDMEMBER", "z", "-500"]));
    assert_eq!(got.len(), 500);
    assert_eq!(got.into_iter().collect::<HashSet<_>>(), all);
    // WITHSCORES pairs each member with its score.
    let got = strings(&c(&mut r, &["ZRANDMEMBER", "z", "-6", "WITHSCORES"]));
    assert_eq!(got.len(), 12);
    for pair in got.chunks(2) {
        assert_eq!(format!("m{}", pair[1]), pair[0]);
    }
    // Single picks are random too.
    let mut seen = HashSet::new();
    for _ in 0..200 {
        seen.insert(c(&mut r, &["ZRANDMEMBER", "z"]));
    }
    assert!(seen.len() > 5);
    assert_reply!(c(&mut r, &["ZRANDMEMBER", "z", "0"]), b"*0\r\n");
    assert_reply!(
        c(&mut r, &["ZRANDMEMBER", "z", "1", "X"]),
        b"-ERR syntax error\r\n"
    );
    assert_reply!(
        c(&mut r, &["ZRANDMEMBER", "z", "x"]),
        b"-ERR value is not an integer or out of range\r\n"
    );
}

#[test]
fn set_operations() {
    let server = ServerProcess::target(&[]);
    let mut r = server.raw();
    c(&mut r, &["ZADD", "z1", "1", "a", "2", "b", "3", "c"]);
    c(&mut r, &["ZADD", "z2", "10", "b", "20", "c", "30", "d"]);
    c(&mut r, &["SADD", "st", "a", "d", "x"]);
    assert_reply!(
        c(&mut r, &["ZUNION", "2", "z1", "z2", "WITHSCORES"]),
        bulks(&["a", "1", "b", "12", "c", "23", "d", "30"])
    );
    assert_reply!(
        c(
            &mut r,
            &[
                "ZUNION",
                "3",
                "z1",
                "z2",
                "st",
                "WEIGHTS",
                "1",
                "2",
                "3",
                "AGGREGATE",
                "MAX",
                "WITHSCORES"
            ]
        ),
        bulks(&["a", "3", "x", "3", "b", "20", "c", "40", "d", "60"])
    );
    assert_reply!(
        c(
            &mut r,
            &["ZINTER", "2", "z1", "z2", "AGGREGATE", "MIN", "WITHSCORES"]
        ),
        bulks(&["b", "2", "c", "3"])
    );
    assert_reply!(c(&mut r, &["ZINTER", "2", "z1", "st"]), bulks(&["a"]));
    assert_reply!(c(&mut r, &["ZINTER", "2", "z1", "missing"]), b"*0\r\n");
    assert_reply!(
        c(&mut r, &["ZDIFF", "2", "z1", "z2", "WITHSCORES"]),
        bulks(&["a", "1"])
    );
    assert_reply!(
        c(&mut r, &["ZDIFF", "2", "z1", "z2", "WEIGHTS", "1", "1"]),
        b"-ERR syntax error\r\n"
    );
    assert_reply!(
        c(
            &mut r,
            &["ZUNIONSTORE", "out", "2", "z1", "z2", "WEIGHTS", "2", "1"]
        ),
        b":4\r\n"
    );
    assert_reply!(
        c(&mut r, &["ZRANGE", "out", "0", "-1", "WITHSCORES"]),
        bulks(&["a", "2", "b", "14", "c", "26", "d", "30"])
    );
    assert_reply!(
        c(&mut r, &["ZINTERSTORE", "out", "2", "z1", "z2"]),
        b":2\r\n"
    );
    assert_reply!(
        c(&mut r, &["ZDIFFSTORE", "out", "2", "z1", "z2"]),
        b":1\r\n"
    );
    assert_reply!(
        c(&mut r, &["ZINTERSTORE", "out", "2", "z1", "missing"]),
        b":0\r\n"
    );
    assert_reply!(c(&mut r, &["EXISTS", "out"]), b":0\r\n");
    assert_reply!(c(&mut r, &["ZINTERCARD", "2", "z1", "z2"]), b":2\r\n");
    assert_reply!(
        c(&mut r, &["ZINTERCARD", "2", "z1", "z2", "LIMIT", "1"]),
        b":1\r\n"
    );
    assert_reply!(
        c(&mut r, &["ZINTERCARD", "2", "z1", "z2", "LIMIT", "-1"]),
        b"-ERR LIMIT can't be negative\r\n"
    );
    assert_reply!(
        c(&mut r, &["ZUNION", "0", "z1"]),
        b"-ERR at least 1 input key is needed for 'zunion' command\r\n"
    );
    assert_reply!(
        c(&mut r, &["ZUNION", "3", "z1", "z2"]),
        b"-ERR syntax error\r\n"
    );
    assert_reply!(
        c(&mut r, &["ZUNION", "2", "z1", "z2", "WEIGHTS", "1", "x"]),
        b"-ERR weight value is not a float\r\n"
    );
    assert_reply!(
        c(
            &mut r,
            &["ZUNIONSTORE", "out", "2", "z1", "z2", "WITHSCORES"]
        ),
        b"-ERR syntax error\r\n"
    );
    // inf * 0 is NaN, which counts as 0.
    assert_reply!(
        c(
            &mut r,
            &["ZUNION", "1", "z1", "WEIGHTS", "inf", "WITHSCORES"]
        ),
        bulks(&["a", "inf", "b", "inf", "c", "inf"])
    );
    c(&mut r, &["ZADD", "zi", "inf", "a", "-inf", "b"]);
    assert_reply!(
        c(
            &mut r,
            &[
                "ZUNION",
                "2",
                "zi",
                "zi",
                "WEIGHTS",
                "1",
                "-1",
                "WITHSCORES"
            ]
        ),
        bulks(&["a", "0", "b", "0"])
    );
    c(&mut r, &["SET", "str", "v"]);
    assert_reply!(c(&mut r, &["ZUNION", "2", "z1", "str"]), WRONGTYPE);
    assert_reply!(c(&mut r, &["ZINTERSTORE", "z1", "1", "str"]), WRONGTYPE);
}

#[test]
fn scan() {
    let server = ServerProcess::target(&[]);
    let mut r = server.raw();
    assert_reply!(c(&mut r, &["ZSCAN", "z", "0"]), b"*2\r\n$1\r\n0\r\n*0\r\n");
    c(&mut r, &["ZADD", "z", "1", "a", "2.5", "b", "3", "ab"]);
    // Small sets come back whole in one call.
    assert_reply!(
        c(&mut r, &["ZSCAN", "z", "0", "COUNT", "1"]),
        b"*2\r\n$1\r\n0\r\n*6\r\n$1\r\na\r\n$1\r\n1\r\n$1\r\nb\r\n$3\r\n2.5\r\n$2\r\nab\r\n$1\r\n3\r\n"
    );
    assert_reply!(
        c(&mut r, &["ZSCAN", "z", "0", "MATCH", "a*"]),
        b"*2\r\n$1\r\n0\r\n*4\r\n$1\r\na\r\n$1\r\n1\r\n$2\r\nab\r\n$1\r\n3\r\n"
    );
    assert_reply!(c(&mut r, &["ZSCAN", "z", "x"]), b"-ERR invalid cursor\r\n");
    assert_reply!(
        c(&mut r, &["ZSCAN", "z", "0", "COUNT", "0"]),
        b"-ERR syntax error\r\n"
    );
    assert_reply!(
        c(&mut r, &["ZSCAN", "z", "0", "FOO", "1"]),
        b"-ERR syntax error\r\n"
    );

    // A big set: bounded calls, and every element that stays is returned.
    let n = 2000;
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let mut args = vec!["ZADD".to_string(), "big".to_string()];
        for i in chunk {
            args.push(i.to_string());
            args.push(format!("member:{i}"));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        c(&mut r, &args);
    }
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut cursor = "0".to_string();
    let mut calls = 0;
    loop {
        let reply = parse_reply(&c(&mut r, &["ZSCAN", "big", &cursor, "COUNT", "20"]));
        let redis::Value::Array(parts) = reply else {
            panic!("bad reply")
        };
        let redis::Value::BulkString(next) = &parts[0] else {
            panic!("bad cursor")
        };
        let redis::Value::Array(items) = &parts[1] else {
            panic!("bad items")
        };
        assert!(
            items.len() <= 2 * 200,
            "a call returned {} items",
            items.len()
        );
        for pair in items.chunks(2) {
            let (redis::Value::BulkString(m), redis::Value::BulkString(s)) = (&pair[0], &pair[1])
            else {
                panic!("bad pair")
            };
            seen.insert(
                String::from_utf8(m.clone()).unwrap(),
                String::from_utf8(s.clone()).unwrap(),
            );
        }
        // Churn while iterating.
        c(&mut r, &["ZADD", "big", "-1", &format!("new{calls}")]);
        c(&mut r, &["ZREM", "big", &format!("new{}", calls / 2)]);
        calls += 1;
        cursor = String::from_utf8(next.clone()).unwrap();
        if cursor == "0" {
            break;
        }
    }
    assert!(
        calls > 10,
        "a big set must take several calls, took {calls}"
    );
    for i in 0..n {
        assert_eq!(seen.get(&format!("member:{i}")), Some(&i.to_string()));
    }
}

#[test]
fn encodings() {
    let server = ServerProcess::target(&[]);
    let mut r = server.raw();
    c(&mut r, &["ZADD", "z", "1", "a"]);
    assert_reply!(
        c(&mut r, &["OBJECT", "ENCODING", "z"]),
        b"$8\r\nlistpack\r\n"
    );
    let long = "x".repeat(65);
    c(&mut r, &["ZADD", "z", "2", &long]);
    assert_reply!(
        c(&mut r, &["OBJECT", "ENCODING", "z"]),
        b"$8\r\nskiplist\r\n"
    );
    c(&mut r, &["ZREM", "z", &long]);
    assert_reply!(
        c(&mut r, &["OBJECT", "ENCODING", "z"]),
        b"$8\r\nskiplist\r\n"
    );
    c(&mut r, &["CONFIG", "SET", "zset-max-listpack-entries", "4"]);
    c(
        &mut r,
        &["ZADD", "y", "1", "a", "2", "b", "3", "c", "4", "d"],
    );
    assert_reply!(
        c(&mut r, &["OBJECT", "ENCODING", "y"]),
        b"$8\r\nlistpack\r\n"
    );
    c(&mut r, &["ZADD", "y", "5", "e"]);
    assert_reply!(
        c(&mut r, &["OBJECT", "ENCODING", "y"]),
        b"$8\r\nskiplist\r\n"
    );
    // Store commands pick the encoding by the result's size.
    c(&mut r, &["ZRANGESTORE", "small", "y", "0", "1"]);
    assert_reply!(
        c(&mut r, &["OBJECT", "ENCODING", "small"]),
        b"$8\r\nlistpack\r\n"
    );
    c(&mut r, &["ZUNIONSTORE", "u", "1", "y"]);
    assert_reply!(
        c(&mut r, &["OBJECT", "ENCODING", "u"]),
        b"$8\r\nskiplist\r\n"
    );
    // The encoding for a new key is sized by the whole ZADD in Valkey 8 (Redis 7.0 looks at
    // the number of arguments only when converting).
    c(
        &mut r,
        &[
            "ZADD", "dup", "1", "x", "1", "x", "1", "x", "1", "x", "1", "x",
        ],
    );
    let enc = c(&mut r, &["OBJECT", "ENCODING", "dup"]);
    match server.kind() {
        ServerKind::Lagwise => assert_reply!(enc, b"$8\r\nskiplist\r\n"),
        ServerKind::Redis => assert_reply!(enc, b"$8\r\nlistpack\r\n"),
    }
    // Both encodings answer the same.
    for key in ["y", "small", "u"] {
        assert_reply!(c(&mut r, &["ZRANK", key, "b"]), b":1\r\n", "{key}");
    }
}

#[test]
fn large_sorted_set_ranks() {
    let server = ServerProcess::target(&[]);
    let mut r = server.raw();
    let n = 20_000;
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let mut args = vec!["ZADD".to_string(), "z".to_string()];
        for i in chunk {
            // Scores in a scrambled order.
            let score = (i * 7919) % n;
            args.push(score.to_string());
            args.push(format!("m{score}"));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        c(&mut r, &args);
    }
    assert_reply!(c(&mut r, &["ZCARD", "z"]), format!(":{n}\r\n"));
    assert_reply!(
        c(&mut r, &["OBJECT", "ENCODING", "z"]),
        b"$8\r\nskiplist\r\n"
    );
    for rank in [0, 1, 127, 128, 4096, 10_000, n - 1] {
        let m = format!("m{rank}");
        assert_reply!(c(&mut r, &["ZRANK", "z", &m]), format!(":{rank}\r\n"));
        assert_reply!(
            c(&mut r, &["ZREVRANK", "z", &m]),
            format!(":{}\r\n", n - 1 - rank)
        );
        let s = rank.to_string();
        assert_reply!(
            c(&mut r, &["ZRANGE", "z", &s, &s, "WITHSCORES"]),
            bulks(&[&m, &s])
        );
    }
    assert_reply!(c(&mut r, &["ZCOUNT", "z", "(100", "200"]), b":100\r\n");
    assert_reply!(
        c(
            &mut r,
            &["ZRANGEBYSCORE", "z", "(9997", "+inf", "LIMIT", "0", "2"]
        ),
        bulks(&["m9998", "m9999"])
    );
    assert_reply!(
        c(&mut r, &["ZREMRANGEBYSCORE", "z", "0", "(10000"]),
        b":10000\r\n"
    );
    assert_reply!(c(&mut r, &["ZRANK", "z", "m10000"]), b":0\r\n");
    assert_reply!(c(&mut r, &["ZPOPMAX", "z"]), bulks(&["m19999", "19999"]));
}

#[test]
fn resp3_shapes() {
    let server = ServerProcess::target(&[]);
    let mut r = server.raw();
    c(&mut r, &["HELLO", "3"]);
    c(&mut r, &["ZADD", "z", "1", "a", "2.5", "b"]);
    assert_reply!(c(&mut r, &["ZSCORE", "z", "b"]), b",2.5\r\n");
    assert_reply!(c(&mut r, &["ZSCORE", "z", "x"]), b"_\r\n");
    assert_reply!(c(&mut r, &["ZINCRBY", "z", "1", "a"]), b",2\r\n");
    assert_reply!(c(&mut r, &["ZADD", "z", "NX", "INCR", "1", "a"]), b"_\r\n");
    assert_reply!(c(&mut r, &["ZMSCORE", "z", "a", "x"]), b"*2\r\n,2\r\n_\r\n");
    assert_reply!(
        c(&mut r, &["ZRANGE", "z", "0", "-1", "WITHSCORES"]),
        b"*2\r\n*2\r\n$1\r\na\r\n,2\r\n*2\r\n$1\r\nb\r\n,2.5\r\n"
    );
    assert_reply!(
        c(&mut r, &["ZRANGE", "z", "0", "-1"]),
        b"*2\r\n$1\r\na\r\n$1\r\nb\r\n"
    );
    assert_reply!(
        c(&mut r, &["ZUNION", "1", "z", "WITHSCORES"]),
        b"*2\r\n*2\r\n$1\r\na\r\n,2\r\n*2\r\n$1\r\nb\r\n,2.5\r\n"
    );
    let pick = c(&mut r, &["ZRANDMEMBER", "z", "-1", "WITHSCORES"]);
    assert!(
        pick == b"*1\r\n*2\r\n$1\r\na\r\n,2\r\n" || pick == b"*1\r\n*2\r\n$1\r\nb\r\n,2.5\r\n",
        "{}",
        lagwise_tests::escape(&pick)
    );
    assert_reply!(c(&mut r, &["ZPOPMIN", "z"]), b"*2\r\n$1\r\na\r\n,2\r\n");
    c(&mut r, &["ZADD", "z", "1", "a"]);
    assert_reply!(
        c(&mut r, &["ZPOPMIN", "z", "1"]),
        b"*1\r\n*2\r\n$1\r\na\r\n,1\r\n"
    );
    assert_reply!(
        c(&mut r, &["ZMPOP", "1", "z", "MAX"]),
        b"*2\r\n$1\r\nz\r\n*1\r\n*2\r\n$1\r\nb\r\n,2.5\r\n"
    );
    assert_reply!(c(&mut r, &["ZMPOP", "1", "z", "MAX"]), b"_\r\n");
    c(&mut r, &["ZADD", "z", "inf", "a"]);
    assert_reply!(c(&mut r, &["ZSCORE", "z", "a"]), b",inf\r\n");
    // ZSCAN scores stay bulk strings.
    assert_reply!(
        c(&mut r, &["ZSCAN", "z", "0"]),
        b"*2\r\n$1\r\n0\r\n*2\r\n$1\r\na\r\n$3\r\ninf\r\n"
    );
}

#[test]
fn keyspace_integration() {
    let server = ServerProcess::target(&[]);
    let mut r = server.raw();
    c(&mut r, &["ZADD", "z", "1", "a", "2.5", "b", "-inf", "c"]);
    assert_reply!(c(&mut r, &["TYPE", "z"]), b"+zset\r\n");
    assert_reply!(
        c(&mut r, &["SCAN", "0", "TYPE", "zset"]),
        b"*2\r\n$1\r\n0\r\n*1\r\n$1\r\nz\r\n"
    );
    // DUMP/RESTORE, small and big encodings.
    let mut args = vec!["ZADD".to_string(), "big".to_string()];
    for i in 0..300 {
        args.push(i.to_string());
        args.push(format!("m{i}"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    c(&mut r, &args);
    for key in ["z", "big"] {
        let dump = c(&mut r, &["DUMP", key]);
        let redis::Value::BulkString(payload) = parse_reply(&dump) else {
            panic!("DUMP {key}")
        };
        let restored = r.cmd(&[b"RESTORE", b"copy", b"0", &payload, b"REPLACE"]);
        assert_reply!(restored, b"+OK\r\n");
        assert_reply!(
            c(&mut r, &["ZRANGE", "copy", "0", "-1", "WITHSCORES"]),
            c(&mut r, &["ZRANGE", key, "0", "-1", "WITHSCORES"])
        );
        assert_reply!(
            c(&mut r, &["OBJECT", "ENCODING", "copy"]),
            c(&mut r, &["OBJECT", "ENCODING", key])
        );
    }
    assert_reply!(c(&mut r, &["COPY", "z", "z2"]), b":1\r\n");
    c(&mut r, &["ZADD", "z2", "9", "new"]);
    assert_reply!(c(&mut r, &["ZCARD", "z"]), b":3\r\n");
    assert_reply!(c(&mut r, &["ZCARD", "z2"]), b":4\r\n");
    assert_reply!(c(&mut r, &["RENAME", "z2", "z3"]), b"+OK\r\n");
    assert_reply!(c(&mut r, &["ZSCORE", "z3", "new"]), b"$1\r\n9\r\n");
    assert_reply!(c(&mut r, &["PEXPIRE", "z3", "50"]), b":1\r\n");
    std::thread::sleep(std::time::Duration::from_millis(120));
    assert_reply!(c(&mut r, &["ZCARD", "z3"]), b":0\r\n");
    assert_reply!(c(&mut r, &["EXISTS", "z3"]), b":0\r\n");
    // A store command replaces the destination and its TTL.
    c(&mut r, &["SET", "dst", "v", "EX", "100"]);
    assert_reply!(c(&mut r, &["ZUNIONSTORE", "dst", "1", "z"]), b":3\r\n");
    assert_reply!(c(&mut r, &["TTL", "dst"]), b":-1\r\n");
    assert_reply!(c(&mut r, &["TYPE", "dst"]), b"+zset\r\n");
}
