//! Spans of PostgreSQL statements, per the OpenTelemetry database semantic conventions.

use super::Statement;
use crate::protocol::postgres;
use crate::trace::{
    db::{DbSpanConfig, QueryText, push_addresses},
    span::{ConnMeta, ExchangeSpan, KeyValue, Span, Status, Value},
};

/// Builds the span of one executed PostgreSQL statement.
pub fn build_pg_span(
    st: &Statement,
    database: Option<&str>,
    conn: &ConnMeta,
    config: &DbSpanConfig,
    to_unix: &dyn Fn(u64) -> u64,
) -> Span {
    let mut attrs = Vec::with_capacity(12);
    attrs.push(KeyValue::new("db.system.name", Value::text("postgresql")));
    if let Some(db) = database {
        attrs.push(KeyValue::new("db.namespace", db));
    }
    let (operation, collection) = st
        .query
        .as_deref()
        .map(postgres::operation_and_collection)
        .unwrap_or((None, None));
    if let Some(op) = &operation {
        attrs.push(KeyValue::new("db.operation.name", op.clone()));
    }
    if let Some(table) = &collection {
        attrs.push(KeyValue::new("db.collection.name", table.clone()));
    }
    if let Some(q) = &st.query {
        match config.query_text {
            QueryText::Sanitized => {
                attrs.push(KeyValue::new("db.query.text", postgres::sanitize(q)))
            }
            QueryText::Raw => attrs.push(KeyValue::new("db.query.text", q.clone())),
            QueryText::Off => {}
        }
    }
    if let Some(name) = st.prepared_name.as_deref().filter(|n| !n.is_empty()) {
        attrs.push(KeyValue::new(
            "socktrace.postgresql.prepared_statement",
            name,
        ));
    }
    if let Some(rows) = st.rows {
        attrs.push(KeyValue::new(
            "db.response.returned_rows",
            i64::try_from(rows).unwrap_or(i64::MAX),
        ));
    }
    push_addresses(conn, &mut attrs);

    let mut status = Status::Unset;
    if let Some(err) = &st.error {
        attrs.push(KeyValue::new(
            "db.response.status_code",
            err.sqlstate.clone(),
        ));
        attrs.push(KeyValue::new("error.type", err.sqlstate.clone()));
        // Server messages can quote literal values ('invalid input syntax for type integer:
        // "..."'), so they are exported only when the user asked for raw query text.
        let message = match config.query_text {
            QueryText::Raw => err.message.clone(),
            _ => format!("SQLSTATE {}", err.sqlstate),
        };
        status = Status::Error { message };
    }
    if st.partial {
        attrs.push(KeyValue::new("socktrace.partial", true));
    }

    let name = match (&operation, &collection) {
        (Some(op), Some(t)) => format!("{op} {t}"),
        (Some(op), None) => op.clone(),
        _ => "postgresql".to_owned(),
    };
    Span::of_exchange(
        conn,
        ExchangeSpan {
            name,
            scope: "socktrace.postgresql",
            start_unix_nanos: to_unix(st.start_ns),
            end_unix_nanos: to_unix(st.end_ns),
            attributes: attrs,
            status,
            header: None,
        },
    )
}
