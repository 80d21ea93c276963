//! Set commands: membership, the set algebra and its STORE forms, random picks, SMOVE, SSCAN,
//! encodings, RESP3 reply shapes, and the generic key commands on sets. Each test starts its
//! own server. Unordered replies are compared as sets.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeSet, HashSet};

use lagwise_tests::{assert_reply, query, query_cmd, query_err, ServerKind, ServerProcess};
use redis::aio::MultiplexedConnection;

const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";

async fn members(con: &mut MultiplexedConnection, args: &[&str]) -> BTreeSet<String> {
    let v: Vec<String> = query(con, args).await;
    let n = v.len();
    let set: BTreeSet<String> = v.into_iter().collect();
    assert_eq!(set.len(), n, "{args:?} returned duplicates");
    set
}

fn set_of(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

async fn encoding(con: &mut MultiplexedConnection, key: &str) -> String {
    query(con, &["OBJECT", "ENCODING", key]).await
}

/// Valkey 8 keeps small non-integer sets in a listpack; Redis 7.0 has no listpack for sets.
fn small_encoding(server: &ServerProcess) -> &'static str {
    match server.kind() {
        ServerKind::Lagwise => "listpack",
        ServerKind::Redis => "hashtable",
    }
}

#[tokio::test]
async fn sadd_srem_membership() {
    let server = ServerProcess::target(&[]);
    let mut con = server.conn().await;

    assert_eq!(
        query::<i64>(&mut con, &["SADD", "s", "a", "b", "a", "c"]).await,
        3
    );
    assert_eq!(query::<i64>(&mut con, &["SADD", "s", "a", "d"]).await, 1);
    assert_eq!(query::<i64>(&mut con, &["SCARD", "s"]).await, 4);
    assert_eq!(query::<i64>(&mut con, &["SCARD", "missing"]).await, 0);
    assert_eq!(query::<i64>(&mut con, &["SISMEMBER", "s", "a"]).await, 1);
    assert_eq!(query::<i64>(&mut con, &["SISMEMBER", "s", "z"]).await, 0);
    assert_eq!(
        query::<i64>(&mut con, &["SISMEMBER", "missing", "a"]).await,
        0
    );
    assert_eq!(
        query::<Vec<i64>>(&mut con, &["SMISMEMBER", "s", "a", "z", "d"]).await,
        vec![1, 0, 1]
    );
    assert_eq!(
        query::<Vec<i64>>(&mut con, &["SMISMEMBER", "missing", "a", "b"]).await,
        vec![0, 0]
    );
    assert_eq!(
        members(&mut con, &["SMEMBERS", "s"]).await,
        set_of(&["a", "b", "c", "d"])
    );
    assert!(members(&mut con, &["SMEMBERS", "missing"]).await.is_empty());
    assert_eq!(
        query::<i64>(&mut con, &["SREM", "s", "a", "z", "a"]).await,
        1
    );
    assert_eq!(query::<i64>(&mut con, &["SREM", "missing", "a"]).await, 0);
    // The key disappears with its last member.
    assert_eq!(
        query::<i64>(&mut con, &["SREM", "s", "b", "c", "d", "e"]).await,
        3
    );
    assert_eq!(query::<i64>(&mut con, &["EXISTS", "s"]).await, 0);

    // Binary-safe members, and the empty member.
    let binary: &[u8] = b"a\0b\r\n\xff";
    let n: i64 = query_cmd(&mut con, redis::cmd("SADD").arg("bin").arg(binary).arg("")).await;
    assert_eq!(n, 2);
    let got: HashSet<Vec<u8>> = query_cmd(&mut con, redis::cmd("SMEMBERS").arg("bin")).await;
    assert_eq!(got, HashSet::from([binary.to_vec(), Vec::new()]));
    let is: i64 = query_cmd(&mut con, redis::cmd("SISMEMBER").arg("bin").arg("")).await;
    assert_eq!(is, 1);
}

