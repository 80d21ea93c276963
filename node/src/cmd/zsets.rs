//! Sorted set commands (the non-blocking ones). The pop logic is `pub(crate)` so that the
//! blocking variants (BZPOPMIN, BZPOPMAX, BZMPOP) can call it: see [`pop_and_reply`] and
//! [`parse_zmpop_args`].

use std::collections::HashMap;

use bytes::Bytes;
use lagwise_shared::glob;
use lagwise_shared::resp::{errors, ReplyWriter};
use rand::Rng;

use super::{is, parse_i64, CmdError, CmdResult, Ctx, Handler};
use crate::db::Db;
use crate::rdb::RdbValue;
use crate::value::zset::{format_score, format_score_text, ZSetValue};
use crate::value::Value;

pub fn register(m: &mut HashMap<&'static str, Handler>) {
    m.insert("zadd", zadd);
    m.insert("zincrby", zincrby);
    m.insert("zrem", zrem);
    m.insert("zcard", zcard);
    m.insert("zcount", zcount);
    m.insert("zlexcount", zlexcount);
    m.insert("zscore", zscore);
    m.insert("zmscore", zmscore);
    m.insert("zrank", zrank);
    m.insert("zrevrank", zrevrank);
    m.insert("zrange", zrange);
    m.insert("zrangestore", zrangestore);
    m.insert("zrangebyscore", zrangebyscore);
    m.insert("zrevrangebyscore", zrevrangebyscore);
    m.insert("zrangebylex", zrangebylex);
    m.insert("zrevrangebylex", zrevrangebylex);
    m.insert("zrevrange", zrevrange);
    m.insert("zremrangebyrank", zremrangebyrank);
    m.insert("zremrangebyscore", zremrangebyscore);
    m.insert("zremrangebylex", zremrangebylex);
    m.insert("zpopmin", zpopmin);
    m.insert("zpopmax", zpopmax);
    m.insert("zmpop", zmpop);
    m.insert("zrandmember", zrandmember);
    m.insert("zunion", zunion);
    m.insert("zinter", zinter);
    m.insert("zdiff", zdiff);
    m.insert("zunionstore", zunionstore);
    m.insert("zinterstore", zinterstore);
    m.insert("zdiffstore", zdiffstore);
    m.insert("zintercard", zintercard);
    m.insert("zscan", zscan);
}

const NAN_SCORE: &str = "ERR resulting score is not a number (NaN)";
const NOT_FLOAT_RANGE: &str = "ERR min or max is not a float";
const NOT_LEX_RANGE: &str = "ERR min or max not valid string range item";

// ---- lookups ----

/// The sorted set at `key` for a read: Ok(None) if missing, WRONGTYPE if another type.
fn read_zset<'d>(db: &'d mut Db, key: &[u8], now: u64) -> Result<Option<&'d ZSetValue>, CmdError> {
    match db.lookup_read(key, now).map(|e| &e.value) {
        None => Ok(None),
        Some(Value::ZSet(z)) => Ok(Some(z)),
        Some(_) => Err(errors::WRONGTYPE.into()),
    }
}

fn write_zset<'d>(
    db: &'d mut Db,
    key: &[u8],
    now: u64,
) -> Result<Option<&'d mut ZSetValue>, CmdError> {
    match db.get_mut(key, now).map(|e| &mut e.value) {
        None => Ok(None),
        Some(Value::ZSet(z)) => Ok(Some(z)),
        Some(_) => Err(errors::WRONGTYPE.into()),
    }
}

/// Deletes `key` if it holds an empty sorted set (after a removal).
fn drop_if_empty(db: &mut Db, key: &[u8], now: u64) {
    if matches!(db.get(key, now).map(|e| &e.value), Some(Value::ZSet(z)) if z.is_empty()) {
        db.remove(key, now);
    }
}

// ---- parsing ----

fn c_isspace(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r')
}

/// Parses the rest of a number as C's `strtod` would when it must consume everything.
fn parse_float_text(s: &str) -> Option<f64> {
    let lower = s.to_ascii_lowercase();
    let body = lower.trim_start_matches(['+', '-']);
    if lower.len() - body.len() > 1 {
        return None;
    }
    let neg = lower.starts_with('-');
    let v = match body {
        "inf" | "infinity" => f64::INFINITY,
        "nan" => f64::NAN,
        _ => {
            // Rust's parser also reads "infinity" and "nan": handled above; reject the rest of
            // its extensions by requiring a digit.
            if !body.bytes().any(|b| b.is_ascii_digit()) {
                return None;
            }
            body.parse::<f64>().ok()?
        }
    };
    Some(if neg { -v } else { v })
}

/// A score or weight argument as Valkey reads doubles (`getDoubleFromObject`): no spaces,
/// no NaN, and no overflow or underflow.
pub(crate) fn parse_score(arg: &[u8]) -> Option<f64> {
    let s = std::str::from_utf8(arg).ok()?;
    if s.is_empty() || c_isspace(arg[0]) {
        return None;
    }
    let v = parse_float_text(s)?;
    if v.is_nan() {
        return None;
    }
    let lower = s.to_ascii_lowercase();
    if v.is_infinite() && !lower.trim_start_matches(['+', '-']).starts_with("inf") {
        return None; // overflow (ERANGE)
    }
    if v == 0.0 {
        let mantissa = lower.split('e').next().unwrap_or("");
        if mantissa.bytes().any(|b| (b'1'..=b'9').contains(&b)) {
            return None; // underflow (ERANGE)
        }
    }
    Some(v)
}

