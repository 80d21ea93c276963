//! The requests of one client read that go, as they arrived, to one node each: sent together,
//! one write and one wait per node, instead of one queued job, one reply channel and one
//! future per request.
//!
//! A session adds a request here when nothing about it needs planning (see
//! `session::batched`): a known single-key command, no transaction or subscription, to the
//! slot's primary, or, under a replica policy, a read to where the chooser sent it (a replica
//! with no offset check needed, or the primary, with a `ROLE` behind the shard's reads to
//! learn a floor), on connections this session's lane has open. The replies come back per
//! node, back to back, and are put in request order.
//!
//! What the ordinary paths do when something goes wrong happens here per request: a reply
//! from a primary that is a redirect or a transient error, and every request of a primary
//! whose connection failed, goes on through `Proxy::forward_after` (a write that may have been
//! applied is not resent). A replica read that failed, errored or passed its deadline goes to
//! the primary (or is `-NOREPLICA` under `replica`), and every later read of that shard in the
//! batch too, since the replica's replies after it may be older than what the primary showed
//! (monotonic reads). What each shard's reads showed is handed to the connection's next read
//! there, as `Proxy::read` does.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use lagwise_shared::topology::NodeAddr;

use crate::backend::{BackendConn, BackendError};
use crate::chain::{self, Showing, Shown};
use crate::freshness::{Floor, ReadPolicy, ReadPrefs, Seen, Served};
use crate::latency::Backend;
use crate::metrics::{self, ErrorKind, ReadReason, ReadTarget, Route, RywResult};
use crate::reply::{self, Protocol};
use crate::route::{self, Proxy, Read};

#[derive(Default)]
pub struct Batch {
    groups: Vec<Group>,
    items: Vec<Item>,
    chains: Vec<Chain>,
    /// When the requests arrived (one client read).
    arrived: Option<Instant>,
    /// Its requests are the parts of one client request, which the session times.
    parts: bool,
}

/// The requests for one node, in order.
struct Group {
    conn: BackendConn,
    /// The first request as it arrived: sent as is when it is the only one.
    first: Bytes,
    /// Every request, once there is more than one.
    all: BytesMut,
    count: usize,
    /// The node's latency record, when a shard's chain of reads goes here.
    timed: Option<&'static Backend>,
    /// For a replica: the earliest deadline of its reads.
    deadline: Option<Instant>,
    /// A `ROLE` goes after the requests (a chain on the primary learns a floor).
    role_behind: bool,
}

struct Item {
    group: usize,
    slot: u16,
    write: bool,
    raw: Bytes,
    /// The command's metric family; for a replica read, its shard's chain.
    family: usize,
    chain: Option<usize>,
}

/// A shard's reads in this batch, all to one node.
struct Chain {
    primary: NodeAddr,
    target: Target,
    /// The node's group.
    group: usize,
    prefs: ReadPrefs,
    /// The shard's replication id, for a `ROLE` behind reads on the primary.
    capture: Option<Arc<str>>,
    /// What the connection had seen on the shard before; then what the reads here showed.
    seen: Option<Seen>,
    /// A read here went to the primary: the replica's later replies may be older.
    fallen: bool,
    /// Reads the replica answered (counted, and shown in `seen`, once at the end).
    replica_reads: u64,
    /// A read on the primary was answered elsewhere (redirected): the `ROLE` behind them
    /// does not bound what it showed.
    unbounded: bool,
    done: Showing,
}

