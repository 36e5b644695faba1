//! Reliability end to end, as root: the real agent (real eBPF programs) traces a real Python
//! `http.server` and real `curl` while its OTLP collector is down or misbehaves (throttles,
//! refuses, answers slowly, resets connections), and nothing is lost or duplicated.

use std::{
    collections::{BTreeSet, HashMap},
    ops::Range,
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use socktrace_tests::{
    harness::{
        Agent, PyServer, curl, exact, final_counters, free_port, metric, of_kind, require_root,
        wait_metric,
    },
    otlp_receiver::{OtlpReceiver, Protocol, ReceivedRequest, ReceivedSpan, Reply},
};

/// Requests answered while the collector is down.
const REQUESTS: usize = 50;
/// How long the collector stays down.
const OUTAGE: Duration = Duration::from_secs(30);

/// Checks the SERVER spans of requests `/item/{i}`, `i` in `items`, one each, and that each has
/// its CLIENT span (curl's) as parent, with the attributes of that very request.
fn check_items(
    server: &PyServer,
    servers: &[ReceivedSpan],
    clients: &[ReceivedSpan],
    items: Range<usize>,
) {
    let p = i64::from(server.port);
    let by_id: HashMap<String, _> = clients.iter().map(|c| (c.span_id(), c)).collect();
    let mut paths = BTreeSet::new();
    for s in servers {
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
    let want: BTreeSet<String> = items.map(|i| format!("/item/{i}")).collect();
    assert_eq!(paths, want);
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
    wait_metric(&health, "socktrace_export_pending", 2 * REQUESTS as u64);
    assert_eq!(metric(&health, "socktrace_export_failing"), Some(1));
    assert_eq!(metric(&health, "socktrace_export_exported_total"), Some(2));
    assert_eq!(metric(&health, "socktrace_export_failed_total"), Some(0));
    assert_eq!(
        metric(&health, "socktrace_export_dropped_queue_full_total"),
        Some(0)
    );
    if let Some(rest) = OUTAGE.checked_sub(down.elapsed()) {
        std::thread::sleep(rest);
    }

    // The collector comes back on the same port: the queue drains by itself.
    let receiver = OtlpReceiver::start_blocking_on(protocol, addr);
    let (servers, clients) = exact(&receiver, REQUESTS, REQUESTS);

    check_items(&server, &servers, &clients, 0..REQUESTS);

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

// ---- a collector that misbehaves while it is up ----

/// The agent tracing a Python server and exporting to a test receiver over `protocol`.
struct Rig {
    receiver: OtlpReceiver,
    server: PyServer,
    agent: Agent,
    /// `http://` address of the agent's `/metrics`.
    health: String,
}

impl Rig {
    fn start(protocol: Protocol, env: &[(&str, &str)]) -> Self {
        require_root();
        let receiver = OtlpReceiver::start_blocking(protocol);
        let server = PyServer::start(&[("OTEL_SERVICE_NAME", "py-server")]);
        let port = server.port.to_string();
        let endpoint = receiver.endpoint();
        let health = format!("127.0.0.1:{}", free_port());
        let proto = match protocol {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
        };
        let mut all_env = vec![("OTEL_BSP_SCHEDULE_DELAY", "200")];
        all_env.extend_from_slice(env);
        let agent = Agent::start_with_env(
            &[
                "--otlp-endpoint",
                &endpoint,
                "--otlp-protocol",
                proto,
                "--port",
                &port,
                "--health-listen",
                &health,
            ],
            &all_env,
        );
        Self {
            receiver,
            server,
            agent,
            health: health.clone(),
        }
    }

    /// Requests `/item/{i}` for every `i` of `items`: curl runs of 5, `gap` apart.
    fn traffic(&self, items: Range<usize>, gap: Duration) {
        let urls: Vec<String> = items
            .map(|i| self.server.url(&format!("/item/{i}")))
            .collect();
        for (n, chunk) in urls.chunks(5).enumerate() {
            if n > 0 {
                std::thread::sleep(gap);
            }
            curl(&chunk.iter().map(String::as_str).collect::<Vec<_>>());
        }
    }

    /// Stops the agent and checks its final export counters: all `spans` queued and exported,
    /// none dropped or given up, nothing pending; returns the number of retries.
    fn stop_and_check_counters(&mut self, spans: u64) -> u64 {
        assert_eq!(self.agent.stop(), Some(0), "agent must exit 0 on SIGTERM");
        let export = final_counters(&self.agent.stderr(), "export");
        for (name, want) in [
            ("queued", spans),
            ("exported", spans),
            ("dropped_queue_full", 0),
            ("failed", 0),
            ("pending", 0),
            ("failing", 0),
        ] {
            assert_eq!(export.get(name), Some(&want), "{name}: {export:?}");
        }
        export["retries"]
    }
}

/// Waits (up to `limit`) until the receiver got `n` requests, whatever it answered.
fn wait_requests(receiver: &OtlpReceiver, n: usize, limit: Duration) {
    let deadline = Instant::now() + limit;
    while receiver.request_count() < n {
        assert!(
            Instant::now() < deadline,
            "expected {n} export requests within {limit:?}, got {}",
            receiver.request_count()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Span ids of a request's body.
fn span_ids(req: &ReceivedRequest) -> Vec<String> {
    req.body
        .resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|ss| &ss.spans)
        .map(|s| socktrace_tests::otlp_receiver::hex(&s.span_id))
        .collect()
}

/// The requests the receiver did not accept are exactly those at `refused`, and each was
/// followed by the retry of the same batch: the exporter sends one batch at a time, so the next
/// request must carry the very same spans (not dropped, not replaced by a newer batch). The
/// retry came no earlier than `min_wait` after the refused request.
fn check_retried(requests: &[ReceivedRequest], refused: &[usize], min_wait: Duration) {
    let not_accepted: Vec<usize> = (0..requests.len())
        .filter(|&i| !requests[i].reply.is_accept())
        .collect();
    assert_eq!(not_accepted, refused, "replies: {:?}", replies(requests));
    for &i in refused {
        let retry = requests
            .get(i + 1)
            .unwrap_or_else(|| panic!("request {i} was never retried: {:?}", replies(requests)));
        assert!(requests[i].span_count() > 0, "request {i} is empty");
        assert_eq!(
            span_ids(retry),
            span_ids(&requests[i]),
            "request {} must retry the batch of request {i}",
            i + 1
        );
        let waited = retry.received_at.duration_since(requests[i].received_at);
        // A lower bound only: the machine may be slow, never too fast.
        assert!(
            waited >= min_wait,
            "retry of request {i} came {waited:?} after it, expected at least {min_wait:?}"
        );
    }
}

fn replies(requests: &[ReceivedRequest]) -> Vec<String> {
    requests
        .iter()
        .map(|r| format!("{:?}/{}spans/{:?}", r.reply, r.span_count(), r.delay))
        .collect()
}

/// How many times the collector throttles, and the delay it asks for.
const THROTTLED: usize = 3;
const THROTTLE_DELAY: Duration = Duration::from_secs(3);

/// HTTP 429 with `Retry-After: 3` / gRPC RESOURCE_EXHAUSTED with a 3 s RetryInfo, for the first
/// 3 export requests: the exporter waits as asked (not its 1 s backoff) and retries the same
/// batch until accepted; every span arrives once.
fn throttled_then_every_span_arrives_once(protocol: Protocol) {
    let mut rig = Rig::start(protocol, &[]);
    rig.receiver.reply_next(std::iter::repeat_n(
        Reply::throttled(THROTTLE_DELAY),
        THROTTLED,
    ));
    rig.traffic(0..10, Duration::from_secs(1));
    let (servers, clients) = exact(&rig.receiver, 10, 10);
    check_items(&rig.server, &servers, &clients, 0..10);
    let requests = rig.receiver.requests();
    check_retried(&requests, &[0, 1, 2], THROTTLE_DELAY);
    let retries = rig.stop_and_check_counters(20);
    assert!(retries >= THROTTLED as u64, "retries: {retries}");
}

#[test]
fn http_429_retry_after_is_honoured_and_every_span_arrives_once() {
    throttled_then_every_span_arrives_once(Protocol::HttpProtobuf);
}

#[test]
fn grpc_resource_exhausted_retry_info_is_honoured_and_every_span_arrives_once() {
    throttled_then_every_span_arrives_once(Protocol::Grpc);
}

/// How long the collector answers 503 / UNAVAILABLE at least, and how many refusals at least:
/// more attempts than a retry limit of 5 would allow.
const UNAVAILABLE_FOR: Duration = Duration::from_secs(10);
const MIN_REFUSED: usize = 6;

/// HTTP 503 / gRPC UNAVAILABLE for every request during at least 10 s (and 6 attempts) while
/// traffic goes on, then accepted: the agent holds every span (none dropped), reports that it
/// fails, keeps retrying the same batch, and then delivers every span once.
fn unavailable_then_every_span_arrives_once(protocol: Protocol) {
    let mut rig = Rig::start(protocol, &[]);
    rig.receiver.set_default_reply(Reply::unavailable());
    let down = Instant::now();
    rig.traffic(0..15, Duration::from_secs(2));
    wait_metric(&rig.health, "socktrace_export_pending", 30);
    assert_eq!(metric(&rig.health, "socktrace_export_failing"), Some(1));
    assert_eq!(
        metric(&rig.health, "socktrace_export_failed_total"),
        Some(0)
    );
    if let Some(rest) = UNAVAILABLE_FOR.checked_sub(down.elapsed()) {
        std::thread::sleep(rest);
    }
    wait_requests(&rig.receiver, MIN_REFUSED, Duration::from_secs(30));
    rig.receiver.set_default_reply(Reply::Accept);
    let (servers, clients) = exact(&rig.receiver, 15, 15);
    check_items(&rig.server, &servers, &clients, 0..15);
    let requests = rig.receiver.requests();
    let refused = requests.iter().take_while(|r| !r.reply.is_accept()).count();
    assert!(refused >= MIN_REFUSED, "{:?}", replies(&requests));
    // Retried with the exporter's backoff, which starts at 0.5-1 s (jitter).
    check_retried(
        &requests,
        &(0..refused).collect::<Vec<_>>(),
        Duration::from_millis(500),
    );
    let retries = rig.stop_and_check_counters(30);
    assert_eq!(retries, refused as u64);
    let stderr = rig.agent.stderr();
    let recovered = stderr
        .lines()
        .find(|l| l.contains("works again: outage of"))
        .unwrap_or_else(|| panic!("no recovery line:\n{stderr}"));
    assert!(recovered.ends_with("; no spans lost"), "{recovered}");
}

#[test]
fn http_503_for_10s_then_every_span_arrives_once() {
    unavailable_then_every_span_arrives_once(Protocol::HttpProtobuf);
}

#[test]
fn grpc_unavailable_for_10s_then_every_span_arrives_once() {
    unavailable_then_every_span_arrives_once(Protocol::Grpc);
}

/// A collector that takes 2 s per request (within the default 10 s timeout) while traffic goes
/// on: nothing times out, nothing is sent twice, nothing is dropped.
fn slow_collector_within_timeout(protocol: Protocol) {
    let delay = Duration::from_secs(2);
    let mut rig = Rig::start(protocol, &[]);
    rig.receiver.set_response_delay(delay);
    rig.traffic(0..15, Duration::from_secs(1));
    let (servers, clients) = exact(&rig.receiver, 15, 15);
    check_items(&rig.server, &servers, &clients, 0..15);
    let requests = rig.receiver.requests();
    assert!(
        requests
            .iter()
            .all(|r| r.reply.is_accept() && r.delay == delay),
        "{:?}",
        replies(&requests)
    );
    let retries = rig.stop_and_check_counters(30);
    assert_eq!(retries, 0, "{:?}", replies(&requests));
}

#[test]
fn http_slow_collector_within_timeout_gets_every_span_once() {
    slow_collector_within_timeout(Protocol::HttpProtobuf);
}

#[test]
fn grpc_slow_collector_within_timeout_gets_every_span_once() {
    slow_collector_within_timeout(Protocol::Grpc);
}

/// A collector slower than the agent's timeout (1 s) for its first requests (3 s), then quick.
///
/// OTLP is at least once: the receiver records a request, and counts its spans as received,
/// before its delay; a client that timed out meanwhile never learns it and sends the batch
/// again. So spans may arrive twice, but only those of requests the receiver delayed beyond the
/// timeout: among the requests answered in time every span arrives exactly once, every expected
/// span arrives, and every timed-out request is followed by the retry of its batch.
fn slow_collector_beyond_timeout(protocol: Protocol) {
    let timeout = Duration::from_millis(1000);
    let mut rig = Rig::start(protocol, &[("OTEL_EXPORTER_OTLP_TIMEOUT", "1000")]);
    rig.receiver.set_response_delay(Duration::from_secs(3));
    rig.traffic(0..5, Duration::ZERO);
    wait_requests(&rig.receiver, 2, Duration::from_secs(30));
    rig.receiver.set_response_delay(Duration::ZERO);
    rig.traffic(5..10, Duration::ZERO);

    // Wait for every expected span, unique by span id; then for stragglers.
    let unique = |spans: &[ReceivedSpan], kind| {
        of_kind(spans, kind)
            .into_iter()
            .map(|s| (s.span_id(), s))
            .collect::<HashMap<_, _>>()
    };
    rig.receiver
        .wait_for_blocking(
            |s| unique(s, SpanKind::Server).len() >= 10 && unique(s, SpanKind::Client).len() >= 10,
            Duration::from_secs(30),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    std::thread::sleep(Duration::from_millis(1500));
    let spans = rig.receiver.spans();
    let servers: Vec<_> = unique(&spans, SpanKind::Server).into_values().collect();
    let clients: Vec<_> = unique(&spans, SpanKind::Client).into_values().collect();
    assert_eq!(servers.len(), 10);
    assert_eq!(clients.len(), 10);
    check_items(&rig.server, &servers, &clients, 0..10);

    let requests = rig.receiver.requests();
    let log = replies(&requests);
    // Every request is accepted by the receiver, the timed-out ones too.
    assert!(requests.iter().all(|r| r.reply.is_accept()), "{log:?}");
    let timed_out: Vec<usize> = (0..requests.len())
        .filter(|&i| requests[i].delay > timeout)
        .collect();
    assert!(timed_out.len() >= 2, "{log:?}");
    let mut in_time: HashMap<String, usize> = HashMap::new();
    let mut late: HashMap<String, usize> = HashMap::new();
    for (i, r) in requests.iter().enumerate() {
        let counts = if timed_out.contains(&i) {
            &mut late
        } else {
            &mut in_time
        };
        for id in span_ids(r) {
            *counts.entry(id).or_default() += 1;
        }
    }
    // Exactly once among the requests answered in time, all 20 spans ...
    assert_eq!(in_time.len(), 20, "{log:?}");
    assert!(in_time.values().all(|&n| n == 1), "{in_time:?} {log:?}");
    // ... and the duplicates are exactly the copies in timed-out requests.
    let late_copies: usize = late.values().sum();
    assert!(late.keys().all(|id| in_time.contains_key(id)), "{log:?}");
    assert_eq!(spans.len(), 20 + late_copies, "{log:?}");
    for &i in &timed_out {
        let retry = requests
            .get(i + 1)
            .unwrap_or_else(|| panic!("timed-out request {i} was never retried: {log:?}"));
        assert_eq!(span_ids(retry), span_ids(&requests[i]), "{log:?}");
    }
    let retries = rig.stop_and_check_counters(20);
    assert!(
        retries >= timed_out.len() as u64,
        "retries {retries}: {log:?}"
    );
}

#[test]
fn http_collector_slower_than_timeout_gets_every_span_at_least_once() {
    slow_collector_beyond_timeout(Protocol::HttpProtobuf);
}

#[test]
fn grpc_collector_slower_than_timeout_gets_every_span_at_least_once() {
    slow_collector_beyond_timeout(Protocol::Grpc);
}

/// How many export requests the collector answers by resetting the connection.
const RESETS: usize = 3;

/// The collector reads the first 3 export requests, then resets their connection (TCP RST, no
/// answer): the request was not accepted, so the exporter reconnects and retries the same batch;
/// every span arrives exactly once.
fn connection_resets_then_every_span_arrives_once(protocol: Protocol) {
    let mut rig = Rig::start(protocol, &[]);
    rig.receiver
        .reply_next(std::iter::repeat_n(Reply::Reset, RESETS));
    rig.traffic(0..10, Duration::from_secs(1));
    let (servers, clients) = exact(&rig.receiver, 10, 10);
    check_items(&rig.server, &servers, &clients, 0..10);
    let requests = rig.receiver.requests();
    assert!(
        requests[..RESETS].iter().all(|r| r.reply == Reply::Reset),
        "{:?}",
        replies(&requests)
    );
    check_retried(&requests, &[0, 1, 2], Duration::ZERO);
    let retries = rig.stop_and_check_counters(20);
    assert!(retries >= RESETS as u64, "retries: {retries}");
}

#[test]
fn http_connection_resets_then_every_span_arrives_once() {
    connection_resets_then_every_span_arrives_once(Protocol::HttpProtobuf);
}

#[test]
fn grpc_connection_resets_then_every_span_arrives_once() {
    connection_resets_then_every_span_arrives_once(Protocol::Grpc);
}