/// A score range bound: `strtod` semantics (leading spaces allowed, "" is 0), `(` exclusive.
fn parse_score_bound(arg: &[u8]) -> Option<(f64, bool)> {
    let (excl, rest) = match arg.first() {
        Some(b'(') => (true, &arg[1..]),
        _ => (false, arg),
    };
    if rest.is_empty() {
        return Some((0.0, excl));
    }
    let start = rest.iter().position(|&b| !c_isspace(b))?;
    let s = std::str::from_utf8(&rest[start..]).ok()?;
    let v = parse_float_text(s)?;
    if v.is_nan() {
        return None;
    }
    Some((v, excl))
}

#[derive(Debug, Clone, Copy)]
struct ScoreRange {
    min: f64,
    minex: bool,
    max: f64,
    maxex: bool,
}

fn parse_score_range(min: &[u8], max: &[u8]) -> Result<ScoreRange, CmdError> {
    let (min, minex) = parse_score_bound(min).ok_or(CmdError::from(NOT_FLOAT_RANGE))?;
    let (max, maxex) = parse_score_bound(max).ok_or(CmdError::from(NOT_FLOAT_RANGE))?;
    Ok(ScoreRange {
        min,
        minex,
        max,
        maxex,
    })
}

impl ScoreRange {
    /// Ascending ranks `start..end` of the elements in range.
    fn ranks(&self, z: &ZSetValue) -> (usize, usize) {
        let start = z.partition_point(|s, _| {
            if self.minex {
                s <= self.min
            } else {
                s < self.min
            }
        });
        let end = z.partition_point(|s, _| {
            if self.maxex {
                s < self.max
            } else {
                s <= self.max
            }
        });
        (start, end.max(start))
    }
}

#[derive(Debug, Clone)]
enum LexBound {
    Min,
    Max,
    Incl(Vec<u8>),
    Excl(Vec<u8>),
}

fn parse_lex_bound(arg: &[u8]) -> Result<LexBound, CmdError> {
    match arg {
        b"+" => Ok(LexBound::Max),
        b"-" => Ok(LexBound::Min),
        [b'(', rest @ ..] => Ok(LexBound::Excl(rest.to_vec())),
        [b'[', rest @ ..] => Ok(LexBound::Incl(rest.to_vec())),
        _ => Err(NOT_LEX_RANGE.into()),
    }
}

#[derive(Debug, Clone)]
struct LexRange {
    min: LexBound,
    max: LexBound,
}

fn parse_lex_range(min: &[u8], max: &[u8]) -> Result<LexRange, CmdError> {
    Ok(LexRange {
        min: parse_lex_bound(min)?,
        max: parse_lex_bound(max)?,
    })
}

impl LexRange {
    fn ranks(&self, z: &ZSetValue) -> (usize, usize) {
        // Elements below the minimum, then elements up to the maximum.
        let start = z.partition_point(|_, m| match &self.min {
            LexBound::Min => false,
            LexBound::Max => true,
            LexBound::Incl(x) => m < x.as_slice(),
            LexBound::Excl(x) => m <= x.as_slice(),
        });
        let end = z.partition_point(|_, m| match &self.max {
            LexBound::Min => false,
            LexBound::Max => true,
            LexBound::Incl(x) => m <= x.as_slice(),
            LexBound::Excl(x) => m < x.as_slice(),
        });
        (start, end.max(start))
    }
}

// ---- replies ----

fn reply_score(ctx: &mut Ctx<'_, '_>, s: f64) {
    write_score(ctx.out, s);
}

fn write_score(out: &mut ReplyWriter<'_>, s: f64) {
    out.double_text(format_score(s).as_bytes());
}

/// A list of elements, with scores flat (RESP2) or as [member, score] pairs (RESP3).
fn reply_elements<M: AsRef<[u8]>>(ctx: &mut Ctx<'_, '_>, items: &[(M, f64)], withscores: bool) {
    write_elements(ctx.out, items, withscores);
}

fn write_elements<M: AsRef<[u8]>>(out: &mut ReplyWriter<'_>, items: &[(M, f64)], withscores: bool) {
    if withscores && !out.is_resp3() {
        out.array(items.len() * 2);
    } else {
        out.array(items.len());
    }
    for (m, s) in items {
        if withscores && out.is_resp3() {
            out.array(2);
        }
        out.bulk(m.as_ref());
        if withscores {
            write_score(out, *s);
        }
    }
}

/// Stores `items` at `dst` (replacing any value) or deletes `dst` when empty; replies with
/// the count.
fn store_result(ctx: &mut Ctx<'_, '_>, dst: &[u8], items: Vec<(Vec<u8>, f64)>) {
    let n = items.len();
    let now = ctx.now_ms;
    if n == 0 {
        if ctx.db.remove(dst, now).is_some() {
            ctx.db.dirty += 1;
        }
    } else {
        let z = ZSetValue::from_items(items, &ctx.db.limits);
        ctx.db.set(dst, Value::ZSet(Box::new(z)), 0, now);
        ctx.db.dirty += 1;
    }
    ctx.out.int(n as i64);
}

// ---- ZADD / ZINCRBY ----

#[derive(Default, Clone, Copy)]
struct AddFlags {
    nx: bool,
    xx: bool,
    gt: bool,
    lt: bool,
    ch: bool,
    incr: bool,
}

enum AddResult {
    Added,
    Updated,
    /// Nothing changed, but the element counts as processed (same score).
    Same,
    Nop,
}

/// Valkey's `zsetAdd`: applies one score with the flags; Err on a NaN result.
fn add_one(
    z: &mut ZSetValue,
    member: &[u8],
    mut score: f64,
    f: AddFlags,
    limits: &crate::value::EncodingLimits,
) -> Result<(AddResult, f64), CmdError> {
    match z.score(member) {
        Some(cur) => {
            if f.nx {
                return Ok((AddResult::Nop, cur));
            }
            if f.incr {
                score += cur;
                if score.is_nan() {
                    return Err(NAN_SCORE.into());
                }
            }
            if (f.lt && score >= cur) || (f.gt && score <= cur) {
                return Ok((AddResult::Nop, cur));
            }
            if score != cur {
                z.insert(member, score, limits);
                Ok((AddResult::Updated, score))
            } else {
                Ok((AddResult::Same, score))
            }
        }
        None if !f.xx => {
            z.insert(member, score, limits);
            Ok((AddResult::Added, score))
        }
        None => Ok((AddResult::Nop, 0.0)),
    }
}

