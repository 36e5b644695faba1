//! Sampling with the real agent on real traffic (curl -> Python `http.server`), as root.
//!
//! Priority mode keeps every trace with an error or a slow span whole (a span of it that is
//! neither included) and a ratio of the others, while the metrics still count every request; the parent-based trace-id ratio sampler follows
//! the sampled flag of an incoming `traceparent` and otherwise picks traces by their id exactly
//! as the OpenTelemetry specification computes it (checked here with the test's own arithmetic).

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode};
use socktrace_tests::{
    harness::{Agent, PyServer, curl, final_counters, free_port, metric, prom, require_root},
    otlp_receiver::{OtlpReceiver, Protocol, ReceivedSpan},
};

/// Whether a trace id (32 hex digits) is sampled at `ratio`, per the OpenTelemetry
/// probability-sampling rule: its 56 low bits R against the rejection threshold
/// (1 - ratio) * 2^56.
fn sampled_at(trace_id: &str, ratio: f64) -> bool {
    let r = u64::from_str_radix(&trace_id[18..], 16).expect("hex trace id");
    let threshold = ((1.0 - ratio) * (1u64 << 56) as f64).round() as u64;
    r >= threshold
}

/// Spans by trace id.
fn traces(spans: &[ReceivedSpan]) -> BTreeMap<String, Vec<&ReceivedSpan>> {
    let mut out: BTreeMap<String, Vec<&ReceivedSpan>> = BTreeMap::new();
    for s in spans {
        out.entry(s.trace_id()).or_default().push(s);
    }
    out
}

/// The two spans of one curl request, whole: curl's CLIENT span and py-server's SERVER span,
/// its child. Returns the server's `url.path`.
fn whole_request(trace: &[&ReceivedSpan]) -> String {
    let dump = || {
        trace
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        trace.len(),
        2,
        "a request's trace has two spans:\n{}",
        dump()
    );
    let client = trace
        .iter()
        .find(|s| s.kind() == SpanKind::Client)
        .unwrap_or_else(|| panic!("no client span:\n{}", dump()));
    let server = trace
        .iter()
        .find(|s| s.kind() == SpanKind::Server)
        .unwrap_or_else(|| panic!("no server span:\n{}", dump()));
    assert_eq!(
        client.resource_str("service.name"),
        Some("curl"),
        "{}",
        dump()
    );
    assert_eq!(
        server.resource_str("service.name"),
        Some("py-server"),
        "{}",
        dump()
    );
    assert_eq!(
        server.parent_span_id(),
        Some(client.span_id()),
        "{}",
        dump()
    );
    server.attr_str("url.path").expect("url.path")
}

/// 5 standard deviations either side of the mean of Binomial(n, p), clamped to [0, n].
fn binomial_bounds(n: usize, p: f64) -> (usize, usize) {
    let (mean, sd) = (n as f64 * p, (n as f64 * p * (1.0 - p)).sqrt());
    let low = (mean - 5.0 * sd).floor().max(0.0) as usize;
    let high = ((mean + 5.0 * sd).ceil() as usize).min(n);
    (low, high)
}

/// The agent in priority mode with `extra` flags, tracing only a py-server's connections (so
/// the sampler's counters are the test's alone), exporting to a receiver, with metrics served.
struct Priority {
    receiver: OtlpReceiver,
    server: PyServer,
    prom_addr: String,
    agent: Agent,
}

impl Priority {
    fn start(extra: &[&str]) -> Self {
        require_root();
        let receiver = OtlpReceiver::start_blocking(Protocol::HttpProtobuf);
        let server = PyServer::start(&[("OTEL_SERVICE_NAME", "py-server")]);
        let prom_addr = format!("127.0.0.1:{}", free_port());
        let port = server.port.to_string();
        let endpoint = receiver.endpoint();
        let mut args = vec![
            "--otlp-endpoint",
            &endpoint,
            "--metrics-listen",
            &prom_addr,
            "--port",
            &port,
            "--sampler",
            "priority",
        ];
        args.extend_from_slice(extra);
        let agent = Agent::start_with_env(&args, &[]);
        Self {
            receiver,
            server,
            prom_addr,
            agent,
        }
    }
}

const REQUESTS: usize = 200;
const ERRORS: usize = 10;
const SLOW: usize = 10;
const RATIO: f64 = 0.1;
/// Requests answered 404 besides the 200: only curl's span is an error (a server span of a 4xx
/// is not), so keeping the server's span takes a decision per trace, not per span.
const CLIENT_ERRORS: usize = 10;

