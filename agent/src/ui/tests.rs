use std::sync::Arc;

use super::{
    MAX_BACKLOG, Ui,
    server::{PAGE, allowed_host, respond},
    store::{Filter, Limits, Store},
};
use crate::{
    telemetry::Snapshot,
    trace::span::{KeyValue, Resource, Span, SpanId, SpanKind, Status, TraceId},
};

fn resource(service: &str) -> Arc<Resource> {
    Arc::new(Resource {
        key: format!("svc:{service}"),
        attributes: vec![KeyValue::new("service.name", service)],
    })
}

/// A span of trace `t`, id `id`, from `start_ms` to `end_ms` (after 1 s since the epoch).
fn span(
    t: u8,
    id: u8,
    parent: Option<u8>,
    service: &str,
    kind: SpanKind,
    start_ms: u64,
    end_ms: u64,
) -> Span {
    let mut s = Span::for_test(id, &resource(service), "socktrace.test");
    s.trace_id = TraceId([t; 16]);
    s.span_id = SpanId([id; 8]);
    s.parent_span_id = parent.map(|p| SpanId([p; 8]));
    s.kind = kind;
    s.name = format!("{service}-{id}");
    s.start_unix_nanos = 1_000_000_000 + start_ms * 1_000_000;
    s.end_unix_nanos = 1_000_000_000 + end_ms * 1_000_000;
    s
}

fn failed(mut s: Span) -> Span {
    s.status = Status::Error {
        message: "boom".into(),
    };
    s
}

fn with(mut s: Span, key: &'static str, value: &str) -> Span {
    s.attributes.push(KeyValue::new(key, value));
    s
}

/// curl -> api -> db-service: one request through two services.
fn chain(t: u8, start: u64) -> Vec<Span> {
    vec![
        span(t, 1, None, "curl", SpanKind::Client, start, start + 10),
        span(t, 2, Some(1), "api", SpanKind::Server, start + 1, start + 9),
        span(t, 3, Some(2), "api", SpanKind::Client, start + 2, start + 5),
        span(
            t,
            4,
            Some(3),
            "users",
            SpanKind::Server,
            start + 3,
            start + 4,
        ),
        span(t, 5, Some(2), "api", SpanKind::Client, start + 6, start + 8),
    ]
}

fn all() -> Filter {
    Filter {
        limit: usize::MAX,
        ..Filter::default()
    }
}

fn ids(store: &Store, f: &Filter) -> Vec<String> {
    store.list(f).into_iter().map(|t| t.trace_id).collect()
}

fn hex(t: u8) -> String {
    TraceId([t; 16]).to_string()
}

#[test]
fn spans_are_grouped_by_trace_and_summarized() {
    let mut store = Store::new(Limits::default());
    // Spans of two traces, interleaved and out of order.
    let mut a = chain(1, 0);
    let b = chain(2, 100);
    a.reverse();
    store.insert(a.into_iter().zip(b).flat_map(|(x, y)| [x, y]));
    assert_eq!((store.traces(), store.spans()), (2, 10));
    let list = store.list(&all());
    assert_eq!(list.len(), 2);
    // Newest first.
    assert_eq!(list[0].trace_id, hex(2));
    let t = &list[1];
    assert_eq!(t.trace_id, hex(1));
    assert_eq!(
        (t.root_service.as_str(), t.root_name.as_str()),
        ("curl", "curl-1")
    );
    assert_eq!(t.entry.as_deref(), Some("api api-2"));
    assert_eq!(t.services, ["curl", "api", "users"]);
    assert_eq!((t.spans, t.errors, t.status), (5, 0, "ok"));
    assert_eq!(t.duration_ns, 10_000_000);
    assert_eq!(t.start_unix_ms, 1_000);
    assert_eq!(store.services(), ["api", "curl", "users"]);
}

