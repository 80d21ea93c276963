//! String commands: GET/SET and options, the counters, ranges. Each test starts its own server.
#![allow(clippy::unwrap_used)]

use std::time::{SystemTime, UNIX_EPOCH};

use lagwise_tests::{assert_reply, query, query_cmd, query_err, ServerProcess};

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test]
async fn get_and_set() {
    let server = ServerProcess::target(&[]);
    let mut con = server.conn().await;

    assert_eq!(query::<Option<String>>(&mut con, &["GET", "k"]).await, None);
    assert_eq!(query::<String>(&mut con, &["SET", "k", "v"]).await, "OK");
    assert_eq!(query::<String>(&mut con, &["GET", "k"]).await, "v");
    assert_eq!(query::<String>(&mut con, &["SET", "k", "v2"]).await, "OK");
    assert_eq!(query::<String>(&mut con, &["GET", "k"]).await, "v2");
    // Empty values exist and are distinct from a missing key.
    assert_eq!(query::<String>(&mut con, &["SET", "empty", ""]).await, "OK");
    assert_eq!(
        query::<Option<String>>(&mut con, &["GET", "empty"]).await,
        Some(String::new())
    );
    // Binary-safe keys and values.
    let binary: &[u8] = b"a\0b\r\nc\xff";
    let _: () = query_cmd(&mut con, redis::cmd("SET").arg(binary).arg(binary)).await;
    let got: Vec<u8> = query_cmd(&mut con, redis::cmd("GET").arg(binary)).await;
    assert_eq!(got, binary);
}

#[tokio::test]
async fn get_and_set_raw_replies() {
    let server = ServerProcess::target(&[]);
    let mut raw = server.raw();
    assert_reply!(raw.cmd(&[b"GET", b"k"]), b"$-1\r\n");
    assert_reply!(raw.cmd(&[b"SET", b"k", b"hello"]), b"+OK\r\n");
    assert_reply!(raw.cmd(&[b"GET", b"k"]), b"$5\r\nhello\r\n");
    assert_reply!(raw.cmd(&[b"SET", b"k", b"x", b"NX"]), b"$-1\r\n");
    assert_reply!(
        raw.cmd(&[b"GET"]),
        b"-ERR wrong number of arguments for 'get' command\r\n"
    );
}

#[tokio::test]
async fn set_with_expire_options() {
    let server = ServerProcess::target(&[]);
    let mut con = server.conn().await;

    let _: () = query(&mut con, &["SET", "ex", "v", "EX", "100"]).await;
    let ttl: i64 = query(&mut con, &["TTL", "ex"]).await;
    assert!((98..=100).contains(&ttl), "TTL after EX 100: {ttl}");

    let _: () = query(&mut con, &["SET", "px", "v", "PX", "100000"]).await;
    let pttl: i64 = query(&mut con, &["PTTL", "px"]).await;
    assert!(
        (98_000..=100_000).contains(&pttl),
        "PTTL after PX 100000: {pttl}"
    );

    let at = (unix_secs() + 100).to_string();
    let _: () = query(&mut con, &["SET", "exat", "v", "EXAT", &at]).await;
    let ttl: i64 = query(&mut con, &["TTL", "exat"]).await;
    assert!((98..=100).contains(&ttl), "TTL after EXAT now+100: {ttl}");
    let expiretime: i64 = query(&mut con, &["EXPIRETIME", "exat"]).await;
    assert_eq!(expiretime.to_string(), at);

    let at_ms = (unix_millis() + 100_000).to_string();
    let _: () = query(&mut con, &["SET", "pxat", "v", "PXAT", &at_ms]).await;
    let pexpiretime: i64 = query(&mut con, &["PEXPIRETIME", "pxat"]).await;
    assert_eq!(pexpiretime.to_string(), at_ms);

    // Options are case-insensitive.
    let _: () = query(&mut con, &["SET", "lower", "v", "ex", "100"]).await;
    assert!(query::<i64>(&mut con, &["TTL", "lower"]).await > 0);

    // An absolute time in the past: the reply is OK and the key is gone at once.
    assert_eq!(
        query::<String>(&mut con, &["SET", "past", "v", "EXAT", "1"]).await,
        "OK"
    );
    assert_eq!(query::<i64>(&mut con, &["EXISTS", "past"]).await, 0);
    let _: () = query(&mut con, &["SET", "past", "v"]).await;
    let _: () = query(&mut con, &["SET", "past", "v", "PXAT", "1"]).await;
    assert_eq!(query::<i64>(&mut con, &["EXISTS", "past"]).await, 0);

    // A plain SET clears the TTL.
    let _: () = query(&mut con, &["SET", "ex", "v2"]).await;
    assert_eq!(query::<i64>(&mut con, &["TTL", "ex"]).await, -1);
}

