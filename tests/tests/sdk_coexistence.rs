//! A service that traces itself with the OpenTelemetry Python SDK, behind socktrace, as root:
//! `curl` (with its own `traceparent` and `tracestate`) -> the SDK service (a SERVER span, and
//! a CLIENT span whose context it injects into its call) -> a plain Python HTTP server, whose
//! `/headers` route answers with the request headers it received. The SDK exports to one OTLP
//! receiver, socktrace to another, so the test knows whose span is whose.

use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use socktrace_tests::{
    harness::{Agent, PyServer, all_final_counters, curl, exact, python, require_root},
    otlp_receiver::{OtlpReceiver, Protocol, ReceivedSpan},
};
use std::{collections::HashMap, time::Duration};

const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const CALLER: &str = "b7ad6b7169203331";
const STATE: &str = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7";

struct Setup {
    socktrace: OtlpReceiver,
    sdk_receiver: OtlpReceiver,
    sdk: PyServer,
    down: PyServer,
    agent: Agent,
}

fn setup(mode: &str) -> Setup {
    setup_with(mode, false)
}

/// `export_traced`: the SDK's export requests are traced too (its receiver's port is selected).
fn setup_with(mode: &str, export_traced: bool) -> Setup {
    require_root();
    let socktrace = OtlpReceiver::start_blocking(Protocol::Grpc);
    let sdk_receiver = OtlpReceiver::start_blocking(Protocol::HttpProtobuf);
    let down = PyServer::start(&[("OTEL_SERVICE_NAME", "downstream")]);
    let sdk = PyServer::start_peer_args(
        &python(),
        "sdk_service.py",
        &[&down.url(""), &sdk_receiver.traces_endpoint()],
        &[],
    );
    // Unless asked for, the SDK's export traffic is left out by the port filter: only the
    // request path is traced.
    let mut ports = format!("{},{}", sdk.port, down.port);
    if export_traced {
        ports.push_str(&format!(",{}", sdk_receiver.addr().port()));
    }
    let agent = Agent::exporting_to(&socktrace, &ports, &["--instrumented-processes", mode]);
    Setup {
        socktrace,
        sdk_receiver,
        sdk,
        down,
        agent,
    }
}

/// curl -> SDK service -> downstream `/headers`; returns the headers the downstream received.
fn call(s: &Setup) -> Vec<(String, String)> {
    let body = curl(&[
        "-H",
        &format!("traceparent: 00-{TRACE}-{CALLER}-01"),
        "-H",
        &format!("tracestate: {STATE}"),
        &s.sdk.url("/call"),
    ]);
    body.lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
        .collect()
}

/// The SDK's two spans: its SERVER and its CLIENT span.
fn sdk_spans(s: &Setup) -> (ReceivedSpan, ReceivedSpan) {
    s.sdk_receiver
        .wait_for_blocking(|v| v.len() >= 2, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}"));
    let spans = s.sdk_receiver.spans();
    assert_eq!(spans.len(), 2, "SDK spans: {spans:?}");
    let pick = |kind| {
        spans
            .iter()
            .find(|x| x.kind() == kind)
            .cloned()
            .unwrap_or_else(|| panic!("no SDK {kind:?} span in {spans:?}"))
    };
    (pick(SpanKind::Server), pick(SpanKind::Client))
}

fn pid_of(span: &ReceivedSpan) -> u32 {
    span.resource_int("process.pid").expect("process.pid") as u32
}