fn zadd_generic(ctx: &mut Ctx<'_, '_>, args: &[Bytes], mut f: AddFlags, first: usize) -> CmdResult {
    let mut i = first;
    while i < args.len() {
        let a = &args[i];
        if is(a, "NX") {
            f.nx = true;
        } else if is(a, "XX") {
            f.xx = true;
        } else if is(a, "CH") {
            f.ch = true;
        } else if is(a, "INCR") {
            f.incr = true;
        } else if is(a, "GT") {
            f.gt = true;
        } else if is(a, "LT") {
            f.lt = true;
        } else {
            break;
        }
        i += 1;
    }
    let elements = args.len() - i;
    if elements == 0 || !elements.is_multiple_of(2) {
        return Err(errors::SYNTAX.into());
    }
    let elements = elements / 2;
    if f.nx && f.xx {
        return Err("ERR XX and NX options at the same time are not compatible".into());
    }
    if ((f.gt || f.lt) && f.nx) || (f.gt && f.lt) {
        return Err("ERR GT, LT, and/or NX options at the same time are not compatible".into());
    }
    if f.incr && elements > 1 {
        return Err("ERR INCR option supports a single increment-element pair".into());
    }
    let mut pairs = Vec::with_capacity(elements);
    for p in args[i..].chunks(2) {
        let score = parse_score(&p[0]).ok_or(CmdError::from(errors::NOT_FLOAT))?;
        pairs.push((score, &p[1]));
    }
    let (key, now) = (&args[1], ctx.now_ms);
    let limits = ctx.db.limits;
    let exists = write_zset(ctx.db, key, now)?.is_some();
    let (mut added, mut updated, mut processed, mut last) = (0i64, 0i64, 0, 0.0);
    if exists || !f.xx {
        // Valkey 8 sizes the encoding by the command up front: a new key by the number of
        // pairs and the first member's length, an existing listpack by the number of pairs
        // (Redis 7.0 only by what it inserts).
        let mut fresh = None;
        let z: &mut ZSetValue = match write_zset(ctx.db, key, now)? {
            Some(z) => {
                z.maybe_convert(elements, 0, &limits);
                z
            }
            None => fresh.insert(ZSetValue::with_hint(elements, pairs[0].1.len(), &limits)),
        };
        for (score, member) in &pairs {
            let (r, s) = add_one(z, member, *score, f, &limits)?;
            match r {
                AddResult::Added => added += 1,
                AddResult::Updated => updated += 1,
                AddResult::Same | AddResult::Nop => {}
            }
            if !matches!(r, AddResult::Nop) {
                processed += 1;
                last = s;
            }
        }
        if let Some(z) = fresh.filter(|z| !z.is_empty()) {
            ctx.db.set(key, Value::ZSet(Box::new(z)), 0, now);
        }
        ctx.db.dirty += (added + updated) as u64;
    }
    if f.incr {
        if processed > 0 {
            reply_score(ctx, last);
        } else {
            ctx.out.null();
        }
    } else {
        ctx.out.int(if f.ch { added + updated } else { added });
    }
    Ok(())
}

fn zadd(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    zadd_generic(ctx, args, AddFlags::default(), 2)
}

fn zincrby(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let f = AddFlags {
        incr: true,
        ..AddFlags::default()
    };
    zadd_generic(ctx, args, f, 2)
}

// ---- simple reads and removal ----

fn zrem(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let (key, now) = (&args[1], ctx.now_ms);
    let Some(z) = write_zset(ctx.db, key, now)? else {
        ctx.out.int(0);
        return Ok(());
    };
    let mut n = 0;
    for m in &args[2..] {
        if z.remove(m).is_some() {
            n += 1;
            if z.is_empty() {
                break;
            }
        }
    }
    drop_if_empty(ctx.db, key, now);
    ctx.db.dirty += n;
    ctx.out.int(n as i64);
    Ok(())
}

fn zcard(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let n = read_zset(ctx.db, &args[1], ctx.now_ms)?.map_or(0, |z| z.len());
    ctx.out.int(n as i64);
    Ok(())
}

fn zcount(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let range = parse_score_range(&args[2], &args[3])?;
    let n = read_zset(ctx.db, &args[1], ctx.now_ms)?.map_or(0, |z| {
        let (a, b) = range.ranks(z);
        b - a
    });
    ctx.out.int(n as i64);
    Ok(())
}

fn zlexcount(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let range = parse_lex_range(&args[2], &args[3])?;
    let n = read_zset(ctx.db, &args[1], ctx.now_ms)?.map_or(0, |z| {
        let (a, b) = range.ranks(z);
        b - a
    });
    ctx.out.int(n as i64);
    Ok(())
}

fn zscore(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    match read_zset(ctx.db, &args[1], ctx.now_ms)?.and_then(|z| z.score(&args[2])) {
        Some(s) => reply_score(ctx, s),
        None => ctx.out.null(),
    }
    Ok(())
}

fn zmscore(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let scores: Vec<Option<f64>> = match read_zset(ctx.db, &args[1], ctx.now_ms)? {
        Some(z) => args[2..].iter().map(|m| z.score(m)).collect(),
        None => vec![None; args.len() - 2],
    };
    ctx.out.array(scores.len());
    for s in scores {
        match s {
            Some(s) => reply_score(ctx, s),
            None => ctx.out.null(),
        }
    }
    Ok(())
}