#[tokio::test]
async fn set_nx_xx() {
    let server = ServerProcess::target(&[]);
    let mut con = server.conn().await;

    assert_eq!(
        query::<Option<String>>(&mut con, &["SET", "k", "1", "XX"]).await,
        None
    );
    assert_eq!(query::<i64>(&mut con, &["EXISTS", "k"]).await, 0);
    assert_eq!(
        query::<Option<String>>(&mut con, &["SET", "k", "1", "NX"]).await,
        Some("OK".into())
    );
    assert_eq!(
        query::<Option<String>>(&mut con, &["SET", "k", "2", "NX"]).await,
        None
    );
    assert_eq!(query::<String>(&mut con, &["GET", "k"]).await, "1");
    assert_eq!(
        query::<Option<String>>(&mut con, &["SET", "k", "3", "XX"]).await,
        Some("OK".into())
    );
    assert_eq!(query::<String>(&mut con, &["GET", "k"]).await, "3");
}

#[tokio::test]
async fn set_keepttl() {
    let server = ServerProcess::target(&[]);
    let mut con = server.conn().await;

    let _: () = query(&mut con, &["SET", "k", "v", "EX", "100"]).await;
    let _: () = query(&mut con, &["SET", "k", "v2", "KEEPTTL"]).await;
    let ttl: i64 = query(&mut con, &["TTL", "k"]).await;
    assert!((98..=100).contains(&ttl), "TTL after KEEPTTL: {ttl}");
    assert_eq!(query::<String>(&mut con, &["GET", "k"]).await, "v2");
    // KEEPTTL on a key without TTL, or a new key, leaves it without one.
    let _: () = query(&mut con, &["SET", "n", "v", "KEEPTTL"]).await;
    assert_eq!(query::<i64>(&mut con, &["TTL", "n"]).await, -1);
    let _: () = query(&mut con, &["SET", "k", "v3"]).await;
    assert_eq!(query::<i64>(&mut con, &["TTL", "k"]).await, -1);
}

#[tokio::test]
async fn set_get_option() {
    let server = ServerProcess::target(&[]);
    let mut con = server.conn().await;

    assert_eq!(
        query::<Option<String>>(&mut con, &["SET", "k", "v1", "GET"]).await,
        None
    );
    assert_eq!(
        query::<Option<String>>(&mut con, &["SET", "k", "v2", "GET"]).await,
        Some("v1".into())
    );
    assert_eq!(query::<String>(&mut con, &["GET", "k"]).await, "v2");
    // With NX the old value is returned and nothing is written.
    assert_eq!(
        query::<Option<String>>(&mut con, &["SET", "k", "v3", "NX", "GET"]).await,
        Some("v2".into())
    );
    assert_eq!(query::<String>(&mut con, &["GET", "k"]).await, "v2");
    // With XX on a missing key: nil, nothing written.
    assert_eq!(
        query::<Option<String>>(&mut con, &["SET", "m", "v", "XX", "GET"]).await,
        None
    );
    assert_eq!(query::<i64>(&mut con, &["EXISTS", "m"]).await, 0);
    // GET combines with an expiry.
    assert_eq!(
        query::<Option<String>>(&mut con, &["SET", "k", "v4", "GET", "EX", "100"]).await,
        Some("v2".into())
    );
    assert!(query::<i64>(&mut con, &["TTL", "k"]).await > 0);
}

