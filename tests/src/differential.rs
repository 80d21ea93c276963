//! Differential testing: one random command stream, sent over raw RESP to redis-server (the
//! reference) and to lagwise-node (the subject), with the raw reply bytes compared.
//!
//! The stream is drawn from a table of [`Family`] generators (strings, counters, keys, expiry,
//! ...). Each family turns the shared [`Gen`] state into a few [`Step`]s; each command carries a
//! [`Check`] saying how its replies are compared (exactly, after a normalizing hook such as
//! sorting an unordered array, or as integers within a tolerance for replies that depend on the
//! clock). New data types extend the harness by adding families to [`families`] and a reader to
//! [`value_readers`].
//!
//! Determinism rules the generators follow, so that any difference is a real one:
//! - Relative TTLs are unique per run, at least 1000 s apart, and far below the absolute expiry
//!   times (year 2096+), so `GT`/`LT` comparisons never depend on when a server got the command.
//! - Keys whose expiry may have been set relatively are tracked (conservatively); their
//!   `EXPIRETIME`/`PEXPIRETIME` are compared within a tolerance, every other key's exactly.
//! - Keys that really expire live under `tmp:`, are probed only after they have expired, and are
//!   deleted again in the same step, so `DBSIZE` never counts a key one server has reclaimed and
//!   the other has not.
//! - `INCRBYFLOAT` works on its own keys (`f:*`) whose values the generator models, keeping them
//!   to two decimals and below 32 in magnitude: there Redis's 80-bit long double and the node's
//!   exact decimal arithmetic print the same digits. (Redis 7.0 prints the result with `%.17Lf`,
//!   17 digits after the point, so the long double's ~19 significant digits leak rounding noise
//!   from about 64 up: `SET f -144.25`, `INCRBYFLOAT f 10.6` gives `-133.64999999999999999`.
//!   Checked against redis-server for every two-decimal value below 64.)

use std::collections::{BTreeMap, HashSet, VecDeque};

mod hashes;
mod lists;
mod sets;
mod zsets;
use std::fmt::Write as _;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

// ------------------------------------------------------------------------------------------
// Endpoints

/// Something that takes one command and returns its raw RESP reply.
pub trait Endpoint {
    fn call(&mut self, args: &[&[u8]]) -> Vec<u8>;
}

/// Prefix of the pseudo-reply [`Endpoint::call`] returns when the connection failed (closed,
/// timed out, malformed reply): the run stops there, even in keep-going mode.
pub const TRANSPORT_ERROR: &[u8] = b"<transport error> ";

impl Endpoint for crate::fixture::RawConn {
    fn call(&mut self, args: &[&[u8]]) -> Vec<u8> {
        if let Err(e) = self.try_send(&crate::fixture::encode_command(args)) {
            return [TRANSPORT_ERROR, format!("write: {e}").as_bytes()].concat();
        }
        match self.try_read_reply() {
            Ok(reply) => reply,
            Err(e) => [TRANSPORT_ERROR, e.as_bytes()].concat(),
        }
    }
}

// ------------------------------------------------------------------------------------------
// Configuration

/// Knobs, read from the environment by [`Config::from_env`].
#[derive(Debug, Clone)]
pub struct Config {
    /// Family draws per phase (`LAGWISE_DIFF_COMMANDS`, default 5000).
    pub commands: usize,
    /// `LAGWISE_DIFF_SEED`, or a random one.
    pub seed: u64,
    /// `LAGWISE_DIFF_SELF=1`: the subject is a second redis-server (checks the harness itself).
    pub self_check: bool,
    /// `LAGWISE_DIFF_KEEP_GOING=1`: collect every mismatch instead of stopping at the first;
    /// after a mismatch that left the keyspaces different, both are emptied and the run goes on.
    pub keep_going: bool,
}

impl Config {
    pub fn from_env() -> Config {
        let commands = std::env::var("LAGWISE_DIFF_COMMANDS")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(5000);
        let seed = std::env::var("LAGWISE_DIFF_SEED")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(random_seed);
        let flag = |name: &str| {
            std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
        };
        Config {
            commands,
            seed,
            self_check: flag("LAGWISE_DIFF_SELF"),
            keep_going: flag("LAGWISE_DIFF_KEEP_GOING"),
        }
    }

    /// The environment that reproduces this run.
    pub fn rerun_hint(&self) -> String {
        format!(
            "LAGWISE_DIFF_SEED={} LAGWISE_DIFF_COMMANDS={}{} cargo test -p lagwise-tests --test differential -- --nocapture",
            self.seed,
            self.commands,
            if self.self_check { " LAGWISE_DIFF_SELF=1" } else { "" }
        )
    }
}

fn random_seed() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut r = Rng::new(nanos ^ ((std::process::id() as u64) << 32));
    // Keep seeds short enough to type.
    r.next_u64() % 1_000_000_000_000
}

// ------------------------------------------------------------------------------------------
// Randomness (a self-contained splitmix64, so a seed means the same stream forever)

pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo + 1) as u64) as i64
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

// ------------------------------------------------------------------------------------------
// Commands, checks and steps

/// How the two replies to a command are compared.
#[derive(Clone, Copy)]
pub enum Check {
    /// Byte for byte.
    Exact,
    /// Byte for byte after applying the hook to both (e.g. [`sort_aggregate`]).
    Normalize(fn(&[u8]) -> Vec<u8>),
    /// Integer replies that depend on the clock: equal, or both positive and at most this far
    /// apart. Anything else (errors, -1, -2) must match exactly.
    Close(i64),
}

impl Check {
    pub fn matches(self, reference: &[u8], subject: &[u8]) -> bool {
        match self {
            Check::Exact => reference == subject,
            Check::Normalize(f) => f(reference) == f(subject),
            Check::Close(tolerance) => match (int_reply(reference), int_reply(subject)) {
                (Some(a), Some(b)) => a == b || (a > 0 && b > 0 && (a - b).abs() <= tolerance),
                _ => reference == subject,
            },
        }
    }
}

/// One command and how to compare its replies.
#[derive(Clone)]
pub struct Cmd {
    pub args: Vec<Vec<u8>>,
    pub check: Check,
}

impl Cmd {
    pub fn new(name: impl AsRef<[u8]>) -> Cmd {
        Cmd {
            args: vec![name.as_ref().to_vec()],
            check: Check::Exact,
        }
    }

    /// A command from literal parts.
    pub fn of<A: AsRef<[u8]>>(parts: &[A]) -> Cmd {
        Cmd {
            args: parts.iter().map(|p| p.as_ref().to_vec()).collect(),
            check: Check::Exact,
        }
    }

    pub fn arg(mut self, a: impl AsRef<[u8]>) -> Cmd {
        self.args.push(a.as_ref().to_vec());
        self
    }

    pub fn args<I, A>(mut self, items: I) -> Cmd
    where
        I: IntoIterator<Item = A>,
        A: AsRef<[u8]>,
    {
        self.args
            .extend(items.into_iter().map(|a| a.as_ref().to_vec()));
        self
    }

    pub fn check(mut self, check: Check) -> Cmd {
        self.check = check;
        self
    }

    pub fn sorted(self) -> Cmd {
        self.check(Check::Normalize(sort_aggregate))
    }

    /// The command's name for grouping mismatches: upper-cased, with the subcommand for
    /// container commands (`OBJECT ENCODING`).
    pub fn name(&self) -> String {
        let Some(first) = self.args.first() else {
            return String::new();
        };
        let mut name = escape(first, 40).to_ascii_uppercase();
        if name == "OBJECT" {
            if let Some(sub) = self.args.get(1) {
                name.push(' ');
                name.push_str(&escape(sub, 40).to_ascii_uppercase());
            }
        }
        if name.len() > 40 {
            name.truncate(40);
            name.push_str("...");
        }
        name
    }

    /// The command as one readable line: every argument quoted and escaped, long ones cut.
    pub fn printable(&self) -> String {
        let mut out = String::new();
        for (i, a) in self.args.iter().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            out.push('"');
            out.push_str(&escape(a, 48));
            out.push('"');
        }
        out
    }
}

/// What a family asks the runner to do.
pub enum Step {
    /// Send to both, compare the replies.
    Cmd(Cmd),
    /// Wait (for keys with millisecond TTLs to expire on both servers).
    Sleep(Duration),
    /// `DUMP` the key on both; `RESTORE` the subject's payload into the reference (and, when
    /// the subject has `RESTORE`, the reference's into the subject) and compare the values.
    DumpRestore(Vec<u8>),
}

impl From<Cmd> for Step {
    fn from(c: Cmd) -> Step {
        Step::Cmd(c)
    }
}

// ------------------------------------------------------------------------------------------
// Generator state

/// The shared key space. `k:*` share a prefix (for KEYS patterns); a few names contain glob
/// characters, spaces, binary bytes, or are empty.
const KEYS: &[&[u8]] = &[
    b"k:0",
    b"k:1",
    b"k:2",
    b"k:3",
    b"k:4",
    b"k:5",
    b"k:6",
    b"k:7",
    b"k:8",
    b"k:9",
    b"k:10",
    b"k:11",
    b"K:0",
    b"user:1",
    b"user:2",
    b"user:3",
    b"user:10",
    b"a",
    b"b",
    b"c",
    b"foo",
    b"bar",
    b"foobar",
    b"hello",
    b"h?llo",
    b"k*",
    b"x y",
    b"",
    b"\x00\xffbin\r\n",
    b"{tag}k",
];

