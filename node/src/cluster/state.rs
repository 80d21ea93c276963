//! What a cluster member knows: the nodes, their roles and epochs, and who owns each slot.
//!
//! One `ClusterState` per node, behind a mutex in `Cluster`; the bus and the CLUSTER
//! commands change it, and every change that matters to routing is published to the
//! keyspace as a `Routing` snapshot (see `routing.rs`), so commands never take this lock.

use std::collections::{BTreeMap, HashMap};

use lagwise_shared::slot::SLOT_COUNT;

/// A node id: 40 lowercase hex characters.
pub type NodeId = String;

/// Node flags, as CLUSTER NODES prints them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeFlags {
    pub myself: bool,
    pub primary: bool,
    pub replica: bool,
    /// This node suspects it is unreachable (no PONG within cluster-node-timeout).
    pub pfail: bool,
    /// A majority of primaries agreed it is unreachable.
    pub fail: bool,
    /// Met, but not yet answered: its id is still unknown.
    pub handshake: bool,
    pub noaddr: bool,
    pub nofailover: bool,
}

/// One member of the cluster (ourselves included).
#[derive(Debug, Clone)]
pub struct ClusterNode {
    pub id: NodeId,
    /// The address clients use (the announced one if set).
    pub ip: String,
    pub port: u16,
    /// The cluster bus port.
    pub cport: u16,
    pub hostname: String,
    pub flags: NodeFlags,
    /// For a replica: its primary's id.
    pub primary_id: Option<NodeId>,
    pub config_epoch: u64,
    /// Unix ms of the last PING we sent that is still unanswered (0: none pending).
    pub ping_sent: u64,
    /// Unix ms of the last PONG received.
    pub pong_received: u64,
    /// Whether our outbound bus link to it is connected.
    pub link_connected: bool,
    /// The slots this node claims (primaries).
    pub slots: SlotSet,
    /// Its replication offset, as last gossiped.
    pub repl_offset: u64,
    /// Primaries that reported this node as failing, with when (Unix ms).
    pub fail_reports: HashMap<NodeId, u64>,
    /// Unix ms when it was flagged FAIL (0: not failed).
    pub fail_time: u64,
    /// The shard id (CLUSTER MYSHARDID / SHARDS): a primary's, shared by its replicas.
    pub shard_id: String,
    /// Unix ms when we last voted for a replica of this primary (one vote per failover).
    pub voted_time: u64,
}

impl ClusterNode {
    pub fn new(id: NodeId, ip: String, port: u16, cport: u16) -> ClusterNode {
        ClusterNode {
            id,
            ip,
            port,
            cport,
            hostname: String::new(),
            flags: NodeFlags::default(),
            primary_id: None,
            config_epoch: 0,
            ping_sent: 0,
            pong_received: 0,
            link_connected: false,
            slots: SlotSet::default(),
            repl_offset: 0,
            fail_reports: HashMap::new(),
            fail_time: 0,
            shard_id: String::new(),
            voted_time: 0,
        }
    }

    pub fn addr(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }

    pub fn is_primary(&self) -> bool {
        !self.flags.replica
    }
}

/// A set of slots: one bit each.
#[derive(Clone, PartialEq, Eq)]
pub struct SlotSet(Box<[u64; SLOT_COUNT / 64]>);

impl Default for SlotSet {
    fn default() -> Self {
        SlotSet(Box::new([0; SLOT_COUNT / 64]))
    }
}

impl std::fmt::Debug for SlotSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SlotSet({:?})", self.ranges())
    }
}

impl SlotSet {
    pub fn contains(&self, slot: u16) -> bool {
        let s = slot as usize;
        self.0[s / 64] & (1 << (s % 64)) != 0
    }

    pub fn insert(&mut self, slot: u16) {
        let s = slot as usize;
        self.0[s / 64] |= 1 << (s % 64);
    }

