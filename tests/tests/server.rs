//! Connection and server commands: PING, HELLO, AUTH, CLIENT, INFO, CONFIG, COMMAND,
//! SHUTDOWN... Each test starts its own server.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lagwise_tests::{
    assert_reply, escape, info_field, parse_reply, query, query_err, RawConn, ServerKind,
    ServerProcess,
};
use redis::Value;

/// A map reply (RESP3 map, or RESP2 flat key/value array) with string keys.
fn map_of(value: &Value) -> HashMap<String, Value> {
    value
        .as_map_iter()
        .unwrap_or_else(|| panic!("not a map: {value:?}"))
        .map(|(k, v)| (text(k), v.clone()))
        .collect()
}

fn text(value: &Value) -> String {
    redis::from_redis_value_ref(value).unwrap_or_else(|e| panic!("not a string: {value:?}: {e}"))
}

fn int(value: &Value) -> i64 {
    redis::from_redis_value_ref(value).unwrap_or_else(|e| panic!("not an integer: {value:?}: {e}"))
}

fn texts(value: &Value) -> Vec<String> {
    redis::from_redis_value_ref(value).unwrap_or_else(|e| panic!("not strings: {value:?}: {e}"))
}

/// The text of a bulk-string reply in raw form (`$N\r\n...\r\n`), checked for framing.
fn bulk_text(reply: &[u8]) -> String {
    let value = parse_reply(reply);
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes).unwrap(),
        Value::VerbatimString { text, .. } => text,
        other => panic!("expected a bulk string, got {other:?}"),
    }
}

#[test]
fn ping_and_echo() {
    let server = ServerProcess::target(&[]);
    let mut raw = server.raw();
    assert_reply!(raw.cmd(&[b"PING"]), b"+PONG\r\n");
    assert_reply!(raw.cmd(&[b"ping"]), b"+PONG\r\n");
    assert_reply!(
        raw.cmd(&[b"PING", b"hello world"]),
        b"$11\r\nhello world\r\n"
    );
    assert_reply!(
        raw.cmd(&[b"PING", b"a", b"b"]),
        b"-ERR wrong number of arguments for 'ping' command\r\n"
    );
    assert_reply!(raw.cmd(&[b"ECHO", b"hi"]), b"$2\r\nhi\r\n");
    assert_reply!(raw.cmd(&[b"ECHO", b""]), b"$0\r\n\r\n");
    assert_reply!(raw.cmd(&[b"ECHO", b"\0\r\n"]), b"$3\r\n\0\r\n\r\n");
    assert_reply!(
        raw.cmd(&[b"ECHO"]),
        b"-ERR wrong number of arguments for 'echo' command\r\n"
    );
}

fn check_hello_fields(reply: &HashMap<String, Value>, proto: i64) {
    for field in [
        "server", "version", "proto", "id", "mode", "role", "modules",
    ] {
        assert!(
            reply.contains_key(field),
            "HELLO reply lacks {field:?}: {reply:?}"
        );
    }
    assert_eq!(int(&reply["proto"]), proto);
    assert!(int(&reply["id"]) > 0);
    assert_eq!(text(&reply["mode"]), "standalone");
    assert_eq!(text(&reply["role"]), "master");
    assert!(!text(&reply["version"]).is_empty());
    assert!(
        reply["modules"].as_sequence().is_some(),
        "modules: {:?}",
        reply["modules"]
    );
}

#[test]
fn hello() {
    let server = ServerProcess::target(&[]);
    let mut raw = server.raw();

    let reply = raw.cmd(&[b"HELLO", b"2"]);
    assert!(reply.starts_with(b"*14\r\n"), "HELLO 2: {}", escape(&reply));
    check_hello_fields(&map_of(&parse_reply(&reply)), 2);
    // Still RESP2: a nil is $-1.
    assert_reply!(raw.cmd(&[b"GET", b"missing"]), b"$-1\r\n");

    let reply = raw.cmd(&[b"HELLO", b"3"]);
    assert!(reply.starts_with(b"%7\r\n"), "HELLO 3: {}", escape(&reply));
    let fields = map_of(&parse_reply(&reply));
    check_hello_fields(&fields, 3);
    // The id is this connection's CLIENT ID.
    let id = raw.cmd(&[b"CLIENT", b"ID"]);
    assert_reply!(id, format!(":{}\r\n", int(&fields["id"])).as_bytes());
    // Now RESP3: a nil is _, a map is %.
    assert_reply!(raw.cmd(&[b"GET", b"missing"]), b"_\r\n");
    let reply = raw.cmd(&[b"HELLO"]);
    assert!(reply.starts_with(b"%7\r\n"), "HELLO: {}", escape(&reply));
    // Back to RESP2.
    let reply = raw.cmd(&[b"HELLO", b"2", b"SETNAME", b"conn-a"]);
    assert!(
        reply.starts_with(b"*14\r\n"),
        "HELLO 2 SETNAME: {}",
        escape(&reply)
    );
    assert_reply!(raw.cmd(&[b"CLIENT", b"GETNAME"]), b"$6\r\nconn-a\r\n");

    assert_reply!(
        raw.cmd(&[b"HELLO", b"4"]),
        b"-NOPROTO unsupported protocol version\r\n"
    );
    assert_reply!(
        raw.cmd(&[b"HELLO", b"1"]),
        b"-NOPROTO unsupported protocol version\r\n"
    );
    assert_reply!(
        raw.cmd(&[b"HELLO", b"abc"]),
        b"-ERR Protocol version is not an integer or out of range\r\n"
    );
    assert_reply!(
        raw.cmd(&[b"HELLO", b"3", b"foo"]),
        b"-ERR Syntax error in HELLO option 'foo'\r\n"
    );
    // A failed HELLO changes nothing.
    assert_reply!(raw.cmd(&[b"GET", b"missing"]), b"$-1\r\n");
}