/// Keys only the float family writes (see the module docs).
const FLOAT_KEYS: &[&[u8]] = &[b"f:0", b"f:1", b"f:2", b"f:3"];

/// Names of keys that expire during the run; one is live at a time, inside one step.
const TMP_KEYS: &[&[u8]] = &[b"tmp:0", b"tmp:1", b"tmp:2"];

/// Where `DumpRestore` restores into; deleted right after.
const RESTORED_KEY: &[u8] = b"__lagwise_diff:restored";

/// Absolute expiry times are drawn from here on (seconds; 2096-10-02): far beyond any relative
/// TTL the generator issues, so comparisons between the two kinds are never close.
const ABS_BASE: i64 = 4_000_000_000;

const KEY_PATTERNS: &[&[u8]] = &[
    b"*", b"k:*", b"k:1*", b"k:?", b"user:?", b"user:*0", b"*o*", b"[ab]*", b"[^k]*", b"[a-c]",
    b"[c-a]", b"h?llo", b"h\\?llo", b"k\\*", b"k[*]", b"k:[0-5]", b"*:*", b"nomatch", b"", b"f:*",
    b"tmp:*", b"*\x00*", b"[a-", b"**o", b"x y", b"{tag}*", b"K:*",
];

pub struct Gen {
    pub rng: Rng,
    /// Keys whose expiry may have been set relative to "now" (so differs by a few ms between
    /// the servers). Over-approximated: a key leaves only when we know its expiry is gone or
    /// absolute.
    relative: HashSet<Vec<u8>>,
    /// Relative TTL slots already used this run (each TTL is used once).
    used_relative: HashSet<i64>,
    /// The value of each float key in hundredths, None when absent.
    floats: Vec<Option<i64>>,
    tmp_seq: usize,
}

impl Gen {
    pub fn new(seed: u64) -> Gen {
        Gen {
            rng: Rng::new(seed),
            relative: HashSet::new(),
            used_relative: HashSet::new(),
            floats: vec![None; FLOAT_KEYS.len()],
            tmp_seq: 0,
        }
    }

    /// Forget what we know about the keyspace (after both servers were emptied).
    pub fn reset_model(&mut self) {
        self.relative.clear();
        self.floats = vec![None; FLOAT_KEYS.len()];
    }

    /// A command name, sometimes in odd case (names are case-insensitive).
    pub fn cmd(&mut self, name: &str) -> Cmd {
        Cmd::new(self.casing(name))
    }

    /// An option keyword, sometimes in odd case.
    pub fn casing(&mut self, word: &str) -> String {
        match self.rng.below(10) {
            0 => word.to_ascii_lowercase(),
            1 => word
                .chars()
                .enumerate()
                .map(|(i, c)| {
                    if i.is_multiple_of(2) {
                        c.to_ascii_lowercase()
                    } else {
                        c.to_ascii_uppercase()
                    }
                })
                .collect(),
            _ => word.to_string(),
        }
    }

    pub fn key(&mut self) -> Vec<u8> {
        self.rng.pick(KEYS).to_vec()
    }

    /// A key for read-only commands: usually from the shared space, sometimes a float key or a
    /// key that never exists.
    pub fn any_key(&mut self) -> Vec<u8> {
        match self.rng.below(20) {
            0 => self.rng.pick(FLOAT_KEYS).to_vec(),
            1 => b"never:exists".to_vec(),
            _ => self.key(),
        }
    }

    pub fn keys(&mut self, lo: u64, hi: u64) -> Vec<Vec<u8>> {
        let n = lo + self.rng.below(hi - lo + 1);
        (0..n).map(|_| self.key()).collect()
    }

    pub fn small_int(&mut self) -> String {
        self.rng.range(-100, 100).to_string()
    }

    /// A value to store: mostly small, with the interesting edges.
    pub fn value(&mut self) -> Vec<u8> {
        match self.rng.below(100) {
            0..=29 => self.small_int().into_bytes(),
            30..=37 => self
                .rng
                .pick(&[
                    "9223372036854775807",
                    "-9223372036854775808",
                    "9223372036854775806",
                    "-9223372036854775807",
                    "0",
                    "4294967296",
                    "2147483647",
                    "-1",
                ])
                .as_bytes()
                .to_vec(),
            38..=55 => self
                .rng
                .pick(&[
                    "hello",
                    "world",
                    "v",
                    "foo",
                    "bar",
                    "lagwise",
                    "a b c",
                    "h\u{e9}llo",
                    "OK",
                    "nil",
                ])
                .as_bytes()
                .to_vec(),
            56..=61 => Vec::new(),
            62..=69 => {
                let n = self.rng.range(1, 8) as usize;
                (0..n)
                    .map(|_| {
                        *self
                            .rng
                            .pick(&[0u8, 0xff, b'\r', b'\n', b'"', b'\\', 0x7f, b'x'])
                    })
                    .collect()
            }
            70..=75 => self.text(100),
            76..=85 => self
                .rng
                .pick(&[
                    "3.14",
                    "007",
                    "+5",
                    " 5",
                    "5 ",
                    "1e3",
                    "-0",
                    "12abc",
                    "0x10",
                    "9223372036854775808",
                    "-9223372036854775809",
                    "18446744073709551616",
                    "10.50",
                    "-",
                    "12345678901234567890",
                ])
                .as_bytes()
                .to_vec(),
            86..=89 => {
                // Around the embstr/raw boundary (44 bytes).
                let n = *self.rng.pick(&[43usize, 44, 45, 46]);
                self.text(n)
            }
            _ => {
                let n = self.rng.range(1, 30) as usize;
                self.text(n)
            }
        }
    }

    pub fn text(&mut self, n: usize) -> Vec<u8> {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789-_:";
        (0..n).map(|_| *self.rng.pick(ALPHABET)).collect()
    }

    /// A relative TTL in seconds, unique in this run and at least 1000 s from any other.
    pub fn rel_secs(&mut self) -> i64 {
        if self.used_relative.len() > 90_000 {
            self.used_relative.clear();
        }
        loop {
            let slot = self.rng.below(100_000) as i64;
            if self.used_relative.insert(slot) {
                return 10_000 + slot * 1000;
            }
        }
    }

    pub fn rel_ms(&mut self) -> i64 {
        self.rel_secs() * 1000
    }

    /// An absolute expiry time in the far future (unix seconds).
    pub fn abs_secs(&mut self) -> i64 {
        ABS_BASE + self.rng.below(1000) as i64 * 1000
    }

    /// An absolute expiry time in the far future (unix ms), sometimes with sub-second parts.
    pub fn abs_ms(&mut self) -> i64 {
        let ms = *self.rng.pick(&[0i64, 0, 1, 499, 500, 999]);
        self.abs_secs() * 1000 + ms
    }

    /// An absolute time in the past (seconds): setting it deletes the key.
    pub fn past_secs(&mut self) -> i64 {
        *self.rng.pick(&[1i64, 1000, 1_600_000_000])
    }

    pub fn taint(&mut self, key: &[u8]) {
        self.relative.insert(key.to_vec());
    }

    pub fn untaint(&mut self, key: &[u8]) {
        self.relative.remove(key);
    }

    pub fn tainted(&self, key: &[u8]) -> bool {
        self.relative.contains(key)
    }

    /// `dst` may now carry `src`'s expiry (RENAME, COPY).
    pub fn carry_taint(&mut self, src: &[u8], dst: &[u8]) {
        if self.tainted(src) {
            self.taint(dst);
        }
    }

    /// How to compare `EXPIRETIME` (`millis` false) or `PEXPIRETIME` of `key`.
    pub fn expiretime_check(&self, key: &[u8], millis: bool) -> Check {
        if self.tainted(key) {
            Check::Close(if millis { 2000 } else { 2 })
        } else {
            Check::Exact
        }
    }
}

// ------------------------------------------------------------------------------------------
// Families

/// A group of related commands and how often to draw it.
pub struct Family {
    pub name: &'static str,
    pub weight: u64,
    pub generate: fn(&mut Gen) -> Vec<Step>,
}

/// Every family. The data-types work adds its hash/list/set/zset families here.
pub fn families() -> Vec<Family> {
    let mut all = string_and_key_families();
    all.extend(hashes::families());
    all.extend(lists::families());
    all.extend(sets::families());
    all.extend(zsets::families());
    all
}

fn string_and_key_families() -> Vec<Family> {
    vec![
        Family {
            name: "string-read",
            weight: 12,
            generate: string_read,
        },
        Family {
            name: "string-write",
            weight: 20,
            generate: string_write,
        },
        Family {
            name: "counter",
            weight: 8,
            generate: counter,
        },
        Family {
            name: "float",
            weight: 5,
            generate: float,
        },
        Family {
            name: "keys",
            weight: 14,
            generate: keys_family,
        },
        Family {
            name: "expire",
            weight: 14,
            generate: expire,
        },
        Family {
            name: "short-ttl",
            weight: 2,
            generate: short_ttl,
        },
        Family {
            name: "dump",
            weight: 3,
            generate: dump,
        },
        Family {
            name: "server",
            weight: 3,
            generate: server,
        },
        Family {
            name: "invalid",
            weight: 10,
            generate: invalid,
        },
    ]
}

/// One of the malformed command templates, its name lowercased now and then: commands are
/// case-insensitive, so the errors must name the canonical command either way.
pub fn pick_invalid(g: &mut Gen, templates: &[Vec<&[u8]>]) -> Cmd {
    let picked: &Vec<&[u8]> = g.rng.pick(templates);
    let mut c = Cmd::of(picked);
    if g.rng.chance(15) {
        c.args[0] = c.args[0].to_ascii_lowercase();
    }
    c
}

