//! One client session: frame its requests, plan each one (answer locally, forward to a slot's
//! owner, split across slots, fan out to every primary), and write the replies strictly in
//! request order while many requests are in flight at once.
//!
//! Planning is sequential, in request order, so state a command changes (HELLO's protocol,
//! MULTI's queue) applies to exactly the requests after it; execution is concurrent: each
//! request becomes a future, and the futures are awaited in order (`FuturesOrdered`), so a slow
//! shard delays only the replies behind it on this connection, never other clients.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::future::{self, BoxFuture, FutureExt};
use futures::stream::{FuturesOrdered, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use lagwise_shared::codec::{make_room, DecodeError, Decoded, Frame, Request, RequestDecoder};
use lagwise_shared::command_table::{self, CommandSpec, Flags};
use lagwise_shared::resp::{Protocol as WireProtocol, ReplyWriter};
use lagwise_shared::shutdown::Shutdown;
use lagwise_shared::slot::slot;
use lagwise_shared::topology::{NodeAddr, Topology};

use crate::auth;
use crate::backend::BackendConn;
use crate::batch::{Batch, ChainStart, Target};
use crate::chain::{self, Shown};
use crate::config::HedgeAfter;
use crate::freshness::{Choice, ReadPolicy, ReadPrefs, Seen, Served};
use crate::latency::Backend;
use crate::metrics::{self, ErrorKind, Metrics, ReadReason, Route};
use crate::reply::{self, encode, Protocol};
use crate::route::{Proxy, Read, ReadPlan};
use crate::subscription::Link;

/// Requests a session may have in flight before it stops reading more.
const MAX_IN_FLIGHT: usize = 1024;
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Counts sessions (INFO, metrics, `max_clients`). The accept loop counts a client in before
/// its session task first runs, so that clients accepted in a burst all count against the
/// limit; the session counts itself out when it ends.
pub static CONNECTED: AtomicU64 = AtomicU64::new(0);
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A transaction being queued: the commands, their slot, and whether one was refused.
struct Multi {
    queued: Vec<Vec<Bytes>>,
    slot: Option<u16>,
    aborted: bool,
}

/// The connection a client's WATCH lives on, opened at the first WATCH and closed by EXEC,
/// DISCARD, UNWATCH or RESET (closing it drops the watches on the node too). Everything of the
/// transaction goes through it, in request order.
struct Pinned {
    slot: u16,
    addr: lagwise_shared::topology::NodeAddr,
    conn: Arc<tokio::sync::OnceCell<crate::backend::BackendConn>>,
}

impl Pinned {
    async fn get(
        &self,
        proxy: &Proxy,
        protocol: Protocol,
    ) -> Result<crate::backend::BackendConn, crate::backend::BackendError> {
        self.conn
            .get_or_try_init(|| proxy.pool.dedicated(&self.addr, protocol))
            .await
            .cloned()
    }
}

/// The latest read of a connection on one shard (monotonic reads): where it was sent and
/// what it will have shown.
struct ReadTail {
    /// None: not known at planning (decided later), or no node (-NOREPLICA).
    planned: Option<Served>,
    /// Sent as soon as it runs (not waiting for the read before it).
    immediate: bool,
    done: Shown,
}

/// The replica a read that showed `seen` was answered by: the next read's sticky choice.
fn sticky(seen: Option<&Seen>) -> Option<&'static Backend> {
    seen.and_then(|s| s.by.replica())
}

struct Session {
    id: u64,
    /// This session's lane of the backend pool (on its thread's connections).
    lane: usize,
    protocol: Protocol,
    name: Option<Bytes>,
    lib_name: Option<Bytes>,
    lib_ver: Option<Bytes>,
    multi: Option<Multi>,
    pinned: Option<Arc<Pinned>>,
    closing: bool,
    /// Channel and pattern subscriptions, on a connection of their own.
    link: Option<Link>,
    link_frames: Option<mpsc::Receiver<Bytes>>,
    /// Shard-channel subscriptions, on the owner of their slot.
    shard_link: Option<(u16, Link)>,
    shard_frames: Option<mpsc::Receiver<Bytes>>,
    /// Read policy and bounds set by `PROXY READPOLICY`; None: the proxy's (live) defaults.
    prefs: Option<ReadPrefs>,
    /// The last read was made under the `primary` policy (outside the chains).
    primary_reads: bool,
    /// Set by `plan` for the request being planned: its family and route for the metrics
    /// (route None: a replica-policy read, counted when it knows where it was answered).
    family: usize,
    route: Option<Route>,
    arrived: Instant,
    /// Authenticated (always, when the proxy has no users), and allowed admin commands.
    authed: bool,
    admin: bool,
    /// Per shard (by primary address), the latest read under a replica policy (hashbrown's
    /// map: its hasher costs every such read less than std's).
    reads: hashbrown::HashMap<lagwise_shared::topology::NodeAddr, ReadTail>,
    /// What reads outside the chains may have shown (reads made under the `primary` policy,
    /// before a switch to a replica policy).
    base_seen: Option<Seen>,
    /// This session's lane connections by node (and read-only or not), for batched
    /// requests (in `conns_protocol`).
    conns: Vec<(NodeAddr, bool, BackendConn)>,
    conns_protocol: Protocol,
    /// The table entries (and metric families) of the commands looked up last, by their
    /// names as sent (most clients send a few commands, always spelled the same).
    recent: [RecentCommand; 4],
    next_recent: usize,
}

#[derive(Clone, Copy, Default)]
struct RecentCommand {
    len: usize,
    name: [u8; 16],
    spec: Option<&'static CommandSpec>,
    family: usize,
}

impl Session {
    /// Back to a new connection's state: authenticated only if the proxy has no users.
    fn deauthenticate(&mut self, proxy: &Proxy) {
        let open = !proxy.live.load().users.required();
        self.authed = open;
        self.admin = open;
    }

    /// The read policy and bounds in force: the connection's own, or the proxy's defaults as
    /// a reload last set them.
    fn prefs(&self, proxy: &Proxy) -> ReadPrefs {
        self.prefs.unwrap_or_else(|| proxy.fresh.defaults())
    }

    /// In RESP2 a subscribed client may only (un)subscribe, PING, QUIT or RESET.
    fn subscribed_resp2(&self) -> bool {
        self.protocol == Protocol::Resp2
            && (self.link.as_ref().is_some_and(|l| l.subscribed())
                || self
                    .shard_link
                    .as_ref()
                    .is_some_and(|(_, l)| l.subscribed()))
    }
}

async fn next_frame(rx: &mut Option<mpsc::Receiver<Bytes>>) -> Option<Bytes> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

type Reply = BoxFuture<'static, Bytes>;

fn ready(b: Bytes) -> Reply {
    future::ready(b).boxed()
}

fn err(msg: &str) -> Reply {
    ready(reply::error(msg))
}

