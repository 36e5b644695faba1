//! A Java service on the JDK's built-in HTTP server with an executor pool, as root: `curl` ->
//! the service (Debian's OpenJDK, run from its single source file, no tracing code) -> a Python
//! HTTP service, 20 concurrent requests. The pool thread that reads a request also serves it,
//! so a call it makes is the request's child; a call handed to a second pool is made on a thread
//! that serves nothing, and must get no parent - never another request's.

use std::{
    collections::HashMap,
    io::BufReader,
    process::{Command, Stdio},
    time::Duration,
};

use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use socktrace_tests::{
    harness::{
        Agent, ChildGuard, PyServer, curl_concurrently, exact, free_port, peer, python,
        require_root, wait_line,
    },
    otlp_receiver::{OtlpReceiver, Protocol, ReceivedSpan},
};

fn service(s: &ReceivedSpan) -> &str {
    s.resource_str("service.name").unwrap_or("?")
}

/// The request a span is about: `/work/<i>`, `/handoff/<i>` or `/item/<i>`.
fn request_of(s: &ReceivedSpan) -> (String, String) {
    let path = s
        .attr_str("url.path")
        .or_else(|| s.attr_str("url.full"))
        .unwrap_or_else(|| panic!("no URL on {s}"));
    let mut parts = path.rsplit('/');
    let i = parts.next().unwrap().to_owned();
    (parts.next().unwrap_or("").to_owned(), i)
}

#[test]
fn calls_of_a_java_pool_thread_are_children_and_handed_off_calls_are_never_misparented() {
    require_root();
    let receiver = OtlpReceiver::start_blocking(Protocol::Grpc);
    let down = PyServer::start_peer_args(
        &python(),
        "http_server.py",
        &[],
        &[("OTEL_SERVICE_NAME", "downstream")],
    );
    let port = free_port();
    let mut child = Command::new("java")
        .arg(peer("java/ChainService.java"))
        .arg(port.to_string())
        .arg(down.url(""))
        .env("OTEL_SERVICE_NAME", "svc-java")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting java (openjdk-17-jdk-headless is in the test packages)");
    let mut out = BufReader::new(child.stdout.take().expect("piped"));
    let _svc = ChildGuard::new("java", child);
    let _ = wait_line(&mut out, "PORT ", Duration::from_secs(60));
    let ports = format!("{port},{}", down.port);
    let _agent = Agent::exporting_to(&receiver, &ports, &[]);

    let urls: Vec<String> = (0..20)
        .map(|i| {
            let route = if i % 2 == 0 { "work" } else { "handoff" };
            format!("http://127.0.0.1:{port}/{route}/{i}")
        })
        .collect();
    curl_concurrently(&urls);

    // Per request: curl (client) -> svc-java (server), svc-java (client) -> downstream (server).
    let (servers, clients) = exact(&receiver, 40, 40);
    let all: Vec<ReceivedSpan> = servers.iter().chain(&clients).cloned().collect();
    let dump = || all.iter().map(|s| format!("  {s}\n")).collect::<String>();
    let by = |svc: &str, kind: SpanKind| -> HashMap<String, ReceivedSpan> {
        let v: HashMap<String, ReceivedSpan> = all
            .iter()
            .filter(|s| service(s) == svc && s.kind() == kind)
            .map(|s| (request_of(s).1, s.clone()))
            .collect();
        assert_eq!(v.len(), 20, "20 {svc} {kind:?} spans in:\n{}", dump());
        v
    };
    let (roots, served) = (
        by("curl", SpanKind::Client),
        by("svc-java", SpanKind::Server),
    );
    let (calls, downs) = (
        by("svc-java", SpanKind::Client),
        by("downstream", SpanKind::Server),
    );
    let served_ids: HashMap<String, &ReceivedSpan> =
        served.values().map(|s| (s.span_id(), s)).collect();
    for i in 0..20 {
        let i = i.to_string();
        let (root, srv, call, down) = (&roots[&i], &served[&i], &calls[&i], &downs[&i]);
        assert_eq!(root.parent_span_id(), None, "{root}");
        assert_eq!(srv.parent_span_id(), Some(root.span_id()), "{srv}");
        assert_eq!(srv.trace_id(), root.trace_id(), "{srv}");
        assert_eq!(down.parent_span_id(), Some(call.span_id()), "{down}");
        assert_eq!(down.trace_id(), call.trace_id(), "{down}");
        match request_of(srv).0.as_str() {
            // Made by the thread serving the request: its child.
            "work" => {
                assert_eq!(call.parent_span_id(), Some(srv.span_id()), "{call}");
                assert_eq!(call.trace_id(), srv.trace_id(), "{call}");
            }
            // Made on a thread of the second pool: no parent, and in no request's trace.
            "handoff" => {
                assert_eq!(call.parent_span_id(), None, "{call}:\n{}", dump());
                assert!(
                    served.values().all(|s| s.trace_id() != call.trace_id()),
                    "{call} is in a request's trace"
                );
            }
            other => panic!("unexpected route {other} of {srv}"),
        }
        // Never the child of another request.
        if let Some(p) = call.parent_span_id()
            && let Some(parent) = served_ids.get(&p)
        {
            assert_eq!(request_of(parent).1, i, "{call} under {parent}");
        }
    }
}
