//! Publish/subscribe commands. The registry is `crate::pubsub`; a connection's own
//! subscriptions are in its `ClientState`.

use std::collections::HashMap;

use bytes::Bytes;
use lagwise_shared::resp::Protocol;

use super::{CmdResult, Ctx, Handler};
use crate::pubsub::{Kind, Subscriber};

pub fn register(m: &mut HashMap<&'static str, Handler>) {
    m.insert("subscribe", subscribe);
    m.insert("unsubscribe", unsubscribe);
    m.insert("psubscribe", psubscribe);
    m.insert("punsubscribe", punsubscribe);
    m.insert("ssubscribe", ssubscribe);
    m.insert("sunsubscribe", sunsubscribe);
    m.insert("publish", publish);
    m.insert("spublish", spublish);
    m.insert("pubsub|channels", pubsub_channels);
    m.insert("pubsub|numsub", pubsub_numsub);
    m.insert("pubsub|numpat", pubsub_numpat);
    m.insert("pubsub|shardchannels", pubsub_shardchannels);
    m.insert("pubsub|shardnumsub", pubsub_shardnumsub);
    m.insert("pubsub|help", pubsub_help);
}

/// A connection's subscriptions, in the order they were made.
#[derive(Debug, Default)]
pub struct Subscriptions {
    pub channels: Vec<Bytes>,
    pub patterns: Vec<Bytes>,
    pub shard: Vec<Bytes>,
}

impl Subscriptions {
    fn list(&mut self, kind: Kind) -> &mut Vec<Bytes> {
        match kind {
            Kind::Channel => &mut self.channels,
            Kind::Pattern => &mut self.patterns,
            Kind::Shard => &mut self.shard,
        }
    }

    /// The count Valkey reports after a (un)subscribe: channels and patterns together, shard
    /// channels on their own.
    fn count(&self, kind: Kind) -> usize {
        match kind {
            Kind::Shard => self.shard.len(),
            _ => self.channels.len() + self.patterns.len(),
        }
    }

    pub fn is_subscribed(&self) -> bool {
        !(self.channels.is_empty() && self.patterns.is_empty() && self.shard.is_empty())
    }
}

/// Commands a RESP2 client may send while subscribed.
pub fn allowed_while_subscribed(name: &str) -> bool {
    matches!(
        name,
        "subscribe"
            | "unsubscribe"
            | "psubscribe"
            | "punsubscribe"
            | "ssubscribe"
            | "sunsubscribe"
            | "ping"
            | "quit"
            | "reset"
    )
}

fn confirm(ctx: &mut Ctx<'_, '_>, verb: &[u8], name: Option<&[u8]>, count: usize) {
    ctx.out.push(3);
    ctx.out.bulk(verb);
    match name {
        Some(n) => ctx.out.bulk(n),
        None => ctx.out.null(),
    }
    ctx.out.int(count as i64);
}

fn subscribe_generic(ctx: &mut Ctx<'_, '_>, args: &[Bytes], kind: Kind, verb: &[u8]) -> CmdResult {
    let sub = Subscriber {
        id: ctx.client.id,
        protocol: ctx.client.protocol,
        tx: ctx.client.push_tx.clone(),
        handle: ctx.client.handle.clone(),
    };
    for name in &args[1..] {
        let list = ctx.client.subscriptions.list(kind);
        if !list.contains(name) {
            list.push(name.clone());
            ctx.server
                .pubsub
                .lock()
                .subscribe(kind, name.clone(), sub.clone());
        }
        let count = ctx.client.subscriptions.count(kind);
        confirm(ctx, verb, Some(name), count);
    }
    Ok(())
}

/// Unsubscribes from the named channels, or from all of this kind when none are named.
pub fn unsubscribe_generic(
    ctx: &mut Ctx<'_, '_>,
    args: &[Bytes],
    kind: Kind,
    verb: &[u8],
    reply: bool,
) {
    let names: Vec<Bytes> = if args.len() > 1 {
        args[1..].to_vec()
    } else {
        ctx.client.subscriptions.list(kind).clone()
    };
    if names.is_empty() {
        if reply {
            let count = ctx.client.subscriptions.count(kind);
            confirm(ctx, verb, None, count);
        }
        return;
    }
    for name in names {
        ctx.client.subscriptions.list(kind).retain(|n| *n != name);
        ctx.server
            .pubsub
            .lock()
            .unsubscribe(kind, &name, ctx.client.id);
        if reply {
            let count = ctx.client.subscriptions.count(kind);
            confirm(ctx, verb, Some(&name), count);
        }
    }
}

fn subscribe(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    subscribe_generic(ctx, args, Kind::Channel, b"subscribe")
}

fn psubscribe(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    subscribe_generic(ctx, args, Kind::Pattern, b"psubscribe")
}

fn ssubscribe(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    subscribe_generic(ctx, args, Kind::Shard, b"ssubscribe")
}