/// Serves one client until it leaves or the proxy shuts down; `thread`: the client thread this
/// runs on, whose backend connections it uses.
pub async fn serve(proxy: Arc<Proxy>, stream: TcpStream, mut shutdown: Shutdown, thread: usize) {
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let mut session = Session {
        id,
        lane: proxy.pool.lane(thread, id),
        protocol: Protocol::Resp2,
        name: None,
        lib_name: None,
        lib_ver: None,
        multi: None,
        pinned: None,
        closing: false,
        link: None,
        link_frames: None,
        shard_link: None,
        shard_frames: None,
        prefs: None,
        primary_reads: false,
        family: metrics::FAMILY_OTHER,
        route: None,
        arrived: Instant::now(),
        authed: false,
        admin: false,
        reads: hashbrown::HashMap::new(),
        base_seen: None,
        conns: Vec::new(),
        conns_protocol: Protocol::Resp2,
        recent: [RecentCommand::default(); 4],
        next_recent: 0,
    };
    session.deauthenticate(&proxy);
    let live = proxy.live.load_full();
    let mut decoder = RequestDecoder::new(live.max_request_bytes);
    let idle_timeout = live.client_idle_timeout;
    let mut last_active = Instant::now();
    let mut input = BytesMut::with_capacity(16 * 1024);
    let mut output = BytesMut::with_capacity(16 * 1024);
    let mut in_flight: FuturesOrdered<Reply> = FuturesOrdered::new();
    // Beside each entry in flight: its requests' arrival, route and number, observed when
    // its reply is ready; and the number of requests owed in all.
    let mut timings: VecDeque<Timing> = VecDeque::new();
    let mut owed = 0usize;
    let m = metrics::get();
    // Made once, not per turn of the loop: each would register with the timer wheel or the
    // shutdown channel and deregister again.
    let idle = tokio::time::sleep(if idle_timeout.is_zero() {
        Duration::from_secs(86400 * 365)
    } else {
        idle_timeout
    });
    tokio::pin!(idle);
    let shutdown_signal = shutdown.wait();
    tokio::pin!(shutdown_signal);
    let mut batch = Batch::default();
    loop {
        if session.closing && in_flight.is_empty() {
            break;
        }
        make_room(&mut input);
        tokio::select! {
            biased;
            Some(r) = in_flight.next(), if !in_flight.is_empty() => {
                output.extend_from_slice(&r);
                let now = Instant::now();
                owed -= observe(m, &mut timings, now);
                // Whatever else is already done goes out in the same write.
                while let Some(Some(r)) = in_flight.next().now_or_never() {
                    output.extend_from_slice(&r);
                    owed -= observe(m, &mut timings, now);
                }
                match tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(&output)).await {
                    Ok(Ok(())) => output.clear(),
                    _ => break,
                }
            }
            r = rd.read_buf(&mut input), if !session.closing && owed < MAX_IN_FLIGHT => {
                match r {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let arrived = Instant::now();
                last_active = arrived;
                session.arrived = arrived;
                // One map for the whole read: a MOVED meanwhile is followed per request.
                let topology = proxy.topology.load();
                loop {
                    let req = match decoder.decode_frame(&mut input) {
                        Ok(Some(Decoded::Frame(f))) => {
                            if batched(&proxy, &mut session, &f, topology.as_deref(), &mut batch) {
                                continue;
                            }
                            f.into_request()
                        }
                        Ok(Some(Decoded::Request(r))) => r,
                        Ok(None) => break,
                        Err(DecodeError::Protocol(e)) => {
                            flush(&proxy, &session, &mut batch, &mut in_flight, &mut timings, &mut owed, arrived);
                            m.error(ErrorKind::ClientProtocol);
                            timings.push_back(Timing { arrived, route: None, requests: 1 });
                            owed += 1;
                            in_flight.push_back(err(&format!("ERR Protocol error: {}", e.0)));
                            session.closing = true;
                            break;
                        }
                        Err(DecodeError::Io(_)) => {
                            session.closing = true;
                            break;
                        }
                    };
                    // Sent after the batched requests before it, in order.
                    flush(&proxy, &session, &mut batch, &mut in_flight, &mut timings, &mut owed, arrived);
                    let spec = session.command(&req.args[0]).map(|(spec, _)| spec);
                    if spec.is_none()
                        && session.authed
                        && !req.args[0].eq_ignore_ascii_case(b"PROXY")
                    {
                        // Learned before planning, so it keeps its place in order.
                        let name = req.args[0].to_ascii_lowercase();
                        proxy.commands.learn(&proxy, &name, session.lane).await;
                    }
                    session.family = metrics::FAMILY_OTHER;
                    session.route = Some(Route::Local);
                    let fut = plan(&proxy, &mut session, req, spec);
                    if let Some(route) = session.route {
                        m.request(session.family, route);
                    }
                    timings.push_back(Timing { arrived, route: session.route, requests: 1 });
                    owed += 1;
                    in_flight.push_back(fut);
                    if session.closing {
                        break;
                    }
                }
                flush(&proxy, &session, &mut batch, &mut in_flight, &mut timings, &mut owed, arrived);
            }
            // Pushes from the subscription links go out once the replies ahead are written.
            Some(frame) = next_frame(&mut session.link_frames), if in_flight.is_empty() => {
                if let Some(l) = session.link.as_mut() {
                    l.observe(&frame, session.protocol);
                }
                if write_frame(&mut wr, &frame).await.is_err() {
                    break;
                }
            }
            Some(frame) = next_frame(&mut session.shard_frames), if in_flight.is_empty() => {
                if let Some((_, l)) = session.shard_link.as_mut() {
                    l.observe(&frame, session.protocol);
                }
                if write_frame(&mut wr, &frame).await.is_err() {
                    break;
                }
            }
            // Idle: nothing asked, nothing owed, no subscription (as Valkey's `timeout`). The
            // timer is moved on only when it fires early, not on every request.
            _ = &mut idle,
                if !idle_timeout.is_zero()
                    && in_flight.is_empty()
                    && session.link.is_none()
                    && session.shard_link.is_none() =>
            {
                let due = last_active + idle_timeout;
                if Instant::now() >= due {
                    break;
                }
                idle.as_mut().reset(due.into());
            }
            _ = &mut shutdown_signal, if !session.closing => {
                // Finish what was asked, then close.
                session.closing = true;
            }
        }
    }
    let _ = wr.shutdown().await;
    CONNECTED.fetch_sub(1, Ordering::Relaxed);
}

/// Counts `n` reads under `policy` sent to the primary because of the policy (or before a
/// map is known).
fn count_policy_reads(proxy: &Proxy, policy: ReadPolicy, n: u64) {
    proxy
        .fresh
        .counters
        .reads_primary
        .fetch_add(n, Ordering::Relaxed);
    metrics::get().read_n(
        policy as usize,
        metrics::ReadTarget::Primary,
        metrics::ReadReason::Policy,
        n,
    );
}

/// When the requests of one entry in flight arrived, where they went (None: counted
/// elsewhere), and how many they are.
struct Timing {
    arrived: Instant,
    route: Option<Route>,
    requests: usize,
}

/// Records the reply time of the oldest entry in flight; returns its number of requests.
fn observe(m: &Metrics, timings: &mut VecDeque<Timing>, now: Instant) -> usize {
    let Some(t) = timings.pop_front() else {
        return 0;
    };
    if let Some(route) = t.route {
        let d = now.saturating_duration_since(t.arrived);
        for _ in 0..t.requests {
            m.duration(route, d);
        }
    }
    t.requests
}

/// Puts the batched requests in flight, as one entry.
fn flush(
    proxy: &Arc<Proxy>,
    s: &Session,
    batch: &mut Batch,
    in_flight: &mut FuturesOrdered<Reply>,
    timings: &mut VecDeque<Timing>,
    owed: &mut usize,
    arrived: Instant,
) {
    if batch.is_empty() {
        return;
    }
    let requests = batch.len();
    // The batch records its reply times itself (its replica reads learn their route late).
    timings.push_back(Timing {
        arrived,
        route: None,
        requests,
    });
    *owed += requests;
    let batch = std::mem::take(batch);
    in_flight.push_back(batch.run(proxy.clone(), s.protocol, s.lane).boxed());
}

/// The fast path of `plan`: a known command with one key, to be sent as it arrived to the
/// slot's primary on a connection this session's lane has open, with nothing to plan (no
/// transaction, subscription, read chain or split), joins the batch. False: plan it.
fn batched(
    proxy: &Proxy,
    s: &mut Session,
    f: &Frame,
    topology: Option<&Topology>,
    batch: &mut Batch,
) -> bool {
    if !s.authed
        || s.closing
        || s.multi.is_some()
        || s.pinned.is_some()
        || s.link.is_some()
        || s.shard_link.is_some()
        || f.argc() < 2
    {
        return false;
    }
    let Some((spec, family)) = s.command(f.arg(0)) else {
        return false;
    };
    let special = Flags::ADMIN
        .union(Flags::BLOCKING)
        .union(Flags::PUBSUB)
        .union(Flags::MOVABLE_KEYS);
    if spec.first_key != 1
        || spec.last_key != 1
        || !spec.subcommands.is_empty()
        || spec.flags.intersects(special)
        || !spec.arity_ok(f.argc())
    {
        return false;
    }
    let write = spec.flags.contains(Flags::WRITE);
    let read = spec.flags.contains(Flags::READONLY) && !write;
    let prefs = if read || write {
        Some(s.prefs(proxy))
    } else {
        None
    };
    let Some(topology) = topology else {
        return false;
    };
    let slot = slot(f.arg(1));
    let Some(primary) = topology.primary_of_slot(slot) else {
        return false;
    };
    let arrived = s.arrived;
    match prefs {
        Some(prefs) if read && prefs.policy != ReadPolicy::Primary => {
            return batched_read(proxy, s, f, slot, primary, prefs, family, batch);
        }
        // A write under a replica policy with read-your-writes joins its shard's chain.
        Some(prefs) if write && prefs.policy != ReadPolicy::Primary && prefs.read_your_writes => {
            return false;
        }
        _ => {}
    }
    let Some(conn) = s.conn(proxy, primary, false) else {
        return false;
    };
    let m = metrics::get();
    m.request(family, Route::Primary);
    if read {
        s.primary_reads = true;
        count_policy_reads(proxy, ReadPolicy::Primary, 1);
    }
    batch.push(&conn, slot, write, f.raw.clone(), family, arrived);
    true
}

