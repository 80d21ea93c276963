//! List commands: pushes and pops (with counts), ranges, LINDEX/LSET, LINSERT, LREM, LTRIM,
//! LPOS, LMOVE/RPOPLPUSH, LMPOP, encodings, RESP3 shapes, and lists through the generic key
//! commands (DUMP/RESTORE, COPY, RENAME, TYPE, SCAN TYPE, expiry). Each test starts its own
//! server; every test also passes against redis-server (`LAGWISE_TEST_TARGET=redis`), except
//! where a branch on `server.kind()` says otherwise.
#![allow(clippy::unwrap_used)]

use lagwise_tests::wire::{bulk, bulks, cmd_str as c, WRONGTYPE};
use lagwise_tests::{assert_reply, RawConn, ServerKind, ServerProcess};

const NOT_INT: &[u8] = b"-ERR value is not an integer or out of range\r\n";
const SYNTAX: &[u8] = b"-ERR syntax error\r\n";
const POSITIVE: &[u8] = b"-ERR value is out of range, must be positive\r\n";

fn ints(items: &[i64]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", items.len()).into_bytes();
    for i in items {
        out.extend(format!(":{i}\r\n").into_bytes());
    }
    out
}

fn int(n: i64) -> Vec<u8> {
    format!(":{n}\r\n").into_bytes()
}

fn range(raw: &mut RawConn, key: &str) -> Vec<u8> {
    c(raw, &["LRANGE", key, "0", "-1"])
}

#[test]
fn push_and_pop() {
    let server = ServerProcess::target(&[]);
    let mut raw = server.raw();
    assert_reply!(c(&mut raw, &["LPUSH", "l", "a", "b", "c"]), int(3));
    assert_reply!(c(&mut raw, &["RPUSH", "l", "x", "y"]), int(5));
    assert_reply!(range(&mut raw, "l"), bulks(&["c", "b", "a", "x", "y"]));
    assert_reply!(c(&mut raw, &["LLEN", "l"]), int(5));
    assert_reply!(c(&mut raw, &["LLEN", "nosuch"]), int(0));
    // The X forms push only onto existing lists.
    assert_reply!(c(&mut raw, &["LPUSHX", "nosuch", "a"]), int(0));
    assert_reply!(c(&mut raw, &["RPUSHX", "nosuch", "a", "b"]), int(0));
    assert_reply!(c(&mut raw, &["EXISTS", "nosuch"]), int(0));
    assert_reply!(c(&mut raw, &["LPUSHX", "l", "0"]), int(6));
    assert_reply!(c(&mut raw, &["RPUSHX", "l", "z", ""]), int(8));

    assert_reply!(c(&mut raw, &["LPOP", "l"]), bulk("0"));
    assert_reply!(c(&mut raw, &["RPOP", "l"]), bulk(""));
    assert_reply!(c(&mut raw, &["LPOP", "l", "2"]), bulks(&["c", "b"]));
    assert_reply!(c(&mut raw, &["RPOP", "l", "2"]), bulks(&["z", "y"]));
    // A count of 0 on an existing list: an empty array; on a missing key: a null array.
    assert_reply!(c(&mut raw, &["LPOP", "l", "0"]), b"*0\r\n");
    assert_reply!(c(&mut raw, &["LPOP", "nosuch", "0"]), b"*-1\r\n");
    assert_reply!(c(&mut raw, &["LPOP", "nosuch", "3"]), b"*-1\r\n");
    assert_reply!(c(&mut raw, &["RPOP", "nosuch"]), b"$-1\r\n");
    assert_reply!(c(&mut raw, &["LPOP", "l", "-1"]), POSITIVE);
    assert_reply!(c(&mut raw, &["LPOP", "l", "abc"]), POSITIVE);
    assert_reply!(c(&mut raw, &["RPOP", "nosuch", "-1"]), POSITIVE);
    assert_reply!(
        c(&mut raw, &["LPOP", "l", "1", "2"]),
        b"-ERR wrong number of arguments for 'lpop' command\r\n"
    );
    assert_reply!(
        c(&mut raw, &["LPUSH", "l"]),
        b"-ERR wrong number of arguments for 'lpush' command\r\n"
    );
    // Popping more than there is empties the list, and an empty list is deleted.
    assert_reply!(c(&mut raw, &["RPOP", "l", "100"]), bulks(&["x", "a"]));
    assert_reply!(c(&mut raw, &["EXISTS", "l"]), int(0));
    assert_reply!(c(&mut raw, &["RPUSH", "one", "v"]), int(1));
    assert_reply!(c(&mut raw, &["LPOP", "one"]), bulk("v"));
    assert_reply!(c(&mut raw, &["EXISTS", "one"]), int(0));

    // Binary-safe elements.
    let binary: &[u8] = b"a\0b\r\nc\xff";
    raw.cmd(&[b"RPUSH", b"bin", binary]);
    let mut expected = b"*1\r\n$7\r\n".to_vec();
    expected.extend_from_slice(binary);
    expected.extend_from_slice(b"\r\n");
    assert_reply!(raw.cmd(&[b"LRANGE", b"bin", b"0", b"-1"]), expected);
}

