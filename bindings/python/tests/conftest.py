"""Shared fixtures: real helper processes (a Python peer, the Rust test peer, the `sockdup` CLI).

Every wait is bounded (``TIMEOUT``); helper processes are killed at the end of each test.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator, List, Tuple

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
TIMEOUT = 20.0


def target_dir() -> Path:
    return Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target")


def fd_count() -> int:
    """This process's open descriptors (the listing's own descriptor not counted)."""
    return len(os.listdir("/proc/self/fd")) - 1


class Peer:
    """A helper process driven by lines: ``ok VALUE`` or ``err CODE KIND MESSAGE`` answers."""

    def __init__(self, argv: List[str], env: "dict[str, str] | None" = None) -> None:
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
            env=env,
        )
        self.pid = self.proc.pid

    def ask(self, line: str) -> str:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], TIMEOUT)
        assert ready, f"no answer to {line[:60]!r} within {TIMEOUT} s"
        answer = self.proc.stdout.readline()
        assert answer, f"the peer exited (status {self.proc.poll()}) instead of answering {line[:60]!r}"
        return answer.rstrip("\n")

    def ok(self, line: str) -> str:
        answer = self.ask(line)
        assert answer == "ok" or answer.startswith("ok "), f"{line[:60]!r} -> {answer}"
        return answer[3:]

    def err(self, line: str) -> Tuple[str, str, str]:
        answer = self.ask(line)
        assert answer.startswith("err "), f"{line[:60]!r} should fail, got {answer}"
        code, kind, message = answer[4:].split(" ", 2)
        return code, kind, message

    def exit(self) -> None:
        """Asks the peer to exit and waits for it."""
        assert self.proc.stdin
        self.proc.stdin.write("exit\n")
        self.proc.stdin.flush()
        assert self.proc.wait(TIMEOUT) == 0

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(TIMEOUT)
        for f in (self.proc.stdin, self.proc.stdout):
            if f:
                f.close()


@pytest.fixture(scope="session")
def binaries() -> Path:
    """The `sockdup` CLI and the Rust test peer, built (a no-op when `cargo test` built them)."""
    subprocess.run(
        ["cargo", "build", "--quiet", "-p", "sockdup-cli", "--bin", "sockdup", "-p", "sockdup-tests", "--bin", "peer"],
        cwd=ROOT,
        check=True,
        timeout=1200,
    )
    return target_dir() / "debug"


@pytest.fixture
def pypeer() -> Iterator[Callable[[], Peer]]:
    """Starts Python peers (tests/pypeer.py, with this interpreter); all killed at the end."""
    started: List[Peer] = []

    def start() -> Peer:
        p = Peer([sys.executable, str(HERE / "pypeer.py")])
        started.append(p)
        return p

    yield start
    for p in started:
        p.kill()


@pytest.fixture
def rustpeer(binaries: Path) -> Iterator[Callable[[], Peer]]:
    """Starts the Rust test peer (crates/sockdup-tests/src/bin/peer.rs); all killed at the end."""
    started: List[Peer] = []

    def start() -> Peer:
        p = Peer([str(binaries / "peer")])
        started.append(p)
        return p

    yield start
    for p in started:
        p.kill()


def to_record(answer: str) -> "bytes | str":
    """A record as a peer printed it: ``hex:...`` is the 628 bytes, anything else the text form."""
    return bytes.fromhex(answer[4:]) if answer.startswith("hex:") else answer
