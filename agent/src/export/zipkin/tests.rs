use std::sync::Arc;

use serde_json::{Value as Json, json};

use super::*;
use crate::trace::span::{KeyValue, Resource, SpanId, TraceId};

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn resource(service: &str, pid: i64) -> Arc<Resource> {
    Arc::new(Resource {
        key: format!("pid:{pid}"),
        attributes: vec![
            KeyValue::new("service.name", service),
            KeyValue::new("process.pid", pid),
            KeyValue::new("host.name", "node-1"),
        ],
    })
}

fn trace_id() -> TraceId {
    TraceId([
        0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47,
        0x36,
    ])
}

/// A SERVER span of `py-server` for `GET /users/42`, child of a client span, 1.5 ms long.
fn server_span() -> Span {
    let mut s = Span::for_test(1, &resource("py-server", 4242), "socktrace.http");
    s.trace_id = trace_id();
    s.span_id = SpanId([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
    s.parent_span_id = Some(SpanId([0x53, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36]));
    s.name = "GET /users/{id}".into();
    s.kind = SpanKind::Server;
    s.start_unix_nanos = 1_764_000_000_123_456_789;
    s.end_unix_nanos = s.start_unix_nanos + 1_500_999;
    s.attributes = vec![
        KeyValue::new("http.request.method", "GET"),
        KeyValue::new("url.path", "/users/42"),
        KeyValue::new("http.route", "/users/{id}"),
        KeyValue::new("server.address", "127.0.0.1"),
        KeyValue::new("server.port", 8080i64),
        KeyValue::new("client.address", "127.0.0.1"),
        KeyValue::new("client.port", 51000i64),
        KeyValue::new("network.peer.address", "127.0.0.1"),
        KeyValue::new("network.peer.port", 51000i64),
        KeyValue::new("http.response.status_code", 404i64),
    ];
    s
}

fn encode_one(span: &Span) -> Json {
    let list: Json = serde_json::from_slice(&encode_spans(std::slice::from_ref(span))).unwrap();
    let [one] = <[Json; 1]>::try_from(list.as_array().unwrap().clone()).unwrap();
    one
}

#[test]
fn server_span_with_parent_exact_json() {
    let bytes = encode_spans(&[server_span()]);
    let want = format!(
        concat!(
            r#"[{{"traceId":"4bf92f3577b34da6a3ce929d0e0e4736","parentId":"53ce929d0e0e4736","#,
            r#""id":"00f067aa0ba902b7","kind":"SERVER","name":"GET /users/{{id}}","#,
            r#""timestamp":1764000000123456,"duration":1500,"#,
            r#""localEndpoint":{{"serviceName":"py-server","ipv4":"127.0.0.1","port":8080}},"#,
            r#""remoteEndpoint":{{"ipv4":"127.0.0.1","port":51000}},"#,
            r#""tags":{{"client.address":"127.0.0.1","client.port":"51000","host.name":"node-1","#,
            r#""http.request.method":"GET","http.response.status_code":"404","#,
            r#""http.route":"/users/{{id}}","network.peer.address":"127.0.0.1","#,
            r#""network.peer.port":"51000","otel.scope.name":"socktrace.http","#,
            r#""otel.scope.version":"{v}","process.pid":"4242","server.address":"127.0.0.1","#,
            r#""server.port":"8080","url.path":"/users/42"}}}}]"#
        ),
        v = VERSION
    );
    assert_eq!(String::from_utf8(bytes).unwrap(), want);
}

#[test]
fn client_span_names_its_server_and_has_no_parent() {
    let mut s = Span::for_test(2, &resource("curl", 77), "socktrace.http");
    s.trace_id = trace_id();
    s.span_id = SpanId([0x53, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36]);
    s.name = "GET".into();
    s.kind = SpanKind::Client;
    s.start_unix_nanos = 1_764_000_000_000_000_000;
    // Shorter than a microsecond: sent as 1 (0 would read as "unknown" in Zipkin).
    s.end_unix_nanos = s.start_unix_nanos + 400;
    s.status = Status::Ok;
    s.attributes = vec![
        KeyValue::new("http.request.method", "GET"),
        KeyValue::new("url.full", "http://users.internal:8080/users/42"),
        KeyValue::new("server.address", "users.internal"),
        KeyValue::new("server.port", 8080i64),
        KeyValue::new("network.peer.address", "::ffff:10.0.0.7"),
        KeyValue::new("network.peer.port", 8080i64),
        KeyValue::new("http.response.status_code", 200i64),
        KeyValue::new("socktrace.test.flag", true),
        KeyValue {
            key: "socktrace.test.ratio".into(),
            value: Value::Double(0.25),
        },
        // A boolean `error` would mark the span failed in Zipkin: dropped.
        KeyValue::new("error", false),
    ];
    assert_eq!(
        encode_one(&s),
        json!({
            "traceId": "4bf92f3577b34da6a3ce929d0e0e4736",
            "id": "53ce929d0e0e4736",
            "kind": "CLIENT",
            "name": "GET",
            "timestamp": 1_764_000_000_000_000u64,
            "duration": 1,
            "localEndpoint": {"serviceName": "curl"},
            "remoteEndpoint": {"serviceName": "users.internal", "ipv4": "10.0.0.7", "port": 8080},
            "tags": {
                "host.name": "node-1",
                "process.pid": "77",
                "http.request.method": "GET",
                "url.full": "http://users.internal:8080/users/42",
                "server.address": "users.internal",
                "server.port": "8080",
                "network.peer.address": "::ffff:10.0.0.7",
                "network.peer.port": "8080",
                "http.response.status_code": "200",
                "socktrace.test.flag": "true",
                "socktrace.test.ratio": "0.25",
                "otel.scope.name": "socktrace.http",
                "otel.scope.version": VERSION,
                "otel.status_code": "OK",
            },
        })
    );
}

#[test]
fn error_span_has_status_and_error_tags() {
    let mut s = Span::for_test(3, &resource("shop", 9), "socktrace.postgres");
    s.trace_id = trace_id();
    s.span_id = SpanId([1, 2, 3, 4, 5, 6, 7, 8]);
    s.parent_span_id = Some(SpanId([8, 7, 6, 5, 4, 3, 2, 1]));
    s.name = "SELECT orders".into();
    s.kind = SpanKind::Client;
    s.start_unix_nanos = 2_000_000_000;
    s.end_unix_nanos = 2_003_000_000;
    s.status = Status::Error {
        message: "relation \"orders\" does not exist".into(),
    };
    s.attributes = vec![
        KeyValue::new("db.system.name", "postgresql"),
        KeyValue::new("server.address", "10.1.2.3"),
        KeyValue::new("server.port", 5432i64),
        KeyValue::new("error.type", "42P01"),
        // The resource's value is overridden by the span's.
        KeyValue::new("host.name", "from-span"),
    ];
    assert_eq!(
        encode_one(&s),
        json!({
            "traceId": "4bf92f3577b34da6a3ce929d0e0e4736",
            "parentId": "0807060504030201",
            "id": "0102030405060708",
            "kind": "CLIENT",
            "name": "SELECT orders",
            "timestamp": 2_000_000,
            "duration": 3_000,
            "localEndpoint": {"serviceName": "shop"},
            // No network.peer.*: the server address (an IP) and port.
            "remoteEndpoint": {"ipv4": "10.1.2.3", "port": 5432},
            "tags": {
                "host.name": "from-span",
                "process.pid": "9",
                "db.system.name": "postgresql",
                "server.address": "10.1.2.3",
                "server.port": "5432",
                "error.type": "42P01",
                "otel.scope.name": "socktrace.postgres",
                "otel.scope.version": VERSION,
                "otel.status_code": "ERROR",
                "error": "relation \"orders\" does not exist",
            },
        })
    );
    // An error without a description still has the `error` tag, empty.
    s.status = Status::Error {
        message: String::new(),
    };
    assert_eq!(encode_one(&s)["tags"]["error"], json!(""));
}

#[test]
fn server_endpoints_without_ips_and_root_spans() {
    let mut s = server_span();
    s.parent_span_id = None;
    s.attributes = vec![
        // A Host header name: not an address of the local endpoint, but the port is.
        KeyValue::new("server.address", "shop.example"),
        KeyValue::new("server.port", 443i64),
        KeyValue::new("client.address", "2001:db8::7"),
        KeyValue::new("client.port", 40000i64),
    ];
    let j = encode_one(&s);
    assert!(j.get("parentId").is_none(), "{j}");
    assert_eq!(
        j["localEndpoint"],
        json!({"serviceName": "py-server", "port": 443})
    );
    assert_eq!(
        j["remoteEndpoint"],
        json!({"ipv6": "2001:db8::7", "port": 40000})
    );
    // Nothing known of the client: no remoteEndpoint at all.
    s.attributes.clear();
    let j = encode_one(&s);
    assert!(j.get("remoteEndpoint").is_none(), "{j}");
    assert_eq!(j["localEndpoint"], json!({"serviceName": "py-server"}));
}

#[test]
fn spans_keep_their_order_and_an_empty_batch_is_an_empty_list() {
    let r = resource("a", 1);
    let spans: Vec<Span> = (1..=3)
        .map(|n| Span::for_test(n, &r, "socktrace.http"))
        .collect();
    let list: Json = serde_json::from_slice(&encode_spans(&spans)).unwrap();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["span-1", "span-2", "span-3"]);
    assert_eq!(encode_spans(&[]), b"[]");
}

#[test]
fn links_are_not_sent_but_their_attributes_are_tags() {
    let mut s = server_span();
    s.kind = SpanKind::Client;
    s.parent_span_id = None;
    s.links = vec![crate::trace::span::SpanLink {
        trace_id: TraceId([7; 16]),
        span_id: SpanId([8; 8]),
        trace_state: String::new(),
    }];
    s.attributes = vec![
        KeyValue::new("socktrace.link.reason", "ambiguous_event_loop"),
        KeyValue::new("socktrace.link.candidates", 1i64),
    ];
    let j = encode_one(&s);
    assert_eq!(j.get("parentId"), None);
    assert_eq!(j["tags"]["socktrace.link.reason"], "ambiguous_event_loop");
    assert_eq!(j["tags"]["socktrace.link.candidates"], "1");
    let text = j.to_string();
    assert!(!text.contains("0808080808080808"), "{text}");
}
