//! Cluster topology: which shard owns each hash slot, and each shard's primary and replicas.
//!
//! The proxy builds a `Topology` from `CLUSTER SHARDS` (or `CLUSTER SLOTS` on servers without
//! it), adds each primary's config epoch from `CLUSTER NODES`, and publishes it as one
//! immutable snapshot; routing reads a slot's shard with one index. The replica-read work adds
//! replication offsets and lag beside these types, keyed by the same node addresses.
//!
//! Epochs decide between two views as the cluster itself does: a slot belongs to the claimant
//! with the higher config epoch. A view in which some slot's owner has a lower epoch than in
//! the current view comes from a node that has not heard of the change (e.g. a partitioned
//! old primary) and must not replace it.

use std::collections::HashMap;

use redis_protocol::resp2::types::OwnedFrame;

use crate::slot::SLOT_COUNT;

/// A node as clients reach it: `host:port`. Shared, not copied: the request path clones it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeAddr(pub std::sync::Arc<str>);

impl NodeAddr {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub addr: NodeAddr,
    /// The 40-character node id, when the cluster reported it.
    pub id: String,
}

/// One primary and its replicas, owning some slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    pub primary: Node,
    pub replicas: Vec<Node>,
    /// The primary's config epoch (0 when not known).
    pub epoch: u64,
}

/// Why a topology reply was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    #[error("malformed cluster topology reply: {0}")]
    Malformed(&'static str),
    #[error("the node reported no slots")]
    Empty,
}

const NO_SHARD: u16 = u16::MAX;

/// The slot map: every slot's shard (or none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    shards: Vec<Shard>,
    slot_shard: Box<[u16]>,
}

fn bulk_text(f: &OwnedFrame) -> Option<String> {
    match f {
        OwnedFrame::BulkString(b) | OwnedFrame::SimpleString(b) => {
            String::from_utf8(b.clone()).ok()
        }
        _ => None,
    }
}

fn int(f: &OwnedFrame) -> Option<i64> {
    match f {
        OwnedFrame::Integer(n) => Some(*n),
        _ => None,
    }
}

/// A node entry of CLUSTER SLOTS: `[ip, port, id, ...]`. An empty ip means "the node you
/// asked", so `asked_host` stands in.
fn parse_node(f: &OwnedFrame, asked_host: &str) -> Result<Node, TopologyError> {
    let OwnedFrame::Array(parts) = f else {
        return Err(TopologyError::Malformed("node entry is not an array"));
    };
    let ip = parts
        .first()
        .and_then(bulk_text)
        .ok_or(TopologyError::Malformed("node without ip"))?;
    let port = parts
        .get(1)
        .and_then(int)
        .filter(|p| (1..=65535).contains(p))
        .ok_or(TopologyError::Malformed("node without a valid port"))?;
    let id = parts.get(2).and_then(bulk_text).unwrap_or_default();
    let host = if ip.is_empty() || ip == "?" {
        asked_host.to_string()
    } else {
        ip
    };
    let addr = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    Ok(Node {
        addr: NodeAddr(addr.into()),
        id,
    })
}

/// The value of `name` in a RESP2 flat field/value list (or a RESP3 map).
fn field<'a>(f: &'a OwnedFrame, name: &str) -> Result<&'a OwnedFrame, TopologyError> {
    let OwnedFrame::Array(parts) = f else {
        return Err(TopologyError::Malformed("entry is not a field list"));
    };
    parts
        .chunks(2)
        .find(|kv| bulk_text(&kv[0]).is_some_and(|k| k == name))
        .and_then(|kv| kv.get(1))
        .ok_or(TopologyError::Malformed("missing field"))
}

/// A node of CLUSTER SHARDS: its `endpoint` (or `ip`; `?`/empty means the node asked) and
/// `port`.
fn shard_node(f: &OwnedFrame, asked_host: &str) -> Result<Node, TopologyError> {
    let id = field(f, "id").ok().and_then(bulk_text).unwrap_or_default();
    let port = field(f, "port")
        .ok()
        .and_then(int)
        .filter(|p| (1..=65535).contains(p))
        .ok_or(TopologyError::Malformed("node without a valid port"))?;
    let usable = |h: &String| !h.is_empty() && h != "?";
    let host = field(f, "endpoint")
        .ok()
        .and_then(bulk_text)
        .filter(usable)
        .or_else(|| field(f, "ip").ok().and_then(bulk_text).filter(usable))
        .unwrap_or_else(|| asked_host.to_string());
    let addr = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    Ok(Node {
        addr: NodeAddr(addr.into()),
        id,
    })
}