#[tokio::test]
async fn wrong_type_and_arity() {
    let server = ServerProcess::target(&[]);
    let mut con = server.conn().await;
    let _: () = query(&mut con, &["SET", "str", "x"]).await;
    let _: () = query(&mut con, &["SADD", "s", "a"]).await;
    for args in [
        &["SADD", "str", "a"][..],
        &["SREM", "str", "a"],
        &["SISMEMBER", "str", "a"],
        &["SMISMEMBER", "str", "a"],
        &["SMEMBERS", "str"],
        &["SCARD", "str"],
        &["SPOP", "str"],
        &["SPOP", "str", "0"],
        &["SRANDMEMBER", "str"],
        &["SRANDMEMBER", "str", "0"],
        &["SMOVE", "str", "s", "a"],
        &["SMOVE", "s", "str", "a"],
        &["SINTER", "missing", "str"],
        &["SINTERCARD", "2", "missing", "str"],
        &["SINTERSTORE", "d", "s", "str"],
        &["SUNION", "s", "str"],
        &["SUNIONSTORE", "d", "str"],
        &["SDIFF", "missing", "str"],
        &["SDIFFSTORE", "d", "s", "str"],
        &["SSCAN", "str", "0"],
    ] {
        assert_eq!(query_err(&mut con, args).await, WRONGTYPE, "{args:?}");
    }
    // Nothing was written on the way.
    assert_eq!(query::<i64>(&mut con, &["EXISTS", "d"]).await, 0);
    assert_eq!(query::<String>(&mut con, &["GET", "str"]).await, "x");
    // SMOVE from a missing source answers 0 before looking at the destination.
    assert_eq!(
        query::<i64>(&mut con, &["SMOVE", "missing", "str", "a"]).await,
        0
    );

    for (args, name) in [
        (&["SADD", "s"][..], "sadd"),
        (&["SREM", "s"], "srem"),
        (&["SISMEMBER", "s"], "sismember"),
        (&["SMISMEMBER", "s"], "smismember"),
        (&["SMEMBERS"], "smembers"),
        (&["SCARD", "s", "t"], "scard"),
        (&["SMOVE", "s", "t"], "smove"),
        (&["SINTER"], "sinter"),
        (&["SINTERCARD", "1"], "sintercard"),
        (&["SINTERSTORE", "d"], "sinterstore"),
        (&["SSCAN", "s"], "sscan"),
    ] {
        assert_eq!(
            query_err(&mut con, args).await,
            format!("ERR wrong number of arguments for '{name}' command")
        );
    }
    assert_eq!(
        query_err(&mut con, &["SPOP", "s", "1", "2"]).await,
        "ERR syntax error"
    );
    assert_eq!(
        query_err(&mut con, &["SRANDMEMBER", "s", "1", "2"]).await,
        "ERR syntax error"
    );
}

#[tokio::test]
async fn set_algebra() {
    let server = ServerProcess::target(&[]);
    let mut con = server.conn().await;
    let _: () = query(&mut con, &["SADD", "a", "1", "2", "3", "x", "y"]).await;
    let _: () = query(&mut con, &["SADD", "b", "2", "3", "4", "y"]).await;
    let _: () = query(&mut con, &["SADD", "c", "3", "y", "z"]).await;

    assert_eq!(
        members(&mut con, &["SINTER", "a", "b", "c"]).await,
        set_of(&["3", "y"])
    );
    assert_eq!(
        members(&mut con, &["SINTER", "a", "a"]).await,
        set_of(&["1", "2", "3", "x", "y"])
    );
    assert!(members(&mut con, &["SINTER", "a", "missing"])
        .await
        .is_empty());
    assert_eq!(
        members(&mut con, &["SUNION", "a", "b", "missing"]).await,
        set_of(&["1", "2", "3", "4", "x", "y"])
    );
    assert_eq!(
        members(&mut con, &["SDIFF", "a", "b", "c"]).await,
        set_of(&["1", "x"])
    );
    assert_eq!(
        members(&mut con, &["SDIFF", "a", "missing"]).await,
        set_of(&["1", "2", "3", "x", "y"])
    );
    assert!(members(&mut con, &["SDIFF", "missing", "a"])
        .await
        .is_empty());
    assert!(members(&mut con, &["SDIFF", "a", "a"]).await.is_empty());

    assert_eq!(
        query::<i64>(&mut con, &["SINTERCARD", "2", "a", "b"]).await,
        3
    );
    assert_eq!(
        query::<i64>(&mut con, &["SINTERCARD", "2", "a", "b", "LIMIT", "2"]).await,
        2
    );
    assert_eq!(
        query::<i64>(&mut con, &["SINTERCARD", "2", "a", "b", "limit", "0"]).await,
        3
    );
    assert_eq!(
        query::<i64>(&mut con, &["SINTERCARD", "2", "a", "missing"]).await,
        0
    );
    for (args, err) in [
        (
            &["SINTERCARD", "0", "a"][..],
            "ERR numkeys should be greater than 0",
        ),
        (
            &["SINTERCARD", "x", "a"],
            "ERR numkeys should be greater than 0",
        ),
        (
            &["SINTERCARD", "3", "a", "b"],
            "ERR Number of keys can't be greater than number of args",
        ),
        (
            &["SINTERCARD", "1", "a", "LIMIT", "-1"],
            "ERR LIMIT can't be negative",
        ),
        (&["SINTERCARD", "1", "a", "LIMIT"], "ERR syntax error"),
        (&["SINTERCARD", "1", "a", "b"], "ERR syntax error"),
    ] {
        assert_eq!(query_err(&mut con, args).await, err, "{args:?}");
    }

    // STORE forms replace the destination (and its TTL), and delete it for empty results.
    let _: () = query(&mut con, &["SET", "d", "old", "EX", "100"]).await;
    assert_eq!(
        query::<i64>(&mut con, &["SINTERSTORE", "d", "a", "b"]).await,
        3
    );
    assert_eq!(
        members(&mut con, &["SMEMBERS", "d"]).await,
        set_of(&["2", "3", "y"])
    );
    assert_eq!(query::<i64>(&mut con, &["TTL", "d"]).await, -1);
    assert_eq!(
        query::<i64>(&mut con, &["SUNIONSTORE", "d", "b", "c"]).await,
        5
    );
    assert_eq!(
        members(&mut con, &["SMEMBERS", "d"]).await,
        set_of(&["2", "3", "4", "y", "z"])
    );
    assert_eq!(
        query::<i64>(&mut con, &["SDIFFSTORE", "d", "d", "a"]).await,
        2
    );
    assert_eq!(
        members(&mut con, &["SMEMBERS", "d"]).await,
        set_of(&["4", "z"])
    );
    assert_eq!(
        query::<i64>(&mut con, &["SINTERSTORE", "d", "a", "missing"]).await,
        0
    );
    assert_eq!(query::<i64>(&mut con, &["EXISTS", "d"]).await, 0);
    assert_eq!(
        query::<i64>(&mut con, &["SDIFFSTORE", "d", "a", "a"]).await,
        0
    );
    assert_eq!(
        query::<i64>(&mut con, &["SUNIONSTORE", "d", "nope"]).await,
        0
    );
    assert_eq!(query::<i64>(&mut con, &["EXISTS", "d"]).await, 0);
    // A destination that is also a source.
    assert_eq!(
        query::<i64>(&mut con, &["SUNIONSTORE", "a", "a", "c"]).await,
        6
    );
}

