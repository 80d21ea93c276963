//! Replication, as Valkey does it: asynchronous, by replication id and byte offset.
//!
//! - [`backlog`]: the stream's memory (partial resyncs, replicas being fed, the AOF).
//! - [`primary`]: serving replicas: PSYNC, full and partial resync, the stream, acks, WAIT.
//! - [`replica`]: following a primary: the handshake, loading its snapshot, applying its
//!   stream, acks.
//!
//! A node's history is named by a replication id and measured by an offset (bytes of stream
//! since that id began). A replica takes its primary's id and offset and relays the stream
//! byte for byte into its own backlog, so after a promotion its siblings can continue from it
//! (PSYNC2): the promoted node keeps the old id as `replid2`, valid up to `second_offset`.

pub mod backlog;
pub mod primary;
pub mod replica;

/// Drops the connections of our replicas: they reconnect and learn our new history.
pub fn disconnect_replicas(server: &crate::server::Server) {
    let ids: Vec<u64> = server
        .repl
        .state
        .lock()
        .replicas
        .iter()
        .map(|r| r.client_id)
        .collect();
    for h in server.clients.snapshot() {
        if ids.contains(&h.id) {
            h.kill();
        }
    }
}

/// Stops following a primary and becomes one (REPLICAOF NO ONE, a cluster failover): a new
/// history begins here, and the old one stays continuable (replid2), so former siblings and
/// our own replicas resync partially.
pub fn promote(server: &crate::server::Server, db: &mut crate::db::Db) {
    {
        let mut s = server.repl.state.lock();
        s.generation += 1;
        s.primary = None;
    }
    server.repl.set_replica(false);
    server.repl.shift_replid();
    db.expiry = crate::db::ExpiryMode::Delete;
    db.repl.set_enabled(server.repl.backlog_active());
    db.repl.select_next();
    // Our replicas learn the new id by reconnecting.
    disconnect_replicas(server);
    tracing::info!("promoted to primary: new replication id, the old one kept as replid2");
}

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use parking_lot::Mutex;
use tokio::sync::Notify;

use backlog::Backlog;

/// Valkey's default `client-output-buffer-limit replica` hard limit: a replica further behind
/// than this is dropped.
pub const REPLICA_HARD_LIMIT: u64 = 256 * 1024 * 1024;

/// Where a replica's link to its primary stands (`master_link_status` and more).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Waiting to (re)connect.
    Connect,
    /// Connected, in the handshake.
    Handshake,
    /// Receiving and loading a snapshot.
    Transfer,
    /// Applying the stream.
    Up,
}

#[derive(Debug)]
pub struct PrimaryLink {
    pub host: String,
    pub port: u16,
    pub state: LinkState,
    pub last_io: Instant,
    pub down_since: Instant,
    /// Stream bytes read from the primary (`slave_read_repl_offset`).
    pub read_offset: u64,
    pub sync_bytes_total: i64,
    pub sync_bytes_read: u64,
}

/// One replica connected to this node, for INFO, WAIT and min-replicas.
#[derive(Debug, Clone)]
pub struct ReplicaEntry {
    pub client_id: u64,
    pub ip: IpAddr,
    pub listening_port: u16,
    pub state: &'static str,
    pub ack_offset: u64,
    pub last_ack: Instant,
}

#[derive(Debug)]
pub struct ReplState {
    pub replid: String,
    pub replid2: String,
    /// The last offset (plus one, as Valkey reports it) up to which `replid2` is valid; -1.
    pub second_offset: i64,
    pub primary: Option<PrimaryLink>,
    /// Bumped by every REPLICAOF: a link task of an older generation stops.
    pub generation: u64,
    pub replicas: Vec<ReplicaEntry>,
    pub sync_full: u64,
    pub sync_partial_ok: u64,
    pub sync_partial_err: u64,
}

pub struct Replication {
    pub state: Mutex<ReplState>,
    pub backlog: Mutex<Backlog>,
    /// Woken when bytes are appended to the backlog.
    pub new_data: Notify,
    /// Woken when a replica acknowledges an offset (WAIT).
    pub acked: Notify,
    /// The backlog's end, readable without its lock (WAIT's target offset).
    end_hint: AtomicU64,
    /// Whether the backlog exists in Valkey's sense: created when the first replica syncs.
    active: AtomicBool,
    is_replica: AtomicBool,
    link_up: AtomicBool,
    /// Replicas whose last ack is within `min-replicas-max-lag`, refreshed every second.
    pub good_replicas: AtomicUsize,
    /// `min-replicas-to-write`, mirrored here so the write path reads an atomic, not the
    /// configuration.
    min_replicas: AtomicUsize,
    /// Serialises full syncs: replicas that ask while one is being prepared share it.
    pub sync_hub: Mutex<Option<primary::PendingSync>>,
}

