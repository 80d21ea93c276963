//! String commands.

use std::collections::HashMap;

use bytes::Bytes;
use lagwise_shared::resp::errors;

use super::incrfloat::{incrbyfloat_text, parse_float_text, zero};
use super::{is, parse_i64, wrong_arity, CmdError, CmdResult, Ctx, Handler};
use crate::db::Db;
use crate::value::{StrEncoding, StrValue, Value};

pub fn register(m: &mut HashMap<&'static str, Handler>) {
    m.insert("get", get);
    m.insert("set", set);
    m.insert("setnx", setnx);
    m.insert("setex", setex);
    m.insert("psetex", psetex);
    m.insert("getset", getset);
    m.insert("getdel", getdel);
    m.insert("getex", getex);
    m.insert("mget", mget);
    m.insert("mset", mset);
    m.insert("msetnx", msetnx);
    m.insert("append", append);
    m.insert("strlen", strlen);
    m.insert("incr", incr);
    m.insert("decr", decr);
    m.insert("incrby", incrby);
    m.insert("decrby", decrby);
    m.insert("incrbyfloat", incrbyfloat);
    m.insert("getrange", getrange);
    m.insert("setrange", setrange);
}

const TOO_BIG: &str = "ERR string exceeds maximum allowed size (proto-max-bulk-len)";

/// The string at `key`: Ok(None) if missing, WRONGTYPE if another type.
fn read_str<'d>(db: &'d mut Db, key: &[u8], now: u64) -> Result<Option<&'d StrValue>, CmdError> {
    match db.lookup_read(key, now).map(|e| &e.value) {
        None => Ok(None),
        Some(Value::Str(s)) => Ok(Some(s)),
        Some(_) => Err(errors::WRONGTYPE.into()),
    }
}

/// The string at `key` for a write (no hit/miss counting).
fn write_str<'d>(
    db: &'d mut Db,
    key: &[u8],
    now: u64,
) -> Result<Option<&'d mut StrValue>, CmdError> {
    match db.get_mut(key, now).map(|e| &mut e.value) {
        None => Ok(None),
        Some(Value::Str(s)) => Ok(Some(s)),
        Some(_) => Err(errors::WRONGTYPE.into()),
    }
}

fn get(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    match read_str(ctx.db, &args[1], ctx.now_ms)? {
        Some(s) => ctx.out.bulk(s.as_bytes()),
        None => ctx.out.null(),
    }
    Ok(())
}

/// An expiry option as given: which unit, and whether absolute.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ExpireUnit {
    Ex,
    Px,
    ExAt,
    PxAt,
}

/// Turns an expiry option's value into an absolute Unix time in ms, with Valkey's checks.
fn expire_at_ms(unit: ExpireUnit, arg: &[u8], now: u64, cmd: &str) -> Result<u64, CmdError> {
    let n = parse_i64(arg)?;
    let invalid = || CmdError::from(format!("ERR invalid expire time in '{cmd}' command"));
    if n <= 0 {
        return Err(invalid());
    }
    let ms = match unit {
        ExpireUnit::Ex | ExpireUnit::ExAt => n.checked_mul(1000).ok_or_else(invalid)?,
        ExpireUnit::Px | ExpireUnit::PxAt => n,
    };
    let at = match unit {
        ExpireUnit::Ex | ExpireUnit::Px => ms.checked_add(now as i64).ok_or_else(invalid)?,
        ExpireUnit::ExAt | ExpireUnit::PxAt => ms,
    };
    Ok(at as u64)
}

/// The options SET and GETEX share.
#[derive(Default)]
struct SetOptions<'a> {
    nx: bool,
    xx: bool,
    get: bool,
    keep_ttl: bool,
    persist: bool,
    expire: Option<(ExpireUnit, &'a [u8])>,
}