#[test]
fn auth_with_requirepass() {
    let server = ServerProcess::target(&["--requirepass", "secret"]);
    let mut raw = server.raw();

    assert_reply!(
        raw.cmd(&[b"GET", b"k"]),
        b"-NOAUTH Authentication required.\r\n"
    );
    assert_reply!(
        raw.cmd(&[b"SET", b"k", b"v"]),
        b"-NOAUTH Authentication required.\r\n"
    );
    let wrongpass: &[u8] = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n";
    assert_reply!(raw.cmd(&[b"AUTH", b"wrong"]), wrongpass);
    assert_reply!(raw.cmd(&[b"AUTH", b"default", b"wrong"]), wrongpass);
    assert_reply!(raw.cmd(&[b"AUTH", b"nobody", b"secret"]), wrongpass);
    assert_reply!(
        raw.cmd(&[b"GET", b"k"]),
        b"-NOAUTH Authentication required.\r\n"
    );
    assert_reply!(raw.cmd(&[b"AUTH", b"secret"]), b"+OK\r\n");
    assert_reply!(raw.cmd(&[b"SET", b"k", b"v"]), b"+OK\r\n");
    assert_reply!(raw.cmd(&[b"GET", b"k"]), b"$1\r\nv\r\n");

    // The two-argument form.
    let mut second = server.raw();
    assert_reply!(second.cmd(&[b"AUTH", b"default", b"secret"]), b"+OK\r\n");
    assert_reply!(second.cmd(&[b"GET", b"k"]), b"$1\r\nv\r\n");

    // HELLO with AUTH.
    let mut third = server.raw();
    let reply = third.cmd(&[b"HELLO", b"3", b"AUTH", b"default", b"wrong"]);
    assert_reply!(reply, wrongpass);
    let reply = third.cmd(&[b"HELLO", b"3", b"AUTH", b"default", b"secret"]);
    assert!(
        reply.starts_with(b"%7\r\n"),
        "HELLO 3 AUTH: {}",
        escape(&reply)
    );
    assert_reply!(third.cmd(&[b"GET", b"k"]), b"$1\r\nv\r\n");

    // RESET drops the authentication.
    assert_reply!(raw.cmd(&[b"RESET"]), b"+RESET\r\n");
    assert_reply!(
        raw.cmd(&[b"GET", b"k"]),
        b"-NOAUTH Authentication required.\r\n"
    );
}

#[test]
fn auth_without_password_configured() {
    let server = ServerProcess::target(&[]);
    let mut raw = server.raw();
    assert_reply!(
        raw.cmd(&[b"AUTH", b"foo"]),
        &b"-ERR AUTH <password> called without any password configured for the default user. \
           Are you sure your configuration is correct?\r\n"[..]
    );
    assert_reply!(
        raw.cmd(&[b"AUTH", b"a", b"b", b"c"]),
        b"-ERR syntax error\r\n"
    );
}

#[test]
fn select() {
    let server = ServerProcess::target(&[]);
    let mut raw = server.raw();
    assert_reply!(raw.cmd(&[b"SELECT", b"0"]), b"+OK\r\n");
    // SELECT 1 is not tested: redis-server has 16 databases, lagwise-node only db 0.
    assert_reply!(
        raw.cmd(&[b"SELECT", b"16"]),
        b"-ERR DB index is out of range\r\n"
    );
    assert_reply!(
        raw.cmd(&[b"SELECT", b"-1"]),
        b"-ERR DB index is out of range\r\n"
    );
    assert_reply!(
        raw.cmd(&[b"SELECT", b"abc"]),
        b"-ERR value is not an integer or out of range\r\n"
    );
}

#[test]
fn quit() {
    let server = ServerProcess::target(&[]);
    let mut raw = server.raw();
    assert_reply!(raw.cmd(&[b"SET", b"k", b"v"]), b"+OK\r\n");
    // Commands pipelined after QUIT are not executed.
    raw.send(b"*1\r\n$4\r\nQUIT\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nafter\r\n");
    assert_reply!(raw.read_reply(), b"+OK\r\n");
    assert!(raw.expect_closed(), "connection still open after QUIT");
    assert!(
        raw.pending().is_empty(),
        "data after QUIT: {}",
        escape(raw.pending())
    );
    let mut other = server.raw();
    assert_reply!(other.cmd(&[b"GET", b"k"]), b"$1\r\nv\r\n");
}

#[test]
fn reset() {
    let server = ServerProcess::target(&[]);
    let mut raw = server.raw();
    assert_reply!(raw.cmd(&[b"CLIENT", b"SETNAME", b"before"]), b"+OK\r\n");
    let reply = raw.cmd(&[b"HELLO", b"3"]);
    assert!(reply.starts_with(b"%"), "{}", escape(&reply));
    assert_reply!(raw.cmd(&[b"GET", b"missing"]), b"_\r\n");
    assert_reply!(raw.cmd(&[b"RESET"]), b"+RESET\r\n");
    // Back to RESP2, name cleared; the connection stays open.
    assert_reply!(raw.cmd(&[b"GET", b"missing"]), b"$-1\r\n");
    assert_reply!(raw.cmd(&[b"CLIENT", b"GETNAME"]), b"$-1\r\n");
    assert_reply!(raw.cmd(&[b"PING"]), b"+PONG\r\n");
}

