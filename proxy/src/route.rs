//! Sending a command to the node that owns its slot, following redirects, and fanning out.
//!
//! `forward` is the data path for every keyed command: load the map, pick the slot's primary,
//! send on a shared pipelined connection, and on `MOVED` patch the map and resend, on `ASK`
//! resend to the target preceded by `ASKING`, on `TRYAGAIN`/`CLUSTERDOWN`/`LOADING` wait and
//! resend until a deadline. A request that may have reached a node is never resent if it is a
//! write: the client gets an error instead of a possible double apply.
//!
//! `read` is the data path of a read-only command under a replica policy: to a replica within
//! the staleness bounds (see `freshness`), abandoned at the replica's deadline or on any error
//! (MOVED included: never shown to the client) for the primary (`prefer-replica`) or for
//! `-NOREPLICA` (`replica`), and kept monotonic per connection.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use lagwise_shared::topology::NodeAddr;

use crate::backend::{BackendConn, BackendError, Pool};
use crate::chain::{Showing, Shown};
use crate::config::HedgeAfter;
use crate::freshness::{Choice, Floor, Freshness, ReadPolicy, ReadPrefs, Seen, Served};
use crate::latency::Backend;
use crate::metrics::{self, ErrorKind, ReadReason, ReadTarget, RedirectKind, Route, RywResult};
use crate::reply::{self, Protocol, Redirect};
use crate::topology::TopologyHandle;

/// Hedges that may be saved up when reads earn more than they spend.
const HEDGE_BURST: u64 = 20;

/// Hedges allowed as a fraction of reads: every read that could be hedged earns `fraction` of
/// one, every hedge spends one, and at most `HEDGE_BURST` are saved up.
#[derive(Default)]
pub struct HedgeBudget {
    /// In thousandths of a hedge.
    milli: std::sync::atomic::AtomicU64,
}

impl HedgeBudget {
    fn earn(&self, fraction: f64) {
        let add = (fraction * 1000.0) as u64;
        let _ = self
            .milli
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some((v + add).min(HEDGE_BURST * 1000))
            });
    }

    fn spend(&self) -> bool {
        self.milli
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                v.checked_sub(1000)
            })
            .is_ok()
    }
}

/// Redirects followed for one request before giving up.
const MAX_REDIRECTS: u32 = 8;

pub struct Proxy {
    pub topology: Arc<TopologyHandle>,
    pub pool: Arc<Pool>,
    /// The settings a reload may change (read defaults, retry deadline, client limit).
    pub live: arc_swap::ArcSwap<crate::config::Live>,
    /// Set at SIGTERM: not ready any more, finishing what is in flight.
    pub draining: std::sync::atomic::AtomicBool,
    /// Hedged reads allowed so far (a fraction of reads).
    pub hedge_budget: HedgeBudget,
    /// Commands learned from the backends' COMMAND INFO.
    pub commands: crate::commands::Catalog,
    /// `PROXY RELOAD` asks the reloader through this.
    pub reload: tokio::sync::mpsc::Sender<crate::admin::ReloadRequest>,
    /// (username, password) for connections outside the pool (subscription links).
    pub backend_auth: Option<(Option<String>, String)>,
    /// Replica freshness (the monitor's snapshots) and routing counters.
    pub fresh: Arc<Freshness>,
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((10u64 << attempt.min(5)).min(200))
}

impl Proxy {
    /// Sends `payload` (one command) to the owner of `slot` and returns its reply, redirects
    /// followed. `write` commands are not resent after they may have been delivered.
    pub async fn forward(
        &self,
        slot: u16,
        payload: Bytes,
        protocol: Protocol,
        lane: usize,
        write: bool,
    ) -> Bytes {
        self.forward_after(slot, payload, protocol, lane, write, None)
            .await
    }

