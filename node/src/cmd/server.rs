//! Connection and server commands: PING, ECHO, HELLO, AUTH, SELECT, QUIT, RESET, INFO, TIME,
//! COMMAND, DEBUG, SHUTDOWN.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use lagwise_shared::command_table::{self, BeginSearch, CommandSpec, FindKeys};
use lagwise_shared::resp::{errors, Protocol};

use super::{implemented, is, parse_i64, CmdError, CmdResult, Ctx, Handler, Outcome};

/// The Valkey/Redis version we are compatible with, as clients see it.
pub const COMPAT_VERSION: &str = "7.2.4";

pub fn register(m: &mut HashMap<&'static str, Handler>) {
    m.insert("ping", ping);
    m.insert("echo", echo);
    m.insert("hello", hello);
    m.insert("auth", auth);
    m.insert("select", select);
    m.insert("quit", quit);
    m.insert("reset", reset);
    m.insert("info", info);
    m.insert("time", time);
    m.insert("debug", debug);
    m.insert("shutdown", shutdown);
    m.insert("command", command);
    m.insert("command|count", command_count);
    m.insert("command|info", command_info);
    m.insert("command|list", command_list);
    m.insert("command|getkeys", command_getkeys);
    m.insert("command|docs", command_docs);
}

fn ping(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    if args.len() <= 2 && super::pubsub::subscribed_ping(ctx, args) {
        return Ok(());
    }
    match args.len() {
        1 => ctx.out.simple("PONG"),
        2 => ctx.out.bulk(&args[1]),
        _ => return Err(super::wrong_arity("ping")),
    }
    Ok(())
}

fn echo(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    ctx.out.bulk(&args[1]);
    Ok(())
}

/// Checks a password against `requirepass` for the default user.
fn check_password(ctx: &mut Ctx<'_, '_>, user: Option<&[u8]>, pass: &[u8]) -> CmdResult {
    let required = ctx.server.config.read().get("requirepass").to_string();
    let user_ok = user.is_none_or(|u| u == b"default");
    if user_ok && (required.is_empty() || required.as_bytes() == pass) {
        ctx.client.authenticated = true;
        Ok(())
    } else {
        Err(errors::WRONGPASS.into())
    }
}

fn auth(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let (user, pass) = match args.len() {
        2 => (None, &args[1]),
        3 => (Some(&args[1][..]), &args[2]),
        _ => return Err(errors::SYNTAX.into()),
    };
    if user.is_none() && ctx.server.config.read().get("requirepass").is_empty() {
        return Err("ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?".into());
    }
    check_password(ctx, user, pass)?;
    ctx.out.ok();
    Ok(())
}

fn hello(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let mut protocol = ctx.client.protocol;
    if let Some(v) = args.get(1) {
        let ver = parse_i64(v).map_err(|_| {
            CmdError::from("ERR Protocol version is not an integer or out of range")
        })?;
        protocol = match ver {
            2 => Protocol::Resp2,
            3 => Protocol::Resp3,
            _ => return Err("NOPROTO unsupported protocol version".into()),
        };
    }
    let mut name = None;
    let mut i = 2;
    while i < args.len() {
        if is(&args[i], "AUTH") && i + 2 < args.len() {
            check_password(ctx, Some(&args[i + 1][..]), &args[i + 2])?;
            i += 3;
        } else if is(&args[i], "SETNAME") && i + 1 < args.len() {
            name = Some(super::client::valid_name(&args[i + 1])?);
            i += 2;
        } else {
            return Err(format!(
                "ERR Syntax error in HELLO option '{}'",
                String::from_utf8_lossy(&args[i])
            )
            .into());
        }
    }
    if !ctx.client.authenticated {
        return Err("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time".into());
    }
    ctx.client.protocol = protocol;
    ctx.out.protocol = protocol;
    {
        let mut info = ctx.client.handle.info.lock();
        info.resp = if protocol == Protocol::Resp3 { 3 } else { 2 };
        if let Some(n) = name {
            info.name = n;
        }
    }
    let cluster = ctx.server.config.read().get_bool("cluster-enabled");
    let out = &mut *ctx.out;
    out.map(7);
    out.bulk(b"server");
    out.bulk(b"lagwise");
    out.bulk(b"version");
    out.bulk(COMPAT_VERSION.as_bytes());
    out.bulk(b"proto");
    out.int(if protocol == Protocol::Resp3 { 3 } else { 2 });
    out.bulk(b"id");
    out.int(ctx.client.id as i64);
    out.bulk(b"mode");
    out.bulk(if cluster { b"cluster" } else { b"standalone" });
    out.bulk(b"role");
    out.bulk(b"master");
    out.bulk(b"modules");
    out.array(0);
    Ok(())
}

