#!/usr/bin/env python3
"""Records real PostgreSQL connections for the postgres parser tests.

Starts a throwaway PostgreSQL 15 cluster (initdb in a temporary directory, 127.0.0.1 on a random
port, unix socket in the temporary directory), puts a recording TCP proxy in front of it, and runs
each scenario's real client (psql, psycopg2, pg8000, asyncpg) through the proxy. The proxy logs
every recv() as one segment of its connection, per direction, with a monotonic timestamp.

Expected statements come from the scenario: the SQL it ran, and the tags, row counts and SQLSTATEs
its client reported (psycopg2's statusmessage/rowcount/pgcode, asyncpg's status strings, pg8000's
row_count, psql's printed tags) or that the scenario's own data fix; each command of a
multi-statement query is expected with its own statement text, and row counts only where the
server returned rows (SELECT/FETCH, RETURNING, COPY TO STDOUT). Query texts and prepared
statement names are cross-checked against the server's own statement log (csvlog with
log_statement=all), never against the parser under test.

Usage (as root; the server runs as the "postgres" user):
    python3 record.py                 # all scenarios
    python3 record.py psql_simple ... # some
    python3 record.py --dump X.rec    # print the messages of a recording (for reading it)

Needs: PostgreSQL 15 server binaries and psql, openssl, and pip packages psycopg2-binary, pg8000,
asyncpg.
"""

import asyncio
import csv
import json
import glob
import os
import pwd
import re
import selectors
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PGBIN = "/usr/lib/postgresql/15/bin"
SERVER_USER = "postgres"


# ---------------------------------------------------------------- server


class Server:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="pgrec-")
        os.chmod(self.dir, 0o755)
        self.data = os.path.join(self.dir, "data")
        self.sock_dir = os.path.join(self.dir, "sock")
        os.mkdir(self.sock_dir)
        uid = pwd.getpwnam(SERVER_USER).pw_uid
        os.chown(self.dir, uid, -1)
        os.chown(self.sock_dir, uid, -1)
        self.port = free_port()
        self.as_server([f"{PGBIN}/initdb", "-D", self.data, "--auth=trust", "-U", "postgres", "-E", "UTF8",
                        "--locale=C"])
        with open(os.path.join(self.data, "pg_hba.conf"), "w") as f:
            f.write("local all all trust\n")
            f.write("host all md5user 127.0.0.1/32 md5\n")
            f.write("host all scramuser 127.0.0.1/32 scram-sha-256\n")
            f.write("host all all 127.0.0.1/32 trust\n")
        # A self-signed certificate for the TLS scenario (ssl is switched on only for it).
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", "/CN=localhost", "-keyout", os.path.join(self.data, "server.key"),
                        "-out", os.path.join(self.data, "server.crt")], check=True, capture_output=True)
        for name in ("server.key", "server.crt"):
            os.chown(os.path.join(self.data, name), uid, -1)
            os.chmod(os.path.join(self.data, name), 0o600)
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            f.write(f"port = {self.port}\n")
            f.write("listen_addresses = '127.0.0.1'\n")
            f.write(f"unix_socket_directories = '{self.sock_dir}'\n")
            f.write("ssl = off\n")
            f.write("logging_collector = on\n")
            f.write("log_destination = 'csvlog'\n")
            f.write("log_directory = 'log'\n")
            f.write("log_statement = 'all'\n")
            f.write("log_connections = on\n")
            f.write("log_disconnections = on\n")
            f.write("log_min_error_statement = error\n")
            f.write("fsync = off\n")
        self.as_server([f"{PGBIN}/pg_ctl", "-D", self.data, "-l", os.path.join(self.data, "server.log"),
                        "-w", "start"])
        self.admin("CREATE DATABASE test")
        self.admin("SET password_encryption = 'md5'; CREATE ROLE md5user LOGIN PASSWORD 'md5secret'")
        self.admin("SET password_encryption = 'scram-sha-256'; "
                   "CREATE ROLE scramuser LOGIN PASSWORD 'scramsecret'")
        self.admin("GRANT ALL ON SCHEMA public TO public", db="test")

    def as_server(self, cmd):
        subprocess.run(["runuser", "-u", SERVER_USER, "--"] + cmd, check=True, capture_output=True)

    def admin(self, sql, db="postgres"):
        """Direct (unrecorded) connection over the unix socket."""
        out = subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", self.sock_dir, "-p",
                              str(self.port), "-U", "postgres", "-d", db, "-At", "-c", sql],
                             check=True, capture_output=True, text=True)
        return out.stdout

    def set_ssl(self, on):
        self.admin(f"ALTER SYSTEM SET ssl = {'on' if on else 'off'}")
        self.admin("SELECT pg_reload_conf()")
        time.sleep(0.5)

    def log_entries(self, ports=()):
        """Rows of the csvlog so far, as dicts, once the connections from `ports` have ended."""
        for _ in range(100):
            rows = self._read_log()
            ended = {r["connection_from"] for r in rows if r["message"].startswith("disconnection:")}
            if all(f"127.0.0.1:{p}" in ended for p in ports):
                return rows
            time.sleep(0.1)
        raise SystemExit(f"server log has no disconnection of {ports}")

    def _read_log(self):
        cols = ["log_time", "user_name", "database_name", "process_id", "connection_from", "session_id",
                "session_line_num", "command_tag", "session_start_time", "virtual_transaction_id",
                "transaction_id", "error_severity", "sql_state_code", "message", "detail", "hint",
                "internal_query", "internal_query_pos", "context", "query", "query_pos", "location",
                "application_name", "backend_type", "leader_pid", "query_id"]
        rows = []
        for path in sorted(glob.glob(os.path.join(self.data, "log", "*.csv"))):
            with open(path, newline="") as f:
                for rec in csv.reader(f):
                    rows.append(dict(zip(cols, rec)))
        return rows

    def stop(self):
        self.as_server([f"{PGBIN}/pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop"])
        shutil.rmtree(self.dir)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ---------------------------------------------------------------- proxy