    /// `forward`, where `first` is the outcome of a first send already made to the slot's
    /// primary (by a batch): a redirect or error in it is followed as `forward` would.
    pub async fn forward_after(
        &self,
        slot: u16,
        payload: Bytes,
        protocol: Protocol,
        lane: usize,
        write: bool,
        mut first: Option<Result<Bytes, BackendError>>,
    ) -> Bytes {
        // Read from the clock only once something needs a retry: most requests never do.
        let mut deadline = None;
        let mut retry_allowed = || {
            let d =
                *deadline.get_or_insert_with(|| Instant::now() + self.live.load().retry_deadline);
            Instant::now() < d
        };
        let mut ask: Option<NodeAddr> = None;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let result = match first.take() {
                Some(r) => r,
                None => {
                    let (addr, asking) = match ask.take() {
                        Some(a) => (a, true),
                        None => match self
                            .topology
                            .load()
                            .and_then(|t| t.primary_of_slot(slot).cloned())
                        {
                            Some(a) => (a, false),
                            None => {
                                self.topology.request_refresh();
                                if retry_allowed() {
                                    tokio::time::sleep(backoff(attempt)).await;
                                    continue;
                                }
                                metrics::get().error(ErrorKind::ClusterDown);
                                return reply::error("CLUSTERDOWN Hash slot not served");
                            }
                        },
                    };
                    match self.pool.get(&addr, protocol, false, lane).await {
                        Ok(conn) if asking => {
                            let mut both = BytesMut::with_capacity(payload.len() + 20);
                            reply::encode_into(&mut both, &[b"ASKING"]);
                            both.extend_from_slice(&payload);
                            conn.request(both.freeze(), 2)
                                .await
                                .map(|r| last_reply(&r, protocol))
                        }
                        Ok(conn) => conn.request(payload.clone(), 1).await,
                        Err(e) => Err(e),
                    }
                }
            };
            match result {
                Ok(r) => match reply::redirect(&r) {
                    Some(Redirect::Moved { slot: s, addr }) if attempt < MAX_REDIRECTS => {
                        metrics::get().redirect(RedirectKind::Moved);
                        self.topology.apply_moved(s, &NodeAddr(addr.into()));
                    }
                    Some(Redirect::Ask { addr, .. }) if attempt < MAX_REDIRECTS => {
                        metrics::get().redirect(RedirectKind::Ask);
                        ask = Some(NodeAddr(addr.into()));
                    }
                    Some(_) => {
                        metrics::get().error(ErrorKind::RedirectLimit);
                        return reply::error("ERR lagwise: too many redirects");
                    }
                    _ if reply::is_transient(&r) && retry_allowed() => {
                        let kind = if r.starts_with(b"-CLUSTERDOWN") {
                            self.topology.request_refresh();
                            RedirectKind::ClusterDown
                        } else if r.starts_with(b"-LOADING") {
                            RedirectKind::Loading
                        } else {
                            RedirectKind::TryAgain
                        };
                        metrics::get().redirect(kind);
                        tokio::time::sleep(backoff(attempt)).await;
                    }
                    _ => return r,
                },
                Err(e) => {
                    self.topology.request_refresh();
                    let may_retry = e.not_sent() || !write;
                    if may_retry && retry_allowed() {
                        tokio::time::sleep(backoff(attempt)).await;
                        continue;
                    }
                    return backend_error(&e);
                }
            }
        }
    }

    /// Sends the same command to every primary; the replies in shard order, or the first
    /// error.
    pub async fn to_all_primaries(
        &self,
        payload: Bytes,
        protocol: Protocol,
        lane: usize,
    ) -> Result<Vec<Bytes>, Bytes> {
        let Some(topology) = self.topology.load() else {
            return Err(reply::error(
                "CLUSTERDOWN The proxy has not learned the cluster topology yet",
            ));
        };
        let sends = topology.primaries().map(|addr| {
            let payload = payload.clone();
            async move {
                let conn = self
                    .pool
                    .get(addr, protocol, false, lane)
                    .await
                    .map_err(|e| backend_error(&e))?;
                conn.request(payload, 1)
                    .await
                    .map_err(|e| backend_error(&e))
            }
        });
        let replies = futures::future::join_all(sends).await;
        let mut out = Vec::with_capacity(replies.len());
        for r in replies {
            let r = r?;
            if r.first() == Some(&b'-') {
                return Err(r);
            }
            out.push(r);
        }
        Ok(out)
    }

    /// Any reachable primary (for commands whose answer every node gives alike: COMMAND).
    pub async fn to_any(&self, payload: Bytes, protocol: Protocol, lane: usize) -> Bytes {
        let Some(topology) = self.topology.load() else {
            return reply::error("CLUSTERDOWN The proxy has not learned the cluster topology yet");
        };
        let mut last = reply::error("CLUSTERDOWN no node reachable");
        for addr in topology.primaries() {
            match self.pool.get(addr, protocol, false, lane).await {
                Ok(conn) => match conn.request(payload.clone(), 1).await {
                    Ok(r) => return r,
                    Err(e) => last = backend_error(&e),
                },
                Err(e) => last = backend_error(&e),
            }
        }
        last
    }

    /// Runs one command on a connection of its own to the slot's owner (blocking commands
    /// must not hold up a shared pipeline), following MOVED/ASK.
    pub async fn dedicated(
        &self,
        slot: u16,
        payload: Bytes,
        protocol: Protocol,
        timeout: Option<Duration>,
    ) -> Bytes {
        let mut ask: Option<NodeAddr> = None;
        for _ in 0..MAX_REDIRECTS {
            let (addr, asking) = match ask.take() {
                Some(a) => (a, true),
                None => match self
                    .topology
                    .load()
                    .and_then(|t| t.primary_of_slot(slot).cloned())
                {
                    Some(a) => (a, false),
                    None => return reply::error("CLUSTERDOWN Hash slot not served"),
                },
            };
            let conn = match self.pool.dedicated(&addr, protocol).await {
                Ok(c) => c,
                Err(e) => return backend_error(&e),
            };
            let send = if asking {
                let mut both = BytesMut::new();
                reply::encode_into(&mut both, &[b"ASKING"]);
                both.extend_from_slice(&payload);
                conn.request(both.freeze(), 2)
            } else {
                conn.request(payload.clone(), 1)
            };
            let send = async move {
                send.await
                    .map(|r| if asking { last_reply(&r, protocol) } else { r })
            };
            // The client's own timeout plus a margin: the server answers at its timeout.
            let waited = match timeout {
                Some(t) => tokio::time::timeout(t + Duration::from_secs(5), send)
                    .await
                    .ok(),
                None => Some(send.await),
            };
            let r = match waited {
                Some(Ok(r)) => r,
                Some(Err(e)) => return backend_error(&e),
                None => return reply::error("ERR lagwise: backend did not answer in time"),
            };
            match reply::redirect(&r) {
                Some(Redirect::Moved { slot: s, addr }) => {
                    self.topology.apply_moved(s, &NodeAddr(addr.into()))
                }
                Some(Redirect::Ask { addr, .. }) => ask = Some(NodeAddr(addr.into())),
                None => return r,
            }
        }
        metrics::get().error(ErrorKind::RedirectLimit);
        reply::error("ERR lagwise: too many redirects")
    }
}

