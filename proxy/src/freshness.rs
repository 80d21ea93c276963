//! Replica freshness: how far behind its primary each replica is, measured by the proxy itself,
//! and which replicas a read may use.
//!
//! The replication monitor polls every primary and every replica of the current topology with
//! `INFO replication persistence`, each on one small admin connection of its own (not the data
//! path), every `replication_poll_interval`. It does not use the offsets a primary reports for
//! its replicas: replicas acknowledge only about once a second.
//!
//! Per shard it keeps a short history of (time, primary offset). The time of a sample is when
//! its INFO was *sent*: every write the primary had applied by then is within the offset it
//! reports. Per replica it keeps the last processed offset (`slave_repl_offset`), link and
//! sync state. Offsets compare only within one replication id: a replica reporting another
//! id than its primary is not trusted, and a new id on the primary (a failover) restarts the
//! history.
//!
//! Lag of a replica whose processed offset is R:
//! - in bytes: the latest primary offset − R;
//! - in time: now − t*, where t* is the time of the latest primary sample whose offset is ≤ R.
//!   This is an upper bound on how old the replica's data can be now: every write the
//!   primary had applied before t* is at an offset ≤ P(t*) ≤ R, so the replica has it (and
//!   offsets only grow, so it still has it now, whenever R was read). What the replica may
//!   lack is only what the primary applied after t*, so its view is at most now − t* old.
//!   Without such a sample in the history (the replica is further behind than the history, or
//!   the history just restarted) it is not eligible.
//!
//! Eligible: link up, not syncing, not loading, a sample no older than 3 poll intervals, the
//! primary's replication id, lag within `max_lag_ms` (and `max_lag_bytes` if set). Hysteresis:
//! a replica that was dropped comes back only under 0.8 × the bounds, so one that hovers at
//! the bound does not flip at every poll. The rule is absolute (never relative to the other
//! replicas), so a slow shard does not drop every replica at once.
//!
//! The result is published as an immutable [`Snapshot`] through an `ArcSwap`: the request
//! path only loads it, and computes a replica's lag at the moment it chooses (now − t*), so a
//! replica whose polls stall keeps ageing between snapshots.
//!
//! Monotonic reads per client connection ([`Seen`], [`Freshness::choose`]): a connection's
//! reads on a shard form a chain; a read may go to a replica only if that replica provably has
//! everything the connection was already shown there (see `monotonic`).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use smallvec::SmallVec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::debug;

use lagwise_shared::shutdown::Shutdown;
use lagwise_shared::topology::NodeAddr;

use crate::latency::{p2c, Backend};
use crate::reply::{self, encode, Protocol};
use crate::topology::TopologyHandle;

/// How long the history of primary offsets reaches back.
const HISTORY_SPAN: Duration = Duration::from_secs(30);
/// A replica is chosen only if at least this much of its staleness budget is left for the
/// read itself (the read is abandoned for the primary when the budget runs out).
pub const MIN_BUDGET: Duration = Duration::from_millis(3);
/// A replica comes back after being dropped only under this fraction of the bounds.
const HYSTERESIS: f64 = 0.8;
/// A replica out of rotation for its latency still gets one read in this many (a probe).
const PROBE_EVERY: u32 = 500;

/// A replica sample older than this many poll intervals makes the replica ineligible.
const SAMPLE_MAX_AGE_POLLS: u32 = 3;

/// Where a connection's reads go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadPolicy {
    /// Every read to the slot's primary (the default: no staleness at all).
    Primary,
    /// A replica within the bounds if there is one, else the primary.
    PreferReplica,
    /// Only replicas within the bounds; `-NOREPLICA` when there is none.
    Replica,
    /// The lowest latency among the primary and the replicas within the bounds.
    Nearest,
}

impl ReadPolicy {
    pub fn parse(s: &str) -> Option<ReadPolicy> {
        match s.to_ascii_lowercase().as_str() {
            "primary" => Some(ReadPolicy::Primary),
            "prefer-replica" | "prefer_replica" => Some(ReadPolicy::PreferReplica),
            "replica" => Some(ReadPolicy::Replica),
            "nearest" => Some(ReadPolicy::Nearest),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ReadPolicy::Primary => "primary",
            ReadPolicy::PreferReplica => "prefer-replica",
            ReadPolicy::Replica => "replica",
            ReadPolicy::Nearest => "nearest",
        }
    }
}

/// Staleness bounds of a replica read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// How old the data a read returns may be.
    pub max_lag: Duration,
    /// How far behind the primary's offset a replica may be; 0: no bound.
    pub max_lag_bytes: u64,
}

impl Bounds {
    /// Within the bounds scaled by `factor` (1 to stay eligible, 0.8 to come back).
    fn within(&self, lag: Duration, lag_bytes: u64, factor: f64) -> bool {
        lag.as_secs_f64() <= self.max_lag.as_secs_f64() * factor
            && (self.max_lag_bytes == 0 || lag_bytes as f64 <= self.max_lag_bytes as f64 * factor)
    }
}

/// A connection's read settings: the proxy's defaults until `PROXY READPOLICY` changes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadPrefs {
    pub policy: ReadPolicy,
    pub bounds: Bounds,
    /// After the connection's write to a shard, its reads there go only to replicas that
    /// have the write.
    pub read_your_writes: bool,
}

/// The monitor's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub poll_interval: Duration,
    /// The proxy's own zone (e.g. the Kubernetes topology zone of its pod).
    pub zone: Option<Arc<str>>,
    /// Each node's zone, as configured.
    pub node_zones: HashMap<NodeAddr, Arc<str>>,
    /// (username, password) for the admin connections.
    pub auth: Option<(Option<String>, String)>,
}

impl Settings {
    /// An INFO that takes longer than this counts as failed (the connection is dropped).
    fn poll_timeout(&self) -> Duration {
        (self.poll_interval * 2).clamp(Duration::from_millis(50), Duration::from_secs(1))
    }

    /// Between a primary's sample and its replicas': enough for a healthy replica to apply
    /// what the primary just reported, so its measured lag starts near zero rather than at one
    /// poll interval.
    fn settle(&self) -> Duration {
        (self.poll_interval / 5).min(Duration::from_millis(2))
    }

    fn sample_max_age(&self) -> Duration {
        self.poll_interval * SAMPLE_MAX_AGE_POLLS
    }
}

// ---------------------------------------------------------------------------------------
// INFO replication
// ---------------------------------------------------------------------------------------

