//! The OTLP exporter against the in-process receiver, both protocols. No root, no BPF.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::trace::v1::{span::SpanKind as ProtoKind, status::StatusCode};
use socktrace::{
    export::{
        self, ExportCli, ExportConfig, ExportStats, ExporterHandle, OtlpConfig, OtlpProtocol,
        RetryConfig, resolve_config,
    },
    trace::span::{KeyValue, Resource, Span, SpanId, SpanKind, SpanLink, Status, TraceId, Value},
};
use socktrace_tests::otlp_receiver::{
    AttrValue, Code, HTTP_TRACES_PATH, OtlpReceiver, Protocol, ReceivedSpan, Reply, hex,
};

const WAIT: Duration = Duration::from_secs(10);
const BOTH: [Protocol; 2] = [Protocol::Grpc, Protocol::HttpProtobuf];

fn otlp_protocol(p: Protocol) -> OtlpProtocol {
    match p {
        Protocol::Grpc => OtlpProtocol::Grpc,
        Protocol::HttpProtobuf => OtlpProtocol::HttpProtobuf,
    }
}

/// Fast retries so the tests take milliseconds, not seconds; no limit, like the default.
fn fast_retry() -> RetryConfig {
    RetryConfig {
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(50),
        ..RetryConfig::default()
    }
}

/// [`fast_retry`] giving up on a batch after `max_attempts` attempts.
fn limited_retry(max_attempts: u32) -> RetryConfig {
    RetryConfig {
        max_attempts: Some(max_attempts),
        ..fast_retry()
    }
}

/// OTLP only, batches sent when `max_batch` spans are queued (the timer is long).
fn config(receiver: &OtlpReceiver, max_batch: usize) -> ExportConfig {
    ExportConfig {
        otlp: Some(OtlpConfig {
            endpoint: receiver.traces_endpoint(),
            protocol: otlp_protocol(receiver.protocol()),
            headers: vec![],
            timeout: Duration::from_secs(5),
        }),
        console: false,
        max_batch,
        batch_timeout: Duration::from_secs(60),
        retry: fast_retry(),
        ..ExportConfig::default()
    }
}

fn resource(pid: i64, service: &str) -> Arc<Resource> {
    Arc::new(Resource {
        key: format!("pid:{pid}"),
        attributes: vec![
            KeyValue::new("service.name", service),
            KeyValue::new("process.pid", pid),
        ],
    })
}

fn trace_id(n: u8) -> TraceId {
    let mut id = [0xa0; 16];
    id[15] = n;
    id[0] = 0x4b;
    TraceId(id)
}

fn span_id(n: u8) -> SpanId {
    SpanId([0, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, n])
}

/// A small trace over two processes, submitted interleaved:
/// 1 frontend SERVER (root, remote-parented by 0x77) -> 2 frontend CLIENT -> 3 backend SERVER,
/// and 4, a failed backend CLIENT in another trace.
fn scenario() -> Vec<Span> {
    let frontend = resource(100, "frontend");
    let backend = resource(200, "backend");
    let base = 1_740_830_400_000_000_000u64;
    let mk = |n: u8, res: &Arc<Resource>, kind, parent: Option<SpanId>| Span {
        trace_id: trace_id(if n == 4 { 2 } else { 1 }),
        span_id: span_id(n),
        parent_span_id: parent,
        trace_state: String::new(),
        parent_sampled: None,
        name: format!("GET /step/{n}"),
        kind,
        start_unix_nanos: base + u64::from(n) * 1_000,
        end_unix_nanos: base + u64::from(n) * 1_000 + 12_345_678,
        attributes: vec![
            KeyValue::new("http.request.method", "GET"),
            KeyValue::new("url.path", format!("/step/{n}")),
            KeyValue::new("http.response.status_code", 200i64),
        ],
        status: Status::Unset,
        links: Vec::new(),
        resource: res.clone(),
        scope: "socktrace.http",
    };
    let mut s1 = mk(1, &frontend, SpanKind::Server, Some(span_id(0x77)));
    s1.trace_state = "vendor=abc,other=1".into();
    let s2 = mk(2, &frontend, SpanKind::Client, Some(span_id(1)));
    let mut s3 = mk(3, &backend, SpanKind::Server, Some(span_id(2)));
    s3.attributes
        .push(KeyValue::new("network.peer.reachable", true));
    s3.attributes.push(KeyValue {
        key: "socktrace.ratio".into(),
        value: Value::Double(0.25),
    });
    s3.status = Status::Ok;
    let mut s4 = mk(4, &backend, SpanKind::Client, None);
    s4.status = Status::Error {
        message: "connection reset by peer".into(),
    };
    s4.attributes[2] = KeyValue::new("http.response.status_code", 503i64);
    // A call with candidate parents instead of a parent (an event loop's).
    s4.links = vec![
        SpanLink {
            trace_id: trace_id(1),
            span_id: span_id(1),
            trace_state: "vendor=abc,other=1".into(),
        },
        SpanLink {
            trace_id: trace_id(3),
            span_id: span_id(9),
            trace_state: String::new(),
        },
    ];
    // Interleaved across processes: frontend, backend, frontend, backend.
    vec![s1, s3, s2, s4]
}

fn by_name(spans: &[ReceivedSpan]) -> HashMap<String, ReceivedSpan> {
    spans
        .iter()
        .map(|s| (s.name().to_owned(), s.clone()))
        .collect()
}

