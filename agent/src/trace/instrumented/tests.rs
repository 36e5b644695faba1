use std::{net::SocketAddr, sync::Arc};

use super::*;
use crate::trace::{
    context::HeaderContext,
    link::{Actor, ExchangeLink, LinkConfig, Linker, PeerDisc},
    span::{Resource, Status, TraceId},
};

const SDK: u32 = 100;
const DOWN: u32 = 200;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn resource(pid: u32) -> Arc<Resource> {
    Arc::new(Resource {
        key: pid.to_string(),
        attributes: vec![KeyValue::new("process.pid", i64::from(pid))],
    })
}

fn span(pid: u32, kind: SpanKind, attrs: &[(&'static str, &str)]) -> Span {
    Span {
        trace_id: TraceId::random(),
        span_id: SpanId::random(),
        parent_span_id: None,
        trace_state: String::new(),
        parent_sampled: None,
        name: "s".into(),
        kind,
        start_unix_nanos: 1,
        end_unix_nanos: 2,
        attributes: attrs.iter().map(|(k, v)| KeyValue::new(*k, *v)).collect(),
        status: Status::Unset,
        resource: resource(pid),
        scope: "test",
        links: Vec::new(),
    }
}

fn header(parent: u8) -> HeaderContext {
    HeaderContext {
        trace_id: TraceId([7; 16]),
        parent_id: SpanId([parent; 8]),
        trace_state: "congo=t61rcWkgMzE".into(),
        sampled: true,
    }
}

/// The addresses of one end of connection `c` (both ends on this host).
fn ends(side: Side, c: u64) -> (SocketAddr, SocketAddr) {
    let (client, server) = (
        addr(&format!("127.0.0.1:{}", 40000 + c)),
        addr(&format!("127.0.0.1:{}", 8000 + c)),
    );
    match side {
        Side::Client => (client, server),
        Side::Server => (server, client),
    }
}

/// A request on socket `sk`: its connection is `sk / 2` (client sk 2n, server sk 2n + 1).
fn request(
    sk: u64,
    ts: u64,
    tid: u32,
    side: Side,
    header: Option<HeaderContext>,
    injected: Option<(TraceId, SpanId)>,
) -> LinkEvent {
    let (local, peer) = ends(side, sk / 2);
    LinkEvent::Http1Request {
        key: (sk, ts),
        actor: Actor::Thread(tid),
        side,
        local,
        peer,
        peer_linkable: true,
        turn: 0,
        header,
        kernel_trace: None,
        injected,
    }
}

/// The same request from a client on another host (no same-host peer to wait for).
fn remote(mut ev: LinkEvent) -> LinkEvent {
    if let LinkEvent::Http1Request { peer_linkable, .. } = &mut ev {
        *peer_linkable = false;
    }
    ev
}

#[test]
fn span_export_requests_are_recognised() {
    let export = |attrs: &[(&'static str, &str)]| is_span_export(&span(1, SpanKind::Client, attrs));
    assert!(export(&[
        ("http.request.method", "POST"),
        ("url.full", "http://127.0.0.1:4318/v1/traces")
    ]));
    assert!(export(&[
        ("http.request.method", "POST"),
        ("url.full", "https://zipkin:9411/api/v2/spans?x=1")
    ]));
    assert!(export(&[(
        "rpc.method",
        "opentelemetry.proto.collector.trace.v1.TraceService/Export"
    )]));
    assert!(export(&[(
        "rpc.method_original",
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
    )]));
    // Metrics and logs are not spans; a GET of the path is not an export; other paths neither.
    assert!(!export(&[
        ("http.request.method", "POST"),
        ("url.full", "http://c:4318/v1/metrics")
    ]));
    assert!(!export(&[
        ("http.request.method", "GET"),
        ("url.full", "http://c:4318/v1/traces")
    ]));
    assert!(!export(&[
        ("http.request.method", "POST"),
        ("url.full", "http://c:4318/api/v1/traces/x")
    ]));
    assert!(!export(&[(
        "rpc.method",
        "opentelemetry.proto.collector.metrics.v1.MetricsService/Export"
    )]));
}

#[test]
fn a_process_exporting_spans_is_detected_and_not_its_collector() {
    let mut d = Instrumented::new(InstrumentedMode::Skip);
    let attrs = [
        ("http.request.method", "POST"),
        ("url.full", "http://127.0.0.1:4318/v1/traces"),
    ];
    // The collector's side of the export: a server span, not a tracer.
    d.on_span(DOWN, &span(DOWN, SpanKind::Server, &attrs), true);
    assert!(!d.is_detected(DOWN));
    d.on_span(SDK, &span(SDK, SpanKind::Client, &[]), true);
    d.on_span(SDK, &span(SDK, SpanKind::Client, &attrs), true);
    assert!(d.is_detected(SDK));
    let s = d.stats();
    assert_eq!((s.detected_export, s.detected_own_context), (1, 0));
    // The plain span made before was exported as any other; the export itself was not.
    assert_eq!(s.spans_before_detection, 1);
    assert_eq!(d.detected(), 1);
    d.exited(SDK);
    assert!(!d.is_detected(SDK));
    assert_eq!(d.detected(), 0);
}

#[test]
fn own_context_while_serving_detects_at_once() {
    let mut d = Instrumented::new(InstrumentedMode::Link);
    let pid = Some(SDK);
    d.on_link(request(1, 10, 5, Side::Server, None, None), pid);
    d.on_link(request(2, 11, 5, Side::Client, Some(header(1)), None), pid);
    assert!(d.is_detected(SDK));
    assert_eq!(d.stats().detected_own_context, 1);
}

#[test]
fn a_repeated_hand_written_header_is_not_a_tracer_but_two_different_ones_are() {
    let mut d = Instrumented::new(InstrumentedMode::Skip);
    let pid = Some(SDK);
    // Outside a served request: one header, then the same one again (a script, curl -H).
    for ts in [10, 20] {
        d.on_link(request(1, ts, 5, Side::Client, Some(header(1)), None), pid);
    }
    assert!(!d.is_detected(SDK));
    // A new parent id: a span per call, as a tracer makes them.
    d.on_link(request(1, 30, 5, Side::Client, Some(header(2)), None), pid);
    assert!(d.is_detected(SDK));
}

#[test]
fn headers_the_kernel_injected_or_the_process_forwarded_are_not_its_own() {
    let mut d = Instrumented::new(InstrumentedMode::Skip);
    let pid = Some(SDK);
    // Kernel-injected: no header in the captured bytes, ids in `injected`.
    let ids = Some((TraceId([1; 16]), SpanId([2; 8])));
    d.on_link(request(1, 10, 5, Side::Client, None, ids), pid);
    // A proxy: it received the context and passes it on while serving.
    d.on_link(request(2, 20, 6, Side::Server, Some(header(3)), None), pid);
    d.on_link(request(3, 21, 6, Side::Client, Some(header(3)), None), pid);
    d.on_link(
        LinkEvent::ServerResponse {
            sk: 2,
            actor: Actor::Thread(6),
        },
        pid,
    );
    d.on_link(request(2, 30, 6, Side::Server, Some(header(4)), None), pid);
    d.on_link(request(3, 31, 6, Side::Client, Some(header(4)), None), pid);
    assert!(!d.is_detected(SDK));
    assert_eq!(d.stats().forwarded_context, 2);
    // Another process writing the id it did not receive is a tracer.
    d.on_link(request(4, 40, 7, Side::Server, None, None), Some(DOWN));
    d.on_link(
        request(5, 41, 7, Side::Client, Some(header(4)), None),
        Some(DOWN),
    );
    assert!(d.is_detected(DOWN));
}

#[test]
fn http2_context_written_by_the_process_counts_like_http1() {
    let mut d = Instrumented::new(InstrumentedMode::Skip);
    let with_parent = |p: u8| {
        let mut s = span(SDK, SpanKind::Client, &[("rpc.method", "a.B/C")]);
        s.parent_span_id = Some(SpanId([p; 8]));
        s
    };
    d.on_span(SDK, &with_parent(1), false);
    d.on_span(SDK, &with_parent(1), false);
    assert!(!d.is_detected(SDK));
    d.on_span(SDK, &with_parent(2), false);
    assert!(d.is_detected(SDK));
}

/// What the pipeline does: link events and spans through `Instrumented`, then the linker.
struct Run {
    d: Instrumented,
    l: Linker,
    out: Vec<Span>,
}

impl Run {
    fn new(mode: InstrumentedMode) -> Self {
        Self {
            d: Instrumented::new(mode),
            l: Linker::new(LinkConfig::default()),
            out: Vec::new(),
        }
    }
    fn event(&mut self, ev: LinkEvent, pid: u32) {
        let ev = self.d.on_link(ev, Some(pid));
        self.l.on_event(ev);
    }
    fn done(&mut self, pid: u32, sk: u64, ts: u64, side: Side, s: Span) {
        self.d.on_span(pid, &s, true);
        let (local, peer) = ends(side, sk / 2);
        self.l.on_span(
            s,
            ExchangeLink {
                sk,
                start_ns: ts,
                side,
                local,
                peer,
                http1: true,
                peer_linkable: sk != 1,
                disc: None::<PeerDisc>,
            },
        );
        let mut ready = self.l.take_ready();
        self.d.apply(&mut ready);
        self.out.extend(ready);
    }
}

/// The SDK process serves a request (sk 1) and calls the downstream on this host (sk 2, whose
/// server end is sk 3) with its own header; the downstream answers first.
fn sdk_call(mode: InstrumentedMode) -> Run {
    let mut r = Run::new(mode);
    r.event(
        remote(request(1, 10, 5, Side::Server, Some(header(9)), None)),
        SDK,
    );
    r.event(request(2, 20, 5, Side::Client, Some(header(1)), None), SDK);
    r.event(request(3, 21, 8, Side::Server, Some(header(1)), None), DOWN);
    r.done(DOWN, 3, 21, Side::Server, span(DOWN, SpanKind::Server, &[]));
    r.done(SDK, 2, 20, Side::Client, span(SDK, SpanKind::Client, &[]));
    r.done(SDK, 1, 10, Side::Server, span(SDK, SpanKind::Server, &[]));
    r
}

#[test]
fn skip_exports_nothing_of_the_process_and_its_peer_is_the_child_of_the_sdk_span() {
    let r = sdk_call(InstrumentedMode::Skip);
    assert_eq!(r.out.len(), 1, "{:?}", r.out);
    let down = &r.out[0];
    assert_eq!(span_pid(down), Some(DOWN));
    // The SDK's client span (the header's parent id) is the parent, in the SDK's trace, with
    // the tracestate it sent.
    assert_eq!(down.parent_span_id, Some(SpanId([1; 8])));
    assert_eq!(down.trace_id, TraceId([7; 16]));
    assert_eq!(down.trace_state, "congo=t61rcWkgMzE");
    assert_eq!(down.parent_sampled, Some(true));
    let s = r.d.stats();
    assert_eq!(s.spans_skipped, 2);
    assert_eq!(s.detected_own_context, 1);
    assert_eq!(s.spans_before_detection, 0);
    // Not a kernel injection.
    assert_eq!(r.l.stats().injected, 0);
}

#[test]
fn link_exports_both_marked_and_keeps_socktrace_spans_in_the_sdk_trace() {
    let r = sdk_call(InstrumentedMode::Link);
    assert_eq!(r.out.len(), 3);
    let by = |pid, kind| {
        r.out
            .iter()
            .find(|s| span_pid(s) == Some(pid) && s.kind == kind)
            .unwrap()
    };
    let (down, client, server) = (
        by(DOWN, SpanKind::Server),
        by(SDK, SpanKind::Client),
        by(SDK, SpanKind::Server),
    );
    let marked = |s: &Span| s.attributes.iter().any(|kv| kv.key == INSTRUMENTED_ATTR);
    assert!(marked(client) && marked(server) && !marked(down));
    // socktrace's client span is the child of the SDK's client span, the downstream server
    // span the child of socktrace's client span: one trace, the SDK's.
    assert_eq!(client.parent_span_id, Some(SpanId([1; 8])));
    assert_eq!(down.parent_span_id, Some(client.span_id));
    // The server span continues the incoming context, as the SDK's server span does.
    assert_eq!(server.parent_span_id, Some(SpanId([9; 8])));
    for s in [down, client, server] {
        assert_eq!(s.trace_id, TraceId([7; 16]));
        assert_eq!(s.trace_state, "congo=t61rcWkgMzE");
    }
    assert_eq!(r.d.stats().spans_marked, 2);
}

#[test]
fn a_child_of_a_skipped_span_takes_its_parent() {
    let mut d = Instrumented::new(InstrumentedMode::Skip);
    let mut attrs = span(SDK, SpanKind::Client, &[("http.request.method", "POST")]);
    attrs
        .attributes
        .push(KeyValue::new("url.full", "http://c/v1/traces"));
    d.on_span(SDK, &attrs, true);
    let mut skipped = span(SDK, SpanKind::Client, &[]);
    skipped.parent_span_id = Some(SpanId([3; 8]));
    let mut child = span(DOWN, SpanKind::Server, &[]);
    child.parent_span_id = Some(skipped.span_id);
    let mut batch = vec![skipped, child];
    d.apply(&mut batch);
    assert_eq!(batch.len(), 1);
    assert_eq!(batch[0].parent_span_id, Some(SpanId([3; 8])));
    assert_eq!(d.stats().reparented, 1);
}
