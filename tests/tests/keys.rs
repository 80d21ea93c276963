//! Keyspace commands: existence, expiry, renames, iteration, DUMP/RESTORE, and the server
//! reclaiming expired keys on its own. Each test starts its own server.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lagwise_tests::{
    eventually, info_field, query, query_cmd, query_cmd_err, query_err, ServerProcess,
};
use redis::aio::MultiplexedConnection;

fn unix_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn unix_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// DUMP of the string "hello" by redis-server 7.0 (RDB version 10): a Valkey-compatible node
/// must accept payloads of older RDB versions.
const REDIS7_DUMP_HELLO: &[u8] = b"\x00\x05hello\x0a\x00cr\xdfve4 \x0a";
/// DUMP of the integer-encoded string "12345" by redis-server 7.0.
const REDIS7_DUMP_12345: &[u8] = b"\x00\xc1\x39\x30\x0a\x00\x9d\x94\xea\x27\x93\xfc\x08\xb9";

async fn sorted_keys(con: &mut MultiplexedConnection, pattern: &str) -> Vec<String> {
    let mut keys: Vec<String> = query(con, &["KEYS", pattern]).await;
    keys.sort();
    keys
}

#[tokio::test]
async fn del_unlink_exists() {
    let server = ServerProcess::target(&[]);
    let mut con = server.conn().await;

    let _: () = query(&mut con, &["MSET", "a", "1", "b", "2", "c", "3"]).await;
    // EXISTS counts every argument, duplicates included.
    assert_eq!(
        query::<i64>(&mut con, &["EXISTS", "a", "a", "b", "missing"]).await,
        3
    );
    assert_eq!(
        query::<i64>(&mut con, &["DEL", "a", "missing", "a"]).await,
        1
    );
    assert_eq!(query::<i64>(&mut con, &["EXISTS", "a"]).await, 0);
    assert_eq!(
        query::<i64>(&mut con, &["UNLINK", "b", "c", "missing"]).await,
        2
    );
    assert_eq!(query::<i64>(&mut con, &["EXISTS", "b", "c"]).await, 0);
    assert_eq!(query::<i64>(&mut con, &["DEL", "missing"]).await, 0);
    assert_eq!(
        query_err(&mut con, &["DEL"]).await,
        "ERR wrong number of arguments for 'del' command"
    );
    assert_eq!(
        query_err(&mut con, &["EXISTS"]).await,
        "ERR wrong number of arguments for 'exists' command"
    );
}

#[tokio::test]
async fn type_and_object_encoding() {
    let server = ServerProcess::target(&[]);
    let mut con = server.conn().await;

    let _: () = query(&mut con, &["SET", "s", "hello"]).await;
    assert_eq!(query::<String>(&mut con, &["TYPE", "s"]).await, "string");
    assert_eq!(
        query::<String>(&mut con, &["TYPE", "missing"]).await,
        "none"
    );

    let cases: &[(&str, &str)] = &[
        ("12345", "int"),
        ("-12", "int"),
        ("9223372036854775807", "int"),
        ("12345678901234567890", "embstr"), // out of i64 range
        ("012", "embstr"),                  // not canonical
        ("hello", "embstr"),
        ("", "embstr"),
        (&"x".repeat(44), "embstr"),
        (&"x".repeat(45), "raw"),
        (&"y".repeat(100), "raw"),
    ];
    for (value, encoding) in cases {
        let _: () = query(&mut con, &["SET", "k", value]).await;
        assert_eq!(
            &query::<String>(&mut con, &["OBJECT", "ENCODING", "k"]).await,
            encoding,
            "encoding of {value:?}"
        );
    }
    // APPEND turns a value into a raw string.
    let _: () = query(&mut con, &["SET", "k", "ab"]).await;
    let _: i64 = query(&mut con, &["APPEND", "k", "c"]).await;
    assert_eq!(
        query::<String>(&mut con, &["OBJECT", "ENCODING", "k"]).await,
        "raw"
    );
    assert_eq!(
        query::<Option<String>>(&mut con, &["OBJECT", "ENCODING", "missing"]).await,
        None
    );
}

