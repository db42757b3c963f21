#!/usr/bin/env python3
"""What a seat costs: one version-2 connection in 10 rooms against 10 connections in one
room each (issue 12: "a JSON client in 10 rooms must cost less than 10 clients in one room
each").

Starts BINARY twice on loopback ports (--max-per-ip 0, --max-line-rate 0, --http off), each
time with USERS users spread over USERS rooms so that every user is in 10 rooms and every room
has 10 members:

  many  USERS version-2 TCP connections, each joining its 10 rooms with requests;
  one   10 x USERS version-1 JSON TCP connections, one room each.

Every line the server sends is read before the server's RSS is taken (so no queued output
counts), and the script prints the RSS growth over the empty server, per user and per seat.

    python3 bench/multiroom_memory.py target/release/machat 1000
"""

import json
import os
import selectors
import socket
import subprocess
import sys
import tempfile
import time

from never_read import free_port  # beside this file

ROOMS_PER_USER = 10


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def start(binary):
    port = free_port()
    data = tempfile.mkdtemp(prefix="machat-multiroom-")
    server = subprocess.Popen(
        [binary, "-a", f"127.0.0.1:{port}", "--http", "off", "--max-per-ip", "0",
         "--max-line-rate", "0", "--data-dir", data],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server, port
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.05)


def rooms_of(user, users):
    """User u's 10 rooms: every room ends up with 10 members."""
    step = max(users // ROOMS_PER_USER, 1)
    return [f"r{(user + k * step) % users}" for k in range(ROOMS_PER_USER)]


def drain(socks, quiet=1.0):
    """Reads every socket until none has sent anything for `quiet` seconds."""
    sel = selectors.DefaultSelector()
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    last = time.time()
    while time.time() - last < quiet:
        for key, _ in sel.select(timeout=0.2):
            try:
                if key.fileobj.recv(65536):
                    last = time.time()
            except BlockingIOError:
                pass
    sel.close()
    for s in socks:
        s.setblocking(True)


def connect(port, handshake):
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(json.dumps(handshake).encode())
    return s


def run(binary, users, mode):
    server, port = start(binary)
    try:
        time.sleep(0.5)
        empty = rss_kib(server.pid)
        socks = []
        for u in range(users):
            name = f"u{u}"
            rooms = rooms_of(u, users)
            if mode == "many":
                s = connect(port, {"name": name, "version": 2})
                joins = "".join(
                    json.dumps({"type": "join", "room": r}) + "\n" for r in rooms)
                s.sendall(joins.encode())
                socks.append(s)
            else:
                for r in rooms:
                    socks.append(connect(port, {"name": name, "room": r, "format": "json"}))
            if len(socks) % 1000 < ROOMS_PER_USER:
                drain(socks[-1000:], quiet=0.05)
        drain(socks)
        time.sleep(1)
        drain(socks)
        full = rss_kib(server.pid)
        grown = (full - empty) * 1024
        seats = users * ROOMS_PER_USER
        print(f"{mode:>4}: {len(socks)} connections, {seats} seats: RSS {empty} -> {full} KiB, "
              f"{grown // users} B per user, {grown // seats} B per seat", flush=True)
        for s in socks:
            s.close()
        return grown
    finally:
        server.terminate()
        server.wait()


def main():
    binary, users = sys.argv[1], int(sys.argv[2])
    many = run(binary, users, "many")
    one = run(binary, users, "one")
    print(f"one connection in {ROOMS_PER_USER} rooms costs {many / one:.2f} of "
          f"{ROOMS_PER_USER} connections in one room each")


if __name__ == "__main__":
    main()
