//! List commands (the non-blocking ones), following Valkey's `t_list.c`: argument checks in
//! Valkey's order, its error strings, its reply shapes in RESP2 and RESP3, and its encoding
//! conversions (see `value/list.rs`).
//!
//! The pop and move logic is in [`pop_from`] and [`move_element`], which the blocking
//! variants (BLPOP, BRPOP, BLMPOP, BLMOVE, BRPOPLPUSH) call once a key has data. Both keep
//! the keyspace consistent themselves: an emptied list is deleted, the encoding is re-checked,
//! `dirty` is counted.
//!
//! Deliberate differences from Valkey 8:
//! - LSET: Valkey's listpack path passes the index through an `int` (`listTypeReplaceAtIndex`),
//!   so `LSET key 4294967296 v` on a small list replaces element 0. That is a bug; here (as in
//!   Redis 7.0 and for Valkey's quicklists) such an index is out of range.
//! - Commands check the type with a lookup that does not count as a modification, so a command
//!   that fails (WRONGTYPE, LREM/LTRIM that remove nothing) does not invalidate a WATCH. Two
//!   paths still do, because `Db` has no untracked mutable lookup: an LSET whose index is out of
//!   range, and an LTRIM that removes nothing from a quicklist (both may change the encoding
//!   first, as in Valkey).

use std::collections::HashMap;

use bytes::Bytes;
use compact_bytes::CompactBytes;
use lagwise_shared::resp::errors;

use super::{is, parse_i64, wrong_arity, CmdError, CmdResult, Ctx, Handler};
use crate::db::Db;
use crate::value::{ListValue, Value};

pub fn register(m: &mut HashMap<&'static str, Handler>) {
    m.insert("lpush", lpush);
    m.insert("rpush", rpush);
    m.insert("lpushx", lpushx);
    m.insert("rpushx", rpushx);
    m.insert("lpop", lpop);
    m.insert("rpop", rpop);
    m.insert("llen", llen);
    m.insert("lrange", lrange);
    m.insert("lindex", lindex);
    m.insert("lset", lset);
    m.insert("linsert", linsert);
    m.insert("lrem", lrem);
    m.insert("ltrim", ltrim);
    m.insert("lpos", lpos);
    m.insert("lmove", lmove);
    m.insert("rpoplpush", rpoplpush);
    m.insert("lmpop", lmpop);
}

/// Which end of a list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    Left,
    Right,
}

impl End {
    pub(crate) fn name(self) -> &'static [u8] {
        match self {
            End::Left => b"LEFT",
            End::Right => b"RIGHT",
        }
    }

    fn pop_command(self) -> &'static [u8] {
        match self {
            End::Left => b"LPOP",
            End::Right => b"RPOP",
        }
    }
}

/// `LEFT` or `RIGHT` (any case), else a syntax error.
pub(crate) fn parse_end(arg: &[u8]) -> Result<End, CmdError> {
    if is(arg, "LEFT") {
        Ok(End::Left)
    } else if is(arg, "RIGHT") {
        Ok(End::Right)
    } else {
        Err(errors::SYNTAX.into())
    }
}

const OUT_OF_RANGE_POSITIVE: &str = "ERR value is out of range, must be positive";

/// Valkey's `getRangeLongFromObjectOrReply(c, o, min, max, &v, msg)`: with a message, both a
/// parse failure and an out-of-range value reply with it.
fn parse_range(arg: &[u8], min: i64, max: i64, msg: Option<&'static str>) -> Result<i64, CmdError> {
    let v = match (parse_i64(arg), msg) {
        (Ok(v), _) => v,
        (Err(_), Some(m)) => return Err(m.into()),
        (Err(e), None) => return Err(e),
    };
    if v < min || v > max {
        return Err(match msg {
            Some(m) => m.into(),
            None => format!("ERR value is out of range, value must between {min} and {max}").into(),
        });
    }
    Ok(v)
}

/// `getPositiveLongFromObjectOrReply`: 0..=i64::MAX.
fn parse_positive(arg: &[u8], msg: Option<&'static str>) -> Result<i64, CmdError> {
    parse_range(arg, 0, i64::MAX, Some(msg.unwrap_or(OUT_OF_RANGE_POSITIVE)))
}