#[tokio::test]
async fn ttl_and_persist() {
    let server = ServerProcess::target(&[]);
    let mut con = server.conn().await;

    assert_eq!(query::<i64>(&mut con, &["TTL", "missing"]).await, -2);
    assert_eq!(query::<i64>(&mut con, &["PTTL", "missing"]).await, -2);
    assert_eq!(query::<i64>(&mut con, &["EXPIRETIME", "missing"]).await, -2);
    assert_eq!(
        query::<i64>(&mut con, &["PEXPIRETIME", "missing"]).await,
        -2
    );
    let _: () = query(&mut con, &["SET", "k", "v"]).await;
    assert_eq!(query::<i64>(&mut con, &["TTL", "k"]).await, -1);
    assert_eq!(query::<i64>(&mut con, &["PTTL", "k"]).await, -1);
    assert_eq!(query::<i64>(&mut con, &["EXPIRETIME", "k"]).await, -1);
    assert_eq!(query::<i64>(&mut con, &["PEXPIRETIME", "k"]).await, -1);
    assert_eq!(query::<i64>(&mut con, &["PERSIST", "k"]).await, 0);
    assert_eq!(query::<i64>(&mut con, &["PERSIST", "missing"]).await, 0);

    assert_eq!(query::<i64>(&mut con, &["EXPIRE", "k", "100"]).await, 1);
    let ttl: i64 = query(&mut con, &["TTL", "k"]).await;
    assert!((98..=100).contains(&ttl), "TTL {ttl}");
    let pttl: i64 = query(&mut con, &["PTTL", "k"]).await;
    assert!((98_000..=100_000).contains(&pttl), "PTTL {pttl}");
    let expiretime: i64 = query(&mut con, &["EXPIRETIME", "k"]).await;
    assert!(
        (expiretime - (unix_secs() + 100)).abs() <= 2,
        "EXPIRETIME {expiretime}"
    );
    let pexpiretime: i64 = query(&mut con, &["PEXPIRETIME", "k"]).await;
    assert!(
        (pexpiretime - (unix_millis() + 100_000)).abs() <= 2_000,
        "PEXPIRETIME {pexpiretime}"
    );
    assert_eq!(query::<i64>(&mut con, &["PERSIST", "k"]).await, 1);
    assert_eq!(query::<i64>(&mut con, &["TTL", "k"]).await, -1);
}

#[tokio::test]
async fn expire_family() {
    let server = ServerProcess::target(&[]);
    let mut con = server.conn().await;

    assert_eq!(
        query::<i64>(&mut con, &["EXPIRE", "missing", "10"]).await,
        0
    );
    assert_eq!(
        query::<i64>(&mut con, &["PEXPIRE", "missing", "10"]).await,
        0
    );

    let _: () = query(&mut con, &["SET", "k", "v"]).await;
    assert_eq!(query::<i64>(&mut con, &["PEXPIRE", "k", "100000"]).await, 1);
    let pttl: i64 = query(&mut con, &["PTTL", "k"]).await;
    assert!((98_000..=100_000).contains(&pttl), "PTTL {pttl}");

    let at = unix_secs() + 200;
    assert_eq!(
        query::<i64>(&mut con, &["EXPIREAT", "k", &at.to_string()]).await,
        1
    );
    assert_eq!(query::<i64>(&mut con, &["EXPIRETIME", "k"]).await, at);

    let at_ms = unix_millis() + 300_000;
    assert_eq!(
        query::<i64>(&mut con, &["PEXPIREAT", "k", &at_ms.to_string()]).await,
        1
    );
    assert_eq!(query::<i64>(&mut con, &["PEXPIRETIME", "k"]).await, at_ms);

    // A TTL of zero or less, or a time in the past, deletes the key.
    let _: () = query(&mut con, &["SET", "d1", "v"]).await;
    assert_eq!(query::<i64>(&mut con, &["EXPIRE", "d1", "0"]).await, 1);
    assert_eq!(query::<i64>(&mut con, &["EXISTS", "d1"]).await, 0);
    let _: () = query(&mut con, &["SET", "d2", "v"]).await;
    assert_eq!(query::<i64>(&mut con, &["PEXPIRE", "d2", "-1"]).await, 1);
    assert_eq!(query::<i64>(&mut con, &["EXISTS", "d2"]).await, 0);
    let _: () = query(&mut con, &["SET", "d3", "v"]).await;
    assert_eq!(query::<i64>(&mut con, &["EXPIREAT", "d3", "1"]).await, 1);
    assert_eq!(query::<i64>(&mut con, &["EXISTS", "d3"]).await, 0);
    let _: () = query(&mut con, &["SET", "d4", "v"]).await;
    assert_eq!(query::<i64>(&mut con, &["PEXPIREAT", "d4", "1"]).await, 1);
    assert_eq!(query::<i64>(&mut con, &["EXISTS", "d4"]).await, 0);

    assert_eq!(
        query_err(&mut con, &["EXPIRE", "k", "abc"]).await,
        "ERR value is not an integer or out of range"
    );
    assert_eq!(
        query_err(&mut con, &["EXPIRE", "k", "1.5"]).await,
        "ERR value is not an integer or out of range"
    );
    assert_eq!(
        query_err(&mut con, &["EXPIRE", "k", "9223372036854775807"]).await,
        "ERR invalid expire time in 'expire' command"
    );
    assert_eq!(
        query_err(&mut con, &["PEXPIRE", "k", "9223372036854775807"]).await,
        "ERR invalid expire time in 'pexpire' command"
    );
    assert_eq!(
        query_err(&mut con, &["EXPIREAT", "k", "9223372036854775807"]).await,
        "ERR invalid expire time in 'expireat' command"
    );
    assert_eq!(
        query_err(&mut con, &["EXPIRE", "k", "100", "FOO"]).await,
        "ERR Unsupported option FOO"
    );
    assert_eq!(
        query_err(&mut con, &["EXPIRE", "k"]).await,
        "ERR wrong number of arguments for 'expire' command"
    );
    // The failed calls left the key alone.
    assert_eq!(query::<i64>(&mut con, &["PEXPIRETIME", "k"]).await, at_ms);
}

