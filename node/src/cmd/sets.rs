//! Set commands, following Valkey 8's `t_set.c`: reply types (sets are `~` in RESP3,
//! SRANDMEMBER and SMISMEMBER are arrays), error strings, the order of checks, and the
//! encoding a stored result gets (see `value/set.rs`).

use std::collections::HashMap;

use bytes::Bytes;
use lagwise_shared::glob;
use lagwise_shared::resp::errors;

use super::{is, parse_i64, CmdError, CmdResult, Ctx, Handler, Outcome};
use crate::db::Db;
use crate::value::set::Member;
use crate::value::{SetValue, Value};

pub fn register(m: &mut HashMap<&'static str, Handler>) {
    m.insert("sadd", sadd);
    m.insert("srem", srem);
    m.insert("sismember", sismember);
    m.insert("smismember", smismember);
    m.insert("smembers", smembers);
    m.insert("scard", scard);
    m.insert("spop", spop);
    m.insert("srandmember", srandmember);
    m.insert("smove", smove);
    m.insert("sinter", sinter);
    m.insert("sintercard", sintercard);
    m.insert("sinterstore", sinterstore);
    m.insert("sunion", sunion);
    m.insert("sunionstore", sunionstore);
    m.insert("sdiff", sdiff);
    m.insert("sdiffstore", sdiffstore);
    m.insert("sscan", sscan);
}

/// Replies larger than this stop early and close the connection, as Valkey stops a client
/// whose output buffer overflows (SRANDMEMBER with a huge negative count).
const MAX_REPLY_BYTES: usize = 1 << 30;

/// The set at `key` for a read (counts a hit or miss): Ok(None) if missing.
fn read_set<'d>(db: &'d mut Db, key: &[u8], now: u64) -> Result<Option<&'d SetValue>, CmdError> {
    match db.lookup_read(key, now).map(|e| &e.value) {
        None => Ok(None),
        Some(Value::Set(s)) => Ok(Some(s)),
        Some(_) => Err(errors::WRONGTYPE.into()),
    }
}

/// The set at `key` without counting (second passes of multi-key commands).
fn peek_set<'d>(db: &'d mut Db, key: &[u8], now: u64) -> Option<&'d SetValue> {
    match db.get(key, now).map(|e| &e.value) {
        Some(Value::Set(s)) => Some(s),
        _ => None,
    }
}

/// The set at `key`, type-checked, without counting or signalling a change.
fn check_set<'d>(db: &'d mut Db, key: &[u8], now: u64) -> Result<Option<&'d SetValue>, CmdError> {
    match db.get(key, now).map(|e| &e.value) {
        None => Ok(None),
        Some(Value::Set(s)) => Ok(Some(s)),
        Some(_) => Err(errors::WRONGTYPE.into()),
    }
}

/// The set at `key` for a write (signals the change to WATCH).
fn write_set<'d>(
    db: &'d mut Db,
    key: &[u8],
    now: u64,
) -> Result<Option<&'d mut SetValue>, CmdError> {
    match db.get_mut(key, now).map(|e| &mut e.value) {
        None => Ok(None),
        Some(Value::Set(s)) => Ok(Some(s)),
        Some(_) => Err(errors::WRONGTYPE.into()),
    }
}

fn sadd(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let (key, now) = (&args[1], ctx.now_ms);
    let limits = ctx.db.limits;
    let members = &args[2..];
    // Only a real change goes through `get_mut`, which invalidates WATCH: SADD of members
    // already present is no write in Valkey either (unless the encoding must change).
    let changes = check_set(ctx.db, key, now)?.map(|set| {
        set.would_convert(members.len(), &limits) || members.iter().any(|m| !set.contains(m))
    });
    let mut added = 0;
    match changes {
        Some(false) => {}
        Some(true) => {
            if let Some(set) = write_set(ctx.db, key, now)? {
                set.maybe_convert(members.len(), &limits);
                for m in members {
                    added += set.add(m, &limits) as i64;
                }
            }
        }
        None => {
            let mut set = SetValue::create(&members[0], members.len(), &limits);
            for m in members {
                added += set.add(m, &limits) as i64;
            }
            ctx.db.set(key, Value::Set(Box::new(set)), 0, now);
        }
    }
    ctx.db.dirty += added as u64;
    ctx.out.int(added);
    Ok(())
}

