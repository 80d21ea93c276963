//! `cluster-config-file` (nodes.conf): what this node knows of the cluster, kept across
//! restarts.
//!
//! The format is Valkey's and Redis's: one line per node, as CLUSTER NODES prints it
//! (handshake nodes left out), then `vars currentEpoch <n> lastVoteEpoch <n>`. We write the
//! shard id as Valkey does, as an aux field after the hostname
//! (`ip:port@cport,<hostname>,shard-id=<id>`), and read files written by Redis 7.0 and
//! Valkey 8 too.
//!
//! A file that cannot be read whole is an error, never an empty state: a node that forgot
//! its id and epochs would rejoin as a stranger, or vote twice in one epoch.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use lagwise_shared::slot::SLOT_COUNT;

use super::render::{self, LineStyle};
use super::state::{ClusterNode, ClusterState, NodeFlags, NodeId};

/// Why a nodes.conf could not be loaded. Line numbers count from 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodesConfError {
    #[error("the file is empty")]
    Empty,
    #[error("the last line has no newline: the file was cut short")]
    Truncated,
    #[error("no `vars` line (every writer ends the file with one): the file was cut short")]
    NoVars,
    #[error("no node is flagged `myself`")]
    NoMyself,
    #[error("line {line}: {what}")]
    Line { line: usize, what: String },
}

/// The whole file: one line per node (handshake nodes left out), then the `vars` line.
/// Timestamps and link states are written as they are in the state.
pub fn render(state: &ClusterState) -> String {
    let ranges = render::owner_ranges(state);
    let mut out = String::new();
    for node in state.nodes.values().filter(|n| !n.flags.handshake) {
        let slots = ranges.get(node.id.as_str()).map_or(&[][..], Vec::as_slice);
        render::write_node_line(&mut out, state, node, slots, LineStyle::ConfigFile);
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "vars currentEpoch {} lastVoteEpoch {}",
        state.current_epoch, state.last_vote_epoch
    );
    out
}

