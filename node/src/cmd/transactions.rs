//! Transactions: MULTI, EXEC, DISCARD, WATCH, UNWATCH.
//!
//! While a client is in MULTI, `cmd::execute` queues its commands instead of running them
//! (after checking name, arity and authentication, as Valkey does: an error there aborts the
//! transaction at EXEC). EXEC runs the queue inside one command, so under the one keyspace
//! lock: no other client's command can interleave. WATCH is kept by the keyspace, which marks
//! watchers dirty on every change, expiry and flush of a watched key.

use std::collections::HashMap;

use bytes::Bytes;
use lagwise_shared::codec::Request;

use super::{CmdResult, Ctx, Handler};

pub fn register(m: &mut HashMap<&'static str, Handler>) {
    m.insert("multi", multi);
    m.insert("exec", exec);
    m.insert("discard", discard);
    m.insert("watch", watch);
    m.insert("unwatch", unwatch);
}

/// A transaction being queued.
#[derive(Debug, Default)]
pub struct MultiState {
    pub queued: Vec<Request>,
    /// A queuing error happened: EXEC must refuse with EXECABORT.
    pub aborted: bool,
}

/// Commands that run at once even inside MULTI.
pub fn runs_inside_multi(name: &str) -> bool {
    matches!(
        name,
        "exec" | "discard" | "multi" | "watch" | "quit" | "reset"
    )
}

fn multi(ctx: &mut Ctx<'_, '_>, _args: &[Bytes]) -> CmdResult {
    if ctx.client.multi.is_some() {
        return Err("ERR MULTI calls can not be nested".into());
    }
    ctx.client.multi = Some(MultiState::default());
    ctx.out.ok();
    Ok(())
}

/// Forgets every key this client watches.
pub fn unwatch_all(ctx: &mut Ctx<'_, '_>) {
    let keys = std::mem::take(&mut ctx.client.watching);
    ctx.db.unwatch(ctx.client.id, &keys);
}

fn exec(ctx: &mut Ctx<'_, '_>, _args: &[Bytes]) -> CmdResult {
    let Some(state) = ctx.client.multi.take() else {
        return Err("ERR EXEC without MULTI".into());
    };
    // A watched key that has expired by now counts as changed, even if nothing removed it yet.
    for key in &ctx.client.watching {
        ctx.db.get(key, ctx.now_ms);
    }
    let watch_failed = ctx.db.watch_failed(ctx.client.id);
    unwatch_all(ctx);
    if state.aborted {
        return Err("EXECABORT Transaction discarded because of previous errors.".into());
    }
    if watch_failed {
        ctx.out.null_array();
        return Ok(());
    }
    ctx.out.array(state.queued.len());
    ctx.client.in_exec = true;
    // Replicas apply the transaction's changes as one transaction too.
    let mark = ctx.db.repl.mark();
    for req in &state.queued {
        super::execute(ctx, req);
    }
    ctx.db.repl.wrap_multi(mark);
    ctx.client.in_exec = false;
    Ok(())
}

fn discard(ctx: &mut Ctx<'_, '_>, _args: &[Bytes]) -> CmdResult {
    if ctx.client.multi.take().is_none() {
        return Err("ERR DISCARD without MULTI".into());
    }
    unwatch_all(ctx);
    ctx.out.ok();
    Ok(())
}

fn watch(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    if ctx.client.multi.is_some() {
        return Err("ERR WATCH inside MULTI is not allowed".into());
    }
    for key in &args[1..] {
        if !ctx
            .client
            .watching
            .iter()
            .any(|k| k.as_slice() == key.as_ref())
        {
            ctx.db.watch(ctx.client.id, key);
            ctx.client.watching.push(key.to_vec());
        }
    }
    ctx.out.ok();
    Ok(())
}

fn unwatch(ctx: &mut Ctx<'_, '_>, _args: &[Bytes]) -> CmdResult {
    unwatch_all(ctx);
    ctx.out.ok();
    Ok(())
}