/// The last of several replies read back to back.
pub fn last_reply(replies: &Bytes, protocol: Protocol) -> Bytes {
    split_replies(replies, protocol).pop().unwrap_or_default()
}

/// Several replies read back to back, one by one.
fn split_replies(replies: &Bytes, protocol: Protocol) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < replies.len() {
        match reply::frame_len(&replies[pos..], protocol) {
            Ok(Some(n)) => {
                out.push(replies.slice(pos..pos + n));
                pos += n;
            }
            _ => break,
        }
    }
    out
}

impl Proxy {
    /// Sends a MULTI ... EXEC block (`replies` replies) to the owner of `slot` as one
    /// contiguous write, and returns EXEC's reply. If a queued command was redirected (the
    /// slot moved), nothing ran (EXECABORT): the map is fixed and the block sent again.
    pub async fn forward_block(
        &self,
        slot: u16,
        payload: Bytes,
        replies: usize,
        protocol: Protocol,
        lane: usize,
    ) -> Bytes {
        for attempt in 1..=MAX_REDIRECTS {
            let Some(addr) = self
                .topology
                .load()
                .and_then(|t| t.primary_of_slot(slot).cloned())
            else {
                self.topology.request_refresh();
                tokio::time::sleep(backoff(attempt)).await;
                continue;
            };
            let all = match self.pool.get(&addr, protocol, false, lane).await {
                Ok(conn) => match conn.request(payload.clone(), replies).await {
                    Ok(r) => r,
                    Err(e) => return backend_error(&e),
                },
                Err(e) => {
                    self.topology.request_refresh();
                    if e.not_sent() {
                        tokio::time::sleep(backoff(attempt)).await;
                        continue;
                    }
                    return backend_error(&e);
                }
            };
            let parts = split_replies(&all, protocol);
            let redirected = parts.iter().find_map(|r| reply::redirect(r));
            match redirected {
                Some(Redirect::Moved { slot: s, addr: to }) => {
                    self.topology.apply_moved(s, &NodeAddr(to.into()));
                }
                // The slot is being migrated: wait for the migration to move on.
                Some(Redirect::Ask { .. }) => tokio::time::sleep(backoff(attempt)).await,
                None => {
                    return parts
                        .last()
                        .cloned()
                        .unwrap_or_else(|| reply::error("ERR lagwise: empty EXEC reply"))
                }
            }
        }
        metrics::get().error(ErrorKind::RedirectLimit);
        reply::error("ERR lagwise: too many redirects")
    }
}

