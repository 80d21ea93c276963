#!/usr/bin/env python3
"""Cluster mode of lagwise-node against redis-server, in the same run.

Two 6-node clusters (3 primaries x 1 replica), one of lagwise-node and one of redis-server,
every node started the same way (Valkey-style arguments: `--port P --bind 127.0.0.1
--cluster-enabled yes --cluster-config-file nodes-P.conf --cluster-node-timeout 2000 --dir D
--save "" --appendonly no --repl-diskless-sync-delay 0`), on loopback ports in 33000-33999
(cluster bus: +10000) checked free before use. Trials alternate redis and lagwise (ABBA...):

  create      fresh nodes; from the start of `redis-cli --cluster create <6 addrs>
              --cluster-replicas 1 --cluster-yes` until cluster_state:ok on all 6 nodes and
              all 3 replicas report master_link_status:up (polled every 20 ms);
  throughput  on a fresh cluster: redis-benchmark --cluster -t set,get -n 1000000 -r 1000000
              -P 16 -c 50 --csv; rps of SET and GET;
  failover    a thread writes one key of a primary's slots back to back (following MOVED);
              kill -9 of that primary; time from the kill until a write to that key sent after
              the kill is accepted (+OK) by whichever node claims the slot. The killed node is
              then restarted with the same port and dir, and must rejoin as a replica with the
              cluster healthy again before the next trial (which kills the next slot range's
              primary).

A step the subject cannot do becomes "n/a (reason)" for that figure; the run goes on. Prints a
markdown table measure | redis | lagwise | ratio | target | spread. Standard library only;
imports its server, RESP, CPU-accounting, trial-loop and output helpers from node_vs_redis.py
and replication_vs_redis.py. See bench/README.md.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import node_vs_redis as nvr  # noqa: E402
import replication_vs_redis as rvr  # noqa: E402
from node_vs_redis import (  # noqa: E402
    HOST, REPO_ROOT, HarnessError, Resp, RespError, Server, log, parse_info,
)
from replication_vs_redis import CpuMeter, Side, TrialError, short, spread  # noqa: E402

PHASES = ("create", "throughput", "failover")
NODES, PRIMARIES, REPLICAS = 6, 3, 3
BUS_OFFSET = 10000  # cluster bus port = port + 10000 (redis and lagwise default)
SLOTS = 16384

# The rows of the final table: (phase.metric, label, unit, kind, target, aggregate).
# kind "time": lower is better, ratio <= target; "tput": higher is better, ratio >= target;
# "info": no target. aggregate: how the row summarises the trials (median or max).
ROWS = [
    ("create.create_s", "cluster formation: create -> state ok x6, 3 replica links up",
     "s", "time", 1.0, "median"),
    ("create.state_s", "formation: cluster_state:ok on all 6 (first seen)", "s", "info",
     None, "median"),
    ("create.links_s", "formation: 3 replicas master_link_status:up (first seen)", "s",
     "info", None, "median"),
    ("create.cli_s", "formation: redis-cli --cluster create exits", "s", "info", None,
     "median"),
    ("throughput.set_rps", "SET rps (redis-benchmark --cluster -P 16 -c 50)", "rps", "tput",
     1.0, "median"),
    ("throughput.get_rps", "GET rps (redis-benchmark --cluster -P 16 -c 50)", "rps", "tput",
     1.0, "median"),
    ("failover.failover_s", "failover: kill -9 primary -> write accepted, median", "s",
     "time", 0.75, "median"),
    ("failover.failover_s", "failover: kill -9 primary -> write accepted, worst", "s",
     "info", None, "max"),
    ("failover.rejoin_s", "failover: restart killed node -> healthy as replica", "s", "info",
     None, "median"),
]
# Units for the per-trial lines printed by replication_vs_redis's trial loop.
rvr.UNITS.update({"create_s": "s", "state_s": "s", "links_s": "s", "cli_s": "s", "set_rps": "rps", "get_rps": "rps",
                  "failover_s": "s", "rejoin_s": "s"})


# --------------------------------------------------------------------------- hash slots

def crc16(data: bytes) -> int:
    """CRC16-CCITT (XMODEM), the cluster's key hash."""
    crc = 0
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return crc


def key_slot(key: bytes) -> int:
    s = key.find(b"{")
    if s >= 0:
        e = key.find(b"}", s + 1)
        if e > s + 1:
            key = key[s + 1:e]
    return crc16(key) % SLOTS


assert crc16(b"123456789") == 0x31C3 and key_slot(b"foo") == 12182


def key_in_range(start: int, end: int, prefix: str) -> str:
    for i in range(1_000_000):
        k = f"{prefix}:{i}"
        if start <= key_slot(k.encode()) <= end:
            return k
    raise HarnessError(f"no key found for slots {start}-{end}")


# --------------------------------------------------------------------------- ports