#[test]
fn info_format_and_sections() {
    let server = ServerProcess::target(&[]);
    let mut raw = server.raw();
    assert_reply!(raw.cmd(&[b"SET", b"k", b"v"]), b"+OK\r\n");
    assert_reply!(raw.cmd(&[b"SET", b"t", b"v", b"EX", b"100"]), b"+OK\r\n");

    let info = bulk_text(&raw.cmd(&[b"INFO"]));
    assert!(
        info.starts_with("# Server\r\n"),
        "INFO starts with {:?}",
        &info[..20.min(info.len())]
    );
    assert!(info.ends_with("\r\n"), "INFO does not end with CRLF");
    for (i, b) in info.bytes().enumerate() {
        if b == b'\n' {
            assert!(
                i > 0 && info.as_bytes()[i - 1] == b'\r',
                "bare LF at byte {i}"
            );
        }
    }
    for line in info.split("\r\n").filter(|l| !l.is_empty()) {
        assert!(
            line.starts_with("# ") || line.contains(':'),
            "INFO line is neither a header nor field:value: {line:?}"
        );
    }
    for header in [
        "# Server",
        "# Clients",
        "# Memory",
        "# Persistence",
        "# Stats",
        "# Replication",
        "# Keyspace",
    ] {
        assert!(
            info.split("\r\n").any(|l| l == header),
            "INFO lacks the {header:?} section"
        );
    }

    let port = server.port().to_string();
    assert!(info_field(&info, "redis_version").is_some_and(|v| !v.is_empty()));
    assert_eq!(
        info_field(&info, "tcp_port").as_deref(),
        Some(port.as_str())
    );
    assert_eq!(
        info_field(&info, "process_id").as_deref(),
        Some(server.pid().to_string().as_str())
    );
    let clients: i64 = info_field(&info, "connected_clients")
        .unwrap()
        .parse()
        .unwrap();
    assert!(clients >= 1, "connected_clients {clients}");
    let used: i64 = info_field(&info, "used_memory").unwrap().parse().unwrap();
    assert!(used > 0, "used_memory {used}");
    assert_eq!(info_field(&info, "role").as_deref(), Some("master"));
    let replid = info_field(&info, "master_replid").unwrap();
    assert!(
        replid.len() == 40 && replid.bytes().all(|b| b.is_ascii_hexdigit()),
        "master_replid {replid:?}"
    );
    let offset: i64 = info_field(&info, "master_repl_offset")
        .unwrap()
        .parse()
        .unwrap();
    assert!(offset >= 0);
    let processed: i64 = info_field(&info, "total_commands_processed")
        .unwrap()
        .parse()
        .unwrap();
    assert!(processed >= 2, "total_commands_processed {processed}");
    assert!(
        info_field(&info, "loading").is_some(),
        "persistence: loading"
    );
    let db0 = info_field(&info, "db0").unwrap();
    assert!(db0.starts_with("keys=2,expires=1,avg_ttl="), "db0:{db0}");

    // One section at a time, names case-insensitive.
    for (section, header, field) in [
        ("server", "# Server", "tcp_port"),
        ("clients", "# Clients", "connected_clients"),
        ("memory", "# Memory", "used_memory"),
        ("persistence", "# Persistence", "loading"),
        ("stats", "# Stats", "total_commands_processed"),
        ("REPLICATION", "# Replication", "role"),
        ("keyspace", "# Keyspace", "db0"),
    ] {
        let text = bulk_text(&raw.cmd(&[b"INFO", section.as_bytes()]));
        assert!(
            text.starts_with(&format!("{header}\r\n")),
            "INFO {section}: {text:?}"
        );
        assert!(text.ends_with("\r\n"), "INFO {section} ends without CRLF");
        assert_eq!(
            text.lines().filter(|l| l.starts_with("# ")).count(),
            1,
            "INFO {section} has one section"
        );
        assert!(
            info_field(&text, field).is_some(),
            "INFO {section} lacks {field}"
        );
    }
    // Several sections at once.
    let text = bulk_text(&raw.cmd(&[b"INFO", b"server", b"keyspace"]));
    assert!(
        text.contains("# Server\r\n") && text.contains("# Keyspace\r\n"),
        "{text:?}"
    );
    for all in [&b"all"[..], b"everything", b"default"] {
        let text = bulk_text(&raw.cmd(&[b"INFO", all]));
        assert!(text.starts_with("# Server\r\n"), "INFO {}", escape(all));
        assert!(text.contains("# Keyspace\r\n"), "INFO {}", escape(all));
    }

    // An empty keyspace has no db0 line.
    assert_reply!(raw.cmd(&[b"FLUSHALL"]), b"+OK\r\n");
    let text = bulk_text(&raw.cmd(&[b"INFO", b"keyspace"]));
    assert_eq!(text, "# Keyspace\r\n");
}

/// `INFO commandstats` as `name -> (calls, rejected_calls, failed_calls)`, each line's shape
/// checked: `cmdstat_<name>:calls=N,usec=N,usec_per_call=N.NN,rejected_calls=N,failed_calls=N`.
fn commandstats(raw: &mut RawConn) -> HashMap<String, (u64, u64, u64)> {
    let text = bulk_text(&raw.cmd(&[b"INFO", b"commandstats"]));
    let mut lines = text.split("\r\n");
    assert_eq!(lines.next(), Some("# Commandstats"), "{text:?}");
    let mut out = HashMap::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, fields) = line
            .strip_prefix("cmdstat_")
            .and_then(|l| l.split_once(':'))
            .unwrap_or_else(|| panic!("not a cmdstat line: {line:?}"));
        let fields: Vec<(&str, &str)> = fields
            .split(',')
            .map(|f| f.split_once('=').unwrap_or_else(|| panic!("{line:?}")))
            .collect();
        let keys: Vec<&str> = fields.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            keys,
            [
                "calls",
                "usec",
                "usec_per_call",
                "rejected_calls",
                "failed_calls"
            ],
            "{line:?}"
        );
        let number = |i: usize| -> u64 {
            fields[i]
                .1
                .parse()
                .unwrap_or_else(|_| panic!("{} in {line:?}", fields[i].0))
        };
        let (calls, usec) = (number(0), number(1));
        let per_call = fields[2].1;
        let decimals = per_call.split_once('.').map(|(_, d)| d.len());
        assert_eq!(decimals, Some(2), "usec_per_call in {line:?}");
        let per_call: f64 = per_call.parse().unwrap();
        let expected = if calls == 0 {
            0.0
        } else {
            usec as f64 / calls as f64
        };
        assert!(
            (per_call - expected).abs() <= 0.01,
            "usec_per_call {per_call} is not usec / calls in {line:?}"
        );
        out.insert(name.to_string(), (calls, number(3), number(4)));
    }
    out
}

