//! CLUSTER and its companions (READONLY, READWRITE, ASKING), and the check every keyed
//! command passes in cluster mode: are its keys served here, or where must the client go.

use std::collections::HashMap;

use bytes::Bytes;
use lagwise_shared::command_table::{self, CommandSpec, Flags};
use lagwise_shared::slot::{slot, SLOT_COUNT};

use super::{is, parse_i64, CmdError, CmdResult, Ctx, Handler};
use crate::cluster::render;
use crate::cluster::routing::{Redirect, Request};
use crate::cluster::state::ClusterState;
use crate::cluster::Cluster;

pub fn register(m: &mut HashMap<&'static str, Handler>) {
    m.insert("readonly", readonly);
    m.insert("readwrite", readwrite);
    m.insert("asking", asking);
    for (name, h) in [
        ("cluster|info", info as Handler),
        ("cluster|myid", myid),
        ("cluster|myshardid", myshardid),
        ("cluster|nodes", nodes),
        ("cluster|slots", slots),
        ("cluster|shards", shards),
        ("cluster|keyslot", keyslot),
        ("cluster|countkeysinslot", countkeysinslot),
        ("cluster|getkeysinslot", getkeysinslot),
        ("cluster|addslots", addslots),
        ("cluster|addslotsrange", addslotsrange),
        ("cluster|delslots", delslots),
        ("cluster|delslotsrange", delslotsrange),
        ("cluster|flushslots", flushslots),
        ("cluster|meet", meet),
        ("cluster|forget", forget),
        ("cluster|replicate", replicate),
        ("cluster|replicas", replicas),
        ("cluster|slaves", replicas),
        ("cluster|reset", reset),
        ("cluster|saveconfig", saveconfig),
        ("cluster|set-config-epoch", set_config_epoch),
        ("cluster|bumpepoch", bumpepoch),
        ("cluster|setslot", setslot),
        ("cluster|count-failure-reports", count_failure_reports),
        ("cluster|links", links),
        ("cluster|failover", failover),
        ("cluster|help", help),
    ] {
        m.insert(name, h);
    }
}

/// Valkey's check before a command runs in cluster mode (`getNodeByQuery`). EXEC is checked
/// over its queued commands.
pub fn check(ctx: &mut Ctx<'_, '_>, spec: &CommandSpec, args: &[Bytes]) -> CmdResult {
    if ctx.db.cluster.is_none() || ctx.client.is_primary_link {
        return Ok(());
    }
    let mut first_slot: Option<u16> = None;
    let mut keys = 0usize;
    let mut existing = 0usize;
    let mut is_write = spec.flags.contains(Flags::WRITE);
    let sharded_pubsub = matches!(spec.name, "ssubscribe" | "sunsubscribe" | "spublish");
    let mut positions = std::mem::take(&mut ctx.client.key_scratch);
    let mut visit = |cmd_spec: &CommandSpec,
                     cmd_args: &[Bytes],
                     db: &mut crate::db::Db|
     -> Result<(), CmdError> {
        cmd_spec.key_positions(cmd_args, &mut positions);
        // Shard channels are "not keys" in the table, but their slot is what matters.
        if sharded_pubsub {
            positions.clear();
            let last = if cmd_spec.name == "spublish" {
                2
            } else {
                cmd_args.len()
            };
            positions.extend(1..last.min(cmd_args.len()));
        }
        for &i in positions.iter() {
            let key = &cmd_args[i];
            let s = slot(key);
            match first_slot {
                None => first_slot = Some(s),
                Some(f) if f != s => return Err(CmdError::from(Redirect::CrossSlot.message())),
                _ => {}
            }
            keys += 1;
            if !sharded_pubsub && db.contains(key, crate::server::now_ms()) {
                existing += 1;
            }
        }
        Ok(())
    };
    let result = if spec.name == "exec" {
        let mut r = Ok(());
        if let Some(m) = ctx.client.multi.as_ref() {
            for req in &m.queued {
                let Some(qs) = command_table::lookup(req.name()) else {
                    continue;
                };
                let qs = if qs.subcommands.is_empty() {
                    qs
                } else {
                    match req.args.get(1).and_then(|s| qs.subcommand(s)) {
                        Some(sub) => sub,
                        None => continue,
                    }
                };
                is_write |= qs.flags.contains(Flags::WRITE);
                if let Err(e) = visit(qs, &req.args, ctx.db) {
                    r = Err(e);
                    break;
                }
            }
        }
        r
    } else {
        visit(spec, args, ctx.db)
    };
    ctx.client.key_scratch = positions;
    result?;
    let Some(slot) = first_slot else {
        return Ok(());
    };
    let req = Request {
        slot,
        keys,
        existing,
        is_write,
        asking: ctx.client.asking || spec.flags.contains(Flags::ASKING),
        readonly: ctx.client.readonly || sharded_pubsub,
    };
    match ctx.db.cluster.as_deref() {
        Some(routing) => routing.check(&req).map_err(|r| CmdError::from(r.message())),
        None => Ok(()),
    }
}

