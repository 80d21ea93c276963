//! Hash commands: HSET/HGET and friends, counters, encodings, HRANDFIELD, HSCAN, and hashes
//! through the generic key commands (DUMP/RESTORE, COPY, RENAME, TYPE, SCAN TYPE, expiry).
//! Each test starts its own server; every test also passes against redis-server
//! (`LAGWISE_TEST_TARGET=redis`), except where a branch on `server.kind()` says otherwise.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};

use lagwise_tests::wire::{bulk, bulks, cmd_str as c, WRONGTYPE};
use lagwise_tests::{assert_reply, parse_reply, RawConn, ServerKind, ServerProcess};

fn strings(v: redis::Value) -> Vec<String> {
    match v {
        redis::Value::Array(items) | redis::Value::Set(items) => items
            .into_iter()
            .flat_map(|i| match i {
                redis::Value::BulkString(b) => vec![String::from_utf8(b).unwrap()],
                nested @ redis::Value::Array(_) => strings(nested),
                other => panic!("not a bulk string: {other:?}"),
            })
            .collect(),
        other => panic!("not an array: {other:?}"),
    }
}

/// HSCAN to the end; returns every (field, value) returned and the number of calls.
fn hscan_all(raw: &mut RawConn, key: &str, extra: &[&str]) -> (Vec<(String, String)>, usize) {
    let mut cursor = "0".to_string();
    let mut out = Vec::new();
    let mut calls = 0;
    loop {
        let mut args = vec!["HSCAN", key, &cursor];
        args.extend_from_slice(extra);
        let reply = parse_reply(&c(raw, &args));
        calls += 1;
        let redis::Value::Array(parts) = reply else {
            panic!("HSCAN reply {reply:?}")
        };
        let next = match &parts[0] {
            redis::Value::BulkString(b) => String::from_utf8(b.clone()).unwrap(),
            other => panic!("cursor {other:?}"),
        };
        let items = strings(parts[1].clone());
        for p in items.chunks(2) {
            out.push((p[0].clone(), p[1].clone()));
        }
        if next == "0" {
            return (out, calls);
        }
        cursor = next;
    }
}