#[test]
fn ranges_and_indexes() {
    let server = ServerProcess::target(&[]);
    let mut raw = server.raw();
    c(&mut raw, &["RPUSH", "l", "a", "b", "c", "d", "e"]);
    assert_reply!(c(&mut raw, &["LRANGE", "l", "1", "2"]), bulks(&["b", "c"]));
    assert_reply!(
        c(&mut raw, &["LRANGE", "l", "-2", "-1"]),
        bulks(&["d", "e"])
    );
    assert_reply!(
        c(&mut raw, &["LRANGE", "l", "-100", "100"]),
        bulks(&["a", "b", "c", "d", "e"])
    );
    assert_reply!(c(&mut raw, &["LRANGE", "l", "3", "1"]), b"*0\r\n");
    assert_reply!(c(&mut raw, &["LRANGE", "l", "5", "10"]), b"*0\r\n");
    assert_reply!(c(&mut raw, &["LRANGE", "l", "0", "-6"]), b"*0\r\n");
    assert_reply!(
        c(
            &mut raw,
            &["LRANGE", "l", "-9223372036854775808", "9223372036854775807"]
        ),
        bulks(&["a", "b", "c", "d", "e"])
    );
    assert_reply!(c(&mut raw, &["LRANGE", "nosuch", "0", "-1"]), b"*0\r\n");
    // Indexes are parsed before the key is looked up.
    assert_reply!(c(&mut raw, &["LRANGE", "nosuch", "x", "1"]), NOT_INT);
    assert_reply!(c(&mut raw, &["LRANGE", "l", "0", "1.5"]), NOT_INT);

    assert_reply!(c(&mut raw, &["LINDEX", "l", "0"]), bulk("a"));
    assert_reply!(c(&mut raw, &["LINDEX", "l", "-1"]), bulk("e"));
    assert_reply!(c(&mut raw, &["LINDEX", "l", "5"]), b"$-1\r\n");
    assert_reply!(c(&mut raw, &["LINDEX", "l", "-6"]), b"$-1\r\n");
    // LINDEX looks the key up first: a missing key is nil whatever the index.
    assert_reply!(c(&mut raw, &["LINDEX", "nosuch", "x"]), b"$-1\r\n");
    assert_reply!(c(&mut raw, &["LINDEX", "l", "x"]), NOT_INT);

    assert_reply!(c(&mut raw, &["LSET", "l", "1", "B"]), b"+OK\r\n");
    assert_reply!(c(&mut raw, &["LSET", "l", "-1", "E"]), b"+OK\r\n");
    assert_reply!(range(&mut raw, "l"), bulks(&["a", "B", "c", "d", "E"]));
    assert_reply!(
        c(&mut raw, &["LSET", "l", "5", "x"]),
        b"-ERR index out of range\r\n"
    );
    assert_reply!(
        c(&mut raw, &["LSET", "l", "-6", "x"]),
        b"-ERR index out of range\r\n"
    );
    assert_reply!(
        c(&mut raw, &["LSET", "nosuch", "0", "x"]),
        b"-ERR no such key\r\n"
    );
    assert_reply!(
        c(&mut raw, &["LSET", "nosuch", "x", "x"]),
        b"-ERR no such key\r\n"
    );
    assert_reply!(c(&mut raw, &["LSET", "l", "x", "x"]), NOT_INT);
}

