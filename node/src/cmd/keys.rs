//! Generic key commands: existence, expiry, renaming, iteration, DUMP/RESTORE.

use std::collections::HashMap;

use bytes::Bytes;
use lagwise_shared::glob;
use lagwise_shared::resp::errors;

use super::{is, parse_i64, CmdError, CmdResult, Ctx, Handler};
use crate::rdb;
use crate::value::Value;

pub fn register(m: &mut HashMap<&'static str, Handler>) {
    m.insert("del", del);
    m.insert("unlink", del);
    m.insert("exists", exists);
    m.insert("touch", exists);
    m.insert("type", type_);
    m.insert("expire", expire);
    m.insert("pexpire", pexpire);
    m.insert("expireat", expireat);
    m.insert("pexpireat", pexpireat);
    m.insert("ttl", ttl);
    m.insert("pttl", pttl);
    m.insert("expiretime", expiretime);
    m.insert("pexpiretime", pexpiretime);
    m.insert("persist", persist);
    m.insert("rename", rename);
    m.insert("renamenx", renamenx);
    m.insert("copy", copy);
    m.insert("keys", keys);
    m.insert("scan", scan);
    m.insert("randomkey", randomkey);
    m.insert("dbsize", dbsize);
    m.insert("flushall", flush);
    m.insert("flushdb", flush);
    m.insert("object|encoding", object_encoding);
    m.insert("object|help", object_help);
    m.insert("dump", dump);
    m.insert("restore", restore);
}

fn del(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let mut n = 0;
    for key in &args[1..] {
        if ctx.db.remove(key, ctx.now_ms).is_some() {
            n += 1;
        }
    }
    ctx.db.dirty += n;
    ctx.out.int(n as i64);
    Ok(())
}

/// EXISTS and TOUCH: how many of the keys exist, counting repeats.
fn exists(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let n = args[1..]
        .iter()
        .filter(|k| ctx.db.contains(k, ctx.now_ms))
        .count();
    ctx.out.int(n as i64);
    Ok(())
}