fn cluster<'a>(ctx: &Ctx<'a, '_>) -> Result<&'a Cluster, CmdError> {
    ctx.server.cluster.as_ref().ok_or(CmdError::from(
        "ERR This instance has cluster support disabled",
    ))
}

/// After a change to the state: record it in nodes.conf (soon) and re-route at once.
fn changed(ctx: &mut Ctx<'_, '_>) {
    if let Some(c) = ctx.server.cluster.as_ref() {
        c.mark_dirty();
        c.wake.notify_one();
    }
    crate::cluster::publish_routing(ctx.server, ctx.db);
}

fn readonly(ctx: &mut Ctx<'_, '_>, _args: &[Bytes]) -> CmdResult {
    cluster(ctx)?;
    ctx.client.readonly = true;
    ctx.out.ok();
    Ok(())
}

fn readwrite(ctx: &mut Ctx<'_, '_>, _args: &[Bytes]) -> CmdResult {
    cluster(ctx)?;
    ctx.client.readonly = false;
    ctx.out.ok();
    Ok(())
}

fn asking(ctx: &mut Ctx<'_, '_>, _args: &[Bytes]) -> CmdResult {
    cluster(ctx)?;
    ctx.client.asking = true;
    ctx.out.ok();
    Ok(())
}

fn info(ctx: &mut Ctx<'_, '_>, _args: &[Bytes]) -> CmdResult {
    let c = cluster(ctx)?;
    let text = render::info(&c.state.lock(), &c.stats.render());
    ctx.out.verbatim(text.as_bytes());
    Ok(())
}

fn myid(ctx: &mut Ctx<'_, '_>, _args: &[Bytes]) -> CmdResult {
    let c = cluster(ctx)?;
    let id = c.state.lock().myself.clone();
    ctx.out.bulk(id.as_bytes());
    Ok(())
}

fn myshardid(ctx: &mut Ctx<'_, '_>, _args: &[Bytes]) -> CmdResult {
    let c = cluster(ctx)?;
    let id = c.state.lock().me().shard_id.clone();
    ctx.out.bulk(id.as_bytes());
    Ok(())
}

fn nodes(ctx: &mut Ctx<'_, '_>, _args: &[Bytes]) -> CmdResult {
    let c = cluster(ctx)?;
    let text = render::nodes(&c.state.lock(), crate::server::now_ms());
    ctx.out.verbatim(text.as_bytes());
    Ok(())
}

fn slots(ctx: &mut Ctx<'_, '_>, _args: &[Bytes]) -> CmdResult {
    let c = cluster(ctx)?;
    let entries = render::slots(&c.state.lock());
    ctx.out.array(entries.len());
    for e in entries {
        ctx.out.array(2 + e.nodes.len());
        ctx.out.int(e.start as i64);
        ctx.out.int(e.end as i64);
        for ((ip, port, id), hostname) in e.nodes.iter().zip(e.hostnames.iter()) {
            ctx.out.array(4);
            ctx.out.bulk(ip.as_bytes());
            ctx.out.int(*port as i64);
            ctx.out.bulk(id.as_bytes());
            if hostname.is_empty() {
                ctx.out.map(0);
            } else {
                ctx.out.map(1);
                ctx.out.bulk(b"hostname");
                ctx.out.bulk(hostname.as_bytes());
            }
        }
    }
    Ok(())
}