class Recorder:
    """TCP proxy that logs each recv() as a segment of its connection, and the local port of its
    upstream socket (the server logs it as connection_from)."""

    def __init__(self, upstream_port, recv_size=65536):
        self.upstream_port = upstream_port
        self.recv_size = recv_size
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.conns = []
        self.threads = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            rec = {"segs": [], "upstream_port": None}
            self.conns.append(rec)
            t = threading.Thread(target=self._relay, args=(client, rec), daemon=True)
            self.threads.append(t)
            t.start()

    def _relay(self, client, rec):
        server = socket.create_connection(("127.0.0.1", self.upstream_port))
        for s in (client, server):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rec["upstream_port"] = server.getsockname()[1]
        segs = rec["segs"]
        t0 = time.monotonic_ns()
        sel = selectors.DefaultSelector()
        sel.register(client, selectors.EVENT_READ, (">", server))
        sel.register(server, selectors.EVENT_READ, ("<", client))
        open_dirs = 2
        while open_dirs:
            for key, _ in sel.select():
                direction, peer = key.data
                try:
                    data = key.fileobj.recv(self.recv_size)
                except ConnectionResetError:
                    data = b""
                if data:
                    segs.append((direction, time.monotonic_ns() - t0 + 1_000_000, data))
                    try:
                        peer.sendall(data)
                    except OSError:
                        pass
                else:
                    sel.unregister(key.fileobj)
                    open_dirs -= 1
                    try:
                        peer.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
        client.close()
        server.close()

    def finish(self):
        for t in self.threads:
            t.join(10)
        self.listener.close()
        return self.conns


# ---------------------------------------------------------------- files


def write_recording(name, segs, header):
    with open(os.path.join(HERE, name + ".rec"), "wb") as f:
        f.write(b"# socktrace postgres recording v1: %s\n" % name.encode())
        for line in header:
            f.write(b"# " + line.encode() + b"\n")
        for direction, ts, data in segs:
            f.write(b"%s %d %d\n" % (direction.encode(), ts, len(data)))
            f.write(data)
            f.write(b"\n")


def esc(s):
    return s.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def write_expected(name, conn_info, stmts):
    """stmts: list of dicts with kind ('simple'/'extended'), prepared (None or name), tag, rows,
    sqlstate, query."""
    with open(os.path.join(HERE, name + ".expected"), "w") as f:
        f.write(f"# socktrace postgres expected v1: {name}\n")
        for k in ("user", "database", "encrypted"):
            f.write(f"{k}\t{conn_info[k]}\n")
        f.write("# kind\tprepared\ttag\trows\tsqlstate\tquery (- is None, '' an empty name; \\\\ \\t \\n \\r escaped)\n")
        for s in stmts:
            prepared = "-" if s.get("prepared") is None else (s["prepared"] or "''")
            fields = [s["kind"], prepared, s.get("tag") or "-",
                      "-" if s.get("rows") is None else str(s["rows"]),
                      s.get("sqlstate") or "-", "-" if s.get("query") is None else s["query"]]
            f.write("stmt\t" + "\t".join(esc(x) for x in fields) + "\n")


# ---------------------------------------------------------------- dump


