//! `encode_request` against the generated OTLP messages: the request built the obvious way
//! (prost structs, as the exporter did before) must encode to exactly the same bytes.

use std::{collections::HashMap, sync::Arc};

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{AnyValue, InstrumentationScope, KeyValue as ProtoKeyValue, any_value},
    resource::v1::Resource as ProtoResource,
    trace::v1::{
        ResourceSpans, ScopeSpans, Span as ProtoSpan, Status as ProtoStatus,
        span::{Link as ProtoLink, SpanKind as ProtoKind},
        status::StatusCode,
    },
};
use prost::Message as _;

use super::{SCOPE_VERSION, encode_request};
use crate::trace::span::{
    KeyValue, Resource, Span, SpanId, SpanKind, SpanLink, Status, TraceId, Value,
};

/// The reference: one `ResourceSpans` per resource key, one `ScopeSpans` per scope, in order of
/// first appearance, every field set as the OTLP conventions say.
/// Converts spans into one OTLP request: one `ResourceSpans` per distinct resource (by
/// `Resource::key`), one `ScopeSpans` per scope inside it, in order of first appearance; spans
/// keep their relative order. The spans' strings move into the request (no copies).
fn to_otlp_request(spans: Vec<Span>) -> ExportTraceServiceRequest {
    let mut resource_spans: Vec<ResourceSpans> = Vec::new();
    // Where each span goes: (index in resource_spans, index in its scope_spans).
    let mut places = Vec::with_capacity(spans.len());
    {
        // resource key -> (index in resource_spans, scope name -> index in scope_spans)
        let mut index: HashMap<&str, (usize, HashMap<&'static str, usize>)> = HashMap::new();
        for span in &spans {
            let (ri, scopes) = index.entry(span.resource.key.as_str()).or_insert_with(|| {
                resource_spans.push(ResourceSpans {
                    resource: Some(ProtoResource {
                        attributes: span.resource.attributes.iter().map(to_key_value).collect(),
                        ..Default::default()
                    }),
                    scope_spans: Vec::new(),
                    schema_url: String::new(),
                });
                (resource_spans.len() - 1, HashMap::new())
            });
            let rs = &mut resource_spans[*ri];
            let si = *scopes.entry(span.scope).or_insert_with(|| {
                rs.scope_spans.push(ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: span.scope.to_owned(),
                        version: SCOPE_VERSION.to_owned(),
                        ..Default::default()
                    }),
                    spans: Vec::new(),
                    schema_url: String::new(),
                });
                rs.scope_spans.len() - 1
            });
            places.push((*ri, si));
        }
    }
    for (span, (ri, si)) in spans.into_iter().zip(places) {
        resource_spans[ri].scope_spans[si]
            .spans
            .push(to_proto_span(span));
    }
    ExportTraceServiceRequest { resource_spans }
}

fn to_proto_span(span: Span) -> ProtoSpan {
    let (code, message) = match span.status {
        Status::Unset => (StatusCode::Unset, String::new()),
        Status::Ok => (StatusCode::Ok, String::new()),
        Status::Error { message } => (StatusCode::Error, message),
    };
    ProtoSpan {
        trace_id: span.trace_id.0.to_vec(),
        span_id: span.span_id.0.to_vec(),
        trace_state: span.trace_state,
        parent_span_id: span
            .parent_span_id
            .map(|p| p.0.to_vec())
            .unwrap_or_default(),
        // The model carries no W3C trace flags; zero means "unknown" in OTLP.
        flags: 0,
        name: span.name,
        kind: match span.kind {
            SpanKind::Server => ProtoKind::Server,
            SpanKind::Client => ProtoKind::Client,
        } as i32,
        start_time_unix_nano: span.start_unix_nanos,
        end_time_unix_nano: span.end_unix_nanos,
        attributes: span.attributes.into_iter().map(into_key_value).collect(),
        links: span
            .links
            .into_iter()
            .map(|l| ProtoLink {
                trace_id: l.trace_id.0.to_vec(),
                span_id: l.span_id.0.to_vec(),
                trace_state: l.trace_state,
                ..Default::default()
            })
            .collect(),
        status: Some(ProtoStatus {
            message,
            code: code as i32,
        }),
        ..Default::default()
    }
}

fn to_key_value(kv: &KeyValue) -> ProtoKeyValue {
    into_key_value(kv.clone())
}

