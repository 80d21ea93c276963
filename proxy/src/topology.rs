//! Learning the slot map and keeping it current.
//!
//! The map is an immutable `Topology` behind an `ArcSwap`: the request path loads it with one
//! atomic read. A background task refreshes it from `CLUSTER SHARDS` (`CLUSTER SLOTS` on
//! servers without it) with `CLUSTER NODES` for the primaries' config epochs, periodically
//! (jittered) and, at once, when a session asks (after a MOVED, a lost connection,
//! CLUSTERDOWN); asks are coalesced (single flight) and rate-limited. A MOVED also patches its
//! one slot immediately, so the next request goes to the right node before the refresh lands.
//!
//! A fetched view replaces the current one only if no slot in it has an owner with a lower
//! config epoch than the current owner: a node cut off from the cluster (an old primary in a
//! minority partition) still claims its slots and must not flip the map back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use redis_protocol::resp2::types::OwnedFrame;
use tokio::sync::Notify;

use lagwise_shared::shutdown::Shutdown;
use lagwise_shared::topology::{NodeAddr, Topology};

use crate::backend::Pool;
use crate::reply::{encode, Protocol};

pub struct TopologyHandle {
    current: ArcSwapOption<Topology>,
    wanted: Notify,
    seeds: Vec<NodeAddr>,
    /// Whether the latest refresh got a complete map from some node (readiness).
    refresh_ok: AtomicBool,
}

impl TopologyHandle {
    pub fn new(seeds: Vec<NodeAddr>) -> TopologyHandle {
        TopologyHandle {
            current: ArcSwapOption::empty(),
            wanted: Notify::new(),
            seeds,
            refresh_ok: AtomicBool::new(false),
        }
    }

    pub fn last_refresh_ok(&self) -> bool {
        self.refresh_ok.load(Ordering::Relaxed)
    }

    pub fn load(&self) -> Option<Arc<Topology>> {
        self.current.load_full()
    }

    /// Asks the refresher for a new map soon; many asks make one refresh.
    pub fn request_refresh(&self) {
        self.wanted.notify_one();
    }

    /// Applies a MOVED to the current map at once.
    pub fn apply_moved(&self, slot: u16, addr: &NodeAddr) {
        self.current
            .rcu(|cur| cur.as_ref().map(|t| Arc::new(t.with_moved(slot, addr))));
        self.request_refresh();
    }
}

/// One request to a node on the refresh path, bounded by a timeout.
async fn ask(pool: &Pool, addr: &NodeAddr, args: &[&[u8]]) -> Result<OwnedFrame, String> {
    let conn = pool
        .get(addr, Protocol::Resp2, false, pool.control_lane())
        .await
        .map_err(|e| e.to_string())?;
    let reply: Bytes = tokio::time::timeout(Duration::from_secs(2), conn.request(encode(args), 1))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    match redis_protocol::resp2::decode::decode(&reply) {
        Ok(Some((f, _))) => Ok(f),
        Ok(None) => Err("incomplete reply".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// Asks one node for its view: CLUSTER SHARDS (or SLOTS), then CLUSTER NODES for epochs.
async fn fetch(pool: &Pool, addr: &NodeAddr) -> Result<Topology, String> {
    let host = addr.0.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let mut topology = match ask(pool, addr, &[b"CLUSTER", b"SHARDS"]).await? {
        OwnedFrame::Error(_) => match ask(pool, addr, &[b"CLUSTER", b"SLOTS"]).await? {
            OwnedFrame::Error(e) => return Err(e),
            f => Topology::from_cluster_slots(&f, host).map_err(|e| e.to_string())?,
        },
        f => Topology::from_cluster_shards(&f, host).map_err(|e| e.to_string())?,
    };
    // Without epochs the view is still usable; it just cannot be compared.
    if let Ok(OwnedFrame::BulkString(text)) = ask(pool, addr, &[b"CLUSTER", b"NODES"]).await {
        topology.set_epochs(&String::from_utf8_lossy(&text));
    }
    Ok(topology)
}

/// Refreshes the map until shutdown: every `interval`, and soon after each request (at most
/// one refresh per `min_gap`).
pub async fn refresher(
    handle: Arc<TopologyHandle>,
    pool: Arc<Pool>,
    interval: Duration,
    mut shutdown: Shutdown,
) {
    let min_gap = Duration::from_millis(100);
    let mut last: Option<Instant> = None;
    loop {
        if let Some(t) = last {
            let since = t.elapsed();
            if since < min_gap {
                tokio::time::sleep(min_gap - since).await;
            }
        }
        last = Some(Instant::now());
        refresh_once(&handle, &pool).await;
        let wait = if handle.load().is_some() {
            // Jitter, so that many proxies (one per pod) do not poll the cluster in step.
            interval.mul_f64(rand::random_range(0.9..1.1))
        } else {
            Duration::from_millis(200)
        };
        tokio::select! {
            _ = handle.wanted.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait() => return,
        }
    }
}

async fn refresh_once(handle: &TopologyHandle, pool: &Pool) {
    // Ask the nodes we know first (in random order), then the seeds.
    let mut candidates: Vec<NodeAddr> = handle
        .load()
        .map(|t| t.nodes().map(|n| n.addr.clone()).collect())
        .unwrap_or_default();
    {
        use rand::seq::SliceRandom;
        candidates.shuffle(&mut rand::rng());
    }
    for s in &handle.seeds {
        if !candidates.contains(s) {
            candidates.push(s.clone());
        }
    }
    let mut partial: Option<Topology> = None;
    let metrics = crate::metrics::get();
    for addr in candidates.iter().take(8) {
        match fetch(pool, addr).await {
            Ok(t) if t.covers_all_slots() => {
                if let Some(slot) = handle.load().and_then(|cur| t.older_than(&cur)) {
                    tracing::info!(
                        node = %addr,
                        slot,
                        "ignoring a topology view older than the current one (lower epoch)"
                    );
                    continue;
                }
                publish(handle, t);
                handle.refresh_ok.store(true, Ordering::Relaxed);
                metrics.refresh_ok.inc();
                return;
            }
            // A node that sees only part of the map may be cut off from the rest: use it only
            // if nobody sees the whole.
            Ok(t) => partial = partial.or(Some(t)),
            Err(e) => tracing::debug!(node = %addr, error = %e, "topology fetch failed"),
        }
    }
    handle.refresh_ok.store(false, Ordering::Relaxed);
    metrics.refresh_error.inc();
    if let Some(t) = partial {
        if handle.load().is_none_or(|cur| !cur.covers_all_slots()) {
            publish(handle, t);
        }
    } else if handle.load().is_none() {
        tracing::warn!("no seed or known node answered CLUSTER SHARDS / CLUSTER SLOTS");
    }
}

fn publish(handle: &TopologyHandle, t: Topology) {
    let changed = handle.load().is_none_or(|cur| *cur != t);
    if changed {
        tracing::info!(
            shards = t.shards().len(),
            full = t.covers_all_slots(),
            epoch = t.max_epoch(),
            "topology updated"
        );
        handle.current.store(Some(Arc::new(t)));
    }
}