    pub fn remove(&mut self, slot: u16) {
        let s = slot as usize;
        self.0[s / 64] &= !(1 << (s % 64));
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|&w| w == 0)
    }

    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        (0..SLOT_COUNT as u16).filter(|&s| self.contains(s))
    }

    /// Contiguous ranges, inclusive, in order.
    pub fn ranges(&self) -> Vec<(u16, u16)> {
        let mut out: Vec<(u16, u16)> = Vec::new();
        for s in self.iter() {
            match out.last_mut() {
                Some((_, end)) if *end + 1 == s => *end = s,
                _ => out.push((s, s)),
            }
        }
        out
    }

    /// The raw bitmap, for the bus (slot `s` is bit `s % 8` of byte `s / 8`).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<SlotSet> {
        if bytes.len() != SLOT_COUNT / 8 {
            return None;
        }
        let mut set = SlotSet::default();
        for (i, chunk) in bytes.chunks_exact(8).enumerate() {
            let mut w = [0u8; 8];
            w.copy_from_slice(chunk);
            set.0[i] = u64::from_le_bytes(w);
        }
        Some(set)
    }
}

/// Whether the cluster can serve: every slot covered by a reachable primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Ok,
    Fail,
}

#[derive(Debug)]
pub struct ClusterState {
    pub myself: NodeId,
    /// Every known node, by id; ourselves included. Ordered, so outputs are stable.
    pub nodes: BTreeMap<NodeId, ClusterNode>,
    pub current_epoch: u64,
    pub last_vote_epoch: u64,
    /// Each slot's owner, as this node believes.
    pub slot_owner: Box<[Option<NodeId>]>,
    /// CLUSTER SETSLOT <slot> MIGRATING <node>: slots we are moving out, to whom.
    pub migrating: BTreeMap<u16, NodeId>,
    /// CLUSTER SETSLOT <slot> IMPORTING <node>: slots we are taking in, from whom.
    pub importing: BTreeMap<u16, NodeId>,
    pub health: Health,
    /// Addresses we were asked to MEET and have not heard back from: (ip, port, cport).
    pub handshakes: Vec<(String, u16, u16, u64)>,
    /// Nodes removed with CLUSTER FORGET, not to be re-added by gossip until the time
    /// (Unix ms) passes.
    pub blacklist: HashMap<NodeId, u64>,
    /// An election or manual failover in progress (see `failover.rs`).
    pub failover: super::failover::Election,
}

impl ClusterState {
    pub fn new(myself: ClusterNode) -> ClusterState {
        let id = myself.id.clone();
        let mut nodes = BTreeMap::new();
        nodes.insert(id.clone(), myself);
        ClusterState {
            myself: id,
            nodes,
            current_epoch: 0,
            last_vote_epoch: 0,
            slot_owner: vec![None; SLOT_COUNT].into_boxed_slice(),
            migrating: BTreeMap::new(),
            importing: BTreeMap::new(),
            health: Health::Fail,
            handshakes: Vec::new(),
            blacklist: HashMap::new(),
            failover: Default::default(),
        }
    }

    pub fn me(&self) -> &ClusterNode {
        // The state always holds its own node: `new` puts it there and nothing removes it.
        self.nodes
            .get(&self.myself)
            .expect("myself is always known")
    }

    pub fn me_mut(&mut self) -> &mut ClusterNode {
        let id = self.myself.clone();
        self.nodes.get_mut(&id).expect("myself is always known")
    }

    /// Gives `slot` to `owner` (or nobody), keeping every node's slot set in step.
    pub fn assign(&mut self, slot: u16, owner: Option<&str>) {
        if let Some(old) = self.slot_owner[slot as usize].take() {
            if let Some(n) = self.nodes.get_mut(&old) {
                n.slots.remove(slot);
            }
        }
        if let Some(id) = owner {
            if let Some(n) = self.nodes.get_mut(id) {
                n.slots.insert(slot);
                self.slot_owner[slot as usize] = Some(id.to_string());
            }
        }
    }

    pub fn owner(&self, slot: u16) -> Option<&ClusterNode> {
        self.slot_owner[slot as usize]
            .as_ref()
            .and_then(|id| self.nodes.get(id))
    }

    /// The replicas of `primary`, in id order.
    pub fn replicas_of(&self, primary: &str) -> Vec<&ClusterNode> {
        self.nodes
            .values()
            .filter(|n| n.flags.replica && n.primary_id.as_deref() == Some(primary))
            .collect()
    }

    pub fn primaries(&self) -> impl Iterator<Item = &ClusterNode> {
        self.nodes
            .values()
            .filter(|n| n.is_primary() && !n.flags.handshake)
    }

    /// Primaries that serve at least one slot (the cluster's size, as Valkey counts it).
    pub fn size(&self) -> usize {
        self.primaries().filter(|n| !n.slots.is_empty()).count()
    }
}
