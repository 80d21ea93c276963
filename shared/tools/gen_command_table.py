#!/usr/bin/env python3
"""Generate shared/src/command_table/generated.rs from a real redis-server 7.0.

Starts its own redis-server on a free temporary port, asks it `COMMAND INFO` and
`COMMAND DOCS` over RESP2 (raw sockets, no dependencies), and writes the table
deterministically: commands sorted by name, subcommands sorted by name.

Usage: python3 shared/tools/gen_command_table.py [--redis-server PATH] [--out PATH]
"""

import argparse
import os
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "..", "src", "command_table", "generated.rs")

# COMMAND INFO flag name -> Flags constant (see command_table.rs).
FLAG_CONSTS = {
    "write": "WRITE",
    "readonly": "READONLY",
    "denyoom": "DENYOOM",
    "module": "MODULE",
    "admin": "ADMIN",
    "pubsub": "PUBSUB",
    "noscript": "NOSCRIPT",
    "blocking": "BLOCKING",
    "loading": "LOADING",
    "stale": "STALE",
    "skip_monitor": "SKIP_MONITOR",
    "skip_slowlog": "SKIP_SLOWLOG",
    "asking": "ASKING",
    "fast": "FAST",
    "no_auth": "NO_AUTH",
    "may_replicate": "MAY_REPLICATE",
    "sentinel": "SENTINEL",
    "only_sentinel": "ONLY_SENTINEL",
    "no_mandatory_keys": "NO_MANDATORY_KEYS",
    "protected": "PROTECTED",
    "no_async_loading": "NO_ASYNC_LOADING",
    "no_multi": "NO_MULTI",
    "movablekeys": "MOVABLE_KEYS",
    "allow_busy": "ALLOW_BUSY",
}


class RespError(Exception):
    pass


class Conn:
    """A minimal RESP2 client: enough for COMMAND INFO / COMMAND DOCS."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.buf = b""

    def close(self):
        self.sock.close()

    def call(self, *args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            if isinstance(a, str):
                a = a.encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        self.sock.sendall(b"".join(out))
        return self._read()

    def _fill(self):
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("redis-server closed the connection")
        self.buf += chunk

    def _line(self):
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line, self.buf = self.buf[:i], self.buf[i + 2:]
                return line
            self._fill()

    def _exact(self, n):
        while len(self.buf) < n + 2:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def _read(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RespError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n).decode()
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._read() for _ in range(n)]
        raise ValueError("unexpected RESP reply: %r" % line)


def pairs(v):
    """A RESP2 flattened map ([k1, v1, k2, v2, ...]) as a dict."""
    if v is None:
        return {}
    if isinstance(v, dict):
        return v
    if len(v) % 2:
        raise ValueError("odd-length map: %r" % (v,))
    return {v[i]: v[i + 1] for i in range(0, len(v), 2)}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(binary):
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--daemonize", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 10
    while True:
        try:
            conn = Conn(port)
            conn.call("PING")
            return proc, conn
        except (OSError, RespError):
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise RuntimeError("redis-server did not start on port %d" % port)
            time.sleep(0.05)


# ---- Rust rendering ----------------------------------------------------------------------

def lit(s):
    """A Rust string literal for s."""
    out = ['"']
    for ch in s:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append("\\u{%x}" % ord(ch))
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def str_slice(items):
    return "&[" + ", ".join(lit(x) for x in items) + "]"


def flags_expr(names):
    consts = []
    for n in names:
        if n not in FLAG_CONSTS:
            raise ValueError("unknown command flag %r" % n)
        consts.append(FLAG_CONSTS[n])
    if not consts:
        return "Flags::empty()"
    return "Flags::" + consts[0] + "".join(".union(Flags::%s)" % c for c in consts[1:])


def begin_search_expr(bs):
    bs = pairs(bs)
    spec = pairs(bs.get("spec"))
    t = bs["type"]
    if t == "index":
        return "BeginSearch::Index(%d)" % spec["index"]
    if t == "keyword":
        return "BeginSearch::Keyword { keyword: %s, start_from: %d }" % (
            lit(spec["keyword"]), spec["startfrom"])
    if t == "unknown":
        return "BeginSearch::Unknown"
    raise ValueError("unknown begin_search type %r" % t)


def find_keys_expr(fk):
    fk = pairs(fk)
    spec = pairs(fk.get("spec"))
    t = fk["type"]
    if t == "range":
        return "FindKeys::Range { last_key: %d, key_step: %d, limit: %d }" % (
            spec["lastkey"], spec["keystep"], spec["limit"])
    if t == "keynum":
        return "FindKeys::Keynum { keynum_idx: %d, first_key: %d, key_step: %d }" % (
            spec["keynumidx"], spec["firstkey"], spec["keystep"])
    if t == "unknown":
        return "FindKeys::Unknown"
    raise ValueError("unknown find_keys type %r" % t)


def key_spec_expr(ks):
    ks = pairs(ks)
    return "KeySpec { flags: %s, begin_search: %s, find_keys: %s }" % (
        str_slice(ks.get("flags") or []),
        begin_search_expr(ks["begin_search"]),
        find_keys_expr(ks["find_keys"]),
    )


def render_command(info, docs, ind):
    """info: one COMMAND INFO entry; docs: that command's COMMAND DOCS map (or {})."""
    (name, arity, flags, first, last, step, acl, tips, key_specs, subs) = info[:10]
    docs = pairs(docs)
    sub_docs = pairs(docs.get("subcommands"))
    p = " " * ind
    q = " " * (ind + 4)
    lines = [p + "CommandSpec {"]
    lines.append(q + "name: %s, arity: %d, flags: %s," % (lit(name), arity, flags_expr(flags)))
    lines.append(q + "first_key: %d, last_key: %d, step: %d," % (first, last, step))
    lines.append(q + "acl_categories: %s," % str_slice(acl or []))
    lines.append(q + "tips: %s," % str_slice(tips or []))
    if key_specs:
        lines.append(q + "key_specs: &[")
        for ks in key_specs:
            lines.append(q + "    " + key_spec_expr(ks) + ",")
        lines.append(q + "],")
    else:
        lines.append(q + "key_specs: &[],")
    if subs:
        lines.append(q + "subcommands: &[")
        for sub in sorted(subs, key=lambda s: s[0]):
            lines.extend(render_command(sub, sub_docs.get(sub[0], {}), ind + 8))
        lines.append(q + "],")
    else:
        lines.append(q + "subcommands: &[],")
    lines.append(q + "docs: Docs { summary: %s, since: %s, group: %s, complexity: %s }," % (
        lit(docs.get("summary") or ""), lit(docs.get("since") or ""),
        lit(docs.get("group") or ""), lit(docs.get("complexity") or "")))
    lines.append(p + "},")
    return lines


