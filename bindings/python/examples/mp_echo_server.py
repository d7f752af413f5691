"""One parent accepts connections and hands each to a pool of worker processes, in the Windows
style: ``conn.share(worker_pid)`` in the parent, ``socket.fromshare(data)`` in the worker.

On Windows this is plain standard-library code. On Linux the only change is the two lines under
``if sys.platform != "win32"``: ``sockdup.install()`` adds ``socket.socket.share`` and
``socket.fromshare`` (and makes every process of the program a ready target). The module is
imported by spawned workers too (multiprocessing's ``spawn``, Windows' only start method), so
``install()`` runs in them before they announce their pid.

    python3 bindings/python/examples/mp_echo_server.py --workers 4
    # in another shell:  echo hello | nc 127.0.0.1 PORT    ->  worker 12345: hello

Each worker answers one line per connection: ``worker PID: LINE``. With ``--connections N`` the
parent stops after N connections and prints how many each worker served.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import sys
from multiprocessing.queues import Queue

if sys.platform != "win32":
    import sockdup

    sockdup.install()


def worker(
    index: int,
    jobs: "Queue[bytes | None]",
    ready: "Queue[tuple[int, int]]",
    results: "Queue[tuple[int, int]]",
) -> None:
    """Announce this process's pid, then serve every connection the parent shares with it."""
    ready.put((index, os.getpid()))
    served = 0
    while True:
        data = jobs.get()
        if data is None:
            break
        with socket.fromshare(data) as conn:
            conn.settimeout(10)
            line = b""
            while not line.endswith(b"\n"):
                chunk = conn.recv(1024)
                if not chunk:
                    break
                line += chunk
            conn.sendall(b"worker %d: %s" % (os.getpid(), line))
        served += 1
    results.put((os.getpid(), served))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (default: a free loopback port)")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--connections", type=int, default=0, help="stop after N connections (0: never)")
    parser.add_argument("--start-method", choices=multiprocessing.get_all_start_methods(), default=None)
    args = parser.parse_args()

    host, port = args.listen.rsplit(":", 1)
    listener = socket.create_server((host, int(port)), backlog=128)
    ctx = multiprocessing.get_context(args.start_method)
    ready, results = ctx.Queue(), ctx.Queue()
    jobs = [ctx.Queue() for _ in range(args.workers)]
    procs = [ctx.Process(target=worker, args=(i, jobs[i], ready, results)) for i in range(args.workers)]
    for p in procs:
        p.start()
    pids = dict(ready.get(timeout=60) for _ in procs)
    print("listening on %s:%d" % listener.getsockname()[:2], flush=True)

    accepted = 0
    try:
        while not args.connections or accepted < args.connections:
            conn, _ = listener.accept()
            i = accepted % args.workers
            with conn:
                jobs[i].put(conn.share(pids[i]))  # the worker holds the connection now
            accepted += 1
    except KeyboardInterrupt:
        pass
    finally:
        listener.close()
        for q in jobs:
            q.put(None)
        counts = dict(results.get(timeout=60) for _ in procs)
        for p in procs:
            p.join(60)
    print(
        "served %d connections: %s"
        % (sum(counts.values()), " ".join("%d=%d" % (pid, n) for pid, n in sorted(counts.items()))),
        flush=True,
    )


if __name__ == "__main__":
    main()
