#!/usr/bin/env python3
"""Replication and persistence of lagwise-node against redis-server, in the same run.

Both servers are started the same way (Valkey-style arguments: `--port P --bind 127.0.0.1
--dir D --save "" --appendonly no --repl-diskless-sync yes --repl-diskless-sync-delay 0`),
and every measurement alternates redis and lagwise trial by trial:

  fullsync  a primary with N keys (`key:%012d`, 16-byte values, loaded with redis-cli --pipe);
            a fresh replica of the same kind gets REPLICAOF; time until INFO replication says
            master_link_status:up and until the replica's DBSIZE == N (polled every 10 ms);
  lag       a fresh primary+replica pair in sync; redis-benchmark -t set -P 16 -c 50
            -n 2000000 -r 1000000 against the primary while master_repl_offset (primary)
            and slave_repl_offset (replica) are sampled every 50 ms: lag in bytes and in ms
            (p50/p99/max), catch-up time after the load, and the benchmark's throughput;
  save      on the primary with N keys: SAVE time and RDB size, BGSAVE time (until
            rdb_bgsave_in_progress:0 with rdb_last_bgsave_status:ok);
  aof       SET throughput with --appendonly yes and appendfsync everysec (-P 16 -c 50)
            and appendfsync always (-P 1 -c 50).

A step the subject cannot do (unknown command, link never up, no file written, timeout)
becomes "n/a (reason)" for that figure; the run goes on. Prints a markdown table
measure | redis | lagwise | ratio | target. Standard library only; shares its server,
RESP, loading and redis-benchmark helpers with node_vs_redis.py. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import os
import resource
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import node_vs_redis as nvr  # noqa: E402
from node_vs_redis import (  # noqa: E402
    HOST, REPO_ROOT, HarnessError, Resp, RespError, Server, log, parse_info,
)

PHASES = ("fullsync", "lag", "save", "aof")

# The rows of the final table: (key, label, unit, kind). kind "time": lower is better,
# target ratio <= 1.0; "tput": higher is better, target >= 1.0; "info": no target.
ROWS = [
    ("fullsync.link_s", "full sync: REPLICAOF -> master_link_status:up", "s", "time"),
    ("fullsync.dbsize_s", "full sync: REPLICAOF -> replica DBSIZE == keys", "s", "time"),
    ("lag.rps", "lag: SET rps on the primary (-P 16 -c 50)", "rps", "tput"),
    ("lag.bytes_p50", "lag: bytes p50", "B", "time"),
    ("lag.bytes_p99", "lag: bytes p99", "B", "time"),
    ("lag.bytes_max", "lag: bytes max", "B", "time"),
    ("lag.ms_p50", "lag: ms p50", "ms", "time"),
    ("lag.ms_p99", "lag: ms p99", "ms", "time"),
    ("lag.ms_max", "lag: ms max", "ms", "time"),
    ("lag.catchup_ms", "lag: catch-up after the load ends", "ms", "time"),
    ("save.save_s", "SAVE", "s", "time"),
    ("save.rdb_bytes", "RDB size after SAVE", "B", "info"),
    ("bgsave.bgsave_s", "BGSAVE (until rdb_bgsave_in_progress:0)", "s", "time"),
    ("aof_everysec.rps", "AOF everysec: SET rps (-P 16 -c 50)", "rps", "tput"),
    ("aof_always.rps", "AOF always: SET rps (-P 1 -c 50)", "rps", "tput"),
]
TARGET = 1.0

# A SET of redis-benchmark -r in the replication stream: *3 $3 SET $16 key:%012d $3 xxx.
SET_STREAM_BYTES = 45
LAG_CLIENTS, LAG_PIPELINE = 50, 16


def ratio_floors(args) -> dict[str, float]:
    """Lag figures sit near 0 and move in quanta (redis forwards one event-loop batch at a
    time: up to clients x pipeline SETs), so their ratios are taken of max(value, floor):
    without it 0 vs one batch would read as 0 or infinity."""
    batch = LAG_CLIENTS * LAG_PIPELINE * SET_STREAM_BYTES
    return {"lag.bytes_p50": batch, "lag.bytes_p99": batch, "lag.bytes_max": batch,
            "lag.ms_p50": 1.0, "lag.ms_p99": 1.0, "lag.ms_max": 1.0,
            "lag.catchup_ms": args.poll_interval * 1000}


class TrialError(Exception):
    """One step of one trial failed; the figure becomes n/a (reason)."""


# --------------------------------------------------------------------------- helpers

def proc_cpu(pid: int) -> float | None:
    """CPU seconds of a process, all threads, plus its reaped children (redis forks for
    BGSAVE and for the full sync; it reaps them before reporting them done)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            v = f.read().rsplit(")", 1)[1].split()
        return sum(int(x) for x in v[11:15]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class CpuMeter:
    """Machine CPU used during a trial by anything but our servers, our child tools
    (redis-benchmark, redis-cli) and this harness: the "other load" of node_vs_redis.py."""

    def __init__(self, servers: list[Server]):
        self.pids = [s.pid for s in servers if s.alive()]

    def __enter__(self) -> "CpuMeter":
        self.m0 = nvr.machine_cpu()
        self.s0 = {p: proc_cpu(p) for p in self.pids}
        self.c0, self.h0, self.w0 = nvr.children_cpu(), self_cpu(), time.monotonic()
        self.frac = None
        return self

    def __exit__(self, *exc) -> None:
        m1, w1 = nvr.machine_cpu(), time.monotonic()
        ours = (nvr.children_cpu() - self.c0) + (self_cpu() - self.h0)
        for p, a in self.s0.items():
            b = proc_cpu(p)
            if a is not None and b is not None:
                ours += b - a
        if self.m0 is None or m1 is None or w1 <= self.w0:
            return
        other = (m1[0] - self.m0[0]) + (m1[1] - self.m0[1]) - ours
        # Every figure here is counted in clock ticks: forgive one tick per CPU, or a
        # 0.1 s trial would show 5% other load from rounding alone.
        other -= (os.cpu_count() or 1) / os.sysconf("SC_CLK_TCK")
        self.frac = round(max(other, 0.0) / ((w1 - self.w0) * (os.cpu_count() or 1)), 3)


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100)."""
    if not values:
        return None
    v = sorted(values)
    return v[max(0, min(len(v) - 1, math.ceil(p / 100 * len(v)) - 1))]


def spread(values: list[float]) -> float | None:
    """(max - min) / median over the repeats, as in node_vs_redis.py."""
    if len(values) < 2:
        return None
    med = statistics.median(values)
    if med == 0:
        return 0.0 if max(values) == min(values) else None
    return (max(values) - min(values)) / abs(med)


def short(e: BaseException | str, limit: int = 160) -> str:
    text = str(e).strip().splitlines()
    text = text[0] if text else type(e).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def call(port: int, *args, timeout: float = 10.0):
    with Resp(port, timeout=timeout) as c:
        return c.call(*args)


def info(conn: Resp, section: str) -> dict:
    return parse_info(conn.call("INFO", section))


def dir_bytes(d: Path) -> int:
    """Bytes of all files under d except the server logs."""
    total = 0
    for root, _dirs, files in os.walk(d):
        for f in files:
            if f.endswith(".log"):
                continue
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


def log_hint(srv: Server) -> str:
    """The server log's last error/warning line (redis marks warnings with ' # '), else its
    last line."""
    if srv.log_path is None:
        return ""
    lines = [ln for ln in nvr.tail(srv.log_path, 40).splitlines() if ln.strip()]
    bad = [ln for ln in lines if (" # " in ln or re.search(r"error|fail|panic|warn", ln, re.I))
           and "overcommit" not in ln]  # redis's start-up sysctl warning says nothing here
    pick = (bad or lines)[-1:]
    return f"; log: {short(pick[0], 160)}" if pick else ""


# --------------------------------------------------------------------------- the harness

class Side:
    def __init__(self, role: str, name: str, binary: str):
        self.role, self.name, self.binary = role, name, binary


class Harness:
    def __init__(self, args, sides: list[Side], workdir: Path):
        self.args = args
        self.sides = sides
        self.workdir = workdir
        self.avoid: set[int] = set()
        self.live: list[Server] = []
        self.count = 0
        self.loaded: dict[str, Server | str] = {}  # role -> loaded primary, or why not
        self.results: dict = {}
        self.trial_no = 0

    # ---- servers

    def config(self, d: Path, appendonly: str = "no", fsync: str | None = None) -> list[str]:
        cfg = ["--dir", str(d), "--save", "", "--appendonly", appendonly]
        if fsync:
            cfg += ["--appendfsync", fsync]
        return cfg + ["--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0"]

    def start(self, side: Side, label: str, appendonly: str = "no",
              fsync: str | None = None) -> Server:
        self.count += 1
        d = self.workdir / f"{self.count:03d}-{side.role}-{label}"
        d.mkdir()
        srv = Server(f"{side.name}-{label}", side.binary, d, None, self.args.startup_timeout,
                     self.args.stop_timeout, config=self.config(d, appendonly, fsync))
        try:
            srv.start(self.avoid)
        except HarnessError as e:
            raise TrialError(f"{side.name} did not start with the Valkey-style arguments: "
                             f"{short(e, 300)}") from None
        self.avoid.add(srv.port)
        self.live.append(srv)
        return srv

    def stop(self, srv: Server) -> None:
        try:
            srv.stop()
        finally:
            if srv in self.live:
                self.live.remove(srv)
            # Keep the logs, drop the data (RDB and AOF files of 1M keys add up).
            for p in srv.workdir.iterdir():
                if p.suffix == ".log":
                    continue
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)

    def stop_all(self) -> None:
        for srv in list(self.live):
            try:
                self.stop(srv)
            except BaseException as e:  # keep stopping the others
                log(f"  stopping {srv.name}: {e}")

    # ---- the trial loop shared by all measurements

    def measure(self, phase: str, trial, repeat: int) -> dict:
        """Runs trial(side, rep) -> {"metrics": {...}, "errors": {...}} `repeat` times per
        side, alternating which side goes first (ABBA...). A trial during which other
        processes used more than --max-other-load of the machine is run again (up to
        --load-retries times). After a trial with an error, that side is not run again
        for this measurement: its remaining figures come from the trials so far."""
        runs: dict[str, list] = {s.role: [] for s in self.sides}
        discarded: dict[str, list] = {s.role: [] for s in self.sides}
        stopped: set[str] = set()
        for rep in range(repeat):
            order = list(self.sides)
            if self.trial_no % 2:
                order.reverse()
            self.trial_no += 1
            for side in order:
                if side.role in stopped:
                    continue
                for attempt in range(self.args.load_retries + 1):
                    t0 = time.monotonic()
                    try:
                        r = trial(side, rep)
                    except TrialError as e:
                        r = {"metrics": {}, "errors": {"*": str(e)}}
                    except (OSError, RespError, ValueError, HarnessError) as e:
                        r = {"metrics": {}, "errors": {
                            "*": f"{type(e).__name__}: {short(e, 300)}"}}
                    r["seconds"] = round(time.monotonic() - t0, 2)
                    other = r.get("other_load") or 0.0
                    msg = "  ".join(fmt_metric(k, v) for k, v in r["metrics"].items())
                    for k, e in r["errors"].items():
                        msg += f"  {'' if k == '*' else k + ' '}n/a ({short(e)})"
                    if other >= 0.05:
                        msg += f"  (other load {other * 100:.0f}%)"
                    for w in r.get("warnings", []):
                        msg += f"  WARNING: {w}"
                    log(f"  [{phase} {rep + 1}/{repeat}] {side.name:<8} {msg.strip()}")
                    if r["errors"] or other <= self.args.max_other_load:
                        break
                    discarded[side.role].append(r)
                    if attempt == self.args.load_retries:
                        # Every attempt was loaded: keep the least loaded one.
                        r = min(discarded[side.role][-attempt - 1:],
                                key=lambda x: x.get("other_load") or 0.0)
                        discarded[side.role].remove(r)
                        r["kept_despite_load"] = True
                        log(f"          other load above {self.args.max_other_load * 100:.0f}%"
                            f" in all {attempt + 1} attempts: keeping the least loaded "
                            f"({(r.get('other_load') or 0) * 100:.0f}%)")
                        break
                    log(f"          other load {other * 100:.0f}% > "
                        f"{self.args.max_other_load * 100:.0f}%: trial discarded, running "
                        "it again")
                runs[side.role].append(r)
                if r["errors"]:
                    stopped.add(side.role)
        return {"runs": runs, "discarded": discarded}

    # ---- phase: loaded primaries (fullsync and save)

    def load_primaries(self) -> None:
        n = self.args.keys
        t0 = time.monotonic()
        payload = nvr.resp_set_payload(n, None)
        pf = self.workdir / f"set-{n}.resp"
        pf.write_bytes(payload)
        log(f"  generated {len(payload) / (1 << 20):.1f} MiB of RESP for {n:,} SETs in "
            f"{time.monotonic() - t0:.1f}s")
        for side in self.sides:
            try:
                srv = self.start(side, "primary")
                ld = nvr.load_keys(srv, payload, pf, n, self.args.loader, self.args.run_timeout)
                db = srv.dbsize()
                if db != n:
                    raise TrialError(f"DBSIZE {db} after loading {n} keys")
                for i in (0, n - 1):
                    got = nvr.spot_check(srv, b"key:%012d" % i)
                    if got != b"val:%012d" % i:
                        raise TrialError(f"GET key:{i:012d} returned {got!r} after the load")
                self.loaded[side.role] = srv
                log(f"  {side.name}: primary pid {srv.pid} port {srv.port} loaded {db:,} keys "
                    f"with {ld['loader']} in {ld['seconds']:.2f}s")
            except (TrialError, HarnessError, OSError, RespError, ValueError) as e:
                self.loaded[side.role] = f"loading {n:,} keys failed: {short(e, 300)}"
                log(f"  {side.name}: {self.loaded[side.role]}")
        pf.unlink(missing_ok=True)

    def primary(self, side: Side) -> Server:
        p = self.loaded.get(side.role)
        if not isinstance(p, Server):
            raise TrialError(p or "no loaded primary")
        if not p.alive():
            raise TrialError(f"the loaded primary is no longer running{log_hint(p)}")
        return p

    def drop_primaries(self) -> None:
        for side in self.sides:
            p = self.loaded.pop(side.role, None)
            if isinstance(p, Server):
                self.stop(p)

    # ---- measurement 1: full sync

    def trial_fullsync(self, side: Side, rep: int) -> dict:
        a = self.args
        n = a.keys
        primary = self.primary(side)
        wait_fork_done(primary, 30.0)
        replica = self.start(side, f"replica{rep + 1}")
        res: dict = {"metrics": {}, "errors": {}}
        try:
            with CpuMeter([primary, replica]) as meter, \
                    Resp(replica.port, timeout=max(10.0, a.poll_interval * 100)) as c:
                t0 = time.monotonic()
                try:
                    c.call("REPLICAOF", HOST, primary.port)
                except RespError as e:
                    raise TrialError(f"REPLICAOF: {short(e)}") from None
                link = db = None
                last: dict = {}
                last_db = None
                deadline = t0 + a.sync_timeout
                tick = t0
                while time.monotonic() < deadline and (link is None or db is None):
                    if link is None:
                        try:
                            last = info(c, "replication")
                            if last.get("master_link_status") == "up":
                                link = time.monotonic() - t0
                        except RespError as e:
                            last = {"error": short(e)}
                    if db is None:
                        try:
                            last_db = int(c.call("DBSIZE"))
                            if last_db == n:
                                db = time.monotonic() - t0
                        except RespError as e:  # -LOADING while the replica loads the RDB
                            last_db = short(e, 60)
                    if not replica.alive():
                        raise TrialError(f"the replica exited during the sync{log_hint(replica)}")
                    if not primary.alive():
                        raise TrialError(f"the primary exited during the sync{log_hint(primary)}")
                    tick += a.poll_interval
                    time.sleep(max(0.0, tick - time.monotonic()))
                # (outside the timed window) let the primary reap its fork child, whose
                # CPU time the meter then counts as the primary's, not as other load
                wait_fork_done(primary, 10.0)
            res["other_load"] = meter.frac
            state = ", ".join(f"{k}:{last[k]}" for k in (
                "master_link_status", "master_sync_in_progress", "error") if k in last)
            if link is not None:
                res["metrics"]["link_s"] = link
            else:
                res["errors"]["link_s"] = (f"master_link_status never up within "
                                           f"{a.sync_timeout:.0f}s (last: {state or 'no INFO'})"
                                           + log_hint(replica))
            if db is not None:
                res["metrics"]["dbsize_s"] = db
                # The replica has the keys: spot-check their values.
                for i in (0, n // 2, n - 1):
                    got = nvr.spot_check(replica, b"key:%012d" % i)
                    if got != b"val:%012d" % i:
                        res["metrics"].pop("dbsize_s")
                        res["errors"]["dbsize_s"] = (f"replica has DBSIZE {n} but GET "
                                                     f"key:{i:012d} returned {got!r}")
                        break
            else:
                res["errors"]["dbsize_s"] = (f"replica DBSIZE never {n:,} within "
                                             f"{a.sync_timeout:.0f}s (last: {last_db!r})")
        finally:
            self.stop(replica)
        return res

    # ---- measurement 3: SAVE and BGSAVE

    def rdb_path(self, srv: Server) -> Path:
        name = "dump.rdb"
        try:
            r = call(srv.port, "CONFIG", "GET", "dbfilename")
            if isinstance(r, list) and len(r) == 2 and r[1]:
                name = r[1].decode()
        except (RespError, OSError, ValueError):
            pass
        return srv.workdir / name

    def trial_save(self, side: Side, rep: int) -> dict:
        primary = self.primary(side)
        wait_fork_done(primary, 60.0)
        path = self.rdb_path(primary)
        path.unlink(missing_ok=True)
        res: dict = {"metrics": {}, "errors": {}}
        with CpuMeter([primary]) as meter:
            t0 = time.monotonic()
            try:
                r = call(primary.port, "SAVE", timeout=self.args.save_timeout)
            except RespError as e:
                raise TrialError(f"SAVE: {short(e)}") from None
            except OSError as e:
                raise TrialError(f"SAVE: no reply within {self.args.save_timeout:.0f}s "
                                 f"({type(e).__name__}){log_hint(primary)}") from None
            dt = time.monotonic() - t0
        res["other_load"] = meter.frac
        if r != "OK":
            raise TrialError(f"SAVE replied {r!r}")
        if not path.is_file():
            raise TrialError(f"SAVE replied OK but wrote no {path.name} in --dir")
        res["metrics"]["save_s"] = dt
        res["metrics"]["rdb_bytes"] = path.stat().st_size
        return res

    def trial_bgsave(self, side: Side, rep: int) -> dict:
        a = self.args
        primary = self.primary(side)
        wait_fork_done(primary, 60.0)
        path = self.rdb_path(primary)
        path.unlink(missing_ok=True)
        res: dict = {"metrics": {}, "errors": {}}
        with Resp(primary.port, timeout=30) as c:
            before = info(c, "persistence")
            with CpuMeter([primary]) as meter:
                t0 = time.monotonic()
                try:
                    r = c.call("BGSAVE")
                except RespError as e:
                    raise TrialError(f"BGSAVE: {short(e)}") from None
                seen_running = False
                done = None
                cur: dict = {}
                tick = t0
                while time.monotonic() < t0 + a.save_timeout:
                    cur = info(c, "persistence")
                    running = cur.get("rdb_bgsave_in_progress")
                    seen_running |= running == "1"
                    if running == "0":
                        if "rdb_saves" in before and "rdb_saves" in cur:
                            finished = int(cur["rdb_saves"]) > int(before["rdb_saves"])
                        else:  # no save counter: the flag went 1 -> 0, or LASTSAVE moved
                            finished = seen_running or (cur.get("rdb_last_save_time")
                                                        != before.get("rdb_last_save_time"))
                        if finished:
                            done = time.monotonic() - t0
                            break
                    if not primary.alive():
                        raise TrialError(f"the server exited during BGSAVE{log_hint(primary)}")
                    tick += a.poll_interval
                    time.sleep(max(0.0, tick - time.monotonic()))
            # The fork child is reaped by now; a second look covers a late rename.
        res["other_load"] = meter.frac
        if done is None:
            state = ", ".join(f"{k}:{cur.get(k)}" for k in (
                "rdb_bgsave_in_progress", "rdb_saves", "rdb_last_bgsave_status"))
            raise TrialError(f"BGSAVE replied {r!r} but did not finish within "
                             f"{a.save_timeout:.0f}s ({state})")
        if cur.get("rdb_last_bgsave_status") != "ok":
            raise TrialError(f"BGSAVE finished with rdb_last_bgsave_status:"
                             f"{cur.get('rdb_last_bgsave_status')}")
        if not path.is_file():
            raise TrialError(f"BGSAVE reported done but wrote no {path.name} in --dir")
        res["metrics"]["bgsave_s"] = done
        res["metrics"]["rdb_bytes"] = path.stat().st_size
        return res

    # ---- measurement 2: replica lag under load

    def trial_lag(self, side: Side, rep: int) -> dict:
        primary = self.start(side, f"lag{rep + 1}-primary")
        replica = None
        try:
            replica = self.start(side, f"lag{rep + 1}-replica")
            cp = Resp(primary.port, timeout=10)
            cr = Resp(replica.port, timeout=10)
            try:
                return self._lag(side, primary, replica, cp, cr)
            finally:
                cp.close()
                cr.close()
        finally:
            if replica is not None:
                self.stop(replica)
            self.stop(primary)

    def _lag(self, side, primary, replica, cp: Resp, cr: Resp) -> dict:
        a = self.args
        res: dict = {"metrics": {}, "errors": {}, "warnings": []}
        try:
            cr.call("REPLICAOF", HOST, primary.port)
        except RespError as e:
            raise TrialError(f"REPLICAOF: {short(e)}") from None

        def p_off() -> int:
            return int(info(cp, "replication")["master_repl_offset"])

        src = {}

        def r_off() -> int:
            i = info(cr, "replication")
            for k in ("slave_repl_offset", "master_repl_offset"):
                if k in i:
                    src["field"] = k
                    return int(i[k])
            raise KeyError("replica INFO replication has no slave_repl_offset")

        # Wait until the (empty) pair is in sync and the primary streams writes: link up is
        # not enough (redis 7.0 after a diskless sync starts the stream only at the replica's
        # next REPLCONF ACK, up to a second later), so a probe SET on the primary must reach
        # the replica's offset within 0.2 s.
        deadline = time.monotonic() + a.sync_timeout
        last: dict = {}
        probe = 0
        while True:
            try:
                last = info(cr, "replication")
                if last.get("master_link_status") == "up":
                    probe += 1
                    cp.call("SET", "bench:probe", probe)
                    want, t_probe = p_off(), time.monotonic()
                    while r_off() < want and time.monotonic() < t_probe + 0.2:
                        time.sleep(a.poll_interval)
                    if want > 0 and r_off() >= want:
                        res["probes"] = probe
                        break
                    last = {"master_link_status": "up", "error": (
                        f"probe SET did not reach the replica's offset (primary {want}, "
                        f"replica {r_off()})")}
            except (RespError, KeyError, ValueError) as e:
                last = {"error": short(e)}
            if time.monotonic() > deadline:
                state = ", ".join(f"{k}:{last[k]}" for k in (
                    "master_link_status", "master_sync_in_progress", "error") if k in last)
                raise TrialError(f"pair not in sync within {a.sync_timeout:.0f}s "
                                 f"(replica: {state or 'no INFO'}){log_hint(replica)}")
            if not (primary.alive() and replica.alive()):
                raise TrialError("a server exited while the pair synced"
                                 + log_hint(replica if primary.alive() else primary))
            time.sleep(a.poll_interval)

        bench: dict = {}

        def run_bench():
            bench.update(nvr.bench_once(primary.port, "set", a.lag_requests, LAG_CLIENTS,
                                        LAG_PIPELINE, a.keyspace, None, None,
                                        a.run_timeout))
            bench["end"] = time.monotonic()

        ps: list[tuple[float, int]] = []   # (time, primary offset), during the load
        rs: list[tuple[float, int]] = []   # (time, replica offset), during and after
        lag_b: list[int] = []
        with CpuMeter([primary, replica]) as meter:
            th = threading.Thread(target=run_bench, daemon=True)
            th.start()
            next_pair = time.monotonic()
            try:
                while th.is_alive():
                    if time.monotonic() >= next_pair:
                        # A pair: the primary's offset, then the replica's.
                        t0 = time.monotonic()
                        p = p_off()
                        t1 = time.monotonic()
                        r = r_off()
                        t2 = time.monotonic()
                        ps.append(((t0 + t1) / 2, p))
                        rs.append(((t1 + t2) / 2, r))
                        lag_b.append(max(0, p - r))
                        next_pair = max(next_pair + a.lag_interval, time.monotonic())
                    else:
                        # In between, the replica alone at --poll-interval: the times at
                        # which it reaches each sampled primary offset (lag in ms).
                        t1 = time.monotonic()
                        r = r_off()
                        rs.append(((t1 + time.monotonic()) / 2, r))
                    time.sleep(max(0.0, min(next_pair, time.monotonic() + a.poll_interval)
                                   - time.monotonic()))
                th.join()
                # Catch-up: how long after the benchmark's last reply the replica reaches
                # the primary's final offset (polled at --poll-interval).
                p_end = p_off()
                t_end = bench.get("end", time.monotonic())
                catchup = None
                limit = time.monotonic() + a.catchup_timeout
                while time.monotonic() < limit:
                    t1 = time.monotonic()
                    r = r_off()
                    t2 = time.monotonic()
                    rs.append(((t1 + t2) / 2, r))
                    if r >= p_end:
                        catchup = max(0.0, (t1 + t2) / 2 - t_end)
                        break
                    time.sleep(a.poll_interval)
            except (RespError, KeyError, ValueError, OSError) as e:
                # No join: stopping the servers (trial_lag) ends redis-benchmark.
                raise TrialError(f"sampling offsets failed: {type(e).__name__}: {short(e)}"
                                 + ("" if primary.alive() and replica.alive()
                                    else " (a server exited)")) from None
        res["other_load"] = meter.frac
        res["samples"] = len(ps)
        t_base = ps[0][0] if ps else 0.0
        res["series"] = {  # for the JSON: seconds since the first sample, offsets
            "primary": [[round(t - t_base, 4), o] for t, o in ps],
            "replica": [[round(t - t_base, 4), o] for t, o in rs],
            "bench_end": round(bench.get("end", t_base) - t_base, 4)}
        res["offset_field"] = src.get("field")
        if "error" in bench:
            raise TrialError(f"redis-benchmark: {short(bench['error'])}")
        res["metrics"]["rps"] = bench["rps"]
        if len(ps) < 5:
            res["warnings"].append(f"only {len(ps)} offset samples during the load")
        if p_end <= 0:
            raise TrialError("the primary's master_repl_offset did not move under load")
        res["metrics"]["bytes_p50"] = percentile(lag_b, 50)
        res["metrics"]["bytes_p99"] = percentile(lag_b, 99)
        res["metrics"]["bytes_max"] = max(lag_b) if lag_b else None
        lag_ms, unresolved = lag_times(ps, rs)
        if unresolved:
            msg = (f"the replica offset ({src.get('field')}) never reached the primary's "
                   f"within {a.catchup_timeout:.0f}s after the load "
                   f"({unresolved}/{len(ps)} samples; last replica offset {rs[-1][1]:,}, "
                   f"primary {p_end:,})")
            for k in ("ms_p50", "ms_p99", "ms_max", "catchup_ms"):
                res["errors"][k] = msg
        else:
            res["metrics"]["ms_p50"] = percentile(lag_ms, 50)
            res["metrics"]["ms_p99"] = percentile(lag_ms, 99)
            res["metrics"]["ms_max"] = max(lag_ms) if lag_ms else None
            res["metrics"]["catchup_ms"] = catchup * 1000 if catchup is not None else None
            # Replication must have copied the data too, not only the offsets.
            try:
                dp, dr = int(cp.call("DBSIZE")), int(cr.call("DBSIZE"))
                res["dbsize"] = [dp, dr]
                if dp != dr:
                    res["warnings"].append(f"after catch-up DBSIZE primary {dp:,} != "
                                           f"replica {dr:,}")
            except (RespError, ValueError) as e:
                res["warnings"].append(f"DBSIZE check failed: {short(e)}")
        res["metrics"] = {k: v for k, v in res["metrics"].items() if v is not None}
        if not res["warnings"]:
            del res["warnings"]
        return res

    # ---- measurement 4: AOF write throughput

    def trial_aof(self, side: Side, rep: int, fsync: str) -> dict:
        a = self.args
        if fsync == "everysec":
            n, pipeline = a.aof_requests, 16
        else:
            n, pipeline = a.aof_always_requests, 1
        srv = self.start(side, f"aof-{fsync}{rep + 1}", appendonly="yes", fsync=fsync)
        res: dict = {"metrics": {}, "errors": {}}
        try:
            try:
                with Resp(srv.port) as c:
                    persistence = info(c, "persistence")
                    cfg = c.call("CONFIG", "GET", "appendfsync")
            except RespError as e:
                persistence, cfg = {}, f"({short(e)})"
            if persistence.get("aof_enabled") != "1":
                raise TrialError(f"started with --appendonly yes but INFO persistence says "
                                 f"aof_enabled:{persistence.get('aof_enabled')}")
            if isinstance(cfg, list) and len(cfg) == 2 and cfg[1] != fsync.encode():
                raise TrialError(f"CONFIG GET appendfsync is {cfg[1]!r}, want {fsync}")
            size0 = dir_bytes(srv.workdir)
            with CpuMeter([srv]) as meter:
                r = nvr.bench_once(srv.port, "set", n, 50, pipeline, a.keyspace, None, None,
                                   a.run_timeout)
            res["other_load"] = meter.frac
            if "error" in r:
                raise TrialError(f"redis-benchmark: {short(r['error'])}")
            # Every SET must have reached the AOF: a 16-byte key alone is 16 bytes.
            grown = dir_bytes(srv.workdir) - size0
            if grown < 16 * n:
                time.sleep(1.5)  # everysec: give a buffering writer its second
                grown = dir_bytes(srv.workdir) - size0
            res["aof_bytes"] = grown
            if grown < 16 * n:
                raise TrialError(f"the AOF grew by only {grown:,} bytes for {n:,} SETs "
                                 f"({r['rps']:,.0f} rps without durable writes)")
            res["metrics"]["rps"] = r["rps"]
            res["requests"] = n
        finally:
            self.stop(srv)
        return res


def wait_fork_done(srv: Server, limit: float) -> None:
    """Before a trial on a primary: wait until redis has no fork child (diskless sync or
    BGSAVE of the previous trial), so that it cannot slow this one."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            with Resp(srv.port) as c:
                i = info(c, "persistence")
            if i.get("rdb_bgsave_in_progress", "0") == "0":
                return
        except (RespError, OSError, ValueError):
            return
        time.sleep(0.05)