/// A read under a replica policy, batched when it can be decided now and needs one reply from
/// one node: the shard's previous read has completed (or is in this batch, to the same node),
/// the chooser picks a replica with no offset check or the primary, and hedging is off.
#[allow(clippy::too_many_arguments)]
fn batched_read(
    proxy: &Proxy,
    s: &mut Session,
    f: &Frame,
    slot: u16,
    primary: &NodeAddr,
    prefs: ReadPrefs,
    family: usize,
    batch: &mut Batch,
) -> bool {
    // The shard is in this batch already: its reads follow the first one (the connection's
    // chain there is this batch's).
    if batch.push_chained(primary, slot, &f.raw, family) {
        return true;
    }
    if !matches!(proxy.live.load().hedge.after, HedgeAfter::Off) {
        return false;
    }
    if std::mem::take(&mut s.primary_reads) {
        // As in `read`: what the reads under the primary policy showed is unknown.
        s.reads.clear();
        s.base_seen = Some(Seen::unknown());
    }
    let seen = match s.reads.get(primary) {
        None => s.base_seen.clone(),
        Some(tail) => match tail.done.settled() {
            Some(seen) => seen,
            None => return false,
        },
    };
    // (Not inside WATCH: `batched` leaves pinned sessions to `plan`.)
    let (conn, target, deadline, capture) = match proxy.choose_on(
        primary,
        &prefs,
        seen.as_ref(),
        sticky(seen.as_ref()),
        s.arrived,
    ) {
        Choice::Replica {
            replica,
            deadline,
            precheck: None,
            capture,
        } => {
            let Some(conn) = s.conn(proxy, &replica.addr, true) else {
                return false;
            };
            (conn, Target::Replica(replica), Some(deadline), capture)
        }
        Choice::Primary { capture, slo } => {
            let Some(backend) = proxy.primary_backend(primary) else {
                return false;
            };
            let Some(conn) = s.conn(proxy, primary, false) else {
                return false;
            };
            let reason = if slo {
                ReadReason::Slo
            } else {
                ReadReason::NoFreshReplica
            };
            (conn, Target::Primary(reason, backend), None, capture)
        }
        _ => return false,
    };
    let planned = match &target {
        Target::Replica(replica) => Served::Replica(replica),
        Target::Primary(..) => Served::Primary,
    };
    let read = ChainStart {
        primary: primary.clone(),
        target,
        deadline,
        prefs,
        capture,
        seen,
    };
    let done = batch.push_read(&conn, slot, f.raw.clone(), family, s.arrived, read);
    let tail = ReadTail {
        planned: Some(planned),
        immediate: true,
        done,
    };
    // In place when the shard has a tail: no key to clone (an atomic count on it).
    match s.reads.get_mut(primary) {
        Some(t) => *t = tail,
        None => {
            s.reads.insert(primary.clone(), tail);
        }
    }
    true
}

impl Session {
    /// This session's open lane connection to `addr` (`readonly`: a replica's), if any
    /// (never connects).
    fn conn(&mut self, proxy: &Proxy, addr: &NodeAddr, readonly: bool) -> Option<BackendConn> {
        if self.conns_protocol != self.protocol {
            self.conns.clear();
            self.conns_protocol = self.protocol;
        }
        if let Some(i) = self
            .conns
            .iter()
            .position(|(a, r, _)| *r == readonly && a == addr)
        {
            if self.conns[i].2.is_alive() {
                return Some(self.conns[i].2.clone());
            }
            self.conns.swap_remove(i);
        }
        let conn = proxy.pool.live(addr, self.protocol, readonly, self.lane)?;
        self.conns.push((addr.clone(), readonly, conn.clone()));
        Some(conn)
    }

    /// The table entry of the command named `name` (any case), and its metric family.
    fn command(&mut self, name: &[u8]) -> Option<(&'static CommandSpec, usize)> {
        if let Some(r) = self
            .recent
            .iter()
            .find(|r| r.spec.is_some() && r.len == name.len() && r.name[..r.len] == *name)
        {
            return r.spec.map(|spec| (spec, r.family));
        }
        let spec = command_table::lookup(name)?;
        let family = metrics::family(spec.docs.group);
        if name.len() <= 16 {
            let r = &mut self.recent[self.next_recent];
            r.len = name.len();
            r.name[..name.len()].copy_from_slice(name);
            r.spec = Some(spec);
            r.family = family;
            self.next_recent = (self.next_recent + 1) % self.recent.len();
        }
        Some((spec, family))
    }
}

async fn write_frame(
    wr: &mut tokio::net::tcp::OwnedWriteHalf,
    frame: &[u8],
) -> std::io::Result<()> {
    match tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(frame)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

fn name_of(spec: &CommandSpec) -> &'static str {
    spec.name
}

