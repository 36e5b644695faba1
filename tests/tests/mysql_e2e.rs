//! End to end, as root: the real agent (`--protocols mysql`) traces a real MariaDB server
//! (started per test) and real clients - the `mariadb` CLI (text protocol) and
//! mysql-connector-python in pure-Python mode (server-side prepared statements:
//! COM_STMT_PREPARE / COM_STMT_EXECUTE) - and the spans are checked as they arrive over OTLP.

use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use socktrace_tests::{
    harness::{Agent, assert_not_exported, exact, python, require_root},
    mysql::MysqlServer,
    otlp_receiver::{OtlpReceiver, Protocol, ReceivedSpan},
};

fn start_agent(receiver: &OtlpReceiver, server: &MysqlServer) -> Agent {
    let endpoint = receiver.endpoint();
    let port = server.port.to_string();
    Agent::start(&[
        "--otlp-endpoint",
        endpoint.as_str(),
        "--otlp-protocol",
        "grpc",
        "--protocols",
        "mysql",
        "--port",
        port.as_str(),
    ])
}

fn text(s: &ReceivedSpan, k: &str) -> String {
    s.attr_str(k)
        .unwrap_or_else(|| panic!("{k} missing on {s}"))
}

fn common(span: &ReceivedSpan, server: &MysqlServer) {
    assert_eq!(text(span, "db.system.name"), "mariadb", "{span}");
    assert_eq!(text(span, "db.namespace"), "shop", "{span}");
    assert_eq!(text(span, "server.address"), "127.0.0.1");
    assert_eq!(span.attr_int("server.port"), Some(i64::from(server.port)));
    assert!(span.attr_bool("socktrace.partial").is_none(), "{span}");
}

