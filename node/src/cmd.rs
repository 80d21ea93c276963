//! Command dispatch: look the command up in the table, check arity and authentication, run
//! its handler, count it.
//!
//! Handlers write their reply through `ctx.out` and return `Err` for an error reply, so the
//! usual argument checks read as `let n = parse_i64(&args[2])?;`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use lagwise_shared::codec::Request;
use lagwise_shared::command_table::{self, CommandSpec, Flags};
use lagwise_shared::resp::{errors, ReplyWriter};

use crate::connection::ClientState;
use crate::db::Db;
use crate::server::Server;

mod blocking;
mod client;
pub mod cluster;
mod config;
mod hashes;
mod incrfloat;
mod keys;
mod lists;
mod migrate;
pub mod pubsub;
mod replication;
mod server;
mod sets;
mod strings;
pub mod transactions;
mod zsets;

pub use replication::{start_replica, stop_replica};
pub use server::COMPAT_VERSION;

/// What the connection must do after a command.
#[derive(Debug)]
pub enum Outcome {
    Continue,
    /// Write the replies so far, then close (QUIT, SHUTDOWN, CLIENT KILL of oneself).
    Close,
    /// Hold the whole server for this long (DEBUG SLEEP).
    Freeze(Duration),
    /// The command is waiting for data (a blocking pop): wait for its reply.
    Block(Blocking),
    /// WAIT: reply once enough replicas acknowledged, or at the deadline.
    WaitAcks(WaitAcks),
    /// PSYNC/SYNC: the connection becomes this replica's replication stream.
    Replicate(crate::replication::primary::PsyncRequest),
}

#[derive(Debug)]
pub struct WaitAcks {
    pub offset: u64,
    pub replicas: usize,
    pub deadline: Option<tokio::time::Instant>,
}

/// A registered wait: the reply arrives on `reply`; at `deadline` the connection gives up.
#[derive(Debug)]
pub struct Blocking {
    pub reply: tokio::sync::oneshot::Receiver<Bytes>,
    pub deadline: Option<tokio::time::Instant>,
}

/// Everything a handler may touch.
pub struct Ctx<'a, 'w> {
    pub server: &'a std::sync::Arc<Server>,
    pub db: &'a mut Db,
    pub client: &'a mut ClientState,
    pub out: &'a mut ReplyWriter<'w>,
    /// The instant this command runs at, in Unix milliseconds.
    pub now_ms: u64,
    pub outcome: Outcome,
    /// Times the commands of this batch.
    pub clock: &'a mut CommandClock,
}

/// Times the commands of one batch with one clock read each: a command's time runs from the
/// end of the one before it (or from the batch's start), so it covers the command's dispatch
/// and its handler. Start one per batch, once the keyspace lock is held.
#[derive(Debug)]
pub struct CommandClock(Instant);

impl CommandClock {
    pub fn start() -> CommandClock {
        CommandClock(Instant::now())
    }

    /// The time since the last lap (or the start); a new lap begins.
    fn lap(&mut self) -> Duration {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.0);
        self.0 = now;
        elapsed
    }
}

/// An error reply. The text includes its code (`ERR ...`, `WRONGTYPE ...`). Bytes, not
/// text: Valkey echoes a client's bytes back in some errors exactly as they were sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdError(pub Cow<'static, [u8]>);

impl From<&'static str> for CmdError {
    fn from(s: &'static str) -> Self {
        CmdError(Cow::Borrowed(s.as_bytes()))
    }
}

impl From<String> for CmdError {
    fn from(s: String) -> Self {
        CmdError(Cow::Owned(s.into_bytes()))
    }
}

impl From<Vec<u8>> for CmdError {
    fn from(s: Vec<u8>) -> Self {
        CmdError(Cow::Owned(s))
    }
}

pub type CmdResult = Result<(), CmdError>;
pub type Handler = fn(&mut Ctx<'_, '_>, &[Bytes]) -> CmdResult;

/// Every command the node implements: its handler and its slot in [`CommandStats`], by table
/// name. Dispatch finds both with one lookup.
struct Dispatch {
    by_name: HashMap<&'static str, (Handler, usize)>,
    /// Table names by slot.
    names: Vec<&'static str>,
}

