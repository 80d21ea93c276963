//! End-to-end tests of cluster mode: 3 primaries × 1 replica of cluster-enabled nodes, formed
//! and administered with `redis-cli --cluster` and used by cluster-aware clients (the `redis`
//! crate's cluster client, redis-py's `RedisCluster`, `redis-benchmark --cluster`).
//!
//! The nodes are `lagwise-node` by default; `LAGWISE_CLUSTER_KIND=redis` runs the same tests
//! against redis-server 7.0, which is how the expectations here were checked. Exact replies
//! (redirections, errors) are what redis-server 7.0 sends.
//!
//! Every test starts its own cluster (see `lagwise_tests::cluster`). Nothing asserts how long
//! anything takes: every wait has a generous deadline and its failure message carries
//! `redis-cli --cluster check` output and each node's `CLUSTER NODES`.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lagwise_tests::cluster::{
    check_ok, key_slot, parse_cluster_nodes, query_node_int, query_node_string, redis_benchmark,
    run_captured, Cluster, ClusterConfig, CmdOutput, NodeInfo, SlotRange, CHECK_AGREE,
    CHECK_COVERED,
};
use lagwise_tests::wire::{bulk, bulks, cmd_str};
use lagwise_tests::{assert_reply, escape, info_field, RawConn};
use redis::cluster_async::ClusterConnection;

/// How long the cluster may take to settle after a change (gossip, replica sync).
const SETTLE: Duration = Duration::from_secs(90);
/// How long one `redis-cli --cluster` administration command may take.
const CLI_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a `redis-cli --cluster reshard`/`rebalance` may take.
const RESHARD_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a client program (redis-py, redis-benchmark) may take.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(180);
/// Read timeout for a subscriber waiting for a published message.
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// A 3 × 1 cluster of the kind chosen by `LAGWISE_CLUSTER_KIND`.
fn start_cluster() -> Cluster {
    let config = ClusterConfig::from_env();
    eprintln!("cluster nodes: {}", config.kind);
    Cluster::start(config, 3, 1)
}

/// Polls `attempt` every 100 ms until it returns `Ok` or `timeout` passes; then panics with
/// `what`, the last error and the cluster report.
fn wait_for<T>(
    cluster: &mut Cluster,
    what: &str,
    timeout: Duration,
    mut attempt: impl FnMut(&mut Cluster) -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match attempt(cluster) {
            Ok(v) => return v,
            Err(e) if Instant::now() >= deadline => panic!(
                "{what}: not reached within {timeout:?}; last: {e}\n{}",
                cluster.check_report()
            ),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Waits until `redis-cli --cluster check` is clean; panics with its output otherwise.
fn wait_check_ok(cluster: &mut Cluster, after: &str) -> CmdOutput {
    match cluster.wait_check_ok(SETTLE) {
        Ok(output) => output,
        Err(e) => panic!("after {after}: {e}\n{}", cluster.check_report()),
    }
}

/// Waits until every live node reports `cluster_state:ok` with the same slot map, then until
/// `redis-cli --cluster check` is clean.
fn settle(cluster: &mut Cluster, after: &str) {
    if let Err(e) = cluster.wait_stable(SETTLE) {
        panic!("after {after}: {e}\n{}", cluster.check_report());
    }
    wait_check_ok(cluster, after);
}

/// Panics with the output and the cluster report unless `output` is a success.
fn must_succeed(cluster: &mut Cluster, output: &CmdOutput, what: &str) {
    if !output.success() {
        panic!("{what} failed: {output}\n{}", cluster.check_report());
    }
}

/// `redis-cli --cluster <args>`, which must succeed.
fn cli_ok(cluster: &mut Cluster, args: &[&str], timeout: Duration) -> CmdOutput {
    let output = cluster.cli(args, timeout);
    must_succeed(
        cluster,
        &output,
        &format!("redis-cli --cluster {}", args.join(" ")),
    );
    output
}

/// `-MOVED <slot> <addr>\r\n`.
fn moved(slot: u16, addr: &str) -> Vec<u8> {
    format!("-MOVED {slot} {addr}\r\n").into_bytes()
}

/// `-ASK <slot> <addr>\r\n`.
fn ask(slot: u16, addr: &str) -> Vec<u8> {
    format!("-ASK {slot} {addr}\r\n").into_bytes()
}

const CROSSSLOT: &[u8] = b"-CROSSSLOT Keys in request don't hash to the same slot\r\n";
const TRYAGAIN: &[u8] = b"-TRYAGAIN Multiple keys request during rehashing of slot\r\n";

/// The tags `prefix0`, `prefix1`, ... whose slot (that of `{tag}`) is served by a primary
/// for which `wanted` holds.
fn tags_where<'a>(
    ranges: &'a [SlotRange],
    prefix: &'a str,
    wanted: impl Fn(&str) -> bool + 'a,
) -> impl Iterator<Item = String> + 'a {
    (0..100_000)
        .map(move |i| format!("{prefix}{i}"))
        .filter(move |tag| {
            let slot = key_slot(format!("{{{tag}}}").as_bytes());
            SlotRange::primary_of(ranges, slot).is_some_and(&wanted)
        })
}

/// The first of [`tags_where`].
fn tag_where(ranges: &[SlotRange], prefix: &str, wanted: impl Fn(&str) -> bool) -> String {
    tags_where(ranges, prefix, wanted)
        .next()
        .unwrap_or_else(|| panic!("no tag {prefix}N matches in {ranges:?}"))
}

/// A raw connection to `addr`.
fn raw(addr: &str) -> RawConn {
    RawConn::connect(addr)
}

/// The `CLUSTER NODES` of the node at `addr`.
fn nodes_of(addr: &str) -> Result<Vec<NodeInfo>, String> {
    query_node_string(addr, &["CLUSTER", "NODES"]).map(|t| parse_cluster_nodes(&t))
}

/// A node's place in the topology, as one node sees it: role, primary and slots.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Place {
    id: String,
    addr: String,
    primary: bool,
    primary_id: Option<String>,
    slots: Vec<(u16, u16)>,
}

/// The topology seen by the node at `addr`, sorted by id. Fails while any node is still in
/// handshake, has no address or is flagged failing.
fn topology(addr: &str) -> Result<Vec<Place>, String> {
    let nodes = nodes_of(addr)?;
    if let Some(n) = nodes
        .iter()
        .find(|n| n.is_failed() || n.flags.iter().any(|f| f == "handshake" || f == "noaddr"))
    {
        return Err(format!("{addr} sees {} as {:?}", n.addr, n.flags));
    }
    let mut places: Vec<Place> = nodes
        .into_iter()
        .map(|n| {
            let mut slots = n.slots.clone();
            slots.sort();
            Place {
                primary: n.is_primary(),
                id: n.id,
                addr: n.addr,
                primary_id: n.primary_id,
                slots,
            }
        })
        .collect();
    places.sort();
    Ok(places)
}

/// Every live node's topology, which must be the same everywhere.
fn agreed_topology(cluster: &mut Cluster) -> Result<Vec<Place>, String> {
    let mut seen: Option<(String, Vec<Place>)> = None;
    for addr in cluster.live_addrs() {
        let places = topology(&addr)?;
        match &seen {
            Some((first, s)) if *s != places => {
                return Err(format!("{first} sees {s:#?}\nbut {addr} sees {places:#?}"))
            }
            Some(_) => {}
            None => seen = Some((addr, places)),
        }
    }
    seen.map(|(_, p)| p)
        .ok_or_else(|| "no live node".to_string())
}

