#!/usr/bin/env python3
"""One service of a call chain, with no tracing code: a threaded HTTP/1.1 server.

Usage:
  chain_service.py http URL_PREFIX   GET /work?i=N -> calls GET URL_PREFIX/work?i=N (new connection
                                     each time, http.client) and answers 200 with its body.
  chain_service.py pg PORT DB        GET /work?i=N -> connects to PostgreSQL on 127.0.0.1:PORT
                                     (pg8000, user postgres), runs SELECT $1::int + 0 with N, and
                                     answers 200 "row N".
Prints "PORT <n>" once listening on 127.0.0.1.
"""
import http.client
import http.server
import sys
import urllib.parse

mode = sys.argv[1]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        i = int(urllib.parse.parse_qs(url.query).get("i", ["0"])[0])
        if mode == "http":
            down = urllib.parse.urlsplit(sys.argv[2])
            conn = http.client.HTTPConnection(down.hostname, down.port, timeout=30)
            conn.request("GET", f"{down.path}/work?i={i}")
            resp = conn.getresponse()
            body = resp.read()
            conn.close()
            status = resp.status
        else:
            import pg8000.native

            con = pg8000.native.Connection(
                "postgres", host="127.0.0.1", port=int(sys.argv[2]), database=sys.argv[3]
            )
            (row,) = con.run("SELECT CAST(:n AS int) + 0", n=i)
            con.close()
            body = f"row {row[0]}".encode()
            status = 200
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(f"PORT {server.server_address[1]}", flush=True)
server.serve_forever()