/// Decides what to do with one request and returns the future of its reply.
/// `spec`: the command's entry in the table, looked up once by the caller.
fn plan(
    proxy: &Arc<Proxy>,
    s: &mut Session,
    req: Request,
    spec: Option<&'static CommandSpec>,
) -> Reply {
    let args = req.args;
    if !s.authed
        && !["auth", "hello", "quit", "reset"]
            .iter()
            .any(|c| args[0].eq_ignore_ascii_case(c.as_bytes()))
    {
        metrics::get().error(ErrorKind::Auth);
        return err("NOAUTH Authentication required.");
    }
    if args[0].eq_ignore_ascii_case(b"PROXY") {
        s.family = metrics::FAMILY_PROXY;
        return proxy_command(proxy, s, &args);
    }
    let Some(spec) = spec else {
        if s.multi.is_none() && s.authed && !s.subscribed_resp2() {
            let name = args[0].to_ascii_lowercase();
            if let Some(Some(learned)) = proxy.commands.get(&name) {
                return plan_learned(proxy, s, &learned, args);
            }
        }
        if let Some(m) = s.multi.as_mut() {
            m.aborted = true;
        }
        metrics::get().error(ErrorKind::UnknownCommand);
        return err(&unknown_command(&args));
    };
    s.family = metrics::family(spec.docs.group);
    if !spec.arity_ok(args.len()) {
        if let Some(m) = s.multi.as_mut() {
            m.aborted = true;
        }
        return err(&format!(
            "ERR wrong number of arguments for '{}' command",
            spec.name
        ));
    }
    let sub = if spec.subcommands.is_empty() {
        None
    } else {
        args.get(1).and_then(|a| spec.subcommand(a))
    };
    let effective = sub.unwrap_or(spec);
    if s.multi.is_some() {
        s.route = Some(if spec.name == "exec" {
            Route::Primary
        } else {
            Route::Local
        });
        return plan_in_multi(proxy, s, spec, effective, args);
    }
    s.route = Some(route_of(spec.name));
    if !s.admin && auth::is_admin_command(spec.name, args.get(1).map(|a| &a[..])) {
        metrics::get().error(ErrorKind::Auth);
        return err(&format!(
            "NOPERM this user has no permissions to run the '{}' command",
            effective.name.replace('|', " ")
        ));
    }
    if s.subscribed_resp2()
        && !matches!(
            spec.name,
            "subscribe"
                | "psubscribe"
                | "ssubscribe"
                | "unsubscribe"
                | "punsubscribe"
                | "sunsubscribe"
                | "ping"
                | "quit"
                | "reset"
        )
    {
        return err(&format!(
            "ERR Can't execute '{}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context",
            effective.name
        ));
    }
    match name_of(spec) {
        "ping" if s.subscribed_resp2() => relay(s, &args),
        "ping" => ready(match args.get(1) {
            None => Bytes::from_static(b"+PONG\r\n"),
            Some(m) => bulk(m),
        }),
        "echo" => ready(bulk(&args[1])),
        "quit" => {
            s.closing = true;
            ready(Bytes::from_static(b"+OK\r\n"))
        }
        "reset" => {
            s.protocol = Protocol::Resp2;
            s.name = None;
            s.multi = None;
            s.pinned = None;
            s.link = None;
            s.link_frames = None;
            s.shard_link = None;
            s.shard_frames = None;
            s.prefs = None;
            s.reads.clear();
            s.base_seen = Some(Seen::unknown());
            s.deauthenticate(proxy);
            ready(Bytes::from_static(b"+RESET\r\n"))
        }
        "select" => ready(match args[1].as_ref() {
            b"0" => Bytes::from_static(b"+OK\r\n"),
            _ => reply::error("ERR SELECT is not allowed in cluster mode"),
        }),
        "hello" => hello(proxy, s, &args),
        "auth" => ready(authenticate(proxy, s, &args[1..])),
        "client" => client(s, &args),
        "info" => ready(info(proxy, s)),
        "multi" => {
            let slot = s.pinned.as_ref().map(|p| p.slot);
            s.multi = Some(Multi {
                queued: Vec::new(),
                slot,
                aborted: false,
            });
            ready(Bytes::from_static(b"+OK\r\n"))
        }
        "exec" => err("ERR EXEC without MULTI"),
        "discard" => err("ERR DISCARD without MULTI"),
        "watch" => watch(proxy, s, effective, args),
        "unwatch" => {
            s.pinned = None;
            ready(Bytes::from_static(b"+OK\r\n"))
        }
        "command" => {
            let lane = s.lane;
            let (p, proto) = (proxy.clone(), s.protocol);
            let payload = encode(&args);
            async move { p.to_any(payload, proto, lane).await }.boxed()
        }
        "dbsize" => sum_over_primaries(proxy, s, &args),
        "flushall" | "flushdb" => {
            let lane = s.lane;
            let (p, proto, payload) = (proxy.clone(), s.protocol, encode(&args));
            async move {
                match p.to_all_primaries(payload, proto, lane).await {
                    Ok(_) => Bytes::from_static(b"+OK\r\n"),
                    Err(e) => e,
                }
            }
            .boxed()
        }
        "keys" => {
            let lane = s.lane;
            let (p, proto, payload) = (proxy.clone(), s.protocol, encode(&args));
            async move {
                match p.to_all_primaries(payload, proto, lane).await {
                    Ok(parts) => concat_arrays(&parts, proto),
                    Err(e) => e,
                }
            }
            .boxed()
        }
        "scan" => scan(proxy, s, &args),
        "publish" => {
            // Every node relays PUBLISH to the whole cluster.
            let lane = s.lane;
            let (p, proto, payload) = (proxy.clone(), s.protocol, encode(&args));
            async move { p.to_any(payload, proto, lane).await }.boxed()
        }
        "spublish" => {
            let lane = s.lane;
            let (p, proto, payload) = (proxy.clone(), s.protocol, encode(&args));
            let sl = slot(&args[1]);
            async move { p.forward(sl, payload, proto, lane, false).await }.boxed()
        }
        "subscribe" | "psubscribe" => subscribe(proxy, s, &args),
        "unsubscribe" | "punsubscribe" => unsubscribe(s, &args, false),
        "ssubscribe" => ssubscribe(proxy, s, &args),
        "sunsubscribe" => unsubscribe(s, &args, true),
        "mget" => mget(proxy, s, &args),
        "mset" => mset(proxy, s, &args),
        "del" | "unlink" | "exists" | "touch" => sum_by_slot(proxy, s, &args),
        _ => keyed(proxy, s, effective, args),
    }
}

/// A command the table does not know but a backend reported (`commands`): routed by its key
/// positions and flags like any keyed command.
fn plan_learned(
    proxy: &Arc<Proxy>,
    s: &mut Session,
    learned: &crate::commands::Learned,
    args: Vec<Bytes>,
) -> Reply {
    let name = String::from_utf8_lossy(&args[0]).to_ascii_lowercase();
    if !learned.arity_ok(args.len()) {
        return err(&format!(
            "ERR wrong number of arguments for '{name}' command"
        ));
    }
    if learned.admin {
        metrics::get().error(ErrorKind::Refused);
        return err(&format!(
            "ERR lagwise: '{name}' is an admin command and is not proxied"
        ));
    }
    let positions = learned.key_positions(args.len());
    if learned.movable_keys && positions.is_empty() {
        return err(&format!(
            "ERR lagwise: cannot route '{name}': its keys are not at fixed positions"
        ));
    }
    let Ok(slot_of) = common_slot(&args, &positions) else {
        return crossslot();
    };
    s.route = Some(Route::Primary);
    let lane = s.lane;
    let (p, proto, payload) = (proxy.clone(), s.protocol, encode(&args));
    match slot_of {
        None => async move { p.to_any(payload, proto, lane).await }.boxed(),
        Some(sl) if learned.blocking => {
            async move { p.dedicated(sl, payload, proto, None).await }.boxed()
        }
        Some(sl) if learned.readonly && !learned.write => read(proxy, s, sl, payload, true),
        Some(sl) => {
            let write = learned.write;
            async move { p.forward(sl, payload, proto, lane, write).await }.boxed()
        }
    }
}

/// Where a command goes, for the metrics (reads may change it to a replica later).
fn route_of(name: &str) -> Route {
    match name {
        "dbsize" | "flushall" | "flushdb" | "keys" | "scan" | "mget" | "mset" | "del"
        | "unlink" | "exists" | "touch" => Route::Fanout,
        "ping" | "echo" | "quit" | "reset" | "select" | "hello" | "auth" | "client" | "info"
        | "multi" | "discard" | "unwatch" | "subscribe" | "psubscribe" | "unsubscribe"
        | "punsubscribe" | "ssubscribe" | "sunsubscribe" => Route::Local,
        _ => Route::Primary,
    }
}

fn unknown_command(args: &[Bytes]) -> String {
    let mut msg = format!(
        "ERR unknown command '{}', with args beginning with: ",
        String::from_utf8_lossy(&args[0])
    );
    for a in args.iter().skip(1).take(8) {
        msg.push_str(&format!("'{}' ", String::from_utf8_lossy(a)));
    }
    msg
}

fn bulk(b: &[u8]) -> Bytes {
    let mut out = BytesMut::new();
    ReplyWriter::new(&mut out, WireProtocol::Resp2).bulk(b);
    out.freeze()
}

fn wire(p: Protocol) -> WireProtocol {
    match p {
        Protocol::Resp2 => WireProtocol::Resp2,
        Protocol::Resp3 => WireProtocol::Resp3,
    }
}

/// The slot all of a command's keys hash to: Ok(None) for a keyless command, Err on keys in
/// different slots.
fn keys_slot(spec: &CommandSpec, args: &[Bytes]) -> Result<Option<u16>, ()> {
    let mut positions = Vec::new();
    spec.key_positions(args, &mut positions);
    common_slot(args, &positions)
}

/// The slot the keys at `positions` all hash to: Ok(None) for none, Err on different slots.
fn common_slot(args: &[Bytes], positions: &[usize]) -> Result<Option<u16>, ()> {
    let mut found: Option<u16> = None;
    for &p in positions {
        let s = slot(&args[p]);
        match found {
            None => found = Some(s),
            Some(f) if f != s => return Err(()),
            _ => {}
        }
    }
    Ok(found)
}

const CROSSSLOT: &str = "CROSSSLOT Keys in request don't hash to the same slot";

fn crossslot() -> Reply {
    metrics::get().error(ErrorKind::CrossSlot);
    err(CROSSSLOT)
}

