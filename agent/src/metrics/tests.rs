use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use super::{
    Aggregator, Collected,
    graph::{EDGE_WAIT, Edge},
    histogram::Histogram,
    prometheus,
    red::INSTRUMENTS,
    table::Table,
};
use crate::trace::span::{KeyValue, Resource, Span, SpanId, SpanKind, Status, TraceId, Value};

fn resource(service: &str) -> Arc<Resource> {
    Arc::new(Resource {
        key: format!("svc:{service}"),
        attributes: vec![KeyValue::new("service.name", service)],
    })
}

/// A span of `ms` milliseconds.
fn span(n: u8, r: &Arc<Resource>, kind: SpanKind, ms: u64, attrs: Vec<KeyValue>) -> Span {
    let mut s = Span::for_test(n, r, "socktrace.test");
    s.kind = kind;
    s.start_unix_nanos = 1_000_000_000;
    s.end_unix_nanos = 1_000_000_000 + ms * 1_000_000;
    s.attributes = attrs;
    s
}

fn http_server(n: u8, r: &Arc<Resource>, ms: u64, route: &str, status: i64) -> Span {
    let mut s = span(
        n,
        r,
        SpanKind::Server,
        ms,
        vec![
            KeyValue::new("http.request.method", Value::text("GET")),
            KeyValue::new("url.path", format!("/raw/{n}")),
            KeyValue::new("http.route", route),
            KeyValue::new("http.response.status_code", status),
            KeyValue::new("client.address", "10.0.0.9"),
            KeyValue::new("network.protocol.version", Value::text("1.1")),
        ],
    );
    if status >= 500 {
        s.attributes
            .push(KeyValue::new("error.type", status.to_string()));
        s.status = Status::Error {
            message: String::new(),
        };
    }
    s
}

fn attrs_of<V>(t: &Table<V>, i: usize) -> Vec<String> {
    t.series()[i]
        .attributes
        .iter()
        .map(|kv| format!("{}={}", kv.key, kv.value))
        .collect()
}

fn collected(a: &Aggregator) -> Collected {
    Collected {
        red: a.red.tables.clone(),
        graph: a.graph.edges.clone(),
        start_unix_nanos: 0,
        time_unix_nanos: 0,
    }
}

#[test]
fn http_server_spans_make_one_series_per_route_and_status() {
    let r = resource("shop");
    let mut a = Aggregator::new(100);
    let now = Instant::now();
    let mut spans = Vec::new();
    // 7 x 200 on /item/{id} (3, 30, 300 ms ...), 3 x 500.
    for (n, ms) in [3, 30, 300, 3, 3, 8, 2000].into_iter().enumerate() {
        spans.push(http_server(n as u8, &r, ms, "/item/{id}", 200));
    }
    for n in 0..3 {
        spans.push(http_server(10 + n, &r, 1, "/status/{id}", 500));
    }
    a.record(&spans, now);
    let t = &a.red.tables[0];
    assert_eq!(t.series().len(), 2);
    assert_eq!(
        attrs_of(t, 0),
        [
            "http.request.method=GET",
            "http.response.status_code=200",
            "http.route=/item/{id}",
            "network.protocol.version=1.1"
        ],
        "url.path and client.address are not metric attributes"
    );
    let h = &t.series()[0].value;
    assert_eq!(h.count, 7);
    // Bounds 0.005 0.01 0.025 0.05 0.075 0.1 0.25 0.5 0.75 1 2.5 ...
    assert_eq!(h.counts, [3, 1, 0, 1, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0, 0]);
    assert!((h.sum - 2.347).abs() < 1e-9, "{}", h.sum);
    assert_eq!(
        attrs_of(t, 1),
        [
            "http.request.method=GET",
            "http.response.status_code=500",
            "http.route=/status/{id}",
            "error.type=500",
            "network.protocol.version=1.1"
        ]
    );
    assert_eq!(t.series()[1].value.count, 3);
    assert_eq!(
        t.series()[1].resource.as_ref().unwrap().service_name(),
        "shop"
    );
    let s = a.stats();
    assert_eq!((s.spans, s.unmeasured, s.overflowed), (10, 0, 0));
}