/// Where a shard's reads in a batch go, with the node's latency record (and a replica's read
/// count).
pub enum Target {
    Replica(&'static Backend),
    /// The primary, for this reason (no replica fresh enough, the SLO, read-your-writes).
    Primary(ReadReason, &'static Backend),
}

impl Target {
    fn backend(&self) -> &'static Backend {
        match self {
            Target::Replica(b) | Target::Primary(_, b) => b,
        }
    }
}

/// The first read of a shard's chain in a batch (see `Batch::push_read`).
pub struct ChainStart {
    pub primary: NodeAddr,
    pub target: Target,
    /// For a replica: when its reply is too old to use.
    pub deadline: Option<Instant>,
    pub prefs: ReadPrefs,
    pub capture: Option<Arc<str>>,
    /// What the connection had seen on the shard.
    pub seen: Option<Seen>,
}

/// A node's part of the batch: how it ended, how much of its replies is used, and (for a
/// node chains go to) when they came.
struct Answer {
    outcome: Outcome,
    used: usize,
    conn: BackendConn,
    answered_at: Option<Instant>,
}

/// How a node's part of the batch ended.
enum Outcome {
    Replies(Bytes),
    Failed(BackendError),
    /// A replica's reads passed their deadline.
    Late,
}

impl Batch {
    /// A batch of the parts of one client request (e.g. MGET's per-slot reads).
    pub fn parts() -> Batch {
        Batch {
            parts: true,
            ..Batch::default()
        }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Adds a read of `slot` to the reads of `primary`'s shard already in this batch, to
    /// the same replica (decided moments ago, for the same client read); false if there are
    /// none.
    pub fn push_chained(
        &mut self,
        primary: &NodeAddr,
        slot: u16,
        raw: &Bytes,
        family: usize,
    ) -> bool {
        // By identity: a batch's requests are planned on one map (one client read), where a
        // shard's primary address is one allocation. (Another would only miss the chain: the
        // read is then planned on its own.)
        let Some(chain) = self
            .chains
            .iter()
            .position(|c| Arc::ptr_eq(&c.primary.0, &primary.0))
        else {
            return false;
        };
        let group = self.chains[chain].group;
        self.add_to(group, raw);
        self.items.push(Item {
            group,
            slot,
            write: false,
            raw: raw.clone(),
            family,
            chain: Some(chain),
        });
        true
    }

    /// Adds `raw` (one request for `slot`) for the primary `conn` is connected to.
    pub fn push(
        &mut self,
        conn: &BackendConn,
        slot: u16,
        write: bool,
        raw: Bytes,
        family: usize,
        arrived: Instant,
    ) {
        let group = self.group(conn, &raw);
        self.arrived.get_or_insert(arrived);
        self.items.push(Item {
            group,
            slot,
            write,
            raw,
            family,
            chain: None,
        });
    }

    /// Adds the first read of a shard (`read.primary`'s) to this batch, for the node `conn`
    /// is connected to (`read.target`). Returns what the shard's reads in this batch will
    /// have shown.
    pub fn push_read(
        &mut self,
        conn: &BackendConn,
        slot: u16,
        raw: Bytes,
        family: usize,
        arrived: Instant,
        read: ChainStart,
    ) -> Shown {
        let group = self.group(conn, &raw);
        let g = &mut self.groups[group];
        g.timed.get_or_insert(read.target.backend());
        if let Some(d) = read.deadline {
            g.deadline = Some(g.deadline.map_or(d, |e| e.min(d)));
        }
        if matches!(read.target, Target::Primary(..)) && read.capture.is_some() {
            g.role_behind = true;
        }
        self.arrived.get_or_insert(arrived);
        let (tx, rx) = chain::link();
        self.chains.push(Chain {
            primary: read.primary,
            target: read.target,
            group,
            prefs: read.prefs,
            capture: read.capture,
            seen: read.seen,
            fallen: false,
            replica_reads: 0,
            unbounded: false,
            done: tx,
        });
        self.items.push(Item {
            group,
            slot,
            write: false,
            raw,
            family,
            chain: Some(self.chains.len() - 1),
        });
        rx
    }

    fn add_to(&mut self, group: usize, raw: &Bytes) {
        let g = &mut self.groups[group];
        if g.count == 1 {
            g.all.reserve(g.first.len() + raw.len() * 8);
            g.all.extend_from_slice(&g.first);
        }
        g.all.extend_from_slice(raw);
        g.count += 1;
    }

    fn group(&mut self, conn: &BackendConn, raw: &Bytes) -> usize {
        match self.groups.iter().position(|g| g.conn.same(conn)) {
            Some(i) => {
                self.add_to(i, raw);
                i
            }
            None => {
                self.groups.push(Group {
                    conn: conn.clone(),
                    first: raw.clone(),
                    all: BytesMut::new(),
                    count: 1,
                    timed: None,
                    deadline: None,
                    role_behind: false,
                });
                self.groups.len() - 1
            }
        }
    }

    /// Sends every group (when first polled, so in order with the requests before it) and
    /// returns the replies in request order, back to back.
    pub async fn run(self, proxy: Arc<Proxy>, protocol: Protocol, lane: usize) -> Bytes {
        let Batch {
            groups,
            items,
            mut chains,
            arrived,
            parts,
        } = self;
        // The latency records of the nodes chains go to: each group is one reply time (what
        // each of its reads waited) and one read in flight meanwhile.
        let sent_at = Instant::now();
        let sent: Vec<_> = groups
            .into_iter()
            .map(|mut g| {
                if g.role_behind {
                    if g.count == 1 {
                        g.all.extend_from_slice(&g.first);
                    }
                    g.all.extend_from_slice(reply::ROLE);
                    g.count += 1;
                }
                let payload = if g.count == 1 {
                    g.first
                } else {
                    g.all.freeze()
                };
                let flight = g.timed.map(|b| b.start_at(sent_at));
                // A replica's replies that come after the deadline are `Timeout` (the
                // connection keeps the time, so the order the groups are awaited in does not
                // matter).
                let wait = g.conn.send_by(payload, g.count, g.deadline);
                (wait, g.conn, flight)
            })
            .collect();
        let mut nodes: Vec<Answer> = Vec::with_capacity(sent.len());
        let mut size = 0;
        for (wait, conn, flight) in sent {
            let outcome = match wait {
                Ok(rx) => match rx.await {
                    // Only a request with a deadline is answered `Timeout` by its connection.
                    Ok(Err(BackendError::Timeout(_))) => Outcome::Late,
                    Ok(r) => r.into(),
                    Err(_) => Outcome::Failed(BackendError::Lost(conn.addr().clone())),
                },
                Err(e) => Outcome::Failed(e),
            };
            let answered_at = flight.as_ref().map(|_| Instant::now());
            // As a single read: timed when answered or late, not when it failed.
            if let (Some(f), Some(at)) = (flight, answered_at) {
                if !matches!(outcome, Outcome::Failed(_)) {
                    f.finish_at(at);
                }
            }
            if let Outcome::Replies(b) = &outcome {
                size += b.len();
            }
            nodes.push(Answer {
                outcome,
                used: 0,
                conn,
                answered_at,
            });
        }
        let m = metrics::get();
        let counters = &proxy.fresh.counters;
        let mut out = BytesMut::with_capacity(size);
        // Requests answered, by route, for the reply-time metrics.
        let mut answered = [0usize; 4];
        for item in items {
            let Answer {
                outcome,
                used: at,
                conn,
                answered_at,
            } = &mut nodes[item.group];
            let late = matches!(outcome, Outcome::Late);
            let reply = match outcome {
                Outcome::Replies(all) => match reply::frame_len(&all[*at..], protocol) {
                    Ok(Some(n)) => {
                        *at += n;
                        Ok(all.slice(*at - n..*at))
                    }
                    // The reader framed these replies: this cannot be, but is not a panic.
                    _ => Err(BackendError::Protocol(
                        conn.addr().clone(),
                        "batched replies out of step".into(),
                    )),
                },
                Outcome::Failed(e) => Err(e.clone()),
                Outcome::Late => Err(BackendError::Timeout(conn.addr().clone())),
            };
            let Some(c) = item.chain else {
                answered[Route::Primary as usize] += 1;
                primary_reply(&proxy, item, reply, protocol, lane, &mut out).await;
                continue;
            };
            let chain = &mut chains[c];
            let policy = chain.prefs.policy as usize;
            // Its first read comes right after the connection's own write.
            let after_write =
                chain.replica_reads == 0 && chain.seen.as_ref().is_some_and(|s| s.write);
            let replica = match &chain.target {
                Target::Replica(addr) => addr,
                Target::Primary(reason, _) => {
                    counters.reads_primary.fetch_add(1, Ordering::Relaxed);
                    let reason = if after_write {
                        m.read_your_writes(RywResult::Primary);
                        ReadReason::ReadYourWrites
                    } else {
                        *reason
                    };
                    m.read(policy, ReadTarget::Primary, reason);
                    m.request(item.family, Route::Primary);
                    answered[Route::Primary as usize] += 1;
                    let answered_at = *answered_at;
                    let at = if primary_reply(&proxy, item, reply, protocol, lane, &mut out).await {
                        chain.unbounded = true;
                        Instant::now()
                    } else {
                        answered_at.unwrap_or_else(Instant::now)
                    };
                    chain.seen = Some(Seen {
                        by: Served::Primary,
                        at: Some(at),
                        floor: None,
                        write: false,
                    });
                    continue;
                }
            };
            let reason = match reply {
                Ok(r) if !chain.fallen && r.first() != Some(&b'-') => {
                    out.extend_from_slice(&r);
                    if after_write {
                        m.read_your_writes(RywResult::Replica);
                    }
                    chain.replica_reads += 1;
                    m.request(item.family, Route::Replica);
                    answered[Route::Replica as usize] += 1;
                    continue;
                }
                _ if chain.fallen => {
                    counters.monotonic_rereads.fetch_add(1, Ordering::Relaxed);
                    ReadReason::Monotonic
                }
                Ok(r) => {
                    if reply::redirect(&r).is_some() {
                        // Demoted, or READONLY lost: the map is out of date.
                        proxy.topology.request_refresh();
                    }
                    counters.error_fallbacks.fetch_add(1, Ordering::Relaxed);
                    ReadReason::Error
                }
                Err(_) if late => {
                    counters.deadline_fallbacks.fetch_add(1, Ordering::Relaxed);
                    ReadReason::Deadline
                }
                Err(e) => {
                    tracing::debug!(replica = %replica.addr, error = %e, "replica read failed");
                    counters.error_fallbacks.fetch_add(1, Ordering::Relaxed);
                    ReadReason::Error
                }
            };
            if after_write {
                m.read_your_writes(RywResult::Primary);
            }
            if chain.prefs.policy == ReadPolicy::Replica {
                // Replicas only: nothing was shown, the chain keeps what it had.
                counters.noreplica.fetch_add(1, Ordering::Relaxed);
                m.read(policy, ReadTarget::None, reason);
                m.error(ErrorKind::NoReplica);
                m.request(item.family, Route::Replica);
                answered[Route::Replica as usize] += 1;
                out.extend_from_slice(&reply::error("NOREPLICA no replica is fresh enough"));
                continue;
            }
            m.read(policy, ReadTarget::Primary, reason);
            m.request(item.family, Route::Primary);
            answered[Route::Primary as usize] += 1;
            let read = Read {
                slot: item.slot,
                payload: item.raw,
                protocol,
                lane,
                prefs: chain.prefs,
                primary: chain.primary.clone(),
                force_primary: false,
                counted: None,
            };
            let (r, seen) = proxy.read_primary(&read, chain.capture.clone()).await;
            out.extend_from_slice(&r);
            chain.seen = Some(seen);
            chain.fallen = true;
        }
        for mut chain in chains {
            let node = &nodes[chain.group];
            match &chain.target {
                Target::Replica(replica) if chain.replica_reads > 0 => {
                    let n = chain.replica_reads;
                    replica.reads.fetch_add(n, Ordering::Relaxed);
                    counters.reads_replica.fetch_add(n, Ordering::Relaxed);
                    m.read_n(
                        chain.prefs.policy as usize,
                        ReadTarget::Replica,
                        ReadReason::Fresh,
                        n,
                    );
                    if !chain.fallen {
                        // All of the replica's replies arrived together: the last one read
                        // shows what any did.
                        chain.seen = Some(Seen {
                            by: Served::Replica(replica),
                            at: Some(node.answered_at.unwrap_or_else(Instant::now)),
                            floor: None,
                            write: false,
                        });
                    }
                }
                // On the primary: the `ROLE` behind its reads (the group's last reply) gives
                // an offset at least as new as anything they showed.
                Target::Primary(..) if !chain.unbounded => {
                    if let (Some(replid), Outcome::Replies(all), Some(seen)) =
                        (&chain.capture, &node.outcome, chain.seen.as_mut())
                    {
                        if let Some(offset) =
                            route::role_offset(&all.slice(node.used..), protocol, true)
                        {
                            seen.floor = Some(Floor {
                                replid: replid.clone(),
                                offset,
                            });
                        }
                    }
                }
                _ => {}
            }
            chain.done.done(chain.seen);
        }
        if let Some(arrived) = arrived.filter(|_| !parts) {
            let d = arrived.elapsed();
            for (route, n) in [Route::Primary, Route::Replica]
                .into_iter()
                .map(|r| (r, answered[r as usize]))
            {
                for _ in 0..n {
                    m.duration(route, d);
                }
            }
        }
        out.freeze()
    }
}

impl From<Result<Bytes, BackendError>> for Outcome {
    fn from(r: Result<Bytes, BackendError>) -> Outcome {
        match r {
            Ok(b) => Outcome::Replies(b),
            Err(e) => Outcome::Failed(e),
        }
    }
}

/// Puts a primary's reply to `item` in `out`; a redirect, a transient error or a failure is
/// followed as `forward` would (`Proxy::forward_after`). True if it was: answered elsewhere.
async fn primary_reply(
    proxy: &Proxy,
    item: Item,
    reply: Result<Bytes, BackendError>,
    protocol: Protocol,
    lane: usize,
    out: &mut BytesMut,
) -> bool {
    match reply {
        Ok(r) if !needs_following(&r) => {
            out.extend_from_slice(&r);
            false
        }
        first => {
            let r = proxy
                .forward_after(item.slot, item.raw, protocol, lane, item.write, Some(first))
                .await;
            out.extend_from_slice(&r);
            true
        }
    }
}

/// A reply `forward` would not hand to the client as it is: a redirect, or an error worth
/// waiting out.
fn needs_following(r: &[u8]) -> bool {
    r.first() == Some(&b'-')
        && (r.starts_with(b"-MOVED ") || r.starts_with(b"-ASK ") || reply::is_transient(r))
}
