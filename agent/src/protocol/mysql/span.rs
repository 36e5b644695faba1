//! Database spans from MySQL / MariaDB calls, per the OpenTelemetry database semantic
//! conventions, built like the PostgreSQL ones (`trace::db::build_pg_span`).

use super::{Call, operation_and_collection, sanitize};
use crate::trace::{
    db::{DbSpanConfig, QueryText, push_addresses},
    span::{ConnMeta, ExchangeSpan, KeyValue, Span, Status, Value},
};

/// Error numbers whose message only quotes names (tables, columns, databases, users), never
/// values from the statement: their message is exported as the span status. Other messages
/// can quote literals (`Duplicate entry 'secret' for key ...`, the text `near '...'` of a
/// syntax error), so for them the status says only the code and SQL state.
const SAFE_MESSAGES: &[u16] = &[
    1044, // ER_DBACCESS_DENIED_ERROR
    1045, // ER_ACCESS_DENIED_ERROR
    1046, // ER_NO_DB_ERROR
    1049, // ER_BAD_DB_ERROR
    1050, // ER_TABLE_EXISTS_ERROR
    1051, // ER_BAD_TABLE_ERROR
    1054, // ER_BAD_FIELD_ERROR
    1142, // ER_TABLEACCESS_DENIED_ERROR
    1146, // ER_NO_SUCH_TABLE
    1243, // ER_UNKNOWN_STMT_HANDLER
    1305, // ER_SP_DOES_NOT_EXIST
];

/// `db.system.name`: "mariadb" when the server's version says so, else "mysql".
pub fn system_name(call: &Call) -> &'static str {
    match &call.server_version {
        Some(v) if v.contains("MariaDB") => "mariadb",
        _ => "mysql",
    }
}

/// Builds the span of one call. `db.query.text` as `--db-query-text` says (MySQL's own
/// sanitizer: see [`sanitize`]); server error messages whole only with `raw`.
pub fn build_span(
    call: &Call,
    meta: &ConnMeta,
    config: &DbSpanConfig,
    to_unix: &dyn Fn(u64) -> u64,
) -> Span {
    let mut attrs = Vec::with_capacity(12);
    let system = system_name(call);
    attrs.push(KeyValue::new("db.system.name", Value::text(system)));
    if let Some(db) = &call.database {
        attrs.push(KeyValue::new("db.namespace", db.clone()));
    }
    let (operation, collection) = call
        .query
        .as_deref()
        .map(operation_and_collection)
        .unwrap_or((None, None));
    if let Some(op) = &operation {
        attrs.push(KeyValue::new("db.operation.name", op.clone()));
    }
    if let Some(table) = &collection {
        attrs.push(KeyValue::new("db.collection.name", table.clone()));
    }
    if let Some(q) = &call.query {
        match config.query_text {
            QueryText::Sanitized => attrs.push(KeyValue::new("db.query.text", sanitize(q))),
            QueryText::Raw => attrs.push(KeyValue::new("db.query.text", q.clone())),
            QueryText::Off => {}
        }
    }
    attrs.push(KeyValue::new("socktrace.mysql.command", call.command));
    if let Some(id) = call.statement_id {
        attrs.push(KeyValue::new("socktrace.mysql.statement_id", i64::from(id)));
    }
    if let Some(rows) = call.rows {
        attrs.push(KeyValue::new(
            "db.response.returned_rows",
            i64::try_from(rows).unwrap_or(i64::MAX),
        ));
    }
    push_addresses(meta, &mut attrs);

    let mut status = Status::Unset;
    if let Some(err) = &call.error {
        let code = err.code.to_string();
        attrs.push(KeyValue::new("db.response.status_code", code.clone()));
        attrs.push(KeyValue::new("error.type", code));
        let message = if config.query_text == QueryText::Raw || SAFE_MESSAGES.contains(&err.code) {
            err.message.clone()
        } else {
            format!("error {} (SQLSTATE {})", err.code, err.state)
        };
        status = Status::Error { message };
    }
    if call.partial {
        attrs.push(KeyValue::new("socktrace.partial", true));
    }

    let name = match (&operation, &collection) {
        (Some(op), Some(t)) => format!("{op} {t}"),
        (Some(op), None) => op.clone(),
        // No SQL (COM_PING, an unknown prepared statement): the command.
        _ => call.command.to_owned(),
    };
    Span::of_exchange(
        meta,
        ExchangeSpan {
            name,
            scope: "socktrace.mysql",
            start_unix_nanos: to_unix(call.start_ns),
            end_unix_nanos: to_unix(call.end_ns),
            attributes: attrs,
            status,
            header: None,
        },
    )
}