def dump(path):
    raw = open(path, "rb").read()
    i = 0
    streams = {">": b"", "<": b""}
    while i < len(raw):
        nl = raw.index(b"\n", i)
        line = raw[i:nl].decode()
        i = nl + 1
        if not line or line.startswith("#"):
            continue
        d, ts, n = line.split()[:3]
        data = raw[i:i + int(n)]
        i += int(n) + 1
        print(f"{d} ts={ts} {len(data)} bytes")
        streams[d] += data
    for d, s in streams.items():
        print("==== frontend" if d == ">" else "==== backend")
        j = 0
        startup = d == ">"
        while j < len(s):
            if startup and s[j] == 0:
                ln, code = struct.unpack("!II", s[j:j + 8])
                print(f"  startup len={ln} code={code} {s[j + 8:j + ln][:120]!r}")
                j += ln
                startup = code in (80877103, 80877104)
                continue
            if d == "<" and s[j:j + 1] in (b"N", b"S") and (j + 5 > len(s) or struct.unpack("!I", s[j + 1:j + 5])[0] > 1 << 30):
                print(f"  answer {s[j:j + 1]!r}")
                j += 1
                continue
            startup = False
            if j + 5 > len(s):
                print(f"  tail {s[j:]!r}")
                break
            t = s[j:j + 1]
            ln = struct.unpack("!I", s[j + 1:j + 5])[0]
            body = s[j + 5:j + 1 + ln]
            if t not in (b"D", b"d") or len(body) < 40:
                print(f"  {t.decode(errors='replace')} len={ln} {body[:100]!r}")
            j += 1 + ln


# ---------------------------------------------------------------- scenarios
#
# A scenario runs a client through the proxy and returns, per recorded connection in order, a dict:
#   info:  {"user": ..., "database": ..., "encrypted": bool}
#   stmts: expected statements, each {"kind", "prepared", "tag", "rows", "sqlstate", "query"};
#          query FROM_LOG takes the text from the server's statement log (texts the client builds
#          itself, like psql's \copy); "cont": True marks a later command of the same
#          multi-statement Query.

FROM_LOG = object()


def simple(query, tag=None, rows=None, sqlstate=None, cont=False):
    return {"kind": "simple", "prepared": None, "query": query, "tag": tag, "rows": rows,
            "sqlstate": sqlstate, "cont": cont}


def extended(query, prepared, tag=None, rows=None, sqlstate=None, logged=True):
    """logged: the server logs an "execute" line for it (not for a statement whose Parse or Bind
    failed)."""
    return {"kind": "extended", "prepared": prepared, "query": query, "tag": tag, "rows": rows,
            "sqlstate": sqlstate, "logged": logged}


def info(user, database, encrypted=False):
    return {"user": user if user is not None else "-", "database": database if database is not None else "-",
            "encrypted": "true" if encrypted else "false"}


def rows_of(tag):
    w = tag.split(" ")
    if w[0] == "INSERT" and len(w) == 3:
        return int(w[2])
    if w[0] in ("SELECT", "UPDATE", "DELETE", "COPY", "FETCH", "MOVE", "MERGE") and len(w) == 2:
        return int(w[1])
    return None


def tagged(query, tag, **kw):
    return simple(query, tag, rows_of(tag), **kw)


STATEMENT_TOKEN = re.compile(
    r"""(?P<skip>--[^\n]*|/\*.*?(?:\*/|$)|[Ee]'(?:[^'\\]|\\.|'')*(?:'|$)|'(?:[^']|'')*(?:'|$)"""
    r"""|"(?:[^"]|"")*(?:"|$)|(?P<dq>\$[A-Za-z_]*\$).*?(?:(?P=dq)|$))"""
    r"""|(?P<word>[A-Za-z_][A-Za-z_0-9$]*)|(?P<semi>;)|.""",
    re.S)


def statements(text):
    """The statements of a simple-query text, as the server runs them: split at ';' outside
    strings, quoted identifiers, dollar quotes, comments and parentheses, trimmed, empty ones
    dropped; a `BEGIN ATOMIC` function body keeps the whole text as one."""
    pieces, start, words, depth = [], 0, [], 0
    for m in STATEMENT_TOKEN.finditer(text):
        if m.group("word"):
            words.append(m.group("word").upper())
            if words[-2:] == ["BEGIN", "ATOMIC"]:
                return [text.strip()]
        elif m.group(0) == "(":
            depth += 1
        elif m.group(0) == ")":
            depth = max(depth - 1, 0)
        elif m.group("semi") and depth == 0:
            pieces.append(text[start:m.start()])
            start = m.end()
            words = []
    pieces.append(text[start:])
    return [p.strip() for p in pieces if significant(p)]


def significant(piece):
    """Holds more than whitespace and comments."""
    return any(not t.isspace() and not t.startswith(("--", "/*"))
               for t in (m.group(0) for m in STATEMENT_TOKEN.finditer(piece)))


