#!/usr/bin/env python3
"""Benchmark lagwise-node against redis-server, side by side, on this machine.

Starts the subject (lagwise-node, or any Valkey-style binary given by --node-bin) and the
reference (redis-server from PATH) on free loopback ports, then

  1. throughput/latency: redis-benchmark per test (SET GET INCR MSET LPUSH LPOP HSET SADD
     ZADD and the custom ZRANGE_100 = `ZRANGE bench:zset 0 99`), unpipelined (-c 50) and
     pipelined (-c 50 -P 16), alternating subject/reference run by run so that drift in
     machine load hits both; LPOP's list is topped up between runs so every pop hits;
  2. memory: on freshly restarted servers, used_memory (INFO memory) and VmRSS before and
     after loading N keys `key:%012d` with 16-byte values, as bytes per key;
  3. memory per element: the same for one 1M-element hash, set and sorted set each;

and prints tables marked against the targets (throughput ratio >= 1.0, p99 ratio <= 1.2,
memory ratio <= 1.2). Standard library only. See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"

TARGET_RPS_RATIO = 1.0  # subject rps / reference rps must be >= this
TARGET_P99_RATIO = 1.2  # subject p99 / reference p99 must be <= this
TARGET_MEM_RATIO = 1.2  # subject bytes/key / reference bytes/key must be <= this

DEFAULT_TESTS = "set,get,incr,mset,lpush,lpop,hset,sadd,zadd,zrange_100"

# Tests that are not redis-benchmark -t names but custom command lines (no -t). Their CSV row
# is named after the command line; the table uses the key of this dict.
ZRANGE_KEY = "bench:zset"
CUSTOM_TESTS = {
    "zrange_100": ("ZRANGE", ZRANGE_KEY, "0", "99"),
}
# Per-test factor on -n (both modes, both servers): ZRANGE_100 replies are ~1.7 KB, so a
# full-size run would take several times longer than the others.
REQUEST_SCALE = {"zrange_100": 0.25}

# redis-benchmark's pop tests and the list they pop from. Before every run of one of them the
# harness tops the list up (RPUSH, outside the measured window) so that every pop hits data.
POP_TESTS = {"lpop": "mylist", "rpop": "mylist"}

CSV_COLUMNS = [
    "test", "rps", "avg_latency_ms", "min_latency_ms", "p50_latency_ms",
    "p95_latency_ms", "p99_latency_ms", "max_latency_ms",
]


class HarnessError(Exception):
    """A failure of the run itself (server would not start, tool missing, ...)."""


def log(msg: str = "") -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------- RESP client

class RespError(Exception):
    pass


class Resp:
    """A minimal blocking RESP2 client: enough for PING, INFO, DBSIZE, FLUSHALL."""

    def __init__(self, port: int, timeout: float = 10.0):
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> "Resp":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @staticmethod
    def encode(*args) -> bytes:
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            if not isinstance(a, bytes):
                a = str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        return b"".join(out)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        self.buf += chunk

    def _line(self) -> bytes:
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line, self.buf = self.buf[:i], self.buf[i + 2:]
                return line
            self._fill()

    def _exact(self, n: int) -> bytes:
        while len(self.buf) < n + 2:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def reply(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode(errors="replace")
        if kind == b"-":
            raise RespError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n)
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.reply() for _ in range(n)]
        raise RespError(f"unexpected reply line {line[:80]!r}")

    def call(self, *args):
        self.sock.sendall(self.encode(*args))
        return self.reply()


def parse_info(raw) -> dict:
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#") or ":" not in line:
            continue
        k, v = line.split(":", 1)
        out[k.strip()] = v.strip()
    return out


# --------------------------------------------------------------------------- servers

def free_port(avoid: set[int]) -> int:
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((HOST, 0))
            port = s.getsockname()[1]
        if port not in avoid:
            return port
    raise HarnessError("could not find a free loopback port")


def tail(path: Path, lines: int = 30) -> str:
    try:
        data = path.read_bytes()[-16384:].decode(errors="replace").splitlines()
    except OSError as e:
        return f"(cannot read {path}: {e})"
    return "\n".join(data[-lines:]) or "(log is empty)"


class Server:
    def __init__(self, name: str, binary: str, workdir: Path, cpu: int | None,
                 startup_timeout: float, stop_timeout: float,
                 config: list[str] | None = None):
        self.name = name
        self.binary = binary
        self.workdir = workdir
        # Arguments after `--port P --bind HOST` (replication_vs_redis.py passes its own).
        self.config = ["--save", "", "--appendonly", "no"] if config is None else config
        self.cpu = cpu
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.log_path: Path | None = None
        self.starts = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, avoid: set[int]) -> None:
        last_err = None
        for _attempt in range(3):
            self.starts += 1
            port = free_port(avoid)
            self.log_path = self.workdir / f"{self.name}-{self.starts}.log"
            argv = [self.binary, "--port", str(port), "--bind", HOST, *self.config]
            cpu = self.cpu
            preexec = (lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None
            with open(self.log_path, "wb") as logf:
                logf.write(("# " + " ".join(repr(a) if a == "" else a for a in argv)
                            + "\n").encode())
                logf.flush()
                self.proc = subprocess.Popen(
                    argv, cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=logf,
                    stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=preexec)
            self.port = port
            try:
                self._wait_ping()
                return
            except HarnessError as e:
                last_err = e
                text = tail(self.log_path, 200)
                self.stop()
                # Lost a race for the port: try another one.
                if "in use" in text.lower():
                    avoid = avoid | {port}
                    continue
                raise
        raise last_err  # type: ignore[misc]

    def _wait_ping(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        last = "no attempt"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HarnessError(
                    f"{self.name} ({self.binary}) exited with code {self.proc.returncode} "
                    f"before answering PING on port {self.port}.\n"
                    f"--- last lines of {self.log_path} ---\n{tail(self.log_path)}")
            try:
                with Resp(self.port, timeout=1.0) as c:
                    r = c.call("PING")
                    if r == "PONG":
                        return
                    last = f"PING replied {r!r}"
            except (OSError, RespError, ValueError) as e:
                last = f"{type(e).__name__}: {e}"
            time.sleep(0.05)
        raise HarnessError(
            f"{self.name} ({self.binary}) did not answer PING on {HOST}:{self.port} within "
            f"{self.startup_timeout:.0f}s (last attempt: {last}).\n"
            f"--- last lines of {self.log_path} ---\n{tail(self.log_path)}")

    def stop(self) -> None:
        p = self.proc
        if p is None:
            return
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGTERM)
                p.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                log(f"  {self.name}: no exit {self.stop_timeout:.0f}s after SIGTERM; SIGKILL")
                p.kill()
                p.wait()
            except ProcessLookupError:
                pass
        self.proc = None

    def check_alive(self) -> None:
        if not self.alive():
            code = self.proc.returncode if self.proc else None
            raise HarnessError(
                f"{self.name} is no longer running (exit code {code}).\n"
                f"--- last lines of {self.log_path} ---\n{tail(self.log_path)}")

    def rss_bytes(self) -> int | None:
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None

    def cpu_seconds(self) -> float | None:
        """utime + stime of the server process (all its threads), in seconds."""
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return None

    def used_memory(self) -> int | None:
        try:
            with Resp(self.port) as c:
                info = parse_info(c.call("INFO", "memory"))
            return int(info["used_memory"])
        except (RespError, KeyError, ValueError, OSError):
            return None

    def dbsize(self) -> int:
        with Resp(self.port) as c:
            return int(c.call("DBSIZE"))


def machine_cpu() -> tuple[float, float] | None:
    """(busy, steal) CPU seconds of the whole machine since boot, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    hz = os.sysconf("SC_CLK_TCK")
    # user + nice + system. irq/softirq are left out: with IRQ time accounting the
    # loopback traffic of the benchmark itself lands there, charged to no process.
    busy = v[0] + v[1] + v[2]
    steal = v[7] if len(v) > 7 else 0
    return busy / hz, steal / hz


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def idle_check(seconds: float = 1.0) -> float | None:
    """Fraction of the machine's CPUs busy over `seconds` (before we start any load)."""
    a = machine_cpu()
    time.sleep(seconds)
    b = machine_cpu()
    if a is None or b is None:
        return None
    return (b[0] - a[0] + b[1] - a[1]) / (seconds * (os.cpu_count() or 1))


