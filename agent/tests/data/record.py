#!/usr/bin/env python3
"""Shared recorder for the socktrace protocol parser test vectors.

A logging TCP proxy: every recv() it does on a relayed connection becomes one segment of that
connection, written in the `.rec` format (see README.md next to this file):

    # comment lines
    D TS LEN [CAPTURED]\\n<CAPTURED raw bytes>\\n

with D '>' (client -> server) or '<' (server -> client) and TS in ns on the proxy's clock,
relative to the connection start (+1 ms so that 0 never appears).

Protocol folders hold their scenarios in a `scenarios.py` module that defines
`run(names: list[str])` and uses `Recorder` / `write_recording` from here. Usage:

    python3 record.py PROTOCOL [scenario ...]     e.g. python3 record.py http2 grpc_unary
"""

import importlib.util
import os
import selectors
import socket
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))


class Recorder:
    """TCP proxy on 127.0.0.1 in front of `upstream_port`; `conns` holds, per accepted
    connection, its list of (direction, ts_ns, bytes) segments."""

    def __init__(self, upstream_port, recv_size=65536):
        self.upstream_port = upstream_port
        self.recv_size = recv_size
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.conns = []
        self.threads = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            segs = []
            self.conns.append(segs)
            t = threading.Thread(target=self._relay, args=(client, segs), daemon=True)
            self.threads.append(t)
            t.start()

    def _relay(self, client, segs):
        server = socket.create_connection(("127.0.0.1", self.upstream_port))
        t0 = time.monotonic_ns()
        sel = selectors.DefaultSelector()
        sel.register(client, selectors.EVENT_READ, (">", server))
        sel.register(server, selectors.EVENT_READ, ("<", client))
        open_dirs = 2
        while open_dirs:
            for key, _ in sel.select():
                direction, peer = key.data
                try:
                    data = key.fileobj.recv(self.recv_size)
                except (ConnectionResetError, OSError):
                    data = b""
                if data:
                    segs.append((direction, time.monotonic_ns() - t0 + 1_000_000, data))
                    try:
                        peer.sendall(data)
                    except OSError:
                        pass
                else:
                    sel.unregister(key.fileobj)
                    open_dirs -= 1
                    try:
                        peer.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
        client.close()
        server.close()

    def finish(self, timeout=10):
        """Waits for every relayed connection to close (both directions) and returns them."""
        for t in self.threads:
            t.join(timeout)
        self.listener.close()
        return self.conns


def write_recording(path, segs, header):
    """Writes one connection's segments to `path` (a `.rec` file)."""
    with open(path, "wb") as f:
        f.write(b"# socktrace recording v1: %s\n" % os.path.basename(path).encode())
        for line in header:
            f.write(b"# " + line.encode() + b"\n")
        for direction, ts, data in segs:
            f.write(b"%s %d %d\n" % (direction.encode(), ts, len(data)))
            f.write(data)
            f.write(b"\n")


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    proto = sys.argv[1]
    path = os.path.join(HERE, proto, "scenarios.py")
    spec = importlib.util.spec_from_file_location(f"{proto}_scenarios", path)
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, HERE)
    spec.loader.exec_module(mod)
    mod.run(sys.argv[2:])


if __name__ == "__main__":
    main()