def port_free(port: int) -> bool:
    """True if a server could listen on HOST:port now (probed the way servers bind:
    SO_REUSEADDR, so a TIME_WAIT leftover does not count as busy)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
            s.listen(1)
        except OSError:
            return False
    return True


class PortPool:
    """Blocks of consecutive client ports in [base, base + size) whose bus ports (+10000)
    are free too. Ports are not reused within a run (so no node can gossip with a stale
    node of an earlier cluster), except after the range wrapped around."""

    def __init__(self, base: int, size: int):
        if base < 1024 or base + size + BUS_OFFSET > 65536:
            raise HarnessError(f"port range {base}-{base + size - 1} (+{BUS_OFFSET} for the "
                               "bus) does not fit below 65536")
        self.base, self.size, self.next = base, size, base
        self.handed: set[int] = set()

    def block(self, n: int = NODES) -> list[int]:
        for _ in range(self.size):
            p = self.next
            if p + n > self.base + self.size:
                p = self.base
                self.handed.clear()  # wrapped: the earlier clusters are long gone
            self.next = p + 1
            ports = list(range(p, p + n))
            if any(x in self.handed for x in ports):
                continue
            if all(port_free(x) and port_free(x + BUS_OFFSET) for x in ports):
                self.handed.update(ports)
                self.next = p + n
                return ports
        raise HarnessError(f"no {n} consecutive free ports (and bus ports +{BUS_OFFSET}) in "
                           f"{self.base}-{self.base + self.size - 1}")


# --------------------------------------------------------------------------- nodes

def cluster_config(port: int, d: Path, node_timeout: int) -> list[str]:
    """The node's arguments after `--port P --bind HOST` (Server adds those)."""
    return ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
            "--cluster-node-timeout", str(node_timeout), "--dir", str(d), "--save", "",
            "--appendonly", "no", "--repl-diskless-sync-delay", "0"]


class Node(Server):
    """A cluster node on a fixed port: a node restarted after kill -9 must come back on the
    same port with the same dir (nodes-P.conf) to rejoin. Logging, PING wait, stop and CPU
    accounting are Server's."""

    def __init__(self, name: str, binary: str, d: Path, port: int, args):
        super().__init__(name, binary, d, None, args.startup_timeout, args.stop_timeout,
                         config=cluster_config(port, d, args.node_timeout))
        self.fixed_port = port
        self.kills = 0
        self.launched = 0.0

    def launch(self) -> None:
        """Starts the process without waiting for it (six nodes start in parallel)."""
        self.starts += 1
        self.launched = time.monotonic()
        self.port = self.fixed_port
        self.log_path = self.workdir / f"{self.name}-{self.starts}.log"
        argv = [self.binary, "--port", str(self.port), "--bind", HOST, *self.config]
        with open(self.log_path, "wb") as logf:
            logf.write(("# " + " ".join(repr(a) if a == "" else a for a in argv)
                        + "\n").encode())
            logf.flush()
            self.proc = subprocess.Popen(
                argv, cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=logf,
                stderr=subprocess.STDOUT, start_new_session=True)

    def start(self, avoid=None) -> None:  # noqa: ARG002 (the port is fixed)
        self.launch()
        try:
            self._wait_ping()
        except HarnessError:
            self.stop()
            raise

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.kills += 1


def node_status(c: Resp) -> dict:
    st: dict = {}
    try:
        ci = parse_info(c.call("CLUSTER", "INFO"))
        ri = parse_info(c.call("INFO", "replication"))
    except RespError as e:  # e.g. -LOADING
        return {"error": short(e, 80)}
    st["state"] = ci.get("cluster_state")
    st["known"] = ci.get("cluster_known_nodes")
    st["role"] = {"slave": "replica", "replica": "replica"}.get(ri.get("role"), ri.get("role"))
    st["link"] = ri.get("master_link_status")
    st["replicas"] = ri.get("connected_slaves")
    return st


def formed(sts: list[dict]) -> tuple[bool, str]:
    """The formation condition: cluster_state:ok everywhere, 3 replicas with link up."""
    ok = sum(s.get("state") == "ok" for s in sts)
    reps = [s for s in sts if s.get("role") == "replica"]
    up = sum(s.get("link") == "up" for s in reps)
    errs = [s["error"] for s in sts if "error" in s]
    desc = (f"cluster_state:ok on {ok}/{len(sts)}, replicas {len(reps)}/{REPLICAS}, "
            f"links up {up}/{REPLICAS}" + (f", error {errs[0]}" if errs else ""))
    return ok == len(sts) and len(reps) == REPLICAS and up == REPLICAS, desc


def cluster_nodes_problems(raw) -> list[str]:
    """Flags in CLUSTER NODES that mean "not settled": fail, fail?, handshake, noaddr,
    a disconnected link, or fewer than 6 nodes."""
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
    lines = [ln.split() for ln in text.splitlines() if ln.strip()]
    out = []
    if len(lines) != NODES:
        out.append(f"{len(lines)} nodes known")
    for f in lines:
        if len(f) < 8:
            out.append(f"short line {' '.join(f)[:60]!r}")
            continue
        flags = set(f[2].split(","))
        bad = flags & {"fail", "fail?", "handshake", "noaddr"}
        if bad:
            out.append(f"{f[1].split('@')[0]} {','.join(sorted(bad))}")
        if f[7] != "connected":
            out.append(f"{f[1].split('@')[0]} {f[7]}")
    return out


def slot_owners(raw) -> list[tuple[int, int, int, int]]:
    """CLUSTER SLOTS -> sorted [(start, end, primary port, number of replicas)]."""
    out = []
    for r in raw or []:
        out.append((int(r[0]), int(r[1]), int(r[2][1]), len(r) - 3))
    return sorted(out)


# --------------------------------------------------------------------------- the write loop

