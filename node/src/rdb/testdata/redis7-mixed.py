#!/usr/bin/env python3
"""Regenerates redis7-mixed.rdb, the RDB file node/src/rdb/file_tests.rs reads.

Needs redis-server 7.0 (Debian's redis-server 5:7.0.15 made the committed file). Starts a
primary and a replica on free local ports, fills the primary with one key of each type and
encoding Redis 7.0 writes, syncs the replica so that the primary has a replication backlog
(only then does SAVE write the repl-stream-db, repl-id and repl-offset AUX fields), makes one
more write so the offset is not 0, and SAVEs. The test checks the contents it expects by
itself, and the replication ID and offset this script prints.

Usage: redis7-mixed.py OUTPUT.rdb
"""
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Conn:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.file = self.sock.makefile("rb")

    def cmd(self, *args):
        out = b"*%d\r\n" % len(args)
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        self.sock.sendall(out)
        return self.read()

    def read(self):
        line = self.file.readline()
        kind, rest = line[:1], line[1:-2]
        if kind in b"+:":
            return rest
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self.file.read(n + 2)[:-2]
        if kind == b"*":
            return [self.read() for _ in range(int(rest))]
        raise RuntimeError("unexpected reply %r" % line)


def start(port, workdir, *extra):
    os.makedirs(workdir)
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", workdir,
         "--save", "", "--appendonly", "no", *extra],
        stdout=open(os.path.join(workdir, "log"), "w"), stderr=subprocess.STDOUT)
    for _ in range(100):
        try:
            conn = Conn(port)
            conn.cmd("PING")
            return proc, conn
        except (OSError, RuntimeError):
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


def main(output):
    tmp = tempfile.mkdtemp()
    try:
        primary_port, replica_port = free_port(), free_port()
        primary, p = start(primary_port, os.path.join(tmp, "primary"))
        p.cmd("SET", "s:str", "hello")
        p.cmd("SET", "s:int", "12345")
        p.cmd("SET", "s:neg", "-7")
        p.cmd("SET", "s:lzf", "a" * 50 + "b" * 50)
        p.cmd("SET", "s:empty", "")
        p.cmd("SET", b"\x00\xffbin", b"\x01\x02\r\n")
        p.cmd("SET", "s:exp", "v")
        p.cmd("PEXPIREAT", "s:exp", 4102444800000)
        p.cmd("RPUSH", "l:small", "a", "b", "123")
        p.cmd("RPUSH", "l:big", *["item-%04d-xxxxxxxxxx" % i for i in range(1000)])
        p.cmd("SADD", "set:ints", 1, 2, 3, -5)
        p.cmd("SADD", "set:strs", "a", "b", "c")
        p.cmd("ZADD", "z:small", 1.5, "a", "-inf", "b", 3, "c")
        p.cmd("ZADD", "z:big", *sum([[i * 0.5, "m%d" % i] for i in range(130)], []))
        p.cmd("HSET", "h:small", "f", "v", "n", 7)
        p.cmd("PEXPIREAT", "h:small", 4102444800123)
        p.cmd("HSET", "h:big", *sum([["field%d" % i, "value%d" % i] for i in range(130)], []))
        p.cmd("SELECT", 2)
        p.cmd("SET", "k2", "in-db-2")
        p.cmd("SELECT", 0)

        replica, r = start(replica_port, os.path.join(tmp, "replica"),
                           "--replicaof", "127.0.0.1", str(primary_port))
        for _ in range(200):
            if b"master_link_status:up" in r.cmd("INFO", "replication"):
                break
            time.sleep(0.05)
        else:
            raise RuntimeError("replica did not sync")
        p.cmd("SET", "s:after-sync", "written after the replica connected")
        time.sleep(0.3)
        p.cmd("SAVE")
        info = p.cmd("INFO", "replication").decode()
        print("\n".join(l for l in info.split("\r\n")
                        if l.startswith(("master_replid:", "master_repl_offset:"))))
        for conn in (r, p):
            try:
                conn.cmd("SHUTDOWN", "NOSAVE")
            except (OSError, RuntimeError):
                pass
        replica.wait()
        primary.wait()
        shutil.copy(os.path.join(tmp, "primary", "dump.rdb"), output)
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main(sys.argv[1])