/// A command routed by its keys: all in one slot, to that slot's owner.
fn keyed(
    proxy: &Arc<Proxy>,
    s: &mut Session,
    spec: &'static CommandSpec,
    args: Vec<Bytes>,
) -> Reply {
    if spec.flags.contains(Flags::ADMIN) {
        metrics::get().error(ErrorKind::Refused);
        return err(&format!(
            "ERR lagwise: '{}' is an admin command and is not proxied",
            spec.name
        ));
    }
    let slot = match keys_slot(spec, &args) {
        Ok(s) => s,
        Err(()) => return crossslot(),
    };
    let lane = s.lane;
    let (p, proto, payload) = (proxy.clone(), s.protocol, encode(&args));
    let write = spec.flags.contains(Flags::WRITE);
    let read_only = spec.flags.contains(Flags::READONLY) && !write;
    match slot {
        None => async move { p.to_any(payload, proto, lane).await }.boxed(),
        Some(sl) if spec.flags.contains(Flags::BLOCKING) => {
            let timeout = blocking_timeout(spec.name, &args);
            async move { p.dedicated(sl, payload, proto, timeout).await }.boxed()
        }
        Some(sl) if read_only => read(proxy, s, sl, payload, true),
        Some(sl) if write => write_chained(proxy, s, sl, payload),
        Some(sl) => async move { p.forward(sl, payload, proto, lane, write).await }.boxed(),
    }
}

/// A read-only command on one slot, routed by the connection's read policy: the primary, or
/// a replica within the bounds (`Proxy::read`). Under a replica policy the connection's reads
/// on each shard form a chain, so that none shows older data than one before it.
///
/// `whole`: the read is the client's whole request (not one part of a split MGET), so it
/// counts itself in the request metrics once it knows where it was answered.
fn read(proxy: &Arc<Proxy>, s: &mut Session, slot: u16, payload: Bytes, whole: bool) -> Reply {
    let (p, proto, lane) = (proxy.clone(), s.protocol, s.lane);
    let prefs = s.prefs(proxy);
    if prefs.policy == ReadPolicy::Primary {
        s.primary_reads = true;
    } else if std::mem::take(&mut s.primary_reads) {
        // Reads under the primary policy are not in the chains: what they showed is unknown,
        // so the first replica read of each shard must prove it is newer.
        s.reads.clear();
        s.base_seen = Some(Seen::unknown());
    }
    // Under the primary policy the map is not looked up here: `forward` does.
    let primary = (prefs.policy != ReadPolicy::Primary)
        .then(|| {
            proxy
                .topology
                .load()
                .and_then(|t| t.primary_of_slot(slot).cloned())
        })
        .flatten();
    let primary = match primary {
        Some(a) => a,
        // The primary policy, or no map yet (forward waits for one).
        None => {
            count_policy_reads(proxy, prefs.policy, 1);
            return async move { p.forward(slot, payload, proto, lane, false).await }.boxed();
        }
    };
    let r = Read {
        slot,
        payload,
        protocol: proto,
        lane,
        prefs,
        primary: primary.clone(),
        force_primary: s.pinned.is_some(),
        counted: whole.then_some((s.family, s.arrived)),
    };
    if whole {
        s.route = None;
    }
    let now = Instant::now();
    let plan = match s.reads.get(&primary) {
        None => {
            let seen = s.base_seen.clone();
            let choice = proxy.choose_read(&r, seen.as_ref(), None, now);
            ReadPlan::Decided { choice, seen }
        }
        Some(tail) => match tail.done.settled() {
            Some(seen) => {
                let choice = proxy.choose_read(&r, seen.as_ref(), sticky(seen.as_ref()), now);
                ReadPlan::Decided { choice, seen }
            }
            None => {
                let sticky = tail.planned.and_then(Served::replica);
                // Where this read would go regardless of the previous one's outcome: if that
                // is where the previous one went, send it at once and check afterwards.
                let choice = proxy.choose_read(&r, None, sticky, now);
                match (&tail.planned, choice.target()) {
                    (Some(prev_target), Some(t)) if tail.immediate && *prev_target == t => {
                        ReadPlan::Follow {
                            choice,
                            prev_target: t,
                            prev: tail.done.clone(),
                        }
                    }
                    _ => ReadPlan::After {
                        prev: tail.done.clone(),
                        sticky,
                    },
                }
            }
        },
    };
    let (planned, immediate) = match &plan {
        ReadPlan::Decided { choice, .. } | ReadPlan::Follow { choice, .. } => {
            (choice.target(), true)
        }
        ReadPlan::After { .. } => (None, false),
    };
    let (tx, rx) = chain::link();
    s.reads.insert(
        primary,
        ReadTail {
            planned,
            immediate,
            done: rx,
        },
    );
    async move { p.read(r, plan, tx).await }.boxed()
}

/// A write to one slot. Under a replica policy with read-your-writes it joins the
/// connection's chain on that shard: the reads after it go only to replicas that have it,
/// proven by the primary's offset captured right behind the write (or by the monitor's
/// later samples).
fn write_chained(proxy: &Arc<Proxy>, s: &mut Session, slot: u16, payload: Bytes) -> Reply {
    let (p, proto, lane) = (proxy.clone(), s.protocol, s.lane);
    let prefs = s.prefs(proxy);
    let primary = proxy
        .topology
        .load()
        .and_then(|t| t.primary_of_slot(slot).cloned());
    let primary = match primary {
        Some(a) if prefs.policy != ReadPolicy::Primary && prefs.read_your_writes => a,
        _ => return async move { p.forward(slot, payload, proto, lane, true).await }.boxed(),
    };
    // The replication id the floor is measured in (none: no replica could use it anyway).
    let replid = proxy
        .fresh
        .load()
        .shards
        .get(&primary)
        .and_then(|v| v.capture());
    let prev_tail = s.reads.get(&primary).map(|t| t.done.clone());
    let base = s.base_seen.clone();
    let (tx, rx) = chain::link();
    s.reads.insert(
        primary.clone(),
        ReadTail {
            planned: Some(Served::Primary),
            immediate: true,
            done: rx,
        },
    );
    async move {
        let (reply, offset) = match replid {
            Some(_) => {
                p.write_with_floor(slot, payload, proto, lane, &primary)
                    .await
            }
            None => (p.forward(slot, payload, proto, lane, true).await, None),
        };
        let write = Seen {
            by: Served::Primary,
            at: Some(Instant::now()),
            floor: replid
                .zip(offset)
                .map(|(replid, offset)| crate::freshness::Floor { replid, offset }),
            write: true,
        };
        let prev = match prev_tail {
            Some(f) => f.wait().await,
            None => base,
        };
        tx.done(Some(crate::route::after_write(write, prev)));
        reply
    }
    .boxed()
}

/// `PROXY READPOLICY <primary|prefer-replica|replica> [MAXLAG <ms>] [READYOURWRITES on|off]`,
/// `PROXY INFO` and `PROXY RELOAD`,
/// answered by the proxy for this connection.
fn proxy_command(proxy: &Arc<Proxy>, s: &mut Session, args: &[Bytes]) -> Reply {
    let sub = args
        .get(1)
        .map(|a| a.to_ascii_uppercase())
        .unwrap_or_default();
    match sub.as_slice() {
        b"READPOLICY" if args.len() == 2 => {
            let prefs = s.prefs(proxy);
            ready(bulk(
                format!(
                    "{} maxlag {}ms",
                    prefs.policy.as_str(),
                    prefs.bounds.max_lag.as_millis()
                )
                .as_bytes(),
            ))
        }
        b"READPOLICY" => {
            let name = String::from_utf8_lossy(&args[2]);
            let Some(policy) = ReadPolicy::parse(&name) else {
                return err(&format!(
                    "ERR unknown read policy '{name}' (primary, prefer-replica, replica, nearest)"
                ));
            };
            let mut bounds = s.prefs(proxy).bounds;
            let mut read_your_writes = s.prefs(proxy).read_your_writes;
            let mut i = 3;
            while i < args.len() {
                if args[i].eq_ignore_ascii_case(b"READYOURWRITES") && i + 1 < args.len() {
                    read_your_writes = match args[i + 1].to_ascii_lowercase().as_slice() {
                        b"on" | b"yes" => true,
                        b"off" | b"no" => false,
                        _ => return err("ERR READYOURWRITES must be on or off"),
                    };
                    i += 2;
                } else if args[i].eq_ignore_ascii_case(b"MAXLAG") && i + 1 < args.len() {
                    let text = String::from_utf8_lossy(&args[i + 1]).to_ascii_lowercase();
                    match text.trim_end_matches("ms").parse::<u64>() {
                        Ok(ms) if ms > 0 => bounds.max_lag = Duration::from_millis(ms),
                        _ => return err("ERR MAXLAG must be a positive number of milliseconds"),
                    }
                    i += 2;
                } else {
                    return err("ERR syntax error");
                }
            }
            s.prefs = Some(ReadPrefs {
                policy,
                bounds,
                read_your_writes,
            });
            ready(Bytes::from_static(b"+OK\r\n"))
        }
        b"RELOAD" if args.len() == 2 => {
            if !s.admin {
                metrics::get().error(ErrorKind::Auth);
                return err("NOPERM this user has no permissions to run the 'proxy reload' command");
            }
            let (tx, rx) = oneshot::channel();
            if proxy.reload.try_send(tx).is_err() {
                return err("ERR a reload is already in progress");
            }
            async move {
                match tokio::time::timeout(Duration::from_secs(10), rx).await {
                    Ok(Ok(Ok(msg))) => bulk(msg.as_bytes()),
                    Ok(Ok(Err(e))) => reply::error(&format!("ERR config reload refused: {e}")),
                    _ => reply::error("ERR the reload did not answer"),
                }
            }
            .boxed()
        }
        b"INFO" if args.len() == 2 => {
            let mut text = String::new();
            proxy.fresh.render(&s.prefs(proxy), &mut text);
            let mut out = BytesMut::new();
            ReplyWriter::new(&mut out, wire(s.protocol)).verbatim(text.as_bytes());
            ready(out.freeze())
        }
        _ => err(&format!(
            "ERR unknown PROXY subcommand or wrong number of arguments for '{}' (READPOLICY, INFO, RELOAD)",
            String::from_utf8_lossy(args.get(1).map_or(&b""[..], |a| &a[..]))
        )),
    }
}

