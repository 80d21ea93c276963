//! Cluster topology: which shard owns each hash slot, and each shard's primary and replicas.
//!
//! The proxy builds a `Topology` from `CLUSTER SLOTS` and publishes it as one immutable
//! snapshot; routing reads a slot's shard with one index. The replica-read work adds
//! replication offsets and lag beside these types, keyed by the same node addresses.

use std::collections::HashMap;

use redis_protocol::resp2::types::OwnedFrame;

use crate::slot::SLOT_COUNT;

/// A node as clients reach it: `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeAddr(pub String);

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
}

/// Why a topology reply was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    #[error("malformed CLUSTER SLOTS reply: {0}")]
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
        addr: NodeAddr(addr),
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
                    shards.push(Shard { primary, replicas });
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
            t.primary_of_slot(0).map(|a| a.0.as_str()),
            Some("127.0.0.1:7000")
        );
        assert_eq!(
            t.primary_of_slot(5461).map(|a| a.0.as_str()),
            Some("10.0.0.9:7001")
        );
        assert_eq!(t.shard_of_slot(100).map(|s| s.replicas.len()), Some(1));
        assert_eq!(t.primaries().count(), 3);
        let moved = t.with_moved(0, &NodeAddr("127.0.0.1:7002".into()));
        assert_eq!(
            moved.primary_of_slot(0).map(|a| a.0.as_str()),
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
}