fn shards(ctx: &mut Ctx<'_, '_>, _args: &[Bytes]) -> CmdResult {
    let c = cluster(ctx)?;
    let entries = render::shards(&c.state.lock());
    ctx.out.array(entries.len());
    for e in entries {
        ctx.out.map(2);
        ctx.out.bulk(b"slots");
        ctx.out.array(e.slots.len() * 2);
        for (a, b) in &e.slots {
            ctx.out.int(*a as i64);
            ctx.out.int(*b as i64);
        }
        ctx.out.bulk(b"nodes");
        ctx.out.array(e.nodes.len());
        for n in &e.nodes {
            ctx.out.map(if n.hostname.is_empty() { 7 } else { 8 });
            ctx.out.bulk(b"id");
            ctx.out.bulk(n.id.as_bytes());
            ctx.out.bulk(b"port");
            ctx.out.int(n.port as i64);
            ctx.out.bulk(b"ip");
            ctx.out.bulk(n.ip.as_bytes());
            ctx.out.bulk(b"endpoint");
            ctx.out.bulk(n.endpoint.as_bytes());
            if !n.hostname.is_empty() {
                ctx.out.bulk(b"hostname");
                ctx.out.bulk(n.hostname.as_bytes());
            }
            ctx.out.bulk(b"role");
            ctx.out.bulk(n.role.as_bytes());
            ctx.out.bulk(b"replication-offset");
            ctx.out.int(n.replication_offset as i64);
            ctx.out.bulk(b"health");
            ctx.out.bulk(n.health.as_bytes());
        }
    }
    Ok(())
}

fn keyslot(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    ctx.out.int(slot(&args[2]) as i64);
    Ok(())
}

fn parse_slot(arg: &[u8]) -> Result<u16, CmdError> {
    parse_i64(arg)
        .ok()
        .filter(|s| (0..SLOT_COUNT as i64).contains(s))
        .map(|s| s as u16)
        .ok_or(CmdError::from("ERR Invalid or out of range slot"))
}

fn countkeysinslot(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let s = parse_i64(&args[2])
        .ok()
        .filter(|s| (0..SLOT_COUNT as i64).contains(s))
        .ok_or(CmdError::from("ERR Invalid slot"))?;
    ctx.out.int(ctx.db.keys_in_slot(s as u16) as i64);
    Ok(())
}

fn getkeysinslot(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let bad = || CmdError::from("ERR Invalid slot or number of keys");
    let s = parse_i64(&args[2]).map_err(|_| bad())?;
    let n = parse_i64(&args[3]).map_err(|_| bad())?;
    if !(0..SLOT_COUNT as i64).contains(&s) || n < 0 {
        return Err(bad());
    }
    let keys = ctx.db.keys_in_slot_list(s as u16, n as usize);
    ctx.out.array(keys.len());
    for k in &keys {
        ctx.out.bulk(k.as_slice());
    }
    Ok(())
}

/// Parses slot arguments: single slots, or (start, end) pairs for the RANGE forms.
fn slot_args(args: &[Bytes], ranges: bool) -> Result<Vec<u16>, CmdError> {
    let mut out = Vec::new();
    if ranges {
        if !args.len().is_multiple_of(2) {
            return Err(super::wrong_arity("cluster|addslotsrange"));
        }
        for pair in args.chunks_exact(2) {
            let (a, b) = (parse_slot(&pair[0])?, parse_slot(&pair[1])?);
            if a > b {
                return Err(format!(
                    "ERR start slot number {a} is greater than end slot number {b}"
                )
                .into());
            }
            out.extend(a..=b);
        }
    } else {
        for a in args {
            out.push(parse_slot(a)?);
        }
    }
    Ok(out)
}