#[test]
fn insert_remove_trim() {
    let server = ServerProcess::target(&[]);
    let mut raw = server.raw();
    c(&mut raw, &["RPUSH", "l", "a", "b", "a", "c", "a"]);
    assert_reply!(c(&mut raw, &["LINSERT", "l", "BEFORE", "b", "x"]), int(6));
    assert_reply!(c(&mut raw, &["LINSERT", "l", "after", "c", "y"]), int(7));
    assert_reply!(
        range(&mut raw, "l"),
        bulks(&["a", "x", "b", "a", "c", "y", "a"])
    );
    assert_reply!(c(&mut raw, &["LINSERT", "l", "BEFORE", "zz", "x"]), int(-1));
    assert_reply!(
        c(&mut raw, &["LINSERT", "nosuch", "BEFORE", "a", "x"]),
        int(0)
    );
    assert_reply!(c(&mut raw, &["LINSERT", "l", "MIDDLE", "a", "x"]), SYNTAX);
    assert_reply!(
        c(&mut raw, &["LINSERT", "nosuch", "MIDDLE", "a", "x"]),
        SYNTAX
    );

    // LREM: positive counts from the head, negative from the tail, 0 for all.
    assert_reply!(c(&mut raw, &["LREM", "l", "-1", "a"]), int(1));
    assert_reply!(range(&mut raw, "l"), bulks(&["a", "x", "b", "a", "c", "y"]));
    assert_reply!(c(&mut raw, &["LREM", "l", "1", "a"]), int(1));
    assert_reply!(range(&mut raw, "l"), bulks(&["x", "b", "a", "c", "y"]));
    c(&mut raw, &["RPUSH", "l", "a", "a"]);
    assert_reply!(c(&mut raw, &["LREM", "l", "0", "a"]), int(3));
    assert_reply!(c(&mut raw, &["LREM", "l", "0", "zz"]), int(0));
    assert_reply!(c(&mut raw, &["LREM", "nosuch", "0", "a"]), int(0));
    assert_reply!(c(&mut raw, &["LREM", "nosuch", "x", "a"]), NOT_INT);
    assert_reply!(range(&mut raw, "l"), bulks(&["x", "b", "c", "y"]));

    // LTRIM keeps start..=stop; an empty range deletes the key.
    assert_reply!(c(&mut raw, &["LTRIM", "l", "1", "-2"]), b"+OK\r\n");
    assert_reply!(range(&mut raw, "l"), bulks(&["b", "c"]));
    assert_reply!(c(&mut raw, &["LTRIM", "l", "-100", "100"]), b"+OK\r\n");
    assert_reply!(range(&mut raw, "l"), bulks(&["b", "c"]));
    assert_reply!(c(&mut raw, &["LTRIM", "nosuch", "0", "1"]), b"+OK\r\n");
    assert_reply!(c(&mut raw, &["LTRIM", "l", "a", "1"]), NOT_INT);
    assert_reply!(c(&mut raw, &["LTRIM", "l", "5", "1"]), b"+OK\r\n");
    assert_reply!(c(&mut raw, &["EXISTS", "l"]), int(0));

    // Removing the last element deletes the key.
    c(&mut raw, &["RPUSH", "r", "v", "v"]);
    assert_reply!(c(&mut raw, &["LREM", "r", "0", "v"]), int(2));
    assert_reply!(c(&mut raw, &["EXISTS", "r"]), int(0));
}

