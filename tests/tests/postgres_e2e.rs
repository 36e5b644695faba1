//! End to end, as root: the real agent traces a real PostgreSQL server (started per test) and
//! real clients - `psql` (simple protocol) and tokio-postgres in this process (extended protocol,
//! prepared statements, pipelining) - and the spans are checked as they arrive over OTLP.

use std::time::Duration;

use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode};
use socktrace_tests::{
    harness::{Agent, assert_not_exported, exact, require_root},
    otlp_receiver::{OtlpReceiver, Protocol, ReceivedSpan},
    pg::PgServer,
};

const WAIT: Duration = Duration::from_secs(30);

fn setup(db: &str, extra: &[&str]) -> (OtlpReceiver, PgServer, Agent) {
    require_root();
    let receiver = OtlpReceiver::start_blocking(Protocol::Grpc);
    let pg = PgServer::start(db);
    let endpoint = receiver.endpoint();
    let port = pg.port.to_string();
    let mut args = vec![
        "--otlp-endpoint",
        endpoint.as_str(),
        "--otlp-protocol",
        "grpc",
        "--protocols",
        "postgres",
        "--port",
        port.as_str(),
    ];
    args.extend_from_slice(extra);
    let agent = Agent::start(&args);
    (receiver, pg, agent)
}

fn text(s: &ReceivedSpan, k: &str) -> String {
    s.attr_str(k)
        .unwrap_or_else(|| panic!("{k} missing on {s}"))
}

