#!/usr/bin/env python3
"""Checks that a traced HTTP/1.1 exchange stays byte-exact while the agent comes and goes.

Usage: echo_client.py PORT SECONDS

Runs for SECONDS at most, or until its stdin is closed (so a test can let it outlive agents
that start slowly on a busy machine, then stop it).

Against tests/peers/http_server.py: one keep-alive connection opened at start and kept for the
whole run, plus a fresh connection every 25 requests. Each request is either POST /echo with a
random body of 0-64 KiB (the answer must name its exact length) or GET /headers (the request
must carry at most one well-formed traceparent, and nothing else may have been added).
Prints "KEPT <local port of the kept connection>" at start; at the end "INJECTED <n>" (how many
/headers requests arrived carrying a traceparent the agent added) and "REQUESTS <n> ERRORS <e>", and one "ERROR ..." line per mismatch.
"""
import http.client
import os
import random
import re
import sys
import threading
import time

TRACEPARENT = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
port, seconds = int(sys.argv[1]), float(sys.argv[2])
rng = random.Random(7)
kept = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
kept.connect()
print("KEPT %d" % kept.sock.getsockname()[1], flush=True)
requests = errors = injected = 0


def check(conn):
    """One request on conn; returns an error string or None."""
    global injected
    if rng.random() < 0.2:
        conn.request("GET", "/headers", headers={"X-Soak": "1"})
        body = conn.getresponse().read().decode("latin-1")
        names = [l.split(":", 1)[0].strip().lower() for l in body.splitlines() if ":" in l]
        values = [l.split(":", 1)[1].strip() for l in body.splitlines()
                  if l.lower().startswith("traceparent:")]
        extra = set(names) - {"host", "accept-encoding", "x-soak", "traceparent"}
        if len(values) > 1 or any(not TRACEPARENT.match(v) for v in values) or extra:
            return "headers: " + repr(body)
        injected += len(values)
        return None
    n = rng.randrange(0, 65536)
    conn.request("POST", "/echo", body=os.urandom(n),
                 headers={"Content-Type": "application/octet-stream"})
    got = conn.getresponse().read()
    want = b"received %d\n" % n
    return None if got == want else "echo %d: %r" % (n, got[:80])


stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
deadline = time.monotonic() + seconds
while time.monotonic() < deadline and not stop.is_set():
    for conn in (kept, None):
        fresh = conn is None
        if fresh and requests % 25:
            continue
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30) if fresh else conn
        try:
            err = check(c)
        except Exception as e:  # a reset or a malformed answer is a failure too
            err = "exception: %r" % e
        requests += 1
        if err:
            errors += 1
            print("ERROR", err, flush=True)
        if fresh:
            c.close()
    time.sleep(0.002)
print("INJECTED %d" % injected, flush=True)
print("REQUESTS %d ERRORS %d" % (requests, errors), flush=True)
