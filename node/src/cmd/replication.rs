//! Replication and persistence commands: REPLICAOF, REPLCONF, PSYNC, SYNC, WAIT, ROLE, SAVE,
//! BGSAVE, LASTSAVE, BGREWRITEAOF.

use std::collections::HashMap;
use std::time::Instant;

use bytes::Bytes;
use lagwise_shared::resp::errors;

use super::{is, parse_i64, CmdError, CmdResult, Ctx, Handler, Outcome, WaitAcks};
use crate::db::ExpiryMode;
use crate::persistence::{self, Bgsave};
use crate::replication::primary::PsyncRequest;
use crate::replication::{LinkState, PrimaryLink};

pub fn register(m: &mut HashMap<&'static str, Handler>) {
    m.insert("replicaof", replicaof);
    m.insert("slaveof", replicaof);
    m.insert("replconf", replconf);
    m.insert("psync", psync);
    m.insert("sync", sync);
    m.insert("wait", wait);
    m.insert("role", role);
    m.insert("save", save);
    m.insert("bgsave", bgsave);
    m.insert("lastsave", lastsave);
    m.insert("bgrewriteaof", bgrewriteaof);
}

/// `REPLCONF GETACK *` as it travels on the stream.
const GETACK: &[u8] = b"*3\r\n$8\r\nREPLCONF\r\n$6\r\nGETACK\r\n$1\r\n*\r\n";

fn replicaof(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    if ctx.server.config.read().get_bool("cluster-enabled") {
        return Err("ERR REPLICAOF not allowed in cluster mode.".into());
    }
    if is(&args[1], "no") && is(&args[2], "one") {
        if ctx.server.repl.is_replica() {
            become_primary(ctx);
        }
        ctx.out.ok();
        return Ok(());
    }
    let host = String::from_utf8_lossy(&args[1]).into_owned();
    let port = parse_i64(&args[2])
        .ok()
        .filter(|p| (0..=65535).contains(p))
        .ok_or(CmdError::from("ERR Invalid master port"))? as u16;
    {
        let s = ctx.server.repl.state.lock();
        if s.primary
            .as_ref()
            .is_some_and(|p| p.host == host && p.port == port)
        {
            ctx.out.simple("OK Already connected to specified master");
            return Ok(());
        }
    }
    become_replica(ctx, host, port);
    ctx.out.ok();
    Ok(())
}

fn become_replica(ctx: &mut Ctx<'_, '_>, host: String, port: u16) {
    start_replica(ctx.server, ctx.db, host, port);
}

/// Starts following `host:port`. The history we hold (as a primary, or from a previous
/// primary) is what the link offers for a partial resync.
pub fn start_replica(
    server: &std::sync::Arc<crate::server::Server>,
    db: &mut crate::db::Db,
    host: String,
    port: u16,
) {
    db.repl.set_enabled(false);
    db.expiry = ExpiryMode::Hide;
    let generation = {
        let mut s = server.repl.state.lock();
        s.generation += 1;
        let now = Instant::now();
        s.primary = Some(PrimaryLink {
            host: host.clone(),
            port,
            state: LinkState::Connect,
            last_io: now,
            down_since: now,
            read_offset: 0,
            sync_bytes_total: -1,
            sync_bytes_read: 0,
        });
        s.generation
    };
    server.repl.set_replica(true);
    // Clients blocked on keys would wait for writes that can no longer come from them.
    tracing::info!(primary = %format!("{host}:{port}"), "replicating from a new primary");
    tokio::spawn(crate::replication::replica::run_link(
        server.clone(),
        generation,
    ));
}

/// Stops following a primary (REPLICAOF NO ONE, CLUSTER RESET on a replica).
pub fn stop_replica(ctx: &mut Ctx<'_, '_>) {
    if ctx.server.repl.is_replica() {
        become_primary(ctx);
    }
}

/// `REPLICAOF NO ONE`: a new history begins here; the old one stays continuable.
fn become_primary(ctx: &mut Ctx<'_, '_>) {
    crate::replication::promote(ctx.server, ctx.db);
}

fn replconf(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    if args.len().is_multiple_of(2) {
        return Err(errors::SYNTAX.into());
    }
    let mut i = 1;
    while i < args.len() {
        let (opt, val) = (&args[i], &args[i + 1]);
        if is(opt, "listening-port") {
            ctx.client.replica_port = parse_i64(val)
                .ok()
                .filter(|p| (0..=65535).contains(p))
                .ok_or(CmdError::from("ERR invalid listening port"))?
                as u16;
        } else if is(opt, "capa") {
            if is(val, "eof") {
                ctx.client.replica_capa_eof = true;
            }
        } else if is(opt, "ack") || is(opt, "getack") {
            // Meaningful only on a replication link; a stray one gets no reply, as in Valkey.
            return Ok(());
        } else if is(opt, "ip-address") || is(opt, "rdb-only") || is(opt, "rdb-filter-only") {
        } else {
            return Err(format!(
                "ERR Unrecognized REPLCONF option: {}",
                String::from_utf8_lossy(opt)
            )
            .into());
        }
        i += 2;
    }
    ctx.out.ok();
    Ok(())
}