#[tokio::test]
async fn set_errors() {
    let server = ServerProcess::target(&[]);
    let mut con = server.conn().await;

    let syntax = "ERR syntax error";
    let invalid_expire = "ERR invalid expire time in 'set' command";
    let not_integer = "ERR value is not an integer or out of range";
    let cases: &[(&[&str], &str)] = &[
        (&["SET", "k", "v", "NX", "XX"], syntax),
        (&["SET", "k", "v", "EX", "10", "PX", "100"], syntax),
        (&["SET", "k", "v", "EX", "10", "EXAT", "100"], syntax),
        (&["SET", "k", "v", "KEEPTTL", "EX", "10"], syntax),
        (&["SET", "k", "v", "PX", "10", "KEEPTTL"], syntax),
        (&["SET", "k", "v", "EX"], syntax),
        (&["SET", "k", "v", "FOO"], syntax),
        (&["SET", "k", "v", "EX", "0"], invalid_expire),
        (&["SET", "k", "v", "EX", "-1"], invalid_expire),
        (&["SET", "k", "v", "PX", "0"], invalid_expire),
        (&["SET", "k", "v", "EXAT", "0"], invalid_expire),
        (&["SET", "k", "v", "PXAT", "-5"], invalid_expire),
        (
            &["SET", "k", "v", "EX", "99999999999999999"],
            invalid_expire,
        ),
        (&["SET", "k", "v", "EX", "1.5"], not_integer),
        (&["SET", "k", "v", "EX", "abc"], not_integer),
        (&["SET", "k", "v", "PX", "10ms"], not_integer),
        (
            &["SET", "k"],
            "ERR wrong number of arguments for 'set' command",
        ),
    ];
    for (args, expected) in cases {
        assert_eq!(&query_err(&mut con, args).await, expected, "{args:?}");
    }
    assert_eq!(
        query::<i64>(&mut con, &["EXISTS", "k"]).await,
        0,
        "a failed SET must not write"
    );
}

#[tokio::test]
async fn setnx_setex_psetex() {
    let server = ServerProcess::target(&[]);
    let mut con = server.conn().await;

    assert_eq!(query::<i64>(&mut con, &["SETNX", "k", "1"]).await, 1);
    assert_eq!(query::<i64>(&mut con, &["SETNX", "k", "2"]).await, 0);
    assert_eq!(query::<String>(&mut con, &["GET", "k"]).await, "1");

    assert_eq!(
        query::<String>(&mut con, &["SETEX", "e", "100", "v"]).await,
        "OK"
    );
    let ttl: i64 = query(&mut con, &["TTL", "e"]).await;
    assert!((98..=100).contains(&ttl), "TTL after SETEX 100: {ttl}");
    assert_eq!(query::<String>(&mut con, &["GET", "e"]).await, "v");

    assert_eq!(
        query::<String>(&mut con, &["PSETEX", "p", "100000", "v"]).await,
        "OK"
    );
    let pttl: i64 = query(&mut con, &["PTTL", "p"]).await;
    assert!(
        (98_000..=100_000).contains(&pttl),
        "PTTL after PSETEX: {pttl}"
    );

    assert_eq!(
        query_err(&mut con, &["SETEX", "e", "0", "v"]).await,
        "ERR invalid expire time in 'setex' command"
    );
    assert_eq!(
        query_err(&mut con, &["SETEX", "e", "-10", "v"]).await,
        "ERR invalid expire time in 'setex' command"
    );
    assert_eq!(
        query_err(&mut con, &["PSETEX", "p", "0", "v"]).await,
        "ERR invalid expire time in 'psetex' command"
    );
    assert_eq!(
        query_err(&mut con, &["SETEX", "e", "abc", "v"]).await,
        "ERR value is not an integer or out of range"
    );
    assert_eq!(
        query_err(&mut con, &["SETEX", "e", "10"]).await,
        "ERR wrong number of arguments for 'setex' command"
    );
}

#[tokio::test]
async fn getset_and_getdel() {
    let server = ServerProcess::target(&[]);
    let mut con = server.conn().await;

    assert_eq!(
        query::<Option<String>>(&mut con, &["GETSET", "k", "1"]).await,
        None
    );
    let _: () = query(&mut con, &["EXPIRE", "k", "100"]).await;
    assert_eq!(
        query::<Option<String>>(&mut con, &["GETSET", "k", "2"]).await,
        Some("1".into())
    );
    assert_eq!(query::<String>(&mut con, &["GET", "k"]).await, "2");
    assert_eq!(
        query::<i64>(&mut con, &["TTL", "k"]).await,
        -1,
        "GETSET clears the TTL"
    );

    assert_eq!(
        query::<Option<String>>(&mut con, &["GETDEL", "k"]).await,
        Some("2".into())
    );
    assert_eq!(query::<i64>(&mut con, &["EXISTS", "k"]).await, 0);
    assert_eq!(
        query::<Option<String>>(&mut con, &["GETDEL", "k"]).await,
        None
    );
}