/// Runs one command through the cluster client.
async fn run<T: redis::FromRedisValue>(
    con: &mut ClusterConnection,
    args: &[&str],
) -> Result<T, String> {
    let mut c = redis::cmd(args[0]);
    for a in &args[1..] {
        c.arg(*a);
    }
    c.query_async::<T>(con)
        .await
        .map_err(|e| format!("{args:?}: {e}"))
}

/// Checks one reply of the workload, recording a mismatch or an error.
fn expect<T: PartialEq + std::fmt::Debug>(
    errors: &mut Vec<String>,
    what: &str,
    got: Result<T, String>,
    want: T,
) {
    match got {
        Ok(v) if v == want => {}
        Ok(v) => errors.push(format!("{what}: got {v:?}, expected {want:?}")),
        Err(e) => errors.push(e),
    }
}

/// A mixed workload over many slots through the cluster client: strings, counters, hashes,
/// lists, sets, and MSET/MGET within one hash tag. Returns the number of commands and every
/// error or wrong reply.
async fn mixed_workload(con: &mut ClusterConnection, prefix: &str, n: usize) -> (u64, Vec<String>) {
    let mut errors = Vec::new();
    let mut ops = 0;
    for i in 0..n {
        let s = format!("{prefix}:s:{i}");
        let v = format!("v{i}");
        expect(
            &mut errors,
            "SET",
            run::<String>(con, &["SET", &s, &v]).await,
            "OK".into(),
        );
        expect(
            &mut errors,
            "GET",
            run::<Option<String>>(con, &["GET", &s]).await,
            Some(v.clone()),
        );
        let c = format!("{prefix}:c:{i}");
        expect(&mut errors, "INCR", run::<i64>(con, &["INCR", &c]).await, 1);
        expect(&mut errors, "INCR", run::<i64>(con, &["INCR", &c]).await, 2);
        let h = format!("{prefix}:h:{i}");
        expect(
            &mut errors,
            "HSET",
            run::<i64>(con, &["HSET", &h, "f", &v, "g", "x"]).await,
            2,
        );
        expect(
            &mut errors,
            "HGET",
            run::<Option<String>>(con, &["HGET", &h, "f"]).await,
            Some(v.clone()),
        );
        let l = format!("{prefix}:l:{i}");
        expect(
            &mut errors,
            "LPUSH",
            run::<i64>(con, &["LPUSH", &l, "a", "b"]).await,
            2,
        );
        expect(
            &mut errors,
            "LRANGE",
            run::<Vec<String>>(con, &["LRANGE", &l, "0", "-1"]).await,
            vec!["b".to_string(), "a".to_string()],
        );
        let x = format!("{prefix}:x:{i}");
        expect(
            &mut errors,
            "SADD",
            run::<i64>(con, &["SADD", &x, "a", "b", "a"]).await,
            2,
        );
        expect(
            &mut errors,
            "SCARD",
            run::<i64>(con, &["SCARD", &x]).await,
            2,
        );
        let (a, b, missing) = (
            format!("{{{prefix}:t{i}}}a"),
            format!("{{{prefix}:t{i}}}b"),
            format!("{{{prefix}:t{i}}}c"),
        );
        expect(
            &mut errors,
            "MSET",
            run::<String>(con, &["MSET", &a, "1", &b, "2"]).await,
            "OK".into(),
        );
        expect(
            &mut errors,
            "MGET",
            run::<Vec<Option<String>>>(con, &["MGET", &a, &b, &missing]).await,
            vec![Some("1".to_string()), Some("2".to_string()), None],
        );
        ops += 12;
    }
    (ops, errors)
}

/// Runs a bounded helper program in the cluster's directory.
fn run_program(cluster: &Cluster, program: &str, args: &[&str], timeout: Duration) -> CmdOutput {
    let mut command = std::process::Command::new(program);
    command.args(args).current_dir(cluster.dir());
    let name = std::path::Path::new(program)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "program".into());
    run_captured(command, cluster.dir(), &name, timeout)
}