fn parse_set_options<'a>(args: &'a [Bytes], for_getex: bool) -> Result<SetOptions<'a>, CmdError> {
    let mut o = SetOptions::default();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i][..];
        let next = args.get(i + 1).map(|b| &b[..]);
        let has_expire = o.expire.is_some();
        if !for_getex && is(a, "NX") && !o.xx {
            o.nx = true;
        } else if !for_getex && is(a, "XX") && !o.nx {
            o.xx = true;
        } else if !for_getex && is(a, "GET") {
            o.get = true;
        } else if !for_getex && is(a, "KEEPTTL") && !has_expire && !o.persist {
            o.keep_ttl = true;
        } else if for_getex && is(a, "PERSIST") && !has_expire && !o.keep_ttl {
            o.persist = true;
        } else if let (Some(unit), Some(v)) = (
            [
                ("EX", ExpireUnit::Ex),
                ("PX", ExpireUnit::Px),
                ("EXAT", ExpireUnit::ExAt),
                ("PXAT", ExpireUnit::PxAt),
            ]
            .iter()
            .find(|(n, _)| is(a, n))
            .map(|(_, u)| *u),
            next,
        ) {
            // Repeating the same option is allowed (the last value wins); mixing is not.
            if o.keep_ttl || o.persist || o.expire.is_some_and(|(u, _)| u != unit) {
                return Err(errors::SYNTAX.into());
            }
            o.expire = Some((unit, v));
            i += 1;
        } else {
            return Err(errors::SYNTAX.into());
        }
        i += 1;
    }
    Ok(o)
}

fn set(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let o = parse_set_options(&args[3..], false)?;
    let expire_at = match o.expire {
        Some((unit, v)) => expire_at_ms(unit, v, ctx.now_ms, "set")?,
        None => 0,
    };
    let key = &args[1];
    let now = ctx.now_ms;
    if o.get {
        match read_str(ctx.db, key, now)? {
            Some(s) => ctx.out.bulk(s.as_bytes()),
            None => ctx.out.null(),
        }
    }
    if (o.nx || o.xx) && ctx.db.contains(key, now) == o.nx {
        if !o.get {
            ctx.out.null();
        }
        return Ok(());
    }
    let value = Value::Str(StrValue::new(&args[2]));
    if o.keep_ttl {
        ctx.db.set_keep_ttl(key, value, now);
    } else {
        ctx.db.set(key, value, expire_at, now);
    }
    ctx.db.dirty += 1;
    if expire_at != 0 {
        propagate_set_pxat(ctx, key, &args[2], expire_at);
    }
    // An absolute expiry already in the past deletes the key at once, as in Valkey.
    if expire_at != 0 && expire_at <= now {
        ctx.db.get(key, now);
    }
    if !o.get {
        ctx.out.ok();
    }
    Ok(())
}

/// A relative expiry (EX, PX, SETEX) reaches replicas as the absolute time it means here.
fn propagate_set_pxat(ctx: &mut Ctx<'_, '_>, key: &[u8], value: &[u8], at: u64) {
    let at = at.to_string();
    ctx.db
        .repl
        .emit(&[b"SET", key, value, b"PXAT", at.as_bytes()]);
}

fn setnx(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    if ctx.db.contains(&args[1], ctx.now_ms) {
        ctx.out.int(0);
    } else {
        ctx.db
            .set(&args[1], Value::Str(StrValue::new(&args[2])), 0, ctx.now_ms);
        ctx.db.dirty += 1;
        ctx.out.int(1);
    }
    Ok(())
}

fn setex_generic(ctx: &mut Ctx<'_, '_>, args: &[Bytes], unit: ExpireUnit, cmd: &str) -> CmdResult {
    let at = expire_at_ms(unit, &args[2], ctx.now_ms, cmd)?;
    ctx.db.set(
        &args[1],
        Value::Str(StrValue::new(&args[3])),
        at,
        ctx.now_ms,
    );
    ctx.db.dirty += 1;
    propagate_set_pxat(ctx, &args[1], &args[3], at);
    ctx.out.ok();
    Ok(())
}

fn setex(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    setex_generic(ctx, args, ExpireUnit::Ex, "setex")
}

fn psetex(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    setex_generic(ctx, args, ExpireUnit::Px, "psetex")
}

fn getset(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    match read_str(ctx.db, &args[1], ctx.now_ms)? {
        Some(s) => ctx.out.bulk(s.as_bytes()),
        None => ctx.out.null(),
    }
    ctx.db
        .set(&args[1], Value::Str(StrValue::new(&args[2])), 0, ctx.now_ms);
    ctx.db.dirty += 1;
    Ok(())
}

fn getdel(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    match read_str(ctx.db, &args[1], ctx.now_ms)? {
        Some(s) => ctx.out.bulk(s.as_bytes()),
        None => {
            ctx.out.null();
            return Ok(());
        }
    }
    ctx.db.remove(&args[1], ctx.now_ms);
    ctx.db.dirty += 1;
    Ok(())
}

