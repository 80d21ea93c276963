//! The CLUSTER NODES / SLOTS / SHARDS / INFO replies, as pure functions of the state.
//!
//! The formats are Redis 7.0's, byte for byte where tools parse them (`redis-cli --cluster`
//! parses NODES; cluster clients parse SLOTS and SHARDS), checked against redis-server
//! 7.0.15. Nodes come out in id order where Redis uses its hash table's order; no consumer
//! depends on that order.
//!
//! Replication offsets are read from the state. Redis reads its *own* offset live, so the
//! caller must keep `me().repl_offset` current for SLOTS (a replica at offset 0 is hidden)
//! and SHARDS (it would show as "loading").

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use super::state::{ClusterNode, ClusterState, Health, NodeFlags};

/// One CLUSTER SLOTS entry: a run of consecutive slots with the same owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotsEntry {
    pub start: u16,
    pub end: u16,
    /// The owner, then its available replicas: (ip, port, id).
    pub nodes: Vec<(String, u16, String)>,
    /// Each node's hostname, in step with `nodes` ("" when it has none). Redis 7.0 ends every
    /// node entry with a map (always present): empty, or `hostname => <name>` when the node
    /// announces one.
    pub hostnames: Vec<String>,
}

/// One CLUSTER SHARDS entry: a primary and its replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardEntry {
    /// The primary's slots as inclusive ranges; Redis replies with them flattened,
    /// `[start, end, start, end, ...]`, as integers.
    pub slots: Vec<(u16, u16)>,
    /// The primary first, then its replicas.
    pub nodes: Vec<ShardNode>,
}

/// One node of a CLUSTER SHARDS entry. Redis 7.0 writes the map in this order: id, port, ip,
/// endpoint, hostname (only when not empty), role, replication-offset, health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardNode {
    pub id: String,
    pub port: u16,
    pub ip: String,
    /// The preferred endpoint: the ip (Redis's default `cluster-preferred-endpoint-type ip`).
    pub endpoint: String,
    /// "" when the node announces none; then the `hostname` key is left out.
    pub hostname: String,
    /// "master" or "replica".
    pub role: &'static str,
    pub replication_offset: u64,
    /// "online", "fail" (flagged FAIL) or "loading" (a replica at offset 0). Redis 7.0 says
    /// "fail", not "failed".
    pub health: &'static str,
}