/// Reads a file written by `render`, Redis 7.0 or Valkey 8.
///
/// Kept as written: every flag (`fail` and `fail?` included, as Redis keeps them), ping and
/// pong times, epochs. Not known from the file: links (all down), fail reports, fail times
/// (0), replication offsets (0), health (`Fail` until the caller computes it). Like Redis,
/// the current epoch is raised to the highest config epoch found.
///
/// Where Redis differs: it replaces a non-zero ping_sent / pong_received with the load time,
/// and sets fail_time to the load time for a node flagged `fail`.
pub fn parse(text: &str) -> Result<ClusterState, NodesConfError> {
    if text.is_empty() {
        return Err(NodesConfError::Empty);
    }
    if !text.ends_with('\n') {
        return Err(NodesConfError::Truncated);
    }
    let mut lines: Vec<(usize, NodeLine)> = Vec::new();
    let mut vars: Option<(u64, u64)> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let err = |what: String| NodesConfError::Line { line, what };
        let fields: Vec<&str> = raw.split_ascii_whitespace().collect();
        // Redis 7.0 pads with blank lines when a rewrite in place is cut short.
        let Some(&first) = fields.first() else {
            continue;
        };
        if first.eq_ignore_ascii_case("vars") {
            vars = Some(parse_vars(&fields[1..], vars.unwrap_or((0, 0))).map_err(err)?);
        } else {
            lines.push((line, parse_node_line(&fields).map_err(err)?));
        }
    }
    let (current_epoch, last_vote_epoch) = vars.ok_or(NodesConfError::NoVars)?;

    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut myself: Option<(usize, &str)> = None;
    for (line, l) in &lines {
        let id = l.node.id.as_str();
        if let Some(first) = seen.insert(id, *line) {
            return Err(NodesConfError::Line {
                line: *line,
                what: format!("node {id} is already on line {first}"),
            });
        }
        if l.node.flags.myself {
            if let Some((first, _)) = myself {
                return Err(NodesConfError::Line {
                    line: *line,
                    what: format!("a second node flagged myself (the first is on line {first})"),
                });
            }
            myself = Some((*line, id));
        }
    }
    let (_, my_id) = myself.ok_or(NodesConfError::NoMyself)?;
    let my_id = my_id.to_string();

    let mut nodes: BTreeMap<NodeId, ClusterNode> = BTreeMap::new();
    let mut claims: Vec<SlotClaim> = Vec::new();
    let mut migrating = BTreeMap::new();
    let mut importing = BTreeMap::new();
    for (line, l) in lines {
        // Redis reads open slots from whichever line has them (only ours does).
        migrating.extend(l.migrating);
        importing.extend(l.importing);
        claims.push((line, l.node.id.clone(), l.slots));
        nodes.insert(l.node.id.clone(), l.node);
    }
    let me = nodes.remove(&my_id).ok_or(NodesConfError::NoMyself)?;
    let mut state = ClusterState::new(me);
    state.nodes.extend(nodes);
    state.current_epoch = current_epoch;
    state.last_vote_epoch = last_vote_epoch;
    state.migrating = migrating;
    state.importing = importing;

    for (line, id, ranges) in claims {
        for (start, end) in ranges {
            for slot in start..=end {
                if let Some(other) = state.slot_owner[slot as usize].as_ref() {
                    return Err(NodesConfError::Line {
                        line,
                        what: format!("slot {slot} is claimed by {other} too"),
                    });
                }
                state.assign(slot, Some(&id));
            }
        }
    }

    // Files from before shard ids (Redis 7.0): a replica is in its primary's shard.
    let primary_shards: HashMap<NodeId, String> = state
        .nodes
        .values()
        .filter(|n| !n.shard_id.is_empty())
        .map(|n| (n.id.clone(), n.shard_id.clone()))
        .collect();
    for n in state.nodes.values_mut() {
        if n.shard_id.is_empty() && n.flags.replica {
            if let Some(shard) = n.primary_id.as_ref().and_then(|p| primary_shards.get(p)) {
                n.shard_id = shard.clone();
            }
        }
    }

    let max_config_epoch = state.nodes.values().map(|n| n.config_epoch).max();
    state.current_epoch = state.current_epoch.max(max_config_epoch.unwrap_or(0));
    Ok(state)
}

/// Writes the file atomically: a temp file in the same directory, fsync, rename over the
/// old one, fsync the directory (so the rename itself survives a crash).
#[cfg(test)]
pub fn save(path: &Path, state: &ClusterState) -> std::io::Result<()> {
    write_atomically(path, render(state).as_bytes())
}

/// Writes already rendered text the same way (so the caller need not hold the state's lock
/// through the fsync).
pub fn save_text(path: &Path, text: &str) -> std::io::Result<()> {
    write_atomically(path, text.as_bytes())
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    // Two saves in flight in one process must not share a temp file.
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} names no file", path.display()),
        )
    })?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        // Gone already if the rename happened; then this fails, harmlessly.
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A node line's slots: (line number, node, its ranges).
type SlotClaim = (usize, NodeId, Vec<(u16, u16)>);

/// One node line, parsed.
struct NodeLine {
    node: ClusterNode,
    slots: Vec<(u16, u16)>,
    migrating: Vec<(u16, NodeId)>,
    importing: Vec<(u16, NodeId)>,
}

/// `vars <name> <value> ...`: currentEpoch and lastVoteEpoch; others are skipped, as Redis
/// does.
fn parse_vars(
    pairs: &[&str],
    (mut current, mut last_vote): (u64, u64),
) -> Result<(u64, u64), String> {
    if !pairs.len().is_multiple_of(2) {
        return Err("`vars` has a name without a value".into());
    }
    for pair in pairs.chunks_exact(2) {
        let (name, value) = (pair[0], pair[1]);
        if name.eq_ignore_ascii_case("currentEpoch") {
            current = number(value, "currentEpoch")?;
        } else if name.eq_ignore_ascii_case("lastVoteEpoch") {
            last_vote = number(value, "lastVoteEpoch")?;
        }
    }
    Ok((current, last_vote))
}