/// The list at `key` for reading (counts a hit or miss): None if missing, WRONGTYPE if another
/// type.
fn read_list<'d>(db: &'d mut Db, key: &[u8], now: u64) -> Result<Option<&'d ListValue>, CmdError> {
    match db.lookup_read(key, now).map(|e| &e.value) {
        None => Ok(None),
        Some(Value::List(l)) => Ok(Some(l)),
        Some(_) => Err(errors::WRONGTYPE.into()),
    }
}

/// The length of the list at `key`: None if missing, WRONGTYPE if another type. Does not count
/// as a modification (WATCH), so a command can fail after it without side effects (and a
/// blocking command can check whether it would be served).
pub(crate) fn list_len(db: &mut Db, key: &[u8], now: u64) -> Result<Option<usize>, CmdError> {
    match db.get(key, now).map(|e| &e.value) {
        None => Ok(None),
        Some(Value::List(l)) => Ok(Some(l.len())),
        Some(_) => Err(errors::WRONGTYPE.into()),
    }
}

/// The list at `key`, to change it (a WATCH modification). Call after [`list_len`].
fn list_mut<'d>(db: &'d mut Db, key: &[u8], now: u64) -> Option<&'d mut ListValue> {
    match db.get_mut(key, now).map(|e| &mut e.value) {
        Some(Value::List(l)) => Some(l),
        _ => None,
    }
}

/// After elements were removed from the list at `key`: deletes it if empty, else lets it
/// return to the compact encoding (Valkey's `listElementsRemoved` / shrinking conversion).
fn after_removal(db: &mut Db, key: &[u8], now: u64) {
    let limits = db.limits;
    let empty = match list_mut(db, key, now) {
        Some(l) if l.is_empty() => true,
        Some(l) => {
            l.shrink_check(&limits);
            false
        }
        None => false,
    };
    if empty {
        db.remove(key, now);
    }
}

/// Pops up to `count` elements from `end` of the list at `key`, in pop order. Ok(None) if the
/// key does not exist; WRONGTYPE if it is not a list. Deletes the key when it empties, applies
/// the shrinking conversion and counts `dirty`. `count` 0 pops nothing (and changes nothing).
pub(crate) fn pop_from(
    db: &mut Db,
    key: &[u8],
    end: End,
    count: usize,
    now: u64,
) -> Result<Option<Vec<CompactBytes>>, CmdError> {
    if list_len(db, key, now)?.is_none() {
        return Ok(None);
    }
    if count == 0 {
        return Ok(Some(Vec::new()));
    }
    let limits = db.limits;
    let Some(l) = list_mut(db, key, now) else {
        return Ok(None);
    };
    let n = count.min(l.len());
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let v = match end {
            End::Left => l.pop_front(),
            End::Right => l.pop_back(),
        };
        out.extend(v);
    }
    let emptied = settle(l, &limits);
    if emptied {
        db.remove(key, now);
    }
    db.dirty += out.len() as u64;
    // The pop as it happened: a served BLPOP or BLMPOP must not block on a replica.
    let (cmd, n) = (end.pop_command(), out.len().to_string());
    db.repl.emit(&[cmd, key, n.as_bytes()]);
    Ok(Some(out))
}

/// After elements were removed from `l`: true if it is now empty (the caller deletes the key),
/// else lets it return to the compact encoding (Valkey's `listElementsRemoved`).
fn settle(l: &mut ListValue, limits: &crate::value::EncodingLimits) -> bool {
    if l.is_empty() {
        return true;
    }
    l.shrink_check(limits);
    false
}