/// Bus message counters for CLUSTER INFO, by message type name ("ping", "pong", ...).
pub struct BusStats {
    pub sent: Vec<(&'static str, u64)>,
    pub received: Vec<(&'static str, u64)>,
}

/// Message type names in Redis's type-number order, which is the order CLUSTER INFO lists
/// them in.
pub const MESSAGE_TYPES: [&str; 11] = [
    "ping",
    "pong",
    "meet",
    "fail",
    "publish",
    "auth-req",
    "auth-ack",
    "update",
    "mfstart",
    "module",
    "publishshard",
];

/// CLUSTER NODES: one line per known node, each ending with "\n".
///
/// `<id> <ip>:<port>@<cport>[,<hostname>] <flags> <primary|-> <ping_sent> <pong_recv>
/// <config_epoch> <connected|disconnected> <slots...>`, and on our own line the open slots,
/// `[slot->-target]` (migrating) and `[slot-<-source]` (importing), in slot order.
///
/// Our own line shows ping_sent 0, and as pong_recv what Redis shows there: the last PONG
/// time peers gossiped about us, which gossip carries in whole seconds. We use `now_ms`
/// truncated to the second once we know another node, and 0 while alone (a fresh Redis node
/// prints `0 0`).
pub fn nodes(state: &ClusterState, now_ms: u64) -> String {
    let ranges = owner_ranges(state);
    let mut out = String::new();
    for node in state.nodes.values() {
        let slots = ranges.get(node.id.as_str()).map_or(&[][..], Vec::as_slice);
        write_node_line(&mut out, state, node, slots, LineStyle::Reply { now_ms });
        out.push('\n');
    }
    out
}

/// CLUSTER SLOTS: one entry per run of consecutive slots with the same owner, by start slot.
/// A replica is listed unless it is flagged FAIL or its replication offset is 0 (still
/// syncing), as Redis 7.0 does (`isReplicaAvailable`); PFAIL replicas stay listed.
pub fn slots(state: &ClusterState) -> Vec<SlotsEntry> {
    let mut out = Vec::new();
    for (start, end, id) in owner_runs(state) {
        let Some(owner) = state.nodes.get(id) else {
            continue;
        };
        let available = state
            .replicas_of(id)
            .into_iter()
            .filter(|r| !r.flags.fail && r.repl_offset != 0);
        let members: Vec<&ClusterNode> = std::iter::once(owner).chain(available).collect();
        out.push(SlotsEntry {
            start,
            end,
            nodes: members
                .iter()
                .map(|n| (n.ip.clone(), n.port, n.id.clone()))
                .collect(),
            hostnames: members.iter().map(|n| n.hostname.clone()).collect(),
        });
    }
    out
}

/// CLUSTER SHARDS: one entry per primary (those without slots too), with all its replicas,
/// failed ones included.
pub fn shards(state: &ClusterState) -> Vec<ShardEntry> {
    let ranges = owner_ranges(state);
    state
        .primaries()
        .map(|primary| ShardEntry {
            slots: ranges.get(primary.id.as_str()).cloned().unwrap_or_default(),
            nodes: std::iter::once(primary)
                .chain(state.replicas_of(&primary.id))
                .map(shard_node)
                .collect(),
        })
        .collect()
}

fn shard_node(n: &ClusterNode) -> ShardNode {
    let health = if n.flags.fail {
        "fail"
    } else if n.flags.replica && n.repl_offset == 0 {
        "loading"
    } else {
        "online"
    };
    ShardNode {
        id: n.id.clone(),
        port: n.port,
        ip: n.ip.clone(),
        endpoint: n.ip.clone(),
        hostname: n.hostname.clone(),
        role: if n.flags.replica { "replica" } else { "master" },
        replication_offset: n.repl_offset,
        health,
    }
}

/// CLUSTER INFO: Redis 7.0's fields in its order, each line ending with "\r\n".
///
/// Message counters are listed only when not zero, in Redis's type order (whatever order
/// `stats` has), each direction followed by its total. We keep no count of links that hit
/// their buffer limit, so `total_cluster_links_buffer_limit_exceeded` is 0.
pub fn info(state: &ClusterState, stats: &BusStats) -> String {
    let (mut assigned, mut ok, mut pfail, mut fail) = (0usize, 0usize, 0usize, 0usize);
    // Each node's slot set is what the slot table gives it.
    for n in state.nodes.values() {
        let held = n.slots.len();
        assigned += held;
        if n.flags.fail {
            fail += held;
        } else if n.flags.pfail {
            pfail += held;
        } else {
            ok += held;
        }
    }
    let me = state.me();
    // A replica reports its primary's epoch, as it does in CLUSTER NODES.
    let my_epoch = replica_epoch(state, me);
    let health = match state.health {
        Health::Ok => "ok",
        Health::Fail => "fail",
    };
    let mut out = String::new();
    let mut line = |name: &str, value: &dyn std::fmt::Display| {
        let _ = write!(out, "{name}:{value}\r\n");
    };
    line("cluster_state", &health);
    line("cluster_slots_assigned", &assigned);
    line("cluster_slots_ok", &ok);
    line("cluster_slots_pfail", &pfail);
    line("cluster_slots_fail", &fail);
    line("cluster_known_nodes", &state.nodes.len());
    line("cluster_size", &state.size());
    line("cluster_current_epoch", &state.current_epoch);
    line("cluster_my_epoch", &my_epoch);
    for (direction, counters) in [("sent", &stats.sent), ("received", &stats.received)] {
        let mut total = 0u64;
        for (name, count) in in_type_order(counters) {
            total += count;
            line(
                &format!("cluster_stats_messages_{name}_{direction}"),
                &count,
            );
        }
        line(&format!("cluster_stats_messages_{direction}"), &total);
    }
    line("total_cluster_links_buffer_limit_exceeded", &0);
    out
}

/// The non-zero counters, in Redis's type order; names it does not know go last.
fn in_type_order(counters: &[(&'static str, u64)]) -> Vec<(&'static str, u64)> {
    let rank = |name: &str| {
        MESSAGE_TYPES
            .iter()
            .position(|t| *t == name)
            .unwrap_or(MESSAGE_TYPES.len())
    };
    let mut v: Vec<_> = counters.iter().copied().filter(|&(_, c)| c > 0).collect();
    v.sort_by_key(|&(name, _)| rank(name));
    v
}

/// How a node line is written: as CLUSTER NODES replies, or into `nodes.conf`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LineStyle {
    Reply {
        now_ms: u64,
    },
    /// Adds the `shard-id=` aux field (Valkey's nodes.conf form) and writes every timestamp
    /// as stored.
    ConfigFile,
}

/// Writes one node's line, without the final "\n". `slots`: the node's owned ranges.
pub(super) fn write_node_line(
    out: &mut String,
    state: &ClusterState,
    node: &ClusterNode,
    slots: &[(u16, u16)],
    style: LineStyle,
) {
    let _ = write!(out, "{} {}:{}@{}", node.id, node.ip, node.port, node.cport);
    match style {
        LineStyle::ConfigFile if !node.shard_id.is_empty() => {
            // Valkey's form: the hostname field stays, empty or not, before the aux fields.
            let _ = write!(out, ",{},shard-id={}", node.hostname, node.shard_id);
        }
        _ if !node.hostname.is_empty() => {
            let _ = write!(out, ",{}", node.hostname);
        }
        _ => {}
    }
    out.push(' ');
    write_flags(out, &node.flags);
    out.push(' ');
    out.push_str(node.primary_id.as_deref().unwrap_or("-"));

    let (ping_sent, pong_received) = match style {
        LineStyle::Reply { now_ms } if node.flags.myself => {
            let others = state
                .nodes
                .values()
                .any(|n| !n.flags.myself && !n.flags.handshake);
            (0, if others { now_ms - now_ms % 1000 } else { 0 })
        }
        _ => (node.ping_sent, node.pong_received),
    };
    let link = if node.flags.myself || node.link_connected {
        "connected"
    } else {
        "disconnected"
    };
    let _ = write!(
        out,
        " {ping_sent} {pong_received} {} {link}",
        replica_epoch(state, node)
    );

    for &(start, end) in slots {
        if start == end {
            let _ = write!(out, " {start}");
        } else {
            let _ = write!(out, " {start}-{end}");
        }
    }
    if node.flags.myself {
        // One entry per slot in slot order; a slot both migrating and importing shows as
        // migrating, as in Redis.
        let mut open: BTreeMap<u16, (&str, &str)> = BTreeMap::new();
        for (&slot, id) in &state.importing {
            open.insert(slot, ("-<-", id));
        }
        for (&slot, id) in &state.migrating {
            open.insert(slot, ("->-", id));
        }
        for (slot, (arrow, id)) in open {
            let _ = write!(out, " [{slot}{arrow}{id}]");
        }
    }
}

/// Flags in Redis's order, comma-separated; "noflags" when none is set.
fn write_flags(out: &mut String, f: &NodeFlags) {
    let named = [
        (f.myself, "myself"),
        (f.primary, "master"),
        (f.replica, "slave"),
        (f.pfail, "fail?"),
        (f.fail, "fail"),
        (f.handshake, "handshake"),
        (f.noaddr, "noaddr"),
        (f.nofailover, "nofailover"),
    ];
    let mut first = true;
    for (_, name) in named.iter().filter(|(set, _)| *set) {
        if !first {
            out.push(',');
        }
        out.push_str(name);
        first = false;
    }
    if first {
        out.push_str("noflags");
    }
}

/// The config epoch Redis shows for a node: a replica's is its primary's (when known).
pub(crate) fn replica_epoch(state: &ClusterState, node: &ClusterNode) -> u64 {
    node.primary_id
        .as_ref()
        .filter(|_| node.flags.replica)
        .and_then(|id| state.nodes.get(id))
        .map_or(node.config_epoch, |p| p.config_epoch)
}

/// Runs of consecutive slots with the same owner, in slot order: (start, end, owner id).
/// Taken from the nodes' slot sets (which the slot table keeps in step), a word at a time:
/// the proxy asks for CLUSTER SHARDS and NODES often during a reshard.
fn owner_runs(state: &ClusterState) -> Vec<(u16, u16, &str)> {
    let mut runs: Vec<(u16, u16, &str)> = state
        .nodes
        .values()
        .flat_map(|n| {
            n.slots
                .ranges()
                .into_iter()
                .map(move |(start, end)| (start, end, n.id.as_str()))
        })
        .collect();
    runs.sort_unstable_by_key(|&(start, _, _)| start);
    runs
}

/// Each owner's slots as inclusive ranges, in slot order.
pub(super) fn owner_ranges(state: &ClusterState) -> HashMap<&str, Vec<(u16, u16)>> {
    state
        .nodes
        .values()
        .filter(|n| !n.slots.is_empty())
        .map(|n| (n.id.as_str(), n.slots.ranges()))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::cluster::state::ClusterNode;

    // The cluster captured from redis-server 7.0.15 (`redis-cli --cluster create` of
    // 127.0.0.1:23100..23105, --cluster-replicas 1).
    const A: &str = "55bb57b3aee7b4d24ecd187081ab16a97aa5599f"; // 23100, 0-5460
    const B: &str = "7b61c324494d58453369a503613fd7658ed0d420"; // 23101, 5461-10922
    const C: &str = "fccd00f46bfc4ab1a5736fa133c6a5de90927cef"; // 23102, 10923-16383
    const D: &str = "8b432751915734a016ef22d6af00d7187911e7e3"; // 23103, replica of C
    const E: &str = "5b6596adceca6999ea56431a8f33bae0c97c59a9"; // 23104, replica of A
    const F: &str = "5fa9d1dbe9f668e4b368ee4789d1f0a34bdccd72"; // 23105, replica of B

    fn node(id: &str, port: u16) -> ClusterNode {
        let mut n = ClusterNode::new(id.into(), "127.0.0.1".into(), port, port + 10000);
        n.link_connected = true;
        n.repl_offset = 42;
        n
    }

    fn primary(id: &str, port: u16, epoch: u64) -> ClusterNode {
        let mut n = node(id, port);
        n.flags.primary = true;
        n.config_epoch = epoch;
        n
    }

    fn replica(id: &str, port: u16, of: &str, own_epoch: u64) -> ClusterNode {
        let mut n = node(id, port);
        n.flags.replica = true;
        n.primary_id = Some(of.into());
        n.config_epoch = own_epoch;
        n
    }

    /// The captured cluster as seen by `me` (A or B are primaries, D a replica).
    fn cluster(me: &str) -> ClusterState {
        let mut nodes = vec![
            primary(A, 23100, 1),
            primary(B, 23101, 2),
            primary(C, 23102, 3),
            // Replicas keep their own epochs (4..6, from --cluster create); Redis shows the
            // primary's.
            replica(D, 23103, C, 4),
            replica(E, 23104, A, 5),
            replica(F, 23105, B, 6),
        ];
        let pos = nodes.iter().position(|n| n.id == me).unwrap();
        let mut myself = nodes.remove(pos);
        myself.flags.myself = true;
        myself.link_connected = false;
        let mut st = ClusterState::new(myself);
        for n in nodes {
            st.nodes.insert(n.id.clone(), n);
        }
        st.current_epoch = 6;
        for s in 0..=5460 {
            st.assign(s, Some(A));
        }
        for s in 5461..=10922 {
            st.assign(s, Some(B));
        }
        for s in 10923..=16383 {
            st.assign(s, Some(C));
        }
        st.health = Health::Ok;
        st
    }

    fn set_times(st: &mut ClusterState, id: &str, ping: u64, pong: u64) {
        let n = st.nodes.get_mut(id).unwrap();
        n.ping_sent = ping;
        n.pong_received = pong;
    }

    fn sorted_lines(text: &str) -> Vec<&str> {
        let mut v: Vec<&str> = text.lines().collect();
        v.sort();
        v
    }

    #[test]
    fn nodes_matches_redis_with_migrating_slots() {
        // Captured: `redis-cli -p 23100 cluster nodes` after
        // `CLUSTER SETSLOT 100 MIGRATING <B>` and `... 101 MIGRATING <B>` on 23100.
        let captured = "\
8b432751915734a016ef22d6af00d7187911e7e3 127.0.0.1:23103@33103 slave fccd00f46bfc4ab1a5736fa133c6a5de90927cef 0 1795630205000 3 connected
5fa9d1dbe9f668e4b368ee4789d1f0a34bdccd72 127.0.0.1:23105@33105 slave 7b61c324494d58453369a503613fd7658ed0d420 0 1795630206129 2 connected
5b6596adceca6999ea56431a8f33bae0c97c59a9 127.0.0.1:23104@33104 slave 55bb57b3aee7b4d24ecd187081ab16a97aa5599f 0 1795630207133 1 connected
7b61c324494d58453369a503613fd7658ed0d420 127.0.0.1:23101@33101 master - 0 1795630204000 2 connected 5461-10922
fccd00f46bfc4ab1a5736fa133c6a5de90927cef 127.0.0.1:23102@33102 master - 0 1795630205126 3 connected 10923-16383
55bb57b3aee7b4d24ecd187081ab16a97aa5599f 127.0.0.1:23100@33100 myself,master - 0 1795630206000 1 connected 0-5460 [100->-7b61c324494d58453369a503613fd7658ed0d420] [101->-7b61c324494d58453369a503613fd7658ed0d420]
";
        let mut st = cluster(A);
        set_times(&mut st, D, 0, 1795630205000);
        set_times(&mut st, F, 0, 1795630206129);
        set_times(&mut st, E, 0, 1795630207133);
        set_times(&mut st, B, 0, 1795630204000);
        set_times(&mut st, C, 0, 1795630205126);
        st.migrating.insert(100, B.into());
        st.migrating.insert(101, B.into());
        let text = nodes(&st, 1795630206789);
        assert!(text.ends_with('\n'));
        assert_eq!(sorted_lines(&text), sorted_lines(captured));
    }

    #[test]
    fn open_slots_are_listed_in_slot_order() {
        // Captured on 23101: importing 100 from A, migrating 6000 to A, importing 12000 from C.
        let captured = "7b61c324494d58453369a503613fd7658ed0d420 127.0.0.1:23101@33101 myself,master - 0 1795630287000 2 connected 5461-10922 [100-<-55bb57b3aee7b4d24ecd187081ab16a97aa5599f] [6000->-55bb57b3aee7b4d24ecd187081ab16a97aa5599f] [12000-<-fccd00f46bfc4ab1a5736fa133c6a5de90927cef]";
        let mut st = cluster(B);
        st.importing.insert(100, A.into());
        st.migrating.insert(6000, A.into());
        st.importing.insert(12000, C.into());
        let text = nodes(&st, 1795630287999);
        let mine = text.lines().find(|l| l.starts_with(B)).unwrap();
        assert_eq!(mine, captured);
    }

    #[test]
    fn nodes_hostname_failure_and_nofailover() {
        // Captured lines: a hostname set with cluster-announce-hostname, a replica with
        // cluster-replica-no-failover, a killed replica (fail?, then fail), a MEET to a dead port.
        let mut st = cluster(A);
        st.nodes.get_mut(C).unwrap().hostname = "node-c.example".into();
        set_times(&mut st, C, 0, 1795630284462);
        st.nodes.get_mut(E).unwrap().flags.nofailover = true;
        set_times(&mut st, E, 0, 1795630285468);
        let f = st.nodes.get_mut(F).unwrap();
        f.flags.pfail = true;
        f.link_connected = false;
        set_times(&mut st, F, 1795630296511, 1795630291491);
        let mut hs = ClusterNode::new(
            "3d7223ca9e69fc4f246ace2f76af63fb114baa1f".into(),
            "127.0.0.1".into(),
            23199,
            33199,
        );
        hs.flags.handshake = true;
        st.nodes.insert(hs.id.clone(), hs);

        let text = nodes(&st, 0);
        let line = |id: &str| {
            text.lines()
                .find(|l| l.starts_with(id))
                .unwrap()
                .to_string()
        };
        assert_eq!(line(C), "fccd00f46bfc4ab1a5736fa133c6a5de90927cef 127.0.0.1:23102@33102,node-c.example master - 0 1795630284462 3 connected 10923-16383");
        assert_eq!(line(E), "5b6596adceca6999ea56431a8f33bae0c97c59a9 127.0.0.1:23104@33104 slave,nofailover 55bb57b3aee7b4d24ecd187081ab16a97aa5599f 0 1795630285468 1 connected");
        assert_eq!(line(F), "5fa9d1dbe9f668e4b368ee4789d1f0a34bdccd72 127.0.0.1:23105@33105 slave,fail? 7b61c324494d58453369a503613fd7658ed0d420 1795630296511 1795630291491 2 disconnected");
        st.nodes.get_mut(F).unwrap().flags.pfail = false;
        st.nodes.get_mut(F).unwrap().flags.fail = true;
        let text = nodes(&st, 0);
        assert!(text.contains("5fa9d1dbe9f668e4b368ee4789d1f0a34bdccd72 127.0.0.1:23105@33105 slave,fail 7b61c324494d58453369a503613fd7658ed0d420 1795630296511 1795630291491 2 disconnected\n"));
        assert!(text.contains("3d7223ca9e69fc4f246ace2f76af63fb114baa1f 127.0.0.1:23199@33199 handshake - 0 0 0 disconnected\n"));
    }

    #[test]
    fn a_fresh_node_prints_zero_times_and_noflags() {
        // Captured from a fresh 7.0 node: `<id> :23107@23207 myself,master - 0 0 0 connected`.
        let mut me = ClusterNode::new(A.into(), String::new(), 23107, 23207);
        me.flags.myself = true;
        me.flags.primary = true;
        let mut st = ClusterState::new(me);
        assert_eq!(
            nodes(&st, 1795630206789),
            format!("{A} :23107@23207 myself,master - 0 0 0 connected\n")
        );
        let mut other = ClusterNode::new(B.into(), "10.0.0.1".into(), 7000, 17000);
        other.link_connected = true;
        st.nodes.insert(B.into(), other);
        st.assign(7, Some(B));
        let text = nodes(&st, 1795630206789);
        assert!(text.contains(&format!(
            "{B} 10.0.0.1:7000@17000 noflags - 0 0 0 connected 7\n"
        )));
        // Once it knows another node, our pong time is now, to the second.
        assert!(text.contains(" myself,master - 0 1795630206000 0 connected\n"));
    }

    #[test]
    fn slots_match_redis() {
        let st = cluster(A);
        let got = slots(&st);
        let entry = |start, end, members: &[(&str, u16)]| SlotsEntry {
            start,
            end,
            nodes: members
                .iter()
                .map(|(id, port)| ("127.0.0.1".to_string(), *port, id.to_string()))
                .collect(),
            hostnames: vec![String::new(); members.len()],
        };
        // Captured `cluster slots` (RESP2 and RESP3 alike, each node ends with an empty map).
        assert_eq!(
            got,
            vec![
                entry(0, 5460, &[(A, 23100), (E, 23104)]),
                entry(5461, 10922, &[(B, 23101), (F, 23105)]),
                entry(10923, 16383, &[(C, 23102), (D, 23103)]),
            ]
        );
    }

    #[test]
    fn slots_split_runs_and_hide_unavailable_replicas() {
        let mut st = cluster(A);
        // A's range is broken by two slots of B's and one unowned slot.
        st.assign(100, Some(B));
        st.assign(101, Some(B));
        st.assign(200, None);
        // Captured: a FAIL replica is dropped (`*3` entry); an unsynced one (offset 0) too.
        st.nodes.get_mut(F).unwrap().flags.fail = true;
        st.nodes.get_mut(D).unwrap().repl_offset = 0;
        st.nodes.get_mut(C).unwrap().hostname = "node-c.example".into();
        let got: Vec<(u16, u16, usize)> = slots(&st)
            .iter()
            .map(|e| (e.start, e.end, e.nodes.len()))
            .collect();
        assert_eq!(
            got,
            vec![
                (0, 99, 2),
                (100, 101, 1),
                (102, 199, 2),
                (201, 5460, 2),
                (5461, 10922, 1),
                (10923, 16383, 1),
            ]
        );
        let last = slots(&st).pop().unwrap();
        assert_eq!(last.hostnames, vec!["node-c.example".to_string()]);
        // PFAIL replicas stay.
        st.nodes.get_mut(F).unwrap().flags.fail = false;
        st.nodes.get_mut(F).unwrap().flags.pfail = true;
        assert_eq!(slots(&st)[4].nodes.len(), 2);
    }

    #[test]
    fn shards_match_redis() {
        let mut st = cluster(A);
        st.nodes.get_mut(C).unwrap().hostname = "node-c.example".into();
        st.nodes.get_mut(F).unwrap().flags.fail = true;
        st.nodes.get_mut(D).unwrap().repl_offset = 0;
        let got = shards(&st);
        assert_eq!(got.len(), 3);
        let a = got.iter().find(|s| s.nodes[0].id == A).unwrap();
        assert_eq!(a.slots, vec![(0, 5460)]);
        assert_eq!(
            a.nodes,
            vec![
                ShardNode {
                    id: A.into(),
                    port: 23100,
                    ip: "127.0.0.1".into(),
                    endpoint: "127.0.0.1".into(),
                    hostname: String::new(),
                    role: "master",
                    replication_offset: 42,
                    health: "online",
                },
                ShardNode {
                    id: E.into(),
                    port: 23104,
                    ip: "127.0.0.1".into(),
                    endpoint: "127.0.0.1".into(),
                    hostname: String::new(),
                    role: "replica",
                    replication_offset: 42,
                    health: "online",
                },
            ]
        );
        let b = got.iter().find(|s| s.nodes[0].id == B).unwrap();
        assert_eq!(b.nodes[1].id, F);
        assert_eq!(b.nodes[1].health, "fail");
        let c = got.iter().find(|s| s.nodes[0].id == C).unwrap();
        assert_eq!(c.nodes[0].hostname, "node-c.example");
        assert_eq!(c.nodes[1].health, "loading");
    }

    #[test]
    fn shards_list_a_primary_without_slots() {
        // Captured from a fresh node: one shard, `slots` empty, ip and endpoint "".
        let mut me = ClusterNode::new(A.into(), String::new(), 23107, 23207);
        me.flags.myself = true;
        me.flags.primary = true;
        let st = ClusterState::new(me);
        let got = shards(&st);
        assert_eq!(got.len(), 1);
        assert!(got[0].slots.is_empty());
        assert_eq!(got[0].nodes[0].endpoint, "");
        assert_eq!(got[0].nodes[0].health, "online");
        assert!(slots(&st).is_empty());
    }

    #[test]
    fn info_matches_redis() {
        // Captured `cluster info` from 23100, after a replica failed.
        let captured = "cluster_state:ok\r\ncluster_slots_assigned:16384\r\ncluster_slots_ok:16384\r\ncluster_slots_pfail:0\r\ncluster_slots_fail:0\r\ncluster_known_nodes:6\r\ncluster_size:3\r\ncluster_current_epoch:6\r\ncluster_my_epoch:1\r\ncluster_stats_messages_ping_sent:171\r\ncluster_stats_messages_pong_sent:182\r\ncluster_stats_messages_sent:353\r\ncluster_stats_messages_ping_received:177\r\ncluster_stats_messages_pong_received:170\r\ncluster_stats_messages_meet_received:5\r\ncluster_stats_messages_fail_received:1\r\ncluster_stats_messages_received:353\r\ntotal_cluster_links_buffer_limit_exceeded:0\r\n";
        let st = cluster(A);
        let stats = BusStats {
            sent: vec![("pong", 182), ("ping", 171), ("meet", 0)],
            // Out of Redis's order on purpose: `info` sorts them.
            received: vec![("fail", 1), ("ping", 177), ("pong", 170), ("meet", 5)],
        };
        assert_eq!(info(&st, &stats), captured);
    }

    #[test]
    fn info_counts_failing_slots_and_a_replicas_epoch() {
        let mut st = cluster(D);
        st.nodes.get_mut(B).unwrap().flags.pfail = true;
        st.nodes.get_mut(C).unwrap().flags.fail = true;
        st.assign(0, None);
        st.health = Health::Fail;
        let text = info(
            &st,
            &BusStats {
                sent: vec![],
                received: vec![],
            },
        );
        let field = |name: &str| {
            text.split("\r\n")
                .find_map(|l| l.strip_prefix(&format!("{name}:")))
                .unwrap()
                .to_string()
        };
        assert_eq!(field("cluster_state"), "fail");
        assert_eq!(field("cluster_slots_assigned"), "16383");
        assert_eq!(field("cluster_slots_ok"), "5460");
        assert_eq!(field("cluster_slots_pfail"), "5462");
        assert_eq!(field("cluster_slots_fail"), "5461");
        // Captured on replica 23103: `cluster_my_epoch:3`, its primary's.
        assert_eq!(field("cluster_my_epoch"), "3");
        assert_eq!(field("cluster_stats_messages_sent"), "0");
        assert_eq!(field("cluster_stats_messages_received"), "0");
    }
}