#[tokio::test]
async fn getex() {
    let server = ServerProcess::target(&[]);
    let mut con = server.conn().await;

    assert_eq!(
        query::<Option<String>>(&mut con, &["GETEX", "missing", "EX", "10"]).await,
        None
    );
    assert_eq!(query::<i64>(&mut con, &["EXISTS", "missing"]).await, 0);

    let _: () = query(&mut con, &["SET", "k", "v"]).await;
    assert_eq!(query::<String>(&mut con, &["GETEX", "k"]).await, "v");
    assert_eq!(query::<i64>(&mut con, &["TTL", "k"]).await, -1);

    assert_eq!(
        query::<String>(&mut con, &["GETEX", "k", "EX", "100"]).await,
        "v"
    );
    let ttl: i64 = query(&mut con, &["TTL", "k"]).await;
    assert!((98..=100).contains(&ttl), "TTL after GETEX EX 100: {ttl}");
    // Without options the TTL is left alone.
    let _: String = query(&mut con, &["GETEX", "k"]).await;
    assert!(query::<i64>(&mut con, &["TTL", "k"]).await > 0);

    let _: String = query(&mut con, &["GETEX", "k", "PX", "200000"]).await;
    let pttl: i64 = query(&mut con, &["PTTL", "k"]).await;
    assert!(
        (198_000..=200_000).contains(&pttl),
        "PTTL after GETEX PX: {pttl}"
    );

    let at = (unix_secs() + 300).to_string();
    let _: String = query(&mut con, &["GETEX", "k", "EXAT", &at]).await;
    assert_eq!(
        query::<i64>(&mut con, &["EXPIRETIME", "k"])
            .await
            .to_string(),
        at
    );

    let at_ms = (unix_millis() + 400_000).to_string();
    let _: String = query(&mut con, &["GETEX", "k", "PXAT", &at_ms]).await;
    assert_eq!(
        query::<i64>(&mut con, &["PEXPIRETIME", "k"])
            .await
            .to_string(),
        at_ms
    );

    assert_eq!(
        query::<String>(&mut con, &["GETEX", "k", "PERSIST"]).await,
        "v"
    );
    assert_eq!(query::<i64>(&mut con, &["TTL", "k"]).await, -1);

    // An absolute time in the past deletes the key (after returning its value).
    assert_eq!(
        query::<String>(&mut con, &["GETEX", "k", "EXAT", "1"]).await,
        "v"
    );
    assert_eq!(query::<i64>(&mut con, &["EXISTS", "k"]).await, 0);

    let _: () = query(&mut con, &["SET", "k", "v"]).await;
    assert_eq!(
        query_err(&mut con, &["GETEX", "k", "EX", "0"]).await,
        "ERR invalid expire time in 'getex' command"
    );
    assert_eq!(
        query_err(&mut con, &["GETEX", "k", "PX", "-1"]).await,
        "ERR invalid expire time in 'getex' command"
    );
    assert_eq!(
        query_err(&mut con, &["GETEX", "k", "PERSIST", "EX", "10"]).await,
        "ERR syntax error"
    );
    assert_eq!(
        query_err(&mut con, &["GETEX", "k", "EX", "10", "PX", "10"]).await,
        "ERR syntax error"
    );
    assert_eq!(
        query_err(&mut con, &["GETEX", "k", "EX", "ten"]).await,
        "ERR value is not an integer or out of range"
    );
    assert_eq!(query::<i64>(&mut con, &["TTL", "k"]).await, -1);
}