fn select(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let db = parse_i64(&args[1])?;
    if ctx.server.config.read().get_bool("cluster-enabled") && db != 0 {
        return Err("ERR SELECT is not allowed in cluster mode".into());
    }
    let databases = ctx.server.config.read().get_int("databases");
    if db < 0 || db >= databases {
        return Err("ERR DB index is out of range".into());
    }
    if db != 0 {
        return Err("ERR this node serves database 0 only".into());
    }
    ctx.out.ok();
    Ok(())
}

fn quit(ctx: &mut Ctx<'_, '_>, _args: &[Bytes]) -> CmdResult {
    ctx.out.ok();
    ctx.outcome = Outcome::Close;
    Ok(())
}

fn reset(ctx: &mut Ctx<'_, '_>, _args: &[Bytes]) -> CmdResult {
    ctx.client.multi = None;
    super::transactions::unwatch_all(ctx);
    super::pubsub::unsubscribe_all(ctx);
    ctx.client.protocol = Protocol::Resp2;
    ctx.out.protocol = Protocol::Resp2;
    ctx.client.authenticated = ctx.server.config.read().get("requirepass").is_empty();
    {
        let mut info = ctx.client.handle.info.lock();
        info.name.clear();
        info.resp = 2;
        info.no_evict = false;
    }
    ctx.out.simple("RESET");
    Ok(())
}

fn info(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let sections: Vec<String> = args[1..]
        .iter()
        .map(|a| String::from_utf8_lossy(a).to_ascii_lowercase())
        .collect();
    let text = crate::info::render(ctx.server, ctx.db, &sections);
    ctx.out.verbatim(text.as_bytes());
    Ok(())
}

fn time(ctx: &mut Ctx<'_, '_>, _args: &[Bytes]) -> CmdResult {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    ctx.out.array(2);
    ctx.out.bulk_int(now.as_secs() as i64);
    ctx.out.bulk_int(now.subsec_micros() as i64);
    Ok(())
}

fn debug(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let allowed = {
        let setting = ctx
            .server
            .config
            .read()
            .get("enable-debug-command")
            .to_string();
        setting == "yes" || (setting == "local" && ctx.client.handle.addr.ip().is_loopback())
    };
    if !allowed {
        return Err("ERR DEBUG command not allowed. If the enable-debug-command option is set to \"local\", you can run it from a local connection, otherwise you need to set this option in the configuration file, and then restart the server.".into());
    }
    let sub = &args[1];
    if is(sub, "SLEEP") && args.len() == 3 {
        // Valkey reads the seconds with atof: text that is not a number sleeps 0 s.
        let secs = super::parse_f64(&args[2]).unwrap_or(0.0);
        ctx.out.ok();
        if secs > 0.0 {
            ctx.outcome = Outcome::Freeze(Duration::from_secs_f64(secs.min(3600.0)));
        }
        Ok(())
    } else if is(sub, "SET-ACTIVE-EXPIRE") && args.len() == 3 {
        let on = parse_i64(&args[2])? != 0;
        ctx.server
            .active_expire
            .store(on, std::sync::atomic::Ordering::Relaxed);
        ctx.out.ok();
        Ok(())
    } else if is(sub, "HELP") {
        let lines = [
            "DEBUG <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
            "SLEEP <seconds>",
            "    Stop the server for <seconds>. Decimals allowed.",
            "SET-ACTIVE-EXPIRE <0|1>",
            "    Setting it to 0 disables expiring keys in background when they are not accessed.",
            "HELP",
            "    Print this help.",
        ];
        ctx.out.simples(&lines);
        Ok(())
    } else {
        Err(format!(
            "ERR unknown subcommand or wrong number of arguments for '{}'. Try DEBUG HELP.",
            String::from_utf8_lossy(sub)
        )
        .into())
    }
}