def returned_rows(tag, query):
    """db.response.returned_rows: SELECT/FETCH counts (not CREATE TABLE AS / SELECT INTO, which
    write their rows); INSERT/UPDATE/DELETE/MERGE only with RETURNING and COPY only TO STDOUT
    (the server sends those rows); nothing else."""
    n = rows_of(tag) if tag else None
    word = tag.split(" ")[0] if tag else None
    q = (query or "").upper()
    if word in ("SELECT", "FETCH"):
        writes = re.match(r"\s*CREATE\b", q) or re.search(r"\bINTO\b", q)
        return None if writes and n else n
    if word in ("INSERT", "UPDATE", "DELETE", "MERGE") and re.search(r"\bRETURNING\b", q):
        return n
    if word == "COPY" and re.search(r"\bTO\s+STDOUT\b", q):
        return n
    return None


def finalize(stmts):
    """What the parser reports from what the scenario ran: each command of a multi-statement
    query carries its own statement (the n-th result answers the n-th statement), and row
    counts are returned rows only."""
    run = []
    for s in stmts + [None]:
        if s is None or not s.get("cont"):
            pieces = statements(run[0]["query"]) if run and isinstance(run[0]["query"], str) else []
            if len(pieces) > 1:
                assert len(pieces) >= len(run), f"{len(run)} results for {pieces}"
                for r, piece in zip(run, pieces):
                    r["query"] = piece
            run = []
        if s is not None:
            run.append(s)
    for s in stmts:
        s["rows"] = returned_rows(s.get("tag"), s.get("query"))


def psql(port, cmds, user="postgres", db="test", stdin=None, password=None, conninfo=""):
    args = ["psql", "-X", "-v", "VERBOSITY=verbose", "-d",
            f"host=127.0.0.1 port={port} user={user} dbname={db} {conninfo}"]
    for c in cmds:
        args += ["-c", c]
    env = dict(os.environ)
    env.pop("PGPASSWORD", None)
    if password:
        env["PGPASSWORD"] = password
    r = subprocess.run(args, input=stdin, capture_output=True, text=True, env=env)
    return r.stdout, r.stderr


def expect_in(text, *needles):
    for n in needles:
        assert n in text, f"{n!r} not in client output:\n{text}"


def scenario_psql_simple(srv, port):
    cmds = [
        "SELECT 1 AS one",
        ";",
        "CREATE TABLE items (id int PRIMARY KEY, name text, price numeric)",
        "INSERT INTO items VALUES (1, 'apple', 1.5), (2, 'pear', 2.25), (3, 'fig', 0.5)",
        "UPDATE items SET price = price * 2 WHERE id <= 2",
        "SELECT id, name FROM items ORDER BY id",
        "DELETE FROM items WHERE id = 3",
        "SELECT pg_sleep(0.05)",
    ]
    out, err = psql(port, cmds)
    expect_in(out, "(1 row)", "CREATE TABLE", "INSERT 0 3", "UPDATE 2", "(3 rows)", "DELETE 1")
    stmts = [
        tagged(cmds[0], "SELECT 1"),
        simple(cmds[1]),  # EmptyQueryResponse
        tagged(cmds[2], "CREATE TABLE"),
        tagged(cmds[3], "INSERT 0 3"),
        tagged(cmds[4], "UPDATE 2"),
        tagged(cmds[5], "SELECT 3"),
        tagged(cmds[6], "DELETE 1"),
        tagged(cmds[7], "SELECT 1"),
    ]
    return [{"info": info("postgres", "test"), "stmts": stmts}]


def scenario_psql_multi(srv, port):
    srv.admin("CREATE TABLE multi (id int PRIMARY KEY, name text)", db="test")
    ok = "BEGIN; INSERT INTO multi VALUES (4, 'kiwi'); UPDATE multi SET name = 'KIWI' WHERE id = 4; COMMIT"
    bad = "BEGIN; INSERT INTO multi VALUES (4, 'dup'); SELECT 1; COMMIT"
    out, err = psql(port, [ok, bad, "ROLLBACK"])
    expect_in(out, "BEGIN", "INSERT 0 1", "UPDATE 1", "COMMIT", "ROLLBACK")
    expect_in(err, "23505")
    stmts = [
        tagged(ok, "BEGIN"),
        tagged(ok, "INSERT 0 1", cont=True),
        tagged(ok, "UPDATE 1", cont=True),
        tagged(ok, "COMMIT", cont=True),
        tagged(bad, "BEGIN"),
        simple(bad, sqlstate="23505", cont=True),
        tagged("ROLLBACK", "ROLLBACK"),
    ]
    return [{"info": info("postgres", "test"), "stmts": stmts}]