/// Collects formatted log output of the current thread.
#[derive(Clone, Default)]
struct LogBuffer(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogBuffer {
    fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// Captures the log output of the current thread (the test runtime is single-threaded, so the
/// exporter tasks log through it) until the guard is dropped.
fn capture_logs() -> (LogBuffer, impl Sized) {
    let logs = LogBuffer::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .without_time()
        .finish();
    let guard = tracing_subscriber::util::SubscriberInitExt::set_default(subscriber);
    (logs, guard)
}

async fn shutdown_within(handle: &ExporterHandle, limit: Duration) {
    let start = Instant::now();
    handle.shutdown().await;
    assert!(
        start.elapsed() <= limit,
        "shutdown took {:?} (limit {limit:?})",
        start.elapsed()
    );
}

async fn delivers_exact_spans(protocol: Protocol) {
    let receiver = OtlpReceiver::start(protocol).await;
    // Configured like a user would: generic endpoint + headers from the environment.
    let env: HashMap<&str, String> = HashMap::from([
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()),
        (
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            otlp_protocol(protocol).as_str().to_owned(),
        ),
        (
            "OTEL_EXPORTER_OTLP_HEADERS",
            "x-api-key=secret%20value%2C42,X-Tenant=t1".to_owned(),
        ),
    ]);
    let mut cfg = resolve_config(&ExportCli::default(), &|k| env.get(k).cloned()).unwrap();
    assert!(!cfg.console);
    cfg.max_batch = 4;
    cfg.batch_timeout = Duration::from_secs(60);
    let handle = export::start(cfg).unwrap();
    for s in scenario() {
        handle.submit(s);
    }
    let spans = receiver
        .wait_for(|s| s.len() >= 4, WAIT)
        .await
        .unwrap_or_else(|e| panic!("{protocol:?}: {e}"));
    shutdown_within(&handle, Duration::from_secs(2)).await;
    assert_eq!(spans.len(), 4, "{protocol:?}");
    assert_eq!(
        handle.stats(),
        ExportStats {
            queued: 4,
            exported: 4,
            dropped_queue_full: 0,
            failed: 0,
            retries: 0
        }
    );

    // One request, grouped per process: frontend (first seen) then backend.
    let requests = receiver.requests();
    assert_eq!(requests.len(), 1);
    let req = &requests[0];
    let grouped: Vec<(String, Vec<String>)> = req
        .body
        .resource_spans
        .iter()
        .map(|rs| {
            let svc = rs
                .resource
                .as_ref()
                .unwrap()
                .attributes
                .iter()
                .find(|kv| kv.key == "service.name")
                .map(|kv| AttrValue::from_any(kv.value.as_ref()));
            let names = rs
                .scope_spans
                .iter()
                .flat_map(|ss| &ss.spans)
                .map(|s| s.name.clone())
                .collect();
            (format!("{svc:?}"), names)
        })
        .collect();
    assert_eq!(
        grouped,
        vec![
            (
                format!("{:?}", Some(AttrValue::Str("frontend".into()))),
                vec!["GET /step/1".to_owned(), "GET /step/2".to_owned()]
            ),
            (
                format!("{:?}", Some(AttrValue::Str("backend".into()))),
                vec!["GET /step/3".to_owned(), "GET /step/4".to_owned()]
            ),
        ]
    );
    for rs in &req.body.resource_spans {
        assert_eq!(rs.scope_spans.len(), 1);
    }

    // Transport details.
    match protocol {
        Protocol::HttpProtobuf => {
            assert_eq!(req.path, HTTP_TRACES_PATH);
            assert_eq!(req.method, "POST");
            assert_eq!(req.header("content-type"), Some("application/x-protobuf"));
        }
        Protocol::Grpc => {
            assert!(
                req.header("content-type")
                    .is_some_and(|ct| ct.starts_with("application/grpc")),
                "{:?}",
                req.headers
            );
        }
    }
    let ua = req.header("user-agent").unwrap_or_default();
    assert!(
        ua.starts_with(&format!("socktrace/{}", env!("CARGO_PKG_VERSION"))),
        "user-agent {ua:?}"
    );
    assert_eq!(req.header("x-api-key"), Some("secret value,42"));
    assert_eq!(req.header("x-tenant"), Some("t1"));

    // Every field of every span.
    let by = by_name(&spans);
    let s1 = &by["GET /step/1"];
    assert_eq!(s1.trace_id(), "4ba0a0a0a0a0a0a0a0a0a0a0a0a0a001");
    assert_eq!(s1.span_id(), "00f067aa0ba90201");
    assert_eq!(s1.parent_span_id().as_deref(), Some("00f067aa0ba90277"));
    assert_eq!(s1.span.trace_state, "vendor=abc,other=1");
    assert_eq!(s1.kind(), ProtoKind::Server);
    assert_eq!(s1.span.start_time_unix_nano, 1_740_830_400_000_001_000);
    assert_eq!(s1.span.end_time_unix_nano, 1_740_830_400_012_346_678);
    assert_eq!(s1.status_code(), StatusCode::Unset);
    assert_eq!(s1.scope, "socktrace.http");
    assert_eq!(s1.scope_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(s1.resource_str("service.name"), Some("frontend"));
    assert_eq!(s1.resource_int("process.pid"), Some(100));
    assert_eq!(s1.attr_str("http.request.method").as_deref(), Some("GET"));
    assert_eq!(s1.attr_str("url.path").as_deref(), Some("/step/1"));
    assert_eq!(s1.attr_int("http.response.status_code"), Some(200));
    assert_eq!(s1.span.attributes.len(), 3);

    let s2 = &by["GET /step/2"];
    assert_eq!(s2.kind(), ProtoKind::Client);
    assert_eq!(s2.trace_id(), s1.trace_id());
    assert_eq!(s2.parent_span_id(), Some(s1.span_id()));
    assert_eq!(s2.span.trace_state, "");
    assert_eq!(s2.resource_int("process.pid"), Some(100));

    let s3 = &by["GET /step/3"];
    assert_eq!(s3.kind(), ProtoKind::Server);
    assert_eq!(s3.parent_span_id(), Some(s2.span_id()));
    assert_eq!(s3.resource_str("service.name"), Some("backend"));
    assert_eq!(s3.resource_int("process.pid"), Some(200));
    assert_eq!(s3.status_code(), StatusCode::Ok);
    assert_eq!(s3.attr_bool("network.peer.reachable"), Some(true));
    assert_eq!(s3.attr("socktrace.ratio"), Some(AttrValue::Double(0.25)));
    assert_eq!(s3.duration(), Duration::from_nanos(12_345_678));

    let s4 = &by["GET /step/4"];
    assert_eq!(s4.trace_id(), "4ba0a0a0a0a0a0a0a0a0a0a0a0a0a002");
    assert_eq!(s4.parent_span_id(), None);
    assert!(s4.span.parent_span_id.is_empty());
    assert_eq!(s4.kind(), ProtoKind::Client);
    assert_eq!(s4.status_code(), StatusCode::Error);
    assert_eq!(s4.status_message(), "connection reset by peer");
    assert_eq!(s4.attr_int("http.response.status_code"), Some(503));
    let links: Vec<(String, String, &str)> = s4
        .span
        .links
        .iter()
        .map(|l| (hex(&l.trace_id), hex(&l.span_id), l.trace_state.as_str()))
        .collect();
    assert_eq!(
        links,
        [
            (s1.trace_id(), s1.span_id(), "vendor=abc,other=1"),
            (
                "4ba0a0a0a0a0a0a0a0a0a0a0a0a0a003".to_owned(),
                "00f067aa0ba90209".to_owned(),
                ""
            ),
        ]
    );
    for s in [s1, s2, s3] {
        assert!(s.span.links.is_empty(), "{s}");
    }
}

#[tokio::test]
async fn grpc_delivers_exact_spans_grouped_by_resource() {
    delivers_exact_spans(Protocol::Grpc).await;
}

#[tokio::test]
async fn http_delivers_exact_spans_grouped_by_resource() {
    delivers_exact_spans(Protocol::HttpProtobuf).await;
}

#[tokio::test]
async fn partial_batch_is_sent_after_batch_timeout() {
    for protocol in BOTH {
        let receiver = OtlpReceiver::start(protocol).await;
        let mut cfg = config(&receiver, 512);
        cfg.batch_timeout = Duration::from_millis(100);
        let handle = export::start(cfg).unwrap();
        let start = Instant::now();
        handle.submit(scenario().remove(0));
        let spans = receiver.wait_for(|s| !s.is_empty(), WAIT).await.unwrap();
        let waited = start.elapsed();
        assert_eq!(spans.len(), 1);
        assert!(
            waited >= Duration::from_millis(90),
            "{protocol:?}: partial batch sent after {waited:?}, before the batch timeout"
        );
        handle.shutdown().await;
        assert_eq!(handle.stats().exported, 1);
    }
}

#[tokio::test]
async fn shutdown_flushes_the_queue() {
    for protocol in BOTH {
        let receiver = OtlpReceiver::start(protocol).await;
        // 4 spans, batches of 3, a timer that never fires: only the shutdown sends them.
        let handle = export::start(config(&receiver, 3)).unwrap();
        for s in scenario() {
            handle.submit(s);
        }
        shutdown_within(&handle, Duration::from_secs(3)).await;
        let spans = receiver.spans();
        assert_eq!(spans.len(), 4, "{protocol:?}");
        assert_eq!(
            receiver.request_count(),
            2,
            "{protocol:?}: a full batch of 3, then 1"
        );
        assert_eq!(handle.stats().exported, 4);
        // Shut down: further spans are dropped and counted, nothing more is sent.
        handle.submit(scenario().remove(0));
        handle.shutdown().await;
        assert_eq!(handle.stats().dropped_queue_full, 1);
        assert_eq!(handle.stats().queued, 4);
        assert_eq!(receiver.request_count(), 2);
    }
}

async fn retries_then_succeeds(protocol: Protocol) {
    let receiver = OtlpReceiver::start(protocol).await;
    receiver.reply_next([Reply::unavailable(), Reply::unavailable()]);
    let handle = export::start(config(&receiver, 2)).unwrap();
    let mut spans = scenario();
    handle.submit(spans.remove(0));
    handle.submit(spans.remove(0));
    let got = receiver.wait_for(|s| s.len() >= 2, WAIT).await.unwrap();
    // Let a wrong extra retry show up before checking counts.
    tokio::time::sleep(Duration::from_millis(200)).await;
    handle.shutdown().await;
    assert_eq!(
        receiver.request_count(),
        3,
        "{protocol:?}: 2 failures then success"
    );
    let requests = receiver.requests();
    assert_eq!(requests[0].reply, Reply::unavailable());
    assert_eq!(requests[2].reply, Reply::Accept);
    // The same batch every time.
    for r in &requests {
        assert_eq!(r.span_count(), 2);
        assert_eq!(r.body, requests[0].body);
    }
    // Delivered exactly once.
    assert_eq!(receiver.spans().len(), 2);
    let mut names: Vec<_> = got.iter().map(|s| s.name().to_owned()).collect();
    names.sort();
    assert_eq!(names, ["GET /step/1", "GET /step/3"]);
    assert_eq!(
        handle.stats(),
        ExportStats {
            queued: 2,
            exported: 2,
            dropped_queue_full: 0,
            failed: 0,
            retries: 2
        }
    );
}

#[tokio::test]
async fn grpc_retries_unavailable_then_succeeds() {
    retries_then_succeeds(Protocol::Grpc).await;
}

#[tokio::test]
async fn http_retries_503_then_succeeds() {
    retries_then_succeeds(Protocol::HttpProtobuf).await;
}

/// `expected_log`: what the (single) warning must say about the failure.
async fn does_not_retry(protocol: Protocol, reply: Reply, expected_log: &str) {
    let (logs, _guard) = capture_logs();
    let receiver = OtlpReceiver::start(protocol).await;
    receiver.set_default_reply(reply.clone());
    let handle = export::start(config(&receiver, 4)).unwrap();
    for s in scenario() {
        handle.submit(s);
    }
    receiver.wait_for_requests(1, WAIT).await.unwrap();
    // Retries would come within 50 ms with the fast policy.
    tokio::time::sleep(Duration::from_millis(300)).await;
    handle.shutdown().await;
    assert_eq!(
        receiver.request_count(),
        1,
        "{protocol:?} {reply:?} must not be retried"
    );
    assert_eq!(receiver.requests()[0].span_count(), 4);
    assert!(receiver.spans().is_empty());
    assert_eq!(
        handle.stats(),
        ExportStats {
            queued: 4,
            exported: 0,
            dropped_queue_full: 0,
            failed: 4,
            retries: 0
        },
        "{protocol:?} {reply:?}"
    );
    let warnings: Vec<_> = logs
        .lines()
        .into_iter()
        .filter(|l| l.contains(" WARN "))
        .collect();
    let want = format!(
        "OTLP export to {} failed: {expected_log}; dropping 4 spans (not retryable)",
        receiver.traces_endpoint()
    );
    assert!(
        warnings.len() == 1 && warnings[0].ends_with(&want),
        "{warnings:#?}\nwanted: {want}"
    );
}

#[tokio::test]
async fn grpc_invalid_argument_is_not_retried() {
    does_not_retry(
        Protocol::Grpc,
        Reply::invalid_argument(),
        "gRPC status INVALID_ARGUMENT: bad request (scripted)",
    )
    .await;
}

#[tokio::test]
async fn http_400_is_not_retried() {
    does_not_retry(
        Protocol::HttpProtobuf,
        Reply::invalid_argument(),
        "HTTP 400 Bad Request: bad request (scripted)",
    )
    .await;
}

#[tokio::test]
async fn grpc_resource_exhausted_without_retry_info_is_not_retried() {
    let reply = Reply::Error {
        grpc: Code::ResourceExhausted,
        http: 429,
        message: "quota".into(),
        retry_after: None,
    };
    does_not_retry(
        Protocol::Grpc,
        reply,
        "gRPC status RESOURCE_EXHAUSTED: quota",
    )
    .await;
}

#[tokio::test]
async fn other_http_errors_are_not_retried() {
    for (http, text) in [
        (401, "401 Unauthorized"),
        (403, "403 Forbidden"),
        (404, "404 Not Found"),
        (500, "500 Internal Server Error"),
    ] {
        let reply = Reply::Error {
            grpc: Code::Internal,
            http,
            message: format!("nope {http}"),
            retry_after: None,
        };
        does_not_retry(
            Protocol::HttpProtobuf,
            reply,
            &format!("HTTP {text}: nope {http}"),
        )
        .await;
    }
}

#[tokio::test]
async fn throttling_delay_is_honoured() {
    // RetryInfo (gRPC) / Retry-After (HTTP, whole seconds) is used instead of the 20 ms backoff.
    for (protocol, delay) in [
        (Protocol::Grpc, Duration::from_millis(700)),
        (Protocol::HttpProtobuf, Duration::from_secs(1)),
    ] {
        let receiver = OtlpReceiver::start(protocol).await;
        receiver.reply_next([Reply::throttled(delay)]);
        let handle = export::start(config(&receiver, 1)).unwrap();
        handle.submit(scenario().remove(0));
        receiver.wait_for(|s| s.len() == 1, WAIT).await.unwrap();
        handle.shutdown().await;
        let requests = receiver.requests();
        assert_eq!(requests.len(), 2, "{protocol:?}");
        let gap = requests[1].received_at - requests[0].received_at;
        assert!(
            gap >= delay - Duration::from_millis(50) && gap < delay + Duration::from_secs(2),
            "{protocol:?}: retried after {gap:?}, server asked for {delay:?}"
        );
        assert_eq!(handle.stats().retries, 1);
        assert_eq!(handle.stats().exported, 1);
    }
}

#[tokio::test]
async fn retries_do_not_give_up_while_the_endpoint_is_down() {
    // Far more failures than the old fixed limit (5 attempts): the batch is still delivered,
    // once, when the endpoint accepts it.
    for protocol in BOTH {
        let receiver = OtlpReceiver::start(protocol).await;
        receiver.set_default_reply(Reply::unavailable());
        let handle = export::start(config(&receiver, 2)).unwrap();
        let mut spans = scenario();
        handle.submit(spans.remove(0));
        handle.submit(spans.remove(0));
        receiver.wait_for_requests(20, WAIT).await.unwrap();
        assert!(handle.failing(), "{protocol:?}");
        assert_eq!(handle.pending(), 2, "{protocol:?}");
        let stats = handle.stats();
        assert_eq!((stats.exported, stats.failed), (0, 0), "{protocol:?}");
        receiver.set_default_reply(Reply::Accept);
        let got = receiver.wait_for(|s| s.len() >= 2, WAIT).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        handle.shutdown().await;
        assert_eq!(got.len(), 2, "{protocol:?}");
        assert_eq!(
            receiver.spans().len(),
            2,
            "{protocol:?}: delivered exactly once"
        );
        let requests = receiver.requests();
        // The same batch every time.
        assert!(requests.iter().all(|r| r.body == requests[0].body));
        let stats = handle.stats();
        assert_eq!(
            stats,
            ExportStats {
                queued: 2,
                exported: 2,
                dropped_queue_full: 0,
                failed: 0,
                retries: requests.len() as u64 - 1
            },
            "{protocol:?}"
        );
        assert!(!handle.failing(), "{protocol:?}");
        assert_eq!(handle.pending(), 0, "{protocol:?}");
    }
}

#[tokio::test]
async fn an_optional_retry_limit_is_honoured() {
    for protocol in BOTH {
        let receiver = OtlpReceiver::start(protocol).await;
        receiver.set_default_reply(Reply::unavailable());
        let mut cfg = config(&receiver, 2);
        cfg.retry = limited_retry(3);
        let handle = export::start(cfg).unwrap();
        let mut spans = scenario();
        handle.submit(spans.remove(0));
        handle.submit(spans.remove(0));
        receiver.wait_for_requests(3, WAIT).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        handle.shutdown().await;
        assert_eq!(
            receiver.request_count(),
            3,
            "{protocol:?}: 3 attempts, no more"
        );
        assert_eq!(
            handle.stats(),
            ExportStats {
                queued: 2,
                exported: 0,
                dropped_queue_full: 0,
                failed: 2,
                retries: 2
            },
            "{protocol:?}"
        );
    }
}

#[tokio::test]
async fn partial_success_counts_rejected_spans() {
    for protocol in BOTH {
        let receiver = OtlpReceiver::start(protocol).await;
        receiver.reply_next([Reply::PartialSuccess {
            rejected_spans: 1,
            error_message: "span 4 too old".into(),
        }]);
        let handle = export::start(config(&receiver, 4)).unwrap();
        for s in scenario() {
            handle.submit(s);
        }
        receiver.wait_for(|s| s.len() == 4, WAIT).await.unwrap();
        handle.shutdown().await;
        assert_eq!(
            receiver.request_count(),
            1,
            "{protocol:?}: partial success is final"
        );
        let stats = handle.stats();
        assert_eq!(
            (stats.exported, stats.failed, stats.retries),
            (3, 1, 0),
            "{protocol:?}"
        );
    }
}

#[tokio::test]
async fn slow_receiver_times_out_and_is_retried() {
    for protocol in BOTH {
        let receiver = OtlpReceiver::start(protocol).await;
        receiver.set_response_delay(Duration::from_secs(3));
        let mut cfg = config(&receiver, 1);
        cfg.otlp.as_mut().unwrap().timeout = Duration::from_millis(200);
        cfg.retry = limited_retry(2);
        let handle = export::start(cfg).unwrap();
        handle.submit(scenario().remove(0));
        receiver.wait_for_requests(2, WAIT).await.unwrap();
        shutdown_within(&handle, Duration::from_secs(2)).await;
        assert_eq!(receiver.request_count(), 2, "{protocol:?}");
        let stats = handle.stats();
        assert_eq!(
            (stats.exported, stats.failed, stats.retries),
            (0, 1, 1),
            "{protocol:?}"
        );
    }
}

#[tokio::test]
async fn traces_endpoint_is_used_as_is() {
    // OTEL_EXPORTER_OTLP_TRACES_ENDPOINT gets no /v1/traces: the receiver sees the custom path
    // (and answers 404, which is not retried).
    let receiver = OtlpReceiver::start_http().await;
    let env: HashMap<&str, String> = HashMap::from([
        (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            format!("{}/custom/traces", receiver.endpoint()),
        ),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9/".into()),
    ]);
    let mut cfg = resolve_config(&ExportCli::default(), &|k| env.get(k).cloned()).unwrap();
    cfg.max_batch = 1;
    cfg.retry = fast_retry();
    let handle = export::start(cfg).unwrap();
    handle.submit(scenario().remove(0));
    let requests = receiver.wait_for_requests(1, WAIT).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    handle.shutdown().await;
    assert_eq!(requests[0].path, "/custom/traces");
    assert_eq!(receiver.request_count(), 1);
    assert_eq!(handle.stats().failed, 1);
}

/// A port nothing listens on.
async fn closed_port_endpoint() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

async fn unreachable_endpoint(protocol: OtlpProtocol) {
    let endpoint = closed_port_endpoint().await;
    let endpoint = match protocol {
        OtlpProtocol::Grpc => endpoint,
        OtlpProtocol::HttpProtobuf => format!("{endpoint}/v1/traces"),
    };
    let handle = export::start(ExportConfig {
        otlp: Some(OtlpConfig {
            endpoint,
            protocol,
            headers: vec![],
            timeout: Duration::from_secs(2),
        }),
        console: false,
        max_queue: 8,
        max_batch: 4,
        batch_timeout: Duration::from_millis(10),
        shutdown_timeout: Duration::from_secs(1),
        retry: RetryConfig {
            initial_backoff: Duration::from_millis(30),
            max_backoff: Duration::from_millis(60),
            ..RetryConfig::default()
        },
        ..ExportConfig::default()
    })
    .unwrap();

    let template = scenario().remove(0);
    let start = Instant::now();
    for _ in 0..10_000 {
        handle.submit(template.clone());
    }
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "{protocol:?}: 10k submits took {took:?}"
    );

    // The sender keeps failing (and retrying) in the background.
    tokio::time::sleep(Duration::from_millis(400)).await;
    for _ in 0..100 {
        handle.submit(template.clone());
    }
    let stats = handle.stats();
    assert_eq!(
        stats.queued + stats.dropped_queue_full,
        10_100,
        "{protocol:?}: {stats:?}"
    );
    // At most the queue (8) plus the batch in flight (4), twice over the two bursts.
    assert!(stats.queued <= 24, "{protocol:?}: {stats:?}");
    assert!(
        stats.dropped_queue_full >= 10_100 - 24,
        "{protocol:?}: {stats:?}"
    );
    assert!(stats.retries >= 2, "{protocol:?}: {stats:?}");
    assert_eq!(stats.exported, 0);

    // Shutdown gives up at its deadline (1 s) instead of retrying forever.
    shutdown_within(&handle, Duration::from_millis(1500)).await;
    let stats = handle.stats();
    assert_eq!(stats.exported, 0);
    assert_eq!(
        stats.failed, stats.queued,
        "{protocol:?}: every queued span accounted for"
    );
}

#[tokio::test]
async fn grpc_unreachable_endpoint_never_blocks() {
    unreachable_endpoint(OtlpProtocol::Grpc).await;
}

#[tokio::test]
async fn http_unreachable_endpoint_never_blocks() {
    unreachable_endpoint(OtlpProtocol::HttpProtobuf).await;
}

#[tokio::test]
async fn unreachable_endpoint_with_default_policy_shuts_down_in_time() {
    // Default retry policy (seconds of backoff) and default 5 s shutdown deadline.
    let endpoint = closed_port_endpoint().await;
    let handle = export::start(ExportConfig {
        otlp: Some(OtlpConfig {
            endpoint,
            protocol: OtlpProtocol::Grpc,
            headers: vec![],
            timeout: Duration::from_secs(10),
        }),
        console: false,
        batch_timeout: Duration::from_millis(10),
        ..ExportConfig::default()
    })
    .unwrap();
    for s in scenario() {
        handle.submit(s);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    shutdown_within(&handle, Duration::from_millis(5_500)).await;
    let stats = handle.stats();
    assert_eq!((stats.queued, stats.exported, stats.failed), (4, 0, 4));
}

async fn logs_failures_once(protocol: OtlpProtocol) {
    let (logs, _guard) = capture_logs();

    let base = closed_port_endpoint().await;
    let endpoint = match protocol {
        OtlpProtocol::Grpc => base.clone(),
        OtlpProtocol::HttpProtobuf => format!("{base}/v1/traces"),
    };
    let handle = export::start(ExportConfig {
        otlp: Some(OtlpConfig {
            endpoint: endpoint.clone(),
            protocol,
            headers: vec![],
            timeout: Duration::from_secs(2),
        }),
        console: false,
        max_batch: 1,
        batch_timeout: Duration::from_millis(10),
        shutdown_timeout: Duration::from_millis(300),
        retry: fast_retry(),
        ..ExportConfig::default()
    })
    .unwrap();
    handle.submit(scenario().remove(0));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let retries = handle.stats().retries;
    handle.shutdown().await;
    let lines = logs.lines();
    let failures: Vec<_> = lines
        .iter()
        .filter(|l| l.contains(" WARN ") && l.contains("failed:"))
        .cloned()
        .collect();
    assert!(retries >= 3, "{protocol:?}: {retries} retries");
    assert_eq!(
        failures.len(),
        1,
        "{protocol:?}: rate-limited to one line: {lines:#?}"
    );
    let line = &failures[0];
    assert!(
        line.contains(&format!("OTLP export to {endpoint} failed: ")),
        "{line}"
    );
    assert!(line.to_lowercase().contains("connection refused"), "{line}");
    assert!(line.ends_with("; will retry"), "{line}");
}

#[tokio::test]
async fn grpc_unreachable_endpoint_logs_one_clear_warning() {
    logs_failures_once(OtlpProtocol::Grpc).await;
}

#[tokio::test]
async fn http_unreachable_endpoint_logs_one_clear_warning() {
    logs_failures_once(OtlpProtocol::HttpProtobuf).await;
}

#[test]
fn receiver_works_without_an_ambient_runtime() {
    // For tests that drive the agent binary from plain `#[test]`s.
    let receiver = OtlpReceiver::start_blocking(Protocol::HttpProtobuf);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let handle = runtime.block_on(async {
        let handle = export::start(config(&receiver, 4)).unwrap();
        for s in scenario() {
            handle.submit(s);
        }
        handle
    });
    let exporter = std::thread::spawn(move || {
        runtime.block_on(async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            handle.shutdown().await;
            handle.stats()
        })
    });
    let spans = receiver.wait_for_blocking(|s| s.len() == 4, WAIT).unwrap();
    assert_eq!(exporter.join().unwrap().exported, 4);
    assert_eq!(spans[0].request_index, 0);
    let resources: Vec<_> = spans.iter().map(|s| s.resource_index).collect();
    assert_eq!(resources, [0, 0, 1, 1]);
}

/// A span named `GET /n/{i}` with its own span id.
fn numbered(i: u32) -> Span {
    let mut s = scenario().remove(0);
    s.name = format!("GET /n/{i}");
    let [_, _, hi, lo] = i.to_be_bytes();
    s.span_id = SpanId([0xaa, 0, 0, 0, 0, 0, hi, lo]);
    s
}

/// Span names of `spans`, sorted; panics on a name received twice.
fn unique_names(spans: &[ReceivedSpan]) -> Vec<String> {
    let mut names: Vec<String> = spans.iter().map(|s| s.name().to_owned()).collect();
    names.sort();
    let before = names.len();
    names.dedup();
    assert_eq!(names.len(), before, "a span arrived twice: {names:?}");
    names
}

fn expected_names(range: std::ops::Range<u32>) -> Vec<String> {
    let mut names: Vec<String> = range.map(|i| numbered(i).name).collect();
    names.sort();
    names
}

/// Fast retries and short batches, OTLP only, to an endpoint that may be down.
fn outage_config(protocol: Protocol, addr: std::net::SocketAddr, max_queue: usize) -> ExportConfig {
    let base = format!("http://{addr}");
    ExportConfig {
        otlp: Some(OtlpConfig {
            endpoint: match protocol {
                Protocol::Grpc => base,
                Protocol::HttpProtobuf => format!("{base}/v1/traces"),
            },
            protocol: otlp_protocol(protocol),
            headers: vec![],
            timeout: Duration::from_secs(2),
        }),
        console: false,
        max_queue,
        max_batch: 4,
        batch_timeout: Duration::from_millis(20),
        retry: RetryConfig {
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(200),
            ..RetryConfig::default()
        },
        ..ExportConfig::default()
    }
}

/// The "works again" line of the exporter, if logged.
fn recovery_line(logs: &LogBuffer) -> Option<String> {
    logs.lines()
        .into_iter()
        .find(|l| l.contains(" INFO ") && l.contains("works again: outage of"))
}

async fn collector_restarts_on_the_same_port(protocol: Protocol) {
    let (logs, _guard) = capture_logs();
    let first = OtlpReceiver::start(protocol).await;
    let addr = first.addr();
    let handle = export::start(outage_config(protocol, addr, 4096)).unwrap();
    // The collector works: a live connection to it exists when it goes away.
    handle.submit_all((0..4).map(numbered).collect());
    first.wait_for(|s| s.len() == 4, WAIT).await.unwrap();
    drop(first);

    // Steady traffic while it is down (connections refused or reset).
    for chunk in 0..10 {
        handle.submit_all((4 + chunk * 4..8 + chunk * 4).map(numbered).collect());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + WAIT;
    while handle.stats().retries < 5 {
        assert!(Instant::now() < deadline, "{protocol:?}: no retries");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(handle.failing(), "{protocol:?}");
    assert_eq!(
        handle.pending(),
        40,
        "{protocol:?}: everything kept: {:#?}",
        logs.lines()
    );
    assert_eq!(recovery_line(&logs), None);

    // Back on the same port: the queue drains by itself, every span exactly once.
    let second = OtlpReceiver::start_on(protocol, addr).await;
    second.wait_for(|s| s.len() >= 40, WAIT).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        unique_names(&second.spans()),
        expected_names(4..44),
        "{protocol:?}"
    );
    let stats = handle.stats();
    assert_eq!(
        (
            stats.queued,
            stats.exported,
            stats.dropped_queue_full,
            stats.failed
        ),
        (44, 44, 0, 0),
        "{protocol:?}: {stats:?}"
    );
    assert!(!handle.failing(), "{protocol:?}");
    assert_eq!(handle.pending(), 0);
    let line = recovery_line(&logs).unwrap_or_else(|| panic!("{:#?}", logs.lines()));
    assert!(line.ends_with("; no spans lost"), "{line}");
    // Rate-limited: at most one failure warning for the whole (short) outage. (Not exactly
    // one: with tests logging concurrently, the capture may miss a line; see
    // `logs_failures_once` for the warning itself.)
    let warnings = logs
        .lines()
        .into_iter()
        .filter(|l| l.contains(" WARN ") && l.contains("failed:"))
        .count();
    assert!(warnings <= 1, "{:#?}", logs.lines());
    handle.shutdown().await;
    assert_eq!(handle.stats().exported, 44);
}

#[tokio::test]
async fn grpc_collector_outage_then_every_span_arrives_once() {
    collector_restarts_on_the_same_port(Protocol::Grpc).await;
}

#[tokio::test]
async fn http_collector_outage_then_every_span_arrives_once() {
    collector_restarts_on_the_same_port(Protocol::HttpProtobuf).await;
}

async fn outage_beyond_the_queue_bound(protocol: Protocol) {
    let (logs, _guard) = capture_logs();
    // Nothing listens yet.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let handle = export::start(outage_config(protocol, addr, 10)).unwrap();
    // The first batch (4 spans, one per chunk) is taken and retried...
    for i in 0..4 {
        handle.submit(numbered(i));
    }
    let deadline = Instant::now() + WAIT;
    while handle.stats().retries < 2 {
        assert!(Instant::now() < deadline, "{protocol:?}: no retries");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ... so the queue (10) is all there is for the rest: 10 kept, 10 dropped.
    for i in 4..24 {
        handle.submit(numbered(i));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Still full: these 5 are dropped too.
    handle.submit_all((24..29).map(numbered).collect());
    let stats = handle.stats();
    assert_eq!(
        (
            stats.queued,
            stats.exported,
            stats.dropped_queue_full,
            stats.failed
        ),
        (14, 0, 15, 0),
        "{protocol:?}: {stats:?}"
    );
    assert_eq!(handle.pending(), 14);
    let full_warnings = logs
        .lines()
        .into_iter()
        .filter(|l| l.contains(" WARN ") && l.contains("export queue full (capacity 10)"))
        .count();
    // At most one (see `collector_restarts_on_the_same_port` on why not exactly).
    assert!(full_warnings <= 1, "rate-limited: {:#?}", logs.lines());

    let receiver = OtlpReceiver::start_on(protocol, addr).await;
    receiver.wait_for(|s| s.len() >= 14, WAIT).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        unique_names(&receiver.spans()),
        expected_names(0..14),
        "{protocol:?}: the oldest spans, each once"
    );
    let stats = handle.stats();
    assert_eq!(
        (
            stats.queued,
            stats.exported,
            stats.dropped_queue_full,
            stats.failed
        ),
        (14, 14, 15, 0),
        "{protocol:?}: {stats:?}"
    );
    let line = recovery_line(&logs).unwrap_or_else(|| panic!("{:#?}", logs.lines()));
    assert!(
        line.ends_with("; 15 spans dropped because the export queue was full, 0 given up"),
        "{line}"
    );
    handle.shutdown().await;
}

#[tokio::test]
async fn grpc_outage_beyond_the_queue_bound_drops_and_counts_exactly() {
    outage_beyond_the_queue_bound(Protocol::Grpc).await;
}

#[tokio::test]
async fn http_outage_beyond_the_queue_bound_drops_and_counts_exactly() {
    outage_beyond_the_queue_bound(Protocol::HttpProtobuf).await;
}

#[tokio::test]
async fn slow_receiver_is_retried_until_it_answers_in_time() {
    for protocol in BOTH {
        let receiver = OtlpReceiver::start(protocol).await;
        receiver.set_response_delay(Duration::from_secs(3));
        let mut cfg = config(&receiver, 1);
        cfg.otlp.as_mut().unwrap().timeout = Duration::from_millis(200);
        let handle = export::start(cfg).unwrap();
        handle.submit(scenario().remove(0));
        receiver.wait_for_requests(3, WAIT).await.unwrap();
        receiver.set_response_delay(Duration::ZERO);
        let deadline = Instant::now() + WAIT;
        while handle.stats().exported == 0 {
            assert!(Instant::now() < deadline, "{protocol:?}: never exported");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        handle.shutdown().await;
        let stats = handle.stats();
        assert_eq!((stats.exported, stats.failed), (1, 0), "{protocol:?}");
        assert_eq!(
            stats.retries,
            receiver.request_count() as u64 - 1,
            "{protocol:?}"
        );
    }
}

#[tokio::test]
async fn server_delays_are_honoured_for_unavailable_and_capped() {
    // 503 / UNAVAILABLE with Retry-After / RetryInfo is retried after that delay, not the 20 ms
    // backoff; a delay beyond max_server_delay is cut to it.
    for protocol in BOTH {
        let receiver = OtlpReceiver::start(protocol).await;
        let unavailable_for = |d: Duration| Reply::Error {
            grpc: Code::Unavailable,
            http: 503,
            message: "restarting".into(),
            retry_after: Some(d),
        };
        receiver.reply_next([
            unavailable_for(Duration::from_secs(1)),
            unavailable_for(Duration::from_secs(3600)),
        ]);
        let mut cfg = config(&receiver, 1);
        cfg.retry.max_server_delay = Duration::from_millis(1500);
        let handle = export::start(cfg).unwrap();
        handle.submit(scenario().remove(0));
        receiver.wait_for(|s| s.len() == 1, WAIT).await.unwrap();
        handle.shutdown().await;
        let requests = receiver.requests();
        assert_eq!(requests.len(), 3, "{protocol:?}");
        let gap = requests[1].received_at - requests[0].received_at;
        assert!(
            gap >= Duration::from_millis(950),
            "{protocol:?}: retried after {gap:?}, server asked for 1 s"
        );
        // Generous: the cap (1.5 s) is far below the hour asked for.
        let gap = requests[2].received_at - requests[1].received_at;
        assert!(
            gap >= Duration::from_millis(1450) && gap < Duration::from_secs(20),
            "{protocol:?}: retried after {gap:?}, capped at 1.5 s"
        );
        assert_eq!(handle.stats().exported, 1);
        assert_eq!(handle.stats().failed, 0);
    }
}

#[tokio::test]
async fn the_queue_bound_holds_with_large_chunks() {
    // The rest of a chunk the exporter took only in part still counts against the bound: it
    // holds at most `max_queue` spans beyond the batch it is sending.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let mut cfg = outage_config(Protocol::HttpProtobuf, addr, 10);
    cfg.shutdown_timeout = Duration::from_millis(200);
    let handle = export::start(cfg).unwrap();
    handle.submit_all((0..10).map(numbered).collect());
    let deadline = Instant::now() + WAIT;
    while handle.stats().retries < 2 {
        assert!(Instant::now() < deadline, "no retries");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A batch of 4 is in flight; 6 wait: room for 4 more.
    handle.submit_all((10..20).map(numbered).collect());
    let stats = handle.stats();
    assert_eq!(
        (stats.queued, stats.dropped_queue_full),
        (14, 6),
        "{stats:?}"
    );
    assert_eq!(handle.pending(), 14);
    handle.shutdown().await;
    let stats = handle.stats();
    assert_eq!((stats.exported, stats.failed), (0, 14), "{stats:?}");
}
