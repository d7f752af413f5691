#!/usr/bin/env python3
"""handoff-bench.py: `sockdup serve` against its raw twin, the SO_REUSEPORT ceiling and Node.

Usage (from anywhere; Python 3 standard library only):

    scripts/handoff-bench.py [--rounds 3] [--duration 5] [--threads 2] [--connections 32]
                             [--bin-dir DIR] [--no-build] [--port-base 18080]
                             [--only sockdup,floor,raw,reuseport,node,node-none]

    BIN_DIR=/tmp/tgt-load/release scripts/handoff-bench.py --no-build   # prebuilt binaries
    scripts/handoff-bench.py --workers 4 --connections 256     # the scale tables
    scripts/handoff-bench.py --idle 10000 --rounds 1           # memory per idle connection

--idle N replaces the wrk runs: each server in turn (interleaved rounds) gets N keep-alive
connections from an asyncio client (200 opening at a time), each sends one request, reads
its response and stays open; the VmRSS of the acceptor (the session leader) and of the
workers is read before and after, and reported per held connection, with each worker's
descriptor count (the spread). RLIMIT_NOFILE is raised to N + 1024 (the servers inherit it);
`sockdup serve` gets --max-outstanding N + 256, since an idle connection is not yet done.

What it does:

1. Builds the release binaries (`cargo build --release -p sockdup-loadtest`, then
   `-p sockdup-cli`) into $CARGO_TARGET_DIR (default <workspace>/target); the binaries are
   taken from --bin-dir, else $BIN_DIR, else $CARGO_TARGET_DIR/release. A failed sockdup-cli
   build only disables server (1).
2. Installs wrk from the Debian packages if it is missing (apt-get update && apt-get install
   -y wrk). Without `node`, the two Node servers are skipped (the reason is printed).
3. Runs INTERLEAVED rounds: every round starts, measures and kills each server in turn (the
   order rotates from round to round), all on 127.0.0.1, each on its own port:
     (1) sockdup   `sockdup serve --listen ADDR --workers 2 -- sockdup worker --app hello`
     (2) raw       `raw-acceptor --listen ADDR --workers 2` (bare SCM_RIGHTS handoff)
     (2f) floor    `floor-acceptor --listen ADDR --workers 2`: the bare kernel calls sockdup
                   serve's guarantee needs (same epoll accept loop and batches of <= 64, per
                   batch one sendmsg SCM_RIGHTS plus a blocking wait for the worker's
                   acknowledgement that it holds them), no records, no inbox table, the same
                   event-loop worker: (1)/(2f) is what sockdup's own code costs, (2f)/(2) what
                   the guarantee costs
     (3) reuseport `reuseport-server --listen ADDR --workers 2` (no handoff: the ceiling)
     (4) node      `node scripts/node-cluster-hello.js` (cluster, SCHED_RR, 2 workers: the
                   primary accepts and hands each connection to a worker)
     (5) node-none `node scripts/node-cluster-hello.js --sched none` (cluster, SCHED_NONE:
                   the workers accept on the shared listener themselves, no handoff)
   For each: one request checks that the server answers sockdup's exact response (a warning
   if not), a 1 s wrk warm-up (discarded), then `wrk --latency -H 'Connection: close'`
   (-t2 -c32 -d5s by default): Requests/sec = connections/s, p50/p99 latency, and the
   server's CPU per connection (utime+stime of every process in the server's session, from
   /proc, before and after, divided by the requests wrk completed), and of that the
   acceptor's own ("acc us/conn": the session leader alone, all its threads: `sockdup serve`,
   the raw twin's acceptor, the Node primary; for (3) and (5) an idle supervisor). "other CPU%" is the CPU
   the machine spent on neither the server nor wrk during that run (other tenants: noise).
   For (1) and (3) also a keep-alive run (no Connection: close): requests/s.
4. Prints a table of medians over the rounds, and the ratios of (1) to the others, with the
   goals of issue 12: conn/s >= 0.9x the raw twin, >= 0.75x SO_REUSEPORT, >= 3x node cluster
   SCHED_RR; keep-alive req/s >= 0.9x SO_REUSEPORT; p99 <= 1.5x the raw twin's; the
   acceptor's own CPU per connection <= 1.2x the raw twin acceptor's (side by side).

Every server runs in a session of its own; after its run the leader gets SIGTERM, and 3 s
later whatever is left in the session gets SIGKILL; the same happens on exit (normal, error,
Ctrl-C, SIGTERM). Servers wait until their port accepts before wrk starts; a watchdog ends the script after 9.5 minutes in any case. Exit status: 0 if every
server was measured, 1 if one could not be (e.g. `sockdup serve` does not exist yet: the other
servers are still measured, and the failure is named at the end), 2 on a setup error.
"""