def scenario_psql_errors(srv, port):
    srv.admin("CREATE TABLE err_items (id int PRIMARY KEY)", db="test")
    cmds = ["SELEC 1", "INSERT INTO err_items VALUES (1)", "INSERT INTO err_items VALUES (1)", "SELECT 1/0",
            "SELECT 'still fine'"]
    out, err = psql(port, cmds)
    expect_in(err, "42601", "23505", "22012")
    expect_in(out, "INSERT 0 1", "still fine")
    stmts = [
        simple(cmds[0], sqlstate="42601"),
        tagged(cmds[1], "INSERT 0 1"),
        simple(cmds[2], sqlstate="23505"),
        simple(cmds[3], sqlstate="22012"),
        tagged(cmds[4], "SELECT 1"),
    ]
    return [{"info": info("postgres", "test"), "stmts": stmts}]


def scenario_psql_copy(srv, port):
    srv.admin("CREATE TABLE copy_items (id int, name text)", db="test")
    data = "1\tone\n2\ttwo\n3\tthree\n"
    out, err = psql(port, ["\\copy copy_items FROM STDIN", "\\copy copy_items TO STDOUT",
                           "SELECT count(*) FROM copy_items"], stdin=data)
    expect_in(out, "COPY 3", data)
    stmts = [
        tagged(FROM_LOG, "COPY 3"),
        tagged(FROM_LOG, "COPY 3"),
        tagged("SELECT count(*) FROM copy_items", "SELECT 1"),
    ]
    return [{"info": info("postgres", "test"), "stmts": stmts}]


def large_rows():
    """A row count near 100000 whose result leaves a short last server write: the response
    (RowDescription + DataRows) fills 8 KiB send buffers, and what is left, with CommandComplete
    and ReadyForQuery, goes out in the last write. With the last write short, CommandComplete
    lies in the first 256 bytes of its segment, so it survives a 256-byte capture."""
    row_desc = 1 + 4 + 2 + len("generate_series") + 1 + 18
    total = row_desc
    n = 0
    while True:
        n += 1
        total += 11 + len(str(n))
        if n >= 100_000 and 16 <= total % 8192 <= 120:
            return n


def scenario_psql_large(srv, port):
    n = large_rows()
    q = f"SELECT generate_series(1, {n})"
    out, err = psql(port, [q])
    expect_in(out, f"({n} rows)")
    return [{"info": info("postgres", "test"), "stmts": [tagged(q, f"SELECT {n}")]}]


def scenario_psql_md5(srv, port):
    out, err = psql(port, ["SELECT current_user"], user="md5user", password="md5secret")
    expect_in(out, "md5user")
    return [{"info": info("md5user", "test"), "stmts": [tagged("SELECT current_user", "SELECT 1")]}]


def scenario_psql_scram(srv, port):
    out, err = psql(port, ["SELECT current_user"], user="scramuser", password="scramsecret")
    expect_in(out, "scramuser")
    return [{"info": info("scramuser", "test"), "stmts": [tagged("SELECT current_user", "SELECT 1")]}]


def scenario_psql_tls(srv, port):
    srv.set_ssl(True)
    try:
        out, err = psql(port, ["SELECT 1"], conninfo="sslmode=require")
        expect_in(out, "(1 row)")
    finally:
        srv.set_ssl(False)
    # The statement ran, inside TLS: nothing of it can be seen.
    return [{"info": info(None, None, encrypted=True), "stmts": [], "log_skip": True}]


def scenario_psycopg2_client(srv, port):
    # In a child process: psycopg2's cancel() holds the GIL while it waits for the server, and
    # the proxy relaying that wait runs in this process.
    out = subprocess.run([sys.executable, __file__, "--client", "psycopg2_client", str(port)], check=True,
                         capture_output=True, text=True).stdout
    stmts = json.loads(out)
    for s in stmts:
        if s["query"] == "<from log>":
            s["query"] = FROM_LOG
    return [{"info": info("postgres", "test"), "stmts": stmts},
            {"info": info(None, None), "stmts": []}]


