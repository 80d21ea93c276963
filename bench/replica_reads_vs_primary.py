#!/usr/bin/env python3
"""Replica reads through lagwise-proxy: routing cost, staleness, eligibility (issue 8).

Starts, on loopback ports:
  - a 6-node cluster (3 primaries x 1 replica, `redis-cli --cluster create ...
    --cluster-replicas 1`) of redis-server (`--kind redis`, the default) or of
    target/release/lagwise-node (`--kind lagwise`), nodes started as in cluster_vs_redis.py;
  - two lagwise-proxy processes in front of it, identical but for the read policy:
    `--read-policy primary` and `--read-policy prefer-replica`, both with `--max-lag-ms 100
    --replication-poll-interval-ms 10 --admin 127.0.0.1:Q`.
and measures, in one run:
  1. routing cost: redis-benchmark -t get -c 50 -r 100000 (unpipelined and -P 16, keys
     pre-loaded) against each proxy in interleaved rounds (ABBA...), medians of rps and p99;
     ratio prefer-replica / primary (issue 8's target: >= 0.95), and the share of the GETs
     that went to replicas (PROXY INFO counters, /metrics and the nodes' keyspace hits);
     then side by side: both proxies loaded at once, GETs/s of each over a common window
     (PROXY INFO counters), median of the rounds' ratios (same target);
  2. staleness of served reads: a writer process (redis-py) updates K keys of one shard with
     increasing counters at a steady rate, straight on the shard's primary, and records when
     each write was acknowledged; reader processes GET those keys through a proxy and record
     (value, time sent, time answered). Staleness of a read = time answered - ack time of the
     first write newer than the value read, or 0 if that write was not yet acknowledged when
     the read was sent. p50/p90/p99/max over >= 20,000 reads: primary policy (control: must
     be 0), prefer-replica with healthy replicas, and prefer-replica while the shard's
     replica gets `CLIENT PAUSE 150 WRITE` every 400 ms (max must stay <= max_lag_ms + the
     poll interval);
  3. eligibility transitions: `CLIENT PAUSE 2000 WRITE` on that replica under the same write
     load, PROXY INFO polled every 5 ms: time from the pause to eligible=0 (expect ~max_lag_ms)
     and from the end of the pause to eligible=1, 5 trials, median and max.
Prints one summary table at the end. Standard library only, except redis-py for the writer
and readers if it is installed (else the harness's own RESP client). Imports its process,
RESP, CPU-accounting ("other load") and cluster helpers from node_vs_redis.py,
replication_vs_redis.py and cluster_vs_redis.py. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from array import array
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cluster_vs_redis as cvr  # noqa: E402
import node_vs_redis as nvr  # noqa: E402
import replication_vs_redis as rvr  # noqa: E402
from node_vs_redis import HOST, REPO_ROOT, HarnessError, Resp, log  # noqa: E402
from replication_vs_redis import CpuMeter, percentile, short, spread  # noqa: E402

POLICIES = ("primary", "prefer-replica")
TARGET_RATIO = 0.95          # prefer-replica rps / primary rps (issue 8: routing cost <= 5 %)
DEFAULT_PROXY_BIN = REPO_ROOT / "target/release/lagwise-proxy"
DEFAULT_NODE_BIN = REPO_ROOT / "target/release/lagwise-node"


class Mode:
    def __init__(self, name: str, pipeline: int, probe_n: int):
        self.name, self.pipeline, self.probe_n = name, pipeline, probe_n

    @property
    def key(self) -> str:
        return "c50" + (f"P{self.pipeline}" if self.pipeline > 1 else "")


# --------------------------------------------------------------------------- slots

def _crc16_table() -> list[int]:
    t = []
    for i in range(256):
        crc = i << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        t.append(crc & 0xFFFF)
    return t


_CRC = _crc16_table()


def key_slot(key: bytes) -> int:
    """cluster_vs_redis.key_slot, table-driven (the pre-load hashes 100,000 keys)."""
    s = key.find(b"{")
    if s >= 0:
        e = key.find(b"}", s + 1)
        if e > s + 1:
            key = key[s + 1:e]
    crc = 0
    for b in key:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC[((crc >> 8) ^ b) & 0xFF]
    return crc % cvr.SLOTS


for _k in (b"foo", b"key:000000000042", b"a{bc}d", b"{}x"):
    assert key_slot(_k) == cvr.key_slot(_k), _k


# --------------------------------------------------------------------------- binaries

def newest_source(crates: tuple[str, ...]) -> tuple[float, str]:
    newest, name = 0.0, ""
    paths = [REPO_ROOT / "Cargo.toml", REPO_ROOT / "Cargo.lock"]
    for sub in crates:
        for root, _dirs, files in os.walk(REPO_ROOT / sub):
            paths += [Path(root) / f for f in files if f.endswith(".rs") or f == "Cargo.toml"]
    for p in paths:
        try:
            t = p.stat().st_mtime
        except OSError:
            continue
        if t > newest:
            newest, name = t, str(p.relative_to(REPO_ROOT))
    return newest, name


def ensure_binaries(args, workdir: Path) -> tuple[str, str | None, list[str]]:
    """(proxy binary, node binary or None, warnings). Default binaries that are missing or
    older than their crate's (or shared's) sources are built with one `cargo build --release
    -p ...` (the node only for --kind lagwise), unless --no-build; if the build fails, an
    existing binary is measured anyway, with a WARNING."""
    wanted = [("lagwise-proxy", args.proxy_bin, DEFAULT_PROXY_BIN, ("proxy", "shared"))]
    if args.kind == "lagwise":
        wanted.append(("lagwise-node", args.node_bin, DEFAULT_NODE_BIN, ("node", "shared")))
    paths: dict[str, str] = {}
    warnings: list[str] = []
    build: list[tuple[str, Path, str, bool]] = []   # (package, path, why, have)
    for pkg, given, default, crates in wanted:
        b = Path(given)
        if not b.is_absolute() and not b.exists():
            b = REPO_ROOT / b
        paths[pkg] = str(b)
        if b.resolve() != default.resolve():
            if not (b.is_file() and os.access(b, os.X_OK)):
                raise HarnessError(f"{pkg} binary {b} is missing or not executable")
            continue
        newest, name = newest_source(crates)
        have = b.is_file() and os.access(b, os.X_OK)
        if have and b.stat().st_mtime >= newest:
            continue
        why = "missing" if not have else f"older than {name}"
        if args.no_build:
            if not have:
                raise HarnessError(f"{b} is missing: build it with `cargo build --release -p "
                                   f"{pkg}` (or drop --no-build)")
            warnings.append(f"the {pkg} binary is {why} (--no-build: measured as it is)")
            continue
        build.append((pkg, b, why, have))
    if build:
        pkgs = [x for pkg, *_r in build for x in ("-p", pkg)]
        log(f"== building {', '.join(f'{pkg} ({why})' for pkg, _b, why, _h in build)}: "
            f"cargo build --release {' '.join(pkgs)}")
        out = workdir / "cargo-build.log"
        t0 = time.monotonic()
        try:
            with open(out, "wb") as f:
                p = subprocess.run(["cargo", "build", "--release", *pkgs], cwd=REPO_ROOT,
                                   stdout=f, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, timeout=args.build_timeout)
            rc = p.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        except OSError as e:
            rc = f"{type(e).__name__}: {e}"
        if rc == 0:
            log(f"  built in {time.monotonic() - t0:.0f}s")
        else:
            text = out.read_text(errors="replace") if out.exists() else ""
            errs = [ln for ln in text.splitlines() if ln.startswith("error")]
            first = short(errs[0] if errs else (text.strip().splitlines() or ["no output"])[-1],
                          150)
            for pkg, b, why, have in build:
                if not have:
                    raise HarnessError(f"cargo build --release {' '.join(pkgs)} failed ({rc}): "
                                       f"{first}; full output in {out}")
                mt = time.strftime("%H:%M:%S", time.localtime(b.stat().st_mtime))
                warnings.append(f"cargo build failed ({rc}, {len(errs)} error lines, first: "
                                f"{first}); measuring the existing {pkg} from {mt}, {why}")
    return paths["lagwise-proxy"], paths.get("lagwise-node"), warnings


# --------------------------------------------------------------------------- processes

class Proc(nvr.Server):
    """A process with its own command line (the proxy) that answers PING on a known port.
    Log file, PING wait, stop (SIGTERM, SIGKILL after --stop-timeout) and CPU accounting
    are node_vs_redis.Server's."""

    def __init__(self, name: str, argv: list[str], workdir: Path, port: int, args):
        super().__init__(name, argv[0], workdir, None, args.startup_timeout,
                         args.stop_timeout, config=[])
        self.argv = argv
        self.port = port

    def start(self, avoid=None) -> None:  # noqa: ARG002 (the port is fixed)
        self.starts += 1
        self.log_path = self.workdir / f"{self.name}.log"
        # Appended to: the side-by-side rounds restart the proxies.
        with open(self.log_path, "ab") as logf:
            logf.write(("# " + " ".join(self.argv) + "\n").encode())
            logf.flush()
            self.proc = subprocess.Popen(
                self.argv, cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=logf,
                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_ping()
        except HarnessError:
            self.stop()
            raise


def stop_all(procs: list) -> None:
    """SIGTERM to every live process first, then wait for each (SIGKILL after the
    timeout), so that nothing outlives the harness."""
    for p in procs:
        if p.alive():
            try:
                p.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
    for p in procs:
        try:
            p.stop()
        except Exception as e:  # noqa: BLE001 (keep stopping the others)
            log(f"  could not stop {p.name}: {e}")


# --------------------------------------------------------------------------- proxy views

def text_of(raw) -> str:
    return raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)


def proxy_info(conn: Resp) -> dict:
    """PROXY INFO -> {"fields": {k: v}, "replicas": {addr: {k: v}}}."""
    fields: dict[str, str] = {}
    replicas: dict[str, dict[str, str]] = {}
    for line in text_of(conn.call("PROXY", "INFO")).splitlines():
        line = line.strip()
        if not line or line.startswith("#") or ":" not in line:
            continue
        k, v = line.split(":", 1)
        if re.fullmatch(r"replica\d+", k):
            d = dict(kv.split("=", 1) for kv in v.split(",") if "=" in kv)
            replicas[d.get("addr", k)] = d
        else:
            fields[k] = v
    return {"fields": fields, "replicas": replicas}


