//! The cluster bus: every node keeps a link to every other node and gossips over it.
//!
//! Each known node (and each address we were asked to MEET) gets an outbound link task: it
//! connects to the node's bus port, sends MEET (for a handshake) or PING about once a
//! second, and reads the PONGs that come back. The listener accepts the other direction:
//! PINGs and MEETs arrive there and are answered with PONG on the same connection. Every
//! message carries its sender's view of itself (role, epochs, slots, offset) and a few
//! other nodes (gossip), which is how new nodes are discovered and slot ownership spreads.
//!
//! Slot ownership follows Valkey's rule: a claim with a higher config epoch wins; a node
//! whose claim is stale is sent an UPDATE; two primaries with the same config epoch resolve
//! it by the one with the smaller id taking a new epoch.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::seq::IteratorRandom;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::message::{self, Body, Gossip, Header, Kind, Message};
use super::state::{ClusterNode, ClusterState, Health};
use crate::server::{now_ms, Server};

/// How long a restarted primary waits before it serves (see `update_health`).
const WRITABLE_DELAY: Duration = Duration::from_millis(2000);
/// Bounds of the delay before a primary that was cut off from a majority serves again (see
/// `update_health`), as Valkey's CLUSTER_MIN_REJOIN_DELAY and CLUSTER_MAX_REJOIN_DELAY.
const REJOIN_DELAY_MIN_MS: u64 = 500;
const REJOIN_DELAY_MAX_MS: u64 = 5000;
/// How often each link sends a PING.
const PING_EVERY: Duration = Duration::from_millis(1000);
/// The bus cycle: links, failure detection, health, saving nodes.conf.
const CYCLE: Duration = Duration::from_millis(100);
/// A bus link that cannot connect retries this often.
const RETRY: Duration = Duration::from_millis(500);
/// How long after FAIL a primary that still claims slots must be heard from before the flag
/// is lifted (Valkey: twice the node timeout).
fn fail_undo_ms() -> u64 {
    FAIL_UNDO_MS.load(Ordering::Relaxed)
}

/// Twice `cluster-node-timeout`, refreshed by the bus cycle.
static FAIL_UNDO_MS: AtomicU64 = AtomicU64::new(30_000);

/// How long a forgotten node stays out of gossip (CLUSTER FORGET), as Valkey.
pub const FORGET_TTL_MS: u64 = 60_000;

/// Message counters for CLUSTER INFO.
#[derive(Debug, Default)]
pub struct Stats {
    pub sent: [AtomicU64; 10],
    pub received: [AtomicU64; 10],
}

/// Counter index of a message kind (kinds are numbered from 1 on the wire).
fn kind_index(kind: Kind) -> usize {
    usize::from(kind.code() - 1)
}

