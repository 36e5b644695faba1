#!/usr/bin/env python3
"""A Zipkin-compatible span receiver for tests: `POST /api/v2/spans` with a JSON list of spans.

Every body is checked the way a Zipkin server would refuse it, and more strictly: the
Content-Type must be application/json (else 415), the body JSON (else 400), and the JSON valid
against the v2 span schema given as the first argument (tests/data/zipkin/spans-v2.schema.json),
with its formats (ipv4, ipv6) checked, by the `jsonschema` validator (else 400, with the errors).
Valid bodies are answered 202 Accepted, as Zipkin does.

Arguments: SCHEMA [--replies CODE,CODE,...]: the first requests get these statuses instead
(a 429 or 503 with `Retry-After: 1`), without being recorded as accepted.

Prints "PORT <n>" once listening on 127.0.0.1, then one JSON object per request:
  {"status": 202, "content_type": ..., "user_agent": ..., "spans": [...]}
  {"status": 400 or 415, "content_type": ..., "errors": ["...", ...]}
  {"status": <scripted>, "scripted": true}
"""
import http.server
import json
import sys
import threading

import jsonschema

LOCK = threading.Lock()


def emit(record):
    with LOCK:
        sys.stdout.write(json.dumps(record, separators=(",", ":")) + "\n")
        sys.stdout.flush()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    validator = None
    replies = []

    def log_message(self, *args):
        pass

    def _send(self, code, body=b"", extra=()):
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        if self.path != "/api/v2/spans":
            self._send(404, b"not found\n")
            return
        with LOCK:
            scripted = Handler.replies.pop(0) if Handler.replies else None
        if scripted is not None:
            emit({"status": scripted, "scripted": True})
            retry = [("Retry-After", "1")] if scripted in (429, 503) else []
            self._send(scripted, b"scripted failure\n", retry)
            return
        content_type = self.headers.get("Content-Type", "")
        record = {"content_type": content_type, "user_agent": self.headers.get("User-Agent", "")}
        if content_type.split(";")[0].strip().lower() != "application/json":
            errors = ["Content-Type %r is not application/json" % content_type]
            self._reject(415, record, errors)
            return
        try:
            spans = json.loads(body)
        except ValueError as e:
            self._reject(400, record, ["invalid JSON: %s" % e])
            return
        errors = [
            "%s: %s" % ("/".join(str(p) for p in e.absolute_path) or "(body)", e.message)
            for e in Handler.validator.iter_errors(spans)
        ]
        if errors:
            self._reject(400, record, errors)
            return
        record.update(status=202, spans=spans)
        emit(record)
        self._send(202)

    def _reject(self, code, record, errors):
        record.update(status=code, errors=errors)
        emit(record)
        self._send(code, ("\n".join(errors) + "\n").encode())


def main():
    args = sys.argv[1:]
    with open(args[0]) as f:
        schema = json.load(f)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    Handler.validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
    if "--replies" in args:
        value = args[args.index("--replies") + 1]
        Handler.replies = [int(c) for c in value.split(",") if c]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    emit_port = "PORT %d\n" % server.server_address[1]
    sys.stdout.write(emit_port)
    sys.stdout.flush()
    server.serve_forever()


if __name__ == "__main__":
    main()