#[tokio::test]
async fn mget_mset_msetnx() {
    let server = ServerProcess::target(&[]);
    let mut con = server.conn().await;

    assert_eq!(
        query::<String>(&mut con, &["MSET", "a", "1", "b", "2"]).await,
        "OK"
    );
    assert_eq!(
        query::<Vec<Option<String>>>(&mut con, &["MGET", "a", "b", "missing", "a"]).await,
        vec![Some("1".into()), Some("2".into()), None, Some("1".into())]
    );
    // MSET: the last occurrence of a key wins.
    let _: () = query(&mut con, &["MSET", "c", "1", "c", "2"]).await;
    assert_eq!(query::<String>(&mut con, &["GET", "c"]).await, "2");
    assert_eq!(
        query_err(&mut con, &["MSET", "a", "1", "b"]).await,
        "ERR wrong number of arguments for 'mset' command"
    );
    assert_eq!(
        query_err(&mut con, &["MGET"]).await,
        "ERR wrong number of arguments for 'mget' command"
    );

    // MSETNX is all or nothing.
    assert_eq!(
        query::<i64>(&mut con, &["MSETNX", "a", "10", "new", "20"]).await,
        0
    );
    assert_eq!(query::<i64>(&mut con, &["EXISTS", "new"]).await, 0);
    assert_eq!(query::<String>(&mut con, &["GET", "a"]).await, "1");
    assert_eq!(
        query::<i64>(&mut con, &["MSETNX", "x", "1", "y", "2"]).await,
        1
    );
    assert_eq!(
        query::<Vec<String>>(&mut con, &["MGET", "x", "y"]).await,
        vec!["1", "2"]
    );
    assert_eq!(
        query_err(&mut con, &["MSETNX", "x"]).await,
        "ERR wrong number of arguments for 'msetnx' command"
    );
}

#[tokio::test]
async fn mset_clears_ttl() {
    let server = ServerProcess::target(&[]);
    let mut con = server.conn().await;
    let _: () = query(&mut con, &["SET", "a", "1", "EX", "100"]).await;
    let _: () = query(&mut con, &["MSET", "a", "2"]).await;
    assert_eq!(query::<i64>(&mut con, &["TTL", "a"]).await, -1);
}

#[tokio::test]
async fn append_and_strlen() {
    let server = ServerProcess::target(&[]);
    let mut con = server.conn().await;

    assert_eq!(query::<i64>(&mut con, &["STRLEN", "k"]).await, 0);
    assert_eq!(query::<i64>(&mut con, &["APPEND", "k", "Hello"]).await, 5);
    assert_eq!(query::<i64>(&mut con, &["APPEND", "k", " World"]).await, 11);
    assert_eq!(
        query::<String>(&mut con, &["GET", "k"]).await,
        "Hello World"
    );
    assert_eq!(query::<i64>(&mut con, &["STRLEN", "k"]).await, 11);
    assert_eq!(query::<i64>(&mut con, &["APPEND", "k", ""]).await, 11);
    // APPEND keeps the TTL.
    let _: () = query(&mut con, &["EXPIRE", "k", "100"]).await;
    let _: i64 = query(&mut con, &["APPEND", "k", "!"]).await;
    assert!(query::<i64>(&mut con, &["TTL", "k"]).await > 0);
    // Appending to an integer-encoded value works on its string form.
    let _: () = query(&mut con, &["SET", "n", "12"]).await;
    assert_eq!(query::<i64>(&mut con, &["APPEND", "n", "34"]).await, 4);
    assert_eq!(query::<String>(&mut con, &["GET", "n"]).await, "1234");
    assert_eq!(query::<i64>(&mut con, &["STRLEN", "n"]).await, 4);
    // APPEND of an empty string to a missing key creates it.
    assert_eq!(query::<i64>(&mut con, &["APPEND", "e", ""]).await, 0);
    assert_eq!(query::<i64>(&mut con, &["EXISTS", "e"]).await, 1);
}

#[tokio::test]
async fn incr_decr() {
    let server = ServerProcess::target(&[]);
    let mut con = server.conn().await;

    assert_eq!(query::<i64>(&mut con, &["INCR", "n"]).await, 1);
    assert_eq!(query::<i64>(&mut con, &["INCR", "n"]).await, 2);
    assert_eq!(query::<i64>(&mut con, &["INCRBY", "n", "10"]).await, 12);
    assert_eq!(query::<i64>(&mut con, &["INCRBY", "n", "-20"]).await, -8);
    assert_eq!(query::<i64>(&mut con, &["DECR", "n"]).await, -9);
    assert_eq!(query::<i64>(&mut con, &["DECRBY", "n", "-9"]).await, 0);
    assert_eq!(query::<i64>(&mut con, &["DECR", "new"]).await, -1);
    assert_eq!(query::<i64>(&mut con, &["DECRBY", "new2", "5"]).await, -5);
    assert_eq!(query::<String>(&mut con, &["GET", "n"]).await, "0");

    // The TTL survives INCR.
    let _: () = query(&mut con, &["SET", "t", "5", "EX", "100"]).await;
    assert_eq!(query::<i64>(&mut con, &["INCR", "t"]).await, 6);
    assert!(query::<i64>(&mut con, &["TTL", "t"]).await > 0);

    let not_integer = "ERR value is not an integer or out of range";
    for value in [
        "abc",
        " 1",
        "1 ",
        "1.5",
        "",
        "+1",
        "0x10",
        "99999999999999999999",
    ] {
        let _: () = query(&mut con, &["SET", "bad", value]).await;
        assert_eq!(
            query_err(&mut con, &["INCR", "bad"]).await,
            not_integer,
            "INCR of {value:?}"
        );
        assert_eq!(query::<String>(&mut con, &["GET", "bad"]).await, value);
    }
    assert_eq!(
        query_err(&mut con, &["INCRBY", "n", "abc"]).await,
        not_integer
    );
    assert_eq!(
        query_err(&mut con, &["INCRBY", "n", "1.0"]).await,
        not_integer
    );
    assert_eq!(
        query_err(&mut con, &["DECRBY", "n", "9223372036854775808"]).await,
        not_integer
    );
    // Negative numbers and leading zeros are rejected as stored values only when not canonical.
    let _: () = query(&mut con, &["SET", "neg", "-5"]).await;
    assert_eq!(query::<i64>(&mut con, &["INCR", "neg"]).await, -4);
}

