#!/usr/bin/env python3
"""Memory a server keeps for rooms that no longer exist (issue 11, item 2).

Starts BINARY on a loopback port with --max-line-rate 0, then one client /joins N fresh room
names one after another (each room is left, and so emptied, by the next /join), and prints
the server's RSS before, every N/6 rooms, and at the end. With SAY=1 the client says one line
in each room (so the store has something of each room to write, and to forget). The outside finding: 600,000 joins
added 184 MB that stayed after every client left.

    python3 bench/room_churn.py target/release/machat 600000
"""

import os
import socket
import subprocess
import sys
import tempfile
import time

from never_read import free_port  # beside this file


def rss_kib(pid):
    """The resident set, and its part that is the heap (RssAnon), in KiB."""
    got = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon"):
                got[key] = int(rest.split()[0])
    return f"{got.get('VmRSS', 0)} (heap {got.get('RssAnon', 0)})"


def main():
    binary, n = sys.argv[1], int(sys.argv[2])
    port = free_port()
    data = tempfile.mkdtemp(prefix="machat-churn-")
    server = subprocess.Popen(
        [binary, "-a", f"127.0.0.1:{port}", "--http", "off", "--max-line-rate", "0",
         "--data-dir", data] + sys.argv[3:],
        stdout=subprocess.DEVNULL, stderr=open(os.environ.get("SERVER_LOG", os.devnull), "w"))
    try:
        deadline = time.time() + 10
        while True:
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=30)
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.05)
        sock.sendall(b'{"name":"walker","room":"start"}')
        f = sock.makefile("rb")
        f.readline()
        time.sleep(0.5)
        print(f"rss before: {rss_kib(server.pid)} KiB", flush=True)
        block, done, step = 1000, 0, max(n // 6, 1)
        while done < n:
            k = min(block, n - done)
            say = "hi\n" if os.environ.get("SAY") else ""
            sock.sendall("".join(f"/join fresh{i}\n{say}" for i in range(done, done + k)).encode())
            seen = 0
            while seen < k:
                if f.readline() == b"*** walker joined\n":
                    seen += 1
            done += k
            time.sleep(float(os.environ.get("PAUSE", "0")))
            if done % step < block:
                print(f"rss after {done} rooms: {rss_kib(server.pid)} KiB", flush=True)
        sock.close()
        time.sleep(2)
        print(f"rss once the client left: {rss_kib(server.pid)} KiB", flush=True)
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
