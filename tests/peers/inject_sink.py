"""Test peer: a raw HTTP/1.1 server that records exactly the bytes each connection sent it.

Usage: inject_sink.py ADDRESS. Prints `PORT <n>` once it listens on ADDRESS. It answers every
request it reads (head up to the blank line, then a Content-Length or chunked body) with
`HTTP/1.1 200 OK` and a Content-Length body, and when a connection ends it prints
`CONN <every byte received on it, in hex>`. No tracing code: the agent traces it.
"""

import socket
import sys
import threading

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
lock = threading.Lock()


class Conn:
    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.seen = bytearray()

    def fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise EOFError
        self.seen.extend(data)
        self.buf += data

    def take_until(self, sep):
        while sep not in self.buf:
            self.fill()
        i = self.buf.index(sep) + len(sep)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def take(self, n):
        while len(self.buf) < n:
            self.fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def request(self):
        head = self.take_until(b"\r\n\r\n").lower()
        length = 0
        chunked = False
        for line in head.split(b"\r\n")[1:]:
            if line.startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
            if line.startswith(b"transfer-encoding:") and b"chunked" in line:
                chunked = True
        if chunked:
            while True:
                size = int(self.take_until(b"\r\n").split(b";")[0], 16)
                if size == 0:
                    # Trailer lines, then the blank line.
                    while self.take_until(b"\r\n") != b"\r\n":
                        pass
                    break
                self.take(size + 2)
        else:
            self.take(length)


def report(conn):
    """Prints the `CONN` line of a connection that ended."""
    with lock:
        print("CONN " + bytes(conn.seen).hex(), flush=True)


def listen(address, serve, *args):
    """Listens on `address`, prints `PORT <n>`, and runs `serve(sock, *args)` in a thread per
    accepted connection, forever."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((address, 0))
    srv.listen(16)
    print(f"PORT {srv.getsockname()[1]}", flush=True)
    while True:
        sock, _ = srv.accept()
        threading.Thread(target=serve, args=(sock, *args), daemon=True).start()


def serve(sock):
    conn = Conn(sock)
    try:
        while True:
            conn.request()
            sock.sendall(RESPONSE)
    except (EOFError, ConnectionError, ValueError):
        pass
    finally:
        sock.close()
        report(conn)


if __name__ == "__main__":
    listen(sys.argv[1], serve)
