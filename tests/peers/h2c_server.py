"""A cleartext HTTP/2 (h2c) server for socktrace's end-to-end tests, on the `h2` library.

Accepts prior-knowledge connections (client preface first) and HTTP/1.1 `Upgrade: h2c`.
GET /missing answers 404, every other path 200 with "hello-h2\\n". One thread per connection.
Prints "PORT <n>" once listening on 127.0.0.1.
"""
import socket
import sys
import threading

import h2.config
import h2.connection
import h2.events

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def respond(conn, sock, stream_id, path):
    status, body = (b"404", b"not found\n") if path == b"/missing" else (b"200", b"hello-h2\n")
    conn.send_headers(
        stream_id,
        [(b":status", status), (b"content-type", b"text/plain"),
         (b"content-length", str(len(body)).encode())],
    )
    conn.send_data(stream_id, body, end_stream=True)
    sock.sendall(conn.data_to_send())


def serve(sock):
    config = h2.config.H2Configuration(client_side=False, header_encoding=None)
    conn = h2.connection.H2Connection(config=config)
    first = b""
    while len(first) < len(PREFACE) and PREFACE.startswith(first):
        chunk = sock.recv(65536)
        if not chunk:
            return
        first += chunk
    pending = []
    if first.startswith(PREFACE):
        conn.initiate_connection()
        sock.sendall(conn.data_to_send())
        data = first
    else:
        # HTTP/1.1 request asking for an upgrade.
        while b"\r\n\r\n" not in first:
            chunk = sock.recv(65536)
            if not chunk:
                return
            first += chunk
        head, _, data = first.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        path = lines[0].split(b" ")[1]
        headers = {k.strip().lower(): v.strip() for k, _, v in (l.partition(b":") for l in lines[1:])}
        if headers.get(b"upgrade", b"").lower() != b"h2c":
            sock.sendall(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
            return
        sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
        conn.initiate_upgrade_connection(headers.get(b"http2-settings", b""))
        sock.sendall(conn.data_to_send())
        pending.append((1, path))
    for stream_id, path in pending:
        respond(conn, sock, stream_id, path)
    paths = {}
    while True:
        if data:
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    paths[event.stream_id] = dict(event.headers).get(b":path", b"/")
                elif isinstance(event, h2.events.StreamEnded) and event.stream_id in paths:
                    respond(conn, sock, event.stream_id, paths.pop(event.stream_id))
                elif isinstance(event, h2.events.ConnectionTerminated):
                    sock.sendall(conn.data_to_send())
                    return
            out = conn.data_to_send()
            if out:
                sock.sendall(out)
        data = sock.recv(65536)
        if not data:
            return


def main():
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 0))
    listener.listen(64)
    print("PORT %d" % listener.getsockname()[1], flush=True)
    while True:
        sock, _ = listener.accept()
        threading.Thread(target=lambda s=sock: (serve(s), s.close()), daemon=True).start()


if __name__ == "__main__":
    main()