class Writer(threading.Thread):
    """Writes one key back to back (SET key N), following MOVED; on a connection error it
    asks the next node of the cluster, on CLUSTERDOWN/TRYAGAIN/other errors it waits
    `pause`. Once `t_kill` is set, the first +OK to a SET sent at or after it is the
    recovery: (send time, reply time, port)."""

    def __init__(self, ports: list[int], key: str, target: int, pause: float,
                 timeout: float = 1.0):
        super().__init__(daemon=True)
        self.ports, self.key, self.target = list(ports), key, target
        self.pause, self.timeout = pause, timeout
        self.conns: dict[int, Resp] = {}
        self.t_kill: float | None = None
        self.first: tuple[float, float, int] | None = None
        self.recovered = threading.Event()
        self.halt = threading.Event()
        self.ok_before = 0
        self.writes = 0
        self.after: collections.Counter = collections.Counter()  # what the writes met
        self.crash: BaseException | None = None

    def _conn(self, port: int) -> Resp:
        c = self.conns.get(port)
        if c is None:
            c = Resp(port, timeout=self.timeout)
            self.conns[port] = c
        return c

    def _drop(self, port: int) -> None:
        c = self.conns.pop(port, None)
        if c is not None:
            c.close()

    def run(self) -> None:
        try:
            self._run()
        except BaseException as e:  # reported by the trial
            self.crash = e
        finally:
            for p in list(self.conns):
                self._drop(p)

    def _run(self) -> None:
        hops = 0
        while not self.halt.is_set():
            port = self.target
            self.writes += 1
            t_send = time.monotonic()
            armed = self.t_kill is not None and t_send >= self.t_kill
            try:
                r = self._conn(port).call("SET", self.key, self.writes)
            except RespError as e:
                words = str(e).split()
                kind = words[0] if words else "ERR"
                if armed:
                    self.after[kind] += 1
                if kind in ("MOVED", "ASK") and len(words) >= 3:
                    # ASK would need ASKING first; no slot migrates here, so treat it as MOVED.
                    self.target = int(words[2].rpartition(":")[2])
                    hops += 1
                    if hops < 4:
                        continue
                hops = 0
                time.sleep(self.pause)
                continue
            except (OSError, ValueError) as e:  # refused, reset, closed, timeout
                self._drop(port)
                if armed:
                    self.after[f"connection ({type(e).__name__})"] += 1
                i = self.ports.index(port) if port in self.ports else -1
                self.target = self.ports[(i + 1) % len(self.ports)]
                hops = 0
                time.sleep(self.pause)
                continue
            hops = 0
            if r == "OK":
                if armed and self.first is None:
                    self.first = (t_send, time.monotonic(), port)
                    self.recovered.set()
                elif not armed:
                    self.ok_before += 1
            elif armed:
                self.after[f"reply {r!r}"[:40]] += 1


# --------------------------------------------------------------------------- the harness

