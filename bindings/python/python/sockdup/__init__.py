"""``socket.share`` and ``socket.fromshare`` on Linux, through sockdup.

On Windows, ``sock.share(pid)`` (``WSADuplicateSocketW``) returns a 628-byte
``WSAPROTOCOL_INFOW`` record and ``socket.fromshare(data)`` (``WSASocketW``) turns it into the
target process's own socket. This package makes the same calls work on Linux, with the same
bytes::

    import sockdup
    data = sockdup.share(conn, worker_pid)   # in the source: the worker now holds the socket
    conn.close()                             # fine: the worker has its own descriptor
    sock = sockdup.fromshare(data)           # in the worker (pid worker_pid): once, only there

``sockdup.install()`` adds ``socket.socket.share`` and ``socket.fromshare`` so that code written
for Windows runs unchanged.

The contract is the Rust crate's: ``share`` returns once the target holds its descriptor, so the
source may close its own or exit at once; a record is redeemed once, only by the process it was
made for, within the time-to-live (``SOCKDUP_TTL``, default 300 s); anything else raises
``sockdup.Error`` with ``winerror == 10022`` and a message that says which. Both processes must
run sockdup: this process's *inbox* opens on first use of ``share``/``fromshare``, or by
``startup()`` for a target that must be ready before its pid is handed out. A child made by
``os.fork()`` or ``multiprocessing`` gets its own inbox on its first use.
"""

from __future__ import annotations

import os
import socket as _socket
import sys
from typing import Any, Dict, Union

from . import _sockdup as _native

__all__ = [
    "Error",
    "RECORD_LEN",
    "fromshare",
    "inspect",
    "install",
    "pending",
    "share",
    "share_text",
    "startup",
]

RECORD_LEN: int = _native.RECORD_LEN
"""The length of a record in bytes: ``sizeof(WSAPROTOCOL_INFOW)``, 628."""


class Error(OSError):
    """A sockdup failure: ``winerror`` is the Winsock code a Windows program would see for the
    same condition (10022 ``WSAEINVAL``, 10038 ``WSAENOTSOCK``, ...), ``kind`` the stable name of
    the reason (``"already-redeemed"``, ``"wrong-process"``, ... as in the README's error table),
    ``strerror`` the library's sentence saying what went wrong and what to do. ``errno`` is the
    nearest Linux errno (``EINVAL`` for 10022, ``ENOTSOCK`` for 10038), or ``None``.
    """

    winerror: int = 0
    kind: str = ""

    def __str__(self) -> str:
        return f"[WinError {self.winerror}] {self.strerror}"


_native._set_error_class(Error)
if hasattr(os, "register_at_fork"):
    # A forked child starts its own run on first use (the check costs nothing per call).
    os.register_at_fork(after_in_child=_native._forked)

share = _native.share
share_text = _native.share_text
inspect = _native.inspect
pending = _native.pending


def startup() -> None:
    """Open this process's inbox now, if it is not open yet.

    Not needed before ``share`` or ``fromshare``, which open it on first use; call it in a
    target before handing its pid to a source (a source's ``share`` to a process that has no
    inbox fails with ``winerror == 10022``, kind ``target-not-started``). Settings come from the
    ``SOCKDUP_*`` environment variables (see the README). Raises ``sockdup.Error``.
    """
    _native.startup()


def fromshare(data: Union[bytes, bytearray, memoryview, str]) -> _socket.socket:
    """Redeem a record made by ``share`` (or ``share_text``, or the Rust crate) for this process
    and return a new ``socket.socket`` of the record's family, type and protocol, as
    ``socket.fromshare`` does on Windows.

    ``data`` is the 628 bytes, or the one-line text form (a ``str``). Bytes of another length
    raise ``ValueError`` (as CPython's does); a record this process cannot redeem raises
    ``sockdup.Error`` (``winerror == 10022``: malformed, made for another process, already
    redeemed, expired, ...; the message says which).
    """
    fd, family, type_, proto = _native.redeem(data)
    try:
        return _socket.socket(family, type_, proto, fd)
    except BaseException:
        os.close(fd)
        raise


def _share_method(self: _socket.socket, process_id: int) -> bytes:
    """Duplicate this socket for process ``process_id`` and return the 628-byte record to pass
    to ``socket.fromshare`` there (sockdup's ``share`` on Linux)."""
    return _native.share(self, process_id)


_installed = False


def install() -> None:
    """Make Windows code run unchanged: add ``socket.socket.share`` and ``socket.fromshare``.

    On Linux it also opens this process's inbox now, and makes every child made afterwards by
    ``os.fork()`` (``multiprocessing``'s ``fork`` start method) open its own at once, because on
    Windows any process can receive a socket without preparing: a parent that learns a
    worker's pid can share to it at once. A child made by ``spawn`` or ``forkserver`` is ready
    once it has imported the module that calls ``install()``; until then (3 s at most), a
    ``share`` to a child of this process waits for its inbox instead of failing with
    ``target-not-started``. Calling it again does nothing. On Windows it does nothing at all.
    """
    global _installed
    if sys.platform == "win32" or _installed:
        return
    _native.startup()
    _native._wait_for_children(True)
    _socket.socket.share = _share_method  # type: ignore[attr-defined]
    _socket.fromshare = fromshare  # type: ignore[attr-defined]
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_start_in_child)
    _installed = True


def _start_in_child() -> None:
    # A failure here must not break the fork: the first share/fromshare tries again and raises.
    try:
        _native.startup()
    except Exception:  # noqa: BLE001
        pass

