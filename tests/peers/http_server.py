#!/usr/bin/env python3
"""HTTP/1.1 test server on Python's http.server, used as a real traced program.

Routes (all answer with Content-Length unless noted):
  GET  /hello            200 "hello\n"
  GET  /status/<code>    <code> with a short body
  GET  /big?size=N       200 with N bytes (written in pieces of 1 MiB)
  GET  /item/<i>         200 with i+1 bytes (lets tests check request/response pairing)
  GET  /sleep/<ms>       200 "slept\n" after waiting <ms> milliseconds
  GET  /chunked?n=N      200, Transfer-Encoding: chunked, N chunks of 100 bytes
  GET  /headers          200, body = the request headers as received, one per line
  POST /echo             200, body = "received <n>\n" where n is the decoded body length
                          (Content-Length or chunked request bodies)
Prints "PORT <n>" on stdout once listening. Threaded, keep-alive.
Arguments: [PORT] [--tls CERT KEY] (HTTPS with that certificate).
"""
import http.server
import ssl
import sys
import time


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _send(self, code, body, extra=()):
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        path, _, query = self.path.partition("?")
        params = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
        if path == "/hello":
            self._send(200, b"hello\n")
        elif path.startswith("/status/"):
            code = int(path.rsplit("/", 1)[1])
            self._send(code, b"status %d\n" % code)
        elif path == "/big":
            # Written in pieces of at most 1 MiB: sizes up to GiBs need no GiB of memory.
            size = int(params.get("size", "1048576"))
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            piece = b"x" * min(size, 1 << 20)
            while size > 0 and self.command != "HEAD":
                n = min(size, len(piece))
                self.wfile.write(piece[:n] if n < len(piece) else piece)
                size -= n
        elif path.startswith("/sleep/"):
            time.sleep(int(path.rsplit("/", 1)[1]) / 1000)
            self._send(200, b"slept\n")
        elif path.startswith("/item/"):
            self._send(200, b"i" * (int(path.rsplit("/", 1)[1]) + 1))
        elif path == "/chunked":
            n = int(params.get("n", "5"))
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for _ in range(n):
                self.wfile.write(b"64\r\n" + b"c" * 100 + b"\r\n")
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        elif path == "/headers":
            body = "".join(f"{k}: {v}\n" for k, v in self.headers.items()).encode()
            self._send(200, body)
        else:
            self._send(404, b"not found\n")

    def do_POST(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            total = 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                total += len(self.rfile.read(size))
                self.rfile.readline()
        else:
            # Read in pieces of at most 1 MiB: bodies up to GiBs need no GiB of memory.
            left = int(self.headers.get("Content-Length", "0"))
            total = 0
            while left > 0:
                got = len(self.rfile.read(min(left, 1 << 20)))
                if got == 0:
                    break
                total += got
                left -= got
        self._send(200, b"received %d\n" % total)


def main():
    args = sys.argv[1:]
    tls = None
    if "--tls" in args:
        i = args.index("--tls")
        tls = args[i + 1 : i + 3]
        del args[i : i + 3]
    port = int(args[0]) if args else 0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    if tls:
        # HTTPS through Python's ssl module (OpenSSL): what the agent reads at the library.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tls[0], tls[1])
        server.socket = context.wrap_socket(server.socket, server_side=True)
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