/// The client's timeout of a blocking command, to bound the wait on its own connection.
fn blocking_timeout(name: &str, args: &[Bytes]) -> Option<Duration> {
    let arg = match name {
        "blmpop" | "bzmpop" => args.get(1),
        _ => args.last(),
    }?;
    let secs: f64 = std::str::from_utf8(arg).ok()?.parse().ok()?;
    (secs > 0.0).then(|| Duration::from_secs_f64(secs.min(86400.0 * 365.0)))
}

fn plan_in_multi(
    proxy: &Arc<Proxy>,
    s: &mut Session,
    spec: &'static CommandSpec,
    effective: &'static CommandSpec,
    args: Vec<Bytes>,
) -> Reply {
    let Some(m) = s.multi.as_mut() else {
        return err("ERR internal: not in MULTI");
    };
    match spec.name {
        "multi" => return err("ERR MULTI calls can not be nested"),
        "watch" => return err("ERR WATCH inside MULTI is not allowed"),
        "discard" => {
            s.multi = None;
            s.pinned = None;
            return ready(Bytes::from_static(b"+OK\r\n"));
        }
        "exec" => {
            let Some(m) = s.multi.take() else {
                return err("ERR EXEC without MULTI");
            };
            let pinned = s.pinned.take();
            return exec(proxy, s.protocol, s.lane, m, pinned);
        }
        _ => {}
    }
    let slot = match keys_slot(effective, &args) {
        Ok(sl) => sl,
        Err(()) => {
            m.aborted = true;
            return crossslot();
        }
    };
    if let Some(sl) = slot {
        match m.slot {
            None => m.slot = Some(sl),
            Some(prev) if prev != sl => {
                m.aborted = true;
                return crossslot();
            }
            _ => {}
        }
    }
    m.queued.push(args);
    ready(Bytes::from_static(b"+QUEUED\r\n"))
}

/// Sends the whole transaction (MULTI, the commands, EXEC) as one contiguous block to the
/// slot's owner, and replies with EXEC's reply.
fn exec(
    proxy: &Arc<Proxy>,
    protocol: Protocol,
    lane: usize,
    m: Multi,
    pinned: Option<Arc<Pinned>>,
) -> Reply {
    if m.aborted {
        return err("EXECABORT Transaction discarded because of previous errors.");
    }
    let mut payload = BytesMut::new();
    reply::encode_into(&mut payload, &[b"MULTI"]);
    for cmd in &m.queued {
        reply::encode_into(&mut payload, cmd);
    }
    reply::encode_into(&mut payload, &[b"EXEC"]);
    let replies = m.queued.len() + 2;
    let payload = payload.freeze();
    let p = proxy.clone();
    let slot = m.slot.unwrap_or(0);
    match pinned {
        // After WATCH: on the watching connection, and not resent (the watch would be lost).
        Some(pin) => async move {
            match pin.get(&p, protocol).await {
                Ok(conn) => match conn.request(payload, replies).await {
                    Ok(all) => crate::route::last_reply(&all, protocol),
                    Err(e) => crate::route::backend_error(&e),
                },
                Err(e) => crate::route::backend_error(&e),
            }
        }
        .boxed(),
        None => async move {
            p.forward_block(slot, payload, replies, protocol, lane)
                .await
        }
        .boxed(),
    }
}

/// WATCH: keys of one slot, on the client's pinned connection to that slot's owner.
fn watch(
    proxy: &Arc<Proxy>,
    s: &mut Session,
    spec: &'static CommandSpec,
    args: Vec<Bytes>,
) -> Reply {
    let slot = match keys_slot(spec, &args) {
        Ok(Some(sl)) => sl,
        Ok(None) => return err("ERR wrong number of arguments for 'watch' command"),
        Err(()) => return crossslot(),
    };
    let pin = match &s.pinned {
        Some(p) if p.slot != slot => return crossslot(),
        Some(p) => p.clone(),
        None => {
            let Some(addr) = proxy
                .topology
                .load()
                .and_then(|t| t.primary_of_slot(slot).cloned())
            else {
                return err("CLUSTERDOWN Hash slot not served");
            };
            let p = Arc::new(Pinned {
                slot,
                addr,
                conn: Arc::new(tokio::sync::OnceCell::new()),
            });
            s.pinned = Some(p.clone());
            p
        }
    };
    let (p, proto, payload) = (proxy.clone(), s.protocol, encode(&args));
    async move {
        match pin.get(&p, proto).await {
            Ok(conn) => match conn.request(payload, 1).await {
                Ok(r) => r,
                Err(e) => crate::route::backend_error(&e),
            },
            Err(e) => crate::route::backend_error(&e),
        }
    }
    .boxed()
}

/// `AUTH [user] password` (also HELLO's AUTH option): the reply.
fn authenticate(proxy: &Proxy, s: &mut Session, args: &[Bytes]) -> Bytes {
    let users = proxy.live.load().users.clone();
    let (user, pass) = match args {
        [pass] => (&b"default"[..], pass),
        [user, pass] => (&user[..], pass),
        _ => return reply::error("ERR syntax error"),
    };
    if !users.required() {
        if args.len() == 1 {
            metrics::get().error(ErrorKind::Auth);
            return reply::error("ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?");
        }
        if user == b"default" {
            return Bytes::from_static(b"+OK\r\n");
        }
    }
    match users.check(user, pass) {
        Some(u) => {
            s.authed = true;
            s.admin = u.admin;
            Bytes::from_static(b"+OK\r\n")
        }
        None => {
            metrics::get().error(ErrorKind::Auth);
            tracing::debug!(client = s.id, user = %String::from_utf8_lossy(user), "AUTH failed");
            reply::error("WRONGPASS invalid username-password pair or user is disabled.")
        }
    }
}

