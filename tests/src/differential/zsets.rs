//! Differential families for sorted sets.
//!
//! Keys are `z:1`..`z:8` (sorted sets over a small member space; `z:8` sometimes receives
//! 130+ members at once, so the big encoding is compared too) and `zl:1`..`zl:3`, whose
//! members all have score 0 (the lex-range commands run only there: with mixed scores
//! their result is unspecified and differs between encodings). Now and then a shared key from
//! [`Gen::key`] is used, so that WRONGTYPE paths are exercised.
//!
//! What is compared, and how:
//! - Scores are drawn so that Redis 7.0's `%.17g` and Valkey's shortest round-trip print the
//!   same text: small integers, halves and quarters, `inf`/`-inf`, `1e6`; weights are
//!   integers, halves, 0 and `inf`. Sums of those stay exact, so ZINCRBY and the
//!   aggregations print the same on both. (`1.1` would print `1.1000000000000001` on Redis
//!   7.0 and `1.1` here, and ZSCAN prints an integral `1e17` as `1e+17` on Redis 7.0 but
//!   `100000000000000000` on Valkey 8; the e2e tests cover those differences. `-0` is left
//!   out too: Redis 7.0's listpack stores it as `0`, its skiplist keeps the sign.)
//! - ZRANDMEMBER: a count of at least the size (the whole set) is compared sorted; other
//!   counts only by the reply's shape.
//! - ZSCAN runs with `COUNT 1000`: both servers return a (small or few-hundred) set in one
//!   call with cursor 0; the pairs are compared sorted.
//! - ZADD sends more than 128 pairs only to an emptied key, all distinct: Valkey 8 sizes the
//!   encoding by the command (converting an existing listpack when the pairs exceed 128, even
//!   if few are new; a new key by the longest member) and Redis 7.0 by what it inserts; with
//!   that, OBJECT ENCODING is compared.

use super::{
    blank_strings as shape, pick_invalid, sort_scan_pairs as sort_scan, Check, Cmd, Family, Gen,
    Step,
};

const KEYS: &[&[u8]] = &[
    b"z:1", b"z:2", b"z:3", b"z:4", b"z:5", b"z:6", b"z:7", b"z:8",
];

const LEX_KEYS: &[&[u8]] = &[b"zl:1", b"zl:2", b"zl:3"];

pub fn families() -> Vec<Family> {
    vec![
        Family {
            name: "zset-write",
            weight: 12,
            generate: zset_write,
        },
        Family {
            name: "zset-read",
            weight: 12,
            generate: zset_read,
        },
        Family {
            name: "zset-lex",
            weight: 4,
            generate: zset_lex,
        },
        Family {
            name: "zset-setop",
            weight: 5,
            generate: zset_setop,
        },
        Family {
            name: "zset-random",
            weight: 3,
            generate: zset_random,
        },
        Family {
            name: "zset-invalid",
            weight: 3,
            generate: zset_invalid,
        },
    ]
}

/// Commands that read a whole value of this type, for the end-of-run keyspace comparison.
pub fn readers(key: &[u8]) -> Vec<Cmd> {
    vec![
        Cmd::of(&[b"ZRANGE" as &[u8], key, b"0", b"-1", b"WITHSCORES"]),
        Cmd::of(&[b"ZCARD" as &[u8], key]),
    ]
}

/// Mostly a zset key; sometimes a shared key (often a string: WRONGTYPE) or a missing one.
fn key(g: &mut Gen) -> Vec<u8> {
    match g.rng.below(20) {
        0..=1 => g.key(),
        2 => b"never:exists".to_vec(),
        _ => g.rng.pick(KEYS).to_vec(),
    }
}

/// A key any read may use: a zset key, a lex key, or another.
fn read_key(g: &mut Gen) -> Vec<u8> {
    if g.rng.chance(15) {
        g.rng.pick(LEX_KEYS).to_vec()
    } else {
        key(g)
    }
}