#[test]
fn set_get_and_friends() {
    let server = ServerProcess::target(&[]);
    let mut raw = server.raw();
    assert_reply!(c(&mut raw, &["HSET", "h", "a", "1", "b", "2"]), b":2\r\n");
    assert_reply!(c(&mut raw, &["HSET", "h", "a", "10", "c", "3"]), b":1\r\n");
    // A field repeated in one HSET counts once.
    assert_reply!(c(&mut raw, &["HSET", "h", "d", "x", "d", "4"]), b":1\r\n");
    assert_reply!(c(&mut raw, &["HGET", "h", "a"]), bulk("10"));
    assert_reply!(c(&mut raw, &["HGET", "h", "d"]), bulk("4"));
    assert_reply!(c(&mut raw, &["HGET", "h", "zz"]), b"$-1\r\n");
    assert_reply!(c(&mut raw, &["HGET", "nokey", "a"]), b"$-1\r\n");
    assert_reply!(
        c(&mut raw, &["HMGET", "h", "a", "zz", "b"]),
        b"*3\r\n$2\r\n10\r\n$-1\r\n$1\r\n2\r\n"
    );
    assert_reply!(
        c(&mut raw, &["HMGET", "nokey", "a", "b"]),
        b"*2\r\n$-1\r\n$-1\r\n"
    );
    assert_reply!(c(&mut raw, &["HLEN", "h"]), b":4\r\n");
    assert_reply!(c(&mut raw, &["HLEN", "nokey"]), b":0\r\n");
    assert_reply!(c(&mut raw, &["HEXISTS", "h", "b"]), b":1\r\n");
    assert_reply!(c(&mut raw, &["HEXISTS", "h", "zz"]), b":0\r\n");
    assert_reply!(c(&mut raw, &["HEXISTS", "nokey", "b"]), b":0\r\n");
    assert_reply!(c(&mut raw, &["HSTRLEN", "h", "a"]), b":2\r\n");
    assert_reply!(c(&mut raw, &["HSTRLEN", "h", "zz"]), b":0\r\n");
    assert_reply!(c(&mut raw, &["HSTRLEN", "nokey", "a"]), b":0\r\n");
    assert_reply!(c(&mut raw, &["HSETNX", "h", "a", "99"]), b":0\r\n");
    assert_reply!(c(&mut raw, &["HSETNX", "h", "e", "5"]), b":1\r\n");
    assert_reply!(c(&mut raw, &["HMSET", "h", "f", "6", "a", "1"]), b"+OK\r\n");
    // A small hash keeps insertion order (listpack), as Valkey does.
    assert_reply!(
        c(&mut raw, &["HKEYS", "h"]),
        bulks(&["a", "b", "c", "d", "e", "f"])
    );
    assert_reply!(
        c(&mut raw, &["HVALS", "h"]),
        bulks(&["1", "2", "3", "4", "5", "6"])
    );
    assert_reply!(
        c(&mut raw, &["HGETALL", "h"]),
        bulks(&["a", "1", "b", "2", "c", "3", "d", "4", "e", "5", "f", "6"])
    );
    assert_reply!(c(&mut raw, &["HKEYS", "nokey"]), b"*0\r\n");
    assert_reply!(c(&mut raw, &["HVALS", "nokey"]), b"*0\r\n");
    assert_reply!(c(&mut raw, &["HGETALL", "nokey"]), b"*0\r\n");
    // HDEL counts what it removed; deleting the middle keeps the order of the rest.
    assert_reply!(c(&mut raw, &["HDEL", "h", "c", "zz", "c"]), b":1\r\n");
    assert_reply!(
        c(&mut raw, &["HKEYS", "h"]),
        bulks(&["a", "b", "d", "e", "f"])
    );
    assert_reply!(c(&mut raw, &["HDEL", "nokey", "a"]), b":0\r\n");
    // The last field gone, the key is gone.
    assert_reply!(
        c(&mut raw, &["HDEL", "h", "a", "b", "d", "e", "f", "g"]),
        b":5\r\n"
    );
    assert_reply!(c(&mut raw, &["EXISTS", "h"]), b":0\r\n");
    // Binary-safe fields and values, empty ones included.
    assert_reply!(
        raw.cmd(&[b"HSET", b"bin", b"\x00\r\n", b"", b"", b"\xff"]),
        b":2\r\n"
    );
    assert_reply!(raw.cmd(&[b"HGET", b"bin", b"\x00\r\n"]), b"$0\r\n\r\n");
    assert_reply!(raw.cmd(&[b"HGET", b"bin", b""]), b"$1\r\n\xff\r\n");
    assert_reply!(c(&mut raw, &["TYPE", "bin"]), b"+hash\r\n");
}

#[test]
fn errors_and_wrong_types() {
    let server = ServerProcess::target(&[]);
    let mut raw = server.raw();
    for (args, name) in [
        (&["HSET", "h"][..], "hset"),
        (&["HSET", "h", "a"][..], "hset"),
        (&["HSET", "h", "a", "1", "b"][..], "hset"),
        (&["HMSET", "h", "a"][..], "hmset"),
        (&["HMSET", "h", "a", "1", "b"][..], "hmset"),
        (&["HSETNX", "h", "a"][..], "hsetnx"),
        (&["HGET", "h"][..], "hget"),
        (&["HMGET", "h"][..], "hmget"),
        (&["HDEL", "h"][..], "hdel"),
        (&["HLEN"][..], "hlen"),
        (&["HINCRBY", "h", "a"][..], "hincrby"),
        (&["HINCRBYFLOAT", "h", "a"][..], "hincrbyfloat"),
        (&["HRANDFIELD"][..], "hrandfield"),
        (&["HSCAN", "h"][..], "hscan"),
        (&["HGETALL"][..], "hgetall"),
    ] {
        assert_reply!(
            c(&mut raw, args),
            format!("-ERR wrong number of arguments for '{name}' command\r\n"),
            "{args:?}"
        );
    }
    // The odd-pair HSET created nothing.
    assert_reply!(c(&mut raw, &["EXISTS", "h"]), b":0\r\n");

    assert_reply!(c(&mut raw, &["SET", "s", "v"]), b"+OK\r\n");
    for args in [
        &["HSET", "s", "a", "1"][..],
        &["HMSET", "s", "a", "1"],
        &["HSETNX", "s", "a", "1"],
        &["HGET", "s", "a"],
        &["HMGET", "s", "a"],
        &["HDEL", "s", "a"],
        &["HEXISTS", "s", "a"],
        &["HLEN", "s"],
        &["HSTRLEN", "s", "a"],
        &["HKEYS", "s"],
        &["HVALS", "s"],
        &["HGETALL", "s"],
        &["HINCRBY", "s", "a", "1"],
        &["HINCRBYFLOAT", "s", "a", "1"],
        &["HRANDFIELD", "s"],
        &["HRANDFIELD", "s", "2"],
        &["HSCAN", "s", "0"],
    ] {
        assert_reply!(c(&mut raw, args), WRONGTYPE, "{args:?}");
    }
    assert_reply!(c(&mut raw, &["GET", "s"]), bulk("v"));
    assert_reply!(c(&mut raw, &["HSET", "h", "a", "1"]), b":1\r\n");
    assert_reply!(c(&mut raw, &["GET", "h"]), WRONGTYPE);
}