#[test]
fn filters_by_service_status_and_duration() {
    let mut store = Store::new(Limits::default());
    store.insert(chain(1, 0));
    // A failed call of another service, 50 ms.
    store.insert([failed(span(
        2,
        1,
        None,
        "billing",
        SpanKind::Server,
        20,
        70,
    ))]);
    // A quick one of curl alone, 1 ms.
    store.insert([span(3, 1, None, "curl", SpanKind::Client, 30, 31)]);
    let f = |service: Option<&str>, error: Option<bool>, min_ms: u64| Filter {
        service: service.map(str::to_owned),
        error,
        min_duration_ns: min_ms * 1_000_000,
        limit: 100,
    };
    assert_eq!(ids(&store, &f(None, None, 0)), [hex(3), hex(2), hex(1)]);
    // Any span's service, a part of the name, any case.
    assert_eq!(ids(&store, &f(Some("USER"), None, 0)), [hex(1)]);
    assert_eq!(ids(&store, &f(Some("curl"), None, 0)), [hex(3), hex(1)]);
    assert_eq!(
        ids(&store, &f(Some(" "), None, 0)),
        [hex(3), hex(2), hex(1)]
    );
    assert_eq!(ids(&store, &f(None, Some(true), 0)), [hex(2)]);
    assert_eq!(ids(&store, &f(None, Some(false), 0)), [hex(3), hex(1)]);
    assert_eq!(ids(&store, &f(None, None, 10)), [hex(2), hex(1)]);
    assert_eq!(ids(&store, &f(None, None, 11)), [hex(2)]);
    assert_eq!(ids(&store, &f(Some("curl"), Some(false), 5)), [hex(1)]);
    assert!(ids(&store, &f(Some("nope"), None, 0)).is_empty());
    let limited = Filter { limit: 2, ..all() };
    assert_eq!(ids(&store, &limited), [hex(3), hex(2)]);
    let t = &store.list(&f(None, Some(true), 0))[0];
    assert_eq!((t.errors, t.status), (1, "error"));
}

#[test]
fn the_oldest_traces_go_first_when_a_bound_is_passed() {
    let limits = Limits {
        max_traces: 3,
        max_spans: 8,
        max_spans_per_trace: 6,
    };
    let mut store = Store::new(limits);
    for t in 1..=3 {
        store.insert([span(t, 1, None, "a", SpanKind::Server, 0, 1)]);
    }
    assert_eq!(store.traces(), 3);
    // A fourth trace: the trace bound evicts the first.
    store.insert([span(4, 1, None, "a", SpanKind::Server, 0, 1)]);
    assert_eq!(ids(&store, &all()).len(), 3);
    assert!(!ids(&store, &all()).contains(&hex(1)));
    assert_eq!(
        (store.stats.traces_evicted, store.stats.spans_evicted),
        (1, 1)
    );
    // A late span of trace 2 does not make it younger: arrival order of the first span.
    store.insert([span(2, 2, Some(1), "a", SpanKind::Client, 0, 1)]);
    // Trace 5 with 5 spans: 3 + 1 + 5 = 9 spans > 8, so trace 2 (2 spans) goes, then 7 fit.
    store.insert((1..=5).map(|i| span(5, i, None, "b", SpanKind::Server, 0, 1)));
    let mut left = ids(&store, &all());
    left.sort();
    assert_eq!(left, [hex(3), hex(4), hex(5)]);
    assert_eq!(store.spans(), 7);
    assert_eq!(
        (store.stats.traces_evicted, store.stats.spans_evicted),
        (2, 3)
    );
    // One trace may hold 6 spans: the 7th is dropped, not stored.
    store.insert((6..=7).map(|i| span(5, i, None, "b", SpanKind::Server, 0, 1)));
    assert_eq!(store.stats.spans_dropped, 1);
    assert_eq!(
        store
            .list(&all())
            .iter()
            .find(|t| t.trace_id == hex(5))
            .map(|t| t.spans),
        Some(6)
    );
    assert_eq!((store.traces(), store.spans()), (3, 8));
    assert_eq!(store.stats.spans_stored, 3 + 1 + 1 + 5 + 1);
    // Past the span bound: the oldest go, whole, however small.
    store.insert([span(6, 1, None, "c", SpanKind::Server, 0, 1)]);
    let mut left = ids(&store, &all());
    left.sort();
    assert_eq!(left, [hex(4), hex(5), hex(6)]);
    assert_eq!((store.traces(), store.spans()), (3, 8));
}