/// Exactly one `traceparent`, naming the SDK's client span, and the `tracestate` curl sent.
fn assert_one_header(headers: &[(String, String)], sdk_client: &ReceivedSpan) {
    let values = |name: &str| -> Vec<&str> {
        headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert_eq!(
        values("traceparent"),
        vec![format!("00-{TRACE}-{}-01", sdk_client.span_id())],
        "{headers:?}"
    );
    assert_eq!(values("tracestate"), vec![STATE], "{headers:?}");
}

fn counters(agent: &mut Agent) -> HashMap<String, u64> {
    assert_eq!(agent.stop(), Some(0));
    all_final_counters(&agent.stderr())
}

#[test]
fn skip_exports_no_span_of_the_sdk_process_and_links_its_peer_to_the_sdk_span() {
    let mut s = setup("skip");
    assert!(
        s.agent
            .stderr()
            .contains("; processes that trace themselves: skipped; "),
        "{}",
        s.agent.stderr()
    );
    let headers = call(&s);
    let (sdk_server, sdk_client) = sdk_spans(&s);
    // The SDK continued curl's context, and its call carries its client span's context.
    assert_eq!(sdk_server.trace_id(), TRACE);
    assert_eq!(sdk_server.parent_span_id().as_deref(), Some(CALLER));
    assert_eq!(sdk_client.parent_span_id(), Some(sdk_server.span_id()));
    assert_one_header(&headers, &sdk_client);

    // socktrace: curl's CLIENT span and the downstream's SERVER span, nothing of the SDK
    // process.
    let (servers, clients) = exact(&s.socktrace, 1, 1);
    let all: Vec<_> = servers.iter().chain(&clients).collect();
    assert!(
        all.iter().all(|x| pid_of(x) != s.sdk.pid()),
        "a socktrace span of the SDK process: {all:?}"
    );
    let (down, curl_span) = (&servers[0], &clients[0]);
    assert_eq!(pid_of(down), s.down.pid());
    assert_eq!(curl_span.resource_str("service.name"), Some("curl"));
    // The downstream's span is the child of the SDK's client span, in the SDK's trace, with
    // the tracestate unchanged.
    assert_eq!(down.trace_id(), TRACE);
    assert_eq!(down.parent_span_id(), Some(sdk_client.span_id()));
    assert_eq!(down.span.trace_state, STATE);
    assert_eq!(curl_span.trace_id(), TRACE);
    assert_eq!(curl_span.parent_span_id().as_deref(), Some(CALLER));
    assert_eq!(curl_span.span.trace_state, STATE);

    let c = counters(&mut s.agent);
    assert_eq!(c["instrumented.detected_own_context"], 1, "{c:?}");
    assert_eq!(c["instrumented.detected_export"], 0, "{c:?}");
    assert_eq!(c["instrumented.spans_skipped"], 2, "{c:?}");
    assert_eq!(c["instrumented.spans_before_detection"], 0, "{c:?}");
    assert_eq!(c["instrumented.processes"], 1, "{c:?}");
    // The kernel added nothing to the requests that had a context: curl's and the SDK's.
    assert_eq!(c["kernel.inject_skipped_has_traceparent"], 2, "{c:?}");
}

#[test]
fn link_exports_socktrace_spans_marked_inside_the_sdk_trace() {
    let mut s = setup("link");
    let headers = call(&s);
    let (sdk_server, sdk_client) = sdk_spans(&s);
    assert_one_header(&headers, &sdk_client);

    // socktrace: curl's CLIENT span, the SDK process's SERVER and CLIENT spans, and the
    // downstream's SERVER span.
    let (servers, clients) = exact(&s.socktrace, 2, 2);
    let one = |v: &[ReceivedSpan], pid: u32| {
        let of: Vec<_> = v.iter().filter(|x| pid_of(x) == pid).cloned().collect();
        assert_eq!(of.len(), 1, "{v:?}");
        of[0].clone()
    };
    let (server, client) = (one(&servers, s.sdk.pid()), one(&clients, s.sdk.pid()));
    let down = one(&servers, s.down.pid());
    let curl_span = clients
        .iter()
        .find(|x| x.resource_str("service.name") == Some("curl"))
        .expect("curl's span");
    for x in [&server, &client] {
        assert_eq!(
            x.attr_bool("socktrace.instrumented_process"),
            Some(true),
            "{x}"
        );
    }
    for x in [&down, curl_span] {
        assert_eq!(x.attr_bool("socktrace.instrumented_process"), None, "{x}");
    }
    // One trace, the SDK's (which continued curl's), with the tracestate unchanged:
    // socktrace's client span is a child of the SDK's client span (the header it wrote), the
    // downstream's span a child of socktrace's client span; socktrace's server span continues
    // the caller's context as the SDK's server span does (curl's span: curl is traced here).
    for x in [&server, &client, &down, curl_span] {
        assert_eq!(x.trace_id(), TRACE, "{x}");
        assert_eq!(x.span.trace_state, STATE, "{x}");
    }
    assert_eq!(client.parent_span_id(), Some(sdk_client.span_id()));
    assert_eq!(down.parent_span_id(), Some(client.span_id()));
    assert_eq!(server.parent_span_id(), Some(curl_span.span_id()));
    assert_eq!(sdk_server.parent_span_id().as_deref(), Some(CALLER));
    assert_eq!(curl_span.parent_span_id().as_deref(), Some(CALLER));

    let c = counters(&mut s.agent);
    assert_eq!(c["instrumented.detected_own_context"], 1, "{c:?}");
    assert_eq!(c["instrumented.spans_marked"], 2, "{c:?}");
    assert_eq!(c["instrumented.spans_skipped"], 0, "{c:?}");
    assert_eq!(c["kernel.inject_skipped_has_traceparent"], 2, "{c:?}");
}

#[test]
fn a_process_exporting_spans_is_skipped_from_its_first_export_on() {
    let mut s = setup_with("skip", true);
    // No call and no context sent: the SDK shows itself only by exporting its server span,
    // after the first answer.
    for n in 1..=2 {
        assert_eq!(curl(&[&s.sdk.url("/local")]), "local");
        s.sdk_receiver
            .wait_for_blocking(|v| v.len() >= n, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{e}"));
        // The exporter reads its answer: the export is over before the next request.
        std::thread::sleep(Duration::from_millis(500));
    }
    // socktrace: curl's two CLIENT spans; the SERVER spans of the SDK process's first request
    // (made before its first export) and of the two exports at the receiver (this test).
    let (servers, clients) = exact(&s.socktrace, 3, 2);
    let of_sdk: Vec<_> = servers
        .iter()
        .chain(&clients)
        .filter(|x| pid_of(x) == s.sdk.pid())
        .collect();
    assert_eq!(of_sdk.len(), 1, "{of_sdk:?}");
    assert_eq!(of_sdk[0].kind(), SpanKind::Server);
    assert_eq!(of_sdk[0].attr_str("url.path").as_deref(), Some("/local"));
    let at_receiver = servers
        .iter()
        .filter(|x| x.attr_str("url.path").as_deref() == Some("/v1/traces"))
        .count();
    assert_eq!(at_receiver, 2);

    let c = counters(&mut s.agent);
    assert_eq!(c["instrumented.detected_export"], 1, "{c:?}");
    assert_eq!(c["instrumented.detected_own_context"], 0, "{c:?}");
    assert_eq!(c["instrumented.spans_before_detection"], 1, "{c:?}");
    // The two exports' CLIENT spans and the second request's SERVER span.
    assert_eq!(c["instrumented.spans_skipped"], 3, "{c:?}");
    assert_eq!(c["instrumented.processes"], 1, "{c:?}");
}
