"""HTTP/2 scenarios for ../record.py: real h2 peers through the recording proxy.

Run with `python3 ../record.py http2 [scenario ...]` using a Python that has grpcio
(e.g. /work/main/target/pyenv/bin/python), with `nghttpd` (Debian nghttp2-server) and `curl`
on the PATH. Each scenario writes NAME.rec (one TCP connection) and NAME.expected: one row
per stream as the *clients* saw it (curl --write-out, grpcio status codes and the sizes the
scenario sent and received), never from the parser under test.
"""

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from concurrent import futures

from record import Recorder, write_recording

HERE = os.path.dirname(os.path.abspath(__file__))
SVC = "/socktrace.test.Echo/"


def pattern(n, seed=0):
    """Deterministic bytes of length n (all 256 values appear, so gaps can hide frame-like
    bytes in payloads)."""
    block = bytes((i * 7 + seed) % 256 for i in range(4096))
    return (block * (n // len(block) + 1))[:n]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_expected(name, rows):
    """rows: (path, status, grpc_status or '-', request_body_len, response_body_len, end)."""
    with open(os.path.join(HERE, name + ".expected"), "w") as f:
        f.write("# path status grpc_status request_body_len response_body_len end\n")
        for row in rows:
            f.write(" ".join(str(x) for x in row) + "\n")


def grpc_len(msgs):
    """DATA payload bytes of gRPC messages: 5-byte prefix each (no compression)."""
    return sum(5 + len(m) for m in msgs)


# ---- nghttpd + curl ----


class Nghttpd:
    def __init__(self):
        self.dir = tempfile.mkdtemp()
        with open(os.path.join(self.dir, "small.txt"), "wb") as f:
            f.write(pattern(1000))
        with open(os.path.join(self.dir, "big.bin"), "wb") as f:
            f.write(pattern(300_000, 3))
        backend = free_port()
        self.port = free_port()
        self.procs = [
            subprocess.Popen(
                ["nghttpd", "--no-tls", "-d", self.dir, str(backend)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            ),
            # nghttpd 1.52 has no h2c Upgrade; nghttpx's cleartext frontend has both prior
            # knowledge and Upgrade, and forwards to nghttpd over h2.
            subprocess.Popen(
                [
                    "nghttpx",
                    "--conf=/dev/null",
                    "--workers=1",
                    "--no-ocsp",
                    "-f", f"127.0.0.1,{self.port};no-tls",
                    "-b", f"127.0.0.1,{backend};;proto=h2",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            ),
        ]
        for port in (backend, self.port):
            for _ in range(100):
                try:
                    socket.create_connection(("127.0.0.1", port)).close()
                    break
                except OSError:
                    time.sleep(0.05)

    def stop(self):
        for p in self.procs:
            p.terminate()
            p.wait()
        shutil.rmtree(self.dir)


def curl(base, paths, mode):
    # One curl, several URLs: one connection, one stream each.
    cmd = ["curl", "-s", mode, "-w", "%{http_code} %{size_download} %{http_version}\\n"]
    for p in paths:
        cmd += ["-o", "/dev/null", base + p]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    rows = []
    for p, line in zip(paths, out.splitlines()):
        code, size, version = line.split()
        assert version == "2", line
        rows.append((p, int(code), "-", 0, int(size), "complete"))
    return rows


def scenario_curl_prior_knowledge(ng):
    # curl 7.88.1 fails any second transfer on a reused prior-knowledge connection (exit 16,
    # with --next, several URLs or -Z alike), so curl makes one request here and
    # nghttp_prior_knowledge below covers several requests on one connection.
    rec = Recorder(ng.port)
    rows = curl(f"http://127.0.0.1:{rec.port}", ["/small.txt"], "--http2-prior-knowledge")
    return rec, rows, "curl --http2-prior-knowledge GET -> nghttpx (h2c) -> nghttpd"


def scenario_nghttp_prior_knowledge(ng):
    # Expected sizes: the file served, and the 404 page as curl downloads it (separately,
    # not through the recorder).
    missing = curl(f"http://127.0.0.1:{ng.port}", ["/missing"], "--http2-prior-knowledge")[0]
    rec = Recorder(ng.port)
    base = f"http://127.0.0.1:{rec.port}"
    out = subprocess.run(
        ["nghttp", "-n", "-v", base + "/small.txt", base + "/missing", base + "/big.bin"],
        check=True, capture_output=True, text=True,
    ).stdout
    statuses = [line.split()[-1] for line in out.splitlines() if ":status:" in line]
    assert statuses == ["200", "404", "200"], statuses
    rows = [
        ("/small.txt", 200, "-", 0, 1000, "complete"),
        ("/missing", 404, "-", 0, missing[4], "complete"),
        ("/big.bin", 200, "-", 0, 300_000, "complete"),
    ]
    return rec, rows, "nghttp -n (3 concurrent GETs on one prior-knowledge connection) -> nghttpx -> nghttpd"


def scenario_curl_upgrade(ng):
    rec = Recorder(ng.port)
    rows = curl(f"http://127.0.0.1:{rec.port}", ["/big.bin", "/missing"], "--http2")
    return rec, rows, "curl --http2 (HTTP/1.1 Upgrade: h2c, then a second GET on stream 3) -> nghttpx -> nghttpd"


# ---- grpcio ----


def start_grpc_server():
    import grpc

    def unary(req, ctx):
        if req.startswith(b"missing"):
            ctx.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
        return pattern(len(req) * 2 + 1, 1)

    def server_stream(req, ctx):
        n = int(req.decode())
        for i in range(n):
            yield pattern(100 * (i + 1), i)

    def client_stream(it, ctx):
        total = sum(len(m) for m in it)
        return str(total).encode()

    def bidi(it, ctx):
        for m in it:
            yield m[::-1] + b"!"

    def big(req, ctx):
        return pattern(1 << 20, 5)

    handler = grpc.method_handlers_generic_handler(
        "socktrace.test.Echo",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
            "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
            "Big": grpc.unary_unary_rpc_method_handler(big),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def grpc_call(channel, kind, method):
    return getattr(channel, kind)(SVC + method)


def status_of(fn):
    import grpc

    try:
        return 0, fn()
    except grpc.RpcError as e:
        return e.code().value[0], None


def scenario_grpc_unary(port):
    import grpc

    rec = Recorder(port)
    rows = []
    with grpc.insecure_channel(f"127.0.0.1:{rec.port}") as ch:
        call = grpc_call(ch, "unary_unary", "Unary")
        for req in [b"hello", b"missing thing", pattern(3000)]:
            code, resp = status_of(lambda: call(req))
            rows.append((SVC + "Unary", 200, code, grpc_len([req]), grpc_len([resp]) if resp is not None else 0, "complete"))
    return rec, rows, "grpcio unary: OK, NOT_FOUND (abort, Trailers-Only), OK with a 3000-byte request"


def scenario_grpc_server_streaming(port):
    import grpc

    rec = Recorder(port)
    with grpc.insecure_channel(f"127.0.0.1:{rec.port}") as ch:
        call = grpc_call(ch, "unary_stream", "ServerStream")
        msgs = list(call(b"7"))
    rows = [(SVC + "ServerStream", 200, 0, grpc_len([b"7"]), grpc_len(msgs), "complete")]
    return rec, rows, "grpcio server streaming: 1 request, 7 responses of 100..700 bytes"


def scenario_grpc_client_streaming(port):
    import grpc

    rec = Recorder(port)
    reqs = [pattern(50 * (i + 1), i) for i in range(6)]
    with grpc.insecure_channel(f"127.0.0.1:{rec.port}") as ch:
        call = grpc_call(ch, "stream_unary", "ClientStream")
        resp = call(iter(reqs))
    rows = [(SVC + "ClientStream", 200, 0, grpc_len(reqs), grpc_len([resp]), "complete")]
    return rec, rows, "grpcio client streaming: 6 requests of 50..300 bytes, 1 response"


def scenario_grpc_bidi(port):
    import grpc

    rec = Recorder(port)
    reqs = [pattern(10 * (i + 1), i) for i in range(5)]

    def slow():
        for r in reqs:
            yield r
            time.sleep(0.01)

    with grpc.insecure_channel(f"127.0.0.1:{rec.port}") as ch:
        call = grpc_call(ch, "stream_stream", "Bidi")
        resps = list(call(slow()))
    rows = [(SVC + "Bidi", 200, 0, grpc_len(reqs), grpc_len(resps), "complete")]
    return rec, rows, "grpcio bidi streaming: 5 requests, each echoed reversed as it arrives"


def scenario_grpc_concurrent(port):
    import grpc

    rec = Recorder(port)
    rows = []
    with grpc.insecure_channel(f"127.0.0.1:{rec.port}") as ch:
        call = grpc_call(ch, "unary_unary", "Unary")
        # Warm the connection so that all calls run on the same one.
        call(b"warm")
        rows.append((SVC + "Unary", 200, 0, grpc_len([b"warm"]), grpc_len([pattern(9, 1)]), "complete"))
        reqs = [(b"missing %d" % i) if i % 5 == 4 else pattern(100 + i, i) for i in range(24)]
        futs = [call.future(r) for r in reqs]
        for r, f in zip(reqs, futs):
            code, resp = status_of(f.result)
            rows.append((SVC + "Unary", 200, code, grpc_len([r]), grpc_len([resp]) if resp is not None else 0, "complete"))
    return rec, rows, "grpcio: 1 call, then 24 concurrent unary calls on one channel (every 5th NOT_FOUND)"


def scenario_grpc_large(port):
    import grpc

    rec = Recorder(port)
    req = pattern(1 << 20, 9)
    with grpc.insecure_channel(f"127.0.0.1:{rec.port}") as ch:
        resp = grpc_call(ch, "unary_unary", "Big")(req)
    rows = [(SVC + "Big", 200, 0, grpc_len([req]), grpc_len([resp]), "complete")]
    return rec, rows, "grpcio unary with a 1 MiB request and a 1 MiB response"


NGHTTPD = ["curl_prior_knowledge", "nghttp_prior_knowledge", "curl_upgrade"]
GRPC = ["grpc_unary", "grpc_server_streaming", "grpc_client_streaming", "grpc_bidi", "grpc_concurrent", "grpc_large"]


def run(names):
    names = names or NGHTTPD + GRPC
    ng = Nghttpd() if any(n in NGHTTPD for n in names) else None
    server, port = start_grpc_server() if any(n in GRPC for n in names) else (None, None)
    try:
        for name in names:
            fn = globals()["scenario_" + name]
            rec, rows, what = fn(ng if name in NGHTTPD else port)
            conns = rec.finish()
            conns = [c for c in conns if c]
            assert len(conns) == 1, f"{name}: expected one connection, got {len(conns)}"
            header = [
                f"{name}: {what}",
                "records: '> ts len' (client->server) or '< ts len', then len raw bytes, then a newline",
            ]
            write_recording(os.path.join(HERE, name + ".rec"), conns[0], header)
            write_expected(name, rows)
            print(f"{name}: {len(conns[0])} segments, {len(rows)} streams")
    finally:
        if ng:
            ng.stop()
        if server:
            server.stop(0)