/// Pops one element from `from` of `src` and pushes it at `to` of `dst` (LMOVE, RPOPLPUSH and
/// their blocking forms). Ok(None) if `src` does not exist; WRONGTYPE if `src` or `dst` holds
/// another type (checked before anything changes). `src` == `dst` rotates the list.
pub(crate) fn move_element(
    db: &mut Db,
    src: &[u8],
    dst: &[u8],
    from: End,
    to: End,
    now: u64,
) -> Result<Option<CompactBytes>, CmdError> {
    if list_len(db, src, now)?.is_none() {
        return Ok(None);
    }
    let dst_exists = list_len(db, dst, now)?.is_some();
    let limits = db.limits;
    let Some(sl) = list_mut(db, src, now) else {
        return Ok(None);
    };
    let Some(value) = (match from {
        End::Left => sl.pop_front(),
        End::Right => sl.pop_back(),
    }) else {
        return Ok(None);
    };
    let reply = value.clone();
    if src == dst {
        sl.grow_check([value.as_slice()], &limits);
        push_owned(sl, value, to);
        settle(sl, &limits);
    } else {
        let src_emptied = settle(sl, &limits);
        if dst_exists {
            if let Some(dl) = list_mut(db, dst, now) {
                dl.grow_check([value.as_slice()], &limits);
                push_owned(dl, value, to);
            }
        } else {
            let mut dl = ListValue::new();
            dl.grow_check([value.as_slice()], &limits);
            push_owned(&mut dl, value, to);
            db.set(dst, Value::List(Box::new(dl)), 0, now);
        }
        if src_emptied {
            db.remove(src, now);
        }
    }
    db.dirty += 1;
    // As it happened: a served BLMOVE must not block on a replica.
    db.repl.emit(&[b"LMOVE", src, dst, from.name(), to.name()]);
    Ok(Some(reply))
}

fn push_owned(l: &mut ListValue, v: CompactBytes, end: End) {
    match end {
        End::Left => l.push_front_owned(v),
        End::Right => l.push_back_owned(v),
    }
}

// ---- push ----

fn push_generic(ctx: &mut Ctx<'_, '_>, args: &[Bytes], end: End, only_existing: bool) -> CmdResult {
    let (key, now) = (&args[1], ctx.now_ms);
    let limits = ctx.db.limits;
    let elements = &args[2..];
    let push_all = |l: &mut ListValue| {
        l.grow_check(elements.iter().map(|e| &e[..]), &limits);
        for e in elements {
            match end {
                End::Left => l.push_front(e),
                End::Right => l.push_back(e),
            }
        }
        l.len()
    };
    let len = match list_len(ctx.db, key, now)? {
        Some(_) => list_mut(ctx.db, key, now).map_or(0, push_all),
        None if only_existing => {
            ctx.out.int(0);
            return Ok(());
        }
        None => {
            let mut l = ListValue::new();
            let len = push_all(&mut l);
            ctx.db.set(key, Value::List(Box::new(l)), 0, now);
            len
        }
    };
    ctx.db.dirty += elements.len() as u64;
    ctx.out.int(len as i64);
    Ok(())
}

fn lpush(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    push_generic(ctx, args, End::Left, false)
}

fn rpush(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    push_generic(ctx, args, End::Right, false)
}

fn lpushx(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    push_generic(ctx, args, End::Left, true)
}

fn rpushx(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    push_generic(ctx, args, End::Right, true)
}

// ---- pop ----

fn pop_generic(ctx: &mut Ctx<'_, '_>, args: &[Bytes], end: End, name: &str) -> CmdResult {
    if args.len() > 3 {
        return Err(wrong_arity(name));
    }
    let count = match args.get(2) {
        Some(a) => Some(parse_positive(a, None)? as usize),
        None => None,
    };
    let (key, now) = (&args[1], ctx.now_ms);
    match pop_from(ctx.db, key, end, count.unwrap_or(1), now)? {
        None if count.is_some() => ctx.out.null_array(),
        None => ctx.out.null(),
        Some(vals) => match count {
            Some(_) => ctx.out.bulks(vals.iter().map(|v| v.as_slice())),
            None => match vals.first() {
                Some(v) => ctx.out.bulk(v.as_slice()),
                None => ctx.out.null(),
            },
        },
    }
    Ok(())
}

fn lpop(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    pop_generic(ctx, args, End::Left, "lpop")
}

fn rpop(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    pop_generic(ctx, args, End::Right, "rpop")
}

/// LMPOP numkeys key [key ...] LEFT|RIGHT [COUNT count]
fn lmpop(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let (keys, end, count) = parse_mpop(args, 1)?;
    let now = ctx.now_ms;
    for key in keys {
        if let Some(vals) = pop_from(ctx.db, key, end, count, now)? {
            if vals.is_empty() {
                continue;
            }
            ctx.out.array(2);
            ctx.out.bulk(key);
            ctx.out.bulks(vals.iter().map(|v| v.as_slice()));
            return Ok(());
        }
    }
    ctx.out.null_array();
    Ok(())
}