def client_psycopg2_client(port):
    import psycopg2
    import psycopg2.errors
    from decimal import Decimal

    conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="test")
    cur = conn.cursor()
    stmts = []

    def run(sql, args=None):
        cur.execute(sql, args)
        q = cur.query.decode()
        stmts.append(tagged(q, cur.statusmessage))
        return q

    stmts.append(tagged("BEGIN", "BEGIN"))
    run("CREATE TABLE py_items (id int PRIMARY KEY, name text, price numeric, tags text[])")
    run("INSERT INTO py_items VALUES (%s, %s, %s, %s)", (1, "o'neil", Decimal("9.50"), ["a", "b"]))
    for i, name in [(2, "second"), (3, "third\nline")]:
        run("INSERT INTO py_items (id, name, price) VALUES (%s, %s, %s)", (i, name, i * 1.25))
    run("UPDATE py_items SET price = price + %s WHERE id > %s", (1, 1))
    run("SELECT id, name FROM py_items WHERE price > %s ORDER BY id", (Decimal("0.5"),))
    assert cur.rowcount == 3
    conn.commit()
    stmts.append(tagged("COMMIT", "COMMIT"))
    # A unique violation, then rollback.
    stmts.append(tagged("BEGIN", "BEGIN"))
    try:
        cur.execute("INSERT INTO py_items (id, name) VALUES (%s, %s)", (1, "dup"))
        raise AssertionError("no error")
    except psycopg2.errors.UniqueViolation as e:
        stmts.append(simple(cur.query.decode(), sqlstate=e.pgcode))
    conn.rollback()
    stmts.append(tagged("ROLLBACK", "ROLLBACK"))
    # COPY FROM STDIN through the simple protocol.
    import io
    stmts.append(tagged("BEGIN", "BEGIN"))
    cur.copy_expert("COPY py_items (id, name) FROM STDIN", io.StringIO("10\tten\n11\televen\n"))
    assert cur.rowcount == 2, cur.rowcount
    stmts.append(tagged("COPY py_items (id, name) FROM STDIN", "COPY 2"))
    # A server-side cursor: DECLARE, FETCH FORWARD n, CLOSE (texts from the server log).
    nc = conn.cursor(name="big")
    nc.execute("SELECT id FROM py_items ORDER BY id")
    stmts.append(tagged(FROM_LOG, nc.statusmessage))
    got = []
    while True:
        rows = nc.fetchmany(2)
        stmts.append(tagged(FROM_LOG, nc.statusmessage))
        if not rows:
            break
        got += [r[0] for r in rows]
    assert got == [1, 2, 3, 10, 11], got
    nc.close()
    stmts.append(tagged(FROM_LOG, "CLOSE CURSOR"))
    conn.commit()
    stmts.append(tagged("COMMIT", "COMMIT"))
    # A query cancelled from another thread: CancelRequest on a second connection.
    conn.autocommit = True

    def cancel():
        time.sleep(0.5)
        conn.cancel()

    t = threading.Thread(target=cancel)
    t.start()
    try:
        cur.execute("SELECT pg_sleep(5)")
        raise AssertionError("not cancelled")
    except psycopg2.errors.QueryCanceled as e:
        stmts.append(simple("SELECT pg_sleep(5)", sqlstate=e.pgcode))
    t.join()
    run("SELECT 'after cancel'")
    conn.close()
    for s in stmts:
        if s["query"] is FROM_LOG:
            s["query"] = "<from log>"
    print(json.dumps(stmts))


def scenario_pg8000_client(srv, port):
    import pg8000.native

    con = pg8000.native.Connection("postgres", host="127.0.0.1", port=port, database="test")
    stmts = []
    # Without parameters pg8000 uses the simple protocol.
    con.run("CREATE TABLE p8_items (id int PRIMARY KEY, name text)")
    stmts.append(tagged("CREATE TABLE p8_items (id int PRIMARY KEY, name text)", "CREATE TABLE"))
    ins = "INSERT INTO p8_items VALUES ($1, $2)"
    for i in range(1, 4):
        con.run("INSERT INTO p8_items VALUES (:id, :name)", id=i, name=f"n{i}")
        assert con.row_count == 1
        stmts.append(extended(ins, "", "INSERT 0 1", 1))
    # A named prepared statement, executed several times.
    ps = con.prepare("SELECT name FROM p8_items WHERE id = :id")
    for i in (1, 2, 99):
        r = ps.run(id=i)
        stmts.append(extended("SELECT name FROM p8_items WHERE id = $1", "pg8000_statement_0",
                              f"SELECT {len(r)}", len(r)))
    ps.close()
    # A Parse that fails (nothing executed after it) and an Execute that fails.
    try:
        con.run("SELEC :x", x=1)
        raise AssertionError("no error")
    except pg8000.native.DatabaseError as e:
        assert e.args[0]["C"] == "42601"
        stmts.append(extended("SELEC $1", "", sqlstate="42601", logged=False))
    try:
        con.run("INSERT INTO p8_items VALUES (:id, :name)", id=1, name="dup")
        raise AssertionError("no error")
    except pg8000.native.DatabaseError as e:
        assert e.args[0]["C"] == "23505"
        stmts.append(extended(ins, "", sqlstate="23505"))
    r = con.run("SELECT count(*) FROM p8_items WHERE id > :x", x=0)
    assert r == [[3]], r
    stmts.append(extended("SELECT count(*) FROM p8_items WHERE id > $1", "", "SELECT 1", 1))
    con.close()
    return [{"info": info("postgres", "test"), "stmts": stmts}]


