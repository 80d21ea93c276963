//! CLIENT subcommands.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use lagwise_shared::resp::errors;

use super::{is, parse_i64, CmdError, CmdResult, Ctx, Handler, Outcome};
use crate::server::PauseKind;

pub fn register(m: &mut HashMap<&'static str, Handler>) {
    m.insert("client|id", id);
    m.insert("client|setname", setname);
    m.insert("client|getname", getname);
    m.insert("client|setinfo", setinfo);
    m.insert("client|list", list);
    m.insert("client|info", info);
    m.insert("client|kill", kill);
    m.insert("client|pause", pause);
    m.insert("client|unpause", unpause);
    m.insert("client|no-evict", no_evict);
    m.insert("client|unblock", unblock);
    m.insert("client|help", help);
}

/// A client name or library field must be printable and contain no spaces, so CLIENT LIST
/// stays parseable.
pub fn valid_name(arg: &[u8]) -> Result<String, CmdError> {
    if arg.iter().any(|&b| !(b'!'..=b'~').contains(&b)) {
        return Err(
            "ERR Client names cannot contain spaces, newlines or special characters.".into(),
        );
    }
    Ok(String::from_utf8_lossy(arg).into_owned())
}

fn id(ctx: &mut Ctx<'_, '_>, _args: &[Bytes]) -> CmdResult {
    ctx.out.int(ctx.client.id as i64);
    Ok(())
}

fn setname(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let name = valid_name(&args[2])?;
    ctx.client.handle.info.lock().name = name;
    ctx.out.ok();
    Ok(())
}

fn getname(ctx: &mut Ctx<'_, '_>, _args: &[Bytes]) -> CmdResult {
    let name = ctx.client.handle.info.lock().name.clone();
    if name.is_empty() {
        ctx.out.null();
    } else {
        ctx.out.bulk(name.as_bytes());
    }
    Ok(())
}

fn setinfo(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let value = String::from_utf8_lossy(&args[3]).into_owned();
    if args[3].iter().any(|&b| !(b'!'..=b'~').contains(&b)) {
        return Err(format!(
            "ERR {} cannot contain spaces, newlines or special characters.",
            String::from_utf8_lossy(&args[2]).to_ascii_lowercase()
        )
        .into());
    }
    let mut info = ctx.client.handle.info.lock();
    if is(&args[2], "LIB-NAME") {
        info.lib_name = value;
    } else if is(&args[2], "LIB-VER") {
        info.lib_ver = value;
    } else {
        return Err(format!(
            "ERR Unrecognized option '{}'",
            String::from_utf8_lossy(&args[2])
        )
        .into());
    }
    drop(info);
    ctx.out.ok();
    Ok(())
}

fn list(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let mut ids: Option<Vec<u64>> = None;
    let mut type_filter: Option<Bytes> = None;
    let mut i = 2;
    while i < args.len() {
        if is(&args[i], "TYPE") && i + 1 < args.len() {
            let t = &args[i + 1];
            if ["normal", "master", "replica", "slave", "pubsub"]
                .iter()
                .any(|n| is(t, n))
            {
                if is(t, "pubsub") {
                    ids = Some(Vec::new());
                } else {
                    type_filter = Some(t.clone());
                }
            } else {
                return Err(
                    format!("ERR Unknown client type '{}'", String::from_utf8_lossy(t)).into(),
                );
            }
            i += 2;
        } else if is(&args[i], "ID") && i + 1 < args.len() {
            let mut v = Vec::new();
            for a in &args[i + 1..] {
                let n = parse_i64(a)
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or(CmdError::from("ERR Invalid client ID"))?;
                v.push(n as u64);
            }
            ids = Some(v);
            i = args.len();
        } else {
            return Err(errors::SYNTAX.into());
        }
    }
    let me = ctx.client.id;
    let mut text = String::new();
    for h in ctx.server.clients.snapshot() {
        if ids.as_ref().is_some_and(|ids| !ids.contains(&h.id))
            || type_filter.as_ref().is_some_and(|t| !h.is_type(t))
        {
            continue;
        }
        text.push_str(&h.describe((h.id == me).then_some("client|list")));
        text.push('\n');
    }
    ctx.out.verbatim(text.as_bytes());
    Ok(())
}

fn info(ctx: &mut Ctx<'_, '_>, _args: &[Bytes]) -> CmdResult {
    let mut text = ctx.client.handle.describe(Some("client|info"));
    text.push('\n');
    ctx.out.verbatim(text.as_bytes());
    Ok(())
}

/// One CLIENT KILL filter; a client is killed when all of them match.
type ClientFilter = Box<dyn Fn(&crate::clients::ClientHandle) -> bool>;