pub fn backend_error(e: &BackendError) -> Bytes {
    metrics::get().error(match e {
        BackendError::Connect(..) => ErrorKind::BackendConnect,
        BackendError::Lost(_) => ErrorKind::BackendLost,
        BackendError::Busy(_) => ErrorKind::BackendBusy,
        BackendError::Protocol(..) => ErrorKind::BackendProtocol,
        BackendError::Timeout(_) => ErrorKind::BackendTimeout,
    });
    reply::error(&format!("ERR lagwise: {e}"))
}

// ---------------------------------------------------------------------------------------
// Reads under a replica policy
// ---------------------------------------------------------------------------------------

/// A read-only command on one slot.
pub struct Read {
    pub slot: u16,
    pub payload: Bytes,
    pub protocol: Protocol,
    pub lane: usize,
    pub prefs: ReadPrefs,
    /// The slot's primary when the read was planned (the shard's key in the snapshot).
    pub primary: NodeAddr,
    /// Inside WATCH: the primary, but still part of the connection's chain of reads.
    pub force_primary: bool,
    /// The command's family and arrival, for the request metrics, counted here once the
    /// read knows where it was answered (None: part of a split request, counted whole).
    pub counted: Option<(usize, Instant)>,
}

/// How a read relates to the connection's previous read on the same shard.
pub enum ReadPlan {
    /// The previous read had completed (or there was none): decided at planning.
    Decided { choice: Choice, seen: Option<Seen> },
    /// Sent at once to where the previous read was sent (still in flight); used only if that
    /// read was indeed answered there (same node, same lane: this one runs after it).
    Follow {
        choice: Choice,
        prev_target: Served,
        prev: Shown,
    },
    /// Decided once the previous read has completed.
    After {
        prev: Shown,
        sticky: Option<&'static Backend>,
    },
}

/// What a connection has seen on a shard after its write there (`write`) and the operation
/// before it (`prev`, which may have finished later): a state at least as new as both.
pub fn after_write(write: Seen, prev: Option<Seen>) -> Seen {
    let Some(prev) = prev else {
        return write;
    };
    match (prev.at, write.at) {
        // Unknown is as new as can be.
        (None, _) | (_, None) => Seen {
            write: true,
            ..Seen::unknown()
        },
        (Some(p), Some(w)) if p <= w => write,
        (Some(p), Some(_)) => {
            let floor = match (&prev.floor, &write.floor) {
                (Some(a), Some(b)) if a.replid == b.replid => Some(Floor {
                    replid: a.replid.clone(),
                    offset: a.offset.max(b.offset),
                }),
                _ => None,
            };
            Seen {
                by: Served::Primary,
                at: Some(p),
                floor,
                write: true,
            }
        }
    }
}

/// Why a command sent with a `ROLE` behind it has no usable answer.
enum RoleBehind {
    /// The command was redirected or hit a transient error: it did not run.
    NotRun,
    /// The connection failed: the command may have run.
    Failed(BackendError),
    Incomplete,
}

