//! Differential families for hashes.
//!
//! Keys are `h:1`..`h:8` (hashes of a few fields from a small field space), with now and then
//! a shared key from [`Gen::key`] so that WRONGTYPE paths (and other families' commands on a
//! hash) are exercised. `h:8` sometimes receives 130+ fields at once.
//!
//! What is compared, and how:
//! - Replies whose order depends on the encoding (HKEYS, HVALS, HGETALL, HSCAN) are sorted.
//!   Redis 7.0's default `hash-max-listpack-entries` is 512, this node's 128, so a hash of
//!   129..512 fields is a listpack there and a hashtable here: same content, other order.
//! - HSCAN always starts at cursor 0 with `COUNT 1000`: both servers then return the whole
//!   (small) hash in one call with cursor 0, whatever the encoding.
//! - HRANDFIELD: `COUNT 1000` (at least the size: the whole hash) is compared sorted; other
//!   counts are random, so only the reply's shape (lengths, nesting, nulls, errors) is
//!   compared.
//! - HINCRBYFLOAT runs right after an HSET of the same field to a two-decimal value below 32
//!   in magnitude, with a two-decimal increment (see the float family: there Redis's long
//!   double and the node's exact decimals print the same digits).
//! - OBJECT ENCODING is left out (see above); the e2e tests assert Valkey's names.

use super::{
    blank_strings as shape, pick_invalid, sort_scan_pairs as sort_scan, Check, Cmd, Family, Gen,
    Step,
};

const KEYS: &[&[u8]] = &[
    b"h:1", b"h:2", b"h:3", b"h:4", b"h:5", b"h:6", b"h:7", b"h:8",
];

pub fn families() -> Vec<Family> {
    vec![
        Family {
            name: "hash-write",
            weight: 12,
            generate: hash_write,
        },
        Family {
            name: "hash-read",
            weight: 10,
            generate: hash_read,
        },
        Family {
            name: "hash-counter",
            weight: 4,
            generate: hash_counter,
        },
        Family {
            name: "hash-random",
            weight: 4,
            generate: hash_random,
        },
        Family {
            name: "hash-invalid",
            weight: 3,
            generate: hash_invalid,
        },
    ]
}

/// Commands that read a whole value of this type, for the end-of-run keyspace comparison.
pub fn readers(key: &[u8]) -> Vec<Cmd> {
    vec![
        Cmd::of(&[b"HGETALL" as &[u8], key]).sorted(),
        Cmd::of(&[b"HLEN" as &[u8], key]),
    ]
}

/// Mostly a hash key; sometimes a shared key (often a string: WRONGTYPE) or a missing one.
fn key(g: &mut Gen) -> Vec<u8> {
    match g.rng.below(20) {
        0..=1 => g.key(),
        2 => b"never:exists".to_vec(),
        _ => g.rng.pick(KEYS).to_vec(),
    }
}

/// A field from a small space, with the odd ones (empty, binary, long enough to convert).
fn field(g: &mut Gen) -> Vec<u8> {
    match g.rng.below(40) {
        0 => Vec::new(),
        1 => b"\x00\xff\r\n".to_vec(),
        2 => vec![b'L'; 65],
        3 => vec![b'l'; 64],
        4..=7 => g.rng.pick(&["a", "b", "c", "n"]).as_bytes().to_vec(),
        _ => format!("f{}", g.rng.below(12)).into_bytes(),
    }
}

fn fields(g: &mut Gen, lo: u64, hi: u64) -> Vec<Vec<u8>> {
    let n = lo + g.rng.below(hi - lo + 1);
    (0..n).map(|_| field(g)).collect()
}

fn hash_write(g: &mut Gen) -> Vec<Step> {
    let k = key(g);
    let c = match g.rng.below(20) {
        0..=6 => {
            let name = if g.rng.chance(80) { "HSET" } else { "HMSET" };
            let mut c = g.cmd(name).arg(&k);
            for f in fields(g, 1, 4) {
                c = c.arg(f).arg(g.value());
            }
            c
        }
        7..=8 => g.cmd("HSETNX").arg(&k).arg(field(g)).arg(g.value()),
        9..=12 => {
            let fs = fields(g, 1, 4);
            g.cmd("HDEL").arg(&k).args(fs)
        }
        13 => {
            // Many fields at once: past the listpack limit (of this node at least).
            let n = 125 + g.rng.below(10);
            let mut c = g.cmd("HSET").arg(b"h:8");
            for i in 0..n {
                c = c.arg(format!("m{i}")).arg(g.small_int());
            }
            c
        }
        14 => g.cmd("DEL").arg(&k),
        15 => return vec![Step::DumpRestore(g.rng.pick(KEYS).to_vec())],
        16 => {
            let dst = g.rng.pick(KEYS).to_vec();
            let mut c = g.cmd("COPY").arg(&k).arg(&dst);
            if g.rng.chance(50) {
                c = c.arg("REPLACE");
            }
            c
        }
        17 => {
            let dst = g.rng.pick(KEYS).to_vec();
            g.cmd("RENAME").arg(g.rng.pick(KEYS)).arg(dst)
        }
        _ => {
            // Values long enough to leave the listpack.
            let n = 65 + g.rng.below(40) as usize;
            let v = g.text(n);
            g.cmd("HSET").arg(&k).arg(field(g)).arg(v)
        }
    };
    vec![c.into()]
}