#[test]
fn lpos_options() {
    let server = ServerProcess::target(&[]);
    let mut raw = server.raw();
    c(
        &mut raw,
        &["RPUSH", "l", "a", "b", "c", "1", "2", "3", "c", "c"],
    );
    assert_reply!(c(&mut raw, &["LPOS", "l", "c"]), int(2));
    assert_reply!(c(&mut raw, &["LPOS", "l", "zz"]), b"$-1\r\n");
    assert_reply!(c(&mut raw, &["LPOS", "l", "c", "RANK", "2"]), int(6));
    assert_reply!(c(&mut raw, &["LPOS", "l", "c", "RANK", "-1"]), int(7));
    assert_reply!(c(&mut raw, &["LPOS", "l", "c", "RANK", "4"]), b"$-1\r\n");
    assert_reply!(
        c(&mut raw, &["LPOS", "l", "c", "COUNT", "0"]),
        ints(&[2, 6, 7])
    );
    assert_reply!(
        c(&mut raw, &["LPOS", "l", "c", "COUNT", "2"]),
        ints(&[2, 6])
    );
    assert_reply!(
        c(&mut raw, &["LPOS", "l", "c", "COUNT", "0", "RANK", "-2"]),
        ints(&[6, 2])
    );
    assert_reply!(
        c(&mut raw, &["LPOS", "l", "c", "COUNT", "0", "MAXLEN", "7"]),
        ints(&[2, 6])
    );
    assert_reply!(c(&mut raw, &["LPOS", "l", "c", "MAXLEN", "2"]), b"$-1\r\n");
    assert_reply!(c(&mut raw, &["LPOS", "l", "zz", "COUNT", "5"]), b"*0\r\n");
    assert_reply!(c(&mut raw, &["LPOS", "nosuch", "a"]), b"$-1\r\n");
    assert_reply!(
        c(&mut raw, &["LPOS", "nosuch", "a", "COUNT", "1"]),
        b"*0\r\n"
    );
    assert_reply!(
        c(&mut raw, &["LPOS", "l", "c", "RANK", "0"]),
        b"-ERR RANK can't be zero: use 1 to start from the first match, 2 from the second ... or use negative to start from the end of the list\r\n"
    );
    assert_reply!(c(&mut raw, &["LPOS", "l", "c", "RANK", "x"]), NOT_INT);
    assert_reply!(
        c(&mut raw, &["LPOS", "l", "c", "COUNT", "-1"]),
        b"-ERR COUNT can't be negative\r\n"
    );
    assert_reply!(
        c(&mut raw, &["LPOS", "l", "c", "COUNT", "x"]),
        b"-ERR COUNT can't be negative\r\n"
    );
    assert_reply!(
        c(&mut raw, &["LPOS", "l", "c", "MAXLEN", "-1"]),
        b"-ERR MAXLEN can't be negative\r\n"
    );
    assert_reply!(c(&mut raw, &["LPOS", "l", "c", "COUNT"]), SYNTAX);
    assert_reply!(c(&mut raw, &["LPOS", "l", "c", "FOO", "1"]), SYNTAX);
    // Options are checked before the key.
    assert_reply!(c(&mut raw, &["LPOS", "nosuch", "c", "FOO"]), SYNTAX);
    // Valkey (like Redis 7.2) refuses a RANK of LONG_MIN, whose negation overflows; Redis 7.0
    // accepted it.
    let reply = c(
        &mut raw,
        &["LPOS", "l", "c", "RANK", "-9223372036854775808"],
    );
    match server.kind() {
        ServerKind::Lagwise => assert_reply!(
            reply,
            b"-ERR value is out of range, value must between -9223372036854775807 and 9223372036854775807\r\n"
        ),
        ServerKind::Redis => assert!(reply.starts_with(b":")),
    }
}