import argparse
import atexit
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEADLINE = time.monotonic() + 570  # the whole script ends within 10 minutes
# What every server answers a Connection: close request with (`sockdup worker --app hello`'s
# bytes); the date varies.
RESPONSE_CLOSE = re.compile(
    rb"HTTP/1\.1 200 OK\r\nDate: [A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT\r\n"
    rb"Server: sockdup\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 19\r\n"
    rb"Connection: close\r\n\r\nhello from sockdup\n"
)
CLK_TCK = os.sysconf("SC_CLK_TCK")

RUNNING = {}  # pid -> name of every server session still alive
RUNNING_WRK = set()  # pids of wrk runs in progress


def machine_busy_seconds():
    """CPU seconds all CPUs spent not idle (user, nice, system, irq, softirq, steal)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / CLK_TCK


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def session_pids(sid):
    """Every process in session `sid` (the servers are session leaders)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # rest[0] is field 3 (state); the session is field 6.
        if int(rest[3]) == sid and rest[0] != "Z":
            pids.append(int(entry))
    return pids


def session_cpu_ticks(sid):
    """utime+stime (clock ticks) of the live processes of session `sid`, threads included
    (a process's counters include its exited threads)."""
    total = 0
    for pid in session_pids(sid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(rest[11]) + int(rest[12])  # fields 14 (utime) and 15 (stime)
    return total


def process_cpu_ticks(pid):
    """utime+stime (clock ticks) of process `pid`, all its threads; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(rest[11]) + int(rest[12])


def kill_session(sid, name):
    """SIGTERM the session leader (the server shuts down as it would in production), then
    SIGKILL every process left in the session; reap the leader."""
    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 2.0)):
        pids = session_pids(sid)
        if sig == signal.SIGTERM:
            pids = [p for p in pids if p == sid]
        elif pids:
            log(f"note: {name}: {len(pids)} processes still there 3 s after SIGTERM: SIGKILL")
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        end = time.monotonic() + wait
        while time.monotonic() < end:
            try:
                os.waitpid(sid, os.WNOHANG)
            except ChildProcessError:
                pass
            if not session_pids(sid):
                break
            time.sleep(0.05)
    try:
        os.waitpid(sid, os.WNOHANG)
    except ChildProcessError:
        pass
    RUNNING.pop(sid, None)
    left = session_pids(sid)
    if left:
        log(f"warning: {name}: processes {left} survived SIGKILL")


def cleanup():
    for pid in list(RUNNING_WRK):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for sid, name in list(RUNNING.items()):
        kill_session(sid, name)


def on_signal(signum, _frame):
    cleanup()
    log(f"handoff-bench: stopped by signal {signum}")
    os._exit(128 + signum)


def port_accepts(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def check_response(port):
    """The bytes the server answers a Connection: close request with."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        out = b""
        while True:
            d = s.recv(4096)
            if not d:
                return out
            out += d


class ServerFailed(Exception):
    pass


def start_server(name, argv, port, logdir):
    if port_accepts(port):
        raise ServerFailed(f"port {port} is already in use by something else")
    errlog = open(os.path.join(logdir, f"{name}.log"), "ab")
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=errlog,
        stderr=errlog,
        start_new_session=True,
        cwd=ROOT,
    )
    RUNNING[proc.pid] = name
    end = time.monotonic() + 15
    while time.monotonic() < end:
        if proc.poll() is not None:
            kill_session(proc.pid, name)
            errlog.close()
            tail = open(os.path.join(logdir, f"{name}.log"), "rb").read()[-600:]
            raise ServerFailed(
                f"exited with status {proc.returncode} before accepting: "
                f"{tail.decode(errors='replace').strip()}"
            )
        if port_accepts(port):
            errlog.close()
            return proc
        time.sleep(0.05)
    kill_session(proc.pid, name)
    errlog.close()
    raise ServerFailed(f"port {port} did not accept within 15 s")


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def to_ms(text):
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h)", text)
    return float(m.group(1)) * UNITS[m.group(2)]


