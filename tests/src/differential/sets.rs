//! Differential families for sets.
//!
//! Keys are `s:1`..`s:8` (plus, now and then, a shared key from [`Gen::key`], so that
//! WRONGTYPE paths and sets living among strings are exercised). Members come from a small pool
//! (integers, canonical-integer look-alikes, short and long strings, binary, empty) so that sets
//! overlap, move between intset and the other encodings, and sometimes grow past the listpack
//! limit in bursts.
//!
//! What cannot be compared byte for byte:
//! - unordered replies (SMEMBERS, SINTER, SUNION, SDIFF, SPOP with a count that empties the
//!   set, SSCAN's member list) are sorted;
//! - SSCAN is only sent with cursor 0 and a COUNT far above the set sizes, where redis-server's
//!   hashtable scan also completes in one call;
//! - random picks (SRANDMEMBER, SPOP) are compared by shape (their length, or that a member
//!   came back), and a random SPOP is followed by a DEL of its key, so both keyspaces stay
//!   equal;
//! - OBJECT ENCODING: Redis 7.0 has no listpack for sets, so `listpack` is read as
//!   `hashtable`; `intset` decisions agree and are compared.

use super::{pick_invalid, sort_scan_members as sort_scan, Cmd, Family, Frame, Gen, Step};

pub fn families() -> Vec<Family> {
    vec![
        Family {
            name: "set-write",
            weight: 12,
            generate: set_write,
        },
        Family {
            name: "set-read",
            weight: 10,
            generate: set_read,
        },
        Family {
            name: "set-algebra",
            weight: 8,
            generate: set_algebra,
        },
        Family {
            name: "set-random",
            weight: 4,
            generate: set_random,
        },
        Family {
            name: "set-invalid",
            weight: 3,
            generate: set_invalid,
        },
    ]
}

/// Commands that read a whole value of this type, for the end-of-run keyspace comparison.
pub fn readers(key: &[u8]) -> Vec<Cmd> {
    vec![Cmd::of(&[b"SMEMBERS" as &[u8], key]).sorted()]
}

const SET_KEYS: &[&[u8]] = &[
    b"s:1", b"s:2", b"s:3", b"s:4", b"s:5", b"s:6", b"s:7", b"s:8",
];

fn set_key(g: &mut Gen) -> Vec<u8> {
    if g.rng.chance(8) {
        g.key()
    } else {
        g.rng.pick(SET_KEYS).to_vec()
    }
}

/// A key a command may create a set at: only our own, so that the shared keys' families
/// (which compare OBJECT ENCODING exactly) never meet a set there.
fn own_key(g: &mut Gen) -> Vec<u8> {
    g.rng.pick(SET_KEYS).to_vec()
}

fn set_keys(g: &mut Gen, lo: u64, hi: u64) -> Vec<Vec<u8>> {
    let n = lo + g.rng.below(hi - lo + 1);
    (0..n).map(|_| set_key(g)).collect()
}

fn member(g: &mut Gen) -> Vec<u8> {
    match g.rng.below(100) {
        0..=39 => g.rng.range(-20, 20).to_string().into_bytes(),
        40..=64 => vec![b'a' + g.rng.below(16) as u8],
        65..=79 => g
            .rng
            .pick(&[
                "007",
                "-0",
                "+1",
                " 1",
                "1.5",
                "9223372036854775807",
                "-9223372036854775808",
                "9223372036854775808",
                "",
                "h\u{e9}llo",
                "hello world",
                "0x10",
            ])
            .as_bytes()
            .to_vec(),
        80..=84 => b"\x00\xff\r\n".to_vec(),
        85..=89 => {
            // Around the listpack value limit (64 bytes).
            let n = *g.rng.pick(&[63usize, 64, 65, 100]);
            vec![b'x'; n]
        }
        _ => format!("m{}", g.rng.below(200)).into_bytes(),
    }
}

fn members(g: &mut Gen, lo: u64, hi: u64) -> Vec<Vec<u8>> {
    let n = lo + g.rng.below(hi - lo + 1);
    (0..n).map(|_| member(g)).collect()
}

/// Redis 7.0 reports small sets as `hashtable` where Valkey says `listpack`.
fn normalize_encoding(reply: &[u8]) -> Vec<u8> {
    if reply == b"$8\r\nlistpack\r\n" {
        b"$9\r\nhashtable\r\n".to_vec()
    } else {
        reply.to_vec()
    }
}

/// OBJECT ENCODING of one of the set keys (shared keys may hold lists, whose encodings
/// differ from Redis 7.0's in other ways).
fn object_encoding(g: &mut Gen) -> Cmd {
    let k = g.rng.pick(SET_KEYS).to_vec();
    Cmd::of(&[b"OBJECT" as &[u8], b"ENCODING", &k])
        .check(super::Check::Normalize(normalize_encoding))
}

/// Random replies: an aggregate keeps only its header (its length), a bulk string becomes a
/// marker; errors and nulls stay as they are.
fn shape_only(reply: &[u8]) -> Vec<u8> {
    match Frame::parse(reply) {
        Some(Frame::Agg(kind, Some(items))) => {
            format!("{}{}", kind as char, items.len()).into_bytes()
        }
        Some(Frame::Bulk(b'$', Some(_))) => b"<member>".to_vec(),
        _ => reply.to_vec(),
    }
}

