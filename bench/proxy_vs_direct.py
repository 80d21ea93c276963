#!/usr/bin/env python3
"""lagwise-proxy against direct cluster access and against twemproxy, in the same run (issue 7).

Starts, on loopback ports:
  - a 6-node redis-server cluster (3 primaries x 1 replica, `redis-cli --cluster create
    ... --cluster-replicas 1`), nodes started as in cluster_vs_redis.py;
  - lagwise-proxy in front of it: `lagwise-proxy --listen 127.0.0.1:P --seeds <all 6 nodes>`
    (default read policy: primary);
  - 3 standalone redis-servers behind nutcracker (twemproxy): redis: true, ketama, fnv1a_64,
    server_connections: 1, auto_eject_hosts: false, weight 1 each.
Pre-loads every keyspace the benchmark reads (so GET and MGET hit), then for each mode
(-c 50; -c 50 -P 16; -c 1) and test (SET, GET, MGET of 10 keys) runs redis-benchmark
`-r 100000 -d 16 --csv` against
  direct  redis-benchmark --cluster --threads 1 straight to the nodes,
  proxy   the proxy's port (no --cluster),
  twem    nutcracker's port,
`--rounds` times (default 3), rotating which target goes first, and reports medians: rps,
p50, the proxy's and nutcracker's CPU per request (/proc/PID/stat around each run) and the
servers' CPU per request (all 6 cluster nodes, direct vs through the proxy). MGET has no
direct figure: redis-benchmark --cluster can only send a multi-key command whose keys share
one {tag}, i.e. one slot, which is a different workload from 10 random keys.

Prints one table with the issue's targets next to the ratios: proxy/direct >= 1.0
unpipelined, >= 0.9 pipelined; proxy/twemproxy >= 1.2; added p50 <= 100 us. Standard
library only; imports its process, RESP, CPU-accounting and cluster helpers from
node_vs_redis.py, replication_vs_redis.py and cluster_vs_redis.py. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cluster_vs_redis as cvr  # noqa: E402
import node_vs_redis as nvr  # noqa: E402
import replication_vs_redis as rvr  # noqa: E402
from node_vs_redis import HOST, REPO_ROOT, HarnessError, Resp, log  # noqa: E402
from replication_vs_redis import CpuMeter, proc_cpu, short, spread  # noqa: E402

KINDS = ("direct", "proxy", "twem")
LABEL = {"direct": "direct", "proxy": "proxy", "twem": "twemproxy"}
TESTS = ("set", "get", "mget")
MGET_KEYS = 10
TARGET_UNPIPELINED = 1.0   # proxy rps / direct rps, -c 50
TARGET_PIPELINED = 0.9     # proxy rps / direct rps, -c 50 -P 16
TARGET_TWEM = 1.2          # proxy rps / twemproxy rps
TARGET_ADDED_P50_US = 100.0  # proxy p50 - direct p50, unpipelined
DEFAULT_PROXY_BIN = REPO_ROOT / "target/release/lagwise-proxy"


class Mode:
    def __init__(self, name: str, clients: int, pipeline: int, probe_n: int):
        self.name, self.clients, self.pipeline, self.probe_n = name, clients, pipeline, probe_n

    @property
    def key(self) -> str:
        return f"c{self.clients}" + (f"P{self.pipeline}" if self.pipeline > 1 else "")

    def rps_target(self) -> float | None:
        if self.clients == 1:
            return None  # latency mode: rps is 1 / round trip, no target
        return TARGET_PIPELINED if self.pipeline > 1 else TARGET_UNPIPELINED

    def p50_target(self) -> float | None:
        return TARGET_ADDED_P50_US if self.pipeline == 1 else None


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


# --------------------------------------------------------------------------- processes

class Proc(nvr.Server):
    """A process with its own command line (the proxy, nutcracker) that answers PING on a
    known port. Log file, PING wait, stop (SIGTERM, SIGKILL after --stop-timeout) and CPU
    accounting are node_vs_redis.Server's."""

    def __init__(self, name: str, argv: list[str], workdir: Path, port: int, args):
        super().__init__(name, argv[0], workdir, None, args.startup_timeout,
                         args.stop_timeout, config=[])
        self.argv = argv
        self.port = port

    def start(self, avoid=None) -> None:  # noqa: ARG002 (the port is fixed)
        self.starts += 1
        self.log_path = self.workdir / f"{self.name}.log"
        with open(self.log_path, "wb") as logf:
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


def newest_source() -> tuple[float, str]:
    newest, name = 0.0, ""
    paths = [REPO_ROOT / "Cargo.toml", REPO_ROOT / "Cargo.lock"]
    for sub in ("proxy", "shared"):
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