/// The primaries (sorted by first slot) and, for each, its replicas, per `CLUSTER NODES`.
fn shards(cluster: &mut Cluster) -> Vec<(NodeInfo, Vec<NodeInfo>)> {
    let nodes = cluster.cluster_nodes();
    let mut primaries: Vec<NodeInfo> = nodes
        .iter()
        .filter(|n| n.is_primary() && !n.slots.is_empty())
        .cloned()
        .collect();
    primaries.sort_by_key(|n| n.slots.iter().map(|s| s.0).min());
    primaries
        .into_iter()
        .map(|p| {
            let replicas = nodes
                .iter()
                .filter(|n| n.primary_id.as_deref() == Some(p.id.as_str()))
                .cloned()
                .collect();
            (p, replicas)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// 1. Forming a cluster
// ---------------------------------------------------------------------------------------

#[test]
fn create_and_check() {
    let config = ClusterConfig::from_env();
    eprintln!("cluster nodes: {}", config.kind);
    let mut cluster = Cluster::start_empty(config, 6);
    let ids: HashSet<String> = cluster.node_ids().into_iter().collect();
    assert_eq!(ids.len(), 6, "every node has its own id: {ids:?}");
    for id in &ids {
        assert!(
            id.len() == 40 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "a node id is 40 hex digits: {id:?}"
        );
    }

    let create = cluster.create(1);
    must_succeed(&mut cluster, &create, "redis-cli --cluster create");

    let check = wait_check_ok(&mut cluster, "create");
    let text = check.text();
    assert!(
        text.contains(CHECK_AGREE) && text.contains(CHECK_COVERED),
        "{check}"
    );

    for addr in cluster.seeds() {
        wait_for(
            &mut cluster,
            &format!("{addr} cluster_state:ok, 6 nodes, 3 shards"),
            SETTLE,
            |_| {
                let info = query_node_string(&addr, &["CLUSTER", "INFO"])?;
                let want = [
                    ("cluster_state", "ok"),
                    ("cluster_slots_assigned", "16384"),
                    ("cluster_slots_ok", "16384"),
                    ("cluster_known_nodes", "6"),
                    ("cluster_size", "3"),
                ];
                for (field, value) in want {
                    if info_field(&info, field).as_deref() != Some(value) {
                        return Err(format!("{addr}: {field} is not {value}:\n{info}"));
                    }
                }
                Ok(())
            },
        );
    }

    let shards = wait_for(
        &mut cluster,
        "3 primaries with one replica each",
        SETTLE,
        |c| {
            let shards = shards(c);
            if shards.len() == 3 && shards.iter().all(|(_, r)| r.len() == 1) {
                Ok(shards)
            } else {
                Err(format!("shards: {shards:#?}"))
            }
        },
    );
    let covered: usize = shards.iter().map(|(p, _)| p.slot_count()).sum();
    assert_eq!(covered, 16384, "{shards:#?}");
    for (primary, replicas) in &shards {
        let replica = &replicas[0];
        let want_port = primary.addr.rsplit(':').next().unwrap().to_string();
        wait_for(
            &mut cluster,
            &format!("replica {} linked to {}", replica.addr, primary.addr),
            SETTLE,
            |_| {
                let info = query_node_string(&replica.addr, &["INFO", "replication"])?;
                let ok = info_field(&info, "role").as_deref() == Some("slave")
                    && info_field(&info, "master_link_status").as_deref() == Some("up")
                    && info_field(&info, "master_port").as_deref() == Some(want_port.as_str());
                ok.then_some(()).ok_or(info)
            },
        );
        let info = query_node_string(&primary.addr, &["INFO", "replication"]).unwrap();
        assert_eq!(
            info_field(&info, "role").as_deref(),
            Some("master"),
            "{info}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// 2. Cluster-aware clients
// ---------------------------------------------------------------------------------------

const REDIS_PY_WORKLOAD: &str = r#"
import sys
try:
    import redis
    from redis.cluster import RedisCluster, ClusterNode
except ImportError as e:
    print(f"SKIP: cannot import redis-py's cluster client: {e}")
    sys.exit(3)

host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rc = RedisCluster(startup_nodes=[ClusterNode(host, port)], decode_responses=True,
                  socket_timeout=10, socket_connect_timeout=5)
errors, ops = [], 0

def check(what, got, want):
    if got != want:
        errors.append(f"{what}: got {got!r}, expected {want!r}")

for i in range(n):
    try:
        s, v = f"py:s:{i}", f"v{i}"
        check("SET", rc.set(s, v), True)
        check("GET", rc.get(s), v)
        check("INCR", rc.incr(f"py:c:{i}"), 1)
        check("INCR", rc.incr(f"py:c:{i}"), 2)
        check("HSET", rc.hset(f"py:h:{i}", mapping={"f": v, "g": "x"}), 2)
        check("HGET", rc.hget(f"py:h:{i}", "f"), v)
        check("LPUSH", rc.lpush(f"py:l:{i}", "a", "b"), 2)
        check("LRANGE", rc.lrange(f"py:l:{i}", 0, -1), ["b", "a"])
        check("SADD", rc.sadd(f"py:x:{i}", "a", "b", "a"), 2)
        check("SCARD", rc.scard(f"py:x:{i}"), 2)
        t = "{py:t%d}" % i
        check("MSET", rc.mset({t + "a": "1", t + "b": "2"}), True)
        check("MGET", rc.mget([t + "a", t + "b", t + "c"]), ["1", "2", None])
        ops += 12
    except Exception as e:
        errors.append(f"{i}: {e!r}")

print(f"redis-py {redis.__version__}: {ops} commands, {len(errors)} errors")
for e in errors[:20]:
    print(e)
sys.exit(1 if errors else 0)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_clients_work() {
    let mut cluster = start_cluster();
    // Every client runs even if an earlier one failed; the failures are reported together.
    let mut failures = Vec::new();

    // The redis crate's cluster client.
    let mut con = cluster.async_connection().await;
    let (ops, errors) = mixed_workload(&mut con, "rs", 400).await;
    if !errors.is_empty() {
        failures.push(format!(
            "redis crate cluster client: {} of {ops} commands failed or were wrong; first: {:#?}",
            errors.len(),
            &errors[..errors.len().min(20)],
        ));
    }
    // The keys are spread over every shard.
    for (primary, _) in shards(&mut cluster) {
        match query_node_int(&primary.addr, &["DBSIZE"]) {
            Ok(keys) if keys > 0 => {}
            other => failures.push(format!(
                "primary {} after the workload: DBSIZE {other:?}",
                primary.addr
            )),
        }
    }

    // redis-py's RedisCluster.
    let entry = cluster.seeds()[0].clone();
    let (host, port) = entry.rsplit_once(':').unwrap();
    let script = cluster.dir().join("redis_py_workload.py");
    std::fs::write(&script, REDIS_PY_WORKLOAD).unwrap();
    let script = script.to_string_lossy().into_owned();
    let py = run_program(
        &cluster,
        "python3",
        &[&script, host, port, "300"],
        CLIENT_TIMEOUT,
    );
    match py.status.and_then(|s| s.code()) {
        Some(3) => eprintln!("NOTE: redis-py part skipped: {}", py.stdout.trim()),
        _ if py.success() => eprintln!("{}", py.stdout.trim()),
        _ => failures.push(format!("redis-py RedisCluster workload failed: {py}")),
    }

    // redis-benchmark in cluster mode.
    let benchmark = redis_benchmark();
    let bench = run_program(
        &cluster,
        &benchmark.to_string_lossy(),
        &[
            "-h",
            host,
            "-p",
            port,
            "--cluster",
            "-t",
            "set,get",
            "-n",
            "20000",
            "-P",
            "16",
            "-c",
            "20",
            "-q",
        ],
        CLIENT_TIMEOUT,
    );
    let text = bench.text();
    for line in text
        .split(['\r', '\n'])
        .filter(|l| l.contains("requests per second"))
    {
        eprintln!("redis-benchmark --cluster: {line}");
    }
    let complete = ["SET: ", "GET: "].iter().all(|t| text.contains(t));
    if !bench.success() || !complete || text.contains("Error") || text.contains("ERR") {
        failures.push(format!(
            "redis-benchmark --cluster failed, printed no SET or GET result, or saw errors: {bench}"
        ));
    }

    if !failures.is_empty() {
        panic!("{}\n{}", failures.join("\n\n"), cluster.check_report());
    }
    wait_check_ok(&mut cluster, "the client workloads");
}

// ---------------------------------------------------------------------------------------
// 3. Redirections and the key-slot commands
// ---------------------------------------------------------------------------------------

#[test]
fn redirections() {
    let mut cluster = start_cluster();
    let ranges = cluster.slots();
    let primary = ranges[0].primary.clone();
    let replica = cluster.replicas_of(&primary)[0].clone();
    let mut on_primary = raw(&primary);

    // A key of another primary's slot: MOVED to its owner.
    let other_tag = tag_where(&ranges, "o", |p| p != primary);
    let other_key = format!("{{{other_tag}}}k");
    let other_slot = key_slot(other_key.as_bytes());
    let other_owner = SlotRange::primary_of(&ranges, other_slot)
        .unwrap()
        .to_string();
    assert_reply!(
        cmd_str(&mut on_primary, &["GET", &other_key]),
        moved(other_slot, &other_owner)
    );
    assert_reply!(
        cmd_str(&mut on_primary, &["SET", &other_key, "x"]),
        moved(other_slot, &other_owner)
    );

    // Keys of different slots in one command: CROSSSLOT, both when this node serves every
    // slot involved and when it serves none of them.
    let local_a = format!("{{{}}}a", tag_where(&ranges, "la", |p| p == primary));
    let local_b = tags_where(&ranges, "lb", |p| p == primary)
        .map(|tag| format!("{{{tag}}}b"))
        .find(|k| key_slot(k.as_bytes()) != key_slot(local_a.as_bytes()))
        .unwrap();
    assert_reply!(
        cmd_str(&mut on_primary, &["MSET", &local_a, "1", &local_b, "2"]),
        CROSSSLOT
    );
    assert_reply!(
        cmd_str(&mut on_primary, &["MGET", &local_a, &local_b]),
        CROSSSLOT
    );
    assert_reply!(
        cmd_str(&mut on_primary, &["DEL", &local_a, &other_key]),
        CROSSSLOT
    );
    let other_b = tags_where(&ranges, "ob", |p| p == other_owner)
        .map(|tag| format!("{{{tag}}}z"))
        .find(|k| key_slot(k.as_bytes()) != other_slot)
        .unwrap();
    assert_reply!(
        cmd_str(&mut on_primary, &["MGET", &other_key, &other_b]),
        CROSSSLOT
    );

    // CLUSTER KEYSLOT, COUNTKEYSINSLOT, GETKEYSINSLOT.
    assert_reply!(
        cmd_str(&mut on_primary, &["CLUSTER", "KEYSLOT", "foo"]),
        b":12182\r\n"
    );
    assert_reply!(
        cmd_str(
            &mut on_primary,
            &["CLUSTER", "KEYSLOT", "{user1000}.following"]
        ),
        format!(":{}\r\n", key_slot(b"user1000"))
    );
    let tag = tag_where(&ranges, "t", |p| p == primary);
    let slot = key_slot(format!("{{{tag}}}").as_bytes());
    let keys: Vec<String> = (1..=3).map(|i| format!("{{{tag}}}{i}")).collect();
    assert_reply!(
        cmd_str(
            &mut on_primary,
            &["CLUSTER", "COUNTKEYSINSLOT", &slot.to_string()]
        ),
        b":0\r\n"
    );
    for k in &keys {
        assert_reply!(cmd_str(&mut on_primary, &["SET", k, "v"]), b"+OK\r\n");
    }
    assert_reply!(
        cmd_str(
            &mut on_primary,
            &["CLUSTER", "COUNTKEYSINSLOT", &slot.to_string()]
        ),
        b":3\r\n"
    );
    let listed = lagwise_tests::parse_reply(&cmd_str(
        &mut on_primary,
        &["CLUSTER", "GETKEYSINSLOT", &slot.to_string(), "10"],
    ));
    let mut listed: Vec<String> = redis::from_redis_value(listed).unwrap();
    listed.sort();
    assert_eq!(listed, keys, "CLUSTER GETKEYSINSLOT {slot} 10");
    let two = lagwise_tests::parse_reply(&cmd_str(
        &mut on_primary,
        &["CLUSTER", "GETKEYSINSLOT", &slot.to_string(), "2"],
    ));
    let two: Vec<String> = redis::from_redis_value(two).unwrap();
    assert_eq!(two.len(), 2, "CLUSTER GETKEYSINSLOT {slot} 2: {two:?}");
    assert!(two.iter().all(|k| keys.contains(k)), "{two:?}");

    // Only database 0 exists.
    assert_reply!(
        cmd_str(&mut on_primary, &["SELECT", "1"]),
        b"-ERR SELECT is not allowed in cluster mode\r\n"
    );
    assert_reply!(cmd_str(&mut on_primary, &["SELECT", "0"]), b"+OK\r\n");

    // A replica redirects to its primary unless the connection is READONLY, and then only
    // for reads.
    let key = &keys[0];
    assert_reply!(cmd_str(&mut on_primary, &["SET", key, "hello"]), b"+OK\r\n");
    let mut on_replica = raw(&replica);
    assert_reply!(
        cmd_str(&mut on_replica, &["GET", key]),
        moved(slot, &primary)
    );
    assert_reply!(cmd_str(&mut on_replica, &["READONLY"]), b"+OK\r\n");
    wait_for(
        &mut cluster,
        &format!("replica {replica} serving {key} after READONLY"),
        SETTLE,
        |_| {
            let reply = cmd_str(&mut on_replica, &["GET", key]);
            (reply == bulk("hello"))
                .then_some(())
                .ok_or_else(|| escape(&reply))
        },
    );
    assert_reply!(
        cmd_str(&mut on_replica, &["SET", key, "x"]),
        moved(slot, &primary)
    );
    // A read of another shard's slot still goes to that shard's primary.
    assert_reply!(
        cmd_str(&mut on_replica, &["GET", &other_key]),
        moved(other_slot, &other_owner)
    );
    assert_reply!(cmd_str(&mut on_replica, &["READWRITE"]), b"+OK\r\n");
    assert_reply!(
        cmd_str(&mut on_replica, &["GET", key]),
        moved(slot, &primary)
    );

    // In a transaction on a READONLY replica, the queued write is refused with MOVED, which
    // flags the transaction: EXEC aborts it.
    assert_reply!(cmd_str(&mut on_replica, &["READONLY"]), b"+OK\r\n");
    assert_reply!(cmd_str(&mut on_replica, &["MULTI"]), b"+OK\r\n");
    assert_reply!(cmd_str(&mut on_replica, &["GET", key]), b"+QUEUED\r\n");
    assert_reply!(
        cmd_str(&mut on_replica, &["SET", key, "v2"]),
        moved(slot, &primary)
    );
    assert_reply!(
        cmd_str(&mut on_replica, &["EXEC"]),
        b"-EXECABORT Transaction discarded because of previous errors.\r\n"
    );
    assert_reply!(cmd_str(&mut on_replica, &["GET", key]), bulk("hello"));
    // A read-only transaction is served.
    assert_reply!(cmd_str(&mut on_replica, &["MULTI"]), b"+OK\r\n");
    assert_reply!(cmd_str(&mut on_replica, &["GET", key]), b"+QUEUED\r\n");
    assert_reply!(cmd_str(&mut on_replica, &["EXEC"]), bulks(&["hello"]));
    assert_reply!(cmd_str(&mut on_primary, &["GET", key]), bulk("hello"));
}

// ---------------------------------------------------------------------------------------
// 4. Manual slot migration: ASK, ASKING, TRYAGAIN
// ---------------------------------------------------------------------------------------

#[test]
fn migration_ask_and_asking() {
    let mut cluster = start_cluster();
    let ranges = cluster.slots();
    let source = ranges[0].primary.clone();
    let target = ranges
        .iter()
        .find(|r| r.primary != source)
        .unwrap()
        .primary
        .clone();
    let third = ranges
        .iter()
        .find(|r| r.primary != source && r.primary != target)
        .unwrap()
        .primary
        .clone();
    let (source_id, target_id) = (cluster.id_of(&source), cluster.id_of(&target));
    let target_port = cluster.node(&target).port().to_string();
    let tag = tag_where(&ranges, "m", |p| p == source);
    let slot = key_slot(format!("{{{tag}}}").as_bytes());
    let s = slot.to_string();
    let (k1, k2, fresh) = (
        format!("{{{tag}}}k1"),
        format!("{{{tag}}}k2"),
        format!("{{{tag}}}new"),
    );

    let mut src = raw(&source);
    let mut dst = raw(&target);
    assert_reply!(cmd_str(&mut src, &["SET", &k1, "v1"]), b"+OK\r\n");
    assert_reply!(cmd_str(&mut src, &["SET", &k2, "v2"]), b"+OK\r\n");

    assert_reply!(
        cmd_str(
            &mut dst,
            &["CLUSTER", "SETSLOT", &s, "IMPORTING", &source_id]
        ),
        b"+OK\r\n"
    );
    assert_reply!(
        cmd_str(
            &mut src,
            &["CLUSTER", "SETSLOT", &s, "MIGRATING", &target_id]
        ),
        b"+OK\r\n"
    );
    assert_reply!(
        cmd_str(
            &mut src,
            &[
                "MIGRATE",
                "127.0.0.1",
                &target_port,
                "",
                "0",
                "5000",
                "KEYS",
                &k1
            ]
        ),
        b"+OK\r\n"
    );

    // The source: a key already moved (or one that does not exist) → ASK the target; a key
    // still here is served; a multi-key command over both → TRYAGAIN.
    assert_reply!(cmd_str(&mut src, &["GET", &k1]), ask(slot, &target));
    assert_reply!(cmd_str(&mut src, &["GET", &k2]), bulk("v2"));
    assert_reply!(cmd_str(&mut src, &["SET", &fresh, "x"]), ask(slot, &target));
    assert_reply!(cmd_str(&mut src, &["MGET", &k1, &k2]), TRYAGAIN);

    // The target: without ASKING it still redirects to the owner; ASKING is good for one
    // command only.
    assert_reply!(cmd_str(&mut dst, &["GET", &k1]), moved(slot, &source));
    assert_reply!(cmd_str(&mut dst, &["ASKING"]), b"+OK\r\n");
    assert_reply!(cmd_str(&mut dst, &["GET", &k1]), bulk("v1"));
    assert_reply!(cmd_str(&mut dst, &["GET", &k1]), moved(slot, &source));
    assert_reply!(cmd_str(&mut dst, &["ASKING"]), b"+OK\r\n");
    assert_reply!(cmd_str(&mut dst, &["MGET", &k1, &k2]), TRYAGAIN);
    assert_reply!(cmd_str(&mut dst, &["ASKING"]), b"+OK\r\n");
    assert_reply!(cmd_str(&mut dst, &["MGET", &k1]), bulks(&["v1"]));
    // Other nodes still send clients to the owner.
    assert_reply!(
        cmd_str(&mut raw(&third), &["GET", &k1]),
        moved(slot, &source)
    );

    // Finish: move the last key, give the slot to the target on both sides.
    assert_reply!(
        cmd_str(
            &mut src,
            &[
                "MIGRATE",
                "127.0.0.1",
                &target_port,
                "",
                "0",
                "5000",
                "KEYS",
                &k2
            ]
        ),
        b"+OK\r\n"
    );
    assert_reply!(
        cmd_str(&mut src, &["CLUSTER", "COUNTKEYSINSLOT", &s]),
        b":0\r\n"
    );
    assert_reply!(
        cmd_str(&mut dst, &["CLUSTER", "SETSLOT", &s, "NODE", &target_id]),
        b"+OK\r\n"
    );
    assert_reply!(
        cmd_str(&mut src, &["CLUSTER", "SETSLOT", &s, "NODE", &target_id]),
        b"+OK\r\n"
    );
    assert_reply!(cmd_str(&mut src, &["GET", &k1]), moved(slot, &target));
    assert_reply!(cmd_str(&mut dst, &["GET", &k1]), bulk("v1"));
    assert_reply!(cmd_str(&mut dst, &["GET", &k2]), bulk("v2"));
    assert_reply!(
        cmd_str(&mut dst, &["CLUSTER", "COUNTKEYSINSLOT", &s]),
        b":2\r\n"
    );

    // Every other node learns the new owner.
    for addr in cluster.seeds() {
        if addr == target {
            continue;
        }
        wait_for(
            &mut cluster,
            &format!("{addr} redirecting slot {slot} to {target}"),
            SETTLE,
            |_| {
                let reply = cmd_str(&mut raw(&addr), &["GET", &k1]);
                (reply == moved(slot, &target))
                    .then_some(())
                    .ok_or_else(|| escape(&reply))
            },
        );
    }
    wait_check_ok(&mut cluster, "the migration of one slot");
    cluster.wait_stable(SETTLE).unwrap();
}

// ---------------------------------------------------------------------------------------
// 5. Resharding under client traffic
// ---------------------------------------------------------------------------------------

/// What one writer of [`reshard_under_traffic`] did.
#[derive(Default)]
struct WriterReport {
    /// Last acknowledged value per key.
    last: HashMap<String, u64>,
    /// Acknowledged INCRs per counter.
    incrs: HashMap<String, u64>,
    errors: Vec<String>,
    commands: u64,
}

/// Rounds of `SET key <round>`, `GET key` (must read it back) and `INCR counter` over `keys`
/// until `stop`.
async fn writer(
    mut con: ClusterConnection,
    keys: Vec<String>,
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicU64>,
) -> WriterReport {
    // `rounds` counts the rounds this writer completed.
    let mut report = WriterReport::default();
    let mut round: u64 = 0;
    'rounds: loop {
        round += 1;
        for key in &keys {
            if stop.load(Ordering::Relaxed) {
                break 'rounds;
            }
            let value = round.to_string();
            report.commands += 3;
            match run::<String>(&mut con, &["SET", key, &value]).await {
                Ok(_) => {
                    report.last.insert(key.clone(), round);
                }
                Err(e) => {
                    report.errors.push(e);
                    continue;
                }
            }
            match run::<Option<String>>(&mut con, &["GET", key]).await {
                Ok(Some(v)) if v == value => {}
                other => report
                    .errors
                    .push(format!("GET {key} after SET {value}: {other:?}")),
            }
            let counter = format!("{key}:n");
            match run::<i64>(&mut con, &["INCR", &counter]).await {
                Ok(_) => *report.incrs.entry(counter).or_default() += 1,
                Err(e) => report.errors.push(e),
            }
        }
        rounds.fetch_add(1, Ordering::Relaxed);
    }
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reshard_under_traffic() {
    const WRITERS: usize = 4;
    const SLOTS_MOVED: usize = 1000;
    let mut cluster = start_cluster();
    let ranges = cluster.slots();
    let source = ranges[0].primary.clone();
    let target = ranges
        .iter()
        .find(|r| r.primary != source)
        .unwrap()
        .primary
        .clone();
    let (source_id, target_id) = (cluster.id_of(&source), cluster.id_of(&target));

    // Half the keys in the source's first slots (which redis-cli moves first), half anywhere.
    let first_source_slots = ranges[0].start..ranges[0].start + SLOTS_MOVED as u16;
    let mut keys: Vec<String> = (0..)
        .map(|i| format!("rt:{i}"))
        .filter(|k| first_source_slots.contains(&key_slot(k.as_bytes())))
        .take(400)
        .collect();
    keys.extend((0..400).map(|i| format!("any:{i}")));

    let con = cluster.async_connection().await;
    let stop = Arc::new(AtomicBool::new(false));
    let rounds: Vec<Arc<AtomicU64>> = (0..WRITERS).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let mine: Vec<String> = keys.iter().skip(w).step_by(WRITERS).cloned().collect();
            tokio::spawn(writer(con.clone(), mine, stop.clone(), rounds[w].clone()))
        })
        .collect();
    let completed = || -> Vec<u64> { rounds.iter().map(|r| r.load(Ordering::Relaxed)).collect() };
    // Waits until writer `w` has completed `at_least[w]` rounds.
    let wait_rounds = |at_least: &[u64], what: &str| {
        let deadline = Instant::now() + SETTLE;
        while completed()
            .iter()
            .zip(at_least)
            .any(|(done, want)| done < want)
        {
            assert!(
                Instant::now() < deadline,
                "the writers did not finish {what} within {SETTLE:?}: {:?} of {at_least:?}",
                completed()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };

    // Traffic first, then the reshard while it runs.
    tokio::task::block_in_place(|| wait_rounds(&[1; WRITERS], "a first round"));
    let before = cluster.cluster_nodes();
    let rounds_at_start = completed();
    let count = SLOTS_MOVED.to_string();
    let output = tokio::task::block_in_place(|| {
        cluster.cli(
            &[
                "reshard",
                &source,
                "--cluster-from",
                &source_id,
                "--cluster-to",
                &target_id,
                "--cluster-slots",
                &count,
                "--cluster-yes",
            ],
            RESHARD_TIMEOUT,
        )
    });
    let rounds_at_end = completed();
    if !output.success() {
        stop.store(true, Ordering::Relaxed);
        panic!(
            "reshard under traffic failed: {output}\n{}",
            cluster.check_report()
        );
    }
    tokio::task::block_in_place(|| {
        wait_check_ok(&mut cluster, "the reshard");
        // At least one full round of every writer after the reshard.
        let want: Vec<u64> = rounds_at_end.iter().map(|r| r + 2).collect();
        wait_rounds(&want, "a full round after the reshard");
    });
    stop.store(true, Ordering::Relaxed);
    let mut last = HashMap::new();
    let mut incrs = HashMap::new();
    let mut errors = Vec::new();
    let mut commands = 0;
    for w in writers {
        let report = w.await.unwrap();
        last.extend(report.last);
        incrs.extend(report.incrs);
        errors.extend(report.errors);
        commands += report.commands;
    }

    // The slots really moved, with keys of the workload in them.
    let after = cluster.cluster_nodes();
    let owner = |nodes: &[NodeInfo], slot: u16| {
        nodes
            .iter()
            .find(|n| n.slots.iter().any(|&(a, b)| a <= slot && slot <= b))
            .map(|n| n.id.clone())
    };
    let moved_keys = keys
        .iter()
        .filter(|k| {
            let slot = key_slot(k.as_bytes());
            owner(&before, slot).as_deref() == Some(source_id.as_str())
                && owner(&after, slot).as_deref() == Some(target_id.as_str())
        })
        .count();
    let target_slots = after
        .iter()
        .find(|n| n.id == target_id)
        .map(NodeInfo::slot_count);
    eprintln!(
        "{commands} commands by {WRITERS} writers; rounds completed per writer: {rounds_at_start:?} \
         when the reshard started, {rounds_at_end:?} when it ended; {moved_keys} of {} keys \
         changed shard; the target now serves {target_slots:?} slots",
        keys.len()
    );
    assert!(
        moved_keys > 0,
        "no key of the workload was in a moved slot\n{output}"
    );

    // Every acknowledged write is there, read through a fresh client.
    let mut fresh = cluster.async_connection().await;
    let mut lost = Vec::new();
    for key in &keys {
        let got = run::<Option<String>>(&mut fresh, &["GET", key]).await;
        let want = last.get(key).map(u64::to_string);
        if got.as_ref().ok() != Some(&want) {
            lost.push(format!("{key}: got {got:?}, last acknowledged {want:?}"));
        }
        let counter = format!("{key}:n");
        let got = run::<Option<i64>>(&mut fresh, &["GET", &counter]).await;
        let want = incrs.get(&counter).map(|&n| n as i64);
        if got.as_ref().ok() != Some(&want) {
            lost.push(format!(
                "{counter}: got {got:?}, acknowledged INCRs {want:?}"
            ));
        }
    }
    if !errors.is_empty() || !lost.is_empty() {
        panic!(
            "{} client errors (first: {:#?})\n{} lost or wrong keys (first: {:#?})\n{output}\n{}",
            errors.len(),
            &errors[..errors.len().min(20)],
            lost.len(),
            &lost[..lost.len().min(20)],
            cluster.check_report()
        );
    }
}

// ---------------------------------------------------------------------------------------
// 6. Adding and removing nodes with redis-cli
// ---------------------------------------------------------------------------------------

/// Waits until every live node knows `id` as a full member (no handshake, not failing).
fn wait_known_everywhere(cluster: &mut Cluster, id: &str) {
    wait_for(cluster, &format!("every node knowing {id}"), SETTLE, |c| {
        for addr in c.live_addrs() {
            let nodes = nodes_of(&addr)?;
            match nodes.iter().find(|n| n.id == id) {
                Some(n) if !n.is_failed() && !n.flags.iter().any(|f| f == "handshake") => {}
                other => return Err(format!("{addr} sees {id} as {other:?}")),
            }
        }
        Ok(())
    });
}

/// Waits until no live node knows `id` any more.
fn wait_forgotten_everywhere(cluster: &mut Cluster, id: &str) {
    wait_for(
        cluster,
        &format!("every node forgetting {id}"),
        SETTLE,
        |c| {
            for addr in c.live_addrs() {
                if nodes_of(&addr)?.iter().any(|n| n.id == id) {
                    return Err(format!("{addr} still lists {id}"));
                }
            }
            Ok(())
        },
    );
}

/// Writes `n` keys through the cluster client; returns them with their values.
async fn write_keys(cluster: &Cluster, prefix: &str, n: usize) -> BTreeMap<String, String> {
    let mut con = cluster.async_connection().await;
    let mut written = BTreeMap::new();
    for i in 0..n {
        let (k, v) = (format!("{prefix}:{i}"), format!("value-{i}"));
        run::<String>(&mut con, &["SET", &k, &v]).await.unwrap();
        written.insert(k, v);
    }
    written
}

/// Reads every key back through a fresh cluster client; returns the missing or wrong ones.
async fn missing_keys(cluster: &Cluster, written: &BTreeMap<String, String>) -> Vec<String> {
    let mut con = cluster.async_connection().await;
    let mut missing = Vec::new();
    for (k, v) in written {
        match run::<Option<String>>(&mut con, &["GET", k]).await {
            Ok(Some(got)) if got == *v => {}
            other => missing.push(format!("{k}: {other:?}")),
        }
    }
    missing
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_node_and_del_node() {
    let mut cluster = start_cluster();
    let written = write_keys(&cluster, "an", 300).await;
    let entry = cluster.seeds()[0].clone();

    // A new primary, then slots for it.
    let new = cluster.spawn_node();
    let new_id = cluster.id_of(&new);
    let added = cli_ok(&mut cluster, &["add-node", &new, &entry], CLI_TIMEOUT);
    assert!(
        added.text().contains("[OK] New node added correctly."),
        "{added}"
    );
    wait_known_everywhere(&mut cluster, &new_id);
    // A new primary answers CLUSTERDOWN (and so fails the MIGRATEs of a rebalance) until it
    // reports cluster_state:ok itself, a little after it has learnt the slot map.
    settle(&mut cluster, "add-node (primary)");
    cli_ok(
        &mut cluster,
        &["rebalance", &entry, "--cluster-use-empty-masters"],
        RESHARD_TIMEOUT,
    );
    settle(&mut cluster, "rebalance");
    let slots_of_new = |c: &mut Cluster| {
        c.cluster_nodes()
            .iter()
            .find(|n| n.id == new_id)
            .map_or(0, NodeInfo::slot_count)
    };
    let given = slots_of_new(&mut cluster);
    assert!(
        given > 0,
        "rebalance gave the new primary no slot\n{}",
        cluster.check_report()
    );

    // A replica for it.
    let new2 = cluster.spawn_node();
    let new2_id = cluster.id_of(&new2);
    let added = cli_ok(
        &mut cluster,
        &[
            "add-node",
            &new2,
            &entry,
            "--cluster-slave",
            "--cluster-master-id",
            &new_id,
        ],
        CLI_TIMEOUT,
    );
    assert!(
        added.text().contains("[OK] New node added correctly."),
        "{added}"
    );
    cluster.set_shape(4, 1);
    if let Err(e) = cluster.wait_converged(SETTLE) {
        panic!(
            "4 × 1 after add-node --cluster-slave: {e}\n{}",
            cluster.check_report()
        );
    }
    wait_check_ok(&mut cluster, "add-node (replica)");
    wait_for(
        &mut cluster,
        &format!("every node seeing {new2} as a replica of {new}"),
        SETTLE,
        |c| {
            for addr in c.live_addrs() {
                let nodes = nodes_of(&addr)?;
                let seen = nodes.iter().find(|n| n.id == new2_id);
                if seen.and_then(|n| n.primary_id.as_deref()) != Some(new_id.as_str()) {
                    return Err(format!("{addr} sees {new2} as {seen:?}"));
                }
            }
            Ok(())
        },
    );
    let missing = missing_keys(&cluster, &written).await;
    assert!(
        missing.is_empty(),
        "keys lost by the rebalance: {missing:?}"
    );

    // A primary that serves slots cannot be deleted.
    let refused = cluster.cli(&["del-node", &entry, &new_id], CLI_TIMEOUT);
    assert!(
        !refused.success(),
        "del-node of a primary with slots succeeded: {refused}"
    );
    wait_known_everywhere(&mut cluster, &new_id);

    // Delete the replica.
    cli_ok(&mut cluster, &["del-node", &entry, &new2_id], CLI_TIMEOUT);
    cluster.remove_node(&new2);
    wait_forgotten_everywhere(&mut cluster, &new2_id);
    settle(&mut cluster, "del-node (replica)");

    // Move the new primary's slots away, then delete it.
    let given = slots_of_new(&mut cluster).to_string();
    let to_id = cluster.id_of(&entry);
    cli_ok(
        &mut cluster,
        &[
            "reshard",
            &entry,
            "--cluster-from",
            &new_id,
            "--cluster-to",
            &to_id,
            "--cluster-slots",
            &given,
            "--cluster-yes",
        ],
        RESHARD_TIMEOUT,
    );
    settle(&mut cluster, "resharding the new primary's slots away");
    assert_eq!(slots_of_new(&mut cluster), 0, "{}", cluster.check_report());
    cli_ok(&mut cluster, &["del-node", &entry, &new_id], CLI_TIMEOUT);
    cluster.remove_node(&new);
    wait_forgotten_everywhere(&mut cluster, &new_id);
    cluster.set_shape(3, 1);
    if let Err(e) = cluster.wait_converged(SETTLE) {
        panic!("3 × 1 after del-node: {e}\n{}", cluster.check_report());
    }
    wait_check_ok(&mut cluster, "del-node (primary)");
    let missing = missing_keys(&cluster, &written).await;
    assert!(missing.is_empty(), "keys lost by the reshard: {missing:?}");

    // `fix` on a healthy cluster changes nothing.
    let before = wait_for(
        &mut cluster,
        "one topology everywhere",
        SETTLE,
        agreed_topology,
    );
    let fix = cli_ok(&mut cluster, &["fix", &entry], CLI_TIMEOUT);
    assert!(check_ok(&fix), "--cluster fix on a healthy cluster: {fix}");
    assert!(
        !fix.text().contains("Fixing"),
        "--cluster fix fixed something: {fix}"
    );
    let after = wait_for(
        &mut cluster,
        "one topology everywhere",
        SETTLE,
        agreed_topology,
    );
    assert_eq!(before, after, "--cluster fix changed the topology\n{fix}");
}

// ---------------------------------------------------------------------------------------
// 7. Pub/Sub across nodes
// ---------------------------------------------------------------------------------------

/// A RESP2 push of `kind` (`message`, `smessage`) on `channel`.
fn push(kind: &str, channel: &str, payload: &str) -> Vec<u8> {
    bulks(&[kind, channel, payload])
}

/// A new connection to `addr`, subscribed with `command` (`SUBSCRIBE`, `SSUBSCRIBE`) to
/// `channel`; its read timeout is long enough to wait for a published message.
fn subscribe(addr: &str, command: &str, channel: &str) -> RawConn {
    let mut conn = raw(addr);
    let mut confirm = b"*3\r\n".to_vec();
    confirm.extend(bulk(&command.to_ascii_lowercase()));
    confirm.extend(bulk(channel));
    confirm.extend_from_slice(b":1\r\n");
    assert_reply!(
        cmd_str(&mut conn, &[command, channel]),
        confirm,
        "{command} {channel} on {addr}"
    );
    conn.set_read_timeout(MESSAGE_TIMEOUT);
    conn
}

#[test]
fn sharded_pubsub_and_publish() {
    let mut cluster = start_cluster();
    let channel = "news";
    let slot = key_slot(channel.as_bytes());
    let primary = cluster.primary_for_slot(slot);
    let replica = cluster.replicas_of(&primary)[0].clone();
    let elsewhere = cluster
        .primary_addrs()
        .into_iter()
        .find(|a| *a != primary)
        .unwrap();

    // Sharded: a node outside the shard redirects; the shard's replica and primary both
    // deliver what is published on the primary.
    assert_reply!(
        cmd_str(&mut raw(&elsewhere), &["SSUBSCRIBE", channel]),
        moved(slot, &primary)
    );
    assert_reply!(
        cmd_str(&mut raw(&elsewhere), &["SPUBLISH", channel, "x"]),
        moved(slot, &primary)
    );
    let mut on_replica = subscribe(&replica, "SSUBSCRIBE", channel);
    let mut on_primary = subscribe(&primary, "SSUBSCRIBE", channel);
    // The reply counts the subscribers of the node it was sent to.
    assert_reply!(
        cmd_str(&mut raw(&primary), &["SPUBLISH", channel, "hello"]),
        b":1\r\n"
    );
    assert_reply!(on_primary.read_reply(), push("smessage", channel, "hello"));
    assert_reply!(
        on_replica.read_reply(),
        push("smessage", channel, "hello"),
        "SSUBSCRIBE on replica {replica}"
    );

    // Classic: PUBLISH on any node reaches subscribers on every node.
    let chat = "chat";
    let mut subscribers: Vec<(String, RawConn)> = cluster
        .seeds()
        .into_iter()
        .map(|addr| {
            let conn = subscribe(&addr, "SUBSCRIBE", chat);
            (addr, conn)
        })
        .collect();
    let publisher = replica.clone();
    assert_reply!(
        cmd_str(&mut raw(&publisher), &["PUBLISH", chat, "hi"]),
        b":1\r\n"
    );
    for (addr, conn) in &mut subscribers {
        assert_reply!(
            conn.read_reply(),
            push("message", chat, "hi"),
            "subscriber on {addr}, published on {publisher}"
        );
    }
    let publisher = elsewhere;
    assert_reply!(
        cmd_str(&mut raw(&publisher), &["PUBLISH", chat, "again"]),
        b":1\r\n"
    );
    for (addr, conn) in &mut subscribers {
        assert_reply!(
            conn.read_reply(),
            push("message", chat, "again"),
            "subscriber on {addr}, published on {publisher}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// 8. Restarting every node
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_every_node_from_nodes_conf() {
    let mut cluster = start_cluster();
    let written = write_keys(&cluster, "rs", 500).await;
    let before = wait_for(
        &mut cluster,
        "one topology everywhere",
        SETTLE,
        agreed_topology,
    );
    let ids = cluster.node_ids();

    // The data survives through an RDB snapshot (the nodes run with `--save ""`), the
    // topology through nodes-P.conf.
    for addr in cluster.seeds() {
        let reply = cmd_str(&mut raw(&addr), &["SAVE"]);
        assert_reply!(reply, b"+OK\r\n", "SAVE on {addr}");
    }
    for addr in cluster.seeds() {
        let status = cluster.stop_node(&addr);
        eprintln!("{addr} stopped: {status:?}");
    }
    for addr in cluster.seeds() {
        cluster.restart_node(&addr);
    }
    assert_eq!(
        cluster.node_ids(),
        ids,
        "node ids changed across the restart"
    );
    if let Err(e) = cluster.wait_converged(SETTLE) {
        panic!(
            "after restarting every node: {e}\n{}",
            cluster.check_report()
        );
    }
    for addr in cluster.seeds() {
        wait_for(
            &mut cluster,
            &format!("{addr} cluster_state:ok"),
            SETTLE,
            |_| {
                let info = query_node_string(&addr, &["CLUSTER", "INFO"])?;
                (info_field(&info, "cluster_state").as_deref() == Some("ok"))
                    .then_some(())
                    .ok_or(info)
            },
        );
    }
    let after = wait_for(
        &mut cluster,
        "one topology everywhere",
        SETTLE,
        agreed_topology,
    );
    assert_eq!(before, after, "the topology changed across the restart");
    wait_check_ok(&mut cluster, "restarting every node");
    let missing = missing_keys(&cluster, &written).await;
    assert!(
        missing.is_empty(),
        "{} keys lost across the restart: {missing:?}",
        missing.len()
    );
}

// ---------------------------------------------------------------------------------------
// 9. Garbage on the cluster bus
// ---------------------------------------------------------------------------------------

/// Deterministic pseudo-random bytes (xorshift64).
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 24) as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bus_packets_drop_the_link_not_the_node() {
    let mut cluster = start_cluster();
    let primary = cluster.slots()[0].primary.clone();
    let replica = cluster.replicas_of(&primary)[0].clone();
    let linger = Duration::from_secs(10);

    let header = |len: u32| {
        let mut h = b"RCmb".to_vec();
        h.extend_from_slice(&len.to_be_bytes());
        h
    };
    let mut bad_version = header(2256);
    bad_version.extend_from_slice(&0xFFFFu16.to_be_bytes());
    bad_version.extend(noise(2256 - 10, 7));
    let mut truncated = header(2256);
    truncated.extend(noise(100, 3));

    for target in [&primary, &replica] {
        // Bytes that are no frame at all: the node must drop the link.
        let not_frames: [(&str, Vec<u8>); 3] = [
            (
                "an HTTP request",
                b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            ),
            ("a RESP command", b"*1\r\n$4\r\nPING\r\n".to_vec()),
            (
                "64 KiB of random bytes",
                noise(64 * 1024, 0x9E37_79B9_7F4A_7C15),
            ),
        ];
        for (what, bytes) in &not_frames {
            let probe = cluster.send_to_bus(target, bytes, linger);
            eprintln!("{target} bus, {what}: {probe:?}");
            assert!(
                probe.closed_by_node,
                "{target}: the bus link stayed open for {linger:?} after {what}: {probe:?}"
            );
            assert!(
                cluster.node_mut(target).is_running(),
                "{target} died after {what} on its bus"
            );
        }
        // Frames that are wrong in other ways. Whether the link is dropped is up to the node
        // (redis-server keeps waiting for the rest of an oversized frame), it must live on.
        let odd_frames: [(&str, Vec<u8>, Duration); 4] = [
            (
                "a 4 GiB length prefix",
                header(u32::MAX),
                Duration::from_secs(2),
            ),
            (
                "a length prefix below the header size",
                header(8),
                Duration::from_secs(2),
            ),
            (
                "an unknown protocol version",
                bad_version.clone(),
                Duration::from_secs(2),
            ),
            (
                "a truncated frame, then close",
                truncated.clone(),
                Duration::ZERO,
            ),
        ];
        for (what, bytes, wait) in &odd_frames {
            let probe = cluster.send_to_bus(target, bytes, *wait);
            eprintln!("{target} bus, {what}: {probe:?}");
            assert!(
                cluster.node_mut(target).is_running(),
                "{target} died after {what} on its bus"
            );
        }
    }

    // Links stuck mid-frame must not stall the node's bus: hold some open for twice the node
    // timeout, during which no node may be suspected of failing.
    let mut stuck = Vec::new();
    for target in [&primary, &replica] {
        let bus = cluster.node(target).bus_addr();
        for bytes in [header(u32::MAX), header(2256), b"RCm".to_vec()] {
            let mut s = std::net::TcpStream::connect(&bus).unwrap();
            std::io::Write::write_all(&mut s, &bytes).unwrap();
            stuck.push(s);
        }
    }
    let window = Duration::from_millis(2 * cluster.config().node_timeout_ms);
    let until = Instant::now() + window;
    while Instant::now() < until {
        for addr in cluster.seeds() {
            let nodes =
                nodes_of(&addr).unwrap_or_else(|e| panic!("{e}\n{}", cluster.check_report()));
            if let Some(n) = nodes.iter().find(|n| n.is_failed()) {
                panic!(
                    "{addr} suspects {} ({:?}) while bus links were stuck mid-frame\n{}",
                    n.addr,
                    n.flags,
                    cluster.check_report()
                );
            }
            let info = query_node_string(&addr, &["CLUSTER", "INFO"]).unwrap();
            assert_eq!(
                info_field(&info, "cluster_state").as_deref(),
                Some("ok"),
                "{addr}:\n{info}"
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    drop(stuck);

    for addr in cluster.seeds() {
        assert!(
            cluster.node_mut(&addr).is_running(),
            "{addr} is no longer running"
        );
    }
    cluster
        .wait_stable(SETTLE)
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.check_report()));
    wait_check_ok(&mut cluster, "garbage on the bus");
    let mut con = cluster.async_connection().await;
    let (ops, errors) = mixed_workload(&mut con, "bus", 100).await;
    assert!(
        errors.is_empty(),
        "{} of {ops} commands failed after the bus garbage: {errors:#?}",
        errors.len()
    );
}
