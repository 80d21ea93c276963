//! Unit tests for the command table. The expected key positions are what redis-server 7.0.15
//! answered to `COMMAND GETKEYS` / `COMMAND GETKEYSANDFLAGS` for the same arguments.

use super::*;

fn positions(args: &[&str]) -> Vec<usize> {
    let cmd = lookup(args[0].as_bytes()).unwrap_or_else(|| panic!("no command {}", args[0]));
    let mut out = vec![99]; // key_positions must clear what was there
    cmd.key_positions(args, &mut out);
    out
}

#[test]
fn lookup_is_case_insensitive() {
    for name in [&b"get"[..], b"GET", b"GeT"] {
        let cmd = lookup(name).expect("get is in the table");
        assert_eq!(cmd.name, "get");
    }
    assert_eq!(lookup(b"ZUNIONSTORE").map(|c| c.name), Some("zunionstore"));
    assert!(lookup(b"nosuchcommand").is_none());
    assert!(lookup(b"").is_none());
    assert!(lookup(&[b'g'; 100]).is_none());
}

#[test]
fn arity_ok_get_and_mset() {
    let get = lookup(b"get").expect("get");
    assert_eq!(get.arity, 2);
    assert!(!get.arity_ok(1));
    assert!(get.arity_ok(2));
    assert!(!get.arity_ok(3));

    let mset = lookup(b"mset").expect("mset");
    assert_eq!(mset.arity, -3);
    assert!(!mset.arity_ok(2));
    assert!(mset.arity_ok(3));
    assert!(mset.arity_ok(5));
    assert!(mset.arity_ok(100));
}

#[test]
fn subcommand_lookup() {
    let config = lookup(b"config").expect("config");
    assert_eq!(config.arity, -2);
    let get = config.subcommand(b"GET").expect("config|get");
    assert_eq!(get.name, "config|get");
    assert_eq!(get.arity, -3);
    assert!(get.flags.contains(Flags::ADMIN));
    assert!(config.subcommand(b"get").is_some());
    assert!(config.subcommand(b"nosuch").is_none());
    assert!(lookup(b"get").expect("get").subcommand(b"x").is_none());
    // Subcommands are not top-level entries.
    assert!(lookup(b"config|get").is_none());
}

#[test]
fn flags_of_set_and_get() {
    let set = lookup(b"set").expect("set");
    assert!(set.flags.contains(Flags::WRITE));
    assert!(set.flags.contains(Flags::DENYOOM));
    assert!(set.is_write());
    assert!(!set.is_readonly());
    assert_eq!(set.flags.names().collect::<Vec<_>>(), ["write", "denyoom"]);

    let get = lookup(b"get").expect("get");
    assert!(get.flags.contains(Flags::READONLY));
    assert!(get.flags.contains(Flags::FAST));
    assert!(get.is_readonly());
    assert!(!get.is_write());
    assert_eq!(get.flags.names().collect::<Vec<_>>(), ["readonly", "fast"]);
}

#[test]
fn get_entry_matches_command_info() {
    let get = lookup(b"get").expect("get");
    assert_eq!((get.first_key, get.last_key, get.step), (1, 1, 1));
    assert_eq!(get.acl_categories, ["@read", "@string", "@fast"]);
    assert_eq!(
        get.key_specs,
        [KeySpec {
            flags: &["RO", "access"],
            begin_search: BeginSearch::Index(1),
            find_keys: FindKeys::Range {
                last_key: 0,
                key_step: 1,
                limit: 0
            },
        }]
    );
    assert_eq!(get.docs.summary, "Get the value of a key");
    assert_eq!(get.docs.since, "1.0.0");
    assert_eq!(get.docs.group, "string");
    assert_eq!(get.docs.complexity, "O(1)");
}

#[test]
fn table_is_sorted_unique_and_complete() {
    let cmds = all();
    // redis-server 7.0.15: COMMAND COUNT is 240.
    assert_eq!(cmds.len(), 240);
    assert!(cmds.windows(2).all(|w| w[0].name < w[1].name));
    let mut subs = 0;
    for c in cmds {
        assert_eq!(c.name, c.name.to_ascii_lowercase());
        assert!(!c.name.contains('|'), "{}", c.name);
        assert!(c.subcommands.windows(2).all(|w| w[0].name < w[1].name));
        for s in c.subcommands {
            let (parent, _) = s.name.split_once('|').expect("parent|sub");
            assert_eq!(parent, c.name);
            assert!(s.subcommands.is_empty());
            subs += 1;
        }
        assert_eq!(lookup(c.name.as_bytes()).map(|l| l.name), Some(c.name));
    }
    assert_eq!(subs, 127);
}