fn hash_read(g: &mut Gen) -> Vec<Step> {
    let k = key(g);
    let c = match g.rng.below(20) {
        0..=3 => g.cmd("HGET").arg(&k).arg(field(g)),
        4..=5 => {
            let fs = fields(g, 1, 5);
            g.cmd("HMGET").arg(&k).args(fs)
        }
        6 => g.cmd("HEXISTS").arg(&k).arg(field(g)),
        7 => g.cmd("HLEN").arg(&k),
        8 => g.cmd("HSTRLEN").arg(&k).arg(field(g)),
        9..=10 => g.cmd("HKEYS").arg(&k).sorted(),
        11..=12 => g.cmd("HVALS").arg(&k).sorted(),
        13..=15 => g.cmd("HGETALL").arg(&k).sorted(),
        16 => g.cmd("TYPE").arg(&k),
        _ => {
            let mut c = g.cmd("HSCAN").arg(&k).arg("0");
            let mut opts: Vec<Vec<Vec<u8>>> =
                vec![vec![g.casing("COUNT").into_bytes(), b"1000".to_vec()]];
            if g.rng.chance(50) {
                let p = g
                    .rng
                    .pick(&["*", "f*", "f1?", "[ab]", "m1*", "*\x00*", "n", "?"])
                    .as_bytes()
                    .to_vec();
                opts.push(vec![g.casing("MATCH").into_bytes(), p]);
            }
            g.rng.shuffle(&mut opts);
            c = c.args(opts.concat());
            c.check(Check::Normalize(sort_scan))
        }
    };
    vec![c.into()]
}

/// A two-decimal number as text (hundredths), like the float family's.
fn decimal(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let abs = cents.unsigned_abs();
    let (int, frac) = (abs / 100, abs % 100);
    match frac {
        0 => format!("{sign}{int}"),
        f if f.is_multiple_of(10) => format!("{sign}{int}.{}", f / 10),
        f => format!("{sign}{int}.{f:02}"),
    }
}

fn hash_counter(g: &mut Gen) -> Vec<Step> {
    let k = key(g);
    match g.rng.below(10) {
        0..=4 => {
            let by = if g.rng.chance(85) {
                g.rng.range(-20, 20).to_string()
            } else {
                g.rng
                    .pick(&[
                        "9223372036854775807",
                        "-9223372036854775808",
                        "1000000000000",
                        "x",
                        "1.5",
                        "",
                    ])
                    .to_string()
            };
            vec![g.cmd("HINCRBY").arg(&k).arg(field(g)).arg(by).into()]
        }
        5..=7 => {
            // Known value, then a two-decimal increment: |result| < 32.
            let f = field(g);
            let v = g.rng.range(-1500, 1500);
            let inc = g.rng.range(-1500, 1500);
            vec![
                g.cmd("HSET").arg(&k).arg(&f).arg(decimal(v)).into(),
                g.cmd("HINCRBYFLOAT")
                    .arg(&k)
                    .arg(&f)
                    .arg(decimal(inc))
                    .into(),
            ]
        }
        _ => {
            // Invalid increments, or a field that may hold anything (errors must agree; an
            // value is never read as a number here).
            let by = g
                .rng
                .pick(&["abc", "", "inf", "-inf", "nan", "1 ", "1.2.3"])
                .to_string();
            vec![g.cmd("HINCRBYFLOAT").arg(&k).arg(field(g)).arg(by).into()]
        }
    }
}

fn hash_random(g: &mut Gen) -> Vec<Step> {
    let k = key(g);
    let c = match g.rng.below(6) {
        0 => g.cmd("HRANDFIELD").arg(&k).check(Check::Normalize(shape)),
        1..=2 => {
            let mut c = g.cmd("HRANDFIELD").arg(&k).arg("1000");
            if g.rng.chance(50) {
                c = c.arg(g.casing("WITHVALUES"));
            }
            c.sorted()
        }
        _ => {
            let n = *g.rng.pick(&[0i64, 1, 2, 3, 5, -1, -2, -5, -20]);
            let mut c = g.cmd("HRANDFIELD").arg(&k).arg(n.to_string());
            if g.rng.chance(50) {
                c = c.arg(g.casing("WITHVALUES"));
            }
            c.check(Check::Normalize(shape))
        }
    };
    vec![c.into()]
}

fn hash_invalid(g: &mut Gen) -> Vec<Step> {
    let k = g.rng.pick(KEYS).to_vec();
    let k = k.as_slice();
    let templates: Vec<Vec<&[u8]>> = vec![
        vec![b"HSET", k],
        vec![b"HSET", k, b"f"],
        vec![b"HSET", k, b"f", b"v", b"g"],
        vec![b"HMSET", k, b"f"],
        vec![b"HSETNX", k, b"f"],
        vec![b"HGET", k],
        vec![b"HMGET", k],
        vec![b"HDEL", k],
        vec![b"HLEN"],
        vec![b"HSTRLEN", k],
        vec![b"HKEYS", k, b"x"],
        vec![b"HGETALL"],
        vec![b"HINCRBY", k, b"f"],
        vec![b"HINCRBYFLOAT", k, b"f", b"1", b"2"],
        vec![b"HRANDFIELD"],
        vec![b"HRANDFIELD", k, b"abc"],
        vec![b"HRANDFIELD", k, b"1", b"WITHVALUE"],
        vec![b"HRANDFIELD", k, b"1", b"WITHVALUES", b"x"],
        vec![b"HRANDFIELD", k, b"-9223372036854775808"],
        vec![b"HRANDFIELD", k, b"9223372036854775807", b"WITHVALUES"],
        vec![b"HSCAN", k],
        vec![b"HSCAN", k, b"abc"],
        vec![b"HSCAN", k, b"0", b"COUNT", b"0"],
        vec![b"HSCAN", k, b"0", b"COUNT", b"x"],
        vec![b"HSCAN", k, b"0", b"MATCH"],
        vec![b"HSCAN", k, b"0", b"FOO", b"1"],
    ];
    let c = pick_invalid(g, &templates);
    vec![c.into()]
}
