//! Where each slot is served, as the keyspace sees it: the snapshot commands check keys
//! against, and the redirections they get (MOVED, ASK, TRYAGAIN, CROSSSLOT, CLUSTERDOWN),
//! following Valkey's rules.
//!
//! The cluster state machine rebuilds this snapshot whenever ownership, roles or migrations
//! change and stores it in the keyspace, so a command checks its keys under the lock it
//! already holds.

use std::collections::HashMap;

use lagwise_shared::slot::SLOT_COUNT;

use super::state::ClusterState;

const NONE: u16 = u16::MAX;

#[derive(Debug, Clone)]
pub struct Routing {
    /// Per slot, the index of its owner in `addrs`, or NONE.
    owner: Box<[u16]>,
    /// Client addresses (`ip:port`) of the nodes, by index.
    addrs: Vec<String>,
    me: u16,
    /// Our primary, when we are a replica.
    my_primary: Option<u16>,
    migrating: HashMap<u16, u16>,
    importing: HashMap<u16, u16>,
    ok: bool,
    allow_reads_when_down: bool,
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
    pub fn from_state(state: &ClusterState, allow_reads_when_down: bool) -> Routing {
        let mut index: HashMap<&str, u16> = HashMap::new();
        let mut addrs = Vec::new();
        for (i, n) in state.nodes.values().enumerate() {
            index.insert(n.id.as_str(), i as u16);
            addrs.push(n.addr());
        }
        let idx = |id: &str| index.get(id).copied().unwrap_or(NONE);
        let owner = (0..SLOT_COUNT)
            .map(|s| state.slot_owner[s].as_deref().map_or(NONE, idx))
            .collect();
        let me = idx(&state.myself);
        let my_primary = state
            .me()
            .primary_id
            .as_deref()
            .map(idx)
            .filter(|&i| i != NONE);
        Routing {
            owner,
            addrs,
            me,
            my_primary,
            migrating: state
                .migrating
                .iter()
                .map(|(&s, id)| (s, idx(id)))
                .collect(),
            importing: state
                .importing
                .iter()
                .map(|(&s, id)| (s, idx(id)))
                .collect(),
            ok: state.health == super::state::Health::Ok,
            allow_reads_when_down,
        }
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
        self.addrs.get(idx as usize).cloned().unwrap_or_default()
    }
}