#[test]
fn spans_pick_their_instrument_and_unit() {
    let r = resource("app");
    let mut a = Aggregator::new(100);
    let grpc = span(
        1,
        &r,
        SpanKind::Client,
        12,
        // As with OTEL_SEMCONV_STABILITY_OPT_IN=rpc/dup: the stable and the old names.
        vec![
            KeyValue::new("rpc.system.name", Value::text("grpc")),
            KeyValue::new("rpc.system", Value::text("grpc")),
            KeyValue::new("rpc.method", "pkg.Greeter/Hello"),
            KeyValue::new("rpc.service", "pkg.Greeter"),
            KeyValue::new("rpc.status_code", "OK"),
            KeyValue::new("rpc.grpc.status_code", 0i64),
            KeyValue::new("http.request.method", Value::text("POST")),
            KeyValue::new("server.address", "127.0.0.1"),
            KeyValue::new("server.port", 50051i64),
        ],
    );
    // The stable names only (the default).
    let grpc_server = span(
        4,
        &r,
        SpanKind::Server,
        30,
        vec![
            KeyValue::new("rpc.system.name", Value::text("grpc")),
            KeyValue::new("rpc.method", "pkg.Greeter/Hello"),
            KeyValue::new("rpc.status_code", "UNAVAILABLE"),
            KeyValue::new("error.type", "UNAVAILABLE"),
            KeyValue::new("server.address", "127.0.0.1"),
            KeyValue::new("server.port", 50051i64),
        ],
    );
    let db = span(
        2,
        &r,
        SpanKind::Client,
        4,
        vec![
            KeyValue::new("db.system.name", Value::text("postgresql")),
            KeyValue::new("db.operation.name", "SELECT"),
            KeyValue::new("db.query.text", "SELECT ?"),
            KeyValue::new("server.address", "127.0.0.1"),
        ],
    );
    let mut db_server = db.clone();
    db_server.kind = SpanKind::Server;
    let client = span(
        3,
        &r,
        SpanKind::Client,
        7,
        vec![
            KeyValue::new("http.request.method", Value::text("GET")),
            KeyValue::new("server.address", "example.com"),
            KeyValue::new("server.port", 80i64),
            KeyValue::new("http.response.status_code", 404i64),
        ],
    );
    a.record(&[grpc, db, db_server, client, grpc_server], Instant::now());
    let counts: Vec<usize> = a.red.tables.iter().map(|t| t.series().len()).collect();
    assert_eq!(counts, [0, 1, 1, 1, 1, 0, 1]);
    let names: Vec<&str> = INSTRUMENTS.iter().map(|i| i.name).collect();
    assert_eq!(
        names[2..4],
        ["rpc.server.call.duration", "rpc.client.call.duration"]
    );
    assert_eq!(names[5..], ["rpc.server.duration", "rpc.client.duration"]);
    // rpc.client.call.duration is in seconds: 0.012 in (0.01, 0.025].
    let rpc = &a.red.tables[3].series()[0];
    assert_eq!(rpc.value.counts[2], 1);
    assert_eq!(rpc.value.sum, 0.012);
    assert_eq!(
        attrs_of(&a.red.tables[3], 0),
        [
            "rpc.system.name=grpc",
            "rpc.method=pkg.Greeter/Hello",
            "rpc.status_code=OK",
            "server.address=127.0.0.1",
            "server.port=50051"
        ]
    );
    // The old rpc.client.duration (rpc/dup) is in milliseconds: 12 ms in (10, 25], with the
    // old attributes and the method without its service.
    let old = &a.red.tables[6].series()[0];
    assert_eq!(old.value.counts[3], 1);
    assert_eq!(old.value.sum, 12.0);
    assert_eq!(
        attrs_of(&a.red.tables[6], 0),
        [
            "rpc.system=grpc",
            "rpc.service=pkg.Greeter",
            "rpc.method=Hello",
            "rpc.grpc.status_code=0",
            "server.address=127.0.0.1",
            "server.port=50051"
        ]
    );
    // The server's: no server.address (opt-in there), 0.03 s in (0.025, 0.05].
    assert_eq!(a.red.tables[2].series()[0].value.counts[3], 1);
    assert_eq!(
        attrs_of(&a.red.tables[2], 0),
        [
            "rpc.system.name=grpc",
            "rpc.method=pkg.Greeter/Hello",
            "rpc.status_code=UNAVAILABLE",
            "error.type=UNAVAILABLE"
        ]
    );
    // db.client.operation.duration in seconds, 4 ms in (0.001, 0.005]; no query text.
    assert_eq!(a.red.tables[4].series()[0].value.counts[1], 1);
    assert_eq!(
        attrs_of(&a.red.tables[4], 0),
        [
            "db.system.name=postgresql",
            "db.operation.name=SELECT",
            "server.address=127.0.0.1"
        ]
    );
    assert_eq!(a.stats().unmeasured, 1, "the database server span");
}