fn type_(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let name = ctx
        .db
        .get(&args[1], ctx.now_ms)
        .map_or("none", |e| e.value.type_name());
    ctx.out.simple(name);
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Unit {
    Seconds,
    Millis,
}

/// EXPIRE, PEXPIRE, EXPIREAT, PEXPIREAT with NX/XX/GT/LT, following Valkey's checks in order.
fn expire_generic(
    ctx: &mut Ctx<'_, '_>,
    args: &[Bytes],
    unit: Unit,
    absolute: bool,
    cmd: &str,
) -> CmdResult {
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for opt in &args[3..] {
        if is(opt, "NX") {
            nx = true;
        } else if is(opt, "XX") {
            xx = true;
        } else if is(opt, "GT") {
            gt = true;
        } else if is(opt, "LT") {
            lt = true;
        } else {
            return Err(format!("ERR Unsupported option {}", String::from_utf8_lossy(opt)).into());
        }
    }
    if nx && (xx || gt || lt) {
        return Err("ERR NX and XX, GT or LT options at the same time are not compatible".into());
    }
    if gt && lt {
        return Err("ERR GT and LT options at the same time are not compatible".into());
    }
    let mut when = parse_i64(&args[2])?;
    let invalid = || CmdError::from(format!("ERR invalid expire time in '{cmd}' command"));
    if unit == Unit::Seconds {
        when = when.checked_mul(1000).ok_or_else(invalid)?;
    }
    if !absolute {
        when = when.checked_add(ctx.now_ms as i64).ok_or_else(invalid)?;
    }
    let now = ctx.now_ms;
    let Some(entry) = ctx.db.get(&args[1], now) else {
        ctx.out.int(0);
        return Ok(());
    };
    let current = entry.expire_at().map(|t| t as i64);
    let refused = (nx && current.is_some())
        || (xx && current.is_none())
        || (gt && current.is_none_or(|c| when <= c))
        || (lt && current.is_some_and(|c| when >= c));
    if refused {
        ctx.out.int(0);
        return Ok(());
    }
    // A time already past deletes the key, on a primary; a replica waits for the DEL.
    if when <= now as i64 && ctx.db.expiry == crate::db::ExpiryMode::Delete {
        ctx.db.remove(&args[1], now);
        ctx.db.repl.emit(&[b"DEL", &args[1]]);
    } else {
        ctx.db.set_expire(&args[1], when as u64, now);
        ctx.db
            .repl
            .emit(&[b"PEXPIREAT", &args[1], when.to_string().as_bytes()]);
    }
    ctx.db.dirty += 1;
    ctx.out.int(1);
    Ok(())
}

fn expire(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    expire_generic(ctx, args, Unit::Seconds, false, "expire")
}

fn pexpire(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    expire_generic(ctx, args, Unit::Millis, false, "pexpire")
}

fn expireat(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    expire_generic(ctx, args, Unit::Seconds, true, "expireat")
}

fn pexpireat(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    expire_generic(ctx, args, Unit::Millis, true, "pexpireat")
}

/// TTL, PTTL, EXPIRETIME, PEXPIRETIME: -2 for a missing key, -1 for no expiry; seconds are
/// rounded to the nearest, as Valkey rounds them.
fn ttl_generic(ctx: &mut Ctx<'_, '_>, key: &[u8], unit: Unit, absolute: bool) -> CmdResult {
    let Some(entry) = ctx.db.get(key, ctx.now_ms) else {
        ctx.out.int(-2);
        return Ok(());
    };
    let Some(at) = entry.expire_at() else {
        ctx.out.int(-1);
        return Ok(());
    };
    let ms = if absolute {
        at as i64
    } else {
        (at as i64 - ctx.now_ms as i64).max(0)
    };
    ctx.out.int(match unit {
        Unit::Millis => ms,
        Unit::Seconds => (ms + 500) / 1000,
    });
    Ok(())
}

fn ttl(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    ttl_generic(ctx, &args[1], Unit::Seconds, false)
}

fn pttl(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    ttl_generic(ctx, &args[1], Unit::Millis, false)
}

fn expiretime(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    ttl_generic(ctx, &args[1], Unit::Seconds, true)
}

fn pexpiretime(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    ttl_generic(ctx, &args[1], Unit::Millis, true)
}

fn persist(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let has_ttl = ctx
        .db
        .get(&args[1], ctx.now_ms)
        .and_then(|e| e.expire_at())
        .is_some();
    if has_ttl {
        ctx.db.set_expire(&args[1], 0, ctx.now_ms);
        ctx.db.dirty += 1;
    }
    ctx.out.int(has_ttl as i64);
    Ok(())
}

fn rename_generic(ctx: &mut Ctx<'_, '_>, args: &[Bytes], nx: bool) -> CmdResult {
    let (src, dst, now) = (&args[1], &args[2], ctx.now_ms);
    if !ctx.db.contains(src, now) {
        return Err(errors::NO_SUCH_KEY.into());
    }
    if src == dst {
        if nx {
            ctx.out.int(0);
        } else {
            ctx.out.ok();
        }
        return Ok(());
    }
    if nx && ctx.db.contains(dst, now) {
        ctx.out.int(0);
        return Ok(());
    }
    if let Some(entry) = ctx.db.remove(src, now) {
        let at = entry.expire_at().unwrap_or(0);
        ctx.db.set(dst, entry.value, at, now);
    }
    ctx.db.dirty += 1;
    if nx {
        ctx.out.int(1);
    } else {
        ctx.out.ok();
    }
    Ok(())
}

fn rename(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    rename_generic(ctx, args, false)
}

fn renamenx(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    rename_generic(ctx, args, true)
}

fn copy(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let mut replace = false;
    let mut i = 3;
    while i < args.len() {
        if is(&args[i], "REPLACE") {
            replace = true;
        } else if is(&args[i], "DB") && i + 1 < args.len() {
            // Only database 0 exists on this node.
            if parse_i64(&args[i + 1])? != 0 {
                return Err("ERR DB index is out of range".into());
            }
            i += 1;
        } else {
            return Err(errors::SYNTAX.into());
        }
        i += 1;
    }
    let (src, dst, now) = (&args[1], &args[2], ctx.now_ms);
    if src == dst {
        return Err("ERR source and destination objects are the same".into());
    }
    let Some(entry) = ctx.db.get(src, now) else {
        ctx.out.int(0);
        return Ok(());
    };
    let (value, at) = (entry.value.clone(), entry.expire_at().unwrap_or(0));
    if !replace && ctx.db.contains(dst, now) {
        ctx.out.int(0);
        return Ok(());
    }
    ctx.db.set(dst, value, at, now);
    ctx.db.dirty += 1;
    ctx.out.int(1);
    Ok(())
}

fn keys(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let pattern = &args[1][..];
    let all = pattern == b"*";
    let found = ctx
        .db
        .keys_matching(ctx.now_ms, |k| all || glob::matches(pattern, k, false));
    ctx.out.bulks(found.iter().map(|k| k.as_slice()));
    Ok(())
}

fn scan(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let cursor = std::str::from_utf8(&args[1])
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or(CmdError::from("ERR invalid cursor"))?;
    let (mut pattern, mut count, mut type_filter): (Option<&[u8]>, usize, Option<&[u8]>) =
        (None, 10, None);
    let mut i = 2;
    while i < args.len() {
        let Some(v) = args.get(i + 1) else {
            return Err(errors::SYNTAX.into());
        };
        if is(&args[i], "MATCH") {
            pattern = Some(v);
        } else if is(&args[i], "COUNT") {
            let n = parse_i64(v)?;
            if n < 1 {
                return Err(errors::SYNTAX.into());
            }
            count = n as usize;
        } else if is(&args[i], "TYPE") {
            type_filter = Some(v);
        } else {
            return Err(errors::SYNTAX.into());
        }
        i += 2;
    }
    let pattern = pattern.filter(|p| *p != b"*");
    let (next, found) = ctx.db.scan(cursor, count, ctx.now_ms, |e| {
        pattern.is_none_or(|p| glob::matches(p, e.key(), false))
            && type_filter.is_none_or(|t| t.eq_ignore_ascii_case(e.value.type_name().as_bytes()))
    });
    ctx.out.array(2);
    ctx.out.bulk_int(next as i64);
    ctx.out.bulks(found.iter().map(|k| k.as_slice()));
    Ok(())
}

fn randomkey(ctx: &mut Ctx<'_, '_>, _args: &[Bytes]) -> CmdResult {
    match ctx.db.random_key(ctx.now_ms) {
        Some(k) => ctx.out.bulk(k.as_slice()),
        None => ctx.out.null(),
    }
    Ok(())
}

fn dbsize(ctx: &mut Ctx<'_, '_>, _args: &[Bytes]) -> CmdResult {
    ctx.out.int(ctx.db.len() as i64);
    Ok(())
}

fn flush(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    match args.get(1) {
        None => {}
        Some(a) if args.len() == 2 && (is(a, "ASYNC") || is(a, "SYNC")) => {}
        Some(_) => return Err(errors::SYNTAX.into()),
    }
    ctx.db.dirty += ctx.db.len() as u64;
    ctx.db.clear();
    ctx.out.ok();
    Ok(())
}

fn object_encoding(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    match ctx.db.get(&args[2], ctx.now_ms) {
        Some(e) => {
            let name = e.value.encoding_name();
            ctx.out.bulk(name.as_bytes())
        }
        None => ctx.out.null(),
    }
    Ok(())
}

fn object_help(ctx: &mut Ctx<'_, '_>, _args: &[Bytes]) -> CmdResult {
    let lines = [
        "OBJECT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
        "ENCODING <key>",
        "    Return the kind of internal representation used in order to store the value",
        "    associated with a <key>.",
        "HELP",
        "    Print this help.",
    ];
    ctx.out.simples(&lines);
    Ok(())
}

fn dump(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    match ctx.db.lookup_read(&args[1], ctx.now_ms) {
        Some(e) => {
            let payload = rdb::dump_payload(&e.value.to_rdb());
            ctx.out.bulk(&payload);
        }
        None => ctx.out.null(),
    }
    Ok(())
}

/// RESTORE, and RESTORE-ASKING (registered by `migrate`).
pub(super) fn restore(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let ttl = parse_i64(&args[2])?;
    let (mut replace, mut absttl) = (false, false);
    let mut i = 4;
    while i < args.len() {
        if is(&args[i], "REPLACE") {
            replace = true;
        } else if is(&args[i], "ABSTTL") {
            absttl = true;
        } else if (is(&args[i], "IDLETIME") || is(&args[i], "FREQ")) && i + 1 < args.len() {
            // Eviction hints: validated, not kept (this node does not evict yet).
            let n = parse_i64(&args[i + 1])?;
            if n < 0 {
                return Err(if is(&args[i], "IDLETIME") {
                    "ERR Invalid IDLETIME value, must be >= 0".into()
                } else {
                    "ERR Invalid FREQ value, must be >= 0 and <= 255".into()
                });
            }
            i += 1;
        } else {
            return Err(errors::SYNTAX.into());
        }
        i += 1;
    }
    if ttl < 0 {
        return Err("ERR Invalid TTL value, must be >= 0".into());
    }
    let (key, now) = (&args[1], ctx.now_ms);
    if !replace && ctx.db.contains(key, now) {
        return Err("BUSYKEY Target key name already exists.".into());
    }
    let parsed = rdb::parse_dump_payload(&args[3]).map_err(|e| match e {
        rdb::RdbError::BadChecksum | rdb::RdbError::BadVersion(_) | rdb::RdbError::Truncated => {
            CmdError::from("ERR DUMP payload version or checksum are wrong")
        }
        _ => CmdError::from("ERR Bad data format"),
    })?;
    let value =
        Value::from_rdb(parsed, &ctx.db.limits).ok_or(CmdError::from("ERR Bad data format"))?;
    let at = match (ttl, absttl) {
        (0, _) => 0,
        (t, true) => t as u64,
        (t, false) => now.saturating_add(t as u64),
    };
    ctx.db.remove(key, now);
    if at == 0 || at > now {
        ctx.db.set(key, value, at, now);
    }
    ctx.db.dirty += 1;
    // A relative TTL would expire later on a replica that applies it later.
    if ttl > 0 && !absttl {
        let at = at.to_string();
        let mut rewritten: Vec<&[u8]> = vec![&args[0], key, at.as_bytes(), &args[3]];
        rewritten.extend(args[4..].iter().map(|a| &a[..]));
        rewritten.push(b"ABSTTL");
        ctx.db.repl.emit(&rewritten);
    }
    ctx.out.ok();
    Ok(())
}