# Subcommands added after Redis 7.0 that clients send today (redis-py sends CLIENT SETINFO
# on every connect since 5.0). Their facts are from the Redis 7.2 command reference.
LATER_SUBCOMMANDS = {
    "client": [
        (["client|setinfo", 4, ["noscript", "loading", "stale"], 0, 0, 0,
          ["@slow", "@connection"], ["request_policy:all_nodes", "response_policy:all_succeeded"], [], []],
         {"summary": "Sets information specific to the client or connection.", "since": "7.2.0",
          "group": "connection", "complexity": "O(1)"}),
    ],
}


# Arity changes after Redis 7.0 for options clients use: ZRANK/ZREVRANK ... WITHSCORE (7.2).
LATER_ARITY = {"zrank": -3, "zrevrank": -3}


def add_later_commands(infos, docs):
    for info in infos:
        if info[0] in LATER_ARITY:
            info[1] = LATER_ARITY[info[0]]
        for sub_info, sub_doc in LATER_SUBCOMMANDS.get(info[0], []):
            if all(s[0] != sub_info[0] for s in info[9]):
                info[9].append(sub_info)
                parent = pairs(docs.get(info[0], {}))
                subs = pairs(parent.get("subcommands"))
                subs[sub_info[0]] = sub_doc
                parent["subcommands"] = subs
                docs[info[0]] = parent


def generate(conn):
    version = "unknown"
    info_text = conn.call("INFO", "server")
    for line in info_text.splitlines():
        if line.startswith("redis_version:"):
            version = line.split(":", 1)[1].strip()
    if not str(version).startswith("7.0."):
        print("warning: redis-server reports version %r, expected 7.0.x" % version,
              file=sys.stderr)

    infos = [i for i in conn.call("COMMAND", "INFO") if i is not None]
    docs = pairs(conn.call("COMMAND", "DOCS"))
    add_later_commands(infos, docs)
    infos.sort(key=lambda i: i[0])
    n_subs = sum(len(i[9] or []) for i in infos)

    out = [
        "// @generated from redis-server %s (COMMAND INFO / COMMAND DOCS) by" % version,
        "// shared/tools/gen_command_table.py. Do not edit by hand: rerun the script instead.",
        "// %d top-level commands, %d subcommands." % (len(infos), n_subs),
        "",
        "use super::{BeginSearch, CommandSpec, Docs, FindKeys, Flags, KeySpec};",
        "",
        "#[rustfmt::skip]",
        "pub(super) static COMMANDS: &[CommandSpec] = &[",
    ]
    for info in infos:
        out.extend(render_command(info, docs.get(info[0], {}), 4))
    out.append("];")
    out.append("")
    return "\n".join(out), len(infos), n_subs


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--redis-server", default="redis-server")
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args()

    proc, conn = start_server(args.redis_server)
    try:
        text, n_cmds, n_subs = generate(conn)
    finally:
        conn.close()
        proc.kill()
        proc.wait()

    out = os.path.normpath(args.out)
    with open(out, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    print("wrote %s: %d commands, %d subcommands" % (out, n_cmds, n_subs))


if __name__ == "__main__":
    main()