fn dispatch() -> &'static Dispatch {
    static DISPATCH: OnceLock<Dispatch> = OnceLock::new();
    DISPATCH.get_or_init(|| {
        let mut m: HashMap<&'static str, Handler> = HashMap::new();
        strings::register(&mut m);
        keys::register(&mut m);
        server::register(&mut m);
        client::register(&mut m);
        config::register(&mut m);
        hashes::register(&mut m);
        lists::register(&mut m);
        sets::register(&mut m);
        zsets::register(&mut m);
        transactions::register(&mut m);
        pubsub::register(&mut m);
        blocking::register(&mut m);
        replication::register(&mut m);
        migrate::register(&mut m);
        cluster::register(&mut m);
        let mut names: Vec<&'static str> = m.keys().copied().collect();
        names.sort_unstable();
        let by_name = names
            .iter()
            .enumerate()
            .filter_map(|(slot, name)| m.get(name).map(|h| (*name, (*h, slot))))
            .collect();
        Dispatch { by_name, names }
    })
}

/// Whether the node implements `name` (a table name such as "get" or "client|list").
pub fn implemented(name: &str) -> bool {
    dispatch().by_name.contains_key(name)
}

/// Calls and time per command, what INFO commandstats reports (and `/metrics` here). One
/// slot per implemented command.
///
/// Counted as Redis 7.0 counts them: a call is a run of the handler (a command queued by
/// MULTI is counted when EXEC runs it); a call whose handler returned an error is also a
/// failed call; a command refused before its handler ran (arity, authentication, a cluster
/// redirect, a replica's READONLY, not allowed in this context) is a rejected call, not a
/// call. Unknown commands are not counted.
///
/// Commands run under the keyspace lock, one at a time, so the counters are bumped with a
/// plain load and store rather than a read-modify-write: the lock orders the writers, and
/// readers (a scrape) only ever see a value some writer stored.
pub struct CommandStats {
    slots: Box<[CommandCounters]>,
}

#[derive(Default)]
struct CommandCounters {
    calls: AtomicU64,
    nanos: AtomicU64,
    rejected: AtomicU64,
    failed: AtomicU64,
}

/// One command's counts, as read by [`CommandStats::snapshot`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandCount {
    /// The table name ("set", "client|list").
    pub name: &'static str,
    pub calls: u64,
    /// Time spent running it, in nanoseconds (see [`CommandClock`]).
    pub nanos: u64,
    /// Refused before the handler ran (Redis's `rejected_calls`).
    pub rejected: u64,
    /// Calls whose handler replied with an error (Redis's `failed_calls`).
    pub failed: u64,
}

/// What became of a request, for its command's counters (see [`CommandStats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Counted {
    /// Not counted: an unknown command, or one queued by MULTI.
    Not,
    /// Refused before its handler ran; the command's slot.
    Rejected(usize),
    /// Its handler ran; the command's slot, and whether it returned an error.
    Ran { slot: usize, failed: bool },
}

impl Default for CommandStats {
    fn default() -> Self {
        CommandStats {
            slots: dispatch()
                .names
                .iter()
                .map(|_| CommandCounters::default())
                .collect(),
        }
    }
}

impl std::fmt::Debug for CommandStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandStats")
            .field("commands", &self.slots.len())
            .finish()
    }
}

impl CommandStats {
    fn record(&self, counted: Counted, elapsed: Duration) {
        let bump = |counter: &AtomicU64, n: u64| {
            counter.store(
                counter.load(Ordering::Relaxed).wrapping_add(n),
                Ordering::Relaxed,
            )
        };
        match counted {
            Counted::Not => {}
            Counted::Rejected(slot) => {
                if let Some(c) = self.slots.get(slot) {
                    bump(&c.rejected, 1);
                }
            }
            Counted::Ran { slot, failed } => {
                if let Some(c) = self.slots.get(slot) {
                    bump(&c.calls, 1);
                    bump(&c.nanos, elapsed.as_nanos() as u64);
                    if failed {
                        bump(&c.failed, 1);
                    }
                }
            }
        }
    }

    /// The commands called or rejected at least once, in name order.
    pub fn snapshot(&self) -> Vec<CommandCount> {
        dispatch()
            .names
            .iter()
            .zip(self.slots.iter())
            .filter_map(|(&name, c)| {
                let count = CommandCount {
                    name,
                    calls: c.calls.load(Ordering::Relaxed),
                    nanos: c.nanos.load(Ordering::Relaxed),
                    rejected: c.rejected.load(Ordering::Relaxed),
                    failed: c.failed.load(Ordering::Relaxed),
                };
                // A failed call is a call too.
                (count.calls > 0 || count.rejected > 0).then_some(count)
            })
            .collect()
    }

    /// CONFIG RESETSTAT.
    pub fn reset(&self) {
        for c in self.slots.iter() {
            for counter in [&c.calls, &c.nanos, &c.rejected, &c.failed] {
                counter.store(0, Ordering::Relaxed);
            }
        }
    }
}