/// The same session against redis-server 7.0 and lagwise-node gives the same commandstats
/// (calls, rejected and failed calls per command; times differ, their shape does not).
#[test]
fn info_commandstats_counts_as_redis_does() {
    let mut seen = Vec::new();
    for kind in [ServerKind::Redis, ServerKind::Lagwise] {
        let server = ServerProcess::start(kind, &[]);
        let mut raw = server.raw();
        assert_reply!(raw.cmd(&[b"CONFIG", b"RESETSTAT"]), b"+OK\r\n");
        assert_reply!(raw.cmd(&[b"SET", b"a", b"1"]), b"+OK\r\n");
        assert_reply!(raw.cmd(&[b"GET", b"a"]), b"$1\r\n1\r\n");
        assert_reply!(raw.cmd(&[b"CLIENT", b"SETNAME", b"c1"]), b"+OK\r\n");
        // Rejected: the wrong arity, before the command runs.
        assert_reply!(
            raw.cmd(&[b"INCR", b"a", b"b"]),
            b"-ERR wrong number of arguments for 'incr' command\r\n"
        );
        // Failed: it ran and replied with an error.
        assert!(raw.cmd(&[b"LPUSH", b"a", b"x"]).starts_with(b"-WRONGTYPE"));
        // Unknown commands and subcommands are not counted.
        assert!(raw
            .cmd(&[b"NOSUCHCOMMAND"])
            .starts_with(b"-ERR unknown command"));
        assert!(raw
            .cmd(&[b"CLIENT", b"NOSUCH"])
            .starts_with(b"-ERR unknown subcommand"));
        // A transaction's commands count as EXEC runs them; one that fails there is failed.
        assert_reply!(raw.cmd(&[b"MULTI"]), b"+OK\r\n");
        assert_reply!(raw.cmd(&[b"SET", b"k", b"v"]), b"+QUEUED\r\n");
        assert_reply!(raw.cmd(&[b"INCR", b"k"]), b"+QUEUED\r\n");
        let exec = raw.cmd(&[b"EXEC"]);
        assert!(exec.starts_with(b"*2\r\n+OK\r\n-ERR"), "{}", escape(&exec));
        // A transaction doomed by a rejected command: EXEC itself fails.
        assert_reply!(raw.cmd(&[b"MULTI"]), b"+OK\r\n");
        assert!(raw.cmd(&[b"GET"]).starts_with(b"-ERR wrong number"));
        assert!(raw.cmd(&[b"EXEC"]).starts_with(b"-EXECABORT"));

        let stats = commandstats(&mut raw);
        let expected: HashMap<String, (u64, u64, u64)> = [
            ("config|resetstat", (1, 0, 0)),
            ("set", (2, 0, 0)),
            ("get", (1, 1, 0)),
            ("client|setname", (1, 0, 0)),
            ("incr", (1, 1, 1)),
            ("lpush", (1, 0, 1)),
            ("multi", (2, 0, 0)),
            ("exec", (2, 0, 1)),
        ]
        .into_iter()
        .map(|(name, counts)| (name.to_string(), counts))
        .collect();
        assert_eq!(stats, expected, "{kind:?}");

        // Only INFO commandstats, all and everything show the section; INFO (default) not.
        for (args, shown) in [
            (&[&b"INFO"[..]][..], false),
            (&[b"INFO", b"default"], false),
            (&[b"INFO", b"all"], true),
            (&[b"INFO", b"everything"], true),
            (&[b"INFO", b"default", b"commandstats"], true),
        ] {
            let text = bulk_text(&raw.cmd(args));
            assert_eq!(
                text.contains("\r\n# Commandstats\r\ncmdstat_"),
                shown,
                "{kind:?} {}",
                escape(&args.concat())
            );
        }
        // In Redis's order: after CPU, before Keyspace.
        let all = bulk_text(&raw.cmd(&[b"INFO", b"all"]));
        let at = |header: &str| all.find(header).unwrap_or(usize::MAX);
        assert!(
            at("# CPU") < at("# Commandstats") && at("# Commandstats") < at("# Keyspace"),
            "{kind:?}: {all}"
        );

        // CONFIG RESETSTAT clears the counters (and then counts itself).
        assert_reply!(raw.cmd(&[b"CONFIG", b"RESETSTAT"]), b"+OK\r\n");
        let reset = commandstats(&mut raw);
        let only: HashMap<String, (u64, u64, u64)> =
            HashMap::from([("config|resetstat".to_string(), (1, 0, 0))]);
        assert_eq!(reset, only, "{kind:?} after CONFIG RESETSTAT");
        seen.push(stats);
    }
    assert_eq!(seen[0], seen[1], "redis-server and lagwise-node differ");
}

#[test]
fn client_id_and_names() {
    let server = ServerProcess::target(&[]);
    let mut a = server.raw();
    let mut b = server.raw();
    let id_a = int(&parse_reply(&a.cmd(&[b"CLIENT", b"ID"])));
    let id_b = int(&parse_reply(&b.cmd(&[b"CLIENT", b"ID"])));
    assert!(id_a > 0 && id_b > id_a, "ids {id_a}, {id_b}");
    assert_reply!(
        a.cmd(&[b"CLIENT", b"ID"]),
        format!(":{id_a}\r\n").as_bytes()
    );

    assert_reply!(a.cmd(&[b"CLIENT", b"GETNAME"]), b"$-1\r\n");
    assert_reply!(a.cmd(&[b"CLIENT", b"SETNAME", b"worker-1"]), b"+OK\r\n");
    assert_reply!(a.cmd(&[b"CLIENT", b"GETNAME"]), b"$8\r\nworker-1\r\n");
    assert_reply!(b.cmd(&[b"CLIENT", b"GETNAME"]), b"$-1\r\n");
    let invalid: &[u8] =
        b"-ERR Client names cannot contain spaces, newlines or special characters.\r\n";
    assert_reply!(a.cmd(&[b"CLIENT", b"SETNAME", b"a b"]), invalid);
    assert_reply!(a.cmd(&[b"CLIENT", b"SETNAME", b"a\nb"]), invalid);
    assert_reply!(a.cmd(&[b"CLIENT", b"GETNAME"]), b"$8\r\nworker-1\r\n");
    // An empty name clears it.
    assert_reply!(a.cmd(&[b"CLIENT", b"SETNAME", b""]), b"+OK\r\n");
    assert_reply!(a.cmd(&[b"CLIENT", b"GETNAME"]), b"$-1\r\n");
    assert_reply!(
        a.cmd(&[b"CLIENT", b"SETNAME"]),
        b"-ERR wrong number of arguments for 'client|setname' command\r\n"
    );
    let reply = a.cmd(&[b"CLIENT", b"NOSUCH"]);
    assert!(
        reply.starts_with(b"-ERR unknown subcommand 'NOSUCH'. Try CLIENT HELP."),
        "{}",
        escape(&reply)
    );
}