/// Sends `payload` with a `ROLE` right behind it on `conn` (so the offset ROLE reports
/// covers the command): the command's reply and that primary offset (None if the node is
/// not a primary).
async fn with_role_behind(
    conn: &BackendConn,
    payload: &Bytes,
    protocol: Protocol,
) -> Result<(Bytes, Option<u64>), RoleBehind> {
    let mut both = BytesMut::with_capacity(payload.len() + reply::ROLE.len());
    both.extend_from_slice(payload);
    both.extend_from_slice(reply::ROLE);
    let all = conn
        .request(both.freeze(), 2)
        .await
        .map_err(RoleBehind::Failed)?;
    let parts = split_replies(&all, protocol);
    let (Some(body), Some(role)) = (parts.first(), parts.get(1)) else {
        return Err(RoleBehind::Incomplete);
    };
    if reply::redirect(body).is_some() || reply::is_transient(body) {
        return Err(RoleBehind::NotRun);
    }
    Ok((body.clone(), role_offset(role, protocol, true)))
}

/// The offset in a `ROLE` reply: a primary's, or a replica's processed offset.
pub fn role_offset(role: &Bytes, protocol: Protocol, want_primary: bool) -> Option<u64> {
    let parts = reply::array_elements(role, protocol)?;
    let kind = reply::bulk_payload(parts.first()?)?;
    let at = match (kind, want_primary) {
        (b"master", true) => 1,
        (b"slave", false) => 4,
        _ => return None,
    };
    u64::try_from(reply::integer(parts.get(at)?)?).ok()
}

impl Proxy {
    /// A write with a `ROLE` right behind it on the same connection to the slot's primary
    /// (`primary`, as planned): the reply, and the primary's offset once the write was
    /// applied (the floor a replica must reach to show it). A redirect or transient error
    /// means the write was not applied: it goes the usual way (`forward`), without a floor.
    pub async fn write_with_floor(
        &self,
        slot: u16,
        payload: Bytes,
        protocol: Protocol,
        lane: usize,
        primary: &NodeAddr,
    ) -> (Bytes, Option<u64>) {
        let conn = match self.pool.get(primary, protocol, false, lane).await {
            Ok(c) => c,
            Err(_) => {
                return (
                    self.forward(slot, payload, protocol, lane, true).await,
                    None,
                )
            }
        };
        match with_role_behind(&conn, &payload, protocol).await {
            Ok(answer) => answer,
            // It may have been applied: never sent again.
            Err(RoleBehind::Failed(e)) => (backend_error(&e), None),
            Err(RoleBehind::Incomplete) => (reply::error("ERR lagwise: incomplete reply"), None),
            Err(RoleBehind::NotRun) => (
                self.forward(slot, payload, protocol, lane, true).await,
                None,
            ),
        }
    }

    /// Where a read goes, as `Freshness::choose` says (the primary inside WATCH).
    pub fn choose_read(
        &self,
        r: &Read,
        seen: Option<&Seen>,
        sticky: Option<&Backend>,
        now: Instant,
    ) -> Choice {
        if r.force_primary {
            return Choice::Primary {
                capture: None,
                slo: false,
            };
        }
        self.choose_on(&r.primary, &r.prefs, seen, sticky, now)
    }

    /// Where a read of `primary`'s shard goes, as `Freshness::choose` says.
    pub fn choose_on(
        &self,
        primary: &NodeAddr,
        prefs: &ReadPrefs,
        seen: Option<&Seen>,
        sticky: Option<&Backend>,
        now: Instant,
    ) -> Choice {
        let snapshot = self.fresh.load();
        let shard = snapshot.shards.get(primary).map(|s| &**s);
        self.fresh.choose(shard, prefs, seen, sticky, now)
    }

