"""Test peer: an HTTP/1.1 client without any tracing code that writes exactly what it is told.

Usage: inject_client.py HOST PORT. Prints `READY` and waits for one line on stdin: a JSON list of
steps, run in order on one connection:
  ["send", "<hex>"]              one send() call with these bytes (one write on the socket),
  ["send_nonblocking", "<hex>"]  the bytes through a non-blocking socket: send() what the kernel
                                 takes, wait until writable, send the rest, and so on,
  ["sndbuf", n]                  set SO_SNDBUF,
  ["responses", n]               read n responses (Content-Length bodies).
Then prints `DONE` and exits.
"""

import json
import select
import socket
import sys


def read_responses(sock, buf, n):
    for _ in range(n):
        while b"\r\n\r\n" not in buf:
            data = sock.recv(65536)
            if not data:
                raise SystemExit("connection closed before the responses")
            buf += data
        head, buf = buf.split(b"\r\n\r\n", 1)
        length = 0
        for line in head.lower().split(b"\r\n")[1:]:
            if line.startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        while len(buf) < length:
            buf += sock.recv(65536)
        buf = buf[length:]
    return buf


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    print("READY", flush=True)
    steps = json.loads(sys.stdin.readline())
    sock = socket.create_connection((host, port))
    buf = b""
    for step in steps:
        if step[0] == "send":
            data = bytes.fromhex(step[1])
            # One call: a blocking send() takes every byte at once.
            sent = sock.send(data)
            if sent != len(data):
                raise SystemExit(f"short send: {sent} of {len(data)}")
        elif step[0] == "send_nonblocking":
            data = memoryview(bytes.fromhex(step[1]))
            sock.setblocking(False)
            while data:
                try:
                    data = data[sock.send(data):]
                except BlockingIOError:
                    select.select([], [sock], [])
            sock.setblocking(True)
        elif step[0] == "sndbuf":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, step[1])
        elif step[0] == "responses":
            buf = read_responses(sock, buf, step[1])
    sock.close()
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