/// `<id> <addr> <flags> <primary|-> <ping_sent> <pong_recv> <config_epoch> <link> <slot>...`
fn parse_node_line(f: &[&str]) -> Result<NodeLine, String> {
    if f.len() < 8 {
        return Err(format!(
            "{} fields where a node line has at least 8",
            f.len()
        ));
    }
    let id = node_id(f[0], "node id")?;
    let addr = parse_address(f[1])?;
    let mut node = ClusterNode::new(id, addr.ip, addr.port, addr.cport);
    node.hostname = addr.hostname;
    node.shard_id = addr.shard_id;
    node.flags = parse_flags(f[2])?;
    node.primary_id = match f[3] {
        "-" => None,
        p => Some(node_id(p, "primary id")?),
    };
    node.ping_sent = number(f[4], "ping_sent")?;
    node.pong_received = number(f[5], "pong_received")?;
    node.config_epoch = number(f[6], "config epoch")?;
    // The link state is not kept (links start down), but anything else is a garbled line.
    if f[7] != "connected" && f[7] != "disconnected" {
        return Err(format!(
            "link state `{}` is neither connected nor disconnected",
            f[7]
        ));
    }

    let mut line = NodeLine {
        node,
        slots: Vec::new(),
        migrating: Vec::new(),
        importing: Vec::new(),
    };
    for item in &f[8..] {
        if let Some(open) = item.strip_prefix('[') {
            let open = open
                .strip_suffix(']')
                .ok_or_else(|| format!("`{item}` has no closing `]`"))?;
            if let Some((slot, target)) = open.split_once("->-") {
                line.migrating
                    .push((slot_number(slot)?, node_id(target, "migration target")?));
            } else if let Some((slot, source)) = open.split_once("-<-") {
                line.importing
                    .push((slot_number(slot)?, node_id(source, "import source")?));
            } else {
                return Err(format!("`{item}` is neither [slot->-id] nor [slot-<-id]"));
            }
        } else if let Some((start, end)) = item.split_once('-') {
            let (start, end) = (slot_number(start)?, slot_number(end)?);
            if start > end {
                return Err(format!("slot range `{item}` ends before it starts"));
            }
            line.slots.push((start, end));
        } else {
            let slot = slot_number(item)?;
            line.slots.push((slot, slot));
        }
    }
    Ok(line)
}

struct Address {
    ip: String,
    port: u16,
    cport: u16,
    hostname: String,
    shard_id: String,
}

/// `ip:port[@cport][,hostname[,aux=value]...]`. The ip may be empty (a fresh Redis node
/// writes `:0@0`) or IPv6 (the port follows the last `:`). Without `@cport` the bus port is
/// port + 10000, as in old files. Aux fields (Redis 7.2+, Valkey): `shard-id` is kept,
/// `tcp-port` is the client port (the main one is then the TLS port), others are skipped.
fn parse_address(field: &str) -> Result<Address, String> {
    let mut parts = field.split(',');
    let main = parts.next().unwrap_or_default();
    let hostname = parts.next().unwrap_or_default().to_string();
    let (ip, ports) = main
        .rsplit_once(':')
        .ok_or_else(|| format!("address `{main}` has no `:port`"))?;
    let (port, cport) = match ports.split_once('@') {
        Some((p, c)) => (port_number(p, "port")?, port_number(c, "bus port")?),
        None => {
            let p = port_number(ports, "port")?;
            let c = p
                .checked_add(10000)
                .ok_or_else(|| format!("no bus port, and port {p} + 10000 is past 65535"))?;
            (p, c)
        }
    };
    let mut addr = Address {
        ip: ip.to_string(),
        port,
        cport,
        hostname,
        shard_id: String::new(),
    };
    for aux in parts {
        let (name, value) = aux
            .split_once('=')
            .filter(|(_, v)| !v.contains('='))
            .ok_or_else(|| format!("aux field `{aux}` is not name=value"))?;
        match name {
            "shard-id" => addr.shard_id = node_id(value, "shard-id")?,
            "tcp-port" => addr.port = port_number(value, "tcp-port")?,
            _ => {}
        }
    }
    Ok(addr)
}