/// `field=value` pairs of one CLIENT LIST / CLIENT INFO line.
fn client_fields(line: &str) -> HashMap<String, String> {
    line.split(' ')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn client_list_and_info() {
    let server = ServerProcess::target(&[]);
    let mut a = server.raw();
    let mut b = server.raw();
    assert_reply!(a.cmd(&[b"CLIENT", b"SETNAME", b"alpha"]), b"+OK\r\n");
    let id_a = int(&parse_reply(&a.cmd(&[b"CLIENT", b"ID"])));
    let id_b = int(&parse_reply(&b.cmd(&[b"CLIENT", b"ID"])));

    let list = bulk_text(&a.cmd(&[b"CLIENT", b"LIST"]));
    assert!(list.ends_with('\n'), "CLIENT LIST ends with a newline");
    let lines: Vec<HashMap<String, String>> = list.lines().map(client_fields).collect();
    assert!(lines.len() >= 2, "CLIENT LIST: {list:?}");
    let line_a = lines
        .iter()
        .find(|f| f.get("id") == Some(&id_a.to_string()))
        .unwrap_or_else(|| panic!("client {id_a} not in CLIENT LIST: {list:?}"));
    assert_eq!(line_a["name"], "alpha");
    assert_eq!(line_a["addr"], a.stream().local_addr().unwrap().to_string());
    assert_eq!(line_a["laddr"], server.addr());
    assert_eq!(line_a["db"], "0");
    assert_eq!(line_a["cmd"], "client|list");
    for field in ["age", "idle", "flags", "resp", "fd"] {
        assert!(
            line_a.contains_key(field),
            "CLIENT LIST lacks {field}: {list:?}"
        );
    }
    assert!(lines.iter().any(|f| f.get("id") == Some(&id_b.to_string())));

    // CLIENT LIST ID filters.
    let only_b = bulk_text(&a.cmd(&[b"CLIENT", b"LIST", b"ID", id_b.to_string().as_bytes()]));
    assert_eq!(only_b.lines().count(), 1, "{only_b:?}");
    assert_eq!(
        client_fields(only_b.lines().next().unwrap())["id"],
        id_b.to_string()
    );

    let info = bulk_text(&b.cmd(&[b"CLIENT", b"INFO"]));
    assert!(info.ends_with('\n'));
    assert_eq!(info.lines().count(), 1, "{info:?}");
    let fields = client_fields(info.trim_end());
    assert_eq!(fields["id"], id_b.to_string());
    assert_eq!(fields["addr"], b.stream().local_addr().unwrap().to_string());
    assert_eq!(fields["name"], "");
    assert_eq!(fields["cmd"], "client|info");
    assert_eq!(fields["resp"], "2");
}

/// CLIENT SETINFO exists since Redis 7.2; the reference redis-server here may be older.
fn supports_setinfo(server: &ServerProcess, raw: &mut RawConn) -> bool {
    if server.kind() == ServerKind::Lagwise {
        return true;
    }
    let info = bulk_text(&raw.cmd(&[b"INFO", b"server"]));
    let version = info_field(&info, "redis_version").unwrap();
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (7, 2)
}

#[test]
fn client_setinfo() {
    let server = ServerProcess::target(&[]);
    let mut raw = server.raw();
    if !supports_setinfo(&server, &mut raw) {
        eprintln!("skipped: this redis-server predates CLIENT SETINFO (7.2)");
        return;
    }
    assert_reply!(
        raw.cmd(&[b"CLIENT", b"SETINFO", b"LIB-NAME", b"mylib"]),
        b"+OK\r\n"
    );
    assert_reply!(
        raw.cmd(&[b"CLIENT", b"SETINFO", b"lib-ver", b"1.2.3"]),
        b"+OK\r\n"
    );
    let fields = client_fields(bulk_text(&raw.cmd(&[b"CLIENT", b"INFO"])).trim_end());
    assert_eq!(fields["lib-name"], "mylib");
    assert_eq!(fields["lib-ver"], "1.2.3");
    assert_reply!(
        raw.cmd(&[b"CLIENT", b"SETINFO", b"foo", b"bar"]),
        b"-ERR Unrecognized option 'foo'\r\n"
    );
    let reply = raw.cmd(&[b"CLIENT", b"SETINFO", b"lib-name", b"a b"]);
    assert_reply!(
        reply,
        b"-ERR lib-name cannot contain spaces, newlines or special characters.\r\n"
    );
}

#[test]
fn client_kill() {
    let server = ServerProcess::target(&[]);
    let mut admin = server.raw();

    // By ID (new form: replies with the number of clients killed).
    let mut victim = server.raw();
    let id = int(&parse_reply(&victim.cmd(&[b"CLIENT", b"ID"])));
    assert_reply!(
        admin.cmd(&[b"CLIENT", b"KILL", b"ID", id.to_string().as_bytes()]),
        b":1\r\n"
    );
    assert!(victim.expect_closed(), "killed (ID) connection not closed");
    assert_reply!(
        admin.cmd(&[b"CLIENT", b"KILL", b"ID", id.to_string().as_bytes()]),
        b":0\r\n"
    );

    // By ADDR (new form).
    let mut victim = server.raw();
    assert_reply!(victim.cmd(&[b"PING"]), b"+PONG\r\n");
    let addr = victim.stream().local_addr().unwrap().to_string();
    assert_reply!(
        admin.cmd(&[b"CLIENT", b"KILL", b"ADDR", addr.as_bytes()]),
        b":1\r\n"
    );
    assert!(
        victim.expect_closed(),
        "killed (ADDR) connection not closed"
    );

    // Old form: CLIENT KILL ip:port replies OK or an error.
    let mut victim = server.raw();
    assert_reply!(victim.cmd(&[b"PING"]), b"+PONG\r\n");
    let addr = victim.stream().local_addr().unwrap().to_string();
    assert_reply!(
        admin.cmd(&[b"CLIENT", b"KILL", addr.as_bytes()]),
        b"+OK\r\n"
    );
    assert!(
        victim.expect_closed(),
        "killed (old form) connection not closed"
    );
    assert_reply!(
        admin.cmd(&[b"CLIENT", b"KILL", addr.as_bytes()]),
        b"-ERR No such client\r\n"
    );

    assert_reply!(
        admin.cmd(&[b"CLIENT", b"KILL", b"ID", b"abc"]),
        b"-ERR client-id should be greater than 0\r\n"
    );
    assert_reply!(
        admin.cmd(&[b"CLIENT", b"KILL", b"FOO", b"bar"]),
        b"-ERR syntax error\r\n"
    );
    // The admin connection is unaffected.
    assert_reply!(admin.cmd(&[b"PING"]), b"+PONG\r\n");
}

#[test]
fn client_pause_write() {
    let server = ServerProcess::target(&[]);
    let mut admin = server.raw();
    let mut client = server.raw();
    assert_reply!(client.cmd(&[b"SET", b"k", b"before"]), b"+OK\r\n");

    // A short pause expires on its own: the write waits for it, then runs. Timed from before
    // the PAUSE, so the bound holds however slow the machine is.
    let started = Instant::now();
    assert_reply!(
        admin.cmd(&[b"CLIENT", b"PAUSE", b"300", b"WRITE"]),
        b"+OK\r\n"
    );
    assert_reply!(client.cmd(&[b"GET", b"k"]), b"$6\r\nbefore\r\n");
    assert_reply!(client.cmd(&[b"SET", b"k", b"during"]), b"+OK\r\n");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "a write ran after {:?} of a 300 ms CLIENT PAUSE WRITE",
        started.elapsed()
    );

    // A long pause ends with UNPAUSE.
    assert_reply!(
        admin.cmd(&[b"CLIENT", b"PAUSE", b"60000", b"WRITE"]),
        b"+OK\r\n"
    );
    client.send(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nafter\r\n");
    client.set_read_timeout(Duration::from_millis(300));
    assert!(
        client.try_read_reply().is_err(),
        "a write was answered during CLIENT PAUSE WRITE"
    );
    let mut reader = server.raw();
    assert_reply!(reader.cmd(&[b"GET", b"k"]), b"$6\r\nduring\r\n");
    assert_reply!(admin.cmd(&[b"CLIENT", b"UNPAUSE"]), b"+OK\r\n");
    client.set_read_timeout(Duration::from_secs(5));
    assert_reply!(client.read_reply(), b"+OK\r\n");
    assert_reply!(reader.cmd(&[b"GET", b"k"]), b"$5\r\nafter\r\n");

    assert_reply!(
        admin.cmd(&[b"CLIENT", b"PAUSE", b"abc"]),
        b"-ERR timeout is not an integer or out of range\r\n"
    );
    assert_reply!(
        admin.cmd(&[b"CLIENT", b"PAUSE", b"100", b"FOO"]),
        b"-ERR CLIENT PAUSE mode must be WRITE or ALL\r\n"
    );
}

#[test]
fn client_no_evict() {
    let server = ServerProcess::target(&[]);
    let mut raw = server.raw();
    assert_reply!(raw.cmd(&[b"CLIENT", b"NO-EVICT", b"ON"]), b"+OK\r\n");
    assert_reply!(raw.cmd(&[b"CLIENT", b"NO-EVICT", b"off"]), b"+OK\r\n");
    assert_reply!(
        raw.cmd(&[b"CLIENT", b"NO-EVICT", b"maybe"]),
        b"-ERR syntax error\r\n"
    );
}

#[tokio::test]
async fn time() {
    let server = ServerProcess::target(&[]);
    let mut con = server.conn().await;
    let (secs, micros): (String, String) = query(&mut con, &["TIME"]).await;
    let secs: u64 = secs.parse().unwrap();
    let micros: u64 = micros.parse().unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(secs.abs_diff(now) <= 5, "TIME {secs} vs now {now}");
    assert!(micros < 1_000_000, "microseconds {micros}");
}

#[tokio::test]
async fn config_get() {
    let server = ServerProcess::target(&[]);
    let mut con = server.conn().await;

    let port: Vec<String> = query(&mut con, &["CONFIG", "GET", "port"]).await;
    assert_eq!(port, vec!["port".to_string(), server.port().to_string()]);
    // Names are case-insensitive (the name echoed back differs between versions).
    let port: Vec<String> = query(&mut con, &["config", "get", "PORT"]).await;
    assert_eq!(port.len(), 2, "{port:?}");
    assert_eq!(port[1], server.port().to_string());

    let max: HashMap<String, String> = query(&mut con, &["CONFIG", "GET", "*max*"]).await;
    assert!(max.contains_key("maxclients"), "{max:?}");
    assert!(max.contains_key("maxmemory"), "{max:?}");
    assert!(max.keys().all(|k| k.contains("max")), "{max:?}");
    assert_eq!(max["maxclients"], "10000");

    let several: HashMap<String, String> =
        query(&mut con, &["CONFIG", "GET", "port", "bind"]).await;
    assert_eq!(several.len(), 2, "{several:?}");
    assert_eq!(several["bind"], "127.0.0.1");

    let none: Vec<String> = query(&mut con, &["CONFIG", "GET", "no-such-parameter"]).await;
    assert!(none.is_empty(), "{none:?}");
    assert_eq!(
        query_err(&mut con, &["CONFIG", "GET"]).await,
        "ERR wrong number of arguments for 'config|get' command"
    );
}

#[tokio::test]
async fn config_set() {
    let server = ServerProcess::target(&[]);
    let mut con = server.conn().await;

    assert_eq!(
        query::<String>(&mut con, &["CONFIG", "SET", "timeout", "100"]).await,
        "OK"
    );
    let got: Vec<String> = query(&mut con, &["CONFIG", "GET", "timeout"]).await;
    assert_eq!(got, vec!["timeout", "100"]);
    assert_eq!(
        query::<String>(&mut con, &["CONFIG", "SET", "maxclients", "500"]).await,
        "OK"
    );
    let got: Vec<String> = query(&mut con, &["CONFIG", "GET", "maxclients"]).await;
    assert_eq!(got, vec!["maxclients", "500"]);
    // Several at once.
    assert_eq!(
        query::<String>(
            &mut con,
            &["CONFIG", "SET", "timeout", "0", "maxclients", "600"]
        )
        .await,
        "OK"
    );
    let got: HashMap<String, String> =
        query(&mut con, &["CONFIG", "GET", "timeout", "maxclients"]).await;
    assert_eq!(got["timeout"], "0");
    assert_eq!(got["maxclients"], "600");

    assert_eq!(
        query_err(&mut con, &["CONFIG", "SET", "no-such-parameter", "1"]).await,
        "ERR Unknown option or number of arguments for CONFIG SET - 'no-such-parameter'"
    );
    assert_eq!(
        query_err(&mut con, &["CONFIG", "SET", "timeout", "abc"]).await,
        "ERR CONFIG SET failed (possibly related to argument 'timeout') - argument couldn't be parsed into an integer"
    );
    assert_eq!(
        query_err(
            &mut con,
            &["CONFIG", "SET", "timeout", "10", "timeout", "20"]
        )
        .await,
        "ERR CONFIG SET failed (possibly related to argument 'timeout') - duplicate parameter"
    );
    assert_eq!(
        query_err(&mut con, &["CONFIG", "SET", "timeout"]).await,
        "ERR wrong number of arguments for 'config|set' command"
    );
    // A failed CONFIG SET changes nothing.
    let got: Vec<String> = query(&mut con, &["CONFIG", "GET", "timeout"]).await;
    assert_eq!(got, vec!["timeout", "0"]);
}

#[tokio::test]
async fn config_set_timeout_closes_idle_clients() {
    let server = ServerProcess::target(&[]);
    let mut con = server.conn().await;
    assert_eq!(
        query::<String>(&mut con, &["CONFIG", "SET", "timeout", "1"]).await,
        "OK"
    );
    let mut idle = server.raw();
    assert_reply!(idle.cmd(&[b"PING"]), b"+PONG\r\n");
    // The server checks idle clients about once a second: allow a few seconds.
    let started = Instant::now();
    let closed = idle.expect_closed() || idle.expect_closed();
    assert!(
        closed,
        "idle client not closed after {:?} with timeout 1",
        started.elapsed()
    );
}

#[tokio::test]
async fn config_resetstat() {
    let server = ServerProcess::target(&[]);
    let mut con = server.conn().await;
    for _ in 0..10 {
        let _: () = query(&mut con, &["SET", "k", "v"]).await;
    }
    let stats: String = query(&mut con, &["INFO", "stats"]).await;
    let before: i64 = info_field(&stats, "total_commands_processed")
        .unwrap()
        .parse()
        .unwrap();
    assert!(before >= 10, "total_commands_processed {before}");
    assert_eq!(
        query::<String>(&mut con, &["CONFIG", "RESETSTAT"]).await,
        "OK"
    );
    let stats: String = query(&mut con, &["INFO", "stats"]).await;
    let after: i64 = info_field(&stats, "total_commands_processed")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        after < 5,
        "total_commands_processed after RESETSTAT: {after}"
    );
}