/// What `INFO replication persistence` says about replication.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplInfo {
    pub is_replica: bool,
    /// `master_replid`: on a replica, the id of the history it follows (its primary's).
    pub replid: String,
    /// `master_repl_offset`.
    pub offset: u64,
    /// `slave_repl_offset` (processed, not merely read), on a replica.
    pub processed: Option<u64>,
    pub link_up: bool,
    pub syncing: bool,
    pub loading: bool,
}

pub fn parse_info(text: &str) -> Result<ReplInfo, String> {
    let mut info = ReplInfo::default();
    let mut role = None;
    let mut offset = None;
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k {
            "role" => role = Some(v == "slave" || v == "replica"),
            "master_replid" => info.replid = v.to_string(),
            "master_repl_offset" => offset = v.parse().ok(),
            "slave_repl_offset" => info.processed = v.parse().ok(),
            "master_link_status" => info.link_up = v == "up",
            "master_sync_in_progress" => info.syncing = v != "0",
            "loading" => info.loading = v != "0",
            _ => {}
        }
    }
    info.is_replica = role.ok_or("no role in INFO")?;
    info.offset = offset.ok_or("no master_repl_offset in INFO")?;
    if info.replid.is_empty() {
        return Err("no master_replid in INFO".into());
    }
    if info.is_replica && info.processed.is_none() {
        return Err("no slave_repl_offset in a replica's INFO".into());
    }
    Ok(info)
}

// ---------------------------------------------------------------------------------------
// History of a primary's offsets
// ---------------------------------------------------------------------------------------

/// (time the INFO was sent, primary offset), oldest first; offsets never decrease.
#[derive(Debug)]
struct History {
    samples: VecDeque<(Instant, u64)>,
    cap: usize,
}

impl History {
    fn new(poll_interval: Duration) -> History {
        let n = HISTORY_SPAN.as_millis() / poll_interval.as_millis().max(1);
        History {
            samples: VecDeque::new(),
            cap: (n as usize).clamp(16, 4096),
        }
    }

    fn clear(&mut self) {
        self.samples.clear();
    }

    fn push(&mut self, at: Instant, offset: u64) {
        if self.samples.back().is_some_and(|&(_, o)| o > offset) {
            // The offset went back without a new replication id: nothing before compares.
            self.samples.clear();
        }
        self.samples.push_back((at, offset));
        while self.samples.len() > self.cap
            || self
                .samples
                .front()
                .is_some_and(|&(t, _)| at.saturating_duration_since(t) > HISTORY_SPAN)
        {
            self.samples.pop_front();
        }
    }

    fn latest(&self) -> Option<(Instant, u64)> {
        self.samples.back().copied()
    }

    /// t*: the time of the latest sample whose offset is ≤ `offset`.
    fn fresh_as_of(&self, offset: u64) -> Option<Instant> {
        let i = self.samples.partition_point(|&(_, o)| o <= offset);
        i.checked_sub(1).map(|i| self.samples[i].0)
    }
}

/// Whether a replica is eligible after a sample, given whether it was before.
fn next_eligible(was: bool, lag: Duration, lag_bytes: u64, bounds: &Bounds) -> bool {
    bounds.within(lag, lag_bytes, if was { 1.0 } else { HYSTERESIS })
}

// ---------------------------------------------------------------------------------------
// The snapshot
// ---------------------------------------------------------------------------------------

/// Why a replica is not usable, or `Ok`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Ok,
    NoSample,
    SampleTooOld,
    LinkDown,
    Syncing,
    Loading,
    /// The primary's replication id is not known (its polls fail) or differs.
    OtherReplid,
    /// Further behind than the history reaches.
    BehindHistory,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Ok => "ok",
            Health::NoSample => "no-sample",
            Health::SampleTooOld => "sample-too-old",
            Health::LinkDown => "link-down",
            Health::Syncing => "syncing",
            Health::Loading => "loading",
            Health::OtherReplid => "other-replid",
            Health::BehindHistory => "behind-history",
        }
    }
}

/// One replica as the last poll of its shard saw it.
#[derive(Clone)]
pub struct ReplicaView {
    pub addr: NodeAddr,
    /// Latency and read counts, and the node's identity (see `Freshness::backend`).
    pub backend: &'static Backend,
    pub health: Health,
    /// Processed offset.
    pub offset: u64,
    /// When the sample was asked for.
    pub sampled_at: Option<Instant>,
    /// t*: the replica has everything the primary had applied by then.
    pub fresh_as_of: Option<Instant>,
    pub lag_bytes: u64,
    /// Healthy and within the proxy's default bounds, with hysteresis.
    pub eligible: bool,
    /// Its zone, if known.
    pub zone: Option<Arc<str>>,
}

impl ReplicaView {
    /// An upper bound on how old its data is at `now`.
    pub fn lag(&self, now: Instant) -> Option<Duration> {
        self.fresh_as_of.map(|t| now.saturating_duration_since(t))
    }

    /// If a read under `bounds` may use this replica at `now`: the deadline by which its reply
    /// must have arrived (t* + max_lag: a reply after it could show older data than allowed).
    fn usable(
        &self,
        now: Instant,
        bounds: &Bounds,
        settings: &Settings,
        default_bounds: &Bounds,
    ) -> Option<Instant> {
        if self.health != Health::Ok {
            return None;
        }
        if self
            .sampled_at
            .is_none_or(|t| now.saturating_duration_since(t) > settings.sample_max_age())
        {
            return None;
        }
        let fresh_as_of = self.fresh_as_of?;
        if bounds == default_bounds {
            if !self.eligible {
                return None;
            }
        } else if bounds.max_lag_bytes != 0 && self.lag_bytes > bounds.max_lag_bytes {
            return None;
        }
        let deadline = fresh_as_of + bounds.max_lag;
        (deadline >= now + MIN_BUDGET).then_some(deadline)
    }
}

/// One shard as its last poll saw it.
pub struct ShardView {
    pub primary: NodeAddr,
    /// The primary's latency (for `nearest`).
    pub primary_backend: &'static Backend,
    /// The primary's replication id (None while its polls fail).
    pub replid: Option<Arc<str>>,
    pub primary_offset: Option<u64>,
    pub replicas: Vec<ReplicaView>,
}

impl ShardView {
    /// The replication id to measure a floor in (the primary's offset behind a read or a
    /// write), if one is worth capturing: only while some replica could take the reads back.
    pub fn capture(&self) -> Option<Arc<str>> {
        self.replicas
            .iter()
            .any(|r| r.health == Health::Ok)
            .then(|| self.replid.clone())
            .flatten()
    }
}