class ClusterHarness(rvr.Harness):
    """replication_vs_redis's Harness for its trial loop (ABBA order, other-load reruns,
    n/a after an error), with clusters instead of single servers."""

    def __init__(self, args, sides: list[Side], workdir: Path, pool: PortPool):
        super().__init__(args, sides, workdir)
        self.pool = pool
        self.clusters = 0
        self.fo: dict[str, list[Node]] = {}  # role -> the failover phase's cluster

    # ---- clusters

    def start_cluster(self, side: Side, label: str) -> list[Node]:
        ports = self.pool.block(NODES)
        self.clusters += 1
        nodes = []
        for p in ports:
            d = self.workdir / f"{self.clusters:03d}-{side.role}-{label}-{p}"
            d.mkdir()
            nodes.append(Node(f"{side.name}-{p}", side.binary, d, p, self.args))
        try:
            for n in nodes:
                n.launch()
                self.live.append(n)
            for n in nodes:
                n._wait_ping()
        except HarnessError as e:
            self.stop_cluster(nodes)
            raise TrialError(f"{side.name} did not start with the cluster arguments: "
                             f"{short(e, 300)}") from None
        return nodes

    def stop_cluster(self, nodes: list[Node]) -> None:
        # SIGTERM to all first, then wait for each (Server.stop: SIGKILL after the timeout).
        for n in nodes:
            if n.alive():
                try:
                    n.proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for n in nodes:
            self.stop(n)

    def create(self, side: Side, nodes: list[Node]) -> dict:
        """redis-cli --cluster create on fresh nodes, timed until the formation condition.
        Returns {"create_s", "cli_s"} or raises TrialError."""
        a = self.args
        addrs = [f"{HOST}:{n.port}" for n in nodes]
        argv = ["redis-cli", "--cluster", "create", *addrs, "--cluster-replicas", "1",
                "--cluster-yes"]
        out_path = nodes[0].workdir / "redis-cli-create.log"
        conns = [Resp(n.port, timeout=5) for n in nodes]
        res: dict = {}
        try:
            with open(out_path, "wb") as out:
                t0 = time.monotonic()
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                        stderr=subprocess.STDOUT)
                # redis-cli's own exit time, independent of when the condition is seen.
                exited: list[float] = []
                waiter = threading.Thread(
                    target=lambda: (proc.wait(), exited.append(time.monotonic())),
                    daemon=True)
                waiter.start()
                try:
                    desc = "no poll yet"
                    tick = t0
                    while True:
                        sts = [node_status(c) for c in conns]
                        now = time.monotonic()
                        done, desc = formed(sts)
                        # The two halves of the condition, first seen (info rows).
                        if "state_s" not in res and all(x.get("state") == "ok" for x in sts):
                            res["state_s"] = now - t0
                        reps = [x for x in sts if x.get("role") == "replica"]
                        if ("links_s" not in res and len(reps) == REPLICAS
                                and all(x.get("link") == "up" for x in reps)):
                            res["links_s"] = now - t0
                        if done:
                            res["create_s"] = now - t0
                            break
                        if proc.poll() is not None and proc.returncode != 0:
                            raise TrialError(f"redis-cli --cluster create exited with "
                                             f"{proc.returncode}: {cli_tail(out_path)}")
                        dead = [n for n in nodes if not n.alive()]
                        if dead:
                            raise TrialError(f"node {dead[0].port} exited during the "
                                             f"formation{rvr.log_hint(dead[0])}")
                        if time.monotonic() - t0 > a.create_timeout:
                            raise TrialError(f"not formed within {a.create_timeout:.0f}s "
                                             f"({desc}; redis-cli: {cli_tail(out_path)})")
                        tick += a.poll_interval
                        time.sleep(max(0.0, tick - time.monotonic()))
                    waiter.join(timeout=max(30.0, a.create_timeout - res["create_s"]))
                    if not exited:
                        raise TrialError("formed, but redis-cli --cluster create did not "
                                         "exit")
                    res["cli_s"] = exited[0] - t0
                finally:
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait()
        finally:
            for c in conns:
                c.close()
        text = out_path.read_text(errors="replace")
        if proc.returncode != 0 or "All 16384 slots covered" not in text:
            raise TrialError(f"redis-cli --cluster create: rc {proc.returncode}, "
                             f"{cli_tail(out_path)}")
        return res

    def health(self, nodes: list[Node]) -> tuple[bool, str]:
        """Settled enough for a failover trial: the formation condition, each primary with
        one connected replica, no fail/fail?/handshake/disconnected in any CLUSTER NODES,
        and all six agree on the slot owners (3 ranges covering all slots)."""
        problems = []
        views = set()
        sts = []
        for n in nodes:
            if not n.alive():
                return False, f"node {n.port} is not running"
            try:
                with Resp(n.port, timeout=5) as c:
                    st = node_status(c)
                    sts.append(st)
                    if st.get("role") == "master" and st.get("replicas") != "1":
                        problems.append(f"{n.port} has {st.get('replicas')} replicas")
                    bad = cluster_nodes_problems(c.call("CLUSTER", "NODES"))
                    if bad:
                        problems.append(f"{n.port} sees {bad[0]}")
                    views.add(tuple(slot_owners(c.call("CLUSTER", "SLOTS"))))
            except (OSError, RespError, ValueError, IndexError, TypeError) as e:
                return False, f"node {n.port}: {type(e).__name__}: {short(e, 80)}"
        ok, desc = formed(sts)
        if not ok:
            return False, desc
        if len(views) != 1:
            return False, "nodes disagree on the slot owners"
        view = next(iter(views))
        if len(view) != PRIMARIES or sum(e - s + 1 for s, e, _p, _r in view) != SLOTS:
            return False, f"CLUSTER SLOTS has {len(view)} ranges: {view}"
        if problems:
            return False, problems[0]
        return True, "healthy"

    def wait_healthy(self, nodes: list[Node], limit: float) -> float:
        t0 = time.monotonic()
        desc = "?"
        while time.monotonic() - t0 < limit:
            ok, desc = self.health(nodes)
            if ok:
                return time.monotonic() - t0
            time.sleep(self.args.poll_interval * 5)
        raise TrialError(f"not healthy within {limit:.0f}s ({desc})")

    def stop_all(self) -> None:
        for n in self.live:
            if n.alive():
                try:
                    n.proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        super().stop_all()

    # ---- measurement 1: formation

    def trial_create(self, side: Side, rep: int) -> dict:
        nodes = self.start_cluster(side, f"create{rep + 1}")
        try:
            # Both servers keep a fresh primary out of service for 2 s after its start
            # (the writable delay); --settle > 2 starts the create after it.
            first = min(n.launched for n in nodes)
            time.sleep(max(0.0, first + self.args.settle - time.monotonic()))
            since_start = time.monotonic() - first
            with CpuMeter(nodes) as meter:
                m = self.create(side, nodes)
            return {"metrics": m, "errors": {}, "other_load": meter.frac,
                    "ports": [n.port for n in nodes],
                    "create_after_start_s": round(since_start, 3)}
        finally:
            self.stop_cluster(nodes)

    # ---- measurement 2: throughput

    def trial_throughput(self, side: Side, rep: int) -> dict:
        a = self.args
        nodes = self.start_cluster(side, f"tput{rep + 1}")
        try:
            created = self.create(side, nodes)
            argv = ["redis-benchmark", "--cluster", "-h", HOST, "-p", str(nodes[0].port),
                    "-t", "set,get", "-n", str(a.requests), "-r", str(a.keyspace),
                    "-P", str(a.pipeline), "-c", str(a.clients), "--csv"]
            with CpuMeter(nodes) as meter:
                try:
                    p = subprocess.run(argv, capture_output=True, timeout=a.run_timeout,
                                       stdin=subprocess.DEVNULL)
                except subprocess.TimeoutExpired:
                    raise TrialError(f"redis-benchmark timed out after "
                                     f"{a.run_timeout:.0f}s") from None
            out = p.stdout.decode(errors="replace")
            err = p.stderr.decode(errors="replace").strip()
            # --cluster prints "Cluster has 3 master nodes: ..." before the CSV.
            csv_lines = [ln for ln in out.splitlines() if ln.startswith('"')]
            try:
                rows = {r["test"].upper(): r for r in nvr.parse_csv("\n".join(csv_lines))}
            except HarnessError as e:
                raise TrialError(str(e)) from None
            masters = re.findall(r"^Master \d+:", out, re.M)
            res = {"metrics": {}, "errors": {}, "other_load": meter.frac,
                   "create_s": created.get("create_s"), "masters_seen": len(masters),
                   "argv": argv}
            for t in ("SET", "GET"):
                if t in rows:
                    res["metrics"][f"{t.lower()}_rps"] = rows[t]["rps"]
                    res[f"{t.lower()}_p50_ms"] = rows[t]["p50_latency_ms"]
                    res[f"{t.lower()}_p99_ms"] = rows[t]["p99_latency_ms"]
                    # redis-benchmark's own run time (requests / rps), see throughput_note
                    res[f"{t.lower()}_run_s"] = round(a.requests / rows[t]["rps"], 3)
            if p.returncode != 0 or len(res["metrics"]) != 2:
                why = (err.splitlines()[-1] if err else
                       (out.strip().splitlines() or ["no output"])[-1])
                raise TrialError(f"redis-benchmark --cluster rc {p.returncode}: {short(why)}")
            if len(masters) != PRIMARIES:
                res["warnings"] = [f"redis-benchmark saw {len(masters)} masters"]
            return res
        finally:
            self.stop_cluster(nodes)

    # ---- measurement 3: failover

    def trial_failover(self, side: Side, rep: int) -> dict:
        a = self.args
        res: dict = {"metrics": {}, "errors": {}, "warnings": []}
        nodes = self.fo.get(side.role)
        if nodes is None:
            nodes = self.start_cluster(side, "failover")
            self.fo[side.role] = nodes
            try:
                created = self.create(side, nodes)
            except TrialError as e:
                self.drop_failover_cluster(side)
                raise TrialError(f"forming the cluster: {e}") from None
            res["formed_s"] = created.get("create_s")
        self.wait_healthy(nodes, a.rejoin_timeout)
        by_port = {n.port: n for n in nodes}
        try:
            with Resp(nodes[0].port) as c:
                view = slot_owners(c.call("CLUSTER", "SLOTS"))
        except (IndexError, TypeError, ValueError) as e:
            raise TrialError(f"cannot read CLUSTER SLOTS: {type(e).__name__}: {e}") from None
        start, end, owner, _nrep = view[rep % len(view)]
        victim = by_port[owner]
        key = key_in_range(start, end, f"bench:failover:{rep}")
        res.update(slots=f"{start}-{end}", victim=owner, key=key)
        w = Writer([n.port for n in nodes], key, owner, a.retry_interval)
        w.start()
        try:
            t_load = time.monotonic()
            while w.ok_before < 100 and time.monotonic() - t_load < 5 and w.is_alive():
                time.sleep(0.01)
            if w.ok_before < 100:
                raise TrialError(f"only {w.ok_before} writes to {key} accepted before the "
                                 f"kill ({dict(w.after) or w.crash})")
            time.sleep(a.load_before_kill)
            with CpuMeter(self.live) as meter:
                t_kill = time.monotonic()
                w.t_kill = t_kill
                victim.kill9()
                w.recovered.wait(a.failover_timeout)
            res["other_load"] = meter.frac
            res["writes_before_kill"] = w.ok_before
            res["after_kill"] = dict(w.after)
            if w.first is None:
                raise TrialError(f"no write to slot {key_slot(key.encode())} accepted within "
                                 f"{a.failover_timeout:.0f}s of the kill (writes met: "
                                 f"{dict(w.after)}"
                                 + (f"; write loop crashed: {w.crash!r}" if w.crash else "")
                                 + f"){rvr.log_hint(nodes[0])}")
            t_send, t_ok, port = w.first
            res["metrics"]["failover_s"] = t_ok - t_kill
            res["accepted_by"] = port
            res["first_send_after_kill_s"] = round(t_send - t_kill, 4)
        finally:
            w.halt.set()
            w.join(timeout=5)
        # Bring the killed node back with its dir: it must rejoin as a replica.
        t_r = time.monotonic()
        try:
            for attempt in range(5):
                try:
                    victim.start()
                    break
                except HarnessError as e:
                    if attempt == 4 or "in use" not in nvr.tail(victim.log_path, 50).lower():
                        raise TrialError(f"restart failed: {short(e, 200)}") from None
                    time.sleep(0.5)
            if victim not in self.live:
                self.live.append(victim)
            self.wait_healthy(nodes, a.rejoin_timeout)
            with Resp(victim.port) as c:
                role = node_status(c).get("role")
            if role != "replica":
                raise TrialError(f"the restarted node is {role}, not a replica")
            res["metrics"]["rejoin_s"] = time.monotonic() - t_r
        except TrialError as e:
            # The failover figure stands; the next trial starts on a new cluster.
            res["warnings"].append(f"rejoin: {e}")
            res["errors_rejoin"] = str(e)
            self.drop_failover_cluster(side)
        if not res["warnings"]:
            del res["warnings"]
        return res

    def drop_failover_cluster(self, side: Side) -> None:
        nodes = self.fo.pop(side.role, None)
        if nodes:
            self.stop_cluster(nodes)