#[test]
fn counters() {
    let server = ServerProcess::target(&[]);
    let mut raw = server.raw();
    assert_reply!(c(&mut raw, &["HINCRBY", "h", "n", "5"]), b":5\r\n");
    assert_reply!(c(&mut raw, &["HINCRBY", "h", "n", "-7"]), b":-2\r\n");
    assert_reply!(c(&mut raw, &["HGET", "h", "n"]), bulk("-2"));
    assert_reply!(
        c(&mut raw, &["HINCRBY", "h", "n", "x"]),
        b"-ERR value is not an integer or out of range\r\n"
    );
    assert_reply!(
        c(&mut raw, &["HINCRBY", "new", "n", "1.5"]),
        b"-ERR value is not an integer or out of range\r\n"
    );
    assert_reply!(c(&mut raw, &["EXISTS", "new"]), b":0\r\n");
    assert_reply!(
        c(
            &mut raw,
            &[
                "HSET",
                "h",
                "s",
                "abc",
                "big",
                "9223372036854775807",
                "sp",
                " 1"
            ]
        ),
        b":3\r\n"
    );
    assert_reply!(
        c(&mut raw, &["HINCRBY", "h", "s", "1"]),
        b"-ERR hash value is not an integer\r\n"
    );
    assert_reply!(
        c(&mut raw, &["HINCRBY", "h", "sp", "1"]),
        b"-ERR hash value is not an integer\r\n"
    );
    assert_reply!(
        c(&mut raw, &["HINCRBY", "h", "big", "1"]),
        b"-ERR increment or decrement would overflow\r\n"
    );
    assert_reply!(
        c(&mut raw, &["HINCRBY", "h", "big", "-9223372036854775807"]),
        b":0\r\n"
    );

    assert_reply!(
        c(&mut raw, &["HINCRBYFLOAT", "f", "x", "10.5"]),
        bulk("10.5")
    );
    assert_reply!(
        c(&mut raw, &["HINCRBYFLOAT", "f", "x", "0.1"]),
        bulk("10.6")
    );
    assert_reply!(c(&mut raw, &["HINCRBYFLOAT", "f", "x", "-10.6"]), bulk("0"));
    assert_reply!(
        c(&mut raw, &["HINCRBYFLOAT", "f", "x", "5.0e3"]),
        bulk("5000")
    );
    assert_reply!(c(&mut raw, &["HSET", "f", "i", "3"]), b":1\r\n");
    assert_reply!(
        c(&mut raw, &["HINCRBYFLOAT", "f", "i", "1.25"]),
        bulk("4.25")
    );
    assert_reply!(c(&mut raw, &["HSET", "f", "hex", "0x10"]), b":1\r\n");
    assert_reply!(c(&mut raw, &["HINCRBYFLOAT", "f", "hex", "1"]), bulk("17"));
    assert_reply!(
        c(&mut raw, &["HINCRBYFLOAT", "f", "x", "abc"]),
        b"-ERR value is not a valid float\r\n"
    );
    assert_reply!(
        c(&mut raw, &["HINCRBYFLOAT", "f", "x", "inf"]),
        b"-ERR value is NaN or Infinity\r\n"
    );
    assert_reply!(c(&mut raw, &["HSET", "f", "s", "abc"]), b":1\r\n");
    assert_reply!(
        c(&mut raw, &["HINCRBYFLOAT", "f", "s", "1"]),
        b"-ERR hash value is not a float\r\n"
    );
    assert_reply!(c(&mut raw, &["HSET", "f", "inf", "inf"]), b":1\r\n");
    assert_reply!(
        c(&mut raw, &["HINCRBYFLOAT", "f", "inf", "1"]),
        b"-ERR increment would produce NaN or Infinity\r\n"
    );
    assert_reply!(
        c(&mut raw, &["HINCRBYFLOAT", "nokey2", "x", "abc"]),
        b"-ERR value is not a valid float\r\n"
    );
    assert_reply!(c(&mut raw, &["EXISTS", "nokey2"]), b":0\r\n");
}