/// Parses `numkeys key [key ...] LEFT|RIGHT [COUNT count]` starting at `args[numkeys_idx]`
/// (LMPOP and BLMPOP), with Valkey's checks in its order. Returns the keys, the end and the
/// count (1 when not given).
pub(crate) fn parse_mpop(
    args: &[Bytes],
    numkeys_idx: usize,
) -> Result<(&[Bytes], End, usize), CmdError> {
    let numkeys = parse_range(
        &args[numkeys_idx],
        1,
        i64::MAX,
        Some("ERR numkeys should be greater than 0"),
    )? as u64;
    let where_idx = (numkeys_idx as u64)
        .checked_add(numkeys)
        .and_then(|i| i.checked_add(1))
        .filter(|&i| i < args.len() as u64)
        .ok_or(CmdError::from(errors::SYNTAX))? as usize;
    let end = parse_end(&args[where_idx])?;
    let mut count: Option<i64> = None;
    let mut j = where_idx + 1;
    while j < args.len() {
        if count.is_none() && is(&args[j], "COUNT") && j + 1 < args.len() {
            j += 1;
            count = Some(parse_range(
                &args[j],
                1,
                i64::MAX,
                Some("ERR count should be greater than 0"),
            )?);
        } else {
            return Err(errors::SYNTAX.into());
        }
        j += 1;
    }
    Ok((
        &args[numkeys_idx + 1..where_idx],
        end,
        count.unwrap_or(1) as usize,
    ))
}

// ---- reads ----

fn llen(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let n = read_list(ctx.db, &args[1], ctx.now_ms)?.map_or(0, |l| l.len());
    ctx.out.int(n as i64);
    Ok(())
}

/// Valkey's range normalization (LRANGE, LTRIM): the inclusive range `start..=end` within a
/// list of `len`, or None when empty.
fn normalize_range(start: i64, end: i64, len: usize) -> Option<(usize, usize)> {
    let llen = len as i64;
    let mut start = if start < 0 { llen + start } else { start };
    let mut end = if end < 0 { llen + end } else { end };
    if start < 0 {
        start = 0;
    }
    if start > end || start >= llen {
        return None;
    }
    if end >= llen {
        end = llen - 1;
    }
    Some((start as usize, end as usize))
}

fn lrange(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let start = parse_i64(&args[2])?;
    let end = parse_i64(&args[3])?;
    let Some(l) = read_list(ctx.db, &args[1], ctx.now_ms)? else {
        ctx.out.array(0);
        return Ok(());
    };
    match normalize_range(start, end, l.len()) {
        Some((s, e)) => ctx.out.bulks(l.range(s, e)),
        None => ctx.out.array(0),
    }
    Ok(())
}

/// A possibly negative index into a list of `len`, if in range.
fn resolve_index(index: i64, len: usize) -> Option<usize> {
    let i = if index < 0 {
        (len as i64).checked_add(index)?
    } else {
        index
    };
    (i >= 0 && (i as u64) < len as u64).then_some(i as usize)
}

fn lindex(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let Some(l) = read_list(ctx.db, &args[1], ctx.now_ms)? else {
        ctx.out.null();
        return Ok(());
    };
    let index = parse_i64(&args[2])?;
    match resolve_index(index, l.len()).and_then(|i| l.get(i)) {
        Some(v) => ctx.out.bulk(v),
        None => ctx.out.null(),
    }
    Ok(())
}