    /// Runs one read per its plan, tells the next read on the connection what it showed
    /// (`done`), and returns the reply.
    pub async fn read(self: Arc<Self>, r: Read, plan: ReadPlan, done: Showing) -> Bytes {
        let (reply, seen) = match plan {
            ReadPlan::Decided { choice, seen } => {
                let (reply, seen, _) = self.execute(&r, choice, seen, None).await;
                (reply, seen)
            }
            ReadPlan::After { prev, sticky } => {
                let seen = prev.wait().await;
                let choice = self.choose_read(&r, seen.as_ref(), sticky, Instant::now());
                let (reply, seen, _) = self.execute(&r, choice, seen, None).await;
                (reply, seen)
            }
            ReadPlan::Follow {
                choice,
                prev_target,
                prev,
            } => {
                let capture = match &choice {
                    Choice::Replica { capture, .. } | Choice::Primary { capture, .. } => {
                        capture.clone()
                    }
                    Choice::NoReplica => None,
                };
                let (reply, seen, after_prev) =
                    self.execute(&r, choice, None, Some(prev.clone())).await;
                let prev = prev.wait().await;
                if after_prev || prev.is_none_or(|p| p.by == prev_target) {
                    (reply, seen)
                } else {
                    // The previous read was answered elsewhere (it fell back to the primary):
                    // this reply may be older than what it showed. Ask the primary, after it.
                    self.fresh
                        .counters
                        .monotonic_rereads
                        .fetch_add(1, Ordering::Relaxed);
                    metrics::get().read(
                        r.prefs.policy as usize,
                        ReadTarget::Primary,
                        ReadReason::Monotonic,
                    );
                    let (reply, seen) = Box::pin(self.read_primary(&r, capture)).await;
                    (reply, Some(seen))
                }
            }
        };
        let route = match seen.as_ref().map(|s| &s.by) {
            Some(Served::Replica(_)) => Route::Replica,
            _ if reply.starts_with(b"-NOREPLICA") => Route::Replica,
            _ => Route::Primary,
        };
        if let Some((family, arrived)) = r.counted {
            let m = metrics::get();
            m.request(family, route);
            m.duration(route, arrived.elapsed());
        }
        done.done(seen);
        reply
    }

    /// Sends a read where `choice` says. Returns the reply, what it showed (`prior` if it
    /// showed nothing), and whether it was answered after `prev` completed.
    async fn execute(
        &self,
        r: &Read,
        choice: Choice,
        prior: Option<Seen>,
        prev: Option<Shown>,
    ) -> (Bytes, Option<Seen>, bool) {
        let m = metrics::get();
        let policy = r.prefs.policy as usize;
        let after_write = prior.as_ref().is_some_and(|p| p.write);
        let mut reason = if after_write {
            ReadReason::ReadYourWrites
        } else {
            ReadReason::NoFreshReplica
        };
        let (capture, replica) = match choice {
            Choice::NoReplica => {
                self.fresh
                    .counters
                    .noreplica
                    .fetch_add(1, Ordering::Relaxed);
                m.read(policy, ReadTarget::None, ReadReason::NoFreshReplica);
                m.error(ErrorKind::NoReplica);
                return (
                    reply::error("NOREPLICA no replica is fresh enough"),
                    prior,
                    true,
                );
            }
            Choice::Primary { capture, slo } => {
                if slo && !after_write {
                    reason = ReadReason::Slo;
                }
                (capture, None)
            }
            Choice::Replica {
                replica,
                deadline,
                precheck,
                capture,
            } => (capture, Some((replica, deadline, precheck))),
        };
        if let Some((replica, deadline, precheck)) = replica {
            // Hedging needs the primary's answer to be usable at once: not while the previous
            // read of the chain is in flight, and never under `replica` (replicas only).
            let hedge_after = match prev {
                None if r.prefs.policy != ReadPolicy::Replica => self.hedge_delay(replica),
                _ => None,
            };
            let outcome = match hedge_after {
                None => Ok(self.read_replica(r, replica, deadline, precheck).await),
                // Boxed, as the other uncommon branches below: the read's future is moved
                // into a box per request, so its size is paid on every read.
                Some(after) => {
                    Box::pin(
                        self.read_replica_hedged(r, replica, deadline, precheck, after, &capture),
                    )
                    .await
                }
            };
            let outcome = match outcome {
                Ok(o) => o,
                Err((reply, seen)) => {
                    m.read(policy, ReadTarget::Primary, ReadReason::Hedge);
                    if after_write {
                        m.read_your_writes(RywResult::Primary);
                    }
                    return (reply, Some(seen), true);
                }
            };
            match outcome {
                Ok(reply) => {
                    m.read(policy, ReadTarget::Replica, ReadReason::Fresh);
                    if after_write {
                        m.read_your_writes(RywResult::Replica);
                    }
                    let seen = Seen {
                        by: Served::Replica(replica),
                        at: Some(Instant::now()),
                        floor: None,
                        write: false,
                    };
                    return (reply, Some(seen), false);
                }
                Err(why) => reason = why,
            }
            if r.prefs.policy == ReadPolicy::Replica {
                // Replicas only: a replica that failed or stalled is no more fresh than none.
                // Nothing was shown, so the chain keeps what the previous read showed.
                self.fresh
                    .counters
                    .noreplica
                    .fetch_add(1, Ordering::Relaxed);
                m.read(policy, ReadTarget::None, reason);
                m.error(ErrorKind::NoReplica);
                let seen = match prev {
                    Some(prev) => prev.wait().await,
                    None => prior,
                };
                return (
                    reply::error("NOREPLICA no replica is fresh enough"),
                    seen,
                    true,
                );
            }
        }
        m.read(policy, ReadTarget::Primary, reason);
        if after_write {
            m.read_your_writes(RywResult::Primary);
        }
        // The primary answers after the previous read did: it cannot show anything older.
        if let Some(prev) = prev {
            prev.wait().await;
        }
        let (reply, seen) = Box::pin(self.read_primary(r, capture)).await;
        (reply, Some(seen), true)
    }