def lag_times(ps: list[tuple[float, int]], rs: list[tuple[float, int]]):
    """For each primary sample (t, P): how long until the replica's offset reached P,
    interpolating linearly between the replica samples around that point (samples are
    --lag-interval apart). Returns (lags in ms, number of samples never reached)."""
    out, unresolved, j = [], 0, 0
    for tp, p in ps:
        while j < len(rs) and rs[j][1] < p:
            j += 1
        if j == len(rs):
            unresolved += 1
            continue
        tr, r = rs[j]
        t = tr
        if j > 0:
            tr0, r0 = rs[j - 1]
            if r > r0:
                t = tr0 + (p - r0) / (r - r0) * (tr - tr0)
        out.append(max(0.0, t - tp) * 1000)
    return out, unresolved


# --------------------------------------------------------------------------- output

def fmt_value(v, unit: str) -> str:
    if v is None:
        return "-"
    if unit == "s":
        return f"{v:.3f} s"
    if unit == "ms":
        return f"{v:.1f} ms"
    if unit == "rps":
        return f"{v:,.0f}"
    if unit == "B":
        return f"{v:,.0f} B"
    return f"{v:g}"


UNITS = {key.split(".", 1)[1]: unit for key, _l, unit, _k in ROWS}


def fmt_metric(k: str, v) -> str:
    return f"{k} {fmt_value(v, UNITS.get(k, ''))}"