/// LPOS key element [RANK rank] [COUNT num-matches] [MAXLEN len]
fn lpos(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let ele = &args[2][..];
    let (mut rank, mut count, mut maxlen): (i64, Option<i64>, i64) = (1, None, 0);
    let mut j = 3;
    while j < args.len() {
        let more = j + 1 < args.len();
        if is(&args[j], "RANK") && more {
            j += 1;
            rank = parse_range(&args[j], -i64::MAX, i64::MAX, None)?;
            if rank == 0 {
                return Err(
                    "ERR RANK can't be zero: use 1 to start from the first match, 2 from \
                            the second ... or use negative to start from the end of the list"
                        .into(),
                );
            }
        } else if is(&args[j], "COUNT") && more {
            j += 1;
            count = Some(parse_positive(
                &args[j],
                Some("ERR COUNT can't be negative"),
            )?);
        } else if is(&args[j], "MAXLEN") && more {
            j += 1;
            maxlen = parse_positive(&args[j], Some("ERR MAXLEN can't be negative"))?;
        } else {
            return Err(errors::SYNTAX.into());
        }
        j += 1;
    }
    let from_tail = rank < 0;
    let rank = rank.unsigned_abs();
    let Some(l) = read_list(ctx.db, &args[1], ctx.now_ms)? else {
        if count.is_some() {
            ctx.out.array(0);
        } else {
            ctx.out.null();
        }
        return Ok(());
    };
    let len = l.len();
    let scan = if maxlen == 0 {
        len
    } else {
        len.min(maxlen as usize)
    };
    let mut found: Vec<i64> = Vec::new();
    let mut matches: u64 = 0;
    let want = count.map_or(1, |c| if c == 0 { u64::MAX } else { c as u64 });
    for step in 0..scan {
        let idx = if from_tail { len - 1 - step } else { step };
        if l.get(idx) == Some(ele) {
            matches += 1;
            if matches >= rank {
                found.push(idx as i64);
                if found.len() as u64 >= want {
                    break;
                }
            }
        }
    }
    if count.is_some() {
        ctx.out.array(found.len());
        for i in found {
            ctx.out.int(i);
        }
    } else {
        match found.first() {
            Some(&i) => ctx.out.int(i),
            None => ctx.out.null(),
        }
    }
    Ok(())
}

// ---- in-place writes ----

fn lset(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let (key, now) = (&args[1], ctx.now_ms);
    if list_len(ctx.db, key, now)?.is_none() {
        return Err(errors::NO_SUCH_KEY.into());
    }
    let index = parse_i64(&args[2])?;
    let limits = ctx.db.limits;
    let value = &args[3][..];
    let Some(l) = list_mut(ctx.db, key, now) else {
        return Err(errors::NO_SUCH_KEY.into());
    };
    // Valkey converts before it knows whether the index is in range.
    l.grow_check([value], &limits);
    match resolve_index(index, l.len()) {
        Some(i) => {
            l.set(i, value);
            l.shrink_check(&limits);
        }
        None => return Err("ERR index out of range".into()),
    }
    ctx.db.dirty += 1;
    ctx.out.ok();
    Ok(())
}

/// LINSERT key BEFORE|AFTER pivot element
fn linsert(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let after = if is(&args[2], "AFTER") {
        true
    } else if is(&args[2], "BEFORE") {
        false
    } else {
        return Err(errors::SYNTAX.into());
    };
    let (key, now) = (&args[1], ctx.now_ms);
    if list_len(ctx.db, key, now)?.is_none() {
        ctx.out.int(0);
        return Ok(());
    }
    let limits = ctx.db.limits;
    let Some(l) = list_mut(ctx.db, key, now) else {
        ctx.out.int(0);
        return Ok(());
    };
    // Valkey converts before it knows whether the pivot exists.
    l.grow_check([&args[4][..]], &limits);
    match l.position(&args[3]) {
        Some(i) => {
            l.insert(i, after, &args[4]);
            let len = l.len();
            ctx.db.dirty += 1;
            ctx.out.int(len as i64);
        }
        None => ctx.out.int(-1),
    }
    Ok(())
}

/// LREM key count element
fn lrem(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let count = parse_range(&args[2], -i64::MAX, i64::MAX, None)?;
    let (key, now) = (&args[1], ctx.now_ms);
    if list_len(ctx.db, key, now)?.is_none() {
        ctx.out.int(0);
        return Ok(());
    }
    // Look before touching: a LREM that removes nothing is no modification.
    let present = ctx
        .db
        .get(key, now)
        .is_some_and(|e| matches!(&e.value, Value::List(l) if l.position(&args[3]).is_some()));
    let mut removed = 0;
    if present {
        if let Some(l) = list_mut(ctx.db, key, now) {
            removed = l.remove_matching(&args[3], count.unsigned_abs() as usize, count < 0);
        }
        after_removal(ctx.db, key, now);
        ctx.db.dirty += removed as u64;
    }
    ctx.out.int(removed as i64);
    Ok(())
}