impl Topology {
    /// Parses a `CLUSTER SLOTS` reply from the node at `asked_host`.
    pub fn from_cluster_slots(
        reply: &OwnedFrame,
        asked_host: &str,
    ) -> Result<Topology, TopologyError> {
        let OwnedFrame::Array(ranges) = reply else {
            return Err(TopologyError::Malformed("not an array"));
        };
        let mut shards: Vec<Shard> = Vec::new();
        let mut by_primary: HashMap<NodeAddr, u16> = HashMap::new();
        let mut slot_shard = vec![NO_SHARD; SLOT_COUNT].into_boxed_slice();
        for range in ranges {
            let OwnedFrame::Array(parts) = range else {
                return Err(TopologyError::Malformed("range is not an array"));
            };
            let (Some(start), Some(end)) =
                (parts.first().and_then(int), parts.get(1).and_then(int))
            else {
                return Err(TopologyError::Malformed("range without bounds"));
            };
            if start < 0 || end < start || end >= SLOT_COUNT as i64 {
                return Err(TopologyError::Malformed("slot range out of bounds"));
            }
            let primary = parse_node(
                parts
                    .get(2)
                    .ok_or(TopologyError::Malformed("range without primary"))?,
                asked_host,
            )?;
            let replicas = parts[3..]
                .iter()
                .map(|n| parse_node(n, asked_host))
                .collect::<Result<Vec<_>, _>>()?;
            let idx = match by_primary.get(&primary.addr) {
                Some(&i) => i,
                None => {
                    let i = shards.len() as u16;
                    by_primary.insert(primary.addr.clone(), i);
                    shards.push(Shard {
                        primary,
                        replicas,
                        epoch: 0,
                    });
                    i
                }
            };
            for s in start..=end {
                slot_shard[s as usize] = idx;
            }
        }
        if shards.is_empty() {
            return Err(TopologyError::Empty);
        }
        Ok(Topology { shards, slot_shard })
    }

    /// Parses a `CLUSTER SHARDS` reply (RESP2: each shard and node a flat list of field,
    /// value) from the node at `asked_host`. Replicas that are not `online` are left out.
    pub fn from_cluster_shards(
        reply: &OwnedFrame,
        asked_host: &str,
    ) -> Result<Topology, TopologyError> {
        let OwnedFrame::Array(entries) = reply else {
            return Err(TopologyError::Malformed("not an array"));
        };
        let mut shards: Vec<Shard> = Vec::new();
        let mut slot_shard = vec![NO_SHARD; SLOT_COUNT].into_boxed_slice();
        for entry in entries {
            let slots = field(entry, "slots")?;
            let nodes = field(entry, "nodes")?;
            let (OwnedFrame::Array(slots), OwnedFrame::Array(nodes)) = (slots, nodes) else {
                return Err(TopologyError::Malformed("slots or nodes is not an array"));
            };
            let mut primary = None;
            let mut replicas = Vec::new();
            for n in nodes {
                let role = field(n, "role")
                    .ok()
                    .and_then(bulk_text)
                    .unwrap_or_default();
                let health = field(n, "health")
                    .ok()
                    .and_then(bulk_text)
                    .unwrap_or_else(|| "online".into());
                let node = shard_node(n, asked_host)?;
                match role.as_str() {
                    "master" | "primary" => primary = Some(node),
                    _ if health == "online" => replicas.push(node),
                    _ => {}
                }
            }
            // A shard without slots (a primary being added, or one that lost them all) is
            // not part of the map.
            if slots.is_empty() {
                continue;
            }
            let Some(primary) = primary else {
                continue;
            };
            if slots.len() % 2 != 0 {
                return Err(TopologyError::Malformed("odd number of slot bounds"));
            }
            let idx = shards.len() as u16;
            for pair in slots.chunks(2) {
                let (Some(start), Some(end)) = (int(&pair[0]), int(&pair[1])) else {
                    return Err(TopologyError::Malformed("slot bound is not an integer"));
                };
                if start < 0 || end < start || end >= SLOT_COUNT as i64 {
                    return Err(TopologyError::Malformed("slot range out of bounds"));
                }
                for s in start..=end {
                    slot_shard[s as usize] = idx;
                }
            }
            shards.push(Shard {
                primary,
                replicas,
                epoch: 0,
            });
        }
        if shards.is_empty() {
            return Err(TopologyError::Empty);
        }
        Ok(Topology { shards, slot_shard })
    }

