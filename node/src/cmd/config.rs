//! CONFIG subcommands.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::{CmdResult, Ctx, Handler};
use crate::config::ConfigError;
use crate::value::EncodingLimits;

pub fn register(m: &mut HashMap<&'static str, Handler>) {
    m.insert("config|get", get);
    m.insert("config|set", set);
    m.insert("config|resetstat", resetstat);
    m.insert("config|rewrite", rewrite);
    m.insert("config|help", help);
}

fn get(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let config = ctx.server.config.read();
    let mut pairs: Vec<(&str, String)> = Vec::new();
    for pattern in &args[2..] {
        for (name, value) in config.matching(pattern) {
            if !pairs.iter().any(|(n, _)| *n == name) {
                pairs.push((name, value.to_string()));
            }
        }
    }
    drop(config);
    ctx.out.map(pairs.len());
    for (name, value) in pairs {
        ctx.out.bulk(name.as_bytes());
        ctx.out.bulk(value.as_bytes());
    }
    Ok(())
}

fn set(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    if args.len() < 4 || !args.len().is_multiple_of(2) {
        return Err(super::wrong_arity("config|set"));
    }
    let pairs: Vec<(String, String)> = args[2..]
        .chunks_exact(2)
        .map(|p| {
            (
                String::from_utf8_lossy(&p[0]).into_owned(),
                String::from_utf8_lossy(&p[1]).into_owned(),
            )
        })
        .collect();
    let was_appendonly = ctx.server.config.read().get_bool("appendonly");
    let result = ctx.server.config.write().set_many(&pairs);
    match result {
        Ok(_) => {
            let (backlog, appendonly) = {
                let c = ctx.server.config.read();
                ctx.db.limits = EncodingLimits::from_config(&c);
                (c.get_u64("repl-backlog-size") as usize, c.get_bool("appendonly"))
            };
            ctx.server
                .repl
                .backlog
                .lock()
                .set_limits(backlog, crate::replication::REPLICA_HARD_LIMIT);
            // Turning the AOF on writes the dataset as its first content, as in Valkey.
            if appendonly && !was_appendonly {
                crate::aof::enable(ctx.server, ctx.db);
            } else if !appendonly && was_appendonly {
                crate::aof::disable(ctx.server);
            }
            ctx.out.ok();
            Ok(())
        }
        Err(ConfigError::Unknown(name)) => {
            Err(format!("ERR Unknown option or number of arguments for CONFIG SET - '{name}'").into())
        }
        Err(ConfigError::Immutable(name)) => {
            Err(format!("ERR CONFIG SET failed (possibly related to argument '{name}') - can't set immutable config").into())
        }
        Err(ConfigError::BadValue { name, reason }) => {
            Err(format!("ERR CONFIG SET failed (possibly related to argument '{name}') - {reason}").into())
        }
    }
}

fn resetstat(ctx: &mut Ctx<'_, '_>, _args: &[Bytes]) -> CmdResult {
    ctx.server.stats.reset();
    ctx.server.command_stats.reset();
    ctx.db.stats = Default::default();
    ctx.server.ops_per_sec.store(0, Ordering::Relaxed);
    ctx.out.ok();
    Ok(())
}

fn rewrite(ctx: &mut Ctx<'_, '_>, _args: &[Bytes]) -> CmdResult {
    let Some(path) = ctx.server.config_file.clone() else {
        return Err("ERR The server is running without a config file".into());
    };
    let text = ctx.server.config.read().render_non_default();
    let tmp = format!("{path}.tmp-{}", std::process::id());
    let write = std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, &path));
    match write {
        Ok(()) => {
            ctx.out.ok();
            Ok(())
        }
        Err(e) => Err(format!("ERR Rewriting config file: {e}").into()),
    }
}

fn help(ctx: &mut Ctx<'_, '_>, _args: &[Bytes]) -> CmdResult {
    let lines = [
        "CONFIG <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
        "GET <pattern>",
        "    Return parameters matching the glob-like <pattern> and their values.",
        "SET <directive> <value>",
        "    Set the configuration <directive> to <value>.",
        "RESETSTAT",
        "    Reset statistics reported by the INFO command.",
        "REWRITE",
        "    Rewrite the configuration file.",
        "HELP",
        "    Print this help.",
    ];
    ctx.out.simples(&lines);
    Ok(())
}