#[test]
fn psql_statements_errors_and_no_literal_leaves_the_host() {
    let (receiver, pg, _agent) = setup("shop", &[]);
    let ok = |sql: &str| {
        let o = pg.psql("shop", &["-c", sql]);
        assert!(
            o.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    ok("CREATE TABLE users (id int PRIMARY KEY, name text, score numeric)");
    ok("INSERT INTO users VALUES (1, 'alice-secret-1', 4242.5)");
    ok("SELECT name FROM users WHERE id = 1 AND score > 1000");
    assert!(!pg.psql("shop", &["-c", "SELEC 98765"]).status.success());
    assert!(
        !pg.psql(
            "shop",
            &["-c", "INSERT INTO users VALUES (1, 'bob-secret-2', 9)"]
        )
        .status
        .success()
    );
    let (s, c) = exact(&receiver, 5, 5);

    let expect: [(&str, Option<&str>, &str, Option<&str>); 5] = [
        (
            "CREATE users",
            Some("CREATE"),
            "CREATE TABLE users (id int PRIMARY KEY, name text, score numeric)",
            None,
        ),
        (
            "INSERT users",
            Some("INSERT"),
            "INSERT INTO users VALUES (?, ?, ?)",
            None,
        ),
        (
            "SELECT users",
            Some("SELECT"),
            "SELECT name FROM users WHERE id = ? AND score > ?",
            None,
        ),
        ("SELEC", Some("SELEC"), "SELEC ?", Some("42601")),
        (
            "INSERT users",
            Some("INSERT"),
            "INSERT INTO users VALUES (?, ?, ?)",
            Some("23505"),
        ),
    ];
    for (spans, kind) in [(&c, "client"), (&s, "server")] {
        for (span, (name, op, query, sqlstate)) in spans.iter().zip(expect) {
            assert_eq!(span.name(), name, "{kind}: {span}");
            assert_eq!(text(span, "db.system.name"), "postgresql");
            assert_eq!(text(span, "db.namespace"), "shop");
            assert_eq!(span.attr_str("db.operation.name").as_deref(), op);
            assert_eq!(text(span, "db.query.text"), query);
            assert_eq!(text(span, "server.address"), "127.0.0.1");
            assert_eq!(span.attr_int("server.port"), Some(i64::from(pg.port)));
            match sqlstate {
                Some(code) => {
                    assert_eq!(span.status_code(), StatusCode::Error, "{span}");
                    assert_eq!(text(span, "db.response.status_code"), code);
                    assert_eq!(text(span, "error.type"), code);
                }
                None => {
                    assert_eq!(span.status_code(), StatusCode::Unset, "{span}");
                    assert_eq!(span.attr_str("error.type"), None);
                }
            }
            assert!(span.attr_bool("socktrace.partial").is_none(), "{span}");
        }
    }
    assert_eq!(c[2].attr_int("db.response.returned_rows"), Some(1));
    // Rows written are not rows returned.
    assert_eq!(c[1].attr_int("db.response.returned_rows"), None, "{}", c[1]);
    assert!(
        c.iter()
            .all(|s| s.resource_str("service.name") == Some("psql"))
    );
    assert!(
        s.iter()
            .all(|s| s.resource_str("process.executable.name") == Some("postgres"))
    );
    assert_not_exported(
        &receiver.spans(),
        &["alice-secret-1", "bob-secret-2", "4242.5", "98765"],
    );
}

#[test]
fn large_result_transaction_and_copy() {
    // The server sends results in 8 KiB writes: with 8 KiB of capture every message header on
    // that side is seen. The client reads far more at once (documented limit below).
    let (receiver, pg, _agent) = setup("shop", &["--capture-bytes", "8192"]);
    let o = pg.psql(
        "shop",
        &[
            "-c",
            "SELECT g, md5(g::text) FROM generate_series(1, 200000) g",
        ],
    );
    assert!(o.status.success());
    assert!(
        o.stdout.len() > 5_000_000,
        "a large result crosses many reads"
    );
    let o = pg.psql(
        "shop",
        &[
            "-c",
            "CREATE TABLE t (v int)",
            "-c",
            "BEGIN",
            "-c",
            "INSERT INTO t VALUES (31337)",
            "-c",
            "COMMIT",
            "-c",
            "\\copy t from stdin",
            "-c",
            "BEGIN; INSERT INTO t VALUES (7) RETURNING v; COMMIT",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (s, c) = exact(&receiver, 9, 9);
    // Server side: one span for the whole result, exact row count, clean.
    assert!(s[0].name().starts_with("SELECT"), "{}", s[0]);
    assert_eq!(
        s[0].attr_int("db.response.returned_rows"),
        Some(200_000),
        "{}",
        s[0]
    );
    assert_eq!(s[0].attr_bool("socktrace.partial"), None, "{}", s[0]);
    assert!(s[0].duration() > Duration::from_millis(1), "{}", s[0]);
    // Client side: still exactly one span for the statement. psql reads 64 KiB and more at a
    // time, so most row messages fall past the copied prefix (whether framing is lost on the way,
    // and the span marked partial, depends on where the reads split), and the final tag is read
    // from the copied tail of the last read: the exact row count.
    assert!(c[0].name().starts_with("SELECT"), "{}", c[0]);
    assert_eq!(
        c[0].attr_int("db.response.returned_rows"),
        Some(200_000),
        "{}",
        c[0]
    );
    for spans in [&s, &c] {
        let names: Vec<&str> = spans[1..].iter().map(ReceivedSpan::name).collect();
        assert_eq!(
            names,
            [
                "CREATE t", "BEGIN", "INSERT t", "COMMIT", "COPY t", "BEGIN", "INSERT t", "COMMIT"
            ]
        );
        // One query of three statements: each span carries its own statement, and only the
        // INSERT ... RETURNING returned a row.
        let multi: Vec<(String, Option<i64>)> = spans[6..]
            .iter()
            .map(|x| {
                (
                    text(x, "db.query.text"),
                    x.attr_int("db.response.returned_rows"),
                )
            })
            .collect();
        assert_eq!(
            multi,
            [
                ("BEGIN".to_owned(), None),
                ("INSERT INTO t VALUES (?) RETURNING v".to_owned(), Some(1)),
                ("COMMIT".to_owned(), None),
            ]
        );
        assert_eq!(spans[3].attr_int("db.response.returned_rows"), None);
        assert!(
            spans[1..]
                .iter()
                .all(|x| x.attr_bool("socktrace.partial").is_none())
        );
    }
    // psql's \copy sends "COPY  t FROM STDIN " (its own spacing), kept as sent.
    let copy = text(&c[5], "db.query.text");
    assert_eq!(
        copy.split_whitespace().collect::<Vec<_>>().join(" "),
        "COPY t FROM STDIN"
    );
    assert_not_exported(&receiver.spans(), &["31337"]);
}

#[test]
fn extended_protocol_prepared_statements_and_pipelining() {
    let pg_db = "shop";
    let (receiver, pg, agent) = {
        require_root();
        let receiver = OtlpReceiver::start_blocking(Protocol::Grpc);
        let pg = PgServer::start(pg_db);
        let o = pg.psql(
            pg_db,
            &["-c", "CREATE TABLE items (id int PRIMARY KEY, label text)"],
        );
        assert!(o.status.success());
        (receiver, pg, None::<Agent>)
    };
    let _ = agent;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let endpoint = receiver.endpoint();
    let port = pg.port.to_string();
    rt.block_on(async {
        let (client, connection) = tokio_postgres::connect(&pg.url(pg_db), tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        // Prepared before the agent starts: its text is unknown to the agent.
        let early = client
            .prepare("SELECT label FROM items WHERE id = $1")
            .await
            .expect("prepare");

        let _agent = Agent::start(&[
            "--otlp-endpoint",
            &endpoint,
            "--otlp-protocol",
            "grpc",
            "--protocols",
            "postgres",
            "--port",
            &port,
        ]);
        let insert = client
            .prepare("INSERT INTO items VALUES ($1, $2)")
            .await
            .expect("prepare");
        for i in 0..10i32 {
            client
                .execute(&insert, &[&i, &format!("label-secret-{i}")])
                .await
                .expect("insert");
        }
        // Pipelined: all three are sent before any response is read; the middle one fails.
        let dup = client.execute(&insert, &[&3i32, &"dup-secret"]);
        let a = client.query(&early, &[&1i32]);
        let b = client.query("SELECT count(*) FROM items", &[]);
        let (a, dup, b) = tokio::join!(a, dup, b);
        assert_eq!(a.expect("select").len(), 1);
        assert_eq!(
            dup.expect_err("duplicate")
                .code()
                .map(|c| c.code().to_owned()),
            Some("23505".to_owned())
        );
        assert_eq!(b.expect("count").len(), 1);

        let (_, c) = exact(&receiver, 13, 13);
        for span in &c[..10] {
            assert_eq!(span.name(), "INSERT items", "{span}");
            assert_eq!(
                text(span, "db.query.text"),
                "INSERT INTO items VALUES ($1, $2)"
            );
            assert_eq!(span.status_code(), StatusCode::Unset);
            assert_eq!(span.attr_int("db.response.returned_rows"), None);
        }
        // tokio-postgres sends the pipelined requests in the order they were first polled.
        let mut rest: Vec<&ReceivedSpan> = c[10..].iter().collect();
        rest.sort_by_key(|s| s.name().to_owned());
        let names: Vec<&str> = rest.iter().map(|s| s.name()).collect();
        assert_eq!(
            names,
            ["INSERT items", "SELECT items", "postgresql"],
            "{c:#?}"
        );
        assert_eq!(rest[0].status_code(), StatusCode::Error);
        assert_eq!(text(rest[0], "db.response.status_code"), "23505");
        assert_eq!(text(rest[1], "db.query.text"), "SELECT count(*) FROM items");
        assert_eq!(rest[1].status_code(), StatusCode::Unset);
        // The statement prepared before the agent: a span, named from what is known.
        assert_eq!(rest[2].attr_str("db.query.text"), None, "{}", rest[2]);
        assert!(
            rest[2]
                .attr_str("socktrace.postgresql.prepared_statement")
                .is_some()
        );
        assert_eq!(rest[2].status_code(), StatusCode::Unset);
        // The connection predates the agent: its StartupMessage, which names the database, was
        // never seen, so no database is claimed.
        assert!(c.iter().all(|s| s.attr_str("db.namespace").is_none()));
        assert_not_exported(&receiver.spans(), &["label-secret", "dup-secret"]);
    });
}

#[test]
fn pgbench_mixed_load_with_prepared_statements() {
    require_root();
    let receiver = OtlpReceiver::start_blocking(Protocol::Grpc);
    let pg = PgServer::start("bench");
    let init = pg.pgbench("bench", &["-i", "-q", "-s", "1"]);
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let endpoint = receiver.endpoint();
    let port = pg.port.to_string();
    let _agent = Agent::start(&[
        "--otlp-endpoint",
        &endpoint,
        "--otlp-protocol",
        "grpc",
        "--protocols",
        "postgres",
        "--port",
        &port,
    ]);
    // 3 clients x 20 TPC-B-like transactions, extended protocol with named prepared statements
    // (each prepared once per connection and executed 20 times).
    let run = pg.pgbench("bench", &["-n", "-c", "3", "-t", "20", "-M", "prepared"]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );

    // Each transaction: BEGIN, UPDATE accounts, SELECT accounts, UPDATE tellers,
    // UPDATE branches, INSERT history, END.
    let expected = [
        ("BEGIN", 60),
        ("UPDATE pgbench_accounts", 60),
        ("SELECT pgbench_accounts", 60),
        ("UPDATE pgbench_tellers", 60),
        ("UPDATE pgbench_branches", 60),
        ("INSERT pgbench_history", 60),
        ("END", 60),
    ];
    let count = |spans: &[ReceivedSpan], kind: SpanKind, name: &str| {
        spans
            .iter()
            .filter(|s| s.kind() == kind && s.name() == name)
            .count()
    };
    let spans = receiver
        .wait_for_blocking(
            |s| {
                expected.iter().all(|(n, c)| {
                    count(s, SpanKind::Client, n) >= *c && count(s, SpanKind::Server, n) >= *c
                })
            },
            WAIT,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    std::thread::sleep(Duration::from_millis(1500));
    let spans = [spans, receiver.spans()].concat();
    let spans: Vec<ReceivedSpan> = {
        let mut seen = std::collections::HashSet::new();
        spans
            .into_iter()
            .filter(|s| seen.insert(s.span_id()))
            .collect()
    };
    for (name, n) in expected {
        assert_eq!(count(&spans, SpanKind::Client, name), n, "client {name}");
        assert_eq!(count(&spans, SpanKind::Server, name), n, "server {name}");
    }
    for span in spans
        .iter()
        .filter(|s| s.name() == "UPDATE pgbench_accounts")
    {
        assert_eq!(
            text(span, "db.query.text"),
            "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2;"
        );
        assert_eq!(text(span, "db.namespace"), "bench");
        assert_eq!(span.status_code(), StatusCode::Unset);
        assert_eq!(span.attr_int("db.response.returned_rows"), None);
    }
    assert!(
        spans
            .iter()
            .all(|s| s.attr_bool("socktrace.partial").is_none())
    );
}
