//! Where each slot is served, as the keyspace sees it: the snapshot commands check keys
//! against, and the redirections they get (MOVED, ASK, TRYAGAIN, CROSSSLOT, CLUSTERDOWN),
//! following Valkey's rules.
//!
//! The cluster state machine refreshes this snapshot whenever ownership, roles or migrations
//! change and stores it in the keyspace, so a command checks its keys under the lock it
//! already holds. A refresh costs what changed: a reshard moves one slot at a time, and
//! every CLUSTER SETSLOT or bus message that moves one must not rebuild all 16384 slots.

use std::collections::HashMap;

use lagwise_shared::slot::SLOT_COUNT;

use super::state::ClusterState;

const NONE: u16 = u16::MAX;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routing {
    /// Per slot, the index of its owner in `nodes`, or NONE.
    owner: Box<[u16]>,
    /// The known nodes, by index: in id order, as the state keeps them.
    nodes: Vec<NodeAddr>,
    /// The version of the state's slot table that `owner` reflects (see `SlotLog`).
    version: u64,
    me: u16,
    /// Our primary, when we are a replica.
    my_primary: Option<u16>,
    migrating: HashMap<u16, u16>,
    importing: HashMap<u16, u16>,
    ok: bool,
    allow_reads_when_down: bool,
}

/// A node as redirections name it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NodeAddr {
    id: String,
    /// The address clients use.
    ip: String,
    port: u16,
}

/// Why a command cannot run here.
#[derive(Debug, PartialEq, Eq)]
pub enum Redirect {
    Moved(u16, String),
    Ask(u16, String),
    TryAgain,
    CrossSlot,
    Unserved,
    Down,
    DownReadOnly,
}

impl Redirect {
    pub fn message(&self) -> String {
        match self {
            Redirect::Moved(slot, addr) => format!("MOVED {slot} {addr}"),
            Redirect::Ask(slot, addr) => format!("ASK {slot} {addr}"),
            Redirect::TryAgain => "TRYAGAIN Multiple keys request during rehashing of slot".into(),
            Redirect::CrossSlot => "CROSSSLOT Keys in request don't hash to the same slot".into(),
            Redirect::Unserved => "CLUSTERDOWN Hash slot not served".into(),
            Redirect::Down => "CLUSTERDOWN The cluster is down".into(),
            Redirect::DownReadOnly => {
                "CLUSTERDOWN The cluster is down and only accepts read commands".into()
            }
        }
    }
}

/// What the check needs to know about the request.
pub struct Request {
    pub slot: u16,
    /// How many keys it names, and how many of them exist here.
    pub keys: usize,
    pub existing: usize,
    pub is_write: bool,
    /// The client sent ASKING (or the command implies it, RESTORE-ASKING).
    pub asking: bool,
    /// The client sent READONLY, or the command is sharded pub/sub.
    pub readonly: bool,
}

impl Routing {
    /// The whole snapshot, built from the state.
    pub fn from_state(state: &ClusterState, allow_reads_when_down: bool) -> Routing {
        let mut routing = Routing {
            owner: vec![NONE; SLOT_COUNT].into_boxed_slice(),
            nodes: Vec::new(),
            version: 0,
            me: NONE,
            my_primary: None,
            migrating: HashMap::new(),
            importing: HashMap::new(),
            ok: false,
            allow_reads_when_down,
        };
        routing.rebuild(state);
        routing.refresh_small_parts(state, allow_reads_when_down);
        routing
    }

    /// Brings the snapshot up to date with `state`: slot by slot when the nodes are the same
    /// and the state's slot log reaches back to this snapshot, else rebuilt. The small parts
    /// (who we are, migrations, health) are read again every time.
    pub fn refresh(&mut self, state: &ClusterState, allow_reads_when_down: bool) {
        let log = state.slot_log();
        let changed = if self.same_nodes(state) {
            log.since(self.version)
        } else {
            None
        };
        match changed {
            Some(slots) => {
                for slot in slots {
                    let owner = state.slot_owner[slot as usize].as_deref();
                    self.owner[slot as usize] = owner.map_or(NONE, |id| self.index(id));
                }
                self.version = log.version();
            }
            None => self.rebuild(state),
        }
        self.refresh_small_parts(state, allow_reads_when_down);
    }