def cli_tail(path: Path) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", nvr.tail(path, 6))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return short(" | ".join(lines[-3:]) or "no output", 300)


# --------------------------------------------------------------------------- output

def summarize(results: dict, sides: list[Side], expected: dict[str, int]) -> list[dict]:
    rows = []
    for key, label, unit, kind, target, agg in ROWS:
        phase, metric = key.split(".", 1)
        m = results.get(phase)
        if m is None:
            continue
        row = {"key": key, "label": label, "unit": unit, "kind": kind, "target": target,
               "aggregate": agg}
        for side in sides:
            runs = m["runs"][side.role]
            vals = [r["metrics"][metric] for r in runs if metric in r["metrics"]]
            errs = [r["errors"].get(metric) or r["errors"].get("*") for r in runs
                    if metric not in r["metrics"] and r["errors"]]
            if metric == "rejoin_s":
                errs += [r["errors_rejoin"] for r in runs if "errors_rejoin" in r]
            cell = {"values": vals, "runs": len(runs), "expected": expected[phase],
                    "failed": len(errs)}
            if vals:
                cell["value"] = statistics.median(vals) if agg == "median" else max(vals)
                cell["spread"] = spread(vals)
            if errs:
                cell["na"] = errs[0]
            if not vals and not errs:
                cell["na"] = "not measured"
            row[side.role] = cell
        s, r = row["subject"].get("value"), row["reference"].get("value")
        row["ratio"] = None
        if s is not None and r is not None:
            row["ratio"] = s / r if r else (1.0 if s == 0 else math.inf)
        sp = [x for x in (row["subject"].get("spread"), row["reference"].get("spread"))
              if x is not None]
        row["spread"] = max(sp) if len(sp) == 2 else None
        if kind == "info":
            row["status"] = ""
        elif row["ratio"] is None:
            row["status"] = "n/a"
        else:
            ok = row["ratio"] <= target if kind == "time" else row["ratio"] >= target
            gap = row["ratio"] / target - 1 if kind == "time" else 1 - row["ratio"] / target
            row["status"] = nvr.mark(ok, True, gap, row["spread"])
        rows.append(row)
    return rows