#[tokio::test]
async fn expire_conditions() {
    let server = ServerProcess::target(&[]);
    let mut con = server.conn().await;

    let _: () = query(&mut con, &["SET", "k", "v"]).await;
    // No TTL yet: XX and GT fail (no TTL counts as infinite), LT succeeds.
    assert_eq!(
        query::<i64>(&mut con, &["EXPIRE", "k", "100", "XX"]).await,
        0
    );
    assert_eq!(
        query::<i64>(&mut con, &["EXPIRE", "k", "100", "GT"]).await,
        0
    );
    assert_eq!(query::<i64>(&mut con, &["TTL", "k"]).await, -1);
    assert_eq!(
        query::<i64>(&mut con, &["EXPIRE", "k", "100", "NX"]).await,
        1
    );
    // Now it has one: NX fails, XX succeeds.
    assert_eq!(
        query::<i64>(&mut con, &["EXPIRE", "k", "200", "NX"]).await,
        0
    );
    assert_eq!(
        query::<i64>(&mut con, &["EXPIRE", "k", "200", "XX"]).await,
        1
    );
    assert!(query::<i64>(&mut con, &["TTL", "k"]).await > 150);
    // GT only lengthens, LT only shortens.
    assert_eq!(
        query::<i64>(&mut con, &["EXPIRE", "k", "100", "GT"]).await,
        0
    );
    assert_eq!(
        query::<i64>(&mut con, &["EXPIRE", "k", "300", "GT"]).await,
        1
    );
    assert_eq!(
        query::<i64>(&mut con, &["EXPIRE", "k", "400", "LT"]).await,
        0
    );
    assert_eq!(
        query::<i64>(&mut con, &["EXPIRE", "k", "50", "LT"]).await,
        1
    );
    let ttl: i64 = query(&mut con, &["TTL", "k"]).await;
    assert!((48..=50).contains(&ttl), "TTL {ttl}");
    // XX combines with GT or LT.
    assert_eq!(
        query::<i64>(&mut con, &["PEXPIRE", "k", "60000", "XX", "GT"]).await,
        1
    );
    // LT on a key without TTL sets one.
    let _: () = query(&mut con, &["SET", "p", "v"]).await;
    assert_eq!(
        query::<i64>(&mut con, &["PEXPIRE", "p", "100000", "LT"]).await,
        1
    );
    assert!(query::<i64>(&mut con, &["PTTL", "p"]).await > 0);
    // The conditions apply to the absolute forms too; options are case-insensitive.
    let far = (unix_secs() + 1_000).to_string();
    assert_eq!(
        query::<i64>(&mut con, &["EXPIREAT", "p", &far, "gt"]).await,
        1
    );
    assert_eq!(
        query::<i64>(&mut con, &["EXPIREAT", "p", &far, "nx"]).await,
        0
    );
    let near_ms = (unix_millis() + 10_000).to_string();
    assert_eq!(
        query::<i64>(&mut con, &["PEXPIREAT", "p", &near_ms, "LT"]).await,
        1
    );
    assert_eq!(
        query::<i64>(&mut con, &["PEXPIRETIME", "p"])
            .await
            .to_string(),
        near_ms
    );

    let incompatible = "ERR NX and XX, GT or LT options at the same time are not compatible";
    assert_eq!(
        query_err(&mut con, &["EXPIRE", "k", "10", "NX", "XX"]).await,
        incompatible
    );
    assert_eq!(
        query_err(&mut con, &["EXPIRE", "k", "10", "NX", "GT"]).await,
        incompatible
    );
    assert_eq!(
        query_err(&mut con, &["PEXPIRE", "k", "10", "NX", "LT"]).await,
        incompatible
    );
    assert_eq!(
        query_err(&mut con, &["EXPIREAT", "k", "10", "XX", "NX"]).await,
        incompatible
    );
    assert_eq!(
        query_err(&mut con, &["EXPIRE", "k", "10", "GT", "LT"]).await,
        "ERR GT and LT options at the same time are not compatible"
    );
    assert!(query::<i64>(&mut con, &["TTL", "k"]).await > 0);
}