fn zrank_generic(ctx: &mut Ctx<'_, '_>, args: &[Bytes], rev: bool) -> CmdResult {
    // Valkey: at most one option, WITHSCORE; more arguments are an arity error.
    if args.len() > 4 {
        return Err(super::wrong_arity(if rev { "zrevrank" } else { "zrank" }));
    }
    let withscore = match args.get(3) {
        None => false,
        Some(a) if is(a, "WITHSCORE") => true,
        Some(_) => return Err(errors::SYNTAX.into()),
    };
    let found = read_zset(ctx.db, &args[1], ctx.now_ms)?.and_then(|z| {
        z.rank(&args[2])
            .map(|(r, s)| (if rev { z.len() - 1 - r } else { r }, s))
    });
    match found {
        Some((r, s)) if withscore => {
            ctx.out.array(2);
            ctx.out.int(r as i64);
            reply_score(ctx, s);
        }
        Some((r, _)) => ctx.out.int(r as i64),
        None if withscore => ctx.out.null_array(),
        None => ctx.out.null(),
    }
    Ok(())
}

fn zrank(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    zrank_generic(ctx, args, false)
}

fn zrevrank(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    zrank_generic(ctx, args, true)
}

// ---- ZRANGE and friends ----

#[derive(Clone, Copy, PartialEq, Eq)]
enum RangeType {
    Auto,
    Rank,
    Score,
    Lex,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Auto,
    Forward,
    Reverse,
}

/// Valkey's `zrangeGenericCommand`. `first` is the index of the source key; `store` the
/// destination for ZRANGESTORE.
fn zrange_generic(
    ctx: &mut Ctx<'_, '_>,
    args: &[Bytes],
    first: usize,
    store: Option<&[u8]>,
    mut rangetype: RangeType,
    mut direction: Direction,
) -> CmdResult {
    let key = &args[first];
    let (mut minarg, mut maxarg) = (&args[first + 1], &args[first + 2]);
    let mut withscores = false;
    let mut limit: Option<(i64, i64)> = None;
    let mut j = first + 3;
    while j < args.len() {
        let left = args.len() - j - 1;
        let a = &args[j];
        if store.is_none() && is(a, "WITHSCORES") {
            withscores = true;
        } else if is(a, "LIMIT") && left >= 2 {
            let offset = parse_i64(&args[j + 1])?;
            let count = parse_i64(&args[j + 2])?;
            limit = Some((offset, count));
            j += 2;
        } else if direction == Direction::Auto && is(a, "REV") {
            direction = Direction::Reverse;
        } else if rangetype == RangeType::Auto && is(a, "BYLEX") {
            rangetype = RangeType::Lex;
        } else if rangetype == RangeType::Auto && is(a, "BYSCORE") {
            rangetype = RangeType::Score;
        } else {
            return Err(errors::SYNTAX.into());
        }
        j += 1;
    }
    if direction == Direction::Auto {
        direction = Direction::Forward;
    }
    if rangetype == RangeType::Auto {
        rangetype = RangeType::Rank;
    }
    // By rank, LIMIT is accepted (and ignored) only with its default count of -1.
    if limit.is_some_and(|(_, count)| count != -1) && rangetype == RangeType::Rank {
        return Err(
            "ERR syntax error, LIMIT is only supported in combination with either BYSCORE or BYLEX"
                .into(),
        );
    }
    if withscores && rangetype == RangeType::Lex {
        return Err("ERR syntax error, WITHSCORES not supported in combination with BYLEX".into());
    }
    let rev = direction == Direction::Reverse;
    if rev && rangetype != RangeType::Rank {
        std::mem::swap(&mut minarg, &mut maxarg);
    }
    enum Parsed {
        Rank(i64, i64),
        Score(ScoreRange),
        Lex(LexRange),
    }
    let parsed = match rangetype {
        RangeType::Score => Parsed::Score(parse_score_range(minarg, maxarg)?),
        RangeType::Lex => Parsed::Lex(parse_lex_range(minarg, maxarg)?),
        _ => Parsed::Rank(parse_i64(minarg)?, parse_i64(maxarg)?),
    };
    let now = ctx.now_ms;
    let z = if store.is_some() {
        write_zset(ctx.db, key, now)?.map(|z| &*z)
    } else {
        read_zset(ctx.db, key, now)?
    };
    let items: Vec<(Vec<u8>, f64)> = match z {
        None => Vec::new(),
        Some(z) => {
            let len = z.len() as i64;
            // Ascending ranks [a, b), then which part of them in which direction.
            let (a, b) = match &parsed {
                Parsed::Rank(start, end) => {
                    let (mut s, mut e) = (*start, *end);
                    if s < 0 {
                        s += len;
                    }
                    if e < 0 {
                        e += len;
                    }
                    s = s.max(0);
                    if s > e || s >= len {
                        (0, 0)
                    } else {
                        e = e.min(len - 1);
                        if rev {
                            ((len - 1 - e) as usize, (len - s) as usize)
                        } else {
                            (s as usize, (e + 1) as usize)
                        }
                    }
                }
                Parsed::Score(r) => r.ranks(z),
                Parsed::Lex(r) => r.ranks(z),
            };
            let limit = limit.filter(|_| !matches!(parsed, Parsed::Rank(..)));
            let (a, b) = match limit {
                None => (a, b),
                Some((offset, _)) if offset < 0 => (0, 0),
                Some((offset, count)) => {
                    let avail = b - a;
                    let off = (offset as u64).min(avail as u64) as usize;
                    let take = if count < 0 {
                        avail - off
                    } else {
                        (count as u64).min((avail - off) as u64) as usize
                    };
                    if rev {
                        (b - off - take, b - off)
                    } else {
                        (a + off, a + off + take)
                    }
                }
            };
            let mut v: Vec<(Vec<u8>, f64)> = z
                .range(a, b)
                .into_iter()
                .map(|(m, s)| (m.to_vec(), s))
                .collect();
            if rev {
                v.reverse();
            }
            v
        }
    };
    match store {
        Some(dst) => store_result(ctx, dst, items),
        None => reply_elements(ctx, &items, withscores),
    }
    Ok(())
}