#[test]
fn encodings_follow_the_listpack_limits() {
    let server = ServerProcess::target(&[]);
    let mut raw = server.raw();
    // Set explicitly: Redis 7.0's default is 512, this node's 128.
    assert_reply!(
        c(
            &mut raw,
            &["CONFIG", "SET", "hash-max-listpack-entries", "128"]
        ),
        b"+OK\r\n"
    );
    for i in 0..128 {
        c(&mut raw, &["HSET", "many", &format!("f{i}"), "v"]);
    }
    assert_reply!(
        c(&mut raw, &["OBJECT", "ENCODING", "many"]),
        bulk("listpack")
    );
    c(&mut raw, &["HSET", "many", "f128", "v"]);
    assert_reply!(
        c(&mut raw, &["OBJECT", "ENCODING", "many"]),
        bulk("hashtable")
    );
    // One-way: shrinking keeps the hashtable.
    for i in 0..120 {
        c(&mut raw, &["HDEL", "many", &format!("f{i}")]);
    }
    assert_reply!(c(&mut raw, &["HLEN", "many"]), b":9\r\n");
    assert_reply!(
        c(&mut raw, &["OBJECT", "ENCODING", "many"]),
        bulk("hashtable")
    );

    let v64 = "x".repeat(64);
    let v65 = "x".repeat(65);
    c(&mut raw, &["HSET", "long", "f", &v64]);
    assert_reply!(
        c(&mut raw, &["OBJECT", "ENCODING", "long"]),
        bulk("listpack")
    );
    c(&mut raw, &["HSET", "long", "g", &v65]);
    assert_reply!(
        c(&mut raw, &["OBJECT", "ENCODING", "long"]),
        bulk("hashtable")
    );
    assert_reply!(c(&mut raw, &["HGET", "long", "f"]), bulk(&v64));
    // A long field converts too; HSETNX on an existing field changes nothing, not even the
    // encoding.
    c(&mut raw, &["HSET", "lf", &v65, "1"]);
    assert_reply!(
        c(&mut raw, &["OBJECT", "ENCODING", "lf"]),
        bulk("hashtable")
    );
    c(&mut raw, &["HSET", "nx", "f", "1"]);
    assert_reply!(c(&mut raw, &["HSETNX", "nx", "f", &v65]), b":0\r\n");
    assert_reply!(c(&mut raw, &["OBJECT", "ENCODING", "nx"]), bulk("listpack"));
    assert_reply!(c(&mut raw, &["HSETNX", "nx", "g", &v65]), b":1\r\n");
    assert_reply!(
        c(&mut raw, &["OBJECT", "ENCODING", "nx"]),
        bulk("hashtable")
    );
    // A counter result that grows too long converts.
    c(&mut raw, &["HSET", "cnt", "f", "1"]);
    c(&mut raw, &["HINCRBY", "cnt", "f", "1"]);
    assert_reply!(
        c(&mut raw, &["OBJECT", "ENCODING", "cnt"]),
        bulk("listpack")
    );
    // The limits are configurable.
    assert_reply!(
        c(
            &mut raw,
            &["CONFIG", "SET", "hash-max-listpack-entries", "2"]
        ),
        b"+OK\r\n"
    );
    c(&mut raw, &["HSET", "two", "a", "1", "b", "2"]);
    assert_reply!(
        c(&mut raw, &["OBJECT", "ENCODING", "two"]),
        bulk("listpack")
    );
    c(&mut raw, &["HSET", "two", "c", "3"]);
    assert_reply!(
        c(&mut raw, &["OBJECT", "ENCODING", "two"]),
        bulk("hashtable")
    );
    // More pairs than the limit in one HSET convert up front in Valkey 8 (Redis 7.2+), even
    // if repeated; Redis 7.0 counts the fields as they land.
    c(&mut raw, &["HSET", "rep", "a", "1", "a", "2", "a", "3"]);
    let expected = match server.kind() {
        ServerKind::Lagwise => "hashtable",
        ServerKind::Redis => "listpack",
    };
    assert_reply!(c(&mut raw, &["OBJECT", "ENCODING", "rep"]), bulk(expected));
    assert_reply!(c(&mut raw, &["HLEN", "rep"]), b":1\r\n");
}