    /// When a read on `replica` should be hedged, if hedging is on and within its budget.
    fn hedge_delay(&self, replica: &Backend) -> Option<Duration> {
        let hedge = self.live.load().hedge;
        let after = match hedge.after {
            HedgeAfter::Off => return None,
            HedgeAfter::Fixed(d) => d,
            // Not before the replica has a measured window.
            HedgeAfter::P95 => Some(replica.window_p95()).filter(|d| !d.is_zero())?,
        };
        self.hedge_budget.earn(hedge.max_fraction);
        Some(after)
    }

    /// A replica read with a hedge: if the replica has not answered after `after`, the same
    /// read goes to the primary too (budget permitting) and the first answer wins. Ok: the
    /// replica's outcome (no hedge, or the replica answered first); Err: the primary's reply
    /// and what it showed.
    async fn read_replica_hedged(
        &self,
        r: &Read,
        replica: &Backend,
        deadline: Instant,
        precheck: Option<u64>,
        after: Duration,
        capture: &Option<Arc<str>>,
    ) -> Result<Result<Bytes, ReadReason>, (Bytes, Seen)> {
        let on_replica = self.read_replica(r, replica, deadline, precheck);
        tokio::pin!(on_replica);
        tokio::select! {
            res = &mut on_replica => return Ok(res),
            _ = tokio::time::sleep(after) => {}
        }
        if !self.hedge_budget.spend() {
            return Ok(on_replica.await);
        }
        let m = metrics::get();
        m.hedges_sent.inc();
        let on_primary = self.read_primary(r, capture.clone());
        tokio::pin!(on_primary);
        tokio::select! {
            res = &mut on_replica => match res {
                Ok(reply) => Ok(Ok(reply)),
                // The replica failed: the hedge is the answer.
                Err(_) => Err(on_primary.await),
            },
            answer = &mut on_primary => {
                m.hedges_won.inc();
                Err(answer)
            }
        }
    }

    /// A read on a replica's READONLY connection, given up at `deadline`. None: use the
    /// primary (deadline passed, error reply, MOVED, connection failure, offset check failed).
    async fn read_replica(
        &self,
        r: &Read,
        replica: &Backend,
        deadline: Instant,
        precheck: Option<u64>,
    ) -> Result<Bytes, ReadReason> {
        let counters = &self.fresh.counters;
        let payload = match precheck {
            Some(_) => {
                let mut both = BytesMut::with_capacity(r.payload.len() + reply::ROLE.len());
                both.extend_from_slice(reply::ROLE);
                both.extend_from_slice(&r.payload);
                both.freeze()
            }
            None => r.payload.clone(),
        };
        let replies = if precheck.is_some() { 2 } else { 1 };
        let flight = replica.start();
        let send = async {
            let conn = self
                .pool
                .get(&replica.addr, r.protocol, true, r.lane)
                .await?;
            conn.request(payload, replies).await
        };
        let reply = match tokio::time::timeout_at(deadline.into(), send).await {
            Ok(Ok(reply)) => {
                flight.finish();
                reply
            }
            Ok(Err(e)) => {
                tracing::debug!(replica = %replica.addr, error = %e, "replica read failed");
                counters.error_fallbacks.fetch_add(1, Ordering::Relaxed);
                return Err(ReadReason::Error);
            }
            Err(_) => {
                // The reply may still come; whatever it says is too old by now.
                flight.finish();
                counters.deadline_fallbacks.fetch_add(1, Ordering::Relaxed);
                return Err(ReadReason::Deadline);
            }
        };
        let reply = match precheck {
            None => reply,
            Some(floor) => {
                let parts = split_replies(&reply, r.protocol);
                let (Some(role), Some(body)) = (parts.first(), parts.get(1)) else {
                    counters.error_fallbacks.fetch_add(1, Ordering::Relaxed);
                    return Err(ReadReason::Error);
                };
                if role_offset(role, r.protocol, false).is_none_or(|o| o < floor) {
                    counters.precheck_fallbacks.fetch_add(1, Ordering::Relaxed);
                    return Err(ReadReason::Precheck);
                }
                body.clone()
            }
        };
        if reply.first() == Some(&b'-') {
            if reply::redirect(&reply).is_some() {
                // Demoted, or READONLY lost: the map is out of date.
                self.topology.request_refresh();
            }
            counters.error_fallbacks.fetch_add(1, Ordering::Relaxed);
            return Err(ReadReason::Error);
        }
        replica.reads.fetch_add(1, Ordering::Relaxed);
        counters.reads_replica.fetch_add(1, Ordering::Relaxed);
        Ok(reply)
    }