#[tokio::test]
async fn debug_sleep() {
    let server = ServerProcess::target(&[]);
    let mut con = server.conn().await;
    let started = Instant::now();
    assert_eq!(
        query::<String>(&mut con, &["DEBUG", "SLEEP", "0.1"]).await,
        "OK"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(90),
        "DEBUG SLEEP 0.1 returned after {:?}",
        started.elapsed()
    );
    assert_eq!(
        query::<String>(&mut con, &["DEBUG", "SLEEP", "0"]).await,
        "OK"
    );
}

#[tokio::test]
async fn command_introspection() {
    let server = ServerProcess::target(&[]);
    let mut con = server.conn().await;

    let count: i64 = query(&mut con, &["COMMAND", "COUNT"]).await;
    assert!(count > 0, "COMMAND COUNT {count}");

    let info: Vec<Value> = query(&mut con, &["COMMAND", "INFO", "get"]).await;
    assert_eq!(info.len(), 1);
    let get = info[0].as_sequence().unwrap();
    assert_eq!(text(&get[0]), "get");
    assert_eq!(int(&get[1]), 2, "arity");
    let flags = texts(&get[2]);
    assert!(flags.contains(&"readonly".to_string()), "flags {flags:?}");
    assert!(flags.contains(&"fast".to_string()), "flags {flags:?}");
    assert_eq!(int(&get[3]), 1, "first key");
    assert_eq!(int(&get[4]), 1, "last key");
    assert_eq!(int(&get[5]), 1, "key step");

    let info: Vec<Value> = query(&mut con, &["COMMAND", "INFO", "SET", "no-such-command"]).await;
    assert_eq!(info.len(), 2);
    let set = info[0].as_sequence().unwrap();
    assert_eq!(text(&set[0]), "set");
    assert_eq!(int(&set[1]), -3);
    assert!(texts(&set[2]).contains(&"write".to_string()));
    assert_eq!(info[1], Value::Nil);

    let keys: Vec<String> = query(
        &mut con,
        &["COMMAND", "GETKEYS", "mset", "a", "1", "b", "2"],
    )
    .await;
    assert_eq!(keys, vec!["a", "b"]);
    let keys: Vec<String> = query(&mut con, &["COMMAND", "GETKEYS", "GET", "k"]).await;
    assert_eq!(keys, vec!["k"]);
    assert_eq!(
        query_err(&mut con, &["COMMAND", "GETKEYS", "no-such-command", "a"]).await,
        "ERR Invalid command specified"
    );

    let docs: Value = query(&mut con, &["COMMAND", "DOCS", "get"]).await;
    let docs = map_of(&docs);
    let get = map_of(
        docs.get("get")
            .unwrap_or_else(|| panic!("COMMAND DOCS get: {docs:?}")),
    );
    assert!(!text(&get["summary"]).is_empty());
    assert_eq!(text(&get["group"]), "string");
}