def scenario_pg8000_scram(srv, port):
    # No "database" parameter: the server uses the user name.
    srv.admin("CREATE DATABASE scramuser OWNER scramuser")
    import pg8000.native

    con = pg8000.native.Connection("scramuser", password="scramsecret", host="127.0.0.1", port=port)
    r = con.run("SELECT current_database()")
    assert r == [["scramuser"]], r
    con.close()
    # The database is the user's name (what the server used, and what the parser reports).
    return [{"info": info("scramuser", "scramuser"), "stmts": [tagged("SELECT current_database()", "SELECT 1")]}]


def scenario_asyncpg_client(srv, port):
    import asyncpg

    stmts = []

    async def main():
        c = await asyncpg.connect(host="127.0.0.1", port=port, user="postgres", database="test")
        # Named prepared statements (asyncpg's cache); names come from the server log.
        assert await c.fetchval("SELECT $1::int + 1", 41) == 42
        assert await c.fetchval("SELECT $1::int + 1", 1) == 2
        # fetchval asks for one row: the portal is suspended, no CommandComplete.
        stmts.append(extended("SELECT $1::int + 1", FROM_LOG))
        stmts.append(extended("SELECT $1::int + 1", FROM_LOG))
        rows = await c.fetch("SELECT g FROM generate_series(1, $1) g", 5)
        assert len(rows) == 5
        stmts.append(extended("SELECT g FROM generate_series(1, $1) g", FROM_LOG, "SELECT 5", 5))
        # No arguments: the simple protocol, here with two statements.
        assert await c.execute("CREATE TABLE ap_items (id int PRIMARY KEY, name text); SELECT 1") == "SELECT 1"
        q = "CREATE TABLE ap_items (id int PRIMARY KEY, name text); SELECT 1"
        stmts.append(tagged(q, "CREATE TABLE"))
        stmts.append(tagged(q, "SELECT 1", cont=True))
        ins = "INSERT INTO ap_items VALUES ($1, $2)"
        # Pipelined: Bind/Execute pairs, one Sync.
        await c.executemany(ins, [(1, "a"), (2, "b"), (3, "c")])
        for _ in range(3):
            stmts.append(extended(ins, FROM_LOG, "INSERT 0 1", 1))
        # An error in the middle of the pipeline: the two Executes after it are skipped by the
        # server and give nothing; what follows must not shift.
        try:
            await c.executemany(ins, [(4, "d"), (5, "e"), (1, "dup"), (6, "f"), (7, "g")])
            raise AssertionError("no error")
        except asyncpg.UniqueViolationError as e:
            assert e.sqlstate == "23505"
        stmts.append(extended(ins, FROM_LOG, "INSERT 0 1", 1))
        stmts.append(extended(ins, FROM_LOG, "INSERT 0 1", 1))
        stmts.append(extended(ins, FROM_LOG, sqlstate="23505"))
        # executemany is atomic: the batch was rolled back.
        assert await c.fetchval("SELECT count(*) FROM ap_items") == 3
        stmts.append(extended("SELECT count(*) FROM ap_items", FROM_LOG))
        # An explicitly prepared statement reused.
        st = await c.prepare("SELECT name FROM ap_items WHERE id = $1")
        for i in (1, 2, 3):
            assert await st.fetch(i) == [(["a", "b", "c"][i - 1],)]
            assert st.get_statusmsg() == "SELECT 1", st.get_statusmsg()
            stmts.append(extended("SELECT name FROM ap_items WHERE id = $1", FROM_LOG, "SELECT 1", 1))
        # COPY TO through asyncpg (binary copy out).
        import io
        buf = io.BytesIO()
        status = await c.copy_from_table("ap_items", output=buf)
        assert status == "COPY 3", status
        stmts.append(tagged(FROM_LOG, "COPY 3"))
        await c.close()

    asyncio.run(main())
    return [{"info": info("postgres", "test"), "stmts": stmts}]


SCENARIOS = {name[9:]: fn for name, fn in list(globals().items()) if name.startswith("scenario_")}
RECV_SIZE = {"psql_large": 8192}


# ---------------------------------------------------------------- server log cross-check


