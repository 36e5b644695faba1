//! Zipkin v2 JSON: spans mapped as the OpenTelemetry specification's "OpenTelemetry to Zipkin
//! Transformation" says, for `POST /api/v2/spans` of a Zipkin server (or anything that accepts
//! its format: Jaeger, Tempo, the OpenTelemetry Collector's `zipkin` receiver).
//!
//! - `traceId`, `id`, `parentId`: lowercase hex (32, 16, 16 characters).
//! - `kind`: `SERVER` or `CLIENT` (the span model has no other kind).
//! - `timestamp`, `duration`: microseconds (truncated; a duration under 1 µs is sent as 1,
//!   since Zipkin reads 0 as "unknown").
//! - `localEndpoint`: `serviceName` from the resource's `service.name`; for a SERVER span also
//!   the listening address and port (`server.address` when it is an IP, `server.port`).
//! - `remoteEndpoint`: the other side of the connection. CLIENT: `serviceName` from
//!   `peer.service`, else `server.address` when it is a host name; the address and port from
//!   `network.peer.address`/`network.peer.port` (else `server.address`/`server.port`). SERVER:
//!   the client's `network.peer.address`/`network.peer.port` (else `client.*`).
//! - `tags`: every resource attribute but `service.name` (the specification leaves resources
//!   open; sent as tags as the OpenTelemetry Collector does), then the span's attributes (which
//!   win over a resource attribute of the same name), as strings (`true`/`false`, decimal
//!   numbers); `otel.scope.name` and `otel.scope.version`; `otel.status_code` (`OK` or
//!   `ERROR`, absent when unset) and, for an error, `error` with the status description (empty
//!   when there is none). An `error` attribute saying `false` is dropped: Zipkin marks every
//!   span with an `error` tag as failed.
//! - Span links: Zipkin v2 has none, and the specification leaves their mapping undefined; they
//!   are not sent (the `socktrace.link.*` attributes saying why a span has them are tags).
//! - Empty fields are left out.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use serde::Serialize;

use super::encode::SCOPE_VERSION;
use crate::trace::span::{Span, SpanKind, Status, Value};

/// One span of a `ListOfSpans`, borrowing what it can from the span.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ZipkinSpan<'a> {
    trace_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent_id: Option<String>,
    id: String,
    kind: &'static str,
    name: &'a str,
    timestamp: u64,
    duration: u64,
    local_endpoint: Endpoint<'a>,
    #[serde(skip_serializing_if = "Endpoint::is_empty")]
    remote_endpoint: Endpoint<'a>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    tags: BTreeMap<&'a str, String>,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct Endpoint<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    service_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ipv4: Option<Ipv4Addr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ipv6: Option<Ipv6Addr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
}

impl<'a> Endpoint<'a> {
    fn is_empty(&self) -> bool {
        self.service_name.is_none()
            && self.ipv4.is_none()
            && self.ipv6.is_none()
            && self.port.is_none()
    }

    /// Sets the address (IPv4-mapped IPv6 addresses as IPv4, as Zipkin prefers) and the port
    /// (0 means unknown: left out).
    fn with_address(mut self, ip: Option<IpAddr>, port: Option<u16>) -> Self {
        match ip.map(|ip| ip.to_canonical()) {
            Some(IpAddr::V4(v4)) => self.ipv4 = Some(v4),
            Some(IpAddr::V6(v6)) => self.ipv6 = Some(v6),
            None => {}
        }
        self.port = port.filter(|p| *p != 0);
        self
    }
}

fn str_attr<'a>(span: &'a Span, key: &str) -> Option<&'a str> {
    match span.attr(key) {
        Some(Value::Str(s)) if !s.is_empty() => Some(s),
        _ => None,
    }
}

fn ip_attr(span: &Span, key: &str) -> Option<IpAddr> {
    str_attr(span, key).and_then(|s| s.parse().ok())
}

fn port_attr(span: &Span, key: &str) -> Option<u16> {
    match span.attr(key) {
        Some(Value::Int(p)) => u16::try_from(*p).ok(),
        _ => None,
    }
}