/// Whether the request is a write, for CLIENT PAUSE WRITE. Unknown commands are not.
pub fn is_write_request(req: &Request) -> bool {
    command_table::lookup(req.name()).is_some_and(|spec| {
        spec.flags.contains(Flags::WRITE) || spec.flags.contains(Flags::MAY_REPLICATE)
    })
}

/// Valkey formats these with C's `%.*s`: at most `max` bytes, and nothing after a NUL.
fn c_str(arg: &[u8], max: usize) -> &[u8] {
    let end = arg
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(arg.len())
        .min(max);
    &arg[..end]
}

fn unknown_command(args: &[Bytes]) -> CmdError {
    let mut msg = b"ERR unknown command '".to_vec();
    msg.extend_from_slice(c_str(&args[0], 128));
    msg.extend_from_slice(b"', with args beginning with: ");
    // Arguments are quoted one by one until 128 bytes of them have been written.
    let mut quoted = Vec::new();
    for a in args.iter().skip(1) {
        if quoted.len() >= 128 {
            break;
        }
        let room = 128 - quoted.len();
        quoted.push(b'\'');
        quoted.extend_from_slice(c_str(a, room));
        quoted.extend_from_slice(b"' ");
    }
    msg.extend_from_slice(&quoted);
    msg.into()
}

pub fn wrong_arity(name: &str) -> CmdError {
    format!("ERR wrong number of arguments for '{name}' command").into()
}

/// Finds the spec that governs this request: the command's, or its subcommand's.
fn resolve(args: &[Bytes]) -> Result<&'static CommandSpec, CmdError> {
    let spec = command_table::lookup(&args[0])
        .filter(|s| implemented(s.name) || !s.subcommands.is_empty())
        .ok_or_else(|| unknown_command(args))?;
    if spec.subcommands.is_empty() {
        return Ok(spec);
    }
    let Some(sub_name) = args.get(1) else {
        // A container that also runs bare (COMMAND) is its own spec.
        if implemented(spec.name) {
            return Ok(spec);
        }
        return Err(wrong_arity(spec.name));
    };
    match spec.subcommand(sub_name).filter(|s| implemented(s.name)) {
        Some(sub) => Ok(sub),
        None => {
            let mut msg = b"ERR unknown subcommand '".to_vec();
            msg.extend_from_slice(c_str(sub_name, 128));
            msg.extend_from_slice(
                format!("'. Try {} HELP.", spec.name.to_ascii_uppercase()).as_bytes(),
            );
            Err(msg.into())
        }
    }
}

/// Runs one request, writing its reply; inside MULTI, queues it. Returns the command's table
/// name, if it was known. A command that ran is counted, with the time since `ctx.clock`'s
/// last lap (see [`CommandClock`]); one refused before it ran is counted as rejected.
pub fn execute(ctx: &mut Ctx<'_, '_>, req: &Request) -> Option<&'static str> {
    let (name, counted) = run(ctx, req);
    let elapsed = ctx.clock.lap();
    ctx.server.command_stats.record(counted, elapsed);
    name
}