/// The representative set, as redis-server 7.0.15's `COMMAND GETKEYS` answers it.
#[test]
fn key_positions_match_redis_getkeys() {
    let cases: &[(&[&str], &[usize])] = &[
        (&["GET", "k"], &[1]),
        (&["MSET", "a", "1", "b", "2"], &[1, 3]),
        (&["MGET", "a", "b", "c"], &[1, 2, 3]),
        (&["DEL", "a", "b"], &[1, 2]),
        (&["EVAL", "s", "2", "k1", "k2", "a1"], &[3, 4]),
        (
            &["ZUNIONSTORE", "d", "2", "a", "b", "WEIGHTS", "1", "2"],
            &[1, 3, 4],
        ),
        (
            &["XREAD", "COUNT", "2", "STREAMS", "s1", "s2", "0", "0"],
            &[4, 5],
        ),
        // GETKEYSANDFLAGS: k is RO+access, dst is OW+update. SORT's key specs for BY/GET and
        // STORE are "unknown", so Redis falls back to its SORT key finder.
        (&["SORT", "k", "BY", "x", "STORE", "dst"], &[1, 5]),
        // The KEYS spec is "incomplete": Redis falls back to its MIGRATE key finder, which
        // drops the empty key at 3.
        (
            &["MIGRATE", "h", "p", "", "0", "5", "KEYS", "a", "b"],
            &[7, 8],
        ),
        (&["LMPOP", "2", "a", "b", "LEFT"], &[2, 3]),
        (&["BLMOVE", "a", "b", "LEFT", "RIGHT", "0"], &[1, 2]),
        (
            &["GEORADIUS", "k", "0", "0", "1", "km", "STORE", "d"],
            &[1, 7],
        ),
        (&["OBJECT", "ENCODING", "k"], &[2]),
        (&["XGROUP", "CREATE", "s", "g", "$"], &[2]),
        (&["BITFIELD_RO", "k", "GET", "u8", "0"], &[1]),
    ];
    for (args, expected) in cases {
        assert_eq!(positions(args), *expected, "{args:?}");
    }
}

/// Subcommands find the same keys whether asked through the parent or directly.
#[test]
fn key_positions_of_subcommands() {
    let object = lookup(b"object").expect("object");
    let encoding = object.subcommand(b"encoding").expect("object|encoding");
    let mut out = Vec::new();
    encoding.key_positions(&["OBJECT", "ENCODING", "k"], &mut out);
    assert_eq!(out, [2]);
    object.key_positions(&["OBJECT", "NOSUCH", "k"], &mut out);
    assert_eq!(out, [] as [usize; 0]);
    object.key_positions(&["OBJECT"], &mut out);
    assert_eq!(out, [] as [usize; 0]);
}

/// Edge cases, again as redis-server 7.0.15's `COMMAND GETKEYS` answers them ("Invalid
/// arguments specified for command" counts as no keys).
#[test]
fn key_positions_edge_cases_match_redis_getkeys() {
    let cases: &[(&[&str], &[usize])] = &[
        (&["MIGRATE", "h", "p", "k", "0", "5"], &[3]),
        // A key and KEYS together: a syntax error, so no keys.
        (&["MIGRATE", "h", "p", "k", "0", "5", "KEYS", "a", "b"], &[]),
        // The last STORE wins.
        (&["SORT", "k", "STORE", "d1", "STORE", "d2"], &[1, 5]),
        (&["SORT", "k", "LIMIT", "0", "10", "GET", "#"], &[1]),
        (&["SORT_RO", "k", "BY", "x", "GET", "y"], &[1]),
        (&["EVAL", "s", "0"], &[]),
        // More keys than arguments.
        (&["EVAL", "s", "3", "k1", "k2"], &[]),
        (&["ZUNIONSTORE", "d", "2", "a"], &[]),
        // Not a valid key count for the key specs, but atoi() reads 2 in the fallback, which
        // puts the destination last.
        (&["EVAL", "s", "2abc", "k1", "k2"], &[3, 4]),
        (&["ZUNIONSTORE", "d", "2abc", "a", "b"], &[3, 4, 1]),
        // An odd number of stream arguments: the key spec still yields one key.
        (&["XREAD", "STREAMS", "a", "b", "0"], &[2]),
        (
            &[
                "XREADGROUP",
                "GROUP",
                "g",
                "c",
                "NOACK",
                "STREAMS",
                "s",
                "0",
            ],
            &[6],
        ),
        (
            &["GEORADIUSBYMEMBER", "k", "m", "1", "km", "STOREDIST", "d"],
            &[1, 6],
        ),
        (&["SET", "k", "v", "GET"], &[1]),
        (&["MSET", "a", "1", "b"], &[1, 3]),
        (&["PING"], &[]),
    ];
    for (args, expected) in cases {
        assert_eq!(positions(args), *expected, "{args:?}");
    }
}

#[test]
fn movable_key_commands_are_flagged() {
    for name in [
        "blmpop",
        "bzmpop",
        "eval",
        "eval_ro",
        "evalsha",
        "evalsha_ro",
        "fcall",
        "fcall_ro",
        "georadius",
        "georadiusbymember",
        "lmpop",
        "migrate",
        "sintercard",
        "sort",
        "sort_ro",
        "xread",
        "xreadgroup",
        "zdiff",
        "zdiffstore",
        "zinter",
        "zintercard",
        "zinterstore",
        "zmpop",
        "zunion",
        "zunionstore",
    ] {
        let cmd = lookup(name.as_bytes()).expect(name);
        assert!(cmd.flags.contains(Flags::MOVABLE_KEYS), "{name}");
    }
    assert!(!lookup(b"get")
        .expect("get")
        .flags
        .contains(Flags::MOVABLE_KEYS));
}
