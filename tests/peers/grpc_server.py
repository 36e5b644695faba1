"""A real gRPC server (grpcio, C core) for socktrace's end-to-end tests.

No generated code: generic handlers with raw bytes. Service `socktrace.test.Echo`:
  Unary          echoes the request; a request starting with b"missing" fails with NOT_FOUND
  Big            answers with as many bytes as the decimal request says
  ServerStream   answers int(request) messages
  ClientStream   answers the number of messages received, as text
  Bidi           echoes every message
Prints "PORT <n>" once listening on 127.0.0.1 (port 0 = any). With GRPC_TLS_CERT and
GRPC_TLS_KEY (PEM files) in the environment it serves over TLS (grpcio's BoringSSL).
"""
import os
import sys
from concurrent import futures

import grpc

SERVICE = "socktrace.test.Echo"


def unary(request, context):
    if request.startswith(b"missing"):
        context.abort(grpc.StatusCode.NOT_FOUND, "no such item")
    return request


def big(request, context):
    return b"x" * int(request)


def server_stream(request, context):
    for i in range(int(request)):
        yield b"item-%d" % i


def client_stream(request_iterator, context):
    return str(sum(1 for _ in request_iterator)).encode()


def bidi(request_iterator, context):
    for message in request_iterator:
        yield message


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Big": grpc.unary_unary_rpc_method_handler(big),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
    }
    options = [
        ("grpc.max_receive_message_length", 64 << 20),
        ("grpc.max_send_message_length", 64 << 20),
    ]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32), options=options)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    address = "127.0.0.1:%d" % port
    if os.environ.get("GRPC_TLS_CERT"):
        with open(os.environ["GRPC_TLS_KEY"], "rb") as k, open(os.environ["GRPC_TLS_CERT"], "rb") as c:
            credentials = grpc.ssl_server_credentials([(k.read(), c.read())])
        bound = server.add_secure_port(address, credentials)
    else:
        bound = server.add_insecure_port(address)
    server.start()
    print("PORT %d" % bound, flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