fn zrange(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    zrange_generic(ctx, args, 1, None, RangeType::Auto, Direction::Auto)
}

fn zrangestore(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let dst = args[1].clone();
    zrange_generic(ctx, args, 2, Some(&dst), RangeType::Auto, Direction::Auto)
}

fn zrevrange(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    zrange_generic(ctx, args, 1, None, RangeType::Rank, Direction::Reverse)
}

fn zrangebyscore(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    zrange_generic(ctx, args, 1, None, RangeType::Score, Direction::Forward)
}

fn zrevrangebyscore(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    zrange_generic(ctx, args, 1, None, RangeType::Score, Direction::Reverse)
}

fn zrangebylex(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    zrange_generic(ctx, args, 1, None, RangeType::Lex, Direction::Forward)
}

fn zrevrangebylex(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    zrange_generic(ctx, args, 1, None, RangeType::Lex, Direction::Reverse)
}

// ---- ZREMRANGEBY* ----

fn zremrange_generic(ctx: &mut Ctx<'_, '_>, args: &[Bytes], kind: RangeType) -> CmdResult {
    enum Parsed {
        Rank(i64, i64),
        Score(ScoreRange),
        Lex(LexRange),
    }
    let parsed = match kind {
        RangeType::Score => Parsed::Score(parse_score_range(&args[2], &args[3])?),
        RangeType::Lex => Parsed::Lex(parse_lex_range(&args[2], &args[3])?),
        _ => Parsed::Rank(parse_i64(&args[2])?, parse_i64(&args[3])?),
    };
    let (key, now) = (&args[1], ctx.now_ms);
    let Some(z) = write_zset(ctx.db, key, now)? else {
        ctx.out.int(0);
        return Ok(());
    };
    let (a, b) = match parsed {
        Parsed::Rank(mut s, mut e) => {
            let len = z.len() as i64;
            if s < 0 {
                s += len;
            }
            if e < 0 {
                e += len;
            }
            s = s.max(0);
            if s > e || s >= len {
                (0, 0)
            } else {
                (s as usize, (e.min(len - 1) + 1) as usize)
            }
        }
        Parsed::Score(r) => r.ranks(z),
        Parsed::Lex(r) => r.ranks(z),
    };
    let n = z.remove_range(a, b);
    drop_if_empty(ctx.db, key, now);
    ctx.db.dirty += n as u64;
    ctx.out.int(n as i64);
    Ok(())
}

fn zremrangebyrank(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    zremrange_generic(ctx, args, RangeType::Rank)
}

fn zremrangebyscore(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    zremrange_generic(ctx, args, RangeType::Score)
}

fn zremrangebylex(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    zremrange_generic(ctx, args, RangeType::Lex)
}

// ---- pops ----

/// How a pop replies, as Valkey's `genericZpopCommand` distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PopReply {
    /// ZPOPMIN/ZPOPMAX: a flat [member, score, ...] array (RESP2, or RESP3 without COUNT),
    /// or (`nested`) an array of [member, score] pairs (RESP3 with COUNT).
    Plain { nested: bool },
    /// BZPOPMIN/BZPOPMAX: [key, member, score].
    WithKey,
    /// ZMPOP/BZMPOP: [key, [[member, score], ...]].
    KeyAndNested,
}

/// Pops up to `count` elements (`max` from the high end) from the first non-empty sorted set
/// among `keys` and writes the reply in `shape`. Returns Ok(None) without replying when every
/// key is missing (the caller replies or blocks); Ok(Some(key index)) after popping. Stops at
/// the first key of another type with WRONGTYPE. Deletes the key when it empties.
pub(crate) fn pop_and_reply(
    ctx: &mut Ctx<'_, '_>,
    keys: &[Bytes],
    max: bool,
    count: usize,
    shape: PopReply,
) -> Result<Option<usize>, CmdError> {
    pop_into(ctx.db, ctx.out, ctx.now_ms, keys, max, count, shape)
}

/// `pop_and_reply` without a client context, for serving blocked clients.
pub(crate) fn pop_into(
    db: &mut Db,
    out: &mut ReplyWriter<'_>,
    now: u64,
    keys: &[Bytes],
    max: bool,
    count: usize,
    shape: PopReply,
) -> Result<Option<usize>, CmdError> {
    for (idx, key) in keys.iter().enumerate() {
        let Some(z) = write_zset(db, key, now)? else {
            continue;
        };
        let popped = z.pop(count, max);
        drop_if_empty(db, key, now);
        db.dirty += popped.len() as u64;
        // As it happened: a served BZPOPMIN must not block on a replica.
        let n = popped.len().to_string();
        db.repl
            .emit(&[if max { b"ZPOPMAX" } else { b"ZPOPMIN" }, key, n.as_bytes()]);
        match shape {
            PopReply::Plain { nested } => {
                if nested {
                    write_elements(out, &popped, true);
                } else {
                    out.array(popped.len() * 2);
                    for (m, s) in &popped {
                        out.bulk(m);
                        write_score(out, *s);
                    }
                }
            }
            PopReply::WithKey => {
                out.array(popped.len() * 2 + 1);
                out.bulk(key);
                for (m, s) in &popped {
                    out.bulk(m);
                    write_score(out, *s);
                }
            }
            PopReply::KeyAndNested => {
                out.array(2);
                out.bulk(key);
                out.array(popped.len());
                for (m, s) in &popped {
                    out.array(2);
                    out.bulk(m);
                    write_score(out, *s);
                }
            }
        }
        return Ok(Some(idx));
    }
    Ok(None)
}