fn unsubscribe(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    unsubscribe_generic(ctx, args, Kind::Channel, b"unsubscribe", true);
    Ok(())
}

fn punsubscribe(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    unsubscribe_generic(ctx, args, Kind::Pattern, b"punsubscribe", true);
    Ok(())
}

fn sunsubscribe(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    unsubscribe_generic(ctx, args, Kind::Shard, b"sunsubscribe", true);
    Ok(())
}

/// Drops every subscription of this client (RESET, disconnect).
pub fn unsubscribe_all(ctx: &mut Ctx<'_, '_>) {
    for kind in [Kind::Channel, Kind::Pattern, Kind::Shard] {
        unsubscribe_generic(ctx, &[Bytes::new()], kind, b"", false);
    }
}

fn publish(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let n = ctx.server.pubsub.lock().publish(&args[1], &args[2]);
    // Subscribers elsewhere hear it too, as in Valkey: every node of a cluster by the bus,
    // or a standalone primary's replicas by the replication stream.
    if let Some(c) = ctx.server.cluster.as_ref() {
        crate::cluster::bus::publish(false, &args[1], &args[2], None);
        c.wake.notify_one();
    } else {
        ctx.db.repl.emit(&[b"PUBLISH", &args[1], &args[2]]);
    }
    ctx.out.int(n as i64);
    Ok(())
}

fn spublish(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let n = ctx.server.pubsub.lock().spublish(&args[1], &args[2]);
    // The channel's shard (its primary and replicas) hears it.
    match ctx.server.cluster.as_ref() {
        Some(c) => {
            let shard = crate::cluster::bus::shard_members(&c.state.lock());
            crate::cluster::bus::publish(true, &args[1], &args[2], Some(shard));
            c.wake.notify_one();
        }
        None => ctx.db.repl.emit(&[b"SPUBLISH", &args[1], &args[2]]),
    }
    ctx.out.int(n as i64);
    Ok(())
}

fn channels_generic(ctx: &mut Ctx<'_, '_>, args: &[Bytes], kind: Kind) -> CmdResult {
    let pattern = args.get(2).map(|p| &p[..]);
    let names = ctx.server.pubsub.lock().active(kind, pattern);
    ctx.out.bulks(names.iter());
    Ok(())
}

fn pubsub_channels(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    channels_generic(ctx, args, Kind::Channel)
}

fn pubsub_shardchannels(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    channels_generic(ctx, args, Kind::Shard)
}

fn numsub_generic(ctx: &mut Ctx<'_, '_>, args: &[Bytes], kind: Kind) -> CmdResult {
    let registry = ctx.server.pubsub.lock();
    let counts: Vec<usize> = args[2..].iter().map(|c| registry.count(kind, c)).collect();
    drop(registry);
    // A flat array of name, count pairs in both protocols, as Valkey replies.
    ctx.out.array(counts.len() * 2);
    for (name, n) in args[2..].iter().zip(counts) {
        ctx.out.bulk(name);
        ctx.out.int(n as i64);
    }
    Ok(())
}

fn pubsub_numsub(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    numsub_generic(ctx, args, Kind::Channel)
}

fn pubsub_shardnumsub(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    numsub_generic(ctx, args, Kind::Shard)
}

fn pubsub_numpat(ctx: &mut Ctx<'_, '_>, _args: &[Bytes]) -> CmdResult {
    let n = ctx.server.pubsub.lock().pattern_count();
    ctx.out.int(n as i64);
    Ok(())
}

fn pubsub_help(ctx: &mut Ctx<'_, '_>, _args: &[Bytes]) -> CmdResult {
    let lines = [
        "PUBSUB <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
        "CHANNELS [<pattern>]",
        "    Return the currently active channels matching a <pattern> (default: '*').",
        "NUMPAT",
        "    Return number of subscriptions to patterns.",
        "NUMSUB [<channel> ...]",
        "    Return the number of subscribers for the specified channels, excluding",
        "    pattern subscriptions(default: no channels).",
        "SHARDCHANNELS [<pattern>]",
        "    Return the currently active shard level channels matching a <pattern> (default: '*').",
        "SHARDNUMSUB [<shardchannel> ...]",
        "    Return the number of subscribers for the specified shard level channel(s)",
        "HELP",
        "    Print this help.",
    ];
    ctx.out.simples(&lines);
    Ok(())
}

/// PING while subscribed in RESP2 answers with a push-shaped array, as Valkey does.
pub fn subscribed_ping(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> bool {
    if ctx.client.protocol != Protocol::Resp2 || !ctx.client.subscriptions.is_subscribed() {
        return false;
    }
    ctx.out.array(2);
    ctx.out.bulk(b"pong");
    ctx.out.bulk(args.get(1).map_or(&b""[..], |a| &a[..]));
    true
}