/// A `[cursor, [items]]` scan reply with its items sorted in groups of `group` (1 for members,
/// 2 for field-value or member-score pairs): the order a scan returns is unspecified.
fn sort_scan_in_groups(reply: &[u8], group: usize) -> Vec<u8> {
    let Some(mut frame) = Frame::parse(reply) else {
        return reply.to_vec();
    };
    if let Frame::Agg(_, Some(parts)) = &mut frame {
        if let Some(Frame::Agg(_, Some(items))) = parts.get_mut(1) {
            let mut groups: Vec<Vec<Frame>> = items.chunks(group).map(<[Frame]>::to_vec).collect();
            groups.sort_by_key(|g| g.iter().map(Frame::to_bytes).collect::<Vec<_>>());
            *items = groups.concat();
        }
    }
    frame.to_bytes()
}

/// SSCAN: members sorted.
pub fn sort_scan_members(reply: &[u8]) -> Vec<u8> {
    sort_scan_in_groups(reply, 1)
}

/// HSCAN, ZSCAN: pairs sorted.
pub fn sort_scan_pairs(reply: &[u8]) -> Vec<u8> {
    sort_scan_in_groups(reply, 2)
}

/// A reply's shape only, for random picks: every string and double blanked; nesting, lengths,
/// nulls and errors kept.
pub fn blank_strings(reply: &[u8]) -> Vec<u8> {
    fn blank(f: &mut Frame) {
        match f {
            Frame::Bulk(_, Some(d)) => d.clear(),
            Frame::Line(b',', text) => text.clear(),
            Frame::Agg(_, Some(items)) => items.iter_mut().for_each(blank),
            _ => {}
        }
    }
    let Some(mut frame) = Frame::parse(reply) else {
        return reply.to_vec();
    };
    blank(&mut frame);
    frame.to_bytes()
}

fn one(c: Cmd) -> Vec<Step> {
    vec![Step::Cmd(c)]
}

fn string_read(g: &mut Gen) -> Vec<Step> {
    let c = match g.rng.below(10) {
        0..=3 => g.cmd("GET").arg(g.any_key()),
        4..=5 => {
            let n = g.rng.range(1, 5);
            let keys: Vec<_> = (0..n).map(|_| g.any_key()).collect();
            g.cmd("MGET").args(keys)
        }
        6..=7 => g.cmd("STRLEN").arg(g.any_key()),
        _ => {
            let index = |g: &mut Gen| -> String {
                match g.rng.below(10) {
                    0..=6 => g.rng.range(-12, 12).to_string(),
                    7 => g.rng.range(-120, 120).to_string(),
                    _ => g
                        .rng
                        .pick(&["9223372036854775807", "-9223372036854775808", "0", "-1"])
                        .to_string(),
                }
            };
            let (start, end) = (index(g), index(g));
            g.cmd("GETRANGE").arg(g.any_key()).arg(start).arg(end)
        }
    };
    one(c)
}

/// SET with a random combination of options (mostly valid, sometimes conflicting).
///
/// A SET with an EXAT/PXAT in the past leaves a logically expired key that redis still counts
/// in DBSIZE until something touches it; an EXISTS right after makes that deterministic.
fn set_command(g: &mut Gen) -> Vec<Step> {
    let key = g.key();
    let value = g.value();
    let mut opts: Vec<Vec<String>> = Vec::new();
    let mut relative = false;
    let mut plain = true; // no condition / GET / KEEPTTL / conflicts: the SET surely happens
    let mut past = false;
    match g.rng.below(10) {
        4 => {
            relative = true;
            opts.push(vec![g.casing("EX"), g.rel_secs().to_string()]);
        }
        5 => {
            relative = true;
            opts.push(vec![g.casing("PX"), g.rel_ms().to_string()]);
        }
        6 => {
            let t = if g.rng.chance(10) {
                past = true;
                g.past_secs()
            } else {
                g.abs_secs()
            };
            opts.push(vec![g.casing("EXAT"), t.to_string()]);
        }
        7 => {
            let t = if g.rng.chance(10) {
                past = true;
                g.past_secs() * 1000
            } else {
                g.abs_ms()
            };
            opts.push(vec![g.casing("PXAT"), t.to_string()]);
        }
        8 => {
            plain = false;
            opts.push(vec![g.casing("KEEPTTL")]);
        }
        _ => {}
    }
    match g.rng.below(10) {
        0..=1 => {
            plain = false;
            opts.push(vec![g.casing("NX")]);
        }
        2..=3 => {
            plain = false;
            opts.push(vec![g.casing("XX")]);
        }
        _ => {}
    }
    if g.rng.chance(25) {
        plain = false;
        opts.push(vec![g.casing("GET")]);
    }
    if g.rng.chance(4) {
        // A second, usually conflicting, option.
        plain = false;
        let extra: Vec<String> = match g.rng.below(6) {
            0 => vec!["NX".into()],
            1 => vec!["XX".into()],
            2 => vec!["KEEPTTL".into()],
            3 => vec!["GET".into()],
            4 => vec!["EXAT".into(), g.abs_secs().to_string()],
            _ => {
                relative = true;
                vec!["PX".into(), g.rel_ms().to_string()]
            }
        };
        opts.push(extra);
    }
    g.rng.shuffle(&mut opts);
    if relative {
        g.taint(&key);
    } else if plain {
        g.untaint(&key);
    }
    let set = g.cmd("SET").arg(&key).arg(value).args(opts.concat());
    if past {
        vec![set.into(), g.cmd("EXISTS").arg(key).into()]
    } else {
        one(set)
    }
}

fn string_write(g: &mut Gen) -> Vec<Step> {
    let c = match g.rng.below(20) {
        0..=5 => return set_command(g),
        6 => g.cmd("SETNX").arg(g.key()).arg(g.value()),
        7 => {
            let key = g.key();
            g.taint(&key);
            let ttl = g.rel_secs();
            g.cmd("SETEX").arg(key).arg(ttl.to_string()).arg(g.value())
        }
        8 => {
            let key = g.key();
            g.taint(&key);
            let ttl = g.rel_ms();
            g.cmd("PSETEX").arg(key).arg(ttl.to_string()).arg(g.value())
        }
        9 => g.cmd("GETSET").arg(g.key()).arg(g.value()),
        10 => g.cmd("GETDEL").arg(g.key()),
        11..=12 => {
            let key = g.key();
            let mut c = g.cmd("GETEX").arg(&key);
            match g.rng.below(7) {
                0 => {
                    g.taint(&key);
                    c = c.arg(g.casing("EX")).arg(g.rel_secs().to_string());
                }
                1 => {
                    g.taint(&key);
                    c = c.arg(g.casing("PX")).arg(g.rel_ms().to_string());
                }
                2 => c = c.arg(g.casing("EXAT")).arg(g.abs_secs().to_string()),
                3 => c = c.arg(g.casing("PXAT")).arg(g.abs_ms().to_string()),
                4 => c = c.arg(g.casing("PERSIST")),
                _ => {}
            }
            c
        }
        13..=14 => {
            let n = g.rng.range(1, 4);
            let name = if g.rng.chance(70) { "MSET" } else { "MSETNX" };
            let mut c = g.cmd(name);
            for _ in 0..n {
                c = c.arg(g.key()).arg(g.value());
            }
            c
        }
        15..=17 => g.cmd("APPEND").arg(g.key()).arg(g.value()),
        _ => {
            let offset = if g.rng.chance(80) {
                g.rng.range(0, 20)
            } else {
                g.rng.range(0, 120)
            };
            let value = if g.rng.chance(10) {
                Vec::new()
            } else {
                let n = g.rng.range(1, 6) as usize;
                g.text(n)
            };
            g.cmd("SETRANGE")
                .arg(g.key())
                .arg(offset.to_string())
                .arg(value)
        }
    };
    one(c)
}

fn counter(g: &mut Gen) -> Vec<Step> {
    let key = g.key();
    let amount = |g: &mut Gen| -> String {
        if g.rng.chance(80) {
            g.rng.range(-20, 20).to_string()
        } else {
            g.rng
                .pick(&[
                    "9223372036854775807",
                    "-9223372036854775807",
                    "-9223372036854775808",
                    "1000000000000",
                    "-1",
                    "0",
                ])
                .to_string()
        }
    };
    let c = match g.rng.below(7) {
        0..=1 => g.cmd("INCR").arg(key),
        2 => g.cmd("DECR").arg(key),
        3..=4 => {
            let n = amount(g);
            g.cmd("INCRBY").arg(key).arg(n)
        }
        5 => {
            let n = amount(g);
            g.cmd("DECRBY").arg(key).arg(n)
        }
        _ => {
            // Start from a known integer now and then, so counting has something to count.
            let v = g.small_int();
            g.cmd("SET").arg(key).arg(v)
        }
    };
    one(c)
}

/// `cents` (hundredths) as a decimal: canonical ("1.5", "-0.05", "3"), or with a trailing zero.
fn decimal(cents: i64, trailing_zero: bool) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let abs = cents.unsigned_abs();
    let (int, frac) = (abs / 100, abs % 100);
    if frac == 0 && !trailing_zero {
        format!("{sign}{int}")
    } else if frac.is_multiple_of(10) && !trailing_zero {
        format!("{sign}{int}.{}", frac / 10)
    } else {
        format!("{sign}{int}.{frac:02}")
    }
}