def ensure_proxy_bin(args, workdir: Path) -> tuple[str, str | None]:
    """The proxy binary to measure, and a warning if it is stale. The default binary is
    built (cargo build --release -p lagwise-proxy) when it is missing or older than the
    proxy's/shared crate's sources, unless --no-build; if that build fails, an existing
    binary is measured anyway, with a WARNING."""
    b = Path(args.proxy_bin)
    if not b.is_absolute() and not b.exists():
        b = REPO_ROOT / b
    if b.resolve() != DEFAULT_PROXY_BIN.resolve():
        if not (b.is_file() and os.access(b, os.X_OK)):
            raise HarnessError(f"proxy binary {b} is missing or not executable")
        return str(b), None
    newest, name = newest_source()
    have = b.is_file() and os.access(b, os.X_OK)
    stale = have and b.stat().st_mtime < newest
    if have and not stale:
        return str(b), None
    why = "missing" if not have else f"older than {name}"
    if args.no_build:
        if not have:
            raise HarnessError(f"{b} is missing: build it with `cargo build --release -p "
                               "lagwise-proxy` (or drop --no-build)")
        return str(b), f"the proxy binary is {why} (--no-build: measured as it is)"
    log(f"== building lagwise-proxy: the binary is {why} (cargo build --release -p "
        "lagwise-proxy)")
    out = workdir / "cargo-build.log"
    t0 = time.monotonic()
    try:
        with open(out, "wb") as f:
            p = subprocess.run(["cargo", "build", "--release", "-p", "lagwise-proxy"],
                               cwd=REPO_ROOT, stdout=f, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, timeout=args.build_timeout)
        rc = p.returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    except OSError as e:
        rc = f"{type(e).__name__}: {e}"
    took = time.monotonic() - t0
    if rc == 0:
        log(f"  built in {took:.0f}s")
        return str(b), None
    text = out.read_text(errors="replace") if out.exists() else ""
    errs = [ln for ln in text.splitlines() if ln.startswith("error")]
    first = short(errs[0] if errs else (text.strip().splitlines() or ["no output"])[-1], 150)
    if not have:
        raise HarnessError(f"cargo build --release -p lagwise-proxy failed ({rc}): {first}; "
                           f"full output in {out}")
    mt = time.strftime("%H:%M:%S", time.localtime(b.stat().st_mtime))
    return str(b), (f"cargo build failed ({rc}, {len(errs)} error lines, first: {first}); "
                    f"measuring the existing binary from {mt}, older than {name}")


# --------------------------------------------------------------------------- the bench