/// Valkey's `getPositiveLongFromObjectOrReply`: one message for junk and negatives.
fn positive_count(arg: &[u8]) -> Result<i64, CmdError> {
    match crate::value::parse_i64_strict(arg) {
        Some(n) if n >= 0 => Ok(n),
        _ => Err("ERR value is out of range, must be positive".into()),
    }
}

/// Valkey's `getRangeLongFromObjectOrReply` with a message: junk and out-of-range values
/// both get `msg`.
fn at_least_one(arg: &[u8], msg: &'static str) -> Result<i64, CmdError> {
    match crate::value::parse_i64_strict(arg) {
        Some(n) if n >= 1 => Ok(n),
        _ => Err(msg.into()),
    }
}

fn zpop_generic(ctx: &mut Ctx<'_, '_>, args: &[Bytes], max: bool) -> CmdResult {
    if args.len() > 3 {
        return Err(errors::SYNTAX.into());
    }
    let count = match args.get(2) {
        Some(a) => Some(positive_count(a)?),
        None => None,
    };
    let key = &args[1..2];
    if count == Some(0) {
        // Type-checked, then an empty array.
        write_zset(ctx.db, &key[0], ctx.now_ms)?;
        ctx.out.array(0);
        return Ok(());
    }
    let nested = ctx.out.is_resp3() && count.is_some();
    let n = count.unwrap_or(1) as usize;
    if pop_and_reply(ctx, key, max, n, PopReply::Plain { nested })?.is_none() {
        ctx.out.array(0);
    }
    Ok(())
}

fn zpopmin(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    zpop_generic(ctx, args, false)
}

fn zpopmax(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    zpop_generic(ctx, args, true)
}

/// The arguments of ZMPOP/BZMPOP from `numkeys_idx` on: (keys range in `args`, max, count).
pub(crate) fn parse_zmpop_args(
    args: &[Bytes],
    numkeys_idx: usize,
) -> Result<(std::ops::Range<usize>, bool, usize), CmdError> {
    let numkeys = at_least_one(&args[numkeys_idx], "ERR numkeys should be greater than 0")?;
    let where_idx = (numkeys_idx as u64 + 1).saturating_add(numkeys as u64);
    if where_idx >= args.len() as u64 {
        return Err(errors::SYNTAX.into());
    }
    let where_idx = where_idx as usize;
    let max = if is(&args[where_idx], "MIN") {
        false
    } else if is(&args[where_idx], "MAX") {
        true
    } else {
        return Err(errors::SYNTAX.into());
    };
    let mut count: Option<usize> = None;
    let mut j = where_idx + 1;
    while j < args.len() {
        if count.is_none() && is(&args[j], "COUNT") && j + 1 < args.len() {
            let n = at_least_one(&args[j + 1], "ERR count should be greater than 0")?;
            count = Some(n as usize);
            j += 2;
        } else {
            return Err(errors::SYNTAX.into());
        }
    }
    Ok((numkeys_idx + 1..where_idx, max, count.unwrap_or(1)))
}

fn zmpop(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let (keys, max, count) = parse_zmpop_args(args, 1)?;
    if pop_and_reply(ctx, &args[keys], max, count, PopReply::KeyAndNested)?.is_none() {
        ctx.out.null_array();
    }
    Ok(())
}

// ---- ZRANDMEMBER ----

fn zrandmember(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let now = ctx.now_ms;
    if args.len() == 2 {
        let z = read_zset(ctx.db, &args[1], now)?;
        let pick = z.and_then(|z| {
            let r = rand::rng().random_range(0..z.len().max(1));
            z.get(r).map(|(m, _)| m.to_vec())
        });
        match pick {
            Some(m) => ctx.out.bulk(&m),
            None => ctx.out.null(),
        }
        return Ok(());
    }
    let l = parse_i64(&args[2])?;
    if l == i64::MIN {
        return Err(
            "ERR value is out of range, value must between -9223372036854775807 and 9223372036854775807"
                .into(),
        );
    }
    let withscores = match args.get(3) {
        None => false,
        Some(a) if args.len() == 4 && is(a, "WITHSCORES") => true,
        Some(_) => return Err(errors::SYNTAX.into()),
    };
    if withscores && !(-(i64::MAX / 2)..=i64::MAX / 2).contains(&l) {
        return Err("ERR value is out of range".into());
    }
    let Some(z) = read_zset(ctx.db, &args[1], now)? else {
        ctx.out.array(0);
        return Ok(());
    };
    let count = l.unsigned_abs() as usize;
    let size = z.len();
    let mut rng = rand::rng();
    if l < 0 || count == 1 {
        // Repetitions allowed. Written as drawn: a huge count must not be collected first.
        let out = &mut *ctx.out;
        let resp3 = out.is_resp3();
        out.array(if withscores && !resp3 {
            count.saturating_mul(2)
        } else {
            count
        });
        for _ in 0..count {
            if let Some((m, s)) = z.get(rng.random_range(0..size)) {
                if withscores && resp3 {
                    out.array(2);
                }
                out.bulk(m);
                if withscores {
                    out.double_text(format_score(s).as_bytes());
                }
            }
        }
        return Ok(());
    }
    let items: Vec<(Vec<u8>, f64)> = if count == 0 {
        Vec::new()
    } else if count >= size {
        z.range(0, size)
            .into_iter()
            .map(|(m, s)| (m.to_vec(), s))
            .collect()
    } else {
        // Distinct ranks, sampled without replacement, in random order.
        let ranks = rand::seq::index::sample(&mut rng, size, count);
        ranks
            .into_iter()
            .filter_map(|r| z.get(r))
            .map(|(m, s)| (m.to_vec(), s))
            .collect()
    };
    reply_elements(ctx, &items, withscores);
    Ok(())
}