fn member(g: &mut Gen) -> Vec<u8> {
    match g.rng.below(40) {
        0 => Vec::new(),
        1 => b"\x00\xff\r\n".to_vec(),
        2 => vec![b'L'; 65],
        3 => vec![b'l'; 64],
        4 => b"1".to_vec(),
        _ => format!("m{}", g.rng.below(24)).into_bytes(),
    }
}

fn lex_member(g: &mut Gen) -> Vec<u8> {
    g.rng
        .pick(&[
            &b""[..],
            b"a",
            b"aa",
            b"ab",
            b"b",
            b"ba",
            b"c",
            b"d",
            b"e",
            b"\x00",
            b"\xff",
            b"z",
        ])
        .to_vec()
}

/// A score both servers print the same.
fn score(g: &mut Gen) -> String {
    match g.rng.below(30) {
        0 => "inf".into(),
        1 => "-inf".into(),
        2 => "+inf".into(),
        3 => "0".into(),
        4 => "1e6".into(),
        5 => "2.5e2".into(),
        6..=11 => format!("{}.5", g.rng.range(-20, 20)),
        12..=14 => format!("{}.25", g.rng.range(-5, 5)),
        _ => g.rng.range(-20, 20).to_string(),
    }
}

/// A score range bound: inclusive, exclusive, infinite, and now and then an invalid one.
fn score_bound(g: &mut Gen) -> String {
    match g.rng.below(20) {
        0 => "-inf".into(),
        1 => "+inf".into(),
        2 => "(-inf".into(),
        3 => "(inf".into(),
        4 => "x".into(),
        5 => "(".into(),
        6 => String::new(),
        7..=11 => format!("({}", g.rng.range(-20, 20)),
        12 => format!("({}.5", g.rng.range(-20, 20)),
        _ => g.rng.range(-20, 20).to_string(),
    }
}

fn lex_bound(g: &mut Gen) -> Vec<u8> {
    match g.rng.below(12) {
        0 => b"-".to_vec(),
        1 => b"+".to_vec(),
        2 => b"x".to_vec(),
        3 => b"[".to_vec(),
        4 => b"(".to_vec(),
        5..=8 => [b"[".to_vec(), lex_member(g)].concat(),
        _ => [b"(".to_vec(), lex_member(g)].concat(),
    }
}

fn index(g: &mut Gen) -> String {
    match g.rng.below(10) {
        0 => g
            .rng
            .pick(&["9223372036854775807", "-9223372036854775808", "x"])
            .to_string(),
        _ => g.rng.range(-12, 12).to_string(),
    }
}

fn weight(g: &mut Gen) -> String {
    g.rng
        .pick(&["1", "2", "0", "-1", "0.5", "inf", "-inf", "3"])
        .to_string()
}

