#!/usr/bin/env python3
"""upgrade-under-load.py: replace a running server several times while wrk loads it, and
count the connection attempts that failed.

Usage (from anywhere; Python 3 standard library only):

    scripts/upgrade-under-load.py [--upgrades 5] [--duration 12] [--threads 2]
                                  [--connections 32] [--bin PATH] [--no-build] [--port 18180]

What it does:

1. Builds the release `sockdup` (`cargo build --release -p sockdup-cli`, into
   $CARGO_TARGET_DIR, default <workspace>/target) unless --no-build or --bin is given, and
   installs wrk from the Debian packages if it is missing.
2. Starts `sockdup exec --listen web=127.0.0.1:PORT --pid-file F -- sockdup worker --app hello
   --listen-fds` and waits until it answers.
3. Runs `wrk --latency -H 'Connection: close'` (-t2 -c32, --duration seconds) and, while it
   runs, starts the very same command line --upgrades times, evenly spaced: each one takes
   the listener over from the running one, which drains and exits. For each upgrade it
   records the time from starting the new `sockdup exec` to the pid file naming it (the
   handover, including --ready-after 0.2 s) and to the old one's exit.
4. Prints wrk's totals: requests, socket errors (connect, read, write, timeout) and non-2xx
   answers. The goal is 0 failed connection attempts.

Exit status: 0 if no request failed, 1 if any did, 2 on a setup error.
"""

import argparse
import importlib.util
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The load comparison's helpers: installing wrk, waiting for a port.
_spec = importlib.util.spec_from_file_location(
    "handoff_bench", os.path.join(ROOT, "scripts", "handoff-bench.py"))
hb = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hb)


def die(msg):
    """A setup error: exit status 2."""
    hb.log(f"upgrade-under-load: {msg}")
    sys.exit(2)


def pid_in(path):
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--upgrades", type=int, default=5)
    p.add_argument("--duration", type=int, default=12, help="seconds of wrk load")
    p.add_argument("--threads", type=int, default=2, help="wrk -t")
    p.add_argument("--connections", type=int, default=32, help="wrk -c")
    p.add_argument("--bin", help="the sockdup executable (skips the build)")
    p.add_argument("--no-build", action="store_true")
    p.add_argument("--port", type=int, default=18180)
    args = p.parse_args()

    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
    binary = args.bin or os.path.join(target, "release", "sockdup")
    if not (args.bin or args.no_build):
        hb.log("building the release sockdup")
        if subprocess.run(["cargo", "build", "--release", "-q", "-p", "sockdup-cli"],
                          cwd=ROOT).returncode != 0:
            sys.exit(2)
    if not os.access(binary, os.X_OK):
        die(f"{binary} is not an executable")
    hb.ensure_tool("wrk", "wrk")

    tmp = tempfile.mkdtemp(prefix="sockdup-upgrade-load-")
    pid_file = os.path.join(tmp, "server.pid")
    argv = [binary, "exec", "--listen", f"web=127.0.0.1:{args.port}", "--pid-file", pid_file,
            "--ready-after", "0.2", "--drain-deadline", "10", "--",
            binary, "worker", "--app", "hello", "--listen-fds"]
    servers = []

    def start(n):
        log = open(os.path.join(tmp, f"exec-{n}.log"), "w")
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True)
        servers.append(proc)
        return proc

    def stop_all():
        for proc in servers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in servers:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)

    try:
        first = start(0)
        end = time.monotonic() + 10
        while not (pid_in(pid_file) == first.pid and hb.port_accepts(args.port)):
            if time.monotonic() > end or first.poll() is not None:
                die(f"the first server did not come up; see {tmp}/exec-0.log")
            time.sleep(0.02)

        wrk = subprocess.Popen(
            ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{args.duration}s",
             "--latency", "-H", "Connection: close", f"http://127.0.0.1:{args.port}/"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        spacing = args.duration / (args.upgrades + 1)
        handovers, exits = [], []
        current = first
        for n in range(1, args.upgrades + 1):
            time.sleep(max(0.0, spacing - (handovers[-1] if handovers else 0)))
            t0 = time.monotonic()
            new = start(n)
            deadline = t0 + 20
            while pid_in(pid_file) != new.pid:
                if time.monotonic() > deadline or new.poll() is not None:
                    die(f"upgrade {n} did not complete; see {tmp}/exec-{n}.log")
                time.sleep(0.005)
            handovers.append(time.monotonic() - t0)
            current.wait(timeout=20)
            exits.append(time.monotonic() - t0)
            if current.returncode != 0:
                die(f"the server replaced in upgrade {n} exited with {current.returncode}")
            current = new
        out, _ = wrk.communicate(timeout=args.duration + 60)
    finally:
        stop_all()

    requests = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    connect, read, write, timeout = (int(x) for x in errors.groups()) if errors else (0, 0, 0, 0)
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    non2xx = int(m.group(1)) if m else 0
    failed = connect + read + write + timeout + non2xx
    rps = re.search(r"Requests/sec:\s*([0-9.]+)", out).group(1)
    print(f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s, Connection: close, "
          f"{args.upgrades} upgrades of `sockdup exec ... -- sockdup worker --app hello --listen-fds`")
    print(f"requests {requests} ({rps}/s); failed {failed}: connect {connect}, read {read}, "
          f"write {write}, timeout {timeout}, non-2xx {non2xx}")
    print("handover (new sockdup exec started -> pid file names it), ms: "
          + ", ".join(f"{h * 1000:.0f}" for h in handovers))
    print("old server gone (started -> old sockdup exec exited), ms: "
          + ", ".join(f"{e * 1000:.0f}" for e in exits))
    sys.exit(0 if failed == 0 else 1)


if __name__ == "__main__":
    main()
