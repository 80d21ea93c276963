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

    /// Whether every slot is in the set.
    pub fn is_full(&self) -> bool {
        self.0.iter().all(|&w| w == u64::MAX)
    }

    /// How many slots are in the set.
    pub fn len(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Adds every slot of `other`.
    pub fn union_with(&mut self, other: &SlotSet) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a |= *b;
        }
    }

    /// The slots of `self` that `other` lacks.
    pub fn difference(&self, other: &SlotSet) -> SlotSet {
        let mut out = SlotSet::default();
        for ((o, a), b) in out.0.iter_mut().zip(self.0.iter()).zip(other.0.iter()) {
            *o = *a & !*b;
        }
        out
    }

    /// The slots, in order. Visits words, not slots: an empty set costs 256 word checks,
    /// which matters because every bus message's claim is walked.
    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        self.0.iter().enumerate().flat_map(|(i, &word)| {
            let mut rest = word;
            std::iter::from_fn(move || {
                if rest == 0 {
                    return None;
                }
                let bit = rest.trailing_zeros() as usize;
                rest &= rest - 1;
                // i < 256 and bit < 64: the slot is below SLOT_COUNT (16384).
                Some((i * 64 + bit) as u16)
            })
        })
    }

    /// Contiguous ranges, inclusive, in order. Whole words (empty or full) are taken at once.
    pub fn ranges(&self) -> Vec<(u16, u16)> {
        let mut out: Vec<(u16, u16)> = Vec::new();
        let mut add = |start: u16, end: u16| match out.last_mut() {
            Some((_, last)) if *last + 1 == start => *last = end,
            _ => out.push((start, end)),
        };
        for (i, &word) in self.0.iter().enumerate() {
            let base = (i * 64) as u16;
            match word {
                0 => {}
                u64::MAX => add(base, base + 63),
                _ => {
                    let mut rest = word;
                    while rest != 0 {
                        let bit = rest.trailing_zeros() as u16;
                        rest &= rest - 1;
                        add(base + bit, base + bit);
                    }
                }
            }
        }
        out
    }

    /// The raw bitmap, for the bus (slot `s` is bit `s % 8` of byte `s / 8`).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(SLOT_COUNT / 8);
        for w in self.0.iter() {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out
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
    /// Each slot's owner, as this node believes. Change it only with [`ClusterState::assign`],
    /// which keeps the nodes' slot sets and the slot log in step.
    pub slot_owner: Box<[Option<NodeId>]>,
    /// CLUSTER SETSLOT <slot> MIGRATING <node>: slots we are moving out, to whom.
    pub migrating: BTreeMap<u16, NodeId>,
    /// CLUSTER SETSLOT <slot> IMPORTING <node>: slots we are taking in, from whom.
    pub importing: BTreeMap<u16, NodeId>,
    pub health: Health,
    /// Unix ms when this node last found itself unable to reach a majority of the primaries
    /// (0: never), for the delay before it serves again (see `bus::update_health`).
    pub minority_seen_ms: u64,
    /// Addresses we were asked to MEET and have not heard back from: (ip, port, cport).
    pub handshakes: Vec<(String, u16, u16, u64)>,
    /// Nodes removed with CLUSTER FORGET, not to be re-added by gossip until the time
    /// (Unix ms) passes.
    pub blacklist: HashMap<NodeId, u64>,
    /// An election or manual failover in progress (see `failover.rs`).
    pub failover: super::failover::Election,
    /// The latest changes of `slot_owner`, so the routing snapshot can catch up slot by
    /// slot instead of being rebuilt (a reshard changes one slot at a time).
    slot_log: SlotLog,
}

/// A count of the changes made to the slot table, with the slots of the latest ones.
#[derive(Debug, Default)]
pub struct SlotLog {
    /// How many changes were made (the table's version).
    version: u64,
    /// The slots of the latest changes, oldest first: versions `version - len + 1 ..=
    /// version`.
    recent: std::collections::VecDeque<u16>,
}

impl SlotLog {
    /// How many changes are remembered; a reader further behind rebuilds from the table.
    const KEEP: usize = 256;