#[tokio::test]
async fn key_with_px_100_disappears() {
    let server = ServerProcess::target(&[]);
    let mut con = server.conn().await;

    let _: () = query(&mut con, &["SET", "k", "v", "PX", "100"]).await;
    let _: () = query(&mut con, &["SET", "keep", "v"]).await;
    let gone = eventually(Duration::from_secs(2), || {
        let mut con = con.clone();
        async move {
            query::<Option<String>>(&mut con, &["GET", "k"])
                .await
                .is_none()
        }
    })
    .await;
    assert!(gone, "a key SET with PX 100 is still readable after 2 s");
    assert_eq!(query::<i64>(&mut con, &["EXISTS", "k"]).await, 0);
    assert_eq!(query::<i64>(&mut con, &["TTL", "k"]).await, -2);
    assert_eq!(query::<String>(&mut con, &["GET", "keep"]).await, "v");

    // Expired keys are not visible to any command, e.g. KEYS or a SET NX.
    let _: () = query(&mut con, &["SET", "k2", "v", "PX", "50"]).await;
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(sorted_keys(&mut con, "*").await, vec!["keep"]);
    assert_eq!(
        query::<Option<String>>(&mut con, &["SET", "k2", "new", "NX"]).await,
        Some("OK".into())
    );
    assert_eq!(query::<i64>(&mut con, &["TTL", "k2"]).await, -1);
}

#[tokio::test]
async fn expired_keys_are_reclaimed_without_reads() {
    let server = ServerProcess::target(&[]);
    let mut con = server.conn().await;

    let mut pipe = redis::pipe();
    for i in 0..1000 {
        pipe.cmd("SET")
            .arg(format!("volatile:{i}"))
            .arg("v")
            .arg("PX")
            .arg(50);
    }
    let replies: Vec<String> = pipe.query_async(&mut con).await.unwrap();
    assert!(
        replies.iter().all(|r| r == "OK"),
        "SET replies: {replies:?}"
    );
    let _: () = query(&mut con, &["SET", "stays", "v"]).await;
    // (No DBSIZE check here: on a loaded machine the 50 ms may be over already.)

    // Only DBSIZE and INFO from now on: neither reads a key, so only the server's own
    // expiry cycle can bring the count down.
    let reclaimed = eventually(Duration::from_secs(8), || {
        let mut con = con.clone();
        async move { query::<i64>(&mut con, &["DBSIZE"]).await == 1 }
    })
    .await;
    let dbsize: i64 = query(&mut con, &["DBSIZE"]).await;
    assert!(
        reclaimed,
        "expired keys not reclaimed: DBSIZE is {dbsize}, expected 1"
    );
    let info: String = query(&mut con, &["INFO", "keyspace"]).await;
    let db0 = info_field(&info, "db0").unwrap_or_default();
    assert!(
        db0.starts_with("keys=1,expires=0"),
        "INFO keyspace db0: {db0:?}"
    );
    let stats: String = query(&mut con, &["INFO", "stats"]).await;
    let expired = info_field(&stats, "expired_keys").unwrap_or_default();
    assert_eq!(expired, "1000", "INFO stats expired_keys");
}