/// Every shard, by primary address.
#[derive(Default)]
pub struct Snapshot {
    /// hashbrown's map: its hasher costs less per lookup than std's, and every replica read
    /// looks its shard up here.
    pub shards: hashbrown::HashMap<NodeAddr, Arc<ShardView>>,
}

// ---------------------------------------------------------------------------------------
// Choosing where a read goes
// ---------------------------------------------------------------------------------------

/// Who answered a read.
#[derive(Debug, Clone, Copy)]
pub enum Served {
    Primary,
    /// The replica's record: one per address, so the same replica is the same record.
    Replica(&'static Backend),
}

impl Served {
    /// The replica, if a replica answered.
    pub fn replica(self) -> Option<&'static Backend> {
        match self {
            Served::Replica(b) => Some(b),
            Served::Primary => None,
        }
    }
}

impl PartialEq for Served {
    fn eq(&self, other: &Served) -> bool {
        match (self, other) {
            (Served::Primary, Served::Primary) => true,
            (Served::Replica(a), Served::Replica(b)) => std::ptr::eq(*a, *b),
            _ => false,
        }
    }
}

impl Eq for Served {}

/// A primary offset at least as new as what a connection was shown (captured with a `ROLE`
/// pipelined behind a read on the primary), in one replication history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Floor {
    pub replid: Arc<str>,
    pub offset: u64,
}

/// What a connection has been shown on one shard, by its latest read there.
#[derive(Debug, Clone)]
pub struct Seen {
    pub by: Served,
    /// When its reply arrived; None: unknown (as new as can be).
    pub at: Option<Instant>,
    pub floor: Option<Floor>,
    /// It was the connection's own write (read-your-writes), not a read.
    pub write: bool,
}

impl Seen {
    /// Nothing known about what was shown (e.g. after reads that bypassed the chain).
    pub fn unknown() -> Seen {
        Seen {
            by: Served::Primary,
            at: None,
            floor: None,
            write: false,
        }
    }
}

/// Where one read goes.
#[derive(Clone)]
pub enum Choice {
    /// To the primary; with `capture`, a `ROLE` rides behind it to learn a [`Floor`] (so the
    /// connection can come back to a replica while it keeps reading). `slo`: a replica was
    /// fresh but out of rotation for its latency.
    Primary {
        capture: Option<Arc<str>>,
        slo: bool,
    },
    /// To a replica, abandoned for the primary at `deadline`. With `precheck`, a `ROLE` goes
    /// first on the same connection and the reply is used only if the replica's offset has
    /// reached that floor (monotonic reads).
    Replica {
        replica: &'static Backend,
        deadline: Instant,
        precheck: Option<u64>,
        /// For the primary, if the replica read is abandoned.
        capture: Option<Arc<str>>,
    },
    /// `replica` policy and no replica within the bounds.
    NoReplica,
}

impl Choice {
    /// The node the read is sent to first.
    pub fn target(&self) -> Option<Served> {
        match self {
            Choice::Primary { .. } => Some(Served::Primary),
            Choice::Replica { replica, .. } => Some(Served::Replica(replica)),
            Choice::NoReplica => None,
        }
    }
}

/// Whether a read on `r` can show nothing older than `seen`.
enum Monotonic {
    Safe,
    /// Only if the replica's live offset has reached this (checked with a pipelined ROLE).
    Check(u64),
    Unsafe,
}

fn monotonic(r: &ReplicaView, seen: Option<&Seen>, replid: Option<&Arc<str>>) -> Monotonic {
    let Some(seen) = seen else {
        return Monotonic::Safe;
    };
    // The same replica: its offset only grows, and a connection's requests to it keep their
    // order (one lane).
    if matches!(seen.by, Served::Replica(a) if std::ptr::eq(a, r.backend)) {
        return Monotonic::Safe;
    }
    // It has everything the primary had when the last reply arrived, hence everything that
    // reply could show (a replica never has more than its primary).
    if let (Some(at), Some(t)) = (seen.at, r.fresh_as_of) {
        if t >= at {
            return Monotonic::Safe;
        }
    }
    match (&seen.floor, replid) {
        (Some(f), Some(id)) if f.replid == *id => {
            if r.offset >= f.offset {
                Monotonic::Safe
            } else {
                Monotonic::Check(f.offset)
            }
        }
        _ => Monotonic::Unsafe,
    }
}

// ---------------------------------------------------------------------------------------
// The shared handle
// ---------------------------------------------------------------------------------------

/// Routing counters, for PROXY INFO.
#[derive(Default)]
pub struct Counters {
    pub reads_replica: AtomicU64,
    pub reads_primary: AtomicU64,
    /// Replica reads abandoned at their deadline.
    pub deadline_fallbacks: AtomicU64,
    /// Replica reads that failed (error reply, MOVED, connection) and went to the primary.
    pub error_fallbacks: AtomicU64,
    /// Replica reads whose offset check (monotonic reads) failed.
    pub precheck_fallbacks: AtomicU64,
    /// Replica replies dropped because the read before them on the connection went elsewhere.
    pub monotonic_rereads: AtomicU64,
    pub noreplica: AtomicU64,
}

pub struct Freshness {
    snapshot: ArcSwap<Snapshot>,
    pub settings: Settings,
    /// The proxy's default read settings (and the bounds eligibility is computed for);
    /// replaced by a configuration reload.
    defaults: ArcSwap<ReadPrefs>,
    /// The read SLO in µs (0: none).
    slo_us: AtomicU64,
    backends: Mutex<HashMap<NodeAddr, &'static Backend>>,
    pub counters: Counters,
}

impl Freshness {
    pub fn new(settings: Settings, defaults: ReadPrefs) -> Freshness {
        Freshness {
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            settings,
            defaults: ArcSwap::from_pointee(defaults),
            slo_us: AtomicU64::new(0),
            backends: Mutex::new(HashMap::new()),
            counters: Counters::default(),
        }
    }

