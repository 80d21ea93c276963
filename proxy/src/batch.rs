//! The requests of one client read that go, as they arrived, to one node each: sent together,
//! one write and one wait per node, instead of one queued job, one reply channel and one
//! future per request.
//!
//! A session adds a request here when nothing about it needs planning (see
//! `session::batched`): a known single-key command, no transaction or subscription, to the
//! slot's primary, or, under a replica policy, a read to the replica the chooser picked with
//! no offset check needed, on connections this session's lane has open. The replies come
//! back per node, back to back, and are put in request order.
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
use tokio::sync::oneshot;

use lagwise_shared::topology::NodeAddr;

use crate::backend::{BackendConn, BackendError};
use crate::freshness::{ReadPolicy, ReadPrefs, Seen, Served};
use crate::latency::Backend;
use crate::metrics::{self, ErrorKind, ReadReason, ReadTarget, Route};
use crate::reply::{self, Protocol};
use crate::route::{Proxy, Read};

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
    /// For a replica: its latency record and the earliest deadline of its reads.
    replica: Option<(Arc<Backend>, Instant)>,
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

/// A shard's reads in this batch, all to one replica.
struct Chain {
    primary: NodeAddr,
    replica: NodeAddr,
    /// The replica's group, and its latency record and read count.
    group: usize,
    backend: Arc<Backend>,
    prefs: ReadPrefs,
    /// The shard's replication id, for a `ROLE` behind a fallback read on the primary.
    capture: Option<Arc<str>>,
    /// What the connection had seen on the shard before; then what the reads here showed.
    seen: Option<Seen>,
    /// A read here went to the primary: the replica's later replies may be older.
    fallen: bool,
    done: oneshot::Sender<Option<Seen>>,
}

/// A replica read to add (see `Batch::push_read`).
pub struct ReplicaRead {
    pub primary: NodeAddr,
    pub replica: NodeAddr,
    pub backend: Arc<Backend>,
    pub deadline: Instant,
    pub prefs: ReadPrefs,
    pub capture: Option<Arc<str>>,
    /// What the connection had seen on the shard.
    pub seen: Option<Seen>,
}

