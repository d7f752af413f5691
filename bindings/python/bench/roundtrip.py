"""share + fromshare in Python beside the standard library's send_fds/recv_fds, same run.

    python3 bindings/python/bench/roundtrip.py [--count 10000] [--rounds 7] [--pin all|none|split|same]

A source process hands one connected socket to a target process ``--count`` times; the target
turns each into a ``socket.socket`` and closes it. Timed from the first hand-off until the target
reports it has done the last one; per hand-off, median of ``--rounds`` rounds, the twins
interleaved round by round:

- ``sockdup``: ``sockdup.share(sock, target_pid)`` (returns once the target's inbox holds the
  descriptor), the 628-byte record sent over a SOCK_SEQPACKET socketpair, ``sockdup.fromshare``.
- ``send_fds``: ``socket.send_fds`` of the descriptor over a SOCK_SEQPACKET socketpair, the
  target's ``socket.recv_fds`` and ``socket.socket(family, type, proto, fd)`` (the target
  knows them beforehand, the cheapest raw receiver), and a one-byte acknowledgement
  the source waits for: the same guarantee as ``share`` (the source knows the target holds it).
- ``send_fds one-way`` (for information): the same without the acknowledgement.
- ``floor`` (for information): the shape of sockdup's contract with the standard library's
  calls and nothing else: ``send_fds`` over a second socketpair standing for the target's
  inbox, the target's acknowledgement once it holds the descriptor, then a 628-byte message over
  the first socketpair standing for the record; the target takes the descriptor it already holds
  (``socket.socket(family, type, proto, fd)``). Three wake-ups per hand-off, as sockdup has
  (push, acknowledgement, record), against the twin's two: what the contract itself costs.
- ``floor, inbox thread`` (for information): the floor with sockdup's structure: the push is
  received and acknowledged by a second thread of the target (standing for the inbox thread,
  which must answer while the program's own thread does anything else), which leaves the
  descriptor in a queue; the program's thread takes it when the record arrives. Three threads
  take turns per hand-off where the floor has two: what that structure costs when both processes
  share one CPU (``--pin same``).

Placements, each a run of its own with a fresh target process (``--pin all``, the default, runs
the three in turn): ``none`` lets the scheduler place both processes, as a Python program runs;
``split`` pins them to one CPU each; ``same`` pins both to one CPU, as the Rust benchmarks do, where
every hand-off is a sequence of context switches and the threads taking turns show most. Not a
test: it asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import collections
import os
import socket
import statistics
import threading
import time

import sockdup


# What the raw target is told beforehand (sockdup's record carries it): without it,
# socket.socket(fileno=fd) would ask the kernel (getsockname and two getsockopt).
FAMILY, TYPE, PROTO = socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP


def inbox_thread(inbox: socket.socket, held: "collections.deque[int]") -> None:
    """The ``thread`` twin's stand-in for sockdup's inbox thread: takes each pushed
    descriptor, queues it for the program's thread, acknowledges."""
    while True:
        _, fds, _, _ = socket.recv_fds(inbox, 16, 1)
        if not fds:
            return
        held.append(fds[0])
        inbox.send(b"k")


def target(chan: socket.socket, inbox: socket.socket, threaded: socket.socket) -> None:
    """The target process: serves rounds (``MODE COUNT``) until the channel closes."""
    held: "collections.deque[int]" = collections.deque()
    threading.Thread(target=inbox_thread, args=(threaded, held), daemon=True).start()
    while True:
        head = chan.recv(64)
        if not head:
            return
        mode, n = head.decode().split()
        count = int(n)
        cpu = time.process_time()
        if mode == "sockdup":
            for _ in range(count):
                sockdup.fromshare(chan.recv(700)).close()
        elif mode == "raw":
            for _ in range(count):
                _, fds, _, _ = socket.recv_fds(chan, 16, 1)
                socket.socket(FAMILY, TYPE, PROTO, fds[0]).close()
                chan.send(b"k")
        elif mode == "floor":
            for _ in range(count):
                _, fds, _, _ = socket.recv_fds(inbox, 16, 1)
                inbox.send(b"k")
                assert len(chan.recv(700)) == 628
                socket.socket(FAMILY, TYPE, PROTO, fds[0]).close()
        elif mode == "thread":
            for _ in range(count):
                assert len(chan.recv(700)) == 628
                socket.socket(FAMILY, TYPE, PROTO, held.popleft()).close()
        else:
            for _ in range(count):
                _, fds, _, _ = socket.recv_fds(chan, 16, 1)
                socket.socket(FAMILY, TYPE, PROTO, fds[0]).close()
        chan.send(b"done %.9f" % (time.process_time() - cpu))