# --------------------------------------------------------------------------- loading keys

def resp_set_payload(n: int, value: bytes | None) -> bytes:
    """RESP SET commands for key:%012d, 0 <= i < n. value=None: 16-byte `val:%012d`."""
    if value is None:
        tmpl = b"*3\r\n$3\r\nSET\r\n$16\r\nkey:%012d\r\n$16\r\nval:%012d\r\n"
        return b"".join([tmpl % (i, i) for i in range(n)])
    tmpl = (b"*3\r\n$3\r\nSET\r\n$16\r\nkey:%012d\r\n$" + str(len(value)).encode()
            + b"\r\n" + value.replace(b"%", b"%%") + b"\r\n")
    return b"".join([tmpl % i for i in range(n)])


def _bulk(b: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(b), b)


# The 1M-element collections of the memory phase: (type, key, size command).
COLLECTIONS = [
    ("hash", b"bench:hash", "HLEN"),
    ("set", b"bench:set", "SCARD"),
    ("zset", b"bench:zset", "ZCARD"),
]
ELEMENTS_PER_CMD = 100


def resp_collection_payload(kind: str, key: bytes, n: int,
                            per_cmd: int = ELEMENTS_PER_CMD) -> tuple[bytes, int]:
    """RESP commands adding n elements to one collection, per_cmd elements per command:
    hash: HSET key member:%09d value:%09d ...; set: SADD key member:%09d ...;
    zset: ZADD key I member:%09d ... (distinct scores 0..n-1). Returns (payload, commands)."""
    verb = {"hash": b"HSET", "set": b"SADD", "zset": b"ZADD"}[kind]
    per_elem = 2 if kind in ("hash", "zset") else 1
    head_key = _bulk(verb) + _bulk(key)
    out = []
    cmds = 0
    for start in range(0, n, per_cmd):
        stop = min(n, start + per_cmd)
        parts = [b"*%d\r\n" % (2 + per_elem * (stop - start)), head_key]
        if kind == "hash":
            tmpl = b"$16\r\nmember:%09d\r\n$15\r\nvalue:%09d\r\n"
            parts += [tmpl % (i, i) for i in range(start, stop)]
        elif kind == "set":
            tmpl = b"$16\r\nmember:%09d\r\n"
            parts += [tmpl % i for i in range(start, stop)]
        else:
            parts += [_bulk(b"%d" % i) + b"$16\r\nmember:%09d\r\n" % i
                      for i in range(start, stop)]
        out.append(b"".join(parts))
        cmds += 1
    return b"".join(out), cmds


def load_with_redis_cli(port: int, payload_file: Path, n: int, timeout: float) -> dict:
    with open(payload_file, "rb") as f:
        p = subprocess.run(["redis-cli", "-h", HOST, "-p", str(port), "--pipe",
                            "--pipe-timeout", "30"],
                           stdin=f, capture_output=True, timeout=timeout)
    out = (p.stdout + p.stderr).decode(errors="replace")
    m = re.search(r"errors:\s*(\d+),\s*replies:\s*(\d+)", out)
    if p.returncode != 0 or not m:
        text = "".join(ch if ch.isprintable() or ch == "\n" else "?" for ch in out.strip())
        raise HarnessError(f"redis-cli --pipe failed (rc={p.returncode}): "
                           + " | ".join(text.splitlines()[-3:])[-500:])
    errors, replies = int(m.group(1)), int(m.group(2))
    if errors or replies != n:
        raise HarnessError(f"redis-cli --pipe: errors={errors} replies={replies} (want {n})")
    return {"loader": "redis-cli --pipe", "errors": errors, "replies": replies}


def load_with_socket(port: int, payload: bytes, n: int, chunk: int = 1 << 20) -> dict:
    """Pipelined loader over one socket: a thread sends `payload` (n commands) while this
    one counts the replies. Every reply of the loaders' commands (SET, HSET, SADD, ZADD,
    RPUSH) is exactly one line: +OK, :N or -ERR."""
    import threading
    errors = 0
    sample = None
    sock = socket.create_connection((HOST, port), timeout=120)
    send_err: list[BaseException] = []

    def sender():
        try:
            view = memoryview(payload)
            for off in range(0, len(view), chunk):
                sock.sendall(view[off:off + chunk])
        except OSError as e:
            send_err.append(e)
    t = threading.Thread(target=sender, daemon=True)
    t.start()
    try:
        got, buf = 0, b""
        while got < n:
            data = sock.recv(1 << 20)
            if not data:
                raise HarnessError("server closed the connection while loading"
                                   + (f" ({send_err[0]})" if send_err else ""))
            buf += data
            lines = buf.split(b"\r\n")
            buf = lines.pop()
            for line in lines:
                got += 1
                if line.startswith(b"-"):
                    errors += 1
                    sample = sample or line[:200]
    finally:
        sock.close()
        t.join(timeout=5)
    if errors:
        raise HarnessError(f"socket loader: {errors} error replies, e.g. {sample!r}")
    return {"loader": "python socket pipeline", "errors": 0, "replies": n}


def load_keys(server: Server, payload: bytes, payload_file: Path, n: int,
              loader: str, timeout: float) -> dict:
    t0 = time.monotonic()
    res = None
    use_cli = loader in ("auto", "redis-cli") and shutil.which("redis-cli")
    if use_cli and loader == "auto":
        # redis-cli --pipe ends with an ECHO of a random marker and waits for it
        # (--pipe-timeout) if the server does not answer ECHO.
        try:
            with Resp(server.port) as c:
                use_cli = c.call("ECHO", "lagwise-bench") == b"lagwise-bench"
        except (RespError, OSError, ValueError):
            use_cli = False
        if not use_cli:
            log(f"  {server.name}: no ECHO, so no redis-cli --pipe; using the socket loader")
    if use_cli:
        try:
            res = load_with_redis_cli(server.port, payload_file, n, timeout)
        except (HarnessError, subprocess.TimeoutExpired) as e:
            if loader == "redis-cli":
                raise HarnessError(f"{server.name}: {e}") from None
            log(f"  {server.name}: redis-cli --pipe failed ({e}); "
                "falling back to the socket loader")
            server.check_alive()
            # A partial load would skew the result; start from an empty keyspace.
            with Resp(server.port, timeout=120) as c:
                c.call("FLUSHALL")
    if res is None:
        res = load_with_socket(server.port, payload, n)
    res["seconds"] = round(time.monotonic() - t0, 3)
    return res