#[tokio::test]
async fn rename_and_renamenx() {
    let server = ServerProcess::target(&[]);
    let mut con = server.conn().await;

    assert_eq!(
        query_err(&mut con, &["RENAME", "missing", "x"]).await,
        "ERR no such key"
    );
    assert_eq!(
        query_err(&mut con, &["RENAMENX", "missing", "x"]).await,
        "ERR no such key"
    );

    let _: () = query(&mut con, &["SET", "a", "1", "EX", "100"]).await;
    assert_eq!(query::<String>(&mut con, &["RENAME", "a", "b"]).await, "OK");
    assert_eq!(query::<i64>(&mut con, &["EXISTS", "a"]).await, 0);
    assert_eq!(query::<String>(&mut con, &["GET", "b"]).await, "1");
    assert!(
        query::<i64>(&mut con, &["TTL", "b"]).await > 0,
        "RENAME carries the TTL"
    );
    // Renaming onto an existing key replaces it (and its TTL).
    let _: () = query(&mut con, &["SET", "c", "3"]).await;
    assert_eq!(query::<String>(&mut con, &["RENAME", "c", "b"]).await, "OK");
    assert_eq!(query::<String>(&mut con, &["GET", "b"]).await, "3");
    assert_eq!(query::<i64>(&mut con, &["TTL", "b"]).await, -1);
    // Same name: OK and nothing changes.
    assert_eq!(query::<String>(&mut con, &["RENAME", "b", "b"]).await, "OK");
    assert_eq!(query::<String>(&mut con, &["GET", "b"]).await, "3");

    let _: () = query(&mut con, &["SET", "d", "4"]).await;
    assert_eq!(query::<i64>(&mut con, &["RENAMENX", "d", "b"]).await, 0);
    assert_eq!(query::<String>(&mut con, &["GET", "d"]).await, "4");
    assert_eq!(query::<i64>(&mut con, &["RENAMENX", "d", "e"]).await, 1);
    assert_eq!(query::<i64>(&mut con, &["EXISTS", "d"]).await, 0);
    assert_eq!(query::<String>(&mut con, &["GET", "e"]).await, "4");
    assert_eq!(query::<i64>(&mut con, &["RENAMENX", "e", "e"]).await, 0);
}

#[tokio::test]
async fn copy() {
    let server = ServerProcess::target(&[]);
    let mut con = server.conn().await;

    assert_eq!(query::<i64>(&mut con, &["COPY", "missing", "x"]).await, 0);
    assert_eq!(query::<i64>(&mut con, &["EXISTS", "x"]).await, 0);

    let _: () = query(&mut con, &["SET", "a", "1", "EX", "100"]).await;
    assert_eq!(query::<i64>(&mut con, &["COPY", "a", "b"]).await, 1);
    assert_eq!(query::<String>(&mut con, &["GET", "b"]).await, "1");
    assert!(
        query::<i64>(&mut con, &["TTL", "b"]).await > 0,
        "COPY carries the TTL"
    );
    // The copy is independent of the source.
    let _: i64 = query(&mut con, &["APPEND", "a", "x"]).await;
    assert_eq!(query::<String>(&mut con, &["GET", "b"]).await, "1");

    let _: () = query(&mut con, &["SET", "c", "3"]).await;
    assert_eq!(query::<i64>(&mut con, &["COPY", "c", "b"]).await, 0);
    assert_eq!(query::<String>(&mut con, &["GET", "b"]).await, "1");
    assert_eq!(
        query::<i64>(&mut con, &["COPY", "c", "b", "REPLACE"]).await,
        1
    );
    assert_eq!(query::<String>(&mut con, &["GET", "b"]).await, "3");
    assert_eq!(query::<i64>(&mut con, &["TTL", "b"]).await, -1);
    assert_eq!(
        query_err(&mut con, &["COPY", "c", "b", "FOO"]).await,
        "ERR syntax error"
    );
}

#[tokio::test]
async fn keys_glob_patterns() {
    let server = ServerProcess::target(&[]);
    let mut con = server.conn().await;

    assert!(sorted_keys(&mut con, "*").await.is_empty());
    let names = [
        "hello", "hallo", "hxllo", "hllo", "heeeello", "h*llo", "h?llo", "a", "b", "c", "d", "x",
        "[x",
    ];
    let mut mset = vec!["MSET"];
    for name in &names {
        mset.push(name);
        mset.push("1");
    }
    let _: () = query(&mut con, &mset).await;

    let mut all: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    all.sort();
    assert_eq!(sorted_keys(&mut con, "*").await, all);
    let cases: &[(&str, &[&str])] = &[
        ("h?llo", &["h*llo", "h?llo", "hallo", "hello", "hxllo"]),
        (
            "h*llo",
            &[
                "h*llo", "h?llo", "hallo", "heeeello", "hello", "hllo", "hxllo",
            ],
        ),
        ("h[ae]llo", &["hallo", "hello"]),
        ("h[^e]llo", &["h*llo", "h?llo", "hallo", "hxllo"]),
        ("[a-c]", &["a", "b", "c"]),
        ("[^a-c]", &["d", "x"]),
        ("h\\*llo", &["h*llo"]),
        ("h\\?llo", &["h?llo"]),
        ("\\[x", &["[x"]),
        ("hello", &["hello"]),
        ("nothing*", &[]),
        ("*e*", &["heeeello", "hello"]),
        ("?", &["a", "b", "c", "d", "x"]),
    ];
    for (pattern, expected) in cases {
        assert_eq!(
            sorted_keys(&mut con, pattern).await,
            expected.to_vec(),
            "KEYS {pattern}"
        );
    }
}

