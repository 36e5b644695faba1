"""A real gRPC client (grpcio, C core) for socktrace's end-to-end tests; see grpc_server.py.

usage: grpc_client.py PORT SCENARIO [ARG]
  basic            on one channel: Unary ok, Unary NOT_FOUND, ServerStream(5), ClientStream(4 msgs),
                   Bidi(3 msgs), one after the other
  concurrent N     N Unary calls in flight at once on one channel (one HTTP/2 connection),
                   once the connection is up
  big SIZE         one Unary call with a SIZE-byte request, then Big(SIZE)
  hold             one Unary call, prints READY, waits for a line on stdin, then `basic` on the
                   same channel (the same connection)
Each call prints one line "<method> <status code name> <detail>".
"""
import os
import sys
from concurrent import futures

import grpc

SERVICE = "/socktrace.test.Echo/"


def report(method, fn):
    try:
        detail = fn()
        print("%s OK %s" % (method, detail), flush=True)
    except grpc.RpcError as e:
        print("%s %s %s" % (method, e.code().name, e.details()), flush=True)


def basic(channel):
    unary = channel.unary_unary(SERVICE + "Unary")
    report("Unary", lambda: len(unary(b"hello")))
    report("Unary", lambda: len(unary(b"missing-item")))
    server_stream = channel.unary_stream(SERVICE + "ServerStream")
    report("ServerStream", lambda: len(list(server_stream(b"5"))))
    client_stream = channel.stream_unary(SERVICE + "ClientStream")
    report("ClientStream", lambda: client_stream(iter([b"a", b"b", b"c", b"d"])).decode())
    bidi = channel.stream_stream(SERVICE + "Bidi")
    report("Bidi", lambda: len(list(bidi(iter([b"x", b"y", b"z"])))))


def main():
    port, scenario = int(sys.argv[1]), sys.argv[2]
    arg = sys.argv[3] if len(sys.argv) > 3 else None
    options = [
        ("grpc.max_receive_message_length", 64 << 20),
        ("grpc.max_send_message_length", 64 << 20),
    ]
    address = "127.0.0.1:%d" % port
    if os.environ.get("GRPC_TLS_CA"):
        # TLS through grpcio's BoringSSL, trusting the test's certificate.
        with open(os.environ["GRPC_TLS_CA"], "rb") as f:
            credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
        channel = grpc.secure_channel(address, credentials, options=options)
    else:
        channel = grpc.insecure_channel(address, options=options)
    with channel:
        if scenario == "basic":
            basic(channel)
        elif scenario == "concurrent":
            # The connection first (preface and SETTINGS on their own), then the calls: the
            # scenario is about streams multiplexed on an established connection. (Calls queued
            # before the connection is up go out in the same first write as the preface, whose
            # copy the kernel takes at the default capture size: a known limit.)
            grpc.channel_ready_future(channel).result(timeout=30)
            unary = channel.unary_unary(SERVICE + "Unary")
            calls = [unary.future(b"call-%d" % i) for i in range(int(arg))]
            ok = sum(1 for c in calls if c.result() is not None)
            print("Concurrent OK %d" % ok, flush=True)
        elif scenario == "big":
            size = int(arg)
            unary = channel.unary_unary(SERVICE + "Unary")
            report("Unary", lambda: len(unary(b"b" * size)))
            big = channel.unary_unary(SERVICE + "Big")
            report("Big", lambda: len(big(str(size).encode())))
        elif scenario == "hold":
            unary = channel.unary_unary(SERVICE + "Unary")
            report("Unary", lambda: len(unary(b"before")))
            print("READY", flush=True)
            sys.stdin.readline()
            basic(channel)
        else:
            sys.exit("unknown scenario " + scenario)


if __name__ == "__main__":
    main()