#[test]
fn large_hash_reads_and_deletes() {
    let server = ServerProcess::target(&[]);
    let mut raw = server.raw();
    let n = 3000;
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let mut args: Vec<String> = vec!["HSET".into(), "big".into()];
        for i in chunk {
            args.push(format!("field:{i}"));
            args.push(format!("value:{i}"));
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_reply!(c(&mut raw, &refs), format!(":{}\r\n", chunk.len()));
    }
    assert_reply!(c(&mut raw, &["HLEN", "big"]), format!(":{n}\r\n"));
    assert_reply!(
        c(&mut raw, &["HGET", "big", "field:1234"]),
        bulk("value:1234")
    );
    let all = strings(parse_reply(&c(&mut raw, &["HGETALL", "big"])));
    let map: HashMap<&str, &str> = all
        .chunks(2)
        .map(|p| (p[0].as_str(), p[1].as_str()))
        .collect();
    assert_eq!(map.len(), n);
    assert_eq!(map["field:2999"], "value:2999");
    let keys = strings(parse_reply(&c(&mut raw, &["HKEYS", "big"])));
    assert_eq!(keys.len(), n);
    for i in (0..n).step_by(2) {
        assert_reply!(
            c(&mut raw, &["HDEL", "big", &format!("field:{i}")]),
            b":1\r\n"
        );
    }
    assert_reply!(c(&mut raw, &["HLEN", "big"]), format!(":{}\r\n", n / 2));
    assert_reply!(c(&mut raw, &["HGET", "big", "field:0"]), b"$-1\r\n");
    assert_reply!(c(&mut raw, &["HGET", "big", "field:1"]), bulk("value:1"));
    let (pairs, _) = hscan_all(&mut raw, "big", &["COUNT", "100"]);
    let seen: HashSet<_> = pairs.into_iter().collect();
    assert_eq!(seen.len(), n / 2);
}

#[test]
fn hrandfield() {
    let server = ServerProcess::target(&[]);
    let mut raw = server.raw();
    assert_reply!(c(&mut raw, &["HRANDFIELD", "nokey"]), b"$-1\r\n");
    assert_reply!(c(&mut raw, &["HRANDFIELD", "nokey", "3"]), b"*0\r\n");
    assert_reply!(
        c(&mut raw, &["HRANDFIELD", "nokey", "-3", "WITHVALUES"]),
        b"*0\r\n"
    );
    c(&mut raw, &["HSET", "h", "a", "1", "b", "2", "c", "3"]);
    assert_reply!(c(&mut raw, &["HRANDFIELD", "h", "0"]), b"*0\r\n");
    // At least the size: the whole hash, in order for a listpack.
    assert_reply!(
        c(&mut raw, &["HRANDFIELD", "h", "3"]),
        bulks(&["a", "b", "c"])
    );
    assert_reply!(
        c(&mut raw, &["HRANDFIELD", "h", "10", "withvalues"]),
        bulks(&["a", "1", "b", "2", "c", "3"])
    );
    // Unique picks below the size.
    for _ in 0..20 {
        let got = strings(parse_reply(&c(&mut raw, &["HRANDFIELD", "h", "2"])));
        assert_eq!(got.len(), 2);
        assert_ne!(got[0], got[1]);
        let got = strings(parse_reply(&c(
            &mut raw,
            &["HRANDFIELD", "h", "2", "WITHVALUES"],
        )));
        assert_eq!(got.len(), 4);
        for p in got.chunks(2) {
            let expected = match p[0].as_str() {
                "a" => "1",
                "b" => "2",
                "c" => "3",
                other => panic!("unknown field {other}"),
            };
            assert_eq!(p[1], expected);
        }
    }
    // Negative: exactly that many, repetitions allowed, and really random.
    let got = strings(parse_reply(&c(&mut raw, &["HRANDFIELD", "h", "-300"])));
    assert_eq!(got.len(), 300);
    let distinct: HashSet<_> = got.iter().collect();
    assert_eq!(distinct.len(), 3);
    let got = strings(parse_reply(&c(
        &mut raw,
        &["HRANDFIELD", "h", "-5", "WITHVALUES"],
    )));
    assert_eq!(got.len(), 10);
    let mut singles = HashSet::new();
    for _ in 0..100 {
        singles.insert(strings(parse_reply(&c(&mut raw, &["HRANDFIELD", "h", "1"]))).remove(0));
        let one = parse_reply(&c(&mut raw, &["HRANDFIELD", "h"]));
        assert!(matches!(one, redis::Value::BulkString(_)));
    }
    assert_eq!(singles.len(), 3);
    // A large hash: unique picks across the table.
    for i in 0..500 {
        c(&mut raw, &["HSET", "big", &format!("f{i}"), &i.to_string()]);
    }
    let got = strings(parse_reply(&c(&mut raw, &["HRANDFIELD", "big", "200"])));
    assert_eq!(got.iter().collect::<HashSet<_>>().len(), 200);
    let got = strings(parse_reply(&c(&mut raw, &["HRANDFIELD", "big", "600"])));
    assert_eq!(got.iter().collect::<HashSet<_>>().len(), 500);

    assert_reply!(
        c(&mut raw, &["HRANDFIELD", "h", "abc"]),
        b"-ERR value is not an integer or out of range\r\n"
    );
    assert_reply!(
        c(&mut raw, &["HRANDFIELD", "h", "-9223372036854775808"]),
        b"-ERR value is out of range, value must between -9223372036854775807 and 9223372036854775807\r\n"
    );
    assert_reply!(
        c(
            &mut raw,
            &["HRANDFIELD", "h", "9223372036854775807", "WITHVALUES"]
        ),
        b"-ERR value is out of range\r\n"
    );
    assert_reply!(
        c(&mut raw, &["HRANDFIELD", "h", "1", "WITHVALUE"]),
        b"-ERR syntax error\r\n"
    );
    assert_reply!(
        c(&mut raw, &["HRANDFIELD", "h", "1", "WITHVALUES", "x"]),
        b"-ERR syntax error\r\n"
    );
}

