#!/usr/bin/env python3
"""The acceptor's own cost per connection, counted (not timed): user-space instructions
(callgrind) and syscalls (strace) of `sockdup serve`'s process alone, per connection.

    python3 scripts/acceptor-cost.py [--bin target/release] [--small 500] [--large 3000]

Runs `sockdup serve --workers 2 -- sockdup worker --app hello` twice under each tool, serves
SMALL and then LARGE sequential `Connection: close` requests (one connection per batch: the
worst case), and prints (LARGE total - SMALL total) / (LARGE - SMALL): the start and the
shutdown cancel out. Only the acceptor is counted (valgrind and strace do not follow the
workers; strace counts the acceptor's main thread, where its loop runs). Counts
are stable on a busy machine, unlike CPU time. Needs valgrind and strace; build with
`cargo build --release -p sockdup-cli` first.
"""

import argparse
import collections
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


def serve(tool_argv, sockdup, count, tmp):
    port_file = os.path.join(tmp, "port")
    if os.path.exists(port_file):
        os.remove(port_file)
    argv = tool_argv + [sockdup, "serve", "--listen", "127.0.0.1:0", "--port-file", port_file,
                        "--workers", "2", "--", sockdup, "worker", "--app", "hello"]
    proc = subprocess.Popen(argv, stderr=open(os.path.join(tmp, "stderr"), "w"))
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(port_file):
            if proc.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"sockdup serve did not start: see {tmp}/stderr")
            time.sleep(0.05)
        host, port = open(port_file).read().split()[0].rsplit(":", 1)
        for _ in range(count):
            with socket.create_connection((host, int(port)), timeout=30) as s:
                s.sendall(REQUEST)
                got = b""
                while chunk := s.recv(4096):
                    got += chunk
                if not got.startswith(b"HTTP/1.1 200"):
                    sys.exit(f"bad answer: {got[:80]!r}")
        # Let the last `done` lines arrive before the shutdown begins.
        time.sleep(0.5)
    finally:
        # The acceptor itself (under strace, the tracer's child) shuts down gracefully.
        children = f"/proc/{proc.pid}/task/{proc.pid}/children"
        kids = open(children).read().split() if tool_argv[0] == "strace" else []
        os.kill(int(kids[0]) if kids else proc.pid, signal.SIGTERM)
        proc.wait(timeout=120)


def instructions(sockdup, count, tmp):
    out = os.path.join(tmp, f"callgrind.{count}")
    serve(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"], sockdup, count, tmp)
    for line in open(out):
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    sys.exit(f"no totals in {out}")


def syscalls(sockdup, count, tmp):
    out = os.path.join(tmp, f"strace.{count}")
    # Without -f: the acceptor's main thread, where its loop runs (not its workers, nor its
    # idle inbox thread).
    serve(["strace", "-qq", "-o", out, "--"], sockdup, count, tmp)
    counts = collections.Counter()
    for line in open(out):
        m = re.match(r"([a-z_0-9]+)\(", line)
        if m:
            counts[m.group(1)] += 1
    return counts


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default="target/release")
    ap.add_argument("--small", type=int, default=500)
    ap.add_argument("--large", type=int, default=3000)
    ap.add_argument("--no-strace", action="store_true")
    ap.add_argument("--no-callgrind", action="store_true")
    ap.add_argument("--keep", metavar="DIR", help="keep the callgrind and strace files in DIR")
    args = ap.parse_args()
    sockdup = os.path.abspath(os.path.join(args.bin, "sockdup"))
    n = args.large - args.small
    with tempfile.TemporaryDirectory(prefix="acceptor-cost-") as scratch:
        tmp = args.keep or scratch
        os.makedirs(tmp, exist_ok=True)
        if not args.no_callgrind:
            a = instructions(sockdup, args.small, tmp)
            b = instructions(sockdup, args.large, tmp)
            print(f"instructions per connection: {(b - a) / n:.0f}")
        if not args.no_strace:
            a = syscalls(sockdup, args.small, tmp)
            b = syscalls(sockdup, args.large, tmp)
            names = sorted(set(a) | set(b), key=lambda k: -(b[k] - a[k]))
            total = sum(b.values()) - sum(a.values())
            print(f"syscalls per connection: {total / n:.2f} (" + ", ".join(
                f"{k} {(b[k] - a[k]) / n:.2f}" for k in names if abs(b[k] - a[k]) / n >= 0.005)
                + ")")


if __name__ == "__main__":
    main()