/// INCRBYFLOAT on the float keys, kept to two decimals and |value| < 32 (see module docs).
fn float(g: &mut Gen) -> Vec<Step> {
    let i = g.rng.below(FLOAT_KEYS.len() as u64) as usize;
    let key = FLOAT_KEYS[i];
    let c = match g.rng.below(12) {
        0..=7 => {
            let inc = g.rng.range(-2000, 2000);
            let cur = g.floats[i].unwrap_or(0);
            if (cur + inc).abs() < 3200 {
                g.floats[i] = Some(cur + inc);
                let tz = g.rng.chance(10);
                g.cmd("INCRBYFLOAT").arg(key).arg(decimal(inc, tz))
            } else {
                let v = g.rng.range(-1500, 1500);
                g.floats[i] = Some(v);
                g.cmd("SET").arg(key).arg(decimal(v, false))
            }
        }
        8..=9 => {
            let v = g.rng.range(-3000, 3000);
            g.floats[i] = Some(v);
            let tz = g.rng.chance(15);
            g.cmd("SET").arg(key).arg(decimal(v, tz))
        }
        10 => g.cmd("GET").arg(key),
        _ => {
            let bad = *g.rng.pick(&[
                "abc", "", "1.2.3", " 1", "1 ", "--1", "0x", "nan", "inf", "-inf",
            ]);
            g.cmd("INCRBYFLOAT").arg(key).arg(bad)
        }
    };
    one(c)
}

fn keys_family(g: &mut Gen) -> Vec<Step> {
    let c = match g.rng.below(12) {
        0 => {
            let keys = g.keys(1, 4);
            for k in &keys {
                g.untaint(k);
            }
            g.cmd("DEL").args(keys)
        }
        1 => {
            let keys = g.keys(1, 3);
            for k in &keys {
                g.untaint(k);
            }
            g.cmd("UNLINK").args(keys)
        }
        2 => {
            let n = g.rng.range(1, 4);
            let keys: Vec<_> = (0..n).map(|_| g.any_key()).collect();
            g.cmd("EXISTS").args(keys)
        }
        3 => g.cmd("TYPE").arg(g.any_key()),
        4 => {
            let n = g.rng.range(1, 3);
            let keys: Vec<_> = (0..n).map(|_| g.any_key()).collect();
            g.cmd("TOUCH").args(keys)
        }
        5 => {
            let (src, dst) = (g.key(), g.key());
            g.carry_taint(&src, &dst);
            if src != dst {
                g.untaint(&src);
            }
            g.cmd("RENAME").arg(src).arg(dst)
        }
        6 => {
            let (src, dst) = (g.key(), g.key());
            g.carry_taint(&src, &dst);
            g.cmd("RENAMENX").arg(src).arg(dst)
        }
        7 => {
            let (src, dst) = (g.key(), g.key());
            g.carry_taint(&src, &dst);
            let mut c = g.cmd("COPY").arg(src).arg(dst);
            if g.rng.chance(5) {
                c = c.arg(g.casing("DB")).arg("0");
            }
            if g.rng.chance(50) {
                c = c.arg(g.casing("REPLACE"));
            }
            c
        }
        8 => g.cmd("KEYS").arg(*g.rng.pick(KEY_PATTERNS)).sorted(),
        9 => g.cmd("DBSIZE"),
        _ => {
            let sub = g.casing("ENCODING");
            g.cmd("OBJECT")
                .arg(sub)
                .arg(g.any_key())
                .check(Check::Normalize(collection_encoding))
        }
    };
    one(c)
}

/// Valkey 8 keeps small lists and sets in a listpack; Redis 7.0 reports quicklist and
/// hashtable for them. String encodings must still match exactly.
fn collection_encoding(reply: &[u8]) -> Vec<u8> {
    match reply {
        b"$8\r\nlistpack\r\n" | b"$9\r\nquicklist\r\n" | b"$9\r\nhashtable\r\n" => {
            b"<collection>".to_vec()
        }
        other => other.to_vec(),
    }
}

fn expire(g: &mut Gen) -> Vec<Step> {
    let c = match g.rng.below(14) {
        0..=5 => {
            let key = g.key();
            let mut flags: Vec<String> = Vec::new();
            if g.rng.chance(50) {
                flags.push(g.rng.pick(&["NX", "XX", "GT", "LT"]).to_string());
                if g.rng.chance(6) {
                    flags.push(g.rng.pick(&["NX", "XX", "GT", "LT"]).to_string());
                }
            }
            let flags: Vec<String> = flags.iter().map(|f| g.casing(f)).collect();
            let unconditional = flags.is_empty();
            let (name, when, relative) = match g.rng.below(10) {
                0..=2 => ("EXPIRE", g.rel_secs(), true),
                3..=4 => ("PEXPIRE", g.rel_ms(), true),
                5..=6 => ("EXPIREAT", g.abs_secs(), false),
                7..=8 => ("PEXPIREAT", g.abs_ms(), false),
                // Times that delete the key right away.
                _ => match g.rng.below(4) {
                    0 => ("EXPIRE", *g.rng.pick(&[0i64, -1, -100]), false),
                    1 => ("PEXPIRE", *g.rng.pick(&[0i64, -1, -5000]), false),
                    2 => ("EXPIREAT", g.past_secs(), false),
                    _ => ("PEXPIREAT", g.past_secs() * 1000, false),
                },
            };
            if relative {
                g.taint(&key);
            } else if unconditional {
                g.untaint(&key);
            }
            g.cmd(name).arg(key).arg(when.to_string()).args(flags)
        }
        6..=7 => g.cmd("TTL").arg(g.any_key()).check(Check::Close(2)),
        8 => g.cmd("PTTL").arg(g.any_key()).check(Check::Close(2000)),
        9..=10 => {
            let key = g.any_key();
            let check = g.expiretime_check(&key, false);
            g.cmd("EXPIRETIME").arg(key).check(check)
        }
        11 => {
            let key = g.any_key();
            let check = g.expiretime_check(&key, true);
            g.cmd("PEXPIRETIME").arg(key).check(check)
        }
        _ => {
            let key = g.key();
            g.untaint(&key);
            g.cmd("PERSIST").arg(key)
        }
    };
    one(c)
}

/// A key with a 1-5 ms TTL, probed once it has surely expired, then deleted.
fn short_ttl(g: &mut Gen) -> Vec<Step> {
    let key = TMP_KEYS[g.tmp_seq % TMP_KEYS.len()];
    g.tmp_seq += 1;
    let ms = g.rng.range(1, 5).to_string();
    let value = g.value();
    let mut steps: Vec<Step> = Vec::new();
    match g.rng.below(5) {
        0 => steps.push(
            g.cmd("SET")
                .arg(key)
                .arg(&value)
                .arg(g.casing("PX"))
                .arg(&ms)
                .into(),
        ),
        1 => steps.push(g.cmd("PSETEX").arg(key).arg(&ms).arg(&value).into()),
        2 => {
            steps.push(g.cmd("SET").arg(key).arg(&value).into());
            steps.push(g.cmd("PEXPIRE").arg(key).arg(&ms).into());
        }
        3 => {
            steps.push(g.cmd("SET").arg(key).arg(&value).into());
            steps.push(g.cmd("GETEX").arg(key).arg("PX").arg(&ms).into());
        }
        _ => {
            // Already in the past: the key is gone at once.
            let past = (g.past_secs() * 1000).to_string();
            steps.push(
                g.cmd("SET")
                    .arg(key)
                    .arg(&value)
                    .arg("PXAT")
                    .arg(past)
                    .into(),
            );
        }
    }
    steps.push(Step::Sleep(Duration::from_millis(10)));
    let other = g.key();
    let probe = match g.rng.below(20) {
        0 => g.cmd("GET").arg(key),
        1 => g.cmd("EXISTS").arg(key).arg(&other),
        2 => g.cmd("TTL").arg(key),
        3 => g.cmd("PTTL").arg(key),
        4 => g.cmd("TYPE").arg(key),
        5 => g.cmd("STRLEN").arg(key),
        6 => g.cmd("INCR").arg(key),
        7 => g.cmd("APPEND").arg(key).arg("x"),
        8 => g.cmd("SETNX").arg(key).arg(&value),
        9 => g.cmd("SET").arg(key).arg(&value).arg("NX"),
        10 => g.cmd("SET").arg(key).arg(&value).arg("XX"),
        11 => g.cmd("GETDEL").arg(key),
        12 => g.cmd("GETEX").arg(key).arg("PERSIST"),
        13 => g.cmd("EXPIRE").arg(key).arg("100"),
        14 => g.cmd("PERSIST").arg(key),
        15 => g.cmd("RENAME").arg(key).arg(&other),
        16 => g.cmd("COPY").arg(key).arg(&other),
        17 => g.cmd("KEYS").arg("tmp:*").sorted(),
        18 => g.cmd("OBJECT").arg("ENCODING").arg(key),
        _ => g.cmd("EXPIRETIME").arg(key),
    };
    steps.push(probe.into());
    steps.push(g.cmd("DEL").arg(key).into());
    steps
}

fn dump(g: &mut Gen) -> Vec<Step> {
    vec![Step::DumpRestore(g.any_key())]
}

fn server(g: &mut Gen) -> Vec<Step> {
    let c = match g.rng.below(4) {
        0 => g.cmd("PING"),
        1 => g.cmd("PING").arg(g.value()),
        _ => g.cmd("ECHO").arg(g.value()),
    };
    one(c)
}

