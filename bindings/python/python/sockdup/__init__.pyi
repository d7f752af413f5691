"""Type hints of ``sockdup``: ``socket.share`` and ``socket.fromshare`` on Linux."""

import socket
from typing import Any, Dict, Optional, Protocol, Union

class _HasFileno(Protocol):
    def fileno(self) -> int: ...

_Record = Union[bytes, bytearray, memoryview, str]

RECORD_LEN: int

class Error(OSError):
    """A sockdup failure; ``winerror`` is the Winsock code, ``kind`` the reason's name."""

    winerror: int
    kind: str
    errno: Optional[int]
    strerror: str

def share(sock: Union[socket.socket, _HasFileno], pid: int, /) -> bytes:
    """Duplicate ``sock`` for process ``pid``; returns the 628-byte record (the target holds
    the socket when this returns). Raises ``sockdup.Error``."""

def share_text(sock: Union[socket.socket, _HasFileno], pid: int, /) -> str:
    """As ``share``, but returns the record's one-line text form (``sockdup1:...``)."""

def fromshare(data: _Record) -> socket.socket:
    """Redeem a record made for this process: a new ``socket.socket`` of the record's family,
    type and protocol. ``ValueError`` for bytes of the wrong length, ``sockdup.Error`` for a
    record this process cannot redeem."""

def inspect(data: _Record, /) -> Dict[str, Any]:
    """Decode a record: a dict with the keys of ``sockdup inspect --json``."""

def startup() -> None:
    """Open this process's inbox now (otherwise on first use)."""

def pending() -> int:
    """How many duplicates wait in this process's inbox, not yet redeemed."""

def install() -> None:
    """Add ``socket.socket.share`` and ``socket.fromshare`` (Linux; nothing on Windows)."""
