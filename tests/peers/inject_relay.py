"""Test peer: an HTTP/1.1 server that calls another one while serving each request.

Usage: inject_relay.py ADDRESS DOWNSTREAM_PORT. Prints `PORT <n>` once it listens on ADDRESS.
For every request it reads, the same thread sends `GET /down` to 127.0.0.1:DOWNSTREAM_PORT on a
keep-alive connection of its own, reads the answer, then answers its client. When a client
connection ends it prints `CONN <every byte received on it, in hex>`. No tracing code.
"""

import socket
import sys

from inject_sink import RESPONSE, Conn, listen, report

DOWN = b"GET /down HTTP/1.1\r\nHost: down\r\n\r\n"


def serve(sock, down_port):
    conn = Conn(sock)
    down = socket.create_connection(("127.0.0.1", down_port))
    down_conn = Conn(down)
    try:
        while True:
            conn.request()
            down.sendall(DOWN)
            down_conn.take_until(b"\r\n\r\nok")
            sock.sendall(RESPONSE)
    except (EOFError, ConnectionError, ValueError):
        pass
    finally:
        down.close()
        sock.close()
        report(conn)


if __name__ == "__main__":
    listen(sys.argv[1], serve, int(sys.argv[2]))