fn srem(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let (key, now) = (&args[1], ctx.now_ms);
    let any = check_set(ctx.db, key, now)?.is_some_and(|s| args[2..].iter().any(|m| s.contains(m)));
    if !any {
        ctx.out.int(0);
        return Ok(());
    }
    let Some(set) = write_set(ctx.db, key, now)? else {
        ctx.out.int(0);
        return Ok(());
    };
    let mut deleted = 0;
    let mut emptied = false;
    for m in &args[2..] {
        if set.remove(m) {
            deleted += 1;
            if set.is_empty() {
                emptied = true;
                break;
            }
        }
    }
    if emptied {
        ctx.db.remove(key, now);
    }
    ctx.db.dirty += deleted;
    ctx.out.int(deleted as i64);
    Ok(())
}

fn sismember(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let found = read_set(ctx.db, &args[1], ctx.now_ms)?.is_some_and(|s| s.contains(&args[2]));
    ctx.out.int(found as i64);
    Ok(())
}

fn smismember(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let set = read_set(ctx.db, &args[1], ctx.now_ms)?;
    let found: Vec<bool> = args[2..]
        .iter()
        .map(|m| set.is_some_and(|s| s.contains(m)))
        .collect();
    ctx.out.array(found.len());
    for f in found {
        ctx.out.int(f as i64);
    }
    Ok(())
}

/// Writes a whole set as a set reply.
fn reply_set(ctx: &mut Ctx<'_, '_>, set: &SetValue) {
    ctx.out.set(set.len());
    for m in set.iter() {
        m.with_bytes(|b| ctx.out.bulk(b));
    }
}

fn smembers(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let now = ctx.now_ms;
    match ctx.db.lookup_read(&args[1], now).map(|e| &e.value) {
        None => ctx.out.set(0),
        Some(Value::Set(s)) => {
            ctx.out.set(s.len());
            for m in s.iter() {
                m.with_bytes(|b| ctx.out.bulk(b));
            }
        }
        Some(_) => return Err(errors::WRONGTYPE.into()),
    }
    Ok(())
}

fn scard(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let n = read_set(ctx.db, &args[1], ctx.now_ms)?.map_or(0, |s| s.len());
    ctx.out.int(n as i64);
    Ok(())
}

/// A count that must be >= 0 (`getPositiveLongFromObjectOrReply`).
fn positive_count(arg: &[u8], msg: &'static str) -> Result<u64, CmdError> {
    match crate::value::parse_i64_strict(arg) {
        Some(n) if n >= 0 => Ok(n as u64),
        _ => Err(msg.into()),
    }
}

fn spop(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    if args.len() > 3 {
        return Err(errors::SYNTAX.into());
    }
    let (key, now) = (&args[1], ctx.now_ms);
    let limits = ctx.db.limits;
    let mut rng = rand::rng();
    if args.len() == 2 {
        if check_set(ctx.db, key, now)?.is_none() {
            ctx.out.null();
            return Ok(());
        }
        let Some(set) = write_set(ctx.db, key, now)? else {
            ctx.out.null();
            return Ok(());
        };
        let m = set.pop_random(&mut rng);
        if set.is_empty() {
            ctx.db.remove(key, now);
        }
        ctx.db.dirty += 1;
        // Chance chose the member: replicas are told which.
        ctx.db.repl.emit(&[b"SREM", key, &m]);
        ctx.out.bulk(&m);
        return Ok(());
    }
    let count = positive_count(&args[2], "ERR value is out of range, must be positive")?;
    if check_set(ctx.db, key, now)?.is_none() || count == 0 {
        ctx.out.set(0);
        return Ok(());
    }
    let Some(set) = write_set(ctx.db, key, now)? else {
        ctx.out.set(0);
        return Ok(());
    };
    let size = set.len() as u64;
    if count >= size {
        if let Some(entry) = ctx.db.remove(key, now) {
            if let Value::Set(set) = &entry.value {
                reply_set(ctx, set);
            }
        }
        ctx.db.dirty += size;
        ctx.db.repl.emit(&[b"DEL", key]);
        return Ok(());
    }
    let popped = set.pop_many(count as usize, &limits, &mut rng);
    ctx.db.dirty += count;
    ctx.db
        .repl
        .emit_with(&[b"SREM", key], popped.iter().map(|m| &m[..]));
    ctx.out.set(popped.len());
    for m in &popped {
        ctx.out.bulk(m);
    }
    Ok(())
}