fn edge(a: &Aggregator, client: &str, server: &str) -> Option<(String, Edge)> {
    a.graph.edges.series().iter().find_map(|s| {
        let get = |k: &str| {
            s.attributes
                .iter()
                .find(|kv| kv.key == k)
                .map(|kv| kv.value.to_string())
                .unwrap_or_default()
        };
        (get("client") == client && get("server") == server)
            .then(|| (get("connection_type"), s.value.clone()))
    })
}

#[test]
fn service_graph_pairs_client_and_server_spans_in_any_order() {
    let (front, back) = (resource("frontend"), resource("backend"));
    let mut a = Aggregator::new(100);
    let now = Instant::now();
    for i in 0..10u8 {
        let mut c = http_server(i, &front, 20, "/x", 200);
        c.kind = SpanKind::Client;
        c.trace_id = TraceId([i; 16]);
        c.span_id = SpanId([i; 8]);
        let mut s = http_server(100 + i, &back, 10, "/x", if i < 3 { 500 } else { 200 });
        s.trace_id = c.trace_id;
        s.parent_span_id = Some(c.span_id);
        // The server span usually ends (and comes) first; half the time the client's comes.
        if i % 2 == 0 {
            a.record(&[s, c], now);
        } else {
            a.record(&[c], now);
            a.record(&[s], now);
        }
    }
    let (ct, e) = edge(&a, "frontend", "backend").expect("edge");
    assert_eq!(ct, "");
    assert_eq!((e.total, e.failed), (10, 3));
    assert_eq!((e.client.count, e.server.count), (10, 10));
    // 20 ms client side in (0.01, 0.05], 10 ms server side in (0.008, 0.01].
    assert_eq!(e.client.counts[5], 10);
    assert_eq!(e.server.counts[4], 10);
    assert_eq!(a.graph.edges.series().len(), 1);
    assert_eq!(a.graph.waiting(), 0);
    assert_eq!(a.stats().edges_paired, 10);
}