/// SCAN with the given extra arguments until the cursor is 0; returns every key seen.
async fn scan_all(con: &mut MultiplexedConnection, extra: &[&str]) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut cursor = "0".to_string();
    for _ in 0..100_000 {
        let mut args = vec!["SCAN", cursor.as_str()];
        args.extend_from_slice(extra);
        let (next, keys): (String, Vec<String>) = query(con, &args).await;
        seen.extend(keys);
        if next == "0" {
            return seen;
        }
        cursor = next;
    }
    panic!("SCAN {extra:?} did not return cursor 0 after 100000 calls");
}

#[tokio::test]
async fn scan() {
    let server = ServerProcess::target(&[]);
    let mut con = server.conn().await;

    assert!(scan_all(&mut con, &[]).await.is_empty());
    let mut pipe = redis::pipe();
    let mut keyspace = BTreeSet::new();
    for i in 0..500 {
        let key = if i % 5 == 0 {
            format!("five:{i}")
        } else {
            format!("other:{i}")
        };
        pipe.cmd("SET").arg(&key).arg(i).ignore();
        keyspace.insert(key);
    }
    let _: () = pipe.query_async(&mut con).await.unwrap();

    assert_eq!(scan_all(&mut con, &[]).await, keyspace);
    assert_eq!(scan_all(&mut con, &["COUNT", "7"]).await, keyspace);
    assert_eq!(scan_all(&mut con, &["COUNT", "1000"]).await, keyspace);
    let fives: BTreeSet<String> = keyspace
        .iter()
        .filter(|k| k.starts_with("five:"))
        .cloned()
        .collect();
    assert_eq!(fives.len(), 100);
    assert_eq!(scan_all(&mut con, &["MATCH", "five:*"]).await, fives);
    assert_eq!(
        scan_all(&mut con, &["MATCH", "five:*", "COUNT", "3"]).await,
        fives
    );
    assert_eq!(scan_all(&mut con, &["TYPE", "string"]).await, keyspace);
    assert_eq!(
        scan_all(&mut con, &["type", "STRING", "match", "five:*"]).await,
        fives
    );
    assert!(scan_all(&mut con, &["TYPE", "list"]).await.is_empty());
    assert!(scan_all(&mut con, &["MATCH", "none:*"]).await.is_empty());

    assert_eq!(
        query_err(&mut con, &["SCAN", "abc"]).await,
        "ERR invalid cursor"
    );
    assert_eq!(
        query_err(&mut con, &["SCAN", "0", "COUNT", "0"]).await,
        "ERR syntax error"
    );
    assert_eq!(
        query_err(&mut con, &["SCAN", "0", "COUNT", "x"]).await,
        "ERR value is not an integer or out of range"
    );
    assert_eq!(
        query_err(&mut con, &["SCAN", "0", "FOO", "bar"]).await,
        "ERR syntax error"
    );
}

#[tokio::test]
async fn randomkey_dbsize_touch() {
    let server = ServerProcess::target(&[]);
    let mut con = server.conn().await;

    assert_eq!(
        query::<Option<String>>(&mut con, &["RANDOMKEY"]).await,
        None
    );
    assert_eq!(query::<i64>(&mut con, &["DBSIZE"]).await, 0);
    let _: () = query(&mut con, &["MSET", "a", "1", "b", "2", "c", "3"]).await;
    assert_eq!(query::<i64>(&mut con, &["DBSIZE"]).await, 3);
    for _ in 0..20 {
        let key: String = query(&mut con, &["RANDOMKEY"]).await;
        assert!(
            ["a", "b", "c"].contains(&key.as_str()),
            "RANDOMKEY gave {key:?}"
        );
    }
    assert_eq!(
        query::<i64>(&mut con, &["TOUCH", "a", "b", "missing", "a"]).await,
        3
    );
    assert_eq!(query::<i64>(&mut con, &["TOUCH", "missing"]).await, 0);
}

