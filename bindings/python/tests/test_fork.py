"""fork() and multiprocessing: a child gets its own inbox on its first use."""

from __future__ import annotations

import multiprocessing
import os
import socket
import subprocess
import sys
import textwrap

import sockdup
from conftest import TIMEOUT


def wait_child(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) if hasattr(os, "waitstatus_to_exitcode") else status >> 8


def test_a_forked_child_gets_its_own_inbox_on_first_use():
    sockdup.startup()  # the parent's run exists before the fork
    a, b = socket.socketpair()
    ready_r, ready_w = os.pipe()
    rec_r, rec_w = os.pipe()
    back_r, back_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: every failure is its exit status
        code = 1
        try:
            os.close(ready_r)
            os.close(rec_w)
            os.close(back_r)
            sockdup.startup()  # its first use: its own inbox, at its own pid
            os.write(ready_w, b"r")
            data = b""
            while len(data) < 628:
                chunk = os.read(rec_r, 628 - len(data))
                if not chunk:
                    break
                data += chunk
            s = sockdup.fromshare(data)
            s.sendall(b"from the child")
            # The child as a source: share the socket back to the parent.
            os.write(back_w, sockdup.share(s, os.getppid()))
            s.close()
            code = 0
        finally:
            os._exit(code)
    os.close(ready_w)
    os.close(rec_r)
    os.close(back_w)
    assert os.read(ready_r, 1) == b"r"
    os.write(rec_w, sockdup.share(a, pid))
    b.settimeout(TIMEOUT)
    assert b.recv(64) == b"from the child"
    back = b""
    while len(back) < 628:
        chunk = os.read(back_r, 628 - len(back))
        assert chunk, "the child ended without sharing back"
        back += chunk
    assert wait_child(pid) == 0
    s = sockdup.fromshare(back)
    s.sendall(b"and back")
    assert b.recv(64) == b"and back"
    for fd in (ready_r, rec_w, back_r):
        os.close(fd)
    for x in (a, b, s):
        x.close()


def test_a_forked_child_that_never_started_can_share_at_once():
    """The child's first use is a share: no startup() call needed."""
    sockdup.startup()
    a, b = socket.socketpair()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            os.write(w, sockdup.share(a, os.getppid()))
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    data = b""
    while len(data) < 628:
        chunk = os.read(r, 628)
        assert chunk
        data += chunk
    assert wait_child(pid) == 0
    s = sockdup.fromshare(data)
    s.sendall(b"x")
    b.settimeout(TIMEOUT)
    assert b.recv(1) == b"x"
    os.close(r)
    for x in (a, b, s):
        x.close()


def _worker(conn_queue, answers):
    """A multiprocessing worker: announces its pid, redeems what it is given, replies."""
    sockdup.startup()
    answers.put(os.getpid())
    data = conn_queue.get(timeout=TIMEOUT)
    s = sockdup.fromshare(data)
    s.sendall(f"worker {os.getpid()}".encode())
    s.close()


def test_multiprocessing_workers_fork_and_spawn():
    for method in ("fork", "spawn"):
        ctx = multiprocessing.get_context(method)
        queue, answers = ctx.Queue(), ctx.Queue()
        p = ctx.Process(target=_worker, args=(queue, answers))
        p.start()
        worker_pid = answers.get(timeout=TIMEOUT)
        assert worker_pid == p.pid
        a, b = socket.socketpair()
        queue.put(sockdup.share(a, worker_pid))
        a.close()
        b.settimeout(TIMEOUT)
        assert b.recv(64) == f"worker {worker_pid}".encode(), method
        p.join(TIMEOUT)
        assert p.exitcode == 0, method
        b.close()


def test_install_makes_windows_code_run_unchanged():
    """After install(), Windows-style code (sock.share, socket.fromshare, no startup) works,
    and a forked child is a ready target at once. Run in a fresh interpreter, so this test
    process's socket module stays unpatched."""
    code = textwrap.dedent(
        """
        import os, socket, sys
        import sockdup
        assert not hasattr(socket, "fromshare")
        sockdup.install()
        sockdup.install()  # twice is fine
        a, b = socket.socketpair()
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            # Windows style: nothing sockdup-specific in the child.
            os.close(w)
            data = b""
            while len(data) < 628:
                chunk = os.read(r, 628 - len(data))
                if not chunk:
                    os._exit(3)  # the parent failed before sharing
                data += chunk
            s = socket.fromshare(data)
            s.sendall(b"ok from " + str(os.getpid()).encode())
            os._exit(0)
        os.close(r)
        os.write(w, a.share(pid))  # shared at once: the child opened its inbox at fork
        b.settimeout(10)
        assert b.recv(64) == b"ok from " + str(pid).encode()
        _, status = os.waitpid(pid, 0)
        assert status == 0
        print("windows style ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "windows style ok"


def test_a_fork_the_at_fork_hook_did_not_see_is_caught():
    """libc's fork() called directly (as a C extension might) runs no Python at-fork hook: the
    child's first call still notices, through the library's check, and starts its own run."""
    import ctypes
    import time

    sockdup.startup()
    sockdup.fromshare(sockdup.share(socket.socketpair()[0], os.getpid())).close()  # started here
    a, b = socket.socketpair()
    r, w = os.pipe()
    libc = ctypes.CDLL(None, use_errno=True)
    pid = libc.fork()
    assert pid >= 0
    if pid == 0:
        code = 1
        try:
            os.write(w, sockdup.share(a, os.getppid()))  # as a source: needs its own run
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    deadline = time.monotonic() + TIMEOUT
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            raise AssertionError("the child did not finish")
        time.sleep(0.01)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    data = os.read(r, 628)
    os.close(r)
    s = sockdup.fromshare(data)
    s.sendall(b"z")
    b.settimeout(TIMEOUT)
    assert b.recv(1) == b"z"
    for x in (a, b, s):
        x.close()