fn kill(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let clients = ctx.server.clients.snapshot();
    let me = ctx.client.id;
    // Old form: CLIENT KILL addr:port → OK or an error.
    if args.len() == 3 {
        let addr = String::from_utf8_lossy(&args[2]);
        let Some(h) = clients.iter().find(|h| h.addr.to_string() == addr) else {
            return Err("ERR No such client".into());
        };
        h.kill();
        if h.id == me {
            ctx.outcome = Outcome::Close;
        }
        ctx.out.ok();
        return Ok(());
    }
    let mut filters: Vec<ClientFilter> = Vec::new();
    let mut skip_me = true;
    let mut i = 2;
    while i < args.len() {
        let Some(v) = args.get(i + 1) else {
            return Err(errors::SYNTAX.into());
        };
        let text = String::from_utf8_lossy(v).into_owned();
        if is(&args[i], "ID") {
            let id = parse_i64(v)
                .ok()
                .filter(|n| *n > 0)
                .ok_or(CmdError::from("ERR client-id should be greater than 0"))?;
            filters.push(Box::new(move |h| h.id == id as u64));
        } else if is(&args[i], "ADDR") {
            filters.push(Box::new(move |h| h.addr.to_string() == text));
        } else if is(&args[i], "LADDR") {
            filters.push(Box::new(move |h| h.laddr.to_string() == text));
        } else if is(&args[i], "TYPE") {
            if !["normal", "master", "replica", "slave", "pubsub"]
                .iter()
                .any(|n| is(v, n))
            {
                return Err(format!("ERR Unknown client type '{text}'").into());
            }
            let kind = v.clone();
            filters.push(Box::new(move |h| h.is_type(&kind)));
        } else if is(&args[i], "USER") {
            filters.push(Box::new(move |_| text == "default"));
        } else if is(&args[i], "SKIPME") {
            skip_me = if is(v, "yes") {
                true
            } else if is(v, "no") {
                false
            } else {
                return Err(errors::SYNTAX.into());
            };
        } else if is(&args[i], "MAXAGE") {
            let age = parse_i64(v)?;
            filters.push(Box::new(move |h| {
                h.created.elapsed().as_secs() as i64 >= age
            }));
        } else {
            return Err(errors::SYNTAX.into());
        }
        i += 2;
    }
    let mut killed = 0;
    for h in clients {
        if (skip_me && h.id == me) || h.is_killed() || !filters.iter().all(|f| f(&h)) {
            continue;
        }
        h.kill();
        if h.id == me {
            ctx.outcome = Outcome::Close;
        }
        killed += 1;
    }
    ctx.out.int(killed);
    Ok(())
}

fn pause(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let ms = parse_i64(&args[2])
        .map_err(|_| CmdError::from("ERR timeout is not an integer or out of range"))?;
    if ms < 0 {
        return Err("ERR timeout is negative".into());
    }
    let kind = match args.get(3) {
        None => PauseKind::All,
        Some(a) if is(a, "ALL") => PauseKind::All,
        Some(a) if is(a, "WRITE") => PauseKind::Write,
        Some(_) => return Err("ERR CLIENT PAUSE mode must be WRITE or ALL".into()),
    };
    if args.len() > 4 {
        return Err(errors::SYNTAX.into());
    }
    ctx.server
        .pause
        .pause(kind, Instant::now() + Duration::from_millis(ms as u64));
    ctx.out.ok();
    Ok(())
}

fn unpause(ctx: &mut Ctx<'_, '_>, _args: &[Bytes]) -> CmdResult {
    ctx.server.pause.unpause();
    ctx.out.ok();
    Ok(())
}

fn unblock(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let id = parse_i64(&args[2])?;
    let error = match args.get(3) {
        None => false,
        Some(a) if is(a, "TIMEOUT") => false,
        Some(a) if is(a, "ERROR") => true,
        Some(_) => return Err("ERR CLIENT UNBLOCK reason should be TIMEOUT or ERROR".into()),
    };
    if args.len() > 4 {
        return Err(errors::SYNTAX.into());
    }
    match ctx.db.blocked.remove(id as u64) {
        Some(w) => {
            let reply = if error {
                bytes::Bytes::from_static(b"-UNBLOCKED client unblocked via CLIENT UNBLOCK\r\n")
            } else {
                w.timeout_reply.clone()
            };
            let _ = w.reply.send(reply);
            ctx.out.int(1);
        }
        None => ctx.out.int(0),
    }
    Ok(())
}

fn no_evict(ctx: &mut Ctx<'_, '_>, args: &[Bytes]) -> CmdResult {
    let on = if is(&args[2], "ON") {
        true
    } else if is(&args[2], "OFF") {
        false
    } else {
        return Err(errors::SYNTAX.into());
    };
    ctx.client.handle.info.lock().no_evict = on;
    ctx.out.ok();
    Ok(())
}

fn help(ctx: &mut Ctx<'_, '_>, _args: &[Bytes]) -> CmdResult {
    let lines = [
        "CLIENT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
        "GETNAME",
        "    Return the name of the current connection.",
        "ID",
        "    Return the ID of the current connection.",
        "INFO",
        "    Return information about the current client connection.",
        "KILL <ip:port>",
        "    Kill connection made from <ip:port>.",
        "KILL <option> <value> [<option> <value> [...]]",
        "    Kill connections. Options are: ID, ADDR, LADDR, TYPE, USER, SKIPME, MAXAGE.",
        "LIST [options ...]",
        "    Return information about client connections. Options: TYPE, ID.",
        "UNPAUSE",
        "    Stop the current client pause, resuming traffic.",
        "PAUSE <timeout> [WRITE|ALL]",
        "    Suspend all, or just write, clients for <timeout> milliseconds.",
        "SETNAME <name>",
        "    Assign the name <name> to the current connection.",
        "SETINFO <option> <value>",
        "    Set client meta attr. Options are: LIB-NAME, LIB-VER.",
        "NO-EVICT (ON|OFF)",
        "    Protect current client connection from eviction.",
        "UNBLOCK <clientid> [TIMEOUT|ERROR]",
        "    Unblock the specified blocked client.",
        "HELP",
        "    Print this help.",
    ];
    ctx.out.simples(&lines);
    Ok(())
}
