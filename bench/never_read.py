#!/usr/bin/env python3
"""Memory a server holds for clients that ask for history and never read (issue 11, item 1).

Starts BINARY on loopback ports, fills a room with 1,000 messages of 8 KiB, then opens N
clients of one kind that ask for all of it and never read, and prints the server's RSS
before, with them (3 s later), and once they are gone. Kinds: tcp ("history":1000 in the
handshake), ws (the same over WebSocket), api (GET /api/rooms/big/messages?limit=1000).

    python3 bench/never_read.py target/release/machat tcp 100
"""

import base64
import os
import socket
import subprocess
import sys
import tempfile
import time

MESSAGES, TEXT = 1000, 8000


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def read_until(sock, needle, limit=30):
    buf, deadline = b"", time.time() + limit
    while needle not in buf:
        if time.time() > deadline:
            raise SystemExit(f"timed out waiting for {needle[:40]!r}")
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise SystemExit("connection closed")
        buf = buf[-len(needle) - (1 << 20):] + chunk
    return buf


def fill(port):
    w = socket.create_connection(("127.0.0.1", port), timeout=30)
    w.sendall(b'{"name":"writer","room":"big"}')
    for start in range(0, MESSAGES, 50):
        lines = b"".join(b"%04d%s\n" % (i, b"x" * TEXT) for i in range(start, start + 50))
        w.sendall(lines)
        read_until(w, b"writer:%04d" % (start + 49))
    w.close()


def ws_client(http_port, i):
    s = socket.create_connection(("127.0.0.1", http_port), timeout=30)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{http_port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    read_until(s, b"\r\n\r\n")
    payload = b'{"name":"w%d","room":"big","history":1000}' % i
    mask = os.urandom(4)
    masked = bytes(b ^ mask[j % 4] for j, b in enumerate(payload))
    s.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)
    return s


def main():
    binary, kind, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    chat, http = free_port(), free_port()
    data = tempfile.mkdtemp(prefix="machat-never-read-")
    server = subprocess.Popen(
        [binary, "-a", f"127.0.0.1:{chat}", "--http", f"127.0.0.1:{http}", "--data-dir", data,
         "--max-line-rate", "0", "--history-max", "5000"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", chat), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        fill(chat)
        # One replay read in full: what the first one costs the process once is not per client.
        r = socket.create_connection(("127.0.0.1", chat), timeout=30)
        r.sendall(b'{"name":"warmup","room":"big","history":1000}')
        read_until(r, b"*** end of history")
        r.close()
        time.sleep(1)
        before = rss_kib(server.pid)
        held = []
        for i in range(n):
            if kind == "tcp":
                s = socket.create_connection(("127.0.0.1", chat), timeout=30)
                s.sendall(b'{"name":"n%d","room":"big","history":1000}' % i)
            elif kind == "ws":
                s = ws_client(http, i)
            else:
                s = socket.create_connection(("127.0.0.1", http), timeout=30)
                s.sendall(
                    f"GET /api/rooms/big/messages?limit=1000 HTTP/1.1\r\nHost: 127.0.0.1:{http}\r\n\r\n".encode()
                )
            held.append(s)
        time.sleep(3)
        during = rss_kib(server.pid)
        for s in held:
            s.close()
        time.sleep(2)
        after = rss_kib(server.pid)
        print(f"{kind} x{n}: RSS before {before // 1024} MiB, with never-readers "
              f"{during // 1024} MiB, after they left {after // 1024} MiB")
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