    fn record(&mut self, slot: u16) {
        self.version += 1;
        if self.recent.len() == Self::KEEP {
            self.recent.pop_front();
        }
        self.recent.push_back(slot);
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// The slots changed after version `since` (a slot may repeat), or None if the log no
    /// longer reaches back that far (or `since` is not a version of this log).
    pub fn since(&self, since: u64) -> Option<impl Iterator<Item = u16> + '_> {
        let behind = usize::try_from(self.version.checked_sub(since)?).ok()?;
        let skip = self.recent.len().checked_sub(behind)?;
        Some(self.recent.iter().skip(skip).copied())
    }
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
            minority_seen_ms: 0,
            handshakes: Vec::new(),
            blacklist: HashMap::new(),
            failover: Default::default(),
            slot_log: SlotLog::default(),
        }
    }

    /// The changes of the slot table (see [`SlotLog`]).
    pub fn slot_log(&self) -> &SlotLog {
        &self.slot_log
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
        self.slot_log.record(slot);
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

    /// The slots of `claimed` that `sender` does not hold in our table (all, for a node we
    /// do not know).
    pub fn unheld(&self, sender: &str, claimed: &SlotSet) -> SlotSet {
        match self.nodes.get(sender) {
            Some(n) => claimed.difference(&n.slots),
            None => claimed.clone(),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn set(slots: &[u16]) -> SlotSet {
        let mut s = SlotSet::default();
        for &slot in slots {
            s.insert(slot);
        }
        s
    }

    /// The word-at-a-time walks agree with a plain scan, on word edges too.
    #[test]
    fn iter_ranges_and_counts_match_a_plain_scan() {
        let slots: Vec<u16> = [0, 1, 2, 63, 64, 65, 127]
            .into_iter()
            .chain(128..=255)
            .chain(1000..1100)
            .chain([16382, 16383])
            .collect();
        let s = set(&slots);
        assert_eq!(s.iter().collect::<Vec<_>>(), slots);
        assert_eq!(s.len(), slots.len());
        assert_eq!(
            s.ranges(),
            vec![(0, 2), (63, 65), (127, 255), (1000, 1099), (16382, 16383)]
        );
        assert!(!s.is_empty() && !s.is_full());
        assert!(SlotSet::default().ranges().is_empty());
        assert_eq!(SlotSet::default().iter().count(), 0);

        let mut full = SlotSet::default();
        full.union_with(&s);
        full.union_with(&set(&(0..SLOT_COUNT as u16).collect::<Vec<_>>()));
        assert!(full.is_full());
        assert_eq!(full.ranges(), vec![(0, 16383)]);
        assert_eq!(full.difference(&s).len(), SLOT_COUNT - slots.len());
        assert!(s.difference(&full).is_empty());
        assert_eq!(
            s.difference(&set(&[1, 64]))
                .iter()
                .take(4)
                .collect::<Vec<_>>(),
            [0, 2, 63, 65]
        );
        assert_eq!(SlotSet::from_bytes(&s.to_bytes()), Some(s));
    }

    #[test]
    fn the_slot_log_tells_what_changed_since_a_version() {
        let mut me = ClusterNode::new("a".repeat(40), String::new(), 7000, 17000);
        me.flags.myself = true;
        let id = me.id.clone();
        let mut st = ClusterState::new(me);
        let v0 = st.slot_log().version();
        st.assign(5, Some(&id));
        st.assign(9, None);
        let v2 = st.slot_log().version();
        assert_eq!(v2, v0 + 2);
        let since = |st: &ClusterState, v| st.slot_log().since(v).map(|i| i.collect::<Vec<_>>());
        assert_eq!(since(&st, v0), Some(vec![5, 9]));
        assert_eq!(since(&st, v2), Some(vec![]));
        // Ahead of the log: not a version of it.
        assert_eq!(since(&st, v2 + 1), None);
        for s in 0..SlotLog::KEEP as u16 {
            st.assign(s, Some(&id));
        }
        // Only the latest changes are kept.
        assert_eq!(since(&st, v0), None);
        assert_eq!(since(&st, v2).map(|s| s.len()), Some(SlotLog::KEEP));
        assert_eq!(st.me().slots.len(), SlotLog::KEEP);
    }
}