#[tokio::test]
async fn spop_and_srandmember() {
    let server = ServerProcess::target(&[]);
    let mut con = server.conn().await;
    let all = set_of(&["a", "b", "c", "d", "e", "1", "2"]);
    let args: Vec<&str> = ["SADD", "s"]
        .into_iter()
        .chain(all.iter().map(String::as_str))
        .collect();
    let _: () = query(&mut con, &args).await;

    // SRANDMEMBER never changes the set.
    let one: String = query(&mut con, &["SRANDMEMBER", "s"]).await;
    assert!(all.contains(&one));
    let three = members(&mut con, &["SRANDMEMBER", "s", "3"]).await;
    assert_eq!(three.len(), 3);
    assert!(three.is_subset(&all));
    assert_eq!(members(&mut con, &["SRANDMEMBER", "s", "100"]).await, all);
    let rep: Vec<String> = query(&mut con, &["SRANDMEMBER", "s", "-20"]).await;
    assert_eq!(rep.len(), 20);
    assert!(rep.iter().all(|m| all.contains(m)));
    assert!(query::<Vec<String>>(&mut con, &["SRANDMEMBER", "s", "0"])
        .await
        .is_empty());
    assert!(
        query::<Vec<String>>(&mut con, &["SRANDMEMBER", "nope", "5"])
            .await
            .is_empty()
    );
    assert_eq!(
        query::<Option<String>>(&mut con, &["SRANDMEMBER", "nope"]).await,
        None
    );
    assert_eq!(query::<i64>(&mut con, &["SCARD", "s"]).await, 7);
    // Negative counts really are random: 200 draws from 7 members see every member.
    let many: HashSet<String> = query::<Vec<String>>(&mut con, &["SRANDMEMBER", "s", "-200"])
        .await
        .into_iter()
        .collect();
    assert_eq!(many.len(), 7);
    assert_eq!(
        query_err(&mut con, &["SRANDMEMBER", "s", "x"]).await,
        "ERR value is not an integer or out of range"
    );
    assert_eq!(
        query_err(&mut con, &["SRANDMEMBER", "s", "-9223372036854775808"]).await,
        "ERR value is out of range, value must between -9223372036854775807 and 9223372036854775807"
    );

    // SPOP removes what it returns.
    let mut left = all.clone();
    let p: String = query(&mut con, &["SPOP", "s"]).await;
    assert!(left.remove(&p));
    let two = members(&mut con, &["SPOP", "s", "2"]).await;
    assert_eq!(two.len(), 2);
    for m in &two {
        assert!(left.remove(m));
    }
    assert_eq!(members(&mut con, &["SMEMBERS", "s"]).await, left);
    assert!(query::<Vec<String>>(&mut con, &["SPOP", "s", "0"])
        .await
        .is_empty());
    // A count at least the size pops everything and deletes the key.
    assert_eq!(members(&mut con, &["SPOP", "s", "10"]).await, left);
    assert_eq!(query::<i64>(&mut con, &["EXISTS", "s"]).await, 0);
    assert_eq!(
        query::<Option<String>>(&mut con, &["SPOP", "s"]).await,
        None
    );
    assert!(query::<Vec<String>>(&mut con, &["SPOP", "s", "3"])
        .await
        .is_empty());
    for bad in ["-1", "x"] {
        assert_eq!(
            query_err(&mut con, &["SPOP", "s", bad]).await,
            "ERR value is out of range, must be positive"
        );
    }
    // The last SPOP deletes the key.
    let _: () = query(&mut con, &["SADD", "one", "x"]).await;
    assert_eq!(query::<String>(&mut con, &["SPOP", "one"]).await, "x");
    assert_eq!(query::<i64>(&mut con, &["EXISTS", "one"]).await, 0);
}