#[test]
fn lone_sides_become_virtual_nodes_after_their_wait() {
    let (app, web) = (resource("app"), resource("web"));
    let mut a = Aggregator::new(100);
    let t0 = Instant::now();
    // A database call: no server span here.
    let db = span(
        1,
        &app,
        SpanKind::Client,
        5,
        vec![
            KeyValue::new("db.system.name", Value::text("postgresql")),
            KeyValue::new("db.namespace", "orders"),
            KeyValue::new("server.address", "10.1.1.1"),
        ],
    );
    // An HTTP call to another host.
    let mut out = http_server(2, &app, 50, "/", 503);
    out.kind = SpanKind::Client;
    out.attributes
        .push(KeyValue::new("server.address", "api.example.com"));
    // A server span whose parent is on another host, and a root server span.
    let mut remote = http_server(3, &web, 1, "/", 200);
    remote.parent_span_id = Some(SpanId([0xee; 8]));
    let root = http_server(4, &web, 1, "/", 200);
    a.record(&[db, out, remote, root], t0);
    // The root completes at once: nobody can be its client.
    assert_eq!(a.graph.edges.series().len(), 1);
    assert_eq!(edge(&a, "10.0.0.9", "web").unwrap().1.total, 1);
    a.graph.expire(t0 + EDGE_WAIT - Duration::from_millis(1));
    assert_eq!(a.graph.waiting(), 3);
    a.graph.expire(t0 + EDGE_WAIT);
    assert_eq!(a.graph.waiting(), 0);
    let (ct, e) = edge(&a, "app", "orders").expect("database edge");
    assert_eq!((ct.as_str(), e.total, e.failed), ("database", 1, 0));
    assert_eq!((e.client.count, e.server.count), (1, 1));
    let (ct, e) = edge(&a, "app", "api.example.com").expect("virtual server");
    assert_eq!((ct.as_str(), e.total, e.failed), ("virtual_node", 1, 1));
    let (ct, e) = edge(&a, "10.0.0.9", "web").expect("virtual client");
    assert_eq!((ct.as_str(), e.total), ("virtual_node", 2));
    assert_eq!(a.stats().edges_unpaired, 4);
}

#[test]
fn service_graph_edges_are_bounded() {
    let web = resource("web");
    let mut a = Aggregator::new(2);
    for i in 0..5u8 {
        let mut s = http_server(i, &web, 1, "/", 200);
        s.attributes[4] = KeyValue::new("client.address", format!("10.0.0.{i}"));
        a.record(&[s], Instant::now());
    }
    let series = a.graph.edges.series();
    assert_eq!(series.len(), 3);
    assert_eq!(attrs_of(&a.graph.edges, 2), ["otel.metric.overflow=true"]);
    assert_eq!(series[2].value.total, 3);
    assert_eq!(a.stats().overflowed, 3);
}

#[test]
fn prometheus_text_has_cumulative_buckets_sums_and_counts() {
    let shop = resource("shop");
    // A second process of the same service: its series add up with the first's.
    let shop2 = Arc::new(Resource {
        key: "pid:2".into(),
        attributes: vec![KeyValue::new("service.name", "shop")],
    });
    let mut a = Aggregator::new(100);
    let now = Instant::now();
    a.record(
        &[
            http_server(1, &shop, 3, "/a", 200),
            http_server(2, &shop2, 30, "/a", 200),
            http_server(3, &shop, 300, "/a\"b", 200),
        ],
        now,
    );
    let text = prometheus::render(&collected(&a));
    let l = "http_request_method=\"GET\",http_response_status_code=\"200\",http_route=\"/a\",network_protocol_version=\"1.1\"";
    let expect = format!(
        "# HELP http_server_request_duration_seconds Duration of HTTP server requests.\n\
         # TYPE http_server_request_duration_seconds histogram\n\
         http_server_request_duration_seconds_bucket{{service_name=\"shop\",{l},le=\"0.005\"}} 1\n\
         http_server_request_duration_seconds_bucket{{service_name=\"shop\",{l},le=\"0.01\"}} 1\n\
         http_server_request_duration_seconds_bucket{{service_name=\"shop\",{l},le=\"0.025\"}} 1\n\
         http_server_request_duration_seconds_bucket{{service_name=\"shop\",{l},le=\"0.05\"}} 2\n"
    );
    assert!(text.starts_with(&expect), "{text}");
    assert!(
        text.contains(&format!(
            "http_server_request_duration_seconds_bucket{{service_name=\"shop\",{l},le=\"+Inf\"}} 2\n\
             http_server_request_duration_seconds_sum{{service_name=\"shop\",{l}}} 0.033\n\
             http_server_request_duration_seconds_count{{service_name=\"shop\",{l}}} 2\n"
        )),
        "{text}"
    );
    assert!(text.contains("http_route=\"/a\\\"b\""), "{text}");
    // Three root server spans: a virtual edge from the client address.
    assert!(
        text.contains(
            "traces_service_graph_request_total{client=\"10.0.0.9\",server=\"shop\",connection_type=\"virtual_node\"} 3\n"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "traces_service_graph_request_failed_total{client=\"10.0.0.9\",server=\"shop\",connection_type=\"virtual_node\"} 0\n"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "traces_service_graph_request_server_seconds_count{client=\"10.0.0.9\",server=\"shop\",connection_type=\"virtual_node\"} 3\n"
        ),
        "{text}"
    );
    let _ = Histogram::new(&[]);
}