fn zset_write(g: &mut Gen) -> Vec<Step> {
    let k = key(g);
    let c = match g.rng.below(22) {
        0..=6 => {
            let mut c = g.cmd("ZADD").arg(&k);
            let flags = ["NX", "XX", "GT", "LT", "CH", "INCR"];
            if g.rng.chance(40) {
                for _ in 0..g.rng.range(1, 2) {
                    let f = *g.rng.pick(&flags);
                    c = c.arg(g.casing(f));
                }
            }
            let big = k == b"z:8" && g.rng.chance(10);
            let n = if big {
                // Distinct members, enough for the big encoding, into an emptied key (see the
                // module docs on ZADD's encoding sizing).
                let base = g.rng.below(100);
                for i in 0..130 {
                    c = c.arg(score(g)).arg(format!("big{}", base + i));
                }
                0
            } else {
                g.rng.range(1, 4)
            };
            for _ in 0..n {
                c = c.arg(score(g)).arg(member(g));
            }
            if g.rng.chance(3) {
                c = c.arg(score(g));
            }
            if big {
                return vec![g.cmd("DEL").arg(&k).into(), c.into()];
            }
            c
        }
        7..=8 => g.cmd("ZINCRBY").arg(&k).arg(score(g)).arg(member(g)),
        9..=10 => {
            let n = g.rng.range(1, 4);
            let mut c = g.cmd("ZREM").arg(&k);
            for _ in 0..n {
                c = c.arg(member(g));
            }
            c
        }
        11 => g.cmd("ZREMRANGEBYRANK").arg(&k).arg(index(g)).arg(index(g)),
        12 => g
            .cmd("ZREMRANGEBYSCORE")
            .arg(&k)
            .arg(score_bound(g))
            .arg(score_bound(g)),
        13..=14 => {
            let name = if g.rng.chance(50) {
                "ZPOPMIN"
            } else {
                "ZPOPMAX"
            };
            let mut c = g.cmd(name).arg(&k);
            if g.rng.chance(60) {
                c = c.arg(g.rng.range(-1, 4).to_string());
            }
            c
        }
        15..=16 => {
            let n = g.rng.range(1, 3);
            let mut c = g.cmd("ZMPOP").arg(n.to_string());
            for _ in 0..n {
                c = c.arg(key(g));
            }
            let side = if g.rng.chance(50) { "MIN" } else { "MAX" };
            c = c.arg(g.casing(side));
            if g.rng.chance(50) {
                c = c.arg(g.casing("COUNT")).arg(g.rng.range(0, 5).to_string());
            }
            c
        }
        17..=18 => {
            let dst = key(g);
            let src = read_key(g);
            let mut c = g.cmd("ZRANGESTORE").arg(dst).arg(src);
            c = match g.rng.below(3) {
                0 => c.arg(index(g)).arg(index(g)),
                1 => c
                    .arg(score_bound(g))
                    .arg(score_bound(g))
                    .arg(g.casing("BYSCORE")),
                _ => c
                    .arg(score_bound(g))
                    .arg(score_bound(g))
                    .arg(g.casing("BYSCORE"))
                    .arg(g.casing("REV")),
            };
            if g.rng.chance(30) {
                c = c
                    .arg(g.casing("LIMIT"))
                    .arg(g.rng.range(-1, 3).to_string())
                    .arg(g.rng.range(-1, 3).to_string());
            }
            c
        }
        19 => return vec![Step::DumpRestore(g.rng.pick(KEYS).to_vec())],
        _ => {
            // Occasionally empty a key entirely, so creation paths keep running.
            g.cmd("DEL").arg(g.rng.pick(KEYS))
        }
    };
    vec![c.into()]
}