fn into_key_value(kv: KeyValue) -> ProtoKeyValue {
    let value = match kv.value {
        Value::Str(s) => any_value::Value::StringValue(s.into_owned()),
        Value::Int(i) => any_value::Value::IntValue(i),
        Value::Bool(b) => any_value::Value::BoolValue(b),
        Value::Double(d) => any_value::Value::DoubleValue(d),
    };
    ProtoKeyValue {
        key: kv.key.into_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn resource(key: &str, attrs: Vec<KeyValue>) -> Arc<Resource> {
    Arc::new(Resource {
        key: key.to_owned(),
        attributes: attrs,
    })
}

fn span(n: u8, resource: &Arc<Resource>, scope: &'static str) -> Span {
    Span::for_test(n, resource, scope)
}

fn assert_same(spans: &[Span]) {
    let want = to_otlp_request(spans.to_vec()).encode_to_vec();
    let got = encode_request(spans);
    if got != want {
        let decoded = ExportTraceServiceRequest::decode(got.as_slice());
        panic!(
            "encodings differ ({} vs {} bytes); ours decodes to {decoded:?}",
            got.len(),
            want.len()
        );
    }
}

#[test]
fn every_field_and_value_kind_encodes_as_the_generated_messages_do() {
    let a = resource(
        "a",
        vec![
            KeyValue::new("service.name", "frontend"),
            KeyValue::new("process.pid", 4242i64),
        ],
    );
    let b = resource("b", Vec::new());
    let mut spans = vec![
        span(1, &a, "socktrace.http"),
        span(2, &b, "socktrace.postgresql"),
        span(3, &a, "socktrace.grpc"),
        span(4, &a, "socktrace.http"),
    ];
    spans[0].attributes = vec![
        KeyValue::new("http.request.method", "GET"),
        KeyValue::new("http.response.status_code", 200i64),
        KeyValue::new("negative", -1i64),
        KeyValue::new("min", i64::MIN),
        KeyValue::new("socktrace.partial", true),
        KeyValue::new("off", false),
        KeyValue {
            key: "ratio".into(),
            value: Value::Double(0.25),
        },
        KeyValue::new("zero", 0i64),
        KeyValue::new("empty", ""),
        KeyValue::new("", "empty key"),
        KeyValue::new("unicode", "h\u{e9}llo \u{1f600}"),
    ];
    spans[0].parent_span_id = Some(SpanId([9; 8]));
    spans[0].trace_state = "vendor=1,other=2".to_owned();
    spans[1].kind = SpanKind::Client;
    spans[1].links = vec![
        SpanLink {
            trace_id: TraceId([5; 16]),
            span_id: SpanId([6; 8]),
            trace_state: String::new(),
        },
        SpanLink {
            trace_id: TraceId([7; 16]),
            span_id: SpanId([8; 8]),
            trace_state: "k=v".to_owned(),
        },
    ];
    spans[1].status = Status::Error {
        message: "SQLSTATE 23505".to_owned(),
    };
    spans[2].status = Status::Error {
        message: String::new(),
    };
    spans[3].status = Status::Ok;
    spans[3].start_unix_nanos = 0;
    spans[3].end_unix_nanos = 0;
    spans[3].name = String::new();
    // A long string: a length that needs a multi-byte varint.
    spans[3].attributes = vec![KeyValue::new("db.query.text", "x".repeat(70_000))];
    assert_same(&spans);
    assert_same(&spans[..1]);
    assert_same(&[]);
}

#[test]
fn random_batches_encode_as_the_generated_messages_do() {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let resources: Vec<Arc<Resource>> = (0..4)
        .map(|i| {
            resource(
                &format!("r{i}"),
                vec![KeyValue::new("service.name", format!("s{i}"))],
            )
        })
        .collect();
    let scopes = ["socktrace.http", "socktrace.grpc", "socktrace.postgresql"];
    for _ in 0..300 {
        let n = (next() % 40) as usize;
        let spans: Vec<Span> = (0..n)
            .map(|i| {
                let r = &resources[(next() % 4) as usize];
                let mut s = span(i as u8, r, scopes[(next() % 3) as usize]);
                for k in 0..next() % 12 {
                    let key = format!("k{k}");
                    s.attributes.push(match next() % 4 {
                        0 => KeyValue::new(key, "v".repeat((next() % 300) as usize)),
                        1 => KeyValue::new(key, next() as i64),
                        2 => KeyValue::new(key, next() % 2 == 0),
                        _ => KeyValue {
                            key: key.into(),
                            value: Value::Double(f64::from_bits(next())),
                        },
                    });
                }
                if next() % 3 == 0 {
                    s.parent_span_id = Some(SpanId(next().to_le_bytes()));
                }
                for _ in 0..(next() % 5).saturating_sub(2) {
                    s.links.push(SpanLink {
                        trace_id: TraceId(
                            (u128::from(next()) << 64 | u128::from(next())).to_le_bytes(),
                        ),
                        span_id: SpanId(next().to_le_bytes()),
                        trace_state: "t".repeat((next() % 3) as usize),
                    });
                }
                if next() % 4 == 0 {
                    s.status = Status::Error {
                        message: "m".repeat((next() % 3) as usize),
                    };
                }
                s.end_unix_nanos = next();
                s
            })
            .collect();
        assert_same(&spans);
    }
}
