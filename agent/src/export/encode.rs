//! OTLP protobuf encoding straight from the span model.
//!
//! The wire format of `ExportTraceServiceRequest` (opentelemetry-proto `trace/v1`,
//! `collector/trace/v1`) written field by field from borrowed spans: no intermediate message
//! structs, no string copies. Grouping and field order are those of the generated messages
//! encoded by prost (fields in number order, proto3 defaults omitted), so the bytes are the
//! same; the tests check exactly that against the generated types.

use prost::encoding::encoded_len_varint;

use crate::{
    FastMap,
    trace::span::{KeyValue, Resource, Span, SpanKind, SpanLink, Status, Value},
};

/// Instrumentation scope version reported with every span.
pub const SCOPE_VERSION: &str = env!("CARGO_PKG_VERSION");

const LEN: u64 = 2;
const FIXED64: u64 = 1;
const VARINT: u64 = 0;

/// Appends `v` as a protobuf varint. Written for `Vec<u8>` (prost's is generic over `BufMut`):
/// most values here (field keys, string lengths) take one byte, so that case is one push.
#[inline]
fn encode_varint(mut v: u64, buf: &mut Vec<u8>) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn key_len(field: u64) -> usize {
    encoded_len_varint(field << 3)
}

fn put_key(buf: &mut Vec<u8>, field: u64, wire: u64) {
    encode_varint((field << 3) | wire, buf);
}

/// Length of a length-delimited field holding `n` bytes.
fn delimited_len(field: u64, n: usize) -> usize {
    key_len(field) + encoded_len_varint(n as u64) + n
}

fn put_delimited_head(buf: &mut Vec<u8>, field: u64, n: usize) {
    put_key(buf, field, LEN);
    encode_varint(n as u64, buf);
}

/// A string or bytes field; omitted when empty (the proto3 default).
fn bytes_len(field: u64, b: &[u8]) -> usize {
    if b.is_empty() {
        0
    } else {
        delimited_len(field, b.len())
    }
}

fn put_bytes(buf: &mut Vec<u8>, field: u64, b: &[u8]) {
    if !b.is_empty() {
        put_delimited_head(buf, field, b.len());
        buf.extend_from_slice(b);
    }
}

/// A varint field (int64, enum, bool); omitted when zero.
fn varint_len(field: u64, v: u64) -> usize {
    if v == 0 {
        0
    } else {
        key_len(field) + encoded_len_varint(v)
    }
}

fn put_varint(buf: &mut Vec<u8>, field: u64, v: u64) {
    if v != 0 {
        put_key(buf, field, VARINT);
        encode_varint(v, buf);
    }
}

fn fixed64_len(field: u64, v: u64) -> usize {
    if v == 0 { 0 } else { key_len(field) + 8 }
}

fn put_fixed64(buf: &mut Vec<u8>, field: u64, v: u64) {
    if v != 0 {
        put_key(buf, field, FIXED64);
        buf.extend_from_slice(&v.to_le_bytes());
    }
}

// ---- AnyValue / KeyValue (common/v1) ----

/// The body of an `AnyValue` (its oneof field; a oneof member is written even when default).
fn any_value_body_len(v: &Value) -> usize {
    match v {
        Value::Str(s) => delimited_len(1, s.len()),
        Value::Bool(_) => key_len(2) + 1,
        Value::Int(i) => key_len(3) + encoded_len_varint(*i as u64),
        Value::Double(_) => key_len(4) + 8,
    }
}

fn put_any_value_body(buf: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Str(s) => {
            put_delimited_head(buf, 1, s.len());
            buf.extend_from_slice(s.as_bytes());
        }
        Value::Bool(b) => {
            put_key(buf, 2, VARINT);
            buf.push(u8::from(*b));
        }
        Value::Int(i) => {
            put_key(buf, 3, VARINT);
            encode_varint(*i as u64, buf);
        }
        Value::Double(d) => {
            put_key(buf, 4, FIXED64);
            buf.extend_from_slice(&d.to_bits().to_le_bytes());
        }
    }
}

fn key_value_body_len(kv: &KeyValue) -> usize {
    bytes_len(1, kv.key.as_bytes()) + delimited_len(2, any_value_body_len(&kv.value))
}

fn put_key_value(buf: &mut Vec<u8>, field: u64, kv: &KeyValue) {
    put_delimited_head(buf, field, key_value_body_len(kv));
    put_bytes(buf, 1, kv.key.as_bytes());
    put_delimited_head(buf, 2, any_value_body_len(&kv.value));
    put_any_value_body(buf, &kv.value);
}

fn attributes_len(field: u64, attrs: &[KeyValue]) -> usize {
    attrs
        .iter()
        .map(|kv| delimited_len(field, key_value_body_len(kv)))
        .sum()
}

fn put_attributes(buf: &mut Vec<u8>, field: u64, attrs: &[KeyValue]) {
    for kv in attrs {
        put_key_value(buf, field, kv);
    }
}

// ---- Span (trace/v1) ----

fn status_parts(status: &Status) -> (&str, u64) {
    // StatusCode: UNSET = 0, OK = 1, ERROR = 2.
    match status {
        Status::Unset => ("", 0),
        Status::Ok => ("", 1),
        Status::Error { message } => (message.as_str(), 2),
    }
}

fn status_body_len(status: &Status) -> usize {
    let (message, code) = status_parts(status);
    bytes_len(2, message.as_bytes()) + varint_len(3, code)
}

fn kind_code(kind: SpanKind) -> u64 {
    // SpanKind: SERVER = 2, CLIENT = 3.
    match kind {
        SpanKind::Server => 2,
        SpanKind::Client => 3,
    }
}