/// A tag value: the specification's string form of an attribute value.
fn tag_value(v: &Value) -> String {
    match v {
        Value::Str(s) => s.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Double(d) => d.to_string(),
    }
}

fn local_endpoint(span: &Span) -> Endpoint<'_> {
    let endpoint = Endpoint {
        service_name: Some(span.resource.service_name()),
        ..Endpoint::default()
    };
    match span.kind {
        // The address and port the server listens on.
        SpanKind::Server => endpoint.with_address(
            ip_attr(span, "server.address"),
            port_attr(span, "server.port"),
        ),
        // A client span knows its server, not its own address.
        SpanKind::Client => endpoint,
    }
}

fn remote_endpoint(span: &Span) -> Endpoint<'_> {
    match span.kind {
        SpanKind::Client => {
            let server = str_attr(span, "server.address");
            let server_ip = server.and_then(|s| s.parse::<IpAddr>().ok());
            let service_name =
                str_attr(span, "peer.service").or(server.filter(|_| server_ip.is_none()));
            let (ip, port) = match ip_attr(span, "network.peer.address") {
                Some(ip) => (Some(ip), port_attr(span, "network.peer.port")),
                None => (server_ip, port_attr(span, "server.port")),
            };
            Endpoint {
                service_name,
                ..Endpoint::default()
            }
            .with_address(ip, port)
        }
        SpanKind::Server => {
            let (ip, port) = match ip_attr(span, "network.peer.address") {
                Some(ip) => (Some(ip), port_attr(span, "network.peer.port")),
                None => (
                    ip_attr(span, "client.address"),
                    port_attr(span, "client.port"),
                ),
            };
            Endpoint::default().with_address(ip, port)
        }
    }
}

fn tags(span: &Span) -> BTreeMap<&str, String> {
    let mut tags = BTreeMap::new();
    for kv in &span.resource.attributes {
        if kv.key != "service.name" {
            tags.insert(kv.key.as_ref(), tag_value(&kv.value));
        }
    }
    for kv in &span.attributes {
        tags.insert(kv.key.as_ref(), tag_value(&kv.value));
    }
    if tags.get("error").is_some_and(|v| v == "false") {
        tags.remove("error");
    }
    tags.insert("otel.scope.name", span.scope.to_owned());
    tags.insert("otel.scope.version", SCOPE_VERSION.to_owned());
    match &span.status {
        Status::Unset => {}
        Status::Ok => {
            tags.insert("otel.status_code", "OK".to_owned());
        }
        Status::Error { message } => {
            tags.insert("otel.status_code", "ERROR".to_owned());
            tags.insert("error", message.clone());
        }
    }
    tags
}

fn to_zipkin(span: &Span) -> ZipkinSpan<'_> {
    let micros = |nanos: u64| nanos / 1_000;
    ZipkinSpan {
        trace_id: span.trace_id.to_string(),
        parent_id: span.parent_span_id.map(|p| p.to_string()),
        id: span.span_id.to_string(),
        kind: match span.kind {
            SpanKind::Server => "SERVER",
            SpanKind::Client => "CLIENT",
        },
        name: &span.name,
        timestamp: micros(span.start_unix_nanos),
        duration: micros(span.end_unix_nanos.saturating_sub(span.start_unix_nanos)).max(1),
        local_endpoint: local_endpoint(span),
        remote_endpoint: remote_endpoint(span),
        tags: tags(span),
    }
}

/// Encodes spans as one Zipkin v2 JSON `ListOfSpans`, in their order.
pub fn encode_spans(spans: &[Span]) -> Vec<u8> {
    let list: Vec<ZipkinSpan<'_>> = spans.iter().map(to_zipkin).collect();
    // Only strings, integers and string-keyed maps: serialization cannot fail.
    serde_json::to_vec(&list).unwrap_or_else(|e| unreachable!("Zipkin JSON: {e}"))
}

#[cfg(test)]
mod tests;