def run_wrk(args, port, duration, close):
    cmd = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{duration}s", "--latency"]
    if close:
        cmd += ["-H", "Connection: close"]
    cmd.append(f"http://127.0.0.1:{port}/")
    busy0 = machine_busy_seconds()
    with tempfile.TemporaryFile(mode="w+") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        RUNNING_WRK.add(proc.pid)
        end = time.monotonic() + duration + 30
        while True:
            pid, _status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > end:
                proc.kill()
                _pid, _status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
        proc.returncode = 0  # reaped by wait4
        RUNNING_WRK.discard(proc.pid)
        f.seek(0)
        out = f.read()
    res = {"raw": out, "busy": machine_busy_seconds() - busy0,
           "wrk_cpu": usage.ru_utime + usage.ru_stime}
    m = re.search(r"Requests/sec:\s*([0-9.]+)", out)
    res["rps"] = float(m.group(1)) if m else 0.0
    m = re.search(r"(\d+) requests in", out)
    res["requests"] = int(m.group(1)) if m else 0
    for pct in ("50", "99"):
        m = re.search(rf"^\s*{pct}(?:\.000)?%\s+(\S+)", out, re.M)
        res[f"p{pct}"] = to_ms(m.group(1)) if m else float("nan")
    errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    res["errors"] = errors
    return res


def measure(name, argv, port, args, keepalive, logdir):
    proc = start_server(name, argv, port, logdir)
    try:
        got = check_response(port)
        if not RESPONSE_CLOSE.fullmatch(got):
            log(f"warning: {name} answers {got!r}, not the reference response")
        run_wrk(args, port, 1, True)  # warm-up, discarded
        sid = proc.pid
        before, leader_before = session_cpu_ticks(sid), process_cpu_ticks(sid)
        close = run_wrk(args, port, args.duration, True)
        after, leader_after = session_cpu_ticks(sid), process_cpu_ticks(sid)
        if close["requests"] == 0:
            raise ServerFailed(f"wrk completed no request:\n{close['raw']}")
        cpu_s = (after - before) / CLK_TCK
        acceptor_s = (leader_after - leader_before) / CLK_TCK
        result = {
            "cps": close["rps"],
            "p50": close["p50"],
            "p99": close["p99"],
            "cpu_us": cpu_s / close["requests"] * 1e6,
            # The session leader's own share: the acceptor (or supervisor).
            "acc_us": acceptor_s / close["requests"] * 1e6,
            "cpu_pct": cpu_s / args.duration * 100,
            # CPU used by neither the server nor wrk during the run (other tenants), in % of
            # one CPU: the noise.
            "other_pct": max(0.0, close["busy"] - cpu_s - close["wrk_cpu"]) / args.duration * 100,
            "errors": close["errors"],
        }
        if keepalive:
            ka = run_wrk(args, port, args.duration, False)
            result["ka_rps"] = ka["rps"]
            result["errors"] += ka["errors"]
        if proc.poll() is not None:
            raise ServerFailed(f"died during the run (status {proc.returncode})")
        return result
    finally:
        kill_session(proc.pid, name)