#[test]
fn moves() {
    let server = ServerProcess::target(&[]);
    let mut raw = server.raw();
    c(&mut raw, &["RPUSH", "src", "a", "b", "c"]);
    assert_reply!(c(&mut raw, &["RPOPLPUSH", "src", "dst"]), bulk("c"));
    assert_reply!(
        c(&mut raw, &["LMOVE", "src", "dst", "LEFT", "RIGHT"]),
        bulk("a")
    );
    assert_reply!(range(&mut raw, "dst"), bulks(&["c", "a"]));
    assert_reply!(
        c(&mut raw, &["LMOVE", "dst", "dst", "left", "right"]),
        bulk("c")
    );
    assert_reply!(range(&mut raw, "dst"), bulks(&["a", "c"]));
    assert_reply!(c(&mut raw, &["RPOPLPUSH", "dst", "dst"]), bulk("c"));
    assert_reply!(range(&mut raw, "dst"), bulks(&["c", "a"]));
    // Moving the last element deletes the source.
    assert_reply!(
        c(&mut raw, &["LMOVE", "src", "dst", "RIGHT", "LEFT"]),
        bulk("b")
    );
    assert_reply!(c(&mut raw, &["EXISTS", "src"]), int(0));
    assert_reply!(range(&mut raw, "dst"), bulks(&["b", "c", "a"]));
    // A single-element list moved onto itself survives.
    c(&mut raw, &["RPUSH", "one", "x"]);
    assert_reply!(
        c(&mut raw, &["LMOVE", "one", "one", "LEFT", "LEFT"]),
        bulk("x")
    );
    assert_reply!(range(&mut raw, "one"), bulks(&["x"]));

    assert_reply!(c(&mut raw, &["RPOPLPUSH", "nosuch", "dst"]), b"$-1\r\n");
    assert_reply!(
        c(&mut raw, &["LMOVE", "nosuch", "dst", "LEFT", "LEFT"]),
        b"$-1\r\n"
    );
    assert_reply!(c(&mut raw, &["LMOVE", "dst", "x", "UP", "LEFT"]), SYNTAX);
    assert_reply!(c(&mut raw, &["LMOVE", "dst", "x", "LEFT", "DOWN"]), SYNTAX);
    // A destination of another type fails before the source changes.
    c(&mut raw, &["SET", "str", "v"]);
    assert_reply!(c(&mut raw, &["RPOPLPUSH", "dst", "str"]), WRONGTYPE);
    assert_reply!(range(&mut raw, "dst"), bulks(&["b", "c", "a"]));
    assert_reply!(c(&mut raw, &["RPOPLPUSH", "str", "dst"]), WRONGTYPE);
    // A missing source wins over a wrong-type destination.
    assert_reply!(c(&mut raw, &["RPOPLPUSH", "nosuch", "str"]), b"$-1\r\n");
}

#[test]
fn lmpop() {
    let server = ServerProcess::target(&[]);
    let mut raw = server.raw();
    c(&mut raw, &["RPUSH", "l2", "a", "b", "c"]);
    let mut expected = b"*2\r\n".to_vec();
    expected.extend(bulk("l2"));
    expected.extend(bulks(&["a"]));
    assert_reply!(c(&mut raw, &["LMPOP", "2", "l1", "l2", "LEFT"]), expected);
    let mut expected = b"*2\r\n".to_vec();
    expected.extend(bulk("l2"));
    expected.extend(bulks(&["c", "b"]));
    assert_reply!(
        c(
            &mut raw,
            &["LMPOP", "2", "l1", "l2", "right", "COUNT", "10"]
        ),
        expected
    );
    assert_reply!(c(&mut raw, &["EXISTS", "l2"]), int(0));
    assert_reply!(c(&mut raw, &["LMPOP", "2", "l1", "l2", "LEFT"]), b"*-1\r\n");

    let numkeys = b"-ERR numkeys should be greater than 0\r\n";
    assert_reply!(c(&mut raw, &["LMPOP", "0", "l", "LEFT"]), numkeys);
    assert_reply!(c(&mut raw, &["LMPOP", "x", "l", "LEFT"]), numkeys);
    assert_reply!(c(&mut raw, &["LMPOP", "-1", "l", "LEFT"]), numkeys);
    assert_reply!(c(&mut raw, &["LMPOP", "3", "l", "LEFT"]), SYNTAX);
    assert_reply!(c(&mut raw, &["LMPOP", "1", "l", "MIDDLE"]), SYNTAX);
    assert_reply!(
        c(&mut raw, &["LMPOP", "9223372036854775807", "l", "LEFT"]),
        SYNTAX
    );
    let count = b"-ERR count should be greater than 0\r\n";
    assert_reply!(
        c(&mut raw, &["LMPOP", "1", "l", "LEFT", "COUNT", "0"]),
        count
    );
    assert_reply!(
        c(&mut raw, &["LMPOP", "1", "l", "LEFT", "COUNT", "x"]),
        count
    );
    assert_reply!(c(&mut raw, &["LMPOP", "1", "l", "LEFT", "COUNT"]), SYNTAX);
    assert_reply!(
        c(
            &mut raw,
            &["LMPOP", "1", "l", "LEFT", "COUNT", "1", "COUNT", "1"]
        ),
        SYNTAX
    );
    assert_reply!(
        c(&mut raw, &["LMPOP", "1", "l"]),
        b"-ERR wrong number of arguments for 'lmpop' command\r\n"
    );
    // The first non-empty key is popped; a key of another type on the way is an error.
    c(&mut raw, &["SET", "str", "v"]);
    c(&mut raw, &["RPUSH", "l3", "z"]);
    assert_reply!(c(&mut raw, &["LMPOP", "2", "str", "l3", "LEFT"]), WRONGTYPE);
    let mut expected = b"*2\r\n".to_vec();
    expected.extend(bulk("l3"));
    expected.extend(bulks(&["z"]));
    assert_reply!(c(&mut raw, &["LMPOP", "2", "l3", "str", "LEFT"]), expected);
}

