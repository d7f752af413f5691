"""Sockets from fromshare work with asyncio: start_server(sock=...) and connect_accepted_socket."""

from __future__ import annotations

import asyncio
import os
import socket

import sockdup
from conftest import TIMEOUT, to_record


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    data = await reader.readline()
    writer.write(b"echo " + data)
    await writer.drain()
    writer.close()
    await writer.wait_closed()


def test_a_shared_listener_serves_with_start_server(pypeer):
    """Another process's listener, redeemed here, served by asyncio; a connection the other
    process accepted, redeemed here, served by connect_accepted_socket."""
    sockdup.startup()
    source = pypeer()
    idx, port = source.ok("tcp-listen").split()
    listener = sockdup.fromshare(to_record(source.ok(f"share {idx} {os.getpid()}")))
    source.ok(f"close {idx}")

    async def main() -> None:
        server = await asyncio.start_server(echo, sock=listener)
        async with server:
            for i in range(3):
                reader, writer = await asyncio.open_connection("127.0.0.1", int(port))
                writer.write(f"line {i}\n".encode())
                await writer.drain()
                assert await asyncio.wait_for(reader.readline(), TIMEOUT) == f"echo line {i}\n".encode()
                writer.close()
                await writer.wait_closed()

        # A connection the peer accepted, handed to this process's loop.
        peer_listener = source.ok("tcp-listen").split()
        client = socket.create_connection(("127.0.0.1", int(peer_listener[1])), timeout=TIMEOUT)
        conn = source.ok(f"accept {peer_listener[0]}")
        accepted = sockdup.fromshare(to_record(source.ok(f"share {conn} {os.getpid()}")))
        source.ok(f"close {conn}")
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        class Echo(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport

            def data_received(self, data: bytes) -> None:
                self.transport.write(b"echo " + data)  # type: ignore[attr-defined]
                self.transport.close()

            def connection_lost(self, exc: "Exception | None") -> None:
                done.set_result(True)

        await loop.connect_accepted_socket(Echo, accepted)
        await loop.run_in_executor(None, client.sendall, b"hello\n")
        reply = await loop.run_in_executor(None, client.recv, 64)
        assert reply == b"echo hello\n"
        await asyncio.wait_for(done, TIMEOUT)
        client.close()

    asyncio.run(asyncio.wait_for(main(), TIMEOUT))