impl Stats {
    fn count(counters: &[AtomicU64; 10], kind: Kind) {
        counters[kind_index(kind)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn render(&self) -> super::render::BusStats {
        let pick = |c: &[AtomicU64; 10]| {
            Kind::ALL
                .iter()
                .map(|&k| (k.name(), c[kind_index(k)].load(Ordering::Relaxed)))
                .filter(|(_, n)| *n > 0)
                .collect()
        };
        super::render::BusStats {
            sent: pick(&self.sent),
            received: pick(&self.received),
        }
    }
}

/// Where a link task sends: a known node by id, or an address being met.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Peer {
    Node(String),
    Meet(String, u16, u16),
}

/// Messages other parts of the node want sent to a peer (UPDATE, FAIL, PUBLISH).
type Outbox = mpsc::Sender<Message>;

/// Starts the bus: the listener and the cycle that keeps one link per peer.
pub async fn run(server: Arc<Server>) {
    let Some(cluster) = server.cluster.as_ref() else {
        return;
    };
    let bind = server.config.read().bind_addrs();
    let mut listeners = Vec::new();
    for (host, optional) in bind {
        let addr = if host.contains(':') {
            format!("[{host}]:{}", cluster.cport)
        } else {
            format!("{host}:{}", cluster.cport)
        };
        match TcpListener::bind(&addr).await {
            Ok(l) => listeners.push(l),
            Err(e) if optional => debug!(%addr, error = %e, "optional bus address unavailable"),
            Err(e) => {
                warn!(%addr, error = %e, "cannot listen on the cluster bus port: shutting down");
                server.request_shutdown();
                return;
            }
        }
    }
    for l in listeners {
        tokio::spawn(accept_loop(server.clone(), l));
    }
    cycle(server).await;
}

async fn accept_loop(server: Arc<Server>, listener: TcpListener) {
    let mut shutdown = server.shutdown_listener();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.wait() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(inbound(server.clone(), stream, peer.ip()));
            }
            Err(e) => {
                debug!(error = %e, "bus accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A connection another node opened to us: its PINGs and MEETs, answered with PONGs.
async fn inbound(server: Arc<Server>, mut stream: TcpStream, peer_ip: IpAddr) {
    let local_ip = stream.local_addr().map(|a| a.ip()).ok();
    let mut shutdown = server.shutdown_listener();
    let mut buf = Vec::new();
    loop {
        let read = tokio::select! {
            r = message::read_message(&mut stream, &mut buf) => r,
            _ = shutdown.wait() => return,
        };
        let msg = match read {
            Ok(Some(m)) => m,
            Ok(None) => return,
            Err(e) => {
                // A malformed frame costs this link, never the node.
                debug!(peer = %peer_ip, error = %e, "dropping bus link after a bad frame");
                return;
            }
        };
        let kind = msg.header.kind;
        let accepted = handle(&server, msg, peer_ip, local_ip, None);
        if accepted && matches!(kind, Kind::Ping | Kind::Meet) {
            let pong = build(&server, Kind::Pong);
            if let Some(Ok(frame)) = pong.map(|p| message::encode(&p)) {
                if tokio::time::timeout(Duration::from_secs(5), stream.write_all(&frame))
                    .await
                    .map_or(true, |r| r.is_err())
                {
                    return;
                }
                if let Some(c) = server.cluster.as_ref() {
                    Stats::count(&c.stats.sent, Kind::Pong);
                }
            }
        }
    }
}

/// The bus cycle: open links to new peers, close links to forgotten ones, judge health,
/// save nodes.conf.
async fn cycle(server: Arc<Server>) {
    let Some(cluster) = server.cluster.as_ref() else {
        return;
    };
    let mut shutdown = server.shutdown_listener();
    let mut links: HashMap<Peer, (tokio::task::JoinHandle<()>, Outbox)> = HashMap::new();
    let mut last_save: Option<Instant> = None;
    let mut last_broadcast: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(CYCLE) => {}
            _ = cluster.wake.notified() => {}
            _ = shutdown.wait() => {
                for (_, (task, _)) in links.drain() {
                    task.abort();
                }
                let _ = cluster.save_if_needed();
                return;
            }
        }
        let peers: Vec<Peer> = {
            let st = cluster.state.lock();
            st.nodes
                .values()
                .filter(|n| !n.flags.myself)
                .map(|n| Peer::Node(n.id.clone()))
                .chain(
                    st.handshakes
                        .iter()
                        .map(|(ip, port, cport, _)| Peer::Meet(ip.clone(), *port, *cport)),
                )
                .collect()
        };
        links.retain(|peer, (task, _)| {
            let keep = peers.contains(peer) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        for peer in peers {
            if let std::collections::hash_map::Entry::Vacant(slot) = links.entry(peer.clone()) {
                let (tx, rx) = mpsc::channel(64);
                let task = tokio::spawn(outbound(server.clone(), peer, rx));
                slot.insert((task, tx));
            }
        }
        // Messages other parts queued (UPDATE, FAIL, PUBLISH) go to their links.
        let queued = std::mem::take(&mut *OUTGOING.lock());
        for (to, pending) in queued {
            let msg = match pending {
                Pending::Ready(m) => m,
                Pending::Publish(kind, body) => {
                    let st = cluster.state.lock();
                    Message {
                        header: header(&st, kind, server.repl.offset()),
                        body,
                    }
                }
            };
            match to {
                Some(id) => {
                    if let Some((_, tx)) = links.get(&Peer::Node(id)) {
                        let _ = tx.try_send(msg);
                    }
                }
                None => {
                    for (peer, (_, tx)) in &links {
                        if matches!(peer, Peer::Node(_)) {
                            let _ = tx.try_send(msg.clone());
                        }
                    }
                }
            }
        }
        // A PONG to every node when asked (see `Cluster::broadcast_soon`), at most once a
        // cycle; a request that must wait stays pending for the next one.
        if last_broadcast.is_none_or(|t| t.elapsed() >= CYCLE) && cluster.take_broadcast() {
            last_broadcast = Some(Instant::now());
            if let Some(pong) = build(&server, Kind::Pong) {
                for (peer, (_, tx)) in &links {
                    if matches!(peer, Peer::Node(_)) {
                        let _ = tx.try_send(pong.clone());
                    }
                }
            }
        }
        cluster.state.lock().me_mut().repl_offset = server.repl.offset();
        FAIL_UNDO_MS.store(
            server.config.read().get_u64("cluster-node-timeout") * 2,
            Ordering::Relaxed,
        );
        expire_handshakes(cluster);
        super::failover::tick(&server);
        update_health(&server);
        // nodes.conf at most once a cycle: every CLUSTER SETSLOT of a reshard marks it dirty,
        // and a write with two fsyncs per SETSLOT was the largest cost of a reshard once
        // routing updates were incremental. A change is on disk within two cycles. The
        // fsyncs run on a blocking thread, not on the runtime's (one thread by default).
        let pending = server
            .cluster
            .as_ref()
            .is_some_and(|c| c.save_pending.load(Ordering::Acquire));
        if pending && last_save.is_none_or(|t| t.elapsed() >= CYCLE) {
            last_save = Some(Instant::now());
            let saver = server.clone();
            let saved = tokio::task::spawn_blocking(move || {
                saver
                    .cluster
                    .as_ref()
                    .map_or(Ok(()), |c| c.save_if_needed())
            })
            .await;
            if let Ok(Err(e)) = saved {
                warn!(error = %e, "cannot write the cluster config file");
            }
        }
    }
}

/// What waits to be sent: a ready message, or a PUBLISH whose header is made at sending.
enum Pending {
    Ready(Message),
    Publish(Kind, Body),
}

/// Messages to send on the next cycle: to one node (by id) or, with None, to all.
static OUTGOING: parking_lot::Mutex<Vec<(Option<String>, Pending)>> =
    parking_lot::Mutex::new(Vec::new());

/// Queues a message for a node (or every node) on the bus.
pub fn send_later(to: Option<String>, msg: Message) {
    OUTGOING.lock().push((to, Pending::Ready(msg)));
}

/// Relays a PUBLISH (or, `sharded`, an SPUBLISH) to every node, or to `only` these.
pub fn publish(sharded: bool, channel: &[u8], message: &[u8], only: Option<Vec<String>>) {
    // The header is filled in when the message is sent (see `cycle`).
    let body = Body::Publish {
        channel: channel.to_vec(),
        message: message.to_vec(),
    };
    let kind = if sharded {
        Kind::PublishShard
    } else {
        Kind::Publish
    };
    let mut q = OUTGOING.lock();
    match only {
        None => q.push((None, Pending::Publish(kind, body))),
        Some(ids) => {
            for id in ids {
                q.push((Some(id), Pending::Publish(kind, body.clone())));
            }
        }
    }
}

/// The other nodes of our shard: our primary and its replicas, or our replicas.
pub fn shard_members(st: &ClusterState) -> Vec<String> {
    let me = st.me();
    let primary = if me.flags.replica {
        me.primary_id.clone().unwrap_or_default()
    } else {
        me.id.clone()
    };
    st.nodes
        .values()
        .filter(|n| !n.flags.myself)
        .filter(|n| n.id == primary || n.primary_id.as_deref() == Some(primary.as_str()))
        .map(|n| n.id.clone())
        .collect()
}

/// A MEET that was never answered is given up after a while, as Valkey does.
fn expire_handshakes(cluster: &super::Cluster) {
    let timeout = 10_000;
    let now = now_ms();
    let mut st = cluster.state.lock();
    st.handshakes
        .retain(|(_, _, _, since)| now.saturating_sub(*since) < timeout);
    st.blacklist.retain(|_, until| *until > now);
}

/// One outbound link: connect, PING (or MEET) periodically, take in the PONGs.
async fn outbound(server: Arc<Server>, peer: Peer, mut outbox: mpsc::Receiver<Message>) {
    let Some(cluster) = server.cluster.as_ref() else {
        return;
    };
    let mut shutdown = server.shutdown_listener();
    loop {
        let addr = {
            let st = cluster.state.lock();
            match &peer {
                Peer::Node(id) => match st.nodes.get(id) {
                    Some(n) if !n.ip.is_empty() => format!("{}:{}", n.ip, n.cport),
                    Some(_) => String::new(),
                    None => return,
                },
                Peer::Meet(ip, _, cport) => format!("{ip}:{cport}"),
            }
        };
        if !addr.is_empty() {
            if let Ok(Ok(stream)) =
                tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(&addr)).await
            {
                let _ = stream.set_nodelay(true);
                set_link(cluster, &peer, true);
                let done = tokio::select! {
                    r = talk(&server, &peer, stream, &mut outbox) => r,
                    _ = shutdown.wait() => true,
                };
                set_link(cluster, &peer, false);
                if done {
                    return;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = shutdown.wait() => return,
        }
    }
}

fn set_link(cluster: &super::Cluster, peer: &Peer, up: bool) {
    if let Peer::Node(id) = peer {
        if let Some(n) = cluster.state.lock().nodes.get_mut(id) {
            n.link_connected = up;
        }
    }
}

/// Talks on a connected link until it breaks (false: reconnect) or the peer is gone for
/// good (true: stop).
async fn talk(
    server: &Arc<Server>,
    peer: &Peer,
    mut stream: TcpStream,
    outbox: &mut mpsc::Receiver<Message>,
) -> bool {
    let Some(cluster) = server.cluster.as_ref() else {
        return true;
    };
    let peer_ip = stream.peer_addr().map(|a| a.ip()).ok();
    let local_ip = stream.local_addr().map(|a| a.ip()).ok();
    let (mut rd, mut wr) = stream.split();
    let mut ticker = tokio::time::interval(PING_EVERY);
    let mut buf = Vec::new();
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                let kind = if matches!(peer, Peer::Meet(..)) { Kind::Meet } else { Kind::Ping };
                let Some(msg) = build(server, kind) else { return true };
                if let Peer::Node(id) = peer {
                    if let Some(n) = cluster.state.lock().nodes.get_mut(id) {
                        if n.ping_sent == 0 {
                            n.ping_sent = now_ms();
                        }
                    }
                }
                if write(&mut wr, &msg).await.is_err() {
                    return false;
                }
                Stats::count(&cluster.stats.sent, kind);
            }
            Some(msg) = outbox.recv() => {
                let kind = msg.header.kind;
                if write(&mut wr, &msg).await.is_err() {
                    return false;
                }
                Stats::count(&cluster.stats.sent, kind);
            }
            r = message::read_message(&mut rd, &mut buf) => match r {
                Ok(Some(msg)) => {
                    let Some(ip) = peer_ip else { return false };
                    let meet_target = match peer {
                        Peer::Meet(ip, port, cport) => Some((ip.clone(), *port, *cport)),
                        Peer::Node(_) => None,
                    };
                    let was_meet = meet_target.is_some();
                    handle(server, msg, ip, local_ip, meet_target);
                    // A handshake is complete once the peer answered: the node now has a
                    // link of its own under its id.
                    if was_meet {
                        return true;
                    }
                }
                Ok(None) => return false,
                Err(e) => {
                    debug!(error = %e, "bus link dropped after a bad frame");
                    return false;
                }
            },
        }
    }
}

async fn write(wr: &mut tokio::net::tcp::WriteHalf<'_>, msg: &Message) -> std::io::Result<()> {
    match tokio::time::timeout(Duration::from_secs(5), message::write_message(wr, msg)).await {
        Ok(r) => r.map_err(std::io::Error::other),
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// A message of `kind` about ourselves, with gossip about a few others.
pub fn build(server: &Server, kind: Kind) -> Option<Message> {
    let cluster = server.cluster.as_ref()?;
    let offset = server.repl.offset();
    let st = cluster.state.lock();
    let header = header(&st, kind, offset);
    let body = match kind {
        Kind::Ping | Kind::Pong | Kind::Meet => Body::Gossip(gossip(&st)),
        _ => Body::Empty,
    };
    Some(Message { header, body })
}

pub fn header(st: &ClusterState, kind: Kind, offset: u64) -> Header {
    let me = st.me();
    // A replica speaks for its primary's slots and epoch, as in Valkey.
    let primary = me
        .primary_id
        .as_ref()
        .and_then(|id| st.nodes.get(id))
        .filter(|_| me.flags.replica);
    let (slots, config_epoch) = match primary {
        Some(p) => (p.slots.clone(), p.config_epoch),
        None => (me.slots.clone(), me.config_epoch),
    };
    Header {
        kind,
        sender: me.id.clone(),
        current_epoch: st.current_epoch,
        config_epoch,
        repl_offset: offset,
        flags: me.flags,
        mflags: 0,
        primary: if me.flags.replica {
            me.primary_id.clone()
        } else {
            None
        },
        ip: me.ip.clone(),
        port: me.port,
        cport: me.cport,
        slots,
        shard_id: me.shard_id.clone(),
    }
}

/// Gossip about a few random other nodes: enough that news spreads in a few rounds.
fn gossip(st: &ClusterState) -> Vec<Gossip> {
    let others = st
        .nodes
        .values()
        .filter(|n| !n.flags.myself && !n.flags.handshake);
    let count = others.clone().count();
    let wanted = (count / 10).max(3).min(count);
    let mut rng = rand::rng();
    let mut picked: Vec<&ClusterNode> = others.clone().choose_multiple(&mut rng, wanted);
    // Nodes we suspect are always mentioned: that is how failure reports travel.
    for n in others.filter(|n| n.flags.pfail || n.flags.fail) {
        if !picked.iter().any(|p| p.id == n.id) {
            picked.push(n);
        }
    }
    picked
        .into_iter()
        .map(|n| Gossip {
            id: n.id.clone(),
            ip: n.ip.clone(),
            port: n.port,
            cport: n.cport,
            flags: n.flags,
            ping_sent: n.ping_sent,
            pong_received: n.pong_received,
        })
        .collect()
}

/// Takes in one message. `meet_target`: the address we MEET'd, when this is its answer.
/// Returns whether the sender is (now) a node we know.
fn handle(
    server: &Arc<Server>,
    msg: Message,
    peer_ip: IpAddr,
    local_ip: Option<IpAddr>,
    meet_target: Option<(String, u16, u16)>,
) -> bool {
    let Some(cluster) = server.cluster.as_ref() else {
        return false;
    };
    Stats::count(&cluster.stats.received, msg.header.kind);
    let outcome = {
        let mut st = cluster.state.lock();
        apply(&mut st, &msg, peer_ip, local_ip, meet_target)
    };
    if outcome.state_changed {
        cluster.mark_dirty();
    }
    if outcome.known {
        failover_message(server, &msg);
    }
    if outcome.routing_changed || !outcome.lost_slots.is_empty() || outcome.follow.is_some() {
        let mut db = server.lock_db();
        for slot in &outcome.lost_slots {
            db.delete_slot(*slot, crate::server::now_ms());
        }
        if let Some((ip, port)) = outcome.follow.clone() {
            crate::cmd::start_replica(server, &mut db, ip, port);
        }
        super::publish_routing(server, &mut db);
    }
    if let Some(update) = outcome.update {
        send_later(Some(msg.header.sender.clone()), update);
    }
    if outcome.end_pause {
        server.pause.unpause();
    }
    if let Body::Publish { channel, message } = &msg.body {
        let registry = server.pubsub.lock();
        if msg.header.kind == Kind::PublishShard {
            registry.spublish(channel, message);
        } else {
            registry.publish(channel, message);
        }
    }
    if outcome.new_nodes {
        cluster.wake.notify_one();
    }
    outcome.known
}

/// The failover side of a message: votes asked and given, manual failover handshakes.
fn failover_message(server: &Arc<Server>, msg: &Message) {
    let Some(cluster) = server.cluster.as_ref() else {
        return;
    };
    let h = &msg.header;
    match h.kind {
        Kind::FailoverAuthRequest => {
            let ack = super::failover::vote(server, &mut cluster.state.lock(), msg);
            if let Some(ack) = ack {
                cluster.mark_dirty();
                send_later(Some(h.sender.clone()), ack);
                cluster.wake.notify_one();
            }
        }
        Kind::FailoverAuthAck => {
            super::failover::count_vote(&mut cluster.state.lock(), msg);
            // The election step may promote us now rather than at the next cycle.
            cluster.wake.notify_one();
        }
        Kind::MfStart => super::failover::on_mfstart(server, &h.sender),
        Kind::Ping | Kind::Pong if h.mflags & super::message::MF_PAUSED != 0 => {
            let mut st = cluster.state.lock();
            let from_my_primary =
                st.me().flags.replica && st.me().primary_id.as_deref() == Some(h.sender.as_str());
            if from_my_primary {
                super::failover::on_primary_paused(&mut st, h.repl_offset);
                cluster.wake.notify_one();
            }
        }
        _ => {}
    }
}

#[derive(Default)]
struct Outcome {
    known: bool,
    state_changed: bool,
    routing_changed: bool,
    new_nodes: bool,
    lost_slots: Vec<u16>,
    end_pause: bool,
    update: Option<Message>,
    /// Our primary's address changed (or we must follow a new primary).
    follow: Option<(String, u16)>,
}

fn apply(
    st: &mut ClusterState,
    msg: &Message,
    peer_ip: IpAddr,
    local_ip: Option<IpAddr>,
    meet_target: Option<(String, u16, u16)>,
) -> Outcome {
    let mut out = Outcome::default();
    let h = &msg.header;
    let now = now_ms();
    if h.sender == st.myself {
        return out;
    }
    // We learn our own address from the first node that talks to us, as Valkey does.
    if st.me().ip.is_empty() {
        if let Some(ip) = local_ip {
            st.me_mut().ip = ip.to_string();
            out.state_changed = true;
            out.routing_changed = true;
        }
    }
    let sender_ip = if h.ip.is_empty() {
        peer_ip.to_string()
    } else {
        h.ip.clone()
    };
    if !st.nodes.contains_key(&h.sender) {
        let welcome = h.kind == Kind::Meet || (meet_target.is_some() && h.kind == Kind::Pong);
        if !welcome || st.blacklist.contains_key(&h.sender) {
            return out;
        }
        if let Some((ip, port, _)) = &meet_target {
            st.handshakes.retain(|(i, p, _, _)| !(i == ip && p == port));
        }
        let mut node = ClusterNode::new(h.sender.clone(), sender_ip.clone(), h.port, h.cport);
        node.flags.primary = true;
        node.shard_id = h.shard_id.clone();
        info!(node = %h.sender, addr = %format!("{sender_ip}:{}", h.port), "a new node joined the cluster");
        st.nodes.insert(h.sender.clone(), node);
        out.state_changed = true;
        out.routing_changed = true;
    } else if let Some((ip, port, _)) = &meet_target {
        st.handshakes.retain(|(i, p, _, _)| !(i == ip && p == port));
    }
    out.known = true;
    if h.current_epoch > st.current_epoch {
        st.current_epoch = h.current_epoch;
        out.state_changed = true;
    }
    let my_id = st.myself.clone();
    let my_primary = st.me().primary_id.clone();
    // The sender's view of itself.
    {
        let Some(n) = st.nodes.get_mut(&h.sender) else {
            return out;
        };
        if n.ip != sender_ip || n.port != h.port || n.cport != h.cport {
            n.ip = sender_ip;
            n.port = h.port;
            n.cport = h.cport;
            out.state_changed = true;
            out.routing_changed = true;
            if my_primary.as_deref() == Some(h.sender.as_str()) {
                out.follow = Some((n.ip.clone(), n.port));
            }
        }
        if h.kind == Kind::Pong {
            n.pong_received = now;
            n.ping_sent = 0;
            if n.flags.pfail {
                n.flags.pfail = false;
                out.routing_changed = true;
            }
        }
        // A FAIL node that talks again is reachable: a replica or a primary without slots
        // is cleared at once; a primary with slots only after twice the node timeout (its
        // replicas may be taking over), as in Valkey.
        if n.flags.fail {
            let quiet_long_enough = now.saturating_sub(n.fail_time) > fail_undo_ms();
            if h.flags.replica || h.slots.is_empty() || quiet_long_enough {
                n.flags.fail = false;
                n.fail_reports.clear();
                out.state_changed = true;
                out.routing_changed = true;
                info!(node = %n.id, "node is reachable again: FAIL cleared");
            }
        }
        n.repl_offset = h.repl_offset;
        if !h.shard_id.is_empty() && n.shard_id != h.shard_id {
            n.shard_id = h.shard_id.clone();
            out.state_changed = true;
        }
        let was_replica = n.flags.replica;
        let is_replica = h.flags.replica;
        if was_replica != is_replica || n.primary_id != h.primary {
            n.flags.replica = is_replica;
            n.flags.primary = !is_replica;
            n.primary_id = h.primary.clone();
            out.state_changed = true;
            out.routing_changed = true;
        }
        n.flags.nofailover = h.flags.nofailover;
        if !is_replica && n.config_epoch != h.config_epoch {
            n.config_epoch = h.config_epoch;
            out.state_changed = true;
        }
    }
    // A node that became a replica gives up its slots.
    if h.flags.replica {
        let held: Vec<u16> = st
            .nodes
            .get(&h.sender)
            .map(|n| n.slots.iter().collect())
            .unwrap_or_default();
        for s in held {
            st.assign(s, None);
            out.routing_changed = true;
        }
    } else {
        claim_slots(st, &h.sender, h.config_epoch, &h.slots, &mut out);
        // A claim older than what we know: tell the sender who owns those slots now.
        if let Some(update) = stale_claim(st, h) {
            out.update = Some(update);
        }
        collide_epochs(st, h, &mut out);
    }
    match &msg.body {
        Body::Gossip(entries) => {
            let sender_is_primary = st
                .nodes
                .get(&h.sender)
                .is_some_and(|n| n.is_primary() && !n.slots.is_empty());
            for g in entries {
                // A primary's suspicions count toward FAIL; its silence withdraws them.
                if let Some(n) = st.nodes.get_mut(&g.id) {
                    if sender_is_primary && !n.flags.myself {
                        if g.flags.pfail || g.flags.fail {
                            n.fail_reports.insert(h.sender.clone(), now);
                        } else {
                            n.fail_reports.remove(&h.sender);
                        }
                    }
                    continue;
                }
                if g.id == my_id || st.blacklist.contains_key(&g.id) {
                    continue;
                }
                if g.ip.is_empty() || g.flags.handshake || g.flags.noaddr {
                    continue;
                }
                let already = st
                    .handshakes
                    .iter()
                    .any(|(ip, port, _, _)| *ip == g.ip && *port == g.port);
                if !already {
                    st.handshakes.push((g.ip.clone(), g.port, g.cport, now));
                    out.new_nodes = true;
                }
            }
        }
        Body::Update {
            id,
            config_epoch,
            slots,
        } => {
            let known_epoch = st.nodes.get(id).map(|n| n.config_epoch);
            if let Some(e) = known_epoch {
                if *config_epoch > e {
                    if let Some(n) = st.nodes.get_mut(id) {
                        n.config_epoch = *config_epoch;
                    }
                    claim_slots(st, id, *config_epoch, slots, &mut out);
                }
            }
        }
        Body::Fail { id } => {
            if let Some(n) = st.nodes.get_mut(id) {
                if !n.flags.fail && !n.flags.myself {
                    n.flags.fail = true;
                    n.flags.pfail = false;
                    n.fail_time = now;
                    out.state_changed = true;
                    out.routing_changed = true;
                }
            }
        }
        _ => {}
    }
    out
}

/// Valkey's `clusterUpdateSlotsConfigWith`: `sender` claims `slots` at `epoch`; it gets each
/// slot nobody holds or whose holder has a lower config epoch.
fn claim_slots(
    st: &mut ClusterState,
    sender: &str,
    epoch: u64,
    slots: &super::state::SlotSet,
    out: &mut Outcome,
) {
    let myself = st.myself.clone();
    let mut gained = false;
    // Every PING and PONG carries a claim, nearly always one we know already: only the
    // claimed slots the sender does not hold yet need looking at (a node's slot set is the
    // slots the table gives it).
    let new_claims = st.unheld(sender, slots);
    for slot in new_claims.iter() {
        let current = st.slot_owner[slot as usize].clone();
        if current.as_deref() == Some(sender) {
            continue;
        }
        // A slot we are importing is ours to settle (CLUSTER SETSLOT ... NODE).
        if st.importing.contains_key(&slot) {
            continue;
        }
        let beaten = match current.as_ref().and_then(|id| st.nodes.get(id)) {
            None => true,
            Some(owner) => owner.config_epoch < epoch,
        };
        if !beaten {
            continue;
        }
        if current.as_deref() == Some(myself.as_str()) {
            out.lost_slots.push(slot);
            st.migrating.remove(&slot);
        }
        st.assign(slot, Some(sender));
        gained = true;
    }
    if gained {
        out.state_changed = true;
        out.routing_changed = true;
        if !out.lost_slots.is_empty() && st.failover.manual_replica.is_some() {
            // Our manual failover completed: the replica owns our slots now.
            st.failover = super::failover::Election::default();
            out.end_pause = true;
        }
        // A primary that lost its last slot to `sender` follows it, as Valkey's does (the
        // old primary coming back after a failover).
        let me = st.me();
        if me.is_primary() && me.slots.is_empty() && !out.lost_slots.is_empty() {
            let (ip, port) = st
                .nodes
                .get(sender)
                .map(|n| (n.ip.clone(), n.port))
                .unwrap_or_default();
            let me = st.me_mut();
            me.flags.replica = true;
            me.flags.primary = false;
            me.primary_id = Some(sender.to_string());
            out.follow = Some((ip, port));
            // Our keys are the new primary's history too: keep them, so the resync can be
            // partial; only a primary that keeps serving drops the keys of slots it lost.
            out.lost_slots.clear();
            info!(primary = %sender, "lost my last slot: following its new owner");
        }
        // Our primary lost all its slots to `sender`: follow the new owner (failover).
        let my_primary = me_primary(st);
        if let Some(p) = my_primary {
            let empty = st.nodes.get(&p).is_some_and(|n| n.slots.is_empty());
            if empty && p != sender {
                if let Some((ip, port)) = st.nodes.get(sender).map(|n| (n.ip.clone(), n.port)) {
                    st.me_mut().primary_id = Some(sender.to_string());
                    out.follow = Some((ip, port));
                    info!(primary = %sender, "my primary's slots moved: following their new owner");
                }
            }
        }
    }
}

fn me_primary(st: &ClusterState) -> Option<String> {
    let me = st.me();
    me.flags.replica.then(|| me.primary_id.clone()).flatten()
}

/// If `h` claims a slot that a node with a higher config epoch owns, an UPDATE about that
/// owner for the sender.
fn stale_claim(st: &ClusterState, h: &Header) -> Option<Message> {
    // The slots the sender holds are not stale: look only at the others it claims.
    let others = st.unheld(&h.sender, &h.slots);
    for slot in others.iter() {
        let Some(owner) = st.owner(slot) else {
            continue;
        };
        if owner.id != h.sender && owner.config_epoch > h.config_epoch {
            let mut header = header(st, Kind::Update, 0);
            header.kind = Kind::Update;
            return Some(Message {
                header,
                body: Body::Update {
                    id: owner.id.clone(),
                    config_epoch: owner.config_epoch,
                    slots: owner.slots.clone(),
                },
            });
        }
    }
    None
}

/// Two primaries with the same config epoch: the one with the smaller id takes a new one.
fn collide_epochs(st: &mut ClusterState, h: &Header, out: &mut Outcome) {
    let me = st.me();
    if !me.is_primary() || h.flags.replica || me.config_epoch != h.config_epoch {
        return;
    }
    if h.sender.as_str() <= me.id.as_str() {
        return;
    }
    st.current_epoch += 1;
    let epoch = st.current_epoch;
    st.me_mut().config_epoch = epoch;
    out.state_changed = true;
    info!(epoch, "config epoch collision: took a new config epoch");
}

/// `cluster_state`: ok when every slot has a primary that is not failed.
fn update_health(server: &Arc<Server>) {
    let Some(cluster) = server.cluster.as_ref() else {
        return;
    };
    let (full_coverage, node_timeout) = {
        let config = server.config.read();
        (
            config.get_bool("cluster-require-full-coverage"),
            config.get_u64("cluster-node-timeout"),
        )
    };
    let now = now_ms();
    let changed = {
        let mut st = cluster.state.lock();
        let mut ok = true;
        // The slots served by a node not flagged FAIL (each node's slot set is what the
        // slot table gives it): a union of a few bitmaps, not 16384 lookups per cycle.
        let mut served = super::state::SlotSet::default();
        for n in st.nodes.values().filter(|n| !n.flags.fail) {
            served.union_with(&n.slots);
        }
        let any = !served.is_empty();
        if full_coverage && !served.is_full() {
            ok = false;
        }
        // A node that cannot reach a majority of the slot primaries (itself included) is
        // in the minority side of a partition: it stops serving, so a primary cut off stops
        // taking writes that the majority side will not have.
        let size = st
            .nodes
            .values()
            .filter(|n| n.is_primary() && !n.slots.is_empty())
            .count();
        let reachable = st
            .nodes
            .values()
            .filter(|n| n.is_primary() && !n.slots.is_empty())
            .filter(|n| n.flags.myself || !(n.flags.pfail || n.flags.fail))
            .count();
        if size > 0 && reachable < size / 2 + 1 {
            ok = false;
            st.minority_seen_ms = now;
        }
        // A primary that just started waits before serving (Valkey's writable delay): the
        // cluster may have given its slots away while it was down, and it should hear so
        // before it takes a write that would be lost.
        if st.me().is_primary() && cluster.started.elapsed() < WRITABLE_DELAY {
            ok = false;
        }
        let mut health = if ok && any { Health::Ok } else { Health::Fail };
        // A primary back from the minority side of a partition waits a little before it
        // serves again (Valkey's rejoin delay: the node timeout, within 0.5 to 5 s), so that
        // it hears its slots went to a promoted replica before it takes writes that would be
        // lost. Hearing from a majority and hearing from the new owner are separate messages.
        let rejoin_delay = node_timeout.clamp(REJOIN_DELAY_MIN_MS, REJOIN_DELAY_MAX_MS);
        if health == Health::Ok
            && st.health == Health::Fail
            && st.me().is_primary()
            && now.saturating_sub(st.minority_seen_ms) < rejoin_delay
        {
            health = Health::Fail;
        }
        let changed = st.health != health;
        if changed {
            info!(
                state = if health == Health::Ok { "ok" } else { "fail" },
                "cluster state changed"
            );
        }
        st.health = health;
        changed
    };
    if changed {
        let mut db = server.lock_db();
        super::publish_routing(server, &mut db);
    }
}
