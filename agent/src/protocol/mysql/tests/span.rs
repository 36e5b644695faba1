//! Span attributes.

use std::{net::SocketAddr, sync::Arc};

use super::super::{Call, MysqlError, span::build_span};
use crate::trace::{
    db::{DbSpanConfig, QueryText},
    span::{ConnMeta, Resource, SpanKind, Status, Value},
};

fn sanitized() -> DbSpanConfig {
    DbSpanConfig::default()
}

fn meta(kind: SpanKind) -> ConnMeta {
    let client: SocketAddr = "127.0.0.1:50000".parse().unwrap();
    let server: SocketAddr = "127.0.0.1:3306".parse().unwrap();
    let (local, peer) = match kind {
        SpanKind::Client => (client, server),
        SpanKind::Server => (server, client),
    };
    ConnMeta {
        tls: false,
        kind,
        local,
        peer,
        resource: Arc::new(Resource {
            key: String::new(),
            attributes: Vec::new(),
        }),
    }
}

fn call(query: Option<&str>) -> Call {
    Call {
        command: "COM_QUERY",
        query: query.map(str::to_owned),
        statement_id: None,
        rows: None,
        affected: None,
        error: None,
        database: Some("shop".into()),
        server_version: Some("5.5.5-10.11.19-MariaDB-0+deb12u1".into()),
        start_ns: 1_000,
        end_ns: 3_000,
        partial: false,
    }
}

fn attr(span: &crate::trace::span::Span, key: &str) -> Option<Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .map(|kv| kv.value.clone())
}

fn s(v: &str) -> Option<Value> {
    Some(Value::from(v))
}

#[test]
fn select_span() {
    let mut c = call(Some(
        "SELECT name FROM `users` WHERE id = 42 AND n = 'secret'",
    ));
    c.rows = Some(2);
    let span = build_span(&c, &meta(SpanKind::Client), &sanitized(), &|t| {
        t + 1_000_000
    });
    assert_eq!(span.name, "SELECT users");
    assert_eq!(span.kind, SpanKind::Client);
    assert_eq!(
        (span.start_unix_nanos, span.end_unix_nanos),
        (1_001_000, 1_003_000)
    );
    assert_eq!(attr(&span, "db.system.name"), s("mariadb"));
    assert_eq!(attr(&span, "db.namespace"), s("shop"));
    assert_eq!(attr(&span, "db.operation.name"), s("SELECT"));
    assert_eq!(attr(&span, "db.collection.name"), s("users"));
    assert_eq!(
        attr(&span, "db.query.text"),
        s("SELECT name FROM `users` WHERE id = ? AND n = ?")
    );
    assert_eq!(attr(&span, "socktrace.mysql.command"), s("COM_QUERY"));
    assert_eq!(
        attr(&span, "db.response.returned_rows"),
        Some(Value::Int(2))
    );
    assert_eq!(attr(&span, "server.address"), s("127.0.0.1"));
    assert_eq!(attr(&span, "server.port"), Some(Value::Int(3306)));
    assert_eq!(attr(&span, "network.peer.port"), Some(Value::Int(3306)));
    assert_eq!(attr(&span, "error.type"), None);
    assert_eq!(attr(&span, "socktrace.partial"), None);
    assert_eq!(span.status, Status::Unset);
    assert_eq!(span.scope, "socktrace.mysql");
    // Server side: the server is this side.
    let span = build_span(&c, &meta(SpanKind::Server), &sanitized(), &|t| t);
    assert_eq!(attr(&span, "server.port"), Some(Value::Int(3306)));
    assert_eq!(attr(&span, "network.peer.port"), Some(Value::Int(50000)));
}

#[test]
fn errors_and_mysql() {
    let mut c = call(Some("SELECT * FROM nope"));
    c.server_version = Some("8.0.36".into());
    c.error = Some(MysqlError {
        code: 1146,
        state: "42S02".into(),
        message: "Table 'shop.nope' doesn't exist".into(),
    });
    c.partial = true;
    let span = build_span(&c, &meta(SpanKind::Client), &sanitized(), &|t| t);
    assert_eq!(attr(&span, "db.system.name"), s("mysql"));
    assert_eq!(attr(&span, "db.response.status_code"), s("1146"));
    assert_eq!(attr(&span, "error.type"), s("1146"));
    assert_eq!(attr(&span, "socktrace.partial"), Some(Value::Bool(true)));
    assert_eq!(
        span.status,
        Status::Error {
            message: "Table 'shop.nope' doesn't exist".into()
        }
    );
    // A message that can quote values is not exported.
    c.error = Some(MysqlError {
        code: 1062,
        state: "23000".into(),
        message: "Duplicate entry 'secret' for key 'PRIMARY'".into(),
    });
    let span = build_span(&c, &meta(SpanKind::Client), &sanitized(), &|t| t);
    assert_eq!(
        span.status,
        Status::Error {
            message: "error 1062 (SQLSTATE 23000)".into()
        }
    );
    // Unless the user asked for raw text, which also keeps the statement as sent.
    let raw = DbSpanConfig {
        query_text: QueryText::Raw,
    };
    let span = build_span(&c, &meta(SpanKind::Client), &raw, &|t| t);
    assert_eq!(
        span.status,
        Status::Error {
            message: "Duplicate entry 'secret' for key 'PRIMARY'".into()
        }
    );
    assert_eq!(attr(&span, "db.query.text"), s("SELECT * FROM nope"));
    let off = DbSpanConfig {
        query_text: QueryText::Off,
    };
    let span = build_span(&c, &meta(SpanKind::Client), &off, &|t| t);
    assert_eq!(attr(&span, "db.query.text"), None);
    assert_eq!(span.name, "SELECT nope");
}

#[test]
fn commands_without_text() {
    let mut c = call(None);
    c.command = "COM_PING";
    c.database = None;
    c.server_version = None;
    let span = build_span(&c, &meta(SpanKind::Client), &sanitized(), &|t| t);
    assert_eq!(span.name, "COM_PING");
    assert_eq!(attr(&span, "db.system.name"), s("mysql"));
    assert_eq!(attr(&span, "db.namespace"), None);
    assert_eq!(attr(&span, "db.query.text"), None);
    let mut c = call(None);
    c.command = "COM_STMT_EXECUTE";
    c.statement_id = Some(7);
    let span = build_span(&c, &meta(SpanKind::Client), &sanitized(), &|t| t);
    assert_eq!(span.name, "COM_STMT_EXECUTE");
    assert_eq!(
        attr(&span, "socktrace.mysql.statement_id"),
        Some(Value::Int(7))
    );
}
