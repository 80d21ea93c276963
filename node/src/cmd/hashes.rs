//! Hash commands: HSET and friends, the counters, random fields and HSCAN.
//!
//! The value type and its encodings are in `value::hash`. Every command checks the key's type
//! before changing anything; a hash left empty is deleted; a write to a missing key creates it.

use std::collections::HashMap;

use bytes::Bytes;
use lagwise_shared::glob;
use lagwise_shared::resp::errors;
use rand::Rng;

use super::incrfloat::{incrbyfloat_text, parse_float_text, zero};
use super::{is, parse_i64, wrong_arity, CmdError, CmdResult, Ctx, Handler};
use crate::db::Db;
use crate::value::{HashValue, Value};

pub fn register(m: &mut HashMap<&'static str, Handler>) {
    m.insert("hset", hset);
    m.insert("hmset", hmset);
    m.insert("hsetnx", hsetnx);
    m.insert("hget", hget);
    m.insert("hmget", hmget);
    m.insert("hdel", hdel);
    m.insert("hexists", hexists);
    m.insert("hlen", hlen);
    m.insert("hstrlen", hstrlen);
    m.insert("hkeys", hkeys);
    m.insert("hvals", hvals);
    m.insert("hgetall", hgetall);
    m.insert("hincrby", hincrby);
    m.insert("hincrbyfloat", hincrbyfloat);
    m.insert("hrandfield", hrandfield);
    m.insert("hscan", hscan);
}

/// The hash at `key` for a read (counts a hit or miss): Ok(None) if missing.
fn read_hash<'d>(db: &'d mut Db, key: &[u8], now: u64) -> Result<Option<&'d HashValue>, CmdError> {
    match db.lookup_read(key, now).map(|e| &e.value) {
        None => Ok(None),
        Some(Value::Hash(h)) => Ok(Some(h)),
        Some(_) => Err(errors::WRONGTYPE.into()),
    }
}

/// The hash at `key` for a write: Ok(None) if missing.
fn write_hash<'d>(
    db: &'d mut Db,
    key: &[u8],
    now: u64,
) -> Result<Option<&'d mut HashValue>, CmdError> {
    match db.get_mut(key, now).map(|e| &mut e.value) {
        None => Ok(None),
        Some(Value::Hash(h)) => Ok(Some(h)),
        Some(_) => Err(errors::WRONGTYPE.into()),
    }
}

/// The hash at `key`, created empty if missing. Callers must leave it non-empty.
fn hash_or_create<'d>(db: &'d mut Db, key: &[u8], now: u64) -> Result<&'d mut HashValue, CmdError> {
    match db.get(key, now).map(|e| matches!(e.value, Value::Hash(_))) {
        Some(false) => return Err(errors::WRONGTYPE.into()),
        Some(true) => {}
        None => {
            db.set(key, Value::Hash(Box::default()), 0, now);
        }
    }
    match db.get_mut(key, now).map(|e| &mut e.value) {
        Some(Value::Hash(h)) => Ok(h),
        _ => Err(errors::WRONGTYPE.into()),
    }
}

/// HSET and HMSET: sets every pair; returns how many fields were new.
fn set_pairs(ctx: &mut Ctx<'_, '_>, args: &[Bytes], name: &str) -> Result<i64, CmdError> {
    if !args.len().is_multiple_of(2) {
        return Err(wrong_arity(name));
    }
    let limits = ctx.db.limits;
    let h = hash_or_create(ctx.db, &args[1], ctx.now_ms)?;
    let pairs = &args[2..];
    // As Valkey's hashTypeTryConversion: too many pairs or a too long item converts first.
    if pairs.len() as u64 / 2 > limits.hash_max_listpack_entries {
        h.convert_to_table();
    }
    h.convert_for(pairs.iter().map(|b| &b[..]), &limits);
    let mut added = 0;
    for p in pairs.chunks_exact(2) {
        if h.set(&p[0], &p[1], &limits) {
            added += 1;
        }
    }
    ctx.db.dirty += (pairs.len() / 2) as u64;
    Ok(added)
}

fn hset(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let added = set_pairs(ctx, args, "hset")?;
    ctx.out.int(added);
    Ok(())
}

fn hmset(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    set_pairs(ctx, args, "hmset")?;
    ctx.out.ok();
    Ok(())
}

fn hsetnx(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let limits = ctx.db.limits;
    let h = hash_or_create(ctx.db, &args[1], ctx.now_ms)?;
    // An existing field: nothing changes, not even the encoding.
    if h.contains(&args[2]) {
        ctx.out.int(0);
    } else {
        h.set(&args[2], &args[3], &limits);
        ctx.db.dirty += 1;
        ctx.out.int(1);
    }
    Ok(())
}

