//! Reliability end to end, as root: the real agent (real eBPF programs) traces a real Python
//! `http.server` and real `curl` while its OTLP collector is down, and nothing is lost.

use std::{
    collections::{BTreeSet, HashMap},
    time::{Duration, Instant},
};

use socktrace_tests::{
    harness::{Agent, PyServer, curl, exact, final_counters, free_port, require_root},
    otlp_receiver::{OtlpReceiver, Protocol},
};

/// Requests answered while the collector is down.
const REQUESTS: usize = 50;
/// How long the collector stays down.
const OUTAGE: Duration = Duration::from_secs(30);

/// A metric of the agent's `/metrics`, if present.
fn metric(base: &str, name: &str) -> Option<u64> {
    let text = curl(&[&format!("{base}/metrics")]);
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.parse().ok())
}

/// Polls `/metrics` until `name` has `value` (counts, not timing: the deadline is generous).
fn wait_metric(base: &str, name: &str, value: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = metric(base, name);
        if now == Some(value) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} is {now:?}, expected {value}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn collector_down_for_30s_then_every_span_arrives_exactly_once() {
    require_root();
    // The default protocol, as a new user would run it.
    let protocol = Protocol::HttpProtobuf;
    let receiver = OtlpReceiver::start_blocking(protocol);
    let addr = receiver.addr();
    let server = PyServer::start(&[("OTEL_SERVICE_NAME", "py-server")]);
    let port = server.port.to_string();
    let endpoint = receiver.endpoint();
    let health = format!("127.0.0.1:{}", free_port());
    let base = format!("http://{health}");
    let mut agent = Agent::start_with_env(
        &[
            "--otlp-endpoint",
            &endpoint,
            "--port",
            &port,
            "--health-listen",
            &health,
        ],
        &[("OTEL_BSP_SCHEDULE_DELAY", "200")],
    );

    // The collector works (and the exporter has a connection to it) ...
    curl(&[&server.url("/hello")]);
    exact(&receiver, 1, 1);

    // ... then goes away: its port refuses connections.
    let down = Instant::now();
    drop(receiver);
    // Steady traffic meanwhile: 10 curl runs of 5 requests, 2 s apart.
    for round in 0..REQUESTS / 5 {
        let urls: Vec<String> = (round * 5..round * 5 + 5)
            .map(|i| server.url(&format!("/item/{i}")))
            .collect();
        curl(&urls.iter().map(String::as_str).collect::<Vec<_>>());
        std::thread::sleep(Duration::from_secs(2));
    }
    // Every span is kept in the queue, none dropped or given up, and the agent says it fails.
    wait_metric(&base, "socktrace_export_pending", 2 * REQUESTS as u64);
    assert_eq!(metric(&base, "socktrace_export_failing"), Some(1));
    assert_eq!(metric(&base, "socktrace_export_exported_total"), Some(2));
    assert_eq!(metric(&base, "socktrace_export_failed_total"), Some(0));
    assert_eq!(
        metric(&base, "socktrace_export_dropped_queue_full_total"),
        Some(0)
    );
    if let Some(rest) = OUTAGE.checked_sub(down.elapsed()) {
        std::thread::sleep(rest);
    }

    // The collector comes back on the same port: the queue drains by itself.
    let receiver = OtlpReceiver::start_blocking_on(protocol, addr);
    let (servers, clients) = exact(&receiver, REQUESTS, REQUESTS);

    let p = i64::from(server.port);
    let by_id: HashMap<String, _> = clients.iter().map(|c| (c.span_id(), c)).collect();
    let mut paths = BTreeSet::new();
    for s in &servers {
        assert_eq!(s.name(), "GET /item/{id}", "{s}");
        let path = s.attr_str("url.path").unwrap_or_else(|| panic!("{s}"));
        let i: usize = path
            .strip_prefix("/item/")
            .and_then(|i| i.parse().ok())
            .unwrap_or_else(|| panic!("{s}"));
        assert!(paths.insert(path.clone()), "{path} twice");
        assert_eq!(s.attr_str("http.request.method").as_deref(), Some("GET"));
        assert_eq!(s.attr_str("http.route").as_deref(), Some("/item/{id}"));
        assert_eq!(s.attr_int("http.response.status_code"), Some(200), "{s}");
        assert_eq!(
            s.attr_int("http.response.body.size"),
            Some(i as i64 + 1),
            "{s}"
        );
        assert_eq!(s.attr_int("server.port"), Some(p), "{s}");
        assert_eq!(s.resource_str("service.name"), Some("py-server"));
        assert_eq!(s.resource_int("process.pid"), Some(i64::from(server.pid())));
        // Its parent is the CLIENT span of the same request, in the same trace.
        let parent = s.parent_span_id().unwrap_or_else(|| panic!("{s}"));
        let client = by_id
            .get(&parent)
            .unwrap_or_else(|| panic!("no client span for {s}"));
        assert_eq!(client.trace_id(), s.trace_id(), "{s}");
        assert_eq!(
            client.attr_str("url.full"),
            Some(format!("http://127.0.0.1:{p}{path}")),
            "{client}"
        );
        assert_eq!(client.attr_int("http.response.status_code"), Some(200));
        assert_eq!(client.resource_str("service.name"), Some("curl"));
    }
    let want: BTreeSet<String> = (0..REQUESTS).map(|i| format!("/item/{i}")).collect();
    assert_eq!(paths, want);

    assert_eq!(agent.stop(), Some(0), "agent must exit 0 on SIGTERM");
    let stderr = agent.stderr();
    let export = final_counters(&stderr, "export");
    // 1 + 50 requests, a server and a client span each.
    let total = 2 * (REQUESTS as u64 + 1);
    for (name, want) in [
        ("queued", total),
        ("exported", total),
        ("dropped_queue_full", 0),
        ("failed", 0),
        ("pending", 0),
        ("failing", 0),
    ] {
        assert_eq!(export.get(name), Some(&want), "{name}: {export:?}");
    }
    assert!(export["retries"] >= 1, "{export:?}");
    let recovered = stderr
        .lines()
        .find(|l| l.contains("works again: outage of"))
        .unwrap_or_else(|| panic!("no recovery line:\n{stderr}"));
    assert!(recovered.ends_with("; no spans lost"), "{recovered}");
}
