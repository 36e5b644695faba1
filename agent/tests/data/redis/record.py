#!/usr/bin/env python3
"""Records the Redis test vectors (see README.md next to this file).

Starts a throwaway `redis-server` on a free port in a temporary directory, puts the shared
logging TCP proxy (`agent/tests/data/record.py`) in front of it and runs one real client per
scenario through the proxy; each relayed connection is written as `SCENARIO[_N].rec`.

    python3 record.py [scenario ...]     (needs redis-server, redis-cli and the `redis` package)
"""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
from record import Recorder, write_recording  # noqa: E402

import redis  # noqa: E402

SECRET = "s3cr3t-value-42"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(port, *args, stdin=None, check=True):
    out = subprocess.run(
        ["redis-cli", "-p", str(port), *args], input=stdin, capture_output=True
    )
    if check and out.returncode != 0:
        raise RuntimeError(f"redis-cli {args}: {out.stdout!r} {out.stderr!r}")
    return out.stdout


def cli_session(port):
    # redis-cli reading commands from stdin: one connection, one command at a time.
    cli(
        port,
        stdin=(
            f"SET user:1 {SECRET}\nGET user:1\nDEL user:1 user:2\nLPUSH user:3 {SECRET}\n"
            "GET user:3\nMSET a 1 b 2\nMGET a b nokey\nINCR a\nEXPIRE a 100\n"
            "HSET h f1 v1 f2 v2\nHGETALL h\nCLIENT SETNAME rec\nCONFIG GET maxmemory\n"
            "SELECT 2\nSET k2 v2\nFOOBAR x\n"
        ).encode(),
    )


def cli_pipe(port):
    # redis-cli --pipe: every command in one go, replies read afterwards.
    cmds = b"".join(
        b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n"
        % (len(k), k, len(SECRET), SECRET.encode())
        for k in (b"key:%d" % i for i in range(20))
    )
    cmds += b"*2\r\n$4\r\nINCR\r\n$5\r\nkey:0\r\n"
    # The INCR of a non-integer fails: redis-cli exits 1 ("errors: 1, replies: 21").
    cli(port, "--pipe", stdin=cmds, check=False)


def py_pipeline(port):
    r = redis.Redis(port=port)
    p = r.pipeline(transaction=False)
    p.set("p:str", SECRET)
    p.get("p:str")
    p.lpush("p:str", "x")  # WRONGTYPE
    p.incr("p:n")
    p.delete("p:str", "p:n")
    p.ping()
    p.execute(raise_on_error=False)
    big = "x" * 300_000
    r.set("p:big", big)
    assert r.get("p:big") == big.encode()
    r.close()


def py_multi(port):
    r = redis.Redis(port=port, db=3)
    p = r.pipeline(transaction=True)
    p.set("m:a", SECRET)
    p.incr("m:a")  # fails inside EXEC
    p.get("m:a")
    p.execute(raise_on_error=False)
    r.close()


def py_resp3(port):
    # RESP3: HELLO 3, client-side caching invalidation pushes between replies.
    r = redis.Redis(port=port, protocol=3)
    other = socket.create_connection(("127.0.0.1", port))
    r.execute_command("CLIENT", "TRACKING", "ON")
    r.set("t:k", SECRET)
    r.get("t:k")
    # Another connection (not relayed) changes the key: an invalidation push.
    other.sendall(b"*3\r\n$3\r\nSET\r\n$3\r\nt:k\r\n$3\r\nnew\r\n")
    other.recv(100)
    time.sleep(0.2)
    r.hset("t:h", mapping={"a": "1", "b": "2"})
    r.hgetall("t:h")
    r.execute_command("ZADD", "t:z", "1.5", "m")
    r.execute_command("ZSCORE", "t:z", "m")
    try:
        r.execute_command("HGET", "t:k", "f")
    except redis.ResponseError:
        pass
    r.close()
    other.close()


def py_pubsub(port):
    # SUBSCRIBE on the relayed connection; messages published from another one.
    r = redis.Redis(port=port)
    ps = r.pubsub()
    ps.subscribe("chan:a", "chan:b")
    for _ in range(2):
        ps.get_message(timeout=1)
    cli(port_direct[0], "PUBLISH", "chan:a", SECRET)
    cli(port_direct[0], "PUBLISH", "chan:b", "second")
    got = 0
    deadline = time.time() + 5
    while got < 2 and time.time() < deadline:
        if ps.get_message(timeout=1):
            got += 1
    ps.ping()
    ps.get_message(timeout=1)
    ps.unsubscribe()
    for _ in range(2):
        ps.get_message(timeout=1)
    ps.close()
    r.close()


port_direct = [0]

SCENARIOS = {
    "cli_session": cli_session,
    "cli_pipe": cli_pipe,
    "py_pipeline": py_pipeline,
    "py_multi": py_multi,
    "py_resp3": py_resp3,
    "py_pubsub": py_pubsub,
}


def main():
    names = sys.argv[1:] or list(SCENARIOS)
    tmp = tempfile.mkdtemp(prefix="socktrace-redis-rec-")
    port = free_port()
    port_direct[0] = port
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no",
         "--dir", tmp, "--daemonize", "no", "--bind", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port)).close()
                break
            except OSError:
                time.sleep(0.05)
        version = cli(port, "INFO", "server").decode().split("redis_version:")[1].split()[0]
        for name in names:
            cli(port, "FLUSHALL")
            rec = Recorder(port)
            SCENARIOS[name](rec.port)
            conns = rec.finish()
            for i, segs in enumerate(conns):
                suffix = "" if i == 0 else f"_{i}"
                write_recording(
                    os.path.join(HERE, f"{name}{suffix}.rec"),
                    segs,
                    [f"redis-server {version}, redis-py {redis.__version__}, scenario {name}"],
                )
            print(name, len(conns), "connection(s)")
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
