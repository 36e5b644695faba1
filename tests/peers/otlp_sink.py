#!/usr/bin/env python3
"""Minimal OTLP/HTTP sink for benchmarks: accepts every POST with 200 and an empty
ExportTraceServiceResponse (zero bytes of protobuf), counts requests and bytes.
Prints "PORT <n>" once listening."""
import http.server
import sys


class Sink(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    requests = 0
    bytes = 0

    def log_message(self, *args):
        pass

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(n)
        Sink.requests += 1
        Sink.bytes += n
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()


server = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 0), Sink)
print(f"PORT {server.server_address[1]}", flush=True)
server.serve_forever()