#[tokio::test]
async fn incr_overflow() {
    let server = ServerProcess::target(&[]);
    let mut con = server.conn().await;
    let overflow = "ERR increment or decrement would overflow";

    let _: () = query(&mut con, &["SET", "max", "9223372036854775807"]).await;
    assert_eq!(query_err(&mut con, &["INCR", "max"]).await, overflow);
    assert_eq!(query_err(&mut con, &["INCRBY", "max", "1"]).await, overflow);
    assert_eq!(
        query_err(&mut con, &["DECRBY", "max", "-1"]).await,
        overflow
    );
    assert_eq!(
        query::<String>(&mut con, &["GET", "max"]).await,
        "9223372036854775807"
    );

    let _: () = query(&mut con, &["SET", "min", "-9223372036854775808"]).await;
    assert_eq!(query_err(&mut con, &["DECR", "min"]).await, overflow);
    assert_eq!(
        query_err(&mut con, &["INCRBY", "min", "-1"]).await,
        overflow
    );
    assert_eq!(query::<i64>(&mut con, &["INCR", "min"]).await, i64::MIN + 1);

    // Negating i64::MIN is its own error.
    let _: () = query(&mut con, &["SET", "z", "0"]).await;
    assert_eq!(
        query_err(&mut con, &["DECRBY", "z", "-9223372036854775808"]).await,
        "ERR decrement would overflow"
    );
}

#[tokio::test]
async fn incrbyfloat() {
    let server = ServerProcess::target(&[]);
    let mut con = server.conn().await;

    assert_eq!(
        query::<String>(&mut con, &["INCRBYFLOAT", "f", "10.5"]).await,
        "10.5"
    );
    assert_eq!(
        query::<String>(&mut con, &["INCRBYFLOAT", "f", "0.1"]).await,
        "10.6"
    );
    assert_eq!(query::<String>(&mut con, &["GET", "f"]).await, "10.6");
    assert_eq!(
        query::<String>(&mut con, &["INCRBYFLOAT", "f", "-5"]).await,
        "5.6"
    );

    let _: () = query(&mut con, &["SET", "e", "5.0e3"]).await;
    assert_eq!(
        query::<String>(&mut con, &["INCRBYFLOAT", "e", "2.0e2"]).await,
        "5200"
    );

    let _: () = query(&mut con, &["SET", "i", "10"]).await;
    assert_eq!(
        query::<String>(&mut con, &["INCRBYFLOAT", "i", "1.5e1"]).await,
        "25"
    );
    assert_eq!(
        query::<String>(&mut con, &["INCRBYFLOAT", "i", "-25"]).await,
        "0"
    );
    assert_eq!(
        query::<String>(&mut con, &["INCRBYFLOAT", "i", "0.0000001"]).await,
        "0.0000001"
    );
    assert_eq!(
        query::<String>(&mut con, &["INCRBYFLOAT", "neg", "-3.25"]).await,
        "-3.25"
    );

    // The TTL survives.
    let _: () = query(&mut con, &["SET", "t", "1", "EX", "100"]).await;
    let _: String = query(&mut con, &["INCRBYFLOAT", "t", "1"]).await;
    assert!(query::<i64>(&mut con, &["TTL", "t"]).await > 0);

    let not_float = "ERR value is not a valid float";
    assert_eq!(
        query_err(&mut con, &["INCRBYFLOAT", "f", "abc"]).await,
        not_float
    );
    assert_eq!(
        query_err(&mut con, &["INCRBYFLOAT", "f", ""]).await,
        not_float
    );
    let _: () = query(&mut con, &["SET", "s", "abc"]).await;
    assert_eq!(
        query_err(&mut con, &["INCRBYFLOAT", "s", "1"]).await,
        not_float
    );
    assert_eq!(
        query_err(&mut con, &["INCRBYFLOAT", "f", "inf"]).await,
        "ERR increment would produce NaN or Infinity"
    );
    assert_eq!(query::<String>(&mut con, &["GET", "f"]).await, "5.6");
}

