//! Failure detection and failover, by Valkey's rules.
//!
//! - A node that has not answered a PING for `cluster-node-timeout` is PFAIL (suspected, by
//!   us). Primaries gossip their suspicions; when the primaries that serve slots agree by a
//!   majority (reports younger than twice the timeout), the node is FAIL, and that is
//!   broadcast. FAIL is lifted when the node answers again: at once for a replica or a
//!   primary without slots, after twice the timeout for a primary that still has slots.
//! - A replica of a FAIL primary waits a short random delay plus one second per sibling with
//!   a newer offset (the most up-to-date replica goes first), then asks every primary for a
//!   vote in a new epoch. A primary grants one vote per epoch, and none if the candidate's
//!   primary is not FAIL or the slots it claims have a newer owner. A majority makes it the
//!   primary: it takes the slots with its new config epoch, which every node then accepts.
//! - CLUSTER FAILOVER: the primary pauses writes and tells its replica its final offset; the
//!   replica catches up to exactly that offset and then takes over with forced votes, so no
//!   acknowledged write is lost. FORCE skips the handshake; TAKEOVER skips the vote.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use tracing::{info, warn};

use super::bus;
use super::message::{Body, Kind, Message, MF_FORCE_ACK, MF_PAUSED};
use super::state::{ClusterState, NodeId};
use crate::server::{now_ms, Server};

/// How long a manual failover may take before it is abandoned (Valkey's 5 s).
const MANUAL_TIMEOUT_MS: u64 = 5000;

/// A replica's election, and a manual failover on either side.
#[derive(Debug, Default)]
pub struct Election {
    /// When our vote request goes out (Unix ms); 0: nothing scheduled.
    pub auth_time: u64,
    pub auth_sent: bool,
    pub auth_epoch: u64,
    pub votes: HashSet<NodeId>,
    pub rank: usize,
    /// A manual failover runs until this time (Unix ms); 0: none.
    pub manual_end: u64,
    /// On a replica: the offset our paused primary will not go past; then we may start.
    pub manual_offset: Option<u64>,
    /// On a replica: FORCE (no handshake with the primary) or the handshake completed.
    pub manual_can_start: bool,
    /// On a primary: the replica that asked for a manual failover.
    pub manual_replica: Option<NodeId>,
}

fn node_timeout(server: &Server) -> u64 {
    server
        .config
        .read()
        .get_u64("cluster-node-timeout")
        .max(100)
}

/// Primaries serving slots: the electorate, and the cluster's size.
fn size(st: &ClusterState) -> usize {
    st.nodes
        .values()
        .filter(|n| n.is_primary() && !n.slots.is_empty())
        .count()
}

fn quorum(st: &ClusterState) -> usize {
    size(st) / 2 + 1
}

/// The failure detector and the replica's side of failover, once per bus cycle.
pub fn tick(server: &Arc<Server>) {
    let Some(cluster) = server.cluster.as_ref() else {
        return;
    };
    let timeout = node_timeout(server);
    let now = now_ms();
    let mut routing_changed = false;
    let mut fail_broadcasts = Vec::new();
    {
        let mut st = cluster.state.lock();
        let ids: Vec<NodeId> = st.nodes.keys().cloned().collect();
        for id in &ids {
            let Some(n) = st.nodes.get_mut(id) else {
                continue;
            };
            if n.flags.myself || n.flags.handshake {
                continue;
            }
            // A node we cannot even connect to has a PING outstanding as far as we care.
            if !n.link_connected && n.ping_sent == 0 {
                n.ping_sent = now;
            }
            let suspected = n.flags.pfail || n.flags.fail;
            if n.ping_sent != 0 && now.saturating_sub(n.ping_sent) > timeout && !suspected {
                n.flags.pfail = true;
                routing_changed = true;
                info!(node = %n.id, addr = %n.addr(), "node is not answering: marked PFAIL");
            }
        }
        for id in &ids {
            if mark_failing_if_needed(&mut st, id, timeout, now) {
                fail_broadcasts.push(id.clone());
                routing_changed = true;
            }
        }
    }
    for id in fail_broadcasts {
        if let Some(msg) = message(server, Kind::Fail, Body::Fail { id }, 0) {
            bus::send_later(None, msg);
            cluster.wake.notify_one();
        }
    }
    manual_timeout(server, now);
    let promote = election_step(server, timeout, now);
    if promote {
        take_over(server, &mut server.lock_db(), "election won");
        routing_changed = true;
    }
    if routing_changed {
        cluster.mark_dirty();
        let mut db = server.lock_db();
        super::publish_routing(server, &mut db);
    }
}