/// LTRIM key start stop
fn ltrim(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let start = parse_i64(&args[2])?;
    let end = parse_i64(&args[3])?;
    let (key, now) = (&args[1], ctx.now_ms);
    let Some(len) = list_len(ctx.db, key, now)? else {
        ctx.out.ok();
        return Ok(());
    };
    let (front, back) = match normalize_range(start, end, len) {
        Some((s, e)) => (s, len - e - 1),
        None => (len, 0),
    };
    let limits = ctx.db.limits;
    let needs_shrink = ctx
        .db
        .get(key, now)
        .is_some_and(|e| matches!(&e.value, Value::List(l) if l.is_quicklist()));
    if front + back > 0 || needs_shrink {
        if let Some(l) = list_mut(ctx.db, key, now) {
            l.trim(front, back);
            l.shrink_check(&limits);
        }
        after_removal(ctx.db, key, now);
    }
    ctx.db.dirty += (front + back) as u64;
    ctx.out.ok();
    Ok(())
}

// ---- moves ----

fn lmove(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let from = parse_end(&args[3])?;
    let to = parse_end(&args[4])?;
    move_reply(ctx, args, from, to)
}

fn rpoplpush(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    move_reply(ctx, args, End::Right, End::Left)
}

fn move_reply(ctx: &mut Ctx<'_, '_>, args: &[Bytes], from: End, to: End) -> CmdResult {
    match move_element(ctx.db, &args[1], &args[2], from, to, ctx.now_ms)? {
        Some(v) => ctx.out.bulk(v.as_slice()),
        None => ctx.out.null(),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn b(v: &[&str]) -> Vec<Bytes> {
        v.iter()
            .map(|s| Bytes::copy_from_slice(s.as_bytes()))
            .collect()
    }

    #[test]
    fn ranges_normalize_like_valkey() {
        assert_eq!(normalize_range(0, -1, 3), Some((0, 2)));
        assert_eq!(normalize_range(-100, 100, 3), Some((0, 2)));
        assert_eq!(normalize_range(2, 1, 3), None);
        assert_eq!(normalize_range(3, 5, 3), None);
        assert_eq!(normalize_range(i64::MIN, i64::MAX, 3), Some((0, 2)));
        assert_eq!(normalize_range(0, i64::MIN, 3), None);
        assert_eq!(resolve_index(-1, 3), Some(2));
        assert_eq!(resolve_index(-4, 3), None);
        assert_eq!(resolve_index(i64::MIN, 3), None);
        assert_eq!(resolve_index(3, 3), None);
    }

    #[test]
    fn mpop_arguments() {
        let a = b(&["LMPOP", "2", "a", "b", "left", "COUNT", "3"]);
        let (keys, end, count) = parse_mpop(&a, 1).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(end, End::Left);
        assert_eq!(count, 3);
        let a = b(&["LMPOP", "9223372036854775807", "a", "left"]);
        assert_eq!(
            parse_mpop(&a, 1).unwrap_err(),
            CmdError::from(errors::SYNTAX)
        );
        let a = b(&["LMPOP", "0", "a", "left"]);
        assert!(parse_mpop(&a, 1).is_err());
        let a = b(&["LMPOP", "1", "a", "left", "COUNT", "1", "COUNT", "1"]);
        assert_eq!(
            parse_mpop(&a, 1).unwrap_err(),
            CmdError::from(errors::SYNTAX)
        );
    }

    #[test]
    fn pop_and_move_keep_the_keyspace_consistent() {
        let mut db = Db::new();
        let mut l = ListValue::new();
        for v in ["a", "b", "c"] {
            l.push_back(v.as_bytes());
        }
        db.set(b"src", Value::List(Box::new(l)), 0, 0);
        let v = move_element(&mut db, b"src", b"dst", End::Left, End::Right, 0).unwrap();
        assert_eq!(v.unwrap().as_slice(), b"a");
        let v = move_element(&mut db, b"src", b"src", End::Left, End::Right, 0).unwrap();
        assert_eq!(v.unwrap().as_slice(), b"b");
        let popped = pop_from(&mut db, b"src", End::Right, 10, 0)
            .unwrap()
            .unwrap();
        assert_eq!(popped.len(), 2);
        assert!(!db.contains(b"src", 0));
        assert!(pop_from(&mut db, b"src", End::Left, 1, 0)
            .unwrap()
            .is_none());
        assert_eq!(db.dirty, 4);
        assert!(
            move_element(&mut db, b"nosuch", b"dst", End::Left, End::Left, 0)
                .unwrap()
                .is_none()
        );
    }
}