/// A `Span.Link`: the linked span's ids and trace state (no attributes, no flags).
fn link_body_len(l: &SpanLink) -> usize {
    bytes_len(1, &l.trace_id.0)
        + bytes_len(2, &l.span_id.0)
        + bytes_len(3, l.trace_state.as_bytes())
}

fn put_link(buf: &mut Vec<u8>, field: u64, l: &SpanLink) {
    put_delimited_head(buf, field, link_body_len(l));
    put_bytes(buf, 1, &l.trace_id.0);
    put_bytes(buf, 2, &l.span_id.0);
    put_bytes(buf, 3, l.trace_state.as_bytes());
}

fn span_body_len(s: &Span) -> usize {
    bytes_len(1, &s.trace_id.0)
        + bytes_len(2, &s.span_id.0)
        + bytes_len(3, s.trace_state.as_bytes())
        + s.parent_span_id.map_or(0, |p| bytes_len(4, &p.0))
        + bytes_len(5, s.name.as_bytes())
        + varint_len(6, kind_code(s.kind))
        + fixed64_len(7, s.start_unix_nanos)
        + fixed64_len(8, s.end_unix_nanos)
        + attributes_len(9, &s.attributes)
        + s.links
            .iter()
            .map(|l| delimited_len(13, link_body_len(l)))
            .sum::<usize>()
        // The status message is always present (possibly empty), as prost writes a `Some`.
        + delimited_len(15, status_body_len(&s.status))
}

fn put_span(buf: &mut Vec<u8>, field: u64, s: &Span, len: usize) {
    put_delimited_head(buf, field, len);
    put_bytes(buf, 1, &s.trace_id.0);
    put_bytes(buf, 2, &s.span_id.0);
    put_bytes(buf, 3, s.trace_state.as_bytes());
    if let Some(p) = s.parent_span_id {
        put_bytes(buf, 4, &p.0);
    }
    put_bytes(buf, 5, s.name.as_bytes());
    put_varint(buf, 6, kind_code(s.kind));
    put_fixed64(buf, 7, s.start_unix_nanos);
    put_fixed64(buf, 8, s.end_unix_nanos);
    put_attributes(buf, 9, &s.attributes);
    for l in &s.links {
        put_link(buf, 13, l);
    }
    put_delimited_head(buf, 15, status_body_len(&s.status));
    let (message, code) = status_parts(&s.status);
    put_bytes(buf, 2, message.as_bytes());
    put_varint(buf, 3, code);
}

// ---- grouping ----

/// Spans of one instrumentation scope of one resource, in order.
struct ScopeGroup<'a> {
    scope: &'static str,
    spans: Vec<(&'a Span, usize)>,
    len: usize,
}

struct ResourceGroup<'a> {
    resource: &'a Resource,
    scopes: Vec<ScopeGroup<'a>>,
    len: usize,
}

fn scope_len(scope: &str) -> usize {
    bytes_len(1, scope.as_bytes()) + bytes_len(2, SCOPE_VERSION.as_bytes())
}

fn resource_len(r: &Resource) -> usize {
    attributes_len(1, &r.attributes)
}

/// Encodes spans as one `ExportTraceServiceRequest`: one `ResourceSpans` per distinct resource
/// (by `Resource::key`), one `ScopeSpans` per scope inside it, in order of first appearance;
/// spans keep their relative order.
pub fn encode_request(spans: &[Span]) -> Vec<u8> {
    let mut groups: Vec<ResourceGroup<'_>> = Vec::new();
    let mut index: FastMap<&str, usize> = FastMap::default();
    for span in spans {
        let ri = *index.entry(span.resource.key.as_str()).or_insert_with(|| {
            groups.push(ResourceGroup {
                resource: &span.resource,
                scopes: Vec::new(),
                len: 0,
            });
            groups.len() - 1
        });
        let g = &mut groups[ri];
        let si = match g.scopes.iter().position(|s| s.scope == span.scope) {
            Some(i) => i,
            None => {
                g.scopes.push(ScopeGroup {
                    scope: span.scope,
                    spans: Vec::new(),
                    len: 0,
                });
                g.scopes.len() - 1
            }
        };
        g.scopes[si].spans.push((span, span_body_len(span)));
    }
    let mut total = 0;
    for g in &mut groups {
        for s in &mut g.scopes {
            s.len = delimited_len(1, scope_len(s.scope))
                + s.spans
                    .iter()
                    .map(|(_, n)| delimited_len(2, *n))
                    .sum::<usize>();
        }
        g.len = delimited_len(1, resource_len(g.resource))
            + g.scopes
                .iter()
                .map(|s| delimited_len(2, s.len))
                .sum::<usize>();
        total += delimited_len(1, g.len);
    }

    let mut buf = Vec::with_capacity(total);
    for g in &groups {
        put_delimited_head(&mut buf, 1, g.len);
        put_delimited_head(&mut buf, 1, resource_len(g.resource));
        put_attributes(&mut buf, 1, &g.resource.attributes);
        for s in &g.scopes {
            put_delimited_head(&mut buf, 2, s.len);
            put_delimited_head(&mut buf, 1, scope_len(s.scope));
            put_bytes(&mut buf, 1, s.scope.as_bytes());
            put_bytes(&mut buf, 2, SCOPE_VERSION.as_bytes());
            for (span, n) in &s.spans {
                put_span(&mut buf, 2, span, *n);
            }
        }
    }
    debug_assert_eq!(buf.len(), total);
    buf
}

#[cfg(test)]
mod tests;