fn hget(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    match read_hash(ctx.db, &args[1], ctx.now_ms)?.and_then(|h| h.get(&args[2])) {
        Some(v) => ctx.out.bulk(v),
        None => ctx.out.null(),
    }
    Ok(())
}

fn hmget(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let h = read_hash(ctx.db, &args[1], ctx.now_ms)?;
    ctx.out.array(args.len() - 2);
    for f in &args[2..] {
        match h.and_then(|h| h.get(f)) {
            Some(v) => ctx.out.bulk(v),
            None => ctx.out.null(),
        }
    }
    Ok(())
}

fn hdel(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let (key, now) = (&args[1], ctx.now_ms);
    let Some(h) = write_hash(ctx.db, key, now)? else {
        ctx.out.int(0);
        return Ok(());
    };
    let mut n = 0;
    for f in &args[2..] {
        if h.remove(f) {
            n += 1;
            if h.is_empty() {
                break;
            }
        }
    }
    if h.is_empty() {
        ctx.db.remove(key, now);
    }
    ctx.db.dirty += n as u64;
    ctx.out.int(n);
    Ok(())
}

fn hexists(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let found = read_hash(ctx.db, &args[1], ctx.now_ms)?.is_some_and(|h| h.contains(&args[2]));
    ctx.out.int(found as i64);
    Ok(())
}

fn hlen(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let n = read_hash(ctx.db, &args[1], ctx.now_ms)?.map_or(0, |h| h.len());
    ctx.out.int(n as i64);
    Ok(())
}

fn hstrlen(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let n = read_hash(ctx.db, &args[1], ctx.now_ms)?
        .and_then(|h| h.get(&args[2]))
        .map_or(0, |v| v.len());
    ctx.out.int(n as i64);
    Ok(())
}

fn hkeys(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    match read_hash(ctx.db, &args[1], ctx.now_ms)? {
        Some(h) => ctx.out.bulks(h.iter().map(|(f, _)| f)),
        None => ctx.out.array(0),
    }
    Ok(())
}

fn hvals(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    match read_hash(ctx.db, &args[1], ctx.now_ms)? {
        Some(h) => ctx.out.bulks(h.iter().map(|(_, v)| v)),
        None => ctx.out.array(0),
    }
    Ok(())
}

fn hgetall(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    match read_hash(ctx.db, &args[1], ctx.now_ms)? {
        Some(h) => {
            ctx.out.map(h.len());
            for (f, v) in h.iter() {
                ctx.out.bulk(f);
                ctx.out.bulk(v);
            }
        }
        None => ctx.out.map(0),
    }
    Ok(())
}

fn hincrby(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let by = parse_i64(&args[3])?;
    let limits = ctx.db.limits;
    let h = hash_or_create(ctx.db, &args[1], ctx.now_ms)?;
    let cur = match h.get(&args[2]) {
        Some(v) => crate::value::parse_i64_strict(v)
            .ok_or(CmdError::from("ERR hash value is not an integer"))?,
        None => 0,
    };
    let new = cur
        .checked_add(by)
        .ok_or(CmdError::from(errors::OVERFLOW))?;
    let mut b = itoa::Buffer::new();
    h.set(&args[2], b.format(new).as_bytes(), &limits);
    ctx.db.dirty += 1;
    ctx.out.int(new);
    Ok(())
}

fn hincrbyfloat(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let by = parse_float_text(&args[3]).ok_or(CmdError::from(errors::NOT_FLOAT))?;
    if by.0.is_infinite() {
        return Err("ERR value is NaN or Infinity".into());
    }
    let limits = ctx.db.limits;
    let h = hash_or_create(ctx.db, &args[1], ctx.now_ms)?;
    let cur = match h.get(&args[2]) {
        Some(v) => parse_float_text(v).ok_or(CmdError::from("ERR hash value is not a float"))?,
        None => zero(),
    };
    let text = incrbyfloat_text(cur, by)?;
    h.set(&args[2], text.as_bytes(), &limits);
    ctx.db.dirty += 1;
    ctx.db
        .repl
        .emit(&[b"HSET", &args[1], &args[2], text.as_bytes()]);
    ctx.out.bulk(text.as_bytes());
    Ok(())
}

// ---- HRANDFIELD ----

