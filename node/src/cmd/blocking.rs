//! Blocking commands: BLPOP, BRPOP, BLMOVE, BRPOPLPUSH, BLMPOP, BZPOPMIN, BZPOPMAX, BZMPOP. Each is a
//! "serve" function over the keyspace that the registry in `crate::blocking` can call again
//! when a key it waits on changes; the handlers try it once and otherwise wait.

use std::collections::HashMap;

use bytes::Bytes;
use lagwise_shared::resp::ReplyWriter;

use super::lists::{self, End};
use super::zsets::{self, PopReply};
use super::{CmdError, CmdResult, Ctx, Handler};
use crate::blocking::{parse_timeout, serve_or_wait};
use crate::db::Db;

pub fn register(m: &mut HashMap<&'static str, Handler>) {
    m.insert("blpop", blpop);
    m.insert("brpop", brpop);
    m.insert("blmove", blmove);
    m.insert("brpoplpush", brpoplpush);
    m.insert("blmpop", blmpop);
    m.insert("bzpopmin", bzpopmin);
    m.insert("bzpopmax", bzpopmax);
    m.insert("bzmpop", bzmpop);
}

/// BZPOPMIN/BZPOPMAX: keys are all arguments but the first and the last (the timeout).
fn bzpop_keys(args: &[Bytes]) -> &[Bytes] {
    &args[1..args.len() - 1]
}

fn serve_bzpopmin(
    db: &mut Db,
    args: &[Bytes],
    out: &mut ReplyWriter<'_>,
    now: u64,
) -> Result<bool, CmdError> {
    Ok(zsets::pop_into(db, out, now, bzpop_keys(args), false, 1, PopReply::WithKey)?.is_some())
}

fn serve_bzpopmax(
    db: &mut Db,
    args: &[Bytes],
    out: &mut ReplyWriter<'_>,
    now: u64,
) -> Result<bool, CmdError> {
    Ok(zsets::pop_into(db, out, now, bzpop_keys(args), true, 1, PopReply::WithKey)?.is_some())
}

fn bzpopmin(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let timeout = parse_timeout(&args[args.len() - 1])?;
    serve_or_wait(ctx, args, bzpop_keys(args), timeout, serve_bzpopmin, true)
}

fn bzpopmax(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let timeout = parse_timeout(&args[args.len() - 1])?;
    serve_or_wait(ctx, args, bzpop_keys(args), timeout, serve_bzpopmax, true)
}

/// BZMPOP timeout numkeys key [key ...] MIN|MAX [COUNT count]
fn serve_bzmpop(
    db: &mut Db,
    args: &[Bytes],
    out: &mut ReplyWriter<'_>,
    now: u64,
) -> Result<bool, CmdError> {
    let (keys, max, count) = zsets::parse_zmpop_args(args, 2)?;
    Ok(zsets::pop_into(
        db,
        out,
        now,
        &args[keys],
        max,
        count,
        PopReply::KeyAndNested,
    )?
    .is_some())
}

fn bzmpop(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let timeout = parse_timeout(&args[1])?;
    let (keys, _, _) = zsets::parse_zmpop_args(args, 2)?;
    serve_or_wait(ctx, args, &args[keys], timeout, serve_bzmpop, true)
}

// ---- lists ----

/// BLPOP/BRPOP: the first non-empty list among the keys gives one element: [key, element].
fn serve_bpop(
    db: &mut Db,
    args: &[Bytes],
    out: &mut ReplyWriter<'_>,
    now: u64,
    end: End,
) -> Result<bool, CmdError> {
    for key in bzpop_keys(args) {
        if let Some(popped) = lists::pop_from(db, key, end, 1, now)? {
            out.array(2);
            out.bulk(key);
            out.bulk(popped.first().map_or(&b""[..], |e| e.as_slice()));
            return Ok(true);
        }
    }
    Ok(false)
}

fn serve_blpop(
    db: &mut Db,
    args: &[Bytes],
    out: &mut ReplyWriter<'_>,
    now: u64,
) -> Result<bool, CmdError> {
    serve_bpop(db, args, out, now, End::Left)
}

fn serve_brpop(
    db: &mut Db,
    args: &[Bytes],
    out: &mut ReplyWriter<'_>,
    now: u64,
) -> Result<bool, CmdError> {
    serve_bpop(db, args, out, now, End::Right)
}

fn blpop(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let timeout = parse_timeout(&args[args.len() - 1])?;
    serve_or_wait(ctx, args, bzpop_keys(args), timeout, serve_blpop, true)
}

fn brpop(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let timeout = parse_timeout(&args[args.len() - 1])?;
    serve_or_wait(ctx, args, bzpop_keys(args), timeout, serve_brpop, true)
}

/// BLMOVE source destination LEFT|RIGHT LEFT|RIGHT timeout; BRPOPLPUSH is RIGHT LEFT.
fn move_ends(args: &[Bytes]) -> Result<(End, End), CmdError> {
    if args.len() == 6 {
        Ok((lists::parse_end(&args[3])?, lists::parse_end(&args[4])?))
    } else {
        Ok((End::Right, End::Left))
    }
}

fn serve_blmove(
    db: &mut Db,
    args: &[Bytes],
    out: &mut ReplyWriter<'_>,
    now: u64,
) -> Result<bool, CmdError> {
    let (from, to) = move_ends(args)?;
    match lists::move_element(db, &args[1], &args[2], from, to, now)? {
        Some(element) => {
            out.bulk(element.as_slice());
            Ok(true)
        }
        None => Ok(false),
    }
}

fn blmove(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    move_ends(args)?;
    let timeout = parse_timeout(&args[5])?;
    serve_or_wait(ctx, args, &args[1..2], timeout, serve_blmove, true)
}

fn brpoplpush(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let timeout = parse_timeout(&args[3])?;
    serve_or_wait(ctx, args, &args[1..2], timeout, serve_blmove, true)
}

/// BLMPOP timeout numkeys key [key ...] LEFT|RIGHT [COUNT count]: [key, [elements]].
fn serve_blmpop(
    db: &mut Db,
    args: &[Bytes],
    out: &mut ReplyWriter<'_>,
    now: u64,
) -> Result<bool, CmdError> {
    let (keys, end, count) = lists::parse_mpop(args, 2)?;
    for key in keys {
        if let Some(popped) = lists::pop_from(db, key, end, count, now)? {
            out.array(2);
            out.bulk(key);
            out.array(popped.len());
            for e in &popped {
                out.bulk(e.as_slice());
            }
            return Ok(true);
        }
    }
    Ok(false)
}

fn blmpop(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let timeout = parse_timeout(&args[1])?;
    let (keys, _, _) = lists::parse_mpop(args, 2)?;
    let keys = keys.to_vec();
    serve_or_wait(ctx, args, &keys, timeout, serve_blmpop, true)
}