class Bench:
    def __init__(self, args, workdir: Path, proxy_bin: str, redis_bin: str):
        self.args = args
        self.workdir = workdir
        self.proxy_bin = proxy_bin
        self.redis_bin = redis_bin
        self.live: list = []
        self.nodes: list[cvr.Node] = []
        self.primaries: list[int] = []     # ports
        self.ranges: list[tuple[int, int, int, int]] = []
        self.standalone: list[nvr.Server] = []
        self.proxy: Proc | None = None
        self.twem: Proc | None = None
        self.avoid: set[int] = set()
        self.direct_prefixes: dict[int, str] = {}  # primary port -> "key:{tag}:"
        self.runs: list[dict] = []
        self.probes: list[dict] = []

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
            self.nodes.append(cvr.Node(f"redis-{p}", self.redis_bin, d, p, a))
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
            # All six must agree on three slot ranges before the proxy learns the topology.
            while time.monotonic() - t0 < a.create_timeout:
                views = {tuple(cvr.slot_owners(c.call("CLUSTER", "SLOTS"))) for c in conns}
                if len(views) == 1:
                    view = next(iter(views))
                    if (len(view) == cvr.PRIMARIES and all(r == 1 for *_x, r in view)
                            and sum(e - s + 1 for s, e, _p, _r in view) == cvr.SLOTS):
                        break
                time.sleep(0.05)
            else:
                raise HarnessError(f"the nodes do not agree on 3 slot ranges with a replica "
                                   f"each within {a.create_timeout:.0f}s")
        finally:
            for c in conns:
                c.close()
        self.ranges = list(view)
        self.primaries = [p for _s, _e, p, _r in self.ranges]
        log(f"  cluster    6 redis-server nodes on {self.nodes[0].port}-{self.nodes[-1].port}"
            f" formed in {time.monotonic() - t0:.1f}s; primaries "
            + ", ".join(f"{p} (slots {s}-{e})" for s, e, p, _r in self.ranges))

    def start_proxy(self) -> None:
        port = nvr.free_port(self.avoid)
        self.avoid.add(port)
        seeds = ",".join(f"{HOST}:{n.port}" for n in self.nodes)
        d = self.workdir / "proxy"
        d.mkdir()
        # Run a private copy: a concurrent `cargo build` replaces target/release/lagwise-proxy,
        # and perf cannot resolve the symbols of a deleted binary.
        copy = d / "lagwise-proxy"
        shutil.copy2(self.proxy_bin, copy)
        argv = [str(copy), "--listen", f"{HOST}:{port}", "--seeds", seeds]
        argv += self.args.proxy_arg
        self.proxy = Proc("lagwise-proxy", argv, d, port, self.args)
        self.live.append(self.proxy)
        self.proxy.start()
        log(f"  proxy      {' '.join(argv)}  (pid {self.proxy.pid}; a copy of "
            f"{self.proxy_bin})")

    def start_twem(self) -> None:
        for i in range(3):
            d = self.workdir / f"standalone-{i + 1}"
            d.mkdir()
            s = nvr.Server(f"redis-standalone-{i + 1}", self.redis_bin, d, None,
                           self.args.startup_timeout, self.args.stop_timeout)
            self.live.append(s)
            s.start(self.avoid)
            self.avoid.add(s.port)
            self.standalone.append(s)
        port = nvr.free_port(self.avoid)
        self.avoid.add(port)
        stats = nvr.free_port(self.avoid)
        self.avoid.add(stats)
        d = self.workdir / "nutcracker"
        d.mkdir()
        conf = d / "nutcracker.yml"
        conf.write_text(
            "lagwise_bench:\n"
            f"  listen: {HOST}:{port}\n"
            "  redis: true\n"
            "  hash: fnv1a_64\n"
            "  distribution: ketama\n"
            "  server_connections: 1\n"
            "  auto_eject_hosts: false\n"
            "  preconnect: true\n"
            "  servers:\n"
            + "".join(f"   - {HOST}:{s.port}:1 server{i + 1}\n"
                      for i, s in enumerate(self.standalone)))
        t = subprocess.run([self.args.nutcracker_bin, "-t", "-c", str(conf)],
                           capture_output=True, stdin=subprocess.DEVNULL, timeout=30)
        if t.returncode != 0:
            raise HarnessError(f"nutcracker -t rejects {conf}: "
                               f"{(t.stdout + t.stderr).decode(errors='replace').strip()}")
        argv = [self.args.nutcracker_bin, "-c", str(conf), "-s", str(stats), "-a", HOST,
                "-o", str(d / "nutcracker.log"), "-p", str(d / "nutcracker.pid")]
        self.twem = Proc("nutcracker", argv, d, port, self.args)
        self.live.append(self.twem)
        self.twem.start()
        log(f"  twemproxy  {' '.join(argv)}  (pid {self.twem.pid}) -> redis-server "
            + ", ".join(str(s.port) for s in self.standalone))

    # ---- keyspaces

    def owner(self, slot: int) -> int:
        for s, e, p, _r in self.ranges:
            if s <= slot <= e:
                return p
        raise HarnessError(f"no owner for slot {slot}")

    def learn_direct_prefixes(self) -> None:
        """redis-benchmark --cluster puts `{tag}` into its keys, the hash tag of the first
        slot of the node a client talks to (key:{tag}:__rand_int__): one slot per primary.
        A tiny SET run with -r 1 writes key:{tag}:000000000000 on each primary; KEYS finds
        the prefixes, so that the pre-load can fill exactly the keys GET will read."""
        argv = ["redis-benchmark", "--cluster", "-h", HOST, "-p", str(self.primaries[0]),
                "--threads", "1", "-t", "set", "-n", "300", "-c", "3", "-r", "1",
                "-d", str(self.args.datasize), "--csv"]
        p = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, timeout=60)
        if p.returncode != 0:
            raise HarnessError(f"redis-benchmark --cluster probe failed: "
                               f"{short(p.stderr.decode(errors='replace') or 'no output')}")
        for port in self.primaries:
            with Resp(port) as c:
                keys = [k.decode(errors="replace") for k in c.call("KEYS", "key:{*")]
                if keys:
                    c.call("DEL", *keys)
            if len(keys) != 1 or not keys[0].endswith(":" + "0" * 12):
                raise HarnessError(f"expected one key:{{tag}}:000000000000 on {port} after "
                                   f"the probe, found {keys[:5]}")
            prefix = keys[0][:-12]
            if self.owner(key_slot(prefix.encode() + b"0")) != port:
                raise HarnessError(f"{prefix} does not hash to {port}'s slots")
            self.direct_prefixes[port] = prefix

    def preload(self) -> None:
        """key:%012d (16-byte values val:%012d) for every -r index: in the cluster (by slot
        owner, straight to the primaries) for the proxy, through nutcracker for the
        standalone servers; key:{tag}:%012d on each primary for direct GETs."""
        r = self.args.keyspace
        t0 = time.monotonic()
        per: dict[int, list[bytes]] = {p: [] for p in self.primaries}
        tmpl = b"*3\r\n$3\r\nSET\r\n$16\r\nkey:%012d\r\n$16\r\nval:%012d\r\n"
        for i in range(r):
            k = b"key:%012d" % i
            per[self.owner(key_slot(k))].append(tmpl % (i, i))
        for port, prefix in self.direct_prefixes.items():
            pk = prefix.encode()
            t = (b"*3\r\n$3\r\nSET\r\n$%d\r\n" % (len(pk) + 12) + pk.replace(b"%", b"%%")
                 + b"%012d\r\n$16\r\nval:%012d\r\n")
            per[port].extend(t % (i, i) for i in range(r))
        for port, cmds in per.items():
            nvr.load_with_socket(port, b"".join(cmds), len(cmds))
        nvr.load_with_socket(self.twem.port, nvr.resp_set_payload(r, None), r)
        # Check: every key where it belongs, readable through each path.
        sizes = {p: int(rvr.call(p, "DBSIZE")) for p in self.primaries}
        want = {p: len(per[p]) for p in self.primaries}
        if sizes != want:
            raise HarnessError(f"cluster DBSIZE after the pre-load {sizes}, expected {want}")
        tw = sum(s.dbsize() for s in self.standalone)
        if tw != r:
            raise HarnessError(f"standalone DBSIZE sum {tw} after the pre-load, expected {r}")
        i = r // 2
        for name, port in (("proxy", self.proxy.port), ("twemproxy", self.twem.port)):
            got = rvr.call(port, "GET", f"key:{i:012d}")
            if got != b"val:%012d" % i:
                raise HarnessError(f"GET key:{i:012d} through {name} returned {got!r}")
            keys = [f"key:{j:012d}" for j in range(i, i + MGET_KEYS)]
            got = rvr.call(port, "MGET", *keys)
            if got != [b"val:%012d" % j for j in range(i, i + MGET_KEYS)]:
                raise HarnessError(f"MGET of {MGET_KEYS} keys through {name} returned "
                                   f"{str(got)[:200]}")
        log(f"  pre-load   {r:,} keys key:%012d in the cluster and behind twemproxy, "
            f"{r:,} key:{{tag}}:%012d per primary for direct GETs "
            f"({', '.join(self.direct_prefixes.values())}); checked in "
            f"{time.monotonic() - t0:.1f}s")

    # ---- runs

    def argv(self, kind: str, test: str, mode: Mode, n: int) -> list[str]:
        a = self.args
        if kind == "direct":
            argv = ["redis-benchmark", "--cluster", "-h", HOST, "-p", str(self.primaries[0])]
            if a.direct_threads:
                argv += ["--threads", str(a.direct_threads)]
        else:
            port = self.proxy.port if kind == "proxy" else self.twem.port
            argv = ["redis-benchmark", "-h", HOST, "-p", str(port)]
        argv += ["-n", str(n), "-c", str(mode.clients), "-r", str(a.keyspace),
                 "-d", str(a.datasize), "--csv"]
        if mode.pipeline > 1:
            argv += ["-P", str(mode.pipeline)]
        if test == "mget":
            argv += ["MGET", *(["key:__rand_int__"] * MGET_KEYS)]
        else:
            argv += ["-t", test]
        return argv

    def server_set(self, kind: str) -> tuple[list, list[int]]:
        """(the servers whose CPU counts for this target, the ports that serve its reads
        and writes)."""
        if kind == "twem":
            return self.standalone, [s.port for s in self.standalone]
        return self.nodes, list(self.primaries)

    @staticmethod
    def served(ports: list[int]) -> dict[str, int]:
        """Commands the serving nodes executed: SET/GET/MGET calls and keyspace hits and
        misses (INFO commandstats/stats) - the check that redis-benchmark's requests
        reached a server rather than being answered with an error."""
        tot = {"set": 0, "get": 0, "mget": 0, "hits": 0, "misses": 0}
        for p in ports:
            with Resp(p) as c:
                cs = nvr.parse_info(c.call("INFO", "commandstats"))
                st = nvr.parse_info(c.call("INFO", "stats"))
            for cmd in ("set", "get", "mget"):
                m = re.search(r"calls=(\d+)", cs.get(f"cmdstat_{cmd}", ""))
                tot[cmd] += int(m.group(1)) if m else 0
            tot["hits"] += int(st.get("keyspace_hits", 0))
            tot["misses"] += int(st.get("keyspace_misses", 0))
        return tot

    def run_once(self, kind: str, test: str, mode: Mode, n: int) -> dict:
        a = self.args
        argv = self.argv(kind, test, mode, n)
        servers, ports = self.server_set(kind)
        procs = {"proxy": self.proxy, "twem": self.twem}
        for p in self.live:
            if not p.alive():
                raise HarnessError(f"{p.name} is no longer running{rvr.log_hint(p)}")
        s0 = self.served(ports)
        with CpuMeter(self.live) as meter:
            c0 = {k: proc_cpu(p.pid) for k, p in procs.items()}
            v0 = [proc_cpu(s.pid) for s in servers]
            t0 = time.monotonic()
            try:
                p = subprocess.run(argv, capture_output=True, timeout=a.run_timeout,
                                   stdin=subprocess.DEVNULL)
            except subprocess.TimeoutExpired:
                return {"error": f"redis-benchmark timed out after {a.run_timeout:.0f}s",
                        "argv": argv}
            wall = time.monotonic() - t0
            c1 = {k: proc_cpu(p_.pid) for k, p_ in procs.items()}
            v1 = [proc_cpu(s.pid) for s in servers]
        s1 = self.served(ports)
        out = p.stdout.decode(errors="replace")
        err = p.stderr.decode(errors="replace").strip()
        res: dict = {"kind": kind, "test": test, "mode": mode.key, "n": n, "argv": argv,
                     "wall_s": round(wall, 3), "other_load": meter.frac}
        csv_lines = [ln for ln in out.splitlines() if ln.startswith('"')]
        try:
            rows = nvr.parse_csv("\n".join(csv_lines))
        except HarnessError as e:
            rows, err = [], f"{err} {e}".strip()
        if p.returncode != 0 or not rows:
            why = (err.splitlines()[-1] if err else
                   (out.strip().splitlines() or ["no output"])[-1])
            res["error"] = f"redis-benchmark rc {p.returncode}: {short(why, 200)}"
            return res
        row = rows[-1]
        res.update(rps=row["rps"], p50_ms=row["p50_latency_ms"], p99_ms=row["p99_latency_ms"],
                   avg_ms=row["avg_latency_ms"], max_ms=row["max_latency_ms"])
        for k in procs:
            if c0[k] is not None and c1[k] is not None:
                res[f"{k}_cpu_us"] = (c1[k] - c0[k]) / n * 1e6
        if None not in v0 and None not in v1:
            res["servers_cpu_us"] = (sum(v1) - sum(v0)) / n * 1e6
        d = {k: s1[k] - s0[k] for k in s0}
        keys = MGET_KEYS if test == "mget" else 1
        if test == "set":
            seen = d["set"]
        else:
            seen = d["hits"] + d["misses"]
            res["hit_ratio"] = d["hits"] / seen if seen else None
        res["served_ratio"] = seen / (n * keys)
        res["backend_calls"] = d[test]
        if res["served_ratio"] < 0.99:
            res["error"] = (f"the servers executed only {res['served_ratio'] * 100:.1f}% of "
                            f"the {n:,} {test.upper()}s (x{keys} keys): the rest were "
                            "answered without reaching a server")
        return res

    def measured(self, kind: str, test: str, mode: Mode, n: int) -> dict:
        """A run, repeated (up to --load-retries times) while other processes used more
        than --max-other-load of the machine; the least loaded attempt is kept."""
        a = self.args
        tries = []
        for _ in range(1 + a.load_retries):
            r = self.run_once(kind, test, mode, n)
            tries.append(r)
            if "error" in r or r["other_load"] is None or r["other_load"] <= a.max_other_load:
                break
        best = min(tries, key=lambda r: (r.get("other_load") or 0.0))
        if "error" in tries[-1]:
            best = tries[-1]
        best["discarded"] = [{"rps": t.get("rps"), "other_load": t.get("other_load")}
                             for t in tries if t is not best]
        return best

    def calibrate(self, kinds: list[str], test: str, mode: Mode) -> int:
        """One short unrecorded run per target (also the warm-up); -n for the rounds is
        the fastest target's rps x --duration, so that every run lasts >= --duration s."""
        a = self.args
        if a.requests:
            return a.requests
        best = 0.0
        for kind in kinds:
            r = self.run_once(kind, test, mode, mode.probe_n)
            self.probes.append(r)
            if "rps" in r:
                best = max(best, r["rps"])
        if best <= 0:
            return mode.probe_n
        step = 10000 if mode.clients > 1 else 1000
        n = int(math.ceil(best * a.duration / step) * step)
        return max(n, mode.probe_n)

    def measure_row(self, test: str, mode: Mode) -> dict:
        a = self.args
        kinds = [k for k in KINDS if not (test == "mget" and k == "direct")]
        n = self.calibrate(kinds, test, mode)
        row: dict = {"test": test, "mode": mode.key, "mode_name": mode.name, "n": n,
                     "runs": {k: [] for k in KINDS}, "na": {}}
        if test == "mget":
            row["na"]["direct"] = "multi-key across slots (see note)"
        for rnd in range(a.rounds):
            order = kinds[rnd % len(kinds):] + kinds[:rnd % len(kinds)]
            parts = []
            for kind in order:
                if kind in row["na"]:
                    continue
                r = self.measured(kind, test, mode, n)
                r["round"] = rnd + 1
                self.runs.append(r)
                if "error" in r:
                    row["na"][kind] = r["error"]
                    parts.append(f"{LABEL[kind]} n/a ({short(r['error'], 80)})")
                    continue
                row["runs"][kind].append(r)
                extra = ""
                if kind in ("proxy", "twem") and f"{kind}_cpu_us" in r:
                    extra = f", {r[kind + '_cpu_us']:.1f} µs cpu/req"
                ol = r.get("other_load")
                parts.append(f"{LABEL[kind]} {r['rps']:,.0f} rps p50 {r['p50_ms']:.3f}"
                             f"{extra}" + (f" (other load {ol * 100:.0f}%)" if ol else "")
                             + (f" [{len(r['discarded'])} rerun]" if r["discarded"] else ""))
            log(f"  {test.upper():<4} {mode.name:<11} round {rnd + 1}/{a.rounds} n={n:,}: "
                + " | ".join(parts))
        return row

    # ---- perf

    def perf_profile(self, test: str, mode: Mode, n: int, out_dir: Path) -> list[str]:
        """One extra (unrecorded) proxy run under `perf record -p <proxy pid>` (no call
        graph: the release profile has no frame pointers); returns perf report's top lines."""
        data = out_dir / f"perf-{test}-{mode.key}.data"
        perf = subprocess.Popen(["perf", "record", "-F", str(self.args.perf_freq), "-p",
                                 str(self.proxy.pid), "-o", str(data)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            time.sleep(0.3)
            r = self.run_once("proxy", test, mode, n)
        finally:
            if perf.poll() is None:
                perf.send_signal(signal.SIGINT)
            try:
                perf.wait(timeout=30)
            except subprocess.TimeoutExpired:
                perf.kill()
                perf.wait()
        def report(fields: str, limit: str) -> list[str]:
            rep = subprocess.run(["perf", "report", "-i", str(data), "--stdio",
                                  "--no-children", "-F", fields, "--percent-limit", limit],
                                 capture_output=True, stdin=subprocess.DEVNULL, timeout=120)
            return [" ".join(ln.split()) for ln in
                    rep.stdout.decode(errors="replace").splitlines()
                    if ln.strip() and not ln.startswith("#")]
        by_dso = report("overhead,dso", "0.5")
        syms = report("overhead,dso,sym", "0.5")
        head = (f"{r.get('rps', 0):,.0f} rps under perf" if "rps" in r
                else f"run failed: {r.get('error')}")
        head += "; by binary: " + ", ".join(by_dso[:6])
        return [head] + syms[:self.args.perf_lines]


# --------------------------------------------------------------------------- summary

def med(runs: list[dict], key: str):
    v = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(v) if v else None


def summarize(row: dict, mode: Mode) -> dict:
    s: dict = {"test": row["test"], "mode": row["mode"], "mode_name": mode.name,
               "n": row["n"]}
    for k in KINDS:
        runs = row["runs"][k]
        s[k] = {"rps": med(runs, "rps"), "p50_ms": med(runs, "p50_ms"),
                "p99_ms": med(runs, "p99_ms"), "servers_cpu_us": med(runs, "servers_cpu_us"),
                "hit_ratio": med(runs, "hit_ratio"),
                "rps_spread": spread([r["rps"] for r in runs]),
                "p50_values": [r["p50_ms"] for r in runs], "runs": len(runs),
                "na": row["na"].get(k)}
        if k in ("proxy", "twem"):
            s[k]["cpu_us"] = med(runs, f"{k}_cpu_us")
    d, p, t = (s[k]["rps"] for k in KINDS)
    s["proxy_direct"] = nvr.ratio(p, d)
    s["proxy_twem"] = nvr.ratio(p, t)
    dp, pp = s["direct"]["p50_ms"], s["proxy"]["p50_ms"]
    s["added_p50_us"] = (pp - dp) * 1000 if dp is not None and pp is not None else None
    # status marks (ok / MISS / miss? = a miss within the run-to-run spread)
    tgt = mode.rps_target() if row["test"] != "mget" else None  # MGET: no direct figure
    s["target_direct"] = tgt
    s["mark_direct"] = ratio_mark(s["proxy_direct"], tgt, s["direct"], s["proxy"])
    s["target_twem"] = TARGET_TWEM if mode.clients > 1 else None
    s["mark_twem"] = ratio_mark(s["proxy_twem"], s["target_twem"], s["twem"], s["proxy"])
    s["target_p50"] = mode.p50_target()
    s["mark_p50"] = ""
    if s["target_p50"] is not None and s["added_p50_us"] is not None:
        # noise in µs: the larger run-to-run range of the two p50s
        noise = max(((max(v) - min(v)) * 1000 if len(v) > 1 else 0.0)
                    for v in (s["direct"]["p50_values"], s["proxy"]["p50_values"]))
        ok = s["added_p50_us"] <= s["target_p50"]
        s["mark_p50"] = "ok" if ok else (
            "miss?" if s["added_p50_us"] - s["target_p50"] <= noise else "MISS")
    return s


def ratio_mark(ratio, target, a: dict, b: dict) -> str:
    if target is None:
        return ""
    if ratio is None:
        return "n/a"
    sp = [x for x in (a.get("rps_spread"), b.get("rps_spread")) if x is not None]
    return nvr.mark(ratio >= target, True, 1 - ratio / target, max(sp) if sp else None)


def fmt_ratio(v, target, mark_) -> str:
    if v is None:
        return "n/a"
    if target is None:
        return f"{v:.2f}"
    return f"{v:.2f} (>={target:.1f} {mark_})"


def fmt(v, spec: str, na: str = "-") -> str:
    return na if v is None else format(v, spec)


def print_table(rows: list[dict]) -> None:
    headers = ["test", "mode", "direct rps", "proxy rps", "twemproxy rps", "proxy/direct",
               "proxy/twemproxy", "p50 ms direct/proxy", "added p50 µs",
               "proxy cpu µs/req", "twem cpu µs/req", "servers cpu µs/req direct/proxy",
               "spread"]
    out = []
    for s in rows:
        d, p, t = s["direct"], s["proxy"], s["twem"]
        ap = s["added_p50_us"]
        ap_txt = "n/a" if ap is None else f"{ap:+.0f}"
        if s["target_p50"] is not None and ap is not None:
            ap_txt += f" (<={s['target_p50']:g} {s['mark_p50']})"
        sp = [x for x in (d["rps_spread"], p["rps_spread"], t["rps_spread"]) if x is not None]
        out.append([
            s["test"].upper() + (f" x{MGET_KEYS}" if s["test"] == "mget" else ""),
            s["mode_name"],
            "n/a" if d["na"] and d["rps"] is None else fmt(d["rps"], ",.0f"),
            fmt(p["rps"], ",.0f", "n/a"), fmt(t["rps"], ",.0f", "n/a"),
            fmt_ratio(s["proxy_direct"], s["target_direct"], s["mark_direct"]),
            fmt_ratio(s["proxy_twem"], s["target_twem"], s["mark_twem"]),
            f"{fmt(d['p50_ms'], '.3f', 'n/a')}/{fmt(p['p50_ms'], '.3f', 'n/a')}",
            ap_txt,
            fmt(p.get("cpu_us"), ".2f"), fmt(t.get("cpu_us"), ".2f"),
            f"{fmt(d['servers_cpu_us'], '.2f', 'n/a')}/{fmt(p['servers_cpu_us'], '.2f')}",
            nvr.pct(max(sp) if sp else None),
        ])
    nvr.print_table(headers, out, right={2, 3, 4, 9, 10, 12})


def print_details(rows: list[dict]) -> None:
    headers = ["test", "mode", "n", "p50 ms twem", "p99 ms direct/proxy/twem",
               "GET hit % direct/proxy/twem", "twem servers cpu µs/req",
               "backend cmds/req proxy/twem"]
    out = []
    for s in rows:
        d, p, t = s["direct"], s["proxy"], s["twem"]
        hit = "-"
        if s["test"] != "set":
            hit = "/".join(fmt(x["hit_ratio"] * 100 if x["hit_ratio"] is not None else None,
                               ".1f") for x in (d, p, t))
        out.append([
            s["test"].upper(), s["mode_name"], f"{s['n']:,}", fmt(t["p50_ms"], ".3f"),
            "/".join(fmt(x["p99_ms"], ".3f") for x in (d, p, t)), hit,
            fmt(t["servers_cpu_us"], ".2f"),
            "/".join(fmt(s.get(f"{k}_backend_per_req"), ".2f") for k in ("proxy", "twem")),
        ])
    nvr.print_table(headers, out, right={2, 3, 6})


# --------------------------------------------------------------------------- main

def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description="lagwise-proxy vs direct cluster access (redis-benchmark --cluster) vs "
                    "twemproxy (nutcracker), in the same run: rps, p50, CPU per request.",
        formatter_class=nvr._HelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 1 round of ~1 s runs")
    ap.add_argument("--proxy-bin", default=str(DEFAULT_PROXY_BIN),
                    help="lagwise-proxy binary; the default one is built with cargo when "
                         "missing or older than its sources")
    ap.add_argument("--no-build", action="store_true",
                    help="never run cargo; measure the binary as it is (WARNING if stale)")
    ap.add_argument("--build-timeout", type=float, default=1800.0)
    ap.add_argument("--proxy-arg", action="append", default=[],
                    help="extra argument for the proxy (repeat), e.g. --proxy-arg=--read-policy "
                         "--proxy-arg=prefer-replica")
    ap.add_argument("--redis-bin", default=None,
                    help="redis-server binary (default: from PATH)")
    ap.add_argument("--nutcracker-bin", default=None,
                    help="nutcracker binary (default: from PATH or /usr/sbin/nutcracker)")
    ap.add_argument("--tests", default=",".join(TESTS),
                    help="comma-separated subset of " + ",".join(TESTS))
    ap.add_argument("--no-c1", action="store_true",
                    help="skip the -c 1 latency mode (the proxy's hop latency without "
                         "queueing)")
    ap.add_argument("--rounds", type=int, default=None,
                    help="runs per target and row, rotating which target goes first "
                         "[default 3; --quick 1]")
    ap.add_argument("--duration", type=float, default=None,
                    help="seconds per run for the fastest target: -n = its calibration "
                         "rps x this [default 3; --quick 1]")
    ap.add_argument("-n", "--requests", type=int, default=None,
                    help="fixed -n for every run (skips the calibration)")
    ap.add_argument("-r", "--keyspace", type=int, default=100000,
                    help="redis-benchmark -r; that many keys are pre-loaded per keyspace")
    ap.add_argument("-d", "--datasize", type=int, default=16, help="redis-benchmark -d")
    ap.add_argument("--direct-threads", type=int, default=1,
                    help="redis-benchmark --threads for --cluster (0: its default, one "
                         "thread per primary). 1 keeps the client single-threaded like the "
                         "proxy/twemproxy runs")
    ap.add_argument("--perf", action="store_true",
                    help="after the table, profile the proxy with perf record during one "
                         "extra run per row of the -c 50 modes and print the top symbols")
    ap.add_argument("--perf-freq", type=int, default=999)
    ap.add_argument("--perf-lines", type=int, default=15)
    ap.add_argument("--max-other-load", type=float, default=0.10,
                    help="a run during which other processes used more than this fraction "
                         "of the machine is repeated")
    ap.add_argument("--load-retries", type=int, default=None,
                    help="how many times a run is repeated for --max-other-load (the least "
                         "loaded attempt is kept) [default 2; --quick 0]")
    ap.add_argument("--node-timeout", type=int, default=5000,
                    help="--cluster-node-timeout of the cluster nodes, ms")
    ap.add_argument("--port-base", type=int, default=35000,
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
    a.rounds = a.rounds if a.rounds is not None else (1 if q else 3)
    a.duration = a.duration if a.duration is not None else (1.0 if q else 3.0)
    a.load_retries = a.load_retries if a.load_retries is not None else (0 if q else 2)
    a.tests = [t.strip().lower() for t in a.tests.split(",") if t.strip()]
    bad = [t for t in a.tests if t not in TESTS]
    if bad or not a.tests:
        ap.error(f"--tests takes a subset of {','.join(TESTS)}")
    if min(a.rounds, a.keyspace, a.datasize) < 1 or a.duration <= 0:
        ap.error("--rounds, -r, -d and --duration must be positive")
    return a


def nutcracker_version(binary: str) -> str:
    """`nutcracker -V` prints "This is nutcracker-0.5.0" on stderr."""
    try:
        p = subprocess.run([binary, "-V"], capture_output=True, stdin=subprocess.DEVNULL,
                           timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"? ({type(e).__name__})"
    text = (p.stdout + p.stderr).decode(errors="replace")
    m = re.search(r"nutcracker-[\w.]+", text)
    return m.group(0) if m else (text.strip().splitlines() or ["?"])[0]


def _sigterm(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, _sigterm)
    redis_bin = args.redis_bin or shutil.which("redis-server")
    args.nutcracker_bin = (args.nutcracker_bin or shutil.which("nutcracker")
                           or ("/usr/sbin/nutcracker" if os.path.exists("/usr/sbin/nutcracker")
                               else None))
    missing = [t for t, p in (("redis-server", redis_bin),
                              ("redis-benchmark", shutil.which("redis-benchmark")),
                              ("redis-cli", shutil.which("redis-cli")),
                              ("nutcracker", args.nutcracker_bin)) if not p]
    if missing:
        log(f"error: not found: {', '.join(missing)} (apt-get install redis-server "
            "redis-tools nutcracker)")
        return 2
    if args.perf and not shutil.which("perf"):
        log("error: --perf needs perf (apt-get install linux-perf)")
        return 2

    modes = [Mode("-c 50", 50, 1, 30000), Mode("-c 50 -P 16", 50, 16, 300000)]
    if not args.no_c1:
        modes.append(Mode("-c 1", 1, 1, 5000))
    workdir = Path(tempfile.mkdtemp(prefix="lagwise-proxy-bench-"))
    status = 0
    results: dict = {"config": dict(vars(args))}
    bench = None
    t_start = time.monotonic()
    try:
        proxy_bin, stale = ensure_proxy_bin(args, workdir)
        facts = nvr.machine_facts(proxy_bin, redis_bin)
        facts["nutcracker"] = nutcracker_version(args.nutcracker_bin)
        results["machine"] = facts
        nvr.print_facts(facts, ("proxy", "redis"))
        log(f"  twemproxy  {facts['nutcracker']} ({args.nutcracker_bin})")
        if stale:
            facts["node"]["stale"] = stale
            log(f"  WARNING    {stale}")
        log(f"  config     tests={','.join(args.tests)} modes="
            f"{'; '.join(m.name for m in modes)} rounds={args.rounds} "
            f"duration>={args.duration:g}s r={args.keyspace:,} d={args.datasize} "
            f"direct: --cluster --threads {args.direct_threads or 'default'}")
        busy = nvr.idle_check()
        results["idle_check_busy_frac"] = busy
        if busy is not None and busy > 0.15:
            log(f"  WARNING    {busy * 100:.0f}% of the machine's CPU is busy before the "
                "benchmark starts: other work skews these numbers")
        log(f"  workdir    {workdir}")
        log("")
        log("== start")
        bench = Bench(args, workdir, proxy_bin, redis_bin)
        bench.start_cluster()
        bench.start_proxy()
        bench.start_twem()
        bench.learn_direct_prefixes()
        bench.preload()

        rows, table = [], []
        for mode in modes:
            log("")
            log(f"== {mode.name}: redis-benchmark {mode.name} -r {args.keyspace} "
                f"-d {args.datasize} --csv; direct = --cluster, proxy and twemproxy = their "
                "port")
            for test in args.tests:
                row = bench.measure_row(test, mode)
                rows.append(row)
                s = summarize(row, mode)
                for k in ("proxy", "twem"):
                    calls = [r["backend_calls"] / r["n"] for r in row["runs"][k]]
                    s[f"{k}_backend_per_req"] = statistics.median(calls) if calls else None
                table.append(s)
        results["rows"] = table
        results["runs"] = bench.runs
        results["probes"] = bench.probes

        log("")
        log(f"== results (proxy: {proxy_bin})")
        log("")
        print_table(table)
        log("")
        log("(medians over the rounds; direct = redis-benchmark --cluster straight to the 3 "
            "primaries; proxy/direct and proxy/twemproxy = rps ratios, targets from issue 7;\n"
            " added p50 = proxy p50 - direct p50; cpu µs/req = CPU time (utime+stime, all "
            "threads) of the proxy / nutcracker process per request;\n"
            " servers cpu = all 6 cluster nodes (primaries + replicas) per request, direct vs "
            "through the proxy; spread = largest (max-min)/median of the three targets' rps;\n"
            " miss? = a miss within that spread (p50: within the rounds' p50 range))")
        log("")
        print_details(table)
        log("")
        log(f"(backend cmds/req = SET/GET/MGET calls the serving primaries executed per "
            f"benchmark request; GET hit % = keyspace hits / lookups)")
        notes = [
            f"MGET x{MGET_KEYS}: direct is n/a - redis-benchmark --cluster can only send a "
            "multi-key command whose keys carry the same {tag} (one slot), a different "
            "workload from 10 random keys that the proxy and twemproxy split by slot / by "
            "server and merge.",
            "twemproxy's 3 standalone servers have no replicas, the cluster's primaries "
            "stream every SET to a replica on the same 2 cores: SET favours twemproxy.",
            "-c 50 p50 is mostly queueing (about 50 / rps), so its added p50 follows the "
            "rps ratio; -c 1 measures the extra hop without queueing (rps there is 1 / "
            "round trip, no target).",
        ]
        if args.direct_threads == 1:
            notes.append("direct runs use --threads 1 so that the benchmark client is one "
                         "thread in every column (redis-benchmark --cluster would otherwise "
                         "start one thread per primary, 3 threads on 2 cores).")
        for n_ in notes:
            log("note: " + n_)
        for row in rows:
            for k, why in row["na"].items():
                if not (row["test"] == "mget" and k == "direct"):
                    log(f"  {row['test'].upper()} {row['mode']} {LABEL[k]} n/a: {why}")
        other = [r["other_load"] for r in bench.runs if r.get("other_load") is not None]
        if other:
            md, mx = statistics.median(other), max(other)
            warn = ("  WARNING: other processes competed for CPU; rerun on an idle machine"
                    if mx >= 0.25 or md >= 0.05 else "")
            reruns = sum(len(r.get("discarded", [])) for r in bench.runs)
            log(f"other load during runs: median {md * 100:.0f}%, max {mx * 100:.0f}% of the "
                f"machine ({reruns} runs repeated for load > {args.max_other_load * 100:.0f}%)"
                + warn)
        if stale:
            log(f"WARNING: {stale}")
        marks = [(s, k) for s in table for k in ("mark_direct", "mark_twem", "mark_p50")
                 if s[k] in ("MISS", "miss?", "n/a")]
        by = {m: [f"{s['test'].upper()} {s['mode_name']} {k[5:]}" for s, k in marks
                  if s[k] == m] for m in ("MISS", "miss?", "n/a")}
        log(f"== summary: {len(by['MISS'])} MISS, {len(by['miss?'])} miss? (within the "
            f"spread), {len(by['n/a'])} n/a  (total {time.monotonic() - t_start:.0f}s)")
        for m, labels in by.items():
            if labels:
                log(f"  {m:<6} " + "; ".join(labels))
        if marks and args.fail_on_miss:
            status = 1

        if args.perf:
            log("")
            log("== perf: top symbols of the proxy process during one extra run per row "
                "(perf record -p, no call graph)")
            for s in table:
                mode = next(m for m in modes if m.key == s["mode"])
                if mode.clients == 1:
                    continue
                lines = bench.perf_profile(s["test"], mode, s["n"], workdir)
                log(f"-- {s['test'].upper()} {mode.name}: {lines[0]}")
                for ln in lines[1:]:
                    log("   " + ln)
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
            stop_all(bench.live)
            results.setdefault("runs", bench.runs)
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