#[tokio::test]
async fn spop_and_srandmember_on_big_sets() {
    let server = ServerProcess::target(&[]);
    let mut con = server.conn().await;
    let all: Vec<String> = (0..1000).map(|i| format!("m{i}")).collect();
    let mut c = redis::cmd("SADD");
    c.arg("big").arg(&all);
    let _: () = query_cmd(&mut con, &c).await;
    let all: BTreeSet<String> = all.into_iter().collect();
    for n in ["10", "400", "999"] {
        let got = members(&mut con, &["SRANDMEMBER", "big", n]).await;
        assert_eq!(got.len(), n.parse::<usize>().unwrap());
        assert!(got.is_subset(&all));
    }
    let mut popped = BTreeSet::new();
    for n in [10usize, 500, 480] {
        let got = members(&mut con, &["SPOP", "big", &n.to_string()]).await;
        assert_eq!(got.len(), n);
        assert!(got.is_disjoint(&popped));
        popped.extend(got);
    }
    let rest = members(&mut con, &["SMEMBERS", "big"]).await;
    assert_eq!(rest.len(), 10);
    assert!(rest.is_disjoint(&popped));
    assert_eq!(rest.len() + popped.len(), all.len());
}

#[tokio::test]
async fn smove() {
    let server = ServerProcess::target(&[]);
    let mut con = server.conn().await;
    let _: () = query(&mut con, &["SADD", "src", "a", "b"]).await;
    let _: () = query(&mut con, &["SADD", "dst", "b", "c"]).await;
    assert_eq!(
        query::<i64>(&mut con, &["SMOVE", "src", "dst", "a"]).await,
        1
    );
    assert_eq!(
        query::<i64>(&mut con, &["SMOVE", "src", "dst", "z"]).await,
        0
    );
    assert_eq!(
        members(&mut con, &["SMEMBERS", "dst"]).await,
        set_of(&["a", "b", "c"])
    );
    // Already in the destination: still moved out of the source; the source empties.
    assert_eq!(
        query::<i64>(&mut con, &["SMOVE", "src", "dst", "b"]).await,
        1
    );
    assert_eq!(query::<i64>(&mut con, &["EXISTS", "src"]).await, 0);
    assert_eq!(query::<i64>(&mut con, &["SCARD", "dst"]).await, 3);
    // To a new key; to itself.
    assert_eq!(
        query::<i64>(&mut con, &["SMOVE", "dst", "new", "7"]).await,
        0
    );
    assert_eq!(
        query::<i64>(&mut con, &["SMOVE", "dst", "new", "c"]).await,
        1
    );
    assert_eq!(
        members(&mut con, &["SMEMBERS", "new"]).await,
        set_of(&["c"])
    );
    assert_eq!(
        query::<i64>(&mut con, &["SMOVE", "dst", "dst", "a"]).await,
        1
    );
    assert_eq!(
        query::<i64>(&mut con, &["SMOVE", "dst", "dst", "zz"]).await,
        0
    );
    assert_eq!(query::<i64>(&mut con, &["SCARD", "dst"]).await, 2);
    // An integer moved into a new key makes an intset.
    let _: () = query(&mut con, &["SADD", "ints", "5", "x"]).await;
    assert_eq!(
        query::<i64>(&mut con, &["SMOVE", "ints", "i2", "5"]).await,
        1
    );
    assert_eq!(encoding(&mut con, "i2").await, "intset");
}

