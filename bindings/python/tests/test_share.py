"""share/fromshare between real processes: the kinds of sockets, and every refusal."""

from __future__ import annotations

import errno
import os
import random
import socket

import pytest

import sockdup
from conftest import fd_count, to_record


def connected_pair():
    """A connected loopback TCP pair (client, server side) and the listener, closed."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=10)
        server, _ = listener.accept()
    server.settimeout(10)
    return client, server


def test_connected_tcp_both_ways(pypeer):
    """A connected TCP socket goes to another process and comes back; data flows each way."""
    peer = pypeer()
    peer.ok("startup")
    client, server = connected_pair()
    data = sockdup.share(server, peer.pid)
    assert isinstance(data, bytes) and len(data) == sockdup.RECORD_LEN == 628
    server.close()  # the peer holds its own descriptor already
    idx, family, type_, proto = peer.ok("redeem hex:" + data.hex()).split()
    assert (int(family), int(type_), int(proto)) == (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)

    client.sendall(b"ping")
    assert peer.ok(f"recv {idx}") == "ping"
    peer.ok(f"send {idx} pong")
    assert client.recv(16) == b"pong"

    # And back: the peer shares its socket with this process, which redeems it.
    back = sockdup.fromshare(to_record(peer.ok(f"share {idx} {os.getpid()}")))
    peer.ok(f"close {idx}")
    back.settimeout(10)
    assert (back.family, back.type, back.proto) == (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    client.sendall(b"again")
    assert back.recv(16) == b"again"
    back.sendall(b"reply")
    assert client.recv(16) == b"reply"
    back.close()
    assert client.recv(16) == b"", "the last descriptor closed: the client sees the end"
    client.close()


def test_listener_the_target_accepts_on(pypeer):
    peer = pypeer()
    peer.ok("startup")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    idx = peer.ok("redeem " + sockdup.share_text(listener, peer.pid)).split()[0]
    listener.close()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
        conn = peer.ok(f"accept {idx}")
        c.sendall(b"hello")
        assert peer.ok(f"recv {conn}") == "hello"


def test_udp(pypeer):
    peer = pypeer()
    peer.ok("startup")
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    port = udp.getsockname()[1]
    idx, family, type_, proto = peer.ok("redeem hex:" + sockdup.share(udp, peer.pid).hex()).split()
    assert (int(family), int(type_), int(proto)) == (socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    udp.close()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        sender.bind(("127.0.0.1", 0))
        sender.sendto(b"datagram", ("127.0.0.1", port))
        assert peer.ok(f"recvfrom {idx}") == f"datagram {sender.getsockname()[1]}"


def test_unix_stream(pypeer):
    peer = pypeer()
    peer.ok("startup")
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    idx, family, type_, _ = peer.ok("redeem hex:" + sockdup.share(theirs, peer.pid).hex()).split()
    assert (int(family), int(type_)) == (socket.AF_UNIX, socket.SOCK_STREAM)
    theirs.close()
    mine.sendall(b"over unix")
    assert peer.ok(f"recv {idx}") == "over unix"
    peer.ok(f"close {idx}")
    mine.settimeout(10)
    assert mine.recv(16) == b""
    mine.close()


def test_source_closes_and_exits_before_fromshare(pypeer):
    """The source's share returns once this process holds the socket; then it may exit."""
    sockdup.startup()
    source = pypeer()
    listener = socket.create_server(("127.0.0.1", 0))
    idx = source.ok("tcp-connect 127.0.0.1 %d" % listener.getsockname()[1])
    data = to_record(source.ok(f"share {idx} {os.getpid()}"))
    source.ok(f"close {idx}")
    source.exit()
    conn, _ = listener.accept()
    listener.close()
    s = sockdup.fromshare(data)
    s.settimeout(10)
    conn.sendall(b"still here")
    assert s.recv(32) == b"still here"
    s.close()
    conn.close()


def test_second_fromshare_of_the_same_bytes_is_refused():
    a, b = socket.socketpair()
    data = sockdup.share(a, os.getpid())
    first = sockdup.fromshare(data)
    with pytest.raises(sockdup.Error) as raised:
        sockdup.fromshare(data)
    e = raised.value
    assert e.winerror == 10022 and e.kind == "already-redeemed"
    assert e.errno == errno.EINVAL and isinstance(e, OSError)
    assert "already redeemed" in e.strerror and str(e).startswith("[WinError 10022] ")
    for s in (first, a, b):
        s.close()


def test_record_made_for_another_process(pypeer):
    peer = pypeer()
    peer.ok("startup")
    a, b = socket.socketpair()
    data = sockdup.share(a, peer.pid)
    with pytest.raises(sockdup.Error) as raised:
        sockdup.fromshare(data)
    assert raised.value.winerror == 10022 and raised.value.kind == "wrong-process"
    assert str(peer.pid) in raised.value.strerror
    # The failed attempt changed nothing: the real target still redeems it.
    peer.ok("redeem hex:" + data.hex())
    a.close()
    b.close()