def summarize(results: dict, sides: list[Side], args) -> list[dict]:
    floors = ratio_floors(args)
    rows = []
    for key, label, unit, kind in ROWS:
        phase, metric = key.split(".", 1)
        m = results.get(phase)
        if m is None:
            continue
        row = {"key": key, "label": label, "unit": unit, "kind": kind}
        for side in sides:
            runs = m["runs"][side.role]
            vals = [r["metrics"][metric] for r in runs if metric in r["metrics"]]
            errs = [r["errors"].get(metric) or r["errors"].get("*") for r in runs
                    if metric not in r["metrics"] and r["errors"]]
            cell = {"values": vals, "runs": len(runs)}
            if vals:
                cell["median"] = statistics.median(vals)
                cell["spread"] = spread(vals)
            elif errs:
                cell["na"] = errs[0]
            else:
                cell["na"] = "not measured"
            row[side.role] = cell
        s, r = row["subject"], row["reference"]
        sm, rm = s.get("median"), r.get("median")
        row["ratio"] = None
        if key in floors and sm is not None and rm is not None:
            row["ratio_floor"] = floors[key]
            sm, rm = max(sm, floors[key]), max(rm, floors[key])
        if sm is not None and rm is not None:
            if rm != 0:
                row["ratio"] = sm / rm
            elif sm == 0:
                row["ratio"] = 1.0
            else:
                row["ratio"] = math.inf
        sp = [x for x in (s.get("spread"), r.get("spread")) if x is not None]
        row["spread"] = max(sp) if len(sp) == 2 else None
        if kind == "info" or row["ratio"] is None:
            row["status"] = "" if kind == "info" else "n/a"
        else:
            ok = row["ratio"] <= TARGET if kind == "time" else row["ratio"] >= TARGET
            gap = (row["ratio"] / TARGET - 1) if kind == "time" else (TARGET - row["ratio"])
            row["status"] = nvr.mark(ok, True, gap, row["spread"])
        rows.append(row)
    return rows