fn zset_read(g: &mut Gen) -> Vec<Step> {
    let k = read_key(g);
    let c = match g.rng.below(22) {
        0 => g.cmd("ZCARD").arg(&k),
        1..=2 => g.cmd("ZSCORE").arg(&k).arg(member(g)),
        3 => {
            let mut c = g.cmd("ZMSCORE").arg(&k);
            for _ in 0..g.rng.range(1, 4) {
                c = c.arg(member(g));
            }
            c
        }
        4..=5 => {
            let name = if g.rng.chance(50) {
                "ZRANK"
            } else {
                "ZREVRANK"
            };
            g.cmd(name).arg(&k).arg(member(g))
        }
        6 => g
            .cmd("ZCOUNT")
            .arg(&k)
            .arg(score_bound(g))
            .arg(score_bound(g)),
        7..=9 => {
            let mut c = g.cmd("ZRANGE").arg(&k);
            let mut withscores_ok = true;
            c = match g.rng.below(3) {
                0 => c.arg(index(g)).arg(index(g)),
                1 => c
                    .arg(score_bound(g))
                    .arg(score_bound(g))
                    .arg(g.casing("BYSCORE")),
                _ => {
                    // Lex ranges only where every score is 0 (see the module docs).
                    withscores_ok = false;
                    c = g.cmd("ZRANGE").arg(g.rng.pick(LEX_KEYS));
                    c.arg(lex_bound(g)).arg(lex_bound(g)).arg(g.casing("BYLEX"))
                }
            };
            if g.rng.chance(40) {
                c = c.arg(g.casing("REV"));
            }
            if g.rng.chance(30) {
                c = c
                    .arg(g.casing("LIMIT"))
                    .arg(g.rng.range(-1, 4).to_string())
                    .arg(g.rng.range(-1, 4).to_string());
            }
            if g.rng.chance(40) && (withscores_ok || g.rng.chance(10)) {
                c = c.arg(g.casing("WITHSCORES"));
            }
            c
        }
        10..=11 => {
            let name = if g.rng.chance(50) {
                "ZRANGEBYSCORE"
            } else {
                "ZREVRANGEBYSCORE"
            };
            let mut c = g.cmd(name).arg(&k).arg(score_bound(g)).arg(score_bound(g));
            if g.rng.chance(40) {
                c = c.arg(g.casing("WITHSCORES"));
            }
            if g.rng.chance(30) {
                c = c
                    .arg(g.casing("LIMIT"))
                    .arg(g.rng.range(-1, 4).to_string())
                    .arg(g.rng.range(-1, 4).to_string());
            }
            c
        }
        12..=13 => {
            let name = if g.rng.chance(50) {
                "ZRANGE"
            } else {
                "ZREVRANGE"
            };
            let mut c = g.cmd(name).arg(&k).arg(index(g)).arg(index(g));
            if g.rng.chance(40) {
                c = c.arg(g.casing("WITHSCORES"));
            }
            c
        }
        14..=15 => g
            .cmd("ZSCAN")
            .arg(&k)
            .arg("0")
            .arg(g.casing("COUNT"))
            .arg("1000")
            .check(Check::Normalize(sort_scan)),
        16 => g
            .cmd("ZSCAN")
            .arg(&k)
            .arg("0")
            .arg(g.casing("MATCH"))
            .arg(*g.rng.pick(&["m1*", "*", "big*", "?", "[a-c]*"]))
            .arg(g.casing("COUNT"))
            .arg("1000")
            .check(Check::Normalize(sort_scan)),
        17..=18 => g.cmd("OBJECT").arg("ENCODING").arg(&k),
        19 => g.cmd("TYPE").arg(&k),
        _ => g.cmd("ZRANGE").arg(&k).arg("0").arg("-1").arg("WITHSCORES"),
    };
    vec![c.into()]
}

/// Lex-range commands, on keys whose members all have score 0.
fn zset_lex(g: &mut Gen) -> Vec<Step> {
    let k = g.rng.pick(LEX_KEYS).to_vec();
    let c = match g.rng.below(10) {
        0..=2 => {
            let mut c = g.cmd("ZADD").arg(&k);
            for _ in 0..g.rng.range(1, 4) {
                c = c.arg("0").arg(lex_member(g));
            }
            c
        }
        3 => g.cmd("ZREM").arg(&k).arg(lex_member(g)),
        4 => g
            .cmd("ZLEXCOUNT")
            .arg(&k)
            .arg(lex_bound(g))
            .arg(lex_bound(g)),
        5..=7 => {
            let name = if g.rng.chance(50) {
                "ZRANGEBYLEX"
            } else {
                "ZREVRANGEBYLEX"
            };
            let mut c = g.cmd(name).arg(&k).arg(lex_bound(g)).arg(lex_bound(g));
            if g.rng.chance(30) {
                c = c
                    .arg(g.casing("LIMIT"))
                    .arg(g.rng.range(-1, 4).to_string())
                    .arg(g.rng.range(-1, 4).to_string());
            }
            c
        }
        8 => g
            .cmd("ZREMRANGEBYLEX")
            .arg(&k)
            .arg(lex_bound(g))
            .arg(lex_bound(g)),
        _ => {
            let mut c = g
                .cmd("ZRANGESTORE")
                .arg(g.rng.pick(LEX_KEYS))
                .arg(&k)
                .arg(lex_bound(g))
                .arg(lex_bound(g))
                .arg(g.casing("BYLEX"));
            if g.rng.chance(40) {
                c = c.arg(g.casing("REV"));
            }
            c
        }
    };
    vec![c.into()]
}