def print_summary(rows: list[dict], names: dict[str, str]) -> None:
    head = ["measure", names["reference"], names["subject"], "ratio", "target",
            f"spread ({names['reference']} / {names['subject']})"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    notes: dict[tuple[str, str], list[str]] = {}
    for row in rows:
        cells = [row["label"]]
        for role in ("reference", "subject"):
            c = row[role]
            if "value" in c:
                txt = rvr.fmt_value(c["value"], row["unit"])
                if len(c["values"]) < c["expected"]:
                    txt += f" (n={len(c['values'])}"
                    txt += f", {c['failed']} n/a)" if c["failed"] else ")"
            else:
                na = re.sub(r", with args beginning with:.*", "", c["na"])
                txt = f"n/a ({short(na, 90)})"
            if c.get("na") and len(c["na"]) > 90 or ("value" in c and c.get("na")):
                notes.setdefault((names[role], c["na"]), []).append(row["label"])
            cells.append(txt)
        rt = row["ratio"]
        cells.append("-" if rt is None else ("inf" if rt == math.inf else f"{rt:.2f}"))
        if row["kind"] == "info":
            cells.append("info")
        else:
            cells.append(f"{'<=' if row['kind'] == 'time' else '>='} {row['target']:g} "
                         f"{row['status']}")
        cells.append(" / ".join(nvr.pct(row[r].get("spread"))
                                for r in ("reference", "subject")))
        lines.append("| " + " | ".join(cells) + " |")
    for ln in lines:
        log(ln)
    log("")
    log("(median over the trials (worst: maximum), n = trials that gave the figure when "
        f"fewer than planned; ratio = {names['subject']} / {names['reference']};\n"
        " spread = (max-min)/median over the trials; miss? = a miss within the larger "
        "spread)")
    for (name, reason), labels in notes.items():
        log(f"  {name} n/a for {len(labels)} figure(s) ({labels[0]}"
            + (f" ... {labels[-1]}" if len(labels) > 1 else "") + f"): {reason}")


def throughput_note(results: dict, requests: int) -> str | None:
    """redis-benchmark --cluster runs multi-threaded, and a run ends when every thread's
    250 ms progress timer has seen the last reply: its run time (requests / rps) is rounded
    up to about 0.25 s, so the shortest run bounds the resolution of the rps figures."""
    m = results.get("throughput")
    if not m:
        return None
    runs = [r[f"{t}_run_s"] for rs in m["runs"].values() for r in rs for t in ("set", "get")
            if f"{t}_run_s" in r]
    if not runs:
        return None
    lo = min(runs)
    return (f"throughput resolution: redis-benchmark --cluster ends a run on a 250 ms tick, "
            f"so run times ({lo:.2f}-{max(runs):.2f} s here for -n {requests:,}) are rounded "
            f"up by up to 0.25 s: rps up to {0.25 / lo * 100:.0f}% low on the shortest run; "
            f"a larger -n narrows this")


def stale_binary_note(node_bin: str) -> str | None:
    """A WARNING if the binary under the repo is older than the node's sources."""
    try:
        Path(node_bin).resolve().relative_to(REPO_ROOT)
        mtime = os.stat(node_bin).st_mtime
    except (ValueError, OSError):
        return None
    newest, name = 0.0, ""
    for sub in ("node", "shared"):
        for root, _dirs, files in os.walk(REPO_ROOT / sub):
            for f in files:
                if f.endswith(".rs") or f == "Cargo.toml":
                    t = os.stat(os.path.join(root, f)).st_mtime
                    if t > newest:
                        newest, name = t, os.path.join(root, f)
    if newest > mtime:
        return (f"the binary is older than {os.path.relpath(name, REPO_ROOT)} "
                "(cargo build --release -p lagwise-node)")
    return None


# --------------------------------------------------------------------------- main

def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description="Cluster mode of lagwise-node vs redis-server in the same run: cluster "
                    "formation, throughput through redis-benchmark --cluster, failover "
                    "time after kill -9 of a primary.",
        formatter_class=nvr._HelpFormatter)
    ap.add_argument("--lagwise-bin", default=str(REPO_ROOT / "target/release/lagwise-node"),
                    help="subject server binary (Valkey-style arguments); built with cargo "
                         "if it is the default path and missing")
    ap.add_argument("--redis-bin", default=None,
                    help="reference server binary (default: redis-server from PATH)")
    ap.add_argument("--self-check", action="store_true",
                    help="use redis-server as the subject too (redis vs redis: shows the "
                         "harness's noise)")
    ap.add_argument("--subject-name", default=None,
                    help="label for the subject [default lagwise; --self-check redis2]")
    ap.add_argument("--only", default=",".join(PHASES),
                    help="comma-separated measurements to run: " + ",".join(PHASES))
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 1 formation and 1 throughput trial of 100k requests, "
                         "3 failover trials")
    ap.add_argument("--trials", type=int, default=None,
                    help="trials per side for create and throughput [default 3; --quick 1]")
    ap.add_argument("--failover-trials", type=int, default=None,
                    help="failover trials per side [default 10; --quick 3]")
    ap.add_argument("-n", "--requests", type=int, default=None,
                    help="redis-benchmark -n per test [default 1000000; --quick 100000]")
    ap.add_argument("-r", "--keyspace", type=int, default=1000000,
                    help="redis-benchmark -r")
    ap.add_argument("-P", "--pipeline", type=int, default=16)
    ap.add_argument("-c", "--clients", type=int, default=50)
    ap.add_argument("--node-timeout", type=int, default=2000,
                    help="--cluster-node-timeout of every node, ms")
    ap.add_argument("--port-base", type=int, default=33000,
                    help="client ports are taken from [base, base+--port-range); bus ports "
                         "are +10000")
    ap.add_argument("--port-range", type=int, default=1000)
    ap.add_argument("--settle", type=float, default=0.0,
                    help="formation: seconds between starting the six nodes and starting "
                         "redis-cli --cluster create. 0: at once, so a fresh primary's 2 s "
                         "writable delay counts; 2.5: past it (see bench/README.md)")
    ap.add_argument("--poll-interval", type=float, default=0.02,
                    help="seconds between polls of the formation condition")
    ap.add_argument("--retry-interval", type=float, default=0.01,
                    help="failover write loop: pause after a refused connection or an "
                         "error reply (MOVED is followed at once)")
    ap.add_argument("--load-before-kill", type=float, default=0.3,
                    help="seconds of write load (after the first 100 accepted writes) "
                         "before the kill")
    ap.add_argument("--create-timeout", type=float, default=60.0,
                    help="limit for one cluster formation, seconds")
    ap.add_argument("--failover-timeout", type=float, default=30.0,
                    help="limit from the kill to an accepted write, seconds")
    ap.add_argument("--rejoin-timeout", type=float, default=60.0,
                    help="limit for the restarted node to rejoin and the cluster to settle")
    ap.add_argument("--max-other-load", type=float, default=0.10,
                    help="a trial during which other processes used more than this fraction "
                         "of the machine's CPU is run again")
    ap.add_argument("--load-retries", type=int, default=2,
                    help="how many times a trial is run again for --max-other-load")
    ap.add_argument("--startup-timeout", type=float, default=20.0,
                    help="seconds to wait for PING after starting a node")
    ap.add_argument("--stop-timeout", type=float, default=10.0,
                    help="seconds between SIGTERM and SIGKILL")
    ap.add_argument("--run-timeout", type=float, default=600.0,
                    help="limit for one redis-benchmark run, seconds")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    ap.add_argument("--keep-logs", action="store_true",
                    help="keep the temp dir with the node logs (kept anyway on failure or "
                         "n/a)")
    ap.add_argument("--fail-on-miss", action="store_true",
                    help="exit 1 if any figure misses its target or is n/a")
    a = ap.parse_args(argv)
    a.only = [p.strip().lower() for p in a.only.split(",") if p.strip()]
    bad = [p for p in a.only if p not in PHASES]
    if bad or not a.only:
        ap.error(f"--only takes a comma-separated subset of {','.join(PHASES)} (got "
                 f"{','.join(bad) or 'nothing'})")
    q = a.quick
    a.trials = a.trials if a.trials is not None else (1 if q else 3)
    a.failover_trials = (a.failover_trials if a.failover_trials is not None
                         else (3 if q else 10))
    a.requests = a.requests if a.requests is not None else (100000 if q else 1000000)
    if a.subject_name is None:
        a.subject_name = "redis2" if a.self_check else "lagwise"
    if min(a.trials, a.failover_trials, a.requests, a.keyspace, a.pipeline, a.clients) < 1:
        ap.error("--trials, --failover-trials, -n, -r, -P and -c must be >= 1")
    if a.port_range < NODES * 2:
        ap.error(f"--port-range must be >= {NODES * 2}")
    return a


