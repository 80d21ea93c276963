//! Learning the slot map and keeping it current.
//!
//! The map is an immutable `Topology` behind an `ArcSwap`: the request path loads it with one
//! atomic read. A background task refreshes it from `CLUSTER SLOTS` periodically and, at once,
//! when a session asks (after a MOVED, a lost connection, CLUSTERDOWN); requests are
//! coalesced (single flight) and rate-limited. A MOVED also patches its one slot immediately,
//! so the next request goes to the right node before the refresh lands.

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
}

impl TopologyHandle {
    pub fn new(seeds: Vec<NodeAddr>) -> TopologyHandle {
        TopologyHandle {
            current: ArcSwapOption::empty(),
            wanted: Notify::new(),
            seeds,
        }
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

/// Asks one node for CLUSTER SLOTS.
async fn fetch(pool: &Pool, addr: &NodeAddr) -> Result<Topology, String> {
    let conn = pool
        .get(addr, Protocol::Resp2, false, 0)
        .await
        .map_err(|e| e.to_string())?;
    let reply: Bytes = tokio::time::timeout(
        Duration::from_secs(2),
        conn.request(encode(&[b"CLUSTER" as &[u8], b"SLOTS"]), 1),
    )
    .await
    .map_err(|_| "timed out".to_string())?
    .map_err(|e| e.to_string())?;
    let frame: OwnedFrame = match redis_protocol::resp2::decode::decode(&reply) {
        Ok(Some((f, _))) => f,
        Ok(None) => return Err("incomplete reply".into()),
        Err(e) => return Err(e.to_string()),
    };
    if let OwnedFrame::Error(e) = &frame {
        return Err(e.clone());
    }
    let host = addr.0.rsplit_once(':').map_or(addr.0.as_str(), |(h, _)| h);
    Topology::from_cluster_slots(&frame, host.trim_start_matches('[').trim_end_matches(']'))
        .map_err(|e| e.to_string())
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
            interval
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
    for addr in candidates.iter().take(8) {
        match fetch(pool, addr).await {
            Ok(t) if t.covers_all_slots() => {
                publish(handle, t);
                return;
            }
            // A node that sees only part of the map may be cut off from the rest: use it only
            // if nobody sees the whole.
            Ok(t) => partial = partial.or(Some(t)),
            Err(e) => tracing::debug!(node = %addr, error = %e, "topology fetch failed"),
        }
    }
    if let Some(t) = partial {
        if handle.load().is_none_or(|cur| !cur.covers_all_slots()) {
            publish(handle, t);
        }
    } else if handle.load().is_none() {
        tracing::warn!("no seed or known node answered CLUSTER SLOTS");
    }
}

fn publish(handle: &TopologyHandle, t: Topology) {
    let changed = handle.load().is_none_or(|cur| *cur != t);
    if changed {
        tracing::info!(
            shards = t.shards().len(),
            full = t.covers_all_slots(),
            "topology updated"
        );
        handle.current.store(Some(Arc::new(t)));
    }
}