def read_counters(info: dict) -> dict[str, int]:
    f = info["fields"]
    out = {}
    for k in ("reads_replica", "reads_primary", "replica_deadline_fallbacks",
              "replica_error_fallbacks", "replica_precheck_fallbacks", "monotonic_rereads",
              "noreplica_errors"):
        try:
            out[k] = int(f.get(k, 0))
        except ValueError:
            out[k] = 0
    return out


_METRIC = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})?\s+(\S+)')


def scrape(admin_port: int, timeout: float = 2.0) -> list[tuple[str, dict, float]] | None:
    """The proxy's /metrics as (name, labels, value); None if it cannot be read."""
    try:
        with urllib.request.urlopen(f"http://{HOST}:{admin_port}/metrics",
                                    timeout=timeout) as r:
            text = r.read().decode(errors="replace")
    except OSError:
        return None
    out = []
    for line in text.splitlines():
        m = _METRIC.match(line)
        if not m or line.startswith("#"):
            continue
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        try:
            out.append((m.group(1), labels, float(m.group(3))))
        except ValueError:
            pass
    return out


def metric_reads(metrics) -> dict[str, float] | None:
    """lagwise_proxy_reads_total summed by "target/reason"."""
    if metrics is None:
        return None
    out: dict[str, float] = {}
    for name, labels, v in metrics:
        if name == "lagwise_proxy_reads_total":
            t = f"{labels.get('target', '?')}/{labels.get('reason', '?')}"
            out[t] = out.get(t, 0.0) + v
    return out


def reads_delta(m0, m1) -> dict[str, int] | None:
    if m0 is None or m1 is None:
        return None
    d = {k: int(m1.get(k, 0) - m0.get(k, 0)) for k in set(m0) | set(m1)}
    return {k: v for k, v in sorted(d.items(), key=lambda kv: -kv[1]) if v}


def by_target(d: dict[str, int] | None, target: str) -> int | None:
    return None if d is None else sum(v for k, v in d.items() if k.split("/")[0] == target)


def metric_eligible(metrics, replica_addr: str) -> float | None:
    if metrics is None:
        return None
    for name, labels, v in metrics:
        if name == "lagwise_proxy_replica_eligible" and labels.get("replica") == replica_addr:
            return v
    return None


def share(a, b):
    return a / (a + b) if a is not None and b is not None and a + b > 0 else None


# --------------------------------------------------------------------------- workers
# Writer and readers run in processes of their own (spawned), so that their timestamps are
# not held up by one another's GIL; time.monotonic() is CLOCK_MONOTONIC, one clock for all.

def _client(port: int, kind: str):
    """A call(*args) function on a fresh connection: redis-py (`kind` "redis-py") or the
    harness's RESP client ("resp")."""
    if kind == "resp":
        return Resp(port, timeout=10).call, "harness RESP client"
    import redis  # noqa: PLC0415
    r = redis.Redis(host=HOST, port=port, socket_timeout=10, socket_connect_timeout=5)
    r.execute_command("PING")
    return r.execute_command, f"redis-py {redis.__version__}"


def _sleep_until(t: float) -> None:
    d = t - time.monotonic()
    if d > 0:
        time.sleep(d)


def _ready(conn, lib: str) -> dict:
    """Worker side of the start handshake: report ready (connected, warmed up), then wait
    for the schedule (absolute time.monotonic() values) from the parent."""
    conn.send({"ready": True, "lib": lib})
    return conn.recv()


def writer_main(port: int, keys: list[str], first: int, rate: float, client: str, stop_ev,
                conn) -> None:
    """SET keys[i % K] i for i = first, first+1, ... at `rate` per second from the
    schedule's start until its end or stop_ev; sends the ack time of every write (index
    i - first). A writer that falls more than 20 ms behind its schedule restarts the
    schedule instead of bursting (counted as `resets`)."""
    try:
        call, lib = _client(port, client)
        k = len(keys)
        call("PING")
        sched = _ready(conn, lib)
        start_at, end_at = sched["start"], sched["end"]
        acks = array("d")
        i, base, base_i, resets = first, start_at, first, 0
        _sleep_until(start_at)
        while True:
            due = base + (i - base_i) / rate
            now = time.monotonic()
            if now >= end_at or stop_ev.is_set():
                break
            if due > now:
                time.sleep(due - now)
            elif now - due > 0.02:
                base, base_i, resets = now, i, resets + 1
            call("SET", keys[i % k], str(i))
            acks.append(time.monotonic())
            i += 1
        conn.send({"acks": acks.tobytes(), "lib": lib, "resets": resets})
    except Exception as e:  # noqa: BLE001 (reported by the parent)
        conn.send({"error": f"{type(e).__name__}: {e}"})
    finally:
        conn.close()


def reader_main(port: int, keys: list[str], rate: float, quota: int, seed: int, client: str,
                conn) -> None:
    """GET a random one of `keys` at `rate` per second on one connection from the
    schedule's start until its end, and on past it until `quota` reads are done or the
    schedule's hard end; sends (key index, value, time sent, time answered) of every read."""
    try:
        call, lib = _client(port, client)
        rng = random.Random(seed)
        k = len(keys)
        call("GET", keys[0])  # the connection's first read is outside the window
        sched = _ready(conn, lib)
        start_at, end_at, hard_end = sched["start"], sched["end"], sched["hard_end"]
        ks, vs, ts, tr = array("H"), array("q"), array("d"), array("d")
        bad = 0
        i = 0
        _sleep_until(start_at)
        while True:
            due = start_at + i / rate
            now = time.monotonic()
            if now >= hard_end or (now >= end_at and i >= quota):
                break
            if due > now:
                time.sleep(due - now)
            j = rng.randrange(k)
            t0 = time.monotonic()
            v = call("GET", keys[j])
            t1 = time.monotonic()
            try:
                val = int(v)
            except (TypeError, ValueError):
                bad += 1
                val = -1
            ks.append(j)
            vs.append(val)
            ts.append(t0)
            tr.append(t1)
            i += 1
        conn.send({"k": ks.tobytes(), "v": vs.tobytes(), "ts": ts.tobytes(),
                   "tr": tr.tobytes(), "bad": bad, "lib": lib})
    except Exception as e:  # noqa: BLE001
        conn.send({"error": f"{type(e).__name__}: {e}"})
    finally:
        conn.close()


class Pauser(threading.Thread):
    """`CLIENT PAUSE <ms> WRITE` on a node every `every` seconds until stopped; CLIENT
    UNPAUSE at the end."""

    def __init__(self, port: int, ms: int, every: float):
        super().__init__(daemon=True)
        self.port, self.ms, self.every = port, ms, every
        self.stop_ev = threading.Event()
        self.acks: list[float] = []
        self.error: str | None = None

    def run(self) -> None:
        try:
            with Resp(self.port, timeout=5) as c:
                nxt = time.monotonic()
                while not self.stop_ev.is_set():
                    r = c.call("CLIENT", "PAUSE", self.ms, "WRITE")
                    if r != "OK":
                        raise HarnessError(f"CLIENT PAUSE replied {r!r}")
                    self.acks.append(time.monotonic())
                    nxt += self.every
                    self.stop_ev.wait(max(0.0, nxt - time.monotonic()))
                c.call("CLIENT", "UNPAUSE")
        except Exception as e:  # noqa: BLE001
            self.error = f"{type(e).__name__}: {e}"


# --------------------------------------------------------------------------- the bench