#[test]
fn shutdown() {
    let mut server = ServerProcess::target(&[]);
    let mut raw = server.raw();
    assert_reply!(raw.cmd(&[b"SET", b"k", b"v"]), b"+OK\r\n");
    raw.send(b"*1\r\n$8\r\nSHUTDOWN\r\n");
    assert!(raw.expect_closed(), "connection open after SHUTDOWN");
    assert!(
        raw.pending().is_empty(),
        "SHUTDOWN replied {}",
        escape(raw.pending())
    );
    let status = server
        .wait_exit(Duration::from_secs(10))
        .expect("server still running 10 s after SHUTDOWN");
    assert!(status.success(), "exit status after SHUTDOWN: {status}");
}

#[test]
fn shutdown_nosave() {
    let mut server = ServerProcess::target(&[]);
    let mut raw = server.raw();
    raw.send(b"*2\r\n$8\r\nSHUTDOWN\r\n$6\r\nNOSAVE\r\n");
    assert!(raw.expect_closed(), "connection open after SHUTDOWN NOSAVE");
    let status = server
        .wait_exit(Duration::from_secs(10))
        .expect("server still running 10 s after SHUTDOWN NOSAVE");
    assert!(
        status.success(),
        "exit status after SHUTDOWN NOSAVE: {status}"
    );
    assert!(
        std::fs::read_dir(server.dir()).unwrap().all(|e| {
            let name = e.unwrap().file_name();
            !name.to_string_lossy().ends_with(".rdb")
        }),
        "SHUTDOWN NOSAVE wrote an RDB file"
    );
}