    /// Whether `nodes` lists the state's nodes with their current addresses.
    fn same_nodes(&self, state: &ClusterState) -> bool {
        self.nodes.len() == state.nodes.len()
            && self
                .nodes
                .iter()
                .zip(state.nodes.values())
                .all(|(a, n)| a.id == n.id && a.port == n.port && a.ip == n.ip)
    }

    /// Reads the node list and the whole slot table.
    fn rebuild(&mut self, state: &ClusterState) {
        self.nodes = state
            .nodes
            .values()
            .map(|n| NodeAddr {
                id: n.id.clone(),
                ip: n.ip.clone(),
                port: n.port,
            })
            .collect();
        // Owners come in long runs: one lookup per run.
        let mut last: Option<(&str, u16)> = None;
        for (slot, owner) in self.owner.iter_mut().zip(state.slot_owner.iter()) {
            *slot = match owner.as_deref() {
                None => NONE,
                Some(id) => match last {
                    Some((last_id, i)) if last_id == id => i,
                    _ => {
                        let i = Self::find(&self.nodes, id);
                        last = Some((id, i));
                        i
                    }
                },
            };
        }
        self.version = state.slot_log().version();
    }

    fn refresh_small_parts(&mut self, state: &ClusterState, allow_reads_when_down: bool) {
        self.me = self.index(&state.myself);
        self.my_primary = state
            .me()
            .primary_id
            .as_deref()
            .map(|id| self.index(id))
            .filter(|&i| i != NONE);
        self.migrating = state
            .migrating
            .iter()
            .map(|(&s, id)| (s, self.index(id)))
            .collect();
        self.importing = state
            .importing
            .iter()
            .map(|(&s, id)| (s, self.index(id)))
            .collect();
        self.ok = state.health == super::state::Health::Ok;
        self.allow_reads_when_down = allow_reads_when_down;
    }

    /// The index of node `id`, or NONE.
    fn index(&self, id: &str) -> u16 {
        Self::find(&self.nodes, id)
    }

    fn find(nodes: &[NodeAddr], id: &str) -> u16 {
        nodes
            .binary_search_by(|n| n.id.as_str().cmp(id))
            .ok()
            .and_then(|i| u16::try_from(i).ok())
            .unwrap_or(NONE)
    }

    /// Whether a command for `slot` that names keys may run here, or where it must go.
    pub fn check(&self, req: &Request) -> Result<(), Redirect> {
        let slot = req.slot;
        let owner = self.owner[slot as usize];
        if owner == NONE {
            return Err(Redirect::Unserved);
        }
        if !self.ok {
            if !self.allow_reads_when_down {
                return Err(Redirect::Down);
            }
            if req.is_write {
                return Err(Redirect::DownReadOnly);
            }
        }
        let missing = req.keys - req.existing.min(req.keys);
        if owner == self.me {
            if let Some(&target) = self.migrating.get(&slot) {
                if missing > 0 {
                    if req.existing > 0 {
                        return Err(Redirect::TryAgain);
                    }
                    return Err(Redirect::Ask(slot, self.addr(target)));
                }
            }
            return Ok(());
        }
        if self.importing.contains_key(&slot) && req.asking {
            if req.keys > 1 && missing > 0 {
                return Err(Redirect::TryAgain);
            }
            return Ok(());
        }
        if self.my_primary == Some(owner) && req.readonly && !req.is_write {
            return Ok(());
        }
        Err(Redirect::Moved(slot, self.addr(owner)))
    }

