"""gRPC peers (grpcio, C core) for the HTTP/2 injection test: a server that reports the
`traceparent` metadata of every call, and a client that makes calls when told to.

usage: grpc_tp_peer.py server ADDRESS
         prints "PORT <n>", then per call "TP <method> <values>" (the `traceparent` values it
         received, comma-separated, "-" for none) before answering. Service
         `socktrace.test.Echo`: Unary echoes the request, ServerStream answers int(request)
         messages; `grpc.health.v1.Health` (for the Go client, tests/peers/go/grpcpeer):
         Check answers SERVING, Watch answers SERVING as many times as the service name says,
         then ends.
       grpc_tp_peer.py client ADDRESS PORT
         prints "READY", then waits for a line on stdin before each step (one channel, so one
         HTTP/2 connection): `unary`, `stream N`, `traced` (a Unary call whose metadata carries
         its own traceparent, TRACED below), `quit`. Prints "RESP <method> <hex of each
         response message, comma-separated>" per call.
"""
import sys
from concurrent import futures

import grpc

SERVICE = "socktrace.test.Echo"
TRACED = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def values(context):
    tp = [v for k, v in context.invocation_metadata() if k == "traceparent"]
    return ",".join(tp) if tp else "-"


def unary(request, context):
    print("TP Unary %s" % values(context), flush=True)
    return request


def server_stream(request, context):
    print("TP ServerStream %s" % values(context), flush=True)
    for i in range(int(request)):
        yield b"item-%d" % i


SERVING = b"\x08\x01"


def health_check(request, context):
    print("TP Check %s" % values(context), flush=True)
    return SERVING


def health_watch(request, context):
    print("TP Watch %s" % values(context), flush=True)
    # HealthCheckRequest{service: "<n>"}: tag 0x0a, length, the name.
    for _ in range(int(request[2 : 2 + request[1]])):
        yield SERVING


def server(address):
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        },
    )
    health = grpc.method_handlers_generic_handler(
        "grpc.health.v1.Health",
        {
            "Check": grpc.unary_unary_rpc_method_handler(health_check),
            "Watch": grpc.unary_stream_rpc_method_handler(health_watch),
        },
    )
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    srv.add_generic_rpc_handlers((handler, health))
    port = srv.add_insecure_port("%s:0" % address)
    srv.start()
    print("PORT %d" % port, flush=True)
    srv.wait_for_termination()


def client(address, port):
    channel = grpc.insecure_channel("%s:%d" % (address, port))
    unary_call = channel.unary_unary("/%s/Unary" % SERVICE)
    stream_call = channel.unary_stream("/%s/ServerStream" % SERVICE)
    print("READY", flush=True)
    for line in sys.stdin:
        step = line.split()
        if not step or step[0] == "quit":
            break
        if step[0] == "unary":
            out = [unary_call(b"hello-unary")]
            method = "Unary"
        elif step[0] == "stream":
            out = list(stream_call(step[1].encode()))
            method = "ServerStream"
        elif step[0] == "traced":
            out = [unary_call(b"hello-traced", metadata=(("traceparent", TRACED),))]
            method = "Unary"
        else:
            raise SystemExit("unknown step %r" % step[0])
        print("RESP %s %s" % (method, ",".join(m.hex() for m in out)), flush=True)
    channel.close()


def main():
    if sys.argv[1] == "server":
        server(sys.argv[2])
    else:
        client(sys.argv[2], int(sys.argv[3]))


if __name__ == "__main__":
    main()