fn psync(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    start_sync(ctx, args, false)
}

fn sync(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    start_sync(ctx, args, true)
}

fn start_sync(ctx: &mut Ctx<'_, '_>, args: &[Bytes], legacy: bool) -> CmdResult {
    if ctx.client.handle.kind() != crate::clients::ClientKind::Normal {
        return Ok(());
    }
    if ctx.server.repl.is_replica() && !ctx.server.repl.link_up() {
        return Err("NOMASTERLINK Can't SYNC while not connected with my master".into());
    }
    let (replid, offset) = if legacy {
        ("?".to_string(), -1)
    } else {
        (
            String::from_utf8_lossy(&args[1]).into_owned(),
            parse_i64(&args[2]).unwrap_or(-1),
        )
    };
    ctx.outcome = Outcome::Replicate(PsyncRequest {
        replid,
        offset,
        capa_eof: ctx.client.replica_capa_eof && !legacy,
        listening_port: ctx.client.replica_port,
        legacy_sync: legacy,
    });
    Ok(())
}

fn wait(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    if ctx.server.repl.is_replica() {
        return Err("ERR WAIT cannot be used with replica instances. Please also note that since Redis 4.0 if a replica is configured to be writable (which is not the default) writes to replicas are just local and are not propagated.".into());
    }
    let replicas = parse_i64(&args[1])?;
    let timeout = parse_i64(&args[2])?;
    if timeout < 0 {
        return Err("ERR timeout is negative".into());
    }
    let offset = ctx.client.woff;
    let acked = ctx.server.repl.acked_count(offset);
    if replicas <= acked as i64 || ctx.client.in_exec {
        ctx.out.int(acked as i64);
        return Ok(());
    }
    // Ask the replicas where they are now rather than waiting for their next periodic ack.
    ctx.db.repl.raw(GETACK);
    ctx.outcome = Outcome::WaitAcks(WaitAcks {
        offset,
        replicas: replicas as usize,
        deadline: (timeout > 0).then(|| {
            tokio::time::Instant::now() + std::time::Duration::from_millis(timeout as u64)
        }),
    });
    Ok(())
}

fn role(ctx: &mut Ctx<'_, '_>, _args: &[Bytes]) -> CmdResult {
    let offset = ctx.server.stream_position(ctx.db);
    let s = ctx.server.repl.state.lock();
    match &s.primary {
        None => {
            ctx.out.array(3);
            ctx.out.bulk(b"master");
            ctx.out.int(offset as i64);
            ctx.out.array(s.replicas.len());
            for r in &s.replicas {
                ctx.out.array(3);
                ctx.out.bulk(r.ip.to_string().as_bytes());
                ctx.out.bulk(r.listening_port.to_string().as_bytes());
                ctx.out.bulk(r.ack_offset.to_string().as_bytes());
            }
        }
        Some(p) => {
            ctx.out.array(5);
            ctx.out.bulk(b"slave");
            ctx.out.bulk(p.host.as_bytes());
            ctx.out.int(p.port as i64);
            ctx.out.bulk(match p.state {
                LinkState::Connect => b"connect".as_slice(),
                LinkState::Handshake => b"handshake",
                LinkState::Transfer => b"sync",
                LinkState::Up => b"connected",
            });
            ctx.out.int(offset as i64);
        }
    }
    Ok(())
}

fn save(ctx: &mut Ctx<'_, '_>, _args: &[Bytes]) -> CmdResult {
    persistence::save_locked(ctx.server, ctx.db)?;
    ctx.out.ok();
    Ok(())
}

fn bgsave(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let schedule = match args.get(1) {
        None => false,
        Some(a) if is(a, "schedule") => true,
        Some(_) => return Err(errors::SYNTAX.into()),
    };
    match persistence::start_bgsave(ctx.server, ctx.db, schedule)? {
        Bgsave::Started => ctx.out.simple("Background saving started"),
        Bgsave::Scheduled => ctx.out.simple("Background saving scheduled"),
    }
    Ok(())
}

fn bgrewriteaof(ctx: &mut Ctx<'_, '_>, _args: &[Bytes]) -> CmdResult {
    if !ctx.server.aof.state.lock().enabled {
        // Valkey writes the file even with the AOF off; we only keep one while it is on.
        return Err("ERR Background append only file rewriting needs appendonly yes".into());
    }
    if crate::aof::start_rewrite(ctx.server, ctx.db)? {
        ctx.out
            .simple("Background append only file rewriting started");
    } else {
        ctx.out
            .simple("Background append only file rewriting scheduled");
    }
    Ok(())
}

fn lastsave(ctx: &mut Ctx<'_, '_>, _args: &[Bytes]) -> CmdResult {
    let t = ctx.server.persistence.state.lock().last_save_unix;
    ctx.out.int(t as i64);
    Ok(())
}
