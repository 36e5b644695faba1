//! Whole traces on one host, as root: `curl` -> service A (threaded Python HTTP server) ->
//! service B (the same, calling PostgreSQL with pg8000) -> a real PostgreSQL server. None of
//! them has tracing code; the agent links every span from what it sees on the sockets.

use std::{
    collections::HashMap,
    process::{Command, Stdio},
};

use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use socktrace_tests::{
    harness::{Agent, ChildGuard, PyServer, curl, exact, python, require_root},
    otlp_receiver::{OtlpReceiver, Protocol, ReceivedSpan},
    pg::PgServer,
};

struct Chain {
    receiver: OtlpReceiver,
    a: PyServer,
    _b: PyServer,
    _pg: PgServer,
    _agent: Agent,
}

fn chain(extra: &[&str]) -> Chain {
    require_root();
    let receiver = OtlpReceiver::start_blocking(Protocol::Grpc);
    let pg = PgServer::start("shop");
    let py = python();
    let pg_port = pg.port.to_string();
    let b = PyServer::start_peer_args(
        &py,
        "chain_service.py",
        &["pg", &pg_port, "shop"],
        &[("OTEL_SERVICE_NAME", "svc-b")],
    );
    let a = PyServer::start_peer_args(
        &py,
        "chain_service.py",
        &["http", &b.url("")],
        &[("OTEL_SERVICE_NAME", "svc-a")],
    );
    let endpoint = receiver.endpoint();
    let ports = format!("{},{},{}", a.port, b.port, pg.port);
    let mut args = vec![
        "--otlp-endpoint",
        endpoint.as_str(),
        "--otlp-protocol",
        "grpc",
        "--port",
        ports.as_str(),
    ];
    args.extend_from_slice(extra);
    let agent = Agent::start(&args);
    Chain {
        receiver,
        a,
        _b: b,
        _pg: pg,
        _agent: agent,
    }
}

fn service(s: &ReceivedSpan) -> &str {
    s.resource_str("service.name").unwrap_or("?")
}

/// The six spans of one request, in chain order: curl client, A server, A client, B server,
/// B client (PostgreSQL), PostgreSQL server. Panics with the trace if one is missing or extra.
fn in_chain_order(trace: &[ReceivedSpan]) -> Vec<ReceivedSpan> {
    let dump = || trace.iter().map(|s| format!("  {s}\n")).collect::<String>();
    let pick = |svc: &str, kind: SpanKind| {
        let v: Vec<_> = trace
            .iter()
            .filter(|s| service(s) == svc && s.kind() == kind)
            .collect();
        assert_eq!(
            v.len(),
            1,
            "one {svc} {kind:?} span expected in:\n{}",
            dump()
        );
        v[0].clone()
    };
    assert_eq!(trace.len(), 6, "trace:\n{}", dump());
    vec![
        pick("curl", SpanKind::Client),
        pick("svc-a", SpanKind::Server),
        pick("svc-a", SpanKind::Client),
        pick("svc-b", SpanKind::Server),
        pick("svc-b", SpanKind::Client),
        pick("postgres", SpanKind::Server),
    ]
}

/// One trace id, and each span the child of the one before it.
fn assert_linked(chain: &[ReceivedSpan]) {
    assert_eq!(chain[0].parent_span_id(), None, "root: {}", chain[0]);
    for w in chain.windows(2) {
        assert_eq!(w[1].trace_id(), w[0].trace_id(), "{} / {}", w[0], w[1]);
        assert_eq!(
            w[1].parent_span_id(),
            Some(w[0].span_id()),
            "parent of {} should be {}",
            w[1],
            w[0]
        );
    }
}

fn query_i(s: &ReceivedSpan) -> String {
    let url = s
        .attr_str("url.full")
        .or_else(|| s.attr_str("url.query").map(|q| format!("?{q}")))
        .unwrap_or_else(|| panic!("no url on {s}"));
    url.rsplit("i=").next().unwrap().to_owned()
}

#[test]
fn one_request_through_two_services_and_postgres_is_one_trace() {
    let c = chain(&[]);
    let body = curl(&[&c.a.url("/work?i=7")]);
    assert_eq!(body, "row 7");
    let (s, cl) = exact(&c.receiver, 3, 3);
    let all: Vec<ReceivedSpan> = s.into_iter().chain(cl).collect();
    let chain = in_chain_order(&all);
    assert_linked(&chain);
    assert_eq!(chain[0].attr_str("url.full"), Some(c.a.url("/work?i=7")));
    assert_eq!(
        chain[4].attr_str("db.system.name").as_deref(),
        Some("postgresql")
    );
}

#[test]
fn twenty_parallel_requests_make_twenty_separate_correct_traces() {
    let c = chain(&[]);
    let children: Vec<ChildGuard> = (0..20)
        .map(|i| {
            let child = Command::new("curl")
                .args(["-sS", "-o", "/dev/null", "--max-time", "60"])
                .arg(c.a.url(&format!("/work?i={i}")))
                .stdout(Stdio::null())
                .spawn()
                .expect("curl");
            ChildGuard::new("curl", child)
        })
        .collect();
    for mut child in children {
        assert!(child.child.wait().expect("curl").success());
    }
    let (s, cl) = exact(&c.receiver, 60, 60);
    let mut traces: HashMap<String, Vec<ReceivedSpan>> = HashMap::new();
    for span in s.into_iter().chain(cl) {
        traces.entry(span.trace_id()).or_default().push(span);
    }
    assert_eq!(traces.len(), 20, "20 traces expected");
    let mut seen: Vec<String> = traces
        .values()
        .map(|t| {
            let chain = in_chain_order(t);
            assert_linked(&chain);
            // Every HTTP span of the trace belongs to the same request number.
            let i = query_i(&chain[0]);
            for s in &chain[1..4] {
                assert_eq!(query_i(s), i, "{s} in the trace of request {i}");
            }
            i
        })
        .collect();
    seen.sort_by_key(|i| i.parse::<u32>().unwrap());
    let want: Vec<String> = (0..20).map(|i| i.to_string()).collect();
    assert_eq!(seen, want);
}