#[test]
fn priority_keeps_every_error_and_slow_trace_whole_and_a_ratio_of_the_rest() {
    let Priority {
        receiver,
        server,
        prom_addr,
        mut agent,
    } = Priority::start(&[
        "--sample-ratio",
        &RATIO.to_string(),
        "--slow-threshold",
        "300ms",
        "--sample-wait",
        "1s",
    ]);
    assert!(
        agent.stderr().contains(
            "sampling: priority (errors, spans over 300ms, 0.1 of the rest; decided 1s after a trace's last span, at most 16384 spans waiting)"
        ),
        "{}",
        agent.stderr()
    );

    // Every 20th request from the 4th fails, every 20th from the 12th takes 400 ms.
    for i in 0..REQUESTS {
        let path = match i % 20 {
            3 => "/status/500".to_owned(),
            11 => "/sleep/400".to_owned(),
            _ => format!("/item/{i}"),
        };
        curl(&["-o", "/dev/null", &server.url(&path)]);
        if i % 20 == 7 {
            curl(&["-o", "/dev/null", &server.url("/status/404")]);
        }
    }
    let all = REQUESTS + CLIENT_ERRORS;

    // Every span decided (a second after its trace's last span), nothing waiting.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let kept = metric(&prom_addr, "socktrace_sampling_kept_total").unwrap_or(0);
        let dropped = metric(&prom_addr, "socktrace_sampling_dropped_total").unwrap_or(0);
        if kept + dropped >= 2 * all as u64
            && metric(&prom_addr, "socktrace_sampling_buffered_spans") == Some(0)
            && receiver.spans().len() as u64 >= kept
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sampling did not finish: kept {kept}, dropped {dropped}, received {}\n{}",
            receiver.spans().len(),
            agent.stderr()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The metrics counted every request, before sampling.
    let text = curl(&[&format!("http://{prom_addr}/metrics")]);
    let svc = "service_name=\"py-server\"";
    let count = |route: &str, status: &str| {
        prom(
            &text,
            "http_server_request_duration_seconds_count",
            &[
                svc,
                &format!("http_route=\"{route}\""),
                &format!("http_response_status_code=\"{status}\""),
            ],
        )
    };
    assert_eq!(
        count("/item/{id}", "200"),
        [(REQUESTS - ERRORS - SLOW) as u64],
        "{text}"
    );
    assert_eq!(count("/status/{id}", "500"), [ERRORS as u64], "{text}");
    assert_eq!(count("/sleep/{id}", "200"), [SLOW as u64], "{text}");
    assert_eq!(
        count("/status/{id}", "404"),
        [CLIENT_ERRORS as u64],
        "{text}"
    );
    let pair = ["client=\"curl\"", "server=\"py-server\""];
    assert_eq!(
        prom(&text, "traces_service_graph_request_total", &pair),
        [all as u64],
        "{text}"
    );

    let spans = receiver.spans();
    let by_trace = traces(&spans);
    let (mut errors, mut slow, mut client_errors, mut ordinary) = (0, 0, 0, 0);
    for (id, trace) in &by_trace {
        let path = whole_request(trace);
        if path == "/status/500" {
            errors += 1;
            assert!(
                trace.iter().all(|s| s.status_code() == StatusCode::Error),
                "{id}"
            );
        } else if path == "/status/404" {
            client_errors += 1;
            for s in trace {
                let want = match s.kind() {
                    SpanKind::Client => StatusCode::Error,
                    _ => StatusCode::Unset,
                };
                assert_eq!(s.status_code(), want, "{s}");
            }
        } else if path == "/sleep/400" {
            slow += 1;
            assert!(
                trace
                    .iter()
                    .all(|s| s.duration() >= Duration::from_millis(400)),
                "{id}"
            );
        } else {
            ordinary += 1;
            assert!(path.starts_with("/item/"), "{path}");
            // Kept by the ratio: its id says so, as it would at any other agent.
            assert!(
                sampled_at(id, RATIO),
                "{id} kept but not sampled at {RATIO}"
            );
        }
    }
    assert_eq!(
        (errors, slow, client_errors),
        (ERRORS, SLOW, CLIENT_ERRORS),
        "every error and slow trace"
    );
    let (low, high) = binomial_bounds(REQUESTS - ERRORS - SLOW, RATIO);
    assert!(
        (low..=high).contains(&ordinary),
        "{ordinary} ordinary traces kept, expected {low}..={high}"
    );
    let priority = ERRORS + SLOW + CLIENT_ERRORS;
    assert_eq!(spans.len(), 2 * (priority + ordinary));

    agent.stop();
    let c = final_counters(&agent.stderr(), "sampling");
    let kept_traces = (priority + ordinary) as u64;
    assert_eq!(c["traces_kept_priority"], priority as u64, "{c:?}");
    assert_eq!(c["traces_kept_ratio"], ordinary as u64, "{c:?}");
    assert_eq!(c["traces_dropped"], all as u64 - kept_traces, "{c:?}");
    assert_eq!(c["kept"], 2 * kept_traces, "{c:?}");
    assert_eq!(c["dropped"], 2 * (all as u64 - kept_traces), "{c:?}");
    assert_eq!((c["decided_early"], c["late_spans"]), (0, 0), "{c:?}");
    assert_eq!(c["buffered_spans"], 0, "{c:?}");
    // Nothing more was sent at shutdown: every trace had been decided in its window.
    assert_eq!(receiver.spans().len(), spans.len());
}

