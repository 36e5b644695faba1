#!/usr/bin/env python3
"""Records MySQL-protocol test vectors for agent/src/protocol/mysql/tests (see README.md here).

Uses the shared logging proxy of agent/tests/data/record.py in front of an already running
MariaDB server: python3 record.py PORT [scenario ...] (user app / password apppw, database
shop; PyMySQL and mysql-connector-python importable; the `mariadb` CLI on PATH).
"""

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
from record import Recorder, write_recording  # noqa: E402


def cli(port, sql):
    subprocess.run(
        ["mariadb", "-h127.0.0.1", f"-P{port}", "-uapp", "-papppw", "shop", "-e", sql],
        check=False,
    )


def cli_queries(port):
    cli(
        port,
        "DROP TABLE IF EXISTS users; "
        "CREATE TABLE users (id INT PRIMARY KEY, name TEXT, score DECIMAL(10,2)); "
        "INSERT INTO users VALUES (1, 'alice-secret-1', 4242.5), (2, \"bob\", 7); "
        "SELECT name FROM users WHERE id >= 1 ORDER BY id; "
        "USE mysql; "
        "SELECT * FROM nope",
    )


def pymysql_client(port):
    import pymysql

    c = pymysql.connect(host="127.0.0.1", port=port, user="app", password="apppw", database="shop",
        client_flag=pymysql.constants.CLIENT.MULTI_STATEMENTS,
    )
    cur = c.cursor()
    cur.execute("DROP TABLE IF EXISTS t")
    cur.execute("CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(50))")
    cur.execute("INSERT INTO t VALUES (%s, %s)", (1, "it's \\ secret"))
    cur.execute("INSERT INTO t VALUES (2, 'b'), (3, 'c')")
    c.commit()
    cur.execute("SELECT id, v FROM t ORDER BY id")
    cur.fetchall()
    try:
        cur.execute("INSERT INTO t VALUES (1, 'dup')")
    except pymysql.err.IntegrityError:
        pass
    c.ping()
    c.select_db("mysql")
    cur.execute("SELECT 1; SELECT 2, 3")
    while cur.nextset():
        pass
    cur.execute("SELECT REPEAT('x', 70000)")
    cur.fetchall()
    c.close()


def connector_prepared(port):
    import mysql.connector

    c = mysql.connector.connect(
        host="127.0.0.1", port=port, user="app", password="apppw", database="shop",
        use_pure=True, ssl_disabled=True,
    )
    cur = c.cursor(prepared=True)
    cur.execute("DROP TABLE IF EXISTS p")
    cur.execute("CREATE TABLE p (id INT PRIMARY KEY, v VARCHAR(50))")
    for i in range(3):
        cur.execute("INSERT INTO p VALUES (?, ?)", (i, f"secret-{i}"))
    c.commit()
    cur.execute("SELECT id, v FROM p WHERE id >= ?", (1,))
    cur.fetchall()
    try:
        cur.execute("SELECT * FROM missing WHERE id = ?", (1,))
    except mysql.connector.Error:
        pass
    cur.close()
    c.close()


SCENARIOS = {
    "cli_queries": cli_queries,
    "pymysql_client": pymysql_client,
    "connector_prepared": connector_prepared,
}


def main():
    port = int(sys.argv[1])
    names = sys.argv[2:] or list(SCENARIOS)
    for name in names:
        rec = Recorder(port)
        SCENARIOS[name](rec.port)
        conns = rec.finish()
        for i, segs in enumerate(conns):
            suffix = "" if i == 0 else f"_{i}"
            write_recording(os.path.join(HERE, f"{name}{suffix}.rec"), segs, [f"scenario {name}"])


if __name__ == "__main__":
    main()