#[tokio::test]
async fn encodings() {
    let server = ServerProcess::target(&[]);
    let mut con = server.conn().await;
    let small = small_encoding(&server);

    let _: () = query(&mut con, &["SADD", "s", "1", "2", "-3"]).await;
    assert_eq!(encoding(&mut con, "s").await, "intset");
    // Intsets list their members in order.
    assert_eq!(
        query::<Vec<String>>(&mut con, &["SMEMBERS", "s"]).await,
        vec!["-3", "1", "2"]
    );
    // Non-canonical integers are strings.
    let _: () = query(&mut con, &["SADD", "s", "007"]).await;
    assert_eq!(encoding(&mut con, "s").await, small);
    let _: () = query(&mut con, &["SADD", "s", &"x".repeat(65)]).await;
    assert_eq!(encoding(&mut con, "s").await, "hashtable");
    // One-way: shrinking keeps the hashtable.
    let _: () = query(&mut con, &["SREM", "s", "007", &"x".repeat(65)]).await;
    assert_eq!(encoding(&mut con, "s").await, "hashtable");

    // intset -> hashtable past set-max-intset-entries.
    let ints: Vec<String> = (0..512).map(|i| i.to_string()).collect();
    let mut c = redis::cmd("SADD");
    c.arg("i").arg(&ints);
    let _: () = query_cmd(&mut con, &c).await;
    assert_eq!(encoding(&mut con, "i").await, "intset");
    let _: () = query(&mut con, &["SADD", "i", "512"]).await;
    assert_eq!(encoding(&mut con, "i").await, "hashtable");

    // listpack -> hashtable past set-max-listpack-entries.
    let strs: Vec<String> = (0..128).map(|i| format!("m{i}")).collect();
    let mut c = redis::cmd("SADD");
    c.arg("l").arg(&strs);
    let _: () = query_cmd(&mut con, &c).await;
    assert_eq!(encoding(&mut con, "l").await, small);
    let _: () = query(&mut con, &["SADD", "l", "m128"]).await;
    assert_eq!(encoding(&mut con, "l").await, "hashtable");

    // The thresholds are configuration.
    let _: () = query(&mut con, &["CONFIG", "SET", "set-max-intset-entries", "4"]).await;
    let _: () = query(&mut con, &["SADD", "c", "1", "2", "3", "4"]).await;
    assert_eq!(encoding(&mut con, "c").await, "intset");
    let _: () = query(&mut con, &["SADD", "c", "5"]).await;
    assert_eq!(encoding(&mut con, "c").await, "hashtable");
    let _: () = query(
        &mut con,
        &["CONFIG", "SET", "set-max-intset-entries", "512"],
    )
    .await;

    // STORE results: all-integer results are intsets.
    let _: () = query(&mut con, &["SADD", "x", "1", "2", "3", "a"]).await;
    let _: () = query(&mut con, &["SADD", "y", "2", "3", "a"]).await;
    assert_eq!(
        query::<i64>(&mut con, &["SDIFFSTORE", "d1", "x", "y"]).await,
        1
    );
    assert_eq!(encoding(&mut con, "d1").await, "intset");
    assert_eq!(
        query::<i64>(&mut con, &["SINTERSTORE", "d2", "x", "y"]).await,
        3
    );
    assert_eq!(encoding(&mut con, "d2").await, small);
    assert_eq!(
        query::<i64>(&mut con, &["SUNIONSTORE", "d3", "i", "x"]).await,
        514
    );
    assert_eq!(encoding(&mut con, "d3").await, "hashtable");
    let _: () = query(&mut con, &["SREM", "x", "a"]).await;
    let _: () = query(&mut con, &["SREM", "y", "a"]).await;
    assert_eq!(
        query::<i64>(&mut con, &["SINTERSTORE", "d4", "x", "y"]).await,
        2
    );
    assert_eq!(encoding(&mut con, "d4").await, "intset");
    assert_eq!(
        query::<i64>(&mut con, &["SUNIONSTORE", "d5", "x", "y"]).await,
        3
    );
    assert_eq!(encoding(&mut con, "d5").await, "intset");
}