#[test]
fn wrong_type() {
    let server = ServerProcess::target(&[]);
    let mut raw = server.raw();
    c(&mut raw, &["SET", "s", "v"]);
    for cmd in [
        &["LPUSH", "s", "a"][..],
        &["RPUSH", "s", "a"],
        &["LPUSHX", "s", "a"],
        &["RPUSHX", "s", "a"],
        &["LPOP", "s"],
        &["RPOP", "s", "0"],
        &["LLEN", "s"],
        &["LRANGE", "s", "0", "-1"],
        &["LINDEX", "s", "0"],
        &["LINDEX", "s", "x"],
        &["LSET", "s", "0", "a"],
        &["LINSERT", "s", "BEFORE", "a", "b"],
        &["LREM", "s", "0", "a"],
        &["LTRIM", "s", "0", "1"],
        &["LPOS", "s", "a"],
        &["LMOVE", "s", "d", "LEFT", "LEFT"],
        &["RPOPLPUSH", "s", "d"],
        &["LMPOP", "1", "s", "LEFT"],
    ] {
        assert_reply!(c(&mut raw, cmd), WRONGTYPE, "{cmd:?}");
    }
    assert_reply!(c(&mut raw, &["GET", "s"]), bulk("v"));
    c(&mut raw, &["RPUSH", "l", "a"]);
    assert_reply!(c(&mut raw, &["GET", "l"]), WRONGTYPE);
}

#[test]
fn resp3_reply_shapes() {
    let server = ServerProcess::target(&[]);
    let mut raw = server.raw();
    let hello = c(&mut raw, &["HELLO", "3"]);
    assert!(hello.starts_with(b"%"));
    c(&mut raw, &["RPUSH", "l", "a", "b", "c", "a"]);
    assert_reply!(c(&mut raw, &["LPOP", "nosuch"]), b"_\r\n");
    assert_reply!(c(&mut raw, &["LPOP", "nosuch", "2"]), b"_\r\n");
    assert_reply!(c(&mut raw, &["LPOP", "l", "0"]), b"*0\r\n");
    assert_reply!(c(&mut raw, &["LINDEX", "l", "10"]), b"_\r\n");
    assert_reply!(c(&mut raw, &["LPOS", "l", "zz"]), b"_\r\n");
    assert_reply!(c(&mut raw, &["LPOS", "nosuch", "zz"]), b"_\r\n");
    assert_reply!(
        c(&mut raw, &["LPOS", "l", "a", "COUNT", "0"]),
        ints(&[0, 3])
    );
    assert_reply!(c(&mut raw, &["LMPOP", "1", "nosuch", "LEFT"]), b"_\r\n");
    assert_reply!(c(&mut raw, &["RPOPLPUSH", "nosuch", "x"]), b"_\r\n");
    assert_reply!(c(&mut raw, &["LRANGE", "nosuch", "0", "-1"]), b"*0\r\n");
    assert_reply!(c(&mut raw, &["LLEN", "l"]), int(4));
    assert_reply!(c(&mut raw, &["RPOP", "l"]), bulk("a"));
    let mut expected = b"*2\r\n".to_vec();
    expected.extend(bulk("l"));
    expected.extend(bulks(&["a", "b"]));
    assert_reply!(
        c(&mut raw, &["LMPOP", "1", "l", "LEFT", "COUNT", "2"]),
        expected
    );
}

fn encoding(raw: &mut RawConn, key: &str) -> Vec<u8> {
    c(raw, &["OBJECT", "ENCODING", key])
}