fn add_slots(ctx: &mut Ctx<'_, '_>, slots: Vec<u16>) -> CmdResult {
    let c = cluster(ctx)?;
    {
        let mut st = c.state.lock();
        let mut seen = std::collections::HashSet::new();
        for &s in &slots {
            if st.slot_owner[s as usize].is_some() {
                return Err(format!("ERR Slot {s} is already busy").into());
            }
            if !seen.insert(s) {
                return Err(format!("ERR Slot {s} specified multiple times").into());
            }
        }
        let me = st.myself.clone();
        for s in slots {
            st.importing.remove(&s);
            st.assign(s, Some(&me));
        }
    }
    changed(ctx);
    ctx.out.ok();
    Ok(())
}

fn del_slots(ctx: &mut Ctx<'_, '_>, slots: Vec<u16>) -> CmdResult {
    let c = cluster(ctx)?;
    {
        let mut st = c.state.lock();
        let mut seen = std::collections::HashSet::new();
        for &s in &slots {
            if st.slot_owner[s as usize].is_none() {
                return Err(format!("ERR Slot {s} is already unassigned").into());
            }
            if !seen.insert(s) {
                return Err(format!("ERR Slot {s} specified multiple times").into());
            }
        }
        for s in slots {
            st.assign(s, None);
        }
    }
    changed(ctx);
    ctx.out.ok();
    Ok(())
}

fn addslots(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let slots = slot_args(&args[2..], false)?;
    add_slots(ctx, slots)
}

fn addslotsrange(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let slots = slot_args(&args[2..], true)?;
    add_slots(ctx, slots)
}

fn delslots(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let slots = slot_args(&args[2..], false)?;
    del_slots(ctx, slots)
}

fn delslotsrange(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let slots = slot_args(&args[2..], true)?;
    del_slots(ctx, slots)
}

fn flushslots(ctx: &mut Ctx<'_, '_>, _args: &[Bytes]) -> CmdResult {
    let c = cluster(ctx)?;
    if !ctx.db.is_empty() {
        return Err("ERR DB must be empty to perform CLUSTER FLUSHSLOTS.".into());
    }
    {
        let mut st = c.state.lock();
        let mine: Vec<u16> = st.me().slots.iter().collect();
        for s in mine {
            st.assign(s, None);
        }
    }
    changed(ctx);
    ctx.out.ok();
    Ok(())
}

fn meet(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let c = cluster(ctx)?;
    let ip_text = String::from_utf8_lossy(&args[2]).into_owned();
    let port_text = String::from_utf8_lossy(&args[3]).into_owned();
    let ip: std::net::IpAddr = ip_text.parse().map_err(|_| {
        CmdError::from(format!(
            "ERR Invalid node address specified: {ip_text}:{port_text}"
        ))
    })?;
    let port = parse_i64(&args[3])
        .ok()
        .filter(|p| (1..=65535).contains(p))
        .ok_or_else(|| CmdError::from(format!("ERR Invalid base port specified: {port_text}")))?;
    let cport = match args.get(4) {
        Some(a) => parse_i64(a)
            .ok()
            .filter(|p| (1..=65535).contains(p))
            .ok_or_else(|| {
                CmdError::from(format!(
                    "ERR Invalid bus port specified: {}",
                    String::from_utf8_lossy(a)
                ))
            })?,
        None => port + 10000,
    };
    if cport > 65535 {
        return Err(format!("ERR Invalid bus port specified: {cport}").into());
    }
    {
        let mut st = c.state.lock();
        let ip = ip.to_string();
        let known = st
            .handshakes
            .iter()
            .any(|(i, p, _, _)| *i == ip && *p == port as u16);
        if !known {
            st.handshakes
                .push((ip, port as u16, cport as u16, crate::server::now_ms()));
        }
    }
    c.wake.notify_one();
    ctx.out.ok();
    Ok(())
}

fn lookup<'a>(
    st: &'a ClusterState,
    id: &[u8],
) -> Result<&'a crate::cluster::state::ClusterNode, CmdError> {
    let text = String::from_utf8_lossy(id);
    st.nodes
        .get(text.as_ref())
        .ok_or_else(|| CmdError::from(format!("ERR Unknown node {text}")))
}