/// Valkey-only encoding rules (Redis 7.0 has no set listpack).
#[tokio::test]
async fn valkey_listpack_rules() {
    let server = ServerProcess::target(&[]);
    if server.kind() == ServerKind::Redis {
        return;
    }
    let mut con = server.conn().await;
    // A new key with many members starts in the encoding that will hold them.
    let strs: Vec<String> = (0..129).map(|i| format!("m{i}")).collect();
    let mut c = redis::cmd("SADD");
    c.arg("l").arg(&strs);
    let _: () = query_cmd(&mut con, &c).await;
    assert_eq!(encoding(&mut con, "l").await, "hashtable");
    // A listpack keeps insertion order.
    let _: () = query(&mut con, &["SADD", "o", "c", "a", "b"]).await;
    assert_eq!(
        query::<Vec<String>>(&mut con, &["SMEMBERS", "o"]).await,
        vec!["c", "a", "b"]
    );
    // An intset of 128 members gets a string: too many for a listpack.
    let ints: Vec<String> = (0..128).map(|i| i.to_string()).collect();
    let mut c = redis::cmd("SADD");
    c.arg("i").arg(&ints);
    let _: () = query_cmd(&mut con, &c).await;
    let _: () = query(&mut con, &["SADD", "i", "x"]).await;
    assert_eq!(encoding(&mut con, "i").await, "hashtable");
    // SPOP leaving few members rebuilds a small set.
    let _: () = query(&mut con, &["SPOP", "l", "120"]).await;
    assert_eq!(encoding(&mut con, "l").await, "listpack");
    assert_eq!(query::<i64>(&mut con, &["SCARD", "l"]).await, 9);
}

#[tokio::test]
async fn sscan() {
    let server = ServerProcess::target(&[]);
    let mut con = server.conn().await;

    // Missing key: an empty scan, whatever the options.
    let (cursor, got): (String, Vec<String>) = query(&mut con, &["SSCAN", "nope", "0"]).await;
    assert_eq!((cursor.as_str(), got.len()), ("0", 0));
    let _: () = query(&mut con, &["SADD", "i", "1", "2", "3", "10", "20"]).await;
    // Small sets come whole in one call.
    let (cursor, got): (String, Vec<String>) =
        query(&mut con, &["SSCAN", "i", "0", "COUNT", "1"]).await;
    assert_eq!(cursor, "0");
    assert_eq!(got.len(), 5);
    let (_, got): (String, Vec<String>) =
        query(&mut con, &["SSCAN", "i", "0", "MATCH", "1*"]).await;
    assert_eq!(
        got.into_iter().collect::<BTreeSet<_>>(),
        set_of(&["1", "10"])
    );
    for (args, err) in [
        (&["SSCAN", "i", "x"][..], "ERR invalid cursor"),
        (&["SSCAN", "i", "0", "COUNT", "0"], "ERR syntax error"),
        (&["SSCAN", "i", "0", "COUNT"], "ERR syntax error"),
        (&["SSCAN", "i", "0", "TYPE", "set"], "ERR syntax error"),
        (
            &["SSCAN", "i", "0", "COUNT", "x"],
            "ERR value is not an integer or out of range",
        ),
    ] {
        assert_eq!(query_err(&mut con, args).await, err, "{args:?}");
    }

    // A big set: bounded work per call, and every member present throughout is returned
    // even while members come and go.
    let all: Vec<String> = (0..5000).map(|i| format!("e{i}")).collect();
    let mut c = redis::cmd("SADD");
    c.arg("big").arg(&all);
    let _: () = query_cmd(&mut con, &c).await;
    let mut seen = HashSet::new();
    let mut cursor = "0".to_string();
    let mut calls = 0;
    loop {
        let (next, got): (String, Vec<String>) =
            query(&mut con, &["SSCAN", "big", &cursor, "COUNT", "20"]).await;
        assert!(got.len() < 200, "one call returned {}", got.len());
        seen.extend(got);
        calls += 1;
        let _: () = query(&mut con, &["SREM", "big", &format!("e{}", calls * 7)]).await;
        let _: () = query(&mut con, &["SADD", "big", &format!("new{calls}")]).await;
        if next == "0" {
            break;
        }
        cursor = next;
    }
    assert!(calls > 20, "only {calls} calls");
    for i in 0..5000 {
        if i % 7 != 0 || i > calls * 7 {
            assert!(seen.contains(&format!("e{i}")), "e{i} never returned");
        }
    }
    // MATCH on a big set filters what is visited.
    let mut matched = BTreeSet::new();
    let mut cursor = "0".to_string();
    loop {
        let (next, got): (String, Vec<String>) = query(
            &mut con,
            &["SSCAN", "big", &cursor, "MATCH", "e49*", "COUNT", "100"],
        )
        .await;
        matched.extend(got);
        if next == "0" {
            break;
        }
        cursor = next;
    }
    assert!(matched.iter().all(|m| m.starts_with("e49")));
    assert!(matched.contains("e4999") && matched.contains("e491"));
}