/// Valkey 8's list encodings; Redis 7.0 has no listpack lists and always says quicklist.
#[test]
fn encodings() {
    let server = ServerProcess::target(&[]);
    let mut raw = server.raw();
    let valkey = server.kind() == ServerKind::Lagwise;
    let expect = |raw: &mut RawConn, key: &str, valkey_name: &str| {
        let name = if valkey { valkey_name } else { "quicklist" };
        assert_reply!(encoding(raw, key), bulk(name), "{key}");
    };

    // Default: -2, 8 KiB per node.
    c(&mut raw, &["RPUSH", "small", "a", "b", "12345"]);
    expect(&mut raw, "small", "listpack");
    let big = "x".repeat(9000);
    c(&mut raw, &["RPUSH", "bigval", &big]);
    expect(&mut raw, "bigval", "quicklist");
    // Shrinking to half the limit converts back (Valkey 7.2+).
    c(&mut raw, &["RPUSH", "bigval", "a"]);
    c(&mut raw, &["LPOP", "bigval"]);
    expect(&mut raw, "bigval", "listpack");

    // A count limit.
    assert_reply!(
        c(&mut raw, &["CONFIG", "SET", "list-max-listpack-size", "4"]),
        b"+OK\r\n"
    );
    c(&mut raw, &["RPUSH", "n", "1", "2", "3", "4"]);
    expect(&mut raw, "n", "listpack");
    c(&mut raw, &["RPUSH", "n", "5"]);
    expect(&mut raw, "n", "quicklist");
    c(&mut raw, &["RPOP", "n", "2"]);
    expect(&mut raw, "n", "quicklist"); // 3 > 4/2
    c(&mut raw, &["LTRIM", "n", "0", "1"]);
    expect(&mut raw, "n", "listpack");
    // Valkey converts back only a quicklist of one node: [z] [1 2 3 4] [5], then popping
    // four from the head leaves [4] [5], still two nodes.
    c(&mut raw, &["RPUSH", "h", "1", "2", "3", "4", "5"]);
    c(&mut raw, &["LPUSH", "h", "z"]);
    c(&mut raw, &["LPOP", "h", "4"]);
    expect(&mut raw, "h", "quicklist");
    c(&mut raw, &["LPOP", "h"]);
    expect(&mut raw, "h", "listpack");
    // LINSERT converts before looking for the pivot, as Valkey does.
    c(&mut raw, &["RPUSH", "i", "1", "2", "3", "4"]);
    assert_reply!(c(&mut raw, &["LINSERT", "i", "BEFORE", "zz", "x"]), int(-1));
    expect(&mut raw, "i", "quicklist");
    // RESTORE picks the encoding by the whole list against one node's limit.
    let dump = c(&mut raw, &["DUMP", "n"]);
    let payload = match lagwise_tests::parse_reply(&dump) {
        redis::Value::BulkString(b) => b,
        other => panic!("{other:?}"),
    };
    raw.cmd(&[b"RESTORE", b"restored", b"0", &payload]);
    expect(&mut raw, "restored", "listpack");

    // A byte limit: -1 is 4 KiB.
    c(&mut raw, &["CONFIG", "SET", "list-max-listpack-size", "-1"]);
    let k1 = "y".repeat(1000);
    c(&mut raw, &["RPUSH", "b", &k1, &k1, &k1, &k1]);
    expect(&mut raw, "b", "listpack");
    c(&mut raw, &["RPUSH", "b", &k1]);
    expect(&mut raw, "b", "quicklist");
    c(&mut raw, &["LPOP", "b", "2"]);
    expect(&mut raw, "b", "quicklist"); // ~3 KB > 2 KB
    c(&mut raw, &["LPOP", "b", "2"]);
    expect(&mut raw, "b", "listpack");
}