def rss_kib(pid):
    """VmRSS of process `pid` in KiB; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def open_fds(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def session_memory(sid):
    """(acceptor RSS KiB, workers' RSS KiB, [descriptors per worker]) of session `sid`: the
    leader is the acceptor (or supervisor), every other process a worker."""
    workers = [p for p in session_pids(sid) if p != sid]
    return rss_kib(sid), sum(rss_kib(p) for p in workers), sorted(open_fds(p) for p in workers)


async def hold_idle(port, count, parallel=200):
    """Opens `count` keep-alive connections to `port`, each sends one request and reads its
    response; returns the open (reader, writer) pairs and the number that failed."""
    import asyncio
    request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    gate = asyncio.Semaphore(parallel)
    held, failed = [], 0

    async def one():
        nonlocal failed
        async with gate:
            try:
                r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
                w.write(request)
                await asyncio.wait_for(r.readuntil(b"hello from sockdup\n"), 10)
                held.append((r, w))
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError,
                    asyncio.LimitOverrunError):
                failed += 1

    await asyncio.gather(*(one() for _ in range(count)))
    return held, failed


def measure_idle(name, argv, port, args, logdir):
    """Server `name` holding args.idle idle keep-alive connections: RSS of the acceptor and
    the workers before and after, per connection."""
    import asyncio
    proc = start_server(name, argv, port, logdir)
    try:
        check_response(port)
        time.sleep(0.3)
        acc0, wrk0, _ = session_memory(proc.pid)
        loop = asyncio.new_event_loop()
        try:
            t0 = time.monotonic()
            held, failed = loop.run_until_complete(hold_idle(port, args.idle))
            took = time.monotonic() - t0
            time.sleep(0.5)  # let the handoff's last answers land
            acc1, wrk1, fds = session_memory(proc.pid)
            for _r, w in held:
                w.transport.abort()
        finally:
            loop.close()
        if proc.poll() is not None:
            raise ServerFailed(f"died during the run (status {proc.returncode})")
        n = max(1, len(held))
        return {"held": len(held), "failed": failed, "took": took, "acc0": acc0, "acc1": acc1,
                "wrk0": wrk0, "wrk1": wrk1, "fds": fds,
                "acc_per": (acc1 - acc0) * 1024 / n, "wrk_per": (wrk1 - wrk0) * 1024 / n,
                "tot_per": (acc1 + wrk1 - acc0 - wrk0) * 1024 / n}
    finally:
        kill_session(proc.pid, name)


def idle_mode(args, servers, failures, logdir):
    """--idle N: each server in turn holds N idle keep-alive connections (one request each);
    prints RSS before/after and per connection."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.idle + 1024  # per process: the client holds one end of each, a worker its share
    if soft < want:
        if hard != resource.RLIM_INFINITY and hard < want:
            die(f"--idle {args.idle} needs {want} descriptors, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    results = {s[0]: [] for s in servers}
    for rnd in range(args.rounds):
        order = servers[rnd % len(servers):] + servers[: rnd % len(servers)]
        for name, label, argv, port, _ka in order:
            if name in failures:
                continue
            try:
                r = measure_idle(name, argv, port, args, logdir)
            except (ServerFailed, OSError) as e:
                failures[name] = str(e)
                log(f"FAILED {label}: {e}")
                continue
            results[name].append(r)
            log(f"round {rnd + 1} {label}: {r['held']} held ({r['failed']} failed) in "
                f"{r['took']:.1f} s; RSS acceptor {r['acc0']}->{r['acc1']} KiB, workers "
                f"{r['wrk0']}->{r['wrk1']} KiB; per connection {r['tot_per']:.0f} B; "
                f"descriptors per worker {r['fds']}")
    print()
    print(f"idle keep-alive connections: {args.idle} per server, {args.workers} workers, "
          f"{args.rounds} round(s) (medians); RSS = VmRSS, per connection = (after - before) / held")
    print(f"{'server':<30}{'held':>7}{'failed':>7}{'acc KiB':>16}{'workers KiB':>18}"
          f"{'acc B/conn':>12}{'wrk B/conn':>12}{'total B/conn':>14}  fds per worker")
    for name, label, *_ in servers:
        rs = results[name]
        if not rs:
            print(f"{label:<30}  FAILED: {failures.get(name, 'not measured')}")
            continue
        m = {k: median([r[k] for r in rs]) for k in
             ("held", "failed", "acc0", "acc1", "wrk0", "wrk1", "acc_per", "wrk_per", "tot_per")}
        acc = f"{m['acc0']:.0f}->{m['acc1']:.0f}"
        wrk = f"{m['wrk0']:.0f}->{m['wrk1']:.0f}"
        print(f"{label:<30}{m['held']:>7.0f}{m['failed']:>7.0f}{acc:>16}{wrk:>18}"
              f"{m['acc_per']:>12.0f}{m['wrk_per']:>12.0f}{m['tot_per']:>14.0f}  {rs[-1]['fds']}")
    sys.stdout.flush()
    return results


def build(args, env):
    if args.no_build:
        return None
    cargo = ["cargo", "build", "--release", "--quiet"]
    log("building sockdup-loadtest (release) ...")
    r = subprocess.run(cargo + ["-p", "sockdup-loadtest"], cwd=ROOT, env=env, check=False)
    if r.returncode != 0:
        die(f"`cargo build --release -p sockdup-loadtest` failed (status {r.returncode})")
    log("building sockdup-cli (release) ...")
    r = subprocess.run(cargo + ["-p", "sockdup-cli"], cwd=ROOT, env=env, check=False)
    if r.returncode != 0:
        return f"`cargo build --release -p sockdup-cli` failed (status {r.returncode})"
    return None


def die(msg):
    """A setup error: exit status 2."""
    log(f"handoff-bench: {msg}")
    sys.exit(2)


def ensure_tool(tool, package):
    if shutil.which(tool):
        return
    log(f"{tool} is missing: installing the Debian package {package}")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    apt_env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", package]):
        if subprocess.run(sudo + cmd, env=apt_env, check=False).returncode != 0:
            die(f"`{' '.join(cmd)}` failed")
    if not shutil.which(tool):
        die(f"{tool} still missing after installing {package}")


def sockdup_serve_problem(bindir):
    exe = os.path.join(bindir, "sockdup")
    if not os.access(exe, os.X_OK):
        return f"{exe} does not exist"
    for sub in (["serve", "--help"], ["worker", "--help"]):
        r = subprocess.run([exe] + sub, capture_output=True, text=True, check=False)
        if r.returncode != 0:
            first = (r.stderr or r.stdout).strip().splitlines()[:1]
            return f"`sockdup {sub[0]}` is not available yet ({' '.join(first)})"
    return None


def fmt(x, spec):
    return "n/a" if x is None or x != x else format(x, spec)


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    p.add_argument("--threads", type=int, default=2, help="wrk -t")
    p.add_argument("--connections", type=int, default=32, help="wrk -c")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--port-base", type=int, default=18080)
    p.add_argument("--bin-dir", default=os.environ.get("BIN_DIR"))
    p.add_argument("--no-build", action="store_true")
    p.add_argument("--only", default="sockdup,floor,raw,reuseport,node,node-none")
    p.add_argument("--idle", type=int, default=0, metavar="N",
                   help="instead of wrk: hold N idle keep-alive connections per server and "
                        "report the RSS of acceptor and workers before/after, per connection")
    args = p.parse_args()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    signal.signal(signal.SIGALRM, on_signal)
    signal.alarm(int(DEADLINE - time.monotonic()))  # watchdog
    atexit.register(cleanup)

    env = dict(os.environ)
    target = env.setdefault("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    bindir = os.path.abspath(args.bin_dir or os.path.join(target, "release"))
    build_problem = build(args, env)
    ensure_tool("wrk", "wrk")
    node_problem = None if shutil.which("node") else (
        "node is not installed (apt-get install nodejs to measure Node cluster)")
    for exe in ("raw-acceptor", "floor-acceptor", "reuseport-server"):
        if not os.access(os.path.join(bindir, exe), os.X_OK):
            die(f"{bindir}/{exe} missing (build sockdup-loadtest)")

    sockdup = os.path.join(bindir, "sockdup")
    addr = lambda i: f"127.0.0.1:{args.port_base + i}"  # noqa: E731
    w = str(args.workers)
    # Idle connections stay "not yet done": let every worker hold its share (and more).
    max_out = ["--max-outstanding", str(args.idle + 256)] if args.idle else []
    servers = [
        # name, label, argv, port, keep-alive run
        ("sockdup", "(1) sockdup serve",
         [sockdup, "serve", "--listen", addr(0), "--workers", w] + max_out + ["--",
          sockdup, "worker", "--app", "hello"], args.port_base + 0, True),
        ("raw", "(2) raw SCM_RIGHTS twin",
         [os.path.join(bindir, "raw-acceptor"), "--listen", addr(1), "--workers", w],
         args.port_base + 1, False),
        ("floor", "(2f) floor twin (bare ack)",
         [os.path.join(bindir, "floor-acceptor"), "--listen", addr(5), "--workers", w],
         args.port_base + 5, False),
        ("reuseport", "(3) SO_REUSEPORT ceiling",
         [os.path.join(bindir, "reuseport-server"), "--listen", addr(2), "--workers", w],
         args.port_base + 2, True),
        ("node", "(4) node cluster SCHED_RR",
         ["node", os.path.join(ROOT, "scripts", "node-cluster-hello.js"),
          "--listen", addr(3), "--workers", w, "--sched", "rr"], args.port_base + 3, False),
        ("node-none", "(5) node cluster SCHED_NONE",
         ["node", os.path.join(ROOT, "scripts", "node-cluster-hello.js"),
          "--listen", addr(4), "--workers", w, "--sched", "none"], args.port_base + 4, False),
    ]
    wanted = set(args.only.split(","))
    servers = [s for s in servers if s[0] in wanted]
    if node_problem:
        skipped = [s for s in servers if s[0].startswith("node")]
        for _name, label, *_ in skipped:
            log(f"skipped {label}: {node_problem}")
            print(f"# skipped {label}: {node_problem}")
        servers = [s for s in servers if s not in skipped]

    failures = {}
    if "sockdup" in wanted:
        problem = build_problem or sockdup_serve_problem(bindir)
        if problem:
            failures["sockdup"] = problem
            log(f"FAILED (1) sockdup serve: {problem}; measuring the others")

    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout
    wrk_version = (wrk_version.strip().splitlines() or ["wrk ?"])[0]
    node_version = ("absent" if node_problem else
                    subprocess.run(["node", "--version"], capture_output=True, text=True).stdout)
    print(f"# handoff-bench  {time.strftime('%Y-%m-%d %H:%M:%S')}  {platform.node()}")
    print(f"# kernel {platform.release()}, {os.cpu_count()} CPUs, loadavg "
          f"{' '.join(open('/proc/loadavg').read().split()[:3])}; {wrk_version}; "
          f"node {node_version.strip()}")
    print(f"# wrk -t{args.threads} -c{args.connections} -d{args.duration}s --latency, "
          f"{args.rounds} interleaved rounds, {args.workers} workers per server, bins {bindir}")
    sys.stdout.flush()

    logdir = tempfile.mkdtemp(prefix="handoff-bench-")
    if args.idle:
        idle_mode(args, servers, failures, logdir)
        for name, why in failures.items():
            log(f"FAILED {name}: {why}")
        return 1 if failures else 0
    results = {s[0]: [] for s in servers}
    for rnd in range(args.rounds):
        order = servers[rnd % len(servers):] + servers[: rnd % len(servers)]
        for name, label, argv, port, keepalive in order:
            if name in failures:
                continue
            if time.monotonic() > DEADLINE - 3 * args.duration - 20:
                log("handoff-bench: time budget exhausted, stopping early")
                break
            try:
                r = measure(name, argv, port, args, keepalive, logdir)
            except (ServerFailed, subprocess.TimeoutExpired, OSError) as e:
                failures[name] = str(e)
                log(f"FAILED {label}: {e}")
                continue
            results[name].append(r)
            ka = f", keep-alive {r['ka_rps']:.0f} req/s" if "ka_rps" in r else ""
            log(f"round {rnd + 1} {label}: {r['cps']:.0f} conn/s, p50 {r['p50']:.2f} ms, "
                f"p99 {r['p99']:.2f} ms, {r['cpu_us']:.1f} us CPU/conn "
                f"(acceptor {r['acc_us']:.1f}) "
                f"({r['cpu_pct']:.0f}% CPU, others {r['other_pct']:.0f}%){ka}, errors {r['errors']}")

    med = {}
    for name, rs in results.items():
        med[name] = {k: median([r.get(k) for r in rs]) for k in
                     ("cps", "p50", "p99", "cpu_us", "acc_us", "cpu_pct", "other_pct", "ka_rps",
                      "errors")}
        med[name]["n"] = len(rs)

    print()
    print(f"{'server':<30}{'rounds':>7}{'conn/s':>10}{'spread':>8}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'CPU us/conn':>13}{'acc us/conn':>13}{'srv CPU%':>10}{'other CPU%':>12}{'keep-alive req/s':>18}"
          f"{'(min-max)':>17}{'errors':>8}")
    for name, label, *_ in servers:
        m = med[name]
        if m["n"] == 0:
            print(f"{label:<30}{0:>7}   FAILED: {failures.get(name, 'not measured')}")
            continue
        cps = [r["cps"] for r in results[name]]
        spread = f"{(max(cps) - min(cps)) / m['cps'] * 100:.0f}%" if m["cps"] else "n/a"
        kas = [r["ka_rps"] for r in results[name] if "ka_rps" in r]
        ka_range = f"({min(kas) / 1e3:.0f}k-{max(kas) / 1e3:.0f}k)" if kas else ""
        print(f"{label:<30}{m['n']:>7}{fmt(m['cps'], '.0f'):>10}{spread:>8}"
              f"{fmt(m['p50'], '.2f'):>9}{fmt(m['p99'], '.2f'):>9}{fmt(m['cpu_us'], '.1f'):>13}"
              f"{fmt(m['acc_us'], '.1f'):>13}"
              f"{fmt(m['cpu_pct'], '.0f'):>10}{fmt(m['other_pct'], '.0f'):>12}"
              f"{fmt(m['ka_rps'], '.0f'):>18}{ka_range:>17}"
              f"{fmt(m['errors'], '.0f'):>8}")
    print("(medians over rounds; conn/s = wrk Requests/sec with Connection: close, spread ="
          " (max-min)/median over rounds; CPU us/conn = utime+stime of the server's processes /"
          " requests, acc us/conn = the same for the session leader alone (the acceptor); srv CPU% and other CPU% (neither server nor wrk: other tenants) in % of one"
          " CPU during the Connection: close run; errors = wrk socket errors + non-2xx, summed"
          " over both runs of a round)")

    print()
    one = med.get("sockdup", {})
    if not one.get("n"):
        print(f"ratios: n/a -- (1) sockdup serve FAILED: "
              f"{failures.get('sockdup', 'not selected')}")
    else:
        goals = [("raw", "raw twin", 0.9), ("reuseport", "SO_REUSEPORT ceiling", 0.75),
                 ("node", "node cluster SCHED_RR", 3.0), ("node-none", "node cluster SCHED_NONE",
                                                         None)]
        for other, what, goal in goals:
            o = med.get(other, {})
            if not o.get("n"):
                print(f"(1) / {what:<24} n/a (not measured)")
                continue
            ratio = one["cps"] / o["cps"] if o["cps"] else float("nan")
            cpu = one["cpu_us"] / o["cpu_us"] if o["cpu_us"] else float("nan")
            verdict = ("" if goal is None else
                       f"  goal >= {goal}x: {'MET' if ratio >= goal else 'NOT MET'}")
            line = f"(1) / {what:<24} conn/s {ratio:5.2f}x   CPU/conn {cpu:5.2f}x{verdict}"
            if other == "reuseport" and one.get("ka_rps") and o.get("ka_rps"):
                ka = one["ka_rps"] / o["ka_rps"]
                line += (f"   keep-alive req/s {ka:5.2f}x  goal >= 0.9x: "
                         f"{'MET' if ka >= 0.9 else 'NOT MET'}")
            if other == "raw" and one.get("p99") and o.get("p99"):
                p99 = one["p99"] / o["p99"]
                line += (f"   p99 {p99:5.2f}x  goal <= 1.5x: "
                         f"{'MET' if p99 <= 1.5 else 'NOT MET'}")
            print(line)
        raw = med.get("raw", {})
        if raw.get("n") and one.get("acc_us") is not None and raw.get("acc_us"):
            acc = one["acc_us"] / raw["acc_us"]
            print(f"acceptor CPU per connection: (1) sockdup serve {one['acc_us']:.1f} us, "
                  f"(2) raw twin {raw['acc_us']:.1f} us: {acc:5.2f}x  goal <= 1.2x: "
                  f"{'MET' if acc <= 1.2 else 'NOT MET'}")
            per_round = "  ".join(
                f"{a['acc_us']:.1f}/{b['acc_us']:.1f}"
                for a, b in zip(results.get("sockdup", []), results.get("raw", [])))
            print(f"  per round (1)/(2) us: {per_round}")
        floor = med.get("floor", {})
        if floor.get("n") and floor.get("acc_us"):
            line = (f"acceptor CPU per connection: (2f) floor twin {floor['acc_us']:.1f} us; "
                    f"(1)/(2f) {one['acc_us'] / floor['acc_us']:5.2f}x (sockdup's own code)")
            if raw.get("n") and raw.get("acc_us"):
                line += (f", (2f)/(2) {floor['acc_us'] / raw['acc_us']:5.2f}x"
                         " (the guarantee)")
            print(line)
            print(f"(1) / floor twin                 conn/s {one['cps'] / floor['cps']:5.2f}x"
                  f"   p99 {one['p99'] / floor['p99']:5.2f}x")
            per_round = "  ".join(
                f"{a['acc_us']:.1f}/{b['acc_us']:.1f}"
                for a, b in zip(results.get("sockdup", []), results.get("floor", [])))
            print(f"  per round (1)/(2f) us: {per_round}")
    sys.stdout.flush()

    if failures:
        for name, why in failures.items():
            log(f"FAILED {name}: {why}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