fn set_write(g: &mut Gen) -> Vec<Step> {
    let k = own_key(g);
    let c = match g.rng.below(20) {
        0..=7 => {
            let m = members(g, 1, 6);
            g.cmd("SADD").arg(&k).args(m)
        }
        8 => {
            // A burst past the listpack limit.
            let start = g.rng.below(100);
            let n = 100 + g.rng.below(50);
            let m: Vec<String> = (start..start + n).map(|i| format!("m{i}")).collect();
            g.cmd("SADD").arg(&k).args(m)
        }
        9 => {
            // Many integers at once.
            let n = 1 + g.rng.below(140);
            let m: Vec<String> = (0..n).map(|_| g.rng.range(-300, 300).to_string()).collect();
            g.cmd("SADD").arg(&k).args(m)
        }
        10..=14 => {
            let m = members(g, 1, 5);
            let k = set_key(g);
            g.cmd("SREM").arg(k).args(m)
        }
        15..=17 => {
            let (src, dst) = (set_key(g), own_key(g));
            let m = member(g);
            g.cmd("SMOVE").arg(src).arg(dst).arg(m)
        }
        18 => g.cmd("SPOP").arg(&k).arg("1000"),
        _ => return vec![Step::DumpRestore(k)],
    };
    let c = if c.args[0].eq_ignore_ascii_case(b"SPOP") {
        c.sorted()
    } else {
        c
    };
    vec![Step::Cmd(c)]
}

fn set_read(g: &mut Gen) -> Vec<Step> {
    let k = set_key(g);
    let c = match g.rng.below(16) {
        0..=2 => g.cmd("SISMEMBER").arg(&k).arg(member(g)),
        3..=4 => {
            let m = members(g, 1, 5);
            g.cmd("SMISMEMBER").arg(&k).args(m)
        }
        5..=6 => g.cmd("SCARD").arg(&k),
        7..=9 => g.cmd("SMEMBERS").arg(&k).sorted(),
        10..=11 => {
            let count = g.casing("COUNT");
            g.cmd("SSCAN")
                .arg(&k)
                .arg("0")
                .arg(count)
                .arg("1000")
                .check(super::Check::Normalize(sort_scan))
        }
        12..=13 => {
            let pattern = *g
                .rng
                .pick(&["*", "1*", "-*", "m1?", "[a-c]", "*x*", "m*", ""]);
            let (mk, ck) = (g.casing("MATCH"), g.casing("COUNT"));
            let c = g.cmd("SSCAN").arg(&k).arg("0");
            let c = if g.rng.chance(50) {
                c.arg(mk).arg(pattern).arg(ck).arg("1000")
            } else {
                c.arg(ck).arg("1000").arg(mk).arg(pattern)
            };
            c.check(super::Check::Normalize(sort_scan))
        }
        14 => object_encoding(g),
        _ => g.cmd("TYPE").arg(&k),
    };
    vec![Step::Cmd(c)]
}

fn set_algebra(g: &mut Gen) -> Vec<Step> {
    let keys = set_keys(g, 1, 4);
    let c = match g.rng.below(12) {
        0..=1 => g.cmd("SINTER").args(&keys).sorted(),
        2..=3 => g.cmd("SUNION").args(&keys).sorted(),
        4..=5 => g.cmd("SDIFF").args(&keys).sorted(),
        6 => {
            let dst = own_key(g);
            g.cmd("SINTERSTORE").arg(dst).args(&keys)
        }
        7 => {
            let dst = own_key(g);
            g.cmd("SUNIONSTORE").arg(dst).args(&keys)
        }
        8 => {
            let dst = own_key(g);
            g.cmd("SDIFFSTORE").arg(dst).args(&keys)
        }
        _ => {
            let c = g.cmd("SINTERCARD").arg(keys.len().to_string()).args(&keys);
            if g.rng.chance(50) {
                let limit = g.rng.below(6).to_string();
                let word = g.casing("LIMIT");
                c.arg(word).arg(limit)
            } else {
                c
            }
        }
    };
    let mut steps = vec![Step::Cmd(c)];
    // Stored results: compare what was stored and how.
    if g.rng.chance(30) {
        steps.push(Step::Cmd(object_encoding(g)));
    }
    steps
}