/// Valkey's `markNodeAsFailingIfNeeded`: a PFAIL node becomes FAIL once a majority of slot
/// primaries (counting ourselves, if we are one) report it. True if it just did.
fn mark_failing_if_needed(st: &mut ClusterState, id: &str, timeout: u64, now: u64) -> bool {
    let needed = quorum(st);
    let me_counts = st.me().is_primary() && !st.me().slots.is_empty();
    let valid = |reporter: &NodeId, at: &u64, st: &ClusterState| {
        now.saturating_sub(*at) <= timeout * 2
            && st
                .nodes
                .get(reporter)
                .is_some_and(|r| r.is_primary() && !r.slots.is_empty())
    };
    let Some(n) = st.nodes.get(id) else {
        return false;
    };
    if !n.flags.pfail || n.flags.fail {
        return false;
    }
    let reports = n
        .fail_reports
        .iter()
        .filter(|(r, at)| valid(r, at, st))
        .count();
    if reports + usize::from(me_counts) < needed {
        return false;
    }
    let epoch = st.current_epoch;
    if let Some(n) = st.nodes.get_mut(id) {
        n.flags.fail = true;
        n.flags.pfail = false;
        n.fail_time = now;
        warn!(node = %n.id, addr = %n.addr(), reports, epoch, "node marked FAIL by a majority of primaries");
    }
    true
}

/// A message of `kind` from us with the given body and message flags.
fn message(server: &Server, kind: Kind, body: Body, mflags: u8) -> Option<Message> {
    let cluster = server.cluster.as_ref()?;
    let st = cluster.state.lock();
    let mut header = bus::header(&st, kind, server.repl.offset());
    header.mflags = mflags;
    Some(Message { header, body })
}

/// Our vote request, or our promotion once we have a majority. True: promote now.
fn election_step(server: &Arc<Server>, timeout: u64, now: u64) -> bool {
    let Some(cluster) = server.cluster.as_ref() else {
        return false;
    };
    let (validity, no_failover, ping_period) = {
        let c = server.config.read();
        (
            c.get_u64("cluster-replica-validity-factor"),
            c.get_bool("cluster-replica-no-failover"),
            c.get_u64("repl-ping-replica-period"),
        )
    };
    let my_offset = server.repl.offset();
    let link_down_ms = {
        let s = server.repl.state.lock();
        match &s.primary {
            Some(p) if p.state != crate::replication::LinkState::Up => {
                p.down_since.elapsed().as_millis() as u64
            }
            _ => 0,
        }
    };
    let mut request = None;
    let promote = {
        let mut st = cluster.state.lock();
        let me = st.me();
        if !me.flags.replica {
            return false;
        }
        let Some(primary) = me
            .primary_id
            .clone()
            .and_then(|id| st.nodes.get(&id).cloned())
        else {
            return false;
        };
        let manual = st.failover.manual_end != 0 && st.failover.manual_can_start;
        if (!primary.flags.fail && !manual) || primary.slots.is_empty() {
            if !manual {
                st.failover.auth_time = 0;
            }
            return false;
        }
        if no_failover && !manual {
            return false;
        }
        // Too old a copy of the data must not become the primary (unless asked to).
        if !manual && validity > 0 {
            let age = link_down_ms.saturating_sub(timeout);
            if age > timeout * validity + ping_period * 1000 {
                return false;
            }
        }
        let auth_timeout = (timeout * 2).max(2000);
        let retry = auth_timeout * 2;
        let e = &st.failover;
        if e.auth_time == 0 || (now > e.auth_time && now - e.auth_time > retry) {
            let rank = if manual {
                0
            } else {
                st.nodes
                    .values()
                    .filter(|n| {
                        n.flags.replica
                            && !n.flags.myself
                            && !n.flags.fail
                            && n.primary_id.as_deref() == Some(primary.id.as_str())
                            && n.repl_offset > my_offset
                    })
                    .count()
            };
            let delay = if manual {
                0
            } else {
                // Long enough for the FAIL broadcast to reach every primary (it goes out at
                // once, not on the next PING), short enough to matter: Valkey waits 500-1000
                // ms plus a second per rank.
                100 + rand::rng().random_range(0..100) + rank as u64 * 500
            };
            let e = &mut st.failover;
            e.auth_time = now + delay;
            e.auth_sent = false;
            e.votes.clear();
            e.rank = rank;
            info!(
                delay_ms = delay,
                rank,
                offset = my_offset,
                "primary failed: election scheduled"
            );
            // A manual failover has nothing to wait for: ask for votes now.
            if delay > 0 {
                return false;
            }
        }
        if now < st.failover.auth_time || now - st.failover.auth_time > auth_timeout {
            return false;
        }
        if !st.failover.auth_sent {
            st.current_epoch += 1;
            let epoch = st.current_epoch;
            st.failover.auth_epoch = epoch;
            st.failover.auth_sent = true;
            cluster.mark_dirty();
            info!(epoch, "asking the primaries for votes");
            let mflags = if manual { MF_FORCE_ACK } else { 0 };
            let mut header = bus::header(&st, Kind::FailoverAuthRequest, my_offset);
            header.mflags = mflags;
            request = Some(Message {
                header,
                body: Body::Empty,
            });
            false
        } else {
            st.failover.votes.len() >= quorum(&st)
        }
    };
    if let Some(msg) = request {
        bus::send_later(None, msg);
        cluster.wake.notify_one();
    }
    promote
}