/// A node's part of the batch: how it ended, how much of its replies is used, and when a
/// replica's came.
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
        let Some(chain) = self.chains.iter().position(|c| c.primary == *primary) else {
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

    /// Adds the first read of a shard (`read.primary`'s) to this batch, for the replica
    /// `conn` is connected to. Returns the receiver of what the shard's reads in this batch
    /// will have shown.
    pub fn push_read(
        &mut self,
        conn: &BackendConn,
        slot: u16,
        raw: Bytes,
        family: usize,
        arrived: Instant,
        read: ReplicaRead,
    ) -> oneshot::Receiver<Option<Seen>> {
        let group = self.group(conn, &raw);
        let g = &mut self.groups[group];
        match &mut g.replica {
            Some((_, deadline)) => *deadline = (*deadline).min(read.deadline),
            None => g.replica = Some((read.backend.clone(), read.deadline)),
        }
        self.arrived.get_or_insert(arrived);
        let (tx, rx) = oneshot::channel();
        self.chains.push(Chain {
            primary: read.primary,
            replica: read.replica,
            group,
            backend: read.backend,
            prefs: read.prefs,
            capture: read.capture,
            seen: read.seen,
            fallen: false,
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
                    replica: None,
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
        // Replica groups' latency records: each group is one reply time (what each of its
        // reads waited) and one read in flight meanwhile.
        let backends: Vec<Option<Arc<Backend>>> = groups
            .iter()
            .map(|g| g.replica.as_ref().map(|(b, _)| b.clone()))
            .collect();
        let mut sent: Vec<_> = groups
            .into_iter()
            .zip(&backends)
            .map(|(g, backend)| {
                let payload = if g.count == 1 {
                    g.first
                } else {
                    g.all.freeze()
                };
                let flight = backend.as_deref().map(Backend::start);
                let deadline = g.replica.map(|(_, d)| d);
                Some((g.conn.send(payload, g.count), g.conn, deadline, flight))
            })
            .collect();
        // Replicas first, earliest deadline first: a replica's reply is taken only if it came
        // by its deadline, which waiting for another node first could hide.
        let mut order: Vec<usize> = (0..sent.len()).collect();
        order.sort_by_key(|&i| {
            let deadline = sent[i].as_ref().and_then(|s| s.2);
            (deadline.is_none(), deadline)
        });
        let mut nodes: Vec<Option<Answer>> = (0..sent.len()).map(|_| None).collect();
        let mut size = 0;
        for i in order {
            let Some((wait, conn, deadline, flight)) = sent[i].take() else {
                continue;
            };
            let outcome = match wait {
                Ok(rx) => {
                    let lost = || BackendError::Lost(conn.addr().clone());
                    match deadline {
                        None => rx.await.unwrap_or_else(|_| Err(lost())).into(),
                        Some(deadline) => {
                            match tokio::time::timeout_at(deadline.into(), rx).await {
                                Ok(r) => r.unwrap_or_else(|_| Err(lost())).into(),
                                Err(_) => Outcome::Late,
                            }
                        }
                    }
                }
                Err(e) => Outcome::Failed(e),
            };
            // As a single read: timed when answered or late, not when it failed.
            if let Some(f) = flight {
                if !matches!(outcome, Outcome::Failed(_)) {
                    f.finish();
                }
            }
            if let Outcome::Replies(b) = &outcome {
                size += b.len();
            }
            nodes[i] = Some(Answer {
                outcome,
                used: 0,
                conn,
                answered_at: deadline.map(|_| Instant::now()),
            });
        }
        let m = metrics::get();
        let counters = &proxy.fresh.counters;
        let mut out = BytesMut::with_capacity(size);
        // Requests answered, by route, for the reply-time metrics.
        let mut answered = [0usize; 4];
        for item in items {
            let Some(Answer {
                outcome,
                used: at,
                conn,
                answered_at,
            }) = nodes[item.group].as_mut()
            else {
                // Every group was awaited above.
                continue;
            };
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
                match reply {
                    Ok(r) if !needs_following(&r) => out.extend_from_slice(&r),
                    first => {
                        let r = proxy
                            .forward_after(
                                item.slot,
                                item.raw,
                                protocol,
                                lane,
                                item.write,
                                Some(first),
                            )
                            .await;
                        out.extend_from_slice(&r);
                    }
                }
                continue;
            };
            let chain = &mut chains[c];
            let policy = chain.prefs.policy as usize;
            let reason = match reply {
                Ok(r) if !chain.fallen && r.first() != Some(&b'-') => {
                    out.extend_from_slice(&r);
                    chain.backend.reads.fetch_add(1, Ordering::Relaxed);
                    counters.reads_replica.fetch_add(1, Ordering::Relaxed);
                    m.read(policy, ReadTarget::Replica, ReadReason::Fresh);
                    m.request(item.family, Route::Replica);
                    answered[Route::Replica as usize] += 1;
                    chain.seen = Some(Seen {
                        by: Served::Replica(chain.replica.clone()),
                        at: Some(answered_at.unwrap_or_else(Instant::now)),
                        floor: None,
                        write: false,
                    });
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
                    tracing::debug!(replica = %chain.replica, error = %e, "replica read failed");
                    counters.error_fallbacks.fetch_add(1, Ordering::Relaxed);
                    ReadReason::Error
                }
            };
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
        for chain in chains {
            let _ = chain.done.send(chain.seen);
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

/// A reply `forward` would not hand to the client as it is: a redirect, or an error worth
/// waiting out.
fn needs_following(r: &[u8]) -> bool {
    r.first() == Some(&b'-')
        && (r.starts_with(b"-MOVED ") || r.starts_with(b"-ASK ") || reply::is_transient(r))
}
