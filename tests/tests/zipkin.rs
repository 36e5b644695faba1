//! Zipkin v2 JSON export, received by a Zipkin-compatible receiver that refuses every body not
//! valid against the Zipkin v2 span schema (`socktrace_tests::zipkin_receiver`).
//!
//! - The receiver itself refuses what Zipkin would not accept (no root).
//! - The library's exporter: exact spans, retries of 5xx, a 400 counted as failed (no root).
//! - End to end, as root: the real agent traces a real Python `http.server` and real `curl`,
//!   chosen with the standard variables or with `--zipkin-endpoint`.

use std::{
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use socktrace::{
    export::{self, ExportConfig, ExportStats, RetryConfig, ZipkinConfig},
    trace::span::{KeyValue, Resource, Span, SpanId, SpanKind, Status, TraceId},
};
use socktrace_tests::{
    harness::{Agent, PyServer, curl, final_counters, require_root},
    zipkin_receiver::{ZipkinReceiver, ZipkinSpan},
};

const WAIT: Duration = Duration::from_secs(30);

/// POSTs `body` to the receiver with curl; returns the HTTP status.
fn post(receiver: &ZipkinReceiver, content_type: &str, body: &str) -> u16 {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .args(["-H", &format!("Content-Type: {content_type}")])
        .args(["--data-binary", body])
        .arg(receiver.endpoint())
        .output()
        .expect("curl must be installed");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("an HTTP status")
}

#[test]
fn the_receiver_refuses_what_zipkin_would_not_accept() {
    let receiver = ZipkinReceiver::start();
    let valid = json!({
        "traceId": "4bf92f3577b34da6a3ce929d0e0e4736",
        "id": "00f067aa0ba902b7",
        "parentId": "53ce929d0e0e4736",
        "kind": "SERVER",
        "name": "GET /x",
        "timestamp": 1_764_000_000_000_000u64,
        "duration": 12,
        "localEndpoint": {"serviceName": "a", "ipv4": "127.0.0.1", "port": 80},
        "remoteEndpoint": {"ipv6": "::1", "port": 5000},
        "tags": {"http.response.status_code": "200"},
    });
    assert_eq!(
        post(&receiver, "application/json", &json!([valid]).to_string()),
        202
    );
    let broken = |field: &str, value: Value| {
        let mut span = valid.clone();
        match value {
            Value::Null => {
                span.as_object_mut().unwrap().remove(field);
            }
            v => span[field] = v,
        }
        json!([span]).to_string()
    };
    for (what, body) in [
        (
            "uppercase trace id",
            broken("traceId", json!("4BF92F3577B34DA6A3CE929D0E0E4736")),
        ),
        ("short span id", broken("id", json!("00f067aa0ba902"))),
        ("no span id", broken("id", Value::Null)),
        (
            "parent id with a dash",
            broken("parentId", json!("53ce929d-0e0e473")),
        ),
        ("a kind Zipkin lacks", broken("kind", json!("INTERNAL"))),
        (
            "timestamp in a string",
            broken("timestamp", json!("1764000000000000")),
        ),
        ("fractional duration", broken("duration", json!(1.5))),
        (
            "a tag that is a number",
            broken("tags", json!({"http.response.status_code": 200})),
        ),
        (
            "an invalid ipv4",
            broken("localEndpoint", json!({"ipv4": "127.0.0.256"})),
        ),
        ("port zero", broken("remoteEndpoint", json!({"port": 0}))),
        (
            "a misspelt field",
            broken("parentID", json!("53ce929d0e0e4736")),
        ),
        ("an object, not a list", valid.to_string()),
        ("not JSON", "[{".to_owned()),
    ] {
        assert_eq!(post(&receiver, "application/json", &body), 400, "{what}");
    }
    assert_eq!(
        post(
            &receiver,
            "application/x-protobuf",
            &json!([valid]).to_string()
        ),
        415
    );
    // Every one was answered, so every one was recorded; reading the records may lag.
    let requests = receiver.wait_requests(15, WAIT);
    assert_eq!(requests.len(), 15);
    assert_eq!(receiver.spans().len(), 1);
    assert!(
        requests[1].errors.iter().any(|e| e.contains("traceId")),
        "{:?}",
        requests[1]
    );
}

// ---- the exporter, no root ----

fn resource(pid: i64, service: &str) -> Arc<Resource> {
    Arc::new(Resource {
        key: format!("pid:{pid}"),
        attributes: vec![
            KeyValue::new("service.name", service),
            KeyValue::new("process.pid", pid),
        ],
    })
}

/// A client span of `frontend` and the server span of `backend` it called, which failed.
fn client_and_server() -> Vec<Span> {
    let trace_id = TraceId([0x4b; 16]);
    let client = Span {
        trace_id,
        span_id: SpanId([0xc1; 8]),
        parent_span_id: None,
        trace_state: String::new(),
        parent_sampled: None,
        name: "GET".into(),
        kind: SpanKind::Client,
        start_unix_nanos: 1_764_000_000_000_000_000,
        end_unix_nanos: 1_764_000_000_002_500_000,
        attributes: vec![
            KeyValue::new("http.request.method", "GET"),
            KeyValue::new("server.address", "127.0.0.1"),
            KeyValue::new("server.port", 8080i64),
            KeyValue::new("network.peer.address", "127.0.0.1"),
            KeyValue::new("network.peer.port", 8080i64),
            KeyValue::new("http.response.status_code", 500i64),
        ],
        status: Status::Error {
            message: String::new(),
        },
        links: Vec::new(),
        resource: resource(10, "frontend"),
        scope: "socktrace.http",
    };
    let server = Span {
        span_id: SpanId([0x5e; 8]),
        parent_span_id: Some(client.span_id),
        name: "GET /users/{id}".into(),
        kind: SpanKind::Server,
        start_unix_nanos: client.start_unix_nanos + 500_000,
        end_unix_nanos: client.end_unix_nanos - 500_000,
        attributes: vec![
            KeyValue::new("http.request.method", "GET"),
            KeyValue::new("url.path", "/users/42"),
            KeyValue::new("server.address", "127.0.0.1"),
            KeyValue::new("server.port", 8080i64),
            KeyValue::new("network.peer.address", "127.0.0.1"),
            KeyValue::new("network.peer.port", 40000i64),
            KeyValue::new("http.response.status_code", 500i64),
        ],
        resource: resource(20, "backend"),
        ..client.clone()
    };
    vec![client, server]
}

fn zipkin_config(receiver: &ZipkinReceiver) -> ExportConfig {
    ExportConfig {
        zipkin: Some(ZipkinConfig {
            endpoint: receiver.endpoint(),
            timeout: Duration::from_secs(5),
        }),
        console: false,
        batch_timeout: Duration::from_millis(50),
        retry: RetryConfig {
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(50),
            // A 503 or 429 asks for `Retry-After: 1`; honoured up to this.
            max_server_delay: Duration::from_millis(100),
            ..RetryConfig::default()
        },
        ..ExportConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exporter_posts_valid_json_and_retries_server_errors() {
    let receiver = ZipkinReceiver::start_with_replies(&[503, 500, 429]);
    let handle = export::start(zipkin_config(&receiver)).unwrap();
    handle.submit_all(client_and_server());
    let spans = tokio::task::block_in_place(|| receiver.wait_for(|s| s.len() >= 2, WAIT))
        .unwrap_or_else(|e| panic!("{e}"));
    handle.shutdown().await;
    receiver.assert_all_valid();
    assert_eq!(
        handle.stats(),
        ExportStats {
            queued: 2,
            exported: 2,
            dropped_queue_full: 0,
            failed: 0,
            retries: 3,
        }
    );
    let requests = receiver.requests();
    let statuses: Vec<u16> = requests.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [503, 500, 429, 202]);
    let accepted = &requests[3];
    assert_eq!(accepted.content_type, "application/json");
    assert!(
        accepted.user_agent.starts_with("socktrace/"),
        "{accepted:?}"
    );
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        spans[0].0,
        json!({
            "traceId": "4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b",
            "id": "c1c1c1c1c1c1c1c1",
            "kind": "CLIENT",
            "name": "GET",
            "timestamp": 1_764_000_000_000_000u64,
            "duration": 2500,
            "localEndpoint": {"serviceName": "frontend"},
            "remoteEndpoint": {"ipv4": "127.0.0.1", "port": 8080},
            "tags": {
                "process.pid": "10",
                "http.request.method": "GET",
                "server.address": "127.0.0.1",
                "server.port": "8080",
                "network.peer.address": "127.0.0.1",
                "network.peer.port": "8080",
                "http.response.status_code": "500",
                "otel.scope.name": "socktrace.http",
                "otel.scope.version": version,
                "otel.status_code": "ERROR",
                "error": "",
            },
        })
    );
    let server = &spans[1];
    assert_eq!(server.kind(), "SERVER");
    assert_eq!(server.parent_id(), Some("c1c1c1c1c1c1c1c1"));
    assert_eq!(server.trace_id(), spans[0].trace_id());
    assert_eq!(server.service_name(), Some("backend"));
    assert_eq!(
        server.endpoint("localEndpoint"),
        &json!({"serviceName": "backend", "ipv4": "127.0.0.1", "port": 8080})
    );
    assert_eq!(
        server.endpoint("remoteEndpoint"),
        &json!({"ipv4": "127.0.0.1", "port": 40000})
    );
    assert_eq!(
        (server.timestamp(), server.duration()),
        (1_764_000_000_000_500, 1500)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_batch_is_counted_as_failed_not_retried() {
    let receiver = ZipkinReceiver::start_with_replies(&[400]);
    let handle = export::start(zipkin_config(&receiver)).unwrap();
    handle.submit_all(client_and_server());
    tokio::task::block_in_place(|| {
        let deadline = Instant::now() + WAIT;
        while handle.stats().failed < 2 {
            assert!(Instant::now() < deadline, "{:?}", handle.stats());
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    // The next batch goes through.
    handle.submit_all(client_and_server());
    tokio::task::block_in_place(|| receiver.wait_for(|s| s.len() >= 2, WAIT))
        .unwrap_or_else(|e| panic!("{e}"));
    handle.shutdown().await;
    assert_eq!(
        handle.stats(),
        ExportStats {
            queued: 4,
            exported: 2,
            dropped_queue_full: 0,
            failed: 2,
            retries: 0,
        }
    );
    assert_eq!(receiver.requests().len(), 2);
}

// ---- end to end, as root ----

/// Waits until `server` SERVER and `client` CLIENT spans arrived, then a little longer, and
/// checks that no more came: the counts must be exact. Both lists in start order.
fn exact(
    receiver: &ZipkinReceiver,
    server: usize,
    client: usize,
) -> (Vec<ZipkinSpan>, Vec<ZipkinSpan>) {
    let of_kind = |spans: &[ZipkinSpan], kind: &str| {
        let mut v: Vec<ZipkinSpan> = spans.iter().filter(|s| s.kind() == kind).cloned().collect();
        v.sort_by_key(ZipkinSpan::timestamp);
        v
    };
    receiver
        .wait_for(
            |s| of_kind(s, "SERVER").len() >= server && of_kind(s, "CLIENT").len() >= client,
            WAIT,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    std::thread::sleep(Duration::from_millis(1500));
    let spans = receiver.spans();
    let dump = || spans.iter().map(|s| format!("  {s}\n")).collect::<String>();
    let (s, c) = (of_kind(&spans, "SERVER"), of_kind(&spans, "CLIENT"));
    assert_eq!(s.len(), server, "server spans:\n{}", dump());
    assert_eq!(c.len(), client, "client spans:\n{}", dump());
    receiver.assert_all_valid();
    (s, c)
}

fn tag<'a>(span: &'a ZipkinSpan, key: &str) -> &'a str {
    span.tag(key)
        .unwrap_or_else(|| panic!("{key} missing on {span}"))
}

/// Three requests on one keep-alive connection of curl to the Python server, exported to
/// Zipkin; checks every span and returns the agent's export counters.
fn traces_curl_and_the_server(
    agent_args: &[&str],
    env: &[(&str, &str)],
    receiver: &ZipkinReceiver,
    server: &PyServer,
) -> Agent {
    let mut args = vec!["--port".to_owned(), server.port.to_string()];
    args.extend(agent_args.iter().map(|a| (*a).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = Agent::start_with_env(&args, env);
    curl(&[
        &server.url("/hello"),
        &server.url("/users/42?token=secret"),
        &server.url("/status/500"),
    ]);
    let (s, c) = exact(receiver, 3, 3);
    let port = server.port.to_string();
    let expect = [
        ("GET /hello", "/hello", "/hello", "200"),
        (
            "GET /users/{id}",
            "/users/42",
            "/users/42?token=REDACTED",
            "404",
        ),
        ("GET /status/{id}", "/status/500", "/status/500", "500"),
    ];
    for (i, (span, (name, path, target, status))) in s.iter().zip(expect).enumerate() {
        let client = &c[i];
        // The server span is the child of curl's client span of the same request.
        assert_eq!(span.name(), name, "{span}");
        assert_eq!(span.trace_id(), client.trace_id(), "{span}");
        assert_eq!(span.parent_id(), Some(client.id()), "{span}");
        assert_eq!(client.parent_id(), None, "{client}");
        assert_eq!(span.trace_id().len(), 32);
        assert_ne!(span.id(), client.id());
        assert_eq!(span.service_name(), Some("py-server"));
        assert_eq!(client.service_name(), Some("curl"));
        assert_eq!(tag(span, "http.request.method"), "GET");
        assert_eq!(tag(span, "url.path"), path);
        assert_eq!(tag(span, "http.response.status_code"), status);
        assert_eq!(tag(span, "server.port"), port);
        assert_eq!(tag(span, "otel.scope.name"), "socktrace.http");
        assert_eq!(tag(span, "process.pid"), server.pid().to_string());
        assert_eq!(span.tag("service.name"), None, "it is the serviceName");
        assert_eq!(
            span.endpoint("localEndpoint"),
            &json!({"serviceName": "py-server", "ipv4": "127.0.0.1", "port": server.port})
        );
        // The client's side of the connection: curl's address and its ephemeral port.
        let remote = span.endpoint("remoteEndpoint");
        assert_eq!(remote["ipv4"], "127.0.0.1", "{span}");
        assert_eq!(remote["port"].to_string(), tag(span, "network.peer.port"));
        assert_eq!(client.name(), "GET");
        assert_eq!(tag(client, "http.request.method"), "GET");
        assert_eq!(tag(client, "http.response.status_code"), status);
        assert_eq!(
            tag(client, "url.full"),
            format!("http://127.0.0.1:{port}{target}")
        );
        assert_eq!(
            client.endpoint("remoteEndpoint"),
            &json!({"ipv4": "127.0.0.1", "port": server.port})
        );
        assert_eq!(
            client.endpoint("localEndpoint"),
            &json!({"serviceName": "curl"})
        );
        // The client span encloses the server span.
        assert!(client.timestamp() <= span.timestamp(), "{client} {span}");
        assert!(span.duration() >= 1 && client.duration() >= span.duration());
    }
    // Only the server's 5xx is an error for the server; the client's 4xx and 5xx are errors.
    for (span, error) in s.iter().zip([false, false, true]) {
        assert_eq!(
            span.tag("otel.status_code"),
            error.then_some("ERROR"),
            "{span}"
        );
        assert_eq!(span.tag("error"), error.then_some(""), "{span}");
    }
    for (span, error) in c.iter().zip([false, true, true]) {
        assert_eq!(
            span.tag("otel.status_code"),
            error.then_some("ERROR"),
            "{span}"
        );
        assert_eq!(span.tag("error").is_some(), error, "{span}");
    }
    for span in s.iter().chain(&c) {
        assert!(!span.0.to_string().contains("secret"), "{span}");
    }
    agent
}

#[test]
fn the_agent_exports_to_zipkin_with_the_standard_variables() {
    require_root();
    let receiver = ZipkinReceiver::start();
    let server = PyServer::start(&[("OTEL_SERVICE_NAME", "py-server")]);
    let endpoint = receiver.endpoint();
    let mut agent = traces_curl_and_the_server(
        &[],
        &[
            ("OTEL_TRACES_EXPORTER", "zipkin"),
            ("OTEL_EXPORTER_ZIPKIN_ENDPOINT", endpoint.as_str()),
        ],
        &receiver,
        &server,
    );
    assert!(
        agent
            .stderr()
            .contains(&format!("exporter: Zipkin v2 JSON to {endpoint}")),
        "{}",
        agent.stderr()
    );
    assert_eq!(agent.stop(), Some(0));
    let export = final_counters(&agent.stderr(), "export");
    assert_eq!(export["queued"], 6, "{export:?}");
    assert_eq!(export["exported"], 6, "{export:?}");
    assert_eq!(export["failed"], 0, "{export:?}");
    // Nothing but the spans: no OTLP, no console.
    assert!(agent.stdout().is_empty(), "{}", agent.stdout());
}

#[test]
fn the_zipkin_flag_with_the_console() {
    require_root();
    let receiver = ZipkinReceiver::start();
    let server = PyServer::start(&[("OTEL_SERVICE_NAME", "py-server")]);
    let endpoint = receiver.endpoint();
    let mut agent = traces_curl_and_the_server(
        &["--zipkin-endpoint", &endpoint, "--console"],
        &[],
        &receiver,
        &server,
    );
    assert_eq!(agent.stop(), Some(0));
    // The same spans printed.
    let stdout = agent.stdout();
    assert_eq!(stdout.lines().count(), 6, "{stdout}");
    assert!(
        stdout.contains("py-server SERVER \"GET /users/{id}\""),
        "{stdout}"
    );
    let export = final_counters(&agent.stderr(), "export");
    assert_eq!(export["exported"], 6, "{export:?}");
}

#[test]
fn an_unknown_exporter_is_refused_at_start() {
    let out = Command::new(socktrace_tests::harness::agent_bin())
        .env("OTEL_TRACES_EXPORTER", "jaeger")
        .output()
        .expect("agent");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "invalid traces exporter \"jaeger\" in OTEL_TRACES_EXPORTER: expected a comma-separated list of otlp, zipkin, console"
        ),
        "{stderr}"
    );
}