def test_a_pipe_or_a_closed_socket_is_not_a_socket():
    r, w = os.pipe()
    with open(r, "rb") as pipe_file:
        with pytest.raises(sockdup.Error) as raised:
            sockdup.share(pipe_file, os.getpid())
        assert raised.value.winerror == 10038 and raised.value.kind == "not-a-socket"
        assert raised.value.errno == errno.ENOTSOCK
        assert f"descriptor {pipe_file.fileno()} " in raised.value.strerror
    os.close(w)

    s = socket.socket()
    s.close()
    with pytest.raises(sockdup.Error) as raised:
        sockdup.share(s, os.getpid())
    assert raised.value.winerror == 10038
    with pytest.raises(TypeError):
        sockdup.share(42, os.getpid())  # an int has no fileno()


def test_bad_target_pids_are_refused_with_the_librarys_kinds():
    a, b = socket.socketpair()
    for pid, kind in [(0, "invalid-pid"), (-1, "invalid-pid"), (2**40, "invalid-pid")]:
        with pytest.raises(sockdup.Error) as raised:
            sockdup.share(a, pid)
        assert (raised.value.winerror, raised.value.kind) == (10022, kind)
    a.close()
    b.close()


def test_truncated_and_random_bytes_raise_and_never_crash():
    a, b = socket.socketpair()
    good = sockdup.share(a, os.getpid())
    before = sockdup.pending()
    for cut in (0, 1, 100, 627):
        with pytest.raises(ValueError):
            sockdup.fromshare(good[:cut])
    with pytest.raises(ValueError):
        sockdup.fromshare(good + b"\0")
    rng = random.Random(15)
    for _ in range(500):
        junk = bytes(rng.getrandbits(8) for _ in range(628))
        with pytest.raises(sockdup.Error) as raised:
            sockdup.fromshare(junk)
        assert raised.value.winerror == 10022
    for text in ("", "sockdup1:", "sockdup1:!!!", "not a record", "sockdup1:" + "A" * 900):
        with pytest.raises(sockdup.Error) as raised:
            sockdup.fromshare(text)
        assert raised.value.winerror == 10022
    # Single bit flips of a real record: refused, or (a flag nobody checks) redeemed once.
    flipped = bytearray(good)
    flipped[rng.randrange(628)] ^= 1 << rng.randrange(8)
    try:
        sockdup.fromshare(bytes(flipped)).close()
    except sockdup.Error as e:
        assert e.winerror == 10022
        sockdup.fromshare(good).close()  # refused, so the real record still works
    with pytest.raises(TypeError):
        sockdup.fromshare(1234)  # type: ignore[arg-type]
    assert sockdup.pending() <= before
    for s in (a, b):
        s.close()


def test_text_form_and_other_buffers():
    a, b = socket.socketpair()
    text = sockdup.share_text(a, os.getpid())
    assert text.startswith("sockdup1:") and "\n" not in text
    assert sockdup.inspect(text)["service_flags3"] == os.getpid()
    s = sockdup.fromshare(text)
    raw = sockdup.share(a, os.getpid())
    t = sockdup.fromshare(memoryview(bytearray(raw)))
    u = sockdup.fromshare(sockdup.share_text(a, os.getpid()).encode())  # the text form as bytes
    s.sendall(b"1")
    t.sendall(b"2")
    u.sendall(b"3")
    b.settimeout(10)
    got = b""
    while len(got) < 3:
        got += b.recv(3)
    assert got == b"123"
    for x in (a, b, s, t, u):
        x.close()


def test_descriptors_are_close_on_exec():
    a, b = socket.socketpair()
    s = sockdup.fromshare(sockdup.share(a, os.getpid()))
    assert not os.get_inheritable(s.fileno())
    for x in (a, b, s):
        x.close()


def test_no_descriptor_leaked_after_2000_cycles(pypeer):
    """2 000 share/fromshare cycles each way between two processes; both counts come back."""
    peer = pypeer()
    peer.ok("startup")
    a, b = socket.socketpair()
    # Warm up: this process's inbox and its connection to the peer's inbox, and back.
    peer.ok("redeem-close " + sockdup.share_text(a, peer.pid))
    idx = peer.ok("redeem " + sockdup.share_text(b, peer.pid)).split()[0]
    sockdup.fromshare(peer.ok(f"share-text {idx} {os.getpid()}")).close()
    mine, theirs = fd_count(), int(peer.ok("fdcount"))
    waiting = sockdup.pending()  # what earlier tests left unredeemed in this process, if any

    for start in range(0, 2000, 250):
        records = [sockdup.share_text(a, peer.pid) for _ in range(250)]
        assert peer.ok("redeem-close " + " ".join(records)) == "250"
    for start in range(0, 2000, 250):
        for record in peer.ok(f"share-many {idx} {os.getpid()} 250").split():
            sockdup.fromshare(record).close()

    assert sockdup.pending() == waiting and peer.ok("pending") == "0"
    assert fd_count() == mine, "this process's descriptors"
    assert int(peer.ok("fdcount")) == theirs, "the peer's descriptors"
    a.close()
    b.close()