fn hello(proxy: &Proxy, s: &mut Session, args: &[Bytes]) -> Reply {
    let mut protocol = s.protocol;
    if let Some(v) = args.get(1) {
        protocol = match v.as_ref() {
            b"2" => Protocol::Resp2,
            b"3" => Protocol::Resp3,
            other
                if std::str::from_utf8(other)
                    .ok()
                    .and_then(|t| t.parse::<i64>().ok())
                    .is_some() =>
            {
                return err("NOPROTO unsupported protocol version")
            }
            _ => return err("ERR Protocol version is not an integer or out of range"),
        };
    }
    let mut i = 2;
    let mut name = None;
    let mut auth = None;
    while i < args.len() {
        if args[i].eq_ignore_ascii_case(b"AUTH") && i + 2 < args.len() {
            auth = Some(&args[i + 1..i + 3]);
            i += 3;
        } else if args[i].eq_ignore_ascii_case(b"SETNAME") && i + 1 < args.len() {
            name = Some(args[i + 1].clone());
            i += 2;
        } else {
            return err(&format!(
                "ERR Syntax error in HELLO option '{}'",
                String::from_utf8_lossy(&args[i])
            ));
        }
    }
    if let Some(creds) = auth {
        let r = authenticate(proxy, s, creds);
        if r.first() == Some(&b'-') {
            return ready(r);
        }
    }
    if !s.authed {
        metrics::get().error(ErrorKind::Auth);
        return err("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time");
    }
    if name.is_some() {
        s.name = name;
    }
    s.protocol = protocol;
    let mut out = BytesMut::new();
    let mut w = ReplyWriter::new(&mut out, wire(protocol));
    w.map(7);
    w.bulk(b"server");
    w.bulk(b"lagwise-proxy");
    w.bulk(b"version");
    w.bulk(b"7.2.4");
    w.bulk(b"proto");
    w.int(if protocol == Protocol::Resp3 { 3 } else { 2 });
    w.bulk(b"id");
    w.int(s.id as i64);
    w.bulk(b"mode");
    w.bulk(b"standalone");
    w.bulk(b"role");
    w.bulk(b"master");
    w.bulk(b"modules");
    w.array(0);
    ready(out.freeze())
}

fn client(s: &mut Session, args: &[Bytes]) -> Reply {
    let sub = args
        .get(1)
        .map(|a| a.to_ascii_lowercase())
        .unwrap_or_default();
    let mut out = BytesMut::new();
    let mut w = ReplyWriter::new(&mut out, wire(s.protocol));
    match sub.as_slice() {
        b"id" => w.int(s.id as i64),
        b"setname" if args.len() == 3 => {
            if args[2].iter().any(|&b| !(b'!'..=b'~').contains(&b)) {
                return err(
                    "ERR Client names cannot contain spaces, newlines or special characters.",
                );
            }
            s.name = (!args[2].is_empty()).then(|| args[2].clone());
            w.ok();
        }
        b"getname" => match &s.name {
            Some(n) => w.bulk(n),
            None => w.null(),
        },
        b"setinfo" if args.len() == 4 => {
            if args[2].eq_ignore_ascii_case(b"LIB-NAME") {
                s.lib_name = Some(args[3].clone());
            } else if args[2].eq_ignore_ascii_case(b"LIB-VER") {
                s.lib_ver = Some(args[3].clone());
            } else {
                return err(&format!(
                    "ERR Unrecognized option '{}'",
                    String::from_utf8_lossy(&args[2])
                ));
            }
            w.ok();
        }
        b"info" => {
            let text = format!(
                "id={} name={} resp={} lib-name={} lib-ver={}\n",
                s.id,
                s.name
                    .as_deref()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default(),
                if s.protocol == Protocol::Resp3 { 3 } else { 2 },
                s.lib_name
                    .as_deref()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default(),
                s.lib_ver
                    .as_deref()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default(),
            );
            w.verbatim(text.as_bytes());
        }
        _ => {
            return err(&format!(
                "ERR lagwise: CLIENT {} is not supported through the proxy",
                String::from_utf8_lossy(&sub).to_uppercase()
            ))
        }
    }
    ready(out.freeze())
}

fn info(proxy: &Proxy, s: &Session) -> Bytes {
    let topology = proxy.topology.load();
    let text = format!(
        "# Server\r\nredis_version:7.2.4\r\nredis_mode:standalone\r\nlagwise_proxy_version:{}\r\n\r\n# Proxy\r\nconnected_clients:{}\r\ntopology_known:{}\r\ncluster_shards:{}\r\nall_slots_covered:{}\r\n",
        env!("CARGO_PKG_VERSION"),
        CONNECTED.load(Ordering::Relaxed),
        topology.is_some() as u8,
        topology.as_ref().map_or(0, |t| t.shards().len()),
        topology.as_ref().is_some_and(|t| t.covers_all_slots()) as u8,
    );
    let mut out = BytesMut::new();
    ReplyWriter::new(&mut out, wire(s.protocol)).verbatim(text.as_bytes());
    out.freeze()
}

fn sum_over_primaries(proxy: &Arc<Proxy>, s: &Session, args: &[Bytes]) -> Reply {
    let lane = s.lane;
    let (p, proto, payload) = (proxy.clone(), s.protocol, encode(args));
    async move {
        match p.to_all_primaries(payload, proto, lane).await {
            Ok(parts) => integer_reply(parts.iter().filter_map(|r| reply::integer(r)).sum()),
            Err(e) => e,
        }
    }
    .boxed()
}

fn integer_reply(n: i64) -> Bytes {
    Bytes::from(format!(":{n}\r\n"))
}

fn concat_arrays(parts: &[Bytes], proto: Protocol) -> Bytes {
    let mut elements = Vec::new();
    for p in parts {
        if let Some(e) = reply::array_elements(p, proto) {
            elements.extend(e);
        }
    }
    let mut out = BytesMut::new();
    out.extend_from_slice(format!("*{}\r\n", elements.len()).as_bytes());
    for e in elements {
        out.extend_from_slice(&e);
    }
    out.freeze()
}

/// Groups argument indexes by slot, keeping first-seen order of slots.
fn by_slot(keys: impl Iterator<Item = (usize, u16)>) -> Vec<(u16, Vec<usize>)> {
    let mut groups: Vec<(u16, Vec<usize>)> = Vec::new();
    for (i, sl) in keys {
        match groups.iter_mut().find(|(s, _)| *s == sl) {
            Some((_, v)) => v.push(i),
            None => groups.push((sl, vec![i])),
        }
    }
    groups
}

/// MGET across slots: one MGET per slot (each a read, see `read`), replies put back in the
/// order of the keys.
fn mget(proxy: &Arc<Proxy>, s: &mut Session, args: &[Bytes]) -> Reply {
    let groups = by_slot((1..args.len()).map(|i| (i, slot(&args[i]))));
    let proto = s.protocol;
    let n = args.len() - 1;
    let sub = |idx: &[usize]| {
        let mut cmd = vec![args[0].clone()];
        cmd.extend(idx.iter().map(|&i| args[i].clone()));
        encode(&cmd)
    };
    let replies = match mget_batch(proxy, s, &groups, sub) {
        // Under the primary policy: one job per node for all its slots' MGETs.
        Some(batch) => {
            let (p, lane) = (proxy.clone(), s.lane);
            async move {
                let all = batch.run(p, proto, lane).await;
                let mut replies = Vec::new();
                let mut at = 0;
                while let Ok(Some(len)) = reply::frame_len(&all[at..], proto) {
                    replies.push(all.slice(at..at + len));
                    at += len;
                }
                replies
            }
            .boxed()
        }
        None => {
            let sends: Vec<Reply> = groups
                .iter()
                .map(|(sl, idx)| read(proxy, s, *sl, sub(idx), false))
                .collect();
            future::join_all(sends).boxed()
        }
    };
    async move {
        let replies = replies.await;
        let mut values: Vec<Option<Bytes>> = vec![None; n];
        for ((_, idx), r) in groups.iter().zip(replies) {
            let Some(elements) = reply::array_elements(&r, proto) else {
                return r;
            };
            for (&i, e) in idx.iter().zip(elements) {
                values[i - 1] = Some(e);
            }
        }
        let mut out = BytesMut::new();
        out.extend_from_slice(format!("*{n}\r\n").as_bytes());
        for v in values {
            match v {
                Some(e) => out.extend_from_slice(&e),
                None => return reply::error("ERR lagwise: incomplete MGET reply"),
            }
        }
        out.freeze()
    }
    .boxed()
}