#[tokio::test]
async fn resp3_and_raw_replies() {
    let server = ServerProcess::target(&[]);
    let mut raw = server.raw();
    assert_reply!(raw.cmd(&[b"SADD", b"s", b"a"]), b":1\r\n");
    assert_reply!(raw.cmd(&[b"SADD", b"t", b"a", b"b"]), b":2\r\n");
    assert_reply!(raw.cmd(&[b"SMEMBERS", b"s"]), b"*1\r\n$1\r\na\r\n");
    assert_reply!(raw.cmd(&[b"SPOP", b"nope"]), b"$-1\r\n");
    assert_reply!(raw.cmd(&[b"SPOP", b"nope", b"1"]), b"*0\r\n");
    assert_reply!(
        raw.cmd(&[b"SSCAN", b"nope", b"0"]),
        b"*2\r\n$1\r\n0\r\n*0\r\n"
    );

    let hello = raw.cmd(&[b"HELLO", b"3"]);
    assert!(hello.starts_with(b"%"), "HELLO 3: {hello:?}");
    assert_reply!(raw.cmd(&[b"SMEMBERS", b"s"]), b"~1\r\n$1\r\na\r\n");
    assert_reply!(raw.cmd(&[b"SMEMBERS", b"nope"]), b"~0\r\n");
    assert_reply!(raw.cmd(&[b"SINTER", b"s", b"t"]), b"~1\r\n$1\r\na\r\n");
    assert_reply!(raw.cmd(&[b"SINTER", b"s", b"nope"]), b"~0\r\n");
    assert_reply!(raw.cmd(&[b"SUNION", b"s", b"s"]), b"~1\r\n$1\r\na\r\n");
    assert_reply!(raw.cmd(&[b"SDIFF", b"t", b"s"]), b"~1\r\n$1\r\nb\r\n");
    assert_reply!(raw.cmd(&[b"SDIFF", b"nope", b"s"]), b"~0\r\n");
    assert_reply!(raw.cmd(&[b"SRANDMEMBER", b"s", b"2"]), b"*1\r\n$1\r\na\r\n");
    assert_reply!(
        raw.cmd(&[b"SRANDMEMBER", b"s", b"-2"]),
        b"*2\r\n$1\r\na\r\n$1\r\na\r\n"
    );
    assert_reply!(raw.cmd(&[b"SRANDMEMBER", b"nope", b"2"]), b"*0\r\n");
    assert_reply!(raw.cmd(&[b"SRANDMEMBER", b"nope"]), b"_\r\n");
    assert_reply!(raw.cmd(&[b"SRANDMEMBER", b"s"]), b"$1\r\na\r\n");
    assert_reply!(raw.cmd(&[b"SISMEMBER", b"s", b"a"]), b":1\r\n");
    assert_reply!(
        raw.cmd(&[b"SMISMEMBER", b"s", b"a", b"b"]),
        b"*2\r\n:1\r\n:0\r\n"
    );
    assert_reply!(
        raw.cmd(&[b"SSCAN", b"s", b"0"]),
        b"*2\r\n$1\r\n0\r\n*1\r\n$1\r\na\r\n"
    );
    assert_reply!(raw.cmd(&[b"SINTERCARD", b"2", b"s", b"t"]), b":1\r\n");
    assert_reply!(raw.cmd(&[b"SPOP", b"nope", b"1"]), b"~0\r\n");
    assert_reply!(raw.cmd(&[b"SPOP", b"t", b"0"]), b"~0\r\n");
    assert_reply!(raw.cmd(&[b"SPOP", b"nope"]), b"_\r\n");
    assert_reply!(raw.cmd(&[b"SPOP", b"s", b"5"]), b"~1\r\n$1\r\na\r\n");
    assert_reply!(raw.cmd(&[b"SADD", b"s", b"a", b"b", b"c"]), b":3\r\n");
    let popped = raw.cmd(&[b"SPOP", b"s", b"2"]);
    assert!(popped.starts_with(b"~2\r\n"), "{popped:?}");
    assert_reply!(raw.cmd(&[b"SPOP", b"t", b"1"]).get(..4).unwrap(), b"~1\r\n");
}

