//! Differential families for lists.
//!
//! Keys are `l:1`..`l:8`, with now and then a shared key from [`Gen::key`] so that WRONGTYPE
//! paths are exercised. Lists are only ever created under `l:*` (see [`own_key`]). Elements come mostly from a
//! small pool so that LREM, LPOS, LINSERT and LSET find what they look for; `l:8` sometimes
//! receives a long run of elements or a 9000-byte one.
//!
//! What is left out, and why:
//! - OBJECT ENCODING: Redis 7.0 has no listpack lists (it always says quicklist); the e2e tests
//!   assert Valkey 8's names.
//! - `LPOS ... RANK -9223372036854775808` and `LREM key -9223372036854775808 ...`: Valkey
//!   (like Redis 7.2) rejects LONG_MIN there, whose negation overflows; Redis 7.0 accepts it.
//!   Indexes and counts are drawn from ranges that avoid it.
//!
//! Everything else is compared exactly: list replies have a defined order.

use super::{pick_invalid, Cmd, Family, Gen, Step};

const KEYS: &[&[u8]] = &[
    b"l:1", b"l:2", b"l:3", b"l:4", b"l:5", b"l:6", b"l:7", b"l:8",
];

const POOL: &[&[u8]] = &[
    b"a", b"b", b"c", b"a", b"1", b"2", b"10", b"-1", b"", b"x y", b"hello",
];

pub fn families() -> Vec<Family> {
    vec![
        Family {
            name: "list-push-pop",
            weight: 12,
            generate: list_push_pop,
        },
        Family {
            name: "list-read",
            weight: 10,
            generate: list_read,
        },
        Family {
            name: "list-edit",
            weight: 8,
            generate: list_edit,
        },
        Family {
            name: "list-move",
            weight: 5,
            generate: list_move,
        },
        Family {
            name: "list-invalid",
            weight: 3,
            generate: list_invalid,
        },
    ]
}

/// Commands that read a whole value of this type, for the end-of-run keyspace comparison.
pub fn readers(key: &[u8]) -> Vec<Cmd> {
    vec![
        Cmd::of(&[b"LRANGE" as &[u8], key, b"0", b"-1"]),
        Cmd::of(&[b"LLEN" as &[u8], key]),
    ]
}

/// For commands that never create a key: mostly a list key; sometimes a shared key (never a
/// list, so WRONGTYPE or missing) or a missing one.
fn key(g: &mut Gen) -> Vec<u8> {
    match g.rng.below(20) {
        0..=1 => g.key(),
        2 => b"never:exists".to_vec(),
        _ => g.rng.pick(KEYS).to_vec(),
    }
}

/// For commands that may create a list (pushes, move destinations): only list keys. Other
/// families ask OBJECT ENCODING of the shared keys, and a list's encoding differs between
/// Redis 7.0 and Valkey 8, so lists never live there.
fn own_key(g: &mut Gen) -> Vec<u8> {
    g.rng.pick(KEYS).to_vec()
}

fn element(g: &mut Gen) -> Vec<u8> {
    if g.rng.chance(80) {
        g.rng.pick(POOL).to_vec()
    } else {
        g.value()
    }
}

fn elements(g: &mut Gen, lo: u64, hi: u64) -> Vec<Vec<u8>> {
    let n = lo + g.rng.below(hi - lo + 1);
    (0..n).map(|_| element(g)).collect()
}

/// An index or range bound: mostly small, sometimes far out, with the i64 edges (but never
/// LONG_MIN where Valkey and Redis 7.0 differ; see the module docs).
fn index(g: &mut Gen) -> String {
    match g.rng.below(20) {
        0..=14 => g.rng.range(-8, 8).to_string(),
        15..=16 => g.rng.range(-100, 100).to_string(),
        17 => "9223372036854775807".to_string(),
        18 => "-9223372036854775808".to_string(),
        _ => g
            .rng
            .pick(&["0", "-1", "4294967296", "x", "1.5", ""])
            .to_string(),
    }
}