fn zset_setop(g: &mut Gen) -> Vec<Step> {
    let n = g.rng.range(1, 3) as usize;
    let inputs: Vec<Vec<u8>> = (0..n)
        .map(|_| {
            if g.rng.chance(10) {
                // A plain set counts with score 1 (or a WRONGTYPE when it is a string).
                g.key()
            } else {
                read_key(g)
            }
        })
        .collect();
    let op = *g.rng.pick(&["UNION", "INTER", "DIFF"]);
    let store = g.rng.chance(40);
    let card = !store && op == "INTER" && g.rng.chance(25);
    let mut c = if card {
        g.cmd("ZINTERCARD")
    } else if store {
        let dst = key(g);
        g.cmd(&format!("Z{op}STORE")).arg(dst)
    } else {
        g.cmd(&format!("Z{op}"))
    };
    let declared = if g.rng.chance(5) { n + 1 } else { n };
    c = c.arg(declared.to_string()).args(inputs);
    if card {
        if g.rng.chance(50) {
            c = c.arg(g.casing("LIMIT")).arg(g.rng.range(-1, 3).to_string());
        }
        return vec![c.into()];
    }
    if op != "DIFF" || g.rng.chance(5) {
        if g.rng.chance(40) {
            c = c.arg(g.casing("WEIGHTS"));
            for _ in 0..n {
                c = c.arg(weight(g));
            }
        }
        if g.rng.chance(40) {
            let agg = *g.rng.pick(&["SUM", "MIN", "MAX", "AVG"]);
            c = c.arg(g.casing("AGGREGATE")).arg(g.casing(agg));
        }
    }
    if !store && g.rng.chance(50) {
        c = c.arg(g.casing("WITHSCORES"));
    }
    vec![c.into()]
}

fn zset_random(g: &mut Gen) -> Vec<Step> {
    let k = read_key(g);
    let c = match g.rng.below(5) {
        0 => g.cmd("ZRANDMEMBER").arg(&k).check(Check::Normalize(shape)),
        1..=2 => {
            let mut c = g.cmd("ZRANDMEMBER").arg(&k).arg("1000");
            if g.rng.chance(50) {
                c = c.arg(g.casing("WITHSCORES"));
            }
            c.sorted()
        }
        _ => {
            let n = *g.rng.pick(&[0i64, 1, 2, 3, 5, -1, -2, -5, -20]);
            let mut c = g.cmd("ZRANDMEMBER").arg(&k).arg(n.to_string());
            if g.rng.chance(50) {
                c = c.arg(g.casing("WITHSCORES"));
            }
            c.check(Check::Normalize(shape))
        }
    };
    vec![c.into()]
}

