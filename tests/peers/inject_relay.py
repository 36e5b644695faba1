"""Test peer: an HTTP/1.1 server that calls another one while serving each request.

Usage: inject_relay.py ADDRESS DOWNSTREAM_PORT. Prints `PORT <n>` once it listens on ADDRESS.
For every request it reads, the same thread sends `GET /down` to 127.0.0.1:DOWNSTREAM_PORT on a
keep-alive connection of its own, reads the answer, then answers its client. When a client
connection ends it prints `CONN <every byte received on it, in hex>`. No tracing code.
"""

import socket
import sys
import threading

from inject_sink import RESPONSE, Conn

DOWN = b"GET /down HTTP/1.1\r\nHost: down\r\n\r\n"
lock = threading.Lock()


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
        with lock:
            print("CONN " + bytes(conn.seen).hex(), flush=True)


def main():
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((sys.argv[1], 0))
    srv.listen(16)
    print(f"PORT {srv.getsockname()[1]}", flush=True)
    while True:
        sock, _ = srv.accept()
        threading.Thread(target=serve, args=(sock, int(sys.argv[2])), daemon=True).start()


if __name__ == "__main__":
    main()