def log_statements(entries, port):
    """The statements the server logged for the connection from `port`: ("simple", None, text),
    ("extended", name, text) per execution, and ("error", sqlstate, query) per ERROR."""
    out = []
    for e in entries:
        if e.get("connection_from") != f"127.0.0.1:{port}":
            continue
        msg = e["message"]
        if e["error_severity"] == "LOG" and msg.startswith("statement: "):
            out.append(("simple", None, msg[len("statement: "):]))
        elif e["error_severity"] == "LOG" and msg.startswith("execute "):
            head, text = msg[len("execute "):].split(": ", 1)
            name = head.split("/")[0]
            out.append(("extended", "" if name == "<unnamed>" else name, text))
        elif e["error_severity"] in ("ERROR", "FATAL"):
            out.append(("error", e["sql_state_code"], e["query"]))
    return out


def resolve(name, stmts, log):
    """Fills FROM_LOG fields and checks the expected statements against the server's log: the
    same executions in the same order, with the same texts, names and errors."""
    k = 0
    prev = None

    def take_error(s):
        nonlocal k
        assert k < len(log) and log[k][0] == "error", f"{name}: no logged error for {s}: {log[k:k + 1]}"
        assert log[k][1] == s["sqlstate"], f"{name}: logged error {log[k]} for {s}"
        k += 1
        return log[k - 1][2]

    for s in stmts:
        if s.get("cont"):
            s["query"] = prev
            if s.get("sqlstate"):
                take_error(s)
            continue
        if k < len(log) and log[k][0] == "error":
            # Failed before it was logged (syntax error, failed Parse): the ERROR entry has it.
            assert s.get("sqlstate"), f"{name}: unexpected error {log[k]} before {s}"
            text = take_error(s)
        else:
            assert k < len(log), f"{name}: nothing logged for {s}"
            kind, pname, text = log[k]
            k += 1
            assert kind == s["kind"], f"{name}: logged {(kind, pname, text)} for {s}"
            if kind == "extended":
                if s["prepared"] is FROM_LOG:
                    s["prepared"] = pname
                assert s["prepared"] == pname, f"{name}: prepared {s['prepared']!r} != logged {pname!r}"
            if s.get("sqlstate"):
                take_error(s)
        if s["query"] is FROM_LOG:
            s["query"] = text
        assert s["query"] == text, f"{name}: query {s['query']!r} != logged {text!r}"
        prev = s["query"]
    assert k == len(log), f"{name}: logged but not expected: {log[k:]}"


def run_scenario(srv, name):
    recv_size = RECV_SIZE.get(name, 65536)
    rec = Recorder(srv.port, recv_size)
    want = SCENARIOS[name](srv, rec.port)
    conns = rec.finish()
    assert len(conns) == len(want), f"{name}: {len(conns)} connections, expected {len(want)}"
    entries = srv.log_entries([c["upstream_port"] for c, w in zip(conns, want) if w["stmts"]])
    for k, (conn, w) in enumerate(zip(conns, want)):
        cname = name if k == 0 else f"{name}_{k}"
        if not w.get("log_skip"):
            resolve(cname, w["stmts"], log_statements(entries, conn["upstream_port"]))
        header = [
            f"client: {name}; server: PostgreSQL 15 (csvlog cross-checked); proxy recv size {recv_size}",
            "records: '> ts len' (client->server) or '< ts len', then len raw bytes, then a newline",
        ]
        write_recording(cname, conn["segs"], header)
        finalize(w["stmts"])
        write_expected(cname, w["info"], w["stmts"])
        print(f"{cname}: {len(conn['segs'])} segments, {len(w['stmts'])} statements")
    return conns


def check_large(conns):
    """The large result's CommandComplete must be inside the first 256 bytes of its segment
    (the test replays with 256-byte capture); retried otherwise (see large_rows)."""
    segs = [s for s in conns[0]["segs"] if s[0] == "<"]
    stream = b"".join(s[2] for s in segs)
    at = stream.rfind(b"C\x00\x00\x00")
    off = 0
    for _, _, data in segs:
        if off <= at < off + len(data):
            return at - off + 20 <= 256
        off += len(data)
    return False


def main():
    if sys.argv[1:2] == ["--dump"]:
        for p in sys.argv[2:]:
            dump(p)
        return
    if sys.argv[1:2] == ["--client"]:
        globals()["client_" + sys.argv[2]](int(sys.argv[3]))
        return
    names = sys.argv[1:] or list(SCENARIOS)
    srv = Server()
    try:
        for name in names:
            for attempt in range(10):
                conns = run_scenario(srv, name)
                if name != "psql_large" or check_large(conns):
                    break
                print(f"{name}: CommandComplete not in the first 256 bytes of its segment; again")
            else:
                raise SystemExit(f"{name}: no usable recording")
    finally:
        srv.stop()


if __name__ == "__main__":
    main()