/// Wrong arity, bad arguments, unknown options and commands. None of these may set a relative
/// expiry or touch the float keys (the model would not know); errors must match exactly.
fn invalid(g: &mut Gen) -> Vec<Step> {
    let k = g.key();
    let k2 = g.key();
    let v = g.value();
    let k = k.as_slice();
    let k2 = k2.as_slice();
    let v = v.as_slice();
    let long = g.text(200);
    let long = long.as_slice();
    let templates: Vec<Vec<&[u8]>> = vec![
        // Wrong arity.
        vec![b"GET"],
        vec![b"GET", k, k2],
        vec![b"SET"],
        vec![b"SET", k],
        vec![b"SETNX", k],
        vec![b"SETEX", k, b"10"],
        vec![b"PSETEX", k, b"10"],
        vec![b"GETSET", k],
        vec![b"GETDEL"],
        vec![b"GETDEL", k, k2],
        vec![b"GETEX"],
        vec![b"MGET"],
        vec![b"MSET"],
        vec![b"MSET", k],
        vec![b"MSET", k, v, k2],
        vec![b"MSETNX", k],
        vec![b"APPEND", k],
        vec![b"STRLEN"],
        vec![b"INCR"],
        vec![b"INCR", k, k2],
        vec![b"DECR"],
        vec![b"INCRBY", k],
        vec![b"DECRBY", k],
        vec![b"INCRBYFLOAT", k],
        vec![b"GETRANGE", k, b"0"],
        vec![b"SETRANGE", k, b"0"],
        vec![b"DEL"],
        vec![b"UNLINK"],
        vec![b"EXISTS"],
        vec![b"TYPE"],
        vec![b"TYPE", k, k2],
        vec![b"EXPIRE", k],
        vec![b"PEXPIRE"],
        vec![b"EXPIREAT", k],
        vec![b"PEXPIREAT", k],
        vec![b"TTL"],
        vec![b"PTTL", k, k2],
        vec![b"EXPIRETIME"],
        vec![b"PEXPIRETIME", k, k2],
        vec![b"PERSIST"],
        vec![b"RENAME", k],
        vec![b"RENAMENX", k],
        vec![b"COPY", k],
        vec![b"KEYS"],
        vec![b"KEYS", b"*", b"x"],
        vec![b"DBSIZE", b"x"],
        vec![b"TOUCH"],
        vec![b"OBJECT"],
        vec![b"OBJECT", b"ENCODING"],
        vec![b"OBJECT", b"ENCODING", k, k2],
        vec![b"DUMP"],
        vec![b"ECHO"],
        vec![b"ECHO", b"a", b"b"],
        vec![b"PING", b"a", b"b"],
        // Integers that aren't.
        vec![b"INCRBY", k, b"abc"],
        vec![b"INCRBY", k, b"1.5"],
        vec![b"INCRBY", k, b""],
        vec![b"INCRBY", k, b" 1"],
        vec![b"INCRBY", k, b"+1"],
        vec![b"DECRBY", k, b"99999999999999999999"],
        vec![b"DECRBY", k, b"-9223372036854775808"],
        vec![b"EXPIRE", k, b"abc"],
        vec![b"EXPIRE", k, b"1.5"],
        vec![b"PEXPIREAT", k, b""],
        vec![b"GETRANGE", k, b"a", b"1"],
        vec![b"GETRANGE", k, b"0", b"1.5"],
        vec![b"SETRANGE", k, b"-1", v],
        vec![b"SETRANGE", k, b"abc", v],
        vec![b"SETRANGE", k, b"600000000", b"x"],
        vec![b"SETRANGE", k, b"536870912", b"x"],
        vec![b"SETRANGE", b"never:exists", b"600000000", b""],
        vec![b"SETEX", k, b"abc", v],
        vec![b"PSETEX", k, b"1.5", v],
        vec![b"INCRBYFLOAT", k, b"abc"],
        vec![b"INCRBYFLOAT", k, b""],
        vec![b"INCRBYFLOAT", k, b"1.2.3"],
        // Bad expire times.
        vec![b"SETEX", k, b"0", v],
        vec![b"SETEX", k, b"-5", v],
        vec![b"PSETEX", k, b"0", v],
        vec![b"SETEX", k, b"9223372036854775807", v],
        vec![b"SET", k, v, b"EX", b"0"],
        vec![b"SET", k, v, b"PX", b"-1"],
        vec![b"SET", k, v, b"EX", b"9223372036854775807"],
        vec![b"SET", k, v, b"PXAT", b"0"],
        vec![b"SET", k, v, b"EXAT", b"-1"],
        vec![b"GETEX", k, b"EX", b"0"],
        vec![b"GETEX", k, b"PX", b"-1"],
        vec![b"GETEX", k, b"EXAT", b"9223372036854775807"],
        vec![b"EXPIRE", k, b"9223372036854775807"],
        vec![b"EXPIRE", k, b"-9223372036854775808"],
        vec![b"PEXPIRE", k, b"9223372036854775807"],
        vec![b"EXPIREAT", k, b"9223372036854775807"],
        // Bad or conflicting options.
        vec![b"SET", k, v, b"EX", b"abc"],
        vec![b"SET", k, v, b"EX", b"1.5"],
        vec![b"SET", k, v, b"EX"],
        vec![b"SET", k, v, b"NX", b"XX"],
        vec![b"SET", k, v, b"EX", b"10", b"PX", b"100"],
        vec![b"SET", k, v, b"KEEPTTL", b"EX", b"10"],
        vec![b"SET", k, v, b"EXAT", b"4000000000", b"KEEPTTL"],
        vec![b"SET", k, v, b"FOO"],
        vec![b"SET", k, v, b"GET", b"GET"],
        vec![b"SET", k, v, b"NX", b"NX"],
        vec![b"GETEX", k, b"EX"],
        vec![b"GETEX", k, b"FOO"],
        vec![b"GETEX", k, b"EX", b"abc"],
        vec![b"GETEX", k, b"PERSIST", b"EX", b"10"],
        vec![b"GETEX", k, b"EX", b"10", b"PX", b"10"],
        vec![b"GETEX", k, b"PERSIST", b"PERSIST"],
        vec![b"EXPIRE", k, b"100", b"FOO"],
        vec![b"EXPIRE", k, b"100", b"NX", b"XX"],
        vec![b"EXPIRE", k, b"100", b"GT", b"LT"],
        vec![b"EXPIRE", k, b"100", b"NX", b"GT"],
        vec![b"PEXPIRE", k, b"100", b"XX", b"NX"],
        vec![b"EXPIREAT", k, b"4000000000", b"LT", b"GT"],
        vec![b"EXPIRE", k, b"abc", b"FOO"],
        vec![b"COPY", k, k2, b"FOO"],
        vec![b"COPY", k, k2, b"DB"],
        vec![b"COPY", k, k2, b"DB", b"abc"],
        vec![b"COPY", k, k2, b"REPLACE", b"FOO"],
        vec![b"OBJECT", b"FOO", k],
        vec![b"OBJECT", b"encodings", k],
        // Unknown commands.
        vec![b"FOO"],
        vec![b"FOO", b"a", b"b"],
        vec![b"GETT", k],
        vec![b""],
        vec![b"SET2", k, v],
        vec![long],
        vec![b"FOO", long],
        vec![b"FOO", long, long],
        vec![
            b"FOO", b"1", b"2", b"3", b"4", b"5", b"6", b"7", b"8", b"9", b"10", b"11", b"12",
            b"13", b"14", b"15", b"16", b"17", b"18", b"19", b"20", b"21", b"22", b"23", b"24",
            b"25", b"26", b"27", b"28", b"29", b"30", b"31", b"32", b"33", b"34", b"35", b"36",
            b"37", b"38", b"39", b"40", b"41", b"42", b"43", b"44", b"45", b"46", b"47", b"48",
        ],
        vec![b"FOO", b"a\r\nb", b"c\nd"],
        vec![b"foo\r\nbar", b"x"],
        vec![b"GET\x00", k],
        vec![b"CLUSTERX", b"INFO"],
    ];
    let c = pick_invalid(g, &templates);
    one(c)
}

/// The commands that read a whole value of the given type, for keyspace and DUMP comparisons.
/// The data-types work adds `hash` (HGETALL, sorted), `list` (LRANGE 0 -1), and so on.
pub fn value_readers(type_name: &[u8], key: &[u8]) -> Vec<Cmd> {
    match type_name {
        b"string" => vec![Cmd::of(&[b"GET" as &[u8], key])],
        b"hash" => hashes::readers(key),
        b"list" => lists::readers(key),
        b"set" => sets::readers(key),
        b"zset" => zsets::readers(key),
        _ => Vec::new(),
    }
}

// ------------------------------------------------------------------------------------------
// RESP parsing (for normalization)

/// A parsed reply, kept close to the wire so it serializes back to the same bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// `+`, `-`, `:`, `,`, `(`, `#`, `_`: the type byte and the line.
    Line(u8, Vec<u8>),
    /// `$`, `!`, `=`: the type byte and the payload (None for `$-1`).
    Bulk(u8, Option<Vec<u8>>),
    /// `*`, `~`, `%`, `>`, `|`: the type byte and the elements (for maps, keys and values
    /// interleaved; None for `*-1`).
    Agg(u8, Option<Vec<Frame>>),
}

impl Frame {
    pub fn parse(buf: &[u8]) -> Option<Frame> {
        let (f, used) = Frame::parse_at(buf)?;
        (used == buf.len()).then_some(f)
    }