fn shutdown(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    for a in &args[1..] {
        if !["NOSAVE", "SAVE", "NOW", "FORCE", "ABORT"]
            .iter()
            .any(|o| is(a, o))
        {
            return Err(errors::SYNTAX.into());
        }
        if is(a, "ABORT") {
            return Err("ERR No shutdown in progress.".into());
        }
    }
    let flag = |name: &str| args[1..].iter().any(|a| is(a, name));
    let save_points = !ctx.server.config.read().get("save").is_empty();
    if !flag("NOSAVE") && (flag("SAVE") || save_points) {
        if let Err(e) = crate::persistence::save_locked(ctx.server, ctx.db) {
            tracing::warn!(error = %String::from_utf8_lossy(&e.0), "error trying to save the DB before shutdown");
            if !flag("FORCE") {
                return Err("ERR Errors trying to SHUTDOWN. Check logs.".into());
            }
        }
    }
    tracing::info!(client = ctx.client.id, "SHUTDOWN requested by a client");
    ctx.server.request_shutdown();
    ctx.outcome = Outcome::Close;
    Ok(())
}

// ---- COMMAND ----

/// Whether the node answers this command (or, for a container, any of its subcommands).
fn served(spec: &CommandSpec) -> bool {
    implemented(spec.name) || spec.subcommands.iter().any(|s| implemented(s.name))
}

fn served_commands() -> impl Iterator<Item = &'static CommandSpec> {
    command_table::all().iter().filter(|c| served(c))
}

fn write_info(ctx: &mut Ctx<'_, '_>, spec: &CommandSpec) {
    let out = &mut *ctx.out;
    out.array(10);
    out.bulk(spec.name.as_bytes());
    out.int(spec.arity as i64);
    let flags: Vec<&str> = spec.flags.names().collect();
    out.set(flags.len());
    for f in flags {
        out.simple(f);
    }
    out.int(spec.first_key as i64);
    out.int(spec.last_key as i64);
    out.int(spec.step as i64);
    out.set(spec.acl_categories.len());
    for c in spec.acl_categories {
        out.simple(c);
    }
    out.set(spec.tips.len());
    for t in spec.tips {
        out.simple(t);
    }
    out.array(spec.key_specs.len());
    for ks in spec.key_specs {
        out.map(3);
        out.bulk(b"flags");
        out.set(ks.flags.len());
        for f in ks.flags {
            out.simple(f);
        }
        out.bulk(b"begin_search");
        out.map(2);
        out.bulk(b"type");
        match ks.begin_search {
            BeginSearch::Index(i) => {
                out.bulk(b"index");
                out.bulk(b"spec");
                out.map(1);
                out.bulk(b"index");
                out.int(i as i64);
            }
            BeginSearch::Keyword {
                keyword,
                start_from,
            } => {
                out.bulk(b"keyword");
                out.bulk(b"spec");
                out.map(2);
                out.bulk(b"keyword");
                out.bulk(keyword.as_bytes());
                out.bulk(b"startfrom");
                out.int(start_from as i64);
            }
            BeginSearch::Unknown => {
                out.bulk(b"unknown");
                out.bulk(b"spec");
                out.map(0);
            }
        }
        out.bulk(b"find_keys");
        out.map(2);
        out.bulk(b"type");
        match ks.find_keys {
            FindKeys::Range {
                last_key,
                key_step,
                limit,
            } => {
                out.bulk(b"range");
                out.bulk(b"spec");
                out.map(3);
                out.bulk(b"lastkey");
                out.int(last_key as i64);
                out.bulk(b"keystep");
                out.int(key_step as i64);
                out.bulk(b"limit");
                out.int(limit as i64);
            }
            FindKeys::Keynum {
                keynum_idx,
                first_key,
                key_step,
            } => {
                out.bulk(b"keynum");
                out.bulk(b"spec");
                out.map(3);
                out.bulk(b"keynumidx");
                out.int(keynum_idx as i64);
                out.bulk(b"firstkey");
                out.int(first_key as i64);
                out.bulk(b"keystep");
                out.int(key_step as i64);
            }
            FindKeys::Unknown => {
                out.bulk(b"unknown");
                out.bulk(b"spec");
                out.map(0);
            }
        }
    }
    let subs: Vec<&CommandSpec> = spec
        .subcommands
        .iter()
        .filter(|s| implemented(s.name))
        .collect();
    ctx.out.array(subs.len());
    for s in subs {
        write_info(ctx, s);
    }
}

