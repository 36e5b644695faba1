#!/usr/bin/env python3
"""The Flask JSON service of the benchmark (`cargo xtask bench`).

Usage: bench_flask.py [OTLP_TRACES_URL]

  GET /  -> 200, a small JSON document.

Served by werkzeug's threaded server (one thread per connection, HTTP/1.1 keep-alive) on
127.0.0.1; prints "PORT <n>" once listening. With OTLP_TRACES_URL, the service traces itself
with the OpenTelemetry Python SDK: the WSGI middleware of opentelemetry-instrumentation-wsgi
makes a SERVER span per request, a BatchSpanProcessor exports them over OTLP/HTTP to that URL.
SIGTERM exits cleanly, so the SDK flushes what it still holds.
"""
import logging
import signal
import sys

from flask import Flask, jsonify
from werkzeug.serving import make_server

app = Flask(__name__)


@app.get("/")
def index():
    return jsonify(status="ok", service="bench-flask", items=[1, 2, 3])


if len(sys.argv) > 1:
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": "bench-flask"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=sys.argv[1])))
    trace.set_tracer_provider(provider)
    app.wsgi_app = OpenTelemetryMiddleware(app.wsgi_app)

logging.getLogger("werkzeug").setLevel(logging.ERROR)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
server = make_server("127.0.0.1", 0, app, threaded=True)
# Socket errors (wrk resetting its connections when it stops, a connection still waiting for
# its request when SIGTERM closes it) are not worth a traceback on the benchmark's stderr.
default_handle_error = server.handle_error
server.handle_error = lambda request, addr: (
    None if isinstance(sys.exc_info()[1], OSError) else default_handle_error(request, addr)
)
print(f"PORT {server.server_port}", flush=True)
server.serve_forever()