fn forget(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let c = cluster(ctx)?;
    {
        let mut st = c.state.lock();
        let id = lookup(&st, &args[2])?.id.clone();
        if id == st.myself {
            return Err("ERR I tried hard but I can't forget myself...".into());
        }
        if st.me().primary_id.as_deref() == Some(id.as_str()) && st.me().flags.replica {
            return Err("ERR Can't forget my master!".into());
        }
        let held: Vec<u16> = st
            .nodes
            .get(&id)
            .map(|n| n.slots.iter().collect())
            .unwrap_or_default();
        for s in held {
            st.assign(s, None);
        }
        st.nodes.remove(&id);
        st.blacklist.insert(
            id,
            crate::server::now_ms() + crate::cluster::bus::FORGET_TTL_MS,
        );
    }
    changed(ctx);
    ctx.out.ok();
    Ok(())
}

fn replicate(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let c = cluster(ctx)?;
    let (ip, port) = {
        let mut st = c.state.lock();
        let target = lookup(&st, &args[2])?.clone();
        if target.id == st.myself {
            return Err("ERR Can't replicate myself".into());
        }
        if target.flags.replica {
            return Err("ERR I can only replicate a master, not a replica.".into());
        }
        let me = st.me();
        if me.is_primary() && (!me.slots.is_empty() || !ctx.db.is_empty()) {
            return Err(
                "ERR To set a master the node must be empty and without assigned slots.".into(),
            );
        }
        st.migrating.clear();
        st.importing.clear();
        let me = st.me_mut();
        me.flags.replica = true;
        me.flags.primary = false;
        me.primary_id = Some(target.id.clone());
        me.shard_id = target.shard_id.clone();
        (target.ip.clone(), target.port)
    };
    crate::cmd::start_replica(ctx.server, ctx.db, ip, port);
    changed(ctx);
    ctx.out.ok();
    Ok(())
}

fn replicas(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let c = cluster(ctx)?;
    let st = c.state.lock();
    let node = lookup(&st, &args[2])?;
    if node.flags.replica {
        return Err("ERR The specified node is not a master".into());
    }
    let ids: Vec<String> = st
        .replicas_of(&node.id)
        .iter()
        .map(|n| n.id.clone())
        .collect();
    let text = render::nodes(&st, crate::server::now_ms());
    drop(st);
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| ids.iter().any(|id| l.starts_with(id.as_str())))
        .collect();
    ctx.out.array(lines.len());
    for l in lines {
        ctx.out.bulk(l.as_bytes());
    }
    Ok(())
}

fn reset(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let c = cluster(ctx)?;
    let hard = match args.get(2) {
        None => false,
        Some(a) if is(a, "hard") => true,
        Some(a) if is(a, "soft") => false,
        Some(_) => return Err(lagwise_shared::resp::errors::SYNTAX.into()),
    };
    let was_replica = {
        let st = c.state.lock();
        if st.me().is_primary() && !ctx.db.is_empty() {
            return Err(
                "ERR CLUSTER RESET can't be called with master nodes containing keys".into(),
            );
        }
        st.me().flags.replica
    };
    if was_replica {
        // As REPLICAOF NO ONE, with the data flushed: a reset node starts empty.
        crate::cmd::stop_replica(ctx);
        ctx.db.clear();
    }
    {
        let mut st = c.state.lock();
        let myself = st.myself.clone();
        st.nodes.retain(|id, _| *id == myself);
        for s in 0..SLOT_COUNT as u16 {
            st.assign(s, None);
        }
        st.migrating.clear();
        st.importing.clear();
        st.handshakes.clear();
        let me = st.me_mut();
        me.flags.replica = false;
        me.flags.primary = true;
        me.primary_id = None;
        if hard {
            let id = crate::server::random_hex40();
            let mut node = st.me().clone();
            node.id = id.clone();
            node.config_epoch = 0;
            st.nodes.clear();
            st.nodes.insert(id.clone(), node);
            st.myself = id;
            st.current_epoch = 0;
            st.last_vote_epoch = 0;
        }
    }
    changed(ctx);
    ctx.out.ok();
    Ok(())
}

fn saveconfig(ctx: &mut Ctx<'_, '_>, _args: &[Bytes]) -> CmdResult {
    let c = cluster(ctx)?;
    c.save_now()
        .map_err(|e| CmdError::from(format!("ERR error saving the cluster node config: {e}")))?;
    ctx.out.ok();
    Ok(())
}