fn getex(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let o = parse_set_options(&args[2..], true)?;
    let (key, now) = (&args[1], ctx.now_ms);
    // Valkey checks the expiry value only once it knows the key exists.
    let Some(value) = read_str(ctx.db, key, now)?.map(|s| s.bytes.clone()) else {
        ctx.out.null();
        return Ok(());
    };
    let expire_at = match o.expire {
        Some((unit, v)) => expire_at_ms(unit, v, now, "getex")?,
        None => 0,
    };
    ctx.out.bulk(value.as_slice());
    if o.persist {
        if ctx.db.get(key, now).and_then(|e| e.expire_at()).is_some() {
            ctx.db.set_expire(key, 0, now);
            ctx.db.dirty += 1;
            ctx.db.repl.emit(&[b"PERSIST", key]);
        }
    } else if expire_at != 0 {
        if expire_at <= now {
            ctx.db.remove(key, now);
            ctx.db.repl.emit(&[b"DEL", key]);
        } else {
            ctx.db.set_expire(key, expire_at, now);
            ctx.db
                .repl
                .emit(&[b"PEXPIREAT", key, expire_at.to_string().as_bytes()]);
        }
        ctx.db.dirty += 1;
    }
    Ok(())
}

fn mget(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    ctx.out.array(args.len() - 1);
    for key in &args[1..] {
        match ctx.db.lookup_read(key, ctx.now_ms).map(|e| &e.value) {
            Some(Value::Str(s)) => ctx.out.bulk(s.as_bytes()),
            _ => ctx.out.null(),
        }
    }
    Ok(())
}

fn mset_pairs(args: &[Bytes], name: &str) -> Result<(), CmdError> {
    if args.len().is_multiple_of(2) {
        return Err(wrong_arity(name));
    }
    Ok(())
}

fn mset(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    mset_pairs(args, "mset")?;
    for pair in args[1..].chunks_exact(2) {
        ctx.db
            .set(&pair[0], Value::Str(StrValue::new(&pair[1])), 0, ctx.now_ms);
    }
    ctx.db.dirty += (args.len() as u64 - 1) / 2;
    ctx.out.ok();
    Ok(())
}

fn msetnx(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    mset_pairs(args, "msetnx")?;
    let now = ctx.now_ms;
    if args[1..]
        .chunks_exact(2)
        .any(|p| ctx.db.contains(&p[0], now))
    {
        ctx.out.int(0);
        return Ok(());
    }
    for pair in args[1..].chunks_exact(2) {
        ctx.db
            .set(&pair[0], Value::Str(StrValue::new(&pair[1])), 0, now);
    }
    ctx.db.dirty += (args.len() as u64 - 1) / 2;
    ctx.out.int(1);
    Ok(())
}

fn max_len(ctx: &Ctx<'_, '_>) -> u64 {
    ctx.server.config.read().get_u64("proto-max-bulk-len")
}

fn append(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let limit = max_len(ctx);
    let (key, now) = (&args[1], ctx.now_ms);
    let len = match write_str(ctx.db, key, now)? {
        Some(s) => {
            if s.bytes.len() as u64 + args[2].len() as u64 > limit {
                return Err(TOO_BIG.into());
            }
            s.bytes.extend_from_slice(&args[2]);
            s.encoding = StrEncoding::Raw;
            s.bytes.len()
        }
        None => {
            ctx.db.set(key, Value::Str(StrValue::new(&args[2])), 0, now);
            args[2].len()
        }
    };
    ctx.db.dirty += 1;
    ctx.out.int(len as i64);
    Ok(())
}

fn strlen(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let n = read_str(ctx.db, &args[1], ctx.now_ms)?.map_or(0, |s| s.bytes.len());
    ctx.out.int(n as i64);
    Ok(())
}

fn incr_by(ctx: &mut Ctx<'_, '_>, key: &[u8], by: i64) -> CmdResult {
    let now = ctx.now_ms;
    let new = match write_str(ctx.db, key, now)? {
        Some(s) => {
            let cur = crate::value::parse_i64_strict(s.as_bytes())
                .ok_or(CmdError::from(errors::NOT_INTEGER))?;
            let new = cur
                .checked_add(by)
                .ok_or(CmdError::from(errors::OVERFLOW))?;
            *s = StrValue::from_int(new);
            new
        }
        None => {
            ctx.db.set(key, Value::Str(StrValue::from_int(by)), 0, now);
            by
        }
    };
    ctx.db.dirty += 1;
    ctx.out.int(new);
    Ok(())
}