fn hrandfield(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    if args.len() == 2 {
        match read_hash(ctx.db, &args[1], ctx.now_ms)? {
            Some(h) if !h.is_empty() => {
                let i = rand::rng().random_range(0..h.len());
                ctx.out.bulk(h.pair_at(i).0);
            }
            _ => ctx.out.null(),
        }
        return Ok(());
    }
    let n = parse_i64(&args[2])?;
    if n == i64::MIN {
        return Err("ERR value is out of range, value must between -9223372036854775807 and 9223372036854775807".into());
    }
    let with_values = match args.get(3) {
        None => false,
        Some(a) if args.len() == 4 && is(a, "WITHVALUES") => {
            if !(-(i64::MAX / 2)..=i64::MAX / 2).contains(&n) {
                return Err("ERR value is out of range".into());
            }
            true
        }
        Some(_) => return Err(errors::SYNTAX.into()),
    };
    let Some(h) = read_hash(ctx.db, &args[1], ctx.now_ms)? else {
        ctx.out.array(0);
        return Ok(());
    };
    let resp3 = ctx.out.is_resp3();
    let size = h.len();
    let count = n.unsigned_abs() as usize;
    // Each pick: a nested [field, value] in RESP3, flat in RESP2.
    let emit = |out: &mut lagwise_shared::resp::ReplyWriter<'_>, (f, v): (&[u8], &[u8])| {
        if with_values && resp3 {
            out.array(2);
        }
        out.bulk(f);
        if with_values {
            out.bulk(v);
        }
    };
    let header = |out: &mut lagwise_shared::resp::ReplyWriter<'_>, picks: usize| {
        out.array(if with_values && !resp3 {
            picks * 2
        } else {
            picks
        });
    };
    if count == 0 || size == 0 {
        ctx.out.array(0);
        return Ok(());
    }
    let mut rng = rand::rng();
    if n < 0 || count == 1 {
        // Repetitions allowed: independent uniform picks.
        header(ctx.out, count);
        for _ in 0..count {
            let i = rng.random_range(0..size);
            emit(ctx.out, h.pair_at(i));
        }
    } else if count >= size {
        header(ctx.out, size);
        for p in h.iter() {
            emit(ctx.out, p);
        }
    } else {
        header(ctx.out, count);
        for i in rand::seq::index::sample(&mut rng, size, count) {
            emit(ctx.out, h.pair_at(i));
        }
    }
    Ok(())
}

// ---- HSCAN ----

/// A SCAN-family cursor: an unsigned decimal.
fn parse_cursor(arg: &[u8]) -> Result<u64, CmdError> {
    std::str::from_utf8(arg)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or(CmdError::from("ERR invalid cursor"))
}

fn hscan(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let cursor = parse_cursor(&args[2])?;
    let Some(h) = read_hash(ctx.db, &args[1], ctx.now_ms)? else {
        ctx.out.array(2);
        ctx.out.bulk(b"0");
        ctx.out.array(0);
        return Ok(());
    };
    let (mut pattern, mut count, mut no_values): (Option<&[u8]>, usize, bool) = (None, 10, false);
    let mut i = 3;
    while i < args.len() {
        let left = args.len() - i;
        if is(&args[i], "COUNT") && left >= 2 {
            let n = parse_i64(&args[i + 1])?;
            if n < 1 {
                return Err(errors::SYNTAX.into());
            }
            count = n as usize;
            i += 2;
        } else if is(&args[i], "MATCH") && left >= 2 {
            pattern = Some(&args[i + 1]);
            i += 2;
        } else if is(&args[i], "NOVALUES") {
            // Valkey 8: fields only.
            no_values = true;
            i += 1;
        } else {
            return Err(errors::SYNTAX.into());
        }
    }
    let pattern = pattern.filter(|p| *p != b"*");
    let mut found: Vec<(&[u8], &[u8])> = Vec::new();
    let next = h.scan(cursor, count, |f, v| {
        if pattern.is_none_or(|p| glob::matches(p, f, false)) {
            found.push((f, v));
        }
    });
    ctx.out.array(2);
    ctx.out.bulk_int(next as i64);
    if no_values {
        ctx.out.bulks(found.iter().map(|(f, _)| f));
    } else {
        ctx.out.array(found.len() * 2);
        for (f, v) in found {
            ctx.out.bulk(f);
            ctx.out.bulk(v);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors() {
        assert_eq!(parse_cursor(b"0"), Ok(0));
        assert_eq!(parse_cursor(b"18446744073709551615"), Ok(u64::MAX));
        assert!(parse_cursor(b"abc").is_err());
        assert!(parse_cursor(b"-1").is_err());
    }
}
