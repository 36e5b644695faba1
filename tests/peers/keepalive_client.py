#!/usr/bin/env python3
"""Keep-alive HTTP client for the "connection opened before the agent" test.

Usage: keepalive_client.py PORT N
Opens one connection, makes one request, prints "READY", waits for a line on stdin, then makes
N more requests on the same connection (GET /item/<i>), prints "DONE" and exits.
"""
import http.client
import sys

port, n = int(sys.argv[1]), int(sys.argv[2])
conn = http.client.HTTPConnection("127.0.0.1", port)
conn.request("GET", "/hello")
conn.getresponse().read()
print("READY", flush=True)
sys.stdin.readline()
for i in range(n):
    conn.request("GET", f"/item/{i}")
    conn.getresponse().read()
print("DONE", flush=True)
conn.close()