    fn parse_at(buf: &[u8]) -> Option<(Frame, usize)> {
        let kind = *buf.first()?;
        let eol = buf.windows(2).position(|w| w == b"\r\n")?;
        let line = &buf[1..eol];
        let mut pos = eol + 2;
        match kind {
            b'+' | b'-' | b':' | b',' | b'(' | b'#' | b'_' => {
                Some((Frame::Line(kind, line.to_vec()), pos))
            }
            b'$' | b'!' | b'=' => {
                let n: i64 = std::str::from_utf8(line).ok()?.parse().ok()?;
                if n < 0 {
                    return Some((Frame::Bulk(kind, None), pos));
                }
                let n = n as usize;
                let data = buf.get(pos..pos + n)?.to_vec();
                if buf.get(pos + n..pos + n + 2)? != b"\r\n" {
                    return None;
                }
                Some((Frame::Bulk(kind, Some(data)), pos + n + 2))
            }
            b'*' | b'~' | b'%' | b'>' | b'|' => {
                let n: i64 = std::str::from_utf8(line).ok()?.parse().ok()?;
                if n < 0 {
                    return Some((Frame::Agg(kind, None), pos));
                }
                let count = if kind == b'%' || kind == b'|' {
                    n as usize * 2
                } else {
                    n as usize
                };
                let mut items = Vec::with_capacity(count.min(1024));
                for _ in 0..count {
                    let (f, used) = Frame::parse_at(&buf[pos..])?;
                    items.push(f);
                    pos += used;
                }
                Some((Frame::Agg(kind, Some(items)), pos))
            }
            _ => None,
        }
    }

    pub fn write(&self, out: &mut Vec<u8>) {
        match self {
            Frame::Line(k, line) => {
                out.push(*k);
                out.extend_from_slice(line);
                out.extend_from_slice(b"\r\n");
            }
            Frame::Bulk(k, None) => {
                out.push(*k);
                out.extend_from_slice(b"-1\r\n");
            }
            Frame::Bulk(k, Some(data)) => {
                out.push(*k);
                out.extend_from_slice(data.len().to_string().as_bytes());
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(data);
                out.extend_from_slice(b"\r\n");
            }
            Frame::Agg(k, None) => {
                out.push(*k);
                out.extend_from_slice(b"-1\r\n");
            }
            Frame::Agg(k, Some(items)) => {
                let n = if *k == b'%' || *k == b'|' {
                    items.len() / 2
                } else {
                    items.len()
                };
                out.push(*k);
                out.extend_from_slice(n.to_string().as_bytes());
                out.extend_from_slice(b"\r\n");
                for i in items {
                    i.write(out);
                }
            }
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write(&mut out);
        out
    }

    /// The payload of a bulk or simple string reply.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Frame::Bulk(_, Some(d)) => Some(d),
            Frame::Line(b'+', l) => Some(l),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(
            self,
            Frame::Bulk(_, None) | Frame::Agg(_, None) | Frame::Line(b'_', _)
        )
    }
}

/// Normalizer for unordered replies: sorts a top-level array or set by element bytes, or a map
/// by key. Replies that aren't aggregates (errors) pass through unchanged.
pub fn sort_aggregate(reply: &[u8]) -> Vec<u8> {
    let Some(mut frame) = Frame::parse(reply) else {
        return reply.to_vec();
    };
    if let Frame::Agg(kind, Some(items)) = &mut frame {
        if *kind == b'%' {
            let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = items
                .chunks(2)
                .map(|p| {
                    (
                        p[0].to_bytes(),
                        p.get(1).map(Frame::to_bytes).unwrap_or_default(),
                    )
                })
                .collect();
            pairs.sort();
            let mut out = Vec::new();
            out.extend_from_slice(format!("%{}\r\n", pairs.len()).as_bytes());
            for (k, v) in pairs {
                out.extend_from_slice(&k);
                out.extend_from_slice(&v);
            }
            return out;
        }
        items.sort_by_key(Frame::to_bytes);
    }
    frame.to_bytes()
}

/// `:n\r\n` as n.
pub fn int_reply(reply: &[u8]) -> Option<i64> {
    let body = reply.strip_prefix(b":")?.strip_suffix(b"\r\n")?;
    std::str::from_utf8(body).ok()?.parse().ok()
}

/// Bytes as printable ASCII (`\r`, `\n`, `\x00`, ...), cut after `max` input bytes.
pub fn escape(bytes: &[u8], max: usize) -> String {
    let mut out = String::new();
    for &b in bytes.iter().take(max) {
        out.extend(std::ascii::escape_default(b).map(char::from));
    }
    if bytes.len() > max {
        let _ = write!(out, "...({} bytes)", bytes.len());
    }
    out
}

// ------------------------------------------------------------------------------------------
// The runner

/// One difference between the servers.
#[derive(Debug, Clone)]
pub struct Mismatch {
    pub phase: String,
    pub index: usize,
    pub family: &'static str,
    pub name: String,
    pub command: String,
    pub reference: Vec<u8>,
    pub subject: Vec<u8>,
    pub note: String,
    pub history: Vec<String>,
}

pub struct Runner {
    pub cfg: Config,
    pub gen: Gen,
    families: Vec<Family>,
    total_weight: u64,
    reference_name: &'static str,
    subject_name: &'static str,
    /// The last [`TRAIL`] commands: their line for reports, and their arguments.
    history: VecDeque<(String, Vec<Vec<u8>>)>,
    /// Commands sent (to each server).
    pub executed: usize,
    pub mismatches: Vec<Mismatch>,
    family_counts: BTreeMap<&'static str, usize>,
    /// The reference's replies by RESP type byte: shows the stream isn't all errors.
    reply_kinds: BTreeMap<char, usize>,
    started: Instant,
}

/// Commands shown before a mismatch.
const HISTORY: usize = 10;
/// Commands searched for earlier uses of a mismatching command's keys.
const TRAIL: usize = 5000;
/// Earlier commands on the same keys shown with a mismatch.
const TRAIL_SHOWN: usize = 8;

impl Runner {
    pub fn new(cfg: Config, families: Vec<Family>, subject_name: &'static str) -> Runner {
        let total_weight = families.iter().map(|f| f.weight).sum();
        Runner {
            gen: Gen::new(cfg.seed),
            cfg,
            families,
            total_weight,
            reference_name: "redis",
            subject_name,
            history: VecDeque::new(),
            executed: 0,
            mismatches: Vec::new(),
            family_counts: BTreeMap::new(),
            reply_kinds: BTreeMap::new(),
            started: Instant::now(),
        }
    }

    pub fn family_count(&self) -> usize {
        self.families.len()
    }

    fn draw_family(&mut self) -> usize {
        let mut x = self.gen.rng.below(self.total_weight);
        for (i, f) in self.families.iter().enumerate() {
            if x < f.weight {
                return i;
            }
            x -= f.weight;
        }
        self.families.len() - 1
    }

    /// `n` family draws against the two connections.
    pub fn run_phase(
        &mut self,
        phase: &str,
        reference: &mut dyn Endpoint,
        subject: &mut dyn Endpoint,
        n: usize,
    ) -> Result<(), String> {
        for _ in 0..n {
            let fi = self.draw_family();
            let family = self.families[fi].name;
            *self.family_counts.entry(family).or_default() += 1;
            let steps = (self.families[fi].generate)(&mut self.gen);
            for step in steps {
                match step {
                    Step::Cmd(c) => self.exec(phase, family, &c, reference, subject)?,
                    Step::Sleep(d) => std::thread::sleep(d),
                    Step::DumpRestore(key) => {
                        self.dump_restore(phase, family, &key, reference, subject)?
                    }
                }
            }
        }
        Ok(())
    }

    /// Sends `cmd` to both servers and compares. Returns both replies.
    fn exec(
        &mut self,
        phase: &str,
        family: &'static str,
        cmd: &Cmd,
        reference: &mut dyn Endpoint,
        subject: &mut dyn Endpoint,
    ) -> Result<(), String> {
        self.exec_replies(phase, family, cmd, reference, subject)
            .map(|_| ())
    }

    fn exec_replies(
        &mut self,
        phase: &str,
        family: &'static str,
        cmd: &Cmd,
        reference: &mut dyn Endpoint,
        subject: &mut dyn Endpoint,
    ) -> Result<(Vec<u8>, Vec<u8>), String> {
        let args: Vec<&[u8]> = cmd.args.iter().map(Vec::as_slice).collect();
        let a = reference.call(&args);
        let b = subject.call(&args);
        self.executed += 1;
        let index = self.executed;
        let kind = a.first().map_or('?', |&c| c as char);
        *self.reply_kinds.entry(kind).or_default() += 1;
        let ok = cmd.check.matches(&a, &b);
        if !ok {
            self.mismatch(
                Mismatch {
                    phase: phase.to_string(),
                    index,
                    family,
                    name: cmd.name(),
                    command: cmd.printable(),
                    reference: a.clone(),
                    subject: b.clone(),
                    note: String::new(),
                    history: self.context(&cmd.args),
                },
                reference,
                subject,
            )?;
        }
        self.remember(
            format!(
                "#{index} [{phase}] {} -> {}",
                cmd.printable(),
                escape(&a, 60)
            ),
            &cmd.args,
        );
        Ok((a, b))
    }

    fn remember(&mut self, line: String, args: &[Vec<u8>]) {
        if self.history.len() == TRAIL {
            self.history.pop_front();
        }
        self.history.push_back((line, args.to_vec()));
    }

