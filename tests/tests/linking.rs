//! Whole traces on one host, as root: `curl` -> service A (threaded Python HTTP server) ->
//! service B (the same, calling PostgreSQL with pg8000) -> a real PostgreSQL server. None of
//! them has tracing code; the agent links every span from what it sees on the sockets.
//! And an event loop (aiohttp) serving twenty requests at once: its calls get no wrong parent.

use std::{
    collections::HashMap,
    path::Path,
    process::{Command, Stdio},
};

use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use socktrace_tests::{
    harness::{Agent, ChildGuard, PyServer, curl, exact, final_counters, python, require_root},
    otlp_receiver::{OtlpReceiver, Protocol, ReceivedSpan, hex},
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
    let ports = format!("{},{},{}", a.port, b.port, pg.port);
    let agent = Agent::exporting_to(&receiver, &ports, extra);
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

/// The number after the last `i=` or `/item/` of a span's URL.
fn request_number(s: &ReceivedSpan) -> u32 {
    let url = s
        .attr_str("url.full")
        .or_else(|| s.attr_str("url.query").map(|q| format!("?{q}")))
        .or_else(|| s.attr_str("url.path"))
        .unwrap_or_else(|| panic!("no url on {s}"));
    let tail = url.rsplit(['=', '/']).next().unwrap_or_default();
    tail.parse()
        .unwrap_or_else(|_| panic!("no request number in {url:?} of {s}"))
}

/// `curl` x 20 at once -> an aiohttp service (one event loop; each handler waits, then calls
/// `http_server.py` with `/item/<i>` for its request `i`). The request number in both URLs tells
/// the test the true parent of every call the loop makes; the agent cannot tell it, so a call
/// either has exactly that parent (made before the loop was seen serving two requests at once)
/// or no parent and links to the loop's requests in flight when it began, among them the true
/// one. Never a wrong parent.
fn event_loop_calls(extra: &[&str]) -> Vec<(ReceivedSpan, ReceivedSpan)> {
    event_loop_calls_of(&python(), "async_service.py", extra)
}

/// [`event_loop_calls`] with the event-loop service `script` run by `interpreter` (the same
/// interface: `URL_PREFIX DELAY_MS`, `GET /work?i=N`).
fn event_loop_calls_of(
    interpreter: &Path,
    script: &str,
    extra: &[&str],
) -> Vec<(ReceivedSpan, ReceivedSpan)> {
    require_root();
    let receiver = OtlpReceiver::start_blocking(Protocol::Grpc);
    let down = PyServer::start(&[("OTEL_SERVICE_NAME", "svc-down")]);
    let event_loop = PyServer::start_peer_args(
        interpreter,
        script,
        &[&down.url(""), "300"],
        &[("OTEL_SERVICE_NAME", "svc-async")],
    );
    let ports = format!("{},{}", event_loop.port, down.port);
    let mut agent = Agent::exporting_to(&receiver, &ports, extra);
    let children: Vec<ChildGuard> = (0..20)
        .map(|i| {
            let child = Command::new("curl")
                .args(["-sS", "-o", "/dev/null", "--max-time", "60"])
                .arg(event_loop.url(&format!("/work?i={i}")))
                .stdout(Stdio::null())
                .spawn()
                .expect("curl");
            ChildGuard::new("curl", child)
        })
        .collect();
    for mut child in children {
        assert!(child.child.wait().expect("curl").success());
    }
    // curl and the loop's calls (client), the loop and the downstream server (server).
    let (servers, clients) = exact(&receiver, 40, 40);
    let all: Vec<ReceivedSpan> = servers.iter().chain(&clients).cloned().collect();
    let dump = || all.iter().map(|s| format!("  {s}\n")).collect::<String>();
    let of = |svc: &str, spans: &[ReceivedSpan]| -> HashMap<u32, ReceivedSpan> {
        let v: Vec<&ReceivedSpan> = spans.iter().filter(|s| service(s) == svc).collect();
        assert_eq!(v.len(), 20, "20 {svc} spans expected in:\n{}", dump());
        let by: HashMap<u32, ReceivedSpan> = v
            .into_iter()
            .map(|s| (request_number(s), s.clone()))
            .collect();
        assert_eq!(by.len(), 20, "one {svc} span per request in:\n{}", dump());
        by
    };
    let loop_servers = of("svc-async", &servers);
    let calls = of("svc-async", &clients);
    let down_servers = of("svc-down", &servers);
    let _ = of("curl", &clients);
    let loop_ids: HashMap<String, &ReceivedSpan> =
        loop_servers.values().map(|s| (s.span_id(), s)).collect();

    let mut ambiguous = 0u64;
    for (i, call) in &calls {
        let truth = &loop_servers[i];
        match call.parent_span_id() {
            Some(parent) => {
                // Claimed exact: it must be the true one, with no links.
                assert_eq!(parent, truth.span_id(), "wrong parent for {call}");
                assert_eq!(call.trace_id(), truth.trace_id(), "{call}");
                assert!(call.span.links.is_empty(), "{call}");
                assert_eq!(call.attr_str("socktrace.link.reason"), None, "{call}");
            }
            None => {
                ambiguous += 1;
                let links = &call.span.links;
                assert_eq!(
                    call.attr_str("socktrace.link.reason").as_deref(),
                    Some("ambiguous_event_loop"),
                    "{call}"
                );
                assert_eq!(
                    call.attr_int("socktrace.link.candidates"),
                    Some(links.len() as i64),
                    "{call}"
                );
                let start = call.span.start_time_unix_nano;
                let mut linked = Vec::new();
                for l in links {
                    let id = hex(&l.span_id);
                    let srv = loop_ids.get(&id).unwrap_or_else(|| {
                        panic!("{call} links to {id}, not a span of the loop:\n{}", dump())
                    });
                    assert_eq!(hex(&l.trace_id), srv.trace_id(), "link of {call} to {srv}");
                    // In flight when the call began: read before it, answered after.
                    assert!(
                        srv.span.start_time_unix_nano <= start
                            && srv.span.end_time_unix_nano >= start,
                        "{call} links to {srv}, not in flight then"
                    );
                    linked.push(id);
                }
                assert!(
                    linked.contains(&truth.span_id()),
                    "{call} does not link to its request {truth}"
                );
            }
        }
        // The downstream server span is the call's child, whatever the call's own parent.
        let d = &down_servers[i];
        assert_eq!(d.parent_span_id(), Some(call.span_id()), "{d} / {call}");
        assert_eq!(d.trace_id(), call.trace_id(), "{d} / {call}");
    }
    let mut counts: Vec<usize> = calls.values().map(|c| c.span.links.len()).collect();
    counts.sort_unstable();
    eprintln!("{ambiguous} of 20 calls linked to candidates; links per call: {counts:?}");
    // Twenty requests waiting 300 ms each on one loop overlap: most calls are ambiguous.
    assert!(
        ambiguous >= 10,
        "only {ambiguous} ambiguous calls:\n{}",
        dump()
    );
    agent.stop();
    let links = final_counters(&agent.stderr(), "links");
    assert_eq!(links["ambiguous_calls"], ambiguous, "{links:?}");
    assert!(links["multiplexing_threads"] >= 1, "{links:?}");
    assert_eq!(links["candidates_dropped"], 0, "{links:?}");
    calls
        .into_iter()
        .map(|(i, call)| (call, loop_servers[&i].clone()))
        .collect()
}

/// An ambiguous call is the root of a trace of its own, never in a request's trace of the loop.
fn assert_own_traces(calls: &[(ReceivedSpan, ReceivedSpan)]) {
    let loop_traces: Vec<String> = calls.iter().map(|(_, s)| s.trace_id()).collect();
    for (call, _) in calls {
        if call.parent_span_id().is_none() {
            assert!(
                !loop_traces.contains(&call.trace_id()),
                "{call} is in the trace of a request of the loop"
            );
        }
    }
}

/// With header injection (the default) the kernel knows the event loop too (a thread that read
/// a request while another was unanswered): the `traceparent` it writes into the loop's calls
/// begins a trace of their own instead of continuing the request the loop read last.
#[test]
fn calls_of_an_event_loop_serving_twenty_requests_get_links_not_wrong_parents() {
    assert_own_traces(&event_loop_calls(&[]));
}

/// Without injection every ambiguous call is the root of a trace of its own too.
#[test]
fn without_injection_each_ambiguous_call_of_an_event_loop_begins_its_own_trace() {
    assert_own_traces(&event_loop_calls(&["--no-inject"]));
}

/// The same with node's `http` on its event loop: its calls get links, never wrong parents,
/// and each begins its own trace.
#[test]
fn calls_of_a_node_event_loop_serving_twenty_requests_get_links_not_wrong_parents() {
    assert_own_traces(&event_loop_calls_of(
        Path::new("node"),
        "node_service.js",
        &[],
    ));
}