fn set_random(g: &mut Gen) -> Vec<Step> {
    let k = set_key(g);
    let shape = super::Check::Normalize(shape_only);
    match g.rng.below(10) {
        0..=2 => vec![Step::Cmd(g.cmd("SRANDMEMBER").arg(&k).check(shape))],
        3..=5 => {
            let n = *g.rng.pick(&[0i64, 1, 2, 5, 50, 1000, -1, -3, -20]);
            vec![Step::Cmd(
                g.cmd("SRANDMEMBER").arg(&k).arg(n.to_string()).check(shape),
            )]
        }
        6..=7 => {
            // A random pop, then the key is dropped so both keyspaces agree again.
            let k = own_key(g);
            let pop = if g.rng.chance(50) {
                g.cmd("SPOP").arg(&k).check(shape)
            } else {
                let n = g.rng.below(4).to_string();
                g.cmd("SPOP").arg(&k).arg(n).check(shape)
            };
            vec![Step::Cmd(pop), Step::Cmd(Cmd::of(&[b"DEL" as &[u8], &k]))]
        }
        _ => {
            // A one-member set pops deterministically.
            let m = member(g);
            vec![
                Step::Cmd(Cmd::of(&[b"DEL" as &[u8], b"s:8"])),
                Step::Cmd(Cmd::of(&[b"SADD" as &[u8], b"s:8", &m])),
                Step::Cmd(
                    Cmd::of(&[b"OBJECT" as &[u8], b"ENCODING", b"s:8"])
                        .check(super::Check::Normalize(normalize_encoding)),
                ),
                Step::Cmd(g.cmd("SPOP").arg("s:8")),
                Step::Cmd(g.cmd("EXISTS").arg("s:8")),
            ]
        }
    }
}

fn set_invalid(g: &mut Gen) -> Vec<Step> {
    let k = set_key(g);
    let k = k.as_slice();
    let templates: Vec<Vec<&[u8]>> = vec![
        vec![b"SADD", k],
        vec![b"SREM", k],
        vec![b"SISMEMBER", k],
        vec![b"SISMEMBER", k, b"a", b"b"],
        vec![b"SMISMEMBER", k],
        vec![b"SMEMBERS"],
        vec![b"SMEMBERS", k, k],
        vec![b"SCARD"],
        vec![b"SMOVE", k, k],
        vec![b"SINTER"],
        vec![b"SUNION"],
        vec![b"SDIFF"],
        vec![b"SINTERSTORE", k],
        vec![b"SUNIONSTORE", k],
        vec![b"SDIFFSTORE", k],
        vec![b"SINTERCARD", b"1"],
        vec![b"SINTERCARD", b"0", k],
        vec![b"SINTERCARD", b"-1", k],
        vec![b"SINTERCARD", b"abc", k],
        vec![b"SINTERCARD", b"3", k, k],
        vec![b"SINTERCARD", b"1", k, b"LIMIT"],
        vec![b"SINTERCARD", b"1", k, b"LIMIT", b"-1"],
        vec![b"SINTERCARD", b"1", k, b"LIMIT", b"x"],
        vec![b"SINTERCARD", b"1", k, b"FOO", b"1"],
        vec![b"SINTERCARD", b"1", k, k],
        vec![b"SPOP"],
        vec![b"SPOP", k, b"-1"],
        vec![b"SPOP", k, b"abc"],
        vec![b"SPOP", k, b"1", b"2"],
        vec![b"SPOP", k, b"0"],
        vec![b"SPOP", b"never:exists", b"5"],
        vec![b"SRANDMEMBER"],
        vec![b"SRANDMEMBER", k, b"abc"],
        vec![b"SRANDMEMBER", k, b"1.5"],
        vec![b"SRANDMEMBER", k, b"-9223372036854775808"],
        vec![b"SRANDMEMBER", k, b"1", b"2"],
        vec![b"SSCAN", k],
        vec![b"SSCAN", k, b"abc"],
        vec![b"SSCAN", k, b"0", b"COUNT"],
        vec![b"SSCAN", k, b"0", b"COUNT", b"0"],
        vec![b"SSCAN", k, b"0", b"COUNT", b"-5"],
        vec![b"SSCAN", k, b"0", b"COUNT", b"x"],
        vec![b"SSCAN", k, b"0", b"MATCH"],
        vec![b"SSCAN", k, b"0", b"TYPE", b"set"],
        vec![b"SSCAN", k, b"0", b"FOO", b"bar"],
    ];
    if g.rng.chance(25) {
        // Writes against a string: WRONGTYPE, and nothing changes.
        let m = member(g);
        let m = m.as_slice();
        let s: &[u8] = b"s:str";
        let writes: Vec<Vec<&[u8]>> = vec![
            vec![b"SADD", s, m],
            vec![b"SREM", s, m],
            vec![b"SPOP", s],
            vec![b"SPOP", s, b"2"],
            vec![b"SMOVE", s, b"s:1", m],
            vec![b"SMOVE", b"s:1", s, m],
            vec![b"SINTERSTORE", b"s:2", b"s:1", s],
            vec![b"SUNIONSTORE", b"s:2", s],
            vec![b"SDIFFSTORE", b"s:2", b"s:1", s],
            vec![b"SSCAN", s, b"0"],
        ];
        let picked = g.rng.pick(&writes).clone();
        return vec![
            Step::Cmd(Cmd::of(&[b"SET" as &[u8], s, b"string"])),
            Step::Cmd(Cmd::of(&picked)),
            Step::Cmd(Cmd::of(&[b"GET" as &[u8], s])),
            Step::Cmd(Cmd::of(&[b"DEL" as &[u8], s])),
        ];
    }
    let c = pick_invalid(g, &templates);
    vec![Step::Cmd(c)]
}