#[test]
fn hscan() {
    let server = ServerProcess::target(&[]);
    let mut raw = server.raw();
    assert_reply!(
        c(&mut raw, &["HSCAN", "nokey", "0"]),
        b"*2\r\n$1\r\n0\r\n*0\r\n"
    );
    // A missing key answers before the options are read.
    assert_reply!(
        c(&mut raw, &["HSCAN", "nokey", "0", "COUNT", "0"]),
        b"*2\r\n$1\r\n0\r\n*0\r\n"
    );
    assert_reply!(
        c(&mut raw, &["HSCAN", "nokey", "x"]),
        b"-ERR invalid cursor\r\n"
    );
    c(&mut raw, &["HSET", "h", "a", "1", "b", "2", "ab", "3"]);
    // Small: everything at once, cursor 0, whatever COUNT says.
    let mut expected = b"*2\r\n$1\r\n0\r\n".to_vec();
    expected.extend(bulks(&["a", "1", "b", "2", "ab", "3"]));
    assert_reply!(c(&mut raw, &["HSCAN", "h", "0", "COUNT", "1"]), expected);
    let mut expected = b"*2\r\n$1\r\n0\r\n".to_vec();
    expected.extend(bulks(&["a", "1", "ab", "3"]));
    assert_reply!(c(&mut raw, &["HSCAN", "h", "0", "MATCH", "a*"]), expected);
    assert_reply!(
        c(&mut raw, &["HSCAN", "h", "0", "COUNT", "0"]),
        b"-ERR syntax error\r\n"
    );
    assert_reply!(
        c(&mut raw, &["HSCAN", "h", "0", "COUNT", "x"]),
        b"-ERR value is not an integer or out of range\r\n"
    );
    assert_reply!(
        c(&mut raw, &["HSCAN", "h", "0", "MATCH"]),
        b"-ERR syntax error\r\n"
    );
    assert_reply!(
        c(&mut raw, &["HSCAN", "h", "0", "FOO", "1"]),
        b"-ERR syntax error\r\n"
    );
    // NOVALUES is Valkey 8's; Redis 7.0 does not know it.
    let novalues = c(&mut raw, &["HSCAN", "h", "0", "NOVALUES"]);
    match server.kind() {
        ServerKind::Lagwise => {
            let mut expected = b"*2\r\n$1\r\n0\r\n".to_vec();
            expected.extend(bulks(&["a", "b", "ab"]));
            assert_reply!(novalues, expected);
        }
        ServerKind::Redis => assert_reply!(novalues, b"-ERR syntax error\r\n"),
    }

    // Large: several bounded calls, every field at least once.
    let n = 5000;
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let mut args: Vec<String> = vec!["HSET".into(), "big".into()];
        for i in chunk {
            args.push(format!("f:{i}"));
            args.push(i.to_string());
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        c(&mut raw, &refs);
    }
    let (pairs, calls) = hscan_all(&mut raw, "big", &[]);
    let seen: HashMap<String, String> = pairs.iter().cloned().collect();
    assert_eq!(seen.len(), n);
    assert_eq!(seen["f:42"], "42");
    assert!(calls > 100, "{calls} calls for {n} fields with COUNT 10");
    let (pairs, _) = hscan_all(&mut raw, "big", &["MATCH", "f:1?", "COUNT", "500"]);
    let fields: HashSet<String> = pairs.into_iter().map(|p| p.0).collect();
    assert_eq!(fields.len(), 10);

    // Fields present for the whole iteration are returned, while others come and go.
    let mut cursor = "0".to_string();
    let mut seen = HashSet::new();
    let mut round = 0;
    loop {
        let reply = parse_reply(&c(&mut raw, &["HSCAN", "big", &cursor, "COUNT", "50"]));
        let redis::Value::Array(parts) = reply else {
            panic!()
        };
        let redis::Value::BulkString(next) = &parts[0] else {
            panic!()
        };
        for p in strings(parts[1].clone()).chunks(2) {
            seen.insert(p[0].clone());
        }
        round += 1;
        if round == 3 {
            for i in 0..5000 {
                c(&mut raw, &["HSET", "big", &format!("extra:{i}"), "x"]);
            }
        }
        if round == 20 {
            for i in 0..5000 {
                c(&mut raw, &["HDEL", "big", &format!("extra:{i}")]);
            }
        }
        cursor = String::from_utf8(next.clone()).unwrap();
        if cursor == "0" {
            break;
        }
    }
    for i in 0..n {
        assert!(seen.contains(&format!("f:{i}")), "f:{i} was never returned");
    }
}