    /// What to show before a mismatch of `args`: the last few commands, and before those the
    /// last commands that used any of the same arguments (usually keys).
    fn context(&self, args: &[Vec<u8>]) -> Vec<String> {
        let recent = self.history.len().saturating_sub(HISTORY);
        // The keys among the arguments (so that ENCODING or 0 don't match everything).
        let wanted: Vec<&Vec<u8>> = args
            .iter()
            .skip(1)
            .filter(|a| {
                [KEYS, FLOAT_KEYS, TMP_KEYS]
                    .iter()
                    .any(|space| space.contains(&a.as_slice()))
            })
            .collect();
        let mut trail: Vec<String> = self
            .history
            .iter()
            .take(recent)
            .rev()
            .filter(|(_, a)| a.iter().skip(1).any(|x| wanted.contains(&x)))
            .take(TRAIL_SHOWN)
            .map(|(line, _)| line.clone())
            .collect();
        trail.reverse();
        let mut out = Vec::new();
        if !trail.is_empty() {
            out.push("(earlier, on the same arguments:)".to_string());
            out.extend(trail);
            out.push("(then the last commands:)".to_string());
        }
        out.extend(
            self.history
                .iter()
                .skip(recent)
                .map(|(line, _)| line.clone()),
        );
        out
    }

    /// Records a mismatch: fails the run, or (keep-going) notes it and makes sure the
    /// keyspaces agree again before going on.
    fn mismatch(
        &mut self,
        m: Mismatch,
        reference: &mut dyn Endpoint,
        subject: &mut dyn Endpoint,
    ) -> Result<(), String> {
        if !self.cfg.keep_going
            || m.reference.starts_with(TRANSPORT_ERROR)
            || m.subject.starts_with(TRANSPORT_ERROR)
        {
            let report = self.render(&m);
            self.mismatches.push(m);
            return Err(report);
        }
        eprintln!("{}", self.render(&m));
        self.mismatches.push(m);
        if self.keyspace_differs(reference, subject) {
            eprintln!("differential: keyspaces diverged; emptying both and going on");
            wipe(reference);
            wipe(subject);
            self.gen.reset_model();
        }
        Ok(())
    }

    /// A quiet comparison of the whole keyspace (no mismatch records).
    fn keyspace_differs(
        &mut self,
        reference: &mut dyn Endpoint,
        subject: &mut dyn Endpoint,
    ) -> bool {
        let a = sort_aggregate(&reference.call(&[b"KEYS", b"*"]));
        let b = sort_aggregate(&subject.call(&[b"KEYS", b"*"]));
        if a != b {
            return true;
        }
        for key in key_list(&a) {
            for c in self.key_checks(&key, reference) {
                let args: Vec<&[u8]> = c.args.iter().map(Vec::as_slice).collect();
                if !c
                    .check
                    .matches(&reference.call(&args), &subject.call(&args))
                {
                    return true;
                }
            }
        }
        false
    }

    /// The commands that describe one key: TYPE, its value, TTL and PEXPIRETIME.
    fn key_checks(&self, key: &[u8], reference: &mut dyn Endpoint) -> Vec<Cmd> {
        let ty = reference.call(&[b"TYPE", key]);
        let ty = Frame::parse(&ty)
            .and_then(|f| f.as_bytes().map(<[u8]>::to_vec))
            .unwrap_or_default();
        let mut out = vec![Cmd::of(&[b"TYPE" as &[u8], key])];
        out.extend(value_readers(&ty, key));
        out.push(Cmd::of(&[b"TTL" as &[u8], key]).check(Check::Close(2)));
        out.push(
            Cmd::of(&[b"PEXPIRETIME" as &[u8], key]).check(self.gen.expiretime_check(key, true)),
        );
        out
    }

    /// Compares the whole keyspace: KEYS * (sorted), then every key's type, value and TTL.
    pub fn compare_keyspace(
        &mut self,
        phase: &str,
        reference: &mut dyn Endpoint,
        subject: &mut dyn Endpoint,
    ) -> Result<(), String> {
        let (a, _) = self.exec_replies(
            phase,
            "keyspace",
            &Cmd::of(&["KEYS", "*"]).sorted(),
            reference,
            subject,
        )?;
        for key in key_list(&sort_aggregate(&a)) {
            for c in self.key_checks(&key, reference) {
                self.exec(phase, "keyspace", &c, reference, subject)?;
            }
        }
        Ok(())
    }

    /// Sends HELLO 3 on both connections and checks both answered with a map of the same
    /// fields and `proto` 3 (the values of server, version, id differ by nature).
    pub fn hello3(
        &mut self,
        reference: &mut dyn Endpoint,
        subject: &mut dyn Endpoint,
    ) -> Result<(), String> {
        let a = reference.call(&[b"HELLO", b"3"]);
        let b = subject.call(&[b"HELLO", b"3"]);
        self.executed += 1;
        // The sorted field names, with the value for `proto`.
        let shape = |reply: &[u8]| -> Option<Vec<Vec<u8>>> {
            let Frame::Agg(b'%', Some(items)) = Frame::parse(reply)? else {
                return None;
            };
            let mut fields: Vec<Vec<u8>> = items
                .chunks(2)
                .map(|p| {
                    let mut field = p[0].as_bytes().unwrap_or_default().to_vec();
                    if field == b"proto" {
                        field.push(b'=');
                        field.extend(p.get(1).map(Frame::to_bytes).unwrap_or_default());
                    }
                    field
                })
                .collect();
            fields.sort();
            Some(fields)
        };
        let (sa, sb) = (shape(&a), shape(&b));
        if sa.is_none() || sa != sb {
            self.mismatch(
                Mismatch {
                    phase: "resp3".into(),
                    index: self.executed,
                    family: "hello",
                    name: "HELLO".into(),
                    command: "\"HELLO\" \"3\"".into(),
                    reference: a,
                    subject: b,
                    note: "compared: map field names and proto".into(),
                    history: self.context(&[]),
                },
                reference,
                subject,
            )?;
        }
        Ok(())
    }

    /// DUMP on both; each payload must RESTORE on the other server to the same value.
    fn dump_restore(
        &mut self,
        phase: &str,
        family: &'static str,
        key: &[u8],
        reference: &mut dyn Endpoint,
        subject: &mut dyn Endpoint,
    ) -> Result<(), String> {
        let a = reference.call(&[b"DUMP", key]);
        let b = subject.call(&[b"DUMP", key]);
        self.executed += 1;
        let index = self.executed;
        let dump_cmd = Cmd::of(&[b"DUMP" as &[u8], key]);
        let command = dump_cmd.printable();
        let history = self.context(&dump_cmd.args);
        self.remember(
            format!("#{index} [{phase}] {command} -> {}", escape(&a, 60)),
            &dump_cmd.args,
        );
        let fail = |note: &str, reference_reply: Vec<u8>, subject_reply: Vec<u8>| Mismatch {
            phase: phase.to_string(),
            index,
            family,
            name: "DUMP".into(),
            command: command.clone(),
            reference: reference_reply,
            subject: subject_reply,
            note: note.to_string(),
            history: history.clone(),
        };
        let (fa, fb) = (Frame::parse(&a), Frame::parse(&b));
        let (pa, pb) = match (&fa, &fb) {
            (Some(x), Some(y)) if x.is_null() && y.is_null() => return Ok(()),
            (Some(Frame::Bulk(b'$', Some(x))), Some(Frame::Bulk(b'$', Some(y)))) => {
                (x.clone(), y.clone())
            }
            _ => {
                let m = fail("DUMP replies differ in kind", a.clone(), b.clone());
                return self.mismatch(m, reference, subject);
            }
        };
        let original = read_value(reference, key);

        // The subject's payload, restored into the reference.
        let r = reference.call(&[b"RESTORE", RESTORED_KEY, b"0", &pb, b"REPLACE"]);
        if r != b"+OK\r\n" {
            let note = format!(
                "{} could not RESTORE {}'s DUMP payload ({})",
                self.reference_name,
                self.subject_name,
                escape(&r, 100)
            );
            let m = fail(&note, a.clone(), b.clone());
            self.mismatch(m, reference, subject)?;
        } else {
            let restored = read_value(reference, RESTORED_KEY);
            reference.call(&[b"DEL", RESTORED_KEY]);
            if restored != original {
                let note = format!(
                    "{}'s payload restored into {} reads back differently",
                    self.subject_name, self.reference_name
                );
                let m = fail(&note, original.clone(), restored);
                self.mismatch(m, reference, subject)?;
            }
        }

        // The reference's payload, restored into the subject (when it has RESTORE).
        let r = subject.call(&[b"RESTORE", RESTORED_KEY, b"0", &pa, b"REPLACE"]);
        if r.starts_with(b"-ERR unknown command") {
            return Ok(());
        }
        if r != b"+OK\r\n" {
            let note = format!(
                "{} could not RESTORE {}'s DUMP payload ({})",
                self.subject_name,
                self.reference_name,
                escape(&r, 100)
            );
            let m = fail(&note, a.clone(), b.clone());
            return self.mismatch(m, reference, subject);
        }
        let restored = read_value(subject, RESTORED_KEY);
        subject.call(&[b"DEL", RESTORED_KEY]);
        if restored != original {
            let note = format!(
                "{}'s payload restored into {} reads back differently",
                self.reference_name, self.subject_name
            );
            let m = fail(&note, original, restored);
            return self.mismatch(m, reference, subject);
        }
        Ok(())
    }