def print_summary(rows: list[dict], names: dict[str, str], repeat: int) -> None:
    head = ["measure", names["reference"], names["subject"], "ratio", "target",
            "spread (redis / subject)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    notes: dict[tuple[str, str], list[str]] = {}
    for row in rows:
        cells = [f"{row['label']}"]
        for role in ("reference", "subject"):
            c = row[role]
            if "median" in c:
                txt = fmt_value(c["median"], row["unit"])
                if len(c["values"]) < repeat:
                    txt += f" (n={len(c['values'])})"
            else:
                # redis-style "unknown command 'X', with args beginning with: ..." -> "...'X'"
                na = re.sub(r", with args beginning with:.*", "", c["na"])
                txt = f"n/a ({short(na, 90)})"
                if len(na) > 90:
                    notes.setdefault((names[role], c["na"]), []).append(row["label"])
            cells.append(txt)
        rt = row["ratio"]
        cells.append("-" if rt is None else ("inf" if rt == math.inf else f"{rt:.2f}"))
        if row["kind"] == "info":
            cells.append("info")
        else:
            cells.append(f"{'<=' if row['kind'] == 'time' else '>='} {TARGET:.1f} "
                         f"{row['status']}")
        cells.append(" / ".join(nvr.pct(row[r].get("spread"))
                                for r in ("reference", "subject")))
        lines.append("| " + " | ".join(cells) + " |")
    for ln in lines:
        log(ln)
    log("")
    log("(each figure is the median over the trials, n = number of trials when fewer than "
        f"--repeat {repeat}; ratio = {names['subject']} / {names['reference']};\n"
        " spread = (max-min)/median over the trials; miss? = a miss within the larger spread;"
        " lag ms is interpolated between offset samples)")
    fl = {r["key"]: (r["ratio_floor"], r["unit"]) for r in rows if "ratio_floor" in r}
    if fl:
        log(" lag ratios are of max(value, floor), floors: " + ", ".join(
            f"{k.split('.', 1)[1]} {fmt_value(v, u)}" for k, (v, u) in fl.items()))
    for (name, reason), labels in notes.items():
        log(f"  {name} n/a for {len(labels)} figure(s) ({labels[0]}"
            + (f" ... {labels[-1]}" if len(labels) > 1 else "") + f"): {reason}")


# --------------------------------------------------------------------------- main

def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description="Replication and persistence of lagwise-node vs redis-server in the "
                    "same run: full sync, replica lag, SAVE/BGSAVE, AOF throughput.",
        formatter_class=nvr._HelpFormatter)
    ap.add_argument("--lagwise-bin", default=str(REPO_ROOT / "target/release/lagwise-node"),
                    help="subject server binary (Valkey-style arguments)")
    ap.add_argument("--redis-bin", default=None,
                    help="reference server binary (default: redis-server from PATH)")
    ap.add_argument("--self-check", action="store_true",
                    help="use redis-server as the subject too (redis vs redis: ratios near "
                         "1.0 show what the harness measures and how noisy it is)")
    ap.add_argument("--subject-name", default=None,
                    help="label for the subject [default lagwise; --self-check redis2]")
    ap.add_argument("--only", default=",".join(PHASES),
                    help="comma-separated measurements to run: " + ",".join(PHASES))
    ap.add_argument("--keys", type=int, default=None,
                    help="keys for full sync and SAVE [default 1000000; --quick 100000]")
    ap.add_argument("--quick", action="store_true",
                    help="fast check: 100k keys and short loads (a few minutes at most)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="trials per measurement and server; the table shows medians")
    ap.add_argument("--lag-requests", type=int, default=None,
                    help="SETs of the lag load (-P 16 -c 50) [default 2000000; --quick 300000]")
    ap.add_argument("--aof-requests", type=int, default=None,
                    help="SETs per appendfsync everysec run (-P 16 -c 50) "
                         "[default 1000000; --quick 200000]")
    ap.add_argument("--aof-always-requests", type=int, default=None,
                    help="SETs per appendfsync always run (-P 1 -c 50) "
                         "[default 100000; --quick 20000]")
    ap.add_argument("-r", "--keyspace", type=int, default=1000000,
                    help="redis-benchmark -r for the lag and AOF loads")
    ap.add_argument("--lag-interval", type=float, default=0.05,
                    help="seconds between offset samples under load")
    ap.add_argument("--poll-interval", type=float, default=0.01,
                    help="seconds between polls for link up / DBSIZE / BGSAVE / catch-up")
    ap.add_argument("--sync-timeout", type=float, default=None,
                    help="limit for a full sync (link up and DBSIZE), seconds "
                         "[default 120; --quick 60]")
    ap.add_argument("--catchup-timeout", type=float, default=30.0,
                    help="limit for the replica to catch up after the lag load, seconds")
    ap.add_argument("--save-timeout", type=float, default=300.0,
                    help="limit for SAVE and BGSAVE, seconds")
    ap.add_argument("--loader", choices=["auto", "redis-cli", "socket"], default="auto",
                    help="how keys are loaded (see node_vs_redis.py)")
    ap.add_argument("--max-other-load", type=float, default=0.10,
                    help="a trial during which other processes used more than this fraction "
                         "of the machine's CPU is run again")
    ap.add_argument("--load-retries", type=int, default=2,
                    help="how many times a trial is run again for --max-other-load")
    ap.add_argument("--startup-timeout", type=float, default=20.0,
                    help="seconds to wait for PING after starting a server")
    ap.add_argument("--stop-timeout", type=float, default=10.0,
                    help="seconds between SIGTERM and SIGKILL")
    ap.add_argument("--run-timeout", type=float, default=600.0,
                    help="limit for one redis-benchmark run or one key load, seconds")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    ap.add_argument("--keep-logs", action="store_true",
                    help="keep the temp dir with the server logs (kept anyway on failure)")
    ap.add_argument("--fail-on-miss", action="store_true",
                    help="exit 1 if any figure misses its target or is n/a")
    a = ap.parse_args(argv)
    a.only = [p.strip().lower() for p in a.only.split(",") if p.strip()]
    bad = [p for p in a.only if p not in PHASES]
    if bad or not a.only:
        ap.error(f"--only takes a comma-separated subset of {','.join(PHASES)} (got "
                 f"{','.join(bad) or 'nothing'})")
    q = a.quick
    a.keys = a.keys if a.keys is not None else (100000 if q else 1000000)
    a.lag_requests = a.lag_requests or (300000 if q else 2000000)
    a.aof_requests = a.aof_requests or (200000 if q else 1000000)
    a.aof_always_requests = a.aof_always_requests or (20000 if q else 100000)
    a.sync_timeout = a.sync_timeout or (60.0 if q else 120.0)
    if a.subject_name is None:
        a.subject_name = "redis2" if a.self_check else "lagwise"
    if min(a.keys, a.repeat, a.lag_requests, a.aof_requests, a.aof_always_requests) < 1:
        ap.error("--keys, --repeat and the request counts must be >= 1")
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
    if not (os.path.isfile(node_bin) and os.access(node_bin, os.X_OK)):
        log(f"error: subject binary {node_bin} is missing or not executable; build it with "
            "`cargo build --release -p lagwise-node` or pass --lagwise-bin (or --self-check)")
        return 2

    names = {"subject": args.subject_name, "reference": "redis"}
    facts = nvr.machine_facts(node_bin, redis_bin)
    nvr.print_facts(facts, (names["subject"], names["reference"]))
    log(f"  config     only={','.join(args.only)} keys={args.keys:,} repeat={args.repeat} "
        f"lag_requests={args.lag_requests:,} aof_requests={args.aof_requests:,} "
        f"aof_always_requests={args.aof_always_requests:,} r={args.keyspace:,}")
    sides = [Side("reference", names["reference"], redis_bin),
             Side("subject", names["subject"], node_bin)]
    workdir = Path(tempfile.mkdtemp(prefix="lagwise-repl-bench-"))
    h = Harness(args, sides, workdir)
    results: dict = {"machine": facts, "config": {k: v for k, v in vars(args).items()},
                     "names": names}
    results["config"].update(node_bin=node_bin, redis_bin=redis_bin)
    status = 0
    t_start = time.monotonic()
    try:
        busy = nvr.idle_check()
        results["idle_check_busy_frac"] = busy
        if busy is not None and busy > 0.15:
            log(f"  WARNING    {busy * 100:.0f}% of the machine's CPU is busy before the "
                "benchmark starts: other work skews these numbers")
        log(f"  workdir    {workdir}")

        if "fullsync" in args.only or "save" in args.only:
            log("")
            log(f"== primaries with {args.keys:,} keys (key:%012d, 16-byte values)")
            h.load_primaries()
        if "fullsync" in args.only:
            log("")
            log(f"== full sync of {args.keys:,} keys: fresh replica, REPLICAOF, poll every "
                f"{args.poll_interval * 1000:.0f} ms")
            h.results["fullsync"] = h.measure("fullsync", h.trial_fullsync, args.repeat)
        if "save" in args.only:
            log("")
            log(f"== SAVE and BGSAVE of {args.keys:,} keys")
            h.results["save"] = h.measure("save", h.trial_save, args.repeat)
            h.results["bgsave"] = h.measure("bgsave", h.trial_bgsave, args.repeat)
        h.drop_primaries()
        if "lag" in args.only:
            log("")
            log(f"== replica lag: redis-benchmark -t set -P 16 -c 50 -n {args.lag_requests} "
                f"-r {args.keyspace} on the primary of a fresh pair, offsets sampled every "
                f"{args.lag_interval * 1000:.0f} ms")
            h.results["lag"] = h.measure("lag", h.trial_lag, args.repeat)
        if "aof" in args.only:
            log("")
            log(f"== AOF appendfsync everysec: redis-benchmark -t set -P 16 -c 50 "
                f"-n {args.aof_requests} -r {args.keyspace} on a fresh server")
            h.results["aof_everysec"] = h.measure(
                "aof everysec", lambda s, r: h.trial_aof(s, r, "everysec"), args.repeat)
            log(f"== AOF appendfsync always: redis-benchmark -t set -P 1 -c 50 "
                f"-n {args.aof_always_requests} -r {args.keyspace} on a fresh server")
            h.results["aof_always"] = h.measure(
                "aof always", lambda s, r: h.trial_aof(s, r, "always"), args.repeat)

        rows = summarize(h.results, sides, args)
        results["measurements"] = h.results
        results["table"] = rows
        other = [r.get("other_load") for m in h.results.values() for runs in m["runs"].values()
                 for r in runs if r.get("other_load") is not None]
        log("")
        log(f"== results ({names['subject']}: {node_bin})")
        log("")
        print_summary(rows, names, args.repeat)
        if other:
            med, mx = statistics.median(other), max(other)
            note = ("  WARNING: other processes competed for CPU; rerun on an idle machine"
                    if mx >= 0.25 or med >= 0.05 else "")
            log(f"other load during trials: median {med * 100:.0f}%, max {mx * 100:.0f}% "
                f"of the machine{note}")
        misses = [r["label"] for r in rows
                  if r["kind"] != "info" and r["status"] not in ("ok",)]
        results["misses"] = misses
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
        h.stop_all()
        results.setdefault("measurements", h.results)
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
            log(f"server logs kept in {workdir}")
    return status


if __name__ == "__main__":
    sys.exit(main())