    /// Sets each primary's config epoch from a `CLUSTER NODES` reply (matched by node id).
    pub fn set_epochs(&mut self, cluster_nodes: &str) {
        let mut epochs: HashMap<&str, u64> = HashMap::new();
        for line in cluster_nodes.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            if let (Some(id), Some(epoch)) = (f.first(), f.get(6).and_then(|e| e.parse().ok())) {
                epochs.insert(id, epoch);
            }
        }
        for shard in &mut self.shards {
            if let Some(&e) = epochs.get(shard.primary.id.as_str()) {
                shard.epoch = e;
            }
        }
    }

    /// The highest config epoch of any primary in the map (0 when none is known).
    pub fn max_epoch(&self) -> u64 {
        self.shards.iter().map(|s| s.epoch).max().unwrap_or(0)
    }

    /// A slot that this view gives to another owner than `current` does, with a lower config
    /// epoch than `current`'s owner: this view is older there and must not replace `current`.
    pub fn older_than(&self, current: &Topology) -> Option<u16> {
        (0..SLOT_COUNT as u16).find(|&slot| {
            match (self.shard_of_slot(slot), current.shard_of_slot(slot)) {
                (Some(new), Some(cur)) => {
                    new.primary.addr != cur.primary.addr
                        && new.epoch != 0
                        && cur.epoch != 0
                        && new.epoch < cur.epoch
                }
                _ => false,
            }
        })
    }

    /// How many slots have an owner.
    pub fn slots_covered(&self) -> usize {
        self.slot_shard.iter().filter(|&&i| i != NO_SHARD).count()
    }

    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    pub fn shard_of_slot(&self, slot: u16) -> Option<&Shard> {
        match self.slot_shard.get(slot as usize) {
            Some(&i) if i != NO_SHARD => self.shards.get(i as usize),
            _ => None,
        }
    }

    pub fn primary_of_slot(&self, slot: u16) -> Option<&NodeAddr> {
        self.shard_of_slot(slot).map(|s| &s.primary.addr)
    }

    /// Every slot has an owner.
    pub fn covers_all_slots(&self) -> bool {
        self.slot_shard.iter().all(|&i| i != NO_SHARD)
    }

    pub fn primaries(&self) -> impl Iterator<Item = &NodeAddr> {
        self.shards.iter().map(|s| &s.primary.addr)
    }

    /// Every node, primaries and replicas.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.shards
            .iter()
            .flat_map(|s| std::iter::once(&s.primary).chain(s.replicas.iter()))
    }

    /// The map after a `MOVED slot addr`: the slot now belongs to the shard whose primary is
    /// `addr` (a new shard if none is). Used at once, before a full refresh confirms it.
    pub fn with_moved(&self, slot: u16, addr: &NodeAddr) -> Topology {
        let mut next = self.clone();
        let idx = match next.shards.iter().position(|s| &s.primary.addr == addr) {
            Some(i) => i as u16,
            None => {
                next.shards.push(Shard {
                    primary: Node {
                        addr: addr.clone(),
                        id: String::new(),
                    },
                    replicas: Vec::new(),
                    epoch: 0,
                });
                (next.shards.len() - 1) as u16
            }
        };
        if let Some(s) = next.slot_shard.get_mut(slot as usize) {
            *s = idx;
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> OwnedFrame {
        OwnedFrame::BulkString(s.as_bytes().to_vec())
    }

    fn node(ip: &str, port: i64, id: &str) -> OwnedFrame {
        OwnedFrame::Array(vec![bulk(ip), OwnedFrame::Integer(port), bulk(id)])
    }

    fn range(start: i64, end: i64, nodes: Vec<OwnedFrame>) -> OwnedFrame {
        let mut v = vec![OwnedFrame::Integer(start), OwnedFrame::Integer(end)];
        v.extend(nodes);
        OwnedFrame::Array(v)
    }

    #[test]
    fn parses_cluster_slots() {
        let reply = OwnedFrame::Array(vec![
            range(
                0,
                5460,
                vec![node("127.0.0.1", 7000, "a"), node("127.0.0.1", 7003, "d")],
            ),
            range(5461, 10922, vec![node("", 7001, "b")]),
            range(10923, 16383, vec![node("127.0.0.1", 7002, "c")]),
        ]);
        let t = Topology::from_cluster_slots(&reply, "10.0.0.9").expect("valid");
        assert!(t.covers_all_slots());
        assert_eq!(
            t.primary_of_slot(0).map(|a| a.as_str()),
            Some("127.0.0.1:7000")
        );
        assert_eq!(
            t.primary_of_slot(5461).map(|a| a.as_str()),
            Some("10.0.0.9:7001")
        );
        assert_eq!(t.shard_of_slot(100).map(|s| s.replicas.len()), Some(1));
        assert_eq!(t.primaries().count(), 3);
        let moved = t.with_moved(0, &NodeAddr("127.0.0.1:7002".into()));
        assert_eq!(
            moved.primary_of_slot(0).map(|a| a.as_str()),
            Some("127.0.0.1:7002")
        );
        assert_eq!(moved.primaries().count(), 3);
    }

    #[test]
    fn rejects_malformed_replies() {
        assert!(Topology::from_cluster_slots(&OwnedFrame::Integer(1), "h").is_err());
        let bad = OwnedFrame::Array(vec![range(5, 99999, vec![node("h", 1, "x")])]);
        assert!(Topology::from_cluster_slots(&bad, "h").is_err());
        assert_eq!(
            Topology::from_cluster_slots(&OwnedFrame::Array(vec![]), "h"),
            Err(TopologyError::Empty)
        );
        let partial = OwnedFrame::Array(vec![range(0, 10, vec![node("h", 1, "x")])]);
        assert!(!Topology::from_cluster_slots(&partial, "h")
            .expect("valid")
            .covers_all_slots());
    }

    fn shard_node(id: &str, port: i64, role: &str, health: &str) -> OwnedFrame {
        OwnedFrame::Array(vec![
            bulk("id"),
            bulk(id),
            bulk("port"),
            OwnedFrame::Integer(port),
            bulk("ip"),
            bulk("10.0.0.1"),
            bulk("endpoint"),
            bulk("?"),
            bulk("role"),
            bulk(role),
            bulk("replication-offset"),
            OwnedFrame::Integer(100),
            bulk("health"),
            bulk(health),
        ])
    }

    fn shard_entry(slots: &[i64], nodes: Vec<OwnedFrame>) -> OwnedFrame {
        OwnedFrame::Array(vec![
            bulk("slots"),
            OwnedFrame::Array(slots.iter().map(|&n| OwnedFrame::Integer(n)).collect()),
            bulk("nodes"),
            OwnedFrame::Array(nodes),
        ])
    }

    fn three_shards(owner_of_low: &str) -> Topology {
        let reply = OwnedFrame::Array(vec![
            shard_entry(
                &[0, 100, 200, 5460],
                vec![
                    shard_node(owner_of_low, 7000, "master", "online"),
                    shard_node("d", 7003, "replica", "online"),
                    shard_node("g", 7006, "replica", "loading"),
                ],
            ),
            shard_entry(
                &[101, 199, 5461, 10922],
                vec![shard_node("b", 7001, "master", "online")],
            ),
            shard_entry(
                &[10923, 16383],
                vec![shard_node("c", 7002, "master", "online")],
            ),
            // A primary without slots yet.
            shard_entry(&[], vec![shard_node("e", 7004, "master", "online")]),
        ]);
        Topology::from_cluster_shards(&reply, "h").expect("valid")
    }

    #[test]
    fn parses_cluster_shards_and_epochs() {
        let mut t = three_shards("a");
        assert!(t.covers_all_slots());
        assert_eq!(t.shards().len(), 3);
        assert_eq!(
            t.primary_of_slot(150).map(|a| a.as_str()),
            Some("10.0.0.1:7001")
        );
        // The loading replica is left out.
        assert_eq!(t.shard_of_slot(0).map(|s| s.replicas.len()), Some(1));
        t.set_epochs(
            "a 10.0.0.1:7000@17000 myself,master - 0 0 3 connected 0-100 200-5460\n\
             b 10.0.0.1:7001@17001 master - 0 0 2 connected 101-199 5461-10922\n\
             c 10.0.0.1:7002@17002 master - 0 0 5 connected 10923-16383\n",
        );
        assert_eq!(t.max_epoch(), 5);
        assert_eq!(t.shard_of_slot(0).map(|s| s.epoch), Some(3));
    }

    #[test]
    fn a_view_with_an_older_owner_is_refused() {
        let mut current = three_shards("a");
        current.set_epochs("a x master - 0 0 7 connected\nb x master - 0 0 2 connected\n");
        // A stale node still thinks "z" (epoch 4) owns slot 0..: older than a's 7.
        let mut stale = three_shards("z");
        stale.set_epochs("z x master - 0 0 4 connected\nb x master - 0 0 2 connected\n");
        let mut stale_moved = stale.clone();
        stale_moved.shards[0].primary.addr = NodeAddr("10.9.9.9:1".into());
        assert_eq!(stale_moved.older_than(&current), Some(0));
        // The same owner, or a newer epoch, is fine.
        assert_eq!(current.older_than(&current), None);
        let mut newer = stale_moved.clone();
        newer.shards[0].epoch = 8;
        assert_eq!(newer.older_than(&current), None);
    }
}