/// Flags are matched without regard to case, as Redis does; Valkey's `primary` / `replica`
/// spellings are accepted too.
fn parse_flags(field: &str) -> Result<NodeFlags, String> {
    let mut flags = NodeFlags::default();
    for flag in field.split(',') {
        match flag.to_ascii_lowercase().as_str() {
            "myself" => flags.myself = true,
            "master" | "primary" => flags.primary = true,
            "slave" | "replica" => flags.replica = true,
            "fail?" => flags.pfail = true,
            "fail" => flags.fail = true,
            "handshake" => flags.handshake = true,
            "noaddr" => flags.noaddr = true,
            "nofailover" => flags.nofailover = true,
            "noflags" => {}
            _ => return Err(format!("unknown flag `{flag}`")),
        }
    }
    Ok(flags)
}

/// A node (or shard) id: 40 characters. Valkey accepts digits and lowercase letters
/// (`verifyClusterNodeId`); ids it makes are hex.
fn node_id(s: &str, what: &str) -> Result<NodeId, String> {
    if s.len() == 40
        && s.bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
    {
        Ok(s.to_string())
    } else {
        Err(format!("{what} `{s}` is not 40 lowercase hex characters"))
    }
}

fn slot_number(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(n) if (n as usize) < SLOT_COUNT => Ok(n),
        _ => Err(format!("`{s}` is not a slot (0..{})", SLOT_COUNT - 1)),
    }
}

fn port_number(s: &str, what: &str) -> Result<u16, String> {
    s.parse()
        .map_err(|_| format!("{what} `{s}` is not a number in 0..65535"))
}

