"""Records cross between Python and Rust: the Rust test peer and the `sockdup` CLI."""

from __future__ import annotations

import json
import os
import socket
import subprocess

import sockdup
from conftest import TIMEOUT


def test_records_made_by_the_rust_peer_are_redeemed_in_python(rustpeer, binaries):
    sockdup.startup()
    peer = rustpeer()
    peer.ok("startup")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    # Text form, straight from duplicate_socket's Display.
    idx = peer.ok(f"tcp-connect 127.0.0.1:{port}")
    text = peer.ok(f"dup {idx} {os.getpid()}")
    server_side, _ = listener.accept()
    s = sockdup.fromshare(text)  # this process's descriptor of the peer's client socket
    s.settimeout(10)
    server_side.settimeout(10)
    peer.ok(f"write {idx} from rust")
    assert server_side.recv(64) == b"from rust"
    s.sendall(b"from python")
    assert server_side.recv(64) == b"from python", "both descriptors write to one connection"
    server_side.sendall(b"to the client")
    assert s.recv(64) == b"to the client"

    # The 628 raw bytes, as `sockdup inspect --raw` writes them (WSADuplicateSocketW's form).
    idx2 = peer.ok(f"tcp-connect 127.0.0.1:{port}")
    text2 = peer.ok(f"dup {idx2} {os.getpid()}")
    raw = subprocess.run(
        [str(binaries / "sockdup"), "inspect", "--raw", text2], capture_output=True, check=True, timeout=TIMEOUT
    ).stdout
    assert len(raw) == 628
    t = sockdup.fromshare(raw)
    assert (t.family, t.type, t.proto) == (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    assert t.getpeername() == ("127.0.0.1", port)
    for x in (s, t, server_side, listener):
        x.close()


def test_records_made_in_python_are_decoded_by_the_cli_and_redeemed_by_rust(rustpeer, binaries, tmp_path):
    peer = rustpeer()
    peer.ok("startup")
    pid = int(peer.ok("pid"))
    for make in (
        lambda: socket.create_server(("127.0.0.1", 0)),
        lambda: socket.socket(socket.AF_INET6, socket.SOCK_DGRAM),
        lambda: socket.socketpair()[0],
    ):
        sock = make()
        data = sockdup.share(sock, pid)
        path = tmp_path / "record.bin"
        path.write_bytes(data)
        out = subprocess.run(
            [str(binaries / "sockdup"), "inspect", "--json", str(path)], capture_output=True, text=True, check=True, timeout=TIMEOUT
        ).stdout
        decoded = json.loads(out)
        assert decoded == sockdup.inspect(data), "the same keys and values in Rust and Python"
        assert decoded["service_flags3"] == pid
        assert (decoded["address_family"], decoded["socket_type"]) == (sock.family, sock.type)
        # The CLI reads the text form the same way.
        text_out = subprocess.run(
            [str(binaries / "sockdup"), "inspect", "--json", sockdup.share_text(sock, pid)],
            capture_output=True, text=True, check=True, timeout=TIMEOUT,
        ).stdout
        text_decoded = json.loads(text_out)
        assert text_decoded["provider_reserved"] != decoded["provider_reserved"], "a new ticket"
        assert {k: v for k, v in text_decoded.items() if k != "provider_reserved"} == {
            k: v for k, v in decoded.items() if k != "provider_reserved"
        }
        # And the Rust peer redeems what Python made.
        peer.ok("redeem " + sockdup.share_text(sock, pid))
        sock.close()


def test_a_connection_handed_from_python_to_rust_carries_data(rustpeer):
    peer = rustpeer()
    peer.ok("startup")
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=10)
        server, _ = listener.accept()
    idx = peer.ok("redeem " + sockdup.share_text(server, int(peer.ok("pid"))))
    server.close()
    client.sendall(b"to rust")
    assert peer.ok(f"read {idx}") == "to rust"
    peer.ok(f"write {idx} to python")
    assert client.recv(64) == b"to python"
    client.close()


def test_inspect_has_the_cli_keys():
    a, b = socket.socketpair()
    info = sockdup.inspect(sockdup.share(a, os.getpid()))
    assert list(info) == [
        "service_flags1", "service_flags2", "service_flags3", "service_flags4", "provider_flags",
        "provider_id", "catalog_entry_id", "protocol_chain", "version", "address_family",
        "max_sockaddr", "min_sockaddr", "socket_type", "protocol", "protocol_max_offset",
        "network_byte_order", "security_scheme", "message_size", "provider_reserved", "protocol_name",
    ]
    assert info["protocol_chain"]["len"] == 1 and len(info["protocol_chain"]["entries"]) == 7
    a.close()
    b.close()