#[test]
fn a_waterfall_nests_children_under_parents_in_start_order() {
    let mut store = Store::new(Limits::default());
    let mut spans = chain(1, 0);
    spans.reverse();
    // A span whose parent is on another host, starting in the middle.
    spans.push(span(1, 9, Some(77), "worker", SpanKind::Server, 4, 6));
    spans[0] = failed(spans[0].clone());
    spans[2] = with(spans[2].clone(), "url.full", "http://users:8080/u/1");
    store.insert(spans);
    let w = store.waterfall(&TraceId([1; 16])).expect("stored");
    assert_eq!(w.trace_id, hex(1));
    assert_eq!(w.duration_ns, 10_000_000);
    let rows: Vec<(String, usize, u64)> = w
        .spans
        .iter()
        .map(|s| (s.name.clone(), s.depth, s.offset_ns / 1_000_000))
        .collect();
    assert_eq!(
        rows,
        [
            ("curl-1".to_owned(), 0, 0),
            ("api-2".to_owned(), 1, 1),
            ("api-3".to_owned(), 2, 2),
            ("users-4".to_owned(), 3, 3),
            ("api-5".to_owned(), 2, 6),
            ("worker-9".to_owned(), 0, 4),
        ]
    );
    let api5 = &w.spans[4];
    assert_eq!(
        api5.parent_span_id.as_deref(),
        Some(&*SpanId([2; 8]).to_string())
    );
    assert_eq!(
        (api5.kind, api5.status, api5.duration_ns),
        ("client", "error", 2_000_000)
    );
    assert_eq!(api5.status_message, "boom");
    assert_eq!(w.spans[5].parent_span_id, Some(SpanId([77; 8]).to_string()));
    assert_eq!(w.spans[0].status, "unset");
    assert_eq!(w.spans[2].detail, "http://users:8080/u/1");
    assert_eq!(
        w.spans[3].detail, "",
        "server spans are named by their route"
    );
    assert!(store.waterfall(&TraceId([2; 16])).is_none());
    // Spans pointing at each other (ids reused) are shown, not lost.
    let mut store = Store::new(Limits::default());
    store.insert([
        span(3, 1, Some(2), "x", SpanKind::Server, 0, 5),
        span(3, 2, Some(1), "x", SpanKind::Client, 1, 2),
    ]);
    let w = store.waterfall(&TraceId([3; 16])).expect("stored");
    assert_eq!(w.spans.len(), 2);
    assert_eq!((w.spans[0].depth, w.spans[1].depth), (0, 1));
}