/// Becomes the primary of our primary's slots (election won, or TAKEOVER). `db` is the
/// keyspace, locked.
pub fn take_over(server: &Arc<Server>, db: &mut crate::db::Db, reason: &str) {
    let Some(cluster) = server.cluster.as_ref() else {
        return;
    };
    let (old, epoch) = {
        let mut st = cluster.state.lock();
        let Some(old) = st.me().primary_id.clone() else {
            return;
        };
        let auth_epoch = st.failover.auth_epoch;
        let me = st.me_mut();
        me.flags.replica = false;
        me.flags.primary = true;
        me.primary_id = None;
        if me.config_epoch < auth_epoch {
            me.config_epoch = auth_epoch;
        }
        let epoch = me.config_epoch;
        let slots: Vec<u16> = st
            .nodes
            .get(&old)
            .map(|n| n.slots.iter().collect())
            .unwrap_or_default();
        let myself = st.myself.clone();
        for s in slots {
            st.assign(s, Some(&myself));
        }
        st.failover = Election::default();
        (old, epoch)
    };
    crate::replication::promote(server, db);
    super::publish_routing(server, db);
    cluster.mark_dirty();
    cluster
        .failovers
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    info!(old_primary = %old, config_epoch = epoch, reason, "failover: I am the primary of my shard now");
    // Everyone should know at once, not at the next PING.
    if let Some(pong) = bus::build(server, Kind::Pong) {
        bus::send_later(None, pong);
    }
    cluster.wake.notify_one();
}

/// A primary's vote for a replica asking to replace its failed primary. Returns the ack.
pub fn vote(server: &Server, st: &mut ClusterState, req: &Message) -> Option<Message> {
    let h = &req.header;
    let now = now_ms();
    let timeout = node_timeout(server);
    let me = st.me();
    if !me.is_primary() || me.slots.is_empty() {
        return None;
    }
    if h.current_epoch < st.current_epoch || st.last_vote_epoch == st.current_epoch {
        return None;
    }
    let candidate = st.nodes.get(&h.sender)?;
    let primary_id = candidate.primary_id.clone().or(h.primary.clone())?;
    let primary = st.nodes.get(&primary_id)?;
    let forced = h.mflags & MF_FORCE_ACK != 0;
    if !primary.flags.fail && !forced {
        return None;
    }
    if now.saturating_sub(primary.voted_time) < timeout * 2 {
        return None;
    }
    for slot in h.slots.iter() {
        if let Some(owner) = st.owner(slot) {
            if owner.config_epoch > h.config_epoch {
                return None;
            }
        }
    }
    st.last_vote_epoch = st.current_epoch;
    if let Some(p) = st.nodes.get_mut(&primary_id) {
        p.voted_time = now;
    }
    info!(candidate = %h.sender, epoch = st.current_epoch, "failover: voted");
    let header = bus::header(st, Kind::FailoverAuthAck, server.repl.offset());
    Some(Message {
        header,
        body: Body::Empty,
    })
}

/// A vote arrived for our election.
pub fn count_vote(st: &mut ClusterState, msg: &Message) {
    let sender_counts = st
        .nodes
        .get(&msg.header.sender)
        .is_some_and(|n| n.is_primary() && !n.slots.is_empty());
    if sender_counts && st.failover.auth_sent && msg.header.current_epoch >= st.failover.auth_epoch
    {
        st.failover.votes.insert(msg.header.sender.clone());
    }
}