#[test]
fn resp3_reply_shapes() {
    let server = ServerProcess::target(&[]);
    let mut raw = server.raw();
    let hello = c(&mut raw, &["HELLO", "3"]);
    assert!(hello.starts_with(b"%"));
    c(&mut raw, &["HSET", "h", "a", "1", "b", "2"]);
    assert_reply!(
        c(&mut raw, &["HGETALL", "h"]),
        b"%2\r\n$1\r\na\r\n$1\r\n1\r\n$1\r\nb\r\n$1\r\n2\r\n"
    );
    assert_reply!(c(&mut raw, &["HGETALL", "nokey"]), b"%0\r\n");
    assert_reply!(c(&mut raw, &["HGET", "h", "zz"]), b"_\r\n");
    assert_reply!(
        c(&mut raw, &["HMGET", "h", "a", "zz"]),
        b"*2\r\n$1\r\n1\r\n_\r\n"
    );
    assert_reply!(c(&mut raw, &["HKEYS", "h"]), bulks(&["a", "b"]));
    assert_reply!(c(&mut raw, &["HVALS", "h"]), bulks(&["1", "2"]));
    assert_reply!(c(&mut raw, &["HLEN", "h"]), b":2\r\n");
    assert_reply!(c(&mut raw, &["HEXISTS", "h", "a"]), b":1\r\n");
    assert_reply!(c(&mut raw, &["HINCRBYFLOAT", "h", "a", "0.5"]), bulk("1.5"));
    assert_reply!(c(&mut raw, &["HRANDFIELD", "nokey"]), b"_\r\n");
    assert_reply!(
        c(&mut raw, &["HRANDFIELD", "h", "5", "WITHVALUES"]),
        b"*2\r\n*2\r\n$1\r\na\r\n$3\r\n1.5\r\n*2\r\n$1\r\nb\r\n$1\r\n2\r\n"
    );
    assert_reply!(c(&mut raw, &["HRANDFIELD", "h", "5"]), bulks(&["a", "b"]));
    let neg = c(&mut raw, &["HRANDFIELD", "h", "-3", "WITHVALUES"]);
    assert!(neg.starts_with(b"*3\r\n*2\r\n$1\r\n"), "{neg:?}");
    let mut expected = b"*2\r\n$1\r\n0\r\n".to_vec();
    expected.extend(bulks(&["a", "1.5", "b", "2"]));
    assert_reply!(c(&mut raw, &["HSCAN", "h", "0"]), expected);
}