def _sigterm(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, _sigterm)

    redis_bin = args.redis_bin or shutil.which("redis-server")
    missing = [t for t, p in (("redis-server", redis_bin),
                              ("redis-benchmark", shutil.which("redis-benchmark")),
                              ("redis-cli", shutil.which("redis-cli"))) if not p]
    if missing:
        log(f"error: not found on PATH: {', '.join(missing)} (apt-get install redis-server "
            "redis-tools)")
        return 2
    node_bin = redis_bin if args.self_check else args.lagwise_bin
    if not os.path.isabs(node_bin) and not os.path.exists(node_bin):
        node_bin = str(REPO_ROOT / node_bin)
    default_bin = str(REPO_ROOT / "target/release/lagwise-node")
    if not os.path.exists(node_bin) and node_bin == default_bin:
        log("== building lagwise-node (cargo build --release -p lagwise-node)")
        p = subprocess.run(["cargo", "build", "--release", "-p", "lagwise-node"],
                           cwd=REPO_ROOT)
        if p.returncode != 0:
            log("error: cargo build failed")
            return 2
    if not (os.path.isfile(node_bin) and os.access(node_bin, os.X_OK)):
        log(f"error: subject binary {node_bin} is missing or not executable; build it with "
            "`cargo build --release -p lagwise-node` or pass --lagwise-bin (or --self-check)")
        return 2

    names = {"subject": args.subject_name, "reference": "redis"}
    facts = nvr.machine_facts(node_bin, redis_bin)
    nvr.print_facts(facts, (names["subject"], names["reference"]))
    stale = None if args.self_check else stale_binary_note(node_bin)
    if stale:
        facts["node"]["stale"] = stale
        log(f"  WARNING    {stale}")
    log(f"  config     only={','.join(args.only)} trials={args.trials} "
        f"failover_trials={args.failover_trials} n={args.requests:,} r={args.keyspace:,} "
        f"P={args.pipeline} c={args.clients} node_timeout={args.node_timeout} ms "
        f"ports={args.port_base}-{args.port_base + args.port_range - 1} "
        f"(+{BUS_OFFSET} bus)")
    try:
        lo, hi = (int(x) for x in open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
        if lo <= args.port_base + args.port_range + BUS_OFFSET and args.port_base <= hi:
            log(f"  note       ports overlap the ephemeral range {lo}-{hi}: a port is checked "
                "free just before use, a rare race with an outgoing connection is possible")
    except (OSError, ValueError):
        pass
    sides = [Side("reference", names["reference"], redis_bin),
             Side("subject", names["subject"], node_bin)]
    workdir = Path(tempfile.mkdtemp(prefix="lagwise-cluster-bench-"))
    results: dict = {"machine": facts, "config": {k: v for k, v in vars(args).items()},
                     "names": names}
    results["config"].update(node_bin=node_bin, redis_bin=redis_bin)
    status = 0
    any_na = False
    t_start = time.monotonic()
    h = None
    try:
        h = ClusterHarness(args, sides, workdir, PortPool(args.port_base, args.port_range))
        busy = nvr.idle_check()
        results["idle_check_busy_frac"] = busy
        if busy is not None and busy > 0.15:
            log(f"  WARNING    {busy * 100:.0f}% of the machine's CPU is busy before the "
                "benchmark starts: other work skews these numbers")
        log(f"  workdir    {workdir}")
        expected = {"create": args.trials, "throughput": args.trials,
                    "failover": args.failover_trials}
        if "create" in args.only:
            log("")
            log(f"== cluster formation: fresh nodes, {args.settle:g} s after their start "
                f"redis-cli --cluster create --cluster-replicas 1, until cluster_state:ok "
                f"x{NODES} and {REPLICAS} replica links up (poll every "
                f"{args.poll_interval * 1000:.0f} ms)")
            h.results["create"] = h.measure("create", h.trial_create, args.trials)
        if "throughput" in args.only:
            log("")
            log(f"== throughput: fresh cluster, redis-benchmark --cluster -t set,get "
                f"-n {args.requests} -r {args.keyspace} -P {args.pipeline} -c {args.clients}")
            h.results["throughput"] = h.measure("throughput", h.trial_throughput, args.trials)
        if "failover" in args.only:
            log("")
            log(f"== failover: write loop on a key of a primary's slots, kill -9 that "
                f"primary, until a write is accepted again; restart it, wait until it is a "
                f"replica and the cluster settled (node timeout {args.node_timeout} ms)")
            try:
                h.results["failover"] = h.measure("failover", h.trial_failover,
                                                  args.failover_trials)
            finally:
                for side in sides:
                    h.drop_failover_cluster(side)

        rows = summarize(h.results, sides, expected)
        results["measurements"] = h.results
        results["table"] = rows
        other = [r.get("other_load") for m in h.results.values() for runs in m["runs"].values()
                 for r in runs if r.get("other_load") is not None]
        log("")
        log(f"== results ({names['subject']}: {node_bin})")
        log("")
        print_summary(rows, names)
        tn = throughput_note(h.results, args.requests)
        if tn:
            log(tn)
        if other:
            med, mx = statistics.median(other), max(other)
            note = ("  WARNING: other processes competed for CPU; rerun on an idle machine"
                    if mx >= 0.25 or med >= 0.05 else "")
            log(f"other load during trials: median {med * 100:.0f}%, max {mx * 100:.0f}% "
                f"of the machine{note}")
        misses = [r["label"] for r in rows if r["kind"] != "info" and r["status"] != "ok"]
        results["misses"] = misses
        any_na = any("na" in r[s] for r in rows for s in ("subject", "reference"))
        by = {st: [r["label"] for r in rows if r["kind"] != "info" and r["status"] == st]
              for st in ("MISS", "miss?", "n/a")}
        log(f"== summary: {len(by['MISS'])} MISS, {len(by['miss?'])} miss? (within the "
            f"spread), {len(by['n/a'])} n/a  (total {time.monotonic() - t_start:.0f}s)")
        for st, labels in by.items():
            if labels:
                log(f"  {st:<6} " + "; ".join(labels))
        if misses and args.fail_on_miss:
            status = 1
    except KeyboardInterrupt as e:
        log(f"\ninterrupted ({str(e) or 'Ctrl-C'}); stopping servers")
        results["error"] = "interrupted"
        status = 130
    except HarnessError as e:
        log(f"\nerror: {e}")
        results["error"] = str(e)
        status = 2
    finally:
        if h is not None:
            h.stop_all()
            results.setdefault("measurements", h.results)
        results["seconds"] = round(time.monotonic() - t_start, 1)
        if args.json:
            try:
                Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
                log(f"results written to {args.json}")
            except OSError as e:
                log(f"cannot write {args.json}: {e}")
        if status in (0, 1) and not args.keep_logs and not any_na:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"node logs kept in {workdir}")
    return status


if __name__ == "__main__":
    sys.exit(main())