    fn addr(&self, idx: u16) -> String {
        self.nodes
            .get(idx as usize)
            .map(|n| format!("{}:{}", n.ip, n.port))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::cluster::state::{ClusterNode, Health};

    const A: &str = "a000000000000000000000000000000000000000";
    const B: &str = "b000000000000000000000000000000000000000";
    const C: &str = "c000000000000000000000000000000000000000";

    fn node(id: &str, port: u16) -> ClusterNode {
        let mut n = ClusterNode::new(id.to_string(), "127.0.0.1".into(), port, port + 10000);
        n.flags.primary = true;
        n
    }

    /// Three primaries, B being us, with a third of the slots each.
    fn state() -> ClusterState {
        let mut me = node(B, 7001);
        me.flags.myself = true;
        let mut st = ClusterState::new(me);
        st.nodes.insert(A.into(), node(A, 7000));
        st.nodes.insert(C.into(), node(C, 7002));
        for s in 0..SLOT_COUNT as u16 {
            let owner = [A, B, C][usize::from(s) * 3 / SLOT_COUNT];
            st.assign(s, Some(owner));
        }
        st.health = Health::Ok;
        st
    }

    fn request(slot: u16) -> Request {
        Request {
            slot,
            keys: 1,
            existing: 0,
            is_write: true,
            asking: false,
            readonly: false,
        }
    }

    #[test]
    fn a_refresh_after_single_slot_changes_equals_a_rebuild() {
        let mut st = state();
        let mut routing = Routing::from_state(&st, false);
        assert_eq!(
            routing.check(&request(0)),
            Err(Redirect::Moved(0, "127.0.0.1:7000".into()))
        );
        assert_eq!(routing.check(&request(6000)), Ok(()));

        // A reshard step: slot 0 moves from A to us, slot 6000 is migrating to C.
        st.importing.insert(1, A.into());
        st.assign(0, Some(B));
        st.migrating.insert(6000, C.into());
        st.assign(16383, None);
        routing.refresh(&st, false);
        assert_eq!(routing, Routing::from_state(&st, false));
        assert_eq!(routing.check(&request(0)), Ok(()));
        assert_eq!(
            routing.check(&request(6000)),
            Err(Redirect::Ask(6000, "127.0.0.1:7002".into()))
        );
        assert_eq!(routing.check(&request(16383)), Err(Redirect::Unserved));
        let mut asking = request(1);
        asking.asking = true;
        assert_eq!(routing.check(&asking), Ok(()));
    }

    #[test]
    fn a_refresh_further_behind_than_the_log_rebuilds() {
        let mut st = state();
        let mut routing = Routing::from_state(&st, false);
        for s in 0..1000 {
            st.assign(s, Some(C));
        }
        routing.refresh(&st, false);
        assert_eq!(routing, Routing::from_state(&st, false));
        assert_eq!(
            routing.check(&request(999)),
            Err(Redirect::Moved(999, "127.0.0.1:7002".into()))
        );
    }

    #[test]
    fn a_refresh_sees_new_nodes_and_new_addresses() {
        let mut st = state();
        let mut routing = Routing::from_state(&st, false);
        // A node whose id sorts first shifts every index.
        const N: &str = "0000000000000000000000000000000000000000";
        st.nodes.insert(N.into(), node(N, 7005));
        st.assign(10, Some(N));
        st.nodes.get_mut(C).unwrap().ip = "10.0.0.3".into();
        routing.refresh(&st, false);
        assert_eq!(routing, Routing::from_state(&st, false));
        assert_eq!(
            routing.check(&request(10)),
            Err(Redirect::Moved(10, "127.0.0.1:7005".into()))
        );
        assert_eq!(
            routing.check(&request(16000)),
            Err(Redirect::Moved(16000, "10.0.0.3:7002".into()))
        );
        assert_eq!(
            routing.check(&request(0)),
            Err(Redirect::Moved(0, "127.0.0.1:7000".into()))
        );
    }

    #[test]
    fn a_refresh_follows_health_and_the_reads_setting() {
        let mut st = state();
        let mut routing = Routing::from_state(&st, false);
        st.health = Health::Fail;
        routing.refresh(&st, true);
        assert_eq!(routing, Routing::from_state(&st, true));
        assert_eq!(routing.check(&request(6000)), Err(Redirect::DownReadOnly));
        routing.refresh(&st, false);
        assert_eq!(routing.check(&request(6000)), Err(Redirect::Down));
    }
}
