//! The span of one Redis call, per the OpenTelemetry database semantic conventions, built like
//! [`crate::trace::db::build_pg_span`]. No `db.query.text`: argument values never leave the
//! host; only the command name and the argument/key counts do.

use super::Call;
use crate::trace::{
    db::push_addresses,
    span::{ConnMeta, ExchangeSpan, KeyValue, Span, Status, Value},
};

/// Builds the span of one Redis command.
///
/// Attributes: `db.system.name` = "redis", `db.operation.name` (the command, when known),
/// `db.namespace` (database index, "0" when no `SELECT` was seen and the call is not partial), `socktrace.redis.args_count`,
/// `socktrace.redis.key_count`, `server.address`/`server.port`, `network.peer.address`/
/// `network.peer.port`, and on an error reply `db.response.status_code` and `error.type` (the
/// error prefix, e.g. `WRONGTYPE`) with status Error carrying the error line; `socktrace.partial`
/// when the call is partial. Name: the command ("redis" when unknown).
pub fn build_span(call: &Call, meta: &ConnMeta, to_unix: &dyn Fn(u64) -> u64) -> Span {
    let mut attrs = Vec::with_capacity(12);
    attrs.push(KeyValue::new("db.system.name", Value::text("redis")));
    if !call.command.is_empty() {
        attrs.push(KeyValue::new("db.operation.name", call.command.clone()));
    }
    // No SELECT seen: database 0, unless the call is partial (joined mid-stream, or a SELECT
    // may have been lost).
    if let Some(db) = call.database.or((!call.partial).then_some(0)) {
        attrs.push(KeyValue::new("db.namespace", db.to_string()));
    }
    attrs.push(KeyValue::new(
        "socktrace.redis.args_count",
        i64::from(call.args),
    ));
    attrs.push(KeyValue::new(
        "socktrace.redis.key_count",
        i64::from(call.keys),
    ));
    push_addresses(meta, &mut attrs);
    let mut status = Status::Unset;
    if let (Some(code), Some(message)) = (call.error_code(), call.error.as_ref()) {
        attrs.push(KeyValue::new("db.response.status_code", code.to_owned()));
        attrs.push(KeyValue::new("error.type", code.to_owned()));
        status = Status::Error {
            message: message.clone(),
        };
    }
    if call.partial {
        attrs.push(KeyValue::new("socktrace.partial", true));
    }
    let name = if call.command.is_empty() {
        "redis".to_owned()
    } else {
        call.command.clone()
    };
    Span::of_exchange(
        meta,
        ExchangeSpan {
            name,
            scope: "socktrace.redis",
            start_unix_nanos: to_unix(call.start_ns),
            end_unix_nanos: to_unix(call.end_ns),
            attributes: attrs,
            status,
            header: None,
        },
    )
}

#[cfg(test)]
mod tests {
    use std::{net::SocketAddr, sync::Arc};

    use super::*;
    use crate::trace::span::{Resource, SpanKind};

    fn meta(kind: SpanKind) -> ConnMeta {
        let local: SocketAddr = "10.0.0.1:6379".parse().unwrap();
        let peer: SocketAddr = "10.0.0.2:50000".parse().unwrap();
        let (local, peer) = match kind {
            SpanKind::Client => (peer, local),
            SpanKind::Server => (local, peer),
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

    fn call() -> Call {
        Call {
            start_ns: 10,
            end_ns: 25,
            command: "MSET".into(),
            args: 4,
            keys: 2,
            error: None,
            database: None,
            partial: false,
        }
    }

    fn text(s: &Span, k: &str) -> Option<String> {
        match s.attr(k)? {
            Value::Str(v) => Some(v.to_string()),
            other => panic!("{k}: {other:?}"),
        }
    }

    fn int(s: &Span, k: &str) -> Option<i64> {
        match s.attr(k)? {
            Value::Int(v) => Some(*v),
            other => panic!("{k}: {other:?}"),
        }
    }

    #[test]
    fn attributes_of_a_client_call() {
        let s = build_span(&call(), &meta(SpanKind::Client), &|t| t + 1000);
        assert_eq!(s.name, "MSET");
        assert_eq!(s.kind, SpanKind::Client);
        assert_eq!(s.scope, "socktrace.redis");
        assert_eq!((s.start_unix_nanos, s.end_unix_nanos), (1010, 1025));
        assert_eq!(text(&s, "db.system.name").as_deref(), Some("redis"));
        assert_eq!(text(&s, "db.operation.name").as_deref(), Some("MSET"));
        assert_eq!(text(&s, "db.namespace").as_deref(), Some("0"));
        assert_eq!(int(&s, "socktrace.redis.args_count"), Some(4));
        assert_eq!(int(&s, "socktrace.redis.key_count"), Some(2));
        assert_eq!(text(&s, "server.address").as_deref(), Some("10.0.0.1"));
        assert_eq!(int(&s, "server.port"), Some(6379));
        assert_eq!(
            text(&s, "network.peer.address").as_deref(),
            Some("10.0.0.1")
        );
        assert_eq!(int(&s, "network.peer.port"), Some(6379));
        assert!(s.attr("db.query.text").is_none());
        assert!(s.attr("db.operation.batch.size").is_none());
        assert!(s.attr("error.type").is_none());
        assert!(s.attr("socktrace.partial").is_none());
        assert_eq!(s.status, Status::Unset);
    }

    #[test]
    fn server_side_error_database_and_partial() {
        let mut c = call();
        c.command = "LPUSH".into();
        c.error = Some("WRONGTYPE Operation against a key holding the wrong kind of value".into());
        c.database = Some(2);
        c.partial = true;
        let s = build_span(&c, &meta(SpanKind::Server), &|t| t);
        assert_eq!(s.kind, SpanKind::Server);
        assert_eq!(text(&s, "server.address").as_deref(), Some("10.0.0.1"));
        assert_eq!(int(&s, "server.port"), Some(6379));
        assert_eq!(
            text(&s, "network.peer.address").as_deref(),
            Some("10.0.0.2")
        );
        assert_eq!(int(&s, "network.peer.port"), Some(50000));
        assert_eq!(text(&s, "db.namespace").as_deref(), Some("2"));
        assert_eq!(
            text(&s, "db.response.status_code").as_deref(),
            Some("WRONGTYPE")
        );
        assert_eq!(text(&s, "error.type").as_deref(), Some("WRONGTYPE"));
        assert_eq!(
            s.status,
            Status::Error {
                message: "WRONGTYPE Operation against a key holding the wrong kind of value".into()
            }
        );
        assert_eq!(s.attr("socktrace.partial"), Some(&Value::Bool(true)));
    }

    #[test]
    fn unknown_command_is_named_redis() {
        let mut c = call();
        c.command.clear();
        let s = build_span(&c, &meta(SpanKind::Client), &|t| t);
        assert_eq!(s.name, "redis");
        assert!(s.attr("db.operation.name").is_none());
    }
}