#[test]
fn client_kill_skips_the_caller() {
    let server = ServerProcess::target(&[]);
    let mut raw = server.raw();
    let id = int(&parse_reply(&raw.cmd(&[b"CLIENT", b"ID"])));
    let id = id.to_string();
    // SKIPME defaults to yes.
    assert_reply!(
        raw.cmd(&[b"CLIENT", b"KILL", b"ID", id.as_bytes()]),
        b":0\r\n"
    );
    assert_reply!(raw.cmd(&[b"PING"]), b"+PONG\r\n");
    assert_reply!(
        raw.cmd(&[b"CLIENT", b"KILL", b"ID", id.as_bytes(), b"SKIPME", b"no"]),
        b":1\r\n"
    );
    assert!(
        raw.expect_closed(),
        "CLIENT KILL ... SKIPME no did not close the caller"
    );
}

#[test]
fn maxclients_is_enforced() {
    let server = ServerProcess::target(&[]);
    let mut admin = server.raw();
    assert_reply!(
        admin.cmd(&[b"CONFIG", b"SET", b"maxclients", b"3"]),
        b"+OK\r\n"
    );
    let mut second = server.raw();
    assert_reply!(second.cmd(&[b"PING"]), b"+PONG\r\n");
    let mut third = server.raw();
    assert_reply!(third.cmd(&[b"PING"]), b"+PONG\r\n");
    // The fourth is told and closed, without sending anything.
    let mut fourth = server.raw();
    assert_reply!(
        fourth.read_reply(),
        b"-ERR max number of clients reached\r\n"
    );
    assert!(fourth.expect_closed());
    // A slot frees up when a client leaves.
    drop(third);
    let mut again = None;
    for _ in 0..100 {
        let mut conn = server.raw();
        conn.send(b"PING\r\n");
        if conn.read_reply() == b"+PONG\r\n" {
            again = Some(conn);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(again.is_some(), "no client accepted after one left");
    let stats = bulk_text(&admin.cmd(&[b"INFO", b"stats"]));
    let rejected: i64 = info_field(&stats, "rejected_connections")
        .unwrap()
        .parse()
        .unwrap();
    assert!(rejected >= 1, "rejected_connections {rejected}");
}

#[test]
fn config_rewrite_without_a_config_file() {
    let server = ServerProcess::target(&[]);
    let mut raw = server.raw();
    assert_reply!(
        raw.cmd(&[b"CONFIG", b"REWRITE"]),
        b"-ERR The server is running without a config file\r\n"
    );
}

#[tokio::test]
async fn command_list() {
    let server = ServerProcess::target(&[]);
    let mut con = server.conn().await;
    let names: Vec<String> = query(&mut con, &["COMMAND", "LIST"]).await;
    for name in ["get", "set", "ping", "client|kill", "config|get"] {
        assert!(names.iter().any(|n| n == name), "COMMAND LIST lacks {name}");
    }
    let count: i64 = query(&mut con, &["COMMAND", "COUNT"]).await;
    assert!(
        names.len() as i64 >= count,
        "COMMAND LIST {} < COMMAND COUNT {count}",
        names.len()
    );
}