#[test]
fn cli_statements_errors_and_no_literal_leaves_the_host() {
    require_root();
    let receiver = OtlpReceiver::start_blocking(Protocol::Grpc);
    let server = MysqlServer::start("shop");
    let _agent = start_agent(&receiver, &server);
    let ok = |sql: &str| {
        let o = server.cli("shop", sql);
        assert!(
            o.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    ok("CREATE TABLE users (id INT PRIMARY KEY, name TEXT, score DECIMAL(10,2))");
    ok("INSERT INTO users VALUES (1, 'alice-secret-1', 4242.5), (2, \"bob-secret-2\", 7)");
    ok("SELECT name FROM users WHERE score > 1000 ORDER BY id");
    let o = server.cli("shop", "SELECT * FROM nope");
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("1146"));
    let o = server.cli("shop", "INSERT INTO users VALUES (1, 'carol-secret-3', 9)");
    assert!(!o.status.success());
    // One span per statement on each side (the CLI in batch mode sends nothing else; its
    // COM_QUIT has no answer and gives no span).
    let (s, c) = exact(&receiver, 5, 5);

    type Expect = (
        &'static str,
        &'static str,
        &'static str,
        Option<(&'static str, &'static str)>,
    );
    let expect: [Expect; 5] = [
        (
            "CREATE users",
            "CREATE",
            "CREATE TABLE users (id INT PRIMARY KEY, name TEXT, score DECIMAL(?,?))",
            None,
        ),
        (
            "INSERT users",
            "INSERT",
            "INSERT INTO users VALUES (?, ?, ?), (?, ?, ?)",
            None,
        ),
        (
            "SELECT users",
            "SELECT",
            "SELECT name FROM users WHERE score > ? ORDER BY id",
            None,
        ),
        (
            "SELECT nope",
            "SELECT",
            "SELECT * FROM nope",
            Some(("1146", "Table 'shop.nope' doesn't exist")),
        ),
        (
            "INSERT users",
            "INSERT",
            "INSERT INTO users VALUES (?, ?, ?)",
            // The duplicate-key message quotes the value: only the code leaves the host.
            Some(("1062", "error 1062 (SQLSTATE 23000)")),
        ),
    ];
    for (spans, kind) in [(&c, "client"), (&s, "server")] {
        for (span, (name, op, query, error)) in spans.iter().zip(expect) {
            assert_eq!(span.name(), name, "{kind}: {span}");
            common(span, &server);
            assert_eq!(text(span, "db.operation.name"), op);
            assert_eq!(text(span, "db.query.text"), query, "{kind}: {span}");
            assert_eq!(text(span, "socktrace.mysql.command"), "COM_QUERY");
            match error {
                Some((code, message)) => {
                    assert_eq!(span.status_code(), StatusCode::Error, "{span}");
                    assert_eq!(text(span, "db.response.status_code"), code);
                    assert_eq!(text(span, "error.type"), code);
                    assert_eq!(span.status_message(), message);
                }
                None => {
                    assert_eq!(span.status_code(), StatusCode::Unset, "{span}");
                    assert_eq!(span.attr_str("error.type"), None);
                }
            }
        }
        assert_eq!(
            spans[0].attr_str("db.collection.name").as_deref(),
            Some("users")
        );
        // Exact rows returned; rows written are not rows returned.
        assert_eq!(spans[2].attr_int("db.response.returned_rows"), Some(1));
        assert_eq!(spans[1].attr_int("db.response.returned_rows"), None);
    }
    assert!(
        c.iter()
            .all(|s| s.resource_str("process.executable.name") == Some("mariadb"))
    );
    assert!(
        s.iter()
            .all(|s| s.resource_str("process.executable.name") == Some("mariadbd"))
    );
    assert_not_exported(
        &receiver.spans(),
        &["alice-secret-1", "bob-secret-2", "carol-secret-3", "4242.5"],
    );
}

/// What mysql-connector-python sends for this script, as recorded with the pinned version
/// (agent/src/protocol/mysql/tests/data/connector_prepared.rec): on connect `SET NAMES` and
/// `SET @@session.autocommit = OFF`, a COM_PING when the cursor is made; then for each new
/// statement COM_STMT_PREPARE (and COM_STMT_CLOSE of the previous one, no answer), and for each
/// execution COM_STMT_RESET (no span when it succeeds) and COM_STMT_EXECUTE.
const PREPARED_SCRIPT: &str = "\
cur = conn.cursor(prepared=True)
for i in (1, 2):
    cur.execute('INSERT INTO items VALUES (?, ?)', (i, 'label-secret-%d' % i))
conn.commit()
cur.execute('SELECT label FROM items WHERE id >= ?', (1,))
assert len(cur.fetchall()) == 2
cur.close()
";

#[test]
fn prepared_statements_carry_their_text() {
    require_root();
    let receiver = OtlpReceiver::start_blocking(Protocol::Grpc);
    let server = MysqlServer::start("shop");
    let o = server.cli(
        "shop",
        "CREATE TABLE items (id INT PRIMARY KEY, label TEXT)",
    );
    assert!(o.status.success());
    let _agent = start_agent(&receiver, &server);
    let o = server.python(&python(), "shop", PREPARED_SCRIPT);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (s, c) = exact(&receiver, 9, 9);
    let insert = "INSERT INTO items VALUES (?, ?)";
    let select = "SELECT label FROM items WHERE id >= ?";
    let expect: [(&str, &str, Option<&str>, Option<i64>); 9] = [
        ("SET", "COM_QUERY", None, None),
        ("SET", "COM_QUERY", None, None),
        ("COM_PING", "COM_PING", None, None),
        ("INSERT items", "COM_STMT_PREPARE", Some(insert), None),
        ("INSERT items", "COM_STMT_EXECUTE", Some(insert), None),
        ("INSERT items", "COM_STMT_EXECUTE", Some(insert), None),
        ("COMMIT", "COM_QUERY", Some("COMMIT"), None),
        ("SELECT items", "COM_STMT_PREPARE", Some(select), None),
        ("SELECT items", "COM_STMT_EXECUTE", Some(select), Some(2)),
    ];
    for (spans, kind) in [(&c, "client"), (&s, "server")] {
        for (span, (name, command, query, rows)) in spans.iter().zip(expect) {
            assert_eq!(span.name(), name, "{kind}: {span}");
            common(span, &server);
            assert_eq!(
                text(span, "socktrace.mysql.command"),
                command,
                "{kind}: {span}"
            );
            if let Some(q) = query {
                assert_eq!(text(span, "db.query.text"), q, "{kind}: {span}");
            }
            assert_eq!(span.attr_int("db.response.returned_rows"), rows, "{span}");
            assert_eq!(span.status_code(), StatusCode::Unset, "{span}");
        }
        // The executions carry the id the PREPARE answer gave.
        let ids: Vec<Option<i64>> = spans[3..]
            .iter()
            .map(|x| x.attr_int("socktrace.mysql.statement_id"))
            .collect();
        assert!(ids[0].is_some());
        assert_eq!(ids[1], ids[0]);
        assert_eq!(ids[2], ids[0]);
        assert_eq!(ids[3], None);
        assert!(ids[4].is_some() && ids[5] == ids[4] && ids[4] != ids[0]);
    }
    assert_not_exported(&receiver.spans(), &["label-secret-1", "label-secret-2"]);
}