/// MGET's per-slot reads as one batch (one job per node), when they go to the primaries and
/// every node they need is connected on this session's lane; None: read them one by one.
fn mget_batch(
    proxy: &Proxy,
    s: &mut Session,
    groups: &[(u16, Vec<usize>)],
    sub: impl Fn(&[usize]) -> Bytes,
) -> Option<Batch> {
    if s.pinned.is_some() || s.prefs(proxy).policy != ReadPolicy::Primary {
        return None;
    }
    let topology = proxy.topology.load()?;
    let mut batch = Batch::parts();
    for (sl, idx) in groups {
        let conn = s.conn(proxy, topology.primary_of_slot(*sl)?, false)?;
        batch.push(&conn, *sl, false, sub(idx), s.family, s.arrived);
    }
    s.primary_reads = true;
    count_policy_reads(proxy, ReadPolicy::Primary, groups.len() as u64);
    Some(batch)
}

/// MSET across slots: one MSET per slot (not atomic across slots, as in a cluster client).
fn mset(proxy: &Arc<Proxy>, s: &Session, args: &[Bytes]) -> Reply {
    if args.len().is_multiple_of(2) {
        return err("ERR wrong number of arguments for 'mset' command");
    }
    let groups = by_slot((1..args.len()).step_by(2).map(|i| (i, slot(&args[i]))));
    let lane = s.lane;
    let (p, proto) = (proxy.clone(), s.protocol);
    let args = args.to_vec();
    async move {
        let sends = groups.iter().map(|(sl, idx)| {
            let mut cmd = vec![args[0].clone()];
            for &i in idx {
                cmd.push(args[i].clone());
                cmd.push(args[i + 1].clone());
            }
            p.forward(*sl, encode(&cmd), proto, lane, true)
        });
        for r in future::join_all(sends).await {
            if r.first() == Some(&b'-') {
                return r;
            }
        }
        Bytes::from_static(b"+OK\r\n")
    }
    .boxed()
}

/// DEL, UNLINK, EXISTS, TOUCH across slots: the counts added up (EXISTS is a read).
fn sum_by_slot(proxy: &Arc<Proxy>, s: &mut Session, args: &[Bytes]) -> Reply {
    let groups = by_slot((1..args.len()).map(|i| (i, slot(&args[i]))));
    let lane = s.lane;
    let (p, proto) = (proxy.clone(), s.protocol);
    let write = !args[0].eq_ignore_ascii_case(b"EXISTS");
    let sends: Vec<Reply> = groups
        .iter()
        .map(|(sl, idx)| {
            let mut cmd = vec![args[0].clone()];
            cmd.extend(idx.iter().map(|&i| args[i].clone()));
            let payload = encode(&cmd);
            if write {
                let (p, sl) = (p.clone(), *sl);
                async move { p.forward(sl, payload, proto, lane, true).await }.boxed()
            } else {
                read(proxy, s, *sl, payload, false)
            }
        })
        .collect();
    async move {
        let mut total = 0;
        for r in future::join_all(sends).await {
            match reply::integer(&r) {
                Some(n) => total += n,
                None => return r,
            }
        }
        integer_reply(total)
    }
    .boxed()
}

/// SCAN over the whole cluster: the cursor carries which primary is being walked (low 10
/// bits, in the map's primary order) and that node's own cursor (the rest).
fn scan(proxy: &Arc<Proxy>, s: &Session, args: &[Bytes]) -> Reply {
    let Some(cursor) = std::str::from_utf8(&args[1])
        .ok()
        .and_then(|c| c.parse::<u64>().ok())
    else {
        return err("ERR invalid cursor");
    };
    let lane = s.lane;
    let (p, proto) = (proxy.clone(), s.protocol);
    let rest: Vec<Bytes> = args[2..].to_vec();
    async move {
        let Some(topology) = p.topology.load() else {
            return reply::error("CLUSTERDOWN The proxy has not learned the cluster topology yet");
        };
        let mut primaries: Vec<_> = topology.primaries().cloned().collect();
        primaries.sort();
        let node = (cursor & 1023) as usize;
        let node_cursor = cursor >> 10;
        let Some(addr) = primaries.get(node) else {
            return Bytes::from_static(b"*2\r\n$1\r\n0\r\n*0\r\n");
        };
        let mut cmd = vec![
            Bytes::from_static(b"SCAN"),
            Bytes::from(node_cursor.to_string()),
        ];
        cmd.extend(rest);
        let conn = match p.pool.get(addr, proto, false, lane).await {
            Ok(c) => c,
            Err(e) => return crate::route::backend_error(&e),
        };
        let r = match conn.request(encode(&cmd), 1).await {
            Ok(r) => r,
            Err(e) => return crate::route::backend_error(&e),
        };
        let Some(parts) = reply::array_elements(&r, proto) else {
            return r;
        };
        let (Some(next), Some(keys)) = (parts.first(), parts.get(1)) else {
            return r;
        };
        let next_node_cursor: u64 = next
            .split(|&b| b == b'\n')
            .nth(1)
            .and_then(|l| std::str::from_utf8(l).ok())
            .and_then(|l| l.trim_end().parse().ok())
            .unwrap_or(0);
        let next = if next_node_cursor != 0 {
            (next_node_cursor << 10) | node as u64
        } else if node + 1 < primaries.len() {
            (node + 1) as u64
        } else {
            0
        };
        let mut out = BytesMut::new();
        out.extend_from_slice(b"*2\r\n");
        out.extend_from_slice(&bulk(next.to_string().as_bytes()));
        out.extend_from_slice(keys);
        out.freeze()
    }
    .boxed()
}

/// An empty reply: the answer comes through a subscription link.
fn relayed() -> Reply {
    ready(Bytes::new())
}

/// Sends the command on the channel link (PING while subscribed).
fn relay(s: &mut Session, args: &[Bytes]) -> Reply {
    match &s.link {
        Some(l) => {
            l.send(encode(args));
            relayed()
        }
        None => ready(Bytes::from_static(b"+PONG\r\n")),
    }
}

fn backend_auth(proxy: &Proxy) -> Option<(Option<String>, String)> {
    proxy.backend_auth.clone()
}

fn subscribe(proxy: &Arc<Proxy>, s: &mut Session, args: &[Bytes]) -> Reply {
    if s.link.is_none() {
        // Any node will do: every PUBLISH reaches every node.
        let Some(addr) = proxy
            .topology
            .load()
            .and_then(|t| t.primaries().next().cloned())
        else {
            return err("CLUSTERDOWN The proxy has not learned the cluster topology yet");
        };
        let (link, frames) = Link::open(addr, s.protocol, backend_auth(proxy));
        s.link = Some(link);
        s.link_frames = Some(frames);
    }
    if let Some(l) = s.link.as_mut() {
        l.pending = true;
        l.send(encode(args));
    }
    relayed()
}

fn ssubscribe(proxy: &Arc<Proxy>, s: &mut Session, args: &[Bytes]) -> Reply {
    let sl = slot(&args[1]);
    if args[2..].iter().any(|c| slot(c) != sl) {
        return crossslot();
    }
    match &s.shard_link {
        Some((linked, _)) if *linked != sl => {
            return err("ERR lagwise: shard channels of one slot per client through the proxy")
        }
        Some(_) => {}
        None => {
            let Some(addr) = proxy
                .topology
                .load()
                .and_then(|t| t.primary_of_slot(sl).cloned())
            else {
                return err("CLUSTERDOWN Hash slot not served");
            };
            let (link, frames) = Link::open(addr, s.protocol, backend_auth(proxy));
            s.shard_link = Some((sl, link));
            s.shard_frames = Some(frames);
        }
    }
    if let Some((_, l)) = s.shard_link.as_mut() {
        l.pending = true;
        l.send(encode(args));
    }
    relayed()
}

/// (P|S)UNSUBSCRIBE: through the link if there is one, else answered as a node would.
fn unsubscribe(s: &mut Session, args: &[Bytes], shard: bool) -> Reply {
    let link = if shard {
        s.shard_link.as_ref().map(|(_, l)| l)
    } else {
        s.link.as_ref()
    };
    if let Some(l) = link {
        l.send(encode(args));
        return relayed();
    }
    let verb = args[0].to_ascii_lowercase();
    let mut out = BytesMut::new();
    let mut w = ReplyWriter::new(&mut out, wire(s.protocol));
    let names: Vec<&Bytes> = args[1..].iter().collect();
    if names.is_empty() {
        w.push(3);
        w.bulk(&verb);
        w.null();
        w.int(0);
    }
    for n in names {
        w.push(3);
        w.bulk(&verb);
        w.bulk(n);
        w.int(0);
    }
    ready(out.freeze())
}