/// A trace id of the test's own whose 56 low bits are `r`.
fn trace_id(i: usize, r: u64) -> String {
    format!("{:016x}{:016x}", 0x5a00 + i, r)
}

#[test]
fn parent_based_ratio_follows_the_caller_else_the_trace_id() {
    require_root();
    const EACH: usize = 20;
    let receiver = OtlpReceiver::start_blocking(Protocol::Grpc);
    let server = PyServer::start(&[("OTEL_SERVICE_NAME", "py-server")]);
    let port = server.port.to_string();
    let mut agent = Agent::start_with_env(
        &[
            "--otlp-endpoint",
            &receiver.endpoint(),
            "--otlp-protocol",
            "grpc",
            "--port",
            &port,
        ],
        &[
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.5"),
        ],
    );
    assert!(
        agent
            .stderr()
            .contains("sampling: parentbased_traceidratio 0.5;"),
        "{}",
        agent.stderr()
    );
    // Callers that sampled, with ids the ratio would drop; callers that did not, with ids it
    // would keep; and requests without a header (the kernel's random trace ids).
    let low = |i: usize| trace_id(i, 0x0012_3456_789a_bc00 + i as u64);
    let high = |i: usize| trace_id(i, 0xff80_0000_0000_0000 + i as u64);
    let get = |i: usize, header: Option<(String, &str)>| {
        let url = server.url(&format!("/item/{i}"));
        let mut args = vec!["-o".to_owned(), "/dev/null".to_owned(), url];
        if let Some((trace, flags)) = header {
            args.push("-H".into());
            args.push(format!("traceparent: 00-{trace}-00f067aa0ba902b7-{flags}"));
        }
        curl(&args.iter().map(String::as_str).collect::<Vec<_>>());
    };
    for i in 0..EACH {
        assert!(!sampled_at(&low(i), 0.5) && sampled_at(&high(i), 0.5));
        get(i, Some((low(i), "01")));
        get(i, Some((high(i), "00")));
        get(i, None);
    }
    agent.stop();
    let c = final_counters(&agent.stderr(), "sampling");
    let spans = receiver.spans();
    let by_trace = traces(&spans);
    let mut headerless = 0;
    for (id, trace) in &by_trace {
        whole_request(trace);
        if (0..EACH).any(|i| *id == low(i)) {
            // curl's span continues the caller's context it sent.
            let client = trace.iter().find(|s| s.kind() == SpanKind::Client);
            assert_eq!(
                client.and_then(|s| s.parent_span_id()).as_deref(),
                Some("00f067aa0ba902b7"),
                "{id}"
            );
        } else {
            assert!(
                (0..EACH).all(|i| *id != high(i)),
                "{id}: the caller did not sample it"
            );
            assert!(sampled_at(id, 0.5), "{id} kept but not sampled at 0.5");
            headerless += 1;
        }
    }
    for i in 0..EACH {
        assert!(
            by_trace.contains_key(&low(i)),
            "the caller sampled {}",
            low(i)
        );
    }
    let (lo, hi) = binomial_bounds(EACH, 0.5);
    assert!((lo..=hi).contains(&headerless), "{headerless}");
    assert_eq!(by_trace.len(), EACH + headerless);
    assert_eq!(c["kept"], 2 * (EACH + headerless) as u64, "{c:?}");
    assert_eq!(c["dropped"], 2 * (EACH + EACH - headerless) as u64, "{c:?}");
}

#[test]
fn a_full_priority_buffer_decides_early_and_counts_it() {
    const N: usize = 10;
    // Keep everything, decide a trace only a minute after its last span, but let 3 spans wait.
    let mut p = Priority::start(&[
        "--sample-ratio",
        "1",
        "--sample-wait",
        "60s",
        "--sample-buffer",
        "3",
    ]);
    for i in 0..N {
        curl(&["-o", "/dev/null", &p.server.url(&format!("/item/{i}"))]);
    }
    // Long before the window ends, the bound made room: every trace but the last one or two is
    // out, whole.
    p.receiver
        .wait_for_blocking(|s| s.len() >= 2 * (N - 2), Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}\n{}", p.agent.stderr()));
    let waiting = metric(&p.prom_addr, "socktrace_sampling_buffered_spans");
    assert!(waiting.is_some_and(|n| n <= 3), "{waiting:?}");
    p.agent.stop();
    let c = final_counters(&p.agent.stderr(), "sampling");
    // Every trace kept whole in the end: those decided early, and at shutdown the rest.
    let spans = p.receiver.spans();
    let by_trace = traces(&spans);
    assert_eq!(by_trace.len(), N);
    for trace in by_trace.values() {
        whole_request(trace);
    }
    assert_eq!(c["traces_kept_ratio"], N as u64, "{c:?}");
    assert_eq!((c["kept"], c["dropped"]), (2 * N as u64, 0), "{c:?}");
    assert!(
        (N as u64 - 2..=N as u64).contains(&c["decided_early"]),
        "{c:?}"
    );
    assert_eq!(c["buffered_spans"], 0, "{c:?}");
}