#[tokio::test]
async fn getrange() {
    let server = ServerProcess::target(&[]);
    let mut con = server.conn().await;

    let _: () = query(&mut con, &["SET", "k", "This is a string"]).await;
    let cases: &[(&str, &str, &str)] = &[
        ("0", "3", "This"),
        ("-3", "-1", "ing"),
        ("0", "-1", "This is a string"),
        ("10", "100", "string"),
        ("5", "3", ""),
        ("-1", "-5", ""),
        ("-100", "3", "This"),
        ("100", "200", ""),
        ("15", "15", "g"),
    ];
    for (start, end, expected) in cases {
        assert_eq!(
            &query::<String>(&mut con, &["GETRANGE", "k", start, end]).await,
            expected,
            "GETRANGE k {start} {end}"
        );
    }
    assert_eq!(
        query::<String>(&mut con, &["GETRANGE", "missing", "0", "-1"]).await,
        ""
    );
    // Integer-encoded values are ranged over their string form.
    let _: () = query(&mut con, &["SET", "n", "12345"]).await;
    assert_eq!(
        query::<String>(&mut con, &["GETRANGE", "n", "1", "2"]).await,
        "23"
    );
    assert_eq!(
        query_err(&mut con, &["GETRANGE", "k", "0", "a"]).await,
        "ERR value is not an integer or out of range"
    );
}

#[tokio::test]
async fn setrange() {
    let server = ServerProcess::target(&[]);
    let mut con = server.conn().await;

    let _: () = query(&mut con, &["SET", "k", "Hello World"]).await;
    assert_eq!(
        query::<i64>(&mut con, &["SETRANGE", "k", "6", "Redis"]).await,
        11
    );
    assert_eq!(
        query::<String>(&mut con, &["GET", "k"]).await,
        "Hello Redis"
    );
    assert_eq!(
        query::<i64>(&mut con, &["SETRANGE", "k", "9", "xyz"]).await,
        12
    );
    assert_eq!(
        query::<String>(&mut con, &["GET", "k"]).await,
        "Hello Redxyz"
    );

    // Past the end (or on a missing key) the gap is filled with zero bytes.
    assert_eq!(
        query::<i64>(&mut con, &["SETRANGE", "pad", "5", "x"]).await,
        6
    );
    let got: Vec<u8> = query(&mut con, &["GET", "pad"]).await;
    assert_eq!(got, b"\0\0\0\0\0x");
    let _: () = query(&mut con, &["SET", "short", "ab"]).await;
    assert_eq!(
        query::<i64>(&mut con, &["SETRANGE", "short", "4", "c"]).await,
        5
    );
    let got: Vec<u8> = query(&mut con, &["GET", "short"]).await;
    assert_eq!(got, b"ab\0\0c");

    // An empty value on a missing key creates nothing; on an existing key changes nothing.
    assert_eq!(
        query::<i64>(&mut con, &["SETRANGE", "none", "10", ""]).await,
        0
    );
    assert_eq!(query::<i64>(&mut con, &["EXISTS", "none"]).await, 0);
    assert_eq!(
        query::<i64>(&mut con, &["SETRANGE", "k", "100", ""]).await,
        12
    );

    // On an integer-encoded value.
    let _: () = query(&mut con, &["SET", "n", "1234"]).await;
    assert_eq!(
        query::<i64>(&mut con, &["SETRANGE", "n", "1", "x"]).await,
        4
    );
    assert_eq!(query::<String>(&mut con, &["GET", "n"]).await, "1x34");

    assert_eq!(
        query_err(&mut con, &["SETRANGE", "k", "536870912", "x"]).await,
        "ERR string exceeds maximum allowed size (proto-max-bulk-len)"
    );
    assert_eq!(
        query_err(&mut con, &["SETRANGE", "k", "536870911", "xy"]).await,
        "ERR string exceeds maximum allowed size (proto-max-bulk-len)"
    );
    assert_eq!(
        query_err(&mut con, &["SETRANGE", "k", "-1", "x"]).await,
        "ERR offset is out of range"
    );
    assert_eq!(
        query_err(&mut con, &["SETRANGE", "k", "abc", "x"]).await,
        "ERR value is not an integer or out of range"
    );
    assert_eq!(
        query::<String>(&mut con, &["GET", "k"]).await,
        "Hello Redxyz"
    );
}