def one_round(mode: str, chan: socket.socket, inbox: socket.socket, threaded: socket.socket, sock: socket.socket, pid: int, count: int) -> "tuple[float, float, float]":
    """Seconds per hand-off for one round: wall time, the source's and the target's CPU time
    (every thread of each process: the target's includes its inbox thread)."""
    chan.send(f"{mode} {count}".encode())
    fd = [sock.fileno()]
    cpu = time.process_time()
    start = time.perf_counter()
    if mode == "sockdup":
        for _ in range(count):
            chan.send(sockdup.share(sock, pid))
    elif mode == "raw":
        for _ in range(count):
            socket.send_fds(chan, [b"x"], fd)
            chan.recv(1)
    elif mode in ("floor", "thread"):
        # The push goes to the target's program thread (floor) or to its second thread.
        pushed = inbox if mode == "floor" else threaded
        record = bytes(628)
        for _ in range(count):
            socket.send_fds(pushed, [b"x"], fd)
            pushed.recv(1)
            chan.send(record)
    else:
        for _ in range(count):
            socket.send_fds(chan, [b"x"], fd)
    done = chan.recv(64).split()
    wall = time.perf_counter() - start
    assert done[0] == b"done"
    return wall / count, (time.process_time() - cpu) / count, float(done[1]) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10000, help="hand-offs per round (default 10000)")
    parser.add_argument("--rounds", type=int, default=7, help="rounds per twin (default 7)")
    parser.add_argument("--modes", default="sockdup,raw,floor,thread,oneway", help="which twins (default: all five)")
    parser.add_argument("--pin", choices=["all", "same", "split", "none"], default="all", help="placement (default: each of the three in turn)")
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    sockdup.startup()
    for pin in ["none", "split", "same"] if args.pin == "all" else [args.pin]:
        os.sched_setaffinity(0, set(cpus))
        run(args, pin, cpus)


def run(args: argparse.Namespace, pin: str, cpus: "list[int]") -> None:
    """One placement: a target process, every twin interleaved round by round, the table."""
    src, dst = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    isrc, idst = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    tsrc, tdst = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        src.close()
        isrc.close()
        tsrc.close()
        if pin != "none":
            os.sched_setaffinity(0, {cpus[-1] if pin == "split" else cpus[0]})
        sockdup.startup()
        dst.send(b"ready")
        code = 1
        try:
            target(dst, idst, tdst)
            code = 0
        finally:
            os._exit(code)
    dst.close()
    idst.close()
    tdst.close()
    if pin != "none":
        os.sched_setaffinity(0, {cpus[0]})
    assert src.recv(16) == b"ready"
    with socket.create_server(("127.0.0.1", 0)) as listener:
        sock = socket.create_connection(listener.getsockname())
        peer, _ = listener.accept()

    modes = args.modes.split(",")
    for mode in modes:  # warm-up: connections, caches, the inbox's table
        one_round(mode, src, isrc, tsrc, sock, pid, min(args.count, 500))
    times: dict[str, list[float]] = {m: [] for m in modes}
    used: dict[str, list[tuple[float, float]]] = {m: [] for m in modes}
    for _ in range(args.rounds):
        for mode in modes:
            wall, source_cpu, target_cpu = one_round(mode, src, isrc, tsrc, sock, pid, args.count)
            times[mode].append(wall)
            used[mode].append((source_cpu, target_cpu))
    src.close()
    isrc.close()
    tsrc.close()
    os.waitpid(pid, 0)

    med = {m: statistics.median(t) * 1e6 for m, t in times.items()}
    spread = {m: (max(t) - min(t)) / statistics.median(t) * 100 for m, t in times.items()}
    print(f"pin={pin} count={args.count} rounds={args.rounds} (median us per hand-off, spread; CPU us of source + target)")
    names = {
        "sockdup": "sockdup share+fromshare  ",
        "raw": "send_fds/recv_fds + ack  ",
        "oneway": "send_fds/recv_fds one-way",
        "floor": "floor: push, ack, record ",
        "thread": "floor, inbox thread      ",
    }
    for m in modes:
        source_cpu = statistics.median(c[0] for c in used[m]) * 1e6
        target_cpu = statistics.median(c[1] for c in used[m]) * 1e6
        print(f"  {names[m]} {med[m]:7.2f} us  ({spread[m]:3.0f}%)   CPU {source_cpu:6.2f} + {target_cpu:6.2f} us")
    ratios = [
        ("sockdup", "raw", "sockdup / (send_fds + ack)", "goal: at most 1.5x"),
        ("floor", "raw", "floor / (send_fds + ack)", "the contract's own cost"),
        ("sockdup", "floor", "sockdup / floor", "sockdup's code"),
        ("thread", "raw", "floor, inbox thread / (send_fds + ack)", "the contract with an inbox thread"),
        ("sockdup", "thread", "sockdup / floor, inbox thread", "sockdup's code, same structure"),
        ("sockdup", "oneway", "sockdup / one-way", ""),
    ]
    for top, bottom, label, why in ratios:
        if top in med and bottom in med:
            note = f"   ({why})" if why else ""
            print(f"  ratio {label}: {med[top] / med[bottom]:.2f}x{note}")
    peer.close()
    sock.close()


if __name__ == "__main__":
    main()
