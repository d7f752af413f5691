"""A Python process the tests drive line by line, like the Rust test peer.

One command per line on stdin, one answer per line on stdout: ``ok [VALUE]``, or
``err WINERROR KIND MESSAGE`` for a ``sockdup.Error`` (``err - TYPE MESSAGE`` for another
exception). Sockets are kept in a table and named by index. Records travel as text, or as
``hex:`` and the 628 bytes in hex.
"""

import os
import socket
import sys

import sockdup

socks = {}
counter = [0]


def keep(sock):
    counter[0] += 1
    socks[counter[0]] = sock
    return counter[0]


def record(word):
    return bytes.fromhex(word[4:]) if word.startswith("hex:") else word


def describe(sock):
    return f"{keep(sock)} {sock.family.value} {sock.type.value} {sock.proto}"


def run(words):
    verb, args = words[0], words[1:]
    if verb == "pid":
        return str(os.getpid())
    if verb == "startup":
        sockdup.startup()
        return ""
    if verb == "pending":
        return str(sockdup.pending())
    if verb == "redeem":
        return describe(sockdup.fromshare(record(args[0])))
    if verb == "redeem-close":
        # Redeem each record and close its socket at once.
        for word in args:
            sockdup.fromshare(record(word)).close()
        return str(len(args))
    if verb == "share":
        return "hex:" + sockdup.share(socks[int(args[0])], int(args[1])).hex()
    if verb == "share-text":
        return sockdup.share_text(socks[int(args[0])], int(args[1]))
    if verb == "share-many":
        sock, pid = socks[int(args[0])], int(args[1])
        return " ".join(sockdup.share_text(sock, pid) for _ in range(int(args[2])))
    if verb == "tcp-listen":
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        return f"{keep(s)} {s.getsockname()[1]}"
    if verb == "tcp-connect":
        return str(keep(socket.create_connection((args[0], int(args[1])), timeout=10)))
    if verb == "accept":
        s = socks[int(args[0])]
        s.settimeout(10)
        conn, _ = s.accept()
        return str(keep(conn))
    if verb == "send":
        socks[int(args[0])].sendall(" ".join(args[1:]).encode())
        return ""
    if verb == "recv":
        s = socks[int(args[0])]
        s.settimeout(10)
        data = s.recv(4096)
        return data.decode() if data else "<eof>"
    if verb == "recvfrom":
        s = socks[int(args[0])]
        s.settimeout(10)
        data, addr = s.recvfrom(4096)
        return f"{data.decode()} {addr[1]}"
    if verb == "sendto":
        socks[int(args[0])].sendto(args[3].encode(), (args[1], int(args[2])))
        return ""
    if verb == "close":
        socks.pop(int(args[0])).close()
        return ""
    if verb == "fdcount":
        return str(len(os.listdir("/proc/self/fd")) - 1)
    if verb == "exit":
        sys.stdout.flush()
        os._exit(0)
    raise ValueError(f"unknown verb {verb!r}")


def main():
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        try:
            answer = "ok " + run(words)
        except sockdup.Error as e:
            answer = f"err {e.winerror} {e.kind} {e.strerror}"
        except Exception as e:  # noqa: BLE001 - every failure goes back to the test
            answer = f"err - {type(e).__name__} {e}"
        sys.stdout.write(answer.rstrip() + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