class Bench:
    def __init__(self, args, workdir: Path, proxy_bin: str, node_bin: str):
        self.args = args
        self.workdir = workdir
        self.proxy_bin = proxy_bin
        self.node_bin = node_bin
        self.live: list = []
        self.nodes: list[cvr.Node] = []
        self.shards: list[dict] = []   # {start, end, primary, replica}
        self.proxies: dict[str, Proc] = {}
        self.admin: dict[str, int] = {}
        self.avoid: set[int] = set()
        self.children: list = []       # multiprocessing processes
        self.runs: list[dict] = []
        self.probes: list[dict] = []
        self.mp = mp.get_context("spawn")

    # ---- start-up

    def start_cluster(self) -> None:
        a = self.args
        pool = cvr.PortPool(a.port_base, a.port_range)
        ports = pool.block(cvr.NODES)
        self.avoid.update(ports)
        self.avoid.update(p + cvr.BUS_OFFSET for p in ports)
        for p in ports:
            d = self.workdir / f"node-{p}"
            d.mkdir()
            self.nodes.append(cvr.Node(f"{a.kind}-{p}", self.node_bin, d, p, a))
        for n in self.nodes:
            n.launch()
            self.live.append(n)
        for n in self.nodes:
            n._wait_ping()
        argv = ["redis-cli", "--cluster", "create", *[f"{HOST}:{n.port}" for n in self.nodes],
                "--cluster-replicas", "1", "--cluster-yes"]
        out = self.workdir / "redis-cli-create.log"
        t0 = time.monotonic()
        with open(out, "wb") as f:
            try:
                p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=f,
                                   stderr=subprocess.STDOUT, timeout=a.create_timeout)
            except subprocess.TimeoutExpired:
                raise HarnessError(f"redis-cli --cluster create did not finish within "
                                   f"{a.create_timeout:.0f}s: {cvr.cli_tail(out)}") from None
        if p.returncode != 0 or "All 16384 slots covered" not in out.read_text(errors="replace"):
            raise HarnessError(f"redis-cli --cluster create: rc {p.returncode}: "
                               f"{cvr.cli_tail(out)}")
        conns = [Resp(n.port, timeout=5) for n in self.nodes]
        try:
            desc = "?"
            while time.monotonic() - t0 < a.create_timeout:
                ok, desc = cvr.formed([cvr.node_status(c) for c in conns])
                if ok:
                    break
                time.sleep(0.05)
            else:
                raise HarnessError(f"cluster not formed within {a.create_timeout:.0f}s ({desc})")
            # All six must agree on three slot ranges with one replica each.
            while time.monotonic() - t0 < a.create_timeout:
                views = {tuple(slot_map(c.call("CLUSTER", "SLOTS"))) for c in conns}
                if len(views) == 1:
                    view = next(iter(views))
                    if (len(view) == cvr.PRIMARIES and all(r is not None for *_x, r in view)
                            and sum(e - s + 1 for s, e, _p, _r in view) == cvr.SLOTS):
                        break
                time.sleep(0.05)
            else:
                raise HarnessError(f"the nodes do not agree on 3 slot ranges with a replica "
                                   f"each within {a.create_timeout:.0f}s")
        finally:
            for c in conns:
                c.close()
        self.shards = [{"start": s, "end": e, "primary": p, "replica": r}
                       for s, e, p, r in view]
        log(f"  cluster    6 {a.kind} nodes on {self.nodes[0].port}-{self.nodes[-1].port} "
            f"formed in {time.monotonic() - t0:.1f}s; shards "
            + ", ".join(f"{d['primary']}+{d['replica']} (slots {d['start']}-{d['end']})"
                        for d in self.shards))

    def start_proxies(self) -> None:
        a = self.args
        seeds = ",".join(f"{HOST}:{n.port}" for n in self.nodes)
        for policy in POLICIES:
            port = nvr.free_port(self.avoid)
            self.avoid.add(port)
            admin = nvr.free_port(self.avoid)
            self.avoid.add(admin)
            argv = [self.proxy_bin, "--listen", f"{HOST}:{port}", "--seeds", seeds,
                    "--read-policy", policy, "--max-lag-ms", str(a.max_lag_ms),
                    "--replication-poll-interval-ms", str(a.poll_ms),
                    "--admin", f"{HOST}:{admin}", *a.proxy_arg]
            d = self.workdir / f"proxy-{policy}"
            d.mkdir()
            pr = Proc(f"lagwise-proxy-{policy}", argv, d, port, a)
            self.live.append(pr)
            pr.start()
            self.proxies[policy] = pr
            self.admin[policy] = admin
            log(f"  proxy      {' '.join(argv)}  (pid {pr.pid})")
        for policy, pr in self.proxies.items():
            with Resp(pr.port) as c:
                got = proxy_info(c)["fields"].get("read_policy")
            if got != policy:
                raise HarnessError(f"PROXY INFO of the {policy} proxy says read_policy:{got}")

    def restart_proxies(self, order: list[str]) -> None:
        """Stops both proxies and starts them again, in `order` (same ports and flags)."""
        stop_all([self.proxies[p] for p in POLICIES])
        for policy in order:
            self.proxies[policy].start()

    def check_alive(self) -> None:
        for p in self.live:
            if not p.alive():
                raise HarnessError(f"{p.name} is no longer running{rvr.log_hint(p)}")

    def owner(self, slot: int) -> int:
        for d in self.shards:
            if d["start"] <= slot <= d["end"]:
                return d["primary"]
        raise HarnessError(f"no owner for slot {slot}")

    def preload(self) -> None:
        """key:%012d -> val:%012d for every -r index, straight to the slot's primary; then
        waits until every replica has all of them."""
        r = self.args.keyspace
        t0 = time.monotonic()
        per: dict[int, list[bytes]] = {d["primary"]: [] for d in self.shards}
        tmpl = b"*3\r\n$3\r\nSET\r\n$16\r\nkey:%012d\r\n$16\r\nval:%012d\r\n"
        for i in range(r):
            per[self.owner(key_slot(b"key:%012d" % i))].append(tmpl % (i, i))
        for port, cmds in per.items():
            nvr.load_with_socket(port, b"".join(cmds), len(cmds))
        want = {p: len(c) for p, c in per.items()}
        deadline = time.monotonic() + 60
        while True:
            sizes = {d["primary"]: int(rvr.call(d["primary"], "DBSIZE")) for d in self.shards}
            rsizes = {d["primary"]: int(rvr.call(d["replica"], "DBSIZE")) for d in self.shards}
            if sizes != want:
                raise HarnessError(f"primaries' DBSIZE after the pre-load {sizes}, expected "
                                   f"{want}")
            if rsizes == want:
                break
            if time.monotonic() > deadline:
                raise HarnessError(f"replicas' DBSIZE {rsizes} did not reach {want} in 60 s")
            time.sleep(0.05)
        i = r // 2
        for policy, pr in self.proxies.items():
            got = rvr.call(pr.port, "GET", f"key:{i:012d}")
            if got != b"val:%012d" % i:
                raise HarnessError(f"GET key:{i:012d} through the {policy} proxy returned "
                                   f"{got!r}")
        log(f"  pre-load   {r:,} keys key:%012d (16-byte values) on the primaries, replicas "
            f"in sync; checked in {time.monotonic() - t0:.1f}s")

    def wait_eligible(self, limit: float = 10.0, stable: float = 0.0,
                      replica: int | None = None) -> float:
        """Until the prefer-replica proxy shows every replica (or the one given) eligible,
        continuously for `stable` seconds; returns the time waited."""
        t0 = time.monotonic()
        since = None
        last = "no PROXY INFO yet"
        with Resp(self.proxies["prefer-replica"].port, timeout=5) as c:
            while time.monotonic() - t0 < limit:
                reps = proxy_info(c)["replicas"]
                want = ([f"{HOST}:{replica}"] if replica is not None
                        else [f"{HOST}:{d['replica']}" for d in self.shards])
                ok = all(reps.get(w, {}).get("eligible") == "1" for w in want)
                last = "; ".join(f"{w} " + (",".join(f"{k}={reps[w].get(k)}" for k in
                                                      ("state", "lag_ms", "eligible"))
                                            if w in reps else "not listed") for w in want)
                if ok:
                    since = since or time.monotonic()
                    if time.monotonic() - since >= stable:
                        return time.monotonic() - t0
                else:
                    since = None
                time.sleep(0.01)
        raise HarnessError(f"replicas not eligible on the prefer-replica proxy within "
                           f"{limit:.0f}s: {last}")

    # ---- 1. throughput

    def lookups(self) -> dict[int, int]:
        """keyspace hits + misses per node port (INFO stats)."""
        out = {}
        for n in self.nodes:
            with Resp(n.port) as c:
                st = nvr.parse_info(c.call("INFO", "stats"))
            out[n.port] = int(st.get("keyspace_hits", 0)) + int(st.get("keyspace_misses", 0))
        return out

    def benchmark_argv(self, policy: str, mode: Mode, n: int, *extra: str) -> list[str]:
        """redis-benchmark -t get against the proxy of `policy`."""
        a = self.args
        argv = ["redis-benchmark", "-h", HOST, "-p", str(self.proxies[policy].port), "-t",
                "get", "-n", str(n), "-c", str(a.clients), "-r", str(a.keyspace), *extra]
        if mode.pipeline > 1:
            argv += ["-P", str(mode.pipeline)]
        return argv

    def run_once(self, policy: str, mode: Mode, n: int) -> dict:
        a = self.args
        pr = self.proxies[policy]
        argv = self.benchmark_argv(policy, mode, n, "--csv")
        self.check_alive()
        with Resp(pr.port) as c:
            i0 = read_counters(proxy_info(c))
        m0 = metric_reads(scrape(self.admin[policy]))
        l0 = self.lookups()
        with CpuMeter(self.live) as meter:
            c0 = rvr.proc_cpu(pr.pid)
            t0 = time.monotonic()
            try:
                p = subprocess.run(argv, capture_output=True, timeout=a.run_timeout,
                                   stdin=subprocess.DEVNULL)
            except subprocess.TimeoutExpired:
                return {"policy": policy, "mode": mode.key, "argv": argv,
                        "error": f"redis-benchmark timed out after {a.run_timeout:.0f}s"}
            wall = time.monotonic() - t0
            c1 = rvr.proc_cpu(pr.pid)
        l1 = self.lookups()
        m1 = metric_reads(scrape(self.admin[policy]))
        with Resp(pr.port) as c:
            i1 = read_counters(proxy_info(c))
        res: dict = {"policy": policy, "mode": mode.key, "n": n, "argv": argv,
                     "wall_s": round(wall, 3), "other_load": meter.frac}
        out = p.stdout.decode(errors="replace")
        err = p.stderr.decode(errors="replace").strip()
        try:
            rows = nvr.parse_csv("\n".join(ln for ln in out.splitlines() if ln.startswith('"')))
        except HarnessError as e:
            rows, err = [], f"{err} {e}".strip()
        if p.returncode != 0 or not rows:
            why = err.splitlines()[-1] if err else (out.strip().splitlines() or ["no output"])[-1]
            res["error"] = f"redis-benchmark rc {p.returncode}: {short(why, 200)}"
            return res
        row = rows[-1]
        res.update(rps=row["rps"], p50_ms=row["p50_latency_ms"], p99_ms=row["p99_latency_ms"],
                   max_ms=row["max_latency_ms"])
        if c0 is not None and c1 is not None:
            res["proxy_cpu_us"] = (c1 - c0) / n * 1e6
        d = {k: i1[k] - i0[k] for k in i0}
        res["counters"] = d
        res["replica_share"] = share(d["reads_replica"], d["reads_primary"])
        md = reads_delta(m0, m1)
        if md is not None:
            res["metrics_reads"] = md
            res["metrics_replica_share"] = share(by_target(md, "replica"),
                                                 by_target(md, "primary"))
        served = {port: l1[port] - l0[port] for port in l1}
        total = sum(served.values())
        replicas = {d_["replica"] for d_ in self.shards}
        res["served_ratio"] = total / n
        res["server_replica_share"] = (sum(v for p_, v in served.items() if p_ in replicas)
                                       / total if total else None)
        if res["served_ratio"] < 0.99:
            res["error"] = (f"the nodes counted only {res['served_ratio'] * 100:.1f}% of the "
                            f"{n:,} GETs as lookups: the rest did not reach a node (errors?)")
        return res

    def measured(self, policy: str, mode: Mode, n: int) -> dict:
        """A run, repeated (up to --load-retries times) while other processes used more
        than --max-other-load of the machine; the least loaded attempt is kept."""
        a = self.args
        tries = []
        for _ in range(1 + a.load_retries):
            r = self.run_once(policy, mode, n)
            tries.append(r)
            if "error" in r or r["other_load"] is None or r["other_load"] <= a.max_other_load:
                break
        best = min(tries, key=lambda r: (r.get("other_load") or 0.0))
        if "error" in tries[-1]:
            best = tries[-1]
        best["discarded"] = [{"rps": t.get("rps"), "other_load": t.get("other_load")}
                             for t in tries if t is not best]
        return best

    def calibrate(self, mode: Mode) -> int:
        """One short unrecorded run per proxy (also the warm-up); -n for the rounds is the
        faster one's rps x --duration."""
        a = self.args
        if a.requests:
            return a.requests * (a.pipeline_factor if mode.pipeline > 1 else 1)
        best = 0.0
        for policy in POLICIES:
            r = self.run_once(policy, mode, mode.probe_n)
            self.probes.append(r)
            if "error" in r:
                raise HarnessError(f"{policy} proxy, {mode.name}: {r['error']}")
            best = max(best, r["rps"])
        n = int(math.ceil(best * a.duration / 10000) * 10000)
        return max(n, mode.probe_n)

    def throughput(self, mode: Mode) -> dict:
        a = self.args
        self.wait_eligible()
        n = self.calibrate(mode)
        row: dict = {"mode": mode.key, "mode_name": mode.name, "n": n,
                     "runs": {p: [] for p in POLICIES}, "na": {}}
        for rnd in range(a.rounds):
            order = list(POLICIES) if rnd % 2 == 0 else list(reversed(POLICIES))
            parts = []
            for policy in order:
                if policy in row["na"]:
                    continue
                r = self.measured(policy, mode, n)
                r["round"] = rnd + 1
                self.runs.append(r)
                if "error" in r:
                    row["na"][policy] = r["error"]
                    parts.append(f"{policy} n/a ({short(r['error'], 80)})")
                    continue
                row["runs"][policy].append(r)
                ol = r.get("other_load")
                sh = r.get("replica_share")
                why = ""
                if policy != "primary" and sh is not None and sh < 0.995:
                    # why reads went to the primary: /metrics reasons of target="primary"
                    why = " (to primary: " + (", ".join(
                        f"{k.split('/')[1]} {v:,}" for k, v in (r.get("metrics_reads") or {})
                        .items() if k.startswith("primary/")) or "?") + ")"
                parts.append(f"{policy} {r['rps']:,.0f} rps p99 {r['p99_ms']:.3f}"
                             + (f" replica {sh * 100:.1f}%{why}" if sh is not None else "")
                             + (f" (other load {ol * 100:.0f}%)" if ol else "")
                             + (f" [{len(r['discarded'])} rerun]" if r["discarded"] else ""))
            log(f"  GET {mode.name:<11} round {rnd + 1}/{a.rounds} n={n:,}: " + " | ".join(parts))
        return row

    def side_by_side(self, mode: Mode, n: int) -> dict:
        """Both proxies under load at once, each from its own redis-benchmark, for
        --rounds rounds rounded up to even: GETs per second of each over one common window
        (from PROXY INFO's read counters, read while both runs go on), so both see the same
        machine at the same moment. Each round restarts both proxies, in the round's order,
        and starts their benchmarks in the same order; the order alternates. (Started once,
        primary first, the prefer-replica proxy used 7-16 % more CPU per GET side by side in
        6 of 8 measurements over four runs, and 6 % less at -c 50 in one run that started it
        first. With the restarts it still used 15-20 % more in half the -P 16 rounds of a
        run: a cost of competing for the CPU that the sequential rounds do not show.) `n`: the rounds' -n (about --duration seconds of the faster proxy
        alone)."""
        a = self.args
        warm, window = 1.0, a.duration
        big = int(n / a.duration * (warm + window) * 2) + n
        out: dict = {"mode": mode.key, "n": big, "window_s": window, "rounds": []}
        rounds = a.rounds + a.rounds % 2
        for rnd in range(rounds):
            order = list(POLICIES) if rnd % 2 == 0 else list(reversed(POLICIES))
            self.restart_proxies(order)
            self.wait_eligible()
            procs: dict = {}
            conns = {p: Resp(self.proxies[p].port) for p in POLICIES}
            try:
                self.check_alive()
                with CpuMeter(self.live) as meter:
                    for policy in order:
                        argv = self.benchmark_argv(policy, mode, big, "-q")
                        procs[policy] = subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                                         stderr=subprocess.PIPE,
                                                         stdin=subprocess.DEVNULL)
                    time.sleep(warm)
                    at0 = {}
                    for p in POLICIES:
                        at0[p] = (read_counters(proxy_info(conns[p])),
                                  rvr.proc_cpu(self.proxies[p].pid), time.monotonic())
                    time.sleep(window)
                    at1 = {}
                    for p in POLICIES:
                        at1[p] = (read_counters(proxy_info(conns[p])),
                                  rvr.proc_cpu(self.proxies[p].pid), time.monotonic())
                    early = [p for p in POLICIES if procs[p].poll() is not None]
                    for pr in procs.values():
                        if pr.poll() is None:
                            pr.kill()
                    for pr in procs.values():
                        pr.wait(timeout=a.stop_timeout)
            finally:
                for pr in procs.values():
                    if pr.poll() is None:
                        pr.kill()
                for c in conns.values():
                    c.close()
            res: dict = {"round": rnd + 1, "first": order[0], "other_load": meter.frac}
            if early:
                err = procs[early[0]].stderr.read().decode(errors="replace").strip()
                res["error"] = (f"redis-benchmark against the {early[0]} proxy ended before "
                                f"the window did (rc {procs[early[0]].returncode}"
                                + (f": {short(err.splitlines()[-1], 120)}" if err else "")
                                + ")")
                log(f"  GET {mode.name:<11} side by side round {rnd + 1}/{rounds}: "
                    f"n/a ({res['error']})")
                out["rounds"].append(res)
                continue
            for p in POLICIES:
                (i0, c0, t0), (i1, c1, t1) = at0[p], at1[p]
                reads = sum(i1[k] - i0[k] for k in ("reads_replica", "reads_primary"))
                res[p] = {"rps": reads / (t1 - t0) if t1 > t0 else None,
                          "replica_share": share(i1["reads_replica"] - i0["reads_replica"],
                                                 i1["reads_primary"] - i0["reads_primary"]),
                          "proxy_cpu_us": ((c1 - c0) / reads * 1e6
                                           if c0 is not None and c1 is not None and reads
                                           else None)}
            res["ratio"] = nvr.ratio(res["prefer-replica"]["rps"], res["primary"]["rps"])
            out["rounds"].append(res)
            ol = res["other_load"]
            log(f"  GET {mode.name:<11} side by side round {rnd + 1}/{rounds}, {order[0]} "
                "first: "
                + " | ".join(f"{p} {res[p]['rps']:,.0f} rps, proxy "
                             f"{fmt(res[p]['proxy_cpu_us'], '.2f')} µs/GET"
                             + (f", replica {pctf(res[p]['replica_share'])}"
                                if p != "primary" else "") for p in POLICIES)
                + f"; ratio {fmt(res['ratio'], '.3f')}"
                + (f" (other load {ol * 100:.0f}%)" if ol else ""))
        return out

    # ---- 2./3. writer, readers

    def shard_keys(self, shard: dict) -> list[str]:
        out = []
        i = 0
        while len(out) < self.args.stale_keys:
            k = f"stale:{i}"
            if shard["start"] <= key_slot(k.encode()) <= shard["end"]:
                out.append(k)
            i += 1
        return out

    def spawn(self, target, *args_):
        parent, child = self.mp.Pipe()
        p = self.mp.Process(target=target, args=(*args_, child), daemon=True)
        p.start()
        child.close()
        self.children.append(p)
        return p, parent

    def start_workers(self, workers: list, names: list[str], sched: dict) -> float:
        """Waits until every spawned worker is connected and ready, then sends each its
        schedule, starting 0.2 s from now (+ the offsets given in `sched`); returns the
        start time."""
        limit = time.monotonic() + self.args.spawn_timeout
        for (p, c), name in zip(workers, names):
            if not c.poll(max(0.0, limit - time.monotonic())):
                raise HarnessError(f"{name} was not ready within {self.args.spawn_timeout:.0f}s")
            try:
                msg = c.recv()
            except EOFError:
                raise HarnessError(f"{name} exited before it was ready (exit code "
                                   f"{p.exitcode})") from None
            if "error" in msg:
                raise HarnessError(f"{name}: {msg['error']}")
        start = time.monotonic() + 0.2
        for (p, c), name in zip(workers, names):
            c.send({k: start + v for k, v in sched[name.split()[0]].items()})
        return start

    def collect(self, p, conn, limit: float, what: str) -> dict:
        try:
            if not conn.poll(limit):
                raise HarnessError(f"{what} sent no result within {limit:.0f}s")
            res = conn.recv()
        except EOFError:
            raise HarnessError(f"{what} exited without a result (exit code "
                               f"{p.exitcode})") from None
        finally:
            conn.close()
        p.join(10)
        if p.is_alive():
            p.terminate()
            p.join(5)
        if "error" in res:
            raise HarnessError(f"{what}: {res['error']}")
        return res

    def init_keys(self, shard: dict, keys: list[str]) -> float:
        """keys[j] = j on the primary, replicated: the counters start at len(keys)."""
        with Resp(shard["primary"]) as c:
            for j, k in enumerate(keys):
                c.call("SET", k, str(j))
            t = time.monotonic()
        return t

    def staleness(self, label: str, policy: str, shard: dict, keys: list[str],
                  pause: bool) -> dict:
        """One staleness measurement: writer on the shard's primary, readers through the
        `policy` proxy, with or without the CLIENT PAUSE loop on the shard's replica."""
        a = self.args
        self.check_alive()
        if policy == "prefer-replica":
            self.wait_eligible(stable=0.3)
        k = len(keys)
        t_init = self.init_keys(shard, keys)
        time.sleep(0.05)
        pr = self.proxies[policy]
        with Resp(pr.port) as c:
            i0 = read_counters(proxy_info(c))
        rep_port, prim_port = shard["replica"], shard["primary"]
        l0 = self.lookups()
        pauser = None
        with CpuMeter(self.live) as meter:
            quota = math.ceil(a.min_reads / a.readers)
            stop_ev = self.mp.Event()
            w = self.spawn(writer_main, prim_port, keys, k, a.write_rate, a.client, stop_ev)
            readers = [self.spawn(reader_main, pr.port, keys, a.read_rate / a.readers, quota,
                                  1000 + i, a.client) for i in range(a.readers)]
            longest = max(a.stale_duration, a.stale_max_duration)
            # writer from 0, readers from 0.5 s (the writer's rate has settled) for
            # --stale-duration, on to --stale-max-duration if they have not made --min-reads
            sched = {"writer": {"start": 0.0, "end": 0.5 + longest + 1.0},
                     "reader": {"start": 0.5, "end": 0.5 + a.stale_duration,
                                "hard_end": 0.5 + longest}}
            start = self.start_workers([w, *readers],
                                       ["writer"] + [f"reader {i + 1}" for i in
                                                     range(a.readers)], sched)
            hard_end = start + 0.5 + longest
            wp, wc = w
            try:
                if pause:
                    _sleep_until(start + 0.1)
                    pauser = Pauser(rep_port, a.pause_ms, a.pause_every)
                    pauser.start()
                rres = [self.collect(p, c, hard_end - time.monotonic() + 30,
                                     f"reader {i + 1}") for i, (p, c) in enumerate(readers)]
            finally:
                if pauser is not None:
                    pauser.stop_ev.set()
                    pauser.join(5)
                stop_ev.set()
            wres = self.collect(wp, wc, 30, "writer")
        l1 = self.lookups()
        with Resp(pr.port) as c:
            i1 = read_counters(proxy_info(c))
        if pauser is not None and pauser.error:
            raise HarnessError(f"CLIENT PAUSE loop on {rep_port}: {pauser.error}")
        acks = array("d", [t_init] * k)
        acks.frombytes(wres["acks"])
        staleness: list[float] = []
        rtts: list[float] = []
        t_first, t_last = math.inf, 0.0
        bad = wrong_key = future = nonmono = 0
        last_sent = len(acks) - 1   # the writer's last value
        for res in rres:
            ks, vs, ts, tr = array("H"), array("q"), array("d"), array("d")
            ks.frombytes(res["k"])
            vs.frombytes(res["v"])
            ts.frombytes(res["ts"])
            tr.frombytes(res["tr"])
            bad += res["bad"]
            if len(ts):
                t_first, t_last = min(t_first, ts[0]), max(t_last, tr[-1])
            seen: dict[int, int] = {}
            for j, v, t0, t1 in zip(ks, vs, ts, tr):
                rtts.append(t1 - t0)
                if v < 0:
                    continue
                if v % k != j:
                    wrong_key += 1
                    continue
                if v > last_sent + 1:
                    future += 1
                if seen.get(j, -1) > v:
                    nonmono += 1   # this connection read an older value after a newer one
                seen[j] = max(seen.get(j, -1), v)
                nxt = v + k
                if nxt < len(acks) and acks[nxt] <= t0:
                    staleness.append(max(0.0, t1 - acks[nxt]) * 1000)
                else:
                    staleness.append(0.0)
        d = {key: i1[key] - i0[key] for key in i0}
        served = {port: l1[port] - l0[port] for port in (prim_port, rep_port)}
        wdur = (acks[-1] - acks[k]) if len(acks) > k + 1 else 0.0
        res = {
            "label": label, "policy": policy, "paused": pause, "reads": len(staleness),
            "writes": len(acks) - k, "write_rate": (len(acks) - k - 1) / wdur if wdur else None,
            "writer_resets": wres["resets"], "lib": wres["lib"],
            "read_rate": len(rtts) / (t_last - t_first) if t_last > t_first else None,
            "read_window_s": t_last - t_first if t_last > t_first else None,
            "p50_ms": percentile(staleness, 50), "p90_ms": percentile(staleness, 90),
            "p99_ms": percentile(staleness, 99), "max_ms": max(staleness) if staleness else None,
            "stale_share": (sum(1 for s in staleness if s > 0) / len(staleness)
                            if staleness else None),
            "rtt_p99_ms": percentile([x * 1000 for x in rtts], 99),
            "rtt_max_ms": max(rtts) * 1000 if rtts else None,
            "bad_replies": bad, "wrong_key": wrong_key, "from_future": future,
            "non_monotonic": nonmono, "counters": d,
            "replica_share": share(d["reads_replica"], d["reads_primary"]),
            "server_replica_share": share(served[rep_port], served[prim_port]),
            "other_load": meter.frac,
        }
        if pauser is not None:
            res["pauses"] = len(pauser.acks)
        self.runs.append(res)
        return res

    def transitions(self, shard: dict, keys: list[str]) -> dict:
        """--transition-trials times: CLIENT PAUSE <ms> WRITE on the shard's replica under
        the writer's load; PROXY INFO of the prefer-replica proxy every --poll-every s; when
        eligible goes 1->0 (after the pause) and 0->1 (after the pause ends)."""
        a = self.args
        self.check_alive()
        self.wait_eligible(stable=0.3)
        rep_port, prim_port = shard["replica"], shard["primary"]
        addr = f"{HOST}:{rep_port}"
        k = len(keys)
        self.init_keys(shard, keys)
        trials: list[dict] = []
        pr = self.proxies["prefer-replica"]
        per_trial = a.pause_long_ms / 1000 + 3.0
        with CpuMeter(self.live) as meter:
            stop_ev = self.mp.Event()
            w = self.spawn(writer_main, prim_port, keys, k, a.write_rate, a.client, stop_ev)
            start = self.start_workers([w], ["writer"], {"writer": {
                "start": 0.0, "end": a.transition_trials * (per_trial + 12) + 30}})
            wp, wc = w
            try:
                _sleep_until(start + 0.3)
                for rep in range(a.transition_trials):
                    if not wp.is_alive():
                        break
                    self.wait_eligible(stable=0.3, replica=rep_port)
                    trials.append(self.transition_trial(pr.port, self.admin["prefer-replica"],
                                                        rep_port, prim_port, addr))
                    t = trials[-1]
                    log(f"  trial {rep + 1}/{a.transition_trials}: "
                        + (f"1->0 after {t['drop_ms']:.0f} ms (lag_ms {t['drop_lag_ms']})"
                           if t.get("drop_ms") is not None else "never dropped")
                        + "; " + (f"0->1 {t['back_ms']:.0f} ms after the pause ended"
                                  if t.get("back_ms") is not None else "never came back")
                        + (f" (replica caught up after {t['caught_ms']:.0f} ms)"
                           if t.get("caught_ms") is not None else "")
                        + f"; {t['polls']} polls, median gap {t['poll_gap_ms']:.1f} ms")
            finally:
                stop_ev.set()
            wres = self.collect(wp, wc, 30, "writer")
        return {"trials": trials, "other_load": meter.frac,
                "writes": len(wres["acks"]) // 8, "writer_resets": wres["resets"]}

    def transition_trial(self, proxy_port: int, admin: int, rep_port: int, prim_port: int,
                         addr: str) -> dict:
        a = self.args
        pause_s = a.pause_long_ms / 1000
        out: dict = {}
        polls: list[tuple] = []  # (sent, answered, eligible, lag_ms, state)
        with Resp(proxy_port, timeout=5) as ci, Resp(rep_port, timeout=5) as cr, \
                Resp(prim_port, timeout=5) as cp, Resp(rep_port, timeout=5) as cu:
            r = cr.call("CLIENT", "PAUSE", a.pause_long_ms, "WRITE")
            t_pause = time.monotonic()
            if r != "OK":
                raise HarnessError(f"CLIENT PAUSE on {rep_port} replied {r!r}")
            t_unpause = None
            target_off = None
            nxt = t_pause
            limit = t_pause + pause_s + a.back_timeout
            while True:
                now = time.monotonic()
                if t_unpause is None and now >= t_pause + pause_s:
                    # The end of the pause, exactly: redis ends a timed pause only in its
                    # serverCron (every 100 ms at hz 10), so CLIENT UNPAUSE ends it here.
                    target_off = int(nvr.parse_info(cp.call("INFO", "replication"))
                                     ["master_repl_offset"])
                    cu.call("CLIENT", "UNPAUSE")
                    t_unpause = time.monotonic()
                s0 = time.monotonic()
                rep = proxy_info(ci)["replicas"].get(addr, {})
                t = time.monotonic()
                el = rep.get("eligible", "?")
                polls.append((s0, t, el, rep.get("lag_ms", "?"), rep.get("state", "?")))
                if t_unpause is None:
                    if "drop_ms" not in out and el == "0":
                        out["drop_ms"] = (t - t_pause) * 1000
                        out["drop_lag_ms"] = rep.get("lag_ms")
                        out["drop_state"] = rep.get("state")
                        out["metrics_drop"] = metric_eligible(scrape(admin), addr)
                else:
                    if "caught_ms" not in out:
                        off = int(nvr.parse_info(cr.call("INFO", "replication"))
                                  .get("slave_repl_offset", -1))
                        if off >= target_off:
                            out["caught_ms"] = (time.monotonic() - t_unpause) * 1000
                    if el == "1" and "back_ms" not in out:
                        out["back_ms"] = (t - t_unpause) * 1000
                        out["metrics_back"] = metric_eligible(scrape(admin), addr)
                    if "back_ms" in out and "caught_ms" in out:
                        break
                if t > limit:
                    break
                nxt += a.poll_every
                _sleep_until(nxt)
                if time.monotonic() - nxt > a.poll_every:
                    nxt = time.monotonic()
        gaps = [b[0] - a_[0] for a_, b in zip(polls, polls[1:])]
        out["polls"] = len(polls)
        out["poll_gap_ms"] = statistics.median(gaps) * 1000 if gaps else 0.0
        out["poll_rtt_max_ms"] = max((p[1] - p[0]) for p in polls) * 1000 if polls else None
        # eligible went back to 1 during the pause: a flap worth knowing about
        out["flaps_during_pause"] = sum(
            1 for p, q in zip(polls, polls[1:]) if p[2] == "0" and q[2] == "1"
            and (t_unpause is None or q[0] < t_unpause))
        return out


def slot_map(raw) -> list[tuple[int, int, int, int | None]]:
    """CLUSTER SLOTS -> sorted [(start, end, primary port, first replica port or None)]."""
    out = []
    for r in raw or []:
        out.append((int(r[0]), int(r[1]), int(r[2][1]), int(r[3][1]) if len(r) > 3 else None))
    return sorted(out)


# --------------------------------------------------------------------------- summary

def med(runs: list[dict], key: str):
    v = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(v) if v else None


def fmt(v, spec: str, na: str = "-") -> str:
    return na if v is None else format(v, spec)


def pctf(v, digits: int = 1) -> str:
    return "-" if v is None else f"{v * 100:.{digits}f}%"


def summarize_row(row: dict) -> dict:
    s: dict = {"mode": row["mode"], "mode_name": row["mode_name"], "n": row["n"]}
    for p in POLICIES:
        runs = row["runs"][p]
        s[p] = {"rps": med(runs, "rps"), "p99_ms": med(runs, "p99_ms"),
                "p50_ms": med(runs, "p50_ms"), "proxy_cpu_us": med(runs, "proxy_cpu_us"),
                "rps_spread": spread([r["rps"] for r in runs]),
                "p99_spread": spread([r["p99_ms"] for r in runs]),
                "rps_values": [r["rps"] for r in runs],
                "replica_share": med(runs, "replica_share"),
                "replica_share_min": min((r["replica_share"] for r in runs
                                          if r.get("replica_share") is not None), default=None),
                "metrics_replica_share": med(runs, "metrics_replica_share"),
                "server_replica_share": med(runs, "server_replica_share"),
                "runs": len(runs), "na": row["na"].get(p)}
    a, b = s["primary"]["rps"], s["prefer-replica"]["rps"]
    s["ratio"] = nvr.ratio(b, a)
    s["p99_ratio"] = nvr.ratio(s["prefer-replica"]["p99_ms"], s["primary"]["p99_ms"])
    sp = [x for x in (s["primary"]["rps_spread"], s["prefer-replica"]["rps_spread"])
          if x is not None]
    s["spread"] = max(sp) if sp else None
    if s["ratio"] is None:
        s["mark"] = "n/a"
    else:
        s["mark"] = nvr.mark(s["ratio"] >= TARGET_RATIO, True, 1 - s["ratio"] / TARGET_RATIO,
                             s["spread"])
    side = [r for r in row.get("side", {}).get("rounds", []) if r.get("ratio") is not None]
    if side:
        ratios = [r["ratio"] for r in side]
        sd: dict = {"ratios": ratios, "ratio": statistics.median(ratios),
                    "spread": spread(ratios), "rounds": len(side)}
        for p in POLICIES:
            sd[p] = {k: statistics.median(v) if v else None for k, v in (
                (k, [r[p][k] for r in side if r[p].get(k) is not None])
                for k in ("rps", "proxy_cpu_us", "replica_share"))}
        sd["mark"] = nvr.mark(sd["ratio"] >= TARGET_RATIO, True,
                              1 - sd["ratio"] / TARGET_RATIO, sd["spread"])
        s["side"] = sd
    elif "side" in row:
        s["side"] = {"mark": "n/a", "errors": [r.get("error") for r in row["side"]["rounds"]]}
    return s


def print_summary(rows: list[dict], stale: dict, trans: dict | None, args) -> list[str]:
    """The one table; returns the labels of rows that missed a target."""
    bound = args.max_lag_ms + args.poll_ms
    headers = ["measure", "primary", "prefer-replica", "ratio", "target", "status", "spread"]
    out: list[list[str]] = []
    misses: list[str] = []
    for s in rows:
        a, b = s["primary"], s["prefer-replica"]
        out.append([f"GET {s['mode_name']} rps", fmt(a["rps"], ",.0f", "n/a"),
                    fmt(b["rps"], ",.0f", "n/a"), fmt(s["ratio"], ".3f", "n/a"),
                    f">= {TARGET_RATIO:g}", s["mark"], nvr.pct(s["spread"])])
        if s["mark"] != "ok":
            misses.append(f"GET {s['mode_name']} rps ({s['mark']})")
        p99sp = [x for x in (a["p99_spread"], b["p99_spread"]) if x is not None]
        out.append([f"GET {s['mode_name']} p99 ms", fmt(a["p99_ms"], ".3f", "n/a"),
                    fmt(b["p99_ms"], ".3f", "n/a"), fmt(s["p99_ratio"], ".2f", "n/a"),
                    "info", "", nvr.pct(max(p99sp) if p99sp else None)])
        sd = s.get("side")
        if sd is not None and sd["mark"] == "n/a":
            out.append([f"GET {s['mode_name']} rps, side by side", "n/a", "n/a", "n/a",
                        f">= {TARGET_RATIO:g}", "n/a", short(str(sd["errors"][-1:]), 60)])
            misses.append(f"GET {s['mode_name']} rps, side by side (n/a)")
        elif sd is not None:
            out.append([f"GET {s['mode_name']} rps, side by side",
                        fmt(sd["primary"]["rps"], ",.0f"), fmt(sd["prefer-replica"]["rps"], ",.0f"),
                        fmt(sd["ratio"], ".3f"), f">= {TARGET_RATIO:g}", sd["mark"],
                        nvr.pct(sd["spread"])])
            if sd["mark"] != "ok":
                misses.append(f"GET {s['mode_name']} rps, side by side ({sd['mark']})")
        out.append([f"GET {s['mode_name']} reads on replicas", pctf(a["replica_share"]),
                    pctf(b["replica_share"]) + f" (min {pctf(b['replica_share_min'])})",
                    "", "info", "", ""])
        out.append([f"GET {s['mode_name']} proxy CPU µs/GET", fmt(a["proxy_cpu_us"], ".2f"),
                    fmt(b["proxy_cpu_us"], ".2f"),
                    fmt(nvr.ratio(b["proxy_cpu_us"], a["proxy_cpu_us"]), ".2f"), "info", "",
                    ""])
    labels = {"control": "primary policy (control)", "healthy": "healthy replica",
              "paused": f"replica paused {args.pause_ms}/{args.pause_every * 1000:.0f} ms"}
    for key in ("control", "healthy", "paused"):
        r = stale.get(key)
        if r is None:
            continue
        col = 1 if key == "control" else 2
        if "error" in r:
            cells = [f"staleness ms, {labels[key]}", "-", "-", "", "", "n/a",
                     short(r["error"], 60)]
            cells[col] = "n/a"
            out.append(cells)
            misses.append(f"staleness, {labels[key]} (n/a)")
            continue
        txt = (f"p50 {r['p50_ms']:.1f} p90 {r['p90_ms']:.1f} p99 {r['p99_ms']:.1f} "
               f"max {r['max_ms']:.1f}")
        if key == "control":
            ok, tgt = r["max_ms"] == 0, "max = 0"
        else:
            ok = r["max_ms"] <= bound
            tgt = (f"max <= {bound} (max_lag {args.max_lag_ms} + poll {args.poll_ms})"
                   if key == "paused" else f"max <= {bound}")
        st = "MISS" if not ok else ("few" if r["reads"] < args.min_reads else "ok")
        if st == "MISS":
            misses.append(f"staleness, {labels[key]}")
        cells = [f"staleness ms, {labels[key]} ({r['reads']:,} reads)", "-", "-", "", tgt, st,
                 f"stale reads {pctf(r['stale_share'], 2)}"]
        cells[col] = txt
        out.append(cells)
        cells = [f"  reads on replicas, {labels[key]}", "-", "-", "", "info", "",
                 f"nodes' view {pctf(r['server_replica_share'])}"]
        cells[col] = pctf(r["replica_share"])
        out.append(cells)
    if trans is not None:
        tr = trans.get("trials", [])
        drops = [t["drop_ms"] for t in tr if t.get("drop_ms") is not None]
        backs = [t["back_ms"] for t in tr if t.get("back_ms") is not None]
        caught = [t["caught_ms"] for t in tr if t.get("caught_ms") is not None]
        n = len(tr)
        lo, hi = args.max_lag_ms - args.poll_ms, args.max_lag_ms + 2 * args.poll_ms + 10
        if "error" in trans:
            out.append(["eligible 1->0 after CLIENT PAUSE, ms", "-", "n/a", "", "", "n/a",
                        short(trans["error"], 60)])
            misses.append("eligibility transitions (n/a)")
        else:
            if len(drops) == n and n:
                st = "ok" if all(lo <= d <= hi for d in drops) else "MISS"
                txt = f"median {statistics.median(drops):.0f} max {max(drops):.0f}"
            else:
                st, txt = "MISS", f"{len(drops)}/{n} dropped"
            out.append([f"eligible 1->0 after CLIENT PAUSE ({n} trials), ms", "-", txt, "",
                        f"{lo}..{hi} (~max_lag)", st, ""])
            if st != "ok":
                misses.append("eligible 1->0")
            if len(backs) == n and n:
                txt = f"median {statistics.median(backs):.0f} max {max(backs):.0f}"
                st = "ok" if max(backs) <= args.back_timeout * 1000 else "MISS"
            else:
                st, txt = "MISS", f"{len(backs)}/{n} came back"
            cau = (f"replica caught up: median {statistics.median(caught):.0f} max "
                   f"{max(caught):.0f}" if caught else "")
            out.append([f"eligible 0->1 after the pause ended ({n} trials), ms", "-", txt, "",
                        "info", "" if st == "ok" else st, cau])
            if st != "ok":
                misses.append("eligible 0->1")
    nvr.print_table(headers, out, right={1, 2, 3})
    return misses


# --------------------------------------------------------------------------- main

def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description="Replica reads through lagwise-proxy vs primary reads, in the same run: "
                    "routing cost (rps/p99, --read-policy primary vs prefer-replica), "
                    "staleness of served reads, eligibility transitions of a paused replica.",
        formatter_class=nvr._HelpFormatter)
    ap.add_argument("--kind", choices=("redis", "lagwise"), default="redis",
                    help="cluster nodes: redis-server (7.0) or target/release/lagwise-node")
    ap.add_argument("--quick", action="store_true",
                    help="development run: 2 rounds of ~1 s runs, 4 s staleness windows, "
                         "3 transition trials")
    ap.add_argument("--only", default="throughput,staleness,transitions",
                    help="comma-separated subset of throughput,staleness,transitions")
    ap.add_argument("--proxy-bin", default=str(DEFAULT_PROXY_BIN),
                    help="lagwise-proxy binary; the default one is built with cargo when "
                         "missing or older than its sources")
    ap.add_argument("--node-bin", default=str(DEFAULT_NODE_BIN),
                    help="lagwise-node binary for --kind lagwise (built like the proxy)")
    ap.add_argument("--redis-bin", default=None,
                    help="redis-server binary for --kind redis (default: from PATH)")
    ap.add_argument("--no-build", action="store_true",
                    help="never run cargo; measure the binaries as they are (WARNING if stale)")
    ap.add_argument("--build-timeout", type=float, default=1800.0)
    ap.add_argument("--proxy-arg", action="append", default=[],
                    help="extra argument for both proxies (repeat)")
    ap.add_argument("--max-lag-ms", type=int, default=100, help="proxy --max-lag-ms")
    ap.add_argument("--poll-ms", type=int, default=10,
                    help="proxy --replication-poll-interval-ms")
    # 1. throughput
    ap.add_argument("--rounds", type=int, default=None,
                    help="runs per policy and mode, alternating which goes first "
                         "[default 5; --quick 2]")
    ap.add_argument("--duration", type=float, default=None,
                    help="seconds per run for the faster proxy: -n = its calibration rps x "
                         "this [default 3; --quick 1]")
    ap.add_argument("-n", "--requests", type=int, default=None,
                    help="fixed -n for the unpipelined runs (skips the calibration); "
                         "pipelined runs use -n x --pipeline-factor")
    ap.add_argument("--pipeline-factor", type=int, default=8)
    ap.add_argument("-r", "--keyspace", type=int, default=100000,
                    help="redis-benchmark -r; that many keys are pre-loaded")
    ap.add_argument("-c", "--clients", type=int, default=50)
    ap.add_argument("-P", "--pipeline", type=int, default=16)
    # 2. staleness
    ap.add_argument("--stale-duration", type=float, default=None,
                    help="seconds of reads per staleness measurement [default 10; --quick 4]")
    ap.add_argument("--stale-keys", type=int, default=16,
                    help="K: keys the writer updates (all in the first shard)")
    ap.add_argument("--write-rate", type=float, default=2000.0,
                    help="writes per second of the writer")
    ap.add_argument("--readers", type=int, default=3, help="reader processes")
    ap.add_argument("--read-rate", type=float, default=3000.0,
                    help="reads per second of all readers together")
    ap.add_argument("--min-reads", type=int, default=20000,
                    help="the readers go on past --stale-duration until they made this many "
                         "reads (or --stale-max-duration); fewer are flagged `few`")
    ap.add_argument("--stale-max-duration", type=float, default=None,
                    help="limit of a staleness measurement's reads, seconds [default 40; "
                         "--quick: --stale-duration, i.e. no extension]")
    ap.add_argument("--pause-ms", type=int, default=150,
                    help="the staleness phase's CLIENT PAUSE <ms> WRITE on the replica")
    ap.add_argument("--pause-every", type=float, default=0.4,
                    help="seconds between those pauses")
    ap.add_argument("--no-control", action="store_true",
                    help="skip the primary-policy control of the staleness measurement")
    ap.add_argument("--client", choices=("redis-py", "resp"), default=None,
                    help="client library of the writer and the readers: redis-py, or the "
                         "harness's minimal RESP client (far less CPU per command) [default "
                         "redis-py if installed]")
    ap.add_argument("--spawn-timeout", type=float, default=60.0,
                    help="seconds the spawned writer/reader processes may take to connect")
    # 3. transitions
    ap.add_argument("--transition-trials", type=int, default=None,
                    help="pauses of the replica [default 5; --quick 3]")
    ap.add_argument("--pause-long-ms", type=int, default=2000,
                    help="the transition phase's CLIENT PAUSE <ms> WRITE")
    ap.add_argument("--poll-every", type=float, default=0.005,
                    help="seconds between PROXY INFO polls in the transition phase")
    ap.add_argument("--back-timeout", type=float, default=5.0,
                    help="seconds after the pause ended to wait for eligible=1")
    # machine and processes
    ap.add_argument("--max-other-load", type=float, default=0.10,
                    help="a throughput run during which other processes used more than this "
                         "fraction of the machine is repeated")
    ap.add_argument("--load-retries", type=int, default=None,
                    help="how many times a run is repeated for --max-other-load (the least "
                         "loaded attempt is kept) [default 2; --quick 0]")
    ap.add_argument("--node-timeout", type=int, default=5000,
                    help="--cluster-node-timeout of the cluster nodes, ms")
    ap.add_argument("--port-base", type=int, default=37000,
                    help="cluster client ports from [base, base+--port-range); bus +10000")
    ap.add_argument("--port-range", type=int, default=1000)
    ap.add_argument("--create-timeout", type=float, default=60.0)
    ap.add_argument("--startup-timeout", type=float, default=20.0)
    ap.add_argument("--stop-timeout", type=float, default=10.0)
    ap.add_argument("--run-timeout", type=float, default=300.0)
    ap.add_argument("--json", metavar="PATH", help="also write all runs and the table here")
    ap.add_argument("--keep-logs", action="store_true",
                    help="keep the temp dir with the logs (kept anyway after a failure)")
    ap.add_argument("--fail-on-miss", action="store_true",
                    help="exit 1 if a target is missed or n/a")
    a = ap.parse_args(argv)
    q = a.quick
    a.only = [x.strip() for x in a.only.split(",") if x.strip()]
    bad = [x for x in a.only if x not in ("throughput", "staleness", "transitions")]
    if bad or not a.only:
        ap.error("--only takes a subset of throughput,staleness,transitions")
    a.rounds = a.rounds if a.rounds is not None else (2 if q else 5)
    a.duration = a.duration if a.duration is not None else (1.0 if q else 3.0)
    a.load_retries = a.load_retries if a.load_retries is not None else (0 if q else 2)
    a.stale_duration = (a.stale_duration if a.stale_duration is not None
                        else (4.0 if q else 10.0))
    if a.client is None:
        try:
            import redis  # noqa: F401, PLC0415
            a.client = "redis-py"
        except ImportError:
            a.client = "resp"
    a.stale_max_duration = (a.stale_max_duration if a.stale_max_duration is not None
                            else (a.stale_duration if q else 40.0))
    a.transition_trials = (a.transition_trials if a.transition_trials is not None
                           else (3 if q else 5))
    if min(a.rounds, a.keyspace, a.clients, a.pipeline, a.stale_keys, a.readers,
           a.transition_trials) < 1 or min(a.duration, a.stale_duration, a.write_rate,
                                           a.read_rate, a.poll_every) <= 0:
        ap.error("counts, durations and rates must be positive")
    if a.stale_keys > 65535:
        ap.error("--stale-keys must be < 65536")
    return a