fn srandmember(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    if args.len() > 3 {
        return Err(errors::SYNTAX.into());
    }
    let (key, now) = (&args[1], ctx.now_ms);
    let mut rng = rand::rng();
    if args.len() == 2 {
        match read_set(ctx.db, key, now)? {
            Some(set) => {
                let m = set.random(&mut rng).to_vec();
                ctx.out.bulk(&m);
            }
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
    let Some(set) = read_set(ctx.db, key, now)? else {
        ctx.out.array(0);
        return Ok(());
    };
    let set: &SetValue = set;
    let (count, uniq) = (l.unsigned_abs(), l >= 0);
    if count == 0 {
        ctx.out.array(0);
        return Ok(());
    }
    if !uniq || count == 1 {
        // Repetitions allowed: `count` independent picks. A huge count stops once the reply
        // passes MAX_REPLY_BYTES, closing the connection (Valkey's output-buffer limit).
        let start = ctx.out.out.len();
        ctx.out.array(count as usize);
        for _ in 0..count {
            set.random(&mut rng).with_bytes(|b| ctx.out.bulk(b));
            if ctx.out.out.len() - start > MAX_REPLY_BYTES {
                ctx.outcome = Outcome::Close;
                break;
            }
        }
    } else if count >= set.len() as u64 {
        reply_array(ctx.out, set.iter());
    } else {
        let picked = set.random_distinct(count as usize, &mut rng);
        reply_array(ctx.out, picked.into_iter());
    }
    Ok(())
}

fn reply_array<'m>(
    out: &mut lagwise_shared::resp::ReplyWriter<'_>,
    members: impl ExactSizeIterator<Item = Member<'m>>,
) {
    out.array(members.len());
    for m in members {
        m.with_bytes(|b| out.bulk(b));
    }
}

fn smove(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let (src, dst, member, now) = (&args[1], &args[2], &args[3], ctx.now_ms);
    let limits = ctx.db.limits;
    let Some(src_set) = check_set(ctx.db, src, now)? else {
        ctx.out.int(0);
        return Ok(());
    };
    let src_is_member = src_set.contains(member);
    let dst_has = check_set(ctx.db, dst, now)?.map(|d| d.contains(member));
    if src == dst || !src_is_member {
        ctx.out.int(src_is_member as i64);
        return Ok(());
    }
    if let Some(s) = write_set(ctx.db, src, now)? {
        s.remove(member);
        if s.is_empty() {
            ctx.db.remove(src, now);
        }
    }
    ctx.db.dirty += 1;
    match dst_has {
        Some(true) => {}
        Some(false) => {
            if let Some(d) = write_set(ctx.db, dst, now)? {
                d.add(member, &limits);
                ctx.db.dirty += 1;
            }
        }
        None => {
            let mut d = SetValue::create(member, 1, &limits);
            d.add(member, &limits);
            ctx.db.set(dst, Value::Set(Box::new(d)), 0, now);
            ctx.db.dirty += 1;
        }
    }
    ctx.out.int(1);
    Ok(())
}

/// Type-checks every key (counting hits and misses once each) and returns the sizes, None
/// for missing keys.
fn source_sizes(ctx: &mut Ctx<'_, '_>, keys: &[Bytes]) -> Result<Vec<Option<usize>>, CmdError> {
    let now = ctx.now_ms;
    keys.iter()
        .map(|k| Ok(read_set(ctx.db, k, now)?.map(|s| s.len())))
        .collect()
}

/// What an intersection is wanted for.
enum InterMode {
    Reply,
    /// The cardinality, counting up to the limit (0: no limit).
    Card(u64),
}

/// The members of an intersection, and the encoding of the set they were drawn from.
type Intersection = (Vec<Vec<u8>>, &'static str);

/// SINTER, SINTERCARD and SINTERSTORE: the members of the smallest set found in all the
/// others, in the smallest set's order. Returns None when a key is missing (the result is
/// empty), else the members and whether the smallest set was an intset.
fn intersect(
    ctx: &mut Ctx<'_, '_>,
    keys: &[Bytes],
    limit: u64,
) -> Result<Option<Intersection>, CmdError> {
    let sizes = source_sizes(ctx, keys)?;
    if sizes.iter().any(Option::is_none) {
        return Ok(None);
    }
    let now = ctx.now_ms;
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_by_key(|&i| sizes[i]);
    let first = order[0];
    let Some(base) = peek_set(ctx.db, &keys[first], now) else {
        return Ok(None);
    };
    let base_encoding = base.encoding_name();
    let mut candidates: Vec<Vec<u8>> = base.iter().map(|m| m.to_vec()).collect();
    for &j in &order[1..] {
        if keys[j] == keys[first] {
            continue;
        }
        if let Some(s) = peek_set(ctx.db, &keys[j], now) {
            candidates.retain(|m| s.contains(m));
        }
    }
    if limit > 0 && candidates.len() as u64 > limit {
        candidates.truncate(limit as usize);
    }
    Ok(Some((candidates, base_encoding)))
}

fn sinter_generic(ctx: &mut Ctx<'_, '_>, keys: &[Bytes], mode: InterMode) -> CmdResult {
    let limit = match mode {
        InterMode::Card(l) => l,
        InterMode::Reply => 0,
    };
    let result = intersect(ctx, keys, limit)?;
    match mode {
        InterMode::Card(_) => ctx.out.int(result.map_or(0, |(m, _)| m.len()) as i64),
        InterMode::Reply => {
            let members = result.map(|(m, _)| m).unwrap_or_default();
            ctx.out.set(members.len());
            for m in &members {
                ctx.out.bulk(m);
            }
        }
    }
    Ok(())
}

fn sinter(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    sinter_generic(ctx, &args[1..], InterMode::Reply)
}

fn sintercard(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    const NUMKEYS: &str = "ERR numkeys should be greater than 0";
    let numkeys = match crate::value::parse_i64_strict(&args[1]) {
        Some(n) if n >= 1 => n as u64,
        _ => return Err(NUMKEYS.into()),
    };
    if numkeys > (args.len() - 2) as u64 {
        return Err("ERR Number of keys can't be greater than number of args".into());
    }
    let numkeys = numkeys as usize;
    let mut limit = 0;
    let mut j = 2 + numkeys;
    while j < args.len() {
        if is(&args[j], "LIMIT") && j + 1 < args.len() {
            limit = positive_count(&args[j + 1], "ERR LIMIT can't be negative")?;
            j += 2;
        } else {
            return Err(errors::SYNTAX.into());
        }
    }
    sinter_generic(ctx, &args[2..2 + numkeys], InterMode::Card(limit))
}

/// Stores `set` at `dst` (replacing any value and expiry), or deletes `dst` when empty;
/// replies with the size.
fn store(ctx: &mut Ctx<'_, '_>, dst: &[u8], set: SetValue) {
    let now = ctx.now_ms;
    let n = set.len();
    if n > 0 {
        ctx.db.set(dst, Value::Set(Box::new(set)), 0, now);
        ctx.db.dirty += 1;
    } else if ctx.db.remove(dst, now).is_some() {
        ctx.db.dirty += 1;
    }
    ctx.out.int(n as i64);
}

fn sinterstore(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let limits = ctx.db.limits;
    let result = intersect(ctx, &args[2..], 0)?;
    let set = match result {
        None => SetValue::new_intset(),
        Some((members, base_encoding)) => {
            // Valkey starts the result as an intset when the smallest source is one, else as
            // a listpack, and turns an all-integer result into an intset at the end.
            let mut set = if base_encoding == "intset" {
                SetValue::new_intset()
            } else {
                SetValue::new_listpack()
            };
            let mut only_integers = true;
            for m in &members {
                only_integers &= crate::value::parse_i64_strict(m).is_some();
                set.add(m, &limits);
            }
            if only_integers && !set.is_empty() {
                set.maybe_convert_to_intset(&limits);
            }
            set
        }
    };
    store(ctx, &args[1], set);
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Union,
    Diff,
}

/// SUNION/SDIFF and their STORE forms, as Valkey's `sunionDiffGenericCommand`: the result is
/// built by adding to an intset (so it converts as members arrive), and SDIFF picks the same
/// algorithm Valkey picks, which decides the stored encoding.
fn union_diff(ctx: &mut Ctx<'_, '_>, keys: &[Bytes], op: Op) -> Result<SetValue, CmdError> {
    let sizes = source_sizes(ctx, keys)?;
    let now = ctx.now_ms;
    let limits = ctx.db.limits;
    let mut out = SetValue::new_intset();
    let same_set = sizes[0].is_some() && keys[1..].iter().any(|k| *k == keys[0]);
    match op {
        Op::Union => {
            for k in keys {
                if let Some(s) = peek_set(ctx.db, k, now) {
                    for m in s.iter() {
                        m.with_bytes(|b| out.add(b, &limits));
                    }
                }
            }
        }
        Op::Diff if sizes[0].is_none() || same_set => {}
        Op::Diff => {
            let (mut algo_one, mut algo_two) = (0u64, 0u64);
            for s in sizes.iter().flatten() {
                algo_one += sizes[0].unwrap_or(0) as u64;
                algo_two += *s as u64;
            }
            algo_one /= 2;
            let Some(first) = peek_set(ctx.db, &keys[0], now) else {
                return Ok(out);
            };
            let firsts: Vec<Vec<u8>> = first.iter().map(|m| m.to_vec()).collect();
            if algo_one <= algo_two {
                let mut keep = firsts;
                for k in &keys[1..] {
                    if let Some(s) = peek_set(ctx.db, k, now) {
                        keep.retain(|m| !s.contains(m));
                    }
                }
                for m in &keep {
                    out.add(m, &limits);
                }
            } else {
                for m in &firsts {
                    out.add(m, &limits);
                }
                for k in &keys[1..] {
                    if out.is_empty() {
                        break;
                    }
                    if let Some(s) = peek_set(ctx.db, k, now) {
                        for m in s.iter() {
                            m.with_bytes(|b| out.remove(b));
                        }
                    }
                }
            }
        }
    }
    Ok(out)
}

fn sunion(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let set = union_diff(ctx, &args[1..], Op::Union)?;
    reply_set(ctx, &set);
    Ok(())
}

fn sdiff(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let set = union_diff(ctx, &args[1..], Op::Diff)?;
    reply_set(ctx, &set);
    Ok(())
}

fn sunionstore(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let set = union_diff(ctx, &args[2..], Op::Union)?;
    store(ctx, &args[1], set);
    Ok(())
}

fn sdiffstore(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let set = union_diff(ctx, &args[2..], Op::Diff)?;
    store(ctx, &args[1], set);
    Ok(())
}

fn sscan(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let cursor = std::str::from_utf8(&args[2])
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or(CmdError::from("ERR invalid cursor"))?;
    let now = ctx.now_ms;
    if read_set(ctx.db, &args[1], now)?.is_none() {
        ctx.out.array(2);
        ctx.out.bulk(b"0");
        ctx.out.array(0);
        return Ok(());
    }
    let (mut pattern, mut count): (Option<&[u8]>, usize) = (None, 10);
    let mut i = 3;
    while i < args.len() {
        let more = i + 1 < args.len();
        if is(&args[i], "COUNT") && more {
            let n = parse_i64(&args[i + 1])?;
            if n < 1 {
                return Err(errors::SYNTAX.into());
            }
            count = n as usize;
        } else if is(&args[i], "MATCH") && more {
            pattern = Some(&args[i + 1]);
        } else {
            return Err(errors::SYNTAX.into());
        }
        i += 2;
    }
    let pattern = pattern.filter(|p| *p != b"*");
    let Some(set) = peek_set(ctx.db, &args[1], now) else {
        return Ok(());
    };
    let mut found: Vec<Vec<u8>> = Vec::new();
    let next = set.scan(cursor, count, |m| {
        m.with_bytes(|b| {
            if pattern.is_none_or(|p| glob::matches(p, b, false)) {
                found.push(b.to_vec());
            }
        })
    });
    ctx.out.array(2);
    ctx.out.bulk_int(next as i64);
    ctx.out.bulks(found.iter());
    Ok(())
}