#[test]
fn the_service_map_pairs_clients_with_their_servers() {
    let mut store = Store::new(Limits::default());
    store.insert(chain(1, 0));
    store.insert(chain(2, 100));
    // Trace 3: the api -> users call failed on the server side.
    let mut c = chain(3, 200);
    c[3] = failed(c[3].clone());
    store.insert(c);
    // A client whose server is not traced, and a server called from outside.
    store.insert([with(
        span(4, 1, None, "api", SpanKind::Client, 0, 4),
        "server.address",
        "example.org",
    )]);
    store.insert([with(
        span(5, 1, None, "users", SpanKind::Server, 0, 2),
        "client.address",
        "10.1.2.3",
    )]);
    // A database call without the database's own span.
    let db = with(
        with(
            span(6, 1, None, "api", SpanKind::Client, 0, 1),
            "db.system.name",
            "postgresql",
        ),
        "db.namespace",
        "shop",
    );
    store.insert([db]);
    let map = store.service_map();
    let edges: Vec<(String, String, &str, u64, u64)> = map
        .edges
        .iter()
        .map(|e| {
            (
                e.client.clone(),
                e.server.clone(),
                e.connection_type,
                e.requests,
                e.errors,
            )
        })
        .collect();
    let e = |c: &str, s: &str, t: &'static str, n, f| (c.to_owned(), s.to_owned(), t, n, f);
    assert_eq!(
        edges,
        [
            e("10.1.2.3", "users", "virtual_node", 1, 0),
            // The api's second call (span 5) has no server span: a virtual node.
            e("api", "example.org", "virtual_node", 1, 0),
            e("api", "shop", "database", 1, 0),
            e("api", "unknown", "virtual_node", 3, 0),
            e("api", "users", "", 3, 1),
            e("curl", "api", "", 3, 0),
        ]
    );
    let curl_api = &map.edges[5];
    // Client durations: 10 ms each, over 210 ms: at least a second of window.
    assert!((curl_api.mean_ms - 10.0).abs() < 1e-9, "{curl_api:?}");
    assert_eq!((curl_api.p50_ms, curl_api.p99_ms), (10.0, 10.0));
    assert!((curl_api.rate_per_s - 3.0).abs() < 1e-9, "{curl_api:?}");
    let nodes: Vec<(&str, &str)> = map
        .nodes
        .iter()
        .map(|n| (n.name.as_str(), n.kind))
        .collect();
    assert_eq!(
        nodes,
        [
            ("10.1.2.3", "virtual"),
            ("api", "service"),
            ("curl", "service"),
            ("example.org", "virtual"),
            ("shop", "database"),
            ("unknown", "virtual"),
            ("users", "service"),
        ]
    );
}

#[test]
fn percentiles_are_nearest_rank() {
    let mut store = Store::new(Limits::default());
    for (t, ms) in (1u8..=100).zip(1u64..=100) {
        store.insert([span(t, 1, None, "a", SpanKind::Server, 0, ms)]);
    }
    let map = store.service_map();
    let e = &map.edges[0];
    assert_eq!((e.client.as_str(), e.server.as_str()), ("unknown", "a"));
    assert_eq!((e.requests, e.p50_ms, e.p99_ms), (100, 50.0, 99.0));
    assert!((e.mean_ms - 50.5).abs() < 1e-9);
}

#[test]
fn the_feed_never_waits_for_a_reader() {
    let ui = Ui::new(Limits::default());
    let mut feed = ui.feed();
    {
        // A reader holds the store: spans wait in the backlog.
        let _busy = ui.0.lock().expect("lock");
        feed.offer(&chain(1, 0));
        assert_eq!(feed.backlog(), 5);
        let many: Vec<Span> = (0..MAX_BACKLOG)
            .map(|i| span(2, (i % 200) as u8 + 1, None, "b", SpanKind::Server, 0, 1))
            .collect();
        feed.offer(&many);
        assert_eq!(feed.backlog(), MAX_BACKLOG);
    }
    // Free again: the next call (even without spans) stores what waited.
    feed.offer(&[]);
    assert_eq!(feed.backlog(), 0);
    let mut s = Snapshot::default();
    feed.collect(&mut s);
    // The 5 oldest left the full backlog; one trace keeps at most 1000 spans.
    assert_eq!(s.get("ui", "spans_dropped"), Some(5 + 9_000));
    assert_eq!(s.get("ui", "spans_stored"), Some(1_000));
    assert_eq!(s.get("ui", "traces"), Some(1));
    assert_eq!(s.get("ui", "spans"), Some(1_000));
    assert_eq!(ui.size(), (1, 1_000));
}

