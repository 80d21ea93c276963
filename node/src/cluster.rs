//! Cluster mode: this node as a member of a Valkey cluster.
//!
//! - [`state`]: what the node knows (nodes, roles, epochs, slot owners).
//! - [`routing`]: the per-slot snapshot commands are checked against (MOVED, ASK, ...).
//! - [`bus`]: the cluster bus: links to every node, gossip, slot ownership by epochs.
//! - [`nodes_conf`]: `cluster-config-file`, Valkey's line format.
//! - [`render`]: CLUSTER NODES / SLOTS / SHARDS / INFO from the state.
//! - [`message`]: the bus wire format (our own, bounded and validated).
//!
//! Locks: the keyspace lock (if taken) comes before the cluster state's, which is never held
//! across an `.await`.

pub mod bus;
pub mod failover;
pub mod message;
pub mod nodes_conf;
pub mod render;
pub mod routing;
pub mod state;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;
use tokio::sync::Notify;
use tracing::info;

use crate::config::Config;
use crate::db::Db;
use crate::server::Server;
use routing::Routing;
use state::{ClusterNode, ClusterState};

pub struct Cluster {
    pub state: Mutex<ClusterState>,
    config_path: PathBuf,
    /// The state changed in a way `nodes.conf` must record; the bus cycle saves it.
    save_pending: AtomicBool,
    /// Held through a save (render, write, rename), so that two saves (the bus cycle's and
    /// CLUSTER SAVECONFIG's) cannot rename an older text over a newer one.
    saving: Mutex<()>,
    /// Wakes the bus cycle early (a MEET to start, a link to open).
    pub wake: Notify,
    /// Our slots or epoch changed in a way every node should hear of before the next PINGs:
    /// the bus cycle sends a PONG to all (see [`Cluster::broadcast_soon`]).
    pong_pending: AtomicBool,
    pub stats: bus::Stats,
    /// Failovers this node won: it replaced its primary (an election or TAKEOVER).
    pub failovers: AtomicU64,
    /// Our bus port.
    pub cport: u16,
    pub started: std::time::Instant,
}

impl Cluster {
    /// Loads `cluster-config-file` if it exists, else starts as a new node of its own with a
    /// fresh id. A file that cannot be read stops the start.
    pub fn init(config: &Config, port: u16) -> Result<Cluster, String> {
        let config_path = PathBuf::from(config.get("cluster-config-file"));
        let cport = match config.get_u64("cluster-port") {
            0 => port as u32 + 10000,
            p => p as u32,
        };
        let cport = u16::try_from(cport).map_err(|_| {
            format!("the cluster bus port ({cport}) is past 65535: set cluster-port")
        })?;
        let state = match std::fs::read_to_string(&config_path) {
            Ok(text) => {
                let mut st = nodes_conf::parse(&text)
                    .map_err(|e| format!("cannot load {}: {e}", config_path.display()))?;
                // As Valkey: times restart at the load, so peers are not judged on old
                // silence; a primary from a Redis 7.0 file gets a shard id of its own.
                let now = crate::server::now_ms();
                for n in st.nodes.values_mut() {
                    n.link_connected = false;
                    if n.ping_sent != 0 {
                        n.ping_sent = now;
                    }
                    if n.pong_received != 0 {
                        n.pong_received = now;
                    }
                    if n.flags.fail {
                        n.fail_time = now;
                    }
                    if n.shard_id.is_empty() && n.is_primary() {
                        n.shard_id = crate::server::random_hex40();
                    }
                }
                let me = st.me_mut();
                me.port = port;
                me.cport = cport;
                info!(path = %config_path.display(), id = %st.myself, "cluster state loaded");
                st
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let id = crate::server::random_hex40();
                let mut me = ClusterNode::new(id.clone(), String::new(), port, cport);
                me.flags.myself = true;
                me.flags.primary = true;
                me.shard_id = crate::server::random_hex40();
                info!(id = %id, "no cluster configuration found, I'm a new node");
                ClusterState::new(me)
            }
            Err(e) => return Err(format!("cannot read {}: {e}", config_path.display())),
        };
        let announce_ip = config.get("cluster-announce-ip").to_string();
        let cluster = Cluster {
            state: Mutex::new(state),
            config_path,
            save_pending: AtomicBool::new(true),
            saving: Mutex::new(()),
            wake: Notify::new(),
            pong_pending: AtomicBool::new(false),
            stats: bus::Stats::default(),
            failovers: AtomicU64::new(0),
            cport,
            started: std::time::Instant::now(),
        };
        if !announce_ip.is_empty() {
            cluster.state.lock().me_mut().ip = announce_ip;
        }
        Ok(cluster)
    }

    /// Records that `nodes.conf` must be rewritten (soon, by the bus cycle).
    pub fn mark_dirty(&self) {
        self.save_pending.store(true, Ordering::Release);
    }

    /// Asks the bus cycle to send a PONG to every node soon, as Redis 7.0 and Valkey do after
    /// an import (`clusterBroadcastPong`): replicas and the primaries that redis-cli does not tell
    /// learn the new owner and epoch within a cycle rather than at the next PINGs, up to a
    /// second away. Requests made while one waits are one PONG, with the state of when it
    /// is sent: a reshard finishes an import every few milliseconds.
    pub fn broadcast_soon(&self) {
        // One wake per pending PONG: the cycle does all its work when woken.
        if !self.pong_pending.swap(true, Ordering::AcqRel) {
            self.wake.notify_one();
        }
    }

    /// Whether a PONG to every node was asked for since the last call.
    pub fn take_broadcast(&self) -> bool {
        self.pong_pending.swap(false, Ordering::AcqRel)
    }

    /// Writes `nodes.conf` now if anything changed since the last write.
    pub fn save_if_needed(&self) -> std::io::Result<()> {
        let _saving = self.saving.lock();
        if !self.save_pending.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        // Rendered under the lock, written (and fsynced) without it: commands and the bus
        // must not wait for the disk.
        let text = nodes_conf::render(&self.state.lock());
        if let Err(e) = nodes_conf::save_text(&self.config_path, &text) {
            self.save_pending.store(true, Ordering::Release);
            return Err(e);
        }
        Ok(())
    }

    /// Writes `nodes.conf` now (CLUSTER SAVECONFIG).
    pub fn save_now(&self) -> std::io::Result<()> {
        self.save_pending.store(true, Ordering::Release);
        self.save_if_needed()
    }
}

/// Brings the keyspace's routing snapshot up to date with the cluster state (only what
/// changed is redone: see `Routing::refresh`). Call with the keyspace lock held (it is `db`)
/// and without the cluster lock.
pub fn publish_routing(server: &Server, db: &mut Db) {
    let Some(cluster) = server.cluster.as_ref() else {
        return;
    };
    let allow_reads = server
        .config
        .read()
        .get_bool("cluster-allow-reads-when-down");
    let st = cluster.state.lock();
    match db.cluster.as_deref_mut() {
        Some(routing) => routing.refresh(&st, allow_reads),
        None => db.cluster = Some(Box::new(Routing::from_state(&st, allow_reads))),
    }
}