impl Replication {
    pub fn new(replid: String, backlog_size: usize) -> Replication {
        Replication {
            state: Mutex::new(ReplState {
                replid,
                replid2: "0".repeat(40),
                second_offset: -1,
                primary: None,
                generation: 0,
                replicas: Vec::new(),
                sync_full: 0,
                sync_partial_ok: 0,
                sync_partial_err: 0,
            }),
            backlog: Mutex::new(Backlog::new(0, backlog_size, REPLICA_HARD_LIMIT)),
            new_data: Notify::new(),
            acked: Notify::new(),
            end_hint: AtomicU64::new(0),
            active: AtomicBool::new(false),
            is_replica: AtomicBool::new(false),
            link_up: AtomicBool::new(false),
            good_replicas: AtomicUsize::new(0),
            min_replicas: AtomicUsize::new(0),
            sync_hub: Mutex::new(None),
        }
    }

    pub fn is_replica(&self) -> bool {
        self.is_replica.load(Ordering::Acquire)
    }

    pub(crate) fn set_replica(&self, on: bool) {
        self.is_replica.store(on, Ordering::Release);
        if !on {
            self.link_up.store(false, Ordering::Release);
        }
    }

    pub fn link_up(&self) -> bool {
        self.link_up.load(Ordering::Acquire)
    }

    pub(crate) fn set_link_up(&self, up: bool) {
        self.link_up.store(up, Ordering::Release);
    }

    pub fn backlog_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    pub(crate) fn set_backlog_active(&self) {
        self.active.store(true, Ordering::Release);
    }

    /// `master_repl_offset`, as of the last append.
    pub fn offset(&self) -> u64 {
        self.end_hint.load(Ordering::Acquire)
    }

    /// Appends stream bytes and wakes whoever reads them.
    pub fn append(&self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let end = {
            let mut b = self.backlog.lock();
            b.append(bytes);
            b.end()
        };
        self.end_hint.store(end, Ordering::Release);
        self.new_data.notify_waiters();
    }

    /// Starts a new history at `offset` with an empty backlog (a replica after a full sync).
    pub(crate) fn reset_backlog(&self, offset: u64) {
        let mut b = self.backlog.lock();
        let (size, hard) = (b.size_limit(), REPLICA_HARD_LIMIT);
        *b = Backlog::new(offset, size, hard);
        self.end_hint.store(offset, Ordering::Release);
        self.active.store(true, Ordering::Release);
    }

    /// How many replicas have acknowledged `offset` or later.
    pub fn acked_count(&self, offset: u64) -> usize {
        self.state
            .lock()
            .replicas
            .iter()
            .filter(|r| r.state == "online" && r.ack_offset >= offset)
            .count()
    }

    /// Valkey's `shiftReplicationId`: a new history begins here (a promotion); the old id
    /// stays valid up to this offset, so former siblings can continue from us.
    pub(crate) fn shift_replid(&self) {
        let offset = self.backlog.lock().end();
        let mut s = self.state.lock();
        s.replid2 = std::mem::replace(&mut s.replid, crate::server::random_hex40());
        s.second_offset = offset as i64 + 1;
    }

    /// Whether writes may proceed under `min-replicas-to-write`.
    pub fn enough_good_replicas(&self) -> bool {
        let min = self.min_replicas.load(Ordering::Relaxed);
        min == 0 || self.good_replicas.load(Ordering::Relaxed) >= min
    }

    /// Refreshes the count of replicas that acked recently enough (min-replicas-max-lag).
    pub fn refresh_good_replicas(&self, min_replicas: usize, max_lag_secs: u64) {
        self.min_replicas.store(min_replicas, Ordering::Relaxed);
        let s = self.state.lock();
        let good = s
            .replicas
            .iter()
            .filter(|r| r.state == "online" && r.last_ack.elapsed().as_secs() <= max_lag_secs)
            .count();
        self.good_replicas.store(good, Ordering::Relaxed);
    }
}