def prepare_zrange(servers: list[Server], members: int) -> dict:
    """Loads ZRANGE_100's sorted set (members `m:%06d`, scores 0..members-1) on every server
    and checks that ZRANGE ... 0 99 returns the same 100 members everywhere."""
    out = {}
    payload, cmds = resp_collection_payload("zset", ZRANGE_KEY.encode(), members)
    payload = payload.replace(b"$16\r\nmember:000", b"$13\r\nmember:")  # member:%06d
    replies = []
    for srv in servers:
        with Resp(srv.port) as c:
            c.call("DEL", ZRANGE_KEY)
        load_with_socket(srv.port, payload, cmds)
        with Resp(srv.port) as c:
            card = int(c.call("ZCARD", ZRANGE_KEY))
            got = c.call(*CUSTOM_TESTS["zrange_100"])
            try:
                enc = c.call("OBJECT", "ENCODING", ZRANGE_KEY)
                enc = enc.decode() if isinstance(enc, bytes) else str(enc)
            except RespError as e:
                enc = f"(OBJECT ENCODING: {e})"
        if card != members or not isinstance(got, list) or len(got) != 100:
            raise HarnessError(f"{srv.name}: {ZRANGE_KEY} has ZCARD {card} (want {members}) "
                               f"and ZRANGE 0 99 gave {len(got) if isinstance(got, list) else got!r}")
        replies.append(got)
        out[srv.name] = {"zcard": card, "encoding": enc}
        log(f"  {srv.name}: {ZRANGE_KEY} loaded for ZRANGE_100, ZCARD {card:,}, encoding {enc}")
    if any(r != replies[0] for r in replies):
        raise HarnessError(f"ZRANGE {ZRANGE_KEY} 0 99 differs between the servers")
    return out


def spot_check(srv: Server, key: bytes):
    try:
        with Resp(srv.port) as c:
            return c.call("GET", key)
    except (RespError, OSError, ValueError) as e:
        return f"{type(e).__name__}: {e}"


# --------------------------------------------------------------------------- redis-benchmark