fn command(ctx: &mut Ctx<'_, '_>, _args: &[Bytes]) -> CmdResult {
    let all: Vec<_> = served_commands().collect();
    ctx.out.array(all.len());
    for spec in all {
        write_info(ctx, spec);
    }
    Ok(())
}

fn command_count(ctx: &mut Ctx<'_, '_>, _args: &[Bytes]) -> CmdResult {
    ctx.out.int(served_commands().count() as i64);
    Ok(())
}

fn command_list(ctx: &mut Ctx<'_, '_>, _args: &[Bytes]) -> CmdResult {
    let names: Vec<_> = served_commands()
        .flat_map(|c| {
            std::iter::once(c.name).chain(
                c.subcommands
                    .iter()
                    .filter(|s| implemented(s.name))
                    .map(|s| s.name),
            )
        })
        .collect();
    ctx.out.bulks(names.iter());
    Ok(())
}

fn find_served(name: &[u8]) -> Option<&'static CommandSpec> {
    if let Some(spec) = command_table::lookup(name).filter(|s| served(s)) {
        return Some(spec);
    }
    // `parent|sub` names.
    let text = std::str::from_utf8(name).ok()?;
    let (parent, sub) = text.split_once('|')?;
    command_table::lookup(parent.as_bytes())?
        .subcommand(sub.as_bytes())
        .filter(|s| implemented(s.name))
}

fn command_info(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    if args.len() == 2 {
        return command(ctx, args);
    }
    ctx.out.array(args.len() - 2);
    for name in &args[2..] {
        match find_served(name) {
            Some(spec) => write_info(ctx, spec),
            None => ctx.out.null_array(),
        }
    }
    Ok(())
}

fn command_docs(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let specs: Vec<&CommandSpec> = if args.len() == 2 {
        served_commands().collect()
    } else {
        args[2..].iter().filter_map(|n| find_served(n)).collect()
    };
    ctx.out.map(specs.len());
    for spec in specs {
        ctx.out.bulk(spec.name.as_bytes());
        let d = &spec.docs;
        let fields: Vec<(&str, &str)> = [
            ("summary", d.summary),
            ("since", d.since),
            ("group", d.group),
            ("complexity", d.complexity),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .collect();
        ctx.out.map(fields.len());
        for (k, v) in fields {
            ctx.out.bulk(k.as_bytes());
            ctx.out.bulk(v.as_bytes());
        }
    }
    Ok(())
}

fn command_getkeys(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let cmd_args = &args[2..];
    let spec = command_table::lookup(&cmd_args[0])
        .ok_or(CmdError::from("ERR Invalid command specified"))?;
    let spec = if spec.subcommands.is_empty() {
        spec
    } else {
        cmd_args
            .get(1)
            .and_then(|s| spec.subcommand(s))
            .ok_or(CmdError::from("ERR Invalid command specified"))?
    };
    if !spec.arity_ok(cmd_args.len()) {
        return Err("ERR Invalid number of arguments specified for command".into());
    }
    let mut positions = Vec::new();
    spec.key_positions(cmd_args, &mut positions);
    if positions.is_empty() {
        return Err("ERR The command has no key arguments".into());
    }
    ctx.out.bulks(positions.iter().map(|&p| &cmd_args[p][..]));
    Ok(())
}