def _sigterm(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, _sigterm)
    redis_bin = args.redis_bin or shutil.which("redis-server")
    need = [("redis-benchmark", shutil.which("redis-benchmark")),
            ("redis-cli", shutil.which("redis-cli"))]
    if args.kind == "redis":
        need.append(("redis-server", redis_bin))
    missing = [t for t, p in need if not p]
    if missing:
        log(f"error: not found: {', '.join(missing)} (apt-get install redis-server "
            "redis-tools)")
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="lagwise-replica-bench-"))
    status = 0
    results: dict = {"config": dict(vars(args))}
    bench = None
    t_start = time.monotonic()
    warnings: list[str] = []
    try:
        proxy_bin, lagwise_node, warnings = ensure_binaries(args, workdir)
        node_bin = lagwise_node if args.kind == "lagwise" else redis_bin
        facts = nvr.machine_facts(proxy_bin, redis_bin or node_bin)
        results["machine"] = facts
        nvr.print_facts(facts, ("proxy", "redis"))
        if args.kind == "lagwise":
            st = os.stat(node_bin)
            log(f"  nodes      {node_bin} (mtime "
                f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(st.st_mtime))})")
        for w in warnings:
            log(f"  WARNING    {w}")
        if args.client == "redis-py":
            import redis  # noqa: PLC0415
            lib = f"redis-py {redis.__version__}"
        else:
            lib = "the harness's RESP client"
        modes = [Mode(f"-c {args.clients}", 1, 30000),
                 Mode(f"-c {args.clients} -P {args.pipeline}", args.pipeline, 300000)]
        log(f"  config     kind={args.kind} only={','.join(args.only)} rounds={args.rounds} "
            f"duration>={args.duration:g}s r={args.keyspace:,} max_lag={args.max_lag_ms} ms "
            f"poll={args.poll_ms} ms; staleness: {args.stale_duration:g}s x {args.readers} "
            f"readers {args.read_rate:g}/s, writer {args.write_rate:g}/s on "
            f"{args.stale_keys} keys ({lib}); transitions: {args.transition_trials} x "
            f"CLIENT PAUSE {args.pause_long_ms}")
        busy = nvr.idle_check()
        results["idle_check_busy_frac"] = busy
        if busy is not None and busy > 0.15:
            log(f"  WARNING    {busy * 100:.0f}% of the machine's CPU is busy before the "
                "benchmark starts: other work skews these numbers")
        log(f"  workdir    {workdir}")
        log("")
        log("== start")
        bench = Bench(args, workdir, proxy_bin, node_bin)
        bench.start_cluster()
        bench.start_proxies()
        bench.preload()
        waited = bench.wait_eligible(limit=20)
        log(f"  replicas   all 3 eligible on the prefer-replica proxy after {waited:.2f}s")

        table: list[dict] = []
        if "throughput" in args.only:
            for mode in modes:
                log("")
                log(f"== 1. routing cost, {mode.name}: redis-benchmark -t get -c "
                    f"{args.clients} -r {args.keyspace}"
                    + (f" -P {mode.pipeline}" if mode.pipeline > 1 else "")
                    + " --csv against the primary-policy and the prefer-replica proxy")
                row = bench.throughput(mode)
                log(f"   side by side: both proxies under the same load at once, GETs per "
                    f"second of each over a common {args.duration:g} s window")
                row["side"] = bench.side_by_side(mode, row["n"])
                table.append(summarize_row(row))
        results["throughput"] = table

        shard = bench.shards[0]
        keys = bench.shard_keys(shard)
        stale: dict = {}
        if "staleness" in args.only:
            log("")
            log(f"== 2. staleness: writer SET {len(keys)} keys of shard {shard['primary']} "
                f"(slots {shard['start']}-{shard['end']}) at {args.write_rate:g}/s on the "
                f"primary; {args.readers} readers GET them through a proxy at "
                f"{args.read_rate:g}/s for {args.stale_duration:g}s")
            conds = [("control", "primary", False), ("healthy", "prefer-replica", False),
                     ("paused", "prefer-replica", True)]
            if args.no_control:
                conds = conds[1:]
            for key, policy, pause in conds:
                label = {"control": "primary policy (control)",
                         "healthy": "prefer-replica, healthy replica",
                         "paused": f"prefer-replica, replica {shard['replica']} gets CLIENT "
                                   f"PAUSE {args.pause_ms} WRITE every "
                                   f"{args.pause_every * 1000:.0f} ms"}[key]
                try:
                    r = bench.staleness(label, policy, shard, keys, pause)
                except HarnessError as e:
                    log(f"  {label}: n/a ({e})")
                    stale[key] = {"error": str(e)}
                    continue
                stale[key] = r
                ol = r.get("other_load")
                log(f"  {label}: {r['reads']:,} reads in {fmt(r['read_window_s'], '.1f')}s "
                    f"({fmt(r['read_rate'], ',.0f')}/s), "
                    f"{r['writes']:,} writes ({fmt(r['write_rate'], ',.0f')}/s); staleness ms "
                    f"p50 {r['p50_ms']:.2f} p90 {r['p90_ms']:.2f} p99 {r['p99_ms']:.2f} "
                    f"max {r['max_ms']:.2f}; stale {pctf(r['stale_share'], 2)}; on replica "
                    f"{pctf(r['replica_share'])} (nodes: {pctf(r['server_replica_share'])}); "
                    f"read rtt p99 {r['rtt_p99_ms']:.2f} max {r['rtt_max_ms']:.1f} ms"
                    + (f"; {r['pauses']} pauses" if "pauses" in r else "")
                    + (f" (other load {ol * 100:.0f}%)" if ol else ""))
                c = r["counters"]
                extra = [f"{k_}={c[k_]}" for k_ in ("replica_deadline_fallbacks",
                                                     "replica_precheck_fallbacks",
                                                     "replica_error_fallbacks",
                                                     "monotonic_rereads") if c.get(k_)]
                checks = [f"{k_}={r[k_]}" for k_ in ("bad_replies", "wrong_key", "from_future",
                                                      "non_monotonic", "writer_resets")
                          if r.get(k_)]
                if extra or checks:
                    log("    " + ", ".join(extra + checks))
                if r["write_rate"] is not None and r["write_rate"] < 0.9 * args.write_rate:
                    log(f"    WARNING: the writer made only {r['write_rate']:,.0f} of "
                        f"{args.write_rate:g} writes/s ({r['lib']}; a busy machine?)")
        results["staleness"] = stale

        trans = None
        if "transitions" in args.only:
            log("")
            log(f"== 3. eligibility: CLIENT PAUSE {args.pause_long_ms} WRITE on replica "
                f"{shard['replica']} (writer {args.write_rate:g}/s on its primary), PROXY INFO "
                f"every {args.poll_every * 1000:g} ms; the pause is ended by CLIENT UNPAUSE "
                f"after {args.pause_long_ms} ms")
            try:
                trans = bench.transitions(shard, keys)
            except HarnessError as e:
                log(f"  n/a ({e})")
                trans = {"error": str(e)}
        results["transitions"] = trans

        log("")
        log(f"== results (proxy: {proxy_bin}; cluster: {args.kind}, {node_bin})")
        log("")
        misses = print_summary(table, stale, trans, args)
        log("")
        log("(rps and p99: medians over the rounds of redis-benchmark -t get; ratio = "
            "prefer-replica / primary (p99: the same, lower is better); spread = larger "
            "(max-min)/median of the two;\n"
            " side by side: both proxies loaded at once, GETs/s of each over a common window "
            "by PROXY INFO's counters; ratio = median of the rounds' ratios, spread = "
            "(max-min)/median of them;\n"
            " reads on replicas: share of the GETs the proxy sent to a replica (PROXY INFO "
            "reads_replica / (reads_replica + reads_primary), median and minimum over the "
            "runs);\n"
            " staleness: time answered - ack of the first newer write, 0 if that write was "
            "not acknowledged when the read was sent; percentiles over all reads, zeros "
            "included;\n"
            f" bound = max_lag_ms + poll interval; eligible: first PROXY INFO reply with the "
            f"new value, from the CLIENT PAUSE reply / the CLIENT UNPAUSE reply)")
        for s in table:
            b = s["prefer-replica"]
            log(f"  GET {s['mode_name']}: n={s['n']:,}; prefer-replica reads on replicas by "
                f"/metrics {pctf(b['metrics_replica_share'])}, by the nodes' keyspace hits "
                f"{pctf(b['server_replica_share'])}; proxy cpu µs/GET primary "
                f"{fmt(s['primary']['proxy_cpu_us'], '.2f')} prefer-replica "
                f"{fmt(b['proxy_cpu_us'], '.2f')}; rps primary "
                + "/".join(f"{x:,.0f}" for x in s["primary"]["rps_values"])
                + " prefer-replica " + "/".join(f"{x:,.0f}" for x in b["rps_values"]))
            sd = s.get("side")
            if sd and sd.get("ratios"):
                log(f"  GET {s['mode_name']} side by side: ratio per round "
                    + "/".join(f"{x:.3f}" for x in sd["ratios"]) + "; proxy cpu µs/GET primary "
                    f"{fmt(sd['primary']['proxy_cpu_us'], '.2f')} prefer-replica "
                    f"{fmt(sd['prefer-replica']['proxy_cpu_us'], '.2f')}")
            for p in POLICIES:
                if s[p]["na"]:
                    log(f"  GET {s['mode_name']} {p} n/a: {s[p]['na']}")
        if trans and trans.get("trials"):
            tr = trans["trials"]
            md = [t.get("metrics_drop") for t in tr]
            mb = [t.get("metrics_back") for t in tr]
            agree = sum(1 for x in md if x == 0) + sum(1 for x in mb if x == 1)
            log(f"  eligibility: /metrics lagwise_proxy_replica_eligible agreed at "
                f"{agree}/{2 * len(tr)} transitions; drops per trial (ms) "
                + ", ".join(fmt(t.get("drop_ms"), ".0f") for t in tr) + "; back "
                + ", ".join(fmt(t.get("back_ms"), ".0f") for t in tr)
                + "; flaps during a pause "
                + str(sum(t.get("flaps_during_pause", 0) for t in tr))
                + f"; writer {trans['writes']:,} writes")
        few = [k_ for k_, r in stale.items() if "reads" in r and r["reads"] < args.min_reads]
        if few:
            log(f"  note: fewer than {args.min_reads:,} reads in {', '.join(few)} "
                "(`few`; --quick is short, or the readers could not keep their rate)")
        other = [r["other_load"] for r in bench.runs if r.get("other_load") is not None]
        if trans and trans.get("other_load") is not None:
            other.append(trans["other_load"])
        if other:
            md_, mx = statistics.median(other), max(other)
            warn = ("  WARNING: other processes competed for CPU; rerun on an idle machine"
                    if mx >= 0.25 or md_ >= 0.05 else "")
            reruns = sum(len(r.get("discarded", [])) for r in bench.runs)
            log(f"other load during runs: median {md_ * 100:.0f}%, max {mx * 100:.0f}% of the "
                f"machine ({reruns} throughput runs repeated for load > "
                f"{args.max_other_load * 100:.0f}%)" + warn)
        for w in warnings:
            log(f"WARNING: {w}")
        results["misses"] = misses
        log(f"== summary: {len(misses)} missed or n/a  (total "
            f"{time.monotonic() - t_start:.0f}s)")
        for m in misses:
            log(f"  {m}")
        if misses and args.fail_on_miss:
            status = 1
    except KeyboardInterrupt as e:
        log(f"\ninterrupted ({str(e) or 'Ctrl-C'}); stopping everything")
        results["error"] = "interrupted"
        status = 130
    except HarnessError as e:
        log(f"\nerror: {e}")
        results["error"] = str(e)
        status = 2
    finally:
        if bench is not None:
            for p in bench.children:
                if p.is_alive():
                    p.terminate()
            for p in bench.children:
                p.join(5)
                if p.is_alive():
                    p.kill()
                    p.join(5)
            stop_all(bench.live)
            results.setdefault("runs", bench.runs)
            results["runs"] = bench.runs
            results["probes"] = bench.probes
        results["seconds"] = round(time.monotonic() - t_start, 1)
        if args.json:
            try:
                Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
                log(f"results written to {args.json}")
            except OSError as e:
                log(f"cannot write {args.json}: {e}")
        if status in (0, 1) and not args.keep_logs:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"logs kept in {workdir}")
    return status


if __name__ == "__main__":
    sys.exit(main())