#[test]
fn lists_through_key_commands() {
    let server = ServerProcess::target(&[]);
    let mut raw = server.raw();
    c(&mut raw, &["RPUSH", "l", "a", "1", "", "hello world"]);
    assert_reply!(c(&mut raw, &["TYPE", "l"]), b"+list\r\n");
    c(&mut raw, &["SET", "s", "v"]);
    assert_reply!(
        c(&mut raw, &["SCAN", "0", "TYPE", "list", "COUNT", "1000"]),
        [b"*2\r\n$1\r\n0\r\n".to_vec(), bulks(&["l"])].concat()
    );

    let dump = c(&mut raw, &["DUMP", "l"]);
    let payload = match lagwise_tests::parse_reply(&dump) {
        redis::Value::BulkString(b) => b,
        other => panic!("{other:?}"),
    };
    assert_reply!(raw.cmd(&[b"RESTORE", b"l2", b"0", &payload]), b"+OK\r\n");
    assert_reply!(range(&mut raw, "l2"), bulks(&["a", "1", "", "hello world"]));
    // A large list round-trips too.
    for i in 0..2000 {
        c(&mut raw, &["RPUSH", "big", &format!("element:{i}")]);
    }
    let dump = c(&mut raw, &["DUMP", "big"]);
    let payload = match lagwise_tests::parse_reply(&dump) {
        redis::Value::BulkString(b) => b,
        other => panic!("{other:?}"),
    };
    raw.cmd(&[b"RESTORE", b"big2", b"0", &payload]);
    assert_reply!(c(&mut raw, &["LLEN", "big2"]), int(2000));
    assert_reply!(
        c(&mut raw, &["LINDEX", "big2", "1234"]),
        bulk("element:1234")
    );

    assert_reply!(c(&mut raw, &["COPY", "l", "l3"]), int(1));
    c(&mut raw, &["RPUSH", "l3", "extra"]);
    assert_reply!(c(&mut raw, &["LLEN", "l"]), int(4));
    assert_reply!(c(&mut raw, &["LLEN", "l3"]), int(5));
    assert_reply!(c(&mut raw, &["RENAME", "l3", "l4"]), b"+OK\r\n");
    assert_reply!(c(&mut raw, &["LINDEX", "l4", "-1"]), bulk("extra"));

    assert_reply!(c(&mut raw, &["PEXPIRE", "l4", "50"]), int(1));
    std::thread::sleep(std::time::Duration::from_millis(120));
    assert_reply!(c(&mut raw, &["LLEN", "l4"]), int(0));
    assert_reply!(c(&mut raw, &["EXISTS", "l4"]), int(0));
    // A push onto an expired key starts a fresh list without a TTL.
    c(&mut raw, &["RPUSH", "t", "a"]);
    c(&mut raw, &["PEXPIRE", "t", "30"]);
    std::thread::sleep(std::time::Duration::from_millis(80));
    assert_reply!(c(&mut raw, &["RPUSH", "t", "b"]), int(1));
    assert_reply!(c(&mut raw, &["TTL", "t"]), int(-1));
    // Pushing keeps an existing TTL.
    c(&mut raw, &["EXPIRE", "l", "1000"]);
    c(&mut raw, &["RPUSH", "l", "more"]);
    c(&mut raw, &["LPOP", "l"]);
    let ttl = c(&mut raw, &["TTL", "l"]);
    assert!(ttl.starts_with(b":99") || ttl == b":1000\r\n", "{ttl:?}");
}

#[test]
fn watch_sees_list_writes() {
    let server = ServerProcess::target(&[]);
    let mut raw = server.raw();
    let mut other = server.raw();
    c(&mut raw, &["RPUSH", "l", "a"]);
    c(&mut raw, &["WATCH", "l"]);
    c(&mut other, &["RPOPLPUSH", "x", "l"]); // a no-op: x does not exist
    c(&mut other, &["LREM", "l", "0", "zz"]); // removes nothing
    c(&mut raw, &["MULTI"]);
    c(&mut raw, &["LLEN", "l"]);
    assert_reply!(c(&mut raw, &["EXEC"]), b"*1\r\n:1\r\n");

    c(&mut raw, &["WATCH", "l"]);
    c(&mut other, &["LPUSH", "l", "b"]);
    c(&mut raw, &["MULTI"]);
    c(&mut raw, &["LLEN", "l"]);
    assert_reply!(c(&mut raw, &["EXEC"]), b"*-1\r\n");

    c(&mut raw, &["WATCH", "dst"]);
    c(&mut other, &["LMOVE", "l", "dst", "LEFT", "LEFT"]);
    c(&mut raw, &["MULTI"]);
    c(&mut raw, &["LLEN", "dst"]);
    assert_reply!(c(&mut raw, &["EXEC"]), b"*-1\r\n");
}