#[tokio::test]
async fn flushall_and_flushdb() {
    let server = ServerProcess::target(&[]);
    let mut con = server.conn().await;

    for args in [
        &["FLUSHALL"][..],
        &["FLUSHALL", "SYNC"],
        &["FLUSHALL", "ASYNC"],
        &["FLUSHDB"],
        &["FLUSHDB", "sync"],
        &["FLUSHDB", "async"],
    ] {
        let _: () = query(&mut con, &["MSET", "a", "1", "b", "2"]).await;
        let _: () = query(&mut con, &["SET", "t", "1", "EX", "100"]).await;
        assert_eq!(query::<String>(&mut con, args).await, "OK", "{args:?}");
        assert_eq!(query::<i64>(&mut con, &["DBSIZE"]).await, 0, "{args:?}");
        assert_eq!(query::<i64>(&mut con, &["EXISTS", "a", "t"]).await, 0);
    }
    assert_eq!(
        query_err(&mut con, &["FLUSHALL", "FOO"]).await,
        "ERR syntax error"
    );
    assert_eq!(
        query_err(&mut con, &["FLUSHDB", "FOO"]).await,
        "ERR syntax error"
    );
}

#[tokio::test]
async fn dump_and_restore() {
    let server = ServerProcess::target(&[]);
    let mut con = server.conn().await;

    assert_eq!(
        query::<Option<Vec<u8>>>(&mut con, &["DUMP", "missing"]).await,
        None
    );
    let values: [&[u8]; 5] = [b"hello", b"12345", b"", b"bin\0\xff\r\n", &[b'z'; 3000]];
    for value in values {
        let _: () = query_cmd(&mut con, redis::cmd("SET").arg("src").arg(value)).await;
        let payload: Vec<u8> = query(&mut con, &["DUMP", "src"]).await;
        let ok: String = query_cmd(
            &mut con,
            redis::cmd("RESTORE")
                .arg("dst")
                .arg(0)
                .arg(&payload)
                .arg("REPLACE"),
        )
        .await;
        assert_eq!(ok, "OK");
        let got: Vec<u8> = query(&mut con, &["GET", "dst"]).await;
        assert_eq!(got, value, "DUMP/RESTORE round trip");
        assert_eq!(query::<i64>(&mut con, &["TTL", "dst"]).await, -1);
    }

    let _: () = query(&mut con, &["SET", "src", "hello"]).await;
    let payload: Vec<u8> = query(&mut con, &["DUMP", "src"]).await;

    // Relative TTL in milliseconds.
    let _: () = query_cmd(
        &mut con,
        redis::cmd("RESTORE").arg("ttl").arg(100_000).arg(&payload),
    )
    .await;
    let pttl: i64 = query(&mut con, &["PTTL", "ttl"]).await;
    assert!(
        (98_000..=100_000).contains(&pttl),
        "PTTL after RESTORE: {pttl}"
    );

    // ABSTTL: the TTL argument is a unix time in milliseconds.
    let at = unix_millis() + 200_000;
    let _: () = query_cmd(
        &mut con,
        redis::cmd("RESTORE")
            .arg("abs")
            .arg(at)
            .arg(&payload)
            .arg("ABSTTL"),
    )
    .await;
    assert_eq!(query::<i64>(&mut con, &["PEXPIRETIME", "abs"]).await, at);
    // ABSTTL in the past: OK, but the key is not created.
    let ok: String = query_cmd(
        &mut con,
        redis::cmd("RESTORE")
            .arg("past")
            .arg(1000)
            .arg(&payload)
            .arg("ABSTTL"),
    )
    .await;
    assert_eq!(ok, "OK");
    assert_eq!(query::<i64>(&mut con, &["EXISTS", "past"]).await, 0);

    // An existing target needs REPLACE.
    assert_eq!(
        query_cmd_err(
            &mut con,
            redis::cmd("RESTORE").arg("ttl").arg(0).arg(&payload)
        )
        .await,
        "BUSYKEY Target key name already exists."
    );
    let _: () = query_cmd(
        &mut con,
        redis::cmd("RESTORE")
            .arg("ttl")
            .arg(0)
            .arg(&payload)
            .arg("REPLACE"),
    )
    .await;
    assert_eq!(query::<i64>(&mut con, &["TTL", "ttl"]).await, -1);

    // Corrupt payloads.
    let wrong = "ERR DUMP payload version or checksum are wrong";
    let mut flipped = payload.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0xff;
    for bad in [
        &b"garbage"[..],
        &flipped,
        &payload[..5],
        &payload[..payload.len() - 1],
    ] {
        assert_eq!(
            query_cmd_err(&mut con, redis::cmd("RESTORE").arg("bad").arg(0).arg(bad)).await,
            wrong,
            "RESTORE of {:?}",
            lagwise_tests::escape(bad)
        );
    }
    assert_eq!(query::<i64>(&mut con, &["EXISTS", "bad"]).await, 0);

    assert_eq!(
        query_cmd_err(
            &mut con,
            redis::cmd("RESTORE").arg("bad").arg(-1).arg(&payload)
        )
        .await,
        "ERR Invalid TTL value, must be >= 0"
    );
    assert_eq!(
        query_cmd_err(
            &mut con,
            redis::cmd("RESTORE")
                .arg("bad")
                .arg(0)
                .arg(&payload)
                .arg("FOO")
        )
        .await,
        "ERR syntax error"
    );
}

