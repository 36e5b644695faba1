#!/usr/bin/env python3
"""An HTTP service that traces itself with the OpenTelemetry Python SDK (instrumented by hand).

Usage: sdk_service.py DOWNSTREAM_URL OTLP_TRACES_URL

  GET /local -> a SERVER span around the answer, 200 "local" (no call, no context sent).
  GET /call -> a SERVER span continuing the context of the request's headers; inside it a
               CLIENT span around GET DOWNSTREAM_URL/headers (urllib), whose request carries
               the span's context (W3C traceparent and tracestate, injected by the SDK's
               propagator); answers 200 with the downstream's body.

Spans go to OTLP_TRACES_URL over OTLP/HTTP as each one ends (SimpleSpanProcessor), with
service.name "sdk-service". Prints "PORT <n>" once listening on 127.0.0.1.
"""
import http.server
import sys
import urllib.request

from opentelemetry import propagate, trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind

downstream, otlp = sys.argv[1], sys.argv[2]
provider = TracerProvider(resource=Resource.create({"service.name": "sdk-service"}))
provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=otlp)))
trace.set_tracer_provider(provider)
tracer = trace.get_tracer("sdk_service")


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        incoming = propagate.extract({k.lower(): v for k, v in self.headers.items()})
        if self.path == "/local":
            with tracer.start_as_current_span("GET /local", context=incoming, kind=SpanKind.SERVER):
                self.send_response(200)
                self.send_header("Content-Length", "5")
                self.end_headers()
                self.wfile.write(b"local")
            return
        with tracer.start_as_current_span("GET /call", context=incoming, kind=SpanKind.SERVER):
            with tracer.start_as_current_span("GET", kind=SpanKind.CLIENT):
                headers = {}
                propagate.inject(headers)
                req = urllib.request.Request(downstream + "/headers", headers=headers)
                with urllib.request.urlopen(req, timeout=30) as resp:
                    body = resp.read()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(f"PORT {server.server_address[1]}", flush=True)
server.serve_forever()