#[tokio::test]
async fn incrbyfloat_formatting() {
    let server = ServerProcess::target(&[]);
    let mut con = server.conn().await;

    // The sum is printed with up to 17 significant digits and no trailing zeros: 0.1 + 0.2
    // is "0.3" (Redis computes in long double), not 0.30000000000000004.
    let _: String = query(&mut con, &["INCRBYFLOAT", "a", "0.1"]).await;
    assert_eq!(
        query::<String>(&mut con, &["INCRBYFLOAT", "a", "0.2"]).await,
        "0.3"
    );
    let cases: &[(&str, &str)] = &[
        ("1e20", "100000000000000000000"),
        ("3.0e0", "3"),
        ("-0.0", "0"),
        (".5", "0.5"),
        ("5.", "5"),
        ("+1", "1"),
        ("-1.25", "-1.25"),
        ("1.5E1", "15"),
    ];
    for (i, (increment, expected)) in cases.iter().enumerate() {
        let key = format!("k{i}");
        assert_eq!(
            &query::<String>(&mut con, &["INCRBYFLOAT", &key, increment]).await,
            expected,
            "INCRBYFLOAT of {increment:?}"
        );
        assert_eq!(&query::<String>(&mut con, &["GET", &key]).await, expected);
    }
    let _: () = query(&mut con, &["SET", "g", "1.5"]).await;
    assert_eq!(
        query::<String>(&mut con, &["INCRBYFLOAT", "g", "1.5"]).await,
        "3"
    );

    let not_float = "ERR value is not a valid float";
    for increment in ["1e", "nan", " 1", "1 ", "1.2.3", "--1"] {
        assert_eq!(
            query_err(&mut con, &["INCRBYFLOAT", "x", increment]).await,
            not_float,
            "INCRBYFLOAT by {increment:?}"
        );
    }
    let _: () = query(&mut con, &["SET", "sp", " 1"]).await;
    assert_eq!(
        query_err(&mut con, &["INCRBYFLOAT", "sp", "1"]).await,
        not_float
    );
    assert_eq!(query::<i64>(&mut con, &["EXISTS", "x"]).await, 0);
}

#[tokio::test]
async fn repeated_options_are_accepted() {
    let server = ServerProcess::target(&[]);
    let mut con = server.conn().await;

    // Repeating an option is not a conflict; for EX/PX the last value wins.
    assert_eq!(
        query::<String>(&mut con, &["SET", "k", "v", "EX", "10", "EX", "100"]).await,
        "OK"
    );
    let ttl: i64 = query(&mut con, &["TTL", "k"]).await;
    assert!((98..=100).contains(&ttl), "TTL after EX 10 EX 100: {ttl}");
    assert_eq!(
        query::<Option<String>>(&mut con, &["SET", "n", "v", "NX", "NX"]).await,
        Some("OK".into())
    );
    assert_eq!(
        query::<Option<String>>(&mut con, &["SET", "n", "w", "GET", "GET"]).await,
        Some("v".into())
    );
    assert_eq!(
        query::<String>(&mut con, &["GETEX", "k", "PX", "5000", "PX", "200000"]).await,
        "v"
    );
    let pttl: i64 = query(&mut con, &["PTTL", "k"]).await;
    assert!(
        (198_000..=200_000).contains(&pttl),
        "PTTL after PX 5000 PX 200000: {pttl}"
    );
    assert_eq!(
        query::<String>(&mut con, &["GETEX", "k", "PERSIST", "PERSIST"]).await,
        "v"
    );
    assert_eq!(query::<i64>(&mut con, &["TTL", "k"]).await, -1);
}