#[test]
fn hashes_through_key_commands() {
    let server = ServerProcess::target(&[]);
    let mut raw = server.raw();
    assert_reply!(
        c(
            &mut raw,
            &["CONFIG", "SET", "hash-max-listpack-entries", "128"]
        ),
        b"+OK\r\n"
    );
    c(&mut raw, &["HSET", "h", "a", "1", "b", "2"]);
    for i in 0..200 {
        c(&mut raw, &["HSET", "big", &format!("f{i}"), &i.to_string()]);
    }
    assert_reply!(c(&mut raw, &["TYPE", "h"]), b"+hash\r\n");
    c(&mut raw, &["SET", "s", "v"]);
    let scanned = parse_reply(&c(
        &mut raw,
        &["SCAN", "0", "TYPE", "hash", "COUNT", "1000"],
    ));
    let redis::Value::Array(parts) = scanned else {
        panic!()
    };
    let mut keys = strings(parts[1].clone());
    keys.sort();
    assert_eq!(keys, ["big", "h"]);

    // DUMP / RESTORE, both encodings, with the encoding chosen on load.
    for (key, enc, len) in [("h", "listpack", 2), ("big", "hashtable", 200)] {
        let dump = raw.cmd(&[b"DUMP", key.as_bytes()]);
        let redis::Value::BulkString(payload) = parse_reply(&dump) else {
            panic!("DUMP {key}: {dump:?}")
        };
        assert_reply!(
            raw.cmd(&[b"RESTORE", b"copy", b"0", &payload, b"REPLACE"]),
            b"+OK\r\n"
        );
        assert_reply!(c(&mut raw, &["OBJECT", "ENCODING", "copy"]), bulk(enc));
        assert_reply!(c(&mut raw, &["HLEN", "copy"]), format!(":{len}\r\n"));
        let a: HashSet<String> = strings(parse_reply(&c(&mut raw, &["HGETALL", key])))
            .chunks(2)
            .map(|p| p.join("="))
            .collect();
        let b: HashSet<String> = strings(parse_reply(&c(&mut raw, &["HGETALL", "copy"])))
            .chunks(2)
            .map(|p| p.join("="))
            .collect();
        assert_eq!(a, b);
    }
    assert_reply!(c(&mut raw, &["HGET", "copy", "f199"]), bulk("199"));

    // COPY is deep: changing the copy leaves the source alone.
    assert_reply!(c(&mut raw, &["COPY", "h", "h2"]), b":1\r\n");
    c(&mut raw, &["HSET", "h2", "a", "changed"]);
    assert_reply!(c(&mut raw, &["HGET", "h", "a"]), bulk("1"));
    assert_reply!(c(&mut raw, &["HGET", "h2", "a"]), bulk("changed"));
    assert_reply!(c(&mut raw, &["RENAME", "h2", "h3"]), b"+OK\r\n");
    assert_reply!(c(&mut raw, &["HGET", "h3", "b"]), bulk("2"));
    assert_reply!(c(&mut raw, &["EXISTS", "h2"]), b":0\r\n");

    // Expiry applies to hashes; writing a field keeps the TTL.
    assert_reply!(c(&mut raw, &["EXPIRE", "h3", "100"]), b":1\r\n");
    c(&mut raw, &["HSET", "h3", "c", "3"]);
    let ttl = parse_reply(&c(&mut raw, &["TTL", "h3"]));
    assert!(
        matches!(ttl, redis::Value::Int(t) if (90..=100).contains(&t)),
        "{ttl:?}"
    );
    assert_reply!(c(&mut raw, &["PEXPIRE", "h3", "1"]), b":1\r\n");
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert_reply!(c(&mut raw, &["HGET", "h3", "a"]), b"$-1\r\n");
    assert_reply!(c(&mut raw, &["EXISTS", "h3"]), b":0\r\n");
    // Deleting the whole hash.
    assert_reply!(c(&mut raw, &["DEL", "big"]), b":1\r\n");
    assert_reply!(c(&mut raw, &["HLEN", "big"]), b":0\r\n");
}