fn get(ui: &Ui, target: &str) -> (String, String) {
    let head = format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1:9412\r\n\r\n");
    let r = String::from_utf8(respond(head.as_bytes(), ui)).expect("utf-8");
    let (head, body) = r.split_once("\r\n\r\n").expect("head");
    (
        head.lines().next().unwrap_or_default().to_owned(),
        body.to_owned(),
    )
}

#[test]
fn the_api_answers_json() {
    let ui = Ui::default();
    ui.feed().offer(&chain(1, 0));
    ui.feed().offer(&[failed(span(
        2,
        1,
        None,
        "billing",
        SpanKind::Server,
        50,
        60,
    ))]);
    let (status, body) = get(&ui, "/api/traces?status=error");
    assert_eq!(status, "HTTP/1.1 200 OK");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["traces"].as_array().map(Vec::len), Some(1));
    assert_eq!(v["traces"][0]["trace_id"], hex(2));
    assert_eq!(v["traces"][0]["status"], "error");
    assert_eq!(v["stored"]["traces"], 2);
    assert_eq!(v["stored"]["spans"], 6);
    assert_eq!(
        v["services"],
        serde_json::json!(["api", "billing", "curl", "users"])
    );
    let (_, body) = get(&ui, "/api/traces?service=api&min_ms=9.5&limit=5");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["traces"][0]["trace_id"], hex(1));
    assert_eq!(v["traces"][0]["duration_ns"], 10_000_000);
    let (_, body) = get(&ui, &format!("/api/traces/{}", hex(1).to_uppercase()));
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["spans"].as_array().map(Vec::len), Some(5));
    assert_eq!(v["spans"][3]["depth"], 3);
    assert_eq!(v["spans"][3]["service"], "users");
    let (status, _) = get(&ui, &format!("/api/traces/{}", hex(9)));
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    let (_, body) = get(&ui, "/api/map");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["edges"][0]["client"], "api");
    let (status, body) = get(&ui, "/");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(body, PAGE);
    for bad in [
        "/api/traces?status=maybe",
        "/api/traces?min_ms=-1",
        "/api/traces?limit=x",
    ] {
        assert_eq!(get(&ui, bad).0, "HTTP/1.1 400 Bad Request", "{bad}");
    }
    assert_eq!(get(&ui, "/api/nope").0, "HTTP/1.1 404 Not Found");
    assert_eq!(get(&ui, "/api/traces/xyz").0, "HTTP/1.1 404 Not Found");
    let post = respond(b"POST / HTTP/1.1\r\n\r\n", &ui);
    assert!(post.starts_with(b"HTTP/1.1 405 "));
    assert!(respond(b"\x16\x03\x01", &ui).starts_with(b"HTTP/1.1 400 "));
    let rebound = respond(
        b"GET /api/map HTTP/1.1\r\nHost: evil.example:9412\r\n\r\n",
        &ui,
    );
    assert!(rebound.starts_with(b"HTTP/1.1 403 "));
}

#[test]
fn only_addresses_and_localhost_are_hosts() {
    for ok in [
        "127.0.0.1:9412",
        "localhost:80",
        "LOCALHOST",
        "[::1]:9412",
        "10.0.0.1",
        "::1",
    ] {
        assert!(allowed_host(ok), "{ok}");
    }
    for bad in [
        "evil.example",
        "evil.example:9412",
        "127.0.0.1.nip.io",
        "[::1",
        "",
    ] {
        assert!(!allowed_host(bad), "{bad}");
    }
}

/// The page needs nothing from elsewhere: no URL but its own API.
#[test]
fn the_page_is_self_contained() {
    // The SVG namespace is a name, not a fetch.
    let page = PAGE.replace("\"http://www.w3.org/2000/svg\"", "");
    for outside in [
        "http://", "https://", "//cdn", "<link", "src=", "@import", "url(http",
    ] {
        assert!(!page.contains(outside), "the page refers to {outside}");
    }
    assert!(PAGE.contains("fetch("));
    for api in ["/api/traces", "/api/map"] {
        assert!(PAGE.contains(api), "{api}");
    }
}