fn set_config_epoch(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let c = cluster(ctx)?;
    let epoch = parse_i64(&args[2])?;
    if epoch < 0 {
        return Err(format!("ERR Invalid config epoch specified: {epoch}").into());
    }
    {
        let mut st = c.state.lock();
        if st.nodes.len() > 1 {
            return Err("ERR The user can assign a config epoch only when the node does not know any other node.".into());
        }
        if st.me().config_epoch != 0 {
            return Err("ERR Node config epoch is already non-zero".into());
        }
        st.me_mut().config_epoch = epoch as u64;
        if st.current_epoch < epoch as u64 {
            st.current_epoch = epoch as u64;
        }
    }
    changed(ctx);
    ctx.out.ok();
    Ok(())
}

/// Takes a new config epoch without asking the cluster, when ours is not already the
/// highest (Valkey's `clusterBumpConfigEpochWithoutConsensus`). Returns whether it did.
fn bump_epoch(st: &mut ClusterState) -> bool {
    let max = st.nodes.values().map(|n| n.config_epoch).max().unwrap_or(0);
    let mine = st.me().config_epoch;
    if mine == 0 || mine != max || st.nodes.values().filter(|n| n.config_epoch == max).count() > 1 {
        st.current_epoch += 1;
        let e = st.current_epoch;
        st.me_mut().config_epoch = e;
        true
    } else {
        false
    }
}

fn bumpepoch(ctx: &mut Ctx<'_, '_>, _args: &[Bytes]) -> CmdResult {
    let c = cluster(ctx)?;
    let (bumped, epoch) = {
        let mut st = c.state.lock();
        let b = bump_epoch(&mut st);
        (b, st.me().config_epoch)
    };
    changed(ctx);
    ctx.out.simple(&format!(
        "{} {epoch}",
        if bumped { "BUMPED" } else { "STILL" }
    ));
    Ok(())
}

fn setslot(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let c = cluster(ctx)?;
    let slot = parse_slot(&args[2])?;
    let action = args.get(3).ok_or_else(|| {
        CmdError::from(
            "ERR Invalid CLUSTER SETSLOT action or number of arguments. Try CLUSTER HELP",
        )
    })?;
    let bad_action = || {
        CmdError::from(
            "ERR Invalid CLUSTER SETSLOT action or number of arguments. Try CLUSTER HELP",
        )
    };
    let keys_here = ctx.db.keys_in_slot(slot);
    // Whether we just finished importing the slot: then the cluster hears of it soon.
    let mut imported = false;
    {
        let mut st = c.state.lock();
        if st.me().flags.replica {
            return Err("ERR Please use SETSLOT only with masters.".into());
        }
        let myself = st.myself.clone();
        let owner = st.slot_owner[slot as usize].clone();
        if is(action, "migrating") && args.len() == 5 {
            if owner.as_deref() != Some(myself.as_str()) {
                return Err(format!("ERR I'm not the owner of hash slot {slot}").into());
            }
            let n = lookup(&st, &args[4])?;
            if n.flags.replica {
                return Err("ERR Target node is not a master".into());
            }
            let id = n.id.clone();
            st.migrating.insert(slot, id);
        } else if is(action, "importing") && args.len() == 5 {
            if owner.as_deref() == Some(myself.as_str()) {
                return Err(format!("ERR I'm already the owner of hash slot {slot}").into());
            }
            let n = lookup(&st, &args[4])?;
            if n.flags.replica {
                return Err("ERR Target node is not a master".into());
            }
            let id = n.id.clone();
            st.importing.insert(slot, id);
        } else if is(action, "stable") && args.len() == 4 {
            st.migrating.remove(&slot);
            st.importing.remove(&slot);
        } else if is(action, "node") && args.len() == 5 {
            let n = lookup(&st, &args[4])?;
            if n.flags.replica {
                return Err(format!("ERR Can't assign hashslot {slot} to a replica node").into());
            }
            let target = n.id.clone();
            if owner.as_deref() == Some(myself.as_str()) && target != myself && keys_here > 0 {
                return Err(format!("ERR Can't assign hashslot {slot} to a different node while I still hold keys for this hash slot.").into());
            }
            if keys_here == 0 {
                st.migrating.remove(&slot);
            }
            // Finishing an import: take a new epoch so our claim wins everywhere.
            if target == myself && st.importing.remove(&slot).is_some() {
                bump_epoch(&mut st);
                imported = true;
            }
            st.assign(slot, Some(&target));
        } else {
            return Err(bad_action());
        }
    }
    if imported {
        c.broadcast_soon();
    }
    // As `changed`, without waking the bus cycle: a reshard sends several SETSLOTs per slot
    // to every primary, and nothing here needs the cycle before its next beat (the PONG
    // above wakes it; nodes.conf is saved within a cycle).
    c.mark_dirty();
    crate::cluster::publish_routing(ctx.server, ctx.db);
    ctx.out.ok();
    Ok(())
}