    /// The latency record of `primary`'s shard's primary, if the monitor knows the shard.
    pub fn primary_backend(&self, primary: &NodeAddr) -> Option<&'static Backend> {
        self.fresh
            .load()
            .shards
            .get(primary)
            .map(|s| s.primary_backend)
    }

    /// A read on the primary. With `capture` (the shard's replication id), a `ROLE` rides
    /// behind it on the same connection: its offset is at least as new as what the read
    /// showed, the floor a replica must reach before this connection reads there again.
    pub async fn read_primary(&self, r: &Read, capture: Option<Arc<str>>) -> (Bytes, Seen) {
        self.fresh
            .counters
            .reads_primary
            .fetch_add(1, Ordering::Relaxed);
        // The primary's reply times feed its estimate (what `nearest` compares).
        let backend = self.primary_backend(&r.primary);
        let flight = backend.map(|b| b.start());
        let (reply, seen) = self.read_primary_timed(r, capture).await;
        if let Some(f) = flight {
            f.finish();
        }
        (reply, seen)
    }

    async fn read_primary_timed(&self, r: &Read, capture: Option<Arc<str>>) -> (Bytes, Seen) {
        if let Some(replid) = capture {
            if let Some((reply, offset)) = self.read_primary_with_role(r).await {
                let seen = Seen {
                    by: Served::Primary,
                    at: Some(Instant::now()),
                    floor: Some(Floor { replid, offset }),
                    write: false,
                };
                return (reply, seen);
            }
        }
        let reply = self
            .forward(r.slot, r.payload.clone(), r.protocol, r.lane, false)
            .await;
        let seen = Seen {
            by: Served::Primary,
            at: Some(Instant::now()),
            floor: None,
            write: false,
        };
        (reply, seen)
    }

    /// The read and a `ROLE` behind it, on the primary the read was planned for. None on a
    /// redirect, a transient error or a lost connection (the caller forwards it as usual: a
    /// read may be sent again).
    async fn read_primary_with_role(&self, r: &Read) -> Option<(Bytes, u64)> {
        let addr = self.topology.load()?.primary_of_slot(r.slot)?.clone();
        if addr != r.primary {
            return None;
        }
        let conn = self.pool.get(&addr, r.protocol, false, r.lane).await.ok()?;
        match with_role_behind(&conn, &r.payload, r.protocol).await {
            Ok((body, Some(offset))) => Some((body, offset)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hedges_stay_within_their_fraction_of_reads() {
        let b = HedgeBudget::default();
        assert!(!b.spend(), "nothing earned yet");
        let mut hedged = 0;
        for _ in 0..10_000 {
            b.earn(0.05);
            if b.spend() {
                hedged += 1;
            }
        }
        assert_eq!(hedged, 500);
        // Savings are capped.
        for _ in 0..100_000 {
            b.earn(0.05);
        }
        let burst = (0..1000).filter(|_| b.spend()).count();
        assert_eq!(burst as u64, HEDGE_BURST);
    }
}