def bench_once(port: int, test: str, n: int, clients: int, pipeline: int, keyspace: int,
               datasize: int | None, cpu: int | None, timeout: float) -> dict:
    custom = CUSTOM_TESTS.get(test)
    argv = ["redis-benchmark", "-h", HOST, "-p", str(port)]
    if custom is None:
        argv += ["-t", test]
    argv += ["-n", str(n), "-c", str(clients), "-r", str(keyspace), "--csv"]
    if pipeline > 1:
        argv += ["-P", str(pipeline)]
    if datasize is not None:
        argv += ["-d", str(datasize)]
    if custom is not None:
        # A custom command: redis-benchmark names its CSV row after the command line.
        argv += list(custom)
    preexec = (lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None
    t0 = time.monotonic()
    try:
        p = subprocess.run(argv, capture_output=True, timeout=timeout, preexec_fn=preexec,
                           stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return {"error": f"redis-benchmark timed out after {timeout:.0f}s", "argv": argv}
    wall = time.monotonic() - t0
    out = p.stdout.decode(errors="replace")
    err = p.stderr.decode(errors="replace").strip()
    rows = parse_csv(out)
    want = test.lower() if custom is None else " ".join(custom).lower()
    match = [r for r in rows if r["test"].split(" (")[0].lower() == want]
    for r in match:
        if custom is not None:
            r["csv_test"] = r["test"]
            r["test"] = test.upper()
    res = {"argv": argv, "wall_s": round(wall, 3)}
    if err:
        res["stderr"] = err[-1000:]
    if p.returncode != 0 or not match:
        # redis-benchmark 7 exits at the first error reply ("Error from server: ...").
        res["error"] = (f"redis-benchmark rc={p.returncode}: "
                        + (err.splitlines()[-1] if err else out.strip()[-300:] or "no output"))
        return res
    res.update(match[-1])
    return res


def parse_csv(text: str) -> list[dict]:
    import csv
    rows = []
    reader = csv.reader(text.splitlines())
    header = None
    for rec in reader:
        if not rec:
            continue
        if header is None:
            header = rec
            if header != CSV_COLUMNS:
                raise HarnessError(f"unexpected redis-benchmark CSV header: {header}")
            continue
        d = dict(zip(header, rec))
        for k in CSV_COLUMNS[1:]:
            d[k] = float(d[k])
        rows.append(d)
    return rows


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def list_len(srv: Server, key: str) -> int | None:
    try:
        with Resp(srv.port) as c:
            return int(c.call("LLEN", key))
    except (RespError, OSError, ValueError):
        return None


def top_up_list(srv: Server, key: str, want: int, value: bytes) -> dict:
    """RPUSH `value` onto `key` until LLEN >= want (pipelined, 1000 elements a command)."""
    have = list_len(srv, key)
    res = {"len_found": have, "pushed": 0}
    if have is None or have >= want:
        return res
    missing = want - have
    per = 1000
    cmds = []
    for start in range(0, missing, per):
        k = min(per, missing - start)
        cmds.append(b"*%d\r\n" % (2 + k) + _bulk(b"RPUSH") + _bulk(key.encode())
                    + _bulk(value) * k)
    load_with_socket(srv.port, b"".join(cmds), len(cmds))
    res["pushed"] = missing
    return res


def pop_prepare(srv: Server, test: str, n: int, pipeline: int, args) -> dict | None:
    """For a pop test: fill its list so that all n pops (plus redis-benchmark's pipeline
    overshoot) hit data. Returns {len_found, pushed, len_before}, or None for other tests."""
    key = POP_TESTS.get(test)
    if key is None:
        return None
    want = n + args.clients * max(pipeline, 1) + 1000
    res = top_up_list(srv, key, want, b"x" * (args.datasize or 3))
    res["len_before"] = list_len(srv, key)
    return res


def measured_run(srv: Server, test: str, n: int, pipeline: int, args,
                 cpu_client: int | None) -> dict:
    """One redis-benchmark run plus CPU accounting of the server, the client and the rest."""
    srv.check_alive()
    pop = pop_prepare(srv, test, n, pipeline, args)
    cpu0, m0, c0, w0 = srv.cpu_seconds(), machine_cpu(), children_cpu(), time.monotonic()
    r = bench_once(srv.port, test, n, args.clients, pipeline, args.keyspace, args.datasize,
                   cpu_client, args.run_timeout)
    cpu1, m1, c1, w1 = srv.cpu_seconds(), machine_cpu(), children_cpu(), time.monotonic()
    if pop is not None:
        # How many of the run's pops found an element: LLEN before - after, per request.
        pop["len_after"] = list_len(srv, POP_TESTS[test])
        if pop["len_before"] is not None and pop["len_after"] is not None:
            pop["popped"] = pop["len_before"] - pop["len_after"]
            pop["hit_ratio"] = min(1.0, pop["popped"] / n)
        r["pop"] = pop
    if cpu0 is not None and cpu1 is not None:
        r["server_cpu_s"] = round(cpu1 - cpu0, 3)
        r["server_cpu_us_per_req"] = (cpu1 - cpu0) * 1e6 / n
        r["bench_cpu_s"] = round(c1 - c0, 3)
        if m0 is not None and m1 is not None and w1 > w0:
            # CPU used by anything but this server and redis-benchmark (other builds and
            # tests, steal), as a fraction of the whole machine over the run.
            other = (m1[0] - m0[0]) - (cpu1 - cpu0) - (c1 - c0) + (m1[1] - m0[1])
            r["foreign_cpu_frac"] = round(
                max(other, 0.0) / ((w1 - w0) * (os.cpu_count() or 1)), 3)
    srv.check_alive()
    return r


def warm_up(servers: list[Server], args, cpu_client: int | None) -> None:
    """A short unrecorded run per server, so first-run effects hit neither table row."""
    n0 = max(1000, min(args.requests // 4, 50000))
    for srv in servers:
        t0 = time.monotonic()
        for test in args.tests:
            n = test_requests(test, n0)
            pop_prepare(srv, test, n, 1, args)
            r = bench_once(srv.port, test, n, args.clients, 1, args.keyspace, args.datasize,
                           cpu_client, args.run_timeout)
            if "error" in r:
                log(f"  warm-up {srv.name} {test.upper()}: {r['error']}")
        srv.check_alive()
        log(f"  warm-up {srv.name}: {n0:,} requests per test in {time.monotonic() - t0:.1f}s")


def test_requests(test: str, n: int) -> int:
    return max(1000, int(n * REQUEST_SCALE.get(test, 1.0)))


def run_throughput(subject: Server, reference: Server, args, cpu_client: int | None,
                   names: tuple[str, str]) -> list[dict]:
    modes = [("c%d" % args.clients, 1, args.requests)]
    if args.pipeline > 1:
        modes.append(("c%d P%d" % (args.clients, args.pipeline), args.pipeline,
                      args.requests_pipelined))
    results = []
    k = 0
    total = len(modes) * len(args.tests) * args.repeat
    for mode, pipeline, n_mode in modes:
        for test in args.tests:
            n = test_requests(test, n_mode)
            runs = {"subject": [], "reference": []}
            discarded = []
            for rep in range(args.repeat):
                # Alternate which server goes first, pair by pair (ABBA...), so slow drift
                # in machine load hits both sides alike.
                order = [("subject", subject), ("reference", reference)]
                if k % 2:
                    order.reverse()
                k += 1
                for attempt in range(args.load_retries + 1):
                    pair = {}
                    for role, srv in order:
                        r = measured_run(srv, test, n, pipeline, args, cpu_client)
                        pair[role] = r
                        msg = (f"{r['rps']:>12,.0f} rps  p50 {r['p50_latency_ms']:.3f}  "
                               f"p99 {r['p99_latency_ms']:.3f} ms" if "error" not in r
                               else "ERROR " + r["error"])
                        if r.get("foreign_cpu_frac", 0) >= 0.05:
                            msg += f"  (other load {r['foreign_cpu_frac'] * 100:.0f}%)"
                        log(f"  [{k:>3}/{total}] {test.upper():<10} {mode:<8} "
                            f"{names[0] if role == 'subject' else names[1]:<8} {msg}")
                    worst = max(x.get("foreign_cpu_frac") or 0.0 for x in pair.values())
                    if worst <= args.max_other_load or attempt == args.load_retries:
                        break
                    # Another process took CPU during this pair: measure the pair again.
                    discarded.append(pair)
                    log(f"          other load {worst * 100:.0f}% > "
                        f"{args.max_other_load * 100:.0f}%: pair discarded, running it again")
                for role, r in pair.items():
                    runs[role].append(r)
            row = summarize_row(test, mode, n, pipeline, runs)
            if discarded:
                row["discarded_pairs"] = discarded
            results.append(row)
    return results


def summarize_row(test, mode, n, pipeline, runs) -> dict:
    row = {"test": test.upper(), "mode": mode, "requests": n, "pipeline": pipeline}
    for role in ("subject", "reference"):
        ok = [r for r in runs[role] if "error" not in r]
        errs = [r["error"] for r in runs[role] if "error" in r]
        side = {"runs": runs[role]}
        if errs:
            side["errors"] = errs
        if ok:
            for key, col in (("rps", "rps"), ("p50_ms", "p50_latency_ms"),
                             ("p99_ms", "p99_latency_ms"), ("avg_ms", "avg_latency_ms"),
                             ("max_ms", "max_latency_ms"),
                             ("cpu_us_per_req", "server_cpu_us_per_req")):
                vals = [r[col] for r in ok if r.get(col) is not None]
                if vals:
                    side[key] = statistics.median(vals)
        row[role] = side
    s, r = row["subject"], row["reference"]
    # Run-to-run spread, (max - min) / median over the repeats of one side, the larger of
    # the two sides: a miss smaller than this is within the noise of this machine.
    for key, col in (("rps_spread", "rps"), ("p99_spread", "p99_latency_ms")):
        spreads = []
        for side in (s, r):
            vals = [x[col] for x in side["runs"] if "error" not in x]
            if len(vals) >= 2 and statistics.median(vals) > 0:
                spreads.append((max(vals) - min(vals)) / statistics.median(vals))
        row[key] = max(spreads) if len(spreads) == 2 else None
    for side in (s, r):
        pops = [x["pop"] for x in side["runs"] if x.get("pop")]
        if pops:
            hits = [p.get("hit_ratio") for p in pops]
            side["pop_hit_ratio_min"] = None if None in hits else min(hits)
            side["pop_len_before"] = [p.get("len_before") for p in pops]
            side["pop_len_after"] = [p.get("len_after") for p in pops]
            side["pop_pushed"] = sum(p.get("pushed") or 0 for p in pops)
    row["rps_ratio"] = ratio(s.get("rps"), r.get("rps"))
    row["p99_ratio"] = ratio(s.get("p99_ms"), r.get("p99_ms"))
    row["cpu_ratio"] = ratio(s.get("cpu_us_per_req"), r.get("cpu_us_per_req"))
    row["rps_ok"] = (not s.get("errors") and row["rps_ratio"] is not None
                     and row["rps_ratio"] >= TARGET_RPS_RATIO)
    row["p99_ok"] = (not s.get("errors") and row["p99_ratio"] is not None
                     and row["p99_ratio"] <= TARGET_P99_RATIO)
    return row


# --------------------------------------------------------------------------- output

def fmt_num(v, spec):
    return "-" if v is None else format(v, spec)


def print_table(headers: list[str], rows: list[list[str]], right: set[int]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]

    def line(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    log(line(headers))
    log(line(["-" * w for w in widths]))
    for r in rows:
        log(line(r))


def mark(ok: bool, have: bool, gap: float | None = None, spread: float | None = None) -> str:
    """ok / MISS; `miss?` when the miss is smaller than the run-to-run spread."""
    if not have:
        return "ERR"
    if ok:
        return "ok"
    if gap is not None and spread is not None and gap <= spread:
        return "miss?"
    return "MISS"


def pct(v):
    return "-" if v is None else f"{v * 100:.0f}%"


def print_throughput(rows: list[dict], names: tuple[str, str]) -> None:
    sn, rn = names
    headers = ["test", "mode", f"{sn} rps", f"{rn} rps", "ratio",
               f"{sn} p50", f"{sn} p99", f"{rn} p50", f"{rn} p99", "p99 ratio",
               f"rps>={TARGET_RPS_RATIO:g}", f"p99<={TARGET_P99_RATIO:g}",
               "rps spread", "p99 spread", "cpu/req ratio"]
    out = []
    for r in rows:
        s, f = r["subject"], r["reference"]
        out.append([
            r["test"], r["mode"],
            fmt_num(s.get("rps"), ",.0f"), fmt_num(f.get("rps"), ",.0f"),
            fmt_num(r["rps_ratio"], ".2f"),
            fmt_num(s.get("p50_ms"), ".3f"), fmt_num(s.get("p99_ms"), ".3f"),
            fmt_num(f.get("p50_ms"), ".3f"), fmt_num(f.get("p99_ms"), ".3f"),
            fmt_num(r["p99_ratio"], ".2f"),
            mark(r["rps_ok"], r["rps_ratio"] is not None,
                 None if r["rps_ratio"] is None else TARGET_RPS_RATIO - r["rps_ratio"],
                 r.get("rps_spread")),
            mark(r["p99_ok"], r["p99_ratio"] is not None,
                 None if r["p99_ratio"] is None else r["p99_ratio"] / TARGET_P99_RATIO - 1,
                 r.get("p99_spread")),
            pct(r.get("rps_spread")), pct(r.get("p99_spread")),
            fmt_num(r.get("cpu_ratio"), ".2f"),
        ])
    print_table(headers, out, right=set(range(2, 15)))
    log("(latencies in ms; each figure is the median of --repeat runs; spread = "
        "(max-min)/median over the runs, the worse side; miss? = a miss within that spread;\n"
        " cpu/req ratio = server CPU time (all threads) per request, subject / redis)")
    scaled = sorted({(r["test"], r["mode"], r["requests"]) for r in rows
                     if REQUEST_SCALE.get(r["test"].lower(), 1.0) != 1.0})
    if scaled:
        log(" requests per run scaled down for: " + ", ".join(
            f"{t} {m} n={n:,}" for t, m, n in scaled) + " (same n for both servers)")
    for r in rows:
        for role, nm in (("subject", sn), ("reference", rn)):
            side = r[role]
            if "pop_len_before" not in side:
                continue
            key = POP_TESTS.get(r["test"].lower(), "?")
            spans = " ".join(f"{fmt_num(a, ',')}->{fmt_num(b, ',')}" for a, b in
                             zip(side["pop_len_before"], side["pop_len_after"]))
            hit = side.get("pop_hit_ratio_min")
            log(f" {r['test']} {r['mode']} {nm}: LLEN {key} before->after each run {spans}; "
                f"pops that hit data >= {pct(hit) if hit is None else f'{hit * 100:.1f}%'}"
                f" (n={r['requests']:,}; topped up {side['pop_pushed']:,} elements "
                "between runs)")
    for r in rows:
        for role, nm in (("subject", sn), ("reference", rn)):
            for e in r[role].get("errors", []):
                log(f"  {r['test']} {r['mode']} {nm}: {e}")


def print_memory(mem: dict, names: tuple[str, str]) -> None:
    sn, rn = names
    s, r = mem["subject"], mem["reference"]

    def mib(v):
        return fmt_num(None if v is None else v / (1 << 20), ",.1f")
    headers = ["metric", sn, rn, "ratio", f"<={TARGET_MEM_RATIO:g}"]
    rows = [
        ["used_memory before (MiB)", mib(s.get("used_memory_before")),
         mib(r.get("used_memory_before")), "", ""],
        ["used_memory after (MiB)", mib(s.get("used_memory_after")),
         mib(r.get("used_memory_after")), "", ""],
        ["RSS before (MiB)", mib(s.get("rss_before")), mib(r.get("rss_before")), "", ""],
        ["RSS after (MiB)", mib(s.get("rss_after")), mib(r.get("rss_after")), "", ""],
        ["used_memory bytes/key", fmt_num(s.get("used_memory_per_key"), ".1f"),
         fmt_num(r.get("used_memory_per_key"), ".1f"),
         fmt_num(mem.get("used_memory_ratio"), ".2f"),
         mark(mem.get("used_memory_ok", False), mem.get("used_memory_ratio") is not None)],
        ["RSS bytes/key", fmt_num(s.get("rss_per_key"), ".1f"),
         fmt_num(r.get("rss_per_key"), ".1f"),
         fmt_num(mem.get("rss_ratio"), ".2f"),
         mark(mem.get("rss_ok", False), mem.get("rss_ratio") is not None)],
        ["DBSIZE after load", fmt_num(s.get("dbsize"), ","), fmt_num(r.get("dbsize"), ","),
         "", mark(s.get("dbsize") == mem["keys"], s.get("dbsize") is not None)],
        ["load time (s)", fmt_num(s.get("load", {}).get("seconds"), ".2f"),
         fmt_num(r.get("load", {}).get("seconds"), ".2f"), "", ""],
    ]
    print_table(headers, rows, right={1, 2, 3, 4})
    for role, nm in (("subject", sn), ("reference", rn)):
        for e in mem[role].get("errors", []):
            log(f"  {nm}: {e}")


# --------------------------------------------------------------------------- memory phase

def run_memory(servers: list[Server], n: int, workdir: Path, loader: str,
               timeout: float, avoid: set[int]) -> dict:
    t0 = time.monotonic()
    payload = resp_set_payload(n, None)
    payload_file = workdir / f"set-{n}.resp"
    payload_file.write_bytes(payload)
    log(f"  generated {len(payload) / (1 << 20):.1f} MiB of RESP for {n:,} SETs "
        f"in {time.monotonic() - t0:.1f}s")
    result = {"keys": n, "key_format": "key:%012d", "value_bytes": 16}
    for srv, role in zip(servers, ("subject", "reference")):
        side: dict = {"errors": []}
        result[role] = side
        # Fresh process: the throughput phase's keys and allocator state are gone.
        srv.stop()
        srv.start(avoid)
        avoid.add(srv.port)
        time.sleep(0.2)
        side["used_memory_before"] = srv.used_memory()
        side["rss_before"] = srv.rss_bytes()
        before_db = srv.dbsize()
        if before_db != 0:
            side["errors"].append(f"DBSIZE {before_db} on a fresh server")
        try:
            side["load"] = load_keys(srv, payload, payload_file, n, loader, timeout)
        except (HarnessError, OSError) as e:
            side["errors"].append(f"load failed: {e}")
            srv.check_alive()
        time.sleep(0.5)
        side["dbsize"] = srv.dbsize()
        if side["dbsize"] != n:
            side["errors"].append(f"DBSIZE {side['dbsize']} after load, want {n}")
        for i in (0, n // 2, n - 1):
            got = spot_check(srv, b"key:%012d" % i)
            if got != b"val:%012d" % i:
                side["errors"].append(f"GET key:{i:012d} returned {got!r}")
                break
        side["used_memory_after"] = srv.used_memory()
        side["rss_after"] = srv.rss_bytes()
        if side["used_memory_before"] is None or side["used_memory_after"] is None:
            side["errors"].append("INFO memory gives no used_memory")
        for key, a, b in (("used_memory_per_key", "used_memory_after", "used_memory_before"),
                          ("rss_per_key", "rss_after", "rss_before")):
            if side.get(a) is not None and side.get(b) is not None:
                side[key] = (side[a] - side[b]) / n
        if not side["errors"]:
            del side["errors"]
        ld = side.get("load", {})
        log(f"  {srv.name}: loaded {side['dbsize']:,} keys"
            + (f" with {ld['loader']} in {ld['seconds']:.2f}s" if ld else ""))
    payload_file.unlink(missing_ok=True)
    s, r = result["subject"], result["reference"]
    ok_load = s.get("dbsize") == n
    for key, rk in (("used_memory", "used_memory_per_key"), ("rss", "rss_per_key")):
        rat = ratio(s.get(rk), r.get(rk))
        result[f"{key}_ratio"] = rat
        result[f"{key}_ok"] = ok_load and rat is not None and rat <= TARGET_MEM_RATIO
    return result


def run_collections(servers: list[Server], n: int, workdir: Path, loader: str,
                    timeout: float, avoid: set[int]) -> dict:
    """Memory per element of one n-element hash, set and sorted set, each loaded on a freshly
    started server (nothing else in it)."""
    result: dict = {"elements": n, "per_command": ELEMENTS_PER_CMD, "types": {}}
    for kind, key, size_cmd in COLLECTIONS:
        t0 = time.monotonic()
        payload, cmds = resp_collection_payload(kind, key, n)
        payload_file = workdir / f"{kind}-{n}.resp"
        payload_file.write_bytes(payload)
        log(f"  {kind}: generated {len(payload) / (1 << 20):.1f} MiB of RESP "
            f"({cmds:,} commands) in {time.monotonic() - t0:.1f}s")
        res: dict = {"key": key.decode(), "size_command": size_cmd}
        result["types"][kind] = res
        last = n - 1
        member = b"member:%09d" % last
        for srv, role in zip(servers, ("subject", "reference")):
            side: dict = {"errors": []}
            res[role] = side
            srv.stop()
            srv.start(avoid)
            avoid.add(srv.port)
            time.sleep(0.2)
            side["used_memory_before"] = srv.used_memory()
            side["rss_before"] = srv.rss_bytes()
            try:
                side["load"] = load_keys(srv, payload, payload_file, cmds, loader, timeout)
            except (HarnessError, OSError) as e:
                side["errors"].append(f"load failed: {e}")
                srv.check_alive()
            time.sleep(0.5)
            try:
                with Resp(srv.port, timeout=60) as c:
                    side["size"] = int(c.call(size_cmd, key))
                    side["dbsize"] = int(c.call("DBSIZE"))
                    if kind == "hash":
                        got, want = c.call("HGET", key, member), b"value:%09d" % last
                    elif kind == "set":
                        got, want = c.call("SISMEMBER", key, member), 1
                    else:
                        got = c.call("ZSCORE", key, member)
                        want = b"%d" % last
                    if got != want:
                        side["errors"].append(f"spot check of {member.decode()}: got {got!r}, "
                                              f"want {want!r}")
                    try:
                        enc = c.call("OBJECT", "ENCODING", key)
                        side["encoding"] = enc.decode() if isinstance(enc, bytes) else str(enc)
                    except RespError:
                        pass
            except (RespError, OSError, ValueError) as e:
                side["errors"].append(f"size check failed: {type(e).__name__}: {e}")
            if side.get("size") != n:
                side["errors"].append(f"{size_cmd} {side.get('size')} after load, want {n}")
            side["used_memory_after"] = srv.used_memory()
            side["rss_after"] = srv.rss_bytes()
            if side["used_memory_before"] is None or side["used_memory_after"] is None:
                side["errors"].append("INFO memory gives no used_memory")
            for k, a, b in (("used_memory_per_elem", "used_memory_after", "used_memory_before"),
                            ("rss_per_elem", "rss_after", "rss_before")):
                if side.get(a) is not None and side.get(b) is not None:
                    side[k] = (side[a] - side[b]) / n
            if not side["errors"]:
                del side["errors"]
            ld = side.get("load", {})
            log(f"  {srv.name}: {kind} {key.decode()} {size_cmd} {side.get('size', '?'):,}"
                + (f" with {ld['loader']} in {ld['seconds']:.2f}s" if ld else "")
                + (f", encoding {side['encoding']}" if side.get("encoding") else ""))
        payload_file.unlink(missing_ok=True)
        del payload
        s, r = res["subject"], res["reference"]
        ok_load = s.get("size") == n and not s.get("errors")
        for k, rk in (("used_memory", "used_memory_per_elem"), ("rss", "rss_per_elem")):
            rat = ratio(s.get(rk), r.get(rk))
            res[f"{k}_ratio"] = rat
            res[f"{k}_ok"] = ok_load and rat is not None and rat <= TARGET_MEM_RATIO
    return result


def print_collections(col: dict, names: tuple[str, str]) -> None:
    sn, rn = names
    n = col["elements"]
    headers = ["type", "check", f"{sn} used B/elem", f"{rn} used B/elem", "ratio",
               f"<={TARGET_MEM_RATIO:g}", f"{sn} RSS B/elem", f"{rn} RSS B/elem", "ratio",
               f"<={TARGET_MEM_RATIO:g}", f"{sn} enc", f"{rn} enc", f"{sn} load s",
               f"{rn} load s"]
    rows = []
    for kind, res in col["types"].items():
        s, r = res["subject"], res["reference"]
        sizes_ok = s.get("size") == n and r.get("size") == n
        check = (f"{res['size_command']}={n:,}" if sizes_ok else
                 f"{res['size_command']} {fmt_num(s.get('size'), ',')}/"
                 f"{fmt_num(r.get('size'), ',')}")
        rows.append([
            kind, check,
            fmt_num(s.get("used_memory_per_elem"), ".1f"),
            fmt_num(r.get("used_memory_per_elem"), ".1f"),
            fmt_num(res.get("used_memory_ratio"), ".2f"),
            mark(res.get("used_memory_ok", False), res.get("used_memory_ratio") is not None),
            fmt_num(s.get("rss_per_elem"), ".1f"), fmt_num(r.get("rss_per_elem"), ".1f"),
            fmt_num(res.get("rss_ratio"), ".2f"),
            mark(res.get("rss_ok", False), res.get("rss_ratio") is not None),
            s.get("encoding", "-"), r.get("encoding", "-"),
            fmt_num(s.get("load", {}).get("seconds"), ".2f"),
            fmt_num(r.get("load", {}).get("seconds"), ".2f"),
        ])
    print_table(headers, rows, right={2, 3, 4, 5, 6, 7, 8, 9, 12, 13})
    log(f"(one {n:,}-element collection per fresh server; B/elem = (after - before) / {n:,};"
        " members member:%09d, hash values value:%09d, zset scores 0..n-1)")
    for kind, res in col["types"].items():
        for role, nm in (("subject", sn), ("reference", rn)):
            for e in res[role].get("errors", []):
                log(f"  {kind} {nm}: {e}")


# --------------------------------------------------------------------------- machine facts

def cmd_out(argv, timeout=5.0, cwd=None) -> str | None:
    try:
        p = subprocess.run(argv, capture_output=True, timeout=timeout, cwd=cwd,
                           stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if p.returncode != 0:
        return None
    return p.stdout.decode(errors="replace").strip() or None


def machine_facts(node_bin: str, redis_bin: str) -> dict:
    facts: dict = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "loadavg": os.getloadavg(),
    }
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                facts["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                facts["mem_total_gib"] = round(int(line.split()[1]) / (1 << 20), 1)
                break
    except OSError:
        pass
    facts["redis_server"] = cmd_out([redis_bin, "--version"])
    facts["redis_benchmark"] = cmd_out(["redis-benchmark", "--version"])
    nb = Path(node_bin)
    node = {"path": str(nb.absolute())}
    if nb.resolve() != nb.absolute():
        node["resolves_to"] = str(nb.resolve())
    try:
        st = nb.stat()
        node["size_bytes"] = st.st_size
        node["mtime"] = _dt.datetime.fromtimestamp(st.st_mtime).astimezone().isoformat(
            timespec="seconds")
    except OSError as e:
        node["error"] = str(e)
    if os.path.realpath(node_bin) == os.path.realpath(redis_bin):
        node["note"] = "subject is the reference redis-server itself (self-test)"
    if re.search(r"redis|valkey", nb.name):
        node["version"] = cmd_out([node_bin, "--version"])
    try:
        Path(node_bin).resolve().relative_to(REPO_ROOT)
        in_repo = True
    except ValueError:
        in_repo = False
    if in_repo:
        node["git_describe"] = cmd_out(["git", "describe", "--always", "--dirty", "--tags"],
                                       cwd=REPO_ROOT) or "(no commits)"
        node["git_head"] = cmd_out(["git", "log", "-1", "--format=%H %cI"], cwd=REPO_ROOT)
    facts["node"] = node
    return facts


def print_facts(f: dict, names) -> None:
    log("== machine")
    log(f"  date       {f['date']}  host {f['hostname']}  kernel {f['kernel']}")
    log(f"  cpus       nproc={f['nproc']} usable={f['cpus_usable']}  {f.get('cpu', '')}")
    log(f"  memory     {f.get('mem_total_gib', '?')} GiB   loadavg "
        + " ".join(f"{x:.2f}" for x in f["loadavg"]))
    log(f"  {names[1]:<10} {f['redis_server']}")
    log(f"  benchmark  {f['redis_benchmark']}")
    n = f["node"]
    log(f"  {names[0]:<10} {n['path']}")
    extras = []
    for k in ("resolves_to", "mtime", "size_bytes", "git_describe", "git_head", "version", "note", "error"):
        if n.get(k):
            extras.append(f"{k}={n[k]}")
    for e in extras:
        log(f"             {e}")


# --------------------------------------------------------------------------- main

class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except the None/False ones that mean "see the text" or "off"."""

    def _get_help_string(self, action):
        if action.default in (None, False):
            return action.help
        return super()._get_help_string(action)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description="Benchmark lagwise-node against redis-server (throughput, latency, "
                    "memory per key).",
        formatter_class=_HelpFormatter)
    ap.add_argument("--node-bin", default=str(REPO_ROOT / "target/release/lagwise-node"),
                    help="subject server binary (Valkey-style arguments)")
    ap.add_argument("--redis-bin", default=None,
                    help="reference server binary (default: redis-server from PATH)")
    ap.add_argument("--subject-name", default="lagwise", help="label for the subject")
    ap.add_argument("--tests", default=DEFAULT_TESTS,
                    help="comma-separated redis-benchmark -t tests, run in this order "
                         "(put set before get), plus the custom test zrange_100 "
                         "(ZRANGE bench:zset 0 99)")
    ap.add_argument("--zrange-members", type=int, default=1000,
                    help="members of the sorted set ZRANGE_100 reads (>= 100)")
    ap.add_argument("-n", "--requests", type=int, default=None,
                    help="requests per unpipelined run [default 200000; --quick 20000]")
    ap.add_argument("--requests-pipelined", type=int, default=None,
                    help="requests per pipelined run [default 2000000; --quick 200000]")
    ap.add_argument("-c", "--clients", type=int, default=50)
    ap.add_argument("-P", "--pipeline", type=int, default=16,
                    help="pipeline depth of the second mode; 1 to skip it")
    ap.add_argument("-r", "--keyspace", type=int, default=100000,
                    help="redis-benchmark -r (random keys key:%%012d below this)")
    ap.add_argument("-d", "--datasize", type=int, default=None,
                    help="redis-benchmark -d value size (its default is 3)")
    ap.add_argument("--repeat", type=int, default=None,
                    help="runs per test, mode and server; the table shows medians "
                         "[default 3; --quick 1]")
    ap.add_argument("--no-warmup", action="store_true",
                    help="skip the short unrecorded redis-benchmark run per server and test")
    ap.add_argument("--max-other-load", type=float, default=0.10,
                    help="a pair of runs during which other processes used more than this "
                         "fraction of the machine's CPU is measured again")
    ap.add_argument("--load-retries", type=int, default=2,
                    help="how many times a pair is measured again for --max-other-load")
    ap.add_argument("--no-prefill", action="store_true",
                    help="do not pre-load the benchmark keyspace before the runs "
                         "(GET then hits only what SET wrote)")
    ap.add_argument("--keys", type=int, default=None,
                    help="keys loaded for the memory test [default 1000000; --quick 100000]")
    ap.add_argument("--loader", choices=["auto", "redis-cli", "socket"], default="auto",
                    help="how keys are loaded: redis-cli --pipe (falls back to a python "
                         "socket pipeline under auto) or the socket pipeline")
    ap.add_argument("--elements", type=int, default=None,
                    help="elements of each collection in the per-element memory test "
                         "[default 1000000; --quick 100000]")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-memory", action="store_true",
                    help="skip the memory-per-key test (string keys)")
    ap.add_argument("--skip-collections", action="store_true",
                    help="skip the memory-per-element test (hash, set, sorted set)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: small N, 100k keys and 100k elements, about a minute")
    ap.add_argument("--pin", action="store_true",
                    help="pin servers to the last CPU and redis-benchmark/loaders to CPU 0 "
                         "(both servers get exactly one core)")
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
                    help="exit 1 if any row misses a target")
    a = ap.parse_args(argv)
    a.tests = [t.strip().lower() for t in a.tests.split(",") if t.strip()]
    if not a.tests:
        ap.error("--tests is empty")
    if a.requests is None:
        a.requests = 20000 if a.quick else 200000
    if a.requests_pipelined is None:
        a.requests_pipelined = 200000 if a.quick else 2000000
    if a.repeat is None:
        a.repeat = 1 if a.quick else 3
    if a.keys is None:
        a.keys = 100000 if a.quick else 1000000
    if a.elements is None:
        a.elements = 100000 if a.quick else 1000000
    if (a.repeat < 1 or a.requests < 1 or a.requests_pipelined < 1 or a.keys < 1
            or a.elements < 1):
        ap.error("--repeat, --requests, --requests-pipelined, --keys and --elements must "
                 "be >= 1")
    if not 100 <= a.zrange_members <= 999999:
        ap.error("--zrange-members must be between 100 and 999999")
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
                              ("redis-benchmark", shutil.which("redis-benchmark")))
               if not p]
    if missing:
        log(f"error: not found on PATH: {', '.join(missing)} (apt-get install redis-server "
            "redis-tools)")
        return 2
    node_bin = args.node_bin
    if not os.path.isabs(node_bin) and not os.path.exists(node_bin):
        node_bin = str(REPO_ROOT / node_bin)
    if not (os.path.isfile(node_bin) and os.access(node_bin, os.X_OK)):
        log(f"error: subject binary {node_bin} is missing or not executable; build it with "
            "`cargo build --release -p lagwise-node` or pass --node-bin")
        return 2

    names = (args.subject_name, "redis")
    facts = machine_facts(node_bin, redis_bin)
    print_facts(facts, names)
    cpus = sorted(os.sched_getaffinity(0))
    cpu_server = cpu_client = None
    if args.pin:
        if len(cpus) < 2:
            log("  --pin needs at least 2 usable CPUs; not pinning")
        else:
            cpu_client, cpu_server = cpus[0], cpus[-1]
    log(f"  config     tests={','.join(args.tests)} c={args.clients} P={args.pipeline} "
        f"n={args.requests} n_pipelined={args.requests_pipelined} r={args.keyspace} "
        f"repeat={args.repeat} keys={args.keys} elements={args.elements} "
        f"pin={'yes' if cpu_server is not None else 'no'}")
    if facts["nproc"] and facts["nproc"] <= 2 and cpu_server is None:
        log("  note       2 cores: redis-benchmark takes one, so a multi-threaded subject "
            "competes with it for the other")

    workdir = Path(tempfile.mkdtemp(prefix="lagwise-bench-"))
    servers = [
        Server(args.subject_name, node_bin, workdir, cpu_server, args.startup_timeout,
               args.stop_timeout),
        Server("redis", redis_bin, workdir, cpu_server, args.startup_timeout,
               args.stop_timeout),
    ]
    subject, reference = servers
    results: dict = {"machine": facts, "config": {
        k: v for k, v in vars(args).items() if k not in ("json",)},
        "targets": {"rps_ratio_min": TARGET_RPS_RATIO, "p99_ratio_max": TARGET_P99_RATIO,
                    "memory_ratio_max": TARGET_MEM_RATIO}}
    results["config"]["node_bin"] = node_bin
    results["config"]["redis_bin"] = redis_bin
    status = 0
    t_start = time.monotonic()
    try:
        avoid: set[int] = set()
        log(f"== servers (logs in {workdir})")
        for srv in servers:
            srv.start(avoid)
            avoid.add(srv.port)
            log(f"  {srv.name:<8} pid {srv.pid:<8} port {srv.port}  log {srv.log_path}")

        if not args.skip_throughput:
            busy = idle_check()
            results["idle_check_busy_frac"] = busy
            if busy is not None and busy > 0.15:
                log(f"  WARNING    {busy * 100:.0f}% of the machine's CPU is busy before the "
                    "benchmark starts: other work skews these numbers")
            if not args.no_prefill:
                payload = resp_set_payload(args.keyspace, b"x" * (args.datasize or 3))
                pf = workdir / "prefill.resp"
                pf.write_bytes(payload)
                value = b"x" * (args.datasize or 3)
                for srv in servers:
                    ld = load_keys(srv, payload, pf, args.keyspace, args.loader,
                                   args.run_timeout)
                    last = b"key:%012d" % (args.keyspace - 1)
                    got = spot_check(srv, last)
                    if got != value:
                        raise HarnessError(f"{srv.name}: after the prefill GET {last.decode()} "
                                           f"returned {got!r}, want {value!r}")
                    log(f"  {srv.name}: prefilled {args.keyspace:,} keys "
                        f"(DBSIZE {srv.dbsize():,}) with {ld['loader']} in "
                        f"{ld['seconds']:.2f}s")
                pf.unlink(missing_ok=True)
            if "zrange_100" in args.tests:
                results["zrange_setup"] = prepare_zrange(servers, args.zrange_members)
            log("== throughput / latency (redis-benchmark)")
            if not args.no_warmup:
                warm_up(servers, args, cpu_client)
            rows = run_throughput(subject, reference, args, cpu_client, names)
            results["throughput"] = rows
            log("")
            print_throughput(rows, names)
            fr = [x.get("foreign_cpu_frac") for row in rows for side in ("subject", "reference")
                  for x in row[side]["runs"] if x.get("foreign_cpu_frac") is not None]
            if fr:
                results["foreign_cpu_frac_max"] = max(fr)
                results["foreign_cpu_frac_median"] = statistics.median(fr)
                note = ("  WARNING: other processes competed for CPU; rerun on an idle "
                        "machine" if max(fr) >= 0.25 or statistics.median(fr) >= 0.05 else "")
                log(f"other load during runs: median {statistics.median(fr) * 100:.0f}%, "
                    f"max {max(fr) * 100:.0f}% of the machine{note}")

        if not args.skip_memory:
            log("")
            log(f"== memory ({args.keys:,} keys key:%012d, 16-byte values, fresh servers)")
            mem = run_memory(servers, args.keys, workdir, args.loader, args.run_timeout,
                             avoid)
            results["memory"] = mem
            log("")
            print_memory(mem, names)

        if not args.skip_collections:
            log("")
            log(f"== memory per element ({args.elements:,}-element hash, set, sorted set, "
                "fresh servers)")
            col = run_collections(servers, args.elements, workdir, args.loader,
                                  args.run_timeout, avoid)
            results["collections"] = col
            log("")
            print_collections(col, names)

        misses = []
        for r in results.get("throughput", []):
            if not r["rps_ok"]:
                misses.append(f"{r['test']} {r['mode']} rps")
            if not r["p99_ok"]:
                misses.append(f"{r['test']} {r['mode']} p99")
        if "memory" in results:
            for k in ("used_memory", "rss"):
                if not results["memory"][f"{k}_ok"]:
                    misses.append(f"memory {k}")
        for kind, res in results.get("collections", {}).get("types", {}).items():
            for k in ("used_memory", "rss"):
                if not res[f"{k}_ok"]:
                    misses.append(f"{kind} memory {k}")
        results["misses"] = misses
        log("")
        log(f"== summary: {len(misses)} target(s) missed"
            + (": " + ", ".join(misses) if misses else "")
            + f"  (total {time.monotonic() - t_start:.0f}s)")
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
        for srv in servers:
            try:
                srv.stop()
            except BaseException as e:  # keep stopping the other one
                log(f"  stopping {srv.name}: {e}")
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