    /// The latest snapshot, to look at now (not to keep: a guard, which spares every read an
    /// atomic count on the one `Arc` that the monitor and every client thread use).
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.snapshot.load()
    }

    /// Every connection's read settings until it sets its own.
    pub fn defaults(&self) -> ReadPrefs {
        **self.defaults.load()
    }

    pub fn set_defaults(&self, prefs: ReadPrefs) {
        self.defaults.store(Arc::new(prefs));
    }

    /// The latency and counters of a node, one per address for the proxy's life (as many as
    /// the addresses the cluster ever had). Leaked, so a plain reference: a read that takes
    /// one does no atomic count on it (every read takes one, and with `--threads` above 1
    /// the client threads would share the count), and two reads went to the same node if and
    /// only if they hold the same record.
    fn backend(&self, addr: &NodeAddr) -> &'static Backend {
        let slo = self.slo();
        self.backends.lock().entry(addr.clone()).or_insert_with(|| {
            let b = Backend::new(addr.clone());
            b.set_slo(slo);
            Box::leak(Box::new(b))
        })
    }

    /// The read SLO (p99 of a backend's reply times); zero: none.
    pub fn slo(&self) -> Duration {
        Duration::from_micros(self.slo_us.load(Ordering::Relaxed))
    }

    /// Sets the read SLO for every backend (at start and on a reload).
    pub fn set_slo(&self, p99: Duration) {
        self.slo_us.store(p99.as_micros() as u64, Ordering::Relaxed);
        for b in self.backends.lock().values() {
            b.set_slo(p99);
        }
    }

    fn publish(&self, view: ShardView) {
        let view = Arc::new(view);
        self.snapshot.rcu(|cur| {
            let mut shards = cur.shards.clone();
            shards.insert(view.primary.clone(), view.clone());
            Snapshot { shards }
        });
    }

    fn remove(&self, primary: &NodeAddr) {
        self.snapshot.rcu(|cur| {
            let mut shards = cur.shards.clone();
            shards.remove(primary);
            Snapshot { shards }
        });
    }

    /// Where a read on `shard` goes under `prefs`, given what the connection was shown there
    /// (`seen`) and the replica it used last (`sticky`, kept unless another is much cheaper:
    /// staying on one replica keeps reads monotonic without checks).
    pub fn choose(
        &self,
        shard: Option<&ShardView>,
        prefs: &ReadPrefs,
        seen: Option<&Seen>,
        sticky: Option<&Backend>,
        now: Instant,
    ) -> Choice {
        if prefs.policy == ReadPolicy::Primary {
            return Choice::Primary {
                capture: None,
                slo: false,
            };
        }
        let Some(shard) = shard else {
            return match prefs.policy {
                ReadPolicy::Replica => Choice::NoReplica,
                _ => Choice::Primary {
                    capture: None,
                    slo: false,
                },
            };
        };
        let capture = shard.capture();
        // On the stack: a shard has a replica or two, and every read of it comes here.
        let mut safe: SmallVec<[(&ReplicaView, Instant); 4]> = SmallVec::new();
        let mut checked: SmallVec<[(&ReplicaView, Instant, u64); 4]> = SmallVec::new();
        let mut usable = false;
        let default_bounds = self.defaults().bounds;
        for r in &shard.replicas {
            let Some(deadline) = r.usable(now, &prefs.bounds, &self.settings, &default_bounds)
            else {
                continue;
            };
            usable = true;
            match monotonic(r, seen, shard.replid.as_ref()) {
                Monotonic::Safe => safe.push((r, deadline)),
                Monotonic::Check(f) => checked.push((r, deadline, f)),
                Monotonic::Unsafe => {}
            }
        }
        // The latency SLO: replicas whose windowed p99 breaks it are out of rotation, but
        // one read in PROBE_EVERY still goes to them so that recovery is seen. Under the
        // `replica` policy a slow replica still beats none.
        let within = |r: &ReplicaView| r.backend.slo_ok();
        let slow =
            safe.iter().any(|(r, _)| !within(r)) || checked.iter().any(|(r, _, _)| !within(r));
        let keep_slow = prefs.policy == ReadPolicy::Replica
            || (slow && rand::random_range(0..PROBE_EVERY) == 0);
        if slow && !keep_slow {
            safe.retain(|(r, _)| within(r));
            checked.retain(|(r, _, _)| within(r));
        }
        // Zone affinity: the proxy's own zone first, among replicas within the SLO.
        if let Some(zone) = &self.settings.zone {
            let local = |r: &ReplicaView| r.zone.as_ref() == Some(zone) && within(r);
            if safe.iter().any(|(r, _)| local(r)) {
                safe.retain(|(r, _)| local(r));
            }
            if checked.iter().any(|(r, _, _)| local(r)) {
                checked.retain(|(r, _, _)| local(r));
            }
        }
        let cost = |r: &ReplicaView| r.backend.cost();
        if let Some(i) = p2c(&safe, |(r, _)| cost(r)) {
            let mut pick = safe[i];
            if let Some(s) = sticky.filter(|s| !std::ptr::eq(*s, pick.0.backend)) {
                if let Some(s) = safe.iter().find(|(r, _)| std::ptr::eq(r.backend, s)) {
                    if cost(s.0) <= 2.0 * cost(pick.0) {
                        pick = *s;
                    }
                }
            }
            // `nearest`: the primary competes too, by the same cost.
            if prefs.policy == ReadPolicy::Nearest
                && shard.primary_backend.cost() < cost(pick.0)
                && (shard.primary_backend.slo_ok() || !within(pick.0))
            {
                return Choice::Primary {
                    capture,
                    slo: false,
                };
            }
            return Choice::Replica {
                replica: pick.0.backend,
                deadline: pick.1,
                precheck: None,
                capture,
            };
        }
        if let Some(i) = p2c(&checked, |(r, _, _)| cost(r)) {
            let (r, deadline, floor) = checked[i];
            return Choice::Replica {
                replica: r.backend,
                deadline,
                precheck: Some(floor),
                capture,
            };
        }
        if !usable && prefs.policy == ReadPolicy::Replica {
            return Choice::NoReplica;
        }
        // Prefer-replica with none fresh (or none within the SLO); or a replica that cannot yet
        // prove it has what this connection was shown: the primary, learning a floor on the way.
        Choice::Primary { capture, slo: slow }
    }

    /// PROXY INFO's replication part.
    pub fn render(&self, prefs: &ReadPrefs, out: &mut String) {
        use std::fmt::Write;
        let s = &self.settings;
        let defaults = self.defaults();
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = write!(
            out,
            "# Reads\r\nread_policy:{}\r\nread_slo_us:{}\r\nzone:{}\r\nmax_lag_ms:{}\r\nmax_lag_bytes:{}\r\nreplication_poll_interval_ms:{}\r\nconnection_read_policy:{}\r\nconnection_max_lag_ms:{}\r\nreads_replica:{}\r\nreads_primary:{}\r\nreplica_deadline_fallbacks:{}\r\nreplica_error_fallbacks:{}\r\nreplica_precheck_fallbacks:{}\r\nmonotonic_rereads:{}\r\nnoreplica_errors:{}\r\nhedges_sent:{}\r\nhedges_won:{}\r\n\r\n# Replication\r\n",
            defaults.policy.as_str(),
            self.slo().as_micros(),
            s.zone.as_deref().unwrap_or("-"),
            defaults.bounds.max_lag.as_millis(),
            defaults.bounds.max_lag_bytes,
            s.poll_interval.as_millis(),
            prefs.policy.as_str(),
            prefs.bounds.max_lag.as_millis(),
            get(&c.reads_replica),
            get(&c.reads_primary),
            get(&c.deadline_fallbacks),
            get(&c.error_fallbacks),
            get(&c.precheck_fallbacks),
            get(&c.monotonic_rereads),
            get(&c.noreplica),
            crate::metrics::get().hedges_sent.get(),
            crate::metrics::get().hedges_won.get(),
        );
        let snapshot = self.load();
        let mut shards: Vec<&Arc<ShardView>> = snapshot.shards.values().collect();
        shards.sort_by(|a, b| a.primary.cmp(&b.primary));
        let now = Instant::now();
        for (i, shard) in shards.iter().enumerate() {
            let _ = write!(
                out,
                "shard{i}:primary={},replid={},offset={},replicas={}\r\n",
                shard.primary,
                shard.replid.as_deref().unwrap_or("-"),
                shard
                    .primary_offset
                    .map_or_else(|| "-1".to_string(), |o| o.to_string()),
                shard.replicas.len(),
            );
        }
        let mut i = 0;
        for shard in shards {
            for r in &shard.replicas {
                let lag = r
                    .lag(now)
                    .map_or_else(|| "-1".to_string(), |l| l.as_millis().to_string());
                let _ = write!(
                    out,
                    "replica{i}:addr={},primary={},state={},lag_ms={lag},lag_bytes={},offset={},eligible={},reads={},latency_us={},p99_us={},within_slo={},zone={}\r\n",
                    r.addr,
                    shard.primary,
                    r.health.as_str(),
                    r.lag_bytes,
                    r.offset,
                    r.eligible as u8,
                    r.backend.reads.load(Ordering::Relaxed),
                    r.backend.estimate().as_micros(),
                    r.backend.window_p99().as_micros(),
                    r.backend.slo_ok() as u8,
                    r.zone.as_deref().unwrap_or("-"),
                );
                i += 1;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The monitor
// ---------------------------------------------------------------------------------------

/// An admin connection to one node: one request at a time, every read bounded by a timeout,
/// reconnected with backoff.
struct AdminLink {
    addr: NodeAddr,
    conn: Option<(TcpStream, BytesMut)>,
    retry_after: Option<Instant>,
    failures: u32,
}

impl AdminLink {
    fn new(addr: NodeAddr) -> AdminLink {
        AdminLink {
            addr,
            conn: None,
            retry_after: None,
            failures: 0,
        }
    }

    async fn info(&mut self, settings: &Settings) -> Result<ReplInfo, String> {
        let timeout = settings.poll_timeout();
        let result = match tokio::time::timeout(timeout, self.exchange(settings)).await {
            Ok(r) => r,
            Err(_) => Err("timed out".to_string()),
        };
        match result {
            Ok(text) => {
                self.failures = 0;
                parse_info(&text)
            }
            Err(e) => {
                // Whatever was in flight may still arrive: never reuse the connection.
                self.conn = None;
                if self.retry_after.is_none_or(|t| Instant::now() >= t) {
                    self.failures = self.failures.saturating_add(1);
                    let backoff = Duration::from_millis(50u64 << self.failures.min(5));
                    self.retry_after = Some(Instant::now() + backoff);
                }
                Err(e)
            }
        }
    }

    async fn exchange(&mut self, settings: &Settings) -> Result<String, String> {
        if self.conn.is_none() {
            if self.retry_after.is_some_and(|t| Instant::now() < t) {
                return Err("backing off".into());
            }
            let stream = TcpStream::connect(self.addr.as_str())
                .await
                .map_err(|e| e.to_string())?;
            let _ = stream.set_nodelay(true);
            let mut conn = (stream, BytesMut::with_capacity(4096));
            if let Some((user, pass)) = &settings.auth {
                let auth = match user {
                    Some(u) => encode(&[b"AUTH" as &[u8], u.as_bytes(), pass.as_bytes()]),
                    None => encode(&[b"AUTH" as &[u8], pass.as_bytes()]),
                };
                let r = request(&mut conn, &auth).await?;
                if r.first() == Some(&b'-') {
                    return Err(String::from_utf8_lossy(&r).trim_end().to_string());
                }
            }
            self.conn = Some(conn);
        }
        let Some(conn) = self.conn.as_mut() else {
            return Err("not connected".into());
        };
        let cmd = encode(&[b"INFO" as &[u8], b"replication", b"persistence"]);
        let r = request(conn, &cmd).await?;
        if r.first() == Some(&b'-') {
            return Err(String::from_utf8_lossy(&r).trim_end().to_string());
        }
        let text = reply::bulk_payload(&r).ok_or("INFO reply is not a bulk string")?;
        Ok(String::from_utf8_lossy(text).into_owned())
    }
}

/// Writes one command and reads one reply.
async fn request(conn: &mut (TcpStream, BytesMut), cmd: &Bytes) -> Result<Bytes, String> {
    let (stream, buf) = conn;
    stream.write_all(cmd).await.map_err(|e| e.to_string())?;
    loop {
        if let Some(len) = reply::frame_len(buf, Protocol::Resp2)? {
            return Ok(buf.split_to(len).freeze());
        }
        if buf.len() > 16 * 1024 * 1024 {
            return Err("reply too large".into());
        }
        match stream.read_buf(buf).await {
            Ok(0) => return Err("connection closed".into()),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// One replica's poll state.
struct ReplicaPoll {
    link: AdminLink,
    /// (time the INFO was sent, what it said).
    sample: Option<(Instant, ReplInfo)>,
    eligible: bool,
}

/// Polls one shard until aborted: the primary, a short settle, then its replicas at once;
/// then publishes the shard's view.
async fn poll_shard(fresh: Arc<Freshness>, topology: Arc<TopologyHandle>, primary: NodeAddr) {
    let settings = fresh.settings.clone();
    let mut tick = tokio::time::interval(settings.poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut link = AdminLink::new(primary.clone());
    let mut history = History::new(settings.poll_interval);
    let mut replid: Option<Arc<str>> = None;
    let mut replicas: HashMap<NodeAddr, ReplicaPoll> = HashMap::new();
    // The replicas as last measured, and the replication id they were measured in.
    let mut published: (Option<Arc<str>>, Vec<ReplicaView>) = (None, Vec::new());
    loop {
        tick.tick().await;
        let addrs: Vec<NodeAddr> = topology
            .load()
            .and_then(|t| {
                t.shards()
                    .iter()
                    .find(|s| s.primary.addr == primary)
                    .map(|s| s.replicas.iter().map(|n| n.addr.clone()).collect())
            })
            .unwrap_or_default();
        let sent = Instant::now();
        let polled = link.info(&settings).await;
        if polled.is_ok() {
            fresh.backend(&primary).probe(sent.elapsed());
        }
        match polled {
            Ok(info) if !info.is_replica => {
                if replid.as_deref() != Some(info.replid.as_str()) {
                    if replid.is_some() {
                        debug!(primary = %primary, replid = %info.replid, "new replication id: history restarts");
                    }
                    history.clear();
                    replid = Some(info.replid.as_str().into());
                }
                history.push(sent, info.offset);
            }
            Ok(_) => {
                // Demoted: nothing to measure its replicas against until the map changes.
                history.clear();
                replid = None;
            }
            Err(e) => debug!(node = %primary, error = %e, "replication poll failed"),
        }
        // If nothing was written since the replicas' last samples, they already have what the
        // primary just reported: their t* moves now, not only after their own polls.
        let same_history = published.0.is_some() && published.0 == replid;
        let advanced: Vec<ReplicaView> = published
            .1
            .iter()
            .map(|v| {
                let mut v = v.clone();
                if same_history && v.health == Health::Ok {
                    v.fresh_as_of = history.fresh_as_of(v.offset).max(v.fresh_as_of);
                }
                v
            })
            .collect();
        if advanced
            .iter()
            .zip(&published.1)
            .any(|(a, b)| a.fresh_as_of != b.fresh_as_of)
        {
            fresh.publish(ShardView {
                primary: primary.clone(),
                primary_backend: fresh.backend(&primary),
                replid: replid.clone(),
                primary_offset: history.latest().map(|(_, o)| o),
                replicas: advanced,
            });
        }
        tokio::time::sleep(settings.settle()).await;
        replicas.retain(|a, _| addrs.contains(a));
        for a in &addrs {
            replicas.entry(a.clone()).or_insert_with(|| ReplicaPoll {
                link: AdminLink::new(a.clone()),
                sample: None,
                eligible: false,
            });
        }
        futures::future::join_all(replicas.values_mut().map(|r| async {
            let sent = Instant::now();
            match r.link.info(&settings).await {
                Ok(info) => {
                    // The poll doubles as a latency probe for the SLO window (a replica out of
                    // rotation gets few reads to measure it by).
                    fresh.backend(&r.link.addr).probe(sent.elapsed());
                    r.sample = Some((sent, info));
                }
                Err(e) => debug!(node = %r.link.addr, error = %e, "replication poll failed"),
            }
        }))
        .await;
        let now = Instant::now();
        let latest = history.latest();
        let default_bounds = fresh.defaults().bounds;
        let mut views: Vec<ReplicaView> = replicas
            .iter_mut()
            .map(|(addr, r)| {
                let mut view = ReplicaView {
                    addr: addr.clone(),
                    backend: fresh.backend(addr),
                    health: Health::NoSample,
                    offset: 0,
                    sampled_at: None,
                    fresh_as_of: None,
                    lag_bytes: 0,
                    eligible: false,
                    zone: settings.node_zones.get(addr).cloned(),
                };
                if let Some((at, info)) = &r.sample {
                    view.sampled_at = Some(*at);
                    view.offset = info.processed.unwrap_or(info.offset);
                    view.lag_bytes = latest.map_or(0, |(_, p)| p.saturating_sub(view.offset));
                    view.fresh_as_of = history.fresh_as_of(view.offset);
                    view.health = if now.saturating_duration_since(*at) > settings.sample_max_age()
                    {
                        Health::SampleTooOld
                    } else if !info.is_replica || !info.link_up {
                        Health::LinkDown
                    } else if info.syncing {
                        Health::Syncing
                    } else if info.loading {
                        Health::Loading
                    } else if replid.as_deref() != Some(info.replid.as_str()) {
                        Health::OtherReplid
                    } else if view.fresh_as_of.is_none() {
                        Health::BehindHistory
                    } else {
                        Health::Ok
                    };
                }
                r.eligible = view.health == Health::Ok
                    && view.lag(now).is_some_and(|lag| {
                        next_eligible(r.eligible, lag, view.lag_bytes, &default_bounds)
                    });
                view.eligible = r.eligible;
                view
            })
            .collect();
        views.sort_by(|a, b| a.addr.cmp(&b.addr));
        published = (replid.clone(), views.clone());
        fresh.publish(ShardView {
            primary: primary.clone(),
            primary_backend: fresh.backend(&primary),
            replid: replid.clone(),
            primary_offset: latest.map(|(_, o)| o),
            replicas: views,
        });
    }
}

/// The replication monitor: one polling task per shard of the current topology, started and
/// stopped as the topology changes, until shutdown.
pub async fn monitor(fresh: Arc<Freshness>, topology: Arc<TopologyHandle>, mut shutdown: Shutdown) {
    let mut tasks: HashMap<NodeAddr, tokio::task::JoinHandle<()>> = HashMap::new();
    let mut tick =
        tokio::time::interval(fresh.settings.poll_interval.max(Duration::from_millis(50)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait() => break,
        }
        let primaries: Vec<NodeAddr> = topology
            .load()
            .map(|t| t.primaries().cloned().collect())
            .unwrap_or_default();
        tasks.retain(|p, task| {
            let keep = primaries.contains(p) && !task.is_finished();
            if !keep {
                task.abort();
                fresh.remove(p);
            }
            keep
        });
        for p in primaries {
            tasks
                .entry(p.clone())
                .or_insert_with(|| tokio::spawn(poll_shard(fresh.clone(), topology.clone(), p)));
        }
    }
    for (_, task) in tasks {
        task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRIMARY_INFO: &str = "# Replication\r\nrole:master\r\nconnected_slaves:1\r\nslave0:ip=127.0.0.1,port=7004,state=online,offset=100,lag=0\r\nmaster_replid:aaaa\r\nmaster_replid2:0000\r\nmaster_repl_offset:1234\r\n\r\n# Persistence\r\nloading:0\r\n";
    const REPLICA_INFO: &str = "# Replication\r\nrole:slave\r\nmaster_host:127.0.0.1\r\nmaster_port:7000\r\nmaster_link_status:up\r\nmaster_sync_in_progress:0\r\nslave_read_repl_offset:1300\r\nslave_repl_offset:1200\r\nmaster_replid:aaaa\r\nmaster_repl_offset:1200\r\n\r\n# Persistence\r\nloading:0\r\n";

    #[test]
    fn info_of_a_primary_and_a_replica() {
        let p = parse_info(PRIMARY_INFO).expect("primary");
        assert!(!p.is_replica);
        assert_eq!((p.replid.as_str(), p.offset), ("aaaa", 1234));
        let r = parse_info(REPLICA_INFO).expect("replica");
        assert!(r.is_replica && r.link_up && !r.syncing && !r.loading);
        assert_eq!(r.processed, Some(1200));
        let loading = REPLICA_INFO.replace("loading:0", "loading:1");
        assert!(parse_info(&loading).expect("loading").loading);
        let down = REPLICA_INFO.replace(":up", ":down");
        assert!(!parse_info(&down).expect("down").link_up);
        assert!(parse_info("role:master\r\n").is_err());
    }

    #[test]
    fn fresh_as_of_is_the_latest_sample_at_or_below_the_offset() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut h = History::new(ms(100));
        assert_eq!(h.fresh_as_of(10), None);
        h.push(t0, 100);
        h.push(t0 + ms(100), 200);
        h.push(t0 + ms(200), 200);
        h.push(t0 + ms(300), 350);
        assert_eq!(h.fresh_as_of(99), None, "behind the history");
        assert_eq!(h.fresh_as_of(100), Some(t0));
        assert_eq!(h.fresh_as_of(199), Some(t0));
        // Equal offsets: the latest of them (nothing was written in between).
        assert_eq!(h.fresh_as_of(200), Some(t0 + ms(200)));
        assert_eq!(h.fresh_as_of(349), Some(t0 + ms(200)));
        assert_eq!(h.fresh_as_of(10_000), Some(t0 + ms(300)));
        // An offset going back restarts the history.
        h.push(t0 + ms(400), 5);
        assert_eq!(h.fresh_as_of(200), Some(t0 + ms(400)));
        assert_eq!(h.fresh_as_of(4), None);
    }

    #[test]
    fn history_is_bounded() {
        let t0 = Instant::now();
        let mut h = History::new(Duration::from_millis(10));
        for i in 0..10_000u64 {
            h.push(t0 + Duration::from_millis(i), i);
        }
        assert!(h.samples.len() <= 4096);
        let mut h = History::new(Duration::from_secs(1));
        h.push(t0, 1);
        h.push(t0 + Duration::from_secs(31), 2);
        assert_eq!(h.samples.len(), 1, "older than the span");
    }

    #[test]
    fn hysteresis() {
        let b = Bounds {
            max_lag: Duration::from_millis(100),
            max_lag_bytes: 1000,
        };
        let ms = Duration::from_millis;
        assert!(next_eligible(true, ms(100), 0, &b));
        assert!(!next_eligible(true, ms(101), 0, &b));
        assert!(!next_eligible(false, ms(90), 0, &b), "not back above 80%");
        assert!(next_eligible(false, ms(80), 0, &b));
        assert!(!next_eligible(true, ms(1), 1001, &b));
        assert!(!next_eligible(false, ms(1), 900, &b));
        assert!(next_eligible(false, ms(1), 800, &b));
        let unbounded = Bounds {
            max_lag_bytes: 0,
            ..b
        };
        assert!(next_eligible(false, ms(1), u64::MAX, &unbounded));
    }

    fn freshness(policy: ReadPolicy) -> Freshness {
        let defaults = ReadPrefs {
            policy,
            bounds: Bounds {
                max_lag: Duration::from_millis(100),
                max_lag_bytes: 0,
            },
            read_your_writes: true,
        };
        Freshness::new(settings(), defaults)
    }

    fn settings() -> Settings {
        Settings {
            poll_interval: Duration::from_millis(100),
            auth: None,
            zone: None,
            node_zones: HashMap::new(),
        }
    }

    fn replica(addr: &str, now: Instant, lag_ms: u64, offset: u64) -> ReplicaView {
        ReplicaView {
            addr: NodeAddr(addr.into()),
            // Its own record, as the monitor's one per address (leaked, as there).
            backend: Box::leak(Box::new(Backend::new(NodeAddr(addr.into())))),
            health: Health::Ok,
            offset,
            sampled_at: Some(now),
            fresh_as_of: Some(now - Duration::from_millis(lag_ms)),
            lag_bytes: 0,
            eligible: true,
            zone: None,
        }
    }

    fn shard(replicas: Vec<ReplicaView>) -> ShardView {
        ShardView {
            primary: NodeAddr("p:1".into()),
            primary_backend: Box::leak(Box::new(Backend::new(NodeAddr("p:1".into())))),
            replid: Some("aaaa".into()),
            primary_offset: Some(1000),
            replicas,
        }
    }

    fn target(c: &Choice) -> String {
        match c {
            Choice::Primary { .. } => "primary".into(),
            Choice::Replica {
                replica, precheck, ..
            } => format!(
                "{}{}",
                replica.addr,
                if precheck.is_some() { "?" } else { "" }
            ),
            Choice::NoReplica => "none".into(),
        }
    }

    #[test]
    fn choice_by_policy_and_lag() {
        let now = Instant::now();
        let f = freshness(ReadPolicy::PreferReplica);
        let prefs = f.defaults();
        let fresh = shard(vec![replica("r:1", now, 10, 1000)]);
        let c = f.choose(Some(&fresh), &prefs, None, None, now);
        assert_eq!(target(&c), "r:1");
        let Choice::Replica { deadline, .. } = c else {
            unreachable!()
        };
        assert_eq!(deadline, now + Duration::from_millis(90), "t* + max lag");
        // Too little of the budget left: the primary.
        let late = shard(vec![replica("r:1", now, 99, 1000)]);
        assert_eq!(
            target(&f.choose(Some(&late), &prefs, None, None, now)),
            "primary"
        );
        let strict = ReadPrefs {
            policy: ReadPolicy::Replica,
            ..prefs
        };
        assert_eq!(
            target(&f.choose(Some(&late), &strict, None, None, now)),
            "none"
        );
        let primary = ReadPrefs {
            policy: ReadPolicy::Primary,
            ..prefs
        };
        assert_eq!(
            target(&f.choose(Some(&fresh), &primary, None, None, now)),
            "primary"
        );
        // A tighter per-connection bound.
        let tight = ReadPrefs {
            bounds: Bounds {
                max_lag: Duration::from_millis(5),
                max_lag_bytes: 0,
            },
            ..prefs
        };
        assert_eq!(
            target(&f.choose(Some(&fresh), &tight, None, None, now)),
            "primary"
        );
        // Not eligible per the monitor (hysteresis) with the default bounds.
        let mut dropped = replica("r:1", now, 10, 1000);
        dropped.eligible = false;
        assert_eq!(
            target(&f.choose(Some(&shard(vec![dropped])), &prefs, None, None, now)),
            "primary"
        );
        // An old sample.
        let mut old = replica("r:1", now, 10, 1000);
        old.sampled_at = Some(now - Duration::from_millis(301));
        assert_eq!(
            target(&f.choose(Some(&shard(vec![old])), &prefs, None, None, now)),
            "primary"
        );
    }

    #[test]
    fn monotonic_reads_decide_between_replicas_and_checks() {
        let now = Instant::now();
        let ms = Duration::from_millis;
        let f = freshness(ReadPolicy::PreferReplica);
        let prefs = f.defaults();
        let s = shard(vec![replica("r:1", now, 10, 900)]);
        // Shown by the primary after r:1's t*, no floor: the primary again (with a capture).
        let seen = Seen {
            by: Served::Primary,
            at: Some(now - ms(5)),
            floor: None,
            write: false,
        };
        let c = f.choose(Some(&s), &prefs, Some(&seen), None, now);
        assert_eq!(target(&c), "primary");
        assert!(matches!(
            c,
            Choice::Primary {
                capture: Some(_),
                ..
            }
        ));
        // Shown before r:1's t*: safe.
        let before = Seen {
            at: Some(now - ms(20)),
            ..seen.clone()
        };
        assert_eq!(
            target(&f.choose(Some(&s), &prefs, Some(&before), None, now)),
            "r:1"
        );
        // A floor the sampled offset reaches: safe; beyond it: checked.
        let floor = |o| Seen {
            floor: Some(Floor {
                replid: "aaaa".into(),
                offset: o,
            }),
            ..seen.clone()
        };
        assert_eq!(
            target(&f.choose(Some(&s), &prefs, Some(&floor(900)), None, now)),
            "r:1"
        );
        assert_eq!(
            target(&f.choose(Some(&s), &prefs, Some(&floor(950)), None, now)),
            "r:1?"
        );
        // A floor of another history is no use.
        let other = Seen {
            floor: Some(Floor {
                replid: "bbbb".into(),
                offset: 1,
            }),
            ..seen.clone()
        };
        assert_eq!(
            target(&f.choose(Some(&s), &prefs, Some(&other), None, now)),
            "primary"
        );
        // Shown by this replica: safe; by another one after this one's t*: not.
        let two = shard(vec![
            replica("r:1", now, 10, 900),
            replica("r:2", now, 50, 800),
        ]);
        let by_r1 = Seen {
            by: Served::Replica(two.replicas[0].backend),
            at: Some(now - ms(5)),
            floor: None,
            write: false,
        };
        for _ in 0..20 {
            assert_eq!(
                target(&f.choose(Some(&two), &prefs, Some(&by_r1), None, now)),
                "r:1"
            );
        }
        // Sticky: the replica used last, unless another is much cheaper.
        let sticky = two.replicas[1].backend;
        for _ in 0..20 {
            assert_eq!(
                target(&f.choose(Some(&two), &prefs, None, Some(sticky), now)),
                "r:2"
            );
        }
        // Unknown: only a replica fresh... never; the primary.
        assert_eq!(
            target(&f.choose(Some(&s), &prefs, Some(&Seen::unknown()), None, now)),
            "primary"
        );
    }

    #[test]
    fn slo_zone_and_nearest() {
        let now = Instant::now();
        let f = freshness(ReadPolicy::PreferReplica);
        let prefs = f.defaults();
        // A fresh replica out of rotation for its latency: the primary, but for probes.
        let slow = replica("r:1", now, 10, 1000);
        slow.backend.set_slo_verdict(false);
        let s = shard(vec![slow]);
        // One in PROBE_EVERY: about 40 in 20 000 (fewer than 10 or more than 100 is a bug,
        // not chance).
        let to_replica = (0..20 * PROBE_EVERY)
            .filter(|_| target(&f.choose(Some(&s), &prefs, None, None, now)) == "r:1")
            .count();
        assert!(
            (10..=100).contains(&to_replica),
            "{to_replica} probes in {}",
            20 * PROBE_EVERY
        );
        assert!(matches!(
            f.choose(Some(&s), &prefs, None, None, now),
            Choice::Primary { slo: true, .. } | Choice::Replica { .. }
        ));
        // Under the `replica` policy a slow replica still beats none.
        let only = ReadPrefs {
            policy: ReadPolicy::Replica,
            ..prefs
        };
        assert_eq!(target(&f.choose(Some(&s), &only, None, None, now)), "r:1");

        // Zone affinity: the proxy's zone wins while it meets the SLO.
        let mut settings = settings();
        settings.zone = Some("b".into());
        let zoned = Freshness::new(settings, prefs);
        let mut a = replica("r:1", now, 10, 1000);
        a.zone = Some("a".into());
        let mut b = replica("r:2", now, 10, 1000);
        b.zone = Some("b".into());
        let two = shard(vec![a, b.clone()]);
        for _ in 0..50 {
            assert_eq!(
                target(&zoned.choose(Some(&two), &prefs, None, None, now)),
                "r:2"
            );
        }
        b.backend.set_slo_verdict(false);
        let two = shard(vec![two.replicas[0].clone(), b]);
        let to_a = (0..200)
            .filter(|_| target(&zoned.choose(Some(&two), &prefs, None, None, now)) == "r:1")
            .count();
        assert!(to_a > 150, "a slow local replica gives way: {to_a}");

        // `nearest`: the primary when it is cheaper than the replica.
        let near = ReadPrefs {
            policy: ReadPolicy::Nearest,
            ..prefs
        };
        let r = replica("r:1", now, 10, 1000);
        r.backend.observe(Duration::from_millis(5));
        let s = shard(vec![r]);
        s.primary_backend.observe(Duration::from_micros(100));
        assert_eq!(
            target(&f.choose(Some(&s), &near, None, None, now)),
            "primary"
        );
        let r = replica("r:1", now, 10, 1000);
        r.backend.observe(Duration::from_micros(50));
        let s = shard(vec![r]);
        s.primary_backend.observe(Duration::from_millis(5));
        assert_eq!(target(&f.choose(Some(&s), &near, None, None, now)), "r:1");
    }
}