fn end(g: &mut Gen) -> String {
    let w = match g.rng.below(20) {
        0 => "MIDDLE",
        1..=10 => "LEFT",
        _ => "RIGHT",
    };
    g.casing(w)
}

fn list_push_pop(g: &mut Gen) -> Vec<Step> {
    let k = key(g);
    let own = own_key(g);
    let c = match g.rng.below(16) {
        0..=2 => g.cmd("RPUSH").arg(&own).args(elements(g, 1, 5)),
        3..=4 => g.cmd("LPUSH").arg(&own).args(elements(g, 1, 5)),
        5 => g.cmd("LPUSHX").arg(&k).args(elements(g, 1, 3)),
        6 => g.cmd("RPUSHX").arg(&k).args(elements(g, 1, 3)),
        7 => {
            // Bulk growth (and, rarely, one big element) on l:8.
            let n = g.rng.range(20, 200);
            let mut items: Vec<Vec<u8>> = (0..n).map(|i| i.to_string().into_bytes()).collect();
            if g.rng.chance(20) {
                items.push(vec![b'z'; 9000]);
            }
            g.cmd("RPUSH").arg(b"l:8").args(items)
        }
        8..=9 => g.cmd("LPOP").arg(&k),
        10 => g.cmd("RPOP").arg(&k),
        11..=12 => {
            let n = match g.rng.below(10) {
                0 => "0".to_string(),
                1 => "-1".to_string(),
                2 => "x".to_string(),
                3 => "1000".to_string(),
                _ => g.rng.range(1, 5).to_string(),
            };
            let name = if g.rng.chance(50) { "LPOP" } else { "RPOP" };
            g.cmd(name).arg(&k).arg(n)
        }
        _ => {
            let n = g.rng.range(1, 3);
            let mut c = g.cmd("LMPOP").arg(n.to_string());
            for _ in 0..n {
                c = c.arg(key(g));
            }
            c = c.arg(end(g));
            if g.rng.chance(50) {
                let count = match g.rng.below(8) {
                    0 => "0".to_string(),
                    1 => "-2".to_string(),
                    _ => g.rng.range(1, 6).to_string(),
                };
                c = c.arg(g.casing("COUNT")).arg(count);
            }
            c
        }
    };
    vec![Step::Cmd(c)]
}

fn list_read(g: &mut Gen) -> Vec<Step> {
    let k = key(g);
    let c = match g.rng.below(10) {
        0..=3 => g.cmd("LRANGE").arg(&k).arg(index(g)).arg(index(g)),
        4 => g.cmd("LLEN").arg(&k),
        5..=6 => g.cmd("LINDEX").arg(&k).arg(index(g)),
        _ => {
            let mut c = g.cmd("LPOS").arg(&k).arg(element(g));
            let mut opts: Vec<(&str, String)> = Vec::new();
            if g.rng.chance(50) {
                let r = match g.rng.below(10) {
                    0 => "0".to_string(),
                    1 => "x".to_string(),
                    2 => "-9223372036854775807".to_string(),
                    _ => {
                        let r = g.rng.range(1, 4);
                        if g.rng.chance(50) {
                            (-r).to_string()
                        } else {
                            r.to_string()
                        }
                    }
                };
                opts.push(("RANK", r));
            }
            if g.rng.chance(50) {
                let n = match g.rng.below(10) {
                    0 => "-1".to_string(),
                    1 => "x".to_string(),
                    _ => g.rng.range(0, 3).to_string(),
                };
                opts.push(("COUNT", n));
            }
            if g.rng.chance(30) {
                let n = match g.rng.below(10) {
                    0 => "-1".to_string(),
                    _ => g.rng.range(0, 6).to_string(),
                };
                opts.push(("MAXLEN", n));
            }
            g.rng.shuffle(&mut opts);
            for (name, v) in opts {
                c = c.arg(g.casing(name)).arg(v);
            }
            if g.rng.chance(5) {
                c = c.arg("RANK");
            }
            c
        }
    };
    vec![Step::Cmd(c)]
}