    /// The failure message for one mismatch.
    pub fn render(&self, m: &Mismatch) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "differential mismatch: seed {}, phase {}, command #{} (family {})",
            self.cfg.seed, m.phase, m.index, m.family
        );
        let _ = writeln!(s, "  command: {}", m.command);
        if !m.note.is_empty() {
            let _ = writeln!(s, "  note:    {}", m.note);
        }
        let _ = writeln!(
            s,
            "  {:8} {}",
            format!("{}:", self.reference_name),
            escape(&m.reference, 2000)
        );
        let _ = writeln!(
            s,
            "  {:8} {}",
            format!("{}:", self.subject_name),
            escape(&m.subject, 2000)
        );
        let _ = writeln!(
            s,
            "  previous commands (with {}'s reply):",
            self.reference_name
        );
        for h in &m.history {
            let _ = writeln!(s, "    {h}");
        }
        let _ = writeln!(s, "  reproduce: {}", self.cfg.rerun_hint());
        s
    }

    /// Mismatches grouped by command, a few distinct examples each.
    pub fn grouped_report(&self) -> String {
        let mut groups: BTreeMap<&str, Vec<&Mismatch>> = BTreeMap::new();
        for m in &self.mismatches {
            groups.entry(m.name.as_str()).or_default().push(m);
        }
        let mut s = format!(
            "differential: {} mismatches in {} commands (seed {}):\n",
            self.mismatches.len(),
            groups.len(),
            self.cfg.seed
        );
        for (name, ms) in groups {
            let _ = writeln!(s, "== {name} x{}", ms.len());
            let mut seen = HashSet::new();
            for m in ms {
                let shape = (
                    reply_shape(&m.reference),
                    reply_shape(&m.subject),
                    m.note.clone(),
                );
                if seen.len() >= 4 || !seen.insert(shape) {
                    continue;
                }
                if seen.len() == 1 {
                    let _ = writeln!(s, "   (preceded by)");
                    for h in &m.history {
                        let _ = writeln!(s, "      {h}");
                    }
                }
                let _ = writeln!(s, "   #{} [{}] {}", m.index, m.phase, m.command);
                if !m.note.is_empty() {
                    let _ = writeln!(s, "      note:    {}", m.note);
                }
                let _ = writeln!(
                    s,
                    "      {:8} {}",
                    format!("{}:", self.reference_name),
                    escape(&m.reference, 200)
                );
                let _ = writeln!(
                    s,
                    "      {:8} {}",
                    format!("{}:", self.subject_name),
                    escape(&m.subject, 200)
                );
            }
        }
        s
    }

    pub fn summary(&self) -> String {
        let per_family: Vec<String> = self
            .family_counts
            .iter()
            .map(|(f, n)| format!("{f}={n}"))
            .collect();
        let kinds: Vec<String> = self
            .reply_kinds
            .iter()
            .map(|(k, n)| format!("'{k}'={n}"))
            .collect();
        format!(
            "differential: {} commands, {} families, seed {}, {} mismatches\n  ({:.1}s; draws: {}; reply types: {})",
            self.executed,
            self.families.len(),
            self.cfg.seed,
            self.mismatches.len(),
            self.started.elapsed().as_secs_f64(),
            per_family.join(" "),
            kinds.join(" ")
        )
    }
}

/// A reply with digits masked, cut short: mismatches of the same shape are one finding.
fn reply_shape(reply: &[u8]) -> String {
    let masked: Vec<u8> = reply
        .iter()
        .take(40)
        .map(|&b| if b.is_ascii_digit() { b'#' } else { b })
        .collect();
    escape(&masked, 40)
}

/// Deletes every key (KEYS * and DEL, the commands under test rather than FLUSHALL).
fn wipe(conn: &mut dyn Endpoint) {
    for key in key_list(&conn.call(&[b"KEYS", b"*"])) {
        conn.call(&[b"DEL", &key]);
    }
}

/// The keys in a (sorted) KEYS reply.
fn key_list(reply: &[u8]) -> Vec<Vec<u8>> {
    match Frame::parse(reply) {
        Some(Frame::Agg(_, Some(items))) => items
            .iter()
            .filter_map(|f| f.as_bytes().map(<[u8]>::to_vec))
            .collect(),
        _ => Vec::new(),
    }
}

/// A key's type and value as read from one server, for comparing a value with itself.
fn read_value(conn: &mut dyn Endpoint, key: &[u8]) -> Vec<u8> {
    let ty = conn.call(&[b"TYPE", key]);
    let name = Frame::parse(&ty)
        .and_then(|f| f.as_bytes().map(<[u8]>::to_vec))
        .unwrap_or_default();
    let mut out = ty;
    for c in value_readers(&name, key) {
        let args: Vec<&[u8]> = c.args.iter().map(Vec::as_slice).collect();
        let reply = conn.call(&args);
        out.extend(match c.check {
            Check::Normalize(f) => f(&reply),
            _ => reply,
        });
    }
    out
}

/// Runs the whole differential test: a RESP2 phase, a RESP3 phase (on new connections that
/// sent HELLO 3), and a keyspace comparison after each. `connect` opens a new connection pair
/// (reference, subject). The error is the first mismatch's report (unless keep-going).
pub fn run<R: Endpoint, S: Endpoint>(
    cfg: &Config,
    subject_name: &'static str,
    mut connect: impl FnMut() -> (R, S),
) -> (Runner, Result<(), String>) {
    let mut runner = Runner::new(cfg.clone(), families(), subject_name);
    let result = (|| {
        let (mut r2, mut s2) = connect();
        runner.run_phase("resp2", &mut r2, &mut s2, cfg.commands)?;
        runner.compare_keyspace("resp2-keyspace", &mut r2, &mut s2)?;
        let (mut r3, mut s3) = connect();
        runner.hello3(&mut r3, &mut s3)?;
        runner.run_phase("resp3", &mut r3, &mut s3, cfg.commands)?;
        runner.compare_keyspace("resp3-keyspace", &mut r3, &mut s3)
    })();
    (runner, result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let samples: &[&[u8]] = &[
            b"+OK\r\n",
            b"-ERR x\r\n",
            b":-5\r\n",
            b"$-1\r\n",
            b"_\r\n",
            b"$3\r\na\r\n\r\n",
            b"*-1\r\n",
            b"*2\r\n$1\r\nb\r\n:1\r\n",
            b"%1\r\n+k\r\n*1\r\n,1.5\r\n",
            b"~2\r\n#t\r\n(123\r\n",
            b"=7\r\ntxt:abc\r\n",
        ];
        for s in samples {
            assert_eq!(Frame::parse(s).unwrap().to_bytes(), *s, "{}", escape(s, 99));
        }
        assert!(Frame::parse(b"$3\r\nab\r\n").is_none());
        assert!(Frame::parse(b"+OK\r\n+OK\r\n").is_none());
    }

    #[test]
    fn sorting_normalizes_order_only() {
        let a = b"*3\r\n$1\r\nc\r\n$1\r\na\r\n$1\r\nb\r\n";
        let b = b"*3\r\n$1\r\nb\r\n$1\r\nc\r\n$1\r\na\r\n";
        assert_eq!(sort_aggregate(a), sort_aggregate(b));
        assert_eq!(
            sort_aggregate(a),
            b"*3\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n"
        );
        assert_ne!(
            sort_aggregate(a),
            sort_aggregate(b"*2\r\n$1\r\na\r\n$1\r\nb\r\n")
        );
        let m1 = b"%2\r\n+b\r\n:2\r\n+a\r\n:1\r\n";
        let m2 = b"%2\r\n+a\r\n:1\r\n+b\r\n:2\r\n";
        assert_eq!(sort_aggregate(m1), sort_aggregate(m2));
        assert_eq!(sort_aggregate(b"-ERR x\r\n"), b"-ERR x\r\n");
    }

    #[test]
    fn close_check_tolerates_only_positive_drift() {
        let c = Check::Close(2);
        assert!(c.matches(b":100\r\n", b":101\r\n"));
        assert!(!c.matches(b":100\r\n", b":103\r\n"));
        assert!(!c.matches(b":-1\r\n", b":1\r\n"));
        assert!(!c.matches(b":-2\r\n", b":-1\r\n"));
        assert!(c.matches(b":-2\r\n", b":-2\r\n"));
        assert!(!c.matches(b"-ERR a\r\n", b"-ERR b\r\n"));
    }

    #[test]
    fn decimals_print_like_redis() {
        assert_eq!(decimal(150, false), "1.5");
        assert_eq!(decimal(150, true), "1.50");
        assert_eq!(decimal(-5, false), "-0.05");
        assert_eq!(decimal(300, false), "3");
        assert_eq!(decimal(0, false), "0");
        assert_eq!(decimal(-1234, false), "-12.34");
    }

    #[test]
    fn a_seed_fixes_the_stream() {
        let stream = |seed| {
            let fams = families();
            let mut g = Gen::new(seed);
            let mut out = Vec::new();
            for i in 0..2000 {
                for step in (fams[i % fams.len()].generate)(&mut g) {
                    out.push(match step {
                        Step::Cmd(c) => c.printable(),
                        Step::Sleep(d) => format!("sleep {d:?}"),
                        Step::DumpRestore(k) => format!("dump {}", escape(&k, 99)),
                    });
                }
            }
            out
        };
        assert_eq!(stream(7), stream(7));
        assert_ne!(stream(7), stream(8));
    }

    #[test]
    fn relative_ttls_are_unique_and_apart() {
        let mut g = Gen::new(1);
        let mut seen = HashSet::new();
        for _ in 0..5000 {
            let t = g.rel_secs();
            assert!((10_000..ABS_BASE / 10).contains(&t));
            assert_eq!(t % 1000, 0);
            assert!(seen.insert(t));
        }
    }
}