/// CLUSTER FAILOVER [FORCE|TAKEOVER], on a replica.
pub fn start_manual(
    server: &Arc<Server>,
    db: &mut crate::db::Db,
    mode: Manual,
) -> Result<(), String> {
    let Some(cluster) = server.cluster.as_ref() else {
        return Err("ERR This instance has cluster support disabled".into());
    };
    let primary_id = {
        let mut st = cluster.state.lock();
        let me = st.me();
        if !me.flags.replica {
            return Err("ERR You should send CLUSTER FAILOVER to a replica".into());
        }
        let Some(primary) = me
            .primary_id
            .clone()
            .and_then(|id| st.nodes.get(&id).cloned())
        else {
            return Err("ERR I'm a replica but my master is unknown to me".into());
        };
        if mode == Manual::Coordinated && (primary.flags.fail || primary.flags.pfail) {
            return Err("ERR Master is down or failed, please use CLUSTER FAILOVER FORCE".into());
        }
        st.failover = Election::default();
        if mode == Manual::Takeover {
            // No vote: a new epoch of our own, as Valkey's TAKEOVER.
            st.current_epoch += 1;
            let epoch = st.current_epoch;
            st.failover.auth_epoch = epoch;
        } else {
            st.failover.manual_end = now_ms() + MANUAL_TIMEOUT_MS;
            st.failover.manual_can_start = mode == Manual::Force;
        }
        primary.id
    };
    match mode {
        Manual::Takeover => take_over(server, db, "CLUSTER FAILOVER TAKEOVER"),
        Manual::Force => info!("manual failover (FORCE): starting the election"),
        Manual::Coordinated => {
            info!(primary = %primary_id, "manual failover: asking the primary to pause writes");
            if let Some(msg) = message(server, Kind::MfStart, Body::Empty, 0) {
                bus::send_later(Some(primary_id), msg);
            }
        }
    }
    cluster.wake.notify_one();
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Manual {
    Coordinated,
    Force,
    Takeover,
}

/// On a primary: our replica asked for a manual failover. Writes stop; the replica learns
/// the offset they stopped at.
pub fn on_mfstart(server: &Arc<Server>, replica: &str) {
    let Some(cluster) = server.cluster.as_ref() else {
        return;
    };
    {
        let mut st = cluster.state.lock();
        let is_my_replica = st.nodes.get(replica).is_some_and(|n| {
            n.flags.replica && n.primary_id.as_deref() == Some(st.myself.as_str())
        });
        if !is_my_replica {
            return;
        }
        st.failover.manual_end = now_ms() + MANUAL_TIMEOUT_MS;
        st.failover.manual_replica = Some(replica.to_string());
    }
    let until = Instant::now() + Duration::from_millis(MANUAL_TIMEOUT_MS * 2);
    server.pause.pause(crate::server::PauseKind::Write, until);
    // Once the lock is ours, no write is running or staged: the offset is final.
    let offset = {
        let mut db = server.lock_db();
        db.flush();
        server.repl.offset()
    };
    info!(replica = %replica, offset, "manual failover: writes paused, final offset sent");
    if let Some(mut msg) = message(server, Kind::Ping, Body::Gossip(Vec::new()), MF_PAUSED) {
        msg.header.repl_offset = offset;
        bus::send_later(Some(replica.to_string()), msg);
        cluster.wake.notify_one();
    }
}

/// On a replica: our primary says it paused at `offset`.
pub fn on_primary_paused(st: &mut ClusterState, offset: u64) {
    if st.failover.manual_end != 0 && st.failover.manual_offset.is_none() {
        st.failover.manual_offset = Some(offset);
        info!(
            offset,
            "manual failover: primary paused, catching up to its offset"
        );
    }
}

/// A manual failover that ran out of time is abandoned; a replica that caught up starts.
fn manual_timeout(server: &Arc<Server>, now: u64) {
    let Some(cluster) = server.cluster.as_ref() else {
        return;
    };
    let my_offset = server.repl.offset();
    let mut unpause = false;
    {
        let mut st = cluster.state.lock();
        let e = &mut st.failover;
        if e.manual_end == 0 {
            return;
        }
        if now > e.manual_end {
            warn!("manual failover timed out: abandoned");
            unpause = e.manual_replica.is_some();
            st.failover = Election::default();
        } else if let Some(target) = e.manual_offset {
            if !e.manual_can_start && my_offset >= target {
                e.manual_can_start = true;
                info!(
                    offset = my_offset,
                    "manual failover: caught up, starting the election"
                );
            }
        }
    }
    if unpause {
        server.pause.unpause();
    }
}