#[tokio::test]
async fn restore_accepts_redis7_payloads() {
    let server = ServerProcess::target(&[]);
    let mut con = server.conn().await;

    let _: () = query_cmd(
        &mut con,
        redis::cmd("RESTORE").arg("s").arg(0).arg(REDIS7_DUMP_HELLO),
    )
    .await;
    assert_eq!(query::<String>(&mut con, &["GET", "s"]).await, "hello");
    let _: () = query_cmd(
        &mut con,
        redis::cmd("RESTORE").arg("n").arg(0).arg(REDIS7_DUMP_12345),
    )
    .await;
    assert_eq!(query::<String>(&mut con, &["GET", "n"]).await, "12345");
    assert_eq!(query::<i64>(&mut con, &["INCR", "n"]).await, 12346);
}

#[tokio::test]
async fn ttl_and_expiretime_round_to_the_nearest_second() {
    let server = ServerProcess::target(&[]);
    let mut con = server.conn().await;

    // EXPIRETIME of a millisecond deadline is rounded, not truncated.
    let base = (unix_millis() / 1000 + 100) * 1000;
    for (offset, rounds_up) in [(700, true), (300, false), (500, true), (499, false)] {
        let at = base + offset;
        let _: () = query(&mut con, &["SET", "k", "v", "PXAT", &at.to_string()]).await;
        let expected = base / 1000 + i64::from(rounds_up);
        assert_eq!(
            query::<i64>(&mut con, &["EXPIRETIME", "k"]).await,
            expected,
            "EXPIRETIME of PXAT {at}"
        );
    }

    // TTL = (PTTL + 500) / 1000.
    for px in ["10700", "10300", "1600"] {
        let _: () = query(&mut con, &["SET", "t", "v", "PX", px]).await;
        let (pttl, ttl): (i64, i64) = redis::pipe()
            .cmd("PTTL")
            .arg("t")
            .cmd("TTL")
            .arg("t")
            .query_async(&mut con)
            .await
            .unwrap();
        if (pttl % 1000 - 500).abs() > 20 {
            assert_eq!(ttl, (pttl + 500) / 1000, "TTL with PTTL {pttl} (PX {px})");
        }
    }
}

#[tokio::test]
async fn expired_keys_are_gone_for_every_command() {
    let server = ServerProcess::target(&[]);
    let mut con = server.conn().await;
    let _: () = query(&mut con, &["SET", "e", "v", "PX", "30"]).await;
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert_eq!(
        query_err(&mut con, &["RENAME", "e", "x"]).await,
        "ERR no such key"
    );
    let _: () = query(&mut con, &["SET", "e", "v", "PX", "30"]).await;
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert_eq!(query::<i64>(&mut con, &["COPY", "e", "x"]).await, 0);
    assert_eq!(query::<String>(&mut con, &["TYPE", "e"]).await, "none");
    assert_eq!(query::<i64>(&mut con, &["STRLEN", "e"]).await, 0);
    assert_eq!(query::<i64>(&mut con, &["APPEND", "e", "new"]).await, 3);
    assert_eq!(query::<i64>(&mut con, &["TTL", "e"]).await, -1);
    let _: () = query(&mut con, &["SET", "n", "41", "PX", "30"]).await;
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert_eq!(query::<i64>(&mut con, &["INCR", "n"]).await, 1);
    let _: () = query(&mut con, &["SET", "d", "v", "PX", "30"]).await;
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert_eq!(
        query::<Option<Vec<u8>>>(&mut con, &["DUMP", "d"]).await,
        None
    );
    assert_eq!(query::<i64>(&mut con, &["DEL", "d"]).await, 0);
}