/// The slot of command `name` in [`CommandStats`], if the node implements it.
/// [`execute`] without the counting: the table name, if known, and what to count.
fn run(ctx: &mut Ctx<'_, '_>, req: &Request) -> (Option<&'static str>, Counted) {
    let args = &req.args[..];
    let resolved = resolve(args);
    // The handler and counters, looked up once: refused before running, a command we know
    // is counted against it.
    let entry = resolved
        .as_ref()
        .ok()
        .and_then(|spec| dispatch().by_name.get(spec.name).copied());
    let rejected = entry.map_or(Counted::Not, |(_, slot)| Counted::Rejected(slot));
    let checked = resolved.and_then(|spec| {
        if !ctx.client.authenticated && !spec.flags.contains(Flags::NO_AUTH) {
            Err(errors::NOAUTH.into())
        } else if !spec.arity_ok(args.len()) {
            Err(wrong_arity(spec.name))
        } else {
            Ok(spec)
        }
    });
    if let Ok(spec) = checked {
        if ctx.client.protocol == lagwise_shared::resp::Protocol::Resp2
            && ctx.client.subscriptions.is_subscribed()
            && !pubsub::allowed_while_subscribed(spec.name)
        {
            fail(
                ctx,
                format!(
                    "ERR Can't execute '{}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context",
                    spec.name
                )
                .into(),
            );
            return (Some(spec.name), rejected);
        }
    }
    // In cluster mode, keys served elsewhere are redirected before anything else happens
    // (inside MULTI too: a redirected command dooms the transaction, as in Valkey).
    let checked = checked.and_then(|spec| {
        if ctx.db.cluster.is_some() {
            cluster::check(ctx, spec, args)?;
        }
        Ok(spec)
    });
    if ctx.client.asking && !matches!(checked, Ok(s) if s.name == "asking") {
        ctx.client.asking = false;
    }
    let in_multi = ctx.client.multi.is_some();
    let spec = match checked {
        Ok(spec) => spec,
        Err(e) => {
            // A command that cannot even be queued dooms the transaction.
            if let Some(m) = ctx.client.multi.as_mut() {
                m.aborted = true;
            }
            fail(ctx, e);
            return (None, rejected);
        }
    };
    if in_multi && !transactions::runs_inside_multi(spec.name) {
        let Some(m) = ctx.client.multi.as_mut() else {
            return (None, Counted::Not);
        };
        if spec.flags.contains(Flags::NO_MULTI) {
            m.aborted = true;
            fail(ctx, "ERR Command not allowed inside a transaction".into());
            return (Some(spec.name), rejected);
        }
        m.queued.push(req.clone());
        ctx.out.simple("QUEUED");
        return (Some(spec.name), Counted::Not);
    }
    let Some((handler, slot)) = entry else {
        fail(ctx, unknown_command(args));
        return (None, Counted::Not);
    };
    if let Err(e) = role_allows(ctx, spec) {
        fail(ctx, e);
        return (Some(spec.name), rejected);
    }
    let dirty = ctx.db.dirty;
    let explicit = ctx.db.repl.explicit_count();
    let result = handler(ctx, args);
    let failed = result.is_err();
    if let Err(e) = result {
        fail(ctx, e);
    }
    // A write that changed something goes to the stream as sent, unless it staged its own
    // form of the change (see `propagate`).
    if ctx.db.dirty != dirty
        && ctx.db.repl.explicit_count() == explicit
        && spec.flags.contains(Flags::WRITE)
    {
        ctx.db.repl.verbatim(args);
    }
    (Some(spec.name), Counted::Ran { slot, failed })
}

/// What a replica (or a primary short of good replicas) refuses, with Valkey's errors.
fn role_allows(ctx: &Ctx<'_, '_>, spec: &CommandSpec) -> CmdResult {
    let repl = &ctx.server.repl;
    if ctx.client.is_primary_link {
        return Ok(());
    }
    if repl.is_replica() {
        if spec.flags.contains(Flags::WRITE)
            && ctx.server.config.read().get_bool("replica-read-only")
        {
            return Err("READONLY You can't write against a read only replica.".into());
        }
        if !repl.link_up()
            && !spec.flags.contains(Flags::STALE)
            && !ctx
                .server
                .config
                .read()
                .get_bool("replica-serve-stale-data")
        {
            return Err(
                "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'."
                    .into(),
            );
        }
    } else if spec.flags.contains(Flags::WRITE) && !repl.enough_good_replicas() {
        return Err("NOREPLICAS Not enough good replicas to write.".into());
    }
    Ok(())
}

fn fail(ctx: &mut Ctx<'_, '_>, e: CmdError) {
    ctx.out.error(&e.0);
}

// ---- argument helpers shared by the command families ----

/// An integer argument, as Valkey parses it (`string2ll`: strict, no spaces, no '+').
pub fn parse_i64(arg: &[u8]) -> Result<i64, CmdError> {
    crate::value::parse_i64_strict(arg).ok_or(CmdError::from(errors::NOT_INTEGER))
}

/// A float argument, as Valkey parses it (`strtold`, rejecting NaN, spaces and empties).
pub fn parse_f64(arg: &[u8]) -> Result<f64, CmdError> {
    let s = std::str::from_utf8(arg).map_err(|_| CmdError::from(errors::NOT_FLOAT))?;
    if s.is_empty() || s.starts_with(char::is_whitespace) || s.ends_with(char::is_whitespace) {
        return Err(errors::NOT_FLOAT.into());
    }
    let v: f64 = match s.to_ascii_lowercase().as_str() {
        "inf" | "+inf" | "infinity" | "+infinity" => f64::INFINITY,
        "-inf" | "-infinity" => f64::NEG_INFINITY,
        _ => s.parse().map_err(|_| CmdError::from(errors::NOT_FLOAT))?,
    };
    if v.is_nan() {
        return Err(errors::NOT_FLOAT.into());
    }
    Ok(v)
}

/// Case-insensitive comparison of an argument with an option name.
pub fn is(arg: &[u8], name: &str) -> bool {
    arg.eq_ignore_ascii_case(name.as_bytes())
}