// ---- ZUNION / ZINTER / ZDIFF ----

#[derive(Clone, Copy, PartialEq, Eq)]
enum SetOp {
    Union,
    Inter,
    Diff,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Aggregate {
    Sum,
    Min,
    Max,
}

fn aggregate(acc: &mut f64, v: f64, how: Aggregate) {
    match how {
        Aggregate::Sum => {
            *acc += v;
            if acc.is_nan() {
                *acc = 0.0;
            }
        }
        Aggregate::Min => {
            if v < *acc {
                *acc = v;
            }
        }
        Aggregate::Max => {
            if v > *acc {
                *acc = v;
            }
        }
    }
}

/// One input: its elements with scores (sets score 1), or None if the key is missing.
type Input = Option<Vec<(Vec<u8>, f64)>>;

fn read_input(ctx: &mut Ctx<'_, '_>, key: &[u8], write: bool) -> Result<Input, CmdError> {
    let now = ctx.now_ms;
    let entry = if write {
        ctx.db.get(key, now)
    } else {
        ctx.db.lookup_read(key, now)
    };
    match entry.map(|e| &e.value) {
        None => Ok(None),
        Some(Value::ZSet(z)) => Ok(Some(
            z.range(0, z.len())
                .into_iter()
                .map(|(m, s)| (m.to_vec(), s))
                .collect(),
        )),
        Some(Value::Set(s)) => match s.to_rdb() {
            RdbValue::Set(members) => Ok(Some(members.into_iter().map(|m| (m, 1.0)).collect())),
            _ => Ok(Some(Vec::new())),
        },
        Some(_) => Err(errors::WRONGTYPE.into()),
    }
}

/// Valkey's `zunionInterDiffGenericCommand`.
fn setop_generic(
    ctx: &mut Ctx<'_, '_>,
    args: &[Bytes],
    dst: Option<&[u8]>,
    numkeys_idx: usize,
    op: SetOp,
    cardinality_only: bool,
) -> CmdResult {
    let name = std::str::from_utf8(&args[0])
        .unwrap_or("")
        .to_ascii_lowercase();
    let setnum = parse_i64(&args[numkeys_idx])?;
    if setnum < 1 {
        return Err(format!("ERR at least 1 input key is needed for '{name}' command").into());
    }
    if setnum as u64 > (args.len() - numkeys_idx - 1) as u64 {
        return Err(errors::SYNTAX.into());
    }
    let setnum = setnum as usize;
    let mut inputs: Vec<Input> = Vec::with_capacity(setnum);
    for key in &args[numkeys_idx + 1..numkeys_idx + 1 + setnum] {
        inputs.push(read_input(ctx, key, dst.is_some())?);
    }
    let mut weights = vec![1.0f64; setnum];
    let mut agg = Aggregate::Sum;
    let mut withscores = false;
    let mut limit: usize = 0;
    let mut j = numkeys_idx + 1 + setnum;
    while j < args.len() {
        let remaining = args.len() - j;
        let a = &args[j];
        if op != SetOp::Diff && !cardinality_only && remaining > setnum && is(a, "WEIGHTS") {
            j += 1;
            for w in weights.iter_mut() {
                *w = parse_score(&args[j])
                    .ok_or(CmdError::from("ERR weight value is not a float"))?;
                j += 1;
            }
        } else if op != SetOp::Diff && !cardinality_only && remaining >= 2 && is(a, "AGGREGATE") {
            let v = &args[j + 1];
            agg = if is(v, "SUM") {
                Aggregate::Sum
            } else if is(v, "MIN") {
                Aggregate::Min
            } else if is(v, "MAX") {
                Aggregate::Max
            } else {
                return Err(errors::SYNTAX.into());
            };
            j += 2;
        } else if dst.is_none() && !cardinality_only && is(a, "WITHSCORES") {
            withscores = true;
            j += 1;
        } else if cardinality_only && remaining >= 2 && is(a, "LIMIT") {
            limit = match crate::value::parse_i64_strict(&args[j + 1]) {
                Some(n) if n >= 0 => n as usize,
                _ => return Err("ERR LIMIT can't be negative".into()),
            };
            j += 2;
        } else {
            return Err(errors::SYNTAX.into());
        }
    }

    // Valkey visits the inputs of a union or intersection from the smallest up (which decides
    // between equal values of different sign in MIN/MAX); the weights stay with their inputs.
    let mut inputs: Vec<(Input, f64)> = inputs.into_iter().zip(weights).collect();
    if op != SetOp::Diff {
        inputs.sort_by_key(|(i, _)| i.as_ref().map_or(0, Vec::len));
    }
    let (inputs, weights): (Vec<Input>, Vec<f64>) = inputs.into_iter().unzip();
    let mut result: Vec<(Vec<u8>, f64)> = Vec::new();
    match op {
        SetOp::Union => {
            let mut acc: HashMap<Vec<u8>, f64> = HashMap::new();
            for (input, w) in inputs.iter().zip(&weights) {
                for (m, s) in input.iter().flatten() {
                    let mut v = s * w;
                    if v.is_nan() {
                        v = 0.0;
                    }
                    match acc.get_mut(m) {
                        Some(cur) => aggregate(cur, v, agg),
                        None => {
                            acc.insert(m.clone(), v);
                        }
                    }
                }
            }
            result = acc.into_iter().collect();
        }
        SetOp::Inter => {
            if inputs.iter().all(Option::is_some) {
                let maps: Vec<HashMap<&[u8], f64>> = inputs
                    .iter()
                    .map(|i| {
                        i.iter()
                            .flatten()
                            .map(|(m, s)| (m.as_slice(), *s))
                            .collect()
                    })
                    .collect();
                // Iterate the smallest input (the first after sorting).
                let mut count = 0usize;
                if let Some(first) = &inputs[0] {
                    'outer: for (m, s) in first {
                        let mut score = s * weights[0];
                        if score.is_nan() {
                            score = 0.0;
                        }
                        for i in 1..setnum {
                            let Some(other) = maps[i].get(m.as_slice()) else {
                                continue 'outer;
                            };
                            let mut v = other * weights[i];
                            if v.is_nan() {
                                v = 0.0;
                            }
                            aggregate(&mut score, v, agg);
                        }
                        count += 1;
                        if !cardinality_only {
                            result.push((m.clone(), score));
                        } else if limit != 0 && count >= limit {
                            break;
                        }
                    }
                }
                if cardinality_only {
                    ctx.out.int(count as i64);
                    return Ok(());
                }
            } else if cardinality_only {
                ctx.out.int(0);
                return Ok(());
            }
        }
        SetOp::Diff => {
            if let Some(first) = &inputs[0] {
                let others: Vec<HashMap<&[u8], ()>> = inputs[1..]
                    .iter()
                    .map(|i| {
                        i.iter()
                            .flatten()
                            .map(|(m, _)| (m.as_slice(), ()))
                            .collect()
                    })
                    .collect();
                result = first
                    .iter()
                    .filter(|(m, _)| !others.iter().any(|o| o.contains_key(m.as_slice())))
                    .cloned()
                    .collect();
            }
        }
    }
    match dst {
        Some(dst) => store_result(ctx, dst, result),
        None => {
            result.sort_by(|a, b| crate::value::zset::cmp_entry(a.1, &a.0, b.1, &b.0));
            reply_elements(ctx, &result, withscores);
        }
    }
    Ok(())
}