fn incr(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    incr_by(ctx, &args[1], 1)
}

fn decr(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    incr_by(ctx, &args[1], -1)
}

fn incrby(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let by = parse_i64(&args[2])?;
    incr_by(ctx, &args[1], by)
}

fn decrby(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let by = parse_i64(&args[2])?;
    if by == i64::MIN {
        return Err("ERR decrement would overflow".into());
    }
    incr_by(ctx, &args[1], -by)
}

fn incrbyfloat(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let (key, now) = (&args[1], ctx.now_ms);
    // Valkey's order of checks: the key's type, its value, then the increment.
    let cur = match read_str(ctx.db, key, now)? {
        Some(s) => parse_float_text(s.as_bytes()).ok_or(CmdError::from(errors::NOT_FLOAT))?,
        None => zero(),
    };
    let by = parse_float_text(&args[2]).ok_or(CmdError::from(errors::NOT_FLOAT))?;
    if by.0.is_infinite() {
        return Err(errors::NAN_OR_INF.into());
    }
    let text = incrbyfloat_text(cur, by)?;
    let v = StrValue::with_encoding(text.as_bytes(), embstr_or_raw(text.len()));
    ctx.db.set_keep_ttl(key, Value::Str(v), now);
    ctx.db.dirty += 1;
    // The float arithmetic is done once, here: replicas store the result.
    ctx.db
        .repl
        .emit(&[b"SET", key, text.as_bytes(), b"KEEPTTL"]);
    ctx.out.bulk(text.as_bytes());
    Ok(())
}

fn embstr_or_raw(len: usize) -> StrEncoding {
    if len <= 44 {
        StrEncoding::Embstr
    } else {
        StrEncoding::Raw
    }
}

fn getrange(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let mut start = parse_i64(&args[2])?;
    let mut end = parse_i64(&args[3])?;
    let Some(s) = read_str(ctx.db, &args[1], ctx.now_ms)? else {
        ctx.out.bulk(b"");
        return Ok(());
    };
    let bytes = s.as_bytes();
    let len = bytes.len() as i64;
    if start < 0 && end < 0 && start > end {
        ctx.out.bulk(b"");
        return Ok(());
    }
    if start < 0 {
        start += len;
    }
    if end < 0 {
        end += len;
    }
    start = start.max(0);
    end = end.max(0);
    if end >= len {
        end = len - 1;
    }
    if start > end || len == 0 {
        ctx.out.bulk(b"");
    } else {
        ctx.out.bulk(&bytes[start as usize..=end as usize]);
    }
    Ok(())
}

fn setrange(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let offset = parse_i64(&args[2])?;
    if offset < 0 {
        return Err("ERR offset is out of range".into());
    }
    let value = &args[3];
    let limit = max_len(ctx);
    let (key, now) = (&args[1], ctx.now_ms);
    let check = |len: u64| -> CmdResult {
        if offset as u64 + len > limit {
            Err(TOO_BIG.into())
        } else {
            Ok(())
        }
    };
    let len = match write_str(ctx.db, key, now)? {
        Some(s) => {
            if value.is_empty() {
                s.bytes.len()
            } else {
                check(value.len() as u64)?;
                let end = offset as usize + value.len();
                if s.bytes.len() < end {
                    s.bytes.extend_from_slice(&vec![0u8; end - s.bytes.len()]);
                }
                s.bytes.as_mut_slice()[offset as usize..end].copy_from_slice(value);
                s.encoding = StrEncoding::Raw;
                let len = s.bytes.len();
                ctx.db.dirty += 1;
                len
            }
        }
        None => {
            if value.is_empty() {
                0
            } else {
                check(value.len() as u64)?;
                let mut bytes = vec![0u8; offset as usize + value.len()];
                bytes[offset as usize..].copy_from_slice(value);
                let len = bytes.len();
                ctx.db.set(
                    key,
                    Value::Str(StrValue::with_encoding(&bytes, StrEncoding::Raw)),
                    0,
                    now,
                );
                ctx.db.dirty += 1;
                len
            }
        }
    };
    ctx.out.int(len as i64);
    Ok(())
}
