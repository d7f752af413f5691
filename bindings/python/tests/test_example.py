"""The multiprocessing example serves 200 connections, each once, through its workers."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import HERE, TIMEOUT

EXAMPLE = HERE.parent / "examples" / "mp_echo_server.py"


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_the_example_serves_200_connections_each_once(method):
    import socket

    n = 200
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLE), "--workers", "4", "--connections", str(n), "--start-method", method],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = proc.stdout.readline()  # type: ignore[union-attr]
        assert first.startswith("listening on "), first + proc.stderr.read()  # type: ignore[union-attr]
        host, port = first.split()[-1].rsplit(":", 1)

        def one(i: int) -> str:
            with socket.create_connection((host, int(port)), timeout=TIMEOUT) as c:
                c.sendall(b"conn %d\n" % i)
                reply = b""
                while True:
                    chunk = c.recv(256)
                    if not chunk:
                        return reply.decode()
                    reply += chunk

        with ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(one, range(n)))
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(TIMEOUT)
    assert proc.returncode == 0, err

    workers = set()
    for i, reply in enumerate(replies):
        # Exactly one answer, by one worker, to this connection's own line.
        assert reply.count("\n") == 1 and reply.endswith(f": conn {i}\n"), reply
        workers.add(int(reply.split()[1].rstrip(":")))
    summary = out.strip().splitlines()[-1]
    assert summary.startswith(f"served {n} connections: "), out
    counts = dict(map(int, kv.split("=")) for kv in summary.split(": ", 1)[1].split())
    assert set(counts) == workers and len(workers) == 4
    assert sum(counts.values()) == n and all(v == n // 4 for v in counts.values())