fn list_edit(g: &mut Gen) -> Vec<Step> {
    let k = key(g);
    let c = match g.rng.below(10) {
        0..=2 => g.cmd("LSET").arg(&k).arg(index(g)).arg(element(g)),
        3..=4 => {
            let w = match g.rng.below(10) {
                0 => "AROUND",
                1..=4 => "BEFORE",
                _ => "AFTER",
            };
            let w = g.casing(w);
            g.cmd("LINSERT")
                .arg(&k)
                .arg(w)
                .arg(element(g))
                .arg(element(g))
        }
        5..=6 => {
            let n = match g.rng.below(10) {
                0 => "x".to_string(),
                1 => "9223372036854775807".to_string(),
                2 => "-9223372036854775807".to_string(),
                _ => g.rng.range(-3, 3).to_string(),
            };
            g.cmd("LREM").arg(&k).arg(n).arg(element(g))
        }
        _ => g.cmd("LTRIM").arg(&k).arg(index(g)).arg(index(g)),
    };
    vec![Step::Cmd(c)]
}

fn list_move(g: &mut Gen) -> Vec<Step> {
    let src = key(g);
    // A shared source is never a list (nothing moves); the destination may be created, so it
    // is a list key (or the source itself).
    let dst = if g.rng.chance(15) {
        src.clone()
    } else {
        own_key(g)
    };
    let c = if g.rng.chance(30) {
        g.cmd("RPOPLPUSH").arg(&src).arg(&dst)
    } else {
        g.cmd("LMOVE").arg(&src).arg(&dst).arg(end(g)).arg(end(g))
    };
    vec![Step::Cmd(c)]
}

fn list_invalid(g: &mut Gen) -> Vec<Step> {
    let k = key(g);
    let k = k.as_slice();
    let templates: Vec<Vec<&[u8]>> = vec![
        vec![b"LPUSH"],
        vec![b"LPUSH", k],
        vec![b"RPUSHX", k],
        vec![b"LPOP"],
        vec![b"LPOP", k, b"1", b"2"],
        vec![b"RPOP", k, b"1", b"x"],
        vec![b"LLEN"],
        vec![b"LLEN", k, k],
        vec![b"LRANGE", k, b"0"],
        vec![b"LINDEX", k],
        vec![b"LSET", k, b"0"],
        vec![b"LINSERT", k, b"BEFORE", b"a"],
        vec![b"LREM", k, b"0"],
        vec![b"LTRIM", k, b"0"],
        vec![b"LPOS", k],
        vec![b"LPOS", k, b"a", b"COUNT"],
        vec![b"LPOS", k, b"a", b"MAXLEN", b"1", b"FOO", b"1"],
        vec![b"LMOVE", k, k, b"LEFT"],
        vec![b"LMOVE", k, k, b"LEFT", b"RIGHT", b"LEFT"],
        vec![b"RPOPLPUSH", k],
        vec![b"LMPOP", b"1"],
        vec![b"LMPOP", b"1", k],
        vec![b"LMPOP", b"0", k, b"LEFT"],
        vec![b"LMPOP", b"-1", k, b"LEFT"],
        vec![b"LMPOP", b"x", k, b"LEFT"],
        vec![b"LMPOP", b"2", k, b"LEFT"],
        vec![b"LMPOP", b"5", k, b"LEFT"],
        vec![b"LMPOP", b"9223372036854775807", k, b"LEFT"],
        vec![b"LMPOP", b"1", k, b"LEFT", b"COUNT"],
        vec![b"LMPOP", b"1", k, b"LEFT", b"COUNT", b"1", b"COUNT", b"2"],
        vec![b"LMPOP", b"1", k, b"LEFT", b"FOO", b"1"],
        vec![b"LMPOP", b"1", k, b"UP", b"COUNT", b"1"],
    ];
    let c = pick_invalid(g, &templates);
    vec![Step::Cmd(c)]
}