fn failover(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    use crate::cluster::failover::{start_manual, Manual};
    cluster(ctx)?;
    let mode = match args.get(2) {
        None => Manual::Coordinated,
        Some(a) if is(a, "force") => Manual::Force,
        Some(a) if is(a, "takeover") => Manual::Takeover,
        Some(_) => return Err(lagwise_shared::resp::errors::SYNTAX.into()),
    };
    start_manual(ctx.server, ctx.db, mode).map_err(CmdError::from)?;
    ctx.out.ok();
    Ok(())
}

fn count_failure_reports(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let c = cluster(ctx)?;
    let n = lookup(&c.state.lock(), &args[2])?.fail_reports.len();
    ctx.out.int(n as i64);
    Ok(())
}

fn links(ctx: &mut Ctx<'_, '_>, _args: &[Bytes]) -> CmdResult {
    let c = cluster(ctx)?;
    let st = c.state.lock();
    let linked: Vec<&crate::cluster::state::ClusterNode> = st
        .nodes
        .values()
        .filter(|n| !n.flags.myself && n.link_connected)
        .collect();
    ctx.out.array(linked.len());
    for n in linked {
        ctx.out.map(6);
        ctx.out.bulk(b"direction");
        ctx.out.bulk(b"to");
        ctx.out.bulk(b"node");
        ctx.out.bulk(n.id.as_bytes());
        ctx.out.bulk(b"create-time");
        ctx.out.int(0);
        ctx.out.bulk(b"events");
        ctx.out.bulk(b"rw");
        ctx.out.bulk(b"send-buffer-allocated");
        ctx.out.int(0);
        ctx.out.bulk(b"send-buffer-used");
        ctx.out.int(0);
    }
    Ok(())
}

fn help(ctx: &mut Ctx<'_, '_>, _args: &[Bytes]) -> CmdResult {
    let lines = [
        "CLUSTER <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
        "ADDSLOTS <slot> [<slot> ...]",
        "ADDSLOTSRANGE <start slot> <end slot> [<start slot> <end slot> ...]",
        "BUMPEPOCH",
        "COUNT-FAILURE-REPORTS <node-id>",
        "COUNTKEYSINSLOT <slot>",
        "DELSLOTS <slot> [<slot> ...]",
        "DELSLOTSRANGE <start slot> <end slot> [<start slot> <end slot> ...]",
        "FLUSHSLOTS",
        "FORGET <node-id>",
        "GETKEYSINSLOT <slot> <count>",
        "INFO",
        "KEYSLOT <key>",
        "LINKS",
        "MEET <ip> <port> [<bus-port>]",
        "MYID",
        "MYSHARDID",
        "NODES",
        "REPLICATE <node-id>",
        "RESET [HARD|SOFT]",
        "SET-CONFIG-EPOCH <epoch>",
        "SETSLOT <slot> (IMPORTING <node-id>|MIGRATING <node-id>|STABLE|NODE <node-id>)",
        "REPLICAS <node-id>",
        "SAVECONFIG",
        "SHARDS",
        "SLOTS",
        "HELP",
        "    Print this help.",
    ];
    ctx.out.simples(&lines);
    Ok(())
}