fn zset_invalid(g: &mut Gen) -> Vec<Step> {
    let k = g.rng.pick(KEYS).to_vec();
    let k = k.as_slice();
    let templates: Vec<Vec<&[u8]>> = vec![
        vec![b"ZADD", k, b"1"],
        vec![b"ZADD", k, b"1", b"a", b"2"],
        vec![b"ZADD", k, b"NX", b"XX", b"1", b"a"],
        vec![b"ZADD", k, b"GT", b"LT", b"1", b"a"],
        vec![b"ZADD", k, b"NX", b"GT", b"1", b"a"],
        vec![b"ZADD", k, b"INCR", b"1", b"a", b"2", b"b"],
        vec![b"ZADD", k, b"x", b"a"],
        vec![b"ZADD", k, b"nan", b"a"],
        vec![b"ZADD", k, b" 1", b"a"],
        vec![b"ZADD", k, b"1e400", b"a"],
        vec![b"ZINCRBY", k, b"x", b"a"],
        vec![b"ZINCRBY", k, b"1"],
        vec![b"ZCARD"],
        vec![b"ZSCORE", k],
        vec![b"ZRANK", k, b"a", b"WITHSCORE", b"x"],
        vec![b"ZRANGE", k, b"0"],
        vec![b"ZRANGE", k, b"0", b"1", b"LIMIT", b"0", b"1"],
        vec![b"ZRANGE", k, b"-", b"+", b"BYLEX", b"WITHSCORES"],
        vec![b"ZRANGE", k, b"0", b"1", b"BYSCORE", b"BYLEX"],
        vec![b"ZRANGE", k, b"0", b"1", b"REV", b"REV"],
        vec![b"ZRANGE", k, b"0", b"1", b"LIMIT", b"1"],
        vec![b"ZRANGE", k, b"0", b"1", b"BYSCORE", b"LIMIT", b"x", b"1"],
        vec![b"ZRANGEBYSCORE", k, b"0", b"1", b"REV"],
        vec![b"ZRANGEBYLEX", k, b"a", b"b"],
        vec![b"ZRANGEBYLEX", k, b"-", b"+", b"WITHSCORES"],
        vec![b"ZREVRANGE", k, b"0", b"1", b"BYSCORE"],
        vec![b"ZRANGESTORE", b"z:1", k, b"0", b"1", b"WITHSCORES"],
        vec![b"ZCOUNT", k, b"a", b"b"],
        vec![b"ZLEXCOUNT", k, b"a", b"b"],
        vec![b"ZREMRANGEBYRANK", k, b"x", b"1"],
        vec![b"ZREMRANGEBYLEX", k, b"1", b"2"],
        vec![b"ZPOPMIN", k, b"1", b"2"],
        vec![b"ZPOPMIN", k, b"-1"],
        vec![b"ZPOPMAX", k, b"x"],
        vec![b"ZMPOP", b"0", k, b"MIN"],
        vec![b"ZMPOP", b"x", k, b"MIN"],
        vec![b"ZMPOP", b"2", k, b"MIN"],
        vec![b"ZMPOP", b"1", k, b"UP"],
        vec![b"ZMPOP", b"1", k, b"MIN", b"COUNT"],
        vec![b"ZMPOP", b"1", k, b"MIN", b"COUNT", b"0"],
        vec![b"ZMPOP", b"1", k, b"MIN", b"COUNT", b"1", b"COUNT", b"1"],
        vec![b"ZRANDMEMBER", k, b"x"],
        vec![b"ZRANDMEMBER", k, b"1", b"WITHSCORE"],
        vec![b"ZRANDMEMBER", k, b"1", b"WITHSCORES", b"x"],
        vec![b"ZRANDMEMBER", k, b"-9223372036854775808"],
        vec![b"ZRANDMEMBER", k, b"9223372036854775807", b"WITHSCORES"],
        vec![b"ZUNION", b"0", k],
        vec![b"ZUNION", b"x", k],
        vec![b"ZUNION", b"2", k],
        vec![b"ZUNION", b"1", k, b"WEIGHTS"],
        vec![b"ZUNION", b"1", k, b"WEIGHTS", b"x"],
        vec![b"ZUNION", b"1", k, b"AGGREGATE", b"AVG"],
        vec![b"ZUNIONSTORE", b"z:1", b"1", k, b"WITHSCORES"],
        vec![b"ZINTERCARD", b"0", k],
        vec![b"ZINTERCARD", b"1", k, b"LIMIT", b"-1"],
        vec![b"ZINTERCARD", b"1", k, b"WITHSCORES"],
        vec![b"ZDIFF", b"1", k, b"AGGREGATE", b"MIN"],
        vec![b"ZSCAN", k],
        vec![b"ZSCAN", k, b"abc"],
        vec![b"ZSCAN", k, b"0", b"COUNT", b"0"],
        vec![b"ZSCAN", k, b"0", b"COUNT", b"x"],
        vec![b"ZSCAN", k, b"0", b"MATCH"],
        vec![b"ZSCAN", k, b"0", b"FOO", b"1"],
    ];
    let c = pick_invalid(g, &templates);
    vec![c.into()]
}