#[tokio::test]
async fn key_commands_on_sets() {
    let server = ServerProcess::target(&[]);
    let mut con = server.conn().await;
    let _: () = query(&mut con, &["SADD", "ints", "3", "1", "2"]).await;
    let _: () = query(&mut con, &["SADD", "strs", "a", "b", "1"]).await;
    let big: Vec<String> = (0..300).map(|i| format!("big{i}")).collect();
    let mut c = redis::cmd("SADD");
    c.arg("big").arg(&big);
    let _: () = query_cmd(&mut con, &c).await;

    assert_eq!(query::<String>(&mut con, &["TYPE", "ints"]).await, "set");
    let (_, keys): (String, Vec<String>) =
        query(&mut con, &["SCAN", "0", "TYPE", "set", "COUNT", "1000"]).await;
    assert_eq!(
        keys.into_iter().collect::<BTreeSet<_>>(),
        set_of(&["big", "ints", "strs"])
    );

    // DUMP/RESTORE round trips, keeping the encoding the size calls for.
    for key in ["ints", "strs", "big"] {
        let payload: Vec<u8> = query(&mut con, &["DUMP", key]).await;
        let restored = format!("{key}:r");
        let _: () = query_cmd(
            &mut con,
            redis::cmd("RESTORE").arg(&restored).arg(0).arg(&payload),
        )
        .await;
        assert_eq!(
            members(&mut con, &["SMEMBERS", &restored]).await,
            members(&mut con, &["SMEMBERS", key]).await
        );
    }
    assert_eq!(encoding(&mut con, "ints:r").await, "intset");
    assert_eq!(encoding(&mut con, "big:r").await, "hashtable");

    // COPY is deep; RENAME moves; expiry removes.
    assert_eq!(query::<i64>(&mut con, &["COPY", "strs", "copy"]).await, 1);
    let _: () = query(&mut con, &["SADD", "copy", "new"]).await;
    assert_eq!(query::<i64>(&mut con, &["SCARD", "strs"]).await, 3);
    assert_eq!(query::<i64>(&mut con, &["SCARD", "copy"]).await, 4);
    let _: () = query(&mut con, &["RENAME", "copy", "renamed"]).await;
    assert_eq!(
        query::<i64>(&mut con, &["SISMEMBER", "renamed", "new"]).await,
        1
    );
    assert_eq!(query::<i64>(&mut con, &["EXISTS", "copy"]).await, 0);
    let _: () = query(&mut con, &["PEXPIRE", "renamed", "300"]).await;
    // Writing to a set keeps its TTL.
    let _: () = query(&mut con, &["SADD", "renamed", "more"]).await;
    assert!(query::<i64>(&mut con, &["PTTL", "renamed"]).await > 0);
    tokio::time::sleep(std::time::Duration::from_millis(450)).await;
    assert_eq!(query::<i64>(&mut con, &["SCARD", "renamed"]).await, 0);
    assert_eq!(query::<i64>(&mut con, &["EXISTS", "renamed"]).await, 0);
}

#[tokio::test]
async fn watch_sees_only_real_changes() {
    let server = ServerProcess::target(&[]);
    let mut a = server.raw();
    let mut b = server.raw();
    assert_reply!(b.cmd(&[b"SADD", b"s", b"x", b"y"]), b":2\r\n");
    // Commands that change nothing leave a WATCH intact, as in Valkey.
    for noop in [
        &[&b"SADD"[..], b"s", b"x"][..],
        &[b"SREM", b"s", b"nope"],
        &[b"SPOP", b"s", b"0"],
        &[b"SMOVE", b"s", b"t", b"nope"],
        &[b"SMOVE", b"s", b"s", b"x"],
        &[b"SISMEMBER", b"s", b"x"],
        &[b"SRANDMEMBER", b"s", b"-3"],
    ] {
        assert_reply!(a.cmd(&[b"WATCH", b"s"]), b"+OK\r\n");
        b.cmd(noop);
        assert_reply!(a.cmd(&[b"MULTI"]), b"+OK\r\n");
        assert_reply!(a.cmd(&[b"SCARD", b"s"]), b"+QUEUED\r\n");
        assert_reply!(a.cmd(&[b"EXEC"]), b"*1\r\n:2\r\n", "after {noop:?}");
    }
    for change in [
        &[&b"SADD"[..], b"s", b"z"][..],
        &[b"SREM", b"s", b"z"],
        &[b"SMOVE", b"t", b"s", b"w"],
        &[b"SINTERSTORE", b"s", b"s"],
    ] {
        b.cmd(&[b"SADD", b"t", b"w"]);
        assert_reply!(a.cmd(&[b"WATCH", b"s"]), b"+OK\r\n");
        b.cmd(change);
        assert_reply!(a.cmd(&[b"MULTI"]), b"+OK\r\n");
        assert_reply!(a.cmd(&[b"SCARD", b"s"]), b"+QUEUED\r\n");
        assert_reply!(a.cmd(&[b"EXEC"]), b"*-1\r\n", "after {change:?}");
    }
}