fn zunion(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    setop_generic(ctx, args, None, 1, SetOp::Union, false)
}

fn zinter(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    setop_generic(ctx, args, None, 1, SetOp::Inter, false)
}

fn zdiff(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    setop_generic(ctx, args, None, 1, SetOp::Diff, false)
}

fn zunionstore(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let dst = args[1].clone();
    setop_generic(ctx, args, Some(&dst), 2, SetOp::Union, false)
}

fn zinterstore(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let dst = args[1].clone();
    setop_generic(ctx, args, Some(&dst), 2, SetOp::Inter, false)
}

fn zdiffstore(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let dst = args[1].clone();
    setop_generic(ctx, args, Some(&dst), 2, SetOp::Diff, false)
}

fn zintercard(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    setop_generic(ctx, args, None, 1, SetOp::Inter, true)
}

// ---- ZSCAN ----

fn zscan(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let cursor = std::str::from_utf8(&args[2])
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or(CmdError::from("ERR invalid cursor"))?;
    let now = ctx.now_ms;
    let Some(z) = read_zset(ctx.db, &args[1], now)? else {
        ctx.out.array(2);
        ctx.out.bulk(b"0");
        ctx.out.array(0);
        return Ok(());
    };
    let mut pattern: Option<&[u8]> = None;
    let mut count = 10usize;
    let mut i = 3;
    while i < args.len() {
        let Some(v) = args.get(i + 1) else {
            return Err(errors::SYNTAX.into());
        };
        if is(&args[i], "COUNT") {
            let n = parse_i64(v)?;
            if n < 1 {
                return Err(errors::SYNTAX.into());
            }
            count = n as usize;
        } else if is(&args[i], "MATCH") {
            pattern = Some(v);
        } else {
            return Err(errors::SYNTAX.into());
        }
        i += 2;
    }
    let pattern = pattern.filter(|p| *p != b"*");
    let (next, items) = z.scan(cursor, count);
    let items: Vec<(Vec<u8>, f64)> = items
        .into_iter()
        .filter(|(m, _)| pattern.is_none_or(|p| glob::matches(p, m, false)))
        .map(|(m, s)| (m.to_vec(), s))
        .collect();
    ctx.out.array(2);
    ctx.out.bulk_int(next as i64);
    ctx.out.array(items.len() * 2);
    for (m, s) in &items {
        ctx.out.bulk(m);
        ctx.out.bulk(format_score_text(*s).as_bytes());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_parse_like_valkey() {
        assert_eq!(parse_score(b"1.5"), Some(1.5));
        assert_eq!(parse_score(b"-inf"), Some(f64::NEG_INFINITY));
        assert_eq!(parse_score(b"+Infinity"), Some(f64::INFINITY));
        assert_eq!(parse_score(b"1e3"), Some(1000.0));
        assert_eq!(parse_score(b"nan"), None);
        assert_eq!(parse_score(b" 1"), None);
        assert_eq!(parse_score(b"1 "), None);
        assert_eq!(parse_score(b""), None);
        assert_eq!(parse_score(b"1e400"), None);
        assert_eq!(parse_score(b"1e-400"), None);
        assert_eq!(parse_score(b"0e-400"), Some(0.0));
        assert_eq!(parse_score(b"abc"), None);
        assert_eq!(parse_score(b"--1"), None);
    }

    #[test]
    fn range_bounds_parse_like_strtod() {
        assert_eq!(parse_score_bound(b"(1"), Some((1.0, true)));
        assert_eq!(parse_score_bound(b" 2"), Some((2.0, false)));
        assert_eq!(parse_score_bound(b""), Some((0.0, false)));
        assert_eq!(parse_score_bound(b"("), Some((0.0, true)));
        assert_eq!(parse_score_bound(b"-inf"), Some((f64::NEG_INFINITY, false)));
        assert_eq!(parse_score_bound(b"2 "), None);
        assert_eq!(parse_score_bound(b"   "), None);
        assert_eq!(parse_score_bound(b"nan"), None);
        assert_eq!(parse_score_bound(b"[1"), None);
    }
}
