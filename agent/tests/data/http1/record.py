#!/usr/bin/env python3
"""Records real HTTP/1.x connections for the socktrace http1 parser tests.

Runs a small http.server-based server on 127.0.0.1, puts a logging TCP proxy in front of it,
and drives real clients (curl, Python http.client, raw sockets) through the proxy. The proxy
writes every recv() it does as one segment, per direction, in the .rec format described in
README.md. The expected exchanges (.expected) come from what the *clients* saw (curl's
--write-out, http.client's parsed responses) and from what they sent, never from the parser
under test.

Usage: python3 record.py [scenario ...]   (default: all). Writes next to this file.
"""

import http.client
import http.server
import io
import json
import os
import selectors
import socket
import subprocess
import sys
import tempfile
import threading
import time
from urllib.parse import parse_qs, urlsplit

HERE = os.path.dirname(os.path.abspath(__file__))


def pattern(n):
    """Deterministic ASCII body of n bytes (readable in the .rec files)."""
    line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ+/\n"
    reps = n // len(line) + 1
    return (line * reps)[:n]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _query(self):
        parts = urlsplit(self.path)
        return parts.path, {k: v[0] for k, v in parse_qs(parts.query).items()}

    def _read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            total = 0
            while True:
                line = self.rfile.readline()
                size = int(line.split(b";")[0].strip(), 16)
                if size == 0:
                    # trailers up to the empty line
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return total
                total += len(self.rfile.read(size))
                self.rfile.readline()
        n = int(self.headers.get("Content-Length", "0"))
        return len(self.rfile.read(n))

    def _send(self, code, body=b"", headers=(), length=True):
        self.send_response(code)
        for k, v in headers:
            self.send_header(k, v)
        if length and code not in (204, 304):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and code not in (204, 304):
            self.wfile.write(body)

    def _route(self):
        path, q = self._query()
        if path.startswith("/file/"):
            self._send(200, pattern(int(path[6:])), [("Content-Type", "text/plain")])
        elif path.startswith("/status/"):
            code = int(path[8:])
            self._send(code, b"" if code in (204, 304) else b"status %d\n" % code)
        elif path.startswith("/chunked/"):
            body = pattern(int(path[9:]))
            chunks = int(q.get("chunks", "3"))
            trailer = q.get("trailer") == "1"
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            if trailer:
                self.send_header("Trailer", "X-Checksum")
            self.end_headers()
            step = max(1, len(body) // chunks)
            i = 0
            while i < len(body):
                part = body[i : i + step]
                ext = b";ext=%d" % i if i == 0 else b""
                self.wfile.write(b"%x%s\r\n%s\r\n" % (len(part), ext, part))
                self.wfile.flush()
                i += step
            if trailer:
                self.wfile.write(b"0\r\nX-Checksum: %d\r\n\r\n" % sum(body))
            else:
                self.wfile.write(b"0\r\n\r\n")
        elif path == "/close":
            n = int(q.get("n", "1000"))
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(pattern(n))
            self.close_connection = True
        elif path == "/early-hints":
            self.send_response_only(103)
            self.send_header("Link", "</style.css>; rel=preload; as=style")
            self.end_headers()
            self.wfile.flush()
            time.sleep(0.01)
            self._send(200, b"hinted\n")
        elif path == "/upgrade":
            self.send_response(101)
            self.send_header("Connection", "Upgrade")
            self.send_header("Upgrade", "echo")
            self.end_headers()
            self.wfile.flush()
            while True:
                data = self.connection.recv(65536)
                if not data:
                    break
                self.connection.sendall(data)
            self.close_connection = True
        else:
            self._send(404, b"no route\n")

    def do_GET(self):
        self._route()

    def do_HEAD(self):
        self._route()

    def do_DELETE(self):
        self._route()

    def do_OPTIONS(self):
        self._send(204, headers=[("Allow", "GET, HEAD, POST, PUT, DELETE, OPTIONS")])

    def do_POST(self):
        n = self._read_body()
        self._send(200, json.dumps({"received": n}).encode() + b"\n", [("Content-Type", "application/json")])

    do_PUT = do_POST


class Recorder:
    """TCP proxy that logs each recv() as a segment of its connection."""

    def __init__(self, upstream_port, recv_size=65536):
        self.upstream_port = upstream_port
        self.recv_size = recv_size
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
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
                except ConnectionResetError:
                    data = b""
                if data:
                    segs.append((direction, time.monotonic_ns() - t0 + 1_000_000, data))
                    peer.sendall(data)
                else:
                    sel.unregister(key.fileobj)
                    open_dirs -= 1
                    try:
                        peer.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
        client.close()
        server.close()

    def finish(self):
        for t in self.threads:
            t.join(10)
        self.listener.close()
        return self.conns


def write_recording(name, segs, header):
    with open(os.path.join(HERE, name + ".rec"), "wb") as f:
        f.write(b"# socktrace http1 recording v1: %s\n" % name.encode())
        for line in header:
            f.write(b"# " + line.encode() + b"\n")
        for direction, ts, data in segs:
            f.write(b"%s %d %d\n" % (direction.encode(), ts, len(data)))
            f.write(data)
            f.write(b"\n")


def write_expected(name, rows, upgraded=False):
    with open(os.path.join(HERE, name + ".expected"), "w") as f:
        f.write("# method target status request_body_len response_body_len partial\n")
        for method, target, status, req_len, resp_len in rows:
            f.write(f"{method} {target} {status} {req_len} {resp_len} false\n")
        f.write(f"upgraded {'true' if upgraded else 'false'}\n")


def curl(base, args_per_url):
    """Runs one curl process with several URLs (one connection, keep-alive). Returns the
    (http_code, size_download) curl reports for each transfer."""
    cmd = ["curl", "-s", "--http1.1", "-w", "%{http_code} %{size_download}\\n"]
    for i, (path, extra) in enumerate(args_per_url):
        if i:
            cmd.append("--next")
            cmd += ["-s", "--http1.1", "-w", "%{http_code} %{size_download}\\n"]
        cmd += extra + ["-o", "/dev/null", base + path]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return [tuple(int(x) for x in line.split()) for line in out.splitlines()]


class SockShim:
    """Lets several http.client.HTTPResponse objects read one buffered socket file in turn
    (pipelining: responses are parsed in order from the same stream)."""

    class NoClose:
        def __init__(self, f):
            self.f = f

        def __getattr__(self, name):
            return getattr(self.f, name)

        def close(self):
            pass

    def __init__(self, f):
        self.f = self.NoClose(f)

    def makefile(self, *args, **kwargs):
        return self.f


def scenario_curl_keepalive(base):
    urls = ["/file/100", "/status/404", "/file/0", "/chunked/5000?chunks=4", "/status/500", "/file/3000"]
    got = curl(base, [(u, []) for u in urls])
    return [("GET", u, code, 0, size) for u, (code, size) in zip(urls, got)], {}


def scenario_curl_post(base):
    a, b = b"hello=world&x=1", b"second body, a bit longer than the first one"
    got = curl(base, [("/echo", ["-X", "POST", "-d", a.decode()]), ("/echo", ["-X", "PUT", "--data-binary", b.decode()])])
    return [("POST", "/echo", got[0][0], len(a), got[0][1]), ("PUT", "/echo", got[1][0], len(b), got[1][1])], {}


def scenario_curl_chunked_upload(base):
    with tempfile.NamedTemporaryFile(delete=False) as f:
        f.write(pattern(20000))
    try:
        got = curl(base, [("/echo", ["-H", "Transfer-Encoding: chunked", "--data-binary", "@" + f.name]), ("/file/10", [])])
    finally:
        os.unlink(f.name)
    return [("POST", "/echo", got[0][0], 20000, got[0][1]), ("GET", "/file/10", got[1][0], 0, got[1][1])], {}


def scenario_curl_head(base):
    urls = ["/file/1000", "/file/20", "/status/404"]
    got = curl(base, [(u, ["-I"]) for u in urls])
    return [("HEAD", u, code, 0, size) for u, (code, size) in zip(urls, got)], {}


def scenario_curl_expect_continue(base):
    with tempfile.NamedTemporaryFile(delete=False) as f:
        f.write(pattern(3000))
    try:
        got = curl(base, [("/echo", ["-H", "Expect: 100-continue", "--data-binary", "@" + f.name]), ("/status/204", [])])
    finally:
        os.unlink(f.name)
    return [("POST", "/echo", got[0][0], 3000, got[0][1]), ("GET", "/status/204", got[1][0], 0, got[1][1])], {}


def scenario_curl_early_hints(base):
    got = curl(base, [("/early-hints", []), ("/file/5", [])])
    return [("GET", "/early-hints", got[0][0], 0, got[0][1]), ("GET", "/file/5", got[1][0], 0, got[1][1])], {}


def scenario_curl_close(base):
    got = curl(base, [("/close?n=3000", [])])
    return [("GET", "/close?n=3000", got[0][0], 0, got[0][1])], {}


def scenario_curl_http10(base):
    out = subprocess.run(
        ["curl", "-s", "--http1.0", "-w", "%{http_code} %{size_download}", "-o", "/dev/null", base + "/file/50"],
        check=True, capture_output=True, text=True,
    ).stdout
    code, size = (int(x) for x in out.split())
    return [("GET", "/file/50", code, 0, size)], {}


def scenario_curl_small_reads(base):
    # Same client as curl_keepalive; the proxy reads 7 bytes at a time (see main), so heads and
    # chunk lines are split at arbitrary bytes.
    return scenario_curl_keepalive(base)


def scenario_python_client(base):
    port = int(base.rsplit(":", 1)[1])
    c = http.client.HTTPConnection("127.0.0.1", port)
    rows = []

    def req(method, target, body=None):
        c.request(method, target, body=body)
        r = c.getresponse()
        return r.status, len(r.read()), len(body or b"")

    for method, target, body in [
        ("GET", "/file/12345", None),
        ("POST", "/echo", b'{"name": "socktrace", "n": 1}'),
        ("GET", "/status/204", None),
        ("GET", "/status/304", None),
        ("HEAD", "/file/100", None),
        ("DELETE", "/status/200", None),
        ("OPTIONS", "*", None),
        ("GET", "/chunked/100000?chunks=7&trailer=1", None),
    ]:
        status, n, sent = req(method, target, body)
        rows.append((method, target, status, sent, n))
    parts = [pattern(700), pattern(1), pattern(4096)]
    c.request("PUT", "/echo", body=iter(parts), encode_chunked=True, headers={"Transfer-Encoding": "chunked"})
    r = c.getresponse()
    rows.append(("PUT", "/echo", r.status, sum(map(len, parts)), len(r.read())))
    status, n, _ = req("GET", "/status/500")
    rows.append(("GET", "/status/500", status, 0, n))
    c.close()
    return rows, {}


def scenario_python_large(base):
    port = int(base.rsplit(":", 1)[1])
    c = http.client.HTTPConnection("127.0.0.1", port)
    rows = []
    for target in ["/file/1048576", "/file/7"]:
        c.request("GET", target)
        r = c.getresponse()
        rows.append(("GET", target, r.status, 0, len(r.read())))
    c.close()
    return rows, {}


def scenario_python_pipelined(base):
    port = int(base.rsplit(":", 1)[1])
    s = socket.create_connection(("127.0.0.1", port))
    body = b"pipelined body"
    reqs = [
        ("GET", "/file/10", b""),
        ("POST", "/echo", body),
        ("GET", "/status/404", b""),
        ("HEAD", "/file/64", b""),
        ("GET", "/chunked/300?chunks=2", b""),
    ]
    wire = b""
    for i, (m, t, b) in enumerate(reqs):
        wire += b"%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\n" % (m.encode(), t.encode())
        if b:
            wire += b"Content-Length: %d\r\n" % len(b)
        if i == len(reqs) - 1:
            wire += b"Connection: close\r\n"
        wire += b"\r\n" + b
    s.sendall(wire)
    f = s.makefile("rb")
    rows = []
    for m, t, b in reqs:
        r = http.client.HTTPResponse(SockShim(f), method=m)
        r.begin()
        rows.append((m, t, r.status, len(b), len(r.read())))
    s.close()
    return rows, {}


def scenario_python_upgrade(base):
    port = int(base.rsplit(":", 1)[1])
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /upgrade HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
    f = s.makefile("rb")
    status = int(f.readline().split()[1])
    while f.readline() not in (b"\r\n", b""):
        pass
    # After the switch, bytes that look like HTTP are not HTTP any more.
    msg = b"GET /not-http-any-more HTTP/1.1\r\n\r\nhello upgraded world\n"
    s.sendall(msg)
    got = b""
    while len(got) < len(msg):
        got += f.read1(100)
    s.close()
    return [("GET", "/upgrade", status, 0, 0)], {"upgraded": True}


SCENARIOS = {name[9:]: fn for name, fn in globals().items() if name.startswith("scenario_")}


def main():
    names = sys.argv[1:] or list(SCENARIOS)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    for name in names:
        fn = SCENARIOS[name]
        recv_size = 7 if name == "curl_small_reads" else 65536
        rec = Recorder(server.server_address[1], recv_size)
        rows, opts = fn(f"http://127.0.0.1:{rec.port}")
        conns = rec.finish()
        assert len(conns) == 1, f"{name}: expected one connection, got {len(conns)}"
        header = [
            f"client: {name}; server: python http.server (HTTP/1.1); proxy recv size {recv_size}",
            "records: '> ts len' (client->server) or '< ts len', then len raw bytes, then a newline",
        ]
        write_recording(name, conns[0], header)
        write_expected(name, rows, opts.get("upgraded", False))
        print(f"{name}: {len(conns[0])} segments, {len(rows)} exchanges")
    server.shutdown()


if __name__ == "__main__":
    main()