/// A process of `service` with its own pid: what the resource cache makes of a curl run.
fn process(service: &str, pid: i64) -> Arc<Resource> {
    Arc::new(Resource {
        key: format!("{pid}:1:0"),
        attributes: vec![
            KeyValue::new("service.name", service.to_owned()),
            KeyValue::new("service.instance.id", format!("host-{pid}-1")),
            KeyValue::new("process.pid", pid),
            KeyValue::new("process.executable.name", service.to_owned()),
            KeyValue::new("process.executable.path", format!("/usr/bin/{service}")),
            KeyValue::new("host.name", "host"),
        ],
    })
}

#[test]
fn processes_of_one_service_share_its_series() {
    let mut a = Aggregator::new(3);
    // 500 short-lived processes of one client, and one of another service: with one series
    // per process the cap of 3 would overflow at once.
    let spans: Vec<Span> = (0..500)
        .map(|pid| http_server(1, &process("curl", pid), 5, "/", 200))
        .chain(std::iter::once(http_server(
            2,
            &process("py", 9000),
            5,
            "/",
            200,
        )))
        .collect();
    a.record(&spans, Instant::now());
    let t = &a.red.tables[0];
    assert_eq!((t.overflowed, t.dropped), (0, 0));
    assert_eq!(t.series().len(), 2);
    let counts: Vec<(String, u64)> = t
        .series()
        .iter()
        .map(|s| {
            let r = s.resource.as_ref().expect("a process resource");
            (r.service_name().to_owned(), s.value.count)
        })
        .collect();
    assert_eq!(counts, [("curl".to_owned(), 500), ("py".to_owned(), 1)]);
    // The series' resource names the service and host, not one of its processes.
    let keys: Vec<&str> = t.series()[0]
        .resource
        .as_ref()
        .expect("resource")
        .attributes
        .iter()
        .map(|kv| kv.key.as_ref())
        .collect();
    assert_eq!(
        keys,
        ["service.name", "process.executable.name", "host.name"]
    );
}

/// The span of an unreadable TLS connection is a connection, not a request: no duration
/// series, no service-graph request, counted as unmeasured.
#[test]
fn opaque_tls_connection_spans_are_not_requests() {
    let (front, back) = (resource("frontend"), resource("backend"));
    let mut a = Aggregator::new(100);
    let now = Instant::now();
    let mut c = span(1, &front, SpanKind::Client, 20, Vec::new());
    c.scope = crate::protocol::opaque_tls::SCOPE;
    let mut s = span(2, &back, SpanKind::Server, 10, Vec::new());
    s.scope = crate::protocol::opaque_tls::SCOPE;
    s.trace_id = c.trace_id;
    s.parent_span_id = Some(c.span_id);
    a.record(&[c, s], now);
    let stats = a.stats();
    assert_eq!((stats.spans, stats.unmeasured), (2, 2));
    assert_eq!(a.graph.waiting(), 0);
    assert!(a.graph.edges.series().is_empty());
    assert!(a.red.tables.iter().all(|t| t.series().is_empty()));
}
