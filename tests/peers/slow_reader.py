#!/usr/bin/env python3
"""HTTP/1.1 client that lets a response pile up before reading it.

Usage: slow_reader.py PORT PATH...
On one connection, for each PATH: sends "GET PATH", waits 0.5 s so the whole response is in the
socket buffer, then reads it with large recv() calls (the first one normally takes it all), and
prints the status line. Exits non-zero if a response is malformed.
"""
import socket
import sys
import time

port, paths = int(sys.argv[1]), sys.argv[2:]
sock = socket.create_connection(("127.0.0.1", port))
buf = b""
for path in paths:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    time.sleep(0.5)
    while b"\r\n\r\n" not in buf:
        buf += sock.recv(65536)
    head, _, buf = buf.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:])}
    if headers.get("transfer-encoding") == "chunked":
        while not buf.endswith(b"0\r\n\r\n"):
            buf += sock.recv(65536)
        buf = b""
    else:
        n = int(headers["content-length"])
        while len(buf) < n:
            buf += sock.recv(65536)
        buf = buf[n:]
    print(lines[0], flush=True)
sock.close()