fn number(s: &str, what: &str) -> Result<u64, String> {
    s.parse()
        .map_err(|_| format!("{what} `{s}` is not a non-negative integer"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::cluster::state::Health;

    const A: &str = "55bb57b3aee7b4d24ecd187081ab16a97aa5599f";
    const B: &str = "7b61c324494d58453369a503613fd7658ed0d420";
    const C: &str = "fccd00f46bfc4ab1a5736fa133c6a5de90927cef";
    const D: &str = "8b432751915734a016ef22d6af00d7187911e7e3";
    const E: &str = "5b6596adceca6999ea56431a8f33bae0c97c59a9";
    const F: &str = "5fa9d1dbe9f668e4b368ee4789d1f0a34bdccd72";

    /// nodes-23100.conf as redis-server 7.0.15 wrote it, with slots 100 and 101 migrating.
    const REDIS_7_0: &str = "\
8b432751915734a016ef22d6af00d7187911e7e3 127.0.0.1:23103@33103 slave fccd00f46bfc4ab1a5736fa133c6a5de90927cef 0 1795630205000 3 connected
5fa9d1dbe9f668e4b368ee4789d1f0a34bdccd72 127.0.0.1:23105@33105 slave 7b61c324494d58453369a503613fd7658ed0d420 0 1795630206129 2 connected
5b6596adceca6999ea56431a8f33bae0c97c59a9 127.0.0.1:23104@33104 slave 55bb57b3aee7b4d24ecd187081ab16a97aa5599f 0 1795630207133 1 connected
7b61c324494d58453369a503613fd7658ed0d420 127.0.0.1:23101@33101 master - 0 1795630204000 2 connected 5461-10922
fccd00f46bfc4ab1a5736fa133c6a5de90927cef 127.0.0.1:23102@33102 master - 0 1795630205126 3 connected 10923-16383
55bb57b3aee7b4d24ecd187081ab16a97aa5599f 127.0.0.1:23100@33100 myself,master - 0 1795630206000 1 connected 0-5460 [100->-7b61c324494d58453369a503613fd7658ed0d420] [101->-7b61c324494d58453369a503613fd7658ed0d420]
vars currentEpoch 6 lastVoteEpoch 0
";

    fn sorted_lines(text: &str) -> Vec<&str> {
        let mut v: Vec<&str> = text.lines().collect();
        v.sort();
        v
    }

    fn line_err(text: &str) -> (usize, String) {
        match parse(text) {
            Err(NodesConfError::Line { line, what }) => (line, what),
            other => panic!("expected a line error, got {other:?}"),
        }
    }

    #[test]
    fn parses_a_redis_7_0_file() {
        let st = parse(REDIS_7_0).unwrap();
        assert_eq!(st.myself, A);
        assert_eq!(st.nodes.len(), 6);
        assert_eq!((st.current_epoch, st.last_vote_epoch), (6, 0));
        let me = st.me();
        assert!(me.flags.myself && me.flags.primary && !me.flags.replica);
        assert_eq!(
            (me.ip.as_str(), me.port, me.cport),
            ("127.0.0.1", 23100, 33100)
        );
        assert_eq!(me.slots.ranges(), vec![(0, 5460)]);
        assert_eq!(st.owner(5461).unwrap().id, B);
        assert_eq!(st.owner(16383).unwrap().id, C);
        assert_eq!(st.migrating.get(&100).map(String::as_str), Some(B));
        assert_eq!(st.migrating.get(&101).map(String::as_str), Some(B));
        assert!(st.importing.is_empty());
        let d = &st.nodes[D];
        assert!(d.flags.replica && !d.flags.primary);
        assert_eq!(d.primary_id.as_deref(), Some(C));
        assert_eq!(
            (d.ping_sent, d.pong_received, d.config_epoch),
            (0, 1795630205000, 3)
        );
        assert!(st.nodes.values().all(|n| !n.link_connected));
        assert_eq!(st.replicas_of(A).len(), 1);
        assert_eq!(st.health, Health::Fail);
    }

    #[test]
    fn renders_a_redis_7_0_file_back_line_for_line() {
        // Same lines; ours come in id order where Redis's come in hash order.
        let mut st = parse(REDIS_7_0).unwrap();
        // Links are down after a load; Redis wrote its live links.
        st.nodes.values_mut().for_each(|n| n.link_connected = true);
        let text = render(&st);
        assert!(text.ends_with("\nvars currentEpoch 6 lastVoteEpoch 0\n"));
        assert_eq!(sorted_lines(&text), sorted_lines(REDIS_7_0));
    }

    /// A 3+3 cluster as node B sees it, with every feature the file records.
    fn rich_state() -> ClusterState {
        let shard = |c: char| c.to_string().repeat(40);
        let mut nodes = Vec::new();
        for (i, (id, port)) in [(A, 7000u16), (B, 7001), (C, 7002)].into_iter().enumerate() {
            let mut n = ClusterNode::new(id.into(), "10.0.0.1".into(), port, port + 10000);
            n.flags.primary = true;
            n.config_epoch = i as u64 + 1;
            n.shard_id = shard((b'a' + i as u8) as char);
            n.pong_received = 1_700_000_000_000 + i as u64;
            nodes.push(n);
        }
        for (i, (id, port, of)) in [(D, 7003u16, C), (E, 7004, A), (F, 7005, B)]
            .into_iter()
            .enumerate()
        {
            let mut n = ClusterNode::new(id.into(), "10.0.0.2".into(), port, 17999 - i as u16);
            n.flags.replica = true;
            n.primary_id = Some(of.into());
            n.config_epoch = nodes.iter().find(|p| p.id == of).unwrap().config_epoch;
            n.shard_id = nodes.iter().find(|p| p.id == of).unwrap().shard_id.clone();
            nodes.push(n);
        }
        nodes[0].hostname = "a.example".into();
        nodes[3].flags.fail = true;
        nodes[3].ping_sent = 1_700_000_000_500;
        nodes[4].flags.pfail = true;
        nodes[4].flags.nofailover = true;
        nodes[5].hostname = "f.example".into();
        nodes[5].shard_id = String::new(); // a replica whose shard id was never learned
        let pos = nodes.iter().position(|n| n.id == B).unwrap();
        let mut me = nodes.remove(pos);
        me.flags.myself = true;
        let mut st = ClusterState::new(me);
        for n in nodes {
            st.nodes.insert(n.id.clone(), n);
        }
        for s in 0..=5460 {
            st.assign(s, Some(A));
        }
        for s in 5461..=10922 {
            st.assign(s, Some(B));
        }
        for s in 10923..=16383 {
            st.assign(s, Some(C));
        }
        st.assign(42, Some(B)); // a lone slot: written as `42`
        st.assign(7000, None);
        st.migrating.insert(6000, A.into());
        st.importing.insert(100, A.into());
        st.importing.insert(12000, C.into());
        st.current_epoch = 9;
        st.last_vote_epoch = 7;
        st
    }

    #[test]
    fn render_then_parse_round_trips() {
        let st = rich_state();
        let text = render(&st);
        let back = parse(&text).unwrap();
        // Loading adds one thing: F, a replica without a shard id, joins its primary's shard.
        // Apart from F's line, the text is the same, and a second round changes nothing.
        let again = render(&back);
        let without_f = |t: &str| -> Vec<String> {
            t.lines()
                .filter(|l| !l.starts_with(F))
                .map(str::to_string)
                .collect()
        };
        assert_eq!(without_f(&again), without_f(&text));
        assert_eq!(render(&parse(&again).unwrap()), again);

        assert_eq!(back.myself, B);
        assert_eq!((back.current_epoch, back.last_vote_epoch), (9, 7));
        assert_eq!(back.migrating, st.migrating);
        assert_eq!(back.importing, st.importing);
        assert_eq!(back.slot_owner, st.slot_owner);
        for (id, n) in &st.nodes {
            let m = &back.nodes[id];
            assert_eq!((&m.ip, m.port, m.cport), (&n.ip, n.port, n.cport), "{id}");
            assert_eq!(m.hostname, n.hostname, "{id}");
            assert_eq!(m.flags, n.flags, "{id}");
            assert_eq!(m.primary_id, n.primary_id, "{id}");
            assert_eq!(m.config_epoch, n.config_epoch, "{id}");
            assert_eq!(
                (m.ping_sent, m.pong_received),
                (n.ping_sent, n.pong_received)
            );
            assert_eq!(m.slots, n.slots, "{id}");
            assert!(!m.link_connected);
        }
        // The replica without a shard id joins its primary's shard.
        assert_eq!(back.nodes[F].shard_id, back.nodes[B].shard_id);
        assert_eq!(back.nodes[A].shard_id, "a".repeat(40));

        let mine = text.lines().find(|l| l.starts_with(B)).unwrap();
        assert_eq!(
            mine,
            format!(
                "{B} 10.0.0.1:7001@17001,,shard-id={} myself,master - 0 1700000000001 2 connected \
                 42 5461-6999 7001-10922 [100-<-{A}] [6000->-{A}] [12000-<-{C}]",
                "b".repeat(40)
            )
        );
        let a = text.lines().find(|l| l.starts_with(A)).unwrap();
        assert!(a.starts_with(&format!("{A} 10.0.0.1:7000@17000,a.example,shard-id=")));
        let f = text.lines().find(|l| l.starts_with(F)).unwrap();
        assert!(f.starts_with(&format!("{F} 10.0.0.2:7005@17997,f.example slave ")));
    }

    #[test]
    fn handshake_nodes_are_not_written() {
        let mut st = rich_state();
        let mut hs = ClusterNode::new("1".repeat(40), "10.0.0.9".into(), 7009, 17009);
        hs.flags.handshake = true;
        st.nodes.insert(hs.id.clone(), hs);
        assert!(!render(&st).contains("handshake"));
    }

    #[test]
    fn parses_valkey_and_older_forms() {
        let sid = "0123456789abcdef0123456789abcdef01234567";
        let text = format!(
            "\
{A} 127.0.0.1:30001@40001,,tls-port=0,shard-id={sid} myself,primary - 0 0 1 connected 0-5460 5462
{B} ::1:30002@40002,b.example,nodename=bee,shard-id={sid} replica,nofailover {A} 0 1700000000000 1 connected
{C} 10.1.1.1:6379 noflags - 0 0 0 disconnected
{D} :0@0 master,fail?,fail,noaddr,handshake - 5 6 0 disconnected
{E} 10.1.1.2:7000@17000,,tls-port=7443,tcp-port=7001 slave {A} 0 0 1 connected

vars currentEpoch 3 lastVoteEpoch 2 someFutureVar 9
"
        );
        let st = parse(&text).unwrap();
        assert_eq!(st.myself, A);
        assert_eq!(st.me().shard_id, sid);
        assert_eq!(st.me().slots.ranges(), vec![(0, 5460), (5462, 5462)]);
        let b = &st.nodes[B];
        assert_eq!((b.ip.as_str(), b.port, b.cport), ("::1", 30002, 40002));
        assert_eq!(b.hostname, "b.example");
        assert!(b.flags.replica && b.flags.nofailover);
        let c = &st.nodes[C];
        assert_eq!((c.port, c.cport), (6379, 16379));
        assert_eq!(c.flags, NodeFlags::default());
        let d = &st.nodes[D];
        assert!(d.flags.pfail && d.flags.fail && d.flags.noaddr && d.flags.handshake);
        assert_eq!((d.ping_sent, d.pong_received), (5, 6));
        assert_eq!(st.nodes[E].port, 7001);
        assert_eq!(st.nodes[E].shard_id, sid); // from its primary
        assert_eq!((st.current_epoch, st.last_vote_epoch), (3, 2));
    }

    #[test]
    fn parses_a_fresh_redis_node() {
        // Written by redis-server 7.0.15 before it met anyone: no ip, no ports.
        let text = format!(
            "{A} :0@0 myself,master - 0 0 0 connected\nvars currentEpoch 0 lastVoteEpoch 0\n"
        );
        let st = parse(&text).unwrap();
        assert_eq!(
            (st.me().ip.as_str(), st.me().port, st.me().cport),
            ("", 0, 0)
        );
        assert!(st.me().slots.is_empty());
    }

    #[test]
    fn current_epoch_is_raised_to_the_highest_config_epoch() {
        let text = REDIS_7_0.replace("vars currentEpoch 6", "vars currentEpoch 1");
        assert_eq!(parse(&text).unwrap().current_epoch, 3);
    }

    #[test]
    fn refuses_empty_and_cut_files() {
        assert_eq!(parse("").unwrap_err(), NodesConfError::Empty);
        // Cut inside the vars line, and inside a node line.
        let cut = &REDIS_7_0[..REDIS_7_0.len() - 5];
        assert_eq!(parse(cut).unwrap_err(), NodesConfError::Truncated);
        let cut = &REDIS_7_0[..REDIS_7_0.find("5461-").unwrap() + 3];
        assert_eq!(parse(cut).unwrap_err(), NodesConfError::Truncated);
        // Cut at a line end: the vars line is gone.
        let cut = &REDIS_7_0[..REDIS_7_0.find("vars").unwrap()];
        assert_eq!(parse(cut).unwrap_err(), NodesConfError::NoVars);
        let no_me = REDIS_7_0.replace("myself,master", "master");
        assert_eq!(parse(&no_me).unwrap_err(), NodesConfError::NoMyself);
    }

    #[test]
    fn garbled_lines_name_the_line_and_the_fault() {
        let replace_on = |line: usize, from: &str, to: &str| {
            REDIS_7_0
                .lines()
                .enumerate()
                .map(|(i, l)| {
                    if i + 1 == line {
                        l.replacen(from, to, 1)
                    } else {
                        l.to_string()
                    }
                })
                .map(|l| l + "\n")
                .collect::<String>()
        };
        let cases = [
            (
                replace_on(2, " 0 1795630206129", " 0"),
                2,
                "fields where a node line has at least 8",
            ),
            (
                replace_on(1, "slave", "slave,bogus"),
                1,
                "unknown flag `bogus`",
            ),
            (
                replace_on(4, "5461-10922", "5461-16384"),
                4,
                "`16384` is not a slot",
            ),
            (
                replace_on(4, "5461-10922", "10922-5461"),
                4,
                "ends before it starts",
            ),
            (
                replace_on(4, "5461-10922", "0-10"),
                6,
                "slot 0 is claimed by 7b61c324494d58453369a503613fd7658ed0d420 too",
            ),
            (
                replace_on(3, "127.0.0.1:23104", "127.0.0.1"),
                3,
                "has no `:port`",
            ),
            (replace_on(3, "@33104", "@x"), 3, "bus port `x`"),
            (
                replace_on(1, " 0 1795630205000 3", " 0 17956x 3"),
                1,
                "pong_received `17956x`",
            ),
            (
                replace_on(1, "fccd00f46bfc", "FCCD00F46BFC"),
                1,
                "primary id",
            ),
            (
                replace_on(6, "[100->-", "[100>"),
                6,
                "neither [slot->-id] nor [slot-<-id]",
            ),
            (
                replace_on(
                    6,
                    "[101->-7b61c324494d58453369a503613fd7658ed0d420]",
                    "[101->-7b61]",
                ),
                6,
                "migration target `7b61`",
            ),
            (
                replace_on(1, " connected", " linked"),
                1,
                "link state `linked`",
            ),
            (
                replace_on(2, "127.0.0.1:23105@33105", "127.0.0.1:23105@33105,,junk"),
                2,
                "aux field `junk`",
            ),
            (
                replace_on(7, "lastVoteEpoch 0", "lastVoteEpoch"),
                7,
                "a name without a value",
            ),
            (
                replace_on(7, "currentEpoch 6", "currentEpoch -1"),
                7,
                "currentEpoch `-1`",
            ),
            (
                replace_on(2, "slave", "myself,slave"),
                6,
                "a second node flagged myself (the first is on line 2)",
            ),
        ];
        for (text, line, needle) in cases {
            let (got_line, what) = line_err(&text);
            assert!(
                got_line == line && what.contains(needle),
                "want line {line} with {needle:?}, got line {got_line}: {what}"
            );
        }
        let dup = format!("{}{}", REDIS_7_0.lines().next().unwrap(), "\n") + REDIS_7_0;
        let (line, what) = line_err(&dup);
        assert_eq!(line, 2);
        assert!(what.contains("already on line 1"), "{what}");
        let err = parse(&replace_on(1, "slave", "slave,bogus")).unwrap_err();
        assert_eq!(err.to_string(), "line 1: unknown flag `bogus`");
    }

    #[test]
    fn save_replaces_the_file_atomically() {
        let dir = std::env::temp_dir().join(format!(
            "lagwise-nodes-conf-{}-{}",
            std::process::id(),
            line!()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("nodes.conf");
        std::fs::write(&path, "old contents, much longer than ... ".repeat(100)).unwrap();
        let st = rich_state();
        save(&path, &st).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, render(&st));
        assert_eq!(parse(&text).unwrap().myself, B);
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(left.len(), 1, "temp files left: {left:?}");
        assert!(save(&dir.join("missing-dir").join("nodes.conf"), &st).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
